//! The write log: append-only segments of checksummed records.
//!
//! - [`open_segment`]: the segment being appended to, its buffer, its record index.
//! - [`present`]: the open interval's present delta map.
//! - [`scan`]: reading a segment's records back (recovery, replay, time look-ups).
//! - [`reader`]: reading one record's data by location, verified.
//! - [`records`]: the open segment's record index, in shared chunks.

mod aligned;
pub(crate) mod open_segment;
pub(crate) mod present;
pub(crate) mod reader;
pub(crate) mod records;
pub(crate) mod scan;
pub(crate) mod writer;

use rewind_format::record::RecordKind;
use rewind_format::Seq;

/// What the vault remembers of a record without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordMeta {
    pub seq: Seq,
    pub timestamp_ns: i64,
    pub kind: RecordKind,
    pub first_block: u64,
    pub block_count: u32,
    /// Byte offset of the record in its segment.
    pub offset: u64,
    /// Bytes of the record on disk (header + stored payload).
    pub len: u32,
    /// The next record belongs to the same host write: no point falls right after this one.
    pub continues: bool,
}
