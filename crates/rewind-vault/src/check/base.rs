//! The base image against its per-block checksums (`base/base.img`, `base/base.sums`).
//! A version 2 `base.sums` is read a chunk at a time as the check walks the volume (a hole
//! of the file, a chunk of zero blocks, is not read); a version 1 file is read whole.

use std::path::Path;

use rewind_format::base_sums::{BaseSums, Chunk, Header, SumsLayout, HEADER_LEN};
use rewind_format::{names, Seq};
use roaring::RoaringTreemap;

use super::report::{Fault, Impact};
use super::source::{Opened, CHUNK};
use super::{Checker, NO_OPEN};
use crate::error::Corruption;

/// What the vault does with a damaged part of `base.sums` whose sums it can still read.
const KEPT: &str = "the vault opens without it: each base image block is checked against its own sum (those that do not match are listed as problems of their own)";
const WHAT: &str = "base image checksums";

/// The sums the base image is compared with.
pub(super) enum CheckSums {
    /// Version 1, read whole; `damaged`: its crc failed (a mismatch may be the sum's fault).
    Whole { sums: Vec<u32>, damaged: bool },
    /// Version 2: read a chunk at a time.
    Chunked { f: Opened, layout: SumsLayout },
}

/// The sums of one run of blocks: `None` every block has the zero block's sum.
struct Run<'s> {
    first: u64,
    end: u64,
    sums: Option<&'s [u32]>,
    /// The sums failed their crc: a mismatch is named at the sum.
    damaged: bool,
}

impl Run<'_> {
    fn sum(&self, b: u64, zero_sum: u32) -> Option<u32> {
        match self.sums {
            None => Some(zero_sum),
            Some(s) => s.get((b - self.first) as usize).copied(),
        }
    }
}

/// Damaged base blocks found: those whose sum is trusted, and those whose sum was damaged.
#[derive(Default)]
struct Bad {
    image: RoaringTreemap,
    sums: RoaringTreemap,
    unreadable: Vec<(u64, u64, Fault)>,
}

impl Checker<'_> {
    /// The base image against its per-block checksums. Holes are not read: a hole reads as
    /// zeroes, so its blocks' checksums must be the zero block's.
    pub(super) fn base(&mut self, m: &rewind_format::manifest::Manifest) {
        let bs = m.block_size;
        let blocks = m.volume_size / u64::from(bs);
        let Some((sums, _)) = self.base_sums(bs, Some(blocks)) else {
            return;
        };
        self.base_image(bs, m.volume_size, &sums, true);
    }

    /// Opens and checks the header of `base/base.sums` (of `blocks` blocks of `bs` bytes,
    /// when known; a version 1 file is read and checked whole). Returns the sums and the
    /// number of blocks they describe.
    pub(super) fn base_sums(&mut self, bs: u32, blocks: Option<u64>) -> Option<(CheckSums, u64)> {
        let path = self.dir.join(names::BASE_DIR).join(names::BASE_SUMS);
        let f = match self.open_named(&path, WHAT, Impact::Points(Vec::new())) {
            Ok(f) => f,
            Err(p) => {
                self.watch_all_base(p, blocks);
                return None;
            }
        };
        let fits = |h: &Header| h.block_size() == bs && blocks.is_none_or(|n| n == h.block_count());
        let mut head = [0u8; HEADER_LEN];
        let header = match self.src.read_at(&f, &mut head, 0) {
            Err(fault) => Err(fault),
            Ok(n) => match Header::decode(&head[..n]) {
                Ok(h) if fits(&h) => Ok(h),
                Ok(_) => {
                    Err(Corruption::Inconsistent("checksums do not describe this volume").into())
                }
                Err(e) => Err(Corruption::Decode(e).into()),
            },
        };
        let header = match header {
            Ok(h) => h,
            Err(fault) => {
                self.sums_unusable(&path, f.len, fault, blocks);
                return None;
            }
        };
        match header {
            Header::V1 { block_count, .. } => {
                let (fault, sums): (Fault, _) = match self.src.read_all(&f) {
                    Err(fault) => (fault, None),
                    Ok(raw) => match BaseSums::decode(&raw) {
                        Ok(s) if s.sums.len() as u64 == block_count => {
                            let sums = CheckSums::Whole {
                                sums: s.sums,
                                damaged: false,
                            };
                            return Some((sums, block_count));
                        }
                        Ok(_) => (
                            Corruption::Inconsistent("checksums do not describe this volume")
                                .into(),
                            None,
                        ),
                        // What the vault reads of it: its sums, when only its checksum failed.
                        Err(e) => (
                            Corruption::Decode(e).into(),
                            BaseSums::decode_unchecked(&raw)
                                .ok()
                                .filter(|s| s.sums.len() as u64 == block_count),
                        ),
                    },
                };
                match sums {
                    Some(s) => {
                        self.problem(&path, (0, f.len), WHAT.into(), fault, Impact::Nothing(KEPT));
                        let sums = CheckSums::Whole {
                            sums: s.sums,
                            damaged: true,
                        };
                        Some((sums, block_count))
                    }
                    None => {
                        self.sums_unusable(&path, f.len, fault, Some(block_count));
                        None
                    }
                }
            }
            Header::V2(layout) => {
                if f.len != layout.file_len() {
                    let fault = Corruption::Length {
                        expected: layout.file_len(),
                        actual: f.len,
                    }
                    .into();
                    self.sums_unusable(&path, f.len, fault, Some(layout.block_count));
                    return None;
                }
                Some((CheckSums::Chunked { f, layout }, layout.block_count))
            }
        }
    }

    /// No sum can be read: every read of a block from the base image fails, from seq 0
    /// until a record writes the block.
    fn sums_unusable(&mut self, path: &Path, len: u64, fault: Fault, blocks: Option<u64>) {
        let impact = Impact::Points(Vec::new());
        let p = self.problem(path, (0, len), WHAT.into(), fault, impact);
        self.watch_all_base(p, blocks);
    }

    /// Problem `p` breaks every read of a base image block (of `blocks`, when known), from
    /// seq 0 until a record writes the block.
    pub(super) fn watch_all_base(&mut self, p: usize, blocks: Option<u64>) {
        if let Some(n) = blocks {
            let mut all = RoaringTreemap::new();
            all.insert_range(0..n);
            self.tracker.watch(p, Seq::BASE, all);
        }
    }

    /// Reads every data region of `base/base.img` and compares each block with `sums`
    /// (a chunk of them at a time). `watch`: damaged blocks break the points that read
    /// them from the base.
    pub(super) fn base_image(&mut self, bs: u32, size: u64, sums: &CheckSums, watch: bool) {
        let path = self.dir.join(names::BASE_DIR).join(names::BASE_IMAGE);
        let Ok(f) = self.open_named(&path, "base image", NO_OPEN) else {
            return;
        };
        if f.len > size {
            self.note(
                &path,
                format!("{} bytes past the volume's end are not read", f.len - size),
            );
        }
        let mut bad = Bad::default();
        let end_block = size / u64::from(bs);
        match sums {
            CheckSums::Whole { sums, damaged } => {
                let run = Run {
                    first: 0,
                    end: end_block,
                    sums: Some(sums),
                    damaged: *damaged,
                };
                self.base_run(&f, bs, &run, &mut bad);
            }
            CheckSums::Chunked { f: sf, layout } => {
                let mut i = 0;
                while i < layout.chunks() && !self.src.cancelled() {
                    let (first, n) = layout.chunk_blocks_of(i);
                    let end = (first + n).min(end_block);
                    if let Some((sums, damaged)) = self.sums_chunk(sf, layout, i, watch) {
                        let run = Run {
                            first,
                            end,
                            sums: sums.as_deref(),
                            damaged,
                        };
                        self.base_run(&f, bs, &run, &mut bad);
                    }
                    i += 1;
                }
            }
        }
        let layout = match sums {
            CheckSums::Chunked { layout, .. } => Some(*layout),
            CheckSums::Whole { .. } => None,
        };
        self.base_problems(&path, bs, bad, layout, watch);
    }

    /// Chunk `i` of `base.sums`: its sums (`None`: a hole, all the zero block's) and
    /// whether they failed their crc (then a problem of their own). `None`: the chunk
    /// cannot be read, a problem that breaks every read of its blocks from the base.
    fn sums_chunk(
        &mut self,
        f: &Opened,
        layout: &SumsLayout,
        i: u64,
        watch: bool,
    ) -> Option<(Option<Vec<u32>>, bool)> {
        let at = layout.chunk_offset(i);
        let len = layout.chunk_len(i);
        if self.src.next_data(f, at, at + len as u64).is_none() {
            self.src.skipped(len as u64);
            return Some((None, false));
        }
        let mut buf = vec![0u8; len];
        let what = format!("{WHAT}, chunk {i}");
        let fault: Fault = match self.src.read_at(f, &mut buf, at) {
            Err(fault) => fault,
            Ok(got) => match layout.decode_chunk(i, &buf[..got]) {
                Ok(Chunk::Hole) => return Some((None, false)),
                Ok(Chunk::Sums(s)) => return Some((Some(s), false)),
                Err(e @ rewind_format::DecodeError::Checksum { .. }) => {
                    let fault = Corruption::Decode(e).into();
                    let impact = Impact::Nothing(KEPT);
                    self.problem(&f.path, (at, len as u64), what, fault, impact);
                    return Some((Some(layout.decode_chunk_unchecked(i, &buf)), true));
                }
                Err(e) => Corruption::Decode(e).into(),
            },
        };
        let impact = if watch {
            Impact::Points(Vec::new())
        } else {
            Impact::Unknown
        };
        let p = self.problem(&f.path, (at, len as u64), what, fault, impact);
        if watch {
            let (first, n) = layout.chunk_blocks_of(i);
            self.tracker
                .watch(p, Seq::BASE, (first..first + n).collect());
        }
        None
    }

    /// Blocks of `run` against their sums: holes of the image (not read) must have the
    /// zero block's sum, data is read and compared.
    fn base_run(&mut self, f: &Opened, bs: u32, run: &Run<'_>, bad: &mut Bad) {
        let bsz = u64::from(bs);
        let zero_sum = crc32c::crc32c(&vec![0u8; bs as usize]);
        let mut at = run.first;
        while at < run.end && !self.src.cancelled() {
            let (data_first, data_end) = match self.src.next_data(f, at * bsz, run.end * bsz) {
                Some((s, e)) => ((s / bsz).max(at), e.div_ceil(bsz).min(run.end)),
                None => (run.end, run.end),
            };
            if run.sums.is_some() {
                for b in at..data_first {
                    if run.sum(b, zero_sum) != Some(zero_sum) {
                        bad_block(bad, run, b);
                    }
                }
            }
            self.src.skipped((data_first - at) * bsz);
            let data_end = data_end.max(data_first + u64::from(data_first < run.end));
            if let Err((b, n, fault)) = self.base_data(f, bs, (data_first, data_end), run, bad) {
                bad.unreadable.push((b, n, fault));
            }
            at = data_end;
        }
    }

    /// Blocks `first..end` of the base image, read and compared with their checksums.
    fn base_data(
        &mut self,
        f: &Opened,
        bs: u32,
        (first, end): (u64, u64),
        run: &Run<'_>,
        bad: &mut Bad,
    ) -> Result<(), (u64, u64, Fault)> {
        let bsz = u64::from(bs);
        let zero_sum = crc32c::crc32c(&vec![0u8; bs as usize]);
        let per = (CHUNK as u64 / bsz).max(1);
        let mut buf = vec![0u8; (per.min(end.saturating_sub(first)) * bsz) as usize];
        let mut b = first;
        while b < end && !self.src.cancelled() {
            let n = per.min(end - b);
            let chunk = &mut buf[..(n * bsz) as usize];
            let got = self
                .src
                .read_at(f, chunk, b * bsz)
                .map_err(|fault| (b, n, fault))?;
            // Past the end of the file the image reads as zeroes (as the vault reads it).
            chunk[got..].fill(0);
            for (i, block) in chunk.chunks_exact(bs as usize).enumerate() {
                let blk = b + i as u64;
                if run.sum(blk, zero_sum) != Some(crc32c::crc32c(block)) {
                    bad_block(bad, run, blk);
                }
            }
            b += n;
        }
        Ok(())
    }

    /// One problem per run of damaged base blocks.
    fn base_problems(
        &mut self,
        path: &Path,
        bs: u32,
        bad: Bad,
        layout: Option<SumsLayout>,
        watch: bool,
    ) {
        let bsz = u64::from(bs);
        let impact = || {
            if watch {
                Impact::Points(Vec::new())
            } else {
                Impact::Unknown
            }
        };
        let sums_path = self.dir.join(names::BASE_DIR).join(names::BASE_SUMS);
        let sum_offset = |b| layout.map_or(BaseSums::offset_of(b), |l| l.sum_offset(b));
        let mut found = Vec::new();
        for (first, n) in super::runs(&bad.sums) {
            let what = format!("checksum of {}", blocks_text(first, n));
            let fault = Corruption::BaseSumDamaged { block: first }.into();
            let at = sum_offset(first);
            let p = self.problem(&sums_path, (at, n * 4), what, fault, impact());
            found.push((p, first, n));
        }
        for (first, n) in super::runs(&bad.image) {
            let fault = Corruption::BaseChecksum { block: first }.into();
            let what = blocks_text(first, n);
            let p = self.problem(path, (first * bsz, n * bsz), what, fault, impact());
            found.push((p, first, n));
        }
        for (first, n, fault) in bad.unreadable {
            let what = format!("base image blocks {first}..{}", first + n);
            let p = self.problem(path, (first * bsz, n * bsz), what, fault, impact());
            found.push((p, first, n));
        }
        if watch {
            for (p, first, n) in found {
                self.tracker
                    .watch(p, Seq::BASE, (first..first + n).collect());
            }
        }
    }
}

fn bad_block(bad: &mut Bad, run: &Run<'_>, b: u64) {
    if run.damaged {
        bad.sums.insert(b);
    } else {
        bad.image.insert(b);
    }
}

fn blocks_text(first: u64, n: u64) -> String {
    if n == 1 {
        format!("base image block {first}")
    } else {
        format!("base image blocks {first}..{}", first + n)
    }
}
