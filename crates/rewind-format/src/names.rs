//! File names in a vault. Every name parses back into what it was made from.
//!
//! ```text
//! manifest-<generation:020>           the root; the highest generation is current
//! log/seg-<first seq:020>.log         a write log segment
//! maps/map-<from:020>-<to:020>.dmap   the delta map of seq from..=to
//! base/base.img, base/base.sums       the base image and its per-block checksums
//! LOCK                                held by the one writer
//! control                             where a running server's control socket is
//! drl                                 the dirty region log of the primary
//! ```

use crate::{Generation, SegmentId, Seq};

pub const LOG_DIR: &str = "log";
pub const MAPS_DIR: &str = "maps";
pub const BASE_DIR: &str = "base";
pub const BASE_IMAGE: &str = "base.img";
pub const BASE_SUMS: &str = "base.sums";
pub const LOCK: &str = "LOCK";
/// The control pointer of a running `rewind serve` (see [`crate::control`]).
pub const CONTROL: &str = "control";
/// The dirty region log (see [`crate::drl`]).
pub const DRL: &str = "drl";
/// Suffix of files being written; never part of a committed vault.
pub const TMP_SUFFIX: &str = ".tmp";

pub fn manifest(g: Generation) -> String {
    format!("manifest-{:020}", g.0)
}

pub fn parse_manifest(name: &str) -> Option<Generation> {
    digits(name.strip_prefix("manifest-")?).map(Generation)
}

pub fn segment(id: SegmentId) -> String {
    format!("seg-{:020}.log", id.0 .0)
}

pub fn parse_segment(name: &str) -> Option<SegmentId> {
    digits(name.strip_prefix("seg-")?.strip_suffix(".log")?).map(|n| SegmentId(Seq(n)))
}

pub fn delta_map(from: Seq, to: Seq) -> String {
    format!("map-{:020}-{:020}.dmap", from.0, to.0)
}

pub fn parse_delta_map(name: &str) -> Option<(Seq, Seq)> {
    let rest = name.strip_prefix("map-")?.strip_suffix(".dmap")?;
    let (a, b) = rest.split_once('-')?;
    Some((Seq(digits(a)?), Seq(digits(b)?)))
}

fn digits(s: &str) -> Option<u64> {
    if s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn names_round_trip(a in 0u64..u64::MAX, b in 0u64..u64::MAX) {
            proptest::prop_assert_eq!(parse_manifest(&manifest(Generation(a))), Some(Generation(a)));
            proptest::prop_assert_eq!(parse_segment(&segment(SegmentId(Seq(a)))), Some(SegmentId(Seq(a))));
            proptest::prop_assert_eq!(parse_delta_map(&delta_map(Seq(a), Seq(b))), Some((Seq(a), Seq(b))));
        }
    }

    #[test]
    fn other_names_do_not_parse() {
        assert_eq!(parse_segment("seg-1.log"), None);
        assert_eq!(parse_manifest("manifest-00000000000000000001.tmp"), None);
        assert_eq!(parse_delta_map("map-x-y.dmap"), None);
    }
}
