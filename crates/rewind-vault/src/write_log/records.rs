//! The open segment's record index: every record's [`RecordMeta`], in seq order.
//!
//! Appends push at the end; a view of the open interval takes the records up to its
//! point while the vault's lock is held, and replays them after. So the index is kept in
//! chunks: full chunks are immutable and shared (`Arc`), and taking the records is cloning
//! a few pointers and copying the last, partial chunk: a view of an interval of 60,000
//! records costs the writers waiting on the lock microseconds, not a copy of it all.

use std::sync::Arc;

use super::RecordMeta;

/// Records per shared chunk.
const CHUNK: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Records {
    full: Vec<Arc<[RecordMeta]>>,
    tail: Vec<RecordMeta>,
}

/// The first records of an index, taken at one moment (see [`Records::upto`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct TakenRecords {
    full: Vec<Arc<[RecordMeta]>>,
    tail: Vec<RecordMeta>,
    len: usize,
}

impl TakenRecords {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &RecordMeta> + '_ {
        self.full
            .iter()
            .flat_map(|c| c.iter())
            .chain(self.tail.iter())
            .take(self.len)
    }
}

impl From<Vec<RecordMeta>> for Records {
    fn from(v: Vec<RecordMeta>) -> Records {
        let mut r = Records::default();
        for m in v {
            r.push(m);
        }
        r
    }
}

impl Records {
    pub(crate) fn push(&mut self, m: RecordMeta) {
        if self.tail.capacity() == 0 {
            self.tail.reserve_exact(CHUNK);
        }
        self.tail.push(m);
        if self.tail.len() == CHUNK {
            let full = std::mem::replace(&mut self.tail, Vec::with_capacity(CHUNK));
            self.full.push(full.into());
        }
    }

    /// What the index holds in memory, in bytes.
    pub(crate) fn memory_bytes(&self) -> u64 {
        let chunks = self.full.len() + usize::from(self.tail.capacity() > 0);
        (chunks * CHUNK * std::mem::size_of::<RecordMeta>()) as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.full.len() * CHUNK + self.tail.len()
    }

    pub(crate) fn get(&self, i: usize) -> Option<&RecordMeta> {
        match self.full.get(i / CHUNK) {
            Some(c) => c.get(i % CHUNK),
            None => self.tail.get(i - self.full.len() * CHUNK),
        }
    }

    pub(crate) fn first(&self) -> Option<&RecordMeta> {
        self.get(0)
    }

    pub(crate) fn last(&self) -> Option<&RecordMeta> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &RecordMeta> + '_ {
        self.full
            .iter()
            .flat_map(|c| c.iter())
            .chain(self.tail.iter())
    }

    /// The number of records from the start for which `pred` holds (it must hold for a
    /// prefix and not after it, as for [`slice::partition_point`]).
    pub(crate) fn partition_point(&self, pred: impl Fn(&RecordMeta) -> bool) -> usize {
        let chunk = self.full.partition_point(|c| c.last().is_some_and(&pred));
        match self.full.get(chunk) {
            Some(c) => chunk * CHUNK + c.partition_point(&pred),
            None => chunk * CHUNK + self.tail.partition_point(&pred),
        }
    }

    /// The index of the last of the first `end` records for which `pred` holds.
    pub(crate) fn rposition_before(
        &self,
        end: usize,
        pred: impl Fn(&RecordMeta) -> bool,
    ) -> Option<usize> {
        let end = end.min(self.len());
        let skip = self.len() - end;
        self.iter()
            .rev()
            .skip(skip)
            .position(pred)
            .map(|from_end| end - 1 - from_end)
    }

    /// The first `n` records, shared: the full chunks are not copied.
    pub(crate) fn upto(&self, n: usize) -> TakenRecords {
        let n = n.min(self.len());
        let chunks = n.div_ceil(CHUNK).min(self.full.len());
        let tail = if n > chunks * CHUNK {
            self.tail[..n - chunks * CHUNK].to_vec()
        } else {
            Vec::new()
        };
        TakenRecords {
            full: self.full[..chunks].to_vec(),
            tail,
            len: n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_format::record::RecordKind;
    use rewind_format::Seq;

    fn meta(i: u64) -> RecordMeta {
        RecordMeta {
            seq: Seq(10 + i),
            timestamp_ns: i as i64,
            kind: RecordKind::Write,
            first_block: i % 7,
            block_count: 1,
            offset: i * 100,
            len: 100,
            continues: i.is_multiple_of(3),
        }
    }

    /// The chunked index answers as the vector it replaces, at every length around the
    /// chunk edges.
    #[test]
    fn agrees_with_a_vector() {
        for n in [0usize, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5] {
            let v: Vec<RecordMeta> = (0..n as u64).map(meta).collect();
            let r = Records::from(v.clone());
            assert_eq!(r.len(), v.len());
            assert_eq!(r.first(), v.first());
            assert_eq!(r.last(), v.last());
            assert!(r.iter().eq(v.iter()));
            for probe in [0u64, 1, 9, 10, 11, 500, 1033, 5000, u64::MAX] {
                let p = |m: &RecordMeta| m.seq.0 <= probe;
                assert_eq!(r.partition_point(p), v.partition_point(p), "{n} {probe}");
            }
            for end in [0, 1, n / 2, n.saturating_sub(1), n]
                .into_iter()
                .filter(|&e| e <= n)
            {
                let c = |m: &RecordMeta| !m.continues;
                assert_eq!(
                    r.rposition_before(end, c),
                    v[..end].iter().rposition(c),
                    "{n} {end}"
                );
                assert!(r.upto(end).iter().eq(v[..end].iter()), "{n} {end}");
            }
        }
    }
}
