//! rewind's engine: the work done with a vault.
//!
//! - [`check`]: `rewind check`, the vault's scrub and the dirty region log's.
//! - [`intercept`]: the live volume every host write passes through (primary + write log).
//! - [`drl`]: the dirty region log: which regions an unclean stop may have left differing.
//! - [`exports`]: the live volume and points in time as NBD exports.
//! - [`protect`]: one primary, one protector: the primary lock, the protection stamp, and
//!   the check that a restore target is neither a primary nor inside a vault.
//! - [`recovery`]: what serving does first after an unclean stop, the one way it is done.
//! - [`restore`]: new images of past points.
//! - [`verify`]: verify and sync (scan-compare), fix-up records and suspect marking.
//!
//! Later: retention, replication.

pub mod behind;
pub mod check;
pub mod direct;
pub mod drl;
pub mod exports;
pub mod intercept;
pub mod protect;
pub mod recovery;
pub mod restore;
pub mod verify;
