//! Section E (issue 15): vimanad's RSS against the number of clients that
//! stop reading. `--shards 1`, the node's default limits (the binary's
//! own: `VIMANAD_BIN` compares builds). For each count in
//! `--stalled-connections` (default 0,2,4,8,16): that many QUIC
//! connections of the abusive aioquic peer (tests/peers/aioquic_abuse.py)
//! each open `--stalled-streams` (default 256) server-streaming calls of
//! 100 MB of 1 KiB messages and never grant more flow-control credit; the
//! peak of vimanad's VmRSS while they hold (sampled every 50 ms for
//! `--stalled-hold`, default 5 s), then its RSS `settle` after they left.
//! The counts run one after the other on one node (as abusers would come
//! and go); the baseline is the RSS after one well-behaved call.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::args::Args;
use crate::node::{Target, DOMAIN};
use crate::report::{mib, table};
use crate::system::status_kib;

const SERVER_STREAM: &str = "/vimana.example.v1.Echo/ServerStream";

pub async fn section(args: &Args, trouble: &mut Vec<String>) {
    let target = Target::start(1, "info", &[]).await;
    let pid = target.pid().to_string();
    let listen = target.node.listen;
    // One well-behaved stream first: the baseline has its buffers set up.
    let request = hex(&stream_request());
    abuse(listen, &request, 1, 1, 0.2, trouble);
    tokio::time::sleep(args.settle()).await;
    let baseline = status_kib(&pid, "VmRSS");
    let mut rows = Vec::new();
    for &connections in &args.stalled_connections {
        let peak = Arc::new(AtomicU64::new(status_kib(&pid, "VmRSS")));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done, pid) = (Arc::clone(&peak), Arc::clone(&done), pid.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    peak.fetch_max(status_kib(&pid, "VmRSS"), Ordering::AcqRel);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        if connections > 0 {
            let hold = args.stalled_hold.as_secs_f64();
            abuse(
                listen,
                &request,
                connections,
                args.stalled_streams,
                hold,
                trouble,
            );
        }
        done.store(true, Ordering::Release);
        let _ = sampler.join();
        tokio::time::sleep(args.settle()).await;
        let after = status_kib(&pid, "VmRSS");
        let peak = peak.load(Ordering::Acquire);
        eprintln!("stalled: {connections} connections: RSS peak {peak} KiB, after {after} KiB");
        rows.push(vec![
            connections.to_string(),
            (connections * args.stalled_streams).to_string(),
            mib(baseline),
            mib(peak),
            mib(peak.saturating_sub(baseline)),
            mib(after),
        ]);
    }
    println!(
        "\nE. vimanad RSS with clients that stop reading ({}; {} calls of 100 MB per connection, held {:?})",
        common_bin(),
        args.stalled_streams,
        args.stalled_hold
    );
    table(
        args.markdown,
        &[
            "stalled connections",
            "calls",
            "RSS baseline",
            "RSS peak",
            "growth",
            "RSS after they left",
        ],
        &rows,
    );
    target.remove().await;
}

fn common_bin() -> String {
    crate::common::vimanad().to_owned()
}

fn stream_request() -> Vec<u8> {
    use prost::Message;
    vimana_example::pb::StreamRequest {
        message: "s".repeat(1024),
        count: 100_000,
        interval_ms: 0,
    }
    .encode_to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the abusive peer: `connections` × `streams` stalled calls held for
/// `hold_s`, then it leaves.
fn abuse(
    listen: std::net::SocketAddr,
    message_hex: &str,
    connections: usize,
    streams: usize,
    hold_s: f64,
    trouble: &mut Vec<String>,
) {
    let spec = serde_json::json!({
        "mode": "stall", "connect": listen.to_string(), "authority": DOMAIN,
        "path": SERVER_STREAM, "message_hex": message_hex,
        "connections": connections, "streams": streams, "hold_s": hold_s,
        "read_after": false, "timeout_s": 120,
    });
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/aioquic_abuse.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with aioquic (scripts/setup.sh installs it)");
    use std::io::Write;
    let _ = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(spec.to_string().as_bytes());
    match child.wait_with_output() {
        Ok(out) if out.status.success() => {
            let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let calls = result["calls"].as_array().map_or(&[][..], |c| c.as_slice());
            let answered = calls.iter().filter(|c| c["headers"] == true).count();
            eprintln!(
                "stalled: {connections} connections: {} calls opened, {answered} got response headers; {}",
                result["opened"], result["errors"]
            );
        }
        Ok(out) => trouble.push(format!(
            "stalled: the abusive peer failed ({connections} connections): {}",
            String::from_utf8_lossy(&out.stdout)
        )),
        Err(e) => trouble.push(format!("stalled: the abusive peer: {e}")),
    }
}
