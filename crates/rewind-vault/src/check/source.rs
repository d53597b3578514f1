//! Every file operation of the check, in one place, through the storage seam: listing,
//! opening, sizes, reads (counted, throttled, cancellable), and where a sparse file has data.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rewind_storage::{Kind, Open, Storage, StorageFile};

use super::report::Fault;
use crate::Progress;

/// Bytes asked for per read.
pub(crate) const CHUNK: usize = 1 << 20;

/// Reads for a check: counts bytes, reports progress, keeps to a rate, sees cancellation.
pub(crate) struct Source<'a> {
    fs: Arc<dyn Storage>,
    progress: &'a dyn Progress,
    rate: Option<u64>,
    cancel: Option<Arc<AtomicBool>>,
    started: Instant,
    /// Bytes read from files.
    pub bytes_read: u64,
    /// Bytes of holes skipped (counted as progress, not read).
    pub bytes_sparse: u64,
}

impl<'a> Source<'a> {
    pub(crate) fn new(
        fs: Arc<dyn Storage>,
        progress: &'a dyn Progress,
        rate: Option<u64>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Source<'a> {
        Source {
            fs,
            progress,
            rate: rate.filter(|r| *r > 0),
            cancel,
            started: Instant::now(),
            bytes_read: 0,
            bytes_sparse: 0,
        }
    }

    pub(crate) fn progress(&self) -> &dyn Progress {
        self.progress
    }

    /// Whether the check was asked to stop.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// The names in `dir` with their sizes (`None` for directories), sorted. A missing
    /// directory has none.
    pub(crate) fn list(&self, dir: &Path) -> Result<Vec<(String, Option<u64>)>, Fault> {
        let names = match self.fs.list(dir) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Fault::Unreadable(e)),
        };
        let mut out = Vec::new();
        for name in names {
            let st = self.fs.stat(&dir.join(&name)).map_err(Fault::Unreadable)?;
            out.push((name, (st.kind != Kind::Dir).then_some(st.len)));
        }
        out.sort();
        Ok(out)
    }

    /// Opens a file for reading; `Ok(None)` when it does not exist.
    pub(crate) fn open(&self, path: &Path) -> Result<Option<Opened>, Fault> {
        match self.fs.open(path, Open::read()) {
            Ok(file) => {
                let len = file.len().map_err(Fault::Unreadable)?;
                Ok(Some(Opened {
                    file,
                    path: path.to_path_buf(),
                    len,
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Fault::Unreadable(e)),
        }
    }

    /// Reads up to `buf.len()` bytes at `offset` (fewer at the end of the file); counted
    /// and throttled. Returns how many were read.
    pub(crate) fn read_at(
        &mut self,
        f: &Opened,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<usize, Fault> {
        let mut done = 0;
        while done < buf.len() {
            match f.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fault::Unreadable(e)),
            }
        }
        self.count(done as u64);
        Ok(done)
    }

    /// The whole file (read in chunks, counted and throttled).
    pub(crate) fn read_all(&mut self, f: &Opened) -> Result<Vec<u8>, Fault> {
        let len = usize::try_from(f.len).unwrap_or(usize::MAX);
        let mut out = vec![0u8; len];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(CHUNK);
            let got = self.read_at(f, &mut out[at..at + n], at as u64)?;
            at += got;
            if got < n {
                break;
            }
        }
        out.truncate(at);
        Ok(out)
    }

    /// The next data region at or after `offset` (below `end`) of a sparse file.
    pub(crate) fn next_data(&self, f: &Opened, offset: u64, end: u64) -> Option<(u64, u64)> {
        // A file that cannot say: all data (read it all).
        f.file.next_data(offset, end).unwrap_or(Some((offset, end)))
    }

    /// Counts a hole of `n` bytes as covered.
    pub(crate) fn skipped(&mut self, n: u64) {
        self.bytes_sparse += n;
        self.progress.advance(n);
    }

    /// Counts `n` bytes read, then sleeps as long as the rate asks.
    fn count(&mut self, n: u64) {
        self.bytes_read += n;
        self.progress.advance(n);
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.bytes_read as f64 / rate as f64);
            let spent = self.started.elapsed();
            if due > spent {
                std::thread::sleep(due - spent);
            }
        }
    }
}

/// An open file and its length when opened.
pub(crate) struct Opened {
    file: Arc<dyn StorageFile>,
    pub path: PathBuf,
    pub len: u64,
}
