//! Delta map files: `map-<seq_from>-<seq_to>.dmap`.
//!
//! A delta map is the forward increment of one interval (seq_from..=seq_to): for every
//! block the interval changed, where that block's newest data in the interval lives.
//! Immutable once written.
//!
//! ```text
//! offset size field
//!  0     8    magic          "RWNDDMAP"
//!  8     2    version        1
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
//! 64    24*n  entries, sorted by block, unique:
//!               u64 block, u64 segment (first seq of the segment; 0 = zeroed),
//!               u64 offset of the record in that segment
//! ...   m     block set: the entries' blocks as a portable roaring treemap
//! end-4 4     crc            crc32c over everything before
//! ```

use crate::codec::{
    check_magic, check_trailing_crc, check_version, push_trailing_crc, Reader, Writer,
};
use crate::{DecodeError, SegmentId, Seq};
use roaring::RoaringTreemap;

pub const MAGIC: &[u8; 8] = b"RWNDDMAP";
pub const VERSION: u16 = 1;
const HEADER_LEN: usize = 64;
const ENTRY_LEN: usize = 24;
const WHAT: &str = "delta map";

pub const FLAG_MERGED: u16 = 1;
pub const FLAG_FIXUP: u16 = 2;
pub const FLAG_SUSPECT: u16 = 4;

/// Where a block's newest data in an interval lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// The block reads as zeroes (zeroed or trimmed).
    Zero,
    /// In the write record at `offset` of segment `segment`.
    Data { segment: SegmentId, offset: u64 },
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
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaMap {
    pub interval: Interval,
    pub flags: u16,
    pub block_size: u32,
    pub retention_class: u8,
    /// Sorted by block, unique.
    pub entries: Vec<(u64, Location)>,
    /// The blocks of `entries`, for fast membership tests.
    pub blocks: RoaringTreemap,
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
            entries,
            blocks,
        }
    }

    /// Where `block` lives in this interval, if the interval changed it.
    pub fn lookup(&self, block: u64) -> Option<Location> {
        if !self.blocks.contains(block) {
            return None;
        }
        self.entries
            .binary_search_by_key(&block, |e| e.0)
            .ok()
            .map(|i| self.entries[i].1)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut set = Vec::new();
        // Serializing into a Vec cannot fail.
        let _ = self.blocks.serialize_into(&mut set);
        let mut out =
            Vec::with_capacity(HEADER_LEN + self.entries.len() * ENTRY_LEN + set.len() + 4);
        let mut w = Writer(&mut out);
        w.bytes(MAGIC);
        w.u16(VERSION);
        w.u16(self.flags);
        w.u32(self.block_size);
        w.u64(self.interval.seq_from.0);
        w.u64(self.interval.seq_to.0);
        w.i64(self.interval.time_from_ns);
        w.i64(self.interval.time_to_ns);
        w.u64(self.entries.len() as u64);
        w.u32(set.len() as u32);
        w.u8(self.retention_class);
        w.bytes(&[0; 3]);
        for (block, loc) in &self.entries {
            w.u64(*block);
            match loc {
                Location::Zero => {
                    w.u64(0);
                    w.u64(0);
                }
                Location::Data { segment, offset } => {
                    w.u64(segment.0 .0);
                    w.u64(*offset);
                }
            }
        }
        w.bytes(&set);
        push_trailing_crc(&mut out);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<DeltaMap, DecodeError> {
        check_magic(buf, MAGIC, WHAT)?;
        let body = check_trailing_crc(buf, WHAT)?;
        let mut r = Reader::new(body, WHAT);
        r.take(8)?;
        check_version(r.u16()?, VERSION, WHAT)?;
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
            .and_then(|c| c.checked_mul(ENTRY_LEN))
            .filter(|&n| n <= body.len())
            .ok_or(DecodeError::invalid(
                48,
                WHAT,
                "entry count larger than the file",
            ))?;
        let mut entries = Vec::with_capacity(entries_len / ENTRY_LEN);
        let mut prev: Option<u64> = None;
        for _ in 0..count {
            let at = r.pos();
            let block = r.u64()?;
            let seg = r.u64()?;
            let offset = r.u64()?;
            if prev.is_some_and(|p| p >= block) {
                return Err(DecodeError::invalid(
                    at,
                    WHAT,
                    "entries not sorted by block",
                ));
            }
            prev = Some(block);
            let loc = if seg == 0 {
                Location::Zero
            } else {
                Location::Data {
                    segment: SegmentId(Seq(seg)),
                    offset,
                }
            };
            entries.push((block, loc));
        }
        let set_at = r.pos();
        let set = r.take(set_len)?;
        let blocks = RoaringTreemap::deserialize_from(set)
            .map_err(|_| DecodeError::invalid(set_at, WHAT, "block set does not decode"))?;
        if blocks.len() != count || !entries.iter().all(|e| blocks.contains(e.0)) {
            return Err(DecodeError::invalid(
                set_at,
                WHAT,
                "block set disagrees with entries",
            ));
        }
        if r.pos() != body.len() {
            return Err(DecodeError::invalid(r.pos(), WHAT, "trailing bytes"));
        }
        Ok(DeltaMap {
            interval,
            flags,
            block_size,
            retention_class,
            entries,
            blocks,
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
