//! Records read back by their place in the write log, without a point view: what lets the
//! live volume write the primary behind the log (see `rewind_engine::behind`). A host
//! write whose primary write is deferred is read, and later copied into the primary, from
//! the records it was appended as.

use super::*;
use crate::write_log::reader::DecodedRecord;

/// Where one data record of a host write lies in the write log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPlace {
    pub seq: Seq,
    pub segment: SegmentId,
    /// Byte offset of the record in its segment.
    pub offset: u64,
    /// Bytes of the record in the segment (header and stored payload).
    pub len: u32,
    pub first_block: u64,
    pub block_count: u32,
}

impl RecordPlace {
    /// One past the record's last block.
    pub fn end_block(&self) -> u64 {
        self.first_block + u64::from(self.block_count)
    }
}

impl Vault {
    /// [`Vault::write`], and where its records lie (in block order: one host write is one
    /// or more records of consecutive blocks).
    pub fn write_placed(&self, first_block: u64, data: &[u8]) -> Result<(Seq, Vec<RecordPlace>)> {
        let mut inner = self.lock_writable()?;
        let (first, last) = self.append_unit(
            &mut inner,
            &[HostOp::Write { first_block, data }],
            RecordKind::Write,
        )?;
        let segment = inner.open.id;
        let records = &inner.open.records;
        let from = records.partition_point(|r| r.seq < first);
        let places = (from..records.len())
            .filter_map(|i| records.get(i))
            .take_while(|r| r.seq <= last)
            .map(|r| RecordPlace {
                seq: r.seq,
                segment,
                offset: r.offset,
                len: r.len,
                first_block: r.first_block,
                block_count: r.block_count,
            })
            .collect();
        self.seal_if_due(inner);
        Ok((last, places))
    }

    /// Reads blocks `first_block..` (`out`, whole blocks, all inside the record) of the
    /// record at `place`, checked against its crcs. A record still in the append buffer is
    /// handed to the log writer and waited for first (no fsync).
    pub fn read_placed(&self, place: &RecordPlace, first_block: u64, out: &mut [u8]) -> Result<()> {
        let bs = u64::from(self.shared.block_size);
        let count = out.len() as u64 / bs;
        if !(out.len() as u64).is_multiple_of(bs)
            || first_block < place.first_block
            || first_block + count > place.end_block()
        {
            return Err(VaultError::OutOfRange {
                first_block,
                end: first_block + count,
                blocks: place.end_block(),
            });
        }
        let wait = {
            let mut inner = self.lock();
            let end = place.offset + u64::from(place.len);
            if inner.open.id == place.segment && end > inner.open.written {
                inner.open.write_out()?;
                inner.open.pending_write()
            } else if inner.open.id == place.segment && end > inner.durable_bytes {
                inner.open.pending_write()
            } else {
                None
            }
        };
        if let Some((writer, ticket)) = wait {
            writer.wait(ticket)?;
        }
        let mut rec = DecodedRecord::default();
        self.shared
            .segments
            .read_record(place.segment, place.offset, first_block, &mut rec)?;
        let at = ((first_block - rec.first_block) * bs) as usize;
        let src = rec.data.get(at..at + out.len()).ok_or_else(|| {
            corrupted(
                &self
                    .dir
                    .join(names::LOG_DIR)
                    .join(names::segment(place.segment)),
                place.offset,
                Corruption::Inconsistent("a record is shorter than its block count says"),
            )
        })?;
        out.copy_from_slice(src);
        Ok(())
    }
}
