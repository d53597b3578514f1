//! `rewind check` on the vault's files: an intact vault is clean; a flipped byte anywhere in
//! any file is named (that file, a structure that holds the byte); and what a problem says it
//! breaks is exactly what the vault's reads then fail (checked against every read of every
//! point, block by block).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{Model, Rng};
use rewind_vault::check::{check_vault, CheckOptions, CheckReport, Impact};
use rewind_vault::{Compression, NoProgress, Point, Seq, Vault};

const BS: u32 = 512;
const BLOCKS: usize = 64;

/// A closed vault with three sealed intervals and the open one (header only):
/// - 1..=3:  write 0..8, write 10..12, snapshot "a"
/// - 4..=7:  write 4..7 (random), zero 20..23, trim 50..52, write 30..34
/// - 8..=10: write 40..42, write 4..5, fix-up 60..62
fn build(root: &Path, compression: Compression) -> (PathBuf, Model) {
    let (vault, mut model) =
        common::create(root, BS, BLOCKS, 21, compression, common::no_auto_seal());
    let bs = BS as usize;
    let w = |vault: &Vault, model: &mut Model, at: u64, n: usize, seed: u64| {
        let d = common::data(seed, bs, n);
        assert_eq!(vault.write(at, &d).unwrap(), Seq(model.write(at, &d)));
    };
    w(&vault, &mut model, 0, 8, 1);
    w(&vault, &mut model, 10, 2, 2);
    model.marker("a");
    vault.snapshot("a", false).unwrap();
    let mut d = vec![0u8; bs * 3];
    Rng(3).fill(&mut d);
    assert_eq!(vault.write(4, &d).unwrap(), Seq(model.write(4, &d)));
    assert_eq!(vault.zero(20, 3).unwrap(), Seq(model.zero(20, 3)));
    assert_eq!(vault.trim(50, 2).unwrap(), Seq(model.zero(50, 2)));
    w(&vault, &mut model, 30, 4, 4);
    vault.seal().unwrap();
    w(&vault, &mut model, 40, 2, 5);
    w(&vault, &mut model, 4, 1, 6);
    let d = common::data(7, bs, 2);
    let (_, last) = vault.fix_up(60, &d).unwrap();
    assert_eq!(last, Seq(model.write(60, &d)));
    vault.close().unwrap();
    (root.join("vault"), model)
}

fn check(dir: &Path) -> CheckReport {
    check_vault(dir, &CheckOptions::default(), &NoProgress).unwrap()
}

/// Every file of the vault but the lock (plain text, no structure), relative paths.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["", "base", "log", "maps"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() && e.file_name() != "LOCK" {
                out.push(Path::new(sub).join(e.file_name()));
            }
        }
    }
    out.sort();
    out
}

fn flip(path: &Path, at: u64) {
    common::flip(path, at, 0x10);
}

/// Whether each (point, block) read fails now; `None`: the vault does not open. A read that
/// works must return the model's data.
fn reads_that_fail(dir: &Path, model: &Model) -> Option<Vec<Vec<bool>>> {
    let vault = Vault::open_read_only(dir).ok()?;
    let blocks = model.blocks() as usize;
    let mut out = Vec::new();
    for p in 0..=model.newest() {
        let Ok(view) = vault.view(&Point::Seq(Seq(p))) else {
            out.push(vec![true; blocks]);
            continue;
        };
        let mut row = Vec::new();
        for b in 0..blocks as u64 {
            match view.read(b, 1) {
                Ok(data) => {
                    let bs = BS as usize;
                    let want = &model.image(p)[b as usize * bs..(b as usize + 1) * bs];
                    assert_eq!(data, want, "point {p} block {b} read wrong data");
                    row.push(false);
                }
                Err(_) => row.push(true),
            }
        }
        out.push(row);
    }
    Some(out)
}

/// What the report says fails, in the same shape: `None` when it says the vault does not
/// open.
fn reported(r: &CheckReport, model: &Model) -> Option<Vec<Vec<bool>>> {
    let blocks = model.blocks() as usize;
    let mut out = vec![vec![false; blocks]; model.newest() as usize + 1];
    for p in &r.problems {
        match &p.impact {
            Impact::Vault { .. } => return None,
            Impact::Points(ranges) => {
                for range in ranges {
                    for s in range.from.0..=range.to.0 {
                        for b in 0..blocks as u64 {
                            if range.blocks.as_ref().is_none_or(|set| set.contains(b)) {
                                out[s as usize][b as usize] = true;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some(out)
}

/// Checks a flip at `at` of `file`: exactly that file is named, at a structure holding the
/// byte; with `oracle`, the reported impact is what reads do.
fn one_flip(dir: &Path, file: &Path, at: u64, model: &Model, oracle: bool) {
    let path = dir.join(file);
    flip(&path, at);
    let r = check(dir);
    let what = format!("{} byte {at}", file.display());
    assert!(!r.problems.is_empty(), "{what}: not found ({:?})", r.notes);
    for p in &r.problems {
        assert_eq!(p.path, path, "{what}: another file named: {p:?}");
        assert!(
            p.offset <= at && at < p.offset + p.length.max(1),
            "{what}: named {}..+{} ({}: {})",
            p.offset,
            p.length,
            p.structure,
            p.fault
        );
    }
    // A damaged current manifest with an intact previous one: readers open the vault as
    // of the previous generation (what the report says of it is about writers).
    let falls_back = r.problems.iter().any(|p| {
        p.impact
            == Impact::Vault {
                previous_manifest_intact: Some(true),
            }
    });
    if falls_back {
        assert!(
            Vault::open_read_only(dir).is_ok(),
            "{what}: readers do not fall back"
        );
    }
    if oracle && !falls_back {
        let got = reads_that_fail(dir, model);
        let said = reported(&r, model);
        if got != said {
            let diff: Vec<(usize, usize)> = match (&got, &said) {
                (Some(g), Some(s)) => g
                    .iter()
                    .zip(s)
                    .enumerate()
                    .flat_map(|(p, (g, s))| {
                        (0..g.len())
                            .filter(move |b| g[*b] != s[*b])
                            .map(move |b| (p, b))
                    })
                    .take(10)
                    .collect(),
                _ => Vec::new(),
            };
            panic!(
                "{what}: reads that fail differ from the report (vault opens: {}, report says it opens: {}); first (point, block) differing: {diff:?}\nreport: {:#?}",
                got.is_some(),
                said.is_some(),
                r.problems
            );
        }
    }
    flip(&path, at);
}

#[test]
fn an_intact_vault_is_clean_and_read_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = build(tmp.path(), Compression::Lz4);
    let r = check(&dir);
    assert!(r.is_clean(), "{:?}", r.problems);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    assert_eq!(r.newest_seq, Seq(10));
    assert!(r.generation.is_some());
    let on_disk: u64 = files(&dir)
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).unwrap().len())
        .sum();
    assert_eq!(r.bytes_read + r.bytes_sparse, on_disk, "every byte read");
    assert_eq!(r.files, files(&dir).len() as u64);
}

/// Every byte of every file, flipped one at a time (lz4: raw and compressed records, the
/// fix-up, zero and trim, a marker), but of the base image (32 KiB, holes and data) only
/// its first 4 blocks whole and every 11th byte after them, and of the zero padding of
/// the header of base.sums every 61st byte, to keep the test short. Every
/// 7th byte also has its impact checked against every read of every point.
#[test]
fn every_flipped_byte_is_named_lz4() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, model) = build(tmp.path(), Compression::Lz4);
    for file in files(&dir) {
        let len = std::fs::metadata(dir.join(&file)).unwrap().len();
        let base = file.ends_with("base.img");
        // The header page of base.sums: its fields, then every 61st byte of the padding.
        let sums_pad = |at: u64| file.ends_with("base.sums") && (32..4092).contains(&at);
        for at in (0..len).filter(|at| !base || *at < 4 * u64::from(BS) || at % 11 == 0) {
            if sums_pad(at) && at % 61 != 0 {
                continue;
            }
            one_flip(&dir, &file, at, &model, at % 7 == 0);
        }
    }
}

/// The log and the maps of vaults without compression (every block of a write is located
/// on its own) and with zstd, every byte, every 5th with its impact checked.
#[test]
fn every_flipped_byte_of_the_log_and_maps_is_named_none_and_zstd() {
    for codec in [Compression::None, Compression::Zstd { level: 3 }] {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, model) = build(tmp.path(), codec);
        for file in files(&dir) {
            if !(file.starts_with("log") || file.starts_with("maps")) {
                continue;
            }
            let len = std::fs::metadata(dir.join(&file)).unwrap().len();
            for at in 0..len {
                one_flip(&dir, &file, at, &model, at % 5 == 0);
            }
        }
    }
}

/// A delta map larger than the vault reads with its head (64 KiB): damage in its entries
/// breaks only the reads that need them (the blocks it holds, until each is written
/// again), damage in its head every point whose chain holds it.
#[test]
fn a_large_map_with_damaged_entries_breaks_only_its_blocks() {
    let blocks = 3200usize;
    let tmp = tempfile::tempdir().unwrap();
    let (vault, mut model) = common::create(
        tmp.path(),
        BS,
        blocks,
        5,
        Compression::None,
        common::no_auto_seal(),
    );
    let bs = BS as usize;
    // Interval 1..=1601: every other block, one write each (1600 extents: a map of ~70 KiB;
    // runs of blocks would make it an extent each and the map small).
    for i in 0..1600u64 {
        let d = common::data(100 + i, bs, 1);
        assert_eq!(vault.write(i * 2, &d).unwrap(), Seq(model.write(i * 2, &d)));
    }
    model.marker("big");
    vault.snapshot("big", false).unwrap();
    // Interval 1602..=1603: some of them written again, others zeroed.
    let d = common::data(200, bs, 10);
    assert_eq!(vault.write(100, &d).unwrap(), Seq(model.write(100, &d)));
    assert_eq!(vault.zero(2000, 50).unwrap(), Seq(model.zero(2000, 50)));
    vault.close().unwrap();
    let dir = tmp.path().join("vault");
    let map = Path::new("maps").join(rewind_format::names::delta_map(Seq(1), Seq(1601)));
    let len = std::fs::metadata(dir.join(&map)).unwrap().len();
    assert!(len > 64 << 10, "the map is {len} bytes");
    // An entry, the last entry, the entries' crc; then a byte of the block set (head).
    for at in [len / 2, len - 10, len - 2, 100] {
        one_flip(&dir, &map, at, &model, true);
    }
    let path = dir.join(&map);
    flip(&path, len / 2);
    let r = check(&dir);
    flip(&path, len / 2);
    let Impact::Points(ranges) = &r.problems[0].impact else {
        panic!("{:?}", r.problems)
    };
    // From the map's end (seq 1601): block 100 until seq 1601 (written again at 1602), 2000
    // until 1602 (zeroed at 1603), 4 until the newest; snapshot "big" among them.
    let until = |b: u64| {
        ranges
            .iter()
            .find(|r| r.blocks.as_ref().unwrap().contains(b))
            .unwrap()
    };
    assert_eq!((until(100).from, until(100).to), (Seq(1601), Seq(1601)));
    assert_eq!(until(2000).to, Seq(1602));
    assert_eq!(until(4).to, Seq(1603));
    assert_eq!(until(4).snapshots, vec!["big".to_string()]);
}

/// Files the manifest names but that are missing are named; leftovers of interrupted
/// commits and unknown files are notes, not problems.
#[test]
fn missing_files_are_problems_and_leftovers_are_notes() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, model) = build(tmp.path(), Compression::None);
    let map = dir
        .join("maps")
        .join(rewind_format::names::delta_map(Seq(4), Seq(7)));
    let saved = std::fs::read(&map).unwrap();
    std::fs::remove_file(&map).unwrap();
    let r = check(&dir);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(r.problems[0].path, map);
    assert_eq!(
        reads_that_fail(&dir, &model),
        reported(&r, &model),
        "a missing map breaks every point from its end on"
    );
    std::fs::write(&map, saved).unwrap();
    // The vault opens without a sealed segment or base.sums: the report says which reads
    // fail, and they are exactly those that do.
    for f in ["log/seg-00000000000000000004.log", "base/base.sums"] {
        let p = dir.join(f);
        let saved = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let r = check(&dir);
        assert_eq!(r.problems.len(), 1, "{f}: {:?}", r.problems);
        assert_eq!(r.problems[0].path, p, "{f}");
        assert!(matches!(r.problems[0].impact, Impact::Points(_)), "{f}");
        let got = reads_that_fail(&dir, &model);
        assert!(got.is_some(), "{f}: the vault does not open");
        assert_eq!(got, reported(&r, &model), "{f}");
        std::fs::write(&p, saved).unwrap();
    }
    let p = dir.join("base/base.img");
    let saved = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    let r = check(&dir);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(matches!(r.problems[0].impact, Impact::Vault { .. }));
    assert!(
        Vault::open_read_only(&dir).is_err(),
        "the vault opens without its base image"
    );
    std::fs::write(&p, saved).unwrap();
    for f in [
        "maps/map-00000000000000000099-00000000000000000100.dmap",
        "manifest-00000000000000000099.tmp",
        "log/stray",
        "log/seg-00000000000000000099.log",
    ] {
        std::fs::write(dir.join(f), b"x").unwrap();
    }
    let r = check(&dir);
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!(r.notes.len(), 4, "{:?}", r.notes);
}

/// Both manifests damaged: the vault does not open; the check still reads every other file
/// on its own and names what is damaged there.
#[test]
fn without_an_intact_manifest_the_other_files_are_still_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = build(tmp.path(), Compression::Lz4);
    let manifests: Vec<PathBuf> = files(&dir)
        .into_iter()
        .filter(|f| f.to_string_lossy().starts_with("manifest-"))
        .collect();
    assert_eq!(manifests.len(), 2);
    for m in &manifests {
        flip(&dir.join(m), 30);
    }
    let r = check(&dir);
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    assert!(r.generation.is_none());
    let current = r
        .problems
        .iter()
        .find(|p| p.path == dir.join(&manifests[1]))
        .unwrap();
    assert_eq!(
        current.impact,
        Impact::Vault {
            previous_manifest_intact: Some(false)
        }
    );
    let seg = dir.join("log/seg-00000000000000000004.log");
    flip(&seg, 200);
    let r = check(&dir);
    let p = r.problems.iter().find(|p| p.path == seg).unwrap();
    assert!(p.offset <= 200 && 200 < p.offset + p.length, "{p:?}");
    assert_eq!(p.impact, Impact::Unknown);
    let sums = dir.join("base/base.img");
    flip(&sums, 700);
    let r = check(&dir);
    assert!(
        r.problems.iter().any(|p| p.path == sums && p.offset == 512),
        "{:?}",
        r.problems
    );
}

/// A damaged current manifest: the vault does not open, the previous generation is intact
/// and the rest is checked against it.
#[test]
fn a_damaged_current_manifest_says_the_previous_one_is_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = build(tmp.path(), Compression::Lz4);
    let current = files(&dir)
        .into_iter()
        .rfind(|f| f.to_string_lossy().starts_with("manifest-"))
        .unwrap();
    flip(&dir.join(&current), 12);
    let r = check(&dir);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(
        r.problems[0].impact,
        Impact::Vault {
            previous_manifest_intact: Some(true)
        }
    );
    assert!(r.used_previous_manifest);
    // Checked against the previous generation: the newest seal's files are not listed there.
    assert!(r.notes.len() >= 2, "{:?}", r.notes);
}

/// A rate keeps the check to it; a cancelled check says so and is not clean.
#[test]
fn rate_and_cancel() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = build(tmp.path(), Compression::None);
    let opts = CheckOptions {
        rate: Some(100_000),
        ..CheckOptions::default()
    };
    let r = check_vault(&dir, &opts, &NoProgress).unwrap();
    assert!(r.is_clean());
    let least = r.bytes_read as f64 / 100_000.0;
    assert!(
        r.elapsed.as_secs_f64() >= least * 0.9,
        "{:?} for {} bytes",
        r.elapsed,
        r.bytes_read
    );
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let opts = CheckOptions {
        cancel: Some(cancel),
        ..CheckOptions::default()
    };
    let r = check_vault(&dir, &opts, &NoProgress).unwrap();
    assert!(r.cancelled && !r.is_clean());
}

/// A writer holds the vault: an offline check is refused (it would read files changing).
#[test]
fn a_held_vault_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = build(tmp.path(), Compression::None);
    let vault = Vault::open(&dir).unwrap();
    assert!(matches!(
        check_vault(&dir, &CheckOptions::default(), &NoProgress),
        Err(rewind_vault::VaultError::Locked { .. })
    ));
    // The writer itself checks online: clean, and it keeps writing meanwhile.
    vault.write(3, &vec![7u8; BS as usize]).unwrap();
    vault.flush().unwrap();
    let r = vault.check(&CheckOptions::default(), &NoProgress).unwrap();
    assert!(r.is_clean() && r.online, "{:?}", r.problems);
    assert_eq!(r.newest_seq, Seq(11));
}
