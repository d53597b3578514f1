//! Suspect marking: which delta maps (or the base image) gave the vault a copy of some
//! blocks that sync found wrong, and which points read those copies.
//!
//! The marks live in the manifest (delta map files are immutable): the map's entry is
//! flagged suspect and a suspect entry lists its blocks and why. Deciding *what* to mark
//! (the walk back along the chain) is the engine's; the vault stores and answers.

use std::sync::Arc;

use rewind_format::delta_map::{DeltaMap, FLAG_SUSPECT};
use rewind_format::manifest::SuspectEntry;
use roaring::RoaringTreemap;

use super::*;
use crate::view::Origin;

/// Blocks to mark suspect in one delta map or in the base image.
#[derive(Debug, Clone, PartialEq)]
pub struct SuspectMark {
    /// The delta map's interval (seq_from, seq_to); `None`: the base image.
    pub interval: Option<(Seq, Seq)>,
    pub blocks: RoaringTreemap,
    /// [`rewind_format::manifest::SUSPECT_DIFFERS`] and/or `SUSPECT_UNREADABLE`.
    pub reasons: u8,
}

impl Vault {
    /// The delta map chain as the manifest lists it, oldest first.
    pub fn chain(&self) -> Vec<MapEntry> {
        self.lock().manifest.maps.clone()
    }

    /// The delta map of a chain entry, loaded (once) and verified.
    pub fn delta_map(&self, e: &MapEntry) -> Result<Arc<DeltaMap>> {
        self.shared.map(e)
    }

    /// Every suspect entry (delta maps and the base image).
    pub fn suspects(&self) -> Vec<SuspectEntry> {
        self.lock().manifest.suspects.clone()
    }

    /// Marks blocks of delta maps (and the base image) suspect, in one manifest commit.
    /// `scan_seq` is the point the sync compared with the primary; it must be sealed. Marks
    /// on a map or the base that is already suspect add to its blocks and reasons.
    pub fn mark_suspect(&self, marks: &[SuspectMark], scan_seq: Seq) -> Result<()> {
        let marks: Vec<&SuspectMark> = marks.iter().filter(|m| !m.blocks.is_empty()).collect();
        if marks.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock_for_edit()?;
        if scan_seq >= inner.manifest.next_seq {
            return Err(VaultError::NotSealed { seq: scan_seq });
        }
        let mut m = inner.manifest.clone();
        let now = now_ns();
        for mark in marks {
            if let Some((from, to)) = mark.interval {
                let e = m
                    .maps
                    .iter_mut()
                    .find(|e| e.interval.seq_from == from && e.interval.seq_to == to)
                    .ok_or(VaultError::UnknownInterval { from, to })?;
                e.flags |= FLAG_SUSPECT;
            }
            if mark.blocks.max().is_some_and(|b| b >= self.shared.blocks) {
                return Err(VaultError::OutOfRange {
                    first_block: mark.blocks.max().unwrap_or(0),
                    end: mark.blocks.max().unwrap_or(0) + 1,
                    blocks: self.shared.blocks,
                });
            }
            match m.suspects.iter_mut().find(|s| s.interval == mark.interval) {
                Some(s) => {
                    s.blocks |= &mark.blocks;
                    s.reasons |= mark.reasons;
                    s.marked_ns = now;
                    s.scan_seq = s.scan_seq.max(scan_seq);
                }
                None => m.suspects.push(SuspectEntry {
                    interval: mark.interval,
                    blocks: mark.blocks.clone(),
                    reasons: mark.reasons,
                    marked_ns: now,
                    scan_seq,
                }),
            }
        }
        self.commit_locked(&mut inner, m)
    }

    /// The suspect blocks `view` reads: for each suspect entry, the blocks of it whose
    /// data at the view's point still comes from the suspect map (or the base image). A
    /// point inside a suspect interval counts the interval's suspect blocks it has replayed
    /// (whether or not its replay reached the suspect write). Empty when nothing is
    /// suspect; cheap for points before a suspect map.
    pub fn suspect_reads(&self, view: &PointView) -> Result<Vec<SuspectEntry>> {
        let suspects = self.lock().manifest.suspects.clone();
        let p = view.point().seq;
        let mut out = Vec::new();
        for s in suspects {
            let want = match s.interval {
                Some((from, _)) if p < from => continue,
                Some((from, _)) => Origin::Interval(from),
                None => Origin::Base,
            };
            let mut blocks = RoaringTreemap::new();
            for b in s.blocks.iter() {
                if view.origin(b)? == want {
                    blocks.insert(b);
                }
            }
            if !blocks.is_empty() {
                out.push(SuspectEntry { blocks, ..s });
            }
        }
        Ok(out)
    }
}
