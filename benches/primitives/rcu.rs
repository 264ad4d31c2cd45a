//! The **RCU read** rows (`Reader::current`, `Reader::read_through`
//! against `Arc::clone`, on one and two threads) and the **RCU publish**
//! rows (`Publisher::publish` against `Snapshot::build`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use vimanad::pool::{Publisher, Reader, Snapshot};

use crate::args::Config;
use crate::fixtures::pool_of;
use crate::report::Row;
use crate::timing::{concurrently, ns_per_op, side_by_side};

pub fn read_rows(config: &Config, rows: &mut Vec<Row>) {
    let (pool, _) = pool_of(10);
    let publisher = Publisher::new();
    publisher.publish(&pool);
    let arc = Arc::new(Snapshot::build(&pool, 1, &Default::default()));

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

pub fn publish_rows(config: &Config, rows: &mut Vec<Row>) {
    for n in [10, 1_000] {
        let (pool, _) = pool_of(n);
        let publisher = Publisher::new();
        // A reader that keeps up, as a shard would (it releases each old
        // snapshot on its next call, so publish frees the one before).
        let mut reader = publisher.reader();
        let slots = vimanad::pool::metrics::ComponentSlots::default();
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
                    black_box(Snapshot::build(black_box(&pool), generation, &slots));
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
