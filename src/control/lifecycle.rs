//! The seven-state lifecycle of a pod and its one container (SPEC.md §4).
//!
//! `Initiated` (RunPodSandbox) → `Created` (CreateContainer) → `Starting`
//! (StartContainer, until ready) → `Running` → `Stopped` (StopContainer) →
//! `Removed` (RemoveContainer) → `Killed` (StopPodSandbox) → gone
//! (RemovePodSandbox). `Stopped` may start again, `Removed` may be created
//! again, StopPodSandbox is allowed from every state.
//!
//! This module is the whole rule book and nothing else: which call may run
//! from which state. It performs no effects.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Lifecycle {
    Initiated,
    Created,
    Starting,
    Running,
    Stopped,
    Removed,
    Killed,
}

impl Lifecycle {
    pub const ALL: [Lifecycle; 7] = [
        Lifecycle::Initiated,
        Lifecycle::Created,
        Lifecycle::Starting,
        Lifecycle::Running,
        Lifecycle::Stopped,
        Lifecycle::Removed,
        Lifecycle::Killed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Lifecycle::Initiated => "initiated",
            Lifecycle::Created => "created",
            Lifecycle::Starting => "starting",
            Lifecycle::Running => "running",
            Lifecycle::Stopped => "stopped",
            Lifecycle::Removed => "removed",
            Lifecycle::Killed => "killed",
        }
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The mutating CRI calls on one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    CreateContainer,
    StartContainer,
    StopContainer,
    RemoveContainer,
    StopPodSandbox,
    RemovePodSandbox,
}

/// What a call does from a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Perform the transition.
    Go,
    /// The call's effect already holds: succeed and change nothing (the
    /// kubelet's retries, and Stop/Remove of what is already gone).
    AlreadyDone,
    /// CreateContainer on a pod that has a container: success when the
    /// parameters are the same, an error otherwise (the caller compares).
    SameOrConflict,
    /// There is no container to act on.
    NoContainer,
    /// Not allowed from this state; the message says why and what to do.
    Refuse(&'static str),
}

/// `container_present` matters only in `Killed`, where the container may or
/// may not have been removed yet.
pub fn step(from: Lifecycle, call: Call, container_present: bool) -> Step {
    use Call::*;
    use Lifecycle::*;
    match (call, from) {
        (CreateContainer, Initiated | Removed) => Step::Go,
        (CreateContainer, Created | Starting | Running | Stopped) => Step::SameOrConflict,
        (CreateContainer, Killed) => {
            Step::Refuse("the pod sandbox is stopped; run a new pod sandbox")
        }

        (StartContainer, Created | Stopped) => Step::Go,
        (StartContainer, Running) => Step::AlreadyDone,
        (StartContainer, Starting) => Step::Refuse("the container is already starting"),
        (StartContainer, Initiated | Removed) => Step::NoContainer,
        (StartContainer, Killed) if container_present => {
            Step::Refuse("the pod sandbox is stopped; its container cannot start again")
        }
        (StartContainer, Killed) => Step::NoContainer,

        (StopContainer, Starting | Running) => Step::Go,
        // A container that never ran has nothing to stop.
        (StopContainer, Created | Stopped | Removed | Initiated | Killed) => Step::AlreadyDone,

        (RemoveContainer, Created | Stopped) => Step::Go,
        (RemoveContainer, Starting | Running) => {
            Step::Refuse("the container is running; stop it with StopContainer first")
        }
        (RemoveContainer, Initiated | Removed) => Step::AlreadyDone,
        (RemoveContainer, Killed) if container_present => Step::Go,
        (RemoveContainer, Killed) => Step::AlreadyDone,

        (StopPodSandbox, Killed) => Step::AlreadyDone,
        (StopPodSandbox, _) => Step::Go,

        (RemovePodSandbox, Killed) => Step::Go,
        (RemovePodSandbox, _) => {
            Step::Refuse("the pod sandbox is not stopped; call StopPodSandbox first")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Call::*;
    use Lifecycle::*;

    const ALL: [Lifecycle; 7] = [
        Initiated, Created, Starting, Running, Stopped, Removed, Killed,
    ];

    #[test]
    fn follows_the_happy_path() {
        assert_eq!(step(Initiated, CreateContainer, false), Step::Go);
        assert_eq!(step(Created, StartContainer, true), Step::Go);
        assert_eq!(step(Running, StopContainer, true), Step::Go);
        assert_eq!(step(Stopped, RemoveContainer, true), Step::Go);
        assert_eq!(step(Removed, StopPodSandbox, false), Step::Go);
        assert_eq!(step(Killed, RemovePodSandbox, false), Step::Go);
    }

    #[test]
    fn allows_the_documented_loops() {
        assert_eq!(step(Stopped, StartContainer, true), Step::Go);
        assert_eq!(step(Removed, CreateContainer, false), Step::Go);
        for s in ALL {
            assert_ne!(
                step(s, StopPodSandbox, true),
                Step::Refuse(""),
                "StopPodSandbox from {s}"
            );
            assert!(matches!(
                step(s, StopPodSandbox, true),
                Step::Go | Step::AlreadyDone
            ));
        }
    }

    #[test]
    fn repeats_are_idempotent() {
        assert_eq!(step(Running, StartContainer, true), Step::AlreadyDone);
        assert_eq!(step(Stopped, StopContainer, true), Step::AlreadyDone);
        assert_eq!(step(Removed, RemoveContainer, false), Step::AlreadyDone);
        assert_eq!(step(Killed, StopPodSandbox, false), Step::AlreadyDone);
        assert_eq!(step(Created, CreateContainer, true), Step::SameOrConflict);
        // The kubelet stops the sandbox before removing stopped containers.
        assert_eq!(step(Killed, RemoveContainer, true), Step::Go);
        assert_eq!(step(Killed, RemoveContainer, false), Step::AlreadyDone);
        assert_eq!(step(Killed, StopContainer, true), Step::AlreadyDone);
    }

    #[test]
    fn refuses_impossible_transitions() {
        assert!(matches!(
            step(Running, RemoveContainer, true),
            Step::Refuse(_)
        ));
        assert!(matches!(
            step(Killed, CreateContainer, false),
            Step::Refuse(_)
        ));
        assert!(matches!(
            step(Killed, StartContainer, true),
            Step::Refuse(_)
        ));
        assert_eq!(step(Initiated, StartContainer, false), Step::NoContainer);
        assert_eq!(step(Removed, StartContainer, false), Step::NoContainer);
        for s in [Initiated, Created, Starting, Running, Stopped, Removed] {
            assert!(
                matches!(step(s, RemovePodSandbox, true), Step::Refuse(_)),
                "{s}"
            );
        }
    }
}
