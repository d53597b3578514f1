//! `base.sums` as the vault reads and writes it: chunks loaded on demand into a small
//! bounded cache, each checked against its own crc the first time it is loaded (see
//! [`rewind_format::base_sums`]). Opening reads the header only, so it costs the same for
//! a 1 GiB volume as for a 1 TiB one; a chunk that fails its crc is found when a read
//! first needs it (or by [`Sums::scan`], `rewind check`, `rewind repair`), and its sums
//! are then used as they are: a block is accepted only when its bytes and its sum agree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rewind_format::base_sums::{BaseSums, Chunk, Header, SumsLayout, HEADER_LEN};
use rewind_format::DecodeError;
use rewind_storage::{Open, Storage};

use crate::cache::Lru;
use crate::error::{corrupted, decode_err, Corruption, IoContext, Result, VaultError};
use crate::fsutil::{self, FileRef};

/// Sums the cache keeps decoded (4 bytes each: 4 MiB, 64 chunks of the default size).
const CACHE_SUMS: u64 = 1 << 20;

/// The sums of one chunk (or of the whole volume, for a version 1 file).
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The chunk's first block.
    pub(crate) first: u64,
    /// Its blocks.
    pub(crate) count: u64,
    /// `None`: a hole, every block has the zero block's sum.
    sums: Option<Vec<u32>>,
    /// Failed its crc (or the file is damaged): a mismatch may be the sum's fault.
    pub(crate) damaged: bool,
    zero_sum: u32,
}

impl Loaded {
    /// Block `block`'s sum, if the chunk has it.
    pub(crate) fn sum(&self, block: u64) -> Option<u32> {
        let i = usize::try_from(block.checked_sub(self.first)?).ok()?;
        match &self.sums {
            None => (block < self.first + self.count).then_some(self.zero_sum),
            Some(s) => s.get(i).copied(),
        }
    }

    /// Whether every block of the chunk has the zero block's sum, known without looking.
    pub(crate) fn is_hole(&self) -> bool {
        self.sums.is_none()
    }

    pub(crate) fn end(&self) -> u64 {
        self.first + self.count
    }
}

#[derive(Debug)]
enum Kind {
    /// Version 2: chunks loaded on demand.
    Chunked { file: FileRef, layout: SumsLayout },
    /// Version 1 read whole at open, or no sum at all (unusable: an empty, damaged chunk).
    Whole(Arc<Loaded>),
}

#[derive(Debug)]
pub(crate) struct Sums {
    path: PathBuf,
    kind: Kind,
    cache: Mutex<Lru<u64, Arc<Loaded>>>,
    /// Chunks found damaged since the open: chunk -> what is wrong.
    damaged: Mutex<BTreeMap<u64, String>>,
    /// The file as a whole is damaged (found at open).
    whole_damaged: bool,
}

impl Sums {
    /// Opens `path` for a volume of `blocks` blocks: the header only (and, for a version 1
    /// file, its sums). A damaged header does not stop it: the second value says what is
    /// wrong and whether sums can still be read.
    pub(crate) fn open(
        fs: &dyn Storage,
        path: &Path,
        block_size: u32,
        blocks: u64,
    ) -> Result<(Sums, Option<(VaultError, bool)>)> {
        let zero_sum = crc32c::crc32c(&vec![0u8; block_size as usize]);
        let whole = |sums: Option<Vec<u32>>, damaged: bool| {
            Kind::Whole(Arc::new(Loaded {
                first: 0,
                count: blocks,
                sums: Some(sums.unwrap_or_default()),
                damaged,
                zero_sum,
            }))
        };
        let (kind, damage) = match Self::open_kind(fs, path, block_size, blocks) {
            Ok(Opened::Chunked(file, layout)) => (Kind::Chunked { file, layout }, None),
            Ok(Opened::V1(sums)) => (whole(Some(sums), false), None),
            Err((e, sums)) => {
                if !matches!(e, VaultError::Corrupted { .. }) {
                    return Err(e);
                }
                let usable = sums.is_some();
                (whole(sums, true), Some((e, usable)))
            }
        };
        Ok((
            Sums {
                path: path.to_path_buf(),
                kind,
                cache: Mutex::new(Lru::new(CACHE_SUMS)),
                damaged: Mutex::new(BTreeMap::new()),
                whole_damaged: damage.is_some(),
            },
            damage,
        ))
    }

    fn open_kind(
        fs: &dyn Storage,
        path: &Path,
        block_size: u32,
        blocks: u64,
    ) -> std::result::Result<Opened, (VaultError, Option<Vec<u32>>)> {
        let file = fsutil::open_vault_file(fs, path).map_err(|e| (e, None))?;
        let mut head = [0u8; HEADER_LEN];
        let n = file
            .read_padded(&mut head, 0)
            .io("read", path)
            .map_err(|e| (e, None))?;
        let header = Header::decode(&head[..n]).map_err(|e| (decode_err(path, 0, e), None))?;
        let inconsistent = || {
            corrupted(
                path,
                0,
                Corruption::Inconsistent("checksums do not describe this volume"),
            )
        };
        if header.block_size() != block_size || header.block_count() != blocks {
            return Err((inconsistent(), None));
        }
        match header {
            Header::V1 { .. } => {
                let raw = file.read_all().io("read", path).map_err(|e| (e, None))?;
                match BaseSums::decode(&raw) {
                    Ok(s) if s.sums.len() as u64 == blocks => Ok(Opened::V1(s.sums)),
                    Ok(_) => Err((inconsistent(), None)),
                    Err(e) => {
                        let layout = BaseSums::decode_unchecked(&raw)
                            .ok()
                            .filter(|s| s.sums.len() as u64 == blocks)
                            .map(|s| s.sums);
                        Err((decode_err(path, 0, e), layout))
                    }
                }
            }
            Header::V2(layout) => {
                let len = file.len().io("stat", path).map_err(|e| (e, None))?;
                if len != layout.file_len() {
                    let c = Corruption::Length {
                        expected: layout.file_len(),
                        actual: len,
                    };
                    return Err((corrupted(path, len.min(layout.file_len()), c), None));
                }
                Ok(Opened::Chunked(file, layout))
            }
        }
    }

    /// Byte offset of block `block`'s sum in the file.
    pub(crate) fn sum_offset(&self, block: u64) -> u64 {
        match &self.kind {
            Kind::Chunked { layout, .. } => layout.sum_offset(block),
            Kind::Whole(_) => BaseSums::offset_of(block),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The sums of the chunk that holds block `block`, loaded (and checked) if not cached.
    pub(crate) fn chunk(&self, block: u64) -> Result<Arc<Loaded>> {
        let (file, layout) = match &self.kind {
            Kind::Whole(l) => return Ok(l.clone()),
            Kind::Chunked { file, layout } => (file, layout),
        };
        let i = layout.chunk_of(block);
        if let Some(l) = self.lock_cache().get(&i) {
            return Ok(l);
        }
        let loaded = Arc::new(self.load(file.as_ref(), layout, i)?);
        // A hole costs its entry (about as much as 32 sums).
        let weight = loaded.sums.as_ref().map_or(32, |s| s.len() as u64);
        self.lock_cache().insert(i, loaded.clone(), weight);
        Ok(loaded)
    }

    /// Reads and decodes chunk `i`; one that fails its crc is kept as damaged.
    fn load(
        &self,
        file: &dyn rewind_storage::StorageFile,
        layout: &SumsLayout,
        i: u64,
    ) -> Result<Loaded> {
        let at = layout.chunk_offset(i);
        let len = layout.chunk_len(i);
        let (first, count) = layout.chunk_blocks_of(i);
        let zero_sum = crc32c::crc32c(&vec![0u8; layout.block_size as usize]);
        // A hole of the file is a hole chunk: known with a seek, not 64 KiB of zeroes read.
        let end = at + len as u64;
        if let Ok(None) = file.next_data(at, end) {
            return Ok(Loaded {
                first,
                count,
                sums: None,
                damaged: false,
                zero_sum,
            });
        }
        let mut buf = vec![0u8; len];
        fsutil::read_exact_at(file, &mut buf, at, &self.path)?;
        let (sums, damaged) = match layout.decode_chunk(i, &buf) {
            Ok(Chunk::Hole) => (None, false),
            Ok(Chunk::Sums(s)) => (Some(s), false),
            Err(e @ DecodeError::Checksum { .. }) => {
                let err = decode_err(&self.path, 0, e);
                tracing::info!(error = %err, chunk = i, "a chunk of base.sums is damaged; its blocks are checked against their own sums");
                self.lock_damaged()
                    .entry(i)
                    .or_insert_with(|| err.to_string());
                (Some(layout.decode_chunk_unchecked(i, &buf)), true)
            }
            Err(e) => return Err(decode_err(&self.path, 0, e)),
        };
        Ok(Loaded {
            first,
            count,
            sums,
            damaged,
            zero_sum,
        })
    }

    /// Loads every chunk that is not a hole of the file (without keeping them), so that
    /// [`Sums::damage_found`] knows every damaged one. Reads 1/1024 of the volume's data
    /// at most (4 KiB blocks); an empty volume's file is all holes and costs nothing.
    pub(crate) fn scan(&self) -> Result<()> {
        let Kind::Chunked { file, layout } = &self.kind else {
            return Ok(());
        };
        let end = layout.file_len();
        let mut i = 0;
        while i < layout.chunks() {
            let at = layout.chunk_offset(i);
            // A file that cannot say where its data is: all data (always safe).
            let next = file.next_data(at, end).unwrap_or(Some((at, end)));
            let Some((data, _)) = next else {
                break;
            };
            // Chunks wholly before the data are holes of the file.
            let skip = layout.chunk_of_offset(data);
            if skip > i {
                i = skip;
                continue;
            }
            self.load(file.as_ref(), layout, i)?;
            i += 1;
        }
        Ok(())
    }

    /// The first chunk found damaged since the open, if any: its offset, what is wrong,
    /// and how many chunks were found so far.
    pub(crate) fn damage_found(&self) -> Option<(u64, String, usize)> {
        let Kind::Chunked { layout, .. } = &self.kind else {
            return None;
        };
        if self.whole_damaged {
            return None;
        }
        let d = self.lock_damaged();
        let (i, e) = d.iter().next()?;
        Some((layout.chunk_offset(*i), e.clone(), d.len()))
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Lru<u64, Arc<Loaded>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_damaged(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
        self.damaged.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Opened {
    Chunked(FileRef, SumsLayout),
    V1(Vec<u32>),
}

/// Writes a new `base.sums` (version 2) beside the old one and renames it into place:
/// sums are set in block order, and a chunk whose sums are all the zero block's is left a
/// hole of the (sparse) file.
pub(crate) struct SumsWriter<'a> {
    fs: &'a dyn Storage,
    path: PathBuf,
    tmp: PathBuf,
    file: Option<FileRef>,
    layout: SumsLayout,
    zero_sum: u32,
    /// The chunk being filled and its sums.
    current: Option<(u64, Vec<u32>)>,
    /// Renamed into place.
    done: bool,
}

impl<'a> SumsWriter<'a> {
    pub(crate) fn create(fs: &'a dyn Storage, path: &Path, layout: SumsLayout) -> Result<Self> {
        let tmp = path.with_file_name(format!(
            "{}{}",
            rewind_format::names::BASE_SUMS,
            rewind_format::names::TMP_SUFFIX
        ));
        let file = fs.open(&tmp, Open::create_truncate()).io("create", &tmp)?;
        let w = SumsWriter {
            fs,
            path: path.to_path_buf(),
            tmp,
            file: Some(file.clone()),
            layout,
            zero_sum: crc32c::crc32c(&vec![0u8; layout.block_size as usize]),
            current: None,
            done: false,
        };
        file.set_len(layout.file_len()).io("size", &w.tmp)?;
        file.write_all_at(&layout.encode_header(), 0)
            .io("write", &w.tmp)?;
        Ok(w)
    }

    /// Sets block `block`'s sum (blocks not set keep the zero block's). Blocks come in
    /// order: once a block of a later chunk is set, earlier chunks are written.
    pub(crate) fn set(&mut self, block: u64, sum: u32) -> Result<()> {
        let i = self.layout.chunk_of(block);
        if self.current.as_ref().is_none_or(|(c, _)| *c != i) {
            self.flush()?;
            let n = self.layout.chunk_blocks_of(i).1 as usize;
            self.current = Some((i, vec![self.zero_sum; n]));
        }
        if let Some((_, sums)) = &mut self.current {
            let first = self.layout.chunk_blocks_of(i).0;
            if let Some(s) = sums.get_mut((block - first) as usize) {
                *s = sum;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let Some((i, sums)) = self.current.take() else {
            return Ok(());
        };
        if sums.iter().all(|&s| s == self.zero_sum) {
            return Ok(());
        }
        if let Some(f) = &self.file {
            f.write_all_at(
                &self.layout.encode_chunk(i, &sums),
                self.layout.chunk_offset(i),
            )
            .io("write", &self.tmp)?;
        }
        Ok(())
    }

    /// Writes the last chunk, makes the file durable and renames it into place.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.flush()?;
        if let Some(f) = self.file.take() {
            f.sync_all().io("fsync", &self.tmp)?;
        }
        self.fs
            .rename(&self.tmp, &self.path)
            .io("rename into place", &self.path)?;
        self.done = true;
        if let Some(dir) = self.path.parent() {
            fsutil::sync_dir(self.fs, dir)?;
        }
        Ok(())
    }
}

impl Drop for SumsWriter<'_> {
    fn drop(&mut self) {
        // Not finished: nothing changed, the temporary file goes (a full disk gets its
        // space back).
        if !self.done {
            let _ = self.fs.remove(&self.tmp);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rewind_storage::SimStorage;

    const BS: u32 = 512;
    /// Three chunks: two full, one of 7236 blocks.
    const BLOCKS: u64 = 40_000;

    fn write(fs: &dyn Storage, path: &Path, sums: &[(u64, u32)]) {
        let mut w = SumsWriter::create(fs, path, SumsLayout::new(BS, BLOCKS)).unwrap();
        for &(b, s) in sums {
            w.set(b, s).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn hole_chunks_read_as_zero_sums_and_a_damaged_chunk_is_named() {
        let fs = SimStorage::new();
        fs.create_dir(Path::new("/v")).unwrap();
        let path = Path::new("/v/base.sums");
        let zero = crc32c::crc32c(&[0u8; BS as usize]);
        // Chunk 1 (blocks 16382..32764) has only zero blocks: left all zero bytes.
        write(&fs, path, &[(3, 7), (35_000, 9)]);
        let layout = SumsLayout::new(BS, BLOCKS);
        let raw = fsutil::read_file(&fs, path).unwrap();
        assert_eq!(raw.len() as u64, layout.file_len());
        let c1 = layout.chunk_offset(1) as usize;
        assert!(raw[c1..c1 + layout.chunk_len(1)].iter().all(|&b| b == 0));

        let (sums, damage) = Sums::open(&fs, path, BS, BLOCKS).unwrap();
        assert!(damage.is_none());
        let c = sums.chunk(3).unwrap();
        assert_eq!(
            (c.sum(3), c.sum(4), c.damaged),
            (Some(7), Some(zero), false)
        );
        let c = sums.chunk(20_000).unwrap();
        assert!(c.is_hole());
        assert_eq!((c.first, c.end()), (16_382, 32_764));
        assert_eq!(c.sum(20_000), Some(zero));
        assert_eq!(sums.chunk(35_000).unwrap().sum(35_000), Some(9));
        assert_eq!(sums.chunk(BLOCKS - 1).unwrap().end(), BLOCKS);
        assert!(sums.damage_found().is_none());

        // A flipped sum in chunk 2: its sums are still used, the chunk is named.
        let mut bad = raw.clone();
        let at = layout.sum_offset(35_000) as usize;
        bad[at] ^= 1;
        fsutil::write_atomic(&fs, path, &bad).unwrap();
        let (sums, damage) = Sums::open(&fs, path, BS, BLOCKS).unwrap();
        assert!(damage.is_none(), "opening reads the header only");
        assert!(sums.damage_found().is_none());
        let c = sums.chunk(35_000).unwrap();
        assert!(c.damaged);
        assert_eq!(c.sum(35_000), Some(9 ^ 1));
        let (offset, error, n) = sums.damage_found().unwrap();
        assert_eq!((offset, n), (layout.chunk_offset(2), 1));
        assert!(error.contains("base.sums"), "{error}");
        assert!(!sums.chunk(3).unwrap().damaged);

        // A damaged hole (one byte set) is damage too, not a hole.
        let mut bad = raw.clone();
        bad[c1 + 100] = 1;
        fsutil::write_atomic(&fs, path, &bad).unwrap();
        let (sums, _) = Sums::open(&fs, path, BS, BLOCKS).unwrap();
        sums.scan().unwrap();
        let (offset, _, n) = sums.damage_found().unwrap();
        assert_eq!((offset, n), (layout.chunk_offset(1), 1));

        // A cut file, or a header of another volume: found at open, no sum usable.
        fsutil::write_atomic(&fs, path, &raw[..raw.len() - 1]).unwrap();
        let (_, damage) = Sums::open(&fs, path, BS, BLOCKS).unwrap();
        assert!(matches!(
            damage,
            Some((VaultError::Corrupted { .. }, false))
        ));
        fsutil::write_atomic(&fs, path, &raw).unwrap();
        let (_, damage) = Sums::open(&fs, path, BS, BLOCKS + 1).unwrap();
        assert!(matches!(
            damage,
            Some((VaultError::Corrupted { .. }, false))
        ));
    }
}
