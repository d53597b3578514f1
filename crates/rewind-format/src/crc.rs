//! crc32c arithmetic: the crc of a concatenation from the crcs of its parts.
//!
//! A write record's crc covers its header and payload, and the delta map keeps a crc per
//! block of the payload. Computing both from the bytes would read every written byte twice;
//! instead the block crcs are computed once and the record's crc is derived from them:
//! `crc(A ‖ B) = shift(crc(A), len(B)) ^ crc(B)`, where `shift` multiplies by x^(8·len)
//! modulo the crc32c polynomial (what zlib's `crc32_combine` does). Here the operators for
//! every power-of-two length are computed once, so a shift costs at most one 32×32 GF(2)
//! matrix-vector product per set bit of the length (one for a 4 KiB block), not the
//! O(log len) matrix squarings of a general combine.

use std::sync::OnceLock;

/// The reflected crc32c polynomial.
const POLY: u32 = 0x82F6_3B78;

/// A linear operator on crc values: column `i` is the image of bit `i`.
type Matrix = [u32; 32];

fn times(m: &Matrix, mut v: u32) -> u32 {
    let mut out = 0;
    let mut i = 0;
    while v != 0 {
        if v & 1 != 0 {
            out ^= m[i];
        }
        v >>= 1;
        i += 1;
    }
    out
}

fn square(m: &Matrix) -> Matrix {
    let mut out = [0u32; 32];
    for (o, col) in out.iter_mut().zip(m.iter()) {
        *o = times(m, *col);
    }
    out
}

/// `OPS[k]`: the operator that appends 2^k zero bytes.
fn ops() -> &'static [Matrix; 64] {
    static OPS: OnceLock<[Matrix; 64]> = OnceLock::new();
    OPS.get_or_init(|| {
        // One zero bit: shift right, folding in the polynomial.
        let mut bit = [0u32; 32];
        bit[0] = POLY;
        for (i, col) in bit.iter_mut().enumerate().skip(1) {
            *col = 1 << (i - 1);
        }
        // Eight zero bits: one zero byte.
        let mut byte = bit;
        for _ in 0..3 {
            byte = square(&byte);
        }
        let mut all = [[0u32; 32]; 64];
        all[0] = byte;
        for k in 1..64 {
            all[k] = square(&all[k - 1]);
        }
        all
    })
}

/// `crc(A)` moved past `len` more bytes, so that `shift(crc(A), len(B)) ^ crc(B)` is
/// `crc(A ‖ B)`.
pub fn shift(crc: u32, len: u64) -> u32 {
    let ops = ops();
    let mut c = crc;
    let mut l = len;
    let mut k = 0;
    while l != 0 {
        if l & 1 != 0 {
            c = times(&ops[k], c);
        }
        l >>= 1;
        k += 1;
    }
    c
}

/// `crc(A ‖ B)` from `crc(A)`, `crc(B)` and `len(B)`.
pub fn concat(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    shift(crc_a, len_b) ^ crc_b
}

/// The crc of equal-length parts laid end to end, from the parts' crcs.
pub fn concat_equal(crcs: &[u32], part_len: u64) -> u32 {
    let Some((first, rest)) = crcs.split_first() else {
        return 0;
    };
    match byte_tables(part_len) {
        Some(t) => rest.iter().fold(*first, |acc, c| {
            t[0][(acc & 0xff) as usize]
                ^ t[1][((acc >> 8) & 0xff) as usize]
                ^ t[2][((acc >> 16) & 0xff) as usize]
                ^ t[3][(acc >> 24) as usize]
                ^ c
        }),
        None => rest.iter().fold(*first, |acc, c| shift(acc, part_len) ^ c),
    }
}

/// For a power-of-two length: the shift operator as four 256-entry tables, one per byte
/// of the crc (four look-ups per shift instead of up to 32 column XORs).
type ByteTables = [[u32; 256]; 4];

fn byte_tables(len: u64) -> Option<&'static ByteTables> {
    static TABLES: [OnceLock<Box<ByteTables>>; 64] = [const { OnceLock::new() }; 64];
    if !len.is_power_of_two() {
        return None;
    }
    let k = len.trailing_zeros() as usize;
    Some(TABLES[k].get_or_init(|| {
        let m = &ops()[k];
        let mut t = Box::new([[0u32; 256]; 4]);
        for (j, table) in t.iter_mut().enumerate() {
            for (b, e) in table.iter_mut().enumerate() {
                *e = times(m, (b as u32) << (8 * j));
            }
        }
        t
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn concat_is_the_crc_of_the_concatenation(
            a in proptest::collection::vec(any::<u8>(), 0..300),
            b in proptest::collection::vec(any::<u8>(), 0..5000),
        ) {
            let mut ab = a.clone();
            ab.extend_from_slice(&b);
            prop_assert_eq!(
                concat(crc32c::crc32c(&a), crc32c::crc32c(&b), b.len() as u64),
                crc32c::crc32c(&ab)
            );
        }

        #[test]
        fn concat_equal_matches_one_pass(
            parts in 1usize..12,
            shift_bits in 0u32..8,
            seed in any::<u8>(),
        ) {
            let len = 512usize << shift_bits.min(4);
            let data: Vec<u8> = (0..parts * len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            let crcs: Vec<u32> = data.chunks(len).map(crc32c::crc32c).collect();
            prop_assert_eq!(concat_equal(&crcs, len as u64), crc32c::crc32c(&data));
        }
    }

    #[test]
    fn odd_part_lengths_and_empty() {
        let data: Vec<u8> = (0..3 * 1000).map(|i| i as u8).collect();
        let crcs: Vec<u32> = data.chunks(1000).map(crc32c::crc32c).collect();
        assert_eq!(concat_equal(&crcs, 1000), crc32c::crc32c(&data));
        assert_eq!(concat_equal(&[], 4096), 0);
        assert_eq!(shift(0x1234_5678, 0), 0x1234_5678);
    }
}
