//! Requests on the control socket of a running server: snapshot, status, list, verify,
//! sync and check (the long ones stream progress).

use super::*;
pub(super) fn control_conn(server: &Server, s: UnixStream) {
    let _ = s.set_nonblocking(false);
    let Ok(mut w) = s.try_clone() else { return };
    for line in BufReader::new(s).lines() {
        let Ok(line) = line else { return };
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(req)
                if matches!(
                    req["op"].as_str(),
                    Some("verify" | "sync" | "check" | "restore_in_place")
                ) =>
            {
                // Counted until the reply is written (even if it panics): shutdown waits
                // for it.
                let _counted = LongOp::enter(&server.long_ops);
                let reply = match req["op"].as_str() {
                    Some("restore_in_place") => super::rollback::restore_in_place(server, &req, &w),
                    Some("check") => check(server, &req, &w),
                    _ => long_op(server, &req, &w),
                };
                let reply = reply
                    .unwrap_or_else(|e| json!({"ok": false, "error": crate::output::describe(&e)}));
                let sent = writeln!(w, "{reply}");
                drop(_counted);
                if sent.is_err() {
                    return;
                }
                continue;
            }
            Ok(req) => handle_control(server, &req)
                .unwrap_or_else(|e| json!({"ok": false, "error": crate::output::describe(&e)})),
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        if writeln!(w, "{reply}").is_err() {
            return;
        }
    }
}

pub(super) fn handle_control(server: &Server, req: &Value) -> anyhow::Result<Value> {
    let vault = server.volume.vault();
    match req["op"].as_str().unwrap_or("") {
        "snapshot" => {
            let name = req["name"].as_str().unwrap_or("");
            let app = req["app_consistent"].as_bool().unwrap_or(false);
            // Everything acknowledged before the marker is made durable in the primary too.
            server.volume.flush()?;
            let s = vault.snapshot(name, app)?;
            Ok(
                json!({"ok": true, "name": s.name, "seq": s.seq.0, "time": format_time(s.time_ns), "app_consistent": s.app_consistent}),
            )
        }
        "checkpoint" => {
            // Writes behind the log go into the primary, then it is synced.
            let before = server.volume.behind_stats().0;
            server.volume.apply_all_behind()?;
            server.volume.checkpoint()?;
            Ok(json!({"ok": true, "seq": server.volume.drl().checkpoint(), "bytes_written": before}))
        }
        "status" => Ok(status(server)),
        "list" => Ok(json!({"ok": true, "list": crate::cmd::list::to_json(vault)})),
        other => bail!("unknown control request {other:?} (snapshot, checkpoint, status, list, verify, sync, check, restore_in_place)"),
    }
}

/// Counts a running verify or sync while it lives.
pub(super) struct LongOp<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> LongOp<'a> {
    fn enter(n: &'a std::sync::atomic::AtomicUsize) -> LongOp<'a> {
        n.fetch_add(1, Ordering::AcqRel);
        LongOp(n)
    }
}

impl Drop for LongOp<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs a verify or sync request inside the server, streaming progress lines to `w`.
pub(super) fn long_op(server: &Server, req: &Value, w: &UnixStream) -> anyhow::Result<Value> {
    use rewind_engine::verify::{self, Target, VerifyOptions};
    let _one = match server.scanning.try_lock() {
        Ok(g) => g,
        // An earlier request panicked while holding it: nothing runs now.
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            bail!("a verify or sync is already running in this server; wait for it to finish")
        }
    };
    let primary = server.volume.primary_path();
    if let (Some("sync"), Some(r)) = (req["op"].as_str(), server.volume.vault().restore_intent()) {
        bail!(
            "an in-place restore to {} (seq {}) was interrupted; finish it first: rewind restore --vault {} --in-place --resume",
            r.point,
            r.target_seq,
            server.volume.vault().dir().display()
        );
    }
    if let Some(asked) = req["primary"].as_str() {
        let served = std::fs::canonicalize(primary).unwrap_or_else(|_| primary.to_path_buf());
        if Path::new(asked) != served {
            bail!(
                "this server serves {}, not {asked}; stop it to compare another image",
                served.display()
            );
        }
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let opts = VerifyOptions {
        region_size: req["region_size"]
            .as_u64()
            .unwrap_or(verify::DEFAULT_REGION_SIZE),
        threads: req["threads"].as_u64().unwrap_or(0) as usize,
        chunk_bytes: req["chunk_bytes"].as_u64().unwrap_or(0),
        cancel: Some(cancel.clone()),
        ..VerifyOptions::default()
    };
    let opts = if req["dirty_only"].as_bool().unwrap_or(false) {
        let drl = server.volume.drl();
        VerifyOptions {
            only_regions: Some(rewind_engine::drl::covering_regions(
                drl.dirty_regions(),
                drl.region_size(),
                opts.region_size,
                server.volume.size(),
            )),
            ..opts
        }
    } else {
        opts
    };
    let progress = StreamProgress {
        cancel,
        ..StreamProgress::new(w.try_clone()?, server.shutdown.clone())
    };
    let target = Target::Live(&server.volume);
    let vault = server.volume.vault().info().dir;
    let op = req["op"].as_str().unwrap_or("");
    tracing::info!(op, region_size = opts.region_size, "control: starting");
    let report = if op == "sync" {
        let r = verify::sync(target, &opts, &progress)?;
        for m in &r.suspect {
            tracing::warn!(
                from = %m.interval.map_or("the base image".to_string(), |(a, b)| format!("interval {a}-{b}")),
                blocks = m.blocks.len(),
                first_blocks = ?m.blocks.iter().take(16).collect::<Vec<_>>(),
                "sync marked blocks suspect: the vault's copy of them was wrong"
            );
        }
        tracing::info!(
            discrepant = r.verify.compare.len(),
            copied = r.fixup_blocks,
            suspect = r.suspect.len(),
            "control: sync done"
        );
        crate::cmd::sync::report_json_sync(&r, &vault, primary, true)
    } else {
        let r = verify::verify(target, &opts, &progress)?;
        tracing::info!(discrepant = r.compare.len(), "control: verify done");
        crate::cmd::verify::report_json(&r, &vault, primary, true)
    };
    Ok(json!({"ok": true, "report": report}))
}

/// Runs a check inside the server at the rate asked for (hosts keep writing), streaming
/// progress lines to `w`; one at a time.
pub(super) fn check(server: &Server, req: &Value, w: &UnixStream) -> anyhow::Result<Value> {
    let _one = match server.checking.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            bail!("a check is already running in this server; wait for it to finish")
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let progress = StreamProgress {
        cancel: cancel.clone(),
        ..StreamProgress::new(w.try_clone()?, server.shutdown.clone())
    };
    let opts = rewind_vault::check::CheckOptions {
        rate: req["rate"].as_u64().filter(|r| *r > 0),
        cancel: Some(cancel),
    };
    tracing::info!(rate = ?opts.rate, "control: check starting");
    let r = rewind_engine::check::check_live(&server.volume, &opts, &progress)?;
    for p in &r.problems {
        tracing::error!(file = %p.path.display(), offset = p.offset, structure = %p.structure, error = %p.fault, "check: the vault is damaged");
    }
    tracing::info!(
        problems = r.problems.len(),
        bytes = r.bytes_read,
        seconds = r.elapsed.as_secs_f64(),
        "control: check done"
    );
    Ok(json!({"ok": true, "report": crate::cmd::check::report_json(&r)}))
}

/// Progress of a verify or sync, sent to the client as JSON lines (at most ten a second).
/// A client that goes away, or a server shutdown, cancels the work.
pub(super) struct StreamProgress {
    w: Mutex<UnixStream>,
    done: std::sync::atomic::AtomicU64,
    last: Mutex<Instant>,
    cancel: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
}

impl StreamProgress {
    pub(super) fn new(w: UnixStream, shutdown: Arc<AtomicBool>) -> StreamProgress {
        StreamProgress {
            w: Mutex::new(w),
            done: std::sync::atomic::AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
            cancel: Arc::new(AtomicBool::new(false)),
            shutdown,
        }
    }

    /// Set when the client went away or the server stops.
    pub(super) fn cancel(&self) -> &AtomicBool {
        &self.cancel
    }

    fn send(&self, v: &Value) {
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        if writeln!(w, "{v}").is_err() {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
}

impl rewind_vault::Progress for StreamProgress {
    fn start(&self, what: &str, total: u64) {
        self.done.store(0, Ordering::Relaxed);
        self.send(&json!({"progress": {"what": what, "total": total}}));
    }
    fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if self.shutdown.load(Ordering::Relaxed) {
            self.cancel.store(true, Ordering::Relaxed);
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= Duration::from_millis(100) {
            *last = Instant::now();
            drop(last);
            self.send(&json!({"progress": {"done": done}}));
        }
    }
    fn finish(&self) {
        self.send(&json!({"progress": {"done": self.done.load(Ordering::Relaxed)}}));
    }
}

pub(super) fn status(server: &Server) -> Value {
    let st = &server.stats;
    let info = server.volume.vault().info();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let last_flush = get(&st.last_flush_ns);
    let refusal = server.volume.write_refusal();
    let mut v = json!({
        "ok": true,
        "serving": true,
        "healthy": refusal.is_none(),
        "live_closed": server.exports.live_closed(),
        "write_refusal": refusal.map(|r| json!({
            "since": format_time(
                r.since
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            ),
            "reason": r.reason,
            "path": r.path,
            "resumes_by_itself": r.retries_by_itself,
        })),
        "pid": std::process::id(),
        "uptime_seconds": server.started.elapsed().as_secs_f64(),
        "listen": server.listen,
        "clients": get(&st.clients),
        "connections_total": get(&st.connections_total),
        "writes": get(&st.writes),
        "bytes_written": get(&st.bytes_written),
        "reads": get(&st.reads),
        "bytes_read": get(&st.bytes_read),
        "flushes": get(&st.flushes),
        "trims": get(&st.trims),
        "zeroes": get(&st.zeroes),
        "errors": get(&st.errors),
        "last_flush": if last_flush == 0 { Value::Null } else { json!(format_time(last_flush as i64)) },
        "dirty_region_log": {
            "clean_stop": false,
            "region_size": server.volume.drl().region_size(),
            "dirty_regions": server.volume.drl().dirty_regions().len(),
            "dirty_limit": server.volume.drl().dirty_limit(),
            "checkpoint_seq": server.volume.drl().checkpoint(),
            "file_writes": server.volume.drl().file_writes(),
            "mark_wait_seconds": server.volume.drl().mark_wait().as_secs_f64(),
        },
        "now": format_time(now_ns()),
        "memory": memory(server),
    });
    // The fields `rewind status` shows without a server too, named the same.
    crate::cmd::status::add_vault_fields(&mut v, &info);
    v
}

/// The server's memory: what the process holds (from /proc), what the vault holds by part
/// and what bounds them (see the README, "Memory").
fn memory(server: &Server) -> Value {
    let m = server.volume.vault().memory();
    let behind = server.volume.behind_stats();
    let bounds = server.capacity.bounds();
    let proc_kib = |key: &str| -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    json!({
        "resident_bytes": proc_kib("VmRSS:"),
        "peak_resident_bytes": proc_kib("VmHWM:"),
        "open_interval": {
            "present_map_bytes": m.present_map_bytes,
            "record_index_bytes": m.record_index_bytes,
            "append_buffer_bytes": m.append_buffer_bytes,
        },
        "caches": {
            "delta_maps": m.caches.maps,
            "delta_map_bytes": m.caches.map_bytes,
            "delta_map_bytes_limit": m.limits.map_bytes,
            "segment_files": m.caches.segment_files,
            "segment_files_limit": m.limits.segment_files,
            "chain_index_runs": m.caches.index_runs,
        },
        "write_behind": {
            "bytes": behind.0,
            "runs": behind.1,
            "kept_bytes": server.volume.behind_kept_bytes(),
        },
        "per_connection_limit_bytes": rewind_nbd::connection_memory_bound(bounds),
        "max_connections": bounds.max_connections,
        "max_threads": bounds.max_threads,
    })
}
