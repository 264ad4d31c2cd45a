//! The load generator's engine: quiche as a client on one non-blocking UDP
//! socket per thread, many QUIC connections on it told apart by connection
//! ID, each call's response checked. What a thread does with its
//! connections (handshakes, kept load, idle, probes) is the sections'.

use crate::quic::poll;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiche::h3::{self, NameValue};

use crate::request::Request;

const CID_LEN: usize = quiche::MAX_CONN_ID_LEN;
const MAX_DATAGRAM: usize = 1350;

/// One call in flight.
pub struct Call {
    request: Arc<Request>,
    /// The caller's label for the call, handed back when it ends.
    tag: usize,
    started: Instant,
    sent: usize,
    pub status: Option<u16>,
    pub grpc: Option<(String, String)>,
    pub body: Vec<u8>,
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

/// What [`Worker::step`] reports.
pub enum Event {
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
pub struct Worker {
    socket: UdpSocket,
    pub local: SocketAddr,
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
    /// Connections open (set up or not).
    pub open: usize,
}

impl Worker {
    pub fn new(peer: SocketAddr, idle_timeout: Duration) -> Worker {
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
    pub fn connect(&mut self) -> usize {
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

    pub fn in_flight(&self, slot: usize) -> usize {
        self.slots[slot].as_ref().map_or(0, |s| s.calls.len())
    }

    /// Opens a stream with `request` on the slot's connection.
    pub fn call(&mut self, slot: usize, request: &Arc<Request>) -> Result<(), String> {
        self.call_tagged(slot, request, 0)
    }

    pub fn call_tagged(
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
    pub fn close(&mut self, slot: usize) {
        if let Some(mut s) = self.slots[slot].take() {
            let _ = s.conn.close(true, 0x100, b"");
            send_all(&self.socket, &mut s.conn);
            self.by_cid.remove(&s.scid);
            self.free.push(slot);
            self.open -= 1;
        }
    }

    pub fn close_all(&mut self) {
        for slot in 0..self.slots.len() {
            self.close(slot);
        }
    }

    /// Sends what the caller queued, waits (up to `until`) for datagrams or
    /// a timer, handles them, and appends what happened to `events`.
    pub fn step(&mut self, until: Instant, events: &mut Vec<Event>) {
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
    let why = crate::quic::close_reason(conn);
    match conn.is_established() {
        true => format!("connection {why}"),
        false => format!("handshake failed: {why}"),
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
