//! Test doubles and a tiny hand-written NBD client shared by the integration tests.
//!
//! - [`RamDisk`]: an in-memory [`Export`] that records every call it receives.
//! - [`RamExports`]: "live" (read-write) and "@snap" (read-only).
//! - [`Conn`]: the client end of a `UnixStream::pair()` whose other end is served by
//!   `serve_connection` on a thread.
//! - Byte builders for options and requests, and a reply parser over any `Read`.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rewind_nbd::proto::*;
use rewind_nbd::server::ConnError;
use rewind_nbd::{serve_connection, Export, ExportError, Exports, ServerStats};

/// Size of every RAM disk.
pub const SIZE: u64 = 1 << 20;
/// Their block size.
pub const BS: u32 = 4096;
/// Blocks below this are allocated at the start; the rest are holes.
pub const ALLOCATED_BLOCKS: u64 = 128;
/// Reads or writes touching this 512-byte sector fail with an I/O error.
pub const BAD_SECTOR: u64 = 0xF_0000;
/// How long a test waits for anything before calling it a hang.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// One call an export received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Read {
        offset: u64,
        len: usize,
    },
    Write {
        offset: u64,
        len: usize,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
    Cache {
        offset: u64,
        len: u32,
    },
}

impl Call {
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Call::Write { .. } | Call::Trim { .. } | Call::WriteZeroes { .. }
        )
    }
}

/// The initial content of a disk with this seed: a pattern in allocated blocks, zeroes
/// in holes.
pub fn initial_byte(seed: u8, offset: u64) -> u8 {
    if offset / u64::from(BS) >= ALLOCATED_BLOCKS {
        return 0;
    }
    ((offset / 512) as u8) ^ (offset as u8).wrapping_mul(31) ^ seed
}

struct State {
    data: Vec<u8>,
    /// Per block: holds data (false: a hole that reads as zeroes).
    allocated: Vec<bool>,
}

/// An in-memory export.
pub struct RamDisk {
    name: String,
    description: String,
    read_only: bool,
    state: Mutex<State>,
    calls: Mutex<Vec<Call>>,
    /// Added to every read and write, to keep requests in flight.
    delay: Mutex<Duration>,
    /// Writes panic (a bug in an export, as the server sees it).
    panic_on_write: AtomicBool,
    /// Writes fail with NoSpace (the volume or the vault is full).
    full: AtomicBool,
}

impl RamDisk {
    pub fn new(name: &str, description: &str, read_only: bool, seed: u8) -> RamDisk {
        let data = (0..SIZE).map(|o| initial_byte(seed, o)).collect();
        let blocks = (SIZE / u64::from(BS)) as usize;
        let allocated = (0..blocks as u64).map(|b| b < ALLOCATED_BLOCKS).collect();
        RamDisk {
            name: name.into(),
            description: description.into(),
            read_only,
            state: Mutex::new(State { data, allocated }),
            calls: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
            panic_on_write: AtomicBool::new(false),
            full: AtomicBool::new(false),
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn clear_calls(&self) {
        self.calls.lock().unwrap().clear();
    }

    pub fn set_panic_on_write(&self, on: bool) {
        self.panic_on_write.store(on, Ordering::SeqCst);
    }

    pub fn set_full(&self, on: bool) {
        self.full.store(on, Ordering::SeqCst);
    }

    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }

    pub fn contents(&self, offset: u64, len: usize) -> Vec<u8> {
        let s = self.state.lock().unwrap();
        s.data[offset as usize..offset as usize + len].to_vec()
    }

    pub fn is_allocated(&self, block: u64) -> bool {
        self.state.lock().unwrap().allocated[block as usize]
    }

    fn record(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }

    fn pause(&self) {
        let d = *self.delay.lock().unwrap();
        if !d.is_zero() {
            std::thread::sleep(d);
        }
    }

    /// The double checks bounds itself too: the server must never hand it a bad range.
    fn check(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        match offset.checked_add(len) {
            Some(e) if e <= SIZE => Ok(()),
            _ => panic!("server passed an out-of-range request {offset}+{len} to the export"),
        }
    }

    fn touches_bad_sector(offset: u64, len: u64) -> bool {
        len > 0 && offset < BAD_SECTOR + 512 && offset + len > BAD_SECTOR
    }

    fn set_range(&self, offset: u64, len: u64, allocate: bool, fill: Option<&[u8]>) {
        let mut s = self.state.lock().unwrap();
        let (o, l) = (offset as usize, len as usize);
        match fill {
            Some(d) => s.data[o..o + l].copy_from_slice(d),
            None => s.data[o..o + l].fill(0),
        }
        if len == 0 {
            return;
        }
        let bs = u64::from(BS);
        let first = offset / bs;
        let last = (offset + len - 1) / bs;
        for b in first..=last {
            let whole = b * bs >= offset && (b + 1) * bs <= offset + len;
            if allocate {
                s.allocated[b as usize] = true;
            } else if whole {
                s.allocated[b as usize] = false;
            }
        }
    }
}

impl Export for RamDisk {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn size(&self) -> u64 {
        SIZE
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn block_size(&self) -> u32 {
        BS
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError> {
        self.record(Call::Read {
            offset,
            len: buf.len(),
        });
        self.check(offset, buf.len() as u64)?;
        self.pause();
        if Self::touches_bad_sector(offset, buf.len() as u64) {
            return Err(ExportError::Io("bad sector".into()));
        }
        let s = self.state.lock().unwrap();
        buf.copy_from_slice(&s.data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    /// Data in even 64 KiB slices is "at hand" (read on the leader without waiting);
    /// the rest takes the blocking path, so tests exercise both.
    fn read_nowait(&self, offset: u64, buf: &mut [u8]) -> Result<bool, ExportError> {
        let end = offset + buf.len() as u64;
        if !(offset >> 16).is_multiple_of(2) || (end.saturating_sub(1) >> 16) != (offset >> 16) {
            return Ok(false);
        }
        if *self.delay.lock().unwrap() > Duration::ZERO && offset.is_multiple_of(3) {
            return Ok(false);
        }
        self.read(offset, buf).map(|()| true)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ExportError> {
        self.record(Call::Write {
            offset,
            len: data.len(),
            fua,
        });
        self.check(offset, data.len() as u64)?;
        if self.read_only {
            return Err(ExportError::ReadOnly);
        }
        assert!(
            !self.panic_on_write.load(Ordering::SeqCst),
            "the test export panics on write"
        );
        self.pause();
        if self.full.load(Ordering::SeqCst) {
            return Err(ExportError::NoSpace("the test disk is full".into()));
        }
        if Self::touches_bad_sector(offset, data.len() as u64) {
            return Err(ExportError::Io("bad sector".into()));
        }
        self.set_range(offset, data.len() as u64, true, Some(data));
        Ok(())
    }
    fn flush(&self) -> Result<(), ExportError> {
        self.record(Call::Flush);
        Ok(())
    }
    fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), ExportError> {
        self.record(Call::Trim { offset, len, fua });
        self.check(offset, u64::from(len))?;
        if self.read_only {
            return Err(ExportError::ReadOnly);
        }
        self.set_range(offset, u64::from(len), false, None);
        Ok(())
    }
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), ExportError> {
        self.record(Call::WriteZeroes {
            offset,
            len,
            fua,
            no_hole,
        });
        self.check(offset, u64::from(len))?;
        if self.read_only {
            return Err(ExportError::ReadOnly);
        }
        self.set_range(offset, u64::from(len), no_hole, None);
        Ok(())
    }
    /// Runs of equal allocation from `offset`; the last run is reported to its natural
    /// end, which may lie past the request (the trait allows that, the wire does not
    /// always: the server must trim it).
    fn block_status(
        &self,
        offset: u64,
        len: u32,
        req_one: bool,
    ) -> Result<Vec<(u32, u32)>, ExportError> {
        self.record(Call::BlockStatus {
            offset,
            len,
            req_one,
        });
        self.check(offset, u64::from(len))?;
        let s = self.state.lock().unwrap();
        let bs = u64::from(BS);
        let mut out = Vec::new();
        let mut at = offset;
        let end = offset + u64::from(len);
        while at < SIZE && (out.is_empty() || at < end) {
            let b = at / bs;
            let alloc = s.allocated[b as usize];
            let mut nb = b + 1;
            while nb < SIZE / bs && s.allocated[nb as usize] == alloc {
                nb += 1;
            }
            let run_end = nb * bs;
            let flags = if alloc { 0 } else { STATE_HOLE | STATE_ZERO };
            out.push(((run_end - at) as u32, flags));
            at = run_end;
        }
        Ok(out)
    }
    fn cache(&self, offset: u64, len: u32) -> Result<(), ExportError> {
        self.record(Call::Cache { offset, len });
        self.check(offset, u64::from(len))?;
        Ok(())
    }
}

/// "live" (read-write) and "@snap" (read-only); opening "@bad", "@io" or "@stopping"
/// fails with Invalid, Io or Shutdown, any other name with Unknown.
pub struct RamExports {
    pub live: Arc<RamDisk>,
    pub snap: Arc<RamDisk>,
    pub opened: Mutex<Vec<String>>,
}

/// Why "@bad" and "@io" are refused (the other names: unknown, "@stopping": shutting down).
pub const REFUSED_BAD: &str = "cannot understand point \"bad\"";
pub const REFUSED_IO: &str = "vault corrupted at byte 7";

pub const LIVE_DESC: &str = "the live volume";
pub const SNAP_DESC: &str = "a point in time, read-only";
pub const LIVE_SEED: u8 = 0x11;
pub const SNAP_SEED: u8 = 0x5a;

impl RamExports {
    pub fn new() -> Arc<RamExports> {
        Arc::new(RamExports {
            live: Arc::new(RamDisk::new("live", LIVE_DESC, false, LIVE_SEED)),
            snap: Arc::new(RamDisk::new("@snap", SNAP_DESC, true, SNAP_SEED)),
            opened: Mutex::new(Vec::new()),
        })
    }

    pub fn disk(&self, name: &str) -> &Arc<RamDisk> {
        match name {
            "live" => &self.live,
            "@snap" => &self.snap,
            _ => panic!("no disk {name}"),
        }
    }
}

impl Exports for RamExports {
    fn list(&self) -> Vec<(String, String)> {
        vec![
            ("live".into(), LIVE_DESC.into()),
            ("@snap".into(), SNAP_DESC.into()),
        ]
    }
    fn open(&self, name: &str) -> Result<Arc<dyn Export>, ExportError> {
        self.opened.lock().unwrap().push(name.to_string());
        match name {
            "live" => Ok(self.live.clone()),
            "@snap" => Ok(self.snap.clone()),
            "@bad" => Err(ExportError::Invalid(REFUSED_BAD.into())),
            "@io" => Err(ExportError::Io(REFUSED_IO.into())),
            "@stopping" => Err(ExportError::Shutdown),
            _ => Err(ExportError::Unknown(format!("no export named {name:?}"))),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Wire builders.

pub fn be16(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}
pub fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}
pub fn be64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// An option as the client sends it.
pub fn opt(option: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&be64(IHAVEOPT));
    b.extend_from_slice(&be32(option));
    b.extend_from_slice(&be32(data.len() as u32));
    b.extend_from_slice(data);
    b
}

/// NBD_OPT_INFO / NBD_OPT_GO data.
pub fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&be32(name.len() as u32));
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&be16(infos.len() as u16));
    for i in infos {
        b.extend_from_slice(&be16(*i));
    }
    b
}

/// NBD_OPT_{LIST,SET}_META_CONTEXT data.
pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&be32(name.len() as u32));
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&be32(queries.len() as u32));
    for q in queries {
        b.extend_from_slice(&be32(q.len() as u32));
        b.extend_from_slice(q.as_bytes());
    }
    b
}

/// A request header.
pub fn req(flags: u16, kind: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    b.extend_from_slice(&be32(REQUEST_MAGIC));
    b.extend_from_slice(&be16(flags));
    b.extend_from_slice(&be16(kind));
    b.extend_from_slice(&be64(cookie));
    b.extend_from_slice(&be64(offset));
    b.extend_from_slice(&be32(length));
    b
}

/// A WRITE request with its payload.
pub fn write_req(flags: u16, cookie: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut b = req(flags, CMD_WRITE, cookie, offset, data.len() as u32);
    b.extend_from_slice(data);
    b
}

/// Data a test writes: distinct per (tag, offset).
pub fn payload(tag: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (tag.wrapping_mul(0x9e37_79b9) as usize ^ (i * 7 + i / 256)) as u8)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Reply parsing.

/// One option reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptReply {
    pub opt: u32,
    pub typ: u32,
    pub data: Vec<u8>,
}

impl OptReply {
    pub fn is_error(&self) -> bool {
        self.typ & (1 << 31) != 0
    }
}

/// One transmission reply message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple {
        cookie: u64,
        error: u32,
        data: Vec<u8>,
    },
    Chunk {
        flags: u16,
        typ: u16,
        cookie: u64,
        payload: Vec<u8>,
    },
}

impl Reply {
    pub fn cookie(&self) -> u64 {
        match self {
            Reply::Simple { cookie, .. } | Reply::Chunk { cookie, .. } => *cookie,
        }
    }

    /// The error a reply carries (0: success), checking the chunk is well formed.
    pub fn error(&self) -> u32 {
        match self {
            Reply::Simple { error, .. } => *error,
            Reply::Chunk { typ, payload, .. } if *typ == REPLY_TYPE_ERROR => {
                let e = check_error_chunk(payload);
                assert_ne!(e, 0, "an ERROR chunk must carry a nonzero error");
                e
            }
            Reply::Chunk { .. } => 0,
        }
    }

    /// The final DONE chunk or a simple reply.
    pub fn is_final(&self) -> bool {
        match self {
            Reply::Simple { .. } => true,
            Reply::Chunk { flags, .. } => flags & REPLY_FLAG_DONE != 0,
        }
    }
}

/// Checks an ERROR chunk's payload layout; returns its error.
pub fn check_error_chunk(p: &[u8]) -> u32 {
    assert!(p.len() >= 6, "ERROR chunk shorter than 6 bytes");
    let e = u32::from_be_bytes(p[..4].try_into().unwrap());
    let mlen = u16::from_be_bytes(p[4..6].try_into().unwrap()) as usize;
    assert_eq!(mlen, p.len() - 6, "ERROR chunk message length mismatch");
    assert!(mlen <= MAX_STRING);
    assert!(
        std::str::from_utf8(&p[6..]).is_ok(),
        "error message not UTF-8"
    );
    e
}

pub fn read_n<R: Read>(r: &mut R, n: usize) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

pub fn read_opt_reply<R: Read>(r: &mut R) -> io::Result<OptReply> {
    let h = read_n(r, 20)?;
    assert_eq!(u64_at(&h, 0), OPTION_REPLY_MAGIC, "bad option reply magic");
    let len = u32_at(&h, 16) as usize;
    Ok(OptReply {
        opt: u32_at(&h, 8),
        typ: u32_at(&h, 12),
        data: read_n(r, len)?,
    })
}

/// Reads one reply; `data_len(cookie)` is how many bytes a successful simple reply to
/// that cookie carries (a READ's length, else 0).
pub fn read_reply<R: Read>(r: &mut R, data_len: impl Fn(u64) -> usize) -> io::Result<Reply> {
    let m = read_n(r, 4)?;
    match u32_at(&m, 0) {
        SIMPLE_REPLY_MAGIC => {
            let h = read_n(r, 12)?;
            let error = u32_at(&h, 0);
            let cookie = u64_at(&h, 4);
            let data = if error == 0 {
                read_n(r, data_len(cookie))?
            } else {
                Vec::new()
            };
            Ok(Reply::Simple {
                cookie,
                error,
                data,
            })
        }
        STRUCTURED_REPLY_MAGIC => {
            let h = read_n(r, 16)?;
            let len = u32_at(&h, 12) as usize;
            Ok(Reply::Chunk {
                flags: u16_at(&h, 0),
                typ: u16_at(&h, 2),
                cookie: u64_at(&h, 4),
                payload: read_n(r, len)?,
            })
        }
        m => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad reply magic {m:#x}"),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// A connection to serve_connection over a socket pair.

/// What `serve_connection` returned.
pub type ServerResult = Result<(), ConnError>;

pub struct Conn {
    pub s: UnixStream,
    server: Option<JoinHandle<ServerResult>>,
    pub exports: Arc<RamExports>,
    pub stats: Arc<ServerStats>,
    /// READ lengths by cookie, for parsing simple replies.
    pub reads: HashMap<u64, u32>,
    pub structured: bool,
}

impl Conn {
    /// Starts a server thread on one end of a socket pair.
    pub fn start(exports: Arc<RamExports>) -> Conn {
        let (c, s) = UnixStream::pair().unwrap();
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        c.set_write_timeout(Some(TIMEOUT)).unwrap();
        let stats = Arc::new(ServerStats::default());
        let (e, st) = (exports.clone(), stats.clone());
        let server = std::thread::spawn(move || {
            let r = s.try_clone().unwrap();
            serve_connection(r, s, e.as_ref(), &st)
        });
        Conn {
            s: c,
            server: Some(server),
            exports,
            stats,
            reads: HashMap::new(),
            structured: false,
        }
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    pub fn read(&mut self, n: usize) -> Vec<u8> {
        read_n(&mut self.s, n).unwrap()
    }

    /// The greeting: (magic, ihaveopt, handshake flags).
    pub fn greeting(&mut self) -> (u64, u64, u16) {
        let g = self.read(18);
        (u64_at(&g, 0), u64_at(&g, 8), u16_at(&g, 16))
    }

    /// Reads the greeting (checking it) and sends the client flags.
    pub fn handshake(&mut self, client_flags: u32) {
        let (m, o, f) = self.greeting();
        assert_eq!((m, o), (NBDMAGIC, IHAVEOPT));
        assert_eq!(f, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        self.send(&be32(client_flags));
    }

    pub fn option(&mut self, option: u32, data: &[u8]) {
        self.send(&opt(option, data));
    }

    pub fn opt_reply(&mut self) -> OptReply {
        read_opt_reply(&mut self.s).unwrap()
    }

    /// Sends an option and reads replies up to and including the final one (ACK or an
    /// error), checking each echoes the option.
    pub fn haggle(&mut self, option: u32, data: &[u8]) -> Vec<OptReply> {
        self.option(option, data);
        let mut out = Vec::new();
        loop {
            let r = self.opt_reply();
            assert_eq!(r.opt, option, "reply for another option: {r:?}");
            let done = r.typ == REP_ACK || r.is_error();
            out.push(r);
            if done {
                return out;
            }
        }
    }

    /// The connection is closed by the server: EOF (after any bytes already in flight
    /// have been read by the caller).
    pub fn expect_eof(&mut self) {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => {}
            Ok(_) => panic!("expected EOF, got data {b:?}"),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected EOF, got {e}"),
        }
    }

    /// The server thread's handle, for a test that expects it to panic.
    pub fn take_server(&mut self) -> JoinHandle<ServerResult> {
        self.server.take().expect("joined twice")
    }

    /// Waits for the server thread, failing the test if it hangs.
    pub fn join(&mut self) -> ServerResult {
        let h = self.server.take().expect("joined twice");
        let start = Instant::now();
        while !h.is_finished() {
            assert!(start.elapsed() < TIMEOUT, "serve_connection did not return");
            std::thread::sleep(Duration::from_millis(2));
        }
        h.join().expect("serve_connection panicked")
    }

    /// Closes our end and waits for the server.
    pub fn hang_up(mut self) -> ServerResult {
        self.s.shutdown(std::net::Shutdown::Both).ok();
        self.join()
    }

    // -- transmission --------------------------------------------------------------

    /// Negotiates into transmission with NBD_OPT_GO: returns (size, transmission flags,
    /// the base:allocation context id if `meta`).
    pub fn go(&mut self, name: &str, structured: bool, meta: bool) -> (u64, u16, Option<u32>) {
        self.handshake(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
        if structured {
            let r = self.haggle(OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(r.last().unwrap().typ, REP_ACK);
            self.structured = true;
        }
        let mut ctx = None;
        if meta {
            let r = self.haggle(OPT_SET_META_CONTEXT, &meta_data(name, &[BASE_ALLOCATION]));
            assert_eq!(r.len(), 2, "{r:?}");
            assert_eq!(r[0].typ, REP_META_CONTEXT);
            assert_eq!(&r[0].data[4..], BASE_ALLOCATION.as_bytes());
            ctx = Some(u32_at(&r[0].data, 0));
            assert_eq!(r[1].typ, REP_ACK);
        }
        let r = self.haggle(OPT_GO, &info_data(name, &[]));
        assert_eq!(r.last().unwrap().typ, REP_ACK, "{r:?}");
        let info = r
            .iter()
            .find(|r| r.typ == REP_INFO && u16_at(&r.data, 0) == INFO_EXPORT)
            .expect("no NBD_INFO_EXPORT");
        assert_eq!(info.data.len(), 12);
        (u64_at(&info.data, 2), u16_at(&info.data, 10), ctx)
    }

    /// Starts a server and goes into transmission on `name`.
    pub fn transmit(name: &str, structured: bool, meta: bool) -> (Conn, u16, Option<u32>) {
        let mut c = Conn::start(RamExports::new());
        let (size, flags, ctx) = c.go(name, structured, meta);
        assert_eq!(size, SIZE);
        (c, flags, ctx)
    }

    pub fn request(&mut self, flags: u16, kind: u16, cookie: u64, offset: u64, length: u32) {
        if kind == CMD_READ {
            self.reads.insert(cookie, length);
        }
        self.send(&req(flags, kind, cookie, offset, length));
    }

    pub fn write(&mut self, flags: u16, cookie: u64, offset: u64, data: &[u8]) {
        self.send(&write_req(flags, cookie, offset, data));
    }

    pub fn reply(&mut self) -> Reply {
        let reads = &self.reads;
        read_reply(&mut self.s, |c| {
            reads.get(&c).copied().unwrap_or(0) as usize
        })
        .unwrap()
    }

    /// All messages of the next reply, which must all be for `cookie`.
    pub fn reply_to(&mut self, cookie: u64) -> Vec<Reply> {
        let mut out = Vec::new();
        loop {
            let r = self.reply();
            assert_eq!(r.cookie(), cookie, "reply for an unexpected cookie: {r:?}");
            let done = r.is_final();
            out.push(r);
            if done {
                return out;
            }
        }
    }

    /// The error of a reply with no data (simple, or one structured chunk).
    pub fn status(&mut self, cookie: u64) -> u32 {
        let r = self.reply_to(cookie);
        assert_eq!(r.len(), 1, "{r:?}");
        if let Reply::Simple { data, .. } = &r[0] {
            assert!(data.is_empty());
        }
        if self.structured {
            if let Reply::Chunk { typ, payload, .. } = &r[0] {
                assert!(
                    *typ == REPLY_TYPE_ERROR || (*typ == REPLY_TYPE_NONE && payload.is_empty()),
                    "unexpected chunk {r:?}"
                );
            }
        }
        r[0].error()
    }

    /// A READ's data, checking the reply form for the negotiated mode; Err(errno).
    pub fn read_data(
        &mut self,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, u32> {
        self.request(flags, CMD_READ, cookie, offset, len);
        let r = self.reply_to(cookie);
        read_result(&r, self.structured, offset, len)
    }
}

/// Interprets the messages of one READ reply; checks they follow the spec for the mode.
pub fn read_result(r: &[Reply], structured: bool, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
    if !structured {
        assert_eq!(r.len(), 1);
        let Reply::Simple { error, data, .. } = &r[0] else {
            panic!("a structured reply without negotiation: {r:?}");
        };
        if *error != 0 {
            assert!(data.is_empty());
            return Err(*error);
        }
        assert_eq!(data.len(), len as usize);
        return Ok(data.clone());
    }
    let mut buf = vec![0u8; len as usize];
    let mut covered = 0u64;
    let mut error = None;
    for m in r {
        let Reply::Chunk { typ, payload, .. } = m else {
            panic!("a simple reply to a structured READ: {m:?}");
        };
        match *typ {
            REPLY_TYPE_OFFSET_DATA => {
                assert!(
                    payload.len() >= 9,
                    "OFFSET_DATA must carry at least one byte"
                );
                let at = u64_at(payload, 0);
                let d = &payload[8..];
                assert!(at >= offset && at + d.len() as u64 <= offset + u64::from(len));
                let s = (at - offset) as usize;
                buf[s..s + d.len()].copy_from_slice(d);
                covered += d.len() as u64;
            }
            REPLY_TYPE_NONE => assert!(payload.is_empty()),
            REPLY_TYPE_ERROR => error = Some(check_error_chunk(payload)),
            t => panic!("unexpected chunk type {t} in a READ reply"),
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    assert_eq!(
        covered,
        u64::from(len),
        "READ reply does not cover the request"
    );
    Ok(buf)
}
