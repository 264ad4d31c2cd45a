//! SPDY/3 framing as the Kubernetes streaming protocols use it (the
//! moby/spdystream peer of client-go): frame headers, the control frames a
//! server meets, and name/value header blocks compressed with the shared
//! zlib stream and the SPDY/3 dictionary.
//!
//! Pure byte work: no I/O, no tasks. Every input is the network's; a bad one
//! is an error, never a panic, and nothing grows past the limits below.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::DICTIONARY;

/// Largest frame payload accepted (client-go writes 32 KiB data frames).
pub const MAX_FRAME: usize = 1 << 20;
/// Largest decompressed header block accepted.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Most name/value pairs in one header block.
const MAX_HEADERS: usize = 64;

pub const FLAG_FIN: u8 = 0x01;
const VERSION: u16 = 3;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;

pub type HeaderList = Vec<(String, String)>;

/// One frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: HeaderList,
    },
    SynReply {
        id: u32,
        fin: bool,
        headers: HeaderList,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Settings,
    Ping(u32),
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        id: u32,
        headers: HeaderList,
    },
    WindowUpdate {
        id: u32,
        delta: u32,
    },
    Data {
        id: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame of a type this server has no use for (skipped).
    Unknown,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("SPDY frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("SPDY version {0} is not 3")]
    Version(u16),
    #[error("malformed SPDY {0} frame")]
    Malformed(&'static str),
    #[error("SPDY header block: {0}")]
    HeaderBlock(String),
}

/// Reads frames from a byte buffer; owns the connection's inflate stream.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            inflate: Decompress::new(true),
        }
    }

    /// Takes one whole frame off the front of `buf`, or `None` until one has
    /// arrived.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if length > MAX_FRAME {
            return Err(FrameError::TooLarge(length));
        }
        if buf.len() < 8 + length {
            return Ok(None);
        }
        let head = buf.split_to(8);
        let flags = head[4];
        let mut payload = buf.split_to(length).freeze();
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data {
                id,
                fin: flags & FLAG_FIN != 0,
                data: payload,
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let fin = flags & FLAG_FIN != 0;
        let need = |payload: &Bytes, n: usize, what| {
            if payload.len() < n {
                Err(FrameError::Malformed(what))
            } else {
                Ok(())
            }
        };
        let frame = match kind {
            SYN_STREAM => {
                need(&payload, 10, "SYN_STREAM")?;
                let id = payload.get_u32() & 0x7fff_ffff;
                payload.advance(6);
                let headers = self.headers(&payload)?;
                Frame::SynStream { id, fin, headers }
            }
            SYN_REPLY => {
                need(&payload, 4, "SYN_REPLY")?;
                let id = payload.get_u32() & 0x7fff_ffff;
                let headers = self.headers(&payload)?;
                Frame::SynReply { id, fin, headers }
            }
            HEADERS => {
                need(&payload, 4, "HEADERS")?;
                let id = payload.get_u32() & 0x7fff_ffff;
                // Decoded even though unused: the zlib stream is shared.
                let headers = self.headers(&payload)?;
                Frame::Headers { id, headers }
            }
            RST_STREAM => {
                need(&payload, 8, "RST_STREAM")?;
                Frame::RstStream {
                    id: payload.get_u32() & 0x7fff_ffff,
                    status: payload.get_u32(),
                }
            }
            PING => {
                need(&payload, 4, "PING")?;
                Frame::Ping(payload.get_u32())
            }
            GOAWAY => {
                need(&payload, 8, "GOAWAY")?;
                Frame::GoAway {
                    last_good: payload.get_u32() & 0x7fff_ffff,
                    status: payload.get_u32(),
                }
            }
            WINDOW_UPDATE => {
                need(&payload, 8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    id: payload.get_u32() & 0x7fff_ffff,
                    delta: payload.get_u32() & 0x7fff_ffff,
                }
            }
            SETTINGS => Frame::Settings,
            _ => Frame::Unknown,
        };
        Ok(Some(frame))
    }

    fn headers(&mut self, compressed: &[u8]) -> Result<HeaderList, FrameError> {
        let block = self.inflate(compressed)?;
        parse_block(&block)
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let bad = |e: String| FrameError::HeaderBlock(e);
        let mut out = Vec::with_capacity(256);
        let mut chunk = [0u8; 4096];
        while !input.is_empty() {
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let result = self
                .inflate
                .decompress(input, &mut chunk, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - in_before) as usize;
            let made = (self.inflate.total_out() - out_before) as usize;
            input = &input[used.min(input.len())..];
            out.extend_from_slice(&chunk[..made.min(chunk.len())]);
            if out.len() > MAX_HEADER_BLOCK {
                return Err(bad(format!("larger than {MAX_HEADER_BLOCK} bytes")));
            }
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) if used == 0 && made == 0 => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| bad(format!("set dictionary: {e}")))?;
                }
                Err(e) => return Err(bad(e.to_string())),
            }
        }
        Ok(out)
    }
}

/// Parses a decompressed name/value block; names are compared
/// case-insensitively by callers, so they are lowered here.
fn parse_block(mut block: &[u8]) -> Result<HeaderList, FrameError> {
    let bad = |what: &str| FrameError::HeaderBlock(what.to_owned());
    let take_u32 = |block: &mut &[u8]| -> Result<usize, FrameError> {
        if block.len() < 4 {
            return Err(bad("truncated"));
        }
        let n = u32::from_be_bytes([block[0], block[1], block[2], block[3]]) as usize;
        *block = &block[4..];
        Ok(n)
    };
    let take = |block: &mut &[u8], n: usize| -> Result<String, FrameError> {
        if block.len() < n {
            return Err(bad("truncated"));
        }
        let s = String::from_utf8_lossy(&block[..n]).into_owned();
        *block = &block[n..];
        Ok(s)
    };
    let count = take_u32(&mut block)?;
    if count > MAX_HEADERS {
        return Err(bad("too many headers"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let n = take_u32(&mut block)?;
        let name = take(&mut block, n)?.to_ascii_lowercase();
        let n = take_u32(&mut block)?;
        let value = take(&mut block, n)?;
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_owned()));
        }
    }
    Ok(headers)
}

/// The first value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a HeaderList, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Writes frames; owns the connection's deflate stream.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Cannot fail on a fresh stream.
        let _ = deflate.set_dictionary(&DICTIONARY);
        Self { deflate }
    }

    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) {
        match frame {
            Frame::Data { id, fin, data } => {
                // Callers keep data frames under MAX_FRAME.
                out.put_u32(id & 0x7fff_ffff);
                out.put_u8(if *fin { FLAG_FIN } else { 0 });
                out.put_uint(data.len() as u64, 3);
                out.put_slice(data);
            }
            Frame::SynStream { id, fin, headers } => {
                let block = self.deflate_block(headers);
                control(out, SYN_STREAM, *fin, 10 + block.len());
                out.put_u32(*id);
                out.put_u32(0);
                out.put_u16(0);
                out.put_slice(&block);
            }
            Frame::SynReply { id, fin, headers } => {
                let block = self.deflate_block(headers);
                control(out, SYN_REPLY, *fin, 4 + block.len());
                out.put_u32(*id);
                out.put_slice(&block);
            }
            Frame::Headers { id, headers } => {
                let block = self.deflate_block(headers);
                control(out, HEADERS, false, 4 + block.len());
                out.put_u32(*id);
                out.put_slice(&block);
            }
            Frame::RstStream { id, status } => {
                control(out, RST_STREAM, false, 8);
                out.put_u32(*id);
                out.put_u32(*status);
            }
            Frame::Ping(id) => {
                control(out, PING, false, 4);
                out.put_u32(*id);
            }
            Frame::GoAway { last_good, status } => {
                control(out, GOAWAY, false, 8);
                out.put_u32(*last_good);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { id, delta } => {
                control(out, WINDOW_UPDATE, false, 8);
                out.put_u32(*id);
                out.put_u32(*delta);
            }
            Frame::Settings => {
                control(out, SETTINGS, false, 4);
                out.put_u32(0);
            }
            Frame::Unknown => {}
        }
    }

    fn deflate_block(&mut self, headers: &HeaderList) -> Vec<u8> {
        let mut block = Vec::new();
        block.put_u32(headers.len() as u32);
        for (name, value) in headers {
            block.put_u32(name.len() as u32);
            block.put_slice(name.to_ascii_lowercase().as_bytes());
            block.put_u32(value.len() as u32);
            block.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut input = &block[..];
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            if self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            let used = (self.deflate.total_in() - before) as usize;
            input = &input[used.min(input.len())..];
            // A sync flush is complete once input is gone and output room
            // was left over.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

fn control(out: &mut BytesMut, kind: u16, fin: bool, length: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(if fin { FLAG_FIN } else { 0 });
    out.put_uint(length as u64, 3);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
        let mut enc = Encoder::new();
        let mut wire = BytesMut::new();
        for f in frames {
            enc.encode(f, &mut wire);
        }
        let mut dec = Decoder::new();
        let mut got = Vec::new();
        while let Some(f) = dec.decode(&mut wire).unwrap() {
            got.push(f);
        }
        assert!(wire.is_empty());
        got
    }

    #[test]
    fn frames_roundtrip_with_a_shared_zlib_stream() {
        let h = |pairs: &[(&str, &str)]| -> HeaderList {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let frames = vec![
            Frame::SynStream {
                id: 1,
                fin: false,
                headers: h(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                id: 3,
                fin: true,
                headers: h(&[("streamtype", "stdin"), ("port", "80")]),
            },
            Frame::SynReply {
                id: 1,
                fin: false,
                headers: vec![],
            },
            Frame::Data {
                id: 3,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Ping(7),
            Frame::RstStream { id: 3, status: 5 },
            Frame::GoAway {
                last_good: 3,
                status: 0,
            },
            Frame::WindowUpdate { id: 1, delta: 9 },
            Frame::Headers {
                id: 1,
                headers: h(&[("a", "b")]),
            },
        ];
        assert_eq!(roundtrip(&frames), frames);
    }

    #[test]
    fn reads_what_go_spdystream_writes() {
        // A SYN_STREAM as moby/spdystream writes it: its zlib writer uses
        // BestCompression and the dictionary; ours must inflate any level.
        let mut deflate = Compress::new(Compression::best(), true);
        deflate.set_dictionary(&DICTIONARY).unwrap();
        let mut block = Vec::new();
        block.put_u32(1);
        block.put_u32(10);
        block.put_slice(b"streamtype");
        block.put_u32(6);
        block.put_slice(b"stdout");
        let mut z = Vec::with_capacity(512);
        deflate
            .compress_vec(&block, &mut z, FlushCompress::Sync)
            .unwrap();
        let mut wire = BytesMut::new();
        control(&mut wire, SYN_STREAM, false, 10 + z.len());
        wire.put_u32(5);
        wire.put_u32(0);
        wire.put_u16(0);
        wire.put_slice(&z);
        let frame = Decoder::new().decode(&mut wire).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame::SynStream {
                id: 5,
                fin: false,
                headers: vec![("streamtype".into(), "stdout".into())]
            }
        );
    }

    #[test]
    fn partial_frames_wait_and_oversized_ones_fail() {
        let mut wire = BytesMut::new();
        Encoder::new().encode(&Frame::Ping(1), &mut wire);
        let mut part = BytesMut::from(&wire[..6]);
        assert_eq!(Decoder::new().decode(&mut part), Ok(None));
        let mut huge = BytesMut::from(&[0u8, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            Decoder::new().decode(&mut huge),
            Err(FrameError::TooLarge(_))
        ));
    }

    /// Random and mutated input never panics and never loops: every call
    /// either consumes bytes, waits for more, or fails.
    #[test]
    fn fuzz_random_input_never_panics() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut valid = BytesMut::new();
        let mut enc = Encoder::new();
        for id in 0..4u32 {
            enc.encode(
                &Frame::SynStream {
                    id: id * 2 + 1,
                    fin: false,
                    headers: vec![("streamtype".into(), "stdin".into())],
                },
                &mut valid,
            );
            enc.encode(
                &Frame::Data {
                    id: 1,
                    fin: false,
                    data: Bytes::from_static(b"xyz"),
                },
                &mut valid,
            );
        }
        for round in 0..20_000 {
            let mut input: Vec<u8> = if round % 2 == 0 {
                let mut v = valid.to_vec();
                for _ in 0..(next() % 8) {
                    let i = (next() as usize) % v.len();
                    v[i] = next() as u8;
                }
                v
            } else {
                let len = (next() % 200) as usize;
                let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if len > 8 && next() % 2 == 0 {
                    // Plausible control-frame heads reach the parsers.
                    v[0] = 0x80;
                    v[1] = 3;
                    v[2] = 0;
                    v[3] = (next() % 10) as u8;
                    v[5] = 0;
                    v[6] = 0;
                    v[7] = (len.saturating_sub(8)) as u8;
                }
                v
            };
            if round % 3 == 0 {
                input.truncate((next() as usize) % (input.len() + 1));
            }
            let mut buf = BytesMut::from(&input[..]);
            let mut dec = Decoder::new();
            for _ in 0..64 {
                let before = buf.len();
                match dec.decode(&mut buf) {
                    Ok(Some(_)) => assert!(buf.len() < before),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
