//! Option haggling, driven through `serve_connection` over a socket pair with a
//! hand-written client.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use rewind_nbd::negotiate::NegotiateError;
use rewind_nbd::proto::*;
use rewind_nbd::server::ConnError;

const LIVE_FLAGS: u16 = TFLAG_HAS_FLAGS
    | TFLAG_SEND_FLUSH
    | TFLAG_SEND_FUA
    | TFLAG_SEND_TRIM
    | TFLAG_SEND_WRITE_ZEROES
    | TFLAG_CAN_MULTI_CONN
    | TFLAG_SEND_CACHE;
const SNAP_FLAGS: u16 =
    TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN | TFLAG_SEND_CACHE;

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b[..2].try_into().unwrap())
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

fn started() -> Conn {
    let mut c = Conn::start(RamExports::new());
    c.handshake(CLIENT_FIXED_NEWSTYLE);
    c
}

/// Ends haggling politely and checks the server returns Ok.
fn abort(mut c: Conn) {
    let r = c.haggle(OPT_ABORT, &[]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].typ, REP_ACK);
    assert!(r[0].data.is_empty());
    c.expect_eof();
    c.join().unwrap();
}

/// After ACK to NBD_OPT_GO (or the EXPORT_NAME reply), the next bytes are a reply to a
/// request: no padding.
fn check_transmitting(c: &mut Conn, name: &str) {
    let want = c.exports.disk(name).contents(512, 64);
    assert_eq!(c.read_data(0, 0xabc, 512, 64).unwrap(), want);
    c.request(0, CMD_DISC, 0xdead, 0, 0);
    c.expect_eof();
    c.join().unwrap();
}

#[test]
fn greeting_announces_fixed_newstyle_and_no_zeroes() {
    let mut c = Conn::start(RamExports::new());
    let (magic, opt, flags) = c.greeting();
    assert_eq!(magic, NBDMAGIC);
    assert_eq!(opt, IHAVEOPT);
    assert_eq!(flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    c.send(&be32(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES));
    abort(c);
}

/// NBD_FLAG_C_FIXED_NEWSTYLE is a SHOULD for clients; only unknown flags may be dropped.
/// A plain newstyle client (as old nbd-client and nbd-tester-client against a server that
/// did not offer fixed newstyle send) ends haggling with NBD_OPT_EXPORT_NAME.
#[test]
fn client_without_fixed_newstyle_is_served() {
    for (flags, padded) in [(0, true), (CLIENT_NO_ZEROES, false)] {
        let mut c = Conn::start(RamExports::new());
        c.greeting();
        c.send(&be32(flags));
        c.option(OPT_EXPORT_NAME, b"live");
        let r = c.read(if padded { 8 + 2 + 124 } else { 8 + 2 });
        assert_eq!(be_u64(&r), SIZE);
        assert_eq!(be_u16(&r[8..]), LIVE_FLAGS);
        assert!(r[10..].iter().all(|b| *b == 0));
        check_transmitting(&mut c, "live");
    }
}

#[test]
fn client_with_unknown_flags_is_dropped() {
    let mut c = Conn::start(RamExports::new());
    c.greeting();
    c.send(&be32(CLIENT_FIXED_NEWSTYLE | 4));
    c.expect_eof();
    assert!(matches!(
        c.join(),
        Err(ConnError::Negotiate(NegotiateError::UnknownClientFlags(5)))
    ));
}

#[test]
fn client_going_away_in_haggling_ends_the_connection() {
    let mut c = Conn::start(RamExports::new());
    c.greeting();
    c.send(&be32(CLIENT_FIXED_NEWSTYLE));
    // Half an option header, then hang up.
    c.send(&be64(IHAVEOPT));
    assert!(c.hang_up().is_ok());
}

#[test]
fn bad_option_magic_closes() {
    let mut c = started();
    let mut o = opt(OPT_LIST, &[]);
    o[0] ^= 0xff;
    c.send(&o);
    c.expect_eof();
    assert!(matches!(
        c.join(),
        Err(ConnError::Negotiate(NegotiateError::BadOptionMagic(_)))
    ));
}

#[test]
fn list_names_both_exports_then_acks() {
    let mut c = started();
    let r = c.haggle(OPT_LIST, &[]);
    assert_eq!(r.len(), 3, "{r:?}");
    let mut seen = Vec::new();
    for s in &r[..2] {
        assert_eq!(s.typ, REP_SERVER);
        let n = be_u32(&s.data) as usize;
        assert!(n <= s.data.len() - 4);
        let name = std::str::from_utf8(&s.data[4..4 + n]).unwrap().to_string();
        let desc = std::str::from_utf8(&s.data[4 + n..]).unwrap().to_string();
        seen.push((name, desc));
    }
    assert_eq!(
        seen,
        vec![
            ("live".to_string(), LIVE_DESC.to_string()),
            ("@snap".to_string(), SNAP_DESC.to_string())
        ]
    );
    assert_eq!(r[2].typ, REP_ACK);
    assert!(r[2].data.is_empty());

    // With data it is invalid, and the session goes on.
    let r = c.haggle(OPT_LIST, b"x");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].typ, REP_ERR_INVALID);
    assert_eq!(c.haggle(OPT_LIST, &[]).len(), 3);
    abort(c);
}

/// Parses the INFO replies of an INFO/GO: (type, payload after the type).
fn infos(r: &[OptReply]) -> Vec<(u16, Vec<u8>)> {
    r.iter()
        .filter(|r| r.typ == REP_INFO)
        .map(|r| (be_u16(&r.data), r.data[2..].to_vec()))
        .collect()
}

#[test]
fn info_reports_export_name_description_and_block_size() {
    let mut c = started();
    for (name, desc, flags) in [
        ("live", LIVE_DESC, LIVE_FLAGS),
        ("@snap", SNAP_DESC, SNAP_FLAGS),
    ] {
        // 0x7777: an info type we do not know, which the server must ignore.
        let r = c.haggle(
            OPT_INFO,
            &info_data(
                name,
                &[INFO_NAME, 0x7777, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
            ),
        );
        assert_eq!(r.last().unwrap().typ, REP_ACK, "{r:?}");
        assert!(r.last().unwrap().data.is_empty());
        let got = infos(&r);
        assert_eq!(got.len(), 4, "{got:?}");
        let get = |t: u16| {
            let v: Vec<_> = got.iter().filter(|(ty, _)| *ty == t).collect();
            assert_eq!(v.len(), 1, "info {t} sent {} times", v.len());
            v[0].1.clone()
        };
        let e = get(INFO_EXPORT);
        assert_eq!(e.len(), 10);
        assert_eq!(be_u64(&e), SIZE);
        assert_eq!(
            be_u16(&e[8..]),
            flags,
            "{name}: flags {:#x}",
            be_u16(&e[8..])
        );
        assert_eq!(get(INFO_NAME), name.as_bytes());
        assert_eq!(get(INFO_DESCRIPTION), desc.as_bytes());
        let b = get(INFO_BLOCK_SIZE);
        assert_eq!(b.len(), 12);
        let (min, pref, max) = (be_u32(&b), be_u32(&b[4..]), be_u32(&b[8..]));
        // The spec's constraints on advertised sizes.
        assert!(min.is_power_of_two() && min <= 1 << 16, "min {min}");
        assert!(
            pref.is_power_of_two() && pref >= min.max(512),
            "pref {pref}"
        );
        assert_eq!(pref, BS);
        assert!(max == u32::MAX || max % min == 0, "max {max}");
        assert!(u64::from(max) >= u64::from(pref).min(SIZE));
        assert!(max >= 1 << 20);
    }
    // INFO does not enter transmission: haggling goes on.
    let r = c.haggle(OPT_INFO, &info_data("live", &[]));
    assert_eq!(
        infos(&r).len(),
        1,
        "only NBD_INFO_EXPORT when nothing is asked"
    );
    abort(c);
}

/// An info asked for twice (or NBD_INFO_EXPORT, which is always sent) is sent once: a
/// client that reads NBD_INFO_BLOCK_SIZE twice may take the second as a protocol error.
#[test]
fn each_info_is_sent_once_even_when_asked_twice() {
    let asked = [
        INFO_BLOCK_SIZE,
        INFO_NAME,
        INFO_BLOCK_SIZE,
        INFO_EXPORT,
        INFO_DESCRIPTION,
        INFO_NAME,
        INFO_DESCRIPTION,
        INFO_BLOCK_SIZE,
    ];
    let mut c = started();
    for o in [OPT_INFO, OPT_GO] {
        let r = c.haggle(o, &info_data("live", &asked));
        assert_eq!(r.last().unwrap().typ, REP_ACK, "{r:?}");
        let mut types: Vec<u16> = infos(&r).iter().map(|(t, _)| *t).collect();
        types.sort_unstable();
        assert_eq!(
            types,
            [INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
            "{o}"
        );
    }
    check_transmitting(&mut c, "live");
}

#[test]
fn info_and_go_for_an_unknown_export_fail_and_the_session_continues() {
    let mut c = started();
    for o in [OPT_INFO, OPT_GO] {
        let r = c.haggle(o, &info_data("nope", &[INFO_NAME]));
        assert_eq!(r.len(), 1, "no NBD_REP_INFO before the error: {r:?}");
        assert_eq!(r[0].typ, REP_ERR_UNKNOWN);
        assert!(std::str::from_utf8(&r[0].data).is_ok());
    }
    // Malformed: name length past the end.
    let mut bad = info_data("live", &[]);
    bad[3] = 200;
    let r = c.haggle(OPT_GO, &bad);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].typ, REP_ERR_INVALID);
    // Trailing bytes after the info list.
    let mut bad = info_data("live", &[INFO_NAME]);
    bad.push(0);
    assert_eq!(c.haggle(OPT_INFO, &bad)[0].typ, REP_ERR_INVALID);

    let r = c.haggle(OPT_GO, &info_data("live", &[]));
    assert_eq!(r.last().unwrap().typ, REP_ACK);
    check_transmitting(&mut c, "live");
}

/// An export that cannot be opened is refused with the NBD_REP_ERR_* of its reason, and the
/// reason's own text (clients print it: qemu as "server reported: ..."), for every option
/// that opens one.
#[test]
fn refused_exports_say_why_with_the_code_of_the_reason() {
    let mut c = started();
    assert_eq!(c.haggle(OPT_STRUCTURED_REPLY, &[])[0].typ, REP_ACK);
    for (name, code, text) in [
        ("nope", REP_ERR_UNKNOWN, "no export named \"nope\""),
        ("@bad", REP_ERR_INVALID, REFUSED_BAD),
        (
            "@io",
            REP_ERR_UNKNOWN,
            "I/O error: vault corrupted at byte 7",
        ),
        ("@stopping", REP_ERR_SHUTDOWN, "server is shutting down"),
    ] {
        for (o, data) in [
            (OPT_INFO, info_data(name, &[INFO_NAME])),
            (OPT_GO, info_data(name, &[])),
            (OPT_LIST_META_CONTEXT, meta_data(name, &[])),
            (OPT_SET_META_CONTEXT, meta_data(name, &[BASE_ALLOCATION])),
        ] {
            let r = c.haggle(o, &data);
            assert_eq!(r.len(), 1, "{name} {o}: {r:?}");
            assert_eq!(r[0].typ, code, "{name} {o}");
            assert_eq!(std::str::from_utf8(&r[0].data).unwrap(), text, "{name} {o}");
        }
    }
    let r = c.haggle(OPT_GO, &info_data("live", &[]));
    assert_eq!(r.last().unwrap().typ, REP_ACK);
    c.structured = true;
    check_transmitting(&mut c, "live");
}

#[test]
fn go_enters_transmission_without_padding() {
    for name in ["live", "@snap"] {
        // Without NO_ZEROES too: GO never pads.
        let mut c = started();
        let r = c.haggle(OPT_GO, &info_data(name, &[INFO_BLOCK_SIZE]));
        assert_eq!(r.last().unwrap().typ, REP_ACK);
        let e = &infos(&r)
            .into_iter()
            .find(|(t, _)| *t == INFO_EXPORT)
            .unwrap()
            .1;
        assert_eq!(be_u64(e), SIZE);
        check_transmitting(&mut c, name);
        assert_eq!(c.exports.opened.lock().unwrap().as_slice(), [name]);
    }
}

#[test]
fn export_name_with_zero_padding() {
    let mut c = started();
    c.option(OPT_EXPORT_NAME, b"live");
    let r = c.read(8 + 2 + 124);
    assert_eq!(be_u64(&r), SIZE);
    assert_eq!(be_u16(&r[8..]), LIVE_FLAGS);
    assert!(r[10..].iter().all(|b| *b == 0));
    check_transmitting(&mut c, "live");
}

#[test]
fn export_name_with_no_zeroes() {
    let mut c = Conn::start(RamExports::new());
    c.handshake(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
    c.option(OPT_EXPORT_NAME, b"@snap");
    let r = c.read(10);
    assert_eq!(be_u64(&r), SIZE);
    assert_eq!(be_u16(&r[8..]), SNAP_FLAGS);
    check_transmitting(&mut c, "@snap");
}

#[test]
fn export_name_unknown_closes_without_a_reply() {
    let mut c = started();
    c.option(OPT_EXPORT_NAME, b"nope");
    c.expect_eof();
    c.join().unwrap();
}

#[test]
fn abort_is_acked_then_closed() {
    abort(started());
    // Data with NBD_OPT_ABORT is ignored, not refused.
    let mut c = started();
    let r = c.haggle(OPT_ABORT, b"bye");
    assert_eq!(r[0].typ, REP_ACK);
    c.expect_eof();
    c.join().unwrap();
}

#[test]
fn structured_reply_with_data_is_invalid() {
    let mut c = started();
    let r = c.haggle(OPT_STRUCTURED_REPLY, &[1]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].typ, REP_ERR_INVALID);
    // Not negotiated: SET_META_CONTEXT still refused.
    let r = c.haggle(OPT_SET_META_CONTEXT, &meta_data("live", &[BASE_ALLOCATION]));
    assert_eq!(r[0].typ, REP_ERR_INVALID);
    let r = c.haggle(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].typ, REP_ACK);
    abort(c);
}

#[test]
fn set_meta_context_before_structured_is_invalid_and_selects_nothing() {
    let mut c = started();
    let r = c.haggle(OPT_SET_META_CONTEXT, &meta_data("live", &[BASE_ALLOCATION]));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].typ, REP_ERR_INVALID);
    assert_eq!(c.haggle(OPT_STRUCTURED_REPLY, &[])[0].typ, REP_ACK);
    c.structured = true;
    assert_eq!(
        c.haggle(OPT_GO, &info_data("live", &[]))
            .last()
            .unwrap()
            .typ,
        REP_ACK
    );
    // No context: BLOCK_STATUS is EINVAL.
    c.request(0, CMD_BLOCK_STATUS, 1, 0, 4096);
    assert_eq!(c.status(1), Errno::Inval as u32);
    c.request(0, CMD_DISC, 2, 0, 0);
    c.expect_eof();
    c.join().unwrap();
}

fn meta_contexts(r: &[OptReply]) -> Vec<(u32, String)> {
    r.iter()
        .filter(|r| r.typ == REP_META_CONTEXT)
        .map(|r| {
            (
                be_u32(&r.data),
                String::from_utf8(r.data[4..].to_vec()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn list_and_set_meta_context_for_base_allocation() {
    let mut c = started();
    assert_eq!(c.haggle(OPT_STRUCTURED_REPLY, &[])[0].typ, REP_ACK);
    for (queries, found) in [
        (&[][..], true),
        (&["base:"][..], true),
        (&["base:allocation"][..], true),
        (&["qemu:dirty-bitmap:x", "base:allocation"][..], true),
        (&["qemu:dirty-bitmap:x"][..], false),
        (&["base:other"][..], false),
    ] {
        let r = c.haggle(OPT_LIST_META_CONTEXT, &meta_data("live", queries));
        assert_eq!(r.last().unwrap().typ, REP_ACK, "{queries:?}: {r:?}");
        let m = meta_contexts(&r);
        if found {
            assert_eq!(m.len(), 1, "{queries:?}: {r:?}");
            assert_eq!(m[0].1, BASE_ALLOCATION);
            // The id in LIST replies is reserved and SHOULD be zero.
            assert_eq!(m[0].0, 0);
        } else {
            assert!(m.is_empty(), "{queries:?}: {r:?}");
        }
    }
    // LIST on an unknown export, or malformed.
    let r = c.haggle(OPT_LIST_META_CONTEXT, &meta_data("nope", &[]));
    assert_eq!(r.last().unwrap().typ, REP_ERR_UNKNOWN);
    let mut bad = meta_data("live", &["base:allocation"]);
    bad.pop();
    assert_eq!(
        c.haggle(OPT_LIST_META_CONTEXT, &bad)[0].typ,
        REP_ERR_INVALID
    );

    // SET: "base:" is a LIST-only wildcard and selects nothing.
    let r = c.haggle(OPT_SET_META_CONTEXT, &meta_data("live", &["base:"]));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].typ, REP_ACK);
    let r = c.haggle(OPT_SET_META_CONTEXT, &meta_data("live", &[BASE_ALLOCATION]));
    assert_eq!(r.len(), 2, "{r:?}");
    let m = meta_contexts(&r);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].1, BASE_ALLOCATION);
    let id = m[0].0;
    assert_eq!(r[1].typ, REP_ACK);

    // The selection takes: BLOCK_STATUS is answered with that id.
    assert_eq!(
        c.haggle(OPT_GO, &info_data("live", &[]))
            .last()
            .unwrap()
            .typ,
        REP_ACK
    );
    c.structured = true;
    c.request(0, CMD_BLOCK_STATUS, 9, 0, 4096);
    let r = c.reply_to(9);
    assert_eq!(r.len(), 1);
    let Reply::Chunk { typ, payload, .. } = &r[0] else {
        panic!("{r:?}")
    };
    assert_eq!(*typ, REPLY_TYPE_BLOCK_STATUS);
    assert_eq!(be_u32(payload), id);
    c.request(0, CMD_DISC, 2, 0, 0);
    c.expect_eof();
    c.join().unwrap();
}

#[test]
fn a_failed_set_meta_context_clears_the_selection() {
    // The spec: SET_META_CONTEXT "replaces all previously-set metadata contexts
    // (including when this command fails)".
    let mut c = started();
    assert_eq!(c.haggle(OPT_STRUCTURED_REPLY, &[])[0].typ, REP_ACK);
    let r = c.haggle(OPT_SET_META_CONTEXT, &meta_data("live", &[BASE_ALLOCATION]));
    assert_eq!(r.last().unwrap().typ, REP_ACK);
    let r = c.haggle(OPT_SET_META_CONTEXT, &meta_data("nope", &[BASE_ALLOCATION]));
    assert_eq!(r.last().unwrap().typ, REP_ERR_UNKNOWN);
    assert_eq!(
        c.haggle(OPT_GO, &info_data("live", &[]))
            .last()
            .unwrap()
            .typ,
        REP_ACK
    );
    c.structured = true;
    c.request(0, CMD_BLOCK_STATUS, 1, 0, 4096);
    assert_eq!(c.status(1), Errno::Inval as u32);
    c.request(0, CMD_DISC, 2, 0, 0);
    c.expect_eof();
    c.join().unwrap();
}

#[test]
fn df_is_advertised_only_with_structured_replies() {
    let mut c = started();
    let flags = |r: &[OptReply]| {
        let e = &infos(r)
            .into_iter()
            .find(|(t, _)| *t == INFO_EXPORT)
            .unwrap()
            .1;
        be_u16(&e[8..])
    };
    let r = c.haggle(OPT_INFO, &info_data("live", &[]));
    assert_eq!(flags(&r), LIVE_FLAGS);
    assert_eq!(c.haggle(OPT_STRUCTURED_REPLY, &[])[0].typ, REP_ACK);
    let r = c.haggle(OPT_INFO, &info_data("live", &[]));
    assert_eq!(flags(&r), LIVE_FLAGS | TFLAG_SEND_DF);
    let r = c.haggle(OPT_INFO, &info_data("@snap", &[]));
    assert_eq!(flags(&r), SNAP_FLAGS | TFLAG_SEND_DF);
    abort(c);
}

#[test]
fn unknown_options_are_unsupported_and_the_session_continues() {
    let mut c = started();
    for o in [0u32, 4, 11, 12, 99, 0x8000_0001, OPT_STARTTLS] {
        let r = c.haggle(o, b"some data");
        assert_eq!(r.len(), 1, "{o}: {r:?}");
        assert_eq!(r[0].typ, REP_ERR_UNSUP, "option {o}");
    }
    let r = c.haggle(OPT_STARTTLS, &[]);
    assert_eq!(r[0].typ, REP_ERR_UNSUP);
    assert_eq!(c.haggle(OPT_LIST, &[]).len(), 3);
    abort(c);
}

#[test]
fn an_option_over_the_length_limit_is_too_big_and_closes() {
    let mut c = started();
    // The largest allowed option is read (and refused as malformed).
    let r = c.haggle(OPT_INFO, &vec![0xffu8; MAX_OPTION_LEN as usize]);
    assert_eq!(r[0].typ, REP_ERR_INVALID);
    // One byte more is too big; the server cannot skip it and closes.
    let mut h = Vec::new();
    h.extend_from_slice(&be64(IHAVEOPT));
    h.extend_from_slice(&be32(OPT_INFO));
    h.extend_from_slice(&be32(MAX_OPTION_LEN + 1));
    c.send(&h);
    let r = c.opt_reply();
    assert_eq!(r.opt, OPT_INFO);
    assert_eq!(r.typ, REP_ERR_TOO_BIG);
    c.expect_eof();
    assert!(matches!(c.join(), Err(ConnError::OptionTooLarge(n)) if n == MAX_OPTION_LEN + 1));
}

#[test]
fn many_options_in_one_session() {
    let mut c = started();
    for i in 0..50 {
        match i % 4 {
            0 => assert_eq!(c.haggle(OPT_LIST, &[]).len(), 3),
            1 => assert_eq!(
                c.haggle(OPT_INFO, &info_data("@snap", &[]))
                    .last()
                    .unwrap()
                    .typ,
                REP_ACK
            ),
            2 => assert_eq!(c.haggle(77, &[])[0].typ, REP_ERR_UNSUP),
            _ => assert_eq!(
                c.haggle(OPT_GO, &info_data("x", &[]))[0].typ,
                REP_ERR_UNKNOWN
            ),
        }
    }
    let r = c.haggle(OPT_GO, &info_data("live", &[]));
    assert_eq!(r.last().unwrap().typ, REP_ACK);
    check_transmitting(&mut c, "live");
}
