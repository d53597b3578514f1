//! Benchmark (a program, not a timed test): does a client that keeps opening point exports
//! stall the host's writes?
//!
//! A live volume takes paced random 4 KiB writes (a flush every 32) and the latency of each
//! write is recorded, first with nothing else running, then with a client thread that loops
//! on opening `@now` and a `@seq:N` in the middle of the open interval through the NBD
//! exports (what NBD_OPT_INFO / NBD_OPT_GO do for each option a client sends). Opening a
//! point export builds a view: the open interval's present map (`@now`) or a replay of its
//! records up to the point (`@seq`). Whatever of that runs under the vault's lock, every host
//! write waits for.
//!
//! Run it in release mode: `cargo build --release -p rewind-bench && target/release/open_stall`.
//! `--help` lists the flags.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rewind_engine::exports::VaultExports;
use rewind_engine::intercept::LiveVolume;
use rewind_nbd::Exports;
use rewind_vault::{Compression, CreateOptions, NoProgress, SealPolicy, Vault};

const BS: u64 = 4096;

const USAGE: &str = "\
open_stall: host write latency with and without a client looping on point-export opens

USAGE: open_stall [FLAGS]

FLAGS:
  --dir DIR        where the temporary vault and primary go (default: the system temp dir)
  --size SIZE      primary volume size, e.g. 1G, 512M (default 1G)
  --prefill N      writes in the open interval before measuring (default 60000; the
                   default seal policy seals after 65536)
  --writes N       measured writes per phase (default 20000)
  --rate N         writes per second (default 4000)
  --flush-every N  flush after every N writes (default 32)
  --seed N         random seed (default 1)
  -h, --help       this text
";

#[derive(Debug)]
struct Args {
    dir: Option<PathBuf>,
    size: u64,
    prefill: u64,
    writes: u64,
    rate: u64,
    flush_every: u64,
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
            prefill: 60_000,
            writes: 20_000,
            rate: 4000,
            flush_every: 32,
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
                "--prefill" => a.prefill = v.parse()?,
                "--writes" => a.writes = v.parse()?,
                "--rate" => a.rate = v.parse()?,
                "--flush-every" => a.flush_every = v.parse()?,
                "--seed" => a.seed = v.parse()?,
                _ => bail!("unknown flag {flag}\n{USAGE}"),
            }
        }
        if a.rate == 0 || a.flush_every == 0 || a.size < BS {
            bail!("--rate, --flush-every and --size must be positive");
        }
        Ok(Some(a))
    }
}

/// Latencies of one phase, sorted.
struct Phase {
    name: &'static str,
    writes: Vec<Duration>,
    opens: Vec<Duration>,
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

/// Paced random writes: each write's latency (a flush every `flush_every`, not counted).
fn write_phase(v: &LiveVolume, a: &Args, rng: &mut fastrand::Rng) -> Result<Vec<Duration>> {
    let blocks = a.size / BS;
    let every = Duration::from_secs_f64(1.0 / a.rate as f64);
    let mut lat = Vec::with_capacity(a.writes as usize);
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
        v.write(b * BS, &buf, false)?;
        lat.push(t.elapsed());
        if (i + 1) % a.flush_every == 0 {
            v.flush()?;
        }
    }
    lat.sort();
    Ok(lat)
}

fn main() -> Result<()> {
    let Some(a) = Args::parse()? else {
        return Ok(());
    };
    let tmp = match &a.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let primary = tmp.path().join("primary.img");
    std::fs::File::create(&primary)?.set_len(a.size)?;
    let opts = CreateOptions {
        primary: primary.clone(),
        vault: tmp.path().join("vault"),
        block_size: BS as u32,
        compression: Compression::None,
        // Never sealed while measuring: the open interval only grows.
        seal: SealPolicy {
            bytes: 0,
            interval_ns: 0,
            writes: 0,
        },
    };
    let vault = Arc::new(Vault::create(&opts, &NoProgress)?);
    let volume = Arc::new(LiveVolume::open(&primary, vault.clone())?);
    let mut rng = fastrand::Rng::with_seed(a.seed);
    let blocks = a.size / BS;
    let mut buf = vec![0u8; BS as usize];
    let first = vault.newest_seq().0 + 1;
    for i in 0..a.prefill {
        rng.fill(&mut buf);
        volume.write(rng.u64(0..blocks) * BS, &buf, false)?;
        if (i + 1) % 1024 == 0 {
            volume.flush()?;
        }
    }
    volume.flush()?;
    let mid = first + a.prefill / 2;
    let exports = Arc::new(VaultExports::new(volume.clone()));

    let quiet = Phase {
        name: "no client",
        writes: write_phase(&volume, &a, &mut rng)?,
        opens: Vec::new(),
    };

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let client = {
        let (exports, stop, failed) = (exports.clone(), stop.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let names = ["@now".to_string(), format!("@seq:{mid}")];
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if exports.open(&names[i % 2]).is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed());
                i += 1;
            }
            lat.sort();
            lat
        })
    };
    let busy_writes = write_phase(&volume, &a, &mut rng)?;
    stop.store(true, Ordering::Relaxed);
    let opens = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    if failed.load(Ordering::Relaxed) > 0 {
        bail!("{} opens failed", failed.load(Ordering::Relaxed));
    }
    let busy = Phase {
        name: "client looping on @now / @seq (mid open interval)",
        writes: busy_writes,
        opens,
    };

    println!(
        "open interval: {} records before measuring (+{} per phase), {} writes/s, flush every {}, volume {} MiB",
        a.prefill,
        a.writes,
        a.rate,
        a.flush_every,
        a.size >> 20
    );
    println!();
    println!("| phase | writes | write p50 | write p99 | write p99.9 | write max | opens | open p50 | open p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in [&quiet, &busy] {
        let (o50, o99) = if p.opens.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            (fmt(pct(&p.opens, 0.5)), fmt(pct(&p.opens, 0.99)))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.name,
            p.writes.len(),
            fmt(pct(&p.writes, 0.5)),
            fmt(pct(&p.writes, 0.99)),
            fmt(pct(&p.writes, 0.999)),
            fmt(p.writes.last().copied().unwrap_or_default()),
            p.opens.len(),
            o50,
            o99
        );
    }
    volume.stop()?;
    Ok(())
}
