//! The vault's single-writer lock: an exclusive advisory lock on `LOCK`, which also says
//! who holds it so that a second writer gets a useful message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{IoContext, Result, VaultError};

#[derive(Debug)]
pub(crate) struct VaultLock {
    _file: File,
}

impl VaultLock {
    /// Takes the lock or says who holds it. `role` is written into the file ("serve",
    /// "snapshot", ...).
    pub(crate) fn acquire(dir: &Path, role: &str) -> Result<VaultLock> {
        let path = dir.join(rewind_format::names::LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .io("open lock file", &path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim().to_string();
                return Err(VaultError::Locked {
                    path: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "unknown process".into()
                    } else {
                        holder
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e).io("lock", &path),
        }
        file.set_len(0).io("truncate lock file", &path)?;
        file.seek(SeekFrom::Start(0)).io("seek lock file", &path)?;
        write!(file, "pid {} ({})", std::process::id(), role).io("write lock file", &path)?;
        Ok(VaultLock { _file: file })
    }
}
