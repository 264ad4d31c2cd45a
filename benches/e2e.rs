//! The data plane under load: unary gRPC calls over HTTP/3 through vimanad,
//! against the same component called directly over HTTP/2 (the ceiling).
//!
//! Starts the real `vimanad serve` with the integration tests' harness
//! (tests/common: as root, in a private root under /tmp, with the example
//! image imported, on a free UDP port; here with `--shards N`), starts
//! one example-component pod over CRI and learns its socket from
//! PodSandboxStatus `info["socket"]`. Then, for each concurrency (streams
//! in flight), it drives `vimana.example.v1.Echo/Unary` with a 64-byte
//! payload for a fixed window, two ways, alternating, for several rounds:
//!
//! - **vimanad (HTTP/3)**: a load generator in this file, quiche as a
//!   client on non-blocking UDP sockets, one thread per QUIC connection.
//!   The streams are spread over `--connections` connections, and each keeps
//!   its share in flight: a new stream opens as soon as one completes. Every
//!   response is checked: HTTP 200, one EchoReply carrying the payload, and
//!   `grpc-status: 0` in the trailers.
//! - **ceiling (HTTP/2 direct)**: the component's own tonic client over as
//!   many connections to its Unix socket, with the same streams in flight,
//!   in a tokio runtime with one worker thread.
//!
//! Each window starts with a short untimed warm-up. For each (path,
//! streams) it prints the medians over rounds of calls/s, p50 and p99
//! latency (µs, nearest rank, of the calls completed in the window), and CPU
//! time per call (utime + stime from /proc/PID/stat, all threads, over the
//! window, divided by the calls) of vimanad, of the component, and of this
//! load generator; and the ratio of calls/s, vimanad / ceiling. Errors and
//! calls still in flight 5 s after a window (stalls) are reported loudly,
//! with the kinds of error, and make the bench exit with status 1.
//!
//! ```text
//! scripts/bench-e2e.sh --markdown      # sets up, builds the image first
//! cargo bench --bench e2e -- [--duration 5s] [--quick] [--connections 4]
//!     [--streams 1,16,64] [--rounds 3] [--shards 1[,2]] [--fin-apart] [--markdown]
//! ```
//! `--quick` is 0.5 s windows and streams 1 and 16 (for CI). `--shards 1,2`
//! runs the whole series once per shard count, each on a fresh vimanad.
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

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use quiche::h3::{self, NameValue};
use tonic::transport::{Channel, Endpoint};
use vimana_example::pb::echo_client::EchoClient;
use vimana_example::pb::{EchoReply, EchoRequest};

const COMPONENT: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");
const AUTHORITY: &str = "example.com";
const UNARY: &str = "/vimana.example.v1.Echo/Unary";
const PAYLOAD: usize = 64;
/// How long after a window calls may take to finish before they count as
/// stalled.
const DRAIN: Duration = Duration::from_secs(5);
/// A call slower than this is worth a line of its own.
const SLOW: Duration = Duration::from_secs(1);
const MAX_DATAGRAM: usize = 1350;
/// Distinct error descriptions kept per window (the rest are "other").
const MAX_ERROR_KINDS: usize = 20;

// ---------------------------------------------------------------- arguments

struct Args {
    duration: Duration,
    streams: Vec<usize>,
    connections: usize,
    rounds: usize,
    shards: Vec<usize>,
    /// Send each request's FIN in a packet of its own (see the module doc).
    fin_apart: bool,
    markdown: bool,
}

fn parse_duration(s: &str) -> Duration {
    let (number, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1e-3)
    } else {
        (s.strip_suffix('s').unwrap_or(s), 1.0)
    };
    let secs: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("--duration {s:?}: e.g. 5, 5s, 500ms"));
    assert!(secs > 0.0, "--duration must be positive");
    Duration::from_secs_f64(secs * scale)
}

fn parse_list(name: &str, s: &str) -> Vec<usize> {
    let list: Vec<usize> = s
        .split(',')
        .map(|n| n.trim().parse().unwrap_or_else(|_| panic!("{name} {s:?}")))
        .collect();
    assert!(list.iter().all(|&n| n > 0), "{name} takes positive numbers");
    list
}

fn args() -> Args {
    let (mut duration, mut streams, mut connections, mut rounds, mut shards) =
        (None, None, 4, 3, vec![1]);
    let (mut quick, mut markdown, mut fin_apart) = (false, false, false);
    let mut it = std::env::args().skip(1);
    let value = |it: &mut dyn Iterator<Item = String>, name: &str| {
        it.next().unwrap_or_else(|| panic!("{name} takes a value"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--duration" => duration = Some(parse_duration(&value(&mut it, "--duration"))),
            "--streams" | "--concurrency" => {
                streams = Some(parse_list("--streams", &value(&mut it, "--streams")))
            }
            "--connections" => {
                connections = parse_list("--connections", &value(&mut it, "--connections"))[0]
            }
            "--rounds" => rounds = parse_list("--rounds", &value(&mut it, "--rounds"))[0],
            "--shards" => shards = parse_list("--shards", &value(&mut it, "--shards")),
            "--quick" => quick = true,
            "--fin-apart" => fin_apart = true,
            "--markdown" => markdown = true,
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other:?}: see the doc of benches/e2e.rs"),
        }
    }
    let (quick_duration, quick_streams) = match quick {
        true => (Duration::from_millis(500), vec![1, 16]),
        false => (Duration::from_secs(5), vec![1, 16, 64]),
    };
    Args {
        duration: duration.unwrap_or(quick_duration),
        streams: streams.unwrap_or(quick_streams),
        connections,
        rounds,
        shards,
        fin_apart,
        markdown,
    }
}

// ---------------------------------------------------------------- the node

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
    async fn start(shards: usize) -> Target {
        let log = std::env::var("E2E_VIMANAD_LOG").unwrap_or_else(|_| "info".into());
        let mut node = Node::start_configured(shards, &log, &[]).await;
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

/// An HTTP/2 channel over a Unix socket, without a request timeout (stalls
/// are this bench's to find).
async fn component_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let endpoint =
        Endpoint::from_static("http://localhost").connect_timeout(Duration::from_secs(2));
    uds_connect(endpoint, path).await
}

// ---------------------------------------------------------------- measuring

/// The measured window; the warm-up runs before `start`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    end: Instant,
}

impl Schedule {
    fn after_warmup(warmup: Duration, duration: Duration) -> Schedule {
        let start = Instant::now() + warmup;
        Schedule {
            start,
            end: start + duration,
        }
    }
}

/// What one worker (a QUIC connection, or one ceiling stream) saw.
#[derive(Default)]
struct Tally {
    /// Successful calls completed within the window.
    ok: u64,
    /// Their latencies, µs.
    latencies: Vec<u32>,
    /// Failed calls (any time: warm-up, window or drain), by kind.
    errors: BTreeMap<String, u64>,
    /// Calls still in flight when the drain deadline passed (also counted
    /// in `errors`).
    stalled: u64,
    /// Calls (successful or not) slower than [`SLOW`].
    slow: u64,
    slowest: Duration,
    /// UDP datagrams sent to and received from vimanad within the window
    /// (HTTP/3 only).
    datagrams: (u64, u64),
}

impl Tally {
    fn done(&mut self, started: Instant, finished: Instant, schedule: &Schedule) {
        let took = finished - started;
        self.note_latency(took);
        if finished >= schedule.start && finished < schedule.end {
            self.ok += 1;
            self.latencies
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        }
    }

    fn note_latency(&mut self, took: Duration) {
        self.slowest = self.slowest.max(took);
        if took > SLOW {
            self.slow += 1;
        }
    }

    fn error(&mut self, kind: String) {
        let kind = if self.errors.len() >= MAX_ERROR_KINDS && !self.errors.contains_key(&kind) {
            "other errors".to_owned()
        } else {
            kind
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
        self.slow += other.slow;
        self.slowest = self.slowest.max(other.slowest);
        self.datagrams.0 += other.datagrams.0;
        self.datagrams.1 += other.datagrams.1;
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// utime + stime of a process, all its threads (live and exited), in clock
/// ticks: /proc/PID/stat fields 14 and 15.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces), from field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| fields[n - 3].parse::<u64>().unwrap();
    field(14) + field(15)
}

fn tick() -> Duration {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Duration::from_secs_f64(1.0 / hz as f64)
}

#[derive(Clone, Copy)]
struct CpuSample {
    vimanad: u64,
    component: u64,
    generator: u64,
}

fn sample_cpu(vimanad: u32, component: u32) -> CpuSample {
    CpuSample {
        vimanad: cpu_ticks(&vimanad.to_string()),
        component: cpu_ticks(&component.to_string()),
        generator: cpu_ticks("self"),
    }
}

/// Sleeps until the window starts, samples CPU, sleeps until it ends,
/// samples again: (before, after).
fn sample_window(schedule: &Schedule, vimanad: u32, component: u32) -> (CpuSample, CpuSample) {
    std::thread::sleep(schedule.start.saturating_duration_since(Instant::now()));
    let before = sample_cpu(vimanad, component);
    std::thread::sleep(schedule.end.saturating_duration_since(Instant::now()));
    let after = sample_cpu(vimanad, component);
    (before, after)
}

/// One window's figures.
struct Sample {
    calls_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    vimanad_us: f64,
    component_us: f64,
    generator_us: f64,
    /// UDP datagrams per call, to and from vimanad (HTTP/3 only).
    datagrams: (f64, f64),
    tally: Tally,
}

impl Sample {
    fn of(mut tally: Tally, duration: Duration, cpu: (CpuSample, CpuSample)) -> Sample {
        tally.latencies.sort_unstable();
        let pct = |p: f64| -> f64 {
            let n = tally.latencies.len();
            if n == 0 {
                return f64::NAN;
            }
            let rank = (p / 100.0 * n as f64).ceil() as usize;
            tally.latencies[rank.clamp(1, n) - 1] as f64
        };
        let (before, after) = cpu;
        // No call completed: no per-call figure (NaN prints as a dash).
        let calls = if tally.ok == 0 {
            f64::NAN
        } else {
            tally.ok as f64
        };
        let per_call = |b: u64, a: u64| (a - b) as f64 * tick().as_secs_f64() * 1e6 / calls;
        Sample {
            calls_per_s: tally.ok as f64 / duration.as_secs_f64(),
            p50_us: pct(50.0),
            p99_us: pct(99.0),
            vimanad_us: per_call(before.vimanad, after.vimanad),
            component_us: per_call(before.component, after.component),
            generator_us: per_call(before.generator, after.generator),
            datagrams: (
                tally.datagrams.0 as f64 / calls,
                tally.datagrams.1 as f64 / calls,
            ),
            tally,
        }
    }
}

// ---------------------------------------------------------------- the request

/// The unary call, ready to send: HTTP/3 headers and the gRPC-framed body.
struct Request {
    headers: Vec<h3::Header>,
    body: Vec<u8>,
    message: EchoRequest,
}

impl Request {
    fn new() -> Request {
        let message = EchoRequest {
            payload: (0..PAYLOAD as u8).collect(),
            ..Default::default()
        };
        let encoded = message.encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        body.extend_from_slice(&encoded);
        let headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", AUTHORITY),
            (":path", UNARY),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", "vimanad-bench-e2e"),
        ]
        .iter()
        .map(|(n, v)| h3::Header::new(n.as_bytes(), v.as_bytes()))
        .collect();
        Request {
            headers,
            body,
            message,
        }
    }

    /// Whether a response body is the one EchoReply echoing our payload.
    fn check_reply(&self, body: &[u8]) -> Result<(), String> {
        let Some((prefix, message)) = body.split_at_checked(5) else {
            return Err(format!("response body of {} bytes", body.len()));
        };
        let len = u32::from_be_bytes(prefix[1..5].try_into().unwrap()) as usize;
        if prefix[0] != 0 || len != message.len() {
            return Err("response body is not one uncompressed gRPC message".into());
        }
        match EchoReply::decode(message) {
            Ok(reply) if reply.payload == self.message.payload => Ok(()),
            Ok(_) => Err("the reply's payload is not ours".into()),
            Err(e) => Err(format!("the reply does not decode: {e}")),
        }
    }
}

// ---------------------------------------------------------------- HTTP/3

/// One stream in flight.
struct InFlight {
    started: Instant,
    /// Request body bytes handed to quiche.
    sent: usize,
    /// The request's end of stream handed to quiche.
    fin_sent: bool,
    status: Option<u16>,
    /// grpc-status and grpc-message, from the trailers (or the headers of
    /// a trailers-only response).
    grpc: Option<(String, String)>,
    body: Vec<u8>,
}

impl InFlight {
    /// How far a call got, for a stall report.
    fn progress(&self) -> String {
        let fin = if self.fin_sent { "with" } else { "without" };
        let sent = format!("{} request body bytes {fin} FIN sent", self.sent);
        match (self.status, &self.grpc) {
            (None, _) => format!("{sent}, no response headers"),
            (Some(status), None) => format!(
                "{sent}, response headers ({status}) and {} body bytes, no trailers",
                self.body.len()
            ),
            (Some(status), Some(_)) => format!(
                "{sent}, response headers ({status}), {} body bytes and trailers, no end of stream",
                self.body.len()
            ),
        }
    }
}

/// A quiche client connection on its own connected, non-blocking UDP socket.
struct H3Client {
    socket: UdpSocket,
    conn: quiche::Connection,
    h3: Option<h3::Connection>,
    peer: SocketAddr,
    local: SocketAddr,
    buf: Vec<u8>,
    /// Whether the measured window is on: datagrams are counted.
    counting: bool,
    /// Datagrams sent and received while counting.
    datagrams: (u64, u64),
}

impl H3Client {
    fn connect(peer: SocketAddr) -> Result<H3Client, String> {
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        socket.connect(peer).map_err(|e| format!("connect: {e}"))?;
        socket.set_nonblocking(true).unwrap();
        let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
        config
            .set_application_protos(h3::APPLICATION_PROTOCOL)
            .unwrap();
        config.verify_peer(false); // the node's self-signed certificate
        config.set_max_idle_timeout(30_000);
        config.set_max_recv_udp_payload_size(65527);
        config.set_max_send_udp_payload_size(MAX_DATAGRAM);
        config.set_initial_max_data(16 << 20);
        config.set_initial_max_stream_data_bidi_local(1 << 20);
        config.set_initial_max_stream_data_uni(1 << 20);
        config.set_initial_max_streams_uni(16);
        config.set_disable_active_migration(true);
        let mut scid = [0u8; quiche::MAX_CONN_ID_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut scid).unwrap();
        let local = socket.local_addr().unwrap();
        let scid = quiche::ConnectionId::from_ref(&scid);
        let conn = quiche::connect(Some(AUTHORITY), &scid, local, peer, &mut config)
            .map_err(|e| format!("quiche::connect: {e}"))?;
        let mut client = H3Client {
            socket,
            conn,
            h3: None,
            peer,
            local,
            buf: vec![0; 65535],
            counting: false,
            datagrams: (0, 0),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.conn.is_established() {
            client.flush()?;
            if Instant::now() > deadline {
                return Err(format!("no QUIC handshake with {peer} within 10 s"));
            }
            client.wait(deadline)?;
        }
        let h3 = h3::Connection::with_transport(&mut client.conn, &h3::Config::new().unwrap())
            .map_err(|e| format!("HTTP/3 setup: {e}"))?;
        client.h3 = Some(h3);
        client.flush()?;
        Ok(client)
    }

    /// Sends every packet quiche has ready.
    fn flush(&mut self) -> Result<(), String> {
        let mut out = [0u8; MAX_DATAGRAM];
        loop {
            let n = match self.conn.send(&mut out) {
                Ok((n, _)) => n,
                Err(quiche::Error::Done) => return Ok(()),
                Err(e) => return Err(format!("QUIC send: {e}")),
            };
            loop {
                match self.socket.send(&out[..n]) {
                    Ok(_) => {
                        self.datagrams.0 += u64::from(self.counting);
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        poll(self.socket.as_raw_fd(), libc::POLLOUT, SLOW);
                    }
                    Err(e) => return Err(format!("UDP send to {}: {e}", self.peer)),
                }
            }
        }
    }

    /// Waits for datagrams (feeding them all to quiche), quiche's timer or
    /// `until`, whichever comes first; fails once the connection is closed.
    fn wait(&mut self, until: Instant) -> Result<(), String> {
        let now = Instant::now();
        let limit = until.saturating_duration_since(now);
        let wait = self.conn.timeout().map_or(limit, |t| t.min(limit));
        if poll(self.socket.as_raw_fd(), libc::POLLIN, wait) {
            loop {
                match self.socket.recv(&mut self.buf) {
                    Ok(n) => {
                        self.datagrams.1 += u64::from(self.counting);
                        let info = quiche::RecvInfo {
                            from: self.peer,
                            to: self.local,
                        };
                        let _ = self.conn.recv(&mut self.buf[..n], info);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("UDP receive from {}: {e}", self.peer)),
                }
            }
        }
        if self
            .conn
            .timeout_instant()
            .is_some_and(|t| t <= Instant::now())
        {
            self.conn.on_timeout();
        }
        if !self.conn.is_closed() {
            return Ok(());
        }
        let why = match (self.conn.peer_error(), self.conn.local_error()) {
            _ if self.conn.is_timed_out() => "timed out".to_owned(),
            (Some(e), _) => format!(
                "closed by vimanad (error 0x{:x}, {})",
                e.error_code,
                String::from_utf8_lossy(&e.reason)
            ),
            (None, Some(e)) => format!(
                "closed by the client (error 0x{:x}, {})",
                e.error_code,
                String::from_utf8_lossy(&e.reason)
            ),
            (None, None) => "closed".to_owned(),
        };
        Err(format!("QUIC connection {why}"))
    }

    /// Keeps `streams` calls in flight until the window ends, then lets them
    /// finish (for up to [`DRAIN`]).
    fn run(
        &mut self,
        streams: usize,
        fin_apart: bool,
        request: &Request,
        schedule: &Schedule,
        tally: &mut Tally,
    ) {
        let mut calls: HashMap<u64, InFlight> = HashMap::with_capacity(streams * 2);
        let drain_deadline = schedule.end + DRAIN;
        let result = loop {
            let issued = self.issue(streams, fin_apart, request, schedule, &mut calls, tally);
            if let Err(e) = issued {
                break Err(e);
            }
            if let Err(e) = self.flush() {
                break Err(e);
            }
            let now = Instant::now();
            self.counting = now >= schedule.start && now < schedule.end;
            if now >= schedule.end && calls.is_empty() {
                break Ok(());
            }
            if now >= drain_deadline {
                for (id, call) in calls.drain() {
                    tally.stalled += 1;
                    tally.error(format!("stalled: stream {id}, {}", call.progress()));
                }
                break Ok(());
            }
            let until = if now < schedule.end {
                schedule.end
            } else {
                drain_deadline
            };
            if let Err(e) = self.wait(until) {
                break Err(e);
            }
            if let Err(e) = self.events(request, schedule, &mut calls, tally) {
                break Err(e);
            }
        };
        tally.datagrams = self.datagrams;
        if let Err(e) = result {
            // Every call still in flight failed with the connection.
            for _ in calls.drain() {
                tally.error(e.clone());
            }
            tally.error(format!("{e} (the connection)"));
            return;
        }
        let _ = self.conn.close(true, 0x100, b"");
        let _ = self.flush();
    }

    /// Opens streams up to `streams` while the window lasts, and hands
    /// quiche any request body not yet sent.
    #[allow(clippy::too_many_arguments)]
    fn issue(
        &mut self,
        streams: usize,
        fin_apart: bool,
        request: &Request,
        schedule: &Schedule,
        calls: &mut HashMap<u64, InFlight>,
        tally: &mut Tally,
    ) -> Result<(), String> {
        let h3 = self.h3.as_mut().unwrap();
        while calls.len() < streams && Instant::now() < schedule.end {
            let id = match h3.send_request(&mut self.conn, &request.headers, false) {
                Ok(id) => id,
                // Out of stream credit (or room): when vimanad grants more.
                Err(h3::Error::StreamBlocked)
                | Err(h3::Error::TransportError(quiche::Error::StreamLimit)) => break,
                Err(e) => {
                    tally.error(format!("send_request: {e}"));
                    return Err(format!("cannot open a stream: {e}"));
                }
            };
            let call = InFlight {
                started: Instant::now(),
                sent: 0,
                fin_sent: false,
                status: None,
                grpc: None,
                body: Vec::with_capacity(128),
            };
            calls.insert(id, call);
        }
        let fin_with_body = !fin_apart;
        for (&id, call) in calls.iter_mut() {
            while call.sent < request.body.len() {
                let rest = &request.body[call.sent..];
                match h3.send_body(&mut self.conn, id, rest, fin_with_body) {
                    Ok(n) => {
                        call.sent += n;
                        call.fin_sent = fin_with_body && call.sent == request.body.len();
                    }
                    Err(h3::Error::Done) => break,
                    Err(e) => {
                        // The stream is gone (reset): its events will say.
                        (call.sent, call.fin_sent) = (request.body.len(), true);
                        tally.error(format!("send_body: {e}"));
                    }
                }
            }
        }
        if fin_apart {
            // The bodies go out first; then each FIN in a packet of its own.
            self.flush()?;
            for (&id, call) in calls.iter_mut() {
                if call.sent == request.body.len() && !call.fin_sent {
                    match self.conn.stream_send(id, b"", true) {
                        Ok(_) => call.fin_sent = true,
                        Err(quiche::Error::Done) => {}
                        Err(e) => {
                            call.fin_sent = true;
                            tally.error(format!("send the FIN: {e}"));
                        }
                    }
                    self.flush()?;
                }
            }
        }
        Ok(())
    }

    /// Reads HTTP/3 events: response headers, bodies, trailers, ends.
    fn events(
        &mut self,
        request: &Request,
        schedule: &Schedule,
        calls: &mut HashMap<u64, InFlight>,
        tally: &mut Tally,
    ) -> Result<(), String> {
        let h3 = self.h3.as_mut().unwrap();
        let now = Instant::now();
        loop {
            let (id, event) = match h3.poll(&mut self.conn) {
                Ok(e) => e,
                Err(h3::Error::Done) => return Ok(()),
                Err(e) => return Err(format!("HTTP/3 error: {e}")),
            };
            match event {
                h3::Event::Headers { list, .. } => {
                    let Some(call) = calls.get_mut(&id) else {
                        continue;
                    };
                    let find = |name: &[u8]| {
                        list.iter()
                            .find(|h| h.name() == name)
                            .map(|h| String::from_utf8_lossy(h.value()).into_owned())
                    };
                    if call.status.is_none() {
                        let status = find(b":status").and_then(|s| s.parse().ok());
                        call.status = Some(status.unwrap_or(0));
                    }
                    if let Some(code) = find(b"grpc-status") {
                        call.grpc = Some((code, find(b"grpc-message").unwrap_or_default()));
                    }
                }
                h3::Event::Data => {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = h3.recv_body(&mut self.conn, id, &mut buf) {
                        if let Some(call) = calls.get_mut(&id) {
                            call.body.extend_from_slice(&buf[..n]);
                        }
                    }
                }
                h3::Event::Finished => {
                    let Some(call) = calls.remove(&id) else {
                        continue;
                    };
                    let verdict = match (call.status, &call.grpc) {
                        (Some(200), Some((code, _))) if code == "0" => {
                            request.check_reply(&call.body)
                        }
                        (Some(200), Some((code, message))) => {
                            Err(format!("grpc-status {code}: {message}"))
                        }
                        (Some(200), None) => Err("no grpc-status".into()),
                        (status, _) => Err(format!("HTTP status {status:?}")),
                    };
                    match verdict {
                        Ok(()) => tally.done(call.started, now, schedule),
                        Err(e) => {
                            tally.note_latency(now - call.started);
                            tally.error(e);
                        }
                    }
                }
                h3::Event::Reset(code) => {
                    if let Some(call) = calls.remove(&id) {
                        tally.note_latency(now - call.started);
                        tally.error(format!("stream reset by vimanad (HTTP/3 error 0x{code:x})"));
                    }
                }
                h3::Event::GoAway => tally.error("GOAWAY from vimanad".into()),
                _ => {}
            }
        }
    }
}

/// poll(2) one descriptor for `events`, with a nanosecond timeout.
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

/// `streams` spread over `connections`, as evenly as they go.
fn shares(streams: usize, connections: usize) -> Vec<usize> {
    let connections = connections.clamp(1, streams);
    (0..connections)
        .map(|i| streams / connections + usize::from(i < streams % connections))
        .collect()
}

/// One HTTP/3 window: a thread per connection; the calling thread samples
/// CPU.
fn h3_window(target: &Target, streams: usize, args: &Args, warmup: Duration) -> Sample {
    let shares = shares(streams, args.connections);
    let request = Arc::new(Request::new());
    let schedule = Arc::new(OnceLock::<Schedule>::new());
    let barrier = Arc::new(Barrier::new(shares.len() + 1));
    let workers: Vec<_> = shares
        .iter()
        .map(|&share| {
            let (request, schedule, barrier) = (request.clone(), schedule.clone(), barrier.clone());
            let (peer, fin_apart) = (target.node.listen, args.fin_apart);
            std::thread::Builder::new()
                .name("e2e-h3".into())
                .spawn(move || {
                    let mut tally = Tally::default();
                    let client = H3Client::connect(peer);
                    barrier.wait(); // all connected (or failed)
                    barrier.wait(); // the schedule is set
                    let schedule = schedule.get().unwrap();
                    match client {
                        Ok(mut client) => {
                            client.run(share, fin_apart, &request, schedule, &mut tally)
                        }
                        Err(e) => tally.error(e),
                    }
                    tally
                })
                .unwrap()
        })
        .collect();
    barrier.wait();
    let planned = Schedule::after_warmup(warmup, args.duration);
    let _ = schedule.set(planned);
    barrier.wait();
    let cpu = sample_window(&planned, target.node.process.id(), target.component_pid);
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.join().expect("an HTTP/3 worker panicked"));
    }
    Sample::of(tally, args.duration, cpu)
}

// ---------------------------------------------------------------- ceiling

/// One ceiling window: the streams as tasks on `rt` (one worker thread),
/// over as many HTTP/2 connections as the HTTP/3 path uses.
fn ceiling_window(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    streams: usize,
    args: &Args,
    warmup: Duration,
) -> Sample {
    let shares = shares(streams, args.connections);
    let message = Request::new().message;
    let channels: Vec<Channel> = rt.block_on(async {
        let mut channels = Vec::new();
        for _ in &shares {
            let channel = component_channel(&target.socket).await;
            channels.push(channel.expect("connect to the component's socket"));
        }
        channels
    });
    let schedule = Schedule::after_warmup(warmup, args.duration);
    let mut tasks = Vec::new();
    for (channel, &share) in channels.iter().zip(&shares) {
        for _ in 0..share {
            let client = EchoClient::new(channel.clone());
            let message = message.clone();
            tasks.push(rt.spawn(ceiling_stream(client, message, schedule)));
        }
    }
    let cpu = sample_window(&schedule, target.node.process.id(), target.component_pid);
    let mut tally = Tally::default();
    rt.block_on(async {
        for task in tasks {
            tally.merge(task.await.expect("a ceiling stream panicked"));
        }
    });
    drop(channels);
    Sample::of(tally, args.duration, cpu)
}

/// One stream of ceiling calls, back to back, until the window ends.
async fn ceiling_stream(
    mut client: EchoClient<Channel>,
    message: EchoRequest,
    schedule: Schedule,
) -> Tally {
    let mut tally = Tally::default();
    let drain_deadline = tokio::time::Instant::from_std(schedule.end + DRAIN);
    while Instant::now() < schedule.end {
        let started = Instant::now();
        let call = client.unary(message.clone());
        let result = tokio::time::timeout_at(drain_deadline, call).await;
        let finished = Instant::now();
        match result {
            Err(_) => {
                tally.stalled += 1;
                tally.error("stalled: no answer".into());
                break;
            }
            Ok(Ok(reply)) if reply.get_ref().payload == message.payload => {
                tally.done(started, finished, &schedule)
            }
            Ok(Ok(_)) => {
                tally.note_latency(finished - started);
                tally.error("the reply's payload is not ours".into());
            }
            Ok(Err(status)) => {
                tally.note_latency(finished - started);
                let code = status.code() as i32;
                tally.error(format!("grpc-status {code}: {}", status.message()));
            }
        }
    }
    tally
}

// ---------------------------------------------------------------- report

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Http3,
    Ceiling,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Http3 => "vimanad (HTTP/3)",
            Mode::Ceiling => "ceiling (HTTP/2 direct)",
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The medians over rounds of one (shards, streams, mode).
struct Row {
    shards: usize,
    streams: usize,
    mode: Mode,
    calls_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    vimanad_us: f64,
    component_us: f64,
    generator_us: f64,
    datagrams: (f64, f64),
    errors: u64,
    stalled: u64,
    ratio: Option<f64>,
}

fn rows(results: &BTreeMap<(usize, usize, Mode), Vec<Sample>>) -> Vec<Row> {
    let mut rows = Vec::new();
    for (&(shards, streams, mode), samples) in results {
        let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        rows.push(Row {
            shards,
            streams,
            mode,
            calls_per_s: m(|s| s.calls_per_s),
            p50_us: m(|s| s.p50_us),
            p99_us: m(|s| s.p99_us),
            vimanad_us: m(|s| s.vimanad_us),
            component_us: m(|s| s.component_us),
            generator_us: m(|s| s.generator_us),
            datagrams: (m(|s| s.datagrams.0), m(|s| s.datagrams.1)),
            errors: samples.iter().map(|s| s.tally.error_count()).sum(),
            stalled: samples.iter().map(|s| s.tally.stalled).sum(),
            ratio: None,
        });
    }
    let ceilings: HashMap<(usize, usize), f64> = rows
        .iter()
        .filter(|r| r.mode == Mode::Ceiling)
        .map(|r| ((r.shards, r.streams), r.calls_per_s))
        .collect();
    for row in rows.iter_mut().filter(|r| r.mode == Mode::Http3) {
        row.ratio = ceilings
            .get(&(row.shards, row.streams))
            .map(|c| row.calls_per_s / c);
    }
    rows
}

/// A figure with `decimals` decimals, or a dash when there is none.
fn cell(x: f64, decimals: usize) -> String {
    match x.is_nan() {
        true => "—".to_owned(),
        false => format!("{x:.decimals$}"),
    }
}

fn report(rows: &[Row], markdown: bool) {
    let ratio = |r: &Row| r.ratio.map_or("".to_owned(), |x| format!("{x:.2}×"));
    let http3 = |r: &Row, x: f64, decimals: usize| match r.mode {
        Mode::Http3 => cell(x, decimals),
        Mode::Ceiling => "—".to_owned(),
    };
    let datagrams = |r: &Row| match r.mode {
        Mode::Http3 => format!("{} / {}", cell(r.datagrams.0, 1), cell(r.datagrams.1, 1)),
        Mode::Ceiling => "—".to_owned(),
    };
    if markdown {
        let trouble = |r: &Row| match (r.errors, r.stalled) {
            (0, 0) => "0".to_owned(),
            (e, 0) => format!("**{e}**"),
            (e, s) => format!("**{e} ({s} stalled)**"),
        };
        println!(
            "| shards | streams | path | calls/s | p50 µs | p99 µs | vimanad CPU µs/call \
             | component CPU µs/call | load generator CPU µs/call \
             | UDP datagrams/call to / from vimanad | errors | vimanad / ceiling |"
        );
        println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in rows {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.shards,
                r.streams,
                r.mode.label(),
                cell(r.calls_per_s, 0),
                cell(r.p50_us, 0),
                cell(r.p99_us, 0),
                http3(r, r.vimanad_us, 1),
                cell(r.component_us, 1),
                cell(r.generator_us, 1),
                datagrams(r),
                trouble(r),
                ratio(r)
            );
        }
    } else {
        println!(
            "\n{:>6} {:>7} {:<24} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>11} {:>7} {:>6}",
            "shards",
            "streams",
            "path",
            "calls/s",
            "p50 µs",
            "p99 µs",
            "vimanad",
            "compon.",
            "loadgen",
            "datagrams",
            "errors",
            "ratio"
        );
        for r in rows {
            println!(
                "{:>6} {:>7} {:<24} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>11} {:>7} {:>6}",
                r.shards,
                r.streams,
                r.mode.label(),
                cell(r.calls_per_s, 0),
                cell(r.p50_us, 0),
                cell(r.p99_us, 0),
                http3(r, r.vimanad_us, 1),
                cell(r.component_us, 1),
                cell(r.generator_us, 1),
                datagrams(r),
                r.errors,
                ratio(r)
            );
        }
        println!(
            "(vimanad, compon., loadgen: CPU µs per call; datagrams: UDP datagrams per call \
             to / from vimanad; ratio: calls/s vimanad / ceiling)"
        );
    }
}

/// The 1-minute load average: other work on the machine skews the figures.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_owned()
}

fn main() {
    let args = args();
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the e2e bench starts vimanad, which runs containers: run it as root"
    );
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The ceiling's client: one worker thread, like one HTTP/3 connection's.
    let ceiling = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let warmup = (args.duration / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let started = Instant::now();
    let load_before = loadavg();
    let mut results: BTreeMap<(usize, usize, Mode), Vec<Sample>> = BTreeMap::new();
    let mut trouble = Vec::new();
    for &shards in &args.shards {
        let mut target = control.block_on(Target::start(shards));
        eprintln!(
            "e2e: vimanad (pid {}) --shards {shards} on {}, component pid {} on {}",
            target.node.process.id(),
            target.node.listen,
            target.component_pid,
            target.socket.display()
        );
        for round in 0..args.rounds {
            for (i, &streams) in args.streams.iter().enumerate() {
                // Alternate which path goes first, so drift hits both alike.
                let modes = if (round + i) % 2 == 0 {
                    [Mode::Http3, Mode::Ceiling]
                } else {
                    [Mode::Ceiling, Mode::Http3]
                };
                for mode in modes {
                    let sample = match mode {
                        Mode::Http3 => h3_window(&target, streams, &args, warmup),
                        Mode::Ceiling => ceiling_window(&ceiling, &target, streams, &args, warmup),
                    };
                    let t = &sample.tally;
                    eprintln!(
                        "e2e: shards {shards} round {round} streams {streams:>3} {:<24} \
                         {:>8.0} calls/s  p50 {:>6.0} µs  p99 {:>6.0} µs  CPU µs/call: \
                         vimanad {:>6.1} component {:>6.1} loadgen {:>6.1}  \
                         datagrams/call {:.1} / {:.1}  slowest {:?}",
                        mode.label(),
                        sample.calls_per_s,
                        sample.p50_us,
                        sample.p99_us,
                        sample.vimanad_us,
                        sample.component_us,
                        sample.generator_us,
                        sample.datagrams.0,
                        sample.datagrams.1,
                        t.slowest
                    );
                    if t.slow > 0 {
                        eprintln!(
                            "e2e: ! {} calls slower than {SLOW:?} (slowest {:?})",
                            t.slow, t.slowest
                        );
                    }
                    if t.error_count() > 0 || t.stalled > 0 {
                        let line = format!(
                            "shards {shards}, streams {streams}, round {round}, {}: \
                             {} failed calls, {} stalled (in flight {DRAIN:?} after the \
                             window), {} slower than {SLOW:?} (slowest {:?}); errors: {:?}",
                            mode.label(),
                            t.error_count(),
                            t.stalled,
                            t.slow,
                            t.slowest,
                            t.errors
                        );
                        eprintln!("e2e: !!! {line}");
                        trouble.push(line);
                        if mode == Mode::Http3 {
                            eprintln!("e2e: vimanad's log ends:\n{}", target.log_tail(20));
                        }
                    }
                    results
                        .entry((shards, streams, mode))
                        .or_default()
                        .push(sample);
                }
            }
        }
        control.block_on(target.node.remove_running_pod(&target.pod));
        drop(target);
    }
    let load_after = loadavg();

    println!(
        "\nUnary {PAYLOAD}-byte calls ({UNARY}), {:?} windows after {:?} warm-up, \
         {} rounds, medians over rounds; up to {} connections per path{}",
        args.duration,
        warmup,
        args.rounds,
        args.connections,
        match args.fin_apart {
            true => "; HTTP/3 requests end with a FIN in a packet of its own (--fin-apart)",
            false => "",
        }
    );
    report(&rows(&results), args.markdown);
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
