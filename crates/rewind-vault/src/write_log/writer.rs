//! The log writer: a thread that writes the open segment's full buffers with direct I/O,
//! so that appending never waits for the device.
//!
//! The open segment hands over a buffer (with the file offset it starts at) and goes on
//! filling another one; jobs are written in the order they were handed over, each gets a
//! ticket, and whoever needs the bytes in the file (a flush before its fdatasync, a reader,
//! a seal) waits for the ticket of the last buffer handed over.
//!
//! A write the file system refuses for lack of space (ENOSPC, EDQUOT) *stalls* the writer:
//! the buffer is kept and written again every [`STALL_RETRY`] (or when poked), and nothing
//! behind it is written before it, so no record handed over is ever dropped. Meanwhile
//! waiters get a no-space error at once (a host's flush fails with ENOSPC, not EIO, and is
//! not stuck), the vault refuses new host writes (see [`LogWriter::stall`]) and buffers are
//! allocated beyond [`BUFFERS`] for the host writes already under way, so that none stops
//! half-appended. When space is freed the next try succeeds and everything goes on. Any
//! other failed write is kept and returned to every later caller: after it nothing more may
//! be promised.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::aligned::AlignedBuf;
use crate::error::{Result, VaultError};
use crate::fsutil::FileRef;

/// Buffers in use at most (filling, queued, being written): ~1.1 MiB each, so writes may
/// run up to ~16 MiB ahead of the disk before an append waits for a buffer. With 4, a
/// stall of the disk of a few milliseconds (the host writing back other files) stopped
/// the connection's thread: 4 KiB random writes QD32 after a 3 GB write elsewhere went
/// 18% faster with 16 (medians of 6 alternations); 32 gave no more.
const BUFFERS: usize = 8;
/// How often a write refused for lack of space is tried again.
const STALL_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

struct Job {
    file: FileRef,
    path: PathBuf,
    buf: AlignedBuf,
    offset: u64,
    ticket: u64,
    /// Start writeback after the write (page-cache writes: a flush then finds less to do).
    kick: bool,
}

/// Why the writer is stalled: the file system refused a write for lack of space.
#[derive(Debug, Clone)]
pub(crate) struct Stall {
    pub path: PathBuf,
    pub kind: std::io::ErrorKind,
    pub message: String,
    pub since: std::time::SystemTime,
}

impl Stall {
    pub(crate) fn error(&self) -> VaultError {
        VaultError::Io {
            op: "append to",
            path: self.path.clone(),
            source: std::io::Error::new(self.kind, self.message.clone()),
        }
    }
}

#[derive(Default)]
struct State {
    /// Tickets handed out (the last one).
    issued: u64,
    /// Every ticket up to this one is written.
    done: u64,
    /// The first failed write.
    failed: Option<(PathBuf, std::io::ErrorKind, String)>,
    /// A write refused for lack of space, being tried again.
    stalled: Option<Stall>,
    /// Pokes: a try is due now.
    pokes: u64,
    /// The writer is being dropped: a stalled write is given up (see [`LogWriter`]'s
    /// `Drop`).
    closing: bool,
    /// Buffers to reuse.
    free: Vec<AlignedBuf>,
    /// Buffers allocated so far.
    allocated: usize,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// `state.stalled.is_some()`, read without the lock on the write path.
    stalled: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes buffers of the write log in the background, in order.
pub(crate) struct LogWriter {
    shared: Arc<Shared>,
    tx: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    buffer_len: usize,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter").finish_non_exhaustive()
    }
}

fn failure(f: &(PathBuf, std::io::ErrorKind, String)) -> VaultError {
    VaultError::Io {
        op: "append to",
        path: f.0.clone(),
        source: std::io::Error::new(f.1, f.2.clone()),
    }
}

impl LogWriter {
    /// Starts the writer thread. Buffers hold `buffer_len` bytes.
    pub(crate) fn start(buffer_len: usize) -> Result<LogWriter> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stalled: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = channel::<Job>();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rewind-log-writer".into())
            .spawn(move || {
                for job in rx {
                    write_job(&sh, job);
                }
            })
            .map_err(|source| VaultError::Io {
                op: "start the log writer for",
                path: PathBuf::from("write log"),
                source,
            })?;
        Ok(LogWriter {
            shared,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            buffer_len,
        })
    }

    /// An empty buffer: a free one, a new one while fewer than [`BUFFERS`] exist (or while
    /// the writer is stalled: see the module doc), or the next one the writer gives back.
    pub(crate) fn take_buffer(&self) -> Result<AlignedBuf> {
        let mut st = self.shared.lock();
        loop {
            if let Some(f) = &st.failed {
                return Err(failure(f));
            }
            if let Some(b) = st.free.pop() {
                return Ok(b);
            }
            if st.allocated < BUFFERS || st.stalled.is_some() {
                st.allocated += 1;
                return Ok(AlignedBuf::new(self.buffer_len));
            }
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Gives a buffer back unused.
    pub(crate) fn give_back(&self, buf: AlignedBuf) {
        recycle(&mut self.shared.lock(), buf);
        self.shared.changed.notify_all();
    }

    /// Why the writer is stalled, if it is: the vault refuses new host writes meanwhile.
    /// Asking pokes the writer to try again at once.
    pub(crate) fn stall(&self) -> Option<Stall> {
        if !self
            .shared
            .stalled
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return None;
        }
        let mut st = self.shared.lock();
        let stall = st.stalled.clone();
        if stall.is_some() {
            st.pokes += 1;
            self.shared.changed.notify_all();
        }
        stall
    }

    /// Hands `buf` (file bytes from `offset`, zero-padded when written) to the writer;
    /// `kick`: start writeback after writing it. Returns its ticket.
    pub(crate) fn submit(
        &self,
        file: FileRef,
        path: PathBuf,
        buf: AlignedBuf,
        offset: u64,
        kick: bool,
    ) -> Result<u64> {
        let ticket = {
            let mut st = self.shared.lock();
            if let Some(f) = &st.failed {
                return Err(failure(f));
            }
            st.issued += 1;
            st.issued
        };
        let job = Job {
            file,
            path: path.clone(),
            buf,
            offset,
            ticket,
            kick,
        };
        let sent = match &*self.tx.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        };
        if !sent {
            let mut st = self.shared.lock();
            st.failed.get_or_insert((
                path,
                std::io::ErrorKind::BrokenPipe,
                "the log writer has stopped".into(),
            ));
            return Err(st
                .failed
                .as_ref()
                .map(failure)
                .unwrap_or(VaultError::Poisoned { no_space: false }));
        }
        Ok(ticket)
    }

    /// Waits until every buffer up to `ticket` is written. While the writer is stalled for
    /// lack of space this returns that error at once (the buffers are kept: a later wait
    /// succeeds once space is freed).
    pub(crate) fn wait(&self, ticket: u64) -> Result<()> {
        let mut st = self.shared.lock();
        while st.done < ticket && st.failed.is_none() {
            if let Some(stall) = &st.stalled {
                let e = stall.error();
                st.pokes += 1;
                self.shared.changed.notify_all();
                return Err(e);
            }
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        match &st.failed {
            Some(f) => Err(failure(f)),
            None => Ok(()),
        }
    }
}

/// Whether an error means the file system has no room (the write can succeed later).
pub(crate) fn is_no_space(kind: std::io::ErrorKind) -> bool {
    matches!(
        kind,
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Puts a written buffer back in the pool, or frees it when the pool grew past
/// [`BUFFERS`] during a stall.
fn recycle(st: &mut State, mut buf: AlignedBuf) {
    buf.truncate(0);
    if st.allocated > BUFFERS {
        st.allocated -= 1;
    } else {
        st.free.push(buf);
    }
}

/// Writes one job, trying again while the file system has no room (see the module doc).
fn write_job(sh: &Shared, mut job: Job) {
    if sh.lock().failed.is_some() {
        // After a failed write nothing behind it is written: the file keeps no gap.
        let mut st = sh.lock();
        st.done = job.ticket;
        recycle(&mut st, job.buf);
        sh.changed.notify_all();
        return;
    }
    let mut st = loop {
        let res = job
            .file
            .write_all_at(job.buf.pad_to_alignment(), job.offset);
        let mut st = sh.lock();
        match res {
            Ok(()) => {
                if let Some(s) = st.stalled.take() {
                    sh.stalled
                        .store(false, std::sync::atomic::Ordering::Release);
                    tracing::warn!(path = %s.path.display(), "the write log's file system has room again; writes go on");
                }
                if job.kick {
                    let len = job.buf.len() as u64;
                    drop(st);
                    job.file.start_writeback(job.offset, len);
                    st = sh.lock();
                }
            }
            Err(e) if is_no_space(e.kind()) && st.failed.is_none() && !st.closing => {
                if st.stalled.is_none() {
                    tracing::error!(path = %job.path.display(), error = %e, "the write log's file system is full: new writes are refused (ENOSPC) until space is freed; nothing written so far is lost");
                    st.stalled = Some(Stall {
                        path: job.path.clone(),
                        kind: e.kind(),
                        message: e.to_string(),
                        since: std::time::SystemTime::now(),
                    });
                    sh.stalled.store(true, std::sync::atomic::Ordering::Release);
                }
                sh.changed.notify_all();
                let pokes = st.pokes;
                let (g, _) = sh
                    .changed
                    .wait_timeout_while(st, STALL_RETRY, |s| s.pokes == pokes)
                    .unwrap_or_else(|p| p.into_inner());
                drop(g);
                continue;
            }
            Err(e) => {
                if st.failed.is_none() {
                    tracing::error!(path = %job.path.display(), error = %e, "write log append failed");
                    st.failed = Some((job.path.clone(), e.kind(), e.to_string()));
                }
                st.stalled = None;
                sh.stalled
                    .store(false, std::sync::atomic::Ordering::Release);
            }
        }
        break st;
    };
    st.done = job.ticket;
    recycle(&mut st, job.buf);
    sh.changed.notify_all();
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // A write still refused for lack of space is given up now (and everything queued
        // behind it fails): the vault is closing without those records, which were never
        // flushed; their regions are in the dirty region log, and the next start copies
        // them from the primary.
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        // Closing the channel ends the thread once it has written what was queued.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}
