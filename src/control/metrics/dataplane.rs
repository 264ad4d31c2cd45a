//! The data plane's series, read from every shard's counter block when
//! Prometheus scrapes (never on a request path). A family's samples are
//! one per shard (and per component slot for call series); slots and
//! reasons that never counted are left out.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::core::Desc;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use crate::pool::metrics::{
    ComponentMetrics, Drop, NodeMetrics, ShardMetrics, GRPC_CODES, LATENCY_BUCKETS, SLOT_NONE,
    SLOT_OTHER,
};

pub struct Collector {
    node: Arc<NodeMetrics>,
    descs: Vec<Desc>,
}

/// (name, help, type, labels beyond `shard`)
const FAMILIES: &[(&str, &str, MetricType, &[&str])] = &[
    (
        "vimanad_grpc_calls_total",
        "Finished gRPC calls by component and status",
        MetricType::COUNTER,
        &["domain", "service", "version", "code"],
    ),
    (
        "vimanad_grpc_call_duration_seconds",
        "gRPC call latency, from the request's headers to its end",
        MetricType::HISTOGRAM,
        &["domain", "service", "version"],
    ),
    (
        "vimanad_grpc_request_bytes_total",
        "Request message bytes sent to components",
        MetricType::COUNTER,
        &["domain", "service", "version"],
    ),
    (
        "vimanad_grpc_response_bytes_total",
        "Response message bytes sent to clients",
        MetricType::COUNTER,
        &["domain", "service", "version"],
    ),
    (
        "vimanad_grpc_active_calls",
        "gRPC calls in flight",
        MetricType::GAUGE,
        &["domain", "service", "version"],
    ),
    (
        "vimanad_quic_datagrams_received_total",
        "UDP datagrams received",
        MetricType::COUNTER,
        &[],
    ),
    (
        "vimanad_quic_datagrams_sent_total",
        "UDP datagrams sent",
        MetricType::COUNTER,
        &[],
    ),
    (
        "vimanad_quic_datagrams_dropped_total",
        "UDP datagrams dropped, by reason",
        MetricType::COUNTER,
        &["reason"],
    ),
    (
        "vimanad_quic_connections",
        "QUIC connections open",
        MetricType::GAUGE,
        &[],
    ),
    (
        "vimanad_quic_handshakes_total",
        "QUIC connections accepted (handshakes begun)",
        MetricType::COUNTER,
        &[],
    ),
    (
        "vimanad_quic_handshakes_completed_total",
        "QUIC handshakes completed",
        MetricType::COUNTER,
        &[],
    ),
    (
        "vimanad_quic_retry_sent_total",
        "QUIC Retry packets sent (address validation)",
        MetricType::COUNTER,
        &[],
    ),
    (
        "vimanad_quic_version_negotiation_sent_total",
        "QUIC Version Negotiation packets sent",
        MetricType::COUNTER,
        &[],
    ),
    (
        "vimanad_quic_streams_refused_total",
        "HTTP/3 requests refused for the per-connection stream limit",
        MetricType::COUNTER,
        &[],
    ),
    (
        "vimanad_quic_handshakes_in_progress",
        "QUIC connections whose handshake is in progress",
        MetricType::GAUGE,
        &[],
    ),
    (
        "vimanad_quic_handshake_timeouts_total",
        "QUIC handshakes abandoned at the handshake deadline",
        MetricType::COUNTER,
        &[],
    ),
    (
        "vimanad_quic_stateless_resets_sent_total",
        "QUIC stateless resets sent for unknown connection IDs",
        MetricType::COUNTER,
        &[],
    ),
    (
        "vimanad_tcp_connections_open",
        "HTTP/2 (TLS or h2c) connections open",
        MetricType::GAUGE,
        &[],
    ),
    (
        "vimanad_tcp_connections_total",
        "TCP connections by outcome: accepted, refused (shard limit), handshake_done, handshake_failed, idle_closed, goaway_abuse",
        MetricType::COUNTER,
        &["event"],
    ),
    (
        "vimanad_h2_reset_before_call_total",
        "HTTP/2 streams reset by the client before their call started",
        MetricType::COUNTER,
        &[],
    ),
    (
        "vimanad_call_buffered_bytes",
        "Request and response bytes buffered for calls now",
        MetricType::GAUGE,
        &[],
    ),
    (
        "vimanad_call_limit_hits_total",
        "Calls, streams and connections stopped by a data-plane limit, by limit",
        MetricType::COUNTER,
        &["limit"],
    ),
];

/// The `limit` label of each counter in `LimitMetrics`.
fn limit_hits(l: &crate::pool::metrics::LimitMetrics) -> [(&'static str, u64); 9] {
    [
        ("buffer_budget", l.calls_over_budget.get()),
        ("early_reset", l.early_resets.get()),
        ("reset_flood", l.reset_floods.get()),
        ("dropped_before_upstream", l.dropped_before_upstream.get()),
        ("header_section", l.headers_too_large.get()),
        ("idle_timeout", l.idle_timeouts.get()),
        ("upstream_queue_full", l.upstream_queue_full.get()),
        ("upstream_wait", l.upstream_wait_timeouts.get()),
        ("response_reset", l.responses_reset.get()),
    ]
}

impl Collector {
    pub fn new(node: Arc<NodeMetrics>) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _, labels)| {
                let mut variable = vec!["shard".to_owned()];
                variable.extend(labels.iter().map(|l| (*l).to_owned()));
                Desc::new((*name).into(), (*help).into(), variable, HashMap::new())
                    .expect("valid metric description")
            })
            .collect();
        Self { node, descs }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], v: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], v: u64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

fn histogram(pairs: &[(&str, &str)], c: &ComponentMetrics) -> Option<Metric> {
    let cumulative = c.latency.cumulative();
    let count = *cumulative.last()?;
    if count == 0 {
        return None;
    }
    let mut h = Histogram::default();
    h.set_sample_count(count);
    h.set_sample_sum(c.latency.sum_seconds());
    h.set_bucket(
        LATENCY_BUCKETS
            .iter()
            .zip(cumulative)
            .map(|(&upper, n)| {
                let mut b = Bucket::default();
                b.set_upper_bound(upper);
                b.set_cumulative_count(n);
                b
            })
            .collect(),
    );
    let mut m = Metric::from_label(labels(pairs));
    m.set_histogram(h);
    Some(m)
}

const CODE_NAMES: [&str; GRPC_CODES] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

impl prometheus::core::Collector for Collector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families: Vec<Vec<Metric>> = vec![Vec::new(); FAMILIES.len()];
        let mut slots: Vec<(u32, [String; 3])> = vec![
            (
                SLOT_NONE,
                ["(none)".into(), "(none)".into(), "(none)".into()],
            ),
            (
                SLOT_OTHER,
                ["(other)".into(), "(other)".into(), "(other)".into()],
            ),
        ];
        slots.extend(self.node.slots.names().into_iter().map(|(slot, name)| {
            (
                slot,
                [
                    name.domain().to_owned(),
                    name.service().to_owned(),
                    name.version().to_string(),
                ],
            )
        }));
        for (index, shard) in self.node.shards.iter().enumerate() {
            let s = index.to_string();
            let s = s.as_str();
            for (slot, [domain, service, version]) in &slots {
                let c = shard.component(*slot);
                let base = [
                    ("shard", s),
                    ("domain", domain.as_str()),
                    ("service", service.as_str()),
                    ("version", version.as_str()),
                ];
                for (code, name) in CODE_NAMES.iter().enumerate() {
                    let n = c.calls[code].get();
                    if n > 0 {
                        let mut pairs = base.to_vec();
                        pairs.push(("code", name));
                        families[0].push(counter(&pairs, n));
                    }
                }
                families[1].extend(histogram(&base, c));
                if c.bytes_in.get() > 0 || c.bytes_out.get() > 0 {
                    families[2].push(counter(&base, c.bytes_in.get()));
                    families[3].push(counter(&base, c.bytes_out.get()));
                }
                if c.active.get() > 0 {
                    families[4].push(gauge(&base, c.active.get()));
                }
            }
            shard_series(&mut families, s, shard);
        }
        FAMILIES
            .iter()
            .zip(families)
            .filter(|(_, metrics)| !metrics.is_empty())
            .map(|((name, help, kind, _), metrics)| {
                let mut f = MetricFamily::default();
                f.set_name((*name).to_owned());
                f.set_help((*help).to_owned());
                f.set_field_type(*kind);
                *f.mut_metric() = metrics;
                f
            })
            .collect()
    }
}

fn shard_series(families: &mut [Vec<Metric>], s: &str, shard: &ShardMetrics) {
    let only = [("shard", s)];
    families[5].push(counter(&only, shard.datagrams_in.get()));
    families[6].push(counter(&only, shard.datagrams_out.get()));
    for why in Drop::ALL {
        let n = shard.dropped[why as usize].get();
        families[7].push(counter(&[("shard", s), ("reason", why.label())], n));
    }
    families[8].push(gauge(&only, shard.connections_open.get()));
    families[9].push(counter(&only, shard.handshakes_started.get()));
    families[10].push(counter(&only, shard.handshakes_done.get()));
    families[11].push(counter(&only, shard.retries_sent.get()));
    families[12].push(counter(&only, shard.version_negotiations_sent.get()));
    families[13].push(counter(&only, shard.streams_refused.get()));
    families[14].push(gauge(&only, shard.handshakes_pending.get()));
    families[15].push(counter(&only, shard.handshake_timeouts.get()));
    families[16].push(counter(&only, shard.stateless_resets_sent.get()));
    families[17].push(gauge(&only, shard.tcp_connections_open.get()));
    for (event, n) in [
        ("accepted", &shard.tcp_accepted),
        ("refused", &shard.tcp_refused),
        ("handshake_done", &shard.tcp_handshakes_done),
        ("handshake_failed", &shard.tcp_handshakes_failed),
        ("idle_closed", &shard.tcp_idle_closed),
        ("goaway_abuse", &shard.h2_goaway_abuse),
    ] {
        families[18].push(counter(&[("shard", s), ("event", event)], n.get()));
    }
    families[19].push(counter(&only, shard.h2_reset_before_call.get()));
    families[20].push(gauge(&only, shard.limits.buffered_bytes.get()));
    for (limit, n) in limit_hits(&shard.limits) {
        families[21].push(counter(&[("shard", s), ("limit", limit)], n));
    }
}
