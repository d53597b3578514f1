//! Deriving a damaged `base.sums` again (`rewind repair --rederive-base-sums`).

use std::path::{Path, PathBuf};

use rewind_format::base_sums::SumsLayout;
use rewind_storage::{Open, Storage, StorageFile};

use super::sums::SumsWriter;
use super::{BaseImage, COPY_CHUNK};
use crate::error::{IoContext, Result};
use crate::Progress;

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
            path: self.sums.path().to_path_buf(),
            ..SumsRepair::default()
        };
        // Written beside the old file as it goes (the old sums are still read from it).
        let mut sums = if dry_run {
            None
        } else {
            Some(SumsWriter::create(
                fs,
                self.sums.path(),
                SumsLayout::new(self.block_size, blocks),
            )?)
        };
        let old = |b: u64| self.sums.chunk(b).ok().and_then(|c| c.sum(b));
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
                    if let Some(s) = &mut sums {
                        s.set(b, crc32c::crc32c(prim))?;
                    }
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
                    if let Some(s) = &mut sums {
                        s.set(b, sum)?;
                    }
                    if old(b) == Some(sum) {
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
        }
        if let Some(s) = sums {
            s.finish()?;
        }
        Ok(out)
    }
}
