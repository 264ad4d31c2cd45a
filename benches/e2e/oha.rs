//! oha, an HTTP/3 load generator nobody here wrote, driving the same unary
//! call through vimanad and through Caddy.
//!
//! oha 1.16 (`cargo install oha --features http3 --locked`:
//! scripts/bench-e2e.sh installs it when `--oha` is given) POSTs the
//! gRPC-framed EchoRequest from a file with `content-type:
//! application/grpc` and `te: trailers`, on `-c` connections × `-p`
//! streams each, for `-z` the window. It reads no trailers (so only HTTP
//! 200 is checked: our own generator checks grpc-status on the same proxies
//! in the same run), and after the run it waits for the server's idle
//! timeout before exiting, so its own requests/s summary is wrong: here
//! calls/s are its HTTP 200 responses divided by the window, and the proxy's
//! CPU and peak RSS are watched over the window from oha's start. The runs
//! go back to back, each one's lingering (idle connections) overlapping
//! the next ones, and their JSON is read at the end.

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::measure::{tick_secs, watch_until, Watched, WindowCost};
use crate::report::{median, Path};
use crate::request::{frame, Request, AUTHORITY, UNARY};

/// What oha saw in one window, and what the proxy spent meanwhile.
pub struct OhaSample {
    /// `C × P`: connections × streams per connection.
    pub shape: String,
    pub calls_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub proxy_us: f64,
    pub component_us: f64,
    pub proxy_rss_mib: f64,
    /// Responses other than 200, and errors other than the calls the
    /// deadline cut short.
    pub failed: u64,
}

/// `$E2E_OHA`, else `oha` on PATH, else ~/.cargo/bin/oha.
pub fn find() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("E2E_OHA") {
        return Ok(path.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(home)
        .map(|dir| dir.join("oha"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "no oha on PATH or in ~/.cargo/bin: cargo install oha --features http3 --locked \
             (scripts/bench-e2e.sh --oha does)"
                .to_owned()
        })
}

pub fn version(binary: &FsPath) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("oha: {e}"))
}

/// The oha runs of one node: every streams level × every target, rotating
/// the order like our own paths, `rounds` times.
pub struct Runs<'a> {
    pub binary: &'a FsPath,
    /// (path, UDP address, the proxy's PID)
    pub targets: &'a [(Path, SocketAddr, u32)],
    pub component: u32,
    pub streams: &'a [usize],
    pub connections: usize,
    pub rounds: usize,
    pub duration: Duration,
}

/// An oha run whose window is over, lingering until the server's idle
/// timeout closes its connections.
struct Pending {
    streams: usize,
    path: Path,
    round: usize,
    shape: String,
    child: std::process::Child,
    cost: WindowCost,
}

impl Runs<'_> {
    /// Runs them all back to back; a run's lingering (idle connections, no
    /// load) overlaps the next runs, and the results are read at the end.
    pub fn run(&self, trouble: &mut Vec<String>) -> Vec<((usize, Path), OhaSample)> {
        let dir = tempfile::Builder::new()
            .prefix("e2e-oha")
            .tempdir_in("/tmp")
            .unwrap();
        let body = dir.path().join("request.bin");
        let request = Request::new(crate::args::Kind::Unary, 1);
        std::fs::write(&body, frame(&request.unary)).unwrap();
        let mut pending = Vec::new();
        for round in 0..self.rounds {
            for (i, &streams) in self.streams.iter().enumerate() {
                let mut order = self.targets.to_vec();
                let n = order.len();
                order.rotate_left((round + i) % n);
                for (path, peer, pid) in order {
                    let watched = Watched {
                        proxy: Some(pid),
                        component: self.component,
                    };
                    match self.start(&body, peer, streams, watched) {
                        Ok((child, shape, cost)) => pending.push(Pending {
                            streams,
                            path,
                            round,
                            shape,
                            child,
                            cost,
                        }),
                        Err(e) => {
                            let line = format!("oha, streams {streams}, {}: {e}", path.label());
                            eprintln!("e2e: !!! {line}");
                            trouble.push(line);
                        }
                    }
                }
            }
        }
        eprintln!("e2e: waiting for oha to linger out the servers' idle timeout");
        let mut samples = Vec::new();
        for run in pending {
            let (streams, path, round) = (run.streams, run.path, run.round);
            match self.finish(run) {
                Ok(sample) => {
                    eprintln!(
                        "e2e: oha round {round} streams {streams:>3} ({}) {:<20} \
                         {:>7.0} HTTP 200/s  p50 {:>6.0} p99 {:>6.0} p99.9 {:>6.0} µs  \
                         proxy CPU {:.1} µs/call  peak RSS {:.1} MiB  failed {}",
                        sample.shape,
                        path.label(),
                        sample.calls_per_s,
                        sample.p50_us,
                        sample.p99_us,
                        sample.p999_us,
                        sample.proxy_us,
                        sample.proxy_rss_mib,
                        sample.failed
                    );
                    if sample.failed > 0 {
                        trouble.push(format!(
                            "oha, streams {streams}, round {round}, {}: {} responses not 200 \
                             or errors",
                            path.label(),
                            sample.failed
                        ));
                    }
                    samples.push(((streams, path), sample));
                }
                Err(e) => {
                    let line = format!("oha, streams {streams}, {}: {e}", path.label());
                    eprintln!("e2e: !!! {line}");
                    trouble.push(line);
                }
            }
        }
        samples
    }

    /// Starts oha against `peer` and watches the window.
    fn start(
        &self,
        body: &FsPath,
        peer: SocketAddr,
        streams: usize,
        watched: Watched,
    ) -> Result<(std::process::Child, String, WindowCost), String> {
        let connections = self.connections.clamp(1, streams);
        let per_connection = streams.div_ceil(connections);
        let url = format!("https://{AUTHORITY}:{}{UNARY}", peer.port());
        let connect_to = format!(
            "{AUTHORITY}:{port}:{}:{port}",
            peer.ip(),
            port = peer.port()
        );
        let window = format!("{}ms", self.duration.as_millis());
        let mut command = Command::new(self.binary);
        command
            .args(["--http-version", "3", "--no-tui", "--output-format", "json"])
            .args([
                "--stats-success-breakdown",
                "--insecure",
                "--connect-to",
                &connect_to,
            ])
            .args([
                "-c",
                &connections.to_string(),
                "-p",
                &per_connection.to_string(),
            ])
            .args(["-z", &window, "-m", "POST"])
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .arg("-D")
            .arg(body)
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let child = command
            .spawn()
            .map_err(|e| format!("{}: {e}", self.binary.display()))?;
        let cost = watch_until(started + self.duration, watched);
        Ok((child, format!("{connections} × {per_connection}"), cost))
    }

    /// Waits for oha's exit and reads its JSON.
    fn finish(&self, run: Pending) -> Result<OhaSample, String> {
        let out = run
            .child
            .wait_with_output()
            .map_err(|e| format!("oha: {e}"))?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "oha printed no JSON ({e}; exit {}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let count = |section: &str, filter: &dyn Fn(&str) -> bool| -> u64 {
            json[section].as_object().map_or(0, |o| {
                o.iter()
                    .filter(|(k, _)| filter(k))
                    .map(|(_, v)| v.as_u64().unwrap_or(0))
                    .sum()
            })
        };
        let ok = count("statusCodeDistribution", &|k| k == "200");
        let not_ok = count("statusCodeDistribution", &|k| k != "200");
        let errors = count("errorDistribution", &|k| !k.contains("deadline"));
        let percentiles = match json.get("latencyPercentileSuccessful") {
            Some(p) if p.is_object() => p,
            _ => &json["latencyPercentiles"],
        };
        let us = |p: &str| percentiles[p].as_f64().map_or(f64::NAN, |s| s * 1e6);
        let calls = if ok == 0 { f64::NAN } else { ok as f64 };
        let per_call = |b: u64, a: u64| (a - b) as f64 * tick_secs() * 1e6 / calls;
        let (before, after) = (&run.cost.before, &run.cost.after);
        let proxy_us = match (before.proxy(), after.proxy()) {
            (Some(b), Some(a)) => per_call(b, a),
            _ => f64::NAN,
        };
        Ok(OhaSample {
            shape: run.shape,
            calls_per_s: ok as f64 / self.duration.as_secs_f64(),
            p50_us: us("p50"),
            p99_us: us("p99"),
            p999_us: us("p99.9"),
            proxy_us,
            component_us: per_call(before.component(), after.component()),
            proxy_rss_mib: run
                .cost
                .proxy_peak_kib
                .map_or(f64::NAN, |kib| kib as f64 / 1024.0),
            failed: not_ok + errors,
        })
    }
}

/// Medians of oha's samples of one key (for the ratio).
pub fn median_calls(samples: &[OhaSample]) -> f64 {
    median(samples.iter().map(|s| s.calls_per_s).collect())
}
