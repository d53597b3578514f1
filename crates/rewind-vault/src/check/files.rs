//! The vault's files other than the write log, the delta maps and the base image (see
//! `base.rs`): manifests, the control pointer, leftovers; and a check of the files on their
//! own when no manifest is intact.

use rewind_format::control::ControlPointer;
use rewind_format::delta_map::DeltaMap;
use rewind_format::manifest::Manifest;
use rewind_format::{names, Generation, SegmentId, Seq};

use super::report::{Fault, Impact};
use super::segments::{self, Expect, Limit};
use super::source::Opened;
use super::{Checker, Scope, NO_OPEN};
use crate::error::Corruption;

impl Checker<'_> {
    /// Bytes the check is expected to read: every file but the lock.
    pub(super) fn total_bytes(&self) -> u64 {
        let mut total = 0;
        for sub in ["", names::BASE_DIR, names::LOG_DIR, names::MAPS_DIR] {
            for (name, len) in self.src.list(&self.dir.join(sub)).unwrap_or_default() {
                if name != names::LOCK && name != names::DRL {
                    total += len.unwrap_or(0);
                }
            }
        }
        total
    }

    /// Decodes every manifest generation there is; returns the catalog to check the rest
    /// against: online the one the server holds, offline the current one if it is intact,
    /// else the previous one.
    pub(super) fn manifests(&mut self, scope: Option<&Scope>) -> Option<Manifest> {
        let names_here = match self.src.list(&self.dir) {
            Ok(n) => n,
            Err(fault) => {
                let dir = self.dir.clone();
                self.problem(&dir, (0, 0), "vault directory".into(), fault, NO_OPEN);
                return scope.map(|s| s.manifest.clone());
            }
        };
        let mut gens: Vec<Generation> = names_here
            .iter()
            .filter_map(|(n, _)| names::parse_manifest(n))
            .collect();
        gens.sort();
        let mut decoded: Vec<(Generation, Option<Manifest>)> = Vec::new();
        let mut damaged: Vec<(Generation, u64, Fault)> = Vec::new();
        for &g in &gens {
            match self.manifest(g) {
                Some(Ok(m)) => decoded.push((g, Some(m))),
                Some(Err((len, fault))) => {
                    damaged.push((g, len, fault));
                    decoded.push((g, None));
                }
                // Removed by a commit since the listing (a server commits while we read).
                None => {}
            }
        }
        let current = decoded.last().map(|(g, _)| *g);
        let previous_intact = decoded.len().checked_sub(2).map(|i| decoded[i].1.is_some());
        for (g, len, fault) in damaged {
            let impact = if Some(g) == current {
                Impact::Vault {
                    previous_manifest_intact: previous_intact,
                }
            } else {
                Impact::Nothing("an older generation, kept only for recovery by hand")
            };
            let path = self.dir.join(names::manifest(g));
            self.problem(
                &path,
                (0, len),
                format!("manifest generation {g}"),
                fault,
                impact,
            );
        }
        if gens.is_empty() {
            let dir = self.dir.clone();
            self.problem(
                &dir,
                (0, 0),
                "manifest".into(),
                Corruption::Missing.into(),
                NO_OPEN,
            );
        }
        if let Some(s) = scope {
            return Some(s.manifest.clone());
        }
        let mut intact = decoded.into_iter().rev();
        match intact.next() {
            Some((_, Some(m))) => Some(m),
            Some((_, None)) => {
                let m = intact.next().and_then(|(_, m)| m);
                self.used_previous = m.is_some();
                m
            }
            None => None,
        }
    }

    /// Reads and decodes generation `g`: the manifest, or the file's length and what is
    /// wrong; `None` when the file is gone.
    fn manifest(&mut self, g: Generation) -> Option<Result<Manifest, (u64, Fault)>> {
        let path = self.dir.join(names::manifest(g));
        let f = match self.src.open(&path) {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(fault) => return Some(Err((0, fault))),
        };
        self.files += 1;
        Some(match self.src.read_all(&f).map(|b| Manifest::decode(&b)) {
            Ok(Ok(m)) if m.generation == g => Ok(m),
            Ok(Ok(_)) => {
                let c = Corruption::Inconsistent("generation differs from the file name");
                Err((f.len, c.into()))
            }
            Ok(Err(e)) => Err((f.len, Corruption::Decode(e).into())),
            Err(fault) => Err((f.len, fault)),
        })
    }

    /// Files the catalog does not name: leftovers of interrupted commits (the next writer
    /// removes them), files of seals newer than an online check's catalog, files rewind
    /// does not know; and the control pointer of a running server.
    pub(super) fn other_files(&mut self, m: Option<&Manifest>) {
        self.control_pointer();
        let listed_maps: std::collections::HashSet<String> = m
            .map(|m| {
                m.maps
                    .iter()
                    .map(|e| names::delta_map(e.interval.seq_from, e.interval.seq_to))
                    .collect()
            })
            .unwrap_or_default();
        let next = m.map(|m| m.next_seq);
        let known_root = [
            names::LOCK,
            names::CONTROL,
            names::DRL,
            names::BASE_DIR,
            names::LOG_DIR,
            names::MAPS_DIR,
        ];
        for sub in ["", names::BASE_DIR, names::LOG_DIR, names::MAPS_DIR] {
            let dir = self.dir.join(sub);
            for (name, _) in self.src.list(&dir).unwrap_or_default() {
                let path = dir.join(&name);
                let text = if name.ends_with(names::TMP_SUFFIX) {
                    Some(
                        "a leftover of an interrupted commit (the next writer removes it)"
                            .to_string(),
                    )
                } else {
                    match sub {
                        "" if known_root.contains(&name.as_str()) || names::parse_manifest(&name).is_some() => None,
                        s if s == names::BASE_DIR && (name == names::BASE_IMAGE || name == names::BASE_SUMS) => None,
                        s if s == names::LOG_DIR => match (names::parse_segment(&name), next) {
                            (Some(id), Some(next)) if id.0 <= next => None,
                            (Some(_), Some(_)) if self.online => None,
                            (Some(_), Some(_)) => Some("a segment after the open one: the next segment of a seal a crash interrupted (the next writer seals the open one and keeps this one if it continues it, else removes it)".into()),
                            (Some(_), None) => None,
                            (None, _) => Some("not a file of a vault; nothing reads it".into()),
                        },
                        s if s == names::MAPS_DIR => match names::parse_delta_map(&name) {
                            Some(_) if listed_maps.contains(&name) || m.is_none() => None,
                            Some((from, _)) if self.online && next.is_some_and(|n| from >= n) => None,
                            Some(_) => Some("a delta map the manifest does not list: a leftover of an interrupted seal (the next writer removes it)".into()),
                            None => Some("not a file of a vault; nothing reads it".into()),
                        },
                        _ => Some("not a file of a vault; nothing reads it".into()),
                    }
                };
                if let Some(text) = text {
                    self.note(&path, text);
                }
            }
        }
    }

    /// The control pointer a running server leaves: damaged, clients take the vault for one
    /// without a server.
    fn control_pointer(&mut self) {
        let path = self.dir.join(names::CONTROL);
        let Ok(Some(f)) = self.src.open(&path) else {
            return;
        };
        self.files += 1;
        let res = self.src.read_all(&f).and_then(|b| {
            ControlPointer::decode(&b)
                .map(|_| ())
                .map_err(|e| Corruption::Decode(e).into())
        });
        if let Err(fault) = res {
            let impact = Impact::Nothing("no point: clients take the vault for one without a running server (the next server rewrites it)");
            self.problem(&path, (0, f.len), "control pointer".into(), fault, impact);
        }
    }

    /// No manifest is intact (the vault does not open): each file is checked on its own.
    pub(super) fn without_catalog(&mut self) {
        let sums_bs = self.sums_block_size();
        let mut bs = sums_bs.unwrap_or(rewind_format::DEFAULT_BLOCK_SIZE);
        if let Some((sums, blocks)) = sums_bs.and_then(|bs| self.base_sums(bs, None)) {
            self.block_size = bs;
            self.volume_size = blocks * u64::from(bs);
            self.base_image(bs, self.volume_size, &sums, false);
        }
        let log = self.dir.join(names::LOG_DIR);
        let mut ids: Vec<SegmentId> = self
            .src
            .list(&log)
            .unwrap_or_default()
            .iter()
            .filter_map(|(name, _)| names::parse_segment(name))
            .collect();
        ids.sort();
        for (i, &id) in ids.iter().enumerate() {
            let Ok(Some(f)) = self.src.open(&log.join(names::segment(id))) else {
                continue;
            };
            self.files += 1;
            if sums_bs.is_none() {
                bs = segment_block_size(&mut self.src, &f).unwrap_or(bs);
            }
            // All but the newest are sealed: they end where the next one begins.
            let limit = match ids.get(i + 1) {
                Some(next) => Limit::Sealed {
                    length: f.len,
                    last_seq: Seq(next.0 .0 - 1),
                },
                None => Limit::Open { durable: None },
            };
            self.lone_segment(&f, id, bs, limit);
        }
        let maps = self.dir.join(names::MAPS_DIR);
        for (name, _) in self.src.list(&maps).unwrap_or_default() {
            if names::parse_delta_map(&name).is_none() {
                continue;
            }
            let Ok(Some(f)) = self.src.open(&maps.join(&name)) else {
                continue;
            };
            self.files += 1;
            let res = self.src.read_all(&f).and_then(|b| {
                DeltaMap::decode_owned(b)
                    .map(|_| ())
                    .map_err(|e| Corruption::Decode(e).into())
            });
            if let Err(fault) = res {
                self.problem(
                    &f.path,
                    (0, f.len),
                    "delta map".into(),
                    fault,
                    Impact::Unknown,
                );
            }
        }
    }

    fn lone_segment(&mut self, f: &Opened, id: SegmentId, bs: u32, limit: Limit) {
        let want = Expect {
            id,
            block_size: bs,
            vault_id: None,
            limit,
        };
        let scanned = segments::scan(&mut self.src, f, &want, &mut |_, _| {});
        for span in scanned.spans {
            let what = match span.first_seq {
                None => "segment header".to_string(),
                Some(s) => format!("records from seq {s}"),
            };
            self.problem(
                &f.path,
                (span.offset, span.end - span.offset),
                what,
                span.fault,
                Impact::Unknown,
            );
        }
    }

    /// The block size `base.sums` says, if it decodes.
    fn sums_block_size(&mut self) -> Option<u32> {
        let path = self.dir.join(names::BASE_DIR).join(names::BASE_SUMS);
        let f = self.src.open(&path).ok().flatten()?;
        let mut head = [0u8; 16];
        let n = self.src.read_at(&f, &mut head, 0).ok()?;
        (n == 16)
            .then(|| u32::from_le_bytes([head[12], head[13], head[14], head[15]]))
            .filter(|bs| rewind_format::valid_block_size(*bs))
    }
}

/// The block size a segment's header says, if it decodes.
fn segment_block_size(src: &mut super::source::Source<'_>, f: &Opened) -> Option<u32> {
    let mut head = [0u8; rewind_format::segment::HEADER_LEN];
    src.read_at(f, &mut head, 0).ok()?;
    rewind_format::segment::SegmentHeader::decode(&head)
        .ok()
        .map(|h| h.block_size)
}
