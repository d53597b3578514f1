//! The reference model: what the host wrote and what rewind promised about it.
//!
//! - `image`: the volume as the host sees it now (every acknowledged write applied).
//! - `durable`: the volume as of the last completed flush (or FUA write, or snapshot):
//!   what must survive any crash.
//! - `maybe`: per block written since then, every value it had after one of those writes:
//!   a crash may keep any of them, or the durable one (writes acknowledged but not flushed
//!   may be lost, one block at a time).
//! - `snapshots`: the image at each snapshot that was acknowledged.
//! - `states`: (seq, hash of the image) after each acknowledged host operation, to check
//!   every point the recovered vault still has.

use std::collections::BTreeMap;

/// The model of one volume.
#[derive(Debug, Clone)]
pub struct Model {
    pub bs: usize,
    pub image: Vec<u8>,
    pub durable: Vec<u8>,
    pub maybe: BTreeMap<u64, Vec<Vec<u8>>>,
    pub snapshots: Vec<(String, Vec<u8>)>,
    pub states: Vec<(u64, [u8; 32])>,
}

/// Where a block after a crash disagrees with every value the model allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub block: u64,
    pub first_bytes: Vec<u8>,
    pub durable_first_bytes: Vec<u8>,
    pub candidates: usize,
}

pub fn hash(image: &[u8]) -> [u8; 32] {
    *blake3::hash(image).as_bytes()
}

impl Model {
    pub fn new(bs: usize, base: Vec<u8>) -> Model {
        Model {
            bs,
            durable: base.clone(),
            image: base,
            maybe: BTreeMap::new(),
            snapshots: Vec::new(),
            states: Vec::new(),
        }
    }

    pub fn blocks(&self) -> u64 {
        (self.image.len() / self.bs) as u64
    }

    fn block(&self, b: u64) -> &[u8] {
        let at = b as usize * self.bs;
        &self.image[at..at + self.bs]
    }

    /// Applies an acknowledged write (or zero) of `data` at byte `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let at = offset as usize;
        self.image[at..at + data.len()].copy_from_slice(data);
        self.touched(offset, data.len() as u64);
    }

    /// Applies an acknowledged zero or trim of `len` bytes at `offset`.
    pub fn zero(&mut self, offset: u64, len: u64) {
        let at = offset as usize;
        self.image[at..at + len as usize].fill(0);
        self.touched(offset, len);
    }

    fn touched(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let bs = self.bs as u64;
        for b in offset / bs..(offset + len).div_ceil(bs) {
            let v = self.block(b).to_vec();
            self.maybe.entry(b).or_default().push(v);
        }
    }

    /// Everything acknowledged so far is durable (a flush, a FUA write, a snapshot).
    pub fn flushed(&mut self) {
        self.durable = self.image.clone();
        self.maybe.clear();
    }

    /// Replaces the whole image (a restore in place) and makes it durable.
    pub fn set(&mut self, image: Vec<u8>) {
        self.image = image;
        self.flushed();
    }

    /// Records the state after an operation that ended at `seq`.
    pub fn state(&mut self, seq: u64) {
        let h = hash(&self.image);
        if self.states.last().map(|s| s.0) != Some(seq) {
            self.states.push((seq, h));
        } else if let Some(last) = self.states.last_mut() {
            last.1 = h;
        }
    }

    /// Checks a volume after a crash: each 512-byte sector holds its durable value or the
    /// value it had after one of the writes since (a disk keeps or drops what was not
    /// flushed sector by sector, so a block written but not flushed may come back torn).
    /// Returns the first block that does not.
    pub fn check_after_crash(&self, got: &[u8]) -> Result<(), Mismatch> {
        const SECTOR: usize = 512;
        let bs = self.bs;
        for b in 0..self.blocks() {
            let at = b as usize * bs;
            let g = &got[at..at + bs];
            let d = &self.durable[at..at + bs];
            if g == d {
                continue;
            }
            let candidates = self.maybe.get(&b);
            let sector_ok = |i: usize| {
                let r = i * SECTOR..((i + 1) * SECTOR).min(bs);
                g[r.clone()] == d[r.clone()]
                    || candidates.is_some_and(|c| c.iter().any(|v| v[r.clone()] == g[r.clone()]))
            };
            if (0..bs.div_ceil(SECTOR)).all(sector_ok) {
                continue;
            }
            return Err(Mismatch {
                block: b,
                first_bytes: g[..8].to_vec(),
                durable_first_bytes: d[..8].to_vec(),
                candidates: candidates.map_or(0, Vec::len),
            });
        }
        Ok(())
    }

    /// After a crash and its recovery: what the volume holds now is the new truth, and it
    /// is durable.
    pub fn recovered(&mut self, image: Vec<u8>) {
        self.image = image;
        self.flushed();
    }
}
