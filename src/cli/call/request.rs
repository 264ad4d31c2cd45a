//! The request `vimanad call` sends, from its flags: the target URL
//! (`:authority`, `:path`, default peer), the peer address (`--connect`),
//! the header list (gRPC defaults, `-H` metadata, grpc-timeout) and the
//! request messages (`--data-hex`, `--data-file`, `--text`, stdin).

use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::{find, CallArgs, Fields};
use crate::cli::grpc_frame as grpc;

const DEFAULT_PORT: u16 = 443;

/// What the URL says: where to connect by default, `:authority`, `:path`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) authority: String,
    /// Without IPv6 brackets.
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) path: String,
}

impl Target {
    pub(super) fn parse(url: &str) -> Result<Target> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        let authority = uri
            .authority()
            .filter(|_| uri.scheme_str() == Some("https"));
        let authority = authority.ok_or_else(|| anyhow!("URL {url:?} is not https://HOST/..."))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        if authority.as_str().contains('@') || path == "/" {
            bail!("URL {url:?} must be https://HOST[:PORT]/SERVICE/METHOD");
        }
        Ok(Target {
            authority: authority.as_str().to_owned(),
            host: unbracket(authority.host()).to_owned(),
            port: authority.port_u16().unwrap_or(DEFAULT_PORT),
            path: path.to_owned(),
        })
    }
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// `--connect`: `host:port`, `[v6]:port`, or a bare host or IP (port 443).
pub(super) fn resolve(addr: &str) -> Result<SocketAddr> {
    if let Ok(ip) = unbracket(addr).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    match addr.contains(':') {
        true => first_addr(addr, addr),
        false => first_addr((addr, DEFAULT_PORT), addr),
    }
}

pub(super) fn first_addr(addr: impl ToSocketAddrs, what: &str) -> Result<SocketAddr> {
    let mut addrs = addr
        .to_socket_addrs()
        .with_context(|| format!("resolve {what:?}"))?;
    addrs
        .next()
        .ok_or_else(|| anyhow!("{what:?} resolves to no address"))
}

pub(super) fn request_messages(args: &CallArgs) -> Result<Vec<Vec<u8>>> {
    let mut messages = Vec::new();
    for h in &args.data_hex {
        let digits: String = h.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        messages.push(hex::decode(&digits).with_context(|| format!("--data-hex {h:?}"))?);
    }
    for path in &args.data_file {
        messages.push(std::fs::read(path).with_context(|| format!("read {}", path.display()))?);
    }
    messages.extend(args.text.iter().map(|t| grpc::text_message(t)));
    if args.data_stdin {
        let mut message = Vec::new();
        std::io::stdin()
            .read_to_end(&mut message)
            .context("read stdin")?;
        messages.push(message);
    }
    Ok(messages)
}

/// Pseudo-headers, gRPC defaults (which `-H` may replace), the user's
/// metadata, and grpc-timeout from `--timeout` unless `-H` gave one.
pub(super) fn request_headers(
    target: &Target,
    raw: &[String],
    timeout: Option<Duration>,
) -> Result<Fields> {
    let ua = concat!("vimanad-call/", env!("CARGO_PKG_VERSION"));
    let mut headers: Fields = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", &target.authority),
        (":path", &target.path),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", ua),
    ]
    .map(|(n, v)| (n.to_owned(), v.to_owned()))
    .into();
    for h in raw {
        let (name, value) = grpc::parse_header(h).map_err(|e| anyhow!(e))?;
        if ["content-type", "te", "user-agent"].contains(&name.as_str()) {
            headers.retain(|(n, _)| *n != name);
        }
        headers.push((name, value));
    }
    if let Some(t) = timeout.filter(|_| find(&headers, "grpc-timeout").is_none()) {
        headers.push(("grpc-timeout".into(), grpc::grpc_timeout(t)));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_from_url() {
        let t = Target::parse("https://example.com/vimana.example.v1.Echo/Unary").unwrap();
        let want = (
            "example.com",
            "example.com",
            443,
            "/vimana.example.v1.Echo/Unary",
        );
        assert_eq!(
            (
                t.authority.as_str(),
                t.host.as_str(),
                t.port,
                t.path.as_str()
            ),
            want
        );
        let t = Target::parse("https://[::1]:4433/a.B/C").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.host.as_str(), t.port),
            ("[::1]:4433", "::1", 4433)
        );
        for bad in [
            "http://example.com/a.B/C",
            "https://example.com",
            "https://u@h/a.B/C",
            "/a.B/C",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolve_forms() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(resolve("127.0.0.1:4433").unwrap(), addr("127.0.0.1:4433"));
        assert_eq!(resolve("[::1]:80").unwrap(), addr("[::1]:80"));
        assert_eq!(resolve("::1").unwrap(), addr("[::1]:443"));
        assert_eq!(resolve("[::1]").unwrap(), addr("[::1]:443"));
        assert_eq!(resolve("127.0.0.1").unwrap(), addr("127.0.0.1:443"));
        assert_eq!(resolve("localhost:9").unwrap().port(), 9);
        assert!(resolve("localhost:h3").is_err());
    }

    #[test]
    fn request_header_list() {
        let t = Target::parse("https://example.com:8443/a.B/C").unwrap();
        let raw = [
            "user-agent: mine".to_owned(),
            "Vimana-Version: 2.0.0".to_owned(),
        ];
        let h = request_headers(&t, &raw, Some(Duration::from_millis(1500))).unwrap();
        assert_eq!(h[0], (":method".to_owned(), "POST".to_owned()));
        let want = [
            (":authority", "example.com:8443"),
            (":path", "/a.B/C"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("user-agent", "mine"),
            ("vimana-version", "2.0.0"),
            ("grpc-timeout", "1500m"),
        ];
        for (name, value) in want {
            assert_eq!(find(&h, name), Some(value));
            assert_eq!(h.iter().filter(|(n, _)| n == name).count(), 1);
        }
        // An explicit grpc-timeout wins over --timeout.
        let h = request_headers(
            &t,
            &["grpc-timeout: 1S".into()],
            Some(Duration::from_secs(9)),
        )
        .unwrap();
        assert_eq!(
            h.iter()
                .filter(|(n, _)| n == "grpc-timeout")
                .collect::<Vec<_>>()
                .len(),
            1
        );
        assert_eq!(find(&h, "grpc-timeout"), Some("1S"));
        assert!(request_headers(&t, &[":path: /x".into()], None).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            crate::cli::parse_duration("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(crate::cli::parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(crate::cli::parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(
            crate::cli::parse_duration("1.5m"),
            Ok(Duration::from_secs(90))
        );
        for bad in ["5h", "s", "", "-1s"] {
            assert!(crate::cli::parse_duration(bad).is_err(), "{bad}");
        }
    }
}
