//! The edges a new user hits first, against the real binary: signals (SIGPIPE, SIGHUP, an
//! interrupted restore), errors (JSON with --json, exit 2 for usage), serve's listening
//! rules, log colour, the same paths and fields online and offline, and the control
//! socket of a vault at a deep path.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn rewind(args: &[&str]) -> Output {
    run_timeout(Command::new(BIN).args(args), CMD_TIMEOUT)
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {o:?}"))
}

/// A pipe whose reading end is already closed: every write to it fails (EPIPE).
fn closed_pipe() -> std::io::PipeWriter {
    let (r, w) = std::io::pipe().unwrap();
    drop(r);
    w
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let (vol, _) = Vol::new(MIB, None);
    for json in [false, true] {
        let mut c = Command::new(BIN);
        c.args(["list", "--vault", vol.v()]);
        if json {
            c.arg("--json");
        }
        let o = c
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(!err(&o).contains("panicked"), "{}", err(&o));
        assert_ne!(o.status.code(), Some(101), "{o:?}");
        // Like any Unix tool whose reader went away: ended by SIGPIPE.
        assert_eq!(o.status.signal(), Some(13), "{o:?}");
    }
}

#[test]
fn sighup_stops_the_server_cleanly() {
    let (vol, _) = Vol::new(MIB, None);
    let mut server = vol.serve();
    let st = server.stop("HUP", Duration::from_secs(30));
    assert!(st.success(), "{st}: {}", server.log_text());
    assert!(
        server.log_text().contains("Stopped cleanly"),
        "{}",
        server.log_text()
    );
}

/// A server started with stdout and stderr on closed pipes (the terminal or the reader
/// went away) serves, answers and stops cleanly instead of panicking on its first line.
#[test]
fn a_server_without_stdout_keeps_serving() {
    let (vol, _) = Vol::new(MIB, None);
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--vault", vol.v(), "--socket"])
        .arg(&vol.socket)
        .stdout(closed_pipe())
        .stderr(closed_pipe());
    let mut server = Server::spawn(&vol, cmd, false);
    let s = vol.snapshot("still-here");
    assert_eq!(s["name"], "still-here");
    let st = server.stop("TERM", Duration::from_secs(30));
    assert!(st.success(), "{st}");
    assert!(!vol.vault.join("control").exists(), "a clean stop");
}

#[test]
fn an_interrupted_restore_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let primary = dir.path().join("p.img");
    let mut data = vec![0u8; (128 * MIB) as usize];
    Rng(7).fill(&mut data);
    std::fs::write(&primary, &data).unwrap();
    drop(data);
    let vault = dir.path().join("v");
    rewind_ok(&[
        "init",
        "--primary",
        primary.to_str().unwrap(),
        "--vault",
        vault.to_str().unwrap(),
    ]);
    let to = dir.path().join("out.img");
    let partial = dir.path().join(".out.img.rewind-partial");
    for sig in ["INT", "TERM", "HUP"] {
        let mut child = ChildGuard(
            Command::new(BIN)
                .args(["restore", "--vault", vault.to_str().unwrap(), "--at", "now"])
                .arg("--to")
                .arg(&to)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let start = Instant::now();
        while !partial.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no partial image"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        run_ok(
            Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.0.id().to_string()),
        );
        let st = child.wait(Duration::from_secs(30)).unwrap();
        let want = match sig {
            "INT" => 130,
            "TERM" => 143,
            _ => 129,
        };
        assert_eq!(st.code(), Some(want), "SIG{sig}: {st}");
        assert!(!partial.exists(), "SIG{sig}: the partial image is removed");
        assert!(!to.exists(), "SIG{sig}: nothing at --to");
    }
}

#[test]
fn json_errors_are_json_on_stdout_with_the_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-vault");
    let o = rewind(&["list", "--vault", missing.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let j = json_of(&o);
    assert_eq!(j["ok"], false);
    assert_eq!(j["exit_code"], 1);
    assert!(
        j["error"].as_str().unwrap().contains("not a rewind vault"),
        "{j}"
    );
    assert!(o.stderr.is_empty(), "{}", err(&o));
    // A usage error, too.
    let o = rewind(&["restore", "--at", "a b", "--to", "x.img", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let j = json_of(&o);
    assert_eq!(j["exit_code"], 2);
    assert!(j["error"].as_str().unwrap().contains("a b"), "{j}");
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    let (vol, _) = Vol::new(MIB, None);
    let p = vol.primary.to_str().unwrap();
    let fresh = vol.path("fresh.vault");
    let f = fresh.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["init", "--primary", p, "--vault", f, "--block-size", "3000"],
            "power of two",
        ),
        (
            vec!["init", "--primary", p, "--vault", f, "--block-size", "1M"],
            "power of two",
        ),
        (
            vec![
                "restore",
                "--vault",
                vol.v(),
                "--at",
                "what?",
                "--to",
                "x.img",
            ],
            "cannot understand point",
        ),
        (
            vec!["snapshot", "bad name", "--vault", vol.v()],
            "bad snapshot name",
        ),
        (
            vec!["verify", "--vault", vol.v(), "--region-size", "128M"],
            "larger than the largest",
        ),
        (
            vec!["sync", "--vault", vol.v(), "--region-size", "128M"],
            "larger than the largest",
        ),
        (
            vec!["verify", "--vault", vol.v(), "--region-size", "2048"],
            "smaller than the vault's block size",
        ),
        (
            vec![
                "init",
                "--primary",
                vol.dir.path().to_str().unwrap(),
                "--vault",
                f,
            ],
            "is a directory",
        ),
        (
            vec!["serve", "--vault", vol.v(), "--listen", "none"],
            "needs --socket",
        ),
    ];
    for (args, want) in cases {
        let o = rewind(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(err(&o).contains(want), "{args:?}: {}", err(&o));
    }
    assert!(!fresh.join("base").exists());
    // Sizes are sizes everywhere.
    let other = vol.path("other.img");
    std::fs::File::create(&other).unwrap().set_len(MIB).unwrap();
    let o = rewind(&[
        "init",
        "--primary",
        other.to_str().unwrap(),
        "--vault",
        f,
        "--block-size",
        "4k",
    ]);
    assert!(o.status.success(), "{o:?}");
}

/// Two protected volumes, each served with just --socket: neither takes TCP 10809, so
/// both run.
#[test]
fn socket_alone_takes_no_tcp() {
    let (a, _) = Vol::new(MIB, None);
    let (b, _) = Vol::new(MIB, None);
    let mut servers = Vec::new();
    for vol in [&a, &b] {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--primary"])
            .arg(&vol.primary)
            .args(["--vault", vol.v(), "--socket"])
            .arg(&vol.socket);
        servers.push(Server::spawn(vol, cmd, true));
    }
    for vol in [&a, &b] {
        let s = json_of(&rewind(&["status", "--vault", vol.v(), "--json"]));
        let listen: Vec<String> = serde_json::from_value(s["listen"].clone()).unwrap();
        assert_eq!(listen.len(), 1, "{listen:?}");
        assert!(listen[0].starts_with("nbd+unix://"), "{listen:?}");
    }
    for s in &servers {
        assert!(!s.log_text().contains("nbd://"), "{}", s.log_text());
    }
}

#[test]
fn log_lines_carry_no_colour_codes_off_a_terminal() {
    let (vol, _) = Vol::new(MIB, None);
    let o = run_timeout(
        Command::new(BIN)
            .args(["restore", "--vault", vol.v(), "--at", "now", "--in-place"])
            .env("REWIND_LOG", "debug")
            .env_remove("NO_COLOR"),
        CMD_TIMEOUT,
    );
    assert!(o.status.success(), "{o:?}");
    assert!(
        err(&o).contains("in-place restore planned"),
        "a log line: {}",
        err(&o)
    );
    assert!(!err(&o).contains('\u{1b}'), "colour codes: {:?}", err(&o));
}

/// The fields both show, with the same names and the same (absolute) paths, whether a
/// server answers or the command reads the vault itself; the server started with
/// relative paths in another directory than the client's.
#[test]
fn paths_and_fields_are_the_same_online_and_offline() {
    let (vol, _) = Vol::new(MIB, None);
    let offline_status = json_of(&rewind(&["status", "--vault", vol.v(), "--json"]));
    let offline_list = json_of(&rewind(&["list", "--vault", vol.v(), "--json"]));
    let offline_verify = json_of(&rewind(&["verify", "--vault", vol.v(), "--json"]));
    let mut cmd = Command::new(BIN);
    cmd.current_dir(vol.dir.path()).args([
        "serve",
        "--primary",
        "primary.img",
        "--vault",
        "vault",
        "--socket",
        "nbd.sock",
    ]);
    let _server = Server::spawn(&vol, cmd, true);
    let online_status = json_of(&rewind(&["status", "--vault", vol.v(), "--json"]));
    let online_list = json_of(&rewind(&["list", "--vault", vol.v(), "--json"]));
    let online_verify = json_of(&rewind(&["verify", "--vault", vol.v(), "--json"]));
    assert_eq!(online_status["serving"], true);
    let vault = std::fs::canonicalize(&vol.vault).unwrap();
    let primary = std::fs::canonicalize(&vol.primary).unwrap();
    for (what, off, on) in [
        ("status", &offline_status, &online_status),
        ("verify", &offline_verify, &online_verify),
    ] {
        for (k, v) in off.as_object().unwrap() {
            assert!(on.get(k).is_some(), "{what}: online lacks {k:?}: {on}");
            if ["vault", "primary", "volume_size", "block_size", "created"].contains(&k.as_str()) {
                assert_eq!(&on[k], v, "{what}: {k}");
            }
        }
        assert_eq!(on["vault"], vault.to_str().unwrap(), "{what}");
        assert_eq!(on["primary"], primary.to_str().unwrap(), "{what}");
        assert!(on.get("ok").is_none() || what != "status", "{on}");
    }
    assert_eq!(online_list["vault"]["dir"], offline_list["vault"]["dir"]);
    assert_eq!(online_list["vault"]["dir"], vault.to_str().unwrap());
}

#[test]
fn serve_vault_alone_serves_the_primary_it_records() {
    let (vol, _) = Vol::new(MIB, None);
    let mut cmd = Command::new(BIN);
    cmd.current_dir("/")
        .args(["serve", "--vault", vol.v(), "--socket"])
        .arg(&vol.socket);
    let mut server = Server::spawn(&vol, cmd, true);
    let s = json_of(&rewind(&["status", "--vault", vol.v(), "--json"]));
    let primary = std::fs::canonicalize(&vol.primary).unwrap();
    assert_eq!(s["primary"], primary.to_str().unwrap(), "{s}");
    server.stop("TERM", Duration::from_secs(30));
}

#[test]
fn the_undo_command_names_the_vault() {
    let (vol, _) = Vol::new(MIB, Some(9));
    {
        let v = rewind_vault::Vault::open(&vol.vault).unwrap();
        v.write(3, &[0xab; 4096]).unwrap();
        v.close().unwrap();
    }
    let o = rewind(&["restore", "--vault", vol.v(), "--at", "seq:0", "--in-place"]);
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    let undo = out
        .split("Undo with: ")
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(undo.contains(&format!("--vault {}", vol.v())), "{out}");
}

/// A unix socket path holds at most 108 bytes: a vault deeper than that still has a
/// control socket (in the runtime directory), and no socket is ever made inside the
/// vault (some file systems cannot hold one).
#[test]
fn the_control_socket_works_for_a_deep_vault() {
    let dir = tempfile::tempdir().unwrap();
    let deep: PathBuf = (0..8).fold(dir.path().to_path_buf(), |p, i| {
        p.join(format!("a-rather-long-directory-name-{i}"))
    });
    std::fs::create_dir_all(&deep).unwrap();
    let primary = dir.path().join("primary.img");
    std::fs::File::create(&primary)
        .unwrap()
        .set_len(MIB)
        .unwrap();
    let vault = deep.join("vault");
    assert!(vault.as_os_str().len() > 200);
    rewind_ok(&[
        "init",
        "--primary",
        primary.to_str().unwrap(),
        "--vault",
        vault.to_str().unwrap(),
    ]);
    let vol = Vol {
        socket: dir.path().join("nbd.sock"),
        dir,
        primary,
        vault,
        size: MIB,
    };
    let mut server = vol.serve();
    let s = vol.snapshot("deep");
    assert_eq!(s["name"], "deep");
    let st = json_of(&rewind(&["status", "--vault", vol.v(), "--json"]));
    assert_eq!(st["serving"], true, "{st}");
    assert!(no_socket_in(&vol.vault), "a socket inside the vault");
    server.stop("TERM", Duration::from_secs(30));
}

fn no_socket_in(dir: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::read_dir(dir).unwrap().flatten().all(|e| {
        let t = e.file_type().unwrap();
        !t.is_socket() && (!t.is_dir() || no_socket_in(&e.path()))
    })
}

/// A killed server leaves its pointer; clients take it for "no server" and the next
/// server replaces it.
#[test]
fn a_stale_control_pointer_is_no_server() {
    let (vol, _) = Vol::new(MIB, None);
    let mut server = vol.serve();
    server.kill9();
    assert!(vol.vault.join("control").exists());
    let s = json_of(&rewind(&["status", "--vault", vol.v(), "--json"]));
    assert_eq!(s["serving"], false, "{s}");
    let mut server = vol.serve();
    let s = json_of(&rewind(&["status", "--vault", vol.v(), "--json"]));
    assert_eq!(s["serving"], true, "{s}");
    server.stop("TERM", Duration::from_secs(30));
}
