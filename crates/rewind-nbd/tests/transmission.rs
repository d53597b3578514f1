//! The transmission phase through `serve_connection` over a socket pair: commands, the
//! spec's errors, simple and structured replies, pipelining, disconnects.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use rewind_nbd::proto::*;
use rewind_nbd::server::ConnError;

const EPERM: u32 = Errno::Perm as u32;
const EIO: u32 = Errno::Io as u32;
const EINVAL: u32 = Errno::Inval as u32;
const ENOSPC: u32 = Errno::NoSpc as u32;
const EOVERFLOW: u32 = Errno::Overflow as u32;
const B: u64 = BS as u64;

fn disc(mut c: Conn) {
    c.request(0, CMD_DISC, 0xd15c, 0, 0);
    c.expect_eof();
    c.join().unwrap();
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// The commands work and reach the export with the right arguments, in both reply modes.
fn commands(structured: bool) {
    let (mut c, flags, _) = Conn::transmit("live", structured, false);
    assert_eq!(flags & TFLAG_READ_ONLY, 0);
    let live = c.exports.live.clone();

    assert_eq!(c.read_data(0, 1, 0, 8192).unwrap(), live.contents(0, 8192));
    // Unaligned read.
    assert_eq!(
        c.read_data(0, 2, 1001, 333).unwrap(),
        live.contents(1001, 333)
    );

    let d = payload(3, 4096);
    c.write(CMD_FLAG_FUA, 3, B, &d);
    assert_eq!(c.status(3), 0);
    assert_eq!(c.read_data(0, 4, B, 4096).unwrap(), d);
    // Unaligned write.
    let d2 = payload(5, 77);
    c.write(0, 5, 3 * B + 5, &d2);
    assert_eq!(c.status(5), 0);
    assert_eq!(live.contents(3 * B + 5, 77), d2);

    c.request(0, CMD_FLUSH, 6, 0, 0);
    assert_eq!(c.status(6), 0);

    c.request(0, CMD_TRIM, 7, B, BS);
    assert_eq!(c.status(7), 0);
    assert_eq!(c.read_data(0, 8, B, BS).unwrap(), vec![0u8; 4096]);
    assert!(!live.is_allocated(1));

    c.request(
        CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        CMD_WRITE_ZEROES,
        9,
        2 * B,
        BS,
    );
    assert_eq!(c.status(9), 0);
    assert_eq!(live.contents(2 * B, 4096), vec![0u8; 4096]);
    assert!(live.is_allocated(2));
    c.request(0, CMD_WRITE_ZEROES, 10, 4 * B, 100);
    assert_eq!(c.status(10), 0);
    assert_eq!(live.contents(4 * B, 100), vec![0u8; 100]);

    c.request(CMD_FLAG_FUA, CMD_TRIM, 11, 5 * B, BS);
    assert_eq!(c.status(11), 0);

    c.request(0, CMD_CACHE, 12, 0, 65536);
    assert_eq!(c.status(12), 0);

    // Whole-export boundaries are fine.
    assert_eq!(
        c.read_data(0, 13, SIZE - 512, 512).unwrap(),
        live.contents(SIZE - 512, 512)
    );
    c.write(0, 14, SIZE - 1, &[7]);
    assert_eq!(c.status(14), 0);
    c.request(0, CMD_WRITE_ZEROES, 15, SIZE - B, BS);
    assert_eq!(c.status(15), 0);

    let calls: Vec<Call> = live
        .calls()
        .into_iter()
        .filter(|c| !matches!(c, Call::Read { .. }))
        .collect();
    assert_eq!(
        calls,
        vec![
            Call::Write {
                offset: B,
                len: 4096,
                fua: true
            },
            Call::Write {
                offset: 3 * B + 5,
                len: 77,
                fua: false
            },
            Call::Flush,
            Call::Trim {
                offset: B,
                len: BS,
                fua: false
            },
            Call::WriteZeroes {
                offset: 2 * B,
                len: BS,
                fua: true,
                no_hole: true
            },
            Call::WriteZeroes {
                offset: 4 * B,
                len: 100,
                fua: false,
                no_hole: false
            },
            Call::Trim {
                offset: 5 * B,
                len: BS,
                fua: true
            },
            Call::Cache {
                offset: 0,
                len: 65536
            },
            Call::Write {
                offset: SIZE - 1,
                len: 1,
                fua: false
            },
            Call::WriteZeroes {
                offset: SIZE - B,
                len: BS,
                fua: false,
                no_hole: false
            },
        ]
    );
    let s = &c.stats;
    assert_eq!(s.writes.load(Ordering::Relaxed), 3);
    assert_eq!(s.bytes_written.load(Ordering::Relaxed), 4096 + 77 + 1);
    assert_eq!(s.reads.load(Ordering::Relaxed), 5);
    assert_eq!(s.flushes.load(Ordering::Relaxed), 1);
    assert_eq!(s.trims.load(Ordering::Relaxed), 2);
    assert_eq!(s.zeroes.load(Ordering::Relaxed), 3);
    assert_eq!(s.errors.load(Ordering::Relaxed), 0);
    assert_eq!(s.clients.load(Ordering::Relaxed), 1);
    assert!(s.last_flush_ns.load(Ordering::Relaxed) > 0);
    disc(c);
}

#[test]
fn commands_with_simple_replies() {
    commands(false);
}

#[test]
fn commands_with_structured_replies() {
    commands(true);
}

#[test]
fn structured_read_is_one_offset_data_chunk_with_done() {
    let (mut c, flags, _) = Conn::transmit("@snap", true, false);
    assert_ne!(flags & TFLAG_SEND_DF, 0);
    for (flags, cookie, offset, len) in [
        (0, 1u64, 0u64, 4096u32),
        (CMD_FLAG_DF, 2, 12345, 65536),
        (0, 3, SIZE - 1, 1),
    ] {
        c.request(flags, CMD_READ, cookie, offset, len);
        let r = c.reply_to(cookie);
        assert_eq!(r.len(), 1, "{r:?}");
        let Reply::Chunk {
            flags,
            typ,
            payload,
            ..
        } = &r[0]
        else {
            panic!("{r:?}")
        };
        assert_eq!(*flags, REPLY_FLAG_DONE);
        assert_eq!(*typ, REPLY_TYPE_OFFSET_DATA);
        assert_eq!(payload.len(), 8 + len as usize);
        assert_eq!(be_u64(payload), offset);
        assert_eq!(
            &payload[8..],
            c.exports.snap.contents(offset, len as usize).as_slice()
        );
    }
    disc(c);
}

#[test]
fn zero_length_requests_do_not_disconnect() {
    for structured in [false, true] {
        let (mut c, _, _) = Conn::transmit("live", structured, false);
        // A structured READ of nothing must not be an OFFSET_DATA chunk (it must carry
        // at least one byte): a NONE chunk.
        c.request(0, CMD_READ, 1, 0, 0);
        let r = c.reply_to(1);
        assert_eq!(r.len(), 1);
        match &r[0] {
            Reply::Simple { error, data, .. } => {
                assert!(!structured);
                assert_eq!((*error, data.len()), (0, 0));
            }
            Reply::Chunk {
                flags,
                typ,
                payload,
                ..
            } => {
                assert!(structured);
                assert_eq!(*flags, REPLY_FLAG_DONE);
                assert_eq!(*typ, REPLY_TYPE_NONE, "{r:?}");
                assert!(payload.is_empty());
            }
        }
        c.write(0, 2, 0, &[]);
        assert_eq!(c.status(2), 0);
        c.request(0, CMD_TRIM, 3, 0, 0);
        assert_eq!(c.status(3), 0);
        c.request(0, CMD_WRITE_ZEROES, 4, SIZE, 0);
        assert_eq!(c.status(4), 0);
        assert_eq!(
            c.read_data(0, 5, 0, 16).unwrap(),
            c.exports.live.contents(0, 16)
        );
        disc(c);
    }
}

fn errno_name(e: u32) -> &'static str {
    match e {
        EPERM => "EPERM",
        EIO => "EIO",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        EOVERFLOW => "EOVERFLOW",
        _ => panic!("errno {e} not expected here"),
    }
}

/// Sends one request that must fail with `want`, then checks the connection still works
/// (and, with structured replies, that the error's text starts with the errno's name).
fn refused(c: &mut Conn, cookie: u64, f: impl FnOnce(&mut Conn), want: u32) {
    f(c);
    let r = c.reply_to(cookie);
    assert_eq!(r.len(), 1, "{r:?}");
    if c.structured {
        assert!(matches!(r[0], Reply::Chunk { .. }), "{r:?}");
    }
    if let Reply::Simple { data, .. } = &r[0] {
        assert!(data.is_empty(), "an error reply carries no data");
    }
    assert_eq!(r[0].error(), want, "cookie {cookie}: {r:?}");
    if let Reply::Chunk { payload, .. } = &r[0] {
        // The text names the errno plainly, then says why.
        let msg = std::str::from_utf8(&payload[6..]).unwrap();
        let name = errno_name(want);
        assert!(
            msg.starts_with(&format!("{name}: ")) && msg.len() > name.len() + 2,
            "cookie {cookie}: message {msg:?}"
        );
    }
    let probe = cookie + 1_000_000;
    assert_eq!(
        c.read_data(0, probe, 512, 16).unwrap(),
        c.exports.live.contents(512, 16),
        "the connection must go on after an error"
    );
}

fn spec_errors_on_live(structured: bool) {
    let (mut c, _, _) = Conn::transmit("live", structured, false);
    let big = vec![0xeeu8; 1024];
    // ENOSPC for writes and zeroes past the end (the payload is still consumed).
    refused(&mut c, 1, |c| c.write(0, 1, SIZE - 512, &big), ENOSPC);
    refused(&mut c, 2, |c| c.write(0, 2, SIZE, &[1]), ENOSPC);
    refused(&mut c, 3, |c| c.write(0, 3, u64::MAX - 10, &big), ENOSPC);
    refused(
        &mut c,
        4,
        |c| c.request(0, CMD_WRITE_ZEROES, 4, SIZE - B, BS + 1),
        ENOSPC,
    );
    refused(
        &mut c,
        5,
        |c| c.request(0, CMD_WRITE_ZEROES, 5, u64::MAX, 1),
        ENOSPC,
    );
    // EINVAL for reads, trims and caches past the end.
    refused(
        &mut c,
        6,
        |c| c.request(0, CMD_READ, 6, SIZE - 1, 2),
        EINVAL,
    );
    refused(
        &mut c,
        7,
        |c| c.request(0, CMD_READ, 7, u64::MAX, 4096),
        EINVAL,
    );
    refused(&mut c, 8, |c| c.request(0, CMD_TRIM, 8, SIZE, 1), EINVAL);
    refused(
        &mut c,
        9,
        |c| c.request(0, CMD_CACHE, 9, SIZE - 1, 2),
        EINVAL,
    );
    // Unknown commands.
    for (i, kind) in [8u16, 9, 42, 0xffff].into_iter().enumerate() {
        let k = 10 + i as u64;
        refused(&mut c, k, |c| c.request(0, kind, k, 0, 512), EINVAL);
    }
    // Flags not documented for the command.
    refused(
        &mut c,
        20,
        |c| c.write(CMD_FLAG_NO_HOLE, 20, 0, &big),
        EINVAL,
    );
    refused(
        &mut c,
        21,
        |c| c.request(CMD_FLAG_REQ_ONE, CMD_READ, 21, 0, 512),
        EINVAL,
    );
    refused(
        &mut c,
        22,
        |c| c.request(1 << 9, CMD_FLUSH, 22, 0, 0),
        EINVAL,
    );
    // FAST_ZERO was not advertised.
    refused(
        &mut c,
        23,
        |c| c.request(1 << 4, CMD_WRITE_ZEROES, 23, 0, 512),
        EINVAL,
    );
    refused(
        &mut c,
        24,
        |c| c.request(CMD_FLAG_DF, CMD_TRIM, 24, 0, 512),
        EINVAL,
    );
    if !structured {
        // DF only exists with structured replies.
        refused(
            &mut c,
            25,
            |c| c.request(CMD_FLAG_DF, CMD_READ, 25, 0, 512),
            EINVAL,
        );
    }
    // No metadata context was negotiated.
    refused(
        &mut c,
        26,
        |c| c.request(0, CMD_BLOCK_STATUS, 26, 0, 4096),
        EINVAL,
    );
    // A READ longer than the maximum is refused (EOVERFLOW where DF exists: "retry with
    // smaller requests"); the connection stays.
    refused(
        &mut c,
        27,
        |c| c.request(0, CMD_READ, 27, 0, MAX_PAYLOAD + 1),
        if structured { EOVERFLOW } else { EINVAL },
    );
    // The export's own errors.
    refused(
        &mut c,
        28,
        |c| c.request(0, CMD_READ, 28, BAD_SECTOR, 4096),
        EIO,
    );
    refused(
        &mut c,
        29,
        |c| c.write(0, 29, BAD_SECTOR + 511, &[1, 2]),
        EIO,
    );

    // An export with no room left: ENOSPC (28), in both reply forms.
    c.exports.live.set_full(true);
    refused(&mut c, 30, |c| c.write(0, 30, 4096, &big), ENOSPC);
    c.exports.live.set_full(false);

    // None of the refused mutations reached the export (the double also panics on any
    // out-of-range call); the export refused the last two itself.
    let muts: Vec<_> = c
        .exports
        .live
        .calls()
        .into_iter()
        .filter(Call::is_mutation)
        .collect();
    assert_eq!(
        muts,
        vec![
            Call::Write {
                offset: BAD_SECTOR + 511,
                len: 2,
                fua: false
            },
            Call::Write {
                offset: 4096,
                len: 1024,
                fua: false
            }
        ]
    );
    assert!(c.stats.errors.load(Ordering::Relaxed) >= 20);
    disc(c);
}

#[test]
fn spec_errors_with_simple_replies() {
    spec_errors_on_live(false);
}

#[test]
fn spec_errors_with_structured_replies() {
    spec_errors_on_live(true);
}

#[test]
fn fua_is_accepted_on_every_command_when_advertised() {
    // The spec: NBD_CMD_FLAG_FUA "is valid for all commands, provided
    // NBD_FLAG_SEND_FUA has been negotiated, in which case the server MUST accept all
    // commands with this bit set".
    for structured in [false, true] {
        let (mut c, flags, _) = Conn::transmit("live", structured, structured);
        assert_ne!(flags & TFLAG_SEND_FUA, 0);
        assert_eq!(
            c.read_data(CMD_FLAG_FUA, 1, 0, 512).unwrap(),
            c.exports.live.contents(0, 512)
        );
        c.request(CMD_FLAG_FUA, CMD_FLUSH, 2, 0, 0);
        assert_eq!(c.status(2), 0);
        c.request(CMD_FLAG_FUA, CMD_CACHE, 3, 0, 512);
        assert_eq!(c.status(3), 0);
        if structured {
            c.request(CMD_FLAG_FUA, CMD_BLOCK_STATUS, 4, 0, 512);
            let r = c.reply_to(4);
            assert_eq!(r[0].error(), 0, "{r:?}");
        }
        disc(c);
    }
}

#[test]
fn read_only_export_refuses_mutations_with_eperm() {
    for structured in [false, true] {
        let (mut c, flags, _) = Conn::transmit("@snap", structured, false);
        assert_ne!(flags & TFLAG_READ_ONLY, 0);
        assert_eq!(
            flags & (TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES),
            0
        );
        let snap = c.exports.snap.clone();
        let before = snap.contents(0, 8192);
        let d = payload(1, 4096);
        for cookie in 1..=4u64 {
            match cookie {
                1 => c.write(0, 1, 0, &d),
                2 => c.request(0, CMD_TRIM, 2, 0, 4096),
                3 => c.request(0, CMD_WRITE_ZEROES, 3, 0, 4096),
                _ => c.request(CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 4, 0, 4096),
            }
            assert_eq!(c.status(cookie), EPERM, "cookie {cookie}");
            // Reads keep working on the snapshot.
            let probe = 100 + cookie;
            assert_eq!(c.read_data(0, probe, 0, 8192).unwrap(), before);
        }
        // FUA was not advertised on the read-only export: a bad flag there.
        c.request(CMD_FLAG_FUA, CMD_READ, 10, 0, 512);
        let r = c.reply_to(10);
        assert_eq!(read_result(&r, structured, 0, 512), Err(EINVAL));
        // Reads, flush and cache are fine.
        c.request(0, CMD_FLUSH, 11, 0, 0);
        assert_eq!(c.status(11), 0);
        c.request(0, CMD_CACHE, 12, 0, 4096);
        assert_eq!(c.status(12), 0);
        assert!(
            snap.calls().iter().all(|c| !c.is_mutation()),
            "a refused mutation reached the export: {:?}",
            snap.calls()
        );
        assert_eq!(snap.contents(0, 8192), before);
        // The live export was not touched either.
        assert!(c.exports.live.calls().is_empty());
        disc(c);
    }
}

/// Checks a BLOCK_STATUS reply against the spec; returns the descriptors.
fn block_status(
    c: &mut Conn,
    cookie: u64,
    flags: u16,
    offset: u64,
    len: u32,
    ctx: u32,
) -> Vec<(u32, u32)> {
    c.request(flags, CMD_BLOCK_STATUS, cookie, offset, len);
    let r = c.reply_to(cookie);
    let mut chunks = Vec::new();
    for m in &r {
        let Reply::Chunk { typ, payload, .. } = m else {
            panic!("BLOCK_STATUS needs a structured reply: {r:?}")
        };
        match *typ {
            REPLY_TYPE_BLOCK_STATUS => chunks.push(payload.clone()),
            REPLY_TYPE_NONE => assert!(payload.is_empty()),
            t => panic!("unexpected chunk {t}: {r:?}"),
        }
    }
    assert_eq!(chunks.len(), 1, "exactly one chunk per context: {r:?}");
    let p = &chunks[0];
    assert!(
        p.len() >= 12 && (p.len() - 4) % 8 == 0,
        "bad length {}",
        p.len()
    );
    assert_eq!(be_u32(p), ctx);
    let d: Vec<(u32, u32)> = p[4..]
        .chunks(8)
        .map(|e| (be_u32(e), be_u32(&e[4..])))
        .collect();
    assert!(
        d.iter().all(|(l, _)| *l > 0),
        "zero-length descriptor: {d:?}"
    );
    if flags & CMD_FLAG_REQ_ONE != 0 {
        assert_eq!(d.len(), 1, "REQ_ONE: exactly one descriptor: {d:?}");
        assert!(
            d[0].0 <= len,
            "REQ_ONE: descriptor longer than the request: {d:?}"
        );
    } else {
        let head: u64 = d[..d.len() - 1].iter().map(|(l, _)| u64::from(*l)).sum();
        assert!(head < u64::from(len), "descriptors past the request: {d:?}");
    }
    d
}

#[test]
fn block_status_reports_base_allocation() {
    let (mut c, _, ctx) = Conn::transmit("live", true, true);
    let ctx = ctx.unwrap();
    let hz = STATE_HOLE | STATE_ZERO;
    let half = (ALLOCATED_BLOCKS * B) as u32;
    // The export hears whether the client wants one extent (it may then stop after it).
    c.exports.live.clear_calls();
    block_status(&mut c, 20, CMD_FLAG_REQ_ONE, 0, 4096, ctx);
    block_status(&mut c, 21, 0, 0, 4096, ctx);
    let heard: Vec<bool> = c
        .exports
        .live
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::BlockStatus { req_one, .. } => Some(req_one),
            _ => None,
        })
        .collect();
    assert_eq!(heard, vec![true, false]);
    assert_eq!(
        block_status(&mut c, 1, 0, 0, SIZE as u32, ctx),
        vec![(half, 0), (half, hz)]
    );
    // A range inside one run: the final extent may run past the request ...
    let d = block_status(&mut c, 2, 0, 10 * B, 8192, ctx);
    assert_eq!(d[0].1, 0);
    // ... but not with REQ_ONE.
    assert_eq!(
        block_status(&mut c, 3, CMD_FLAG_REQ_ONE, 10 * B, 8192, ctx),
        vec![(8192, 0)]
    );
    assert_eq!(
        block_status(&mut c, 4, CMD_FLAG_REQ_ONE, 0, SIZE as u32, ctx),
        vec![(half, 0)]
    );
    // Unaligned, crossing into the holes.
    let off = ALLOCATED_BLOCKS * B - 100;
    let d = block_status(&mut c, 5, 0, off, 300, ctx);
    assert_eq!(d[0], (100, 0));
    assert_eq!(d[1].1, hz);
    // Writes and trims change the answer.
    c.write(0, 6, 200 * B, &payload(6, 4096));
    assert_eq!(c.status(6), 0);
    c.request(0, CMD_TRIM, 7, 0, BS);
    assert_eq!(c.status(7), 0);
    let d = block_status(&mut c, 8, 0, 0, 2 * BS, ctx);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d[0], (BS, hz));
    assert_eq!(d[1].1, 0);
    let d = block_status(&mut c, 9, 0, 199 * B, 3 * BS, ctx);
    assert_eq!(&d[..2], &[(BS, hz), (BS, 0)]);
    assert_eq!(d[2].1, hz);
    // Past the end, and of nothing: EINVAL, and the connection goes on.
    c.request(0, CMD_BLOCK_STATUS, 10, SIZE - 512, 1024);
    assert_eq!(c.status(10), EINVAL);
    c.request(CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 11, 0, 0);
    assert_eq!(c.status(11), EINVAL);
    // DF is for READ only.
    c.request(CMD_FLAG_DF, CMD_BLOCK_STATUS, 12, 0, 512);
    assert_eq!(c.status(12), EINVAL);
    assert_eq!(
        block_status(&mut c, 13, CMD_FLAG_REQ_ONE, SIZE - 1, 1, ctx),
        vec![(1, hz)]
    );
    disc(c);
}

#[test]
fn block_status_on_the_snapshot() {
    let (mut c, _, ctx) = Conn::transmit("@snap", true, true);
    let d = block_status(&mut c, 1, CMD_FLAG_REQ_ONE, 0, 4096, ctx.unwrap());
    assert_eq!(d, vec![(4096, 0)]);
    disc(c);
}

#[test]
fn disc_waits_for_requests_in_flight() {
    for structured in [false, true] {
        let (mut c, _, _) = Conn::transmit("live", structured, false);
        c.exports.live.set_delay(Duration::from_millis(15));
        // Writes, reads and a flush, then DISC, all in one go, before reading anything.
        let mut batch = Vec::new();
        let n = 12u64;
        for i in 0..n {
            batch.extend(write_req(0, i, 200 * B + i * B, &payload(i, 4096)));
        }
        for i in 0..n {
            c.reads.insert(100 + i, 4096);
            batch.extend(req(0, CMD_READ, 100 + i, i * B, 4096));
        }
        batch.extend(req(0, CMD_FLUSH, 200, 0, 0));
        batch.extend(req(0, CMD_DISC, 300, 0, 0));
        c.send(&batch);
        let mut seen = HashMap::new();
        for _ in 0..2 * n + 1 {
            let r = c.reply();
            assert!(r.is_final(), "one message per reply here: {r:?}");
            assert_eq!(r.error(), 0, "{r:?}");
            *seen.entry(r.cookie()).or_insert(0) += 1;
        }
        c.expect_eof();
        assert_eq!(seen.len() as u64, 2 * n + 1);
        assert!(seen.values().all(|v| *v == 1));
        assert!(!seen.contains_key(&300), "no reply to NBD_CMD_DISC");
        c.join().unwrap();
        for i in 0..n {
            assert_eq!(
                c.exports.live.contents(200 * B + i * B, 4096),
                payload(i, 4096)
            );
        }
        assert_eq!(c.stats.clients.load(Ordering::Relaxed), 0);
        assert_eq!(c.stats.connections_total.load(Ordering::Relaxed), 1);
    }
}

/// 200 pipelined writes, then 200 reads of them interleaved with 100 more writes: every
/// request gets exactly one reply with the right data, in whatever order.
fn pipelined(structured: bool) {
    let (mut c, _, _) = Conn::transmit("live", structured, false);
    c.exports.live.set_delay(Duration::from_micros(200));
    let n = 200u64;
    // Distinct, partly unaligned ranges: 1 KiB slots.
    let slot = |i: u64| (i * 1024 + (i % 5) * 3, 1000 + (i % 7) as u32);

    let mut batch = Vec::new();
    for i in 0..n {
        let (o, l) = slot(i);
        batch.extend(write_req(
            if i % 3 == 0 { CMD_FLAG_FUA } else { 0 },
            1000 + i,
            o,
            &payload(i, l as usize),
        ));
    }
    let mut w = c.s.try_clone().unwrap();
    let sender = std::thread::spawn(move || w.write_all(&batch).unwrap());
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = c.reply();
        assert!(r.is_final());
        assert_eq!(r.error(), 0, "{r:?}");
        *seen.entry(r.cookie()).or_insert(0u32) += 1;
    }
    sender.join().unwrap();
    assert_eq!(seen.len() as u64, n);
    assert!(seen.values().all(|v| *v == 1));
    for i in 0..n {
        let (o, l) = slot(i);
        assert_eq!(
            c.exports.live.contents(o, l as usize),
            payload(i, l as usize)
        );
    }

    let mut batch = Vec::new();
    for i in 0..n {
        let (o, l) = slot(i);
        c.reads.insert(5000 + i, l);
        batch.extend(req(0, CMD_READ, 5000 + i, o, l));
        if i % 2 == 0 {
            let j = n + i / 2;
            let (o, l) = slot(j);
            batch.extend(write_req(0, 5000 + j, o, &payload(j, l as usize)));
        }
    }
    let mut w = c.s.try_clone().unwrap();
    let sender = std::thread::spawn(move || w.write_all(&batch).unwrap());
    let total = n + n / 2;
    let mut seen: HashMap<u64, Vec<Reply>> = HashMap::new();
    let mut finals = 0;
    let mut order = Vec::new();
    while finals < total {
        let r = c.reply();
        let cookie = r.cookie();
        assert!((5000..5000 + n + n / 2).contains(&cookie), "{r:?}");
        let v = seen.entry(cookie).or_default();
        assert!(
            v.last().is_none_or(|m| !m.is_final()),
            "a message after the final one for {cookie}"
        );
        if r.is_final() {
            finals += 1;
            order.push(cookie);
        }
        v.push(r);
    }
    sender.join().unwrap();
    assert_eq!(seen.len() as u64, total);
    for i in 0..n {
        let (o, l) = slot(i);
        let got = read_result(&seen[&(5000 + i)], structured, o, l);
        assert_eq!(got.unwrap(), payload(i, l as usize), "read {i}");
    }
    for j in n..n + n / 2 {
        let r = &seen[&(5000 + j)];
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].error(), 0);
        let (o, l) = slot(j);
        assert_eq!(
            c.exports.live.contents(o, l as usize),
            payload(j, l as usize)
        );
    }
    assert_eq!(c.stats.writes.load(Ordering::Relaxed), n + n / 2);
    assert_eq!(c.stats.reads.load(Ordering::Relaxed), n);
    disc(c);
}

#[test]
fn pipelined_requests_with_simple_replies() {
    pipelined(false);
}

#[test]
fn pipelined_requests_with_structured_replies() {
    pipelined(true);
}

#[test]
fn bad_request_magic_closes_after_finishing_earlier_requests() {
    let (mut c, _, _) = Conn::transmit("live", false, false);
    c.write(0, 1, 0, &payload(1, 512));
    let mut bad = req(0, CMD_READ, 2, 0, 512);
    bad[0] = 0x12;
    c.send(&bad);
    assert_eq!(c.status(1), 0);
    c.expect_eof();
    assert!(matches!(c.join(), Err(ConnError::BadMagic(_))));
    assert_eq!(c.exports.live.contents(0, 512), payload(1, 512));
}

#[test]
fn a_handler_that_panics_ends_the_connection() {
    // The write's payload is run from the request buffer; if the export panics, the
    // payload must not be read as the next request (here: a READ of cookie 99).
    let (mut c, _, _) = Conn::transmit("live", false, false);
    c.exports.live.set_panic_on_write(true);
    c.send(&write_req(0, 1, 0, &req(0, CMD_READ, 99, 0, 512)));
    c.expect_eof();
    let h = c.take_server();
    let start = std::time::Instant::now();
    while !h.is_finished() {
        assert!(
            start.elapsed().as_secs() < 10,
            "serve_connection did not return"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(
        h.join().is_err(),
        "the handler's panic reaches the connection's thread"
    );
}

#[test]
fn a_write_over_the_maximum_closes() {
    for structured in [false, true] {
        let (mut c, _, _) = Conn::transmit("live", structured, false);
        c.request(0, CMD_WRITE, 1, 0, MAX_PAYLOAD + 1);
        c.expect_eof();
        assert!(matches!(c.join(), Err(ConnError::TooLarge(n)) if n == MAX_PAYLOAD + 1));
        assert!(c.exports.live.calls().is_empty());
    }
}

#[test]
fn a_write_at_the_maximum_is_read_whole_and_refused_past_the_end() {
    // MAX_PAYLOAD (64 MiB) is allowed on the wire; past the 1 MiB export it is ENOSPC,
    // and its payload must be consumed so the next request parses.
    let (mut c, _, _) = Conn::transmit("live", true, false);
    let mut w = c.s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut b = req(0, CMD_WRITE, 1, 0, MAX_PAYLOAD);
        b.resize(b.len() + MAX_PAYLOAD as usize, 0xab);
        w.write_all(&b).unwrap();
    });
    assert_eq!(c.status(1), ENOSPC);
    sender.join().unwrap();
    assert_eq!(
        c.read_data(0, 2, 0, 64).unwrap(),
        c.exports.live.contents(0, 64)
    );
    disc(c);
}

#[test]
fn client_hanging_up_mid_request_ends_the_connection() {
    let (mut c, _, _) = Conn::transmit("live", false, false);
    let mut w = write_req(0, 1, 0, &payload(1, 4096));
    w.truncate(28 + 100);
    c.send(&w);
    let r = c.hang_up();
    assert!(
        r.is_err(),
        "a truncated WRITE payload is an I/O error: {r:?}"
    );
    let (c, _, _) = Conn::transmit("live", false, false);
    // Hanging up between requests is a clean end.
    c.hang_up().unwrap();
}
