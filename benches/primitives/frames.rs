//! The **gRPC frames** rows: `FrameLimiter::feed` against a naive prefix
//! walk (and a byte sum), `parse_timeout` against a bare digit loop,
//! `encode_message` against a string copy.

use std::hint::black_box;

use vimanad::shard::bench::{encode_message, parse_timeout, FrameLimiter};

use crate::args::Config;
use crate::report::Row;
use crate::timing::{ns_per_op, side_by_side};

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

pub fn frame_rows(config: &Config, rows: &mut Vec<Row>) {
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
