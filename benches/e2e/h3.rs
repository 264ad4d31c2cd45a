//! The HTTP/3 load generator: quiche as a client on non-blocking UDP
//! sockets, one thread per QUIC connection, each keeping its share of the
//! streams in flight. It drives vimanad and Caddy alike.

use crate::quic::poll;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use quiche::h3::{self, NameValue};

use crate::measure::{sample_window, Load, Sample, Schedule, Tally, Watched, DRAIN, SLOW};
use crate::request::{Request, AUTHORITY};

const MAX_DATAGRAM: usize = 1350;

/// One stream in flight.
pub(crate) struct InFlight {
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
    fn new() -> InFlight {
        InFlight {
            started: Instant::now(),
            sent: 0,
            fin_sent: false,
            status: None,
            grpc: None,
            body: Vec::with_capacity(128),
        }
    }

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

    /// Whether a finished call succeeded: HTTP 200, grpc-status 0 and the
    /// replies we expect; their number.
    fn verdict(&self, request: &Request) -> Result<u64, String> {
        match (self.status, &self.grpc) {
            (Some(200), Some((code, _))) if code == "0" => request.check_body(&self.body),
            (Some(200), Some((code, message))) => Err(format!("grpc-status {code}: {message}")),
            (Some(200), None) => Err("no grpc-status".into()),
            (status, _) => Err(format!("HTTP status {status:?}")),
        }
    }
}

/// A quiche client connection on its own connected, non-blocking UDP socket.
pub struct H3Client {
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
    pub fn connect(peer: SocketAddr) -> Result<H3Client, String> {
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        socket.connect(peer).map_err(|e| format!("connect: {e}"))?;
        socket.set_nonblocking(true).unwrap();
        let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
        config
            .set_application_protos(h3::APPLICATION_PROTOCOL)
            .unwrap();
        config.verify_peer(false); // vimanad's and Caddy's self-signed certificates
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
    pub(crate) fn flush(&mut self) -> Result<(), String> {
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
    pub(crate) fn wait(&mut self, until: Instant) -> Result<(), String> {
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
        let why = crate::quic::close_reason(&self.conn);
        Err(format!("QUIC connection {why}"))
    }

    /// Keeps `streams` calls in flight until the window ends, then lets them
    /// finish (for up to [`DRAIN`]).
    pub fn run(
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
        self.close();
    }

    pub fn close(&mut self) {
        let _ = self.conn.close(true, 0x100, b"");
        let _ = self.flush();
    }

    /// Opens streams up to `streams` while the window lasts, and hands
    /// quiche any request body not yet sent.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn issue(
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
                // Out of stream credit (or room): when the server grants more.
                Err(h3::Error::StreamBlocked)
                | Err(h3::Error::TransportError(quiche::Error::StreamLimit)) => break,
                Err(e) => {
                    tally.error(format!("send_request: {e}"));
                    return Err(format!("cannot open a stream: {e}"));
                }
            };
            calls.insert(id, InFlight::new());
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
    pub(crate) fn events(
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
                    match call.verdict(request) {
                        Ok(messages) => tally.done(call.started, now, messages, schedule),
                        Err(e) => {
                            tally.note_latency(now - call.started);
                            tally.error(e);
                        }
                    }
                }
                h3::Event::Reset(code) => {
                    if let Some(call) = calls.remove(&id) {
                        tally.note_latency(now - call.started);
                        tally.error(format!(
                            "stream reset by the server (HTTP/3 error 0x{code:x})"
                        ));
                    }
                }
                h3::Event::GoAway => tally.error("GOAWAY from the server".into()),
                _ => {}
            }
        }
    }
}

/// `streams` spread over `connections`, as evenly as they go.
pub fn shares(streams: usize, connections: usize) -> Vec<usize> {
    let connections = connections.clamp(1, streams);
    (0..connections)
        .map(|i| streams / connections + usize::from(i < streams % connections))
        .collect()
}

/// One call on a fresh connection, checked as under load (HTTP 200, the
/// replies, grpc-status 0 in the trailers): whether `peer` serves at all.
pub fn probe(peer: SocketAddr, request: &Request) -> Result<(), String> {
    let mut client = H3Client::connect(peer)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    // A window that covers the probe, so that the call is tallied.
    let schedule = Schedule {
        start: Instant::now(),
        end: deadline,
    };
    let (mut calls, mut tally) = (HashMap::new(), Tally::default());
    client.issue(1, false, request, &schedule, &mut calls, &mut tally)?;
    while tally.ok + tally.error_count() == 0 {
        client.issue(0, false, request, &schedule, &mut calls, &mut tally)?;
        client.flush()?;
        if Instant::now() >= deadline {
            return Err(format!("no answer from {peer} within 30 s"));
        }
        client.wait(deadline)?;
        client.events(request, &schedule, &mut calls, &mut tally)?;
    }
    client.close();
    match tally.errors.into_keys().next() {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// One HTTP/3 window against `peer`: a thread per connection; the calling
/// thread watches the processes.
pub fn window(peer: SocketAddr, load: &Load, request: &Arc<Request>, watched: Watched) -> Sample {
    let shares = shares(load.streams, load.connections);
    let fin_apart = load.fin_apart;
    let schedule = Arc::new(OnceLock::<Schedule>::new());
    let barrier = Arc::new(Barrier::new(shares.len() + 1));
    let workers: Vec<_> = shares
        .iter()
        .map(|&share| {
            let (request, schedule, barrier) = (request.clone(), schedule.clone(), barrier.clone());
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
    let planned = Schedule::after_warmup(load.warmup, load.duration);
    let _ = schedule.set(planned);
    barrier.wait();
    let cost = sample_window(&planned, watched);
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.join().expect("an HTTP/3 worker panicked"));
    }
    Sample::of(tally, load.duration, cost)
}
