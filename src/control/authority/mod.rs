//! The CRI socket's HTTP/2 `:authority` fix: a per-connection rewriter of
//! the client's header blocks, in front of the HTTP/2 server.
//!
//! The stock kubelet (before Kubernetes PR #123463), Python grpcio and other
//! grpc clients send the socket path, or nothing, as `:authority`; h2 under
//! tonic refuses such a request (PROTOCOL_ERROR, "malformed authority") and
//! has no option to accept it. This layer decodes every HEADERS block the
//! client sends (HEADERS + CONTINUATION, with the client's HPACK dynamic
//! table), replaces an `:authority` that is not a valid URI authority with
//! `localhost`, and encodes the block again as literals without indexing,
//! so the server's decoder keeps no dynamic table of ours. Every other frame
//! passes through byte for byte, as does everything the server sends.
//!
//! Sans-IO: [`Rewriter::feed`] turns client bytes into server bytes; the
//! stream adapter (`stream.rs`) plugs it into tonic. Malformed input ends the
//! connection ([`RewriteError`]); nothing here panics on any input. It owns
//! no CRI logic and must not look at anything but header blocks.

mod stream;
#[cfg(test)]
mod tests;

pub use stream::FixedAuthority;

use loona_hpack::Decoder;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame the server accepts without SETTINGS saying otherwise
/// (hyper keeps HTTP/2's default): the re-encoded block is cut to it.
const MAX_FRAME: usize = 16_384;
/// HPACK's default dynamic table size, which the server (h2) advertises by
/// not sending SETTINGS_HEADER_TABLE_SIZE: the client's encoder may use no
/// more.
const TABLE_SIZE: usize = 4096;
/// Bounds on one header block, compressed and decoded (names + values +
/// RFC 7541's 32 bytes per field): far above what any CRI client sends, and
/// a bound on the memory one connection can make us hold.
const MAX_BLOCK: usize = 1 << 20;
const MAX_DECODED: usize = 1 << 20;
/// What replaces an `:authority` the server would refuse.
const LOCALHOST: &[u8] = b"localhost";

/// Why a connection was ended. Each is a protocol error of the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("the client did not start with the HTTP/2 connection preface")]
    Preface,
    #[error("the connection already failed")]
    Failed,
    #[error(
        "frame {kind:#x} on stream {stream} while the header block of stream {expected} is open"
    )]
    Interleaved {
        kind: u8,
        stream: u32,
        expected: u32,
    },
    #[error("CONTINUATION on stream {0} without an open header block")]
    StrayContinuation(u32),
    #[error("header frame on stream 0")]
    StreamZero,
    #[error("PUSH_PROMISE from a client")]
    PushPromise,
    #[error("header frame on stream {0}: padding or priority longer than the frame")]
    BadPadding(u32),
    #[error("header block on stream {0} is over {MAX_BLOCK} bytes")]
    BlockTooLarge(u32),
    #[error("header list on stream {0} decodes to over {MAX_DECODED} bytes")]
    DecodedTooLarge(u32),
    #[error("header block on stream {stream}: {error}")]
    Hpack { stream: u32, error: String },
}

/// A header block being gathered from HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    /// Stream dependency and weight of a HEADERS frame with PRIORITY.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

enum State {
    /// Bytes of the preface seen so far.
    Preface(usize),
    FrameHeader,
    /// Copying a frame's payload through: bytes left.
    Passing(usize),
    /// A HEADERS or CONTINUATION frame whose payload is awaited whole.
    HeaderPayload {
        kind: u8,
        flags: u8,
        stream: u32,
        len: usize,
    },
    /// After an error: the framing is lost, the connection must end.
    Failed,
}

/// One connection's client → server rewriter.
pub struct Rewriter {
    state: State,
    /// Received bytes not yet turned into output.
    input: Vec<u8>,
    block: Option<Block>,
    decoder: Decoder<'static>,
    /// Header blocks whose `:authority` was replaced, for the log.
    pub rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            state: State::Preface(0),
            input: Vec::new(),
            block: None,
            decoder,
            rewritten: 0,
        }
    }

    /// Takes bytes from the client and appends to `out` what the server
    /// gets. After an error the connection must end; later calls fail.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        self.input.extend_from_slice(data);
        let mut at = 0;
        let result = self.run(&mut at, out);
        self.input.drain(..at);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn run(&mut self, at: &mut usize, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        loop {
            let rest = &self.input[*at..];
            match self.state {
                State::Failed => return Err(RewriteError::Failed),
                State::Preface(seen) => {
                    let want = PREFACE.len() - seen;
                    let n = want.min(rest.len());
                    if rest[..n] != PREFACE[seen..seen + n] {
                        return Err(RewriteError::Preface);
                    }
                    out.extend_from_slice(&rest[..n]);
                    *at += n;
                    self.state = if n == want {
                        State::FrameHeader
                    } else {
                        State::Preface(seen + n)
                    };
                    if n < want {
                        return Ok(());
                    }
                }
                State::FrameHeader => {
                    if rest.len() < FRAME_HEADER {
                        return Ok(());
                    }
                    let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
                    let (kind, flags) = (rest[3], rest[4]);
                    let stream =
                        u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
                    if let Some(block) = &self.block {
                        if kind != CONTINUATION || stream != block.stream {
                            return Err(RewriteError::Interleaved {
                                kind,
                                stream,
                                expected: block.stream,
                            });
                        }
                    }
                    match kind {
                        HEADERS | CONTINUATION => {
                            if stream == 0 {
                                return Err(RewriteError::StreamZero);
                            }
                            if kind == CONTINUATION && self.block.is_none() {
                                return Err(RewriteError::StrayContinuation(stream));
                            }
                            let held = self.block.as_ref().map_or(0, |b| b.fragment.len());
                            if held + len > MAX_BLOCK {
                                return Err(RewriteError::BlockTooLarge(stream));
                            }
                            *at += FRAME_HEADER;
                            self.state = State::HeaderPayload {
                                kind,
                                flags,
                                stream,
                                len,
                            };
                        }
                        PUSH_PROMISE => return Err(RewriteError::PushPromise),
                        _ => {
                            out.extend_from_slice(&rest[..FRAME_HEADER]);
                            *at += FRAME_HEADER;
                            self.state = State::Passing(len);
                        }
                    }
                }
                State::Passing(left) => {
                    let n = left.min(rest.len());
                    out.extend_from_slice(&rest[..n]);
                    *at += n;
                    if n < left {
                        self.state = State::Passing(left - n);
                        return Ok(());
                    }
                    self.state = State::FrameHeader;
                }
                State::HeaderPayload {
                    kind,
                    flags,
                    stream,
                    len,
                } => {
                    if rest.len() < len {
                        return Ok(());
                    }
                    let payload = &rest[..len];
                    if kind == HEADERS {
                        let (fragment, priority) = headers_fragment(payload, flags, stream)?;
                        self.block = Some(Block {
                            stream,
                            end_stream: flags & END_STREAM != 0,
                            priority,
                            fragment: fragment.to_vec(),
                        });
                    } else if let Some(block) = self.block.as_mut() {
                        block.fragment.extend_from_slice(payload);
                    }
                    *at += len;
                    self.state = State::FrameHeader;
                    if flags & END_HEADERS != 0 {
                        if let Some(block) = self.block.take() {
                            self.finish(block, out)?;
                        }
                    }
                }
            }
        }
    }

    /// Decodes a whole header block, fixes `:authority`, and writes it out
    /// as HEADERS (+ CONTINUATION) frames.
    fn finish(&mut self, block: Block, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let stream = block.stream;
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut decoded = 0usize;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                decoded = decoded.saturating_add(name.len() + value.len() + 32);
                if decoded <= MAX_DECODED {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| RewriteError::Hpack {
                stream,
                error: e.to_string(),
            })?;
        if decoded > MAX_DECODED {
            return Err(RewriteError::DecodedTooLarge(stream));
        }
        for (name, value) in &mut fields {
            if name == b":authority" && !valid_authority(value) {
                *value = LOCALHOST.to_vec();
                self.rewritten += 1;
            }
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        for (name, value) in &fields {
            encode_literal(name, value, &mut encoded);
        }
        write_frames(&block, &encoded, out);
        Ok(())
    }
}

/// The header block fragment of a HEADERS frame, without its padding and
/// priority fields (RFC 9113 §6.2).
fn headers_fragment(
    payload: &[u8],
    flags: u8,
    stream: u32,
) -> Result<(&[u8], Option<[u8; 5]>), RewriteError> {
    let bad = || RewriteError::BadPadding(stream);
    let mut body = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&n, rest) = body.split_first().ok_or_else(bad)?;
        pad = n as usize;
        body = rest;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let fields: [u8; 5] = body
            .get(..5)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        priority = Some(fields);
        body = &body[5..];
    }
    let end = body.len().checked_sub(pad).ok_or_else(bad)?;
    Ok((&body[..end], priority))
}

/// Whether h2 accepts the value as a request's authority.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// RFC 7541 §6.2.2, literal header field without indexing, new name, no
/// Huffman coding.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0);
    encode_string(name, out);
    encode_string(value, out);
}

fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// HEADERS with the block's stream, END_STREAM and priority, then as many
/// CONTINUATION frames as the block needs; END_HEADERS on the last.
fn write_frames(block: &Block, encoded: &[u8], out: &mut Vec<u8>) {
    let room = MAX_FRAME - if block.priority.is_some() { 5 } else { 0 };
    let first = encoded.len().min(room);
    let mut flags = if block.end_stream { END_STREAM } else { 0 };
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    let last = first == encoded.len();
    if last {
        flags |= END_HEADERS;
    }
    let prefix = block.priority.map_or(0, |_| 5);
    frame_header(prefix + first, HEADERS, flags, block.stream, out);
    if let Some(priority) = block.priority {
        out.extend_from_slice(&priority);
    }
    out.extend_from_slice(&encoded[..first]);
    let mut rest = &encoded[first..];
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME);
        let flags = if n == rest.len() { END_HEADERS } else { 0 };
        frame_header(n, CONTINUATION, flags, block.stream, out);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}
