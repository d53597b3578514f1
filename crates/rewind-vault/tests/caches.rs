//! Point views that do not hold the vault's lock while they are built.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rewind_vault::{Compression, CreateOptions, NoProgress, Point, SealPolicy, Seq, Vault};

const BS: usize = 4096;

fn create(dir: &Path, blocks: u64) -> Vault {
    let primary = dir.join("primary.img");
    std::fs::File::create(&primary)
        .unwrap()
        .set_len(blocks * BS as u64)
        .unwrap();
    let opts = CreateOptions {
        primary,
        vault: dir.join("vault"),
        block_size: BS as u32,
        compression: Compression::None,
        seal: SealPolicy {
            bytes: 0,
            interval_ns: 0,
            writes: 0,
        },
    };
    Vault::create(&opts, &NoProgress).unwrap()
}

/// The data record `seq` writes (whatever block it goes to).
fn data(seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    for (i, c) in b.chunks_mut(8).enumerate() {
        c.copy_from_slice(&(seq * 1000 + i as u64).to_le_bytes());
    }
    b
}

/// Opening views of the open interval (its newest point, and a point in its middle) does
/// not hold the vault's lock while the view is built: a writer that keeps appending gets
/// thousands of writes done while each view builds (with the lock held throughout, a few:
/// those before the view takes the lock).
#[test]
fn opening_a_view_of_the_open_interval_does_not_stall_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let blocks = 1 << 16;
    let vault = create(tmp.path(), blocks);
    let records = 100_000u64;
    let buf = data(1);
    for i in 0..records {
        vault.write((i * 7919) % blocks, &buf).unwrap();
    }
    vault.flush().unwrap();
    let done = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    let during = std::thread::scope(|s| {
        let opener = s.spawn(|| {
            // Let the writer start.
            while written.load(Ordering::Relaxed) < 100 {
                std::thread::yield_now();
            }
            let mut during = Vec::new();
            for p in [Point::Latest, Point::Seq(Seq(records / 2))] {
                for _ in 0..4 {
                    let before = written.load(Ordering::Relaxed);
                    let v = vault.view(&p).unwrap();
                    during.push(written.load(Ordering::Relaxed) - before);
                    assert!(v.replayed_blocks() > 0);
                }
            }
            done.store(true, Ordering::Relaxed);
            during
        });
        let mut i = 0u64;
        while !done.load(Ordering::Relaxed) {
            vault.write((i * 31) % blocks, &buf).unwrap();
            written.fetch_add(1, Ordering::Relaxed);
            i += 1;
        }
        opener.join().unwrap()
    });
    let mut sorted = during.clone();
    sorted.sort();
    assert!(
        sorted[sorted.len() / 2] >= 200,
        "writes done while each view was built: {during:?}"
    );
}
