//! Files in memory that know what is durable: the memory, crash and fault backends.
//!
//! Each file (an inode) keeps the bytes a reader sees now and the bytes a completed sync
//! made durable, plus which 512-byte sectors differ (written since the last sync). Each
//! directory keeps the entry changes (creates, renames, removes) made in it since its last
//! `sync_dir`, in order. [`SimStorage::power_cut`] builds, from that, a new storage as a
//! power cut at this moment could leave it (see [`crate::sim::crash`]). A [`FaultPlan`]
//! fails chosen operations. [`SimStorage::cut_after`] arms a power cut at the Nth
//! operation from now: the state is taken then, and every later operation fails with EIO
//! (the machine is gone), so that a workload running on other threads stops wherever it is.

mod crash;
mod fault;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use crash::Cut;
pub use fault::{Fault, FaultKind, FaultPlan, OpKind};

use crate::{Kind, Open, Stat, Storage, StorageFile};

/// Bytes a power cut keeps or drops as a whole.
pub const SECTOR: usize = 512;

#[derive(Debug, Clone, Default)]
struct Inode {
    /// What a reader sees.
    data: Vec<u8>,
    /// What a completed sync made durable.
    durable: Vec<u8>,
    /// Sectors of `data` written (or cut off) since the last sync.
    dirty: BTreeSet<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

/// An entry change in a directory, not yet durable.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DirOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf, u64),
}

/// Operation counts, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    pub ops: BTreeMap<OpKind, u64>,
    pub total: u64,
}

#[derive(Debug, Default, Clone)]
struct Sim {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// The namespace a reader sees.
    names: BTreeMap<PathBuf, Entry>,
    /// The namespace a power cut keeps for sure.
    durable: BTreeMap<PathBuf, Entry>,
    /// Per directory: entry changes since its last sync, in order.
    pending: BTreeMap<PathBuf, Vec<DirOp>>,
    faults: FaultPlan,
    stats: SimStats,
    /// Exclusive locks: inode -> handle.
    locks: HashMap<u64, u64>,
    next_handle: u64,
    /// A power cut armed at this total operation count, with how to cut.
    armed: Option<(u64, Cut)>,
    /// The state taken when the armed cut fired: every operation fails since.
    cut: Option<Box<Sim>>,
    /// Power cuts this machine went through (its boot).
    boot: u64,
    /// The last fault that hit was a torn write.
    torn: bool,
    /// Every counted operation, in order, while tracing (see [`SimStorage::trace`]).
    trace: Option<Vec<(OpKind, PathBuf)>>,
    /// Operations a fault failed so far.
    fault_hits: u64,
}

/// Memory storage with durable/volatile state, power cuts and faults. Clones share the
/// same files.
#[derive(Debug, Clone, Default)]
pub struct SimStorage {
    sim: Arc<Mutex<Sim>>,
}

/// An open file of a [`SimStorage`].
#[derive(Debug)]
struct SimFile {
    sim: Arc<Mutex<Sim>>,
    ino: u64,
    handle: u64,
    path: PathBuf,
    write: bool,
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", p.display()),
    )
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Sim {
    /// Counts an operation and fails it if the machine is cut or a fault says so.
    fn op(&mut self, kind: OpKind, path: &Path) -> io::Result<()> {
        if self.cut.is_some() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        *self.stats.ops.entry(kind).or_default() += 1;
        self.stats.total += 1;
        if let Some(t) = &mut self.trace {
            t.push((kind, path.to_path_buf()));
        }
        if let Some((at, how)) = self.armed {
            if self.stats.total >= at {
                self.armed = None;
                self.cut = Some(Box::new(self.power_cut(how)));
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        match self.faults.check(kind, path) {
            Some((e, torn)) => {
                self.torn = torn;
                self.fault_hits += 1;
                Err(e)
            }
            None => Ok(()),
        }
    }

    fn dir_exists(&self, dir: &Path) -> bool {
        dir.as_os_str().is_empty()
            || dir == Path::new("/")
            || self.names.get(dir) == Some(&Entry::Dir)
    }

    fn new_inode(&mut self) -> u64 {
        self.next_ino += 1;
        self.inodes.insert(self.next_ino, Inode::default());
        self.next_ino
    }

    fn file(&self, path: &Path) -> io::Result<u64> {
        match self.names.get(path) {
            Some(Entry::File(ino)) => Ok(*ino),
            Some(Entry::Dir) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{}: is a directory", path.display()),
            )),
            None => Err(not_found(path)),
        }
    }

    fn inode(&mut self, ino: u64) -> &mut Inode {
        self.inodes.entry(ino).or_default()
    }

    /// Marks the sectors of bytes offset..offset+len dirty.
    fn touch(inode: &mut Inode, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / SECTOR as u64;
        let last = (offset + len - 1) / SECTOR as u64;
        inode.dirty.extend(first..=last);
    }

    fn sync_file(&mut self, ino: u64) {
        let inode = self.inode(ino);
        inode.durable = inode.data.clone();
        inode.dirty.clear();
    }

    /// After a failed sync the data it did not make durable is gone.
    fn drop_unsynced(&mut self, ino: u64) {
        let inode = self.inode(ino);
        inode.data = inode.durable.clone();
        inode.dirty.clear();
    }
}

impl SimStorage {
    /// An empty memory storage.
    pub fn new() -> SimStorage {
        SimStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the fault plan (counts start again).
    pub fn set_faults(&self, plan: FaultPlan) {
        self.lock().faults = plan;
    }

    /// Starts (or stops, and forgets) recording every counted operation with its path.
    pub fn set_tracing(&self, on: bool) {
        self.lock().trace = on.then(Vec::new);
    }

    /// The operations recorded since tracing started, in the order they were counted.
    pub fn trace(&self) -> Vec<(OpKind, PathBuf)> {
        self.lock().trace.clone().unwrap_or_default()
    }

    /// Operations the fault plans failed so far.
    pub fn fault_hits(&self) -> u64 {
        self.lock().fault_hits
    }

    /// Operations counted so far.
    pub fn stats(&self) -> SimStats {
        self.lock().stats.clone()
    }

    /// The storage a power cut now would leave (see [`Cut`]). This storage goes on as it
    /// was.
    pub fn power_cut(&self, how: Cut) -> SimStorage {
        let cut = self.lock().power_cut(how);
        SimStorage {
            sim: Arc::new(Mutex::new(cut)),
        }
    }

    /// [`SimStorage::power_cut`] with another cut for the data of the files `per_file`
    /// picks (e.g. everything of the primary kept, only what was synced of the vault).
    pub fn power_cut_by(&self, how: Cut, per_file: &dyn Fn(&Path) -> Option<Cut>) -> SimStorage {
        let cut = self.lock().power_cut_by(how, per_file);
        SimStorage {
            sim: Arc::new(Mutex::new(cut)),
        }
    }

    /// Arms a power cut at the `n`th operation from now (1: the next one): the state is
    /// taken just before it, that operation and every later one fail with EIO.
    pub fn cut_after(&self, n: u64, how: Cut) {
        let mut s = self.lock();
        let at = s.stats.total + n.max(1);
        s.armed = Some((at, how));
    }

    /// The storage the armed cut left, once it fired.
    pub fn after_cut(&self) -> Option<SimStorage> {
        let s = self.lock();
        s.cut.as_ref().map(|c| SimStorage {
            sim: Arc::new(Mutex::new(c.fresh_copy())),
        })
    }

    /// Whether the armed cut fired.
    pub fn is_cut(&self) -> bool {
        self.lock().cut.is_some()
    }

    /// The bytes a reader sees now in `path` (tests).
    pub fn contents(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        let ino = s.file(path)?;
        Ok(s.inodes
            .get(&ino)
            .map(|i| i.data.clone())
            .unwrap_or_default())
    }

    /// Writes a whole file, durably (test setup: a primary to protect).
    pub fn put(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        let dir = parent(path);
        if !s.dir_exists(&dir) {
            return Err(not_found(&dir));
        }
        let ino = match s.names.get(path) {
            Some(Entry::File(ino)) => *ino,
            _ => s.new_inode(),
        };
        s.names.insert(path.to_path_buf(), Entry::File(ino));
        s.durable.insert(path.to_path_buf(), Entry::File(ino));
        let inode = s.inode(ino);
        inode.data = bytes.to_vec();
        inode.durable = bytes.to_vec();
        inode.dirty.clear();
        Ok(())
    }
}

impl Storage for SimStorage {
    fn open(&self, path: &Path, how: Open) -> io::Result<Arc<dyn StorageFile>> {
        let mut s = self.lock();
        let ino = match s.names.get(path) {
            Some(Entry::File(ino)) => {
                if how.create_new {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{}: exists", path.display()),
                    ));
                }
                *ino
            }
            Some(Entry::Dir) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{}: is a directory", path.display()),
                ))
            }
            None if how.create || how.create_new => {
                let dir = parent(path);
                if !s.dir_exists(&dir) {
                    return Err(not_found(&dir));
                }
                s.op(OpKind::Create, path)?;
                let ino = s.new_inode();
                s.names.insert(path.to_path_buf(), Entry::File(ino));
                s.pending
                    .entry(dir)
                    .or_default()
                    .push(DirOp::Link(path.to_path_buf(), ino));
                ino
            }
            None => return Err(not_found(path)),
        };
        if how.truncate && how.write {
            s.op(OpKind::SetLen, path)?;
            let inode = s.inode(ino);
            let old = inode.data.len() as u64;
            inode.data.clear();
            Sim::touch(inode, 0, old);
        }
        s.next_handle += 1;
        let handle = s.next_handle;
        Ok(Arc::new(SimFile {
            sim: self.sim.clone(),
            ino,
            handle,
            path: path.to_path_buf(),
            write: how.write,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.file(from)?;
        if !s.dir_exists(&parent(to)) {
            return Err(not_found(to));
        }
        s.op(OpKind::Rename, to)?;
        s.names.remove(from);
        s.names.insert(to.to_path_buf(), Entry::File(ino));
        s.pending.entry(parent(to)).or_default().push(DirOp::Rename(
            from.to_path_buf(),
            to.to_path_buf(),
            ino,
        ));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.file(path)?;
        s.op(OpKind::Remove, path)?;
        s.names.remove(path);
        s.pending
            .entry(parent(path))
            .or_default()
            .push(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        if !s.dir_exists(dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        // Directories are durable at once (rewind creates them before anything that needs
        // them, and syncs the parent).
        for d in dir.ancestors() {
            if d.as_os_str().is_empty() || d == Path::new("/") {
                continue;
            }
            if let Some(Entry::File(_)) = s.names.get(d) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: a file", d.display()),
                ));
            }
            s.names.insert(d.to_path_buf(), Entry::Dir);
            s.durable.insert(d.to_path_buf(), Entry::Dir);
        }
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let gone: Vec<PathBuf> = s
            .names
            .keys()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect();
        for p in gone {
            s.names.remove(&p);
            s.durable.remove(&p);
            s.pending.remove(&p);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if !s.dir_exists(dir) {
            return Err(not_found(dir));
        }
        s.op(OpKind::SyncDir, dir)?;
        let ops = s.pending.remove(dir).unwrap_or_default();
        for op in ops {
            crash::apply(&mut s.durable, op);
        }
        Ok(())
    }

    fn boot_id(&self) -> [u8; 16] {
        let mut id = [0x5a; 16];
        id[..8].copy_from_slice(&(self.lock().boot + 1).to_le_bytes());
        id
    }

    fn stat(&self, path: &Path) -> io::Result<Stat> {
        let s = self.lock();
        match s.names.get(path) {
            Some(Entry::File(ino)) => Ok(Stat {
                kind: Kind::File,
                len: s.inodes.get(ino).map_or(0, |i| i.data.len() as u64),
            }),
            Some(Entry::Dir) => Ok(Stat {
                kind: Kind::Dir,
                len: 0,
            }),
            None if s.dir_exists(path) => Ok(Stat {
                kind: Kind::Dir,
                len: 0,
            }),
            None => Err(not_found(path)),
        }
    }
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writable(&self) -> io::Result<()> {
        if self.write {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EBADF))
        }
    }

    fn sync(&self) -> io::Result<()> {
        let mut s = self.lock();
        match s.op(OpKind::Sync, &self.path) {
            Ok(()) => {
                s.sync_file(self.ino);
                Ok(())
            }
            Err(e) => {
                if s.cut.is_none() && s.faults.lose_unsynced_on_failed_sync {
                    s.drop_unsynced(self.ino);
                }
                Err(e)
            }
        }
    }
}

impl SimFile {
    /// Writes without counting an operation (the count is the caller's).
    fn write_now(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let at =
            usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut s = self.lock();
        let inode = s.inode(self.ino);
        if inode.data.len() < at + buf.len() {
            inode.data.resize(at + buf.len(), 0);
        }
        inode.data[at..at + buf.len()].copy_from_slice(buf);
        Sim::touch(inode, offset, buf.len() as u64);
        Ok(buf.len())
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut s = self.lock();
        s.op(OpKind::Read, &self.path)?;
        let data = &s.inode(self.ino).data;
        let Ok(at) = usize::try_from(offset) else {
            return Ok(0);
        };
        if at >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - at);
        buf[..n].copy_from_slice(&data[at..at + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.writable()?;
        let mut s = self.lock();
        if let Err(e) = s.op(OpKind::Write, &self.path) {
            if std::mem::take(&mut s.torn) {
                let half = buf.len() / 2 / SECTOR * SECTOR;
                drop(s);
                self.write_now(&buf[..half], offset)?;
            }
            return Err(e);
        }
        drop(s);
        self.write_now(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }

    fn len(&self) -> io::Result<u64> {
        let mut s = self.lock();
        Ok(s.inode(self.ino).data.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        let mut s = self.lock();
        s.op(OpKind::SetLen, &self.path)?;
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let inode = s.inode(self.ino);
        let old = inode.data.len();
        inode.data.resize(len, 0);
        let (a, b) = (old.min(len), old.max(len));
        Sim::touch(inode, a as u64, (b - a) as u64);
        Ok(())
    }

    fn zero_range(&self, offset: u64, len: u64, _punch: bool) -> io::Result<()> {
        self.writable()?;
        let mut s = self.lock();
        s.op(OpKind::Zero, &self.path)?;
        let inode = s.inode(self.ino);
        let end = usize::try_from(offset + len)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?
            .min(inode.data.len());
        let at = (offset as usize).min(end);
        inode.data[at..end].fill(0);
        Sim::touch(inode, at as u64, (end - at) as u64);
        Ok(())
    }

    fn next_data(&self, offset: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
        // Memory files have no holes: all data (always safe).
        Ok((offset < size).then_some((offset, size)))
    }

    fn try_lock(&self) -> io::Result<bool> {
        let mut s = self.lock();
        match s.locks.get(&self.ino) {
            Some(h) if *h != self.handle => Ok(false),
            _ => {
                s.locks.insert(self.ino, self.handle);
                Ok(true)
            }
        }
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut s = self.lock();
        if s.locks.get(&self.ino) == Some(&self.handle) {
            s.locks.remove(&self.ino);
        }
    }
}

#[cfg(test)]
mod tests;
