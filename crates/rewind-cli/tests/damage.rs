//! A damaged vault stays usable, through the binary: with a missing delta map, a short
//! sealed segment, a flipped byte in `base.sums` or a corrupt newest manifest, `rewind
//! list` opens what is intact and names what is not, points that do not need the damage
//! restore exactly, points that do fail with exit 3 naming the file, and `rewind serve`
//! serves the live volume. `rewind repair` mends what can be mended; `restore --salvage`
//! writes what is readable and lists the rest.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn rewind(args: &[&str]) -> Output {
    run_timeout(Command::new(BIN).args(args), CMD_TIMEOUT)
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A vault with three sealed intervals (through the server), and the images of its
/// snapshots `s1`, `s2` and of its newest point, restored while it was intact.
struct History {
    vol: Vol,
    s1: Vec<u8>,
    s2: Vec<u8>,
    now: Vec<u8>,
}

fn history() -> History {
    let (vol, _) = Vol::new(16 * MIB, Some(5));
    let mut server = vol.serve();
    qemu_io(
        &vol.uri("live"),
        &["write -P 0xab 0 256k".into(), "flush".into()],
    );
    vol.snapshot("s1");
    qemu_io(
        &vol.uri("live"),
        &[
            format!("write -P 0xcd {} 64k", 8 * MIB),
            "write -P 0x22 1M 32k".into(),
            "flush".into(),
        ],
    );
    vol.snapshot("s2");
    qemu_io(
        &vol.uri("live"),
        &["write -P 0x11 4k 8k".into(), "flush".into()],
    );
    assert!(server.stop("TERM", Duration::from_secs(30)).success());
    let s1 = vol.restore("s1");
    let s2 = vol.restore("s2");
    let now = vol.restore("now");
    History { vol, s1, s2, now }
}

impl History {
    fn list(&self) -> Value {
        let o = rewind(&["list", "--vault", self.vol.v(), "--json"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn seq_of(&self, snapshot: &str) -> u64 {
        self.list()["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == snapshot)
            .unwrap()["seq"]
            .as_u64()
            .unwrap()
    }

    /// The sealed interval ending at `seq`: (seq_from, seq_to).
    fn interval_ending(&self, seq: u64) -> (u64, u64) {
        let l = self.list();
        let i = l["intervals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["seq_to"] == seq)
            .unwrap()
            .clone();
        (i["seq_from"].as_u64().unwrap(), seq)
    }

    fn map_path(&self, (a, b): (u64, u64)) -> PathBuf {
        self.vol
            .vault
            .join("maps")
            .join(format!("map-{a:020}-{b:020}.dmap"))
    }

    fn segment_path(&self, (a, _): (u64, u64)) -> PathBuf {
        self.vol.vault.join("log").join(format!("seg-{a:020}.log"))
    }

    /// `rewind restore --at POINT --to FILE`: its output, and the image if it succeeded.
    fn try_restore(&self, point: &str) -> (Output, Option<Vec<u8>>) {
        let to = self
            .vol
            .path(&format!("try-{}.img", point.replace(':', "_")));
        let _ = std::fs::remove_file(&to);
        let o = rewind(&[
            "restore",
            "--vault",
            self.vol.v(),
            "--at",
            point,
            "--to",
            to.to_str().unwrap(),
        ]);
        let img = o.status.success().then(|| std::fs::read(&to).unwrap());
        if !o.status.success() {
            assert!(!to.exists(), "a failed restore left {}", to.display());
        }
        (o, img)
    }

    fn restores_exactly(&self, point: &str, want: &[u8]) {
        let (o, img) = self.try_restore(point);
        let img = img.unwrap_or_else(|| panic!("restore {point}: {}", text(&o)));
        assert_same(&img, want, &format!("restore {point}"));
    }

    fn restore_fails_naming(&self, point: &str, file: &Path) {
        let (o, _) = self.try_restore(point);
        assert_eq!(o.status.code(), Some(3), "restore {point}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&file.display().to_string()),
            "restore {point} does not name {}: {err}",
            file.display()
        );
    }

    /// `rewind serve` starts and the live export reads exactly the primary.
    fn serves_live(&self) {
        let mut server = self.vol.serve();
        let got = convert(&self.vol.uri("live"), &self.vol.path("live.img"));
        assert_same(&got, &self.vol.read_primary(), "live export");
        assert!(server.stop("TERM", Duration::from_secs(30)).success());
    }

    /// The damage entries of `rewind list --json` name `file`.
    fn list_names(&self, file: &Path) -> Value {
        let l = self.list();
        let d = l["damage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["file"].as_str() == file.to_str())
            .unwrap_or_else(|| panic!("list --json does not name {}: {l:#}", file.display()))
            .clone();
        let o = rewind(&["list", "--vault", self.vol.v()]);
        let human = String::from_utf8_lossy(&o.stdout);
        assert!(
            human.contains("DAMAGE") && human.contains(&file.display().to_string()),
            "{human}"
        );
        d
    }

    fn snapshot_damage(&self, name: &str) -> Value {
        self.list()["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["damage"]
            .clone()
    }
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn a_missing_delta_map_breaks_only_the_points_after_it() {
    let h = history();
    let s2 = h.seq_of("s2");
    let map = h.map_path(h.interval_ending(s2));
    std::fs::remove_file(&map).unwrap();

    let d = h.list_names(&map);
    assert_eq!(d["unreadable"]["from"], s2, "{d}");
    assert!(d["unreadable"]["to"].is_null(), "{d}");
    assert!(h.snapshot_damage("s1")["unreadable"] == serde_json::json!([]));
    assert!(
        h.snapshot_damage("s2")["unreadable"]
            .as_array()
            .unwrap()
            .len()
            == 1
    );

    h.restores_exactly("s1", &h.s1);
    h.restores_exactly("seq:0", &h.vol.restore("seq:0"));
    h.restore_fails_naming("s2", &map);
    h.restore_fails_naming("now", &map);
    h.serves_live();
}

#[test]
fn a_short_sealed_segment_breaks_only_the_reads_of_its_lost_bytes() {
    let h = history();
    let s2 = h.seq_of("s2");
    let interval = h.interval_ending(s2);
    let seg = h.segment_path(interval);
    let len = std::fs::metadata(&seg).unwrap().len();
    truncate(&seg, len / 2);

    let d = h.list_names(&seg);
    assert_eq!(d["blocks_from"], s2, "{d}");
    h.restores_exactly("s1", &h.s1);
    h.restore_fails_naming("s2", &seg);
    h.serves_live();
}

#[test]
fn a_flipped_byte_in_base_sums_fails_only_the_block_it_hit() {
    let h = history();
    let sums = h.vol.vault.join("base").join("base.sums");
    // The sum of block 3000 (a block no record writes): in the first chunk, after the
    // header's 4096 bytes, 4 per block.
    flip(&sums, 4096 + 4 * 3000 + 1);

    // Opening reads the header of base.sums only: the damaged chunk is found by the reads
    // that need it, and by `rewind check` (which names the chunk and the block's sum).
    h.restore_fails_naming("s1", &sums);
    h.serves_live();
    let o = rewind(&["check", "--vault", h.vol.v(), "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let named: Vec<&Value> = j["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["file"].as_str() == sums.to_str())
        .collect();
    assert_eq!(named.len(), 2, "the chunk and the block's sum: {j:#}");
}

#[test]
fn a_corrupt_newest_manifest_is_read_as_the_previous_one_and_serve_refuses() {
    let h = history();
    let newest = std::fs::read_dir(&h.vol.vault)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("manifest-")
        })
        .max()
        .unwrap();
    flip(&newest, 40);

    h.list_names(&newest);
    h.restores_exactly("s1", &h.s1);
    h.restores_exactly("s2", &h.s2);
    h.restores_exactly("now", &h.now);
    let o = run_timeout(
        Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "none",
                "--vault",
                h.vol.v(),
                "--socket",
            ])
            .arg(h.vol.path("refused.sock"))
            .env("XDG_RUNTIME_DIR", h.vol.path("")),
        CMD_TIMEOUT,
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("rewind repair"),
        "{}",
        text(&o)
    );
}

#[test]
fn salvage_writes_every_readable_block_and_lists_the_rest() {
    let h = history();
    let sums = h.vol.vault.join("base").join("base.sums");
    flip(&sums, 4096 + 4 * 3000 + 1);
    let to = h.vol.path("salvaged.img");
    let o = rewind(&[
        "restore",
        "--vault",
        h.vol.v(),
        "--at",
        "s1",
        "--to",
        to.to_str().unwrap(),
        "--salvage",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["unreadable_blocks"], 1, "{j:#}");
    assert_eq!(j["unreadable"][0]["first_block"], 3000, "{j:#}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("blocks 3000..3001") && err.contains("base.sums"),
        "{err}"
    );
    let got = std::fs::read(&to).unwrap();
    let mut want = h.s1.clone();
    want[3000 * BS as usize..3001 * BS as usize].fill(0);
    assert_same(&got, &want, "salvaged image");
    // Without --salvage the same restore writes nothing.
    h.restore_fails_naming("s1", &sums);
}

fn repair(h: &History, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["repair", "--vault", h.vol.v(), "--json"];
    args.extend_from_slice(extra);
    let o = rewind(&args);
    let j = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    (o.status.code(), j)
}

#[test]
fn repair_rebuilds_missing_and_damaged_delta_maps_from_the_log() {
    let h = history();
    let s1 = h.seq_of("s1");
    let s2 = h.seq_of("s2");
    let gone = h.map_path(h.interval_ending(s2));
    std::fs::remove_file(&gone).unwrap();
    let flipped = h.map_path(h.interval_ending(s1));
    flip(&flipped, 60);
    h.restore_fails_naming("s1", &flipped);

    let (code, j) = repair(&h, &["--dry-run"]);
    assert_eq!(code, Some(0), "{j:#}");
    assert_eq!(j["maps"].as_array().unwrap().len(), 2, "{j:#}");
    assert!(!gone.exists(), "a dry run wrote the map");
    h.restore_fails_naming("s1", &flipped);

    let (code, j) = repair(&h, &[]);
    assert_eq!(code, Some(0), "{j:#}");
    assert!(
        j["maps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["rebuilt"] == true),
        "{j:#}"
    );
    assert!(h.list()["damage"].as_array().unwrap().is_empty());
    h.restores_exactly("s1", &h.s1);
    h.restores_exactly("s2", &h.s2);
    h.restores_exactly("now", &h.now);
    let (code, j) = repair(&h, &[]);
    assert_eq!(code, Some(0), "{j:#}");
    assert!(j["maps"].as_array().unwrap().is_empty(), "{j:#}");
}

#[test]
fn repair_says_what_it_cannot_mend_and_exits_3() {
    let h = history();
    let interval = h.interval_ending(h.seq_of("s2"));
    let seg = h.segment_path(interval);
    let len = std::fs::metadata(&seg).unwrap().len();
    truncate(&seg, len / 2);
    // The map is fine; its records are not: the map is not rebuilt from them.
    std::fs::remove_file(h.map_path(interval)).unwrap();
    let (code, j) = repair(&h, &[]);
    assert_eq!(code, Some(3), "{j:#}");
    assert_eq!(j["maps"][0]["rebuilt"], false, "{j:#}");
    assert_eq!(j["not_repaired"][0]["file"].as_str(), seg.to_str(), "{j:#}");
    assert!(!h.map_path(interval).exists());
}

fn newest_manifest(vault: &Path) -> PathBuf {
    std::fs::read_dir(vault)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("manifest-") && !n.contains('.')
        })
        .max()
        .unwrap()
}

#[test]
fn repair_goes_on_from_the_previous_manifest_and_says_what_that_loses() {
    let h = history();
    let newest = newest_manifest(&h.vol.vault);
    flip(&newest, 40);

    let (code, j) = repair(&h, &["--dry-run"]);
    assert_eq!(code, Some(0), "{j:#}");
    let m = &j["manifest"];
    assert_eq!(m["repaired"], true, "{j:#}");
    assert!(!m["loses"].as_array().unwrap().is_empty(), "{j:#}");
    assert!(newest.exists(), "a dry run changed the manifest");
    h.list_names(&newest);

    let o = rewind(&["repair", "--vault", h.vol.v()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("What that loses") && said.contains("machine crash"),
        "{said}"
    );
    assert!(h.list()["damage"].as_array().unwrap().is_empty());
    assert!(PathBuf::from(format!("{}.damaged", newest.display())).exists());
    h.restores_exactly("s1", &h.s1);
    h.restores_exactly("s2", &h.s2);
    h.restores_exactly("now", &h.now);
    // The next serve recovers as after a machine crash, then serves; verify is clean.
    h.serves_live();
    let o = rewind(&["verify", "--vault", h.vol.v()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = rewind(&["check", "--vault", h.vol.v()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn repair_derives_base_sums_again_only_when_asked() {
    let h = history();
    let base0 = h.vol.restore("seq:0");
    let sums = h.vol.vault.join("base").join("base.sums");
    let img = h.vol.vault.join("base").join("base.img");
    // Block 3000 is unchanged since the base (its sum comes from the primary), block 1 was
    // written since (its sum can only come from the base image file, on trust); block 3500
    // of the base image file is damaged too (the primary still holds its data).
    flip(&sums, 4096 + 4 * 3000 + 1);
    flip(&sums, 4096 + 4 + 2);
    flip(&img, 3500 * BS + 17);
    h.restore_fails_naming("s1", &sums);

    let (code, j) = repair(&h, &[]);
    assert_eq!(code, Some(3), "{j:#}");
    assert!(j["base_sums"].is_null(), "{j:#}");
    let left = &j["not_repaired"][0];
    assert_eq!(left["file"].as_str(), sums.to_str(), "{j:#}");
    assert!(
        left["repair"]
            .as_str()
            .unwrap()
            .contains("--rederive-base-sums"),
        "{j:#}"
    );

    let (code, j) = repair(&h, &["--rederive-base-sums", "--dry-run"]);
    assert_eq!(code, Some(0), "{j:#}");
    let b = &j["base_sums"];
    assert_eq!(
        b["trusted"],
        serde_json::json!([{"first_block": 1, "count": 1}]),
        "{j:#}"
    );
    assert_eq!(
        b["base_rewritten"],
        serde_json::json!([{"first_block": 3500, "count": 1}]),
        "{j:#}"
    );
    h.restore_fails_naming("s1", &sums);

    let (code, j) = repair(&h, &["--rederive-base-sums"]);
    assert_eq!(code, Some(0), "{j:#}");
    assert!(h.list()["damage"].as_array().unwrap().is_empty());
    assert_same(
        &h.vol.restore("seq:0"),
        &base0,
        "the base image after the repair",
    );
    h.restores_exactly("s1", &h.s1);
    h.restores_exactly("s2", &h.s2);
    h.restores_exactly("now", &h.now);
    let o = rewind(&["check", "--vault", h.vol.v()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
