//! Robustness: whatever a client sends, `serve_connection` returns (Ok or Err) without
//! panicking or hanging; and for well-framed request streams, every request gets exactly
//! one reply whose error is one the spec allows for it.
//!
//! The client stream is a `Cursor` (it ends), the server's output a `Vec`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use rewind_nbd::proto::*;
use rewind_nbd::{serve_connection, ServerStats};

/// One set of exports for every case: building 2 MiB of disks per case would dominate
/// the run time. Cases may write to them; nothing here checks contents.
fn exports() -> Arc<RamExports> {
    static E: OnceLock<Arc<RamExports>> = OnceLock::new();
    E.get_or_init(RamExports::new).clone()
}

/// Runs `serve_connection` on `input` on its own thread; fails on a hang or a panic.
/// Returns (returned Ok, everything the server wrote).
fn serve(input: Vec<u8>) -> (bool, Vec<u8>) {
    let ex = exports();
    let h = std::thread::spawn(move || {
        let stats = ServerStats::default();
        let mut out = Vec::new();
        let r = serve_connection(Cursor::new(input), &mut out, ex.as_ref(), &stats);
        (r.is_ok(), out)
    });
    let start = Instant::now();
    while !h.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "serve_connection hung on a finite input"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    match h.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// The negotiation a case starts with.
#[derive(Debug, Clone, Copy)]
struct Setup {
    export: &'static str,
    structured: bool,
    meta: bool,
    /// NBD_OPT_EXPORT_NAME instead of NBD_OPT_GO.
    export_name: bool,
}

impl Setup {
    fn read_only(&self) -> bool {
        self.export == "@snap"
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = be32(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES).to_vec();
        b.extend(opt(OPT_LIST, &[]));
        if self.structured {
            b.extend(opt(OPT_STRUCTURED_REPLY, &[]));
        }
        if self.meta {
            b.extend(opt(
                OPT_SET_META_CONTEXT,
                &meta_data(self.export, &[BASE_ALLOCATION]),
            ));
        }
        if self.export_name {
            b.extend(opt(OPT_EXPORT_NAME, self.export.as_bytes()));
        } else {
            b.extend(opt(OPT_GO, &info_data(self.export, &[INFO_BLOCK_SIZE])));
        }
        b
    }
}

fn setup() -> impl Strategy<Value = Setup> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(snap, structured, meta, export_name)| Setup {
            export: if snap { "@snap" } else { "live" },
            structured,
            meta: meta && structured,
            export_name,
        },
    )
}

/// A request header plus, for WRITE, a payload of the stated length.
#[derive(Debug, Clone)]
struct Req {
    flags: u16,
    kind: u16,
    offset: u64,
    length: u32,
}

fn request() -> impl Strategy<Value = Req> {
    let kind = prop_oneof![
        8 => 0u16..=7,
        1 => any::<u16>(),
    ];
    let flags = prop_oneof![
        6 => Just(0u16),
        3 => prop::sample::select(vec![
            CMD_FLAG_FUA,
            CMD_FLAG_NO_HOLE,
            CMD_FLAG_DF,
            CMD_FLAG_REQ_ONE,
            CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            1 << 4,
        ]),
        1 => any::<u16>(),
    ];
    let offset = prop_oneof![
        4 => (0..SIZE / 512).prop_map(|s| s * 512),
        2 => 0..SIZE,
        1 => (SIZE - 8192)..(SIZE + 8192),
        1 => Just(BAD_SECTOR),
        1 => any::<u64>(),
    ];
    let length = prop_oneof![
        5 => (1u32..=16).prop_map(|n| n * 512),
        2 => 0u32..3000,
        1 => Just(0u32),
        1 => any::<u32>(),
    ];
    (kind, flags, offset, length).prop_map(|(mut kind, flags, offset, mut length)| {
        // NBD_CMD_DISC ends the stream; the test adds it at the end.
        if kind == CMD_DISC {
            kind = CMD_FLUSH;
        }
        // A WRITE carries its payload: keep it small (past MAX_PAYLOAD the server closes,
        // which another test covers).
        if kind == CMD_WRITE {
            length %= 16 * 1024;
        }
        Req {
            flags,
            kind,
            offset,
            length,
        }
    })
}

/// The errors the spec allows for a request (empty: it must succeed, unless it touches
/// the bad sector, which may give EIO).
fn allowed_errors(r: &Req, s: &Setup) -> Vec<u32> {
    use Errno::*;
    let mut e = Vec::new();
    let ro = s.read_only();
    let fua = if ro { 0 } else { CMD_FLAG_FUA };
    let allowed = match r.kind {
        CMD_READ => fua | if s.structured { CMD_FLAG_DF } else { 0 },
        CMD_WRITE | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        CMD_BLOCK_STATUS => fua | CMD_FLAG_REQ_ONE,
        CMD_FLUSH | CMD_CACHE => fua,
        _ => return vec![Inval as u32],
    };
    if r.flags & !allowed != 0 {
        e.push(Inval);
    }
    let mutation = matches!(r.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if mutation && ro {
        e.push(Perm);
    }
    if r.kind == CMD_BLOCK_STATUS && (!s.meta || r.length == 0) {
        e.push(Inval);
    }
    if r.kind == CMD_READ && r.length > MAX_PAYLOAD {
        e.push(if s.structured { Overflow } else { Inval });
    }
    let past_end = r
        .offset
        .checked_add(u64::from(r.length))
        .is_none_or(|end| end > SIZE);
    if past_end && r.kind != CMD_FLUSH {
        e.push(match r.kind {
            CMD_WRITE | CMD_WRITE_ZEROES => NoSpc,
            _ => Inval,
        });
    }
    e.into_iter().map(|e| e as u32).collect()
}

fn touches_bad_sector(r: &Req) -> bool {
    matches!(r.kind, CMD_READ | CMD_WRITE)
        && r.length > 0
        && r.offset < BAD_SECTOR + 512
        && r.offset.saturating_add(u64::from(r.length)) > BAD_SECTOR
}

fn encode(reqs: &[Req]) -> Vec<u8> {
    let mut b = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        b.extend(req(r.flags, r.kind, i as u64, r.offset, r.length));
        if r.kind == CMD_WRITE {
            b.extend(payload(i as u64, r.length as usize));
        }
    }
    b
}

/// Checks the replies to `reqs` (sent after `s`'s negotiation) in `out`.
fn check_replies(s: &Setup, reqs: &[Req], out: &[u8]) {
    let mut r = Cursor::new(out);
    let lens: HashMap<u64, u32> = reqs
        .iter()
        .enumerate()
        .filter(|(_, q)| q.kind == CMD_READ)
        .map(|(i, q)| (i as u64, q.length))
        .collect();
    let mut msgs: HashMap<u64, Vec<Reply>> = HashMap::new();
    while (r.position() as usize) < out.len() {
        let m = read_reply(&mut r, |c| lens.get(&c).copied().unwrap_or(0) as usize)
            .unwrap_or_else(|e| panic!("unparseable reply stream: {e}"));
        let cookie = m.cookie();
        assert!(
            (cookie as usize) < reqs.len(),
            "reply to an unknown cookie {m:?}"
        );
        if !s.structured {
            assert!(
                matches!(m, Reply::Simple { .. }),
                "structured without negotiation"
            );
        }
        let v = msgs.entry(cookie).or_default();
        assert!(
            v.last().is_none_or(|p| !p.is_final()),
            "message after the final one"
        );
        v.push(m);
    }
    for (i, q) in reqs.iter().enumerate() {
        let got = msgs.remove(&(i as u64)).unwrap_or_default();
        assert!(
            got.last().is_some_and(Reply::is_final),
            "request {i} {q:?} got no (final) reply: {got:?}"
        );
        let error = if q.kind == CMD_READ {
            read_result(&got, s.structured, q.offset, q.length)
                .err()
                .unwrap_or(0)
        } else if q.kind == CMD_BLOCK_STATUS && got[0].error() == 0 {
            assert!(s.structured);
            let Reply::Chunk { typ, payload, .. } = &got[0] else {
                panic!("{got:?}")
            };
            assert_eq!(*typ, REPLY_TYPE_BLOCK_STATUS);
            assert!(payload.len() >= 12 && (payload.len() - 4) % 8 == 0);
            let d: Vec<u64> = payload[4..]
                .chunks(8)
                .map(|e| u64::from(u32::from_be_bytes(e[..4].try_into().unwrap())))
                .collect();
            assert!(d.iter().all(|l| *l > 0), "zero-length descriptor {d:?}");
            if q.flags & CMD_FLAG_REQ_ONE != 0 {
                assert_eq!(d.len(), 1, "REQ_ONE: {d:?}");
                assert!(d[0] <= u64::from(q.length), "REQ_ONE: {d:?} for {q:?}");
            } else {
                let head: u64 = d[..d.len() - 1].iter().sum();
                assert!(head < u64::from(q.length), "{d:?} for {q:?}");
            }
            0
        } else {
            assert_eq!(got.len(), 1, "{got:?}");
            got[0].error()
        };
        let allowed = allowed_errors(q, s);
        if allowed.is_empty() {
            let io = touches_bad_sector(q) && error == Errno::Io as u32;
            assert!(error == 0 || io, "request {i} {q:?} failed with {error}");
        } else {
            assert!(
                allowed.contains(&error),
                "request {i} {q:?}: error {error}, allowed {allowed:?}"
            );
        }
    }
}

/// What the server writes for the negotiation alone (it does not depend on what follows).
fn negotiation_output(s: &Setup) -> usize {
    let (ok, out) = serve(s.bytes());
    assert!(ok);
    out.len()
}

/// A complete, valid session, for truncation.
fn full_session(structured: bool) -> Vec<u8> {
    let mut b = be32(CLIENT_FIXED_NEWSTYLE).to_vec();
    b.extend(opt(OPT_LIST, &[]));
    b.extend(opt(
        OPT_INFO,
        &info_data("@snap", &[INFO_NAME, INFO_BLOCK_SIZE]),
    ));
    b.extend(opt(99, b"unknown"));
    if structured {
        b.extend(opt(OPT_STRUCTURED_REPLY, &[]));
        b.extend(opt(OPT_LIST_META_CONTEXT, &meta_data("live", &[])));
        b.extend(opt(
            OPT_SET_META_CONTEXT,
            &meta_data("live", &[BASE_ALLOCATION]),
        ));
        b.extend(opt(OPT_GO, &info_data("live", &[INFO_DESCRIPTION])));
    } else {
        b.extend(opt(OPT_EXPORT_NAME, b"live"));
    }
    b.extend(write_req(CMD_FLAG_FUA, 1, 4096, &payload(1, 300)));
    b.extend(req(0, CMD_READ, 2, 4000, 200));
    b.extend(req(0, CMD_BLOCK_STATUS, 3, 0, 65536));
    b.extend(req(0, CMD_TRIM, 4, 8192, 4096));
    b.extend(req(CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 5, 16384, 4096));
    b.extend(req(0, CMD_FLUSH, 6, 0, 0));
    b.extend(req(0, CMD_CACHE, 7, 0, 4096));
    b.extend(req(0, CMD_READ, 8, SIZE, 1));
    b.extend(req(0, CMD_DISC, 9, 0, 0));
    b
}

#[test]
fn truncated_valid_streams_at_every_length() {
    for structured in [false, true] {
        let full = full_session(structured);
        let (ok, out) = serve(full.clone());
        assert!(ok);
        assert!(!out.is_empty());
        for n in 0..full.len() {
            let _ = serve(full[..n].to_vec());
        }
    }
}

#[test]
fn a_full_session_is_answered_in_full() {
    let s = Setup {
        export: "live",
        structured: true,
        meta: true,
        export_name: false,
    };
    let reqs: Vec<Req> = [
        (0, CMD_WRITE, 0, 4096),
        (0, CMD_READ, 0, 4096),
        (CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 0, 4096),
        (0, CMD_BLOCK_STATUS, 0, 0),
        (0, CMD_READ, 0, 0),
        (CMD_FLAG_DF, CMD_READ, SIZE - 1, 1),
    ]
    .into_iter()
    .map(|(flags, kind, offset, length)| Req {
        flags,
        kind,
        offset,
        length,
    })
    .collect();
    let skip = negotiation_output(&s);
    let mut input = s.bytes();
    input.extend(encode(&reqs));
    let (ok, out) = serve(input);
    assert!(ok);
    check_replies(&s, &reqs, &out[skip..]);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_as_the_whole_stream(input in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = serve(input);
    }

    /// A stream that looks right for a while: mostly valid option headers with random
    /// payloads, the right magics in places.
    #[test]
    fn arbitrary_options(opts in prop::collection::vec(
        (0u32..12, prop::collection::vec(any::<u8>(), 0..64)), 0..8),
        flags in prop_oneof![Just(1u32), Just(3u32), any::<u32>()],
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut input = be32(flags).to_vec();
        for (o, d) in &opts {
            input.extend(opt(*o, d));
        }
        input.extend(tail);
        let _ = serve(input);
    }

    #[test]
    fn valid_prefix_then_garbage(
        s in setup(),
        garbage in prop::collection::vec(any::<u8>(), 0..512),
        magic_first in any::<bool>(),
    ) {
        let mut input = s.bytes();
        if magic_first {
            // Garbage that at least starts like a request.
            input.extend(be32(REQUEST_MAGIC));
        }
        input.extend(garbage);
        let _ = serve(input);
    }

    #[test]
    fn every_request_gets_one_reply_with_an_allowed_error(
        s in setup(),
        reqs in prop::collection::vec(request(), 0..24),
        disc in any::<bool>(),
    ) {
        let skip = negotiation_output(&s);
        let mut input = s.bytes();
        input.extend(encode(&reqs));
        if disc {
            input.extend(req(0, CMD_DISC, u64::MAX, 0, 0));
            // Nothing after NBD_CMD_DISC is read.
            input.extend(b"garbage after the disconnect");
        }
        let (ok, out) = serve(input);
        prop_assert!(ok);
        prop_assert!(out.len() >= skip);
        check_replies(&s, &reqs, &out[skip..]);
    }
}
