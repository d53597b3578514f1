use std::path::PathBuf;

use anyhow::Context;
use rewind_engine::protect::{Claimed, PrimaryLock};
use rewind_vault::{Compression, CreateOptions, SealPolicy, Vault};
use serde_json::json;

use crate::output::{self, Bar};

/// Create a vault for a primary volume. The base image is a sparse copy of the primary as
/// it is now (seq 0); from then on `rewind serve` journals every write.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  rewind init --primary vm.img --vault vm.vault --compression lz4\n\nOne primary, one protector: init stamps the primary with the vault (an extended\nattribute, user.rewind.vault), and refuses a primary another vault still protects\nunless --take-over."
)]
pub struct Args {
    /// The primary volume: a raw image file or a block device
    #[arg(long, value_name = "PATH")]
    pub primary: PathBuf,
    /// Directory for the vault (must be new or empty)
    #[arg(long, value_name = "DIR")]
    pub vault: PathBuf,
    /// Block size: a power of two from 512 to 64K (4096, 4k, 64K)
    #[arg(long, default_value = "4096", value_parser = output::parse_block_size, value_name = "SIZE")]
    pub block_size: u32,
    /// Compress write records: none, lz4 (fast) or zstd (smaller)
    #[arg(long, default_value = "none", value_parser = ["none", "lz4", "zstd"])]
    pub compression: String,
    /// zstd level (with --compression zstd)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i8).range(-7..=22))]
    pub zstd_level: i8,
    /// Seal the open interval when its segment reaches this size (0: never). Each seal
    /// costs a few fsyncs while writes wait; larger segments seal less often
    #[arg(long, default_value = "256M", value_parser = output::parse_size, value_name = "SIZE")]
    pub seal_size: u64,
    /// Seal the open interval when it is this old (0: never)
    #[arg(long, default_value = "10m", value_parser = output::parse_duration_ns, value_name = "DURATION")]
    pub seal_interval: u64,
    /// Seal the open interval after this many records (0: never)
    #[arg(long, default_value_t = 65536, value_name = "N")]
    pub seal_writes: u64,
    /// Protect the primary even though its stamp names another vault that is still
    /// there (that vault then no longer follows the primary)
    #[arg(long)]
    pub take_over: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let compression = match a.compression.as_str() {
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd {
            level: a.zstd_level,
        },
        _ => Compression::None,
    };
    let opts = CreateOptions {
        primary: a.primary.clone(),
        vault: super::absolute(&a.vault),
        block_size: a.block_size,
        compression,
        seal: SealPolicy {
            bytes: a.seal_size,
            interval_ns: a.seal_interval,
            writes: a.seal_writes,
        },
    };
    if std::fs::metadata(&a.primary).is_ok_and(|m| m.is_dir()) {
        return Err(crate::exit::Usage(format!(
            "--primary {} is a directory; the primary is the volume itself: a raw image file (`truncate -s 10G vm.img` makes one) or a block device",
            a.primary.display()
        ))
        .into());
    }
    // Held while the base image is copied: no rewind process writes the primary meanwhile.
    let lock = PrimaryLock::acquire(&a.primary)?;
    lock.check_new(&a.vault, a.take_over)
        .with_context(|| format!("cannot create a vault in {}", a.vault.display()))?;
    let bar = Bar::new(a.json);
    let vault = Vault::create(&opts, &bar)
        .with_context(|| format!("cannot create a vault in {}", a.vault.display()))?;
    let info = vault.info();
    match lock.claim(&info.vault_id, &info.dir, true) {
        Ok(Claimed::Unsupported { why }) => eprintln!(
            "note: {} cannot hold a protection stamp ({why}). rewind keeps a second vault off it only while a rewind process holds it (the primary lock); see README, \"One primary, one protector\".",
            a.primary.display()
        ),
        Ok(c) => super::say_claimed(&a.primary, &info.dir, &c),
        Err(e) => eprintln!(
            "warning: cannot stamp {} as protected by this vault ({e}); `rewind serve` tries again.",
            a.primary.display()
        ),
    }
    vault.close().context("closing the new vault")?;
    if a.json {
        return output::json(&json!({
            "vault": info.dir,
            "vault_id": info.vault_id,
            "primary": info.primary,
            "volume_size": info.volume_size,
            "block_size": info.block_size,
            "created": rewind_vault::format_time(info.created_ns),
        }));
    }
    println!(
        "Created vault {} for {} ({}, {}-byte blocks).",
        info.dir.display(),
        info.primary,
        output::bytes(info.volume_size),
        info.block_size
    );
    println!(
        "The base image (seq 0) is the primary as of {}.",
        rewind_vault::format_time(info.created_ns)
    );
    println!(
        "Next: rewind serve --primary {} --vault {}",
        a.primary.display(),
        a.vault.display()
    );
    Ok(())
}
