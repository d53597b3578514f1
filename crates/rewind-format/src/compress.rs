//! Per-record payload compression. The vault picks one codec at init; each record says in
//! its flags whether its payload is stored compressed (a payload that does not shrink is
//! stored raw).

use crate::DecodeError;

/// The codec a vault compresses write payloads with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Payloads are stored as written.
    #[default]
    None,
    /// lz4 block format: cheap, modest ratio.
    Lz4,
    /// zstd at the given level: slower, better ratio.
    Zstd { level: i8 },
}

impl Compression {
    /// The byte stored in the manifest.
    pub fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd { .. } => 2,
        }
    }

    /// The manifest's byte and level back to a codec.
    pub fn from_code(code: u8, level: i8) -> Option<Compression> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            2 => Some(Compression::Zstd { level }),
            _ => None,
        }
    }

    /// The zstd level (0 for the others).
    pub fn level(self) -> i8 {
        match self {
            Compression::Zstd { level } => level,
            _ => 0,
        }
    }

    /// Compresses `raw` into `out` (cleared first). Returns false, leaving `out` empty, when
    /// the codec is `None` or the result would not be smaller than `raw`.
    pub fn compress(self, raw: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        match self {
            Compression::None => false,
            Compression::Lz4 => {
                out.resize(lz4_flex::block::get_maximum_output_size(raw.len()), 0);
                match lz4_flex::block::compress_into(raw, out) {
                    Ok(n) if n < raw.len() => {
                        out.truncate(n);
                        true
                    }
                    _ => {
                        out.clear();
                        false
                    }
                }
            }
            Compression::Zstd { level } => match zstd::bulk::compress(raw, i32::from(level)) {
                Ok(v) if v.len() < raw.len() => {
                    *out = v;
                    true
                }
                _ => false,
            },
        }
    }
}

/// Which codec a stored payload is in, from the record's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredAs {
    Raw,
    Lz4,
    Zstd,
}

/// Decompresses a stored payload of known raw length into `out`.
pub fn decompress(
    stored: StoredAs,
    payload: &[u8],
    raw_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    out.clear();
    match stored {
        StoredAs::Raw => {
            out.extend_from_slice(payload);
        }
        StoredAs::Lz4 => {
            out.resize(raw_len, 0);
            let n = lz4_flex::block::decompress_into(payload, out)
                .map_err(|_| DecodeError::invalid(0, "lz4 payload", "does not decompress"))?;
            out.truncate(n);
        }
        StoredAs::Zstd => {
            let v = zstd::bulk::decompress(payload, raw_len)
                .map_err(|_| DecodeError::invalid(0, "zstd payload", "does not decompress"))?;
            *out = v;
        }
    }
    if out.len() != raw_len {
        return Err(DecodeError::invalid(
            0,
            "compressed payload",
            "decompressed length differs from the header",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_codec() {
        let raw: Vec<u8> = (0..8192u32).map(|i| (i / 100) as u8).collect();
        for c in [Compression::Lz4, Compression::Zstd { level: 3 }] {
            let mut out = Vec::new();
            assert!(
                c.compress(&raw, &mut out),
                "{c:?} should shrink a repetitive payload"
            );
            let stored = if c == Compression::Lz4 {
                StoredAs::Lz4
            } else {
                StoredAs::Zstd
            };
            let mut back = Vec::new();
            decompress(stored, &out, raw.len(), &mut back).expect("decompresses");
            assert_eq!(back, raw);
        }
        let mut out = Vec::new();
        assert!(!Compression::None.compress(&raw, &mut out));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        assert!(decompress(StoredAs::Lz4, &[0xff; 17], 4096, &mut out).is_err());
        assert!(decompress(StoredAs::Zstd, &[0xff; 17], 4096, &mut out).is_err());
    }
}
