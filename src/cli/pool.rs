//! `vimanad pool`: the routing snapshot a running node's shards read, from
//! `/debug/pool` on its metrics listener, printed as a tree: domains →
//! services → versions → endpoints, with the calls outstanding on each
//! shard, the generation and when it was published. `--json` prints the
//! endpoint's answer as it is.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

#[derive(clap::Args)]
pub struct PoolArgs {
    /// The node's metrics listener (`serve --metrics-listen`).
    #[arg(long, env = "VIMANAD_METRICS_LISTEN", default_value = "127.0.0.1:9475")]
    address: SocketAddr,
    /// Print the JSON of `/debug/pool` instead of the tree.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PoolArgs) -> anyhow::Result<()> {
    let body = fetch(args.address, "/debug/pool")?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        out.write_all(body.as_bytes())
    } else {
        let view: Value = serde_json::from_str(&body)
            .with_context(|| format!("the answer of {} is not JSON", args.address))?;
        out.write_all(render(&view).as_bytes())
    };
    match written {
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("write to stdout"),
    }
}

/// `GET path` over HTTP/1.0 (the server closes after its answer); the body
/// of a 200 answer.
fn fetch(address: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).with_context(
        || format!("connect to the metrics listener {address} (is `vimanad serve` running there? --address)"),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: application/json\r\n\r\n"
    )?;
    let mut response = Vec::new();
    // At most 64 MiB: a snapshot of every pod of a node is far smaller.
    stream
        .take(64 << 20)
        .read_to_end(&mut response)
        .with_context(|| format!("read the answer of {address}"))?;
    let response = String::from_utf8(response).context("the answer is not UTF-8")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP answer from the metrics listener")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        bail!("GET {path} on {address}: HTTP {status}: {}", body.trim());
    }
    Ok(body.to_owned())
}

fn numbers(v: &Value) -> String {
    let list: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(|n| n.to_string()).collect())
        .unwrap_or_default();
    format!("[{}]", list.join(" "))
}

/// The tree an operator reads.
pub fn render(view: &Value) -> String {
    let mut out = format!(
        "generation {}, published {}\n",
        view["generation"],
        view["published_at"].as_str().unwrap_or("?")
    );
    let empty = serde_json::Map::new();
    let domains = view["domains"].as_object().unwrap_or(&empty);
    if domains.is_empty() {
        out.push_str("(no running component)\n");
    }
    for (domain, services) in domains {
        out.push_str(&format!("{domain}\n"));
        for (service, versions) in services.as_object().unwrap_or(&empty) {
            out.push_str(&format!("  {service}\n"));
            for (version, v) in versions.as_object().unwrap_or(&empty) {
                out.push_str(&format!(
                    "    {version}  in flight per shard {}\n",
                    numbers(&v["in_flight_per_shard"])
                ));
                for e in v["endpoints"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "      {}  outstanding per shard {}  incarnation {}  {}\n",
                        e["container"].as_str().unwrap_or("?"),
                        numbers(&e["outstanding_per_shard"]),
                        e["incarnation"],
                        e["socket"].as_str().unwrap_or("?"),
                    ));
                }
            }
        }
    }
    out
}
