use std::path::PathBuf;

use anyhow::Context;
use rewind_engine::protect::PrimaryLock;
use rewind_vault::{ManifestRepair, MapRepair, SumsRepair, Vault, VaultError};
use serde_json::{json, Value};

use super::VaultArg;
use crate::output::{self, Bar};

/// Mend a damaged vault from what is intact: go on from the previous manifest when the
/// current one is damaged, rebuild missing or damaged delta maps from the write log, and
/// (only when asked) derive damaged base checksums again. Offline only (it takes the
/// vault's lock).
#[derive(clap::Args, Debug)]
#[command(after_help = "\
What it mends, in this order:

1. A damaged current manifest. The vault goes on from the previous generation (kept on
   disk for this), written as a new generation; the damaged file is kept as
   manifest-N.damaged. What the lost commit sealed is sealed again from the write log (its
   records and snapshots are intact), so no record is lost. What it loses is said: the last
   stop counts as a machine crash (the next `rewind serve` writes the log since the older
   checkpoint into the primary again and compares the dirty regions), and suspect marks, a
   seal policy change or the start or end of an in-place restore made by that one commit.
2. Delta maps. A map that is missing or fails its checks is an index of its interval's
   records, so it is built again from them: every record is checked, and a damaged record
   refuses the rebuild (`rewind check` names it). The new map is written to a temporary
   file, synced, and renamed over the old one: a crash leaves one or the other, whole.
3. With --rederive-base-sums only: a damaged base.sums. Where the live volume still holds
   the base image's data (blocks never written since `rewind init`), the sums are the
   primary's blocks' and a base image block that differs is rewritten from the primary;
   where blocks changed since, an old sum that still agrees is kept and the rest are taken
   from the base image file on trust (listed). It trusts the primary, hence the option.

What it does not mend, and says so (exit 3): a missing or short write log segment (the
records are gone: put the file back from a copy, or `rewind restore --salvage` what reads).

Examples:
  rewind check  --vault vm.vault                         # what is damaged, which points it breaks
  rewind repair --vault vm.vault --dry-run               # what repair would do, and lose
  rewind repair --vault vm.vault                         # do it
  rewind repair --vault vm.vault --rederive-base-sums    # also derive base.sums again

Exit codes: 0 the vault is whole as far as repair can tell; 3 damage remains (listed);
4 the vault is held by a writer (stop `rewind serve` first).")]
pub struct Args {
    #[command(flatten)]
    pub vault: VaultArg,
    /// Say what would be done, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Derive a damaged base.sums again from the primary (blocks unchanged since the base
    /// image) and the base image file (the rest, on trust)
    #[arg(long)]
    pub rederive_base_sums: bool,
    /// The primary to derive base checksums from [default: the one the vault records]
    #[arg(long, value_name = "PATH", requires = "rederive_base_sums")]
    pub primary: Option<PathBuf>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

fn map_json(r: &MapRepair) -> Value {
    json!({
        "file": r.path,
        "seq_from": r.seq_from.0,
        "seq_to": r.seq_to.0,
        "damage": r.damage,
        "rebuilt": r.outcome.is_ok(),
        "error": r.outcome.as_ref().err(),
    })
}

fn manifest_json(r: &ManifestRepair) -> Value {
    json!({
        "file": r.damaged,
        "damage": r.damage,
        "kept_as": r.kept_as,
        "previous_generation": r.previous,
        "generation": r.generation,
        "resealed": r.resealed.iter().map(|(a, b)| json!({"seq_from": a.0, "seq_to": b.0})).collect::<Vec<_>>(),
        "orphaned": r.orphaned.iter().map(|(p, s)| json!({"file": p, "seq_from": s.0})).collect::<Vec<_>>(),
        "loses": r.loses,
        "repaired": r.outcome.is_ok(),
        "error": r.outcome.as_ref().err(),
    })
}

fn runs_json(runs: &[(u64, u64)]) -> Value {
    runs.iter()
        .map(|(f, n)| json!({"first_block": f, "count": n}))
        .collect()
}

fn sums_json(r: &SumsRepair) -> Value {
    json!({
        "file": r.path,
        "damage": r.damage,
        "from_primary": r.from_primary,
        "base_rewritten": runs_json(&r.base_rewritten),
        "agreed": r.agreed,
        "trusted": runs_json(&r.trusted),
        "trusted_blocks": r.trusted.iter().map(|(_, n)| n).sum::<u64>(),
    })
}

fn runs_text(runs: &[(u64, u64)]) -> String {
    let shown: Vec<String> = runs
        .iter()
        .take(8)
        .map(|(f, n)| format!("{f}..{}", f + n))
        .collect();
    let more = runs.len().saturating_sub(8);
    if more > 0 {
        format!("{} and {more} more runs", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

fn say_manifest(r: &ManifestRepair, dry_run: bool) {
    if let Err(why) = &r.outcome {
        println!(
            "cannot repair the manifest {} ({}): {why}",
            r.damaged.display(),
            r.damage
        );
        return;
    }
    let will = if dry_run { "would go" } else { "went" };
    println!(
        "The current manifest {} is damaged ({}).\n{will} on from the previous generation {} as generation {}; the damaged file {} kept as {}.",
        r.damaged.display(),
        r.damage,
        r.previous,
        r.generation,
        if dry_run { "would be" } else { "is" },
        r.kept_as.display()
    );
    for (a, b) in &r.resealed {
        println!("  sealed again from the write log: seq {a}..={b} (its records and snapshots are intact)");
    }
    println!("What that loses or changes:");
    for l in &r.loses {
        println!("  - {l}");
    }
}

fn say_sums(r: &SumsRepair, dry_run: bool) {
    let verb = if dry_run { "would derive" } else { "derived" };
    let trusted: u64 = r.trusted.iter().map(|(_, n)| n).sum();
    println!(
        "{verb} {} again ({}): {} blocks from the primary (unchanged since the base image), {} old sums kept (they agree), {} blocks summed from the base image file on trust{}",
        r.path.display(),
        r.damage,
        r.from_primary,
        r.agreed,
        trusted,
        if r.trusted.is_empty() { String::new() } else { format!(" (blocks {})", runs_text(&r.trusted)) }
    );
    if !r.base_rewritten.is_empty() {
        let n: u64 = r.base_rewritten.iter().map(|(_, n)| n).sum();
        println!(
            "  {n} base image blocks differed from the primary where they are unchanged: {} from the primary (blocks {})",
            if dry_run { "would be rewritten" } else { "rewritten" },
            runs_text(&r.base_rewritten)
        );
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dir = a.vault.path();
    let manifest = Vault::repair_manifest(&dir, "rewind repair", a.dry_run)
        .with_context(|| format!("cannot repair vault {}", dir.display()))?;
    let manifest_failed = manifest.as_ref().is_some_and(|r| r.outcome.is_err());
    // A dry run of a manifest repair changed nothing: a writer cannot open the vault yet.
    let writable = !(manifest_failed || a.dry_run && manifest.is_some());
    let mut maps = Vec::new();
    let mut sums = None;
    let mut sums_refused = None;
    if writable {
        let vault = Vault::open_as(&dir, "rewind repair")
            .with_context(|| format!("cannot open vault {} for repair", dir.display()))?;
        maps = vault
            .repair_maps(a.dry_run)
            .context("cannot repair the delta maps")?;
        if a.rederive_base_sums {
            let primary = a
                .primary
                .clone()
                .unwrap_or_else(|| PathBuf::from(vault.info().primary));
            let _lock = PrimaryLock::acquire(&primary)?;
            let bar = Bar::new(a.json);
            match vault.rederive_base_sums(&primary, a.dry_run, &bar) {
                Ok(s) => sums = s,
                Err(VaultError::NotNow(why)) => sums_refused = Some(why),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot derive base checksums from {}", primary.display())
                    })
                }
            }
            bar.clear();
        }
    }
    // What is left: the damage a fresh open finds, less what a dry run would mend.
    let reopened = Vault::open_read_only(&dir)
        .with_context(|| format!("cannot open vault {} after the repair", dir.display()))?;
    // Opening reads only the header of base.sums: its chunks are looked at here.
    reopened
        .scan_base_sums()
        .with_context(|| format!("cannot read the base checksums of {}", dir.display()))?;
    let left: Vec<_> = reopened
        .damage()
        .iter()
        .filter(|d| {
            let mended = match d.structure {
                "delta map" => true,
                "manifest" => manifest.as_ref().is_some_and(|r| r.outcome.is_ok()),
                "base checksums" => sums.is_some(),
                _ => false,
            };
            !(a.dry_run && mended) && d.structure != "delta map"
        })
        .cloned()
        .collect();
    let failed = maps.iter().filter(|r| r.outcome.is_err()).count();
    let whole = failed == 0 && left.is_empty() && !manifest_failed;
    if a.json {
        output::json(&json!({
            "dry_run": a.dry_run,
            "manifest": manifest.as_ref().map(manifest_json),
            "maps": maps.iter().map(map_json).collect::<Vec<_>>(),
            "base_sums": sums.as_ref().map(sums_json),
            "base_sums_refused": sums_refused,
            "not_repaired": crate::cmd::list::damage_json(&left),
            "whole": whole,
        }))?;
    } else {
        if let Some(r) = &manifest {
            say_manifest(r, a.dry_run);
            if a.dry_run && r.outcome.is_ok() {
                println!(
                    "(delta maps and base checksums are looked at once the manifest is repaired)"
                );
            }
        }
        let verb = if a.dry_run {
            "would rebuild"
        } else {
            "rebuilt"
        };
        for r in &maps {
            match &r.outcome {
                Ok(()) => println!(
                    "{verb} {} from the records of seq {}..={} (it was: {})",
                    r.path.display(),
                    r.seq_from,
                    r.seq_to,
                    r.damage
                ),
                Err(why) => println!("cannot rebuild {} ({}): {why}", r.path.display(), r.damage),
            }
        }
        if let Some(r) = &sums {
            say_sums(r, a.dry_run);
        }
        if let Some(why) = &sums_refused {
            println!("base.sums not derived again: {why}");
        }
        for d in &left {
            println!(
                "not repaired: {} ({}) {}\n    breaks: {}\n    {}",
                d.path.display(),
                d.structure,
                d.error,
                d.breaks,
                d.repair
            );
        }
        if manifest.is_none() && maps.is_empty() && sums.is_none() && left.is_empty() {
            println!("Nothing to repair: the manifest and every delta map check out and the vault opened whole.");
        }
    }
    if whole {
        Ok(())
    } else {
        Err(crate::exit::Code(crate::exit::CORRUPTED).into())
    }
}
