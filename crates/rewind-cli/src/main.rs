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
    /// The vault is held by another writer, or the primary by another rewind process.
    pub const BUSY: u8 = 4;

    /// A command line that parsed but makes no sense (a directory where a volume is
    /// wanted, a region size the vault's block size does not divide): exit code 2.
    #[derive(Debug)]
    pub struct Usage(pub String);

    impl std::fmt::Display for Usage {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Usage {}

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

    /// Work stopped by this signal: exit code 128 + the signal, as a shell reports it.
    #[derive(Debug)]
    pub struct Signalled(pub i32);

    impl std::fmt::Display for Signalled {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let name = match self.0 {
                1 => "SIGHUP",
                2 => "SIGINT",
                15 => "SIGTERM",
                _ => "a signal",
            };
            write!(f, "stopped by {name}")
        }
    }

    impl std::error::Error for Signalled {}
}

const AFTER_HELP: &str = "\
Points (--at, export names): a snapshot name; seq:N (seq:0 is the base image);
an RFC 3339 time such as 2026-11-21T10:00:00Z; a relative age such as -15m, -2h, -3d;
or now.

Exit codes: 0 ok, 1 failure (verify: discrepancies found), 2 usage, 3 vault corrupted
(check: problems found),
4 busy (another writer holds the vault, or another rewind process the primary); 128+N
stopped by signal N. With --json, an error is JSON on stdout:
{\"ok\": false, \"error\": \"...\", \"exit_code\": N}.

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
    /// Bring the primary file up to date and durable while serving (before a storage snapshot).
    Checkpoint(cmd::checkpoint::Args),
    /// Compare the primary with the vault and list the regions where they differ.
    Verify(cmd::verify::Args),
    /// Repair the vault from the primary (fix-up records) and mark suspect past intervals.
    Sync(cmd::sync::Args),
    /// Read every byte of the vault and report each damaged structure and the points it breaks.
    Check(cmd::check::Args),
    /// Mend a damaged vault from what is intact (rebuild delta maps from the write log).
    Repair(cmd::repair::Args),
}

impl Command {
    /// Whether the command was asked for JSON (its errors then are JSON too).
    fn json(&self) -> bool {
        match self {
            Command::Init(a) => a.json,
            Command::Serve(_) => false,
            Command::Snapshot(a) => a.json,
            Command::List(a) => a.json,
            Command::Restore(a) => a.json,
            Command::Status(a) => a.json,
            Command::Checkpoint(a) => a.json,
            Command::Verify(a) => a.json,
            Command::Sync(a) => a.json,
            Command::Check(a) => a.json,
            Command::Repair(a) => a.json,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e, std::env::args_os().any(|a| a == "--json")),
    };
    if !matches!(cli.command, Command::Serve(_)) {
        output::default_sigpipe();
    }
    init_logging();
    let json = cli.command.json();
    let result = match cli.command {
        Command::Init(a) => cmd::init::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Snapshot(a) => cmd::snapshot::run(a),
        Command::List(a) => cmd::list::run(a),
        Command::Restore(a) => cmd::restore::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Checkpoint(a) => cmd::checkpoint::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Sync(a) => cmd::sync::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Repair(a) => cmd::repair::run(a),
    };
    let e = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(e) => e,
    };
    if let Some(c) = e.downcast_ref::<exit::Code>() {
        // The command already said why (e.g. verify's report).
        return ExitCode::from(c.0);
    }
    let code = exit_code(&e);
    let mut message = output::describe(&e);
    if let Some(hint) = output::no_space_hint(&e) {
        message.push('\n');
        message.push_str(&hint);
    }
    fail(&message, code, json)
}

/// Log lines on stderr, filtered by $REWIND_LOG; coloured only on a terminal (and not
/// with $NO_COLOR set).
fn init_logging() {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REWIND_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
}

/// Reports a failure: `error: ...` on stderr, or with --json a JSON object on stdout
/// (`{"ok": false, "error": "...", "exit_code": N}`); exits with `code`.
fn fail(message: &str, code: u8, json: bool) -> ExitCode {
    if json {
        let v = serde_json::json!({"ok": false, "error": message, "exit_code": code});
        print_json(&v);
    } else {
        note!("error: {message}");
    }
    ExitCode::from(code)
}

fn print_json(v: &serde_json::Value) {
    say!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// A command line clap refused: exit 2 with its message (JSON with --json); --help and
/// --version print and exit 0.
fn usage_error(e: &clap::Error, json: bool) -> ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if json {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or("").trim();
        let message = first.strip_prefix("error: ").unwrap_or(first);
        return fail(message, exit::USAGE, true);
    }
    let _ = e.print();
    ExitCode::from(exit::USAGE)
}

/// Maps an error to the exit code scripts can act on.
fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(s) = e.downcast_ref::<exit::Signalled>() {
        return 128u8.saturating_add(s.0 as u8);
    }
    if e.downcast_ref::<exit::Usage>().is_some()
        || e.chain().any(|c| {
            matches!(
                c.downcast_ref::<rewind_engine::verify::VerifyError>(),
                Some(rewind_engine::verify::VerifyError::RegionSize { .. })
            )
        })
    {
        return exit::USAGE;
    }
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
        Some(VaultError::Corrupted { .. } | VaultError::ManifestDamaged { .. }) => exit::CORRUPTED,
        Some(VaultError::Locked { .. }) => exit::BUSY,
        _ => exit::FAILURE,
    }
}
