//! The chain index: for every block some sealed interval changed, the position in the delta
//! map chain of the newest interval that changed it.
//!
//! Without it a read of a block asks the chain's maps newest first until one has it: one
//! probe per map for a block no interval changed, 100,000 probes at 100,000 intervals. With
//! it a view of the chain's first `L` maps (any point) knows at once
//! - a block the index does not hold: no map of the chain changed it, it reads from the
//!   base image;
//! - a block whose newest change is at position `j < L`: map `j` answers it, no other;
//! - `j >= L` (a later interval than the view's point changed it): the view asks its maps
//!   as before.
//!
//! The index is built from the maps' block sets (their heads) as views load them and grows
//! by the runs of each new map: O(runs log runs) per map. It holds one entry per run of
//! blocks with one newest interval; its size is in [`crate::CacheStats`]. It is only ever
//! extended by maps appended to the chain; a chain that changed otherwise (a view of an older
//! manifest, or history rewritten) resets it, and views built on the old one see its epoch
//! change and probe their maps instead.

use std::collections::BTreeMap;

use rewind_format::extents::ExtentSet;
use rewind_format::manifest::MapEntry;
use rewind_format::Seq;

/// Runs past which the index is not built (views then probe their maps): ~40 bytes each,
/// and building costs O(runs log runs): a chain of a hundred maps of scattered 4 KiB writes
/// (6.5 M runs) took a second to index, where a restore of 5,000 blocks probing the maps
/// takes milliseconds.
pub(crate) const MAX_RUNS: usize = 1 << 20;
/// Chains shorter than this are probed: a few maps cost less to ask than to index.
pub(crate) const MIN_MAPS: usize = 16;

#[derive(Debug, Default)]
pub(crate) struct ChainIndex {
    /// Bumped whenever the index is reset: a view remembers the epoch it checked.
    epoch: u64,
    /// The intervals of the chain positions the index covers, oldest first.
    covered: Vec<(Seq, Seq)>,
    /// First block -> (end, chain position of the newest map that changed the run).
    runs: BTreeMap<u64, (u64, u32)>,
    /// Grown past [`MAX_RUNS`]: not extended any more until reset.
    full: bool,
}

/// What the index says of a block, for a view of the first `len` maps of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hint {
    /// No map of the chain changed it.
    Unchanged,
    /// The map at this chain position is the newest of the view's maps that changed it.
    Map(usize),
    /// The index cannot say: ask the maps.
    Unknown,
}

impl ChainIndex {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Runs held (what the index costs, ~40 bytes each).
    pub(crate) fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Maps covered.
    pub(crate) fn maps(&self) -> usize {
        self.covered.len()
    }

    /// Whether the index describes a prefix of `chain` or `chain` is a prefix of it: then
    /// its answers hold for a view of `chain`. O(shorter of the two) interval compares.
    pub(crate) fn agrees_with(&self, chain: &[MapEntry]) -> bool {
        !self.full
            && self
                .covered
                .iter()
                .zip(chain)
                .all(|(k, e)| *k == (e.interval.seq_from, e.interval.seq_to))
    }

    /// Starts over (the chain changed other than by appends).
    pub(crate) fn reset(&mut self) {
        self.epoch += 1;
        self.covered.clear();
        self.runs.clear();
        self.full = false;
    }

    /// Gives up on indexing (too many runs to be worth it) until reset.
    pub(crate) fn give_up(&mut self) {
        self.full = true;
        self.runs.clear();
    }

    /// Adds the map at the next chain position: its blocks' newest change is now it.
    pub(crate) fn push(&mut self, e: &MapEntry, blocks: &ExtentSet) {
        let pos = self.covered.len() as u32;
        self.covered.push((e.interval.seq_from, e.interval.seq_to));
        for &(first, end) in blocks.runs() {
            self.put(first, end, pos);
        }
        if self.runs.len() > MAX_RUNS {
            tracing::info!(
                runs = self.runs.len(),
                "the chain index is full: reads of history ask the delta maps one by one"
            );
            self.full = true;
        }
    }

    /// Blocks first..end were last changed at `pos` (newer than every run held).
    fn put(&mut self, first: u64, end: u64, pos: u32) {
        // The run that starts before `first` and reaches into it keeps its head.
        if let Some((&f, &(e, p))) = self.runs.range(..first).next_back() {
            if e > first {
                self.runs.insert(f, (first, p));
                if e > end {
                    self.runs.insert(end, (e, p));
                }
            }
        }
        // Runs that start inside go; the last of them may keep its tail.
        let inside: Vec<u64> = self.runs.range(first..end).map(|(f, _)| *f).collect();
        for f in inside {
            if let Some((e, p)) = self.runs.remove(&f) {
                if e > end {
                    self.runs.insert(end, (e, p));
                }
            }
        }
        self.runs.insert(first, (end, pos));
    }

    /// What the index says of `block` for a view of the chain's first `len` maps.
    pub(crate) fn hint(&self, block: u64, len: usize) -> Hint {
        if len > self.covered.len() {
            return Hint::Unknown;
        }
        match self.runs.range(..=block).next_back() {
            Some((_, &(e, p))) if e > block => match p as usize {
                p if p < len => Hint::Map(p),
                _ => Hint::Unknown,
            },
            _ => Hint::Unchanged,
        }
    }

    /// The runs of `first..end` the index holds, cut to it, with the chain position of
    /// their newest change, in block order.
    pub(crate) fn range(&self, first: u64, end: u64, out: &mut Vec<(u64, u64, usize)>) {
        let start = match self.runs.range(..first).next_back() {
            Some((&f, &(e, _))) if e > first => f,
            _ => first,
        };
        for (&f, &(e, p)) in self.runs.range(start..end) {
            out.push((f.max(first), e.min(end), p as usize));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rewind_format::delta_map::Interval;

    fn entry(i: u64) -> MapEntry {
        MapEntry {
            interval: Interval {
                seq_from: Seq(i + 1),
                seq_to: Seq(i + 1),
                time_from_ns: 0,
                time_to_ns: 0,
            },
            flags: 0,
            retention_class: 0,
            blocks_changed: 0,
        }
    }

    proptest! {
        /// Every hint agrees with asking the maps newest first, for views of every prefix.
        #[test]
        fn agrees_with_probing(
            maps in proptest::collection::vec(
                proptest::collection::vec((0u64..200, 1u64..30), 0..6), 1..12),
        ) {
            let sets: Vec<ExtentSet> = maps
                .iter()
                .map(|runs| ExtentSet::from_ranges(runs.iter().map(|&(f, n)| (f, f + n)).collect()))
                .collect();
            let mut idx = ChainIndex::default();
            for (i, s) in sets.iter().enumerate() {
                idx.push(&entry(i as u64), s);
            }
            for len in 0..=sets.len() {
                for b in 0..240u64 {
                    let newest = (0..len).rev().find(|&j| sets[j].contains(b));
                    let later = (len..sets.len()).any(|j| sets[j].contains(b));
                    match idx.hint(b, len) {
                        Hint::Unchanged => prop_assert!(newest.is_none() && !later, "{b} {len}"),
                        Hint::Map(j) => prop_assert_eq!(Some(j), newest),
                        Hint::Unknown => prop_assert!(later),
                    }
                }
                let mut got = Vec::new();
                idx.range(0, 240, &mut got);
                let mut at = 0;
                for &(f, e, _) in &got {
                    prop_assert!(f >= at && f < e);
                    at = e;
                }
            }
        }
    }
}
