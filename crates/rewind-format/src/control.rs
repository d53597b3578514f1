//! The control pointer: `<vault>/control`, written by a running `rewind serve`, says where
//! its control socket is. The socket itself lives in a short runtime directory (a unix
//! socket path is limited to 108 bytes, and some file systems a vault may live on cannot
//! hold sockets); clients read this file to find it. Written after the socket is bound
//! (so its presence means "listening", unless the server was killed), removed on a clean
//! stop.
//!
//! ```text
//! offset size field
//!  0     8    magic        "RWNDCTRL"
//!  8     2    version      1
//! 10     2    flags        0 (none defined)
//! 12     4    pid          the server's process id
//! 16     2    path_len     n
//! 18     n    socket_path  absolute path of the control socket (bytes)
//! 18+n   4    crc          crc32c over everything before
//! ```

use crate::codec::{
    check_magic, check_trailing_crc, check_version, push_trailing_crc, Reader, Writer,
};
use crate::DecodeError;

pub const MAGIC: &[u8; 8] = b"RWNDCTRL";
pub const VERSION: u16 = 1;
const WHAT: &str = "control pointer";
/// Longest socket path a unix socket address holds (`sun_path`, with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Where a running server's control socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPointer {
    pub pid: u32,
    /// Absolute path of the socket, as bytes.
    pub socket_path: Vec<u8>,
}

impl ControlPointer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(22 + self.socket_path.len());
        let mut w = Writer(&mut out);
        w.bytes(MAGIC);
        w.u16(VERSION);
        w.u16(0);
        w.u32(self.pid);
        w.short_bytes(&self.socket_path);
        push_trailing_crc(&mut out);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<ControlPointer, DecodeError> {
        check_magic(buf, MAGIC, WHAT)?;
        let body = check_trailing_crc(buf, WHAT)?;
        let mut r = Reader::new(body, WHAT);
        r.take(8)?;
        check_version(r.u16()?, VERSION, WHAT)?;
        if r.u16()? != 0 {
            return Err(DecodeError::invalid(10, WHAT, "unknown flags"));
        }
        let pid = r.u32()?;
        let path = r.short_bytes()?;
        if path.first() != Some(&b'/') || path.len() > MAX_SOCKET_PATH {
            return Err(DecodeError::invalid(
                16,
                WHAT,
                "socket path is not absolute or too long",
            ));
        }
        if r.pos() != body.len() {
            return Err(DecodeError::invalid(r.pos(), WHAT, "bytes after the path"));
        }
        Ok(ControlPointer {
            pid,
            socket_path: path.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControlPointer {
        ControlPointer {
            pid: 4242,
            socket_path: b"/run/user/1000/rewind/0123456789abcdef-0011223344556677.sock".to_vec(),
        }
    }

    #[test]
    fn round_trip_flips_and_cuts() {
        let p = sample();
        let buf = p.encode();
        assert_eq!(ControlPointer::decode(&buf), Ok(p));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            assert!(ControlPointer::decode(&bad).is_err(), "flip at {i}");
        }
        for n in 0..buf.len() {
            assert!(ControlPointer::decode(&buf[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn typed_errors() {
        let buf = sample().encode();
        let mut bad = buf.clone();
        bad[13] ^= 1;
        assert!(matches!(
            ControlPointer::decode(&bad),
            Err(DecodeError::Checksum { .. })
        ));
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(matches!(
            ControlPointer::decode(&bad),
            Err(DecodeError::BadMagic { offset: 0, .. })
        ));
        let mut rel = sample();
        rel.socket_path = b"control.sock".to_vec();
        assert!(matches!(
            ControlPointer::decode(&rel.encode()),
            Err(DecodeError::Invalid { offset: 16, .. })
        ));
    }
}
