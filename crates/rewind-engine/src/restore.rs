//! Restore: write a new raw image of the volume as it was at a point ([`plan`],
//! [`execute`]), or bring the primary itself back to a point ([`plan_in_place`],
//! [`execute_in_place`], in [`in_place`]) by copying only the blocks changed since.
//!
//! Restore plans first ([`plan`]: what point, where from, how much), which `--dry-run`
//! prints, then [`execute`]s the plan: every block is read through a [`PointView`]
//! (verified against its checksum), all-zero blocks are left as holes, and the image is
//! written to a temporary file that is renamed into place only when it is complete and
//! durable. A failed restore leaves no image behind.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rewind_vault::{
    ExtentKind, Point, PointView, Progress, ResolvedPoint, SuspectEntry, Vault, VaultError,
};

use crate::intercept::InterceptError;

mod in_place;

pub use in_place::{execute_in_place, plan_in_place, resume_in_place, InPlacePlan};

/// Blocks read per step.
const CHUNK_BLOCKS: u64 = 256;
/// Blocks whose extents a restore asks for at once (bounds the extents held in memory).
const PLAN_STEP_BLOCKS: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{path} already exists; pass --force to replace it, or pick another path")]
    Exists { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Intercept(#[from] InterceptError),
    #[error("a restore worker thread panicked")]
    WorkerPanicked,
    #[error("the in-place restore to seq {target_seq} was interrupted after {copied} of {total} bytes; the primary is part way between that point and the one kept as snapshot {undo_snapshot}: finish it with `rewind restore --in-place --resume` (or start `rewind serve`, which finishes it first)")]
    Interrupted {
        target_seq: rewind_vault::Seq,
        undo_snapshot: String,
        copied: u64,
        total: u64,
    },
    #[error("the restore was stopped before it finished")]
    Stopped,
    #[error(transparent)]
    Recovery(Box<crate::recovery::RecoveryError>),
    #[error(transparent)]
    Protect(#[from] crate::protect::ProtectError),
}

type Result<T> = std::result::Result<T, RestoreError>;

fn io<T>(r: std::io::Result<T>, op: &'static str, path: &Path) -> Result<T> {
    r.map_err(|source| RestoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    })
}

/// What a restore will do.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub point: ResolvedPoint,
    pub to: PathBuf,
    pub replace: bool,
    pub volume_size: u64,
    pub block_size: u32,
    /// Blocks that come unchanged from the base image.
    pub from_base: u64,
    /// Of those, blocks in holes of the base image: known to be zero, never read.
    pub base_holes: u64,
    /// Blocks that come from write log records.
    pub from_log: u64,
    /// Blocks that were zeroed or trimmed (written as holes).
    pub zeroed: u64,
    /// Delta maps consulted to answer the point.
    pub maps_consulted: usize,
    /// Blocks the point reads from a delta map (or the base image) that a sync marked
    /// suspect: the vault's copy of them there was found wrong.
    pub suspect: Vec<SuspectEntry>,
    /// Salvage: write every block that reads, leave the unreadable ones as holes and list
    /// them (the image appears even so; the caller exits non-zero).
    pub salvage: bool,
}

/// Blocks a salvage could not read: `first..first + count`, and why (the first error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub first: u64,
    pub count: u64,
    pub error: String,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub bytes_written: u64,
    /// All-zero blocks left as holes.
    pub holes: u64,
    pub elapsed: Duration,
    /// Salvage only: the blocks that could not be read (left as holes), as runs.
    pub unreadable: Vec<Unreadable>,
}

/// Plans restoring `point` of `vault` to `to`. `replace` allows replacing an existing file.
pub fn plan(
    vault: &Vault,
    point: &Point,
    to: &Path,
    replace: bool,
) -> Result<(RestorePlan, PointView)> {
    plan_salvage(vault, point, to, replace, false)
}

/// [`plan`]; with `salvage`, a restore that writes what is readable (see
/// [`RestorePlan::salvage`]).
pub fn plan_salvage(
    vault: &Vault,
    point: &Point,
    to: &Path,
    replace: bool,
    salvage: bool,
) -> Result<(RestorePlan, PointView)> {
    crate::protect::check_restore_target(vault, to)?;
    let view = vault.view(point)?;
    if to.exists() && !replace {
        return Err(RestoreError::Exists {
            path: to.to_path_buf(),
        });
    }
    let (mut from_base, mut base_holes, mut from_log, mut zeroed) = (0, 0, 0, 0);
    let blocks = view.blocks();
    let mut b = 0;
    while b < blocks {
        let n = (blocks - b).min(PLAN_STEP_BLOCKS);
        for e in view
            .extents(b, n)
            .or_else(|e| salvage_extents(salvage, e, b, n))?
        {
            match e.kind {
                ExtentKind::Base => from_base += e.count,
                ExtentKind::BaseHole => {
                    from_base += e.count;
                    base_holes += e.count;
                }
                ExtentKind::Record => from_log += e.count,
                ExtentKind::Zero => zeroed += e.count,
            }
        }
        b += n;
    }
    let plan = RestorePlan {
        point: view.point(),
        to: to.to_path_buf(),
        replace,
        volume_size: blocks * u64::from(view.block_size()),
        block_size: view.block_size(),
        from_base,
        base_holes,
        from_log,
        zeroed,
        maps_consulted: view.maps_consulted(),
        suspect: if salvage {
            vault.suspect_reads(&view).unwrap_or_default()
        } else {
            vault.suspect_reads(&view)?
        },
        salvage,
    };
    Ok((plan, view))
}

/// Carries out a plan. On any error the partial image is removed.
pub fn execute(
    plan: &RestorePlan,
    view: &PointView,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    execute_or_stop(plan, view, progress, &AtomicBool::new(false))
}

/// [`execute`], stopping with [`RestoreError::Stopped`] once `stop` is set (a signal):
/// the partial image is removed and nothing appears at `plan.to`.
pub fn execute_or_stop(
    plan: &RestorePlan,
    view: &PointView,
    progress: &dyn Progress,
    stop: &AtomicBool,
) -> Result<RestoreReport> {
    let start = Instant::now();
    let partial = partial_path(&plan.to);
    let mut unreadable = Vec::new();
    let result = write_image(plan, view, &partial, progress, stop, &mut unreadable);
    match result {
        Ok((bytes_written, holes)) => {
            if plan.to.exists() && !plan.replace {
                let _ = std::fs::remove_file(&partial);
                return Err(RestoreError::Exists {
                    path: plan.to.clone(),
                });
            }
            io(
                std::fs::rename(&partial, &plan.to),
                "rename into place",
                &plan.to,
            )?;
            if let Some(dir) = plan.to.parent().filter(|d| !d.as_os_str().is_empty()) {
                io(
                    File::open(dir).and_then(|d| d.sync_all()),
                    "fsync directory",
                    dir,
                )?;
            }
            Ok(RestoreReport {
                bytes_written,
                holes,
                elapsed: start.elapsed(),
                unreadable,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

fn partial_path(to: &Path) -> PathBuf {
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    to.with_file_name(format!(".{name}.rewind-partial"))
}

fn write_image(
    plan: &RestorePlan,
    view: &PointView,
    path: &Path,
    progress: &dyn Progress,
    stop: &AtomicBool,
    unreadable: &mut Vec<Unreadable>,
) -> Result<(u64, u64)> {
    let out = io(
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path),
        "create",
        path,
    )?;
    io(out.set_len(plan.volume_size), "size", path)?;
    let bs = u64::from(plan.block_size);
    let blocks = view.blocks();
    let mut buf = vec![0u8; (CHUNK_BLOCKS * bs) as usize];
    let (mut written, mut holes) = (0u64, 0u64);
    progress.start("restoring", plan.volume_size);
    let mut b = 0;
    while b < blocks {
        let n = (blocks - b).min(PLAN_STEP_BLOCKS);
        let extents = view
            .extents(b, n)
            .or_else(|e| salvage_extents(plan.salvage, e, b, n))?;
        for e in extents {
            if e.kind.reads_as_zero() {
                // Zeroed, trimmed or a hole of the base image: nothing to read, a hole.
                holes += e.count;
                progress.advance(e.count * bs);
                continue;
            }
            let mut at = e.first_block;
            while at < e.end() {
                if stop.load(Ordering::Relaxed) {
                    return Err(RestoreError::Stopped);
                }
                let k = (e.end() - at).min(CHUNK_BLOCKS);
                let chunk = &mut buf[..(k * bs) as usize];
                match view.read_into(at, chunk) {
                    Ok(()) => {}
                    Err(e) if plan.salvage && salvageable(&e) => {
                        salvage_chunk(view, at, chunk, bs as usize, unreadable)
                    }
                    Err(e) => return Err(e.into()),
                }
                let (w, h) = write_nonzero(&out, path, chunk, at * bs, bs as usize)?;
                written += w;
                holes += h;
                progress.advance(k * bs);
                at += k;
            }
        }
        b += n;
    }
    io(out.sync_all(), "fsync", path)?;
    progress.finish();
    if stop.load(Ordering::Relaxed) {
        return Err(RestoreError::Stopped);
    }
    Ok((written, holes))
}

/// Where the extents of a range cannot be known (a delta map of the chain is damaged): in a
/// salvage, every block of it is read on its own (and fails if it needs the damage).
fn salvage_extents(
    salvage: bool,
    e: VaultError,
    first_block: u64,
    count: u64,
) -> std::result::Result<Vec<rewind_vault::Extent>, VaultError> {
    if !salvage || !salvageable(&e) {
        return Err(e);
    }
    Ok(vec![rewind_vault::Extent {
        first_block,
        count,
        kind: ExtentKind::Record,
    }])
}

/// Errors a salvage goes past: damaged bytes and failed reads of the vault's files.
fn salvageable(e: &VaultError) -> bool {
    matches!(e, VaultError::Corrupted { .. } | VaultError::Io { .. })
}

/// Reads `chunk` (blocks from `first`) block by block: the ones that fail are zeroed (left
/// as holes) and added to `unreadable`.
fn salvage_chunk(
    view: &PointView,
    first: u64,
    chunk: &mut [u8],
    bs: usize,
    unreadable: &mut Vec<Unreadable>,
) {
    for (i, block) in chunk.chunks_mut(bs).enumerate() {
        let b = first + i as u64;
        if let Err(e) = view.read_into(b, block) {
            block.fill(0);
            match unreadable.last_mut() {
                Some(u) if u.first + u.count == b => u.count += 1,
                _ => unreadable.push(Unreadable {
                    first: b,
                    count: 1,
                    error: e.to_string(),
                }),
            }
        }
    }
}

/// Writes the runs of non-zero blocks of `chunk` (at byte `offset` of the image), leaving
/// zero blocks as holes. Returns the bytes written and the zero blocks left.
fn write_nonzero(
    out: &File,
    path: &Path,
    chunk: &[u8],
    offset: u64,
    bs: usize,
) -> Result<(u64, u64)> {
    let n = chunk.len() / bs;
    let (mut written, mut holes) = (0u64, 0u64);
    let mut i = 0;
    while i < n {
        if is_zero(&chunk[i * bs..(i + 1) * bs]) {
            holes += 1;
            i += 1;
            continue;
        }
        let run_end = (i..n)
            .find(|&j| is_zero(&chunk[j * bs..(j + 1) * bs]))
            .unwrap_or(n);
        let bytes = &chunk[i * bs..run_end * bs];
        io(
            out.write_all_at(bytes, offset + (i * bs) as u64),
            "write",
            path,
        )?;
        written += bytes.len() as u64;
        i = run_end;
    }
    Ok((written, holes))
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::intercept::LiveVolume;
    use rewind_vault::{Compression, CreateOptions, NoProgress, SealPolicy};

    fn vault(dir: &Path) -> Vault {
        let primary = dir.join("primary.img");
        let mut data = vec![0u8; 64 * 512];
        data[512..1024].fill(7);
        std::fs::write(&primary, &data).unwrap();
        let opts = CreateOptions {
            primary,
            vault: dir.join("vault"),
            block_size: 512,
            compression: Compression::None,
            seal: SealPolicy::default(),
        };
        Vault::create(&opts, &NoProgress).unwrap()
    }

    #[test]
    fn restores_a_snapshot_sparse_and_exact() {
        let tmp = tempfile::tempdir().unwrap();
        let v = vault(tmp.path());
        v.write(4, &[9u8; 1024]).unwrap();
        v.snapshot("s1", false).unwrap();
        v.write(4, &[1u8; 512]).unwrap();
        v.trim(1, 1).unwrap();
        let to = tmp.path().join("out.img");
        let (p, view) = plan(&v, &"s1".parse().unwrap(), &to, false).unwrap();
        assert_eq!((p.from_log, p.zeroed), (2, 0));
        let r = execute(&p, &view, &NoProgress).unwrap();
        let img = std::fs::read(&to).unwrap();
        assert_eq!(img.len(), 64 * 512);
        assert!(img[512..1024].iter().all(|&b| b == 7));
        assert!(img[2048..3072].iter().all(|&b| b == 9));
        assert_eq!(r.bytes_written, 3 * 512);
        assert!(matches!(
            plan(&v, &"s1".parse().unwrap(), &to, false),
            Err(RestoreError::Exists { .. })
        ));
        let (p, view) = plan(&v, &"now".parse().unwrap(), &to, true).unwrap();
        execute(&p, &view, &NoProgress).unwrap();
        let img = std::fs::read(&to).unwrap();
        assert!(
            img[512..1024].iter().all(|&b| b == 0),
            "trimmed block reads as zeroes"
        );
        assert!(img[2048..2560].iter().all(|&b| b == 1));
    }

    /// The holes of the base image, and trimmed runs, are known zero: a restore leaves them
    /// as holes without reading them. Only the base's data blocks are read.
    #[test]
    fn restore_of_a_sparse_volume_reads_only_its_data() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let bs = 4096u64;
        let blocks = 1u64 << 18; // 1 GiB
        let primary = tmp.path().join("primary.img");
        let f = File::create(&primary).unwrap();
        f.set_len(blocks * bs).unwrap();
        for b in [7, 100_000] {
            f.write_all_at(&[3u8; 4096], b * bs).unwrap();
        }
        drop(f);
        let v = Vault::create(
            &CreateOptions {
                primary,
                vault: tmp.path().join("vault"),
                block_size: bs as u32,
                compression: Compression::None,
                seal: SealPolicy::default(),
            },
            &NoProgress,
        )
        .unwrap();
        v.write(200_000, &[4u8; 8192]).unwrap();
        v.snapshot("s", false).unwrap();
        v.trim(0, 50_000).unwrap();
        let reads_before = v.base_blocks_read();
        for (point, base_data) in [("seq:0", 2), ("s", 2), ("now", 1)] {
            let to = tmp.path().join(format!("{point}.img"));
            let (p, view) = plan(&v, &point.parse().unwrap(), &to, false).unwrap();
            let r = execute(&p, &view, &NoProgress).unwrap();
            assert_eq!(p.base_holes, p.from_base - base_data, "{point}");
            let image = std::fs::metadata(&to).unwrap();
            assert_eq!(image.len(), blocks * bs);
            let logged = if point == "seq:0" { 0 } else { 2 };
            assert_eq!(r.bytes_written, (base_data + logged) * bs, "{point}");
            assert!(image.blocks() * 512 <= 64 * bs, "{point}: not sparse");
            let img = File::open(&to).unwrap();
            let byte = |b: u64| {
                let mut x = [0u8; 1];
                img.read_exact_at(&mut x, b * bs).unwrap();
                x[0]
            };
            assert_eq!(byte(100_000), 3, "{point}");
            assert_eq!(byte(7), u8::from(point != "now") * 3, "{point}");
            assert_eq!(byte(200_000), u8::from(point != "seq:0") * 4, "{point}");
        }
        // Blocks 7 and 100000 (twice), 100000: at most a file system block's worth each,
        // never the volume.
        let read = v.base_blocks_read() - reads_before;
        assert!((5..=5 * 16).contains(&read), "{read} base blocks read");
    }

    #[test]
    fn in_place_restore_copies_only_changed_blocks_and_can_be_undone() {
        let tmp = tempfile::tempdir().unwrap();
        let v = std::sync::Arc::new(vault(tmp.path()));
        let volume = LiveVolume::open(&tmp.path().join("primary.img"), v.clone()).unwrap();
        volume.write(4 * 512, &[9u8; 1024], false).unwrap();
        v.snapshot("s1", false).unwrap();
        let at_s1 = std::fs::read(tmp.path().join("primary.img")).unwrap();
        volume.write(4 * 512 + 100, &[1u8; 600], false).unwrap();
        volume.zero(40 * 512, 1024, true, false, false).unwrap();
        let before = std::fs::read(tmp.path().join("primary.img")).unwrap();
        let (p, view) = plan_in_place(&volume, &"s1".parse().unwrap()).unwrap();
        assert_eq!(p.runs, vec![(4, 2), (40, 2)]);
        execute_in_place(&p, &view, &volume, &NoProgress, None).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("primary.img")).unwrap(),
            at_s1
        );
        assert_eq!(v.read_at(&"now".parse().unwrap(), 0, 64).unwrap(), at_s1);
        let undo = v.read_at(&p.undo_snapshot.parse().unwrap(), 0, 64).unwrap();
        assert_eq!(
            undo, before,
            "the state before the restore is kept as a snapshot"
        );
    }

    /// A restore over a chain long enough for the chain index (16+ maps) probes the maps
    /// instead of indexing them: the index costs O(runs) over the whole chain, the restore
    /// only looks up the blocks it copies.
    #[test]
    fn in_place_restore_over_many_intervals_builds_no_chain_index() {
        let tmp = tempfile::tempdir().unwrap();
        let v = std::sync::Arc::new(vault(tmp.path()));
        let volume = LiveVolume::open(&tmp.path().join("primary.img"), v.clone()).unwrap();
        for i in 0..24u64 {
            // Scattered blocks: several runs a map.
            for b in [i % 7, 10 + (i * 5) % 23, 40 + (i * 3) % 17] {
                volume.write(b * 512, &[i as u8 + 1; 512], false).unwrap();
            }
            v.seal().unwrap();
        }
        v.snapshot("s1", false).unwrap();
        let at_s1 = std::fs::read(tmp.path().join("primary.img")).unwrap();
        for b in [3u64, 17, 50] {
            volume.write(b * 512, &[0xee; 512], false).unwrap();
        }
        let (p, view) = plan_in_place(&volume, &"s1".parse().unwrap()).unwrap();
        assert!(view.maps_consulted() >= 24, "{}", view.maps_consulted());
        execute_in_place(&p, &view, &volume, &NoProgress, None).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("primary.img")).unwrap(),
            at_s1
        );
        assert_eq!(v.cache_stats().index_runs, 0, "the chain index was built");
        // A view of the same point that is not told otherwise does build it.
        v.view(&"s1".parse().unwrap()).unwrap().read(0, 1).unwrap();
        assert!(v.cache_stats().index_runs > 0);
    }

    #[test]
    fn failed_restore_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let v = vault(tmp.path());
        v.write(1, &[5u8; 512]).unwrap();
        v.snapshot("s", false).unwrap();
        // Corrupt the record's payload in the sealed segment.
        let seg = std::fs::read_dir(tmp.path().join("vault/log"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .min()
            .unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[48 + 56 + 10] ^= 1;
        std::fs::write(&seg, bytes).unwrap();
        drop(v);
        let v = Vault::open_read_only(&tmp.path().join("vault")).unwrap();
        let to = tmp.path().join("bad.img");
        let (p, view) = plan(&v, &"s".parse().unwrap(), &to, false).unwrap();
        let err = execute(&p, &view, &NoProgress).unwrap_err();
        assert!(
            matches!(err, RestoreError::Vault(VaultError::Corrupted { .. })),
            "{err}"
        );
        assert!(!to.exists());
        assert!(!partial_path(&to).exists());
    }
}
