//! The primary written behind the write log.
//!
//! A journal must put every byte of a host write on the disk; writing the primary as well,
//! on the same disk and before the reply, halves what a stream of large writes gets (the
//! 1 MiB sequential job ran at 0.41-0.53x the disk's own append rate with both written
//! direct). So a large, block-aligned host write goes to the write log only: its blocks
//! are listed here, with the places of the records that hold them, and the primary is
//! written from those records later, in the background ([`crate::intercept::LiveVolume::
//! apply_behind`]) or at once when something needs the primary itself there (a smaller
//! write that reads an edge block, a zero, a clean stop).
//!
//! Until then the live volume answers reads of those blocks from the records, and reports
//! them as data to block status. Crash safety: the dirty region log's flag "behind" is set
//! on disk before the first such write after a checkpoint; the checkpoint never passes the
//! oldest write still listed; after an unclean stop with the flag set, the records after
//! the checkpoint are copied into the primary in any boot (see [`crate::recovery`]).
//!
//! A deferred write's data is kept in memory until its records are durable ([`Kept`]):
//! when the log fails under it, reads still get it and it goes into the primary (see
//! `LiveVolume::salvage_behind`), as with a write through the primary.
//!
//! On by default for writes of 256 KiB and more (`REWIND_WRITE_BEHIND`, [`from_env`]; the
//! campaigns defer writes of 64 KiB and more, so that power cuts and faults land among
//! them).
//!
//! Retention (when segments are deleted) must treat every listed write as a lease on the
//! segment its records are in, until it is written into the primary.
//!
//! This module is the list: block runs -> the record that holds them, newest wins.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rewind_vault::{RecordPlace, Seq};

/// Host writes at least this large (and block-aligned) are written behind.
pub const DEFAULT_MIN_BYTES: usize = 256 << 10;
/// Most bytes listed at once: beyond it large writes write the primary as they go again.
/// It bounds what a recovery after a crash copies back.
pub const MAX_BYTES: u64 = 8 << 30;
/// Most runs listed at once (each about 80 bytes of memory).
pub const MAX_RUNS: usize = 1 << 18;
/// Most bytes of deferred writes kept in memory until their records are durable: past it
/// large writes write the primary as they go again.
pub const MAX_KEPT: u64 = 256 << 20;
/// Kept bytes past which the background applier flushes the log (so that they can go).
pub const FLUSH_KEPT: u64 = 128 << 20;

/// A deferred host write's data, kept until its records are durable in the log: until
/// then the log may still lose them (a failed write or sync of the log), and this copy,
/// like the page cache of a primary written through, is what reads and the primary get.
#[derive(Debug)]
pub(crate) struct Kept {
    /// Its last record: kept until the log is durable up to it.
    seq: Seq,
    first_block: u64,
    data: std::sync::RwLock<Option<Box<[u8]>>>,
}

impl Kept {
    /// Copies blocks `first..` into `out` if the data is still kept.
    pub(crate) fn copy(&self, first: u64, block_size: u64, out: &mut [u8]) -> bool {
        let g = self.data.read().unwrap_or_else(|p| p.into_inner());
        let Some(d) = g.as_ref() else { return false };
        let at = ((first - self.first_block) * block_size) as usize;
        match d.get(at..at + out.len()) {
            Some(src) => {
                out.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// One listed run: blocks `first..end` (the map key is `first`) read from `place`.
#[derive(Debug, Clone)]
struct Run {
    end: u64,
    place: RecordPlace,
    kept: Option<Arc<Kept>>,
    /// When it was listed (seconds since the list was made), to apply old runs first
    /// under load.
    at_s: u32,
}

/// A piece of a listed run: blocks `first..end` as `place` holds them.
#[derive(Debug, Clone)]
pub struct Piece {
    pub first: u64,
    pub end: u64,
    pub place: RecordPlace,
    /// The write's data while its records are not durable yet.
    pub(crate) kept: Option<Arc<Kept>>,
}

impl PartialEq for Piece {
    fn eq(&self, o: &Piece) -> bool {
        (self.first, self.end, self.place) == (o.first, o.end, o.place)
    }
}

#[derive(Debug)]
pub(crate) struct Behind {
    /// Writes at least this large are written behind; `usize::MAX`: never.
    min_bytes: usize,
    runs: Mutex<BTreeMap<u64, Run>>,
    /// `runs.len()`, read without the lock on the read path.
    count: AtomicUsize,
    /// Blocks listed.
    blocks: AtomicU64,
    block_size: u64,
    started: std::time::Instant,
    /// Nanoseconds (since `started`) of the last host write, for the idle test.
    last_write_ns: AtomicU64,
    /// Deferring is off for now (full list, or a checkpoint clearing the flag).
    paused: AtomicBool,
    /// Writes whose data is kept, oldest first, and their bytes.
    kept: Mutex<VecDeque<Arc<Kept>>>,
    kept_bytes: AtomicU64,
}

/// The threshold `REWIND_WRITE_BEHIND` asks for: unset, `1` or `on`: [`DEFAULT_MIN_BYTES`];
/// `0` or `off`: none (every write goes through the primary); a number of bytes (suffix K
/// or M): writes at least that large.
pub fn from_env() -> Option<usize> {
    let Ok(v) = std::env::var("REWIND_WRITE_BEHIND") else {
        return Some(DEFAULT_MIN_BYTES);
    };
    let v = v.trim();
    match v {
        "0" | "off" => None,
        "" => Some(DEFAULT_MIN_BYTES),
        "1" | "on" => Some(DEFAULT_MIN_BYTES),
        _ => {
            let (num, mul) = match v.as_bytes().last() {
                Some(b'K' | b'k') => (&v[..v.len() - 1], 1 << 10),
                Some(b'M' | b'm') => (&v[..v.len() - 1], 1 << 20),
                _ => (v, 1),
            };
            num.parse::<usize>().ok().map(|n| n.saturating_mul(mul))
        }
    }
}

impl Behind {
    /// `min_bytes`: writes at least this large are deferred; `None`: none is.
    pub(crate) fn new(block_size: u64, min_bytes: Option<usize>) -> Behind {
        Behind {
            min_bytes: min_bytes.map_or(usize::MAX, |m| m.max(1)),
            runs: Mutex::new(BTreeMap::new()),
            count: AtomicUsize::new(0),
            blocks: AtomicU64::new(0),
            block_size,
            started: std::time::Instant::now(),
            last_write_ns: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            kept: Mutex::new(VecDeque::new()),
            kept_bytes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Run>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a host write of `len` bytes at `offset` may go to the log only.
    pub(crate) fn wants(&self, offset: u64, len: usize) -> bool {
        len >= self.min_bytes
            && offset.is_multiple_of(self.block_size)
            && (len as u64).is_multiple_of(self.block_size)
            && !self.paused.load(Ordering::Relaxed)
            && self.count.load(Ordering::Relaxed) < MAX_RUNS
            && self.blocks.load(Ordering::Relaxed) * self.block_size < MAX_BYTES
            && self.kept_bytes.load(Ordering::Relaxed) < MAX_KEPT
    }

    /// Bytes of deferred writes kept in memory.
    pub(crate) fn kept_bytes(&self) -> u64 {
        self.kept_bytes.load(Ordering::Relaxed)
    }

    /// Lets go of the data of writes whose records are durable up to `durable`.
    pub(crate) fn release(&self, durable: Seq) {
        if self.kept_bytes() == 0 {
            return;
        }
        let mut q = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        while q.front().is_some_and(|k| k.seq <= durable) {
            if let Some(k) = q.pop_front() {
                let d = k.data.write().unwrap_or_else(|p| p.into_inner()).take();
                let n = d.map_or(0, |d| d.len() as u64);
                self.kept_bytes.fetch_sub(n, Ordering::Relaxed);
            }
        }
    }

    /// Notes a host write now (any: the background applier waits for quiet).
    pub(crate) fn note_write(&self) {
        let ns = self.started.elapsed().as_nanos() as u64;
        self.last_write_ns.store(ns, Ordering::Relaxed);
    }

    /// How long no host write came.
    pub(crate) fn quiet_for(&self) -> std::time::Duration {
        let now = self.started.elapsed().as_nanos() as u64;
        std::time::Duration::from_nanos(
            now.saturating_sub(self.last_write_ns.load(Ordering::Relaxed)),
        )
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Bytes listed.
    pub(crate) fn bytes(&self) -> u64 {
        self.blocks.load(Ordering::Relaxed) * self.block_size
    }

    /// Runs listed.
    pub(crate) fn runs(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether the list is near its bounds (the applier then works under load too).
    pub(crate) fn pressed(&self) -> bool {
        self.bytes() >= MAX_BYTES / 2 || self.runs() >= MAX_RUNS / 2
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }

    /// Lists the records of one host write (newest wins over what was listed), its data
    /// kept until they are durable.
    pub(crate) fn insert(&self, places: &[RecordPlace], data: &[u8]) {
        let at_s = self.started.elapsed().as_secs() as u32;
        let kept = match (places.first(), places.last()) {
            (Some(first), Some(last)) => {
                let k = Arc::new(Kept {
                    seq: last.seq,
                    first_block: first.first_block,
                    data: std::sync::RwLock::new(Some(data.into())),
                });
                self.kept_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                self.kept
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(k.clone());
                Some(k)
            }
            _ => None,
        };
        let mut runs = self.lock();
        for p in places {
            let (first, end) = (p.first_block, p.end_block());
            if first >= end {
                continue;
            }
            let gone = cut(&mut runs, first, end);
            runs.insert(
                first,
                Run {
                    end,
                    place: *p,
                    kept: kept.clone(),
                    at_s,
                },
            );
            self.blocks.fetch_add(end - first, Ordering::Relaxed);
            self.blocks.fetch_sub(gone, Ordering::Relaxed);
        }
        self.count.store(runs.len(), Ordering::Release);
    }

    /// Unlists blocks `first..end` (the primary holds them now, or they were overwritten
    /// there).
    pub(crate) fn remove(&self, first: u64, end: u64) {
        if self.is_empty() || first >= end {
            return;
        }
        let mut runs = self.lock();
        let gone = cut(&mut runs, first, end);
        self.forget(&runs, gone);
    }

    /// Unlists `piece` if it is still listed as it was (no newer write replaced it).
    pub(crate) fn remove_if_same(&self, piece: &Piece) {
        let mut runs = self.lock();
        let same = overlapping(&runs, piece.first, piece.end)
            .iter()
            .all(|p| p.place == piece.place);
        if same {
            let gone = cut(&mut runs, piece.first, piece.end);
            self.forget(&runs, gone);
        }
    }

    /// The listed pieces of blocks `first..end`, in block order.
    pub(crate) fn pieces(&self, first: u64, end: u64) -> Vec<Piece> {
        if self.is_empty() || first >= end {
            return Vec::new();
        }
        overlapping(&self.lock(), first, end)
    }

    /// Up to `max_blocks` listed blocks for the background applier: the oldest runs first
    /// when `oldest_first`, else in block order (the primary written sequentially).
    pub(crate) fn pick(&self, max_blocks: u64, oldest_first: bool) -> Vec<Piece> {
        let runs = self.lock();
        let mut all: Vec<(u64, &Run)> = runs.iter().map(|(f, r)| (*f, r)).collect();
        if oldest_first {
            all.sort_by_key(|(f, r)| (r.at_s, *f));
        }
        let mut out = Vec::new();
        let mut left = max_blocks;
        for (first, r) in all {
            if left == 0 {
                break;
            }
            let end = r.end.min(first.saturating_add(left));
            left -= end - first;
            out.push(Piece {
                first,
                end,
                place: r.place,
                kept: r.kept.clone(),
            });
        }
        out.sort_by_key(|p| p.first);
        out
    }

    /// The oldest seq listed: the primary's checkpoint must stay before it.
    pub(crate) fn oldest_seq(&self) -> Option<Seq> {
        self.lock().values().map(|r| r.place.seq).min()
    }

    /// Counts `gone` blocks out (the lock held).
    fn forget(&self, runs: &BTreeMap<u64, Run>, gone: u64) {
        self.blocks.fetch_sub(gone, Ordering::Relaxed);
        self.count.store(runs.len(), Ordering::Release);
    }
}

/// The pieces of `runs` inside `first..end`.
fn overlapping(runs: &BTreeMap<u64, Run>, first: u64, end: u64) -> Vec<Piece> {
    let start = runs
        .range(..=first)
        .next_back()
        .filter(|(_, r)| r.end > first)
        .map_or(first, |(f, _)| *f);
    runs.range(start..end)
        .filter(|(_, r)| r.end > first)
        .map(|(f, r)| Piece {
            first: (*f).max(first),
            end: r.end.min(end),
            place: r.place,
            kept: r.kept.clone(),
        })
        .collect()
}

/// Removes blocks `first..end` from `runs`, keeping the parts of runs outside it. Returns
/// the blocks removed.
fn cut(runs: &mut BTreeMap<u64, Run>, first: u64, end: u64) -> u64 {
    let hit: Vec<u64> = {
        let start = runs
            .range(..=first)
            .next_back()
            .filter(|(_, r)| r.end > first)
            .map_or(first, |(f, _)| *f);
        runs.range(start..end)
            .filter(|(_, r)| r.end > first)
            .map(|(f, _)| *f)
            .collect()
    };
    let mut gone = 0;
    for f in hit {
        let Some(r) = runs.remove(&f) else { continue };
        gone += r.end.min(end) - f.max(first);
        if f < first {
            runs.insert(
                f,
                Run {
                    end: first,
                    ..r.clone()
                },
            );
        }
        if r.end > end {
            runs.insert(end, Run { end: r.end, ..r });
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use rewind_format::SegmentId;

    fn place(seq: u64, first: u64, count: u32) -> RecordPlace {
        RecordPlace {
            seq: Seq(seq),
            segment: SegmentId(Seq(1)),
            offset: seq * 1000,
            len: 100,
            first_block: first,
            block_count: count,
        }
    }

    proptest! {
        /// The list agrees with a per-block model over inserts and removes.
        #[test]
        fn agrees_with_a_per_block_model(
            ops in proptest::collection::vec((0u64..64, 1u32..12, any::<bool>()), 1..120),
        ) {
            let b = Behind::new(4096, Some(1));
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for (i, (first, n, ins)) in ops.into_iter().enumerate() {
                let seq = i as u64 + 1;
                let end = first + u64::from(n);
                if ins {
                    b.insert(&[place(seq, first, n)], &vec![0u8; n as usize * 4096]);
                    for k in first..end {
                        model.insert(k, seq);
                    }
                } else {
                    b.remove(first, end);
                    for k in first..end {
                        model.remove(&k);
                    }
                }
                let mut got = BTreeMap::new();
                for p in b.pieces(0, 100) {
                    for k in p.first..p.end {
                        prop_assert!(got.insert(k, p.place.seq.0).is_none(), "overlap at {}", k);
                    }
                }
                prop_assert_eq!(&got, &model);
                prop_assert_eq!(b.bytes(), model.len() as u64 * 4096);
                prop_assert_eq!(b.oldest_seq().map(|s| s.0), model.values().min().copied());
            }
        }
    }

    #[test]
    fn a_piece_replaced_meanwhile_stays_listed() {
        let b = Behind::new(4096, Some(1));
        b.insert(&[place(1, 0, 8)], &[0u8; 8 * 4096]);
        let old = b.pieces(0, 8)[0].clone();
        b.insert(&[place(2, 4, 2)], &[0u8; 2 * 4096]);
        b.remove_if_same(&Piece {
            first: 0,
            end: 8,
            ..old.clone()
        });
        assert_eq!(b.pieces(0, 8).len(), 3, "replaced in part: kept");
        b.remove_if_same(&Piece {
            first: 0,
            end: 4,
            ..old
        });
        let left: Vec<(u64, u64)> = b.pieces(0, 8).iter().map(|p| (p.first, p.end)).collect();
        assert_eq!(left, vec![(4, 6), (6, 8)]);
    }

    #[test]
    fn only_large_aligned_writes_qualify() {
        assert!(!Behind::new(4096, None).wants(0, 1 << 30), "off");
        let b = Behind::new(4096, Some(DEFAULT_MIN_BYTES));
        assert!(b.wants(0, DEFAULT_MIN_BYTES));
        assert!(!b.wants(0, DEFAULT_MIN_BYTES - 4096));
        assert!(!b.wants(512, DEFAULT_MIN_BYTES));
        assert!(!b.wants(0, DEFAULT_MIN_BYTES + 512));
        b.set_paused(true);
        assert!(!b.wants(0, DEFAULT_MIN_BYTES));
    }
}
