//! CRI clients nobody here wrote reach vimanad whatever `:authority` they
//! send: Python grpcio (its default authority for `unix:` targets), crictl,
//! and hand-made HTTP/2 with a socket path or no `:authority`; malformed
//! HTTP/2 ends only that connection.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::kubelet::tool;
use common::*;
use k8s_cri::v1 as cri;

/// Version over Python grpcio, without `grpc.default_authority`; the
/// request is an empty message, encoded by hand (no generated code).
const GRPCIO: &str = r#"
import sys, grpc
channel = grpc.insecure_channel("unix://" + sys.argv[1])
version = channel.unary_unary("/runtime.v1.RuntimeService/Version")
reply = version(b"", timeout=10)
sys.stdout.write(reply.hex())
"#;

#[tokio::test]
async fn python_grpcio_with_its_default_authority() {
    let node = Node::start().await;
    let out = Command::new("python3")
        .args(["-c", GRPCIO])
        .arg(node.socket())
        .output()
        .expect("python3");
    if !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("No module named 'grpc'")
    {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "grpcio is missing (scripts/setup.sh installs it)"
        );
        eprintln!("SKIPPED: python3 has no grpcio (scripts/setup.sh installs it)");
        return;
    }
    assert!(
        out.status.success(),
        "grpcio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: cri::VersionResponse =
        prost::Message::decode(&hex::decode(out.stdout).unwrap()[..]).unwrap();
    assert_eq!(reply.runtime_name, "vimanad");
    assert_eq!(reply.runtime_api_version, "v1");
}

#[tokio::test]
async fn crictl_version_and_info() {
    let node = Node::start().await;
    let Some(crictl) = tool("crictl") else {
        return;
    };
    let endpoint = format!("unix://{}", node.socket().display());
    let out = Command::new(crictl)
        .args(["--runtime-endpoint", &endpoint, "version"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("RuntimeName:  vimanad"), "{stdout}");
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK literal without indexing, new name, raw strings (short ones).
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0, name.len() as u8];
    out.extend(name.as_bytes());
    out.push(value.len() as u8);
    out.extend(value.as_bytes());
    out
}

/// A whole HTTP/2 exchange by hand: preface, SETTINGS, one Version call
/// with `authority` (or none), the request in a DATA frame. Returns what
/// the server sent until it closed or went quiet.
fn raw_version_call(socket: &std::path::Path, authority: Option<&str>) -> Vec<u8> {
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/runtime.v1.RuntimeService/Version"),
    ] {
        block.extend(literal(n, v));
    }
    if let Some(a) = authority {
        block.extend(literal(":authority", a));
    }
    block.extend(literal("content-type", "application/grpc"));
    block.extend(literal("te", "trailers"));
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x4, 0, 0, &[]));
    // HEADERS with PADDED (3 bytes), then CONTINUATION with the rest.
    let (a, b) = block.split_at(10);
    let mut headers = vec![3];
    headers.extend_from_slice(a);
    headers.extend([0, 0, 0]);
    input.extend(frame(0x1, 0x8, 1, &headers));
    input.extend(frame(0x9, 0x4, 1, b));
    input.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]));
    exchange(socket, &input)
}

fn exchange(socket: &std::path::Path, input: &[u8]) -> Vec<u8> {
    let mut conn = UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    conn.write_all(input).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if contains(&out, b"vimanad") && contains(&out, b"grpc-status") {
            break;
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn socket_path_and_missing_authorities_are_served() {
    let mut node = Node::start().await;
    let socket = node.socket();
    for authority in [
        Some(socket.to_str().unwrap()),
        Some(""),
        None,
        Some("localhost"),
    ] {
        let out = raw_version_call(&socket, authority);
        // The reply message names the runtime; h2 would have reset the
        // stream (RST_STREAM, type 3) without the rewriter.
        assert!(contains(&out, b"vimanad"), "{authority:?}: {out:?}");
    }
    // Malformed HTTP/2 (a CONTINUATION with no HEADERS before it, HPACK
    // garbage) ends that connection; the server keeps serving others.
    for bad in [
        frame(0x9, 0x4, 1, b"x"),
        frame(0x1, 0x4, 1, &[0xff, 0x7f]),
        frame(0x1, 0x4, 0, &[0x82]),
    ] {
        let mut input = PREFACE.to_vec();
        input.extend(bad);
        let out = exchange(&socket, &input);
        assert!(!contains(&out, b"vimanad"));
    }
    let version = node
        .runtime
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.runtime_name, "vimanad");
    assert!(
        node.log().contains("malformed HTTP/2 from the client"),
        "{}",
        node.log()
    );
}
