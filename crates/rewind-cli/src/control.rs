//! The control socket of a running `rewind serve`: `<vault>/control.sock`, one JSON
//! request per line, one JSON reply per line. The CLI uses it when a server holds the
//! vault: `rewind snapshot`, `rewind status`, `rewind list`.

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
    if v["ok"] == json!(true) {
        Ok(Some(v))
    } else {
        Err(anyhow!(
            "{}",
            v["error"]
                .as_str()
                .unwrap_or("the server refused the request")
        ))
    }
}
