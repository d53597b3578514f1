use std::path::PathBuf;

use anyhow::Context;
use rewind_engine::restore;
use rewind_vault::{format_time, Point, Vault};
use serde_json::json;

use super::VaultArg;
use crate::output::{self, Bar};

mod in_place;

use in_place::in_place;
pub use in_place::in_place_json;

/// Write a new raw image of the volume as it was at a point (--to), or bring the primary
/// itself back to that point (--in-place; through a running server, which disconnects its
/// clients for the length of it). Every block is
/// verified against its checksum on the way. --to: zero blocks become holes and the image
/// appears only once complete. --in-place: only blocks changed since the point are copied,
/// the current state is first kept as a snapshot, and the copy is journaled like any write.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  rewind restore --vault vm.vault --at before-upgrade --to vm-before.img\n  rewind restore --vault vm.vault --at -15m --to vm-15m-ago.img --dry-run\n  rewind restore --vault vm.vault --at 2026-11-21T10:00:00Z --to vm-10am.img"
)]
pub struct Args {
    #[command(flatten)]
    pub vault: VaultArg,
    /// The point: snapshot name, seq:N, RFC 3339 time, -15m style age, or now
    #[arg(
        long,
        value_name = "POINT",
        allow_hyphen_values = true,
        value_parser = output::parse_point,
        required_unless_present = "resume"
    )]
    pub at: Option<String>,
    /// Path of the new image
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "in_place",
        conflicts_with = "in_place"
    )]
    pub to: Option<PathBuf>,
    /// Bring the primary itself back to the point (through a running server, which
    /// disconnects its clients for the length of it)
    #[arg(long)]
    pub in_place: bool,
    /// Finish an in-place restore that was interrupted (Ctrl-C, kill, power cut), to the
    /// point it was asked for
    #[arg(long, requires = "in_place", conflicts_with = "at")]
    pub resume: bool,
    /// Replace --to if it exists
    #[arg(long)]
    pub force: bool,
    /// On a damaged vault: write every block that reads, leave the unreadable ones as
    /// holes, list them (stderr, and "unreadable" in --json) and exit 3. Never silent: an
    /// image with unreadable blocks always exits non-zero
    #[arg(long, conflicts_with = "in_place")]
    pub salvage: bool,
    /// Print what would be done, and do nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dir = a.vault.path();
    let point: Option<Point> = a.at.as_deref().map(str::parse).transpose()?;
    let (Some(to), Some(point)) = (a.to.clone(), point.clone()) else {
        return in_place(&a, &dir, point.as_ref());
    };
    let at = a.at.clone().unwrap_or_default();
    let vault = Vault::open_read_only(&dir)
        .with_context(|| format!("cannot open vault {}", dir.display()))?;
    let (plan, view) = restore::plan_salvage(&vault, &point, &to, a.force, a.salvage)
        .context("cannot plan the restore")?;
    let summary = json!({
        "point": at,
        "seq": plan.point.seq.0,
        "time": format_time(plan.point.time_ns),
        "to": plan.to,
        "volume_size": plan.volume_size,
        "blocks_from_base": plan.from_base,
        "blocks_base_holes": plan.base_holes,
        "blocks_from_log": plan.from_log,
        "blocks_zeroed": plan.zeroed,
        "delta_maps_consulted": plan.maps_consulted,
        "suspect": crate::cmd::list::suspect_reads_json(&plan.suspect),
        "dry_run": a.dry_run,
    });
    crate::cmd::list::warn_suspect_reads(&at, &plan.suspect);
    let bs = u64::from(plan.block_size);
    if a.dry_run {
        if a.json {
            return output::json(&summary);
        }
        println!(
            "Would restore {} (seq {}, {}) to {}:",
            at,
            plan.point.seq,
            format_time(plan.point.time_ns),
            plan.to.display()
        );
        println!(
            "  {} from the base image ({} of it holes, not read), {} from the write log, {} zeroed",
            output::bytes(plan.from_base * bs),
            output::bytes(plan.base_holes * bs),
            output::bytes(plan.from_log * bs),
            output::bytes(plan.zeroed * bs)
        );
        println!(
            "  volume {}, {} delta maps consulted{}",
            output::bytes(plan.volume_size),
            plan.maps_consulted,
            if plan.replace && plan.to.exists() {
                ", replacing the existing file"
            } else {
                ""
            }
        );
        return Ok(());
    }
    let stop = output::StopSignals::install()?;
    let report = restore::execute_or_stop(&plan, &view, &Bar::new(a.json), stop.flag())
        .map_err(|e| stop.exit_code(e))
        .with_context(|| {
            format!(
                "restore to {} failed; nothing was written there",
                plan.to.display()
            )
        })?;
    let bad: u64 = report.unreadable.iter().map(|u| u.count).sum();
    for u in &report.unreadable {
        eprintln!(
            "unreadable: blocks {}..{} (bytes {}..{}): {}",
            u.first,
            u.first + u.count,
            u.first * bs,
            (u.first + u.count) * bs,
            u.error
        );
    }
    if bad > 0 {
        eprintln!(
            "error: {} could not be read and are holes in {} (zeroes); the rest is the point's data",
            crate::cmd::list::plural(bad, "block"),
            plan.to.display()
        );
    }
    let exit = if bad > 0 {
        Err(crate::exit::Code(crate::exit::CORRUPTED).into())
    } else {
        Ok(())
    };
    if a.json {
        let mut s = summary;
        s["bytes_written"] = json!(report.bytes_written);
        s["hole_blocks"] = json!(report.holes);
        s["seconds"] = json!(report.elapsed.as_secs_f64());
        s["salvage"] = json!(a.salvage);
        s["unreadable_blocks"] = json!(bad);
        s["unreadable"] = json!(report
            .unreadable
            .iter()
            .map(|u| json!({"first_block": u.first, "blocks": u.count, "offset": u.first * bs, "length": u.count * bs, "error": u.error}))
            .collect::<Vec<_>>());
        output::json(&s)?;
        return exit;
    }
    println!(
        "Restored {} (seq {}, {}) to {}: {} written, the rest left sparse, in {:.1}s{}.",
        at,
        plan.point.seq,
        format_time(plan.point.time_ns),
        plan.to.display(),
        output::bytes(report.bytes_written),
        report.elapsed.as_secs_f64(),
        if bad > 0 {
            format!(
                " ({} unreadable, listed on stderr)",
                output::bytes(bad * bs)
            )
        } else {
            String::new()
        }
    );
    exit
}
