//! Per-block checksums of the base image: `base/base.sums`.
//!
//! The base image is a plain (sparse) raw file so that tools can read it; its integrity is
//! kept here: one crc32c per block, so a point-in-time read that falls through to the base
//! detects a flipped byte in the base image.
//!
//! ```text
//! magic "RWNDSUMS" (8) | version u16 | reserved u16 | block_size u32 | block_count u64
//! block_count * u32 crc32c of each block's bytes
//! crc u32 over everything before
//! ```

use crate::codec::{
    check_magic, check_trailing_crc, check_version, push_trailing_crc, Reader, Writer,
};
use crate::DecodeError;

pub const MAGIC: &[u8; 8] = b"RWNDSUMS";
pub const VERSION: u16 = 1;
const WHAT: &str = "base checksums";
/// Bytes before the first sum.
const HEADER_LEN: u64 = 24;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseSums {
    pub block_size: u32,
    pub sums: Vec<u32>,
}

impl BaseSums {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(28 + self.sums.len() * 4);
        let mut w = Writer(&mut out);
        w.bytes(MAGIC);
        w.u16(VERSION);
        w.u16(0);
        w.u32(self.block_size);
        w.u64(self.sums.len() as u64);
        for s in &self.sums {
            w.u32(*s);
        }
        push_trailing_crc(&mut out);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<BaseSums, DecodeError> {
        check_magic(buf, MAGIC, WHAT)?;
        let body = check_trailing_crc(buf, WHAT)?;
        Self::decode_body(body)
    }

    /// Decodes a file whose trailing crc failed, for reading a damaged vault: the layout
    /// (magic, version, block size, count against the length) must hold, the crc is not
    /// checked. The sums it gives are not to be trusted one by one: a reader accepts a
    /// block only when its bytes and its sum agree (a flipped sum then fails that block).
    pub fn decode_unchecked(buf: &[u8]) -> Result<BaseSums, DecodeError> {
        check_magic(buf, MAGIC, WHAT)?;
        if buf.len() < 4 {
            return Err(DecodeError::Truncated {
                offset: 0,
                needed: 4 - buf.len() as u64,
                what: WHAT,
            });
        }
        Self::decode_body(&buf[..buf.len() - 4])
    }

    /// Byte offset of block `block`'s sum in the file.
    pub fn offset_of(block: u64) -> u64 {
        HEADER_LEN + block * 4
    }

    fn decode_body(body: &[u8]) -> Result<BaseSums, DecodeError> {
        let mut r = Reader::new(body, WHAT);
        r.take(8)?;
        check_version(r.u16()?, VERSION, WHAT)?;
        r.u16()?;
        let block_size = r.u32()?;
        if !crate::valid_block_size(block_size) {
            return Err(DecodeError::invalid(12, WHAT, "block size"));
        }
        let n = r.u64()?;
        if n.checked_mul(4) != Some((body.len() - r.pos()) as u64) {
            return Err(DecodeError::invalid(
                16,
                WHAT,
                "block count does not match the file",
            ));
        }
        let mut sums = Vec::with_capacity(n as usize);
        for _ in 0..n {
            sums.push(r.u32()?);
        }
        Ok(BaseSums { block_size, sums })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_flips_and_cuts() {
        let s = BaseSums {
            block_size: 512,
            sums: vec![1, 2, 3, 0xdead_beef],
        };
        let buf = s.encode();
        assert_eq!(BaseSums::decode(&buf), Ok(s));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 4;
            assert!(BaseSums::decode(&bad).is_err(), "flip at {i}");
        }
        for n in 0..buf.len() {
            assert!(BaseSums::decode(&buf[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn unchecked_decode_keeps_the_layout_and_ignores_only_the_crc() {
        let s = BaseSums {
            block_size: 512,
            sums: vec![1, 2, 3, 0xdead_beef],
        };
        let buf = s.encode();
        let mut bad = buf.clone();
        let at = BaseSums::offset_of(2) as usize;
        bad[at] ^= 4;
        assert!(BaseSums::decode(&bad).is_err());
        let got = BaseSums::decode_unchecked(&bad).map(|g| g.sums);
        assert_eq!(got, Ok(vec![1, 2, 3 ^ 4, 0xdead_beef]));
        // A damaged layout is still an error: magic, block size, count, length.
        for i in [0, 12, 16] {
            let mut bad = buf.clone();
            bad[i] ^= 4;
            assert!(BaseSums::decode_unchecked(&bad).is_err(), "flip at {i}");
        }
        assert!(BaseSums::decode_unchecked(&buf[..buf.len() - 2]).is_err());
    }
}
