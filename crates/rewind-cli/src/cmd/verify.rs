use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rewind_engine::verify::{self, OfflineVolume, Target, VerifyOptions, VerifyReport};
use rewind_vault::{format_time, Vault};
use serde_json::{json, Value};

use super::VaultArg;
use crate::output::{self, Bar};

/// How many ranges, offsets and unreadable blocks a report lists (the counts are exact).
const LISTED: usize = 1000;
/// How many discrepant offsets the human report shows.
const FIRST_FEW: usize = 8;

/// Compare the primary with the vault, region by region, and list every region where they
/// differ. The vault side is the newest point (what `rewind restore --at now` would give);
/// a vault block that fails its checksum counts as a difference ("vault unreadable").
/// While `rewind serve` runs, the server does the scan (hosts keep writing; blocks they
/// write meanwhile are not compared: the write log has them). Changes nothing; `rewind
/// sync` repairs what this finds.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
What it does: reads the primary and the vault's newest point region by region (both
sides in large reads, in parallel) and compares them. Every region that differs is
listed (it does not stop at the first); inside it, the differing blocks are found. A
vault block that fails its checksum counts as a difference: \"vault unreadable\".
Where both sides are holes nothing is read. With `rewind serve` running, the server
does the scan while hosts keep writing; blocks they write meanwhile are not compared
(the write log has them). Nothing is changed: `rewind sync` repairs what this finds.

Output: the point compared (seq, time), bytes and rate, then the discrepant regions as
byte ranges and the first discrepant block offsets. --json adds every range, offset and
unreadable block (up to 1000 each; the counts are exact).

Exit codes: 0 the vault matches the primary; 1 discrepancies found (or the scan was
stopped); 3 the vault's structure is corrupted (a manifest or delta map, not a block);
other failures 1 with a message.

Examples:
  rewind verify --vault vm.vault                 # online if `rewind serve` holds vm.vault
  rewind verify --vault vm.vault --json | jq .ranges
  rewind verify --vault vm.vault --primary copy.img   # offline: compare another image")]
pub struct Args {
    #[command(flatten)]
    pub vault: VaultArg,
    /// The primary to compare [default: the one the vault protects; with a server, the
    /// one it serves]
    #[arg(long, value_name = "PATH")]
    pub primary: Option<PathBuf>,
    /// Size of the regions compared and reported: a multiple of the block size, at most
    /// 64M
    #[arg(long, default_value = "64K", value_parser = output::parse_region_size, value_name = "SIZE")]
    pub region_size: u64,
    /// Worker threads reading and comparing (0: one per CPU, at most 4; at most 64)
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(0..=64), usize::from))]
    pub threads: usize,
    /// Bytes each worker reads per step (for benchmarks; 0: the default)
    #[arg(long, default_value = "0", value_parser = output::parse_size, hide = true)]
    pub chunk_size: u64,
    /// Scan only the regions the dirty region log lists: where an unclean stop may have
    /// left primary and vault apart (seconds, not a full scan)
    #[arg(long)]
    pub dirty_only: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dir = a.vault.path();
    let req = json!({"op": "verify", "region_size": a.region_size, "threads": a.threads, "chunk_bytes": a.chunk_size, "dirty_only": a.dirty_only});
    let report = match online(&dir, &req, a.primary.as_deref(), a.json)? {
        Some(r) => r,
        None => {
            let vault = Arc::new(
                Vault::open_read_only(&dir)
                    .with_context(|| format!("cannot open vault {}", dir.display()))?,
            );
            if let Some(r) = vault.restore_intent() {
                eprintln!(
                    "warning: an in-place restore to {} (seq {}) was interrupted; the primary is part way between two points until `rewind restore --vault {} --in-place --resume` (or `rewind serve`) finishes it, so it differs from the vault where the restore had not copied yet.",
                    r.point,
                    r.target_seq,
                    dir.display()
                );
            }
            let primary = a
                .primary
                .clone()
                .unwrap_or_else(|| PathBuf::from(vault.info().primary));
            let only_regions = offline_regions(&dir, &vault, a.dirty_only, a.region_size, false)?;
            let vol = OfflineVolume::open(&primary, vault)?;
            let opts = VerifyOptions {
                region_size: a.region_size,
                threads: a.threads,
                chunk_bytes: a.chunk_size,
                only_regions,
                ..VerifyOptions::default()
            };
            let r = verify::verify(Target::Offline(&vol), &opts, &Bar::new(a.json))
                .context("verify failed")?;
            report_json(&r, &dir, &super::absolute(&primary), false)
        }
    };
    if a.json {
        output::json(&report)?;
    } else {
        print_human(&report);
        if report["clean"] != json!(true) && report["cancelled"] != json!(true) {
            println!(
                "Run `rewind sync` to copy the discrepant blocks from the primary into the vault."
            );
        }
    }
    exit_for(&report)
}

/// What an offline verify or sync may scan, after checking how the last `rewind serve`
/// stopped: `None` for everything, or the regions the dirty region log lists. After a
/// crash of the machine the primary may lack flushed writes until `rewind serve`
/// recovers it: a sync (`writes`) is refused then, a verify warns.
pub fn offline_regions(
    dir: &Path,
    vault: &Vault,
    dirty_only: bool,
    region_size: u64,
    writes: bool,
) -> anyhow::Result<Option<roaring::RoaringTreemap>> {
    use rewind_engine::drl;
    // The manifest says so even when the dirty region log is gone.
    let boot = rewind_engine::drl::boot_id();
    if vault
        .serving()
        .is_some_and(|s| s.boot_id != boot || boot == [0; 16])
    {
        let msg = "the last `rewind serve` did not stop cleanly and the machine has restarted since: the primary may lack writes that only the write log holds. Start `rewind serve` once: it brings the primary up to date and repairs the dirty regions itself.";
        if writes {
            bail!("{msg}");
        }
        eprintln!("warning: {msg}");
    }
    let unclean = drl::unclean_stop(dir).context("cannot read the dirty region log")?;
    if let Some((d, true)) = &unclean {
        if d.behind {
            let msg = "the last `rewind serve` did not stop cleanly while host writes were still to be written into the primary (REWIND_WRITE_BEHIND): the primary lacks writes that only the write log holds. Start `rewind serve` once: it brings the primary up to date and repairs the dirty regions itself.";
            if writes {
                bail!("{msg}");
            }
            eprintln!("warning: {msg}");
        }
    }
    if let Some((_, false)) = &unclean {
        let msg = "the last `rewind serve` did not stop cleanly and the machine has restarted since: the primary may lack writes that only the write log holds. Start `rewind serve` once: it brings the primary up to date and repairs the dirty regions itself.";
        if writes {
            bail!("{msg}");
        }
        eprintln!("warning: {msg}");
    }
    if !dirty_only {
        return Ok(None);
    }
    let Some(d) = drl::DirtyRegionLog::peek(dir).context("cannot read the dirty region log")?
    else {
        bail!(
            "{} has no dirty region log yet (it is written by `rewind serve`); run without --dirty-only",
            dir.display()
        );
    };
    Ok(Some(drl::covering_regions(
        d.dirty(),
        u64::from(d.region_size),
        region_size,
        d.volume_size,
    )))
}

/// Exit 1 (silently: the report said it) unless the report is clean.
pub fn exit_for(report: &Value) -> anyhow::Result<()> {
    if report["clean"] == json!(true) {
        Ok(())
    } else {
        Err(crate::exit::Code(crate::exit::FAILURE).into())
    }
}

/// Runs `req` in the server holding `dir`, if one does, with a progress bar. `Ok(None)`:
/// no server. `primary`, if given, must be the primary the server serves.
pub fn online(
    dir: &Path,
    req: &Value,
    primary: Option<&Path>,
    quiet: bool,
) -> anyhow::Result<Option<Value>> {
    let mut req = req.clone();
    if let Some(p) = primary {
        let p = std::fs::canonicalize(p)
            .with_context(|| format!("cannot open primary {}", p.display()))?;
        req["primary"] = json!(p);
    }
    let bar = Bar::new(quiet);
    let reply = crate::control::request_stream(dir, &req, |p| bar.relay(p))?;
    bar.clear();
    Ok(reply.map(|mut r| r["report"].take()))
}

/// The report of a scan, as the CLI prints it (`--json`) and the server sends it.
pub fn report_json(r: &VerifyReport, vault: &Path, primary: &Path, online: bool) -> Value {
    let bs = u64::from(r.block_size);
    let secs = r.elapsed.as_secs_f64();
    let ranges = r.ranges();
    json!({
        "vault": vault,
        "primary": primary,
        "online": online,
        "point": {"seq": r.point.seq.0, "time": format_time(r.point.time_ns)},
        "block_size": r.block_size,
        "region_size": r.region_size,
        "volume_size": r.volume_size,
        "regions_scanned": r.regions_scanned,
        "bytes_scanned": r.bytes_scanned,
        "bytes_sparse": r.bytes_sparse,
        "seconds": secs,
        "bytes_per_second": if secs > 0.0 { r.bytes_scanned as f64 / secs } else { 0.0 },
        "clean": r.is_clean(),
        "cancelled": r.cancelled,
        "discrepant_regions": r.discrepant_regions().len(),
        "discrepant_blocks": r.compare.len(),
        "discrepant_bytes": r.compare.len() * bs,
        "ranges_total": ranges.len(),
        "ranges": ranges.iter().take(LISTED).map(|(o, l)| json!({"offset": o, "length": l})).collect::<Vec<_>>(),
        "first_offsets": r.compare.iter().take(LISTED).map(|b| b * bs).collect::<Vec<_>>(),
        "vault_unreadable": r.unreadable.iter().take(LISTED).map(|(b, e)| json!({
            "block": b, "offset": b * bs, "error": format!("vault unreadable: {e}"),
        })).collect::<Vec<_>>(),
        "vault_unreadable_blocks": r.unreadable.len(),
        "scan_changed_blocks": r.scan_changed,
    })
}

/// Prints a verify report (also the scan part of a sync report).
pub fn print_human(j: &Value) {
    let n = |k: &str| j[k].as_u64().unwrap_or(0);
    let secs = j["seconds"].as_f64().unwrap_or(0.0);
    println!(
        "Compared {} of {} with vault {} at seq {} ({}){} in {:.2}s ({}/s).",
        output::bytes(n("bytes_scanned")),
        j["primary"].as_str().unwrap_or("?"),
        j["vault"].as_str().unwrap_or("?"),
        j["point"]["seq"],
        j["point"]["time"].as_str().unwrap_or("?"),
        if j["online"] == json!(true) {
            ", inside the running server"
        } else {
            ""
        },
        secs,
        output::bytes(j["bytes_per_second"].as_f64().unwrap_or(0.0) as u64),
    );
    if j["cancelled"] == json!(true) {
        println!("The scan was stopped before it finished; what it covered is below.");
    }
    if n("scan_changed_blocks") > 0 {
        println!(
            "  {} blocks the host wrote during the scan were not compared (the write log has them).",
            n("scan_changed_blocks")
        );
    }
    if n("discrepant_blocks") == 0 {
        println!("No discrepancies: the vault matches the primary.");
        return;
    }
    println!(
        "{} discrepant regions of {} ({} blocks, {}): the vault does not match the primary there.",
        n("discrepant_regions"),
        output::bytes(n("region_size")),
        n("discrepant_blocks"),
        output::bytes(n("discrepant_bytes")),
    );
    let ranges = j["ranges"].as_array().cloned().unwrap_or_default();
    for r in ranges.iter().take(FIRST_FEW) {
        let (o, l) = (
            r["offset"].as_u64().unwrap_or(0),
            r["length"].as_u64().unwrap_or(0),
        );
        println!("  bytes {o}..{} ({})", o + l, output::bytes(l));
    }
    if n("ranges_total") > FIRST_FEW as u64 {
        println!(
            "  ... {} more ranges (--json lists them)",
            n("ranges_total") - FIRST_FEW as u64
        );
    }
    let first: Vec<String> = j["first_offsets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .take(FIRST_FEW)
        .map(|v| v.to_string())
        .collect();
    println!("  first discrepant block offsets: {}", first.join(", "));
    let unreadable = j["vault_unreadable"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for u in unreadable.iter().take(FIRST_FEW) {
        println!(
            "  block {} (offset {}): {}",
            u["block"],
            u["offset"],
            u["error"].as_str().unwrap_or("?")
        );
    }
    if n("vault_unreadable_blocks") > FIRST_FEW as u64 {
        println!(
            "  ... {} more unreadable vault blocks",
            n("vault_unreadable_blocks") - FIRST_FEW as u64
        );
    }
}

/// Refuses a `--primary` other than the one the vault was created for (sync copies from
/// it, and copying another volume's blocks in would mix two histories).
pub fn check_primary(primary: &Path, recorded: &str, moved: bool) -> anyhow::Result<()> {
    let actual = std::fs::canonicalize(primary)
        .with_context(|| format!("cannot open primary {}", primary.display()))?;
    if moved || actual == Path::new(recorded) {
        return Ok(());
    }
    bail!(
        "this vault protects {recorded}, not {}.\nSyncing from another image would copy another volume's blocks into this vault. If you moved or renamed the image, pass --moved-primary.",
        actual.display()
    )
}
