//! Checking a delta map file the way the vault reads it (head, then entries; older versions
//! whole), against its manifest entry, and against the write log it indexes.

use rewind_format::delta_map::{DeltaMap, Location};
use rewind_format::manifest::MapEntry;
use roaring::RoaringTreemap;

use super::report::Fault;
use super::source::{Opened, Source};
use crate::error::Corruption;

/// Bytes of a version 3 entry.
const ENTRY_LEN: u64 = 24;

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
                    blocks: Some(map.blocks.clone()),
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

/// Where `map`'s entries disagree with `expected` (the locations a replay of the interval's
/// records gives, by block): the file offset of the first disagreeing entry and every
/// block that disagrees. `None`: they agree.
pub(crate) fn compare(
    map: &DeltaMap,
    expected: &[(u64, Location)],
) -> Option<(u64, RoaringTreemap)> {
    let at = map.entries_range().0;
    let mut first = None;
    let mut bad = RoaringTreemap::new();
    let mut want = expected.iter().peekable();
    for (i, (b, loc)) in map.iter().enumerate() {
        let here = if at == 0 {
            0
        } else {
            at + i as u64 * ENTRY_LEN
        };
        // Blocks the log wrote that the map lacks.
        while let Some((w, _)) = want.next_if(|(w, _)| *w < b) {
            bad.insert(*w);
            first.get_or_insert(here);
        }
        match want.next_if(|(w, _)| *w == b) {
            Some((_, l)) if *l == loc => {}
            _ => {
                bad.insert(b);
                first.get_or_insert(here);
            }
        }
    }
    for (w, _) in want {
        bad.insert(*w);
    }
    if bad.is_empty() {
        None
    } else {
        Some((first.unwrap_or(at), bad))
    }
}

/// The blocks `map` takes from bytes `from..to` of segment `segment`: entries of whole
/// records there (compressed: read and verified whole) and entries of single blocks there
/// (`damaged_block` says whether the block's own bytes fail their crc).
pub(crate) fn blocks_from(
    map: &DeltaMap,
    segment: rewind_format::SegmentId,
    from: u64,
    to: u64,
    mut damaged_block: impl FnMut(u64, u32) -> bool,
) -> RoaringTreemap {
    let mut out = RoaringTreemap::new();
    for (b, loc) in map.iter() {
        match loc {
            Location::Data { segment: s, offset }
                if s == segment && (from..to).contains(&offset) =>
            {
                out.insert(b);
            }
            Location::Block {
                segment: s,
                offset,
                crc,
            } if s == segment && (from..to).contains(&offset) && damaged_block(offset, crc) => {
                out.insert(b);
            }
            _ => {}
        }
    }
    out
}
