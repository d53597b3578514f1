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
//! snapshots: u32 n, n * { seq u64, time i64, flags u8, u16 len + UTF-8 name }
//! crc u32 over everything before
//! ```

use crate::codec::{
    check_magic, check_trailing_crc, check_version, push_trailing_crc, Reader, Writer,
};
use crate::compress::Compression;
use crate::delta_map::Interval;
use crate::{DecodeError, Generation, SegmentId, Seq};

pub const MAGIC: &[u8; 8] = b"RWNDMANI";
pub const VERSION: u16 = 1;
const WHAT: &str = "manifest";

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
            bytes: 64 << 20,
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
}

impl Manifest {
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
        push_trailing_crc(&mut out);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Manifest, DecodeError> {
        check_magic(buf, MAGIC, WHAT)?;
        let body = check_trailing_crc(buf, WHAT)?;
        let mut r = Reader::new(body, WHAT);
        r.take(8)?;
        check_version(r.u16()?, VERSION, WHAT)?;
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
        };
        m.check_chain()?;
        Ok(m)
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
            seal: SealPolicy::default(),
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
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_an_error() {
        let buf = sample().encode();
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
    fn older_version_asks_for_upgrade() {
        let mut buf = sample().encode();
        buf[8] = 0;
        buf[9] = 0;
        // Version 0 was never written: unknown. Version 2 is newer: unknown too.
        let n = buf.len();
        let crc = crc32c::crc32c(&buf[..n - 4]);
        buf[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Manifest::decode(&buf),
            Err(DecodeError::UnknownVersion { found: 0, .. })
        ));
    }
}
