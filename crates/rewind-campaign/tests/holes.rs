//! Known holes of the durability and recovery logic, each closed and proven on the crash
//! and fault backends (each test fails without its fix).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use rewind_campaign::workload::Layout;
use rewind_engine::intercept::LiveVolume;
use rewind_engine::recovery;
use rewind_engine::verify::{self, Target, VerifyOptions};
use rewind_storage::{Cut, Fault, FaultKind, FaultPlan, OpKind, SimStorage, Storage};
use rewind_vault::{Compression, CreateOptions, NoProgress, Point, SealPolicy, Vault};

const BS: usize = 4096;
const BLOCKS: usize = 256;

fn create() -> (SimStorage, Layout) {
    let fs = SimStorage::new();
    let layout = Layout::default();
    fs.create_dir(Path::new("/c")).unwrap();
    fs.put(&layout.primary, &vec![0u8; BLOCKS * BS]).unwrap();
    let opts = CreateOptions {
        primary: layout.primary.clone(),
        vault: layout.vault.clone(),
        block_size: BS as u32,
        compression: Compression::None,
        seal: SealPolicy::default(),
    };
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    Vault::create_on(storage, &opts, &NoProgress)
        .unwrap()
        .close()
        .unwrap();
    (fs, layout)
}

fn open(fs: &SimStorage, layout: &Layout) -> LiveVolume {
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let vault = Vault::open_on(storage, &layout.vault, "test").unwrap();
    LiveVolume::open(&layout.primary, Arc::new(vault)).unwrap()
}

fn recover(fs: &SimStorage, layout: &Layout) -> LiveVolume {
    let v = open(fs, layout);
    recovery::recover(&v, &NoProgress, None, &mut |_, _| {}).unwrap();
    v
}

fn live(v: &LiveVolume) -> Vec<u8> {
    let mut buf = vec![0u8; v.size() as usize];
    v.read(0, &mut buf).unwrap();
    buf
}

fn newest(v: &LiveVolume) -> Vec<u8> {
    v.vault().read_at(&Point::Latest, 0, BLOCKS as u64).unwrap()
}

fn clean(v: &LiveVolume) {
    let r = verify::verify(Target::Live(v), &VerifyOptions::default(), &NoProgress).unwrap();
    assert!(
        r.compare.is_empty(),
        "primary and vault differ: {:?}",
        r.compare
    );
}

/// Linux reports a writeback error once, may drop the pages it could not write, and the
/// next fsync then succeeds: the checkpoint must not move past what the primary lost.
#[test]
fn a_failed_sync_of_the_primary_never_lets_the_checkpoint_pass_it() {
    let (fs, layout) = create();
    let v = open(&fs, &layout);
    let mut want = vec![0u8; BLOCKS * BS];
    for b in 0..32usize {
        let data = vec![b as u8 + 1; BS];
        v.write((b * 3 * BS) as u64, &data, false).unwrap();
        want[b * 3 * BS..(b * 3 + 1) * BS].copy_from_slice(&data);
    }
    v.flush().unwrap();
    fs.set_faults(FaultPlan::new(vec![Fault::once(
        OpKind::Sync,
        1,
        FaultKind::Eio,
    )
    .on_paths("primary.img")]));
    // The first try meets the error (and may report it); the next one succeeds.
    let _ = v.checkpoint();
    v.write(250 * BS as u64, &[7u8; BS], false).unwrap();
    want[250 * BS..251 * BS].fill(7);
    v.checkpoint().unwrap();
    assert!(
        live(&v) == want,
        "the host reads what the failed sync dropped"
    );
    // A crash of the machine now: the checkpoint says the primary has everything.
    let cut = fs.power_cut(Cut::DurableOnly);
    drop(v);
    let v = recover(&cut, &layout);
    assert!(
        live(&v) == want,
        "the primary lost writes the checkpoint said it had"
    );
    assert!(newest(&v) == want);
    v.stop().unwrap();
}

/// A write to the primary that failed part way may have changed it: the region stays
/// dirty, a clean stop included, until a repair compares it.
#[test]
fn a_region_whose_write_failed_stays_dirty_across_a_clean_stop() {
    let (fs, layout) = create();
    let v = open(&fs, &layout);
    v.write(0, &[1u8; 2 * BS], false).unwrap();
    v.flush().unwrap();
    fs.set_faults(FaultPlan::new(vec![Fault::once(
        OpKind::Write,
        1,
        FaultKind::Eio,
    )
    .torn()
    .on_paths("primary.img")]));
    assert!(
        v.write(0, &[2u8; 2 * BS], false).is_err(),
        "the write fails"
    );
    fs.set_faults(FaultPlan::default());
    v.stop().unwrap();
    drop(v);
    let v = recover(&fs, &layout);
    assert!(
        live(&v) == newest(&v),
        "the half-written block was never compared: primary and vault differ"
    );
    clean(&v);
    v.stop().unwrap();
}

/// After a crash of the machine, the primary may lack flushed writes (synced only by
/// checkpoints); the dirty region log says so, but it can be lost: missing, zeroed,
/// damaged. The manifest's serving fact still says the machine crashed, so recovery brings
/// the primary up to date from the log and compares everything, instead of trusting a
/// stale primary (which a sync would then copy over the flushed writes).
#[test]
fn a_lost_dirty_region_log_after_a_machine_crash_never_lets_a_stale_primary_win() {
    for damage in ["missing", "zeroed", "damaged"] {
        let (fs, layout) = create();
        let v = open(&fs, &layout);
        v.checkpoint().unwrap();
        let mut want = vec![0u8; BLOCKS * BS];
        for b in 0..40usize {
            let data = vec![b as u8 + 1; BS];
            v.write((b * 5 * BS) as u64, &data, false).unwrap();
            want[b * 5 * BS..(b * 5 + 1) * BS].copy_from_slice(&data);
        }
        v.flush().unwrap();
        let cut = fs.power_cut(Cut::DurableOnly);
        drop(v);
        let drl = layout.vault.join("drl");
        match damage {
            "missing" => cut.remove(&drl).unwrap(),
            "zeroed" => {
                let len = cut.stat(&drl).unwrap().len as usize;
                cut.put(&drl, &vec![0u8; len]).unwrap();
            }
            _ => {
                let mut bytes = cut.contents(&drl).unwrap();
                for b in bytes.iter_mut().take(64) {
                    *b ^= 0x55;
                }
                cut.put(&drl, &bytes).unwrap();
            }
        }
        let v = recover(&cut, &layout);
        assert!(
            live(&v) == want,
            "{damage} log: the primary lost flushed writes"
        );
        assert!(
            newest(&v) == want,
            "{damage} log: the vault's newest point lost them"
        );
        clean(&v);
        assert!(v.vault().suspects().is_empty());
        v.stop().unwrap();
    }
}

/// A snapshot's seal syncs the log; when that sync fails it may have dropped the marker
/// (and Linux's next sync says all is well): the snapshot must not be acknowledged, and
/// after the restart a retry with the same name works and is kept.
#[test]
fn a_snapshot_whose_sync_failed_is_not_acknowledged_and_its_retry_works() {
    let (fs, layout) = create();
    let v = open(&fs, &layout);
    v.write(0, &[1u8; 4 * BS], false).unwrap();
    v.flush().unwrap();
    v.write(8 * BS as u64, &[2u8; BS], false).unwrap();
    v.flush().unwrap();
    fs.set_faults(FaultPlan::new(vec![Fault::once(
        OpKind::Sync,
        1,
        FaultKind::Eio,
    )
    .on_paths("log/seg-")]));
    let acked = v.vault().snapshot("before", false).is_ok();
    fs.set_faults(FaultPlan::default());
    // The machine goes on from what was synced.
    let cut = fs.power_cut(Cut::DurableOnly);
    drop(v);
    let v = recover(&cut, &layout);
    let kept = v.vault().snapshots().iter().any(|s| s.name == "before");
    assert!(
        !acked || kept,
        "the snapshot was acknowledged and is gone after the restart"
    );
    // Whatever survived, the same name can be taken again now.
    v.vault().snapshot("before", false).unwrap();
    let want = live(&v);
    let cut2 = cut.power_cut(Cut::DurableOnly);
    drop(v);
    let v = recover(&cut2, &layout);
    let got = v
        .vault()
        .read_at(&"before".parse().unwrap(), 0, BLOCKS as u64)
        .unwrap();
    assert!(got == want, "the retried snapshot reads back wrong");
    v.stop().unwrap();
}

/// A snapshot whose marker was appended and whose seal and sync then failed (the log's
/// file system full) leaves the marker in the log: a retry with the same name, once space
/// is back, is that snapshot, not "already exists"; and the host's writes go on.
#[test]
fn a_snapshot_that_failed_after_its_marker_was_appended_can_be_retried() {
    let (fs, layout) = create();
    let v = open(&fs, &layout);
    v.write(0, &[1u8; 2 * BS], false).unwrap();
    v.flush().unwrap();
    fs.set_faults(FaultPlan::new(vec![Fault::from_then_on(
        OpKind::Write,
        1,
        FaultKind::Enospc,
    )
    .on_paths("log/seg-")]));
    let first = v.vault().snapshot("full", false);
    assert!(
        first.as_ref().is_err_and(|e| e.is_no_space()),
        "the snapshot cannot be made durable: {first:?}"
    );
    fs.set_faults(FaultPlan::default());
    // The log writer tries the refused write again by itself (or when poked).
    let mut retry = v.vault().snapshot("full", false);
    for _ in 0..200 {
        match &retry {
            Err(e) if e.is_no_space() => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                retry = v.vault().snapshot("full", false);
            }
            _ => break,
        }
    }
    let s = retry.expect("the retried snapshot works");
    assert_eq!(
        v.vault()
            .snapshots()
            .iter()
            .filter(|x| x.name == "full")
            .count(),
        1
    );
    v.write(4 * BS as u64, &[3u8; BS], false).unwrap();
    v.flush().unwrap();
    let cut = fs.power_cut(Cut::DurableOnly);
    drop(v);
    let v = recover(&cut, &layout);
    let got = v
        .vault()
        .read_at(&Point::Seq(s.seq), 0, BLOCKS as u64)
        .unwrap();
    let mut want = vec![0u8; BLOCKS * BS];
    want[..2 * BS].fill(1);
    assert!(got == want, "the snapshot reads back wrong");
    assert!(v.vault().snapshots().iter().any(|x| x.name == "full"));
    v.stop().unwrap();
}

/// A torn tail: the header of the last record was lost with its sector, the rest of it
/// kept. The torn-tail check looks past a bad record for a valid one that says the bad one
/// was durable (then it is damage, not a tear); a guest's data holding a record-shaped copy
/// (its crc computed as the format says) must not be taken for one: the open fails with
/// "corrupt" and the restart needs a manual step, or worse, the fake is believed. Each
/// record's crc is bound to its vault, segment and offset, which a payload cannot fake.
#[test]
fn record_shaped_bytes_in_a_guest_payload_never_fool_the_torn_tail_check() {
    use rewind_format::compress::StoredAs;
    use rewind_format::record::{self, NewRecord, RecordKind};
    let (fs, layout) = create();
    let v = open(&fs, &layout);
    v.write(0, &[1u8; BS], false).unwrap();
    v.flush().unwrap();
    let pos = v.vault().log_position();
    let (tail, next_seq) = (pos.durable_bytes, v.vault().newest_seq().0 + 1);
    // The guest writes, as data, a zero record of the whole volume that claims the write
    // carrying it was durable.
    let fake = NewRecord {
        kind: RecordKind::Zero,
        seq: rewind_vault::Seq(next_seq + 1),
        timestamp_ns: 1,
        first_block: 0,
        block_count: BLOCKS as u32,
        durable_seq: rewind_vault::Seq(next_seq),
        app_consistent: false,
        continues: false,
    };
    let mut payload = vec![7u8; 2 * BS];
    let mut rec = Vec::new();
    record::encode(&mut rec, &fake, &[], 0, StoredAs::Raw, None);
    payload[1024..1024 + rec.len()].copy_from_slice(&rec);
    v.write(8 * BS as u64, &payload, false).unwrap();
    v.vault().write_out().unwrap();
    // Until the log writer has put it in the file.
    let want_len = tail + (record::HEADER_LEN + 2 * BS) as u64;
    for _ in 0..1000 {
        if fs.contents(&pos.segment).unwrap().len() as u64 >= want_len {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let cut = fs.power_cut(Cut::Everything);
    drop(v);
    // The power cut lost the sector holding the record's header: what was there when the
    // segment was last synced (the flushed tail, then zeroes) is back.
    let mut seg = cut.contents(&pos.segment).unwrap();
    let sector_end = (tail as usize / 512 + 1) * 512;
    seg[tail as usize..sector_end].fill(0);
    cut.put(&pos.segment, &seg).unwrap();
    let v = recover(&cut, &layout);
    let mut want = vec![0u8; BLOCKS * BS];
    want[..BS].fill(1);
    want[8 * BS..10 * BS].copy_from_slice(&payload);
    assert!(live(&v) == want, "the primary lost the write");
    assert!(
        newest(&v) == want,
        "the vault took the guest's bytes for a record"
    );
    clean(&v);
    v.stop().unwrap();
}

/// A snapshot whose seal failed lives in the open interval, durable in the log. When the
/// log writer then cannot write (a dead device), reading it must not wait for the writer:
/// every record it needs is in the file already.
#[test]
fn a_snapshot_in_the_open_interval_reads_on_while_the_log_writer_cannot_write() {
    // The seal fails making the delta map, or making the next segment (after its sync).
    for (op, path) in [(OpKind::Create, "maps/"), (OpKind::Create, "log/seg-")] {
        let (fs, layout) = create();
        let v = open(&fs, &layout);
        v.write(0, &[1u8; 3 * BS], false).unwrap();
        v.flush().unwrap();
        fs.set_faults(FaultPlan::new(vec![
            Fault::once(op, 1, FaultKind::Enospc).on_paths(path)
        ]));
        let s = v.vault().snapshot("kept", false).unwrap();
        fs.set_faults(FaultPlan::new(vec![Fault::from_then_on(
            OpKind::Write,
            1,
            FaultKind::Eio,
        )
        .on_paths("log/seg-")]));
        v.write(8 * BS as u64, &[2u8; BS], false).unwrap();
        let _ = v.vault().write_out();
        let _ = v.flush();
        let got = v
            .vault()
            .read_at(&Point::Seq(s.seq), 0, BLOCKS as u64)
            .unwrap_or_else(|e| panic!("{path}: reading the snapshot failed: {e}"));
        let mut want = vec![0u8; BLOCKS * BS];
        want[..3 * BS].fill(1);
        assert!(got == want, "{path}: the snapshot reads back wrong");
    }
}

/// A write-zeroes whose primary zeroing failed after its unaligned head was written: the
/// host reads the head zeroed; a snapshot taken next must show that, not the blocks as
/// they were before the failed write.
#[test]
fn a_snapshot_after_a_write_that_failed_part_way_shows_what_the_host_reads() {
    let (fs, layout) = create();
    let v = open(&fs, &layout);
    v.write(0, &[5u8; 8 * BS], false).unwrap();
    v.flush().unwrap();
    fs.set_faults(FaultPlan::new(vec![Fault::once(
        OpKind::Zero,
        1,
        FaultKind::Eio,
    )
    .on_paths("primary.img")]));
    assert!(v.zero(100, 4 * BS as u64, false, false, false).is_err());
    fs.set_faults(FaultPlan::default());
    let host = live(&v);
    v.flush().unwrap();
    let s = v.vault().snapshot("after", false).unwrap();
    let got = v
        .vault()
        .read_at(&Point::Seq(s.seq), 0, BLOCKS as u64)
        .unwrap();
    assert!(
        got == host,
        "the snapshot shows blocks the host does not read"
    );
    v.stop().unwrap();
}

/// The primary's sync fails, and the rewrite of what it may have dropped fails to sync
/// too: the host must still read what it wrote (the pages are written once more).
#[test]
fn a_primary_sync_that_fails_twice_never_leaves_the_host_reading_old_data() {
    let (fs, layout) = create();
    let v = open(&fs, &layout);
    v.write(0, &[1u8; 2 * BS], false).unwrap();
    v.flush().unwrap();
    v.checkpoint().unwrap();
    v.write(0, &[2u8; 2 * BS], false).unwrap();
    v.flush().unwrap();
    fs.set_faults(FaultPlan::new(vec![Fault::from_then_on(
        OpKind::Sync,
        1,
        FaultKind::Eio,
    )
    .on_paths("primary.img")]));
    assert!(v.checkpoint().is_err());
    let mut want = vec![0u8; BLOCKS * BS];
    want[..2 * BS].fill(2);
    assert!(
        live(&v) == want,
        "the host reads what the failed syncs dropped"
    );
    fs.set_faults(FaultPlan::default());
    v.checkpoint().unwrap();
    v.stop().unwrap();
}

/// A sync of the write log that fails for lack of space (delayed allocation, a thin
/// volume) poisons the vault as any failed sync does, but the host is told ENOSPC, not
/// EIO: its disk is full, not broken (found by the fault campaign).
#[test]
fn a_log_sync_that_fails_for_lack_of_space_is_enospc_to_the_host() {
    let (fs, layout) = create();
    let v = open(&fs, &layout);
    v.write(0, &[5u8; 2 * BS], false).unwrap();
    fs.set_faults(FaultPlan::new(vec![Fault::from_then_on(
        OpKind::Sync,
        1,
        FaultKind::Enospc,
    )
    .on_paths("/log/")]));
    let first = v.flush().unwrap_err();
    assert!(first.is_no_space(), "{first}");
    fs.set_faults(FaultPlan::default());
    // Refused until reopened: still a full disk to the host, not a dead one.
    let then = v.write(8 * BS as u64, &[6u8; BS], false).unwrap_err();
    assert!(then.is_no_space(), "the refusal after it is EIO: {then}");
    drop(v);
    let v = recover(&fs, &layout);
    assert!(live(&v) == newest(&v));
    clean(&v);
    v.stop().unwrap();
}

/// A deferred write (the primary written behind the log) whose log write then fails: its
/// data was kept until durable, so the host still reads it, the primary gets it, and the
/// restart compares instead of bringing back a log that lost it.
#[test]
fn a_deferred_write_stays_readable_when_the_log_fails_under_it() {
    let (fs, layout) = create();
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let vault = Vault::open_on(storage, &layout.vault, "test").unwrap();
    let opts = rewind_engine::intercept::LiveOptions {
        write_behind_min: Some(4 * BS),
        ..rewind_engine::intercept::LiveOptions::default()
    };
    let v = LiveVolume::open_with(&layout.primary, Arc::new(vault), opts).unwrap();
    let mut want = live(&v);
    v.write(0, &[1u8; BS], false).unwrap();
    want[..BS].fill(1);
    v.flush().unwrap();
    // Deferred, buffered in the log, not flushed.
    v.write(64 * BS as u64, &[2u8; 8 * BS], false).unwrap();
    want[64 * BS..72 * BS].fill(2);
    assert!(v.behind_kept_bytes() > 0);
    fs.set_faults(FaultPlan::new(vec![Fault::from_then_on(
        OpKind::Write,
        1,
        FaultKind::Eio,
    )
    .on_paths("log")]));
    assert!(v.flush().is_err(), "the log write fails");
    assert!(live(&v) == want, "the host reads what it wrote");
    assert_eq!(v.behind_stats(), (0, 0), "written into the primary");
    fs.set_faults(FaultPlan::default());
    drop(v);
    // The same boot: no redo from the log that lost it; the primary keeps it.
    let v = recover(&fs, &layout);
    assert!(live(&v) == want, "the restart kept what the host read");
    assert!(newest(&v) == want, "and the vault has it again");
    v.stop().unwrap();
}
