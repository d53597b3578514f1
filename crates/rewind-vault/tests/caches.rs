//! The readers' bounded caches (open segment files, loaded delta maps) and point views
//! that do not hold the vault's lock while they are built.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rewind_vault::{
    CacheLimits, Compression, CreateOptions, NoProgress, Point, SealPolicy, Seq, Vault,
};

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

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Intervals of two writes to their own block: interval `i` writes block `i` at seqs
/// `2i + 1` and `2i + 2` and is sealed.
fn many_intervals(vault: &Vault, n: u64) {
    for i in 0..n {
        assert_eq!(vault.write(i, &data(2 * i + 1)).unwrap(), Seq(2 * i + 1));
        assert_eq!(vault.write(i, &data(2 * i + 2)).unwrap(), Seq(2 * i + 2));
        vault.seal().unwrap();
    }
}

const INTERVALS: u64 = 600;
/// The soft limit on open files the child runs under: well under one per interval.
const NOFILE: u64 = 200;
const CHILD: &str = "REWIND_TEST_FD_LIMIT_CHILD";

/// A vault of many more intervals than the process may open files reads every block of its
/// newest point, and blocks of every 37th point (sealed ends and mid-interval points),
/// correctly, with the open files bounded by the segment file cache; the delta map cache
/// stays within its budget, with maps evicted and loaded again. Runs in a child process
/// under `ulimit -n` (setrlimit RLIMIT_NOFILE) so that an unbounded cache fails with EMFILE.
#[test]
fn a_vault_of_many_intervals_reads_every_point_with_bounded_open_files() {
    if std::env::var_os(CHILD).is_none() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {NOFILE} && exec \"$0\" \"$@\""))
            .arg(exe)
            .args([
                "--exact",
                "a_vault_of_many_intervals_reads_every_point_with_bounded_open_files",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child failed:\n{text}");
        assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let vault = create(tmp.path(), INTERVALS);
    many_intervals(&vault, INTERVALS);
    let limits = CacheLimits {
        segment_files: 16,
        map_bytes: 4096,
    };
    vault.set_cache_limits(limits);
    let before = open_fds();

    let newest = vault.view(&Point::Latest).unwrap();
    for i in 0..INTERVALS {
        assert_eq!(newest.read(i, 1).unwrap(), data(2 * i + 2), "block {i} now");
    }
    let fds = open_fds();
    let stats = vault.cache_stats();
    assert!(stats.segment_files <= limits.segment_files, "{stats:?}");
    assert!(
        fds <= before + limits.segment_files,
        "{fds} open files after reading {INTERVALS} segments (before: {before})"
    );

    for seq in (1..=2 * INTERVALS).step_by(37) {
        let view = vault.view(&Point::Seq(Seq(seq))).unwrap();
        for i in (0..INTERVALS).step_by(7) {
            let want = if 2 * i + 2 <= seq {
                data(2 * i + 2)
            } else if 2 * i < seq {
                data(2 * i + 1)
            } else {
                vec![0u8; BS]
            };
            assert_eq!(view.read(i, 1).unwrap(), want, "block {i} at seq {seq}");
        }
        drop(view);
        let stats = vault.cache_stats();
        assert!(stats.map_bytes <= limits.map_bytes, "{stats:?}");
        assert!(stats.segment_files <= limits.segment_files, "{stats:?}");
    }
    assert!(open_fds() <= before + limits.segment_files);
    // A view of the newest point opened before the limits were lowered still reads.
    assert_eq!(newest.read(0, 1).unwrap(), data(2));
}

/// Readers on several threads with one segment handle cached: each read keeps the handle
/// it took valid while the others evict it.
#[test]
fn an_evicted_segment_handle_stays_valid_for_the_read_using_it() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 40;
    let vault = create(tmp.path(), n);
    many_intervals(&vault, n);
    // And the open interval, which readers read through the same cache.
    vault.write(0, &data(10_000)).unwrap();
    vault.set_cache_limits(CacheLimits {
        segment_files: 1,
        map_bytes: 1,
    });
    let view = vault.view(&Point::Latest).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let view = &view;
            s.spawn(move || {
                for k in 0..400u64 {
                    let i = (k * 7 + t * 13) % n;
                    let want = if i == 0 {
                        data(10_000)
                    } else {
                        data(2 * i + 2)
                    };
                    assert_eq!(view.read(i, 1).unwrap(), want);
                }
            });
        }
    });
    assert_eq!(vault.cache_stats().segment_files, 1);
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

/// A view asked to prefetch blocks that the newest maps of its chain answer loads only
/// those maps' heads (a few at once), not the whole chain's: the heads of maps of
/// scattered writes are megabytes each. Reads of the prefetched blocks use them; a read of
/// another block still sees the whole chain.
#[test]
fn prefetch_loads_only_the_heads_of_the_maps_that_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = create(tmp.path(), 64);
    many_intervals(&vault, 40);
    vault.close().unwrap();
    let vault = Vault::open(&tmp.path().join("vault")).unwrap();
    let view = vault.view(&Point::Latest).unwrap();
    assert_eq!(view.maps_consulted(), 40);
    let before = vault.cache_stats().maps;
    view.prefetch(&[(38, 2)]).unwrap();
    let loaded = vault.cache_stats().maps - before;
    assert!((2..=8).contains(&loaded), "{loaded} map heads loaded");
    assert_eq!(view.read(38, 2).unwrap(), [data(78), data(80)].concat());
    assert_eq!(
        vault.cache_stats().maps - before,
        loaded,
        "the reads loaded more maps"
    );
    assert_eq!(view.read(0, 1).unwrap(), data(2));
    assert_eq!(view.read(39, 2).unwrap(), [data(80), vec![0; BS]].concat());
    assert_eq!(vault.cache_stats().maps - before, 40);
}
