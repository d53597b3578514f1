//! Benchmark (a program, not a timed test): a vault of very many intervals (100,000 by
//! default), read at its newest point and at a sample of older ones, with the open files
//! counted (`/proc/self/fd`) and the readers' caches as [`Vault::cache_stats`] says.
//!
//! Sealing 100,000 intervals through the vault commits 100,000 manifests, each listing
//! every interval before it (~400 GB written in all), so this program writes the vault's
//! files itself with `rewind-format`, as the vault would have: interval `i` is one 4 KiB
//! write of block `i - 1` at seq `i`, its own segment and delta map; then one manifest.
//!
//! `cargo build --release -p rewind-bench && target/release/many_intervals [--intervals N]
//! [--segment-files N] [--map-bytes N] [--dir DIR]`

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rewind_format::compress::StoredAs;
use rewind_format::delta_map::{DeltaMap, Interval, Location};
use rewind_format::manifest::{Manifest, MapEntry, SegmentEntry};
use rewind_format::record::{self, NewRecord, RecordKind};
use rewind_format::segment::{self, SegmentHeader};
use rewind_format::{names, Generation, SegmentId};
use rewind_vault::{
    CacheLimits, Compression, CreateOptions, NoProgress, Point, SealPolicy, Seq, Vault,
};

const BS: usize = 4096;

fn data(seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    for (i, c) in b.chunks_mut(8).enumerate() {
        c.copy_from_slice(&(seq * 1000 + i as u64).to_le_bytes());
    }
    b
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn current_manifest(dir: &Path) -> Result<(PathBuf, Manifest)> {
    let mut best: Option<(Generation, PathBuf)> = None;
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(g) = names::parse_manifest(&name) {
            if best.as_ref().is_none_or(|(b, _)| g > *b) {
                best = Some((g, dir.join(&name)));
            }
        }
    }
    let (_, path) = best.context("no manifest")?;
    let m = Manifest::decode(&std::fs::read(&path)?).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((path, m))
}

/// Writes `n` one-write intervals into the (closed, empty) vault at `dir`.
fn fill(dir: &Path, n: u64) -> Result<()> {
    let (_, mut m) = current_manifest(dir)?;
    let log = dir.join(names::LOG_DIR);
    let maps = dir.join(names::MAPS_DIR);
    std::fs::remove_file(log.join(names::segment(SegmentId(Seq(1)))))?;
    let header = |first: u64| SegmentHeader {
        version: segment::VERSION,
        block_size: BS as u32,
        first_seq: Seq(first),
        vault_id: m.vault_id,
    };
    let mut buf = Vec::new();
    for seq in 1..=n {
        let id = SegmentId(Seq(seq));
        let h = header(seq);
        buf.clear();
        buf.extend_from_slice(&h.encode());
        let at = buf.len() as u64;
        let payload = data(seq);
        let ts = m.created_ns + seq as i64 * 1000;
        let r = NewRecord {
            kind: RecordKind::Write,
            seq: Seq(seq),
            timestamp_ns: ts,
            first_block: seq - 1,
            block_count: 1,
            durable_seq: Seq(seq - 1),
            app_consistent: false,
            continues: false,
        };
        record::encode(
            &mut buf,
            &r,
            &payload,
            BS as u32,
            StoredAs::Raw,
            h.binding(at).as_ref(),
        );
        std::fs::write(log.join(names::segment(id)), &buf)?;
        let interval = Interval {
            seq_from: Seq(seq),
            seq_to: Seq(seq),
            time_from_ns: ts,
            time_to_ns: ts,
        };
        let loc = Location::Block {
            segment: id,
            offset: at + record::HEADER_LEN as u64,
            crc: crc32c::crc32c(&payload),
        };
        let map = DeltaMap::new(interval, BS as u32, vec![(seq - 1, loc)]);
        std::fs::write(
            maps.join(names::delta_map(Seq(seq), Seq(seq))),
            map.encode(),
        )?;
        m.segments.push(SegmentEntry {
            id,
            last_seq: Seq(seq),
            length: buf.len() as u64,
            time_from_ns: ts,
            time_to_ns: ts,
        });
        m.maps.push(MapEntry {
            interval,
            flags: 0,
            retention_class: 0,
            blocks_changed: 1,
        });
    }
    std::fs::write(
        log.join(names::segment(SegmentId(Seq(n + 1)))),
        header(n + 1).encode(),
    )?;
    m.next_seq = Seq(n + 1);
    m.generation = Generation(m.generation.0 + 1);
    std::fs::write(dir.join(names::manifest(m.generation)), m.encode())?;
    Ok(())
}

fn main() -> Result<()> {
    let mut n = 100_000u64;
    let mut limits = CacheLimits::default();
    let mut dir = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--intervals" => n = v.parse()?,
            "--segment-files" => limits.segment_files = v.parse()?,
            "--map-bytes" => limits.map_bytes = v.parse()?,
            "--dir" => dir = Some(PathBuf::from(v)),
            _ => bail!("unknown flag {flag}"),
        }
    }
    let tmp = match &dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let primary = tmp.path().join("primary.img");
    // Twice the blocks the intervals write: the upper half no interval changed.
    std::fs::File::create(&primary)?.set_len(2 * n * BS as u64)?;
    let vdir = tmp.path().join("vault");
    let opts = CreateOptions {
        primary,
        vault: vdir.clone(),
        block_size: BS as u32,
        compression: Compression::None,
        seal: SealPolicy::default(),
    };
    Vault::create(&opts, &NoProgress)?.close()?;
    let t = Instant::now();
    fill(&vdir, n)?;
    println!("wrote {n} intervals in {:.1} s", t.elapsed().as_secs_f64());

    let fds_start = open_fds();
    let t = Instant::now();
    let vault = Vault::open_read_only(&vdir)?;
    vault.set_cache_limits(limits);
    println!(
        "opened (read-only) in {:.2} s; open files {fds_start} before",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let view = vault.view(&Point::Latest)?;
    view.read(0, 1)?;
    println!(
        "first read at now (loads {} map heads, builds the chain index) in {:.2} s",
        view.maps_consulted(),
        t.elapsed().as_secs_f64()
    );
    // Lookups of blocks no interval changed, then of changed ones, one block each.
    let sample = n.min(10_000);
    let t = Instant::now();
    for b in (0..sample).map(|i| n + i * n / sample) {
        if view.read(b, 1)? != vec![0u8; BS] {
            bail!("unchanged block {b} read wrong data");
        }
    }
    let unchanged_us = t.elapsed().as_secs_f64() * 1e6 / sample as f64;
    let t = Instant::now();
    for b in (0..sample).map(|i| i * n / sample) {
        if view.read(b, 1)? != data(b + 1) {
            bail!("block {b} at now read wrong data");
        }
    }
    let changed_us = t.elapsed().as_secs_f64() * 1e6 / sample as f64;
    println!(
        "read_at now, {n} maps: unchanged block {unchanged_us:.1} µs, changed block {changed_us:.1} µs per lookup ({sample} each); {:?}",
        vault.cache_stats()
    );
    let t = Instant::now();
    let mut most = open_fds();
    for b in 0..n {
        let got = view
            .read(b, 1)
            .with_context(|| format!("block {b} at now"))?;
        if got != data(b + 1) {
            bail!("block {b} at now read wrong data");
        }
        if b % 1000 == 0 {
            most = most.max(open_fds());
        }
    }
    most = most.max(open_fds());
    println!(
        "read all {n} blocks at now in {:.2} s; open files at most {most}, at the end {}; {:?}",
        t.elapsed().as_secs_f64(),
        open_fds(),
        vault.cache_stats()
    );
    drop(view);
    let t = Instant::now();
    let mut points = 0;
    for seq in (1..=n).step_by((n / 50).max(1) as usize) {
        let view = vault.view(&Point::Seq(Seq(seq)))?;
        for b in [0, seq / 2, seq - 1, seq.min(n - 1)] {
            let want = if b < seq { data(b + 1) } else { vec![0u8; BS] };
            if view.read(b, 1)? != want {
                bail!("block {b} at seq {seq} read wrong data");
            }
        }
        most = most.max(open_fds());
        points += 1;
    }
    println!(
        "{points} older points read in {:.2} s; open files at most {most}, at the end {}; {:?}",
        t.elapsed().as_secs_f64(),
        open_fds(),
        vault.cache_stats()
    );
    Ok(())
}
