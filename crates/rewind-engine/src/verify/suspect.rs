//! Suspect marking: which past points are not trustworthy.
//!
//! When the vault's copy of a block differs from the primary at the scan's point, the copy
//! came from the newest delta map that changed the block (or from the base image, if none
//! did), and every point that reads the block from there may be wrong. So, before sync
//! copies anything: take the newest delta map before the scan, mark it suspect for the
//! discrepant blocks it changed, take those blocks out of the compare map, and walk back
//! the chain until the compare map is empty; blocks still left at the base mark the base
//! image suspect.

use std::sync::Arc;

use rewind_format::delta_map::DeltaMap;
use rewind_vault::{Seq, SuspectMark, SUSPECT_DIFFERS, SUSPECT_UNREADABLE};
use roaring::RoaringTreemap;

/// Walks `chain` (the delta maps before the scan, **newest first**, each with its
/// interval) and returns the marks: one per delta map that gave the vault a discrepant
/// block, then one for the base image if blocks are left. `compare` is the revised
/// compare delta map; `unreadable` the blocks among them that could not be read (they
/// set the reason [`SUSPECT_UNREADABLE`], the others [`SUSPECT_DIFFERS`]). Stops loading
/// maps as soon as every block is accounted for.
pub fn walk_back<E>(
    compare: &RoaringTreemap,
    unreadable: &RoaringTreemap,
    chain: impl IntoIterator<Item = Result<((Seq, Seq), Arc<DeltaMap>), E>>,
) -> Result<Vec<SuspectMark>, E> {
    let mut left = compare.clone();
    let mut marks = Vec::new();
    let mut chain = chain.into_iter();
    while !left.is_empty() {
        let Some(entry) = chain.next() else { break };
        let (interval, map) = entry?;
        let hit = map.blocks.filter_roaring(&left);
        if hit.is_empty() {
            continue;
        }
        left -= &hit;
        marks.push(mark(Some(interval), hit, unreadable));
    }
    if !left.is_empty() {
        marks.push(mark(None, left, unreadable));
    }
    Ok(marks)
}

fn mark(
    interval: Option<(Seq, Seq)>,
    blocks: RoaringTreemap,
    unreadable: &RoaringTreemap,
) -> SuspectMark {
    let bad = (&blocks & unreadable).len();
    let mut reasons = 0;
    if bad > 0 {
        reasons |= SUSPECT_UNREADABLE;
    }
    if bad < blocks.len() {
        reasons |= SUSPECT_DIFFERS;
    }
    SuspectMark {
        interval,
        blocks,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rewind_format::delta_map::{Interval, Location};

    fn map(from: u64, to: u64, blocks: &[u64]) -> ((Seq, Seq), Arc<DeltaMap>) {
        let iv = Interval {
            seq_from: Seq(from),
            seq_to: Seq(to),
            time_from_ns: 0,
            time_to_ns: 0,
        };
        let entries = blocks.iter().map(|&b| (b, Location::Zero)).collect();
        (
            (Seq(from), Seq(to)),
            Arc::new(DeltaMap::new(iv, 4096, entries)),
        )
    }

    fn set(b: &[u64]) -> RoaringTreemap {
        b.iter().copied().collect()
    }

    #[test]
    fn marks_the_newest_map_of_each_block_and_the_base_for_the_rest() {
        // Oldest first: maps 1-5, 6-9, 10-12.
        let chain = [map(1, 5, &[1, 2, 3]), map(6, 9, &[2, 7]), map(10, 12, &[9])];
        let compare = set(&[2, 3, 7, 40]);
        let unreadable = set(&[40]);
        let marks = walk_back(
            &compare,
            &unreadable,
            chain.iter().rev().cloned().map(Ok::<_, ()>),
        )
        .unwrap();
        type Mark = (Option<(u64, u64)>, Vec<u64>, u8);
        let got: Vec<Mark> = marks
            .iter()
            .map(|m| {
                (
                    m.interval.map(|(a, b)| (a.0, b.0)),
                    m.blocks.iter().collect(),
                    m.reasons,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (Some((6, 9)), vec![2, 7], SUSPECT_DIFFERS),
                (Some((1, 5)), vec![3], SUSPECT_DIFFERS),
                (None, vec![40], SUSPECT_UNREADABLE),
            ]
        );
    }

    #[test]
    fn stops_loading_maps_once_everything_is_accounted_for() {
        let compare = set(&[9]);
        let mut loaded = 0;
        let chain = [map(10, 12, &[9]), map(6, 9, &[9])];
        let marks = walk_back(
            &compare,
            &RoaringTreemap::new(),
            chain.iter().cloned().map(|m| {
                loaded += 1;
                Ok::<_, ()>(m)
            }),
        )
        .unwrap();
        assert_eq!(marks.len(), 1);
        assert_eq!(loaded, 1, "the older map was not needed");
        // Nothing discrepant: nothing marked, no map loaded.
        let marks = walk_back(
            &RoaringTreemap::new(),
            &RoaringTreemap::new(),
            std::iter::once(Err::<((Seq, Seq), Arc<DeltaMap>), &str>("not loaded")),
        )
        .unwrap();
        assert!(marks.is_empty());
    }
}
