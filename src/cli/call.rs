//! `vimanad call`: one gRPC call over HTTP/3, a tiny grpcurl for the data
//! plane. A quiche client on a blocking, connected `UdpSocket` whose read
//! timeout follows `conn.timeout()`; no async runtime.
//!
//! Exit code: the call's grpc-status (0 = OK); 2 when the answer is not gRPC
//! (HTTP status other than 200, or not `application/grpc`); 1 on a transport
//! or handshake failure. Failures seen by the client are gRPC statuses too:
//! DEADLINE_EXCEEDED when `--timeout` passes, RESOURCE_EXHAUSTED for a
//! response message over 64 MiB, INTERNAL for a malformed response body or a
//! missing grpc-status, CANCELLED/UNAVAILABLE/INTERNAL when the server resets
//! the stream.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use quiche::h3::{self, NameValue, WireErrorCode};

use super::grpc_frame::{self as grpc, Decoder};

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
    #[arg(long, value_parser = super::parse_duration)]
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum Output {
    /// One line of hex per message.
    #[default]
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

type Fields = Vec<(String, String)>;

pub fn run(args: CallArgs) -> Result<ExitCode> {
    let target = Target::parse(&args.url)?;
    let headers = request_headers(&target, &args.headers, args.timeout)?;
    let mut body = Vec::new();
    for message in request_messages(&args)? {
        grpc::encode(&message, &mut body);
    }
    let peer = match &args.connect {
        Some(addr) => resolve(addr)?,
        None => first_addr((target.host.as_str(), target.port), &target.authority)?,
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
        print_fields(">", &headers);
    }
    let headers = headers
        .iter()
        .map(|(n, v)| h3::Header::new(n.as_bytes(), v.as_bytes()));
    let (output, verbose) = (args.output, args.verbose);
    let mut call = Call {
        headers: headers.collect(),
        body,
        output,
        verbose,
        ..Default::default()
    };
    let outcome = call.run(&mut quic, deadline, args.timeout);
    quic.close();
    if verbose {
        print_fields("<", &call.trailers);
    }
    match outcome? {
        Outcome::Http(status, content_type, body) => {
            eprintln!("HTTP status {status}, content-type {content_type:?}: not a gRPC response");
            let text = String::from_utf8_lossy(&body);
            if !text.trim().is_empty() {
                eprintln!("{}", text.trim_end());
            }
            Ok(ExitCode::from(2))
        }
        Outcome::Grpc(code, message) => {
            let line = format!(
                "grpc-status: {code} ({}) grpc-message: {message}",
                grpc::status_name(code)
            );
            eprintln!("{}", line.trim_end());
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(2)))
        }
    }
}

fn print_fields(prefix: &str, fields: &Fields) {
    for (name, value) in fields {
        eprintln!("{prefix} {name}: {value}");
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
        let authority = uri
            .authority()
            .filter(|_| uri.scheme_str() == Some("https"));
        let authority = authority.ok_or_else(|| anyhow!("URL {url:?} is not https://HOST/..."))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        if authority.as_str().contains('@') || path == "/" {
            bail!("URL {url:?} must be https://HOST[:PORT]/SERVICE/METHOD");
        }
        Ok(Target {
            authority: authority.as_str().to_owned(),
            host: unbracket(authority.host()).to_owned(),
            port: authority.port_u16().unwrap_or(DEFAULT_PORT),
            path: path.to_owned(),
        })
    }
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// `--connect`: `host:port`, `[v6]:port`, or a bare host or IP (port 443).
fn resolve(addr: &str) -> Result<SocketAddr> {
    if let Ok(ip) = unbracket(addr).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    match addr.contains(':') {
        true => first_addr(addr, addr),
        false => first_addr((addr, DEFAULT_PORT), addr),
    }
}

fn first_addr(addr: impl ToSocketAddrs, what: &str) -> Result<SocketAddr> {
    let mut addrs = addr
        .to_socket_addrs()
        .with_context(|| format!("resolve {what:?}"))?;
    addrs
        .next()
        .ok_or_else(|| anyhow!("{what:?} resolves to no address"))
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
    messages.extend(args.text.iter().map(|t| grpc::text_message(t)));
    if args.data_stdin {
        let mut message = Vec::new();
        std::io::stdin()
            .read_to_end(&mut message)
            .context("read stdin")?;
        messages.push(message);
    }
    Ok(messages)
}

/// Pseudo-headers, gRPC defaults (which `-H` may replace), the user's
/// metadata, and grpc-timeout from `--timeout` unless `-H` gave one.
fn request_headers(target: &Target, raw: &[String], timeout: Option<Duration>) -> Result<Fields> {
    let ua = concat!("vimanad-call/", env!("CARGO_PKG_VERSION"));
    let mut headers: Fields = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", &target.authority),
        (":path", &target.path),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", ua),
    ]
    .map(|(n, v)| (n.to_owned(), v.to_owned()))
    .into();
    for h in raw {
        let (name, value) = grpc::parse_header(h).map_err(|e| anyhow!(e))?;
        if ["content-type", "te", "user-agent"].contains(&name.as_str()) {
            headers.retain(|(n, _)| *n != name);
        }
        headers.push((name, value));
    }
    if let Some(t) = timeout.filter(|_| find(&headers, "grpc-timeout").is_none()) {
        headers.push(("grpc-timeout".into(), grpc::grpc_timeout(t)));
    }
    Ok(headers)
}

fn find<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn describe_close(e: &quiche::ConnectionError) -> String {
    let what = match (e.is_app, e.error_code) {
        (true, code) => format!("HTTP/3 error 0x{code:x}"),
        (false, code @ 0x100..=0x1ff) => format!(
            "TLS alert {}{}",
            code - 0x100,
            match code - 0x100 {
                42 | 46 | 48 => " (certificate not accepted: check --ca and --server-name)",
                120 => " (no_application_protocol: the server does not speak h3)",
                _ => "",
            }
        ),
        (false, code) => format!("QUIC transport error 0x{code:x}"),
    };
    match String::from_utf8_lossy(&e.reason) {
        reason if reason.is_empty() => what,
        reason => format!("{what}: {reason}"),
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
    fn connect(peer: SocketAddr, sni: Option<&str>, ca: Option<&Path>) -> Result<Quic> {
        let bind = if peer.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(bind).context("bind a UDP socket")?;
        // Connected, so an ICMP port-unreachable surfaces as ECONNREFUSED.
        socket
            .connect(peer)
            .with_context(|| format!("connect a UDP socket to {peer}"))?;
        let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION)?;
        config.set_application_protos(h3::APPLICATION_PROTOCOL)?;
        config.verify_peer(ca.is_some());
        if let Some(ca) = ca {
            let path = ca
                .to_str()
                .ok_or_else(|| anyhow!("--ca path is not UTF-8"))?;
            config
                .load_verify_locations_from_file(path)
                .with_context(|| format!("load {path}"))?;
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
            .map_err(|_| anyhow!("no randomness for a connection ID"))?;
        let local = socket.local_addr()?;
        let conn = quiche::connect(
            sni,
            &quiche::ConnectionId::from_ref(&scid),
            local,
            peer,
            &mut config,
        )?;
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
        let started = Instant::now();
        while !self.conn.is_established() {
            if Instant::now() >= until {
                let waited = until.saturating_duration_since(started);
                bail!(
                    "no QUIC handshake with {} within {waited:?} (no HTTP/3 server there?)",
                    self.peer
                );
            }
            self.wait(until)?;
            self.flush()?;
        }
        Ok(())
    }

    /// Sends every packet quiche has ready.
    fn flush(&mut self) -> Result<()> {
        let mut out = [0u8; MAX_DATAGRAM];
        loop {
            let n = match self.conn.send(&mut out) {
                Ok((n, _)) => n,
                Err(quiche::Error::Done) => return Ok(()),
                Err(e) => bail!("QUIC send to {}: {e}", self.peer),
            };
            match self.socket.send(&out[..n]) {
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                    return Err(self.io_error(e))
                }
                _ => {} // sent, or dropped like a lost packet: QUIC recovers
            }
        }
    }

    fn io_error(&self, e: std::io::Error) -> anyhow::Error {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                anyhow!(
                    "nothing listening on UDP {} (connection refused)",
                    self.peer
                )
            }
            _ => anyhow!("UDP {}: {e}", self.peer),
        }
    }

    /// Blocks until a packet arrives (and feeds it to quiche) or quiche's
    /// timer or `until` fires; fails if the connection is then closed.
    fn wait(&mut self, until: Instant) -> Result<()> {
        let limit = until.saturating_duration_since(Instant::now());
        let wait = self.conn.timeout().map_or(limit, |t| t.min(limit));
        self.socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match self.socket.recv(&mut self.buf) {
            Ok(n) => {
                let info = quiche::RecvInfo {
                    from: self.peer,
                    to: self.local,
                };
                // A bad packet is quiche's to drop, or to close the connection over.
                let _ = self.conn.recv(&mut self.buf[..n], info);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                self.conn.on_timeout()
            }
            Err(e) => return Err(self.io_error(e)),
        }
        if !self.conn.is_closed() {
            return Ok(());
        }
        let stage = if self.conn.is_established() {
            "connection to"
        } else {
            "QUIC handshake with"
        };
        Err(match (self.conn.peer_error(), self.conn.local_error()) {
            _ if self.conn.is_timed_out() => anyhow!("{stage} {} timed out", self.peer),
            (Some(e), _) => anyhow!(
                "{stage} {} closed by the server: {}",
                self.peer,
                describe_close(e)
            ),
            (None, Some(e)) => anyhow!("{stage} {} failed: {}", self.peer, describe_close(e)),
            (None, None) => anyhow!("{stage} {} closed", self.peer),
        })
    }

    /// Best effort: tell the server we are done (CONNECTION_CLOSE H3_NO_ERROR).
    fn close(&mut self) {
        let _ = self.conn.close(true, WireErrorCode::NoError as u64, b"");
        let _ = self.flush();
    }
}

enum Outcome {
    Grpc(u32, String),
    /// HTTP status, content-type, the start of the body.
    Http(u16, String, Vec<u8>),
}

enum End {
    Finished,
    Reset(u64),
    /// Ended by this client, with a client-side gRPC status.
    Local(u32, String),
}

/// One request stream and what came back on it.
#[derive(Default)]
struct Call {
    headers: Vec<h3::Header>,
    body: Vec<u8>,
    sent: usize,
    stream: Option<u64>,
    output: Output,
    verbose: bool,
    /// Set by the final (non-1xx) response headers.
    status: Option<u16>,
    grpc: bool,
    response_headers: Fields,
    trailers: Fields,
    decoder: Decoder,
    other_body: Vec<u8>,
    end: Option<End>,
}

impl Call {
    fn run(
        &mut self,
        quic: &mut Quic,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<Outcome> {
        let mut h3 = h3::Connection::with_transport(&mut quic.conn, &h3::Config::new()?)?;
        loop {
            self.send(quic, &mut h3)?;
            if let Err(e) = self.poll(quic, &mut h3) {
                let _ = quic
                    .conn
                    .close(true, WireErrorCode::GeneralProtocolError as u64, b"");
                return Err(e);
            }
            if self.end.is_none() && deadline.is_some_and(|d| Instant::now() >= d) {
                let message = format!(
                    "deadline of {:?} exceeded (client-side)",
                    timeout.unwrap_or_default()
                );
                self.cancel(quic, 4, message);
            }
            quic.flush()?;
            if self.end.is_some() {
                return Ok(self.outcome());
            }
            quic.wait(deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)))?;
        }
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
                        eprintln!("* the server stopped reading the request (0x{code:x})");
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
            let ours = Some(id) == self.stream;
            match event {
                h3::Event::Headers { list, .. } if ours => self.on_headers(&list)?,
                h3::Event::Data if ours => self.on_data(quic, h3, id)?,
                h3::Event::Finished if ours => self.end = Some(End::Finished),
                h3::Event::Reset(code) if ours => self.end = Some(End::Reset(code)),
                // GOAWAY(id): requests on streams >= id were not processed.
                h3::Event::GoAway if self.stream.is_none_or(|s| s >= id) => self.cancel(
                    quic,
                    14,
                    "the server is going away (GOAWAY) without our request".into(),
                ),
                _ => {}
            }
        }
        Ok(())
    }

    fn on_headers(&mut self, list: &[h3::Header]) -> Result<()> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let fields: Fields = list
            .iter()
            .map(|h| (text(h.name()), text(h.value())))
            .collect();
        if self.status.is_some() {
            self.trailers = fields;
            return Ok(());
        }
        let status = find(&fields, ":status").and_then(|s| s.parse::<u16>().ok());
        let status = status.ok_or_else(|| anyhow!("response without a valid :status"))?;
        if self.verbose {
            print_fields("<", &fields);
        }
        if status >= 200 {
            // (1xx headers are informational: the final ones follow.)
            let content_type = find(&fields, "content-type").unwrap_or_default();
            self.grpc = status == 200 && content_type.starts_with("application/grpc");
            self.status = Some(status);
            self.response_headers = fields;
        }
        Ok(())
    }

    fn on_data(&mut self, quic: &mut Quic, h3: &mut h3::Connection, id: u64) -> Result<()> {
        let mut buf = [0u8; 65536];
        while self.end.is_none() {
            let n = match h3.recv_body(&mut quic.conn, id, &mut buf) {
                Ok(n) => n,
                Err(h3::Error::Done) => break,
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
                    Ok(None) => break,
                    Ok(Some(frame)) if !frame.compressed => self.print(&frame.message)?,
                    Ok(Some(_)) => {
                        let encoding =
                            find(&self.response_headers, "grpc-encoding").unwrap_or("none");
                        let message =
                            format!("compressed response (grpc-encoding {encoding}) not supported");
                        self.cancel(quic, 13, message);
                        break;
                    }
                    Err(e) => {
                        self.cancel(quic, 8, format!("{e} (client-side)"));
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn print(&self, message: &[u8]) -> Result<()> {
        let mut out = std::io::stdout().lock();
        match (self.output, grpc::field1_text(message)) {
            (Output::Raw, _) => out.write_all(message),
            (Output::Text, Some(text)) => writeln!(out, "{text}"),
            (Output::Hex | Output::Text, _) => writeln!(out, "{}", hex::encode(message)),
        }
        .and_then(|()| out.flush())
        .context("write to stdout")
    }

    /// Ends the call from this side with a client-side status: STOP_SENDING
    /// and RESET_STREAM (H3_REQUEST_CANCELLED) go out with the next flush.
    fn cancel(&mut self, quic: &mut Quic, code: u32, message: String) {
        if let Some(s) = self.stream {
            let cancelled = WireErrorCode::RequestCancelled as u64;
            let _ = quic
                .conn
                .stream_shutdown(s, quiche::Shutdown::Read, cancelled);
            let _ = quic
                .conn
                .stream_shutdown(s, quiche::Shutdown::Write, cancelled);
        }
        self.end = Some(End::Local(code, message));
    }

    fn outcome(&self) -> Outcome {
        let (status, end) = match (self.status, &self.end) {
            (_, Some(End::Local(code, message))) => return Outcome::Grpc(*code, message.clone()),
            (_, Some(End::Reset(c))) => {
                let message = format!("stream reset by the server (HTTP/3 error 0x{c:x})");
                return Outcome::Grpc(grpc::reset_status(*c), message);
            }
            (None, _) => return Outcome::Grpc(13, "stream ended without response headers".into()),
            (Some(status), end) => (status, end),
        };
        debug_assert!(matches!(end, Some(End::Finished)));
        if !self.grpc {
            let content_type = find(&self.response_headers, "content-type").unwrap_or_default();
            return Outcome::Http(status, content_type.to_owned(), self.other_body.clone());
        }
        // Trailers, or the headers of a trailers-only response.
        let fields = if self.trailers.is_empty() {
            &self.response_headers
        } else {
            &self.trailers
        };
        let code = match find(fields, "grpc-status").map(str::parse) {
            None => return Outcome::Grpc(13, "stream ended without grpc-status".into()),
            Some(Err(_)) => return Outcome::Grpc(13, "invalid grpc-status".into()),
            Some(Ok(code)) => code,
        };
        match self.decoder.finish() {
            Err(e) => Outcome::Grpc(13, e.to_string()),
            Ok(()) => Outcome::Grpc(
                code,
                grpc::percent_decode(find(fields, "grpc-message").unwrap_or("")),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_from_url() {
        let t = Target::parse("https://example.com/vimana.example.v1.Echo/Unary").unwrap();
        let want = (
            "example.com",
            "example.com",
            443,
            "/vimana.example.v1.Echo/Unary",
        );
        assert_eq!(
            (
                t.authority.as_str(),
                t.host.as_str(),
                t.port,
                t.path.as_str()
            ),
            want
        );
        let t = Target::parse("https://[::1]:4433/a.B/C").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.host.as_str(), t.port),
            ("[::1]:4433", "::1", 4433)
        );
        for bad in [
            "http://example.com/a.B/C",
            "https://example.com",
            "https://u@h/a.B/C",
            "/a.B/C",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolve_forms() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(resolve("127.0.0.1:4433").unwrap(), addr("127.0.0.1:4433"));
        assert_eq!(resolve("[::1]:80").unwrap(), addr("[::1]:80"));
        assert_eq!(resolve("::1").unwrap(), addr("[::1]:443"));
        assert_eq!(resolve("[::1]").unwrap(), addr("[::1]:443"));
        assert_eq!(resolve("127.0.0.1").unwrap(), addr("127.0.0.1:443"));
        assert_eq!(resolve("localhost:9").unwrap().port(), 9);
        assert!(resolve("localhost:h3").is_err());
    }

    #[test]
    fn request_header_list() {
        let t = Target::parse("https://example.com:8443/a.B/C").unwrap();
        let raw = [
            "user-agent: mine".to_owned(),
            "Vimana-Version: 2.0.0".to_owned(),
        ];
        let h = request_headers(&t, &raw, Some(Duration::from_millis(1500))).unwrap();
        assert_eq!(h[0], (":method".to_owned(), "POST".to_owned()));
        let want = [
            (":authority", "example.com:8443"),
            (":path", "/a.B/C"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("user-agent", "mine"),
            ("vimana-version", "2.0.0"),
            ("grpc-timeout", "1500m"),
        ];
        for (name, value) in want {
            assert_eq!(find(&h, name), Some(value));
            assert_eq!(h.iter().filter(|(n, _)| n == name).count(), 1);
        }
        // An explicit grpc-timeout wins over --timeout.
        let h = request_headers(
            &t,
            &["grpc-timeout: 1S".into()],
            Some(Duration::from_secs(9)),
        )
        .unwrap();
        assert_eq!(
            h.iter()
                .filter(|(n, _)| n == "grpc-timeout")
                .collect::<Vec<_>>()
                .len(),
            1
        );
        assert_eq!(find(&h, "grpc-timeout"), Some("1S"));
        assert!(request_headers(&t, &[":path: /x".into()], None).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            super::super::parse_duration("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            super::super::parse_duration("5s"),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(
            super::super::parse_duration("2"),
            Ok(Duration::from_secs(2))
        );
        assert_eq!(
            super::super::parse_duration("1.5m"),
            Ok(Duration::from_secs(90))
        );
        for bad in ["5h", "s", "", "-1s"] {
            assert!(super::super::parse_duration(bad).is_err(), "{bad}");
        }
    }
}
