//! The intercept layer under concurrency: read-modify-write never loses an update, and the
//! primary and the write log agree on the order of overlapping writes.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use rewind_engine::intercept::LiveVolume;
use rewind_vault::{Compression, CreateOptions, NoProgress, Point, SealPolicy, Vault};

const BS: usize = 4096;

fn setup(dir: &Path, blocks: usize) -> Arc<LiveVolume> {
    let primary = dir.join("primary.img");
    std::fs::write(&primary, vec![0u8; blocks * BS]).unwrap();
    let opts = CreateOptions {
        primary: primary.clone(),
        vault: dir.join("vault"),
        block_size: BS as u32,
        compression: Compression::None,
        seal: SealPolicy {
            bytes: 1 << 20,
            interval_ns: 0,
            writes: 500,
        },
    };
    let vault = Arc::new(Vault::create(&opts, &NoProgress).unwrap());
    Arc::new(LiveVolume::open(&primary, vault).unwrap())
}

fn live_equals_vault(v: &LiveVolume) {
    let mut primary = vec![0u8; v.size() as usize];
    v.read(0, &mut primary).unwrap();
    let blocks = v.size() / BS as u64;
    let at_now = v.vault().read_at(&Point::Latest, 0, blocks).unwrap();
    assert!(
        primary == at_now,
        "primary and the vault's newest point differ"
    );
}

#[test]
fn concurrent_unaligned_writes_to_the_same_blocks_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    const BLOCKS: u64 = 512;
    const THREADS: u64 = 8;
    let v = setup(tmp.path(), BLOCKS as usize);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let v = &v;
            s.spawn(move || {
                // All threads walk the blocks in step, each writing one byte of its own
                // into every block: every write is a read-modify-write of a block the
                // others are writing too, and each block's last record must hold all of
                // them. Without the region locks the vault keeps a block that misses a
                // byte the primary has.
                for b in 0..BLOCKS {
                    v.write(b * BS as u64 + 1 + t * 37, &[t as u8 + 1], false)
                        .unwrap();
                }
            });
        }
    });
    let mut got = vec![0u8; (BLOCKS as usize) * BS];
    v.read(0, &mut got).unwrap();
    for b in 0..BLOCKS as usize {
        for t in 0..THREADS as usize {
            assert_eq!(
                got[b * BS + 1 + t * 37] as usize,
                t + 1,
                "block {b} lost thread {t}'s byte"
            );
        }
    }
    live_equals_vault(&v);
    v.flush().unwrap();
}

#[test]
fn overlapping_writes_land_in_one_order_in_primary_and_log() {
    let tmp = tempfile::tempdir().unwrap();
    let v = setup(tmp.path(), 64);
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let v = &v;
            s.spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                for i in 0..300u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = x % (16 * BS as u64);
                    let len = 1 + (x >> 20) % (3 * BS as u64);
                    let data = vec![(t * 40 + i % 40) as u8; len as usize];
                    match (x >> 40) % 5 {
                        0 => v.zero(off, len, false, false, false).unwrap(),
                        1 => v.zero(off, len, true, false, i % 7 == 0).unwrap(),
                        _ => v.write(off, &data, i % 11 == 0).unwrap(),
                    }
                }
            });
        }
    });
    live_equals_vault(&v);
}

#[test]
fn zero_and_trim_read_back_as_zero_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let v = setup(tmp.path(), 16);
    v.write(0, &vec![0xee; 16 * BS], false).unwrap();
    v.zero(100, 3 * BS as u64, false, true, false).unwrap();
    v.zero(5 * BS as u64 + 7, 2 * BS as u64, true, false, true)
        .unwrap();
    let mut got = vec![0u8; 16 * BS];
    v.read(0, &mut got).unwrap();
    for (i, b) in got.iter().enumerate() {
        let zeroed = (100..100 + 3 * BS).contains(&i) || (5 * BS + 7..7 * BS + 7).contains(&i);
        assert_eq!(*b, if zeroed { 0 } else { 0xee }, "byte {i}");
    }
    live_equals_vault(&v);
}

#[test]
fn a_primary_of_another_size_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let v = setup(tmp.path(), 8);
    let other = tmp.path().join("other.img");
    std::fs::write(&other, vec![0u8; 4 * BS]).unwrap();
    let err = LiveVolume::open(&other, v.vault().clone()).unwrap_err();
    assert!(
        err.to_string().contains("is this the right primary"),
        "{err}"
    );
}

#[test]
fn change_trackers_see_exactly_the_blocks_changed_while_they_live() {
    let tmp = tempfile::tempdir().unwrap();
    let v = setup(tmp.path(), 64);
    v.write(0, &[1u8; BS], false).unwrap();
    let t = v.track_changes();
    v.write(5 * BS as u64 + 100, &[2u8; 10], false).unwrap();
    v.zero(10 * BS as u64, 3 * BS as u64, true, false, false)
        .unwrap();
    let early = v.track_changes();
    v.write(40 * BS as u64, &[3u8; 2 * BS], false).unwrap();
    drop(early);
    let got: Vec<u64> = t.blocks().iter().collect();
    assert_eq!(got, vec![5, 10, 11, 12, 40, 41]);
    drop(t);
    v.write(50 * BS as u64, &[4u8; BS], false).unwrap();
    let late = v.track_changes();
    assert!(late.blocks().is_empty());
}

/// One host write is one unit for points: a 1 MiB write (eight records) and a write-zeroes
/// with unaligned edges (a write, a zero and a write) each read back whole or not at all,
/// at every seq, and a seal of the open interval can only fall after them.
#[test]
fn a_host_write_is_one_point_whatever_records_it_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let v = setup(tmp.path(), 1024);
    let blocks = v.size() / BS as u64;
    v.write(0, &vec![0x11; 2 * BS], false).unwrap();
    let before_mib = v.vault().read_at(&Point::Latest, 0, blocks).unwrap();
    v.write(100 * BS as u64, &vec![0xab; 1 << 20], false)
        .unwrap();
    let after_mib = v.vault().read_at(&Point::Latest, 0, blocks).unwrap();
    // Zero from the middle of block 99 to the middle of block 400 (inside the 1 MiB).
    v.zero(99 * BS as u64 + 100, 301 * BS as u64, false, false, false)
        .unwrap();
    let after_zero = v.vault().read_at(&Point::Latest, 0, blocks).unwrap();
    let newest = v.vault().newest_seq().0;
    assert_eq!(newest, 1 + 8 + 3, "records: 1 + 8 + 3");
    for s in 0..=newest {
        let got = v
            .vault()
            .read_at(&format!("seq:{s}").parse().unwrap(), 0, blocks)
            .unwrap();
        let want = match s {
            0 => vec![0u8; blocks as usize * BS],
            1..=8 => before_mib.clone(),
            9..=11 => after_mib.clone(),
            _ => after_zero.clone(),
        };
        assert!(got == want, "seq:{s} shows part of a host write");
    }
    live_equals_vault(&v);
}

/// `len` bytes of `fill` in memory aligned for direct I/O (large writes then go direct).
fn aligned(raw: &mut Vec<u8>, len: usize, fill: u8) -> &mut [u8] {
    *raw = vec![fill; len + rewind_engine::direct::ALIGN];
    let at = raw.as_ptr().align_offset(rewind_engine::direct::ALIGN);
    &mut raw[at..at + len]
}

#[test]
fn direct_and_buffered_writes_of_the_same_blocks_agree() {
    let tmp = tempfile::tempdir().unwrap();
    const BLOCKS: usize = 1024;
    let v = setup(tmp.path(), BLOCKS);
    let big = rewind_engine::direct::MIN_LEN;
    // On a file system with direct I/O (the test's tmp dir is one), large writes go direct.
    let direct = v.write_waits(big);
    eprintln!("large writes go direct: {direct}");
    let mut raw = Vec::new();
    // A buffered write cached in the page cache, then a direct one over it: reads see the
    // direct one (the kernel drops the stale cached page), and so does the vault.
    v.write(BS as u64, &[1u8; BS], false).unwrap();
    v.write(0, aligned(&mut raw, big, 2), false).unwrap();
    let mut got = vec![0u8; BS];
    v.read(BS as u64, &mut got).unwrap();
    assert!(
        got.iter().all(|b| *b == 2),
        "a stale cached page after a direct write"
    );
    // A buffered write into a range written direct.
    v.write(3 * BS as u64 + 10, &[3u8; 100], false).unwrap();
    live_equals_vault(&v);
    // Threads racing large direct and small buffered writes over the same blocks.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let v = &v;
            s.spawn(move || {
                let mut raw = Vec::new();
                for i in 0..40u64 {
                    let fill = (t * 40 + i) as u8;
                    let at = (t * 7 + i * 13) % (BLOCKS - big / BS) as u64;
                    if i % 2 == 0 {
                        v.write(at * BS as u64, aligned(&mut raw, big, fill), false)
                            .unwrap();
                    } else {
                        v.write(at * BS as u64 + 5, &vec![fill; 3 * BS], false)
                            .unwrap();
                    }
                }
            });
        }
    });
    v.flush().unwrap();
    live_equals_vault(&v);
    // Large writes reach the primary file behind the log: all of them first.
    v.apply_all_behind().unwrap();
    let on_disk = std::fs::read(tmp.path().join("primary.img")).unwrap();
    let mut read = vec![0u8; on_disk.len()];
    v.read(0, &mut read).unwrap();
    assert!(
        on_disk == read,
        "the file and the live volume's reads differ"
    );
}
