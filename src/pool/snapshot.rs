//! The routing snapshot: an immutable view of the pod pool, built by the
//! control thread on every change and read by every shard without locks.
//!
//! Shaped for the data plane's one question: for this domain, service and
//! (optional) version, which containers may serve the call?

use std::collections::HashMap;
use std::sync::Arc;

use super::metrics::ComponentSlots;
use super::{Endpoint, PodPool};

#[derive(Debug, Default)]
pub struct Snapshot {
    generation: u64,
    domains: HashMap<Box<str>, HashMap<Box<str>, Service>>,
}

/// The versions of one service at one domain, newest first.
#[derive(Debug, Default)]
struct Service {
    versions: Vec<Version>,
}

#[derive(Debug)]
pub struct Version {
    pub version: semver::Version,
    /// The running containers; empty when the component has pods but none
    /// runs.
    pub endpoints: Arc<[Endpoint]>,
    /// Where the shards count this version's calls (see `pool::metrics`).
    pub slot: u32,
}

/// The answer to a routing question.
#[derive(Debug)]
pub enum Route<'a> {
    /// These containers serve the call (never empty).
    Serve(&'a Version),
    /// No component serves this domain.
    UnknownDomain,
    /// The domain has no such service.
    UnknownService,
    /// The service exists, but not in the version asked for.
    UnknownVersion,
    /// The component is known but no container of it runs.
    NotRunning,
}

impl Snapshot {
    /// Builds the snapshot of `pool` as generation `generation`.
    pub fn build(pool: &PodPool, generation: u64, slots: &ComponentSlots) -> Self {
        let mut domains: HashMap<Box<str>, HashMap<Box<str>, Service>> = HashMap::new();
        let mut components: Vec<_> = pool.known_components().collect();
        components.sort();
        components.dedup();
        for component in components {
            let endpoints: Arc<[Endpoint]> = pool.running(component).cloned().collect();
            let service = domains
                .entry(component.domain().into())
                .or_default()
                .entry(component.service().into())
                .or_default();
            service.versions.push(Version {
                version: component.version().clone(),
                endpoints,
                slot: slots.slot(component),
            });
        }
        for services in domains.values_mut() {
            for service in services.values_mut() {
                service.versions.sort_by(|a, b| b.version.cmp(&a.version));
            }
        }
        Self {
            generation,
            domains,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Routes a call: `version` is the `vimana-version` header, if any;
    /// without it the newest version with a running container serves.
    pub fn route(&self, domain: &str, service: &str, version: Option<&str>) -> Route<'_> {
        let Some(services) = self.domains.get(domain) else {
            return Route::UnknownDomain;
        };
        let Some(service) = services.get(service) else {
            return Route::UnknownService;
        };
        let chosen = match version {
            Some(wanted) => {
                let Ok(wanted) = semver::Version::parse(wanted.trim()) else {
                    return Route::UnknownVersion;
                };
                match service.versions.iter().find(|v| v.version == wanted) {
                    Some(v) => v,
                    None => return Route::UnknownVersion,
                }
            }
            None => match service.versions.iter().find(|v| !v.endpoints.is_empty()) {
                Some(v) => v,
                None => return Route::NotRunning,
            },
        };
        if chosen.endpoints.is_empty() {
            Route::NotRunning
        } else {
            Route::Serve(chosen)
        }
    }

    /// Every running endpoint, for shards dropping upstreams that left.
    /// Every (domain, service, version), for inspection (`/debug/pool`).
    pub fn versions(&self) -> impl Iterator<Item = (&str, &str, &Version)> {
        self.domains.iter().flat_map(|(domain, services)| {
            services.iter().flat_map(move |(service, s)| {
                s.versions.iter().map(move |v| (&**domain, &**service, v))
            })
        })
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.domains
            .values()
            .flat_map(|s| s.values())
            .flat_map(|s| s.versions.iter())
            .flat_map(|v| v.endpoints.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PodId;

    fn pool() -> PodPool {
        let mut pool = PodPool::default();
        for (id, running) in [
            ("x.com:a.S@1.0.0#0", true),
            ("x.com:a.S@1.0.0#1", true),
            ("x.com:a.S@2.0.0#2", true),
            ("x.com:a.S@3.0.0-rc.1#3", false),
            ("x.com:b.T@1.0.0#4", false),
            ("y.org:a.S@1.0.0#5", true),
        ] {
            let id: PodId = id.parse().unwrap();
            pool.insert_pod(&id);
            if running {
                pool.set_running(
                    &id,
                    format!("/s/{}", id.ordinal()).into(),
                    1,
                    Default::default(),
                );
            }
        }
        pool
    }

    fn ordinals(route: Route<'_>) -> Vec<u64> {
        match route {
            Route::Serve(v) => v.endpoints.iter().map(|e| e.id.ordinal()).collect(),
            other => panic!("not served: {other:?}"),
        }
    }

    #[test]
    fn routes_by_domain_service_and_version() {
        let snap = Snapshot::build(&pool(), 7, &ComponentSlots::default());
        assert_eq!(snap.generation(), 7);
        // Newest version with a running container: 2.0.0 (3.0.0-rc.1 has none).
        assert_eq!(ordinals(snap.route("x.com", "a.S", None)), vec![2]);
        assert_eq!(
            ordinals(snap.route("x.com", "a.S", Some("1.0.0"))),
            vec![0, 1]
        );
        assert_eq!(ordinals(snap.route("y.org", "a.S", None)), vec![5]);
        assert!(matches!(
            snap.route("x.com", "a.S", Some("3.0.0-rc.1")),
            Route::NotRunning
        ));
        assert!(matches!(
            snap.route("x.com", "a.S", Some("9.0.0")),
            Route::UnknownVersion
        ));
        assert!(matches!(
            snap.route("x.com", "a.S", Some("junk")),
            Route::UnknownVersion
        ));
        assert!(matches!(
            snap.route("x.com", "b.T", None),
            Route::NotRunning
        ));
        assert!(matches!(
            snap.route("x.com", "c.U", None),
            Route::UnknownService
        ));
        assert!(matches!(
            snap.route("z.net", "a.S", None),
            Route::UnknownDomain
        ));
        assert_eq!(snap.endpoints().count(), 4);
    }
}
