//! Reading a segment's records back.
//!
//! Two modes:
//! - [`scan_tail`] reads the whole open segment, verifying every record's crc. A bad record
//!   is a torn tail (cut there) unless a later valid record says, through its `durable_seq`,
//!   that the bad one had already been made durable: then it is corruption, an error.
//! - [`scan_sealed`] walks a sealed segment's records up to a seq, verifying each record's
//!   crc: a replay trusts the headers' block ranges, and a zero or trim record is nothing
//!   but its header, so a damaged one must not zero the wrong blocks. Every record must be
//!   valid and in seq order up to the length the manifest recorded.

use std::io::{BufReader, Read};
use std::path::Path;

use rewind_storage::{Storage, StorageFile};

use rewind_format::compress::StoredAs;
use rewind_format::record::{self, RecordHeader, RecordKind, HEADER_LEN};
use rewind_format::segment::{SegmentHeader, HEADER_LEN as SEG_HEADER_LEN};
use rewind_format::{DecodeError, Seq};

use super::RecordMeta;
use crate::error::{corrupted, decode_err, Corruption, IoContext, Result};

/// A marker found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScannedMarker {
    pub seq: Seq,
    pub timestamp_ns: i64,
    pub name: String,
    pub app_consistent: bool,
}

impl ScannedMarker {
    /// The snapshot this marker makes.
    pub(crate) fn to_snapshot(&self) -> rewind_format::manifest::SnapshotEntry {
        rewind_format::manifest::SnapshotEntry {
            name: self.name.clone(),
            seq: self.seq,
            time_ns: self.timestamp_ns,
            app_consistent: self.app_consistent,
        }
    }
}

/// What [`scan_tail`] found.
#[derive(Debug)]
pub(crate) struct TailScan {
    pub header: SegmentHeader,
    pub records: Vec<RecordMeta>,
    pub markers: Vec<ScannedMarker>,
    /// Bytes that hold the header and valid records; anything after is a torn tail.
    pub valid_len: u64,
    pub file_len: u64,
    /// The segment's bytes as read.
    pub bytes: Vec<u8>,
    /// Per record: where its payload lies in `bytes` when it is uncompressed data.
    pub raw_payloads: Vec<Option<(usize, usize)>>,
}

/// Reads and verifies the whole open segment. `first_seq` is the seq its first record must
/// carry. See the module doc for the torn-tail rule.
pub(crate) fn scan_tail(
    fs: &dyn Storage,
    path: &Path,
    first_seq: Seq,
    block_size: u32,
) -> Result<TailScan> {
    let bytes = crate::fsutil::read_file(fs, path).io("read", path)?;
    let header = SegmentHeader::decode(&bytes).map_err(|e| decode_err(path, 0, e))?;
    if header.first_seq != first_seq || header.block_size != block_size {
        return Err(corrupted(
            path,
            0,
            Corruption::Inconsistent("segment header does not match the manifest"),
        ));
    }
    let mut records = Vec::new();
    let mut markers = Vec::new();
    let mut raw_payloads = Vec::new();
    let mut pos = SEG_HEADER_LEN;
    let mut expect = first_seq;
    while pos < bytes.len() {
        let bind = header.binding(pos as u64);
        match record::decode(&bytes[pos..], block_size, bind.as_ref()) {
            Ok((h, payload)) if h.seq == expect => {
                push(&mut records, &mut markers, &h, payload, pos as u64);
                let raw = h.kind.carries_data() && h.stored_as() == StoredAs::Raw;
                raw_payloads.push(raw.then_some((pos + HEADER_LEN, payload.len())));
                pos += h.total_len() as usize;
                expect = expect.next();
            }
            Ok((h, _)) => {
                // A valid record out of order: never torn writes, always corruption.
                return Err(corrupted(
                    path,
                    pos as u64,
                    Corruption::SeqGap {
                        expected: expect,
                        found: h.seq,
                    },
                ));
            }
            Err(e) => {
                if let Some(later) =
                    durable_record_after(&bytes, &header, pos + 1, expect, block_size)
                {
                    tracing::error!(path = %path.display(), offset = pos, later, "corrupt record before the tail");
                    // The error names the bad record's offset; the decode error inside
                    // says which byte (absolute) failed, which may lie past the record
                    // (a damaged length field) or past the end of the file.
                    return Err(corrupted(
                        path,
                        pos as u64,
                        Corruption::Decode(e.shifted(pos as u64)),
                    ));
                }
                break;
            }
        }
    }
    // A tail that ends inside a host write is cut back to where that write began: no flush
    // can have covered it (a flush waits for the whole host write), and a point must never
    // show half of one.
    let whole = records
        .iter()
        .rposition(|r| !r.continues)
        .map_or(0, |i| i + 1);
    if whole < records.len() {
        tracing::warn!(path = %path.display(), records = records.len() - whole, "the write log ends inside a host write; cutting it back to the write's start");
        pos = records[whole].offset as usize;
        records.truncate(whole);
        raw_payloads.truncate(whole);
        let last = records.last().map(|r| r.seq);
        markers.retain(|m| Some(m.seq) <= last);
    }
    Ok(TailScan {
        header,
        records,
        markers,
        valid_len: pos as u64,
        file_len: bytes.len() as u64,
        bytes,
        raw_payloads,
    })
}

/// Looks for a valid record after `from` that says seq `bad` was already durable. Returns
/// its offset. In a version 3 segment a record is valid only at its own offset (its crc is
/// bound to it): record-shaped bytes in a payload are never taken for one.
fn durable_record_after(
    bytes: &[u8],
    header: &SegmentHeader,
    from: usize,
    bad: Seq,
    block_size: u32,
) -> Option<usize> {
    let magic = record::MAGIC.to_le_bytes();
    let mut at = from;
    while at + HEADER_LEN <= bytes.len() {
        let next = bytes[at..].windows(2).position(|w| w == magic)?;
        at += next;
        let bind = header.binding(at as u64);
        if let Ok((h, _)) = record::decode(&bytes[at..], block_size, bind.as_ref()) {
            if h.seq > bad && h.durable_seq >= bad {
                return Some(at);
            }
        }
        at += 1;
    }
    None
}

fn push(
    records: &mut Vec<RecordMeta>,
    markers: &mut Vec<ScannedMarker>,
    h: &RecordHeader,
    payload: &[u8],
    offset: u64,
) {
    records.push(meta(h, offset));
    if h.kind == RecordKind::Marker {
        markers.push(ScannedMarker {
            seq: h.seq,
            timestamp_ns: h.timestamp_ns,
            name: String::from_utf8_lossy(payload).into_owned(),
            app_consistent: h.app_consistent(),
        });
    }
}

fn meta(h: &RecordHeader, offset: u64) -> RecordMeta {
    RecordMeta {
        seq: h.seq,
        timestamp_ns: h.timestamp_ns,
        kind: h.kind,
        first_block: h.first_block,
        block_count: h.block_count,
        offset,
        len: h.total_len() as u32,
        continues: h.continues(),
    }
}

/// Walks a sealed segment's records in order, calling `visit` for each until it
/// returns false or `length` (from the manifest) is reached. Each record's crc (header and
/// payload) is checked before it is visited; the data is not decompressed.
pub(crate) fn scan_sealed(
    fs: &dyn Storage,
    path: &Path,
    first_seq: Seq,
    length: u64,
    block_size: u32,
    mut visit: impl FnMut(&RecordMeta) -> bool,
) -> Result<()> {
    let file = crate::fsutil::open_vault_file(fs, path)?;
    let actual = file.len().io("stat", path)?;
    if actual < length {
        return Err(corrupted(
            path,
            actual,
            Corruption::Length {
                expected: length,
                actual,
            },
        ));
    }
    let mut r = BufReader::with_capacity(
        256 * 1024,
        Sequential {
            file: file.as_ref(),
            pos: 0,
        },
    );
    let mut hdr = [0u8; SEG_HEADER_LEN];
    read_exact(&mut r, &mut hdr, path, 0, "segment header")?;
    let sh = SegmentHeader::decode(&hdr).map_err(|e| decode_err(path, 0, e))?;
    if sh.first_seq != first_seq || sh.block_size != block_size {
        return Err(corrupted(
            path,
            0,
            Corruption::Inconsistent("segment header does not match the manifest"),
        ));
    }
    let mut pos = SEG_HEADER_LEN as u64;
    let mut expect = first_seq;
    let mut rh = [0u8; HEADER_LEN];
    let mut payload = Vec::new();
    while pos < length {
        read_exact(&mut r, &mut rh, path, pos, "record header")?;
        let h = RecordHeader::decode(&rh, block_size).map_err(|e| decode_err(path, pos, e))?;
        if h.seq != expect {
            return Err(corrupted(
                path,
                pos,
                Corruption::SeqGap {
                    expected: expect,
                    found: h.seq,
                },
            ));
        }
        if pos + h.total_len() > length {
            return Err(decode_err(
                path,
                pos,
                DecodeError::Truncated {
                    offset: 0,
                    needed: pos + h.total_len() - length,
                    what: "record",
                },
            ));
        }
        payload.resize(h.payload_len as usize, 0);
        read_exact(&mut r, &mut payload, path, pos, "record payload")?;
        h.verify(&rh, &payload, sh.binding(pos).as_ref())
            .map_err(|e| decode_err(path, pos, e))?;
        if !visit(&meta(&h, pos)) {
            return Ok(());
        }
        pos += h.total_len();
        expect = expect.next();
    }
    Ok(())
}

/// Reads a file from the start, in order, through positional reads.
struct Sequential<'a> {
    file: &'a dyn StorageFile,
    pos: u64,
}

impl Read for Sequential<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn read_exact(
    r: &mut impl Read,
    buf: &mut [u8],
    path: &Path,
    pos: u64,
    what: &'static str,
) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => decode_err(
            path,
            pos,
            DecodeError::Truncated {
                offset: 0,
                needed: buf.len() as u64,
                what,
            },
        ),
        _ => crate::VaultError::Io {
            op: "read",
            path: path.to_path_buf(),
            source: e,
        },
    })
}
