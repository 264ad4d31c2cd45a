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

use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use futures::FutureExt;
use vimanad::pool::{ComponentName, Endpoint, PodId, PodPool, Publisher, Reader, Route, Snapshot};
use vimanad::shard::bench::{encode_message, key, parse_timeout, FrameLimiter, Upstreams};

const REPEATS: usize = 5;

struct Config {
    /// Time per primitive (test + baseline, all repeats).
    budget: Duration,
    markdown: bool,
}

struct Row {
    group: &'static str,
    test: String,
    test_ns: f64,
    baseline: String,
    baseline_ns: f64,
}

fn main() {
    let mut quick = false;
    let mut markdown = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "--markdown" => markdown = true,
            // `cargo bench` passes --bench; ignore the rest of libtest's flags.
            _ => {}
        }
    }
    let config = Config {
        budget: if quick {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(2)
        },
        markdown,
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    route_rows(&config, &mut rows);
    read_rows(&config, &mut rows);
    publish_rows(&config, &mut rows);
    frame_rows(&config, &mut rows);
    checkout_rows(&config, &mut rows);
    print(&config, &rows);
    visibility(&config);
    eprintln!(
        "primitives: {} measurements in {:.1} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------- timing

/// Runs `op` repeatedly for about `window`, in batches sized so the clock
/// is read rarely; returns ns per call.
fn ns_per_op(window: Duration, mut op: impl FnMut()) -> f64 {
    let mut batch: u64 = 1;
    let mut calls: u64 = 0;
    let started = Instant::now();
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        calls += batch;
        let elapsed = started.elapsed();
        if elapsed >= window {
            return elapsed.as_nanos() as f64 / calls as f64;
        }
        // Grow the batch until one takes about 1/50 of the window.
        if t.elapsed() < window / 50 {
            batch *= 2;
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The medians (test, baseline) over `REPEATS`, the two alternating.
fn side_by_side(
    config: &Config,
    mut test: impl FnMut(Duration) -> f64,
    mut baseline: impl FnMut(Duration) -> f64,
) -> (f64, f64) {
    let window = config.budget / (2 * REPEATS as u32);
    // One untimed warm-up of each.
    test(window / 4);
    baseline(window / 4);
    let (mut t, mut b) = (Vec::new(), Vec::new());
    for _ in 0..REPEATS {
        t.push(test(window));
        b.push(baseline(window));
    }
    (median(t), median(b))
}

/// Runs `make()`'s operation on `threads` threads at once, started
/// together; returns the mean over threads of ns per call.
fn concurrently<F, O>(threads: usize, window: Duration, make: F) -> f64
where
    F: Fn() -> O + Sync,
    O: FnMut(),
{
    let barrier = Barrier::new(threads);
    let results: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let op = make();
                    barrier.wait();
                    ns_per_op(window, op)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    results.iter().sum::<f64>() / threads as f64
}

// ---------------------------------------------------------------- fixtures

/// A pool of `n` components, one running pod each: `n / 10` domains of up
/// to 10 services, version 1.0.0. Returns the pool and the (domain,
/// service) pairs in a scrambled order.
fn pool_of(n: usize) -> (PodPool, Vec<(String, String)>) {
    let mut pool = PodPool::default();
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let domain = format!("tenant{}.example.com", i / 10);
        let service = format!("pkg.v1.Service{}", i % 10);
        let component = ComponentName::new(&domain, &service, "1.0.0").expect("valid name");
        let id = PodId::new(component, i as u64);
        pool.insert_pod(&id);
        pool.set_running(&id, PathBuf::from(format!("/run/vimanad/pods/{i}.sock")), 1);
        keys.push((domain, service));
    }
    // Scramble (multiplicative step coprime with n), so consecutive
    // lookups land far apart in the tables.
    let step = (0..).map(|k| 7919 + k).find(|s| gcd(*s, n) == 1).unwrap();
    let keys = (0..n).map(|i| keys[(i * step) % n].clone()).collect();
    (pool, keys)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn served(route: Route<'_>) -> &Endpoint {
    match route {
        Route::Serve(v) => &v.endpoints[0],
        other => panic!("not served: {other:?}"),
    }
}

// ---------------------------------------------------------------- route

fn route_rows(config: &Config, rows: &mut Vec<Row>) {
    for n in [10, 1_000, 100_000] {
        let (pool, keys) = pool_of(n);
        let snapshot = Snapshot::build(&pool, 1);
        let joined: Vec<String> = keys.iter().map(|(d, s)| format!("{d}/{s}")).collect();
        let map: HashMap<String, usize> = joined
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        // Sanity: both answer every key.
        for ((d, s), k) in keys.iter().zip(&joined) {
            served(snapshot.route(d, s, None));
            assert!(map.contains_key(k.as_str()));
        }
        let (t, b) = side_by_side(
            config,
            |w| {
                let mut i = 0;
                ns_per_op(w, || {
                    let (d, s) = &keys[i];
                    i = if i + 1 == keys.len() { 0 } else { i + 1 };
                    black_box(snapshot.route(black_box(d), black_box(s), None));
                })
            },
            |w| {
                let mut i = 0;
                ns_per_op(w, || {
                    let k = &joined[i];
                    i = if i + 1 == joined.len() { 0 } else { i + 1 };
                    black_box(map.get(black_box(k.as_str())));
                })
            },
        );
        rows.push(Row {
            group: "route",
            test: format!("Snapshot::route, {n} components"),
            test_ns: t,
            baseline: "HashMap<String, _>::get".into(),
            baseline_ns: b,
        });
    }
}

// ---------------------------------------------------------------- RCU read

fn read_rows(config: &Config, rows: &mut Vec<Row>) {
    let (pool, _) = pool_of(10);
    let publisher = Publisher::new();
    publisher.publish(&pool);
    let arc = Arc::new(Snapshot::build(&pool, 1));

    // One thread.
    let mut reader = publisher.reader();
    let clone_arc = |w: Duration, arc: &Arc<Snapshot>| {
        ns_per_op(w, || {
            black_box(Arc::clone(black_box(arc)));
        })
    };
    let current = |w: Duration, r: &mut Reader| {
        ns_per_op(w, || {
            black_box(black_box(&mut *r).current());
        })
    };
    let through = |w: Duration, r: &Reader| {
        ns_per_op(w, || {
            black_box(black_box(r).read_through());
        })
    };
    let (t, b) = side_by_side(config, |w| current(w, &mut reader), |w| clone_arc(w, &arc));
    rows.push(Row {
        group: "RCU read",
        test: "Reader::current, 1 thread".into(),
        test_ns: t,
        baseline: "Arc::clone + drop, 1 thread".into(),
        baseline_ns: b,
    });
    let (t, b) = side_by_side(config, |w| through(w, &reader), |w| clone_arc(w, &arc));
    rows.push(Row {
        group: "RCU read",
        test: "Reader::read_through, 1 thread".into(),
        test_ns: t,
        baseline: "Arc::clone + drop, 1 thread".into(),
        baseline_ns: b,
    });

    // Two threads at once, each with its own Reader (as two shards), the
    // baseline cloning one shared Arc from both.
    let shared_clone = |w: Duration| {
        concurrently(2, w, || {
            let arc = &arc;
            move || {
                black_box(Arc::clone(black_box(arc)));
            }
        })
    };
    let (t, b) = side_by_side(
        config,
        |w| {
            concurrently(2, w, || {
                let mut r = publisher.reader();
                move || {
                    black_box(black_box(&mut r).current());
                }
            })
        },
        shared_clone,
    );
    rows.push(Row {
        group: "RCU read",
        test: "Reader::current, 2 threads".into(),
        test_ns: t,
        baseline: "Arc::clone + drop of one Arc, 2 threads".into(),
        baseline_ns: b,
    });
    let (t, b) = side_by_side(
        config,
        |w| {
            concurrently(2, w, || {
                let r = publisher.reader();
                move || {
                    black_box(black_box(&r).read_through());
                }
            })
        },
        shared_clone,
    );
    rows.push(Row {
        group: "RCU read",
        test: "Reader::read_through, 2 threads".into(),
        test_ns: t,
        baseline: "Arc::clone + drop of one Arc, 2 threads".into(),
        baseline_ns: b,
    });
}

// ---------------------------------------------------------------- RCU publish

fn publish_rows(config: &Config, rows: &mut Vec<Row>) {
    for n in [10, 1_000] {
        let (pool, _) = pool_of(n);
        let publisher = Publisher::new();
        // A reader that keeps up, as a shard would (it releases each old
        // snapshot on its next call, so publish frees the one before).
        let mut reader = publisher.reader();
        let mut generation = 0;
        let (t, b) = side_by_side(
            config,
            |w| {
                ns_per_op(w, || {
                    black_box(publisher.publish(black_box(&pool)));
                    black_box(reader.current());
                })
            },
            |w| {
                ns_per_op(w, || {
                    generation += 1;
                    black_box(Snapshot::build(black_box(&pool), generation));
                })
            },
        );
        rows.push(Row {
            group: "RCU publish",
            test: format!("Publisher::publish (+ one Reader::current), {n} components"),
            test_ns: t,
            baseline: "Snapshot::build + drop".into(),
            baseline_ns: b,
        });
    }
}

// ---------------------------------------------------------------- gRPC frames

/// vimanad's default `--max-message-size` (4 MiB).
const MAX_MESSAGE: usize = 4 << 20;

/// One gRPC length-prefixed message: flag 0, big-endian length, `len` bytes.
fn grpc_message(len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(5 + len);
    m.push(0);
    m.extend_from_slice(&(len as u32).to_be_bytes());
    m.extend((0..len).map(|i| i as u8));
    m
}

/// The naive parser: walks the prefixes of whole messages held in one
/// contiguous buffer, refusing one over `max` (what `FrameLimiter` does
/// without having to follow chunk boundaries).
fn naive_walk(mut buf: &[u8], max: usize) -> Result<(), usize> {
    while !buf.is_empty() {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > max {
            return Err(len);
        }
        buf = &buf[5 + len..];
    }
    Ok(())
}

/// Feeds every chunk to `limiter`, as the upload path does.
fn feed_all(limiter: &mut FrameLimiter, chunks: &[&[u8]]) {
    for chunk in chunks {
        limiter.feed(black_box(chunk)).expect("under the limit");
    }
}

fn frame_rows(config: &Config, rows: &mut Vec<Row>) {
    // A 64-byte message arriving in one chunk (a unary call's request).
    let small = grpc_message(64);
    let mut limiter = FrameLimiter::new(MAX_MESSAGE);
    let (t, b) = side_by_side(
        config,
        |w| {
            ns_per_op(w, || {
                limiter.feed(black_box(&small)).expect("under the limit");
            })
        },
        |w| {
            ns_per_op(w, || {
                naive_walk(black_box(&small), MAX_MESSAGE).expect("under the limit");
            })
        },
    );
    rows.push(Row {
        group: "gRPC frames",
        test: "FrameLimiter::feed, 64 B message in 1 chunk".into(),
        test_ns: t,
        baseline: "naive prefix walk, contiguous".into(),
        baseline_ns: b,
    });

    // A 1 MiB message in 16 KiB chunks (65 feeds, the last one 5 bytes).
    let large = grpc_message(1 << 20);
    let chunks: Vec<&[u8]> = large.chunks(16 << 10).collect();
    let mut limiter = FrameLimiter::new(MAX_MESSAGE);
    let mut feed_large = |w| ns_per_op(w, || feed_all(&mut limiter, &chunks));
    let (t, b) = side_by_side(config, &mut feed_large, |w| {
        ns_per_op(w, || {
            naive_walk(black_box(&large), MAX_MESSAGE).expect("under the limit");
        })
    });
    rows.push(Row {
        group: "gRPC frames",
        test: format!(
            "FrameLimiter::feed, 1 MiB message in {} chunks",
            chunks.len()
        ),
        test_ns: t,
        baseline: "naive prefix walk, contiguous".into(),
        baseline_ns: b,
    });
    let (t, b) = side_by_side(config, &mut feed_large, |w| {
        ns_per_op(w, || {
            let sum = black_box(&large[..])
                .iter()
                .fold(0u64, |sum, &byte| sum.wrapping_add(byte as u64));
            black_box(sum);
        })
    });
    rows.push(Row {
        group: "gRPC frames",
        test: format!(
            "FrameLimiter::feed, 1 MiB message in {} chunks",
            chunks.len()
        ),
        test_ns: t,
        baseline: "byte sum of the same 1 MiB (floor)".into(),
        baseline_ns: b,
    });

    // 64 messages of 64 bytes cut so that every 5-byte prefix is split 2 + 3
    // across two chunks (a stream's messages straddling QUIC packets, at
    // worst); figures per message.
    const MESSAGES: usize = 64;
    let stream: Vec<u8> = (0..MESSAGES).flat_map(|_| grpc_message(64)).collect();
    let mut cuts: Vec<usize> = (0..MESSAGES).map(|i| i * 69 + 2).collect();
    cuts.push(stream.len());
    let mut split = Vec::with_capacity(cuts.len());
    let mut start = 0;
    for cut in cuts {
        split.push(&stream[start..cut]);
        start = cut;
    }
    let mut limiter = FrameLimiter::new(MAX_MESSAGE);
    let (t, b) = side_by_side(
        config,
        |w| ns_per_op(w, || feed_all(&mut limiter, &split)) / MESSAGES as f64,
        |w| {
            ns_per_op(w, || {
                naive_walk(black_box(&stream), MAX_MESSAGE).expect("under the limit");
            }) / MESSAGES as f64
        },
    );
    rows.push(Row {
        group: "gRPC frames",
        test: "FrameLimiter::feed, 64 B messages, prefixes split 2+3 (per msg)".into(),
        test_ns: t,
        baseline: "naive prefix walk, contiguous (per msg)".into(),
        baseline_ns: b,
    });

    // grpc-timeout values as clients send them (grpc-go: 8 digits of u or n).
    let timeouts: [&[u8]; 4] = [b"100m", b"9999965u", b"30S", b"4999999n"];
    for t in timeouts {
        assert!(parse_timeout(t).is_some(), "{t:?}");
    }
    let (t, b) = side_by_side(
        config,
        |w| {
            let mut i = 0;
            ns_per_op(w, || {
                i = (i + 1) % timeouts.len();
                black_box(parse_timeout(black_box(timeouts[i])));
            })
        },
        |w| {
            let mut i = 0;
            ns_per_op(w, || {
                i = (i + 1) % timeouts.len();
                let (_, digits) = black_box(timeouts[i]).split_last().expect("a unit");
                let n = digits
                    .iter()
                    .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                black_box(n);
            })
        },
    );
    rows.push(Row {
        group: "gRPC frames",
        test: "parse_timeout (100m, 9999965u, 30S, 4999999n)".into(),
        test_ns: t,
        baseline: "bare digit loop, no checks".into(),
        baseline_ns: b,
    });

    // A grpc-message the shard sends (ASCII, as all of its own are).
    let message = "domain \"tenant7.example.com\" has no service \"pkg.v1.Service3\"";
    let (t, b) = side_by_side(
        config,
        |w| {
            ns_per_op(w, || {
                black_box(encode_message(black_box(message)));
            })
        },
        |w| {
            ns_per_op(w, || {
                black_box(black_box(message).to_owned());
            })
        },
    );
    rows.push(Row {
        group: "gRPC frames",
        test: format!("encode_message, {} ASCII bytes", message.len()),
        test_ns: t,
        baseline: "str::to_owned of the same".into(),
        baseline_ns: b,
    });
}

// ---------------------------------------------------------------- upstream checkout

/// Runs the example component on a Unix socket in a tokio thread of its
/// own (as a component process would be); stops it when dropped.
struct Component {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Component {
    fn start() -> Component {
        let dir = tempfile::tempdir().expect("temporary directory");
        let socket = dir.path().join("grpc.sock");
        let address = vimana_example::Address::Unix(socket.clone());
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async move {
                let server = vimana_example::spawn(&address, Default::default());
                let bound = server.as_ref().map(|_| ()).map_err(|e| e.to_string());
                bound_tx.send(bound).expect("bench waits");
                let _ = stopped.await;
                if let Ok(server) = server {
                    let _ = server.shutdown().await;
                }
            });
        });
        bound_rx
            .recv()
            .expect("component thread")
            .expect("example component binds its socket");
        Component {
            _dir: dir,
            socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A snapshot of one component with `pods` running pods, all served by
/// the example component's socket (each pod is its own pool key, so the
/// pool opens one connection per pod, as it would to `pods` sockets).
fn checkout_snapshot(pods: usize, socket: &std::path::Path) -> Snapshot {
    let mut pool = PodPool::default();
    let component =
        ComponentName::new("example.com", "vimana.example.v1.Echo", "1.0.0").expect("valid name");
    for ordinal in 0..pods {
        let id = PodId::new(component.clone(), ordinal as u64);
        pool.insert_pod(&id);
        pool.set_running(&id, socket.to_path_buf(), 1);
    }
    Snapshot::build(&pool, 1)
}

fn checkout_rows(config: &Config, rows: &mut Vec<Row>) {
    let component = Component::start();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("primitives-shard")
        .make()
        .expect("glommio executor (io_uring; as root, or with RLIMIT_MEMLOCK raised)");
    executor.run(async {
        for pods in [1, 4, 16] {
            let snapshot = checkout_snapshot(pods, &component.socket);
            let endpoints = match snapshot.route("example.com", "vimana.example.v1.Echo", None) {
                Route::Serve(version) => &version.endpoints[..],
                other => panic!("not served: {other:?}"),
            };
            assert_eq!(endpoints.len(), pods);
            let upstreams = Upstreams::default();
            upstreams.follow(&snapshot);
            // Open every connection (as the first calls would), and keep a
            // sender on the first for the baseline: the same connection.
            let mut baseline_sender = None;
            for endpoint in endpoints {
                let sender = upstreams
                    .checkout(endpoint)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", endpoint.socket.display()));
                upstreams.release_key(key(endpoint));
                baseline_sender.get_or_insert(sender);
            }
            let sender = baseline_sender.expect("one pod at least");
            // Let the connection tasks take the component's SETTINGS.
            glommio::timer::sleep(Duration::from_millis(20)).await;

            let (t, b) = side_by_side(
                config,
                |w| {
                    ns_per_op(w, || {
                        // What call.rs does before sending the request.
                        upstreams.follow(black_box(&snapshot));
                        let endpoint = upstreams.pick(black_box(endpoints));
                        let key = key(endpoint);
                        let ready = upstreams
                            .checkout(endpoint)
                            .now_or_never()
                            .expect("a ready checkout never yields")
                            .expect("connection alive");
                        black_box(&ready);
                        upstreams.release_key(key);
                    })
                },
                |w| {
                    ns_per_op(w, || {
                        let ready = black_box(&sender)
                            .clone()
                            .ready()
                            .now_or_never()
                            .expect("a ready sender never yields")
                            .expect("connection alive");
                        black_box(&ready);
                    })
                },
            );
            rows.push(Row {
                group: "upstream",
                test: format!(
                    "follow + pick + checkout + release, {pods} pod{}",
                    if pods == 1 { "" } else { "s" }
                ),
                test_ns: t,
                baseline: "SendRequest::clone + ready".into(),
                baseline_ns: b,
            });
        }
    });
}

// ---------------------------------------------------------------- output

fn fmt_ns(ns: f64) -> String {
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

fn print(config: &Config, rows: &[Row]) {
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

// ---------------------------------------------------------------- publication → visible

/// Publication to visible: how long after the control thread publishes
/// does every reader (one per other core, pinned, spinning on
/// `Reader::current()` as a busy shard would call it) see the new
/// generation? Beside the floor: a plain `AtomicU64` store seen by the
/// same spinning loads. The writer (pinned to the first core) publishes
/// every 200 µs; the two alternate in 5 blocks. Reported per publication
/// as the latest reader's delay, from the call's return (the commit point)
/// and from its start (which includes `Snapshot::build`); `current()`
/// returning includes reading the cell and dropping the reader's previous
/// snapshot, as on a shard's first call after a publication; a third row
/// keeps the old snapshots alive, leaving out that free.
fn visibility(config: &Config) {
    let quick = config.budget < Duration::from_millis(500);
    let per_block = if quick { 10 } else { 400 };
    let gap = Duration::from_micros(200);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let readers = cores.len().saturating_sub(1).max(1);
    let mut rows = Vec::new();
    for n in [10, 1_000] {
        let (pool, _) = pool_of(n);
        let publisher = Publisher::new();
        publisher.publish(&pool);
        let floor = std::sync::atomic::AtomicU64::new(0);
        let (mut test, mut kept, mut base) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..REPEATS {
            test.extend(visibility_block(
                &cores,
                readers,
                per_block,
                gap,
                || publisher.publish(&pool),
                || {
                    let mut r = publisher.reader();
                    move || r.current().generation()
                },
            ));
            // The same, but the reader keeps every snapshot it saw, so the
            // previous one is not freed inside `current()`: what is left
            // is reading the cell.
            kept.extend(visibility_block(
                &cores,
                readers,
                per_block,
                gap,
                || publisher.publish(&pool),
                || {
                    let mut r = publisher.reader();
                    let mut seen: Vec<Arc<Snapshot>> = Vec::with_capacity(per_block + 1);
                    move || {
                        let s = r.current();
                        let g = s.generation();
                        if seen.last().is_none_or(|k| k.generation() != g) {
                            seen.push(Arc::clone(s));
                        }
                        g
                    }
                },
            ));
            base.extend(visibility_block(
                &cores,
                readers,
                per_block,
                gap,
                || {
                    let g = floor.load(std::sync::atomic::Ordering::Relaxed) + 1;
                    floor.store(g, std::sync::atomic::Ordering::Release);
                    g
                },
                || {
                    let floor = &floor;
                    move || floor.load(std::sync::atomic::Ordering::Acquire)
                },
            ));
        }
        rows.push((format!("Publisher::publish, {n} components"), test));
        rows.push((
            format!("Publisher::publish, {n} components, reader keeps old snapshots (no free)"),
            kept,
        ));
        rows.push((
            format!("baseline: AtomicU64::store ({n}-component row's floor)"),
            base,
        ));
    }
    let header = [
        "publication",
        "publications",
        "call, median ns",
        "return → seen by every reader: median / p90 / p99 / max ns",
        "start → seen by every reader: median / p90 / p99 / max ns",
    ];
    let pct = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        (at(50.0), at(90.0), at(99.0), v[v.len() - 1])
    };
    let four = |(a, b, c, d): (f64, f64, f64, f64)| {
        format!(
            "{} / {} / {} / {}",
            fmt_ns(a),
            fmt_ns(b),
            fmt_ns(c),
            fmt_ns(d)
        )
    };
    let cells: Vec<[String; 5]> = rows
        .into_iter()
        .map(|(label, samples)| {
            let call = pct(samples.iter().map(|s| s.0).collect()).0;
            [
                label,
                samples.len().to_string(),
                fmt_ns(call),
                four(pct(samples.iter().map(|s| s.1).collect())),
                four(pct(samples.iter().map(|s| s.2).collect())),
            ]
        })
        .collect();
    println!(
        "\nPublication → visible on every reader ({readers} reader thread(s), pinned; signed: \
         a reader may see the generation before the call returns)"
    );
    if config.markdown {
        println!("\n| {} |\n|---|---:|---:|---:|---:|", header.join(" | "));
        for c in &cells {
            println!("| {} |", c.join(" | "));
        }
    } else {
        for c in &cells {
            println!(
                "{:<52} {:>6} {:>10}   {:>34}   {:>34}",
                c[0], c[1], c[2], c[3], c[4]
            );
        }
        println!("(columns: {})", header[1..].join("; "));
    }
}

/// One block: `readers` threads spin on `watch()` (pinned to cores 1..),
/// the calling thread (pinned to core 0) runs `publish()` `count` times,
/// `gap` apart. Per publication: (call ns, return → seen by the latest
/// reader ns, start → seen ns).
fn visibility_block<P, W, R>(
    cores: &[core_affinity::CoreId],
    readers: usize,
    count: usize,
    gap: Duration,
    mut publish: P,
    make_watch: W,
) -> Vec<(f64, f64, f64)>
where
    P: FnMut() -> u64,
    W: Fn() -> R + Sync,
    R: FnMut() -> u64,
{
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let barrier = Barrier::new(readers + 1);
    let stop = AtomicBool::new(false);
    // Each reader's newest generation seen: the publisher stops them only
    // once all have seen the last one (a descheduled reader catches up).
    let newest: Vec<AtomicU64> = (0..readers).map(|_| AtomicU64::new(0)).collect();
    std::thread::scope(|s| {
        let spinners: Vec<_> = (0..readers)
            .map(|i| {
                let (barrier, stop, make_watch) = (&barrier, &stop, &make_watch);
                let newest = &newest[i];
                s.spawn(move || {
                    if let Some(core) = cores.get(1 + i) {
                        core_affinity::set_for_current(*core);
                    }
                    let mut watch = make_watch();
                    let mut last = watch();
                    let mut seen: Vec<(u64, Instant)> = Vec::with_capacity(count + 1);
                    barrier.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let g = watch();
                        if g != last {
                            seen.push((g, Instant::now()));
                            newest.store(g, Ordering::Relaxed);
                            last = g;
                        }
                    }
                    seen
                })
            })
            .collect();
        if let Some(core) = cores.first() {
            core_affinity::set_for_current(*core);
        }
        barrier.wait();
        let mut published = Vec::with_capacity(count);
        for _ in 0..count {
            let resume = Instant::now() + gap;
            while Instant::now() < resume {
                std::hint::spin_loop();
            }
            let start = Instant::now();
            let generation = publish();
            published.push((generation, start, Instant::now()));
        }
        let last = published.last().map_or(0, |p| p.0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while newest.iter().any(|n| n.load(Ordering::Relaxed) < last) {
            assert!(
                Instant::now() < deadline,
                "a reader did not see generation {last} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        let seen: Vec<Vec<(u64, Instant)>> =
            spinners.into_iter().map(|h| h.join().unwrap()).collect();
        let signed = |a: Instant, b: Instant| match a >= b {
            true => (a - b).as_nanos() as f64,
            false => -((b - a).as_nanos() as f64),
        };
        published
            .into_iter()
            .map(|(generation, start, end)| {
                // The latest reader's first sight of this generation or a
                // later one (a reader may skip a generation).
                let last_seen = seen
                    .iter()
                    .map(|s| {
                        s.iter()
                            .find(|(g, _)| *g >= generation)
                            .expect("never seen")
                            .1
                    })
                    .max()
                    .unwrap();
                (
                    signed(end, start),
                    signed(last_seen, end),
                    signed(last_seen, start),
                )
            })
            .collect()
    })
}
