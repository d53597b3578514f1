//! One primary, one protector.
//!
//! Two things keep a second writer off a primary that rewind protects:
//!
//! - **The primary lock**: an exclusive `flock` on the primary itself, held for the life of
//!   `rewind serve`, `rewind init`, an offline `rewind sync` and an offline `rewind restore
//!   --in-place` ([`PrimaryLock`]). A second rewind process on the same file (by any path,
//!   hard links included: the lock is on the inode) is refused, with the holder's pid and
//!   command line. The lock is advisory: qemu's own image locks (OFD locks) do not see it,
//!   and it ends with the process, so a `kill -9` leaves nothing stale.
//! - **The protection stamp** ([`rewind_format::stamp`]): the protecting vault's id and
//!   path, kept in the extended attribute `user.rewind.vault` of the primary, so that a
//!   vault that is not running can still be seen. `init` of a second vault on a stamped
//!   primary, or `serve` of a copy of the vault (same id, other path, the original still
//!   there), is refused unless the caller takes over ([`PrimaryLock::claim`]). A stamp
//!   whose vault is gone (deleted, or moved: same id, the old path no longer holds it) is
//!   replaced.
//!
//! Where the primary cannot hold a user extended attribute (a block device: Linux allows
//! `user.*` attributes only on regular files and directories; tmpfs before Linux 6.6; some
//! FUSE and network file systems), there is no stamp: the lock alone keeps a second rewind
//! process off while one runs, and [`Claimed::Unsupported`] says so, so that the CLI can
//! tell the user what is not checked.
//!
//! [`check_restore_target`] is the other half: `rewind restore --to` never writes a
//! protected primary or into a vault.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rewind_format::stamp::{Stamp, XATTR};
use rewind_format::DecodeError;
use rewind_vault::{Vault, VaultError};

/// Why a primary cannot be claimed, or a restore target cannot be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtectError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("primary {path} is in use by another rewind process ({holder}); one primary has one protector: stop that one first")]
    Held { path: PathBuf, holder: String },
    #[error("primary {path} is protected by another vault, {other} (vault id {other_id}); serving or initializing a second vault would give it two histories that disagree. Use that vault, or pass --take-over to make this one the protector (the other then stops matching the primary)")]
    OtherVault {
        path: PathBuf,
        other: PathBuf,
        other_id: String,
    },
    #[error("vault {ours} is a copy of {original} (same vault id), which protects primary {path}; serving the copy would give the primary two histories that disagree. Serve {original}, or pass --take-over to make this copy the protector")]
    CopiedVault {
        path: PathBuf,
        ours: PathBuf,
        original: PathBuf,
    },
    #[error("primary {path}: its protection stamp ({XATTR}) is damaged ({source}); pass --take-over if this vault should protect it")]
    BadStamp { path: PathBuf, source: DecodeError },
    #[error("{to} is the primary this vault protects ({primary}); restore --to writes a new file and would replace the primary under the server, losing writes it acknowledged. To bring the primary back to a point, use `rewind restore --in-place` (through a running server too)")]
    TargetIsPrimary { to: PathBuf, primary: PathBuf },
    #[error("{to} is inside the vault {vault}; a restore must not write into a vault. Pick a path outside it")]
    TargetInVault { to: PathBuf, vault: PathBuf },
    #[error("{to} is held by a running rewind process ({holder}); it is a primary being protected. Pick another path")]
    TargetInUse { to: PathBuf, holder: String },
    #[error("{to} is the primary of vault {vault}; restoring onto it would change it behind that vault's back. Pick another path, or restore it with `rewind restore --vault {vault} --in-place`")]
    TargetProtected { to: PathBuf, vault: PathBuf },
}

type Result<T, E = ProtectError> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ProtectError + 'a {
    move |source| ProtectError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The exclusive lock on a primary, held while it lives.
#[derive(Debug)]
pub struct PrimaryLock {
    file: File,
    path: PathBuf,
}

/// What [`PrimaryLock::claim`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claimed {
    /// The stamp already named this vault.
    Already,
    /// There was no stamp; now there is.
    Stamped,
    /// The stamp named `previous`, which no longer holds that vault (deleted, or this
    /// vault was moved from there): now it names this one.
    Replaced { previous: PathBuf },
    /// The stamp named `previous` (another vault, or the original of this copy, still
    /// there) and the caller took over.
    TookOver { previous: PathBuf },
    /// The primary cannot hold a stamp (`why`): only the lock protects it.
    Unsupported { why: String },
}

impl PrimaryLock {
    /// Takes the lock on `primary` or says who holds it.
    pub fn acquire(primary: &Path) -> Result<PrimaryLock> {
        let file = File::open(primary).map_err(io_err("open primary", primary))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ProtectError::Held {
                    path: primary.to_path_buf(),
                    holder: holder(&file),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock", primary)(e)),
        }
        Ok(PrimaryLock {
            file,
            path: primary.to_path_buf(),
        })
    }

    /// The stamp on the primary: `Ok(Err(why))` when it cannot hold one.
    pub fn stamp(&self) -> Result<std::result::Result<Option<Stamp>, String>> {
        read_stamp(&self.file, &self.path)
    }

    /// Before a vault is created in `vault_dir` for this primary: refuses (unless
    /// `take_over`) when the stamp names another vault that is still there. A stamp naming
    /// `vault_dir` itself is left to the vault's own check (the directory is not empty).
    pub fn check_new(&self, vault_dir: &Path, take_over: bool) -> Result<()> {
        let s = match self.stamp() {
            Ok(Ok(Some(s))) => s,
            Ok(_) => return Ok(()),
            Err(ProtectError::BadStamp { .. }) if take_over => return Ok(()),
            Err(e) => return Err(e),
        };
        let dir = resolve_target(vault_dir)?;
        if take_over || s.vault_path == dir.as_os_str().as_bytes() || !vault_holds(&s) {
            return Ok(());
        }
        Err(ProtectError::OtherVault {
            path: self.path.clone(),
            other: stamp_path(&s),
            other_id: hex(&s.vault_id),
        })
    }

    /// Makes the vault `vault_id` (hex, as in the manifest) at `vault_dir` the primary's
    /// protector: checks the stamp (see the module doc) and writes it. `take_over` allows
    /// replacing a stamp that names another vault, or the original of a copied vault,
    /// that is still there.
    pub fn claim(&self, vault_id: &str, vault_dir: &Path, take_over: bool) -> Result<Claimed> {
        let id = parse_id(vault_id);
        let dir = std::fs::canonicalize(vault_dir).map_err(io_err("resolve", vault_dir))?;
        let (verdict, previous) = match self.stamp() {
            Ok(Err(why)) => return Ok(Claimed::Unsupported { why }),
            Ok(Ok(None)) => (Verdict::Unstamped, PathBuf::new()),
            Ok(Ok(Some(s))) => (judge(&s, &id, &dir, || vault_holds(&s)), stamp_path(&s)),
            // A damaged stamp names nobody: only a caller who takes over replaces it.
            Err(ProtectError::BadStamp { .. }) if take_over => (Verdict::Other, PathBuf::new()),
            Err(e) => return Err(e),
        };
        let claimed = match verdict {
            Verdict::Ours => return Ok(Claimed::Already),
            Verdict::Unstamped => Claimed::Stamped,
            Verdict::Gone => Claimed::Replaced { previous },
            Verdict::Copy | Verdict::Other if take_over => Claimed::TookOver { previous },
            Verdict::Copy => {
                return Err(ProtectError::CopiedVault {
                    path: self.path.clone(),
                    ours: dir,
                    original: previous,
                })
            }
            Verdict::Other => {
                let other_id = match self.stamp() {
                    Ok(Ok(Some(s))) => hex(&s.vault_id),
                    _ => String::new(),
                };
                return Err(ProtectError::OtherVault {
                    path: self.path.clone(),
                    other: previous,
                    other_id,
                });
            }
        };
        let stamp = Stamp {
            vault_id: id,
            vault_path: dir.into_os_string().into_vec(),
        };
        match write_stamp(&self.file, &self.path, &stamp)? {
            Ok(()) => Ok(claimed),
            Err(why) => Ok(Claimed::Unsupported { why }),
        }
    }
}

/// How a stamp relates to the vault claiming the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// No stamp.
    Unstamped,
    /// This vault, at this path.
    Ours,
    /// Another vault, or this one at another path, that is no longer there.
    Gone,
    /// This vault's id at another path that still holds it: this vault is a copy.
    Copy,
    /// Another vault, still there.
    Other,
}

/// The decision, apart from I/O: `present` says whether the stamp's path still holds the
/// stamp's vault.
fn judge(stamp: &Stamp, id: &[u8; 16], dir: &Path, present: impl FnOnce() -> bool) -> Verdict {
    let same_id = stamp.vault_id == *id;
    if same_id && stamp.vault_path == dir.as_os_str().as_bytes() {
        Verdict::Ours
    } else if !present() {
        Verdict::Gone
    } else if same_id {
        Verdict::Copy
    } else {
        Verdict::Other
    }
}

fn stamp_path(s: &Stamp) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(s.vault_path.clone()))
}

/// Whether the stamp's path still holds the stamp's vault. A vault that cannot be read
/// for another reason than not being there counts as there.
fn vault_holds(s: &Stamp) -> bool {
    match Vault::open_read_only(&stamp_path(s)) {
        Ok(v) => v.info().vault_id == hex(&s.vault_id),
        Err(VaultError::NotAVault { .. }) => false,
        Err(VaultError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => false,
        Err(_) => true,
    }
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The manifest's vault id (32 hex digits) as bytes; anything else as zeroes (never a real
/// id: ids are hashes).
fn parse_id(hex: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    id
}

/// Whether an xattr call failed because the file cannot hold user attributes.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTSUP | libc::EPERM | libc::ENOSYS)
    )
}

fn xattr_name() -> CString {
    CString::new(XATTR).unwrap_or_default()
}

/// Reads the stamp: `Ok(Err(why))` when the file cannot hold one.
fn read_stamp(file: &File, path: &Path) -> Result<std::result::Result<Option<Stamp>, String>> {
    let name = xattr_name();
    let mut buf = vec![0u8; rewind_format::stamp::MAX_PATH + 64];
    // SAFETY: `name` is a NUL-terminated string and `buf` is valid for `buf.len()` bytes
    // of writes for the duration of the call; the fd is open.
    let n = unsafe {
        libc::fgetxattr(
            file.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(Ok(None)),
            _ if unsupported(&e) => Ok(Err(why_unsupported(file, &e))),
            _ => Err(io_err("read the protection stamp of", path)(e)),
        };
    }
    buf.truncate(n as usize);
    Stamp::decode(&buf)
        .map(|s| Ok(Some(s)))
        .map_err(|e| ProtectError::BadStamp {
            path: path.to_path_buf(),
            source: e,
        })
}

fn write_stamp(file: &File, path: &Path, stamp: &Stamp) -> Result<std::result::Result<(), String>> {
    let name = xattr_name();
    let value = stamp.encode();
    // SAFETY: `name` is NUL-terminated and `value` is valid for `value.len()` bytes of
    // reads for the duration of the call; the fd is open.
    let r = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        return Ok(Ok(()));
    }
    let e = io::Error::last_os_error();
    if unsupported(&e) {
        return Ok(Err(why_unsupported(file, &e)));
    }
    Err(io_err("write the protection stamp of", path)(e))
}

fn why_unsupported(file: &File, e: &io::Error) -> String {
    let device = file.metadata().is_ok_and(|m| !m.is_file());
    if device {
        "a block device holds no user extended attributes".to_string()
    } else {
        format!("its file system holds no user extended attributes ({e})")
    }
}

/// Who holds the lock on `file`: pid and command line from /proc, and the vault its stamp
/// names.
fn holder(file: &File) -> String {
    let mut parts = Vec::new();
    if let Some(pid) = file
        .metadata()
        .ok()
        .and_then(|m| flock_pid(m.dev(), m.ino()))
    {
        parts.push(format!("pid {pid}"));
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let words: Vec<String> = cmd
                .split(|b| *b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            if !words.is_empty() {
                parts.push(format!("`{}`", words.join(" ")));
            }
        }
    }
    if let Ok(Ok(Some(s))) = read_stamp(file, Path::new("")) {
        parts.push(format!("vault {}", stamp_path(&s).display()));
    }
    if parts.is_empty() {
        "a process that /proc/locks does not name".to_string()
    } else {
        parts.join(", ")
    }
}

/// The pid holding a flock on the inode `dev`/`ino`, from /proc/locks.
fn flock_pid(dev: u64, ino: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    find_flock(&locks, dev_major(dev), dev_minor(dev), ino)
}

/// Parses /proc/locks lines like `1: FLOCK  ADVISORY  WRITE 2374 fd:01:1573025 0 EOF`
/// (device numbers in hex); waiters (`1: -> FLOCK ...`) are skipped.
fn find_flock(locks: &str, major: u64, minor: u64, ino: u64) -> Option<u32> {
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) != Some(&"FLOCK") || f.get(5) != Some(&want.as_str()) {
            return None;
        }
        f.get(4)?.parse().ok()
    })
}

/// Linux's `MAJOR()` of an encoded `dev_t`.
fn dev_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

/// Linux's `MINOR()` of an encoded `dev_t`.
fn dev_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// Refuses a `rewind restore --to` target that is the vault's primary (by path or by
/// inode), lies inside a vault directory, is held by a running rewind process (a primary
/// being served), or is the primary of a vault that is still there (its stamp).
pub fn check_restore_target(vault: &Vault, to: &Path) -> Result<()> {
    let target = resolve_target(to)?;
    let primary = PathBuf::from(vault.info().primary);
    let target_meta = std::fs::metadata(&target).ok();
    let same_inode = match (&target_meta, std::fs::metadata(&primary)) {
        (Some(t), Ok(p)) => t.dev() == p.dev() && t.ino() == p.ino(),
        _ => false,
    };
    if same_inode || target == primary {
        return Err(ProtectError::TargetIsPrimary {
            to: to.to_path_buf(),
            primary,
        });
    }
    let own = std::fs::canonicalize(vault.dir()).unwrap_or_else(|_| vault.dir().to_path_buf());
    for dir in target.ancestors().skip(1) {
        if dir == own || is_vault_dir(dir) {
            return Err(ProtectError::TargetInVault {
                to: to.to_path_buf(),
                vault: dir.to_path_buf(),
            });
        }
    }
    if target_meta.is_none() {
        return Ok(());
    }
    let file = File::open(&target).map_err(io_err("open", to))?;
    match file.try_lock_shared() {
        Ok(()) => drop(file.unlock()),
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(ProtectError::TargetInUse {
                to: to.to_path_buf(),
                holder: holder(&file),
            })
        }
        // A file that cannot be locked cannot be held by rewind either.
        Err(std::fs::TryLockError::Error(_)) => {}
    }
    if let Ok(Ok(Some(s))) = read_stamp(&file, to) {
        if vault_holds(&s) {
            return Err(ProtectError::TargetProtected {
                to: to.to_path_buf(),
                vault: stamp_path(&s),
            });
        }
    }
    Ok(())
}

/// `to` made absolute with symlinks resolved; for a file that does not exist yet, its
/// directory's resolved path and its name.
fn resolve_target(to: &Path) -> Result<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(to) {
        return Ok(p);
    }
    let name = to.file_name().unwrap_or(to.as_os_str());
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(parent).map_err(io_err("resolve", parent))?;
    Ok(dir.join(name))
}

/// Whether `dir` is a vault: it has a base image and its checksums.
fn is_vault_dir(dir: &Path) -> bool {
    let base = dir.join(rewind_format::names::BASE_DIR);
    base.join(rewind_format::names::BASE_IMAGE).is_file()
        && base.join(rewind_format::names::BASE_SUMS).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(id: u8, path: &str) -> Stamp {
        Stamp {
            vault_id: [id; 16],
            vault_path: path.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_verdicts() {
        let ours = [1u8; 16];
        let dir = Path::new("/v/ours");
        let j = |s: &Stamp, present: bool| judge(s, &ours, dir, || present);
        assert_eq!(j(&stamp(1, "/v/ours"), true), Verdict::Ours);
        assert_eq!(j(&stamp(1, "/v/ours"), false), Verdict::Ours);
        // Same id elsewhere: a copy while the original is there, moved once it is not.
        assert_eq!(j(&stamp(1, "/v/original"), true), Verdict::Copy);
        assert_eq!(j(&stamp(1, "/v/original"), false), Verdict::Gone);
        // Another vault: refused while it is there.
        assert_eq!(j(&stamp(2, "/v/other"), true), Verdict::Other);
        assert_eq!(j(&stamp(2, "/v/other"), false), Verdict::Gone);
        // Another vault created where this one's path is now: that one is gone.
        assert_eq!(j(&stamp(2, "/v/ours"), false), Verdict::Gone);
    }

    #[test]
    fn proc_locks_lines() {
        let locks = "1: POSIX  ADVISORY  WRITE 99 fd:01:1573025 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 2374 fd:01:1573025 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 2375 fd:01:1573025 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 11 103:0a:7 0 EOF\n";
        assert_eq!(find_flock(locks, 0xfd, 1, 1_573_025), Some(2374));
        assert_eq!(find_flock(locks, 0x103, 0x0a, 7), Some(11));
        assert_eq!(find_flock(locks, 0xfd, 1, 5), None);
        // makedev(0xfd, 1) and makedev(259, 10) as glibc encodes them.
        assert_eq!((dev_major(0xfd01), dev_minor(0xfd01)), (0xfd, 1));
        let dev = (259u64 << 8) | 10;
        assert_eq!((dev_major(dev), dev_minor(dev)), (259, 10));
    }

    #[test]
    fn ids_round_trip_through_hex() {
        let id: [u8; 16] = *b"\x00\x01\x7f\x80\xff0123456789a";
        assert_eq!(parse_id(&hex(&id)), id);
        assert_eq!(parse_id("zz"), [0u8; 16]);
    }

    #[test]
    fn unsupported_errnos() {
        for e in [libc::ENOTSUP, libc::EPERM, libc::ENOSYS] {
            assert!(unsupported(&io::Error::from_raw_os_error(e)));
        }
        assert!(!unsupported(&io::Error::from_raw_os_error(libc::EIO)));
    }
}
