//! Medians over rounds, the tables (ours, the ratios, oha's) and the
//! issue's targets.

use std::collections::{BTreeMap, HashMap};

use crate::args::Kind;
use crate::measure::Sample;
use crate::oha::OhaSample;

/// The ways a call reaches the component.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum Path {
    Vimanad,
    Ceiling,
    Caddy,
}

impl Path {
    pub fn label(self) -> &'static str {
        match self {
            Path::Vimanad => "vimanad (HTTP/3)",
            Path::Ceiling => "ceiling (HTTP/2 direct)",
            Path::Caddy => "Caddy (HTTP/3 → h2c)",
        }
    }
}

/// (shards, kind, streams, path)
pub type Key = (usize, Kind, usize, Path);

pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A figure with `decimals` decimals, or a dash when there is none.
pub fn cell(x: f64, decimals: usize) -> String {
    match x.is_nan() {
        true => "—".to_owned(),
        false => format!("{x:.decimals$}"),
    }
}

/// A table, as markdown or as aligned text (the columns named in `left`
/// left-aligned, the others right-aligned).
pub fn table(markdown: bool, headers: &[&str], left: &[usize], rows: &[Vec<String>]) {
    if markdown {
        println!("| {} |", headers.join(" | "));
        let align: Vec<&str> = (0..headers.len())
            .map(|i| if left.contains(&i) { "---" } else { "---:" })
            .collect();
        println!("|{}|", align.join("|"));
        for row in rows {
            println!("| {} |", row.join(" | "));
        }
        return;
    }
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([headers[i].chars().count()])
            .max()
            .unwrap()
    };
    let widths: Vec<usize> = (0..headers.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = " ".repeat(widths[i] - c.chars().count());
                if left.contains(&i) {
                    format!("{c}{pad}")
                } else {
                    format!("{pad}{c}")
                }
            })
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The medians over rounds of one key.
pub struct Row {
    pub key: Key,
    pub calls_per_s: f64,
    pub messages_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub proxy_us: f64,
    pub component_us: f64,
    pub generator_us: f64,
    pub proxy_rss_mib: f64,
    pub datagrams: (f64, f64),
    pub errors: u64,
    pub stalled: u64,
}

pub fn rows(results: &BTreeMap<Key, Vec<Sample>>) -> Vec<Row> {
    let mut rows = Vec::new();
    for (&key, samples) in results {
        let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        rows.push(Row {
            key,
            calls_per_s: m(|s| s.calls_per_s),
            messages_per_s: m(|s| s.messages_per_s),
            p50_us: m(|s| s.p50_us),
            p99_us: m(|s| s.p99_us),
            p999_us: m(|s| s.p999_us),
            proxy_us: m(|s| s.proxy_us),
            component_us: m(|s| s.component_us),
            generator_us: m(|s| s.generator_us),
            proxy_rss_mib: m(|s| s.proxy_rss_mib),
            datagrams: (m(|s| s.datagrams.0), m(|s| s.datagrams.1)),
            errors: samples.iter().map(|s| s.tally.error_count()).sum(),
            stalled: samples.iter().map(|s| s.tally.stalled).sum(),
        });
    }
    rows
}

pub fn report(rows: &[Row], markdown: bool) {
    let trouble = |r: &Row| match (r.errors, r.stalled, markdown) {
        (0, 0, _) => "0".to_owned(),
        (e, 0, true) => format!("**{e}**"),
        (e, s, true) => format!("**{e} ({s} stalled)**"),
        (e, 0, false) => format!("{e} !"),
        (e, s, false) => format!("{e} ({s} stalled) !"),
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let (shards, kind, streams, path) = r.key;
            let datagrams = match path {
                Path::Ceiling => "—".to_owned(),
                _ => format!("{} / {}", cell(r.datagrams.0, 1), cell(r.datagrams.1, 1)),
            };
            vec![
                shards.to_string(),
                kind.label().to_owned(),
                streams.to_string(),
                path.label().to_owned(),
                cell(r.calls_per_s, 0),
                cell(r.messages_per_s, 0),
                cell(r.p50_us, 0),
                cell(r.p99_us, 0),
                cell(r.p999_us, 0),
                cell(r.proxy_us, 1),
                cell(r.component_us, 1),
                cell(r.generator_us, 1),
                cell(r.proxy_rss_mib, 1),
                datagrams,
                trouble(r),
            ]
        })
        .collect();
    let headers = [
        "shards",
        "call",
        "streams",
        "path",
        "calls/s",
        "messages/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "proxy CPU µs/call",
        "component CPU µs/call",
        "load generator CPU µs/call",
        "proxy peak RSS MiB",
        "UDP datagrams/call to / from proxy",
        "errors",
    ];
    table(markdown, &headers, &[1, 3], &cells);
    if !markdown {
        println!(
            "(proxy: vimanad or Caddy, whichever the path goes through; CPU is utime + stime \
             from /proc/PID/stat over the window, per call completed in it)"
        );
    }
}

/// vimanad against the ceiling and against Caddy, per (shards, kind,
/// streams); then the targets at 64 streams (unary).
pub fn ratios(rows: &[Row], markdown: bool) {
    let by_key: HashMap<Key, &Row> = rows.iter().map(|r| (r.key, r)).collect();
    let ratio = |a: f64, b: f64| match a / b {
        x if x.is_nan() || x.is_infinite() => "—".to_owned(),
        x => format!("{x:.2}×"),
    };
    let mut cells = Vec::new();
    let mut targets = Vec::new();
    for r in rows.iter().filter(|r| r.key.3 == Path::Vimanad) {
        let (shards, kind, streams, _) = r.key;
        let ceiling = by_key.get(&(shards, kind, streams, Path::Ceiling));
        let caddy = by_key.get(&(shards, kind, streams, Path::Caddy));
        let vs_caddy = |f: fn(&Row) -> f64| caddy.map_or("—".into(), |c| ratio(f(r), f(c)));
        let side_by_side = |f: fn(&Row) -> f64, decimals| {
            let caddy = caddy.map_or("—".into(), |c| cell(f(c), decimals));
            format!("{} vs {caddy}", cell(f(r), decimals))
        };
        cells.push(vec![
            shards.to_string(),
            kind.label().to_owned(),
            streams.to_string(),
            ceiling.map_or("—".into(), |c| ratio(r.calls_per_s, c.calls_per_s)),
            vs_caddy(|r| r.calls_per_s),
            vs_caddy(|r| r.proxy_us),
            side_by_side(|r| r.p99_us, 0),
            side_by_side(|r| r.proxy_rss_mib, 1),
        ]);
        if let (Kind::Unary, 64, Some(c)) = (kind, streams, caddy) {
            let met = |ok: bool| if ok { "met" } else { "NOT met" };
            let calls = r.calls_per_s / c.calls_per_s;
            let cpu = r.proxy_us / c.proxy_us;
            targets.push(format!(
                "targets, {shards} shard(s), unary, 64 streams: calls/s ≥ 3× Caddy's: {calls:.2}× \
                 ({}); CPU per call ≤ 1/3 of Caddy's: {cpu:.2}× ({}); lower p99: {:.0} vs {:.0} µs \
                 ({}); lower peak RSS: {:.1} vs {:.1} MiB ({})",
                met(calls >= 3.0),
                met(cpu <= 1.0 / 3.0),
                r.p99_us,
                c.p99_us,
                met(r.p99_us < c.p99_us),
                r.proxy_rss_mib,
                c.proxy_rss_mib,
                met(r.proxy_rss_mib < c.proxy_rss_mib),
            ));
        }
    }
    let headers = [
        "shards",
        "call",
        "streams",
        "calls/s vimanad / ceiling",
        "calls/s vimanad / Caddy",
        "proxy CPU per call vimanad / Caddy",
        "p99 µs vimanad vs Caddy",
        "peak RSS MiB vimanad vs Caddy",
    ];
    println!();
    table(markdown, &headers, &[1], &cells);
    if !targets.is_empty() {
        println!();
    }
    for line in targets {
        println!("{line}");
    }
}

/// oha's figures, medians over its rounds, beside ours.
pub fn oha_report(results: &BTreeMap<(usize, usize, Path), Vec<OhaSample>>, markdown: bool) {
    let mut cells = Vec::new();
    let mut calls: HashMap<(usize, usize, Path), f64> = HashMap::new();
    for (&(shards, streams, path), samples) in results {
        let m = |f: fn(&OhaSample) -> f64| median(samples.iter().map(f).collect());
        calls.insert((shards, streams, path), m(|s| s.calls_per_s));
        let vs_caddy = match path {
            Path::Vimanad => results
                .get(&(shards, streams, Path::Caddy))
                .map(|c| crate::oha::median_calls(c))
                .map_or("".into(), |c| format!("{:.2}×", m(|s| s.calls_per_s) / c)),
            _ => "".into(),
        };
        let failed: u64 = samples.iter().map(|s| s.failed).sum();
        cells.push(vec![
            shards.to_string(),
            streams.to_string(),
            samples[0].shape.clone(),
            path.label().to_owned(),
            cell(m(|s| s.calls_per_s), 0),
            cell(m(|s| s.p50_us), 0),
            cell(m(|s| s.p99_us), 0),
            cell(m(|s| s.p999_us), 0),
            cell(m(|s| s.proxy_us), 1),
            cell(m(|s| s.component_us), 1),
            cell(m(|s| s.proxy_rss_mib), 1),
            failed.to_string(),
            vs_caddy,
        ]);
    }
    let headers = [
        "shards",
        "streams",
        "oha -c × -p",
        "path",
        "oha: HTTP 200/s",
        "oha p50 µs",
        "oha p99 µs",
        "oha p99.9 µs",
        "proxy CPU µs/call",
        "component CPU µs/call",
        "proxy peak RSS MiB",
        "not 200 / errors",
        "calls/s vimanad / Caddy",
    ];
    table(markdown, &headers, &[2, 3], &cells);
}
