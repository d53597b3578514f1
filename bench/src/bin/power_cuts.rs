//! Long power-cut campaigns: `power_cuts [--cuts N] [--seed S] [--threads T] [--ops K]`.
//!
//! Runs N power cuts (see `rewind_campaign::power_cut`: a random workload through the live
//! volume on the crash backend, the power cut at a random storage operation, recovery as
//! `rewind serve` does it, every promise checked against the reference model) on T threads,
//! and prints the counts. A cut that breaks a promise is printed with its seed; replay one
//! with `--seed S --cuts 1`. Exit code 1 if any broke.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rewind_campaign::power_cut::{run, Config};

fn arg(args: &[String], name: &str, default: u64) -> anyhow::Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => {
            let v = args
                .get(i + 1)
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| anyhow::anyhow!("{name}: {v:?} is not a number"))
        }
        None => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "power_cuts [--cuts N (1000)] [--seed S (1)] [--threads T (cores)] [--ops K (40)]"
        );
        return Ok(());
    }
    let cuts = arg(&args, "--cuts", 1000)?;
    let seed = arg(&args, "--seed", 1)?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let threads = arg(&args, "--threads", cores)?.max(1);
    let ops = arg(&args, "--ops", 40)? as usize;
    let next = AtomicU64::new(0);
    let (mid, points, snaps, restores, fixups) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicU64::new(0),
    );
    let failures = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cuts {
                    return;
                }
                let cfg = Config {
                    ops,
                    ..Config::new(seed + i)
                };
                match run(&cfg) {
                    Ok(o) => {
                        mid.fetch_add(usize::from(o.mid_workload), Ordering::Relaxed);
                        points.fetch_add(o.points_checked, Ordering::Relaxed);
                        snaps.fetch_add(o.snapshots_checked, Ordering::Relaxed);
                        restores.fetch_add(usize::from(o.restore_finished), Ordering::Relaxed);
                        fixups.fetch_add(o.fixup_blocks, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("BROKE: {e}");
                        failures.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                    }
                }
                if (i + 1).is_multiple_of(500) {
                    eprintln!("{} cuts, {:.0}s", i + 1, started.elapsed().as_secs_f64());
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    println!(
        "{cuts} power cuts (seeds {seed}..{}) in {:.1}s on {threads} threads: {} inside the workload, {} points and {} snapshots read back and checked, {} interrupted in-place restores finished, {} blocks repaired from the primary; {} broke a promise",
        seed + cuts,
        started.elapsed().as_secs_f64(),
        mid.into_inner(),
        points.into_inner(),
        snaps.into_inner(),
        restores.into_inner(),
        fixups.into_inner(),
        failures.len()
    );
    if !failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
