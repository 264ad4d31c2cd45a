//! Capacity of the data plane (issue 6): handshakes per second, memory per
//! idle connection and per pod, publication to routable, and p99 while the
//! control thread publishes. Each figure beside a baseline measured in the
//! same run.
//!
//! Every node is the real `vimanad serve` started by the integration tests'
//! harness (tests/common: as root, in a private root under /tmp, with the
//! example image, on a free UDP port). The client is quiche, written here:
//! one non-blocking UDP socket per client thread, many QUIC connections per
//! socket told apart by connection ID, each response checked (HTTP 200, the
//! EchoReply carrying our payload, `grpc-status: 0` in the trailers). CPU
//! time is utime + stime from /proc/PID/stat (all threads), so the load
//! generator's own cost is excluded from vimanad's.
//!
//! Sections (`--sections`, default all):
//!
//! - **handshakes** (A): `--shards 1`. Each client connection does a full
//!   handshake, one unary Echo call and closes; a new one takes its place,
//!   `--hs-concurrency` in flight over `--hs-workers` client threads, a
//!   socket each (default: one per core the shard leaves free, at least 2;
//!   pinned to those cores unless `--no-pin`). Rows: plain,
//!   with Retry forced (`--retry-above 0`: every handshake pays the extra
//!   round trip and token check), and the baseline: the same calls, same
//!   concurrency, on connections kept open. Two nodes run side by side (the
//!   one not measured is SIGSTOPped), windows alternate over `--rounds`.
//!   Handshakes/s counts connections whose call succeeded within the window;
//!   latency runs from `quiche::connect` to the call's end.
//! - **memory** (B): (1) `--shards 1 --max-connections/--retry-above` above
//!   the count, `--idle-timeout 600s`: vimanad's VmRSS after a warm-up with
//!   0 connections, then with `--idle-connections` open (HTTP/3 set up,
//!   SETTINGS exchanged), then after one call on each, after closing them
//!   all, and with as many opened again (is freed memory reused?); KiB per
//!   connection = ΔRSS / connections. The bench's own RSS
//!   per (quiche client) connection is beside it. (2) vimanad's RSS with 0
//!   and `--pods` running example pods (one component each), idle, then
//!   after one call to each pod; the per-pod RSS / PSS of the shims and of
//!   the components (not counted in vimanad's).
//! - **publication** (C): `--shards 2`. Probe connections from source ports
//!   the kernel steers to each shard (learnt from vimanad's debug log),
//!   `--probe-streams` calls in flight each, call back to back to a domain
//!   whose pod is run and created but not started (refused: UNAVAILABLE),
//!   while the bench starts it (StartContainer). Times are relative to the
//!   timestamp of vimanad's `pod pool published` debug line, written just
//!   after the publication (if the control thread is preempted in between,
//!   the line is late and the figures too low). Per shard: the last refused
//!   call's send (its route lookup came later, so the pod became routable
//!   on that shard after it), the first successful call's send, and its end
//!   (its lookup came earlier; it also opened the shard's HTTP/2 connection
//!   to the new pod). The gap between the first two is the probes'
//!   resolution. `--trials` pods, each a new domain. On a loaded 2-vCPU VM
//!   a call's own round trip is far above 100 µs, so this bounds the
//!   end-to-end delay; the primitive itself is measured precisely by
//!   `cargo bench --bench primitives` (publication → visible).
//! - **republish** (D): `--shards 1`, a pool of `--pool` components (one
//!   running pod, the rest run but not started), unary load of `--streams`
//!   in flight over `--load-connections` connections (a thread each, as
//!   benches/e2e/ does), on two nodes, one started with the hidden
//!   `--republish-every 1ms` (the control thread rebuilds and publishes the
//!   snapshot every millisecond, its achieved rate read from its log), the
//!   other without; windows alternate (the idle node SIGSTOPped).
//!
//! ```text
//! scripts/bench-capacity.sh --markdown          # sets up, builds, runs it all
//! cargo bench --bench capacity -- [--quick] [--markdown] [--sections a,b,c,d]
//!     [--duration 5s] [--rounds 3] [--hs-workers N] [--hs-concurrency 32]
//!     [--no-pin] [--idle-connections 10000] [--pods 100] [--trials 10]
//!     [--probes-per-shard 2] [--probe-streams 4] [--streams 64] [--load-connections 4]
//!     [--pool 100] [--republish-every 1ms]
//! ```
//! `--quick` (for CI: well under a minute) shrinks everything: 0.5 s
//! windows, 1 round, 500 connections, 5 pods, 2 trials, a pool of 10.
//! Nothing is asserted about timings; failed calls are reported, and make
//! the bench exit 1. `CAPACITY_HOLD_S=N` pauses N s after the idle-memory
//! node starts (its PID printed), to attach a profiler.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use prost::Message;
use quiche::h3::{self, NameValue};
use vimana_example::pb::{EchoReply, EchoRequest};

const UNARY: &str = "/vimana.example.v1.Echo/Unary";
const PAYLOAD: usize = 64;
const CID_LEN: usize = quiche::MAX_CONN_ID_LEN;
const MAX_DATAGRAM: usize = 1350;
/// How long after a window calls may take before they count as stalled.
const DRAIN: Duration = Duration::from_secs(5);
const MAX_ERROR_KINDS: usize = 20;

// ---------------------------------------------------------------- arguments

struct Args {
    quick: bool,
    markdown: bool,
    sections: Vec<char>,
    duration: Duration,
    rounds: usize,
    hs_workers: usize,
    hs_concurrency: usize,
    pin: bool,
    idle_connections: usize,
    pods: usize,
    trials: usize,
    probes_per_shard: usize,
    probe_streams: usize,
    streams: usize,
    load_connections: usize,
    pool: usize,
    republish_every: String,
}

fn parse_duration(s: &str) -> Duration {
    let (number, scale) = match s.strip_suffix("ms") {
        Some(ms) => (ms, 1e-3),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    let secs: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("duration {s:?}: e.g. 5s, 500ms"));
    Duration::from_secs_f64(secs * scale)
}

fn args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let quick = raw.iter().any(|a| a == "--quick");
    let cores = core_affinity::get_core_ids().map_or(1, |c| c.len());
    let mut a = Args {
        quick,
        markdown: false,
        sections: vec!['a', 'b', 'c', 'd'],
        duration: Duration::from_millis(if quick { 500 } else { 5000 }),
        rounds: if quick { 1 } else { 3 },
        // One client thread (and socket) per core the shard leaves free,
        // at least two.
        hs_workers: cores.saturating_sub(1).max(2),
        hs_concurrency: 32,
        pin: true,
        idle_connections: if quick { 500 } else { 10_000 },
        pods: if quick { 5 } else { 100 },
        trials: if quick { 2 } else { 10 },
        probes_per_shard: 2,
        probe_streams: 4,
        streams: 64,
        load_connections: 4,
        pool: if quick { 10 } else { 100 },
        republish_every: "1ms".into(),
    };
    let mut it = raw.into_iter();
    let value = |it: &mut std::vec::IntoIter<String>, name: &str| -> String {
        it.next().unwrap_or_else(|| panic!("{name} takes a value"))
    };
    let number = |s: String, name: &str| -> usize {
        s.parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("{name} takes a positive number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" | "--bench" => {}
            "--markdown" => a.markdown = true,
            "--no-pin" => a.pin = false,
            "--sections" => {
                a.sections = value(&mut it, &arg)
                    .split(',')
                    .map(|s| match s.trim() {
                        "a" | "handshakes" => 'a',
                        "b" | "memory" => 'b',
                        "c" | "publication" => 'c',
                        "d" | "republish" => 'd',
                        other => panic!("unknown section {other:?}"),
                    })
                    .collect()
            }
            "--duration" => a.duration = parse_duration(&value(&mut it, &arg)),
            "--rounds" => a.rounds = number(value(&mut it, &arg), &arg),
            "--hs-workers" => a.hs_workers = number(value(&mut it, &arg), &arg),
            "--hs-concurrency" => a.hs_concurrency = number(value(&mut it, &arg), &arg),
            "--idle-connections" => a.idle_connections = number(value(&mut it, &arg), &arg),
            "--pods" => a.pods = number(value(&mut it, &arg), &arg),
            "--trials" => a.trials = number(value(&mut it, &arg), &arg),
            "--probes-per-shard" => a.probes_per_shard = number(value(&mut it, &arg), &arg),
            "--probe-streams" => a.probe_streams = number(value(&mut it, &arg), &arg),
            "--streams" => a.streams = number(value(&mut it, &arg), &arg),
            "--load-connections" => a.load_connections = number(value(&mut it, &arg), &arg),
            "--pool" => a.pool = number(value(&mut it, &arg), &arg),
            "--republish-every" => a.republish_every = value(&mut it, &arg),
            other => panic!("unknown argument {other:?}: see the doc of benches/capacity.rs"),
        }
    }
    a
}

// ---------------------------------------------------------------- /proc

/// utime + stime of a process (all threads), in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| fields[n - 3].parse::<u64>().unwrap();
    field(14) + field(15)
}

fn tick_secs() -> f64 {
    1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A `kB` field of /proc/PID/status (VmRSS, RssAnon, VmHWM...), in KiB.
fn status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    kib_field(&status, field)
}

/// Proportional set size (/proc/PID/smaps_rollup), KiB: shared pages
/// (the vimanad binary mapped by every shim) count once in total.
fn pss_kib(pid: &str) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    kib_field(&rollup, "Pss")
}

fn kib_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_owned()
}

/// Lets this process open as many descriptors as it may.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

fn set_socket_buffers(socket: &UdpSocket, bytes: libc::c_int) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &bytes as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// poll(2) one descriptor.
fn poll(fd: std::os::fd::RawFd, events: libc::c_short, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) > 0 }
}

fn pin_to(core: Option<core_affinity::CoreId>) {
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
}

/// The cores the client threads of a node with `shards` shards may use:
/// those its shards are not pinned to (shard i sits on core i), if any.
fn client_cores(shards: usize, pin: bool) -> Vec<core_affinity::CoreId> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    match pin && cores.len() > shards {
        true => cores[shards..].to_vec(),
        false => Vec::new(),
    }
}

// ---------------------------------------------------------------- statistics

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    values.sort_by(f64::total_cmp);
    percentile(&values, 50.0)
}

fn cell(x: f64, decimals: usize) -> String {
    match x.is_nan() {
        true => "—".to_owned(),
        false => format!("{x:.decimals$}"),
    }
}

/// Prints a table, markdown or aligned text.
fn table(markdown: bool, header: &[&str], rows: &[Vec<String>]) {
    if markdown {
        println!("| {} |", header.join(" | "));
        let align: Vec<&str> = (0..header.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        println!("|{}|", align.join("|"));
        for r in rows {
            println!("| {} |", r.join(" | "));
        }
    } else {
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].chars().count()])
                    .max()
                    .unwrap()
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| match i {
                    0 => format!("{c:<w$}"),
                    _ => format!("{c:>w$}"),
                })
                .collect();
            println!("{}", padded.join("  "));
        };
        line(header.to_vec());
        for r in rows {
            line(r.iter().map(String::as_str).collect());
        }
    }
    println!();
}

/// What client threads saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// Latencies of the successful calls within the window, µs.
    latencies: Vec<f64>,
    errors: BTreeMap<String, u64>,
    stalled: u64,
}

impl Tally {
    fn done(&mut self, started: Instant, finished: Instant, window: &Window) {
        if finished >= window.start && finished < window.end {
            self.ok += 1;
            self.latencies
                .push((finished - started).as_secs_f64() * 1e6);
        }
    }

    fn error(&mut self, kind: String) {
        let kind = match self.errors.len() >= MAX_ERROR_KINDS && !self.errors.contains_key(&kind) {
            true => "other errors".to_owned(),
            false => kind,
        };
        *self.errors.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.latencies.extend(other.latencies);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.stalled += other.stalled;
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The measured window; a warm-up runs before `start`.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn after(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + duration,
        }
    }
}

/// One window's figures.
struct Sample {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
    /// vimanad's CPU µs per counted operation, and its cores busy.
    vimanad_us: f64,
    /// The shard threads' CPU µs per operation, and their cores busy.
    shard_us: f64,
    shard_cores: f64,
    /// The control thread's cores busy.
    control_cores: f64,
    client_us: f64,
    client_cores: f64,
    tally: Tally,
}

#[derive(Clone, Copy)]
struct Cpu {
    vimanad: u64,
    /// vimanad's shard threads (`vimanad-shard-N`) and control thread.
    shards: u64,
    control: u64,
    client: u64,
}

/// utime + stime of `pid`'s threads whose name starts with `prefix`.
fn thread_ticks(pid: &str, prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .map(|t| cpu_ticks(&format!("{pid}/task/{}", t.file_name().to_string_lossy())))
        .sum()
}

fn sample_cpu(vimanad: u32) -> Cpu {
    let pid = vimanad.to_string();
    Cpu {
        vimanad: cpu_ticks(&pid),
        shards: thread_ticks(&pid, "vimanad-shard"),
        control: thread_ticks(&pid, "vimanad-control"),
        client: cpu_ticks("self"),
    }
}

/// UDP datagrams the kernel dropped for want of receive buffer, machine
/// wide (/proc/net/snmp `Udp: RcvbufErrors`).
fn udp_drops() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Sleeps to the window's start, samples CPU, sleeps to its end, samples.
fn cpu_over(window: &Window, vimanad: u32) -> (Cpu, Cpu) {
    std::thread::sleep(window.start.saturating_duration_since(Instant::now()));
    let before = sample_cpu(vimanad);
    std::thread::sleep(window.end.saturating_duration_since(Instant::now()));
    (before, sample_cpu(vimanad))
}

impl Sample {
    fn of(mut tally: Tally, duration: Duration, (before, after): (Cpu, Cpu)) -> Sample {
        tally.latencies.sort_by(f64::total_cmp);
        let secs = duration.as_secs_f64();
        let ops = if tally.ok == 0 {
            f64::NAN
        } else {
            tally.ok as f64
        };
        let used = |b: u64, a: u64| (a - b) as f64 * tick_secs();
        Sample {
            per_s: tally.ok as f64 / secs,
            p50_us: percentile(&tally.latencies, 50.0),
            p99_us: percentile(&tally.latencies, 99.0),
            vimanad_us: used(before.vimanad, after.vimanad) * 1e6 / ops,
            shard_us: used(before.shards, after.shards) * 1e6 / ops,
            shard_cores: used(before.shards, after.shards) / secs,
            control_cores: used(before.control, after.control) / secs,
            client_us: used(before.client, after.client) * 1e6 / ops,
            client_cores: used(before.client, after.client) / secs,
            tally,
        }
    }
}

// ---------------------------------------------------------------- the request

/// A unary Echo call to one authority: HTTP/3 headers and gRPC body.
struct Request {
    headers: Vec<h3::Header>,
    body: Vec<u8>,
    payload: Vec<u8>,
}

impl Request {
    fn new(authority: &str) -> Arc<Request> {
        let payload: Vec<u8> = (0..PAYLOAD as u8).collect();
        let encoded = EchoRequest {
            payload: payload.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        body.extend_from_slice(&encoded);
        let headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", authority),
            (":path", UNARY),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| h3::Header::new(n.as_bytes(), v.as_bytes()))
        .collect();
        Arc::new(Request {
            headers,
            body,
            payload,
        })
    }

    fn verdict(&self, call: &Call) -> Result<(), String> {
        match (call.status, &call.grpc) {
            (Some(200), Some((code, _))) if code == "0" => {}
            (Some(200), Some((code, message))) => {
                return Err(format!("grpc-status {code}: {message}"))
            }
            (Some(200), None) => return Err("no grpc-status".into()),
            (status, _) => return Err(format!("HTTP status {status:?}")),
        }
        let body = &call.body;
        let Some((prefix, message)) = body.split_at_checked(5) else {
            return Err(format!("response body of {} bytes", body.len()));
        };
        let len = u32::from_be_bytes(prefix[1..5].try_into().unwrap()) as usize;
        if prefix[0] != 0 || len != message.len() {
            return Err("response body is not one uncompressed gRPC message".into());
        }
        match EchoReply::decode(message) {
            Ok(reply) if reply.payload == self.payload => Ok(()),
            Ok(_) => Err("the reply's payload is not ours".into()),
            Err(e) => Err(format!("the reply does not decode: {e}")),
        }
    }
}

// ---------------------------------------------------------------- the client

/// One call in flight.
struct Call {
    request: Arc<Request>,
    /// The caller's label for the call, handed back when it ends.
    tag: usize,
    started: Instant,
    sent: usize,
    status: Option<u16>,
    grpc: Option<(String, String)>,
    body: Vec<u8>,
}

/// One client connection.
struct Slot {
    conn: quiche::Connection,
    h3: Option<h3::Connection>,
    scid: Vec<u8>,
    opened: Instant,
    calls: HashMap<u64, Call>,
    dirty: bool,
}

enum Event {
    /// The handshake completed and HTTP/3 is set up.
    Ready { slot: usize },
    /// A call ended (answered, or its stream reset).
    Done {
        slot: usize,
        tag: usize,
        opened: Instant,
        started: Instant,
        finished: Instant,
        result: Result<(), String>,
    },
    /// The connection is gone, with `lost` calls still in flight.
    Closed {
        slot: usize,
        lost: usize,
        why: String,
    },
}

/// A client thread's engine: one connected UDP socket, many QUIC
/// connections told apart by their connection ID.
struct Worker {
    socket: UdpSocket,
    local: SocketAddr,
    peer: SocketAddr,
    config: quiche::Config,
    h3_config: h3::Config,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_cid: HashMap<Vec<u8>, usize>,
    /// (deadline, slot); stale entries are skipped when they come up.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    dirty: Vec<usize>,
    buf: Vec<u8>,
    rng: ring::rand::SystemRandom,
    open: usize,
}

impl Worker {
    fn new(peer: SocketAddr, idle_timeout: Duration) -> Worker {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a client socket");
        socket.connect(peer).unwrap();
        socket.set_nonblocking(true).unwrap();
        set_socket_buffers(&socket, 4 << 20);
        let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
        config
            .set_application_protos(h3::APPLICATION_PROTOCOL)
            .unwrap();
        config.verify_peer(false); // the node's self-signed certificate
        config.set_max_idle_timeout(idle_timeout.as_millis() as u64);
        config.set_max_recv_udp_payload_size(MAX_DATAGRAM);
        config.set_max_send_udp_payload_size(MAX_DATAGRAM);
        config.set_initial_max_data(1 << 20);
        config.set_initial_max_stream_data_bidi_local(256 << 10);
        config.set_initial_max_stream_data_uni(64 << 10);
        config.set_initial_max_streams_uni(16);
        config.set_disable_active_migration(true);
        Worker {
            local: socket.local_addr().unwrap(),
            socket,
            peer,
            config,
            h3_config: h3::Config::new().unwrap(),
            slots: Vec::new(),
            free: Vec::new(),
            by_cid: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            buf: vec![0; 65_535],
            rng: ring::rand::SystemRandom::new(),
            open: 0,
        }
    }

    /// Starts a new connection (a full handshake); returns its slot.
    fn connect(&mut self) -> usize {
        let mut scid = vec![0u8; CID_LEN];
        ring::rand::SecureRandom::fill(&self.rng, &mut scid).unwrap();
        let conn = quiche::connect(
            Some("example.com"),
            &quiche::ConnectionId::from_ref(&scid),
            self.local,
            self.peer,
            &mut self.config,
        )
        .expect("quiche::connect");
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.by_cid.insert(scid.clone(), slot);
        self.slots[slot] = Some(Slot {
            conn,
            h3: None,
            scid,
            opened: Instant::now(),
            calls: HashMap::new(),
            dirty: false,
        });
        self.open += 1;
        self.mark(slot);
        slot
    }

    fn mark(&mut self, slot: usize) {
        if let Some(s) = self.slots[slot].as_mut() {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    fn in_flight(&self, slot: usize) -> usize {
        self.slots[slot].as_ref().map_or(0, |s| s.calls.len())
    }

    /// Opens a stream with `request` on the slot's connection.
    fn call(&mut self, slot: usize, request: &Arc<Request>) -> Result<(), String> {
        self.call_tagged(slot, request, 0)
    }

    fn call_tagged(
        &mut self,
        slot: usize,
        request: &Arc<Request>,
        tag: usize,
    ) -> Result<(), String> {
        let s = self.slots[slot].as_mut().ok_or("no such connection")?;
        let h3 = s.h3.as_mut().ok_or("HTTP/3 is not set up")?;
        let id = h3
            .send_request(&mut s.conn, &request.headers, false)
            .map_err(|e| format!("send_request: {e}"))?;
        s.calls.insert(
            id,
            Call {
                request: Arc::clone(request),
                tag,
                started: Instant::now(),
                sent: 0,
                status: None,
                grpc: None,
                body: Vec::new(),
            },
        );
        self.mark(slot);
        Ok(())
    }

    /// Closes a connection (CONNECTION_CLOSE, H3_NO_ERROR) and forgets it.
    fn close(&mut self, slot: usize) {
        if let Some(mut s) = self.slots[slot].take() {
            let _ = s.conn.close(true, 0x100, b"");
            send_all(&self.socket, &mut s.conn);
            self.by_cid.remove(&s.scid);
            self.free.push(slot);
            self.open -= 1;
        }
    }

    fn close_all(&mut self) {
        for slot in 0..self.slots.len() {
            self.close(slot);
        }
    }

    /// Sends what the caller queued, waits (up to `until`) for datagrams or
    /// a timer, handles them, and appends what happened to `events`.
    fn step(&mut self, until: Instant, events: &mut Vec<Event>) {
        self.process(events);
        let now = Instant::now();
        let next_timer = self.timers.peek().map(|Reverse((t, _))| *t);
        let deadline = next_timer.map_or(until, |t| t.min(until));
        if deadline > now {
            poll(self.socket.as_raw_fd(), libc::POLLIN, deadline - now);
        }
        loop {
            let n = match self.socket.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => panic!("UDP receive: {e}"),
            };
            let slot = match quiche::Header::from_slice(&mut self.buf[..n], CID_LEN) {
                Ok(header) => self.by_cid.get(header.dcid.as_ref()).copied(),
                Err(_) => None,
            };
            let Some(slot) = slot else {
                continue; // a closed connection's straggler
            };
            let info = quiche::RecvInfo {
                from: self.peer,
                to: self.local,
            };
            if let Some(s) = self.slots[slot].as_mut() {
                let _ = s.conn.recv(&mut self.buf[..n], info);
            }
            self.mark(slot);
        }
        let now = Instant::now();
        while let Some(&Reverse((t, slot))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let due = self.slots[slot]
                .as_mut()
                .filter(|s| s.conn.timeout_instant().is_some_and(|t| t <= now));
            if let Some(s) = due {
                s.conn.on_timeout();
                self.mark(slot);
            }
        }
        self.process(events);
    }

    /// Services every connection touched since the last time: HTTP/3 set
    /// up, request bodies, response events, packets out, timers, closes.
    fn process(&mut self, events: &mut Vec<Event>) {
        for slot in std::mem::take(&mut self.dirty) {
            let Some(s) = self.slots[slot].as_mut() else {
                continue;
            };
            if !std::mem::take(&mut s.dirty) {
                continue;
            }
            if s.h3.is_none() && s.conn.is_established() {
                match h3::Connection::with_transport(&mut s.conn, &self.h3_config) {
                    Ok(h3) => {
                        s.h3 = Some(h3);
                        events.push(Event::Ready { slot });
                    }
                    Err(_) => {
                        let _ = s.conn.close(true, 0x101, b"HTTP/3 setup");
                    }
                }
            }
            if let Some(h3) = s.h3.as_mut() {
                for (&id, call) in s.calls.iter_mut() {
                    while call.sent < call.request.body.len() {
                        let rest = &call.request.body[call.sent..];
                        match h3.send_body(&mut s.conn, id, rest, true) {
                            Ok(n) => call.sent += n,
                            Err(_) => break, // Done (no room) or reset: events will say
                        }
                    }
                }
                let now = Instant::now();
                loop {
                    let (id, event) = match h3.poll(&mut s.conn) {
                        Ok(e) => e,
                        Err(h3::Error::Done) => break,
                        Err(e) => {
                            let _ = s.conn.close(true, 0x101, format!("{e}").as_bytes());
                            break;
                        }
                    };
                    match event {
                        h3::Event::Headers { list, .. } => {
                            let Some(call) = s.calls.get_mut(&id) else {
                                continue;
                            };
                            let find = |name: &[u8]| {
                                list.iter()
                                    .find(|h| h.name() == name)
                                    .map(|h| String::from_utf8_lossy(h.value()).into_owned())
                            };
                            if call.status.is_none() {
                                call.status = find(b":status").and_then(|s| s.parse().ok());
                            }
                            if let Some(code) = find(b"grpc-status") {
                                call.grpc = Some((code, find(b"grpc-message").unwrap_or_default()));
                            }
                        }
                        h3::Event::Data => {
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = h3.recv_body(&mut s.conn, id, &mut buf) {
                                if let Some(call) = s.calls.get_mut(&id) {
                                    call.body.extend_from_slice(&buf[..n]);
                                }
                            }
                        }
                        h3::Event::Finished | h3::Event::Reset(_) => {
                            if let Some(call) = s.calls.remove(&id) {
                                let result = match event {
                                    h3::Event::Reset(code) => {
                                        Err(format!("stream reset (HTTP/3 error 0x{code:x})"))
                                    }
                                    _ => call.request.verdict(&call),
                                };
                                events.push(Event::Done {
                                    slot,
                                    tag: call.tag,
                                    opened: s.opened,
                                    started: call.started,
                                    finished: now,
                                    result,
                                });
                            }
                        }
                        _ => {}
                    }
                }
            }
            send_all(&self.socket, &mut s.conn);
            if let Some(t) = s.conn.timeout_instant() {
                self.timers.push(Reverse((t, slot)));
            }
            if s.conn.is_closed() {
                let why = close_reason(&s.conn);
                events.push(Event::Closed {
                    slot,
                    lost: s.calls.len(),
                    why,
                });
                let s = self.slots[slot].take().unwrap();
                self.by_cid.remove(&s.scid);
                self.free.push(slot);
                self.open -= 1;
            }
        }
    }
}

fn send_all(socket: &UdpSocket, conn: &mut quiche::Connection) {
    let mut out = [0u8; MAX_DATAGRAM];
    while let Ok((n, _)) = conn.send(&mut out) {
        loop {
            match socket.send(&out[..n]) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    poll(socket.as_raw_fd(), libc::POLLOUT, Duration::from_millis(10));
                }
                Err(_) => break, // ECONNREFUSED (a stopped node) and the like: QUIC recovers or times out
            }
        }
    }
}

fn close_reason(conn: &quiche::Connection) -> String {
    let why = match (conn.peer_error(), conn.local_error()) {
        _ if conn.is_timed_out() => "timed out".to_owned(),
        (Some(e), _) => format!(
            "closed by vimanad (0x{:x} {})",
            e.error_code,
            String::from_utf8_lossy(&e.reason)
        ),
        (None, Some(e)) => format!(
            "closed by the client (0x{:x} {})",
            e.error_code,
            String::from_utf8_lossy(&e.reason)
        ),
        (None, None) => "closed".to_owned(),
    };
    match conn.is_established() {
        true => format!("connection {why}"),
        false => format!("handshake failed: {why}"),
    }
}

// ---------------------------------------------------------------- nodes

const DOMAIN: &str = "example.com";

/// A node with one running example pod of `domain`.
struct Target {
    node: Node,
    pod: String,
}

impl Target {
    async fn start(shards: usize, log: &str, extra: &[&str]) -> Target {
        let mut node = Node::start_configured(shards, log, extra).await;
        let pod = node
            .running_pod("capacity", (DOMAIN, SERVICE, "1.0.0"))
            .await;
        Target { node, pod }
    }

    fn pid(&self) -> u32 {
        self.node.process.id()
    }

    /// SIGSTOP (`false`) or SIGCONT (`true`) vimanad, so that only the
    /// node being measured runs.
    fn set_running(&mut self, running: bool) {
        let signal = if running {
            libc::SIGCONT
        } else {
            libc::SIGSTOP
        };
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.node.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    async fn remove(mut self) {
        self.set_running(true);
        let pod = self.pod.clone();
        self.node.remove_running_pod(&pod).await;
    }
}

fn check(trouble: &mut Vec<String>, what: &str, target: &Target, tally: &Tally) {
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

// ---------------------------------------------------------------- A: handshakes

/// One client thread of the handshake window: `concurrency` connections in
/// flight, each a handshake, one call and a close, then the next.
fn handshake_worker(
    peer: SocketAddr,
    concurrency: usize,
    request: Arc<Request>,
    window: Window,
    core: Option<core_affinity::CoreId>,
) -> Tally {
    pin_to(core);
    let mut w = Worker::new(peer, Duration::from_secs(10));
    let mut tally = Tally::default();
    let mut events = Vec::new();
    for _ in 0..concurrency {
        w.connect();
    }
    let deadline = window.end + DRAIN;
    loop {
        let now = Instant::now();
        if w.open == 0 && now >= window.end {
            break;
        }
        if now >= deadline {
            tally.stalled += w.open as u64;
            for _ in 0..w.open {
                tally.error("stalled: connection unfinished".into());
            }
            w.close_all();
            break;
        }
        w.step(deadline.min(now + Duration::from_millis(100)), &mut events);
        for event in events.drain(..) {
            let reopen = match event {
                Event::Ready { slot } => {
                    if let Err(e) = w.call(slot, &request) {
                        tally.error(e);
                        w.close(slot);
                        true
                    } else {
                        false
                    }
                }
                Event::Done {
                    slot,
                    opened,
                    finished,
                    result,
                    ..
                } => {
                    match result {
                        Ok(()) => tally.done(opened, finished, &window),
                        Err(e) => tally.error(e),
                    }
                    w.close(slot);
                    true
                }
                Event::Closed { why, .. } => {
                    tally.error(why);
                    true
                }
            };
            if reopen && Instant::now() < window.end {
                w.connect();
            }
        }
    }
    tally
}

/// One client thread of a load window: `conns` connections, each keeping
/// `streams` calls in flight until the window ends.
fn load_worker(
    peer: SocketAddr,
    conns: usize,
    streams: usize,
    request: Arc<Request>,
    go: (Arc<Barrier>, Arc<OnceLock<Window>>),
    core: Option<core_affinity::CoreId>,
) -> Tally {
    pin_to(core);
    let mut w = Worker::new(peer, Duration::from_secs(30));
    let mut tally = Tally::default();
    let mut events = Vec::new();
    let mut ready = Vec::new();
    for _ in 0..conns {
        w.connect();
    }
    let connect_deadline = Instant::now() + Duration::from_secs(10);
    while ready.len() < conns && w.open > 0 && Instant::now() < connect_deadline {
        w.step(connect_deadline, &mut events);
        for event in events.drain(..) {
            match event {
                Event::Ready { slot } => ready.push(slot),
                Event::Closed { why, .. } => tally.error(why),
                Event::Done { .. } => {}
            }
        }
    }
    let (barrier, window) = go;
    barrier.wait(); // every thread connected (or failed)
    barrier.wait(); // the window is set
    let window = *window.get().unwrap();
    for &slot in &ready {
        for _ in 0..streams {
            if let Err(e) = w.call(slot, &request) {
                tally.error(e);
                break;
            }
        }
    }
    let deadline = window.end + DRAIN;
    loop {
        let now = Instant::now();
        let in_flight: usize = ready.iter().map(|&s| w.in_flight(s)).sum();
        if now >= window.end && in_flight == 0 {
            break;
        }
        if now >= deadline {
            tally.stalled += in_flight as u64;
            for _ in 0..in_flight {
                tally.error("stalled: call unanswered".into());
            }
            break;
        }
        w.step(deadline.min(now + Duration::from_millis(100)), &mut events);
        for event in events.drain(..) {
            match event {
                Event::Done {
                    slot,
                    started,
                    finished,
                    result,
                    ..
                } => {
                    match result {
                        Ok(()) => tally.done(started, finished, &window),
                        Err(e) => tally.error(e),
                    }
                    if Instant::now() < window.end {
                        if let Err(e) = w.call(slot, &request) {
                            tally.error(e);
                        }
                    }
                }
                Event::Closed { slot, lost, why } => {
                    ready.retain(|&s| s != slot);
                    for _ in 0..lost.max(1) {
                        tally.error(why.clone());
                    }
                }
                Event::Ready { .. } => {}
            }
        }
    }
    w.close_all();
    tally
}

/// Load of `workers` threads × `conns` connections × `streams` streams on
/// `target` for `duration` after `warmup`.
#[allow(clippy::too_many_arguments)]
fn load_window(
    target: &Target,
    workers: usize,
    conns: usize,
    streams: usize,
    duration: Duration,
    warmup: Duration,
    cores: &[core_affinity::CoreId],
) -> Sample {
    let request = Request::new(DOMAIN);
    let barrier = Arc::new(Barrier::new(workers + 1));
    let window = Arc::new(OnceLock::new());
    let threads: Vec<_> = (0..workers)
        .map(|i| {
            let go = (barrier.clone(), window.clone());
            let (peer, request) = (target.node.listen, request.clone());
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            std::thread::spawn(move || load_worker(peer, conns, streams, request, go, core))
        })
        .collect();
    barrier.wait();
    let planned = Window::after(warmup, duration);
    let _ = window.set(planned);
    barrier.wait();
    let cpu = cpu_over(&planned, target.pid());
    let mut tally = Tally::default();
    for t in threads {
        tally.merge(t.join().expect("a load thread panicked"));
    }
    Sample::of(tally, duration, cpu)
}

fn handshake_window(
    target: &Target,
    args: &Args,
    warmup: Duration,
    cores: &[core_affinity::CoreId],
) -> Sample {
    let request = Request::new(DOMAIN);
    let window = Window::after(warmup, args.duration);
    let workers = args.hs_workers;
    let threads: Vec<_> = (0..workers)
        .map(|i| {
            let share =
                args.hs_concurrency / workers + usize::from(i < args.hs_concurrency % workers);
            let (peer, request) = (target.node.listen, request.clone());
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            std::thread::spawn(move || handshake_worker(peer, share.max(1), request, window, core))
        })
        .collect();
    let cpu = cpu_over(&window, target.pid());
    let mut tally = Tally::default();
    for t in threads {
        tally.merge(t.join().expect("a handshake thread panicked"));
    }
    Sample::of(tally, args.duration, cpu)
}

async fn section_handshakes(args: &Args, trouble: &mut Vec<String>) {
    let cores = client_cores(1, args.pin);
    let mut plain = Target::start(1, "info", &[]).await;
    let mut retry = Target::start(1, "info", &["--retry-above", "0"]).await;
    eprintln!(
        "capacity: handshakes: vimanad pids {} (plain), {} (--retry-above 0); \
         {} client threads, {} in flight, client cores {:?}",
        plain.pid(),
        retry.pid(),
        args.hs_workers,
        args.hs_concurrency,
        cores.iter().map(|c| c.id).collect::<Vec<_>>()
    );
    plain.set_running(false);
    retry.set_running(false);
    let warmup = (args.duration / 10).clamp(Duration::from_millis(100), Duration::from_millis(500));
    let kinds = [
        "new connection per call",
        "new connection per call, Retry forced",
        "baseline: calls on kept connections",
    ];
    let mut samples: Vec<Vec<Sample>> = (0..3).map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        let mut order = [0, 1, 2];
        order.rotate_left(round % 3);
        for kind in order {
            let target = if kind == 1 { &mut retry } else { &mut plain };
            target.set_running(true);
            let sample = match kind {
                2 => {
                    let per = args.hs_concurrency / args.hs_workers;
                    load_window(
                        target,
                        args.hs_workers,
                        per.max(1),
                        1,
                        args.duration,
                        warmup,
                        &cores,
                    )
                }
                _ => handshake_window(target, args, warmup, &cores),
            };
            target.set_running(false);
            eprintln!(
                "capacity: round {round} {:<40} {:>8.0}/s  p50 {:>6.0} µs  p99 {:>6.0} µs  \
                 vimanad {:>6.1} µs/op (shard {:>6.1}, {:.2} cores)  \
                 client {:>6.1} µs/op ({:.2} cores)",
                kinds[kind],
                sample.per_s,
                sample.p50_us,
                sample.p99_us,
                sample.vimanad_us,
                sample.shard_us,
                sample.shard_cores,
                sample.client_us,
                sample.client_cores
            );
            check(trouble, kinds[kind], target, &sample.tally);
            samples[kind].push(sample);
        }
    }
    let base_us = median(samples[2].iter().map(|s| s.shard_us).collect());
    let rows: Vec<Vec<String>> = samples
        .iter()
        .enumerate()
        .map(|(kind, s)| {
            let m = |f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
            let cpu = m(|s| s.shard_us);
            let net = match kind {
                2 => "—".to_owned(),
                _ => cell(cpu - base_us, 1),
            };
            vec![
                kinds[kind].to_owned(),
                cell(m(|s| s.per_s), 0),
                cell(m(|s| s.p50_us), 0),
                cell(m(|s| s.p99_us), 0),
                cell(m(|s| s.vimanad_us), 1),
                cell(cpu, 1),
                cell(m(|s| s.shard_cores), 2),
                cell(1e6 / cpu, 0),
                net,
                format!(
                    "{} / {:.2}",
                    cell(m(|s| s.client_us), 1),
                    m(|s| s.client_cores)
                ),
                s.iter()
                    .map(|s| s.tally.error_count())
                    .sum::<u64>()
                    .to_string(),
            ]
        })
        .collect();
    println!(
        "\n### A. Handshakes per second, 1 shard ({} in flight over {} client threads, \
         {:?} windows, {} rounds, medians)\n",
        args.hs_concurrency, args.hs_workers, args.duration, args.rounds
    );
    table(
        args.markdown,
        &[
            "each call on",
            "connections (calls)/s",
            "p50 µs",
            "p99 µs",
            "vimanad CPU µs per connection (call)",
            "of which the shard thread",
            "shard cores busy",
            "per fully busy shard /s (10⁶ / shard µs)",
            "shard µs beyond a kept-connection call",
            "client CPU µs / cores",
            "errors",
        ],
        &rows,
    );
    plain.remove().await;
    retry.remove().await;
}

// ---------------------------------------------------------------- B: memory

/// Holds `count` idle connections over `workers` threads; `stage` steps
/// them: 0 connect, 1 one call on each, 2 close. Each thread adds to
/// `progress` once per connection set up, then once per call answered.
fn idle_worker(
    peer: SocketAddr,
    count: usize,
    stage: Arc<AtomicUsize>,
    progress: Arc<AtomicUsize>,
    request: Arc<Request>,
) -> Tally {
    // Handshakes (then calls) in flight per thread: more overflow vimanad's
    // socket buffer, and a lost Initial costs a 1 s retransmission timeout.
    const PENDING: usize = 8;
    let mut w = Worker::new(peer, Duration::from_secs(600));
    let mut tally = Tally::default();
    let mut events = Vec::new();
    let (mut started, mut ready, mut called, mut pending) = (0, Vec::new(), 0, 0);
    loop {
        match stage.load(Ordering::Acquire) {
            0 => {
                while started < count && pending < PENDING {
                    w.connect();
                    started += 1;
                    pending += 1;
                }
            }
            1 => {
                while called < ready.len() && pending < PENDING {
                    if let Err(e) = w.call(ready[called], &request) {
                        tally.error(e);
                    } else {
                        pending += 1;
                    }
                    called += 1;
                }
            }
            _ => {
                // Paced: a burst of CONNECTION_CLOSEs would overflow
                // vimanad's socket buffer, and a lost one leaves the
                // connection open until its idle timeout.
                if ready.is_empty() {
                    break;
                }
                for slot in ready.drain(..ready.len().min(2)) {
                    w.close(slot);
                }
            }
        }
        w.step(Instant::now() + Duration::from_millis(1), &mut events);
        for event in events.drain(..) {
            match event {
                Event::Ready { slot } => {
                    ready.push(slot);
                    pending -= 1;
                    progress.fetch_add(1, Ordering::AcqRel);
                }
                Event::Done { result, .. } => {
                    pending -= 1;
                    match result {
                        Ok(()) => {
                            tally.ok += 1;
                            progress.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(e) => tally.error(e),
                    }
                }
                Event::Closed { slot, lost, why } => {
                    tally.error(why);
                    pending -= if ready.contains(&slot) { lost } else { 1 };
                    ready.retain(|&s| s != slot);
                }
            }
        }
    }
    w.close_all();
    tally
}

/// `n` connections with one call each, closed as soon as it is answered.
fn warm_up(peer: SocketAddr, request: &Arc<Request>, n: usize) -> Tally {
    let mut w = Worker::new(peer, Duration::from_secs(10));
    let mut tally = Tally::default();
    let mut events = Vec::new();
    for _ in 0..n {
        w.connect();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.open > 0 && Instant::now() < deadline {
        w.step(deadline, &mut events);
        for event in events.drain(..) {
            match event {
                Event::Ready { slot } => {
                    if let Err(e) = w.call(slot, request) {
                        tally.error(e);
                    }
                }
                Event::Done { slot, result, .. } => {
                    if let Err(e) = result {
                        tally.error(e);
                    }
                    w.close(slot);
                }
                Event::Closed { why, .. } => tally.error(why),
            }
        }
    }
    w.close_all();
    tally
}

fn wait_progress(progress: &AtomicUsize, goal: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    while progress.load(Ordering::Acquire) < goal && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    progress.load(Ordering::Acquire)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

async fn section_memory(args: &Args, trouble: &mut Vec<String>) {
    let n = args.idle_connections;
    let limit = (2 * n + 100).to_string();
    let target = Target::start(
        1,
        "info",
        &[
            "--max-connections",
            &limit,
            "--retry-above",
            &limit,
            "--idle-timeout",
            "600s",
        ],
    )
    .await;
    let pid = target.pid().to_string();
    let peer = target.node.listen;
    eprintln!("capacity: memory: vimanad pid {pid}");
    if let Some(secs) = std::env::var("CAPACITY_HOLD_S")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // Time to attach a profiler (heaptrack -p PID) before any connection.
        std::thread::sleep(Duration::from_secs(secs));
    }
    let request = Request::new(DOMAIN);
    let settle = Duration::from_millis(if args.quick { 300 } else { 2000 });
    // Warm-up: a few connections with a call each, closed again, so the
    // 0-connection figure is a shard that has served (allocator arenas,
    // the upstream HTTP/2 connection to the pod).
    let warm = warm_up(peer, &request, 50);
    check(trouble, "memory warm-up", &target, &warm);
    std::thread::sleep(settle + Duration::from_millis(500)); // closing connections drain
    let drops = std::cell::Cell::new(udp_drops());
    let sample = |label: &str, conns: usize| {
        let dropped = udp_drops() - drops.replace(udp_drops());
        (
            label.to_owned(),
            conns,
            status_kib(&pid, "VmRSS"),
            status_kib(&pid, "RssAnon"),
            status_kib("self", "VmRSS"),
            dropped,
        )
    };
    let mut rows = vec![sample("after a warm-up of 50 connections, all closed", 0)];
    let spawn_idle = || {
        let workers = 4usize;
        let stage = Arc::new(AtomicUsize::new(0));
        let progress = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..workers)
            .map(|i| {
                let count = n / workers + usize::from(i < n % workers);
                let (stage, progress) = (stage.clone(), progress.clone());
                let request = request.clone();
                std::thread::spawn(move || idle_worker(peer, count, stage, progress, request))
            })
            .collect();
        (stage, progress, threads)
    };
    let (stage, progress, threads) = spawn_idle();
    let t = Instant::now();
    let set_up = wait_progress(&progress, n, Duration::from_secs(120));
    eprintln!(
        "capacity: memory: {set_up} of {n} connections set up in {:.1?}",
        t.elapsed()
    );
    std::thread::sleep(settle);
    rows.push(sample("HTTP/3 set up (SETTINGS exchanged), idle", set_up));
    stage.store(1, Ordering::Release);
    let answered = wait_progress(&progress, 2 * n, Duration::from_secs(120)) - set_up;
    eprintln!("capacity: memory: {answered} calls answered");
    std::thread::sleep(settle);
    rows.push(sample("after one call on each, idle", set_up));
    stage.store(2, Ordering::Release);
    let mut tally = Tally::default();
    for t in threads {
        tally.merge(t.join().expect("an idle-connection thread panicked"));
    }
    std::thread::sleep(settle + Duration::from_millis(500));
    rows.push(sample("all closed again", 0));
    // As many again: flat RSS says the freed memory is reused.
    let (stage, progress, threads) = spawn_idle();
    let again = wait_progress(&progress, n, Duration::from_secs(120));
    std::thread::sleep(settle);
    rows.push(sample(
        "opened again after closing (HTTP/3 set up), idle",
        again,
    ));
    stage.store(2, Ordering::Release);
    for t in threads {
        tally.merge(t.join().expect("an idle-connection thread panicked"));
    }
    check(trouble, "idle connections", &target, &tally);
    let (_, _, base_rss, base_anon, base_self, _) = rows[0].clone();
    let per_conn = |rss: u64, base: u64, conns: usize| match conns {
        0 => "—".to_owned(),
        c => format!("{:.1}", (rss as f64 - base as f64) / c as f64),
    };
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(label, conns, rss, anon, own, dropped)| {
            vec![
                label.clone(),
                conns.to_string(),
                mib(*rss),
                mib(*anon),
                per_conn(*rss, base_rss, *conns),
                per_conn(*anon, base_anon, *conns),
                per_conn(*own, base_self, *conns),
                dropped.to_string(),
            ]
        })
        .collect();
    println!("\n### B1. vimanad's memory per idle QUIC connection (1 shard)\n");
    table(
        args.markdown,
        &[
            "state",
            "connections",
            "vimanad VmRSS MiB",
            "RssAnon MiB",
            "vimanad KiB / connection (VmRSS)",
            "(RssAnon)",
            "bench's quiche client KiB / connection",
            "UDP datagrams dropped (machine-wide) since the row before",
        ],
        &table_rows,
    );
    target.remove().await;

    // (2) 100 pods.
    let mut node = Node::start_configured(2, "info", &[]).await;
    let pid = node.process.id().to_string();
    std::thread::sleep(settle);
    let before = (status_kib(&pid, "VmRSS"), status_kib(&pid, "RssAnon"));
    let t = Instant::now();
    let mut pods = Vec::new();
    for i in 0..args.pods {
        let domain = format!("pod{i}.example.com");
        pods.push(
            node.running_pod(&format!("mem{i}"), (&domain, SERVICE, "1.0.0"))
                .await,
        );
    }
    eprintln!(
        "capacity: memory: {} pods started in {:.1?}",
        args.pods,
        t.elapsed()
    );
    std::thread::sleep(settle);
    let with_pods = (status_kib(&pid, "VmRSS"), status_kib(&pid, "RssAnon"));
    // The shims (cmdline `vimanad shim ...` under this node's root) and
    // their children (the components).
    let root = node.root.path().to_string_lossy().into_owned();
    let (mut shims, mut components) = (Vec::new(), Vec::new());
    let procs: Vec<(u32, u32, String)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let ppid = kib_field(
                &std::fs::read_to_string(e.path().join("status")).ok()?,
                "PPid",
            );
            Some((
                pid,
                ppid as u32,
                String::from_utf8_lossy(&cmd).replace('\0', " "),
            ))
        })
        .collect();
    for (pid, _, cmd) in &procs {
        if cmd.contains(" shim ") && cmd.contains(&root) {
            shims.push(*pid);
        }
    }
    for (pid, ppid, _) in &procs {
        if shims.contains(ppid) {
            components.push(*pid);
        }
    }
    let per = |pids: &[u32], f: &dyn Fn(&str) -> u64| {
        median(pids.iter().map(|p| f(&p.to_string()) as f64).collect())
    };
    // One call to each pod, through one shard.
    let mut w = Worker::new(node.listen, Duration::from_secs(30));
    let mut events = Vec::new();
    let slot = w.connect();
    let mut tally = Tally::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = 0;
    let mut ready = false;
    while next <= args.pods && Instant::now() < deadline && w.open > 0 {
        w.step(deadline, &mut events);
        for event in events.drain(..) {
            match event {
                Event::Ready { .. } => ready = true,
                Event::Done { result, .. } => {
                    match result {
                        Ok(()) => tally.ok += 1,
                        Err(e) => tally.error(e),
                    }
                    ready = true;
                }
                Event::Closed { why, .. } => tally.error(why),
            }
        }
        if ready {
            ready = false;
            next += 1;
            if next <= args.pods {
                let _ = w.call(slot, &Request::new(&format!("pod{}.example.com", next - 1)));
            }
        }
    }
    w.close_all();
    std::thread::sleep(settle);
    let called = (status_kib(&pid, "VmRSS"), status_kib(&pid, "RssAnon"));
    if tally.ok as usize != args.pods {
        tally.error(format!("{} of {} pods answered", tally.ok, args.pods));
    }
    let rows = vec![
        vec!["0 pods".into(), mib(before.0), mib(before.1), "—".into()],
        vec![
            format!("{} running pods, idle", args.pods),
            mib(with_pods.0),
            mib(with_pods.1),
            format!(
                "{:.0}",
                (with_pods.0 as f64 - before.0 as f64) / args.pods as f64
            ),
        ],
        vec![
            format!(
                "{} running pods, after one call to each (one shard)",
                args.pods
            ),
            mib(called.0),
            mib(called.1),
            format!(
                "{:.0}",
                (called.0 as f64 - before.0 as f64) / args.pods as f64
            ),
        ],
    ];
    println!("\n### B2. vimanad's memory holding running pods (2 shards)\n");
    table(
        args.markdown,
        &[
            "node",
            "vimanad VmRSS MiB",
            "RssAnon MiB",
            "KiB per pod (VmRSS)",
        ],
        &rows,
    );
    let rows = vec![
        vec![
            format!("`vimanad shim` ({} found)", shims.len()),
            cell(per(&shims, &|p| status_kib(p, "VmRSS")), 0),
            cell(per(&shims, &|p| status_kib(p, "RssAnon")), 0),
            cell(per(&shims, &|p| pss_kib(p)), 0),
        ],
        vec![
            format!("example component ({} found)", components.len()),
            cell(per(&components, &|p| status_kib(p, "VmRSS")), 0),
            cell(per(&components, &|p| status_kib(p, "RssAnon")), 0),
            cell(per(&components, &|p| pss_kib(p)), 0),
        ],
    ];
    table(
        args.markdown,
        &[
            "per pod, not in vimanad's RSS",
            "VmRSS KiB (median)",
            "RssAnon KiB",
            "PSS KiB",
        ],
        &rows,
    );
    if tally.error_count() > 0 {
        trouble.push(format!("calls to the pods: {:?}", tally.errors));
    }
    let _ = pods;
    drop(node);
}

// ---------------------------------------------------------------- C: publication

/// The trial under way (its index and request), if any.
type CurrentTrial = Arc<Mutex<Option<(usize, Arc<Request>)>>>;

/// One probe call's outcome.
struct Probe {
    trial: usize,
    started: Instant,
    finished: Instant,
    ok: bool,
}

/// A probe thread: one connection keeping `streams` calls in flight to
/// the current trial's domain while there is one.
fn probe_worker(
    mut w: Worker,
    slot: usize,
    streams: usize,
    current: CurrentTrial,
    stop: Arc<AtomicBool>,
) -> Vec<Probe> {
    let mut out = Vec::new();
    let mut events = Vec::new();
    while !stop.load(Ordering::Acquire) && w.open > 0 {
        let trial = current.lock().unwrap().clone();
        if let Some((trial, request)) = trial {
            while w.in_flight(slot) < streams {
                if w.call_tagged(slot, &request, trial).is_err() {
                    break;
                }
                // Each call in a datagram of its own, sent at once.
                w.step(Instant::now(), &mut events);
            }
        }
        let wait = match w.in_flight(slot) {
            0 => Duration::from_micros(200),
            _ => Duration::from_millis(50),
        };
        w.step(Instant::now() + wait, &mut events);
        for event in events.drain(..) {
            if let Event::Done {
                tag,
                started,
                finished,
                result,
                ..
            } = event
            {
                out.push(Probe {
                    trial: tag,
                    started,
                    finished,
                    ok: result.is_ok(),
                });
            }
        }
    }
    w.close_all();
    out
}

/// Microseconds since the Unix epoch of a log line's RFC 3339 timestamp
/// (`2026-01-02T03:04:05.678901Z ...`).
fn log_time_us(line: &str) -> Option<i64> {
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

fn now_unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The shard that accepted the connection from `port`, per vimanad's
/// debug log (`connection accepted shard=N peer=127.0.0.1:PORT`).
fn shard_of(log: &str, port: u16) -> Option<usize> {
    let peer = format!("peer=127.0.0.1:{port}");
    log.lines()
        .filter(|l| l.contains("connection accepted") && l.split_whitespace().any(|w| w == peer))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("shard="))
                .and_then(|s| s.parse().ok())
        })
}

async fn section_publication(args: &Args, trouble: &mut Vec<String>) {
    const SHARDS: usize = 2;
    let log = "info,vimanad::shard::endpoint=debug,vimanad::control::runtime=debug";
    let mut node = Node::start_configured(SHARDS, log, &[]).await;
    // Probe connections until every shard has enough.
    let mut probes: Vec<(usize, Worker, usize)> = Vec::new();
    let mut counts = [0usize; SHARDS];
    for _ in 0..64 {
        if counts.iter().all(|&c| c >= args.probes_per_shard) {
            break;
        }
        let mut w = Worker::new(node.listen, Duration::from_secs(120));
        let slot = w.connect();
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut ready = false;
        while !ready && w.open > 0 && Instant::now() < deadline {
            w.step(deadline, &mut events);
            ready = events.iter().any(|e| matches!(e, Event::Ready { .. }));
            events.clear();
        }
        assert!(ready, "a probe connection could not be set up");
        std::thread::sleep(Duration::from_millis(5)); // the log line lands
        let Some(shard) = shard_of(&node.log(), w.local.port()) else {
            panic!("no `connection accepted ... shard=N peer=...` debug line for the probe");
        };
        if counts[shard] < args.probes_per_shard {
            counts[shard] += 1;
            probes.push((shard, w, slot));
        } else {
            w.close_all();
        }
    }
    eprintln!("capacity: publication: probe connections per shard {counts:?}");
    let current = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = probes
        .into_iter()
        .map(|(shard, w, slot)| {
            let (current, stop) = (current.clone(), stop.clone());
            let streams = args.probe_streams;
            (
                shard,
                std::thread::spawn(move || probe_worker(w, slot, streams, current, stop)),
            )
        })
        .collect();
    // Per trial: (instant of publication, instant StartContainer returned).
    let mut trials = Vec::new();
    for trial in 0..args.trials {
        let domain = format!("fresh{trial}.example.com");
        let pod = node
            .run_pod(&format!("fresh{trial}"), (&domain, SERVICE, "1.0.0"))
            .await;
        node.create(&pod, "component", &[]).await.unwrap();
        *current.lock().unwrap() = Some((trial, Request::new(&domain)));
        tokio::time::sleep(Duration::from_millis(20)).await; // refused calls pile up
        node.start_container(&pod).await.unwrap();
        let (returned, returned_unix) = (Instant::now(), now_unix_us());
        tokio::time::sleep(Duration::from_millis(30)).await;
        *current.lock().unwrap() = None;
        let log = node.log();
        let published_unix = log
            .lines()
            .filter(|l| l.contains("pod pool published"))
            .filter_map(log_time_us)
            .rfind(|&t| t <= returned_unix)
            .expect("a `pod pool published` debug line");
        let published =
            returned - Duration::from_micros((returned_unix - published_unix).max(0) as u64);
        trials.push((published, returned));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Release);
    let results: Vec<(usize, Vec<Probe>)> = threads
        .into_iter()
        .map(|(shard, t)| (shard, t.join().expect("a probe panicked")))
        .collect();
    let us = |a: Instant, b: Instant| match a >= b {
        true => (a - b).as_secs_f64() * 1e6,
        false => -(b - a).as_secs_f64() * 1e6,
    };
    let mut rows = Vec::new();
    let max = |v: &[f64]| {
        v.iter()
            .copied()
            .filter(|x| !x.is_nan())
            .fold(f64::NAN, f64::max)
    };
    let both = |v: &[f64]| format!("{} / {}", cell(median(v.to_vec()), 0), cell(max(v), 0));
    for shard in 0..SHARDS {
        // µs after publication, per trial: last refused call sent, first
        // successful call sent, first successful call completed; the first
        // success after StartContainer returned; later calls' latency.
        let mut per: [Vec<f64>; 4] = Default::default();
        let mut steady = Vec::new();
        for (trial, &(published, returned)) in trials.iter().enumerate() {
            let mine: Vec<&Probe> = results
                .iter()
                .filter(|(s, _)| *s == shard)
                .flat_map(|(_, p)| p.iter())
                .filter(|p| p.trial == trial)
                .collect();
            let last_refused = mine.iter().filter(|p| !p.ok).map(|p| p.started).max();
            let first_sent = mine.iter().filter(|p| p.ok).map(|p| p.started).min();
            let first_done = mine.iter().filter(|p| p.ok).map(|p| p.finished).min();
            let (Some(first_sent), Some(first_done)) = (first_sent, first_done) else {
                trouble.push(format!(
                    "publication: shard {shard} never served trial {trial}"
                ));
                continue;
            };
            per[0].push(last_refused.map_or(f64::NAN, |t| us(t, published)));
            per[1].push(us(first_sent, published));
            per[2].push(us(first_done, published));
            per[3].push(us(first_done, returned));
            // Calls sent after the first success: the pod routed and connected.
            steady.extend(
                mine.iter()
                    .filter(|p| p.ok && p.started > first_done)
                    .map(|p| (p.finished - p.started).as_secs_f64() * 1e6),
            );
        }
        rows.push(vec![
            format!("shard {shard}"),
            per[2].len().to_string(),
            both(&per[0]),
            both(&per[1]),
            both(&per[2]),
            cell(median(per[3].clone()), 0),
            cell(median(steady), 0),
        ]);
    }
    let returned_after: Vec<f64> = trials.iter().map(|&(p, r)| us(r, p)).collect();
    println!(
        "\n### C2. From publication to routable on each shard ({SHARDS} shards, {} new pods, \
         {} probe connections per shard with {} calls in flight each; µs after the \
         `pod pool published` log line; StartContainer returned a median {} µs after it)\n",
        args.trials,
        args.probes_per_shard,
        args.probe_streams,
        cell(median(returned_after), 0)
    );
    table(
        args.markdown,
        &[
            "shard",
            "trials",
            "last refused call sent (lower bound), median / max µs",
            "first successful call sent, median / max µs",
            "first successful call completed, median / max µs",
            "first success after StartContainer returned, median µs",
            "baseline: later calls to the pod, median latency µs",
        ],
        &rows,
    );
}

// ---------------------------------------------------------------- D: republish

/// The node of the republish section: one running pod plus `pool - 1`
/// pods run but not started (components in the snapshot, not routable).
async fn pool_target(pool: usize, extra: &[&str]) -> Target {
    let mut target = Target::start(1, "info", extra).await;
    for i in 1..pool {
        let domain = format!("idle{i}.example.com");
        target
            .node
            .run_pod(&format!("idle{i}"), (&domain, SERVICE, "1.0.0"))
            .await;
    }
    target
}

/// Publications per second by vimanad's `republished the pod pool
/// count=N elapsed_ms=M` lines (one a second) that lie wholly within
/// [`from`, `to`] (µs since the Unix epoch).
fn republish_rate(target: &Target, from: i64, to: i64) -> f64 {
    let (mut count, mut ms) = (0u64, 0u64);
    for line in target.node.log().lines() {
        if !line.contains("republished the pod pool") {
            continue;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (n, elapsed) = (field("count="), field("elapsed_ms="));
        let Some(at) = log_time_us(line) else {
            continue;
        };
        if at - (elapsed as i64) * 1000 >= from && at <= to {
            count += n;
            ms += elapsed;
        }
    }
    match ms {
        0 => f64::NAN,
        _ => count as f64 * 1e3 / ms as f64,
    }
}

async fn section_republish(args: &Args, trouble: &mut Vec<String>) {
    let every = args.republish_every.as_str();
    let mut quiet = pool_target(args.pool, &[]).await;
    let mut busy = pool_target(args.pool, &["--republish-every", every]).await;
    eprintln!(
        "capacity: republish: vimanad pids {} (no republishing), {} (--republish-every {every}); \
         pool of {} components",
        quiet.pid(),
        busy.pid(),
        args.pool
    );
    quiet.set_running(false);
    busy.set_running(false);
    let warmup = (args.duration / 10).clamp(Duration::from_millis(100), Duration::from_millis(500));
    let conns = args.load_connections.min(args.streams);
    let labels = [
        "no republishing".to_owned(),
        format!("--republish-every {every}"),
    ];
    let mut samples: Vec<Vec<(Sample, f64)>> = vec![Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for arm in order {
            let target = if arm == 0 { &mut quiet } else { &mut busy };
            target.set_running(true);
            let from = now_unix_us();
            // `streams` spread over `conns` connections, a thread each.
            let sample = {
                let per = args.streams / conns;
                load_window(target, conns, 1, per.max(1), args.duration, warmup, &[])
            };
            let rate = match arm {
                1 => republish_rate(target, from, now_unix_us()),
                _ => 0.0,
            };
            target.set_running(false);
            eprintln!(
                "capacity: round {round} {:<26} {:>8.0} calls/s  p50 {:>6.0} µs  p99 {:>6.0} µs  \
                 vimanad {:>5.1} µs/call (shard {:>5.1})  control {:.3} cores  \
                 publications {:>5.0}/s",
                labels[arm],
                sample.per_s,
                sample.p50_us,
                sample.p99_us,
                sample.vimanad_us,
                sample.shard_us,
                sample.control_cores,
                rate
            );
            check(trouble, &labels[arm], target, &sample.tally);
            samples[arm].push((sample, rate));
        }
    }
    let m = |arm: usize, f: &dyn Fn(&(Sample, f64)) -> f64| {
        median(samples[arm].iter().map(f).collect())
    };
    // calls/s, p50, p99, vimanad µs/call, shard µs/call, control cores.
    let figures = |arm: usize| -> [f64; 6] {
        [
            m(arm, &|s| s.0.per_s),
            m(arm, &|s| s.0.p50_us),
            m(arm, &|s| s.0.p99_us),
            m(arm, &|s| s.0.vimanad_us),
            m(arm, &|s| s.0.shard_us),
            m(arm, &|s| s.0.control_cores),
        ]
    };
    let errors = |arm: usize| {
        samples[arm]
            .iter()
            .map(|s| s.0.tally.error_count())
            .sum::<u64>()
            .to_string()
    };
    let row = |arm: usize, rate: String| {
        let f = figures(arm);
        let mut r = vec![labels[arm].clone(), rate];
        r.extend([0, 0, 0, 1, 1, 2].iter().zip(f).map(|(&d, x)| cell(x, d)));
        r.push(errors(arm));
        r
    };
    let (q, b) = (figures(0), figures(1));
    let mut ratio = vec!["ratio (republishing / not)".to_owned(), "".to_owned()];
    ratio.extend((0..5).map(|i| format!("{:.2}×", b[i] / q[i])));
    ratio.extend(["".to_owned(), "".to_owned()]);
    let rows = vec![row(0, "0".into()), row(1, cell(m(1, &|s| s.1), 0)), ratio];
    println!(
        "\n### D. Unary load while the control thread publishes (1 shard, {} streams over {} \
         connections, pool of {} components, {:?} windows, {} rounds, medians)\n",
        args.streams, conns, args.pool, args.duration, args.rounds
    );
    table(
        args.markdown,
        &[
            "control thread",
            "publications/s",
            "calls/s",
            "p50 µs",
            "p99 µs",
            "vimanad CPU µs/call",
            "of which the shard thread",
            "control thread cores busy",
            "errors",
        ],
        &rows,
    );
    quiet.remove().await;
    busy.remove().await;
}

// ---------------------------------------------------------------- main

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = args();
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the capacity bench starts vimanad, which runs containers: run it as root"
    );
    raise_nofile();
    let started = Instant::now();
    let load_before = loadavg();
    let mut trouble = Vec::new();
    println!(
        "capacity ({}): {} cores, load average {load_before}",
        if args.quick { "quick" } else { "full" },
        core_affinity::get_core_ids().map_or(0, |c| c.len())
    );
    for section in args.sections.clone() {
        let t = Instant::now();
        match section {
            'a' => section_handshakes(&args, &mut trouble).await,
            'b' => section_memory(&args, &mut trouble).await,
            'c' => section_publication(&args, &mut trouble).await,
            _ => section_republish(&args, &mut trouble).await,
        }
        eprintln!("capacity: section {section} took {:.1?}", t.elapsed());
    }
    println!(
        "(1-minute load average {load_before} before, {} after; took {:.1?})",
        loadavg(),
        started.elapsed()
    );
    if !trouble.is_empty() {
        eprintln!("\ncapacity: !!! ERRORS:");
        for line in &trouble {
            eprintln!("capacity: !!! {line}");
        }
        std::process::exit(1);
    }
}
