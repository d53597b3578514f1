//! The whole fault campaign: `faults [--seed S] [--ops K] [--threads T] [--workloads W]`.
//!
//! For each of W fixed workloads (seeds S, S+1, ...), traces its storage operations and runs
//! it once per operation × {EIO, ENOSPC} × {once, from then on} with that fault injected
//! (see `rewind_campaign::fault`), on T threads, and prints the counts. A run that breaks a
//! promise is printed with its fault. Exit code 1 if any broke.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rewind_campaign::fault::{run, targets, trace, Config, Target};

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
        println!("faults [--seed S (the suite's)] [--ops K (36)] [--threads T (cores)] [--workloads W (1)]");
        return Ok(());
    }
    let base = Config::default();
    let seed = arg(&args, "--seed", base.seed)?;
    let ops = arg(&args, "--ops", base.ops as u64)? as usize;
    let workloads = arg(&args, "--workloads", 1)?.max(1);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let threads = arg(&args, "--threads", cores)?.max(1);
    let mut all: Vec<(Config, Target)> = Vec::new();
    let mut traced = 0;
    for w in 0..workloads {
        let cfg = Config {
            seed: seed + w,
            ops,
            ..base
        };
        let t = trace(&cfg).map_err(|e| anyhow::anyhow!("seed {}: {e}", cfg.seed))?;
        traced += t.len();
        all.extend(targets(&t).into_iter().map(|t| (cfg, t)));
    }
    println!(
        "{workloads} workload(s) of {ops} host operations: {traced} storage operations, {} faults to run on {threads} threads",
        all.len()
    );
    let next = AtomicUsize::new(0);
    let counts: [AtomicUsize; 5] = Default::default();
    let failures = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((cfg, t)) = all.get(i) else {
                    return;
                };
                match run(cfg, t) {
                    Ok(o) => {
                        for (c, yes) in
                            counts
                                .iter()
                                .zip([o.hit, o.failed.is_some(), o.went_on, o.restarted])
                        {
                            c.fetch_add(usize::from(yes), Ordering::Relaxed);
                        }
                        counts[4]
                            .fetch_add(o.points_checked + o.snapshots_checked, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap_or_else(|p| p.into_inner()).push(e),
                }
                if i % 500 == 499 {
                    eprintln!(
                        "{} of {} ({:.0} s)",
                        i + 1,
                        all.len(),
                        started.elapsed().as_secs_f64()
                    );
                }
            });
        }
    });
    let c: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    println!(
        "{} faults in {:.0} s: {} hit an operation, {} failed a host operation ({} went on after the fault cleared, {} recovered by a restart), {} points and snapshots checked, {} broke a promise",
        all.len(),
        started.elapsed().as_secs_f64(),
        c[0],
        c[1],
        c[2],
        c[3],
        c[4],
        failures.len()
    );
    for f in &failures {
        println!("BROKE: {f}");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        std::process::exit(1)
    }
}
