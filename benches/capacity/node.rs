//! The node under test: vimanad with one running example pod, stopped and
//! resumed so that only the measured node runs, its log (tail, timestamps),
//! and the check that reports a window's errors.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::{Node, SERVICE};
use crate::measure::Tally;

pub const DOMAIN: &str = "example.com";

/// A node with one running example pod of `domain`.
pub struct Target {
    pub node: Node,
    pod: String,
}

impl Target {
    pub async fn start(shards: usize, log: &str, extra: &[&str]) -> Target {
        let mut node = Node::start_configured(shards, log, extra).await;
        let pod = node
            .running_pod("capacity", (DOMAIN, SERVICE, "1.0.0"))
            .await;
        Target { node, pod }
    }

    pub fn pid(&self) -> u32 {
        self.node.process.id()
    }

    /// SIGSTOP (`false`) or SIGCONT (`true`) vimanad, so that only the
    /// node being measured runs.
    pub fn set_running(&mut self, running: bool) {
        let signal = if running {
            libc::SIGCONT
        } else {
            libc::SIGSTOP
        };
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.node.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub async fn remove(mut self) {
        self.set_running(true);
        let pod = self.pod.clone();
        self.node.remove_running_pod(&pod).await;
    }
}

/// A window's errors and stalls, reported at once (with the end of
/// vimanad's log) and kept for the end.
pub fn check(trouble: &mut Vec<String>, what: &str, target: &Target, tally: &Tally) {
    if tally.error_count() > 0 || tally.stalled > 0 {
        let line = format!(
            "{what}: {} errors, {} stalled: {:?}",
            tally.error_count(),
            tally.stalled,
            tally.errors
        );
        eprintln!(
            "capacity: !!! {line}\ncapacity: vimanad's log ends:\n{}",
            target.log_tail(10)
        );
        trouble.push(line);
    }
}

/// Microseconds since the Unix epoch of a log line's RFC 3339 timestamp
/// (`2026-01-02T03:04:05.678901Z ...`).
pub fn log_time_us(line: &str) -> Option<i64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let micros: i64 = format!("{:0<6}", &frac[..frac.len().min(6)]).parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + micros)
}

pub fn now_unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}
