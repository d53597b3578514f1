//! Drives the real `rewind` binary, and checks restored images with `qemu-img compare`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rewind_vault::Vault;

fn rewind_once(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `rewind`, retrying while the vault is busy (exit 4). Tests here open vaults in
/// process; while another test thread spawns a child, that child briefly shares our lock
/// file descriptor (between fork and exec), so a lock we just released can look held for
/// a moment.
fn rewind(args: &[&str]) -> Output {
    let mut o = rewind_once(args);
    for _ in 0..40 {
        if o.status.code() != Some(4) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        o = rewind_once(args);
    }
    o
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether `tool` is on PATH. In CI (REWIND_REQUIRE_TOOLS=true) a missing tool fails the
/// test; elsewhere the test is skipped with a reason.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("REWIND_REQUIRE_TOOLS").as_deref() == Ok("true") {
            panic!("{tool} is required in CI; scripts/test.sh installs it");
        }
        eprintln!("SKIP: {tool} not installed (scripts/test.sh installs it)");
    }
    found
}

/// A deterministic pseudo-random image with some zero regions.
fn primary(dir: &Path, blocks: usize) -> (PathBuf, Vec<u8>) {
    let mut data = vec![0u8; blocks * 4096];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, chunk) in data.chunks_mut(4096).enumerate() {
        if i % 3 == 0 {
            continue;
        }
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    let p = dir.join("primary.img");
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

fn qemu_compare(a: &Path, b: &Path) -> bool {
    let o = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    o.status.success()
}

#[test]
fn init_snapshot_list_restore_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, mut image) = primary(tmp.path(), 256);
    let vault = tmp.path().join("vault");
    let v = vault.to_str().unwrap();
    let o = rewind(&[
        "init",
        "--primary",
        p.to_str().unwrap(),
        "--vault",
        v,
        "--compression",
        "lz4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    // History: writes through the library (the NBD server is the next milestone).
    let at_base = image.clone();
    {
        let vault = Vault::open(&vault).unwrap();
        vault.write(10, &[0xaa; 8192]).unwrap();
        image[10 * 4096..12 * 4096].fill(0xaa);
        vault.close().unwrap();
    }
    let o = rewind(&["snapshot", "one", "--vault", v]);
    assert!(o.status.success(), "{}", stderr(&o));
    let at_one = image.clone();
    {
        let vault = Vault::open(&vault).unwrap();
        vault.trim(10, 1).unwrap();
        vault.write(200, &[0x55; 4096]).unwrap();
        vault.close().unwrap();
    }

    let o = rewind(&["list", "--vault", v, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["snapshots"][0]["name"], "one");
    assert_eq!(j["snapshots"][0]["seq"], 2);
    assert!(j["intervals"].as_array().unwrap().len() >= 2);

    let human = rewind(&["list", "--vault", v]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("one"));

    for (point, want) in [("seq:0", &at_base), ("one", &at_one)] {
        let to = tmp.path().join(format!("restored-{point}.img"));
        let o = rewind(&[
            "restore",
            "--vault",
            v,
            "--at",
            point,
            "--to",
            to.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{point}: {}", stderr(&o));
        assert_eq!(&std::fs::read(&to).unwrap(), want, "{point}");
        let expect = tmp.path().join(format!("expect-{point}.img"));
        std::fs::write(&expect, want).unwrap();
        if have("qemu-img") {
            assert!(qemu_compare(&to, &expect), "qemu-img compare {point}");
        }
    }

    // Dry run writes nothing; an existing target is refused without --force.
    let to = tmp.path().join("dry.img");
    let o = rewind(&[
        "restore",
        "--vault",
        v,
        "--at",
        "now",
        "--to",
        to.to_str().unwrap(),
        "--dry-run",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!to.exists());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["dry_run"], true);
    let again = tmp.path().join("restored-one.img");
    let o = rewind(&[
        "restore",
        "--vault",
        v,
        "--at",
        "one",
        "--to",
        again.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
}

#[test]
fn sparse_primary_stays_sparse() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("big.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(1 << 30).unwrap();
    let vault = tmp.path().join("vault");
    let o = rewind(&[
        "init",
        "--primary",
        p.to_str().unwrap(),
        "--vault",
        vault.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let used = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    };
    assert!(
        used(&vault.join("base/base.img")) < 1 << 20,
        "base image of a sparse 1 GiB primary must stay sparse"
    );
    let to = tmp.path().join("out.img");
    let o = rewind(&[
        "restore",
        "--vault",
        vault.to_str().unwrap(),
        "--at",
        "now",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&to).unwrap().len(), 1 << 30);
    assert!(used(&to) < 1 << 20, "restored zero volume must be sparse");
}

#[test]
fn refusals_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, _) = primary(tmp.path(), 16);
    let ps = p.to_str().unwrap();
    let bad_bs = rewind(&[
        "init",
        "--primary",
        ps,
        "--vault",
        tmp.path().join("a").to_str().unwrap(),
        "--block-size",
        "3000",
    ]);
    assert_eq!(bad_bs.status.code(), Some(2), "a usage error");
    assert!(stderr(&bad_bs).contains("power of two"));
    let odd = tmp.path().join("odd.img");
    std::fs::write(&odd, [1u8; 1000]).unwrap();
    let o = rewind(&[
        "init",
        "--primary",
        odd.to_str().unwrap(),
        "--vault",
        tmp.path().join("b").to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("not a multiple of the block size"),
        "{}",
        stderr(&o)
    );
    let vault = tmp.path().join("v");
    let v = vault.to_str().unwrap();
    assert!(rewind(&["init", "--primary", ps, "--vault", v])
        .status
        .success());
    let o = rewind(&["init", "--primary", ps, "--vault", v]);
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
    let o = rewind(&[
        "restore",
        "--vault",
        v,
        "--at",
        "-1d",
        "--to",
        "/dev/null/x",
    ]);
    assert!(
        stderr(&o).contains("before the base image"),
        "{}",
        stderr(&o)
    );
    let o = rewind(&[
        "restore",
        "--vault",
        v,
        "--at",
        "2999-01-01T00:00:00Z",
        "--to",
        "/dev/null/x",
    ]);
    assert!(stderr(&o).contains("in the future"), "{}", stderr(&o));
    let o = rewind(&[
        "restore",
        "--vault",
        v,
        "--at",
        "nosuch",
        "--to",
        "/dev/null/x",
    ]);
    assert!(stderr(&o).contains("no snapshot named"), "{}", stderr(&o));

    // A second writer gets exit code 4 and a message naming the holder.
    let held = Vault::open_as(&vault, "test holder").unwrap();
    let o = rewind_once(&["snapshot", "x", "--vault", v]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("test holder"), "{}", stderr(&o));
    drop(held);
}

#[test]
fn corruption_exits_3_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, _) = primary(tmp.path(), 64);
    let vault = tmp.path().join("vault");
    let v = vault.to_str().unwrap();
    assert!(
        rewind(&["init", "--primary", p.to_str().unwrap(), "--vault", v])
            .status
            .success()
    );
    {
        let vault = Vault::open(&vault).unwrap();
        vault.write(5, &[7u8; 4096]).unwrap();
        vault.snapshot("s", false).unwrap();
        vault.close().unwrap();
    }
    // Flip a byte of the write record's data in the sealed segment.
    let seg = vault.join("log/seg-00000000000000000001.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[48 + 56 + 100] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    let to = tmp.path().join("out.img");
    let o = rewind(&[
        "restore",
        "--vault",
        v,
        "--at",
        "s",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("seg-00000000000000000001.log"),
        "{}",
        stderr(&o)
    );
    assert!(!to.exists(), "a failed restore leaves no image");

    // A corrupt manifest: list reads the previous generation and names the damage; a
    // writer (snapshot, with no server) refuses with exit 3 naming it.
    let manifest = std::fs::read_dir(&vault)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("manifest-")
        })
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[30] ^= 1;
    std::fs::write(&manifest, bytes).unwrap();
    let o = rewind(&["list", "--vault", v]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        out.contains("DAMAGE") && out.contains(manifest.to_str().unwrap()),
        "{out}"
    );
    let o = rewind(&["snapshot", "after", "--vault", v]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("manifest-"), "{}", stderr(&o));
}

#[test]
fn help_teaches() {
    let o = rewind(&["--help"]);
    let s = String::from_utf8_lossy(&o.stdout);
    for word in [
        "init",
        "serve",
        "snapshot",
        "list",
        "restore",
        "seq:N",
        "Exit codes",
    ] {
        assert!(s.contains(word), "--help lacks {word}");
    }
}
