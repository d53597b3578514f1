//! Host writes as units: one host write (NBD WRITE, WRITE_ZEROES, TRIM, a sync's fix-up
//! copy) may become several records (at most 128 KiB of data each; a write-zeroes with
//! unaligned edges is a write, a zero and a write), but it is one unit for points. Every
//! record of a unit but the last carries the "continues" flag, all carry the same
//! timestamp, and a seal (hence a delta map's bounds, a marker) only falls between units.
//! Points resolve to unit boundaries (see `points.rs`); recovery cuts a tail that ends
//! inside a unit (see `write_log/scan.rs`).

use super::*;
use rewind_format::record::MAX_WRITE_PAYLOAD;

/// One part of a host write, for [`Vault::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOp<'a> {
    /// New data for whole blocks from `first_block`.
    Write { first_block: u64, data: &'a [u8] },
    /// The blocks read as zeroes from here on (NBD WRITE_ZEROES).
    Zero { first_block: u64, count: u64 },
    /// The blocks were discarded and read as zeroes (NBD TRIM).
    Trim { first_block: u64, count: u64 },
}

/// The header fields of one record to append.
#[derive(Debug, Clone, Copy)]
pub(super) struct RecordSpec {
    pub kind: RecordKind,
    pub first_block: u64,
    pub block_count: u32,
    pub ts: i64,
    pub continues: bool,
    pub app_consistent: bool,
}

impl HostOp<'_> {
    fn first_block(&self) -> u64 {
        match *self {
            HostOp::Write { first_block, .. }
            | HostOp::Zero { first_block, .. }
            | HostOp::Trim { first_block, .. } => first_block,
        }
    }
}

impl Vault {
    /// The timestamp of the next unit: now, never before the last one.
    pub(super) fn unit_time(&self, inner: &mut Inner) -> i64 {
        let ts = now_ns().max(inner.last_ts);
        inner.last_ts = ts;
        ts
    }

    /// Bytes of data per write record.
    fn per_record(&self) -> usize {
        let bs = self.shared.block_size as usize;
        (MAX_WRITE_PAYLOAD / bs).max(1) * bs
    }

    /// Checks every part and counts the records the unit will take.
    fn unit_records(&self, ops: &[HostOp<'_>]) -> Result<u64> {
        if ops.is_empty() {
            return Err(VaultError::EmptyWrite);
        }
        let bs = self.shared.block_size as usize;
        let mut n = 0u64;
        for op in ops {
            let count = match *op {
                HostOp::Write { data, .. } => {
                    if data.is_empty() || !data.len().is_multiple_of(bs) {
                        return Err(VaultError::Unaligned {
                            len: data.len(),
                            block_size: self.shared.block_size,
                        });
                    }
                    n += data.len().div_ceil(self.per_record()) as u64;
                    (data.len() / bs) as u64
                }
                HostOp::Zero { count, .. } | HostOp::Trim { count, .. } => {
                    n += count.div_ceil(u64::from(u32::MAX));
                    count
                }
            };
            self.check_range(op.first_block(), count)?;
        }
        Ok(n)
    }

    /// Appends `ops` as one unit, data records of kind `data_kind` (a write or a fix-up).
    /// The caller seals afterwards if the policy wants it ([`Vault::seal_if_due`]).
    /// Returns the seqs of the unit's first and last record.
    pub(super) fn append_unit(
        &self,
        inner: &mut Inner,
        ops: &[HostOp<'_>],
        data_kind: RecordKind,
    ) -> Result<(Seq, Seq)> {
        let total = self.unit_records(ops)?;
        self.refuse_if_full()?;
        let ts = self.unit_time(inner);
        let first = inner.open.last_seq().next();
        let mut left = total;
        let mut last = first;
        let mut next = |first_block: u64, block_count: u32, kind: RecordKind| {
            left -= 1;
            RecordSpec {
                kind,
                first_block,
                block_count,
                ts,
                continues: left > 0,
                app_consistent: false,
            }
        };
        let bs = u64::from(self.shared.block_size);
        for op in ops {
            match *op {
                HostOp::Write { first_block, data } => {
                    let per_record = self.per_record();
                    for (i, chunk) in data.chunks(per_record).enumerate() {
                        let fb = first_block + (i * per_record) as u64 / bs;
                        let spec = next(fb, (chunk.len() as u64 / bs) as u32, data_kind);
                        last = self.append_data(inner, &spec, chunk)?;
                    }
                }
                HostOp::Zero { first_block, count } | HostOp::Trim { first_block, count } => {
                    let kind = match op {
                        HostOp::Trim { .. } => RecordKind::Trim,
                        _ => RecordKind::Zero,
                    };
                    let mut b = first_block;
                    while b < first_block + count {
                        let n = (first_block + count - b).min(u64::from(u32::MAX)) as u32;
                        let spec = next(b, n, kind);
                        last = self.append_locked(inner, &spec, &[], 0, StoredAs::Raw, None)?;
                        b += u64::from(n);
                    }
                }
            }
        }
        Ok((first, last))
    }

    /// Appends one data record, compressed if the vault compresses and it pays.
    fn append_data(&self, inner: &mut Inner, spec: &RecordSpec, chunk: &[u8]) -> Result<Seq> {
        let compression = inner.manifest.compression;
        let mut scratch = std::mem::take(&mut inner.scratch);
        let stored_as = if compression.compress(chunk, &mut scratch) {
            match compression {
                Compression::Lz4 => StoredAs::Lz4,
                _ => StoredAs::Zstd,
            }
        } else {
            StoredAs::Raw
        };
        let stored = if stored_as == StoredAs::Raw {
            chunk
        } else {
            &scratch[..]
        };
        let r = self.append_locked(inner, spec, stored, chunk.len() as u32, stored_as, None);
        inner.scratch = scratch;
        r
    }
}
