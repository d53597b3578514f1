//! Stopping `rewind serve`, hard and soft. `kill -9` in the middle of a client's stream of
//! writes and flushes loses nothing a completed flush (or FUA write) covered, in the
//! primary or the vault; SIGTERM and SIGINT finish in-flight requests, seal the write
//! log and exit 0, and the server starts again on the same primary and vault.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

const FLUSH_EVERY: u64 = 6;

/// qemu-io streams unique-pattern writes (some FUA) with a flush after every few, and
/// reports each completion; the server is killed with SIGKILL mid-stream. After a
/// restart, every write acknowledged before the last completed flush (or before an
/// acknowledged FUA write) reads back from live and from the vault's `@now`; bytes only
/// later writes touched hold either the durable data or one of those writes' patterns.
#[test]
fn kill_9_keeps_every_flushed_write() {
    if !have(&["qemu-io", "qemu-img"]) {
        return;
    }
    let size = 64 * MIB;
    let (vol, base) = Vol::new(size, Some(13));
    let mut server = vol.serve();

    let mut q = QemuIo::start(&vol, "live", "qemu-io-crash.log");
    let stdin = q.stdin.take().unwrap();
    let cmds: Arc<Mutex<Vec<W>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (cmds, stop) = (cmds.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut stdin = stdin;
            let mut rng = Rng(0xc0ffee);
            let mut j = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let w = gen_write(&mut rng, j, size);
                cmds.lock().unwrap().push(w);
                let mut s = w.cmd();
                if j % FLUSH_EVERY == FLUSH_EVERY - 1 {
                    // The marker read completes only after the flush before it did.
                    s += &format!("flush\nread {} 1\n", j / FLUSH_EVERY);
                }
                if stdin.write_all(s.as_bytes()).is_err() {
                    break;
                }
                j += 1;
            }
        })
    };

    let mut events = Vec::new();
    let mut flushes = 0;
    let start = Instant::now();
    while flushes < 40 {
        let ev = q.next(Duration::from_secs(60));
        if matches!(ev, Ev::Flushed(_)) {
            flushes += 1;
        }
        events.push(ev);
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the stream is too slow"
        );
    }
    // Let a few more writes go out, then crash.
    let mut more = 0;
    while more < 4 {
        let ev = q.next(Duration::from_secs(60));
        if matches!(ev, Ev::Wrote { .. }) {
            more += 1;
        }
        events.push(ev);
    }
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    events.extend(q.finish());

    // Which writes were acknowledged, and which are covered by a completed flush or FUA.
    let cmds = cmds.lock().unwrap().clone();
    let (mut acked, mut durable, mut seen_flushes) = (0usize, 0usize, 0u64);
    for ev in &events {
        match *ev {
            Ev::Wrote { off, len } => {
                let w = cmds[acked];
                assert_eq!(
                    (w.off, w.len),
                    (off, len),
                    "qemu-io acknowledged out of order"
                );
                acked += 1;
                if w.fua {
                    durable = acked;
                }
            }
            Ev::Flushed(n) => {
                assert_eq!(n, seen_flushes, "flush markers out of order");
                seen_flushes += 1;
                let before = ((n + 1) * FLUSH_EVERY) as usize;
                assert!(before <= acked, "flush {n} completed before its writes");
                durable = durable.max(before);
            }
        }
    }
    assert!(seen_flushes >= 40 && durable >= 40 * FLUSH_EVERY as usize);
    let mut model = base;
    for w in &cmds[..durable] {
        model.write(w.off, w.len, w.pat);
    }
    // Acknowledged after the last durability point, plus the one that was in flight.
    let maybe = &cmds[durable..(acked + 1).min(cmds.len())];

    let _server = vol.serve();
    let live = convert(&vol.uri("live"), &vol.path("live.img"));
    let landed = check_durable(&live, &model, maybe, "live after kill -9");
    let now = convert(&vol.uri("@now"), &vol.path("now.img"));
    check_durable(&now, &model, maybe, "@now after kill -9");
    eprintln!(
        "{acked} writes acknowledged, {durable} durable, {} maybe; {landed} bytes of those \
         reached the primary",
        maybe.len()
    );
    // A killed process (unlike a power cut) loses no acknowledged write at all: the
    // primary's page cache survives, and so do log records handed to the OS before each
    // reply. Only the write in flight may be missing, or be in one and not the other.
    let mut all_acked = model.clone();
    for w in &cmds[durable..acked] {
        all_acked.write(w.off, w.len, w.pat);
    }
    let in_flight = &cmds[acked..(acked + 1).min(cmds.len())];
    check_durable(&live, &all_acked, in_flight, "live: acknowledged writes");
    check_durable(&now, &all_acked, in_flight, "@now: acknowledged writes");

    // The restarted server keeps protecting: a write, a snapshot, a point that reads it.
    qemu_io(
        &vol.uri("live"),
        &["write -P 0xee 12345 20000".to_string(), "flush".to_string()],
    );
    vol.snapshot("after-crash");
    let got = convert(&vol.uri("@after-crash"), &vol.path("after.img"));
    assert!(got[12345..32345].iter().all(|&b| b == 0xee), "@after-crash");
    model.write(12345, 20000, 0xee);
    check_durable(&got, &model, maybe, "@after-crash");
}

fn intervals(list: &Value) -> Vec<Value> {
    list["intervals"].as_array().unwrap().clone()
}

fn assert_sealed(vol: &Vol, min_seq: u64) -> u64 {
    let list = vol.list();
    let ivs = intervals(&list);
    assert!(!ivs.is_empty(), "{list}");
    for iv in &ivs {
        assert_eq!(
            iv["state"], "sealed",
            "every interval sealed after a stop: {list}"
        );
    }
    let newest = list["vault"]["newest_seq"].as_u64().unwrap();
    assert_eq!(ivs.last().unwrap()["seq_to"], newest, "{list}");
    assert!(newest >= min_seq, "newest seq {newest} < {min_seq}: {list}");
    newest
}

/// SIGTERM with a client connected and writes acknowledged but never flushed: exit 0,
/// the log sealed, everything written in the vault. Then serve again, write, SIGINT.
#[test]
fn sigterm_and_sigint_seal_and_restart() {
    if !have(&["qemu-io", "qemu-img"]) {
        return;
    }
    let size = 32 * MIB;
    let (vol, mut model) = Vol::new(size, Some(17));
    let mut server = vol.serve();

    let mut q = QemuIo::start(&vol, "live", "qemu-io-term.log");
    let mut rng = Rng(77);
    let writes: Vec<W> = (0..50).map(|j| gen_write(&mut rng, j, size)).collect();
    for w in &writes {
        q.send(&w.cmd());
        match q.next(Duration::from_secs(30)) {
            Ev::Wrote { off, len } => assert_eq!((off, len), (w.off, w.len)),
            ev => panic!("unexpected {ev:?}"),
        }
        model.write(w.off, w.len, w.pat);
    }
    // qemu-io is still connected, idle, and has never flushed.
    let st: Value =
        serde_json::from_str(&rewind_ok(&["status", "--vault", vol.v(), "--json"])).unwrap();
    assert_eq!(st["flushes"], 0, "{st}");
    assert_eq!(st["writes"], writes.len(), "{st}");
    let st = server.stop("TERM", Duration::from_secs(30));
    assert!(st.success(), "SIGTERM: {st}\n{}", server.log_text());
    assert!(
        server.log_text().contains("Stopped cleanly"),
        "{}",
        server.log_text()
    );
    assert!(!vol.socket.exists(), "the NBD socket is removed on exit");
    assert!(
        !vol.vault.join("control").exists(),
        "a clean stop removes the control pointer"
    );
    drop(q);

    let first = assert_sealed(&vol, writes.len() as u64);
    assert_same(&vol.restore("now"), &model.0, "restore now after SIGTERM");
    assert_same(&vol.read_primary(), &model.0, "primary after SIGTERM");

    // Again: the server starts on the same primary and vault, and stops on SIGINT.
    let mut server = vol.serve();
    let got = convert(&vol.uri("live"), &vol.path("live-restarted.img"));
    assert_same(&got, &model.0, "live after restart");
    let before_more = model.clone();
    let more = [W {
        off: 5 * MIB + 3,
        len: 70_000,
        pat: 0x99,
        fua: false,
    }];
    qemu_io(
        &vol.uri("live"),
        &more
            .iter()
            .map(|w| w.cmd().trim().to_string())
            .collect::<Vec<_>>(),
    );
    model.write(more[0].off, more[0].len, more[0].pat);
    let st = server.stop("INT", Duration::from_secs(30));
    assert!(st.success(), "SIGINT: {st}\n{}", server.log_text());
    let second = assert_sealed(&vol, first + 1);
    assert!(second > first);
    assert_same(&vol.restore("now"), &model.0, "restore now after SIGINT");
    assert_same(
        &vol.restore(&format!("seq:{first}")),
        &before_more.0,
        "restore at the seq SIGTERM sealed",
    );
}

/// SIGTERM while fio has 32 requests in flight: the server finishes what it read, exits
/// 0, and the vault's newest point is exactly the primary.
#[test]
fn sigterm_during_fio_finishes_in_flight_requests() {
    if !have(&["fio", "qemu-img"]) {
        return;
    }
    let size = 64 * MIB;
    let (vol, _) = Vol::new(size, Some(19));
    let mut server = vol.serve();
    let mut fio = ChildGuard(
        Command::new("fio")
            .args([
                "--name=busy",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bs=16k",
                "--iodepth=32",
                "--size=64M",
                "--time_based",
                "--runtime=60",
                "--fsync=100",
            ])
            .arg(format!("--uri={}", vol.uri("live")))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(vol.path("fio.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Stop once fio is well under way.
    let start = Instant::now();
    loop {
        let st: Value =
            serde_json::from_str(&rewind_ok(&["status", "--vault", vol.v(), "--json"])).unwrap();
        if st["writes"].as_u64().unwrap() >= 2000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "fio did not get going: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = server.stop("TERM", Duration::from_secs(60));
    assert!(
        st.success(),
        "SIGTERM under load: {st}\n{}",
        server.log_text()
    );
    // fio loses its server; it must not hang.
    fio.wait(Duration::from_secs(60));

    let newest = assert_sealed(&vol, 2000);
    assert_same(
        &vol.restore("now"),
        &vol.read_primary(),
        &format!("vault at seq {newest} vs the primary after SIGTERM under load"),
    );

    let _server = vol.serve();
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(vol.uri("live"))
            .arg(vol.uri("@now")),
    );
}

/// A write acknowledged but never flushed when the server is killed is in the primary
/// (the page cache outlives the process) and must be in the vault too: every write hands
/// its records to the OS before it is acknowledged. Otherwise, after a restart, the host
/// reads data no point of the vault holds, and a snapshot is not what the volume was.
#[test]
fn kill_9_leaves_primary_and_vault_agreeing() {
    if !have(&["qemu-io", "qemu-img"]) {
        return;
    }
    let (vol, _) = Vol::new(16 * MIB, None);
    let mut server = vol.serve();
    let mut q = QemuIo::start(&vol, "live", "qemu-io-gap.log");
    q.send("write -P 0xab 0 4096\n");
    assert!(matches!(q.next(Duration::from_secs(30)), Ev::Wrote { .. }));
    server.kill9();
    q.finish();
    let _server = vol.serve();
    vol.snapshot("after");
    let live = convert(&vol.uri("live"), &vol.path("live.img"));
    let after = convert(&vol.uri("@after"), &vol.path("after.img"));
    assert_same(&after, &live, "snapshot taken after the restart vs live");
}
