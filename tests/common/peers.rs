//! The independent gRPC clients the data-plane tests drive, behind one
//! spec and one result shape (see tests/peers/aioquic_grpc.py): aioquic
//! over HTTP/3, grpcio over HTTP/2 + TLS (tests/peers/grpcio_grpc.py),
//! verifying the node's own certificate. A table of cases written once runs
//! over both (tests/common/matrix.rs).

use std::path::Path;
use std::process::{Command, Stdio};

use super::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/3 over QUIC (UDP): aioquic.
    H3,
    /// HTTP/2 over TLS (TCP, the same port): grpcio.
    H2,
}

impl Transport {
    pub fn script(self) -> &'static str {
        match self {
            Transport::H3 => "tests/peers/aioquic_grpc.py",
            Transport::H2 => "tests/peers/grpcio_grpc.py",
        }
    }
}

/// Names the test certificate is for: every authority the cases call.
pub const CERT_NAMES: [&str; 5] = [
    "localhost",
    "example.com",
    "example.org",
    "nowhere.net",
    "nope.example",
];

/// A certificate and key (PEM files) for [`CERT_NAMES`], made once per
/// test process. grpcio checks each call's :authority against the
/// certificate, so a node that HTTP/2 tests call serves this one
/// (`--tls-cert`, `--tls-key`: see [`tls_args`]).
pub fn test_cert() -> &'static (std::path::PathBuf, std::path::PathBuf) {
    static CERT: std::sync::OnceLock<(std::path::PathBuf, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vimana-test-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names: Vec<String> = CERT_NAMES.iter().map(|n| n.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        (cert, key)
    })
}

/// `serve` flags for the test certificate.
pub fn tls_args() -> Vec<String> {
    let (cert, key) = test_cert();
    vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ]
}

/// Starts a node for `transport` with `extra` flags (HTTP/2: with the
/// test certificate).
pub async fn start_for(transport: Transport, extra: &[&str]) -> Node {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    if transport == Transport::H2 {
        args.extend(tls_args());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start_with(&args).await
}

/// The certificate the node serves: the test one if it was given it,
/// else its self-signed one.
pub fn node_cert(node: &Node) -> std::path::PathBuf {
    let own = node.state_dir().join("tls/cert.pem");
    if own.exists() {
        own
    } else {
        test_cert().0.clone()
    }
}

/// Runs `calls` (one connection per authority) over `transport`; returns
/// the per-call results.
pub fn peer(
    transport: Transport,
    node: &Node,
    authority: &str,
    calls: serde_json::Value,
    concurrent: bool,
) -> Vec<serde_json::Value> {
    let mut spec = serde_json::json!({
        "connect": node.listen.to_string(),
        "authority": authority,
        "calls": calls,
        "concurrent": concurrent,
        "timeout_s": 20,
    });
    if transport == Transport::H2 {
        spec["ca_cert"] = node_cert(node).display().to_string().into();
    }
    run_script(transport.script(), &spec)["calls"]
        .as_array()
        .unwrap()
        .clone()
}

/// Runs a peer script on `spec`; its whole JSON result.
pub fn run_script(script: &str, spec: &serde_json::Value) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 (scripts/setup.sh installs aioquic, grpcio, h2)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{} prints JSON ({e})", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {result}",
        script.display()
    );
    result
}

/// One plain HTTP/2 request with curl (Debian's, nghttp2 inside) over TLS
/// with the node's certificate, `authority` resolved to the node: the
/// status and the response headers (lower-case names).
pub fn curl_h2(
    node: &Node,
    authority: &str,
    path: &str,
    args: &[&str],
) -> (u16, Vec<(String, String)>) {
    let port = node.listen.port();
    let out = Command::new("curl")
        .args(["-s", "--http2", "--max-time", "10", "-o", "/dev/null"])
        .args(["-D", "-", "-w", "%{http_version}"])
        .arg("--cacert")
        .arg(node_cert(node))
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-H", &format!("host: {authority}")])
        .args(args)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "curl failed: {text}");
    assert!(text.ends_with('2'), "not HTTP/2: {text}");
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}
