//! Sealing an interval, off the write path.
//!
//! A seal has two halves:
//!
//! - **The switch**, under the vault lock, in the caller's thread (a host write whose
//!   policy says the interval is due, `seal()`, a snapshot): the open segment's last
//!   records go to the file, its padding is cut, it is made durable (fdatasync), and the
//!   next segment is created (durably) and becomes the open one. Host writes go on into it.
//!   The sealed-to-be segment moves to the *sealing slot* ([`Sealing`]) with its records,
//!   markers and present map.
//! - **The job**, on a thread of its own (one in flight at a time): builds the interval's
//!   delta map from the present map, writes it and commits the manifest that lists the
//!   segment and the map and names the next segment as the open one. Whoever next takes the
//!   vault lock after the job ended applies its outcome ([`Vault::reap_seal`]): the
//!   manifest, the loaded map, and the slot emptied.
//!
//! Until the commit lands, reads consult the slot between the open segment and the sealed
//! maps: points in the sealing interval replay its records, points after it replay its
//! records and the open segment's.
//!
//! A power cut between the switch and the commit leaves the old manifest, which names the
//! sealing segment as the open one, and the next segment after it. Opening recovers that
//! chain (see `open_with`): the first segment, when the second continues it (its first seq
//! follows the first's last record), goes back to the sealing slot and its seal is done
//! again; a later segment that does not continue it is a leftover and removed.
//!
//! A job that fails before its commit's rename (a full disk for the map) leaves the
//! interval in the slot, its map built: the seal is tried again later (after
//! [`SEAL_RETRY`] for a policy seal, at once for `seal()`), and meanwhile nothing is lost
//! (the segment is durable, the next opener seals it). One that fails after the rename
//! poisons the vault, as any commit does.

use std::sync::Arc;
use std::thread::JoinHandle;

use super::*;
use crate::fsutil::FileRef;
use crate::write_log::present::PresentMap;

/// How long a seal the policy asked for waits after a failure before it is tried again.
pub(super) const SEAL_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// An interval whose segment is closed and durable but whose manifest commit has not
/// landed (it is running, or failed and waits to be tried again).
#[derive(Debug)]
pub(super) struct Sealing {
    /// The closed segment: its records, markers and (until the job takes it) present map.
    pub seg: OpenSegment,
    pub interval: Interval,
    /// The map a failed job built (a retry only writes it).
    map: Option<Arc<DeltaMap>>,
    /// The job, while nobody has joined it yet.
    job: Option<JoinHandle<Outcome>>,
    /// A job is in flight (started and its outcome not applied yet).
    pub running: bool,
    /// The closed segment and the creation of the one after it are durable (a job or a
    /// flush synced them); until then a flush syncs them first.
    pub durable: bool,
    /// Every sync of the closed segment goes through it (the job's, a flush's).
    pub gate: Arc<SyncGate>,
}

/// Serializes the syncs of a closed segment and remembers a failed one: after a failed
/// fsync the page cache may have dropped the data (see "fsyncgate"), so a later sync that
/// succeeds proves nothing, and the seal job must not commit a manifest that names the
/// segment's length. Without it, a flush whose sync failed (and poisoned the vault) could
/// be followed by the job's successful sync and commit.
#[derive(Debug, Default)]
pub(super) struct SyncGate(std::sync::Mutex<Option<bool>>);

impl SyncGate {
    /// Runs `sync` unless one failed before; a failure is remembered, and whether it was
    /// for lack of space (a host's flush that meets it later is ENOSPC to the host too,
    /// whichever of the sealer and the flush synced first).
    pub(super) fn sync(&self, sync: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut failed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(no_space) = *failed {
            return Err(VaultError::Poisoned { no_space });
        }
        let r = sync();
        if let Err(e) = &r {
            *failed = Some(e.is_no_space());
        }
        r
    }
}

impl Sealing {
    /// A segment recovered as closed (a power cut fell between its switch and its commit).
    pub(super) fn recovered(seg: OpenSegment) -> Option<Sealing> {
        let (first, last) = (*seg.records.first()?, *seg.records.last()?);
        Some(Sealing {
            seg,
            interval: interval_of(&first, &last),
            map: None,
            job: None,
            running: false,
            durable: true,
            gate: Arc::default(),
        })
    }

    /// The blocks the interval changed.
    pub(super) fn blocks_changed(&mut self) -> u64 {
        match &self.map {
            Some(m) => m.len() as u64,
            None => self.seg.present.len(),
        }
    }
}

fn interval_of(first: &RecordMeta, last: &RecordMeta) -> Interval {
    Interval {
        seq_from: first.seq,
        seq_to: last.seq,
        time_from_ns: first.timestamp_ns,
        time_to_ns: last.timestamp_ns,
    }
}

/// What the job builds the delta map from.
enum Source {
    Present(crate::write_log::present::PresentMap),
    Built(Arc<DeltaMap>),
}

/// Everything the job needs: it touches no vault state, only files.
struct Job {
    fs: Arc<dyn Storage>,
    dir: PathBuf,
    maps_dir: PathBuf,
    /// The manifest to extend (no other manifest edit runs while a job is in flight: see
    /// [`Vault::lock_for_edit`]).
    base: Manifest,
    segment: SegmentEntry,
    interval: Interval,
    snapshots: Vec<SnapshotEntry>,
    source: Source,
    /// What to make durable before the commit: the closed segment, the next one's file
    /// (its header) and their directory (its entry). `None`: already durable.
    sync: Option<(FileRef, PathBuf, FileRef, PathBuf, Arc<SyncGate>)>,
}

#[derive(Debug)]
struct Outcome {
    map: Arc<DeltaMap>,
    /// The closed segment and the next one's creation are durable.
    synced: bool,
    result: std::result::Result<Manifest, fsutil::AtomicWriteError>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("interval", &self.interval)
            .finish()
    }
}

impl Job {
    fn run(self) -> Outcome {
        let map = match self.source {
            Source::Present(mut p) => Arc::new(p.delta_map(self.interval)),
            Source::Built(m) => m,
        };
        let fs = self.fs.as_ref();
        let map_path = self.maps_dir.join(names::delta_map(
            self.interval.seq_from,
            self.interval.seq_to,
        ));
        // Until the manifest names it, a map file is a leftover that reopening removes
        // (see `remove_leftovers`); a failed write takes its space back at once.
        if let Err(e) = fsutil::write_atomic(fs, &map_path, &map.encode()) {
            let _ = fs.remove(&map_path);
            return Outcome {
                map,
                synced: self.sync.is_none(),
                result: Err(fsutil::AtomicWriteError::Before(e)),
            };
        }
        // The switch did not sync (that would stall host writes): the closed segment's
        // records and the next segment's creation are made durable before the manifest
        // that names them. A failed sync poisons, as a flush's does.
        if let Some((closed, closed_path, next, log_dir, gate)) = &self.sync {
            let synced = gate
                .sync(|| closed.sync_data().io("fdatasync", closed_path))
                .and_then(|()| next.sync_data().io("fdatasync", log_dir))
                .and_then(|()| fsutil::sync_dir(fs, log_dir));
            if let Err(e) = synced {
                return Outcome {
                    map,
                    synced: false,
                    result: Err(fsutil::AtomicWriteError::After(e)),
                };
            }
        }
        let mut m = self.base;
        m.generation = Generation(m.generation.0 + 1);
        m.segments.push(self.segment);
        m.maps.push(MapEntry {
            interval: self.interval,
            flags: 0,
            retention_class: 0,
            blocks_changed: map.len() as u64,
        });
        m.snapshots.extend(self.snapshots);
        m.next_seq = self.interval.seq_to.next();
        let result = match manifest_store::commit_staged(fs, &self.dir, &m) {
            Ok(()) => Ok(m),
            Err(e @ fsutil::AtomicWriteError::Before(_)) => {
                let _ = fs.remove(&map_path);
                Err(e)
            }
            Err(e) => Err(e),
        };
        Outcome {
            map,
            synced: true,
            result,
        }
    }
}

impl Vault {
    /// Whether a seal the policy asks for can start now: the open interval is due, or a
    /// failed seal waits to be tried again (first); never while one is in flight.
    pub(super) fn policy_wants_seal(&self, inner: &Inner) -> bool {
        match &inner.sealing {
            Some(s) => !s.running,
            None => Self::open_is_due(inner),
        }
    }

    /// Whether the open interval is due for a seal by the policy.
    fn open_is_due(inner: &Inner) -> bool {
        let p = inner.manifest.seal;
        let o = &inner.open;
        let Some(first) = o.records.first() else {
            return false;
        };
        (p.bytes > 0 && o.len() >= p.bytes)
            || (p.writes > 0 && o.records.len() as u64 >= p.writes)
            || (p.interval_ns > 0
                && inner.last_ts.saturating_sub(first.timestamp_ns) as u64 >= p.interval_ns)
    }

    /// After a host write: starts the seal the policy asks for, if it does. A seal that
    /// fails is reported in the log and tried again later, never failing the write, whose
    /// records are appended. The open interval due while a seal is still in flight waits
    /// for that one (without the lock), so that intervals end where the policy says and no
    /// more than one closed interval waits for its commit.
    pub(super) fn seal_if_due<'a>(&'a self, mut inner: MutexGuard<'a, Inner>) {
        if inner.sealing.as_ref().is_some_and(|s| s.running) && Self::open_is_due(&inner) {
            inner = self.wait_for_seal(inner).0;
        }
        if self.policy_wants_seal(&inner) {
            let _ = self.policy_seal(&mut inner);
        }
    }

    /// Seals the open interval if the time policy says it is due, and waits for that seal
    /// (or a seal in flight) to be committed. Call it now and then when writes are idle.
    pub fn tick(&self) -> Result<Option<IntervalInfo>> {
        let mut inner = self.lock_writable()?;
        inner.last_ts = inner.last_ts.max(now_ns());
        if !self.policy_wants_seal(&inner) && !inner.sealing.as_ref().is_some_and(|s| s.running) {
            return Ok(None);
        }
        self.policy_seal(&mut inner)?;
        let (_inner, done) = self.wait_for_seal(inner);
        done.unwrap_or(Ok(None))
    }

    /// Starts a seal the policy asked for (it runs in the background; its outcome is
    /// applied by whoever next takes the lock). One whose job failed (a full disk) leaves
    /// the interval in the sealing slot and is not tried again for [`SEAL_RETRY`]; the log
    /// says so once, and again when a seal works. Returns the error of a switch that
    /// failed (nothing changed then).
    pub(super) fn policy_seal(&self, inner: &mut Inner) -> Result<()> {
        if inner.sealing.as_ref().is_some_and(|s| s.running)
            || inner
                .seal_failed
                .is_some_and(|(at, _)| at.elapsed() < SEAL_RETRY)
        {
            return Ok(());
        }
        if let Err(e) = self.start_seal(inner) {
            self.seal_failure(inner, &e);
            return Err(e);
        }
        Ok(())
    }

    fn seal_failure(&self, inner: &mut Inner, e: &VaultError) {
        let n = inner.seal_failed.map_or(0, |(_, n)| n) + 1;
        if n == 1 {
            tracing::warn!(error = %e, retry_seconds = SEAL_RETRY.as_secs(), "sealing the interval failed; its records are kept, the interval stays unsealed and the seal is tried again");
        }
        inner.seal_failed = Some((std::time::Instant::now(), n));
    }

    /// Seals the open interval now: makes it durable, starts a new segment, writes the
    /// delta map and commits a new manifest, and returns once that commit landed. A seal
    /// in flight is waited for first, and one that failed earlier is tried again first.
    /// Nothing to seal: `None`.
    pub fn seal(&self) -> Result<Option<IntervalInfo>> {
        let inner = self.lock_writable()?;
        self.seal_wait(inner).1
    }

    /// [`Vault::seal`] with the lock held on entry and on return (it is let go while the
    /// job runs).
    pub(super) fn seal_wait<'a>(
        &'a self,
        inner: MutexGuard<'a, Inner>,
    ) -> (MutexGuard<'a, Inner>, Result<Option<IntervalInfo>>) {
        let (mut inner, _) = self.wait_for_seal(inner);
        let mut pending = None;
        if inner.sealing.is_some() {
            let (g, retried) = self.seal_step(inner);
            inner = g;
            match retried {
                Ok(info) => pending = info,
                Err(e) => return (inner, Err(e)),
            }
        }
        let (inner, open) = self.seal_step(inner);
        (inner, open.map(|info| info.or(pending)))
    }

    /// One seal, waited for: the one in the sealing slot if there is one (a seal in flight
    /// is waited for first), else the open interval's.
    pub(super) fn seal_step<'a>(
        &'a self,
        inner: MutexGuard<'a, Inner>,
    ) -> (MutexGuard<'a, Inner>, Result<Option<IntervalInfo>>) {
        let (mut inner, _) = self.wait_for_seal(inner);
        if inner.poisoned {
            let e = inner.poisoned_error();
            return (inner, Err(e));
        }
        match self.start_seal(&mut inner) {
            Ok(true) => {}
            Ok(false) => return (inner, Ok(None)),
            Err(e) => return (inner, Err(e)),
        }
        let (inner, done) = self.wait_for_seal(inner);
        (inner, done.unwrap_or(Ok(None)))
    }

    /// Starts the job of the interval in the sealing slot (one that failed or was
    /// recovered) or, with the slot empty, switches segments and starts the open
    /// interval's. `false`: nothing to seal (or a job is in flight already).
    fn start_seal(&self, inner: &mut Inner) -> Result<bool> {
        if inner.sealing.as_ref().is_some_and(|s| s.running) {
            return Ok(false);
        }
        if inner.sealing.is_none() && !self.switch_segments(inner)? {
            return Ok(false);
        }
        let base = inner.manifest.clone();
        let next_file = inner.open.file();
        let Some(s) = inner.sealing.as_mut() else {
            return Ok(false);
        };
        let source = match &s.map {
            Some(m) => Source::Built(m.clone()),
            None => Source::Present(std::mem::replace(
                &mut s.seg.present,
                PresentMap::new(self.shared.block_size),
            )),
        };
        let job = Job {
            fs: self.fs.clone(),
            dir: self.dir.clone(),
            maps_dir: self.shared.maps_dir.clone(),
            base,
            segment: SegmentEntry {
                id: s.seg.id,
                last_seq: s.interval.seq_to,
                length: s.seg.written,
                time_from_ns: s.interval.time_from_ns,
                time_to_ns: s.interval.time_to_ns,
            },
            interval: s.interval,
            snapshots: s
                .seg
                .markers
                .iter()
                .map(ScannedMarker::to_snapshot)
                .collect(),
            source,
            sync: (!s.durable).then(|| {
                (
                    s.seg.file(),
                    s.seg.path.clone(),
                    next_file,
                    self.dir.join(names::LOG_DIR),
                    s.gate.clone(),
                )
            }),
        };
        let run: Box<dyn FnOnce() -> Outcome + Send> =
            if self.seal_inline.load(std::sync::atomic::Ordering::Relaxed) {
                // The whole job under the lock; the thread only hands its outcome over.
                let outcome = job.run();
                Box::new(move || outcome)
            } else {
                Box::new(move || job.run())
            };
        let handle = std::thread::Builder::new()
            .name("rewind-seal".into())
            .spawn(run)
            .io("start the sealer thread for", &self.dir)?;
        s.job = Some(handle);
        s.running = true;
        Ok(true)
    }

    /// Makes every seal run to its commit under the vault lock, as sealing did before the
    /// background sealer: for benchmarks that measure what the sealer saves.
    #[doc(hidden)]
    pub fn set_seal_inline(&self, inline: bool) {
        self.seal_inline
            .store(inline, std::sync::atomic::Ordering::Relaxed);
    }

    /// The switch: closes the open segment (durably) and opens the next one; the closed
    /// one goes to the sealing slot. `false`: the open segment holds no record.
    fn switch_segments(&self, inner: &mut Inner) -> Result<bool> {
        let (Some(first), Some(last)) = (
            inner.open.records.first().copied(),
            inner.open.records.last().copied(),
        ) else {
            return Ok(false);
        };
        // The last buffered records go to the log writer, which is waited for (up to its
        // whole queue, ~16 MiB: the longest part of a switch under a stream of large
        // writes); a failure here changes nothing and the interval stays open.
        inner.open.finish()?;
        // Nothing is synced here: the job (or a flush that comes first) makes the closed
        // segment and the next one's creation durable. A power cut before that may cut
        // the closed segment; the next one then does not continue it and is a leftover,
        // its records never promised (see the module comment).
        let log_dir = self.dir.join(names::LOG_DIR);
        let next_id = SegmentId(last.seq.next());
        let next = match OpenSegment::create_unsynced(
            self.fs(),
            &log_dir,
            next_id,
            self.shared.block_size,
            inner.manifest.vault_id,
            self.log_writer.as_ref(),
        ) {
            Ok(seg) => seg,
            Err(e) => {
                let _ = self.fs().remove(&log_dir.join(names::segment(next_id)));
                return Err(e);
            }
        };
        inner.durable_bytes = next.written;
        let closed = std::mem::replace(&mut inner.open, next);
        inner.sealing = Some(Sealing {
            seg: closed,
            interval: interval_of(&first, &last),
            map: None,
            job: None,
            running: false,
            durable: false,
            gate: Arc::default(),
        });
        Ok(true)
    }

    /// Waits (without the lock) until no seal is in flight; the outcome of the job this
    /// thread joined, if it joined one (another thread may have, and applied it).
    pub(super) fn wait_for_seal<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
    ) -> (MutexGuard<'a, Inner>, Option<Result<Option<IntervalInfo>>>) {
        loop {
            let Some(s) = inner.sealing.as_mut().filter(|s| s.running) else {
                return (inner, None);
            };
            match s.job.take() {
                Some(job) => {
                    drop(inner);
                    let outcome = job.join();
                    inner = self.lock_raw();
                    let done = self.apply_seal(&mut inner, outcome);
                    return (inner, Some(done));
                }
                None => {
                    inner = self
                        .seal_done
                        .wait(inner)
                        .unwrap_or_else(|p| p.into_inner())
                }
            }
        }
    }

    /// Applies the outcome of a job that has ended, if one has (called on taking the lock).
    pub(super) fn reap_seal(&self, inner: &mut Inner) {
        let Some(s) = inner.sealing.as_mut() else {
            return;
        };
        if !s.job.as_ref().is_some_and(|j| j.is_finished()) {
            return;
        }
        if let Some(job) = s.job.take() {
            // A policy seal's failure is in the log and tried again later.
            let _ = self.apply_seal(inner, job.join());
        }
    }

    /// Applies a job's outcome: the committed manifest, or the failure. Wakes waiters.
    fn apply_seal(
        &self,
        inner: &mut Inner,
        outcome: std::thread::Result<Outcome>,
    ) -> Result<Option<IntervalInfo>> {
        self.seal_done.notify_all();
        let Some(s) = inner.sealing.as_mut() else {
            return Ok(None);
        };
        s.running = false;
        let Ok(outcome) = outcome else {
            // The job panicked: its present map is gone with it. The segment is durable
            // and the next opener seals it; until then nothing more is promised.
            let e = VaultError::Poisoned { no_space: false };
            inner.poison(&e);
            tracing::error!(
                "the sealer thread panicked; the vault refuses writes until it is reopened"
            );
            return Err(e);
        };
        s.map = Some(outcome.map.clone());
        if outcome.synced {
            s.durable = true;
            let last = s.interval.seq_to;
            inner.durable_seq = inner.durable_seq.max(last);
        }
        match outcome.result {
            Ok(m) => {
                let Some(mut s) = inner.sealing.take() else {
                    return Ok(None);
                };
                inner.manifest = m;
                self.shared.insert(outcome.map.clone());
                if let Some((_, n)) = inner.seal_failed.take() {
                    tracing::warn!(failed_tries = n, "sealing works again");
                }
                let blocks_changed = outcome.map.len() as u64;
                tracing::debug!(from = %s.interval.seq_from, to = %s.interval.seq_to, blocks = blocks_changed, "sealed interval");
                s.seg.present = PresentMap::new(self.shared.block_size);
                Ok(Some(IntervalInfo {
                    seq_from: s.interval.seq_from,
                    seq_to: s.interval.seq_to,
                    time_from_ns: s.interval.time_from_ns,
                    time_to_ns: s.interval.time_to_ns,
                    blocks_changed,
                    log_bytes: s.seg.written - SEG_HEADER_LEN as u64,
                    sealed: true,
                    flags: 0,
                }))
            }
            Err(fsutil::AtomicWriteError::Before(e)) => {
                self.seal_failure(inner, &e);
                Err(e)
            }
            Err(fsutil::AtomicWriteError::After(e)) => {
                inner.poison(&e);
                Err(e)
            }
        }
    }

    /// The lock, once no seal is in flight: for an edit of the manifest (a job extends the
    /// manifest it started from, so no other commit may come between).
    pub(super) fn lock_for_edit(&self) -> Result<MutexGuard<'_, Inner>> {
        let inner = self.lock_writable()?;
        let (inner, _) = self.wait_for_seal(inner);
        if inner.poisoned {
            return Err(inner.poisoned_error());
        }
        Ok(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_gate_remembers_that_its_failure_was_for_lack_of_space() {
        let full = || {
            Err(VaultError::Io {
                op: "fdatasync",
                path: PathBuf::from("seg"),
                source: std::io::Error::from(std::io::ErrorKind::StorageFull),
            })
        };
        let g = SyncGate::default();
        assert!(g.sync(full).is_err());
        // Whoever comes next (a host's flush after the sealer's sync) hears ENOSPC too.
        let again = g.sync(|| Ok(()));
        assert!(
            matches!(again, Err(VaultError::Poisoned { no_space: true })),
            "{again:?}"
        );
        let g = SyncGate::default();
        assert!(g.sync(|| Ok(())).is_ok());
    }
}
