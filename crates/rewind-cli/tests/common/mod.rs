//! Shared by the tests that drive `rewind serve` with real NBD clients: tool checks, a
//! volume + vault in a temporary directory, a server guard that never outlives its test,
//! commands with timeouts, an in-memory model of the volume and byte-exact comparisons.
#![allow(dead_code, clippy::unwrap_used)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_rewind");
pub const BS: u64 = 4096;

/// How long any single external command may take before the test fails (a hung client or
/// server must fail the test, not hang it).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(90);

fn required() -> bool {
    std::env::var("REWIND_REQUIRE_TOOLS").as_deref() == Ok("true")
}

/// Whether every tool is on PATH. In CI (REWIND_REQUIRE_TOOLS=true) a missing tool fails
/// the test; elsewhere the test is skipped with a reason.
pub fn have(tools: &[&str]) -> bool {
    for tool in tools {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            if required() {
                panic!("{tool} is required in CI; scripts/test.sh installs it");
            }
            eprintln!("SKIP: {tool} not installed (scripts/test.sh installs it)");
            return false;
        }
    }
    true
}

/// Like [`have`], for a condition that is not a tool (root, /dev/fuse, loop devices).
pub fn need(ok: bool, what: &str) -> bool {
    if !ok {
        if required() {
            panic!("{what} is required in CI");
        }
        eprintln!("SKIP: {what}");
    }
    ok
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a command to completion with a timeout, capturing its output.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = match wait_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let e = t_err.join().unwrap_or_default();
            panic!(
                "timed out after {timeout:?}: {desc}\nstderr: {}",
                String::from_utf8_lossy(&e)
            );
        }
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Runs a command and fails the test unless it succeeds; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let o = run_timeout(cmd, CMD_TIMEOUT);
    assert!(
        o.status.success(),
        "{desc} failed ({})\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `rewind ARGS`, expected to succeed; returns stdout.
pub fn rewind_ok(args: &[&str]) -> String {
    run_ok(Command::new(BIN).args(args))
}

/// A deterministic xorshift generator (no dependency on rand).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// What the volume should hold: every write applied to memory.
#[derive(Clone)]
pub struct Model(pub Vec<u8>);

impl Model {
    pub fn write(&mut self, off: u64, len: u64, pattern: u8) {
        self.0[off as usize..(off + len) as usize].fill(pattern);
    }
    pub fn zero(&mut self, off: u64, len: u64) {
        self.write(off, len, 0);
    }
    pub fn save(&self, path: &Path) {
        std::fs::write(path, &self.0).unwrap();
    }
}

/// Fails with the first differing offset and how many bytes differ, not a 16 MiB dump.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
    let count = got.iter().zip(want).filter(|(a, b)| a != b).count();
    panic!(
        "{what}: {count} bytes differ, first at offset {first} (block {}): got {:#04x}, want {:#04x}",
        first as u64 / BS,
        got[first],
        want[first]
    );
}

/// `qemu-img compare` of two raw images.
pub fn qemu_compare(a: &Path, b: &Path) {
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(a)
            .arg(b),
    );
}

/// `qemu-img convert` an NBD URI to a raw file, and read it back.
pub fn convert(uri: &str, to: &Path) -> Vec<u8> {
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", uri])
            .arg(to),
    );
    std::fs::read(to).unwrap()
}

/// Runs qemu-io commands (`-c` each) against a raw NBD URI (read-only for a point,
/// `…/@POINT?…`); fails on any failed command.
pub fn qemu_io(uri: &str, cmds: &[String]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    if uri.contains(":///@") {
        c.arg("-r");
    }
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(uri);
    let out = run_ok(&mut c);
    assert!(
        !out.contains("failed") && !out.contains("error"),
        "qemu-io {cmds:?}: {out}"
    );
    out
}

static SERVERS: AtomicUsize = AtomicUsize::new(0);

/// Where the control pointer `<vault>/control` says the server's control socket is.
pub fn control_socket(vault: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let bytes = std::fs::read(vault.join("control")).ok()?;
    let p = rewind_format::control::ControlPointer::decode(&bytes).ok()?;
    Some(PathBuf::from(std::ffi::OsString::from_vec(p.socket_path)))
}

/// A primary, its vault and the server's socket, in a temporary directory.
pub struct Vol {
    pub dir: tempfile::TempDir,
    pub primary: PathBuf,
    pub vault: PathBuf,
    pub socket: PathBuf,
    pub size: u64,
}

impl Vol {
    /// A `size`-byte primary holding pseudo-random data in some 64 KiB chunks and holes
    /// elsewhere (when `seed` is given; all holes otherwise), protected by a new vault.
    pub fn new(size: u64, seed: Option<u64>) -> (Vol, Model) {
        let dir = tempfile::tempdir().unwrap();
        let primary = dir.path().join("primary.img");
        let f = File::create(&primary).unwrap();
        f.set_len(size).unwrap();
        let mut model = Model(vec![0u8; size as usize]);
        if let Some(seed) = seed {
            let mut rng = Rng(seed | 1);
            for (i, chunk) in model.0.chunks_mut(64 << 10).enumerate() {
                if rng.below(3) == 0 {
                    rng.fill(chunk);
                    f.write_all_at(chunk, (i as u64) << 16).unwrap();
                }
            }
        }
        drop(f);
        let vault = dir.path().join("vault");
        // The socket path must stay short (sun_path is 108 bytes): temp dirs are.
        let socket = dir.path().join("nbd.sock");
        rewind_ok(&[
            "init",
            "--primary",
            primary.to_str().unwrap(),
            "--vault",
            vault.to_str().unwrap(),
        ]);
        (
            Vol {
                dir,
                primary,
                vault,
                socket,
                size,
            },
            model,
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `nbd+unix:///EXPORT?socket=…`
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    pub fn v(&self) -> &str {
        self.vault.to_str().unwrap()
    }

    /// `rewind serve` on the unix socket only.
    pub fn serve(&self) -> Server {
        Server::start(self, "none")
    }

    /// `rewind serve` on the unix socket and a free loopback TCP port (`server.tcp`).
    pub fn serve_tcp(&self) -> Server {
        let mut s = Server::start(self, "127.0.0.1:0");
        let start = Instant::now();
        while s.tcp.is_none() {
            s.tcp = s
                .log_text()
                .lines()
                .find_map(|l| l.trim().strip_prefix("listening on nbd://"))
                .map(str::to_string);
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "rewind serve does not say its TCP address:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    pub fn snapshot(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&rewind_ok(&[
            "snapshot",
            name,
            "--vault",
            self.v(),
            "--json",
        ]))
        .unwrap()
    }

    pub fn list(&self) -> serde_json::Value {
        serde_json::from_str(&rewind_ok(&["list", "--vault", self.v(), "--json"])).unwrap()
    }

    /// `rewind restore --at POINT`, read back.
    pub fn restore(&self, point: &str) -> Vec<u8> {
        let to = self.path(&format!("restore-{}.img", point.replace(':', "_")));
        let _ = std::fs::remove_file(&to);
        rewind_ok(&[
            "restore",
            "--vault",
            self.v(),
            "--at",
            point,
            "--to",
            to.to_str().unwrap(),
        ]);
        std::fs::read(&to).unwrap()
    }

    /// The primary file. While a server runs, `rewind checkpoint` first: large writes
    /// reach the primary a moment after the host's (see the README, "Writing the primary
    /// behind the log"); with no server it says so and the file is read as it is.
    pub fn read_primary(&self) -> Vec<u8> {
        let _ = Command::new(BIN)
            .args(["checkpoint", "--vault", self.v()])
            .output();
        std::fs::read(&self.primary).unwrap()
    }
}

/// A running `rewind serve`; killed (SIGKILL) when dropped unless it already exited.
pub struct Server {
    child: Child,
    pub log: PathBuf,
    /// HOST:PORT when serving TCP too.
    pub tcp: Option<String>,
    exited: Option<ExitStatus>,
}

impl Server {
    fn start(vol: &Vol, listen: &str) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", listen, "--primary"])
            .arg(&vol.primary)
            .arg("--vault")
            .arg(&vol.vault)
            .arg("--socket")
            .arg(&vol.socket);
        Server::spawn(vol, cmd, true)
    }

    /// Starts `cmd` (a `rewind serve` of `vol.vault`; its output into `server.log` when
    /// `log_output`) and waits until its control socket answers.
    pub fn spawn(vol: &Vol, mut cmd: Command, log_output: bool) -> Server {
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let log = vol.path(&format!("serve-{n}.log"));
        if log_output {
            let out = File::create(&log).unwrap();
            cmd.stdout(out.try_clone().unwrap()).stderr(out);
        }
        // Control sockets in the test's directory: a server the test kills leaves its
        // socket file there, not in the user's runtime directory.
        if !cmd.get_envs().any(|(k, _)| k == "XDG_RUNTIME_DIR") {
            cmd.env("XDG_RUNTIME_DIR", vol.dir.path());
        }
        let child = cmd.stdin(Stdio::null()).spawn().unwrap();
        let mut s = Server {
            child,
            log,
            tcp: None,
            exited: None,
        };
        // The control socket is bound last: once it answers, everything listens. (A stale
        // pointer left by a killed server names a socket that refuses connections.)
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                s.exited = Some(st);
                panic!("rewind serve exited with {st}:\n{}", s.log_text());
            }
            if control_socket(&vol.vault).is_some_and(|c| UnixStream::connect(c).is_ok()) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "rewind serve did not start listening:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.exited = Some(self.child.wait().unwrap());
    }

    /// Sends a signal (TERM, INT) and waits for the exit, failing after `timeout`.
    pub fn stop(&mut self, signal: &str, timeout: Duration) -> ExitStatus {
        run_ok(
            Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.pid().to_string()),
        );
        let st = wait_timeout(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "rewind serve did not exit within {timeout:?} of SIG{signal}:\n{}",
                self.log_text()
            )
        });
        self.exited = Some(st);
        st
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log_text());
        }
    }
}

/// An NBD export as a file through nbdfuse (a regular file mounted over); unmounted with
/// `fusermount3 -u` when dropped.
pub struct Fuse {
    pub file: PathBuf,
    child: Option<Child>,
}

impl Fuse {
    pub fn mount(file: &Path, uri: &str, read_only: bool) -> Fuse {
        File::create(file).unwrap();
        let pidfile = file.with_extension("pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut c = Command::new("nbdfuse");
        c.arg("-P").arg(&pidfile);
        if read_only {
            c.arg("-r");
        }
        let child = c
            .arg(file)
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut f = Fuse {
            file: file.to_path_buf(),
            child: Some(child),
        };
        let start = Instant::now();
        while !std::fs::read_to_string(&pidfile).is_ok_and(|s| !s.trim().is_empty()) {
            if let Some(Ok(Some(st))) = f.child.as_mut().map(|c| c.try_wait()) {
                f.child = None;
                panic!("nbdfuse {uri} exited with {st}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nbdfuse {uri} did not become ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        f
    }

    pub fn unmount(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = run_timeout(
            Command::new("fusermount3").arg("-u").arg(&self.file),
            Duration::from_secs(30),
        );
        if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
            let _ = run_timeout(
                Command::new("fusermount3").arg("-uz").arg(&self.file),
                Duration::from_secs(30),
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A loop mount of an image file; unmounted when dropped.
pub struct Mount {
    pub dir: PathBuf,
    mounted: bool,
}

impl Mount {
    pub fn new(image: &Path, dir: &Path, opts: &str) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("mount")
                .arg("-o")
                .arg(format!("loop,{opts}"))
                .arg(image)
                .arg(dir),
        );
        Mount {
            dir: dir.to_path_buf(),
            mounted: true,
        }
    }

    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        let o = run_timeout(
            Command::new("umount").arg(&self.dir),
            Duration::from_secs(60),
        );
        if !o.status.success() {
            let _ = run_timeout(
                Command::new("umount").arg("-l").arg(&self.dir),
                Duration::from_secs(60),
            );
            if !std::thread::panicking() {
                panic!(
                    "umount {} failed: {}",
                    self.dir.display(),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Any other child process (a client): killed when dropped unless it already exited.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Waits for the exit, killing the child after `timeout`; `None` when it had to be killed.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let st = wait_timeout(&mut self.0, timeout);
        if st.is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        st
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One write of the stream: `write [-f] -P pat off len`.
#[derive(Clone, Copy, Debug)]
pub struct W {
    pub off: u64,
    pub len: u64,
    pub pat: u8,
    pub fua: bool,
}

impl W {
    pub fn cmd(&self) -> String {
        let f = if self.fua { "-f " } else { "" };
        format!("write {f}-P {:#04x} {} {}\n", self.pat, self.off, self.len)
    }
    pub fn covers(&self, b: u64) -> bool {
        self.off <= b && b < self.off + self.len
    }
}

/// What qemu-io reported, in order.
#[derive(Debug)]
pub enum Ev {
    /// A write was acknowledged.
    Wrote { off: u64, len: u64 },
    /// The marker read after flush N completed, so flush N completed.
    Flushed(u64),
}

/// Parses "… wrote 4096/4096 bytes at offset 123" and "… read 1/1 bytes at offset N"
/// (prompts "qemu-io> " precede them on the same line).
pub fn parse(line: &str) -> Option<Ev> {
    let nums = |rest: &str| -> Option<(u64, u64)> {
        let (done, rest) = rest.split_once('/')?;
        let off = rest.split("at offset ").nth(1)?.trim();
        Some((done.parse().ok()?, off.parse().ok()?))
    };
    if let Some(i) = line.find("wrote ") {
        let (len, off) = nums(&line[i + 6..])?;
        return Some(Ev::Wrote { off, len });
    }
    if let Some(i) = line.find("read 1/1 bytes") {
        let (_, n) = nums(&line[i + 5..])?;
        return Some(Ev::Flushed(n));
    }
    None
}

/// An interactive qemu-io on an export: commands go to its stdin, and what it reports
/// arrives as events. It runs with `-t writeback`: qemu-io's default, writethrough, would
/// flush after every write and make every acknowledged write durable.
pub struct QemuIo {
    child: ChildGuard,
    pub stdin: Option<ChildStdin>,
    events: Receiver<Ev>,
    reader: Option<JoinHandle<()>>,
}

impl QemuIo {
    pub fn start(vol: &Vol, export: &str, log: &str) -> QemuIo {
        let mut child = ChildGuard(
            Command::new("qemu-io")
                .args(["-t", "writeback", "-f", "raw"])
                .arg(vol.uri(export))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(vol.path(log)).unwrap())
                .spawn()
                .unwrap(),
        );
        let stdin = child.0.stdin.take();
        let stdout = child.0.stdout.take().unwrap();
        let (tx, events) = channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(ev) = parse(&line) {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        });
        QemuIo {
            child,
            stdin,
            events,
            reader: Some(reader),
        }
    }

    pub fn send(&mut self, cmd: &str) {
        let s = self.stdin.as_mut().unwrap();
        s.write_all(cmd.as_bytes()).unwrap();
        s.flush().unwrap();
    }

    pub fn next(&self, timeout: Duration) -> Ev {
        match self.events.recv_timeout(timeout) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => panic!("qemu-io said nothing for {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("qemu-io exited"),
        }
    }

    /// Closes stdin, waits for the exit and returns every event not yet taken.
    pub fn finish(mut self) -> Vec<Ev> {
        drop(self.stdin.take());
        assert!(
            self.child.wait(Duration::from_secs(60)).is_some(),
            "qemu-io did not exit after its input ended"
        );
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.events.try_iter().collect()
    }
}

/// Every byte equals the model, except where a write that may or may not have landed
/// (`maybe`) covers it, and then it holds that write's pattern.
pub fn check_durable(got: &[u8], model: &Model, maybe: &[W], what: &str) -> usize {
    assert_eq!(got.len(), model.0.len(), "{what}: size");
    let mut landed = 0;
    for (b, (&g, &m)) in got.iter().zip(&model.0).enumerate() {
        if g == m {
            continue;
        }
        let b = b as u64;
        if !maybe.iter().any(|w| w.covers(b) && w.pat == g) {
            let covering: Vec<&W> = maybe.iter().filter(|w| w.covers(b)).collect();
            panic!(
                "{what}: byte {b} (block {}) is {g:#04x}; a durable write left {m:#04x} \
                 (unflushed writes covering it: {covering:?})",
                b / BS
            );
        }
        landed += 1;
    }
    landed
}

/// A random write: most land in the first 4 MiB, so they overlap and share edge blocks;
/// a third are block-aligned multiples of blocks; every 11th is FUA.
pub fn gen_write(rng: &mut Rng, j: u64, size: u64) -> W {
    let span = if rng.below(10) < 7 { 4 << 20 } else { size };
    let len = match rng.below(3) {
        0 => (1 + rng.below(16)) * BS,
        _ => 1 + rng.below(65_536),
    };
    let off = if rng.below(2) == 0 {
        rng.below(span / BS) * BS
    } else {
        rng.below(span)
    }
    .min(size - len);
    W {
        off,
        len,
        pat: 1 + (j % 255) as u8,
        fua: j % 11 == 10,
    }
}

/// Flips one bit of the byte at `at` in `path` (damage made behind rewind's back).
pub fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x04;
    f.write_all_at(&b, at).unwrap();
}
