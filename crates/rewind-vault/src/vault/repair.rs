//! `rewind repair`: mending what the write log can mend. A delta map is an index of its
//! interval's records, so a missing or damaged one is rebuilt from them (the records are
//! checked one by one; a damaged record refuses the rebuild). The map is written as a new
//! file, synced and renamed over the old one (see `fsutil::write_atomic`); the manifest
//! already names it, so a crash leaves the old file or the new, never half of one.

use super::*;
use crate::base::SumsRepair;
use crate::view::ExtentKind;
use rewind_format::intent::{Intent, Serving};

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
        let map = seg.present.delta_map(i);
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

/// What repair found and did (or, in a dry run, would do) about a damaged current manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRepair {
    /// The damaged current manifest, and what is wrong with it.
    pub damaged: PathBuf,
    pub damage: String,
    /// Where the damaged file was moved (kept for a person to look at).
    pub kept_as: PathBuf,
    /// The intact generation the vault goes on from, and the generation written.
    pub previous: u64,
    pub generation: u64,
    /// Intervals sealed again from their write log records (the lost commit had sealed
    /// them; their records, snapshots included, are intact).
    pub resealed: Vec<(Seq, Seq)>,
    /// Segment files whose records do not continue the log the vault now has: moved aside
    /// (`.orphaned`) instead of being removed as leftovers, and their first seq.
    pub orphaned: Vec<(PathBuf, Seq)>,
    /// What falling back loses or changes, one sentence each.
    pub loses: Vec<String>,
    /// `Ok`: done (or would be); `Err`: why it cannot be.
    pub outcome: std::result::Result<(), String>,
}

/// The file a damaged manifest is moved to (no longer a generation: never read again).
fn kept_as(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".damaged");
    path.with_file_name(name)
}

impl Vault {
    /// Mends a damaged current manifest, offline (takes the vault's lock): the vault goes on
    /// from the previous generation, written as a new one, with every seal the lost commit
    /// made redone from the write log (so no record is lost), and the last stop recorded as
    /// a machine crash (the next `serve` redoes the log from the older checkpoint and
    /// compares the dirty regions). `Ok(None)`: the current manifest is intact. With
    /// `dry_run`, says what it would do.
    pub fn repair_manifest(
        dir: &Path,
        role: &str,
        dry_run: bool,
    ) -> Result<Option<ManifestRepair>> {
        Self::repair_manifest_on(rewind_storage::local(), dir, role, dry_run)
    }

    /// [`Vault::repair_manifest`] on `fs`.
    pub fn repair_manifest_on(
        fs: Arc<dyn Storage>,
        dir: &Path,
        role: &str,
        dry_run: bool,
    ) -> Result<Option<ManifestRepair>> {
        let fs = fs.as_ref();
        if !manifest_store::exists(fs, dir) {
            return Err(VaultError::NotAVault {
                path: dir.to_path_buf(),
            });
        }
        let _lock = VaultLock::acquire(fs, dir, role)?;
        let err = match manifest_store::load(fs, dir) {
            Ok(_) => return Ok(None),
            Err(e @ VaultError::Corrupted { .. }) => e,
            Err(e) => return Err(e),
        };
        let (prev, bad) = match manifest_store::load_or_previous(fs, dir) {
            Ok((prev, _, bad)) => (prev, bad),
            Err(_) => {
                // No intact previous generation: nothing to fall back to.
                let damaged = match &err {
                    VaultError::Corrupted { path, .. } => path.clone(),
                    _ => dir.to_path_buf(),
                };
                return Ok(Some(ManifestRepair {
                    kept_as: kept_as(&damaged),
                    damaged,
                    damage: err.to_string(),
                    previous: 0,
                    generation: 0,
                    resealed: Vec::new(),
                    orphaned: Vec::new(),
                    loses: Vec::new(),
                    outcome: Err("there is no intact previous generation to fall back to: restore the vault directory from a copy, or `rewind restore --salvage` what reads".into()),
                }));
            }
        };
        let (damaged, damage) = bad.map_or_else(
            || (dir.to_path_buf(), err.to_string()),
            |(p, e)| (p, e.to_string()),
        );
        let current_gen =
            names::parse_manifest(&damaged.file_name().unwrap_or_default().to_string_lossy())
                .unwrap_or(prev.generation);
        let mut m = prev.clone();
        m.generation = Generation(current_gen.0.max(prev.generation.0) + 1);
        let mut out = ManifestRepair {
            kept_as: kept_as(&damaged),
            damaged,
            damage,
            previous: prev.generation.0,
            generation: m.generation.0,
            resealed: Vec::new(),
            orphaned: Vec::new(),
            loses: Vec::new(),
            outcome: Ok(()),
        };
        let maps = reseal_from_log(fs, dir, &mut m, &mut out)?;

        // The lost commit may have recorded a server starting: record a machine crash so
        // that the next serve redoes the log from a checkpoint that certainly held and
        // compares the dirty regions, whatever the lost commit said.
        let serving = m.intents.iter().find_map(|i| match i {
            Intent::Serving(s) => Some(*s),
            _ => None,
        });
        let checkpoint =
            serving.map_or(Seq(prev.next_seq.0.saturating_sub(1)), |s| s.checkpoint_seq);
        m.intents.retain(|i| !matches!(i, Intent::Serving(_)));
        m.intents.push(Intent::Serving(Serving {
            boot_id: [0; 16],
            checkpoint_seq: checkpoint,
        }));
        out.loses.push(format!(
            "the last stop is treated as a machine crash: the next `rewind serve` writes the log from seq {} on into the primary again and compares the dirty regions (all regions if the dirty region log is gone)",
            checkpoint.0 + 1
        ));
        out.loses.push("whatever else the lost commit alone recorded: suspect marks that `rewind verify` made then (run `rewind verify` again to find them), a change of the seal policy, the start or end of an in-place restore".into());
        if let Some(r) = m.intents.iter().find_map(|i| match i {
            Intent::RestoreInPlace(r) => Some(r),
            _ => None,
        }) {
            out.loses.push(format!(
                "the previous generation records an in-place restore to {} under way: the next `rewind serve` or `rewind restore --in-place --resume` finishes it (if it had finished, that copies it again, over what was written since)",
                r.point
            ));
        }
        if dry_run {
            return Ok(Some(out));
        }
        for map in &maps {
            let i = map.interval;
            let path = dir
                .join(names::MAPS_DIR)
                .join(names::delta_map(i.seq_from, i.seq_to));
            fsutil::write_atomic(fs, &path, &map.encode())?;
        }
        let log_dir = dir.join(names::LOG_DIR);
        for (path, _) in &out.orphaned {
            fs.rename(path, &kept_as_orphan(path))
                .io("move aside", path)?;
        }
        if !out.orphaned.is_empty() {
            fs.sync_dir(&log_dir).io("fsync", &log_dir)?;
        }
        manifest_store::commit(fs, dir, &m)?;
        // The new generation is current: the damaged one is never read again, but kept.
        if fs.stat(&out.damaged).is_ok() {
            fs.rename(&out.damaged, &out.kept_as)
                .io("move aside", &out.damaged)?;
            fs.sync_dir(dir).io("fsync", dir)?;
        }
        Ok(Some(out))
    }
}

fn kept_as_orphan(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".orphaned");
    path.with_file_name(name)
}

/// Redoes, on `m`, the seals that the log shows and `m` does not: while a segment file
/// after `m`'s open segment exists, the open segment's records (checked) end right before
/// it and it holds records, the open segment is sealed as a seal does (segment entry, delta
/// map, its snapshots) and the next one becomes the open segment. A later segment with
/// records that do not continue the log is listed as orphaned. Returns the maps to write.
fn reseal_from_log(
    fs: &dyn Storage,
    dir: &Path,
    m: &mut Manifest,
    out: &mut ManifestRepair,
) -> Result<Vec<DeltaMap>> {
    let log_dir = dir.join(names::LOG_DIR);
    let bs = m.block_size;
    let mut later: Vec<SegmentId> = fs
        .list(&log_dir)
        .io("list", &log_dir)?
        .iter()
        .filter_map(|n| names::parse_segment(n))
        .filter(|id| id.0 > m.next_seq)
        .collect();
    later.sort();
    let mut maps = Vec::new();
    let mut later = later.into_iter().peekable();
    while let Some(&next) = later.peek() {
        let mut open =
            OpenSegment::recover(fs, &log_dir, SegmentId(m.next_seq), bs, m.vault_id, None)?;
        let (Some(first), Some(last)) = (open.records.first(), open.records.last()) else {
            break;
        };
        if last.seq.next() != next.0 {
            break;
        }
        later.next();
        let interval = Interval {
            seq_from: first.seq,
            seq_to: last.seq,
            time_from_ns: first.timestamp_ns,
            time_to_ns: last.timestamp_ns,
        };
        let map = open.present.delta_map(interval);
        m.segments.push(SegmentEntry {
            id: open.id,
            last_seq: last.seq,
            length: open.len(),
            time_from_ns: first.timestamp_ns,
            time_to_ns: last.timestamp_ns,
        });
        m.maps.push(MapEntry {
            interval,
            flags: 0,
            retention_class: 0,
            blocks_changed: map.len() as u64,
        });
        m.snapshots
            .extend(open.markers.iter().map(ScannedMarker::to_snapshot));
        m.next_seq = last.seq.next();
        out.resealed.push((interval.seq_from, interval.seq_to));
        maps.push(map);
    }
    // What is left after the open segment does not continue it: keep what holds records.
    for id in later {
        let seg = OpenSegment::recover(fs, &log_dir, id, bs, m.vault_id, None)?;
        if let Some(r) = seg.records.first() {
            out.orphaned.push((seg.path.clone(), r.seq));
            out.loses.push(format!(
                "{} holds records from seq {} on, which do not continue the log before it (it ends at seq {}): moved aside as {}, not read",
                seg.path.display(),
                r.seq.0,
                m.next_seq.0.saturating_sub(1),
                kept_as_orphan(&seg.path).display()
            ));
        }
    }
    Ok(maps)
}

impl Vault {
    /// Derives a damaged `base.sums` again, from the primary where the live point still
    /// reads the base image (those blocks hold the base image's data in the primary, so a
    /// base image block that differs is rewritten from it too), and from the base image
    /// file, on trust, where blocks changed since (an old sum that still agrees is kept).
    /// Only when the user asks: it trusts the primary at `primary`, which must be this
    /// vault's and in step with it (a clean last stop, no in-place restore under way).
    /// `Ok(None)`: base.sums is intact (every chunk of it is read to tell). Needs the
    /// writer's lock; reopen the vault after.
    pub fn rederive_base_sums(
        &self,
        primary: &Path,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<Option<SumsRepair>> {
        self.scan_base_sums()?;
        let Some(damage) = self
            .damage()
            .iter()
            .find(|d| d.structure == "base checksums")
            .map(|d| d.error.clone())
        else {
            return Ok(None);
        };
        {
            let inner = self.lock_writable()?;
            let unclean = inner
                .manifest
                .intents
                .iter()
                .any(|i| matches!(i, Intent::Serving(_) | Intent::RestoreInPlace(_)));
            if unclean {
                return Err(VaultError::NotNow(
                    "the primary may not be in step with the vault (the last stop was not clean, or an in-place restore is under way): run `rewind serve` once so that it recovers, stop it, and repair again".into(),
                ));
            }
        }
        let file = self.fs().open(primary, Open::read()).io("open", primary)?;
        let view = self.view(&Point::Latest)?;
        let mut unchanged = |first: u64, count: u64| -> Result<Vec<bool>> {
            let mut out = vec![false; count as usize];
            for e in view.extents(first, count)? {
                if matches!(e.kind, ExtentKind::Base | ExtentKind::BaseHole) {
                    for b in e.first_block..e.end() {
                        out[(b - first) as usize] = true;
                    }
                }
            }
            Ok(out)
        };
        let mut r = self.shared.base.rederive_sums(
            self.fs(),
            (file.as_ref(), primary),
            self.shared.blocks,
            &mut unchanged,
            dry_run,
            progress,
        )?;
        r.damage = damage;
        Ok(Some(r))
    }
}
