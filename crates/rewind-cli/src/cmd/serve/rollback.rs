//! Rolling the primary back in place while the server runs: `rewind restore --in-place`
//! through the control socket.
//!
//! A host must never see the disk part way between two points, so the live export is
//! closed for the length of the restore: new opens of `live` are refused with a message
//! that says why, every connection is disconnected (its in-flight requests finish first;
//! qemu reconnects by itself with `reconnect-delay`), then the log is flushed, the restore
//! planned and carried out through the same engine code as offline (intent, undo snapshot,
//! journaled copy), and `live` is opened again. Point exports may be opened meanwhile.
//! A restore that fails or is stopped keeps `live` closed: its intent is pending, and a
//! `rewind restore --in-place --resume` (online or, after a stop, offline or by the next
//! `rewind serve`) finishes it first.

use std::sync::Arc;

use rewind_engine::exports::VaultExports;
use rewind_engine::restore::{self, InPlacePlan, RestoreReport};
use rewind_nbd::{Export, ExportError, Exports};
use rewind_vault::Point;

use super::requests::StreamProgress;
use super::*;

/// The server's exports, with `live` closed while an in-place restore runs.
pub(super) struct GatedExports {
    inner: VaultExports,
    /// Why `live` is closed, when it is.
    closed: Mutex<Option<String>>,
}

impl GatedExports {
    pub(super) fn new(inner: VaultExports) -> GatedExports {
        GatedExports {
            inner,
            closed: Mutex::new(None),
        }
    }

    fn close_live(&self, why: String) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    fn open_live(&self) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Why `live` is closed, if it is (for `rewind status`).
    pub(super) fn live_closed(&self) -> Option<String> {
        self.closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Exports for GatedExports {
    fn list(&self) -> Vec<(String, String)> {
        self.inner.list()
    }

    fn open(&self, name: &str) -> Result<Arc<dyn Export>, ExportError> {
        if name.is_empty() || name == "live" {
            if let Some(why) = self.live_closed() {
                return Err(ExportError::Unknown(why));
            }
        }
        self.inner.open(name)
    }
}

/// Disconnects every NBD connection: reading stops, in-flight requests finish and are
/// answered, the connection ends. Twice, for a connection accepted while the first round
/// ran (it cannot open `live` any more, but may have been accepted just before).
fn disconnect_all(server: &Server) {
    for _ in 0..2 {
        let conns = std::mem::take(&mut *server.conns.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, c) in &conns {
            c.close();
        }
        for (h, c) in conns {
            let waited = Instant::now();
            while !h.is_finished() && waited.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !h.is_finished() {
                c.shutdown(std::net::Shutdown::Both);
            }
            let _ = h.join();
        }
    }
}

/// The point a request asks for: `at`, or with `resume` the one of the interrupted restore.
fn asked_point(server: &Server, req: &Value) -> anyhow::Result<Point> {
    match (req["at"].as_str(), server.volume.vault().restore_intent()) {
        (Some(at), _) => Ok(at.parse()?),
        (None, Some(r)) => Ok(Point::Seq(r.target_seq)),
        (None, None) => bail!(
            "nothing to resume: no in-place restore of {} was interrupted",
            server.volume.primary_path().display()
        ),
    }
}

/// Runs `rewind restore --in-place` inside the server (see the module doc), streaming
/// progress lines to `w`. The reply's `report` is what the offline command prints as JSON.
pub(super) fn restore_in_place(
    server: &Server,
    req: &Value,
    w: &UnixStream,
) -> anyhow::Result<Value> {
    let _one = match server.scanning.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => bail!(
            "a verify, sync or restore is already running in this server; wait for it to finish"
        ),
    };
    let point = asked_point(server, req)?;
    let volume = &server.volume;
    if req["dry_run"].as_bool().unwrap_or(false) {
        // Hosts go on writing: what changes until a real restore is copied too.
        let (plan, _) = restore::plan_in_place(volume, &point)?;
        return Ok(
            json!({"ok": true, "report": crate::cmd::restore::in_place_json(&plan, None, true)}),
        );
    }
    let shown = req["at"]
        .as_str()
        .unwrap_or("the interrupted restore's point");
    server.exports.close_live(format!(
        "the live volume is being restored in place to {shown}; it is back in a moment (point exports can be opened meanwhile)"
    ));
    disconnect_all(server);
    tracing::warn!(
        point = shown,
        "in-place restore: live closed, clients disconnected"
    );
    let progress = StreamProgress::new(w.try_clone()?, server.shutdown.clone());
    let done = (|| -> anyhow::Result<(InPlacePlan, RestoreReport)> {
        volume.flush()?;
        let (mut plan, view) = restore::plan_in_place(volume, &point)?;
        if req["at"].is_null() {
            if let Some(r) = &plan.interrupted {
                plan.asked = r.point.clone();
            }
        }
        let report =
            restore::execute_in_place(&plan, &view, volume, &progress, Some(progress.cancel()))?;
        Ok((plan, report))
    })();
    match done {
        Ok((plan, report)) => {
            server.exports.open_live();
            tracing::warn!(point = %plan.asked, seq = %plan.point.seq, bytes = report.bytes_written, "in-place restore done: live open again");
            Ok(
                json!({"ok": true, "report": crate::cmd::restore::in_place_json(&plan, Some(&report), false)}),
            )
        }
        Err(e) => {
            if volume.vault().restore_intent().is_some() {
                server.exports.close_live(format!(
                    "an in-place restore of the live volume was interrupted; it stays closed until `rewind restore --vault {} --in-place --resume` finishes it",
                    volume.vault().dir().display()
                ));
            } else {
                server.exports.open_live();
            }
            Err(e)
        }
    }
}
