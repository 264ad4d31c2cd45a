//! How the rows are printed: aligned text or markdown, ns and ratios
//! formatted. (The publication → visible table prints itself.)

use crate::args::Config;

pub struct Row {
    pub group: &'static str,
    pub test: String,
    pub test_ns: f64,
    pub baseline: String,
    pub baseline_ns: f64,
}

pub fn fmt_ns(ns: f64) -> String {
    if ns >= 100_000.0 {
        format!("{:.0}", ns)
    } else if ns >= 100.0 {
        format!("{:.1}", ns)
    } else {
        format!("{:.2}", ns)
    }
}

/// Two significant digits at least: a floor baseline can be 1000x slower.
fn fmt_ratio(ratio: f64) -> String {
    if ratio >= 0.01 {
        format!("{ratio:.2}")
    } else {
        format!("{ratio:.5}")
    }
}

pub fn print(config: &Config, rows: &[Row]) {
    if config.markdown {
        println!(
            "| primitive | median ns/op | baseline | median ns/op | ratio (test / baseline) |"
        );
        println!("|---|---:|---|---:|---:|");
        for r in rows {
            println!(
                "| {}: {} | {} | {} | {} | {}× |",
                r.group,
                r.test,
                fmt_ns(r.test_ns),
                r.baseline,
                fmt_ns(r.baseline_ns),
                fmt_ratio(r.test_ns / r.baseline_ns)
            );
        }
    } else {
        for r in rows {
            println!(
                "{:<12} {:<66} {:>10} ns   vs {:<42} {:>10} ns   ratio {:>7}x",
                r.group,
                r.test,
                fmt_ns(r.test_ns),
                r.baseline,
                fmt_ns(r.baseline_ns),
                fmt_ratio(r.test_ns / r.baseline_ns)
            );
        }
    }
}
