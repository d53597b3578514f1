//! What `rewind sync` writes: fix-up records (data copied from the primary to repair the
//! vault), the fix-up flag on the intervals that hold them, and the seal that fixes the
//! point a scan compares with.

use super::*;
use rewind_format::delta_map::FLAG_FIXUP;

impl Vault {
    /// Seals the open interval (if it holds records) and returns the newest sealed seq:
    /// every record up to it is in the delta map chain, none after it is. `Seq::BASE`
    /// when nothing was ever recorded.
    pub fn seal_now(&self) -> Result<Seq> {
        let inner = self.lock_writable()?;
        let (inner, sealed) = self.seal_wait(inner);
        sealed?;
        Ok(Seq(inner.manifest.next_seq.0 - 1))
    }

    /// Appends fix-up records: `data` (whole blocks from `first_block`) that sync copied
    /// from the primary. Like [`Vault::write`], at most 128 KiB of data per record, handed
    /// to the OS at once, durable after [`Vault::flush`]. Returns the seqs of the first
    /// and the last record appended (the records in between are all this call's).
    pub fn fix_up(&self, first_block: u64, data: &[u8]) -> Result<(Seq, Seq)> {
        let mut inner = self.lock_writable()?;
        let seqs = self.append_unit(
            &mut inner,
            &[HostOp::Write { first_block, data }],
            RecordKind::FixUp,
        )?;
        inner.open.write_out()?;
        self.seal_if_due(inner);
        Ok(seqs)
    }

    /// Flags every sealed interval that holds a record of `ranges` (inclusive seq ranges
    /// of fix-up records, as [`Vault::fix_up`] returns them) as a fix-up interval, in one
    /// manifest commit. Seal first: records still in the open interval cannot be flagged
    /// and are refused. Returns the intervals flagged, oldest first.
    pub fn flag_fix_ups(&self, ranges: &[(Seq, Seq)]) -> Result<Vec<IntervalInfo>> {
        let mut inner = self.lock_for_edit()?;
        let sealed_to = Seq(inner.manifest.next_seq.0 - 1);
        if let Some(&(_, to)) = ranges.iter().find(|r| r.1 > sealed_to) {
            return Err(VaultError::NotSealed { seq: to });
        }
        let mut m = inner.manifest.clone();
        let mut changed = false;
        for e in m.maps.iter_mut() {
            let holds = ranges
                .iter()
                .any(|&(a, b)| a <= e.interval.seq_to && e.interval.seq_from <= b);
            if holds && e.flags & FLAG_FIXUP == 0 {
                e.flags |= FLAG_FIXUP;
                changed = true;
            }
        }
        if changed {
            self.commit_locked(&mut inner, m)?;
        }
        let flagged: Vec<(Seq, Seq)> = inner
            .manifest
            .maps
            .iter()
            .filter(|e| {
                ranges
                    .iter()
                    .any(|&(a, b)| a <= e.interval.seq_to && e.interval.seq_from <= b)
            })
            .map(|e| (e.interval.seq_from, e.interval.seq_to))
            .collect();
        drop(inner);
        Ok(self
            .intervals()
            .into_iter()
            .filter(|i| flagged.contains(&(i.seq_from, i.seq_to)))
            .collect())
    }

    /// Commits `m` as the next generation of the manifest (outside a seal; the caller took
    /// the lock with [`Vault::lock_for_edit`]). A commit that
    /// failed before its rename changed nothing; one that failed after it poisons the
    /// vault, as a failed seal does: memory and disk may disagree.
    pub(super) fn commit_locked(&self, inner: &mut Inner, mut m: Manifest) -> Result<()> {
        m.generation = Generation(inner.manifest.generation.0 + 1);
        match manifest_store::commit_staged(self.fs(), &self.dir, &m) {
            Ok(()) => {
                inner.manifest = m;
                Ok(())
            }
            Err(fsutil::AtomicWriteError::Before(e)) => Err(e),
            Err(fsutil::AtomicWriteError::After(e)) => {
                inner.poison(&e);
                Err(e)
            }
        }
    }
}
