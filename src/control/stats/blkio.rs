//! Block I/O counters per device from the cgroup files (v2 `io.stat`, v1
//! `blkio.throttle.*`), parsed from their contents. Nothing here reads or
//! writes a file.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceIo {
    pub major: u32,
    pub minor: u32,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

fn device(io: &mut Vec<DeviceIo>, dev: &str) -> Option<usize> {
    let (major, minor) = dev.split_once(':')?;
    let (major, minor) = (major.parse().ok()?, minor.parse().ok()?);
    if let Some(i) = io.iter().position(|d| (d.major, d.minor) == (major, minor)) {
        return Some(i);
    }
    io.push(DeviceIo {
        major,
        minor,
        ..Default::default()
    });
    Some(io.len() - 1)
}

/// cgroup v2 `io.stat`: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..`.
pub fn parse_v2_io(stat: &str) -> Vec<DeviceIo> {
    let mut io = Vec::new();
    for line in stat.lines() {
        let mut parts = line.split_whitespace();
        let Some(i) = parts.next().and_then(|d| device(&mut io, d)) else {
            continue;
        };
        for kv in parts {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "rbytes" => io[i].read_bytes = v,
                "wbytes" => io[i].write_bytes = v,
                "rios" => io[i].reads = v,
                "wios" => io[i].writes = v,
                _ => {}
            }
        }
    }
    io
}

/// cgroup v1 `blkio.throttle.io_service_bytes` and `io_serviced`:
/// `MAJ:MIN Read N` lines (and `Total`).
pub fn parse_v1_blkio(bytes: &str, serviced: &str) -> Vec<DeviceIo> {
    let mut io = Vec::new();
    for (text, is_bytes) in [(bytes, true), (serviced, false)] {
        for line in text.lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [dev, op, value] = parts[..] else {
                continue;
            };
            let Some(i) = device(&mut io, dev) else {
                continue;
            };
            let v: u64 = value.parse().unwrap_or(0);
            match (op, is_bytes) {
                ("Read", true) => io[i].read_bytes = v,
                ("Write", true) => io[i].write_bytes = v,
                ("Read", false) => io[i].reads = v,
                ("Write", false) => io[i].writes = v,
                _ => {}
            }
        }
    }
    io
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_block_io_of_both_versions() {
        let v2 = parse_v2_io(
            "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n\
             253:1 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n",
        );
        assert_eq!(v2.len(), 2);
        assert_eq!(
            v2[0],
            DeviceIo {
                major: 8,
                minor: 0,
                read_bytes: 4096,
                write_bytes: 8192,
                reads: 1,
                writes: 2
            }
        );
        let v1 = parse_v1_blkio(
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\nTotal 12288\n",
            "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n",
        );
        assert_eq!(v1, vec![v2[0].clone()]);
    }
}
