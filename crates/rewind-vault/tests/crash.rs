//! Power cuts. A random workload runs with flushes; then the vault is dropped the way a
//! power cut drops it (`crash`: buffered records are gone) and the open segment is damaged
//! the way a power cut can damage it: cut anywhere after what the last completed sync made
//! durable, bytes after that overwritten with zeroes or garbage, the file extended with
//! zeroes; leftovers of an interrupted seal lie around (half-written delta map and manifest
//! temporaries, a complete delta map the manifest does not list, a half-created segment).
//!
//! `Vault::open` must then succeed and keep every record a completed sync covered, and no
//! record that was never appended; every point up to the newest must read back as the
//! model says; appending goes on from there, and reopening again changes nothing.
//!
//! Corruption of a record that a completed flush covered, with a later valid record saying
//! so, is not a torn tail: `Vault::open` must refuse with the record's file and offset.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{check_everything, check_point, Model, Rng};
use proptest::prelude::*;
use rewind_format::delta_map::{DeltaMap, Interval, Location};
use rewind_format::manifest::Manifest;
use rewind_format::segment::HEADER_LEN as SEG_HEADER_LEN;
use rewind_format::{names, Generation, Seq as FSeq};
use rewind_vault::{Compression, Corruption, Point, SealPolicy, Seq, Vault, VaultError};

#[derive(Debug, Clone)]
struct Config {
    bs: u32,
    blocks: usize,
    seed: u64,
    compression: Compression,
    seal: SealPolicy,
}

#[derive(Debug, Clone)]
enum Op {
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
    Snapshot,
    Seal,
    Flush,
    /// Read the newest point: hands buffered records to the file (not durable).
    View,
}

#[derive(Debug, Clone)]
struct Damage {
    /// Where in [durable_bytes, file_len] to cut.
    cut: u64,
    /// Overwrite bytes after durable_bytes: (start, len, zeroes?, seed).
    garbage: Option<(u64, u64, bool, u64)>,
    /// Zero bytes appended after the cut (size grew, data never written).
    extend: Option<u64>,
    map_tmp: bool,
    manifest_tmp: bool,
    stray_map: bool,
    /// When the open segment holds no record: cut its header to this many bytes (48 and
    /// more: delete the file), as a crash while a seal created it leaves it.
    torn_create: Option<u64>,
    /// Read the newest point just before the cut, so that every record is in the file
    /// (and the cut has records to tear).
    final_view: bool,
}

fn config() -> impl Strategy<Value = Config> {
    let geometry = prop_oneof![
        3 => (Just(512u32), 64usize..=256),
        2 => (Just(4096u32), 33usize..=64),
    ];
    let compression = prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        Just(Compression::Zstd { level: 1 }),
    ];
    let seal = (
        prop_oneof![3 => Just(0u64), 2 => 2u64..=12],
        prop_oneof![3 => Just(0u64), 1 => 4096u64..=262_144],
    )
        .prop_map(|(writes, bytes)| SealPolicy {
            bytes,
            interval_ns: 0,
            writes,
        });
    (geometry, any::<u64>(), compression, seal).prop_map(
        |((bs, blocks), seed, compression, seal)| Config {
            bs,
            blocks,
            seed,
            compression,
            seal,
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        14 => (any::<u64>(), any::<u64>(), prop::bool::weighted(0.3), any::<u64>())
            .prop_map(|(at, len, big, seed)| Op::Write { at, len, big, seed }),
        2 => (any::<u64>(), any::<u64>()).prop_map(|(at, len)| Op::Zero { at, len }),
        2 => (any::<u64>(), any::<u64>()).prop_map(|(at, len)| Op::Trim { at, len }),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Seal),
        4 => Just(Op::Flush),
        3 => Just(Op::View),
    ]
}

fn damage() -> impl Strategy<Value = Damage> {
    (
        any::<u64>(),
        prop::option::weighted(
            0.4,
            (any::<u64>(), any::<u64>(), any::<bool>(), any::<u64>()),
        ),
        prop::option::weighted(0.15, 1u64..20_000),
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.25),
        prop::option::weighted(0.5, 0u64..=60),
        prop::bool::weighted(0.6),
    )
        .prop_map(
            |(cut, garbage, extend, map_tmp, manifest_tmp, stray_map, torn_create, final_view)| {
                Damage {
                    cut,
                    garbage,
                    extend,
                    map_tmp,
                    manifest_tmp,
                    stray_map,
                    torn_create,
                    final_view,
                }
            },
        )
}

fn range(blocks: u64, at: u64, len: u64, max_len: u64) -> (u64, u64) {
    let len = 1 + len % max_len.min(blocks);
    (at % (blocks - len + 1), len)
}

/// Runs `ops`, returning the model and the seq the last completed flush returned.
fn workload(vault: &Vault, model: &mut Model, ops: &[Op]) -> u64 {
    let blocks = model.blocks();
    let bs = model.bs;
    let mut flushed = 0;
    for op in ops {
        match *op {
            Op::Write { at, len, big, seed } => {
                let (at, len) = range(blocks, at, len, if big { blocks } else { 8 });
                let data = common::data(seed, bs, len as usize);
                let want = model.write(at, &data);
                assert_eq!(vault.write(at, &data).unwrap(), Seq(want));
            }
            Op::Zero { at, len } => {
                let (at, len) = range(blocks, at, len, blocks);
                assert_eq!(vault.zero(at, len).unwrap(), Seq(model.zero(at, len)));
            }
            Op::Trim { at, len } => {
                let (at, len) = range(blocks, at, len, blocks);
                assert_eq!(vault.trim(at, len).unwrap(), Seq(model.zero(at, len)));
            }
            Op::Snapshot => {
                // Markers are always durable, so their seq is never reused.
                let name = format!("s{}", model.newest() + 1);
                let want = model.marker(&name);
                assert_eq!(vault.snapshot(&name, false).unwrap().seq, Seq(want));
            }
            Op::Seal => {
                vault.seal().unwrap();
            }
            Op::Flush => {
                flushed = vault.flush().unwrap().0;
                assert_eq!(flushed, model.newest());
            }
            Op::View => {
                check_point(vault, &Point::Latest, model.image(model.newest()), "view");
            }
        }
    }
    flushed
}

fn open_segment_id(seg: &Path) -> u64 {
    names::parse_segment(seg.file_name().unwrap().to_str().unwrap())
        .unwrap()
        .0
         .0
}

fn run(cfg: &Config, rounds: &[(Vec<Op>, Damage)]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vault");
    let (mut vault, mut model) = common::create(
        tmp.path(),
        cfg.bs,
        cfg.blocks,
        cfg.seed,
        cfg.compression,
        cfg.seal,
    );
    for (ops, d) in rounds {
        vault = crash_round(&dir, cfg, vault, &mut model, ops, d);
    }
    // Stable: a clean crash (nothing to cut), then a close, change nothing.
    vault.crash();
    let vault = Vault::open(&dir).unwrap();
    check_everything(&vault, &model, "second open");
    vault.close().unwrap();
    let ro = Vault::open_read_only(&dir).unwrap();
    check_everything(&ro, &model, "read-only after close");
    drop(ro);
    let vault = Vault::open(&dir).unwrap();
    check_everything(&vault, &model, "third open");
    check_leftovers(&dir, &vault);
}

/// Runs `ops`, cuts the power, damages what a power cut may damage, recovers, checks and
/// appends one more write (flushed). Returns the recovered vault.
fn crash_round(
    dir: &Path,
    cfg: &Config,
    vault: Vault,
    model: &mut Model,
    ops: &[Op],
    d: &Damage,
) -> Vault {
    let dir = dir.to_path_buf();
    let mut flushed = workload(&vault, model, ops);
    if d.final_view {
        flushed = flushed.max(workload(&vault, model, &[Op::View]));
    }
    let pos = vault.log_position();
    assert!(
        pos.durable_seq.0 >= flushed,
        "{pos:?} forgets flush {flushed}"
    );
    let last = model.newest();
    let seg = pos.segment.clone();
    let seg_id = open_segment_id(&seg);
    let file_len = std::fs::metadata(&seg).unwrap().len();
    assert!(pos.durable_bytes <= file_len, "{pos:?} beyond {file_len}");
    vault.crash();

    // The power cut.
    let mut rng = Rng(d.cut);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let cut = pos.durable_bytes + d.cut % (file_len - pos.durable_bytes + 1);
    f.set_len(cut).unwrap();
    if let Some((start, len, zeroes, seed)) = d.garbage {
        if cut > pos.durable_bytes {
            let start = pos.durable_bytes + start % (cut - pos.durable_bytes);
            let len = 1 + len % (cut - start).min(4096);
            let mut bytes = vec![0u8; len as usize];
            if !zeroes {
                Rng(seed).fill(&mut bytes);
            }
            common::overwrite(&seg, start, &bytes);
        }
    }
    if let Some(n) = d.extend {
        f.set_len(cut + n).unwrap();
    }
    drop(f);
    let open_is_empty = file_len == SEG_HEADER_LEN as u64;
    if let (Some(n), true) = (d.torn_create, open_is_empty) {
        if n < SEG_HEADER_LEN as u64 {
            let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
            f.set_len(n).unwrap();
        } else {
            std::fs::remove_file(&seg).unwrap();
        }
    }
    let to = last.max(seg_id);
    let maps = dir.join("maps");
    if d.map_tmp {
        let mut junk = vec![0u8; 8 + rng.below(300) as usize];
        rng.fill(&mut junk);
        junk[..8].copy_from_slice(b"RWNDDMAP");
        let name = format!("{}.tmp", names::delta_map(FSeq(seg_id), FSeq(to)));
        std::fs::write(maps.join(name), junk).unwrap();
    }
    let manifest_path = common::current_manifest(&dir);
    if d.manifest_tmp {
        let mut m = Manifest::decode(&std::fs::read(&manifest_path).unwrap()).unwrap();
        m.generation = Generation(m.generation.0 + 1);
        m.next_seq = FSeq(to + 1);
        let bytes = m.encode();
        let half = &bytes[..1 + rng.below(bytes.len() as u64 - 1) as usize];
        let name = format!("{}.tmp", names::manifest(m.generation));
        std::fs::write(dir.join(name), half).unwrap();
    }
    if d.stray_map {
        // Complete and valid, but not committed: it says every block was zeroed.
        let interval = Interval {
            seq_from: FSeq(seg_id),
            seq_to: FSeq(to),
            time_from_ns: 1,
            time_to_ns: 2,
        };
        let entries = (0..model.blocks()).map(|b| (b, Location::Zero)).collect();
        let map = DeltaMap::new(interval, cfg.bs, entries);
        std::fs::write(
            maps.join(names::delta_map(FSeq(seg_id), FSeq(to))),
            map.encode(),
        )
        .unwrap();
    }

    // A reader sees the damaged vault as the writer will recover it, and changes nothing.
    let before = listing(&dir);
    let ro = Vault::open_read_only(&dir).unwrap_or_else(|e| panic!("read-only open: {e}"));
    let ro_newest = ro.info().newest_seq.0;
    let mut ro_model = model.clone();
    ro_model.truncate(ro_newest.min(last));
    check_everything(&ro, &ro_model, "read-only before recovery");
    drop(ro);
    assert_eq!(listing(&dir), before, "a read-only open changed the vault");

    // Recovery.
    let vault = Vault::open(&dir).unwrap_or_else(|e| panic!("open after the cut: {e}"));
    let newest = vault.info().newest_seq.0;
    assert_eq!(newest, ro_newest, "the reader and the writer disagree");
    assert!(
        newest >= pos.durable_seq.0 && newest <= last,
        "recovered to seq {newest}; durable was {}, last appended {last}",
        pos.durable_seq
    );
    assert_eq!(vault.info().durable_seq, Seq(newest));
    model.truncate(newest);
    check_everything(&vault, model, "recovered");
    check_leftovers(&dir, &vault);

    // Appending goes on from the recovered seq.
    let bs = cfg.bs as usize;
    let data = common::data(cfg.seed ^ 1, bs, 3);
    let at = rng.below(model.blocks() - 2);
    let want = model.write(at, &data);
    assert_eq!(want, newest + 1);
    assert_eq!(vault.write(at, &data).unwrap(), Seq(want));
    assert_eq!(vault.flush().unwrap(), Seq(want));
    check_point(&vault, &Point::Latest, model.image(want), "after append");
    vault
}

/// Every file of the vault (LOCK aside) with its size and content hash.
fn listing(dir: &Path) -> Vec<(String, u64, u32)> {
    let mut out = Vec::new();
    for sub in ["", "maps", "log", "base"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if e.file_type().unwrap().is_file() && name != "LOCK" {
                let bytes = std::fs::read(e.path()).unwrap();
                out.push((
                    format!("{sub}/{name}"),
                    bytes.len() as u64,
                    crc32c::crc32c(&bytes),
                ));
            }
        }
    }
    out.sort();
    out
}

/// No temporary files; the delta maps on disk are exactly the sealed intervals'.
fn check_leftovers(dir: &Path, vault: &Vault) {
    for sub in [dir.to_path_buf(), dir.join("maps"), dir.join("log")] {
        for e in std::fs::read_dir(&sub).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(
                !name.ends_with(".tmp"),
                "leftover {name} in {}",
                sub.display()
            );
        }
    }
    let on_disk: Vec<String> = common::map_files(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    let sealed: Vec<String> = vault
        .intervals()
        .iter()
        .filter(|iv| iv.sealed)
        .map(|iv| names::delta_map(iv.seq_from, iv.seq_to))
        .collect();
    assert_eq!(on_disk, sealed, "delta maps on disk");
}

proptest! {
    #![proptest_config(common::proptest_config(64))]

    #[test]
    fn power_cut_keeps_what_was_durable(
        cfg in config(),
        rounds in prop::collection::vec((prop::collection::vec(op(), 1..40), damage()), 1..=3),
    ) {
        run(&cfg, &rounds);
    }
}

// ---- corruption before the tail -------------------------------------------------------

/// Records of the open segment that a later valid record declares durable.
fn covered(recs: &[common::FoundRecord]) -> Vec<common::FoundRecord> {
    recs.iter()
        .filter(|r| {
            recs.iter()
                .any(|l| l.header.seq > r.header.seq && l.header.durable_seq >= r.header.seq)
        })
        .copied()
        .collect()
}

fn expect_corrupt_at(dir: &Path, seg: &Path, at: u64, what: &str) {
    for (mode, res) in [
        ("open", Vault::open(dir)),
        ("open_read_only", Vault::open_read_only(dir)),
    ] {
        match res {
            Err(VaultError::Corrupted {
                path,
                offset,
                reason,
            }) => {
                assert_eq!(path, seg, "{what}: {mode}: path");
                assert_eq!(offset, at, "{what}: {mode}: offset ({reason})");
                assert!(
                    matches!(reason, Corruption::Decode(_)),
                    "{what}: {reason:?}"
                );
            }
            Err(e) => panic!("{what}: {mode}: expected Corrupted, got {e:?}"),
            Ok(_) => panic!("{what}: {mode}: a corrupt durable record was accepted"),
        }
    }
}

/// Every byte of a durable, covered record, flipped one at a time: always an error at
/// that record, never a silent cut.
#[test]
fn corrupt_durable_record_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vault");
    let (vault, mut model) = common::create(
        tmp.path(),
        512,
        64,
        11,
        Compression::None,
        common::no_auto_seal(),
    );
    for i in 0..4u64 {
        let d = common::data(100 + i, 512, 2);
        vault.write(i * 3, &d).unwrap();
        model.write(i * 3, &d);
    }
    vault.zero(20, 4).unwrap();
    model.zero(20, 4);
    vault.flush().unwrap(); // 1..=5 durable
    vault.write(30, &[9; 512]).unwrap(); // seq 6 says: durable up to 5
    model.write(30, &[9; 512]);
    vault.flush().unwrap();
    let seg = vault.log_position().segment;
    vault.crash();
    let recs = common::segment_records(&seg, 512);
    assert_eq!(recs.len(), 6);
    let pristine = std::fs::read(&seg).unwrap();
    for r in covered(&recs) {
        assert!(r.header.seq.0 <= 5);
        for at in r.offset..r.offset + r.len() {
            std::fs::write(&seg, &pristine).unwrap();
            common::flip(&seg, at, 0x10);
            expect_corrupt_at(
                &dir,
                &seg,
                r.offset,
                &format!("seq {} byte {}", r.header.seq, at - r.offset),
            );
        }
    }
    // The last record has no later record to vouch for it: damage to it is a torn tail.
    std::fs::write(&seg, &pristine).unwrap();
    let last = recs.last().unwrap();
    common::flip(&seg, last.payload_offset() + 7, 0xff);
    let vault = Vault::open(&dir).unwrap();
    assert_eq!(vault.info().newest_seq, Seq(5));
    model.truncate(5);
    check_everything(&vault, &model, "torn last record");
}

proptest! {
    #![proptest_config(common::proptest_config(32))]

    /// A random workload with flushes; a random byte of a random covered record flipped.
    #[test]
    fn corrupt_covered_record_is_an_error(
        cfg in config(),
        ops in prop::collection::vec(op(), 1..40),
        pick in any::<u64>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vault");
        // Sealing after every second record would leave no record in the open segment
        // for a later one to vouch for.
        let mut seal = cfg.seal;
        if seal.writes > 0 {
            seal.writes = seal.writes.max(3);
        }
        let (vault, mut model) =
            common::create(tmp.path(), cfg.bs, cfg.blocks, cfg.seed, cfg.compression, seal);
        workload(&vault, &mut model, &ops);
        // More records after flushes, until the open segment holds a covered record.
        let mut cov = Vec::new();
        for i in 0..4 {
            vault.flush().unwrap();
            vault.zero(i, 1).unwrap();
            vault.flush().unwrap();
            cov = covered(&common::segment_records(&vault.log_position().segment, cfg.bs));
            if !cov.is_empty() {
                break;
            }
        }
        assert!(!cov.is_empty(), "no covered record in the open segment");
        let seg = vault.log_position().segment;
        vault.crash();
        let mut rng = Rng(pick);
        let r = cov[rng.below(cov.len() as u64) as usize];
        let at = r.offset + rng.below(r.len());
        common::flip(&seg, at, 1 + rng.below(255) as u8);
        expect_corrupt_at(&dir, &seg, r.offset, &format!("{r:?} byte {}", at - r.offset));
    }
}

/// A seal commits the manifest, then creates the next segment. A crash in between leaves
/// that segment missing, empty or with part of its header: readers see no records there,
/// and the writer creates it afresh.
#[test]
fn half_created_segment() {
    for keep in [None, Some(0u64), Some(1), Some(20), Some(47)] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vault");
        let (vault, mut model) = common::create(
            tmp.path(),
            512,
            64,
            8,
            Compression::Zstd { level: 1 },
            common::no_auto_seal(),
        );
        let d = common::data(3, 512, 5);
        vault.write(9, &d).unwrap();
        model.write(9, &d);
        vault.seal().unwrap();
        let seg = vault.log_position().segment;
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            SEG_HEADER_LEN as u64
        );
        vault.crash();
        match keep {
            None => std::fs::remove_file(&seg).unwrap(),
            Some(n) => std::fs::OpenOptions::new()
                .write(true)
                .open(&seg)
                .unwrap()
                .set_len(n)
                .unwrap(),
        }
        let what = format!("segment header cut to {keep:?}");
        let ro = Vault::open_read_only(&dir).unwrap_or_else(|e| panic!("{what}: {e}"));
        check_everything(&ro, &model, &what);
        drop(ro);
        let vault = Vault::open(&dir).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            SEG_HEADER_LEN as u64
        );
        check_everything(&vault, &model, &what);
        assert_eq!(
            vault.write(0, &d[..512]).unwrap(),
            Seq(model.write(0, &d[..512]))
        );
        vault.close().unwrap();
        let ro = Vault::open_read_only(&dir).unwrap();
        check_everything(&ro, &model, &what);
    }
}
