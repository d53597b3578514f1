//! What `serve` does before it takes clients: finishing an interrupted in-place restore,
//! repairing after an unclean stop; and how its once-a-second upkeep reports errors.

use super::*;
/// An in-place restore that was interrupted left the primary part way between two points:
/// finish it before any client sees that disk.
pub(super) fn finish_interrupted_restore(
    volume: &LiveVolume,
    vault_dir: &Path,
    shutdown: &AtomicBool,
) -> anyhow::Result<()> {
    let Some(r) = volume.vault().restore_intent() else {
        return Ok(());
    };
    eprintln!(
        "An in-place restore to {} (seq {}) was interrupted; finishing it before serving...",
        r.point, r.target_seq
    );
    let done = rewind_engine::restore::resume_in_place(volume, &Bar::new(false), Some(shutdown))
        .with_context(|| {
            format!(
                "cannot finish the interrupted in-place restore; the primary is not served until it is (try `rewind restore --vault {} --in-place --resume`)",
                vault_dir.display()
            )
        })?;
    if let Some((plan, report)) = done {
        eprintln!(
            "Restored {} to {} (seq {}): {} copied in {:.2}s; the state before it is snapshot {}.",
            plan.primary.display(),
            plan.asked,
            plan.point.seq,
            output::bytes(report.bytes_written),
            report.elapsed.as_secs_f64(),
            plan.undo_snapshot
        );
    }
    Ok(())
}

/// An error of work done every second (upkeep, seals): logged when it first happens, then
/// at most once a minute with how often it repeated, and once when it stops, so that a full
/// disk does not fill the log with the same line.
pub(super) struct Repeating {
    what: &'static str,
    failing: Option<(Instant, u64)>,
    logged: Instant,
}

impl Repeating {
    const EVERY: Duration = Duration::from_secs(60);

    pub(super) fn new(what: &'static str) -> Repeating {
        Repeating {
            what,
            failing: None,
            logged: Instant::now(),
        }
    }

    pub(super) fn report<E: std::fmt::Display>(&mut self, r: Result<(), E>) {
        match (r, &mut self.failing) {
            (Ok(()), None) => {}
            (Ok(()), Some((since, n))) => {
                tracing::warn!(
                    what = self.what,
                    failures = *n,
                    seconds = since.elapsed().as_secs(),
                    "works again"
                );
                self.failing = None;
            }
            (Err(e), None) => {
                tracing::error!(error = %e, "{}", self.what);
                self.failing = Some((Instant::now(), 1));
                self.logged = Instant::now();
            }
            (Err(e), Some((since, n))) => {
                *n += 1;
                if self.logged.elapsed() >= Self::EVERY {
                    tracing::error!(error = %e, failures = *n, seconds = since.elapsed().as_secs(), "{} (still)", self.what);
                    self.logged = Instant::now();
                }
            }
        }
    }
}

/// After an unclean stop, before any client connects: compares the regions the dirty
/// region log lists and copies what differs from the primary into the vault (fix-up
/// records), then clears the log. Those differences are writes whose records were lost
/// with the process (never flushed), not damage to history: nothing is marked suspect.
pub(super) fn repair_unclean(volume: &LiveVolume) -> anyhow::Result<()> {
    use rewind_engine::verify::{self, Target, VerifyOptions};
    let dirty = volume.unclean_regions();
    if dirty.is_empty() {
        return Ok(());
    }
    let drl = volume.drl();
    let bytes = (dirty.len() as u64 * drl.region_size()).min(volume.size());
    crate::note!(
        "The last stop was not clean: comparing the {} region(s) ({}) the dirty region log lists...",
        dirty.len(),
        output::bytes(bytes)
    );
    let opts = VerifyOptions {
        only_regions: Some(rewind_engine::drl::covering_regions(
            dirty.iter().copied(),
            drl.region_size(),
            verify::DEFAULT_REGION_SIZE,
            volume.size(),
        )),
        mark_suspect: false,
        ..VerifyOptions::default()
    };
    let r = verify::sync(Target::Live(volume), &opts, &Bar::new(false))
        .context("repairing the dirty regions after an unclean stop")?;
    volume
        .mark_repaired()
        .context("clearing the dirty region log")?;
    crate::note!(
        "Repaired: {} block(s) the primary had and the write log had lost copied into the vault as fix-ups ({:.2}s).",
        r.fixup_blocks,
        r.elapsed.as_secs_f64()
    );
    Ok(())
}
