//! The protection stamp: which vault protects a primary, kept on the primary itself (an
//! extended attribute, `user.rewind.vault`) so that a second vault, or a copy of the
//! vault, can see it. Written by `rewind init` and `rewind serve` while they hold the
//! primary's lock.
//!
//! ```text
//! offset size field
//!  0     8    magic       "RWNDSTMP"
//!  8     2    version     1
//! 10     2    flags       0 (none defined)
//! 12    16    vault_id    the protecting vault's id (its manifest's)
//! 28     2    path_len    n
//! 30     n    vault_path  the vault directory, absolute (bytes of the path)
//! 30+n   4    crc         crc32c over everything before
//! ```

use crate::codec::{
    check_magic, check_trailing_crc, check_version, push_trailing_crc, Reader, Writer,
};
use crate::DecodeError;

pub const MAGIC: &[u8; 8] = b"RWNDSTMP";
pub const VERSION: u16 = 1;
/// The extended attribute that holds the stamp.
pub const XATTR: &str = "user.rewind.vault";
const WHAT: &str = "protection stamp";
/// Longest vault path a stamp holds (`PATH_MAX`).
pub const MAX_PATH: usize = 4096;

/// Which vault protects a primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub vault_id: [u8; 16],
    /// The vault directory, absolute, as bytes.
    pub vault_path: Vec<u8>,
}

impl Stamp {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(34 + self.vault_path.len());
        let mut w = Writer(&mut out);
        w.bytes(MAGIC);
        w.u16(VERSION);
        w.u16(0);
        w.bytes(&self.vault_id);
        w.short_bytes(&self.vault_path[..self.vault_path.len().min(MAX_PATH)]);
        push_trailing_crc(&mut out);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Stamp, DecodeError> {
        check_magic(buf, MAGIC, WHAT)?;
        let body = check_trailing_crc(buf, WHAT)?;
        let mut r = Reader::new(body, WHAT);
        r.take(8)?;
        check_version(r.u16()?, VERSION, WHAT)?;
        if r.u16()? != 0 {
            return Err(DecodeError::invalid(10, WHAT, "unknown flags"));
        }
        let mut vault_id = [0u8; 16];
        vault_id.copy_from_slice(r.take(16)?);
        let path = r.short_bytes()?;
        if path.is_empty() || path.len() > MAX_PATH || path[0] != b'/' {
            return Err(DecodeError::invalid(28, WHAT, "vault path is not absolute"));
        }
        if r.pos() != body.len() {
            return Err(DecodeError::invalid(r.pos(), WHAT, "bytes after the path"));
        }
        Ok(Stamp {
            vault_id,
            vault_path: path.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stamp {
        Stamp {
            vault_id: *b"0123456789abcdef",
            vault_path: b"/data/vm.vault".to_vec(),
        }
    }

    #[test]
    fn round_trip_flips_and_cuts() {
        let s = sample();
        let buf = s.encode();
        assert_eq!(buf.len(), 30 + 14 + 4);
        assert_eq!(Stamp::decode(&buf), Ok(s));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(Stamp::decode(&bad).is_err(), "flip at {i}");
        }
        for n in 0..buf.len() {
            assert!(Stamp::decode(&buf[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn a_flipped_byte_is_a_checksum_error_and_a_newer_version_unknown() {
        let buf = sample().encode();
        let mut bad = buf.clone();
        bad[20] ^= 1;
        assert!(matches!(
            Stamp::decode(&bad),
            Err(DecodeError::Checksum { offset: 44, .. })
        ));
        let mut newer = buf[..buf.len() - 4].to_vec();
        newer[8] = 2;
        push_trailing_crc(&mut newer);
        assert!(matches!(
            Stamp::decode(&newer),
            Err(DecodeError::UnknownVersion { found: 2, .. })
        ));
    }

    #[test]
    fn a_relative_path_is_refused() {
        let mut s = sample();
        s.vault_path = b"vm.vault".to_vec();
        assert!(matches!(
            Stamp::decode(&s.encode()),
            Err(DecodeError::Invalid { offset: 28, .. })
        ));
    }
}
