//! gRPC wire details the proxy needs: deadlines, message framing limits,
//! status codes and message encoding. Pure functions, no I/O.

use std::time::Duration;

/// gRPC status codes the data plane produces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Cancelled = 1,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Internal = 13,
    Unimplemented = 12,
    Unavailable = 14,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Cancelled => "1",
            Code::DeadlineExceeded => "4",
            Code::ResourceExhausted => "8",
            Code::Unimplemented => "12",
            Code::Internal => "13",
            Code::Unavailable => "14",
        }
    }
}

/// Parses a `grpc-timeout` value (`1-8 digits` + `H M S m u n`).
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Percent-encodes a `grpc-message` (gRPC over HTTP/2 spec: printable ASCII
/// except `%` passes, everything else is `%XX`).
pub fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Follows the length-prefixed messages of a gRPC stream across arbitrary
/// chunk boundaries: where each message starts and ends.
#[derive(Debug, Default)]
pub struct MessageCursor {
    header: [u8; 5],
    header_len: usize,
    remaining: usize,
}

impl MessageCursor {
    /// Feeds a chunk; calls `on_message` with the length of each message
    /// whose 5-byte prefix completes in it (stopping at its error), and
    /// returns the offset just past the last message that ends in it.
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        mut on_message: impl FnMut(usize) -> Result<(), E>,
    ) -> Result<Option<usize>, E> {
        let mut boundary = None;
        let mut at = 0;
        while at < chunk.len() {
            if self.remaining > 0 {
                let take = self.remaining.min(chunk.len() - at);
                self.remaining -= take;
                at += take;
                if self.remaining == 0 {
                    boundary = Some(at);
                }
                continue;
            }
            let take = (5 - self.header_len).min(chunk.len() - at);
            self.header[self.header_len..self.header_len + take]
                .copy_from_slice(&chunk[at..at + take]);
            self.header_len += take;
            at += take;
            if self.header_len == 5 {
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                on_message(len)?;
                self.header_len = 0;
                self.remaining = len;
                if len == 0 {
                    boundary = Some(at);
                }
            }
        }
        Ok(boundary)
    }

    /// Whether the bytes so far end on a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }
}

/// Follows the length-prefixed messages of a gRPC stream across arbitrary
/// chunk boundaries, to refuse a message over the size limit as soon as its
/// 5-byte prefix is seen.
#[derive(Debug)]
pub struct FrameLimiter {
    max: usize,
    cursor: MessageCursor,
}

impl FrameLimiter {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            cursor: MessageCursor::default(),
        }
    }

    /// Feeds a chunk; returns the length of an oversized message, if one
    /// starts in it.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), usize> {
        let max = self.max;
        self.cursor
            .feed(chunk, |len| if len > max { Err(len) } else { Ok(()) })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timeouts() {
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [&b""[..], b"m", b"123456789m", b"10x", b"-1S", b"1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{:?}", bad);
        }
    }

    #[test]
    fn encodes_messages() {
        assert_eq!(encode_message("no service x.Y"), "no service x.Y");
        assert_eq!(encode_message("100% é\n"), "100%25 %C3%A9%0A");
    }

    #[test]
    fn limits_messages_across_chunks() {
        let mut l = FrameLimiter::new(10);
        let mut stream = vec![0, 0, 0, 0, 3, 1, 2, 3];
        stream.extend([0, 0, 0, 0, 10]);
        stream.extend([9; 10]);
        for chunk in stream.chunks(3) {
            l.feed(chunk).unwrap();
        }
        assert_eq!(l.feed(&[0, 0, 0]), Ok(()));
        assert_eq!(l.feed(&[0, 11]), Err(11));
    }

    #[test]
    fn finds_message_boundaries_across_chunks() {
        let none = |_| Ok::<(), ()>(());
        let mut c = MessageCursor::default();
        // Two messages (3 bytes, then empty) and half of a third.
        let stream = [0, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 9];
        assert_eq!(c.feed(&stream, none), Ok(Some(13)));
        assert_eq!(c.feed(&[9], none), Ok(Some(1)));
        for split in 1..stream.len() {
            let mut c = MessageCursor::default();
            let first = c.feed(&stream[..split], none).unwrap();
            let second = c.feed(&stream[split..], none).unwrap();
            let last = second.map(|b| split + b).or(first);
            assert_eq!(last, Some(13), "split at {split}");
        }
    }
}
