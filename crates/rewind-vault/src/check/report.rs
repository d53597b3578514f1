//! What a check found: problems (damaged or unreadable bytes, each with what it breaks in
//! terms of points) and notes (things worth knowing that are not damage).

use std::path::PathBuf;
use std::time::Duration;

use rewind_format::Seq;
use roaring::RoaringTreemap;

use crate::error::Corruption;

/// What is wrong with the bytes of a problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Fault {
    /// The bytes are there but wrong: a checksum, magic or structure does not match.
    #[error("{0}")]
    Corrupted(#[from] Corruption),
    /// The bytes could not be read (an I/O error such as EIO).
    #[error("cannot be read: {0}")]
    Unreadable(#[source] std::io::Error),
}

/// One damaged structure in one file.
#[derive(Debug)]
pub struct Problem {
    pub path: PathBuf,
    /// Where the damaged structure starts in the file.
    pub offset: u64,
    /// Bytes of the damaged structure from `offset`, as far as they are known (a record
    /// whose length field is damaged runs to the next record found intact).
    pub length: u64,
    /// What the structure is: "manifest", "record seq 5 (write of blocks 4..7)", ...
    pub structure: String,
    pub fault: Fault,
    /// What it breaks.
    pub impact: Impact,
}

/// What a problem breaks, in terms of points.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Impact {
    /// The vault does not open until this is repaired: no point can be read or served.
    /// For a damaged current manifest, whether the previous generation is intact: then
    /// readers open the vault as of it and writers refuse (`rewind repair` falls back to
    /// it; it lacks only the newest commit).
    Vault {
        previous_manifest_intact: Option<bool>,
    },
    /// These points, or reads of these blocks at these points, fail.
    Points(Vec<PointRange>),
    /// Only the repair after an unclean stop depends on it (the dirty region log).
    CrashRepair(String),
    /// Nothing reads it.
    Nothing(&'static str),
    /// Not known: no intact manifest says what reads it (the vault does not open anyway).
    Unknown,
}

/// Points `from..=to` (seqs) that a problem breaks.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRange {
    pub from: Seq,
    pub to: Seq,
    /// `None`: every read of these points fails (their view cannot be built). `Some`: reads
    /// of these blocks fail (at each of these points they still come from the damage).
    pub blocks: Option<RoaringTreemap>,
    /// Snapshots in the range.
    pub snapshots: Vec<String>,
}

/// Something worth knowing that is not damage: a leftover of an interrupted commit, a torn
/// tail the next open cuts, a file rewind does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub path: PathBuf,
    pub text: String,
}

/// The result of a check.
#[derive(Debug)]
pub struct CheckReport {
    pub dir: PathBuf,
    /// Run inside the server that holds the vault (while hosts write).
    pub online: bool,
    /// The manifest generation the rest was checked against (`None`: none was intact).
    pub generation: Option<u64>,
    /// The current manifest was damaged and the previous generation was used.
    pub used_previous_manifest: bool,
    /// The newest point checked (seq): the newest durable record.
    pub newest_seq: Seq,
    pub block_size: u32,
    pub volume_size: u64,
    /// Files looked at, and the bytes read from them (holes of the base image are not
    /// read: `bytes_sparse`).
    pub files: u64,
    pub bytes_read: u64,
    pub bytes_sparse: u64,
    pub elapsed: Duration,
    /// The read rate asked for (bytes per second), if any.
    pub rate: Option<u64>,
    pub problems: Vec<Problem>,
    pub notes: Vec<Note>,
    /// Stopped before the end (cancelled): what it covered is reported.
    pub cancelled: bool,
}

impl CheckReport {
    /// No problem found and the check ran to its end.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && !self.cancelled
    }
}
