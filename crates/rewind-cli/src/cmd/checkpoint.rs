use anyhow::{bail, Context};
use serde_json::json;

use super::VaultArg;
use crate::output;

/// Bring the primary file itself up to date and make it durable, while `rewind serve` runs.
///
/// Large host writes go to the write log first and into the primary a moment later (see
/// the README, "Writing the primary behind the log"); what the host reads through the
/// server is always current, the primary file may lag by those writes. Run this before
/// something reads the primary behind the server's back: a storage snapshot (LVM, ZFS, a
/// SAN) or a copy of the primary's file or device.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  rewind checkpoint --vault vm.vault && lvcreate --snapshot -n vm-snap -L 10G vg/vm"
)]
pub struct Args {
    #[command(flatten)]
    pub vault: VaultArg,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dir = a.vault.path();
    let Some(r) = crate::control::request(&dir, &json!({"op": "checkpoint"}))
        .context("cannot checkpoint the primary")?
    else {
        bail!(
            "no `rewind serve` runs for {}: the primary is up to date when the server has stopped cleanly (an unclean stop is repaired by the next `rewind serve`)",
            dir.display()
        );
    };
    let seq = r["seq"].as_u64().unwrap_or(0);
    let written = r["bytes_written"].as_u64().unwrap_or(0);
    if a.json {
        return output::json(&json!({ "seq": seq, "bytes_written": written }));
    }
    println!(
        "The primary holds every write up to seq {seq}, durably ({} written into it now).",
        output::bytes(written)
    );
    Ok(())
}
