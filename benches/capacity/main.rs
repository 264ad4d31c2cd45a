//! Capacity of the data plane (issue 6): handshakes per second, memory per
//! idle connection and per pod, publication to routable, and p99 while the
//! control thread publishes. Each figure beside a baseline measured in the
//! same run.
//!
//! Every node is the real `vimanad serve` started by the integration tests'
//! harness (tests/common: as root, in a private root under /tmp, with the
//! example image, on a free UDP port). The client is quiche, written here:
//! one non-blocking UDP socket per client thread, many QUIC connections per
//! socket told apart by connection ID, each response checked (HTTP 200, the
//! EchoReply carrying our payload, `grpc-status: 0` in the trailers). CPU
//! time is utime + stime from /proc/PID/stat (all threads), so the load
//! generator's own cost is excluded from vimanad's.
//!
//! Sections (`--sections`, default all):
//!
//! - **handshakes** (A): `--shards 1`. Each client connection does a full
//!   handshake, one unary Echo call and closes; a new one takes its place,
//!   `--hs-concurrency` in flight over `--hs-workers` client threads, a
//!   socket each (default: one per core the shard leaves free, at least 2;
//!   pinned to those cores unless `--no-pin`). Rows: plain,
//!   with Retry forced (`--retry-above 0`: every handshake pays the extra
//!   round trip and token check), and the baseline: the same calls, same
//!   concurrency, on connections kept open. Two nodes run side by side (the
//!   one not measured is SIGSTOPped), windows alternate over `--rounds`.
//!   Handshakes/s counts connections whose call succeeded within the window;
//!   latency runs from `quiche::connect` to the call's end.
//! - **memory** (B): (1) `--shards 1 --max-connections/--retry-above` above
//!   the count, `--idle-timeout 600s`: vimanad's VmRSS after a warm-up with
//!   0 connections, then with `--idle-connections` open (HTTP/3 set up,
//!   SETTINGS exchanged), then after one call on each, after closing them
//!   all, and with as many opened again (is freed memory reused?); KiB per
//!   connection = ΔRSS / connections. The bench's own RSS
//!   per (quiche client) connection is beside it. (2) vimanad's RSS with 0
//!   and `--pods` running example pods (one component each), idle, then
//!   after one call to each pod; the per-pod RSS / PSS of the shims and of
//!   the components (not counted in vimanad's).
//! - **publication** (C): `--shards 2`. Probe connections from source ports
//!   the kernel steers to each shard (learnt from vimanad's debug log),
//!   `--probe-streams` calls in flight each, call back to back to a domain
//!   whose pod is run and created but not started (refused: UNAVAILABLE),
//!   while the bench starts it (StartContainer). Times are relative to the
//!   timestamp of vimanad's `pod pool published` debug line, written just
//!   after the publication (if the control thread is preempted in between,
//!   the line is late and the figures too low). Per shard: the last refused
//!   call's send (its route lookup came later, so the pod became routable
//!   on that shard after it), the first successful call's send, and its end
//!   (its lookup came earlier; it also opened the shard's HTTP/2 connection
//!   to the new pod). The gap between the first two is the probes'
//!   resolution. `--trials` pods, each a new domain. On a loaded 2-vCPU VM
//!   a call's own round trip is far above 100 µs, so this bounds the
//!   end-to-end delay; the primitive itself is measured precisely by
//!   `cargo bench --bench primitives` (publication → visible).
//! - **republish** (D): `--shards 1`, a pool of `--pool` components (one
//!   running pod, the rest run but not started), unary load of `--streams`
//!   in flight over `--load-connections` connections (a thread each, as
//!   benches/e2e/ does), on two nodes, one started with the hidden
//!   `--republish-every 1ms` (the control thread rebuilds and publishes the
//!   snapshot every millisecond, its achieved rate read from its log), the
//!   other without; windows alternate (the idle node SIGSTOPped).
//!
//! - **stalled** (E, not in the default set; issue 15): see stalled.rs.
//!   vimanad's RSS against the number of connections that stop reading
//!   (`--stalled-connections 0,2,4,8,16`, `--stalled-streams 256`
//!   server-streaming calls each, held `--stalled-hold 5s`), then after
//!   they left. scripts/bench-stalled.sh runs it for two builds.
//!
//! ```text
//! scripts/bench-capacity.sh --markdown          # sets up, builds, runs it all
//! cargo bench --bench capacity -- [--quick] [--markdown] [--sections a,b,c,d]
//!     [--duration 5s] [--rounds 3] [--hs-workers N] [--hs-concurrency 32]
//!     [--no-pin] [--idle-connections 10000] [--pods 100] [--trials 10]
//!     [--probes-per-shard 2] [--probe-streams 4] [--streams 64] [--load-connections 4]
//!     [--pool 100] [--republish-every 1ms]
//! ```
//! `--quick` (for CI: well under a minute) shrinks everything: 0.5 s
//! windows, 1 round, 500 connections, 5 pods, 2 trials, a pool of 10.
//! Nothing is asserted about timings; failed calls are reported, and make
//! the bench exit 1. `CAPACITY_HOLD_S=N` pauses N s after the idle-memory
//! node starts (its PID printed), to attach a profiler.
//!
//! Where to look: args.rs (options), client.rs (the quiche client engine)
//! and request.rs (the call and its check), load.rs (kept-connection
//! load), node.rs (the node under test, its log), measure.rs (windows,
//! tallies, CPU), system.rs (/proc, limits, cores), report.rs (tables);
//! one file per section: handshakes.rs (A), memory.rs (B1), pods.rs (B2),
//! publication.rs (C), republish.rs (D), stalled.rs (E).

#[path = "../../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;
#[path = "../shared/procfs.rs"]
mod procfs;
#[path = "../shared/quic.rs"]
mod quic;

mod args;
mod client;
mod handshakes;
mod load;
mod measure;
mod memory;
mod node;
mod pods;
mod publication;
mod report;
mod republish;
mod request;
mod stalled;
mod system;

use std::time::Instant;

use system::{loadavg, raise_nofile};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = args::args();
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the capacity bench starts vimanad, which runs containers: run it as root"
    );
    raise_nofile();
    let started = Instant::now();
    let load_before = loadavg();
    let mut trouble = Vec::new();
    println!(
        "capacity ({}): {} cores, load average {load_before}",
        if args.quick { "quick" } else { "full" },
        core_affinity::get_core_ids().map_or(0, |c| c.len())
    );
    for section in args.sections.clone() {
        let t = Instant::now();
        match section {
            'a' => handshakes::section(&args, &mut trouble).await,
            'b' => {
                memory::section(&args, &mut trouble).await;
                pods::section(&args, &mut trouble).await;
            }
            'c' => publication::section(&args, &mut trouble).await,
            'e' => stalled::section(&args, &mut trouble).await,
            _ => republish::section(&args, &mut trouble).await,
        }
        eprintln!("capacity: section {section} took {:.1?}", t.elapsed());
    }
    println!(
        "(1-minute load average {load_before} before, {} after; took {:.1?})",
        loadavg(),
        started.elapsed()
    );
    if !trouble.is_empty() {
        eprintln!("\ncapacity: !!! ERRORS:");
        for line in &trouble {
            eprintln!("capacity: !!! {line}");
        }
        std::process::exit(1);
    }
}
