//! What a power cut leaves: the durable state, plus some of what was not synced.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{DirOp, Entry, Inode, Sim, SECTOR};

/// How a power cut treats what was written but not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Each unsynced sector is kept or dropped at random, a random prefix of each
    /// directory's unsynced entry changes is kept, and a file whose size changed since its
    /// last sync ends at the old or the new size: any state a real power cut could leave.
    Random(u64),
    /// Only what completed syncs made durable: the harshest cut (a test that passes under
    /// it proves its syncs; one that fails without a sync shows the sync is needed).
    DurableOnly,
    /// Everything written survives, as after `kill -9` (the page cache lives on).
    Everything,
}

/// A small deterministic generator (xorshift64*), so that a cut is reproducible from its seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// Applies an entry change to a namespace.
pub(super) fn apply(names: &mut BTreeMap<PathBuf, Entry>, op: DirOp) {
    match op {
        DirOp::Link(p, ino) => {
            names.insert(p, Entry::File(ino));
        }
        DirOp::Unlink(p) => {
            names.remove(&p);
        }
        DirOp::Rename(from, to, ino) => {
            names.remove(&from);
            names.insert(to, Entry::File(ino));
        }
    }
}

impl Sim {
    /// The state a power cut now would leave, as a fresh machine (no faults, no locks, no
    /// counts).
    pub(super) fn power_cut(&self, how: Cut) -> Sim {
        self.power_cut_by(how, &|_| None)
    }

    /// [`Sim::power_cut`], with `per_file` choosing another cut for some files' data (by
    /// any name they have now).
    pub(super) fn power_cut_by(
        &self,
        how: Cut,
        per_file: &dyn Fn(&std::path::Path) -> Option<Cut>,
    ) -> Sim {
        let mut rng = Rng(match how {
            Cut::Random(seed) => seed ^ 0x9e37_79b9_7f4a_7c15,
            _ => 1,
        });
        let mut names = self.durable.clone();
        for ops in self.pending.values() {
            let keep = match how {
                Cut::DurableOnly => 0,
                Cut::Everything => ops.len(),
                Cut::Random(_) => rng.below(ops.len() as u64 + 1) as usize,
            };
            for op in &ops[..keep] {
                apply(&mut names, op.clone());
            }
        }
        let mut inodes = std::collections::HashMap::new();
        for (ino, inode) in &self.inodes {
            let own = self
                .names
                .iter()
                .find(|(_, e)| **e == Entry::File(*ino))
                .and_then(|(p, _)| per_file(p));
            let data = cut_file(inode, own.unwrap_or(how), &mut rng);
            inodes.insert(
                *ino,
                Inode {
                    durable: data.clone(),
                    data,
                    dirty: Default::default(),
                },
            );
        }
        Sim {
            inodes,
            next_ino: self.next_ino,
            durable: names.clone(),
            names,
            next_handle: self.next_handle,
            boot: self.boot + 1,
            ..Sim::default()
        }
    }

    /// A copy of a state taken by a cut, to start a new machine from.
    pub(super) fn fresh_copy(&self) -> Sim {
        Sim {
            inodes: self.inodes.clone(),
            next_ino: self.next_ino,
            names: self.names.clone(),
            durable: self.durable.clone(),
            next_handle: self.next_handle,
            boot: self.boot,
            ..Sim::default()
        }
    }
}

/// One file's bytes after a cut.
fn cut_file(inode: &Inode, how: Cut, rng: &mut Rng) -> Vec<u8> {
    let (now, durable) = (inode.data.len(), inode.durable.len());
    let len = match how {
        Cut::DurableOnly => durable,
        Cut::Everything => now,
        Cut::Random(_) if now != durable && rng.coin() => now,
        Cut::Random(_) => durable,
    };
    let mut out = inode.durable.clone();
    out.resize(len, 0);
    for &sector in &inode.dirty {
        let keep = match how {
            Cut::DurableOnly => false,
            Cut::Everything => true,
            Cut::Random(_) => rng.coin(),
        };
        if !keep {
            continue;
        }
        let a = (sector as usize * SECTOR).min(len);
        let b = ((sector as usize + 1) * SECTOR).min(len);
        for (i, byte) in out[a..b].iter_mut().enumerate() {
            *byte = inode.data.get(a + i).copied().unwrap_or(0);
        }
    }
    out
}
