//! Delta map files: `map-<seq_from>-<seq_to>.dmap`.
//!
//! A delta map is the forward increment of one interval (seq_from..=seq_to): for every
//! block the interval changed, where that block's newest data in the interval lives.
//! Immutable once written.
//!
//! Version 3 (written by this build) is in two checked parts, so that a reader can load
//! the small *head* (header and block set) of every map in a chain and read a map's
//! *entries* only when a lookup finds the block in its set:
//!
//! ```text
//! offset size field
//!  0     8    magic          "RWNDDMAP"
//!  8     2    version        3 (1 and 2 still decode)
//! 10     2    flags          bit 0 merged, bit 1 fix-up, bit 2 suspect
//! 12     4    block_size
//! 16     8    seq_from
//! 24     8    seq_to
//! 32     8    time_from_ns   timestamp of the first record
//! 40     8    time_to_ns     timestamp of the last record
//! 48     8    entry_count
//! 56     4    block_set_len  bytes of the serialized block set (m)
//! 60     1    retention_class
//! 61     3    reserved       0
//! 64     4    head_crc       crc32c over bytes 0..64 and the block set
//! 68     m    block set: the changed blocks as a portable roaring treemap
//! 68+m  24*n  entries, one per block of the set, in block order (the i-th entry is the
//!               block of rank i): u64 segment (first seq of the segment; 0 = zeroed),
//!               u64 offset, u32 crc, u32 kind:
//!                 0 zeroed (segment, offset, crc 0)
//!                 1 record: offset of the write record holding the block (crc 0);
//!                   used for compressed records, whose blocks cannot be read alone
//!                 2 block: offset of the block's own bytes in the segment (inside an
//!                   uncompressed write record), crc = crc32c of those bytes, so one
//!                   block is read and verified with one read of its size
//! end-4  4    entries_crc    crc32c over the entries
//! ```
//!
//! Version 2: the same header (without head_crc), then 32-byte entries `u64 block` + the
//! fields above, then the block set and one crc32c over everything. Version 1: 24-byte
//! entries `u64 block, u64 segment, u64 record offset`.

use std::sync::OnceLock;

use crate::codec::{check_magic, check_trailing_crc, check_version, Reader, Writer};
use crate::{DecodeError, SegmentId, Seq};
use roaring::RoaringTreemap;

pub const MAGIC: &[u8; 8] = b"RWNDDMAP";
/// The version this build writes.
pub const VERSION: u16 = 3;
/// The oldest version this build still decodes.
pub const OLDEST_VERSION: u16 = 1;
/// Bytes of a version 3 header, its head crc included: the block set starts here.
pub const HEAD_FIXED_LEN: usize = 68;
const HEADER_LEN: usize = 64;
const ENTRY_LEN_V3: usize = 24;
const ENTRY_LEN: usize = 32;
const ENTRY_LEN_V1: usize = 24;
const KIND_ZERO: u32 = 0;
const KIND_RECORD: u32 = 1;
const KIND_BLOCK: u32 = 2;
const WHAT: &str = "delta map";
const WHAT_ENTRIES: &str = "delta map entries";

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

/// A decoded delta map: always its header and block set; its entries once loaded (see
/// [`DeltaMap::decode_head`] and [`DeltaMap::attach_entries`]).
#[derive(Debug)]
pub struct DeltaMap {
    pub interval: Interval,
    pub flags: u16,
    pub block_size: u32,
    pub retention_class: u8,
    /// The changed blocks, for fast membership tests; a block's rank in it is the index
    /// of its entry.
    pub blocks: RoaringTreemap,
    /// Where the entries start in the file and how long they are (crc included); zero for
    /// a map built in memory or of an older version.
    entries_at: u64,
    entries_len: u64,
    entries: OnceLock<Entries>,
}

/// The entries, in block order: built in memory, or kept as the file holds them
/// (validated once, then read in place).
#[derive(Debug, Clone)]
enum Entries {
    Owned(Vec<(u64, Location)>),
    /// Version 2: 32-byte entries with their block, at `at` of `bytes`.
    V2 {
        bytes: Vec<u8>,
        at: usize,
    },
    /// Version 3: 24-byte entries without their block, from the start of `bytes`.
    V3 {
        bytes: Vec<u8>,
    },
}

/// What a lookup in one map found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The interval did not change the block.
    Absent,
    /// The interval changed it; its newest data is here.
    Found(Location),
    /// The interval changed it, but the map's entries are not loaded: load them with
    /// [`DeltaMap::attach_entries`] and look again.
    NotLoaded,
}

impl Clone for DeltaMap {
    fn clone(&self) -> DeltaMap {
        let entries = OnceLock::new();
        if let Some(e) = self.entries.get() {
            let _ = entries.set(e.clone());
        }
        DeltaMap {
            interval: self.interval,
            flags: self.flags,
            block_size: self.block_size,
            retention_class: self.retention_class,
            blocks: self.blocks.clone(),
            entries_at: self.entries_at,
            entries_len: self.entries_len,
            entries,
        }
    }
}

impl PartialEq for DeltaMap {
    /// Equal header, blocks and (loaded) entries.
    fn eq(&self, other: &DeltaMap) -> bool {
        self.interval == other.interval
            && self.flags == other.flags
            && self.block_size == other.block_size
            && self.retention_class == other.retention_class
            && self.blocks == other.blocks
            && self.iter().eq(other.iter())
    }
}

/// Decodes the location fields of one entry; `None`: not a valid location.
fn location(seg: u64, offset: u64, crc: u32, kind: u32) -> Option<Location> {
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

fn u64_at(e: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&e[i..i + 8]);
    u64::from_le_bytes(b)
}

fn u32_at(e: &[u8], i: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&e[i..i + 4]);
    u32::from_le_bytes(b)
}

/// The location of a 24-byte (version 3) entry, or of the last 24 bytes of a version 2 one.
fn location_of(e: &[u8]) -> Option<Location> {
    location(u64_at(e, 0), u64_at(e, 8), u32_at(e, 16), u32_at(e, 20))
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
            entries_at: 0,
            entries_len: 0,
            entries: OnceLock::from(Entries::Owned(entries)),
        }
    }

    /// Number of entries (blocks the interval changed).
    pub fn len(&self) -> usize {
        self.blocks.len() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Whether the entries are loaded (always, but for a head decoded alone).
    pub fn has_entries(&self) -> bool {
        self.entries.get().is_some()
    }

    /// Where the entries are in the file: byte offset and length (their crc included).
    pub fn entries_range(&self) -> (u64, u64) {
        (self.entries_at, self.entries_len)
    }

    /// The location of the `i`th entry in block order, if loaded.
    fn entry_location(&self, i: usize) -> Option<Location> {
        match self.entries.get()? {
            Entries::Owned(v) => v.get(i).map(|e| e.1),
            Entries::V2 { bytes, at } => {
                let e = bytes.get(at + i * ENTRY_LEN..at + (i + 1) * ENTRY_LEN)?;
                location_of(&e[8..])
            }
            Entries::V3 { bytes } => {
                location_of(bytes.get(i * ENTRY_LEN_V3..(i + 1) * ENTRY_LEN_V3)?)
            }
        }
    }

    /// The entries in block order (none while they are not loaded).
    pub fn iter(&self) -> impl Iterator<Item = (u64, Location)> + '_ {
        let loaded = self.has_entries();
        self.blocks
            .iter()
            .take(if loaded { usize::MAX } else { 0 })
            .enumerate()
            .filter_map(|(i, b)| self.entry_location(i).map(|l| (b, l)))
    }

    /// The entries of the blocks at or after `first`, in block order, found with one rank
    /// in the block set and then read one after the other (a run of the set's blocks has
    /// consecutive entries): walking `n` blocks from `first` costs `n` entry reads, not `n`
    /// lookups. `None` while the entries are not loaded.
    pub fn entries_from(&self, first: u64) -> Option<impl Iterator<Item = (u64, Location)> + '_> {
        if !self.has_entries() {
            return None;
        }
        // The index of the first entry at or after `first`: the blocks before it.
        let start = first.checked_sub(1).map_or(0, |b| self.blocks.rank(b));
        let start = usize::try_from(start).ok()?;
        let mut blocks = self.blocks.iter();
        blocks.advance_to(first);
        Some(
            blocks
                .zip(start..)
                .map_while(|(b, i)| self.entry_location(i).map(|l| (b, l))),
        )
    }

    /// The highest block the map names.
    pub fn last_block(&self) -> Option<u64> {
        self.blocks.max()
    }

    /// Where `block` lives in this interval, if the interval changed it.
    pub fn find(&self, block: u64) -> Lookup {
        if !self.blocks.contains(block) {
            return Lookup::Absent;
        }
        if let Some(Entries::Owned(v)) = self.entries.get() {
            return match v.binary_search_by_key(&block, |e| e.0) {
                Ok(i) => Lookup::Found(v[i].1),
                Err(_) => Lookup::Absent,
            };
        }
        if !self.has_entries() {
            return Lookup::NotLoaded;
        }
        // The block's rank in the set is its entry's index (checked when decoded).
        let Some(i) = self
            .blocks
            .rank(block)
            .checked_sub(1)
            .and_then(|r| usize::try_from(r).ok())
        else {
            return Lookup::Absent;
        };
        match self.entry_location(i) {
            Some(l) => Lookup::Found(l),
            None => Lookup::Absent,
        }
    }

    /// Encodes the map (version 3). The entries must be loaded.
    pub fn encode(&self) -> Vec<u8> {
        let mut set = Vec::new();
        // Serializing into a Vec cannot fail.
        let _ = self.blocks.serialize_into(&mut set);
        let mut out =
            Vec::with_capacity(HEAD_FIXED_LEN + set.len() + self.len() * ENTRY_LEN_V3 + 4);
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
        let head_crc = crc32c::crc32c_append(crc32c::crc32c(&out[..HEADER_LEN]), &set);
        out.extend_from_slice(&head_crc.to_le_bytes());
        out.extend_from_slice(&set);
        let entries_at = out.len();
        let mut w = Writer(&mut out);
        for (_, loc) in self.iter() {
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
        let entries_crc = crc32c::crc32c(&out[entries_at..]);
        out.extend_from_slice(&entries_crc.to_le_bytes());
        out
    }

    /// How many bytes from the start of the file the head of the map takes, from its first
    /// [`HEAD_FIXED_LEN`] bytes: `Some(n)` for version 3 (read `n` bytes and call
    /// [`DeltaMap::decode_head`]); `None` for the older versions, which decode only whole
    /// ([`DeltaMap::decode_owned`]). Not checked yet: the head's crc covers it.
    pub fn head_len(first: &[u8]) -> Result<Option<usize>, DecodeError> {
        check_magic(first, MAGIC, WHAT)?;
        let mut r = Reader::new(first, WHAT);
        r.take(8)?;
        let version = r.u16()?;
        if (OLDEST_VERSION..VERSION).contains(&version) {
            return Ok(None);
        }
        if version != VERSION {
            check_version(version, VERSION, WHAT)?;
        }
        r.take(46)?;
        let set_len = r.u32()? as usize;
        Ok(Some(HEAD_FIXED_LEN + set_len))
    }

    /// Decodes the whole file.
    pub fn decode(buf: &[u8]) -> Result<DeltaMap, DecodeError> {
        DeltaMap::decode_owned(buf.to_vec())
    }

    /// Decodes the whole file from its bytes, which it keeps (the entries are read in place).
    pub fn decode_owned(mut buf: Vec<u8>) -> Result<DeltaMap, DecodeError> {
        match DeltaMap::head_len(&buf)? {
            Some(head_len) => {
                let map = DeltaMap::decode_head(buf.get(..head_len).unwrap_or(&buf))?;
                if buf.len() < head_len {
                    return Err(DecodeError::Truncated {
                        offset: buf.len() as u64,
                        needed: (head_len - buf.len()) as u64,
                        what: WHAT,
                    });
                }
                let entries = buf.split_off(head_len);
                map.attach_entries(entries)?;
                Ok(map)
            }
            None => DeltaMap::decode_v1_v2(buf),
        }
    }

    /// Decodes the head of a version 3 map (its first [`DeltaMap::head_len`] bytes): header
    /// and block set, checked. The entries follow at [`DeltaMap::entries_range`]; load them
    /// with [`DeltaMap::attach_entries`] when a lookup needs them.
    pub fn decode_head(buf: &[u8]) -> Result<DeltaMap, DecodeError> {
        check_magic(buf, MAGIC, WHAT)?;
        let mut r = Reader::new(buf, WHAT);
        r.take(8)?;
        let version = r.u16()?;
        if version != VERSION {
            check_version(version, VERSION, WHAT)?;
        }
        let flags = r.u16()?;
        let block_size = r.u32()?;
        let interval = Interval {
            seq_from: Seq(r.u64()?),
            seq_to: Seq(r.u64()?),
            time_from_ns: r.i64()?,
            time_to_ns: r.i64()?,
        };
        let count = r.u64()?;
        let set_len = r.u32()? as usize;
        let retention_class = r.u8()?;
        r.take(3)?;
        let stored = r.u32()?;
        let set = r.take(set_len)?;
        let computed = crc32c::crc32c_append(crc32c::crc32c(&buf[..HEADER_LEN]), set);
        if stored != computed {
            return Err(DecodeError::Checksum {
                offset: HEADER_LEN as u64,
                what: WHAT,
                stored,
                computed,
            });
        }
        if !crate::valid_block_size(block_size) {
            return Err(DecodeError::invalid(12, WHAT, "block size"));
        }
        if interval.seq_from > interval.seq_to || interval.seq_from == Seq::BASE {
            return Err(DecodeError::invalid(16, WHAT, "interval bounds"));
        }
        let blocks = RoaringTreemap::deserialize_from(set)
            .map_err(|_| DecodeError::invalid(HEAD_FIXED_LEN, WHAT, "block set does not decode"))?;
        if blocks.len() != count {
            return Err(DecodeError::invalid(
                48,
                WHAT,
                "entry count disagrees with the block set",
            ));
        }
        let entries_len = count
            .checked_mul(ENTRY_LEN_V3 as u64)
            .and_then(|n| n.checked_add(4))
            .ok_or(DecodeError::invalid(48, WHAT, "entry count"))?;
        Ok(DeltaMap {
            interval,
            flags,
            block_size,
            retention_class,
            blocks,
            entries_at: r.pos() as u64,
            entries_len,
            entries: OnceLock::new(),
        })
    }

    /// Checks and keeps the entries of a map decoded with [`DeltaMap::decode_head`]: the
    /// [`DeltaMap::entries_range`] bytes of its file. Errors name offsets from the start
    /// of the file. Loading twice keeps the first.
    pub fn attach_entries(&self, bytes: Vec<u8>) -> Result<(), DecodeError> {
        let at = self.entries_at;
        if (bytes.len() as u64) != self.entries_len {
            return Err(if (bytes.len() as u64) < self.entries_len {
                DecodeError::Truncated {
                    offset: at + bytes.len() as u64,
                    needed: self.entries_len - bytes.len() as u64,
                    what: WHAT_ENTRIES,
                }
            } else {
                DecodeError::invalid_at(at + self.entries_len, WHAT, "trailing bytes")
            });
        }
        let body_len = check_trailing_crc(&bytes, WHAT_ENTRIES)
            .map_err(|e| e.shifted(at))?
            .len();
        for (i, e) in bytes[..body_len].chunks_exact(ENTRY_LEN_V3).enumerate() {
            if location_of(e).is_none() {
                return Err(DecodeError::invalid_at(
                    at + (i * ENTRY_LEN_V3) as u64,
                    WHAT,
                    "entry location",
                ));
            }
        }
        let mut bytes = bytes;
        bytes.truncate(body_len);
        let _ = self.entries.set(Entries::V3 { bytes });
        Ok(())
    }

    /// Versions 1 and 2: one crc over the file, entries with their blocks, then the set.
    fn decode_v1_v2(buf: Vec<u8>) -> Result<DeltaMap, DecodeError> {
        check_magic(&buf, MAGIC, WHAT)?;
        let body = check_trailing_crc(&buf, WHAT)?;
        let mut r = Reader::new(body, WHAT);
        r.take(8)?;
        let version = r.u16()?;
        if !(OLDEST_VERSION..=2).contains(&version) {
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
            let block = u64_at(e, 0);
            let loc = if version == 1 {
                let (seg, offset) = (u64_at(e, 8), u64_at(e, 16));
                if seg == 0 && offset == 0 {
                    Some(Location::Zero)
                } else if seg != 0 {
                    Some(Location::Data {
                        segment: SegmentId(Seq(seg)),
                        offset,
                    })
                } else {
                    None
                }
            } else {
                location_of(&e[8..])
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
            Entries::V2 {
                bytes: buf,
                at: entries_at,
            }
        };
        Ok(DeltaMap {
            interval,
            flags,
            block_size,
            retention_class,
            blocks,
            entries_at: 0,
            entries_len: 0,
            entries: OnceLock::from(entries),
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
        assert_eq!(back.find(4), Lookup::Found(Location::Zero));
        assert_eq!(back.find(5), Lookup::Absent);
        assert!(matches!(
            back.find(1 << 40),
            Lookup::Found(Location::Data { offset: 4200, .. })
        ));
        assert_eq!(back.iter().count(), 4);
    }

    #[test]
    fn entries_from_walks_the_entries_in_block_order() {
        let m = sample();
        let all: Vec<(u64, Location)> = m.iter().collect();
        let head_len = DeltaMap::head_len(&m.encode()[..HEAD_FIXED_LEN])
            .expect("head length")
            .expect("version 3");
        let head = DeltaMap::decode_head(&m.encode()[..head_len]).expect("head");
        assert!(head.entries_from(0).is_none(), "entries not loaded");
        // Owned (built in memory), version 3 in place, version 2 in place.
        let v3 = DeltaMap::decode(&m.encode()).expect("v3");
        let v2 = DeltaMap::decode(GOLDEN_V2).expect("v2");
        for map in [&m, &v3, &v2] {
            for first in [0, 3, 4, 5, 7, 8, 1 << 40, (1 << 40) + 1] {
                let want: Vec<(u64, Location)> =
                    all.iter().copied().filter(|(b, _)| *b >= first).collect();
                let got: Vec<(u64, Location)> = map.entries_from(first).expect("loaded").collect();
                assert_eq!(got, want, "from {first}");
            }
        }
    }

    #[test]
    fn the_head_decodes_alone_and_the_entries_load_later() {
        let m = sample();
        let buf = m.encode();
        let head_len = DeltaMap::head_len(&buf[..HEAD_FIXED_LEN])
            .expect("head length")
            .expect("version 3");
        let head = DeltaMap::decode_head(&buf[..head_len]).expect("head decodes");
        assert!(!head.has_entries());
        assert_eq!(head.len(), 4);
        assert_eq!(head.find(5), Lookup::Absent);
        assert_eq!(head.find(4), Lookup::NotLoaded);
        assert_eq!(head.iter().count(), 0);
        let (at, len) = head.entries_range();
        assert_eq!(at as usize, head_len);
        assert_eq!((at + len) as usize, buf.len());
        head.attach_entries(buf[head_len..].to_vec())
            .expect("entries");
        assert_eq!(head.find(4), Lookup::Found(Location::Zero));
        assert_eq!(head, m);
        // A damaged entry section is an error naming a byte in it.
        for i in head_len..buf.len() {
            let again = DeltaMap::decode_head(&buf[..head_len]).expect("head");
            let mut bad = buf[head_len..].to_vec();
            bad[i - head_len] ^= 0x10;
            let e = again.attach_entries(bad).expect_err("damaged entries");
            assert!(e.offset() >= head_len as u64, "{e}");
            assert!(!again.has_entries());
        }
        let again = DeltaMap::decode_head(&buf[..head_len]).expect("head");
        assert!(again
            .attach_entries(buf[head_len..buf.len() - 1].to_vec())
            .is_err());
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
    /// Bytes the version 2 encoder wrote for `sample()` (the code of commit 6edee4a).
    const GOLDEN_V2: &[u8] = include_bytes!("../tests/golden/delta-map-v2.bin");

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
    fn version_2_still_decodes_and_is_rewritten_as_version_3() {
        assert_eq!(u16::from_le_bytes([GOLDEN_V2[8], GOLDEN_V2[9]]), 2);
        assert_eq!(DeltaMap::head_len(GOLDEN_V2), Ok(None));
        let m = DeltaMap::decode(GOLDEN_V2).expect("version 2 decodes");
        assert_eq!(m, sample());
        assert_eq!(m.find(7), sample().find(7));
        let again = m.encode();
        assert_eq!(u16::from_le_bytes([again[8], again[9]]), VERSION);
        assert_eq!(DeltaMap::decode(&again), Ok(sample()));
        for i in 0..GOLDEN_V2.len() {
            let mut bad = GOLDEN_V2.to_vec();
            bad[i] ^= 0x04;
            assert!(DeltaMap::decode(&bad).is_err(), "v2 flip at {i}");
        }
    }

    /// Rewrites the crcs of an encoded version 3 map after a deliberate change.
    fn reseal(buf: &mut [u8]) {
        let head_len = DeltaMap::head_len(buf)
            .expect("head length")
            .expect("version 3");
        let head_crc = crc32c::crc32c_append(
            crc32c::crc32c(&buf[..HEADER_LEN]),
            &buf[HEAD_FIXED_LEN..head_len],
        );
        buf[HEADER_LEN..HEAD_FIXED_LEN].copy_from_slice(&head_crc.to_le_bytes());
        let n = buf.len();
        let crc = crc32c::crc32c(&buf[head_len..n - 4]);
        buf[n - 4..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn unknown_versions_and_locations_are_typed_errors() {
        let m = sample();
        let mut buf = m.encode();
        buf[8] = 4;
        let head_crc = crc32c::crc32c_append(
            crc32c::crc32c(&buf[..HEADER_LEN]),
            &buf[HEAD_FIXED_LEN
                ..DeltaMap::head_len(&m.encode())
                    .expect("head length")
                    .expect("version 3")],
        );
        buf[HEADER_LEN..HEAD_FIXED_LEN].copy_from_slice(&head_crc.to_le_bytes());
        assert!(matches!(
            DeltaMap::decode(&buf),
            Err(DecodeError::UnknownVersion { found: 4, .. })
        ));
        // A zeroed entry (block 4, the second) that names a segment.
        let mut buf = m.encode();
        let head_len = DeltaMap::head_len(&buf)
            .expect("head length")
            .expect("version 3");
        buf[head_len + ENTRY_LEN_V3] = 1;
        reseal(&mut buf);
        assert!(matches!(
            DeltaMap::decode(&buf),
            Err(DecodeError::Invalid { offset, .. }) if offset == (head_len + ENTRY_LEN_V3) as u64
        ));
        // A count that disagrees with the block set.
        let mut buf = m.encode();
        buf[48] = 5;
        reseal(&mut buf);
        assert!(matches!(
            DeltaMap::decode(&buf),
            Err(DecodeError::Invalid { offset: 48, .. })
        ));
    }

    #[test]
    fn checksum_errors_name_the_part() {
        let buf = sample().encode();
        let head_len = DeltaMap::head_len(&buf)
            .expect("head length")
            .expect("version 3");
        let mut bad = buf.clone();
        bad[20] ^= 1;
        match DeltaMap::decode(&bad) {
            Err(DecodeError::Checksum { offset, .. }) => assert_eq!(offset, HEADER_LEN as u64),
            other => panic!("{other:?}"),
        }
        let mut bad = buf.clone();
        bad[head_len + 3] ^= 1;
        let n = buf.len();
        match DeltaMap::decode(&bad) {
            Err(DecodeError::Checksum { offset, .. }) => assert_eq!(offset, (n - 4) as u64),
            other => panic!("{other:?}"),
        }
    }
}
