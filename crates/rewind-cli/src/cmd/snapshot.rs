use anyhow::Context;
use rewind_vault::Vault;
use serde_json::json;

use super::VaultArg;
use crate::output;

/// Mark the current point with a name. Everything written before it is made durable, and
/// the point can be read, restored or mounted by name for as long as it is kept.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  rewind snapshot before-upgrade --vault vm.vault\n  rewind restore --vault vm.vault --at before-upgrade --to vm-before.img"
)]
pub struct Args {
    /// Name: letters, digits, '.', '_' and '-', starting with a letter or digit
    #[arg(value_parser = output::parse_snapshot_name)]
    pub name: String,
    #[command(flatten)]
    pub vault: VaultArg,
    /// The host was quiesced (e.g. fsfreeze) when the snapshot was taken
    #[arg(long)]
    pub app_consistent: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dir = a.vault.path();
    let req = json!({"op": "snapshot", "name": a.name, "app_consistent": a.app_consistent});
    let (name, seq, time, app) =
        match crate::control::request(&dir, &req).context("cannot take the snapshot")? {
            // A server holds the vault: it takes the snapshot between host writes.
            Some(r) => (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["seq"].as_u64().unwrap_or(0),
                r["time"].as_str().unwrap_or_default().to_string(),
                r["app_consistent"] == json!(true),
            ),
            None => {
                let vault = Vault::open_as(&dir, "rewind snapshot")
                    .with_context(|| format!("cannot open vault {}", dir.display()))?;
                let s = vault
                    .snapshot(&a.name, a.app_consistent)
                    .context("cannot take the snapshot")?;
                vault.close()?;
                (
                    s.name,
                    s.seq.0,
                    rewind_vault::format_time(s.time_ns),
                    s.app_consistent,
                )
            }
        };
    if a.json {
        return output::json(
            &json!({ "name": name, "seq": seq, "time": time, "app_consistent": app }),
        );
    }
    println!("Snapshot {name} at seq {seq} ({time}).");
    Ok(())
}
