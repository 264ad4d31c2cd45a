//! The client side of the OCI distribution API: which scheme a registry is
//! reached with, the credentials a pull or push carries, the `oci-client`
//! client built from them, and its errors turned into [`ImageError`]s that
//! name the image and the cause.
//!
//! Owns only talking to registries; what is fetched and where it goes is
//! `pull.rs` / `push.rs`. HTTPS is the default for every registry, loopback
//! included; only registries listed as insecure (`HOST[:PORT]`, as written in
//! image references) are reached over plain HTTP.

use std::sync::Once;
use std::time::Duration;

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use super::error::{ErrorKind, ImageError};
use super::reference::Reference;

/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a registry may stay silent in the middle of an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Where registries are and how they are reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registries (`HOST[:PORT]`) reached over plain HTTP.
    pub insecure: Vec<String>,
}

impl RegistryConfig {
    pub fn new(insecure: Vec<String>) -> RegistryConfig {
        RegistryConfig { insecure }
    }

    /// `https`, unless `registry` is listed as insecure.
    pub fn scheme_for(&self, registry: &str) -> &'static str {
        if self.insecure.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        }
    }

    /// The protocol rule handed to `oci-client`: the same as [`Self::scheme_for`].
    pub(crate) fn protocol(&self) -> ClientProtocol {
        ClientProtocol::HttpsExcept(self.insecure.clone())
    }

    /// A distribution client following this configuration.
    pub(crate) fn client(&self) -> oci_client::Client {
        install_crypto_provider();
        oci_client::Client::new(ClientConfig {
            protocol: self.protocol(),
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: concat!("vimanad/", env!("CARGO_PKG_VERSION")),
            platform_resolver: None,
            ..ClientConfig::default()
        })
    }
}

/// rustls needs one process-wide crypto provider; ring is already ours.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Credentials for one registry, as the kubelet passes them in the CRI
/// `AuthConfig` (or as given on the command line).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// `base64(username:password)`, the docker config form.
    pub auth: String,
    /// A bearer token to send as is.
    pub registry_token: String,
    /// An OAuth refresh token (not supported: see [`Credentials::to_auth`]).
    pub identity_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secrets", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub fn basic(username: &str, password: &str) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
            ..Credentials::default()
        }
    }

    pub fn is_anonymous(&self) -> bool {
        *self == Credentials::default()
    }

    /// The `oci-client` form: a registry token is a bearer token; a
    /// username/password (or `auth`) is basic auth, which `oci-client` also
    /// trades for a bearer token when the registry asks for one; nothing is
    /// anonymous (a public registry's anonymous token is still fetched).
    pub(crate) fn to_auth(&self, image: &str) -> Result<RegistryAuth, ImageError> {
        if !self.registry_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registry_token.clone()));
        }
        if !self.username.is_empty() || !self.password.is_empty() {
            return Ok(RegistryAuth::Basic(
                self.username.clone(),
                self.password.clone(),
            ));
        }
        if !self.auth.is_empty() {
            let bad = |why: &str| {
                ImageError::InvalidArgument(format!(
                    "image {image:?}: auth config: the \"auth\" field {why}"
                ))
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|_| bad("is not base64"))?;
            let text = String::from_utf8(decoded).map_err(|_| bad("is not utf-8"))?;
            let (user, pass) = text
                .split_once(':')
                .ok_or_else(|| bad("is not base64 of username:password"))?;
            return Ok(RegistryAuth::Basic(user.into(), pass.into()));
        }
        if !self.identity_token.is_empty() {
            return Err(ImageError::InvalidArgument(format!(
                "image {image:?}: auth config: identity tokens (OAuth refresh tokens) are not supported; pass a username and password or a registry token"
            )));
        }
        Ok(RegistryAuth::Anonymous)
    }
}

/// `oci-client`'s form of a (normalized) reference.
pub(crate) fn oci_reference(r: &Reference) -> Result<oci_client::Reference, ImageError> {
    let text = r.to_string();
    text.parse::<oci_client::Reference>()
        .map_err(|e| ImageError::invalid_reference(&text, e.to_string()))
}

/// What was being done when a registry call failed, for the message.
pub(crate) struct Doing<'a> {
    /// The image, as the caller named it.
    pub image: &'a str,
    /// The registry host (`HOST[:PORT]`).
    pub registry: &'a str,
    /// e.g. "fetching manifest 1.0.0", "fetching layer sha256:...".
    pub what: String,
    /// Whether no credentials were given (said when a registry wants some).
    pub anonymous: bool,
}

impl Doing<'_> {
    fn error(&self, kind: ErrorKind, cause: impl std::fmt::Display) -> ImageError {
        ImageError::Registry {
            image: self.image.to_string(),
            kind,
            reason: format!("registry {}: {}: {cause}", self.registry, self.what),
        }
    }

    /// Turns an `oci-client` error into one naming the image, the registry,
    /// what was being done, and the cause.
    pub fn fail(&self, err: OciDistributionError) -> ImageError {
        use OciDistributionError as E;
        match err {
            // `error_for_status` answers (e.g. a HEAD of a blob).
            E::RequestError(e) if e.status().is_some() => {
                let code = e.status().map_or(0, |s| s.as_u16());
                self.fail(E::ServerError {
                    code,
                    url: String::new(),
                    message: String::new(),
                })
            }
            E::RequestError(e) => {
                let mut cause = describe_request_error(&e);
                if cause.contains("corrupt message") || cause.contains("InvalidContentType") {
                    cause.push_str(" (the registry does not speak TLS: if it is plain HTTP, list it as an insecure registry)");
                }
                self.error(ErrorKind::Unavailable, cause)
            }
            E::UnauthorizedError { .. } => self.error(
                ErrorKind::Unauthenticated,
                if self.anonymous {
                    "401 unauthorized: the registry wants credentials (no credentials were given)"
                } else {
                    "401 unauthorized: the registry refused the credentials given"
                },
            ),
            E::AuthenticationFailure(reason) => self.error(
                ErrorKind::Unauthenticated,
                format!("authentication failed: {}", one_line(&reason)),
            ),
            E::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let kind = if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::ManifestBlobUnknown
                    )
                }) {
                    ErrorKind::NotFound
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    ErrorKind::Unauthenticated
                } else {
                    ErrorKind::Unavailable
                };
                let text: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|e| {
                        let code = serde_json::to_value(&e.code)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_else(|| format!("{:?}", e.code));
                        if e.message.is_empty() {
                            code
                        } else {
                            format!("{code} ({})", one_line(&e.message))
                        }
                    })
                    .collect();
                let what = match kind {
                    ErrorKind::NotFound => "not found",
                    _ => "refused",
                };
                self.error(kind, format!("{what}: {}", text.join(", ")))
            }
            E::ServerError { code: 401, .. } => {
                self.fail(E::UnauthorizedError { url: String::new() })
            }
            E::ServerError { code, message, .. } => {
                let kind = match code {
                    404 => ErrorKind::NotFound,
                    403 => ErrorKind::Unauthenticated,
                    _ => ErrorKind::Unavailable,
                };
                let status = http::StatusCode::from_u16(code)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| code.to_string());
                let message = one_line(&message);
                if message.is_empty() {
                    self.error(kind, format!("the registry answered {status}"))
                } else {
                    self.error(kind, format!("the registry answered {status}: {message}"))
                }
            }
            E::DigestError(e) => self.error(ErrorKind::InvalidImage, format!("{e}")),
            E::SpecViolationError(e) => self.error(
                ErrorKind::Unavailable,
                format!("the registry broke the distribution protocol: {e}"),
            ),
            other => self.error(ErrorKind::Unavailable, lower_first(&other.to_string())),
        }
    }
}

/// A transport error's cause chain, e.g. "cannot connect: connection refused".
fn describe_request_error(e: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        source = s.source();
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "the answer was cut short"
    } else {
        "request failed"
    };
    if causes.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {}", causes.join(": "))
    }
}

fn one_line(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_the_default_even_on_loopback() {
        let none = RegistryConfig::default();
        for host in [
            "registry.example.com",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "docker.io",
        ] {
            assert_eq!(none.scheme_for(host), "https", "{host}");
        }
        assert_eq!(none.protocol(), ClientProtocol::HttpsExcept(Vec::new()));
        let some = RegistryConfig::new(vec!["127.0.0.1:5000".into()]);
        assert_eq!(some.scheme_for("127.0.0.1:5000"), "http");
        // Only the listed host and port.
        assert_eq!(some.scheme_for("127.0.0.1:5001"), "https");
        assert_eq!(some.scheme_for("127.0.0.1"), "https");
        assert_eq!(some.scheme_for("localhost:5000"), "https");
        assert_eq!(
            some.protocol(),
            ClientProtocol::HttpsExcept(vec!["127.0.0.1:5000".into()])
        );
    }

    #[test]
    fn credentials_from_the_auth_config() {
        let image = "example.com/x:1";
        assert!(matches!(
            Credentials::default().to_auth(image).unwrap(),
            RegistryAuth::Anonymous
        ));
        assert!(Credentials::default().is_anonymous());
        assert!(matches!(
            Credentials::basic("u", "p").to_auth(image).unwrap(),
            RegistryAuth::Basic(u, p) if u == "u" && p == "p"
        ));
        let auth = Credentials {
            auth: base64::engine::general_purpose::STANDARD.encode("user:pa:ss"),
            ..Credentials::default()
        };
        assert!(matches!(
            auth.to_auth(image).unwrap(),
            RegistryAuth::Basic(u, p) if u == "user" && p == "pa:ss"
        ));
        let token = Credentials {
            registry_token: "t0k".into(),
            username: "ignored".into(),
            ..Credentials::default()
        };
        assert!(matches!(token.to_auth(image).unwrap(), RegistryAuth::Bearer(t) if t == "t0k"));
        let bad = Credentials {
            auth: "not base64!".into(),
            ..Credentials::default()
        };
        let err = bad.to_auth(image).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(
            err.to_string().contains("\"auth\" field is not base64"),
            "{err}"
        );
        let identity = Credentials {
            identity_token: "refresh".into(),
            ..Credentials::default()
        };
        assert!(identity
            .to_auth(image)
            .unwrap_err()
            .to_string()
            .contains("identity tokens"));
        // Secrets never reach the logs.
        let shown = format!("{:?}", Credentials::basic("u", "hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn errors_name_the_image_registry_and_cause() {
        let doing = Doing {
            image: "127.0.0.1:5000/a/b:1",
            registry: "127.0.0.1:5000",
            what: "fetching manifest 1".into(),
            anonymous: true,
        };
        let err = doing.fail(OciDistributionError::ServerError {
            code: 500,
            url: "http://x".into(),
            message: "boom\n".into(),
        });
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(
            err.to_string(),
            "image \"127.0.0.1:5000/a/b:1\": registry 127.0.0.1:5000: fetching manifest 1: the registry answered 500 Internal Server Error: boom"
        );
        let err = doing.fail(OciDistributionError::ServerError {
            code: 404,
            url: "http://x".into(),
            message: String::new(),
        });
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let err = doing.fail(OciDistributionError::UnauthorizedError { url: "u".into() });
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        assert!(err.to_string().contains("401 unauthorized"), "{err}");
        let envelope: oci_client::errors::OciEnvelope = serde_json::from_str(
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
        .unwrap();
        let err = doing.fail(OciDistributionError::RegistryError {
            envelope,
            url: "u".into(),
        });
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(
            err.to_string()
                .ends_with("not found: MANIFEST_UNKNOWN (manifest unknown)"),
            "{err}"
        );
    }
}
