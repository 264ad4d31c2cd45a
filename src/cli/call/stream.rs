//! The one request stream of a call over HTTP/3: sends the headers and the
//! body as flow control allows, reads the response headers, messages and
//! trailers, ends the call from this side (deadline, bad response, GOAWAY)
//! with a client-side status, and says how it ended ([`Outcome`]).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use quiche::h3::{self, NameValue, WireErrorCode};

use super::output::{self, print_fields, Outcome, Output};
use super::quic::Quic;
use super::{find, Fields};
use crate::cli::grpc_frame::{self as grpc, Decoder};

/// Body bytes of a non-gRPC answer kept to show the user.
const MAX_ERROR_BODY: usize = 4096;

enum End {
    Finished,
    Reset(u64),
    /// Ended by this client, with a client-side gRPC status.
    Local(u32, String),
}

/// One request stream and what came back on it.
#[derive(Default)]
pub(super) struct Call {
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
    pub(super) trailers: Fields,
    decoder: Decoder,
    other_body: Vec<u8>,
    end: Option<End>,
}

impl Call {
    /// A call that will send `headers`, then `body` (framed messages).
    pub(super) fn new(
        headers: Vec<h3::Header>,
        body: Vec<u8>,
        output: Output,
        verbose: bool,
    ) -> Call {
        Call {
            headers,
            body,
            output,
            verbose,
            ..Default::default()
        }
    }

    pub(super) fn run(
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
                    Ok(Some(frame)) if !frame.compressed => {
                        output::print_message(self.output, &frame.message)?
                    }
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
        output::grpc_end(&self.response_headers, &self.trailers, &self.decoder)
    }
}
