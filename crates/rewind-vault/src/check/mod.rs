//! `rewind check`: a scrub that reads every byte of the vault (manifests, base image and its
//! checksums, every record of the write log, every delta map) and reports each damaged
//! structure with its file, offset and the points it breaks. It keeps going after the first
//! problem, and changes nothing.
//!
//! Offline it holds the vault's lock, so nothing changes under it. Online ([`Vault::check`],
//! inside the server) it reads what the catalog held when it started: sealed files are
//! immutable, and of the open segment only the part a flush made durable; it takes the
//! vault's lock only to copy the catalog, never while it reads.
//!
//! Order: manifests, base image, then the intervals in seq order (each one's delta map, then
//! its segment, whose records are replayed and compared with the map), then the open
//! segment. Walking the log in order is what tells, for damage that blocks are read from,
//! where each block is written again (see [`impact`]).

mod base;
mod files;
mod impact;
mod maps;
mod report;
mod segments;
mod source;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use rewind_format::delta_map::DeltaMap;
use rewind_format::extents::{ExtentMap, ExtentOverlay, NewLoc};
use rewind_format::manifest::{Manifest, MapEntry, SegmentEntry};
use rewind_format::record::{RecordKind, HEADER_LEN};
use rewind_format::segment::HEADER_LEN as SEG_HEADER_LEN;
use rewind_format::{names, SegmentId, Seq};
use roaring::RoaringTreemap;

pub use report::{CheckReport, Fault, Impact, Note, PointRange, Problem};

use crate::error::{Corruption, Result, VaultError};
use crate::{Progress, Vault};
use impact::{Tracker, Upto};
use segments::{Expect, Limit, Scanned, Span};
use source::{Opened, Source};

/// The vault does not open until it is repaired.
const NO_OPEN: Impact = Impact::Vault {
    previous_manifest_intact: None,
};

/// How a check runs.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Read at most this many bytes per second (`None`: as fast as the disk goes).
    pub rate: Option<u64>,
    /// Set it to stop the check early; the report then covers what was read.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// What an online check reads: the catalog the running vault holds, and the durable end of
/// its open segment.
#[derive(Debug)]
pub(crate) struct Scope {
    pub manifest: Manifest,
    /// Bytes of the open segment that a flush made durable.
    pub open_durable: u64,
    /// The newest durable seq.
    pub newest: Seq,
    /// Markers of the open interval (name, seq), durable ones only.
    pub open_markers: Vec<(String, Seq)>,
}

/// Checks the vault in `dir` while no server holds it. Holds the vault's lock meanwhile (a
/// writer that starts is refused); where the lock cannot be taken for lack of permission
/// (a read-only copy), checks without it. A vault held by another writer is
/// [`VaultError::Locked`].
pub fn check_vault(
    dir: &Path,
    opts: &CheckOptions,
    progress: &dyn Progress,
) -> Result<CheckReport> {
    check_vault_on(rewind_storage::local(), dir, opts, progress)
}

/// [`check_vault`] on `fs`.
pub fn check_vault_on(
    fs: std::sync::Arc<dyn rewind_storage::Storage>,
    dir: &Path,
    opts: &CheckOptions,
    progress: &dyn Progress,
) -> Result<CheckReport> {
    let is_dir = fs
        .stat(&dir.join(names::BASE_DIR))
        .is_ok_and(|s| s.kind == rewind_storage::Kind::Dir);
    if !crate::manifest_store::exists(fs.as_ref(), dir) && !is_dir {
        return Err(VaultError::NotAVault {
            path: dir.to_path_buf(),
        });
    }
    let mut notes = Vec::new();
    let _lock = match crate::lock::VaultLock::acquire(fs.as_ref(), dir, "rewind check") {
        Ok(l) => Some(l),
        Err(e @ VaultError::Locked { .. }) => return Err(e),
        Err(e) => {
            notes.push(Note {
                path: dir.join(names::LOCK),
                text: format!(
                    "checked without the vault's lock ({e}): a writer may change files meanwhile"
                ),
            });
            None
        }
    };
    let mut ck = Checker::new(fs, dir, opts, progress, false);
    ck.notes = notes;
    Ok(ck.run(None))
}

impl Vault {
    /// Checks this vault while it serves (see [`check_vault`] for what is read): what the
    /// catalog holds now, and the durable part of the open segment. Hosts keep writing; the
    /// vault's lock is held only to copy the catalog.
    pub fn check(&self, opts: &CheckOptions, progress: &dyn Progress) -> Result<CheckReport> {
        let scope = self.check_scope()?;
        Ok(Checker::new(self.storage().clone(), self.dir(), opts, progress, true).run(Some(scope)))
    }
}

/// One check's state.
pub(crate) struct Checker<'a> {
    dir: PathBuf,
    src: Source<'a>,
    online: bool,
    problems: Vec<Problem>,
    notes: Vec<Note>,
    tracker: Tracker,
    snapshots: Vec<(String, Seq)>,
    newest: Seq,
    files: u64,
    generation: Option<u64>,
    used_previous: bool,
    block_size: u32,
    volume_size: u64,
    rate: Option<u64>,
}

/// Where a damaged span of a segment is.
#[derive(Debug, Clone, Copy)]
enum Where {
    Sealed { a: Seq, b: Seq },
    OpenOnline { a: Seq },
    OpenOffline,
}

/// What the scan of a sealed segment gives the interval's check.
struct SealedScan {
    file: Opened,
    scanned: Scanned,
    /// Block -> newest location in the interval, as a replay of its records gives it.
    expected: ExtentMap,
}

impl<'a> Checker<'a> {
    fn new(
        fs: std::sync::Arc<dyn rewind_storage::Storage>,
        dir: &Path,
        opts: &CheckOptions,
        progress: &'a dyn Progress,
        online: bool,
    ) -> Self {
        Checker {
            dir: dir.to_path_buf(),
            src: Source::new(fs, progress, opts.rate, opts.cancel.clone()),
            online,
            problems: Vec::new(),
            notes: Vec::new(),
            tracker: Tracker::default(),
            snapshots: Vec::new(),
            newest: Seq::BASE,
            files: 0,
            generation: None,
            used_previous: false,
            block_size: 0,
            volume_size: 0,
            rate: opts.rate.filter(|r| *r > 0),
        }
    }

    fn run(mut self, scope: Option<Scope>) -> CheckReport {
        let started = Instant::now();
        let total = self.total_bytes();
        self.src.progress().start("checking the vault", total);
        let catalog = self.manifests(scope.as_ref());
        match &catalog {
            Some(m) => {
                self.block_size = m.block_size;
                self.volume_size = m.volume_size;
                self.generation = Some(m.generation.0);
                self.snapshots = m
                    .snapshots
                    .iter()
                    .map(|s| (s.name.clone(), s.seq))
                    .collect();
                self.newest = Seq(m.next_seq.0 - 1);
                self.base(m);
                self.intervals(m);
                self.open_segment(m, scope.as_ref());
            }
            None => self.without_catalog(),
        }
        self.other_files(catalog.as_ref());
        self.src.progress().finish();
        self.finish(started)
    }

    /// Records a problem; returns its index.
    fn problem(
        &mut self,
        path: &Path,
        (offset, length): (u64, u64),
        structure: String,
        fault: Fault,
        impact: Impact,
    ) -> usize {
        self.problems.push(Problem {
            path: path.to_path_buf(),
            offset,
            length,
            structure,
            fault,
            impact,
        });
        self.problems.len() - 1
    }

    fn note(&mut self, path: &Path, text: String) {
        self.notes.push(Note {
            path: path.to_path_buf(),
            text,
        });
    }

    /// Opens a file the catalog names (counted); a missing or unopenable one is a problem
    /// with `impact`, whose index comes back as the error.
    pub(super) fn open_named(
        &mut self,
        path: &Path,
        what: &str,
        impact: Impact,
    ) -> Result<Opened, usize> {
        let fault = match self.src.open(path) {
            Ok(Some(f)) => {
                self.files += 1;
                return Ok(f);
            }
            Ok(None) => Corruption::Missing.into(),
            Err(fault) => fault,
        };
        Err(self.problem(path, (0, 0), what.into(), fault, impact))
    }

    /// The intervals in seq order: each one's delta map and segment.
    fn intervals(&mut self, m: &Manifest) {
        let paired = m.maps.len() == m.segments.len()
            && m.maps
                .iter()
                .zip(&m.segments)
                .all(|(e, s)| e.interval.seq_from == s.id.0 && e.interval.seq_to == s.last_seq);
        if !paired {
            self.note(
                &self.dir.clone(),
                "delta maps and segments are not one to one: maps were not compared with the log"
                    .into(),
            );
        }
        for (i, s) in m.segments.iter().enumerate() {
            if self.src.cancelled() {
                return;
            }
            let e = if paired { m.maps.get(i) } else { None };
            let map = e.and_then(|e| self.map(e));
            self.interval(m, s, e, map.as_ref());
        }
        if !paired {
            for e in &m.maps {
                if self.src.cancelled() {
                    return;
                }
                self.map(e);
            }
        }
    }

    /// Loads and checks the delta map of `e`; damage is a problem and `None`.
    fn map(&mut self, e: &MapEntry) -> Option<DeltaMap> {
        let b = e.interval.seq_to;
        let path = self
            .dir
            .join(names::MAPS_DIR)
            .join(names::delta_map(e.interval.seq_from, b));
        let f = match self.open_named(&path, "delta map", Impact::Points(Vec::new())) {
            Ok(f) => f,
            Err(p) => {
                self.tracker.whole(p, b, Upto::Newest);
                return None;
            }
        };
        match maps::load(
            &mut self.src,
            &f,
            e,
            self.block_size,
            self.volume_size / u64::from(self.block_size),
        ) {
            Ok(map) => Some(map),
            Err(d) => {
                let p = self.problem(
                    &path,
                    (d.offset, d.length),
                    d.structure.into(),
                    d.fault,
                    Impact::Points(Vec::new()),
                );
                match d.blocks {
                    Some(blocks) if !d.whole => self.tracker.watch(p, b, blocks),
                    _ => self.tracker.whole(p, b, Upto::Newest),
                }
                None
            }
        }
    }

    /// Checks one sealed segment and, when `e` is its interval's map entry, the map against
    /// its records.
    fn interval(
        &mut self,
        m: &Manifest,
        s: &SegmentEntry,
        e: Option<&MapEntry>,
        map: Option<&DeltaMap>,
    ) {
        let Some(scan) = self.sealed_segment(m, s, map) else {
            return;
        };
        let (a, b) = (s.id.0, s.last_seq);
        let clean = scan.scanned.spans.is_empty();
        for span in scan.scanned.spans {
            self.record_damage(&scan.file, s.id, Where::Sealed { a, b }, span, map);
        }
        let (Some(e), Some(map), true) = (e, map, clean) else {
            return;
        };
        if let Some((at, bad)) = maps::compare(map, &scan.expected) {
            let path = self
                .dir
                .join(names::MAPS_DIR)
                .join(names::delta_map(e.interval.seq_from, e.interval.seq_to));
            let (start, len) = map.entries_range();
            let length = (start + len).saturating_sub(at);
            let p = self.problem(
                &path,
                (at, length),
                "delta map entries".into(),
                Corruption::Inconsistent("the delta map disagrees with the write log it indexes")
                    .into(),
                Impact::Points(Vec::new()),
            );
            self.tracker.watch(p, b, bad);
        }
    }

    /// Scans a sealed segment. A missing or short one breaks the points inside its
    /// interval (their replay reads the whole segment) and, from the interval's end on,
    /// reads of the blocks its delta map takes from the lost bytes.
    fn sealed_segment(
        &mut self,
        m: &Manifest,
        s: &SegmentEntry,
        map: Option<&DeltaMap>,
    ) -> Option<SealedScan> {
        let path = self.dir.join(names::LOG_DIR).join(names::segment(s.id));
        let (a, b) = (s.id.0, s.last_seq);
        let inside = Upto::Seq(Seq(b.0.saturating_sub(1)));
        let file = match self.open_named(&path, "write log segment", Impact::Points(Vec::new())) {
            Ok(f) => f,
            Err(p) => {
                self.tracker.whole(p, a, inside);
                if let Some(map) = map {
                    let lost = maps::blocks_from(map, s.id, 0, u64::MAX, |_, _| true);
                    self.tracker.watch(p, b, lost);
                }
                return None;
            }
        };
        if file.len < s.length {
            let c = Corruption::Length {
                expected: s.length,
                actual: file.len,
            };
            // The scan names the records cut off, and the blocks they held.
            let p = self.problem(
                &path,
                (file.len, 0),
                "write log segment (shorter than the manifest says)".into(),
                c.into(),
                Impact::Points(Vec::new()),
            );
            self.tracker.whole(p, a, inside);
        } else if file.len > s.length {
            self.note(
                &path,
                format!(
                    "{} bytes after the sealed length {} are not part of the log",
                    file.len - s.length,
                    s.length
                ),
            );
        }
        let want = Expect {
            id: s.id,
            block_size: m.block_size,
            vault_id: Some(m.vault_id),
            limit: Limit::Sealed {
                length: s.length,
                last_seq: s.last_seq,
            },
        };
        let mut expected = ExtentOverlay::new(m.block_size);
        let tracker = &mut self.tracker;
        let bs = m.block_size;
        let scanned = segments::scan(&mut self.src, &file, &want, &mut |r, payload| {
            if r.kind == RecordKind::Marker {
                return;
            }
            tracker.written(r.seq, r.first_block, u64::from(r.block_count));
            replay(&mut expected, s.id, r, payload, bs);
        });
        for n in &scanned.notes {
            self.notes.push(Note {
                path: path.clone(),
                text: n.clone(),
            });
        }
        Some(SealedScan {
            file,
            scanned,
            expected: expected.freeze(),
        })
    }

    /// The open segment: offline to its end (a torn tail is not damage), online up to what
    /// is durable.
    fn open_segment(&mut self, m: &Manifest, scope: Option<&Scope>) {
        if self.src.cancelled() {
            return;
        }
        let id = SegmentId(m.next_seq);
        let path = self.dir.join(names::LOG_DIR).join(names::segment(id));
        let gone = Impact::Nothing("the vault opens without it (the next writer creates it again); records it held, if any, are lost");
        let Ok(file) = self.open_named(&path, "open write log segment", gone) else {
            return;
        };
        let want = Expect {
            id,
            block_size: m.block_size,
            vault_id: Some(m.vault_id),
            limit: Limit::Open {
                durable: scope.map(|s| s.open_durable),
            },
        };
        let tracker = &mut self.tracker;
        let scanned = segments::scan(&mut self.src, &file, &want, &mut |r, _| {
            if r.kind != RecordKind::Marker {
                tracker.written(r.seq, r.first_block, u64::from(r.block_count));
            }
        });
        match scope {
            Some(s) => {
                self.newest = s.newest;
                self.snapshots.extend(s.open_markers.iter().cloned());
            }
            None => {
                if let Some(last) = scanned.last_seq {
                    self.newest = last;
                }
                self.snapshots
                    .extend(scanned.markers.iter().map(|(s, n)| (n.clone(), *s)));
            }
        }
        for n in &scanned.notes {
            self.notes.push(Note {
                path: path.clone(),
                text: n.clone(),
            });
        }
        let at = if scope.is_some() {
            Where::OpenOnline { a: id.0 }
        } else {
            Where::OpenOffline
        };
        for span in scanned.spans {
            self.record_damage(&file, id, at, span, None);
        }
    }

    /// A damaged span of segment `seg`. Points inside a sealed interval are answered by
    /// replaying its records, each checked: every point from just before the damage to the
    /// interval's end fails (a replay to point P checks the record after P too, before it
    /// stops). Points from the interval's end on read through its delta map: the blocks the
    /// map takes from the damaged bytes fail until they are written again.
    fn record_damage(
        &mut self,
        f: &Opened,
        seg: SegmentId,
        at: Where,
        span: Span,
        map: Option<&DeltaMap>,
    ) {
        let structure = match (span.first_seq, span.last_seq) {
            (None, _) => "segment header".to_string(),
            (Some(s), Some(t)) if s == t => format!("record seq {s}"),
            (Some(s), Some(t)) if t > s => format!("records seq {s}..={t}"),
            (Some(s), _) => format!("records from seq {s} to the end of the segment"),
        };
        let extent = (span.offset, span.end - span.offset);
        let torn_create = matches!(at, Where::OpenOffline | Where::OpenOnline { .. })
            && span.first_seq.is_none()
            && f.len <= SEG_HEADER_LEN as u64
            && matches!(span.fault, Fault::Corrupted(Corruption::Decode(_)));
        if torn_create {
            // What a torn creation leaves: the next writer writes the header again.
            let nothing = Impact::Nothing(
                "the open segment holds no record yet; the next writer writes its header again",
            );
            self.problem(&f.path, extent, structure, span.fault, nothing);
            return;
        }
        let (a, to) = match at {
            // The next open scans the open segment and refuses damage before its tail.
            Where::OpenOffline => {
                self.problem(&f.path, extent, structure, span.fault, NO_OPEN);
                return;
            }
            // Reads of the damaged record's blocks fail now; once the interval is sealed,
            // every point of it from the damage on (conservatively: all of them).
            Where::OpenOnline { a } => (a, Upto::Newest),
            Where::Sealed { a, b } => (a, Upto::Seq(Seq(b.0 - 1))),
        };
        let from = match span.first_seq {
            None => a,
            Some(s) => Seq(s.0.saturating_sub(1)).max(a),
        };
        let p = self.problem(
            &f.path,
            extent,
            structure,
            span.fault,
            Impact::Points(Vec::new()),
        );
        self.tracker.whole(p, from, to);
        let (Some(map), Where::Sealed { b, .. }) = (map, at) else {
            return;
        };
        let bs = self.block_size as usize;
        let src = &mut self.src;
        let mut buf = vec![0u8; bs];
        let taken = maps::blocks_from(map, seg, span.offset, span.end, |_, _| true);
        let broken = maps::blocks_from(
            map,
            seg,
            span.offset,
            span.end,
            |off, crc| !matches!(src.read_at(f, &mut buf, off), Ok(n) if n == bs && crc32c::crc32c(&buf) == crc),
        );
        if let Some(s) = span.first_seq {
            self.tracker.written_set(s, &taken);
        }
        self.tracker.watch(p, b, broken);
    }

    fn finish(mut self, started: Instant) -> CheckReport {
        let ranges = std::mem::take(&mut self.tracker).finish(self.newest, &self.snapshots);
        for (p, r) in ranges {
            if let Some(Impact::Points(v)) = self.problems.get_mut(p).map(|p| &mut p.impact) {
                v.push(r);
            }
        }
        for p in &mut self.problems {
            if matches!(&p.impact, Impact::Points(v) if v.is_empty()) {
                p.impact = Impact::Nothing("no point reads these bytes now: reads go through the interval's delta map, and the blocks it takes from here check out on their own");
            }
        }
        CheckReport {
            dir: self.dir,
            online: self.online,
            generation: self.generation,
            used_previous_manifest: self.used_previous,
            newest_seq: self.newest,
            block_size: self.block_size,
            volume_size: self.volume_size,
            files: self.files,
            bytes_read: self.src.bytes_read,
            bytes_sparse: self.src.bytes_sparse,
            elapsed: started.elapsed(),
            rate: self.rate,
            problems: self.problems,
            notes: self.notes,
            cancelled: self.src.cancelled(),
        }
    }
}

/// Puts record `r` of segment `seg` into `map` the way the open segment indexes it (see
/// `OpenSegment::index`): a raw write as its blocks (with their crcs), a compressed write
/// as its record, zeroes and trims as zero; one extent each.
fn replay(
    map: &mut ExtentOverlay,
    seg: SegmentId,
    r: &segments::Rec,
    payload: Option<&[u8]>,
    bs: u32,
) {
    let (first, count) = (r.first_block, u64::from(r.block_count));
    match (r.kind, payload) {
        (RecordKind::Zero | RecordKind::Trim, _) => map.put(first, count, NewLoc::Zero),
        (_, Some(data)) if r.raw && data.len() as u64 == count * u64::from(bs) => {
            let crcs: Vec<u32> = data.chunks_exact(bs as usize).map(crc32c::crc32c).collect();
            map.put(
                first,
                count,
                NewLoc::Blocks {
                    segment: seg,
                    offset: r.offset + HEADER_LEN as u64,
                    crcs: &crcs,
                },
            );
        }
        _ => map.put(
            first,
            count,
            NewLoc::Record {
                segment: seg,
                offset: r.offset,
            },
        ),
    }
}

/// Blocks as runs `(first, count)`, for messages.
pub fn runs(blocks: &RoaringTreemap) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for b in blocks.iter() {
        match out.last_mut() {
            Some((first, n)) if *first + *n == b => *n += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}
