//! The open segment: the one being appended to. Records are encoded into a buffer that is
//! handed to the log writer (a background thread, [`super::writer`]) when it grows past
//! [`WRITE_OUT_BYTES`] or when a flush or a reader needs it; the present delta map and a
//! record index are kept alongside.
//!
//! Where the file system allows it, the log is written with direct I/O (`O_DIRECT`): the
//! log is written once and read rarely, so copying it through the page cache only costs
//! CPU and memory (new page-cache pages are dear, and a growing log dirties new pages all
//! the time); elsewhere (or with `REWIND_DIRECT_LOG=0`) through the page cache, by the
//! same writer. Writes cover whole aligned blocks: the buffer starts at the aligned offset
//! below the end of what is written, carries the bytes of that last partial block, and
//! each write sends them again with the new records after them and zeroes up to the next
//! aligned offset. The zeroes past the last record are what a torn tail looks like, and
//! recovery cuts them. Readers use a second, buffered handle (the kernel keeps the two
//! coherent).
//!
//! A write the file system refuses for lack of space is kept by the writer and tried
//! again: records handed over are never dropped (see [`super::writer`]).

use crate::write_log::records::Records;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rewind_storage::{Open, Storage};

use rewind_format::compress::StoredAs;
use rewind_format::extents::NewLoc;
use rewind_format::record::{self, NewRecord, RecordKind};
use rewind_format::segment::{SegmentHeader, HEADER_LEN as SEG_HEADER_LEN};
use rewind_format::{crc, names, SegmentId, Seq};

use super::aligned::{AlignedBuf, DIRECT_ALIGN};
use super::present::PresentMap;
use super::scan::{scan_tail, ScannedMarker};
use super::writer::LogWriter;
use super::RecordMeta;
use crate::error::{corrupted, Corruption, IoContext, Result};
use crate::fsutil::{self, FileRef};

/// The append buffer is written to the file once it holds this much.
pub(crate) const WRITE_OUT_BYTES: usize = 4 << 20;
/// Bytes an append buffer holds: a full buffer, one more largest record, the carried
/// partial block and the padding.
pub(crate) const BUFFER_BYTES: usize =
    WRITE_OUT_BYTES + record::MAX_WRITE_PAYLOAD + record::HEADER_LEN + 2 * DIRECT_ALIGN;
/// The handle the log writer writes through (direct I/O where the file system has it).
#[derive(Debug)]
struct Background {
    file: FileRef,
    writer: Arc<LogWriter>,
    /// Ticket of the last buffer handed to the writer.
    ticket: u64,
    /// Whether `file` was opened with `O_DIRECT`.
    direct: bool,
}

#[derive(Debug)]
pub(crate) struct OpenSegment {
    pub id: SegmentId,
    block_size: u32,
    pub path: PathBuf,
    file: FileRef,
    /// The log writer and its handle (writers only; a reader never appends).
    background: Option<Background>,
    /// Bytes in the file (header and whole records), or handed to the log writer.
    pub written: u64,
    /// File offset of `buf[0]`: the aligned offset at or below `written` (the buffer then
    /// starts with that partial block's bytes).
    buf_start: u64,
    /// Encoded records not yet written to the file (after the carried partial block).
    buf: AlignedBuf,
    /// Every record in the segment, in seq order.
    pub records: Records,
    /// The markers among them.
    pub markers: Vec<ScannedMarker>,
    /// The present delta map: block -> newest location in this interval.
    pub present: PresentMap,
    /// Scratch for the block crcs and the header of the record being appended.
    crcs: Vec<u32>,
    header: Vec<u8>,
    /// What the records' crcs are bound to, but the offset (`None`: a segment older than
    /// version 3, whose records are appended unbound as it began).
    binding: Option<record::Binding>,
}

impl OpenSegment {
    /// Creates a new, empty segment whose first record will be `id`, durably.
    pub(crate) fn create(
        fs: &dyn Storage,
        log_dir: &Path,
        id: SegmentId,
        block_size: u32,
        vault_id: [u8; 16],
        writer: Option<&Arc<LogWriter>>,
    ) -> Result<OpenSegment> {
        let seg = Self::create_unsynced(fs, log_dir, id, block_size, vault_id, writer)?;
        seg.file.sync_all().io("fsync", &seg.path)?;
        fsutil::sync_dir(fs, log_dir)?;
        Ok(seg)
    }

    /// [`OpenSegment::create`] without the syncs: the caller makes the file and its
    /// directory entry durable before it promises a record in it (a seal's switch: see
    /// `vault/seal.rs`).
    pub(crate) fn create_unsynced(
        fs: &dyn Storage,
        log_dir: &Path,
        id: SegmentId,
        block_size: u32,
        vault_id: [u8; 16],
        writer: Option<&Arc<LogWriter>>,
    ) -> Result<OpenSegment> {
        let path = log_dir.join(names::segment(id));
        let file = fs
            .open(&path, Open::create_truncate())
            .io("create", &path)?;
        let header = SegmentHeader {
            version: rewind_format::segment::VERSION,
            block_size,
            first_seq: id.0,
            vault_id,
        };
        file.write_all_at(&header.encode(), 0).io("write", &path)?;
        let mut seg = OpenSegment::new(id, path, file, SEG_HEADER_LEN as u64, block_size);
        seg.binding = header.binding(0);
        seg.use_writer(fs, writer)
    }

    fn new(
        id: SegmentId,
        path: PathBuf,
        file: FileRef,
        written: u64,
        block_size: u32,
    ) -> OpenSegment {
        OpenSegment {
            id,
            block_size,
            path,
            file,
            background: None,
            written,
            buf_start: written,
            buf: AlignedBuf::new(BUFFER_BYTES),
            records: Records::default(),
            markers: Vec::new(),
            present: PresentMap::new(block_size),
            crcs: Vec::new(),
            header: Vec::with_capacity(record::HEADER_LEN),
            binding: None,
        }
    }

    /// Hands appends to `writer` from now on, through a handle opened with direct I/O if
    /// the file system supports it (and `REWIND_DIRECT_LOG` is not `0`), else through the
    /// page cache: loads the partial block below `written` into the buffer.
    fn use_writer(
        mut self,
        fs: &dyn Storage,
        writer: Option<&Arc<LogWriter>>,
    ) -> Result<OpenSegment> {
        let Some(writer) = writer else {
            return Ok(self);
        };
        let want_direct = !std::env::var("REWIND_DIRECT_LOG").is_ok_and(|v| v == "0");
        let how = if want_direct {
            Open::write().direct()
        } else {
            Open::write()
        };
        let file = fs.open(&self.path, how).io("open", &self.path)?;
        let direct = file.is_direct();
        let start = self.written / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
        let mut carried = vec![0u8; (self.written - start) as usize];
        self.file
            .read_exact_at(&mut carried, start)
            .io("read", &self.path)?;
        let mut buf = writer.take_buffer()?;
        buf.extend_from_slice(&carried);
        self.buf = buf;
        self.buf_start = start;
        self.background = Some(Background {
            file,
            writer: writer.clone(),
            ticket: 0,
            direct,
        });
        Ok(self)
    }

    /// Opens the open segment after a restart: scans it, rebuilds the present delta map,
    /// and (when `repair`) cuts a torn tail and makes what remains durable. A missing or
    /// header-only-torn segment is created afresh (a crash between committing the manifest
    /// and creating the segment leaves that).
    pub(crate) fn recover(
        fs: &dyn Storage,
        log_dir: &Path,
        id: SegmentId,
        block_size: u32,
        vault_id: [u8; 16],
        writer: Option<&Arc<LogWriter>>,
    ) -> Result<OpenSegment> {
        let repair = writer.is_some();
        let path = log_dir.join(names::segment(id));
        let empty = |path: PathBuf| {
            OpenSegment::new(
                id,
                path,
                rewind_storage::empty_file(),
                SEG_HEADER_LEN as u64,
                block_size,
            )
        };
        let len = match fs.stat(&path) {
            Ok(m) => m.len,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return if repair {
                    OpenSegment::create(fs, log_dir, id, block_size, vault_id, writer)
                } else {
                    Ok(empty(path))
                };
            }
            Err(e) => return Err(e).io("stat", &path),
        };
        if len <= SEG_HEADER_LEN as u64 {
            let bytes = fsutil::read_file(fs, &path).io("read", &path)?;
            if SegmentHeader::decode(&bytes).is_err() {
                if repair {
                    return OpenSegment::create(fs, log_dir, id, block_size, vault_id, writer);
                }
                // A reader: the segment is being created (or its creation was torn); it
                // holds no records yet, as when it is missing.
                return Ok(empty(path));
            }
        }
        let scan = scan_tail(fs, &path, id.0, block_size)?;
        if scan.header.vault_id != vault_id {
            return Err(corrupted(
                &path,
                24,
                Corruption::Inconsistent("segment belongs to another vault"),
            ));
        }
        let file = if repair {
            let f = fs.open(&path, Open::write()).io("open", &path)?;
            if scan.valid_len < scan.file_len {
                tracing::warn!(path = %path.display(), cut_at = scan.valid_len, dropped = scan.file_len - scan.valid_len, "cutting torn tail of the write log");
                f.set_len(scan.valid_len)
                    .io("truncate torn tail of", &path)?;
            }
            f.sync_all().io("fsync", &path)?;
            f
        } else {
            fs.open(&path, Open::read()).io("open", &path)?
        };
        let mut seg = OpenSegment::new(id, path, file, scan.valid_len, block_size);
        seg.binding = scan.header.binding(0);
        if repair {
            seg = seg.use_writer(fs, writer)?;
        }
        for (r, raw) in scan.records.iter().zip(&scan.raw_payloads) {
            let data = raw.map(|(at, len)| &scan.bytes[at..at + len]);
            seg.index(r, data);
        }
        seg.records = scan.records.into();
        seg.markers = scan.markers;
        Ok(seg)
    }

    /// The seq of the newest record in the segment (the one before it when empty).
    pub(crate) fn last_seq(&self) -> Seq {
        self.records.last().map_or(Seq(self.id.0 .0 - 1), |r| r.seq)
    }

    /// Bytes the segment holds, buffered ones included.
    pub(crate) fn len(&self) -> u64 {
        self.buf_start + self.buf.len() as u64
    }

    pub(crate) fn file(&self) -> FileRef {
        self.file.clone()
    }

    /// Encodes a record into the buffer and updates the index and the present delta map.
    pub(crate) fn append(
        &mut self,
        r: &NewRecord,
        stored: &[u8],
        raw_len: u32,
        stored_as: StoredAs,
        marker_name: Option<&str>,
    ) -> Result<()> {
        let mut header = std::mem::take(&mut self.header);
        header.clear();
        // Uncompressed data: the crc of each block (for the delta map) is computed once and
        // the record's crc derived from them, so the payload is read once, not twice.
        let mut crcs = std::mem::take(&mut self.crcs);
        crcs.clear();
        let per_block = self.block_crcs(r.kind, r.block_count, stored, stored_as, &mut crcs);
        let bind = self.binding.map(|b| record::Binding {
            offset: self.len(),
            ..b
        });
        if per_block {
            let payload_crc = crc::concat_equal(&crcs, u64::from(self.block_size));
            record::encode_header_with_payload_crc(
                &mut header,
                r,
                stored.len() as u32,
                payload_crc,
                raw_len,
                stored_as,
                bind.as_ref(),
            );
        } else {
            record::encode_header(&mut header, r, stored, raw_len, stored_as, bind.as_ref());
        }
        let crcs_ref = per_block.then_some(crcs.as_slice());
        let res = self.append_encoded(r, &header, stored, crcs_ref, marker_name);
        self.crcs = crcs;
        self.header = header;
        res
    }

    /// Fills `crcs` with the crc32c of each block of `stored` when the record's blocks get a
    /// location each (uncompressed write and fix-up data). Returns whether it did.
    fn block_crcs(
        &self,
        kind: RecordKind,
        block_count: u32,
        stored: &[u8],
        stored_as: StoredAs,
        crcs: &mut Vec<u32>,
    ) -> bool {
        let bs = self.block_size as usize;
        let data = matches!(kind, RecordKind::Write | RecordKind::FixUp);
        if !data || stored_as != StoredAs::Raw || stored.len() != block_count as usize * bs {
            return false;
        }
        crcs.extend(stored.chunks_exact(bs).map(crc32c::crc32c));
        true
    }

    fn append_encoded(
        &mut self,
        r: &NewRecord,
        header: &[u8],
        stored: &[u8],
        crcs: Option<&[u32]>,
        marker_name: Option<&str>,
    ) -> Result<()> {
        if header.len() + stored.len() > self.buf.room() {
            self.write_out()?;
        }
        let offset = self.len();
        self.buf.extend_from_slice(header);
        self.buf.extend_from_slice(stored);
        self.indexed(r, offset, stored.len(), crcs, marker_name)?;
        if self.len() - self.written >= WRITE_OUT_BYTES as u64 {
            self.write_out()?;
        }
        Ok(())
    }

    /// Indexes a record just appended at `offset`.
    fn indexed(
        &mut self,
        r: &NewRecord,
        offset: u64,
        stored_len: usize,
        crcs: Option<&[u32]>,
        marker_name: Option<&str>,
    ) -> Result<()> {
        let meta = RecordMeta {
            seq: r.seq,
            timestamp_ns: r.timestamp_ns,
            kind: r.kind,
            first_block: r.first_block,
            block_count: r.block_count,
            offset,
            len: (record::HEADER_LEN + stored_len) as u32,
            continues: r.continues,
        };
        self.index_blocks(&meta, crcs);
        self.records.push(meta);
        if let Some(name) = marker_name {
            self.markers.push(ScannedMarker {
                seq: r.seq,
                timestamp_ns: r.timestamp_ns,
                name: name.to_string(),
                app_consistent: r.app_consistent,
            });
        }
        Ok(())
    }

    /// Puts a record's blocks into the present delta map. `raw`: the record's payload
    /// when it is stored uncompressed: each block then gets a location of its own (its
    /// bytes and their crc), so that a point read of one block reads just that block.
    fn index(&mut self, m: &RecordMeta, raw: Option<&[u8]>) {
        let bs = self.block_size as usize;
        let crcs: Option<Vec<u32>> = raw
            .filter(|d| d.len() == m.block_count as usize * bs)
            .map(|d| d.chunks_exact(bs).map(crc32c::crc32c).collect());
        self.index_blocks(m, crcs.as_deref());
    }

    /// Puts a record's blocks into the present delta map; `crcs`, when given, holds one
    /// crc per block of an uncompressed payload (see [`OpenSegment::index`]).
    fn index_blocks(&mut self, m: &RecordMeta, crcs: Option<&[u32]>) {
        let (first, count) = (m.first_block, u64::from(m.block_count));
        let loc = match (m.kind, crcs) {
            (RecordKind::Zero | RecordKind::Trim, _) => NewLoc::Zero,
            (RecordKind::Write | RecordKind::FixUp, Some(crcs)) if crcs.len() as u64 == count => {
                NewLoc::Blocks {
                    segment: self.id,
                    offset: m.offset + record::HEADER_LEN as u64,
                    crcs,
                }
            }
            (RecordKind::Write | RecordKind::FixUp, _) => NewLoc::Record {
                segment: self.id,
                offset: m.offset,
            },
            (RecordKind::Marker, _) => return,
        };
        self.present.insert(first, count, loc);
    }

    /// Hands the buffer to the log writer (no fsync; see [`OpenSegment::pending_write`]).
    pub(crate) fn write_out(&mut self) -> Result<()> {
        let end = self.len();
        if end == self.written {
            return Ok(());
        }
        let Some(d) = &mut self.background else {
            return Err(crate::VaultError::ReadOnly);
        };
        // The next buffer starts with the last partial block: its next write sends those
        // bytes again, with more records after them.
        let keep_from = end / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
        let mut next = d.writer.take_buffer()?;
        next.extend_from_slice(&self.buf.as_slice()[(keep_from - self.buf_start) as usize..]);
        let full = std::mem::replace(&mut self.buf, next);
        d.ticket = d.writer.submit(
            d.file.clone(),
            self.path.clone(),
            full,
            self.buf_start,
            !d.direct,
        )?;
        self.buf_start = keep_from;
        self.written = end;
        Ok(())
    }

    /// What to wait for before the bytes handed out so far are in the file: the log writer
    /// and a ticket (`None`: they are).
    pub(crate) fn pending_write(&self) -> Option<(Arc<LogWriter>, u64)> {
        self.background
            .as_ref()
            .map(|d| (d.writer.clone(), d.ticket))
    }

    /// Hands the buffer out and waits until it is in the file (no fsync).
    pub(crate) fn write_out_and_wait(&mut self) -> Result<()> {
        self.write_out()?;
        match self.pending_write() {
            Some((w, t)) => w.wait(t),
            None => Ok(()),
        }
    }

    /// Writes the buffer out and cuts the zero padding of the writer's aligned writes: the
    /// file then ends with its last record (sealing does this before the final fdatasync).
    pub(crate) fn finish(&mut self) -> Result<()> {
        self.write_out_and_wait()?;
        if self.background.is_some() {
            self.file
                .set_len(self.written)
                .io("truncate padding of", &self.path)?;
        }
        Ok(())
    }

    /// Drops buffered records (a simulated crash, for tests).
    pub(crate) fn discard_buffer(&mut self) {
        self.buf.truncate((self.written - self.buf_start) as usize);
    }
}

impl Drop for OpenSegment {
    fn drop(&mut self) {
        // The buffer came from the log writer's pool: give it back.
        if let Some(d) = &self.background {
            let buf = std::mem::replace(&mut self.buf, AlignedBuf::new(DIRECT_ALIGN));
            d.writer.give_back(buf);
        }
    }
}
