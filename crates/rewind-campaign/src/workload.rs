//! Random host workloads through the live volume, kept in step with the model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rewind_engine::intercept::{LiveOptions, LiveVolume};
use rewind_engine::restore;
use rewind_engine::verify::{self, Target, VerifyOptions};
use rewind_storage::{SimStorage, Storage};
use rewind_vault::{NoProgress, Point, Vault};

use crate::model::Model;

/// Host writes at least this large have their primary write deferred in the campaigns
/// (the server's default is 256 KiB, which the workload's writes seldom reach), so that
/// power cuts and faults land among deferred writes too.
pub const WRITE_BEHIND_MIN: usize = 64 << 10;

/// The live volume's settings in the campaigns.
pub fn live_options() -> LiveOptions {
    LiveOptions {
        write_behind_min: Some(WRITE_BEHIND_MIN),
        ..LiveOptions::default()
    }
}

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// One host operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Write {
        offset: u64,
        len: u64,
        fua: bool,
    },
    Zero {
        offset: u64,
        len: u64,
        trim: bool,
    },
    Flush,
    Snapshot,
    Seal,
    Checkpoint,
    Tick,
    /// verify + sync: a correct vault never has a discrepancy to repair.
    Sync,
    /// An in-place restore to an earlier snapshot.
    Restore,
    /// A clean stop and a new start on the same storage.
    Reopen,
}

/// The paths of the volume on its storage.
#[derive(Debug, Clone)]
pub struct Layout {
    pub primary: PathBuf,
    pub vault: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            primary: PathBuf::from("/c/primary.img"),
            vault: PathBuf::from("/c/vault"),
        }
    }
}

/// Picks the next operation.
pub fn pick(rng: &mut Rng, size: u64, bs: u64) -> Op {
    let blocks = size / bs;
    let w = rng.below(100);
    let aligned = |rng: &mut Rng, max: u64| {
        let n = 1 + rng.below(max.min(blocks));
        let b = rng.below(blocks - n + 1);
        (b * bs, n * bs)
    };
    let unaligned = |rng: &mut Rng, max: u64| {
        let len = 1 + rng.below(max.min(size));
        let off = rng.below(size - len + 1);
        (off, len)
    };
    match w {
        0..=29 => {
            let (offset, len) = aligned(rng, 16);
            Op::Write {
                offset,
                len,
                fua: false,
            }
        }
        30..=44 => {
            let (offset, len) = unaligned(rng, 64 << 10);
            Op::Write {
                offset,
                len,
                fua: false,
            }
        }
        45..=49 => {
            let (offset, len) = aligned(rng, (320 << 10) / bs);
            Op::Write {
                offset,
                len,
                fua: false,
            }
        }
        50..=54 => {
            let (offset, len) = aligned(rng, 8);
            Op::Write {
                offset,
                len,
                fua: true,
            }
        }
        55..=62 => {
            let (offset, len) = if rng.below(2) == 0 {
                unaligned(rng, 128 << 10)
            } else {
                aligned(rng, 64)
            };
            Op::Zero {
                offset,
                len,
                trim: rng.below(2) == 0,
            }
        }
        63..=74 => Op::Flush,
        75..=79 => Op::Snapshot,
        80..=83 => Op::Seal,
        84..=87 => Op::Checkpoint,
        88..=90 => Op::Tick,
        91..=93 => Op::Sync,
        94..=96 => Op::Restore,
        _ => Op::Reopen,
    }
}

/// A volume under test: the storage, the open vault and live volume, the model.
pub struct Volume {
    pub fs: SimStorage,
    pub layout: Layout,
    pub live: Option<LiveVolume>,
    pub model: Model,
    pub snapshot_no: u32,
    /// How the live volume is opened (again).
    pub opts: LiveOptions,
}

/// Why a step failed (the workload stops; the caller decides whether it was the cut).
pub type StepError = String;

impl Volume {
    /// Creates the primary (random data in some blocks, holes elsewhere) and its vault,
    /// the live volume opened with [`live_options`].
    pub fn create(
        fs: SimStorage,
        layout: Layout,
        blocks: u64,
        bs: u32,
        seed: u64,
        seal: rewind_vault::SealPolicy,
    ) -> Result<Volume, StepError> {
        Self::create_with(fs, layout, blocks, bs, seed, seal, live_options())
    }

    /// [`Volume::create`] with the live volume opened with `opts`.
    pub fn create_with(
        fs: SimStorage,
        layout: Layout,
        blocks: u64,
        bs: u32,
        seed: u64,
        seal: rewind_vault::SealPolicy,
        live_opts: LiveOptions,
    ) -> Result<Volume, StepError> {
        let mut rng = Rng(seed ^ 0xba5e);
        let mut base = vec![0u8; (blocks * u64::from(bs)) as usize];
        for chunk in base.chunks_mut(bs as usize) {
            if rng.below(4) == 0 {
                rng.fill(chunk);
            }
        }
        let dir = layout.primary.parent().unwrap_or(Path::new("/"));
        fs.create_dir(dir).map_err(|e| e.to_string())?;
        fs.put(&layout.primary, &base).map_err(|e| e.to_string())?;
        let opts = rewind_vault::CreateOptions {
            primary: layout.primary.clone(),
            vault: layout.vault.clone(),
            block_size: bs,
            compression: rewind_vault::Compression::None,
            seal,
        };
        let storage: Arc<dyn Storage> = Arc::new(fs.clone());
        let vault = Vault::create_on(storage, &opts, &NoProgress).map_err(|e| e.to_string())?;
        let live = LiveVolume::open_with(&layout.primary, Arc::new(vault), live_opts)
            .map_err(|e| e.to_string())?;
        let mut v = Volume {
            fs,
            layout,
            live: Some(live),
            model: Model::new(bs as usize, base),
            snapshot_no: 0,
            opts: live_opts,
        };
        v.note_state();
        Ok(v)
    }

    pub fn live(&self) -> Result<&LiveVolume, StepError> {
        self.live
            .as_ref()
            .ok_or_else(|| "the volume is not open".to_string())
    }

    fn note_state(&mut self) {
        if let Some(l) = &self.live {
            let seq = l.vault().newest_seq().0;
            self.model.state(seq);
        }
    }

    /// Runs one operation; the model follows it (a write is a possible value of its blocks
    /// before it is sent, since a crash during it may keep it).
    pub fn step(&mut self, op: &Op, rng: &mut Rng) -> Result<(), StepError> {
        let e = |what: &str, err: &dyn std::fmt::Display| format!("{what}: {err}");
        match *op {
            Op::Write { offset, len, fua } => {
                let mut data = vec![0u8; len as usize];
                rng.fill(&mut data);
                self.model.write(offset, &data);
                self.live()?
                    .write(offset, &data, fua)
                    .map_err(|x| e("write", &x))?;
                if fua {
                    self.model.flushed();
                }
            }
            Op::Zero { offset, len, trim } => {
                self.model.zero(offset, len);
                self.live()?
                    .zero(offset, len, trim, false, false)
                    .map_err(|x| e("zero", &x))?;
            }
            Op::Flush => {
                self.live()?.flush().map_err(|x| e("flush", &x))?;
                self.model.flushed();
            }
            Op::Snapshot => {
                self.snapshot_no += 1;
                let name = format!("s{}", self.snapshot_no);
                let live = self.live()?;
                live.flush().map_err(|x| e("flush before snapshot", &x))?;
                live.vault()
                    .snapshot(&name, false)
                    .map_err(|x| e("snapshot", &x))?;
                self.model.flushed();
                self.model.snapshots.push((name, self.model.image.clone()));
            }
            Op::Seal => {
                self.live()?.vault().seal().map_err(|x| e("seal", &x))?;
            }
            Op::Checkpoint => self.live()?.checkpoint().map_err(|x| e("checkpoint", &x))?,
            Op::Tick => {
                let live = self.live()?;
                live.tick().map_err(|x| e("tick", &x))?;
                // What the server's background applier does when the host is quiet.
                live.apply_behind(256 << 10, false)
                    .map_err(|x| e("apply deferred writes", &x))?;
            }
            Op::Sync => self.sync()?,
            Op::Restore => self.restore(rng)?,
            Op::Reopen => self.reopen()?,
        }
        self.note_state();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StepError> {
        let live = self.live()?;
        let r = verify::sync(Target::Live(live), &VerifyOptions::default(), &NoProgress)
            .map_err(|x| format!("sync: {x}"))?;
        if !r.verify.compare.is_empty() {
            return Err(format!(
                "INVARIANT: sync found {} discrepant blocks (first {:?}) where the vault must equal the primary",
                r.verify.compare.len(),
                r.verify.compare.iter().next()
            ));
        }
        Ok(())
    }

    fn restore(&mut self, rng: &mut Rng) -> Result<(), StepError> {
        if self.model.snapshots.is_empty() {
            return Ok(());
        }
        let i = rng.below(self.model.snapshots.len() as u64) as usize;
        let (name, image) = self.model.snapshots[i].clone();
        let before = self.model.image.clone();
        // A crash during it may leave the state before it (nothing copied yet) or the
        // target: both are values each block may have.
        for (b, chunk) in image.chunks(self.model.bs).enumerate() {
            self.model
                .maybe
                .entry(b as u64)
                .or_default()
                .push(chunk.to_vec());
        }
        let live = self.live()?;
        let point: Point = name.parse().map_err(|x| format!("point: {x}"))?;
        let (plan, view) =
            restore::plan_in_place(live, &point).map_err(|x| format!("plan: {x}"))?;
        restore::execute_in_place(&plan, &view, live, &NoProgress, None)
            .map_err(|x| format!("restore in place: {x}"))?;
        self.model.set(image);
        if plan.blocks > 0 {
            self.model
                .snapshots
                .push((plan.undo_snapshot.clone(), before));
        }
        Ok(())
    }

    fn reopen(&mut self) -> Result<(), StepError> {
        let live = self.live.take().ok_or("the volume is not open")?;
        live.stop().map_err(|x| format!("stop: {x}"))?;
        let vault = live.vault().clone();
        drop(live);
        drop(vault);
        self.model.flushed();
        self.open_again()
    }

    /// Opens the vault and the live volume again on the same storage.
    pub fn open_again(&mut self) -> Result<(), StepError> {
        let storage: Arc<dyn Storage> = Arc::new(self.fs.clone());
        let vault = Vault::open_on(storage, &self.layout.vault, "campaign")
            .map_err(|x| format!("open vault: {x}"))?;
        let live = LiveVolume::open_with(&self.layout.primary, Arc::new(vault), self.opts)
            .map_err(|x| format!("open live volume: {x}"))?;
        self.live = Some(live);
        Ok(())
    }
}
