//! Points in time, as users write them.
//!
//! | form | meaning |
//! | --- | --- |
//! | `now`, `latest` | the newest record |
//! | `seq:N` | the state after record N (`seq:0` is the base image) |
//! | `2026-11-21T10:00:00Z` | RFC 3339: the state after the last record at or before then |
//! | `-15m`, `-2h`, `-3d`, `-1h30m` | that long before now (units s, m, h, d, w) |
//! | anything else | a snapshot name |

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rewind_format::Seq;

use crate::error::VaultError;

/// A point in time, before it is resolved against a vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// The newest record.
    Latest,
    /// The state after this record.
    Seq(Seq),
    /// The state at a named snapshot.
    Snapshot(String),
    /// The state after the last record at or before this UTC time (ns since the epoch).
    Time(i64),
    /// That long before now.
    Ago(Duration),
}

/// A point resolved against a vault: a seq, and the time of that record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedPoint {
    pub seq: Seq,
    /// Timestamp of the record at `seq` (the base image's time for seq 0).
    pub time_ns: i64,
}

impl FromStr for Point {
    type Err = VaultError;

    fn from_str(s: &str) -> Result<Point, VaultError> {
        let bad = |why| VaultError::BadPoint {
            input: s.to_string(),
            why,
        };
        let s = s.trim();
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s == "now" || s == "latest" {
            return Ok(Point::Latest);
        }
        if let Some(n) = s.strip_prefix("seq:") {
            return n
                .parse()
                .map(|n| Point::Seq(Seq(n)))
                .map_err(|_| bad("seq:N needs a whole number"));
        }
        if let Some(rel) = s.strip_prefix('-') {
            return parse_age(rel).map(Point::Ago).ok_or(bad(
                "relative points look like -30s, -15m, -2h, -3d, -1w or -1h30m",
            ));
        }
        if looks_like_time(s) {
            let t = chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| bad("times are RFC 3339, e.g. 2026-11-21T10:00:00Z"))?;
            // Past 2262 or before 1677 does not fit in i64 ns: clamp, so that resolving says
            // "in the future" or "before the base image" like for any other such time.
            let ns = t.timestamp_nanos_opt().unwrap_or(if t.timestamp() > 0 {
                i64::MAX
            } else {
                i64::MIN
            });
            return Ok(Point::Time(ns));
        }
        check_snapshot_name(s).map_err(|e| match e {
            VaultError::BadSnapshotName { why, .. } => bad(why),
            other => other,
        })?;
        Ok(Point::Snapshot(s.to_string()))
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::Latest => f.write_str("now"),
            Point::Seq(s) => write!(f, "seq:{s}"),
            Point::Snapshot(n) => f.write_str(n),
            Point::Time(ns) => f.write_str(&format_time(*ns)),
            Point::Ago(d) => write!(f, "-{}s", d.as_secs()),
        }
    }
}

fn looks_like_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

fn parse_age(s: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut num: Option<u64> = None;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(
                num.unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(u64::from(d))?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return None,
        };
        total = total.checked_add(num.take()?.checked_mul(unit)?)?;
    }
    if num.is_some() || total == 0 {
        return None;
    }
    Some(Duration::from_secs(total))
}

/// Snapshot names: 1 to 128 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit, not
/// shaped like another kind of point.
pub fn check_snapshot_name(name: &str) -> Result<(), VaultError> {
    let bad = |why| {
        Err(VaultError::BadSnapshotName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() || name.len() > rewind_format::record::MAX_MARKER_NAME {
        return bad("names are 1 to 128 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return bad("names use only letters, digits, '.', '_' and '-'");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("names start with a letter or digit");
    }
    if matches!(name, "now" | "latest" | "live") || looks_like_time(name) {
        return bad("that name is reserved for another kind of point");
    }
    Ok(())
}

/// Formats ns since the epoch as RFC 3339 UTC with the precision needed.
pub fn format_time(ns: i64) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(ns);
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Now, in ns since the epoch.
pub fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("now".parse::<Point>().ok(), Some(Point::Latest));
        assert_eq!("seq:42".parse::<Point>().ok(), Some(Point::Seq(Seq(42))));
        assert_eq!(
            "-15m".parse::<Point>().ok(),
            Some(Point::Ago(Duration::from_secs(900)))
        );
        assert_eq!(
            "-1h30m".parse::<Point>().ok(),
            Some(Point::Ago(Duration::from_secs(5400)))
        );
        assert_eq!(
            "-3d".parse::<Point>().ok(),
            Some(Point::Ago(Duration::from_secs(3 * 86400)))
        );
        assert_eq!(
            "2026-11-21T10:00:00Z".parse::<Point>().ok(),
            Some(Point::Time(1_795_255_200_000_000_000))
        );
        assert_eq!(
            "2026-11-21T11:00:00+01:00".parse::<Point>().ok(),
            Some(Point::Time(1_795_255_200_000_000_000))
        );
        assert_eq!(
            "before-upgrade".parse::<Point>().ok(),
            Some(Point::Snapshot("before-upgrade".into()))
        );
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        for s in [
            "",
            "seq:x",
            "-15",
            "-15q",
            "-m",
            "2026-13-01T00:00:00Z",
            "a b",
            "@x",
            "-0s",
        ] {
            assert!(
                matches!(s.parse::<Point>(), Err(VaultError::BadPoint { .. })),
                "{s:?}"
            );
        }
    }

    #[test]
    fn snapshot_names() {
        assert!(check_snapshot_name("daily.2026-11-21_a").is_ok());
        for bad in [
            "",
            "-x",
            ".x",
            "a/b",
            "now",
            "live",
            "2026-11-21",
            &"x".repeat(129),
        ] {
            assert!(check_snapshot_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn time_round_trips_through_its_format() {
        let ns = 1_763_719_200_123_456_789;
        assert_eq!(format_time(ns).parse::<Point>().ok(), Some(Point::Time(ns)));
    }
}
