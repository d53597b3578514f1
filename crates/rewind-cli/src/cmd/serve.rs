use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rewind_vault::{Compression, CreateOptions, SealPolicy, Vault};

use crate::output::{self, Bar};

pub const DEFAULT_DIR: &str = "rewind-data";
pub const DEFAULT_VAULT: &str = "rewind-data/vault";
pub const DEFAULT_PRIMARY: &str = "rewind-data/volume.img";

/// Serve the protected volume over NBD. With no arguments it protects a demo volume,
/// ./rewind-data/volume.img (1 GiB, sparse, created if missing), in ./rewind-data/vault.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The primary volume [default: ./rewind-data/volume.img]
    #[arg(long, value_name = "PATH")]
    pub primary: Option<PathBuf>,
    /// The vault [default: ./rewind-data/vault]
    #[arg(long, value_name = "DIR")]
    pub vault: Option<PathBuf>,
    /// TCP address to listen on (loopback unless you say otherwise)
    #[arg(long, default_value = "127.0.0.1:10809", value_name = "HOST:PORT")]
    pub listen: String,
    /// Unix socket to listen on [default: ./rewind-data/nbd.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Size of the demo volume when it has to be created
    #[arg(long, default_value = "1G", value_parser = output::parse_size, value_name = "SIZE")]
    pub demo_size: u64,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let primary = a
        .primary
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PRIMARY));
    let vault_dir = a
        .vault
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VAULT));
    if a.primary.is_none() && a.vault.is_none() {
        prepare_demo(&primary, &vault_dir, a.demo_size)?;
    }
    let vault = Vault::open_as(&vault_dir, "rewind serve")
        .with_context(|| format!("cannot open vault {}", vault_dir.display()))?;
    let info = vault.info();
    let size = std::fs::metadata(&primary)
        .with_context(|| format!("cannot open primary {}", primary.display()))?
        .len();
    if size != info.volume_size {
        bail!(
            "primary {} is {} bytes but vault {} protects a {}-byte volume; is this the right primary?",
            primary.display(),
            size,
            vault_dir.display(),
            info.volume_size
        );
    }
    vault.close()?;
    println!(
        "Vault {} protects {} ({}).",
        vault_dir.display(),
        primary.display(),
        output::bytes(size)
    );
    println!();
    println!(
        "not yet: the NBD intercept layer (`rewind serve` listening on {}) is the next",
        a.listen
    );
    println!("milestone. Until then the vault works from the command line:");
    println!(
        "  rewind snapshot before-upgrade --vault {}",
        vault_dir.display()
    );
    println!("  rewind list --vault {}", vault_dir.display());
    println!(
        "  rewind restore --vault {} --at before-upgrade --to restored.img",
        vault_dir.display()
    );
    Ok(())
}

/// Creates the demo volume and its vault if they are missing.
fn prepare_demo(primary: &Path, vault: &Path, size: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(DEFAULT_DIR).with_context(|| format!("cannot create {DEFAULT_DIR}"))?;
    if !primary.exists() {
        let f = std::fs::File::create(primary)
            .with_context(|| format!("cannot create {}", primary.display()))?;
        f.set_len(size)
            .with_context(|| format!("cannot size {}", primary.display()))?;
        println!(
            "Created demo volume {} ({}, sparse).",
            primary.display(),
            output::bytes(size)
        );
    }
    let has_vault = std::fs::read_dir(vault)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if !has_vault {
        let opts = CreateOptions {
            primary: primary.to_path_buf(),
            vault: vault.to_path_buf(),
            block_size: rewind_format::DEFAULT_BLOCK_SIZE,
            compression: Compression::None,
            seal: SealPolicy::default(),
        };
        Vault::create(&opts, &Bar::new(false))
            .with_context(|| format!("cannot create vault {}", vault.display()))?
            .close()?;
        println!("Created vault {}.", vault.display());
    }
    Ok(())
}
