//! `/debug/pool`: the routing snapshot the shards read, as JSON — domains →
//! services → versions → endpoints, with each version's calls in flight
//! per shard and each endpoint's outstanding calls per shard (what the
//! shard's least-outstanding balancer counts, read from the shards' endpoint
//! cells), the generation, and when it was published.

use serde_json::{json, Map, Value};

use super::Runtime;

pub fn json(runtime: &Runtime) -> String {
    let (snapshot, published_at) = runtime.publisher().current();
    let node = runtime.config.data_plane_metrics.as_deref();
    // Each shard's outstanding calls by endpoint (ordinal, incarnation).
    let outstanding: Vec<_> = node.map_or_else(Vec::new, |n| {
        n.shards.iter().map(|s| s.outstanding()).collect()
    });
    let mut domains: Map<String, Value> = Map::new();
    for (domain, service, version) in snapshot.versions() {
        let in_flight: Vec<u64> = node.map_or_else(Vec::new, |n| {
            n.shards
                .iter()
                .map(|s| s.component(version.slot).active.get())
                .collect()
        });
        let endpoints: Vec<Value> = version
            .endpoints
            .iter()
            .map(|e| {
                let key = (e.id.ordinal(), e.incarnation);
                let per_shard: Vec<u64> = outstanding
                    .iter()
                    .map(|shard| shard.get(&key).copied().unwrap_or(0))
                    .collect();
                json!({
                    "container": e.id.to_string(),
                    "socket": e.socket.display().to_string(),
                    "incarnation": e.incarnation,
                    "outstanding_per_shard": per_shard,
                })
            })
            .collect();
        let services = domains
            .entry(domain.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        let versions = services
            .as_object_mut()
            .expect("object")
            .entry(service.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        versions.as_object_mut().expect("object").insert(
            version.version.to_string(),
            json!({ "endpoints": endpoints, "in_flight_per_shard": in_flight }),
        );
    }
    let published = time::OffsetDateTime::from(published_at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let view = json!({
        "generation": snapshot.generation(),
        "published_at": published,
        "domains": domains,
    });
    serde_json::to_string_pretty(&view).unwrap_or_default() + "\n"
}
