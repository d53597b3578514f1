//! The vault against a reference model: random sequences of writes (single- and
//! multi-record), zeroes, trims, snapshots, seals, flushes and reopens, with random seal
//! policies, block sizes, compression and base images. Every point the vault can name
//! (each seq, each snapshot, `seq:0`, `now`, times) must read back exactly the model's
//! image, from the writer and from a read-only opener.

#![allow(clippy::unwrap_used)]

mod common;

use common::{check_everything, check_point, check_snapshots, Model, Rng};
use proptest::prelude::*;
use rewind_format::record::MAX_WRITE_PAYLOAD;
use rewind_vault::{
    format_time, Compression, Extent, ExtentKind, Point, PointView, SealPolicy, Seq, Vault,
    VaultError,
};

#[derive(Debug, Clone)]
struct Config {
    bs: u32,
    blocks: usize,
    seed: u64,
    seal: SealPolicy,
}

#[derive(Debug, Clone)]
enum Op {
    /// `big` writes may cover the whole volume (several records at 4096-byte blocks).
    Write {
        at: u64,
        len: u64,
        big: bool,
        seed: u64,
    },
    Zero {
        at: u64,
        len: u64,
    },
    Trim {
        at: u64,
        len: u64,
    },
    Snapshot {
        app: bool,
    },
    /// Taking a snapshot under a name already used: an error that appends nothing.
    DuplicateSnapshot,
    Seal,
    Flush,
    /// `close` then `Vault::open`.
    Reopen,
    /// Drop without closing (a process exit) then `Vault::open`.
    DropReopen,
    /// Flush, then open read-only next to the writer and compare.
    ReadOnly {
        pick: u64,
    },
    /// Read a random seq and `now`.
    Check {
        pick: u64,
    },
}

fn config() -> impl Strategy<Value = Config> {
    let geometry = prop_oneof![
        6 => (Just(512u32), 64usize..=256),
        1 => (Just(2048u32), 64usize..=128),
        4 => (Just(4096u32), 33usize..=64),
        1 => (Just(65536u32), 3usize..=12),
    ];
    let seal = (
        prop_oneof![2 => Just(0u64), 3 => 1u64..=8],
        prop_oneof![2 => Just(0u64), 1 => 1024u64..=65536],
        prop_oneof![6 => Just(0u64), 1 => Just(1_000_000u64)],
    )
        .prop_map(|(writes, bytes, interval_ns)| SealPolicy {
            bytes,
            interval_ns,
            writes,
        });
    (geometry, any::<u64>(), seal).prop_map(|((bs, blocks), seed, seal)| Config {
        bs,
        blocks,
        seed,
        seal,
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (any::<u64>(), any::<u64>(), prop::bool::weighted(0.25), any::<u64>())
            .prop_map(|(at, len, big, seed)| Op::Write { at, len, big, seed }),
        3 => (any::<u64>(), any::<u64>()).prop_map(|(at, len)| Op::Zero { at, len }),
        3 => (any::<u64>(), any::<u64>()).prop_map(|(at, len)| Op::Trim { at, len }),
        2 => any::<bool>().prop_map(|app| Op::Snapshot { app }),
        1 => Just(Op::DuplicateSnapshot),
        1 => Just(Op::Seal),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::DropReopen),
        1 => any::<u64>().prop_map(|pick| Op::ReadOnly { pick }),
        2 => any::<u64>().prop_map(|pick| Op::Check { pick }),
    ]
}

/// A block range inside the volume from two random numbers.
fn range(blocks: u64, at: u64, len: u64, max_len: u64) -> (u64, u64) {
    let len = 1 + len % max_len.min(blocks);
    let at = at % (blocks - len + 1);
    (at, len)
}

fn run(cfg: &Config, compression: Compression, ops: &[Op]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vault");
    let (mut vault, mut model) = common::create(
        tmp.path(),
        cfg.bs,
        cfg.blocks,
        cfg.seed,
        compression,
        cfg.seal,
    );
    let blocks = model.blocks();
    let bs = cfg.bs as usize;
    check_point(&vault, &Point::Seq(Seq(0)), model.image(0), "fresh");
    let mut snap_no = 0u32;
    for (i, op) in ops.iter().enumerate() {
        let what = format!("op {i} {op:?}");
        match *op {
            Op::Write { at, len, big, seed } => {
                let (at, len) = range(blocks, at, len, if big { blocks } else { 8 });
                let data = common::data(seed, bs, len as usize);
                let want = model.write(at, &data);
                assert_eq!(vault.write(at, &data).unwrap(), Seq(want), "{what}");
            }
            Op::Zero { at, len } => {
                let (at, len) = range(blocks, at, len, blocks);
                let want = model.zero(at, len);
                assert_eq!(vault.zero(at, len).unwrap(), Seq(want), "{what}");
            }
            Op::Trim { at, len } => {
                let (at, len) = range(blocks, at, len, blocks);
                let want = model.zero(at, len);
                assert_eq!(vault.trim(at, len).unwrap(), Seq(want), "{what}");
            }
            Op::Snapshot { app } => {
                snap_no += 1;
                let name = format!("snap-{snap_no}");
                let want = model.marker(&name);
                let s = vault.snapshot(&name, app).unwrap();
                assert_eq!(
                    (s.name.as_str(), s.seq, s.app_consistent),
                    (name.as_str(), Seq(want), app),
                    "{what}"
                );
                // A snapshot seals: nothing is left open and everything is durable.
                assert_eq!(vault.info().open_records, 0, "{what}");
                assert_eq!(vault.info().durable_seq, Seq(want), "{what}");
            }
            Op::DuplicateSnapshot => {
                if let Some((name, _)) = model.snaps.first() {
                    match vault.snapshot(name, false) {
                        Err(VaultError::SnapshotExists(n)) => assert_eq!(&n, name),
                        // Nothing was appended since: the same name names the same point,
                        // and the call is that snapshot again (a retry after a failure).
                        Ok(s) if s.seq == Seq(model.newest()) => assert_eq!(&s.name, name),
                        other => panic!("{what}: {other:?}"),
                    }
                }
            }
            Op::Seal => {
                let open = vault.info().open_records;
                let sealed = vault.seal().unwrap();
                assert_eq!(sealed.is_some(), open > 0, "{what}");
                if let Some(iv) = sealed {
                    assert_eq!(iv.seq_to, Seq(model.newest()), "{what}");
                    assert_eq!(iv.seq_to.0 + 1 - iv.seq_from.0, open, "{what}");
                }
            }
            Op::Flush => {
                assert_eq!(vault.flush().unwrap(), Seq(model.newest()), "{what}");
                assert_eq!(vault.log_position().durable_seq, Seq(model.newest()));
            }
            Op::Reopen => {
                vault.close().unwrap();
                vault = Vault::open(&dir).unwrap();
                assert_eq!(vault.info().open_records, 0, "{what}: close seals");
                spot_check(&vault, &model, i as u64, &what);
            }
            Op::DropReopen => {
                drop(vault);
                vault = Vault::open(&dir).unwrap();
                spot_check(&vault, &model, i as u64, &what);
            }
            Op::ReadOnly { pick } => {
                vault.flush().unwrap();
                let ro = Vault::open_read_only(&dir).unwrap();
                assert_eq!(ro.info().newest_seq, Seq(model.newest()), "{what}");
                spot_check(&ro, &model, pick, &format!("{what} (read-only)"));
                assert!(matches!(
                    ro.write(0, &vec![1; bs]),
                    Err(VaultError::ReadOnly)
                ));
                assert!(matches!(ro.flush(), Err(VaultError::ReadOnly)));
                assert!(matches!(ro.seal(), Err(VaultError::ReadOnly)));
            }
            Op::Check { pick } => spot_check(&vault, &model, pick, &what),
        }
        assert_eq!(vault.info().newest_seq, Seq(model.newest()), "{what}");
    }

    check_everything(&vault, &model, "end");
    check_intervals(&vault, &model, cfg.seal);
    check_times(&vault, &model, cfg.seed);

    // A reader that opens next to the writer sees what was flushed.
    vault.flush().unwrap();
    let ro = Vault::open_read_only(&dir).unwrap();
    check_everything(&ro, &model, "read-only beside the writer");
    drop(ro);

    vault.close().unwrap();
    let ro = Vault::open_read_only(&dir).unwrap();
    check_everything(&ro, &model, "read-only after close");
    check_intervals(&ro, &model, cfg.seal);
    drop(ro);

    let vault = Vault::open(&dir).unwrap();
    check_everything(&vault, &model, "reopened after close");
}

/// `now`, the snapshots and three random seqs (one of them on an interval edge if any).
fn spot_check(vault: &Vault, model: &Model, pick: u64, what: &str) {
    let mut rng = Rng(pick);
    let n = model.newest();
    check_point(vault, &"now".parse().unwrap(), model.image(n), what);
    check_point(vault, &"seq:0".parse().unwrap(), model.image(0), what);
    for _ in 0..2 {
        let s = rng.below(n + 1);
        check_point(
            vault,
            &format!("seq:{s}").parse().unwrap(),
            model.image(s),
            what,
        );
    }
    let edges: Vec<Seq> = vault.intervals().iter().map(|iv| iv.seq_to).collect();
    if !edges.is_empty() {
        let s = edges[rng.below(edges.len() as u64) as usize];
        check_point(vault, &Point::Seq(s), model.image(s.0), what);
    }
    let asked = rng.below(n + 1);
    // Listed first: listing waits for a seal in flight, so the view sees it committed.
    let ivs = vault.intervals();
    let view = vault.view(&Point::Seq(Seq(asked))).unwrap();
    // A seq inside a host write names the state before that write.
    let s = model.boundary(asked);
    assert_eq!(view.point().seq, Seq(s), "{what}: seq:{asked}");
    assert_eq!(
        view.sources(0, model.blocks()).unwrap(),
        model.sources(s),
        "{what}: sources at seq:{s}"
    );
    check_extents(&view, model, s, &mut rng, what);
    // The cost of the view: the maps before the interval holding the point, and a replay
    // of that interval up to the point (none when the point ends a sealed interval). A
    // point after an interval whose seal has not committed (a reader opened while the
    // writer sealed) replays that interval too.
    let (maps, replayed) = match ivs
        .iter()
        .position(|iv| iv.seq_from.0 <= s && s <= iv.seq_to.0)
    {
        None => (0, 0),
        Some(i) if ivs[i].sealed && ivs[i].seq_to.0 == s => (i + 1, 0),
        Some(i) => {
            let from = ivs.iter().position(|iv| !iv.sealed).unwrap_or(i).min(i);
            (from, model.blocks_changed(ivs[from].seq_from.0, s))
        }
    };
    assert_eq!(
        (view.maps_consulted(), view.replayed_blocks()),
        (maps, replayed),
        "{what}: cost of a view at seq:{s}"
    );
    check_snapshots(vault, model, what);
    match vault.view(&Point::Seq(Seq(n + 1))) {
        Err(VaultError::SeqAfterNewest { seq, newest }) => {
            assert_eq!((seq, newest), (Seq(n + 1), Seq(n)), "{what}");
        }
        other => panic!("{what}: seq:{} gave {:?}", n + 1, other.map(|v| v.point())),
    }
}

/// The view's extents against the model's per-block sources at `seq`: they tile the
/// volume in order, adjacent ones differ in kind, each block's kind is its source, a base
/// hole is a zero block of the base image; a random range gives the same extents cut to
/// it, a bounded ask a prefix of them, and `reads_as_zero` agrees.
fn check_extents(view: &PointView, model: &Model, seq: u64, rng: &mut Rng, what: &str) {
    let what = format!("{what}: extents at seq:{seq}");
    let blocks = model.blocks();
    let sources = model.sources(seq);
    let bs = model.bs;
    let all = view.extents(0, blocks).unwrap();
    let mut at = 0;
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.first_block, at, "{what}: {all:?}");
        assert!(e.count > 0, "{what}: {all:?}");
        assert!(
            i == 0 || all[i - 1].kind != e.kind,
            "{what}: not merged: {all:?}"
        );
        for b in e.first_block..e.end() {
            assert_eq!(e.kind.source(), sources[b as usize], "{what}: block {b}");
            if e.kind == ExtentKind::BaseHole {
                let block = &model.image(0)[b as usize * bs..(b as usize + 1) * bs];
                assert!(block.iter().all(|&x| x == 0), "{what}: block {b}");
            }
        }
        at = e.end();
    }
    assert_eq!(at, blocks, "{what}: {all:?}");
    for _ in 0..4 {
        let first = rng.below(blocks);
        let count = 1 + rng.below(blocks - first);
        let end = first + count;
        let cut: Vec<Extent> = all
            .iter()
            .filter(|e| e.end() > first && e.first_block < end)
            .map(|e| {
                let f = e.first_block.max(first);
                Extent {
                    first_block: f,
                    count: e.end().min(end) - f,
                    kind: e.kind,
                }
            })
            .collect();
        let got = view.extents(first, count).unwrap();
        assert_eq!(got, cut, "{what}: range {first}+{count}");
        for max in [1, 2, 3] {
            let got = view.extents_upto(first, count, max).unwrap();
            assert_eq!(
                got,
                cut[..max.min(cut.len())],
                "{what}: range {first}+{count}, at most {max}"
            );
        }
        assert_eq!(
            view.reads_as_zero(first, count).unwrap(),
            cut.iter().all(|e| e.kind.reads_as_zero()),
            "{what}: reads_as_zero {first}+{count}"
        );
    }
}

/// Intervals tile 1..=newest, list what the model says each changed, and obey the policy.
fn check_intervals(vault: &Vault, model: &Model, seal: SealPolicy) {
    let ivs = vault.intervals();
    let mut next = 1u64;
    let mut last_time = i64::MIN;
    for (i, iv) in ivs.iter().enumerate() {
        assert_eq!(
            iv.seq_from,
            Seq(next),
            "interval {i} {iv:?} does not follow"
        );
        assert!(iv.seq_to >= iv.seq_from, "{iv:?}");
        assert!(
            iv.time_from_ns <= iv.time_to_ns && last_time <= iv.time_from_ns,
            "{iv:?}"
        );
        last_time = iv.time_to_ns;
        assert_eq!(
            iv.blocks_changed,
            model.blocks_changed(iv.seq_from.0, iv.seq_to.0),
            "{iv:?}"
        );
        assert_eq!(
            iv.sealed,
            i + 1 < ivs.len() || vault.info().open_records == 0
        );
        let records = iv.seq_to.0 + 1 - iv.seq_from.0;
        if seal.writes > 0 {
            if iv.sealed {
                // Seals fall between host writes: the count is checked after each one.
                let last_unit = model.boundary(iv.seq_to.0 - 1) + 1;
                let before = last_unit.max(iv.seq_from.0) - iv.seq_from.0;
                assert!(before < seal.writes, "{iv:?} holds more than {seal:?}");
            } else {
                assert!(
                    records < seal.writes,
                    "open {iv:?} should have sealed: {seal:?}"
                );
            }
        }
        if seal.bytes > 0 && !iv.sealed {
            assert!(
                iv.log_bytes + 48 < seal.bytes,
                "open {iv:?} should have sealed: {seal:?}"
            );
        }
        if iv.sealed {
            let seg = vault
                .dir()
                .join("log")
                .join(format!("seg-{:020}.log", iv.seq_from.0));
            let len = std::fs::metadata(&seg).unwrap().len();
            assert_eq!(iv.log_bytes + 48, len, "{iv:?}: log bytes");
        }
        next = iv.seq_to.0 + 1;
    }
    assert_eq!(
        next,
        model.newest() + 1,
        "intervals do not reach the newest seq"
    );
}

/// Time points: the state after the last record at or before the time.
fn check_times(vault: &Vault, model: &Model, seed: u64) {
    let n = model.newest();
    let ts: Vec<i64> = (0..=n)
        .map(|s| vault.resolve(&Point::Seq(Seq(s))).unwrap().time_ns)
        .collect();
    assert_eq!(ts[0], vault.info().created_ns);
    assert!(
        ts.windows(2).all(|w| w[0] <= w[1]),
        "timestamps go back: {ts:?}"
    );
    let expect = |t: i64| ts.iter().rposition(|x| *x <= t).unwrap() as u64;
    let mut rng = Rng(seed ^ 0x7173);
    let mut picks: Vec<u64> = (0..4).map(|_| rng.below(n + 1)).collect();
    picks.push(n);
    for s in picks {
        for t in [ts[s as usize], ts[s as usize] - 1, ts[s as usize] + 1] {
            if t < ts[0] {
                continue;
            }
            let want = model.boundary(expect(t));
            let p: Point = format_time(t).parse().unwrap();
            assert_eq!(p, Point::Time(t), "{} does not parse back", format_time(t));
            let rp = vault.resolve(&p).unwrap();
            assert_eq!(rp.seq, Seq(want), "time {t} ({p})");
            assert_eq!(rp.time_ns, ts[want as usize], "time {t} ({p})");
            check_point(vault, &p, model.image(want), "time point");
        }
    }
    assert!(matches!(
        vault.resolve(&Point::Time(ts[0] - 1)),
        Err(VaultError::BeforeBase { .. })
    ));
    assert!(matches!(
        vault.resolve(&"-15m".parse().unwrap()),
        Err(VaultError::BeforeBase { .. })
    ));
    assert!(matches!(
        vault.resolve(&"2200-01-01T00:00:00Z".parse().unwrap()),
        Err(VaultError::FutureTime { .. })
    ));
}

proptest! {
    #![proptest_config(common::proptest_config(48))]

    #[test]
    fn model_uncompressed(cfg in config(), ops in prop::collection::vec(op(), 1..60)) {
        run(&cfg, Compression::None, &ops);
    }

    #[test]
    fn model_lz4(cfg in config(), ops in prop::collection::vec(op(), 1..60)) {
        run(&cfg, Compression::Lz4, &ops);
    }

    #[test]
    fn model_zstd(cfg in config(), ops in prop::collection::vec(op(), 1..60)) {
        run(&cfg, Compression::Zstd { level: 3 }, &ops);
    }
}

/// A write larger than one record's payload becomes several records with consecutive
/// seqs, but it is one point: a seq inside it names the state before it, all its records
/// carry one timestamp, and a time resolves to before or after the whole write.
#[test]
fn large_write_is_several_records_and_one_point() {
    let tmp = tempfile::tempdir().unwrap();
    let bs = 4096u32;
    let blocks = 300;
    let (vault, mut model) = common::create(
        tmp.path(),
        bs,
        blocks,
        7,
        Compression::Lz4,
        common::no_auto_seal(),
    );
    let per_record = MAX_WRITE_PAYLOAD / bs as usize;
    assert_eq!(per_record, 32);
    let data = common::data(99, bs as usize, 70);
    let want = model.write(5, &data);
    assert_eq!(want, 3, "70 blocks of 4 KiB are three records");
    assert_eq!(vault.write(5, &data).unwrap(), Seq(want));
    assert_eq!(vault.info().open_records, 3);
    // 1 MiB more: records 4..=11.
    let mib = common::data(5, bs as usize, 256);
    assert_eq!(vault.write(40, &mib).unwrap(), Seq(model.write(40, &mib)));
    for s in 0..=model.newest() {
        let rp = vault.resolve(&Point::Seq(Seq(s))).unwrap();
        let whole = if s < 3 {
            0
        } else if s < 11 {
            3
        } else {
            11
        };
        assert_eq!(
            rp.seq,
            Seq(whole),
            "seq:{s} names the end of a whole host write"
        );
    }
    check_everything(&vault, &model, "open");
    let t_first = vault.resolve(&Point::Seq(Seq(3))).unwrap().time_ns;
    let t_second = vault.resolve(&Point::Seq(Seq(11))).unwrap().time_ns;
    let seg = common::segment_files(vault.dir()).pop().unwrap();
    vault.flush().unwrap();
    let times: Vec<i64> = common::segment_records(&seg, bs)
        .iter()
        .map(|r| r.header.timestamp_ns)
        .collect();
    assert_eq!(times[..3], [t_first; 3], "one timestamp per host write");
    assert_eq!(times[3..], [t_second; 8], "one timestamp per host write");
    if t_second > t_first {
        let p = Point::Time(t_second - 1);
        assert_eq!(vault.resolve(&p).unwrap().seq, Seq(3));
    }
    vault.seal().unwrap();
    check_everything(&vault, &model, "sealed");
    for s in [1, 2, 4, 10] {
        let whole = if s < 3 { 0 } else { 3 };
        let rp = vault.resolve(&Point::Seq(Seq(s))).unwrap();
        assert_eq!(rp.seq, Seq(whole), "sealed: seq:{s}");
    }
}

/// A seal policy by record count never cuts a host write: the interval ends after it.
#[test]
fn seals_fall_between_host_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let seal = SealPolicy {
        writes: 3,
        ..common::no_auto_seal()
    };
    let (vault, mut model) = common::create(tmp.path(), 4096, 300, 1, Compression::None, seal);
    let mib = common::data(5, 4096, 256);
    for at in [0u64, 10, 20] {
        assert_eq!(vault.write(at, &mib).unwrap(), Seq(model.write(at, &mib)));
    }
    let ivs = vault.intervals();
    let edges: Vec<(u64, u64)> = ivs.iter().map(|i| (i.seq_from.0, i.seq_to.0)).collect();
    assert_eq!(edges, vec![(1, 8), (9, 16), (17, 24)], "{ivs:?}");
    check_everything(&vault, &model, "sealed by count");
}

/// A crash that leaves the tail of the open segment inside a host write: recovery cuts the
/// incomplete write (no flush can have covered it), so no point shows half of it.
#[test]
fn a_tail_inside_a_host_write_is_cut_back_to_its_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, mut model) = common::create(
        tmp.path(),
        4096,
        300,
        2,
        Compression::None,
        common::no_auto_seal(),
    );
    let small = common::data(1, 4096, 2);
    assert_eq!(
        vault.write(200, &small).unwrap(),
        Seq(model.write(200, &small))
    );
    vault.flush().unwrap();
    let mib = common::data(5, 4096, 256);
    vault.write(0, &mib).unwrap();
    vault.write_out().unwrap();
    let dir = vault.dir().to_path_buf();
    let seg = common::segment_files(&dir).pop().unwrap();
    drop(vault);
    // Keep the first three of the 1 MiB write's eight records.
    let recs = common::segment_records(&seg, 4096);
    assert_eq!(recs.len(), 9);
    let cut = recs[4].offset;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let vault = Vault::open(&dir).unwrap();
    assert_eq!(
        vault.info().newest_seq,
        Seq(1),
        "the incomplete write is cut"
    );
    check_everything(&vault, &model, "after the cut");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), recs[1].offset);
    // A reader beside a writer that is mid-write sees the same.
    let ro = Vault::open_read_only(&dir).unwrap();
    assert_eq!(ro.info().newest_seq, Seq(1));
}

/// Rejected operations append nothing.
#[test]
fn rejected_operations_append_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, mut model) = common::create(
        tmp.path(),
        512,
        64,
        3,
        Compression::None,
        common::no_auto_seal(),
    );
    model.write(1, &[7; 512]);
    vault.write(1, &[7; 512]).unwrap();
    assert!(matches!(
        vault.write(64, &[1; 512]),
        Err(VaultError::OutOfRange { .. })
    ));
    assert!(matches!(
        vault.write(63, &[1; 1024]),
        Err(VaultError::OutOfRange { .. })
    ));
    assert!(matches!(
        vault.write(0, &[1; 100]),
        Err(VaultError::Unaligned { .. })
    ));
    assert!(matches!(
        vault.write(0, &[]),
        Err(VaultError::Unaligned { .. })
    ));
    assert!(matches!(
        vault.zero(0, 0),
        Err(VaultError::OutOfRange { .. })
    ));
    assert!(matches!(
        vault.trim(60, 5),
        Err(VaultError::OutOfRange { .. })
    ));
    assert!(matches!(
        vault.zero(u64::MAX, 2),
        Err(VaultError::OutOfRange { .. })
    ));
    for bad in [
        "",
        "now",
        "latest",
        "2024-01-01T00:00:00Z",
        "-x",
        "a b",
        "a:b",
    ] {
        assert!(
            matches!(
                vault.snapshot(bad, false),
                Err(VaultError::BadSnapshotName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        vault.view(&"nope".parse().unwrap()),
        Err(VaultError::UnknownSnapshot(_))
    ));
    check_everything(&vault, &model, "after rejected operations");
}

/// The time policy seals an interval that has grown old, on `tick` when writes are idle.
#[test]
fn tick_seals_an_old_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, mut model) = common::create(
        tmp.path(),
        512,
        64,
        4,
        Compression::None,
        SealPolicy {
            bytes: 0,
            interval_ns: 20_000_000,
            writes: 0,
        },
    );
    assert!(vault.tick().unwrap().is_none(), "nothing to seal");
    vault.write(2, &[3; 1024]).unwrap();
    model.write(2, &[3; 1024]);
    std::thread::sleep(std::time::Duration::from_millis(40));
    let iv = vault
        .tick()
        .unwrap()
        .expect("the interval is older than the policy");
    assert_eq!(
        (iv.seq_from, iv.seq_to, iv.blocks_changed),
        (Seq(1), Seq(1), 2)
    );
    assert_eq!(vault.info().open_records, 0);
    assert!(vault.tick().unwrap().is_none());
    check_everything(&vault, &model, "after tick");
}

/// Bad inputs to `create` are refused, and leave no vault behind.
#[test]
fn create_refuses_bad_input() {
    use rewind_vault::{CreateOptions, NoProgress};
    let tmp = tempfile::tempdir().unwrap();
    let primary = tmp.path().join("p.img");
    let opts = |bs: u32, vault: &str| CreateOptions {
        primary: primary.clone(),
        vault: tmp.path().join(vault),
        block_size: bs,
        compression: Compression::None,
        seal: SealPolicy::default(),
    };
    std::fs::write(&primary, []).unwrap();
    assert!(matches!(
        Vault::create(&opts(512, "v"), &NoProgress),
        Err(VaultError::EmptyPrimary { .. })
    ));
    std::fs::write(&primary, vec![1u8; 4096 + 512]).unwrap();
    assert!(matches!(
        Vault::create(&opts(4096, "v"), &NoProgress),
        Err(VaultError::PrimarySize { .. })
    ));
    for bs in [0, 256, 513, 3000, 131_072] {
        assert!(matches!(
            Vault::create(&opts(bs, "v"), &NoProgress),
            Err(VaultError::BadBlockSize(b)) if b == bs
        ));
    }
    assert!(
        std::fs::read_dir(tmp.path().join("v"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "a refused create left files behind"
    );
    // An existing empty directory is fine.
    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    let vault = Vault::create(&opts(512, "empty"), &NoProgress).unwrap();
    assert_eq!(vault.blocks(), 9);
    assert_eq!(
        vault.read_at(&Point::Latest, 0, 9).unwrap(),
        vec![1u8; 4608]
    );
}

/// The base image of a large, sparse primary (holes across copy chunks, data in the middle
/// of large blocks, data in the last block) reads back exactly, and stays sparse.
#[test]
fn base_image_of_a_sparse_primary() {
    use rewind_vault::{CreateOptions, NoProgress};
    use std::os::unix::fs::{FileExt, MetadataExt};
    for (bs, blocks) in [(65536u32, 200u64), (4096, 3000), (512, 20_000)] {
        let tmp = tempfile::tempdir().unwrap();
        let primary = tmp.path().join("p.img");
        let size = u64::from(bs) * blocks;
        let f = std::fs::File::create(&primary).unwrap();
        f.set_len(size).unwrap();
        let mut content = vec![0u8; size as usize];
        let mut rng = Rng(u64::from(bs));
        let mut spots: Vec<u64> = (0..40).map(|_| rng.below(size - 100)).collect();
        spots.extend([0, size - 100, 4 << 20, (4 << 20) - 50, (8 << 20) + 4095]);
        for at in spots.into_iter().filter(|at| at + 100 <= size) {
            let mut piece = [0u8; 100];
            rng.fill(&mut piece);
            f.write_all_at(&piece, at).unwrap();
            content[at as usize..at as usize + 100].copy_from_slice(&piece);
        }
        f.sync_all().unwrap();
        let vault = Vault::create(
            &CreateOptions {
                primary,
                vault: tmp.path().join("vault"),
                block_size: bs,
                compression: Compression::None,
                seal: SealPolicy::default(),
            },
            &NoProgress,
        )
        .unwrap();
        let got = vault.read_at(&Point::Seq(Seq(0)), 0, blocks).unwrap();
        common::assert_image(
            &format!("base, {bs}-byte blocks"),
            bs as usize,
            &got,
            &content,
        );
        let b = blocks - 1;
        assert_eq!(
            vault.read_at(&Point::Latest, b, 1).unwrap(),
            &content[(b * u64::from(bs)) as usize..]
        );
        let img = std::fs::metadata(tmp.path().join("vault/base/base.img")).unwrap();
        assert_eq!(img.len(), size);
        assert!(
            img.blocks() * 512 < size / 2,
            "base image is not sparse: {} of {size} bytes allocated",
            img.blocks() * 512
        );
    }
}
