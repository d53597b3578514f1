//! Option negotiation (the "haggling" phase) as a state machine: the server hands it each
//! option the client sends, it appends the replies to a buffer and says what happens next.
//! No I/O here, so every path is testable from bytes.

use std::sync::Arc;

use crate::proto::*;
use crate::server::{Export, ExportError, Exports};

/// What the connection does after an option.
pub enum Step {
    /// Read the next option.
    Continue,
    /// Send the replies, then close (NBD_OPT_ABORT, or an export name we cannot serve).
    Close,
    /// Send the replies, then enter transmission with this export.
    Transmit(Arc<dyn Export>),
}

/// The negotiated state of one connection.
#[derive(Debug, Default)]
pub struct Negotiation {
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected with NBD_OPT_SET_META_CONTEXT.
    pub base_allocation: bool,
    /// The client asked for no zero padding after NBD_OPT_EXPORT_NAME.
    pub no_zeroes: bool,
}

/// The server's greeting: magic, IHAVEOPT, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut g = [0u8; 18];
    g[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// Why a connection is dropped during negotiation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NegotiateError {
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    #[error("bad option magic {0:#x}")]
    BadOptionMagic(u64),
}

impl Negotiation {
    /// Takes the client's 32-bit flags.
    ///
    /// The server "MUST drop the TCP connection if the client sets an unknown flag"; a
    /// client that leaves NBD_FLAG_C_FIXED_NEWSTYLE clear is served ("Servers MAY choose
    /// to honour fixed newstyle from clients that didn't set this bit"): such a client
    /// sends NBD_OPT_EXPORT_NAME, which is answered the same either way.
    pub fn client_flags(&mut self, flags: u32) -> Result<(), NegotiateError> {
        if flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
            return Err(NegotiateError::UnknownClientFlags(flags));
        }
        self.no_zeroes = flags & CLIENT_NO_ZEROES != 0;
        Ok(())
    }

    /// Decodes an option header: (option, length).
    pub fn option_header(h: &[u8; 16]) -> Result<(u32, u32), NegotiateError> {
        let magic = u64::from_be_bytes(arr(&h[..8]));
        if magic != IHAVEOPT {
            return Err(NegotiateError::BadOptionMagic(magic));
        }
        Ok((
            u32::from_be_bytes(arr(&h[8..12])),
            u32::from_be_bytes(arr(&h[12..16])),
        ))
    }

    /// Handles one option whose payload is `data`, appending replies to `out`.
    pub fn handle(
        &mut self,
        opt: u32,
        data: &[u8],
        exports: &dyn Exports,
        out: &mut Vec<u8>,
    ) -> Step {
        match opt {
            OPT_EXPORT_NAME => match std::str::from_utf8(data).map(|n| (n, exports.open(n))) {
                Ok((_, Ok(export))) => {
                    out.extend_from_slice(&export.size().to_be_bytes());
                    out.extend_from_slice(&self.flags(export.as_ref()).to_be_bytes());
                    if !self.no_zeroes {
                        out.extend_from_slice(&[0u8; 124]);
                    }
                    Step::Transmit(export)
                }
                // NBD_OPT_EXPORT_NAME has no way to say no: the spec says close. The
                // server's log is the only place that says why.
                Ok((name, Err(e))) => {
                    refused(opt, name, &e);
                    Step::Close
                }
                Err(_) => {
                    tracing::warn!("export name is not UTF-8; closing");
                    Step::Close
                }
            },
            OPT_ABORT => {
                reply(out, opt, REP_ACK, &[]);
                Step::Close
            }
            OPT_LIST => {
                if !data.is_empty() {
                    error(out, opt, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
                    return Step::Continue;
                }
                for (name, description) in exports.list() {
                    let mut d = Vec::with_capacity(4 + name.len() + description.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name.as_bytes());
                    d.extend_from_slice(description.as_bytes());
                    reply(out, opt, REP_SERVER, &d);
                }
                reply(out, opt, REP_ACK, &[]);
                Step::Continue
            }
            OPT_INFO | OPT_GO => self.info_or_go(opt, data, exports, out),
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    error(
                        out,
                        opt,
                        REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    );
                } else {
                    self.structured = true;
                    reply(out, opt, REP_ACK, &[]);
                }
                Step::Continue
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                self.meta_context(opt, data, exports, out);
                Step::Continue
            }
            OPT_STARTTLS => {
                error(
                    out,
                    opt,
                    REP_ERR_UNSUP,
                    "TLS is not supported; rewind listens on loopback and unix sockets",
                );
                Step::Continue
            }
            _ => {
                error(out, opt, REP_ERR_UNSUP, "option not supported");
                Step::Continue
            }
        }
    }

    fn info_or_go(
        &mut self,
        opt: u32,
        data: &[u8],
        exports: &dyn Exports,
        out: &mut Vec<u8>,
    ) -> Step {
        let mut r = Cursor(data);
        let parsed = (|| {
            let name = r.string()?;
            let n = r.u16()?;
            let mut infos = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                infos.push(r.u16()?);
            }
            r.end()?;
            Some((name, infos))
        })();
        let Some((name, infos)) = parsed else {
            error(
                out,
                opt,
                REP_ERR_INVALID,
                "malformed NBD_OPT_INFO/GO request",
            );
            return Step::Continue;
        };
        let export = match exports.open(name) {
            Ok(e) => e,
            Err(e) => {
                refused(opt, name, &e);
                error(out, opt, e.option_reply(), &e.to_string());
                return Step::Continue;
            }
        };
        let mut d = Vec::with_capacity(12);
        d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        d.extend_from_slice(&export.size().to_be_bytes());
        d.extend_from_slice(&self.flags(export.as_ref()).to_be_bytes());
        reply(out, opt, REP_INFO, &d);
        // Each info is sent once, however often it is asked for (NBD_INFO_EXPORT is
        // always sent, above). Known types are below 16.
        let mut sent: u16 = 1 << INFO_EXPORT;
        for info in infos {
            if info < 16 && sent & (1 << info) != 0 {
                continue;
            }
            let mut d = info.to_be_bytes().to_vec();
            match info {
                INFO_NAME => d.extend_from_slice(export.name().as_bytes()),
                INFO_DESCRIPTION => d.extend_from_slice(export.description().as_bytes()),
                INFO_BLOCK_SIZE => {
                    // Any alignment works (unaligned writes are read-modify-written); the
                    // vault's block size is what we prefer.
                    d.extend_from_slice(&1u32.to_be_bytes());
                    d.extend_from_slice(&export.block_size().to_be_bytes());
                    d.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
                }
                _ => continue,
            }
            sent |= 1 << info;
            reply(out, opt, REP_INFO, &d);
        }
        reply(out, opt, REP_ACK, &[]);
        if opt == OPT_GO {
            Step::Transmit(export)
        } else {
            Step::Continue
        }
    }

    /// The transmission flags for `e` on this connection: NBD_FLAG_SEND_DF "MUST" be set
    /// when READ supports NBD_CMD_FLAG_DF (it does once structured replies are on: every
    /// READ is answered with one chunk) and left clear otherwise.
    fn flags(&self, e: &dyn Export) -> u16 {
        let mut f = transmission_flags(e);
        if self.structured {
            f |= TFLAG_SEND_DF;
        }
        f
    }

    fn meta_context(&mut self, opt: u32, data: &[u8], exports: &dyn Exports, out: &mut Vec<u8>) {
        if opt == OPT_SET_META_CONTEXT {
            // "Issuing this command replaces all previously-set metadata contexts
            // (including when this command fails)."
            self.base_allocation = false;
        }
        if opt == OPT_SET_META_CONTEXT && !self.structured {
            error(
                out,
                opt,
                REP_ERR_INVALID,
                "negotiate structured replies first",
            );
            return;
        }
        let mut r = Cursor(data);
        let parsed = (|| {
            let name = r.long_string()?;
            let n = r.u32()?;
            let mut queries = Vec::new();
            for _ in 0..n {
                queries.push(r.long_string()?);
            }
            r.end()?;
            Some((name, queries))
        })();
        let Some((name, queries)) = parsed else {
            error(out, opt, REP_ERR_INVALID, "malformed meta context request");
            return;
        };
        if let Err(e) = exports.open(name) {
            refused(opt, name, &e);
            error(out, opt, e.option_reply(), &e.to_string());
            return;
        }
        let wanted = if opt == OPT_LIST_META_CONTEXT {
            queries.is_empty()
                || queries
                    .iter()
                    .any(|q| *q == "base:" || *q == BASE_ALLOCATION)
        } else {
            queries.contains(&BASE_ALLOCATION)
        };
        if opt == OPT_SET_META_CONTEXT {
            self.base_allocation = wanted;
        }
        if wanted {
            // In replies to LIST the id "is reserved and SHOULD be set to zero".
            let id = if opt == OPT_SET_META_CONTEXT {
                BASE_ALLOCATION_ID
            } else {
                0
            };
            let mut d = id.to_be_bytes().to_vec();
            d.extend_from_slice(BASE_ALLOCATION.as_bytes());
            reply(out, opt, REP_META_CONTEXT, &d);
        }
        reply(out, opt, REP_ACK, &[]);
    }
}

/// Answers an option of a connection the server will not serve (it is at its connection
/// limit): NBD_REP_ERR_POLICY ("the server denies the request by policy") with `why` as
/// its text, which clients print (qemu: "server reported: ..."). NBD_OPT_EXPORT_NAME has no
/// way to say no: the connection closes, as the spec says; NBD_OPT_ABORT is acknowledged.
pub fn refuse(opt: u32, why: &str, out: &mut Vec<u8>) -> Step {
    match opt {
        OPT_EXPORT_NAME => {
            tracing::info!(reason = why, "connection refused");
            Step::Close
        }
        OPT_ABORT => {
            reply(out, opt, REP_ACK, &[]);
            Step::Close
        }
        _ => {
            if opt == OPT_GO {
                tracing::info!(reason = why, "connection refused");
            }
            error(out, opt, REP_ERR_POLICY, why);
            Step::Continue
        }
    }
}

/// Logs why an export was refused: as a warning when the client meant to use it (GO,
/// EXPORT_NAME; clients ask INFO and META_CONTEXT about it first, which is only debug).
/// libnbd's tools (nbdinfo, nbdcopy, nbdfuse) print only the errno the reply code stands
/// for, and the reason with LIBNBD_DEBUG=1; the server's log says it too.
fn refused(opt: u32, name: &str, e: &ExportError) {
    if opt == OPT_GO || opt == OPT_EXPORT_NAME {
        tracing::warn!(export = name, reason = %e, "export refused");
    } else {
        tracing::debug!(export = name, option = opt, reason = %e, "export refused");
    }
}

/// The transmission flags an export is advertised with: only what is true.
pub fn transmission_flags(e: &dyn Export) -> u16 {
    let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_CACHE | TFLAG_CAN_MULTI_CONN;
    if e.read_only() {
        f |= TFLAG_READ_ONLY;
    } else {
        f |= TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
    }
    f
}

fn reply(out: &mut Vec<u8>, opt: u32, typ: u32, data: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&typ.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// An error reply; the message is for humans (nbdinfo prints it).
pub(crate) fn error(out: &mut Vec<u8>, opt: u32, typ: u32, msg: &str) {
    reply(out, opt, typ, msg.as_bytes());
}

fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&s[..N]);
    a
}

/// Reads big-endian fields from an option payload; `None` when it runs short.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes(arr(s)))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|s| u32::from_be_bytes(arr(s)))
    }
    /// A u32-length-prefixed string of at most 4096 bytes.
    fn string(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        if n > MAX_STRING {
            return None;
        }
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn long_string(&mut self) -> Option<&'a str> {
        self.string()
    }
    fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}
