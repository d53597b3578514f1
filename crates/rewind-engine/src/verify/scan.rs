//! The scan: worker threads take chunks of the selection in order (so the page cache's
//! readahead sees sequential reads), read a chunk of the primary and the same chunk of the
//! vault's view (each in one large read; the view batches runs of blocks from the base
//! image and whole records from the log), and compare region by region with slice
//! equality (memcmp). Only a region that differs is compared block by block.
//!
//! A chunk whose vault side cannot be read is retried region by region, and a failing
//! region block by block, so that exactly the unreadable blocks are reported, each with
//! its error, and every other block is still compared.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rewind_vault::{PointView, VaultError};
use roaring::RoaringTreemap;

use super::{Progress, Result, Target, VerifyError, VerifyOptions, VerifyReport};
use crate::intercept::ChangeTracker;

/// Bytes a worker reads per step unless told otherwise. Measured (BENCHMARKS.md): 1 MiB
/// keeps both buffers of a worker in its core's cache; 4 MiB was a third slower.
const DEFAULT_CHUNK: u64 = 1 << 20;
/// Workers unless told otherwise: one per CPU, at most this many.
const MAX_DEFAULT_THREADS: usize = 4;
/// Most bytes of a primary hole handed out as one piece of work.
const MAX_HOLE_SPAN: u64 = 64 << 20;

/// One piece of work: a byte range of whole regions.
#[derive(Debug, Clone, Copy)]
enum Item {
    /// Read and compare both sides.
    Chunk(u64, u64),
    /// The primary has a hole here: equal without reading if the vault side is known
    /// zero too, else compared chunk by chunk.
    Hole(u64, u64),
}

/// Where the selection stands.
enum Cursor {
    /// The whole volume, from `pos` on.
    Full { pos: u64 },
    /// Byte runs `(offset, len)` of selected regions, each at most a chunk.
    Runs { runs: Vec<(u64, u64)>, next: usize },
}

/// The selection, handed out in order: chunks of whole regions where the primary has
/// data, larger spans where it has holes. The primary's extents are looked up once per
/// extent (SEEK_DATA/SEEK_HOLE), not once per chunk.
struct Work<'a> {
    target: Target<'a>,
    cursor: Cursor,
    size: u64,
    chunk: u64,
    region: u64,
    /// The primary extent last looked up: [start, end), hole or not.
    extent: Option<(u64, u64, bool)>,
}

impl<'a> Work<'a> {
    fn new(target: Target<'a>, opts: &VerifyOptions, size: u64, chunk: u64) -> Result<(Self, u64)> {
        let r = opts.region_size;
        let mut work = Work {
            target,
            cursor: Cursor::Full { pos: 0 },
            size,
            chunk,
            region: r,
            extent: None,
        };
        let Some(only) = &opts.only_regions else {
            return Ok((work, size));
        };
        let regions = size.div_ceil(r);
        if let Some(max) = only.max().filter(|&m| m >= regions) {
            return Err(VerifyError::RegionOutOfRange {
                region: max,
                regions,
                region_size: r,
            });
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut total = 0;
        for region in only.iter() {
            let off = region * r;
            let len = r.min(size - off);
            total += len;
            match runs.last_mut() {
                Some((o, l)) if *o + *l == off && *l + len <= chunk => *l += len,
                _ => runs.push((off, len)),
            }
        }
        work.cursor = Cursor::Runs { runs, next: 0 };
        Ok((work, total))
    }

    /// The end of the primary extent holding `off`, and whether it is a hole.
    fn extent_at(&mut self, off: u64) -> (u64, bool) {
        if let Some((s, e, hole)) = self.extent {
            if s <= off && off < e {
                return (e, hole);
            }
        }
        let (len, hole) = self.target.primary_extent(off, MAX_HOLE_SPAN);
        self.extent = Some((off, off + len, hole));
        (off + len, hole)
    }

    fn next(&mut self) -> Option<Item> {
        let (off, len) = match &mut self.cursor {
            Cursor::Full { pos } => {
                let off = *pos;
                if off >= self.size {
                    return None;
                }
                (off, self.chunk.min(self.size - off))
            }
            Cursor::Runs { runs, next } => {
                let r = runs.get(*next).copied()?;
                *next += 1;
                r
            }
        };
        let (end, hole) = self.extent_at(off);
        let item = if hole && end >= off + len {
            // As much of the hole as whole regions allow (at least this piece).
            let span = match self.cursor {
                Cursor::Full { .. } => ((end - off) / self.region * self.region).max(len),
                Cursor::Runs { .. } => len,
            };
            Item::Hole(off, span)
        } else {
            Item::Chunk(off, len)
        };
        if let Cursor::Full { pos } = &mut self.cursor {
            *pos = match item {
                Item::Chunk(o, l) | Item::Hole(o, l) => o + l,
            };
        }
        Some(item)
    }
}

/// What one worker found.
#[derive(Default)]
struct Found {
    compare: RoaringTreemap,
    unreadable: BTreeMap<u64, String>,
    regions: u64,
    bytes: u64,
    sparse: u64,
}

impl Found {
    fn merge(&mut self, o: Found) {
        self.compare |= o.compare;
        self.unreadable.extend(o.unreadable);
        self.regions += o.regions;
        self.bytes += o.bytes;
        self.sparse += o.sparse;
    }
}

struct Ctx<'a> {
    target: Target<'a>,
    view: &'a PointView,
    opts: &'a VerifyOptions,
    progress: &'a dyn Progress,
    work: Mutex<Work<'a>>,
    block_size: u64,
    chunk: u64,
    stopped: AtomicBool,
}

/// Scans the selection of `opts`, comparing the primary with `view`. Host changes recorded
/// by `tracker` (the scan delta map) are subtracted from the compare delta map at the end.
pub(super) fn run(
    target: Target<'_>,
    view: &PointView,
    tracker: Option<&ChangeTracker>,
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let start = Instant::now();
    let size = target.size();
    let block_size = u64::from(view.block_size());
    let r = opts.region_size;
    let chunk = match opts.chunk_bytes {
        0 => DEFAULT_CHUNK,
        n => n,
    }
    .div_ceil(r)
    .max(1)
        * r;
    let (work, total) = Work::new(target, opts, size, chunk)?;
    // Load (and verify) the delta maps now: a damaged map is damage to the whole chain,
    // an error, not one discrepancy per block.
    view.sources(0, 1)?;
    let threads = match opts.threads {
        0 => std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(MAX_DEFAULT_THREADS),
        n => n,
    };
    let ctx = Ctx {
        target,
        view,
        opts,
        progress,
        work: Mutex::new(work),
        block_size,
        chunk,
        stopped: AtomicBool::new(false),
    };
    progress.start("scanning primary and vault", total);
    let results: Vec<Result<Found>> = std::thread::scope(|s| {
        let mut results = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for _ in 0..threads {
            match std::thread::Builder::new()
                .name("rewind-scan".into())
                .spawn_scoped(s, || worker(&ctx))
            {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // The ones started stop at their next step; the error is reported.
                    ctx.stopped.store(true, Ordering::Release);
                    results.push(Err(VerifyError::Spawn(e)));
                    break;
                }
            }
        }
        results.extend(
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(VerifyError::WorkerPanicked))),
        );
        results
    });
    progress.finish();
    let mut found = Found::default();
    for r in results {
        found.merge(r?);
    }
    let cancelled = ctx.stopped.load(Ordering::Relaxed);
    if tracker.is_some() {
        // A host write puts its data in the primary before it records its change (after
        // its log append, still holding the blocks' locks): a block read in between
        // differs from the vault but is not in the tracker yet. Taking the locks of the
        // blocks found different waits for such writes to finish recording.
        for (first, count) in super::runs(&found.compare) {
            target.with_blocks_locked(first, first + count, || ());
        }
    }
    let scan_delta = tracker.map(|t| t.blocks()).unwrap_or_default();
    found.compare -= &scan_delta;
    found.unreadable.retain(|b, _| !scan_delta.contains(*b));
    Ok(VerifyReport {
        point: view.point(),
        block_size: view.block_size(),
        region_size: r,
        volume_size: size,
        regions_scanned: found.regions,
        bytes_scanned: found.bytes,
        bytes_sparse: found.sparse,
        compare: found.compare,
        unreadable: found.unreadable,
        scan_changed: scan_delta.len(),
        elapsed: start.elapsed(),
        cancelled,
    })
}

fn worker(ctx: &Ctx<'_>) -> Result<Found> {
    let mut found = Found::default();
    let n = ctx.chunk as usize;
    let mut primary = vec![0u8; n];
    let mut vault = vec![0u8; n];
    loop {
        if ctx.opts.cancelled() {
            ctx.stopped.store(true, Ordering::Relaxed);
            break;
        }
        let next = ctx.work.lock().unwrap_or_else(|p| p.into_inner()).next();
        let (off, len) = match next {
            None => break,
            Some(Item::Chunk(off, len)) => (off, len),
            Some(Item::Hole(off, len)) => {
                // Sparse on both sides: equal without reading either.
                if ctx
                    .view
                    .reads_as_zero(off / ctx.block_size, len / ctx.block_size)?
                {
                    found.regions += len.div_ceil(ctx.opts.region_size);
                    found.bytes += len;
                    found.sparse += len;
                    ctx.progress.advance(len);
                    continue;
                }
                let mut at = off;
                while at < off + len {
                    let n = ctx.chunk.min(off + len - at);
                    chunk(ctx, at, n, &mut primary, &mut vault, &mut found)?;
                    at += n;
                }
                continue;
            }
        };
        chunk(ctx, off, len, &mut primary, &mut vault, &mut found)?;
    }
    Ok(found)
}

/// Reads a chunk of both sides and compares it.
fn chunk(
    ctx: &Ctx<'_>,
    off: u64,
    len: u64,
    primary: &mut [u8],
    vault: &mut [u8],
    found: &mut Found,
) -> Result<()> {
    let (p, v) = (&mut primary[..len as usize], &mut vault[..len as usize]);
    ctx.target.read_primary(off, p)?;
    match ctx.view.read_into(off / ctx.block_size, v) {
        Ok(()) => compare(ctx, off, p, v, found),
        Err(VaultError::Corrupted { .. }) => salvage(ctx, off, p, v, found)?,
        Err(e) => return Err(e.into()),
    }
    found.regions += len.div_ceil(ctx.opts.region_size);
    found.bytes += len;
    ctx.progress.advance(len);
    Ok(())
}

/// Compares a chunk read whole on both sides, region by region.
fn compare(ctx: &Ctx<'_>, off: u64, p: &[u8], v: &[u8], found: &mut Found) {
    let r = ctx.opts.region_size as usize;
    for (i, (pr, vr)) in p.chunks(r).zip(v.chunks(r)).enumerate() {
        if pr != vr {
            compare_blocks(ctx, off + (i * r) as u64, pr, vr, found);
        }
    }
}

/// Records every block of a region that differs.
fn compare_blocks(ctx: &Ctx<'_>, off: u64, p: &[u8], v: &[u8], found: &mut Found) {
    let bs = ctx.block_size as usize;
    let first = off / ctx.block_size;
    for (i, (pb, vb)) in p.chunks(bs).zip(v.chunks(bs)).enumerate() {
        if pb != vb {
            found.compare.insert(first + i as u64);
        }
    }
}

/// A chunk whose vault side did not read: region by region, then block by block.
fn salvage(ctx: &Ctx<'_>, off: u64, p: &[u8], v: &mut [u8], found: &mut Found) -> Result<()> {
    let r = ctx.opts.region_size as usize;
    let bs = ctx.block_size as usize;
    for (i, (pr, vr)) in p.chunks(r).zip(v.chunks_mut(r)).enumerate() {
        let roff = off + (i * r) as u64;
        match ctx.view.read_into(roff / ctx.block_size, vr) {
            Ok(()) => {
                if pr != vr {
                    compare_blocks(ctx, roff, pr, vr, found);
                }
                continue;
            }
            Err(VaultError::Corrupted { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let first = roff / ctx.block_size;
        for (j, (pb, vb)) in pr.chunks(bs).zip(vr.chunks_mut(bs)).enumerate() {
            let b = first + j as u64;
            match ctx.view.read_into(b, vb) {
                Ok(()) => {
                    if pb != vb {
                        found.compare.insert(b);
                    }
                }
                Err(e @ VaultError::Corrupted { .. }) => {
                    tracing::info!(block = b, error = %e, "vault block unreadable while verifying");
                    found.compare.insert(b);
                    found.unreadable.insert(b, e.to_string());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
