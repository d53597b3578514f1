//! A full disk under the vault: the host gets ENOSPC (not EIO, so qemu's `werror=enospc`
//! can pause the guest), `rewind status` says the vault refuses writes and why, the log does
//! not repeat itself, and once space is freed the server takes writes again without a
//! restart and loses nothing it acknowledged.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

fn runnable() -> bool {
    have(&["qemu-io", "mkfs.ext4"])
        && need(is_root(), "not root: the small file system is a loop mount")
        && need(
            std::path::Path::new("/dev/loop-control").exists(),
            "no loop devices",
        )
}

/// One qemu-io command on its own connection: `Ok` when qemu-io reports no failure, else
/// its output.
fn io(vol: &Vol, cmds: &[&str]) -> Result<String, String> {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(vol.uri("live"));
    let o = run_timeout(&mut c, CMD_TIMEOUT);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if text.contains("failed") || text.contains("error") || !o.status.success() {
        Err(text)
    } else {
        Ok(text)
    }
}

fn status(vol: &Vol) -> Value {
    serde_json::from_str(&rewind_ok(&["status", "--vault", vol.v(), "--json"])).unwrap()
}

#[test]
fn a_full_vault_disk_gives_enospc_and_writes_resume_when_space_is_freed() {
    if !runnable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(48 * MIB)
        .unwrap();
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image),
    );
    let mount = Mount::new(&image, &dir.path().join("fs"), "rw");
    let vol = Vol {
        primary: dir.path().join("primary.img"),
        vault: mount.dir.join("vault"),
        socket: dir.path().join("nbd.sock"),
        size: SIZE,
        dir,
    };
    std::fs::File::create(&vol.primary)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    rewind_ok(&[
        "init",
        "--primary",
        vol.primary.to_str().unwrap(),
        "--vault",
        vol.v(),
    ]);
    let mut server = vol.serve();
    let mut model = Model(vec![0u8; SIZE as usize]);
    io(&vol, &["write -P 0x11 0 8M", "flush"]).unwrap();
    model.write(0, 8 * MIB, 0x11);

    // Fill the vault's file system.
    let filler = mount.dir.join("filler");
    let _ = run_timeout(
        Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .args(["bs=1M", "status=none"]),
        CMD_TIMEOUT,
    );
    run_ok(&mut Command::new("sync"));

    // Writes go on until the log writer meets the full disk; from then on the host gets
    // ENOSPC, for writes and flushes.
    let mut refused = None;
    for i in 0..32u64 {
        let off = 8 * MIB + (i % 12) * 4 * MIB;
        let pattern = 0x20 + i as u8;
        match io(&vol, &[&format!("write -P {pattern} {off} 4M"), "flush"]) {
            Ok(_) => model.write(off, 4 * MIB, pattern),
            Err(text) => {
                refused = Some(text);
                break;
            }
        }
    }
    let refused = refused.expect("the full disk was never noticed");
    assert!(refused.contains("No space left on device"), "{refused}");
    assert!(!refused.contains("Input/output error"), "{refused}");
    // A refused write changes neither side; a write acknowledged before its flush was
    // refused is kept (its records wait in the log writer): the comparison of primary and
    // vault below covers both.
    let s = status(&vol);
    assert_eq!(s["healthy"], Value::Bool(false), "{s}");
    let why = s["write_refusal"]["reason"].as_str().unwrap_or("");
    assert!(why.contains("no space"), "{s}");
    let err = io(&vol, &["write -P 0x55 0 64k"]).unwrap_err();
    assert!(err.contains("No space left on device"), "{err}");
    std::thread::sleep(Duration::from_secs(3));

    // Free the space: writes are taken again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    run_ok(&mut Command::new("sync"));
    let start = Instant::now();
    loop {
        match io(&vol, &["write -P 0x66 60M 1M", "flush"]) {
            Ok(_) => break,
            Err(text) => assert!(
                start.elapsed() < Duration::from_secs(20),
                "writes did not resume: {text}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    model.write(60 * MIB, MIB, 0x66);
    let s = status(&vol);
    assert_eq!(s["healthy"], Value::Bool(true), "{s}");

    // Nothing acknowledged is lost: the vault's newest point is the primary, and both hold
    // every write whose flush succeeded.
    rewind_ok(&["verify", "--vault", vol.v()]);
    let now = convert(&vol.uri("@now"), &vol.path("now.img"));
    let primary = vol.read_primary();
    assert!(now == primary, "the vault's newest point is the primary");
    for (off, len) in [(0, 8 * MIB), (60 * MIB, MIB)] {
        let (a, b) = (off as usize, (off + len) as usize);
        assert_same(&now[a..b], &model.0[a..b], "flushed writes");
    }
    assert!(server.stop("TERM", Duration::from_secs(60)).success());
    let log = server.log_text();
    let full_lines = log.lines().filter(|l| l.contains("is full")).count();
    assert!(full_lines <= 2, "the log repeats itself:\n{log}");
    drop(server);
    drop(mount);
}

/// A full file system under the primary (a sparse image that cannot grow): the host gets
/// ENOSPC too, status says why, and freeing space lets writes go on.
#[test]
fn a_full_primary_disk_gives_enospc() {
    if !runnable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image),
    );
    let mount = Mount::new(&image, &dir.path().join("fs"), "rw");
    let vol = Vol {
        primary: mount.dir.join("primary.img"),
        vault: dir.path().join("vault"),
        socket: dir.path().join("nbd.sock"),
        size: SIZE,
        dir,
    };
    // A 64 MiB sparse primary on a 32 MiB file system.
    std::fs::File::create(&vol.primary)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    rewind_ok(&[
        "init",
        "--primary",
        vol.primary.to_str().unwrap(),
        "--vault",
        vol.v(),
    ]);
    let mut server = vol.serve();
    let mut refused = None;
    for i in 0..16u64 {
        if let Err(text) = io(
            &vol,
            &[&format!("write -P 0x{:02x} {} 4M", i + 1, i * 4 * MIB)],
        ) {
            refused = Some(text);
            break;
        }
    }
    let refused = refused.expect("the primary's file system never filled");
    assert!(refused.contains("No space left on device"), "{refused}");
    let s = status(&vol);
    assert_eq!(s["healthy"], Value::Bool(false), "{s}");
    assert!(
        s["write_refusal"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("primary"),
        "{s}"
    );
    // Trimming what was written frees the space: writes go on.
    io(&vol, &["discard 0 64M", "flush"]).unwrap();
    io(&vol, &["write -P 0x77 0 1M", "flush"]).unwrap();
    assert_eq!(status(&vol)["healthy"], Value::Bool(true));
    assert!(server.stop("TERM", Duration::from_secs(60)).success());
    drop(server);
    drop(mount);
}
