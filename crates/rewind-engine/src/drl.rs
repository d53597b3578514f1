//! The dirty region log (DRL): which regions of the primary may hold writes that the vault
//! does not have durably, kept on disk so that after an unclean stop only those regions
//! need to be compared and repaired (like DRBD's activity log).
//!
//! The write path pays almost nothing: a write enters its region (one atomic add); only
//! the first write to a clean region sets the region's bit on disk (write + fdatasync of
//! the small DRL file, shared by writers that arrive meanwhile) before the primary is
//! touched. Bits are cleared lazily by [`DirtyRegionLog::clear_idle`]: a region is clean
//! again once no write is in flight there, a flush of primary and write log covered its
//! last write, and it was not written for a whole pass. So a region the host keeps
//! writing stays dirty and costs nothing more; after a crash the repair work is bounded
//! by the regions written in the last pass or two.
//!
//! The DRL also holds the primary's checkpoint (every record up to it is durable in the
//! primary) and the boot it was written in: after a crash of the machine, the records after
//! the checkpoint must be brought back into the primary (see `LiveVolume::open`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};

use rewind_format::drl::DirtyRegions;
use rewind_storage::{Open, Storage, StorageFile};

/// The DRL file in the vault directory.
pub const FILE_NAME: &str = rewind_format::names::DRL;
/// Region size of a new DRL.
pub const DEFAULT_REGION_SIZE: u32 = 16 << 20;

/// Most regions dirty at once unless told otherwise (like DRBD's `al-extents`): a write
/// that would dirty one more first flushes the write log and cleans what the flush
/// covered, so the repair after a crash never has to compare more than this many regions
/// (4 GiB of 16 MiB regions), however widely the host writes.
pub const DEFAULT_DIRTY_LIMIT: usize = 256;

/// Region state bit: the region's bit is set on disk. The bits below count the writes in
/// flight in the region.
const DIRTY: u64 = 1 << 63;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DrlError {
    #[error("{op} dirty region log {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dirty region log {path} is corrupted: {source}; it says which regions of the primary may differ from the vault, so without it the whole volume must be compared: move it away, run `rewind sync` on the vault (a full compare and repair), then serve again")]
    Corrupted {
        path: PathBuf,
        source: rewind_format::DecodeError,
    },
    #[error("dirty region log {path} is for a {found}-byte volume, not {expected} bytes")]
    WrongVolume {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
}

type Result<T> = std::result::Result<T, DrlError>;

/// What an opened DRL says about the last stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastStop {
    /// The last stop was clean.
    pub clean: bool,
    /// The DRL was last written in this boot of the machine (so the page cache survived
    /// whatever happened to the process).
    pub same_boot: bool,
    /// Every record up to this seq is durable in the primary.
    pub checkpoint_seq: u64,
    /// Regions that may differ between primary and vault.
    pub dirty: Vec<u64>,
    /// Host writes after the checkpoint may be in the write log only (the primary written
    /// behind it): after an unclean stop the primary must be brought up to date from the
    /// log, whatever the boot.
    pub behind: bool,
    /// The facts came from a file (not a new, missing or torn-at-birth log).
    pub from_file: bool,
}

/// This boot of the local machine (see [`rewind_storage::LocalStorage`]'s `boot_id`).
pub fn boot_id() -> [u8; 16] {
    rewind_storage::Storage::boot_id(&rewind_storage::LocalStorage)
}

/// Regions `first..=last` a write is in; give it back with [`DirtyRegionLog::leave`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entered {
    first: u64,
    last: u64,
}

/// The dirty region log of a live volume.
#[derive(Debug)]
pub struct DirtyRegionLog {
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    region_size: u64,
    volume_size: u64,
    /// Per region: [`DIRTY`] and the writes in flight.
    state: Vec<AtomicU64>,
    /// Per region: the newest seq of a finished write there.
    last_seq: Vec<AtomicU64>,
    /// Per region: written since the last clearing pass.
    touched: Vec<AtomicBool>,
    /// Per region: a write there failed (primary and log may differ). It stays dirty, a
    /// clean stop included, until a repair compared it.
    failed: Vec<AtomicBool>,
    /// Held while the file is written; the on-disk generation.
    disk: Mutex<u64>,
    /// Every record up to this seq is durable in the primary.
    checkpoint: AtomicU64,
    /// The flag "behind" as written (or to be written) in the file: see
    /// [`DirtyRegionLog::mark_behind`].
    behind: AtomicBool,
    /// The boot written into the file. After a crash of the machine it stays the old boot
    /// until [`DirtyRegionLog::adopt_boot`]: until the primary is brought up to date, a
    /// restart must still see that the machine crashed.
    written_boot_id: Mutex<[u8; 16]>,
    boot_id: [u8; 16],
    /// Most regions dirty at once (see [`DEFAULT_DIRTY_LIMIT`]).
    dirty_limit: std::sync::atomic::AtomicUsize,
    /// Times the file was written, for status and tests.
    writes: AtomicU64,
    /// Time writers spent waiting for their region to be marked on disk (ns).
    mark_wait_ns: AtomicU64,
}

impl DirtyRegionLog {
    /// Opens the DRL of the vault in `vault_dir`, or creates a clean one. Returns it and
    /// what it says about the last stop: the regions dirty on disk stay dirty until
    /// [`DirtyRegionLog::clear_all`] after they were repaired.
    pub fn open(vault_dir: &Path, volume_size: u64, block_size: u32) -> Result<(Self, LastStop)> {
        Self::open_on(
            &rewind_storage::LocalStorage,
            vault_dir,
            volume_size,
            block_size,
            DEFAULT_REGION_SIZE,
        )
    }

    /// [`DirtyRegionLog::open`] on `fs`; a new log has regions of `region_size` bytes (an
    /// existing one keeps its own).
    pub fn open_on(
        fs: &dyn Storage,
        vault_dir: &Path,
        volume_size: u64,
        block_size: u32,
        region_size: u32,
    ) -> Result<(Self, LastStop)> {
        let path = vault_dir.join(FILE_NAME);
        let io = |op, source| DrlError::Io {
            op,
            path: path.clone(),
            source,
        };
        let existing =
            match fs.open(&path, Open::read()).and_then(|f| f.read_all()) {
                // Nothing but zeroes: the very first write of the file was torn (the two slots
                // alternate, so a later torn write always leaves one valid). Nothing was
                // served with it: the server writes it before it serves.
                Ok(bytes) if bytes.iter().all(|b| *b == 0) => None,
                Ok(bytes) => Some(DirtyRegions::decode_file(&bytes).map_err(|source| {
                    DrlError::Corrupted {
                        path: path.clone(),
                        source,
                    }
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io("read", e)),
            };
        let created = existing.is_none() && !fs.exists(&path);
        let file = fs
            .open(
                &path,
                Open {
                    write: true,
                    create: true,
                    ..Open::default()
                },
            )
            .map_err(|e| io("open", e))?;
        if created {
            // The file's entry must survive a power cut before anything relies on it: a DRL
            // that vanishes with the crash it should have survived says "clean".
            fs.sync_dir(vault_dir)
                .map_err(|e| io("fsync the directory of", e))?;
        }
        let from_file = existing.is_some();
        let disk = match existing {
            Some(d) if d.volume_size != volume_size => {
                return Err(DrlError::WrongVolume {
                    path,
                    found: d.volume_size,
                    expected: volume_size,
                })
            }
            Some(d) => d,
            None => DirtyRegions::new(region_size.max(block_size), volume_size),
        };
        let n = disk.region_count() as usize;
        let boot_id = fs.boot_id();
        let last = LastStop {
            clean: disk.clean,
            same_boot: disk.boot_id == boot_id && boot_id != [0; 16],
            checkpoint_seq: disk.checkpoint_seq,
            dirty: disk.dirty().collect(),
            behind: disk.behind && !disk.clean,
            from_file,
        };
        // A machine crash not yet recovered from keeps its boot in the file (see
        // `written_boot_id`); otherwise this boot is written at once.
        let pending_redo = !last.clean && !last.same_boot;
        let written_boot_id = if pending_redo { disk.boot_id } else { boot_id };
        let drl = DirtyRegionLog {
            checkpoint: AtomicU64::new(disk.checkpoint_seq),
            // Kept until the primary was brought up to date (`adopt_boot`).
            behind: AtomicBool::new(last.behind),
            written_boot_id: Mutex::new(written_boot_id),
            boot_id,
            file,
            region_size: u64::from(disk.region_size),
            volume_size,
            state: (0..n)
                .map(|r| AtomicU64::new(if disk.is_dirty(r as u64) { DIRTY } else { 0 }))
                .collect(),
            last_seq: (0..n).map(|_| AtomicU64::new(0)).collect(),
            touched: (0..n).map(|_| AtomicBool::new(false)).collect(),
            failed: (0..n).map(|_| AtomicBool::new(false)).collect(),
            disk: Mutex::new(disk.generation),
            dirty_limit: std::sync::atomic::AtomicUsize::new(DEFAULT_DIRTY_LIMIT),
            writes: AtomicU64::new(0),
            mark_wait_ns: AtomicU64::new(0),
            path,
        };
        // Written now in any case: a new DRL must exist, and an old clean flag must go
        // (this run may stop uncleanly).
        {
            let mut g = drl.lock();
            drl.persist(&mut g, false)?;
        }
        Ok((drl, last))
    }

    /// Every record up to this seq is durable in the primary.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    /// Records this boot of the machine in the file, with checkpoint `seq`: called once
    /// the primary was brought up to date after a crash of the machine (and synced). The
    /// primary then lags the log nowhere: the flag "behind" goes too.
    pub fn adopt_boot(&self, seq: u64) -> Result<()> {
        let mut g = self.lock();
        self.behind.store(false, Ordering::Release);
        *self
            .written_boot_id
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = self.boot_id;
        self.checkpoint.store(seq, Ordering::Release);
        self.persist(&mut g, false)
    }

    /// Records that every record up to `seq` is durable in the primary (the caller synced
    /// it), on disk. `caught_up`: no host write waits to be written into the primary any
    /// more, so the flag "behind" goes (the caller keeps new deferred writes from starting
    /// meanwhile).
    pub fn set_checkpoint(&self, seq: u64, caught_up: bool) -> Result<()> {
        let mut g = self.lock();
        let clear = caught_up && self.behind.load(Ordering::Acquire);
        if seq <= self.checkpoint() && !clear {
            return Ok(());
        }
        self.checkpoint
            .store(seq.max(self.checkpoint()), Ordering::Release);
        if clear {
            self.behind.store(false, Ordering::Release);
        }
        self.persist(&mut g, false)
    }

    /// Makes the flag "behind" durable, if it is not yet: called before a host write goes
    /// to the write log only (its primary write deferred). Costs one write and fdatasync of
    /// the file the first time after a checkpoint cleared it, nothing after that.
    pub fn mark_behind(&self) -> Result<()> {
        if self.behind.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut g = self.lock();
        if self.behind.load(Ordering::Acquire) {
            return Ok(());
        }
        self.behind.store(true, Ordering::Release);
        let res = self.persist(&mut g, false);
        if res.is_err() {
            self.behind.store(false, Ordering::Release);
        }
        res
    }

    /// Whether the flag "behind" is set.
    pub fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes per region.
    pub fn region_size(&self) -> u64 {
        self.region_size
    }

    /// The region holding byte `offset`.
    pub fn region_of(&self, offset: u64) -> u64 {
        offset / self.region_size
    }

    /// Regions dirty now (in memory; on disk it is these or more).
    pub fn dirty_regions(&self) -> Vec<u64> {
        (0..self.state.len() as u64)
            .filter(|r| self.state[*r as usize].load(Ordering::Acquire) & DIRTY != 0)
            .collect()
    }

    /// Most regions dirty at once.
    pub fn dirty_limit(&self) -> usize {
        self.dirty_limit.load(Ordering::Relaxed)
    }

    /// Sets the most regions dirty at once (at least 1).
    pub fn set_dirty_limit(&self, regions: usize) {
        self.dirty_limit.store(regions.max(1), Ordering::Relaxed);
    }

    /// Whether a write to bytes `offset..offset+len` would dirty regions beyond the dirty
    /// limit: the caller then flushes and calls [`Self::clear_covered`] before it enters.
    /// Only a write to a clean region pays for the count (it is about to write the DRL).
    pub fn needs_room(&self, offset: u64, len: u64) -> bool {
        let (first, last) = self.regions_of(offset, len);
        let new = (first..=last)
            .filter(|r| self.state[*r as usize].load(Ordering::Acquire) & DIRTY == 0)
            .count();
        if new == 0 {
            return false;
        }
        let dirty = self
            .state
            .iter()
            .filter(|s| s.load(Ordering::Acquire) & DIRTY != 0)
            .count();
        dirty + new > self.dirty_limit()
    }

    fn regions_of(&self, offset: u64, len: u64) -> (u64, u64) {
        let first = offset / self.region_size;
        let last =
            (offset + len.max(1) - 1).min(self.volume_size.saturating_sub(1)) / self.region_size;
        (first, last)
    }

    /// Times the DRL file was written.
    pub fn file_writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Total time writes waited for their region to be marked on disk: what the DRL
    /// costs the write path.
    pub fn mark_wait(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.mark_wait_ns.load(Ordering::Relaxed))
    }

    /// Enters the regions of bytes `offset..offset+len` (len > 0) before the primary is
    /// written there: afterwards they are dirty on disk. Pair with [`Self::leave`].
    pub fn enter(&self, offset: u64, len: u64) -> Result<Entered> {
        let (first, last) = self.regions_of(offset, len);
        let mut clean = false;
        for r in first..=last {
            let prev = self.state[r as usize].fetch_add(1, Ordering::AcqRel);
            clean |= prev & DIRTY == 0;
        }
        let entered = Entered { first, last };
        if clean {
            let started = std::time::Instant::now();
            let marked = self.mark(entered);
            self.mark_wait_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if let Err(e) = marked {
                self.leave(entered, 0);
                return Err(e);
            }
        }
        Ok(entered)
    }

    /// Sets the bits of regions that are not dirty yet, on disk first. One write covers
    /// every region some writer has entered by then (group commit): writers that enter
    /// clean regions while a mark is being written wait for the lock and are then usually
    /// covered by a single next write, instead of one fdatasync each.
    fn mark(&self, e: Entered) -> Result<()> {
        let mut g = self.lock();
        // Whoever held the lock before may have marked them (bits are only set once they
        // are on disk, and only under this lock).
        if (e.first..=e.last).all(|r| self.state[r as usize].load(Ordering::Acquire) & DIRTY != 0) {
            return Ok(());
        }
        let mut missing: Vec<u64> = (0..self.state.len() as u64)
            .filter(|r| {
                let s = self.state[*r as usize].load(Ordering::Acquire);
                s & DIRTY == 0 && (s & !DIRTY != 0 || (e.first..=e.last).contains(r))
            })
            .collect();
        missing.extend(self.ahead(e, missing.len()));
        self.set_dirty(&mut g, missing)
    }

    /// Clean regions after a request over several regions (a discard, a large write) to mark
    /// with it: a stream of such requests (mkfs or fstrim discarding a volume, a sequential
    /// copy) then writes the DRL once every few requests instead of once each (0.9 ms an
    /// fdatasync: 1024 discards of 1 GiB took 1.8 s). Up to three times the request, within
    /// the dirty limit. A region marked and never written costs nothing but a region more
    /// to copy after a crash, and is cleared with the others.
    fn ahead(&self, e: Entered, marking: usize) -> Vec<u64> {
        // At least one whole region inside: not a small write across a region's edge.
        let span = e.last - e.first + 1;
        if span < 3 {
            return Vec::new();
        }
        let dirty = self
            .state
            .iter()
            .filter(|s| s.load(Ordering::Acquire) & DIRTY != 0)
            .count();
        let room = self.dirty_limit().saturating_sub(dirty + marking) as u64;
        let end = (self.state.len() as u64).min(e.last + 1 + (3 * span).min(room));
        (e.last + 1..end)
            .take_while(|r| self.state[*r as usize].load(Ordering::Acquire) & DIRTY == 0)
            .collect()
    }

    /// Writes `regions` dirty to disk (with every region dirty already), then sets their
    /// bits in memory. Called with the file lock held.
    fn set_dirty(&self, g: &mut MutexGuard<'_, u64>, regions: Vec<u64>) -> Result<()> {
        if regions.is_empty() {
            return Ok(());
        }
        self.persist_with(g, &regions)?;
        for r in regions {
            self.state[r as usize].fetch_or(DIRTY, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Marks the regions of every byte range in `ranges` dirty on disk at once (one write),
    /// before many writes there: an in-place restore scatters its writes over the whole
    /// volume, and would otherwise mark region after region. They are cleared like any
    /// other once idle and flushed.
    pub fn premark(&self, ranges: &[(u64, u64)]) -> Result<()> {
        let mut regions = std::collections::BTreeSet::new();
        for &(offset, len) in ranges {
            if len > 0 && offset < self.volume_size {
                let (first, last) = self.regions_of(offset, len);
                regions.extend(first..=last);
            }
        }
        let mut g = self.lock();
        for r in &regions {
            // Not cleared by the next pass, written or not.
            self.touched[*r as usize].store(true, Ordering::Release);
        }
        let missing: Vec<u64> = regions
            .into_iter()
            .filter(|r| self.state[*r as usize].load(Ordering::Acquire) & DIRTY == 0)
            .collect();
        self.set_dirty(&mut g, missing)
    }

    /// Leaves the regions after the write's record was appended with `seq` (0: nothing was
    /// appended).
    pub fn leave(&self, e: Entered, seq: u64) {
        for r in e.first..=e.last {
            let r = r as usize;
            if seq == u64::MAX {
                self.failed[r].store(true, Ordering::Release);
            }
            self.last_seq[r].fetch_max(seq, Ordering::AcqRel);
            self.touched[r].store(true, Ordering::Release);
            self.state[r].fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether some dirty region would be cleared by a flush: not written since the last
    /// pass, and its last write newer than `flushed_seq`.
    pub fn wants_flush(&self, flushed_seq: u64) -> bool {
        (0..self.state.len()).any(|r| {
            self.state[r].load(Ordering::Acquire) & DIRTY != 0
                && !self.touched[r].load(Ordering::Acquire)
                && self.last_seq[r].load(Ordering::Acquire) > flushed_seq
        })
    }

    /// One clearing pass: clears regions with no write in flight, not written since the
    /// previous pass, whose last write a flush of primary and log covered (`flushed_seq`:
    /// every write with a record seq up to it is durable in both). Returns how many.
    pub fn clear_idle(&self, flushed_seq: u64) -> Result<usize> {
        self.clear(flushed_seq, true)
    }

    /// Clears every region with no write in flight whose last write `flushed_seq` covers,
    /// idle or not: what a writer that needs room (see [`Self::needs_room`]) does after a
    /// flush. Returns how many.
    pub fn clear_covered(&self, flushed_seq: u64) -> Result<usize> {
        self.clear(flushed_seq, false)
    }

    fn clear(&self, flushed_seq: u64, only_idle: bool) -> Result<usize> {
        let mut g = self.lock();
        let mut cleared = 0;
        for r in 0..self.state.len() {
            if only_idle && self.touched[r].swap(false, Ordering::AcqRel) {
                continue;
            }
            if self.last_seq[r].load(Ordering::Acquire) > flushed_seq {
                continue;
            }
            // Only when nothing is in flight; a writer that enters afterwards finds the
            // region clean and marks it again (under this lock, after our write).
            if self.state[r]
                .compare_exchange(DIRTY, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            // A whole write may have entered and left since `touched` was read: it left
            // `touched` set before it left the region, so seeing it now means its record
            // may not be flushed. Keep the region dirty (it is still dirty on disk).
            // (A write leaves `touched` and its seq before it leaves the region, so either
            // shows it after the swap succeeded.)
            if (only_idle && self.touched[r].load(Ordering::Acquire))
                || self.last_seq[r].load(Ordering::Acquire) > flushed_seq
            {
                self.state[r].fetch_or(DIRTY, Ordering::AcqRel);
                continue;
            }
            cleared += 1;
        }
        if cleared > 0 {
            self.persist(&mut g, false)?;
        }
        Ok(cleared)
    }

    /// Clears every region (after a flush covered everything and nothing is in flight, or
    /// after the dirty regions were repaired). `clean_stop`: written as a clean stop.
    /// A clean stop keeps the regions where a write failed: primary and log may differ
    /// there, and the next start compares them; after a repair (`clean_stop` false) they
    /// are clean.
    pub fn clear_all(&self, clean_stop: bool) -> Result<()> {
        let mut g = self.lock();
        for (r, s) in self.state.iter().enumerate() {
            if clean_stop && self.failed[r].load(Ordering::Acquire) {
                continue;
            }
            self.failed[r].store(false, Ordering::Release);
            // Keep regions with writes in flight (there should be none).
            let _ = s.compare_exchange(DIRTY, 0, Ordering::AcqRel, Ordering::Acquire);
        }
        for t in &self.touched {
            t.store(false, Ordering::Release);
        }
        let clean = clean_stop && self.dirty_regions().is_empty();
        self.persist(&mut g, clean)
    }

    fn persist(&self, g: &mut MutexGuard<'_, u64>, clean: bool) -> Result<()> {
        self.write_file(g, &[], clean)
    }

    fn persist_with(&self, g: &mut MutexGuard<'_, u64>, extra: &[u64]) -> Result<()> {
        self.write_file(g, extra, false)
    }

    /// Writes the bitmap (the dirty regions plus `extra`) to the slot of the next
    /// generation and makes it durable.
    fn write_file(&self, g: &mut MutexGuard<'_, u64>, extra: &[u64], clean: bool) -> Result<()> {
        let mut d = DirtyRegions::new(self.region_size as u32, self.volume_size);
        for (r, s) in self.state.iter().enumerate() {
            if s.load(Ordering::Acquire) & DIRTY != 0 {
                d.bitmap[r / 8] |= 1 << (r % 8);
            }
        }
        for r in extra {
            d.bitmap[(*r / 8) as usize] |= 1 << (*r % 8);
        }
        d.behind = self.behind.load(Ordering::Acquire);
        d.clean = clean && !d.behind && d.bitmap.iter().all(|b| *b == 0);
        d.generation = **g + 1;
        d.checkpoint_seq = self.checkpoint();
        d.boot_id = *self
            .written_boot_id
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let io = |op, source| DrlError::Io {
            op,
            path: self.path.clone(),
            source,
        };
        self.file
            .write_all_at(&d.encode(), d.slot_offset())
            .map_err(|e| io("write", e))?;
        self.file.sync_data().map_err(|e| io("fdatasync", e))?;
        **g = d.generation;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The file's bytes, read while no write of it is under way (`rewind check` of a running
    /// server).
    pub fn read_file(&self) -> std::io::Result<Vec<u8>> {
        let _g = self.lock();
        std::fs::read(&self.path)
    }

    /// Reads the DRL of a vault without opening it for writing: the regions dirty on
    /// disk, and whether the last stop was clean. `None`: the vault has no DRL.
    pub fn peek(vault_dir: &Path) -> Result<Option<DirtyRegions>> {
        Self::peek_on(&rewind_storage::LocalStorage, vault_dir)
    }

    /// [`DirtyRegionLog::peek`] on `fs`.
    pub fn peek_on(fs: &dyn Storage, vault_dir: &Path) -> Result<Option<DirtyRegions>> {
        let path = vault_dir.join(FILE_NAME);
        match fs.open(&path, Open::read()).and_then(|f| f.read_all()) {
            Ok(bytes) => DirtyRegions::decode_file(&bytes)
                .map(Some)
                .map_err(|source| DrlError::Corrupted { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DrlError::Io {
                op: "read",
                path,
                source,
            }),
        }
    }
}

/// What offline tools must know before they trust the primary of a vault: `Ok(None)` if
/// the last `rewind serve` stopped cleanly (or the vault has no DRL); otherwise the DRL
/// and whether it was written in this boot of the machine. After a crash in another boot
/// the primary may lack flushed writes until `rewind serve` recovers it.
pub fn unclean_stop(vault_dir: &Path) -> Result<Option<(DirtyRegions, bool)>> {
    Ok(DirtyRegionLog::peek(vault_dir)?
        .filter(|d| !d.clean)
        .map(|d| {
            let same_boot = d.boot_id == boot_id() && d.boot_id != [0; 16];
            (d, same_boot)
        }))
}

/// The regions of `region_size` bytes (verify's regions) that DRL regions `dirty` (of
/// `drl_region_size` bytes) cover in a volume of `volume_size` bytes.
pub fn covering_regions(
    dirty: impl IntoIterator<Item = u64>,
    drl_region_size: u64,
    region_size: u64,
    volume_size: u64,
) -> roaring::RoaringTreemap {
    let mut out = roaring::RoaringTreemap::new();
    let region_size = region_size.max(1);
    for r in dirty {
        let start = r.saturating_mul(drl_region_size);
        let end = (start.saturating_add(drl_region_size)).min(volume_size);
        if start < end {
            out.insert_range(start / region_size..end.div_ceil(region_size));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIB: u64 = 1 << 20;

    fn on_disk(dir: &Path) -> Vec<u64> {
        DirtyRegionLog::peek(dir)
            .unwrap()
            .unwrap()
            .dirty()
            .collect()
    }

    #[test]
    fn dirty_regions_map_to_verify_regions() {
        let got: Vec<u64> = covering_regions([0, 3], 16 * MIB, 64 << 10, 60 * MIB)
            .iter()
            .collect();
        let want: Vec<u64> = (0..256).chain(768..960).collect();
        assert_eq!(got, want);
    }

    /// A stream of discards of several regions each (mkfs, fstrim) marks regions ahead of
    /// itself: one DRL write every few requests, never past the dirty limit, and every
    /// region a request enters is dirty on disk before it returns.
    #[test]
    fn a_stream_of_large_requests_marks_ahead_within_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let (drl, _) = DirtyRegionLog::open(tmp.path(), 1024 * MIB, 4096).unwrap();
        drl.set_dirty_limit(40);
        let writes = drl.file_writes();
        for i in 0..8u64 {
            // 4 regions of 16 MiB each.
            let (offset, len) = (i * 64 * MIB, 64 * MIB);
            assert!(!drl.needs_room(offset, len), "request {i}");
            let e = drl.enter(offset, len).unwrap();
            let disk = on_disk(tmp.path());
            for r in i * 4..i * 4 + 4 {
                assert!(
                    disk.contains(&r),
                    "region {r} of request {i} is dirty on disk"
                );
            }
            assert!(disk.len() <= 40, "{} regions dirty", disk.len());
            drl.leave(e, i + 1);
        }
        // 8 requests: marked by the first (regions 0..16) and the fifth (16..32), not by
        // each.
        assert_eq!(drl.file_writes() - writes, 2, "DRL writes");
    }

    #[test]
    fn first_write_marks_on_disk_later_ones_cost_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (drl, last) = DirtyRegionLog::open(tmp.path(), 64 * MIB, 4096).unwrap();
        assert!(last.dirty.is_empty() && last.clean);
        let writes = drl.file_writes();
        let e = drl.enter(20 * MIB, 4096).unwrap();
        assert_eq!(on_disk(tmp.path()), vec![1]);
        assert_eq!(drl.file_writes(), writes + 1);
        drl.leave(e, 5);
        let e = drl.enter(20 * MIB + 8192, 4096).unwrap();
        drl.leave(e, 6);
        assert_eq!(drl.file_writes(), writes + 1);
        // Spanning two regions.
        let e = drl.enter(32 * MIB - 4096, 8192).unwrap();
        drl.leave(e, 7);
        assert_eq!(on_disk(tmp.path()), vec![1, 2]);
    }

    #[test]
    fn regions_clear_only_when_idle_flushed_and_not_in_flight() {
        let tmp = tempfile::tempdir().unwrap();
        let (drl, _) = DirtyRegionLog::open(tmp.path(), 64 * MIB, 4096).unwrap();
        let a = drl.enter(0, 4096).unwrap();
        drl.leave(a, 10);
        let b = drl.enter(16 * MIB, 4096).unwrap(); // stays in flight
                                                    // Touched since the last pass: kept.
        assert_eq!(drl.clear_idle(100).unwrap(), 0);
        // Not flushed yet: kept.
        assert!(drl.wants_flush(9));
        assert_eq!(drl.clear_idle(9).unwrap(), 0);
        assert_eq!(drl.clear_idle(10).unwrap(), 1);
        assert_eq!(on_disk(tmp.path()), vec![1]);
        drl.leave(b, 11);
        assert_eq!(drl.clear_idle(11).unwrap(), 0, "touched by the leave");
        assert_eq!(drl.clear_idle(11).unwrap(), 1);
        assert!(on_disk(tmp.path()).is_empty());
        // Written again after clearing: marked again.
        let c = drl.enter(0, 4096).unwrap();
        assert_eq!(on_disk(tmp.path()), vec![0]);
        drl.leave(c, 12);
    }

    #[test]
    fn an_unclean_stop_reports_the_dirty_regions_on_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (drl, _) = DirtyRegionLog::open(tmp.path(), 64 * MIB, 4096).unwrap();
            let e = drl.enter(50 * MIB, 4096).unwrap();
            drl.leave(e, 1);
            drl.set_checkpoint(1, false).unwrap();
            // dropped without clear_all: a crash
        }
        let (drl, last) = DirtyRegionLog::open(tmp.path(), 64 * MIB, 4096).unwrap();
        assert_eq!(last.dirty, vec![3]);
        assert!(!last.clean);
        assert_eq!(last.checkpoint_seq, 1);
        assert_eq!(drl.dirty_regions(), vec![3]);
        drl.clear_all(true).unwrap();
        let d = DirtyRegionLog::peek(tmp.path()).unwrap().unwrap();
        assert!(d.clean && d.dirty().next().is_none());
        let (_, last) = DirtyRegionLog::open(tmp.path(), 64 * MIB, 4096).unwrap();
        assert!(last.dirty.is_empty() && last.clean);
    }

    #[test]
    fn concurrent_writers_never_proceed_before_their_region_is_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let (drl, _) = DirtyRegionLog::open(tmp.path(), 256 * MIB, 4096).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let drl = &drl;
                let dir = tmp.path();
                s.spawn(move || {
                    for i in 0..64u64 {
                        let off = ((i * 7 + t * 3) % 16) * 16 * MIB;
                        let e = drl.enter(off, 4096).unwrap();
                        assert!(on_disk(dir).contains(&(off / (16 * MIB))));
                        drl.leave(e, i + 1);
                        if i % 16 == 0 {
                            drl.clear_idle(0).unwrap();
                        }
                    }
                });
            }
        });
    }
}
