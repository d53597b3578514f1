//! Checking a delta map file the way the vault reads it (head, then entries; older versions
//! whole), against its manifest entry, and against the write log it indexes.

use rewind_format::delta_map::{DeltaMap, Location};
use rewind_format::extents::{ExtentLoc, ExtentMap, MapExtent};
use rewind_format::manifest::MapEntry;
use roaring::RoaringTreemap;

use super::report::Fault;
use super::source::{Opened, Source};
use crate::error::Corruption;

/// What is wrong with a delta map file.
#[derive(Debug)]
pub(crate) struct MapDamage {
    pub offset: u64,
    pub length: u64,
    pub structure: &'static str,
    pub fault: Fault,
    /// The map cannot be loaded at all (every point whose chain holds it fails); otherwise
    /// only lookups that need its entries fail: those of `blocks`.
    pub whole: bool,
    pub blocks: Option<RoaringTreemap>,
}

/// Reads and checks the map of `e` in a volume of `blocks` blocks of `bs` bytes: the map
/// with its entries, or what is wrong.
pub(crate) fn load(
    src: &mut Source<'_>,
    f: &Opened,
    e: &MapEntry,
    bs: u32,
    blocks: u64,
) -> Result<DeltaMap, MapDamage> {
    let len = f.len;
    let whole_file = |fault| MapDamage {
        offset: 0,
        length: len,
        structure: "delta map",
        fault,
        whole: true,
        blocks: None,
    };
    let bytes = src.read_all(f).map_err(whole_file)?;
    let decode = |at: u64, err: rewind_format::DecodeError| {
        Fault::Corrupted(Corruption::Decode(err.shifted(at)))
    };
    let head_len = DeltaMap::head_len(&bytes).map_err(|err| whole_file(decode(0, err)))?;
    let map = match head_len {
        None => DeltaMap::decode_owned(bytes).map_err(|err| whole_file(decode(0, err)))?,
        Some(hl) => {
            let head = bytes.get(..hl).ok_or_else(|| {
                whole_file(Fault::Corrupted(Corruption::Length {
                    expected: hl as u64,
                    actual: len,
                }))
            })?;
            let map = DeltaMap::decode_head(head).map_err(|err| MapDamage {
                offset: 0,
                length: hl as u64,
                structure: "delta map head (header and block set)",
                fault: decode(0, err),
                whole: true,
                blocks: None,
            })?;
            let (at, elen) = map.entries_range();
            if at + elen != len {
                return Err(MapDamage {
                    offset: at,
                    length: len - at.min(len),
                    structure: "delta map entries",
                    fault: Fault::Corrupted(Corruption::Length {
                        expected: at + elen,
                        actual: len,
                    }),
                    whole: true,
                    blocks: None,
                });
            }
            map.attach_entries(bytes[at as usize..].to_vec())
                .map_err(|err| MapDamage {
                    offset: at,
                    length: elen,
                    structure: "delta map entries",
                    fault: decode(0, err),
                    // A small map is read whole with its head (see `shared::HEAD_GUESS`).
                    whole: len <= crate::shared::HEAD_GUESS,
                    blocks: Some(map.blocks.to_roaring()),
                })?;
            map
        }
    };
    let inconsistent = |what| whole_file(Fault::Corrupted(Corruption::Inconsistent(what)));
    if map.interval != e.interval || map.block_size != bs || map.len() as u64 != e.blocks_changed {
        return Err(inconsistent("delta map does not match the manifest"));
    }
    if map.last_block().is_some_and(|b| b >= blocks) {
        return Err(inconsistent("delta map names a block outside the volume"));
    }
    Ok(map)
}

/// Where `map`'s entries disagree with `expected` (the extents a replay of the interval's
/// records gives): the file offset of the map's entries and every block that disagrees.
/// `None`: they agree. O(extents), whatever the blocks they cover.
pub(crate) fn compare(map: &DeltaMap, expected: &ExtentMap) -> Option<(u64, RoaringTreemap)> {
    let at = map.entries_range().0;
    let Some(got) = map.entries() else {
        return Some((at, expected.set().to_roaring()));
    };
    let (got_set, want_set) = (got.set(), expected.set());
    // Blocks only one side has, then the rules of the blocks both have, piece by piece.
    let mut bad = got_set
        .difference(&want_set)
        .union(&want_set.difference(&got_set));
    let mut wrong: Vec<(u64, u64)> = Vec::new();
    for e in got.extents() {
        for w in expected.range(e.first, e.end()) {
            for g in got.range(w.first, w.end()) {
                same_rule(got, &g, expected, &w, &mut wrong);
            }
        }
    }
    for (f, e) in wrong {
        bad.insert_range(f, e);
    }
    if bad.is_empty() {
        None
    } else {
        Some((at, bad.to_roaring()))
    }
}

/// Pushes the blocks where piece `g` of `got` and piece `w` of `want` (the same blocks)
/// say different things.
fn same_rule(
    got: &ExtentMap,
    g: &MapExtent,
    want: &ExtentMap,
    w: &MapExtent,
    wrong: &mut Vec<(u64, u64)>,
) {
    match (g.loc, w.loc) {
        (ExtentLoc::Blocks { .. }, ExtentLoc::Blocks { .. }) => {
            for b in g.first..g.end() {
                if got.location_in(g, b) != want.location_in(w, b) {
                    wrong.push((b, b + 1));
                }
            }
        }
        (a, b) if a == b => {}
        _ => wrong.push((g.first, g.end())),
    }
}

/// The blocks `map` takes from bytes `from..to` of segment `segment`: extents of whole
/// records there (compressed: read and verified whole) and single blocks there
/// (`damaged_block` says whether the block's own bytes fail their crc).
pub(crate) fn blocks_from(
    map: &DeltaMap,
    segment: rewind_format::SegmentId,
    from: u64,
    to: u64,
    mut damaged_block: impl FnMut(u64, u32) -> bool,
) -> RoaringTreemap {
    let mut out = RoaringTreemap::new();
    let Some(entries) = map.entries() else {
        return out;
    };
    for e in entries.extents() {
        match e.loc {
            ExtentLoc::Record { segment: s, offset }
                if s == segment && (from..to).contains(&offset) =>
            {
                out.insert_range(e.first..e.end());
            }
            ExtentLoc::Blocks { segment: s, .. } if s == segment => {
                for b in e.first..e.end() {
                    if let Location::Block { offset, crc, .. } = entries.location_in(e, b) {
                        if (from..to).contains(&offset) && damaged_block(offset, crc) {
                            out.insert(b);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}
