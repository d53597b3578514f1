//! The fault campaign: one fixed workload, and for every storage operation it does, a run
//! in which that operation fails with EIO or ENOSPC, once or from then on (a device that
//! died, a file system that stays full). In every run:
//!
//! - nothing panics;
//! - a host operation that fails says why as fits: ENOSPC where the disk is full;
//! - the live volume still reads (unless reads are what fails), and every block reads as a
//!   value the host gave it (its last flushed value or a later write; a failed write may
//!   have landed or not);
//! - after the fault clears the volume goes on (a write and a flush succeed and the vault's
//!   newest point equals the primary), or it refuses and a restart recovers with no manual
//!   step;
//! - then, after a stop and a start as `rewind serve` does it, every promise of the
//!   power-cut campaign holds (see [`crate::power_cut`]): every flushed write kept, the
//!   primary equal to the newest point, every acknowledged snapshot and sampled point
//!   exactly as the host had it, nothing suspect, a verify clean.

use std::path::PathBuf;

use rewind_storage::{Fault, FaultKind, FaultPlan, OpKind, SimStorage};

use crate::power_cut::{self, check_recovery};
use crate::workload::{pick, Layout, Op, Rng, Volume};

/// The fixed workload.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub seed: u64,
    /// Host operations.
    pub ops: usize,
    pub blocks: u64,
    pub block_size: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0xfa_0175,
            ops: 36,
            blocks: 256,
            block_size: 4096,
        }
    }
}

/// Where one run's fault falls: the `nth` operation of kind `op` on `path` (as the traced
/// workload did them), failing with `kind`, once or (`sticky`) from then on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index in the trace.
    pub index: usize,
    pub op: OpKind,
    pub path: PathBuf,
    pub nth: u64,
    pub kind: FaultKind,
    pub sticky: bool,
}

/// What one run saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// The fault hit an operation (a dry run's operation may not come again exactly so).
    pub hit: bool,
    /// The host operation that failed, if one did (and its error).
    pub failed: Option<(Op, String)>,
    /// After the fault cleared, the same live volume took a write and a flush.
    pub went_on: bool,
    /// It refused (or was gone): a restart recovered it.
    pub restarted: bool,
    pub points_checked: usize,
    pub snapshots_checked: usize,
}

fn seal_policy(rng: &mut Rng) -> rewind_vault::SealPolicy {
    rewind_vault::SealPolicy {
        bytes: 256 << 10,
        interval_ns: 0,
        writes: 6 + rng.below(8),
    }
}

fn volume(cfg: &Config, fs: &SimStorage) -> Result<(Volume, Rng), String> {
    let mut rng = Rng(cfg.seed);
    let seal = seal_policy(&mut rng);
    let vol = Volume::create(
        fs.clone(),
        Layout::default(),
        cfg.blocks,
        cfg.block_size,
        cfg.seed,
        seal,
    )?;
    Ok((vol, rng))
}

/// Runs the workload without faults, tracing its storage operations (after the volume is
/// created): the list the campaign injects faults into.
pub fn trace(cfg: &Config) -> Result<Vec<(OpKind, PathBuf)>, String> {
    let fs = SimStorage::new();
    let (mut vol, mut rng) = volume(cfg, &fs)?;
    fs.set_tracing(true);
    let size = cfg.blocks * u64::from(cfg.block_size);
    for _ in 0..cfg.ops {
        let op = pick(&mut rng, size, u64::from(cfg.block_size));
        vol.step(&op, &mut rng)
            .map_err(|e| format!("the workload failed without a fault: {op:?}: {e}"))?;
    }
    if let Some(l) = vol.live.take() {
        l.stop().map_err(|e| format!("stop without a fault: {e}"))?;
    }
    Ok(fs.trace())
}

/// Every fault the campaign injects into `trace`: each operation × {EIO, ENOSPC} × {once,
/// from then on}.
pub fn targets(trace: &[(OpKind, PathBuf)]) -> Vec<Target> {
    let mut seen = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (index, (op, path)) in trace.iter().enumerate() {
        let n = seen.entry((*op, path.clone())).or_insert(0u64);
        *n += 1;
        for kind in [FaultKind::Eio, FaultKind::Enospc] {
            for sticky in [false, true] {
                out.push(Target {
                    index,
                    op: *op,
                    path: path.clone(),
                    nth: *n,
                    kind,
                    sticky,
                });
            }
        }
    }
    out
}

fn fits(kind: FaultKind, op: &Op, err: &str) -> bool {
    let host_io = matches!(op, Op::Write { .. } | Op::Zero { .. } | Op::Flush);
    let no_space = err.to_ascii_lowercase().contains("no space");
    match kind {
        // A full disk must never look like a dead one to the host.
        FaultKind::Enospc => !host_io || no_space,
        FaultKind::Eio => !no_space,
    }
}

/// One run with the fault at `t`; `Err` says which promise broke.
pub fn run(cfg: &Config, t: &Target) -> Result<RunOutcome, String> {
    let ctx = |e: String| format!("fault {t:?}: {e}");
    let fs = SimStorage::new();
    let (mut vol, mut rng) = volume(cfg, &fs).map_err(ctx)?;
    let fault = if t.sticky {
        Fault::from_then_on(t.op, t.nth, t.kind)
    } else {
        Fault::once(t.op, t.nth, t.kind)
    };
    fs.set_faults(FaultPlan::new(vec![fault.on_path(&t.path)]));
    let mut out = RunOutcome::default();
    let size = cfg.blocks * u64::from(cfg.block_size);
    for _ in 0..cfg.ops {
        let op = pick(&mut rng, size, u64::from(cfg.block_size));
        if let Err(e) = vol.step(&op, &mut rng) {
            if !fits(t.kind, &op, &e) {
                return Err(ctx(format!(
                    "{op:?} failed with an error that does not fit the fault: {e}"
                )));
            }
            out.failed = Some((op, e));
            break;
        }
    }
    out.hit = fs.fault_hits() > 0;
    if out.failed.is_some() && !out.hit {
        return Err(ctx(format!(
            "{:?} failed with no fault hit",
            out.failed.as_ref().map(|f| &f.0)
        )));
    }
    // Reads keep working while the fault lasts (unless reads are what fails).
    if t.op != OpKind::Read {
        if let Some(live) = &vol.live {
            let mut buf = vec![0u8; size as usize];
            live.read(0, &mut buf)
                .map_err(|e| ctx(format!("reads stopped working: {e}")))?;
            vol.model.check_after_crash(&buf).map_err(|m| {
                ctx(format!(
                    "a read during the fault gave what no write did: {m:?}"
                ))
            })?;
        }
    }
    fs.set_faults(FaultPlan::default());
    let restoring = matches!(out.failed, Some((Op::Restore, _)));
    if out.failed.is_some() {
        go_on(&mut vol, &mut rng, restoring, &mut out).map_err(ctx)?;
    }
    if let Some(live) = vol.live.take() {
        // A refused stop (a poisoned vault) is a crash of the process: the restart repairs.
        let _ = live.stop();
    }
    let pc = power_cut::Config {
        seed: cfg.seed,
        ops: cfg.ops,
        blocks: cfg.blocks,
        block_size: cfg.block_size,
        points: 4,
    };
    let mut checked = power_cut::Outcome::default();
    check_recovery(
        &pc,
        fs,
        Layout::default(),
        vol.model,
        &mut rng,
        restoring,
        &mut checked,
    )
    .map_err(|e| ctx(format!("after the restart: {e}")))?;
    out.points_checked = checked.points_checked;
    out.snapshots_checked = checked.snapshots_checked;
    Ok(out)
}

/// After a failed host operation and the fault cleared: the live volume reads as the host
/// may expect and takes a write and a flush, or it refuses and is dropped (the restart in
/// [`run`] recovers it). An interrupted in-place restore is left for the restart to finish.
fn go_on(
    vol: &mut Volume,
    rng: &mut Rng,
    restoring: bool,
    out: &mut RunOutcome,
) -> Result<(), String> {
    let Some(live) = &vol.live else {
        out.restarted = true;
        return Ok(());
    };
    let size = vol.model.image.len();
    let mut now = vec![0u8; size];
    if let Err(e) = live.read(0, &mut now) {
        return Err(format!("reads fail after the fault cleared: {e}"));
    }
    vol.model
        .check_after_crash(&now)
        .map_err(|m| format!("after the fault a block reads as no write left it: {m:?}"))?;
    if restoring {
        out.restarted = true;
        drop(vol.live.take());
        return Ok(());
    }
    // What the host reads now is what it has (a failed write landed or not).
    vol.model.recovered(now);
    let bs = vol.model.bs as u64;
    let op = Op::Write {
        offset: rng.below(vol.model.blocks()) * bs,
        len: bs,
        fua: false,
    };
    let went = vol.step(&op, rng).and_then(|()| vol.step(&Op::Flush, rng));
    match went {
        Ok(()) => {
            out.went_on = true;
            let live = vol.live()?;
            let mut primary = vec![0u8; size];
            live.read(0, &mut primary)
                .map_err(|e| format!("read after going on: {e}"))?;
            let blocks = vol.model.blocks();
            let newest = live
                .vault()
                .read_at(&rewind_vault::Point::Latest, 0, blocks)
                .map_err(|e| format!("read the newest point after going on: {e}"))?;
            if primary != newest {
                return Err("went on after the fault, but the vault's newest point differs from the primary".into());
            }
            if primary != vol.model.image {
                return Err(
                    "went on after the fault, but the host reads other data than it wrote".into(),
                );
            }
        }
        Err(_) => {
            // It refuses until restarted (a poisoned vault, a volume that stopped): what
            // the host did is as before the refused write, which may or may not have landed.
            out.restarted = true;
            let mut primary = vec![0u8; size];
            if let Some(l) = &vol.live {
                if l.read(0, &mut primary).is_ok() {
                    vol.model.check_after_crash(&primary).map_err(|m| {
                        format!("a refused write left a block as no write did: {m:?}")
                    })?;
                }
            }
        }
    }
    Ok(())
}
