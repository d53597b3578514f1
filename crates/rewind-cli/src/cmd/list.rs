use anyhow::Context;
use rewind_vault::{format_time, Vault};
use serde_json::json;

use super::VaultArg;
use crate::output;

/// Show the vault's timeline: the base image, the snapshots, and every interval of the
/// write log (sealed ones with their delta maps, and the open one).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub vault: VaultArg,
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dir = a.vault.path();
    let vault = Vault::open_read_only(&dir)
        .with_context(|| format!("cannot open vault {}", dir.display()))?;
    let info = vault.info();
    let snaps = vault.snapshots();
    let intervals = vault.intervals();
    if a.json {
        return output::json(&json!({
            "vault": {
                "dir": info.dir,
                "vault_id": info.vault_id,
                "primary": info.primary,
                "volume_size": info.volume_size,
                "block_size": info.block_size,
                "created": format_time(info.created_ns),
                "newest_seq": info.newest_seq.0,
                "generation": info.generation,
            },
            "snapshots": snaps.iter().map(|s| json!({
                "name": s.name, "seq": s.seq.0, "time": format_time(s.time_ns), "app_consistent": s.app_consistent,
            })).collect::<Vec<_>>(),
            "intervals": intervals.iter().map(|i| json!({
                "seq_from": i.seq_from.0, "seq_to": i.seq_to.0,
                "time_from": format_time(i.time_from_ns), "time_to": format_time(i.time_to_ns),
                "records": i.seq_to.0 - i.seq_from.0 + 1,
                "blocks_changed": i.blocks_changed, "bytes_changed": i.blocks_changed * u64::from(info.block_size),
                "log_bytes": i.log_bytes,
                "state": if i.sealed { "sealed" } else { "open" },
            })).collect::<Vec<_>>(),
        }));
    }
    println!("vault    {}", info.dir.display());
    println!("primary  {}", info.primary);
    println!(
        "volume   {} ({} blocks of {} B)",
        output::bytes(info.volume_size),
        info.volume_size / u64::from(info.block_size),
        info.block_size
    );
    println!("base     seq 0 at {}", format_time(info.created_ns));
    println!("newest   seq {}", info.newest_seq);
    println!();
    if snaps.is_empty() {
        println!("No snapshots yet (rewind snapshot NAME).");
    } else {
        let w = snaps.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
        println!("SNAPSHOTS");
        println!("  {:w$}  {:>10}  TIME", "NAME", "SEQ");
        for s in &snaps {
            let ac = if s.app_consistent {
                "  app-consistent"
            } else {
                ""
            };
            println!(
                "  {:w$}  {:>10}  {}{}",
                s.name,
                s.seq.0,
                format_time(s.time_ns),
                ac
            );
        }
    }
    println!();
    if intervals.is_empty() {
        println!("No writes recorded yet.");
        return Ok(());
    }
    println!("INTERVALS");
    println!(
        "  {:>23}  {:<30}  {:<30}  {:>9}  {:>10}  {:>10}  STATE",
        "SEQ", "FROM", "TO", "BLOCKS", "CHANGED", "LOG"
    );
    for i in &intervals {
        println!(
            "  {:>23}  {:<30}  {:<30}  {:>9}  {:>10}  {:>10}  {}",
            format!("{}-{}", i.seq_from, i.seq_to),
            format_time(i.time_from_ns),
            format_time(i.time_to_ns),
            i.blocks_changed,
            output::bytes(i.blocks_changed * u64::from(info.block_size)),
            output::bytes(i.log_bytes),
            if i.sealed { "sealed" } else { "open" }
        );
    }
    Ok(())
}
