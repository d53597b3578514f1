//! Verify and sync (scan-compare): find every block where the vault disagrees with the
//! primary, and repair the vault from the primary while the host keeps writing.
//!
//! - [`verify`] scans the primary region by region and compares each region with the same
//!   region of the vault's image at the point the scan began (a [`PointView`]). Discrepant
//!   blocks go into the **compare delta map**. Blocks the host changes while the scan runs
//!   (the **scan delta map**, from [`LiveVolume::track_changes`]) are subtracted at the end:
//!   their new data is in the write log anyway, and comparing them would race the host. A
//!   vault block that cannot be read (checksum, missing file) is a discrepancy, named as
//!   such, never an abort. The scan takes no locks while it reads (the view is fixed and
//!   anything the host changes is subtracted); once it is done it takes the region locks
//!   of the blocks it found different, which waits for host writes that had put their
//!   data in the primary but not yet recorded their change.
//! - [`sync`] seals the open interval (so the scan's point is the end of the delta map chain),
//!   verifies, marks **suspect** the delta maps (or the base image) that gave the vault its
//!   wrong copy of each discrepant block ([`suspect`]), then copies the discrepant blocks
//!   from the primary into the vault as fix-up records, each under the blocks' region locks
//!   so a host write to the same blocks lands entirely before or after it. The interval that
//!   holds the fix-ups (the revised compare map plus the **host change delta map**, what the
//!   host wrote meanwhile) is sealed and flagged fix-up: the **fix-up delta map**.
//!
//! Both work online ([`Target::Live`], inside `rewind serve`) and offline
//! ([`Target::Offline`], no server: a read-only vault for verify, the writer for sync), and
//! both take a region filter ([`VerifyOptions::only_regions`]) so that a dirty region log
//! can limit the scan to the regions it lists.

mod scan;
pub mod suspect;
mod sync;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rewind_vault::{IntervalInfo, PointView, ResolvedPoint, SuspectMark, Vault, VaultError};
use roaring::RoaringTreemap;

use crate::intercept::{ChangeTracker, InterceptError, LiveVolume};

pub use rewind_vault::Progress;

/// Region size used when none is asked for.
pub const DEFAULT_REGION_SIZE: u64 = 64 * 1024;
/// Largest region size accepted.
pub const MAX_REGION_SIZE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Intercept(#[from] InterceptError),
    #[error("{op} primary {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("region size {region_size} {}", region_size_problem(*region_size, *block_size))]
    RegionSize { region_size: u64, block_size: u32 },
    #[error("region {region} is outside the volume ({regions} regions of {region_size} bytes)")]
    RegionOutOfRange {
        region: u64,
        regions: u64,
        region_size: u64,
    },
    #[error("primary {path} is {actual} bytes but the vault protects a {expected}-byte volume; is this the right primary?")]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("a worker thread panicked while scanning")]
    WorkerPanicked,
    #[error("{what} {value} is out of range (at most {max})")]
    OutOfRange {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("could not start a scan thread: {0}")]
    Spawn(std::io::Error),
}

pub type Result<T, E = VerifyError> = std::result::Result<T, E>;

/// What to scan, and how.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Bytes per region (a multiple of the block size): the unit that is read and
    /// compared at once, and that the report lists.
    pub region_size: u64,
    /// Scan only these regions (indexes: byte offset / `region_size`). `None`: the whole
    /// volume. A dirty region log passes the regions it lists.
    pub only_regions: Option<RoaringTreemap>,
    /// Worker threads that read and compare (0: one per CPU, at most 4).
    pub threads: usize,
    /// Bytes each worker reads per step (rounded to whole regions; 0: 4 MiB).
    pub chunk_bytes: u64,
    /// Set it to stop early; the report then says `cancelled`.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Whether sync marks the intervals that held the vault's wrong copies suspect. The
    /// repair after an unclean stop does not: there the differences are writes whose
    /// records were lost with the process (or the machine), not damage to history.
    pub mark_suspect: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            region_size: DEFAULT_REGION_SIZE,
            only_regions: None,
            threads: 0,
            chunk_bytes: 0,
            cancel: None,
            mark_suspect: true,
        }
    }
}

impl VerifyOptions {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// What verify found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The vault point the primary was compared with.
    pub point: ResolvedPoint,
    pub block_size: u32,
    pub region_size: u64,
    pub volume_size: u64,
    /// Regions read and compared.
    pub regions_scanned: u64,
    pub bytes_scanned: u64,
    /// Of `bytes_scanned`, bytes known equal without reading: a hole in the primary and,
    /// in the vault, zeroed blocks or a hole of the base image with zero checksums.
    pub bytes_sparse: u64,
    /// The compare delta map: every block where the vault's copy differs from the primary
    /// (or cannot be read), with the host's changes during the scan subtracted.
    pub compare: RoaringTreemap,
    /// Blocks of `compare` whose vault copy could not be read, and why.
    pub unreadable: BTreeMap<u64, String>,
    /// Blocks the host changed while the scan ran (the scan delta map); never reported.
    pub scan_changed: u64,
    pub elapsed: Duration,
    /// The scan was stopped before it covered everything.
    pub cancelled: bool,
}

impl VerifyReport {
    /// No discrepancy (and the whole selection was scanned).
    pub fn is_clean(&self) -> bool {
        self.compare.is_empty() && !self.cancelled
    }

    /// Indexes of the regions holding a discrepant block.
    pub fn discrepant_regions(&self) -> RoaringTreemap {
        let per = self.region_size / u64::from(self.block_size);
        let mut out = RoaringTreemap::new();
        for b in self.compare.iter() {
            out.insert(b / per);
        }
        out
    }

    /// The discrepant regions as byte ranges `(offset, length)`, adjacent ones merged.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for r in self.discrepant_regions().iter() {
            let off = r * self.region_size;
            let len = self.region_size.min(self.volume_size - off);
            match out.last_mut() {
                Some((o, l)) if *o + *l == off => *l += len,
                _ => out.push((off, len)),
            }
        }
        out
    }
}

/// What sync did.
#[derive(Debug, Clone)]
pub struct SyncReport {
    /// The scan (its compare delta map is what was copied).
    pub verify: VerifyReport,
    /// The delta maps (and the base image) marked suspect, with their blocks.
    pub suspect: Vec<SuspectMark>,
    /// Blocks copied from the primary as fix-up records.
    pub fixup_blocks: u64,
    /// Fix-up records appended: inclusive seq ranges.
    pub fixup_records: Vec<(rewind_vault::Seq, rewind_vault::Seq)>,
    /// Blocks the host changed while the copy ran (the host change delta map).
    pub host_changed: u64,
    /// Blocks of the fix-up delta map: the copied ones and the host's changes meanwhile.
    pub fixup_map_blocks: u64,
    /// The sealed intervals flagged fix-up (they hold the fix-up records).
    pub fixup_intervals: Vec<IntervalInfo>,
    pub elapsed: Duration,
}

/// The primary opened without a server: read-only, next to its vault.
#[derive(Debug)]
pub struct OfflineVolume {
    primary: Arc<dyn rewind_storage::StorageFile>,
    path: PathBuf,
    vault: Arc<Vault>,
    size: u64,
}

impl OfflineVolume {
    /// Opens `primary` read-only and checks that it has the size of the volume `vault`
    /// protects. `vault` may be read-only (verify) or the writer (sync).
    pub fn open(primary: &Path, vault: Arc<Vault>) -> Result<OfflineVolume> {
        let io = |op, source| VerifyError::Io {
            op,
            path: primary.to_path_buf(),
            source,
        };
        let file = vault
            .storage()
            .open(primary, rewind_storage::Open::read())
            .map_err(|e| io("open", e))?;
        let actual = file.len().map_err(|e| io("size", e))?;
        let expected = vault.blocks() * u64::from(vault.block_size());
        if actual != expected {
            return Err(VerifyError::SizeMismatch {
                path: primary.to_path_buf(),
                expected,
                actual,
            });
        }
        Ok(OfflineVolume {
            primary: file,
            path: primary.to_path_buf(),
            vault,
            size: expected,
        })
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }
}

/// What verify and sync work on.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The volume `rewind serve` serves: hosts keep writing; their changes are tracked and
    /// copies take the region locks.
    Live(&'a LiveVolume),
    /// No server: nothing else writes the primary or the vault.
    Offline(&'a OfflineVolume),
}

impl Target<'_> {
    /// The vault.
    pub fn vault(&self) -> &Arc<Vault> {
        match self {
            Target::Live(v) => v.vault(),
            Target::Offline(v) => &v.vault,
        }
    }

    fn size(&self) -> u64 {
        match self {
            Target::Live(v) => v.size(),
            Target::Offline(v) => v.size,
        }
    }

    /// The primary's path.
    pub fn primary_path(&self) -> &Path {
        match self {
            Target::Live(v) => v.primary_path(),
            Target::Offline(v) => &v.path,
        }
    }

    /// Reads the primary at `offset` into `buf` (entirely).
    fn read_primary(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match self {
            Target::Live(v) => Ok(v.read(offset, buf)?),
            Target::Offline(v) => {
                v.primary
                    .read_exact_at(buf, offset)
                    .map_err(|source| VerifyError::Io {
                        op: "read",
                        path: v.path.clone(),
                        source,
                    })
            }
        }
    }

    /// The extent of the primary that starts at `offset`: its length (at most `limit`)
    /// and whether it is a hole (reads as zeroes). Data when in doubt (block devices, file
    /// systems that cannot say).
    fn primary_extent(&self, offset: u64, limit: u64) -> (u64, bool) {
        let limit = limit.min(self.size().saturating_sub(offset)).max(1);
        match self {
            Target::Live(v) => v
                .allocation(offset, limit)
                .first()
                .copied()
                .unwrap_or((limit, false)),
            Target::Offline(v) => file_extent(v.primary.as_ref(), offset, limit),
        }
    }

    /// Starts recording host changes (`None` offline: there is no host).
    fn track_changes(&self) -> Option<Arc<ChangeTracker>> {
        match self {
            Target::Live(v) => Some(v.track_changes()),
            Target::Offline(_) => None,
        }
    }

    /// Runs `f` with no host write to blocks first..end in flight.
    fn with_blocks_locked<T>(&self, first: u64, end: u64, f: impl FnOnce() -> T) -> T {
        match self {
            Target::Live(v) => v.with_blocks_locked(first, end, f),
            Target::Offline(_) => f(),
        }
    }
}

/// The extent of `f` starting at `offset`: (length up to `limit`, is a hole).
fn file_extent(f: &dyn rewind_storage::StorageFile, offset: u64, limit: u64) -> (u64, bool) {
    match f.next_data(offset, offset + limit) {
        Ok(None) => (limit, true),
        Ok(Some((data, _))) if data > offset => (data - offset, true),
        Ok(Some((_, end))) => ((end - offset).clamp(1, limit), false),
        // Cannot say: data (always safe).
        Err(_) => (limit, false),
    }
}

/// Runs of consecutive blocks of a set: (first, count).
fn runs(set: &RoaringTreemap) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for b in set.iter() {
        match out.last_mut() {
            Some((f, n)) if *f + *n == b => *n += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

/// Most scan threads a request may ask for.
pub const MAX_THREADS: usize = 64;
/// Most bytes a scan thread may read per step.
pub const MAX_CHUNK_BYTES: u64 = 64 << 20;

/// Checks what a caller (a user, or a control-socket client) asked for before anything is
/// allocated or started.
fn check_options(opts: &VerifyOptions, block_size: u32) -> Result<()> {
    check_region_size(opts.region_size, block_size)?;
    if opts.threads > MAX_THREADS {
        return Err(VerifyError::OutOfRange {
            what: "threads",
            value: opts.threads as u64,
            max: MAX_THREADS as u64,
        });
    }
    if opts.chunk_bytes > MAX_CHUNK_BYTES {
        return Err(VerifyError::OutOfRange {
            what: "chunk size",
            value: opts.chunk_bytes,
            max: MAX_CHUNK_BYTES,
        });
    }
    Ok(())
}

/// What is wrong with a region size, for [`VerifyError::RegionSize`].
fn region_size_problem(region_size: u64, block_size: u32) -> String {
    let bs = u64::from(block_size);
    if region_size > MAX_REGION_SIZE {
        format!("is larger than the largest, {MAX_REGION_SIZE} (64 MiB)")
    } else if region_size < bs {
        format!("is smaller than the vault's block size, {bs}")
    } else {
        format!("is not a multiple of the vault's block size, {bs}")
    }
}

fn check_region_size(region_size: u64, block_size: u32) -> Result<()> {
    let bs = u64::from(block_size);
    if region_size < bs || !region_size.is_multiple_of(bs) || region_size > MAX_REGION_SIZE {
        return Err(VerifyError::RegionSize {
            region_size,
            block_size,
        });
    }
    Ok(())
}

/// Scans `target` and compares it with the vault's image at the newest point: see the
/// module doc. Reports progress in bytes ("scanning"). Changes nothing.
pub fn verify(
    target: Target<'_>,
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let vault = target.vault();
    check_options(opts, vault.block_size())?;
    let tracker = target.track_changes();
    let view = vault.view(&rewind_vault::Point::Latest)?;
    scan::run(target, &view, tracker.as_deref(), opts, progress)
}

/// Verifies, marks suspect intervals, and copies the discrepant blocks from the primary
/// into the vault as fix-up records: see the module doc. Needs the vault's writer (the
/// server's own, online). Reports progress for the scan ("scanning") and the copy
/// ("copying").
pub fn sync(
    target: Target<'_>,
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> Result<SyncReport> {
    sync::run(target, opts, progress)
}

/// Scans with a view the caller chose (sync: the sealed point).
fn verify_at(
    target: Target<'_>,
    view: &PointView,
    tracker: Option<&ChangeTracker>,
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    scan::run(target, view, tracker, opts, progress)
}
