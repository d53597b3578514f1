//! The transmission phase: request headers in, replies out. Pure functions over bytes.

use crate::proto::*;

/// Length of a request header.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const CHUNK_LEN: usize = 20;
/// Length of the header in front of READ data in a structured OFFSET_DATA chunk.
pub const OFFSET_DATA_LEN: usize = CHUNK_LEN + 8;

/// A request header as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// A request the export can carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write { fua: bool },
    Disc,
    Flush,
    Trim { fua: bool },
    Cache,
    WriteZeroes { fua: bool, no_hole: bool },
    BlockStatus { req_one: bool },
}

/// The stream is not NBD requests any more: the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad request magic {0:#010x}")]
pub struct BadMagic(pub u32);

/// Decodes a request header.
pub fn parse_request(h: &[u8; REQUEST_LEN]) -> Result<Request, BadMagic> {
    let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    if magic != REQUEST_MAGIC {
        return Err(BadMagic(magic));
    }
    let mut c = [0u8; 8];
    c.copy_from_slice(&h[8..16]);
    let mut o = [0u8; 8];
    o.copy_from_slice(&h[16..24]);
    Ok(Request {
        flags: u16::from_be_bytes([h[4], h[5]]),
        kind: u16::from_be_bytes([h[6], h[7]]),
        cookie: u64::from_be_bytes(c),
        offset: u64::from_be_bytes(o),
        length: u32::from_be_bytes([h[24], h[25], h[26], h[27]]),
    })
}

/// What the connection agreed on, as far as requests care.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub size: u64,
    pub read_only: bool,
    pub structured: bool,
    pub base_allocation: bool,
}

/// Why a request is refused: the error the spec asks for, and what was wrong, for the
/// error reply's text (`EINVAL: the request runs past the end of the export`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{errno}: {why}")]
pub struct Refusal {
    pub errno: Errno,
    pub why: &'static str,
}

fn refuse(errno: Errno, why: &'static str) -> Refusal {
    Refusal { errno, why }
}

/// Checks a request against the spec and the export: the command to run, or the error
/// the spec asks for (the connection goes on).
pub fn validate(r: &Request, l: &Limits) -> Result<Command, Refusal> {
    use Errno::*;
    // FUA "is valid for all commands, provided NBD_FLAG_SEND_FUA has been negotiated,
    // in which case the server MUST accept all commands with this bit set" (proto.md,
    // command flags); we advertise SEND_FUA exactly on writable exports.
    let fua_ok = if l.read_only { 0 } else { CMD_FLAG_FUA };
    let allowed = match r.kind {
        CMD_READ => {
            if l.structured {
                fua_ok | CMD_FLAG_DF
            } else {
                fua_ok
            }
        }
        CMD_WRITE | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        CMD_BLOCK_STATUS => fua_ok | CMD_FLAG_REQ_ONE,
        CMD_DISC | CMD_FLUSH | CMD_CACHE => fua_ok,
        _ => return Err(refuse(Inval, "unknown command")),
    };
    if r.flags & !allowed != 0 {
        return Err(refuse(
            Inval,
            "a command flag this command does not take on this connection",
        ));
    }
    let fua = r.flags & CMD_FLAG_FUA != 0;
    let cmd = match r.kind {
        CMD_READ => Command::Read,
        CMD_WRITE => Command::Write { fua },
        CMD_DISC => return Ok(Command::Disc),
        CMD_FLUSH => return Ok(Command::Flush),
        CMD_TRIM => Command::Trim { fua },
        CMD_CACHE => Command::Cache,
        CMD_WRITE_ZEROES => Command::WriteZeroes {
            fua,
            no_hole: r.flags & CMD_FLAG_NO_HOLE != 0,
        },
        _ => Command::BlockStatus {
            req_one: r.flags & CMD_FLAG_REQ_ONE != 0,
        },
    };
    let writes = matches!(
        cmd,
        Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. }
    );
    if writes && l.read_only {
        return Err(refuse(Perm, "the export is read-only"));
    }
    check_lengths(cmd, r, l)?;
    Ok(cmd)
}

/// The checks of a valid command's length and range.
fn check_lengths(cmd: Command, r: &Request, l: &Limits) -> Result<(), Refusal> {
    use Errno::*;
    // A status of nothing cannot be answered: descriptors MUST be nonzero and, with
    // REQ_ONE, no longer than the request (behaviour for length 0 is unspecified).
    if matches!(cmd, Command::BlockStatus { .. }) {
        if !l.base_allocation {
            return Err(refuse(Inval, "no metadata context was negotiated"));
        }
        if r.length == 0 {
            return Err(refuse(Inval, "a block status of length 0"));
        }
    }
    if matches!(cmd, Command::Read | Command::Write { .. }) && r.length > MAX_PAYLOAD {
        // With structured replies (and so DF) a server "is also permitted to reject large
        // read requests up front with NBD_EOVERFLOW, so a client should be prepared to
        // retry with smaller requests"; with simple replies such a request "will fail".
        let errno = if l.structured && cmd == Command::Read {
            Overflow
        } else {
            Inval
        };
        return Err(refuse(
            errno,
            "longer than the maximum payload (NBD_INFO_BLOCK_SIZE)",
        ));
    }
    let end = r.offset.checked_add(u64::from(r.length));
    if end.is_none_or(|e| e > l.size) {
        let errno = match cmd {
            Command::Write { .. } | Command::WriteZeroes { .. } => NoSpc,
            _ => Inval,
        };
        return Err(refuse(errno, "the request runs past the end of the export"));
    }
    Ok(())
}

/// Writes a simple reply header into `out[..16]`.
pub fn simple_reply_header(out: &mut [u8], cookie: u64, error: u32) {
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
}

/// A simple reply without data.
pub fn simple_reply(cookie: u64, error: u32) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    simple_reply_header(&mut b, cookie, error);
    b
}

/// Writes a structured chunk header into `out[..20]`.
pub fn chunk_header(out: &mut [u8], flags: u16, typ: u16, cookie: u64, len: u32) {
    out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&typ.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..20].copy_from_slice(&len.to_be_bytes());
}

/// Writes the OFFSET_DATA chunk header (final chunk) for `data_len` bytes read at `offset`
/// into `out[..28]`; the data follows it.
pub fn offset_data_header(out: &mut [u8], cookie: u64, offset: u64, data_len: usize) {
    chunk_header(
        out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        (8 + data_len) as u32,
    );
    out[20..28].copy_from_slice(&offset.to_be_bytes());
}

/// A final NONE chunk: success with no payload (a structured READ of length 0, which an
/// OFFSET_DATA chunk cannot describe: its *length* "MUST be at least 9").
pub fn none_reply(cookie: u64) -> [u8; CHUNK_LEN] {
    let mut b = [0u8; CHUNK_LEN];
    chunk_header(&mut b, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
    b
}

/// Makes an export's base:allocation extents fit the wire for a request of `len` bytes:
/// no zero-length descriptors; with REQ_ONE exactly one, no longer than the request;
/// without it, none after the one that reaches the request's end (the last may run
/// past it). Empty when nothing usable remains.
pub fn fit_extents(extents: &mut Vec<(u32, u32)>, len: u32, req_one: bool) {
    extents.retain(|(l, _)| *l > 0);
    if req_one {
        extents.truncate(1);
        if let Some(e) = extents.first_mut() {
            e.0 = e.0.min(len);
        }
        extents.retain(|(l, _)| *l > 0);
        return;
    }
    let mut sum = 0u64;
    let keep = extents
        .iter()
        .position(|(l, _)| {
            sum += u64::from(*l);
            sum >= u64::from(len)
        })
        .map_or(extents.len(), |i| i + 1);
    extents.truncate(keep);
}

/// A final ERROR chunk. The message is cut to the spec's longest string, at a character
/// boundary (it "MUST be valid UTF-8").
pub fn structured_error(cookie: u64, error: Errno, msg: &str) -> Vec<u8> {
    let mut cut = msg.len().min(MAX_STRING);
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    let msg = &msg.as_bytes()[..cut];
    let mut b = vec![0u8; CHUNK_LEN];
    chunk_header(
        &mut b,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        (6 + msg.len()) as u32,
    );
    b.extend_from_slice(&(error as u32).to_be_bytes());
    b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    b.extend_from_slice(msg);
    b
}

/// A final BLOCK_STATUS chunk for base:allocation.
pub fn block_status_reply(cookie: u64, extents: &[(u32, u32)]) -> Vec<u8> {
    let len = 4 + 8 * extents.len();
    let mut b = vec![0u8; CHUNK_LEN];
    chunk_header(
        &mut b,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        len as u32,
    );
    b.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for (l, f) in extents {
        b.extend_from_slice(&l.to_be_bytes());
        b.extend_from_slice(&f.to_be_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: u16, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            kind,
            cookie: 7,
            offset,
            length,
        }
    }

    const L: Limits = Limits {
        size: 1 << 20,
        read_only: false,
        structured: true,
        base_allocation: true,
    };

    /// The errno of a refusal (its reason is for humans).
    fn validate(r: &Request, l: &Limits) -> Result<Command, Errno> {
        super::validate(r, l).map_err(|e| e.errno)
    }

    #[test]
    fn errors_follow_the_spec() {
        assert_eq!(
            validate(&req(CMD_WRITE, 0, (1 << 20) - 512, 1024), &L),
            Err(Errno::NoSpc)
        );
        assert_eq!(
            validate(&req(CMD_WRITE_ZEROES, 0, 1 << 20, 1), &L),
            Err(Errno::NoSpc)
        );
        assert_eq!(
            validate(&req(CMD_READ, 0, 1 << 20, 1), &L),
            Err(Errno::Inval)
        );
        assert_eq!(
            validate(&req(CMD_TRIM, 0, u64::MAX, 2), &L),
            Err(Errno::Inval)
        );
        assert_eq!(validate(&req(99, 0, 0, 0), &L), Err(Errno::Inval));
        assert_eq!(
            validate(&req(CMD_READ, CMD_FLAG_NO_HOLE, 0, 1), &L),
            Err(Errno::Inval)
        );
        // FUA is accepted on any command when SEND_FUA is advertised (writable exports).
        assert_eq!(
            validate(&req(CMD_READ, CMD_FLAG_FUA, 0, 1), &L),
            Ok(Command::Read)
        );
        assert_eq!(
            validate(&req(CMD_FLUSH, CMD_FLAG_FUA, 0, 0), &L),
            Ok(Command::Flush)
        );
        let ro = Limits {
            read_only: true,
            ..L
        };
        assert_eq!(
            validate(&req(CMD_READ, CMD_FLAG_FUA, 0, 1), &ro),
            Err(Errno::Inval)
        );
        assert_eq!(
            validate(&req(CMD_BLOCK_STATUS, 0, 0, 0), &L),
            Err(Errno::Inval)
        );
        assert_eq!(
            validate(&req(CMD_READ, 0, 0, MAX_PAYLOAD + 1), &L),
            Err(Errno::Overflow)
        );
        let simple = Limits {
            structured: false,
            ..L
        };
        assert_eq!(
            validate(&req(CMD_READ, 0, 0, MAX_PAYLOAD + 1), &simple),
            Err(Errno::Inval)
        );
        assert_eq!(validate(&req(CMD_WRITE, 0, 0, 512), &ro), Err(Errno::Perm));
        assert_eq!(validate(&req(CMD_TRIM, 0, 0, 512), &ro), Err(Errno::Perm));
        assert_eq!(validate(&req(CMD_READ, 0, 0, 512), &ro), Ok(Command::Read));
        let no_meta = Limits {
            base_allocation: false,
            ..L
        };
        assert_eq!(
            validate(&req(CMD_BLOCK_STATUS, 0, 0, 512), &no_meta),
            Err(Errno::Inval)
        );
        assert_eq!(
            validate(&req(CMD_WRITE, CMD_FLAG_FUA, 0, 512), &L),
            Ok(Command::Write { fua: true })
        );
    }

    #[test]
    fn extents_are_fitted_to_the_request() {
        let mut e = vec![(0, 1), (100, 0), (0, 2), (50, 3), (10, 0)];
        fit_extents(&mut e, 120, false);
        assert_eq!(e, vec![(100, 0), (50, 3)]);
        let mut e = vec![(100, 0), (50, 3)];
        fit_extents(&mut e, 100, false);
        assert_eq!(e, vec![(100, 0)]);
        let mut e = vec![(100, 0), (50, 3)];
        fit_extents(&mut e, 1000, false);
        assert_eq!(e, vec![(100, 0), (50, 3)]);
        let mut e = vec![(0, 2), (4096, 3), (50, 0)];
        fit_extents(&mut e, 512, true);
        assert_eq!(e, vec![(512, 3)]);
        let mut e = vec![(0, 2)];
        fit_extents(&mut e, 512, true);
        assert!(e.is_empty());
    }

    #[test]
    fn a_long_error_message_is_cut_at_a_character_boundary() {
        let msg = "\u{20ac}".repeat(2000); // 3 bytes each: 4096 is not a boundary
        let b = structured_error(9, Errno::Io, &msg);
        let len = usize::from(u16::from_be_bytes([b[24], b[25]]));
        assert!(len <= MAX_STRING);
        assert_eq!(b.len(), CHUNK_LEN + 6 + len);
        let text = std::str::from_utf8(&b[26..]).expect("the message must stay UTF-8");
        assert!(msg.starts_with(text) && text.len() > MAX_STRING - 3);
    }

    proptest::proptest! {
        #[test]
        fn any_header_parses_or_is_refused_without_panic(bytes in proptest::array::uniform28(proptest::num::u8::ANY)) {
            if let Ok(r) = parse_request(&bytes) {
                let _ = super::validate(&r, &L);
            }
        }
    }
}
