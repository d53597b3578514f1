//! The control socket of a running `rewind serve`: one JSON request per line, one JSON
//! reply per line. The CLI uses it when a server holds the vault: `rewind snapshot`,
//! `rewind status`, `rewind list`, `rewind verify`, `rewind sync`.
//!
//! Long requests (verify, sync) stream: before the reply come progress lines,
//! `{"progress": {"what": "...", "total": N}}` when a phase starts and
//! `{"progress": {"done": N}}` as it advances (bytes), at most ten a second. A client that
//! goes away cancels the request.
//!
//! **Where it is.** Not in the vault: a unix socket path holds at most 108 bytes (a deep
//! vault path would not fit), and some file systems a vault may live on (FUSE, network
//! file systems) cannot hold a socket at all. The socket lives in a short runtime
//! directory private to the user (mode 0700): `$XDG_RUNTIME_DIR/rewind`, else
//! `/run/rewind` for root, else `/tmp/rewind-<uid>`; its name is made of the vault's id
//! and a hash of the vault's absolute path, `<16 hex>-<16 hex>.sock`. Once it listens,
//! the server writes the pointer `<vault>/control` ([`rewind_format::control`]: its pid
//! and the socket's path); a clean stop removes both. Clients read the pointer and
//! connect.
//!
//! **Stale servers.** A server killed with SIGKILL leaves its pointer and socket file; a
//! client connecting there is refused (nobody listens), which means "no server", and the
//! next server of the vault removes the dead socket and binds it again. A live server
//! cannot be taken for another: a socket name belongs to one vault at one path, only the
//! holder of that vault's lock serves it, and no other user can create sockets in the
//! directory.

use std::io::{BufRead, BufReader};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rewind_format::control::{ControlPointer, MAX_SOCKET_PATH};
use serde_json::{json, Value};

/// The pointer file of a vault.
pub fn pointer_path(vault: &Path) -> PathBuf {
    vault.join(rewind_format::names::CONTROL)
}

/// A bound control socket and the pointer that names it; [`Listening::close`] removes
/// both.
pub struct Listening {
    pub listener: UnixListener,
    pub socket: PathBuf,
    pointer: PathBuf,
}

impl Listening {
    /// Binds the control socket of the vault `vault_id` at `vault` (absolute) and writes
    /// the pointer.
    pub fn bind(vault: &Path, vault_id: &str) -> anyhow::Result<Listening> {
        let dir = runtime_dir()?;
        let socket = dir.join(socket_name(vault, vault_id));
        let listener = bind_unix(&socket)?;
        let pointer = pointer_path(vault);
        let p = ControlPointer {
            pid: std::process::id(),
            socket_path: socket.clone().into_os_string().into_vec(),
        };
        let tmp = pointer.with_extension("tmp");
        std::fs::write(&tmp, p.encode())
            .and_then(|()| std::fs::rename(&tmp, &pointer))
            .with_context(|| format!("cannot write the control pointer {}", pointer.display()))?;
        Ok(Listening {
            listener,
            socket,
            pointer,
        })
    }

    /// Stops listening; removes the socket and the pointer.
    pub fn close(self) {
        drop(self.listener);
        let _ = std::fs::remove_file(&self.pointer);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Binds a unix socket at `path`, replacing a socket file nobody listens on any more.
pub fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("{} is in use by another server", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let l =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// `<first 16 hex digits of the vault id>-<FNV-1a of the vault's path, 16 hex>.sock`:
/// one name per vault and path (a copied vault has the same id, not the same path).
fn socket_name(vault: &Path, vault_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vault.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let id: String = vault_id.chars().take(16).collect();
    format!("{id}-{h:016x}.sock")
}

/// Longest runtime directory path that leaves room for a socket name.
const MAX_DIR: usize = MAX_SOCKET_PATH - 40;

/// The directory for control sockets, created private (0700) if missing: see the module
/// doc.
fn runtime_dir() -> anyhow::Result<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let xdg = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.is_dir())
        .map(|d| d.join("rewind"));
    let run = (uid == 0 && Path::new("/run").is_dir()).then(|| PathBuf::from("/run/rewind"));
    let dir = xdg
        .into_iter()
        .chain(run)
        .find(|d| d.as_os_str().len() <= MAX_DIR)
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/rewind-{uid}")));
    private_dir(&dir, uid)?;
    Ok(dir)
}

/// Creates `dir` with mode 0700, or checks that the one there is a directory (not a
/// symlink) of `uid`'s that nobody else can write.
fn private_dir(dir: &Path, uid: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot create {}", dir.display()));
        }
    }
    let m = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot inspect {}", dir.display()))?;
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o022 != 0 {
        bail!(
            "{} is not a private directory of yours (a directory owned by uid {uid}, writable by nobody else); remove it, or set XDG_RUNTIME_DIR",
            dir.display()
        );
    }
    Ok(())
}

/// Connects to the server holding `vault`. `Ok(None)`: no server runs (no pointer, or one
/// a killed server left, whose socket nobody listens on).
fn connect(vault: &Path) -> anyhow::Result<Option<UnixStream>> {
    let pointer = pointer_path(vault);
    let bytes = match std::fs::read(&pointer) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", pointer.display())),
    };
    let p = match ControlPointer::decode(&bytes) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(pointer = %pointer.display(), error = %e, "damaged control pointer: taken as no server");
            return Ok(None);
        }
    };
    let socket = PathBuf::from(std::ffi::OsString::from_vec(p.socket_path));
    match UnixStream::connect(&socket) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "the server holding {} (pid {}) listens on {}, which is not yours: run this as the user who started `rewind serve`",
            vault.display(),
            p.pid,
            socket.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot connect to {}", socket.display())),
    }
}

/// How long a streaming request may stay silent (no progress line) before the client
/// gives up.
const STREAM_SILENCE: Duration = Duration::from_secs(600);

/// Sends a long request (verify, sync) to the server holding `vault`, handing every
/// progress line to `progress`. `Ok(None)`: no server is running.
pub fn request_stream(
    vault: &Path,
    req: &Value,
    mut progress: impl FnMut(&Value),
) -> anyhow::Result<Option<Value>> {
    let Some(s) = connect(vault)? else {
        return Ok(None);
    };
    s.set_read_timeout(Some(STREAM_SILENCE))?;
    send_line(&s, &req.to_string()).context("sending to the server's control socket")?;
    let mut r = BufReader::new(&s);
    loop {
        let mut line = String::new();
        let n = r
            .read_line(&mut line)
            .context("reading the server's reply")?;
        if n == 0 {
            return Err(anyhow!(
                "the server closed the control socket before replying"
            ));
        }
        let v: Value = serde_json::from_str(&line).context("the server's reply is not JSON")?;
        if v.get("progress").is_some() {
            progress(&v["progress"]);
            continue;
        }
        return reply(v).map(Some);
    }
}

/// Writes `line` and a newline with MSG_NOSIGNAL: a server that went away is an error
/// here, not a SIGPIPE that ends the command without a word (the CLI gives SIGPIPE its
/// default action, see `output::default_sigpipe`).
fn send_line(s: &UnixStream, line: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    let mut rest = &buf[..];
    while !rest.is_empty() {
        // SAFETY: `rest` is valid for `rest.len()` bytes of reads for the duration of the
        // call; the socket is open.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        rest = &rest[n as usize..];
    }
    Ok(())
}

fn reply(v: Value) -> anyhow::Result<Value> {
    if v["ok"] == json!(true) {
        Ok(v)
    } else {
        Err(anyhow!(
            "{}",
            v["error"]
                .as_str()
                .unwrap_or("the server refused the request")
        ))
    }
}

/// Sends one request to the server holding `vault`. `Ok(None)`: no server is running.
pub fn request(vault: &Path, req: &Value) -> anyhow::Result<Option<Value>> {
    let Some(s) = connect(vault)? else {
        return Ok(None);
    };
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    send_line(&s, &req.to_string()).context("sending to the server's control socket")?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .context("reading the server's reply")?;
    let v: Value = serde_json::from_str(&line).context("the server's reply is not JSON")?;
    reply(v).map(Some)
}
