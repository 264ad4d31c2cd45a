//! Command-line options (see the module doc of main.rs).

use std::time::Duration;

/// Which gRPC call the load is made of.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum Kind {
    /// `Echo/Unary`: one 64-byte EchoRequest, one EchoReply.
    Unary,
    /// `Echo/ServerStream`: one StreamRequest, `--messages` EchoReplies.
    ServerStream,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Unary => "unary",
            Kind::ServerStream => "server-stream",
        }
    }
}

/// Whether the Caddy path runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CaddyChoice {
    /// When a Caddy ≥ 2.7 is found (the default).
    IfFound,
    /// `--caddy`: it must be found, or the bench fails.
    Required,
    /// `--no-caddy`.
    Off,
}

pub struct Args {
    pub duration: Duration,
    pub streams: Vec<usize>,
    pub connections: usize,
    pub rounds: usize,
    pub shards: Vec<usize>,
    pub kinds: Vec<Kind>,
    /// Replies per server-streaming call.
    pub messages: u32,
    pub caddy: CaddyChoice,
    /// Also drive vimanad and Caddy with oha.
    pub oha: bool,
    /// Send each request's FIN in a packet of its own (see the module doc).
    pub fin_apart: bool,
    pub markdown: bool,
    /// `--calls N`: exactly N unary calls, then stop (counted.rs).
    pub calls: Option<u64>,
    /// `--before-calls CMD`: with `--calls`, `sh -c CMD` once the pod runs,
    /// before the calls, with VIMANAD_PID set (e.g. to attach a tracer).
    pub before_calls: Option<String>,
}

pub fn parse_duration(s: &str) -> Duration {
    let (number, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1e-3)
    } else {
        (s.strip_suffix('s').unwrap_or(s), 1.0)
    };
    let secs: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("--duration {s:?}: e.g. 5, 5s, 500ms"));
    assert!(secs > 0.0, "--duration must be positive");
    Duration::from_secs_f64(secs * scale)
}

fn parse_list(name: &str, s: &str) -> Vec<usize> {
    let list: Vec<usize> = s
        .split(',')
        .map(|n| n.trim().parse().unwrap_or_else(|_| panic!("{name} {s:?}")))
        .collect();
    assert!(list.iter().all(|&n| n > 0), "{name} takes positive numbers");
    list
}

fn parse_kind(s: &str) -> Vec<Kind> {
    match s {
        "unary" => vec![Kind::Unary],
        "server-stream" | "stream" => vec![Kind::ServerStream],
        "both" => vec![Kind::Unary, Kind::ServerStream],
        _ => panic!("--kind {s:?}: unary, server-stream or both"),
    }
}

pub fn args() -> Args {
    let (mut duration, mut streams, mut connections, mut rounds, mut shards) =
        (None, None, 4, None, vec![1]);
    let (mut kinds, mut messages, mut caddy, mut oha) = (None, 10, CaddyChoice::IfFound, false);
    let (mut quick, mut markdown, mut fin_apart) = (false, false, false);
    let (mut calls, mut before_calls) = (None, None);
    let mut it = std::env::args().skip(1);
    let value = |it: &mut dyn Iterator<Item = String>, name: &str| {
        it.next().unwrap_or_else(|| panic!("{name} takes a value"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--duration" => duration = Some(parse_duration(&value(&mut it, "--duration"))),
            "--streams" | "--concurrency" => {
                streams = Some(parse_list("--streams", &value(&mut it, "--streams")))
            }
            "--connections" => {
                connections = parse_list("--connections", &value(&mut it, "--connections"))[0]
            }
            "--rounds" => rounds = Some(parse_list("--rounds", &value(&mut it, "--rounds"))[0]),
            "--shards" => shards = parse_list("--shards", &value(&mut it, "--shards")),
            "--kind" => kinds = Some(parse_kind(&value(&mut it, "--kind"))),
            "--messages" => {
                messages = parse_list("--messages", &value(&mut it, "--messages"))[0] as u32
            }
            "--caddy" => caddy = CaddyChoice::Required,
            "--no-caddy" => caddy = CaddyChoice::Off,
            "--oha" => oha = true,
            "--quick" => quick = true,
            "--fin-apart" => fin_apart = true,
            "--markdown" => markdown = true,
            "--before-calls" => before_calls = Some(value(&mut it, "--before-calls")),
            "--calls" => calls = Some(parse_list("--calls", &value(&mut it, "--calls"))[0] as u64),
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other:?}: see the doc of benches/e2e/main.rs"),
        }
    }
    // --quick (CI): short windows, 2 rounds, both call kinds so that the
    // streaming code cannot rot either.
    let defaults = match quick {
        true => (
            Duration::from_millis(500),
            vec![1, 16],
            2,
            vec![Kind::Unary, Kind::ServerStream],
        ),
        false => (
            Duration::from_secs(5),
            vec![1, 16, 64, 256],
            3,
            vec![Kind::Unary],
        ),
    };
    Args {
        duration: duration.unwrap_or(defaults.0),
        streams: streams.unwrap_or(defaults.1),
        connections,
        rounds: rounds.unwrap_or(defaults.2),
        shards,
        kinds: kinds.unwrap_or(defaults.3),
        messages,
        caddy,
        oha,
        fin_apart,
        markdown,
        calls,
        before_calls,
    }
}
