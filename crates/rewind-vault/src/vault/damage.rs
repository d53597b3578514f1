//! What a vault opens despite: damaged files found while opening, and which points each
//! breaks. The vault opens what is intact; a read that needs damaged bytes still fails with
//! [`VaultError::Corrupted`] naming the file and offset (nothing damaged is ever passed on).
//! This list says beforehand what will fail, for `rewind list` and `rewind serve`.
//!
//! Found at open (cheaply: a stat per segment and delta map, the header of the base
//! checksums, the manifest decoded): a missing or short sealed segment, a missing delta
//! map, a missing or damaged `base.sums` header (or, for a version 1 file, read whole, any
//! damage in it), and (read-only opens only) a damaged current manifest. Damage inside a
//! file (a flipped byte in a record, a map, or a chunk of `base.sums`) is found when it is
//! read, or by `rewind check`; a damaged chunk of `base.sums` found by a read since the open
//! is listed too (and [`Vault::scan_base_sums`] looks at every chunk).

use std::path::{Path, PathBuf};

use rewind_format::Seq;

use super::*;

/// A damaged file the vault opened despite (see [`Vault::damage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub path: PathBuf,
    /// Where the damage starts in the file.
    pub offset: u64,
    /// What the file is: `manifest`, `base checksums`, `write log segment`, `delta map`.
    pub structure: &'static str,
    /// What is wrong with it.
    pub error: String,
    /// Every read of points `from..=to` fails (`to` `None`: up to the newest point).
    pub unreadable: Option<(Seq, Option<Seq>)>,
    /// From this point on, reads of some blocks fail: those whose data is in the damage.
    pub blocks_from: Option<Seq>,
    /// What it breaks, in one sentence.
    pub breaks: String,
    /// What `rewind repair` does about it.
    pub repair: &'static str,
}

impl Damage {
    /// Whether every read of point `seq` fails.
    pub fn unreadable_at(&self, seq: Seq) -> bool {
        self.unreadable
            .is_some_and(|(from, to)| seq >= from && to.is_none_or(|t| seq <= t))
    }

    /// Whether some reads of point `seq` fail (all of them, or those of some blocks).
    pub fn affects(&self, seq: Seq) -> bool {
        self.unreadable_at(seq) || self.blocks_from.is_some_and(|f| seq >= f)
    }
}

/// A missing or short sealed segment (`actual` bytes, `None`: missing).
pub(super) fn segment(path: &Path, s: &SegmentEntry, actual: Option<u64>) -> Damage {
    let (a, b) = (s.id.0, s.last_seq);
    let (offset, error) = match actual {
        None => (0, Corruption::Missing.to_string()),
        Some(n) => (
            n,
            Corruption::Length {
                expected: s.length,
                actual: n,
            }
            .to_string(),
        ),
    };
    let inside = (b > a).then(|| (a, Some(Seq(b.0 - 1))));
    let breaks = match inside {
        Some(_) => format!(
            "every read of points seq {a}..={} (a point inside the interval replays its records); from seq {b} on, reads of the blocks whose newest data was in the lost bytes",
            b.0 - 1
        ),
        None => format!(
            "from seq {b} on, reads of the blocks whose newest data was in the lost bytes"
        ),
    };
    Damage {
        path: path.to_path_buf(),
        offset,
        structure: "write log segment",
        error,
        unreadable: inside,
        blocks_from: Some(b),
        breaks,
        repair: "cannot be mended: the records are gone (put the file back from a copy if there is one); `rewind restore --salvage` writes what reads",
    }
}

/// A missing delta map of interval `e`.
pub(super) fn map(path: &Path, e: &MapEntry) -> Damage {
    let b = e.interval.seq_to;
    Damage {
        path: path.to_path_buf(),
        offset: 0,
        structure: "delta map",
        error: Corruption::Missing.to_string(),
        unreadable: Some((b, None)),
        blocks_from: None,
        breaks: format!("every read of points from seq {b} on (their delta map chain holds it)"),
        repair: "rebuilds it from the interval's write log records",
    }
}

/// A damaged `base.sums`: `layout` says whether its sums could still be read (only the
/// file's checksum failed).
pub(super) fn base_sums(path: &Path, error: String, layout: bool) -> Damage {
    let breaks = if layout {
        "reads of base image blocks whose checksum in the damaged file does not match the block (the others still check out against their own sums, so they are read)"
    } else {
        "every read of a block from the base image (points read it where no record since wrote the block)"
    };
    Damage {
        path: path.to_path_buf(),
        offset: 0,
        structure: "base checksums",
        error,
        unreadable: None,
        blocks_from: Some(Seq::BASE),
        breaks: breaks.into(),
        repair: "with --rederive-base-sums (only then: it trusts the primary), derives the sums again from the primary where blocks are unchanged since the base image and from the base image file, on trust, where they changed; until then `rewind restore --salvage` writes what reads",
    }
}

/// The current manifest could not be read and a reader uses the previous generation.
pub(super) fn manifest(path: &Path, error: String, previous: &Manifest) -> Damage {
    Damage {
        path: path.to_path_buf(),
        offset: 0,
        structure: "manifest",
        error,
        unreadable: None,
        blocks_from: None,
        breaks: format!(
            "the vault is shown as of the previous manifest (generation {}): what the newest commit added is not shown past seq {} (the write log after it is read as the open interval); writers refuse to open until it is repaired",
            previous.generation.0,
            previous.next_seq.0.saturating_sub(1)
        ),
        repair: "goes on from the previous generation, sealing again from the write log what the lost commit sealed, and says what that loses (`--dry-run` first)",
    }
}

/// Chunks of `base.sums` found damaged since the open (the header was intact): the sums of
/// their blocks are used as they are, a block read only when its bytes and its sum agree.
fn base_sums_chunks(path: &Path, offset: u64, error: String, chunks: usize) -> Damage {
    let error = if chunks > 1 {
        format!("{error} (and {} more chunks)", chunks - 1)
    } else {
        error
    };
    Damage {
        offset,
        ..base_sums(path, error, true)
    }
}

impl Vault {
    /// The damaged files this vault was opened despite (empty for an intact vault as far
    /// as opening can tell; `rewind check` reads every byte), and the chunks of
    /// `base.sums` reads found damaged since.
    pub fn damage(&self) -> Vec<Damage> {
        let mut out = self.damage.clone();
        let sums = self.shared.base.sums();
        if let Some((offset, error, n)) = sums.damage_found() {
            out.push(base_sums_chunks(sums.path(), offset, error, n));
        }
        out
    }

    /// Reads and checks every chunk of `base.sums` that is not a hole of the file (at
    /// most 4 bytes per block of data in the base image), so that [`Vault::damage`] names
    /// a damaged one. Opening does not: it reads the header only.
    pub fn scan_base_sums(&self) -> Result<()> {
        self.shared.base.sums().scan()
    }
}
