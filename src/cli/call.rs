//! `vimanad call`: one gRPC call over HTTP/3 (a tiny grpcurl for the data
//! plane). quiche client on a blocking `UdpSocket` whose read timeout follows
//! `conn.timeout()`; no async runtime.
//!
//! Exit code: the call's grpc-status (0 = OK); 2 when the answer is not gRPC
//! (HTTP status other than 200, or a non-gRPC content-type); 1 on transport
//! or handshake failure (via anyhow). Client-side failures are reported as
//! gRPC statuses too: DEADLINE_EXCEEDED when `--timeout` passes,
//! RESOURCE_EXHAUSTED for a response message over 64 MiB, INTERNAL for a
//! malformed response body, CANCELLED/UNAVAILABLE/INTERNAL when the server
//! resets the stream.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use quiche::h3::{self, NameValue, WireErrorCode};

use super::grpc_frame::{self, Decoder};

#[derive(Args, Debug)]
pub struct CallArgs {
    /// https://AUTHORITY/SERVICE/METHOD; gives `:authority` and `:path`.
    url: String,
    /// Send packets to ADDR (host:port) instead of resolving the URL's host.
    #[arg(long, value_name = "ADDR")]
    connect: Option<String>,
    /// A request message as hex protobuf bytes (repeatable). Messages are sent
    /// in this order: every --data-hex, every --data-file, every --text, stdin.
    #[arg(long = "data-hex", value_name = "HEX")]
    data_hex: Vec<String>,
    /// A request message read from a file of raw protobuf bytes (repeatable).
    #[arg(long = "data-file", value_name = "PATH")]
    data_file: Vec<PathBuf>,
    /// A request message whose field 1 is STRING, e.g. the example's
    /// EchoRequest{message} (repeatable).
    #[arg(long, value_name = "STRING")]
    text: Vec<String>,
    /// One request message read from stdin (raw protobuf bytes).
    #[arg(long)]
    data_stdin: bool,
    /// Request metadata, 'name: value' (repeatable), e.g. 'vimana-version: 1.0.0'.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Deadline for the whole call (e.g. 500ms, 5s); also sent as grpc-timeout
    /// unless a -H grpc-timeout is given.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Skip certificate verification (the default unless --ca is given: the
    /// data plane's certificate is self-signed by default).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// Verify the server's certificate against this PEM file.
    #[arg(long, value_name = "PATH")]
    ca: Option<PathBuf>,
    /// Name for SNI and certificate verification (default: the URL's host).
    #[arg(long)]
    server_name: Option<String>,
    /// How response messages are printed on stdout.
    #[arg(long, value_enum, default_value_t = Output::Hex)]
    output: Output,
    /// Print request and response headers and trailers on stderr.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// One line of hex per message.
    Hex,
    /// The message bytes, unframed.
    Raw,
    /// Field 1 as a string (the example's EchoReply.message); hex if it isn't.
    Text,
}

const DEFAULT_PORT: u16 = 443;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT_MS: u64 = 30_000;
const MAX_DATAGRAM: usize = 1350;
/// Body bytes of a non-gRPC answer kept to show the user.
const MAX_ERROR_BODY: usize = 4096;

pub fn run(args: CallArgs) -> Result<ExitCode> {
    let target = Target::parse(&args.url)?;
    let headers = request_headers(&target, &args.headers, args.timeout)?;
    let mut body = Vec::new();
    for message in request_messages(&args)? {
        grpc_frame::encode(&message, &mut body);
    }
    let peer = match &args.connect {
        Some(addr) => resolve(addr)?,
        None => resolve(&format!("{}:{}", target.host, target.port))?,
    };
    let sni = args.server_name.as_deref().unwrap_or(&target.host);
    let sni = match (sni.parse::<IpAddr>(), &args.ca) {
        (Err(_), _) => Some(sni),
        (Ok(_), None) => None, // no SNI for IP literals (RFC 6066)
        (Ok(_), Some(_)) => bail!("--ca with an IP-address host needs --server-name NAME"),
    };
    let started = Instant::now();
    let deadline = args.timeout.map(|t| started + t);
    let mut quic = Quic::connect(peer, sni, args.ca.as_deref())?;
    quic.handshake(deadline.map_or(started + HANDSHAKE_TIMEOUT, |d| {
        d.min(started + HANDSHAKE_TIMEOUT)
    }))?;
    if args.verbose {
        eprintln!("* connected to {peer} (HTTP/3)");
        for (name, value) in &headers {
            eprintln!("> {name}: {value}");
        }
    }
    let mut call = Call::new(&headers, body, args.output, args.verbose);
    let outcome = call.run(&mut quic, deadline, args.timeout);
    quic.close();
    let outcome = outcome?;
    for (name, value) in &call.trailers {
        if args.verbose {
            eprintln!("< {name}: {value}");
        }
    }
    match outcome {
        Outcome::Http {
            status,
            content_type,
            body,
        } => {
            let text = String::from_utf8_lossy(&body);
            eprintln!("HTTP status {status}, content-type {content_type:?}: not a gRPC response");
            if !text.trim().is_empty() {
                eprintln!("{}", text.trim_end());
            }
            Ok(ExitCode::from(2))
        }
        Outcome::Grpc { code, message } => {
            let line = format!(
                "grpc-status: {code} ({}) grpc-message: {message}",
                status_name(code)
            );
            eprintln!("{}", line.trim_end());
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(2)))
        }
    }
}

/// What the URL says: where to connect by default, `:authority`, `:path`.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    authority: String,
    /// Without IPv6 brackets.
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        if uri.scheme_str() != Some("https") {
            bail!("URL {url:?} must start with https://");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("URL {url:?} has no host"))?;
        if authority.as_str().contains('@') {
            bail!("URL {url:?}: user info is not allowed");
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        if path == "/" {
            bail!("URL {url:?} has no /SERVICE/METHOD path");
        }
        Ok(Target {
            authority: authority.as_str().to_owned(),
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(DEFAULT_PORT),
            path: path.to_owned(),
        })
    }
}

/// `host:port`, `[v6]:port`, or a bare host/IP (port 443).
fn resolve(addr: &str) -> Result<SocketAddr> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse()
                .with_context(|| format!("invalid port in {addr:?}"))?,
        ),
        None => (addr, DEFAULT_PORT),
    };
    (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .with_context(|| format!("resolve {addr:?}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr:?} resolves to no address"))
}

fn request_messages(args: &CallArgs) -> Result<Vec<Vec<u8>>> {
    let mut messages = Vec::new();
    for h in &args.data_hex {
        let digits: String = h.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        messages.push(hex::decode(&digits).with_context(|| format!("--data-hex {h:?}"))?);
    }
    for path in &args.data_file {
        messages.push(std::fs::read(path).with_context(|| format!("read {}", path.display()))?);
    }
    messages.extend(args.text.iter().map(|t| grpc_frame::text_message(t)));
    if args.data_stdin {
        let mut message = Vec::new();
        std::io::stdin()
            .read_to_end(&mut message)
            .context("read stdin")?;
        messages.push(message);
    }
    Ok(messages)
}

/// Parses `-H 'name: value'` into a lowercase name and a trimmed value.
fn parse_header(raw: &str) -> Result<(String, String)> {
    let (name, value) = raw
        .split_once(':')
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "header {raw:?} is not 'name: value' (pseudo-headers like :path come from the URL)"
            )
        })?;
    let name = name.trim().to_ascii_lowercase();
    let value = value.trim().to_owned();
    http::HeaderName::from_bytes(name.as_bytes())
        .with_context(|| format!("invalid header name in {raw:?}"))?;
    http::HeaderValue::from_str(&value)
        .with_context(|| format!("invalid header value in {raw:?}"))?;
    if matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    ) {
        bail!("header {name:?} is connection-specific and not allowed in HTTP/3");
    }
    Ok((name, value))
}

/// The request's header list: pseudo-headers, gRPC defaults (which `-H` may
/// replace), the user's metadata, and grpc-timeout from `--timeout`.
fn request_headers(
    target: &Target,
    raw: &[String],
    timeout: Option<Duration>,
) -> Result<Vec<(String, String)>> {
    let mut headers: Vec<(String, String)> = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", &target.authority),
        (":path", &target.path),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        (
            "user-agent",
            concat!("vimanad-call/", env!("CARGO_PKG_VERSION")),
        ),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v.to_owned()))
    .collect();
    let defaults = ["content-type", "te", "user-agent"];
    for h in raw {
        let (name, value) = parse_header(h)?;
        if defaults.contains(&name.as_str()) {
            headers.retain(|(n, _)| *n != name);
        }
        headers.push((name, value));
    }
    if let Some(t) = timeout {
        if !headers.iter().any(|(n, _)| n == "grpc-timeout") {
            headers.push(("grpc-timeout".into(), grpc_timeout(t)));
        }
    }
    Ok(headers)
}

/// A grpc-timeout value: at most 8 digits and a unit, rounded up.
fn grpc_timeout(t: Duration) -> String {
    let ms = t.as_nanos().div_ceil(1_000_000);
    if ms < 100_000_000 {
        return format!("{ms}m");
    }
    let s = ms.div_ceil(1000);
    if s < 100_000_000 {
        format!("{s}S")
    } else {
        format!("{}H", s.div_ceil(3600).min(99_999_999))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 500ms, 5s, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

const STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn status_name(code: u32) -> &'static str {
    STATUS_NAMES.get(code as usize).copied().unwrap_or("?")
}

/// grpc-message is percent-encoded (gRPC over HTTP/2 spec); bad escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The gRPC status a client reports when the server resets the stream.
fn reset_status(code: u64) -> u32 {
    match code {
        c if c == WireErrorCode::RequestCancelled as u64 => 1,
        c if c == WireErrorCode::RequestRejected as u64 => 14,
        c if c == WireErrorCode::ExcessiveLoad as u64 => 8,
        _ => 13,
    }
}

fn describe_close(e: &quiche::ConnectionError) -> String {
    let reason = String::from_utf8_lossy(&e.reason);
    let what = match (e.is_app, e.error_code) {
        (false, c @ 0x100..=0x1ff) => format!("TLS alert {}", c - 0x100),
        (false, c) => format!("QUIC transport error 0x{c:x}"),
        (true, c) => format!("HTTP/3 error 0x{c:x}"),
    };
    if reason.is_empty() {
        what
    } else {
        format!("{what}: {reason}")
    }
}

/// A client QUIC connection on its own connected UDP socket.
struct Quic {
    socket: UdpSocket,
    conn: quiche::Connection,
    peer: SocketAddr,
    local: SocketAddr,
    buf: Vec<u8>,
}

impl Quic {
    fn connect(peer: SocketAddr, sni: Option<&str>, ca: Option<&std::path::Path>) -> Result<Quic> {
        let bind: SocketAddr = if peer.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()?;
        let socket = UdpSocket::bind(bind).context("bind a UDP socket")?;
        // Connected, so an ICMP port-unreachable surfaces as ECONNREFUSED.
        socket
            .connect(peer)
            .with_context(|| format!("connect UDP socket to {peer}"))?;
        let local = socket.local_addr()?;
        let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION)?;
        config.set_application_protos(h3::APPLICATION_PROTOCOL)?;
        config.verify_peer(ca.is_some());
        if let Some(ca) = ca {
            let path = ca
                .to_str()
                .ok_or_else(|| anyhow!("--ca path is not UTF-8"))?;
            config
                .load_verify_locations_from_file(path)
                .with_context(|| format!("load CA certificates from {path}"))?;
        }
        config.set_max_idle_timeout(IDLE_TIMEOUT_MS);
        config.set_max_recv_udp_payload_size(65527);
        config.set_max_send_udp_payload_size(MAX_DATAGRAM);
        config.set_initial_max_data(16 << 20);
        config.set_initial_max_stream_data_bidi_local(4 << 20);
        config.set_initial_max_stream_data_uni(1 << 20);
        config.set_initial_max_streams_uni(16);
        config.set_disable_active_migration(true);
        let mut scid = [0u8; quiche::MAX_CONN_ID_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut scid)
            .map_err(|_| anyhow!("no randomness for the connection ID"))?;
        let scid = quiche::ConnectionId::from_ref(&scid);
        let conn = quiche::connect(sni, &scid, local, peer, &mut config)?;
        let mut quic = Quic {
            socket,
            conn,
            peer,
            local,
            buf: vec![0; 65535],
        };
        quic.flush()?;
        Ok(quic)
    }

    fn handshake(&mut self, until: Instant) -> Result<()> {
        while !self.conn.is_established() {
            if Instant::now() >= until {
                bail!(
                    "no QUIC handshake with {} (is an HTTP/3 server listening on that UDP port?)",
                    self.peer
                );
            }
            self.wait(until)?;
            if self.conn.is_closed() {
                let why = match (self.conn.local_error(), self.conn.peer_error()) {
                    (Some(e), _) | (None, Some(e)) => describe_close(e),
                    _ => "timed out".into(),
                };
                bail!("QUIC handshake with {} failed: {why}", self.peer);
            }
            self.flush()?;
        }
        Ok(())
    }

    /// Sends every packet quiche has ready.
    fn flush(&mut self) -> Result<()> {
        let mut out = [0u8; MAX_DATAGRAM];
        loop {
            match self.conn.send(&mut out) {
                Ok((n, _)) => self.send_datagram(&out[..n])?,
                Err(quiche::Error::Done) => return Ok(()),
                Err(e) => bail!("QUIC send to {}: {e}", self.peer),
            }
        }
    }

    fn send_datagram(&self, d: &[u8]) -> Result<()> {
        match self.socket.send(d) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()), // a lost packet; QUIC recovers
            Err(e) => Err(self.io_error(e)),
        }
    }

    fn io_error(&self, e: std::io::Error) -> anyhow::Error {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            anyhow!(
                "nothing listening on UDP {} (connection refused)",
                self.peer
            )
        } else {
            anyhow!("UDP {}: {e}", self.peer)
        }
    }

    /// Blocks until packets arrive (feeding them all to quiche) or quiche's
    /// timer (or `until`) fires.
    fn wait(&mut self, until: Instant) -> Result<()> {
        let now = Instant::now();
        let limit = until.saturating_duration_since(now);
        let wait = self.conn.timeout().map_or(limit, |t| t.min(limit));
        self.socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match self.socket.recv(&mut self.buf) {
            Ok(n) => self.feed(n),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                self.conn.on_timeout();
                return Ok(());
            }
            Err(e) => return Err(self.io_error(e)),
        }
        // Drain whatever else has arrived before handing control back.
        self.socket.set_nonblocking(true)?;
        let drained = loop {
            match self.socket.recv(&mut self.buf) {
                Ok(n) => self.feed(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) => break Err(self.io_error(e)),
            }
        };
        self.socket.set_nonblocking(false)?;
        drained
    }

    fn feed(&mut self, n: usize) {
        let info = quiche::RecvInfo {
            from: self.peer,
            to: self.local,
        };
        // Errors here (undecryptable or malformed packets) are quiche's to
        // handle: it drops the packet or closes the connection, which the
        // caller sees through `is_closed()`.
        let _ = self.conn.recv(&mut self.buf[..n], info);
    }

    fn closed_error(&self) -> anyhow::Error {
        if self.conn.is_timed_out() {
            return anyhow!(
                "connection to {} timed out (no packets for {IDLE_TIMEOUT_MS} ms)",
                self.peer
            );
        }
        match (self.conn.peer_error(), self.conn.local_error()) {
            (Some(e), _) => anyhow!(
                "server {} closed the connection: {}",
                self.peer,
                describe_close(e)
            ),
            (None, Some(e)) => anyhow!("connection to {} closed: {}", self.peer, describe_close(e)),
            _ => anyhow!("connection to {} closed", self.peer),
        }
    }

    /// Best effort: tell the server we are done (CONNECTION_CLOSE H3_NO_ERROR).
    fn close(&mut self) {
        let _ = self.conn.close(true, WireErrorCode::NoError as u64, b"");
        let _ = self.flush();
    }
}

enum Outcome {
    Grpc {
        code: u32,
        message: String,
    },
    Http {
        status: u16,
        content_type: String,
        body: Vec<u8>,
    },
}

/// One request stream and what came back on it.
struct Call {
    headers: Vec<h3::Header>,
    body: Vec<u8>,
    sent: usize,
    stream: Option<u64>,
    output: Output,
    verbose: bool,
    /// `Some` once the final (non-1xx) response headers arrived.
    status: Option<u16>,
    grpc: bool,
    response_headers: Vec<(String, String)>,
    trailers: Vec<(String, String)>,
    decoder: Decoder,
    other_body: Vec<u8>,
    end: Option<End>,
}

enum End {
    Finished,
    Reset(u64),
    Local { code: u32, message: String },
}

impl Call {
    fn new(headers: &[(String, String)], body: Vec<u8>, output: Output, verbose: bool) -> Call {
        Call {
            headers: headers
                .iter()
                .map(|(n, v)| h3::Header::new(n.as_bytes(), v.as_bytes()))
                .collect(),
            body,
            sent: 0,
            stream: None,
            output,
            verbose,
            status: None,
            grpc: false,
            response_headers: Vec::new(),
            trailers: Vec::new(),
            decoder: Decoder::new(grpc_frame::MAX_MESSAGE),
            other_body: Vec::new(),
            end: None,
        }
    }

    fn run(
        &mut self,
        quic: &mut Quic,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<Outcome> {
        let mut h3 = h3::Connection::with_transport(&mut quic.conn, &h3::Config::new()?)
            .context("start HTTP/3 on the connection")?;
        let far = Instant::now() + Duration::from_secs(365 * 86400);
        while self.end.is_none() {
            self.send(quic, &mut h3)?;
            if let Err(e) = self.poll(quic, &mut h3) {
                let _ = quic
                    .conn
                    .close(true, WireErrorCode::GeneralProtocolError as u64, b"");
                return Err(e);
            }
            quic.flush()?;
            if self.end.is_some() {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let t = timeout.unwrap_or_default();
                self.fail(quic, 4, format!("deadline of {t:?} exceeded (client-side)"))?;
                break;
            }
            quic.wait(deadline.unwrap_or(far))?;
            if quic.conn.is_closed() {
                return Err(quic.closed_error());
            }
        }
        Ok(self.outcome())
    }

    /// Sends the request headers, then as much of the body as flow control allows.
    fn send(&mut self, quic: &mut Quic, h3: &mut h3::Connection) -> Result<()> {
        let stream = match self.stream {
            Some(s) => s,
            None => match h3.send_request(&mut quic.conn, &self.headers, self.body.is_empty()) {
                Ok(s) => *self.stream.insert(s),
                Err(h3::Error::StreamBlocked) => return Ok(()),
                Err(e) => bail!("send the request headers: {e}"),
            },
        };
        while self.sent < self.body.len() {
            match h3.send_body(&mut quic.conn, stream, &self.body[self.sent..], true) {
                Ok(n) => self.sent += n,
                Err(h3::Error::Done) => break,
                Err(h3::Error::TransportError(quiche::Error::StreamStopped(code))) => {
                    if self.verbose {
                        eprintln!("* server stopped reading the request (0x{code:x})");
                    }
                    self.sent = self.body.len();
                }
                Err(e) => bail!("send the request body: {e}"),
            }
        }
        Ok(())
    }

    fn poll(&mut self, quic: &mut Quic, h3: &mut h3::Connection) -> Result<()> {
        while self.end.is_none() {
            let (id, event) = match h3.poll(&mut quic.conn) {
                Ok(e) => e,
                Err(h3::Error::Done) => return Ok(()),
                Err(e) => bail!("HTTP/3 error on the connection to {}: {e}", quic.peer),
            };
            match event {
                h3::Event::Headers { list, .. } if Some(id) == self.stream => {
                    self.on_headers(list)?
                }
                h3::Event::Data if Some(id) == self.stream => self.on_data(quic, h3, id)?,
                h3::Event::Finished if Some(id) == self.stream => self.end = Some(End::Finished),
                h3::Event::Reset(code) if Some(id) == self.stream => {
                    self.end = Some(End::Reset(code))
                }
                h3::Event::GoAway if self.stream.is_none_or(|s| s >= id) => {
                    self.fail(
                        quic,
                        14,
                        "server is going away (GOAWAY) and did not take the request".into(),
                    )?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn on_headers(&mut self, list: Vec<h3::Header>) -> Result<()> {
        let fields: Vec<(String, String)> = list
            .iter()
            .map(|h| {
                (
                    String::from_utf8_lossy(h.name()).into_owned(),
                    String::from_utf8_lossy(h.value()).into_owned(),
                )
            })
            .collect();
        if self.status.is_some() {
            self.trailers = fields;
            return Ok(());
        }
        let status: u16 = find(&fields, ":status")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("response without a valid :status"))?;
        if self.verbose {
            for (name, value) in &fields {
                eprintln!("< {name}: {value}");
            }
        }
        if (100..200).contains(&status) {
            return Ok(()); // informational; the final headers follow
        }
        self.status = Some(status);
        self.grpc = status == 200
            && find(&fields, "content-type").is_some_and(|c| c.starts_with("application/grpc"));
        self.response_headers = fields;
        Ok(())
    }

    fn on_data(&mut self, quic: &mut Quic, h3: &mut h3::Connection, id: u64) -> Result<()> {
        let mut buf = [0u8; 65536];
        loop {
            let n = match h3.recv_body(&mut quic.conn, id, &mut buf) {
                Ok(n) => n,
                Err(h3::Error::Done) => return Ok(()),
                Err(e) => bail!("read the response body: {e}"),
            };
            if !self.grpc {
                let room = MAX_ERROR_BODY.saturating_sub(self.other_body.len());
                self.other_body.extend_from_slice(&buf[..n.min(room)]);
                continue;
            }
            self.decoder.push(&buf[..n]);
            loop {
                match self.decoder.next_frame() {
                    Ok(Some(frame)) if frame.compressed => {
                        let encoding =
                            find(&self.response_headers, "grpc-encoding").unwrap_or("none");
                        let msg = format!(
                            "compressed response message (grpc-encoding {encoding}) not supported"
                        );
                        return self.fail(quic, 13, msg);
                    }
                    Ok(Some(frame)) => self.print(&frame.message)?,
                    Ok(None) => break,
                    Err(e) => return self.fail(quic, 8, format!("{e} (client-side)")),
                }
            }
        }
    }

    fn print(&self, message: &[u8]) -> Result<()> {
        let mut out = std::io::stdout().lock();
        match self.output {
            Output::Hex => writeln!(out, "{}", hex::encode(message)),
            Output::Raw => out.write_all(message),
            Output::Text => match grpc_frame::field1_text(message) {
                Some(text) => writeln!(out, "{text}"),
                None => writeln!(out, "{}", hex::encode(message)),
            },
        }
        .and_then(|()| out.flush())
        .context("write to stdout")
    }

    /// Ends the call on our side: cancels the stream (STOP_SENDING and
    /// RESET_STREAM, H3_REQUEST_CANCELLED) and records a client-side status.
    fn fail(&mut self, quic: &mut Quic, code: u32, message: String) -> Result<()> {
        if let Some(s) = self.stream {
            let cancelled = WireErrorCode::RequestCancelled as u64;
            let _ = quic
                .conn
                .stream_shutdown(s, quiche::Shutdown::Read, cancelled);
            let _ = quic
                .conn
                .stream_shutdown(s, quiche::Shutdown::Write, cancelled);
            quic.flush()?;
        }
        self.end = Some(End::Local { code, message });
        Ok(())
    }

    fn outcome(&self) -> Outcome {
        let grpc = |code: u32, message: String| Outcome::Grpc { code, message };
        match &self.end {
            Some(End::Local { code, message }) => return grpc(*code, message.clone()),
            Some(End::Reset(c)) => {
                return grpc(
                    reset_status(*c),
                    format!("stream reset by the server (HTTP/3 error 0x{c:x})"),
                );
            }
            _ => {}
        }
        let Some(status) = self.status else {
            return grpc(
                13,
                "server ended the stream without response headers".into(),
            );
        };
        if !self.grpc {
            let content_type = find(&self.response_headers, "content-type")
                .unwrap_or("")
                .to_owned();
            return Outcome::Http {
                status,
                content_type,
                body: self.other_body.clone(),
            };
        }
        // Trailers, or the headers of a trailers-only response.
        let fields = if self.trailers.is_empty() {
            &self.response_headers
        } else {
            &self.trailers
        };
        let Some(code) = find(fields, "grpc-status") else {
            return grpc(13, "server ended the stream without grpc-status".into());
        };
        let Ok(code) = code.parse() else {
            return grpc(13, format!("invalid grpc-status {code:?}"));
        };
        if let Err(e) = self.decoder.finish() {
            return grpc(13, e.to_string());
        }
        grpc(
            code,
            percent_decode(find(fields, "grpc-message").unwrap_or("")),
        )
    }
}

fn find<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_from_url() {
        let t = Target::parse("https://example.com/vimana.example.v1.Echo/Unary").unwrap();
        assert_eq!(
            t,
            Target {
                authority: "example.com".into(),
                host: "example.com".into(),
                port: 443,
                path: "/vimana.example.v1.Echo/Unary".into(),
            }
        );
        let t = Target::parse("https://[::1]:4433/a.B/C").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.host.as_str(), t.port),
            ("[::1]:4433", "::1", 4433)
        );
        assert!(Target::parse("http://example.com/a.B/C").is_err());
        assert!(Target::parse("https://example.com").is_err());
        assert!(Target::parse("https://u@example.com/a.B/C").is_err());
    }

    #[test]
    fn resolve_forms() {
        assert_eq!(
            resolve("127.0.0.1:4433").unwrap(),
            "127.0.0.1:4433".parse().unwrap()
        );
        assert_eq!(resolve("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        assert_eq!(resolve("::1").unwrap(), "[::1]:443".parse().unwrap());
        assert_eq!(
            resolve("127.0.0.1").unwrap(),
            "127.0.0.1:443".parse().unwrap()
        );
        assert_eq!(resolve("localhost:9").unwrap().port(), 9);
        assert!(resolve("localhost:http3").is_err());
    }

    #[test]
    fn header_parsing() {
        assert_eq!(
            parse_header("vimana-version: 1.0.0").unwrap(),
            ("vimana-version".into(), "1.0.0".into())
        );
        assert_eq!(
            parse_header("X-Trace:abc ").unwrap(),
            ("x-trace".into(), "abc".into())
        );
        assert_eq!(parse_header("empty:").unwrap(), ("empty".into(), "".into()));
        assert!(parse_header("no-colon").is_err());
        assert!(parse_header(":path: /x").is_err());
        assert!(parse_header("bad name: x").is_err());
        assert!(parse_header("x: a\nb").is_err());
        assert!(parse_header("connection: close").is_err());
    }

    #[test]
    fn request_header_list() {
        let t = Target::parse("https://example.com:8443/a.B/C").unwrap();
        let raw = vec![
            "user-agent: mine".to_owned(),
            "vimana-version: 2.0.0".to_owned(),
        ];
        let h = request_headers(&t, &raw, Some(Duration::from_millis(1500))).unwrap();
        let get = |n: &str| find(&h, n).map(str::to_owned);
        assert_eq!(&h[0], &(":method".to_owned(), "POST".to_owned()));
        assert_eq!(get(":authority").as_deref(), Some("example.com:8443"));
        assert_eq!(get(":path").as_deref(), Some("/a.B/C"));
        assert_eq!(get("te").as_deref(), Some("trailers"));
        assert_eq!(get("content-type").as_deref(), Some("application/grpc"));
        assert_eq!(get("user-agent").as_deref(), Some("mine"));
        assert_eq!(h.iter().filter(|(n, _)| n == "user-agent").count(), 1);
        assert_eq!(get("vimana-version").as_deref(), Some("2.0.0"));
        assert_eq!(get("grpc-timeout").as_deref(), Some("1500m"));
        // An explicit grpc-timeout wins over --timeout.
        let h = request_headers(
            &t,
            &["grpc-timeout: 1S".into()],
            Some(Duration::from_secs(9)),
        )
        .unwrap();
        assert_eq!(find(&h, "grpc-timeout"), Some("1S"));
        assert_eq!(h.iter().filter(|(n, _)| n == "grpc-timeout").count(), 1);
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(grpc_timeout(Duration::from_millis(500)), "500m");
        assert_eq!(grpc_timeout(Duration::from_micros(1)), "1m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }

    #[test]
    fn statuses_and_messages() {
        assert_eq!(status_name(0), "OK");
        assert_eq!(status_name(16), "UNAUTHENTICATED");
        assert_eq!(status_name(99), "?");
        assert_eq!(
            percent_decode("no%20component%3A x%zz%4"),
            "no component: x%zz%4"
        );
        assert_eq!(reset_status(0x10c), 1);
        assert_eq!(reset_status(0x10b), 14);
        assert_eq!(reset_status(0x102), 13);
    }
}
