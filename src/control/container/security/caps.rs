//! Linux capabilities: names, the runtime default set, the CRI add/drop
//! rules, and (in the container's init) applying the five sets.
//!
//! The sets follow runc under containerd's CRI plugin: bounding, permitted
//! and effective are the container's capabilities, inheritable holds only
//! the ambient ones (none unless asked: CVE-2022-24769), and a non-root
//! user keeps none of them across exec unless they are ambient (the
//! kernel's execve rule).

use serde::{Deserialize, Serialize};

/// `CAP_*` names by number (linux/capability.h).
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The 14 capabilities containerd and runc give a container by default.
pub const RUNTIME_DEFAULT: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// A set of capabilities as the kernel's 64-bit mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSet(pub u64);

impl CapSet {
    pub fn contains(self, cap: u32) -> bool {
        self.0 & (1 << cap) != 0
    }
    pub fn with(self, cap: u32) -> Self {
        CapSet(self.0 | (1 << cap))
    }
    pub fn without(self, cap: u32) -> Self {
        CapSet(self.0 & !(1 << cap))
    }
    pub fn has(self, name: &str) -> bool {
        number(name).is_some_and(|n| self.contains(n))
    }
}

/// The capability number of `NAME` or `CAP_NAME` (any case).
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

/// The highest capability this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(NAMES.len() as u32 - 1)
}

/// The container's capabilities: the default set, then the CRI's add and
/// drop lists as containerd reads them ("ALL" first, then the names, drops
/// last). Returns (capabilities, ambient) or the name that is not one.
pub fn from_cri(
    add: &[String],
    drop: &[String],
    ambient: &[String],
) -> Result<(CapSet, CapSet), String> {
    let last = last_cap();
    let all = CapSet((0..=last).fold(0, |m, c| m | (1 << c)));
    let parse = |name: &str| -> Result<u32, String> {
        match number(name) {
            Some(n) if n <= last => Ok(n),
            Some(_) => Err(format!(
                "capability {name:?} is not supported by this kernel"
            )),
            None => Err(format!("unknown capability {name:?}")),
        }
    };
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
    let mut caps = RUNTIME_DEFAULT.iter().fold(CapSet::default(), |s, n| {
        s.with(number(n).expect("known name"))
    });
    if add.iter().any(is_all) {
        caps = all;
    }
    if drop.iter().any(is_all) {
        caps = CapSet::default();
    }
    for name in add.iter().filter(|n| !is_all(n)) {
        caps = caps.with(parse(name)?);
    }
    for name in drop.iter().filter(|n| !is_all(n)) {
        caps = caps.without(parse(name)?);
    }
    let mut amb = CapSet::default();
    for name in ambient {
        let n = parse(name)?;
        if !caps.contains(n) {
            return Err(format!(
                "ambient capability {name:?} is not among the container's capabilities"
            ));
        }
        amb = amb.with(n);
    }
    Ok((caps, amb))
}

/// In the container's init, while still root: drops every capability
/// outside `caps` from the bounding set. Needs CAP_SETPCAP (the runtime has
/// it).
pub fn drop_bounding(caps: CapSet) -> Result<(), String> {
    for cap in 0..=last_cap() {
        if !caps.contains(cap) {
            // SAFETY: prctl with integer arguments.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if r != 0 {
                return Err(format!(
                    "drop capability CAP_{} from the bounding set: {}",
                    NAMES[cap as usize],
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    Ok(())
}

/// Keep the permitted set across the change of user that follows.
pub fn keep_across_setuid(on: bool) -> Result<(), String> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, on as libc::c_ulong, 0, 0, 0) };
    if r != 0 {
        return Err(format!(
            "prctl(PR_SET_KEEPCAPS): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets permitted = effective = `caps`, inheritable = `ambient`, then
/// raises the ambient set (after the change of user).
pub fn apply(caps: CapSet, ambient: CapSet) -> Result<(), String> {
    let mut header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    for (i, d) in data.iter_mut().enumerate() {
        let shift = 32 * i;
        d.effective = (caps.0 >> shift) as u32;
        d.permitted = (caps.0 >> shift) as u32;
        d.inheritable = (ambient.0 >> shift) as u32;
    }
    // SAFETY: capset with a version-3 header and two data words, as the
    // kernel's ABI defines them.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_mut_ptr()) };
    if r != 0 {
        return Err(format!(
            "set capabilities: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    for cap in 0..=last_cap() {
        if ambient.contains(cap) {
            // SAFETY: prctl with integer arguments.
            let r = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            };
            if r != 0 {
                return Err(format!(
                    "raise ambient capability CAP_{}: {}",
                    NAMES[cap as usize],
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_default_set_is_runcs_14() {
        let (caps, amb) = from_cri(&[], &[], &[]).unwrap();
        // containerd's default container shows CapEff 00000000a80425fb.
        assert_eq!(caps.0, 0xa804_25fb);
        assert_eq!(amb.0, 0);
    }

    #[test]
    fn add_and_drop_follow_containerd() {
        let (caps, _) = from_cri(&s(&["NET_ADMIN"]), &s(&["CAP_CHOWN"]), &[]).unwrap();
        assert!(caps.has("NET_ADMIN") && !caps.has("CHOWN") && caps.has("KILL"));
        let (caps, _) = from_cri(&s(&["NET_BIND_SERVICE"]), &s(&["ALL"]), &[]).unwrap();
        assert_eq!(caps, CapSet(0).with(10));
        let (caps, _) = from_cri(&s(&["ALL"]), &s(&["SYS_ADMIN"]), &[]).unwrap();
        assert!(caps.has("SYS_MODULE") && !caps.has("SYS_ADMIN"));
        assert!(from_cri(&s(&["NOT_A_CAP"]), &[], &[])
            .unwrap_err()
            .contains("NOT_A_CAP"));
        assert!(from_cri(&[], &s(&["ALL"]), &s(&["KILL"])).is_err());
    }
}
