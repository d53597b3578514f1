//! Damaged vault files: every kind of file, flipped bytes and missing files. Each must come
//! back as `VaultError::Corrupted` naming the file (and a byte offset in it) when, and only
//! when, the damaged bytes are needed; reads that do not need them still work; nothing
//! panics and no read returns wrong data.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{check_everything, check_point, Model, Rng};
use proptest::prelude::*;
use rewind_vault::{Compression, Corruption, Point, Seq, Vault, VaultError};

const BS: u32 = 512;
const BLOCKS: usize = 64;

/// A closed vault with three sealed intervals:
/// - 1..=3: write 0..8, write 10..12, snapshot "a"            (seg 1, map 1-3)
/// - 4..=7: write 4..7, zero 20..23, trim 50..52, write 30..34 (seg 4, map 4-7)
/// - 8..=9: write 40..42, write 4..5                          (seg 8, map 8-9)
fn build(root: &Path, compression: Compression) -> (PathBuf, Model) {
    let (vault, mut model) =
        common::create(root, BS, BLOCKS, 21, compression, common::no_auto_seal());
    let bs = BS as usize;
    let w = |vault: &Vault, model: &mut Model, at: u64, n: usize, seed: u64| {
        let d = common::data(seed, bs, n);
        assert_eq!(vault.write(at, &d).unwrap(), Seq(model.write(at, &d)));
    };
    w(&vault, &mut model, 0, 8, 1);
    w(&vault, &mut model, 10, 2, 2);
    model.marker("a");
    vault.snapshot("a", false).unwrap();
    // Random data so that every block of these records is stored as written.
    let d = random_blocks(3, 3);
    assert_eq!(vault.write(4, &d).unwrap(), Seq(model.write(4, &d)));
    assert_eq!(vault.zero(20, 3).unwrap(), Seq(model.zero(20, 3)));
    assert_eq!(vault.trim(50, 2).unwrap(), Seq(model.zero(50, 2)));
    w(&vault, &mut model, 30, 4, 4);
    vault.seal().unwrap();
    w(&vault, &mut model, 40, 2, 5);
    w(&vault, &mut model, 4, 1, 6);
    vault.close().unwrap();
    (root.join("vault"), model)
}

fn random_blocks(seed: u64, n: usize) -> Vec<u8> {
    let mut d = vec![0u8; BS as usize * n];
    Rng(seed).fill(&mut d);
    d
}

fn seg(dir: &Path, first: u64) -> PathBuf {
    dir.join("log")
        .join(rewind_format::names::segment(rewind_format::SegmentId(
            rewind_format::Seq(first),
        )))
}

fn map(dir: &Path, from: u64, to: u64) -> PathBuf {
    dir.join("maps").join(rewind_format::names::delta_map(
        rewind_format::Seq(from),
        rewind_format::Seq(to),
    ))
}

fn record(dir: &Path, first: u64, seq: u64) -> common::FoundRecord {
    common::segment_records(&seg(dir, first), BS)
        .into_iter()
        .find(|r| r.header.seq.0 == seq)
        .unwrap()
}

fn read(vault: &Vault, point: &str, first: u64, count: u64) -> Result<Vec<u8>, VaultError> {
    vault.read_at(&point.parse().unwrap(), first, count)
}

fn model_blocks(model: &Model, seq: u64, first: u64, count: u64) -> Vec<u8> {
    let bs = BS as usize;
    model.image(seq)[first as usize * bs..(first + count) as usize * bs].to_vec()
}

/// `res` is `Corrupted` naming `path` at an offset in `range`.
fn assert_corrupt(
    res: Result<impl std::fmt::Debug, VaultError>,
    path: &Path,
    range: std::ops::Range<u64>,
    what: &str,
) -> Corruption {
    match res {
        // A writer refused for a damaged current manifest: the corruption is its source.
        Err(VaultError::ManifestDamaged { source, .. }) => {
            assert_corrupt(Err::<(), _>(*source), path, range, what)
        }
        Err(VaultError::Corrupted {
            path: p,
            offset,
            reason,
        }) => {
            assert_eq!(p, path, "{what}: wrong file ({reason})");
            assert!(
                range.contains(&offset),
                "{what}: offset {offset} not in {range:?} ({reason})"
            );
            reason
        }
        other => panic!(
            "{what}: expected Corrupted in {}, got {other:?}",
            path.display()
        ),
    }
}

const CODECS: [Compression; 3] = [
    Compression::None,
    Compression::Lz4,
    Compression::Zstd { level: 3 },
];

/// A flipped byte in a sealed record's payload: reads that need the record fail naming the
/// segment and the record; every other read works. A point inside the record's interval,
/// at or after it, is a replay of the interval's records, which cannot trust the damaged
/// record's blocks: every read there fails (naming the record).
#[test]
fn sealed_record_payload() {
    for codec in CODECS {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, model) = build(tmp.path(), codec);
        let r = record(&dir, 4, 4); // write of blocks 4..7
        let path = seg(&dir, 4);
        common::flip(
            &path,
            r.payload_offset() + r.header.payload_len as u64 / 2,
            0x40,
        );
        let vault = Vault::open(&dir).unwrap();
        let in_record = r.offset..r.offset + r.len();
        // Through the delta map of 4..=7 (its end, and later points).
        for point in ["seq:7", "seq:8", "now"] {
            let reason = assert_corrupt(read(&vault, point, 5, 2), &path, in_record.clone(), point);
            assert!(matches!(reason, Corruption::Decode(_)), "{reason:?}");
            assert_corrupt(read(&vault, point, 0, 64), &path, in_record.clone(), point);
        }
        // Block 4 is written again at seq 9; 5 and 6 still come from the bad record.
        assert_eq!(
            read(&vault, "now", 4, 1).unwrap(),
            model_blocks(&model, 9, 4, 1)
        );
        if r.header.stored_as() == rewind_format::compress::StoredAs::Raw {
            // Uncompressed blocks carry checksums of their own in the delta map: block 4
            // of the damaged record is intact and reads (verified) on its own.
            for (point, seq) in [("seq:7", 7), ("seq:8", 8)] {
                assert_eq!(
                    read(&vault, point, 4, 1).unwrap(),
                    model_blocks(&model, seq, 4, 1)
                );
            }
        } else {
            // A compressed record is read and verified whole.
            assert_eq!(
                read(&vault, "seq:8", 4, 1).unwrap_err().to_string(),
                read(&vault, "seq:7", 4, 1).unwrap_err().to_string()
            );
        }
        // Replays through the record.
        for point in ["seq:4", "seq:5", "seq:6"] {
            assert_corrupt(read(&vault, point, 4, 3), &path, in_record.clone(), point);
            assert_corrupt(read(&vault, point, 0, 1), &path, in_record.clone(), point);
        }
        // Reads that do not need the record.
        for (point, seq) in [
            ("seq:0", 0),
            ("seq:3", 3),
            ("a", 3),
            ("seq:7", 7),
            ("seq:8", 8),
            ("now", 9),
        ] {
            for (first, count) in [(0, 4), (7, 13), (20, 44)] {
                assert_eq!(
                    read(&vault, point, first, count).unwrap(),
                    model_blocks(&model, seq, first, count),
                    "{codec:?} {point} {first}+{count}"
                );
            }
        }
    }
}

/// A flipped byte in a sealed record's header: replays and reads through it fail; so do
/// time look-ups that walk past it. Reads through the delta map of uncompressed blocks do
/// not need the header: each block's bytes are verified against their own checksum, so
/// they read correctly (the damage is still named by every replay and scan).
#[test]
fn sealed_record_header() {
    for field in [0u64, 2, 3, 4, 8, 16, 24, 32, 36, 40, 48, 52] {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, model) = build(tmp.path(), Compression::None);
        let path = seg(&dir, 4);
        let r = record(&dir, 4, 4);
        common::flip(&path, r.offset + field, 0x01);
        let vault = Vault::open(&dir).unwrap();
        let what = format!("header byte {field}");
        // Records 5.. come after the bad one: walking to them must fail.
        let end = seg_len(&path);
        for point in ["seq:5", "seq:6"] {
            assert_corrupt(read(&vault, point, 0, 64), &path, r.offset..end, &what);
        }
        // Through the delta map: blocks 5, 6 are read (and verified) without the header.
        assert_eq!(
            read(&vault, "seq:7", 4, 4).unwrap(),
            model_blocks(&model, 7, 4, 4),
            "{what}"
        );
        // Not needed.
        check_point(&vault, &Point::Seq(Seq(3)), model.image(3), &what);
        assert_eq!(
            read(&vault, "seq:7", 20, 44).unwrap(),
            model_blocks(&model, 7, 20, 44)
        );
    }
}

fn seg_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// A damaged zero or trim record in a sealed segment (their data is their header): replaying
/// its interval must not silently zero the wrong blocks or miss the right ones, and a time
/// look-up must not land on the wrong seq.
#[test]
fn sealed_zero_record_header() {
    for (seq, at, mask) in [
        (5u64, 24u64, 0x01u8), // first_block
        (5, 24, 0x08),
        (5, 32, 0x02), // block_count
        (6, 24, 0x04),
        (6, 32, 0x01),
        (6, 2, 0x01),  // kind: trim -> zero
        (5, 19, 0x10), // timestamp
        (6, 21, 0x01),
        (5, 40, 0x01), // durable_seq
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, model) = build(tmp.path(), Compression::None);
        let ts = timestamps(&dir);
        let path = seg(&dir, 4);
        let r = record(&dir, 4, seq);
        common::flip(&path, r.offset + at, mask);
        let vault = Vault::open(&dir).unwrap();
        let in_seg = r.offset..seg_len(&path);
        for s in seq..7 {
            let what = format!("seq {seq} byte {at} ^ {mask:#x}, read at seq:{s}");
            match read(&vault, &format!("seq:{s}"), 0, 64) {
                Ok(got) => common::assert_image(&what, BS as usize, &got, model.image(s)),
                Err(e) => {
                    assert_corrupt(Err::<(), _>(e), &path, in_seg.clone(), &what);
                }
            }
        }
        for s in 1..=model.newest() {
            let what = format!("seq {seq} byte {at} ^ {mask:#x}, time of seq:{s}");
            check_time(&vault, &ts, s, &path, in_seg.clone(), &what);
        }
    }
}

/// Every record's timestamp (index = seq; 0 is unused), read from the segment files.
fn timestamps(dir: &Path) -> Vec<i64> {
    let mut ts = vec![i64::MIN];
    for p in common::segment_files(dir) {
        for r in common::segment_records(&p, BS) {
            assert_eq!(r.header.seq.0, ts.len() as u64);
            ts.push(r.header.timestamp_ns);
        }
    }
    ts
}

/// Seq `s` resolves to its true time, and that time to the last seq at or before it; or
/// the look-up fails with `Corrupted` in `path` at an offset in `range`.
fn check_time(
    vault: &Vault,
    ts: &[i64],
    s: u64,
    path: &Path,
    range: std::ops::Range<u64>,
    what: &str,
) {
    match vault.resolve(&Point::Seq(Seq(s))) {
        Ok(rp) => assert_eq!(rp.time_ns, ts[s as usize], "{what}: time of the seq"),
        Err(e) => {
            assert_corrupt(Err::<(), _>(e), path, range.clone(), what);
        }
    }
    let t = ts[s as usize];
    let want = ts.iter().rposition(|x| *x <= t).unwrap() as u64;
    match vault.resolve(&Point::Time(t)) {
        Ok(rp) => assert_eq!(rp.seq, Seq(want), "{what}: seq at the time"),
        Err(e) => {
            assert_corrupt(Err::<(), _>(e), path, range, what);
        }
    }
}

/// A flipped byte anywhere in a delta map: reading through that map fails naming it;
/// points before it still read.
#[test]
fn delta_map_every_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, model) = build(tmp.path(), Compression::Lz4);
    let path = map(&dir, 4, 7);
    let pristine = std::fs::read(&path).unwrap();
    let len = pristine.len() as u64;
    for at in 0..len {
        std::fs::write(&path, &pristine).unwrap();
        common::flip(&path, at, 1 << (at % 8));
        let what = format!("map byte {at}");
        // The map is loaded once per vault: open afresh for every flip.
        let vault = Vault::open_read_only(&dir).unwrap();
        for point in ["seq:7", "seq:8", "now"] {
            assert_corrupt(read(&vault, point, 0, 1), &path, 0..len, &what);
        }
        if at % 16 == 0 {
            for s in 0..=6 {
                check_point(&vault, &Point::Seq(Seq(s)), model.image(s), &what);
            }
        }
    }
    std::fs::remove_file(&path).unwrap();
    let vault = Vault::open(&dir).unwrap();
    let reason = assert_corrupt(read(&vault, "now", 0, 1), &path, 0..1, "missing map");
    assert!(matches!(reason, Corruption::Missing), "{reason:?}");
    check_point(
        &vault,
        &"seq:6".parse().unwrap(),
        model.image(6),
        "missing map",
    );
}

/// The current manifest: any flipped byte and the vault does not open; the one before it
/// is not read.
#[test]
fn manifest_every_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, model) = build(tmp.path(), Compression::None);
    let path = common::current_manifest(&dir);
    let pristine = std::fs::read(&path).unwrap();
    let len = pristine.len() as u64;
    for at in 0..len {
        std::fs::write(&path, &pristine).unwrap();
        common::flip(&path, at, 0x80 >> (at % 8));
        let what = format!("manifest byte {at}");
        assert_corrupt(Vault::open(&dir).map(|v| v.info()), &path, 0..len, &what);
        // A reader falls back to the previous generation, and says so.
        let vault = Vault::open_read_only(&dir).unwrap();
        assert_eq!(vault.damage().len(), 1, "{what}");
        assert_eq!(vault.damage()[0].path, path, "{what}");
        if at % 32 == 0 {
            check_everything(&vault, &model, &what);
        }
    }
    for cut in [0, 7, len / 2, len - 1] {
        std::fs::write(&path, &pristine[..cut as usize]).unwrap();
        let what = format!("manifest cut at {cut}");
        assert_corrupt(
            Vault::open(&dir).map(|v| v.info()),
            &path,
            0..len + 1,
            &what,
        );
    }
    std::fs::write(&path, &pristine).unwrap();
    // The previous generation is kept but not read.
    let mut gens: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().contains("manifest-"))
        .collect();
    gens.sort();
    assert_eq!(gens.len(), 2, "{gens:?}");
    common::flip(&gens[0], 20, 0xff);
    let vault = Vault::open(&dir).unwrap();
    check_everything(&vault, &model, "previous manifest damaged");
    drop(vault);
    // A manifest under another generation's name.
    let renamed = dir.join(rewind_format::names::manifest(rewind_format::Generation(
        999,
    )));
    std::fs::rename(&path, &renamed).unwrap();
    assert_corrupt(
        Vault::open(&dir).map(|v| v.info()),
        &renamed,
        0..len,
        "renamed",
    );
}

/// The base image's data: reading that block where it falls through to the base fails
/// with a checksum error naming the block; everything else reads.
#[test]
fn base_image_block() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, model) = build(tmp.path(), Compression::None);
    let path = dir.join("base").join("base.img");
    let bs = BS as usize;
    let base = model.image(0);
    // A data block never overwritten, and a zero block (a hole or written zeroes).
    let data_block = (12..BLOCKS)
        .find(|b| base[b * bs..(b + 1) * bs].iter().any(|x| *x != 0) && !(20..60).contains(b))
        .unwrap() as u64;
    let zero_block = (12..BLOCKS)
        .find(|b| base[b * bs..(b + 1) * bs].iter().all(|x| *x == 0) && !(20..60).contains(b))
        .unwrap() as u64;
    for block in [data_block, zero_block, 0] {
        let tmp2 = tempfile::tempdir().unwrap();
        let dir2 = tmp2.path().join("vault");
        copy_dir(&dir, &dir2);
        let path2 = dir2.join("base").join("base.img");
        common::flip(&path2, block * BS as u64 + 100, 0x20);
        let vault = Vault::open(&dir2).unwrap();
        let what = format!("base block {block}");
        let range = block * BS as u64..(block + 1) * BS as u64;
        for point in ["seq:0", "seq:3", "now"] {
            if block == 0 && point != "seq:0" {
                // Block 0 is written at seq 1: later points do not read the base.
                assert_eq!(
                    read(&vault, point, 0, 1).unwrap(),
                    model_blocks(
                        &model,
                        vault.resolve(&point.parse().unwrap()).unwrap().seq.0,
                        0,
                        1
                    )
                );
                continue;
            }
            let reason =
                assert_corrupt(read(&vault, point, block, 1), &path2, range.clone(), &what);
            assert!(
                matches!(reason, Corruption::BaseChecksum { block: b } if b == block),
                "{what}: {reason:?}"
            );
            assert_corrupt(
                read(&vault, point, 0, BLOCKS as u64),
                &path2,
                range.clone(),
                &what,
            );
        }
        let other = if block == 1 { 2 } else { 1 };
        assert_eq!(
            read(&vault, "seq:0", other, 1).unwrap(),
            model_blocks(&model, 0, other, 1)
        );
    }
    // A missing base image.
    std::fs::remove_file(&path).unwrap();
    let reason = assert_corrupt(Vault::open(&dir).map(|v| v.info()), &path, 0..1, "missing");
    assert!(matches!(reason, Corruption::Missing));
}

/// The base checksums: any flipped byte and the vault still opens; reads give the right
/// data or fail naming the file, and the damage is listed: at open for the header (the
/// only part opening reads), once a read (or a scan) loaded the chunk for a sum.
#[test]
fn base_sums_every_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, model) = build(tmp.path(), Compression::None);
    let path = dir.join("base").join("base.sums");
    let pristine = std::fs::read(&path).unwrap();
    let len = pristine.len() as u64;
    let layout = rewind_format::base_sums::SumsLayout::new(BS, BLOCKS as u64);
    assert_eq!(len, layout.file_len());
    let header = rewind_format::base_sums::HEADER_LEN as u64;
    // Every read either gives the model's data or fails naming base.sums: a block is read
    // only when it matches its own sum.
    let reads_or_names = |vault: &Vault, what: &str| {
        for s in 0..=model.newest() {
            match read(vault, &format!("seq:{s}"), 0, BLOCKS as u64) {
                Ok(got) => assert_eq!(got, model.image(s), "{what}: seq:{s}"),
                Err(e) => {
                    assert_corrupt(Err::<(), _>(e), &path, 0..len, what);
                }
            }
        }
    };
    let names = |vault: &Vault, what: &str| {
        let d = vault.damage();
        assert_eq!(d.len(), 1, "{what}: {d:?}");
        assert_eq!(d[0].path, path, "{what}");
    };
    // The header's fields and crc, every 61st byte of its zero padding, every chunk byte.
    let sampled = (0..len).filter(|at| !(32..header - 4).contains(at) || at % 61 == 0);
    for at in sampled {
        std::fs::write(&path, &pristine).unwrap();
        common::flip(&path, at, 0x04);
        let what = format!("sums byte {at}");
        for vault in [
            Vault::open(&dir).unwrap(),
            Vault::open_read_only(&dir).unwrap(),
        ] {
            if at < header {
                names(&vault, &what);
            } else {
                assert!(vault.damage().is_empty(), "{what}: found at open");
            }
            reads_or_names(&vault, &what);
            names(&vault, &what);
        }
        let vault = Vault::open_read_only(&dir).unwrap();
        vault.scan_base_sums().unwrap();
        names(&vault, &format!("{what}, scanned"));
    }
    // A flipped sum fails the reads of its block at seq:0, naming the sum.
    std::fs::write(&path, &pristine).unwrap();
    let sum_of = |b: u64| layout.sum_offset(b);
    common::flip(&path, sum_of(2), 0x04);
    let vault = Vault::open_read_only(&dir).unwrap();
    assert_corrupt(
        read(&vault, "seq:0", 2, 1),
        &path,
        sum_of(2)..sum_of(2) + 1,
        "sum 2",
    );
    assert_eq!(
        read(&vault, "seq:0", 3, 1).unwrap(),
        model_blocks(&model, 0, 3, 1)
    );
    drop(vault);
    std::fs::write(&path, &pristine[..pristine.len() - 4]).unwrap();
    let vault = Vault::open(&dir).unwrap();
    assert_corrupt(read(&vault, "seq:0", 0, 1), &path, 0..len, "cut");
    drop(vault);
    std::fs::remove_file(&path).unwrap();
    let vault = Vault::open(&dir).unwrap();
    assert_corrupt(read(&vault, "seq:0", 0, 1), &path, 0..len, "missing");
}

/// A version 1 `base.sums` (read whole, as before chunks) still opens and verifies, and
/// any flipped byte in it is found at open.
#[test]
fn base_sums_version_1_still_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, model) = build(tmp.path(), Compression::None);
    let path = dir.join("base").join("base.sums");
    let img = std::fs::read(dir.join("base").join("base.img")).unwrap();
    let sums = img.chunks(BS as usize).map(crc32c::crc32c).collect();
    let v1 = rewind_format::base_sums::BaseSums {
        block_size: BS,
        sums,
    }
    .encode_v1();
    std::fs::write(&path, &v1).unwrap();
    let vault = Vault::open_read_only(&dir).unwrap();
    assert!(vault.damage().is_empty());
    for s in 0..=model.newest() {
        let got = read(&vault, &format!("seq:{s}"), 0, BLOCKS as u64).unwrap();
        assert_eq!(got, model.image(s), "seq:{s}");
    }
    drop(vault);
    let at = rewind_format::base_sums::BaseSums::offset_of(5);
    common::flip(&path, at, 0x04);
    let vault = Vault::open_read_only(&dir).unwrap();
    assert_eq!(vault.damage().len(), 1);
    assert_corrupt(read(&vault, "seq:0", 5, 1), &path, at..at + 1, "v1 sum 5");
}

/// A sealed segment that is missing or shorter than the manifest says: the vault opens and
/// names it; points before its interval read as ever, points inside it fail naming it.
#[test]
fn missing_or_short_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, model) = build(tmp.path(), Compression::None);
    let path = seg(&dir, 4);
    let pristine = std::fs::read(&path).unwrap();
    let short = pristine.len() as u64 - 1;
    std::fs::write(&path, &pristine[..short as usize]).unwrap();
    let check = |vault: Vault, what: &str| {
        assert_eq!(vault.damage().len(), 1, "{what}");
        assert_eq!(vault.damage()[0].path, path, "{what}");
        for s in 0..=3 {
            let got = read(&vault, &format!("seq:{s}"), 0, BLOCKS as u64).unwrap();
            assert_eq!(got, model.image(s), "{what}: seq:{s}");
        }
        for s in 4..=6 {
            let r = read(&vault, &format!("seq:{s}"), 0, BLOCKS as u64);
            assert_corrupt(r, &path, 0..short + 1, what);
        }
    };
    check(Vault::open(&dir).unwrap(), "short");
    std::fs::remove_file(&path).unwrap();
    check(Vault::open(&dir).unwrap(), "missing");
    check(Vault::open_read_only(&dir).unwrap(), "missing, read-only");
}

/// The open segment's header, when it has records: the vault does not open.
#[test]
fn open_segment_header() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, _) = common::create(
        tmp.path(),
        BS,
        BLOCKS,
        2,
        Compression::None,
        common::no_auto_seal(),
    );
    vault.write(3, &[5; 512]).unwrap();
    vault.flush().unwrap();
    let path = vault.log_position().segment;
    drop(vault);
    let dir = tmp.path().join("vault");
    let pristine = std::fs::read(&path).unwrap();
    for at in 0..48 {
        std::fs::write(&path, &pristine).unwrap();
        common::flip(&path, at, 0x10);
        let what = format!("segment header byte {at}");
        assert_corrupt(Vault::open(&dir).map(|v| v.info()), &path, 0..48, &what);
        assert_corrupt(
            Vault::open_read_only(&dir).map(|v| v.info()),
            &path,
            0..48,
            &what,
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Every file a closed vault reads, with its length.
fn vault_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![
        common::current_manifest(dir),
        dir.join("base").join("base.img"),
        dir.join("base").join("base.sums"),
    ];
    files.extend(common::segment_files(dir));
    files.extend(common::map_files(dir));
    files
}

proptest! {
    #![proptest_config(common::proptest_config(64))]

    /// One flipped byte anywhere in a closed vault built by a random workload: opening and
    /// reading every point either fails with `Corrupted` or returns exactly the model's
    /// data. Never a panic, never wrong data.
    #[test]
    fn any_flipped_byte_is_caught_or_harmless(
        seed in any::<u64>(),
        codec in prop::sample::select(CODECS.to_vec()),
        pick in any::<u64>(),
        mask in 1u8..=255,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (vault, mut model) = common::create(
            tmp.path(),
            BS,
            BLOCKS,
            seed,
            codec,
            rewind_vault::SealPolicy { bytes: 0, interval_ns: 0, writes: 4 },
        );
        let mut rng = Rng(seed);
        for i in 0..(4 + rng.below(12)) {
            let at = rng.below(BLOCKS as u64 - 8);
            let n = 1 + rng.below(8);
            match rng.below(6) {
                0 => assert_eq!(vault.zero(at, n).unwrap(), Seq(model.zero(at, n))),
                1 => assert_eq!(vault.trim(at, n).unwrap(), Seq(model.zero(at, n))),
                2 => {
                    let name = format!("p{i}");
                    model.marker(&name);
                    vault.snapshot(&name, false).unwrap();
                }
                _ => {
                    let d = common::data(rng.next_u64(), BS as usize, n as usize);
                    assert_eq!(vault.write(at, &d).unwrap(), Seq(model.write(at, &d)));
                }
            }
        }
        vault.close().unwrap();
        let dir = tmp.path().join("vault");
        let ts = timestamps(&dir);
        let files = vault_files(&dir);
        let mut rng = Rng(pick);
        let file = &files[rng.below(files.len() as u64) as usize];
        let len = std::fs::metadata(file).unwrap().len();
        prop_assume!(len > 0);
        let at = rng.below(len);
        common::flip(file, at, mask);
        let what = format!("{} byte {at} ^ {mask:#x}", file.display());
        for writer in [true, false] {
            let opened = if writer { Vault::open(&dir) } else { Vault::open_read_only(&dir) };
            let vault = match opened {
                Ok(v) => v,
                Err(e) => {
                    assert_corrupt(Err::<(), _>(e), file, 0..len, &what);
                    continue;
                }
            };
            for s in 0..=model.newest() {
                match read(&vault, &format!("seq:{s}"), 0, BLOCKS as u64) {
                    Ok(got) => common::assert_image(
                        &format!("{what}: seq:{s}"),
                        BS as usize,
                        &got,
                        model.image(s),
                    ),
                    Err(e) => {
                        assert_corrupt(Err::<(), _>(e), file, 0..len, &format!("{what}: seq:{s}"));
                    }
                }
            }
            for snap in vault.snapshots() {
                let want = model.snaps.iter().find(|(n, _)| *n == snap.name);
                prop_assert_eq!(want.map(|w| w.1), Some(snap.seq.0), "{}", what);
            }
            // Time look-ups land on the right seq or fail.
            for s in 1..=model.newest() {
                check_time(&vault, &ts, s, file, 0..len, &format!("{what}: time of seq:{s}"));
            }
        }
    }
}

/// A large delta map's entries are read only when a lookup finds a block in its set: a
/// flipped byte there is an error naming the map and a byte in its entries when (and only
/// when) such a block is read; blocks the map does not hold read as ever, and so do points
/// before it. A flipped byte in its head (header and block set) fails every read through it.
#[test]
fn large_delta_map_entries_are_checked_when_first_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let blocks = 32768usize;
    let (vault, mut model) = common::create(
        tmp.path(),
        BS,
        blocks,
        5,
        Compression::None,
        common::no_auto_seal(),
    );
    // Blocks 0..20000 in 100 writes: 100 extents and 20000 crcs, ~82 KiB, so the entries
    // are not read with the head.
    for b in (0..20000).step_by(200) {
        let d = random_blocks(b + 100, 200);
        assert_eq!(vault.write(b, &d).unwrap(), Seq(model.write(b, &d)));
    }
    let sealed = vault.seal().unwrap().unwrap();
    let end = sealed.seq_to.0;
    let d = random_blocks(9, 1);
    assert_eq!(vault.write(20000, &d).unwrap(), Seq(model.write(20000, &d)));
    vault.close().unwrap();
    let dir = tmp.path().join("vault");
    let path = map(&dir, 1, end);
    let pristine = std::fs::read(&path).unwrap();
    let len = pristine.len() as u64;
    let head_len = rewind_format::delta_map::DeltaMap::head_len(&pristine)
        .unwrap()
        .unwrap() as u64;
    assert!(
        len - head_len > 64 << 10,
        "the entries outweigh the head read"
    );
    let (now, before) = (model.image(end + 1), model.image(end - 1));
    let bs = BS as usize;
    for at in [
        head_len,
        head_len + 40 * 50 + 5,
        (head_len + len) / 2,
        len - 20,
        len - 1,
    ] {
        std::fs::write(&path, &pristine).unwrap();
        common::flip(&path, at, 0x08);
        let what = format!("entries byte {at}");
        let vault = Vault::open_read_only(&dir).unwrap();
        // Not in the map: read as ever (through its set only).
        let outside = read(&vault, "now", 20100, 1).unwrap();
        assert_eq!(outside, now[20100 * bs..20101 * bs], "{what}");
        let tail = read(&vault, "now", 20000, 1).unwrap();
        assert_eq!(tail, now[20000 * bs..20001 * bs], "{what}");
        // In the map: the damage is found.
        assert_corrupt(read(&vault, "now", 0, 2), &path, head_len..len, &what);
        assert_corrupt(
            read(&vault, &format!("seq:{end}"), 0, 1),
            &path,
            head_len..len,
            &what,
        );
        // Before the map: untouched.
        check_point(&vault, &Point::Seq(Seq(end - 1)), before, &what);
    }
    for at in [0, 20, 66, head_len - 1] {
        std::fs::write(&path, &pristine).unwrap();
        common::flip(&path, at, 0x08);
        let what = format!("head byte {at}");
        let vault = Vault::open_read_only(&dir).unwrap();
        assert_corrupt(read(&vault, "now", 20100, 1), &path, 0..head_len, &what);
    }
    std::fs::write(&path, &pristine).unwrap();
    let vault = Vault::open_read_only(&dir).unwrap();
    check_point(&vault, &Point::Latest, now, "pristine");
}
