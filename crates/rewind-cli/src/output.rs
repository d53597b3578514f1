//! Human and machine output: sizes, times, progress bars, JSON.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

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
}
