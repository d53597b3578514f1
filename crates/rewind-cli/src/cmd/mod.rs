//! One module per subcommand.

pub mod check;
pub mod checkpoint;
pub mod init;
pub mod list;
pub mod repair;
pub mod restore;
pub mod serve;
pub mod snapshot;
pub mod status;
pub mod sync;
pub mod verify;

use std::path::{Path, PathBuf};

use anyhow::Context;
use rewind_engine::protect::{Claimed, PrimaryLock};

/// The vault a command works on: `--vault`, else `$REWIND_VAULT`, else the demo vault that
/// `rewind serve` uses.
#[derive(clap::Args, Debug, Clone)]
pub struct VaultArg {
    /// Vault directory [default: $REWIND_VAULT, else ./rewind-data/vault]
    #[arg(long, value_name = "DIR")]
    pub vault: Option<PathBuf>,
}

impl VaultArg {
    /// Absolute (symlinks resolved where it exists), so that reports name the same path
    /// whether a server or the command itself opened the vault.
    pub fn path(&self) -> PathBuf {
        let p = self
            .vault
            .clone()
            .or_else(|| std::env::var_os("REWIND_VAULT").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(serve::DEFAULT_VAULT));
        absolute(&p)
    }
}

/// `p` absolute, symlinks resolved where it exists.
pub fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// Takes the primary's lock and makes `vault` its protector (the stamp), saying what was
/// found; the lock is held while the returned guard lives. `take_over`: replace a stamp
/// that names another vault (or this vault's original, for a copy) still there.
pub fn protect(
    primary: &Path,
    vault: &rewind_vault::Vault,
    take_over: bool,
) -> anyhow::Result<PrimaryLock> {
    let lock = PrimaryLock::acquire(primary)?;
    let info = vault.info();
    let claimed = lock
        .claim(&info.vault_id, vault.dir(), take_over)
        .with_context(|| {
            format!(
                "cannot protect {} with vault {}",
                primary.display(),
                vault.dir().display()
            )
        })?;
    say_claimed(primary, vault.dir(), &claimed);
    Ok(lock)
}

/// Tells the user what claiming the primary changed, if anything.
pub fn say_claimed(primary: &Path, vault: &Path, claimed: &Claimed) {
    match claimed {
        Claimed::Replaced { previous } => crate::note!(
            "note: {} was stamped as protected by vault {}, which is no longer there; vault {} protects it now.",
            primary.display(),
            previous.display(),
            vault.display()
        ),
        Claimed::TookOver { previous } if !previous.as_os_str().is_empty() => crate::note!(
            "warning: vault {} took {} over from vault {}; that vault no longer follows the primary.",
            vault.display(),
            primary.display(),
            previous.display()
        ),
        Claimed::Unsupported { why } => tracing::info!(
            primary = %primary.display(),
            why,
            "the primary holds no protection stamp; only the primary lock keeps a second vault off it, while this process runs"
        ),
        _ => {}
    }
}
