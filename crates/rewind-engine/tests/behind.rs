//! The primary written behind the write log: large whole-block host writes go to the log
//! only, are read back from their records until the background applier (or anything that
//! needs the primary itself) writes them into the primary, and come back into the primary
//! after an unclean stop in any boot.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use rewind_engine::intercept::{LiveOptions, LiveVolume};
use rewind_vault::{Compression, CreateOptions, NoProgress, Point, SealPolicy, Vault};

const BS: usize = 4096;
const BLOCKS: usize = 512; // 2 MiB
/// Writes of this many blocks and more are deferred in these tests.
const MIN_BLOCKS: usize = 4;

fn create(dir: &Path, seal_bytes: u64) {
    let primary = dir.join("primary.img");
    // Allocated (deferred writes go only where the primary needs no new space).
    std::fs::write(&primary, vec![0u8; BLOCKS * BS]).unwrap();
    let opts = CreateOptions {
        primary,
        vault: dir.join("vault"),
        block_size: BS as u32,
        compression: Compression::None,
        seal: SealPolicy {
            bytes: seal_bytes,
            interval_ns: 0,
            writes: 0,
        },
    };
    Vault::create(&opts, &NoProgress).unwrap().close().unwrap();
}

fn open(dir: &Path) -> LiveVolume {
    let vault = Arc::new(Vault::open(&dir.join("vault")).unwrap());
    let opts = LiveOptions {
        write_behind_min: Some(MIN_BLOCKS * BS),
        ..LiveOptions::default()
    };
    LiveVolume::open_with(&dir.join("primary.img"), vault, opts).unwrap()
}

/// The primary file itself, read past the live volume.
fn primary_file(dir: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(dir.join("primary.img")).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

fn read(v: &LiveVolume, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    v.read(offset, &mut buf).unwrap();
    buf
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i / 7) as u8)).collect()
}

#[test]
fn deferred_writes_read_back_and_count_as_data_before_they_reach_the_primary() {
    let tmp = tempfile::tempdir().unwrap();
    create(tmp.path(), 1 << 30);
    let v = open(tmp.path());
    let w = pattern(3, 8 * BS);
    v.write(100 * BS as u64, &w, false).unwrap();
    assert_eq!(v.behind_stats(), (8 * BS as u64, 1));
    // The primary does not have it yet; the live volume does.
    assert_eq!(
        primary_file(tmp.path(), 100 * BS as u64, 8 * BS),
        vec![0u8; 8 * BS]
    );
    assert_eq!(read(&v, 100 * BS as u64, 8 * BS), w);
    // An unaligned read across the edge of the deferred blocks.
    let got = read(&v, 100 * BS as u64 - 100, 300);
    assert_eq!(&got[..100], &[0u8; 100][..]);
    assert_eq!(&got[100..], &w[..200]);
    // Block status: data where the primary is still a hole.
    let alloc = v.allocation(96 * BS as u64, 16 * BS as u64);
    let data: u64 = alloc.iter().filter(|r| !r.1).map(|r| r.0).sum();
    assert!(data >= 8 * BS as u64, "{alloc:?}");
    // A small unaligned write into the deferred blocks writes them into the primary first
    // (its edge block is read from there).
    v.write(103 * BS as u64 + 10, &[0xEE; 20], false).unwrap();
    let mut want = w.clone();
    want[3 * BS + 10..3 * BS + 30].fill(0xEE);
    assert_eq!(read(&v, 100 * BS as u64, 8 * BS), want);
    assert_eq!(
        v.behind_stats(),
        (7 * BS as u64, 2),
        "block 103 applied, the rest not"
    );
    assert_eq!(
        primary_file(tmp.path(), 103 * BS as u64, BS),
        want[3 * BS..4 * BS]
    );
    // The applier writes the rest; a clean stop leaves nothing deferred.
    v.write(200 * BS as u64, &pattern(9, 16 * BS), false)
        .unwrap();
    v.zero(204 * BS as u64, 2 * BS as u64, true, false, false)
        .unwrap();
    assert_eq!(v.behind_stats().1, 4, "the zero cut the new run in two");
    v.apply_all_behind().unwrap();
    assert_eq!(v.behind_stats(), (0, 0));
    let mut want = pattern(9, 16 * BS);
    want[4 * BS..6 * BS].fill(0);
    assert_eq!(primary_file(tmp.path(), 200 * BS as u64, 16 * BS), want);
    v.stop().unwrap();
}

#[test]
fn a_killed_process_brings_flushed_deferred_writes_into_the_primary() {
    let tmp = tempfile::tempdir().unwrap();
    create(tmp.path(), 1 << 30);
    let w = pattern(5, 16 * BS);
    {
        let v = open(tmp.path());
        v.write(0, &[1u8; BS], false).unwrap();
        v.flush().unwrap();
        v.checkpoint().unwrap();
        v.write(64 * BS as u64, &w, false).unwrap();
        v.flush().unwrap();
        // The process dies (same boot: the page cache survives, but the primary was
        // never written there).
    }
    assert_eq!(
        primary_file(tmp.path(), 64 * BS as u64, 16 * BS),
        vec![0u8; 16 * BS]
    );
    let v = open(tmp.path());
    // Brought back from the write log when the volume was opened.
    assert_eq!(primary_file(tmp.path(), 64 * BS as u64, 16 * BS), w);
    assert_eq!(primary_file(tmp.path(), 0, BS), vec![1u8; BS]);
    assert_eq!(v.behind_stats(), (0, 0));
    v.stop().unwrap();
    // A clean stop after that: nothing to bring back, nothing deferred.
    let d = rewind_engine::drl::DirtyRegionLog::peek(&tmp.path().join("vault"))
        .unwrap()
        .unwrap();
    assert!(d.clean && !d.behind);
}

#[test]
fn a_checkpoint_stays_before_the_oldest_deferred_write() {
    let tmp = tempfile::tempdir().unwrap();
    create(tmp.path(), 1 << 30);
    let v = open(tmp.path());
    v.write(0, &[1u8; BS], false).unwrap();
    let before = v.vault().newest_seq().0;
    v.write(32 * BS as u64, &pattern(1, 8 * BS), false).unwrap();
    v.write(0, &[2u8; BS], false).unwrap();
    v.checkpoint().unwrap();
    assert_eq!(
        v.drl().checkpoint(),
        before,
        "stopped before the deferred write"
    );
    assert!(v.drl().is_behind());
    v.apply_all_behind().unwrap();
    v.checkpoint().unwrap();
    assert_eq!(v.drl().checkpoint(), v.vault().newest_seq().0);
    assert!(
        !v.drl().is_behind(),
        "caught up: the flag goes with the checkpoint"
    );
    v.stop().unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    /// Whole blocks (deferred when at least MIN_BLOCKS).
    Write {
        block: u64,
        blocks: u64,
        seed: u8,
    },
    /// Any bytes.
    Unaligned {
        offset: u64,
        len: u64,
        seed: u8,
    },
    Zero {
        offset: u64,
        len: u64,
        trim: bool,
    },
    Read {
        offset: u64,
        len: u64,
    },
    Apply {
        bytes: u64,
    },
    Flush,
    Checkpoint,
    /// Flush, then the process dies and the volume is opened again.
    Kill,
}

fn op() -> impl Strategy<Value = Op> {
    let size = (BLOCKS * BS) as u64;
    prop_oneof![
        4 => (0..BLOCKS as u64 - 24, 1u64..24, any::<u8>())
            .prop_map(|(block, blocks, seed)| Op::Write { block, blocks, seed }),
        2 => (0..size - 20_000, 1u64..20_000, any::<u8>())
            .prop_map(|(offset, len, seed)| Op::Unaligned { offset, len, seed }),
        1 => (0..size - 40_000, 1u64..40_000, any::<bool>())
            .prop_map(|(offset, len, trim)| Op::Zero { offset, len, trim }),
        3 => (0..size - 40_000, 1u64..40_000).prop_map(|(offset, len)| Op::Read { offset, len }),
        1 => (0u64..64 * 1024).prop_map(|bytes| Op::Apply { bytes }),
        1 => Just(Op::Flush),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Kill),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every read of the live volume equals a model that keeps every byte written; after a
    /// kill (flushed first) and at the end, the primary file itself and the vault's newest
    /// point equal it too.
    #[test]
    fn the_live_volume_with_deferred_writes_agrees_with_a_model(
        ops in proptest::collection::vec(op(), 1..60),
        small_segments in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        // Small segments: deferred writes whose records are in sealed intervals by the
        // time they are read or applied.
        create(tmp.path(), if small_segments { 64 << 10 } else { 1 << 30 });
        let mut model = vec![0u8; BLOCKS * BS];
        let mut v = open(tmp.path());
        let mut kills = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            match *op {
                Op::Write { block, blocks, seed } => {
                    let data = pattern(seed, (blocks as usize) * BS);
                    let at = block as usize * BS;
                    v.write(at as u64, &data, false).unwrap();
                    model[at..at + data.len()].copy_from_slice(&data);
                }
                Op::Unaligned { offset, len, seed } => {
                    let data = pattern(seed, len as usize);
                    v.write(offset, &data, false).unwrap();
                    model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
                }
                Op::Zero { offset, len, trim } => {
                    v.zero(offset, len, trim, false, false).unwrap();
                    model[offset as usize..(offset + len) as usize].fill(0);
                }
                Op::Read { offset, len } => {
                    let got = read(&v, offset, len as usize);
                    prop_assert!(got == model[offset as usize..(offset + len) as usize], "read {} at op {}", offset, i);
                }
                Op::Apply { bytes } => {
                    v.apply_behind(bytes, i % 2 == 0).unwrap();
                }
                Op::Flush => v.flush().unwrap(),
                Op::Checkpoint => v.checkpoint().unwrap(),
                Op::Kill => {
                    v.flush().unwrap();
                    drop(v);
                    v = open(tmp.path());
                    *kills.entry("kills").or_insert(0) += 1;
                    let primary = primary_file(tmp.path(), 0, BLOCKS * BS);
                    prop_assert!(primary == model, "primary after a kill at op {}", i);
                }
            }
        }
        let all = read(&v, 0, BLOCKS * BS);
        prop_assert!(all == model, "live volume at the end");
        v.stop().unwrap();
        let newest = v.vault().read_at(&Point::Latest, 0, BLOCKS as u64).unwrap();
        prop_assert!(newest == model, "vault's newest point at the end");
        drop(v);
        let primary = primary_file(tmp.path(), 0, BLOCKS * BS);
        prop_assert!(primary == model, "primary after a clean stop");
    }
}
