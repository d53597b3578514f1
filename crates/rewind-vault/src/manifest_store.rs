//! Loading and committing manifests: `manifest-<generation>` files in the vault directory.
//! The highest generation is current; the one before it is kept for recovery; temporary
//! files of a commit that did not finish are ignored (and removed by a writer).

use std::path::{Path, PathBuf};

use rewind_format::manifest::Manifest;
use rewind_format::{names, Generation};
use rewind_storage::Storage;

use crate::error::{decode_err, IoContext, Result, VaultError};
use crate::fsutil;

/// Generations present in `dir`, ascending.
fn generations(fs: &dyn Storage, dir: &Path) -> Result<Vec<Generation>> {
    let mut gens = Vec::new();
    let names = fs.list(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => VaultError::NotAVault {
            path: dir.to_path_buf(),
        },
        _ => VaultError::Io {
            op: "list",
            path: dir.to_path_buf(),
            source: e,
        },
    })?;
    for name in names {
        if let Some(g) = names::parse_manifest(&name) {
            gens.push(g);
        }
    }
    gens.sort();
    Ok(gens)
}

/// Whether `dir` holds at least one manifest (is a vault).
pub(crate) fn exists(fs: &dyn Storage, dir: &Path) -> bool {
    generations(fs, dir).is_ok_and(|g| !g.is_empty())
}

/// Loads the current manifest. A corrupt current manifest is an error (the previous one
/// is still on disk for a person to look at), never silently replaced by an older one.
pub(crate) fn load(fs: &dyn Storage, dir: &Path) -> Result<(Manifest, PathBuf)> {
    let mut relists = 0;
    let (current, path, bytes) = loop {
        let gens = generations(fs, dir)?;
        let Some(&current) = gens.last() else {
            return Err(VaultError::NotAVault {
                path: dir.to_path_buf(),
            });
        };
        let path = dir.join(names::manifest(current));
        match fsutil::read_file(fs, &path) {
            Ok(bytes) => break (current, path, bytes),
            // A running writer committed two newer generations since the listing and
            // removed this one (a reader does not hold the lock): list again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && relists < 100 => {
                relists += 1;
            }
            Err(e) => return Err(e).io("read", &path),
        }
    };
    let m = Manifest::decode(&bytes).map_err(|e| decode_err(&path, 0, e))?;
    if m.generation != current {
        return Err(crate::error::corrupted(
            &path,
            8,
            crate::Corruption::Inconsistent("generation differs from the file name"),
        ));
    }
    Ok((m, path))
}

/// Loads generation `g` (an error if it is not intact).
pub(crate) fn load_generation(
    fs: &dyn Storage,
    dir: &Path,
    g: Generation,
) -> Result<(Manifest, PathBuf)> {
    let path = dir.join(names::manifest(g));
    let bytes = fsutil::read_file(fs, &path).io("read", &path)?;
    let m = Manifest::decode(&bytes).map_err(|e| decode_err(&path, 0, e))?;
    if m.generation != g {
        return Err(crate::error::corrupted(
            &path,
            8,
            crate::Corruption::Inconsistent("generation differs from the file name"),
        ));
    }
    Ok((m, path))
}

/// The generation before the current one on disk, if any.
pub(crate) fn previous_generation(fs: &dyn Storage, dir: &Path) -> Result<Option<Generation>> {
    let gens = generations(fs, dir)?;
    Ok(gens.len().checked_sub(2).map(|i| gens[i]))
}

/// A damaged current manifest: its path and what is wrong.
pub(crate) type Damaged = (PathBuf, VaultError);

/// [`load`] for a reader of a damaged vault: a corrupt current manifest falls back to the
/// previous generation when that one is intact, and says so (the current one's path and
/// error). Writers never do this: `rewind repair` does it, saying what it loses.
pub(crate) fn load_or_previous(
    fs: &dyn Storage,
    dir: &Path,
) -> Result<(Manifest, PathBuf, Option<Damaged>)> {
    let err = match load(fs, dir) {
        Ok((m, p)) => return Ok((m, p, None)),
        Err(e @ VaultError::Corrupted { .. }) => e,
        Err(e) => return Err(e),
    };
    let current = generations(fs, dir)?
        .last()
        .map(|g| dir.join(names::manifest(*g)))
        .unwrap_or_else(|| dir.to_path_buf());
    let Some(prev) = previous_generation(fs, dir)? else {
        return Err(err);
    };
    match load_generation(fs, dir, prev) {
        Ok((m, p)) => Ok((m, p, Some((current, err)))),
        Err(_) => Err(err),
    }
}

/// Commits `m` (whose generation must be one more than the current) atomically, then
/// removes generations older than the previous one.
pub(crate) fn commit(fs: &dyn Storage, dir: &Path, m: &Manifest) -> Result<()> {
    commit_staged(fs, dir, m).map_err(fsutil::AtomicWriteError::into_error)
}

/// [`commit`], saying whether a failure left the current manifest as it was
/// ([`fsutil::AtomicWriteError::Before`]: nothing committed) or not.
pub(crate) fn commit_staged(
    fs: &dyn Storage,
    dir: &Path,
    m: &Manifest,
) -> std::result::Result<(), fsutil::AtomicWriteError> {
    fsutil::write_atomic_staged(fs, &dir.join(names::manifest(m.generation)), &m.encode())?;
    for g in generations(fs, dir).map_err(fsutil::AtomicWriteError::After)? {
        if g.0 + 1 < m.generation.0 {
            let p = dir.join(names::manifest(g));
            if let Err(e) = fs.remove(&p) {
                tracing::warn!(path = %p.display(), error = %e, "could not remove an old manifest");
            }
        }
    }
    Ok(())
}
