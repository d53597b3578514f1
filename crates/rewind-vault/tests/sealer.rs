//! The background sealer: host writes go on while a seal writes its delta map and commits
//! its manifest; reads see the sealing interval; a power cut before the commit recovers;
//! a full disk during the map write leaves the interval to be sealed later.
//!
//! The vault runs on the crash backend ([`SimStorage`]) behind a gate that can hold the
//! seal's delta map write (or its manifest commit) until the test lets it go.

#![allow(clippy::unwrap_used)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rewind_format::names;
use rewind_storage::{
    Cut, Fault, FaultKind, FaultPlan, OpKind, Open, SimStorage, Stat, Storage, StorageFile,
};
use rewind_vault::{Compression, CreateOptions, NoProgress, Point, SealPolicy, Seq, Vault};

const BS: usize = 4096;
const BLOCKS: u64 = 64;

/// Holds the creation of a file whose path contains the armed text until released.
#[derive(Debug, Default)]
struct GateState {
    armed: Option<String>,
    /// A file was held (the seal reached it).
    reached: bool,
    released: bool,
}

#[derive(Debug)]
struct Gated {
    inner: Arc<dyn Storage>,
    gate: Arc<(Mutex<GateState>, Condvar)>,
}

impl Gated {
    fn new(inner: Arc<dyn Storage>) -> Arc<Gated> {
        Arc::new(Gated {
            inner,
            gate: Arc::default(),
        })
    }

    fn arm(&self, text: &str) {
        let mut g = self.gate.0.lock().unwrap();
        *g = GateState {
            armed: Some(text.to_string()),
            ..GateState::default()
        };
    }

    /// Waits until a gated create is held.
    fn wait_reached(&self) {
        let (m, cv) = &*self.gate;
        let g = cv
            .wait_timeout_while(m.lock().unwrap(), Duration::from_secs(20), |g| !g.reached)
            .unwrap()
            .0;
        assert!(g.reached, "the seal never reached the gate");
    }

    fn release(&self) {
        let (m, cv) = &*self.gate;
        let mut g = m.lock().unwrap();
        g.released = true;
        g.armed = None;
        cv.notify_all();
    }
}

impl Storage for Gated {
    fn open(&self, path: &Path, how: Open) -> io::Result<Arc<dyn StorageFile>> {
        let (m, cv) = &*self.gate;
        let mut g = m.lock().unwrap();
        let creates = how.create || how.create_new;
        if creates
            && g.armed
                .as_ref()
                .is_some_and(|t| path.to_string_lossy().contains(t.as_str()))
        {
            g.reached = true;
            cv.notify_all();
            while !g.released {
                g = cv.wait(g).unwrap();
            }
        }
        drop(g);
        self.inner.open(path, how)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir(dir)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn stat(&self, path: &Path) -> io::Result<Stat> {
        self.inner.stat(path)
    }
    fn boot_id(&self) -> [u8; 16] {
        self.inner.boot_id()
    }
    fn canonical(&self, path: &Path) -> PathBuf {
        self.inner.canonical(path)
    }
}

struct Setup {
    sim: SimStorage,
    gated: Arc<Gated>,
    vault_dir: PathBuf,
    /// The volume's blocks as the model has them (block -> byte each block is filled with).
    image: Vec<u8>,
    /// The image after each seq (`history[0]`: the base).
    history: Vec<Vec<u8>>,
}

fn setup(seal: SealPolicy) -> (Setup, Vault) {
    let sim = SimStorage::new();
    let root = PathBuf::from("/t");
    sim.create_dir(&root).unwrap();
    let primary = root.join("primary");
    sim.put(&primary, &vec![0u8; BS * BLOCKS as usize]).unwrap();
    let gated = Gated::new(Arc::new(sim.clone()));
    let vault_dir = root.join("vault");
    let vault = Vault::create_on(
        gated.clone(),
        &CreateOptions {
            primary,
            vault: vault_dir.clone(),
            block_size: BS as u32,
            compression: Compression::None,
            seal,
        },
        &NoProgress,
    )
    .unwrap();
    let s = Setup {
        sim,
        gated,
        vault_dir,
        image: vec![0u8; BLOCKS as usize],
        history: vec![vec![0u8; BLOCKS as usize]],
    };
    (s, vault)
}

fn no_auto_seal() -> SealPolicy {
    SealPolicy {
        bytes: 0,
        writes: 0,
        interval_ns: 0,
    }
}

impl Setup {
    fn write(&mut self, vault: &Vault, block: u64, fill: u8) -> Seq {
        self.image[block as usize] = fill;
        self.history.push(self.image.clone());
        vault.write(block, &vec![fill; BS]).unwrap()
    }
}

/// Every block of the newest point holds what `image` says.
fn check_latest(vault: &Vault, image: &[u8], what: &str) {
    let got = vault.read_at(&Point::Latest, 0, BLOCKS).unwrap();
    for (b, want) in image.iter().enumerate() {
        let block = &got[b * BS..(b + 1) * BS];
        assert!(
            block.iter().all(|x| x == want),
            "{what}: block {b} reads {} where {want} was written",
            block[0]
        );
    }
}

/// Runs `f` on another thread; panics if it does not finish within 10 s.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} did not complete while the seal was held"))
}

/// A host write (and its flush, and reads of every point) completes while a seal's
/// delta map write is held: the seal is off the write path.
#[test]
fn writes_go_on_while_a_seal_is_held() {
    let (mut s, vault) = setup(no_auto_seal());
    for b in 0..8 {
        s.write(&vault, b, 1 + b as u8);
    }
    let sealed_to = vault.flush().unwrap();
    let before = s.image.clone();
    s.gated.arm("/maps/");
    let vault = Arc::new(vault);
    let v = vault.clone();
    let sealer = std::thread::spawn(move || v.seal());
    s.gated.wait_reached();

    let v = vault.clone();
    let seq = within("a write", move || {
        let seq = v.write(3, &vec![0xaa; BS]).unwrap();
        v.flush().unwrap();
        seq
    });
    s.image[3] = 0xaa;
    assert_eq!(seq, sealed_to.next());
    // Reads see the sealing interval's writes, at its points and after it.
    check_latest(&vault, &s.image, "newest point while sealing");
    let v = vault.clone();
    let at_seal = within("a read", move || {
        v.read_at(&Point::Seq(sealed_to), 0, BLOCKS).unwrap()
    });
    for (b, want) in before.iter().enumerate() {
        assert_eq!(at_seal[b * BS], *want, "block {b} at the sealing point");
    }
    assert!(!sealer.is_finished(), "the seal returned before its commit");

    s.gated.release();
    let info = sealer.join().unwrap().unwrap().unwrap();
    assert_eq!((info.seq_from, info.seq_to), (Seq(1), sealed_to));
    let ivs = vault.intervals();
    assert!(ivs[0].sealed && !ivs[1].sealed, "{ivs:?}");
    check_latest(&vault, &s.image, "after the seal");
    let vault = Arc::into_inner(vault).unwrap();
    vault.close().unwrap();
    let vault = Vault::open_on(Arc::new(s.sim.clone()), &s.vault_dir, "test").unwrap();
    check_latest(&vault, &s.image, "reopened");
}

/// A power cut while a seal is held before its commit (at its delta map, or at its
/// manifest) loses nothing a flush covered: opening finds the closed segment and the next
/// one, reads both, and seals the first.
#[test]
fn power_cut_during_a_background_seal() {
    for held in ["/maps/", "manifest-"] {
        for cut in [Cut::DurableOnly, Cut::Random(7), Cut::Everything] {
            power_cut_while_held(held, cut);
        }
    }
}

/// The same without a flush after the switch: at the delta map the job has not synced the
/// closed segment yet, so the cut may tear it; opening recovers a prefix of the log that
/// holds every flushed write, and the next segment (which then does not continue it) is
/// a leftover, removed.
#[test]
fn power_cut_before_the_seal_synced() {
    for held in ["/maps/", "manifest-"] {
        for cut in [
            Cut::DurableOnly,
            Cut::Random(3),
            Cut::Random(11),
            Cut::Everything,
        ] {
            power_cut_unflushed(held, cut);
        }
    }
}

fn power_cut_unflushed(held: &str, cut: Cut) {
    let what = format!("unflushed, held at {held}, {cut:?}");
    let seal = SealPolicy {
        writes: 6,
        ..no_auto_seal()
    };
    let (mut s, vault) = setup(seal);
    for b in 0..4 {
        s.write(&vault, b, 10 + b as u8);
    }
    let flushed = vault.flush().unwrap();
    s.write(&vault, 4, 14);
    s.gated.arm(held);
    let vault = Arc::new(vault);
    let v = vault.clone();
    within("the write that starts the seal", move || {
        v.write(5, &vec![15; BS]).unwrap()
    });
    s.image[5] = 15;
    s.history.push(s.image.clone());
    s.gated.wait_reached();
    for b in 6..9 {
        s.write(&vault, b, 20 + b as u8);
    }
    let last = s.history.len() as u64 - 1;
    let after = s.sim.power_cut(cut);
    s.gated.release();
    drop(Arc::into_inner(vault));

    let fs: Arc<dyn Storage> = Arc::new(after.clone());
    let ro = Vault::open_read_only_on(fs.clone(), &s.vault_dir).unwrap();
    let ro_newest = ro.info().newest_seq;
    drop(ro);
    let vault = Vault::open_on(fs.clone(), &s.vault_dir, "test")
        .unwrap_or_else(|e| panic!("{what}: open: {e}"));
    let newest = vault.info().newest_seq;
    assert_eq!(
        newest, ro_newest,
        "{what}: the reader and the writer disagree"
    );
    assert!(
        newest >= flushed && newest.0 <= last,
        "{what}: recovered to {newest}, flushed {flushed}, last {last}"
    );
    check_latest(&vault, &s.history[newest.0 as usize], &what);
    for seq in 0..=newest.0 {
        let got = vault.read_at(&Point::Seq(Seq(seq)), 0, BLOCKS).unwrap();
        for (b, want) in s.history[seq as usize].iter().enumerate() {
            assert_eq!(got[b * BS], *want, "{what}: block {b} at seq {seq}");
        }
    }
    let maps = after.list(&s.vault_dir.join(names::MAPS_DIR)).unwrap();
    let sealed = vault.intervals().iter().filter(|i| i.sealed).count();
    assert_eq!(maps.len(), sealed, "{what}: maps on disk {maps:?}");
    let segs = after.list(&s.vault_dir.join(names::LOG_DIR)).unwrap();
    assert!(segs.len() <= 2, "{what}: segments {segs:?}");
}

fn power_cut_while_held(held: &str, cut: Cut) {
    let what = format!("held at {held}, {cut:?}");
    let seal = SealPolicy {
        writes: 6,
        ..no_auto_seal()
    };
    let (mut s, vault) = setup(seal);
    for b in 0..5 {
        s.write(&vault, b, 10 + b as u8);
    }
    vault.flush().unwrap();
    s.gated.arm(held);
    // The sixth write makes the interval due: its seal starts in the background.
    let vault = Arc::new(vault);
    let v = vault.clone();
    let closed_to = within("the write that starts the seal", move || {
        v.write(5, &vec![15; BS]).unwrap()
    });
    s.image[5] = 15;
    s.gated.wait_reached();
    for b in 6..9 {
        s.write(&vault, b, 20 + b as u8);
    }
    s.write(&vault, 0, 99);
    let durable = vault.flush().unwrap();
    let image = s.image.clone();
    let after = s.sim.power_cut(cut);
    s.gated.release();
    drop(Arc::into_inner(vault));

    // A reader sees it all (and changes nothing); the writer too, and seals the first.
    let fs: Arc<dyn Storage> = Arc::new(after.clone());
    let ro = Vault::open_read_only_on(fs.clone(), &s.vault_dir).unwrap();
    assert_eq!(ro.info().newest_seq, durable, "{what}: reader");
    check_latest(&ro, &image, &format!("{what}: reader"));
    drop(ro);
    let vault = Vault::open_on(fs.clone(), &s.vault_dir, "test")
        .unwrap_or_else(|e| panic!("{what}: open: {e}"));
    assert_eq!(vault.info().newest_seq, durable, "{what}");
    check_latest(&vault, &image, &what);
    let ivs = vault.intervals();
    assert_eq!(
        (ivs[0].seq_from, ivs[0].seq_to, ivs[0].sealed),
        (Seq(1), closed_to, true),
        "{what}: {ivs:?}"
    );
    assert!(
        !ivs[1].sealed && ivs[1].seq_to == durable,
        "{what}: {ivs:?}"
    );
    // The interval's first point reads from its map now.
    let at = vault.read_at(&Point::Seq(closed_to), 0, 1).unwrap();
    assert_eq!(
        at[0], 10,
        "{what}: block 0 at the end of the sealed interval"
    );
    // Appending goes on, and a second open finds nothing left to do.
    s.image = image;
    let seq = s.write(&vault, 7, 77);
    assert_eq!(seq, durable.next(), "{what}");
    vault.close().unwrap();
    let vault = Vault::open_on(fs, &s.vault_dir, "test").unwrap();
    check_latest(&vault, &s.image, &format!("{what}: second open"));
    let maps = after.list(&s.vault_dir.join(names::MAPS_DIR)).unwrap();
    let sealed = vault.intervals().iter().filter(|i| i.sealed).count();
    assert_eq!(maps.len(), sealed, "{what}: maps on disk {maps:?}");
}

/// A full disk when the seal writes its delta map: the seal fails, nothing is lost, writes
/// go on, the interval is listed unsealed; the next seal seals it (and the one after).
#[test]
fn no_space_for_the_map_leaves_the_interval_to_seal_later() {
    let (mut s, vault) = setup(no_auto_seal());
    for b in 0..4 {
        s.write(&vault, b, 30 + b as u8);
    }
    let first_to = vault.flush().unwrap();
    s.sim.set_faults(FaultPlan::new(vec![Fault::once(
        OpKind::Create,
        1,
        FaultKind::Enospc,
    )
    .on_paths("/maps/")]));
    match vault.seal() {
        Err(e) => assert!(e.is_no_space(), "{e}"),
        Ok(i) => panic!("the seal worked without room for its map: {i:?}"),
    }
    assert_eq!(s.sim.fault_hits(), 1);
    // Writes go on into the next segment; the failed interval stays readable.
    s.write(&vault, 1, 41);
    s.write(&vault, 9, 42);
    let newest = vault.flush().unwrap();
    check_latest(&vault, &s.image, "after the failed seal");
    let ivs = vault.intervals();
    assert_eq!(ivs.len(), 2, "{ivs:?}");
    assert!(!ivs[0].sealed && ivs[0].seq_to == first_to, "{ivs:?}");
    assert!(vault.write_refusal().is_none());
    assert!(
        vault.snapshots().is_empty() && vault.chain().is_empty(),
        "nothing committed"
    );
    // Room again: an explicit seal seals both.
    let info = vault.seal().unwrap().unwrap();
    assert_eq!(info.seq_to, newest);
    let ivs = vault.intervals();
    assert_eq!(
        ivs.iter().map(|i| (i.seq_to, i.sealed)).collect::<Vec<_>>(),
        vec![(first_to, true), (newest, true)]
    );
    check_latest(&vault, &s.image, "sealed after all");
    drop(vault);
    let vault = Vault::open_on(Arc::new(s.sim.clone()), &s.vault_dir, "test").unwrap();
    check_latest(&vault, &s.image, "reopened");
    // Both intervals read from their maps.
    let got = vault.read_at(&Point::Seq(first_to), 0, BLOCKS).unwrap();
    assert_eq!(got[BS], 31, "block 1 at the end of the first interval");
}

/// Two writers and a reader on their own threads while the policy seals every few writes
/// in the background: the newest point never goes back (a view that missed the sealing
/// interval would read older data), and the end state reads back, before and after a
/// reopen.
#[test]
fn writers_and_readers_race_background_seals() {
    const PER_WRITER: u8 = 200;
    let seal = SealPolicy {
        writes: 7,
        ..no_auto_seal()
    };
    let (s, vault) = setup(seal);
    let vault = Arc::new(vault);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (vault, stop) = (vault.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = vec![0u8; BLOCKS as usize];
            let mut views = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let got = vault.read_at(&Point::Latest, 0, BLOCKS).unwrap();
                for (b, last) in seen.iter_mut().enumerate() {
                    let now = got[b * BS];
                    assert!(now >= *last, "block {b} went back from {last} to {now}");
                    *last = now;
                }
                views += 1;
            }
            views
        })
    };
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let vault = vault.clone();
            std::thread::spawn(move || {
                let mut rng = w + 1;
                for i in 0..PER_WRITER {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let block = w * 32 + (rng >> 33) % 32;
                    vault.write(block, &vec![i + 1; BS]).unwrap();
                    if i % 10 == 9 {
                        vault.flush().unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let views = reader.join().unwrap();
    assert!(views > 0);
    let image: Vec<u8> = vault.read_at(&Point::Latest, 0, BLOCKS).unwrap()[..]
        .chunks(BS)
        .map(|b| b[0])
        .collect();
    let ivs = vault.intervals();
    assert!(ivs.len() > 20, "{} intervals", ivs.len());
    assert!(ivs.iter().rev().skip(1).all(|i| i.sealed), "{ivs:?}");
    let total: u64 = ivs.iter().map(|i| i.seq_to.0 - i.seq_from.0 + 1).sum();
    assert_eq!(total, 2 * u64::from(PER_WRITER));
    vault.flush().unwrap();
    drop(Arc::into_inner(vault));
    let vault = Vault::open_on(Arc::new(s.sim.clone()), &s.vault_dir, "test").unwrap();
    check_latest(&vault, &image, "reopened after the race");
}

/// A snapshot taken while a seal is held ends its own interval: host writes that come
/// while it waits for the held seal fall after its interval, not inside it.
#[test]
fn a_snapshot_waits_for_the_seal_in_flight_and_ends_its_interval() {
    let seal = SealPolicy {
        writes: 4,
        ..no_auto_seal()
    };
    let (mut s, vault) = setup(seal);
    s.gated.arm("/maps/");
    let vault = Arc::new(vault);
    let v = vault.clone();
    within("the writes that start a seal", move || {
        for b in 0..4 {
            v.write(b, &vec![50 + b as u8; BS]).unwrap();
        }
    });
    s.gated.wait_reached();
    s.write(&vault, 10, 60);
    let v = vault.clone();
    let snap = std::thread::spawn(move || v.snapshot("s1", false));
    // The snapshot waits for the held seal; writes meanwhile take the lock it let go.
    std::thread::sleep(Duration::from_millis(50));
    let v = vault.clone();
    within("a write while the snapshot waits", move || {
        v.write(11, &vec![61; BS]).unwrap()
    });
    s.gated.release();
    let snap = snap.join().unwrap().unwrap();
    let ivs = vault.intervals();
    assert!(
        ivs.iter().any(|i| i.sealed && i.seq_to == snap.seq),
        "the snapshot at {} does not end a sealed interval: {ivs:?}",
        snap.seq
    );
    let view = vault.view(&Point::Snapshot("s1".into())).unwrap();
    assert_eq!(view.replayed_blocks(), 0, "the snapshot reads from its map");
}
