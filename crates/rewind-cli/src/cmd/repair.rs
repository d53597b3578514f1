use anyhow::Context;
use rewind_vault::{MapRepair, Vault};
use serde_json::{json, Value};

use super::VaultArg;
use crate::output;

/// Mend a damaged vault from what is intact: rebuild every missing or damaged delta map
/// from its interval's write log records. Offline only (it takes the vault's lock).
#[derive(clap::Args, Debug)]
#[command(after_help = "\
What it reads: every delta map of the chain, the way points read them (head, then entries).
A map that is missing or fails its checks is an index of its interval's records, so it is
built again from them: every record is checked, and a damaged record refuses the rebuild
(`rewind check` names it). The new map is written to a temporary file, synced, and renamed
over the old one: a crash leaves one or the other, whole.

What it does not mend, and says so (exit 3): a missing or short write log segment (the
records are gone: put the file back from a copy, or `rewind restore --salvage` what reads),
a damaged base.sums, a damaged current manifest (readers already read the previous
generation; serve refuses until it is mended by hand).

Examples:
  rewind check  --vault vm.vault              # what is damaged, which points it breaks
  rewind repair --vault vm.vault --dry-run    # what repair would do
  rewind repair --vault vm.vault              # do it; exit 0 when nothing is left damaged

Exit codes: 0 the vault is whole as far as repair can tell; 3 damage remains (listed);
4 the vault is held by a writer (stop `rewind serve` first).")]
pub struct Args {
    #[command(flatten)]
    pub vault: VaultArg,
    /// Say what would be done, and change nothing
    #[arg(long)]
    pub dry_run: bool,
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

pub fn run(a: Args) -> anyhow::Result<()> {
    let dir = a.vault.path();
    let vault = Vault::open_as(&dir, "rewind repair")
        .with_context(|| format!("cannot open vault {} for repair", dir.display()))?;
    let maps = vault
        .repair_maps(a.dry_run)
        .context("cannot repair the delta maps")?;
    // What open found that repair does not mend (missing maps are mended above).
    let left: Vec<_> = vault
        .damage()
        .iter()
        .filter(|d| d.structure != "delta map")
        .cloned()
        .collect();
    let failed = maps.iter().filter(|r| r.outcome.is_err()).count();
    let whole = failed == 0 && left.is_empty();
    if a.json {
        output::json(&json!({
            "dry_run": a.dry_run,
            "maps": maps.iter().map(map_json).collect::<Vec<_>>(),
            "not_repaired": crate::cmd::list::damage_json(&left),
            "whole": whole,
        }))?;
    } else {
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
        if maps.is_empty() && left.is_empty() {
            println!("Nothing to repair: every delta map checks out and the vault opened whole.");
        }
    }
    if whole {
        Ok(())
    } else {
        Err(crate::exit::Code(crate::exit::CORRUPTED).into())
    }
}
