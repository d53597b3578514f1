//! The local file system: what rewind uses outside tests.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Kind, Open, Stat, Storage, StorageFile};

/// Files and directories of the local file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalStorage;

/// An open local file.
#[derive(Debug)]
pub struct LocalFile {
    file: File,
    direct: bool,
}

impl Storage for LocalStorage {
    fn open(&self, path: &Path, how: Open) -> io::Result<Arc<dyn StorageFile>> {
        let mut o = OpenOptions::new();
        o.read(!how.direct || !how.write)
            .write(how.write)
            .create(how.create)
            .create_new(how.create_new)
            .truncate(how.truncate);
        if how.direct {
            o.custom_flags(libc::O_DIRECT);
            match o.open(path) {
                Ok(file) => return Ok(Arc::new(LocalFile { file, direct: true })),
                // File systems without direct I/O (tmpfs before Linux 6.6, some FUSE ones):
                // the page cache it is.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(path = %path.display(), error = %e, "no direct I/O here; using the page cache");
                    o.custom_flags(0);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Arc::new(LocalFile {
            file: o.open(path)?,
            direct: false,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in fs::read_dir(dir)? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn stat(&self, path: &Path) -> io::Result<Stat> {
        let m = fs::metadata(path)?;
        let ft = m.file_type();
        if ft.is_dir() {
            return Ok(Stat {
                kind: Kind::Dir,
                len: m.len(),
            });
        }
        if ft.is_file() {
            return Ok(Stat {
                kind: Kind::File,
                len: m.len(),
            });
        }
        let len = if ft.is_block_device() {
            use std::io::{Seek, SeekFrom};
            let mut f = File::open(path)?;
            f.seek(SeekFrom::End(0))?
        } else {
            m.len()
        };
        Ok(Stat {
            kind: Kind::Device,
            len,
        })
    }

    /// Linux's `boot_id`. Tests may pretend a reboot with `REWIND_BOOT_ID` (32 hex digits).
    fn boot_id(&self) -> [u8; 16] {
        let text = std::env::var("REWIND_BOOT_ID")
            .ok()
            .or_else(|| fs::read_to_string("/proc/sys/kernel/random/boot_id").ok())
            .unwrap_or_default();
        let hex: Vec<u8> = text
            .bytes()
            .filter(u8::is_ascii_hexdigit)
            .map(|c| match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => c - b'A' + 10,
            })
            .collect();
        let mut id = [0u8; 16];
        if hex.len() == 32 {
            for (i, b) in id.iter_mut().enumerate() {
                *b = hex[2 * i] << 4 | hex[2 * i + 1];
            }
        }
        id
    }

    fn canonical(&self, path: &Path) -> PathBuf {
        fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    }
}

fn off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl StorageFile for LocalFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.file.write_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn len(&self) -> io::Result<u64> {
        let m = self.file.metadata()?;
        if m.is_file() {
            return Ok(m.len());
        }
        use std::io::{Seek, SeekFrom};
        (&self.file).seek(SeekFrom::End(0))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn zero_range(&self, offset: u64, len: u64, punch: bool) -> io::Result<()> {
        let mode = if punch {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        // SAFETY: fallocate on a descriptor we own; it touches no memory of ours.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off(offset)?, off(len)?) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if crate::is_no_space(&e) || e.raw_os_error() == Some(libc::EIO) {
            return Err(e);
        }
        // Block devices and file systems without fallocate modes: write zeroes.
        let zeros = vec![0u8; (1 << 20).min(len as usize).max(1)];
        let mut at = offset;
        while at < offset + len {
            let n = zeros.len().min((offset + len - at) as usize);
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    fn next_data(&self, offset: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
        if offset >= size {
            return Ok(None);
        }
        let fd = self.file.as_raw_fd();
        let Ok(o) = off(offset) else {
            return Ok(Some((offset, size)));
        };
        // SAFETY: lseek on a descriptor we own; it does not touch memory, and positional
        // I/O elsewhere does not use the file offset.
        let start = unsafe { libc::lseek(fd, o, libc::SEEK_DATA) };
        if start < 0 {
            let err = io::Error::last_os_error();
            return Ok(if err.raw_os_error() == Some(libc::ENXIO) {
                None
            } else {
                Some((offset, size))
            });
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        let start = start as u64;
        let end = if end < 0 {
            size
        } else {
            (end as u64).min(size)
        };
        Ok((start < size).then_some((start, end.max(start + 1).min(size))))
    }

    fn try_lock(&self) -> io::Result<bool> {
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(fs::TryLockError::WouldBlock) => Ok(false),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn read_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        let Ok(o) = off(offset) else {
            return Ok(false);
        };
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one iovec over `buf`, which outlives the call; the descriptor is ours.
        let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, o, libc::RWF_NOWAIT) };
        // A short read (part cached) or EAGAIN: let the blocking path read it all.
        Ok(n >= 0 && n as usize == buf.len())
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        if let (Ok(o), Ok(l)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) {
            // SAFETY: sync_file_range on a descriptor we own; it touches no memory of ours.
            let _ = unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), o, l, libc::SYNC_FILE_RANGE_WRITE)
            };
        }
    }

    fn advise_random(&self) {
        // SAFETY: posix_fadvise on a descriptor we own; it touches no memory of ours.
        let _ =
            unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    }

    fn is_direct(&self) -> bool {
        self.direct
    }
}
