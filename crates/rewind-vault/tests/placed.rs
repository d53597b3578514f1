//! Records read back by their place (what writes the primary behind the log relies on):
//! in the append buffer, in the file, in a sealed interval, with every codec; a damaged
//! record is named, never returned.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use rewind_vault::{Compression, SealPolicy, VaultError};

const BS: u32 = 4096;

#[test]
fn a_record_reads_back_by_its_place_wherever_it_is() {
    for compression in [Compression::None, Compression::Lz4] {
        let tmp = tempfile::tempdir().unwrap();
        let seal = SealPolicy {
            bytes: 0,
            interval_ns: 0,
            writes: 0,
        };
        let (vault, _) = create(tmp.path(), BS, 256, 3, compression, seal);
        // 64 blocks: several records of one host write.
        let data = data(11, BS as usize, 64);
        let (_, places) = vault.write_placed(10, &data).unwrap();
        assert!(places.len() > 1, "{places:?}");
        assert_eq!(places[0].first_block, 10);
        assert_eq!(places.last().unwrap().end_block(), 74);
        let check = |what: &str| {
            for p in &places {
                let mut out = vec![0u8; (p.block_count as usize) * BS as usize];
                vault.read_placed(p, p.first_block, &mut out).unwrap();
                let at = ((p.first_block - 10) * u64::from(BS)) as usize;
                assert!(
                    out == data[at..at + out.len()],
                    "{what}: record at block {}",
                    p.first_block
                );
            }
            // One block from the middle of a record.
            let p = &places[0];
            let mut one = vec![0u8; BS as usize];
            vault.read_placed(p, p.first_block + 1, &mut one).unwrap();
            assert!(
                one == data[BS as usize..2 * BS as usize],
                "{what}: one block"
            );
        };
        // Still in the append buffer: handed to the log writer first.
        check("buffered");
        vault.flush().unwrap();
        check("in the file");
        vault.seal_now().unwrap();
        check("sealed");
        // Outside the record: refused.
        let mut out = vec![0u8; BS as usize];
        let p = &places[0];
        assert!(matches!(
            vault.read_placed(p, p.end_block(), &mut out),
            Err(VaultError::OutOfRange { .. })
        ));
    }
}

#[test]
fn a_damaged_record_is_named_not_returned() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, _) = create(tmp.path(), BS, 64, 5, Compression::None, no_auto_seal());
    let data = data(21, BS as usize, 8);
    let (_, places) = vault.write_placed(0, &data).unwrap();
    vault.flush().unwrap();
    let p = places[0];
    let seg = tmp
        .path()
        .join("vault/log")
        .join(rewind_format::names::segment(p.segment));
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = (p.offset + u64::from(p.len) - 100) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let mut out = vec![0u8; 8 * BS as usize];
    let err = vault.read_placed(&p, 0, &mut out).unwrap_err();
    assert!(matches!(err, VaultError::Corrupted { .. }), "{err}");
}
