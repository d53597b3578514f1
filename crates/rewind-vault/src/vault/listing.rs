//! What a vault holds: snapshots and intervals.

use super::*;
use crate::write_log::scan::ScannedMarker;
use crate::MemoryStats;

impl Vault {
    // ---- listing ---------------------------------------------------------------------

    pub(super) fn find_snapshot(inner: &Inner, name: &str) -> Option<SnapshotEntry> {
        inner
            .manifest
            .snapshots
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .or_else(|| {
                Self::unsealed_markers(inner)
                    .find(|m| m.name == name)
                    .map(ScannedMarker::to_snapshot)
            })
    }

    /// What the vault holds in memory now, by part: the readers' caches (bounded by
    /// [`CacheLimits`]) and the open interval's indexes (bounded by the seal policy).
    pub fn memory(&self) -> MemoryStats {
        let inner = self.lock();
        let sealing = inner.sealing.as_ref().map(|s| &s.seg);
        MemoryStats {
            caches: self.shared.cache_stats(),
            limits: self.shared.cache_limits(),
            present_map_bytes: inner.open.present.memory_bytes()
                + sealing.map_or(0, |s| s.present.memory_bytes()),
            record_index_bytes: inner.open.records.memory_bytes()
                + sealing.map_or(0, |s| s.records.memory_bytes()),
            append_buffer_bytes: crate::write_log::open_segment::BUFFER_BYTES as u64,
        }
    }

    /// The markers the manifest does not list yet: the sealing interval's, the open one's.
    fn unsealed_markers(inner: &Inner) -> impl Iterator<Item = &ScannedMarker> {
        let sealing = inner.sealing.iter().flat_map(|s| s.seg.markers.iter());
        sealing.chain(inner.open.markers.iter())
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Vec<SnapshotEntry> {
        let inner = self.lock();
        let mut v = inner.manifest.snapshots.clone();
        v.extend(Self::unsealed_markers(&inner).map(ScannedMarker::to_snapshot));
        v
    }

    /// Every interval, oldest first: the sealed ones, then one whose seal failed (and
    /// waits to be tried again), then the open one if it has records. A seal in flight is
    /// waited for.
    pub fn intervals(&self) -> Vec<IntervalInfo> {
        let (mut inner, _) = self.wait_for_seal(self.lock());
        let pending = inner.sealing.as_mut().map(|s| IntervalInfo {
            seq_from: s.interval.seq_from,
            seq_to: s.interval.seq_to,
            time_from_ns: s.interval.time_from_ns,
            time_to_ns: s.interval.time_to_ns,
            blocks_changed: s.blocks_changed(),
            log_bytes: s.seg.written - SEG_HEADER_LEN as u64,
            sealed: false,
            flags: 0,
        });
        let blocks_open = inner.open.present.len();
        let m = &inner.manifest;
        let mut out = Vec::with_capacity(m.maps.len() + 1);
        let mut segs = m.segments.iter().peekable();
        for e in &m.maps {
            let mut log_bytes = 0;
            while let Some(s) = segs.peek() {
                if s.id.0 > e.interval.seq_to {
                    break;
                }
                log_bytes += s.length - SEG_HEADER_LEN as u64;
                segs.next();
            }
            out.push(IntervalInfo {
                seq_from: e.interval.seq_from,
                seq_to: e.interval.seq_to,
                time_from_ns: e.interval.time_from_ns,
                time_to_ns: e.interval.time_to_ns,
                blocks_changed: e.blocks_changed,
                log_bytes,
                sealed: true,
                flags: e.flags,
            });
        }
        out.extend(pending);
        let o = &inner.open;
        if let (Some(first), Some(last)) = (o.records.first(), o.records.last()) {
            out.push(IntervalInfo {
                seq_from: first.seq,
                seq_to: last.seq,
                time_from_ns: first.timestamp_ns,
                time_to_ns: last.timestamp_ns,
                blocks_changed: blocks_open,
                log_bytes: o.len() - SEG_HEADER_LEN as u64,
                sealed: false,
                flags: 0,
            });
        }
        out
    }
}
