//! Write log segment header: the first 48 bytes of every `seg-<first seq>.log` file.
//!
//! ```text
//! offset size field
//!  0     8    magic        "RWNDSEG\0"
//!  8     2    version      3 (2 and 1 still decode: 2 is 3 with records' crcs bound to
//!                           nothing, 1 is 2 without the records' "continues" flag)
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
/// The version this build writes. Version 3 binds each record's crc to the vault, the
/// segment and the record's offset (see [`crate::record::Binding`]), so that bytes shaped
/// like a record inside a payload are never taken for one; version 2 added the records'
/// "continues" flag (one host write as one unit for points); version 1 is without it.
pub const VERSION: u16 = 3;
/// The first version whose records' crcs are bound.
pub const BOUND_VERSION: u16 = 3;
/// The oldest version this build still decodes.
pub const OLDEST_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 48;
const WHAT: &str = "segment header";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The version the segment was written with: its records are laid out (and their crcs
    /// bound) as that version says, whatever this build writes into new segments.
    pub version: u16,
    pub block_size: u32,
    pub first_seq: Seq,
    pub vault_id: [u8; 16],
}

impl SegmentHeader {
    /// What the crc of the record at byte `offset` is bound to (`None`: an older segment,
    /// whose records' crcs are bound to nothing).
    pub fn binding(&self, offset: u64) -> Option<crate::record::Binding> {
        (self.version >= BOUND_VERSION).then_some(crate::record::Binding {
            vault_id: self.vault_id,
            segment_first_seq: self.first_seq,
            offset,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN);
        let mut w = Writer(&mut out);
        w.bytes(MAGIC);
        w.u16(self.version);
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
            version,
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
            version: VERSION,
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
            version: 1,
            block_size: 512,
            first_seq: Seq(1),
            vault_id: [3; 16],
        };
        assert_eq!(SegmentHeader::decode(&with_version(&h, 1)), Ok(h));
        let h2 = SegmentHeader { version: 2, ..h };
        assert_eq!(SegmentHeader::decode(&with_version(&h, 2)), Ok(h2));
        assert_eq!(
            h2.binding(48),
            None,
            "a version 2 segment's records are not bound"
        );
        let h3 = SegmentHeader { version: 3, ..h };
        assert_eq!(SegmentHeader::decode(&h3.encode()), Ok(h3));
        assert!(h3.binding(48).is_some());
        assert!(matches!(
            SegmentHeader::decode(&with_version(&h, VERSION + 1)),
            Err(DecodeError::UnknownVersion { .. })
        ));
    }
}

#[cfg(test)]
mod golden {
    use super::*;
    use crate::compress::StoredAs;
    use crate::record::{self, NewRecord, RecordKind};

    const GOLDEN_V2: &[u8] = include_bytes!("../tests/golden/segment-v2.bin");
    const GOLDEN_V3: &[u8] = include_bytes!("../tests/golden/segment-v3.bin");

    /// A segment of `version` with a write, a zero and a marker (what the golden files
    /// hold; version 2 is byte for byte what builds before version 3 wrote).
    fn sample(version: u16) -> Vec<u8> {
        let h = SegmentHeader {
            version,
            block_size: 512,
            first_seq: Seq(10),
            vault_id: *b"golden-vault-id!",
        };
        let mut out = h.encode();
        let base = NewRecord {
            kind: RecordKind::Write,
            seq: Seq(10),
            timestamp_ns: 1_790_000_000_000_000_000,
            first_block: 4,
            block_count: 2,
            durable_seq: Seq(9),
            app_consistent: false,
            continues: false,
        };
        let data: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        let recs: [(NewRecord, &[u8]); 3] = [
            (base, &data),
            (
                NewRecord {
                    kind: RecordKind::Zero,
                    seq: Seq(11),
                    first_block: 0,
                    block_count: 3,
                    ..base
                },
                &[],
            ),
            (
                NewRecord {
                    kind: RecordKind::Marker,
                    seq: Seq(12),
                    first_block: 0,
                    block_count: 0,
                    durable_seq: Seq(11),
                    ..base
                },
                b"golden",
            ),
        ];
        for (r, p) in recs {
            let bind = h.binding(out.len() as u64);
            record::encode(
                &mut out,
                &r,
                p,
                p.len() as u32,
                StoredAs::Raw,
                bind.as_ref(),
            );
        }
        out
    }

    /// The records of a segment file, verified as its header says.
    fn records(bytes: &[u8]) -> Result<Vec<(u64, RecordKind)>, DecodeError> {
        let h = SegmentHeader::decode(bytes)?;
        let mut pos = HEADER_LEN;
        let mut out = Vec::new();
        while pos < bytes.len() {
            let bind = h.binding(pos as u64);
            let (r, _) = record::decode(&bytes[pos..], h.block_size, bind.as_ref())?;
            out.push((r.seq.0, r.kind));
            pos += r.total_len() as usize;
        }
        Ok(out)
    }

    #[test]
    fn golden_segments_of_versions_2_and_3_decode() {
        if std::env::var_os("REWIND_WRITE_GOLDEN").is_some() {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
            std::fs::write(format!("{dir}/segment-v2.bin"), sample(2)).expect("write");
            std::fs::write(format!("{dir}/segment-v3.bin"), sample(3)).expect("write");
        }
        let want = vec![
            (10, RecordKind::Write),
            (11, RecordKind::Zero),
            (12, RecordKind::Marker),
        ];
        assert_eq!(records(GOLDEN_V2), Ok(want.clone()));
        assert_eq!(records(GOLDEN_V3), Ok(want));
        assert_eq!(SegmentHeader::decode(GOLDEN_V2).map(|h| h.version), Ok(2));
        // This build writes the same bytes for each version (the formats do not drift).
        assert_eq!(sample(2), GOLDEN_V2);
        assert_eq!(sample(3), GOLDEN_V3);
        // A version 3 record's crc holds only with its binding: read as version 2, or
        // moved by one byte, it is a checksum error.
        let mut as_v2 = GOLDEN_V3.to_vec();
        as_v2[8..10].copy_from_slice(&2u16.to_le_bytes());
        as_v2.truncate(HEADER_LEN - 4);
        crate::codec::push_trailing_crc(&mut as_v2);
        as_v2.extend_from_slice(&GOLDEN_V3[HEADER_LEN..]);
        assert!(matches!(records(&as_v2), Err(DecodeError::Checksum { .. })));
        let h = SegmentHeader::decode(GOLDEN_V3).expect("header");
        assert!(record::decode(
            &GOLDEN_V3[HEADER_LEN..],
            512,
            h.binding(HEADER_LEN as u64 + 1).as_ref()
        )
        .is_err());
    }
}
