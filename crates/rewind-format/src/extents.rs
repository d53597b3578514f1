//! Extents: runs of consecutive blocks with one fate, the unit of maps and views.
//!
//! A write record of `n` blocks, a zero or a trim of a whole volume are each one extent,
//! so what holds them costs O(extents), not O(blocks):
//! - [`ExtentSet`]: a set of blocks as sorted, disjoint, non-adjacent runs (membership
//!   and set algebra in O(runs)); the block set of a delta map and what views combine.
//! - [`ExtentMap`]: sorted, disjoint extents each with a location rule ([`ExtentLoc`]),
//!   from which the [`Location`] of any one block follows; the entries of a delta map and
//!   the replay of a partial interval.
//! - [`ExtentOverlay`]: builds an [`ExtentMap`] from extents given in record order, a
//!   newer extent replacing what it overlaps (the present map, replays).

use std::collections::BTreeMap;

use roaring::RoaringTreemap;

use crate::delta_map::Location;
use crate::SegmentId;

/// A set of blocks as sorted, disjoint, non-adjacent runs `first..end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtentSet {
    runs: Vec<(u64, u64)>,
    len: u64,
}

impl ExtentSet {
    pub fn new() -> ExtentSet {
        ExtentSet::default()
    }

    /// The blocks `first..end`.
    pub fn range(first: u64, end: u64) -> ExtentSet {
        let mut s = ExtentSet::new();
        s.push(first, end);
        s
    }

    /// Appends `first..end`, which must not start before the last run ends (adjacent
    /// runs merge). Returns `false`, changing nothing, when it would.
    pub fn push(&mut self, first: u64, end: u64) -> bool {
        if first >= end {
            return true;
        }
        match self.runs.last_mut() {
            Some(last) if last.1 > first => return false,
            Some(last) if last.1 == first => last.1 = end,
            _ => self.runs.push((first, end)),
        }
        self.len += end - first;
        true
    }

    /// Adds `first..end` anywhere (O(runs) when it goes in the middle).
    pub fn insert_range(&mut self, first: u64, end: u64) {
        if first >= end || self.push(first, end) {
            return;
        }
        *self = self.union(&ExtentSet::range(first, end));
    }

    /// The union of `ranges` (first, end), given in any order: O(n log n).
    pub fn from_ranges(mut ranges: Vec<(u64, u64)>) -> ExtentSet {
        ranges.sort_unstable();
        let mut out = ExtentSet::new();
        let mut cur: Option<(u64, u64)> = None;
        for (f, e) in ranges.into_iter().filter(|(f, e)| f < e) {
            cur = match cur {
                Some((cf, ce)) if f <= ce => Some((cf, ce.max(e))),
                Some((cf, ce)) => {
                    out.push(cf, ce);
                    Some((f, e))
                }
                None => Some((f, e)),
            };
        }
        if let Some((f, e)) = cur {
            out.push(f, e);
        }
        out
    }

    /// Number of blocks in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of runs.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// The runs, in order, as `(first, end)`.
    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }

    /// Every block, in order (O(blocks): for small sets and tests).
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|&(f, e)| f..e)
    }

    pub fn min(&self) -> Option<u64> {
        self.runs.first().map(|r| r.0)
    }

    pub fn max(&self) -> Option<u64> {
        self.runs.last().map(|r| r.1 - 1)
    }

    /// The index of the first run that ends after `block`.
    fn run_after(&self, block: u64) -> usize {
        self.runs.partition_point(|r| r.1 <= block)
    }

    pub fn contains(&self, block: u64) -> bool {
        self.runs
            .get(self.run_after(block))
            .is_some_and(|r| r.0 <= block)
    }

    /// Whether any block of `first..end` is in the set.
    pub fn intersects(&self, first: u64, end: u64) -> bool {
        first < end
            && self
                .runs
                .get(self.run_after(first))
                .is_some_and(|r| r.0 < end)
    }

    /// The blocks of the set in `first..end` (O(log runs + runs in it)).
    pub fn clip(&self, first: u64, end: u64) -> ExtentSet {
        let mut out = ExtentSet::new();
        for &(f, e) in &self.runs[self.run_after(first)..] {
            if f >= end {
                break;
            }
            out.push(f.max(first), e.min(end));
        }
        out
    }

    /// Blocks in both sets. O(r log R) for runs r of the smaller set and R of the larger
    /// (plus the runs of the answer), so that a window of a few runs costs little against
    /// a set of millions.
    pub fn intersection(&self, other: &ExtentSet) -> ExtentSet {
        let (small, big) = if self.runs.len() <= other.runs.len() {
            (self, other)
        } else {
            (other, self)
        };
        let mut out = ExtentSet::new();
        let mut j = 0;
        for &(f, e) in &small.runs {
            j += big.runs[j..].partition_point(|r| r.1 <= f);
            let mut k = j;
            while let Some(&(bf, be)) = big.runs.get(k) {
                if bf >= e {
                    break;
                }
                out.push(f.max(bf), e.min(be));
                if be > e {
                    break;
                }
                k += 1;
            }
        }
        out
    }

    /// Blocks of `self` not in `other` (O(r log R + answer) for the runs r of `self`).
    pub fn difference(&self, other: &ExtentSet) -> ExtentSet {
        let mut out = ExtentSet::new();
        let mut j = 0;
        for &(f, e) in &self.runs {
            let mut at = f;
            j += other.runs[j..].partition_point(|r| r.1 <= at);
            let mut k = j;
            while at < e {
                match other.runs.get(k) {
                    Some(&(of, oe)) if of < e => {
                        out.push(at, of.max(at));
                        at = at.max(oe);
                        if oe <= e {
                            k += 1;
                        } else {
                            break;
                        }
                    }
                    _ => {
                        out.push(at, e);
                        break;
                    }
                }
            }
            j = k;
        }
        out
    }

    /// Blocks in either set.
    pub fn union(&self, other: &ExtentSet) -> ExtentSet {
        let mut out = ExtentSet::new();
        let (mut i, mut j) = (0, 0);
        let mut cur: Option<(u64, u64)> = None;
        loop {
            let next = match (self.runs.get(i), other.runs.get(j)) {
                (Some(a), Some(b)) if a.0 <= b.0 => {
                    i += 1;
                    *a
                }
                (Some(_), Some(b)) | (None, Some(b)) => {
                    j += 1;
                    *b
                }
                (Some(a), None) => {
                    i += 1;
                    *a
                }
                (None, None) => break,
            };
            cur = match cur {
                Some((f, e)) if next.0 <= e => Some((f, e.max(next.1))),
                Some((f, e)) => {
                    out.push(f, e);
                    Some(next)
                }
                None => Some(next),
            };
        }
        if let Some((f, e)) = cur {
            out.push(f, e);
        }
        out
    }

    /// The set of a roaring bitmap's blocks.
    pub fn from_roaring(set: &RoaringTreemap) -> ExtentSet {
        let mut out = ExtentSet::new();
        for b in set.iter() {
            out.push(b, b + 1);
        }
        out
    }

    /// The blocks as a roaring bitmap (O(blocks): for sets known to be small).
    pub fn to_roaring(&self) -> RoaringTreemap {
        let mut out = RoaringTreemap::new();
        for &(f, e) in &self.runs {
            out.insert_range(f..e);
        }
        out
    }

    /// The blocks of `set` that are also in this set (O(|set| + runs)).
    pub fn filter_roaring(&self, set: &RoaringTreemap) -> RoaringTreemap {
        let mut out = RoaringTreemap::new();
        let mut i = 0;
        for b in set.iter() {
            while self.runs.get(i).is_some_and(|r| r.1 <= b) {
                i += 1;
            }
            match self.runs.get(i) {
                Some(r) if r.0 <= b => {
                    out.push(b);
                }
                Some(_) => {}
                None => break,
            }
        }
        out
    }
}

/// Where the blocks of one extent live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentLoc {
    /// They read as zeroes (zeroed or trimmed).
    Zero,
    /// In the write record at `offset` of `segment` (read and verified whole): a block is
    /// found in it by its distance from the record's first block.
    Record { segment: SegmentId, offset: u64 },
    /// Each block's own bytes, one after the other from `offset` of `segment`; block `i` of
    /// the extent has the crc at `crc_at + i` of the map's crcs.
    Blocks {
        segment: SegmentId,
        offset: u64,
        crc_at: u64,
    },
}

impl ExtentLoc {
    /// The rule for the blocks from `k` blocks into the extent on.
    fn skip(self, k: u64, block_size: u32) -> ExtentLoc {
        match self {
            ExtentLoc::Blocks {
                segment,
                offset,
                crc_at,
            } => ExtentLoc::Blocks {
                segment,
                offset: offset + k * u64::from(block_size),
                crc_at: crc_at + k,
            },
            other => other,
        }
    }
}

/// `count` blocks from `first` with one location rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MapExtent {
    pub first: u64,
    pub count: u64,
    pub loc: ExtentLoc,
}

impl MapExtent {
    pub fn end(&self) -> u64 {
        self.first + self.count
    }
}

/// Sorted, disjoint extents with their locations, and the crcs their `Blocks` rules name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentMap {
    block_size: u32,
    extents: Vec<MapExtent>,
    crcs: Vec<u32>,
    blocks: u64,
}

/// Why extents and crcs do not make a map (see [`ExtentMap::from_parts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadExtent {
    /// Extent `i` is empty, overlaps or precedes the one before it, or overflows.
    Order(usize),
    /// Extent `i` names crcs the map does not have (or not the next ones in order).
    Crcs(usize),
}

impl ExtentMap {
    pub fn new(block_size: u32) -> ExtentMap {
        ExtentMap {
            block_size,
            extents: Vec::new(),
            crcs: Vec::new(),
            blocks: 0,
        }
    }

    /// A map from decoded parts, checked: sorted, disjoint, non-empty extents whose
    /// `Blocks` rules take the crcs one after the other, all of them.
    pub fn from_parts(
        block_size: u32,
        extents: Vec<MapExtent>,
        crcs: Vec<u32>,
    ) -> Result<ExtentMap, BadExtent> {
        let mut end = 0u64;
        let mut next_crc = 0u64;
        let mut blocks = 0u64;
        for (i, e) in extents.iter().enumerate() {
            let Some(e_end) = e.first.checked_add(e.count) else {
                return Err(BadExtent::Order(i));
            };
            if e.count == 0 || (i > 0 && e.first < end) {
                return Err(BadExtent::Order(i));
            }
            end = e_end;
            blocks += e.count;
            if let ExtentLoc::Blocks { crc_at, .. } = e.loc {
                if crc_at != next_crc {
                    return Err(BadExtent::Crcs(i));
                }
                next_crc += e.count;
                if next_crc > crcs.len() as u64 {
                    return Err(BadExtent::Crcs(i));
                }
            }
        }
        if next_crc != crcs.len() as u64 {
            return Err(BadExtent::Crcs(extents.len()));
        }
        Ok(ExtentMap {
            block_size,
            extents,
            crcs,
            blocks,
        })
    }

    /// The map of per-block locations sorted by block: runs that continue each other
    /// (zeroes, one record, bytes one after the other in one segment) become one extent.
    pub fn from_blocks(
        block_size: u32,
        entries: impl IntoIterator<Item = (u64, Location)>,
    ) -> ExtentMap {
        let mut m = ExtentMap::new(block_size);
        let bs = u64::from(block_size);
        for (b, loc) in entries {
            let continues = m.extents.last().is_some_and(|last| {
                last.end() == b
                    && match (last.loc, loc) {
                        (ExtentLoc::Zero, Location::Zero) => true,
                        (
                            ExtentLoc::Record { segment, offset },
                            Location::Data {
                                segment: s,
                                offset: o,
                            },
                        ) => segment == s && offset == o,
                        (
                            ExtentLoc::Blocks {
                                segment, offset, ..
                            },
                            Location::Block {
                                segment: s,
                                offset: o,
                                ..
                            },
                        ) => segment == s && offset + last.count * bs == o,
                        _ => false,
                    }
            });
            if let Location::Block { crc, .. } = loc {
                m.crcs.push(crc);
            }
            m.blocks += 1;
            if continues {
                if let Some(last) = m.extents.last_mut() {
                    last.count += 1;
                }
                continue;
            }
            let at = match loc {
                Location::Zero => ExtentLoc::Zero,
                Location::Data { segment, offset } => ExtentLoc::Record { segment, offset },
                Location::Block {
                    segment, offset, ..
                } => ExtentLoc::Blocks {
                    segment,
                    offset,
                    crc_at: m.crcs.len() as u64 - 1,
                },
            };
            m.extents.push(MapExtent {
                first: b,
                count: 1,
                loc: at,
            });
        }
        m
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Blocks the map holds.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// The extents, in block order.
    pub fn extents(&self) -> &[MapExtent] {
        &self.extents
    }

    /// The crcs, in the order the extents take them.
    pub fn crcs(&self) -> &[u32] {
        &self.crcs
    }

    /// The blocks the map holds, as a set.
    pub fn set(&self) -> ExtentSet {
        let mut s = ExtentSet::new();
        for e in &self.extents {
            s.push(e.first, e.end());
        }
        s
    }

    /// The location of block `block` of extent `e` (which must hold it).
    pub fn location_in(&self, e: &MapExtent, block: u64) -> Location {
        let k = block - e.first;
        match e.loc {
            ExtentLoc::Zero => Location::Zero,
            ExtentLoc::Record { segment, offset } => Location::Data { segment, offset },
            ExtentLoc::Blocks {
                segment,
                offset,
                crc_at,
            } => Location::Block {
                segment,
                offset: offset + k * u64::from(self.block_size),
                crc: usize::try_from(crc_at + k)
                    .ok()
                    .and_then(|i| self.crcs.get(i))
                    .copied()
                    .unwrap_or(0),
            },
        }
    }

    /// The index of the first extent that ends after `block`.
    fn extent_after(&self, block: u64) -> usize {
        self.extents.partition_point(|e| e.end() <= block)
    }

    /// Where `block` lives, if the map holds it (O(log extents)).
    pub fn find(&self, block: u64) -> Option<Location> {
        let e = self.extents.get(self.extent_after(block))?;
        (e.first <= block).then(|| self.location_in(e, block))
    }

    /// The extents in `first..end`, cut to it, in block order.
    pub fn range(&self, first: u64, end: u64) -> impl Iterator<Item = MapExtent> + '_ {
        let bs = self.block_size;
        self.extents[self.extent_after(first)..]
            .iter()
            .take_while(move |e| e.first < end)
            .map(move |e| {
                let f = e.first.max(first);
                MapExtent {
                    first: f,
                    count: e.end().min(end) - f,
                    loc: e.loc.skip(f - e.first, bs),
                }
            })
    }

    /// Every block and its location, in block order (O(blocks): for tests and checks of
    /// small maps).
    pub fn iter_blocks(&self) -> impl Iterator<Item = (u64, Location)> + '_ {
        self.extents
            .iter()
            .flat_map(move |e| (e.first..e.end()).map(move |b| (b, self.location_in(e, b))))
    }
}

/// What a new extent of an [`ExtentOverlay`] reads from.
#[derive(Debug, Clone, Copy)]
pub enum NewLoc<'a> {
    Zero,
    Record {
        segment: SegmentId,
        offset: u64,
    },
    /// The blocks' bytes from `offset`, one after the other, with one crc each.
    Blocks {
        segment: SegmentId,
        offset: u64,
        crcs: &'a [u32],
    },
}

/// Builds an [`ExtentMap`] from extents given oldest first: each replaces what it
/// overlaps. O(log extents) per extent put.
#[derive(Debug, Clone)]
pub struct ExtentOverlay {
    block_size: u32,
    tree: BTreeMap<u64, (u64, ExtentLoc)>,
    /// Every crc put, overwritten ones too (dropped by [`ExtentOverlay::freeze`]).
    crcs: Vec<u32>,
    blocks: u64,
}

impl ExtentOverlay {
    pub fn new(block_size: u32) -> ExtentOverlay {
        ExtentOverlay {
            block_size,
            tree: BTreeMap::new(),
            crcs: Vec::new(),
            blocks: 0,
        }
    }

    /// Blocks the overlay holds.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Extents the overlay holds.
    pub fn extent_count(&self) -> usize {
        self.tree.len()
    }

    /// What the overlay holds in memory, in bytes (its tree counted at ~1.5 times its
    /// entries, as a B-tree's nodes run about two-thirds full).
    pub fn memory_bytes(&self) -> u64 {
        let entry = std::mem::size_of::<(u64, (u64, ExtentLoc))>() as u64;
        self.tree.len() as u64 * entry * 3 / 2 + 4 * self.crcs.capacity() as u64
    }

    /// Keeps crcs for a later [`ExtentOverlay::put_loc`]; returns where they start.
    pub fn push_crcs(&mut self, crcs: &[u32]) -> u64 {
        let at = self.crcs.len() as u64;
        self.crcs.extend_from_slice(crcs);
        at
    }

    /// The rule for `count` blocks read from `loc`, its crcs kept for a later
    /// [`ExtentOverlay::put_loc`], and the blocks it covers: a short crc list (never given
    /// by the vault) would name crcs that do not exist, so only the blocks it covers.
    pub fn stage(&mut self, count: u64, loc: NewLoc<'_>) -> (u64, ExtentLoc) {
        match loc {
            NewLoc::Zero => (count, ExtentLoc::Zero),
            NewLoc::Record { segment, offset } => (count, ExtentLoc::Record { segment, offset }),
            NewLoc::Blocks {
                segment,
                offset,
                crcs,
            } => {
                let count = count.min(crcs.len() as u64);
                let crc_at = self.push_crcs(&crcs[..count as usize]);
                let loc = ExtentLoc::Blocks {
                    segment,
                    offset,
                    crc_at,
                };
                (count, loc)
            }
        }
    }

    /// `count` blocks from `first` now read from `loc`.
    pub fn put(&mut self, first: u64, count: u64, loc: NewLoc<'_>) {
        let (count, loc) = self.stage(count, loc);
        self.put_loc(first, count, loc);
    }

    /// `count` blocks from `first` now read from `loc`, whose crcs (if any) were kept
    /// with [`ExtentOverlay::push_crcs`].
    pub fn put_loc(&mut self, first: u64, count: u64, loc: ExtentLoc) {
        let Some(end) = first.checked_add(count).filter(|_| count > 0) else {
            return;
        };
        let bs = self.block_size;
        // The extent that starts before `first` and reaches into the new one: keep its
        // head, and its tail past the new one.
        if let Some((&f, &(n, l))) = self.tree.range(..first).next_back() {
            if f + n > first {
                self.tree.insert(f, (first - f, l));
                self.blocks -= f + n - first;
                if f + n > end {
                    self.tree.insert(end, (f + n - end, l.skip(end - f, bs)));
                    self.blocks += f + n - end;
                }
            }
        }
        // Extents that start inside the new one: gone, but for a tail past its end.
        while let Some((&f, &(n, l))) = self.tree.range(first..end).next() {
            self.tree.remove(&f);
            self.blocks -= n;
            if f + n > end {
                self.tree.insert(end, (f + n - end, l.skip(end - f, bs)));
                self.blocks += f + n - end;
            }
        }
        self.tree.insert(first, (count, loc));
        self.blocks += count;
    }

    /// The map, with only the crcs its extents still name.
    pub fn freeze(&self) -> ExtentMap {
        let mut m = ExtentMap::new(self.block_size);
        for (&first, &(count, loc)) in &self.tree {
            let loc = match loc {
                ExtentLoc::Blocks {
                    segment,
                    offset,
                    crc_at,
                } => {
                    let at = m.crcs.len() as u64;
                    let from = usize::try_from(crc_at).unwrap_or(usize::MAX);
                    let to = from.saturating_add(count as usize);
                    m.crcs
                        .extend_from_slice(self.crcs.get(from..to).unwrap_or_default());
                    ExtentLoc::Blocks {
                        segment,
                        offset,
                        crc_at: at,
                    }
                }
                other => other,
            };
            m.extents.push(MapExtent { first, count, loc });
            m.blocks += count;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Seq;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn set_of(runs: &[(u64, u64)]) -> (ExtentSet, BTreeSet<u64>) {
        let mut s = ExtentSet::new();
        let mut model = BTreeSet::new();
        for &(f, n) in runs {
            s.insert_range(f, f + n);
            model.extend(f..f + n);
        }
        (s, model)
    }

    fn check(s: &ExtentSet, model: &BTreeSet<u64>) {
        assert_eq!(s.iter().collect::<BTreeSet<_>>(), *model);
        assert_eq!(s.len(), model.len() as u64);
        // Canonical: sorted, disjoint, non-adjacent.
        for w in s.runs().windows(2) {
            assert!(w[0].1 < w[1].0, "{:?}", s.runs());
        }
    }

    proptest! {
        #[test]
        fn set_algebra_agrees_with_a_model(
            a in proptest::collection::vec((0u64..200, 1u64..20), 0..12),
            b in proptest::collection::vec((0u64..200, 1u64..20), 0..12),
            probe in 0u64..230,
            clip in (0u64..230, 0u64..60),
        ) {
            let (sa, ma) = set_of(&a);
            let (sb, mb) = set_of(&b);
            check(&sa, &ma);
            check(&sa.union(&sb), &ma.union(&mb).copied().collect());
            check(&sa.intersection(&sb), &ma.intersection(&mb).copied().collect());
            check(&sa.difference(&sb), &ma.difference(&mb).copied().collect());
            prop_assert_eq!(sa.contains(probe), ma.contains(&probe));
            let (cf, cn) = clip;
            let want: BTreeSet<u64> = ma.range(cf..cf + cn).copied().collect();
            check(&sa.clip(cf, cf + cn), &want);
            prop_assert_eq!(sa.intersects(cf, cf + cn), !want.is_empty());
            let r = sb.to_roaring();
            let want: BTreeSet<u64> = ma.intersection(&mb).copied().collect();
            prop_assert_eq!(sa.filter_roaring(&r).iter().collect::<BTreeSet<_>>(), want);
            check(&ExtentSet::from_roaring(&sa.to_roaring()), &ma);
        }

        /// Extents put in record order read as a per-block model says, and freeze into a
        /// map that agrees block by block and rebuilds from its blocks.
        #[test]
        fn an_overlay_agrees_with_a_per_block_model(
            ops in proptest::collection::vec((0u64..120, 1u64..24, 0u8..3), 0..40),
        ) {
            let bs = 512u32;
            let mut o = ExtentOverlay::new(bs);
            let mut model = BTreeMap::new();
            for (i, &(first, count, kind)) in ops.iter().enumerate() {
                let segment = SegmentId(Seq(i as u64 + 1));
                let offset = 1000 * i as u64;
                let crcs: Vec<u32> = (0..count).map(|k| (i as u32) << 8 | k as u32).collect();
                let loc = match kind {
                    0 => NewLoc::Zero,
                    1 => NewLoc::Record { segment, offset },
                    _ => NewLoc::Blocks { segment, offset, crcs: &crcs },
                };
                o.put(first, count, loc);
                for k in 0..count {
                    model.insert(first + k, match kind {
                        0 => Location::Zero,
                        1 => Location::Data { segment, offset },
                        _ => Location::Block {
                            segment,
                            offset: offset + k * u64::from(bs),
                            crc: crcs[k as usize],
                        },
                    });
                }
                prop_assert_eq!(o.blocks(), model.len() as u64);
            }
            let m = o.freeze();
            let got: BTreeMap<u64, Location> = m.iter_blocks().collect();
            prop_assert_eq!(&got, &model);
            for b in 0..150 {
                prop_assert_eq!(m.find(b), model.get(&b).copied());
            }
            let again = ExtentMap::from_parts(bs, m.extents().to_vec(), m.crcs().to_vec());
            prop_assert_eq!(again.as_ref(), Ok(&m));
            let rebuilt = ExtentMap::from_blocks(bs, model.clone());
            prop_assert_eq!(rebuilt.iter_blocks().collect::<BTreeMap<_, _>>(), model.clone());
            prop_assert!(rebuilt.extents().len() <= m.extents().len());
            let cut: Vec<(u64, Location)> = m
                .range(30, 70)
                .flat_map(|e| {
                    let one = ExtentMap::from_parts(bs, vec![MapExtent { loc: match e.loc {
                        ExtentLoc::Blocks { segment, offset, .. } => ExtentLoc::Blocks { segment, offset, crc_at: 0 },
                        l => l,
                    }, ..e }], match e.loc {
                        ExtentLoc::Blocks { crc_at, .. } => m.crcs()[crc_at as usize..(crc_at + e.count) as usize].to_vec(),
                        _ => Vec::new(),
                    }).expect("one extent");
                    one.iter_blocks().collect::<Vec<_>>()
                })
                .collect();
            let want: Vec<(u64, Location)> = model.range(30..70).map(|(b, l)| (*b, *l)).collect();
            prop_assert_eq!(cut, want);
        }
    }

    #[test]
    fn a_whole_volume_is_one_run() {
        let tib_blocks = (1u64 << 40) / 4096;
        let mut o = ExtentOverlay::new(4096);
        o.put(0, tib_blocks, NewLoc::Zero);
        o.put(10, 1, NewLoc::Zero);
        let m = o.freeze();
        assert_eq!(m.blocks(), tib_blocks);
        assert_eq!(m.extents().len(), 3);
        assert_eq!(m.set().run_count(), 1);
        assert_eq!(m.find(tib_blocks - 1), Some(Location::Zero));
        assert_eq!(m.find(tib_blocks), None);
    }

    #[test]
    fn bad_parts_are_refused() {
        let z = |first, count| MapExtent {
            first,
            count,
            loc: ExtentLoc::Zero,
        };
        assert_eq!(
            ExtentMap::from_parts(512, vec![z(0, 4), z(3, 1)], vec![]),
            Err(BadExtent::Order(1))
        );
        assert_eq!(
            ExtentMap::from_parts(512, vec![z(0, 0)], vec![]),
            Err(BadExtent::Order(0))
        );
        assert_eq!(
            ExtentMap::from_parts(512, vec![z(u64::MAX, 2)], vec![]),
            Err(BadExtent::Order(0))
        );
        let b = MapExtent {
            first: 9,
            count: 2,
            loc: ExtentLoc::Blocks {
                segment: SegmentId(Seq(1)),
                offset: 0,
                crc_at: 0,
            },
        };
        assert_eq!(
            ExtentMap::from_parts(512, vec![b], vec![1]),
            Err(BadExtent::Crcs(0))
        );
        assert_eq!(
            ExtentMap::from_parts(512, vec![z(0, 1)], vec![1]),
            Err(BadExtent::Crcs(1))
        );
        assert!(ExtentMap::from_parts(512, vec![z(0, 1), b], vec![1, 2]).is_ok());
    }
}
