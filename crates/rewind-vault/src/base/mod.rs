//! The base image: a sparse copy of the primary taken when protection starts (seq 0), with
//! a crc32c per block in `base.sums` so that reads falling through to it are verified.
//! The sums are read a chunk at a time, when a read needs them ([`sums`]).

mod rederive;
pub(crate) mod sums;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rewind_format::base_sums::SumsLayout;
use rewind_storage::{Open, Storage, StorageFile};

pub use rederive::SumsRepair;
use sums::{Sums, SumsWriter};

use crate::error::{corrupted, Corruption, IoContext, Result};
use crate::fsutil::{self, is_zero, FileRef};
use crate::Progress;

/// Bytes copied per read while taking the base image.
const COPY_CHUNK: usize = 4 << 20;

#[derive(Debug)]
pub(crate) struct BaseImage {
    file: FileRef,
    path: PathBuf,
    block_size: u32,
    /// `base.sums`, loaded a chunk at a time.
    sums: Sums,
    /// The crc32c of an all-zero block.
    zero_sum: u32,
    /// Blocks read from the file since it was opened (reads are what holes save).
    blocks_read: AtomicU64,
}

impl BaseImage {
    /// Copies `primary` (`size` bytes) to `dir/base.img`, keeping holes as holes and not
    /// writing all-zero blocks, and writes `dir/base.sums`.
    pub(crate) fn create(
        fs: &dyn Storage,
        primary: &dyn StorageFile,
        primary_path: &Path,
        size: u64,
        block_size: u32,
        dir: &Path,
        progress: &dyn Progress,
    ) -> Result<()> {
        let bs = block_size as usize;
        let blocks = size / u64::from(block_size);
        let sums_path = dir.join(rewind_format::names::BASE_SUMS);
        let mut sums = SumsWriter::create(fs, &sums_path, SumsLayout::new(block_size, blocks))?;
        let img_path = dir.join(rewind_format::names::BASE_IMAGE);
        let img = fs
            .open(&img_path, Open::create_new())
            .io("create", &img_path)?;
        img.set_len(size).io("size", &img_path)?;
        progress.start("copying primary into the base image", size);
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut pos = 0u64;
        while let Some((start, end)) = primary
            .next_data(pos, size)
            .io("find the data of", primary_path)?
        {
            // Align the data region to whole blocks.
            let start = start - start % u64::from(block_size);
            progress.advance(start.saturating_sub(pos));
            let mut at = start;
            while at < end {
                let n = ((end - at) as usize).min(COPY_CHUNK);
                let n = n.div_ceil(bs) * bs;
                let n = n.min((size - at) as usize);
                let chunk = &mut buf[..n];
                primary.read_padded(chunk, at).io("read", primary_path)?;
                for (i, block) in chunk.chunks(bs).enumerate() {
                    if !is_zero(block) {
                        let b = at / u64::from(block_size) + i as u64;
                        sums.set(b, crc32c::crc32c(block))?;
                        img.write_all_at(block, b * u64::from(block_size))
                            .io("write", &img_path)?;
                    }
                }
                at += n as u64;
                progress.advance(n as u64);
            }
            pos = at;
        }
        progress.advance(size.saturating_sub(pos));
        progress.finish();
        img.sync_all().io("fsync", &img_path)?;
        sums.finish()
    }

    /// Opens the base image of a volume of `blocks` blocks; reads the header of
    /// `base.sums`, not its sums. A damaged `base.sums` does not stop it: the second value
    /// says what is wrong (and whether its sums could still be read). Reads then accept a
    /// block only when its bytes and its sum agree, and name `base.sums` when they do not:
    /// either may be the damaged one. So do reads of a chunk found damaged later.
    pub(crate) fn open(
        fs: &dyn Storage,
        dir: &Path,
        block_size: u32,
        blocks: u64,
    ) -> Result<(BaseImage, Option<(crate::VaultError, bool)>)> {
        let path = dir.join(rewind_format::names::BASE_IMAGE);
        let sums_path = dir.join(rewind_format::names::BASE_SUMS);
        let file = fsutil::open_vault_file(fs, &path)?;
        let (sums, damage) = Sums::open(fs, &sums_path, block_size, blocks)?;
        Ok((
            BaseImage {
                file,
                path,
                block_size,
                sums,
                zero_sum: crc32c::crc32c(&vec![0u8; block_size as usize]),
                blocks_read: AtomicU64::new(0),
            },
            damage,
        ))
    }

    /// The sums, for what reports damage found after the open.
    pub(crate) fn sums(&self) -> &Sums {
        &self.sums
    }

    /// Splits blocks first..first+count into runs that read as zeroes, verified, without
    /// reading (`true`: the file has a hole there and base.sums has the zero block's
    /// checksum for each) and runs that must be read (`false`), in block order. Costs a
    /// seek per data region of the file and a look at each block's checksum in holes.
    pub(crate) fn extents(&self, first: u64, count: u64, mut run: impl FnMut(u64, u64, bool)) {
        let bs = u64::from(self.block_size);
        let end = first + count;
        let mut at = first;
        while at < end {
            // A file that cannot say where its data is: all data (always safe).
            let next = self
                .file
                .next_data(at * bs, end * bs)
                .unwrap_or(Some((at * bs, end * bs)));
            let Some((data_start, data_end)) = next else {
                self.hole_extents(at, end, &mut run);
                return;
            };
            let (data_first, data_last) = ((data_start / bs).max(at), data_end.div_ceil(bs));
            let data_last = data_last.clamp(data_first + 1, end);
            self.hole_extents(at, data_first, &mut run);
            run(data_first, data_last - data_first, false);
            at = data_last;
        }
    }

    /// The runs of a hole of the file, first..end: zero where base.sums agrees. A chunk
    /// that is a hole of base.sums is one run; a chunk that cannot be loaded is a run to
    /// read (the read then says what is wrong).
    fn hole_extents(&self, first: u64, end: u64, run: &mut impl FnMut(u64, u64, bool)) {
        let mut at = first;
        while at < end {
            let chunk = match self.sums.chunk(at) {
                Ok(c) if c.end() > at => c,
                _ => {
                    run(at, end - at, false);
                    return;
                }
            };
            let stop = chunk.end().min(end);
            if chunk.is_hole() {
                run(at, stop - at, true);
                at = stop;
                continue;
            }
            while at < stop {
                let zero = chunk.sum(at) == Some(self.zero_sum);
                let n = (at + 1..stop)
                    .position(|b| (chunk.sum(b) == Some(self.zero_sum)) != zero)
                    .map_or(stop - at, |i| i as u64 + 1);
                run(at, n, zero);
                at += n;
            }
        }
    }

    /// Blocks read from the base image since the vault was opened.
    pub(crate) fn blocks_read(&self) -> u64 {
        self.blocks_read.load(Ordering::Relaxed)
    }

    /// Reads `out.len() / block_size` blocks starting at `first`, verifying each.
    pub(crate) fn read(&self, first: u64, out: &mut [u8]) -> Result<()> {
        let bs = u64::from(self.block_size);
        self.blocks_read
            .fetch_add(out.len() as u64 / bs, Ordering::Relaxed);
        self.file
            .read_padded(out, first * bs)
            .io("read", &self.path)?;
        let mut chunk: Option<std::sync::Arc<sums::Loaded>> = None;
        for (i, block) in out.chunks(self.block_size as usize).enumerate() {
            let b = first + i as u64;
            let c = match chunk.take() {
                Some(c) if b < c.end() => c,
                _ => self.sums.chunk(b)?,
            };
            if c.sum(b) != Some(crc32c::crc32c(block)) {
                if c.damaged {
                    return Err(corrupted(
                        self.sums.path(),
                        self.sums.sum_offset(b),
                        Corruption::BaseSumDamaged { block: b },
                    ));
                }
                return Err(corrupted(
                    &self.path,
                    b * bs,
                    Corruption::BaseChecksum { block: b },
                ));
            }
            chunk = Some(c);
        }
        Ok(())
    }
}
