//! `rewind`: continuous data protection for block volumes.

mod cmd;
mod control;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes that mean something to scripts.
pub mod exit {
    /// Something failed (I/O, bad input the command could not act on).
    pub const FAILURE: u8 = 1;
    /// The command line was wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// The vault is corrupted: a checksum, magic or structure did not match.
    pub const CORRUPTED: u8 = 3;
    /// The vault is held by another writer.
    pub const BUSY: u8 = 4;

    /// Ends the command with this exit code and no error message (the command already
    /// said why, e.g. verify's report of discrepancies).
    #[derive(Debug)]
    pub struct Code(pub u8);

    impl std::fmt::Display for Code {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "exit code {}", self.0)
        }
    }

    impl std::error::Error for Code {}
}

const AFTER_HELP: &str = "\
Points (--at, export names): a snapshot name; seq:N (seq:0 is the base image);
an RFC 3339 time such as 2026-11-21T10:00:00Z; a relative age such as -15m, -2h, -3d;
or now.

Exit codes: 0 ok, 1 failure (verify: discrepancies found), 2 usage, 3 vault corrupted,
4 vault busy (another writer).

Start with `rewind serve` (no arguments: a demo volume in ./rewind-data), or protect an
image of your own with `rewind init --primary disk.img --vault disk.vault`.";

#[derive(Parser, Debug)]
#[command(
    name = "rewind",
    version,
    about = "Continuous data protection for block volumes: every write kept, any point readable.",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start protecting a volume: create a vault whose base image is a copy of the primary.
    Init(cmd::init::Args),
    /// Serve the protected volume over NBD, journaling every write into the vault.
    Serve(cmd::serve::Args),
    /// Mark the current point with a name you can read, mount or restore later.
    Snapshot(cmd::snapshot::Args),
    /// Show the vault's snapshots and intervals (its timeline).
    #[command(alias = "timeline")]
    List(cmd::list::Args),
    /// Write a new raw image of the volume as it was at a point.
    Restore(cmd::restore::Args),
    /// Show what a running server is doing (writes, bytes, open interval, clients).
    Status(cmd::status::Args),
    /// Compare the primary with the vault and list the regions where they differ.
    Verify(cmd::verify::Args),
    /// Repair the vault from the primary (fix-up records) and mark suspect past intervals.
    Sync(cmd::sync::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REWIND_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Init(a) => cmd::init::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Snapshot(a) => cmd::snapshot::run(a),
        Command::List(a) => cmd::list::run(a),
        Command::Restore(a) => cmd::restore::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Sync(a) => cmd::sync::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<exit::Code>().is_some() => ExitCode::from(
            e.downcast_ref::<exit::Code>()
                .map_or(exit::FAILURE, |c| c.0),
        ),
        Err(e) => {
            eprintln!("error: {}", output::describe(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Maps an error to the exit code scripts can act on.
fn exit_code(e: &anyhow::Error) -> u8 {
    use rewind_engine::intercept::InterceptError;
    use rewind_engine::restore::RestoreError;
    use rewind_engine::verify::VerifyError;
    use rewind_vault::VaultError;
    let vault = e
        .chain()
        .find_map(|c| c.downcast_ref::<VaultError>())
        .or_else(|| {
            e.chain()
                .find_map(|c| match c.downcast_ref::<RestoreError>() {
                    Some(RestoreError::Vault(v)) => Some(v),
                    Some(RestoreError::Intercept(InterceptError::Vault(v))) => Some(v),
                    _ => None,
                })
        })
        .or_else(|| {
            e.chain()
                .find_map(|c| match c.downcast_ref::<InterceptError>() {
                    Some(InterceptError::Vault(v)) => Some(v),
                    _ => None,
                })
        })
        .or_else(|| {
            e.chain()
                .find_map(|c| match c.downcast_ref::<VerifyError>() {
                    Some(VerifyError::Vault(v)) => Some(v),
                    Some(VerifyError::Intercept(InterceptError::Vault(v))) => Some(v),
                    _ => None,
                })
        });
    if let Some(rewind_engine::protect::ProtectError::Held { .. }) = e
        .chain()
        .find_map(|c| c.downcast_ref::<rewind_engine::protect::ProtectError>())
    {
        return exit::BUSY;
    }
    match vault {
        Some(VaultError::Corrupted { .. }) => exit::CORRUPTED,
        Some(VaultError::Locked { .. }) => exit::BUSY,
        _ => exit::FAILURE,
    }
}
