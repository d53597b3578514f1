//! Per-block checksums of the base image: `base/base.sums`.
//!
//! The base image is a plain (sparse) raw file so that tools can read it; its integrity is
//! kept here: one crc32c per block, so a point-in-time read that falls through to the base
//! detects a flipped byte in the base image.
//!
//! Version 2 (written by this build) is cut into chunks, each with its own checksum, so that
//! a reader loads and checks only the chunks it needs (opening a vault reads the header, not
//! a sum per block of the volume), and so that a chunk whose blocks are all the zero block
//! is a hole of the file: `init` of an empty 1 TiB volume writes its 4 KiB header, not 1 GiB.
//!
//! ```text
//! header (4096 bytes, a page):
//!   magic "RWNDSUMS" (8) | version u16 = 2 | reserved u16 = 0 | block_size u32
//!   | block_count u64 | chunk_blocks u32 | zeroes up to byte 4092 | crc u32 over the
//!   4092 bytes before
//! then chunk i (0 <= i < ceil(block_count / chunk_blocks)), at 4096 + i * (chunk_blocks * 4 + 8):
//!   n * u32 crc32c of each block's bytes (n = chunk_blocks; the last chunk has the rest)
//!   | tag u32 = "SUMC" | crc u32 = crc32c(i as u64 LE | the sums | the tag)
//! the file ends right after the last chunk.
//! ```
//!
//! A chunk whose bytes are all zero (its tag too) is a hole: every block in it has the zero
//! block's sum. A written chunk is never all zero bytes, since its tag is not zero, so a
//! hole is told from a written chunk without trusting its sums; a chunk with any nonzero
//! byte is a written one and must pass its crc (a zeroed tag is damage, not a hole). The
//! crc covers the chunk's index, so a chunk copied to another place fails too. What a hole
//! cannot catch: damage that zeroes a whole written chunk reads as "all zero blocks", and
//! then each nonzero base image block of it fails its check (named as base image damage).
//!
//! Version 1 (still read, whole): `magic | version u16 = 1 | reserved u16 | block_size u32 |
//! block_count u64 | block_count * u32 sums | crc u32 over everything before`.

use crate::codec::{
    check_magic, check_trailing_crc, check_version, push_trailing_crc, Reader, Writer,
};
use crate::DecodeError;

pub const MAGIC: &[u8; 8] = b"RWNDSUMS";
/// The version this build writes.
pub const VERSION: u16 = 2;
/// The whole-file version: still read.
pub const VERSION_1: u16 = 1;
const WHAT: &str = "base checksums";
const WHAT_CHUNK: &str = "base checksums chunk";
/// Bytes of a version 1 file before the first sum.
const HEADER_LEN_V1: u64 = 24;
/// Bytes of the version 2 header (a page, so that chunks start on page boundaries).
pub const HEADER_LEN: usize = 4096;
/// Where the first chunk of a version 2 file starts: after the header.
pub const CHUNKS_AT: u64 = HEADER_LEN as u64;
/// Bytes of the header's fields (zeroes follow, then the crc).
const HEADER_FIELDS: usize = 28;
/// Blocks per chunk this build writes: a chunk of 64 KiB, sums and trailer.
pub const DEFAULT_CHUNK_BLOCKS: u32 = (65536 - CHUNK_TRAILER as u32) / 4;
/// The most blocks a chunk may hold (a reader allocates a chunk's sums at once).
pub const MAX_CHUNK_BLOCKS: u32 = 1 << 20;
/// The tag that ends every written chunk (never zero: a hole is all zeroes).
pub const CHUNK_TAG: u32 = u32::from_le_bytes(*b"SUMC");
/// Bytes after a chunk's sums: tag and crc.
const CHUNK_TRAILER: usize = 8;

/// What the first bytes of a `base.sums` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Version 1: read the whole file with [`BaseSums::decode`].
    V1 { block_size: u32, block_count: u64 },
    /// Version 2: chunks, read one by one.
    V2(SumsLayout),
}

impl Header {
    /// Decodes the header from the first bytes of the file (at least [`HEADER_LEN`] of
    /// them for version 2, 16 for version 1).
    pub fn decode(buf: &[u8]) -> Result<Header, DecodeError> {
        check_magic(buf, MAGIC, WHAT)?;
        let mut r = Reader::new(buf, WHAT);
        r.take(8)?;
        let version = r.u16()?;
        if version == VERSION_1 {
            r.u16()?;
            let block_size = r.u32()?;
            if !crate::valid_block_size(block_size) {
                return Err(DecodeError::invalid(12, WHAT, "block size"));
            }
            let block_count = r.u64()?;
            return Ok(Header::V1 {
                block_size,
                block_count,
            });
        }
        check_version(version, VERSION, WHAT)?;
        let Some(head) = buf.get(..HEADER_LEN) else {
            return Err(DecodeError::Truncated {
                offset: buf.len() as u64,
                needed: (HEADER_LEN - buf.len()) as u64,
                what: WHAT,
            });
        };
        let body = check_trailing_crc(head, WHAT)?;
        if body[HEADER_FIELDS..].iter().any(|&b| b != 0) {
            return Err(DecodeError::invalid(HEADER_FIELDS, WHAT, "header padding"));
        }
        let mut r = Reader::new(body, WHAT);
        r.take(10)?;
        r.u16()?;
        let block_size = r.u32()?;
        if !crate::valid_block_size(block_size) {
            return Err(DecodeError::invalid(12, WHAT, "block size"));
        }
        let block_count = r.u64()?;
        let chunk_blocks = r.u32()?;
        if chunk_blocks == 0 || chunk_blocks > MAX_CHUNK_BLOCKS {
            return Err(DecodeError::invalid(24, WHAT, "blocks per chunk"));
        }
        let layout = SumsLayout {
            block_size,
            block_count,
            chunk_blocks,
        };
        if layout.checked_file_len().is_none() {
            return Err(DecodeError::invalid(16, WHAT, "block count"));
        }
        Ok(Header::V2(layout))
    }

    pub fn block_size(&self) -> u32 {
        match self {
            Header::V1 { block_size, .. } => *block_size,
            Header::V2(l) => l.block_size,
        }
    }

    pub fn block_count(&self) -> u64 {
        match self {
            Header::V1 { block_count, .. } => *block_count,
            Header::V2(l) => l.block_count,
        }
    }
}

/// Where each chunk of a version 2 file is, and how to code it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SumsLayout {
    pub block_size: u32,
    pub block_count: u64,
    pub chunk_blocks: u32,
}

/// One decoded chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// All zero bytes: every block has the zero block's sum.
    Hole,
    /// The sums of the chunk's blocks, in order.
    Sums(Vec<u32>),
}

impl SumsLayout {
    /// The layout this build writes for a volume of `block_count` blocks.
    pub fn new(block_size: u32, block_count: u64) -> SumsLayout {
        SumsLayout {
            block_size,
            block_count,
            chunk_blocks: DEFAULT_CHUNK_BLOCKS,
        }
    }

    pub fn encode_header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN);
        let mut w = Writer(&mut out);
        w.bytes(MAGIC);
        w.u16(VERSION);
        w.u16(0);
        w.u32(self.block_size);
        w.u64(self.block_count);
        w.u32(self.chunk_blocks);
        out.resize(HEADER_LEN - 4, 0);
        push_trailing_crc(&mut out);
        out
    }

    pub fn chunks(&self) -> u64 {
        self.block_count.div_ceil(u64::from(self.chunk_blocks))
    }

    /// The chunk that holds block `block`'s sum.
    pub fn chunk_of(&self, block: u64) -> u64 {
        block / u64::from(self.chunk_blocks)
    }

    /// The blocks of chunk `i`: first and count.
    pub fn chunk_blocks_of(&self, i: u64) -> (u64, u64) {
        let first = i * u64::from(self.chunk_blocks);
        let n = u64::from(self.chunk_blocks).min(self.block_count.saturating_sub(first));
        (first, n)
    }

    fn stride(&self) -> u64 {
        u64::from(self.chunk_blocks) * 4 + CHUNK_TRAILER as u64
    }

    /// Byte offset of chunk `i` in the file.
    pub fn chunk_offset(&self, i: u64) -> u64 {
        CHUNKS_AT + i * self.stride()
    }

    /// The chunk at or after byte `offset` of the file (the one it falls in, or the
    /// first one for an offset in the header).
    pub fn chunk_of_offset(&self, offset: u64) -> u64 {
        offset.saturating_sub(CHUNKS_AT) / self.stride()
    }

    /// Bytes of chunk `i`.
    pub fn chunk_len(&self, i: u64) -> usize {
        self.chunk_blocks_of(i).1 as usize * 4 + CHUNK_TRAILER
    }

    /// Byte offset of block `block`'s sum in the file.
    pub fn sum_offset(&self, block: u64) -> u64 {
        let i = self.chunk_of(block);
        self.chunk_offset(i) + (block - self.chunk_blocks_of(i).0) * 4
    }

    /// The length the file must have.
    pub fn file_len(&self) -> u64 {
        self.checked_file_len().unwrap_or(u64::MAX)
    }

    fn checked_file_len(&self) -> Option<u64> {
        let full = self.block_count / u64::from(self.chunk_blocks);
        let rest = self.block_count % u64::from(self.chunk_blocks);
        let tail = if rest == 0 {
            0
        } else {
            rest * 4 + CHUNK_TRAILER as u64
        };
        full.checked_mul(self.stride())?
            .checked_add(tail)?
            .checked_add(CHUNKS_AT)
    }

    /// The bytes of chunk `i` holding `sums` (one per block of the chunk).
    pub fn encode_chunk(&self, i: u64, sums: &[u32]) -> Vec<u8> {
        debug_assert_eq!(sums.len() as u64, self.chunk_blocks_of(i).1);
        let mut out = Vec::with_capacity(sums.len() * 4 + CHUNK_TRAILER);
        let mut w = Writer(&mut out);
        for s in sums {
            w.u32(*s);
        }
        w.u32(CHUNK_TAG);
        let crc = chunk_crc(i, &out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes chunk `i` from its bytes (as read at [`Self::chunk_offset`]). Offsets in
    /// errors are the file's.
    pub fn decode_chunk(&self, i: u64, buf: &[u8]) -> Result<Chunk, DecodeError> {
        let at = self.chunk_offset(i);
        let len = self.chunk_len(i);
        if buf.len() < len {
            return Err(DecodeError::Truncated {
                offset: at + buf.len() as u64,
                needed: (len - buf.len()) as u64,
                what: WHAT_CHUNK,
            });
        }
        let buf = &buf[..len];
        if buf.iter().all(|&b| b == 0) {
            return Ok(Chunk::Hole);
        }
        let (body, tail) = buf.split_at(len - 4);
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        let computed = chunk_crc(i, body);
        if stored != computed {
            return Err(DecodeError::Checksum {
                offset: at + body.len() as u64,
                what: WHAT_CHUNK,
                stored,
                computed,
            });
        }
        Ok(Chunk::Sums(sums_of(&body[..len - CHUNK_TRAILER])))
    }

    /// The sums a chunk that failed its crc holds, for reading a damaged vault: not to be
    /// trusted one by one (a reader accepts a block only when its bytes and its sum agree).
    pub fn decode_chunk_unchecked(&self, i: u64, buf: &[u8]) -> Vec<u32> {
        let n = self.chunk_blocks_of(i).1 as usize * 4;
        let mut sums = sums_of(&buf[..n.min(buf.len()) / 4 * 4]);
        sums.resize(n / 4, 0);
        sums
    }
}

fn chunk_crc(i: u64, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&i.to_le_bytes()), body)
}

fn sums_of(buf: &[u8]) -> Vec<u32> {
    buf.chunks_exact(4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .collect()
}

/// A whole version 1 file (read whole; this build no longer writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseSums {
    pub block_size: u32,
    pub sums: Vec<u32>,
}

impl BaseSums {
    /// The version 1 bytes (for tests of old vaults).
    pub fn encode_v1(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(28 + self.sums.len() * 4);
        let mut w = Writer(&mut out);
        w.bytes(MAGIC);
        w.u16(VERSION_1);
        w.u16(0);
        w.u32(self.block_size);
        w.u64(self.sums.len() as u64);
        for s in &self.sums {
            w.u32(*s);
        }
        push_trailing_crc(&mut out);
        out
    }

    /// Decodes a whole version 1 file.
    pub fn decode(buf: &[u8]) -> Result<BaseSums, DecodeError> {
        check_magic(buf, MAGIC, WHAT)?;
        let body = check_trailing_crc(buf, WHAT)?;
        Self::decode_body(body)
    }

    /// Decodes a version 1 file whose trailing crc failed, for reading a damaged vault:
    /// the layout (magic, version, block size, count against the length) must hold, the
    /// crc is not checked. The sums it gives are not to be trusted one by one: a reader
    /// accepts a block only when its bytes and its sum agree (a flipped sum then fails
    /// that block).
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

    /// Byte offset of block `block`'s sum in a version 1 file.
    pub fn offset_of(block: u64) -> u64 {
        HEADER_LEN_V1 + block * 4
    }

    fn decode_body(body: &[u8]) -> Result<BaseSums, DecodeError> {
        let mut r = Reader::new(body, WHAT);
        r.take(8)?;
        check_version(r.u16()?, VERSION_1, WHAT)?;
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

    fn layout() -> SumsLayout {
        SumsLayout {
            block_size: 512,
            block_count: 10,
            chunk_blocks: 4,
        }
    }

    #[test]
    fn header_round_trip_flips_and_cuts() {
        let l = layout();
        let buf = l.encode_header();
        assert_eq!(buf.len(), HEADER_LEN);
        assert_eq!(Header::decode(&buf), Ok(Header::V2(l)));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 4;
            assert!(Header::decode(&bad).is_err(), "flip at {i}");
        }
        for n in 0..buf.len() {
            assert!(Header::decode(&buf[..n]).is_err(), "cut at {n}");
        }
        // A crc over nonzero padding does not make it right.
        let mut bad = buf.clone();
        bad[100] = 1;
        bad.truncate(HEADER_LEN - 4);
        push_trailing_crc(&mut bad);
        assert!(matches!(
            Header::decode(&bad),
            Err(DecodeError::Invalid { offset: 28, .. })
        ));
        // Three chunks: 4 + 4 + 2 blocks.
        assert_eq!(l.chunks(), 3);
        assert_eq!(l.chunk_blocks_of(2), (8, 2));
        assert_eq!(l.chunk_offset(1), 4096 + 24);
        assert_eq!(l.file_len(), 4096 + 24 + 24 + 16);
        assert_eq!(l.sum_offset(9), 4096 + 48 + 4);
        assert_eq!(l.chunk_of_offset(0), 0);
        assert_eq!(l.chunk_of_offset(4096 + 24), 1);
        // The default: 64 KiB chunks, page-aligned.
        let d = SumsLayout::new(4096, 1 << 28);
        assert_eq!(d.chunk_len(0), 65536);
        assert_eq!(d.chunk_offset(7) % 4096, 0);
        // A count whose file length does not fit a u64 is invalid, not an overflow.
        let huge = SumsLayout {
            block_count: u64::MAX,
            ..l
        };
        assert!(matches!(
            Header::decode(&huge.encode_header()),
            Err(DecodeError::Invalid { offset: 16, .. })
        ));
    }

    #[test]
    fn chunks_round_trip_and_any_flip_is_a_checksum_error() {
        let l = layout();
        for (i, sums) in [(0, vec![1, 2, 3, 4]), (2, vec![0, 7])] {
            let buf = l.encode_chunk(i, &sums);
            assert_eq!(buf.len(), l.chunk_len(i));
            assert_eq!(l.decode_chunk(i, &buf), Ok(Chunk::Sums(sums.clone())));
            for at in 0..buf.len() {
                let mut bad = buf.clone();
                bad[at] ^= 0x10;
                match l.decode_chunk(i, &bad) {
                    Err(DecodeError::Checksum { offset, .. }) => {
                        assert_eq!(offset, l.chunk_offset(i) + buf.len() as u64 - 4)
                    }
                    other => panic!("flip at {at}: {other:?}"),
                }
                // What a damaged vault still reads of it: the sums as they are.
                let got = l.decode_chunk_unchecked(i, &bad);
                assert_eq!(got.len(), sums.len());
            }
            assert!(matches!(
                l.decode_chunk(i, &buf[..buf.len() - 1]),
                Err(DecodeError::Truncated { .. })
            ));
        }
        // The crc binds the chunk to its place: chunk 0's bytes read as chunk 1 fail.
        let buf = l.encode_chunk(0, &[1, 2, 3, 4]);
        assert!(matches!(
            l.decode_chunk(1, &buf),
            Err(DecodeError::Checksum { .. })
        ));
    }

    #[test]
    fn an_all_zero_chunk_is_a_hole_and_no_written_chunk_is_all_zero() {
        let l = layout();
        assert_eq!(l.decode_chunk(1, &[0u8; 24]), Ok(Chunk::Hole));
        assert_eq!(l.decode_chunk(2, &[0u8; 16]), Ok(Chunk::Hole));
        // Sums that are all zero still make a written chunk (its tag is not zero), which
        // decodes as those sums, not as a hole.
        let zeros = l.encode_chunk(1, &[0; 4]);
        assert!(zeros.iter().any(|&b| b != 0));
        assert_eq!(l.decode_chunk(1, &zeros), Ok(Chunk::Sums(vec![0; 4])));
        // A written chunk whose tag was zeroed is damage, not a hole.
        let mut bad = l.encode_chunk(1, &[5, 6, 7, 8]);
        bad[16..20].fill(0);
        assert!(matches!(
            l.decode_chunk(1, &bad),
            Err(DecodeError::Checksum { .. })
        ));
    }

    #[test]
    fn v1_round_trip_flips_and_cuts() {
        let s = BaseSums {
            block_size: 512,
            sums: vec![1, 2, 3, 0xdead_beef],
        };
        let buf = s.encode_v1();
        assert_eq!(BaseSums::decode(&buf), Ok(s));
        assert_eq!(
            Header::decode(&buf),
            Ok(Header::V1 {
                block_size: 512,
                block_count: 4
            })
        );
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
        let buf = s.encode_v1();
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

    const GOLDEN_V1: &[u8] = include_bytes!("../tests/golden/base-sums-v1.bin");
    const GOLDEN_V2: &[u8] = include_bytes!("../tests/golden/base-sums-v2.bin");

    /// Version 2 of [`layout`]: chunk 0 written, chunk 1 a hole, chunk 2 written.
    fn sample_v2() -> Vec<u8> {
        let l = layout();
        let mut out = l.encode_header();
        out.extend(l.encode_chunk(0, &[1, 2, 3, 4]));
        out.extend(vec![0u8; l.chunk_len(1)]);
        out.extend(l.encode_chunk(2, &[9, 10]));
        out
    }

    fn sample_v1() -> Vec<u8> {
        BaseSums {
            block_size: 4096,
            sums: vec![0x9878_23b2, 7, 0xdead_beef],
        }
        .encode_v1()
    }

    #[test]
    fn golden_base_sums_of_versions_1_and_2_decode() {
        if std::env::var_os("REWIND_WRITE_GOLDEN").is_some() {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
            std::fs::write(format!("{dir}/base-sums-v1.bin"), sample_v1()).expect("write");
            std::fs::write(format!("{dir}/base-sums-v2.bin"), sample_v2()).expect("write");
        }
        assert_eq!(
            BaseSums::decode(GOLDEN_V1).map(|s| s.sums),
            Ok(vec![0x9878_23b2, 7, 0xdead_beef])
        );
        let l = layout();
        assert_eq!(Header::decode(GOLDEN_V2), Ok(Header::V2(l)));
        assert_eq!(GOLDEN_V2.len() as u64, l.file_len());
        let chunk = |i: u64| {
            let at = l.chunk_offset(i) as usize;
            l.decode_chunk(i, &GOLDEN_V2[at..at + l.chunk_len(i)])
        };
        assert_eq!(chunk(0), Ok(Chunk::Sums(vec![1, 2, 3, 4])));
        assert_eq!(chunk(1), Ok(Chunk::Hole));
        assert_eq!(chunk(2), Ok(Chunk::Sums(vec![9, 10])));
        // This build writes the same bytes for each version (the formats do not drift).
        assert_eq!(sample_v1(), GOLDEN_V1);
        assert_eq!(sample_v2(), GOLDEN_V2);
    }
}
