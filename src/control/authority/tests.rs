//! Hand-made frames through the rewriter; its output decoded by a fresh
//! HPACK decoder, as the server's would be.

use loona_hpack::{Decoder, Encoder};

use super::*;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame_header(payload.len(), kind, flags, stream, &mut out);
    out.extend_from_slice(payload);
    out
}

fn settings() -> Vec<u8> {
    // SETTINGS_MAX_CONCURRENT_STREAMS = 100.
    frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn request(authority: &str) -> Fields {
    fields(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/runtime.v1.RuntimeService/Version"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ])
}

/// The client's encoder: indexes everything, as grpc clients do.
fn encode(encoder: &mut Encoder<'_>, fields: &Fields) -> Vec<u8> {
    encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
}

/// Every frame of `bytes` after the preface: (type, flags, stream, payload).
fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    assert!(bytes.starts_with(PREFACE));
    let mut rest = &bytes[PREFACE.len()..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    out
}

/// The header lists the server decodes from the rewriter's output, and the
/// frames that carried them (checked for END_HEADERS placement).
fn server_view(bytes: &[u8]) -> Vec<Fields> {
    let mut decoder = Decoder::new();
    let mut lists = Vec::new();
    let mut block: Option<Vec<u8>> = None;
    for (kind, flags, _, payload) in frames(bytes) {
        let fragment = match kind {
            HEADERS => {
                assert!(block.is_none(), "HEADERS inside an open block");
                assert_eq!(flags & PADDED, 0, "padding is dropped");
                let skip = if flags & PRIORITY != 0 { 5 } else { 0 };
                block = Some(Vec::new());
                payload[skip..].to_vec()
            }
            CONTINUATION => payload,
            _ => continue,
        };
        assert!(fragment.len() <= MAX_FRAME);
        block.as_mut().unwrap().extend_from_slice(&fragment);
        if flags & END_HEADERS != 0 {
            lists.push(decoder.decode(&block.take().unwrap()).unwrap());
        }
    }
    assert!(block.is_none(), "a header block was left open");
    lists
}

fn rewrite(input: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut rewriter = Rewriter::new();
    let mut out = Vec::new();
    rewriter.feed(input, &mut out)?;
    Ok(out)
}

/// The same input fed one byte at a time gives the same output.
fn rewrite_bytewise(input: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut rewriter = Rewriter::new();
    let mut out = Vec::new();
    for b in input {
        rewriter.feed(std::slice::from_ref(b), &mut out)?;
    }
    Ok(out)
}

fn connection(blocks: &[Vec<u8>]) -> Vec<u8> {
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    for (i, block) in blocks.iter().enumerate() {
        input.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i as u32, block));
    }
    input
}

#[test]
fn socket_path_and_empty_authorities_become_localhost() {
    let mut encoder = Encoder::new();
    let blocks = [
        encode(&mut encoder, &request("/run/vimanad/vimanad.sock")),
        encode(&mut encoder, &request("")),
        encode(&mut encoder, &request("localhost")),
        encode(&mut encoder, &request("example.com:443")),
        // Indexed from the dynamic table this time.
        encode(&mut encoder, &request("/run/vimanad/vimanad.sock")),
    ];
    let input = connection(&blocks);
    let out = rewrite(&input).unwrap();
    assert_eq!(out, rewrite_bytewise(&input).unwrap());
    let lists = server_view(&out);
    assert_eq!(
        lists,
        vec![
            request("localhost"),
            request("localhost"),
            request("localhost"),
            request("example.com:443"),
            request("localhost"),
        ]
    );
    // The preface and SETTINGS pass unchanged.
    assert!(out.starts_with(&[PREFACE, &settings()].concat()));
}

#[test]
fn decodes_rfc7541_huffman_requests_with_their_dynamic_table() {
    // RFC 7541 C.4.1 - C.4.3: three requests on one connection, Huffman
    // coded, the later ones indexing the earlier ones' fields.
    let blocks = [
        hex::decode("828684418cf1e3c2e5f23a6ba0ab90f4ff").unwrap(),
        hex::decode("828684be5886a8eb10649cbf").unwrap(),
        hex::decode("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf").unwrap(),
    ];
    let out = rewrite_bytewise(&connection(&blocks)).unwrap();
    let lists = server_view(&out);
    let base = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ];
    assert_eq!(lists[0], fields(&base));
    assert_eq!(
        lists[1],
        fields(&[
            base[0],
            base[1],
            base[2],
            base[3],
            ("cache-control", "no-cache")
        ])
    );
    assert_eq!(
        lists[2],
        fields(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ])
    );
}

#[test]
fn continuation_padding_and_priority_are_followed() {
    let mut encoder = Encoder::new();
    let block = encode(&mut encoder, &request("/tmp/cri.sock"));
    let (a, rest) = block.split_at(3);
    let (b, c) = rest.split_at(rest.len() / 2);
    // HEADERS, PADDED (4 bytes) and PRIORITY, END_STREAM, no END_HEADERS.
    let mut payload = vec![4];
    payload.extend_from_slice(&[0x80, 0, 0, 3, 200]);
    payload.extend_from_slice(a);
    payload.extend_from_slice(&[0; 4]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &payload));
    input.extend(frame(CONTINUATION, 0, 5, b));
    input.extend(frame(CONTINUATION, END_HEADERS, 5, c));
    input.extend(frame(0x0, END_STREAM, 5, b"data after"));
    let out = rewrite_bytewise(&input).unwrap();
    assert_eq!(out, rewrite(&input).unwrap());
    let frames = frames(&out);
    assert_eq!(frames.len(), 2);
    let (kind, flags, stream, payload) = &frames[0];
    assert_eq!(
        (*kind, *flags, *stream),
        (HEADERS, PRIORITY | END_STREAM | END_HEADERS, 5)
    );
    assert_eq!(&payload[..5], &[0x80, 0, 0, 3, 200]);
    assert_eq!(frames[1], (0x0, END_STREAM, 5, b"data after".to_vec()));
    assert_eq!(server_view(&out), vec![request("localhost")]);
}

#[test]
fn large_blocks_are_cut_into_continuations_and_data_streams_through() {
    let mut big = request("/x.sock");
    big.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
    let mut encoder = Encoder::new();
    let block = encode(&mut encoder, &big);
    let mut input = connection(&[block]);
    let data = vec![7u8; 100_000];
    input.extend(frame(0x0, 0, 1, &data));
    let mut rewriter = Rewriter::new();
    let mut out = Vec::new();
    for chunk in input.chunks(1000) {
        rewriter.feed(chunk, &mut out).unwrap();
        // DATA is not held back: at most one chunk waits inside.
        assert!(rewriter.input.len() <= 45_000);
    }
    let frames = frames(&out);
    assert!(frames.iter().filter(|f| f.0 == CONTINUATION).count() >= 2);
    let mut expect = big.clone();
    expect[3].1 = LOCALHOST.to_vec();
    assert_eq!(server_view(&out), vec![expect]);
    assert_eq!(frames.last().unwrap().3, data);
}

#[test]
fn table_size_updates_are_honoured_and_bounded() {
    // Size update to 0, then a literal with incremental indexing: the table
    // stays empty, so a later index into it is an error.
    let mut block = vec![0x20];
    block.extend(hex::decode("418cf1e3c2e5f23a6ba0ab90f4ff").unwrap());
    let out = rewrite(&connection(&[block.clone()])).unwrap();
    assert_eq!(
        server_view(&out),
        vec![fields(&[(":authority", "www.example.com")])]
    );
    let indexed = vec![0xbe];
    assert!(matches!(
        rewrite(&connection(&[block, indexed])),
        Err(RewriteError::Hpack { stream: 3, .. })
    ));
    // 4097, over the 4096 bytes the server allows: `001` prefix 31, then 4066.
    let over = vec![0x3f, 0xe2, 0x1f, 0x82];
    assert!(matches!(
        rewrite(&connection(&[over])),
        Err(RewriteError::Hpack { .. })
    ));
}

#[test]
fn malformed_input_ends_the_connection() {
    let mut encoder = Encoder::new();
    let good = encode(&mut encoder, &request("/s"));
    let with = |frames: &[Vec<u8>]| {
        let mut input = PREFACE.to_vec();
        for f in frames {
            input.extend_from_slice(f);
        }
        input
    };
    let cases: Vec<(Vec<u8>, RewriteError)> = vec![
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), RewriteError::Preface),
        (
            with(&[frame(CONTINUATION, END_HEADERS, 1, &good)]),
            RewriteError::StrayContinuation(1),
        ),
        (
            with(&[frame(HEADERS, 0, 1, &good), frame(0x0, 0, 1, b"x")]),
            RewriteError::Interleaved {
                kind: 0,
                stream: 1,
                expected: 1,
            },
        ),
        (
            with(&[
                frame(HEADERS, 0, 1, &good),
                frame(CONTINUATION, END_HEADERS, 3, b""),
            ]),
            RewriteError::Interleaved {
                kind: CONTINUATION,
                stream: 3,
                expected: 1,
            },
        ),
        (
            with(&[frame(HEADERS, PADDED | END_HEADERS, 1, &[200, 1, 2])]),
            RewriteError::BadPadding(1),
        ),
        (
            with(&[frame(HEADERS, PADDED | END_HEADERS, 1, &[])]),
            RewriteError::BadPadding(1),
        ),
        (
            with(&[frame(HEADERS, PRIORITY | END_HEADERS, 1, &[0, 0])]),
            RewriteError::BadPadding(1),
        ),
        (
            with(&[frame(HEADERS, END_HEADERS, 0, &good)]),
            RewriteError::StreamZero,
        ),
        (
            with(&[frame(PUSH_PROMISE, END_HEADERS, 1, &good)]),
            RewriteError::PushPromise,
        ),
        (
            with(&[frame(HEADERS, 0, 1, &vec![0; MAX_BLOCK + 1])]),
            RewriteError::BlockTooLarge(1),
        ),
    ];
    for (input, expected) in cases {
        let mut rewriter = Rewriter::new();
        let mut out = Vec::new();
        assert_eq!(rewriter.feed(&input, &mut out), Err(expected.clone()));
        // A failed connection stays failed.
        assert_eq!(
            rewriter.feed(b"more", &mut out),
            Err(RewriteError::Failed),
            "after {expected}"
        );
    }
    // HPACK errors: index 0, an index past the tables, a string longer than
    // the block, bad Huffman padding, a size update at the end.
    for block in [
        vec![0x80],
        vec![0xff, 0x7f],
        vec![0x00, 0x05, b'a'],
        vec![0x00, 0x81, 0x00, 0x00],
        vec![0x82, 0x20],
    ] {
        assert!(
            matches!(
                rewrite(&connection(std::slice::from_ref(&block))),
                Err(RewriteError::Hpack { .. })
            ),
            "{block:?}"
        );
    }
}

#[test]
fn decoded_size_is_bounded() {
    // One 4000-byte field in the dynamic table, then a block that indexes
    // it 400 times: 1.6 MB decoded from 400 bytes.
    let mut encoder = Encoder::new();
    let first = encode(&mut encoder, &fields(&[("x-a", &"a".repeat(4000))]));
    let amplify = vec![0xbe; 400];
    assert_eq!(
        rewrite(&connection(&[first, amplify])),
        Err(RewriteError::DecodedTooLarge(3))
    );
}

/// xorshift64*: deterministic bytes for the fuzz loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut encoder = Encoder::new();
    let blocks: Vec<Vec<u8>> = (0..3)
        .map(|i| encode(&mut encoder, &request(&format!("/s{i}"))))
        .collect();
    let valid = connection(&blocks);
    for round in 0..20_000 {
        let mut input = if round % 2 == 0 {
            // Valid framing, random payloads and flags.
            let mut input = PREFACE.to_vec();
            for _ in 0..1 + rng.below(4) {
                let len = rng.below(64);
                let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let kind = [HEADERS, CONTINUATION, 0x0, 0x4][rng.below(4)];
                input.extend(frame(kind, rng.next() as u8, rng.below(4) as u32, &payload));
            }
            input
        } else {
            valid.clone()
        };
        // Flip a few bytes past the preface.
        for _ in 0..rng.below(4) {
            let at = PREFACE.len() + rng.below(input.len() - PREFACE.len());
            input[at] = rng.next() as u8;
        }
        let mut rewriter = Rewriter::new();
        let mut out = Vec::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len());
            if rewriter.feed(&rest[..n], &mut out).is_err() {
                break;
            }
            rest = &rest[n..];
        }
    }
}
