//! The authoritative pod pool, owned by the control thread.
//!
//! The data plane never sees this structure: it reads immutable snapshots
//! built from it. Mutation happens only on the control thread.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::{ComponentName, Peer, PodId};

/// One running container as the data plane reaches it: through its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: PodId,
    pub socket: PathBuf,
    /// Which start of the container this is: a container started again
    /// serves on the same socket path but is a different upstream.
    pub incarnation: u64,
    /// Who must be listening on `socket` (checked on every connect).
    pub peer: Peer,
}

/// The component map (component → running containers, by ordinal) and the
/// ID map (every known pod → its component).
#[derive(Debug, Default, Clone)]
pub struct PodPool {
    components: BTreeMap<ComponentName, BTreeMap<u64, Endpoint>>,
    ids: HashMap<PodId, ComponentName>,
}

impl PodPool {
    /// Records a pod in the ID map. It is not routable until
    /// [`PodPool::set_running`].
    pub fn insert_pod(&mut self, id: &PodId) {
        self.ids.insert(id.clone(), id.component().clone());
    }

    /// Forgets a pod entirely (RemovePodSandbox).
    pub fn remove_pod(&mut self, id: &PodId) {
        self.set_not_running(id);
        self.ids.remove(id);
    }

    /// Makes a pod's container routable at `socket`.
    pub fn set_running(&mut self, id: &PodId, socket: PathBuf, incarnation: u64, peer: Peer) {
        self.ids.insert(id.clone(), id.component().clone());
        self.components
            .entry(id.component().clone())
            .or_default()
            .insert(
                id.ordinal(),
                Endpoint {
                    id: id.clone(),
                    socket,
                    incarnation,
                    peer,
                },
            );
    }

    /// Takes a pod's container out of routing. Returns whether it was there.
    pub fn set_not_running(&mut self, id: &PodId) -> bool {
        let Some(running) = self.components.get_mut(id.component()) else {
            return false;
        };
        let removed = running.remove(&id.ordinal()).is_some();
        if running.is_empty() {
            self.components.remove(id.component());
        }
        removed
    }

    /// The component of a known pod (the first step of a two-step lookup).
    pub fn component_of(&self, id: &PodId) -> Option<&ComponentName> {
        self.ids.get(id)
    }

    /// The running containers of a component, in ordinal order.
    pub fn running(&self, component: &ComponentName) -> impl Iterator<Item = &Endpoint> {
        self.components
            .get(component)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Every component with at least one running container, with them.
    pub fn components(
        &self,
    ) -> impl Iterator<Item = (&ComponentName, impl Iterator<Item = &Endpoint>)> {
        self.components.iter().map(|(c, m)| (c, m.values()))
    }

    /// Every component some pod names, running or not.
    pub fn known_components(&self) -> impl Iterator<Item = &ComponentName> {
        self.ids.values()
    }

    /// How many pods the ID map knows.
    pub fn pod_count(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> PodId {
        s.parse().unwrap()
    }

    #[test]
    fn tracks_running_containers_per_component() {
        let mut pool = PodPool::default();
        let a0 = id("x.com:S@1.0.0#0");
        let a1 = id("x.com:S@1.0.0#1");
        let b2 = id("x.com:S@2.0.0#2");
        for p in [&a0, &a1, &b2] {
            pool.insert_pod(p);
        }
        assert_eq!(pool.pod_count(), 3);
        assert_eq!(pool.running(a0.component()).count(), 0);

        pool.set_running(&a0, "/s/0".into(), 1, Default::default());
        pool.set_running(&a1, "/s/1".into(), 1, Default::default());
        pool.set_running(&b2, "/s/2".into(), 1, Default::default());
        let sockets: Vec<_> = pool
            .running(a0.component())
            .map(|e| e.socket.clone())
            .collect();
        assert_eq!(sockets, vec![PathBuf::from("/s/0"), PathBuf::from("/s/1")]);
        assert_eq!(pool.components().count(), 2);

        assert!(pool.set_not_running(&a0));
        assert!(!pool.set_not_running(&a0));
        assert_eq!(pool.running(a0.component()).count(), 1);
        assert_eq!(pool.component_of(&a0), Some(a0.component()));

        pool.remove_pod(&a1);
        assert_eq!(pool.running(a1.component()).count(), 0);
        assert_eq!(pool.components().count(), 1);
        assert_eq!(pool.component_of(&a1), None);
        assert_eq!(pool.pod_count(), 2);
    }
}
