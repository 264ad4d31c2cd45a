//! Recovery after a restart or a crash of the runtime: reload every pod from
//! the state database, re-adopt each container whose processes are still the
//! same ones, record how the others ended, and publish the pod pool again.

use std::sync::Arc;

use nix::sys::signal::Signal;

use super::container::{self, Process};
use super::lifecycle::Lifecycle;
use super::runtime::Runtime;
use super::state::{ContainerId, ContainerPhase, Pod};
use super::Error;

/// A container found running, and the lifecycle its pod had.
struct Adopted {
    id: ContainerId,
    process: Process,
    lifecycle: Lifecycle,
}

impl Runtime {
    /// Returns how many containers were re-adopted.
    pub fn recover(self: &Arc<Self>) -> Result<usize, Error> {
        let (pods, next_ordinal) = self.load()?;
        let count = pods.len();
        let mut adopted: Vec<Adopted> = Vec::new();
        {
            let mut store = self.store();
            store.next_ordinal = store.next_ordinal.max(next_ordinal);
            for mut pod in pods {
                let found = readopt(&mut pod);
                let current = pod.current().map(|c| c.seq);
                let current_runs = found.iter().any(|a| Some(a.id.seq) == current);
                if !current_runs
                    && matches!(pod.lifecycle, Lifecycle::Running | Lifecycle::Starting)
                {
                    // Exited while no runtime watched, or its start was cut
                    // short before it launched.
                    pod.lifecycle = if pod
                        .current()
                        .is_some_and(|c| c.phase == ContainerPhase::Exited)
                    {
                        Lifecycle::Stopped
                    } else {
                        Lifecycle::Created
                    };
                }
                if pod.lifecycle == Lifecycle::Running && current_runs {
                    let socket = container::socket_path(&pod.socket_dir);
                    let incarnation = pod.current().map_or(0, |c| c.started_at as u64);
                    let peer = pod
                        .current()
                        .and_then(|c| c.identity.as_ref())
                        .and_then(|i| crate::pool::Peer::of_pid(i.pid).ok())
                        .unwrap_or_default();
                    let id = pod.id.clone();
                    store.insert(pod);
                    store.route(&id, socket, incarnation, peer);
                } else {
                    store.insert(pod);
                }
                adopted.extend(found);
            }
            self.publish_changes(&mut store);
        }
        let readopted = adopted.len();
        for a in adopted {
            if a.lifecycle == Lifecycle::Starting {
                // Its start was cut short with the runtime: the kubelet saw
                // StartContainer fail and will start it again.
                tracing::warn!(container = %a.id, "killing a container whose start was interrupted");
                if let Some(c) = self.store().container_mut(&a.id) {
                    c.stop_requested = true;
                }
                a.process.signal(Signal::SIGKILL);
            }
            self.watch_exit(a.id, a.process);
        }
        self.persist_all()?;
        tracing::info!(pods = count, readopted, "state recovered");
        Ok(readopted)
    }
}

/// Re-adopts the pod's containers whose processes still run (at most one:
/// the current), records how the others ended.
fn readopt(pod: &mut Pod) -> Vec<Adopted> {
    let mut found = Vec::new();
    let lifecycle = pod.lifecycle;
    let pod_id = pod.id.clone();
    for c in pod
        .containers
        .iter_mut()
        .filter(|c| c.phase != ContainerPhase::Exited)
    {
        let id = ContainerId {
            pod: pod_id.clone(),
            seq: c.seq,
        };
        let exit_file = c.dir.join("exit.json");
        match c.identity {
            Some(identity) if identity.is_alive() => match Process::adopt(identity, exit_file) {
                Ok(process) => {
                    c.process = Some(process.clone());
                    found.push(Adopted {
                        id,
                        process,
                        lifecycle,
                    });
                }
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "cannot watch the container; it is left running but reported exited");
                    c.apply_exit(&container::process::lost_record());
                }
            },
            Some(_) => c.apply_exit(&container::process::read_exit(&exit_file)),
            // Created, never launched.
            None => {}
        }
    }
    found
}
