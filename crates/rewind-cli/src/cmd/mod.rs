//! One module per subcommand.

pub mod init;
pub mod list;
pub mod restore;
pub mod serve;
pub mod snapshot;
pub mod status;
pub mod sync;
pub mod verify;

use std::path::PathBuf;

/// The vault a command works on: `--vault`, else `$REWIND_VAULT`, else the demo vault that
/// `rewind serve` uses.
#[derive(clap::Args, Debug, Clone)]
pub struct VaultArg {
    /// Vault directory [default: $REWIND_VAULT, else ./rewind-data/vault]
    #[arg(long, value_name = "DIR")]
    pub vault: Option<PathBuf>,
}

impl VaultArg {
    pub fn path(&self) -> PathBuf {
        self.vault
            .clone()
            .or_else(|| std::env::var_os("REWIND_VAULT").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(serve::DEFAULT_VAULT))
    }
}
