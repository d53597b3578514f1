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
