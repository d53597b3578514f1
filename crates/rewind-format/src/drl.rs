//! The dirty region log: `<vault>/drl`.
//!
//! A coarse, persistent bitmap of the primary's regions that may hold writes the vault
//! does not have durably (written to the primary, record not yet flushed). The server sets
//! a region's bit on disk before it writes the primary there, and clears it lazily once a
//! flush covered every write to the region. After an unclean stop only the dirty regions
//! need to be compared and repaired, not the whole volume.
//!
//! It also carries the primary's checkpoint: every record up to `checkpoint_seq` is
//! durable in the primary too (a flush makes only the write log durable; the primary is
//! synced in the background). After a crash of the machine (another `boot_id`) the
//! records after the checkpoint are copied back into the primary before anything else.
//!
//! Version 2 adds the flag "behind": host writes after the checkpoint may have gone to the
//! write log only, their primary writes deferred (the primary written behind the log).
//! After an unclean stop with it set, the records after the checkpoint are copied back
//! into the primary even in the same boot: the page cache never saw those writes. It is
//! set, and synced, before the first such write after a checkpoint.
//!
//! The file holds two copies ("slots") of the bitmap, each in its own 4 KiB-aligned part of
//! the file; a write goes to the slot with the older generation, so a torn write leaves the
//! other slot intact. The valid slot with the newer generation is the DRL.
//!
//! One slot:
//!
//! ```text
//! offset size field
//!  0     8    magic          "RWNDDRL1"
//!  8     2    version        2 (1: no flag "behind")
//! 10     2    flags          bit 0: clean (written by a clean stop: no bit is set)
//!                            bit 1: behind (version 2: the primary may lag the write
//!                            log after the checkpoint)
//! 12     4    region_size    bytes per region (a power of two, >= the block size)
//! 16     8    volume_size    bytes
//! 24     8    generation     incremented on every write of the DRL
//! 32     8    checkpoint_seq every record up to this seq is durable in the primary
//! 40    16    boot_id        the machine's boot (Linux boot_id) when last written
//! 56     8    region_count   ceil(volume_size / region_size)
//! 64     n    bitmap         ceil(region_count / 8) bytes, bit i of byte j = region 8j+i
//! 64+n   4    crc            crc32c over everything before
//! ```

use crate::codec::{
    check_magic, check_trailing_crc, check_version, push_trailing_crc, Reader, Writer,
};
use crate::DecodeError;

pub const MAGIC: &[u8; 8] = b"RWNDDRL1";
pub const VERSION: u16 = 2;
/// The version before the flag "behind"; still read.
const VERSION_1: u16 = 1;
const WHAT: &str = "dirty region log";
const HEADER_LEN: usize = 64;
const FLAG_CLEAN: u16 = 1;
const FLAG_BEHIND: u16 = 2;
/// Slots start on this alignment.
const SLOT_ALIGN: usize = 4096;

/// One decoded slot of the dirty region log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyRegions {
    pub region_size: u32,
    pub volume_size: u64,
    pub generation: u64,
    /// Every record up to this seq is durable in the primary.
    pub checkpoint_seq: u64,
    /// The boot of the machine that wrote it.
    pub boot_id: [u8; 16],
    /// Written by a clean stop.
    pub clean: bool,
    /// The primary may lag the write log after the checkpoint (writes deferred).
    pub behind: bool,
    /// One bit per region.
    pub bitmap: Vec<u8>,
}

impl DirtyRegions {
    /// A DRL with no dirty region.
    pub fn new(region_size: u32, volume_size: u64) -> DirtyRegions {
        let n = region_count(region_size, volume_size);
        DirtyRegions {
            region_size,
            volume_size,
            generation: 0,
            checkpoint_seq: 0,
            boot_id: [0; 16],
            clean: true,
            behind: false,
            bitmap: vec![0; n.div_ceil(8) as usize],
        }
    }

    pub fn region_count(&self) -> u64 {
        region_count(self.region_size, self.volume_size)
    }

    pub fn is_dirty(&self, region: u64) -> bool {
        self.bitmap
            .get((region / 8) as usize)
            .is_some_and(|b| b & (1 << (region % 8)) != 0)
    }

    /// The dirty regions, in order.
    pub fn dirty(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.region_count()).filter(|r| self.is_dirty(*r))
    }

    /// Bytes one slot takes in the file (aligned).
    pub fn slot_len(region_size: u32, volume_size: u64) -> usize {
        let n = region_count(region_size, volume_size).div_ceil(8) as usize;
        (HEADER_LEN + n + 4).div_ceil(SLOT_ALIGN) * SLOT_ALIGN
    }

    /// Encodes one slot (not padded).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.bitmap.len() + 4);
        let mut w = Writer(&mut out);
        w.bytes(MAGIC);
        w.u16(VERSION);
        let flags =
            if self.clean { FLAG_CLEAN } else { 0 } | if self.behind { FLAG_BEHIND } else { 0 };
        w.u16(flags);
        w.u32(self.region_size);
        w.u64(self.volume_size);
        w.u64(self.generation);
        w.u64(self.checkpoint_seq);
        w.bytes(&self.boot_id);
        w.u64(self.region_count());
        w.bytes(&self.bitmap);
        push_trailing_crc(&mut out);
        out
    }

    /// Decodes one slot. `buf` may carry padding after the slot.
    pub fn decode_slot(buf: &[u8]) -> Result<DirtyRegions, DecodeError> {
        check_magic(buf, MAGIC, WHAT)?;
        let mut r = Reader::new(buf, WHAT);
        r.take(8)?;
        let version = r.u16()?;
        if version != VERSION_1 {
            check_version(version, VERSION, WHAT)?;
        }
        let flags = r.u16()?;
        let known = if version == VERSION_1 {
            FLAG_CLEAN
        } else {
            FLAG_CLEAN | FLAG_BEHIND
        };
        if flags & !known != 0 {
            return Err(DecodeError::invalid(10, WHAT, "unknown flags"));
        }
        let region_size = r.u32()?;
        if !region_size.is_power_of_two() || region_size < crate::MIN_BLOCK_SIZE {
            return Err(DecodeError::invalid(12, WHAT, "region size"));
        }
        let volume_size = r.u64()?;
        let generation = r.u64()?;
        let checkpoint_seq = r.u64()?;
        let mut boot_id = [0u8; 16];
        boot_id.copy_from_slice(r.take(16)?);
        let n = r.u64()?;
        if n != region_count(region_size, volume_size) || n == 0 {
            return Err(DecodeError::invalid(56, WHAT, "region count"));
        }
        let bitmap_len = usize::try_from(n.div_ceil(8))
            .map_err(|_| DecodeError::invalid(56, WHAT, "region count"))?;
        let end = HEADER_LEN
            .checked_add(bitmap_len)
            .and_then(|e| e.checked_add(4))
            .ok_or(DecodeError::invalid(56, WHAT, "region count"))?;
        if buf.len() < end {
            return Err(DecodeError::Truncated {
                offset: buf.len() as u64,
                needed: (end - buf.len()) as u64,
                what: WHAT,
            });
        }
        let body = check_trailing_crc(&buf[..end], WHAT)?;
        let bitmap = body[HEADER_LEN..].to_vec();
        let clean = flags & FLAG_CLEAN != 0;
        let behind = flags & FLAG_BEHIND != 0;
        if clean && (behind || bitmap.iter().any(|b| *b != 0)) {
            return Err(DecodeError::invalid(
                10,
                WHAT,
                "clean but has dirty regions",
            ));
        }
        Ok(DirtyRegions {
            region_size,
            volume_size,
            generation,
            checkpoint_seq,
            boot_id,
            clean,
            behind,
            bitmap,
        })
    }

    /// Decodes a whole DRL file (two slots): the valid slot with the newer generation.
    /// Both slots bad: the error of the first.
    pub fn decode_file(buf: &[u8]) -> Result<DirtyRegions, DecodeError> {
        let a = DirtyRegions::decode_slot(buf);
        let b = match &a {
            Ok(d) => {
                let at = DirtyRegions::slot_len(d.region_size, d.volume_size);
                buf.get(at..).map(DirtyRegions::decode_slot)
            }
            // Slot A is bad: find slot B at the size its own header gives.
            Err(_) => Self::slot_b_offset(buf).map(|at| DirtyRegions::decode_slot(&buf[at..])),
        };
        match (a, b) {
            (Ok(a), Some(Ok(b))) => Ok(if b.generation > a.generation { b } else { a }),
            (Ok(a), _) => Ok(a),
            (Err(_), Some(Ok(b))) => Ok(b),
            (Err(e), _) => Err(e),
        }
    }

    /// Where slot B starts, read from slot A's size fields even if slot A is damaged
    /// elsewhere: the first aligned offset that starts with the magic.
    fn slot_b_offset(buf: &[u8]) -> Option<usize> {
        (1..=buf.len() / SLOT_ALIGN)
            .map(|i| i * SLOT_ALIGN)
            .find(|&at| buf[at..].starts_with(MAGIC))
    }

    /// Offset of the slot a DRL with `generation` is written to: even generations go to
    /// slot A, odd ones to slot B.
    pub fn slot_offset(&self) -> u64 {
        if self.generation.is_multiple_of(2) {
            0
        } else {
            DirtyRegions::slot_len(self.region_size, self.volume_size) as u64
        }
    }
}

fn region_count(region_size: u32, volume_size: u64) -> u64 {
    volume_size.div_ceil(u64::from(region_size.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DirtyRegions {
        let mut d = DirtyRegions::new(1 << 20, 100 << 20);
        d.clean = false;
        d.generation = 7;
        d.checkpoint_seq = 12345;
        d.boot_id = *b"0123456789abcdef";
        d.bitmap[0] = 0b1000_0001;
        d.bitmap[12] = 0b0000_1000;
        d
    }

    #[test]
    fn round_trip_flips_and_cuts() {
        let d = sample();
        let buf = d.encode();
        assert_eq!(DirtyRegions::decode_slot(&buf), Ok(d.clone()));
        assert_eq!(d.dirty().collect::<Vec<_>>(), vec![0, 7, 99]);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(DirtyRegions::decode_slot(&bad).is_err(), "flip at {i}");
        }
        for n in 0..buf.len() {
            assert!(DirtyRegions::decode_slot(&buf[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn the_newer_valid_slot_wins_and_a_torn_slot_falls_back() {
        let mut older = sample();
        older.generation = 8;
        let mut newer = older.clone();
        newer.generation = 9;
        newer.bitmap[1] = 1;
        let len = DirtyRegions::slot_len(older.region_size, older.volume_size);
        assert_eq!(older.slot_offset(), 0);
        assert_eq!(newer.slot_offset(), len as u64);
        let mut file = vec![0u8; 2 * len];
        file[..older.encode().len()].copy_from_slice(&older.encode());
        file[len..len + newer.encode().len()].copy_from_slice(&newer.encode());
        assert_eq!(DirtyRegions::decode_file(&file), Ok(newer.clone()));
        // The newer slot torn: the older one is used.
        let mut torn = file.clone();
        torn[len + 70] ^= 0xff;
        assert_eq!(DirtyRegions::decode_file(&torn), Ok(older.clone()));
        // The older slot torn: the newer one.
        let mut torn = file.clone();
        torn[20] ^= 0xff;
        assert_eq!(DirtyRegions::decode_file(&torn), Ok(newer));
        // Both torn: an error (the first slot's).
        torn[len + 70] ^= 0xff;
        assert!(DirtyRegions::decode_file(&torn).is_err());
    }

    #[test]
    fn clean_with_dirty_bits_is_refused() {
        let mut d = sample();
        d.clean = true;
        assert!(matches!(
            DirtyRegions::decode_slot(&d.encode()),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn version_2_carries_behind_and_version_1_still_reads() {
        let mut d = sample();
        d.behind = true;
        let buf = d.encode();
        assert_eq!(DirtyRegions::decode_slot(&buf), Ok(d.clone()));
        // A version 1 slot (what earlier releases wrote): no flag "behind".
        d.behind = false;
        let mut v1 = d.encode();
        v1[8..10].copy_from_slice(&1u16.to_le_bytes());
        let n = v1.len() - 4;
        let crc = crc32c::crc32c(&v1[..n]);
        v1[n..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(DirtyRegions::decode_slot(&v1), Ok(d.clone()));
        // Version 1 with the flag set is refused (no writer of version 1 set it).
        v1[10..12].copy_from_slice(&FLAG_BEHIND.to_le_bytes());
        let crc = crc32c::crc32c(&v1[..n]);
        v1[n..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            DirtyRegions::decode_slot(&v1),
            Err(DecodeError::Invalid { offset: 10, .. })
        ));
        // Clean and behind at once cannot be.
        let mut both = sample();
        both.bitmap.fill(0);
        both.clean = true;
        both.behind = true;
        assert!(DirtyRegions::decode_slot(&both.encode()).is_err());
    }
}
