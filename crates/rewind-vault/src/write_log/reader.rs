//! Reading a write record's data by its location, verified against the record's crc.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rewind_storage::Storage;

use rewind_format::compress::{decompress, StoredAs};
use rewind_format::record::{Binding, RecordHeader, HEADER_LEN};
use rewind_format::segment::{SegmentHeader, HEADER_LEN as SEG_HEADER_LEN};
use rewind_format::{names, SegmentId};

use crate::cache::{CacheLimits, Lru};
use crate::error::{corrupted, decode_err, Corruption, Result};
use crate::fsutil::FileRef;

/// Payload bytes read together with a record's header.
const SPECULATIVE_PAYLOAD: usize = 16 << 10;

/// Open read handles to segment files, shared by every reader of a vault: at most
/// [`CacheLimits::segment_files`], the least recently used closed past that (a read that
/// holds a handle keeps it open until it is done).
#[derive(Debug)]
pub(crate) struct SegmentFiles {
    fs: Arc<dyn Storage>,
    log_dir: PathBuf,
    block_size: u32,
    vault_id: [u8; 16],
    /// Each open segment's handle and header (what its records' crcs are bound to; `None`:
    /// the header does not decode).
    open: Mutex<Lru<SegmentId, (FileRef, Option<SegmentHeader>)>>,
}

/// One write record's data, decoded.
#[derive(Debug, Default)]
pub(crate) struct DecodedRecord {
    pub segment: Option<SegmentId>,
    pub offset: u64,
    pub first_block: u64,
    pub block_count: u32,
    pub data: Vec<u8>,
    raw: Vec<u8>,
}

impl DecodedRecord {
    pub(crate) fn is(&self, segment: SegmentId, offset: u64) -> bool {
        self.segment == Some(segment) && self.offset == offset
    }
}

impl SegmentFiles {
    pub(crate) fn new(
        fs: Arc<dyn Storage>,
        log_dir: PathBuf,
        block_size: u32,
        vault_id: [u8; 16],
    ) -> SegmentFiles {
        SegmentFiles {
            fs,
            log_dir,
            block_size,
            vault_id,
            open: Mutex::new(Lru::new(CacheLimits::default().segment_files as u64)),
        }
    }

    pub(crate) fn path(&self, id: SegmentId) -> PathBuf {
        self.log_dir.join(names::segment(id))
    }

    /// The storage the segments are on.
    pub(crate) fn storage(&self) -> &dyn Storage {
        self.fs.as_ref()
    }

    fn file(&self, id: SegmentId) -> Result<(FileRef, PathBuf, Option<SegmentHeader>)> {
        let path = self.path(id);
        let mut open = self.handles();
        if let Some((f, h)) = open.get(&id) {
            return Ok((f, path, h));
        }
        let f = crate::fsutil::open_vault_file(self.fs.as_ref(), &path)?;
        let mut head = [0u8; SEG_HEADER_LEN];
        // A damaged header damages no record: each is still verified, bound as this build
        // binds them or not at all (see `bindings`).
        let h = crate::fsutil::read_exact_at(f.as_ref(), &mut head, 0, &path)
            .ok()
            .and_then(|()| SegmentHeader::decode(&head).ok());
        f.advise_random();
        open.insert(id, (f.clone(), h), 1);
        Ok((f, path, h))
    }

    fn handles(
        &self,
    ) -> std::sync::MutexGuard<'_, Lru<SegmentId, (FileRef, Option<SegmentHeader>)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps at most `n` handles open (at least one).
    pub(crate) fn set_limit(&self, n: usize) {
        self.handles().set_budget(n.max(1) as u64);
    }

    /// Handles open now.
    pub(crate) fn open_handles(&self) -> usize {
        self.handles().len()
    }

    /// What the crc of the record at `offset` of segment `id` may be bound to: as its
    /// header says, or, when the header does not decode, as this build binds (this vault,
    /// this segment) or unbound (an older segment).
    fn bindings(
        &self,
        id: SegmentId,
        header: Option<SegmentHeader>,
        offset: u64,
    ) -> [Option<Binding>; 2] {
        match header {
            Some(h) => [h.binding(offset), h.binding(offset)],
            None => [
                Some(Binding {
                    vault_id: self.vault_id,
                    segment_first_seq: id.0,
                    offset,
                }),
                None,
            ],
        }
    }

    /// Reads the write record at `offset` of `segment` into `out`, checking that it is a
    /// valid write record covering `block`.
    pub(crate) fn read_record(
        &self,
        segment: SegmentId,
        offset: u64,
        block: u64,
        out: &mut DecodedRecord,
    ) -> Result<()> {
        let (file, path, seg) = self.file(segment)?;
        // One read usually gets header and payload: guess the payload's size (small
        // records are the common case for random I/O), read the rest only if it is larger.
        let guess = HEADER_LEN + SPECULATIVE_PAYLOAD.max(self.block_size as usize);
        out.segment = None;
        out.raw.resize(guess, 0);
        let got = file
            .read_padded(&mut out.raw, offset)
            .map_err(|e| crate::VaultError::Io {
                op: "read",
                path: path.clone(),
                source: e,
            })?;
        if got < HEADER_LEN {
            return Err(corrupted(
                &path,
                offset,
                Corruption::Length {
                    expected: offset + HEADER_LEN as u64,
                    actual: offset + got as u64,
                },
            ));
        }
        let h = RecordHeader::decode(&out.raw[..HEADER_LEN], self.block_size)
            .map_err(|e| decode_err(&path, offset, e))?;
        if !h.kind.carries_data()
            || block < h.first_block
            || block >= h.first_block + u64::from(h.block_count)
        {
            return Err(corrupted(
                &path,
                offset,
                Corruption::Inconsistent(
                    "a delta map points at a record that does not hold the block",
                ),
            ));
        }
        let total = HEADER_LEN + h.payload_len as usize;
        if total > got {
            out.raw.resize(total, 0);
            // A payload that runs past the end of the file is the record's fault (its length
            // field, or a cut file): name the record, not the end of the file.
            crate::fsutil::read_exact_at(
                file.as_ref(),
                &mut out.raw[got..],
                offset + got as u64,
                &path,
            )
            .map_err(|e| match e {
                crate::VaultError::Corrupted { path, reason, .. } => crate::VaultError::Corrupted {
                    path,
                    offset,
                    reason,
                },
                other => other,
            })?;
        }
        out.raw.truncate(total);
        let (hdr, payload) = out.raw.split_at(HEADER_LEN);
        let [first, second] = self.bindings(segment, seg, offset);
        h.verify(hdr, payload, first.as_ref())
            .or_else(|e| {
                if first == second {
                    Err(e)
                } else {
                    h.verify(hdr, payload, second.as_ref())
                }
            })
            .map_err(|e| decode_err(&path, offset, e))?;
        // Keep only the payload in `raw`.
        out.raw.drain(..HEADER_LEN);
        match h.stored_as() {
            StoredAs::Raw => std::mem::swap(&mut out.data, &mut out.raw),
            stored => decompress(stored, &out.raw, h.raw_len as usize, &mut out.data)
                .map_err(|e| decode_err(&path, offset + HEADER_LEN as u64, e))?,
        }
        out.segment = Some(segment);
        out.offset = offset;
        out.first_block = h.first_block;
        out.block_count = h.block_count;
        Ok(())
    }
}

impl SegmentFiles {
    /// Reads whole blocks' own bytes: `out` (a multiple of the block size) from `offset`
    /// of `segment`, and checks each block against its crc in `crcs`.
    pub(crate) fn read_blocks(
        &self,
        segment: SegmentId,
        offset: u64,
        crcs: &[u32],
        out: &mut [u8],
    ) -> Result<()> {
        let (file, path, _) = self.file(segment)?;
        crate::fsutil::read_exact_at(file.as_ref(), out, offset, &path)?;
        let bs = self.block_size as usize;
        for (i, (block, &stored)) in out.chunks_exact(bs).zip(crcs).enumerate() {
            let computed = crc32c::crc32c(block);
            if computed != stored {
                let at = offset + (i * bs) as u64;
                return Err(corrupted(
                    &path,
                    at,
                    Corruption::Decode(rewind_format::DecodeError::Checksum {
                        offset: at,
                        what: "block of a write record",
                        stored,
                        computed,
                    }),
                ));
            }
        }
        Ok(())
    }
}
