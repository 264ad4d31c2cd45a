//! The operator's endpoint, read by the real Prometheus (Debian's package)
//! and checked by `promtool`: CRI calls, pods by state, data-plane calls
//! by status, the process collector, /healthz, /readyz and /debug/pool;
//! and README's table of every metric family against a real exposition.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const V1: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");

/// A plain HTTP/1.1 GET; returns (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the one sample of `exposition` whose line starts with
/// `series` (name and labels as written).
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn tool(name: &str) -> Option<&'static str> {
    let path: &'static str = match name {
        "prometheus" => "/usr/bin/prometheus",
        _ => "/usr/bin/promtool",
    };
    if Path::new(path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{path} is missing (scripts/setup.sh installs Debian's prometheus)"
    );
    eprintln!("skipping: {path} is missing (apt-get install prometheus)");
    None
}

struct Prometheus {
    child: Child,
    web: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(binary: &str, target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let web: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: vimanad\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Prometheus {
            child,
            web,
            _dir: dir,
        }
    }

    fn get(&self, path: &str) -> String {
        let Ok(mut s) = TcpStream::connect(self.web) else {
            return String::new();
        };
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        response
    }

    /// An instant query's first value, once Prometheus has one.
    fn query_until(&self, query: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(self.web) {
                let _ = write!(
                    s,
                    "GET /api/v1/query?query={encoded} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                );
                let mut response = String::new();
                let _ = s.read_to_string(&mut response);
                let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                // The body may be chunked: find the JSON object in it.
                if let Some(start) = body.find('{') {
                    let end = body.rfind('}').unwrap_or(body.len() - 1);
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body[start..=end]) {
                        if let Some(value) = v["data"]["result"][0]["value"][1]
                            .as_str()
                            .and_then(|s| s.parse::<f64>().ok())
                        {
                            if ok(value) {
                                return value;
                            }
                        }
                        last = v.to_string();
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let log =
            std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default();
        let targets = self.get("/api/v1/targets");
        panic!("Prometheus never answered {query} as expected; last answer: {last}\ntargets: {targets}\nlog: {log}");
    }
}

#[tokio::test]
async fn prometheus_scrapes_what_the_node_did() {
    let (Some(prometheus), Some(promtool)) = (tool("prometheus"), tool("promtool")) else {
        return;
    };
    let mut node = Node::start().await;
    let addr = node.metrics_addr();
    assert_eq!(get(addr, "/healthz").0, 200);
    assert_eq!(get(addr, "/readyz").0, 200);
    let pod = node.running_pod("metrics", V1).await;

    // Data-plane calls: 5 answered by the component, 2 for no component.
    for i in 0..5 {
        let (code, _, err) = vimanad_call(
            &node,
            "example.com",
            "/vimana.example.v1.Echo/Unary",
            &["--text", &format!("m{i}")],
        );
        assert_eq!(code, 0, "{err}");
    }
    for _ in 0..2 {
        let (code, _, _) = vimanad_call(&node, "nowhere.test", "/a.B/C", &["--text", "x"]);
        assert_eq!(code, 12, "UNIMPLEMENTED");
    }

    let (status, exposition) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &exposition,
            r#"vimanad_cri_calls_total{code="OK",method="RunPodSandbox"}"#
        ),
        Some(1.0),
        "{exposition}"
    );
    assert_eq!(
        sample(&exposition, r#"vimanad_pods{state="running"}"#),
        Some(1.0)
    );
    assert!(sample(&exposition, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6);
    assert!(sample(&exposition, "process_open_fds").unwrap_or(0.0) > 3.0);
    let ok_calls: f64 = exposition
        .lines()
        .filter(|l| l.starts_with("vimanad_grpc_calls_total{") && l.contains(r#"code="OK""#))
        .filter(|l| l.contains(r#"domain="example.com""#) && l.contains(r#"version="1.0.0""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(ok_calls, 5.0, "{exposition}");
    let unrouted: f64 = exposition
        .lines()
        .filter(|l| l.starts_with("vimanad_grpc_calls_total{") && l.contains(r#"domain="(none)""#))
        .filter(|l| l.contains(r#"code="Unimplemented""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(unrouted, 2.0, "{exposition}");

    // promtool accepts the exposition as Prometheus text format.
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // /debug/pool shows the running endpoint.
    let (status, pool) = get(addr, "/debug/pool");
    assert_eq!(status, 200);
    let pool: serde_json::Value = serde_json::from_str(&pool).unwrap();
    let endpoints = &pool["domains"]["example.com"][SERVICE]["1.0.0"]["endpoints"];
    assert_eq!(
        endpoints[0]["container"].as_str(),
        Some(pod.as_str()),
        "{pool}"
    );
    assert!(pool["generation"].as_u64().unwrap() >= 1);

    // The real Prometheus scrapes it and answers queries over its API.
    let prom = Prometheus::start(prometheus, addr);
    prom.query_until(r#"vimanad_pods{state="running"}"#, |v| v == 1.0);
    prom.query_until(
        r#"sum(vimanad_grpc_calls_total{domain="example.com",code="OK"})"#,
        |v| v == 5.0,
    );
    prom.query_until(
        r#"vimanad_cri_calls_total{method="StartContainer",code="OK"}"#,
        |v| v >= 1.0,
    );
    prom.query_until(r#"up{job="vimanad"}"#, |v| v == 1.0);

    node.remove_running_pod(&pod).await;
    prom.query_until(r#"vimanad_pods{state="running"}"#, |v| v == 0.0);
}

#[tokio::test]
async fn the_endpoint_can_be_switched_off_and_answers_only_its_paths() {
    let node = Node::start().await;
    let addr = node.metrics_addr();
    assert_eq!(get(addr, "/nope").0, 404);
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    // Garbage ends that connection only.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    let _ = s.read_to_string(&mut String::new());
    assert_eq!(get(addr, "/healthz").0, 200);

    let off = Node::start_with(&["--metrics-listen", "off"]).await;
    assert!(!off.log().contains("serving metrics"), "{}", off.log());
}

/// A GET with an `Accept` header; returns (status, content type, body).
fn get_accepting(addr: SocketAddr, path: &str, accept: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let kind = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (status, kind, body.to_owned())
}

#[tokio::test]
async fn openmetrics_when_asked() {
    let mut node = Node::start().await;
    let addr = node.metrics_addr();
    let _pod = node.running_pod("om", V1).await;
    let (code, _, err) = vimanad_call(
        &node,
        "example.com",
        "/vimana.example.v1.Echo/Unary",
        &["--text", "x"],
    );
    assert_eq!(code, 0, "{err}");
    // What Prometheus 2.42 sends: it then parses OpenMetrics strictly (the
    // Prometheus test above scrapes this way).
    let (status, kind, body) = get_accepting(
        addr,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    );
    assert_eq!(status, 200);
    assert!(
        kind.starts_with("application/openmetrics-text; version=1.0.0"),
        "{kind}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("# TYPE vimanad_cri_calls counter\n"),
        "{body}"
    );
    assert!(
        body.contains(r#"vimanad_cri_calls_total{method="RunPodSandbox",code="OK"} 1"#)
            || body.contains(r#"vimanad_cri_calls_total{code="OK",method="RunPodSandbox"} 1"#),
        "{body}"
    );
    assert!(body.contains("# TYPE vimanad_grpc_call_duration_seconds histogram\n"));
    assert!(body.contains(r#"le="+Inf"}"#), "{body}");
    assert!(!body.contains("# TYPE vimanad_cri_calls_total"), "{body}");
    // Without asking: the Prometheus text format.
    let (_, kind, body) = get_accepting(addr, "/metrics", "text/plain;version=0.0.4");
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    assert!(body.contains("# TYPE vimanad_cri_calls_total counter"));
    assert!(!body.contains("# EOF"));
}

/// `vimanad pool` on a running node: the tree from /debug/pool, with the
/// calls in flight counted on their endpoint and shard.
#[tokio::test]
async fn vimanad_pool_shows_outstanding_calls_per_endpoint_and_shard() {
    let mut node = Node::start_configured(2, "info", &[]).await;
    let addr = node.metrics_addr();
    let pod = node.running_pod("pool", V1).await;
    let slow = hex::encode(prost::Message::encode_to_vec(
        &vimana_example::pb::EchoRequest {
            message: "slow".into(),
            sleep_ms: 4000,
            ..Default::default()
        },
    ));
    // Two calls held by the component for 4 s each.
    let calls: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(vimanad())
                .arg("call")
                .arg("--connect")
                .arg(node.listen.to_string())
                .arg("https://example.com/vimana.example.v1.Echo/Unary")
                .args(["--data-hex", &slow])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let outstanding = |pool: &serde_json::Value| -> Vec<u64> {
        pool["domains"]["example.com"][SERVICE]["1.0.0"]["endpoints"][0]["outstanding_per_shard"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n.as_u64()).collect())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let per_shard = loop {
        let pool: serde_json::Value = serde_json::from_str(&get(addr, "/debug/pool").1).unwrap();
        let per_shard = outstanding(&pool);
        if per_shard.iter().sum::<u64>() == 2 {
            break per_shard;
        }
        assert!(Instant::now() < deadline, "never 2 outstanding: {pool}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(per_shard.len(), 2, "one figure per shard");

    // The command prints the same, as a tree.
    let out = Command::new(vimanad())
        .args(["pool", "--address", &addr.to_string()])
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{tree}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = format!(
        "      {pod}  outstanding per shard [{} {}]",
        per_shard[0], per_shard[1]
    );
    assert!(tree.starts_with("generation "), "{tree}");
    assert!(tree.contains("published 20"), "{tree}");
    assert!(tree.contains("\nexample.com\n"), "{tree}");
    assert!(tree.contains(&format!("\n  {SERVICE}\n")), "{tree}");
    assert!(
        tree.contains("\n    1.0.0  in flight per shard ["),
        "{tree}"
    );
    assert!(tree.contains(&shown), "{tree}");
    println!("{tree}");

    for mut call in calls {
        assert!(call.wait().unwrap().success());
    }
    let pool: serde_json::Value = serde_json::from_str(&get(addr, "/debug/pool").1).unwrap();
    assert_eq!(outstanding(&pool), [0, 0], "{pool}");
    let json = Command::new(vimanad())
        .args(["pool", "--json", "--address", &addr.to_string()])
        .output()
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed["generation"], pool["generation"]);

    // No node there: a clear error, not a panic.
    let none = Command::new(vimanad())
        .args([
            "pool",
            "--address",
            &format!("127.0.0.1:{}", free_tcp_port()),
        ])
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("connect to the metrics listener"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
}

/// The families of a text exposition: (name, type) from its `# TYPE` lines.
fn exported_families(exposition: &str) -> Vec<(String, String)> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// README.md's metric table (section "Stats and metrics"): (name, type,
/// counted) per row; `counted` is false for a row that says "not counted
/// yet" (declared, so exported at most as a zero, never with samples).
fn readme_families() -> Vec<(String, String, bool)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = readme
        .split_once("\n## Stats and metrics")
        .and_then(|(_, rest)| rest.split("\n## ").next())
        .expect("README.md: a section ## Stats and metrics");
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| {
            let (name, rest) = l.split_once('`')?;
            let cells: Vec<&str> = rest.split('|').map(str::trim).collect();
            let kind = cells.get(1)?.to_string();
            let counted = !rest.contains("not counted yet");
            Some((name.to_owned(), kind, counted))
        })
        .collect()
}

/// Every family a node exports after a few calls is in README's table,
/// with its type, and every row of the table is exported (a row marked
/// "not counted yet" must not have samples): the list stays true.
#[tokio::test]
async fn readme_lists_every_exported_metric_family() {
    let listed = readme_families();
    assert!(listed.len() > 30, "README's metric table: {listed:?}");
    let mut node = Node::start().await;
    let addr = node.metrics_addr();
    let pod = node.running_pod("listed", V1).await;
    let unary = "/vimana.example.v1.Echo/Unary";
    for i in 0..3 {
        let (code, _, err) =
            vimanad_call(&node, "example.com", unary, &["--text", &format!("m{i}")]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, _) = vimanad_call(&node, "nowhere.test", "/a.B/C", &["--text", "x"]);
    assert_eq!(code, 12, "UNIMPLEMENTED");
    // A pull from a registry nobody serves: counted as an error.
    assert!(node.pull("127.0.0.1:1/none:1", None).await.is_err());
    // One call in flight while scraping: EchoRequest{sleep_ms: 3000}.
    let mut held = Command::new(vimanad())
        .args(["call", "--connect", &node.listen.to_string()])
        .arg(format!("https://example.com{unary}"))
        .args(["--data-hex", "18b817"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_millis(2500);
    let exposition = loop {
        let (status, text) = get(addr, "/metrics");
        assert_eq!(status, 200);
        if text.contains("vimanad_grpc_active_calls{") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let exported = exported_families(&exposition);
    let rows = |f: &dyn Fn(&(String, String, bool)) -> bool| -> Vec<String> {
        listed
            .iter()
            .filter(|r| f(r))
            .map(|r| r.0.clone())
            .collect()
    };
    let unlisted: Vec<String> = exported
        .iter()
        .filter(|(name, kind)| !listed.iter().any(|(n, k, _)| n == name && k == kind))
        .map(|(name, kind)| format!("{name} ({kind})"))
        .collect();
    let has_samples = |name: &str| {
        exposition.lines().any(|l| {
            l.strip_prefix(name).is_some_and(|rest| {
                rest.starts_with(['{', ' ', '_']) && !rest.trim_end().ends_with(" 0")
            })
        })
    };
    let is_exported = |name: &str| exported.iter().any(|(n, _)| n == name);
    // Without counting (`--features metrics-off`) the per-component call
    // series have no samples, so their families are absent.
    let counting = !cfg!(feature = "metrics-off");
    let absent = rows(&|(name, _, counted)| {
        *counted && !is_exported(name) && (counting || !name.starts_with("vimanad_grpc_"))
    });
    let counted_now = rows(&|(name, _, counted)| !*counted && has_samples(name));
    assert!(
        unlisted.is_empty() && absent.is_empty() && counted_now.is_empty(),
        "README.md's metric table is not what the node exports:\n\
         exported, not listed (or another type): {unlisted:?}\n\
         listed, not exported: {absent:?}\n\
         listed as not counted yet, but counting: {counted_now:?}\n\
         exposition:\n{exposition}"
    );
    // The control plane's counts where they happen: one start, one failed
    // pull, the pod's records committed.
    let events = r#"vimanad_container_events_total{event="start",reason="ready"}"#;
    assert_eq!(sample(&exposition, events), Some(1.0), "{exposition}");
    let pulls = r#"vimanad_image_pulls_total{result="error"}"#;
    assert_eq!(sample(&exposition, pulls), Some(1.0), "{exposition}");
    let commits = r#"vimanad_state_commit_duration_seconds_count{what="pod_records"}"#;
    assert!(
        sample(&exposition, commits).unwrap_or(0.0) >= 1.0,
        "{exposition}"
    );
    let _ = held.wait();
    node.remove_running_pod(&pod).await;
}
