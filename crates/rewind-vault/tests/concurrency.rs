//! Several threads at once: writers sharing flushes (group commit), readers opening the
//! vault read-only while a writer seals, and the single-writer lock.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::{check_everything, Rng};
use rewind_vault::{
    Compression, CreateOptions, NoProgress, Point, SealPolicy, Seq, Vault, VaultError,
};

/// Threads that each write their own blocks and flush: every flush returns a durable seq
/// covering the caller's write, every write reads back at its seq and at `now`, and all of
/// them survive a power cut.
#[test]
fn concurrent_writes_and_flushes_share_syncs() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 40;
    const PER_THREAD: u64 = 16;
    for seal in [
        common::no_auto_seal(),
        SealPolicy {
            bytes: 0,
            interval_ns: 0,
            writes: 5,
        },
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vault");
        let (vault, _) = common::create(
            tmp.path(),
            512,
            (THREADS * PER_THREAD) as usize,
            5,
            Compression::Lz4,
            seal,
        );
        let done: Vec<Vec<(u64, u64, Vec<u8>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let vault = &vault;
                    s.spawn(move || {
                        let mut rng = Rng(t);
                        let mut mine = Vec::new();
                        for _ in 0..ROUNDS {
                            let block = t * PER_THREAD + rng.below(PER_THREAD);
                            let data = common::data(rng.next_u64(), 512, 1);
                            let seq = vault.write(block, &data).unwrap();
                            let durable = vault.flush().unwrap();
                            assert!(durable >= seq, "flush returned {durable} before {seq}");
                            assert!(vault.log_position().durable_seq >= seq);
                            mine.push((seq.0, block, data));
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<(u64, u64, Vec<u8>)> = done.into_iter().flatten().collect();
        all.sort_by_key(|w| w.0);
        let seqs: Vec<u64> = all.iter().map(|w| w.0).collect();
        assert_eq!(
            seqs,
            (1..=THREADS * ROUNDS).collect::<Vec<_>>(),
            "seqs are not 1..=N"
        );
        let check = |vault: &Vault, what: &str| {
            for (seq, block, data) in &all {
                let got = vault.read_at(&Point::Seq(Seq(*seq)), *block, 1).unwrap();
                assert_eq!(&got, data, "{what}: seq {seq} block {block}");
            }
            // At `now`, every block holds its newest write.
            let now = vault.read_at(&Point::Latest, 0, vault.blocks()).unwrap();
            for (seq, block, data) in &all {
                if all.iter().any(|w| w.1 == *block && w.0 > *seq) {
                    continue;
                }
                let at = *block as usize * 512;
                assert_eq!(&now[at..at + 512], &data[..], "{what}: now, block {block}");
            }
        };
        check(&vault, "live");
        vault.crash();
        let vault = Vault::open(&dir).unwrap();
        assert_eq!(vault.info().newest_seq, Seq(THREADS * ROUNDS));
        check(&vault, "after a power cut");
    }
}

/// A reader that opens the vault read-only while the writer appends, seals and snapshots
/// sees a consistent state: the volume at some seq the writer reached, exactly.
#[test]
fn readers_open_while_the_writer_seals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vault");
    let (vault, mut model) = common::create(
        tmp.path(),
        512,
        64,
        9,
        Compression::None,
        SealPolicy {
            bytes: 0,
            interval_ns: 0,
            writes: 2,
        },
    );
    // The writer's work, planned ahead so that readers can check against the model.
    enum Step {
        Write(u64, Vec<u8>),
        Zero(u64, u64),
        Snapshot(String),
        Flush,
    }
    let mut rng = Rng(77);
    let mut steps = Vec::new();
    for i in 0..400u64 {
        let step = match rng.below(10) {
            0 => Step::Zero(rng.below(60), 1 + rng.below(4)),
            1 => Step::Snapshot(format!("r{i}")),
            2 | 3 => Step::Flush,
            _ => {
                let n = 1 + rng.below(4);
                Step::Write(
                    rng.below(64 - n + 1),
                    common::data(rng.next_u64(), 512, n as usize),
                )
            }
        };
        match &step {
            Step::Write(at, d) => {
                model.write(*at, d);
            }
            Step::Zero(at, n) => {
                model.zero(*at, *n);
            }
            Step::Snapshot(name) => {
                model.marker(name);
            }
            Step::Flush => {}
        }
        steps.push(step);
    }
    let finished = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for step in &steps {
                match step {
                    Step::Write(at, d) => {
                        vault.write(*at, d).unwrap();
                    }
                    Step::Zero(at, n) => {
                        vault.zero(*at, *n).unwrap();
                    }
                    Step::Snapshot(name) => {
                        vault.snapshot(name, true).unwrap();
                    }
                    Step::Flush => {
                        vault.flush().unwrap();
                    }
                }
            }
            finished.store(true, Ordering::SeqCst);
        });
        // Views from the writing vault itself, taken between its appends and seals.
        s.spawn(|| {
            let mut rng = Rng(99);
            let mut views = 0;
            while !finished.load(Ordering::SeqCst) || views < 3 {
                views += 1;
                let view = vault.view(&Point::Latest).unwrap();
                let n = view.point().seq.0;
                let what = format!("live view #{views} at {n}");
                let got = view.read(0, 64).unwrap();
                common::assert_image(&what, 512, &got, model.image(n));
                let k = rng.below(n + 1);
                common::check_point(&vault, &Point::Seq(Seq(k)), model.image(k), &what);
            }
        });
        for r in 0..2u64 {
            let (dir, model, finished) = (&dir, &model, &finished);
            s.spawn(move || {
                let mut rng = Rng(r);
                let mut opens = 0;
                while !finished.load(Ordering::SeqCst) || opens < 3 {
                    let ro = Vault::open_read_only(dir)
                        .unwrap_or_else(|e| panic!("read-only open #{opens}: {e}"));
                    opens += 1;
                    let n = ro.info().newest_seq.0;
                    assert!(n <= model.newest());
                    let what = format!("reader {r} open #{opens} at {n}");
                    common::check_point(&ro, &Point::Latest, model.image(n), &what);
                    let k = rng.below(n + 1);
                    common::check_point(&ro, &Point::Seq(Seq(k)), model.image(k), &what);
                    for s in ro.snapshots() {
                        let img = model.image(s.seq.0);
                        common::check_point(&ro, &Point::Snapshot(s.name), img, &what);
                    }
                }
            });
        }
    });
    vault.close().unwrap();
    let vault = Vault::open(&dir).unwrap();
    check_everything(&vault, &model, "after the race");
}

/// One writer at a time: a second `open` is refused while the first holds the lock and
/// says who holds it; readers need no lock; the lock goes with the writer.
#[test]
fn second_writer_is_locked_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vault");
    let (vault, model) = common::create(
        tmp.path(),
        512,
        64,
        1,
        Compression::None,
        common::no_auto_seal(),
    );
    let pid = std::process::id().to_string();
    match Vault::open(&dir) {
        Err(VaultError::Locked { path, holder }) => {
            assert_eq!(path, dir);
            assert!(holder.contains(&pid), "holder {holder:?}");
        }
        other => panic!("second writer: {:?}", other.map(|v| v.info())),
    }
    let ro = Vault::open_read_only(&dir).unwrap();
    check_everything(&ro, &model, "reader beside the creator");
    drop(vault);

    let vault = Vault::open_as(&dir, "serve").unwrap();
    match Vault::open_as(&dir, "snapshot") {
        Err(VaultError::Locked { holder, .. }) => {
            assert!(
                holder.contains("serve") && holder.contains(&pid),
                "holder {holder:?}"
            );
        }
        other => panic!("second writer: {:?}", other.map(|v| v.info())),
    }
    // A writer on another thread is refused too.
    std::thread::scope(|s| {
        s.spawn(|| assert!(matches!(Vault::open(&dir), Err(VaultError::Locked { .. }))));
    });
    // Creating a vault where one is refuses as well.
    let again = Vault::create(
        &CreateOptions {
            primary: tmp.path().join("primary.img"),
            vault: dir.clone(),
            block_size: 512,
            compression: Compression::None,
            seal: SealPolicy::default(),
        },
        &NoProgress,
    );
    assert!(matches!(again, Err(VaultError::NotEmpty { .. })));
    vault.crash();
    let vault = Vault::open(&dir).unwrap();
    vault.close().unwrap();
    let vault = Vault::open(&dir).unwrap();
    check_everything(&vault, &model, "after the locks");
    assert!(matches!(
        Vault::open(&tmp.path().join("nowhere")),
        Err(VaultError::NotAVault { .. })
    ));
    assert!(matches!(
        Vault::open(tmp.path()),
        Err(VaultError::NotAVault { .. })
    ));
}
