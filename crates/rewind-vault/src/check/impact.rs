//! Which points a problem breaks. Damage that some blocks are read from (a base image block,
//! a record's data, a delta map's entries) breaks reads of those blocks from the point the
//! damage is first read until each block is written again. The check walks the write log
//! in seq order anyway: a [`Tracker`] watches the damaged blocks and ends each one's range
//! at the first record after it that writes (zeroes, trims) the block.

use rewind_format::Seq;
use roaring::RoaringTreemap;

use super::report::PointRange;

/// The end of a range: a seq, or the newest point (known when the check ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upto {
    Seq(Seq),
    Newest,
}

/// Damaged blocks being followed through the log.
#[derive(Debug)]
struct Watch {
    problem: usize,
    /// The first point that reads the blocks from the damage.
    from: Seq,
    pending: RoaringTreemap,
    /// Blocks whose range ended, by the last point that still read them from the damage.
    ended: Vec<(Seq, RoaringTreemap)>,
}

/// The ranges of points every problem breaks, as the check finds them.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    watches: Vec<Watch>,
    /// Ranges of points that cannot be read at all, per problem.
    whole: Vec<(usize, Seq, Upto)>,
}

impl Tracker {
    /// Reads of `blocks` break from point `from` on, until each block is written again.
    pub(crate) fn watch(&mut self, problem: usize, from: Seq, blocks: RoaringTreemap) {
        if !blocks.is_empty() {
            self.watches.push(Watch {
                problem,
                from,
                pending: blocks,
                ended: Vec::new(),
            });
        }
    }

    /// Every read of points `from..=to` breaks.
    pub(crate) fn whole(&mut self, problem: usize, from: Seq, to: Upto) {
        if let Upto::Seq(to) = to {
            if to < from {
                return;
            }
        }
        self.whole.push((problem, from, to));
    }

    /// The record `seq` writes (or zeroes, trims) blocks `first..first + count`.
    pub(crate) fn written(&mut self, seq: Seq, first: u64, count: u64) {
        let end = first.saturating_add(count);
        for w in &mut self.watches {
            if seq <= w.from || w.pending.is_empty() {
                continue;
            }
            let mut it = w.pending.iter();
            it.advance_to(first);
            let hit: RoaringTreemap = it.take_while(|&b| b < end).collect();
            if !hit.is_empty() {
                w.pending -= &hit;
                end_at(&mut w.ended, Seq(seq.0 - 1), hit);
            }
        }
    }

    /// The record `seq` writes `blocks` (a damaged record whose blocks only its interval's
    /// delta map tells).
    pub(crate) fn written_set(&mut self, seq: Seq, blocks: &RoaringTreemap) {
        for w in &mut self.watches {
            if seq <= w.from || w.pending.is_empty() {
                continue;
            }
            let hit = &w.pending & blocks;
            if !hit.is_empty() {
                w.pending -= &hit;
                end_at(&mut w.ended, Seq(seq.0 - 1), hit);
            }
        }
    }

    /// The ranges per problem, with `newest` for what was never written again; snapshots
    /// (name, seq) are put into the ranges that hold them.
    pub(crate) fn finish(
        self,
        newest: Seq,
        snapshots: &[(String, Seq)],
    ) -> Vec<(usize, PointRange)> {
        let mut out = Vec::new();
        let named = |from: Seq, to: Seq| -> Vec<String> {
            snapshots
                .iter()
                .filter(|(_, s)| (from..=to).contains(s))
                .map(|(n, _)| n.clone())
                .collect()
        };
        for (problem, from, to) in self.whole {
            let to = match to {
                Upto::Seq(s) => s,
                Upto::Newest => newest,
            };
            if to >= from {
                out.push((
                    problem,
                    PointRange {
                        from,
                        to,
                        blocks: None,
                        snapshots: named(from, to),
                    },
                ));
            }
        }
        for mut w in self.watches {
            if !w.pending.is_empty() {
                let rest = std::mem::take(&mut w.pending);
                end_at(&mut w.ended, newest.max(w.from), rest);
            }
            for (to, blocks) in w.ended {
                out.push((
                    w.problem,
                    PointRange {
                        from: w.from,
                        to,
                        blocks: Some(blocks),
                        snapshots: named(w.from, to),
                    },
                ));
            }
        }
        out.sort_by_key(|(p, r)| (*p, r.from, r.blocks.is_some(), r.to));
        out
    }
}

fn end_at(ended: &mut Vec<(Seq, RoaringTreemap)>, to: Seq, blocks: RoaringTreemap) {
    match ended.iter_mut().find(|(t, _)| *t == to) {
        Some((_, b)) => *b |= blocks,
        None => ended.push((to, blocks)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u64]) -> RoaringTreemap {
        v.iter().copied().collect()
    }

    #[test]
    fn each_block_ends_where_it_is_written_again() {
        let mut t = Tracker::default();
        t.watch(0, Seq(0), set(&[5, 7, 9]));
        t.watch(1, Seq(4), set(&[5]));
        t.written(Seq(3), 5, 1); // ends block 5 of problem 0 at seq 2; problem 1 starts later
        t.written(Seq(4), 5, 1); // at problem 1's own point: not after it
        t.written(Seq(6), 0, 8); // block 7 of problem 0 at 5, block 5 of problem 1 at 5
        t.whole(2, Seq(3), Upto::Newest);
        t.whole(3, Seq(3), Upto::Seq(Seq(2))); // empty: dropped
        let snaps = vec![("a".to_string(), Seq(2)), ("b".to_string(), Seq(8))];
        let got = t.finish(Seq(10), &snaps);
        let r = |p: usize, from: u64, to: u64, blocks: Option<&[u64]>, snaps: &[&str]| {
            (
                p,
                PointRange {
                    from: Seq(from),
                    to: Seq(to),
                    blocks: blocks.map(set),
                    snapshots: snaps.iter().map(|s| s.to_string()).collect(),
                },
            )
        };
        assert_eq!(
            got,
            vec![
                r(0, 0, 2, Some(&[5]), &["a"]),
                r(0, 0, 5, Some(&[7]), &["a"]),
                r(0, 0, 10, Some(&[9]), &["a", "b"]),
                r(1, 4, 5, Some(&[5]), &[]),
                r(2, 3, 10, None, &["b"]),
            ]
        );
    }
}
