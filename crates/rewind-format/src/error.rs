use std::fmt;

/// Why a byte slice did not decode. Offsets are relative to the start of the slice that was
/// handed to the decoder; the caller knows the file and the slice's place in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end before the structure does.
    #[error("truncated at byte {offset}: {what} needs {needed} more bytes")]
    Truncated {
        offset: u64,
        needed: u64,
        what: &'static str,
    },
    /// The magic number is not the one this structure starts with.
    #[error("bad magic at byte {offset}: not a {what}")]
    BadMagic { offset: u64, what: &'static str },
    /// An older format version this build can read only after an upgrade.
    #[error("{what} format version {found} needs an upgrade (this build reads {supported})")]
    UpgradeRequired {
        what: &'static str,
        found: u16,
        supported: u16,
    },
    /// A newer or unknown format version.
    #[error("{what} format version {found} is unknown (this build reads {supported})")]
    UnknownVersion {
        what: &'static str,
        found: u16,
        supported: u16,
    },
    /// The stored checksum does not match the bytes.
    #[error("checksum mismatch in {what} at byte {offset} (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        offset: u64,
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    /// A field holds a value that cannot be right.
    #[error("invalid {what} at byte {offset}: {detail}")]
    Invalid {
        offset: u64,
        what: &'static str,
        detail: Detail,
    },
}

/// A short, allocation-free explanation carried by [`DecodeError::Invalid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail(pub &'static str);

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl DecodeError {
    /// The byte offset the error points at, relative to the decoded slice.
    pub fn offset(&self) -> u64 {
        match self {
            DecodeError::Truncated { offset, .. }
            | DecodeError::BadMagic { offset, .. }
            | DecodeError::Checksum { offset, .. }
            | DecodeError::Invalid { offset, .. } => *offset,
            DecodeError::UpgradeRequired { .. } | DecodeError::UnknownVersion { .. } => 0,
        }
    }

    /// The same error with its offset moved by `base` (when the slice started at `base`).
    pub fn shifted(self, base: u64) -> Self {
        match self {
            DecodeError::Truncated {
                offset,
                needed,
                what,
            } => DecodeError::Truncated {
                offset: offset + base,
                needed,
                what,
            },
            DecodeError::BadMagic { offset, what } => DecodeError::BadMagic {
                offset: offset + base,
                what,
            },
            DecodeError::Checksum {
                offset,
                what,
                stored,
                computed,
            } => DecodeError::Checksum {
                offset: offset + base,
                what,
                stored,
                computed,
            },
            DecodeError::Invalid {
                offset,
                what,
                detail,
            } => DecodeError::Invalid {
                offset: offset + base,
                what,
                detail,
            },
            other => other,
        }
    }

    pub(crate) fn invalid(offset: usize, what: &'static str, detail: &'static str) -> Self {
        DecodeError::Invalid {
            offset: offset as u64,
            what,
            detail: Detail(detail),
        }
    }

    pub(crate) fn invalid_at(offset: u64, what: &'static str, detail: &'static str) -> Self {
        DecodeError::Invalid {
            offset,
            what,
            detail: Detail(detail),
        }
    }
}
