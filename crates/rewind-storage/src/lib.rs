//! The storage seam: every file and directory operation of the vault and of the live volume
//! (primary, dirty region log, segments, delta maps, manifest, base image) goes through
//! [`Storage`] and [`StorageFile`].
//!
//! Backends:
//! - [`LocalStorage`]: the local file system (positional `pread`/`pwrite`, `O_DIRECT` where
//!   asked and supported, `fallocate`, `SEEK_DATA`/`SEEK_HOLE`, `flock`). The default.
//! - [`SimStorage`]: files in memory that keep, per file and per directory entry, what was
//!   written and what a completed sync made durable. As a **memory** backend it is only
//!   that; [`SimStorage::power_cut`] builds the state a **crash** (power cut) would leave at
//!   this moment: unsynced data dropped or kept in random sector-sized pieces, unsynced
//!   creates, renames and removes undone or kept (a random prefix of each directory's); and
//!   a [`FaultPlan`] makes it a **fault** backend: the Nth operation of a kind fails with EIO
//!   or ENOSPC, once or from then on, and a failed sync loses the unsynced data, as Linux may.
//!
//! The interface is small and synchronous on purpose (positional I/O on threads, as the
//! engine does): `read_at`, `write_at`, `sync_data`, `sync_all`, `len`, `set_len`,
//! `zero_range` (punch or zero), `next_data`, `try_lock` on files; `open`, `rename`,
//! `remove`, `list`, `create_dir`, `sync_dir`, `stat` on the storage.

mod local;
mod sim;

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub use local::LocalStorage;
pub use sim::{Cut, Fault, FaultKind, FaultPlan, OpKind, SimStats, SimStorage, SECTOR};

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Open {
    pub write: bool,
    /// Create the file if it is missing.
    pub create: bool,
    /// Create the file; fail if it exists.
    pub create_new: bool,
    /// Cut the file to nothing.
    pub truncate: bool,
    /// Bypass the page cache (`O_DIRECT`) if the backend can: buffers, offsets and lengths
    /// must then be aligned. [`StorageFile::is_direct`] says whether it did.
    pub direct: bool,
}

impl Open {
    /// Read only.
    pub fn read() -> Open {
        Open::default()
    }
    /// Read and write an existing file.
    pub fn write() -> Open {
        Open {
            write: true,
            ..Open::default()
        }
    }
    /// Read and write; created empty, replacing what was there.
    pub fn create_truncate() -> Open {
        Open {
            write: true,
            create: true,
            truncate: true,
            ..Open::default()
        }
    }
    /// Read and write a new file; an existing one is an error.
    pub fn create_new() -> Open {
        Open {
            write: true,
            create_new: true,
            ..Open::default()
        }
    }
    /// The same, with direct I/O asked for.
    pub fn direct(self) -> Open {
        Open {
            direct: true,
            ..self
        }
    }
}

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// A block device (or anything else whose size is not its length in the directory).
    Device,
}

/// A path's kind and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Bytes (for a device: its size).
    pub len: u64,
}

/// File and directory operations (see the crate doc).
pub trait Storage: Send + Sync + fmt::Debug {
    fn open(&self, path: &Path, how: Open) -> io::Result<Arc<dyn StorageFile>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names in a directory (files and directories), sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a directory and its parents.
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes in it) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn stat(&self, path: &Path) -> io::Result<Stat>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool {
        self.stat(path).is_ok()
    }
    /// This boot of the machine the storage is on: a crash of the machine (a power cut)
    /// changes it, a crash of the process does not. Zeroes when it cannot be told.
    fn boot_id(&self) -> [u8; 16];
    /// The path made absolute without `..` and symlinks, where the backend knows how;
    /// else as given.
    fn canonical(&self, path: &Path) -> std::path::PathBuf {
        path.to_path_buf()
    }
}

/// An open file: positional I/O, syncs, size, holes, a lock.
#[allow(clippy::len_without_is_empty)] // a file's size is asked for, never its emptiness
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at or past the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes up to `buf.len()` bytes at `offset`, growing the file as needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Makes the file's data (and its size) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and metadata durable.
    fn sync_all(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read as zeroes; `punch` deallocates them (a hole)
    /// where the backend can, otherwise they stay allocated. The size does not change.
    fn zero_range(&self, offset: u64, len: u64, punch: bool) -> io::Result<()>;
    /// The next run of data at or after `offset`, as (start, end), below `size`; `None`
    /// when only holes remain. A backend that cannot tell says it is all data.
    fn next_data(&self, offset: u64, size: u64) -> io::Result<Option<(u64, u64)>>;
    /// Takes an exclusive lock on the file, held until this handle is dropped: `false` when
    /// another holder has it.
    fn try_lock(&self) -> io::Result<bool>;
    /// Reads only if the data is at hand without waiting for the device (page cache):
    /// `false`, and nothing promised about `buf`, when it is not.
    fn read_nowait(&self, _buf: &mut [u8], _offset: u64) -> io::Result<bool> {
        Ok(false)
    }
    /// A hint: start writing back this range now (no wait, no promise).
    fn start_writeback(&self, _offset: u64, _len: u64) {}
    /// A hint: this file is read at random places (no readahead).
    fn advise_random(&self) {}
    /// Whether the file was opened with direct I/O.
    fn is_direct(&self) -> bool {
        false
    }

    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, offset) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes at `offset`; `UnexpectedEof` if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = self.read_padded(buf, offset)?;
        if n < buf.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`, bytes past the end of the file as zeroes.
    /// Returns how many came from the file.
    fn read_padded(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf[done..].fill(0);
        Ok(done)
    }

    /// Reads the whole file.
    fn read_all(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len()?)
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "file too large"))?;
        let mut buf = vec![0u8; len];
        let n = self.read_padded(&mut buf, 0)?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// A file that holds nothing and takes nothing: a stand-in where there is no file yet (a
/// reader's view of a segment being created).
pub fn empty_file() -> Arc<dyn StorageFile> {
    Arc::new(EmptyFile)
}

#[derive(Debug)]
struct EmptyFile;

impl StorageFile for EmptyFile {
    fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<usize> {
        Ok(0)
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(libc::EBADF))
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn sync_all(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(0)
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EBADF))
    }
    fn zero_range(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EBADF))
    }
    fn next_data(&self, _: u64, _: u64) -> io::Result<Option<(u64, u64)>> {
        Ok(None)
    }
    fn try_lock(&self) -> io::Result<bool> {
        Ok(true)
    }
}

/// The default backend: the local file system.
pub fn local() -> Arc<dyn Storage> {
    Arc::new(LocalStorage)
}

/// Whether an error means the file system has no room (ENOSPC, EDQUOT).
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
