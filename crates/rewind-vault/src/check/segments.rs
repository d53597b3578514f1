//! Checking one write log segment: its header and every record up to where the log ends
//! (a sealed segment's length in the manifest; the durable end of the open one), each
//! record's crc and seq, and that compressed payloads decompress. A damaged record does not
//! end the check: the scan looks for the next intact record and goes on from there.

use rewind_format::compress::{decompress, StoredAs};
use rewind_format::record::{RecordHeader, RecordKind, HEADER_LEN, MAGIC};
use rewind_format::segment::{SegmentHeader, HEADER_LEN as SEG_HEADER_LEN};
use rewind_format::{DecodeError, SegmentId, Seq};

use super::report::Fault;
use super::source::{Opened, Source, CHUNK};
use crate::error::Corruption;

/// An intact record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rec {
    pub seq: Seq,
    pub kind: RecordKind,
    pub first_block: u64,
    pub block_count: u32,
    /// Where the record starts in the segment, and its length (header and payload).
    pub offset: u64,
    pub len: u64,
    /// The payload is the blocks' bytes as written (not compressed).
    pub raw: bool,
}

/// Where the records of a segment end.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    /// A sealed segment: the manifest's length, and the seq of its last record.
    Sealed { length: u64, last_seq: Seq },
    /// The open segment: `Some(n)` bytes are durable (online: every record before `n` was
    /// flushed); `None` (offline): to the end of the file, where a torn tail is cut on the
    /// next open.
    Open { durable: Option<u64> },
}

/// What to check a segment against.
pub(crate) struct Expect {
    pub id: SegmentId,
    pub block_size: u32,
    pub vault_id: Option<[u8; 16]>,
    pub limit: Limit,
}

/// Damaged bytes of a segment: the header, or one or more records.
#[derive(Debug)]
pub(crate) struct Span {
    pub offset: u64,
    pub end: u64,
    /// The seq the first damaged record should have carried; `None` for the header.
    pub first_seq: Option<Seq>,
    /// The seq of the last damaged record, when an intact one follows.
    pub last_seq: Option<Seq>,
    pub fault: Fault,
}

/// What a scan found.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    pub spans: Vec<Span>,
    /// The seq of the last intact record.
    pub last_seq: Option<Seq>,
    /// Markers found: (seq, name).
    pub markers: Vec<(Seq, String)>,
    pub notes: Vec<String>,
}

/// Scans the segment `f`, calling `visit` for each intact record in order (with its payload
/// when it is raw data).
pub(crate) fn scan(
    src: &mut Source<'_>,
    f: &Opened,
    want: &Expect,
    visit: &mut dyn FnMut(&Rec, Option<&[u8]>),
) -> Scanned {
    let limit = match want.limit {
        Limit::Sealed { length, .. } => length.min(f.len),
        Limit::Open { durable: Some(n) } => n.min(f.len),
        Limit::Open { durable: None } => f.len,
    };
    let mut w = Window {
        f,
        start: 0,
        buf: Vec::new(),
        limit,
        header: None,
    };
    let mut out = Scanned::default();
    check_header(src, &mut w, want, &mut out);
    let mut at = (SEG_HEADER_LEN as u64, want.id.0);
    while at.0 < limit && !src.cancelled() {
        w.forget_before(at.0);
        match step(src, &mut w, at, want, &mut out, visit) {
            Some(next) => at = next,
            None => break,
        }
    }
    if let Limit::Sealed { length, last_seq } = want.limit {
        let whole = out.spans.is_empty() && at.0 >= limit && limit == length;
        if whole && out.last_seq != Some(last_seq) {
            out.spans.push(Span {
                offset: SEG_HEADER_LEN as u64,
                end: length,
                first_seq: Some(want.id.0),
                last_seq: None,
                fault: Fault::Corrupted(Corruption::Inconsistent(
                    "the segment's records do not end at the seq the manifest says",
                )),
            });
        }
    }
    out
}

/// Checks the record at `pos`, which should carry seq `expect`: where the scan goes on
/// (offset and the seq expected there), `None` when it ends.
fn step(
    src: &mut Source<'_>,
    w: &mut Window<'_>,
    (pos, expect): (u64, Seq),
    want: &Expect,
    out: &mut Scanned,
    visit: &mut dyn FnMut(&Rec, Option<&[u8]>),
) -> Option<(u64, Seq)> {
    let span = |end, last_seq, fault| Span {
        offset: pos,
        end,
        first_seq: Some(expect),
        last_seq,
        fault,
    };
    match try_record(src, w, pos, want) {
        Tried::Ok(h) if h.seq == expect => {
            let rec = rec_of(&h, pos);
            let payload = w
                .get(src, pos + HEADER_LEN as u64, h.payload_len as usize)
                .ok()
                .flatten();
            if h.kind == RecordKind::Marker {
                let name = payload.map(|p| String::from_utf8_lossy(p).into_owned());
                out.markers.push((h.seq, name.unwrap_or_default()));
            }
            visit(&rec, payload.filter(|_| rec.raw));
            out.last_seq = Some(h.seq);
            Some((pos + rec.len, expect.next()))
        }
        Tried::Ok(h) => {
            let gap = Corruption::SeqGap {
                expected: expect,
                found: h.seq,
            };
            out.spans
                .push(span(pos + h.total_len(), Some(expect), gap.into()));
            Some((pos + h.total_len(), h.seq.next()))
        }
        Tried::Bad(c) => match damaged(src, w, pos, expect, want, out) {
            Some((next, h)) => {
                out.spans.push(span(next, Some(Seq(h.seq.0 - 1)), c.into()));
                Some((next, h.seq))
            }
            None if matches!(want.limit, Limit::Open { durable: None }) => {
                tail_note(src, w, pos, out);
                None
            }
            None => {
                out.spans.push(span(w.limit, None, c.into()));
                None
            }
        },
        Tried::Io(at, e) => {
            out.spans.push(Span {
                offset: pos.min(at),
                ..span(w.limit, None, e)
            });
            None
        }
    }
}

/// The segment header: decodes, and names this segment of this vault.
fn check_header(src: &mut Source<'_>, w: &mut Window<'_>, want: &Expect, out: &mut Scanned) {
    let fault = match w.get(src, 0, SEG_HEADER_LEN) {
        Err((_, e)) => Some(e),
        Ok(None) => Some(Fault::Corrupted(Corruption::Decode(
            DecodeError::Truncated {
                offset: w.limit,
                needed: SEG_HEADER_LEN as u64 - w.limit.min(SEG_HEADER_LEN as u64),
                what: "segment header",
            },
        ))),
        Ok(Some(b)) => match SegmentHeader::decode(b) {
            Err(e) => Some(Fault::Corrupted(Corruption::Decode(e))),
            Ok(h) if h.first_seq != want.id.0 || h.block_size != want.block_size => {
                Some(Fault::Corrupted(Corruption::Inconsistent(
                    "segment header does not match the manifest",
                )))
            }
            Ok(h) if want.vault_id.is_some_and(|id| id != h.vault_id) => Some(Fault::Corrupted(
                Corruption::Inconsistent("segment header names another vault"),
            )),
            Ok(h) => {
                w.header = Some(h);
                None
            }
        },
    };
    if let Some(fault) = fault {
        out.spans.push(Span {
            offset: 0,
            end: (SEG_HEADER_LEN as u64).min(w.f.len),
            first_seq: None,
            last_seq: None,
            fault,
        });
    }
}

/// A record that did not check out at `pos`: the next intact record after it, if the log
/// goes on (offline, in the open segment, only a later record that says the damaged one was
/// durable makes it damage rather than a torn tail).
fn damaged(
    src: &mut Source<'_>,
    w: &mut Window<'_>,
    pos: u64,
    expect: Seq,
    want: &Expect,
    out: &mut Scanned,
) -> Option<(u64, RecordHeader)> {
    let (next, h) = find_next(src, w, pos + 1, expect, want)?;
    if let Limit::Open { durable: None } = want.limit {
        if h.durable_seq < expect {
            // Never flushed: a torn tail with more records after it; the next open cuts it.
            out.notes.push(format!(
                "the log is torn at byte {pos} (seq {expect} does not check out) and the next open cuts it there; records after it were never flushed"
            ));
            return None;
        }
    }
    Some((next, h))
}

/// The first offset at or after `from` where an intact record with a seq after `expect`
/// starts.
fn find_next(
    src: &mut Source<'_>,
    w: &mut Window<'_>,
    from: u64,
    expect: Seq,
    want: &Expect,
) -> Option<(u64, RecordHeader)> {
    let magic = MAGIC.to_le_bytes();
    let mut at = from;
    while at + HEADER_LEN as u64 <= w.limit {
        if src.cancelled() {
            return None;
        }
        let n = (w.limit - at).min(CHUNK as u64) as usize;
        let found = {
            let b = w.get(src, at, n).ok().flatten()?;
            b.windows(2).position(|p| p == magic)
        };
        let Some(i) = found else {
            at += n.saturating_sub(1).max(1) as u64;
            w.forget_before(at);
            continue;
        };
        let cand = at + i as u64;
        if let Tried::Ok(h) = try_record(src, w, cand, want) {
            let in_segment = match want.limit {
                Limit::Sealed { last_seq, .. } => h.seq <= last_seq,
                Limit::Open { .. } => true,
            };
            if h.seq > expect && in_segment {
                return Some((cand, h));
            }
        }
        at = cand + 1;
    }
    None
}

/// What is left after the last intact record of the open segment (offline): zeroes are the
/// padding of the aligned log writes; anything else is a torn tail the next open cuts.
fn tail_note(src: &mut Source<'_>, w: &mut Window<'_>, pos: u64, out: &mut Scanned) {
    let mut at = pos;
    while at < w.limit {
        let n = (w.limit - at).min(CHUNK as u64) as usize;
        match w.get(src, at, n) {
            Ok(Some(b)) if b.iter().all(|x| *x == 0) => at += n as u64,
            _ => {
                out.notes.push(format!(
                    "the log ends with a torn tail at byte {pos} ({} bytes after the last intact record); the next open cuts it",
                    w.limit - pos
                ));
                return;
            }
        }
        w.forget_before(at);
    }
}

enum Tried {
    Ok(RecordHeader),
    Bad(Corruption),
    Io(u64, Fault),
}

/// Decodes and verifies the record at `pos` (and decompresses a compressed payload).
fn try_record(src: &mut Source<'_>, w: &mut Window<'_>, pos: u64, want: &Expect) -> Tried {
    let bs = want.block_size;
    let limit = w.limit;
    // What the crc is bound to: as the header says; with a damaged header, as this build
    // writes (the vault's id, this segment) or, failing that, unbound (an older segment).
    let binds: Vec<Option<rewind_format::record::Binding>> = match &w.header {
        Some(h) => vec![h.binding(pos)],
        None => vec![
            want.vault_id
                .map(|vault_id| rewind_format::record::Binding {
                    vault_id,
                    segment_first_seq: want.id.0,
                    offset: pos,
                }),
            None,
        ],
    };
    let truncated = |needed: u64, what| {
        Tried::Bad(Corruption::Decode(DecodeError::Truncated {
            offset: limit,
            needed,
            what,
        }))
    };
    let h = match w.get(src, pos, HEADER_LEN) {
        Err((at, e)) => return Tried::Io(at, e),
        Ok(None) => return truncated(pos + HEADER_LEN as u64 - limit, "record header"),
        Ok(Some(b)) => match RecordHeader::decode(b, bs) {
            Ok(h) => h,
            Err(e) => return Tried::Bad(Corruption::Decode(e.shifted(pos))),
        },
    };
    let total = h.total_len() as usize;
    let b = match w.get(src, pos, total) {
        Err((at, e)) => return Tried::Io(at, e),
        Ok(None) => return truncated(pos + total as u64 - limit, "record"),
        Ok(Some(b)) => b,
    };
    let (hdr, payload) = b.split_at(HEADER_LEN);
    let mut checked = Ok(());
    for bind in &binds {
        checked = h.verify(hdr, payload, bind.as_ref());
        if checked.is_ok() {
            break;
        }
    }
    if let Err(e) = checked {
        return Tried::Bad(Corruption::Decode(e.shifted(pos)));
    }
    let stored = h.stored_as();
    if h.kind.carries_data() && stored != StoredAs::Raw {
        let mut out = Vec::new();
        if let Err(e) = decompress(stored, payload, h.raw_len as usize, &mut out) {
            return Tried::Bad(Corruption::Decode(e.shifted(pos + HEADER_LEN as u64)));
        }
    }
    Tried::Ok(h)
}

fn rec_of(h: &RecordHeader, offset: u64) -> Rec {
    Rec {
        seq: h.seq,
        kind: h.kind,
        first_block: h.first_block,
        block_count: h.block_count,
        offset,
        len: h.total_len(),
        raw: h.kind.carries_data() && h.stored_as() == StoredAs::Raw,
    }
}

/// The part of a file being scanned, read ahead in chunks.
struct Window<'f> {
    f: &'f Opened,
    /// File offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
    /// Bytes of the file that count.
    limit: u64,
    /// The segment header, once decoded: what its records' crcs are bound to.
    header: Option<SegmentHeader>,
}

impl Window<'_> {
    /// Bytes `at..at + len`, reading ahead as needed; `Ok(None)` when they run past the
    /// limit; an I/O error with the offset it happened at.
    fn get(
        &mut self,
        src: &mut Source<'_>,
        at: u64,
        len: usize,
    ) -> Result<Option<&[u8]>, (u64, Fault)> {
        let end = at + len as u64;
        if end > self.limit {
            return Ok(None);
        }
        if at < self.start {
            // Behind the window (a resync looked back): start it again here.
            self.start = at;
            self.buf.clear();
        }
        let have = self.start + self.buf.len() as u64;
        if end > have {
            let want = (end - have).max(CHUNK as u64).min(self.limit - have) as usize;
            let old = self.buf.len();
            self.buf.resize(old + want, 0);
            let got = src
                .read_at(self.f, &mut self.buf[old..], have)
                .map_err(|e| (have, e))?;
            self.buf.truncate(old + got);
            if self.start + (self.buf.len() as u64) < end {
                // The file ended early (it shrank under us).
                return Ok(None);
            }
        }
        let from = (at - self.start) as usize;
        Ok(Some(&self.buf[from..from + len]))
    }

    /// Bytes before `at` are not needed again.
    fn forget_before(&mut self, at: u64) {
        let n = at.saturating_sub(self.start) as usize;
        if n >= 4 * CHUNK && n <= self.buf.len() {
            self.buf.drain(..n);
            self.start = at;
        }
    }
}
