//! The **route** rows: `Snapshot::route` against a `HashMap` lookup.

use std::collections::HashMap;
use std::hint::black_box;

use vimanad::pool::Snapshot;

use crate::args::Config;
use crate::fixtures::{pool_of, served};
use crate::report::Row;
use crate::timing::{ns_per_op, side_by_side};

pub fn route_rows(config: &Config, rows: &mut Vec<Row>) {
    for n in [10, 1_000, 100_000] {
        let (pool, keys) = pool_of(n);
        let snapshot = Snapshot::build(&pool, 1, &Default::default());
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
