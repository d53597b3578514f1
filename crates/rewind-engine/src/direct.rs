//! Large host writes go to the primary with direct I/O (`O_DIRECT`), straight from the
//! request buffer.
//!
//! A buffered write of a large, sequential stream pays the page cache twice: each page is
//! copied, and each page is new memory (the job's profile, 1 MiB sequential writes QD8:
//! 70% of the server's CPU in `copy_folio_from_iter_atomic`; a plain buffered 1 MiB
//! `pwrite` of a fresh file ran at 260-660 MiB/s on the bench machine where a direct one
//! ran at 2300 MiB/s). Small writes stay buffered: the page cache absorbs them at once,
//! where a direct 4 KiB write would wait for the disk.
//!
//! A direct write needs its buffer, offset and length aligned ([`ALIGN`]); a write that is
//! not goes through the page cache as before. The kernel keeps the two handles coherent
//! (a direct write writes back and drops cached pages of its range first), and the region
//! locks of the live volume keep writes of one range from racing. Durability is the
//! inode's: the primary's fdatasync covers what either handle wrote.
//!
//! Off with `REWIND_DIRECT_PRIMARY=0`, and where the file system has no direct I/O.

use std::path::Path;
use std::sync::Arc;

use rewind_storage::{Open, Storage, StorageFile};

/// Alignment of buffer, offset and length for a direct write (any logical block size up
/// to 4 KiB).
pub const ALIGN: usize = 4096;
/// Writes at least this large go direct.
pub const MIN_LEN: usize = 256 << 10;

/// The primary's direct handle, if it has one.
#[derive(Debug)]
pub(crate) struct DirectPrimary {
    file: Option<Arc<dyn StorageFile>>,
}

impl DirectPrimary {
    /// Opens a direct handle on `path`, unless turned off or not supported (then every
    /// write is buffered). Failing to open it is not an error: writes stay buffered.
    pub(crate) fn open(fs: &dyn Storage, path: &Path) -> DirectPrimary {
        if std::env::var("REWIND_DIRECT_PRIMARY").is_ok_and(|v| v == "0") {
            return DirectPrimary { file: None };
        }
        let file = match fs.open(path, Open::write().direct()) {
            Ok(f) if f.is_direct() => Some(f),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no direct handle on the primary; large writes are buffered");
                None
            }
        };
        DirectPrimary { file }
    }

    /// Whether a write of `len` bytes may go direct (large enough, and a handle to do it):
    /// such a write waits for the disk, so the server runs it off its reading thread.
    pub(crate) fn wants(&self, len: usize) -> bool {
        self.file.is_some() && len >= MIN_LEN
    }

    /// Writes `data` at `offset` through the direct handle when it can, else through
    /// `buffered`. A direct write the kernel refuses as unaligned (a device whose logical
    /// blocks are larger than [`ALIGN`]) is written through `buffered` instead.
    pub(crate) fn write(
        &self,
        buffered: &Arc<dyn StorageFile>,
        offset: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        match self.takes(offset, data) {
            Some(f) => match f.write_all_at(data, offset) {
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    tracing::debug!(error = %e, "a direct write of the primary was refused; written through the page cache");
                    buffered.write_all_at(data, offset)
                }
                r => r,
            },
            None => buffered.write_all_at(data, offset),
        }
    }

    /// The direct handle, when `data` at `offset` can be written through it.
    fn takes(&self, offset: u64, data: &[u8]) -> Option<&Arc<dyn StorageFile>> {
        let aligned = offset.is_multiple_of(ALIGN as u64)
            && data.len().is_multiple_of(ALIGN)
            && (data.as_ptr() as usize).is_multiple_of(ALIGN);
        self.file
            .as_ref()
            .filter(|_| aligned && data.len() >= MIN_LEN)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_large_aligned_writes_go_direct() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.img");
        std::fs::write(&path, vec![0u8; 4 << 20]).unwrap();
        let d = DirectPrimary::open(&rewind_storage::LocalStorage, &path);
        if d.file.is_none() {
            return; // no direct I/O on this file system: nothing to check
        }
        let mut raw = vec![0u8; MIN_LEN + 2 * ALIGN];
        let at = raw.as_ptr().align_offset(ALIGN);
        let buf = &mut raw[at..at + MIN_LEN];
        assert!(d.wants(MIN_LEN) && !d.wants(MIN_LEN - 1));
        assert!(d.takes(0, buf).is_some());
        assert!(d.takes(512, buf).is_none(), "unaligned offset");
        assert!(d.takes(0, &buf[..MIN_LEN - ALIGN]).is_none(), "too small");
        let odd = &raw[at + 1..at + 1 + MIN_LEN];
        assert!(d.takes(0, odd).is_none(), "unaligned buffer");
    }
}
