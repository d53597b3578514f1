//! Delta map files: `map-<seq_from>-<seq_to>.dmap`.
//!
//! A delta map is the forward increment of one interval (seq_from..=seq_to): for every
//! block the interval changed, where that block's newest data in the interval lives.
//! Immutable once written.
//!
//! Version 4 (written by this build) holds **extents**, runs of blocks with one location
//! rule (see `extents.rs`), so a trim of a whole volume is one entry. It is in two checked
//! parts, so that a reader can load the small *head* (header and block set) of every map
//! in a chain and read a map's *entries* only when a lookup finds the block in its set:
//!
//! ```text
//! offset size field
//!  0     8    magic          "RWNDDMAP"
//!  8     2    version        4 (1, 2 and 3 still decode)
//! 10     2    flags          bit 0 merged, bit 1 fix-up, bit 2 suspect
//! 12     4    block_size
//! 16     8    seq_from
//! 24     8    seq_to
//! 32     8    time_from_ns   timestamp of the first record
//! 40     8    time_to_ns     timestamp of the last record
//! 48     8    blocks         blocks the interval changed
//! 56     4    set_runs       runs of the block set (n)
//! 60     1    retention_class
//! 61     3    reserved       0
//! 64     8    extent_count   (e)
//! 72     8    crc_count      (c)
//! 80     4    head_crc       crc32c over bytes 0..80 and the block set
//! 84    16*n  block set: sorted, disjoint, non-adjacent runs: u64 first block, u64 count
//! ..    40*e  extents, sorted by block, disjoint: u64 first block, u64 count,
//!               u64 segment (first seq of the segment; 0 = zeroed), u64 offset,
//!               u32 kind, u32 reserved 0:
//!                 0 zeroed (segment, offset 0)
//!                 1 record: offset of the write record holding the blocks; used for
//!                   compressed records, whose blocks cannot be read alone
//!                 2 blocks: offset of the first block's own bytes in the segment (inside
//!                   an uncompressed write record), the next blocks one after the other;
//!                   they take the next `count` crcs below, one per block, so one block
//!                   is read and verified with one read of its size
//! ..     4*c  crcs: crc32c of each block of the `blocks` extents, in extent order
//! end-4  4    entries_crc    crc32c over the extents and crcs
//! ```
//!
//! Version 3: a 64-byte header (entry_count at 48, block_set_len at 56, head_crc at 64),
//! the block set as a portable roaring treemap, then one 24-byte entry per block of the
//! set in block order (u64 segment, u64 offset, u32 crc, u32 kind) and their crc.
//! Version 2: the same header (without head_crc), then 32-byte entries `u64 block` + the
//! fields above, then the block set and one crc32c over everything. Version 1: 24-byte
//! entries `u64 block, u64 segment, u64 record offset`. They are read into extents.

use std::sync::OnceLock;

use crate::codec::{check_magic, check_trailing_crc, check_version, Reader, Writer};
use crate::extents::{BadExtent, ExtentLoc, ExtentMap, ExtentSet, MapExtent};
use crate::{DecodeError, SegmentId, Seq};
use roaring::RoaringTreemap;

pub const MAGIC: &[u8; 8] = b"RWNDDMAP";
/// The version this build writes.
pub const VERSION: u16 = 4;
/// The oldest version this build still decodes.
pub const OLDEST_VERSION: u16 = 1;
/// Bytes [`DeltaMap::head_len`] needs to tell the length of a head: the fixed part of a
/// version 4 head (the block set starts here).
pub const HEAD_FIXED_LEN: usize = 84;
const HEADER_LEN: usize = 80;
const SET_RUN_LEN: usize = 16;
const EXTENT_LEN: usize = 40;
const V3_HEADER_LEN: usize = 64;
const V3_HEAD_FIXED_LEN: usize = 68;
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

/// A decoded delta map: always its header and block set; its entries (extents) once
/// loaded (see [`DeltaMap::decode_head`] and [`DeltaMap::attach_entries`]).
#[derive(Debug)]
pub struct DeltaMap {
    pub interval: Interval,
    pub flags: u16,
    pub block_size: u32,
    pub retention_class: u8,
    /// The changed blocks, for fast membership tests and set algebra.
    pub blocks: ExtentSet,
    /// The version the file had (the entries decode by it).
    version: u16,
    /// Where the entries start in the file and how long they are (crc included); zero for
    /// a map built in memory or decoded whole.
    entries_at: u64,
    entries_len: u64,
    /// Extents in the entries (version 4; the rest of them are crcs).
    extent_count: u64,
    entries: OnceLock<ExtentMap>,
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
            version: self.version,
            entries_at: self.entries_at,
            entries_len: self.entries_len,
            extent_count: self.extent_count,
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
            && self.entries.get() == other.entries.get()
    }
}

/// Decodes the location fields of one per-block entry (versions 1-3); `None`: not valid.
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
    /// Builds a map from per-block entries sorted by block (runs become extents).
    pub fn new(interval: Interval, block_size: u32, entries: Vec<(u64, Location)>) -> DeltaMap {
        DeltaMap::from_extents(interval, ExtentMap::from_blocks(block_size, entries))
    }

    /// Builds a map of the interval from its extents.
    pub fn from_extents(interval: Interval, entries: ExtentMap) -> DeltaMap {
        DeltaMap {
            interval,
            flags: 0,
            block_size: entries.block_size(),
            retention_class: 0,
            blocks: entries.set(),
            version: VERSION,
            entries_at: 0,
            entries_len: 0,
            extent_count: 0,
            entries: OnceLock::from(entries),
        }
    }

    /// Number of blocks the interval changed.
    pub fn len(&self) -> usize {
        usize::try_from(self.blocks.len()).unwrap_or(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Whether the entries are loaded (always, but for a head decoded alone).
    pub fn has_entries(&self) -> bool {
        self.entries.get().is_some()
    }

    /// The entries, if loaded.
    pub fn entries(&self) -> Option<&ExtentMap> {
        self.entries.get()
    }

    /// Extents of the loaded entries (what they cost in memory, in extents); `None` when
    /// not loaded.
    pub fn extent_count(&self) -> Option<usize> {
        self.entries.get().map(|e| e.extents().len())
    }

    /// What the map costs in memory once its entries are loaded, in bytes (an estimate
    /// from the file while they are not): the cache budgets maps by it.
    pub fn memory_bytes(&self) -> u64 {
        let head = 160 + 16 * self.blocks.run_count() as u64;
        let entries = match self.entries.get() {
            Some(e) => std::mem::size_of_val(e.extents()) as u64 + 4 * e.crcs().len() as u64,
            None => self.entries_len,
        };
        head + entries
    }

    /// Where the entries are in the file: byte offset and length (their crc included).
    pub fn entries_range(&self) -> (u64, u64) {
        (self.entries_at, self.entries_len)
    }

    /// Every block and its location in block order (none while the entries are not
    /// loaded). O(blocks): for tests and checks; readers use [`DeltaMap::entries`].
    pub fn iter(&self) -> impl Iterator<Item = (u64, Location)> + '_ {
        self.entries.get().into_iter().flat_map(|e| e.iter_blocks())
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
        match self.entries.get() {
            None => Lookup::NotLoaded,
            Some(e) => e.find(block).map_or(Lookup::Absent, Lookup::Found),
        }
    }

    /// Encodes the map (version 4). The entries must be loaded (an empty map otherwise).
    pub fn encode(&self) -> Vec<u8> {
        let empty = ExtentMap::new(self.block_size);
        let entries = self.entries.get().unwrap_or(&empty);
        let set = self.blocks.runs();
        let mut out = Vec::with_capacity(
            HEAD_FIXED_LEN
                + set.len() * SET_RUN_LEN
                + entries.extents().len() * EXTENT_LEN
                + entries.crcs().len() * 4
                + 4,
        );
        let mut w = Writer(&mut out);
        w.bytes(MAGIC);
        w.u16(VERSION);
        w.u16(self.flags);
        w.u32(self.block_size);
        w.u64(self.interval.seq_from.0);
        w.u64(self.interval.seq_to.0);
        w.i64(self.interval.time_from_ns);
        w.i64(self.interval.time_to_ns);
        w.u64(self.blocks.len());
        w.u32(u32::try_from(set.len()).unwrap_or(u32::MAX));
        w.u8(self.retention_class);
        w.bytes(&[0; 3]);
        w.u64(entries.extents().len() as u64);
        w.u64(entries.crcs().len() as u64);
        let set_at = out.len() + 4;
        let mut w = Writer(&mut out);
        w.u32(0);
        for &(first, end) in set {
            w.u64(first);
            w.u64(end - first);
        }
        let head_crc = crc32c::crc32c_append(crc32c::crc32c(&out[..HEADER_LEN]), &out[set_at..]);
        out[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&head_crc.to_le_bytes());
        let entries_at = out.len();
        let mut w = Writer(&mut out);
        for e in entries.extents() {
            let (segment, offset, kind) = match e.loc {
                ExtentLoc::Zero => (0, 0, KIND_ZERO),
                ExtentLoc::Record { segment, offset } => (segment.0 .0, offset, KIND_RECORD),
                ExtentLoc::Blocks {
                    segment, offset, ..
                } => (segment.0 .0, offset, KIND_BLOCK),
            };
            w.u64(e.first);
            w.u64(e.count);
            w.u64(segment);
            w.u64(offset);
            w.u32(kind);
            w.u32(0);
        }
        for c in entries.crcs() {
            w.u32(*c);
        }
        let entries_crc = crc32c::crc32c(&out[entries_at..]);
        out.extend_from_slice(&entries_crc.to_le_bytes());
        out
    }

    /// How many bytes from the start of the file the head of the map takes, from its first
    /// [`HEAD_FIXED_LEN`] bytes (fewer for a version 3 map): `Some(n)` for versions 3 and 4
    /// (read `n` bytes and call [`DeltaMap::decode_head`]); `None` for the older versions,
    /// which decode only whole ([`DeltaMap::decode_owned`]). Not checked yet: the head's
    /// crc covers it.
    pub fn head_len(first: &[u8]) -> Result<Option<usize>, DecodeError> {
        check_magic(first, MAGIC, WHAT)?;
        let mut r = Reader::new(first, WHAT);
        r.take(8)?;
        let version = r.u16()?;
        match version {
            3 => {
                r.take(46)?;
                let set_len = r.u32()? as usize;
                Ok(Some(V3_HEAD_FIXED_LEN + set_len))
            }
            VERSION => {
                r.take(46)?;
                let runs = r.u32()? as usize;
                Ok(Some(HEAD_FIXED_LEN + runs * SET_RUN_LEN))
            }
            v if (OLDEST_VERSION..3).contains(&v) => Ok(None),
            v => {
                check_version(v, VERSION, WHAT)?;
                Ok(None)
            }
        }
    }

    /// Decodes the whole file.
    pub fn decode(buf: &[u8]) -> Result<DeltaMap, DecodeError> {
        DeltaMap::decode_owned(buf.to_vec())
    }

    /// Decodes the whole file from its bytes.
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

    /// Decodes the head of a version 3 or 4 map (its first [`DeltaMap::head_len`] bytes):
    /// header and block set, checked. The entries follow at [`DeltaMap::entries_range`];
    /// load them with [`DeltaMap::attach_entries`] when a lookup needs them.
    pub fn decode_head(buf: &[u8]) -> Result<DeltaMap, DecodeError> {
        check_magic(buf, MAGIC, WHAT)?;
        let mut r = Reader::new(buf, WHAT);
        r.take(8)?;
        let version = r.u16()?;
        if version == 3 {
            return DeltaMap::decode_head_v3(buf);
        }
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
        let set_runs = r.u32()? as usize;
        let retention_class = r.u8()?;
        r.take(3)?;
        let extent_count = r.u64()?;
        let crc_count = r.u64()?;
        let stored = r.u32()?;
        let set_len = set_runs
            .checked_mul(SET_RUN_LEN)
            .ok_or(DecodeError::invalid(56, WHAT, "set runs"))?;
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
        check_header(block_size, &interval)?;
        let mut blocks = ExtentSet::new();
        for (i, run) in set.chunks_exact(SET_RUN_LEN).enumerate() {
            let (first, n) = (u64_at(run, 0), u64_at(run, 8));
            let at = HEAD_FIXED_LEN + i * SET_RUN_LEN;
            let ok = first
                .checked_add(n)
                .filter(|_| n > 0 && blocks.max().is_none_or(|m| first > m + 1))
                .is_some_and(|end| blocks.push(first, end));
            if !ok {
                return Err(DecodeError::invalid(at, WHAT, "block set run out of order"));
            }
        }
        if blocks.len() != count {
            return Err(DecodeError::invalid(
                48,
                WHAT,
                "block count disagrees with the block set",
            ));
        }
        let entries_len = extent_count
            .checked_mul(EXTENT_LEN as u64)
            .and_then(|n| n.checked_add(crc_count.checked_mul(4)?))
            .and_then(|n| n.checked_add(4))
            .filter(|_| extent_count <= count && crc_count <= count)
            .ok_or(DecodeError::invalid(64, WHAT, "extent or crc count"))?;
        Ok(DeltaMap {
            interval,
            flags,
            block_size,
            retention_class,
            blocks,
            version,
            entries_at: r.pos() as u64,
            entries_len,
            extent_count,
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
        let body = check_trailing_crc(&bytes, WHAT_ENTRIES).map_err(|e| e.shifted(at))?;
        let entries = if self.version == 3 {
            self.v3_entries(body)?
        } else {
            self.v4_entries(body)?
        };
        if entries.set() != self.blocks {
            return Err(DecodeError::invalid_at(
                at,
                WHAT,
                "entries disagree with the block set",
            ));
        }
        let _ = self.entries.set(entries);
        Ok(())
    }

    fn v4_entries(&self, body: &[u8]) -> Result<ExtentMap, DecodeError> {
        let at = self.entries_at;
        // The length was checked against the counts (entries_len) by the caller.
        let split = usize::try_from(self.extent_count)
            .unwrap_or(usize::MAX)
            .saturating_mul(EXTENT_LEN)
            .min(body.len());
        let (raw, raw_crcs) = body.split_at(split);
        let n_extents = raw.len() / EXTENT_LEN;
        let mut extents = Vec::with_capacity(n_extents);
        let mut crc_at = 0u64;
        for (i, e) in raw.chunks_exact(EXTENT_LEN).enumerate() {
            let bad = |detail| DecodeError::invalid_at(at + (i * EXTENT_LEN) as u64, WHAT, detail);
            let (first, count) = (u64_at(e, 0), u64_at(e, 8));
            let (seg, offset, kind) = (u64_at(e, 16), u64_at(e, 24), u32_at(e, 32));
            let segment = SegmentId(Seq(seg));
            let loc = match kind {
                KIND_ZERO if seg == 0 && offset == 0 => ExtentLoc::Zero,
                KIND_RECORD if seg != 0 => ExtentLoc::Record { segment, offset },
                KIND_BLOCK if seg != 0 => {
                    let loc = ExtentLoc::Blocks {
                        segment,
                        offset,
                        crc_at,
                    };
                    crc_at = crc_at.saturating_add(count);
                    loc
                }
                _ => return Err(bad("extent location")),
            };
            if u32_at(e, 36) != 0 {
                return Err(bad("reserved bytes"));
            }
            extents.push(MapExtent { first, count, loc });
        }
        let crcs: Vec<u32> = raw_crcs.chunks_exact(4).map(|c| u32_at(c, 0)).collect();
        ExtentMap::from_parts(self.block_size, extents, crcs).map_err(|bad| match bad {
            BadExtent::Order(i) => {
                DecodeError::invalid_at(at + (i * EXTENT_LEN) as u64, WHAT, "extents out of order")
            }
            BadExtent::Crcs(i) => DecodeError::invalid_at(
                at + (i * EXTENT_LEN) as u64,
                WHAT,
                "extents and crcs disagree",
            ),
        })
    }

    /// Version 3: the head, its block set a roaring treemap.
    fn decode_head_v3(buf: &[u8]) -> Result<DeltaMap, DecodeError> {
        let mut r = Reader::new(buf, WHAT);
        r.take(10)?;
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
        let computed = crc32c::crc32c_append(crc32c::crc32c(&buf[..V3_HEADER_LEN]), set);
        if stored != computed {
            return Err(DecodeError::Checksum {
                offset: V3_HEADER_LEN as u64,
                what: WHAT,
                stored,
                computed,
            });
        }
        check_header(block_size, &interval)?;
        let set = RoaringTreemap::deserialize_from(set).map_err(|_| {
            DecodeError::invalid(V3_HEAD_FIXED_LEN, WHAT, "block set does not decode")
        })?;
        if set.len() != count {
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
            blocks: ExtentSet::from_roaring(&set),
            version: 3,
            entries_at: r.pos() as u64,
            entries_len,
            extent_count: 0,
            entries: OnceLock::new(),
        })
    }

    /// Version 3 entries: one per block of the set, in block order.
    fn v3_entries(&self, body: &[u8]) -> Result<ExtentMap, DecodeError> {
        let at = self.entries_at;
        let mut locs = Vec::with_capacity(body.len() / ENTRY_LEN_V3);
        for (i, (e, b)) in body
            .chunks_exact(ENTRY_LEN_V3)
            .zip(self.blocks.iter())
            .enumerate()
        {
            let Some(loc) = location_of(e) else {
                return Err(DecodeError::invalid_at(
                    at + (i * ENTRY_LEN_V3) as u64,
                    WHAT,
                    "entry location",
                ));
            };
            locs.push((b, loc));
        }
        Ok(ExtentMap::from_blocks(self.block_size, locs))
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
        let set = RoaringTreemap::deserialize_from(set)
            .map_err(|_| DecodeError::invalid(set_at, WHAT, "block set does not decode"))?;
        if set.len() != count {
            return Err(DecodeError::invalid(
                set_at,
                WHAT,
                "block set disagrees with entries",
            ));
        }
        // One pass: every entry valid, sorted, and the very block the set holds at its rank.
        let mut in_set = set.iter();
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
            owned.push((block, loc));
        }
        let entries = ExtentMap::from_blocks(block_size, owned);
        Ok(DeltaMap {
            interval,
            flags,
            block_size,
            retention_class,
            blocks: entries.set(),
            version,
            entries_at: 0,
            entries_len: 0,
            extent_count: 0,
            entries: OnceLock::from(entries),
        })
    }
}

/// Checks the header fields every version has.
fn check_header(block_size: u32, interval: &Interval) -> Result<(), DecodeError> {
    if !crate::valid_block_size(block_size) {
        return Err(DecodeError::invalid(12, WHAT, "block size"));
    }
    if interval.seq_from > interval.seq_to || interval.seq_from == Seq::BASE {
        return Err(DecodeError::invalid(16, WHAT, "interval bounds"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval() -> Interval {
        Interval {
            seq_from: Seq(1),
            seq_to: Seq(9),
            time_from_ns: 10,
            time_to_ns: 20,
        }
    }

    /// The map the golden files of versions 1-3 hold.
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
        DeltaMap::new(interval(), 4096, entries)
    }

    /// Extents of every kind, long ones among them: a trim of a whole 1 TiB volume, then
    /// a record and a run of blocks written over parts of it.
    fn extents_sample() -> DeltaMap {
        use crate::extents::{ExtentOverlay, NewLoc};
        let mut o = ExtentOverlay::new(4096);
        o.put(0, 1 << 28, NewLoc::Zero);
        o.put(
            100,
            16,
            NewLoc::Record {
                segment: SegmentId(Seq(2)),
                offset: 4096,
            },
        );
        let crcs: Vec<u32> = (0..300).map(|i| 0x1000 + i).collect();
        o.put(
            1000,
            300,
            NewLoc::Blocks {
                segment: SegmentId(Seq(2)),
                offset: 1 << 20,
                crcs: &crcs,
            },
        );
        o.put(1100, 1, NewLoc::Zero);
        DeltaMap::from_extents(interval(), o.freeze())
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
    fn a_trim_of_a_whole_tib_volume_costs_bytes_not_blocks() {
        let m = extents_sample();
        let buf = m.encode();
        assert!(buf.len() < 2048, "{} bytes", buf.len());
        let back = DeltaMap::decode(&buf).expect("decodes");
        assert_eq!(back, m);
        assert_eq!(back.len(), 1 << 28);
        assert_eq!(back.blocks.run_count(), 1);
        assert_eq!(back.find((1 << 28) - 1), Lookup::Found(Location::Zero));
        assert_eq!(back.find(1 << 28), Lookup::Absent);
        assert!(matches!(
            back.find(107),
            Lookup::Found(Location::Data { offset: 4096, .. })
        ));
        assert_eq!(
            back.find(1101),
            Lookup::Found(Location::Block {
                segment: SegmentId(Seq(2)),
                offset: (1 << 20) + 101 * 4096,
                crc: 0x1000 + 101,
            })
        );
        assert_eq!(back.find(1100), Lookup::Found(Location::Zero));
        assert_eq!(back.extent_count(), Some(7));
    }

    #[test]
    fn the_head_decodes_alone_and_the_entries_load_later() {
        for m in [sample(), extents_sample()] {
            let buf = m.encode();
            let head_len = DeltaMap::head_len(&buf[..HEAD_FIXED_LEN])
                .expect("head length")
                .expect("version 4");
            let head = DeltaMap::decode_head(&buf[..head_len]).expect("head decodes");
            assert!(!head.has_entries());
            assert_eq!(head.len(), m.len());
            let outside = m.last_block().expect("blocks") + 1;
            assert_eq!(head.find(outside), Lookup::Absent);
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
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_an_error() {
        for m in [sample(), extents_sample()] {
            let buf = m.encode();
            for i in 0..buf.len() {
                let mut bad = buf.clone();
                bad[i] ^= 0x20;
                assert!(DeltaMap::decode(&bad).is_err(), "flip at {i}");
            }
            for n in 0..buf.len() {
                assert!(DeltaMap::decode(&buf[..n]).is_err(), "cut at {n}");
            }
        }
    }

    /// Bytes the version 1 encoder wrote for `sample()` without its block entry (the
    /// code of commit a2e04b6).
    const GOLDEN_V1: &[u8] = include_bytes!("../tests/golden/delta-map-v1.bin");
    /// Bytes the version 2 encoder wrote for `sample()` (the code of commit 6edee4a).
    const GOLDEN_V2: &[u8] = include_bytes!("../tests/golden/delta-map-v2.bin");
    /// Bytes the version 3 encoder wrote for `sample()` (the code of commit f2a2cc0).
    const GOLDEN_V3: &[u8] = include_bytes!("../tests/golden/delta-map-v3.bin");
    /// Bytes the version 4 encoder wrote for `sample()` (the code of commit 1cd6b66).
    const GOLDEN_V4: &[u8] = include_bytes!("../tests/golden/delta-map-v4.bin");

    /// Later versions keep decoding what this one wrote.
    #[test]
    fn version_4_still_decodes() {
        assert_eq!(u16::from_le_bytes([GOLDEN_V4[8], GOLDEN_V4[9]]), 4);
        assert_eq!(DeltaMap::decode(GOLDEN_V4), Ok(sample()));
        for i in 0..GOLDEN_V4.len() {
            let mut bad = GOLDEN_V4.to_vec();
            bad[i] ^= 0x10;
            assert!(DeltaMap::decode(&bad).is_err(), "flip at {i}");
        }
    }

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
    fn versions_2_and_3_still_decode_and_are_rewritten_as_version_4() {
        assert_eq!(u16::from_le_bytes([GOLDEN_V2[8], GOLDEN_V2[9]]), 2);
        assert_eq!(u16::from_le_bytes([GOLDEN_V3[8], GOLDEN_V3[9]]), 3);
        assert_eq!(DeltaMap::head_len(GOLDEN_V2), Ok(None));
        assert!(matches!(DeltaMap::head_len(GOLDEN_V3), Ok(Some(_))));
        for golden in [GOLDEN_V2, GOLDEN_V3] {
            let m = DeltaMap::decode(golden).expect("decodes");
            assert_eq!(m, sample());
            assert_eq!(m.find(7), sample().find(7));
            let again = m.encode();
            assert_eq!(u16::from_le_bytes([again[8], again[9]]), VERSION);
            assert_eq!(DeltaMap::decode(&again), Ok(sample()));
            for i in 0..golden.len() {
                let mut bad = golden.to_vec();
                bad[i] ^= 0x04;
                assert!(DeltaMap::decode(&bad).is_err(), "flip at {i}");
            }
        }
        // A version 3 head decodes alone too, its entries later.
        let head_len = DeltaMap::head_len(GOLDEN_V3)
            .expect("head length")
            .expect("version 3");
        let head = DeltaMap::decode_head(&GOLDEN_V3[..head_len]).expect("v3 head");
        assert_eq!(head.find(7), Lookup::NotLoaded);
        head.attach_entries(GOLDEN_V3[head_len..].to_vec())
            .expect("v3 entries");
        assert_eq!(head, sample());
    }

    /// Rewrites the crcs of an encoded version 4 map after a deliberate change.
    fn reseal(buf: &mut [u8]) {
        let head_len = DeltaMap::head_len(buf)
            .expect("head length")
            .expect("version 4");
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
    fn unknown_versions_and_bad_extents_are_typed_errors() {
        let m = extents_sample();
        let mut buf = m.encode();
        let head_len = DeltaMap::head_len(&buf)
            .expect("head length")
            .expect("version 4");
        buf[8] = 5;
        let head_crc = crc32c::crc32c_append(
            crc32c::crc32c(&buf[..HEADER_LEN]),
            &buf[HEAD_FIXED_LEN..head_len],
        );
        buf[HEADER_LEN..HEAD_FIXED_LEN].copy_from_slice(&head_crc.to_le_bytes());
        assert!(matches!(
            DeltaMap::decode(&buf),
            Err(DecodeError::UnknownVersion { found: 5, .. })
        ));
        // The first extent (a zeroed one) names a segment.
        let mut buf = m.encode();
        buf[head_len + 16] = 1;
        reseal(&mut buf);
        assert!(matches!(
            DeltaMap::decode(&buf),
            Err(DecodeError::Invalid { offset, .. }) if offset == head_len as u64
        ));
        // The second extent starts inside the first.
        let mut buf = m.encode();
        buf[head_len + EXTENT_LEN] = 50;
        reseal(&mut buf);
        assert!(matches!(
            DeltaMap::decode(&buf),
            Err(DecodeError::Invalid { offset, .. }) if offset == (head_len + EXTENT_LEN) as u64
        ));
        // A count that disagrees with the block set.
        let mut buf = m.encode();
        buf[48] ^= 1;
        reseal(&mut buf);
        assert!(matches!(
            DeltaMap::decode(&buf),
            Err(DecodeError::Invalid { offset: 48, .. })
        ));
        // Extents that disagree with the block set (one block shorter).
        let mut buf = m.encode();
        let first_count = head_len + 8;
        buf[first_count] -= 1;
        reseal(&mut buf);
        assert!(matches!(
            DeltaMap::decode(&buf),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn checksum_errors_name_the_part() {
        let buf = extents_sample().encode();
        let head_len = DeltaMap::head_len(&buf)
            .expect("head length")
            .expect("version 4");
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
