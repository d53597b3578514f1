//! Write log segment header: the first 48 bytes of every `seg-<first seq>.log` file.
//!
//! ```text
//! offset size field
//!  0     8    magic        "RWNDSEG\0"
//!  8     2    version      2 (1 still decodes: it is 2 without the records' "continues" flag)
//! 10     2    reserved     0
//! 12     4    block_size
//! 16     8    first_seq    seq of the segment's first record
//! 24    16    vault_id     the vault this segment belongs to
//! 40     4    reserved     0
//! 44     4    crc          crc32c over bytes 0..44
//! ```
//! Records follow at byte 48 (see [`crate::record`]).

use crate::codec::{
    check_magic, check_trailing_crc, check_version, push_trailing_crc, Reader, Writer,
};
use crate::{DecodeError, Seq};

pub const MAGIC: &[u8; 8] = b"RWNDSEG\0";
/// The version this build writes. Version 2 added the records' "continues" flag (one host
/// write as one unit for points); a version 1 segment is one without it.
pub const VERSION: u16 = 2;
/// The oldest version this build still decodes.
pub const OLDEST_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 48;
const WHAT: &str = "segment header";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub block_size: u32,
    pub first_seq: Seq,
    pub vault_id: [u8; 16],
}

impl SegmentHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN);
        let mut w = Writer(&mut out);
        w.bytes(MAGIC);
        w.u16(VERSION);
        w.u16(0);
        w.u32(self.block_size);
        w.u64(self.first_seq.0);
        w.bytes(&self.vault_id);
        w.u32(0);
        push_trailing_crc(&mut out);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, DecodeError> {
        check_magic(buf, MAGIC, WHAT)?;
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                offset: buf.len() as u64,
                needed: (HEADER_LEN - buf.len()) as u64,
                what: WHAT,
            });
        }
        let body = check_trailing_crc(&buf[..HEADER_LEN], WHAT)?;
        let mut r = Reader::new(body, WHAT);
        r.take(8)?;
        let version = r.u16()?;
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            check_version(version, VERSION, WHAT)?;
        }
        r.u16()?;
        let block_size = r.u32()?;
        if !crate::valid_block_size(block_size) {
            return Err(DecodeError::invalid(12, WHAT, "block size"));
        }
        let first_seq = Seq(r.u64()?);
        let mut vault_id = [0u8; 16];
        vault_id.copy_from_slice(r.take(16)?);
        Ok(SegmentHeader {
            block_size,
            first_seq,
            vault_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let h = SegmentHeader {
            block_size: 4096,
            first_seq: Seq(99),
            vault_id: [7; 16],
        };
        let buf = h.encode();
        assert_eq!(buf.len(), HEADER_LEN);
        assert_eq!(SegmentHeader::decode(&buf), Ok(h));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            assert!(SegmentHeader::decode(&bad).is_err(), "flip at {i}");
        }
        for n in 0..buf.len() {
            assert!(SegmentHeader::decode(&buf[..n]).is_err(), "cut at {n}");
        }
    }

    fn with_version(h: &SegmentHeader, v: u16) -> Vec<u8> {
        let mut buf = h.encode();
        buf[8..10].copy_from_slice(&v.to_le_bytes());
        buf.truncate(HEADER_LEN - 4);
        crate::codec::push_trailing_crc(&mut buf);
        buf
    }

    #[test]
    fn version_1_still_decodes_and_a_newer_one_is_refused() {
        let h = SegmentHeader {
            block_size: 512,
            first_seq: Seq(1),
            vault_id: [3; 16],
        };
        assert_eq!(SegmentHeader::decode(&with_version(&h, 1)), Ok(h));
        assert!(matches!(
            SegmentHeader::decode(&with_version(&h, VERSION + 1)),
            Err(DecodeError::UnknownVersion { .. })
        ));
    }
}
