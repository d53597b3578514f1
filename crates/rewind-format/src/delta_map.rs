//! Delta map files: `map-<seq_from>-<seq_to>.dmap`.
//!
//! A delta map is the forward increment of one interval (seq_from..=seq_to): for every
//! block the interval changed, where that block's newest data in the interval lives.
//! Immutable once written.
//!
//! ```text
//! offset size field
//!  0     8    magic          "RWNDDMAP"
//!  8     2    version        2 (1 still decodes)
//! 10     2    flags          bit 0 merged, bit 1 fix-up, bit 2 suspect
//! 12     4    block_size
//! 16     8    seq_from
//! 24     8    seq_to
//! 32     8    time_from_ns   timestamp of the first record
//! 40     8    time_to_ns     timestamp of the last record
//! 48     8    entry_count
//! 56     4    block_set_len  bytes of the serialized block set
//! 60     1    retention_class
//! 61     3    reserved       0
//! 64    32*n  entries, sorted by block, unique:
//!               u64 block, u64 segment (first seq of the segment; 0 = zeroed),
//!               u64 offset, u32 crc, u32 kind:
//!                 0 zeroed (segment, offset, crc 0)
//!                 1 record: offset of the write record holding the block (crc 0);
//!                   used for compressed records, whose blocks cannot be read alone
//!                 2 block: offset of the block's own bytes in the segment (inside an
//!                   uncompressed write record), crc = crc32c of those bytes, so one
//!                   block is read and verified with one read of its size
//!               (version 1: 24-byte entries u64 block, u64 segment, u64 record offset)
//! ...   m     block set: the entries' blocks as a portable roaring treemap
//! end-4 4     crc            crc32c over everything before
//! ```

use crate::codec::{
    check_magic, check_trailing_crc, check_version, push_trailing_crc, Reader, Writer,
};
use crate::{DecodeError, SegmentId, Seq};
use roaring::RoaringTreemap;

pub const MAGIC: &[u8; 8] = b"RWNDDMAP";
/// The version this build writes.
pub const VERSION: u16 = 2;
/// The oldest version this build still decodes.
pub const OLDEST_VERSION: u16 = 1;
const HEADER_LEN: usize = 64;
const ENTRY_LEN: usize = 32;
const ENTRY_LEN_V1: usize = 24;
const KIND_ZERO: u32 = 0;
const KIND_RECORD: u32 = 1;
const KIND_BLOCK: u32 = 2;
const WHAT: &str = "delta map";

pub const FLAG_MERGED: u16 = 1;
pub const FLAG_FIXUP: u16 = 2;
pub const FLAG_SUSPECT: u16 = 4;

/// Where a block's newest data in an interval lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// The block reads as zeroes (zeroed or trimmed).
    Zero,
    /// In the write record at `offset` of segment `segment` (read and verified whole).
    Data { segment: SegmentId, offset: u64 },
    /// The block's own bytes at `offset` of segment `segment`, whose crc32c is `crc`.
    Block {
        segment: SegmentId,
        offset: u64,
        crc: u32,
    },
}

/// The interval a delta map covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub seq_from: Seq,
    pub seq_to: Seq,
    pub time_from_ns: i64,
    pub time_to_ns: i64,
}

/// A decoded delta map.
#[derive(Debug, Clone)]
pub struct DeltaMap {
    pub interval: Interval,
    pub flags: u16,
    pub block_size: u32,
    pub retention_class: u8,
    /// The blocks of the entries, for fast membership tests (and, by rank, the index of a
    /// block's entry).
    pub blocks: RoaringTreemap,
    entries: Entries,
}

/// The entries, sorted by block and unique: built in memory, or kept as the file holds
/// them (validated once when decoded, then read in place: loading a map costs one pass
/// over its bytes, not an allocation per entry).
#[derive(Debug, Clone)]
enum Entries {
    Owned(Vec<(u64, Location)>),
    Encoded {
        bytes: Vec<u8>,
        at: usize,
        count: usize,
    },
}

impl PartialEq for DeltaMap {
    fn eq(&self, other: &DeltaMap) -> bool {
        self.interval == other.interval
            && self.flags == other.flags
            && self.block_size == other.block_size
            && self.retention_class == other.retention_class
            && self.blocks == other.blocks
            && self.iter().eq(other.iter())
    }
}

/// Decodes the location fields of one version 2 entry; `None`: not a valid location.
fn location_v2(seg: u64, offset: u64, crc: u32, kind: u32) -> Option<Location> {
    let segment = SegmentId(Seq(seg));
    match kind {
        KIND_ZERO if seg == 0 && offset == 0 && crc == 0 => Some(Location::Zero),
        KIND_RECORD if seg != 0 && crc == 0 => Some(Location::Data { segment, offset }),
        KIND_BLOCK if seg != 0 => Some(Location::Block {
            segment,
            offset,
            crc,
        }),
        _ => None,
    }
}

/// The fields of the version 2 entry at `e` (32 bytes): block, segment, offset, crc, kind.
fn fields_v2(e: &[u8]) -> (u64, u64, u64, u32, u32) {
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&e[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let u32_at = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&e[i..i + 4]);
        u32::from_le_bytes(b)
    };
    (u64_at(0), u64_at(8), u64_at(16), u32_at(24), u32_at(28))
}

impl DeltaMap {
    /// Builds a map from entries sorted by block (the caller's BTreeMap order).
    pub fn new(interval: Interval, block_size: u32, entries: Vec<(u64, Location)>) -> DeltaMap {
        let blocks = RoaringTreemap::from_sorted_iter(entries.iter().map(|e| e.0))
            .unwrap_or_else(|_| entries.iter().map(|e| e.0).collect());
        DeltaMap {
            interval,
            flags: 0,
            block_size,
            retention_class: 0,
            blocks,
            entries: Entries::Owned(entries),
        }
    }

    /// Number of entries (blocks the interval changed).
    pub fn len(&self) -> usize {
        match &self.entries {
            Entries::Owned(v) => v.len(),
            Entries::Encoded { count, .. } => *count,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th entry in block order.
    fn entry(&self, i: usize) -> Option<(u64, Location)> {
        match &self.entries {
            Entries::Owned(v) => v.get(i).copied(),
            Entries::Encoded { bytes, at, count } => {
                if i >= *count {
                    return None;
                }
                let e = bytes.get(at + i * ENTRY_LEN..at + (i + 1) * ENTRY_LEN)?;
                let (block, seg, offset, crc, kind) = fields_v2(e);
                location_v2(seg, offset, crc, kind).map(|l| (block, l))
            }
        }
    }

    /// The entries in block order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Location)> + '_ {
        (0..self.len()).filter_map(|i| self.entry(i))
    }

    /// The highest block the map names.
    pub fn last_block(&self) -> Option<u64> {
        self.blocks.max()
    }

    /// Where `block` lives in this interval, if the interval changed it.
    pub fn lookup(&self, block: u64) -> Option<Location> {
        if !self.blocks.contains(block) {
            return None;
        }
        match &self.entries {
            Entries::Owned(v) => v.binary_search_by_key(&block, |e| e.0).ok().map(|i| v[i].1),
            // The block set and the entries were checked to hold the same blocks: the
            // block's rank is its entry's index.
            Entries::Encoded { .. } => {
                let i = usize::try_from(self.blocks.rank(block).checked_sub(1)?).ok()?;
                self.entry(i).filter(|e| e.0 == block).map(|e| e.1)
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut set = Vec::new();
        // Serializing into a Vec cannot fail.
        let _ = self.blocks.serialize_into(&mut set);
        let mut out = Vec::with_capacity(HEADER_LEN + self.len() * ENTRY_LEN + set.len() + 4);
        let mut w = Writer(&mut out);
        w.bytes(MAGIC);
        w.u16(VERSION);
        w.u16(self.flags);
        w.u32(self.block_size);
        w.u64(self.interval.seq_from.0);
        w.u64(self.interval.seq_to.0);
        w.i64(self.interval.time_from_ns);
        w.i64(self.interval.time_to_ns);
        w.u64(self.len() as u64);
        w.u32(set.len() as u32);
        w.u8(self.retention_class);
        w.bytes(&[0; 3]);
        for (block, loc) in self.iter() {
            w.u64(block);
            let (segment, offset, crc, kind) = match loc {
                Location::Zero => (0, 0, 0, KIND_ZERO),
                Location::Data { segment, offset } => (segment.0 .0, offset, 0, KIND_RECORD),
                Location::Block {
                    segment,
                    offset,
                    crc,
                } => (segment.0 .0, offset, crc, KIND_BLOCK),
            };
            w.u64(segment);
            w.u64(offset);
            w.u32(crc);
            w.u32(kind);
        }
        w.bytes(&set);
        push_trailing_crc(&mut out);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<DeltaMap, DecodeError> {
        DeltaMap::decode_owned(buf.to_vec())
    }

    /// Decodes a map from the file's bytes, which it keeps: a version 2 map's entries are
    /// validated in one pass and then read in place.
    pub fn decode_owned(buf: Vec<u8>) -> Result<DeltaMap, DecodeError> {
        check_magic(&buf, MAGIC, WHAT)?;
        let body = check_trailing_crc(&buf, WHAT)?;
        let mut r = Reader::new(body, WHAT);
        r.take(8)?;
        let version = r.u16()?;
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            check_version(version, VERSION, WHAT)?;
        }
        let entry_len = if version == 1 {
            ENTRY_LEN_V1
        } else {
            ENTRY_LEN
        };
        let flags = r.u16()?;
        let block_size = r.u32()?;
        if !crate::valid_block_size(block_size) {
            return Err(DecodeError::invalid(12, WHAT, "block size"));
        }
        let interval = Interval {
            seq_from: Seq(r.u64()?),
            seq_to: Seq(r.u64()?),
            time_from_ns: r.i64()?,
            time_to_ns: r.i64()?,
        };
        if interval.seq_from > interval.seq_to || interval.seq_from == Seq::BASE {
            return Err(DecodeError::invalid(16, WHAT, "interval bounds"));
        }
        let count = r.u64()?;
        let set_len = r.u32()? as usize;
        let retention_class = r.u8()?;
        r.take(3)?;
        let entries_len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(entry_len))
            .filter(|&n| n <= body.len())
            .ok_or(DecodeError::invalid(
                48,
                WHAT,
                "entry count larger than the file",
            ))?;
        let entries_at = r.pos();
        let raw_entries = r.take(entries_len)?;
        let set_at = r.pos();
        let set = r.take(set_len)?;
        if r.pos() != body.len() {
            return Err(DecodeError::invalid(r.pos(), WHAT, "trailing bytes"));
        }
        let blocks = RoaringTreemap::deserialize_from(set)
            .map_err(|_| DecodeError::invalid(set_at, WHAT, "block set does not decode"))?;
        if blocks.len() != count {
            return Err(DecodeError::invalid(
                set_at,
                WHAT,
                "block set disagrees with entries",
            ));
        }
        // One pass: every entry valid, sorted, and the very block the set holds at its rank.
        let mut in_set = blocks.iter();
        let mut prev: Option<u64> = None;
        let mut owned = Vec::new();
        for (i, e) in raw_entries.chunks_exact(entry_len).enumerate() {
            let at = entries_at + i * entry_len;
            let (block, loc) = if version == 1 {
                let (block, seg, offset, _, _) = fields_v2(&[e, &[0u8; 8]].concat());
                let loc = if seg == 0 && offset == 0 {
                    Some(Location::Zero)
                } else if seg != 0 {
                    Some(Location::Data {
                        segment: SegmentId(Seq(seg)),
                        offset,
                    })
                } else {
                    None
                };
                (block, loc)
            } else {
                let (block, seg, offset, crc, kind) = fields_v2(e);
                (block, location_v2(seg, offset, crc, kind))
            };
            let Some(loc) = loc else {
                return Err(DecodeError::invalid(at + 8, WHAT, "entry location"));
            };
            if prev.is_some_and(|p| p >= block) {
                return Err(DecodeError::invalid(
                    at,
                    WHAT,
                    "entries not sorted by block",
                ));
            }
            prev = Some(block);
            if in_set.next() != Some(block) {
                return Err(DecodeError::invalid(
                    set_at,
                    WHAT,
                    "block set disagrees with entries",
                ));
            }
            if version == 1 {
                owned.push((block, loc));
            }
        }
        let entries = if version == 1 {
            Entries::Owned(owned)
        } else {
            Entries::Encoded {
                bytes: buf,
                at: entries_at,
                count: count as usize,
            }
        };
        Ok(DeltaMap {
            interval,
            flags,
            block_size,
            retention_class,
            blocks,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeltaMap {
        let entries = vec![
            (
                3,
                Location::Data {
                    segment: SegmentId(Seq(1)),
                    offset: 48,
                },
            ),
            (4, Location::Zero),
            (
                7,
                Location::Block {
                    segment: SegmentId(Seq(5)),
                    offset: 4096 + 56,
                    crc: 0xdead_beef,
                },
            ),
            (
                1 << 40,
                Location::Data {
                    segment: SegmentId(Seq(1)),
                    offset: 4200,
                },
            ),
        ];
        let iv = Interval {
            seq_from: Seq(1),
            seq_to: Seq(9),
            time_from_ns: 10,
            time_to_ns: 20,
        };
        DeltaMap::new(iv, 4096, entries)
    }

    #[test]
    fn round_trip_and_lookup() {
        let m = sample();
        let back = DeltaMap::decode(&m.encode()).expect("decodes");
        assert_eq!(back, m);
        assert_eq!(back.lookup(4), Some(Location::Zero));
        assert_eq!(back.lookup(5), None);
        assert!(matches!(
            back.lookup(1 << 40),
            Some(Location::Data { offset: 4200, .. })
        ));
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_an_error() {
        let buf = sample().encode();
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x20;
            assert!(DeltaMap::decode(&bad).is_err(), "flip at {i}");
        }
        for n in 0..buf.len() {
            assert!(DeltaMap::decode(&buf[..n]).is_err(), "cut at {n}");
        }
    }

    /// Bytes the version 1 encoder wrote for `sample()` without its block entry (the
    /// code of commit a2e04b6).
    const GOLDEN_V1: &[u8] = include_bytes!("../tests/golden/delta-map-v1.bin");

    #[test]
    fn version_1_still_decodes() {
        let m = sample();
        let want = DeltaMap::new(
            m.interval,
            4096,
            m.iter().filter(|(b, _)| *b != 7).collect(),
        );
        let m = DeltaMap::decode(GOLDEN_V1).expect("version 1 decodes");
        assert_eq!(m, want);
        let again = m.encode();
        assert_eq!(u16::from_le_bytes([again[8], again[9]]), VERSION);
        assert_eq!(DeltaMap::decode(&again), Ok(want));
    }

    #[test]
    fn unknown_versions_and_locations_are_typed_errors() {
        let m = sample();
        let mut buf = m.encode();
        buf[8] = 3;
        let n = buf.len();
        let crc = crc32c::crc32c(&buf[..n - 4]);
        buf[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            DeltaMap::decode(&buf),
            Err(DecodeError::UnknownVersion { found: 3, .. })
        ));
        // A zeroed entry that names a segment.
        let mut buf = m.encode();
        let entry = HEADER_LEN + ENTRY_LEN; // block 4, zeroed
        buf[entry + 8] = 1;
        let crc = crc32c::crc32c(&buf[..n - 4]);
        buf[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            DeltaMap::decode(&buf),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn checksum_error_names_the_offset() {
        let mut buf = sample().encode();
        let n = buf.len();
        buf[70] ^= 1;
        match DeltaMap::decode(&buf) {
            Err(DecodeError::Checksum { offset, .. }) => assert_eq!(offset, (n - 4) as u64),
            other => panic!("{other:?}"),
        }
    }
}
