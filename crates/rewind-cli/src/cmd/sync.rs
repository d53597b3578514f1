use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rewind_engine::verify::{self, OfflineVolume, SyncReport, Target, VerifyOptions};
use rewind_vault::{format_time, Vault, SUSPECT_DIFFERS, SUSPECT_UNREADABLE};
use serde_json::{json, Value};

use super::VaultArg;
use crate::cmd::verify::{check_primary, online, print_human as print_scan, report_json};
use crate::output::{self, Bar};

/// Blocks listed per suspect entry in reports.
const LISTED: usize = 16;

/// Repair the vault from the primary: verify, then copy every discrepant block from the
/// primary into the vault as a fix-up record. Before copying, the delta maps (or the base
/// image) that gave the vault its wrong copy of those blocks are marked suspect, so that
/// `rewind list`, `rewind restore` and `@point` exports can say which past points read
/// them. The fix-ups are sealed into an interval of their own, flagged fix-up. While
/// `rewind serve` runs, the server does it and hosts keep writing; otherwise the vault is
/// opened as its writer.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
What it does: seals the open interval, verifies (see `rewind verify --help`), marks
suspect the delta maps (or the base image) that gave the vault its wrong copy of each
discrepant block, then copies those blocks from the primary into the vault as fix-up
records, each while holding the blocks' region locks (a host write to the same blocks
lands wholly before or after it), and seals the interval holding them, flagged fix-up.

After a sync, `rewind verify` finds nothing and the newest point reads exactly the
primary. Past points are never rewritten: the ones that read a suspect copy still do,
and say so when read.

Exit codes: 0 synced (whether or not anything needed copying); 1 failure or stopped;
3 the vault's structure is corrupted; 4 another writer (not a server) holds the vault.

Examples:
  rewind sync --vault vm.vault
  rewind sync --vault vm.vault --json | jq .suspect
  rewind list --vault vm.vault          # the fix-up interval, and suspect intervals")]
pub struct Args {
    #[command(flatten)]
    pub vault: VaultArg,
    /// The primary to copy from [default: the one the vault protects; with a server, the
    /// one it serves]
    #[arg(long, value_name = "PATH")]
    pub primary: Option<PathBuf>,
    /// Sync from --primary even though the vault was created for a file at another path
    /// (the image was moved or renamed). The size must still match.
    #[arg(long)]
    pub moved_primary: bool,
    /// Size of the regions compared and reported: a multiple of the block size, at most
    /// 64M
    #[arg(long, default_value = "64K", value_parser = output::parse_region_size, value_name = "SIZE")]
    pub region_size: u64,
    /// Worker threads reading and comparing (0: one per CPU, at most 4; at most 64)
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(0..=64), usize::from))]
    pub threads: usize,
    /// Scan and repair only the regions the dirty region log lists
    #[arg(long)]
    pub dirty_only: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dir = a.vault.path();
    let req = json!({"op": "sync", "region_size": a.region_size, "threads": a.threads, "dirty_only": a.dirty_only});
    let report = match online(&dir, &req, a.primary.as_deref(), a.json)? {
        Some(r) => r,
        None => {
            let vault = Arc::new(
                Vault::open_as(&dir, "rewind sync")
                    .with_context(|| format!("cannot open vault {} for sync", dir.display()))?,
            );
            if let Some(r) = vault.restore_intent() {
                anyhow::bail!(
                    "an in-place restore to {} (seq {}) was interrupted: the primary is part way between two points, and syncing it now would copy that mix into the vault. Finish the restore first: rewind restore --vault {} --in-place --resume (or start `rewind serve`, which finishes it)",
                    r.point,
                    r.target_seq,
                    dir.display()
                );
            }
            let recorded = vault.info().primary;
            let primary = a
                .primary
                .clone()
                .unwrap_or_else(|| PathBuf::from(&recorded));
            check_primary(&primary, &recorded, a.moved_primary)?;
            let _protected = super::protect(&primary, &vault, false)?;
            let only_regions = crate::cmd::verify::offline_regions(
                &dir,
                &vault,
                a.dirty_only,
                a.region_size,
                true,
            )?;
            let vol = OfflineVolume::open(&primary, vault.clone())?;
            let opts = VerifyOptions {
                region_size: a.region_size,
                threads: a.threads,
                only_regions,
                ..VerifyOptions::default()
            };
            let r = verify::sync(Target::Offline(&vol), &opts, &Bar::new(a.json))
                .context("sync failed")?;
            drop(vol);
            if let Ok(v) = Arc::try_unwrap(vault) {
                v.close().context("closing the vault")?;
            }
            report_json_sync(&r, &dir, &super::absolute(&primary), false)
        }
    };
    if a.json {
        output::json(&report)?;
    } else {
        print_human(&report);
    }
    if report["cancelled"] == json!(true) {
        return Err(crate::exit::Code(crate::exit::FAILURE).into());
    }
    Ok(())
}

/// The report of a sync: the scan's report plus the suspect marks and the fix-ups.
pub fn report_json_sync(r: &SyncReport, vault: &Path, primary: &Path, online: bool) -> Value {
    let mut j = report_json(&r.verify, vault, primary, online);
    let bs = u64::from(r.verify.block_size);
    j["seconds"] = json!(r.elapsed.as_secs_f64());
    j["suspect"] = json!(r
        .suspect
        .iter()
        .map(|m| json!({
            "interval": m.interval.map(|(a, b)| json!({"seq_from": a.0, "seq_to": b.0})),
            "base_image": m.interval.is_none(),
            "blocks": m.blocks.len(),
            "first_blocks": m.blocks.iter().take(LISTED).collect::<Vec<_>>(),
            "reasons": reasons(m.reasons),
        }))
        .collect::<Vec<_>>());
    j["fixup"] = json!({
        "blocks": r.fixup_blocks,
        "bytes": r.fixup_blocks * bs,
        "records": r.fixup_records.iter().map(|(a, b)| json!([a.0, b.0])).collect::<Vec<_>>(),
        "intervals": r.fixup_intervals.iter().map(|i| json!({
            "seq_from": i.seq_from.0, "seq_to": i.seq_to.0,
            "time_from": format_time(i.time_from_ns), "time_to": format_time(i.time_to_ns),
        })).collect::<Vec<_>>(),
        "host_changed_blocks": r.host_changed,
        "fixup_map_blocks": r.fixup_map_blocks,
    });
    j
}

/// The reason bits of a suspect mark, as words.
pub fn reasons(bits: u8) -> Vec<&'static str> {
    let mut v = Vec::new();
    if bits & SUSPECT_DIFFERS != 0 {
        v.push("differed from the primary");
    }
    if bits & SUSPECT_UNREADABLE != 0 {
        v.push("failed its checksum");
    }
    v
}

fn print_human(j: &Value) {
    print_scan(j);
    let fix = &j["fixup"];
    let blocks = fix["blocks"].as_u64().unwrap_or(0);
    if blocks == 0 {
        if j["discrepant_blocks"].as_u64().unwrap_or(0) == 0 {
            println!("Nothing to copy.");
        }
        return;
    }
    println!(
        "Copied {} blocks ({}) from the primary into the vault as fix-up records.",
        blocks,
        output::bytes(fix["bytes"].as_u64().unwrap_or(0))
    );
    for i in fix["intervals"].as_array().cloned().unwrap_or_default() {
        println!(
            "  fix-up interval seq {}-{} sealed ({}); `rewind list` flags it fix-up.",
            i["seq_from"],
            i["seq_to"],
            i["time_to"].as_str().unwrap_or("?")
        );
    }
    if fix["host_changed_blocks"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  the host changed {} blocks meanwhile; the fix-up delta map holds {} blocks.",
            fix["host_changed_blocks"], fix["fixup_map_blocks"]
        );
    }
    let suspect = j["suspect"].as_array().cloned().unwrap_or_default();
    if suspect.is_empty() {
        return;
    }
    println!("Marked suspect (points that read these blocks from there may be wrong):");
    for s in &suspect {
        let what = if s["base_image"] == json!(true) {
            "base image".to_string()
        } else {
            format!(
                "interval seq {}-{}",
                s["interval"]["seq_from"], s["interval"]["seq_to"]
            )
        };
        let why: Vec<&str> = s["reasons"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r.as_str()).collect())
            .unwrap_or_default();
        println!(
            "  {what}: {} (first: {}), the vault's copy {}",
            crate::cmd::list::plural(s["blocks"].as_u64().unwrap_or(0), "block"),
            s["first_blocks"]
                .as_array()
                .map(|a| a
                    .iter()
                    .take(8)
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            why.join(" or ")
        );
    }
}
