//! Command-line options (see the module doc of main.rs).

use std::time::Duration;

/// What to measure, and how much of it.
pub struct Args {
    pub quick: bool,
    pub markdown: bool,
    pub sections: Vec<char>,
    pub duration: Duration,
    pub rounds: usize,
    pub hs_workers: usize,
    pub hs_concurrency: usize,
    pub pin: bool,
    pub idle_connections: usize,
    pub pods: usize,
    pub trials: usize,
    pub probes_per_shard: usize,
    pub probe_streams: usize,
    pub streams: usize,
    pub load_connections: usize,
    pub pool: usize,
    pub republish_every: String,
    pub stalled_connections: Vec<usize>,
    pub stalled_streams: usize,
    pub stalled_hold: Duration,
}

impl Args {
    /// How long vimanad's memory is left to settle before its RSS is read.
    pub fn settle(&self) -> Duration {
        Duration::from_millis(if self.quick { 300 } else { 2000 })
    }
}

fn parse_duration(s: &str) -> Duration {
    let (number, scale) = match s.strip_suffix("ms") {
        Some(ms) => (ms, 1e-3),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    let secs: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("duration {s:?}: e.g. 5s, 500ms"));
    Duration::from_secs_f64(secs * scale)
}

pub fn args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let quick = raw.iter().any(|a| a == "--quick");
    let cores = core_affinity::get_core_ids().map_or(1, |c| c.len());
    let mut a = Args {
        quick,
        markdown: false,
        sections: vec!['a', 'b', 'c', 'd'],
        duration: Duration::from_millis(if quick { 500 } else { 5000 }),
        rounds: if quick { 1 } else { 3 },
        // One client thread (and socket) per core the shard leaves free,
        // at least two.
        hs_workers: cores.saturating_sub(1).max(2),
        hs_concurrency: 32,
        pin: true,
        idle_connections: if quick { 500 } else { 10_000 },
        pods: if quick { 5 } else { 100 },
        trials: if quick { 2 } else { 10 },
        probes_per_shard: 2,
        probe_streams: 4,
        streams: 64,
        load_connections: 4,
        pool: if quick { 10 } else { 100 },
        republish_every: "1ms".into(),
        stalled_connections: if quick {
            vec![0, 1]
        } else {
            vec![0, 2, 4, 8, 16]
        },
        stalled_streams: if quick { 16 } else { 256 },
        stalled_hold: Duration::from_secs(if quick { 1 } else { 5 }),
    };
    let mut it = raw.into_iter();
    let value = |it: &mut std::vec::IntoIter<String>, name: &str| -> String {
        it.next().unwrap_or_else(|| panic!("{name} takes a value"))
    };
    let number = |s: String, name: &str| -> usize {
        s.parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("{name} takes a positive number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" | "--bench" => {}
            "--markdown" => a.markdown = true,
            "--no-pin" => a.pin = false,
            "--sections" => {
                a.sections = value(&mut it, &arg)
                    .split(',')
                    .map(|s| match s.trim() {
                        "a" | "handshakes" => 'a',
                        "b" | "memory" => 'b',
                        "c" | "publication" => 'c',
                        "d" | "republish" => 'd',
                        "e" | "stalled" => 'e',
                        other => panic!("unknown section {other:?}"),
                    })
                    .collect()
            }
            "--duration" => a.duration = parse_duration(&value(&mut it, &arg)),
            "--rounds" => a.rounds = number(value(&mut it, &arg), &arg),
            "--hs-workers" => a.hs_workers = number(value(&mut it, &arg), &arg),
            "--hs-concurrency" => a.hs_concurrency = number(value(&mut it, &arg), &arg),
            "--idle-connections" => a.idle_connections = number(value(&mut it, &arg), &arg),
            "--pods" => a.pods = number(value(&mut it, &arg), &arg),
            "--trials" => a.trials = number(value(&mut it, &arg), &arg),
            "--probes-per-shard" => a.probes_per_shard = number(value(&mut it, &arg), &arg),
            "--probe-streams" => a.probe_streams = number(value(&mut it, &arg), &arg),
            "--streams" => a.streams = number(value(&mut it, &arg), &arg),
            "--load-connections" => a.load_connections = number(value(&mut it, &arg), &arg),
            "--pool" => a.pool = number(value(&mut it, &arg), &arg),
            "--republish-every" => a.republish_every = value(&mut it, &arg),
            "--stalled-connections" => {
                a.stalled_connections = value(&mut it, &arg)
                    .split(',')
                    .map(|n| n.trim().parse().expect("--stalled-connections: e.g. 0,2,4"))
                    .collect()
            }
            "--stalled-streams" => a.stalled_streams = number(value(&mut it, &arg), &arg),
            "--stalled-hold" => a.stalled_hold = parse_duration(&value(&mut it, &arg)),
            other => panic!("unknown argument {other:?}: see the doc of benches/capacity/main.rs"),
        }
    }
    a
}
