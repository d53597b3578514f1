//! Human and machine output: sizes, times, progress bars, JSON.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// `println!` that never panics: for the server, whose stdout may be a pipe that was
/// closed or a terminal that hung up (it ignores SIGPIPE, so a write fails instead).
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` that never panics (see [`say!`]).
#[macro_export]
macro_rules! note {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// Gives SIGPIPE its default action back (Rust ignores it, so that `rewind list | head -1`
/// would panic on the closed pipe): a command whose reader went away ends quietly, like
/// any Unix tool. Not for `rewind serve`, whose clients may go away at any time.
pub fn default_sigpipe() {
    // SAFETY: installs the default disposition, no handler code; called at the start of
    // main, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// SIGINT, SIGTERM and SIGHUP, caught for long work that must clean up when stopped (a
/// restore removes its partial image): the work sees [`StopSignals::flag`] and stops.
pub struct StopSignals {
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    signal: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl StopSignals {
    pub fn install() -> anyhow::Result<StopSignals> {
        use anyhow::Context;
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let s = StopSignals {
            flag: Default::default(),
            signal: Default::default(),
        };
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal_hook::flag::register_usize(sig, s.signal.clone(), sig as usize)
                .and_then(|_| signal_hook::flag::register(sig, s.flag.clone()))
                .context("installing signal handlers")?;
        }
        Ok(s)
    }

    pub fn flag(&self) -> &std::sync::atomic::AtomicBool {
        &self.flag
    }

    /// The work's error; when a signal stopped the work, wrapped in
    /// [`crate::exit::Signalled`] (exit code 128 + the signal, as a shell reports it).
    pub fn exit_code<E>(&self, e: E) -> anyhow::Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        match self.signal.load(std::sync::atomic::Ordering::Relaxed) {
            0 => e.into(),
            sig => anyhow::Error::new(e).context(crate::exit::Signalled(sig as i32)),
        }
    }
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn new(hidden: bool) -> Bar {
        let bar = if hidden {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar { bar }
    }

    /// Shows a progress line a server sent over the control socket.
    pub fn relay(&self, p: &serde_json::Value) {
        use rewind_vault::Progress;
        if let Some(what) = p["what"].as_str() {
            self.start(what, p["total"].as_u64().unwrap_or(0));
        }
        if let Some(done) = p["done"].as_u64() {
            self.bar.set_position(done);
        }
    }

    /// Removes the bar from the terminal.
    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }
}

impl rewind_vault::Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        let short = what.split_whitespace().next().unwrap_or(what);
        self.bar.reset();
        self.bar.set_message(short.to_string());
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.enable_steady_tick(Duration::from_millis(200));
    }
    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// 1536 -> "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// "64M", "1G", "4096", "1.5GiB" -> bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4096, 64M or 1G"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    Ok((n * mult as f64) as u64)
}

/// A vault block size: "4096", "4k", "64K" -> bytes; a power of two from 512 to 64 KiB.
pub fn parse_block_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    match u32::try_from(n) {
        Ok(bs) if rewind_format::valid_block_size(bs) => Ok(bs),
        _ => Err(format!(
            "block size {s} is not a power of two from 512 to 64K (e.g. 4096 or 4k)"
        )),
    }
}

/// A verify/sync region size: "64K", "1M" -> bytes; at most 64 MiB, whole 512-byte
/// sectors (the vault's block size must divide it too; that is checked when the vault is
/// open).
pub fn parse_region_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    let max = rewind_engine::verify::MAX_REGION_SIZE;
    if n > max {
        return Err(format!(
            "region size {s} is larger than the largest, {} ({max} bytes)",
            bytes(max)
        ));
    }
    if n == 0 || n % 512 != 0 {
        return Err(format!(
            "region size {s} is not a whole number of blocks (a multiple of the vault's block size, e.g. 64K)"
        ));
    }
    Ok(n)
}

/// A point as `--at` takes it (kept as written: it is echoed back); a name is checked
/// when the vault is open.
pub fn parse_point(s: &str) -> Result<String, String> {
    s.parse::<rewind_vault::Point>()
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// A snapshot name: letters, digits, '.', '_' and '-', starting with a letter or digit.
pub fn parse_snapshot_name(s: &str) -> Result<String, String> {
    rewind_vault::check_snapshot_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// "10m", "30s", "2h", "0" -> ns.
pub fn parse_duration_ns(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t == "0" || t == "off" {
        return Ok(0);
    }
    match format!("-{t}").parse::<rewind_vault::Point>() {
        Ok(rewind_vault::Point::Ago(d)) => Ok(d.as_nanos() as u64),
        _ => Err(format!(
            "{s:?} is not a duration like 30s, 10m, 2h or 1d (0 turns it off)"
        )),
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The error and its causes, joined by ": ", leaving out a cause whose text the message
/// already ends with (our typed errors print their source themselves, and `{:#}` would say
/// it twice: "... No such file or directory (os error 2): No such file or directory (os
/// error 2)").
pub fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// What to do when a command failed because a file system is full (ENOSPC, EDQUOT): which
/// one, and that nothing acknowledged is lost by waiting.
pub fn no_space_hint(e: &anyhow::Error) -> Option<String> {
    use rewind_engine::intercept::InterceptError;
    use rewind_vault::VaultError;
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        }) || c
            .downcast_ref::<VaultError>()
            .is_some_and(VaultError::is_no_space)
            || c.downcast_ref::<InterceptError>()
                .is_some_and(InterceptError::is_no_space)
    });
    if !full {
        return None;
    }
    use rewind_engine::verify::VerifyError;
    let of_intercept = |i: &InterceptError| match i {
        InterceptError::Io { path, .. } | InterceptError::Vault(VaultError::Io { path, .. }) => {
            Some(path.clone())
        }
        _ => None,
    };
    let path = e.chain().find_map(|c| {
        if let Some(VaultError::Io { path, .. }) = c.downcast_ref::<VaultError>() {
            return Some(path.clone());
        }
        if let Some(i) = c.downcast_ref::<InterceptError>() {
            return of_intercept(i);
        }
        match c.downcast_ref::<VerifyError>() {
            Some(VerifyError::Vault(VaultError::Io { path, .. })) => Some(path.clone()),
            Some(VerifyError::Intercept(i)) => of_intercept(i),
            _ => None,
        }
    });
    let place = path.map_or("the file system".to_string(), |p| {
        format!("the file system holding {}", p.display())
    });
    Some(format!(
        "{place} is full: free some space there (or give the vault more room), then run this again. What the vault already acknowledged is on disk or comes back from the primary when `rewind serve` starts (its dirty region log lists what to compare)."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Like our typed errors: the message names its source, which is also its `source()`.
    #[derive(Debug)]
    struct Create {
        path: String,
        source: std::io::Error,
    }

    impl std::fmt::Display for Create {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "create {}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Create {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_the_message_already_names_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Create {
            path: "vault/maps/x.tmp".into(),
            source: io,
        })
        .context("final flush and seal");
        assert_eq!(
            describe(&e),
            "final flush and seal: create vault/maps/x.tmp: no such file"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&plain), "outer: inner");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("x").is_err());
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(parse_duration_ns("10m"), Ok(600_000_000_000));
        assert_eq!(parse_duration_ns("0"), Ok(0));
    }

    #[test]
    fn block_and_region_sizes() {
        assert_eq!(parse_block_size("4k"), Ok(4096));
        assert_eq!(parse_block_size("512"), Ok(512));
        assert_eq!(parse_block_size("64K"), Ok(65536));
        for bad in ["3000", "256", "128K", "1M", "x"] {
            assert!(parse_block_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_region_size("64M"), Ok(64 << 20));
        assert!(parse_region_size("128M").is_err_and(|e| e.contains("larger than the largest")));
        assert!(parse_region_size("1000").is_err());
        assert!(parse_region_size("0").is_err());
    }
}
