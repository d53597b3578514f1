//! Extents of point views on large, sparse volumes: a base image that is one hole, a
//! whole-volume trim under a few writes (sealed and in the open interval), and a hole of the
//! base image that its checksums do not call zero (data to read, which then fails).

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use rewind_vault::{
    BlockSource, Compression, CreateOptions, Extent, ExtentKind, NoProgress, Point, SealPolicy,
    Seq, Vault, VaultError,
};

const BS: u32 = 4096;

fn sparse_vault(dir: &Path, blocks: u64) -> Vault {
    let primary = dir.join("primary.img");
    std::fs::File::create(&primary)
        .unwrap()
        .set_len(blocks * u64::from(BS))
        .unwrap();
    Vault::create(
        &CreateOptions {
            primary,
            vault: dir.join("vault"),
            block_size: BS,
            compression: Compression::None,
            seal: common::no_auto_seal(),
        },
        &NoProgress,
    )
    .unwrap()
}

fn ext(first_block: u64, count: u64, kind: ExtentKind) -> Extent {
    Extent {
        first_block,
        count,
        kind,
    }
}

/// Checks extents against the per-block answer over the whole volume.
fn agrees_with_sources(vault: &Vault, point: &Point) {
    let view = vault.view(point).unwrap();
    let sources = view.sources(0, view.blocks()).unwrap();
    let mut at = 0;
    for e in view.extents(0, view.blocks()).unwrap() {
        assert_eq!(e.first_block, at);
        for b in e.first_block..e.end() {
            assert_eq!(e.kind.source(), sources[b as usize], "{point}: block {b}");
        }
        at = e.end();
    }
    assert_eq!(at, view.blocks());
}

#[test]
fn an_empty_sparse_volume_is_one_base_hole() {
    let tmp = tempfile::tempdir().unwrap();
    let blocks = 1 << 18; // 1 GiB
    let vault = sparse_vault(tmp.path(), blocks);
    let view = vault.view(&Point::Seq(Seq(0))).unwrap();
    assert_eq!(
        view.extents(0, blocks).unwrap(),
        vec![ext(0, blocks, ExtentKind::BaseHole)]
    );
    assert_eq!(
        view.extents_upto(100, blocks - 100, 1).unwrap(),
        vec![ext(100, blocks - 100, ExtentKind::BaseHole)]
    );
    assert!(view.reads_as_zero(0, blocks).unwrap());
    assert_eq!(vault.base_blocks_read(), 0, "nothing was read to know it");
}

#[test]
fn a_whole_volume_trim_under_a_few_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let blocks = 1 << 18;
    let vault = sparse_vault(tmp.path(), blocks);
    let data = vec![0xabu8; 16 * BS as usize];
    vault.write(1000, &data).unwrap();
    vault.seal().unwrap();
    vault.trim(0, blocks).unwrap();
    vault.write(10, &data).unwrap();
    vault.write(blocks - 16, &data).unwrap();
    let sealed = vault.snapshot("after", false).unwrap().seq;
    vault.write(5000, &data[..BS as usize]).unwrap();
    vault.zero(5000, 1).unwrap();
    vault.write(5001, &data[..BS as usize]).unwrap();
    let open = vault.info().newest_seq;
    let want_sealed = vec![
        ext(0, 10, ExtentKind::Zero),
        ext(10, 16, ExtentKind::Record),
        ext(26, blocks - 42, ExtentKind::Zero),
        ext(blocks - 16, 16, ExtentKind::Record),
    ];
    let view = vault.view(&Point::Seq(sealed)).unwrap();
    assert_eq!(view.extents(0, blocks).unwrap(), want_sealed);
    assert_eq!(
        view.extents_upto(0, blocks, 2).unwrap(),
        want_sealed[..2].to_vec()
    );
    assert_eq!(
        view.extents_upto(26, blocks - 26, 1).unwrap(),
        vec![ext(26, blocks - 42, ExtentKind::Zero)]
    );
    let view = vault.view(&Point::Seq(open)).unwrap();
    assert_eq!(
        view.extents(4990, 20).unwrap(),
        vec![
            ext(4990, 11, ExtentKind::Zero),
            ext(5001, 1, ExtentKind::Record),
            ext(5002, 8, ExtentKind::Zero),
        ]
    );
    // Before the trim: the first write over the base image's hole.
    let view = vault.view(&Point::Seq(Seq(1))).unwrap();
    assert_eq!(
        view.extents(0, blocks).unwrap(),
        vec![
            ext(0, 1000, ExtentKind::BaseHole),
            ext(1000, 16, ExtentKind::Record),
            ext(1016, blocks - 1016, ExtentKind::BaseHole),
        ]
    );
    for p in [Point::Seq(sealed), Point::Seq(open), Point::Seq(Seq(1))] {
        agrees_with_sources(&vault, &p);
    }
    drop(vault);
    let vault = Vault::open_read_only(&tmp.path().join("vault")).unwrap();
    let view = vault.view(&"after".parse().unwrap()).unwrap();
    assert_eq!(view.extents(0, blocks).unwrap(), want_sealed);
}

/// A block in a hole of base.img whose checksum is not the zero block's is data to read
/// (and the read fails its checksum), never a hole that would hide the damage.
#[test]
fn a_hole_the_checksums_disagree_with_is_read_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let blocks = 64u64;
    let primary = tmp.path().join("primary.img");
    let f = std::fs::File::create(&primary).unwrap();
    f.set_len(blocks * u64::from(BS)).unwrap();
    f.write_all_at(&[7u8; BS as usize], 5 * u64::from(BS))
        .unwrap();
    drop(f);
    let dir = tmp.path().join("vault");
    let vault = Vault::create(
        &CreateOptions {
            primary,
            vault: dir.clone(),
            block_size: BS,
            compression: Compression::None,
            seal: SealPolicy::default(),
        },
        &NoProgress,
    )
    .unwrap();
    let view = vault.view(&Point::Seq(Seq(0))).unwrap();
    assert_eq!(
        view.extents(0, blocks).unwrap(),
        vec![
            ext(0, 5, ExtentKind::BaseHole),
            ext(5, 1, ExtentKind::Base),
            ext(6, blocks - 6, ExtentKind::BaseHole),
        ]
    );
    drop(view);
    vault.close().unwrap();
    // The base image loses block 5's data behind rewind's back: a hole now.
    let img = dir.join("base/base.img");
    let fresh = dir.join("base/base.img.new");
    std::fs::File::create(&fresh)
        .unwrap()
        .set_len(blocks * u64::from(BS))
        .unwrap();
    std::fs::rename(&fresh, &img).unwrap();
    let vault = Vault::open_read_only(&dir).unwrap();
    let view = vault.view(&Point::Seq(Seq(0))).unwrap();
    assert_eq!(
        view.extents(0, blocks).unwrap(),
        vec![
            ext(0, 5, ExtentKind::BaseHole),
            ext(5, 1, ExtentKind::Base),
            ext(6, blocks - 6, ExtentKind::BaseHole),
        ]
    );
    assert_eq!(view.sources(5, 1).unwrap(), vec![BlockSource::Base]);
    assert!(!view.reads_as_zero(0, blocks).unwrap());
    assert!(matches!(
        view.read(0, blocks),
        Err(VaultError::Corrupted { .. })
    ));
}

/// A trim and a write-zeroes of a whole large volume are one extent each: in the present
/// map, in the sealed delta map (a file of bytes, not of blocks) and in the views; the
/// seal and the reads take milliseconds. Per-block maps made 24 bytes and a tree node per
/// block of it: 400 MB and seconds at 64 GiB.
#[test]
fn a_whole_volume_trim_costs_bytes_of_map() {
    let tmp = tempfile::tempdir().unwrap();
    let blocks = 1u64 << 24; // 64 GiB of 4 KiB blocks
    let vault = sparse_vault(tmp.path(), blocks);
    let data = vec![0x5au8; 8 * BS as usize];
    let started = std::time::Instant::now();
    vault.write(100, &data).unwrap();
    vault.trim(0, blocks).unwrap();
    vault.write(blocks / 2, &data).unwrap();
    vault.zero(0, blocks / 4).unwrap();
    let sealed = vault.seal().unwrap().unwrap();
    let took = started.elapsed();
    assert_eq!(sealed.blocks_changed, blocks);
    let map = tmp
        .path()
        .join("vault/maps")
        .join(rewind_format::names::delta_map(
            sealed.seq_from,
            sealed.seq_to,
        ));
    let len = std::fs::metadata(&map).unwrap().len();
    eprintln!("whole-volume trim of {blocks} blocks: map {len} bytes, appends + seal {took:?}");
    assert!(len < 1024, "the delta map is {len} bytes");
    assert!(took.as_secs_f64() < 2.0, "appends and seal took {took:?}");
    // Read back through the map, sealed and reopened.
    drop(vault);
    let vault = Vault::open_read_only(&tmp.path().join("vault")).unwrap();
    let started = std::time::Instant::now();
    let view = vault.view(&Point::Seq(sealed.seq_to)).unwrap();
    assert_eq!(
        view.extents(0, blocks).unwrap(),
        vec![
            ext(0, blocks / 2, ExtentKind::Zero),
            ext(blocks / 2, 8, ExtentKind::Record),
            ext(blocks / 2 + 8, blocks / 2 - 8, ExtentKind::Zero),
        ]
    );
    assert!(view.reads_as_zero(0, blocks / 2).unwrap());
    assert_eq!(view.read(blocks / 2, 8).unwrap(), data);
    assert_eq!(view.read(100, 1).unwrap(), vec![0u8; BS as usize]);
    let took = started.elapsed();
    assert!(took.as_secs_f64() < 1.0, "view and reads took {took:?}");
}
