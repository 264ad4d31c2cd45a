//! Parsing and validation of component names and pod IDs.

use std::fmt;
use std::str::FromStr;

/// Why a component name or pod ID was rejected. Messages name the offending
/// part so a node operator can fix the pod spec without reading code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid domain {0:?}: expected a lower-case DNS name such as example.com")]
    Domain(String),
    #[error("invalid service {0:?}: expected a fully-qualified protobuf service name such as foo.v1.Bar")]
    Service(String),
    #[error("invalid version {0:?}: expected a semantic version such as 1.2.3 ({1})")]
    Version(String, String),
    #[error("invalid component name {0:?}: expected DOMAIN:SERVICE@VERSION")]
    Component(String),
    #[error("invalid pod id {0:?}: expected DOMAIN:SERVICE@VERSION#N")]
    PodId(String),
}

/// `DOMAIN:SERVICE@VERSION`, e.g. `example.com:foo.Bar@1.2.3`.
///
/// Ordered by domain, then service, then semantic version precedence, so the
/// newest version of a service is the last one of its range in a sorted map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentName {
    domain: String,
    service: String,
    version: semver::Version,
}

impl ComponentName {
    /// Builds a name from its three parts, validating each.
    pub fn new(domain: &str, service: &str, version: &str) -> Result<Self, NameError> {
        validate_domain(domain)?;
        validate_service(service)?;
        let version = semver::Version::parse(version)
            .map_err(|e| NameError::Version(version.to_owned(), e.to_string()))?;
        Ok(Self {
            domain: domain.to_owned(),
            service: service.to_owned(),
            version,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn version(&self) -> &semver::Version {
        &self.version
    }
}

impl fmt::Display for ComponentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}@{}", self.domain, self.service, self.version)
    }
}

impl FromStr for ComponentName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let (domain, rest) = s
            .split_once(':')
            .ok_or_else(|| NameError::Component(s.to_owned()))?;
        let (service, version) = rest
            .split_once('@')
            .ok_or_else(|| NameError::Component(s.to_owned()))?;
        Self::new(domain, service, version)
    }
}

/// `DOMAIN:SERVICE@VERSION#N`: the ID of a pod sandbox and of its one
/// container. `N` is unique on the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId {
    component: ComponentName,
    ordinal: u64,
}

impl PodId {
    pub fn new(component: ComponentName, ordinal: u64) -> Self {
        Self { component, ordinal }
    }

    pub fn component(&self) -> &ComponentName {
        &self.component
    }

    /// The node-unique `N`.
    pub fn ordinal(&self) -> u64 {
        self.ordinal
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.component, self.ordinal)
    }
}

impl FromStr for PodId {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let (component, ordinal) = s
            .rsplit_once('#')
            .ok_or_else(|| NameError::PodId(s.to_owned()))?;
        let ordinal_ok = !ordinal.is_empty()
            && ordinal.bytes().all(|b| b.is_ascii_digit())
            && (ordinal == "0" || !ordinal.starts_with('0'));
        if !ordinal_ok {
            return Err(NameError::PodId(s.to_owned()));
        }
        let ordinal = ordinal
            .parse()
            .map_err(|_| NameError::PodId(s.to_owned()))?;
        Ok(Self {
            component: component.parse()?,
            ordinal,
        })
    }
}

fn validate_domain(domain: &str) -> Result<(), NameError> {
    let bad = || NameError::Domain(domain.to_owned());
    if domain.is_empty() || domain.len() > 253 {
        return Err(bad());
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

fn validate_service(service: &str) -> Result<(), NameError> {
    let bad = || NameError::Service(service.to_owned());
    if service.is_empty() || service.len() > 512 {
        return Err(bad());
    }
    for ident in service.split('.') {
        let mut bytes = ident.bytes();
        let first_ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_');
        if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad());
        }
    }
    Ok(())
}

/// Pod IDs travel (to the state database) in their text form.
impl serde::Serialize for PodId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PodId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_component_names() {
        let name: ComponentName = "example.com:foo.Bar@1.2.3".parse().unwrap();
        assert_eq!(name.domain(), "example.com");
        assert_eq!(name.service(), "foo.Bar");
        assert_eq!(name.version(), &semver::Version::new(1, 2, 3));
        assert_eq!(name.to_string(), "example.com:foo.Bar@1.2.3");
        let pre: ComponentName = "a.b:S@1.0.0-rc.1+build.5".parse().unwrap();
        assert_eq!(pre.to_string(), "a.b:S@1.0.0-rc.1+build.5");
    }

    #[test]
    fn rejects_invalid_names_naming_the_part() {
        let cases = [
            ("Example.com:foo.Bar@1.2.3", "domain"),
            ("exa_mple.com:foo.Bar@1.2.3", "domain"),
            ("-x.com:foo.Bar@1.2.3", "domain"),
            ("x..com:foo.Bar@1.2.3", "domain"),
            (":foo.Bar@1.2.3", "domain"),
            ("x.com:foo..Bar@1.2.3", "service"),
            ("x.com:1foo.Bar@1.2.3", "service"),
            ("x.com:foo/Bar@1.2.3", "service"),
            ("x.com:foo.Bar@1.2", "version"),
            ("x.com:foo.Bar@v1.2.3", "version"),
            ("x.com:foo.Bar", "component name"),
            ("x.com", "component name"),
        ];
        for (input, part) in cases {
            let err = input.parse::<ComponentName>().unwrap_err().to_string();
            assert!(err.contains(part), "{input}: {err}");
        }
    }

    #[test]
    fn orders_versions_by_semver_precedence() {
        let a: ComponentName = "x.com:S@1.10.0".parse().unwrap();
        let b: ComponentName = "x.com:S@1.9.0".parse().unwrap();
        let c: ComponentName = "x.com:S@1.10.0-rc.1".parse().unwrap();
        assert!(a > b);
        assert!(a > c);
        assert!(c > b);
    }

    #[test]
    fn parses_pod_ids() {
        let id: PodId = "example.com:foo.Bar@1.2.3#42".parse().unwrap();
        assert_eq!(id.ordinal(), 42);
        assert_eq!(id.component().service(), "foo.Bar");
        assert_eq!(id.to_string(), "example.com:foo.Bar@1.2.3#42");
        for bad in [
            "example.com:foo.Bar@1.2.3",
            "example.com:foo.Bar@1.2.3#",
            "example.com:foo.Bar@1.2.3#-1",
            "example.com:foo.Bar@1.2.3#01",
            "example.com:foo.Bar@1.2.3#1x",
            "example.com:foo.Bar@1.2.3#99999999999999999999999",
            "nonsense#1",
        ] {
            assert!(bad.parse::<PodId>().is_err(), "{bad}");
        }
    }
}
