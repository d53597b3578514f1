//! What one client can take from `rewind serve`: memory, threads, connections.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn serve_with(vol: &Vol, extra: &[&str]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "none", "--primary"])
        .arg(&vol.primary)
        .arg("--vault")
        .arg(&vol.vault)
        .arg("--socket")
        .arg(&vol.socket)
        .args(extra);
    Server::spawn(vol, cmd, true)
}

/// A field of /proc/PID/status (kB for VmRSS).
fn status(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A raw client in transmission with export "live" (NBD_OPT_EXPORT_NAME, no zeroes).
fn raw_client(vol: &Vol) -> UnixStream {
    let mut s = UnixStream::connect(&vol.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut o = Vec::new();
    o.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
    o.extend_from_slice(&1u32.to_be_bytes());
    o.extend_from_slice(&4u32.to_be_bytes());
    o.extend_from_slice(b"live");
    s.write_all(&o).unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    s
}

fn read_request(cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[..4].copy_from_slice(&0x2560_9513u32.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..].copy_from_slice(&len.to_be_bytes());
    b
}

/// 150 READs of 32 MiB queued by a client that never reads a reply: the server's memory
/// stays bounded and another client is served meanwhile.
#[test]
fn a_client_that_never_reads_cannot_grow_the_server() {
    if !have(&["qemu-io"]) {
        return;
    }
    let (vol, _) = Vol::new(64 << 20, Some(7));
    let server = vol.serve();
    let pid = server.pid();
    let before = status(pid, "VmRSS");
    let mut hog = raw_client(&vol);
    for i in 0..150u64 {
        hog.write_all(&read_request(i, (i % 2) << 25, 32 << 20))
            .unwrap();
    }
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < Duration::from_secs(4) {
        peak = peak.max(status(pid, "VmRSS"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let threads = status(pid, "Threads");
    eprintln!("VmRSS before {before} kB, peak {peak} kB; threads {threads}");
    assert!(
        peak < before + (256 << 10),
        "the server grew from {before} kB to {peak} kB for one client that does not read"
    );
    let out = qemu_io(
        &vol.uri("live"),
        &["write -P 0x5a 0 64k".into(), "read -P 0x5a 0 64k".into()],
    );
    assert!(!out.contains("fail"), "{out}");
    drop(hog);
}

/// 300 idle connections cost about one thread each, not 33.
#[test]
fn idle_connections_cost_one_thread_each() {
    let (vol, _) = Vol::new(4 << 20, None);
    let server = serve_with(&vol, &["--max-connections", "400"]);
    let before = status(server.pid(), "Threads");
    let conns: Vec<_> = (0..300).map(|_| raw_client(&vol)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let threads = status(server.pid(), "Threads");
    eprintln!("threads: {before} before, {threads} with 300 idle connections");
    assert!(
        threads < before + 330,
        "{threads} threads for 300 idle connections"
    );
    drop(conns);
}

/// Beyond --max-connections a real client is told why.
#[test]
fn over_the_connection_limit_a_client_is_told_why() {
    if !have(&["qemu-io"]) {
        return;
    }
    let (vol, _) = Vol::new(4 << 20, None);
    let _server = serve_with(&vol, &["--max-connections", "1"]);
    let held = raw_client(&vol);
    let out = run_timeout(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", "read 0 4k"])
            .arg(vol.uri("live")),
        CMD_TIMEOUT,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("at most 1 connections"), "{text}");
    assert!(text.contains("--max-connections"), "{text}");
    drop(held);
    // Once the place is free, the next client is served.
    std::thread::sleep(Duration::from_millis(300));
    let ok = qemu_io(&vol.uri("live"), &["read 0 4k".into()]);
    assert!(ok.contains("read 4096/4096"), "{ok}");
}
