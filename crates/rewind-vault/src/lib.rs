//! The vault: rewind's secondary store.
//!
//! A vault directory holds the base image (the primary at seq 0), the write log (every
//! write, zero, trim and marker, in seq order), one delta map per sealed interval, and the
//! manifest that ties them together. From these it answers any point in time: see
//! [`Vault::view`] and [`PointView`].
//!
//! ```text
//! vault/
//!   manifest-<generation>      the root (current and previous)
//!   LOCK                       held by the one writer
//!   base/base.img, base.sums   base image (sparse) and per-block checksums
//!   log/seg-<first seq>.log    write log segments; the newest is open
//!   maps/map-<from>-<to>.dmap  delta maps of sealed intervals
//! ```

mod base;
mod cache;
mod chain_index;
pub mod check;
mod error;
mod fsutil;
mod lock;
mod manifest_store;
mod point;
mod shared;
mod vault;
mod view;
mod write_log;

pub use base::SumsRepair;
pub use cache::{CacheLimits, CacheStats, MemoryStats};
pub use error::{Corruption, Result, VaultError};
pub use point::{check_snapshot_name, format_time, now_ns, Point, ResolvedPoint};
pub use rewind_format::compress::Compression;
pub use rewind_format::intent::{Intent, RestoreInPlace, Serving};
pub use rewind_format::manifest::{
    MapEntry, SealPolicy, SnapshotEntry, SuspectEntry, SUSPECT_DIFFERS, SUSPECT_UNREADABLE,
};
pub use rewind_format::Seq;
pub use vault::{
    CreateOptions, Damage, HostOp, IntervalInfo, LogPosition, ManifestRepair, MapRepair,
    RecordPlace, SuspectMark, Vault, VaultInfo, WriteRefusal,
};
pub use view::{BlockSource, Extent, ExtentKind, Origin, PointView};

/// Reports progress of long work (copying, restoring). Implementations draw bars; the
/// library only counts.
pub trait Progress: Sync {
    /// Work called `what` of `total` units begins.
    fn start(&self, _what: &str, _total: u64) {}
    /// `n` more units are done.
    fn advance(&self, _n: u64) {}
    /// The work is over.
    fn finish(&self) {}
}

/// Progress that is not shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
