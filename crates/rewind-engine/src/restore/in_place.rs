//! In-place restore: bring the primary itself back to a point by copying only the blocks
//! changed since ([`plan_in_place`], [`execute_in_place`]), crash-safe and resumable.
//!
//! The steps, each made durable before the next:
//! 1. an intent in the manifest (target point, undo snapshot name): from here on every
//!    opener knows the primary may be part way between two points;
//! 2. the undo snapshot: the state before the restore, kept as a marker (taken only if it
//!    does not exist yet: a resumed restore keeps the one of the first attempt);
//! 3. the copy: every block some record after the target changed is written back through
//!    the intercept layer (journaled like any write, so the vault's newest point follows
//!    the primary and the restore can itself be undone);
//! 4. flush the log, sync the primary, remove the intent.
//!
//! Interrupted anywhere (Ctrl-C, kill -9, power cut), the intent stays. The next
//! `restore --in-place` (to the same or another point), `restore --in-place --resume` or
//! `rewind serve` ([`resume_in_place`]) first repairs the regions the dirty region log lists
//! (writes the primary has and the vault lost: the interrupted copy's, or a host's from
//! before it), then copies again every block changed since the target: once the repair is
//! done the vault knows every block the primary holds, so that set holds every block the
//! interrupted copy touched; copying a block twice writes the same data.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use rewind_vault::{
    now_ns, Point, PointView, Progress, ResolvedPoint, RestoreInPlace, SuspectEntry,
};

use super::{RestoreError, RestoreReport, Result, CHUNK_BLOCKS};
use crate::intercept::{InterceptError, LiveVolume};

/// Threads that copy blocks back (reads in flight at once).
const RESTORE_WORKERS: usize = 16;

/// What an in-place restore will do.
#[derive(Debug, Clone)]
pub struct InPlacePlan {
    pub point: ResolvedPoint,
    /// The point as the user wrote it.
    pub asked: String,
    pub primary: std::path::PathBuf,
    /// Runs of blocks changed since the point: (first block, count).
    pub runs: Vec<(u64, u64)>,
    /// Blocks to copy back.
    pub blocks: u64,
    pub block_size: u32,
    /// The snapshot that keeps the state before the restore (the one of an interrupted
    /// restore when this one finishes or supersedes it).
    pub undo_snapshot: String,
    /// An interrupted in-place restore this one finishes (same point) or supersedes.
    pub interrupted: Option<RestoreInPlace>,
    /// Suspect blocks the point reads (see [`super::RestorePlan::suspect`]).
    pub suspect: Vec<SuspectEntry>,
}

impl InPlacePlan {
    /// Whether this restore finishes an interrupted one at the same point.
    pub fn resumes(&self) -> bool {
        self.interrupted
            .as_ref()
            .is_some_and(|r| r.target_seq == self.point.seq)
    }
}

/// Plans bringing the primary back to `point`: only the blocks some record after the
/// point changed are copied.
pub fn plan_in_place(volume: &LiveVolume, point: &Point) -> Result<(InPlacePlan, PointView)> {
    let vault = volume.vault();
    let t = Instant::now();
    // Its reads are the changed blocks, each once: probing the maps costs less than
    // indexing the chain.
    let view = vault.view(point)?.without_chain_index();
    let view_us = t.elapsed().as_micros() as u64;
    let t = Instant::now();
    let runs = vault.changed_since(view.point().seq)?;
    let changed_us = t.elapsed().as_micros() as u64;
    let interrupted = vault.restore_intent();
    let undo_snapshot = match &interrupted {
        Some(r) => r.undo_snapshot.clone(),
        // Named after the state it keeps: the same name means nothing changed since.
        None => format!("undo-restore-at-seq-{}", vault.info().newest_seq),
    };
    let t = Instant::now();
    let suspect = vault.suspect_reads(&view)?;
    tracing::debug!(
        view_us,
        changed_us,
        suspect_us = t.elapsed().as_micros() as u64,
        runs = runs.len(),
        "in-place restore: plan phases"
    );
    let plan = InPlacePlan {
        point: view.point(),
        asked: point.to_string(),
        primary: volume.primary_path().to_path_buf(),
        blocks: runs.iter().map(|r| r.1).sum(),
        runs,
        block_size: view.block_size(),
        undo_snapshot,
        interrupted,
        suspect,
    };
    Ok((plan, view))
}

/// Finishes an interrupted in-place restore, if the vault records one: brings the primary
/// to exactly the point that restore asked for. `Ok(None)`: nothing was under way.
pub fn resume_in_place(
    volume: &LiveVolume,
    progress: &dyn Progress,
    cancel: Option<&AtomicBool>,
) -> Result<Option<(InPlacePlan, RestoreReport)>> {
    let Some(r) = volume.vault().restore_intent() else {
        return Ok(None);
    };
    let (mut plan, view) = plan_in_place(volume, &Point::Seq(r.target_seq))?;
    plan.asked = r.point.clone();
    let report = execute_in_place(&plan, &view, volume, progress, cancel)?;
    Ok(Some((plan, report)))
}

/// Carries out an in-place restore (see the module doc for the steps). `cancel`, when set,
/// stops the copy between pieces: the intent stays and the error says how to go on.
pub fn execute_in_place(
    plan: &InPlacePlan,
    view: &PointView,
    volume: &LiveVolume,
    progress: &dyn Progress,
    cancel: Option<&AtomicBool>,
) -> Result<RestoreReport> {
    let start = Instant::now();
    let vault = volume.vault();
    if !volume.unclean_regions().is_empty() {
        // Until the vault knows every block the primary holds, "changed since the point"
        // misses some (see the module doc). The plan is made again after it.
        crate::recovery::repair_dirty(volume, progress, &mut |_, _| {})
            .map_err(|e| RestoreError::Recovery(Box::new(e)))?;
        let (again, view) = plan_in_place(volume, &Point::Seq(plan.point.seq))?;
        let again = InPlacePlan {
            asked: plan.asked.clone(),
            ..again
        };
        return execute_in_place(&again, &view, volume, progress, cancel);
    }
    if plan.blocks == 0 && plan.interrupted.is_none() {
        return Ok(RestoreReport {
            bytes_written: 0,
            holes: 0,
            elapsed: start.elapsed(),
            unreadable: Vec::new(),
        });
    }
    let mut phase = Phases::new();
    vault.begin_restore(RestoreInPlace {
        target_seq: plan.point.seq,
        target_time_ns: plan.point.time_ns,
        started_ns: plan
            .interrupted
            .as_ref()
            .map_or_else(now_ns, |r| r.started_ns),
        undo_snapshot: plan.undo_snapshot.clone(),
        point: plan.asked.clone(),
    })?;
    phase.done("begin_restore");
    if !vault
        .snapshots()
        .iter()
        .any(|s| s.name == plan.undo_snapshot)
    {
        // Nothing was copied yet (the snapshot comes before the copy): the state now is
        // the one before the restore.
        volume.flush()?;
        phase.done("flush before the undo snapshot");
        vault.snapshot(&plan.undo_snapshot, false)?;
        phase.done("undo snapshot");
    }
    let written = copy_back(plan, view, volume, progress, cancel, &mut phase)?;
    volume.flush()?;
    phase.done("flush");
    volume.checkpoint()?;
    phase.done("checkpoint");
    vault.end_restore()?;
    phase.done("end_restore");
    progress.finish();
    tracing::debug!(
        ms = start.elapsed().as_millis() as u64,
        bytes = written,
        blocks = plan.blocks,
        "in-place restore done"
    );
    Ok(RestoreReport {
        bytes_written: written,
        holes: 0,
        elapsed: start.elapsed(),
        unreadable: Vec::new(),
    })
}

/// Copies every block of `plan.runs` from the point back into the primary, through the
/// intercept layer, on several threads. Returns the bytes written.
fn copy_back(
    plan: &InPlacePlan,
    view: &PointView,
    volume: &LiveVolume,
    progress: &dyn Progress,
    cancel: Option<&AtomicBool>,
    phase: &mut Phases,
) -> Result<u64> {
    let bs = u64::from(plan.block_size);
    let ranges: Vec<(u64, u64)> = plan.runs.iter().map(|&(b, n)| (b * bs, n * bs)).collect();
    volume
        .drl()
        .premark(&ranges)
        .map_err(InterceptError::from)?;
    phase.done("drl premark");
    view.prefetch(&plan.runs)?;
    phase.done("prefetch");
    progress.start("restoring in place", plan.blocks * bs);
    // Pieces of at most CHUNK_BLOCKS, copied by several workers at once: the changed
    // blocks are scattered through the write log, so reading them one after another
    // would wait for the disk once per block.
    let pieces: Vec<(u64, u64)> = plan
        .runs
        .iter()
        .flat_map(|&(first, count)| {
            (first..first + count)
                .step_by(CHUNK_BLOCKS as usize)
                .map(move |b| (b, (first + count - b).min(CHUNK_BLOCKS)))
        })
        .collect();
    let next = AtomicUsize::new(0);
    let written = AtomicU64::new(0);
    let stopped = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    // Tests only: slow the copy down so that it can be interrupted part way.
    let delay = std::env::var("REWIND_TEST_COPY_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis);
    let workers = RESTORE_WORKERS.min(pieces.len()).max(1);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut buf = vec![0u8; (CHUNK_BLOCKS * bs) as usize];
                    loop {
                        if stopped() {
                            return Ok(());
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(b, n)) = pieces.get(i) else {
                            return Ok(());
                        };
                        if let Some(d) = delay {
                            std::thread::sleep(d);
                        }
                        let chunk = &mut buf[..(n * bs) as usize];
                        view.read_into(b, chunk)?;
                        // The primary itself is what is restored: never behind the log.
                        volume.write_through(b * bs, chunk, false)?;
                        written.fetch_add(n * bs, Ordering::Relaxed);
                        progress.advance(n * bs);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(RestoreError::WorkerPanicked)))
            .collect()
    });
    for r in results {
        r?;
    }
    phase.done("copy");
    if stopped() {
        // What was copied is journaled; the intent says what is left.
        volume.flush()?;
        return Err(RestoreError::Interrupted {
            target_seq: plan.point.seq,
            undo_snapshot: plan.undo_snapshot.clone(),
            copied: written.load(Ordering::Relaxed),
            total: plan.blocks * bs,
        });
    }
    Ok(written.into_inner())
}

/// Times the phases of an in-place restore, each logged (debug) as it ends.
struct Phases {
    last: Instant,
}

impl Phases {
    fn new() -> Phases {
        Phases {
            last: Instant::now(),
        }
    }

    /// Logs how long the phase that just ended took.
    fn done(&mut self, phase: &'static str) {
        let now = Instant::now();
        tracing::debug!(
            phase,
            micros = now.duration_since(self.last).as_micros() as u64,
            "in-place restore: phase done"
        );
        self.last = now;
    }
}
