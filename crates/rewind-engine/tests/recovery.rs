//! Recovery after unclean stops: the dirty region log and the primary's checkpoint.
//!
//! A flush makes only the write log durable; the primary is synced by checkpoints. After a
//! crash of the machine, the records after the checkpoint are copied back into the
//! primary when the volume is opened again. A crash of the process alone (same boot)
//! leaves the page cache, and so the primary, intact.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use rewind_engine::drl::DirtyRegionLog;
use rewind_engine::intercept::LiveVolume;
use rewind_vault::{Compression, CreateOptions, NoProgress, Point, SealPolicy, Vault};

const BS: usize = 4096;
const BLOCKS: usize = 2048; // 8 MiB

fn create(dir: &Path) {
    let primary = dir.join("primary.img");
    std::fs::write(&primary, vec![0u8; BLOCKS * BS]).unwrap();
    let opts = CreateOptions {
        primary,
        vault: dir.join("vault"),
        block_size: BS as u32,
        compression: Compression::None,
        seal: SealPolicy {
            bytes: 1 << 20,
            interval_ns: 0,
            writes: 100,
        },
    };
    Vault::create(&opts, &NoProgress).unwrap().close().unwrap();
}

fn open(dir: &Path) -> LiveVolume {
    let vault = Arc::new(Vault::open(&dir.join("vault")).unwrap());
    LiveVolume::open(&dir.join("primary.img"), vault).unwrap()
}

fn block(v: &LiveVolume, b: u64) -> Vec<u8> {
    let mut buf = vec![0u8; BS];
    v.read(b * BS as u64, &mut buf).unwrap();
    buf
}

/// The same boot id for the whole test binary unless a test sets another one; tests that
/// change it run one after another.
static BOOT: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_machine_crash_brings_flushed_writes_back_into_the_primary() {
    let _g = BOOT.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("REWIND_BOOT_ID", "00000000000000000000000000000001");
    let tmp = tempfile::tempdir().unwrap();
    create(tmp.path());
    {
        let v = open(tmp.path());
        // Checkpointed: durable in the primary.
        v.write(0, &[1u8; BS], false).unwrap();
        v.flush().unwrap();
        v.checkpoint().unwrap();
        // Flushed after the checkpoint: durable in the log only. Many writes, so that some
        // intervals are sealed after the checkpoint too.
        for i in 0..300u64 {
            v.write(
                (10 + i % 200) * BS as u64,
                &[(i % 250) as u8 + 2; BS],
                false,
            )
            .unwrap();
        }
        v.zero(700 * BS as u64, 3 * BS as u64, true, false, false)
            .unwrap();
        v.flush().unwrap();
        assert!(v.drl().checkpoint() < v.vault().newest_seq().0);
        // The machine dies: the process without a clean stop, and the primary's page
        // cache with it. Pretend the primary's writes after the checkpoint never reached
        // the disk.
    }
    let primary = std::fs::OpenOptions::new()
        .write(true)
        .open(tmp.path().join("primary.img"))
        .unwrap();
    for b in 10..210u64 {
        primary.write_all_at(&[0u8; BS], b * BS as u64).unwrap();
    }
    primary
        .write_all_at(&[9u8; 3 * BS], 700 * BS as u64)
        .unwrap();
    drop(primary);
    // Another boot: the records after the checkpoint are copied back.
    std::env::set_var("REWIND_BOOT_ID", "00000000000000000000000000000002");
    let v = open(tmp.path());
    std::env::remove_var("REWIND_BOOT_ID");
    let all = v.vault().read_at(&Point::Latest, 0, BLOCKS as u64).unwrap();
    for b in 0..BLOCKS as u64 {
        assert_eq!(
            block(&v, b),
            all[b as usize * BS..(b as usize + 1) * BS],
            "block {b} after the redo"
        );
    }
    assert_eq!(block(&v, 0), vec![1u8; BS]);
    assert_eq!(block(&v, 701), vec![0u8; BS]);
    assert_eq!(v.drl().checkpoint(), v.vault().newest_seq().0);
    v.stop().unwrap();
}

#[test]
fn a_process_crash_keeps_the_primary_and_reports_the_dirty_regions() {
    let _g = BOOT.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("REWIND_BOOT_ID", "00000000000000000000000000000003");
    let tmp = tempfile::tempdir().unwrap();
    create(tmp.path());
    {
        let v = open(tmp.path());
        assert!(v.unclean_regions().is_empty());
        v.write(5 * BS as u64, &[7u8; BS], false).unwrap();
        // No flush, no stop: the process dies (the page cache survives).
    }
    let last = DirtyRegionLog::peek(&tmp.path().join("vault"))
        .unwrap()
        .unwrap();
    assert!(!last.clean);
    let v = open(tmp.path());
    std::env::remove_var("REWIND_BOOT_ID");
    assert_eq!(v.unclean_regions(), vec![0]);
    // Same boot: no redo; the primary holds the write.
    assert_eq!(block(&v, 5), vec![7u8; BS]);
    v.mark_repaired().unwrap();
    v.stop().unwrap();
    drop(v);
    let v = open(tmp.path());
    assert!(v.unclean_regions().is_empty());
    let d = DirtyRegionLog::peek(&tmp.path().join("vault"))
        .unwrap()
        .unwrap();
    assert!(!d.clean, "opened again: not a clean stop until stopped");
    v.stop().unwrap();
    assert!(
        DirtyRegionLog::peek(&tmp.path().join("vault"))
            .unwrap()
            .unwrap()
            .clean
    );
}

#[test]
fn a_checkpoint_never_names_a_record_the_log_could_lose() {
    let _g = BOOT.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    create(tmp.path());
    let v = open(tmp.path());
    for i in 0..50u64 {
        v.write(i * BS as u64, &[i as u8 + 1; BS], false).unwrap();
    }
    // No flush by the host: the checkpoint flushes the log itself first, so that after a
    // power cut the log reaches at least the checkpoint.
    v.checkpoint().unwrap();
    let durable = v.vault().log_position().durable_seq.0;
    assert!(v.drl().checkpoint() > 0);
    assert!(
        durable >= v.drl().checkpoint(),
        "checkpoint {} is past the durable log ({durable})",
        v.drl().checkpoint()
    );
    v.stop().unwrap();
}

#[test]
fn a_redo_cut_short_is_done_again_at_the_next_start() {
    let _g = BOOT.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("REWIND_BOOT_ID", "00000000000000000000000000000004");
    let tmp = tempfile::tempdir().unwrap();
    create(tmp.path());
    {
        let v = open(tmp.path());
        v.write(0, &[1u8; BS], false).unwrap();
        v.checkpoint().unwrap();
        for b in 10..40u64 {
            v.write(b * BS as u64, &[b as u8; BS], false).unwrap();
        }
        v.flush().unwrap();
    }
    // The machine dies before the primary's page cache reached the disk.
    let primary = std::fs::OpenOptions::new()
        .write(true)
        .open(tmp.path().join("primary.img"))
        .unwrap();
    for b in 10..40u64 {
        primary.write_all_at(&[0u8; BS], b * BS as u64).unwrap();
    }
    drop(primary);
    std::env::set_var("REWIND_BOOT_ID", "00000000000000000000000000000005");
    // A start in the new boot that dies before its redo is done: it opened the dirty
    // region log (and wrote it) but never brought the primary up to date.
    {
        let (drl, last) =
            DirtyRegionLog::open(&tmp.path().join("vault"), (BLOCKS * BS) as u64, BS as u32)
                .unwrap();
        assert!(!last.clean && !last.same_boot);
        drop(drl);
    }
    let d = DirtyRegionLog::peek(&tmp.path().join("vault"))
        .unwrap()
        .unwrap();
    assert!(!d.clean);
    // The next start still knows the machine crashed, and redoes.
    let v = open(tmp.path());
    std::env::remove_var("REWIND_BOOT_ID");
    for b in 10..40u64 {
        assert_eq!(block(&v, b), vec![b as u8; BS], "block {b} after the redo");
    }
    v.stop().unwrap();
}

#[test]
fn the_dirty_region_log_never_holds_more_regions_than_its_limit() {
    let _g = BOOT.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    // A sparse 256 MiB volume: 16 regions of 16 MiB.
    let primary = tmp.path().join("primary.img");
    let f = std::fs::File::create(&primary).unwrap();
    f.set_len(256 << 20).unwrap();
    drop(f);
    let opts = CreateOptions {
        primary,
        vault: tmp.path().join("vault"),
        block_size: BS as u32,
        compression: Compression::None,
        seal: SealPolicy::default(),
    };
    Vault::create(&opts, &NoProgress).unwrap().close().unwrap();
    let region = 16u64 << 20;
    {
        let v = open(tmp.path());
        v.drl().set_dirty_limit(4);
        // Writes all over the volume, never idle long enough for a clearing pass.
        for round in 0..3u64 {
            for r in 0..16u64 {
                let at = r * region + (round * 7 + r) % 100 * BS as u64;
                v.write(at, &[(r + round) as u8 + 1; BS], false).unwrap();
                assert!(
                    v.drl().dirty_regions().len() <= 4,
                    "round {round}, region {r}: {:?}",
                    v.drl().dirty_regions()
                );
            }
        }
        // The process dies: the repair would compare at most the limit.
    }
    let d = DirtyRegionLog::peek(&tmp.path().join("vault"))
        .unwrap()
        .unwrap();
    assert!(!d.clean);
    assert!(
        d.dirty().count() <= 4,
        "{:?}",
        d.dirty().collect::<Vec<_>>()
    );
    // Every write is in the vault: the regions cleaned were flushed first.
    let v = open(tmp.path());
    let all = v
        .vault()
        .read_at(&Point::Latest, 0, (256u64 << 20) / BS as u64)
        .unwrap();
    for r in 0..16u64 {
        let at = r * region + (2 * 7 + r) % 100 * BS as u64;
        let b = (at / BS as u64) as usize;
        assert_eq!(all[b * BS], (r + 2) as u8 + 1, "region {r}");
    }
    v.mark_repaired().unwrap();
    v.stop().unwrap();
}
