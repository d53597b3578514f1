//! Benchmark (a program, not a timed test): does reading the volume at a point in time get
//! slower as the history grows?
//!
//! It creates a vault on a sparse primary, appends random 4 KiB writes (flushing every N),
//! and at each milestone of history length (1k, 10k, 100k, 1M records) takes a snapshot and
//! measures, at three kinds of points,
//! - the time to resolve the point and to open a [`PointView`] on it,
//! - the latency of random 4 KiB reads and of 256 KiB (64-block) sequential reads,
//! - the delta maps the view consults and the records its partial replay walks.
//!
//! Every read is checked against a shadow of what was written (each block carries the seq
//! of the record that wrote it), so a fast but wrong answer fails the run.
//!
//! Run it in release mode: `cargo build --release -p rewind-bench && target/release/read_at`.
//! `--help` lists the flags.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rewind_vault::{
    format_time, now_ns, BlockSource, Compression, CreateOptions, NoProgress, Point, PointView,
    SealPolicy, Seq, Vault,
};

const BS: usize = 4096;
const SEQ_BLOCKS: u64 = 64;
const POOL: usize = 1 << 20;

const USAGE: &str = "\
read_at: read-at-point cost vs history length, and append throughput, for a rewind vault

USAGE: read_at [FLAGS]

FLAGS:
  --dir DIR          where the temporary vault and primary go (default: the system temp dir)
  --size SIZE        primary volume size, e.g. 1G, 512M (default 1G)
  --max-records N    grow the history up to N records (default 1M); milestones are
                     1k, 10k, 100k, 1M, ... up to N, and N itself
  --quick            same as --max-records 100k
  --flush-every N    flush (fdatasync) after every N writes (default 32)
  --reads N          random 4 KiB reads per point (default 2000)
  --seq-reads N      64-block (256 KiB) sequential reads per point (default 200)
  --opens N          view opens per point; the median is reported (default 5)
  --seal-writes N    seal an interval after N records instead of the default policy's
                     65536 (more, smaller delta maps: a stand-in for a longer history)
  --seed N           random seed (default 1)
  --keep             keep the vault directory afterwards (its path is printed)
  -h, --help         this text
";

#[derive(Debug)]
struct Args {
    dir: Option<PathBuf>,
    size: u64,
    max_records: u64,
    flush_every: u64,
    reads: usize,
    seq_reads: usize,
    opens: usize,
    seed: u64,
    seal_writes: Option<u64>,
    keep: bool,
}

impl Args {
    fn parse() -> Result<Option<Args>> {
        let mut a = Args {
            dir: None,
            size: 1 << 30,
            max_records: 1_000_000,
            flush_every: 32,
            reads: 2000,
            seq_reads: 200,
            opens: 5,
            seed: 1,
            seal_writes: None,
            keep: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .with_context(|| format!("{flag} needs a value (see --help)"))
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(None),
                "--dir" => a.dir = Some(PathBuf::from(value()?)),
                "--size" => a.size = parse_size(&value()?)?,
                "--max-records" => a.max_records = parse_count(&value()?)?,
                "--quick" => a.max_records = 100_000,
                "--flush-every" => a.flush_every = parse_count(&value()?)?,
                "--reads" => a.reads = usize::try_from(parse_count(&value()?)?)?,
                "--seq-reads" => a.seq_reads = usize::try_from(parse_count(&value()?)?)?,
                "--opens" => a.opens = usize::try_from(parse_count(&value()?)?)?,
                "--seed" => a.seed = parse_count(&value()?)?,
                "--seal-writes" => a.seal_writes = Some(parse_count(&value()?)?),
                "--keep" => a.keep = true,
                other => bail!("unknown flag {other:?} (see --help)"),
            }
        }
        ensure!(
            a.size.is_multiple_of(BS as u64) && a.size >= SEQ_BLOCKS * BS as u64,
            "--size must be a multiple of 4096 and at least 256 KiB"
        );
        ensure!(a.max_records >= 2, "--max-records must be at least 2");
        ensure!(a.flush_every >= 1, "--flush-every must be at least 1");
        ensure!(
            a.reads >= 1 && a.seq_reads >= 1 && a.opens >= 1,
            "--reads, --seq-reads and --opens must be at least 1"
        );
        Ok(Some(a))
    }
}

/// `4096`, `512K`, `64M`, `1G`, `1GiB`, `2T`.
fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => bail!("bad size {s:?}: units are K, M, G, T"),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .replace('_', "")
        .parse()
        .with_context(|| format!("bad size {s:?}"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} is too large"))
}

/// `1000`, `1_000_000`, `10k`, `1M`.
fn parse_count(s: &str) -> Result<u64> {
    let t = s.trim().replace('_', "");
    let (num, mult) = if let Some(n) = t.strip_suffix(['k', 'K']) {
        (n, 1_000)
    } else if let Some(n) = t.strip_suffix('M') {
        (n, 1_000_000)
    } else {
        (t.as_str(), 1)
    };
    let n: u64 = num.parse().with_context(|| format!("bad number {s:?}"))?;
    n.checked_mul(mult)
        .with_context(|| format!("number {s:?} is too large"))
}

/// What was written: for every block, the seqs of the records that wrote it, in order.
struct History {
    per_block: Vec<Vec<u64>>,
}

impl History {
    /// The seq whose data `block` holds at point `p`; `None`: the base image (zeroes).
    fn expected(&self, block: u64, p: u64) -> Option<u64> {
        let v = &self.per_block[block as usize];
        match v.partition_point(|&s| s <= p) {
            0 => None,
            i => Some(v[i - 1]),
        }
    }
}

/// Makes a block's data: bytes 0..8 are the seq, 8..16 the block, the rest from a pool of
/// random bytes (compression is off, so their content does not matter for speed).
struct DataGen {
    pool: Vec<u8>,
}

impl DataGen {
    fn new(rng: &mut fastrand::Rng) -> DataGen {
        let mut pool = vec![0u8; POOL + BS];
        rng.fill(&mut pool);
        DataGen { pool }
    }

    fn fill(&self, buf: &mut [u8], seq: u64, block: u64) {
        let off = (seq as usize).wrapping_mul(4099) % POOL;
        buf.copy_from_slice(&self.pool[off..off + BS]);
        buf[..8].copy_from_slice(&seq.to_le_bytes());
        buf[8..16].copy_from_slice(&block.to_le_bytes());
    }
}

fn check_block(data: &[u8], block: u64, p: u64, want: Option<u64>) -> Result<()> {
    match want {
        None => ensure!(
            data.iter().fold(0u8, |acc, &b| acc | b) == 0,
            "block {block} at seq {p}: expected zeroes (base image), got data"
        ),
        Some(seq) => {
            let mut s = [0u8; 8];
            let mut b = [0u8; 8];
            s.copy_from_slice(&data[..8]);
            b.copy_from_slice(&data[8..16]);
            let (got_seq, got_block) = (u64::from_le_bytes(s), u64::from_le_bytes(b));
            ensure!(
                got_seq == seq && got_block == block,
                "block {block} at seq {p}: expected the data of seq {seq}, got seq {got_seq} block {got_block}"
            );
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Pct {
    p50: Duration,
    p99: Duration,
}

fn pct(mut v: Vec<Duration>) -> Pct {
    v.sort_unstable();
    if v.is_empty() {
        return Pct {
            p50: Duration::ZERO,
            p99: Duration::ZERO,
        };
    }
    let at = |q: usize| v[(v.len() * q / 100).min(v.len() - 1)];
    Pct {
        p50: at(50),
        p99: at(99),
    }
}

/// 850 ns, 12.3 µs, 4.56 ms, 1.23 s.
fn dur(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// One point measured at one milestone.
struct PointRow {
    records: u64,
    kind: &'static str,
    seq: u64,
    /// The sealed interval holding the point.
    interval: (u64, u64),
    maps: usize,
    replayed_records: u64,
    replayed_blocks: u64,
    resolve: Duration,
    open: Duration,
    read4k: Pct,
    from_log: f64,
    /// Random 4 KiB reads of blocks written at or before the point (answered from the log).
    read4k_written: Option<Pct>,
    /// Median time to find where one written block lives (`PointView::sources`, no data
    /// read), and the mean number of delta maps that search checks.
    lookup: Option<(Duration, f64)>,
    /// Median time to find that a never-written block comes from the base image: every map of
    /// the chain is checked.
    lookup_base: Option<Duration>,
    read256k: Pct,
}

/// Appending from one milestone to the next.
struct AppendRow {
    to: u64,
    writes: u64,
    time: Duration,
    flushes: u64,
    seals: usize,
    max_write: Duration,
    /// Writes that took over 1 ms (the ones that sealed an interval, mostly).
    slow_writes: Vec<Duration>,
    flush: Pct,
    max_flush: Duration,
    snapshot: Duration,
}

struct Bench<'a> {
    args: &'a Args,
    vault: Vault,
    blocks: u64,
    history: History,
    rng: fastrand::Rng,
}

impl Bench<'_> {
    fn measure(&mut self, records: u64, kind: &'static str, point: Point) -> Result<PointRow> {
        let mut resolve_t = Vec::with_capacity(self.args.opens);
        let mut open_t = Vec::with_capacity(self.args.opens);
        let mut view: Option<PointView> = None;
        for _ in 0..self.args.opens {
            let t = Instant::now();
            self.vault.resolve(&point).context("resolve")?;
            resolve_t.push(t.elapsed());
            let t = Instant::now();
            let v = self.vault.view(&point).context("open view")?;
            open_t.push(t.elapsed());
            view = Some(v);
        }
        let view = view.context("no view opened")?;
        let p = view.point().seq.0;
        let sealed: Vec<(u64, u64)> = self
            .vault
            .intervals()
            .iter()
            .filter(|i| i.sealed)
            .map(|i| (i.seq_from.0, i.seq_to.0))
            .collect();
        let h = sealed
            .iter()
            .position(|&(f, t)| f <= p && p <= t)
            .context("no sealed interval holds the point")?;
        let interval = sealed[h];
        let replayed_records = if p == interval.1 {
            0
        } else {
            p - interval.0 + 1
        };
        // The view's chain, oldest first: the sealed intervals before the holding one, and
        // the holding one too when the point ends it (then nothing is replayed).
        let chain = if replayed_records == 0 {
            &sealed[..=h]
        } else {
            &sealed[..h]
        };
        ensure!(
            chain.len() == view.maps_consulted(),
            "the view consults {} maps, expected {}",
            view.maps_consulted(),
            chain.len()
        );
        // How many delta maps a lookup of a block whose data is that of `seq` checks.
        let maps_checked = |seq: u64| -> usize {
            if seq >= interval.0 && replayed_records > 0 {
                return 0; // the partial replay has it
            }
            let j = chain.partition_point(|&(_, t)| t < seq);
            chain.len() - j
        };

        let mut lat = Vec::with_capacity(self.args.reads);
        let mut from_log = 0usize;
        for _ in 0..self.args.reads {
            let b = self.rng.u64(0..self.blocks);
            let t = Instant::now();
            let data = view.read(b, 1).context("4 KiB read")?;
            lat.push(t.elapsed());
            let want = self.history.expected(b, p);
            from_log += usize::from(want.is_some());
            check_block(&data, b, p, want)?;
        }

        let written: Vec<u64> = (0..self.blocks)
            .filter(|&b| {
                self.history.per_block[b as usize]
                    .first()
                    .is_some_and(|&s| s <= p)
            })
            .collect();
        let read4k_written = if written.is_empty() {
            None
        } else {
            let mut lat = Vec::with_capacity(self.args.reads);
            for _ in 0..self.args.reads {
                let b = written[self.rng.usize(0..written.len())];
                let t = Instant::now();
                let data = view.read(b, 1).context("4 KiB read")?;
                lat.push(t.elapsed());
                check_block(&data, b, p, self.history.expected(b, p))?;
            }
            Some(pct(lat))
        };
        let lookup = if written.is_empty() {
            None
        } else {
            let sample: Vec<u64> = (0..self.args.reads)
                .map(|_| written[self.rng.usize(0..written.len())])
                .collect();
            let mut lat = Vec::with_capacity(sample.len());
            for &b in &sample {
                let t = Instant::now();
                let src = view.sources(b, 1).context("sources")?;
                lat.push(t.elapsed());
                ensure!(
                    src == [BlockSource::Record],
                    "block {b} at seq {p}: sources says {src:?}, expected a log record"
                );
            }
            let time = pct(lat).p50;
            let checked: usize = sample
                .iter()
                .map(|&b| self.history.expected(b, p).map_or(0, maps_checked))
                .sum();
            Some((time, checked as f64 / sample.len() as f64))
        };
        let unwritten: Vec<u64> = (0..self.args.reads)
            .filter_map(|_| {
                // Rejection sampling; gives up on a block after a few tries when the volume
                // is nearly all written.
                (0..64)
                    .map(|_| self.rng.u64(0..self.blocks))
                    .find(|&b| self.history.expected(b, p).is_none())
            })
            .collect();
        let lookup_base = if unwritten.is_empty() {
            None
        } else {
            let mut lat = Vec::with_capacity(unwritten.len());
            for &b in &unwritten {
                let t = Instant::now();
                let src = view.sources(b, 1).context("sources")?;
                lat.push(t.elapsed());
                ensure!(
                    src == [BlockSource::Base],
                    "block {b} at seq {p}: sources says {src:?}, expected the base image"
                );
            }
            Some(pct(lat).p50)
        };

        let mut lat256 = Vec::with_capacity(self.args.seq_reads);
        for _ in 0..self.args.seq_reads {
            let b = self.rng.u64(0..=self.blocks - SEQ_BLOCKS);
            let t = Instant::now();
            let data = view.read(b, SEQ_BLOCKS).context("256 KiB read")?;
            lat256.push(t.elapsed());
            for (i, chunk) in data.chunks(BS).enumerate() {
                let blk = b + i as u64;
                check_block(chunk, blk, p, self.history.expected(blk, p))?;
            }
        }

        Ok(PointRow {
            records,
            kind,
            seq: p,
            interval,
            maps: view.maps_consulted(),
            replayed_records,
            replayed_blocks: view.replayed_blocks(),
            resolve: pct(resolve_t).p50,
            open: pct(open_t).p50,
            read4k: pct(lat),
            from_log: from_log as f64 * 100.0 / self.args.reads as f64,
            read4k_written,
            lookup,
            lookup_base,
            read256k: pct(lat256),
        })
    }
}

fn milestones(max: u64) -> Vec<u64> {
    let mut v = Vec::new();
    let mut m = 1000;
    while m < max {
        v.push(m);
        m *= 10;
    }
    v.push(max);
    v
}

fn read_to_string(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn machine(dir: &Path) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = read_to_string("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    out.push(("cores", format!("{cores} ({cpu})")));
    let mem_kib: u64 = read_to_string("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    out.push((
        "memory",
        format!(
            "{:.1} GiB (MemTotal {mem_kib} kB)",
            mem_kib as f64 / 1048576.0
        ),
    ));
    out.push((
        "kernel",
        read_to_string("/proc/sys/kernel/osrelease")
            .trim()
            .to_string(),
    ));
    let df = Command::new("df")
        .arg("-hT")
        .arg(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let line = df.lines().last().unwrap_or("").to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    let disk = if f.len() >= 7 {
        let dev = f[0];
        let name = dev.trim_start_matches("/dev/");
        let rot = [
            format!("/sys/class/block/{name}/queue/rotational"),
            format!("/sys/class/block/{name}/../queue/rotational"),
        ]
        .iter()
        .map(|p| read_to_string(p))
        .find(|s| !s.is_empty())
        .map(|s| match s.trim() {
            "0" => ", non-rotational",
            "1" => ", rotational",
            _ => "",
        })
        .unwrap_or("");
        format!(
            "{dev} ({}{rot}), {} size, {} free, mounted on {}",
            f[1], f[2], f[4], f[6]
        )
    } else {
        format!("unknown (df said {line:?})")
    };
    out.push(("disk", disk));
    out.push(("dir", dir.display().to_string()));
    let commit = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    out.push(("source", format!("git {commit} (as built)")));
    out.push(("date", format_time(now_ns())));
    out.push(("load average at start", loadavg()));
    out
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews timings.
fn loadavg() -> String {
    read_to_string("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            total += du(&e.path());
        } else {
            total += m.blocks() * 512;
        }
    }
    total
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("read_at: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let Some(args) = Args::parse()? else {
        print!("{USAGE}");
        return Ok(());
    };
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
    let parent =
        std::fs::canonicalize(&parent).with_context(|| format!("resolve {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("rewind-read-at-")
        .tempdir_in(&parent)
        .with_context(|| format!("make a temporary directory in {}", parent.display()))?;
    let primary = tmp.path().join("primary.img");
    let vault_dir = tmp.path().join("vault");
    std::fs::File::create(&primary)
        .and_then(|f| f.set_len(args.size))
        .with_context(|| format!("create sparse primary {}", primary.display()))?;

    let machine = machine(tmp.path());
    let cmdline: Vec<String> = std::env::args().collect();
    let mut seal = SealPolicy::default();
    if let Some(n) = args.seal_writes {
        seal.writes = n;
    }

    let t = Instant::now();
    let vault = Vault::create(
        &CreateOptions {
            primary: primary.clone(),
            vault: vault_dir.clone(),
            block_size: BS as u32,
            compression: Compression::None,
            seal,
        },
        &NoProgress,
    )
    .with_context(|| format!("create vault {}", vault_dir.display()))?;
    let create_time = t.elapsed();
    let blocks = vault.blocks();
    eprintln!(
        "vault created in {} ({} blocks); appending up to {} records",
        dur(create_time),
        blocks,
        args.max_records
    );

    let mut rng = fastrand::Rng::with_seed(args.seed);
    let gen = DataGen::new(&mut rng);
    let mut bench = Bench {
        args: &args,
        vault,
        blocks,
        history: History {
            per_block: vec![Vec::new(); usize::try_from(blocks)?],
        },
        rng,
    };

    let mut buf = vec![0u8; BS];
    let mut next_seq = 1u64;
    let mut appends = Vec::new();
    let mut points = Vec::new();
    let run_start = Instant::now();
    for &m in &milestones(args.max_records) {
        let sealed_count = |v: &Vault| v.intervals().iter().filter(|i| i.sealed).count();
        let sealed_before = sealed_count(&bench.vault);
        let mut flush_t = Vec::new();
        let mut max_write = Duration::ZERO;
        let mut slow_writes = Vec::new();
        let mut since_flush = 0;
        let start_seq = next_seq;
        let t = Instant::now();
        while next_seq < m {
            let b = bench.rng.u64(0..blocks);
            gen.fill(&mut buf, next_seq, b);
            let tw = Instant::now();
            let s = bench.vault.write(b, &buf).context("append a write")?;
            let wt = tw.elapsed();
            max_write = max_write.max(wt);
            if wt > Duration::from_millis(1) {
                slow_writes.push(wt);
            }
            ensure!(s == Seq(next_seq), "write got seq {s}, expected {next_seq}");
            bench.history.per_block[b as usize].push(next_seq);
            next_seq += 1;
            since_flush += 1;
            if since_flush == args.flush_every {
                let tf = Instant::now();
                bench.vault.flush().context("flush")?;
                flush_t.push(tf.elapsed());
                since_flush = 0;
            }
        }
        if since_flush > 0 {
            let tf = Instant::now();
            bench.vault.flush().context("flush")?;
            flush_t.push(tf.elapsed());
        }
        let time = t.elapsed();
        let seals = sealed_count(&bench.vault) - sealed_before;
        let name = format!("m{m}");
        let t = Instant::now();
        let snap = bench
            .vault
            .snapshot(&name, false)
            .with_context(|| format!("snapshot {name}"))?;
        let snapshot = t.elapsed();
        ensure!(
            snap.seq == Seq(m),
            "snapshot got seq {}, expected {m}",
            snap.seq
        );
        next_seq = m + 1;
        let max_flush = flush_t.iter().copied().max().unwrap_or_default();
        let row = AppendRow {
            to: m,
            writes: m - start_seq,
            time,
            flushes: flush_t.len() as u64,
            seals,
            max_write,
            slow_writes,
            flush: pct(flush_t),
            max_flush,
            snapshot,
        };
        eprintln!(
            "[{:>6.1}s] {} records: appended {} writes in {} ({:.0} records/s), {} seals; measuring",
            run_start.elapsed().as_secs_f64(),
            m,
            row.writes,
            dur(row.time),
            row.writes as f64 / row.time.as_secs_f64().max(1e-9),
            seals,
        );
        appends.push(row);

        // (b) a point that ends an interval: the snapshot just taken.
        points.push(bench.measure(m, "interval end (snapshot)", Point::Snapshot(name))?);
        // (a) the middle of the newest full sealed interval: the larger of the two newest
        // (the newest is usually cut short by the snapshot), so a partial replay happens.
        let sealed: Vec<(u64, u64)> = bench
            .vault
            .intervals()
            .iter()
            .filter(|i| i.sealed)
            .map(|i| (i.seq_from.0, i.seq_to.0))
            .collect();
        let full = sealed
            .iter()
            .rev()
            .take(2)
            .max_by_key(|(f, t)| t - f)
            .copied()
            .filter(|(f, t)| t - f >= 2);
        if let Some((f, t)) = full {
            let mid = f + (t - f) / 2;
            points.push(bench.measure(m, "mid sealed interval", Point::Seq(Seq(mid)))?);
            // The most a partial replay walks: the record before the interval's end.
            points.push(bench.measure(m, "interval end - 1", Point::Seq(Seq(t - 1)))?);
        }
        // (c) an old point.
        let old = 500.min(m / 2).max(1);
        points.push(bench.measure(m, "old (seq 500)", Point::Seq(Seq(old)))?);
    }
    let total_time = run_start.elapsed();
    let on_disk = du(&vault_dir);
    let load_end = loadavg();
    let intervals = bench.vault.intervals();

    // ---- report ----------------------------------------------------------------------
    let mut o = String::new();
    writeln!(o, "## read_at: read at a point vs history length")?;
    writeln!(o)?;
    writeln!(o, "command: `{}`", cmdline.join(" "))?;
    writeln!(o)?;
    for (k, v) in &machine {
        writeln!(o, "- {k}: {v}")?;
    }
    writeln!(o, "- load average at end: {load_end}")?;
    writeln!(
        o,
        "- volume: {} MiB sparse primary, {} blocks of 4 KiB; compression none; seal policy \
         {} ({} MiB / {} records / {} s); flush every {} writes",
        args.size >> 20,
        blocks,
        if seal == SealPolicy::default() {
            "default"
        } else {
            "CHANGED"
        },
        seal.bytes >> 20,
        seal.writes,
        seal.interval_ns / 1_000_000_000,
        args.flush_every
    )?;
    writeln!(
        o,
        "- vault create (base copy): {}; vault on disk at the end: {:.2} GiB; {} sealed intervals; whole run {}",
        dur(create_time),
        on_disk as f64 / f64::from(1u32 << 30),
        intervals.iter().filter(|i| i.sealed).count(),
        dur(total_time),
    )?;
    writeln!(
        o,
        "- per point: {} view opens (median shown), {} random 4 KiB reads, {} random 256 KiB reads; every read checked against a shadow of the writes",
        args.opens, args.reads, args.seq_reads
    )?;
    writeln!(o)?;
    writeln!(o, "### Append throughput (4 KiB random writes)")?;
    writeln!(o)?;
    writeln!(
        o,
        "| records | writes | time | records/s | MiB/s | flushes | flush p50 / p99 / max | seals | writes > 1 ms: n, p50, max | snapshot |"
    )?;
    writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let (mut tw, mut tt) = (0u64, Duration::ZERO);
    for a in &appends {
        let secs = a.time.as_secs_f64().max(1e-9);
        tw += a.writes;
        tt += a.time;
        writeln!(
            o,
            "| {} | {} | {} | {:.0} | {:.1} | {} | {} / {} / {} | {} | {}, {}, {} | {} |",
            count(a.to),
            a.writes,
            dur(a.time),
            a.writes as f64 / secs,
            (a.writes * BS as u64) as f64 / secs / 1048576.0,
            a.flushes,
            dur(a.flush.p50),
            dur(a.flush.p99),
            dur(a.max_flush),
            a.seals,
            a.slow_writes.len(),
            if a.slow_writes.is_empty() {
                "-".to_string()
            } else {
                dur(pct(a.slow_writes.clone()).p50)
            },
            dur(a.max_write),
            dur(a.snapshot),
        )?;
    }
    let secs = tt.as_secs_f64().max(1e-9);
    writeln!(
        o,
        "| **all** | {tw} | {} | {:.0} | {:.1} | | | | | |",
        dur(tt),
        tw as f64 / secs,
        (tw * BS as u64) as f64 / secs / 1048576.0,
    )?;
    writeln!(o)?;
    writeln!(o, "### Read at a point")?;
    writeln!(o)?;
    writeln!(
        o,
        "| records | point | seq | holding interval | maps consulted | replayed records / blocks | resolve | view open | 4 KiB random p50 / p99 | from log | 4 KiB written-block p50 / p99 | lookup written (maps checked) | lookup unwritten (all maps) | 256 KiB p50 / p99 |"
    )?;
    writeln!(
        o,
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for r in &points {
        writeln!(
            o,
            "| {} | {} | {} | {}..={} | {} | {} / {} | {} | {} | {} / {} | {:.0}% | {} | {} | {} | {} / {} |",
            count(r.records),
            r.kind,
            r.seq,
            r.interval.0,
            r.interval.1,
            r.maps,
            r.replayed_records,
            r.replayed_blocks,
            dur(r.resolve),
            dur(r.open),
            dur(r.read4k.p50),
            dur(r.read4k.p99),
            r.from_log,
            r.read4k_written.map_or("-".to_string(), |w| format!(
                "{} / {}",
                dur(w.p50),
                dur(w.p99)
            )),
            r.lookup
                .map_or("-".to_string(), |(t, n)| format!("{} ({n:.1})", dur(t))),
            r.lookup_base.map_or("-".to_string(), dur),
            dur(r.read256k.p50),
            dur(r.read256k.p99),
        )?;
    }
    writeln!(o)?;
    writeln!(
        o,
        "maps consulted: delta maps of the sealed intervals before the one holding the point. \
         replayed: records of the holding interval walked to build the partial map (0 when the \
         point ends an interval). resolve, view open: median of the opens (view open includes its \
         own resolve). 4 KiB random: blocks anywhere in the volume; from log: the share of them \
         answered from the write log rather than the base image. 4 KiB written-block: blocks \
         that were written at or before the point, so every read goes through the delta maps to \
         a log record. lookup written: median time to locate one written block through the \
         partial map and the delta maps (PointView::sources, no data read), and in brackets the \
         mean number of delta maps that lookup checks (newest first, until one has the block). \
         lookup unwritten: the median for blocks never written before the point, which check \
         every map of the chain and fall through to the base image. 256 KiB: 64 consecutive blocks from a random start. writes > 1 ms: \
         mostly the writes that sealed an interval inline."
    )?;
    print!("{o}");

    drop(bench);
    if args.keep {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}
