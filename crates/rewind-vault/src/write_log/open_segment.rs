//! The open segment: the one being appended to. Records are encoded into a buffer that is
//! written to the file when it grows past [`WRITE_OUT_BYTES`] or when a flush or a reader
//! needs it; the present delta map and a record index are kept alongside.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rewind_format::compress::StoredAs;
use rewind_format::delta_map::Location;
use rewind_format::record::{self, NewRecord, RecordKind};
use rewind_format::segment::{SegmentHeader, HEADER_LEN as SEG_HEADER_LEN};
use rewind_format::{names, SegmentId, Seq};

use super::scan::{scan_tail, ScannedMarker};
use super::RecordMeta;
use crate::error::{corrupted, Corruption, IoContext, Result};
use crate::fsutil;

/// The append buffer is written to the file once it holds this much.
pub(crate) const WRITE_OUT_BYTES: usize = 1 << 20;
/// Payloads at least this large skip the buffer (one copy less).
const DIRECT_PAYLOAD_BYTES: usize = 16 << 10;

#[derive(Debug)]
pub(crate) struct OpenSegment {
    pub id: SegmentId,
    pub path: PathBuf,
    file: Arc<File>,
    /// Bytes in the file (header and whole records).
    pub written: u64,
    /// Encoded records not yet written to the file.
    buf: Vec<u8>,
    /// Every record in the segment, in seq order.
    pub records: Vec<RecordMeta>,
    /// The markers among them.
    pub markers: Vec<ScannedMarker>,
    /// The present delta map: block -> newest location in this interval.
    pub present: BTreeMap<u64, Location>,
}

impl OpenSegment {
    /// Creates a new, empty segment whose first record will be `id`.
    pub(crate) fn create(
        log_dir: &Path,
        id: SegmentId,
        block_size: u32,
        vault_id: [u8; 16],
    ) -> Result<OpenSegment> {
        let path = log_dir.join(names::segment(id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .io("create", &path)?;
        let header = SegmentHeader {
            block_size,
            first_seq: id.0,
            vault_id,
        };
        file.write_all_at(&header.encode(), 0).io("write", &path)?;
        file.sync_all().io("fsync", &path)?;
        fsutil::sync_dir(log_dir)?;
        Ok(OpenSegment::new(id, path, file, SEG_HEADER_LEN as u64))
    }

    fn new(id: SegmentId, path: PathBuf, file: File, written: u64) -> OpenSegment {
        OpenSegment {
            id,
            path,
            file: Arc::new(file),
            written,
            buf: Vec::with_capacity(
                WRITE_OUT_BYTES + record::MAX_WRITE_PAYLOAD + record::HEADER_LEN,
            ),
            records: Vec::new(),
            markers: Vec::new(),
            present: BTreeMap::new(),
        }
    }

    /// Opens the open segment after a restart: scans it, rebuilds the present delta map,
    /// and (when `repair`) cuts a torn tail and makes what remains durable. A missing or
    /// header-only-torn segment is created afresh (a crash between committing the manifest
    /// and creating the segment leaves that).
    pub(crate) fn recover(
        log_dir: &Path,
        id: SegmentId,
        block_size: u32,
        vault_id: [u8; 16],
        repair: bool,
    ) -> Result<OpenSegment> {
        let path = log_dir.join(names::segment(id));
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return if repair {
                    OpenSegment::create(log_dir, id, block_size, vault_id)
                } else {
                    Ok(OpenSegment::new(
                        id,
                        path,
                        File::open("/dev/null").io("open", Path::new("/dev/null"))?,
                        SEG_HEADER_LEN as u64,
                    ))
                };
            }
            Err(e) => return Err(e).io("stat", &path),
        };
        if len <= SEG_HEADER_LEN as u64 {
            let bytes = std::fs::read(&path).io("read", &path)?;
            if SegmentHeader::decode(&bytes).is_err() {
                if repair {
                    return OpenSegment::create(log_dir, id, block_size, vault_id);
                }
                // A reader: the segment is being created (or its creation was torn); it
                // holds no records yet, as when it is missing.
                let file = File::open(&path).io("open", &path)?;
                return Ok(OpenSegment::new(id, path, file, SEG_HEADER_LEN as u64));
            }
        }
        let scan = scan_tail(&path, id.0, block_size)?;
        if scan.header.vault_id != vault_id {
            return Err(corrupted(
                &path,
                24,
                Corruption::Inconsistent("segment belongs to another vault"),
            ));
        }
        let file = if repair {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .io("open", &path)?;
            if scan.valid_len < scan.file_len {
                tracing::warn!(path = %path.display(), cut_at = scan.valid_len, dropped = scan.file_len - scan.valid_len, "cutting torn tail of the write log");
                f.set_len(scan.valid_len)
                    .io("truncate torn tail of", &path)?;
            }
            f.sync_all().io("fsync", &path)?;
            f
        } else {
            File::open(&path).io("open", &path)?
        };
        let mut seg = OpenSegment::new(id, path, file, scan.valid_len);
        for r in &scan.records {
            seg.index(r);
        }
        seg.records = scan.records;
        seg.markers = scan.markers;
        Ok(seg)
    }

    /// The seq of the newest record in the segment (the one before it when empty).
    pub(crate) fn last_seq(&self) -> Seq {
        self.records.last().map_or(Seq(self.id.0 .0 - 1), |r| r.seq)
    }

    /// Bytes the segment holds, buffered ones included.
    pub(crate) fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    pub(crate) fn file(&self) -> Arc<File> {
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
        let offset = self.len();
        if stored.len() >= DIRECT_PAYLOAD_BYTES {
            // Large payloads are not copied into the buffer: what is buffered goes out
            // first (order), then header and payload in one vectored write.
            self.write_out()?;
            let mut header = Vec::with_capacity(record::HEADER_LEN);
            record::encode_header(&mut header, r, stored, raw_len, stored_as);
            fsutil::write_all_vectored_at(&self.file, &[&header, stored], self.written)
                .io("append to", &self.path)?;
            self.written += (header.len() + stored.len()) as u64;
        } else {
            record::encode(&mut self.buf, r, stored, raw_len, stored_as);
        }
        let meta = RecordMeta {
            seq: r.seq,
            timestamp_ns: r.timestamp_ns,
            kind: r.kind,
            first_block: r.first_block,
            block_count: r.block_count,
            offset,
            len: (record::HEADER_LEN + stored.len()) as u32,
        };
        self.index(&meta);
        self.records.push(meta);
        if let Some(name) = marker_name {
            self.markers.push(ScannedMarker {
                seq: r.seq,
                timestamp_ns: r.timestamp_ns,
                name: name.to_string(),
                app_consistent: r.app_consistent,
            });
        }
        if self.buf.len() >= WRITE_OUT_BYTES {
            self.write_out()?;
        }
        Ok(())
    }

    fn index(&mut self, m: &RecordMeta) {
        let loc = match m.kind {
            RecordKind::Write | RecordKind::FixUp => Location::Data {
                segment: self.id,
                offset: m.offset,
            },
            RecordKind::Zero | RecordKind::Trim => Location::Zero,
            RecordKind::Marker => return,
        };
        for b in m.first_block..m.first_block + u64::from(m.block_count) {
            self.present.insert(b, loc);
        }
    }

    /// Writes the buffer to the file (no fsync).
    pub(crate) fn write_out(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.buf, self.written)
            .io("append to", &self.path)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Drops buffered records (a simulated crash, for tests).
    pub(crate) fn discard_buffer(&mut self) {
        self.buf.clear();
    }
}
