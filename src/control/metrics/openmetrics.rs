//! The OpenMetrics text format (1.0.0), for scrapers that ask for it
//! (`Accept: application/openmetrics-text`, as Prometheus does by default).
//!
//! The `prometheus` crate (0.14) encodes only the Prometheus text format
//! 0.0.4 and protobuf, so the gathered families are written here: a
//! counter's family is named without `_total` and its sample with it,
//! histograms get `_bucket` (with `+Inf`), `_count` and `_sum`, untyped
//! families are `unknown`, and the exposition ends with `# EOF`.

use std::fmt::Write;

use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (with a non-zero q).
pub fn wanted(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let kind = parts.next().unwrap_or("");
        let q_zero = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        kind.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
    })
}

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn labels(pairs: &[LabelPair], extra: Option<(&str, &str)>) -> String {
    let mut all: Vec<(&str, &str)> = pairs.iter().map(|l| (l.name(), l.value())).collect();
    all.extend(extra);
    if all.is_empty() {
        return String::new();
    }
    let mut out = String::from("{");
    for (i, (name, value)) in all.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape(value, &mut out);
        out.push('"');
    }
    out.push('}');
    out
}

fn sample(out: &mut String, name: &str, m: &Metric, extra: Option<(&str, &str)>, value: f64) {
    let _ = writeln!(
        out,
        "{name}{} {}",
        labels(m.get_label(), extra),
        number(value)
    );
}

/// The families in OpenMetrics text.
pub fn encode(families: &[MetricFamily]) -> String {
    let mut out = String::new();
    for f in families {
        let kind = f.get_field_type();
        let name = f.name();
        let family = match kind {
            MetricType::COUNTER => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let kind_name = match kind {
            MetricType::COUNTER => "counter",
            MetricType::GAUGE => "gauge",
            MetricType::HISTOGRAM => "histogram",
            MetricType::SUMMARY => "summary",
            MetricType::UNTYPED => "unknown",
        };
        let mut help = String::new();
        escape(f.help(), &mut help);
        let _ = writeln!(out, "# TYPE {family} {kind_name}");
        let _ = writeln!(out, "# HELP {family} {help}");
        for m in f.get_metric() {
            match kind {
                MetricType::COUNTER => {
                    let total = format!("{family}_total");
                    sample(&mut out, &total, m, None, m.get_counter().get_value());
                }
                MetricType::GAUGE => sample(&mut out, family, m, None, m.get_gauge().get_value()),
                #[allow(deprecated)] // no untyped family is registered; kept for completeness
                MetricType::UNTYPED => {
                    sample(&mut out, family, m, None, m.get_untyped().get_value())
                }
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let bucket = format!("{family}_bucket");
                    let mut inf = false;
                    for b in h.get_bucket() {
                        let le = number(b.upper_bound());
                        inf |= b.upper_bound() == f64::INFINITY;
                        let count = b.cumulative_count() as f64;
                        sample(&mut out, &bucket, m, Some(("le", &le)), count);
                    }
                    if !inf {
                        let count = h.get_sample_count() as f64;
                        sample(&mut out, &bucket, m, Some(("le", "+Inf")), count);
                    }
                    let count = h.get_sample_count() as f64;
                    sample(&mut out, &format!("{family}_count"), m, None, count);
                    let sum = h.get_sample_sum();
                    sample(&mut out, &format!("{family}_sum"), m, None, sum);
                }
                MetricType::SUMMARY => {
                    let s = m.get_summary();
                    for q in s.get_quantile() {
                        let quantile = number(q.quantile());
                        sample(
                            &mut out,
                            family,
                            m,
                            Some(("quantile", &quantile)),
                            q.value(),
                        );
                    }
                    let count = s.sample_count() as f64;
                    sample(&mut out, &format!("{family}_count"), m, None, count);
                    let sum = s.sample_sum();
                    sample(&mut out, &format!("{family}_sum"), m, None, sum);
                }
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

    #[test]
    fn negotiation() {
        assert!(wanted(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!wanted("text/plain;version=0.0.4"));
        assert!(!wanted("application/openmetrics-text; q=0"));
        assert!(!wanted(""));
    }

    #[test]
    fn counters_histograms_and_escapes() {
        let registry = Registry::new();
        let c =
            IntCounterVec::new(Opts::new("x_calls_total", "Calls \\ \"quoted\""), &["k"]).unwrap();
        let h = HistogramVec::new(
            HistogramOpts::new("x_seconds", "Latency").buckets(vec![0.5, 1.0]),
            &["k"],
        )
        .unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        registry.register(Box::new(h.clone())).unwrap();
        c.with_label_values(&["a\"b\n"]).inc_by(3);
        h.with_label_values(&["a"]).observe(0.7);
        let text = encode(&registry.gather());
        assert!(text.contains("# TYPE x_calls counter\n"), "{text}");
        assert!(
            text.contains("# HELP x_calls Calls \\\\ \\\"quoted\\\"\n"),
            "{text}"
        );
        assert!(
            text.contains("x_calls_total{k=\"a\\\"b\\n\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{k=\"a\",le=\"0.5\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{k=\"a\",le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{k=\"a\",le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_count{k=\"a\"} 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        // The same families in the Prometheus format, for comparison.
        let mut plain = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut plain)
            .unwrap();
        assert!(String::from_utf8(plain)
            .unwrap()
            .contains("# TYPE x_calls_total counter"));
    }
}
