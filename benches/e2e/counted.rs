//! `--calls N`: exactly N calls through vimanad, every response checked,
//! then stop. No window and no timing: the run is made to be counted from
//! outside (scripts/instructions-per-call.sh runs it with N and 2N calls
//! under valgrind or strace and takes the difference), so the calls made
//! must not depend on how fast the machine is.
//!
//! The streams are spread over the connections as in a window (h3.rs), and
//! the calls over the streams in proportion; each connection keeps its
//! share in flight until its calls are all opened, then lets them finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::h3::{shares, H3Client};
use crate::measure::{Schedule, Tally};
use crate::request::Request;

/// A run fails when no call finishes for this long (vimanad under valgrind
/// is some 50 times slower than natively, so this is generous).
const STALL: Duration = Duration::from_secs(60);

/// What a counted run did.
pub struct Counted {
    /// Connections used (at most the streams, at most the calls).
    pub connections: usize,
    pub tally: Tally,
    pub took: Duration,
}

/// `calls` calls to `peer` with `streams` in flight over up to
/// `connections` connections, a thread per connection.
pub fn run(
    peer: SocketAddr,
    request: &Arc<Request>,
    calls: u64,
    streams: usize,
    connections: usize,
) -> Counted {
    let started = Instant::now();
    let streams = streams
        .min(usize::try_from(calls).unwrap_or(usize::MAX))
        .max(1);
    let shares = shares(streams, connections);
    // Calls per connection, in proportion to its streams; the remainder
    // goes one each to the first connections.
    let mut budgets: Vec<u64> = shares
        .iter()
        .map(|&s| calls * s as u64 / streams as u64)
        .collect();
    let mut rest = calls - budgets.iter().sum::<u64>();
    for budget in budgets.iter_mut() {
        if rest == 0 {
            break;
        }
        *budget += 1;
        rest -= 1;
    }
    let workers: Vec<_> = shares
        .iter()
        .zip(budgets)
        .map(|(&share, budget)| {
            let request = request.clone();
            std::thread::Builder::new()
                .name("e2e-counted".into())
                .spawn(move || {
                    let mut tally = Tally::default();
                    let result = H3Client::connect(peer).and_then(|mut client| {
                        drive(&mut client, share, budget, &request, &mut tally)
                    });
                    if let Err(e) = result {
                        tally.error(e);
                    }
                    tally
                })
                .unwrap()
        })
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.join().expect("a counted worker panicked"));
    }
    Counted {
        connections: shares.len(),
        tally,
        took: started.elapsed(),
    }
}

/// Opens `budget` calls on one connection, `share` in flight at a time,
/// and waits for every one of them to finish.
fn drive(
    client: &mut H3Client,
    share: usize,
    budget: u64,
    request: &Request,
    tally: &mut Tally,
) -> Result<(), String> {
    // Every call counts, whenever it finishes.
    let schedule = Schedule {
        start: Instant::now(),
        end: Instant::now() + Duration::from_secs(365 * 24 * 3600),
    };
    let mut calls = HashMap::with_capacity(share * 2);
    let (mut opened, mut finished) = (0u64, 0u64);
    let mut progress = Instant::now();
    loop {
        // In flight: up to `share`, and no more than the calls left to open.
        let left = usize::try_from(budget - opened).unwrap_or(usize::MAX);
        let target = share.min(calls.len() + left);
        let before = calls.len();
        client.issue(target, false, request, &schedule, &mut calls, tally)?;
        opened += (calls.len() - before) as u64;
        client.flush()?;
        if opened == budget && calls.is_empty() {
            client.close();
            return Ok(());
        }
        let stalled_at = progress + STALL;
        if Instant::now() >= stalled_at {
            return Err(format!(
                "{} calls in flight, none finished for {STALL:?} ({finished} of {budget} done)",
                calls.len()
            ));
        }
        client.wait(stalled_at)?;
        let in_flight = calls.len();
        client.events(request, &schedule, &mut calls, tally)?;
        if calls.len() < in_flight {
            finished += (in_flight - calls.len()) as u64;
            progress = Instant::now();
        }
    }
}

/// The whole `--calls N` run: vimanad with one example pod (`Target`),
/// `--before-calls`, one probe call, the N
/// calls, then SIGTERM and vimanad's graceful exit (so that a tool it runs
/// under writes its totals). Prints one line; exits 1 unless every call
/// succeeded.
pub fn main(args: &crate::args::Args, calls: u64) {
    assert!(
        args.streams.len() == 1 && args.shards.len() == 1 && args.kinds.len() == 1,
        "--calls takes one --streams, one --shards and one --kind"
    );
    let (streams, shards, kind) = (args.streams[0], args.shards[0], args.kinds[0]);
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut target = control.block_on(crate::Target::start(
        shards,
        streams.div_ceil(args.connections),
    ));
    let pid = target.node.process.id();
    if let Some(command) = &args.before_calls {
        let status = std::process::Command::new("sh")
            .args(["-c", command])
            .env("VIMANAD_PID", pid.to_string())
            .status()
            .expect("run --before-calls");
        assert!(status.success(), "--before-calls {command:?}: {status}");
    }
    let request = Arc::new(Request::new(kind, args.messages));
    if let Err(e) = crate::h3::probe(target.node.listen, &request) {
        panic!(
            "vimanad does not answer a {} call: {e}\n{}",
            kind.label(),
            target.log_tail(20)
        );
    }
    eprintln!(
        "e2e: vimanad (pid {pid}) --shards {shards} on {}: {calls} {} calls, {streams} streams",
        target.node.listen,
        kind.label()
    );
    let counted = run(
        target.node.listen,
        &request,
        calls,
        streams,
        args.connections,
    );
    let status = target.node.stop_gracefully();
    let tally = &counted.tally;
    println!(
        "calls {calls} ok {} failed {} kind {} streams {streams} connections {} shards {shards} \
         took {:.3}s vimanad-pid {pid} vimanad-exit {}",
        tally.ok,
        tally.error_count(),
        kind.label(),
        counted.connections,
        counted.took.as_secs_f64(),
        status
            .code()
            .map_or_else(|| format!("{status}"), |c| c.to_string()),
    );
    if tally.ok != calls || tally.error_count() > 0 {
        eprintln!(
            "e2e: !!! {} of {calls} calls succeeded; errors: {:?}",
            tally.ok, tally.errors
        );
        eprintln!("e2e: vimanad's log ends:\n{}", target.log_tail(20));
        drop(target);
        std::process::exit(1);
    }
}
