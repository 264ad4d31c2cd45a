//! Recovery after a restart or a crash of the runtime: reload every pod from
//! the state database, re-adopt each container whose processes are still the
//! same ones, record how the others ended, and publish the pod pool again.

use std::sync::Arc;

use nix::sys::signal::Signal;

use super::container::{self, Process};
use super::lifecycle::Lifecycle;
use super::runtime::Runtime;
use super::state::{ContainerPhase, SandboxKey};
use super::Error;
use crate::pool::PodId;

impl Runtime {
    /// Returns how many containers were re-adopted.
    pub fn recover(self: &Arc<Self>) -> Result<usize, Error> {
        let (pods, next_ordinal) = self.load()?;
        let count = pods.len();
        let mut adopted: Vec<(PodId, Process, Lifecycle)> = Vec::new();
        {
            let mut store = self.store();
            store.next_ordinal = store.next_ordinal.max(next_ordinal);
            for mut pod in pods {
                let id = pod.id.clone();
                if let Some(c) = pod
                    .container
                    .as_mut()
                    .filter(|c| c.phase != ContainerPhase::Exited)
                {
                    let exit_file = c.dir.join("exit.json");
                    match c.identity {
                        Some(identity) if identity.is_alive() => {
                            match Process::adopt(identity, exit_file) {
                                Ok(process) => {
                                    c.process = Some(process.clone());
                                    adopted.push((id.clone(), process, pod.lifecycle));
                                }
                                Err(e) => {
                                    tracing::warn!(container = %id, error = %e, "cannot watch the container; it is left running but reported exited");
                                    c.apply_exit(&container::process::lost_record());
                                }
                            }
                        }
                        Some(_) => c.apply_exit(&container::process::read_exit(&exit_file)),
                        // Created, never launched.
                        None => {}
                    }
                    if c.phase == ContainerPhase::Exited
                        && matches!(pod.lifecycle, Lifecycle::Running | Lifecycle::Starting)
                    {
                        pod.lifecycle = Lifecycle::Stopped;
                    }
                }
                if pod.lifecycle == Lifecycle::Starting
                    && adopted.last().is_none_or(|(a, _, _)| a != &id)
                {
                    pod.lifecycle = Lifecycle::Created;
                }
                store
                    .names
                    .insert(SandboxKey::of(&pod.metadata()), id.clone());
                store.pool.insert_pod(&id);
                store.pods.insert(id, pod);
            }
            for (id, _, lifecycle) in &adopted {
                if *lifecycle == Lifecycle::Running {
                    let pod = &store.pods[id];
                    let socket = container::socket_path(&pod.socket_dir);
                    let incarnation = pod.container.as_ref().map_or(0, |c| c.started_at as u64);
                    let peer = pod
                        .container
                        .as_ref()
                        .and_then(|c| c.identity.as_ref())
                        .and_then(|i| crate::pool::Peer::of_pid(i.pid).ok())
                        .unwrap_or_default();
                    store.pool.set_running(id, socket, incarnation, peer);
                }
            }
            self.publish(&store);
        }
        let readopted = adopted.len();
        for (id, process, lifecycle) in adopted {
            if lifecycle == Lifecycle::Starting {
                // Its start was cut short with the runtime: the kubelet saw
                // StartContainer fail and will start it again.
                tracing::warn!(container = %id, "killing a container whose start was interrupted");
                process.signal(Signal::SIGKILL);
            }
            self.watch_exit(id, process);
        }
        self.persist_all()?;
        tracing::info!(pods = count, readopted, "state recovered");
        Ok(readopted)
    }
}
