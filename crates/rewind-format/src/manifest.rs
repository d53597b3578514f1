//! The manifest: the vault's one mutable root, `manifest-<generation>`.
//!
//! It is never modified in place: a commit writes generation N+1 to a temporary file,
//! fsyncs it, renames it into place and fsyncs the directory; generation N is kept for
//! recovery. The whole file is covered by one trailing crc32c.
//!
//! ```text
//! magic "RWNDMANI" (8) | version u16 | reserved u16 | generation u64
//! vault_id [16] | created_ns i64 | block_size u32 | volume_size u64
//! compression u8 | zstd level i8 | seal_bytes u64 | seal_interval_ns u64 | seal_writes u64
//! next_seq u64                      first seq of the open segment
//! primary: u16 len + UTF-8 path
//! segments: u32 n, n * { first_seq u64, last_seq u64, length u64, time_from i64, time_to i64 }
//! maps:     u32 n, n * { seq_from u64, seq_to u64, time_from i64, time_to i64, flags u16,
//!                        retention_class u8, blocks_changed u64 }
//!                        flags: bit 0 merged, bit 1 fix-up, bit 2 suspect (delta_map::FLAG_*)
//! snapshots: u32 n, n * { seq u64, time i64, flags u8, u16 len + UTF-8 name }
//! suspects (version 2 on): u32 n, n * { seq_from u64, seq_to u64 (both 0: the base image),
//!                        reasons u8, marked_ns i64, scan_seq u64,
//!                        u32 len + portable roaring treemap of the suspect blocks }
//! intents (version 3 on): see [`crate::intent`]
//! crc u32 over everything before
//! ```
//!
//! Version history: 1 had no suspects list; it still decodes (with none). Version 2 added
//! it. Version 3 added the intents list (work under way that the next opener finishes);
//! 1 and 2 decode with none. Delta map files are immutable, so whether an interval is suspect or a fix-up lives
//! here, in its map entry's flags; the suspects list says which blocks and why, and is the
//! only place the base image is marked suspect.

use crate::codec::{
    check_magic, check_trailing_crc, check_version, push_trailing_crc, Reader, Writer,
};
use crate::compress::Compression;
use crate::delta_map::Interval;
use crate::delta_map::FLAG_SUSPECT;
use crate::intent::Intent;
use crate::{DecodeError, Generation, SegmentId, Seq};
use roaring::RoaringTreemap;

pub const MAGIC: &[u8; 8] = b"RWNDMANI";
/// The version this build writes.
pub const VERSION: u16 = 3;
/// The oldest version this build still decodes.
pub const OLDEST_VERSION: u16 = 1;
const WHAT: &str = "manifest";

/// A suspect entry's reason: the vault's copy of the blocks differed from the primary.
pub const SUSPECT_DIFFERS: u8 = 1;
/// A suspect entry's reason: the vault's copy of the blocks failed its checksum.
pub const SUSPECT_UNREADABLE: u8 = 2;
const KNOWN_REASONS: u8 = SUSPECT_DIFFERS | SUSPECT_UNREADABLE;

/// When the open segment is sealed (besides on every marker). Zero turns a trigger off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealPolicy {
    /// Seal when the open segment reaches this many bytes.
    pub bytes: u64,
    /// Seal when the open interval is older than this.
    pub interval_ns: u64,
    /// Seal after this many records.
    pub writes: u64,
}

impl Default for SealPolicy {
    fn default() -> Self {
        SealPolicy {
            bytes: 256 << 20,
            interval_ns: 600_000_000_000,
            writes: 65_536,
        }
    }
}

/// A sealed write log segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentEntry {
    pub id: SegmentId,
    pub last_seq: Seq,
    /// Bytes of the file that hold records (header included); anything after is not part
    /// of the log.
    pub length: u64,
    pub time_from_ns: i64,
    pub time_to_ns: i64,
}

/// A delta map in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEntry {
    pub interval: Interval,
    pub flags: u16,
    pub retention_class: u8,
    pub blocks_changed: u64,
}

/// A named point (bookmark) the user asked to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub name: String,
    pub seq: Seq,
    pub time_ns: i64,
    pub app_consistent: bool,
}

/// Blocks whose data in one delta map (or the base image) is not trustworthy: a sync found
/// the vault's copy of them wrong when it compared the vault with the primary, and this
/// map (or the base) was where that copy came from. Points that read these blocks from
/// here are suspect for them.
#[derive(Debug, Clone, PartialEq)]
pub struct SuspectEntry {
    /// The interval of the suspect delta map; `None`: the base image.
    pub interval: Option<(Seq, Seq)>,
    pub blocks: RoaringTreemap,
    /// Why: [`SUSPECT_DIFFERS`] and/or [`SUSPECT_UNREADABLE`].
    pub reasons: u8,
    /// When the sync that marked them ran (the latest one, when several did).
    pub marked_ns: i64,
    /// The point that sync compared with the primary (the vault was wrong there).
    pub scan_seq: Seq,
}

// RoaringTreemap's equality is an equivalence; it only lacks the marker trait.
impl Eq for SuspectEntry {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub generation: Generation,
    pub vault_id: [u8; 16],
    pub created_ns: i64,
    pub block_size: u32,
    pub volume_size: u64,
    pub compression: Compression,
    pub seal: SealPolicy,
    pub next_seq: Seq,
    pub primary: String,
    pub segments: Vec<SegmentEntry>,
    pub maps: Vec<MapEntry>,
    pub snapshots: Vec<SnapshotEntry>,
    /// Suspect blocks, per delta map (flagged [`FLAG_SUSPECT`] in `maps`) or the base image.
    pub suspects: Vec<SuspectEntry>,
    /// Work under way (at most one of each kind).
    pub intents: Vec<Intent>,
}

impl Manifest {
    /// The suspect entry of the base image, if the base is suspect.
    pub fn base_suspect(&self) -> Option<&SuspectEntry> {
        self.suspects.iter().find(|s| s.interval.is_none())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.segments.len() * 40 + self.maps.len() * 48);
        let mut w = Writer(&mut out);
        w.bytes(MAGIC);
        w.u16(VERSION);
        w.u16(0);
        w.u64(self.generation.0);
        w.bytes(&self.vault_id);
        w.i64(self.created_ns);
        w.u32(self.block_size);
        w.u64(self.volume_size);
        w.u8(self.compression.code());
        w.u8(self.compression.level() as u8);
        w.u64(self.seal.bytes);
        w.u64(self.seal.interval_ns);
        w.u64(self.seal.writes);
        w.u64(self.next_seq.0);
        w.short_bytes(self.primary.as_bytes());
        w.u32(self.segments.len() as u32);
        for s in &self.segments {
            w.u64(s.id.0 .0);
            w.u64(s.last_seq.0);
            w.u64(s.length);
            w.i64(s.time_from_ns);
            w.i64(s.time_to_ns);
        }
        w.u32(self.maps.len() as u32);
        for m in &self.maps {
            w.u64(m.interval.seq_from.0);
            w.u64(m.interval.seq_to.0);
            w.i64(m.interval.time_from_ns);
            w.i64(m.interval.time_to_ns);
            w.u16(m.flags);
            w.u8(m.retention_class);
            w.u64(m.blocks_changed);
        }
        w.u32(self.snapshots.len() as u32);
        for s in &self.snapshots {
            w.u64(s.seq.0);
            w.i64(s.time_ns);
            w.u8(u8::from(s.app_consistent));
            w.short_bytes(s.name.as_bytes());
        }
        w.u32(self.suspects.len() as u32);
        for s in &self.suspects {
            let (from, to) = s.interval.unwrap_or((Seq::BASE, Seq::BASE));
            w.u64(from.0);
            w.u64(to.0);
            w.u8(s.reasons);
            w.i64(s.marked_ns);
            w.u64(s.scan_seq.0);
            let mut set = Vec::with_capacity(s.blocks.serialized_size());
            // Serializing into a Vec cannot fail.
            let _ = s.blocks.serialize_into(&mut set);
            w.u32(set.len() as u32);
            w.bytes(&set);
        }
        w.u32(self.intents.len() as u32);
        for i in &self.intents {
            i.encode(&mut w);
        }
        push_trailing_crc(&mut out);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Manifest, DecodeError> {
        check_magic(buf, MAGIC, WHAT)?;
        let body = check_trailing_crc(buf, WHAT)?;
        let mut r = Reader::new(body, WHAT);
        r.take(8)?;
        let version = r.u16()?;
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            check_version(version, VERSION, WHAT)?;
        }
        r.u16()?;
        let generation = Generation(r.u64()?);
        let mut vault_id = [0u8; 16];
        vault_id.copy_from_slice(r.take(16)?);
        let created_ns = r.i64()?;
        let bs_at = r.pos();
        let block_size = r.u32()?;
        if !crate::valid_block_size(block_size) {
            return Err(DecodeError::invalid(bs_at, WHAT, "block size"));
        }
        let volume_size = r.u64()?;
        let c_at = r.pos();
        let code = r.u8()?;
        let level = r.u8()? as i8;
        let compression = Compression::from_code(code, level).ok_or(DecodeError::invalid(
            c_at,
            WHAT,
            "unknown compression",
        ))?;
        let seal = SealPolicy {
            bytes: r.u64()?,
            interval_ns: r.u64()?,
            writes: r.u64()?,
        };
        let next_seq = Seq(r.u64()?);
        let p_at = r.pos();
        let primary = utf8(r.short_bytes()?, p_at, "primary path")?;
        let n = count(&mut r, 40)?;
        let mut segments = Vec::with_capacity(n);
        for _ in 0..n {
            segments.push(SegmentEntry {
                id: SegmentId(Seq(r.u64()?)),
                last_seq: Seq(r.u64()?),
                length: r.u64()?,
                time_from_ns: r.i64()?,
                time_to_ns: r.i64()?,
            });
        }
        let n = count(&mut r, 43)?;
        let mut maps = Vec::with_capacity(n);
        for _ in 0..n {
            maps.push(MapEntry {
                interval: Interval {
                    seq_from: Seq(r.u64()?),
                    seq_to: Seq(r.u64()?),
                    time_from_ns: r.i64()?,
                    time_to_ns: r.i64()?,
                },
                flags: r.u16()?,
                retention_class: r.u8()?,
                blocks_changed: r.u64()?,
            });
        }
        let n = count(&mut r, 19)?;
        let mut snapshots = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = Seq(r.u64()?);
            let time_ns = r.i64()?;
            let app_consistent = r.u8()? != 0;
            let at = r.pos();
            let name = utf8(r.short_bytes()?, at, "snapshot name")?;
            snapshots.push(SnapshotEntry {
                name,
                seq,
                time_ns,
                app_consistent,
            });
        }
        let suspects = if version >= 2 {
            decode_suspects(&mut r)?
        } else {
            Vec::new()
        };
        let intents = if version >= 3 {
            let n = count(&mut r, 5)?;
            (0..n)
                .map(|_| Intent::decode(&mut r))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        if r.pos() != body.len() {
            return Err(DecodeError::invalid(r.pos(), WHAT, "trailing bytes"));
        }
        let m = Manifest {
            generation,
            vault_id,
            created_ns,
            block_size,
            volume_size,
            compression,
            seal,
            next_seq,
            primary,
            segments,
            maps,
            snapshots,
            suspects,
            intents,
        };
        m.check_chain()?;
        m.check_suspects()?;
        Ok(m)
    }

    /// Suspect entries and suspect flags must agree: one entry per flagged map and none
    /// for another, at most one for the base, blocks inside the volume, known reasons.
    fn check_suspects(&self) -> Result<(), DecodeError> {
        let bad = |detail| Err(DecodeError::invalid(0, WHAT, detail));
        let blocks = self.volume_size / u64::from(self.block_size);
        let mut seen = std::collections::HashSet::new();
        for s in &self.suspects {
            if !seen.insert(s.interval) {
                return bad("two suspect entries for one delta map");
            }
            if s.blocks.is_empty() || s.blocks.max().is_some_and(|b| b >= blocks) {
                return bad("suspect blocks empty or outside the volume");
            }
            if s.reasons == 0 || s.reasons & !KNOWN_REASONS != 0 {
                return bad("unknown suspect reason");
            }
            if s.scan_seq >= self.next_seq {
                return bad("suspect scan seq is after the newest sealed record");
            }
            if let Some((from, to)) = s.interval {
                let flagged = self.maps.iter().any(|m| {
                    m.interval.seq_from == from
                        && m.interval.seq_to == to
                        && m.flags & FLAG_SUSPECT != 0
                });
                if !flagged || to > s.scan_seq {
                    return bad("suspect entry names no suspect delta map before its scan");
                }
            }
        }
        let flagged = self
            .maps
            .iter()
            .filter(|m| m.flags & FLAG_SUSPECT != 0)
            .count();
        let entries = self
            .suspects
            .iter()
            .filter(|s| s.interval.is_some())
            .count();
        if flagged != entries {
            return bad("a suspect delta map has no suspect entry");
        }
        Ok(())
    }

    /// The segments and maps must tile seq 1..next_seq in order, without gaps.
    fn check_chain(&self) -> Result<(), DecodeError> {
        let mut expect = Seq(1);
        for s in &self.segments {
            if s.id.0 != expect || s.last_seq < s.id.0 {
                return Err(DecodeError::invalid(
                    0,
                    WHAT,
                    "segments do not tile the log",
                ));
            }
            expect = s.last_seq.next();
        }
        if expect != self.next_seq {
            return Err(DecodeError::invalid(
                0,
                WHAT,
                "next seq does not follow the last segment",
            ));
        }
        let mut expect = Seq(1);
        for m in &self.maps {
            if m.interval.seq_from != expect || m.interval.seq_to < m.interval.seq_from {
                return Err(DecodeError::invalid(
                    0,
                    WHAT,
                    "delta maps do not tile the log",
                ));
            }
            expect = m.interval.seq_to.next();
        }
        if expect != self.next_seq {
            return Err(DecodeError::invalid(
                0,
                WHAT,
                "delta map chain does not reach next seq",
            ));
        }
        Ok(())
    }
}

fn decode_suspects(r: &mut Reader<'_>) -> Result<Vec<SuspectEntry>, DecodeError> {
    let n = count(r, 41)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.pos();
        let from = Seq(r.u64()?);
        let to = Seq(r.u64()?);
        let interval = match (from, to) {
            (Seq::BASE, Seq::BASE) => None,
            (f, t) if f != Seq::BASE && f <= t => Some((f, t)),
            _ => return Err(DecodeError::invalid(at, WHAT, "suspect interval bounds")),
        };
        let reasons = r.u8()?;
        let marked_ns = r.i64()?;
        let scan_seq = Seq(r.u64()?);
        let len = r.u32()? as usize;
        let set_at = r.pos();
        let set = r.take(len)?;
        let blocks = RoaringTreemap::deserialize_from(set)
            .map_err(|_| DecodeError::invalid(set_at, WHAT, "suspect block set does not decode"))?;
        out.push(SuspectEntry {
            interval,
            blocks,
            reasons,
            marked_ns,
            scan_seq,
        });
    }
    Ok(out)
}

fn count(r: &mut Reader<'_>, min_entry: usize) -> Result<usize, DecodeError> {
    let at = r.pos();
    let n = r.u32()? as usize;
    // Each entry takes at least `min_entry` bytes: a count the file cannot hold is corrupt
    // (and must not make us allocate for it).
    if n.saturating_mul(min_entry) > 1 << 31 {
        return Err(DecodeError::invalid(at, WHAT, "entry count"));
    }
    Ok(n)
}

fn utf8(b: &[u8], at: usize, what: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::invalid(at, what, "not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let iv = Interval {
            seq_from: Seq(1),
            seq_to: Seq(10),
            time_from_ns: 5,
            time_to_ns: 9,
        };
        Manifest {
            generation: Generation(3),
            vault_id: [1; 16],
            created_ns: 1,
            block_size: 4096,
            volume_size: 1 << 30,
            compression: Compression::Zstd { level: 3 },
            // Spelled out: the golden version-1 bytes carry the default of that time.
            seal: SealPolicy {
                bytes: 64 << 20,
                interval_ns: 600_000_000_000,
                writes: 65_536,
            },
            next_seq: Seq(11),
            primary: "/var/lib/vm/disk.img".into(),
            segments: vec![SegmentEntry {
                id: SegmentId(Seq(1)),
                last_seq: Seq(10),
                length: 9000,
                time_from_ns: 5,
                time_to_ns: 9,
            }],
            maps: vec![MapEntry {
                interval: iv,
                flags: 0,
                retention_class: 0,
                blocks_changed: 4,
            }],
            snapshots: vec![SnapshotEntry {
                name: "before-upgrade".into(),
                seq: Seq(10),
                time_ns: 9,
                app_consistent: true,
            }],
            suspects: Vec::new(),
            intents: Vec::new(),
        }
    }

    /// The sample with its map and the base image marked suspect.
    fn with_suspects() -> Manifest {
        let mut m = sample();
        m.maps[0].flags |= FLAG_SUSPECT;
        m.suspects = vec![
            SuspectEntry {
                interval: Some((Seq(1), Seq(10))),
                blocks: [3u64, 4, 70_000].into_iter().collect(),
                reasons: SUSPECT_DIFFERS,
                marked_ns: 11,
                scan_seq: Seq(10),
            },
            SuspectEntry {
                interval: None,
                blocks: [5u64].into_iter().collect(),
                reasons: SUSPECT_DIFFERS | SUSPECT_UNREADABLE,
                marked_ns: 11,
                scan_seq: Seq(10),
            },
        ];
        m
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()), Ok(m));
        let m = with_suspects();
        let back = Manifest::decode(&m.encode()).expect("decodes");
        assert_eq!(back.base_suspect().map(|s| s.blocks.len()), Some(1));
        assert_eq!(back, m);
    }

    /// Bytes a version 1 build wrote (`sample()` encoded by the code of commit 93891b5).
    const GOLDEN_V1: &[u8] = include_bytes!("../tests/golden/manifest-v1.bin");

    #[test]
    fn version_1_still_decodes_and_is_rewritten_as_the_current_version() {
        assert_eq!(u16::from_le_bytes([GOLDEN_V1[8], GOLDEN_V1[9]]), 1);
        let m = Manifest::decode(GOLDEN_V1).expect("version 1 decodes");
        assert_eq!(m, sample(), "a version 1 manifest has no suspects");
        let again = m.encode();
        assert_eq!(u16::from_le_bytes([again[8], again[9]]), VERSION);
        assert_eq!(Manifest::decode(&again), Ok(m));
        for i in 0..GOLDEN_V1.len() {
            let mut bad = GOLDEN_V1.to_vec();
            bad[i] ^= 0x80;
            assert!(Manifest::decode(&bad).is_err(), "v1 flip at {i}");
        }
    }

    /// Bytes a version 2 build wrote (`with_suspects()` encoded by the code of 660e5c4).
    const GOLDEN_V2: &[u8] = include_bytes!("../tests/golden/manifest-v2.bin");

    #[test]
    fn version_2_still_decodes_with_no_intents() {
        assert_eq!(u16::from_le_bytes([GOLDEN_V2[8], GOLDEN_V2[9]]), 2);
        let m = Manifest::decode(GOLDEN_V2).expect("version 2 decodes");
        assert_eq!(m, with_suspects());
        let again = m.encode();
        assert_eq!(u16::from_le_bytes([again[8], again[9]]), VERSION);
        assert_eq!(Manifest::decode(&again), Ok(m));
        for i in 0..GOLDEN_V2.len() {
            let mut bad = GOLDEN_V2.to_vec();
            bad[i] ^= 0x80;
            assert!(Manifest::decode(&bad).is_err(), "v2 flip at {i}");
        }
    }

    fn with_intent() -> Manifest {
        let mut m = sample();
        m.intents = vec![Intent::RestoreInPlace(crate::intent::RestoreInPlace {
            target_seq: Seq(7),
            target_time_ns: 8,
            started_ns: 12,
            undo_snapshot: "undo-restore-at-seq-10".into(),
            point: "-15m".into(),
        })];
        m
    }

    #[test]
    fn the_serving_fact_round_trips_and_damage_is_an_error() {
        let mut m = sample();
        m.intents = vec![Intent::Serving(crate::intent::Serving {
            boot_id: [9; 16],
            checkpoint_seq: Seq(4),
        })];
        let buf = m.encode();
        assert_eq!(Manifest::decode(&buf), Ok(m));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(Manifest::decode(&bad).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn intents_round_trip_and_damage_is_an_error() {
        let m = with_intent();
        let buf = m.encode();
        assert_eq!(Manifest::decode(&buf), Ok(m));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x04;
            assert!(Manifest::decode(&bad).is_err(), "flip at {i}");
        }
        for n in 0..buf.len() {
            assert!(Manifest::decode(&buf[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn an_unknown_intent_kind_is_refused() {
        let buf = with_intent().encode();
        // The kind byte follows the count of intents, 4 bytes after the suspects (none).
        let body = buf.len() - 4;
        let payload = 8 + 8 + 8 + 2 + "undo-restore-at-seq-10".len() + 2 + "-15m".len();
        let kind_at = body - payload - 4 - 1;
        let mut bad = buf[..body].to_vec();
        assert_eq!(bad[kind_at], 1);
        bad[kind_at] = 9;
        crate::codec::push_trailing_crc(&mut bad);
        assert!(matches!(
            Manifest::decode(&bad),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn suspect_entries_must_agree_with_the_flags() {
        let reseal = |m: &Manifest| Manifest::decode(&m.encode());
        // An entry for a map that is not flagged suspect.
        let mut m = with_suspects();
        m.maps[0].flags = 0;
        assert!(matches!(reseal(&m), Err(DecodeError::Invalid { .. })));
        // A flagged map without an entry.
        let mut m = with_suspects();
        m.suspects.remove(0);
        assert!(matches!(reseal(&m), Err(DecodeError::Invalid { .. })));
        // Blocks outside the volume (1 GiB / 4 KiB = 262144 blocks).
        let mut m = with_suspects();
        m.suspects[1].blocks.insert(262_144);
        assert!(matches!(reseal(&m), Err(DecodeError::Invalid { .. })));
        // No reason, or an unknown one.
        let mut m = with_suspects();
        m.suspects[1].reasons = 0;
        assert!(matches!(reseal(&m), Err(DecodeError::Invalid { .. })));
        m.suspects[1].reasons = 8;
        assert!(matches!(reseal(&m), Err(DecodeError::Invalid { .. })));
        // Two entries for the base.
        let mut m = with_suspects();
        let b = m.suspects[1].clone();
        m.suspects.push(b);
        assert!(matches!(reseal(&m), Err(DecodeError::Invalid { .. })));
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_an_error() {
        let buf = with_suspects().encode();
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x80;
            assert!(Manifest::decode(&bad).is_err(), "flip at {i}");
        }
        for n in 0..buf.len() {
            assert!(Manifest::decode(&buf[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn unknown_versions_are_typed_errors() {
        let mut buf = sample().encode();
        buf[8] = 0;
        buf[9] = 0;
        // Version 0 was never written: unknown. Version 4 is newer: unknown too.
        let n = buf.len();
        let crc = crc32c::crc32c(&buf[..n - 4]);
        buf[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Manifest::decode(&buf),
            Err(DecodeError::UnknownVersion { found: 0, .. })
        ));
        buf[8] = 4;
        let crc = crc32c::crc32c(&buf[..n - 4]);
        buf[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Manifest::decode(&buf),
            Err(DecodeError::UnknownVersion { found: 4, .. })
        ));
    }
}
