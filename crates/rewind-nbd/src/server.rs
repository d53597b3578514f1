//! Serving one NBD connection with blocking I/O.
//!
//! The connection's thread negotiates; then the transmission phase runs on a pool of
//! workers (see [`crate::workers`]). A malformed stream ends this connection only; nothing
//! a client sends can panic the server.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::capacity::Capacity;
use crate::negotiate::{greeting, Negotiation, Step};
use crate::proto::*;
use crate::transmission::*;

/// Why an export could not be opened or an operation on it failed. [`ExportError::errno`]
/// and [`ExportError::option_reply`] are the one place each maps to the protocol's numbers.
/// The text is for humans: clients print it (qemu as "server reported: ..."), so it says
/// what is wrong without the variant's name around it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// No export by that name is available (a name that is not served, a point that is
    /// not kept); the text says why.
    #[error("{0}")]
    Unknown(String),
    /// The request, or the export name, is malformed or asks for what cannot be.
    #[error("{0}")]
    Invalid(String),
    #[error("export is read-only")]
    ReadOnly,
    /// The volume or the vault has no room for the write.
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("server is shutting down")]
    Shutdown,
}

impl ExportError {
    /// The error number a request that failed this way is answered with.
    pub fn errno(&self) -> Errno {
        match self {
            ExportError::Unknown(_) | ExportError::Invalid(_) => Errno::Inval,
            ExportError::ReadOnly => Errno::Perm,
            ExportError::NoSpace(_) => Errno::NoSpc,
            ExportError::Io(_) => Errno::Io,
            ExportError::Shutdown => Errno::Shutdown,
        }
    }

    /// The NBD_REP_ERR_* an option (NBD_OPT_INFO, GO, *_META_CONTEXT) whose export could
    /// not be opened this way is answered with. The spec has no error for a server that
    /// failed: those are "the requested export is not available".
    pub fn option_reply(&self) -> u32 {
        match self {
            ExportError::Unknown(_) | ExportError::NoSpace(_) | ExportError::Io(_) => {
                REP_ERR_UNKNOWN
            }
            ExportError::Invalid(_) => REP_ERR_INVALID,
            ExportError::ReadOnly => REP_ERR_POLICY,
            ExportError::Shutdown => REP_ERR_SHUTDOWN,
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
    /// Reads only if the data is at hand without waiting for the disk (e.g. in the page
    /// cache). `Ok(false)`: it is not, and nothing was read; the server then calls
    /// [`Export::read`] on a thread that may wait. The default never has data at hand.
    fn read_nowait(&self, _offset: u64, _buf: &mut [u8]) -> Result<bool, ExportError> {
        Ok(false)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ExportError>;
    /// Whether a write of `len` bytes may wait for the disk (say, it is written with
    /// direct I/O): the server then runs it off the thread that reads requests, so that
    /// several such writes are under way at once. Payloads of at least
    /// [`crate::PAYLOAD_ALIGN_MIN`] bytes come in buffers aligned to
    /// [`crate::PAYLOAD_ALIGN`]. The default never waits (writes into the page cache).
    fn write_waits(&self, _len: usize) -> bool {
        false
    }
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
    /// (length, STATE_HOLE | STATE_ZERO bits). They may stop short of the range's end (the
    /// client asks again from there). `req_one`: the client asked for one extent only
    /// (NBD_CMD_FLAG_REQ_ONE), so an export may stop working after the first: a client
    /// that walks the export one extent per request then costs one walk in all.
    fn block_status(
        &self,
        offset: u64,
        len: u32,
        req_one: bool,
    ) -> Result<Vec<(u32, u32)>, ExportError>;
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
    /// Which failed requests are logged (see [`FailureLog`]).
    pub failure_log: FailureLog,
}

/// Failed requests are logged at most once every [`FailureLog::EVERY`]: a guest that
/// retries its writes on a full disk would otherwise fill the log with the same line. The
/// first failure is logged; then, once the interval has passed, the next one with how many
/// failed meanwhile. `rewind status` counts every one (`errors`).
#[derive(Debug, Default)]
pub struct FailureLog {
    /// When a failure was last logged, and how many failed since without a line.
    state: Mutex<Option<(std::time::Instant, u64)>>,
}

impl FailureLog {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// Whether this failure gets a line: `Some(n)` with the failures not logged since the
    /// last line, `None` when it is one of them.
    pub fn note(&self) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *st {
            Some((at, quiet)) if at.elapsed() < Self::EVERY => {
                *quiet += 1;
                None
            }
            other => {
                let quiet = other.map_or(0, |(_, q)| q);
                *other = Some((std::time::Instant::now(), 0));
                Some(quiet)
            }
        }
    }
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

/// Serves one connection until the client disconnects. `reader` and `writer` are the two
/// halves of one socket (e.g. a stream and its `try_clone`). With the default
/// [`crate::Bounds`], for this connection alone; a server shares one [`Capacity`] among
/// its connections with [`serve_connection_within`].
pub fn serve_connection<R: Read + Send, W: Write + Send>(
    reader: R,
    writer: W,
    exports: &dyn Exports,
    stats: &ServerStats,
) -> Result<(), ConnError> {
    serve_connection_within(reader, writer, exports, stats, &Capacity::default())
}

/// Serves one (admitted) connection until the client disconnects, within `capacity`:
/// its worker threads beyond this one are taken from the server's, and the memory its
/// requests hold stays within its bound.
pub fn serve_connection_within<R: Read + Send, W: Write + Send>(
    mut reader: R,
    writer: W,
    exports: &dyn Exports,
    stats: &ServerStats,
    capacity: &Capacity,
) -> Result<(), ConnError> {
    let writer = Mutex::new(writer);
    let mut neg = Negotiation::default();
    let chosen = haggle(
        &mut reader,
        &writer,
        &mut neg,
        usize::MAX,
        |neg, opt, data, out| neg.handle(opt, data, exports, out),
    )?;
    let Some(export) = chosen else {
        return Ok(());
    };
    stats.clients.fetch_add(1, Ordering::Relaxed);
    stats.connections_total.fetch_add(1, Ordering::Relaxed);
    let result =
        crate::workers::transmit(&mut reader, &writer, export.as_ref(), &neg, stats, capacity);
    stats.clients.fetch_sub(1, Ordering::Relaxed);
    result
}

/// Options a refused connection is answered at most; then it is closed.
const REFUSED_OPTIONS: usize = 16;

/// Refuses a connection the server will not serve (e.g. it is at its connection limit):
/// the greeting, then every option is answered with NBD_REP_ERR_POLICY and `why`, which
/// clients print (qemu: "server reported: ..."), until the client gives up.
pub fn refuse_connection<R: Read, W: Write>(
    mut reader: R,
    writer: W,
    why: &str,
) -> Result<(), ConnError> {
    let writer = Mutex::new(writer);
    let mut neg = Negotiation::default();
    haggle(
        &mut reader,
        &writer,
        &mut neg,
        REFUSED_OPTIONS,
        |_, opt, _, out| crate::negotiate::refuse(opt, why, out),
    )?;
    Ok(())
}

/// The greeting, then options (at most `max_options`) answered by `handle` until it
/// says to close (`None`) or to transmit.
fn haggle<R: Read, W: Write>(
    reader: &mut R,
    writer: &Mutex<W>,
    neg: &mut Negotiation,
    max_options: usize,
    mut handle: impl FnMut(&mut Negotiation, u32, &[u8], &mut Vec<u8>) -> Step,
) -> Result<Option<Arc<dyn Export>>, ConnError> {
    send(writer, &greeting())?;
    let mut flags = [0u8; 4];
    reader.read_exact(&mut flags)?;
    neg.client_flags(u32::from_be_bytes(flags))?;
    let mut out = Vec::new();
    for _ in 0..max_options {
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
        let step = handle(neg, opt, &data, &mut out);
        send(writer, &out)?;
        match step {
            Step::Continue => {}
            Step::Close => return Ok(None),
            Step::Transmit(e) => return Ok(Some(e)),
        }
    }
    Ok(None)
}

fn send<W: Write>(writer: &Mutex<W>, bytes: &[u8]) -> io::Result<()> {
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    w.write_all(bytes)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    #[test]
    fn failed_requests_are_logged_once_per_interval() {
        let log = super::FailureLog::default();
        assert_eq!(log.note(), Some(0), "the first failure is logged");
        for _ in 0..1000 {
            assert_eq!(log.note(), None, "the next ones are counted, not logged");
        }
    }

    use super::*;

    /// Every variant, and what it is answered with in transmission and in haggling. The
    /// match makes a new variant fail to compile here until it is added.
    #[test]
    fn every_export_error_maps_to_one_errno_and_one_option_reply() {
        let all = [
            ExportError::Unknown("u".into()),
            ExportError::Invalid("i".into()),
            ExportError::ReadOnly,
            ExportError::NoSpace("n".into()),
            ExportError::Io("e".into()),
            ExportError::Shutdown,
        ];
        for e in all {
            let (errno, errno_value, rep) = match e {
                ExportError::Unknown(_) => (Errno::Inval, 22, REP_ERR_UNKNOWN),
                ExportError::Invalid(_) => (Errno::Inval, 22, REP_ERR_INVALID),
                ExportError::ReadOnly => (Errno::Perm, 1, REP_ERR_POLICY),
                ExportError::NoSpace(_) => (Errno::NoSpc, 28, REP_ERR_UNKNOWN),
                ExportError::Io(_) => (Errno::Io, 5, REP_ERR_UNKNOWN),
                ExportError::Shutdown => (Errno::Shutdown, 108, REP_ERR_SHUTDOWN),
            };
            assert_eq!(e.errno(), errno, "{e:?}");
            assert_eq!(e.errno() as u32, errno_value, "{e:?}");
            assert_eq!(e.option_reply(), rep, "{e:?}");
        }
    }
}
