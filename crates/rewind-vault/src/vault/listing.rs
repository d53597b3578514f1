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
                inner
                    .open
                    .markers
                    .iter()
                    .find(|m| m.name == name)
                    .map(ScannedMarker::to_snapshot)
            })
    }

    /// What the vault holds in memory now, by part: the readers' caches (bounded by
    /// [`CacheLimits`]) and the open interval's indexes (bounded by the seal policy).
    pub fn memory(&self) -> MemoryStats {
        let inner = self.lock();
        MemoryStats {
            caches: self.shared.cache_stats(),
            limits: self.shared.cache_limits(),
            present_map_bytes: inner.open.present.memory_bytes(),
            record_index_bytes: inner.open.records.memory_bytes(),
            append_buffer_bytes: crate::write_log::open_segment::BUFFER_BYTES as u64,
        }
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Vec<SnapshotEntry> {
        let inner = self.lock();
        let mut v = inner.manifest.snapshots.clone();
        v.extend(inner.open.markers.iter().map(ScannedMarker::to_snapshot));
        v
    }

    /// Every interval, oldest first: the sealed ones, then the open one if it has records.
    pub fn intervals(&self) -> Vec<IntervalInfo> {
        let mut inner = self.lock();
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
