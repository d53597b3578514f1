//! Resolving points to seqs, and opening point-in-time views.

use super::*;
use crate::write_log::records::TakenRecords;
use rewind_format::extents::{ExtentLoc, ExtentMap, ExtentOverlay, ExtentSet};

impl Vault {
    // ---- points ----------------------------------------------------------------------

    /// Resolves a point to the seq whose state it names.
    pub fn resolve(&self, point: &Point) -> Result<ResolvedPoint> {
        let plan = {
            let inner = self.lock();
            self.resolve_locked(&inner, point)?
        };
        match plan {
            Resolution::Done(rp) => Ok(rp),
            Resolution::ScanSegment { seg, stop, before } => self.scan_for(&seg, stop, before),
        }
    }

    fn resolve_locked(&self, inner: &Inner, point: &Point) -> Result<Resolution> {
        let m = &inner.manifest;
        let newest = inner.open.last_seq();
        let seq = match point {
            Point::Latest => newest,
            Point::Seq(s) => {
                if *s > newest {
                    return Err(VaultError::SeqAfterNewest { seq: *s, newest });
                }
                *s
            }
            Point::Snapshot(name) => {
                let s = Self::find_snapshot(inner, name)
                    .ok_or_else(|| VaultError::UnknownSnapshot(name.clone()))?;
                return Ok(Resolution::Done(ResolvedPoint {
                    seq: s.seq,
                    time_ns: s.time_ns,
                }));
            }
            Point::Time(t) => return self.by_time(inner, *t, point),
            Point::Ago(d) => {
                let t = now_ns().saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
                return self.by_time(inner, t, &Point::Time(t));
            }
        };
        // `seq:N` names the state after the host write that ended at or before record N:
        // a seq inside a host write of several records goes back to where it began.
        // The open segment, then the one being sealed (see `seal.rs`).
        let sealing = inner.sealing.as_ref().map(|s| (s.seg.id, &s.seg.records));
        for (id, recs) in std::iter::once((inner.open.id, &inner.open.records)).chain(sealing) {
            if seq < id.0 {
                continue;
            }
            let i = (seq.0 - id.0 .0) as usize;
            if let Some(r) = recs
                .rposition_before(i + 1, |r| !r.continues)
                .and_then(|j| recs.get(j))
            {
                return Ok(Resolution::Done(ResolvedPoint {
                    seq: r.seq,
                    time_ns: r.timestamp_ns,
                }));
            }
            // The interval's first host write: the point is the end of the one before.
            return Ok(Resolution::Done(Self::unsealed_end(inner, id)));
        }
        if seq == Seq::BASE {
            return Ok(Resolution::Done(Self::sealed_end(m, 0)));
        }
        let i = m.segments.partition_point(|s| s.last_seq < seq);
        let seg = m.segments[i];
        if seg.last_seq == seq {
            return Ok(Resolution::Done(ResolvedPoint {
                seq,
                time_ns: seg.time_to_ns,
            }));
        }
        Ok(Resolution::ScanSegment {
            seg,
            stop: Stop::Seq(seq),
            before: Self::sealed_end(m, i),
        })
    }

    /// The point at the end of the log before segment `id` (the open one or the sealing
    /// one): the sealing interval's last host write, or the end of the sealed log.
    fn unsealed_end(inner: &Inner, id: SegmentId) -> ResolvedPoint {
        match inner.sealing.as_ref().filter(|s| s.seg.id < id) {
            Some(s) => ResolvedPoint {
                seq: s.interval.seq_to,
                time_ns: s.interval.time_to_ns,
            },
            None => Self::sealed_end(&inner.manifest, inner.manifest.segments.len()),
        }
    }

    /// The point at the end of the first `n` sealed segments (the base image for none).
    fn sealed_end(m: &Manifest, n: usize) -> ResolvedPoint {
        match n.checked_sub(1).and_then(|i| m.segments.get(i)) {
            Some(s) => ResolvedPoint {
                seq: s.last_seq,
                time_ns: s.time_to_ns,
            },
            None => ResolvedPoint {
                seq: Seq::BASE,
                time_ns: m.created_ns,
            },
        }
    }

    fn by_time(&self, inner: &Inner, t: i64, shown: &Point) -> Result<Resolution> {
        let m = &inner.manifest;
        if t < m.created_ns {
            return Err(VaultError::BeforeBase {
                point: shown.to_string(),
                base: format_time(m.created_ns),
            });
        }
        let now = now_ns();
        if t > now {
            return Err(VaultError::FutureTime {
                point: shown.to_string(),
                now: format_time(now),
            });
        }
        let sealing = inner.sealing.as_ref().map(|s| &s.seg.records);
        for recs in std::iter::once(&inner.open.records).chain(sealing) {
            let upto = recs.partition_point(|r| r.timestamp_ns <= t);
            if let Some(r) = recs
                .rposition_before(upto, |r| !r.continues)
                .and_then(|j| recs.get(j))
            {
                return Ok(Resolution::Done(ResolvedPoint {
                    seq: r.seq,
                    time_ns: r.timestamp_ns,
                }));
            }
        }
        let i = m.segments.partition_point(|s| s.time_from_ns <= t);
        if i == 0 {
            return Ok(Resolution::Done(Self::sealed_end(m, 0)));
        }
        let seg = m.segments[i - 1];
        if seg.time_to_ns <= t {
            return Ok(Resolution::Done(ResolvedPoint {
                seq: seg.last_seq,
                time_ns: seg.time_to_ns,
            }));
        }
        Ok(Resolution::ScanSegment {
            seg,
            stop: Stop::Time(t),
            before: Self::sealed_end(m, i - 1),
        })
    }

    /// The last host-write boundary in `seg` at or before `stop`; `before` (the end of the
    /// segments before it) when the segment's first host write is already past it.
    fn scan_for(
        &self,
        seg: &SegmentEntry,
        stop: Stop,
        before: ResolvedPoint,
    ) -> Result<ResolvedPoint> {
        let mut found: Option<RecordMeta> = None;
        let mut seen = false;
        let path = self.shared.segments.path(seg.id);
        scan_sealed(
            self.fs(),
            &path,
            seg.id.0,
            seg.length,
            self.shared.block_size,
            |r| {
                let keep = match stop {
                    Stop::Seq(s) => r.seq <= s,
                    Stop::Time(t) => r.timestamp_ns <= t,
                };
                seen |= keep;
                if keep && !r.continues {
                    found = Some(*r);
                }
                keep
            },
        )?;
        if !seen {
            return Err(corrupted(
                &path,
                0,
                Corruption::Inconsistent("segment does not hold the records the manifest says"),
            ));
        }
        Ok(found.map_or(before, |r| ResolvedPoint {
            seq: r.seq,
            time_ns: r.timestamp_ns,
        }))
    }

    /// The volume as it was at `point`: ready to read at once. Only the interval holding
    /// the point is replayed (and not even that when the point ends an interval).
    pub fn view(&self, point: &Point) -> Result<PointView> {
        let rp = self.resolve(point)?;
        self.view_resolved(rp)
    }

    /// A view at an already resolved point. The vault's lock is held only to take the
    /// plan (see [`ViewPlan`]); the replay and the copy into a search tree run after it
    /// is let go, so that opening views (an NBD client looping on `@now`) does not stall
    /// host writes.
    pub fn view_resolved(&self, rp: ResolvedPoint) -> Result<PointView> {
        let p = rp.seq;
        let plan = {
            let mut inner = self.lock();
            self.plan_view(&mut inner, p)?
        };
        if let Some((writer, ticket)) = plan.wait {
            writer.wait(ticket)?;
        }
        let (holding, partial) = match plan.partial {
            Partial::None => (None, ExtentMap::new(self.shared.block_size)),
            Partial::Records {
                id,
                records,
                sealing,
            } => {
                // The sealing interval's records come first, the open one's after them.
                let bs = self.shared.block_size;
                let mut map = ExtentOverlay::new(bs);
                let from = match sealing {
                    Some((sid, recs)) => {
                        for r in recs.iter() {
                            apply(&mut map, r, sid);
                        }
                        sid.0
                    }
                    None => id.0,
                };
                for r in records.iter() {
                    apply(&mut map, r, id);
                }
                (Some(from), map.freeze())
            }
            Partial::Sealed { from, segments } => (Some(from), self.replay_sealed(&segments, p)?),
        };
        Ok(PointView::new(
            rp,
            holding,
            partial,
            plan.chain,
            plan.chain_len,
            self.shared.clone(),
        ))
    }

    /// What a view of `p` is built from, taken under the lock: the chain (shared, not
    /// copied), and what to replay: the open interval's records up to the point (their
    /// shared chunks: the appends go on), or the sealed segments to scan.
    fn plan_view(&self, inner: &mut Inner, p: Seq) -> Result<ViewPlan> {
        let mut wait = None;
        if p != Seq::BASE && p >= inner.open.id.0 && self._lock.is_some() {
            // Readers go through the file: hand it what is buffered (the wait for the log
            // writer is the caller's, after the lock), unless every record up to the point
            // is durable in it already (a snapshot, a flushed point), so that those read on
            // while the log writer cannot write.
            let records = &inner.open.records;
            let end = records
                .partition_point(|r| r.seq <= p)
                .checked_sub(1)
                .and_then(|i| records.get(i))
                .map_or(0, |r| r.offset + u64::from(r.len));
            if end > inner.durable_bytes {
                inner.open.write_out()?;
                wait = inner.open.pending_write();
            }
        }
        let chain = Self::chain_arc(inner);
        let maps = &inner.manifest.maps;
        let (partial, chain_len) = if p == Seq::BASE {
            (Partial::None, 0)
        } else if p >= inner.open.id.0 {
            if p > inner.open.last_seq() {
                return Err(VaultError::SeqAfterNewest {
                    seq: p,
                    newest: inner.open.last_seq(),
                });
            }
            // The records, not the present map: putting that in order (and copying it) for
            // each view of `@now` held the lock for a millisecond of a 60k-record interval.
            let upto = inner.open.records.partition_point(|r| r.seq <= p);
            let sealing = inner
                .sealing
                .as_ref()
                .map(|s| (s.seg.id, s.seg.records.upto(s.seg.records.len())));
            let partial = Partial::Records {
                id: inner.open.id,
                records: inner.open.records.upto(upto),
                sealing,
            };
            (partial, maps.len())
        } else if let Some(s) = inner.sealing.as_ref().filter(|s| p >= s.seg.id.0) {
            // The interval being sealed: closed and durable, so its file holds it all.
            let upto = s.seg.records.partition_point(|r| r.seq <= p);
            let partial = Partial::Records {
                id: s.seg.id,
                records: s.seg.records.upto(upto),
                sealing: None,
            };
            (partial, maps.len())
        } else {
            let i = maps.partition_point(|e| e.interval.seq_to < p);
            let Some(holding) = maps.get(i).copied() else {
                return Err(corrupted(
                    &self.dir,
                    0,
                    Corruption::Inconsistent("no delta map covers a sealed seq"),
                ));
            };
            if holding.interval.seq_to == p {
                (Partial::None, i + 1)
            } else {
                let segments = inner
                    .manifest
                    .segments
                    .iter()
                    .filter(|s| s.last_seq >= holding.interval.seq_from && s.id.0 <= p)
                    .copied()
                    .collect();
                let from = holding.interval.seq_from;
                (Partial::Sealed { from, segments }, i)
            }
        };
        Ok(ViewPlan {
            chain,
            chain_len,
            partial,
            wait,
        })
    }

    /// The manifest's delta map chain, shared: built once per manifest generation, so that
    /// a view of a long chain copies nothing under the lock.
    fn chain_arc(inner: &mut Inner) -> Arc<[MapEntry]> {
        let generation = inner.manifest.generation;
        match &inner.chain {
            Some((g, chain)) if *g == generation => chain.clone(),
            _ => {
                let chain: Arc<[MapEntry]> = inner.manifest.maps.as_slice().into();
                inner.chain = Some((generation, chain.clone()));
                chain
            }
        }
    }

    /// The blocks the records of `segments` up to `p` changed (a sealed interval's replay).
    fn replay_sealed(&self, segments: &[SegmentEntry], p: Seq) -> Result<ExtentMap> {
        let mut map = ExtentOverlay::new(self.shared.block_size);
        for s in segments {
            let path = self.shared.segments.path(s.id);
            scan_sealed(
                self.fs(),
                &path,
                s.id.0,
                s.length,
                self.shared.block_size,
                |r| {
                    if r.seq > p {
                        return false;
                    }
                    apply(&mut map, r, s.id);
                    true
                },
            )?;
        }
        Ok(map.freeze())
    }

    /// Reads `count` blocks from `first_block` as they were at `point`.
    pub fn read_at(&self, point: &Point, first_block: u64, count: u64) -> Result<Vec<u8>> {
        self.view(point)?.read(first_block, count)
    }

    /// The blocks some record after `seq` changed, as sorted runs (first block, count):
    /// what an in-place restore to `seq` must copy back. Costs the delta maps after the
    /// interval holding `seq` and one replay of that interval's tail, never a volume scan.
    pub fn changed_since(&self, seq: Seq) -> Result<Vec<(u64, u64)>> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let (maps_after, tail_segments) = {
            let inner = self.lock();
            if seq > inner.open.last_seq() {
                return Err(VaultError::SeqAfterNewest {
                    seq,
                    newest: inner.open.last_seq(),
                });
            }
            let sealing = inner.sealing.iter().flat_map(|s| s.seg.records.iter());
            for r in sealing
                .chain(inner.open.records.iter())
                .filter(|r| r.seq > seq)
            {
                if r.kind != RecordKind::Marker {
                    ranges.push((r.first_block, r.first_block + u64::from(r.block_count)));
                }
            }
            let m = &inner.manifest;
            let maps_after: Vec<MapEntry> = m
                .maps
                .iter()
                .filter(|e| e.interval.seq_from > seq)
                .copied()
                .collect();
            // The sealed interval holding `seq` (if any): only its records after `seq`.
            let tail: Vec<SegmentEntry> = m
                .maps
                .iter()
                .find(|e| e.interval.seq_from <= seq && seq < e.interval.seq_to)
                .map(|h| {
                    m.segments
                        .iter()
                        .filter(|s| s.last_seq > seq && s.id.0 <= h.interval.seq_to)
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            (maps_after, tail)
        };
        for e in &maps_after {
            ranges.extend_from_slice(self.shared.map(e)?.blocks.runs());
        }
        for s in tail_segments {
            let path = self.shared.segments.path(s.id);
            scan_sealed(
                self.fs(),
                &path,
                s.id.0,
                s.length,
                self.shared.block_size,
                |r| {
                    if r.seq > seq && r.kind != RecordKind::Marker {
                        ranges.push((r.first_block, r.first_block + u64::from(r.block_count)));
                    }
                    true
                },
            )?;
        }
        let set = ExtentSet::from_ranges(ranges);
        Ok(set.runs().iter().map(|&(f, e)| (f, e - f)).collect())
    }
}

/// What a view is built from (see [`Vault::plan_view`]).
struct ViewPlan {
    /// The manifest's chain, oldest first; the view reads `chain[..chain_len]`.
    chain: Arc<[MapEntry]>,
    chain_len: usize,
    partial: Partial,
    /// The log writer's ticket to wait for before reading the open segment's file.
    wait: Option<(Arc<LogWriter>, u64)>,
}

/// The replay a view needs of the interval holding its point.
enum Partial {
    /// None: the point ends an interval (or is the base image).
    None,
    /// The open interval's records up to the point (shared chunks, see `Records::upto`),
    /// after every record of the interval being sealed, if one is (or the sealing
    /// interval's records up to the point).
    Records {
        id: SegmentId,
        records: TakenRecords,
        sealing: Option<(SegmentId, TakenRecords)>,
    },
    /// The records up to the point of a sealed interval starting at `from`.
    Sealed {
        from: Seq,
        segments: Vec<SegmentEntry>,
    },
}

enum Resolution {
    Done(ResolvedPoint),
    /// Scan a sealed segment for the point; `before` is the point at the end of the
    /// segments before it.
    ScanSegment {
        seg: SegmentEntry,
        stop: Stop,
        before: ResolvedPoint,
    },
}

#[derive(Clone, Copy)]
enum Stop {
    Seq(Seq),
    Time(i64),
}

/// Lays record `r` of `segment` over `map` (a view's replay: whole records, read and
/// verified whole; one extent per record).
fn apply(map: &mut ExtentOverlay, r: &RecordMeta, segment: SegmentId) {
    let loc = match r.kind {
        RecordKind::Write | RecordKind::FixUp => ExtentLoc::Record {
            segment,
            offset: r.offset,
        },
        RecordKind::Zero | RecordKind::Trim => ExtentLoc::Zero,
        RecordKind::Marker => return,
    };
    map.put_loc(r.first_block, u64::from(r.block_count), loc);
}
