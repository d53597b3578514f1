//! What sync writes into a vault: fix-up records (read like writes at every point, through
//! recovery, sealing and every codec), the fix-up flag on the intervals holding them, and
//! suspect marks (persisted in the manifest, refused when they name nothing).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use rewind_format::delta_map::{FLAG_FIXUP, FLAG_SUSPECT};
use rewind_vault::{
    Compression, Point, Seq, SuspectMark, Vault, VaultError, SUSPECT_DIFFERS, SUSPECT_UNREADABLE,
};
use roaring::RoaringTreemap;

const BS: u32 = 4096;

fn set(b: &[u64]) -> RoaringTreemap {
    b.iter().copied().collect()
}

#[test]
fn fix_ups_read_like_writes_at_every_point_through_recovery_and_every_codec() {
    for compression in [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd { level: 3 },
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (vault, mut model) = create(tmp.path(), BS, 96, 7, compression, no_auto_seal());
        let what = format!("{compression:?}");
        let d = data(1, BS as usize, 40);
        let (a, b) = vault.fix_up(3, &d).unwrap();
        assert_eq!(model.write(3, &d), b.0);
        assert_eq!(
            (a, b),
            (Seq(1), Seq(2)),
            "40 blocks: two records of at most 128 KiB"
        );
        let w = data(2, BS as usize, 2);
        vault.write(10, &w).unwrap();
        model.write(10, &w);
        let d = data(3, BS as usize, 1);
        vault.fix_up(11, &d).unwrap();
        model.write(11, &d);
        vault.flush().unwrap();
        check_everything(&vault, &model, &format!("{what}, open interval"));
        // Recovery rebuilds the present delta map from the open segment's fix-ups.
        drop(vault);
        let vault = Vault::open(&tmp.path().join("vault")).unwrap();
        check_everything(&vault, &model, &format!("{what}, recovered"));
        assert_eq!(vault.seal_now().unwrap(), Seq(model.newest()));
        vault.snapshot("s", false).unwrap();
        model.marker("s");
        let d = data(4, BS as usize, 3);
        vault.fix_up(90, &d).unwrap();
        model.write(90, &d);
        check_everything(&vault, &model, &format!("{what}, sealed"));
        // An in-place restore copies blocks fix-ups changed, like any write's.
        let runs = vault.changed_since(Seq(model.newest() - 1)).unwrap();
        assert_eq!(runs, vec![(90, 3)]);
    }
}

#[test]
fn fix_ups_are_refused_when_unaligned_out_of_range_or_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, _) = create(tmp.path(), BS, 8, 1, Compression::None, no_auto_seal());
    assert!(matches!(
        vault.fix_up(0, &[1u8; 100]),
        Err(VaultError::Unaligned { .. })
    ));
    assert!(matches!(
        vault.fix_up(7, &[1u8; 2 * BS as usize]),
        Err(VaultError::OutOfRange { .. })
    ));
    drop(vault);
    let ro = Vault::open_read_only(&tmp.path().join("vault")).unwrap();
    assert!(matches!(
        ro.fix_up(0, &[1u8; BS as usize]),
        Err(VaultError::ReadOnly)
    ));
    assert!(matches!(ro.seal_now(), Err(VaultError::ReadOnly)));
}

#[test]
fn the_intervals_holding_fix_ups_and_only_those_are_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, _) = create(tmp.path(), BS, 64, 2, Compression::None, no_auto_seal());
    let d = data(5, BS as usize, 1);
    vault.write(1, &d).unwrap(); // 1
    vault.seal_now().unwrap(); // 1-1: host only
    let r1 = vault.fix_up(2, &d).unwrap(); // 2
    vault.write(3, &d).unwrap(); // 3
    vault.snapshot("mid-copy", false).unwrap(); // 4, seals 2-4
    vault.write(4, &d).unwrap(); // 5
    vault.seal_now().unwrap(); // 5-5: host only, between the fix-ups
    let r2 = vault.fix_up(5, &d).unwrap(); // 6
                                           // Still open: refused.
    assert!(matches!(
        vault.flag_fix_ups(&[r1, r2]),
        Err(VaultError::NotSealed { seq: Seq(6) })
    ));
    vault.seal_now().unwrap(); // 6-6
    let flagged = vault.flag_fix_ups(&[r1, r2]).unwrap();
    let got: Vec<(u64, u64)> = flagged.iter().map(|i| (i.seq_from.0, i.seq_to.0)).collect();
    assert_eq!(got, vec![(2, 4), (6, 6)]);
    let flags: Vec<(u64, u16)> = vault
        .intervals()
        .iter()
        .map(|i| (i.seq_from.0, i.flags))
        .collect();
    assert_eq!(
        flags,
        vec![(1, 0), (2, FLAG_FIXUP), (5, 0), (6, FLAG_FIXUP)]
    );
    // In the manifest: a reopen (read-only) sees the same.
    drop(vault);
    let ro = Vault::open_read_only(&tmp.path().join("vault")).unwrap();
    let again: Vec<u16> = ro.chain().iter().map(|e| e.flags).collect();
    assert_eq!(again, vec![0, FLAG_FIXUP, 0, FLAG_FIXUP]);
}

#[test]
fn suspect_marks_persist_merge_and_are_refused_when_they_name_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vault");
    let (vault, _) = create(tmp.path(), BS, 64, 3, Compression::None, no_auto_seal());
    let d = data(6, BS as usize, 2);
    vault.write(10, &d).unwrap(); // 1
    vault.seal_now().unwrap(); // 1-1
    vault.write(20, &d).unwrap(); // 2
    vault.seal_now().unwrap(); // 2-2
    vault.write(30, &d).unwrap(); // 3, open
    let mark = |iv: Option<(u64, u64)>, b: &[u64], reasons| SuspectMark {
        interval: iv.map(|(a, b)| (Seq(a), Seq(b))),
        blocks: set(b),
        reasons,
    };
    assert!(matches!(
        vault.mark_suspect(&[mark(Some((1, 1)), &[10], SUSPECT_DIFFERS)], Seq(3)),
        Err(VaultError::NotSealed { seq: Seq(3) })
    ));
    assert!(matches!(
        vault.mark_suspect(&[mark(Some((1, 2)), &[10], SUSPECT_DIFFERS)], Seq(2)),
        Err(VaultError::UnknownInterval { .. })
    ));
    assert!(matches!(
        vault.mark_suspect(&[mark(None, &[64], SUSPECT_DIFFERS)], Seq(2)),
        Err(VaultError::OutOfRange { .. })
    ));
    vault
        .mark_suspect(
            &[
                mark(Some((2, 2)), &[21], SUSPECT_DIFFERS),
                mark(None, &[5], SUSPECT_UNREADABLE),
            ],
            Seq(2),
        )
        .unwrap();
    // A later sync adds to the same map.
    vault
        .mark_suspect(&[mark(Some((2, 2)), &[20], SUSPECT_UNREADABLE)], Seq(2))
        .unwrap();
    let check = |v: &Vault| {
        let s = v.suspects();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].interval, Some((Seq(2), Seq(2))));
        assert_eq!(s[0].blocks, set(&[20, 21]));
        assert_eq!(s[0].reasons, SUSPECT_DIFFERS | SUSPECT_UNREADABLE);
        assert_eq!(s[1].interval, None);
        let flags: Vec<u16> = v.chain().iter().map(|e| e.flags).collect();
        assert_eq!(flags[..2], [0, FLAG_SUSPECT]);
        assert!(flags[2..].iter().all(|f| *f == 0));
        // The newest point reads 20, 21 from the suspect map and 5 from the base.
        let view = v.view(&Point::Latest).unwrap();
        type Read = (Option<(Seq, Seq)>, Vec<u64>);
        let reads: Vec<Read> = v
            .suspect_reads(&view)
            .unwrap()
            .into_iter()
            .map(|r| (r.interval, r.blocks.iter().collect()))
            .collect();
        assert_eq!(
            reads,
            vec![(Some((Seq(2), Seq(2))), vec![20, 21]), (None, vec![5])]
        );
        // Seq 1 is before the suspect map: only the base block.
        let view = v.view(&Point::Seq(Seq(1))).unwrap();
        assert_eq!(v.suspect_reads(&view).unwrap().len(), 1);
    };
    check(&vault);
    // Sealing carries the marks into the next manifest; a reopen reads them back.
    vault.seal_now().unwrap();
    drop(vault);
    let vault = Vault::open(&dir).unwrap();
    check(&vault);
    // A damaged manifest with marks is named, not passed over.
    drop(vault);
    let m = current_manifest(&dir);
    let len = std::fs::metadata(&m).unwrap().len();
    flip(&m, len - 10, 0x10);
    // A reader reads the previous generation and names the damage; a writer refuses.
    let reader = Vault::open_read_only(&dir).unwrap();
    assert_eq!(reader.damage()[0].path, m);
    match Vault::open(&dir).unwrap_err() {
        rewind_vault::VaultError::ManifestDamaged { source, .. } => {
            assert_eq!(corrupted_at(&source).0, m.as_path())
        }
        e => panic!("a writer opened past a damaged manifest: {e}"),
    }
}
