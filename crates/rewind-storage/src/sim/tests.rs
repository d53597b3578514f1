#![allow(clippy::unwrap_used)]

use super::*;
use crate::{Open, Storage};

fn setup() -> SimStorage {
    let s = SimStorage::new();
    s.create_dir(Path::new("/v")).unwrap();
    s
}

fn read(s: &SimStorage, p: &str) -> Option<Vec<u8>> {
    s.open(Path::new(p), Open::read())
        .ok()
        .map(|f| f.read_all().unwrap())
}

#[test]
fn a_write_survives_a_cut_only_once_synced() {
    let s = setup();
    let f = s.open(Path::new("/v/a"), Open::create_new()).unwrap();
    s.sync_dir(Path::new("/v")).unwrap();
    f.write_all_at(b"hello", 0).unwrap();
    assert_eq!(read(&s.power_cut(Cut::DurableOnly), "/v/a").unwrap(), b"");
    assert_eq!(
        read(&s.power_cut(Cut::Everything), "/v/a").unwrap(),
        b"hello"
    );
    f.sync_data().unwrap();
    assert_eq!(
        read(&s.power_cut(Cut::DurableOnly), "/v/a").unwrap(),
        b"hello"
    );
    f.write_all_at(b"J", 0).unwrap();
    assert_eq!(
        read(&s.power_cut(Cut::DurableOnly), "/v/a").unwrap(),
        b"hello"
    );
    assert_eq!(read(&s, "/v/a").unwrap(), b"Jello");
}

#[test]
fn entries_survive_a_cut_only_once_the_directory_is_synced() {
    let s = setup();
    let f = s.open(Path::new("/v/a"), Open::create_new()).unwrap();
    f.write_all_at(b"x", 0).unwrap();
    f.sync_all().unwrap();
    assert!(
        read(&s.power_cut(Cut::DurableOnly), "/v/a").is_none(),
        "create undone"
    );
    s.sync_dir(Path::new("/v")).unwrap();
    assert_eq!(read(&s.power_cut(Cut::DurableOnly), "/v/a").unwrap(), b"x");
    s.rename(Path::new("/v/a"), Path::new("/v/b")).unwrap();
    let cut = s.power_cut(Cut::DurableOnly);
    assert!(
        read(&cut, "/v/a").is_some() && read(&cut, "/v/b").is_none(),
        "rename undone"
    );
    s.sync_dir(Path::new("/v")).unwrap();
    let cut = s.power_cut(Cut::DurableOnly);
    assert!(read(&cut, "/v/a").is_none() && read(&cut, "/v/b").is_some());
    s.remove(Path::new("/v/b")).unwrap();
    assert!(
        read(&s.power_cut(Cut::DurableOnly), "/v/b").is_some(),
        "remove undone"
    );
    assert!(read(&s.power_cut(Cut::Everything), "/v/b").is_none());
}

#[test]
fn random_cuts_keep_each_sector_old_or_new_and_entries_in_order() {
    let s = setup();
    let f = s.open(Path::new("/v/a"), Open::create_new()).unwrap();
    s.sync_dir(Path::new("/v")).unwrap();
    f.write_all_at(&[1u8; 8 * SECTOR], 0).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(&[2u8; 8 * SECTOR], 0).unwrap();
    for name in ["/v/t1", "/v/t2", "/v/t3"] {
        s.open(Path::new(name), Open::create_new()).unwrap();
    }
    let (mut saw_old, mut saw_new) = (false, false);
    for seed in 0..64 {
        let cut = s.power_cut(Cut::Random(seed));
        let got = read(&cut, "/v/a").unwrap();
        assert_eq!(got.len(), 8 * SECTOR);
        for sector in got.chunks(SECTOR) {
            assert!(sector.iter().all(|&b| b == sector[0]), "a sector is whole");
            assert!(sector[0] == 1 || sector[0] == 2);
            saw_old |= sector[0] == 1;
            saw_new |= sector[0] == 2;
        }
        // Creates are kept as a prefix: t3 only with t2, t2 only with t1.
        let have: Vec<bool> = ["/v/t1", "/v/t2", "/v/t3"]
            .iter()
            .map(|p| read(&cut, p).is_some())
            .collect();
        assert!(have.windows(2).all(|w| w[0] || !w[1]), "{have:?}");
    }
    assert!(saw_old && saw_new);
}

#[test]
fn an_append_not_synced_is_cut_at_either_size() {
    let s = setup();
    let f = s.open(Path::new("/v/a"), Open::create_new()).unwrap();
    s.sync_dir(Path::new("/v")).unwrap();
    f.write_all_at(&[7u8; 1000], 0).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(&[8u8; 3000], 1000).unwrap();
    let lens: BTreeSet<usize> = (0..32)
        .map(|seed| read(&s.power_cut(Cut::Random(seed)), "/v/a").unwrap().len())
        .collect();
    assert_eq!(lens, [1000usize, 4000].into_iter().collect());
}

#[test]
fn faults_fail_the_nth_operation_and_a_failed_sync_loses_the_unsynced_data() {
    let s = setup();
    let f = s.open(Path::new("/v/a"), Open::create_new()).unwrap();
    s.sync_dir(Path::new("/v")).unwrap();
    f.write_all_at(b"aaaa", 0).unwrap();
    f.sync_data().unwrap();
    s.set_faults(FaultPlan::new(vec![
        Fault::once(OpKind::Write, 2, FaultKind::Enospc),
        Fault::once(OpKind::Sync, 1, FaultKind::Eio),
    ]));
    f.write_all_at(b"b", 0).unwrap();
    let e = f.write_all_at(b"c", 1).unwrap_err();
    assert!(crate::is_no_space(&e));
    f.write_all_at(b"d", 2).unwrap();
    assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
    assert_eq!(
        read(&s, "/v/a").unwrap(),
        b"aaaa",
        "the unsynced writes are gone"
    );
    f.write_all_at(b"e", 3).unwrap();
    f.sync_data().unwrap();
    assert_eq!(
        read(&s.power_cut(Cut::DurableOnly), "/v/a").unwrap(),
        b"aaae"
    );
    s.set_faults(FaultPlan::new(vec![Fault::from_then_on(
        OpKind::Rename,
        1,
        FaultKind::Eio,
    )
    .on_paths("manifest")]));
    s.rename(Path::new("/v/a"), Path::new("/v/b")).unwrap();
    assert!(s
        .rename(Path::new("/v/b"), Path::new("/v/manifest"))
        .is_err());
    assert!(s
        .rename(Path::new("/v/b"), Path::new("/v/manifest"))
        .is_err());
}

#[test]
fn an_armed_cut_takes_the_state_and_fails_everything_after() {
    let s = setup();
    let f = s.open(Path::new("/v/a"), Open::create_new()).unwrap();
    s.sync_dir(Path::new("/v")).unwrap();
    f.write_all_at(b"1", 0).unwrap();
    f.sync_data().unwrap();
    s.cut_after(2, Cut::DurableOnly);
    f.write_all_at(b"2", 0).unwrap();
    assert!(f.sync_data().is_err(), "the machine is gone");
    assert!(f.write_all_at(b"3", 0).is_err());
    let after = s.after_cut().unwrap();
    assert_eq!(read(&after, "/v/a").unwrap(), b"1");
    // The new machine works.
    let g = after.open(Path::new("/v/a"), Open::write()).unwrap();
    g.write_all_at(b"4", 0).unwrap();
    g.sync_data().unwrap();
}

#[test]
fn locks_are_exclusive_until_the_handle_goes() {
    let s = setup();
    let a = s
        .open(Path::new("/v/LOCK"), Open::create_truncate())
        .unwrap();
    let b = s.open(Path::new("/v/LOCK"), Open::write()).unwrap();
    assert!(a.try_lock().unwrap());
    assert!(!b.try_lock().unwrap());
    drop(a);
    assert!(b.try_lock().unwrap());
}

#[test]
fn an_exact_path_fault_counts_only_that_file_and_everywhere_spreads_once_hit() {
    let s = setup();
    let a = s.open(Path::new("/v/a"), Open::create_new()).unwrap();
    let ab = s.open(Path::new("/v/ab"), Open::create_new()).unwrap();
    s.set_tracing(true);
    s.set_faults(FaultPlan::new(vec![Fault::from_then_on(
        OpKind::Write,
        2,
        FaultKind::Enospc,
    )
    .on_path(Path::new("/v/a"))
    .everywhere()]));
    a.write_all_at(b"1", 0).unwrap();
    // "/v/ab" contains "/v/a" but is not it: not counted.
    ab.write_all_at(b"1", 0).unwrap();
    ab.write_all_at(b"2", 0).unwrap();
    assert_eq!(s.fault_hits(), 0);
    let e = a.write_all_at(b"2", 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    // Hit once: now every write fails, on any path; other kinds go on.
    assert!(ab.write_all_at(b"3", 0).is_err());
    ab.sync_data().unwrap();
    assert_eq!(s.fault_hits(), 2);
    let kinds: Vec<OpKind> = s.trace().iter().map(|t| t.0).collect();
    assert_eq!(
        kinds,
        [
            OpKind::Write,
            OpKind::Write,
            OpKind::Write,
            OpKind::Write,
            OpKind::Write,
            OpKind::Sync
        ]
    );
    assert_eq!(s.trace()[1].1, Path::new("/v/ab"));
}
