//! Which runtime owns a CRI ID, and which runtime a new pod goes to.
//!
//! Pure functions over strings: no I/O, no state.

use std::collections::HashMap;

use crate::control::cri::{LABEL_DOMAIN, LABEL_SERVICE, LABEL_VERSION};
use crate::control::runtime::parse_pod_id;
use crate::control::state::ContainerId;

/// The runtime behind a pod, container or image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// vimanad's own runtime (components).
    Vimana,
    /// The downstream CRI runtime (containerd).
    Downstream,
}

/// The owner of a pod or container ID.
///
/// vimanad's IDs are what its own parsers accept: pod IDs
/// `DOMAIN:SERVICE@VERSION#N` (`runtime::parse_pod_id`) and container IDs
/// `DOMAIN:SERVICE@VERSION#N` or `...#N.K` for later attempts
/// (`ContainerId::parse`). containerd's are 64 lower-case hex digits, or a
/// prefix of them (containerd resolves prefixes, as `crictl` passes them):
/// never a `#`, so never one of vimanad's. Anything else, the empty ID and
/// malformed vimanad-looking IDs included, is the downstream's when there
/// is one (it answers NotFound for what it does not know).
pub fn owner_of(id: &str) -> Side {
    if parse_pod_id(id).is_some() || ContainerId::parse(id).is_some() {
        Side::Vimana
    } else {
        Side::Downstream
    }
}

/// Where RunPodSandbox sends a new pod.
///
/// `vimana_handler` → vimanad. Any other handler, `""` included → the
/// downstream, except that with `components_on_default` a pod on `""`
/// carrying all three `vimana.host/*` labels is a component.
pub fn side_of_new_pod(
    handler: &str,
    labels: &HashMap<String, String>,
    vimana_handler: &str,
    components_on_default: bool,
) -> Side {
    if handler == vimana_handler {
        return Side::Vimana;
    }
    if handler.is_empty() && components_on_default && is_component(labels) {
        return Side::Vimana;
    }
    Side::Downstream
}

/// True when a pod carries every `vimana.host/*` label naming a component.
pub fn is_component(labels: &HashMap<String, String>) -> bool {
    [LABEL_DOMAIN, LABEL_SERVICE, LABEL_VERSION]
        .iter()
        .all(|k| labels.contains_key(*k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vimana_ids_are_vimanas() {
        for id in [
            "example.com:vimana.example.v1.Echo@1.0.0#0",
            "example.com:vimana.example.v1.Echo@1.0.0#7.1",
            "a.b:S@1.2.3#17",
            "a.b:S@1.2.3#17.42",
        ] {
            assert_eq!(owner_of(id), Side::Vimana, "{id}");
        }
    }

    #[test]
    fn the_owner_agrees_with_vimanads_parsers() {
        // Every container ID vimanad makes is vimanad's, whatever attempt.
        let pod = parse_pod_id("a.b:S@1.2.3#17").unwrap();
        for seq in [0, 1, 2, 99] {
            let id = ContainerId {
                pod: pod.clone(),
                seq,
            }
            .to_string();
            assert_eq!(owner_of(&id), Side::Vimana, "{id}");
        }
    }

    #[test]
    fn containerd_ids_and_prefixes_are_downstreams() {
        let full = "4f0c1b6a9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";
        assert_eq!(full.len(), 64);
        for id in [full, &full[..12], "", "not-an-id"] {
            assert_eq!(owner_of(id), Side::Downstream, "{id:?}");
        }
    }

    #[test]
    fn malformed_vimana_ids_are_not_vimanas() {
        // What vimanad's parsers refuse cannot be one of its pods.
        for id in [
            "#",
            "a.b:S@1.2.3#",
            "a.b:S@1.2.3#17.",
            "a.b:S@1.2.3#17.01",
            "a.b:S@1.2.3#17/echo",
            "a.b:S@1.2.3#x",
        ] {
            assert_eq!(owner_of(id), Side::Downstream, "{id:?}");
        }
    }

    #[test]
    fn hex_never_holds_the_vimana_marker() {
        // Every character a containerd ID can hold.
        assert!("0123456789abcdef".chars().all(|c| c != '#'));
    }

    fn labels(component: bool) -> HashMap<String, String> {
        let mut l: HashMap<String, String> = [("app".to_owned(), "x".to_owned())].into();
        if component {
            for k in [LABEL_DOMAIN, LABEL_SERVICE, LABEL_VERSION] {
                l.insert(k.to_owned(), "v".to_owned());
            }
        }
        l
    }

    #[test]
    fn new_pods_go_by_handler() {
        let s = |h: &str, component: bool, flag: bool| {
            side_of_new_pod(h, &labels(component), "vimana", flag)
        };
        assert_eq!(s("vimana", true, false), Side::Vimana);
        assert_eq!(s("vimana", false, false), Side::Vimana);
        assert_eq!(s("", true, false), Side::Downstream);
        assert_eq!(s("", false, true), Side::Downstream);
        assert_eq!(s("", true, true), Side::Vimana);
        assert_eq!(s("runc", true, true), Side::Downstream);
        assert_eq!(s("kata", false, false), Side::Downstream);
    }

    #[test]
    fn a_component_needs_all_three_labels() {
        let mut l = labels(true);
        assert!(is_component(&l));
        l.remove(LABEL_VERSION);
        assert!(!is_component(&l));
    }
}
