//! `rewind serve` driven by real NBD clients: qemu-io and qemu-img, nbdinfo, nbdcopy and
//! fio's nbd engine, with several exports open at once while the live volume is written.
//! Every check is byte for byte against an in-memory model of the volume.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// One host operation through qemu-io, mirrored in the model.
#[derive(Clone, Copy, Debug)]
enum Op {
    Write(u64, u64, u8),
    /// `write -z`: NBD_CMD_WRITE_ZEROES.
    Zero(u64, u64),
    /// `discard`: NBD_CMD_TRIM; rewind makes trimmed ranges read as zeroes.
    Discard(u64, u64),
}

impl Op {
    fn cmd(self) -> String {
        match self {
            Op::Write(o, l, p) => format!("write -P {p:#04x} {o} {l}"),
            Op::Zero(o, l) => format!("write -z {o} {l}"),
            Op::Discard(o, l) => format!("discard {o} {l}"),
        }
    }
    fn apply(self, m: &mut Model) {
        match self {
            Op::Write(o, l, p) => m.write(o, l, p),
            Op::Zero(o, l) | Op::Discard(o, l) => m.zero(o, l),
        }
    }
}

/// Runs `ops` through one qemu-io process and applies them to the model.
fn apply(vol: &Vol, m: &mut Model, ops: &[Op]) {
    let cmds: Vec<String> = ops.iter().map(|o| o.cmd()).collect();
    qemu_io(&vol.uri("live"), &cmds);
    for op in ops {
        op.apply(m);
    }
}

fn first_writes(size: u64) -> Vec<Op> {
    vec![
        Op::Write(0, 4096, 0x11),
        Op::Write(4095, 2, 0x12),
        Op::Write(10_000, 70_000, 0x13),
        Op::Write(MIB + 1, 4095, 0x14),
        Op::Write(3 * MIB - 100, 200, 0x15),
        Op::Write(size - 1, 1, 0x16),
        Op::Write(size - 8192 + 17, 8192 - 17, 0x17),
        Op::Zero(5 * MIB + 123, 10_000),
        Op::Discard(6 * MIB, 256 << 10),
        Op::Write(8 * MIB, MIB, 0x18),
        Op::Write(8 * MIB + 512, 512, 0x19),
        Op::Write(9 * MIB - 3, 7, 0x1a),
    ]
}

fn second_writes(size: u64) -> Vec<Op> {
    vec![
        Op::Write(2000, 9000, 0x21),
        Op::Write(10_001, 69_998, 0x22),
        Op::Zero(0, 100),
        Op::Write(MIB, 4096 * 3, 0x23),
        Op::Discard(8 * MIB, 512 << 10),
        Op::Write(6 * MIB + 4096, 100, 0x24),
        Op::Write(size - 4096, 4096, 0x25),
        Op::Zero(12 * MIB + 1, 3 * 4096),
        Op::Write(13 * MIB + 77, 300_000, 0x26),
        // Unaligned: the partial edge blocks are zeroed, not left alone.
        Op::Discard(13 * MIB + 1000, 10_000),
    ]
}

fn nbdinfo_json(uri: &str) -> Value {
    let out = run_ok(Command::new("nbdinfo").arg("--json").arg(uri));
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["exports"].as_array().unwrap().len(), 1, "{out}");
    j["exports"][0].clone()
}

/// qemu-io patterns in, points out through `qemu-img convert`: a snapshot taken while
/// serving reads exactly as the volume was, live reads as the primary, and seq:0, seq:N,
/// a time, `now` resolve to the right images.
#[test]
fn qemu_writes_snapshot_and_convert() {
    if !have(&["qemu-io", "qemu-img"]) {
        return;
    }
    let size = 16 * MIB;
    let (vol, mut model) = Vol::new(size, Some(7));
    let at_base = model.clone();
    let _server = vol.serve();

    apply(&vol, &mut model, &first_writes(size));
    let s1 = vol.snapshot("s1");
    let at_s1 = model.clone();
    apply(&vol, &mut model, &second_writes(size));

    let got = convert(&vol.uri("@s1"), &vol.path("s1.img"));
    assert_same(&got, &at_s1.0, "@s1");
    at_s1.save(&vol.path("expect-s1.img"));
    qemu_compare(&vol.path("s1.img"), &vol.path("expect-s1.img"));

    let got = convert(&vol.uri("live"), &vol.path("live.img"));
    assert_same(&got, &model.0, "live");
    qemu_compare(&vol.path("live.img"), &vol.primary);
    assert_same(&vol.read_primary(), &model.0, "primary file");

    // Other spellings of points.
    let seq = s1["seq"].as_u64().unwrap();
    let time = s1["time"].as_str().unwrap().to_string();
    for (export, want) in [
        ("@seq:0".to_string(), &at_base),
        (format!("@seq:{seq}"), &at_s1),
        (format!("@{time}"), &at_s1),
        ("@now".to_string(), &model),
        (String::new(), &model),
    ] {
        let name = if export.is_empty() { "empty" } else { "point" };
        let got = convert(&vol.uri(&export), &vol.path(&format!("{name}.img")));
        assert_same(&got, &want.0, &format!("export {export:?}"));
    }

    // Unknown points are refused at open; read-only exports refuse writers.
    for bad in [
        "@nosuch",
        "@seq:999999",
        "nosuch",
        "@-1d",
        "@2999-01-01T00:00:00Z",
        "@bad:point",
    ] {
        let o = run_timeout(
            Command::new("qemu-img")
                .args(["info", "-f", "raw"])
                .arg(vol.uri(bad)),
            CMD_TIMEOUT,
        );
        assert!(!o.status.success(), "export {bad} opened");
    }
    let o = run_timeout(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write 0 4096"])
            .arg(vol.uri("@s1")),
        CMD_TIMEOUT,
    );
    assert!(!o.status.success(), "@s1 opened read-write");
    let got = convert(&vol.uri("@s1"), &vol.path("s1-again.img"));
    assert_same(&got, &at_s1.0, "@s1 after a refused writer");
}

/// nbdinfo sees the size, read-only flags, block sizes, every export in the list, and a
/// map whose zero extents really read as zeroes.
#[test]
fn nbdinfo_describes_lists_and_maps() {
    if !have(&["nbdinfo", "qemu-io", "qemu-img"]) {
        return;
    }
    let size = 16 * MIB;
    let (vol, mut model) = Vol::new(size, Some(11));
    let _server = vol.serve();
    apply(&vol, &mut model, &first_writes(size));
    vol.snapshot("s1");
    let at_s1 = model.clone();
    apply(&vol, &mut model, &second_writes(size));

    let live = nbdinfo_json(&vol.uri("live"));
    let s1 = nbdinfo_json(&vol.uri("@s1"));
    for (e, name, ro) in [(&live, "live", false), (&s1, "@s1", true)] {
        assert_eq!(e["export-name"], name, "{e}");
        assert_eq!(e["export-size"], size, "{e}");
        assert_eq!(e["is_read_only"], ro, "{e}");
        assert_eq!(e["can_flush"], true, "{e}");
        assert_eq!(e["can_trim"], !ro, "{e}");
        assert_eq!(e["can_zero"], !ro, "{e}");
        assert_eq!(e["can_fua"], !ro, "{e}");
        let min = e["block_size_minimum"].as_u64().unwrap();
        let pref = e["block_size_preferred"].as_u64().unwrap();
        let max = e["block_size_maximum"].as_u64().unwrap();
        assert_eq!(min, 1, "{e}");
        assert_eq!(pref, BS, "{e}");
        assert!(max >= MIB && max.is_power_of_two(), "{e}");
        let contexts = e["contexts"].as_array().unwrap();
        assert!(contexts.iter().any(|c| c == "base:allocation"), "{e}");
    }

    let out = run_ok(
        Command::new("nbdinfo")
            .args(["--list", "--json"])
            .arg(vol.uri("")),
    );
    let j: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = j["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"live") && names.contains(&"@s1"), "{out}");
    for e in j["exports"].as_array().unwrap() {
        let ro = e["export-name"] != "live";
        assert_eq!(e["is_read_only"], ro, "{e}");
        assert_eq!(e["export-size"], size, "{e}");
    }
    // The human form, too.
    let human = run_ok(Command::new("nbdinfo").arg("--list").arg(vol.uri("")));
    assert!(human.contains("export=\"live\"") && human.contains("export=\"@s1\""));

    // Maps: contiguous from 0 to the size, and an extent said to be zero is zero.
    // 6 MiB..+256 KiB was discarded before s1, 8 MiB..+512 KiB after.
    for (export, want, zero_range) in [
        ("live", &model, (8 * MIB, 8 * MIB + (512 << 10))),
        ("@s1", &at_s1, (6 * MIB, 6 * MIB + (256 << 10))),
    ] {
        let out = run_ok(
            Command::new("nbdinfo")
                .args(["--map", "--json"])
                .arg(vol.uri(export)),
        );
        let extents: Vec<Value> = serde_json::from_str(&out).unwrap();
        let mut at = 0;
        let mut zero_bytes_in_range = 0;
        for e in &extents {
            let (o, l, t) = (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["type"].as_u64().unwrap(),
            );
            assert_eq!(o, at, "{export}: map has a gap or overlap: {out}");
            at = o + l;
            if t & 2 != 0 {
                let bytes = &want.0[o as usize..at as usize];
                assert!(
                    bytes.iter().all(|&b| b == 0),
                    "{export}: extent {o}+{l} is mapped as zero but holds data"
                );
                let (zs, ze) = zero_range;
                zero_bytes_in_range += at.min(ze).saturating_sub(o.max(zs));
            }
        }
        assert_eq!(at, size, "{export}: map does not cover the export: {out}");
        assert_eq!(
            zero_bytes_in_range,
            zero_range.1 - zero_range.0,
            "{export}: the discarded range is not mapped as zero: {out}"
        );
        // The human form works as well.
        run_ok(Command::new("nbdinfo").arg("--map").arg(vol.uri(export)));

        // qemu-img map asks for block status at many offsets; zero must mean zero.
        let out = run_ok(
            Command::new("qemu-img")
                .args(["map", "-f", "raw", "--output=json"])
                .arg(vol.uri(export)),
        );
        let extents: Vec<Value> = serde_json::from_str(&out).unwrap();
        let mut at = 0;
        for e in &extents {
            let (o, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            assert_eq!(o, at, "{export}: qemu-img map: {out}");
            at = o + l;
            if e["zero"] == true {
                assert!(
                    want.0[o as usize..at as usize].iter().all(|&b| b == 0),
                    "{export}: qemu-img map says {o}+{l} is zero but it holds data"
                );
            }
        }
        assert_eq!(at, size, "{export}: qemu-img map: {out}");
    }
}

/// `(offset, length, type)` of every extent `nbdinfo --map` lists.
fn nbdinfo_map(uri: &str) -> Vec<(u64, u64, u64)> {
    let out = run_ok(Command::new("nbdinfo").args(["--map", "--json"]).arg(uri));
    let extents: Vec<Value> = serde_json::from_str(&out).unwrap();
    extents
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["type"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `(start, length, data, zero)` of every extent `qemu-img map` lists (it walks the export
/// one extent per request, NBD_CMD_FLAG_REQ_ONE).
fn qemu_img_map(uri: &str) -> Vec<(u64, u64, bool, bool)> {
    let out = run_ok(
        Command::new("qemu-img")
            .args(["map", "-f", "raw", "--output=json"])
            .arg(uri),
    );
    let extents: Vec<Value> = serde_json::from_str(&out).unwrap();
    extents
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["data"] == true,
                e["zero"] == true,
            )
        })
        .collect()
}

/// Point exports map from extents: the base image of an empty sparse volume is one hole,
/// and after a whole-volume trim and a few writes, exactly the writes are data.
#[test]
fn point_exports_map_base_holes_and_trims() {
    if !have(&["nbdinfo", "qemu-io", "qemu-img"]) {
        return;
    }
    let size = 256 * MIB;
    let (vol, mut model) = Vol::new(size, None);
    let _server = vol.serve();
    let hole = 3; // STATE_HOLE | STATE_ZERO
    assert_eq!(nbdinfo_map(&vol.uri("@seq:0")), vec![(0, size, hole)]);
    assert_eq!(
        qemu_img_map(&vol.uri("@seq:0")),
        vec![(0, size, false, true)]
    );
    apply(
        &vol,
        &mut model,
        &[
            Op::Discard(0, 128 * MIB),
            Op::Discard(128 * MIB, 128 * MIB),
            Op::Write(MIB, MIB, 0x31),
            Op::Write(100 * MIB, 64 << 10, 0x32),
            Op::Write(size - 4096, 4096, 0x33),
        ],
    );
    vol.snapshot("after");
    let want = vec![
        (0, MIB, hole),
        (MIB, MIB, 0),
        (2 * MIB, 98 * MIB, hole),
        (100 * MIB, 64 << 10, 0),
        (
            100 * MIB + (64 << 10),
            size - 4096 - 100 * MIB - (64 << 10),
            hole,
        ),
        (size - 4096, 4096, 0),
    ];
    assert_eq!(nbdinfo_map(&vol.uri("@after")), want);
    let qemu: Vec<(u64, u64, bool, bool)> = want
        .iter()
        .map(|&(o, l, t)| (o, l, t == 0, t != 0))
        .collect();
    assert_eq!(qemu_img_map(&vol.uri("@after")), qemu);
    let got = convert(&vol.uri("@after"), &vol.path("after.img"));
    assert_same(&got, &model.0, "@after through qemu-img convert");
    // The live volume was never written before the trim: seq:0 is still one hole.
    assert_eq!(nbdinfo_map(&vol.uri("@seq:0")), vec![(0, size, hole)]);
}

/// nbdcopy into live (multi-conn, zeroes for holes), out of live and out of a snapshot,
/// and a snapshot copied back over live (a rollback through NBD).
#[test]
fn nbdcopy_in_and_out() {
    if !have(&["nbdcopy", "qemu-io"]) {
        return;
    }
    let size = 32 * MIB;
    let (vol, _) = Vol::new(size, Some(3));
    let _server = vol.serve();

    // A source image: random data in every other 256 KiB, holes between. Where the
    // primary has data and the source a hole, nbdcopy must write zeroes.
    let src = vol.path("src.img");
    let src_model = {
        let f = std::fs::File::create(&src).unwrap();
        f.set_len(size).unwrap();
        let mut data = vec![0u8; size as usize];
        let mut rng = Rng(0x5eed);
        for (i, chunk) in data.chunks_mut(256 << 10).enumerate() {
            if i % 2 == 0 {
                rng.fill(chunk);
                std::os::unix::fs::FileExt::write_all_at(&f, chunk, (i as u64) * (256 << 10))
                    .unwrap();
            }
        }
        Model(data)
    };
    run_ok(
        Command::new("nbdcopy")
            .arg("--flush")
            .arg(&src)
            .arg(vol.uri("live")),
    );
    let mut model = src_model;
    assert_same(&vol.read_primary(), &model.0, "primary after nbdcopy in");
    vol.snapshot("s1");
    let at_s1 = model.clone();

    apply(
        &vol,
        &mut model,
        &[
            Op::Write(100, 1_000_000, 0x31),
            Op::Discard(4 * MIB, MIB),
            Op::Write(size - 5000, 5000, 0x32),
        ],
    );

    let out = vol.path("live-out.img");
    run_ok(Command::new("nbdcopy").arg(vol.uri("live")).arg(&out));
    assert_same(&std::fs::read(&out).unwrap(), &model.0, "nbdcopy live out");
    qemu_compare(&out, &vol.primary);

    let out = vol.path("s1-out.img");
    run_ok(Command::new("nbdcopy").arg(vol.uri("@s1")).arg(&out));
    assert_same(&std::fs::read(&out).unwrap(), &at_s1.0, "nbdcopy @s1 out");
    qemu_compare(&out, &src);

    // Roll live back to s1 through NBD; the vault keeps the rollback as new history.
    run_ok(
        Command::new("nbdcopy")
            .arg("--flush")
            .arg(vol.uri("@s1"))
            .arg(vol.uri("live")),
    );
    assert_same(
        &vol.read_primary(),
        &at_s1.0,
        "live after copying @s1 over it",
    );
    let out = vol.path("now-out.img");
    run_ok(Command::new("nbdcopy").arg(vol.uri("@now")).arg(&out));
    assert_same(
        &std::fs::read(&out).unwrap(),
        &at_s1.0,
        "@now after rollback",
    );
}

fn fio(vol: &Vol, name: &str, args: &[&str]) -> Value {
    let out_file = vol.path(&format!("fio-{name}.json"));
    let mut c = Command::new("fio");
    c.arg(format!("--name={name}"))
        .arg("--ioengine=nbd")
        .arg(format!("--uri={}", vol.uri("live")))
        .args(args)
        .arg("--verify_state_save=0")
        .arg("--output-format=json")
        .arg(format!("--output={}", out_file.display()));
    run_ok(&mut c);
    // fio may print notes before the JSON document.
    let text = std::fs::read_to_string(&out_file).unwrap();
    let j: Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    let job = j["jobs"][0].clone();
    assert_eq!(job["error"], 0, "fio {name}: {job}");
    job
}

fn fio_has_nbd() -> bool {
    let out = run_ok(Command::new("fio").arg("--enghelp"));
    need(
        out.split_whitespace().any(|w| w == "nbd"),
        "fio has no nbd engine (fio --enghelp)",
    )
}

/// fio's nbd engine: 4 KiB random writes at queue depth 32 with flushes, and 1 MiB
/// sequential writes, both verified with crc32c; afterwards the vault's newest point
/// equals the live volume.
#[test]
fn fio_random_and_sequential_writes_verify() {
    if !have(&["fio", "qemu-img"]) || !fio_has_nbd() {
        return;
    }
    let size = 64 * MIB;
    let (vol, _) = Vol::new(size, Some(5));
    let _server = vol.serve();

    let job = fio(
        &vol,
        "randwrite",
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--size=32M",
            "--fsync=64",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
        ],
    );
    assert_eq!(job["write"]["io_bytes"], 32 * MIB, "{job}");
    assert_eq!(job["read"]["io_bytes"], 32 * MIB, "verify read back: {job}");

    let job = fio(
        &vol,
        "seqwrite",
        &[
            "--rw=write",
            "--bs=1M",
            "--iodepth=8",
            "--offset=32M",
            "--size=32M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
        ],
    );
    assert_eq!(job["write"]["io_bytes"], 32 * MIB, "{job}");
    assert_eq!(job["read"]["io_bytes"], 32 * MIB, "verify read back: {job}");

    // The journal kept every write in the primary's order.
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(vol.uri("live"))
            .arg(vol.uri("@now")),
    );
    let st: Value =
        serde_json::from_str(&rewind_ok(&["status", "--vault", vol.v(), "--json"])).unwrap();
    assert_eq!(st["serving"], true, "{st}");
    assert_eq!(st["errors"], 0, "{st}");
    assert!(st["bytes_written"].as_u64().unwrap() >= 64 * MIB, "{st}");
    assert!(st["flushes"].as_u64().unwrap() > 0, "{st}");
    // Memory, by part, with its bounds.
    let m = &st["memory"];
    let rss = m["resident_bytes"].as_u64().unwrap();
    assert!(
        rss > 0 && rss <= m["peak_resident_bytes"].as_u64().unwrap(),
        "{m}"
    );
    let c = &m["caches"];
    assert!(
        c["delta_map_bytes"].as_u64().unwrap() <= c["delta_map_bytes_limit"].as_u64().unwrap(),
        "{m}"
    );
    assert!(c["segment_files_limit"].as_u64().unwrap() > 0, "{m}");
    assert!(
        m["open_interval"]["present_map_bytes"].as_u64().is_some(),
        "{m}"
    );
    assert!(
        m["per_connection_limit_bytes"].as_u64().unwrap() >= 64 * MIB,
        "{m}"
    );
    assert!(m["write_behind"]["kept_bytes"].as_u64().is_some(), "{m}");
    let human = rewind_ok(&["status", "--vault", vol.v()]);
    assert!(
        human.contains("memory ") && human.contains("resident"),
        "{human}"
    );
}

/// A snapshot and live open at once, from several processes, while live is written: the
/// snapshot never moves, readers of live get answers, the writer's data verifies.
#[test]
fn several_exports_at_once_while_live_is_written() {
    if !have(&["fio", "qemu-io", "qemu-img", "nbdinfo"]) || !fio_has_nbd() {
        return;
    }
    let size = 32 * MIB;
    let (vol, mut model) = Vol::new(size, Some(9));
    let _server = vol.serve();
    let marks = [
        Op::Write(0, 64 << 10, 0x41),
        Op::Write(MIB + 3, 100_000, 0x42),
        Op::Write(20 * MIB, 2 * MIB, 0x43),
    ];
    apply(&vol, &mut model, &marks);
    vol.snapshot("s1");
    let at_s1 = model.clone();

    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            fio(
                &vol,
                "busy",
                &[
                    "--rw=randwrite",
                    "--bs=4k",
                    "--iodepth=16",
                    "--size=32M",
                    "--time_based",
                    "--runtime=4",
                    "--fsync=32",
                    // Time-based jobs have no verify phase: verify as they go.
                    "--verify=crc32c",
                    "--verify_backlog=256",
                    "--verify_fatal=1",
                ],
            )
        });
        let converter = s.spawn(|| {
            for i in 0..3 {
                let got = convert(&vol.uri("@s1"), &vol.path(&format!("busy-s1-{i}.img")));
                assert_same(&got, &at_s1.0, "@s1 while live is written");
            }
        });
        let patterns = s.spawn(|| {
            let cmds: Vec<String> = marks
                .iter()
                .map(|op| match op {
                    Op::Write(o, l, p) => format!("read -P {p:#04x} {o} {l}"),
                    _ => unreachable!(),
                })
                .collect();
            for _ in 0..10 {
                qemu_io(&vol.uri("@s1"), &cmds);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let info = s.spawn(|| {
            for _ in 0..4 {
                assert_eq!(nbdinfo_json(&vol.uri("@s1"))["is_read_only"], true);
                assert_eq!(nbdinfo_json(&vol.uri("live"))["is_read_only"], false);
                run_ok(
                    Command::new("qemu-io")
                        .args(["-r", "-f", "raw", "-c", "read 0 1M", "-c", "read 31M 1M"])
                        .arg(vol.uri("live")),
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        for t in [converter, patterns, info] {
            t.join().unwrap();
        }
        let job = writer.join().unwrap();
        assert!(job["write"]["io_bytes"].as_u64().unwrap() > 0, "{job}");
        assert!(
            job["read"]["io_bytes"].as_u64().unwrap() > 0,
            "verified: {job}"
        );
    });

    let got = convert(&vol.uri("@s1"), &vol.path("s1-after.img"));
    assert_same(&got, &at_s1.0, "@s1 after the busy writer");
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(vol.uri("live"))
            .arg(vol.uri("@now")),
    );
}

/// The same over loopback TCP (a free port): qemu-io writes, nbdinfo and qemu-img read,
/// a snapshot export opens by name.
#[test]
fn tcp_clients() {
    if !have(&["qemu-io", "qemu-img", "nbdinfo"]) {
        return;
    }
    let size = 16 * MIB;
    let (vol, mut model) = Vol::new(size, Some(23));
    let server = vol.serve_tcp();
    let addr = server.tcp.clone().unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "binds loopback: {addr}");
    let uri = |export: &str| format!("nbd://{addr}/{export}");
    let ops = [
        Op::Write(7, 10_000, 0x51),
        Op::Zero(MIB - 5, 10),
        Op::Write(size - 3, 3, 0x52),
    ];
    qemu_io(
        &uri("live"),
        &ops.iter().map(|o| o.cmd()).collect::<Vec<_>>(),
    );
    for op in ops {
        op.apply(&mut model);
    }
    vol.snapshot("t1");
    qemu_io(&uri("live"), &[Op::Write(0, 100, 0x53).cmd()]);
    let info = nbdinfo_json(&uri("@t1"));
    assert_eq!(info["is_read_only"], true, "{info}");
    assert_eq!(info["export-size"], size, "{info}");
    let got = convert(&uri("@t1"), &vol.path("t1.img"));
    assert_same(&got, &model.0, "@t1 over TCP");
    model.write(0, 100, 0x53);
    let got = convert(&uri("live"), &vol.path("live.img"));
    assert_same(&got, &model.0, "live over TCP");
}

/// Snapshots taken over the control socket while qemu-io streams writes: each is exactly
/// the volume after some prefix of the writes, and that prefix holds every write
/// acknowledged before the snapshot was requested (none torn, none reordered).
#[test]
fn snapshots_during_a_write_stream_are_prefixes() {
    if !have(&["qemu-io", "qemu-img"]) {
        return;
    }
    let size = 16 * MIB;
    let (vol, base) = Vol::new(size, Some(29));
    let _server = vol.serve();
    let mut q = QemuIo::start(&vol, "live", "qemu-io-stream.log");
    let stdin = q.stdin.take().unwrap();
    let cmds: Arc<Mutex<Vec<W>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (cmds, stop) = (cmds.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut stdin = stdin;
            let mut rng = Rng(0xabc);
            let mut j = 0;
            while !stop.load(Ordering::Relaxed) {
                let w = gen_write(&mut rng, j, size);
                cmds.lock().unwrap().push(w);
                if stdin.write_all(w.cmd().as_bytes()).is_err() {
                    break;
                }
                j += 1;
            }
        })
    };
    let mut acked = 0;
    let take = |q: &QemuIo, acked: &mut usize| {
        if let Ev::Wrote { off, len } = q.next(Duration::from_secs(60)) {
            let w = cmds.lock().unwrap()[*acked];
            assert_eq!((w.off, w.len), (off, len));
            *acked += 1;
        }
    };
    let mut snaps = Vec::new();
    for i in 0..6 {
        while acked < (i + 1) * 150 {
            take(&q, &mut acked);
        }
        let name = format!("p{i}");
        vol.snapshot(&name);
        snaps.push((name, acked));
    }
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    let total = acked
        + q.finish()
            .iter()
            .filter(|e| matches!(e, Ev::Wrote { .. }))
            .count();
    let cmds = cmds.lock().unwrap().clone();

    for (name, before) in snaps {
        let got = convert(&vol.uri(&format!("@{name}")), &vol.path("p.img"));
        let mut m = base.clone();
        for w in &cmds[..before] {
            m.write(w.off, w.len, w.pat);
        }
        let mut k = before;
        while got != m.0 {
            assert!(
                k < total,
                "@{name} is not the volume after any prefix of writes {before}..{total}"
            );
            let w = cmds[k];
            m.write(w.off, w.len, w.pat);
            k += 1;
        }
        eprintln!("@{name}: requested after {before} acknowledged writes, holds {k}");
    }
}
