//! `rewind restore --in-place` interrupted by kill -9 or Ctrl-C: the intent it leaves makes
//! the next `restore --in-place`, `--resume` or `rewind serve` finish it, to exactly the
//! point asked for, with the state before the first attempt kept as the one undo
//! snapshot; an offline `sync` refuses meanwhile, and nothing is ever marked suspect.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

/// A volume whose snapshot `target` is all 0xaa and whose newest point is all 0xbb.
/// Returns the image at `target`.
fn history() -> (Vol, Vec<u8>) {
    let (vol, _) = Vol::new(SIZE, None);
    let mut s = vol.serve();
    qemu_io(
        &vol.uri("live"),
        &["write -P 0xaa 0 64M".into(), "flush".into()],
    );
    vol.snapshot("target");
    qemu_io(
        &vol.uri("live"),
        &["write -P 0xbb 0 64M".into(), "flush".into()],
    );
    assert!(s.stop("TERM", Duration::from_secs(60)).success());
    let want = vol.restore("target");
    assert!(want.iter().all(|&b| b == 0xaa));
    (vol, want)
}

fn list(vol: &Vol) -> Value {
    vol.list()
}

/// Starts a slowed-down in-place restore to `target` and returns it once it is copying
/// (the intent and the undo snapshot are committed).
fn start_restore(vol: &Vol) -> Child {
    let child = Command::new(BIN)
        .args([
            "restore",
            "--vault",
            vol.v(),
            "--at",
            "target",
            "--in-place",
        ])
        .env("REWIND_TEST_COPY_DELAY_MS", "100")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let j = list(vol);
        let undo = j["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"].as_str().unwrap().starts_with("undo-restore"));
        if !j["interrupted_restore"].is_null() && undo {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the restore did not start: {j}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(150));
    child
}

fn finished(vol: &Vol, want: &[u8]) {
    finished_from(vol, want, &|b: &[u8]| b.iter().all(|&x| x == 0xbb));
}

/// Like [`finished`], with `before` checking the undo snapshot's image.
fn finished_from(vol: &Vol, want: &[u8], before: &dyn Fn(&[u8]) -> bool) {
    assert!(vol.read_primary() == want, "the primary is at the target");
    let j = list(vol);
    assert!(j["interrupted_restore"].is_null(), "{j}");
    let undo: Vec<&Value> = j["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"].as_str().unwrap().starts_with("undo-restore"))
        .collect();
    assert_eq!(undo.len(), 1, "one undo snapshot: {undo:?}");
    let image = vol.restore(undo[0]["name"].as_str().unwrap());
    assert!(before(&image), "undo is the state before");
    assert_eq!(j["base"]["suspect"], Value::Bool(false));
    for i in j["intervals"].as_array().unwrap() {
        assert_eq!(i["suspect"], Value::Bool(false), "{i}");
    }
    rewind_ok(&["verify", "--vault", vol.v()]);
}

#[test]
fn a_killed_in_place_restore_is_finished_by_the_next_one() {
    if !have(&["qemu-io"]) {
        return;
    }
    let (vol, want) = history();
    let mut child = start_restore(&vol);
    child.kill().unwrap();
    child.wait().unwrap();
    let hybrid = vol.read_primary();
    assert!(hybrid != want, "the kill came before the copy ended");
    let j = list(&vol);
    assert_eq!(j["interrupted_restore"]["point"], "target", "{j}");
    // Syncing the mix into the vault is refused and says how to go on.
    let o = run_timeout(
        Command::new(BIN).args(["sync", "--vault", vol.v()]),
        CMD_TIMEOUT,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--in-place --resume"), "{err}");
    // The next in-place restore to the same point finishes it.
    let o = run_timeout(
        Command::new(BIN).args([
            "restore",
            "--vault",
            vol.v(),
            "--at",
            "target",
            "--in-place",
        ]),
        CMD_TIMEOUT,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("was interrupted; finishing it"), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("--vault {}", vol.v())),
        "undo names the vault: {out}"
    );
    finished(&vol, &want);
}

#[test]
fn ctrl_c_stops_an_in_place_restore_and_serve_finishes_it() {
    if !have(&["qemu-io"]) {
        return;
    }
    let (vol, want) = history();
    let child = start_restore(&vol);
    run_ok(Command::new("kill").args(["-INT", &child.id().to_string()]));
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(130),
        "128 + SIGINT, as a shell reports it: {err}"
    );
    assert!(err.contains("was interrupted after"), "{err}");
    assert!(
        err.contains(&format!(
            "rewind restore --vault {} --in-place --resume",
            vol.v()
        )),
        "{err}"
    );
    assert!(vol.read_primary() != want, "stopped before the end");
    // `rewind serve` finishes it before any client sees the mix.
    let mut s = vol.serve();
    assert!(
        s.log_text()
            .contains("was interrupted; finishing it before serving"),
        "{}",
        s.log_text()
    );
    let live = convert(&vol.uri("live"), &vol.path("live.img"));
    assert!(live == want, "clients see the target");
    assert!(s.stop("TERM", Duration::from_secs(60)).success());
    finished(&vol, &want);
}

#[test]
fn resume_with_nothing_interrupted_says_so() {
    let (vol, _) = Vol::new(4 * MIB, None);
    let o = run_timeout(
        Command::new(BIN).args(["restore", "--vault", vol.v(), "--in-place", "--resume"]),
        CMD_TIMEOUT,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("nothing to resume"), "{err}");
}

/// While `rewind serve` runs: `restore --in-place` goes through its control socket; the
/// server disconnects its clients, refuses `live` with a message saying why while it copies
/// (a point export opens meanwhile), and serves `live` at exactly the point afterwards.
#[test]
fn an_online_in_place_restore_disconnects_clients_and_ends_at_the_point() {
    if !have(&["qemu-io", "qemu-img", "nbdinfo"]) {
        return;
    }
    let (vol, want) = history();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "none", "--vault", vol.v(), "--socket"])
        .arg(&vol.socket)
        .env("REWIND_TEST_COPY_DELAY_MS", "100");
    let mut server = Server::spawn(&vol, cmd, true);
    // A client on live throughout.
    let mut client = QemuIo::start(&vol, "live", "client.log");
    client.send("write -P 0xcc 0 4096\n");
    assert!(matches!(client.next(CMD_TIMEOUT), Ev::Wrote { .. }));
    let mut restore = Command::new(BIN)
        .args([
            "restore",
            "--vault",
            vol.v(),
            "--at",
            "target",
            "--in-place",
            "--json",
        ])
        .env("XDG_RUNTIME_DIR", vol.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While it copies: live is refused with the reason (qemu prints the server's text;
    // libnbd's tools only the kind of refusal), a point opens.
    let start = Instant::now();
    let refused = loop {
        let o = run_timeout(
            Command::new("qemu-img")
                .args(["info", "-f", "raw"])
                .arg(vol.uri("live")),
            CMD_TIMEOUT,
        );
        let text = String::from_utf8_lossy(&o.stderr).into_owned();
        // (A connection accepted while the server disconnects its clients is closed too.)
        if text.contains("being restored") {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "live was never closed: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(refused.contains("being restored in place"), "{refused}");
    run_ok(Command::new("nbdinfo").arg(vol.uri("@target")));
    assert!(restore.wait().unwrap().success());
    let mut out = String::new();
    std::io::Read::read_to_string(restore.stdout.as_mut().unwrap(), &mut out).unwrap();
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["point"], "target", "{j}");
    // The client was disconnected; a new one sees the point.
    client.send("write -P 0xdd 8192 4096\n");
    let events = client.finish();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Ev::Wrote { off: 8192, .. })),
        "the old connection still wrote: {events:?}"
    );
    let live = convert(&vol.uri("live"), &vol.path("live.img"));
    assert!(live == want, "live is at the target");
    assert!(server.stop("TERM", Duration::from_secs(60)).success());
    // The undo snapshot holds what the client wrote before the restore.
    finished_from(&vol, &want, &|b: &[u8]| {
        b[..4096].iter().all(|&x| x == 0xcc) && b[4096..].iter().all(|&x| x == 0xbb)
    });
}
