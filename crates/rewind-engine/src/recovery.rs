//! Recovery after an unclean stop, done once, the same way by everything that serves the
//! volume (`rewind serve`, the crash campaigns): [`recover`].
//!
//! Opening the [`LiveVolume`] has already brought the primary up to date after a crash of
//! the machine (the records after the primary's checkpoint copied back). What is left, in
//! this order:
//! 1. the regions the dirty region log lists are compared, primary against the vault's
//!    newest point, and what differs is copied into the vault as fix-ups ([`repair_dirty`]):
//!    writes that reached the primary while their records were still in the process's
//!    buffer. They were never flushed, so nothing is marked suspect. Then the log is
//!    cleared. This comes first: until it is done the vault does not know every block the
//!    primary holds, and an in-place restore copies only the blocks the vault knows changed;
//! 2. an in-place restore that was interrupted is finished (the primary is part way between
//!    two points until then).

use std::sync::atomic::AtomicBool;

use rewind_vault::Serving;

use rewind_vault::Progress;

use crate::intercept::LiveVolume;
use crate::restore::{self, InPlacePlan, RestoreError, RestoreReport};
use crate::verify::{self, Target, VerifyError, VerifyOptions};

/// What [`recover`] did.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// The interrupted in-place restore it finished.
    pub restore: Option<(InPlacePlan, RestoreReport)>,
    /// Dirty regions compared (of the dirty region log's size), and the blocks copied into
    /// the vault as fix-ups.
    pub regions: usize,
    pub fixup_blocks: u64,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    #[error("cannot finish the interrupted in-place restore: {0}")]
    Restore(#[from] RestoreError),
    #[error("cannot repair the dirty regions after an unclean stop: {0}")]
    Repair(#[from] VerifyError),
    #[error("cannot clear the dirty region log: {0}")]
    Clear(#[from] crate::intercept::InterceptError),
}

/// Recovers `volume` (see the module doc). `before_repair` is called with the number of
/// dirty regions before they are compared (to say so), when there are any.
pub fn recover(
    volume: &LiveVolume,
    progress: &dyn Progress,
    cancel: Option<&AtomicBool>,
    before_repair: &mut dyn FnMut(usize, u64),
) -> Result<RecoveryReport, RecoveryError> {
    let started = std::time::Instant::now();
    let (regions, fixup_blocks) = repair_dirty(volume, progress, before_repair)?;
    let restore = restore::resume_in_place(volume, progress, cancel)?;
    Ok(RecoveryReport {
        restore,
        regions,
        fixup_blocks,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Step 1 of [`recover`]: compares the regions an unclean stop left dirty and copies what
/// differs into the vault (fix-ups, nothing marked suspect), then clears the dirty region
/// log. Returns the regions compared and the blocks copied.
pub fn repair_dirty(
    volume: &LiveVolume,
    progress: &dyn Progress,
    before_repair: &mut dyn FnMut(usize, u64),
) -> Result<(usize, u64), RecoveryError> {
    let dirty = volume.unclean_regions();
    if dirty.is_empty() {
        return Ok((0, 0));
    }
    let drl = volume.drl();
    before_repair(
        dirty.len(),
        (dirty.len() as u64 * drl.region_size()).min(volume.size()),
    );
    let opts = VerifyOptions {
        only_regions: Some(crate::drl::covering_regions(
            dirty.iter().copied(),
            drl.region_size(),
            verify::DEFAULT_REGION_SIZE,
            volume.size(),
        )),
        mark_suspect: false,
        ..VerifyOptions::default()
    };
    let r = verify::sync(Target::Live(volume), &opts, progress)?;
    volume.mark_repaired()?;
    Ok((dirty.len(), r.fixup_blocks))
}

/// What the dirty region log said when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrlFacts {
    /// A log read from its file.
    Found {
        clean: bool,
        /// Written in this boot of the machine.
        same_boot: bool,
        checkpoint_seq: u64,
        dirty: Vec<u64>,
        /// The primary may lag the write log after the checkpoint (writes deferred).
        behind: bool,
    },
    /// No log, or one whose first write was torn: a new one was started.
    Missing,
    /// A log that failed its checks: moved aside, a new one started.
    Damaged,
}

/// Everything known when a live volume is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub drl: DrlFacts,
    /// What the manifest says: a live volume was open (see [`rewind_vault::Serving`]).
    pub serving: Option<Serving>,
    /// This boot of the machine.
    pub boot_id: [u8; 16],
    /// The newest seq of the write log.
    pub newest_seq: u64,
    /// Regions of the dirty region log.
    pub regions: u64,
}

/// What opening a live volume must do before anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The machine crashed: copy every block changed after this seq from the vault back
    /// into the primary.
    pub redo_from: Option<u64>,
    /// Regions to compare (and fix up) before serving.
    pub compare: Vec<u64>,
    /// Why, for the log.
    pub why: &'static str,
}

/// The one recovery decision, from the facts alone (no I/O): whether the machine crashed
/// (the dirty region log, or the manifest's serving fact, was written in another boot),
/// from which checkpoint to redo (the older of the two: never past what the primary has),
/// and which regions to compare (the log's dirty ones; every region when the log is lost
/// or damaged after an unclean stop, since then nothing says where the writes were).
pub fn decide(f: &Facts) -> Decision {
    let other_boot = |b: &[u8; 16]| *b != f.boot_id || f.boot_id == [0; 16];
    let manifest_crash = f.serving.is_some_and(|s| other_boot(&s.boot_id));
    let (drl_crash, drl_checkpoint, dirty, drl_known) = match &f.drl {
        DrlFacts::Found {
            clean,
            same_boot,
            checkpoint_seq,
            dirty,
            behind,
        } => (
            // Deferred primary writes were never in the page cache: the same boot does not
            // save them.
            !clean && (!same_boot || *behind),
            Some(*checkpoint_seq),
            dirty.clone(),
            true,
        ),
        DrlFacts::Missing | DrlFacts::Damaged => (false, None, Vec::new(), false),
    };
    let checkpoint = [drl_checkpoint, f.serving.map(|s| s.checkpoint_seq.0)]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(0)
        .min(f.newest_seq);
    let crashed = drl_crash || manifest_crash;
    let deferred = matches!(
        f.drl,
        DrlFacts::Found {
            clean: false,
            same_boot: true,
            behind: true,
            ..
        }
    ) && !manifest_crash;
    let unclean_without_log = !drl_known && f.serving.is_some();
    let compare = if unclean_without_log {
        (0..f.regions).collect()
    } else {
        dirty
    };
    let why = match (crashed, unclean_without_log, compare.is_empty()) {
        (_, true, _) => "the last stop was not clean and the dirty region log is gone: every region is compared",
        (true, _, _) if deferred => "the last stop was not clean and host writes were still to be written into the primary: it is brought up to date from the write log",
        (true, _, _) => "the machine stopped without a clean stop: the primary is brought up to date from the write log",
        (false, _, false) => "the last stop was not clean: the dirty regions are compared",
        _ => "clean",
    };
    Decision {
        // Without its log nothing says whether writes were deferred: redo in any boot.
        redo_from: (crashed || unclean_without_log).then_some(checkpoint),
        compare,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_vault::Seq;

    const NOW: [u8; 16] = [1; 16];
    const BEFORE: [u8; 16] = [2; 16];

    fn facts(drl: DrlFacts, serving: Option<([u8; 16], u64)>) -> Facts {
        Facts {
            drl,
            serving: serving.map(|(b, c)| Serving {
                boot_id: b,
                checkpoint_seq: Seq(c),
            }),
            boot_id: NOW,
            newest_seq: 100,
            regions: 4,
        }
    }

    fn found(clean: bool, same_boot: bool, checkpoint: u64, dirty: &[u64]) -> DrlFacts {
        DrlFacts::Found {
            clean,
            same_boot,
            checkpoint_seq: checkpoint,
            dirty: dirty.to_vec(),
            behind: false,
        }
    }

    #[test]
    fn a_killed_process_with_deferred_primary_writes_redoes_from_the_checkpoint() {
        let mut drl = found(false, true, 90, &[2]);
        if let DrlFacts::Found { behind, .. } = &mut drl {
            *behind = true;
        }
        let d = decide(&facts(drl, Some((NOW, 80))));
        assert_eq!((d.redo_from, d.compare), (Some(80), vec![2]));
        assert!(d.why.contains("still to be written"), "{}", d.why);
    }

    #[test]
    fn a_clean_stop_needs_nothing() {
        let d = decide(&facts(found(true, true, 90, &[]), None));
        assert_eq!((d.redo_from, d.compare), (None, vec![]));
        let d = decide(&facts(DrlFacts::Missing, None));
        assert_eq!((d.redo_from, d.compare), (None, vec![]));
    }

    #[test]
    fn a_killed_process_compares_the_dirty_regions() {
        let d = decide(&facts(found(false, true, 90, &[2]), Some((NOW, 80))));
        assert_eq!((d.redo_from, d.compare), (None, vec![2]));
    }

    #[test]
    fn a_machine_crash_redoes_from_the_older_checkpoint() {
        let d = decide(&facts(found(false, false, 90, &[1]), Some((BEFORE, 80))));
        assert_eq!((d.redo_from, d.compare), (Some(80), vec![1]));
        // The log never reaches past its newest record.
        let d = decide(&facts(found(false, false, 500, &[]), None));
        assert_eq!(d.redo_from, Some(100));
    }

    #[test]
    fn a_lost_or_damaged_log_after_an_unclean_stop_never_trusts_a_stale_primary() {
        for drl in [DrlFacts::Missing, DrlFacts::Damaged] {
            // Another boot: redo from the manifest's checkpoint, and compare everything.
            let d = decide(&facts(drl.clone(), Some((BEFORE, 70))));
            assert_eq!((d.redo_from, d.compare), (Some(70), vec![0, 1, 2, 3]));
            // The same boot (a killed process): the primary may still lack writes that were
            // deferred (the log that said so is gone): redo too, and compare everything.
            let d = decide(&facts(drl, Some((NOW, 70))));
            assert_eq!((d.redo_from, d.compare), (Some(70), vec![0, 1, 2, 3]));
        }
        // A log that says "clean, this boot" is outvoted by a manifest written in another
        // boot (the log was copied or moved back).
        let d = decide(&facts(found(true, true, 90, &[]), Some((BEFORE, 60))));
        assert_eq!(d.redo_from, Some(60));
    }
}
