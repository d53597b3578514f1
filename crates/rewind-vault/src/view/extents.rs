//! Extents of a point view: runs of consecutive blocks with one fate (data from a record,
//! data from the base image, zeroed or trimmed, a hole of the base image), found with set
//! operations over the block sets of the sources rather than one lookup per block per map.
//!
//! For a range of blocks, every source, newest first (the partial replay, then the chain's
//! delta maps), claims the still-unclaimed blocks it holds: one intersection and one
//! difference of extent sets per map (O(runs), so a trim of a whole volume is one run).
//! The extents a source claims are taken from its entries, cut to the claimed runs. What
//! no source claims comes from the base image, split into its holes and its data.

use std::sync::Arc;

use rewind_format::delta_map::DeltaMap;
use rewind_format::extents::{ExtentLoc, ExtentMap, ExtentSet, MapExtent};

use super::{BlockSource, Loaded, PointView};
use crate::error::{Corruption, Result, VaultError};

/// The first window of [`PointView::extents_upto`], in blocks; each next one is twice as
/// long (a window costs O(runs) in it, so it may grow to the whole volume).
const FIRST_WINDOW: u64 = 64;

/// What a run of blocks of a view reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// Data from write records in the log.
    Record,
    /// Data from the base image (unchanged since it was taken).
    Base,
    /// Zeroed or trimmed: reads as zeroes, nothing to read.
    Zero,
    /// Unchanged since the base image, where the base image file has a hole and base.sums
    /// has the checksum of a zero block: reads as zeroes, verified, nothing to read.
    BaseHole,
}

impl ExtentKind {
    /// Whether the run reads as zeroes without reading anything.
    pub fn reads_as_zero(self) -> bool {
        matches!(self, ExtentKind::Zero | ExtentKind::BaseHole)
    }

    /// The per-block answer of [`PointView::sources`] for blocks of this kind.
    pub fn source(self) -> BlockSource {
        match self {
            ExtentKind::Record => BlockSource::Record,
            ExtentKind::Zero => BlockSource::Zero,
            ExtentKind::Base | ExtentKind::BaseHole => BlockSource::Base,
        }
    }

    fn of(loc: ExtentLoc) -> ExtentKind {
        match loc {
            ExtentLoc::Zero => ExtentKind::Zero,
            ExtentLoc::Record { .. } | ExtentLoc::Blocks { .. } => ExtentKind::Record,
        }
    }
}

/// A run of `count` blocks from `first_block` of one [`ExtentKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    pub first_block: u64,
    pub count: u64,
    pub kind: ExtentKind,
}

impl Extent {
    /// The block after the run.
    pub fn end(&self) -> u64 {
        self.first_block + self.count
    }
}

/// Appends a run, merging it into the last one when it continues it with the same kind.
fn push_run(out: &mut Vec<Extent>, first_block: u64, count: u64, kind: ExtentKind) {
    if count == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.end() == first_block && last.kind == kind => last.count += count,
        _ => out.push(Extent {
            first_block,
            count,
            kind,
        }),
    }
}

impl PointView {
    /// The extents of `count` blocks from `first_block` at the point, in block order,
    /// adjacent runs of one kind merged. Every block of the range is in exactly one.
    pub fn extents(&self, first_block: u64, count: u64) -> Result<Vec<Extent>> {
        self.extents_upto(first_block, count, usize::MAX)
    }

    /// The first at most `max_extents` (at least one) extents of `count` blocks from
    /// `first_block`: a prefix of [`PointView::extents`], every extent in it whole (it
    /// ends where the next one starts, or at the end of the range). The work grows with
    /// the blocks of the extents returned, not with the range: the range is taken in
    /// windows that start small and double, and the answer stops at the first window that
    /// completes `max_extents` of them. A client that walks the volume one extent per
    /// request (NBD's REQ_ONE) thus costs one pass over the extents in all.
    pub fn extents_upto(
        &self,
        first_block: u64,
        count: u64,
        max_extents: usize,
    ) -> Result<Vec<Extent>> {
        self.check_range(first_block, count)?;
        let loaded = self.loaded()?;
        let end = first_block + count;
        let max_extents = max_extents.max(1);
        let mut out: Vec<Extent> = Vec::new();
        let (mut at, mut window) = (first_block, FIRST_WINDOW);
        while at < end {
            let n = window.min(end - at);
            for e in self.window_extents(&loaded, at, n)? {
                push_run(&mut out, e.first_block, e.count, e.kind);
            }
            at += n;
            // Every extent but the last is whole; the last may go on in the next window.
            if out.len() > max_extents {
                out.truncate(max_extents);
                break;
            }
            window = window.saturating_mul(2);
        }
        Ok(out)
    }

    /// Whether `count` blocks from `first_block` read as zeroes at the point, known without
    /// reading data: each is zeroed or trimmed, or comes from a hole of the base image
    /// whose checksums are those of zero blocks. `false` when reading would be needed.
    pub fn reads_as_zero(&self, first_block: u64, count: u64) -> Result<bool> {
        self.check_range(first_block, count)?;
        let end = first_block + count;
        let mut at = first_block;
        while at < end {
            // Two kinds read as zero, so the first two extents decide a prefix.
            let part = self.extents_upto(at, end - at, 2)?;
            if part.iter().any(|e| !e.kind.reads_as_zero()) {
                return Ok(false);
            }
            at = part.last().map_or(end, Extent::end);
        }
        Ok(true)
    }

    /// The extents of one window of blocks, in block order.
    fn window_extents(&self, loaded: &Loaded, first: u64, count: u64) -> Result<Vec<Extent>> {
        // Pieces come source by source (each in block order), then are put in order.
        let mut pieces: Vec<Extent> = Vec::new();
        let base_runs = self.resolve(loaded, first, count, |_, e| {
            push_run(&mut pieces, e.first, e.count, ExtentKind::of(e.loc));
        })?;
        for (f, n) in base_runs {
            self.shared.base.extents(f, n, |f, n, hole| {
                let kind = if hole {
                    ExtentKind::BaseHole
                } else {
                    ExtentKind::Base
                };
                push_run(&mut pieces, f, n, kind);
            });
        }
        pieces.sort_unstable_by_key(|e| e.first_block);
        let mut out = Vec::with_capacity(pieces.len());
        for e in pieces {
            push_run(&mut out, e.first_block, e.count, e.kind);
        }
        Ok(out)
    }

    /// Finds where blocks first..first+count come from: calls `located(map, extent)` for
    /// every extent of the partial replay or a delta map that answers blocks of the range
    /// (from the newest source that has them, cut to what that source answers; in block
    /// order within one source, not across them) and returns the runs that fall through to
    /// the base image, in order. Costs O(runs) per source, not O(blocks).
    pub(super) fn resolve(
        &self,
        loaded: &Loaded,
        first: u64,
        count: u64,
        mut located: impl FnMut(&ExtentMap, MapExtent),
    ) -> Result<Vec<(u64, u64)>> {
        let end = first + count;
        let mut unclaimed = ExtentSet::range(first, end);
        let mut taken = ExtentSet::new();
        for e in self.partial.range(first, end) {
            taken.push(e.first, e.end());
            located(&self.partial, e);
        }
        if !taken.is_empty() {
            unclaimed = unclaimed.difference(&taken);
        }
        let maps = &loaded.maps;
        // The chain index answers most of it: runs no map changed go to the base image,
        // runs whose newest change is in the view's chain to that map alone; the maps are
        // asked one by one only for the rest (changed again after the view's point).
        let mut hinted = Vec::new();
        let indexed = loaded.index.is_some_and(|epoch| {
            unclaimed
                .runs()
                .iter()
                .all(|&(f, e)| self.shared.hinted_runs(epoch, f, e, &mut hinted))
        });
        let mut base = ExtentSet::new();
        if indexed {
            let mut held = ExtentSet::new();
            let mut ask = ExtentSet::new();
            for &(f, e, pos) in &hinted {
                held.push(f, e);
                let Some(m) = (pos < self.chain_len)
                    .then(|| maps.get(self.chain_len - 1 - pos))
                    .flatten()
                else {
                    ask.push(f, e);
                    continue;
                };
                if !self.claim(m, f, e, &mut located)? {
                    ask.push(f, e);
                }
            }
            base = unclaimed.difference(&held);
            unclaimed = ask;
        }
        for m in maps.iter() {
            if unclaimed.is_empty() {
                break;
            }
            let claimed = unclaimed.intersection(&m.blocks);
            if claimed.is_empty() {
                continue;
            }
            unclaimed = unclaimed.difference(&claimed);
            for &(f, e) in claimed.runs() {
                if !self.claim(m, f, e, &mut located)? {
                    return Err(self.entries_disagree(m));
                }
            }
        }
        let base = base.union(&unclaimed);
        Ok(base.runs().iter().map(|&(f, e)| (f, e - f)).collect())
    }

    /// Hands `located` the extents of `m` over blocks `f..e`, all of which its block set
    /// holds; `false` (and nothing handed) when they are not all in its block set.
    fn claim(
        &self,
        m: &Arc<DeltaMap>,
        f: u64,
        e: u64,
        located: &mut impl FnMut(&ExtentMap, MapExtent),
    ) -> Result<bool> {
        if m.blocks.clip(f, e).len() != e - f {
            return Ok(false);
        }
        self.shared.load_entries(m)?;
        let Some(entries) = m.entries() else {
            return Err(self.entries_disagree(m));
        };
        let mut at = f;
        for x in entries.range(f, e) {
            if x.first != at {
                return Err(self.entries_disagree(m));
            }
            at = x.end();
            located(entries, x);
        }
        if at != e {
            return Err(self.entries_disagree(m));
        }
        Ok(true)
    }

    /// A delta map whose entries do not hold a block its set has.
    pub(super) fn entries_disagree(&self, m: &DeltaMap) -> VaultError {
        VaultError::Corrupted {
            path: self
                .shared
                .map_path((m.interval.seq_from, m.interval.seq_to)),
            offset: m.entries_range().0,
            reason: Corruption::Inconsistent(
                "a delta map's entries do not hold a block its set has",
            ),
        }
    }
}
