//! In the container's init, after `pivot_root`: the groups the image's own
//! `/etc/passwd` and `/etc/group` give the container's user (the CRI's
//! default SupplementalGroupsPolicy, Merge, as containerd reads them).
//! The files are the image's, so the attacker's: they are read with a size
//! cap and parsed leniently; a line that does not parse is skipped.

use std::io::Read;

const MAX_FILE: u64 = 1 << 20;

fn read_capped(path: &str) -> String {
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_FILE).read_to_string(&mut text);
    }
    text
}

/// The gids of the groups `/etc/group` lists `uid`'s user (by its name in
/// `/etc/passwd`) as a member of.
pub fn image_groups(uid: u32) -> Vec<u32> {
    groups_of(uid, &read_capped("/etc/passwd"), &read_capped("/etc/group"))
}

fn groups_of(uid: u32, passwd: &str, group: &str) -> Vec<u32> {
    let Some(name) = passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then_some(name)
    }) else {
        return Vec::new();
    };
    group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let gid: u32 = f.get(2)?.parse().ok()?;
            f.get(3)?
                .split(',')
                .any(|m| m.trim() == name)
                .then_some(gid)
        })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_the_groups_naming_the_user() {
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbroken\n";
        let group =
            "root:x:0:\nvideo:x:44:app,other\nwheel:x:10:root\naudio:x:29:app\nbad:x:nope:app\n";
        assert_eq!(groups_of(1000, passwd, group), vec![44, 29]);
        assert_eq!(groups_of(0, passwd, group), vec![10]);
        assert!(groups_of(4242, passwd, group).is_empty());
    }
}
