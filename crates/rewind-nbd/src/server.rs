//! Serving one NBD connection with blocking I/O.
//!
//! The connection's thread negotiates; then a pool of workers takes turns reading the
//! next request from the socket (leader/follower: no hand-off between threads), runs it
//! against the export and writes the reply (in whatever order requests finish) under a
//! lock on the socket's write half. A malformed stream ends
//! this connection only; nothing a client sends can panic the server.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::negotiate::{greeting, Negotiation, Step};
use crate::proto::*;
use crate::transmission::*;

/// Worker threads per connection (requests in flight at once): enough for a client at
/// queue depth 16 to keep 16 reads or writes in flight in the kernel.
const WORKERS: usize = 16;

/// Why an export operation failed; mapped to the spec's error numbers.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error("no export named {0:?}")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
    #[error("export is read-only")]
    ReadOnly,
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("server is shutting down")]
    Shutdown,
}

impl ExportError {
    fn errno(&self) -> Errno {
        match self {
            ExportError::Unknown(_) | ExportError::Invalid(_) => Errno::Inval,
            ExportError::ReadOnly => Errno::Perm,
            ExportError::NoSpace(_) => Errno::NoSpc,
            ExportError::Io(_) => Errno::Io,
            ExportError::Shutdown => Errno::Shutdown,
        }
    }
}

/// One export: the live volume, or a point in time.
pub trait Export: Send + Sync {
    fn name(&self) -> &str;
    fn description(&self) -> &str;
    /// Size in bytes.
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    /// Preferred I/O size.
    fn block_size(&self) -> u32;
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError>;
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ExportError>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), ExportError>;
    fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), ExportError>;
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), ExportError>;
    /// base:allocation extents covering at least the first byte of the range:
    /// (length, STATE_HOLE | STATE_ZERO bits).
    fn block_status(&self, offset: u64, len: u32) -> Result<Vec<(u32, u32)>, ExportError>;
    /// A hint to bring the range into cache.
    fn cache(&self, _offset: u64, _len: u32) -> Result<(), ExportError> {
        Ok(())
    }
}

/// The exports a server offers.
pub trait Exports: Send + Sync {
    /// (name, description) for NBD_OPT_LIST.
    fn list(&self) -> Vec<(String, String)>;
    fn open(&self, name: &str) -> Result<Arc<dyn Export>, ExportError>;
}

/// Counters shared by all connections.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub clients: AtomicU64,
    pub connections_total: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub flushes: AtomicU64,
    pub trims: AtomicU64,
    pub zeroes: AtomicU64,
    pub errors: AtomicU64,
    /// When the last FLUSH completed (ns since the epoch; 0: never).
    pub last_flush_ns: AtomicU64,
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Negotiate(#[from] crate::negotiate::NegotiateError),
    #[error(transparent)]
    BadMagic(#[from] BadMagic),
    #[error("request payload of {0} bytes is too large")]
    TooLarge(u32),
    #[error("option payload of {0} bytes is too large")]
    OptionTooLarge(u32),
}

struct Job {
    req: Request,
    cmd: Command,
    payload: Vec<u8>,
}

/// Serves one connection until the client disconnects. `reader` and `writer` are the two
/// halves of one socket (e.g. a stream and its `try_clone`).
pub fn serve_connection<R: Read + Send, W: Write + Send>(
    mut reader: R,
    writer: W,
    exports: &dyn Exports,
    stats: &ServerStats,
) -> Result<(), ConnError> {
    let writer = Mutex::new(writer);
    let Some((export, neg)) = negotiate(&mut reader, &writer, exports)? else {
        return Ok(());
    };
    stats.clients.fetch_add(1, Ordering::Relaxed);
    stats.connections_total.fetch_add(1, Ordering::Relaxed);
    let result = transmit(&mut reader, &writer, export.as_ref(), &neg, stats);
    stats.clients.fetch_sub(1, Ordering::Relaxed);
    result
}

/// The export a client chose and what it negotiated.
type Negotiated = (Arc<dyn Export>, Negotiation);

fn negotiate<R: Read, W: Write>(
    reader: &mut R,
    writer: &Mutex<W>,
    exports: &dyn Exports,
) -> Result<Option<Negotiated>, ConnError> {
    send(writer, &greeting())?;
    let mut neg = Negotiation::default();
    let mut flags = [0u8; 4];
    reader.read_exact(&mut flags)?;
    neg.client_flags(u32::from_be_bytes(flags))?;
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 16];
        match reader.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let (opt, len) = Negotiation::option_header(&h)?;
        if len > MAX_OPTION_LEN {
            // Too big to read; we cannot find the next option without reading it.
            out.clear();
            crate::negotiate::error(&mut out, opt, REP_ERR_TOO_BIG, "option too large");
            send(writer, &out)?;
            return Err(ConnError::OptionTooLarge(len));
        }
        let mut data = vec![0u8; len as usize];
        reader.read_exact(&mut data)?;
        out.clear();
        let step = neg.handle(opt, &data, exports, &mut out);
        send(writer, &out)?;
        match step {
            Step::Continue => {}
            Step::Close => return Ok(None),
            Step::Transmit(e) => return Ok(Some((e, neg))),
        }
    }
}

fn send<W: Write>(writer: &Mutex<W>, bytes: &[u8]) -> io::Result<()> {
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    w.write_all(bytes)?;
    w.flush()
}

fn transmit<R: Read + Send, W: Write + Send>(
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
    // Leader/follower: each worker takes the socket, reads the next request, lets go of
    // it and serves the request. No hand-off between threads per request.
    let reader = Mutex::new(reader);
    let done = AtomicBool::new(false);
    let failure: Mutex<Option<ConnError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                let job = {
                    let mut r = reader.lock().unwrap_or_else(|p| p.into_inner());
                    if done.load(Ordering::Acquire) {
                        return;
                    }
                    match next_request(&mut **r, writer, &limits, neg.structured, stats) {
                        Ok(Some(job)) => job,
                        // The client disconnected: the others finish what they hold.
                        Ok(None) => {
                            done.store(true, Ordering::Release);
                            return;
                        }
                        Err(e) => {
                            done.store(true, Ordering::Release);
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            return;
                        }
                    }
                };
                if let Err(e) = run(&job, writer, export, neg.structured, stats) {
                    tracing::debug!(error = %e, "could not send a reply; the client has gone");
                }
            });
        }
    });
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Reads requests until one is to be run (refused ones are answered here). `None`: the
/// client sent NBD_CMD_DISC or went away.
fn next_request<R: Read, W: Write>(
    reader: &mut R,
    writer: &Mutex<W>,
    limits: &Limits,
    structured: bool,
    stats: &ServerStats,
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
        if req.kind == CMD_WRITE {
            if req.length > MAX_PAYLOAD {
                // We cannot skip what we will not read: the stream is lost.
                return Err(ConnError::TooLarge(req.length));
            }
            // Read straight into spare capacity: no zero-fill of up to 32 MiB first.
            payload.reserve_exact(req.length as usize);
            let got = reader
                .by_ref()
                .take(u64::from(req.length))
                .read_to_end(&mut payload)?;
            if got != req.length as usize {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
        match validate(&req, limits) {
            Ok(Command::Disc) => return Ok(None),
            Ok(cmd) => return Ok(Some(Job { req, cmd, payload })),
            Err(errno) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                let msg = format!("request refused: {errno:?}");
                reply_error(writer, req.cookie, errno, &msg, structured)?;
            }
        }
    }
}

fn reply_error<W: Write>(
    writer: &Mutex<W>,
    cookie: u64,
    errno: Errno,
    msg: &str,
    structured: bool,
) -> io::Result<()> {
    if structured {
        send(writer, &structured_error(cookie, errno, msg))
    } else {
        send(writer, &simple_reply(cookie, errno as u32))
    }
}

fn run<W: Write>(
    job: &Job,
    writer: &Mutex<W>,
    export: &dyn Export,
    structured: bool,
    stats: &ServerStats,
) -> io::Result<()> {
    let r = &job.req;
    let result = match job.cmd {
        Command::Read if structured && r.length == 0 => {
            return send(writer, &none_reply(r.cookie));
        }
        Command::Read => {
            let hdr = if structured {
                OFFSET_DATA_LEN
            } else {
                SIMPLE_REPLY_LEN
            };
            let len = r.length as usize;
            let mut buf = vec![0u8; hdr + len];
            match export.read(r.offset, &mut buf[hdr..]) {
                Ok(()) => {
                    stats.reads.fetch_add(1, Ordering::Relaxed);
                    stats.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
                    if structured {
                        offset_data_header(&mut buf, r.cookie, r.offset, len);
                    } else {
                        simple_reply_header(&mut buf, r.cookie, 0);
                    }
                    return send(writer, &buf);
                }
                Err(e) => Err(e),
            }
        }
        Command::Write { fua } => export.write(r.offset, &job.payload, fua).inspect(|()| {
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
        Command::BlockStatus { req_one } => match export.block_status(r.offset, r.length) {
            Ok(mut extents) => {
                fit_extents(&mut extents, r.length, req_one);
                if extents.is_empty() {
                    Err(ExportError::Io("no extents".into()))
                } else {
                    return send(writer, &block_status_reply(r.cookie, &extents));
                }
            }
            Err(e) => Err(e),
        },
        Command::Disc => Ok(()),
    };
    match result {
        Ok(()) => send(writer, &simple_reply(r.cookie, 0)),
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(cookie = r.cookie, offset = r.offset, length = r.length, error = %e, "request failed");
            reply_error(writer, r.cookie, e.errno(), &e.to_string(), structured)
        }
    }
}
