use anyhow::Context;
use rewind_vault::{format_time, Vault};
use serde_json::{json, Value};

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

/// The vault's timeline as JSON (also served over the control socket).
pub fn to_json(vault: &Vault) -> Value {
    let info = vault.info();
    let bs = u64::from(info.block_size);
    json!({
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
        "snapshots": vault.snapshots().iter().map(|s| json!({
            "name": s.name, "seq": s.seq.0, "time": format_time(s.time_ns), "app_consistent": s.app_consistent,
        })).collect::<Vec<_>>(),
        "intervals": vault.intervals().iter().map(|i| json!({
            "seq_from": i.seq_from.0, "seq_to": i.seq_to.0,
            "time_from": format_time(i.time_from_ns), "time_to": format_time(i.time_to_ns),
            "records": i.seq_to.0 - i.seq_from.0 + 1,
            "blocks_changed": i.blocks_changed, "bytes_changed": i.blocks_changed * bs,
            "log_bytes": i.log_bytes,
            "state": if i.sealed { "sealed" } else { "open" },
        })).collect::<Vec<_>>(),
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dir = a.vault.path();
    // A running server knows the open interval best; otherwise read the vault directly.
    let j = match crate::control::request(&dir, &json!({"op": "list"}))? {
        Some(reply) => reply["list"].clone(),
        None => to_json(
            &Vault::open_read_only(&dir)
                .with_context(|| format!("cannot open vault {}", dir.display()))?,
        ),
    };
    if a.json {
        return output::json(&j);
    }
    print_human(&j);
    Ok(())
}

fn print_human(j: &Value) {
    let v = &j["vault"];
    let bs = v["block_size"].as_u64().unwrap_or(4096).max(1);
    let size = v["volume_size"].as_u64().unwrap_or(0);
    println!("vault    {}", v["dir"].as_str().unwrap_or("?"));
    println!("primary  {}", v["primary"].as_str().unwrap_or("?"));
    println!(
        "volume   {} ({} blocks of {} B)",
        output::bytes(size),
        size / bs,
        bs
    );
    println!("base     seq 0 at {}", v["created"].as_str().unwrap_or("?"));
    println!("newest   seq {}", v["newest_seq"]);
    println!();
    let snaps = j["snapshots"].as_array().cloned().unwrap_or_default();
    if snaps.is_empty() {
        println!("No snapshots yet (rewind snapshot NAME).");
    } else {
        let w = snaps
            .iter()
            .filter_map(|s| s["name"].as_str())
            .map(str::len)
            .max()
            .unwrap_or(4)
            .max(4);
        println!("SNAPSHOTS");
        println!("  {:w$}  {:>10}  TIME", "NAME", "SEQ");
        for s in &snaps {
            let ac = if s["app_consistent"] == json!(true) {
                "  app-consistent"
            } else {
                ""
            };
            println!(
                "  {:w$}  {:>10}  {}{}",
                s["name"].as_str().unwrap_or("?"),
                s["seq"].to_string(),
                s["time"].as_str().unwrap_or("?"),
                ac
            );
        }
    }
    println!();
    let intervals = j["intervals"].as_array().cloned().unwrap_or_default();
    if intervals.is_empty() {
        println!("No writes recorded yet.");
        return;
    }
    println!("INTERVALS");
    println!(
        "  {:>23}  {:<30}  {:<30}  {:>9}  {:>10}  {:>10}  STATE",
        "SEQ", "FROM", "TO", "BLOCKS", "CHANGED", "LOG"
    );
    for i in &intervals {
        println!(
            "  {:>23}  {:<30}  {:<30}  {:>9}  {:>10}  {:>10}  {}",
            format!("{}-{}", i["seq_from"], i["seq_to"]),
            i["time_from"].as_str().unwrap_or("?"),
            i["time_to"].as_str().unwrap_or("?"),
            i["blocks_changed"].to_string(),
            output::bytes(i["bytes_changed"].as_u64().unwrap_or(0)),
            output::bytes(i["log_bytes"].as_u64().unwrap_or(0)),
            i["state"].as_str().unwrap_or("?")
        );
    }
}
