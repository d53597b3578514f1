//! Shared pieces of the vault's integration tests: a reference model of the volume (the
//! full image after every seq), deterministic test data, primary images with holes, and a
//! walker over segment files so that tests can find records to damage.

#![allow(dead_code, clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rewind_format::record::{RecordHeader, HEADER_LEN as REC_HEADER_LEN, MAX_WRITE_PAYLOAD};
use rewind_format::segment::HEADER_LEN as SEG_HEADER_LEN;
use rewind_vault::{
    BlockSource, Compression, CreateOptions, NoProgress, Point, SealPolicy, Seq, Vault, VaultError,
};

/// splitmix64: small, fast, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `blocks` blocks of test data from `seed`: a mix of random (incompressible), repetitive
/// (compressible) and all-zero blocks, so that every codec path is taken.
pub fn data(seed: u64, bs: usize, blocks: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = vec![0u8; bs * blocks];
    for block in out.chunks_mut(bs) {
        match rng.below(8) {
            0 => {}
            1..=3 => {
                let b = rng.next_u64() as u8 | 1;
                block.fill(b);
                // Not quite uniform: still compressible, not a single byte.
                let at = rng.below(bs as u64) as usize;
                block[at] = b.wrapping_add(1);
            }
            _ => rng.fill(block),
        }
    }
    out
}

/// Writes a primary image of `blocks` blocks: some blocks are holes (never written), some
/// are written zeroes, the rest data. Returns its path and content.
pub fn make_primary(dir: &Path, bs: usize, blocks: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let path = dir.join("primary.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len((bs * blocks) as u64).unwrap();
    let mut rng = Rng(seed ^ 0x5eed);
    let mut content = vec![0u8; bs * blocks];
    for b in 0..blocks {
        let block = &mut content[b * bs..(b + 1) * bs];
        match rng.below(4) {
            0 => {}                                               // hole
            1 => f.write_all_at(block, (b * bs) as u64).unwrap(), // written zeroes
            _ => {
                block.copy_from_slice(&data(rng.next_u64(), bs, 1));
                f.write_all_at(block, (b * bs) as u64).unwrap();
            }
        }
    }
    f.sync_all().unwrap();
    (path, content)
}

/// A fresh vault in `root/vault` over a new primary in `root`.
pub fn create(
    root: &Path,
    bs: u32,
    blocks: usize,
    seed: u64,
    compression: Compression,
    seal: SealPolicy,
) -> (Vault, Model) {
    let (primary, content) = make_primary(root, bs as usize, blocks, seed);
    let vault = Vault::create(
        &CreateOptions {
            primary,
            vault: root.join("vault"),
            block_size: bs,
            compression,
            seal,
        },
        &NoProgress,
    )
    .unwrap();
    (vault, Model::new(bs as usize, content))
}

/// A seal policy that never seals on its own (only markers, `seal` and `close` do).
pub fn no_auto_seal() -> SealPolicy {
    SealPolicy {
        bytes: 0,
        interval_ns: 0,
        writes: 0,
    }
}

/// The reference model: the whole volume after every seq (index = seq; 0 is the base).
#[derive(Debug, Clone)]
pub struct Model {
    pub bs: usize,
    pub images: Vec<Vec<u8>>,
    /// Snapshots in the order taken: name and seq.
    pub snaps: Vec<(String, u64)>,
    /// The blocks each record covers (first, count); index = seq, markers (0, 0).
    pub covers: Vec<(u64, u64)>,
    /// Whether each record is a write (its blocks come from the record) rather than a
    /// zero, trim or marker.
    pub is_write: Vec<bool>,
    /// Whether each record ends its host write (a point may fall right after it).
    pub ends_unit: Vec<bool>,
}

impl Model {
    pub fn new(bs: usize, base: Vec<u8>) -> Model {
        Model {
            bs,
            images: vec![base],
            snaps: Vec::new(),
            covers: vec![(0, 0)],
            is_write: vec![false],
            ends_unit: vec![true],
        }
    }

    /// The point `seq:N` names: the last host-write boundary at or before record N.
    pub fn boundary(&self, seq: u64) -> u64 {
        (0..=seq)
            .rev()
            .find(|s| self.ends_unit[*s as usize])
            .unwrap_or(0)
    }

    pub fn blocks(&self) -> u64 {
        (self.images[0].len() / self.bs) as u64
    }

    pub fn newest(&self) -> u64 {
        (self.images.len() - 1) as u64
    }

    /// The volume at `seq:N` (a seq inside a host write names the state before it).
    pub fn image(&self, seq: u64) -> &[u8] {
        &self.images[self.boundary(seq) as usize]
    }

    fn push(
        &mut self,
        cover: (u64, u64),
        write: bool,
        ends_unit: bool,
        f: impl FnOnce(&mut Vec<u8>),
    ) -> u64 {
        let mut next = self.images.last().unwrap().clone();
        f(&mut next);
        self.images.push(next);
        self.covers.push(cover);
        self.is_write.push(write);
        self.ends_unit.push(ends_unit);
        self.newest()
    }

    /// A write as the vault splits it: one record per `MAX_WRITE_PAYLOAD` bytes (at least
    /// one block). Returns the last seq.
    pub fn write(&mut self, first: u64, data: &[u8]) -> u64 {
        let bs = self.bs;
        let per_record = (MAX_WRITE_PAYLOAD / bs).max(1) * bs;
        let mut last = 0;
        let n = data.len().div_ceil(per_record);
        for (i, chunk) in data.chunks(per_record).enumerate() {
            let at = first as usize * bs + i * per_record;
            let cover = ((at / bs) as u64, (chunk.len() / bs) as u64);
            last = self.push(cover, true, i + 1 == n, |img| {
                img[at..at + chunk.len()].copy_from_slice(chunk)
            });
        }
        last
    }

    /// A zero or trim record.
    pub fn zero(&mut self, first: u64, count: u64) -> u64 {
        let bs = self.bs;
        self.push((first, count), false, true, |img| {
            img[first as usize * bs..(first + count) as usize * bs].fill(0);
        })
    }

    pub fn marker(&mut self, name: &str) -> u64 {
        let seq = self.push((0, 0), false, true, |_| {});
        self.snaps.push((name.to_string(), seq));
        seq
    }

    /// Forgets every seq after `seq` (records a crash cut off).
    pub fn truncate(&mut self, seq: u64) {
        self.images.truncate(seq as usize + 1);
        self.covers.truncate(seq as usize + 1);
        self.is_write.truncate(seq as usize + 1);
        self.ends_unit.truncate(seq as usize + 1);
        self.snaps.retain(|(_, s)| *s <= seq);
    }

    /// Where each block of the volume comes from at `seq`: the newest record at or before
    /// it that covers the block, else the base image.
    pub fn sources(&self, seq: u64) -> Vec<BlockSource> {
        let seq = self.boundary(seq);
        (0..self.blocks())
            .map(|b| {
                (1..=seq)
                    .rev()
                    .find(|s| {
                        let (first, count) = self.covers[*s as usize];
                        (first..first + count).contains(&b)
                    })
                    .map_or(BlockSource::Base, |s| {
                        if self.is_write[s as usize] {
                            BlockSource::Record
                        } else {
                            BlockSource::Zero
                        }
                    })
            })
            .collect()
    }

    /// Distinct blocks records `from..=to` cover (what their delta map lists).
    pub fn blocks_changed(&self, from: u64, to: u64) -> u64 {
        let mut set = std::collections::BTreeSet::new();
        for s in from..=to {
            let (first, count) = self.covers[s as usize];
            set.extend(first..first + count);
        }
        set.len() as u64
    }
}

/// Compares two images block by block; panics naming the first differing block.
pub fn assert_image(what: &str, bs: usize, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if got != want {
        let b = got
            .chunks(bs)
            .zip(want.chunks(bs))
            .position(|(g, w)| g != w)
            .unwrap();
        let g = &got[b * bs..(b + 1) * bs];
        let w = &want[b * bs..(b + 1) * bs];
        panic!(
            "{what}: block {b} differs: got {:02x?}.. want {:02x?}.. (got zero: {}, want zero: {})",
            &g[..8],
            &w[..8],
            g.iter().all(|x| *x == 0),
            w.iter().all(|x| *x == 0),
        );
    }
}

/// Reads the whole volume at `point`.
pub fn read_all(vault: &Vault, point: &Point) -> Result<Vec<u8>, VaultError> {
    vault.view(point)?.read(0, vault.blocks())
}

/// Checks the whole volume at `point` against `want`.
pub fn check_point(vault: &Vault, point: &Point, want: &[u8], what: &str) {
    let got = read_all(vault, point).unwrap_or_else(|e| panic!("{what}: {point}: {e}"));
    assert_image(
        &format!("{what} at {point}"),
        vault.block_size() as usize,
        &got,
        want,
    );
}

/// Checks every seq, every snapshot, `seq:0` and `now` against the model.
pub fn check_everything(vault: &Vault, model: &Model, what: &str) {
    assert_eq!(
        vault.info().newest_seq,
        Seq(model.newest()),
        "{what}: newest seq"
    );
    for s in 0..=model.newest() {
        check_point(vault, &Point::Seq(Seq(s)), model.image(s), what);
    }
    check_snapshots(vault, model, what);
    check_point(
        vault,
        &"now".parse().unwrap(),
        model.image(model.newest()),
        what,
    );
}

/// The vault lists the model's snapshots, and each reads back as the model says.
pub fn check_snapshots(vault: &Vault, model: &Model, what: &str) {
    let listed: Vec<(String, u64)> = vault
        .snapshots()
        .into_iter()
        .map(|s| (s.name, s.seq.0))
        .collect();
    assert_eq!(listed, model.snaps, "{what}: snapshots");
    for (name, seq) in &model.snaps {
        let p: Point = name.parse().unwrap();
        assert_eq!(vault.resolve(&p).unwrap().seq, Seq(*seq), "{what}: {name}");
        check_point(vault, &p, model.image(*seq), what);
    }
}

/// One record found in a segment file.
#[derive(Debug, Clone, Copy)]
pub struct FoundRecord {
    pub offset: u64,
    pub header: RecordHeader,
}

impl FoundRecord {
    pub fn len(&self) -> u64 {
        self.header.total_len()
    }
    pub fn payload_offset(&self) -> u64 {
        self.offset + REC_HEADER_LEN as u64
    }
}

/// The valid records of a segment file, in order, up to the first invalid byte.
pub fn segment_records(path: &Path, bs: u32) -> Vec<FoundRecord> {
    let bytes = std::fs::read(path).unwrap();
    let seg = rewind_format::segment::SegmentHeader::decode(&bytes).unwrap();
    let mut out = Vec::new();
    let mut pos = SEG_HEADER_LEN;
    while pos < bytes.len() {
        let bind = seg.binding(pos as u64);
        match rewind_format::record::decode(&bytes[pos..], bs, bind.as_ref()) {
            Ok((h, _)) => {
                out.push(FoundRecord {
                    offset: pos as u64,
                    header: h,
                });
                pos += h.total_len() as usize;
            }
            Err(_) => break,
        }
    }
    out
}

/// Every segment file of a vault, oldest first.
pub fn segment_files(vault_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(vault_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

/// Every delta map file of a vault, oldest first.
pub fn map_files(vault_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(vault_dir.join("maps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dmap"))
        .collect();
    v.sort();
    v
}

/// The current (highest generation) manifest file.
pub fn current_manifest(vault_dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(vault_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(rewind_format::names::parse_manifest)
                .is_some()
        })
        .collect();
    v.sort();
    v.pop().unwrap()
}

/// XORs the byte at `offset` of `path` with `mask` (non-zero).
pub fn flip(path: &Path, offset: u64, mask: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, offset).unwrap();
}

/// Overwrites `len` bytes at `offset` of `path`.
pub fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// The (path, offset) of a `Corrupted` error; panics on anything else.
pub fn corrupted_at(e: &VaultError) -> (&Path, u64) {
    match e {
        VaultError::Corrupted { path, offset, .. } => (path.as_path(), *offset),
        other => panic!("expected VaultError::Corrupted, got {other:?}"),
    }
}

/// A proptest config running `cases` cases, unless `PROPTEST_CASES` asks for another
/// number (for long soak runs).
pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    let mut c = proptest::test_runner::Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    c
}
