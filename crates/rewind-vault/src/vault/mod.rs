//! The vault: creating, opening, appending, flushing (group commit) and sealing.
//! Listing lives in [`listing`], points and point-in-time views in [`points`].

mod damage;
mod fixup;
mod intents;
mod listing;
mod placed;
mod points;
mod repair;
mod scope;
mod seal;
mod suspect;
mod unit;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rewind_format::compress::{Compression, StoredAs};
use rewind_format::delta_map::{DeltaMap, Interval};
use rewind_format::manifest::{Manifest, MapEntry, SealPolicy, SegmentEntry, SnapshotEntry};
use rewind_format::record::{NewRecord, RecordKind};
use rewind_format::segment::HEADER_LEN as SEG_HEADER_LEN;
use rewind_format::{names, Generation, SegmentId, Seq};
use rewind_storage::{Open, Storage};

use crate::base::BaseImage;
use crate::cache::{CacheLimits, CacheStats};
use crate::error::{corrupted, Corruption, IoContext, Result, VaultError};
use crate::lock::VaultLock;
use crate::point::{format_time, now_ns, Point, ResolvedPoint};
use crate::shared::Shared;
use crate::view::PointView;
use crate::write_log::open_segment::{OpenSegment, BUFFER_BYTES};
use crate::write_log::reader::SegmentFiles;
use crate::write_log::scan::{scan_sealed, ScannedMarker};
use crate::write_log::writer::LogWriter;
use crate::write_log::RecordMeta;
use crate::{fsutil, manifest_store, Progress};

pub use damage::Damage;
pub use placed::RecordPlace;
pub use repair::{ManifestRepair, MapRepair};
use seal::Sealing;
pub use suspect::SuspectMark;
pub use unit::HostOp;
use unit::RecordSpec;

/// What `rewind init` asks for.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub primary: PathBuf,
    pub vault: PathBuf,
    pub block_size: u32,
    pub compression: Compression,
    pub seal: SealPolicy,
}

/// A summary of a vault, for `status` and `list`.
#[derive(Debug, Clone)]
pub struct VaultInfo {
    pub dir: PathBuf,
    pub vault_id: String,
    pub primary: String,
    pub block_size: u32,
    pub volume_size: u64,
    pub created_ns: i64,
    pub compression: Compression,
    pub seal: SealPolicy,
    pub generation: u64,
    pub newest_seq: Seq,
    pub durable_seq: Seq,
    pub open_records: u64,
    pub open_bytes: u64,
}

/// One interval of the log: sealed (with a delta map) or the open one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalInfo {
    pub seq_from: Seq,
    pub seq_to: Seq,
    pub time_from_ns: i64,
    pub time_to_ns: i64,
    /// Distinct blocks the interval changed.
    pub blocks_changed: u64,
    /// Bytes of write log the interval takes.
    pub log_bytes: u64,
    pub sealed: bool,
    pub flags: u16,
}

/// Why the vault refuses writes (see [`Vault::write_refusal`]).
#[derive(Debug, Clone)]
pub struct WriteRefusal {
    pub since: std::time::SystemTime,
    pub reason: String,
    pub path: PathBuf,
    /// Writes resume by themselves once the cause is gone (space freed).
    pub retries_by_itself: bool,
}

/// Where the open segment stands, for tests that simulate crashes.
#[derive(Debug, Clone)]
pub struct LogPosition {
    pub segment: PathBuf,
    /// Bytes of the segment a completed flush made durable.
    pub durable_bytes: u64,
    pub durable_seq: Seq,
}

#[derive(Debug)]
struct Inner {
    manifest: Manifest,
    open: OpenSegment,
    durable_seq: Seq,
    durable_bytes: u64,
    syncing: bool,
    poisoned: bool,
    /// What poisoned it was a full file system (the host is told ENOSPC, not EIO).
    poisoned_no_space: bool,
    crashed: bool,
    last_ts: i64,
    scratch: Vec<u8>,
    /// When a seal the policy asked for last failed, and how many tries failed in a row.
    seal_failed: Option<(std::time::Instant, u64)>,
    /// The manifest's delta map chain, shared with views, and the generation it is of.
    chain: Option<(Generation, Arc<[MapEntry]>)>,
    /// The interval being sealed in the background (or whose seal failed and waits to be
    /// tried again): its segment is closed and durable, the manifest does not list it yet,
    /// and `open` is the segment after it (see `seal.rs`).
    sealing: Option<Sealing>,
}

impl Inner {
    /// A sync failed (or a commit failed after its rename): memory and disk may disagree,
    /// so nothing more is promised until the vault is reopened.
    fn poison(&mut self, cause: &VaultError) {
        self.poisoned = true;
        self.poisoned_no_space |= cause.is_no_space();
    }

    fn poisoned_error(&self) -> VaultError {
        VaultError::Poisoned {
            no_space: self.poisoned_no_space,
        }
    }
}

/// An open vault. A writer holds the vault's lock; a read-only vault does not and never
/// changes a file.
#[derive(Debug)]
pub struct Vault {
    dir: PathBuf,
    /// Where every file of the vault is (and the primary, for the live volume).
    fs: Arc<dyn Storage>,
    _lock: Option<VaultLock>,
    /// Writes the write log in the background (writers only).
    log_writer: Option<Arc<LogWriter>>,
    shared: Arc<Shared>,
    inner: Mutex<Inner>,
    synced: Condvar,
    /// A seal's outcome was applied (see `seal.rs`).
    seal_done: Condvar,
    /// Seal under the lock, as before the background sealer (benchmarks compare).
    seal_inline: std::sync::atomic::AtomicBool,
    /// Damaged files the vault opened despite (see [`Vault::damage`]).
    damage: Vec<Damage>,
}

impl Vault {
    /// Creates a vault protecting `opts.primary`: copies the base image (sparse), writes the
    /// first manifest and an empty open segment. The vault directory must be new or empty.
    /// Files are local; see [`Vault::create_on`] for another storage.
    pub fn create(opts: &CreateOptions, progress: &dyn Progress) -> Result<Vault> {
        Self::create_on(rewind_storage::local(), opts, progress)
    }

    /// [`Vault::create`] on `fs` (the primary is read through it too).
    pub fn create_on(
        fs: Arc<dyn Storage>,
        opts: &CreateOptions,
        progress: &dyn Progress,
    ) -> Result<Vault> {
        if !rewind_format::valid_block_size(opts.block_size) {
            return Err(VaultError::BadBlockSize(opts.block_size));
        }
        let dir = &opts.vault;
        match fs.list(dir) {
            Ok(names) if !names.is_empty() => {
                return Err(VaultError::NotEmpty { path: dir.clone() })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).io("list", dir),
        }
        let primary = fs
            .open(&opts.primary, Open::read())
            .io("open primary", &opts.primary)?;
        let size = primary.len().io("find the size of", &opts.primary)?;
        if size == 0 {
            return Err(VaultError::EmptyPrimary {
                path: opts.primary.clone(),
            });
        }
        if size % u64::from(opts.block_size) != 0 {
            return Err(VaultError::PrimarySize {
                path: opts.primary.clone(),
                size,
                block_size: opts.block_size,
            });
        }
        fs.create_dir(dir).io("create", dir)?;
        let result = Self::create_in(&fs, opts, primary.as_ref(), size, progress);
        if result.is_err() {
            // Leave the directory as we found it: empty.
            for name in fs.list(dir).unwrap_or_default() {
                let p = dir.join(name);
                let _ = match fs.stat(&p) {
                    Ok(st) if st.kind == rewind_storage::Kind::Dir => fs.remove_dir_all(&p),
                    _ => fs.remove(&p),
                };
            }
        }
        result
    }

    fn create_in(
        fs: &Arc<dyn Storage>,
        opts: &CreateOptions,
        primary: &dyn rewind_storage::StorageFile,
        size: u64,
        progress: &dyn Progress,
    ) -> Result<Vault> {
        let dir = &opts.vault;
        let lock = VaultLock::acquire(fs.as_ref(), dir, "rewind init")?;
        for sub in [names::BASE_DIR, names::LOG_DIR, names::MAPS_DIR] {
            fs.create_dir(&dir.join(sub)).io("create", &dir.join(sub))?;
        }
        let primary_path = fs.canonical(&opts.primary);
        let created_ns = now_ns();
        let id_src = format!(
            "{created_ns}:{}:{}",
            std::process::id(),
            primary_path.display()
        );
        let mut vault_id = [0u8; 16];
        vault_id.copy_from_slice(&blake3::hash(id_src.as_bytes()).as_bytes()[..16]);
        BaseImage::create(
            fs.as_ref(),
            primary,
            &opts.primary,
            size,
            opts.block_size,
            &dir.join(names::BASE_DIR),
            progress,
        )?;
        OpenSegment::create(
            fs.as_ref(),
            &dir.join(names::LOG_DIR),
            SegmentId(Seq(1)),
            opts.block_size,
            vault_id,
            None,
        )?;
        let m = Manifest {
            generation: Generation(1),
            vault_id,
            created_ns,
            block_size: opts.block_size,
            volume_size: size,
            compression: opts.compression,
            seal: opts.seal,
            next_seq: Seq(1),
            primary: primary_path.display().to_string(),
            segments: Vec::new(),
            maps: Vec::new(),
            snapshots: Vec::new(),
            suspects: Vec::new(),
            intents: Vec::new(),
        };
        manifest_store::commit(fs.as_ref(), dir, &m)?;
        fsutil::sync_dir(fs.as_ref(), dir)?;
        Self::open_with(fs.clone(), dir, Some(lock))
    }

    /// Opens a vault for writing: takes the lock, recovers the open segment (cutting a torn
    /// tail), and finishes a seal that a crash interrupted.
    pub fn open(dir: &Path) -> Result<Vault> {
        Self::open_as(dir, "rewind")
    }

    /// [`Vault::open`], saying who holds the lock (shown to a second writer).
    pub fn open_as(dir: &Path, role: &str) -> Result<Vault> {
        Self::open_on(rewind_storage::local(), dir, role)
    }

    /// [`Vault::open_as`] on `fs`.
    pub fn open_on(fs: Arc<dyn Storage>, dir: &Path, role: &str) -> Result<Vault> {
        // Check before taking the lock, which would create LOCK in any directory.
        if !manifest_store::exists(fs.as_ref(), dir) {
            return Err(VaultError::NotAVault {
                path: dir.to_path_buf(),
            });
        }
        let lock = VaultLock::acquire(fs.as_ref(), dir, role)?;
        Self::open_with(fs, dir, Some(lock))
    }

    /// Opens a vault for reading only, without the lock: a writer may be running. Shows the
    /// state on disk when opened.
    pub fn open_read_only(dir: &Path) -> Result<Vault> {
        Self::open_read_only_on(rewind_storage::local(), dir)
    }

    /// [`Vault::open_read_only`] on `fs`.
    pub fn open_read_only_on(fs: Arc<dyn Storage>, dir: &Path) -> Result<Vault> {
        Self::open_with(fs, dir, None)
    }

    fn open_with(fs: Arc<dyn Storage>, dir: &Path, lock: Option<VaultLock>) -> Result<Vault> {
        let repair = lock.is_some();
        let mut found = Vec::new();
        let (manifest, mpath) = if repair {
            match manifest_store::load(fs.as_ref(), dir) {
                Ok(m) => m,
                Err(e @ VaultError::Corrupted { .. }) => {
                    return Err(match manifest_store::load_or_previous(fs.as_ref(), dir) {
                        Ok((m, _, Some(_))) => VaultError::ManifestDamaged {
                            source: Box::new(e),
                            previous: m.generation.0,
                        },
                        _ => e,
                    })
                }
                Err(e) => return Err(e),
            }
        } else {
            let (m, p, bad) = manifest_store::load_or_previous(fs.as_ref(), dir)?;
            if let Some((current, e)) = bad {
                tracing::info!(error = %e, previous = %p.display(), "the current manifest is damaged; reading the vault as of the previous one");
                found.push(damage::manifest(&current, corruption_text(&e), &m));
            }
            (m, p)
        };
        let bs = manifest.block_size;
        if manifest.volume_size % u64::from(bs) != 0 || manifest.volume_size == 0 {
            return Err(corrupted(
                &mpath,
                0,
                Corruption::Inconsistent("volume size is not whole blocks"),
            ));
        }
        let blocks = manifest.volume_size / u64::from(bs);
        let base_dir = dir.join(names::BASE_DIR);
        let (base, sums_damage) = BaseImage::open(fs.as_ref(), &base_dir, bs, blocks)?;
        if let Some((e, layout)) = sums_damage {
            tracing::info!(error = %e, "base.sums is damaged; base image blocks are checked against their own sums");
            found.push(damage::base_sums(
                &base_dir.join(names::BASE_SUMS),
                corruption_text(&e),
                layout,
            ));
        }
        let log_dir = dir.join(names::LOG_DIR);
        let segments = SegmentFiles::new(fs.clone(), log_dir.clone(), bs, manifest.vault_id);
        for s in &manifest.segments {
            let p = segments.path(s.id);
            match fs.stat(&p) {
                Ok(m) if m.len >= s.length => {}
                Ok(m) => found.push(damage::segment(&p, s, Some(m.len))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    found.push(damage::segment(&p, s, None))
                }
                Err(e) => return Err(e).io("stat", &p),
            }
        }
        let maps_dir = dir.join(names::MAPS_DIR);
        for e in &manifest.maps {
            let p = maps_dir.join(names::delta_map(e.interval.seq_from, e.interval.seq_to));
            match fs.stat(&p) {
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    found.push(damage::map(&p, e))
                }
                Err(err) => return Err(err).io("stat", &p),
            }
        }
        for d in &found {
            tracing::info!(file = %d.path.display(), error = %d.error, breaks = %d.breaks, "the vault is damaged");
        }
        let log_writer = if repair {
            Some(Arc::new(LogWriter::start(BUFFER_BYTES)?))
        } else {
            None
        };
        let open = OpenSegment::recover(
            fs.as_ref(),
            &log_dir,
            SegmentId(manifest.next_seq),
            bs,
            manifest.vault_id,
            log_writer.as_ref(),
        )?;
        let (sealing, open) =
            Self::recover_chain(fs.as_ref(), &log_dir, &manifest, open, log_writer.as_ref())?;
        if repair {
            remove_leftovers(fs.as_ref(), dir, &manifest, open.id);
        }
        let last_ts = open
            .records
            .last()
            .or(sealing.as_ref().and_then(|s| s.seg.records.last()))
            .map(|r| r.timestamp_ns)
            .or(manifest.segments.last().map(|s| s.time_to_ns))
            .unwrap_or(manifest.created_ns)
            .max(manifest.created_ns);
        let durable_seq = open.last_seq();
        let durable_bytes = open.written;
        let shared = Arc::new(Shared::new(
            bs,
            blocks,
            base,
            segments,
            dir.join(names::MAPS_DIR),
        ));
        let vault = Vault {
            dir: dir.to_path_buf(),
            fs: fs.clone(),
            _lock: lock,
            log_writer,
            shared,
            inner: Mutex::new(Inner {
                manifest,
                open,
                durable_seq,
                durable_bytes,
                syncing: false,
                poisoned: false,
                poisoned_no_space: false,
                crashed: false,
                last_ts,
                scratch: Vec::new(),
                seal_failed: None,
                chain: None,
                sealing,
            }),
            synced: Condvar::new(),
            seal_done: Condvar::new(),
            seal_inline: std::sync::atomic::AtomicBool::new(false),
            damage: found,
        };
        if repair {
            // Not needed to open: a full disk must not keep the vault from opening. Seals
            // are waited for, so that the vault opens as sealed as it can be: first an
            // interval whose seal a power cut interrupted, then the open one if due.
            let mut inner = vault.lock();
            if inner.sealing.is_some() {
                let (g, sealed) = vault.seal_step(inner);
                inner = g;
                if let Err(e) = sealed {
                    tracing::warn!(error = %e, "could not seal the interval a power cut left unsealed on opening the vault");
                }
            }
            let ends_with_marker = inner
                .open
                .records
                .last()
                .is_some_and(|r| r.kind == RecordKind::Marker);
            if inner.sealing.is_none() && (ends_with_marker || vault.policy_wants_seal(&inner)) {
                if let (_, Err(e)) = vault.seal_step(inner) {
                    tracing::warn!(error = %e, "could not seal the open interval on opening the vault");
                }
            }
        }
        Ok(vault)
    }

    /// The open segment the manifest names, and the segment after it when that continues
    /// it (its first seq follows the first's last record): then a power cut fell between a
    /// seal's switch and its commit, the first is closed (back to the sealing slot) and
    /// the second is the open one. A later segment that does not continue it is a
    /// leftover (see `remove_leftovers`).
    fn recover_chain(
        fs: &dyn Storage,
        log_dir: &Path,
        manifest: &Manifest,
        open: OpenSegment,
        log_writer: Option<&Arc<LogWriter>>,
    ) -> Result<(Option<Sealing>, OpenSegment)> {
        let next_id = SegmentId(open.last_seq().next());
        if open.records.len() == 0 || !fs.exists(&log_dir.join(names::segment(next_id))) {
            return Ok((None, open));
        }
        let next_path = log_dir.join(names::segment(next_id));
        if !Self::header_written(fs, &next_path)? {
            // Created by a switch and never synced (a flush syncs it before it promises a
            // record in it): nothing in it was promised, so it is a leftover
            // (`remove_leftovers`), and the closed segment stays the open one.
            tracing::info!(segment = %next_path.display(), "a segment a seal created never reached the disk; the interval before it stays open");
            return Ok((None, open));
        }
        let next = OpenSegment::recover(
            fs,
            log_dir,
            next_id,
            manifest.block_size,
            manifest.vault_id,
            log_writer,
        )?;
        tracing::info!(segment = %open.path.display(), "a seal was cut before its commit: sealing its interval again");
        Ok((Sealing::recovered(open), next))
    }

    /// Whether a segment file holds more than zeroes where its header goes (a header that
    /// is there but damaged is damage, named by the recovery that reads it).
    fn header_written(fs: &dyn Storage, path: &Path) -> Result<bool> {
        let file = fsutil::open_vault_file(fs, path)?;
        let mut head = vec![0u8; SEG_HEADER_LEN];
        let n = file.read_at(&mut head, 0).io("read", path)?;
        Ok(!fsutil::is_zero(&head[..n]))
    }

    /// The vault lock; a background seal that has ended meanwhile is applied first.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock_raw();
        self.reap_seal(&mut inner);
        inner
    }

    fn lock_raw(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writable(&self) -> Result<MutexGuard<'_, Inner>> {
        if self._lock.is_none() {
            return Err(VaultError::ReadOnly);
        }
        let inner = self.lock();
        if inner.poisoned {
            return Err(inner.poisoned_error());
        }
        Ok(inner)
    }

    /// Sets how many segment files readers keep open and how many delta map entries stay
    /// loaded (see [`CacheLimits`]); what is over the new limits is let go at once.
    pub fn set_cache_limits(&self, limits: CacheLimits) {
        self.shared.set_cache_limits(limits);
    }

    /// What the readers' caches hold now.
    pub fn cache_stats(&self) -> CacheStats {
        self.shared.cache_stats()
    }

    /// The vault directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The storage the vault's files are on (the live volume opens the primary there too).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.fs
    }

    pub(crate) fn fs(&self) -> &dyn Storage {
        self.fs.as_ref()
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.shared.block_size
    }

    /// Volume size in blocks.
    pub fn blocks(&self) -> u64 {
        self.shared.blocks
    }

    /// Blocks read from the base image since the vault was opened, by every view of it
    /// (what its holes save: a hole is never read).
    pub fn base_blocks_read(&self) -> u64 {
        self.shared.base.blocks_read()
    }

    /// The seq of the newest record.
    pub fn newest_seq(&self) -> Seq {
        self.lock().open.last_seq()
    }

    /// A summary of the vault.
    pub fn info(&self) -> VaultInfo {
        let inner = self.lock();
        let m = &inner.manifest;
        VaultInfo {
            dir: self.dir.clone(),
            vault_id: m.vault_id.iter().map(|b| format!("{b:02x}")).collect(),
            primary: m.primary.clone(),
            block_size: m.block_size,
            volume_size: m.volume_size,
            created_ns: m.created_ns,
            compression: m.compression,
            seal: m.seal,
            generation: m.generation.0,
            newest_seq: inner.open.last_seq(),
            durable_seq: inner.durable_seq,
            open_records: inner.open.records.len() as u64,
            open_bytes: inner.open.len() - SEG_HEADER_LEN as u64,
        }
    }

    // ---- appending -------------------------------------------------------------------

    fn check_range(&self, first_block: u64, count: u64) -> Result<()> {
        match first_block.checked_add(count) {
            Some(end) if end <= self.shared.blocks && count > 0 => Ok(()),
            end => Err(VaultError::OutOfRange {
                first_block,
                end: end.unwrap_or(u64::MAX),
                blocks: self.shared.blocks,
            }),
        }
    }

    /// Appends a write of whole blocks at `first_block`: one host write, one unit for
    /// points (see [`HostOp`]). Returns the seq of the last record. Durable once
    /// [`Vault::flush`] returns.
    pub fn write(&self, first_block: u64, data: &[u8]) -> Result<Seq> {
        self.apply(&[HostOp::Write { first_block, data }])
    }

    /// Hands every record appended so far to the disk (no fsync, no wait). Appends are
    /// buffered (up to 1 MiB) and written in the background; [`Vault::flush`] makes them
    /// durable. The server calls this once a second so that records do not stay in
    /// memory when the host does not flush.
    pub fn write_out(&self) -> Result<()> {
        let mut inner = self.lock_writable()?;
        inner.open.write_out()
    }

    /// Appends a zero record: the blocks read as zeroes from here on.
    pub fn zero(&self, first_block: u64, count: u64) -> Result<Seq> {
        self.apply(&[HostOp::Zero { first_block, count }])
    }

    /// Appends a trim record: the blocks were discarded and read as zeroes from here on.
    pub fn trim(&self, first_block: u64, count: u64) -> Result<Seq> {
        self.apply(&[HostOp::Trim { first_block, count }])
    }

    /// Appends one host write made of several parts (e.g. a write-zeroes whose unaligned
    /// edges are writes of their blocks) as one unit: no point, seal or marker falls between
    /// its records. Returns the seq of the last record.
    pub fn apply(&self, ops: &[HostOp<'_>]) -> Result<Seq> {
        let mut inner = self.lock_writable()?;
        let seqs = self.append_unit(&mut inner, ops, RecordKind::Write)?;
        self.seal_if_due(inner);
        Ok(seqs.1)
    }

    /// Appends a marker named `name`, makes everything before it durable and seals the
    /// interval it ends, so that the snapshot reads straight from a delta map.
    pub fn snapshot(&self, name: &str, app_consistent: bool) -> Result<SnapshotEntry> {
        crate::point::check_snapshot_name(name)?;
        let inner = self.lock_writable()?;
        // Seals in flight (or failed, tried again) end first, so that the seal of the
        // marker's interval starts right after the marker: no host write comes between
        // and the snapshot reads straight from its delta map.
        let (mut inner, _) = self.wait_for_seal(inner);
        if inner.sealing.is_some() {
            inner = self.seal_step(inner).0;
        }
        if inner.poisoned {
            return Err(inner.poisoned_error());
        }
        if let Some(s) = Self::find_snapshot(&inner, name) {
            // A retry of a snapshot whose call failed after its marker was appended (its
            // seal or its sync failed, or a restart came between): nothing was appended
            // since, so that marker is this very point. It is made durable and returned.
            if s.seq == inner.open.last_seq() {
                self.make_durable_locked(&mut inner, s.seq)?;
                return Ok(s);
            }
            return Err(VaultError::SnapshotExists(name.to_string()));
        }
        self.refuse_if_full()?;
        let ts = self.unit_time(&mut inner);
        let seq = self.append_locked(
            &mut inner,
            &RecordSpec {
                kind: RecordKind::Marker,
                first_block: 0,
                block_count: 0,
                ts,
                continues: false,
                app_consistent,
            },
            name.as_bytes(),
            name.len() as u32,
            StoredAs::Raw,
            Some(name),
        )?;
        // Markers seal, which makes them durable. If the seal fails (a full disk for the
        // delta map), the marker is still a snapshot once it is durable in the log: the
        // open interval answers it, and the seal is tried again later.
        // A seal that failed after the marker was made durable (its manifest commit) still
        // leaves a snapshot; one whose sync failed does not: the sync may have dropped the
        // marker with the rest of what it did not write (see "fsyncgate"), and a second
        // sync would say all is well.
        let (mut inner, sealed) = self.seal_wait(inner);
        if let Err(e) = sealed {
            if inner.durable_seq < seq {
                if inner.poisoned {
                    return Err(e);
                }
                self.make_durable_locked(&mut inner, seq)?;
            }
            tracing::warn!(error = %e, snapshot = name, "the snapshot is kept in the write log; sealing its interval failed and is tried again later");
        }
        Self::find_snapshot(&inner, name)
            .filter(|s| s.seq == seq)
            .ok_or(VaultError::UnknownSnapshot(name.to_string()))
    }

    /// Makes the open segment durable up to `seq` (a marker whose seal failed).
    fn make_durable_locked(&self, inner: &mut Inner, seq: Seq) -> Result<()> {
        if inner.durable_seq >= seq {
            return Ok(());
        }
        // The marker may be in a segment a seal closed and did not sync (its job failed
        // before the sync): that one first.
        if let Some(s) = inner.sealing.as_ref().filter(|s| !s.durable) {
            let (file, path, gate) = (s.seg.file(), s.seg.path.clone(), s.gate.clone());
            let log_dir = self.dir.join(names::LOG_DIR);
            let synced = gate
                .sync(|| file.sync_data().io("fdatasync", &path))
                .and_then(|()| fsutil::sync_dir(self.fs(), &log_dir));
            if let Err(e) = synced {
                inner.poison(&e);
                return Err(e);
            }
            if let Some(s) = inner.sealing.as_mut() {
                s.durable = true;
            }
        }
        inner.open.write_out_and_wait()?;
        let path = inner.open.path.clone();
        if let Err(sync) = inner.open.file().sync_data().io("fdatasync", &path) {
            inner.poison(&sync);
            return Err(sync);
        }
        inner.durable_seq = inner.durable_seq.max(seq);
        inner.durable_bytes = inner.durable_bytes.max(inner.open.written);
        Ok(())
    }

    /// Appends one record to the open segment (the caller holds the vault lock and seals
    /// afterwards if it must: only between host writes).
    fn append_locked(
        &self,
        inner: &mut Inner,
        spec: &RecordSpec,
        stored: &[u8],
        raw_len: u32,
        stored_as: StoredAs,
        marker_name: Option<&str>,
    ) -> Result<Seq> {
        let seq = inner.open.last_seq().next();
        let r = NewRecord {
            kind: spec.kind,
            seq,
            timestamp_ns: spec.ts,
            first_block: spec.first_block,
            block_count: spec.block_count,
            durable_seq: inner.durable_seq,
            app_consistent: spec.app_consistent,
            continues: spec.continues,
        };
        inner
            .open
            .append(&r, stored, raw_len, stored_as, marker_name)?;
        Ok(seq)
    }

    /// Whether a host write would be taken now: an error while the write log's file system
    /// has no room (see [`Vault::write_refusal`]). The intercept layer asks before it
    /// writes the primary, so that a refused write changes neither.
    pub fn check_room(&self) -> Result<()> {
        self.refuse_if_full()
    }

    /// Refuses a new host write while the write log's file system has no room (the log
    /// writer keeps trying what it holds): the host gets ENOSPC, and nothing half-appended.
    fn refuse_if_full(&self) -> Result<()> {
        match self.log_writer.as_ref().and_then(|w| w.stall()) {
            Some(s) => Err(s.error()),
            None => Ok(()),
        }
    }

    /// Why the vault refuses writes now, if it does: the write log's file system is full
    /// (since when, which file), or the vault is poisoned by a failed sync.
    pub fn write_refusal(&self) -> Option<WriteRefusal> {
        if let Some(s) = self.log_writer.as_ref().and_then(|w| w.stall()) {
            return Some(WriteRefusal {
                since: s.since,
                reason: format!("no space left for the write log ({})", s.message),
                path: s.path,
                retries_by_itself: true,
            });
        }
        let (poisoned, no_space) = {
            let inner = self.lock();
            (inner.poisoned, inner.poisoned_no_space)
        };
        if poisoned {
            let why = if no_space { " for lack of space" } else { "" };
            return Some(WriteRefusal {
                since: std::time::SystemTime::now(),
                reason: format!("an earlier sync of the write log failed{why}; nothing written since can be promised (free space if the disk is full, then restart `rewind serve`)"),
                path: self.dir.join(names::LOG_DIR),
                retries_by_itself: false,
            });
        }
        None
    }

    // ---- durability ------------------------------------------------------------------

    /// Makes every record appended so far durable (fdatasync). Concurrent callers share
    /// one sync: a caller that arrives while a sync runs waits for it, and the next sync
    /// covers everyone who arrived meanwhile (group commit). Returns the durable seq.
    pub fn flush(&self) -> Result<Seq> {
        if self._lock.is_none() {
            return Err(VaultError::ReadOnly);
        }
        let mut inner = self.lock();
        let target = inner.open.last_seq();
        loop {
            if inner.poisoned {
                return Err(inner.poisoned_error());
            }
            if inner.durable_seq >= target {
                return Ok(inner.durable_seq);
            }
            if inner.syncing {
                inner = self.synced.wait(inner).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            inner.syncing = true;
            let wrote = inner.open.write_out();
            let pending = inner.open.pending_write();
            let covered = inner.open.last_seq();
            let covered_bytes = inner.open.written;
            let segment = inner.open.id;
            let file = inner.open.file();
            let path = inner.open.path.clone();
            // A segment a seal closed and the job has not synced yet: its records come
            // before the open one's, and the open one's directory entry with them.
            let closed = inner
                .sealing
                .as_ref()
                .filter(|s| !s.durable)
                .map(|s| (s.seg.id, s.seg.file(), s.seg.path.clone(), s.gate.clone()));
            drop(inner);
            // A write the log writer keeps trying for lack of space fails this flush with
            // that error and promises nothing more; the records are kept, and a later flush
            // succeeds once space is freed. Any other failure poisons: after a failed
            // fsync the page cache may have dropped the data (see "fsyncgate").
            let mut keep_going = false;
            let res = wrote
                .and_then(|()| {
                    pending.map_or(Ok(()), |(w, t)| {
                        w.wait(t).inspect_err(|_| keep_going = w.stall().is_some())
                    })
                })
                .and_then(|()| match &closed {
                    Some((_, f, p, gate)) => gate
                        .sync(|| f.sync_data().io("fdatasync", p))
                        .and_then(|()| fsutil::sync_dir(self.fs(), &self.dir.join(names::LOG_DIR))),
                    None => Ok(()),
                })
                .and_then(|()| file.sync_data().io("fdatasync", &path));
            inner = self.lock();
            inner.syncing = false;
            match &res {
                Ok(()) => {
                    if let (Some((id, _, _, _)), Some(s)) = (&closed, inner.sealing.as_mut()) {
                        if s.seg.id == *id {
                            s.durable = true;
                        }
                    }
                    if covered > inner.durable_seq {
                        inner.durable_seq = covered;
                    }
                    if inner.open.id == segment && covered_bytes > inner.durable_bytes {
                        inner.durable_bytes = covered_bytes;
                    }
                }
                Err(_) if keep_going => {}
                Err(e) => inner.poison(e),
            }
            self.synced.notify_all();
            res?;
        }
    }

    /// Where the open segment stands (for crash tests).
    pub fn log_position(&self) -> LogPosition {
        let inner = self.lock();
        LogPosition {
            segment: inner.open.path.clone(),
            durable_bytes: inner.durable_bytes,
            durable_seq: inner.durable_seq,
        }
    }

    /// Flushes and seals. Dropping a vault without closing it keeps what was flushed and
    /// what the OS had been handed, like a crash of this process.
    pub fn close(self) -> Result<()> {
        if self._lock.is_some() {
            self.flush()?;
            self.seal()?;
        }
        Ok(())
    }

    /// Drops the vault as a power cut would: records not yet handed to the OS are lost.
    #[doc(hidden)]
    pub fn crash(self) {
        let mut inner = self.lock();
        inner.open.discard_buffer();
        inner.crashed = true;
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        if self._lock.is_some() {
            // A seal in flight ends first: the next opener must not find its job running.
            let (mut inner, _) = self.wait_for_seal(self.lock());
            if !inner.crashed {
                if let Err(e) = inner.open.write_out() {
                    tracing::warn!(error = %e, "could not hand buffered records to the OS on drop");
                }
            }
            // What the log writer holds must be in the file before the lock is let go.
            if let Some((w, t)) = inner.open.pending_write() {
                if let Err(e) = w.wait(t) {
                    tracing::warn!(error = %e, "the write log's last append failed on drop");
                }
            }
        }
    }
}

/// The text of a corruption (without the path, which a [`Damage`] holds on its own).
fn corruption_text(e: &VaultError) -> String {
    match e {
        VaultError::Corrupted { offset, reason, .. } => format!("at byte {offset}: {reason}"),
        other => other.to_string(),
    }
}

/// Removes what an interrupted commit or seal left behind: temporary files, delta maps
/// the manifest does not list (their interval is still open and will be sealed again) and
/// segments after the open one (`open`: the manifest's, or the one after it that
/// continues it, see [`Vault::recover_chain`]).
fn remove_leftovers(fs: &dyn Storage, dir: &Path, m: &Manifest, open: SegmentId) {
    let listed: HashSet<String> = m
        .maps
        .iter()
        .map(|e| names::delta_map(e.interval.seq_from, e.interval.seq_to))
        .collect();
    for sub in [
        dir.to_path_buf(),
        dir.join(names::MAPS_DIR),
        dir.join(names::BASE_DIR),
        dir.join(names::LOG_DIR),
    ] {
        let Ok(entries) = fs.list(&sub) else {
            continue;
        };
        for name in entries {
            let stray_map = names::parse_delta_map(&name).is_some() && !listed.contains(&name);
            // A segment after the open one: a seal created it and failed (or was cut by a
            // crash) before committing the manifest that names it.
            let stray_segment = names::parse_segment(&name).is_some_and(|id| id > open);
            if name.ends_with(names::TMP_SUFFIX) || stray_map || stray_segment {
                let p = sub.join(&name);
                tracing::info!(file = %p.display(), "removing leftover of an interrupted commit");
                let _ = fs.remove(&p);
            }
        }
    }
}
