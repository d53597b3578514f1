//! In-place restore interrupted (Ctrl-C, kill -9, crash of the machine) and finished:
//! the intent it leaves brings the primary to exactly the point asked for, the undo
//! snapshot is the state before the first attempt, and nothing is marked suspect.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rewind_engine::intercept::LiveVolume;
use rewind_engine::restore::{self, RestoreError};
use rewind_engine::verify::{self, Target, VerifyOptions};
use rewind_vault::{Compression, CreateOptions, NoProgress, Point, Progress, SealPolicy, Vault};

const BS: usize = 4096;
const BLOCKS: usize = 16384; // 64 MiB: 64 pieces of 1 MiB for 16 copy workers

/// Tests here change the pretended boot of the machine: they run one at a time.
static BOOT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn create(dir: &Path) {
    let primary = dir.join("primary.img");
    std::fs::write(&primary, vec![0u8; BLOCKS * BS]).unwrap();
    let opts = CreateOptions {
        primary,
        vault: dir.join("vault"),
        block_size: BS as u32,
        compression: Compression::None,
        seal: SealPolicy {
            bytes: 16 << 20,
            interval_ns: 0,
            writes: 0,
        },
    };
    Vault::create(&opts, &NoProgress).unwrap().close().unwrap();
}

fn open(dir: &Path) -> LiveVolume {
    let vault = Arc::new(Vault::open(&dir.join("vault")).unwrap());
    LiveVolume::open(&dir.join("primary.img"), vault).unwrap()
}

fn primary(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("primary.img")).unwrap()
}

/// Writes history: a snapshot `target` of a patterned volume, then every block rewritten.
/// Returns the image at `target` and the image after.
fn history(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let v = open(dir);
    for b in (0..BLOCKS as u64).step_by(16) {
        v.write(b * BS as u64, &vec![(b % 200) as u8 + 1; 16 * BS], false)
            .unwrap();
    }
    v.flush().unwrap();
    v.vault().snapshot("target", false).unwrap();
    let at_target = primary(dir);
    for b in (0..BLOCKS as u64).step_by(64) {
        v.write(b * BS as u64, &vec![0xee; 64 * BS], false).unwrap();
    }
    v.stop().unwrap();
    let after = primary(dir);
    (at_target, after)
}

/// Stops the restore (sets `cancel`) once `after` bytes are copied.
struct StopAfter<'a> {
    done: AtomicU64,
    after: u64,
    cancel: &'a AtomicBool,
}

impl Progress for StopAfter<'_> {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, n: u64) {
        if self.done.fetch_add(n, Ordering::Relaxed) + n >= self.after {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
    fn finish(&self) {}
}

/// Runs an in-place restore to `target` that stops part way. Returns the volume still open.
fn interrupted_restore(dir: &Path) -> LiveVolume {
    let v = open(dir);
    let (plan, view) = restore::plan_in_place(&v, &"target".parse().unwrap()).unwrap();
    assert_eq!(plan.blocks, BLOCKS as u64);
    let cancel = AtomicBool::new(false);
    let stop = StopAfter {
        done: AtomicU64::new(0),
        after: 4 << 20,
        cancel: &cancel,
    };
    match restore::execute_in_place(&plan, &view, &v, &stop, Some(&cancel)) {
        Err(RestoreError::Interrupted { copied, total, .. }) => {
            assert!(copied > 0 && copied < total, "{copied} of {total}");
        }
        other => panic!("not interrupted: {other:?}"),
    }
    let r = v.vault().restore_intent().expect("the intent stays");
    assert_eq!(r.undo_snapshot, plan.undo_snapshot);
    v
}

fn assert_finished(dir: &Path, v: &LiveVolume, at_target: &[u8], after: &[u8]) {
    assert!(v.vault().restore_intent().is_none(), "the intent is gone");
    assert!(primary(dir) == at_target, "the primary is at the target");
    let now = v.vault().read_at(&Point::Latest, 0, BLOCKS as u64).unwrap();
    assert!(now == at_target, "the vault's newest point is the target");
    let undo: Vec<_> = v
        .vault()
        .snapshots()
        .into_iter()
        .filter(|s| s.name.starts_with("undo-restore"))
        .collect();
    assert_eq!(undo.len(), 1, "one undo snapshot: {undo:?}");
    let before = v
        .vault()
        .read_at(&undo[0].name.parse().unwrap(), 0, BLOCKS as u64)
        .unwrap();
    assert!(
        before == after,
        "the undo snapshot is the state before the restore"
    );
    let r = verify::verify(Target::Live(v), &VerifyOptions::default(), &NoProgress).unwrap();
    assert!(r.compare.is_empty(), "primary and vault agree");
    assert!(v.vault().suspects().is_empty(), "nothing marked suspect");
}

#[test]
fn an_interrupted_restore_is_finished_by_resume() {
    let _g = BOOT.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    create(tmp.path());
    let (at_target, after) = history(tmp.path());
    let v = interrupted_restore(tmp.path());
    let hybrid = primary(tmp.path());
    assert!(hybrid != at_target && hybrid != after, "part way");
    v.stop().unwrap();
    drop(v);
    let v = open(tmp.path());
    let (plan, _) = restore::resume_in_place(&v, &NoProgress, None)
        .unwrap()
        .expect("resumed");
    assert!(plan.resumes());
    assert_finished(tmp.path(), &v, &at_target, &after);
    v.stop().unwrap();
}

/// kill -9: the log records still in the process's buffer are lost, the primary (page
/// cache) keeps every block copied, the dirty region log lists the regions.
#[test]
fn a_killed_restore_is_finished_and_marks_nothing_suspect() {
    let _g = BOOT.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    create(tmp.path());
    let (at_target, after) = history(tmp.path());
    let v = interrupted_restore(tmp.path());
    // Write more copied blocks to the primary whose records never reach the log.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(tmp.path().join("primary.img"))
        .unwrap();
    let from = (BLOCKS - 100) * BS; // not copied yet: the copy goes in order
    f.write_all_at(&at_target[from..from + 64 * BS], from as u64)
        .unwrap();
    drop(f);
    let vault = v.vault().clone();
    drop(v);
    Arc::try_unwrap(vault).unwrap().crash();
    let v = open(tmp.path());
    assert!(
        !v.unclean_regions().is_empty(),
        "the kill left dirty regions"
    );
    let r = verify::verify(Target::Live(&v), &VerifyOptions::default(), &NoProgress).unwrap();
    assert!(
        !r.compare.is_empty(),
        "primary and vault differ before the resume"
    );
    restore::resume_in_place(&v, &NoProgress, None)
        .unwrap()
        .expect("resumed");
    assert!(
        v.unclean_regions().is_empty(),
        "the resume cleaned the regions"
    );
    assert_finished(tmp.path(), &v, &at_target, &after);
    v.stop().unwrap();
}

/// A restore to another point while one is pending supersedes it: the primary ends at the
/// new point, and the undo snapshot is still the state before the first attempt.
#[test]
fn a_restore_to_another_point_supersedes_an_interrupted_one() {
    let _g = BOOT.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    create(tmp.path());
    let (_, after) = history(tmp.path());
    let v = interrupted_restore(tmp.path());
    let (plan, view) = restore::plan_in_place(&v, &"seq:0".parse().unwrap()).unwrap();
    assert!(plan.interrupted.is_some() && !plan.resumes());
    restore::execute_in_place(&plan, &view, &v, &NoProgress, None).unwrap();
    assert_finished(tmp.path(), &v, &vec![0u8; BLOCKS * BS], &after);
    v.stop().unwrap();
}

/// A crash of the machine during the restore: the primary loses what was not synced, the
/// log keeps what was flushed; the redo and the resume end at the target.
#[test]
fn a_restore_cut_by_a_machine_crash_is_finished() {
    let _g = BOOT.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("REWIND_BOOT_ID", "00000000000000000000000000000011");
    let tmp = tempfile::tempdir().unwrap();
    create(tmp.path());
    let (at_target, after) = history(tmp.path());
    let v = interrupted_restore(tmp.path());
    let vault = v.vault().clone();
    drop(v);
    Arc::try_unwrap(vault).unwrap().crash();
    // The page cache is gone: the primary holds what it held before the restore.
    std::fs::write(tmp.path().join("primary.img"), &after).unwrap();
    std::env::set_var("REWIND_BOOT_ID", "00000000000000000000000000000012");
    let v = open(tmp.path());
    restore::resume_in_place(&v, &NoProgress, None)
        .unwrap()
        .expect("resumed");
    assert_finished(tmp.path(), &v, &at_target, &after);
    v.stop().unwrap();
    std::env::remove_var("REWIND_BOOT_ID");
}
