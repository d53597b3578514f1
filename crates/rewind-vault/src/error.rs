use std::io;
use std::path::PathBuf;

use rewind_format::{DecodeError, Seq};

/// Why a vault operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    /// Stored bytes are wrong. Never passed on silently.
    #[error("vault corrupted: {path} at byte {offset}: {reason}")]
    Corrupted {
        path: PathBuf,
        offset: u64,
        reason: Corruption,
    },

    /// The current manifest is damaged and a writer was asked to open the vault; the
    /// previous generation is intact (readers read the vault as of it).
    #[error("{source}; the previous manifest (generation {previous}) is intact: `rewind list` and `rewind restore` read the vault as of it; a writer refuses until `rewind repair` goes on from it (stop the server first; `rewind repair --dry-run` says what that loses)")]
    ManifestDamaged {
        source: Box<VaultError>,
        previous: u64,
    },

    #[error("vault {path} is in use by another writer ({holder}); stop it, or talk to it through its control socket")]
    Locked { path: PathBuf, holder: String },

    #[error("{path} is not a rewind vault (no manifest found); create one with `rewind init`")]
    NotAVault { path: PathBuf },

    #[error("vault directory {path} is not empty; pick a new or empty directory")]
    NotEmpty { path: PathBuf },

    #[error("block size {0} is not a power of two in 512..=65536")]
    BadBlockSize(u32),

    #[error("primary {path} is {size} bytes, not a multiple of the block size {block_size}")]
    PrimarySize {
        path: PathBuf,
        size: u64,
        block_size: u32,
    },

    #[error("primary {path} is empty; a volume needs at least one block")]
    EmptyPrimary { path: PathBuf },

    #[error("blocks {first_block}..{end} are outside the volume ({blocks} blocks)")]
    OutOfRange {
        first_block: u64,
        end: u64,
        blocks: u64,
    },

    #[error("write of {len} bytes is not a whole number of {block_size}-byte blocks")]
    Unaligned { len: usize, block_size: u32 },

    #[error("a host write must have at least one part")]
    EmptyWrite,

    #[error("no snapshot named {0:?}; `rewind list` shows the snapshots")]
    UnknownSnapshot(String),

    #[error("a snapshot named {0:?} already exists")]
    SnapshotExists(String),

    #[error("bad snapshot name {name:?}: {why}")]
    BadSnapshotName { name: String, why: &'static str },

    #[error("cannot understand point {input:?}: {why}")]
    BadPoint { input: String, why: &'static str },

    #[error("point {point} is in the future (now is {now})")]
    FutureTime { point: String, now: String },

    #[error("point {point} is before the base image was taken ({base})")]
    BeforeBase { point: String, base: String },

    #[error("seq {seq} is after the newest record ({newest})")]
    SeqAfterNewest { seq: Seq, newest: Seq },

    #[error("the vault was opened read-only")]
    ReadOnly,

    #[error("seq {seq} is still in the open interval; seal it first")]
    NotSealed { seq: Seq },

    #[error("no sealed interval {from}-{to} in the delta map chain")]
    UnknownInterval { from: Seq, to: Seq },

    #[error("an earlier write-log sync failed{}; the vault refuses writes until it is reopened", if *no_space { " (no space left on the device)" } else { "" })]
    Poisoned {
        /// The sync failed for lack of space.
        no_space: bool,
    },

    /// The vault is not in a state this operation can start from; the text says what to do.
    #[error("{0}")]
    NotNow(String),
}

impl VaultError {
    /// Whether the error is a full file system (ENOSPC or EDQUOT): the operation may succeed
    /// once space is freed.
    pub fn is_no_space(&self) -> bool {
        match self {
            VaultError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            VaultError::Poisoned { no_space } => *no_space,
            _ => false,
        }
    }
}

/// What exactly is wrong with corrupted bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("expected seq {expected}, found {found}")]
    SeqGap { expected: Seq, found: Seq },
    #[error("base image block {block} does not match its checksum")]
    BaseChecksum { block: u64 },
    #[error("base image block {block} does not match its checksum in a damaged base.sums (either may be wrong)")]
    BaseSumDamaged { block: u64 },
    #[error("file is missing")]
    Missing,
    #[error(
        "file is {actual} bytes, {expected} expected (by the manifest or the record's own length)"
    )]
    Length { expected: u64, actual: u64 },
    #[error("{0}")]
    Inconsistent(&'static str),
}

pub type Result<T, E = VaultError> = std::result::Result<T, E>;

/// Attaches a path and an operation to an I/O error.
pub(crate) trait IoContext<T> {
    fn io(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn io(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| VaultError::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

pub(crate) fn corrupted(
    path: &std::path::Path,
    offset: u64,
    reason: impl Into<Corruption>,
) -> VaultError {
    VaultError::Corrupted {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// A decode error inside a file: the offset becomes absolute (`base` + relative).
pub(crate) fn decode_err(path: &std::path::Path, base: u64, e: DecodeError) -> VaultError {
    let offset = base + e.offset();
    VaultError::Corrupted {
        path: path.to_path_buf(),
        offset,
        reason: Corruption::Decode(e.shifted(base)),
    }
}
