//! `rewind repair`: mending what the write log can mend. A delta map is an index of its
//! interval's records, so a missing or damaged one is rebuilt from them (the records are
//! checked one by one; a damaged record refuses the rebuild). The map is written as a new
//! file, synced and renamed over the old one (see `fsutil::write_atomic`); the manifest
//! already names it, so a crash leaves the old file or the new, never half of one.

use super::*;

/// What repair found and did (or, in a dry run, would do) about one delta map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRepair {
    pub path: PathBuf,
    pub seq_from: Seq,
    pub seq_to: Seq,
    /// What was wrong with the map.
    pub damage: String,
    /// `Ok`: rebuilt from the records (or would be); `Err`: why it cannot be.
    pub outcome: std::result::Result<(), String>,
}

impl Vault {
    /// Checks every delta map of the chain as reads use it (head, then entries) and
    /// rebuilds each damaged or missing one from its interval's records; with `dry_run`
    /// only says which. Needs the writer's lock.
    pub fn repair_maps(&self, dry_run: bool) -> Result<Vec<MapRepair>> {
        let (maps, segments, vault_id) = {
            let inner = self.lock_writable()?;
            let m = &inner.manifest;
            (m.maps.clone(), m.segments.clone(), m.vault_id)
        };
        let mut out = Vec::new();
        for e in &maps {
            let key = (e.interval.seq_from, e.interval.seq_to);
            let path = self.shared.map_path(key);
            let damage = match self
                .shared
                .map(e)
                .and_then(|m| self.shared.load_entries(&m))
            {
                Ok(()) => continue,
                Err(err @ VaultError::Corrupted { .. }) => err.to_string(),
                Err(err) => return Err(err),
            };
            let outcome = self.rebuild_map(e, &segments, vault_id, dry_run);
            out.push(MapRepair {
                path,
                seq_from: key.0,
                seq_to: key.1,
                damage,
                outcome,
            });
        }
        Ok(out)
    }

    /// The delta map of `e` from its segment's records; written unless `dry_run`.
    fn rebuild_map(
        &self,
        e: &MapEntry,
        segments: &[SegmentEntry],
        vault_id: [u8; 16],
        dry_run: bool,
    ) -> std::result::Result<(), String> {
        let i = e.interval;
        let Some(s) = segments
            .iter()
            .find(|s| s.id.0 == i.seq_from && s.last_seq == i.seq_to)
        else {
            return Err("its interval is not one segment of the log (a merged map): it cannot be rebuilt from the records".into());
        };
        let log_dir = self.dir.join(names::LOG_DIR);
        let bs = self.shared.block_size;
        // The sealed segment read as the open one is (every record checked, nothing cut:
        // no writer).
        let mut seg = OpenSegment::recover(self.fs(), &log_dir, s.id, bs, vault_id, None)
            .map_err(|err| format!("its records cannot be read: {err}"))?;
        let last = seg.last_seq();
        if last != s.last_seq || seg.len() != s.length {
            return Err(format!(
                "the write log of the interval is damaged (its records end at seq {last}, {} bytes, where the manifest says seq {}, {} bytes): `rewind check` names the damage",
                seg.len(),
                s.last_seq,
                s.length
            ));
        }
        let map = DeltaMap::new(i, bs, seg.present.sorted().to_vec());
        if map.len() as u64 != e.blocks_changed {
            return Err(format!(
                "the records change {} blocks where the manifest says {}",
                map.len(),
                e.blocks_changed
            ));
        }
        if dry_run {
            return Ok(());
        }
        let path = self.shared.map_path((i.seq_from, i.seq_to));
        fsutil::write_atomic(self.fs(), &path, &map.encode()).map_err(|err| err.to_string())?;
        self.shared.insert(Arc::new(map));
        Ok(())
    }
}
