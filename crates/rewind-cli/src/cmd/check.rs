use anyhow::Context;
use rewind_vault::check::{runs, CheckOptions, CheckReport, Fault, Impact, PointRange};
use rewind_vault::Seq;
use serde_json::{json, Value};

use super::VaultArg;
use crate::cmd::verify::online;
use crate::output::{self, Bar};

/// Read rate of a check inside a running server unless told: hosts keep their write
/// latency (see README, "Checking the vault").
pub const DEFAULT_ONLINE_RATE: u64 = 200 << 20;
/// How many problems, notes and block runs a report lists (the counts are exact).
const LISTED: usize = 1000;
/// How many problems and block runs the human report shows.
const FIRST_FEW: usize = 20;

/// Read every byte of the vault and report each damaged structure: its file and byte
/// offset, what is wrong, and which points it breaks. Changes nothing. While `rewind serve`
/// runs, the server does it (hosts keep writing; it reads at --rate).
#[derive(clap::Args, Debug)]
#[command(after_help = "\
What it reads: every manifest generation; the base image block by block against
base.sums, a chunk of it at a time (holes are not read: they read as zeroes, so their
checksums must be the zero block's); every record of every write log segment (crc, seq order, compressed payloads
decompress), each interval's records replayed and compared with its delta map; every
delta map as the vault reads it (head, entries); the dirty region log's two copies.
It does not stop at the first problem.

What it reports, per problem: the file, the byte range of the damaged structure (a
record, a map's head or entries, a base block, a manifest, a DRL copy), the error, and
what it breaks: the vault does not open (the base image; the manifest for writers);
every read of points seq A..=B (a replay of an interval, or a delta map chain, reads
it); reads of some blocks at points seq A..=B (each block until it is written again),
and the snapshots among those points; only crash repair (the DRL); or nothing (a
previous manifest, padding). Notes list leftovers of interrupted commits and torn
tails, which are not damage.

Online (a server holds the vault) it checks what was sealed when it started and the
durable part of the open interval, reading at --rate (default 200M per second) so that
hosts keep their write latency; offline it holds the vault's lock and reads at full
speed unless --rate says otherwise.

Exit codes: 0 no problem; 3 problems found (the vault is damaged); 1 failure, or
the check was stopped; 4 another writer (not a server) holds the vault.

Examples:
  rewind check --vault vm.vault
  rewind check --vault vm.vault --json | jq '.problems[] | {file, offset, affects}'
  rewind check --vault vm.vault --rate 50M        # gentler on a busy disk")]
pub struct Args {
    #[command(flatten)]
    pub vault: VaultArg,
    /// Read at most this many bytes per second, e.g. 200M (0: no limit) [default: 200M
    /// inside a running server, no limit offline]
    #[arg(long, value_parser = output::parse_size, value_name = "SIZE")]
    pub rate: Option<u64>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dir = a.vault.path();
    let rate = a.rate.unwrap_or(DEFAULT_ONLINE_RATE);
    let req = json!({"op": "check", "rate": rate});
    let report = match online(&dir, &req, None, a.json)? {
        Some(r) => r,
        None => {
            let opts = CheckOptions {
                rate: a.rate.filter(|r| *r > 0),
                cancel: None,
            };
            let bar = Bar::new(a.json);
            let r = rewind_engine::check::check_offline(&dir, &opts, &bar)
                .with_context(|| format!("cannot check vault {}", dir.display()))?;
            bar.clear();
            report_json(&r)
        }
    };
    if a.json {
        output::json(&report)?;
    } else {
        print_human(&report);
    }
    if report["problems_total"].as_u64().unwrap_or(0) > 0 {
        return Err(crate::exit::Code(crate::exit::CORRUPTED).into());
    }
    if report["cancelled"] == json!(true) {
        return Err(crate::exit::Code(crate::exit::FAILURE).into());
    }
    Ok(())
}

/// The report as the CLI prints it (`--json`) and the server sends it.
pub fn report_json(r: &CheckReport) -> Value {
    let secs = r.elapsed.as_secs_f64();
    json!({
        "vault": r.dir,
        "online": r.online,
        "clean": r.is_clean(),
        "cancelled": r.cancelled,
        "generation": r.generation,
        "used_previous_manifest": r.used_previous_manifest,
        "newest_seq": r.newest_seq.0,
        "block_size": r.block_size,
        "volume_size": r.volume_size,
        "files": r.files,
        "bytes_read": r.bytes_read,
        "bytes_sparse": r.bytes_sparse,
        "seconds": secs,
        "bytes_per_second": if secs > 0.0 { r.bytes_read as f64 / secs } else { 0.0 },
        "rate": r.rate,
        "problems_total": r.problems.len(),
        "problems": r.problems.iter().take(LISTED).map(|p| json!({
            "file": p.path,
            "offset": p.offset,
            "length": p.length,
            "structure": p.structure,
            "error": p.fault.to_string(),
            "unreadable": matches!(p.fault, Fault::Unreadable(_)),
            "affects": affects_json(&p.impact, r.newest_seq),
        })).collect::<Vec<_>>(),
        "notes": r.notes.iter().take(LISTED).map(|n| json!({"file": n.path, "note": n.text})).collect::<Vec<_>>(),
    })
}

fn affects_json(impact: &Impact, newest: Seq) -> Value {
    let summary = affects_text(impact, newest);
    match impact {
        Impact::Vault {
            previous_manifest_intact,
        } => {
            json!({"kind": "vault", "previous_manifest_intact": previous_manifest_intact, "summary": summary})
        }
        Impact::Points(ranges) => json!({
            "kind": "points",
            "ranges": ranges.iter().map(|r| json!({
                "from": r.from.0,
                "to": r.to.0,
                "every_read": r.blocks.is_none(),
                "blocks": r.blocks.as_ref().map(|b| runs(b).into_iter().take(LISTED).map(|(f, n)| json!([f, n])).collect::<Vec<_>>()),
                "blocks_total": r.blocks.as_ref().map(|b| b.len()),
                "snapshots": r.snapshots,
            })).collect::<Vec<_>>(),
            "summary": summary,
        }),
        Impact::CrashRepair(_) => json!({"kind": "crash_repair", "summary": summary}),
        Impact::Nothing(_) => json!({"kind": "nothing", "summary": summary}),
        _ => json!({"kind": "unknown", "summary": summary}),
    }
}

/// What a problem breaks, in a sentence.
fn affects_text(impact: &Impact, newest: Seq) -> String {
    match impact {
        Impact::Vault {
            previous_manifest_intact: Some(true),
        } => "no writer opens the vault (serve refuses); readers (list, restore) read it as of the previous manifest generation, which is intact and lacks only the newest commit (`rewind repair` goes on from it)".into(),
        Impact::Vault {
            previous_manifest_intact: Some(false),
        } => "the vault does not open: no point can be read or served (the previous manifest generation is damaged too)".into(),
        Impact::Vault { .. } => "the vault does not open: no point can be read or served".into(),
        Impact::Points(ranges) => {
            let mut parts: Vec<String> = ranges.iter().map(|r| range_text(r, newest)).collect();
            let mut snaps: Vec<&str> = ranges
                .iter()
                .flat_map(|r| r.snapshots.iter().map(String::as_str))
                .collect();
            snaps.sort();
            snaps.dedup();
            if !snaps.is_empty() {
                parts.push(format!("snapshots {}", snaps.join(", ")));
            }
            parts.join("; ")
        }
        Impact::CrashRepair(why) => format!("crash repair only: {why}"),
        Impact::Nothing(why) => format!("nothing: {why}"),
        _ => "not known: no intact manifest says what reads it (the vault does not open anyway)".into(),
    }
}

fn range_text(r: &PointRange, newest: Seq) -> String {
    let points = if r.from == r.to {
        format!("point seq {}", r.from)
    } else {
        format!("points seq {}..={}", r.from, r.to)
    };
    let points = if r.to == newest {
        format!("{points} (the newest)")
    } else {
        points
    };
    match &r.blocks {
        None => format!("every read of {points}"),
        Some(b) => {
            let shown: Vec<String> = runs(b)
                .into_iter()
                .take(FIRST_FEW)
                .map(|(f, n)| {
                    if n == 1 {
                        f.to_string()
                    } else {
                        format!("{f}..{}", f + n)
                    }
                })
                .collect();
            let more = if runs(b).len() > FIRST_FEW {
                ", ..."
            } else {
                ""
            };
            let until = match (r.to == newest, b.len()) {
                (true, _) => "",
                (false, 1) => " (then it is written again)",
                (false, _) => " (then they are written again)",
            };
            format!(
                "reads of block{} {}{more} at {points}{until}",
                if b.len() == 1 { "" } else { "s" },
                shown.join(", ")
            )
        }
    }
}

fn print_human(j: &Value) {
    let n = |k: &str| j[k].as_u64().unwrap_or(0);
    let secs = j["seconds"].as_f64().unwrap_or(0.0);
    let generation = j["generation"]
        .as_u64()
        .map_or("no intact manifest".to_string(), |g| {
            format!("manifest generation {g}")
        });
    println!(
        "Checked vault {} ({generation}, newest seq {}){} in {secs:.2}s: {} files, {} read ({}/s){}.",
        j["vault"].as_str().unwrap_or("?"),
        n("newest_seq"),
        if j["online"] == json!(true) {
            ", inside the running server"
        } else {
            ""
        },
        n("files"),
        output::bytes(n("bytes_read")),
        output::bytes(j["bytes_per_second"].as_f64().unwrap_or(0.0) as u64),
        if n("bytes_sparse") > 0 {
            format!(", {} of base image holes not read", output::bytes(n("bytes_sparse")))
        } else {
            String::new()
        },
    );
    if j["cancelled"] == json!(true) {
        println!("The check was stopped before it finished; what it covered is below.");
    }
    if j["used_previous_manifest"] == json!(true) {
        println!("The current manifest is damaged: the rest was checked against the previous generation.");
    }
    let problems = j["problems"].as_array().cloned().unwrap_or_default();
    if problems.is_empty() {
        if j["cancelled"] != json!(true) {
            println!("No problems: every byte of the vault checks out.");
        }
    } else {
        println!("{} problem(s): the vault is damaged.", n("problems_total"));
    }
    for p in problems.iter().take(FIRST_FEW) {
        let (o, l) = (
            p["offset"].as_u64().unwrap_or(0),
            p["length"].as_u64().unwrap_or(0),
        );
        println!(
            "  {} at bytes {o}..{}: {}: {}",
            p["file"].as_str().unwrap_or("?"),
            o + l,
            p["structure"].as_str().unwrap_or("?"),
            p["error"].as_str().unwrap_or("?"),
        );
        println!(
            "      breaks: {}",
            p["affects"]["summary"].as_str().unwrap_or("?")
        );
    }
    if problems.len() > FIRST_FEW || n("problems_total") > problems.len() as u64 {
        println!(
            "  ... {} more (--json lists them)",
            n("problems_total").saturating_sub(FIRST_FEW as u64)
        );
    }
    let notes = j["notes"].as_array().cloned().unwrap_or_default();
    if !notes.is_empty() {
        println!("Notes (not damage):");
        for note in notes.iter().take(FIRST_FEW) {
            println!(
                "  {}: {}",
                note["file"].as_str().unwrap_or("?"),
                note["note"].as_str().unwrap_or("?")
            );
        }
    }
}
