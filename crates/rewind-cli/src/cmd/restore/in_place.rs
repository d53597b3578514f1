//! `rewind restore --in-place`: through a running server (its control socket; the server
//! closes `live` and disconnects its clients for the length of it) or on the files
//! directly, with the same engine code, the same JSON and the same words either way.

use std::path::Path;

use anyhow::Context;
use rewind_engine::intercept::LiveVolume;
use rewind_engine::restore::{self, InPlacePlan, RestoreReport};
use rewind_vault::{format_time, Point, Vault};
use serde_json::{json, Value};

use super::Args;
use crate::output::{self, Bar};

/// What an in-place restore reports as JSON, online and offline alike.
pub fn in_place_json(plan: &InPlacePlan, report: Option<&RestoreReport>, dry_run: bool) -> Value {
    let bs = u64::from(plan.block_size);
    let mut j = json!({
        "point": plan.asked,
        "seq": plan.point.seq.0,
        "time": format_time(plan.point.time_ns),
        "primary": plan.primary,
        "in_place": true,
        "blocks_changed_since": plan.blocks,
        "bytes_to_copy": plan.blocks * bs,
        "undo_snapshot": plan.undo_snapshot,
        "interrupted": plan.interrupted.as_ref().map(|r| json!({
            "point": r.point,
            "seq": r.target_seq.0,
            "started": format_time(r.started_ns),
        })),
        "resumes": plan.resumes(),
        "suspect": crate::cmd::list::suspect_reads_json(&plan.suspect),
        "dry_run": dry_run,
    });
    if let Some(r) = report {
        j["bytes_written"] = json!(r.bytes_written);
        j["seconds"] = json!(r.elapsed.as_secs_f64());
    }
    j
}

pub(super) fn in_place(a: &Args, dir: &Path, point: Option<&Point>) -> anyhow::Result<()> {
    let req = json!({
        "op": "restore_in_place",
        "at": a.at,
        "dry_run": a.dry_run,
    });
    let bar = Bar::new(a.json);
    let online = crate::control::request_stream(dir, &req, |p| bar.relay(p))?;
    bar.clear();
    let (j, online) = match online {
        Some(mut reply) => (reply["report"].take(), true),
        None => (offline(a, dir, point)?, false),
    };
    if a.json {
        return output::json(&j);
    }
    print_human(&j, dir, online);
    Ok(())
}

/// With no server: opens the vault as its writer and the primary under its lock.
fn offline(a: &Args, dir: &Path, point: Option<&Point>) -> anyhow::Result<Value> {
    let vault = std::sync::Arc::new(
        Vault::open_as(dir, "rewind restore --in-place").with_context(|| {
            format!(
                "cannot open vault {} for an in-place restore",
                dir.display()
            )
        })?,
    );
    let primary = std::path::PathBuf::from(vault.info().primary);
    let _protected = super::super::protect(&primary, &vault, false)?;
    let volume = LiveVolume::open(&primary, vault.clone())?;
    let interrupted = vault.restore_intent();
    if !volume.unclean_regions().is_empty() {
        eprintln!(
            "The last stop was not clean: the {} region(s) the dirty region log lists are compared first (what the primary has and the vault lost is copied into it).",
            volume.unclean_regions().len()
        );
    }
    let point = match (point, &interrupted) {
        (Some(p), _) => p.clone(),
        (None, Some(r)) => Point::Seq(r.target_seq),
        (None, None) => anyhow::bail!(
            "nothing to resume: no in-place restore of {} was interrupted",
            primary.display()
        ),
    };
    let planning = std::time::Instant::now();
    let (mut plan, view) =
        restore::plan_in_place(&volume, &point).context("cannot plan the restore")?;
    tracing::debug!(
        plan_ms = planning.elapsed().as_millis() as u64,
        blocks = plan.blocks,
        "in-place restore planned"
    );
    if let (true, Some(r)) = (a.resume, &interrupted) {
        plan.asked = r.point.clone();
    }
    crate::cmd::list::warn_suspect_reads(&plan.asked, &plan.suspect);
    if a.dry_run {
        if interrupted.is_none() {
            volume.stop()?;
        }
        return Ok(in_place_json(&plan, None, true));
    }
    say_interrupted(&plan);
    let stop = output::StopSignals::install()?;
    let bar = Bar::new(a.json);
    let report = match restore::execute_in_place(&plan, &view, &volume, &bar, Some(stop.flag())) {
        Ok(r) => r,
        Err(e @ restore::RestoreError::Interrupted { .. }) => {
            return Err(stop.exit_code(e).context(format!(
                "stopped; to finish: rewind restore --vault {} --in-place --resume",
                dir.display()
            )))
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "in-place restore failed; the primary may be part way to {}. Run `rewind restore --vault {} --in-place --resume` to finish it",
                plan.asked,
                dir.display()
            )))
        }
    };
    volume
        .stop()
        .context("cannot flush and seal after the restore")?;
    Ok(in_place_json(&plan, Some(&report), false))
}

/// Says that an interrupted restore is finished (or superseded) by this one.
fn say_interrupted(plan: &InPlacePlan) {
    if let Some(r) = &plan.interrupted {
        if plan.resumes() {
            eprintln!(
                "An in-place restore to {} (seq {}) was interrupted; finishing it.",
                r.point, r.target_seq
            );
        } else {
            eprintln!(
                "An in-place restore to {} (seq {}) was interrupted; going to {} (seq {}) instead.",
                r.point, r.target_seq, plan.asked, plan.point.seq
            );
        }
    }
}

fn print_human(j: &Value, dir: &Path, online: bool) {
    let s = |k: &str| j[k].as_str().unwrap_or("?").to_string();
    let bytes = |k: &str| output::bytes(j[k].as_u64().unwrap_or(0));
    if j["dry_run"] == json!(true) {
        println!(
            "Would bring {} back to {} (seq {}, {}): copy {} changed since, after keeping the current state as snapshot {}{}.",
            s("primary"),
            s("point"),
            j["seq"],
            s("time"),
            bytes("bytes_to_copy"),
            s("undo_snapshot"),
            if online {
                " (the server disconnects its clients for the length of it; what they write until then is copied back too)"
            } else {
                ""
            }
        );
        return;
    }
    if online {
        let i = &j["interrupted"];
        if i.is_object() && j["resumes"] == json!(true) {
            eprintln!(
                "An interrupted in-place restore to {} was finished.",
                i["point"].as_str().unwrap_or("?")
            );
        }
    }
    println!(
        "{} is back at {} (seq {}): {} copied in {:.2}s{}. Undo with: rewind restore --vault {} --at {} --in-place",
        s("primary"),
        s("point"),
        j["seq"],
        bytes("bytes_written"),
        j["seconds"].as_f64().unwrap_or(0.0),
        if online { ", clients were disconnected meanwhile" } else { "" },
        dir.display(),
        s("undo_snapshot")
    );
}
