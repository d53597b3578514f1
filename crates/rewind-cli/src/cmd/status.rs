use anyhow::Context;
use rewind_vault::{format_time, Vault};
use serde_json::{json, Value};

use super::VaultArg;
use crate::output;

/// Show what the server protecting a vault is doing: clients, writes, bytes, the open
/// interval, the last flush. Without a running server, shows the vault as it is on disk.
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
    let mut s = match crate::control::request(&dir, &json!({"op": "status"}))? {
        Some(s) => s,
        None => {
            let v = Vault::open_read_only(&dir)
                .with_context(|| format!("cannot open vault {}", dir.display()))?;
            let info = v.info();
            let drl = rewind_engine::drl::DirtyRegionLog::peek(&dir)
                .context("cannot read the dirty region log")?;
            let mut s = json!({
                "dirty_region_log": drl.map(|d| json!({
                    "clean_stop": d.clean,
                    "region_size": d.region_size,
                    "dirty_regions": d.dirty().count(),
                    "checkpoint_seq": d.checkpoint_seq,
                })),
                "serving": false,
            });
            add_vault_fields(&mut s, &info);
            s
        }
    };
    // A server's reply carries "ok"; what is printed is the same online and offline.
    if let Some(m) = s.as_object_mut() {
        m.remove("ok");
    }
    if a.json {
        return output::json(&s);
    }
    print_human(&s);
    Ok(())
}

/// The vault's fields of a status, the same whether a server answers or not.
pub fn add_vault_fields(v: &mut Value, info: &rewind_vault::VaultInfo) {
    let fields = json!({
        "vault": info.dir,
        "vault_id": info.vault_id,
        "primary": info.primary,
        "volume_size": info.volume_size,
        "block_size": info.block_size,
        "newest_seq": info.newest_seq.0,
        "durable_seq": info.durable_seq.0,
        "open_interval": {"records": info.open_records, "bytes": info.open_bytes},
        "created": format_time(info.created_ns),
    });
    if let (Some(v), Value::Object(f)) = (v.as_object_mut(), fields) {
        v.extend(f);
    }
}

fn print_human(s: &Value) {
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    if s["serving"] == json!(true) {
        println!(
            "serving   pid {} for {:.0}s on {}",
            s["pid"],
            s["uptime_seconds"].as_f64().unwrap_or(0.0),
            s["listen"]
        );
        println!(
            "clients   {} connected, {} since start",
            n("clients"),
            n("connections_total")
        );
        println!(
            "writes    {} ({}), zeroes {}, trims {}",
            n("writes"),
            output::bytes(n("bytes_written")),
            n("zeroes"),
            n("trims")
        );
        println!(
            "reads     {} ({})",
            n("reads"),
            output::bytes(n("bytes_read"))
        );
        println!(
            "flushes   {}, last {}",
            n("flushes"),
            s["last_flush"].as_str().unwrap_or("never")
        );
        println!("errors    {}", n("errors"));
        print_memory(&s["memory"]);
        if let Some(why) = s["live_closed"].as_str() {
            println!("LIVE CLOSED {why}");
        }
        let r = &s["write_refusal"];
        if r.is_object() {
            println!(
                "REFUSING host writes since {}: {}",
                r["since"].as_str().unwrap_or("?"),
                r["reason"].as_str().unwrap_or("?")
            );
            if r["resumes_by_itself"] == json!(true) {
                println!(
                    "          hosts get ENOSPC; free space on the file system holding {}: writes resume by themselves, nothing acknowledged is lost",
                    r["path"].as_str().unwrap_or("?")
                );
            }
        }
    } else {
        println!("not serving (no `rewind serve` holds this vault)");
    }
    println!("vault     {}", s["vault"].as_str().unwrap_or("?"));
    println!("primary   {}", s["primary"].as_str().unwrap_or("?"));
    println!("volume    {}", output::bytes(n("volume_size")));
    println!(
        "seq       newest {}, durable {}",
        n("newest_seq"),
        n("durable_seq")
    );
    println!(
        "open      {} records, {} of write log",
        s["open_interval"]["records"],
        output::bytes(s["open_interval"]["bytes"].as_u64().unwrap_or(0))
    );
    let d = &s["dirty_region_log"];
    if d.is_object() {
        let dn = |k: &str| d[k].as_u64().unwrap_or(0);
        let state = if s["serving"] == json!(true) {
            "serving"
        } else if d["clean_stop"] == json!(true) {
            "stopped cleanly"
        } else {
            "NOT stopped cleanly: `rewind serve` repairs the dirty regions when it starts"
        };
        println!(
            "dirty     {} region(s) of {} ({state}); primary synced up to seq {}",
            dn("dirty_regions"),
            output::bytes(dn("region_size")),
            dn("checkpoint_seq")
        );
    }
}

fn print_memory(m: &Value) {
    if !m.is_object() {
        return;
    }
    let b = |v: &Value| output::bytes(v.as_u64().unwrap_or(0));
    let c = &m["caches"];
    let o = &m["open_interval"];
    println!(
        "memory    {} resident (peak {}); caches: delta maps {} of {} ({} maps), segment files {} of {}, chain index {} runs",
        b(&m["resident_bytes"]),
        b(&m["peak_resident_bytes"]),
        b(&c["delta_map_bytes"]),
        b(&c["delta_map_bytes_limit"]),
        c["delta_maps"],
        c["segment_files"],
        c["segment_files_limit"],
        c["chain_index_runs"],
    );
    println!(
        "          open interval: present map {}, record index {}, append buffer {}; each connection at most {} (of {} connections)",
        b(&o["present_map_bytes"]),
        b(&o["record_index_bytes"]),
        b(&o["append_buffer_bytes"]),
        b(&m["per_connection_limit_bytes"]),
        m["max_connections"],
    );
    let w = &m["write_behind"];
    if w.is_object() {
        println!(
            "          writes behind the log: {} in {} runs still to go into the primary, {} kept until durable",
            b(&w["bytes"]),
            w["runs"],
            b(&w["kept_bytes"]),
        );
    }
}
