//! `rewind check` through the binary: a vault made by `rewind serve` (with its dirty region
//! log) is clean (exit 0); a flipped byte in any of its files is named, file and offset,
//! with exit 3; inside a running server while fio writes, the check is online, throttled,
//! clean, and names damage made behind the server's back.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn rewind(args: &[&str]) -> Output {
    run_timeout(Command::new(BIN).args(args), CMD_TIMEOUT)
}

fn check_json(vol: &Vol) -> (Option<i32>, Value) {
    let o = rewind(&["check", "--vault", vol.v(), "--json"]);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

/// A vault with history made through the server: writes, a snapshot, more writes, a
/// clean stop (every interval sealed; the DRL says clean).
fn served_vault() -> Vol {
    let (vol, _) = Vol::new(16 * MIB, Some(3));
    let mut server = vol.serve();
    qemu_io(
        &vol.uri("live"),
        &[
            "write -P 0xab 0 256k".into(),
            format!("write -P 0xcd {} 64k", 8 * MIB),
            "write -z 1M 128k".into(),
            "discard 2M 64k".into(),
            "flush".into(),
        ],
    );
    vol.snapshot("s1");
    qemu_io(
        &vol.uri("live"),
        &["write -P 0x11 4k 8k".into(), "flush".into()],
    );
    assert!(server.stop("TERM", Duration::from_secs(30)).success());
    vol
}

/// Every file of the vault but the lock, with its length.
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for sub in ["", "base", "log", "maps"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() && e.file_name() != "LOCK" {
                out.push((e.path(), e.metadata().unwrap().len()));
            }
        }
    }
    out.sort();
    out
}

/// Offsets to flip in a file of `len` bytes: all of a small one; of a large one its first
/// 256 bytes and 48 more spread over it.
fn sample(len: u64) -> Vec<u64> {
    if len <= 512 {
        return (0..len).collect();
    }
    let mut v: Vec<u64> = (0..256).collect();
    v.extend((0..48).map(|i| 256 + (len - 256) * i / 48));
    v.push(len - 1);
    v
}

#[test]
fn a_served_vault_is_clean_and_a_flipped_byte_in_any_file_is_named() {
    let vol = served_vault();
    let o = rewind(&["check", "--vault", vol.v()]);
    assert!(o.status.success(), "{o:?}");
    let human = String::from_utf8_lossy(&o.stdout);
    assert!(human.contains("No problems"), "{human}");
    let (code, r) = check_json(&vol);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["clean"], true, "{r}");
    assert_eq!(r["online"], false, "{r}");
    assert!(r["notes"].as_array().unwrap().is_empty(), "{r}");
    let all = files(&vol.vault);
    assert!(
        all.iter().any(|(p, _)| p.ends_with("drl")),
        "the vault has a dirty region log: {all:?}"
    );
    let mut flips = 0;
    for (path, len) in &all {
        for at in sample(*len) {
            flip(path, at);
            let (code, r) = check_json(&vol);
            let what = format!("{} byte {at}", path.display());
            assert_eq!(code, Some(3), "{what}: {r}");
            let problems = r["problems"].as_array().unwrap();
            assert!(!problems.is_empty(), "{what}: {r}");
            for p in problems {
                assert_eq!(p["file"], path.to_str().unwrap(), "{what}: {p}");
                let (o, l) = (p["offset"].as_u64().unwrap(), p["length"].as_u64().unwrap());
                assert!(o <= at && at < o + l.max(1), "{what}: {p}");
                assert!(p["affects"]["summary"].as_str().is_some(), "{what}: {p}");
            }
            flip(path, at);
            flips += 1;
        }
    }
    eprintln!("{flips} flips checked");
    let (code, _) = check_json(&vol);
    assert_eq!(code, Some(0));
}

#[test]
fn the_human_report_says_what_breaks() {
    let vol = served_vault();
    let seg = vol.vault.join("log/seg-00000000000000000001.log");
    flip(&seg, 1000);
    let o = rewind(&["check", "--vault", vol.v()]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let human = String::from_utf8_lossy(&o.stdout);
    assert!(
        human.contains("1 problem(s): the vault is damaged."),
        "{human}"
    );
    assert!(
        human.contains("seg-00000000000000000001.log at bytes 48.."),
        "{human}"
    );
    assert!(human.contains("record seq 1: checksum mismatch"), "{human}");
    assert!(
        human.contains("breaks: every read of points seq"),
        "{human}"
    );
    let (_, r) = check_json(&vol);
    let ranges = r["problems"][0]["affects"]["ranges"].as_array().unwrap();
    assert!(ranges.iter().any(|x| x["every_read"] == true), "{r}");
    // Through the interval's delta map, only the block whose bytes were hit.
    let blocks: Vec<&Value> = ranges.iter().filter(|x| x["every_read"] == false).collect();
    assert_eq!(blocks.len(), 1, "{r}");
    assert_eq!(blocks[0]["blocks_total"], 1, "{r}");
}

fn fio_has_nbd() -> bool {
    let out = run_ok(Command::new("fio").arg("--enghelp"));
    need(
        out.split_whitespace().any(|w| w == "nbd"),
        "fio has no nbd engine (fio --enghelp)",
    )
}

#[test]
fn online_check_under_fio_is_clean_throttled_and_names_damage() {
    if !have(&["fio", "qemu-io"]) || !fio_has_nbd() {
        return;
    }
    let (vol, _) = Vol::new(64 * MIB, Some(9));
    let v = vol.v();
    let server = vol.serve();
    qemu_io(
        &vol.uri("live"),
        &["write -P 0x42 0 4M".into(), "flush".into()],
    );
    vol.snapshot("before");
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
                "--runtime=8",
                "--fsync=32",
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
        if st["writes"].as_u64().unwrap() > 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "fio does not write: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Throttled to 2 MiB/s: the vault holds more than 4 MiB, so it takes over a second.
    let o = rewind(&["check", "--vault", v, "--json", "--rate", "2M"]);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0), "{r}");
    assert_eq!(r["online"], true, "{r}");
    assert_eq!(r["rate"], 2 * MIB, "{r}");
    let bytes = r["bytes_read"].as_f64().unwrap();
    assert!(bytes > 4.0 * MIB as f64, "{r}");
    assert!(
        r["seconds"].as_f64().unwrap() >= 0.9 * bytes / (2 * MIB) as f64,
        "{r}"
    );
    // Unthrottled, while fio writes: still clean.
    let (code, r) = check_json(&vol);
    assert_eq!(code, Some(0), "{r}");
    assert!(r["newest_seq"].as_u64().unwrap() > 1000, "{r}");
    // Damage behind the server's back, in the sealed interval of the 4 MiB write.
    let seg = vol.vault.join("log/seg-00000000000000000001.log");
    flip(&seg, 70_000);
    let (code, r) = check_json(&vol);
    assert_eq!(code, Some(3), "{r}");
    assert_eq!(r["problems_total"], 1, "{r}");
    let p = &r["problems"][0];
    assert_eq!(p["file"], seg.to_str().unwrap(), "{r}");
    assert!(p["offset"].as_u64().unwrap() <= 70_000, "{r}");
    assert!(
        p["affects"]["summary"]
            .as_str()
            .unwrap()
            .contains("reads of block"),
        "{r}"
    );
    flip(&seg, 70_000);
    assert!(
        fio.wait(Duration::from_secs(60))
            .is_some_and(|s| s.success()),
        "fio failed"
    );
    let (code, r) = check_json(&vol);
    assert_eq!(code, Some(0), "after fio: {r}");
    assert!(
        server.log_text().contains("check: the vault is damaged"),
        "{}",
        server.log_text()
    );
}
