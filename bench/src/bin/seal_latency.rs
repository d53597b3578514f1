//! Benchmark (a program, not a timed test): how much do seals stall the host's writes?
//!
//! Paced random 4 KiB writes go to the vault (a flush every 32), each write's latency
//! recorded, while another thread seals every `--seal-ms` milliseconds. Three phases, each
//! on a new vault: seals disabled (the interval never sealed), seals as the vault makes
//! them (the switch to the next segment under the lock, the delta map and the manifest
//! commit by the background sealer), and seals inline (the whole seal under the vault
//! lock, as before the background sealer: [`Vault::set_seal_inline`]).
//!
//! Run it in release mode: `cargo build --release -p rewind-bench && target/release/seal_latency`.
//! `--help` lists the flags.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rewind_vault::{Compression, CreateOptions, NoProgress, SealPolicy, Vault};

const BS: u64 = 4096;

const USAGE: &str = "\
seal_latency: host write latency with seals disabled, in the background, and inline

USAGE: seal_latency [FLAGS]

FLAGS:
  --dir DIR        where the temporary vaults and primaries go (default: the system temp dir)
  --size SIZE      primary volume size, e.g. 1G, 512M (default 1G)
  --writes N       measured writes per phase (default 40000)
  --rate N         writes per second (default 4000)
  --flush-every N  flush after every N writes (default 32)
  --seal-ms N      seal every N milliseconds (default 500)
  --seed N         random seed (default 1)
  -h, --help       this text
";

#[derive(Debug)]
struct Args {
    dir: Option<PathBuf>,
    size: u64,
    writes: u64,
    rate: u64,
    flush_every: u64,
    seal_ms: u64,
    seed: u64,
}

fn parse_size(s: &str) -> Result<u64> {
    let (n, mul) = match s.chars().last() {
        Some('G' | 'g') => (&s[..s.len() - 1], 1u64 << 30),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    Ok(n.parse::<u64>().context("size")? * mul)
}

impl Args {
    fn parse() -> Result<Option<Args>> {
        let mut a = Args {
            dir: None,
            size: 1 << 30,
            writes: 40_000,
            rate: 4000,
            flush_every: 32,
            seal_ms: 500,
            seed: 1,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                print!("{USAGE}");
                return Ok(None);
            }
            let v = it.next().with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--dir" => a.dir = Some(v.into()),
                "--size" => a.size = parse_size(&v)?,
                "--writes" => a.writes = v.parse()?,
                "--rate" => a.rate = v.parse()?,
                "--flush-every" => a.flush_every = v.parse()?,
                "--seal-ms" => a.seal_ms = v.parse()?,
                "--seed" => a.seed = v.parse()?,
                _ => bail!("unknown flag {flag}\n{USAGE}"),
            }
        }
        if a.rate == 0 || a.flush_every == 0 || a.seal_ms == 0 || a.size < BS {
            bail!("--rate, --flush-every, --seal-ms and --size must be positive");
        }
        Ok(Some(a))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disabled,
    Background,
    Inline,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Disabled => "seals disabled",
            Mode::Background => "seals in the background",
            Mode::Inline => "seals inline (under the lock)",
        }
    }
}

/// What one phase measured: write and flush latencies (sorted), seal durations.
struct Phase {
    mode: Mode,
    writes: Vec<Duration>,
    flushes: Vec<Duration>,
    seals: Vec<Duration>,
}

fn pct(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn new_vault(root: &Path, a: &Args, mode: Mode) -> Result<Vault> {
    let dir = root.join(format!("{mode:?}"));
    std::fs::create_dir(&dir)?;
    let primary = dir.join("primary.img");
    std::fs::File::create(&primary)?.set_len(a.size)?;
    let opts = CreateOptions {
        primary,
        vault: dir.join("vault"),
        block_size: BS as u32,
        compression: Compression::None,
        // Only the sealer thread seals.
        seal: SealPolicy {
            bytes: 0,
            interval_ns: 0,
            writes: 0,
        },
    };
    let vault = Vault::create(&opts, &NoProgress)?;
    vault.set_seal_inline(mode == Mode::Inline);
    Ok(vault)
}

fn run_phase(root: &Path, a: &Args, mode: Mode) -> Result<Phase> {
    let vault = Arc::new(new_vault(root, a, mode)?);
    let stop = Arc::new(AtomicBool::new(false));
    let sealer = (mode != Mode::Disabled).then(|| {
        let (vault, stop) = (vault.clone(), stop.clone());
        let every = Duration::from_millis(a.seal_ms);
        std::thread::spawn(move || -> Result<Vec<Duration>> {
            let mut took = Vec::new();
            let mut next = Instant::now() + every;
            while !stop.load(Ordering::Relaxed) {
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait.min(Duration::from_millis(20)));
                    continue;
                }
                next += every;
                let t = Instant::now();
                vault.seal()?;
                took.push(t.elapsed());
            }
            took.sort();
            Ok(took)
        })
    });
    let blocks = a.size / BS;
    let every = Duration::from_secs_f64(1.0 / a.rate as f64);
    let mut rng = fastrand::Rng::with_seed(a.seed);
    let mut writes = Vec::with_capacity(a.writes as usize);
    let mut flushes = Vec::new();
    let mut buf = vec![0u8; BS as usize];
    let start = Instant::now();
    for i in 0..a.writes {
        let due = start + every * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        rng.fill(&mut buf);
        let b = rng.u64(0..blocks);
        let t = Instant::now();
        vault.write(b, &buf)?;
        writes.push(t.elapsed());
        if (i + 1) % a.flush_every == 0 {
            let t = Instant::now();
            vault.flush()?;
            flushes.push(t.elapsed());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seals = match sealer {
        Some(h) => h
            .join()
            .map_err(|_| anyhow::anyhow!("sealer thread panicked"))??,
        None => Vec::new(),
    };
    writes.sort();
    flushes.sort();
    let sealed = vault.intervals().iter().filter(|i| i.sealed).count();
    if mode != Mode::Disabled && sealed + 1 < seals.len() {
        bail!("{} seals but {sealed} sealed intervals", seals.len());
    }
    Ok(Phase {
        mode,
        writes,
        flushes,
        seals,
    })
}

fn main() -> Result<()> {
    let Some(a) = Args::parse()? else {
        return Ok(());
    };
    let tmp = match &a.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let mut phases = Vec::new();
    for mode in [Mode::Disabled, Mode::Background, Mode::Inline] {
        phases.push(run_phase(tmp.path(), &a, mode)?);
    }
    println!(
        "{} writes of 4 KiB per phase at {} writes/s, flush every {}, seal every {} ms, volume {} MiB",
        a.writes,
        a.rate,
        a.flush_every,
        a.seal_ms,
        a.size >> 20
    );
    println!();
    println!("| phase | write p50 | write p99 | write p99.9 | write max | writes > 1 ms | flush p50 | flush p99 | seals | seal p50 | seal max |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &phases {
        let slow = p.writes.len() - p.writes.partition_point(|d| *d <= Duration::from_millis(1));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.mode.name(),
            fmt(pct(&p.writes, 0.5)),
            fmt(pct(&p.writes, 0.99)),
            fmt(pct(&p.writes, 0.999)),
            fmt(p.writes.last().copied().unwrap_or_default()),
            slow,
            fmt(pct(&p.flushes, 0.5)),
            fmt(pct(&p.flushes, 0.99)),
            p.seals.len(),
            fmt(pct(&p.seals, 0.5)),
            fmt(p.seals.last().copied().unwrap_or_default()),
        );
    }
    Ok(())
}
