//! `rewind repair`'s manifest fallback: a damaged current manifest is replaced by the
//! previous generation, written as a new one, with every seal the lost commit made done
//! again from the write log, so no record and no snapshot is lost; the last stop is
//! recorded as a machine crash so that the next serve redoes and compares.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{check_everything, Model};
use rewind_vault::{Compression, Intent, Seq, Vault, VaultError};

const BS: u32 = 512;
const BLOCKS: usize = 64;

fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut m: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("manifest-") && !n.contains('.')
        })
        .collect();
    m.sort();
    m
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x40;
    std::fs::write(path, b).unwrap();
}

fn w(vault: &Vault, model: &mut Model, at: u64, n: usize, seed: u64) {
    let d = common::data(seed, BS as usize, n);
    assert_eq!(vault.write(at, &d).unwrap(), Seq(model.write(at, &d)));
}

/// A vault whose newest commit is a seal (of an interval with a snapshot in it), with
/// flushed records after it in the next segment; the vault is dropped as a crash drops it.
fn sealed_then_written(root: &Path) -> (PathBuf, Model) {
    let (vault, mut model) = common::create(
        root,
        BS,
        BLOCKS,
        7,
        Compression::None,
        common::no_auto_seal(),
    );
    w(&vault, &mut model, 0, 8, 1);
    w(&vault, &mut model, 10, 2, 2);
    vault.seal().unwrap();
    w(&vault, &mut model, 4, 4, 3);
    vault.snapshot("b", false).unwrap();
    model.marker("b");
    w(&vault, &mut model, 30, 3, 4);
    vault.seal().unwrap();
    // (A snapshot seals its interval: 1..=2, 3..=4, then 5..=5 by the seal that is lost.)
    // After the seal that is lost: records only the write log holds.
    w(&vault, &mut model, 40, 2, 5);
    w(&vault, &mut model, 5, 1, 6);
    vault.flush().unwrap();
    drop(vault);
    (root.join("vault"), model)
}

#[test]
fn a_damaged_manifest_falls_back_and_seals_again_what_the_lost_commit_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, model) = sealed_then_written(tmp.path());
    let newest = manifests(&dir).pop().unwrap();
    flip(&newest, 40);
    assert!(matches!(
        Vault::open(&dir),
        Err(VaultError::ManifestDamaged { .. })
    ));

    let plan = Vault::repair_manifest(&dir, "test", true).unwrap().unwrap();
    assert_eq!(plan.outcome, Ok(()));
    assert_eq!(plan.resealed, vec![(Seq(5), Seq(5))], "{plan:#?}");
    assert!(plan.orphaned.is_empty(), "{plan:#?}");
    assert!(!plan.loses.is_empty());
    // A dry run changes nothing.
    assert!(matches!(
        Vault::open(&dir),
        Err(VaultError::ManifestDamaged { .. })
    ));

    let done = Vault::repair_manifest(&dir, "test", false)
        .unwrap()
        .unwrap();
    assert_eq!(done.resealed, plan.resealed);
    assert!(done.kept_as.exists(), "the damaged manifest is kept");
    assert!(!newest.exists());
    let vault = Vault::open(&dir).unwrap();
    assert!(vault.damage().is_empty(), "{:?}", vault.damage());
    check_everything(&vault, &model, "after the manifest fallback");
    // The last stop counts as a machine crash: a boot no machine has, and a checkpoint
    // the previous generation certainly held.
    let serving = vault.serving().unwrap();
    assert_eq!(serving.boot_id, [0; 16]);
    assert!(serving.checkpoint_seq <= Seq(4), "{serving:?}");
    assert_eq!(vault.intervals().iter().filter(|i| i.sealed).count(), 3);
    drop(vault);
    assert_eq!(Vault::repair_manifest(&dir, "test", false).unwrap(), None);
}

#[test]
fn a_damaged_manifest_with_no_previous_generation_is_not_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, _) = common::create(
        tmp.path(),
        BS,
        BLOCKS,
        7,
        Compression::None,
        common::no_auto_seal(),
    );
    drop(vault);
    let dir = tmp.path().join("vault");
    let all = manifests(&dir);
    assert_eq!(all.len(), 1);
    flip(&all[0], 40);
    let r = Vault::repair_manifest(&dir, "test", false)
        .unwrap()
        .unwrap();
    assert!(r.outcome.is_err(), "{r:#?}");
    assert!(all[0].exists(), "nothing was changed");
}

#[test]
fn a_later_segment_that_does_not_continue_the_log_is_moved_aside_not_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = sealed_then_written(tmp.path());
    let newest = manifests(&dir).pop().unwrap();
    flip(&newest, 40);
    // The segment after the open one is cut short: its records no longer reach the next.
    let log = dir.join("log");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let open = &segs[segs.len() - 2];
    let f = std::fs::OpenOptions::new().write(true).open(open).unwrap();
    f.set_len(f.metadata().unwrap().len() - 200).unwrap();
    let r = Vault::repair_manifest(&dir, "test", false)
        .unwrap()
        .unwrap();
    assert!(r.resealed.is_empty(), "{r:#?}");
    assert_eq!(r.orphaned.len(), 1, "{r:#?}");
    let kept = r.orphaned[0].0.with_file_name(format!(
        "{}.orphaned",
        r.orphaned[0].0.file_name().unwrap().to_string_lossy()
    ));
    let vault = Vault::open(&dir).unwrap();
    assert!(
        kept.exists(),
        "opening a writer removed the orphaned records"
    );
    assert!(vault
        .intents()
        .iter()
        .any(|i| matches!(i, Intent::Serving(_))));
}
