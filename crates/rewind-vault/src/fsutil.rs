//! Small file system helpers: atomic replace, directory fsync, sparse-aware copying.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{IoContext, Result, VaultError};

/// fsyncs a directory so that renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .io("fsync directory", dir)
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
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_staged(path, bytes).map_err(AtomicWriteError::into_error)
}

/// [`write_atomic`], saying whether a failure came before or after the rename.
pub(crate) fn write_atomic_staged(
    path: &Path,
    bytes: &[u8],
) -> std::result::Result<(), AtomicWriteError> {
    let tmp = path.with_file_name(format!(
        "{}{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        rewind_format::names::TMP_SUFFIX
    ));
    let staged = (|| {
        let mut f = File::create(&tmp).io("create", &tmp)?;
        f.write_all(bytes).io("write", &tmp)?;
        f.sync_all().io("fsync", &tmp)?;
        fs::rename(&tmp, path).io("rename into place", path)
    })();
    if let Err(e) = staged {
        let _ = fs::remove_file(&tmp);
        return Err(AtomicWriteError::Before(e));
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(AtomicWriteError::After)?;
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes at `offset`; bytes past the end of the file read as
/// zero. Returns how many bytes came from the file.
pub(crate) fn read_at_padded(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(done)
}

/// The size of a file or block device in bytes.
pub(crate) fn device_size(f: &File, path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = f.metadata().io("stat", path)?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut f = f;
    f.seek(SeekFrom::End(0)).io("find the size of", path)
}

/// The next data region at or after `offset` in a sparse file, as (start, end). `None` when
/// only a hole remains. Files that cannot say (block devices, old file systems) are all data.
pub(crate) fn next_data(f: &File, offset: u64, size: u64) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    if offset >= size {
        return None;
    }
    let fd = f.as_raw_fd();
    let Ok(off) = libc::off_t::try_from(offset) else {
        return Some((offset, size));
    };
    // SAFETY: lseek on a file descriptor we own; it does not touch memory.
    let start = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
    if start < 0 {
        let err = std::io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENXIO) {
            None
        } else {
            Some((offset, size))
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    let start = start as u64;
    let end = if end < 0 {
        size
    } else {
        (end as u64).min(size)
    };
    if start >= size {
        None
    } else {
        Some((start, end))
    }
}

/// Opens a file for reading and writing, creating it.
pub(crate) fn create_new_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .io("create", path)
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

/// Starts writeback of a byte range of `file` without waiting for it (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`): a later fdatasync then has less to write.
/// A hint only; it changes no durability promise and its errors are ignored.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    if let (Ok(o), Ok(l)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) {
        // SAFETY: sync_file_range on a descriptor we own; it touches no memory of ours.
        let _ =
            unsafe { libc::sync_file_range(file.as_raw_fd(), o, l, libc::SYNC_FILE_RANGE_WRITE) };
    }
}

/// Tells the kernel that `file` is read at random places: no readahead. Point reads of the
/// write log fetch one block or one record at a time, scattered by write order; with the
/// device's readahead (8 MiB here) each cold 4 KiB read would pull in 4 to 8 times what it
/// needs. Only a hint: an error changes nothing but speed.
pub(crate) fn advise_random(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise on a descriptor we own; it touches no memory of ours.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
}

/// Reads `buf.len()` bytes at `offset` of an immutable vault file: a file that ends first
/// is corrupted (its own structure promised the bytes), other errors are I/O errors.
pub(crate) fn read_exact_at(
    f: &File,
    buf: &mut [u8],
    offset: u64,
    path: &std::path::Path,
) -> crate::error::Result<()> {
    use std::os::unix::fs::FileExt;
    f.read_exact_at(buf, offset).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            crate::error::corrupted(
                path,
                offset,
                crate::error::Corruption::Length {
                    expected: offset + buf.len() as u64,
                    actual: len,
                },
            )
        }
        _ => crate::VaultError::Io {
            op: "read",
            path: path.to_path_buf(),
            source: e,
        },
    })
}

/// Opens a vault file for reading: a missing one is named as corruption (the manifest or a
/// header said it exists), other errors are I/O errors.
pub(crate) fn open_vault_file(path: &std::path::Path) -> crate::error::Result<File> {
    File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            crate::error::corrupted(path, 0, crate::error::Corruption::Missing)
        }
        _ => crate::VaultError::Io {
            op: "open",
            path: path.to_path_buf(),
            source: e,
        },
    })
}
