//! The HTTP/1.1 the streaming server needs: one request head per
//! connection (bounded in size and time), plain-text error answers, and
//! the two upgrade answers (SPDY/3.1 and WebSocket).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_HEAD: usize = 16 * 1024;
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A request head.
#[derive(Debug)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Bytes read past the head.
    pub leftover: BytesMut,
}

impl Head {
    /// Every value of header `name`, comma-separated lists split.
    pub fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect()
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether `Connection` lists `upgrade` and `Upgrade` is `protocol`.
    pub fn upgrades_to(&self, protocol: &str) -> bool {
        self.values("connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("upgrade"))
            && self
                .values("upgrade")
                .iter()
                .any(|v| v.eq_ignore_ascii_case(protocol))
    }
}

/// Reads one request head; `None` for anything that is not one.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Head> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some(head) = parse(&mut buf) {
            return head;
        }
        if buf.len() >= MAX_HEAD {
            return None;
        }
        buf.reserve(4096);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// `Some(Some(head))` once complete, `Some(None)` if malformed, `None` to
/// read more.
fn parse(buf: &mut BytesMut) -> Option<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let head = Head {
                method: request.method.unwrap_or("").to_owned(),
                path: request.path.unwrap_or("").to_owned(),
                headers: request
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
                leftover: BytesMut::new(),
            };
            let mut head = head;
            let _ = buf.split_to(len);
            head.leftover = buf.split();
            Some(Some(head))
        }
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(None),
    }
}

/// Answers with `status` and a text body, then closes.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    extra: &[(&str, String)],
    body: &str,
) {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len() + 1
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    head.push('\n');
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The 101 answer to a SPDY/3.1 upgrade, with the negotiated protocol.
pub async fn switch_to_spdy<S: AsyncWrite + Unpin>(
    stream: &mut S,
    protocol: Option<&str>,
) -> std::io::Result<()> {
    let mut head = String::from(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n",
    );
    if let Some(protocol) = protocol {
        head.push_str(&format!("X-Stream-Protocol-Version: {protocol}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await
}

/// The 101 answer to a WebSocket upgrade.
pub async fn switch_to_websocket<S: AsyncWrite + Unpin>(
    stream: &mut S,
    key: &str,
    protocol: &str,
) -> std::io::Result<()> {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads_and_keeps_what_follows() {
        let mut buf = BytesMut::from(
            &b"POST /exec/abc HTTP/1.1\r\nHost: x\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: v3.channel.k8s.io\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\nrest"[..],
        );
        let head = parse(&mut buf).unwrap().unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/exec/abc");
        assert_eq!(
            head.values("x-stream-protocol-version"),
            vec!["v4.channel.k8s.io", "v3.channel.k8s.io"]
        );
        assert!(head.upgrades_to("spdy/3.1"));
        assert_eq!(&head.leftover[..], b"rest");
        assert!(parse(&mut BytesMut::from(&b"GET / HT"[..])).is_none());
        assert!(matches!(
            parse(&mut BytesMut::from(&b"\x00\x01garbage\r\n\r\n"[..])),
            Some(None)
        ));
    }

    #[test]
    fn random_heads_never_panic() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 300) as usize;
            let mut bytes: Vec<u8> = b"GET /exec/x HTTP/1.1\r\nUpgrade: SPDY/3.1\r\n".to_vec();
            let mut x = seed;
            for _ in 0..len {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                bytes.push((x >> 56) as u8);
            }
            let mut buf = BytesMut::from(&bytes[..]);
            if let Some(Some(head)) = parse(&mut buf) {
                let _ = head.values("connection");
                let _ = head.upgrades_to("websocket");
            }
        }
    }
}
