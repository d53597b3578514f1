//! Verify and sync against damage made behind the server's back: the primary written
//! directly, a base image block and a log record payload flipped. Verify must find exactly
//! the damaged blocks (never one the host wrote meanwhile), sync must repair them while a
//! writer keeps writing, suspect marks must land on exactly the maps that gave the vault
//! its copy of them, and every point must still read what a reference model says.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rewind_engine::intercept::LiveVolume;
use rewind_engine::verify::{self, OfflineVolume, Target, VerifyOptions};
use rewind_format::delta_map::{FLAG_FIXUP, FLAG_SUSPECT};
use rewind_vault::{
    Compression, CreateOptions, NoProgress, Point, SealPolicy, Seq, Vault, SUSPECT_DIFFERS,
    SUSPECT_UNREADABLE,
};
use roaring::RoaringTreemap;

const BS: u64 = 4096;
/// 4 blocks per region: small regions, so that "exactly those regions" is a sharp test.
const REGION: u64 = 4 * BS;

/// xorshift: deterministic data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn block(&mut self) -> Vec<u8> {
        (0..BS / 8)
            .flat_map(|_| self.next().to_le_bytes())
            .collect()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    primary: PathBuf,
    vault_dir: PathBuf,
    /// What the host wrote: the volume as the vault should have it.
    model: Vec<u8>,
}

/// A primary of `blocks` blocks, random data in two thirds of them, and its vault. The
/// vault seals only on snapshots (and sync), so every interval is known.
fn setup(blocks: u64, seed: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let primary = dir.path().join("primary.img");
    let mut rng = Rng(seed | 1);
    let mut model = vec![0u8; (blocks * BS) as usize];
    for b in 0..blocks {
        if b % 3 != 0 {
            model[(b * BS) as usize..((b + 1) * BS) as usize].copy_from_slice(&rng.block());
        }
    }
    std::fs::write(&primary, &model).unwrap();
    let vault_dir = dir.path().join("vault");
    Vault::create(
        &CreateOptions {
            primary: primary.clone(),
            vault: vault_dir.clone(),
            block_size: BS as u32,
            compression: Compression::None,
            seal: SealPolicy {
                bytes: 0,
                interval_ns: 0,
                writes: 0,
            },
        },
        &NoProgress,
    )
    .unwrap()
    .close()
    .unwrap();
    Setup {
        _dir: dir,
        primary,
        vault_dir,
        model,
    }
}

impl Setup {
    fn live(&self) -> Arc<LiveVolume> {
        let vault = Arc::new(Vault::open(&self.vault_dir).unwrap());
        Arc::new(LiveVolume::open(&self.primary, vault).unwrap())
    }

    fn write(&mut self, v: &LiveVolume, block: u64, data: &[u8]) {
        v.write(block * BS, data, false).unwrap();
        let at = (block * BS) as usize;
        self.model[at..at + data.len()].copy_from_slice(data);
    }

    /// Damages blocks of the primary behind the server's back. Returns their new content.
    fn corrupt_primary(&self, blocks: &[u64]) -> BTreeMap<u64, Vec<u8>> {
        let f = OpenOptions::new().write(true).open(&self.primary).unwrap();
        let mut rng = Rng(0xbad ^ blocks.len() as u64);
        let mut out = BTreeMap::new();
        for &b in blocks {
            let data = rng.block();
            f.write_all_at(&data, b * BS).unwrap();
            out.insert(b, data);
        }
        f.sync_all().unwrap();
        out
    }

    fn read_primary(&self) -> Vec<u8> {
        std::fs::read(&self.primary).unwrap()
    }
}

fn opts() -> VerifyOptions {
    VerifyOptions {
        region_size: REGION,
        // Small chunks and two workers, so that a small volume still takes many steps.
        chunk_bytes: 8 * REGION,
        threads: 2,
        ..VerifyOptions::default()
    }
}

fn set(blocks: &[u64]) -> RoaringTreemap {
    blocks.iter().copied().collect()
}

fn offline_verify(s: &Setup) -> verify::VerifyReport {
    let vault = Arc::new(Vault::open_read_only(&s.vault_dir).unwrap());
    let vol = OfflineVolume::open(&s.primary, vault).unwrap();
    verify::verify(Target::Offline(&vol), &opts(), &NoProgress).unwrap()
}

#[test]
fn identical_volumes_verify_clean_everywhere_the_data_comes_from() {
    let mut s = setup(512, 1);
    let v = s.live();
    // Data from the base image, from sealed maps, from the open interval, zeroes, trims.
    for b in (0..512).step_by(7) {
        let data = Rng(b + 1).block();
        s.write(&v, b, &data);
    }
    v.vault().snapshot("a", false).unwrap();
    s.write(&v, 40, &vec![9u8; 40 * BS as usize]);
    v.zero(100 * BS, 20 * BS, true, false, false).unwrap();
    v.zero(200 * BS, 3 * BS, false, false, false).unwrap();
    let r = verify::verify(Target::Live(&v), &opts(), &NoProgress).unwrap();
    assert!(r.is_clean(), "{:?}", r.compare);
    assert_eq!(r.bytes_scanned, 512 * BS);
    assert_eq!(r.regions_scanned, 128);
    assert_eq!(r.point.seq, v.vault().info().newest_seq);
}

#[test]
fn verify_finds_exactly_the_primary_blocks_damaged_behind_the_servers_back() {
    let mut s = setup(1024, 2);
    let v = s.live();
    for b in [5u64, 6, 300, 301, 302, 900] {
        let data = Rng(b).block();
        s.write(&v, b, &data);
    }
    v.vault().snapshot("s", false).unwrap();
    s.write(&v, 600, &vec![1u8; BS as usize]);
    v.flush().unwrap();
    // From the base (17), a sealed map (301), the open interval (600), and two in one
    // region (1020, 1023: the last region).
    let bad = [17u64, 301, 600, 1020, 1023];
    s.corrupt_primary(&bad);
    let online = verify::verify(Target::Live(&v), &opts(), &NoProgress).unwrap();
    assert_eq!(online.compare, set(&bad));
    assert!(online.unreadable.is_empty());
    assert_eq!(
        online.ranges(),
        vec![
            (4 * REGION, REGION),
            (75 * REGION, REGION),
            (150 * REGION, REGION),
            (255 * REGION, REGION)
        ]
    );
    drop(v);
    let offline = offline_verify(&s);
    assert_eq!(offline.compare, set(&bad));
    // Only some regions, as a dirty region log asks: the others are not read.
    let mut o = opts();
    o.only_regions = Some(set(&[4, 5, 255]));
    let vault = Arc::new(Vault::open_read_only(&s.vault_dir).unwrap());
    let vol = OfflineVolume::open(&s.primary, vault).unwrap();
    let some = verify::verify(Target::Offline(&vol), &o, &NoProgress).unwrap();
    assert_eq!(some.compare, set(&[17, 1020, 1023]));
    assert_eq!(some.bytes_scanned, 3 * REGION);
    o.only_regions = Some(set(&[256]));
    assert!(matches!(
        verify::verify(Target::Offline(&vol), &o, &NoProgress),
        Err(verify::VerifyError::RegionOutOfRange { region: 256, .. })
    ));
}

/// Offset of the first payload byte of the write record covering `block` in a sealed
/// segment, found by walking the segment's records.
fn record_payload_offset(vault_dir: &Path, block: u64) -> (PathBuf, u64) {
    use rewind_format::record::{RecordHeader, HEADER_LEN};
    use rewind_format::segment::HEADER_LEN as SEG_HEADER_LEN;
    let mut segs: Vec<PathBuf> = std::fs::read_dir(vault_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    for seg in segs {
        let bytes = std::fs::read(&seg).unwrap();
        let mut pos = SEG_HEADER_LEN;
        while pos + HEADER_LEN <= bytes.len() {
            let h = RecordHeader::decode(&bytes[pos..], BS as u32).unwrap();
            if h.kind.carries_data()
                && (h.first_block..h.first_block + u64::from(h.block_count)).contains(&block)
            {
                let at = pos + HEADER_LEN + ((block - h.first_block) * BS) as usize;
                return (seg, at as u64);
            }
            pos += h.total_len() as usize;
        }
    }
    panic!("no record holds block {block}");
}

fn flip(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, offset).unwrap();
}

#[test]
fn damaged_vault_blocks_are_discrepancies_named_unreadable_and_sync_repairs_them() {
    let mut s = setup(256, 3);
    let v = s.live();
    s.write(&v, 50, &vec![5u8; 2 * BS as usize]);
    v.vault().snapshot("before", false).unwrap();
    s.write(&v, 70, &vec![6u8; BS as usize]);
    v.vault().snapshot("after", false).unwrap();
    drop(v);
    // A base image block (block 2 has data) and the payload of the record holding 51.
    flip(&s.vault_dir.join("base/base.img"), 2 * BS + 100);
    let (seg, at) = record_payload_offset(&s.vault_dir, 51);
    flip(&seg, at + 7);

    let r = offline_verify(&s);
    // Blocks of uncompressed records carry checksums of their own (in the delta maps):
    // a flipped byte in 51's data makes 51 unreadable, not its record neighbour 50.
    assert_eq!(
        r.compare,
        set(&[2, 51]),
        "the damaged block alone is unreadable"
    );
    assert_eq!(
        r.unreadable.keys().copied().collect::<Vec<_>>(),
        vec![2, 51]
    );
    for (b, why) in &r.unreadable {
        assert!(why.contains("vault corrupted"), "block {b}: {why}");
    }

    // Sync (offline, the writer) copies the primary over them and marks the sources.
    let vault = Arc::new(Vault::open(&s.vault_dir).unwrap());
    let vol = OfflineVolume::open(&s.primary, vault.clone()).unwrap();
    let rep = verify::sync(Target::Offline(&vol), &opts(), &NoProgress).unwrap();
    assert_eq!(rep.fixup_blocks, 2);
    let marks: Vec<_> = rep
        .suspect
        .iter()
        .map(|m| (m.interval, m.blocks.iter().collect::<Vec<_>>(), m.reasons))
        .collect();
    let before = vault.resolve(&"before".parse().unwrap()).unwrap().seq;
    assert_eq!(
        marks,
        vec![
            (Some((Seq(1), before)), vec![51], SUSPECT_UNREADABLE),
            (None, vec![2], SUSPECT_UNREADABLE),
        ]
    );
    let now = vault.read_at(&Point::Latest, 0, 256).unwrap();
    assert!(now == s.read_primary(), "the live point reads the primary");
    let again = verify::verify(Target::Offline(&vol), &opts(), &NoProgress).unwrap();
    assert!(again.is_clean());
    // Restoring "after" still meets the damaged block; reading it is suspect for 51
    // (from the suspect map) and 2 (from the suspect base).
    let view = vault.view(&"after".parse().unwrap()).unwrap();
    let reads = vault.suspect_reads(&view).unwrap();
    let got: Vec<_> = reads
        .iter()
        .map(|r| (r.interval, r.blocks.iter().collect::<Vec<_>>()))
        .collect();
    assert_eq!(
        got,
        vec![(Some((Seq(1), before)), vec![51]), (None, vec![2])]
    );
}

/// The sequential reference-model test: every seq before the sync reads what the host had
/// written by then, and the sync changes no past point; after it the live point is the
/// primary, and suspect marks sit on exactly the maps that last wrote each damaged block.
#[test]
fn sync_repairs_the_live_point_keeps_history_and_marks_exactly_the_sources() {
    let mut s = setup(256, 4);
    let v = s.live();
    let mut at_seq: Vec<Vec<u8>> = vec![s.model.clone()];
    let mut rng = Rng(44);
    let mut write = |s: &mut Setup, v: &LiveVolume, b: u64, rng: &mut Rng| {
        let data = rng.block();
        s.write(v, b, &data);
        at_seq.push(s.model.clone());
        assert_eq!(v.vault().info().newest_seq, Seq(at_seq.len() as u64 - 1));
    };
    // Interval 1: blocks 10, 11, 12. Interval 2: 11, 20. Interval 3: 12. Then open: 30.
    for b in [10, 11, 12] {
        write(&mut s, &v, b, &mut rng);
    }
    v.vault().seal_now().unwrap();
    for b in [11, 20] {
        write(&mut s, &v, b, &mut rng);
    }
    v.vault().seal_now().unwrap();
    write(&mut s, &v, 12, &mut rng);
    v.vault().seal_now().unwrap();
    write(&mut s, &v, 30, &mut rng);
    let history = at_seq.len() as u64;
    v.flush().unwrap();
    // 10 -> interval 1, 11 -> interval 2, 12 and 13 (never written) -> 3 and base, 30 ->
    // the open interval (sealed by the sync, so interval 4).
    let bad = [10u64, 11, 12, 13, 30];
    let damage = s.corrupt_primary(&bad);
    let rep = verify::sync(Target::Live(&v), &opts(), &NoProgress).unwrap();
    assert_eq!(rep.verify.compare, set(&bad));
    let got: Vec<_> = rep
        .suspect
        .iter()
        .map(|m| {
            (
                m.interval.map(|(a, b)| (a.0, b.0)),
                m.blocks.iter().collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Some((7, 7)), vec![30]),
            (Some((6, 6)), vec![12]),
            (Some((4, 5)), vec![11]),
            (Some((1, 3)), vec![10]),
            (None, vec![13]),
        ]
    );
    assert!(rep.suspect.iter().all(|m| m.reasons == SUSPECT_DIFFERS));
    assert_eq!(rep.fixup_blocks, 5);
    assert_eq!(rep.host_changed, 0);
    let vault = v.vault();
    // The manifest: suspect flags on exactly those maps, fix-up on the last interval.
    let chain = vault.chain();
    let flags: Vec<(u64, u16)> = chain
        .iter()
        .map(|e| (e.interval.seq_from.0, e.flags))
        .collect();
    assert_eq!(
        flags,
        vec![
            (1, FLAG_SUSPECT),
            (4, FLAG_SUSPECT),
            (6, FLAG_SUSPECT),
            (7, FLAG_SUSPECT),
            (8, FLAG_FIXUP)
        ]
    );
    assert_eq!(rep.fixup_intervals.len(), 1);
    assert_eq!(rep.fixup_intervals[0].flags, FLAG_FIXUP);
    // History is unchanged: every seq before the sync reads the model.
    for seq in 0..history {
        let got = vault.read_at(&Point::Seq(Seq(seq)), 0, 256).unwrap();
        assert!(got == at_seq[seq as usize], "seq {seq} changed");
    }
    // After it, the live point is the primary (the model with the damage in it).
    let mut want = s.model.clone();
    for (b, d) in &damage {
        want[(b * BS) as usize..((b + 1) * BS) as usize].copy_from_slice(d);
    }
    assert!(s.read_primary() == want);
    assert!(vault.read_at(&Point::Latest, 0, 256).unwrap() == want);
    // And every point of the fix-up interval: seq 8 repairs 10..=13 (one record), 9 block 30.
    assert_eq!(rep.fixup_records, vec![(Seq(8), Seq(9))]);
    assert_eq!(vault.info().newest_seq, Seq(9));
    let mut at8 = s.model.clone();
    for b in 10..=13u64 {
        at8[(b * BS) as usize..((b + 1) * BS) as usize].copy_from_slice(&damage[&b]);
    }
    assert!(
        vault.read_at(&Point::Seq(Seq(8)), 0, 256).unwrap() == at8,
        "seq 8"
    );
    assert!(
        vault.read_at(&Point::Seq(Seq(9)), 0, 256).unwrap() == want,
        "seq 9"
    );
    assert!(verify::verify(Target::Live(&v), &opts(), &NoProgress)
        .unwrap()
        .is_clean());
    // Suspect reads: a point reads a suspect block only from the map (or base) marked for
    // it. Seq 3 (end of interval 1) reads 10 from interval 1 and 13 from the base; 11 and
    // 12 it reads from interval 1 too, but their suspect copies came later.
    let reads_at = |seq: u64| -> Vec<(Option<u64>, Vec<u64>)> {
        let view = vault.view(&Point::Seq(Seq(seq))).unwrap();
        vault
            .suspect_reads(&view)
            .unwrap()
            .iter()
            .map(|r| (r.interval.map(|i| i.0 .0), r.blocks.iter().collect()))
            .collect()
    };
    assert_eq!(reads_at(0), vec![(None, vec![13])]);
    assert_eq!(reads_at(3), vec![(Some(1), vec![10]), (None, vec![13])]);
    assert_eq!(
        reads_at(5),
        vec![(Some(4), vec![11]), (Some(1), vec![10]), (None, vec![13])]
    );
    assert_eq!(
        reads_at(7),
        vec![
            (Some(7), vec![30]),
            (Some(6), vec![12]),
            (Some(4), vec![11]),
            (Some(1), vec![10]),
            (None, vec![13])
        ]
    );
    let newest = vault.info().newest_seq.0;
    assert_eq!(
        reads_at(newest),
        vec![],
        "the fix-ups replaced every suspect block"
    );
    // The marks survive a reopen (they are in the manifest).
    drop(v);
    let ro = Vault::open_read_only(&s.vault_dir).unwrap();
    assert_eq!(ro.suspects().len(), 5);
    assert_eq!(
        ro.suspects()
            .iter()
            .filter(|e| e.interval.is_none())
            .count(),
        1
    );
}

/// Random histories (writes, zeroes, trims, snapshots, seals) checked against a reference
/// model that keeps the volume after every seq and which blocks each record covered: after
/// damaging random primary blocks and syncing, every earlier point still reads the model,
/// the newest reads the primary, the suspect marks are exactly "the newest interval that
/// covered each damaged block, else the base", and every point's suspect reads are exactly
/// the damaged blocks it reads from a marked interval (or the base).
/// Suspect blocks of one map (or the base image): (interval, blocks).
type Marked = (Option<(Seq, Seq)>, Vec<u64>);

#[test]
fn random_histories_sync_against_a_reference_model() {
    const BLOCKS: u64 = 64;
    for seed in 1..=12u64 {
        let mut s = setup(BLOCKS, seed * 31);
        let v = s.live();
        let mut rng = Rng(seed * 7 + 1);
        // images[seq]: the volume after seq; covers[seq]: blocks record seq changed.
        let mut images = vec![s.model.clone()];
        // Seq 0 is the base image: it covers nothing.
        let mut covers: Vec<std::ops::Range<u64>> = std::iter::once(0..0).collect();
        for i in 0..60u64 {
            let first = rng.below(BLOCKS);
            let n = 1 + rng.below(8).min(BLOCKS - first - 1);
            let (off, len) = (first * BS, n * BS);
            let mut cover = first..first + n;
            match rng.below(20) {
                0..=13 => {
                    let data: Vec<u8> = (0..n).flat_map(|_| rng.block()).collect();
                    s.write(&v, first, &data);
                }
                14 | 15 => {
                    v.zero(off, len, false, false, false).unwrap();
                    s.model[off as usize..(off + len) as usize].fill(0);
                }
                16 | 17 => {
                    v.zero(off, len, true, false, false).unwrap();
                    s.model[off as usize..(off + len) as usize].fill(0);
                }
                18 => {
                    v.vault().snapshot(&format!("s{i}"), false).unwrap();
                    cover = 0..0;
                }
                _ => {
                    v.vault().seal_now().unwrap();
                    continue;
                }
            }
            images.push(s.model.clone());
            covers.push(cover);
            assert_eq!(v.vault().info().newest_seq, Seq(images.len() as u64 - 1));
        }
        let history = images.len() as u64 - 1;
        v.flush().unwrap();
        let mut bad: Vec<u64> = (0..1 + rng.below(6)).map(|_| rng.below(BLOCKS)).collect();
        bad.sort_unstable();
        bad.dedup();
        s.corrupt_primary(&bad);
        let rep = verify::sync(Target::Live(&v), &opts(), &NoProgress).unwrap();
        let what = format!("seed {seed}");
        assert_eq!(rep.verify.compare, set(&bad), "{what}");
        let vault = v.vault();
        for seq in 0..=history {
            let got = vault.read_at(&Point::Seq(Seq(seq)), 0, BLOCKS).unwrap();
            assert!(got == images[seq as usize], "{what}: seq {seq}");
        }
        assert!(vault.read_at(&Point::Latest, 0, BLOCKS).unwrap() == s.read_primary());
        // The fix-ups: one record per run of damaged blocks, in block order, right after
        // the history (sync sealed it first; nothing else wrote).
        let mut fix_runs: Vec<std::ops::Range<u64>> = Vec::new();
        for &b in &bad {
            match fix_runs.last_mut() {
                Some(r) if r.end == b => r.end += 1,
                _ => fix_runs.push(b..b + 1),
            }
        }
        let n = fix_runs.len() as u64;
        assert_eq!(
            rep.fixup_records,
            vec![(Seq(history + 1), Seq(history + n))],
            "{what}"
        );
        covers.extend(fix_runs);
        // The newest record at or before `p` covering `b`.
        let writer = |b: u64, p: u64| (1..=p).rev().find(|&q| covers[q as usize].contains(&b));
        let chain = vault.chain();
        let interval_of = |q: u64| {
            chain
                .iter()
                .find(|e| e.interval.seq_from.0 <= q && q <= e.interval.seq_to.0)
                .map(|e| (e.interval.seq_from, e.interval.seq_to))
                .unwrap()
        };
        let mut want: Vec<Marked> = Vec::new();
        for &b in &bad {
            let m = writer(b, history).map(interval_of);
            match want.iter_mut().find(|(i, _)| *i == m) {
                Some((_, bs)) => bs.push(b),
                None => want.push((m, vec![b])),
            }
        }
        // Marks come newest map first, the base last.
        want.sort_by_key(|(i, _)| std::cmp::Reverse(i.map_or(0, |(f, _)| f.0)));
        let got: Vec<Marked> = rep
            .suspect
            .iter()
            .map(|m| (m.interval, m.blocks.iter().collect()))
            .collect();
        assert_eq!(got, want, "{what}: suspect marks");
        for p in 0..=vault.info().newest_seq.0 {
            let view = vault.view(&Point::Seq(Seq(p))).unwrap();
            let mut expect: Vec<Marked> = Vec::new();
            for (m, blocks) in &want {
                let reads: Vec<u64> = blocks
                    .iter()
                    .copied()
                    .filter(|&b| match (m, writer(b, p)) {
                        (None, w) => w.is_none(),
                        (Some((f, t)), Some(q)) => {
                            // A point inside the interval counts it once it replayed a
                            // record of the block (the suspect one or an earlier one).
                            f.0 <= q && q <= t.0
                        }
                        (Some(_), None) => false,
                    })
                    .collect();
                if !reads.is_empty() {
                    expect.push((*m, reads));
                }
            }
            let got: Vec<Marked> = vault
                .suspect_reads(&view)
                .unwrap()
                .into_iter()
                .map(|r| (r.interval, r.blocks.iter().collect()))
                .collect();
            // suspect_reads lists entries in manifest order, which is the marks' order.
            assert_eq!(got, expect, "{what}: suspect reads at seq {p}");
        }
    }
}

/// Verify and sync while a writer keeps writing random blocks: those must never be
/// reported, the damaged ones always are, and afterwards the live point is the primary.
#[test]
fn sync_while_a_writer_keeps_writing_reports_only_the_damage() {
    let mut s = setup(2048, 5);
    let v = s.live();
    for b in (0..2048).step_by(13) {
        let data = Rng(b + 7).block();
        s.write(&v, b, &data);
    }
    v.vault().snapshot("before", false).unwrap();
    v.flush().unwrap();
    // The writer writes blocks 1024.. ; the damage is below.
    let bad: Vec<u64> = vec![3, 100, 101, 513, 777, 1000];
    s.corrupt_primary(&bad);
    let stop = Arc::new(AtomicBool::new(false));
    let written = std::thread::scope(|sc| {
        // A failed assertion below must stop the writer too (the scope waits for it).
        let _stop = StopOnDrop(stop.clone());
        let writer = {
            let v = v.clone();
            let stop = stop.clone();
            sc.spawn(move || {
                let mut rng = Rng(99);
                let mut written = RoaringTreemap::new();
                let mut i = 0u64;
                while (!stop.load(Ordering::Relaxed) || i < 200) && i < 1_000_000 {
                    let b = 1024 + rng.below(1024);
                    let n = 1 + rng.below(4).min(2047 - b);
                    let data = vec![(i % 251) as u8 + 1; (n * BS) as usize];
                    v.write(b * BS, &data, i.is_multiple_of(17)).unwrap();
                    written.insert_range(b..b + n);
                    i += 1;
                }
                written
            })
        };
        let mut o = opts();
        o.chunk_bytes = REGION;
        let r1 = verify::verify(Target::Live(&v), &o, &NoProgress).unwrap();
        assert_eq!(r1.compare, set(&bad), "verify with writes in flight");
        let rep = verify::sync(Target::Live(&v), &o, &NoProgress).unwrap();
        assert_eq!(rep.verify.compare, set(&bad), "sync's scan");
        assert_eq!(rep.fixup_blocks, bad.len() as u64);
        assert!(rep.fixup_map_blocks >= bad.len() as u64);
        let r2 = verify::verify(Target::Live(&v), &o, &NoProgress).unwrap();
        assert!(r2.is_clean(), "after sync: {:?}", r2.compare);
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    assert!(written.len() > 10, "the writer wrote while we scanned");
    v.flush().unwrap();
    let blocks = v.size() / BS;
    let now = v.vault().read_at(&Point::Latest, 0, blocks).unwrap();
    assert!(now == s.read_primary(), "live point == primary");
    // The snapshot before the damage still reads what the host wrote then.
    let before = v
        .vault()
        .read_at(&"before".parse().unwrap(), 0, blocks)
        .unwrap();
    assert!(before == s.model, "history unchanged");
    let fixups: Vec<_> = v
        .vault()
        .intervals()
        .into_iter()
        .filter(|i| i.flags & FLAG_FIXUP != 0)
        .collect();
    assert!(!fixups.is_empty());
}

/// The same with a writer that also overwrites the damaged blocks while they are scanned
/// and copied: a damaged block the host rewrote is healed by the write itself, so it may
/// or may not be reported, but nothing outside the damage ever is, every damaged block the
/// host did not touch is, and afterwards the live point is the primary.
#[test]
fn a_writer_over_the_damaged_blocks_never_makes_sync_report_other_blocks() {
    let mut s = setup(2048, 6);
    let v = s.live();
    for b in (0..2048).step_by(7) {
        let data = Rng(b + 3).block();
        s.write(&v, b, &data);
    }
    v.flush().unwrap();
    let bad: Vec<u64> = vec![2, 3, 4, 700, 1500, 1501, 2047];
    s.corrupt_primary(&bad);
    let stop = Arc::new(AtomicBool::new(false));
    let (r1, rep, written) = std::thread::scope(|sc| {
        let _stop = StopOnDrop(stop.clone());
        let writer = {
            let v = v.clone();
            let stop = stop.clone();
            let bad = bad.clone();
            sc.spawn(move || {
                let mut rng = Rng(5);
                let mut written = RoaringTreemap::new();
                let mut i = 0u64;
                while (!stop.load(Ordering::Relaxed) || i < 200) && i < 1_000_000 {
                    // Every fourth write lands on a damaged block.
                    let b = if i.is_multiple_of(4) {
                        bad[rng.below(bad.len() as u64) as usize]
                    } else {
                        rng.below(2048)
                    };
                    let data = vec![(i % 251) as u8 + 1; BS as usize];
                    v.write(b * BS, &data, i.is_multiple_of(13)).unwrap();
                    written.insert(b);
                    i += 1;
                }
                written
            })
        };
        let mut o = opts();
        o.chunk_bytes = REGION;
        let r1 = verify::verify(Target::Live(&v), &o, &NoProgress).unwrap();
        let rep = verify::sync(Target::Live(&v), &o, &NoProgress).unwrap();
        stop.store(true, Ordering::Relaxed);
        (r1, rep, writer.join().unwrap())
    });
    let bad_set = set(&bad);
    for (what, found) in [("verify", &r1.compare), ("sync", &rep.verify.compare)] {
        assert!(
            found.is_subset(&bad_set),
            "{what} reported blocks that were not damaged: {:?}",
            found - &bad_set
        );
        let untouched = &bad_set - &written;
        assert!(
            untouched.is_subset(found),
            "{what} missed damaged blocks the host never rewrote: {:?}",
            &untouched - found
        );
    }
    v.flush().unwrap();
    let r2 = verify::verify(Target::Live(&v), &opts(), &NoProgress).unwrap();
    assert!(r2.is_clean(), "after sync: {:?}", r2.compare);
    let blocks = v.size() / BS;
    let now = v.vault().read_at(&Point::Latest, 0, blocks).unwrap();
    assert!(now == s.read_primary(), "live point == primary");
}

/// A host write is recorded as a change only after its log append, while the primary
/// already has its data: a scan that reads the new data before the change is recorded
/// must still not report the block (it waits for writes in flight on the blocks it found
/// different). Large writes make that window long.
#[test]
fn writes_in_flight_when_the_scan_reads_them_are_never_reported() {
    let s = setup(4096, 11);
    let v = s.live();
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|sc| {
        let _stop = StopOnDrop(stop.clone());
        let writer = {
            let (v, stop) = (v.clone(), stop.clone());
            sc.spawn(move || {
                let mut rng = Rng(3);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                    let at = rng.below(16) * 256;
                    let data = vec![(n % 251) as u8 + 1; 256 * BS as usize];
                    v.write(at * BS, &data, false).unwrap();
                    n += 1;
                }
                n
            })
        };
        for round in 0..40 {
            let o = VerifyOptions {
                chunk_bytes: 64 << 10,
                ..opts()
            };
            let r = verify::verify(Target::Live(&v), &o, &NoProgress).unwrap();
            assert!(
                r.compare.is_empty(),
                "round {round}: reported blocks the host was writing: {:?}",
                r.compare
            );
        }
        stop.store(true, Ordering::Relaxed);
        assert!(writer.join().unwrap() > 10);
    });
}

/// Raises a flag when sync starts copying.
struct CopyStarts(Arc<AtomicBool>);
impl rewind_vault::Progress for CopyStarts {
    fn start(&self, what: &str, _total: u64) {
        if what.starts_with("copying") {
            self.0.store(true, Ordering::Release);
        }
    }
}

/// The copy takes the region locks: a host writing the very blocks sync is copying never
/// ends up behind a stale fix-up (the vault's newest point would then differ from the
/// primary). The writer starts when the copy does, so that its blocks are not in the scan
/// delta map (which would take them out of the copy).
#[test]
fn fix_ups_and_host_writes_to_the_same_blocks_land_in_one_order() {
    let s = setup(512, 8);
    let v = s.live();
    for round in 0..20u64 {
        let f = OpenOptions::new().write(true).open(&s.primary).unwrap();
        // 1 MiB in one run: one copy, one hold of the locks, long enough for many host
        // writes to land inside it if the locks were not held.
        for b in 128..384u64 {
            f.write_all_at(&[round as u8 + 1; BS as usize], b * BS)
                .unwrap();
        }
        drop(f);
        let copying = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        std::thread::scope(|sc| {
            let _stop = StopOnDrop(done.clone());
            let writer = {
                let (v, copying, done) = (v.clone(), copying.clone(), done.clone());
                sc.spawn(move || {
                    let mut rng = Rng(round + 5);
                    while !copying.load(Ordering::Acquire) && !done.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                    let mut n = 0;
                    while !done.load(Ordering::Relaxed) && n < 100_000 {
                        let b = 128 + rng.below(256);
                        v.write(b * BS, &rng.block(), false).unwrap();
                        n += 1;
                    }
                    n
                })
            };
            let mut o = opts();
            o.threads = 1;
            let rep = verify::sync(Target::Live(&v), &o, &CopyStarts(copying.clone())).unwrap();
            assert_eq!(rep.verify.compare.len(), 256, "round {round}");
            done.store(true, Ordering::Relaxed);
            writer.join().unwrap();
        });
        let now = v.vault().read_at(&Point::Latest, 0, 512).unwrap();
        assert!(
            now == s.read_primary(),
            "round {round}: a fix-up landed behind a host write"
        );
    }
}

/// Punches a hole in `path` (the blocks read as zeroes and take no space).
fn punch(path: &Path, block: u64, count: u64) {
    use std::os::fd::AsRawFd;
    let f = OpenOptions::new().write(true).open(path).unwrap();
    // SAFETY: fallocate on a descriptor we own; it touches no memory of ours.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            (block * BS) as libc::off_t,
            (count * BS) as libc::off_t,
        )
    };
    assert_eq!(rc, 0, "punch hole: {}", std::io::Error::last_os_error());
}

/// Sparse volumes: where the primary and the base image both have holes, verify skips the
/// reads; damage next to or inside the holes is still found, on either side.
#[test]
fn holes_are_skipped_but_damage_in_and_around_them_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let primary = dir.path().join("primary.img");
    let f = std::fs::File::create(&primary).unwrap();
    f.set_len(4096 * BS).unwrap();
    // Data in blocks 256..512 and 3000..3010 only: the rest is a hole in the primary and,
    // after init, in the base image.
    let mut rng = Rng(77);
    for b in (256..512).chain(3000..3010) {
        f.write_all_at(&rng.block(), b * BS).unwrap();
    }
    drop(f);
    let vault_dir = dir.path().join("vault");
    Vault::create(
        &CreateOptions {
            primary: primary.clone(),
            vault: vault_dir.clone(),
            block_size: BS as u32,
            compression: Compression::None,
            seal: SealPolicy::default(),
        },
        &NoProgress,
    )
    .unwrap()
    .close()
    .unwrap();
    let run = || {
        let vault = Arc::new(Vault::open_read_only(&vault_dir).unwrap());
        let vol = OfflineVolume::open(&primary, vault).unwrap();
        verify::verify(Target::Offline(&vol), &opts(), &NoProgress).unwrap()
    };
    let clean = run();
    assert!(clean.is_clean());
    assert!(
        clean.bytes_sparse >= (4096 - 256 - 2 * 32) * BS,
        "holes on both sides are not read ({} bytes sparse)",
        clean.bytes_sparse
    );
    // A hole punched in the primary where the vault has data.
    punch(&primary, 300, 1);
    // Data written into the primary inside a hole.
    let f = OpenOptions::new().write(true).open(&primary).unwrap();
    f.write_all_at(&[7u8; 10], 2000 * BS + 5).unwrap();
    // Data written into a hole of the base image (the vault side goes bad under a primary
    // hole): the block no longer matches its zero checksum.
    let base = OpenOptions::new()
        .write(true)
        .open(vault_dir.join("base/base.img"))
        .unwrap();
    base.write_all_at(&[9u8; 3], 3500 * BS + 100).unwrap();
    let r = run();
    assert_eq!(r.compare, set(&[300, 2000, 3500]));
    assert_eq!(r.unreadable.keys().copied().collect::<Vec<_>>(), vec![3500]);
    assert_eq!(r.bytes_scanned, 4096 * BS);
}

/// Sets the flag when dropped, also while unwinding.
struct StopOnDrop(Arc<AtomicBool>);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_volume_that_ends_mid_region_is_scanned_to_its_last_block() {
    // 18 blocks, regions of 4: the last region has 2 blocks.
    let s = setup(18, 9);
    s.corrupt_primary(&[0, 17]);
    let r = offline_verify(&s);
    assert_eq!(r.compare, set(&[0, 17]));
    assert_eq!(r.regions_scanned, 5);
    assert_eq!(r.bytes_scanned, 18 * BS);
    assert_eq!(r.ranges(), vec![(0, REGION), (4 * REGION, 2 * BS)]);
    let mut o = opts();
    o.only_regions = Some(set(&[4]));
    let vault = Arc::new(Vault::open(&s.vault_dir).unwrap());
    let vol = OfflineVolume::open(&s.primary, vault.clone()).unwrap();
    let rep = verify::sync(Target::Offline(&vol), &o, &NoProgress).unwrap();
    assert_eq!(rep.verify.compare, set(&[17]), "only the last region");
    assert_eq!(rep.verify.bytes_scanned, 2 * BS);
    let now = vault.read_at(&Point::Latest, 16, 2).unwrap();
    assert!(now[..] == s.read_primary()[(16 * BS) as usize..]);
}

/// Sets a cancel flag after `after` bytes of the phase named `phase`.
struct CancelAfter {
    phase: &'static str,
    after: u64,
    cancel: Arc<AtomicBool>,
    in_phase: AtomicBool,
    done: std::sync::atomic::AtomicU64,
}
impl rewind_vault::Progress for CancelAfter {
    fn start(&self, what: &str, _total: u64) {
        self.in_phase
            .store(what.starts_with(self.phase), Ordering::Relaxed);
    }
    fn advance(&self, n: u64) {
        if self.in_phase.load(Ordering::Relaxed)
            && self.done.fetch_add(n, Ordering::Relaxed) + n >= self.after
        {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
}

#[test]
fn cancelled_scans_and_copies_stop_early_and_say_so() {
    let s = setup(1024, 10);
    let bad: Vec<u64> = (0..1024).step_by(2).collect();
    s.corrupt_primary(&bad);
    let vault = Arc::new(Vault::open(&s.vault_dir).unwrap());
    let vol = OfflineVolume::open(&s.primary, vault.clone()).unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let progress = |phase, after| CancelAfter {
        phase,
        after,
        cancel: cancel.clone(),
        in_phase: AtomicBool::new(false),
        done: 0.into(),
    };
    let o = VerifyOptions {
        cancel: Some(cancel.clone()),
        threads: 1,
        ..opts()
    };
    let r = verify::verify(Target::Offline(&vol), &o, &progress("scanning", 64 * BS)).unwrap();
    assert!(r.cancelled && !r.is_clean());
    assert!(r.bytes_scanned < 1024 * BS, "{}", r.bytes_scanned);
    // A sync stopped while copying seals and flags what it copied.
    cancel.store(false, Ordering::Relaxed);
    let rep = verify::sync(Target::Offline(&vol), &o, &progress("copying", 8 * BS)).unwrap();
    assert!(rep.verify.cancelled);
    assert_eq!(rep.verify.compare.len(), 512);
    assert!(
        rep.fixup_blocks >= 8 && rep.fixup_blocks < 512,
        "{}",
        rep.fixup_blocks
    );
    assert_eq!(rep.fixup_intervals.len(), 1);
    assert_eq!(vault.suspects().len(), 1, "marked before copying");
    // The rest is found again, and the next sync finishes the work.
    cancel.store(false, Ordering::Relaxed);
    let again = verify::verify(Target::Offline(&vol), &opts(), &NoProgress).unwrap();
    assert_eq!(again.compare.len(), 512 - rep.fixup_blocks);
    let rep = verify::sync(Target::Offline(&vol), &opts(), &NoProgress).unwrap();
    assert!(!rep.verify.cancelled);
    assert!(verify::verify(Target::Offline(&vol), &opts(), &NoProgress)
        .unwrap()
        .is_clean());
}

#[test]
fn bad_region_sizes_are_refused() {
    let s = setup(16, 6);
    let vault = Arc::new(Vault::open_read_only(&s.vault_dir).unwrap());
    let vol = OfflineVolume::open(&s.primary, vault).unwrap();
    for rs in [0, 100, BS + 1, 2 << 30] {
        let o = VerifyOptions {
            region_size: rs,
            ..opts()
        };
        assert!(matches!(
            verify::verify(Target::Offline(&vol), &o, &NoProgress),
            Err(verify::VerifyError::RegionSize { .. })
        ));
    }
    // Sync needs the writer.
    assert!(matches!(
        verify::sync(Target::Offline(&vol), &opts(), &NoProgress),
        Err(verify::VerifyError::Vault(
            rewind_vault::VaultError::ReadOnly
        ))
    ));
}
