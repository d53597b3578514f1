//! Little-endian field helpers shared by the format modules.

use crate::DecodeError;

/// Appends little-endian fields to a byte vector.
pub(crate) struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    /// A u16 length followed by the bytes.
    pub fn short_bytes(&mut self, v: &[u8]) {
        let len = u16::try_from(v.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.bytes(&v[..usize::from(len)]);
    }
}

/// Reads little-endian fields from a slice, tracking the offset for error messages.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated {
                offset: self.pos as u64,
                needed: (self.pos as u64 + n as u64).saturating_sub(self.buf.len() as u64),
                what: self.what,
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.arr::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    pub fn short_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Checks the magic at the start of `buf`.
pub(crate) fn check_magic(buf: &[u8], magic: &[u8], what: &'static str) -> Result<(), DecodeError> {
    if buf.len() < magic.len() {
        return Err(DecodeError::Truncated {
            offset: 0,
            needed: (magic.len() - buf.len()) as u64,
            what,
        });
    }
    if &buf[..magic.len()] != magic {
        return Err(DecodeError::BadMagic { offset: 0, what });
    }
    Ok(())
}

/// Checks a format version: `current` decodes, older known ones need an upgrade.
pub(crate) fn check_version(
    found: u16,
    current: u16,
    what: &'static str,
) -> Result<(), DecodeError> {
    if found == current {
        Ok(())
    } else if found != 0 && found < current {
        Err(DecodeError::UpgradeRequired {
            what,
            found,
            supported: current,
        })
    } else {
        Err(DecodeError::UnknownVersion {
            what,
            found,
            supported: current,
        })
    }
}

/// Verifies a trailing crc32c: the last 4 bytes of `buf` are the crc of everything before.
/// Returns the bytes before the crc.
pub(crate) fn check_trailing_crc<'a>(
    buf: &'a [u8],
    what: &'static str,
) -> Result<&'a [u8], DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Truncated {
            offset: 0,
            needed: 4 - buf.len() as u64,
            what,
        });
    }
    let (body, tail) = buf.split_at(buf.len() - 4);
    let mut a = [0u8; 4];
    a.copy_from_slice(tail);
    let stored = u32::from_le_bytes(a);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(DecodeError::Checksum {
            offset: body.len() as u64,
            what,
            stored,
            computed,
        });
    }
    Ok(body)
}

/// Appends the crc32c of everything in `buf` to it.
pub(crate) fn push_trailing_crc(buf: &mut Vec<u8>) {
    let crc = crc32c::crc32c(buf);
    buf.extend_from_slice(&crc.to_le_bytes());
}
