use anyhow::Context;
use rewind_format::delta_map::{FLAG_FIXUP, FLAG_MERGED, FLAG_SUSPECT};
use rewind_vault::{format_time, Damage, Seq, SuspectEntry, Vault};
use serde_json::{json, Value};

use super::VaultArg;
use crate::output;

/// Show the vault's timeline: the base image, the snapshots, and every interval of the
/// write log (sealed ones with their delta maps, and the open one).
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Interval flags (STATE column, \"flags\" in --json):
  fix-up    holds fix-up records: blocks `rewind sync` copied from the primary to repair
            the vault
  SUSPECT   a sync found the vault's copy of some blocks this interval wrote wrong
            (different from the primary, or failing its checksum); points that read
            those blocks from here may be wrong, and `rewind restore` and @point
            exports warn which blocks. The base image can be suspect too.
  UNREADABLE  some points of the interval cannot be read at all: a file they need is
            damaged (see DAMAGE below, \"damage\" in --json)
  DAMAGED   reads of some blocks at its points fail: their data is in a damaged file

DAMAGE lists the damaged files the vault was opened despite, what each breaks and what
`rewind repair` does about it. A read that needs damaged bytes fails (exit 3) naming the
file and byte; `rewind check` reads every byte and finds damage inside files too.")]
pub struct Args {
    #[command(flatten)]
    pub vault: VaultArg,
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
}

/// Blocks listed per suspect entry.
const LISTED: usize = 16;

fn flag_words(flags: u16) -> Vec<&'static str> {
    let mut v = Vec::new();
    if flags & FLAG_MERGED != 0 {
        v.push("merged");
    }
    if flags & FLAG_FIXUP != 0 {
        v.push("fix-up");
    }
    if flags & FLAG_SUSPECT != 0 {
        v.push("suspect");
    }
    v
}

fn suspect_json(s: Option<&SuspectEntry>) -> Value {
    match s {
        None => Value::Null,
        Some(s) => json!({
            "blocks": s.blocks.len(),
            "first_blocks": s.blocks.iter().take(LISTED).collect::<Vec<_>>(),
            "reasons": crate::cmd::sync::reasons(s.reasons),
            "marked": format_time(s.marked_ns),
            "scan_seq": s.scan_seq.0,
        }),
    }
}

/// The suspect blocks a point reads (restore's `suspect` field).
pub fn suspect_reads_json(reads: &[SuspectEntry]) -> Value {
    json!(reads
        .iter()
        .map(|s| json!({
            "from": s.interval.map(|(a, b)| json!({"seq_from": a.0, "seq_to": b.0})),
            "base_image": s.interval.is_none(),
            "blocks": s.blocks.len(),
            "first_blocks": s.blocks.iter().take(LISTED).collect::<Vec<_>>(),
            "reasons": crate::cmd::sync::reasons(s.reasons),
            "marked": format_time(s.marked_ns),
        }))
        .collect::<Vec<_>>())
}

/// Warns on stderr that the point `at` reads suspect blocks: which, from where, why.
pub fn warn_suspect_reads(at: &str, reads: &[SuspectEntry]) {
    for s in reads {
        let from = match s.interval {
            Some((a, b)) => format!("interval seq {a}-{b}"),
            None => "the base image".to_string(),
        };
        let first: Vec<String> = s.blocks.iter().take(8).map(|b| b.to_string()).collect();
        eprintln!(
            "warning: point {at} reads {} ({}{}) from {from}, which a sync on {} marked suspect: the vault's copy {}. They may not hold what the host wrote.",
            plural(s.blocks.len(), "block"),
            first.join(", "),
            if s.blocks.len() > 8 { ", ..." } else { "" },
            format_time(s.marked_ns),
            crate::cmd::sync::reasons(s.reasons).join(" or "),
        );
    }
}

/// The damage a vault was opened despite, as JSON.
pub fn damage_json(damage: &[Damage]) -> Value {
    json!(damage
        .iter()
        .map(|d| json!({
            "file": d.path,
            "offset": d.offset,
            "structure": d.structure,
            "error": d.error,
            "unreadable": d.unreadable.map(|(from, to)| json!({"from": from.0, "to": to.map(|t| t.0)})),
            "blocks_from": d.blocks_from.map(|s| s.0),
            "breaks": d.breaks,
            "repair": d.repair,
        }))
        .collect::<Vec<_>>())
}

/// Why reads of point `seq` fail (all of them: `unreadable`; of some blocks: `blocks`).
fn damage_at(damage: &[Damage], seq: Seq) -> Value {
    let unreadable: Vec<String> = damage
        .iter()
        .filter(|d| d.unreadable_at(seq))
        .map(|d| format!("{}: {}", d.path.display(), d.error))
        .collect();
    let blocks: Vec<String> = damage
        .iter()
        .filter(|d| !d.unreadable_at(seq) && d.affects(seq))
        .map(|d| format!("{}: {}", d.path.display(), d.error))
        .collect();
    json!({"unreadable": unreadable, "blocks": blocks})
}

/// The vault's timeline as JSON (also served over the control socket).
pub fn to_json(vault: &Vault) -> Value {
    let info = vault.info();
    let damage = &vault.damage()[..];
    let interval_damage = |from: Seq, to: Seq| -> (bool, bool) {
        let unreadable = damage.iter().any(|d| {
            d.unreadable
                .is_some_and(|(a, b)| a <= to && b.is_none_or(|b| b >= from))
        });
        let some = damage
            .iter()
            .any(|d| d.blocks_from.is_some_and(|f| f <= to));
        (unreadable, some)
    };
    let bs = u64::from(info.block_size);
    let suspects = vault.suspects();
    let suspect_of = |from: rewind_vault::Seq, to: rewind_vault::Seq| {
        suspects.iter().find(|s| s.interval == Some((from, to)))
    };
    let base_suspect = suspects.iter().find(|s| s.interval.is_none());
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
        "base": {
            "seq": 0,
            "time": format_time(info.created_ns),
            "suspect": base_suspect.is_some(),
            "suspect_blocks": suspect_json(base_suspect),
        },
        "interrupted_restore": vault.restore_intent().map(|r| json!({
            "point": r.point,
            "seq": r.target_seq.0,
            "time": format_time(r.target_time_ns),
            "undo_snapshot": r.undo_snapshot,
            "started": format_time(r.started_ns),
        })),
        "snapshots": vault.snapshots().iter().map(|s| json!({
            "name": s.name, "seq": s.seq.0, "time": format_time(s.time_ns), "app_consistent": s.app_consistent,
            "damage": damage_at(damage, s.seq),
        })).collect::<Vec<_>>(),
        "damage": damage_json(damage),
        "intervals": vault.intervals().iter().map(|i| json!({
            "seq_from": i.seq_from.0, "seq_to": i.seq_to.0,
            "time_from": format_time(i.time_from_ns), "time_to": format_time(i.time_to_ns),
            "records": i.seq_to.0 - i.seq_from.0 + 1,
            "blocks_changed": i.blocks_changed, "bytes_changed": i.blocks_changed * bs,
            "log_bytes": i.log_bytes,
            "state": if i.sealed { "sealed" } else { "open" },
            "flags": flag_words(i.flags),
            "fixup": i.flags & FLAG_FIXUP != 0,
            "suspect": i.flags & FLAG_SUSPECT != 0,
            "suspect_blocks": suspect_json(suspect_of(i.seq_from, i.seq_to)),
            "unreadable": interval_damage(i.seq_from, i.seq_to).0,
            "damaged": interval_damage(i.seq_from, i.seq_to).1,
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
    let base = &j["base"];
    let base_suspect = if base["suspect"] == json!(true) {
        format!(
            "  SUSPECT: {} blocks (first: {}) {}",
            base["suspect_blocks"]["blocks"],
            first_blocks(&base["suspect_blocks"]),
            reasons_text(&base["suspect_blocks"])
        )
    } else {
        String::new()
    };
    println!(
        "base     seq 0 at {}{base_suspect}",
        v["created"].as_str().unwrap_or("?")
    );
    println!("newest   seq {}", v["newest_seq"]);
    let r = &j["interrupted_restore"];
    if !r.is_null() {
        println!(
            "RESTORE  an in-place restore to {} (seq {}), started {}, was interrupted: the primary is part way\n         between that point and snapshot {}. Finish it: rewind restore --vault {} --in-place --resume",
            r["point"].as_str().unwrap_or("?"),
            r["seq"],
            r["started"].as_str().unwrap_or("?"),
            r["undo_snapshot"].as_str().unwrap_or("?"),
            v["dir"].as_str().unwrap_or("?"),
        );
    }
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
            let d = &s["damage"];
            let mark = if d["unreadable"].as_array().is_some_and(|a| !a.is_empty()) {
                "  UNREADABLE"
            } else if d["blocks"].as_array().is_some_and(|a| !a.is_empty()) {
                "  DAMAGED"
            } else {
                ""
            };
            println!(
                "  {:w$}  {:>10}  {}{}{}",
                s["name"].as_str().unwrap_or("?"),
                s["seq"].to_string(),
                s["time"].as_str().unwrap_or("?"),
                ac,
                mark
            );
        }
    }
    println!();
    let intervals = j["intervals"].as_array().cloned().unwrap_or_default();
    if intervals.is_empty() {
        println!("No writes recorded yet.");
    } else {
        print_intervals(&intervals, base);
    }
    print_damage(j);
}

/// The DAMAGE section: each damaged file, what it breaks, what repair does.
pub fn print_damage(j: &Value) {
    let damage = j["damage"].as_array().cloned().unwrap_or_default();
    if damage.is_empty() {
        return;
    }
    println!();
    println!("DAMAGE (the vault opened without these; a read that needs them fails, exit 3):");
    for d in &damage {
        println!(
            "  {} ({}) {}",
            d["file"].as_str().unwrap_or("?"),
            d["structure"].as_str().unwrap_or("?"),
            d["error"].as_str().unwrap_or("?")
        );
        println!("      breaks: {}", d["breaks"].as_str().unwrap_or("?"));
        println!(
            "      rewind repair: {}",
            d["repair"].as_str().unwrap_or("?")
        );
    }
    println!("`rewind check` reads every byte of the vault; `rewind repair --dry-run` shows what it would do.");
}

fn print_intervals(intervals: &[Value], base: &Value) {
    println!("INTERVALS");
    println!(
        "  {:>23}  {:<30}  {:<30}  {:>9}  {:>10}  {:>10}  STATE",
        "SEQ", "FROM", "TO", "BLOCKS", "CHANGED", "LOG"
    );
    let mut suspect_notes = Vec::new();
    for i in intervals {
        let mut state = i["state"].as_str().unwrap_or("?").to_string();
        if i["fixup"] == json!(true) {
            state.push_str(" fix-up");
        }
        if i["unreadable"] == json!(true) {
            state.push_str(" UNREADABLE");
        } else if i["damaged"] == json!(true) {
            state.push_str(" DAMAGED");
        }
        if i["suspect"] == json!(true) {
            let s = &i["suspect_blocks"];
            state.push_str(&format!(" SUSPECT({})", s["blocks"]));
            suspect_notes.push(format!(
                "  {}-{}: blocks {} {}",
                i["seq_from"],
                i["seq_to"],
                first_blocks(s),
                reasons_text(s)
            ));
        }
        println!(
            "  {:>23}  {:<30}  {:<30}  {:>9}  {:>10}  {:>10}  {}",
            format!("{}-{}", i["seq_from"], i["seq_to"]),
            i["time_from"].as_str().unwrap_or("?"),
            i["time_to"].as_str().unwrap_or("?"),
            i["blocks_changed"].to_string(),
            output::bytes(i["bytes_changed"].as_u64().unwrap_or(0)),
            output::bytes(i["log_bytes"].as_u64().unwrap_or(0)),
            state
        );
    }
    if !suspect_notes.is_empty() || base["suspect"] == json!(true) {
        println!();
        println!("SUSPECT (a sync found the vault's copy of these blocks wrong; points that read");
        println!("them from there may be wrong; restore and @point exports warn):");
        for n in suspect_notes {
            println!("{n}");
        }
        if base["suspect"] == json!(true) {
            println!(
                "  base image: blocks {} {}",
                first_blocks(&base["suspect_blocks"]),
                reasons_text(&base["suspect_blocks"])
            );
        }
    }
}

/// "1 block", "3 blocks".
pub fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn first_blocks(s: &Value) -> String {
    let listed: Vec<String> = s["first_blocks"]
        .as_array()
        .map(|a| a.iter().map(|v| v.to_string()).collect())
        .unwrap_or_default();
    let more = s["blocks"].as_u64().unwrap_or(0) > listed.len() as u64;
    format!("{}{}", listed.join(", "), if more { ", ..." } else { "" })
}

fn reasons_text(s: &Value) -> String {
    let words: Vec<&str> = s["reasons"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r.as_str()).collect())
        .unwrap_or_default();
    format!(
        "(the vault's copy {}; marked {}, scan at seq {})",
        words.join(" or "),
        s["marked"].as_str().unwrap_or("?"),
        s["scan_seq"]
    )
}
