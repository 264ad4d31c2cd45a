//! Kept connections under load: client threads each keeping their
//! connections' streams in flight for a window. The handshakes section's
//! baseline and the republish section's load.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use crate::client::{Event, Worker};
use crate::measure::{cpu_over, Sample, Tally, Window, DRAIN};
use crate::node::{Target, DOMAIN};
use crate::request::Request;
use crate::system::pin_to;

/// One client thread of a load window: `conns` connections, each keeping
/// `streams` calls in flight until the window ends.
fn load_worker(
    peer: SocketAddr,
    conns: usize,
    streams: usize,
    request: Arc<Request>,
    go: (Arc<Barrier>, Arc<OnceLock<Window>>),
    core: Option<core_affinity::CoreId>,
) -> Tally {
    pin_to(core);
    let mut w = Worker::new(peer, Duration::from_secs(30));
    let mut tally = Tally::default();
    let mut events = Vec::new();
    let mut ready = Vec::new();
    for _ in 0..conns {
        w.connect();
    }
    let connect_deadline = Instant::now() + Duration::from_secs(10);
    while ready.len() < conns && w.open > 0 && Instant::now() < connect_deadline {
        w.step(connect_deadline, &mut events);
        for event in events.drain(..) {
            match event {
                Event::Ready { slot } => ready.push(slot),
                Event::Closed { why, .. } => tally.error(why),
                Event::Done { .. } => {}
            }
        }
    }
    let (barrier, window) = go;
    barrier.wait(); // every thread connected (or failed)
    barrier.wait(); // the window is set
    let window = *window.get().unwrap();
    for &slot in &ready {
        for _ in 0..streams {
            if let Err(e) = w.call(slot, &request) {
                tally.error(e);
                break;
            }
        }
    }
    let deadline = window.end + DRAIN;
    loop {
        let now = Instant::now();
        let in_flight: usize = ready.iter().map(|&s| w.in_flight(s)).sum();
        if now >= window.end && in_flight == 0 {
            break;
        }
        if now >= deadline {
            tally.stalled += in_flight as u64;
            for _ in 0..in_flight {
                tally.error("stalled: call unanswered".into());
            }
            break;
        }
        w.step(deadline.min(now + Duration::from_millis(100)), &mut events);
        for event in events.drain(..) {
            match event {
                Event::Done {
                    slot,
                    started,
                    finished,
                    result,
                    ..
                } => {
                    match result {
                        Ok(()) => tally.done(started, finished, &window),
                        Err(e) => tally.error(e),
                    }
                    if Instant::now() < window.end {
                        if let Err(e) = w.call(slot, &request) {
                            tally.error(e);
                        }
                    }
                }
                Event::Closed { slot, lost, why } => {
                    ready.retain(|&s| s != slot);
                    for _ in 0..lost.max(1) {
                        tally.error(why.clone());
                    }
                }
                Event::Ready { .. } => {}
            }
        }
    }
    w.close_all();
    tally
}

/// Load of `workers` threads × `conns` connections × `streams` streams on
/// `target` for `duration` after `warmup`.
#[allow(clippy::too_many_arguments)]
pub fn window(
    target: &Target,
    workers: usize,
    conns: usize,
    streams: usize,
    duration: Duration,
    warmup: Duration,
    cores: &[core_affinity::CoreId],
) -> Sample {
    let request = Request::new(DOMAIN);
    let barrier = Arc::new(Barrier::new(workers + 1));
    let window = Arc::new(OnceLock::new());
    let threads: Vec<_> = (0..workers)
        .map(|i| {
            let go = (barrier.clone(), window.clone());
            let (peer, request) = (target.node.listen, request.clone());
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            std::thread::spawn(move || load_worker(peer, conns, streams, request, go, core))
        })
        .collect();
    barrier.wait();
    let planned = Window::after(warmup, duration);
    let _ = window.set(planned);
    barrier.wait();
    let cpu = cpu_over(&planned, target.pid());
    let mut tally = Tally::default();
    for t in threads {
        tally.merge(t.join().expect("a load thread panicked"));
    }
    Sample::of(tally, duration, cpu)
}
