//! Image references: parsing and docker-style normalization
//! (`busybox` -> `docker.io/library/busybox:latest`).
//!
//! Owns the reference grammar only (the one of distribution/reference). It does
//! not look anything up in the store and does no I/O.

use std::fmt;

use super::error::ImageError;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;

/// A parsed, normalized image reference: `domain/path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses and normalizes `reference` (no default tag is added; see
    /// [`Reference::with_default_tag`]).
    pub fn parse(reference: &str) -> Result<Reference, ImageError> {
        let bad = |reason: &str| ImageError::invalid_reference(reference, reason);
        if reference.is_empty() {
            return Err(bad("empty reference"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest).map_err(|r| bad(&r))?;
                (rest, Some(digest.to_string()))
            }
            None => (reference, None),
        };
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => {
                let tag = &rest[colon + 1..];
                if !valid_tag(tag) {
                    return Err(bad(&format!("invalid tag {tag:?}")));
                }
                (&rest[..colon], Some(tag.to_string()))
            }
            _ => (rest, None),
        };
        if name.is_empty() {
            return Err(bad("empty repository name"));
        }
        if name.len() == 64 && is_lower_hex(name) {
            return Err(bad(
                "a 64-character hexadecimal string is an image id, not a repository name",
            ));
        }
        let (domain, path) = split_domain(name);
        if !valid_domain(&domain) {
            return Err(bad(&format!("invalid registry host {domain:?}")));
        }
        for component in path.split('/') {
            if component.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(bad("repository name must be lowercase"));
            }
            if !valid_path_component(component) {
                return Err(bad(&format!(
                    "invalid repository name component {component:?}"
                )));
            }
        }
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(bad("repository name longer than 255 characters"));
        }
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// Adds the `latest` tag when the reference has neither tag nor digest.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// `sha256:<hex>` when the reference is pinned to a digest.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Docker-style normalization: `busybox` -> `docker.io/library/busybox:latest`,
/// `foo/bar` -> `docker.io/foo/bar:latest`, `example.com/echo` ->
/// `example.com/echo:latest`, `localhost:5000/x:1` unchanged, digests kept
/// (`x@sha256:...` -> `docker.io/library/x@sha256:...`, no tag added).
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    Ok(Reference::parse(reference)?.with_default_tag().to_string())
}

/// True for lower-case hexadecimal strings (the form of sha256 digests and ids).
pub(crate) fn is_lower_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn validate_digest(digest: &str) -> Result<(), String> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && is_lower_hex(hex) => Ok(()),
        Some(("sha256", _)) => Err(format!(
            "invalid digest {digest:?}: want sha256: and 64 lower-case hex digits"
        )),
        Some((alg, _)) if !alg.is_empty() => Err(format!(
            "unsupported digest algorithm {alg:?} (only sha256)"
        )),
        _ => Err(format!("invalid digest {digest:?}")),
    }
}

fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN.to_string()
    } else {
        domain
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{path}")
    } else {
        path
    };
    (domain, path)
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    matches!(b.first(), Some(c) if c.is_ascii_alphanumeric() || *c == b'_')
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `host[:port]`, host being DNS labels separated by dots or a bracketed IPv6 address.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, after)) => {
                if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                    return false;
                }
                match after {
                    "" => return true,
                    _ => match after.strip_prefix(':') {
                        Some(port) => ("", Some(port)),
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if host.is_empty() {
        return domain.starts_with('[');
    }
    host.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalize_table() {
        let ok = [
            ("busybox", "docker.io/library/busybox:latest".to_string()),
            ("busybox:1.36", "docker.io/library/busybox:1.36".to_string()),
            ("foo/bar", "docker.io/foo/bar:latest".to_string()),
            ("docker.io/foo/bar:2", "docker.io/foo/bar:2".to_string()),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest".to_string(),
            ),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".to_string(),
            ),
            ("example.com/echo", "example.com/echo:latest".to_string()),
            ("example.com/echo:1.0", "example.com/echo:1.0".to_string()),
            ("localhost:5000/x:1", "localhost:5000/x:1".to_string()),
            ("localhost/x", "localhost/x:latest".to_string()),
            ("[::1]:5000/a/b", "[::1]:5000/a/b:latest".to_string()),
            ("Example.COM/echo", "Example.COM/echo:latest".to_string()),
            ("a.b/c__d/e-f--g.h", "a.b/c__d/e-f--g.h:latest".to_string()),
            ("x:_T.1-a", "docker.io/library/x:_T.1-a".to_string()),
            (&format!("x@{D}"), format!("docker.io/library/x@{D}")),
            (&format!("x:1@{D}"), format!("docker.io/library/x:1@{D}")),
            (
                &format!("example.com:443/a/b@{D}"),
                format!("example.com:443/a/b@{D}"),
            ),
        ];
        for (input, want) in ok {
            assert_eq!(normalize_reference(input).unwrap(), want, "input {input:?}");
        }
        let bad = [
            "",
            "Busybox",
            "foo/Bar",
            "busybox:",
            "busybox:-x",
            "busybox:a/b",
            ":tag",
            "x@sha256:abc",
            "x@md5:abcd",
            "x@",
            "foo//bar",
            "foo/",
            "/foo",
            "foo_",
            "foo..bar",
            "-foo",
            "exa_mple.com/x",
            "example.com:port/x",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a b",
            "x:1.0:2",
        ];
        for input in bad {
            let err = normalize_reference(input).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidReference { .. }),
                "input {input:?}: {err}"
            );
        }
        let long = format!("example.com/{}", "a".repeat(250));
        assert!(normalize_reference(&long).is_err());
        assert!(normalize_reference(&format!("x:{}", "t".repeat(129))).is_err());
    }

    #[test]
    fn messages_are_clear() {
        assert_eq!(
            normalize_reference("Busybox").unwrap_err().to_string(),
            "invalid image reference \"Busybox\": repository name must be lowercase"
        );
        assert_eq!(
            normalize_reference("").unwrap_err().to_string(),
            "invalid image reference \"\": empty reference"
        );
    }

    #[test]
    fn parts() {
        let r = Reference::parse(&format!("example.com/echo:1.0@{D}")).unwrap();
        assert_eq!(r.repository(), "example.com/echo");
        assert_eq!(r.tag(), Some("1.0"));
        assert_eq!(r.digest(), Some(D));
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.with_default_tag().tag(), Some("latest"));
    }
}
