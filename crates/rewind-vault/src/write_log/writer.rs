//! The log writer: a thread that writes the open segment's full buffers with direct I/O,
//! so that appending never waits for the device.
//!
//! The open segment hands over a buffer (with the file offset it starts at) and goes on
//! filling another one; jobs are written in the order they were handed over, each gets a
//! ticket, and whoever needs the bytes in the file (a flush before its fdatasync, a reader,
//! a seal) waits for the ticket of the last buffer handed over. A failed write is kept and
//! returned to every later caller: after a failed write nothing more may be promised.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::aligned::AlignedBuf;
use crate::error::{Result, VaultError};

/// Buffers in use at most (filling, queued, being written): ~1.1 MiB each, so writes may
/// run up to ~16 MiB ahead of the disk before an append waits for a buffer. With 4, a
/// stall of the disk of a few milliseconds (the host writing back other files) stopped
/// the connection's thread: 4 KiB random writes QD32 after a 3 GB write elsewhere went
/// 18% faster with 16 (medians of 6 alternations); 32 gave no more.
const BUFFERS: usize = 16;

struct Job {
    file: Arc<File>,
    path: PathBuf,
    buf: AlignedBuf,
    offset: u64,
    ticket: u64,
}

#[derive(Default)]
struct State {
    /// Tickets handed out (the last one).
    issued: u64,
    /// Every ticket up to this one is written.
    done: u64,
    /// The first failed write.
    failed: Option<(PathBuf, std::io::ErrorKind, String)>,
    /// Buffers to reuse.
    free: Vec<AlignedBuf>,
    /// Buffers allocated so far.
    allocated: usize,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
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
        });
        let (tx, rx) = channel::<Job>();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rewind-log-writer".into())
            .spawn(move || {
                for mut job in rx {
                    let res = job.file.write_all_at(job.buf.pad_to_alignment(), job.offset);
                    job.buf.truncate(0);
                    let mut st = sh.lock();
                    if let Err(e) = res {
                        if st.failed.is_none() {
                            tracing::error!(path = %job.path.display(), error = %e, "write log append failed");
                            st.failed = Some((job.path.clone(), e.kind(), e.to_string()));
                        }
                    }
                    st.done = job.ticket;
                    st.free.push(job.buf);
                    sh.changed.notify_all();
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

    /// An empty buffer: a free one, a new one while fewer than [`BUFFERS`] exist, or the
    /// next one the writer gives back.
    pub(crate) fn take_buffer(&self) -> Result<AlignedBuf> {
        let mut st = self.shared.lock();
        loop {
            if let Some(f) = &st.failed {
                return Err(failure(f));
            }
            if let Some(b) = st.free.pop() {
                return Ok(b);
            }
            if st.allocated < BUFFERS {
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
    pub(crate) fn give_back(&self, mut buf: AlignedBuf) {
        buf.truncate(0);
        self.shared.lock().free.push(buf);
        self.shared.changed.notify_all();
    }

    /// Hands `buf` (file bytes from `offset`, zero-padded when written) to the writer.
    /// Returns its ticket.
    pub(crate) fn submit(
        &self,
        file: Arc<File>,
        path: PathBuf,
        buf: AlignedBuf,
        offset: u64,
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
                .unwrap_or(VaultError::Poisoned));
        }
        Ok(ticket)
    }

    /// Waits until every buffer up to `ticket` is written.
    pub(crate) fn wait(&self, ticket: u64) -> Result<()> {
        let mut st = self.shared.lock();
        while st.done < ticket && st.failed.is_none() {
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

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has written what was queued.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}
