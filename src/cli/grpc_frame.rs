//! gRPC message framing for `vimanad call`: the 5-byte length prefix
//! (compressed flag + u32 big-endian length), an incremental decoder that
//! reassembles messages split across HTTP/3 DATA frames (or packed several
//! to a frame), and the bit of protobuf the `--text` shorthand needs.

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
}
