//! seccomp: the runtime's default profile, Localhost profiles (the
//! Docker/OCI JSON format the kubelet's `localhostProfile` files use), and
//! their compilation to BPF with `seccompiler`.
//!
//! A profile is "first matching rule decides, else the default action".
//! seccompiler builds filters with one match action each, so a profile is
//! compiled into a stack: one filter whose default is the profile's and that
//! allows every syscall some rule names (under that rule's conditions), and
//! one filter per other action used by the rules, matching only them. The
//! kernel runs all and takes the most restrictive answer (for equal ones, the
//! last installed), which is that rule's action. The runtime compiles; the
//! shim only installs the programs, last thing before exec.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};
use serde::Deserialize;

use super::caps::CapSet;
use super::syscalls::SYSCALLS;

/// One rule: these syscalls, under all of `args`, get `action`; `caps`
/// limits it to containers holding (or, when `without`, lacking) them.
#[derive(Debug, Clone)]
struct Rule {
    names: Vec<String>,
    action: SeccompAction,
    args: Vec<Arg>,
    needs_caps: Vec<String>,
    unless_caps: Vec<String>,
}

#[derive(Debug, Clone)]
struct Arg {
    index: u8,
    op: SeccompCmpOp,
    value: u64,
}

#[derive(Debug, Clone)]
pub struct Profile {
    default: SeccompAction,
    rules: Vec<Rule>,
}

/// Per syscall number: the OR of its rules' conditions (`None`: matches
/// always).
type Chains = BTreeMap<i64, Option<Vec<SeccompRule>>>;

/// Compiled BPF programs (instructions packed as `code | jt | jf | k`), in
/// the order to install them.
pub type Programs = Vec<Vec<u64>>;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Syscalls every container may make under the runtime default profile:
/// the effect of Docker's and containerd's default profile on x86_64.
const ALLOWED: &str = "accept accept4 access adjtimex alarm bind brk capget capset chdir chmod \
chown clock_adjtime clock_getres clock_gettime clock_nanosleep close close_range connect \
copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old \
epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit \
exit_group faccessat faccessat2 fadvise64 fallocate fanotify_mark fchdir fchmod fchmodat fchown \
fchownat fcntl fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstatfs \
fsync ftruncate futex futex_waitv futimesat getcpu getcwd getdents getdents64 getegid geteuid \
getgid getgroups getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom \
getresgid getresuid getrlimit get_robust_list getrusage getsid getsockname getsockopt \
get_thread_area gettid gettimeofday getuid getxattr inotify_add_watch inotify_init \
inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents \
ioprio_get ioprio_set io_setup io_submit io_uring_enter io_uring_register io_uring_setup kill \
landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lgetxattr link linkat \
listen listxattr llistxattr lremovexattr lseek lsetxattr lstat madvise membarrier memfd_create \
memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mprotect \
mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink mremap msgctl msgget \
msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat open openat \
openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll \
ppoll prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pwrite64 pwritev \
pwritev2 read readahead readlink readlinkat readv recvfrom recvmmsg recvmsg remap_file_pages \
removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending \
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_tgsigqueueinfo \
sched_getaffinity sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min \
sched_getscheduler sched_rr_get_interval sched_setaffinity sched_setattr sched_setparam \
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop sendfile sendmmsg \
sendmsg sendto setfsgid setfsuid setgid setgroups setitimer setpgid setpriority setregid \
setresgid setresuid setreuid setrlimit set_robust_list setsid setsockopt set_thread_area \
set_tid_address setuid setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd \
signalfd4 socketpair splice stat statfs statx symlink symlinkat sync sync_file_range syncfs \
sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_settime \
timerfd_create timerfd_gettime timerfd_settime times tkill truncate umask uname unlink unlinkat \
utime utimensat utimes vfork vmsplice wait4 waitid write writev \
process_vm_readv process_vm_writev ptrace arch_prctl modify_ldt";

/// Syscalls the default profile allows only to a container holding the
/// capability named first.
const BY_CAPABILITY: &[(&str, &str)] = &[
    ("DAC_READ_SEARCH", "open_by_handle_at"),
    (
        "SYS_ADMIN",
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount \
         mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname \
         sethostname setns syslog umount2 unshare",
    ),
    ("SYS_BOOT", "reboot"),
    ("SYS_CHROOT", "chroot"),
    ("SYS_MODULE", "delete_module init_module finit_module"),
    ("SYS_PACCT", "acct"),
    (
        "SYS_PTRACE",
        "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    ),
    ("SYS_RAWIO", "iopl ioperm"),
    ("SYS_TIME", "settimeofday clock_settime"),
    ("SYS_TTY_CONFIG", "vhangup"),
    (
        "SYS_NICE",
        "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    ),
    ("SYSLOG", "syslog"),
    ("BPF", "bpf"),
    ("PERFMON", "perf_event_open"),
];

/// The clone flags that create namespaces (CLONE_NEWNS ... CLONE_NEWCGROUP
/// and CLONE_NEWTIME's neighbours), refused without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

fn names(list: &str) -> Vec<String> {
    list.split_whitespace().map(str::to_owned).collect()
}

impl Profile {
    /// The runtime default: Docker's and containerd's default profile.
    pub fn runtime_default() -> Self {
        let allow = |names: Vec<String>, args: Vec<Arg>, needs: &[&str], unless: &[&str]| Rule {
            names,
            action: SeccompAction::Allow,
            args,
            needs_caps: needs.iter().map(|s| s.to_string()).collect(),
            unless_caps: unless.iter().map(|s| s.to_string()).collect(),
        };
        let mut rules = vec![allow(names(ALLOWED), vec![], &[], &[])];
        // socket: every family but AF_VSOCK (40).
        rules.push(allow(
            names("socket"),
            vec![Arg {
                index: 0,
                op: SeccompCmpOp::Ne,
                value: 40,
            }],
            &[],
            &[],
        ));
        // personality: only the harmless personas.
        for value in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
            rules.push(allow(
                names("personality"),
                vec![Arg {
                    index: 0,
                    op: SeccompCmpOp::Eq,
                    value,
                }],
                &[],
                &[],
            ));
        }
        for (cap, list) in BY_CAPABILITY {
            rules.push(allow(names(list), vec![], &[cap], &[]));
        }
        // Without CAP_SYS_ADMIN: clone without namespace flags, and clone3
        // answers ENOSYS so libc falls back to clone (whose flags BPF can
        // read).
        rules.push(allow(
            names("clone"),
            vec![Arg {
                index: 0,
                op: SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS),
                value: 0,
            }],
            &[],
            &["SYS_ADMIN"],
        ));
        rules.push(Rule {
            names: names("clone3"),
            action: SeccompAction::Errno(ENOSYS),
            args: vec![],
            needs_caps: vec![],
            unless_caps: vec!["SYS_ADMIN".into()],
        });
        Profile {
            default: SeccompAction::Errno(EPERM),
            rules,
        }
    }

    /// A Localhost profile: the Docker/OCI seccomp JSON format.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let file: JsonProfile =
            serde_json::from_str(text).map_err(|e| format!("not a seccomp profile: {e}"))?;
        let archs: Vec<String> = file
            .architectures
            .iter()
            .chain(file.arch_map.iter().map(|m| &m.architecture))
            .cloned()
            .collect();
        if !archs.is_empty() && !archs.iter().any(|a| a == "SCMP_ARCH_X86_64") {
            return Err("the profile does not cover SCMP_ARCH_X86_64".into());
        }
        let default = action(&file.default_action, file.default_errno_ret)?;
        let mut rules = Vec::new();
        for s in file.syscalls {
            let arch_ok = |arches: &[String]| {
                arches
                    .iter()
                    .any(|a| matches!(a.as_str(), "amd64" | "x86_64" | "SCMP_ARCH_X86_64"))
            };
            if !s.includes.arches.is_empty() && !arch_ok(&s.includes.arches) {
                continue;
            }
            if arch_ok(&s.excludes.arches) {
                continue;
            }
            let mut names = s.names;
            if let Some(name) = s.name {
                names.push(name);
            }
            let mut args = Vec::new();
            for a in s.args {
                if a.index > 5 {
                    return Err(format!("argument index {} out of range", a.index));
                }
                let op = match a.op.as_str() {
                    "SCMP_CMP_EQ" => SeccompCmpOp::Eq,
                    "SCMP_CMP_NE" => SeccompCmpOp::Ne,
                    "SCMP_CMP_LT" => SeccompCmpOp::Lt,
                    "SCMP_CMP_LE" => SeccompCmpOp::Le,
                    "SCMP_CMP_GT" => SeccompCmpOp::Gt,
                    "SCMP_CMP_GE" => SeccompCmpOp::Ge,
                    "SCMP_CMP_MASKED_EQ" => SeccompCmpOp::MaskedEq(a.value),
                    other => return Err(format!("unknown comparison {other:?}")),
                };
                let value = if matches!(op, SeccompCmpOp::MaskedEq(_)) {
                    a.value_two
                } else {
                    a.value
                };
                args.push(Arg {
                    index: a.index,
                    op,
                    value,
                });
            }
            rules.push(Rule {
                names,
                action: action(&s.action, s.errno_ret)?,
                args,
                needs_caps: s.includes.caps,
                unless_caps: s.excludes.caps,
            });
        }
        Ok(Profile { default, rules })
    }

    /// Compiles the profile for a container holding `caps`.
    pub fn compile(&self, caps: CapSet) -> Result<Programs, String> {
        let number = |name: &str| SYSCALLS.iter().find(|(n, _)| *n == name).map(|(_, nr)| *nr);
        let has = |list: &[String]| list.iter().all(|c| caps.has(c));
        let applies = |r: &&Rule| {
            has(&r.needs_caps)
                && (r.unless_caps.is_empty() || !r.unless_caps.iter().any(|c| caps.has(c)))
        };
        let rules: Vec<&Rule> = self.rules.iter().filter(applies).collect();
        let condition = |a: &Arg| {
            SeccompCondition::new(a.index, SeccompCmpArgLen::Qword, a.op.clone(), a.value)
                .map_err(|e| format!("seccomp condition: {e}"))
        };
        // Per action, per syscall: the OR of the rules' conditions (an
        // unconditional rule matches always).
        let mut by_action: Vec<(SeccompAction, Chains)> = Vec::new();
        let mut any: Chains = BTreeMap::new();
        for rule in rules {
            let conditions = rule
                .args
                .iter()
                .map(condition)
                .collect::<Result<Vec<_>, _>>()?;
            for name in &rule.names {
                // Syscalls x86_64 has not (other ABIs' names) are skipped,
                // as libseccomp does.
                let Some(nr) = number(name) else { continue };
                for map in [&mut any, entry(&mut by_action, &rule.action)] {
                    let slot = map.entry(nr).or_insert_with(|| Some(Vec::new()));
                    match (slot.as_mut(), conditions.is_empty()) {
                        (_, true) => *slot = None,
                        (Some(list), false) => list.push(
                            SeccompRule::new(conditions.clone())
                                .map_err(|e| format!("seccomp rule for {name}: {e}"))?,
                        ),
                        (None, false) => {}
                    }
                }
            }
        }
        let build = |map: Chains,
                     mismatch: SeccompAction,
                     on_match: SeccompAction|
         -> Result<Vec<u64>, String> {
            let rules = map
                .into_iter()
                .map(|(nr, r)| (nr, r.unwrap_or_default()))
                .collect();
            let filter = SeccompFilter::new(rules, mismatch, on_match, TargetArch::x86_64)
                .map_err(|e| format!("seccomp filter: {e}"))?;
            let program: seccompiler::BpfProgram = filter
                .try_into()
                .map_err(|e: seccompiler::BackendError| format!("seccomp compile: {e}"))?;
            Ok(program
                .iter()
                .map(|i| {
                    (i.code as u64) << 48 | (i.jt as u64) << 40 | (i.jf as u64) << 32 | i.k as u64
                })
                .collect())
        };
        let mut programs = Vec::new();
        if self.default != SeccompAction::Allow {
            programs.push(build(any, self.default.clone(), SeccompAction::Allow)?);
        }
        for (action, map) in by_action {
            if action != SeccompAction::Allow {
                programs.push(build(map, SeccompAction::Allow, action)?);
            }
        }
        Ok(programs)
    }
}

fn entry<'a>(list: &'a mut Vec<(SeccompAction, Chains)>, action: &SeccompAction) -> &'a mut Chains {
    let i = match list.iter().position(|(a, _)| a == action) {
        Some(i) => i,
        None => {
            list.push((action.clone(), BTreeMap::new()));
            list.len() - 1
        }
    };
    &mut list[i].1
}

fn action(name: &str, errno: Option<u32>) -> Result<SeccompAction, String> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno.unwrap_or(EPERM)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno.unwrap_or(EPERM)),
        other => return Err(format!("unsupported seccomp action {other:?}")),
    })
}

/// Installs compiled programs on the calling thread (needs no_new_privs or
/// CAP_SYS_ADMIN).
pub fn install(programs: &Programs) -> Result<(), String> {
    for program in programs {
        let mut filter: Vec<libc::sock_filter> = program
            .iter()
            .map(|i| libc::sock_filter {
                code: (i >> 48) as u16,
                jt: (i >> 40) as u8,
                jf: (i >> 32) as u8,
                k: *i as u32,
            })
            .collect();
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: seccomp(SET_MODE_FILTER) with a valid program that lives
        // across the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(format!(
                "install seccomp filter: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Vec<JsonArch>,
    #[serde(default)]
    syscalls: Vec<JsonSyscall>,
}

#[derive(Deserialize)]
struct JsonArch {
    architecture: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonSyscall {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<JsonArg>,
    #[serde(default)]
    includes: JsonFilter,
    #[serde(default)]
    excludes: JsonFilter,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonArg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
struct JsonFilter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::container::security::caps;

    #[test]
    fn the_default_profile_compiles_to_two_filters() {
        let (c, _) = caps::from_cri(&[], &[], &[]).unwrap();
        let programs = Profile::runtime_default().compile(c).unwrap();
        // The allow list, then clone3 → ENOSYS.
        assert_eq!(programs.len(), 2);
        assert!(programs[0].len() > 300);
    }

    #[test]
    fn localhost_profiles_parse() {
        let p = Profile::from_json(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","bogus_call"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
        )
        .unwrap();
        assert_eq!(p.compile(CapSet(0)).unwrap().len(), 1);
        assert!(Profile::from_json(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#).is_err());
        assert!(Profile::from_json("[]").is_err());
    }
}
