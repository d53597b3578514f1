//! The base image: a sparse copy of the primary taken when protection starts (seq 0), with
//! a crc32c per block in `base.sums` so that reads falling through to it are verified.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rewind_format::base_sums::BaseSums;
use rewind_storage::{Open, Storage, StorageFile};

use crate::error::{corrupted, decode_err, Corruption, IoContext, Result};
use crate::fsutil::{self, is_zero, FileRef};
use crate::Progress;

/// Bytes copied per read while taking the base image.
const COPY_CHUNK: usize = 4 << 20;

#[derive(Debug)]
pub(crate) struct BaseImage {
    file: FileRef,
    path: PathBuf,
    sums_path: PathBuf,
    block_size: u32,
    sums: Vec<u32>,
    /// `base.sums` failed its own checksum: a mismatch may be the sum's fault.
    sums_damaged: bool,
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
        let zero_sum = crc32c::crc32c(&vec![0u8; bs]);
        let mut sums = vec![zero_sum; blocks as usize];
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
                        sums[b as usize] = crc32c::crc32c(block);
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
        let sums = BaseSums { block_size, sums };
        fsutil::write_atomic(
            fs,
            &dir.join(rewind_format::names::BASE_SUMS),
            &sums.encode(),
        )?;
        Ok(())
    }

    /// Opens the base image of a volume of `blocks` blocks. A damaged `base.sums` does not
    /// stop it: the second value says what is wrong (and whether its sums could still be
    /// read). Reads then accept a block only when its bytes and its sum agree, and name
    /// `base.sums` when they do not: either may be the damaged one.
    pub(crate) fn open(
        fs: &dyn Storage,
        dir: &Path,
        block_size: u32,
        blocks: u64,
    ) -> Result<(BaseImage, Option<(crate::VaultError, bool)>)> {
        let path = dir.join(rewind_format::names::BASE_IMAGE);
        let sums_path = dir.join(rewind_format::names::BASE_SUMS);
        let file = fsutil::open_vault_file(fs, &path)?;
        let (sums, damage) = match Self::read_sums(fs, &sums_path, block_size, blocks) {
            Ok(sums) => (sums, None),
            Err(e @ crate::VaultError::Corrupted { .. }) => {
                let layout = fsutil::read_file(fs, &sums_path)
                    .ok()
                    .and_then(|raw| BaseSums::decode_unchecked(&raw).ok())
                    .filter(|s| s.block_size == block_size && s.sums.len() as u64 == blocks);
                let usable = layout.is_some();
                (
                    layout.map(|s| s.sums).unwrap_or_default(),
                    Some((e, usable)),
                )
            }
            Err(e) => return Err(e),
        };
        Ok((
            BaseImage {
                file,
                path,
                sums_path,
                block_size,
                sums,
                sums_damaged: damage.is_some(),
                zero_sum: crc32c::crc32c(&vec![0u8; block_size as usize]),
                blocks_read: AtomicU64::new(0),
            },
            damage,
        ))
    }

    fn read_sums(
        fs: &dyn Storage,
        sums_path: &Path,
        block_size: u32,
        blocks: u64,
    ) -> Result<Vec<u32>> {
        let raw = fsutil::read_file(fs, sums_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => corrupted(sums_path, 0, Corruption::Missing),
            _ => crate::VaultError::Io {
                op: "read",
                path: sums_path.to_path_buf(),
                source: e,
            },
        })?;
        let sums = BaseSums::decode(&raw).map_err(|e| decode_err(sums_path, 0, e))?;
        if sums.block_size != block_size || sums.sums.len() as u64 != blocks {
            return Err(corrupted(
                sums_path,
                0,
                Corruption::Inconsistent("checksums do not describe this volume"),
            ));
        }
        Ok(sums.sums)
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

    /// The runs of a hole of the file, first..end: zero where base.sums agrees.
    fn hole_extents(&self, first: u64, end: u64, run: &mut impl FnMut(u64, u64, bool)) {
        let mut at = first;
        while at < end {
            let zero = self.sum_is_zero(at);
            let n = (at + 1..end)
                .position(|b| self.sum_is_zero(b) != zero)
                .map_or(end - at, |i| i as u64 + 1);
            run(at, n, zero);
            at += n;
        }
    }

    fn sum_is_zero(&self, block: u64) -> bool {
        usize::try_from(block)
            .ok()
            .and_then(|b| self.sums.get(b))
            .is_some_and(|&s| s == self.zero_sum)
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
        for (i, block) in out.chunks(self.block_size as usize).enumerate() {
            let b = first + i as u64;
            let want = self.sums.get(b as usize).copied();
            if want != Some(crc32c::crc32c(block)) {
                if self.sums_damaged {
                    return Err(corrupted(
                        &self.sums_path,
                        BaseSums::offset_of(b),
                        Corruption::BaseSumDamaged { block: b },
                    ));
                }
                return Err(corrupted(
                    &self.path,
                    b * bs,
                    Corruption::BaseChecksum { block: b },
                ));
            }
        }
        Ok(())
    }
}

/// What re-deriving `base.sums` found (see [`BaseImage::rederive_sums`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SumsRepair {
    pub path: PathBuf,
    /// What was wrong with the file.
    pub damage: String,
    /// Blocks unchanged since the base image: their sum is the primary's block's.
    pub from_primary: u64,
    /// Of those, runs (first, count) where the base image file differed from the primary:
    /// rewritten from the primary (it holds the base image's data there).
    pub base_rewritten: Vec<(u64, u64)>,
    /// Blocks changed since: the old sum agreed with the base image block and is kept.
    pub agreed: u64,
    /// Runs of blocks changed since whose old sum was lost or disagrees: the sum is taken
    /// from the base image block on trust (nothing else holds that data to check against).
    pub trusted: Vec<(u64, u64)>,
}

fn push_block(runs: &mut Vec<(u64, u64)>, b: u64) {
    match runs.last_mut() {
        Some((f, n)) if *f + *n == b => *n += 1,
        _ => runs.push((b, 1)),
    }
}

impl BaseImage {
    /// Derives the sums of a damaged `base.sums` again. `unchanged(first, count)` says, per
    /// block of the run, whether it is unchanged since the base image (the live point reads
    /// it from the base): those blocks hold the base image's data in `primary` (whole and in
    /// step with the vault: the caller checks), so their sum is the primary's, and a base
    /// image block that differs from it is rewritten from it. Blocks changed since keep their
    /// old sum where it still agrees, and are summed from the base image file otherwise
    /// (listed: taken on trust). Writes `base.sums` atomically unless `dry_run`; the sums
    /// this value holds are not updated (reopen the vault).
    pub(crate) fn rederive_sums(
        &self,
        fs: &dyn Storage,
        (primary, primary_path): (&dyn StorageFile, &Path),
        blocks: u64,
        unchanged: &mut dyn FnMut(u64, u64) -> Result<Vec<bool>>,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<SumsRepair> {
        let bs = self.block_size as usize;
        let mut out = SumsRepair {
            path: self.sums_path.clone(),
            ..SumsRepair::default()
        };
        let old = &self.sums;
        let mut sums = vec![0u32; blocks as usize];
        let writer = if dry_run {
            None
        } else {
            Some(fs.open(&self.path, Open::write()).io("open", &self.path)?)
        };
        let chunk_blocks = (COPY_CHUNK / bs) as u64;
        let (mut base_buf, mut prim_buf) = (vec![0u8; COPY_CHUNK], vec![0u8; COPY_CHUNK]);
        progress.start("deriving base checksums again", blocks * bs as u64);
        let mut first = 0u64;
        while first < blocks {
            let count = chunk_blocks.min(blocks - first);
            let n = count as usize * bs;
            let at = first * bs as u64;
            self.file
                .read_padded(&mut base_buf[..n], at)
                .io("read", &self.path)?;
            primary
                .read_padded(&mut prim_buf[..n], at)
                .io("read", primary_path)?;
            let same = unchanged(first, count)?;
            for i in 0..count as usize {
                let b = first + i as u64;
                let base = &base_buf[i * bs..(i + 1) * bs];
                let prim = &prim_buf[i * bs..(i + 1) * bs];
                if same.get(i).copied().unwrap_or(false) {
                    sums[b as usize] = crc32c::crc32c(prim);
                    out.from_primary += 1;
                    if base != prim {
                        push_block(&mut out.base_rewritten, b);
                        if let Some(w) = &writer {
                            w.write_all_at(prim, b * bs as u64)
                                .io("write", &self.path)?;
                        }
                    }
                } else {
                    let sum = crc32c::crc32c(base);
                    sums[b as usize] = sum;
                    if old.get(b as usize) == Some(&sum) {
                        out.agreed += 1;
                    } else {
                        push_block(&mut out.trusted, b);
                    }
                }
            }
            progress.advance(n as u64);
            first += count;
        }
        progress.finish();
        if let Some(w) = writer {
            w.sync_all().io("fsync", &self.path)?;
            let encoded = BaseSums {
                block_size: self.block_size,
                sums,
            }
            .encode();
            fsutil::write_atomic(fs, &self.sums_path, &encoded)?;
        }
        Ok(out)
    }
}
