//! The vault's single-writer lock: an exclusive advisory lock on `LOCK`, which also says
//! who holds it so that a second writer gets a useful message.

use std::path::Path;

use rewind_storage::{Open, Storage};

use crate::error::{IoContext, Result, VaultError};
use crate::fsutil::FileRef;

#[derive(Debug)]
pub(crate) struct VaultLock {
    _file: FileRef,
}

impl VaultLock {
    /// Takes the lock or says who holds it. `role` is written into the file ("serve",
    /// "snapshot", ...).
    pub(crate) fn acquire(fs: &dyn Storage, dir: &Path, role: &str) -> Result<VaultLock> {
        let path = dir.join(rewind_format::names::LOCK);
        let file = fs
            .open(
                &path,
                Open {
                    write: true,
                    create: true,
                    ..Open::default()
                },
            )
            .io("open lock file", &path)?;
        if !file.try_lock().io("lock", &path)? {
            let holder = file
                .read_all()
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                .unwrap_or_default();
            return Err(VaultError::Locked {
                path: dir.to_path_buf(),
                holder: if holder.is_empty() {
                    "unknown process".into()
                } else {
                    holder
                },
            });
        }
        let who = format!("pid {} ({})", std::process::id(), role);
        file.set_len(0).io("truncate lock file", &path)?;
        file.write_all_at(who.as_bytes(), 0)
            .io("write lock file", &path)?;
        Ok(VaultLock { _file: file })
    }
}
