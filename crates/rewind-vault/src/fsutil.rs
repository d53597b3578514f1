//! Small helpers over the storage seam ([`rewind_storage`]): atomic replace, directory
//! fsync, reads of immutable vault files that name a short file as corruption.

use std::path::Path;
use std::sync::Arc;

use rewind_storage::{Open, Storage, StorageFile};

use crate::error::{IoContext, Result, VaultError};

/// A file of the vault (or the primary), open through the storage seam.
pub(crate) type FileRef = Arc<dyn StorageFile>;

/// fsyncs a directory so that renames and creations in it are durable.
pub(crate) fn sync_dir(fs: &dyn Storage, dir: &Path) -> Result<()> {
    fs.sync_dir(dir).io("fsync directory", dir)
}

/// How an atomic write failed: before the rename (nothing changed: the temporary file is
/// removed, so a full disk gets its space back) or after it (the new file is in place but
/// may not be durable).
#[derive(Debug)]
pub(crate) enum AtomicWriteError {
    Before(VaultError),
    After(VaultError),
}

impl AtomicWriteError {
    pub(crate) fn into_error(self) -> VaultError {
        match self {
            AtomicWriteError::Before(e) | AtomicWriteError::After(e) => e,
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync the dir.
pub(crate) fn write_atomic(fs: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_staged(fs, path, bytes).map_err(AtomicWriteError::into_error)
}

/// [`write_atomic`], saying whether a failure came before or after the rename.
pub(crate) fn write_atomic_staged(
    fs: &dyn Storage,
    path: &Path,
    bytes: &[u8],
) -> std::result::Result<(), AtomicWriteError> {
    let tmp = path.with_file_name(format!(
        "{}{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        rewind_format::names::TMP_SUFFIX
    ));
    let staged = (|| {
        let f = fs.open(&tmp, Open::create_truncate()).io("create", &tmp)?;
        f.write_all_at(bytes, 0).io("write", &tmp)?;
        f.sync_all().io("fsync", &tmp)?;
        drop(f);
        fs.rename(&tmp, path).io("rename into place", path)
    })();
    if let Err(e) = staged {
        let _ = fs.remove(&tmp);
        return Err(AtomicWriteError::Before(e));
    }
    if let Some(dir) = path.parent() {
        sync_dir(fs, dir).map_err(AtomicWriteError::After)?;
    }
    Ok(())
}

pub(crate) fn is_zero(buf: &[u8]) -> bool {
    // Compare in word-sized chunks; the compiler vectorizes this.
    let (prefix, words, suffix) = {
        // SAFETY: u64 has no invalid bit patterns and align_to keeps the slices in bounds.
        unsafe { buf.align_to::<u64>() }
    };
    prefix.iter().all(|&b| b == 0)
        && words.iter().all(|&w| w == 0)
        && suffix.iter().all(|&b| b == 0)
}

/// Reads `buf.len()` bytes at `offset` of an immutable vault file: a file that ends first
/// is corrupted (its own structure promised the bytes), other errors are I/O errors.
pub(crate) fn read_exact_at(
    f: &dyn StorageFile,
    buf: &mut [u8],
    offset: u64,
    path: &Path,
) -> Result<()> {
    f.read_exact_at(buf, offset).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            let len = f.len().unwrap_or(0);
            crate::error::corrupted(
                path,
                offset,
                crate::error::Corruption::Length {
                    expected: offset + buf.len() as u64,
                    actual: len,
                },
            )
        }
        _ => VaultError::Io {
            op: "read",
            path: path.to_path_buf(),
            source: e,
        },
    })
}

/// Opens a vault file for reading: a missing one is named as corruption (the manifest or a
/// header said it exists), other errors are I/O errors.
pub(crate) fn open_vault_file(fs: &dyn Storage, path: &Path) -> Result<FileRef> {
    fs.open(path, Open::read()).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            crate::error::corrupted(path, 0, crate::error::Corruption::Missing)
        }
        _ => VaultError::Io {
            op: "open",
            path: path.to_path_buf(),
            source: e,
        },
    })
}

/// Reads a whole file (`NotFound` as an I/O error; the caller says what missing means).
pub(crate) fn read_file(fs: &dyn Storage, path: &Path) -> std::io::Result<Vec<u8>> {
    fs.open(path, Open::read())?.read_all()
}
