//! A 1 TiB volume (2^28 blocks of 4 KiB) on sparse files: creating and opening its vault
//! cost the same as for a small one, and reads load only the chunks of `base.sums` they
//! need (the storage below counts the bytes read of it).

#![allow(clippy::unwrap_used)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rewind_storage::{Open, Stat, Storage, StorageFile};
use rewind_vault::{Compression, CreateOptions, NoProgress, Point, SealPolicy, Vault};

const BS: u32 = 4096;
const BLOCKS: u64 = 1 << 28;

/// Local storage that counts the bytes read of files named `base.sums`.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Storage>,
    sums_read: Arc<AtomicU64>,
}

#[derive(Debug)]
struct CountingFile {
    inner: Arc<dyn StorageFile>,
    count: Option<Arc<AtomicU64>>,
}

impl Storage for Counting {
    fn open(&self, path: &Path, how: Open) -> io::Result<Arc<dyn StorageFile>> {
        let inner = self.inner.open(path, how)?;
        let sums = path.file_name().is_some_and(|n| n == "base.sums");
        Ok(Arc::new(CountingFile {
            inner,
            count: sums.then(|| self.sums_read.clone()),
        }))
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

impl StorageFile for CountingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        if let Some(c) = &self.count {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn zero_range(&self, offset: u64, len: u64, punch: bool) -> io::Result<()> {
        self.inner.zero_range(offset, len, punch)
    }
    fn next_data(&self, offset: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
        self.inner.next_data(offset, size)
    }
    fn try_lock(&self) -> io::Result<bool> {
        self.inner.try_lock()
    }
}

fn read(vault: &Vault, point: &str, first: u64, count: u64) -> Vec<u8> {
    vault
        .read_at(&point.parse().unwrap(), first, count)
        .unwrap()
}

#[test]
fn a_1_tib_sparse_volume_creates_and_opens_without_reading_its_sums() {
    let tmp = tempfile::tempdir().unwrap();
    let primary = tmp.path().join("primary.img");
    let f = std::fs::File::create(&primary).unwrap();
    f.set_len(BLOCKS * u64::from(BS)).unwrap();
    // Three blocks of data: the first, one in the middle, the last.
    let data_at = [0, 5_000_000, BLOCKS - 1];
    for (i, b) in data_at.iter().enumerate() {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[i as u8 + 1; BS as usize], b * u64::from(BS))
            .unwrap();
    }
    drop(f);
    let sums_read = Arc::new(AtomicU64::new(0));
    let fs: Arc<dyn Storage> = Arc::new(Counting {
        inner: rewind_storage::local(),
        sums_read: sums_read.clone(),
    });
    let dir = tmp.path().join("vault");
    let started = Instant::now();
    let vault = Vault::create_on(
        fs.clone(),
        &CreateOptions {
            primary,
            vault: dir.clone(),
            block_size: BS,
            compression: Compression::None,
            seal: SealPolicy::default(),
        },
        &NoProgress,
    )
    .unwrap();
    let created = started.elapsed();
    drop(vault);
    // The sums file is 1 GiB long but holds three chunks (and the header).
    let sums = dir.join("base").join("base.sums");
    let meta = std::fs::metadata(&sums).unwrap();
    let layout = rewind_format::base_sums::SumsLayout::new(BS, BLOCKS);
    assert_eq!(meta.len(), layout.file_len());
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert!(
        allocated <= 1 << 20,
        "{allocated} bytes of base.sums allocated"
    );

    sums_read.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let vault = Vault::open_read_only_on(fs.clone(), &dir).unwrap();
    let opened = started.elapsed();
    assert!(vault.damage().is_empty());
    let header = rewind_format::base_sums::HEADER_LEN as u64;
    assert_eq!(
        sums_read.load(Ordering::Relaxed),
        header,
        "open reads the header"
    );
    // Generous bounds (a debug build on a shared machine): reading the sums whole took
    // seconds and 1 GiB; the work is now a few files' headers.
    assert!(created < Duration::from_secs(20), "create took {created:?}");
    assert!(opened < Duration::from_secs(2), "open took {opened:?}");

    // Each read loads the one chunk it needs; a hole chunk is not read at all.
    let chunk = layout.chunk_len(0) as u64;
    for (i, b) in data_at.iter().enumerate() {
        assert_eq!(read(&vault, "seq:0", *b, 1), vec![i as u8 + 1; BS as usize]);
    }
    assert_eq!(
        read(&vault, "seq:0", 100_000_000, 2),
        vec![0; 2 * BS as usize]
    );
    let after_reads = sums_read.load(Ordering::Relaxed);
    assert!(
        after_reads <= header + 3 * chunk,
        "{after_reads} bytes read"
    );
    // The extents of the whole volume: a seek per chunk, the three chunks with data read.
    let view = vault.view(&"seq:0".parse::<Point>().unwrap()).unwrap();
    let extents = view.extents(0, BLOCKS).unwrap();
    assert_eq!(extents.len(), 5, "{extents:?}");
    let after_extents = sums_read.load(Ordering::Relaxed);
    assert!(
        after_extents <= after_reads + 3 * chunk,
        "{after_extents} bytes read"
    );
    // So does a scan for damage.
    vault.scan_base_sums().unwrap();
    assert!(vault.damage().is_empty());
    let scanned = sums_read.load(Ordering::Relaxed) - after_extents;
    assert!(scanned <= 3 * chunk, "{scanned} bytes read by the scan");
}

/// `rewind check` of the 1 TiB vault reads every chunk with data (a hole of base.sums is
/// skipped with a seek) and names a damaged chunk far into the file; reads of its blocks
/// whose bytes agree with their sums still work, one whose sum was hit names base.sums.
#[test]
fn check_of_a_1_tib_vault_reads_each_chunk_and_names_a_damaged_one() {
    use rewind_vault::check::{check_vault, CheckOptions};
    use rewind_vault::{Corruption, VaultError};
    let tmp = tempfile::tempdir().unwrap();
    let primary = tmp.path().join("primary.img");
    let f = std::fs::File::create(&primary).unwrap();
    f.set_len(BLOCKS * u64::from(BS)).unwrap();
    let far = 200_000_000;
    for b in [far, far + 1] {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[7; BS as usize], b * u64::from(BS))
            .unwrap();
    }
    drop(f);
    let dir = tmp.path().join("vault");
    let opts = CreateOptions {
        primary,
        vault: dir.clone(),
        block_size: BS,
        compression: Compression::None,
        seal: SealPolicy::default(),
    };
    drop(Vault::create(&opts, &NoProgress).unwrap());
    let started = Instant::now();
    let r = check_vault(&dir, &CheckOptions::default(), &NoProgress).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    // The header page, the one chunk with data (64 KiB) and its two 4 KiB blocks of the
    // base image, and the other files (a few KiB).
    assert!(r.bytes_read < 1 << 20, "{} bytes read", r.bytes_read);
    assert!(started.elapsed() < Duration::from_secs(20));

    let sums = dir.join("base").join("base.sums");
    let layout = rewind_format::base_sums::SumsLayout::new(BS, BLOCKS);
    let flip = |at: u64| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&sums)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
    };
    let sum_at = layout.sum_offset(far);
    flip(sum_at);
    let r = check_vault(&dir, &CheckOptions::default(), &NoProgress).unwrap();
    let chunk = layout.chunk_offset(layout.chunk_of(far));
    assert_eq!(
        r.problems.len(),
        2,
        "the chunk and the block's sum: {:?}",
        r.problems
    );
    assert!(
        r.problems.iter().all(|p| p.path == sums),
        "{:?}",
        r.problems
    );
    assert!(r.problems.iter().any(|p| p.offset == chunk));
    assert!(r.problems.iter().any(|p| p.offset == sum_at));

    let vault = Vault::open_read_only(&dir).unwrap();
    assert!(vault.damage().is_empty(), "opening reads the header only");
    assert_eq!(read(&vault, "seq:0", far + 1, 1), vec![7; BS as usize]);
    match vault.read_at(&"seq:0".parse().unwrap(), far, 1) {
        Err(VaultError::Corrupted {
            path,
            offset,
            reason: Corruption::BaseSumDamaged { block },
        }) => assert_eq!((path, offset, block), (sums.clone(), sum_at, far)),
        other => panic!("{other:?}"),
    }
    let d = vault.damage();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].path.clone(), d[0].offset), (sums, chunk));
}
