//! gRPC wire helpers for `vimanad call`: the 5-byte message prefix
//! (compressed flag + u32 big-endian length) with an incremental decoder that
//! reassembles messages split across HTTP/3 or HTTP/2 DATA frames (or packed
//! several to a frame); the bit of protobuf the `--text` shorthand needs; and
//! metadata: `-H` parsing, grpc-timeout, status names, grpc-message decoding,
//! the status of a stream reset (HTTP/3 and HTTP/2 codes).

use bytes::{Buf, Bytes, BytesMut};

/// The largest response message `vimanad call` accepts.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Appends `message` to `out` as one length-prefixed, uncompressed gRPC frame.
pub fn encode(message: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(message.len()).expect("a gRPC message is under 4 GiB");
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
}

/// One decoded gRPC frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// The compressed flag (bit 0 of the first prefix byte).
    pub compressed: bool,
    pub message: Bytes,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces a message larger than the limit.
    TooLarge { len: usize, max: usize },
    /// The stream ended inside a frame.
    Truncated { buffered: usize },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(
                    f,
                    "response message of {len} bytes is over the {max}-byte limit"
                )
            }
            FrameError::Truncated { buffered } => {
                write!(
                    f,
                    "response body ended inside a gRPC frame ({buffered} bytes left over)"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Reassembles gRPC frames from body bytes fed in arbitrary pieces.
pub struct Decoder {
    buf: BytesMut,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(MAX_MESSAGE)
    }
}

impl Decoder {
    pub fn new(max: usize) -> Self {
        Decoder {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Adds body bytes; call [`Decoder::next_frame`] until it returns `None`.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if one is buffered. An oversized frame is
    /// refused as soon as its prefix arrives, before its body is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < 5 + len {
            // Reserve once for the whole message rather than growing by doubling.
            self.buf.reserve(5 + len - self.buf.len());
            return Ok(None);
        }
        let compressed = self.buf[0] & 1 == 1;
        self.buf.advance(5);
        let message = self.buf.split_to(len).freeze();
        Ok(Some(Frame {
            compressed,
            message,
        }))
    }

    /// Checks that the body ended on a frame boundary.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buf.len() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A protobuf message whose field 1 is the string `text` (e.g. the example
/// component's `EchoRequest{message}`): tag 0x0a, varint length, UTF-8.
pub fn text_message(text: &str) -> Vec<u8> {
    let mut out = vec![0x0a];
    put_varint(text.len() as u64, &mut out);
    out.extend_from_slice(text.as_bytes());
    out
}

/// Field 1 of a protobuf message as a string (the last occurrence wins, as
/// protobuf merges). `None` when the bytes are not a well-formed message or
/// field 1 is absent, not length-delimited, or not UTF-8. An empty message is
/// an empty string (proto3 default).
pub fn field1_text(mut msg: &[u8]) -> Option<String> {
    let mut found: Option<&[u8]> = None;
    let mut any_field = false;
    while !msg.is_empty() {
        let key = get_varint(&mut msg)?;
        let (field, wire_type) = (key >> 3, key & 7);
        if field == 0 {
            return None;
        }
        any_field = true;
        match wire_type {
            0 => {
                get_varint(&mut msg)?;
            }
            1 | 5 => {
                let n = if wire_type == 1 { 8 } else { 4 };
                msg = msg.get(n..)?;
            }
            2 => {
                let len = usize::try_from(get_varint(&mut msg)?).ok()?;
                let value = msg.get(..len)?;
                msg = &msg[len..];
                if field == 1 {
                    found = Some(value);
                }
            }
            _ => return None,
        }
    }
    match found {
        Some(bytes) => String::from_utf8(bytes.to_vec()).ok(),
        None if !any_field => Some(String::new()),
        None => None,
    }
}

/// Parses `-H 'name: value'` into a lowercase name and a trimmed value.
pub fn parse_header(raw: &str) -> Result<(String, String), String> {
    let (name, value) = raw
        .split_once(':')
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| {
            format!("header {raw:?} is not 'name: value' (pseudo-headers come from the URL)")
        })?;
    let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name in {raw:?}"))?;
    http::HeaderValue::from_str(&value).map_err(|_| format!("invalid header value in {raw:?}"))?;
    const CONNECTION_SPECIFIC: [&str; 5] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ];
    if CONNECTION_SPECIFIC.contains(&name.as_str()) {
        return Err(format!(
            "header {name:?} is connection-specific: not allowed in HTTP/2 or HTTP/3"
        ));
    }
    Ok((name, value))
}

/// A grpc-timeout value (at most 8 digits and a unit), rounded up.
pub fn grpc_timeout(t: std::time::Duration) -> String {
    let ms = t.as_nanos().div_ceil(1_000_000);
    let s = ms.div_ceil(1000);
    match () {
        _ if ms < 100_000_000 => format!("{ms}m"),
        _ if s < 100_000_000 => format!("{s}S"),
        _ => format!("{}H", s.div_ceil(3600).min(99_999_999)),
    }
}

const STATUS_NAMES: &str = "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND \
    ALREADY_EXISTS PERMISSION_DENIED RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE \
    UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS UNAUTHENTICATED";

pub fn status_name(code: u32) -> &'static str {
    STATUS_NAMES
        .split_whitespace()
        .nth(code as usize)
        .unwrap_or("?")
}

/// grpc-message is percent-encoded; malformed escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let (bytes, mut out, mut i) = (s.as_bytes(), Vec::with_capacity(s.len()), 0);
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex
            .filter(|_| bytes[i] == b'%')
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            Some(b) => (out.push(b), i += 3),
            None => (out.push(bytes[i]), i += 1),
        };
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The gRPC status a client reports when the server resets the stream with
/// this HTTP/3 error code (as gRPC does for HTTP/2 RST_STREAM codes).
pub fn reset_status(h3_code: u64) -> u32 {
    match h3_code {
        0x10c => 1,  // H3_REQUEST_CANCELLED -> CANCELLED
        0x10b => 14, // H3_REQUEST_REJECTED -> UNAVAILABLE
        0x107 => 8,  // H3_EXCESSIVE_LOAD -> RESOURCE_EXHAUSTED
        _ => 13,     // INTERNAL
    }
}

/// The gRPC status a client reports when the server resets the stream with
/// this HTTP/2 error code (gRPC's PROTOCOL-HTTP2 mapping).
pub fn h2_reset_status(h2_code: u32) -> u32 {
    match h2_code {
        0x8 => 1,  // CANCEL -> CANCELLED
        0x7 => 14, // REFUSED_STREAM -> UNAVAILABLE
        0xb => 8,  // ENHANCE_YOUR_CALM -> RESOURCE_EXHAUSTED
        0xc => 7,  // INADEQUATE_SECURITY -> PERMISSION_DENIED
        _ => 13,   // INTERNAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_prefixes_flag_and_big_endian_length() {
        let mut out = Vec::new();
        encode(b"hello", &mut out);
        encode(b"", &mut out);
        assert_eq!(out, b"\0\0\0\0\x05hello\0\0\0\0\0");
    }

    #[test]
    fn decoder_reassembles_byte_by_byte() {
        let mut body = Vec::new();
        encode(b"first", &mut body);
        encode(&[7u8; 300], &mut body);
        let mut d = Decoder::new(MAX_MESSAGE);
        let mut got = Vec::new();
        for b in &body {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f.message.to_vec());
            }
        }
        assert_eq!(got, vec![b"first".to_vec(), vec![7u8; 300]]);
        d.finish().unwrap();
    }

    #[test]
    fn decoder_splits_several_messages_in_one_push() {
        let mut body = Vec::new();
        for m in [&b"a"[..], b"", b"ccc"] {
            encode(m, &mut body);
        }
        let mut d = Decoder::new(MAX_MESSAGE);
        d.push(&body);
        let got: Vec<_> = std::iter::from_fn(|| d.next_frame().unwrap()).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].message.len(), 0);
        assert_eq!(&got[2].message[..], b"ccc");
        assert!(!got[0].compressed);
    }

    #[test]
    fn decoder_reports_compressed_flag() {
        let mut d = Decoder::new(MAX_MESSAGE);
        d.push(b"\x01\0\0\0\x01z");
        assert_eq!(
            d.next_frame().unwrap(),
            Some(Frame {
                compressed: true,
                message: Bytes::from_static(b"z")
            })
        );
    }

    #[test]
    fn decoder_refuses_oversized_message_from_its_prefix() {
        let mut d = Decoder::new(10);
        d.push(&[0, 0, 0, 0, 11]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
        let mut d = Decoder::new(MAX_MESSAGE);
        d.push(&[0, 0x04, 0, 0, 1]); // 64 MiB + 1
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn decoder_detects_truncated_body() {
        let mut d = Decoder::new(MAX_MESSAGE);
        d.push(b"\0\0\0\0\x05hel");
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated { buffered: 8 }));
    }

    #[test]
    fn text_message_is_field_one_string() {
        assert_eq!(text_message("hello"), b"\x0a\x05hello");
        assert_eq!(text_message(""), b"\x0a\x00");
        let long = "x".repeat(300);
        let m = text_message(&long);
        assert_eq!(&m[..3], &[0x0a, 0xac, 0x02]); // 300 = 0b10_0101100
        assert_eq!(m.len(), 3 + 300);
        assert_eq!(field1_text(&m).as_deref(), Some(long.as_str()));
    }

    #[test]
    fn field1_text_parses_and_rejects() {
        assert_eq!(field1_text(b"\x0a\x02hi").as_deref(), Some("hi"));
        assert_eq!(field1_text(b"").as_deref(), Some(""));
        // Other fields around it are skipped: varint field 2, fixed64 field 3.
        let msg = b"\x10\x96\x01\x19\x01\x02\x03\x04\x05\x06\x07\x08\x0a\x01y";
        assert_eq!(field1_text(msg).as_deref(), Some("y"));
        assert_eq!(field1_text(b"\x0a\x05hi"), None); // length past the end
        assert_eq!(field1_text(b"\x0a\x02\xff\xfe"), None); // not UTF-8
        assert_eq!(field1_text(b"\x10\x01"), None); // no field 1
        assert_eq!(field1_text(b"\x08\x01"), None); // field 1 is a varint
        assert_eq!(field1_text(b"\x0f"), None); // wire type 7
    }

    #[test]
    fn header_parsing() {
        let h = |raw: &str| parse_header(raw).map_err(|_| ());
        assert_eq!(
            h("vimana-version: 1.0.0"),
            Ok(("vimana-version".into(), "1.0.0".into()))
        );
        assert_eq!(h("X-Trace:abc "), Ok(("x-trace".into(), "abc".into())));
        assert_eq!(h("empty:"), Ok(("empty".into(), "".into())));
        for bad in [
            "no-colon",
            ":path: /x",
            "bad name: x",
            "x: a\nb",
            "connection: close",
        ] {
            assert!(h(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grpc_timeout_values() {
        use std::time::Duration;
        assert_eq!(grpc_timeout(Duration::from_millis(500)), "500m");
        assert_eq!(grpc_timeout(Duration::from_micros(1)), "1m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(
            grpc_timeout(Duration::from_secs(100_000_000 * 3600)),
            "99999999H"
        );
    }

    #[test]
    fn statuses_and_messages() {
        assert_eq!(status_name(0), "OK");
        assert_eq!(status_name(4), "DEADLINE_EXCEEDED");
        assert_eq!(status_name(16), "UNAUTHENTICATED");
        assert_eq!(status_name(17), "?");
        assert_eq!(
            percent_decode("no%20component%3A x%zz%4"),
            "no component: x%zz%4"
        );
        assert_eq!(percent_decode("%E2%9C%93"), "\u{2713}");
        assert_eq!(
            (
                reset_status(0x10c),
                reset_status(0x10b),
                reset_status(0x102)
            ),
            (1, 14, 13)
        );
        let h2: Vec<u32> = [0x8, 0x7, 0xb, 0xc, 0x2, 0x0].map(h2_reset_status).into();
        assert_eq!(h2, [1, 14, 8, 7, 13, 13]);
    }
}
