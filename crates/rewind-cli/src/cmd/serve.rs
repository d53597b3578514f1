use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rewind_engine::exports::VaultExports;
use rewind_engine::intercept::LiveVolume;
use rewind_nbd::{refuse_connection, serve_connection_within, Bounds, Capacity, ServerStats};
use rewind_vault::{format_time, now_ns, Compression, CreateOptions, SealPolicy, Vault};
use serde_json::{json, Value};

use crate::control;
use crate::output::{self, Bar};

mod recovery;
mod requests;
mod rollback;

use recovery::{recover, Repeating};
use requests::control_conn;

pub const DEFAULT_DIR: &str = "rewind-data";
pub const DEFAULT_VAULT: &str = "rewind-data/vault";
pub const DEFAULT_PRIMARY: &str = "rewind-data/volume.img";
pub const DEFAULT_SOCKET: &str = "rewind-data/nbd.sock";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10809";

/// How long shutdown waits for a running verify or sync to stop.
const LONG_OP_GRACE: Duration = Duration::from_secs(60);

/// Serve the protected volume over NBD: every write is journaled into the vault before it
/// is acknowledged, FLUSH and FUA make it durable, and any kept point can be opened
/// read-only as export `@POINT`. With no arguments it protects a demo volume,
/// ./rewind-data/volume.img (1 GiB, sparse, created if missing), in ./rewind-data/vault.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  rewind serve                           # demo volume: TCP and ./rewind-data/nbd.sock
  rewind serve --vault vm.vault --socket /run/vm.sock    # vm.vault's primary, no TCP
  rewind serve --vault vm.vault --listen 127.0.0.1:10810 # TCP only, another port

Exports:
  live (or the empty name)  the volume, read-write
  @NAME, @seq:N, @2026-11-21T10:00:00Z, @-15m   that point, read-only

Listening: TCP 127.0.0.1:10809 unless --socket is given (then none unless --listen
says); --listen none needs --socket. Beyond loopback there is no TLS yet: it warns.

One primary, one protector: the server holds a lock on the primary while it runs and
stamps it with the vault (user.rewind.vault); a second server, a second vault or a
copy of this vault is refused (--take-over to move the protection deliberately).

Stop with Ctrl-C, SIGTERM or SIGHUP: in-flight requests finish, the log is flushed and
sealed, exit 0.")]
pub struct Args {
    /// The primary volume [default: the one the vault records; with neither --primary
    /// nor --vault, the demo volume ./rewind-data/volume.img]
    #[arg(long, value_name = "PATH")]
    pub primary: Option<PathBuf>,
    /// The vault [default: ./rewind-data/vault]
    #[arg(long, value_name = "DIR")]
    pub vault: Option<PathBuf>,
    /// TCP address to listen on, or "none" [default: 127.0.0.1:10809, none when --socket
    /// is given]. Beyond loopback anyone who can reach it reads and writes the volume
    /// (no TLS yet)
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Unix socket to listen on [default: ./rewind-data/nbd.sock with the demo volume,
    /// none otherwise]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Serve --primary even though the vault was created for a file at another path (the
    /// image was moved or renamed). The size must still match.
    #[arg(long)]
    pub moved_primary: bool,
    /// Serve even though the primary's stamp names another vault (or, for a copy of this
    /// vault, the original) that is still there; that vault then no longer follows it
    #[arg(long)]
    pub take_over: bool,
    /// Size of the demo volume when it has to be created
    #[arg(long, default_value = "1G", value_parser = output::parse_size, value_name = "SIZE")]
    pub demo_size: u64,
    /// NBD connections served at once; a client beyond them is refused with a message
    /// that says so
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_connections: usize,
    /// Memory one connection's requests may hold (payloads and replies not yet read by
    /// the client); beyond it the server stops reading that client's requests until it
    /// reads replies. A single larger request is still served, alone
    #[arg(long, default_value = "64M", value_parser = output::parse_size, value_name = "SIZE")]
    pub max_request_memory: u64,
    /// Worker threads over all connections, besides one per connection (each connection
    /// uses at most 32, started when requests wait on the disk)
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_threads: usize,
}

struct Server {
    volume: Arc<LiveVolume>,
    capacity: Arc<Capacity>,
    exports: Arc<rollback::GatedExports>,
    stats: Arc<ServerStats>,
    started: Instant,
    listen: Vec<String>,
    conns: Mutex<Vec<(JoinHandle<()>, Arc<Closer>)>>,
    /// Set by SIGINT/SIGTERM: running verify/sync requests stop early.
    shutdown: Arc<AtomicBool>,
    /// Held while a verify or sync runs (one at a time).
    scanning: Mutex<()>,
    /// Held while a check runs (one at a time).
    checking: Mutex<()>,
    /// Verify/sync requests running; shutdown waits for them to wind down.
    long_ops: std::sync::atomic::AtomicUsize,
}

/// Ends a connection's reading side so that it drains and finishes.
enum Closer {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Closer {
    fn shutdown(&self, how: std::net::Shutdown) {
        let _ = match self {
            Closer::Tcp(s) => s.shutdown(how),
            Closer::Unix(s) => s.shutdown(how),
        };
    }

    fn set_timeouts(&self, t: Duration) {
        let _ = match self {
            Closer::Tcp(s) => s
                .set_read_timeout(Some(t))
                .and_then(|()| s.set_write_timeout(Some(t))),
            Closer::Unix(s) => s
                .set_read_timeout(Some(t))
                .and_then(|()| s.set_write_timeout(Some(t))),
        };
    }

    /// Stops reading requests; in-flight ones finish and are answered.
    fn close(&self) {
        self.shutdown(std::net::Shutdown::Read);
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let Resolved {
        primary,
        vault: vault_dir,
        socket,
        listen,
    } = resolve_paths(&a)?;
    let shutdown = install_signals()?;
    // Absolute: the paths in status, list and reports are the same online and offline.
    let vault_dir = std::fs::canonicalize(&vault_dir).unwrap_or(vault_dir);
    let vault = Arc::new(
        Vault::open_as(&vault_dir, "rewind serve")
            .with_context(|| format!("cannot open vault {}", vault_dir.display()))?,
    );
    // The live volume needs the primary and the write log's open end, not history: a
    // damaged past is said here, and reads of it fail (exports of points that need it).
    for d in vault.damage() {
        tracing::warn!(file = %d.path.display(), error = %d.error, breaks = %d.breaks, "the vault is damaged; serving what is intact (`rewind list` shows it, `rewind repair` mends what it can)");
    }
    // The vault's own record unless told: `serve --vault X` serves what X protects.
    let primary = primary.unwrap_or_else(|| PathBuf::from(vault.info().primary));
    check_identity(&primary, &vault.info().primary, a.moved_primary)?;
    let primary = std::fs::canonicalize(&primary).unwrap_or(primary);
    // Held until the server exits: one primary, one protector.
    let _protected = super::protect(&primary, &vault, a.take_over)?;
    let volume = Arc::new(LiveVolume::open(&primary, vault.clone())?);
    recover(&volume, &vault_dir, &shutdown)?;
    let listeners = Listeners::bind(&listen, socket.as_deref(), &vault)?;
    let server = Arc::new(Server {
        exports: Arc::new(rollback::GatedExports::new(VaultExports::new(
            volume.clone(),
        ))),
        volume,
        capacity: Arc::new(Capacity::new(Bounds {
            max_request_memory: usize::try_from(a.max_request_memory).unwrap_or(usize::MAX),
            max_connections: a.max_connections,
            max_threads: a.max_threads,
        })),
        stats: Arc::new(ServerStats::default()),
        started: Instant::now(),
        listen: listeners.uris(socket.as_deref())?,
        conns: Mutex::new(Vec::new()),
        shutdown: shutdown.clone(),
        scanning: Mutex::new(()),
        checking: Mutex::new(()),
        long_ops: std::sync::atomic::AtomicUsize::new(0),
    });
    print_recipes(
        &primary,
        &vault_dir,
        listeners.tcp.as_ref(),
        socket.as_deref(),
    );
    let applier = spawn_applier(server.volume.clone(), shutdown.clone());
    accept_loop(&server, &listeners, &vault, &shutdown);
    let _ = applier.join();
    stop(&server, &vault, listeners, socket.as_deref())
}

/// The thread that writes deferred host writes into the primary (see
/// `rewind_engine::behind`) while the host is quiet; the clean stop writes the rest.
fn spawn_applier(
    volume: Arc<LiveVolume>,
    shutdown: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut errors = Repeating::new("writing deferred host writes into the primary failed");
        while !shutdown.load(Ordering::Relaxed) {
            match volume.apply_behind_step() {
                Ok(true) => {}
                Ok(false) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    errors.report(Err::<(), _>(e));
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    })
}

/// What `serve` works on, from the command line.
struct Resolved {
    /// `None`: the one the vault records.
    primary: Option<PathBuf>,
    vault: PathBuf,
    /// Absolute, so that the printed recipes work from anywhere.
    socket: Option<PathBuf>,
    /// A TCP address, or "none".
    listen: String,
}

/// The primary, the vault, the unix socket and the TCP address to serve; creates the demo
/// volume and its vault when neither --primary nor --vault is given. `--socket` alone
/// means no TCP (a second protected volume must not need --listen none), and there must
/// be something to listen on.
fn resolve_paths(a: &Args) -> anyhow::Result<Resolved> {
    let demo = a.primary.is_none() && a.vault.is_none();
    let vault = a
        .vault
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VAULT));
    let socket = a
        .socket
        .clone()
        .or_else(|| demo.then(|| PathBuf::from(DEFAULT_SOCKET)));
    let listen = match (&a.listen, &a.socket) {
        (Some(l), _) => l.clone(),
        (None, Some(_)) => "none".to_string(),
        (None, None) => DEFAULT_LISTEN.to_string(),
    };
    if listen == "none" && socket.is_none() {
        return Err(crate::exit::Usage(
            "nothing to listen on: --listen none needs --socket PATH (or leave --listen out for TCP 127.0.0.1:10809)".into(),
        )
        .into());
    }
    let socket = socket
        .map(|s| std::path::absolute(&s).with_context(|| format!("socket {}", s.display())))
        .transpose()?;
    let primary = if demo {
        let p = PathBuf::from(DEFAULT_PRIMARY);
        prepare_demo(&p, &vault, a.demo_size)?;
        Some(p)
    } else {
        a.primary.clone()
    };
    Ok(Resolved {
        primary,
        vault,
        socket,
        listen,
    })
}

/// SIGINT, SIGTERM and SIGHUP (the terminal went away) set the returned flag: the server
/// stops cleanly. SIGPIPE stays ignored: a client that goes away is an error on its
/// connection, and a closed stdout or stderr costs only the lines written there.
fn install_signals() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register(sig, shutdown.clone()).context("installing signal handlers")?;
    }
    Ok(shutdown)
}

/// What the server accepts connections on.
struct Listeners {
    tcp: Option<TcpListener>,
    unix: Option<UnixListener>,
    control: control::Listening,
}

impl Listeners {
    fn bind(listen: &str, socket: Option<&Path>, vault: &Vault) -> anyhow::Result<Listeners> {
        let tcp = if listen == "none" {
            None
        } else {
            let l = TcpListener::bind(listen)
                .with_context(|| format!("cannot listen on {}", listen))?;
            l.set_nonblocking(true)?;
            warn_beyond_loopback(&l);
            Some(l)
        };
        let unix = socket.map(control::bind_unix).transpose()?;
        // Bound last: once the pointer is there, everything listens.
        let control = control::Listening::bind(vault.dir(), &vault.info().vault_id)?;
        Ok(Listeners { tcp, unix, control })
    }

    /// The NBD URIs listened on, for `rewind status`.
    fn uris(&self, socket: Option<&Path>) -> anyhow::Result<Vec<String>> {
        let mut listen = Vec::new();
        if let Some(l) = &self.tcp {
            listen.push(format!("nbd://{}", l.local_addr()?));
        }
        if let Some(s) = socket {
            listen.push(format!("nbd+unix:///?socket={}", s.display()));
        }
        Ok(listen)
    }
}

/// NBD over TCP has no TLS in rewind yet: beyond loopback, anyone who reaches the port
/// reads and writes the volume. The warning for `addr`, if it needs one.
fn tcp_warning(addr: std::net::SocketAddr) -> Option<String> {
    (!addr.ip().is_loopback()).then(|| format!(
        "warning: listening on {addr}, beyond loopback, without TLS (rewind has none yet): anyone who can reach this port can read and write the volume. Prefer --socket, or 127.0.0.1 and an SSH tunnel (ssh -L 10809:127.0.0.1:10809 host)."
    ))
}

fn warn_beyond_loopback(l: &TcpListener) {
    if let Some(w) = l.local_addr().ok().and_then(tcp_warning) {
        crate::note!("{w}");
    }
}

/// Accepts NBD and control connections until `shutdown` is set; once a second, seals by
/// time, keeps the dirty region log and forgets finished connections.
fn accept_loop(server: &Arc<Server>, l: &Listeners, vault: &Vault, shutdown: &AtomicBool) {
    let mut last_tick = Instant::now();
    let mut seal_errors = Repeating::new("time-based seal failed");
    let mut upkeep_errors = Repeating::new("write log and dirty region log upkeep failed");
    while !shutdown.load(Ordering::Relaxed) {
        let mut idle = true;
        if let Some(l) = &l.tcp {
            if let Ok((s, _)) = l.accept() {
                idle = false;
                let _ = s.set_nodelay(true);
                if let (Ok(r), Ok(c)) = (s.try_clone(), s.try_clone()) {
                    spawn_conn(server, r, s, Closer::Tcp(c));
                }
            }
        }
        if let Some(l) = &l.unix {
            if let Ok((s, _)) = l.accept() {
                idle = false;
                if let (Ok(r), Ok(c)) = (s.try_clone(), s.try_clone()) {
                    spawn_conn(server, r, s, Closer::Unix(c));
                }
            }
        }
        if let Ok((s, _)) = l.control.listener.accept() {
            idle = false;
            let server = server.clone();
            std::thread::spawn(move || control_conn(&server, s));
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            seal_errors.report(vault.tick().map(|_| ()));
            upkeep_errors.report(server.volume.tick());
            server
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(h, _)| !h.is_finished());
        }
        if idle {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A clean stop: in-flight requests finish, a running verify or sync winds down, the
/// sockets go away, the log is flushed and sealed.
fn stop(server: &Server, vault: &Vault, l: Listeners, socket: Option<&Path>) -> anyhow::Result<()> {
    crate::note!("Stopping: finishing in-flight requests, flushing and sealing the write log...");
    let conns = std::mem::take(&mut *server.conns.lock().unwrap_or_else(|p| p.into_inner()));
    for (_, closer) in &conns {
        closer.close();
    }
    for (h, _) in conns {
        let _ = h.join();
    }
    // A verify or sync in progress sees the shutdown flag and stops; a sync then seals
    // and flags what it copied. Wait for that before the final seal.
    let waited = Instant::now();
    while server.long_ops.load(Ordering::Acquire) > 0 && waited.elapsed() < LONG_OP_GRACE {
        std::thread::sleep(Duration::from_millis(20));
    }
    if server.long_ops.load(Ordering::Acquire) > 0 {
        // It may still be appending fix-ups: no clean stop, the next start repairs.
        bail!(
            "a verify or sync did not stop within {}s; exiting without a clean stop (the next `rewind serve` repairs the dirty regions)",
            LONG_OP_GRACE.as_secs()
        );
    }
    l.control.close();
    if let Some(s) = socket {
        let _ = std::fs::remove_file(s);
    }
    let sealed = server.volume.stop().context("final flush and seal")?;
    let info = vault.info();
    crate::note!(
        "Stopped cleanly at seq {}{}.",
        info.newest_seq,
        if sealed.is_some() {
            " (interval sealed)"
        } else {
            ""
        }
    );
    Ok(())
}

/// The primary must be the file the vault was created for: same path (unless the user
/// says it moved) and, checked when it is opened, same size.
fn check_identity(primary: &Path, recorded: &str, moved: bool) -> anyhow::Result<()> {
    let actual = std::fs::canonicalize(primary)
        .with_context(|| format!("cannot open primary {}", primary.display()))?;
    if moved || actual == Path::new(recorded) {
        return Ok(());
    }
    bail!(
        "this vault protects {recorded}, not {}.\nServing another image would mix two volumes' histories. If you moved or renamed the image, pass --moved-primary.",
        actual.display()
    )
}

fn spawn_conn<S>(server: &Arc<Server>, reader: S, writer: S, closer: Closer)
where
    S: std::io::Read + Write + Send + 'static + SetBlocking,
{
    let _ = reader.set_blocking();
    let _ = writer.set_blocking();
    let Some(admitted) = server.capacity.admit() else {
        refuse(server, reader, writer, closer);
        return;
    };
    let srv = server.clone();
    let closer = Arc::new(closer);
    let done = closer.clone();
    let n = server.stats.connections_total.load(Ordering::Relaxed);
    let handle = std::thread::Builder::new()
        .name(format!("nbd-conn-{n}"))
        .spawn(move || {
            let _admitted = admitted;
            if let Err(e) = serve_connection_within(
                reader,
                writer,
                srv.exports.as_ref(),
                &srv.stats,
                &srv.capacity,
            ) {
                tracing::info!(error = %e, "connection closed");
            }
            // Close now: the clone kept for shutdown would otherwise hold the socket open.
            done.shutdown(std::net::Shutdown::Both);
        });
    match handle {
        Ok(h) => server
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((h, closer)),
        Err(e) => tracing::error!(error = %e, "cannot start a connection thread"),
    }
}

/// How long a refused client may take to hear why.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection beyond --max-connections: told why on a short-lived thread (a few at
/// once; beyond them it is closed without a word).
fn refuse<S>(server: &Arc<Server>, reader: S, writer: S, closer: Closer)
where
    S: std::io::Read + Write + Send + 'static,
{
    let Some(refusing) = server.capacity.refusing() else {
        closer.shutdown(std::net::Shutdown::Both);
        return;
    };
    closer.set_timeouts(REFUSAL_TIMEOUT);
    let why = server.capacity.refusal_text();
    let started = std::thread::Builder::new()
        .name("nbd-refuse".into())
        .spawn(move || {
            let _refusing = refusing;
            if let Err(e) = refuse_connection(reader, writer, &why) {
                tracing::debug!(error = %e, "refused connection closed");
            }
            closer.shutdown(std::net::Shutdown::Both);
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start a thread to refuse a connection; closed");
    }
}

/// Accepted sockets must block (the listeners do not).
trait SetBlocking {
    fn set_blocking(&self) -> std::io::Result<()>;
}
impl SetBlocking for TcpStream {
    fn set_blocking(&self) -> std::io::Result<()> {
        self.set_nonblocking(false)
    }
}
impl SetBlocking for UnixStream {
    fn set_blocking(&self) -> std::io::Result<()> {
        self.set_nonblocking(false)
    }
}

fn print_recipes(primary: &Path, vault: &Path, tcp: Option<&TcpListener>, socket: Option<&Path>) {
    let addr = tcp.and_then(|l| l.local_addr().ok());
    crate::say!("{}", recipes(primary, vault, addr, socket));
}

/// What the server prints when it starts: where it listens, and commands to paste (with
/// absolute paths, so that they work from any directory).
fn recipes(
    primary: &Path,
    vault: &Path,
    tcp: Option<std::net::SocketAddr>,
    socket: Option<&Path>,
) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let v = vault.display();
    let _ = writeln!(
        o,
        "rewind serve: protecting {} with vault {v}",
        primary.display()
    );
    let mut uri = String::new();
    if let Some(addr) = tcp {
        let _ = writeln!(o, "  listening on nbd://{addr}");
        uri = format!("nbd://{addr}/live");
    }
    if let Some(s) = socket {
        let _ = writeln!(o, "  listening on nbd+unix:///?socket={}", s.display());
        uri = format!("nbd+unix:///live?socket={}", s.display());
    }
    let past = uri.replace("/live", "/@before-upgrade");
    let _ = writeln!(o, "\nConnect:");
    let _ = writeln!(
        o,
        "  nbdinfo --list '{uri}'    # exports: live and @snapshots"
    );
    let _ = writeln!(
        o,
        "  qemu-io -f raw '{uri}'    # or: qemu-system-x86_64 -drive file={uri},format=raw"
    );
    let _ = writeln!(o, "  mkdir -p /tmp/rewind-fuse && nbdfuse /tmp/rewind-fuse '{uri}' &    # the volume as the file /tmp/rewind-fuse/nbd");
    if let Some(addr) = tcp {
        let _ = writeln!(
            o,
            "  nbd-client {} {} /dev/nbd0 -N live    # kernel client",
            addr.ip(),
            addr.port()
        );
    }
    let _ = writeln!(o, "\nSnapshot and go back:");
    let _ = writeln!(o, "  rewind snapshot before-upgrade --vault {v}");
    let _ = writeln!(
        o,
        "  qemu-img convert -O raw '{past}' before.img    # read a point without restoring"
    );
    let _ = writeln!(
        o,
        "  rewind restore --vault {v} --at before-upgrade --to restored.img"
    );
    let _ = writeln!(o, "  rewind restore --vault {v} --at before-upgrade --in-place    # the primary itself (clients are disconnected meanwhile)");
    let _ = write!(
        o,
        "\nCtrl-C stops: in-flight requests finish, the log is flushed and sealed."
    );
    o
}

/// Creates the demo volume and its vault if they are missing.
fn prepare_demo(primary: &Path, vault: &Path, size: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(DEFAULT_DIR).with_context(|| format!("cannot create {DEFAULT_DIR}"))?;
    if !primary.exists() {
        let f = std::fs::File::create(primary)
            .with_context(|| format!("cannot create {}", primary.display()))?;
        f.set_len(size)
            .with_context(|| format!("cannot size {}", primary.display()))?;
        crate::say!(
            "Created demo volume {} ({}, sparse).",
            primary.display(),
            output::bytes(size)
        );
    }
    let has_vault = std::fs::read_dir(vault)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if !has_vault {
        let opts = CreateOptions {
            primary: primary.to_path_buf(),
            vault: vault.to_path_buf(),
            block_size: rewind_format::DEFAULT_BLOCK_SIZE,
            compression: Compression::None,
            seal: SealPolicy::default(),
        };
        Vault::create(&opts, &Bar::new(false))
            .with_context(|| format!("cannot create vault {}", vault.display()))?
            .close()?;
        crate::say!("Created vault {}.", vault.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_work_from_anywhere() {
        let r = recipes(
            Path::new("/data/vm.img"),
            Path::new("/data/vm.vault"),
            None,
            Some(Path::new("/run/vm.sock")),
        );
        assert!(
            r.contains("nbdinfo --list 'nbd+unix:///live?socket=/run/vm.sock'"),
            "{r}"
        );
        assert!(
            r.contains("mkdir -p /tmp/rewind-fuse && nbdfuse /tmp/rewind-fuse"),
            "{r}"
        );
        assert!(
            r.contains("--vault /data/vm.vault --at before-upgrade --in-place"),
            "{r}"
        );
        let tcp = recipes(
            Path::new("/data/vm.img"),
            Path::new("/data/vm.vault"),
            Some("127.0.0.1:10809".parse().unwrap_or_else(|e| panic!("{e}"))),
            None,
        );
        assert!(
            tcp.contains("'nbd://127.0.0.1:10809/@before-upgrade' before.img"),
            "{tcp}"
        );
        assert!(
            tcp.contains("nbd-client 127.0.0.1 10809 /dev/nbd0 -N live"),
            "{tcp}"
        );
    }

    #[test]
    fn tcp_beyond_loopback_warns() {
        let warn = |a: &str| tcp_warning(a.parse().unwrap_or_else(|e| panic!("{a}: {e}")));
        assert!(warn("127.0.0.1:10809").is_none());
        assert!(warn("[::1]:10809").is_none());
        for a in ["0.0.0.0:10809", "192.168.1.5:10809", "[::]:10809"] {
            assert!(warn(a).is_some_and(|w| w.contains("without TLS")), "{a}");
        }
    }
}
