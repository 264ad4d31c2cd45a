//! The `vimana.host/*` labels that say which component a pod runs.

use std::collections::HashMap;

use crate::control::Error;
use crate::pool::ComponentName;

pub const DOMAIN: &str = "vimana.host/domain";
pub const SERVICE: &str = "vimana.host/service";
pub const VERSION: &str = "vimana.host/version";
const PREFIX: &str = "vimana.host/";

/// The component named by a pod's labels; errors name the label.
pub fn component_of_pod(labels: &HashMap<String, String>) -> Result<ComponentName, Error> {
    for key in labels.keys() {
        if key.starts_with(PREFIX) && ![DOMAIN, SERVICE, VERSION].contains(&key.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "unknown pod label {key:?}: vimana pods take {DOMAIN}, {SERVICE} and {VERSION}"
            )));
        }
    }
    let get = |key: &str| {
        labels
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::InvalidArgument(format!("missing pod label {key:?}: vimana pods must name their component with {DOMAIN}, {SERVICE} and {VERSION}")))
    };
    let (domain, service, version) = (get(DOMAIN)?, get(SERVICE)?, get(VERSION)?);
    ComponentName::new(domain, service, version).map_err(|e| {
        let label = match e {
            crate::pool::NameError::Domain(_) => DOMAIN,
            crate::pool::NameError::Service(_) => SERVICE,
            _ => VERSION,
        };
        Error::InvalidArgument(format!("pod label {label:?}: {e}"))
    })
}

/// Container labels under `vimana.host/` must agree with the pod's.
pub fn check_container_labels(
    container: &HashMap<String, String>,
    pod: &HashMap<String, String>,
) -> Result<(), Error> {
    for (key, value) in container {
        if !key.starts_with(PREFIX) {
            continue;
        }
        match pod.get(key) {
            Some(pod_value) if pod_value == value => {}
            Some(pod_value) => {
                return Err(Error::InvalidArgument(format!(
                    "container label {key:?}={value:?} contradicts the pod's {key:?}={pod_value:?}"
                )))
            }
            None => {
                return Err(Error::InvalidArgument(format!(
                    "container label {key:?} is not a label of the pod"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_the_component_and_names_bad_labels() {
        let ok = labels(&[
            (DOMAIN, "x.com"),
            (SERVICE, "a.B"),
            (VERSION, "1.0.0"),
            ("app", "y"),
        ]);
        assert_eq!(
            component_of_pod(&ok).unwrap().to_string(),
            "x.com:a.B@1.0.0"
        );

        let missing = labels(&[(DOMAIN, "x.com"), (SERVICE, "a.B")]);
        assert!(component_of_pod(&missing)
            .unwrap_err()
            .to_string()
            .contains(VERSION));
        let bad = labels(&[(DOMAIN, "X.com"), (SERVICE, "a.B"), (VERSION, "1.0.0")]);
        assert!(component_of_pod(&bad)
            .unwrap_err()
            .to_string()
            .contains(DOMAIN));
        let bad = labels(&[(DOMAIN, "x.com"), (SERVICE, "a.B"), (VERSION, "one")]);
        assert!(component_of_pod(&bad)
            .unwrap_err()
            .to_string()
            .contains(VERSION));
        let extra = labels(&[
            (DOMAIN, "x.com"),
            (SERVICE, "a.B"),
            (VERSION, "1.0.0"),
            ("vimana.host/x", "1"),
        ]);
        assert!(component_of_pod(&extra)
            .unwrap_err()
            .to_string()
            .contains("vimana.host/x"));
    }

    #[test]
    fn container_labels_must_agree() {
        let pod = labels(&[(DOMAIN, "x.com"), (SERVICE, "a.B"), (VERSION, "1.0.0")]);
        assert!(
            check_container_labels(&labels(&[(DOMAIN, "x.com"), ("other", "z")]), &pod).is_ok()
        );
        let err = check_container_labels(&labels(&[(VERSION, "2.0.0")]), &pod).unwrap_err();
        assert!(err.to_string().contains(VERSION));
    }
}
