//! Micro-benchmarks of the data plane's primitives, one primitive per
//! measurement, each beside a baseline measured in the same run (the two
//! alternate repeat by repeat, so machine noise hits both alike).
//!
//! - **route**: `Snapshot::route(domain, service, None)` in a snapshot of
//!   10, 1,000 and 100,000 components (one running pod each), against a
//!   plain `HashMap<String, usize>` lookup of the same `domain/service` key.
//!   Keys are visited in a scrambled order, so at 100,000 the lookups miss
//!   the cache as a busy shard's would.
//! - **RCU read**: `Reader::current()` (one acquire load of the generation,
//!   no refcount write) and `Reader::read_through()` (an `rcu_cell` read:
//!   an `Arc` clone, dropped at once) against a plain `Arc::clone` + drop of
//!   an `Arc` in hand; on one thread, then on two threads at once, each with
//!   its own `Reader` (the cross-core case, where a refcount write bounces
//!   the cache line; in the two-thread `Arc::clone` baseline both threads
//!   clone the same `Arc`).
//! - **RCU publish**: `Publisher::publish(&pool)` (what the control thread
//!   pays per pod change) at 10 and 1,000 components, against
//!   `Snapshot::build` alone (built and dropped).
//! - **gRPC frames**: the shard's message-size limiter
//!   (`FrameLimiter::feed`, which the upload path calls on every request
//!   chunk) on a 64-byte message in one chunk, a 1 MiB message in 16 KiB
//!   chunks, and 64-byte messages whose 5-byte prefixes are all split
//!   across chunks, against a naive walk of the prefixes over the same
//!   bytes held contiguous (and, for 1 MiB, a byte sum: the floor of any
//!   parser that reads the bytes); `parse_timeout` against a bare digit
//!   loop; `encode_message` against copying the same string.
//! - **upstream checkout**: what a call pays to get a ready HTTP/2 sender
//!   from the shard's pool (`Upstreams::follow`, `pick` among 1, 4 or 16
//!   pods, `key`, `checkout` awaited, `release_key`), against cloning an
//!   `h2::client::SendRequest` in hand and awaiting `ready()`. Real
//!   connections: the example component serves on a Unix socket (a tokio
//!   thread), the pool connects to it from a glommio executor as a shard
//!   does, and both futures are polled once (a ready checkout never
//!   yields, so one poll is what a call pays).
//! - **publication → visible** (a table of its own, see `visibility`):
//!   the delay from `Publisher::publish` to every other core's spinning
//!   `Reader::current()` seeing the new generation, against an
//!   `AtomicU64` store seen by the same spinning loads.
//!
//! Each figure is the median over 5 repeats of ns per operation; the ratio
//! is test / baseline. Timings are printed, never asserted.
//!
//! ```text
//! cargo bench --bench primitives -- [--quick] [--markdown]
//! cargo test --bench primitives -- --quick     # CI: ~50 ms per primitive
//! ```
//!
//! One file per job: args.rs (options), timing.rs (ns per call, the
//! median over repeats, test and baseline alternating), fixtures.rs (pools
//! of components), route.rs, rcu.rs (read and publish), frames.rs,
//! upstream.rs, visibility.rs (one section each), report.rs (the rows as
//! text or markdown).

mod args;
mod fixtures;
mod frames;
mod rcu;
mod report;
mod route;
mod timing;
mod upstream;
mod visibility;

use std::time::Instant;

fn main() {
    let config = args::config();
    let started = Instant::now();
    let mut rows = Vec::new();
    route::route_rows(&config, &mut rows);
    rcu::read_rows(&config, &mut rows);
    rcu::publish_rows(&config, &mut rows);
    frames::frame_rows(&config, &mut rows);
    upstream::checkout_rows(&config, &mut rows);
    report::print(&config, &rows);
    visibility::visibility(&config);
    eprintln!(
        "primitives: {} measurements in {:.1} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
}
