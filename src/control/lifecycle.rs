//! The seven-state lifecycle of a pod and its current container (SPEC.md
//! §4).
//!
//! `Initiated` (RunPodSandbox) → `Created` (CreateContainer) → `Starting`
//! (StartContainer, until ready) → `Running` → `Stopped` (StopContainer, or
//! the process exiting) → `Removed` (RemoveContainer) → `Killed`
//! (StopPodSandbox) → gone (RemovePodSandbox). `Stopped` may start again,
//! or be replaced by a new container with a higher attempt (the kubelet's
//! restart: the exited one stays listable until removed); `Removed` may be
//! created again; StopPodSandbox is allowed from every state; removals are
//! forced (what runs is stopped first).
//!
//! This module is the whole rule book and nothing else: which call may run
//! from which state, and the state it leads to. It performs no effects.

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

/// The mutating CRI calls on one pod, with the facts about the pod's
/// containers their rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `same`: the current container has exactly this config (a retry);
    /// `newer`: the request's attempt is higher than the current one's (the
    /// kubelet restarting an exited container).
    CreateContainer {
        same: bool,
        newer: bool,
    },
    /// `current`: the container named is the pod's current one (not an
    /// earlier attempt).
    StartContainer {
        current: bool,
    },
    StopContainer {
        current: bool,
    },
    RemoveContainer {
        current: bool,
    },
    StopPodSandbox,
    RemovePodSandbox,
}

/// What a call does from a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Perform the call; the pod's lifecycle becomes this state.
    Go(Lifecycle),
    /// Stop whatever runs and forget the pod (RemovePodSandbox).
    Delete,
    /// The call's effect already holds: succeed and change nothing (the
    /// kubelet's retries, and Stop/Remove of what is already gone).
    AlreadyDone,
    /// The pod already has a container made with other parameters.
    Conflict(&'static str),
    /// Not allowed from this state; the message says why and what to do.
    Refuse(&'static str),
}

/// The rule book: which call may run from which state, and the state it
/// leads to. StartContainer leads to `Starting`; the start's outcome then
/// makes it `Running` or `Stopped`.
pub fn step(from: Lifecycle, call: Call) -> Step {
    use Call::*;
    use Lifecycle::*;
    match (call, from) {
        (CreateContainer { .. }, Initiated | Removed) => Step::Go(Created),
        (CreateContainer { same: true, .. }, Created | Starting | Running | Stopped) => {
            Step::AlreadyDone
        }
        // The kubelet's restart: a new container; the exited one stays.
        (CreateContainer { newer: true, .. }, Stopped) => Step::Go(Created),
        (CreateContainer { .. }, Stopped) => Step::Conflict(
            "the pod already has a container with a different configuration; remove it first, or create it with a higher attempt",
        ),
        (CreateContainer { .. }, Created | Starting | Running) => Step::Conflict(
            "the pod already has a container that has not exited (one pod runs one container); stop and remove it first",
        ),
        (CreateContainer { .. }, Killed) => {
            Step::Refuse("the pod sandbox is stopped; run a new pod sandbox")
        }

        (StartContainer { .. }, Killed) => {
            Step::Refuse("the pod sandbox is stopped; its container cannot start again")
        }
        (StartContainer { current: false }, _) => Step::Refuse(
            "this container has exited and a newer attempt replaced it; start that one",
        ),
        (StartContainer { current: true }, Created | Stopped) => Step::Go(Starting),
        (StartContainer { current: true }, Running) => Step::AlreadyDone,
        (StartContainer { current: true }, Starting) => {
            Step::Refuse("the container is already starting")
        }
        // No current container in these states: `current` cannot be true.
        (StartContainer { current: true }, Initiated | Removed) => {
            Step::Refuse("the pod has no container to start")
        }

        (StopContainer { current: true }, Starting | Running) => Step::Go(Stopped),
        // A container that does not run has nothing to stop.
        (StopContainer { .. }, _) => Step::AlreadyDone,

        (RemoveContainer { .. }, Killed) => Step::Go(Killed),
        // An earlier attempt: the pod's state is its current container's.
        (RemoveContainer { current: false }, state) => Step::Go(state),
        // A running container is stopped first (CRI: removal is forced).
        (RemoveContainer { current: true }, Created | Starting | Running | Stopped) => {
            Step::Go(Removed)
        }
        (RemoveContainer { current: true }, Initiated | Removed) => Step::AlreadyDone,

        (StopPodSandbox, Killed) => Step::AlreadyDone,
        (StopPodSandbox, _) => Step::Go(Killed),

        // Forced as well: whatever runs is stopped first.
        (RemovePodSandbox, _) => Step::Delete,
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
    const CREATE: Call = CreateContainer {
        same: false,
        newer: false,
    };
    const RETRY: Call = CreateContainer {
        same: true,
        newer: false,
    };
    const RESTART: Call = CreateContainer {
        same: false,
        newer: true,
    };
    const START: Call = StartContainer { current: true };
    const STOP: Call = StopContainer { current: true };
    const REMOVE: Call = RemoveContainer { current: true };

    #[test]
    fn follows_the_happy_path() {
        assert_eq!(step(Initiated, CREATE), Step::Go(Created));
        assert_eq!(step(Created, START), Step::Go(Starting));
        assert_eq!(step(Running, STOP), Step::Go(Stopped));
        assert_eq!(step(Stopped, REMOVE), Step::Go(Removed));
        assert_eq!(step(Removed, StopPodSandbox), Step::Go(Killed));
        assert_eq!(step(Killed, RemovePodSandbox), Step::Delete);
    }

    #[test]
    fn allows_the_documented_loops() {
        assert_eq!(step(Stopped, START), Step::Go(Starting));
        assert_eq!(step(Removed, CREATE), Step::Go(Created));
        for s in ALL {
            assert!(matches!(
                step(s, StopPodSandbox),
                Step::Go(Killed) | Step::AlreadyDone
            ));
        }
    }

    #[test]
    fn restarts_the_kubelet_way() {
        // A higher attempt after the container exited: a new container.
        assert_eq!(step(Stopped, RESTART), Step::Go(Created));
        // Never beside a container that has not exited.
        for s in [Created, Starting, Running] {
            assert!(matches!(step(s, RESTART), Step::Conflict(_)), "{s}");
        }
        assert!(matches!(step(Killed, RESTART), Step::Refuse(_)));
        // Earlier attempts cannot start; removing one leaves the pod as is.
        for s in [Created, Running, Stopped, Removed] {
            assert!(matches!(
                step(s, StartContainer { current: false }),
                Step::Refuse(_)
            ));
            assert_eq!(step(s, RemoveContainer { current: false }), Step::Go(s));
            assert_eq!(step(s, StopContainer { current: false }), Step::AlreadyDone);
        }
    }

    #[test]
    fn repeats_are_idempotent() {
        assert_eq!(step(Running, START), Step::AlreadyDone);
        assert_eq!(step(Stopped, STOP), Step::AlreadyDone);
        assert_eq!(step(Removed, REMOVE), Step::AlreadyDone);
        assert_eq!(step(Killed, StopPodSandbox), Step::AlreadyDone);
        for s in [Created, Starting, Running, Stopped] {
            assert_eq!(step(s, RETRY), Step::AlreadyDone, "{s}");
        }
        // The kubelet stops the sandbox before removing stopped containers.
        assert_eq!(step(Killed, REMOVE), Step::Go(Killed));
        assert_eq!(step(Killed, STOP), Step::AlreadyDone);
    }

    #[test]
    fn removal_is_forced() {
        for s in [Created, Starting, Running, Stopped] {
            assert_eq!(step(s, REMOVE), Step::Go(Removed), "{s}");
        }
        for s in ALL {
            assert_eq!(step(s, RemovePodSandbox), Step::Delete, "{s}");
        }
    }

    #[test]
    fn refuses_impossible_transitions() {
        assert!(matches!(step(Killed, CREATE), Step::Refuse(_)));
        assert!(matches!(step(Killed, START), Step::Refuse(_)));
        assert!(matches!(step(Starting, START), Step::Refuse(_)));
        for s in [Created, Starting, Running, Stopped] {
            assert!(matches!(step(s, CREATE), Step::Conflict(_)), "{s}");
        }
    }
}
