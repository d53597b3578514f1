//! The transmission phase's threads: how requests are read, run and answered.
//!
//! A pool of workers shares the connection (leader/follower). The leader holds the
//! request reader: it reads the next request and, when the request cannot make it wait on
//! the disk (a write into the page cache, a read of cached data, a zero or trim, block
//! status), runs it at once and reads on, with no thread hand-off at all. So does a FLUSH
//! (or FUA request): it waits for the log's fdatasync, but a hand-off costs more than that
//! wait. A request that may wait longer (a read of uncached data, a very large write) is
//! run after the leader lets go of the reader, so that a follower takes over reading
//! while it waits.
//!
//! Requests are read through one buffer: a client with many requests in flight has several
//! of them read by one system call. Replies are queued and written out together: the
//! leader writes everything queued before it would block reading the socket, and a worker
//! that finishes while the leader is blocked writes its reply (and whatever else is
//! queued) itself. So a burst of requests costs one read and one write, not one each.
//!
//! Each request's payload is held in one buffer, once: a WRITE's payload is read into its
//! own buffer (or run from the request buffer when it is small and already there), a
//! READ's data is read into the buffer its reply is written from, and a READ reply longer
//! than the queue's limit is never copied into the queue (its worker waits for the socket
//! instead). A connection holds at most one request per worker, so the payloads it pins
//! are at most [`WORKERS`] x [`MAX_PAYLOAD`] (32 x 64 MiB), plus the reply queue (each
//! reply in it at most [`QUEUE_LIMIT`]) and the pool of reused WRITE buffers
//! ([`POOL_BYTES`]).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::negotiate::Negotiation;
use crate::proto::*;
use crate::server::{ConnError, Export, ExportError, ServerStats};
use crate::transmission::*;

/// Worker threads per connection: requests that may wait on the disk at once.
const WORKERS: usize = 32;
/// Bytes of requests read from the socket at once.
const READ_BUFFER: usize = 256 << 10;
/// Writes up to this size run on the leader (they only copy into the page cache).
const INLINE_WRITE: usize = 4 << 20;
/// Reads up to this size are tried on the leader, without waiting for the disk.
const INLINE_READ: usize = 256 << 10;
/// Replies queued beyond this many bytes are written out at once, whoever is reading.
const QUEUE_LIMIT: usize = 256 << 10;
/// Replies at least this large are written straight from the worker's buffer when nothing
/// else is queued, instead of being copied into the queue.
const DIRECT_REPLY: usize = 64 << 10;
/// WRITE payload buffers kept for reuse per connection: how many, the bytes they may hold
/// in all, and the largest one kept.
const POOL_BUFFERS: usize = WORKERS + 8;
const POOL_BYTES: usize = 48 << 20;
const POOL_MAX_BUFFER: usize = 4 << 20;

struct Job {
    req: Request,
    cmd: Command,
    /// A WRITE's payload, unless it is still in the request buffer.
    payload: Vec<u8>,
    /// The WRITE's payload was whole in the request buffer when its header was read: the
    /// leader runs it from there (no copy) and then consumes it.
    in_buffer: bool,
}

impl Job {
    /// Whether the job runs on the leader: everything but reads (which may wait for the
    /// disk) and very large writes.
    ///
    /// A FLUSH, and a FUA request, which ends in one, waits for the log's fdatasync but
    /// runs on the leader too: handing the socket to another thread for it costs more than
    /// that fdatasync (4 KiB random write QD32 with a flush every 32 writes: 129-164 MiB/s
    /// on the leader, 108-132 handed off), and its client is waiting for it.
    fn runs_inline(&self) -> bool {
        match self.cmd {
            Command::Write { .. } => self.req.length as usize <= INLINE_WRITE,
            Command::Read => false,
            _ => true,
        }
    }
}

/// WRITE payload buffers of a connection, reused: a payload is read straight from the
/// socket into memory that is already initialized, so no request pays for zero-filling
/// (or faulting in) its buffer, and large payloads bypass the request buffer (one copy).
#[derive(Default)]
struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

fn pooled_bytes(free: &[Vec<u8>]) -> usize {
    free.iter().map(Vec::capacity).sum()
}

impl BufferPool {
    /// A buffer of exactly `len` bytes (contents unspecified).
    fn take(&self, len: usize) -> Vec<u8> {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            // The smallest that fits: small writes do not take the large buffers.
            free.iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i)
                .map(|i| free.swap_remove(i))
        };
        match reused {
            Some(mut b) => {
                // Every pooled buffer is initialized up to its capacity.
                b.truncate(len);
                b.resize(len, 0);
                b
            }
            None => vec![0u8; len],
        }
    }

    /// Gives a buffer back for reuse.
    fn give(&self, mut b: Vec<u8>) {
        if b.capacity() == 0 || b.capacity() > POOL_MAX_BUFFER {
            return;
        }
        {
            let free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() >= POOL_BUFFERS || pooled_bytes(&free) + b.capacity() > POOL_BYTES {
                return;
            }
        }
        // Initialize the whole capacity once, so that `take` never zero-fills again.
        b.resize(b.capacity(), 0);
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOL_BUFFERS && pooled_bytes(&free) + b.capacity() <= POOL_BYTES {
            free.push(b);
        }
    }
}

/// Replies waiting to be written.
#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    /// The buffer last written out, kept for reuse.
    spare: Vec<u8>,
    /// A worker is writing queued replies.
    sending: bool,
    /// The leader is blocked reading the socket: nobody will write replies for it.
    reading: bool,
    failed: bool,
    /// Workers waiting in [`Replies::send_large`] for the sender to finish.
    waiting: usize,
}

/// The reply side of a connection: replies are queued, and whoever finds nobody sending
/// becomes the sender and writes out everything queued until the queue is empty. The
/// leader never waits for another's reply to be written; a worker with a large reply
/// does (see [`Replies::send_large`]).
pub(crate) struct Replies<'a, W> {
    writer: &'a Mutex<W>,
    queue: Mutex<Queue>,
    /// Signalled when the sender stops while workers wait in `send_large`.
    idle: Condvar,
}

impl<'a, W: Write> Replies<'a, W> {
    pub(crate) fn new(writer: &'a Mutex<W>) -> Replies<'a, W> {
        Replies {
            writer,
            queue: Mutex::new(Queue::default()),
            idle: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a reply. It is written now if the leader is blocked reading (or the queue
    /// is long); otherwise the leader writes it before it next reads the socket.
    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut q = self.lock();
        if q.failed {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let now = !q.sending && (q.reading || q.bytes.len() + bytes.len() >= QUEUE_LIMIT);
        if !now {
            q.bytes.extend_from_slice(bytes);
            return Ok(());
        }
        if bytes.len() >= DIRECT_REPLY && q.bytes.is_empty() {
            return self.drain(q, Some(bytes));
        }
        q.bytes.extend_from_slice(bytes);
        self.drain(q, None)
    }

    /// Sends a large reply (a READ's data) from its own buffer, never copying it into the
    /// queue, where a 64 MiB reply would be held twice (and the queue's buffer would keep
    /// that size): waits until nobody is sending, then writes it and whatever is queued.
    ///
    /// Only for workers that are not leading: the leader must never wait for the socket's
    /// writer, or a client that writes all its requests before reading replies would stall
    /// both sides.
    fn send_large(&self, bytes: &[u8]) -> io::Result<()> {
        let mut q = self.lock();
        while q.sending && !q.failed {
            q.waiting += 1;
            q = self.idle.wait(q).unwrap_or_else(|p| p.into_inner());
            q.waiting -= 1;
        }
        if q.failed {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        self.drain(q, Some(bytes))
    }

    /// The sender has stopped: a worker waiting to send a large reply may go (all of
    /// them when the connection failed).
    fn stopped_sending(&self, q: &mut Queue) {
        q.sending = false;
        if q.waiting > 0 {
            if q.failed {
                self.idle.notify_all();
            } else {
                self.idle.notify_one();
            }
        }
    }

    /// Writes out the queue (and `first`, before it) unless someone else is at it.
    fn drain<'q>(
        &'q self,
        mut q: MutexGuard<'q, Queue>,
        mut first: Option<&[u8]>,
    ) -> io::Result<()> {
        if q.sending || (first.is_none() && q.bytes.is_empty()) {
            return Ok(());
        }
        if q.failed {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        q.sending = true;
        loop {
            let mut out = match first {
                Some(_) => Vec::new(),
                None => {
                    let spare = std::mem::take(&mut q.spare);
                    std::mem::replace(&mut q.bytes, spare)
                }
            };
            drop(q);
            let res = {
                let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                let data = first.take().unwrap_or(out.as_slice());
                w.write_all(data).and_then(|()| w.flush())
            };
            out.clear();
            q = self.lock();
            if q.spare.capacity() < out.capacity() {
                q.spare = out;
            }
            if let Err(e) = res {
                q.failed = true;
                self.stopped_sending(&mut q);
                q.bytes = Vec::new();
                return Err(e);
            }
            if q.bytes.is_empty() {
                self.stopped_sending(&mut q);
                return Ok(());
            }
        }
    }

    /// Writes out what is queued; called before the leader may block reading.
    fn flush_before_read(&self) -> io::Result<()> {
        let mut q = self.lock();
        q.reading = true;
        self.drain(q, None)
    }

    fn done_reading(&self) {
        self.lock().reading = false;
    }

    /// Writes out everything still queued (the connection is ending).
    fn finish(&self) -> io::Result<()> {
        let mut q = self.lock();
        q.reading = true;
        self.drain(q, None)
    }
}

/// The socket's reading half, as the request buffer sees it: every time the buffer has to
/// go to the socket (and may block there), queued replies are written out first.
struct SocketReader<'a, 'b, R, W> {
    inner: &'a mut R,
    replies: &'a Replies<'b, W>,
}

impl<R: Read, W: Write> Read for SocketReader<'_, '_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.replies.flush_before_read()?;
        let n = self.inner.read(buf);
        self.replies.done_reading();
        n
    }
}

/// Serves requests until the client disconnects or the stream breaks.
pub(crate) fn transmit<R: Read + Send, W: Write + Send>(
    reader: &mut R,
    writer: &Mutex<W>,
    export: &dyn Export,
    neg: &Negotiation,
    stats: &ServerStats,
) -> Result<(), ConnError> {
    let limits = Limits {
        size: export.size(),
        read_only: export.read_only(),
        structured: neg.structured,
        base_allocation: neg.base_allocation,
    };
    let replies = Replies::new(writer);
    let reader = Mutex::new(BufReader::with_capacity(
        READ_BUFFER,
        SocketReader {
            inner: reader,
            replies: &replies,
        },
    ));
    let done = AtomicBool::new(false);
    let failure: Mutex<Option<ConnError>> = Mutex::new(None);
    let fail = |e: ConnError| {
        done.store(true, Ordering::Release);
        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    };
    let pool = BufferPool::default();
    let conn = Conn {
        replies: &replies,
        export,
        structured: neg.structured,
        stats,
        pool: &pool,
    };
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                // Lead: read and run requests until one may wait for the disk.
                let job = {
                    let Ok(mut r) = reader.lock() else {
                        // A leader panicked while it held the request buffer: where the
                        // stream stands is not known (a payload run from the buffer is not
                        // consumed yet), so nothing more is read from it.
                        fail(io::Error::other("a request handler panicked").into());
                        return;
                    };
                    loop {
                        if done.load(Ordering::Acquire) {
                            return;
                        }
                        match next_request(&mut *r, &conn, &limits) {
                            Ok(Some(job)) => {
                                if job.in_buffer {
                                    let len = job.req.length as usize;
                                    conn.run_reporting_with(&job, &r.buffer()[..len]);
                                    r.consume(len);
                                    continue;
                                }
                                if job.runs_inline() {
                                    conn.run_reporting(job);
                                    continue;
                                }
                                if conn.read_inline(&job) {
                                    continue;
                                }
                                break job;
                            }
                            // The client disconnected: the others finish what they hold.
                            Ok(None) => {
                                done.store(true, Ordering::Release);
                                return;
                            }
                            Err(e) => {
                                fail(e);
                                return;
                            }
                        }
                    }
                };
                // Follow: a waiting request runs while another worker leads.
                conn.run_reporting(job);
            });
        }
    });
    if let Err(e) = replies.finish() {
        tracing::debug!(error = %e, "could not send the last replies; the client has gone");
    }
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What running a request needs.
struct Conn<'a, 'b, W> {
    replies: &'a Replies<'b, W>,
    export: &'a dyn Export,
    structured: bool,
    stats: &'a ServerStats,
    pool: &'a BufferPool,
}

/// Reads requests until one is to be run (refused ones are answered here). `None`: the
/// client sent NBD_CMD_DISC or went away.
///
/// A WRITE that runs on the leader and whose payload is already whole in the request
/// buffer is left there ([`Job::in_buffer`]): the leader writes it from the buffer, which
/// saves copying every small write once (4 KiB random write QD32: most payloads arrive in
/// the same socket read as their headers).
fn next_request<R: Read, W: Write>(
    reader: &mut BufReader<R>,
    conn: &Conn<'_, '_, W>,
    limits: &Limits,
) -> Result<Option<Job>, ConnError> {
    loop {
        let mut h = [0u8; REQUEST_LEN];
        match reader.read_exact(&mut h) {
            Ok(()) => {}
            // A client that goes away without NBD_CMD_DISC.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let req = parse_request(&h)?;
        let mut payload = Vec::new();
        let mut in_buffer = false;
        if req.kind == CMD_WRITE {
            if req.length > MAX_PAYLOAD {
                // We cannot skip what we will not read: the stream is lost.
                return Err(ConnError::TooLarge(req.length));
            }
            let len = req.length as usize;
            in_buffer = len <= INLINE_WRITE && reader.buffer().len() >= len;
            if !in_buffer {
                payload = conn.pool.take(len);
                // A payload at least as large as the request buffer is read past it,
                // straight from the socket, once the buffered part is copied out.
                match reader.read_exact(&mut payload) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        match validate(&req, limits) {
            Ok(Command::Disc) => return Ok(None),
            Ok(cmd) => {
                return Ok(Some(Job {
                    req,
                    cmd,
                    payload,
                    in_buffer,
                }))
            }
            Err(refusal) => {
                if in_buffer {
                    reader.consume(req.length as usize);
                }
                conn.pool.give(payload);
                conn.stats.errors.fetch_add(1, Ordering::Relaxed);
                conn.reply_error(req.cookie, refusal.errno, &refusal.to_string())?;
            }
        }
    }
}

impl<W: Write> Conn<'_, '_, W> {
    fn reply_error(&self, cookie: u64, errno: Errno, msg: &str) -> io::Result<()> {
        if self.structured {
            self.replies.send(&structured_error(cookie, errno, msg))
        } else {
            self.replies.send(&simple_reply(cookie, errno as u32))
        }
    }

    fn run_reporting(&self, job: Job) {
        self.run_reporting_with(&job, &job.payload);
        self.pool.give(job.payload);
    }

    /// Runs `job`, whose WRITE payload (if any) is `payload`.
    fn run_reporting_with(&self, job: &Job, payload: &[u8]) {
        if let Err(e) = self.run(job, payload) {
            tracing::debug!(error = %e, "could not send a reply; the client has gone");
        }
    }

    fn read_header_len(&self) -> usize {
        if self.structured {
            OFFSET_DATA_LEN
        } else {
            SIMPLE_REPLY_LEN
        }
    }

    /// Serves a READ on the leader if its data is at hand without waiting for the disk.
    /// `false`: the read must run where it may wait.
    fn read_inline(&self, job: &Job) -> bool {
        let r = &job.req;
        if job.cmd != Command::Read || r.length == 0 || r.length as usize > INLINE_READ {
            return false;
        }
        let hdr = self.read_header_len();
        let len = r.length as usize;
        let mut buf = vec![0u8; hdr + len];
        match self.export.read_nowait(r.offset, &mut buf[hdr..]) {
            Ok(true) => {
                if let Err(e) = self.reply_read(r, buf, true) {
                    tracing::debug!(error = %e, "could not send a reply; the client has gone");
                }
                true
            }
            // Not cached, or an error that the blocking read will report.
            Ok(false) | Err(_) => false,
        }
    }

    /// Sends a READ's reply from `buf` (header space, then the data). `leading`: the
    /// leader is sending, which must not wait for the socket.
    fn reply_read(&self, r: &Request, mut buf: Vec<u8>, leading: bool) -> io::Result<()> {
        let len = r.length as usize;
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_read
            .fetch_add(len as u64, Ordering::Relaxed);
        if self.structured {
            offset_data_header(&mut buf, r.cookie, r.offset, len);
        } else {
            simple_reply_header(&mut buf, r.cookie, 0);
        }
        if !leading && buf.len() > QUEUE_LIMIT {
            return self.replies.send_large(&buf);
        }
        self.replies.send(&buf)
    }

    fn run(&self, job: &Job, payload: &[u8]) -> io::Result<()> {
        let (r, export, stats) = (&job.req, self.export, self.stats);
        let result = match job.cmd {
            Command::Read if self.structured && r.length == 0 => {
                return self.replies.send(&none_reply(r.cookie));
            }
            Command::Read => {
                let hdr = self.read_header_len();
                let mut buf = vec![0u8; hdr + r.length as usize];
                // READs never run on the leader (`Job::runs_inline`).
                match export.read(r.offset, &mut buf[hdr..]) {
                    Ok(()) => return self.reply_read(r, buf, false),
                    Err(e) => Err(e),
                }
            }
            Command::Write { fua } => export.write(r.offset, payload, fua).inspect(|()| {
                stats.writes.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes_written
                    .fetch_add(u64::from(r.length), Ordering::Relaxed);
            }),
            Command::Flush => export.flush().inspect(|()| {
                stats.flushes.fetch_add(1, Ordering::Relaxed);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                stats
                    .last_flush_ns
                    .store(now.as_nanos() as u64, Ordering::Relaxed);
            }),
            Command::Trim { fua } => export.trim(r.offset, r.length, fua).inspect(|()| {
                stats.trims.fetch_add(1, Ordering::Relaxed);
            }),
            Command::WriteZeroes { fua, no_hole } => export
                .write_zeroes(r.offset, r.length, fua, no_hole)
                .inspect(|()| {
                    stats.zeroes.fetch_add(1, Ordering::Relaxed);
                }),
            Command::Cache => export.cache(r.offset, r.length),
            Command::BlockStatus { req_one } => {
                match export.block_status(r.offset, r.length, req_one) {
                    Ok(mut extents) => {
                        fit_extents(&mut extents, r.length, req_one);
                        if extents.is_empty() {
                            Err(ExportError::Io("no extents".into()))
                        } else {
                            return self.replies.send(&block_status_reply(r.cookie, &extents));
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            Command::Disc => Ok(()),
        };
        match result {
            Ok(()) => self.replies.send(&simple_reply(r.cookie, 0)),
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                if let Some(quiet) = stats.failure_log.note() {
                    tracing::warn!(cookie = r.cookie, offset = r.offset, length = r.length, error = %e, failed_since_last_line = quiet, "request failed");
                }
                let errno = e.errno();
                self.reply_error(r.cookie, errno, &format!("{errno}: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A socket's writing half that keeps what is written and can be held shut (a client
    /// that does not read).
    #[derive(Clone, Default)]
    struct Gate {
        out: Arc<Mutex<Vec<u8>>>,
        held: Arc<AtomicBool>,
        writes: Arc<AtomicUsize>,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            while self.held.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A large reply that finds another worker sending waits for it and is then written
    /// from its own buffer: it is never copied into the queue, and the queue does not
    /// keep a buffer of its size afterwards.
    #[test]
    fn a_large_reply_is_not_copied_into_the_queue() {
        let gate = Gate::default();
        let writer = Mutex::new(gate.clone());
        let replies = Replies::new(&writer);
        let small = [7u8; 16];
        let large: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        gate.held.store(true, Ordering::SeqCst);
        std::thread::scope(|s| {
            // The leader is blocked reading: a small reply is written by its worker, who
            // stays in the socket's write while the client does not read.
            replies.lock().reading = true;
            s.spawn(|| replies.send(&small).unwrap());
            wait_for("the small reply is being written", || {
                gate.writes.load(Ordering::SeqCst) > 0
            });
            let t = s.spawn(|| replies.send_large(&large).unwrap());
            // Until the large reply waits, or was put in the queue (as it once was).
            wait_for("the large reply waits for the sender", || {
                let q = replies.lock();
                q.waiting == 1 || !q.bytes.is_empty()
            });
            let queued = replies.lock().bytes.len();
            gate.held.store(false, Ordering::SeqCst);
            t.join().unwrap();
            assert_eq!(queued, 0, "the large reply was copied into the queue");
        });
        let out = gate.out.lock().unwrap();
        assert_eq!(out.len(), small.len() + large.len());
        assert_eq!(&out[..small.len()], &small);
        assert!(out[small.len()..] == large[..]);
        let q = replies.lock();
        assert!(!q.sending && q.waiting == 0);
        assert!(q.bytes.capacity() < QUEUE_LIMIT && q.spare.capacity() < QUEUE_LIMIT);
    }

    /// A worker waiting to send a large reply is let go when the connection fails.
    #[test]
    fn a_waiting_large_reply_fails_with_the_connection() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_millis(50));
                Err(io::ErrorKind::ConnectionReset.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let writer = Mutex::new(Broken);
        let replies = Replies::new(&writer);
        replies.lock().reading = true;
        std::thread::scope(|s| {
            let a = s.spawn(|| replies.send(&[1u8; 16]));
            wait_for("sending", || replies.lock().sending);
            let b = s.spawn(|| replies.send_large(&[2u8; QUEUE_LIMIT + 1]));
            assert!(a.join().unwrap().is_err());
            assert!(b.join().unwrap().is_err());
        });
    }
}
