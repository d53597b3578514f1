//! The control socket of a running `rewind serve`: `<vault>/control.sock`, one JSON
//! request per line, one JSON reply per line. The CLI uses it when a server holds the
//! vault: `rewind snapshot`, `rewind status`, `rewind list`, `rewind verify`, `rewind sync`.
//!
//! Long requests (verify, sync) stream: before the reply come progress lines,
//! `{"progress": {"what": "...", "total": N}}` when a phase starts and
//! `{"progress": {"done": N}}` as it advances (bytes), at most ten a second. A client that
//! goes away cancels the request.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::{json, Value};

/// Where a vault's control socket lives.
pub fn socket_path(vault: &Path) -> PathBuf {
    vault.join("control.sock")
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
    let path = socket_path(vault);
    let Ok(mut s) = UnixStream::connect(&path) else {
        return Ok(None);
    };
    s.set_read_timeout(Some(STREAM_SILENCE))?;
    writeln!(s, "{req}").context("sending to the server's control socket")?;
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
    let path = socket_path(vault);
    let Ok(mut s) = UnixStream::connect(&path) else {
        return Ok(None);
    };
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    writeln!(s, "{req}").context("sending to the server's control socket")?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .context("reading the server's reply")?;
    let v: Value = serde_json::from_str(&line).context("the server's reply is not JSON")?;
    reply(v).map(Some)
}
