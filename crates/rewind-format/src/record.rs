//! Write log records.
//!
//! A segment file is a [`crate::segment::SegmentHeader`] followed by records, each a fixed
//! 56-byte header and its payload:
//!
//! ```text
//! offset size field
//!  0     2    magic            0x5752 ("RW" little-endian)
//!  2     1    kind             1 write, 2 zero, 3 trim, 4 marker, 5 fix-up
//!  3     1    flags            bit 0 lz4, bit 1 zstd (payload stored compressed);
//!                              markers: bit 4 app-consistent;
//!                              bit 5 continues: the next record belongs to the same host
//!                              write (segment version 2 on)
//!  4     4    payload_len      bytes stored after the header
//!  8     8    seq              strictly increasing, never reused
//! 16     8    timestamp_ns     UTC, ns since the Unix epoch (non-decreasing in a vault)
//! 24     8    first_block      first block the record covers (markers: 0)
//! 32     4    block_count      blocks covered (markers: 0)
//! 36     4    raw_len          payload length before compression
//! 40     8    durable_seq      every record with seq <= this was durable (fdatasync'd)
//!                              when this record was appended
//! 48     4    reserved         0
//! 52     4    crc              crc32c over bytes 0..52 and the stored payload
//! ```
//!
//! Payloads: a write carries `block_count * block_size` bytes of data; zero and trim carry
//! nothing; a marker carries its snapshot name (UTF-8). A fix-up is laid out like a write:
//! data that `rewind sync` copied from the primary into the vault to repair a discrepancy,
//! not data a host wrote; every reader treats it as a write.
//!
//! One host write is one unit for points: a write larger than [`MAX_WRITE_PAYLOAD`] (or a
//! write-zeroes with unaligned edges) becomes several records, every one but the last
//! flagged "continues", all with the same timestamp. A point (a seq, a time, a seal, a
//! marker) only ever falls after a record without the flag; recovery cuts a tail that ends
//! inside a unit, since no flush can have covered it.
//!
//! `durable_seq` lets recovery tell a torn tail (records that were never covered by a
//! completed flush may be cut) from corruption (a bad record that a later, valid record
//! says was already durable is an error, never silently dropped).

use crate::compress::StoredAs;
use crate::{DecodeError, Seq};

/// Size of a record header in bytes.
pub const HEADER_LEN: usize = 56;
/// The two bytes every record starts with.
pub const MAGIC: u16 = 0x5752;
/// The most data bytes one write record carries; larger writes become several records so
/// that a point-in-time read of one block never has to read (and checksum) more than this.
pub const MAX_WRITE_PAYLOAD: usize = 128 * 1024;
/// The longest snapshot name.
pub const MAX_MARKER_NAME: usize = 128;

const FLAG_LZ4: u8 = 1;
const FLAG_ZSTD: u8 = 2;
const FLAG_APP_CONSISTENT: u8 = 1 << 4;
const FLAG_CONTINUES: u8 = 1 << 5;
const KNOWN_FLAGS: u8 = FLAG_LZ4 | FLAG_ZSTD | FLAG_APP_CONSISTENT | FLAG_CONTINUES;

/// What a record does to the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// New data for `block_count` blocks.
    Write,
    /// The blocks now read as zeroes (NBD WRITE_ZEROES).
    Zero,
    /// The blocks were discarded; they read as zeroes (NBD TRIM).
    Trim,
    /// A named point the user asked to keep.
    Marker,
    /// Data `rewind sync` copied from the primary to repair the vault (laid out like a
    /// write; read like one).
    FixUp,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            RecordKind::Write => 1,
            RecordKind::Zero => 2,
            RecordKind::Trim => 3,
            RecordKind::Marker => 4,
            RecordKind::FixUp => 5,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => RecordKind::Write,
            2 => RecordKind::Zero,
            3 => RecordKind::Trim,
            4 => RecordKind::Marker,
            5 => RecordKind::FixUp,
            _ => return None,
        })
    }
    /// The lower-case name used in listings.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Write => "write",
            RecordKind::Zero => "zero",
            RecordKind::Trim => "trim",
            RecordKind::Marker => "marker",
            RecordKind::FixUp => "fix-up",
        }
    }

    /// Whether the record carries block data (a write or a fix-up).
    pub fn carries_data(self) -> bool {
        matches!(self, RecordKind::Write | RecordKind::FixUp)
    }
}

/// What a record's crc is bound to (segment version 3 on; see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub vault_id: [u8; 16],
    pub segment_first_seq: Seq,
    /// The record's byte offset in its segment.
    pub offset: u64,
}

impl Binding {
    fn bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(&self.vault_id);
        b[16..24].copy_from_slice(&self.segment_first_seq.0.to_le_bytes());
        b[24..].copy_from_slice(&self.offset.to_le_bytes());
        b
    }
}

/// The crc of the binding (if any) followed by the header's first 52 bytes.
fn header_crc(bind: Option<&Binding>, header_prefix: &[u8]) -> u32 {
    match bind {
        Some(b) => crc32c::crc32c_append(crc32c::crc32c(&b.bytes()), header_prefix),
        None => crc32c::crc32c(header_prefix),
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub flags: u8,
    pub payload_len: u32,
    pub seq: Seq,
    pub timestamp_ns: i64,
    pub first_block: u64,
    pub block_count: u32,
    pub raw_len: u32,
    pub durable_seq: Seq,
    pub crc: u32,
}

impl RecordHeader {
    /// Header plus payload, in bytes.
    pub fn total_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.payload_len)
    }

    /// How the payload is stored.
    pub fn stored_as(&self) -> StoredAs {
        if self.flags & FLAG_ZSTD != 0 {
            StoredAs::Zstd
        } else if self.flags & FLAG_LZ4 != 0 {
            StoredAs::Lz4
        } else {
            StoredAs::Raw
        }
    }

    /// Whether a marker was taken while the host had quiesced (application-consistent).
    pub fn app_consistent(&self) -> bool {
        self.flags & FLAG_APP_CONSISTENT != 0
    }

    /// Whether the next record belongs to the same host write (this one does not end a
    /// unit: no point falls right after it).
    pub fn continues(&self) -> bool {
        self.flags & FLAG_CONTINUES != 0
    }

    /// Decodes a header from the first [`HEADER_LEN`] bytes of `buf`, checking everything
    /// that can be checked without the payload. `block_size` bounds write payloads.
    pub fn decode(buf: &[u8], block_size: u32) -> Result<RecordHeader, DecodeError> {
        const WHAT: &str = "record header";
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                offset: 0,
                needed: (HEADER_LEN - buf.len()) as u64,
                what: WHAT,
            });
        }
        let u16_at = |o: usize| u16::from_le_bytes([buf[o], buf[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&buf[o..o + 8]);
            u64::from_le_bytes(a)
        };
        if u16_at(0) != MAGIC {
            return Err(DecodeError::BadMagic {
                offset: 0,
                what: WHAT,
            });
        }
        let kind = RecordKind::from_code(buf[2]).ok_or(DecodeError::invalid(
            2,
            WHAT,
            "unknown record kind",
        ))?;
        let flags = buf[3];
        if flags & !KNOWN_FLAGS != 0 || flags & (FLAG_LZ4 | FLAG_ZSTD) == (FLAG_LZ4 | FLAG_ZSTD) {
            return Err(DecodeError::invalid(3, WHAT, "unknown flags"));
        }
        let h = RecordHeader {
            kind,
            flags,
            payload_len: u32_at(4),
            seq: Seq(u64_at(8)),
            timestamp_ns: u64_at(16) as i64,
            first_block: u64_at(24),
            block_count: u32_at(32),
            raw_len: u32_at(36),
            durable_seq: Seq(u64_at(40)),
            crc: u32_at(52),
        };
        if u32_at(48) != 0 {
            return Err(DecodeError::invalid(48, WHAT, "reserved field is not zero"));
        }
        if h.seq == Seq::BASE {
            return Err(DecodeError::invalid(
                8,
                WHAT,
                "seq 0 is the base image, not a record",
            ));
        }
        if h.durable_seq >= h.seq {
            return Err(DecodeError::invalid(
                40,
                WHAT,
                "durable seq is not before the record",
            ));
        }
        let compressed = h.stored_as() != StoredAs::Raw;
        match kind {
            RecordKind::Write | RecordKind::FixUp => {
                let want = u64::from(h.block_count) * u64::from(block_size);
                if h.block_count == 0 || want > MAX_WRITE_PAYLOAD.max(block_size as usize) as u64 {
                    return Err(DecodeError::invalid(
                        32,
                        WHAT,
                        "write block count out of range",
                    ));
                }
                if u64::from(h.raw_len) != want {
                    return Err(DecodeError::invalid(
                        36,
                        WHAT,
                        "raw length is not block_count * block_size",
                    ));
                }
                if (!compressed && h.payload_len != h.raw_len) || h.payload_len > h.raw_len {
                    return Err(DecodeError::invalid(
                        4,
                        WHAT,
                        "payload length does not match",
                    ));
                }
            }
            RecordKind::Zero | RecordKind::Trim => {
                if h.block_count == 0 || h.payload_len != 0 || h.raw_len != 0 || compressed {
                    return Err(DecodeError::invalid(
                        32,
                        WHAT,
                        "zero/trim must cover blocks and carry no payload",
                    ));
                }
            }
            RecordKind::Marker => {
                if h.block_count != 0
                    || h.continues()
                    || h.payload_len as usize > MAX_MARKER_NAME
                    || h.payload_len != h.raw_len
                    || compressed
                {
                    return Err(DecodeError::invalid(
                        4,
                        WHAT,
                        "marker carries only its name",
                    ));
                }
            }
        }
        if h.first_block
            .checked_add(u64::from(h.block_count))
            .is_none()
        {
            return Err(DecodeError::invalid(24, WHAT, "block range overflows"));
        }
        Ok(h)
    }

    /// Checks the record's crc over the header bytes and the stored payload, bound to
    /// `bind` (segment version 3 on; `None` for older segments).
    pub fn verify(
        &self,
        header_bytes: &[u8],
        payload: &[u8],
        bind: Option<&Binding>,
    ) -> Result<(), DecodeError> {
        let computed = crc32c::crc32c_append(
            header_crc(bind, &header_bytes[..52.min(header_bytes.len())]),
            payload,
        );
        if computed != self.crc || payload.len() != self.payload_len as usize {
            return Err(DecodeError::Checksum {
                offset: 52,
                what: "record",
                stored: self.crc,
                computed,
            });
        }
        Ok(())
    }
}

/// Fields of a record to encode (the payload is passed separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRecord {
    pub kind: RecordKind,
    pub seq: Seq,
    pub timestamp_ns: i64,
    pub first_block: u64,
    pub block_count: u32,
    pub durable_seq: Seq,
    pub app_consistent: bool,
    /// The next record belongs to the same host write.
    pub continues: bool,
}

/// Appends an encoded record (header + stored payload) to `out`. `stored` is the payload
/// as it goes to disk; `raw_len` its length before compression; `stored_as` the codec;
/// `bind` what the crc is bound to (`None`: a segment older than version 3).
pub fn encode(
    out: &mut Vec<u8>,
    r: &NewRecord,
    stored: &[u8],
    raw_len: u32,
    stored_as: StoredAs,
    bind: Option<&Binding>,
) {
    encode_header(out, r, stored, raw_len, stored_as, bind);
    out.extend_from_slice(stored);
}

/// Appends only the record's header to `out`; its crc covers `stored`, which the caller
/// writes right after it (e.g. with a vectored write, without copying the payload).
pub fn encode_header(
    out: &mut Vec<u8>,
    r: &NewRecord,
    stored: &[u8],
    raw_len: u32,
    stored_as: StoredAs,
    bind: Option<&Binding>,
) {
    encode_header_with_payload_crc(
        out,
        r,
        stored.len() as u32,
        crc32c::crc32c(stored),
        raw_len,
        stored_as,
        bind,
    );
}

/// Like [`encode_header`], for a payload of `stored_len` bytes whose crc32c the caller has
/// already computed (e.g. from the crcs of its blocks, see [`crate::crc::concat_equal`]):
/// the payload is not read again.
pub fn encode_header_with_payload_crc(
    out: &mut Vec<u8>,
    r: &NewRecord,
    stored_len: u32,
    payload_crc: u32,
    raw_len: u32,
    stored_as: StoredAs,
    bind: Option<&Binding>,
) {
    let start = out.len();
    let mut flags = match stored_as {
        StoredAs::Raw => 0,
        StoredAs::Lz4 => FLAG_LZ4,
        StoredAs::Zstd => FLAG_ZSTD,
    };
    if r.app_consistent {
        flags |= FLAG_APP_CONSISTENT;
    }
    if r.continues {
        flags |= FLAG_CONTINUES;
    }
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(r.kind.code());
    out.push(flags);
    out.extend_from_slice(&stored_len.to_le_bytes());
    out.extend_from_slice(&r.seq.0.to_le_bytes());
    out.extend_from_slice(&r.timestamp_ns.to_le_bytes());
    out.extend_from_slice(&r.first_block.to_le_bytes());
    out.extend_from_slice(&r.block_count.to_le_bytes());
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(&r.durable_seq.0.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let crc = crate::crc::concat(
        header_crc(bind, &out[start..start + 52]),
        payload_crc,
        u64::from(stored_len),
    );
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Decodes and verifies a whole record from `buf` (header then payload), its crc bound to
/// `bind` (see [`Binding`]). Returns the header and the stored payload slice.
pub fn decode<'a>(
    buf: &'a [u8],
    block_size: u32,
    bind: Option<&Binding>,
) -> Result<(RecordHeader, &'a [u8]), DecodeError> {
    let h = RecordHeader::decode(buf, block_size)?;
    let end = HEADER_LEN + h.payload_len as usize;
    if buf.len() < end {
        return Err(DecodeError::Truncated {
            offset: buf.len() as u64,
            needed: (end - buf.len()) as u64,
            what: "record payload",
        });
    }
    let payload = &buf[HEADER_LEN..end];
    h.verify(&buf[..HEADER_LEN], payload, bind)?;
    Ok((h, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: RecordKind, payload: &[u8], count: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let r = NewRecord {
            kind,
            seq: Seq(7),
            timestamp_ns: 1_700_000_000_000_000_000,
            first_block: 42,
            block_count: count,
            durable_seq: Seq(5),
            app_consistent: kind == RecordKind::Marker,
            continues: false,
        };
        encode(
            &mut out,
            &r,
            payload,
            payload.len() as u32,
            StoredAs::Raw,
            None,
        );
        out
    }

    #[test]
    fn round_trip() {
        let data = vec![0xabu8; 1024];
        let buf = sample(RecordKind::Write, &data, 2);
        let (h, p) = decode(&buf, 512, None).expect("decodes");
        assert_eq!(h.kind, RecordKind::Write);
        assert_eq!(h.seq, Seq(7));
        assert_eq!(h.first_block, 42);
        assert_eq!(h.block_count, 2);
        assert_eq!(h.durable_seq, Seq(5));
        assert_eq!(p, &data[..]);
        assert_eq!(h.total_len(), buf.len() as u64);

        let m = sample(RecordKind::Marker, b"before-upgrade", 0);
        let (h, p) = decode(&m, 512, None).expect("marker decodes");
        assert!(h.app_consistent());
        assert_eq!(p, b"before-upgrade");
    }

    #[test]
    fn every_flipped_byte_is_an_error() {
        let data: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
        let buf = sample(RecordKind::Write, &data, 2);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x5a;
            assert!(
                decode(&bad, 512, None).is_err(),
                "flip at {i} went unnoticed"
            );
        }
    }

    #[test]
    fn truncation_is_an_error() {
        let buf = sample(RecordKind::Write, &[1u8; 512], 1);
        for n in 0..buf.len() {
            match decode(&buf[..n], 512, None) {
                Err(DecodeError::Truncated { .. }) => {}
                other => panic!("cut at {n}: {other:?}"),
            }
        }
    }

    #[test]
    fn flipped_payload_is_a_checksum_error() {
        let mut buf = sample(RecordKind::Write, &[9u8; 512], 1);
        buf[HEADER_LEN + 100] ^= 1;
        assert!(matches!(
            decode(&buf, 512, None),
            Err(DecodeError::Checksum { .. })
        ));
    }

    #[test]
    fn fix_up_round_trips_like_a_write_and_damage_is_typed() {
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        let buf = sample(RecordKind::FixUp, &data, 2);
        let (h, p) = decode(&buf, 512, None).expect("fix-up decodes");
        assert_eq!(h.kind, RecordKind::FixUp);
        assert!(h.kind.carries_data() && RecordKind::Write.carries_data());
        assert!(!RecordKind::Zero.carries_data() && !RecordKind::Marker.carries_data());
        assert_eq!((h.first_block, h.block_count), (42, 2));
        assert_eq!(p, &data[..]);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x5a;
            assert!(
                decode(&bad, 512, None).is_err(),
                "flip at {i} went unnoticed"
            );
        }
        // A fix-up must carry whole blocks, like a write.
        let short = sample(RecordKind::FixUp, &data[..1000], 2);
        assert!(matches!(
            decode(&short, 512, None),
            Err(DecodeError::Invalid { offset: 36, .. })
        ));
        // The next kind code is not known.
        let mut unknown = buf.clone();
        unknown[2] = 6;
        assert!(matches!(
            RecordHeader::decode(&unknown, 512),
            Err(DecodeError::Invalid { offset: 2, .. })
        ));
    }

    #[test]
    fn continues_round_trips_and_a_marker_never_continues() {
        let data = vec![3u8; 512];
        let mut out = Vec::new();
        let r = NewRecord {
            kind: RecordKind::Write,
            seq: Seq(9),
            timestamp_ns: 5,
            first_block: 1,
            block_count: 1,
            durable_seq: Seq(2),
            app_consistent: false,
            continues: true,
        };
        encode(&mut out, &r, &data, 512, StoredAs::Raw, None);
        let (h, _) = decode(&out, 512, None).expect("decodes");
        assert!(h.continues());
        let plain = sample(RecordKind::Write, &data, 1);
        assert!(!decode(&plain, 512, None).expect("decodes").0.continues());
        let mut m = Vec::new();
        let marker = NewRecord {
            kind: RecordKind::Marker,
            block_count: 0,
            first_block: 0,
            ..r
        };
        encode(&mut m, &marker, b"snap", 4, StoredAs::Raw, None);
        assert!(matches!(
            RecordHeader::decode(&m, 512),
            Err(DecodeError::Invalid { offset: 4, .. })
        ));
    }

    #[test]
    fn a_bound_crc_holds_only_for_its_vault_segment_and_offset() {
        let bind = Binding {
            vault_id: [9; 16],
            segment_first_seq: Seq(100),
            offset: 4096,
        };
        let r = NewRecord {
            kind: RecordKind::Write,
            seq: Seq(120),
            timestamp_ns: 1,
            first_block: 3,
            block_count: 1,
            durable_seq: Seq(119),
            app_consistent: false,
            continues: false,
        };
        let data = vec![0x42u8; 512];
        let mut buf = Vec::new();
        encode(&mut buf, &r, &data, 512, StoredAs::Raw, Some(&bind));
        assert!(decode(&buf, 512, Some(&bind)).is_ok());
        // The same bytes anywhere else, in another segment or vault, or read as a version
        // 2 record, are a checksum error.
        for other in [
            Binding {
                offset: 4097,
                ..bind
            },
            Binding {
                segment_first_seq: Seq(101),
                ..bind
            },
            Binding {
                vault_id: [8; 16],
                ..bind
            },
        ] {
            assert!(matches!(
                decode(&buf, 512, Some(&other)),
                Err(DecodeError::Checksum { .. })
            ));
        }
        assert!(matches!(
            decode(&buf, 512, None),
            Err(DecodeError::Checksum { .. })
        ));
        // And an unbound (version 2) record is not valid as a version 3 one.
        let mut old = Vec::new();
        encode(&mut old, &r, &data, 512, StoredAs::Raw, None);
        assert!(decode(&old, 512, None).is_ok());
        assert!(decode(&old, 512, Some(&bind)).is_err());
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x5a;
            assert!(decode(&bad, 512, Some(&bind)).is_err(), "flip at {i}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = decode(&bytes, 4096, None);
        }
    }
}
