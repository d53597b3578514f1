//! rewind's on-disk formats.
//!
//! Every structure the vault stores lives in one module here, with its byte layout at the
//! top of the file. This crate does no I/O: it encodes into and decodes from byte slices.
//! Every structure carries a magic, a `u16` format version, explicit little-endian fields
//! and a crc32c over header and payload. Decoders never panic: bad bytes come back as a
//! [`DecodeError`] naming the byte offset (relative to the slice; the vault adds the file).

pub mod base_sums;
mod codec;
pub mod compress;
pub mod control;
pub mod crc;
pub mod delta_map;
pub mod drl;
mod error;
pub mod extents;
mod ids;
pub mod intent;
pub mod manifest;
pub mod names;
pub mod record;
pub mod segment;
pub mod stamp;

pub use error::DecodeError;
pub use ids::{Generation, SegmentId, Seq};

/// Smallest block size a vault may use.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size a vault may use.
pub const MAX_BLOCK_SIZE: u32 = 65536;
/// Block size used when none is asked for.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

/// Whether `bs` is a valid vault block size: a power of two in 512..=65536.
pub fn valid_block_size(bs: u32) -> bool {
    bs.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs)
}
