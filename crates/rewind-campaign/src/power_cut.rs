//! One power cut: a random workload on the crash backend, the power cut at a random
//! storage operation (in the middle of a write, a flush, a seal, a checkpoint, a sync, an
//! in-place restore, a reopen: wherever it falls, on any thread), then recovery as `rewind
//! serve` does it, then every promise checked:
//!
//! - every write covered by a completed flush, FUA write or snapshot is in the primary and
//!   in the vault's newest point; every other block holds its durable value or one it had
//!   after a later write (acknowledged but unflushed writes may be lost, block by block);
//! - the primary equals the vault's newest point;
//! - every acknowledged snapshot is listed and reads back as the model's image;
//! - every point the recovered log still holds reads back as the model's image at that
//!   point (a sample of them, and the newest);
//! - an interrupted in-place restore is finished to exactly its point;
//! - nothing is marked suspect, and a verify finds nothing.

use std::sync::Arc;

use rewind_engine::intercept::LiveVolume;
use rewind_engine::recovery;
use rewind_engine::verify::{self, Target, VerifyOptions};
use rewind_storage::{Cut, SimStorage, Storage};
use rewind_vault::{NoProgress, Point, Seq, Vault};

use crate::model::{hash, Model};
use crate::workload::{pick, Layout, Rng, Volume};

/// How one power-cut run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub seed: u64,
    /// Host operations before the power is cut at the latest.
    pub ops: usize,
    pub blocks: u64,
    pub block_size: u32,
    /// Points (besides the snapshots and the newest) read back after recovery.
    pub points: usize,
}

impl Config {
    pub fn new(seed: u64) -> Config {
        Config {
            seed,
            ops: 40,
            blocks: 512,
            block_size: 4096,
            points: 4,
        }
    }
}

/// What a run did and checked.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Host operations completed before the cut.
    pub ops: usize,
    /// Storage operations before the cut (where it fell).
    pub storage_ops: u64,
    /// The cut fell inside the workload (not after it).
    pub mid_workload: bool,
    pub points_checked: usize,
    pub snapshots_checked: usize,
    /// Blocks the recovery copied from the primary into the vault.
    pub fixup_blocks: u64,
    /// An interrupted in-place restore was finished by the recovery.
    pub restore_finished: bool,
}

/// Runs one power cut; `Err` says which promise broke (with the seed to replay it).
pub fn run(cfg: &Config) -> Result<Outcome, String> {
    let ctx = |e: String| format!("seed {}: {e}", cfg.seed);
    let mut rng = Rng(cfg.seed);
    let fs = SimStorage::new();
    let layout = Layout::default();
    let seal = rewind_vault::SealPolicy {
        bytes: 256 << 10,
        interval_ns: 0,
        writes: 8 + rng.below(24),
    };
    let mut rng = Rng(cfg.seed ^ 0xc0ffee);
    // A first run without a cut counts the storage operations of this workload; the cut
    // then falls at one of them, chosen at random.
    let total = dry_run(cfg, seal).map_err(ctx)?;
    let cut_at = 1 + rng.below(total.max(1));
    let mut rng = Rng(cfg.seed);
    let _ = rng.below(24);
    let mut vol = Volume::create(
        fs.clone(),
        layout.clone(),
        cfg.blocks,
        cfg.block_size,
        cfg.seed,
        seal,
    )
    .map_err(ctx)?;
    let created = fs.stats().total;
    fs.cut_after(
        cut_at.saturating_sub(created).max(1),
        Cut::Random(cfg.seed.rotate_left(17)),
    );
    let mut out = Outcome::default();
    let size = cfg.blocks * u64::from(cfg.block_size);
    let mut last_op = None;
    for _ in 0..cfg.ops {
        let op = pick(&mut rng, size, u64::from(cfg.block_size));
        if trace() {
            eprintln!("op {}: {op:?} (storage ops {})", out.ops, fs.stats().total);
        }
        match vol.step(&op, &mut rng) {
            Ok(()) => out.ops += 1,
            Err(e) if fs.is_cut() => {
                if trace() {
                    eprintln!("cut during {op:?}: {e}");
                }
                last_op = Some((op, e));
                break;
            }
            Err(e) => return Err(ctx(format!("{op:?} failed without a cut: {e}"))),
        }
    }
    out.mid_workload = fs.is_cut();
    out.storage_ops = fs.stats().total;
    let restoring = matches!(last_op, Some((crate::workload::Op::Restore, _)));
    // The machine is gone: whatever it held in memory with it.
    drop(vol.live.take());
    let after = match fs.after_cut() {
        Some(s) => s,
        None => fs.power_cut(Cut::Random(rng.next_u64())),
    };
    check_recovery(cfg, after, layout, vol.model, &mut rng, restoring, &mut out).map_err(ctx)?;
    Ok(out)
}

fn trace() -> bool {
    std::env::var_os("REWIND_CAMPAIGN_TRACE").is_some()
}

/// The same workload without a cut: how many storage operations it does.
fn dry_run(cfg: &Config, seal: rewind_vault::SealPolicy) -> Result<u64, String> {
    let fs = SimStorage::new();
    let mut rng = Rng(cfg.seed);
    let _ = rng.below(24);
    let mut vol = Volume::create(
        fs.clone(),
        Layout::default(),
        cfg.blocks,
        cfg.block_size,
        cfg.seed,
        seal,
    )?;
    let size = cfg.blocks * u64::from(cfg.block_size);
    for _ in 0..cfg.ops {
        let op = pick(&mut rng, size, u64::from(cfg.block_size));
        vol.step(&op, &mut rng)
            .map_err(|e| format!("dry run: {op:?} failed: {e}"))?;
    }
    if let Some(l) = vol.live.take() {
        l.stop().map_err(|e| format!("dry run: stop: {e}"))?;
    }
    Ok(fs.stats().total)
}

/// Recovers as `rewind serve` would and checks every promise (see the module doc).
pub(crate) fn check_recovery(
    cfg: &Config,
    fs: SimStorage,
    layout: Layout,
    mut model: Model,
    rng: &mut Rng,
    restoring: bool,
    out: &mut Outcome,
) -> Result<(), String> {
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let vault = Arc::new(
        Vault::open_on(storage, &layout.vault, "recovery")
            .map_err(|e| format!("open vault: {e}"))?,
    );
    // The records that survived: every point up to here must be what the host had.
    let tail = vault.newest_seq().0;
    if trace() {
        let i = vault.info();
        eprintln!(
            "recovered: generation {}, newest seq {}, durable {}, snapshots {:?}, intents {:?}, files {:?}",
            i.generation,
            i.newest_seq,
            i.durable_seq,
            vault.snapshots().iter().map(|s| (s.name.clone(), s.seq.0)).collect::<Vec<_>>(),
            vault.intents(),
            fs.list(&layout.vault.join("log")).unwrap_or_default()
        );
    }
    let live = LiveVolume::open_with(
        &layout.primary,
        vault.clone(),
        crate::workload::live_options(),
    )
    .map_err(|e| format!("open the live volume: {e}"))?;
    let report = recovery::recover(&live, &NoProgress, None, &mut |_, _| {})
        .map_err(|e| format!("recover: {e}"))?;
    out.fixup_blocks = report.fixup_blocks;
    out.restore_finished = report.restore.is_some();
    let blocks = cfg.blocks;
    let mut primary = vec![0u8; model.image.len()];
    live.read(0, &mut primary)
        .map_err(|e| format!("read live: {e}"))?;
    let newest = vault
        .read_at(&Point::Latest, 0, blocks)
        .map_err(|e| format!("read the newest point: {e}"))?;
    if primary != newest {
        let bs = cfg.block_size as usize;
        let differ: Vec<usize> = (0..blocks as usize)
            .filter(|b| primary[b * bs..(b + 1) * bs] != newest[b * bs..(b + 1) * bs])
            .collect();
        return Err(format!(
            "the primary differs from the vault's newest point after recovery: blocks {:?} (recovery: {} regions compared, {} fix-ups; tail seq {tail})",
            &differ[..differ.len().min(16)],
            report.regions,
            report.fixup_blocks
        ));
    }
    if let Some((plan, _)) = &report.restore {
        let target = vault
            .read_at(&Point::Seq(plan.point.seq), 0, blocks)
            .map_err(|e| format!("read the restore's point: {e}"))?;
        if primary != target {
            return Err("the finished in-place restore is not at its point".into());
        }
    } else if !restoring {
        model.check_after_crash(&primary).map_err(|m| {
            format!("a flushed write is lost or a block holds what no write gave it: {m:?}")
        })?;
    } else {
        model
            .check_after_crash(&primary)
            .map_err(|m| format!("after a cut during an in-place restore: {m:?}"))?;
    }
    check_points(&vault, &model, tail, blocks, cfg.points, rng, out)?;
    if !vault.suspects().is_empty() {
        return Err(format!("marked suspect: {:?}", vault.suspects()));
    }
    let r = verify::verify(Target::Live(&live), &VerifyOptions::default(), &NoProgress)
        .map_err(|e| format!("verify: {e}"))?;
    if !r.compare.is_empty() {
        return Err(format!(
            "verify after recovery: {} discrepant blocks",
            r.compare.len()
        ));
    }
    model.recovered(primary);
    live.stop()
        .map_err(|e| format!("stop after recovery: {e}"))?;
    Ok(())
}

/// The snapshots and a sample of the points up to `tail` read back as the model says.
fn check_points(
    vault: &Vault,
    model: &Model,
    tail: u64,
    blocks: u64,
    sample: usize,
    rng: &mut Rng,
    out: &mut Outcome,
) -> Result<(), String> {
    let listed = vault.snapshots();
    for (name, image) in &model.snapshots {
        if !listed.iter().any(|s| &s.name == name) {
            return Err(format!("snapshot {name} was acknowledged and is gone"));
        }
        let p: Point = name.parse().map_err(|e| format!("{e}"))?;
        let got = vault
            .read_at(&p, 0, blocks)
            .map_err(|e| format!("read snapshot {name}: {e}"))?;
        if &got != image {
            return Err(format!("snapshot {name} does not read back as it was"));
        }
        out.snapshots_checked += 1;
    }
    let kept: Vec<&(u64, [u8; 32])> = model.states.iter().filter(|s| s.0 <= tail).collect();
    let mut picks: Vec<&(u64, [u8; 32])> = (0..sample)
        .filter_map(|_| kept.get(rng.below(kept.len() as u64) as usize).copied())
        .collect();
    picks.extend(kept.last().copied());
    for (seq, want) in picks {
        let got = vault
            .read_at(&Point::Seq(Seq(*seq)), 0, blocks)
            .map_err(|e| format!("read seq:{seq}: {e}"))?;
        if hash(&got) != *want {
            return Err(format!("seq:{seq} does not read back as the host had it"));
        }
        out.points_checked += 1;
    }
    Ok(())
}
