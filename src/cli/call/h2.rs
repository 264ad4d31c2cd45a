//! The call over HTTP/2 + TLS (`--transport h2`): one h2 client connection
//! on [`tls::connect`]'s stream, on a current-thread tokio runtime; one
//! request stream whose body goes out as h2's flow control grants, while the
//! response headers, messages and trailers are read (capacity released as
//! they are printed). Ends the call from this side (deadline, bad response)
//! with the same client-side statuses as the HTTP/3 path, and says how it
//! ended ([`Outcome`]).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use h2::client::SendRequest;
use h2::SendStream;
use http::HeaderMap;

use super::output::{self, print_fields, Outcome, Output};
use super::{find, tls, Fields};
use crate::cli::grpc_frame::{self as grpc, Decoder};

/// Body bytes of a non-gRPC answer kept to show the user.
const MAX_ERROR_BODY: usize = 4096;
/// How long the connection may take to say goodbye after the call.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Receive windows, as the HTTP/3 path's QUIC flow control.
const WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// What the call needs besides the request: where, how to verify, how long.
pub(super) struct Plan<'a> {
    pub(super) peer: SocketAddr,
    pub(super) sni: Option<&'a str>,
    pub(super) ca: Option<&'a Path>,
    pub(super) handshake_until: Instant,
    pub(super) deadline: Option<Instant>,
    pub(super) timeout: Option<Duration>,
    pub(super) output: Output,
    pub(super) verbose: bool,
}

/// Runs the call on a runtime of its own; the trailers (for `-v`) and how it ended.
pub(super) fn run(plan: &Plan, headers: &Fields, body: Vec<u8>) -> Result<(Fields, Outcome)> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a tokio runtime")?
        .block_on(call(plan, headers, body))
}

async fn call(plan: &Plan<'_>, headers: &Fields, body: Vec<u8>) -> Result<(Fields, Outcome)> {
    let started = Instant::now();
    let until = tokio::time::Instant::from_std(plan.handshake_until);
    let handshake = async {
        let tls = tls::connect(plan.peer, plan.sni, plan.ca).await?;
        h2::client::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(tls)
            .await
            .map_err(|e| anyhow!("HTTP/2 handshake with {}: {e}", plan.peer))
    };
    let (sender, connection) = match tokio::time::timeout_at(until, handshake).await {
        Ok(r) => r?,
        Err(_) => bail!(
            "no TLS/HTTP/2 handshake with {} within {:?} (no HTTP/2 server there?)",
            plan.peer,
            plan.handshake_until.saturating_duration_since(started)
        ),
    };
    // The connection is driven beside the call; it ends when every handle is dropped.
    let driver = tokio::spawn(connection);
    if plan.verbose {
        eprintln!("* connected to {} (HTTP/2 over TLS)", plan.peer);
        print_fields(">", headers);
    }
    let mut answer = Answer::new(plan.output, plan.verbose);
    let exchange = answer.exchange(sender, headers, body);
    let outcome = match plan.deadline {
        None => exchange.await,
        Some(d) => match tokio::time::timeout_at(d.into(), exchange).await {
            Ok(r) => r,
            // Dropping the exchange resets the stream (RST_STREAM CANCEL).
            Err(_) => Ok(Outcome::Grpc(
                4,
                format!(
                    "deadline of {:?} exceeded (client-side)",
                    plan.timeout.unwrap_or_default()
                ),
            )),
        },
    };
    // Best effort: let the RST_STREAM and GOAWAY go out.
    let _ = tokio::time::timeout(CLOSE_WAIT, driver).await;
    Ok((std::mem::take(&mut answer.trailers), outcome?))
}

/// What came back on the one request stream.
struct Answer {
    output: Output,
    verbose: bool,
    response_headers: Fields,
    trailers: Fields,
    decoder: Decoder,
    other_body: Vec<u8>,
}

impl Answer {
    fn new(output: Output, verbose: bool) -> Answer {
        Answer {
            output,
            verbose,
            response_headers: Fields::new(),
            trailers: Fields::new(),
            decoder: Decoder::default(),
            other_body: Vec::new(),
        }
    }

    /// Sends the request and reads the answer; the upload runs beside the
    /// download and is dropped when the answer is complete.
    async fn exchange(
        &mut self,
        sender: SendRequest<Bytes>,
        headers: &Fields,
        body: Vec<u8>,
    ) -> Result<Outcome> {
        let mut sender = sender
            .ready()
            .await
            .map_err(|e| anyhow!("HTTP/2 connection not ready: {e}"))?;
        let (response, stream) = match sender.send_request(request(headers)?, body.is_empty()) {
            Ok(r) => r,
            Err(e) => return stream_error(&e).map_err(|()| anyhow!("send the request: {e}")),
        };
        drop(sender);
        let verbose = self.verbose;
        let upload = upload(stream, body, verbose);
        tokio::pin!(upload);
        let download = self.download(response);
        tokio::pin!(download);
        let mut uploading = true;
        loop {
            tokio::select! {
                () = &mut upload, if uploading => uploading = false,
                outcome = &mut download => return outcome,
            }
        }
    }

    async fn download(&mut self, response: h2::client::ResponseFuture) -> Result<Outcome> {
        let response = match response.await {
            Ok(r) => r,
            Err(e) => return stream_error(&e).map_err(|()| anyhow!("read the response: {e}")),
        };
        let (head, mut body) = response.into_parts();
        let mut fields = vec![(":status".to_owned(), head.status.as_str().to_owned())];
        fields.extend(to_fields(&head.headers));
        if self.verbose {
            print_fields("<", &fields);
        }
        let content_type = find(&fields, "content-type").unwrap_or_default().to_owned();
        let is_grpc = head.status == 200 && content_type.starts_with("application/grpc");
        self.response_headers = fields;
        while let Some(chunk) = body.data().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return stream_error(&e).map_err(|()| anyhow!("read the body: {e}")),
            };
            let _ = body.flow_control().release_capacity(chunk.len());
            if !is_grpc {
                let room = MAX_ERROR_BODY.saturating_sub(self.other_body.len());
                self.other_body
                    .extend_from_slice(&chunk[..chunk.len().min(room)]);
                continue;
            }
            if let Some(local) = self.messages(&chunk)? {
                return Ok(local);
            }
        }
        let trailers = match body.trailers().await {
            Ok(t) => t,
            Err(e) => return stream_error(&e).map_err(|()| anyhow!("read the trailers: {e}")),
        };
        self.trailers = trailers.as_ref().map(to_fields).unwrap_or_default();
        Ok(self.outcome(head.status.as_u16(), is_grpc, content_type))
    }

    /// Prints the complete messages in `chunk`; a client-side status ends the call.
    fn messages(&mut self, chunk: &[u8]) -> Result<Option<Outcome>> {
        self.decoder.push(chunk);
        loop {
            match self.decoder.next_frame() {
                Ok(None) => return Ok(None),
                Ok(Some(frame)) if !frame.compressed => {
                    output::print_message(self.output, &frame.message)?
                }
                Ok(Some(_)) => {
                    let encoding = find(&self.response_headers, "grpc-encoding").unwrap_or("none");
                    let message =
                        format!("compressed response (grpc-encoding {encoding}) not supported");
                    return Ok(Some(Outcome::Grpc(13, message)));
                }
                Err(e) => return Ok(Some(Outcome::Grpc(8, format!("{e} (client-side)")))),
            }
        }
    }

    fn outcome(&self, status: u16, is_grpc: bool, content_type: String) -> Outcome {
        if !is_grpc {
            return Outcome::Http(status, content_type, self.other_body.clone());
        }
        output::grpc_end(&self.response_headers, &self.trailers, &self.decoder)
    }
}

/// The h2 request for the header list (pseudo-headers from the list).
fn request(headers: &Fields) -> Result<http::Request<()>> {
    let authority = find(headers, ":authority").unwrap_or_default();
    let path = find(headers, ":path").unwrap_or("/");
    let mut request = http::Request::builder()
        .method(find(headers, ":method").unwrap_or("POST"))
        .uri(format!("https://{authority}{path}"));
    for (name, value) in headers.iter().filter(|(n, _)| !n.starts_with(':')) {
        request = request.header(name, value);
    }
    request
        .body(())
        .with_context(|| format!("request for https://{authority}{path}"))
}

fn to_fields(map: &HeaderMap) -> Fields {
    map.iter()
        .map(|(n, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_owned(), value)
        })
        .collect()
}

/// Sends `body` as h2 grants capacity. A server that resets the stream or
/// stops reading ends the upload; the answer still says how the call ended.
async fn upload(mut stream: SendStream<Bytes>, body: Vec<u8>, verbose: bool) {
    let mut body = Bytes::from(body);
    while !body.is_empty() {
        stream.reserve_capacity(body.len());
        let granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) if n > 0 => n.min(body.len()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                if verbose {
                    eprintln!("* the request body was not sent whole: {e}");
                }
                return;
            }
            None => return,
        };
        let chunk = body.split_to(granted);
        if stream.send_data(chunk, body.is_empty()).is_err() {
            return;
        }
    }
    // Keep the stream open (not reset) until the answer is complete.
    std::future::pending::<()>().await
}

/// The outcome for a stream-level error from the server (RST_STREAM, or a
/// GOAWAY that left our stream unprocessed); `Err` for any other failure.
fn stream_error(e: &h2::Error) -> Result<Outcome, ()> {
    let reason = e.reason().filter(|_| e.is_remote()).ok_or(())?;
    if e.is_go_away() {
        let message = "the server is going away (GOAWAY) without our request".into();
        return Ok(Outcome::Grpc(14, message));
    }
    if !e.is_reset() {
        return Err(());
    }
    let code = u32::from(reason);
    let message = format!("stream reset by the server (HTTP/2 error 0x{code:x}: {reason:?})");
    Ok(Outcome::Grpc(grpc::h2_reset_status(code), message))
}
