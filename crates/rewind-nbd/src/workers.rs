//! The transmission phase's threads: how requests are read, run and answered.
//!
//! A crew of workers shares the connection (leader/follower). The leader holds the
//! request reader: it reads the next request and, when the request cannot make it wait on
//! the disk (a write into the page cache, a read of cached data, a zero or trim, block
//! status), runs it at once and reads on, with no thread hand-off at all. So does a FLUSH
//! (or FUA request): it waits for the log's fdatasync, but a hand-off costs more than that
//! wait. A request that may wait longer (a read of uncached data, a very large write) is
//! run after the leader lets go of the reader, so that another worker takes over reading
//! while it waits.
//!
//! Workers are threads made on demand: the connection's own thread is the first; when a
//! leader lets go and no worker waits to take over, one more is started, up to
//! [`WORKERS_PER_CONNECTION`] and while the server's [`Capacity`] has threads to give; one
//! that has waited [`IDLE`] without leading ends. When no thread can be had (the limit, or
//! the system refuses one) the request waits for a worker of the connection to come back:
//! an idle connection costs one thread, a busy one at most 32.
//!
//! Requests are read through one buffer: a client with many requests in flight has several
//! of them read by one system call. Replies are queued and written out together (see
//! [`crate::replies`]): the leader writes everything queued before it would block reading
//! the socket, and a worker that finishes while the leader is blocked writes its reply
//! (and whatever else is queued) itself. So a burst of requests costs one read and one
//! write, not one each.
//!
//! Each request's payload is held in one buffer, once: a WRITE's payload is read into its
//! own buffer (or run from the request buffer when it is small and already there), a
//! READ's data is read into the buffer its reply is written from, and a READ reply longer
//! than the queue's limit is never copied into the queue (its worker waits for the socket
//! instead). Payloads and queued replies together stay within the connection's budget
//! ([`crate::capacity::Bounds::max_request_memory`], see [`crate::replies`]), beside the
//! request buffer ([`READ_BUFFER`]) and the pool of reused WRITE buffers (at most
//! [`POOL_BYTES`], and no more than the budget).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::Scope;
use std::time::Duration;

use crate::capacity::{Capacity, WORKERS_PER_CONNECTION};
use crate::replies::{Replies, SocketReader, QUEUE_LIMIT};

use crate::negotiate::Negotiation;
use crate::proto::*;
use crate::server::{ConnError, Export, ExportError, ServerStats};
use crate::transmission::*;

/// How long a worker beyond the connection's own waits to lead before it ends.
const IDLE: Duration = Duration::from_secs(2);
/// Bytes of requests read from the socket at once.
const READ_BUFFER: usize = 256 << 10;
/// Writes up to this size run on the leader (they only copy into the page cache), unless
/// the export says they wait for the disk ([`Export::write_waits`]).
const INLINE_WRITE: usize = 4 << 20;
/// Reads up to this size are tried on the leader, without waiting for the disk.
const INLINE_READ: usize = 256 << 10;
/// WRITE payload buffers kept for reuse per connection: how many, the bytes they may hold
/// in all, and the largest one kept.
const POOL_BUFFERS: usize = WORKERS_PER_CONNECTION + 8;
const POOL_BYTES: usize = 48 << 20;
const POOL_MAX_BUFFER: usize = 4 << 20;
/// WRITE payloads of at least this many bytes are read into memory aligned to
/// [`PAYLOAD_ALIGN`], so that an export may write them with direct I/O, from where they
/// are (see [`crate::Export::write_waits`]).
pub const PAYLOAD_ALIGN_MIN: usize = 64 << 10;
/// See [`PAYLOAD_ALIGN_MIN`].
pub const PAYLOAD_ALIGN: usize = 4096;

/// What one connection may hold in memory at most, besides its threads' stacks: its
/// requests' payloads and queued replies (`max_request_memory`), the payload buffers it
/// keeps for reuse, and its socket read buffer.
pub fn connection_memory_bound(bounds: &crate::capacity::Bounds) -> u64 {
    (bounds.max_request_memory + POOL_BYTES + READ_BUFFER) as u64
}

struct Job {
    req: Request,
    cmd: Command,
    /// A WRITE's payload, unless it is still in the request buffer.
    payload: Payload,
    /// The WRITE's payload was whole in the request buffer when its header was read: the
    /// leader runs it from there (no copy) and then consumes it.
    in_buffer: bool,
    /// Bytes of the connection's budget the job holds (its payload, or its READ's data).
    held: usize,
}

impl Job {
    /// Whether the job runs on the leader: everything but reads (which may wait for the
    /// disk) and very large writes.
    ///
    /// A FLUSH, and a FUA request, which ends in one, waits for the log's fdatasync but
    /// runs on the leader too: handing the socket to another thread for it costs more than
    /// that fdatasync (4 KiB random write QD32 with a flush every 32 writes: 129-164 MiB/s
    /// on the leader, 108-132 handed off), and its client is waiting for it.
    ///
    /// A write the export says may wait for the disk ([`Export::write_waits`]) runs off
    /// the leader too, so that the next ones are read and run beside it.
    fn runs_inline(&self, export: &dyn Export) -> bool {
        match self.cmd {
            Command::Write { .. } => {
                let len = self.req.length as usize;
                len <= INLINE_WRITE && !export.write_waits(len)
            }
            Command::Read => false,
            _ => true,
        }
    }
}

/// A WRITE's payload: `len` bytes at `at` in a pooled buffer (`at` aligns a large one to
/// [`PAYLOAD_ALIGN`]).
#[derive(Default)]
struct Payload {
    buf: Vec<u8>,
    at: usize,
    len: usize,
}

impl Payload {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let (at, len) = (self.at, self.len);
        &mut self.buf[at..at + len]
    }
}

/// Bytes a buffer needs to hold a payload of `len` (room to align a large one).
fn room_for(len: usize) -> usize {
    if len >= PAYLOAD_ALIGN_MIN {
        len + PAYLOAD_ALIGN
    } else {
        len
    }
}

/// WRITE payload buffers of a connection, reused: a payload is read straight from the
/// socket into memory that is already initialized, so no request pays for zero-filling
/// (or faulting in) its buffer, and large payloads bypass the request buffer (one copy).
struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// The bytes the free buffers may hold in all.
    max_bytes: usize,
}

fn pooled_bytes(free: &[Vec<u8>]) -> usize {
    free.iter().map(Vec::capacity).sum()
}

impl BufferPool {
    /// A pool that keeps at most [`POOL_BYTES`], and no more than `budget`.
    fn new(budget: usize) -> BufferPool {
        BufferPool {
            free: Mutex::new(Vec::new()),
            max_bytes: POOL_BYTES.min(budget),
        }
    }

    /// A payload of `len` bytes (contents unspecified), aligned when it is large.
    fn take(&self, len: usize) -> Payload {
        let need = room_for(len);
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            // The smallest that fits: small writes do not take the large buffers.
            free.iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= need)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i)
                .map(|i| free.swap_remove(i))
        };
        // Every pooled buffer is initialized up to its capacity (its length).
        let buf = reused.unwrap_or_else(|| vec![0u8; need]);
        let at = if need > len {
            (PAYLOAD_ALIGN - buf.as_ptr() as usize % PAYLOAD_ALIGN) % PAYLOAD_ALIGN
        } else {
            0
        };
        Payload { buf, at, len }
    }

    /// Gives a payload's buffer back for reuse.
    fn give(&self, p: Payload) {
        let mut b = p.buf;
        if b.capacity() == 0 || b.capacity() > POOL_MAX_BUFFER {
            return;
        }
        {
            let free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() >= POOL_BUFFERS || pooled_bytes(&free) + b.capacity() > self.max_bytes {
                return;
            }
        }
        // Initialize the whole capacity once, so that `take` never zero-fills again.
        b.resize(b.capacity(), 0);
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOL_BUFFERS && pooled_bytes(&free) + b.capacity() <= self.max_bytes {
            free.push(b);
        }
    }
}

/// Serves requests until the client disconnects or the stream breaks.
pub(crate) fn transmit<R: Read + Send, W: Write + Send>(
    reader: &mut R,
    writer: &Mutex<W>,
    export: &dyn Export,
    neg: &Negotiation,
    stats: &ServerStats,
    capacity: &Capacity,
) -> Result<(), ConnError> {
    let limits = Limits {
        size: export.size(),
        read_only: export.read_only(),
        structured: neg.structured,
        base_allocation: neg.base_allocation,
    };
    let budget = capacity.bounds().max_request_memory;
    let replies = Replies::new(writer, budget);
    let pool = BufferPool::new(budget);
    let crew = Crew {
        reader: Mutex::new(BufReader::with_capacity(
            READ_BUFFER,
            SocketReader {
                inner: reader,
                replies: &replies,
            },
        )),
        state: Mutex::new(CrewState {
            threads: 1,
            ..CrewState::default()
        }),
        turn: Condvar::new(),
        failure: Mutex::new(None),
        capacity,
        limits,
        conn: Conn {
            replies: &replies,
            export,
            structured: neg.structured,
            stats,
            pool: &pool,
        },
    };
    std::thread::scope(|s| crew.work(s, true));
    if let Err(e) = replies.finish() {
        tracing::debug!(error = %e, "could not send the last replies; the client has gone");
    }
    match crew.failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The workers of one connection.
struct Crew<'a, 'b, R, W> {
    /// The request buffer: whoever holds it leads.
    reader: Mutex<BufReader<SocketReader<'a, 'b, R, W>>>,
    state: Mutex<CrewState>,
    /// Signalled when the lead is free, and when the connection ends.
    turn: Condvar,
    failure: Mutex<Option<ConnError>>,
    capacity: &'a Capacity,
    limits: Limits,
    conn: Conn<'a, 'b, W>,
}

#[derive(Default)]
struct CrewState {
    /// A worker leads (reads requests).
    leading: bool,
    /// Workers of this connection, its own thread included.
    threads: usize,
    /// Workers waiting to lead.
    waiting: usize,
    /// The connection ends: no more requests are read.
    done: bool,
}

impl<'a, 'b, R: Read + Send, W: Write + Send> Crew<'a, 'b, R, W> {
    fn state(&self) -> MutexGuard<'_, CrewState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One worker: leads until a request may wait for the disk, lets another lead, runs
    /// it, and comes back to lead. `home`: the connection's own thread, which stays until
    /// the connection ends; the others end after [`IDLE`] without leading.
    fn work<'s>(&'s self, s: &'s Scope<'s, '_>, home: bool) {
        while self.take_lead(home) {
            let job = self.lead();
            self.hand_over(s);
            match job {
                Some(job) => self.conn.run_reporting(job),
                None => return,
            }
        }
    }

    /// Waits to lead: `false` when the connection ends, or (not `home`) after [`IDLE`].
    fn take_lead(&self, home: bool) -> bool {
        let mut st = self.state();
        loop {
            if st.done {
                return false;
            }
            if !st.leading {
                st.leading = true;
                return true;
            }
            st.waiting += 1;
            if home {
                st = self.turn.wait(st).unwrap_or_else(|p| p.into_inner());
                st.waiting -= 1;
            } else {
                let (g, waited) = self
                    .turn
                    .wait_timeout(st, IDLE)
                    .unwrap_or_else(|p| p.into_inner());
                st = g;
                st.waiting -= 1;
                if waited.timed_out() && st.leading {
                    return false;
                }
            }
        }
    }

    /// Lets go of the lead. When no worker waits to take it, starts one if the
    /// connection and the server allow; otherwise requests wait for a worker to be back.
    fn hand_over<'s>(&'s self, s: &'s Scope<'s, '_>) {
        let spawn = {
            let mut st = self.state();
            st.leading = false;
            if st.waiting > 0 || st.done {
                self.turn.notify_one();
                false
            } else if st.threads < WORKERS_PER_CONNECTION && self.capacity.take_thread() {
                st.threads += 1;
                true
            } else {
                false
            }
        };
        if !spawn {
            return;
        }
        let started = std::thread::Builder::new()
            .name("nbd-worker".into())
            .spawn_scoped(s, move || {
                self.work(s, false);
                self.state().threads -= 1;
                self.capacity.give_thread();
            });
        if let Err(e) = started {
            // The request runs when a worker is back; the connection goes on.
            tracing::debug!(error = %e, "cannot start a worker thread; requests wait for one");
            self.state().threads -= 1;
            self.capacity.give_thread();
        }
    }

    /// Reads and runs requests until one may wait for the disk (returned) or the
    /// connection ends (`None`).
    fn lead(&self) -> Option<Job> {
        let Ok(mut r) = self.reader.lock() else {
            // A leader panicked while it held the request buffer: where the stream stands
            // is not known (a payload run from the buffer is not consumed yet), so nothing
            // more is read from it.
            self.end(Some(io::Error::other("a request handler panicked").into()));
            return None;
        };
        let conn = &self.conn;
        loop {
            if self.state().done {
                return None;
            }
            match next_request(&mut *r, conn, &self.limits) {
                Ok(Some(job)) => {
                    if job.in_buffer {
                        let len = job.req.length as usize;
                        conn.run_reporting_with(&job, &r.buffer()[..len]);
                        r.consume(len);
                        continue;
                    }
                    if job.runs_inline(conn.export) {
                        conn.run_reporting(job);
                        continue;
                    }
                    if conn.read_inline(&job) {
                        continue;
                    }
                    return Some(job);
                }
                // The client disconnected: the others finish what they hold.
                Ok(None) => {
                    self.end(None);
                    return None;
                }
                Err(e) => {
                    self.end(Some(e));
                    return None;
                }
            }
        }
    }

    /// The connection ends (why, if it failed): every worker finishes what it holds.
    fn end(&self, failure: Option<ConnError>) {
        if let Some(e) = failure {
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
        self.state().done = true;
        self.turn.notify_all();
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
///
/// Before a WRITE's payload is read, or a READ is taken on, its bytes are reserved in the
/// connection's budget: while they do not fit, no more requests are read.
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
        let mut payload = Payload::default();
        let mut in_buffer = false;
        let mut held = 0;
        if req.kind == CMD_WRITE {
            if req.length > MAX_PAYLOAD {
                // We cannot skip what we will not read: the stream is lost.
                return Err(ConnError::TooLarge(req.length));
            }
            let len = req.length as usize;
            in_buffer = len <= INLINE_WRITE && reader.buffer().len() >= len;
            if !in_buffer {
                conn.replies.reserve(len)?;
                held = len;
                payload = conn.pool.take(len);
                // A payload at least as large as the request buffer is read past it,
                // straight from the socket, once the buffered part is copied out.
                match reader.read_exact(payload.bytes_mut()) {
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
                // A WRITE reserved its payload before reading it; every request waits
                // while the budget is overrun (by queued replies).
                let need = if cmd == Command::Read {
                    conn.read_header_len() + req.length as usize
                } else {
                    0
                };
                conn.replies.reserve(need)?;
                held += need;
                return Ok(Some(Job {
                    req,
                    cmd,
                    payload,
                    in_buffer,
                    held,
                }));
            }
            Err(refusal) => {
                if in_buffer {
                    reader.consume(req.length as usize);
                }
                conn.pool.give(payload);
                conn.replies.release(held);
                conn.stats.errors.fetch_add(1, Ordering::Relaxed);
                conn.reply_error(req.cookie, refusal.errno, &refusal.to_string())?;
            }
        }
    }
}

impl<W: Write> Conn<'_, '_, W> {
    fn reply_error(&self, cookie: u64, errno: Errno, msg: &str) -> io::Result<()> {
        if self.structured {
            self.replies.send(&structured_error(cookie, errno, msg), 0)
        } else {
            self.replies.send(&simple_reply(cookie, errno as u32), 0)
        }
    }

    fn run_reporting(&self, job: Job) {
        self.run_reporting_with(&job, job.payload.bytes());
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
                if let Err(e) = self.reply_read(r, buf, job.held, true) {
                    tracing::debug!(error = %e, "could not send a reply; the client has gone");
                }
                true
            }
            // Not cached, or an error that the blocking read will report.
            Ok(false) | Err(_) => false,
        }
    }

    /// Sends a READ's reply from `buf` (header space, then the data), which holds `held`
    /// bytes of the budget. `leading`: the leader is sending, which must not wait for the
    /// socket.
    fn reply_read(
        &self,
        r: &Request,
        mut buf: Vec<u8>,
        held: usize,
        leading: bool,
    ) -> io::Result<()> {
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
            return self.replies.send_large(&buf, held);
        }
        self.replies.send(&buf, held)
    }

    /// Runs `job` and replies. The budget the job holds goes with its READ reply, or
    /// back once it has run.
    fn run(&self, job: &Job, payload: &[u8]) -> io::Result<()> {
        let r = &job.req;
        let stats = self.stats;
        let result = match job.cmd {
            Command::Read if self.structured && r.length == 0 => {
                Ok(Some(none_reply(r.cookie).to_vec()))
            }
            Command::Read => {
                let hdr = self.read_header_len();
                let mut buf = vec![0u8; hdr + r.length as usize];
                // READs never run on the leader (`Job::runs_inline`).
                match self.export.read(r.offset, &mut buf[hdr..]) {
                    Ok(()) => return self.reply_read(r, buf, job.held, false),
                    Err(e) => Err(e),
                }
            }
            _ => self.execute(job, payload),
        };
        self.replies.release(job.held);
        match result {
            Ok(Some(reply)) => self.replies.send(&reply, 0),
            Ok(None) => self.replies.send(&simple_reply(r.cookie, 0), 0),
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

    /// Carries out a request other than a READ: `Some(reply)` when it has more to say
    /// than success.
    fn execute(&self, job: &Job, payload: &[u8]) -> Result<Option<Vec<u8>>, ExportError> {
        let (r, export, stats) = (&job.req, self.export, self.stats);
        let done = match job.cmd {
            Command::Read => Err(ExportError::Invalid("a READ is not executed here".into())),
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
                let mut extents = export.block_status(r.offset, r.length, req_one)?;
                fit_extents(&mut extents, r.length, req_one);
                if extents.is_empty() {
                    return Err(ExportError::Io("no extents".into()));
                }
                return Ok(Some(block_status_reply(r.cookie, &extents)));
            }
            Command::Disc => Ok(()),
        };
        done.map(|()| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_payloads_are_aligned_reused_or_new() {
        let pool = BufferPool::new(POOL_BYTES);
        for round in 0..3 {
            let mut p = pool.take(1 << 20);
            assert_eq!(p.bytes().len(), 1 << 20);
            assert_eq!(
                p.bytes().as_ptr() as usize % PAYLOAD_ALIGN,
                0,
                "round {round}"
            );
            p.bytes_mut().fill(7);
            pool.give(p);
            // A small one may take a large buffer only if no smaller fits; it needs no
            // alignment.
            let s = pool.take(100);
            assert_eq!(s.bytes().len(), 100);
            pool.give(s);
        }
        let odd = pool.take(PAYLOAD_ALIGN_MIN + 1);
        assert_eq!(odd.bytes().as_ptr() as usize % PAYLOAD_ALIGN, 0);
        assert_eq!(odd.bytes().len(), PAYLOAD_ALIGN_MIN + 1);
    }
}
