//! The intercept layer: every host write goes to the primary and to the vault's write log,
//! in the same order for any one block.
//!
//! Writes are split into whole blocks: an unaligned write reads the partial edge blocks
//! from the primary, patches them and writes whole blocks (read-modify-write). Each write
//! holds the locks of the regions it touches while it writes the primary and appends to
//! the log, so two overlapping writes can never land in one order in the primary and the
//! other in the log. Live reads come from the primary.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use rewind_storage::{Open, StorageFile};
use rewind_vault::{HostOp, Seq, Vault, VaultError};

use crate::drl::{DirtyRegionLog, DrlError};
use roaring::RoaringTreemap;

/// Blocks per lock region.
const REGION_BLOCKS: u64 = 16;
/// Number of lock stripes.
const STRIPES: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InterceptError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Drl(#[from] DrlError),
    #[error("{op} primary {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("primary {path} is {actual} bytes but the vault protects a {expected}-byte volume; is this the right primary?")]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("an earlier flush failed ({0}); nothing written since can be made durable")]
    FlushFailed(String),
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("range {offset}+{len} is outside the {size}-byte volume")]
    OutOfRange { offset: u64, len: u64, size: u64 },
}

type Result<T> = std::result::Result<T, InterceptError>;

impl InterceptError {
    /// Whether the error is a full file system (ENOSPC or EDQUOT), of the primary's or the
    /// vault's: the host should get ENOSPC (qemu's `werror=enospc` pauses the guest), and
    /// the write may succeed once space is freed.
    pub fn is_no_space(&self) -> bool {
        match self {
            InterceptError::NoSpace(_) => true,
            InterceptError::Io { source, .. } => io_no_space(source),
            InterceptError::Vault(v) => v.is_no_space(),
            _ => false,
        }
    }
}

fn io_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// The protected volume: the primary and its vault.
#[derive(Debug)]
pub struct LiveVolume {
    primary: Arc<dyn StorageFile>,
    /// The primary's direct handle, for large aligned writes (see [`crate::direct`]).
    direct: crate::direct::DirectPrimary,
    /// Host writes whose primary write is deferred (see [`crate::behind`]).
    behind: crate::behind::Behind,
    /// Held shared by a deferred write from its flag check until it is listed, and
    /// exclusively by a checkpoint while it decides how far it reaches.
    behind_gate: std::sync::RwLock<()>,
    /// One background apply pass at a time.
    applying: Mutex<()>,
    path: PathBuf,
    vault: Arc<Vault>,
    block_size: u64,
    size: u64,
    stripes: Vec<Mutex<()>>,
    /// Who watches host changes (verify's scan delta map, sync's host change delta map).
    trackers: Mutex<Vec<Weak<ChangeTracker>>>,
    /// `trackers.len()`, read without the lock on the write path.
    tracking: AtomicUsize,
    drl: DirtyRegionLog,
    /// Regions the dirty region log held when the volume was opened: an unclean stop
    /// left them, and they may differ between primary and vault until repaired.
    unclean: Mutex<Vec<u64>>,
    /// Every write whose record seq is at most this is durable in primary and log.
    flushed_seq: AtomicU64,
    /// When the DRL was last given a chance to clear idle regions.
    last_drl_pass: Mutex<std::time::Instant>,
    /// Flushes in progress and done (group commit).
    flushes: Mutex<Flushes>,
    /// When the primary was last synced for a checkpoint.
    last_checkpoint: Mutex<std::time::Instant>,
    /// Since when, and why, the primary's file system refuses writes (no space); read
    /// without the lock on the write path through `primary_full_set`.
    primary_full: Mutex<Option<(std::time::SystemTime, String)>>,
    primary_full_set: std::sync::atomic::AtomicBool,
    flushed: std::sync::Condvar,
}

/// Opens the dirty region log of `vault`. One that is damaged is moved aside
/// (`drl.damaged`) and a new one started: recovery then compares every region if the last
/// stop was not clean (the manifest says so; see [`crate::recovery::decide`]).
fn open_drl(
    vault: &Vault,
    volume_size: u64,
    region_size: u32,
) -> Result<(
    DirtyRegionLog,
    crate::drl::LastStop,
    crate::recovery::DrlFacts,
)> {
    use crate::recovery::DrlFacts;
    let fs = vault.storage().as_ref();
    let open = || {
        DirtyRegionLog::open_on(
            fs,
            vault.dir(),
            volume_size,
            vault.block_size(),
            region_size,
        )
    };
    match open() {
        Ok((drl, last)) => {
            let facts = if last.from_file {
                DrlFacts::Found {
                    clean: last.clean,
                    same_boot: last.same_boot,
                    checkpoint_seq: last.checkpoint_seq,
                    dirty: last.dirty.clone(),
                    behind: last.behind,
                }
            } else {
                DrlFacts::Missing
            };
            Ok((drl, last, facts))
        }
        Err(DrlError::Corrupted { path, source }) => {
            let aside = path.with_file_name("drl.damaged");
            tracing::error!(path = %path.display(), error = %source, aside = %aside.display(), "the dirty region log is damaged; moving it aside and starting a new one");
            fs.rename(&path, &aside).map_err(|e| InterceptError::Io {
                op: "move aside",
                path: path.clone(),
                source: e,
            })?;
            let (drl, last) = open()?;
            Ok((drl, last, DrlFacts::Damaged))
        }
        Err(e) => Err(e.into()),
    }
}

/// Settings of a live volume.
#[derive(Debug, Clone, Copy)]
pub struct LiveOptions {
    /// Bytes per region of a new dirty region log (an existing log keeps its own).
    pub drl_region_size: u32,
    /// Host writes at least this large (block-aligned) have their primary write deferred
    /// (see [`crate::behind`]); `None`: none. [`LiveVolume::open`] takes it from
    /// `REWIND_WRITE_BEHIND` ([`crate::behind::from_env`]: 256 KiB unless told).
    pub write_behind_min: Option<usize>,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            drl_region_size: crate::drl::DEFAULT_REGION_SIZE,
            write_behind_min: Some(crate::behind::DEFAULT_MIN_BYTES),
        }
    }
}

/// The region locks a write holds (see [`LiveVolume::lock`]); dropping it unlocks them.
#[must_use]
enum Locked<'a> {
    One { _guard: MutexGuard<'a, ()> },
    Many { _guards: Vec<MutexGuard<'a, ()>> },
}

/// Whether `every` has passed since `last` (and if so, restarts the clock).
fn due(last: &Mutex<std::time::Instant>, every: std::time::Duration) -> bool {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    if last.elapsed() < every {
        return false;
    }
    *last = std::time::Instant::now();
    true
}

/// Group commit of flushes: callers that arrive while a flush runs share the next one.
#[derive(Debug, Default)]
struct Flushes {
    running: bool,
    started: u64,
    done: u64,
    /// After a failed flush nothing more can be promised.
    failed: Option<String>,
    /// The last flush failed for lack of space (its number and why): the callers it
    /// covered get that error; a later flush may succeed once space is freed.
    no_space: Option<(u64, String)>,
}

/// How often idle regions of the dirty region log are cleared.
const DRL_PASS: std::time::Duration = std::time::Duration::from_secs(5);
/// How often the primary is synced and the checkpoint moved (the records after it are
/// what a crash of the machine makes rewind copy back into the primary).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// Bytes of deferred writes the background applier writes into the primary per step.
const APPLY_BATCH: u64 = 8 << 20;
/// Blocks copied at once by the redo after a machine crash.
const REDO_CHUNK_BLOCKS: u64 = 256;

/// The blocks the host changed (wrote, zeroed or trimmed) while this tracker was alive:
/// verify's scan delta map and sync's host change delta map. A change is recorded while the
/// writer still holds the blocks' region locks, so a reader that takes those locks (see
/// [`LiveVolume::with_blocks_locked`]) either sees the change in the primary after it, or
/// finds it here.
#[derive(Debug, Default)]
pub struct ChangeTracker {
    blocks: Mutex<RoaringTreemap>,
}

impl ChangeTracker {
    /// The blocks changed so far.
    pub fn blocks(&self) -> RoaringTreemap {
        self.blocks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn add(&self, first: u64, end: u64) {
        self.blocks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert_range(first..end);
    }
}

impl LiveVolume {
    /// Opens the primary read-write and checks that it is the volume the vault protects.
    pub fn open(primary: &Path, vault: Arc<Vault>) -> Result<LiveVolume> {
        let opts = LiveOptions {
            write_behind_min: crate::behind::from_env(),
            ..LiveOptions::default()
        };
        Self::open_with(primary, vault, opts)
    }

    /// [`LiveVolume::open`] with settings (tests: a small dirty region size).
    pub fn open_with(primary: &Path, vault: Arc<Vault>, opts: LiveOptions) -> Result<LiveVolume> {
        let io = |op, source| InterceptError::Io {
            op,
            path: primary.to_path_buf(),
            source,
        };
        // Through the vault's storage: the same seam (and, in tests, the same power cuts).
        let file = vault
            .storage()
            .open(primary, Open::write())
            .map_err(|e| io("open", e))?;
        let actual = file.len().map_err(|e| io("size", e))?;
        let expected = vault.blocks() * u64::from(vault.block_size());
        if actual != expected {
            return Err(InterceptError::SizeMismatch {
                path: primary.to_path_buf(),
                expected,
                actual,
            });
        }
        let (drl, last_stop, drl_facts) = open_drl(&vault, expected, opts.drl_region_size)?;
        let decision = crate::recovery::decide(&crate::recovery::Facts {
            drl: drl_facts,
            serving: vault.serving(),
            boot_id: vault.storage().boot_id(),
            newest_seq: vault.newest_seq().0,
            regions: expected.div_ceil(drl.region_size()),
        });
        let volume = LiveVolume {
            drl,
            unclean: Mutex::new(decision.compare.clone()),
            flushed_seq: AtomicU64::new(0),
            last_drl_pass: Mutex::new(std::time::Instant::now()),
            flushes: Mutex::new(Flushes::default()),
            flushed: std::sync::Condvar::new(),
            primary: file,
            direct: crate::direct::DirectPrimary::open(vault.storage().as_ref(), primary),
            behind: crate::behind::Behind::new(
                u64::from(vault.block_size()),
                opts.write_behind_min,
            ),
            behind_gate: std::sync::RwLock::new(()),
            applying: Mutex::new(()),
            path: primary.to_path_buf(),
            block_size: u64::from(vault.block_size()),
            size: expected,
            vault,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            trackers: Mutex::new(Vec::new()),
            tracking: AtomicUsize::new(0),
            last_checkpoint: Mutex::new(std::time::Instant::now()),
            primary_full: Mutex::new(None),
            primary_full_set: std::sync::atomic::AtomicBool::new(false),
        };
        if decision.why != "clean" {
            tracing::warn!(why = decision.why, redo_from = ?decision.redo_from, regions = decision.compare.len(), "recovering after an unclean stop");
        }
        match decision.redo_from {
            Some(from) => volume.redo(Seq(from))?,
            None if last_stop.checkpoint_seq > volume.vault.newest_seq().0 => {
                // Only a damaged log ends before the checkpoint (a checkpoint is taken
                // after a flush): the primary is ahead of the log, there is nothing to
                // bring back from it, and the dirty regions are what to compare. The
                // checkpoint must not stay ahead of the log, or the primary would never be
                // synced again.
                tracing::warn!(
                    checkpoint = last_stop.checkpoint_seq,
                    "the primary's checkpoint is after the end of the write log"
                );
                volume.drl.adopt_boot(volume.vault.newest_seq().0)?;
            }
            None => {}
        }
        // From here on the manifest says a live volume is open in this boot, synced up to
        // the checkpoint: a crash now is recognized whatever becomes of the dirty region log.
        volume.record_serving()?;
        Ok(volume)
    }

    /// Writes the manifest's serving fact: this boot, the primary's checkpoint.
    fn record_serving(&self) -> Result<()> {
        self.vault.set_serving(Some(rewind_vault::Serving {
            boot_id: self.vault.storage().boot_id(),
            checkpoint_seq: Seq(self.drl.checkpoint()),
        }))?;
        Ok(())
    }

    /// After a crash of the machine: the primary may have lost writes that only the write
    /// log made durable (a flush syncs the log; the primary is synced by checkpoints).
    /// Copies every block some record after the checkpoint changed from the vault's newest
    /// point back into the primary, then syncs it.
    fn redo(&self, checkpoint: Seq) -> Result<()> {
        let newest = self.vault.newest_seq();
        let runs = self.vault.changed_since(checkpoint)?;
        let blocks: u64 = runs.iter().map(|r| r.1).sum();
        tracing::warn!(
            checkpoint = %checkpoint,
            blocks,
            "the machine stopped without a clean stop since the last checkpoint: bringing the primary up to date from the write log"
        );
        self.copy_from_vault(&runs, false)?;
        self.primary.sync_data().map_err(self.io("fdatasync"))?;
        // Only now may a restart treat the primary as this boot's (see `adopt_boot`): a
        // redo cut short is done again.
        self.drl.adopt_boot(newest.0)?;
        Ok(())
    }

    /// Writes `runs` of blocks (first, count) into the primary as the vault's newest point
    /// has them. `hosts_write`: hosts may be writing meanwhile: each piece is then copied
    /// under its blocks' region locks and read after they are taken, so that a host write
    /// to the same blocks lands wholly before (and is read) or after (and wins).
    fn copy_from_vault(&self, runs: &[(u64, u64)], hosts_write: bool) -> Result<()> {
        let bs = self.block_size;
        let mut buf = vec![0u8; (REDO_CHUNK_BLOCKS * bs) as usize];
        let once = if hosts_write {
            None
        } else {
            Some(self.vault.view(&rewind_vault::Point::Latest)?)
        };
        for &(first, count) in runs {
            let mut b = first;
            while b < first + count {
                let n = (first + count - b).min(REDO_CHUNK_BLOCKS);
                let chunk = &mut buf[..(n * bs) as usize];
                let _g = hosts_write.then(|| self.lock(b, b + n));
                match &once {
                    Some(view) => view.read_into(b, chunk)?,
                    None => self
                        .vault
                        .view(&rewind_vault::Point::Latest)?
                        .read_into(b, chunk)?,
                }
                self.write_primary(chunk, b * bs)?;
                b += n;
            }
        }
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn block_size(&self) -> u32 {
        self.block_size as u32
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    pub fn primary_path(&self) -> &Path {
        &self.path
    }

    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> InterceptError + '_ {
        move |source| InterceptError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(InterceptError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Locks the regions of blocks first..end, in stripe order (no deadlock).
    fn lock(&self, first: u64, end: u64) -> Locked<'_> {
        let (r0, r1) = (first / REGION_BLOCKS, (end - 1) / REGION_BLOCKS);
        let stripe = |i: usize| self.stripes[i].lock().unwrap_or_else(|p| p.into_inner());
        if r0 == r1 {
            // Most writes: one region, no allocation.
            return Locked::One {
                _guard: stripe((r0 % STRIPES as u64) as usize),
            };
        }
        let mut idx: Vec<usize> = if r1 - r0 + 1 >= STRIPES as u64 {
            (0..STRIPES).collect()
        } else {
            (r0..=r1).map(|r| (r % STRIPES as u64) as usize).collect()
        };
        idx.sort_unstable();
        idx.dedup();
        Locked::Many {
            _guards: idx.into_iter().map(stripe).collect(),
        }
    }

    /// Starts recording the blocks the host changes; recording stops when the tracker is
    /// dropped.
    pub fn track_changes(&self) -> Arc<ChangeTracker> {
        let t = Arc::new(ChangeTracker::default());
        let mut all = self.trackers.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&t));
        self.tracking.store(all.len(), Ordering::Release);
        t
    }

    /// Records a change of blocks first..end in every live tracker. Called with the
    /// blocks' region locks held.
    fn note_change(&self, first: u64, end: u64) {
        if self.tracking.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut all = self.trackers.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| match w.upgrade() {
            Some(t) => {
                t.add(first, end);
                true
            }
            None => false,
        });
        self.tracking.store(all.len(), Ordering::Release);
    }

    /// Runs `f` while holding the region locks of blocks first..end: no host write to
    /// those blocks is between the primary and the write log meanwhile.
    pub fn with_blocks_locked<T>(&self, first: u64, end: u64, f: impl FnOnce() -> T) -> T {
        let _g = self.lock(first, end.max(first + 1));
        f()
    }

    /// Reads live data: from the primary, and where a host write's primary write is
    /// still deferred, from its records.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        // The pieces are looked up before the primary is read: a piece applied meanwhile
        // is in the primary by the time it is no longer listed.
        let pieces = self.behind_pieces(offset, buf.len() as u64);
        self.primary
            .read_exact_at(buf, offset)
            .map_err(self.io("read"))?;
        for p in &pieces {
            self.read_piece(p, offset, buf)?;
        }
        Ok(())
    }

    /// Reads live data from the primary only if it is in the page cache: `Ok(false)` (and
    /// nothing read) when reading would wait for the disk, or read records.
    pub fn read_nowait(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        self.check(offset, buf.len() as u64)?;
        if !self.behind_pieces(offset, buf.len() as u64).is_empty() {
            return Ok(false);
        }
        self.primary
            .read_nowait(buf, offset)
            .map_err(self.io("read"))
    }

    /// The deferred pieces of bytes offset..offset+len.
    fn behind_pieces(&self, offset: u64, len: u64) -> Vec<crate::behind::Piece> {
        if self.behind.is_empty() || len == 0 {
            return Vec::new();
        }
        let bs = self.block_size;
        self.behind.pieces(offset / bs, (offset + len).div_ceil(bs))
    }

    /// Copies what deferred piece `p` holds of the bytes at `offset..` into `buf`.
    fn read_piece(&self, p: &crate::behind::Piece, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bs = self.block_size;
        let mut data = vec![0u8; ((p.end - p.first) * bs) as usize];
        self.piece_data(p, &mut data)?;
        let from = (p.first * bs).max(offset);
        let to = (p.end * bs).min(offset + buf.len() as u64);
        if from < to {
            let src = (from - p.first * bs) as usize;
            let dst = (from - offset) as usize;
            let n = (to - from) as usize;
            buf[dst..dst + n].copy_from_slice(&data[src..src + n]);
        }
        Ok(())
    }

    /// The data of deferred piece `p`: kept in memory until its records are durable, then
    /// read from them.
    fn piece_data(&self, p: &crate::behind::Piece, out: &mut [u8]) -> Result<()> {
        if p.kept
            .as_ref()
            .is_some_and(|k| k.copy(p.first, self.block_size, out))
        {
            return Ok(());
        }
        Ok(self.vault.read_placed(&p.place, p.first, out)?)
    }

    /// After the write log failed (a write or a sync): every deferred write goes into the
    /// primary (from the data kept for it where its records are not durable), its region
    /// dirty for good, so that the primary holds what the host wrote, as a write through
    /// it would, and the next start compares those regions instead of bringing the primary
    /// back from a log that lost them. Best effort: what cannot be written stays listed
    /// (and the next start brings it back from the log).
    fn salvage_behind(&self) {
        if self.behind.is_empty() {
            return;
        }
        let bs = self.block_size;
        for p in self.behind.pick(u64::MAX, false) {
            let (offset, len) = (p.first * bs, (p.end - p.first) * bs);
            let Ok(entered) = self.drl.enter(offset, len) else {
                continue;
            };
            let res = {
                let _g = self.lock(p.first, p.end);
                self.apply_behind_locked(p.first, p.end)
            };
            self.drl.leave(entered, u64::MAX);
            if let Err(e) = res {
                tracing::warn!(error = %e, first_block = p.first, "could not write a deferred write into the primary after the write log failed; the next start brings it back from the log");
            }
        }
        if let Err(e) = self.clear_behind_flag() {
            tracing::warn!(error = %e, "could not clear the dirty region log's flag \"behind\"");
        }
    }

    /// Clears the DRL's flag "behind" if no deferred write is listed: nothing lags behind
    /// the log, so the next start does not bring the primary back from it (which, after a
    /// failed log, would undo what the host read).
    fn clear_behind_flag(&self) -> Result<()> {
        let _gate = self.behind_gate.write().unwrap_or_else(|p| p.into_inner());
        if self.behind.is_empty() && self.drl.is_behind() {
            self.drl.set_checkpoint(self.drl.checkpoint(), true)?;
        }
        Ok(())
    }

    /// Writes the deferred pieces of blocks first..end into the primary and unlists them.
    /// The caller holds the blocks' region locks.
    fn apply_behind_locked(&self, first: u64, end: u64) -> Result<()> {
        for p in self.behind.pieces(first, end) {
            let bs = self.block_size;
            let len = ((p.end - p.first) * bs) as usize;
            let mut raw = vec![0u8; len + crate::direct::ALIGN];
            let at = raw.as_ptr().align_offset(crate::direct::ALIGN);
            let data = &mut raw[at..at + len];
            self.piece_data(&p, data)?;
            self.direct
                .write(&self.primary, p.first * bs, data)
                .map_err(self.io("write"))?;
            self.behind.remove_if_same(&p);
        }
        Ok(())
    }

    /// Writes up to `max_bytes` of deferred host writes into the primary (the background
    /// applier). Returns the bytes written.
    pub fn apply_behind(&self, max_bytes: u64, oldest_first: bool) -> Result<u64> {
        if self.behind.is_empty() {
            return Ok(0);
        }
        let _one = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let bs = self.block_size;
        let mut done = 0;
        for p in self.behind.pick((max_bytes / bs).max(1), oldest_first) {
            let (offset, len) = (p.first * bs, (p.end - p.first) * bs);
            // The primary gets data whose record may not be durable yet: its region is
            // dirty until a flush covers it, as for a host write.
            self.make_room(offset, len)?;
            let entered = self.drl.enter(offset, len)?;
            let res = {
                let _g = self.lock(p.first, p.end);
                self.apply_behind_locked(p.first, p.end)
            };
            self.drl.leave(
                entered,
                res.as_ref().map_or(u64::MAX, |_| self.vault.newest_seq().0),
            );
            // A primary whose file system is full refuses host writes too (they say why).
            self.note_primary_result(&res);
            res?;
            done += len;
        }
        Ok(done)
    }

    /// The background applier's step: applies a batch when the host has been quiet for a
    /// moment, when the list nears its bounds, or when the checkpoint waits on old writes;
    /// returns whether it did anything (the caller sleeps otherwise).
    pub fn apply_behind_step(&self) -> Result<bool> {
        if self.behind.kept_bytes() >= crate::behind::FLUSH_KEPT {
            // The kept data goes once its records are durable.
            self.flush()?;
            return Ok(true);
        }
        if self.behind.is_empty() {
            return Ok(false);
        }
        let quiet = self.behind.quiet_for() >= std::time::Duration::from_millis(20);
        let stuck = self
            .last_checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            > 2 * CHECKPOINT_EVERY;
        let pressed = self.behind.pressed();
        if !(quiet || pressed || stuck) {
            return Ok(false);
        }
        tracing::trace!(
            quiet,
            pressed,
            stuck,
            bytes = self.behind.bytes(),
            "applying deferred writes"
        );
        Ok(self.apply_behind(APPLY_BATCH, stuck)? > 0)
    }

    /// Writes every deferred host write into the primary.
    pub fn apply_all_behind(&self) -> Result<()> {
        while !self.behind.is_empty() {
            self.apply_behind(u64::MAX, false)?;
        }
        Ok(())
    }

    /// Whether the primary has bytes offset..offset+len allocated (as far as its file system
    /// says): only such writes are deferred, so that writing them into the primary later
    /// needs no new space, and a full file system under a sparse primary is ENOSPC to the
    /// host's write itself, not to the background. Data when in doubt.
    fn primary_allocated(&self, offset: u64, len: usize) -> bool {
        match self.primary.next_data(offset, self.size) {
            Ok(Some((data, end))) => data <= offset && end >= offset + len as u64,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Deferred host writes: bytes and runs listed.
    pub fn behind_stats(&self) -> (u64, usize) {
        (self.behind.bytes(), self.behind.runs())
    }

    /// Bytes of deferred host writes kept in memory until their records are durable.
    pub fn behind_kept_bytes(&self) -> u64 {
        self.behind.kept_bytes()
    }

    /// Writes `data` at `offset` to the primary and the write log. With `fua`, the write
    /// is durable in both before this returns.
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        self.write_with(offset, data, fua, true)
    }

    /// [`LiveVolume::write`] that writes the primary at once, never behind the log: an
    /// in-place restore, whose point is the primary itself.
    pub fn write_through(&self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        self.write_with(offset, data, fua, false)
    }

    fn write_with(&self, offset: u64, data: &[u8], fua: bool, may_defer: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.check(offset, data.len() as u64)?;
        if let Err(e) = self.vault.check_room() {
            // A vault that refuses writes may also have lost deferred ones.
            self.salvage_behind();
            return Err(e.into());
        }
        self.behind.note_write();
        if may_defer
            && self.behind.wants(offset, data.len())
            && self.primary_allocated(offset, data.len())
        {
            // The primary is not touched: no region to dirty, unless the write fails (then
            // the log may hold part of it, and the next start compares the region).
            let res = self.write_behind(offset, data);
            if res.is_err() {
                self.salvage_behind();
                // Dirty for good, as a failed write through the primary leaves it.
                if let Ok(e) = self.drl.enter(offset, data.len() as u64) {
                    self.drl.leave(e, u64::MAX);
                }
                self.resync_after_failure(offset, data.len() as u64);
            }
            res?;
            if fua {
                self.flush()?;
            }
            return Ok(());
        }
        self.make_room(offset, data.len() as u64)?;
        let entered = self.drl.enter(offset, data.len() as u64)?;
        let res = self.write_locked(offset, data);
        if res.is_err() {
            self.salvage_behind();
            self.resync_after_failure(offset, data.len() as u64);
        }
        self.note_primary_result(&res);
        // A failed write keeps its region dirty for good: primary and log may differ.
        self.drl
            .leave(entered, res.as_ref().map_or(u64::MAX, |s| s.0));
        res?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Whether a host write of `len` bytes may wait for the disk (it goes to the primary
    /// with direct I/O when its buffer is aligned to [`crate::direct::ALIGN`]): a server
    /// runs it where waiting does not hold up reading the next requests.
    pub fn write_waits(&self, len: usize) -> bool {
        self.direct.wants(len)
    }

    /// After a host write that failed part way (the primary written in part, or the
    /// primary written and the log not): the vault is given what the primary now holds
    /// there, as fix-up records, so that every later point (a snapshot the host takes
    /// next) shows what the host reads, not what the blocks held before. If that fails
    /// too, the region stays dirty and the next start compares it.
    fn resync_after_failure(&self, offset: u64, len: u64) {
        let bs = self.block_size;
        let (first, last) = (offset / bs, (offset + len).div_ceil(bs));
        let _g = self.lock(first, last);
        // The primary is what is read: deferred writes there go into it first.
        if let Err(e) = self.apply_behind_locked(first, last) {
            tracing::warn!(error = %e, first_block = first, "could not write deferred writes into the primary after a failed write; the region stays dirty until compared");
            return;
        }
        let mut b = first;
        while b < last {
            let n = (last - b).min(REDO_CHUNK_BLOCKS);
            let mut buf = vec![0u8; (n * bs) as usize];
            let res = self
                .primary
                .read_exact_at(&mut buf, b * bs)
                .map_err(self.io("read"))
                .and_then(|()| Ok(self.vault.fix_up(b, &buf)?));
            if let Err(e) = res {
                tracing::warn!(error = %e, first_block = b, blocks = n, "could not give the vault what the primary holds after a failed write; the region stays dirty until compared");
                return;
            }
            b += n;
        }
    }

    /// Keeps the dirty region log within its limit: before a write would dirty one region
    /// too many, the log is flushed and every region the flush covered is cleaned (the cost
    /// DRBD's activity log pays when it swaps an extent out).
    fn make_room(&self, offset: u64, len: u64) -> Result<()> {
        if !self.drl.needs_room(offset, len) {
            return Ok(());
        }
        self.flush()?;
        self.drl.clear_covered(self.durable_in_log())?;
        Ok(())
    }

    /// Appends the records of a whole-block write and lists them: the primary is written
    /// later (see [`crate::behind`]). Falls back to [`LiveVolume::write_locked`] while a
    /// checkpoint keeps new deferred writes out.
    fn write_behind(&self, offset: u64, data: &[u8]) -> Result<Seq> {
        let bs = self.block_size;
        let (first, last) = (offset / bs, (offset + data.len() as u64) / bs);
        let _gate = self.behind_gate.read().unwrap_or_else(|p| p.into_inner());
        if !self.behind.wants(offset, data.len()) {
            drop(_gate);
            return self.write_locked(offset, data);
        }
        // On disk before any record whose primary write is deferred reaches the log.
        self.drl.mark_behind()?;
        let _g = self.lock(first, last);
        let (seq, places) = self.vault.write_placed(first, data)?;
        self.behind.insert(&places, data);
        self.note_change(first, last);
        Ok(seq)
    }

    /// Writes the primary and appends the record, under the regions' locks.
    fn write_locked(&self, offset: u64, data: &[u8]) -> Result<Seq> {
        let bs = self.block_size;
        let end = offset + data.len() as u64;
        let (first, last) = (offset / bs, end.div_ceil(bs));
        let _g = self.lock(first, last);
        let seq = if offset.is_multiple_of(bs) && end.is_multiple_of(bs) {
            self.direct
                .write(&self.primary, offset, data)
                .map_err(self.io("write"))?;
            let seq = self.vault.write(first, data)?;
            // Wholly overwritten, primary and log: no deferred write there any more.
            self.behind.remove(first, last);
            seq
        } else {
            // The edge blocks are read from the primary: it must hold them first.
            self.apply_behind_locked(first, last)?;
            let mut buf = vec![0u8; ((last - first) * bs) as usize];
            let head = (offset - first * bs) as usize;
            if head != 0 {
                self.primary
                    .read_exact_at(&mut buf[..bs as usize], first * bs)
                    .map_err(self.io("read"))?;
            }
            if !end.is_multiple_of(bs) && (last - 1 > first || head == 0) {
                let at = buf.len() - bs as usize;
                self.primary
                    .read_exact_at(&mut buf[at..], (last - 1) * bs)
                    .map_err(self.io("read"))?;
            }
            buf[head..head + data.len()].copy_from_slice(data);
            self.primary
                .write_all_at(data, offset)
                .map_err(self.io("write"))?;
            self.vault.write(first, &buf)?
        };
        self.note_change(first, last);
        Ok(seq)
    }

    /// Makes the range read as zeroes: `trim` discards (punches a hole), otherwise zeroes
    /// (`no_hole` keeps the primary allocated). Partial edge blocks become write records of
    /// the same host write: one unit for points.
    pub fn zero(&self, offset: u64, len: u64, trim: bool, no_hole: bool, fua: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.check(offset, len)?;
        let bs = self.block_size;
        let end = offset + len;
        if offset.div_ceil(bs) >= end / bs {
            // No whole block inside: it is a plain write of zeroes.
            return self.write(offset, &vec![0u8; len as usize], fua);
        }
        if let Err(e) = self.vault.check_room() {
            // A vault that refuses writes may also have lost deferred ones.
            self.salvage_behind();
            return Err(e.into());
        }
        self.behind.note_write();
        self.make_room(offset, len)?;
        let entered = self.drl.enter(offset, len)?;
        let res = self.zero_locked(offset, end, trim, no_hole);
        if res.is_err() {
            self.salvage_behind();
            self.resync_after_failure(offset, len);
        }
        self.note_primary_result(&res);
        self.drl
            .leave(entered, res.as_ref().map_or(u64::MAX, |s| s.0));
        res?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Zeroes or trims bytes offset..end (at least one whole block inside) in the primary
    /// and appends the host write (edge blocks as writes, the whole blocks as a zero or
    /// trim), under the regions' locks.
    fn zero_locked(&self, offset: u64, end: u64, trim: bool, no_hole: bool) -> Result<Seq> {
        let bs = self.block_size;
        let (first, last) = (offset / bs, end.div_ceil(bs));
        let (inner_first, inner_end) = (offset.div_ceil(bs), end / bs);
        let _g = self.lock(first, last);
        // Edge blocks are read from the primary: deferred writes there go into it first.
        if inner_first > first {
            self.apply_behind_locked(first, inner_first)?;
        }
        if last > inner_end {
            self.apply_behind_locked(inner_end, last)?;
        }
        let head = if inner_first > first {
            Some(self.zeroed_edge(first, offset - first * bs, bs)?)
        } else {
            None
        };
        let tail = if last > inner_end {
            Some(self.zeroed_edge(inner_end, 0, end - inner_end * bs)?)
        } else {
            None
        };
        if head.is_some() {
            self.write_primary(&vec![0u8; (inner_first * bs - offset) as usize], offset)?;
        }
        self.zero_primary(
            inner_first * bs,
            (inner_end - inner_first) * bs,
            trim || !no_hole,
        )?;
        if tail.is_some() {
            self.write_primary(&vec![0u8; (end - inner_end * bs) as usize], inner_end * bs)?;
        }
        let (first_block, count) = (inner_first, inner_end - inner_first);
        let mut ops = Vec::with_capacity(3);
        if let Some(h) = &head {
            ops.push(HostOp::Write {
                first_block: first,
                data: h,
            });
        }
        ops.push(if trim {
            HostOp::Trim { first_block, count }
        } else {
            HostOp::Zero { first_block, count }
        });
        if let Some(t) = &tail {
            ops.push(HostOp::Write {
                first_block: inner_end,
                data: t,
            });
        }
        let seq = self.vault.apply(&ops)?;
        self.behind.remove(first, last);
        self.note_change(first, last);
        Ok(seq)
    }

    /// Block `block` as the primary holds it, with bytes from..to zeroed.
    fn zeroed_edge(&self, block: u64, from: u64, to: u64) -> Result<Vec<u8>> {
        let bs = self.block_size;
        let mut buf = vec![0u8; bs as usize];
        self.primary
            .read_exact_at(&mut buf, block * bs)
            .map_err(self.io("read"))?;
        buf[from as usize..to as usize].fill(0);
        Ok(buf)
    }

    fn write_primary(&self, data: &[u8], offset: u64) -> Result<()> {
        self.primary
            .write_all_at(data, offset)
            .map_err(self.io("write"))
    }

    fn zero_primary(&self, offset: u64, len: u64, punch: bool) -> Result<()> {
        self.primary
            .zero_range(offset, len, punch)
            .map_err(self.io("zero"))
    }

    /// Makes every completed write durable: in the write log, from which the primary is
    /// brought up to date after a crash of the machine. Concurrent callers share one
    /// flush (group commit).
    pub fn flush(&self) -> Result<()> {
        let mut g = self.flushes.lock().unwrap_or_else(|p| p.into_inner());
        // A flush that starts after this call covers everything completed before it.
        let need = g.started + 1;
        loop {
            if g.done >= need {
                return match (&g.failed, &g.no_space) {
                    (Some(e), _) => Err(InterceptError::FlushFailed(e.clone())),
                    (None, Some((n, e))) if *n >= need => Err(InterceptError::NoSpace(e.clone())),
                    _ => Ok(()),
                };
            }
            if !g.running {
                g.running = true;
                g.started += 1;
                let mine = g.started;
                drop(g);
                let res = self.flush_now();
                g = self.flushes.lock().unwrap_or_else(|p| p.into_inner());
                g.running = false;
                g.done = mine;
                match &res {
                    Ok(()) => g.no_space = None,
                    Err(e) if e.is_no_space() => g.no_space = Some((mine, e.to_string())),
                    Err(e) => {
                        g.failed.get_or_insert_with(|| e.to_string());
                    }
                }
                self.flushed.notify_all();
                return res;
            }
            g = self.flushed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// One flush: the write log is made durable. The primary is not synced here: every
    /// write is in the log, and after a crash of the machine the records after the last
    /// checkpoint are copied back into the primary (see [`LiveVolume::checkpoint`]).
    fn flush_now(&self) -> Result<()> {
        let durable = match self.vault.flush() {
            Ok(d) => d,
            Err(e) => {
                self.salvage_behind();
                return Err(e.into());
            }
        };
        self.flushed_seq.fetch_max(durable.0, Ordering::AcqRel);
        self.behind.release(durable);
        Ok(())
    }

    /// Syncs the primary and records that every record so far is durable in it. The log
    /// is flushed first, so that the checkpoint never names a record the log could lose:
    /// after a crash of the machine the log must reach at least the checkpoint.
    pub fn checkpoint(&self) -> Result<()> {
        // Every write with a record up to here has written the primary already, but those
        // whose primary write is deferred: the checkpoint stops before the oldest of them.
        // Decided with no deferred write between its record and its listing; when none is
        // listed, new ones wait until the flag "behind" is cleared with the checkpoint.
        let (covered, caught_up) = {
            let _gate = self.behind_gate.write().unwrap_or_else(|p| p.into_inner());
            let newest = self.vault.newest_seq().0;
            match self.behind.oldest_seq() {
                Some(oldest) => (newest.min(oldest.0.saturating_sub(1)), false),
                None => {
                    self.behind.set_paused(true);
                    (newest, true)
                }
            }
        };
        let res = self.checkpoint_to(covered, caught_up);
        self.behind.set_paused(false);
        res
    }

    fn checkpoint_to(&self, covered: u64, caught_up: bool) -> Result<()> {
        let clear_flag = caught_up && self.drl.is_behind();
        if covered <= self.drl.checkpoint() && !clear_flag {
            return Ok(());
        }
        self.flush()?;
        if let Err(e) = self.primary.sync_data() {
            // Linux reports a writeback error once and may drop the pages it could not
            // write: the primary may have lost writes since the last checkpoint, and the
            // next sync would say all is well. Write them again from the log (which has
            // them all), then sync again; only then does the checkpoint move.
            let from = Seq(self.drl.checkpoint());
            tracing::error!(path = %self.path.display(), error = %e, checkpoint = %from, "syncing the primary failed; writing what it may have lost again from the write log");
            let changed = self.vault.changed_since(from)?;
            self.copy_from_vault(&changed, true)?;
            if let Err(e) = self.primary.sync_data() {
                // Failed again, and may have dropped them again: write them once more, so
                // that the host reads what it wrote; the next checkpoint tries again.
                let _ = self.copy_from_vault(&changed, true);
                return Err(self.io("fdatasync")(e));
            }
        }
        self.drl.set_checkpoint(covered, caught_up)?;
        self.record_serving()?;
        Ok(())
    }

    /// The seq up to which writes are durable in the write log. That is all a dirty region
    /// needs to be cleared: the primary itself may still lag behind (it is synced by
    /// checkpoints), but after a crash of the machine [`LiveVolume::open`] brings it up to
    /// date from the log before anything compares the two.
    fn durable_in_log(&self) -> u64 {
        self.flushed_seq.load(Ordering::Acquire)
    }

    /// Housekeeping, called now and then (the server does once a second): hands buffered
    /// records to the disk, every [`CHECKPOINT_EVERY`] syncs the primary, and every few
    /// seconds clears the dirty region log's idle regions, flushing the log first if that
    /// lets more of them go.
    pub fn tick(&self) -> Result<()> {
        // Records buffered for a second go to the disk even if the host never flushes.
        self.vault.write_out()?;
        if due(&self.last_checkpoint, CHECKPOINT_EVERY) {
            self.checkpoint()?;
        }
        if !due(&self.last_drl_pass, DRL_PASS) {
            return Ok(());
        }
        if self.drl.wants_flush(self.durable_in_log()) {
            self.flush()?;
        }
        self.drl.clear_idle(self.durable_in_log())?;
        Ok(())
    }

    /// Keeps whether the primary's file system refuses writes for lack of space (for
    /// [`LiveVolume::write_refusal`]); costs one atomic load when all is well.
    fn note_primary_result<T>(&self, res: &Result<T>) {
        let full = matches!(res, Err(e @ InterceptError::Io { .. }) if e.is_no_space());
        if !full && !self.primary_full_set.load(Ordering::Relaxed) {
            return;
        }
        let mut g = self.primary_full.lock().unwrap_or_else(|p| p.into_inner());
        match res {
            Err(e) if full => {
                if g.is_none() {
                    tracing::error!(path = %self.path.display(), error = %e, "the primary's file system is full: host writes get ENOSPC until space is freed");
                    *g = Some((std::time::SystemTime::now(), e.to_string()));
                }
            }
            Ok(_) => {
                if g.take().is_some() {
                    tracing::warn!(path = %self.path.display(), "the primary's file system has room again; writes go on");
                }
            }
            Err(_) => {}
        }
        self.primary_full_set.store(g.is_some(), Ordering::Relaxed);
    }

    /// Why host writes are refused now, if they are: the vault's write log cannot be
    /// written (full, or poisoned by a failed sync), or the primary's file system is full.
    pub fn write_refusal(&self) -> Option<rewind_vault::WriteRefusal> {
        if let Some(r) = self.vault.write_refusal() {
            return Some(r);
        }
        let g = self.primary_full.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(|(since, why)| rewind_vault::WriteRefusal {
            since: *since,
            reason: format!("no space left on the primary's file system ({why})"),
            path: self.path.clone(),
            retries_by_itself: true,
        })
    }

    /// The dirty region log.
    pub fn drl(&self) -> &DirtyRegionLog {
        &self.drl
    }

    /// Regions an unclean stop left dirty (see [`LiveVolume::open`]); empty after a clean
    /// stop. They stay dirty until [`LiveVolume::mark_repaired`].
    pub fn unclean_regions(&self) -> Vec<u64> {
        self.unclean
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Says that primary and vault agree everywhere (the unclean regions were repaired):
    /// flushes, then clears the dirty region log. Call it only with no write in flight.
    pub fn mark_repaired(&self) -> Result<()> {
        self.flush()?;
        self.checkpoint()?;
        self.drl.clear_all(false)?;
        self.unclean
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// Stops cleanly: flushes the log, syncs the primary, seals the open interval and
    /// records a clean stop in the dirty region log. Call it when no write is in flight
    /// any more.
    pub fn stop(&self) -> Result<Option<rewind_vault::IntervalInfo>> {
        self.apply_all_behind()?;
        // Before the flush, which fails on a vault that refuses writes: the primary has
        // everything now.
        self.clear_behind_flag()?;
        self.flush()?;
        self.checkpoint()?;
        let sealed = self.vault.seal()?;
        self.drl.clear_all(true)?;
        if self.drl.dirty_regions().is_empty() {
            self.vault.set_serving(None)?;
        } else {
            // A write failed in these regions: the next start compares them, whatever
            // becomes of the dirty region log.
            self.record_serving()?;
        }
        Ok(sealed)
    }

    /// Allocation of the primary: runs of (length, is_hole) covering offset..offset+len.
    /// Blocks of deferred writes are data, whatever the primary holds there yet.
    pub fn allocation(&self, offset: u64, len: u64) -> Vec<(u64, bool)> {
        let end = (offset + len).min(self.size);
        let pieces = self.behind_pieces(offset, end.saturating_sub(offset));
        let runs = self.primary_allocation(offset, end);
        if pieces.is_empty() {
            return runs;
        }
        let bs = self.block_size;
        let data: Vec<(u64, u64)> = pieces
            .iter()
            .map(|p| ((p.first * bs).max(offset), (p.end * bs).min(end)))
            .collect();
        overlay_data(offset, &runs, &data)
    }

    fn primary_allocation(&self, offset: u64, end: u64) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        let mut at = offset;
        while at < end {
            // A file that cannot say: data (always safe).
            match self.primary.next_data(at, end).unwrap_or(Some((at, end))) {
                None => {
                    out.push((end - at, true));
                    break;
                }
                Some((data, data_end)) => {
                    if data > at {
                        out.push((data - at, true));
                    }
                    let stop = data_end.clamp(data.max(at) + 1, end);
                    out.push((stop - data.max(at), false));
                    at = stop;
                }
            }
        }
        out
    }
}

/// `runs` (length, is_hole) from `offset`, with the byte ranges `data` (sorted, disjoint)
/// made data; adjacent runs of one kind merged.
fn overlay_data(offset: u64, runs: &[(u64, bool)], data: &[(u64, u64)]) -> Vec<(u64, bool)> {
    let mut out: Vec<(u64, bool)> = Vec::new();
    let mut push = |len: u64, hole: bool| {
        if len == 0 {
            return;
        }
        match out.last_mut() {
            Some((l, h)) if *h == hole => *l += len,
            _ => out.push((len, hole)),
        }
    };
    let mut at = offset;
    let mut d = data.iter().peekable();
    for &(len, hole) in runs {
        let end = at + len;
        if !hole {
            push(len, false);
            at = end;
            continue;
        }
        let mut x = at;
        while x < end {
            while d.peek().is_some_and(|r| r.1 <= x) {
                d.next();
            }
            match d.peek() {
                Some(&&(s, e)) if s < end => {
                    if s > x {
                        push(s - x, true);
                    }
                    let stop = e.min(end);
                    push(stop - s.max(x), false);
                    x = stop;
                }
                _ => {
                    push(end - x, true);
                    x = end;
                }
            }
        }
        at = end;
    }
    out
}

#[cfg(test)]
mod overlay_tests {
    use super::overlay_data;

    #[test]
    fn deferred_data_in_holes_is_data() {
        // hole 0..100, data 100..150, hole 150..300
        let runs = [(100, true), (50, false), (150, true)];
        let got = overlay_data(0, &runs, &[(10, 20), (140, 160), (290, 300)]);
        assert_eq!(
            got,
            vec![
                (10, true),
                (10, false),
                (80, true),
                (60, false),
                (130, true),
                (10, false)
            ]
        );
        assert_eq!(overlay_data(1000, &[(50, true)], &[]), vec![(50, true)]);
    }
}
