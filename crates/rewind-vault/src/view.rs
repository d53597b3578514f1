//! A point-in-time view of the volume: the PIT map of one point, and reads through it.
//!
//! For a point P the view holds
//! - `partial`: the blocks the interval holding P changed up to P (a replay of only that
//!   interval's records, or nothing when P ends an interval),
//! - `chain`: the delta maps of the sealed intervals before it, newest first,
//! - and falls through to the base image.
//!
//! A block is answered by the first of these that has it. The cost of a read grows with
//! the blocks read and the delta maps consulted, not with the length of history. Ranges
//! (extents, reads of more than a few blocks) are answered with set operations over the
//! sources' block sets rather than block by block: see `view/extents.rs`.

use std::sync::{Arc, Mutex};

use rewind_format::delta_map::{DeltaMap, Location, Lookup};
use rewind_format::extents::{ExtentMap, ExtentSet};
use rewind_format::manifest::MapEntry;
use rewind_format::Seq;

use crate::chain_index::Hint;
use crate::error::{Result, VaultError};
use crate::point::ResolvedPoint;
use crate::shared::Shared;
use crate::write_log::reader::DecodedRecord;

mod extents;

pub use extents::{Extent, ExtentKind};

/// The chain's delta maps, loaded (newest first).
type LoadedChain = Arc<[Arc<DeltaMap>]>;

/// A view's loaded chain and the chain index epoch that serves it (see `chain_index.rs`).
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub maps: LoadedChain,
    pub index: Option<u64>,
}
/// Chains at least this long are loaded by several threads.
const PARALLEL_LOAD_FROM: usize = 4;
/// Threads loading one chain at most.
const MAX_LOAD_THREADS: usize = 8;
/// Reads of at most this many blocks look each block up in the maps; longer ones resolve
/// the range with set operations (see `extents.rs`), which cost more to set up.
const LOOKUP_PER_BLOCK_UPTO: u64 = 8;

/// The volume as it was at one point. Cheap to clone; safe to share between threads.
#[derive(Debug, Clone)]
pub struct PointView {
    point: ResolvedPoint,
    /// First seq of the interval whose replay `partial` is (none when nothing was replayed).
    holding: Option<Seq>,
    partial: Arc<ExtentMap>,
    /// The manifest's delta map chain, oldest first (shared with the vault, not copied):
    /// the view reads `chain[..chain_len]`, newest first.
    chain: Arc<[MapEntry]>,
    chain_len: usize,
    maps: Arc<Mutex<Option<Loaded>>>,
    /// The newest maps of the chain only, loaded by [`PointView::prefetch`] when they
    /// answer every block it was asked for, and those blocks: reads of them use these maps
    /// without loading the rest of the chain.
    prefix: Arc<Mutex<Option<(LoadedChain, ExtentSet)>>>,
    /// Whether loading the chain brings the vault's chain index up to it (see
    /// [`PointView::without_chain_index`]).
    index: bool,
    shared: Arc<Shared>,
}

/// Where one block of a view comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSource {
    Base,
    Zero,
    Record,
}

/// Which part of history a block of a view was last changed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Never changed since the base image.
    Base,
    /// Changed in the interval that starts at this seq (its delta map, or the replay of
    /// the interval holding the point).
    Interval(Seq),
}

impl PointView {
    pub(crate) fn new(
        point: ResolvedPoint,
        holding: Option<Seq>,
        partial: ExtentMap,
        chain: Arc<[MapEntry]>,
        chain_len: usize,
        shared: Arc<Shared>,
    ) -> PointView {
        PointView {
            point,
            holding,
            partial: Arc::new(partial),
            chain_len: chain_len.min(chain.len()),
            chain,
            maps: Arc::new(Mutex::new(None)),
            prefix: Arc::new(Mutex::new(None)),
            index: true,
            shared,
        }
    }

    /// The same view, for a reader that knows the blocks it will read and reads each once
    /// (an in-place restore, after [`PointView::prefetch`]): its reads ask the chain's maps
    /// newest first instead of building the vault's chain index. The index costs
    /// O(runs log runs) over every map of the chain (a fifth of a second for a chain with
    /// a dozen maps of scattered 4 KiB writes, ~800 k runs), which pays off over the many
    /// reads of an export but not for the few thousand lookups of a restore (milliseconds
    /// of probing). An index the vault already holds is still used. Call it before the
    /// first read.
    pub fn without_chain_index(mut self) -> PointView {
        self.index = false;
        self
    }

    /// The point this view shows.
    pub fn point(&self) -> ResolvedPoint {
        self.point
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.shared.block_size
    }

    /// Number of blocks in the volume.
    pub fn blocks(&self) -> u64 {
        self.shared.blocks
    }

    /// Delta maps a read may consult (the chain before the interval holding the point).
    pub fn maps_consulted(&self) -> usize {
        self.chain_len
    }

    /// The chain entry the view consults `i`-th (0: the newest).
    fn chain_entry(&self, i: usize) -> &MapEntry {
        &self.chain[self.chain_len - 1 - i]
    }

    /// Blocks the partial replay of the holding interval produced.
    pub fn replayed_blocks(&self) -> u64 {
        self.partial.blocks()
    }

    fn maps(&self) -> Result<LoadedChain> {
        Ok(self.loaded()?.maps)
    }

    /// The chain's maps, loaded once per view, and the chain index brought up to them.
    fn loaded(&self) -> Result<Loaded> {
        let mut cached = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = cached.as_ref() {
            return Ok(m.clone());
        }
        let started = std::time::Instant::now();
        let threads = std::thread::available_parallelism()
            .map_or(2, |p| p.get())
            .clamp(2, MAX_LOAD_THREADS);
        let maps: LoadedChain = self.load_range(0, self.chain_len, threads)?.into();
        tracing::debug!(
            maps = maps.len(),
            head_bytes = maps.iter().map(|m| m.entries_range().0).sum::<u64>(),
            micros = started.elapsed().as_micros() as u64,
            "point view: delta map chain loaded"
        );
        let loaded = self.with_index(maps);
        *cached = Some(loaded.clone());
        Ok(loaded)
    }

    /// The whole chain's maps (newest first) as the view keeps them: with the chain index
    /// brought up to them, if the view uses it (see [`PointView::without_chain_index`]).
    fn with_index(&self, maps: LoadedChain) -> Loaded {
        let started = std::time::Instant::now();
        let chain = &self.chain[..self.chain_len];
        let index = if self.index {
            self.shared.index_chain(chain, &maps)
        } else {
            self.shared.index_if_built(chain)
        };
        tracing::debug!(
            maps = maps.len(),
            indexed = index.is_some(),
            micros = started.elapsed().as_micros() as u64,
            "point view: chain index"
        );
        Loaded { maps, index }
    }

    /// The maps the view consults `from`-th to `to`-th (0: the newest), loaded on up to
    /// `threads` threads: loading is reading and checking files, so a cold chain of dozens
    /// of maps costs disk round trips and CPU that overlap well.
    fn load_range(&self, from: usize, to: usize, threads: usize) -> Result<Vec<Arc<DeltaMap>>> {
        let n = to.saturating_sub(from);
        let threads = threads.min(n);
        if threads <= 1 || n < PARALLEL_LOAD_FROM {
            return (from..to)
                .map(|i| self.shared.map(self.chain_entry(i)))
                .collect();
        }
        let slots: Vec<Mutex<Option<Result<Arc<DeltaMap>>>>> =
            (0..n).map(|_| Mutex::new(None)).collect();
        on_threads(n, threads, |i| {
            let m = self.shared.map(self.chain_entry(from + i));
            *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
            true
        });
        slots
            .into_iter()
            .enumerate()
            .map(|(i, slot)| {
                match slot.into_inner().unwrap_or_else(|p| p.into_inner()) {
                    Some(m) => m,
                    // Not reached (every index is taken once), but never guess.
                    None => self.shared.map(self.chain_entry(from + i)),
                }
            })
            .collect()
    }

    /// The maps a read of `count` blocks from `first` needs: the newest ones
    /// [`PointView::prefetch`] loaded if it was asked for all of these blocks (those maps
    /// answer them, as the whole chain would), otherwise the whole chain.
    fn loaded_for(&self, first: u64, count: u64) -> Result<Loaded> {
        if let Some((maps, asked)) = self
            .prefix
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if asked.clip(first, first + count).len() == count {
                return Ok(Loaded {
                    maps: maps.clone(),
                    index: None,
                });
            }
        }
        self.loaded()
    }

    /// Loads, several at once, the entries of every delta map that reads of the blocks in
    /// `runs` (first block, count) will need: the newest map before the point that holds
    /// each block. Reads work without it (entries load when first needed, one map at a
    /// time); a bulk reader of scattered blocks (an in-place restore) calls it first so
    /// that its workers do not queue behind those loads. Only the heads of the newest maps
    /// that answer the blocks are read (with a whole-volume write not long before the
    /// point, a few of a chain of a hundred); reads of other blocks load the rest.
    pub fn prefetch(&self, runs: &[(u64, u64)]) -> Result<()> {
        for &(first, count) in runs {
            self.check_range(first, count)?;
        }
        let asked = ExtentSet::from_ranges(runs.iter().map(|&(f, n)| (f, f + n)).collect());
        let mut unclaimed = asked.difference(&self.partial.set());
        let full = self
            .maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|l| l.maps.clone());
        // Each map, newest first, is wanted for the still-unanswered blocks it holds. The
        // heads are loaded newest first, a few at once, only until every block is answered:
        // the older maps' heads (megabytes for maps of scattered writes) are not read.
        let mut maps: Vec<Arc<DeltaMap>> = Vec::new();
        let mut wanted: Vec<bool> = Vec::new();
        let threads = std::thread::available_parallelism()
            .map_or(2, |p| p.get())
            .clamp(2, MAX_LOAD_THREADS);
        while !unclaimed.is_empty() && maps.len() < self.chain_len {
            let from = maps.len();
            let batch: Vec<Arc<DeltaMap>> = match &full {
                Some(all) => all[from..].to_vec(),
                None => self.load_range(from, (from + threads).min(self.chain_len), threads)?,
            };
            for m in batch {
                let hit = !unclaimed.is_empty() && !unclaimed.intersection(&m.blocks).is_empty();
                if hit {
                    unclaimed = unclaimed.difference(&m.blocks);
                }
                wanted.push(hit);
                maps.push(m);
            }
        }
        if full.is_none() {
            if maps.len() == self.chain_len {
                // The whole chain after all: keep it as the view's.
                let mut cached = self.maps.lock().unwrap_or_else(|p| p.into_inner());
                if cached.is_none() {
                    *cached = Some(self.with_index(maps.clone().into()));
                }
            } else {
                *self.prefix.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((maps.clone().into(), asked));
            }
        }
        let todo: Vec<&Arc<DeltaMap>> = maps
            .iter()
            .zip(&wanted)
            .filter(|(m, w)| **w && !m.has_entries())
            .map(|(m, _)| m)
            .collect();
        tracing::debug!(
            maps = self.chain_len,
            heads_loaded = maps.len(),
            wanted = wanted.iter().filter(|w| **w).count(),
            to_load = todo.len(),
            "point view: prefetching delta map entries"
        );
        if todo.is_empty() {
            return Ok(());
        }
        let failed: Mutex<Option<VaultError>> = Mutex::new(None);
        on_threads(todo.len(), MAX_LOAD_THREADS, |i| {
            match self.shared.load_entries(todo[i]) {
                Ok(()) => true,
                Err(e) => {
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                    false
                }
            }
        });
        match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn locate(&self, loaded: &Loaded, block: u64) -> Result<Option<Location>> {
        if let Some(l) = self.partial.find(block) {
            return Ok(Some(l));
        }
        let maps = &loaded.maps;
        let hint = loaded.index.map_or(Hint::Unknown, |epoch| {
            self.shared.hint(epoch, block, self.chain_len)
        });
        match hint {
            Hint::Unchanged => return Ok(None),
            Hint::Map(pos) => {
                if let Some(m) = maps.get(self.chain_len - 1 - pos) {
                    if let Some(l) = self.find_in(m, block)? {
                        return Ok(Some(l));
                    }
                }
                // Not there after all: ask every map (never trust a hint over the maps).
            }
            Hint::Unknown => {}
        }
        for m in maps.iter() {
            if let Some(l) = self.find_in(m, block)? {
                return Ok(Some(l));
            }
        }
        Ok(None)
    }

    /// `block` in map `m` (its entries loaded first if need be); `None`: not in it.
    fn find_in(&self, m: &Arc<DeltaMap>, block: u64) -> Result<Option<Location>> {
        match m.find(block) {
            Lookup::Absent => Ok(None),
            Lookup::Found(l) => Ok(Some(l)),
            Lookup::NotLoaded => {
                self.shared.load_entries(m)?;
                match m.find(block) {
                    Lookup::Found(l) => Ok(Some(l)),
                    _ => Err(self.entries_disagree(m)),
                }
            }
        }
    }

    /// Where each of `count` blocks from `first_block` comes from.
    pub fn sources(&self, first_block: u64, count: u64) -> Result<Vec<BlockSource>> {
        self.check_range(first_block, count)?;
        let loaded = self.loaded()?;
        (first_block..first_block + count)
            .map(|b| {
                Ok(match self.locate(&loaded, b)? {
                    None => BlockSource::Base,
                    Some(Location::Zero) => BlockSource::Zero,
                    Some(Location::Data { .. } | Location::Block { .. }) => BlockSource::Record,
                })
            })
            .collect()
    }

    /// The interval `block` was last changed in, as of the point (or the base image).
    pub fn origin(&self, block: u64) -> Result<Origin> {
        self.check_range(block, 1)?;
        if let (Some(from), true) = (self.holding, self.partial.find(block).is_some()) {
            return Ok(Origin::Interval(from));
        }
        let maps = self.maps()?;
        Ok(maps
            .iter()
            .find(|m| m.blocks.contains(block))
            .map_or(Origin::Base, |m| Origin::Interval(m.interval.seq_from)))
    }

    fn check_range(&self, first_block: u64, count: u64) -> Result<()> {
        let end = first_block.checked_add(count);
        match end {
            Some(end) if end <= self.shared.blocks => Ok(()),
            _ => Err(VaultError::OutOfRange {
                first_block,
                end: end.unwrap_or(u64::MAX),
                blocks: self.shared.blocks,
            }),
        }
    }

    /// Where each of `count` blocks from `first_block` lives (`None`: the base image).
    fn locations(&self, first_block: u64, count: u64) -> Result<Vec<Option<Location>>> {
        let loaded = self.loaded_for(first_block, count)?;
        if count <= LOOKUP_PER_BLOCK_UPTO {
            return (first_block..first_block + count)
                .map(|b| self.locate(&loaded, b))
                .collect();
        }
        let mut locs = vec![None; count as usize];
        self.resolve(&loaded, first_block, count, |map, e| {
            for b in e.first..e.end() {
                locs[(b - first_block) as usize] = Some(map.location_in(&e, b));
            }
        })?;
        Ok(locs)
    }

    /// Reads `count` blocks from `first_block` as they were at the point.
    pub fn read(&self, first_block: u64, count: u64) -> Result<Vec<u8>> {
        let bs = self.shared.block_size as usize;
        let mut out = vec![
            0u8;
            usize::try_from(count)
                .unwrap_or(usize::MAX)
                .saturating_mul(bs)
        ];
        self.read_into(first_block, &mut out)?;
        Ok(out)
    }

    /// Reads `out.len() / block_size` blocks from `first_block` into `out`.
    pub fn read_into(&self, first_block: u64, out: &mut [u8]) -> Result<()> {
        let bs = self.shared.block_size as usize;
        if !out.len().is_multiple_of(bs) {
            return Err(VaultError::Unaligned {
                len: out.len(),
                block_size: self.shared.block_size,
            });
        }
        let count = (out.len() / bs) as u64;
        self.check_range(first_block, count)?;
        let locs = self.locations(first_block, count)?;
        let mut rec = DecodedRecord::default();
        let mut crcs = Vec::new();
        let mut i = 0usize;
        while i < locs.len() {
            let b = first_block + i as u64;
            match locs[i] {
                None => {
                    let run = locs[i..].iter().take_while(|l| l.is_none()).count();
                    self.shared.base.read(b, &mut out[i * bs..(i + run) * bs])?;
                    i += run;
                }
                Some(Location::Zero) => {
                    out[i * bs..(i + 1) * bs].fill(0);
                    i += 1;
                }
                Some(Location::Data { segment, offset }) => {
                    if !rec.is(segment, offset) {
                        self.shared
                            .segments
                            .read_record(segment, offset, b, &mut rec)?;
                    }
                    let at = (b - rec.first_block) as usize * bs;
                    out[i * bs..(i + 1) * bs].copy_from_slice(&rec.data[at..at + bs]);
                    i += 1;
                }
                Some(Location::Block {
                    segment,
                    offset,
                    crc,
                }) => {
                    // A run of blocks stored one after the other: one read.
                    crcs.clear();
                    crcs.push(crc);
                    while let Some(Some(Location::Block {
                        segment: s,
                        offset: o,
                        crc: c,
                    })) = locs.get(i + crcs.len())
                    {
                        if *s != segment || *o != offset + (crcs.len() * bs) as u64 {
                            break;
                        }
                        crcs.push(*c);
                    }
                    let n = crcs.len();
                    self.shared.segments.read_blocks(
                        segment,
                        offset,
                        &crcs,
                        &mut out[i * bs..(i + n) * bs],
                    )?;
                    i += n;
                }
            }
        }
        Ok(())
    }
}

/// Runs `f(0)`, ..., `f(n - 1)` on up to `threads` threads (the caller's among them), each
/// index once; a thread stops taking indexes once `f` returns `false`. Threads that cannot
/// be started are done without: the caller's thread takes their share.
fn on_threads(n: usize, threads: usize, f: impl Fn(usize) -> bool + Sync) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if i >= n || !f(i) {
            return;
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads.min(n) {
            if std::thread::Builder::new()
                .name("rewind-map-load".into())
                .spawn_scoped(s, work)
                .is_err()
            {
                break;
            }
        }
        work();
    });
}
