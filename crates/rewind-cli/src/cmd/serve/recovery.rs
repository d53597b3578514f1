//! What `serve` does before it takes clients (recovery after an unclean stop), and how its
//! once-a-second upkeep reports errors.

use super::*;
/// After an unclean stop, before any client connects (see [`rewind_engine::recovery`]):
/// finishes an interrupted in-place restore (the primary is part way between two points
/// until then) and repairs the regions the dirty region log lists, saying what it does.
pub(super) fn recover(
    volume: &LiveVolume,
    vault_dir: &Path,
    shutdown: &AtomicBool,
) -> anyhow::Result<()> {
    if let Some(r) = volume.vault().restore_intent() {
        crate::note!(
            "An in-place restore to {} (seq {}) was interrupted; finishing it before serving...",
            r.point,
            r.target_seq
        );
    }
    let report = rewind_engine::recovery::recover(
        volume,
        &Bar::new(false),
        Some(shutdown),
        &mut |regions, bytes| {
            crate::note!(
                "The last stop was not clean: comparing the {} region(s) ({}) the dirty region log lists...",
                regions,
                output::bytes(bytes)
            )
        },
    )
    .with_context(|| {
        format!(
            "recovering {} before serving it (the primary is not served until it is; an interrupted in-place restore can also be finished with `rewind restore --vault {} --in-place --resume`)",
            volume.primary_path().display(),
            vault_dir.display()
        )
    })?;
    if let Some((plan, r)) = &report.restore {
        crate::note!(
            "Restored {} to {} (seq {}): {} copied in {:.2}s; the state before it is snapshot {}.",
            plan.primary.display(),
            plan.asked,
            plan.point.seq,
            output::bytes(r.bytes_written),
            r.elapsed.as_secs_f64(),
            plan.undo_snapshot
        );
    }
    if report.regions > 0 {
        crate::note!(
            "Repaired: {} block(s) the primary had and the write log had lost copied into the vault as fix-ups ({:.2}s).",
            report.fixup_blocks,
            report.seconds
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
