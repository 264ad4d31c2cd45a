//! The data plane under load: gRPC calls over HTTP/3 through vimanad, side
//! by side with the same component called directly over HTTP/2 (the
//! ceiling) and through Caddy (the peer a user would pick instead), in one
//! run, on one component.
//!
//! Starts the real `vimanad serve` with the integration tests' harness
//! (tests/common: as root, in a private root under /tmp, with the example
//! image imported, on a free UDP port; here with `--shards N`, and
//! `--max-streams` raised if a connection must carry more than vimanad's
//! default 256 streams), starts one example-component pod over CRI and
//! learns its socket from PodSandboxStatus `info["socket"]`. If a Caddy
//! ≥ 2.11 is found, it starts Caddy on that same socket (caddy.rs: HTTP/3
//! only on another free UDP port, `reverse_proxy unix//SOCKET` with
//! `transport http { versions h2c }`, a self-signed certificate, admin
//! endpoint off, no access log, log level WARN, `GOMAXPROCS` = shards).
//! One call of each kind is first made through vimanad and through Caddy
//! and checked (grpc-status 0 in the trailers), or the bench fails.
//!
//! The calls (`--kind`, default unary): **unary** is
//! `vimana.example.v1.Echo/Unary` with a 64-byte payload, echoed back;
//! **server-stream** is `Echo/ServerStream` asking for `--messages` (10)
//! replies, each carrying a 64-byte message. Then, for each concurrency
//! (streams in flight) and kind, it drives the calls for a fixed window
//! along each path, the order rotating from round to round and from one
//! concurrency to the next, so that drift hits all alike:
//!
//! - **vimanad (HTTP/3)** and **Caddy (HTTP/3 → h2c)**: the load generator
//!   in h3.rs, quiche as a client on non-blocking UDP sockets, one thread per
//!   QUIC connection (no certificate check). The streams are spread over
//!   `--connections` connections, and each keeps its share in flight: a new
//!   stream opens as soon as one completes. Every response is checked: HTTP
//!   200, the expected EchoReplies (payload; message and sequence), and
//!   `grpc-status: 0` in the trailers.
//! - **ceiling (HTTP/2 direct)**: the component's own tonic client over as
//!   many connections to its Unix socket, with the same streams in flight,
//!   in a tokio runtime with one worker thread.
//!
//! Each window starts with a short untimed warm-up. For each (kind,
//! streams, path) it prints the medians over rounds of calls/s, response
//! messages/s, p50, p99 and p99.9 latency (µs, nearest rank, of the calls
//! completed in the window; a streaming call's is to its end), CPU time per
//! call (utime + stime from /proc/PID/stat, all threads, over the window,
//! divided by the calls) of the proxy (vimanad or Caddy: the load
//! generator's own CPU is apart), of the component and of this load
//! generator; the proxy's peak RSS in the window (VmHWM from
//! /proc/PID/status after writing 5 to /proc/PID/clear_refs at the start,
//! or, where that does not reset it, the largest VmRSS sampled every 10 ms);
//! and UDP datagrams per call. Then the ratios: calls/s vimanad / ceiling
//! and vimanad / Caddy, CPU per call vimanad / Caddy, p99 and peak RSS side
//! by side, and the issue's targets at 64 streams (unary) met or not.
//! Errors and calls still in flight 5 s after a window (stalls) are reported
//! loudly, with the kinds of error, and make the bench exit with status 1.
//!
//! `--oha` also drives vimanad and Caddy with oha (oha.rs; an HTTP/3 load
//! generator nobody here wrote; `oha` on PATH or in ~/.cargo/bin): the same
//! unary call for the same window, `-c` = the connections, `-p` = the
//! streams per connection. oha reads no trailers, and lingers after its run,
//! so its calls/s are its HTTP 200 responses divided by the window, and
//! the CPU per call and peak RSS of the proxy are ours over that window. It
//! is a separate table, labelled as oha's.
//!
//! ```text
//! scripts/bench-e2e.sh --markdown      # sets up, installs Caddy (and oha with --oha)
//! cargo bench --bench e2e -- [--duration 5s] [--quick] [--connections 4]
//!     [--streams 1,16,64,256] [--rounds 3] [--shards 1[,2]]
//!     [--kind unary|server-stream|both] [--messages 10]
//!     [--caddy | --no-caddy] [--oha] [--fin-apart] [--markdown]
//! cargo bench --bench e2e -- --calls N [--streams 1] [--connections 4]
//!     [--shards 1] [--kind unary] [--before-calls CMD]
//! ```
//! `--calls N` makes exactly N calls through vimanad alone (one
//! `--streams`, `--shards` and `--kind`; no ceiling, Caddy or windows),
//! checks every response, stops vimanad with SIGTERM, prints one line
//! (`calls N ok N failed 0 ...`) and exits 1 unless all succeeded
//! (counted.rs): scripts/instructions-per-call.sh counts its vimanad
//! under valgrind and strace. `--before-calls CMD` runs `sh -c CMD` once
//! the pod runs, before the calls, with `VIMANAD_PID` set.
//!
//! `--quick` (CI) is 0.5 s windows, streams 1 and 16, 2 rounds and both
//! kinds; it asserts no timings. `--shards 1,2` runs the whole series once
//! per shard count, each on a fresh vimanad (and Caddy). The Caddy path runs
//! when Caddy is found (`$E2E_CADDY`, an executable `caddy` on PATH, or the
//! one pip put beside python3's scripts); `--caddy` makes it required,
//! `--no-caddy` leaves it out.
//!
//! `--fin-apart` makes the HTTP/3 client send each request's end of stream
//! (FIN) in a packet of its own, after the body, instead of in the packet
//! that carries the body (both are correct HTTP/3; it costs a datagram per
//! call). Before 0e284b9 the shard noticed a FIN that came with the body
//! only when the connection's next packet arrived (quiche's `recv_body`
//! queues the Finished event after the shard's `poll` loop), so with one
//! stream per connection the second call stalled until the idle timeout;
//! the default packing is the regression check for that, `--fin-apart` the
//! way to measure such a build anyway.
//!
//! Debugging: `E2E_VIMANAD_LOG=<filter>` sets vimanad's RUST_LOG (default
//! info) and `E2E_KEEP_LOG=<path>` copies vimanad's log there at the end.
//! Needs target/example/vimana-example.oci.tar
//! (scripts/build-example-image.sh release), or the image
//! `VIMANA_EXAMPLE_IMAGE` names.

#[path = "../../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;
#[path = "../shared/procfs.rs"]
mod procfs;
#[path = "../shared/quic.rs"]
mod quic;

mod args;
mod caddy;
mod ceiling;
mod counted;
mod h3;
mod measure;
mod oha;
mod report;
mod request;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use args::{CaddyChoice, Kind};
use common::*;
use measure::{Load, Sample, Watched, DRAIN, SLOW};
use report::Path;
use request::{Request, PAYLOAD};

const COMPONENT: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");
/// vimanad's default `--max-streams` (per QUIC connection).
const VIMANAD_MAX_STREAMS: usize = 256;

/// A node (the integration tests' harness) with one running example pod.
/// Dropping it kills vimanad, the shim (and so the component) and removes
/// its cgroups.
struct Target {
    node: Node,
    pod: String,
    /// The component's Unix socket (PodSandboxStatus `info["socket"]`).
    socket: PathBuf,
    /// The component's host PID (ContainerStatus `info["pid"]`).
    component_pid: u32,
}

impl Target {
    /// vimanad on `shards` data-plane shards, then RunPodSandbox,
    /// CreateContainer, StartContainer (which returns once the component
    /// serves), then the pod's socket and PID.
    async fn start(shards: usize, max_streams: usize) -> Target {
        let log = std::env::var("E2E_VIMANAD_LOG").unwrap_or_else(|_| "info".into());
        let max_streams = max_streams.to_string();
        let extra: &[&str] = match max_streams.parse::<usize>().unwrap() > VIMANAD_MAX_STREAMS {
            true => &["--max-streams", &max_streams],
            false => &[],
        };
        let mut node = Node::start_configured(shards, &log, extra).await;
        let pod = node.running_pod("e2e", COMPONENT).await;
        let socket = node.component_socket(&pod).await;
        let component_pid = node.pid(&pod).await as u32;
        Target {
            node,
            pod,
            socket,
            component_pid,
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.node.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(keep) = std::env::var_os("E2E_KEEP_LOG") {
            self.node.kill9(); // first, so the copy is the whole log
            let _ = std::fs::copy(self.node.root.path().join("vimanad.log"), keep);
        }
    }
}

/// The 1-minute load average: other work on the machine skews the figures.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_owned()
}

/// Errors of one window, reported at once and kept for the end.
fn check(sample: &Sample, what: &str, log: impl FnOnce() -> String, trouble: &mut Vec<String>) {
    let t = &sample.tally;
    if t.slow > 0 {
        eprintln!(
            "e2e: ! {} calls slower than {SLOW:?} (slowest {:?})",
            t.slow, t.slowest
        );
    }
    if t.error_count() > 0 || t.stalled > 0 {
        let line = format!(
            "{what}: {} failed calls, {} stalled (in flight {DRAIN:?} after the window), \
             {} slower than {SLOW:?} (slowest {:?}); errors: {:?}",
            t.error_count(),
            t.stalled,
            t.slow,
            t.slowest,
            t.errors
        );
        eprintln!("e2e: !!! {line}");
        eprintln!("e2e: the proxy's log ends:\n{}", log());
        trouble.push(line);
    }
}

fn main() {
    let args = args::args();
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the e2e bench starts vimanad, which runs containers: run it as root"
    );
    if let Some(calls) = args.calls {
        return counted::main(&args, calls);
    }
    let caddy_binary = match args.caddy {
        CaddyChoice::Off => None,
        CaddyChoice::IfFound => caddy::find()
            .map_err(|e| eprintln!("e2e: no Caddy path: {e}"))
            .ok(),
        CaddyChoice::Required => Some(caddy::find().unwrap_or_else(|e| panic!("--caddy: {e}"))),
    };
    let oha_binary = match args.oha {
        true => Some(oha::find().unwrap_or_else(|e| panic!("--oha: {e}"))),
        false => None,
    };
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The ceiling's client: one worker thread, like one HTTP/3 connection's.
    let ceiling_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let warmup = (args.duration / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let requests: BTreeMap<Kind, Arc<Request>> = args
        .kinds
        .iter()
        .map(|&kind| (kind, Arc::new(Request::new(kind, args.messages))))
        .collect();
    let max_share = args
        .streams
        .iter()
        .map(|&s| s.div_ceil(args.connections))
        .max();
    let started = Instant::now();
    let load_before = loadavg();
    let mut results: BTreeMap<report::Key, Vec<Sample>> = BTreeMap::new();
    let mut oha_results = BTreeMap::new();
    let mut trouble = Vec::new();
    for &shards in &args.shards {
        let mut target = control.block_on(Target::start(shards, max_share.unwrap_or(1)));
        let vimanad_pid = target.node.process.id();
        eprintln!(
            "e2e: vimanad (pid {vimanad_pid}) --shards {shards} on {}, component pid {} on {}",
            target.node.listen,
            target.component_pid,
            target.socket.display()
        );
        let caddy = caddy_binary.as_ref().map(|binary| {
            let caddy = caddy::Caddy::start(binary, &target.socket, shards)
                .unwrap_or_else(|e| panic!("Caddy: {e}"));
            eprintln!(
                "e2e: Caddy {} (pid {}, GOMAXPROCS={}) on {} → h2c on the same socket",
                binary.version,
                caddy.pid(),
                caddy.gomaxprocs,
                caddy.listen
            );
            caddy
        });
        // One checked call of each kind through each proxy first.
        for request in requests.values() {
            let label = request.kind.label();
            if let Err(e) = h3::probe(target.node.listen, request) {
                panic!(
                    "vimanad does not answer a {label} call: {e}\n{}",
                    target.log_tail(20)
                );
            }
            if let Some(caddy) = &caddy {
                match h3::probe(caddy.listen, request) {
                    Ok(()) => eprintln!("e2e: Caddy answers a {label} call, grpc-status 0"),
                    Err(e) => panic!(
                        "Caddy does not answer a {label} call: {e}\n{}",
                        caddy.log_tail(20)
                    ),
                }
            }
        }
        let mut paths = vec![Path::Vimanad, Path::Ceiling];
        paths.extend(caddy.as_ref().map(|_| Path::Caddy));
        let vimanad = Watched {
            proxy: Some(vimanad_pid),
            component: target.component_pid,
        };
        for round in 0..args.rounds {
            for (i, &streams) in args.streams.iter().enumerate() {
                for (&kind, request) in &requests {
                    let mut order = paths.clone();
                    order.rotate_left((round + i) % paths.len());
                    let load = Load {
                        streams,
                        connections: args.connections,
                        fin_apart: args.fin_apart,
                        duration: args.duration,
                        warmup,
                    };
                    for path in order {
                        let sample = match (path, &caddy) {
                            (Path::Vimanad, _) => {
                                h3::window(target.node.listen, &load, request, vimanad)
                            }
                            (Path::Caddy, Some(caddy)) => {
                                let proxy = Some(caddy.pid());
                                let watched = Watched { proxy, ..vimanad };
                                h3::window(caddy.listen, &load, request, watched)
                            }
                            (Path::Caddy, None) => unreachable!(),
                            (Path::Ceiling, _) => {
                                let watched = Watched {
                                    proxy: None,
                                    ..vimanad
                                };
                                ceiling::window(
                                    &ceiling_rt,
                                    &target.socket,
                                    &load,
                                    request,
                                    watched,
                                )
                            }
                        };
                        let c = report::cell;
                        eprintln!(
                            "e2e: shards {shards} round {round} {:<13} streams {streams:>3} \
                             {:<23} {:>7.0} calls/s  p50 {:>5} p99 {:>6} p99.9 {:>6} µs  \
                             CPU µs/call: proxy {:>5} component {:>5} loadgen {:>5}  \
                             proxy peak RSS {} MiB  datagrams/call {} / {}",
                            kind.label(),
                            path.label(),
                            sample.calls_per_s,
                            c(sample.p50_us, 0),
                            c(sample.p99_us, 0),
                            c(sample.p999_us, 0),
                            c(sample.proxy_us, 1),
                            c(sample.component_us, 1),
                            c(sample.generator_us, 1),
                            c(sample.proxy_rss_mib, 1),
                            c(sample.datagrams.0, 1),
                            c(sample.datagrams.1, 1),
                        );
                        let what = format!(
                            "shards {shards}, {} streams {streams}, round {round}, {}",
                            kind.label(),
                            path.label()
                        );
                        let log = || match (path, &caddy) {
                            (Path::Caddy, Some(caddy)) => caddy.log_tail(20),
                            _ => target.log_tail(20),
                        };
                        check(&sample, &what, log, &mut trouble);
                        results
                            .entry((shards, kind, streams, path))
                            .or_default()
                            .push(sample);
                    }
                }
            }
        }
        if let Some(binary) = &oha_binary {
            let mut targets = vec![(Path::Vimanad, target.node.listen, vimanad_pid)];
            if let Some(caddy) = &caddy {
                targets.push((Path::Caddy, caddy.listen, caddy.pid()));
            }
            let runs = oha::Runs {
                binary,
                targets: &targets,
                component: target.component_pid,
                streams: &args.streams,
                connections: args.connections,
                rounds: args.rounds,
                duration: args.duration,
            };
            for ((streams, path), sample) in runs.run(&mut trouble) {
                oha_results
                    .entry((shards, streams, path))
                    .or_insert_with(Vec::new)
                    .push(sample);
            }
        }
        drop(caddy);
        control.block_on(target.node.remove_running_pod(&target.pod));
        drop(target);
    }
    let load_after = loadavg();

    let kinds: Vec<&str> = args.kinds.iter().map(|k| k.label()).collect();
    println!(
        "\n{} calls ({PAYLOAD}-byte payloads; server-stream: {} replies per call), {:?} windows \
         after {:?} warm-up, {} rounds, medians over rounds; streams over up to {} connections \
         per path{}",
        kinds.join(" and "),
        args.messages,
        args.duration,
        warmup,
        args.rounds,
        args.connections,
        match args.fin_apart {
            true => "; HTTP/3 requests end with a FIN in a packet of its own (--fin-apart)",
            false => "",
        }
    );
    match &caddy_binary {
        Some(caddy) => println!(
            "Caddy {} ({}), GOMAXPROCS = vimanad's shards; proxy peak RSS: {}",
            caddy.version,
            caddy.path.display(),
            measure::rss_method()
        ),
        None => println!("(no Caddy path: see the log above)"),
    }
    let rows = report::rows(&results);
    report::report(&rows, args.markdown);
    report::ratios(&rows, args.markdown);
    if let Some(binary) = &oha_binary {
        println!(
            "\noha's figures ({}), unary calls, {:?} windows:",
            oha::version(binary),
            args.duration
        );
        report::oha_report(&oha_results, args.markdown);
    }
    println!(
        "(1-minute load average {load_before} before, {load_after} after; took {:.1?})",
        started.elapsed()
    );
    if !trouble.is_empty() {
        eprintln!("\ne2e: !!! ERRORS OR STALLS UNDER LOAD:");
        for line in &trouble {
            eprintln!("e2e: !!! {line}");
        }
        std::process::exit(1);
    }
}
