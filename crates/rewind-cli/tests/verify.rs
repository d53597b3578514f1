//! `rewind verify` and `rewind sync` end to end, against the real binary: offline (no
//! server) and online (inside `rewind serve`, while fio keeps writing). The primary and
//! the vault are damaged behind rewind's back; the reports must name exactly the damage,
//! exit codes must say whether there was any, and after a sync the vault's newest point
//! is the primary again while `rewind list` and `rewind restore` say what is suspect.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn rewind(args: &[&str]) -> Output {
    run_timeout(Command::new(BIN).args(args), CMD_TIMEOUT)
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// Writes different data over `blocks` of the primary, behind rewind's back.
fn damage_primary(vol: &Vol, blocks: &[u64]) {
    let f = OpenOptions::new().write(true).open(&vol.primary).unwrap();
    for &b in blocks {
        let mut data = vec![0u8; BS as usize];
        Rng(b * 7919 + 1).fill(&mut data);
        f.write_all_at(&data, b * BS).unwrap();
    }
    f.sync_all().unwrap();
}

/// The discrepant block numbers a report lists.
fn blocks_of(report: &Value) -> Vec<u64> {
    report["first_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap() / BS)
        .collect()
}

/// The verify and sync reports' common fields are consistent.
fn check_report(r: &Value, want: &[u64]) {
    assert_eq!(blocks_of(r), want, "{r}");
    assert_eq!(r["discrepant_blocks"], want.len() as u64, "{r}");
    assert_eq!(r["clean"], want.is_empty(), "{r}");
    let regions: std::collections::BTreeSet<u64> = want.iter().map(|b| b * BS / 65536).collect();
    assert_eq!(r["discrepant_regions"], regions.len() as u64, "{r}");
    let mut covered = Vec::new();
    for range in r["ranges"].as_array().unwrap() {
        let (o, l) = (
            range["offset"].as_u64().unwrap(),
            range["length"].as_u64().unwrap(),
        );
        assert_eq!(o % 65536, 0, "{r}");
        covered.extend((o / 65536)..(o + l) / 65536);
    }
    assert_eq!(covered, regions.into_iter().collect::<Vec<_>>(), "{r}");
}

fn fio_has_nbd() -> bool {
    let out = run_ok(Command::new("fio").arg("--enghelp"));
    need(
        out.split_whitespace().any(|w| w == "nbd"),
        "fio has no nbd engine (fio --enghelp)",
    )
}

#[test]
fn offline_verify_finds_the_damage_sync_repairs_it_and_history_says_what_is_suspect() {
    if !have(&["qemu-io"]) {
        return;
    }
    let size = 16 * MIB;
    let (vol, _) = Vol::new(size, Some(11));
    let v = vol.v();
    // Some history: a snapshot after a write, so a delta map holds block 100.
    {
        let _server = vol.serve();
        qemu_io(
            &vol.uri("live"),
            &[format!("write -P 0x42 {} 8192", 100 * BS), "flush".into()],
        );
        vol.snapshot("before");
    }
    let clean = rewind(&["verify", "--vault", v]);
    assert!(clean.status.success(), "{clean:?}");
    assert!(String::from_utf8_lossy(&clean.stdout).contains("No discrepancies"));

    // Blocks 5 (base image), 100 (the snapshot's map), 2000 and 2001 (one region), 4095.
    let bad = [5u64, 100, 2000, 2001, 4095];
    damage_primary(&vol, &bad);
    let o = rewind(&["verify", "--vault", v]);
    assert_eq!(o.status.code(), Some(1), "discrepancies exit 1: {o:?}");
    let human = String::from_utf8_lossy(&o.stdout);
    assert!(human.contains("4 discrepant regions"), "{human}");
    assert!(human.contains("rewind sync"), "{human}");
    let o = rewind(&["verify", "--vault", v, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let r = json_of(&o);
    check_report(&r, &bad);
    assert_eq!(r["online"], false);
    assert_eq!(r["bytes_scanned"], size);

    // The vault goes bad too: a byte of the base image (block 7 has data: seed 11).
    let base = vol.vault.join("base/base.img");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&base)
        .unwrap();
    let mut b = [0u8; 1];
    let at = 7 * BS + 9;
    f.read_exact_at(&mut b, at).unwrap();
    if b == [0] {
        // A hole in the base image: the primary's block 7 was zero; damage it anyway.
        b = [1];
    } else {
        b[0] ^= 0xff;
    }
    f.write_all_at(&b, at).unwrap();
    drop(f);
    let r = json_of(&rewind(&["verify", "--vault", v, "--json"]));
    let mut want = bad.to_vec();
    want.insert(1, 7);
    check_report(&r, &want);
    let unreadable = r["vault_unreadable"].as_array().unwrap();
    assert_eq!(unreadable.len(), 1, "{r}");
    assert_eq!(unreadable[0]["block"], 7);
    assert!(
        unreadable[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("vault unreadable: "),
        "{r}"
    );

    // Sync: every discrepant block copied; the sources marked suspect.
    let o = rewind(&["sync", "--vault", v, "--json"]);
    assert!(o.status.success(), "{o:?}");
    let s = json_of(&o);
    check_report(&s, &want);
    assert_eq!(s["fixup"]["blocks"], want.len() as u64, "{s}");
    let suspect = s["suspect"].as_array().unwrap();
    assert_eq!(suspect.len(), 2, "{s}");
    assert_eq!(suspect[0]["first_blocks"], serde_json::json!([100]), "{s}");
    assert_eq!(suspect[1]["base_image"], true, "{s}");
    assert_eq!(
        suspect[1]["first_blocks"],
        serde_json::json!([5, 7, 2000, 2001, 4095])
    );
    // Now clean, and the newest point is the primary.
    let o = rewind(&["verify", "--vault", v]);
    assert!(o.status.success(), "after sync: {o:?}");
    assert_same(
        &vol.restore("now"),
        &vol.read_primary(),
        "newest point after sync",
    );
    // The timeline says which intervals are suspect and which holds the fix-ups.
    let l = vol.list();
    let intervals = l["intervals"].as_array().unwrap();
    let fixups: Vec<&Value> = intervals.iter().filter(|i| i["fixup"] == true).collect();
    assert_eq!(fixups.len(), 1, "{l}");
    assert_eq!(fixups[0]["blocks_changed"], want.len() as u64);
    let suspects: Vec<&Value> = intervals.iter().filter(|i| i["suspect"] == true).collect();
    assert_eq!(suspects.len(), 1, "{l}");
    assert_eq!(suspects[0]["suspect_blocks"]["blocks"], 1);
    assert_eq!(l["base"]["suspect"], true, "{l}");
    assert_eq!(l["base"]["suspect_blocks"]["blocks"], 5);
    let human = rewind_ok(&["list", "--vault", v]);
    assert!(
        human.contains("fix-up") && human.contains("SUSPECT"),
        "{human}"
    );
    // Restoring the snapshot warns which blocks it reads from suspect places (a dry run:
    // the real restore stops at the damaged base block, exit 3, as it must).
    let to = vol.path("before.img");
    let args = [
        "restore",
        "--vault",
        v,
        "--at",
        "before",
        "--to",
        to.to_str().unwrap(),
    ];
    let o = rewind(&args);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let o = rewind(&[&args[..], &["--json", "--dry-run"]].concat());
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning: point before reads"), "{err}");
    assert!(err.contains("marked suspect"), "{err}");
    let j = json_of(&o);
    let sus = j["suspect"].as_array().unwrap();
    assert_eq!(sus.len(), 2, "{j}");
    assert_eq!(sus[0]["first_blocks"], serde_json::json!([100]), "{j}");
    // The newest point reads none of them.
    let o = rewind(&[
        "restore",
        "--vault",
        v,
        "--at",
        "now",
        "--to",
        to.to_str().unwrap(),
        "--force",
        "--json",
    ]);
    assert_eq!(json_of(&o)["suspect"], serde_json::json!([]));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("warning"));
}

#[test]
fn verify_and_sync_run_inside_the_server_while_fio_writes() {
    if !have(&["fio", "qemu-img"]) || !fio_has_nbd() {
        return;
    }
    let size = 64 * MIB;
    let (vol, _) = Vol::new(size, Some(12));
    let v = vol.v();
    let server = vol.serve();
    // The damage is in the lower half; fio writes the upper half throughout.
    let bad = [1u64, 300, 301, 4000, 8191];
    damage_primary(&vol, &bad);
    let mut fio = ChildGuard(
        Command::new("fio")
            .arg("--name=writer")
            .arg("--ioengine=nbd")
            .arg(format!("--uri={}", vol.uri("live")))
            .args([
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=8",
                "--offset=32M",
                "--size=32M",
                "--time_based",
                "--runtime=6",
                "--fsync=32",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Wait until fio writes.
    let start = std::time::Instant::now();
    loop {
        let st: Value =
            serde_json::from_str(&rewind_ok(&["status", "--vault", v, "--json"])).unwrap();
        if st["writes"].as_u64().unwrap() > 100 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "fio does not write: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // fio's blocks change under every scan; none may be reported.
    let mut changed_under_scan = 0;
    for _ in 0..3 {
        let o = rewind(&["verify", "--vault", v, "--json"]);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        let r = json_of(&o);
        assert_eq!(r["online"], true, "{r}");
        check_report(&r, &bad);
        changed_under_scan += r["scan_changed_blocks"].as_u64().unwrap();
    }
    let o = rewind(&["sync", "--vault", v, "--json"]);
    assert!(o.status.success(), "{o:?}");
    let s = json_of(&o);
    check_report(&s, &bad);
    changed_under_scan += s["scan_changed_blocks"].as_u64().unwrap();
    assert!(changed_under_scan > 0, "fio wrote during none of the scans");
    assert_eq!(s["fixup"]["blocks"], bad.len() as u64, "{s}");
    let o = rewind(&["verify", "--vault", v, "--json"]);
    assert!(
        o.status.success(),
        "after sync, with fio still writing: {o:?}"
    );
    assert!(
        fio.wait(Duration::from_secs(60))
            .is_some_and(|s| s.success()),
        "fio failed"
    );
    let o = rewind(&["verify", "--vault", v, "--json"]);
    assert!(o.status.success(), "after fio: {o:?}");
    // The base image is suspect for the damaged blocks: opening it as an export warns.
    assert_eq!(s["suspect"][0]["base_image"], true, "{s}");
    run_ok(
        Command::new("qemu-img")
            .args(["info", "-f", "raw"])
            .arg(vol.uri("@seq:0")),
    );
    let log = server.log_text();
    let warned = log
        .lines()
        .any(|l| l.contains("reads blocks a sync marked suspect") && l.contains("\"@seq:0\""));
    assert!(warned, "{log}");
    // The live volume and the newest point agree byte for byte.
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(vol.uri("live"))
            .arg(vol.uri("@now")),
    );
    let l = vol.list();
    assert!(
        l["intervals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["fixup"] == true),
        "{l}"
    );
    // --primary must be the served one.
    let other = vol.path("other.img");
    std::fs::write(&other, vec![0u8; size as usize]).unwrap();
    let o = rewind(&["verify", "--vault", v, "--primary", other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("this server serves"),
        "{o:?}"
    );
}

#[test]
fn sync_refuses_another_primary_and_verify_compares_any_image() {
    let (vol, _) = Vol::new(4 * MIB, Some(13));
    let copy = vol.path("copy.img");
    std::fs::copy(&vol.primary, &copy).unwrap();
    let c = copy.to_str().unwrap();
    let o = rewind(&["verify", "--vault", vol.v(), "--primary", c]);
    assert!(o.status.success(), "an identical copy verifies: {o:?}");
    let f = OpenOptions::new().write(true).open(&copy).unwrap();
    f.write_all_at(&[0xee; 10], 3 * MIB).unwrap();
    let o = rewind(&["verify", "--vault", vol.v(), "--primary", c, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(blocks_of(&json_of(&o)), vec![3 * MIB / BS]);
    let o = rewind(&["sync", "--vault", vol.v(), "--primary", c]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--moved-primary"),
        "{o:?}"
    );
    let o = rewind(&["verify", "--vault", vol.v(), "--region-size", "1000"]);
    assert_eq!(o.status.code(), Some(2), "a usage error: {o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("region size 1000"));
}

/// The restart repair's path: `rewind serve` killed with SIGKILL while fio writes, one
/// block written to the primary whose log record was lost; then an offline sync on the
/// unclean vault (which the writer's open recovers) repairs it, and the vault's newest
/// point is the primary again.
#[test]
fn offline_sync_after_kill_9_repairs_the_unclean_vault() {
    if !have(&["fio"]) || !fio_has_nbd() {
        return;
    }
    let size = 32 * MIB;
    let (vol, _) = Vol::new(size, Some(14));
    let v = vol.v();
    let mut server = vol.serve();
    let fio = ChildGuard(
        Command::new("fio")
            .arg("--name=writer")
            .arg("--ioengine=nbd")
            .arg(format!("--uri={}", vol.uri("live")))
            .args([
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=16",
                "--size=32M",
                "--time_based",
                "--runtime=60",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = std::time::Instant::now();
    loop {
        let st: Value =
            serde_json::from_str(&rewind_ok(&["status", "--vault", v, "--json"])).unwrap();
        if st["writes"].as_u64().unwrap() > 2000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "fio does not write: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill9();
    drop(fio);
    // A write that reached the primary but not the log.
    damage_primary(&vol, &[77]);
    let r = json_of(&rewind(&["verify", "--vault", v, "--json"]));
    assert!(blocks_of(&r).contains(&77), "{r}");
    let o = rewind(&["sync", "--vault", v, "--json"]);
    assert!(o.status.success(), "sync on the unclean vault: {o:?}");
    let s = json_of(&o);
    assert!(s["fixup"]["blocks"].as_u64().unwrap() >= 1, "{s}");
    let o = rewind(&["verify", "--vault", v]);
    assert!(o.status.success(), "after the repair: {o:?}");
    assert_same(
        &vol.restore("now"),
        &vol.read_primary(),
        "newest point after the repair",
    );
}

/// The dirty region log after a kill -9: `verify --dirty-only` scans only the regions the
/// log lists; the restarted server repairs exactly those before it serves (a write that
/// reached the primary but not the log comes back as a fix-up, history is not marked
/// suspect), clears the log, and after a clean stop the log says so. Damage outside the
/// dirty regions is not the DRL's business: only a full verify finds it.
#[test]
fn kill_9_then_restart_repairs_the_dirty_regions_first() {
    if !have(&["fio"]) || !fio_has_nbd() {
        return;
    }
    let size = 64 * MIB;
    let (vol, _) = Vol::new(size, Some(15));
    let v = vol.v();
    let mut server = vol.serve();
    // Random writes into the first 8 MiB only: one 16 MiB region of the DRL.
    let fio = ChildGuard(
        Command::new("fio")
            .arg("--name=writer")
            .arg("--ioengine=nbd")
            .arg(format!("--uri={}", vol.uri("live")))
            .args([
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=16",
                "--size=8M",
                "--time_based",
                "--runtime=60",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = std::time::Instant::now();
    loop {
        let st: Value =
            serde_json::from_str(&rewind_ok(&["status", "--vault", v, "--json"])).unwrap();
        if st["writes"].as_u64().unwrap() > 2000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "fio does not write: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill9();
    drop(fio);
    // A write that reached the primary but not the log, inside the dirty region; and
    // damage in a region nobody wrote (40 MiB in).
    let far = 40 * MIB / BS;
    damage_primary(&vol, &[77, far]);

    let r = json_of(&rewind(&["verify", "--vault", v, "--dirty-only", "--json"]));
    assert_eq!(r["bytes_scanned"], 16 * MIB, "only the dirty region: {r}");
    let found = blocks_of(&r);
    assert!(
        found.contains(&77) && !found.contains(&far),
        "dirty-only finds the damage in the dirty region only: {r}"
    );

    let mut server = vol.serve();
    let log = server.log_text();
    assert!(
        log.contains("The last stop was not clean") && log.contains("Repaired:"),
        "the restart repairs first:\n{log}"
    );
    // The dirty region is repaired and the log cleared: nothing dirty to scan.
    let r = json_of(&rewind(&["verify", "--vault", v, "--dirty-only", "--json"]));
    assert_eq!(r["clean"], true, "{r}");
    assert_eq!(r["bytes_scanned"], 0, "{r}");
    // The damage outside stays until a full verify and sync.
    let r = json_of(&rewind(&["verify", "--vault", v, "--json"]));
    assert_eq!(blocks_of(&r), vec![far], "{r}");
    let list = json_of(&rewind(&["list", "--vault", v, "--json"]));
    assert!(
        !list.to_string().contains("\"suspect\":true"),
        "a crash repair marks nothing suspect: {list}"
    );
    assert!(server.stop("TERM", Duration::from_secs(30)).success());
    let d = rewind_engine::drl::DirtyRegionLog::peek(std::path::Path::new(v))
        .unwrap()
        .unwrap();
    assert!(d.clean, "a clean stop is recorded in the dirty region log");
}

/// After a crash of the machine the primary may lack flushed writes; a sync would copy
/// that stale primary over them. It refuses, also when the dirty region log is gone: the
/// vault's manifest says a server was running in another boot.
#[test]
fn offline_sync_refuses_after_a_machine_crash_even_without_the_dirty_region_log() {
    if !have(&["qemu-io"]) {
        return;
    }
    let (vol, _) = Vol::new(8 * MIB, None);
    let mut server = vol.serve();
    qemu_io(
        &vol.uri("live"),
        &["write -P 0x5a 0 1M".into(), "flush".into()],
    );
    server.kill9();
    std::fs::remove_file(vol.vault.join("drl")).unwrap();
    let o = run_timeout(
        Command::new(BIN)
            .args(["sync", "--vault", vol.v()])
            .env("REWIND_BOOT_ID", "0123456789abcdef0123456789abcdef"),
        CMD_TIMEOUT,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("machine has restarted"), "{err}");
}
