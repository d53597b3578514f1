//! What every reader of a vault shares: the base image, segment read handles, and loaded
//! delta maps.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rewind_format::delta_map::DeltaMap;
use rewind_format::manifest::MapEntry;
use rewind_format::{names, Seq};

use crate::base::BaseImage;
use crate::cache::{CacheLimits, CacheStats, Lru};
use crate::chain_index::{ChainIndex, Hint};
use crate::error::{corrupted, decode_err, Corruption, Result};
use crate::write_log::reader::SegmentFiles;

/// A delta map's interval bounds: how maps are named and cached.
type MapKey = (Seq, Seq);

#[derive(Debug)]
pub(crate) struct Shared {
    pub block_size: u32,
    pub blocks: u64,
    pub base: BaseImage,
    pub segments: SegmentFiles,
    pub maps_dir: PathBuf,
    /// Loaded delta maps, at most [`CacheLimits::map_bytes`] bytes of them; a view
    /// keeps the maps it uses alive (its `Arc`s), an evicted one is loaded (and checked)
    /// again when next asked for.
    maps: Mutex<Lru<MapKey, Arc<DeltaMap>>>,
    /// Maps whose entries a thread is reading (the others wait on the inner lock).
    loading: Mutex<HashMap<MapKey, Arc<Mutex<()>>>>,
    /// The newest interval of each changed block (see `chain_index.rs`).
    index: RwLock<ChainIndex>,
    limits: Mutex<CacheLimits>,
}

impl Shared {
    pub(crate) fn new(
        block_size: u32,
        blocks: u64,
        base: BaseImage,
        segments: SegmentFiles,
        maps_dir: PathBuf,
    ) -> Shared {
        Shared {
            block_size,
            blocks,
            base,
            segments,
            maps_dir,
            maps: Mutex::new(Lru::new(CacheLimits::default().map_bytes)),
            loading: Mutex::new(HashMap::new()),
            index: RwLock::new(ChainIndex::default()),
            limits: Mutex::new(CacheLimits::default()),
        }
    }

    /// The delta map a manifest entry names, loaded once and verified. Of a version 3
    /// map only the head (header and block set) is read: its entries are read when a
    /// lookup first needs them ([`Shared::load_entries`]).
    pub(crate) fn map(&self, e: &MapEntry) -> Result<Arc<DeltaMap>> {
        let key = (e.interval.seq_from, e.interval.seq_to);
        if let Some(m) = self.cached_maps().get(&key) {
            return Ok(m);
        }
        let path = self.map_path(key);
        let map = read_map_head(self.segments.storage(), &path)?;
        if map.interval != e.interval
            || map.block_size != self.block_size
            || map.len() as u64 != e.blocks_changed
        {
            return Err(corrupted(
                &path,
                0,
                Corruption::Inconsistent("delta map does not match the manifest"),
            ));
        }
        if map.last_block().is_some_and(|b| b >= self.blocks) {
            return Err(corrupted(
                &path,
                0,
                Corruption::Inconsistent("delta map names a block outside the volume"),
            ));
        }
        let map = Arc::new(map);
        self.insert(map.clone());
        Ok(map)
    }

    pub(crate) fn map_path(&self, key: MapKey) -> PathBuf {
        self.maps_dir.join(names::delta_map(key.0, key.1))
    }

    /// Reads and checks the entries of `map` (a head loaded by [`Shared::map`]) if they
    /// are not loaded yet. Threads that need the same map's entries wait for one read.
    pub(crate) fn load_entries(&self, map: &DeltaMap) -> Result<()> {
        if map.has_entries() {
            return Ok(());
        }
        let key = (map.interval.seq_from, map.interval.seq_to);
        let gate = self
            .loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let _g = gate.lock().unwrap_or_else(|p| p.into_inner());
        if map.has_entries() {
            return Ok(());
        }
        let path = self.map_path(key);
        let (at, len) = map.entries_range();
        let file = crate::fsutil::open_vault_file(self.segments.storage(), &path)?;
        let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        crate::fsutil::read_exact_at(file.as_ref(), &mut bytes, at, &path)?;
        map.attach_entries(bytes)
            .map_err(|err| decode_err(&path, 0, err))?;
        self.loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        Ok(())
    }

    /// Brings the chain index up to `chain` (oldest first), whose maps `maps` are (newest
    /// first, as a view holds them), and returns the epoch whose hints hold for a view of
    /// it; `None`: the index cannot serve it (full).
    pub(crate) fn index_chain(&self, chain: &[MapEntry], maps: &[Arc<DeltaMap>]) -> Option<u64> {
        if let Some(epoch) = self.index_if_built(chain) {
            return Some(epoch);
        }
        if chain.len() < crate::chain_index::MIN_MAPS {
            return None;
        }
        let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
        if !idx.agrees_with(chain) {
            idx.reset();
        }
        // What indexing the rest would add, at most: past the budget, probing is cheaper.
        let adding: usize = (idx.maps()..chain.len())
            .filter_map(|pos| maps.get(chain.len() - 1 - pos))
            .map(|m| m.blocks.run_count())
            .sum();
        if idx.run_count() + adding > crate::chain_index::MAX_RUNS {
            idx.give_up();
            return None;
        }
        for pos in idx.maps()..chain.len() {
            let Some(m) = maps.get(chain.len() - 1 - pos) else {
                break;
            };
            idx.push(&chain[pos], &m.blocks);
        }
        (idx.agrees_with(chain) && idx.maps() >= chain.len()).then(|| idx.epoch())
    }

    /// The epoch of the chain index if it already covers `chain` (oldest first), without
    /// building anything; `None`: it does not.
    pub(crate) fn index_if_built(&self, chain: &[MapEntry]) -> Option<u64> {
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        (idx.maps() >= chain.len() && idx.agrees_with(chain)).then(|| idx.epoch())
    }

    /// The chain index's hint for `block` in a view of the chain's first `len` maps, if
    /// the index is still at `epoch`.
    pub(crate) fn hint(&self, epoch: u64, block: u64, len: usize) -> Hint {
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        if idx.epoch() != epoch {
            return Hint::Unknown;
        }
        idx.hint(block, len)
    }

    /// The runs of `first..end` the chain index holds (see [`ChainIndex::range`]), if it is
    /// still at `epoch`.
    pub(crate) fn hinted_runs(
        &self,
        epoch: u64,
        first: u64,
        end: u64,
        out: &mut Vec<(u64, u64, usize)>,
    ) -> bool {
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        if idx.epoch() != epoch {
            return false;
        }
        idx.range(first, end, out);
        true
    }

    pub(crate) fn insert(&self, map: Arc<DeltaMap>) {
        let key = (map.interval.seq_from, map.interval.seq_to);
        // The weight whether the entries are loaded or not: what they cost once read.
        let weight = map.memory_bytes();
        self.cached_maps().insert(key, map, weight);
    }

    fn cached_maps(&self) -> std::sync::MutexGuard<'_, Lru<MapKey, Arc<DeltaMap>>> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn cache_limits(&self) -> CacheLimits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_cache_limits(&self, limits: CacheLimits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
        self.segments.set_limit(limits.segment_files);
        self.cached_maps().set_budget(limits.map_bytes);
    }

    pub(crate) fn cache_stats(&self) -> CacheStats {
        let maps = self.cached_maps();
        CacheStats {
            segment_files: self.segments.open_handles(),
            maps: maps.len(),
            map_bytes: maps.weight(),
            index_runs: self
                .index
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .run_count() as u64,
        }
    }
}

/// Reads a delta map file: only the head of a version 3 map (its entries stay on disk
/// until a lookup needs them), the whole file of an older one.
fn read_map_head(fs: &dyn rewind_storage::Storage, path: &Path) -> Result<DeltaMap> {
    let file = crate::fsutil::open_vault_file(fs, path)?;
    let file_len = file.len().map_err(|err| crate::VaultError::Io {
        op: "stat",
        path: path.to_path_buf(),
        source: err,
    })?;
    let file = file.as_ref();
    // One read usually gets the whole head (a block set is small next to the entries).
    let guess = usize::try_from(file_len.min(HEAD_GUESS)).unwrap_or(0);
    let mut buf = vec![0u8; guess];
    crate::fsutil::read_exact_at(file, &mut buf, 0, path)?;
    let head_len = match DeltaMap::head_len(&buf).map_err(|err| decode_err(path, 0, err))? {
        Some(n) => n,
        None => {
            // Versions 1 and 2: one crc over the whole file.
            let mut all = vec![0u8; usize::try_from(file_len).unwrap_or(usize::MAX)];
            crate::fsutil::read_exact_at(file, &mut all, 0, path)?;
            return DeltaMap::decode_owned(all).map_err(|err| decode_err(path, 0, err));
        }
    };
    if head_len as u64 > file_len {
        return Err(corrupted(
            path,
            0,
            Corruption::Length {
                expected: head_len as u64,
                actual: file_len,
            },
        ));
    }
    if head_len > buf.len() {
        let have = buf.len();
        buf.resize(head_len, 0);
        crate::fsutil::read_exact_at(file, &mut buf[have..], have as u64, path)?;
    }
    let map = DeltaMap::decode_head(&buf[..head_len]).map_err(|err| decode_err(path, 0, err))?;
    let (at, len) = map.entries_range();
    if at + len != file_len {
        return Err(corrupted(
            path,
            at,
            Corruption::Length {
                expected: at + len,
                actual: file_len,
            },
        ));
    }
    // A small map: its entries came with the head, keep them.
    if buf.len() as u64 >= at + len {
        map.attach_entries(buf[at as usize..].to_vec())
            .map_err(|err| decode_err(path, 0, err))?;
    }
    Ok(map)
}

/// Bytes read at first from a delta map file. A map no longer than this is read whole, so
/// damage anywhere in it fails the map's load (`rewind check` says so).
pub(crate) const HEAD_GUESS: u64 = 64 << 10;
