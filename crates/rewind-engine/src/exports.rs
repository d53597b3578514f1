//! The volume as NBD exports: `live` (or the empty name), read-write, and `@POINT`, any
//! kept point read-only (`@before-upgrade`, `@seq:123`, `@2026-11-21T10:00:00Z`, `@-15m`).

use std::sync::Arc;

use rewind_nbd::proto::{STATE_HOLE, STATE_ZERO};
use rewind_nbd::{Export, ExportError, Exports};
use rewind_vault::{format_time, Point, PointView, VaultError};

use crate::intercept::{InterceptError, LiveVolume};

/// How a failed operation of the live volume reaches the host: a full file system (the
/// vault's or the primary's) as ENOSPC, so that qemu's `werror=enospc` pauses the guest
/// and the write can be tried again once space is freed; a range past the end as EINVAL;
/// anything else as EIO.
fn export_error(e: InterceptError) -> ExportError {
    if e.is_no_space() {
        return ExportError::NoSpace(e.to_string());
    }
    match e {
        InterceptError::OutOfRange { .. } => ExportError::Invalid(e.to_string()),
        InterceptError::Vault(VaultError::Poisoned { .. }) => ExportError::Io(e.to_string()),
        other => ExportError::Io(other.to_string()),
    }
}

/// The live volume, read-write.
#[derive(Debug)]
pub struct LiveExport {
    volume: Arc<LiveVolume>,
}

impl LiveExport {
    pub fn new(volume: Arc<LiveVolume>) -> LiveExport {
        LiveExport { volume }
    }
}

impl Export for LiveExport {
    fn name(&self) -> &str {
        "live"
    }
    fn description(&self) -> &str {
        "the live volume (read-write; every write journaled)"
    }
    fn size(&self) -> u64 {
        self.volume.size()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn block_size(&self) -> u32 {
        self.volume.block_size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError> {
        self.volume.read(offset, buf).map_err(export_error)
    }
    fn read_nowait(&self, offset: u64, buf: &mut [u8]) -> Result<bool, ExportError> {
        self.volume.read_nowait(offset, buf).map_err(export_error)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ExportError> {
        self.volume.write(offset, data, fua).map_err(export_error)
    }
    fn write_waits(&self, len: usize) -> bool {
        self.volume.write_waits(len)
    }
    fn flush(&self) -> Result<(), ExportError> {
        self.volume.flush().map_err(export_error)
    }
    fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), ExportError> {
        self.volume
            .zero(offset, u64::from(len), true, false, fua)
            .map_err(export_error)
    }
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), ExportError> {
        self.volume
            .zero(offset, u64::from(len), false, no_hole, fua)
            .map_err(export_error)
    }
    fn block_status(
        &self,
        offset: u64,
        len: u32,
        _req_one: bool,
    ) -> Result<Vec<(u32, u32)>, ExportError> {
        Ok(self
            .volume
            .allocation(offset, u64::from(len))
            .into_iter()
            .map(|(l, hole)| (l as u32, if hole { STATE_HOLE | STATE_ZERO } else { 0 }))
            .collect())
    }
}

/// Extents one BLOCK_STATUS reply of a point export holds at most (8 bytes each on the
/// wire); a client asks again from where the answer ends.
const MAX_STATUS_EXTENTS: usize = 1024;

/// A point in time, read-only.
#[derive(Debug)]
pub struct PointExport {
    name: String,
    description: String,
    view: PointView,
}

impl PointExport {
    pub fn new(name: String, view: PointView) -> PointExport {
        let p = view.point();
        let description = format!(
            "the volume at seq {} ({}), read-only",
            p.seq,
            format_time(p.time_ns)
        );
        PointExport {
            name,
            description,
            view,
        }
    }

    fn blocks(&self, offset: u64, len: u64) -> (u64, u64) {
        let bs = u64::from(self.view.block_size());
        (offset / bs, (offset + len).div_ceil(bs))
    }
}

fn vault_error(e: VaultError) -> ExportError {
    match e {
        VaultError::OutOfRange { .. } => ExportError::Invalid(e.to_string()),
        other => ExportError::Io(other.to_string()),
    }
}

impl Export for PointExport {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn size(&self) -> u64 {
        self.view.blocks() * u64::from(self.view.block_size())
    }
    fn read_only(&self) -> bool {
        true
    }
    fn block_size(&self) -> u32 {
        self.view.block_size()
    }
    /// Reads the whole blocks inside the range straight into `buf`, and a partial block
    /// at either end through a one-block buffer: an unaligned read of 64 MiB is not held
    /// twice.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError> {
        let bs = self.view.block_size() as usize;
        let mut edge = Vec::new();
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let (block, within) = (at / bs as u64, (at % bs as u64) as usize);
            let whole = (buf.len() - done) / bs * bs;
            if within == 0 && whole > 0 {
                let part = &mut buf[done..done + whole];
                self.view.read_into(block, part).map_err(vault_error)?;
                done += whole;
                continue;
            }
            edge.resize(bs, 0);
            self.view.read_into(block, &mut edge).map_err(vault_error)?;
            let n = (bs - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&edge[within..within + n]);
            done += n;
        }
        Ok(())
    }
    fn write(&self, _: u64, _: &[u8], _: bool) -> Result<(), ExportError> {
        Err(ExportError::ReadOnly)
    }
    fn flush(&self) -> Result<(), ExportError> {
        Ok(())
    }
    fn trim(&self, _: u64, _: u32, _: bool) -> Result<(), ExportError> {
        Err(ExportError::ReadOnly)
    }
    fn write_zeroes(&self, _: u64, _: u32, _: bool, _: bool) -> Result<(), ExportError> {
        Err(ExportError::ReadOnly)
    }
    /// From the view's extents: runs that read as zeroes without reading (zeroed, trimmed,
    /// holes of the base image) are holes that read as zeroes, the rest data. At most
    /// [`MAX_STATUS_EXTENTS`] (one with REQ_ONE), so a request costs what its answer holds.
    fn block_status(
        &self,
        offset: u64,
        len: u32,
        req_one: bool,
    ) -> Result<Vec<(u32, u32)>, ExportError> {
        let bs = u64::from(self.view.block_size());
        let end = offset + u64::from(len);
        let (first, last) = self.blocks(offset, u64::from(len));
        let want = if req_one { 1 } else { MAX_STATUS_EXTENTS };
        let extents = self
            .view
            .extents_upto(first, last - first, want)
            .map_err(vault_error)?;
        let mut out: Vec<(u32, u32)> = Vec::new();
        for e in extents {
            let (from, to) = ((e.first_block * bs).max(offset), (e.end() * bs).min(end));
            let flags = if e.kind.reads_as_zero() {
                STATE_HOLE | STATE_ZERO
            } else {
                0
            };
            // Within the request, so it fits the wire's u32.
            let n = (to - from) as u32;
            match out.last_mut() {
                Some((l, f)) if *f == flags => *l += n,
                _ => out.push((n, flags)),
            }
        }
        Ok(out)
    }
}

/// Logs a warning when the point reads blocks a sync marked suspect.
fn warn_suspect(vault: &rewind_vault::Vault, name: &str, view: &PointView) {
    match vault.suspect_reads(view) {
        Ok(reads) => {
            for s in reads {
                let first: Vec<u64> = s.blocks.iter().take(16).collect();
                tracing::warn!(
                    export = name,
                    seq = %view.point().seq,
                    from = %s.interval.map_or("the base image".to_string(), |(a, b)| format!("interval {a}-{b}")),
                    blocks = s.blocks.len(),
                    first_blocks = ?first,
                    why = if s.reasons & rewind_vault::SUSPECT_UNREADABLE != 0 { "the vault's copy failed its checksum" } else { "the vault's copy differed from the primary" },
                    marked = %format_time(s.marked_ns),
                    "this point reads blocks a sync marked suspect; their data may not be what the host wrote"
                );
            }
        }
        Err(e) => tracing::warn!(export = name, error = %e, "cannot check suspect blocks"),
    }
}

/// The exports of one protected volume.
#[derive(Debug)]
pub struct VaultExports {
    live: Arc<LiveExport>,
    volume: Arc<LiveVolume>,
}

impl VaultExports {
    pub fn new(volume: Arc<LiveVolume>) -> VaultExports {
        VaultExports {
            live: Arc::new(LiveExport::new(volume.clone())),
            volume,
        }
    }
}

impl Exports for VaultExports {
    fn list(&self) -> Vec<(String, String)> {
        let mut v = vec![("live".to_string(), self.live.description().to_string())];
        for s in self.volume.vault().snapshots() {
            v.push((
                format!("@{}", s.name),
                format!("snapshot at seq {} ({})", s.seq, format_time(s.time_ns)),
            ));
        }
        v
    }

    fn open(&self, name: &str) -> Result<Arc<dyn Export>, ExportError> {
        if name.is_empty() || name == "live" {
            return Ok(self.live.clone());
        }
        let Some(point) = name.strip_prefix('@') else {
            return Err(ExportError::Unknown(format!(
                "no export named {name:?}: exports are 'live' and '@POINT' (a snapshot, seq:N, an RFC 3339 time, or -15m)"
            )));
        };
        let point: Point = point.parse().map_err(|e| refusal(name, e))?;
        let vault = self.volume.vault();
        let view = vault.view(&point).map_err(|e| refusal(name, e))?;
        warn_suspect(vault, name, &view);
        Ok(Arc::new(PointExport::new(name.to_string(), view)))
    }
}

/// Why the point export `name` cannot be opened, as its client is told: the code says what
/// kind of refusal it is (NBD_REP_ERR_INVALID: the name is not a point, or names one that
/// has not happened; NBD_REP_ERR_UNKNOWN: no such point is kept, or the vault failed), the
/// text says what to do.
fn refusal(name: &str, e: VaultError) -> ExportError {
    match e {
        VaultError::BadPoint { .. } | VaultError::FutureTime { .. } => {
            ExportError::Invalid(e.to_string())
        }
        VaultError::SeqAfterNewest { seq, newest } => ExportError::Invalid(format!(
            "point seq:{seq} is after the newest record (seq:{newest})"
        )),
        VaultError::UnknownSnapshot(_) => ExportError::Unknown(e.to_string()),
        VaultError::BeforeBase { point, base } => ExportError::Unknown(format!(
            "point {point} is before the base image (oldest point {base}, @seq:0)"
        )),
        other => ExportError::Io(format!("cannot open {name}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rewind_format::Seq;
    use rewind_nbd::proto::{REP_ERR_INVALID, REP_ERR_UNKNOWN};

    /// A full file system reaches the host as ENOSPC, whichever side is full; other
    /// failures as EIO.
    #[test]
    fn a_full_disk_is_enospc_not_eio() {
        use rewind_nbd::proto::Errno;
        let full = |op| std::io::Error::from(std::io::ErrorKind::StorageFull).to_string() + op;
        let vault_full = InterceptError::Vault(VaultError::Io {
            op: "append to",
            path: "v/log/seg-1.log".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        });
        let primary_full = InterceptError::Io {
            op: "write",
            path: "vm.img".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        let quota = InterceptError::Io {
            op: "write",
            path: "vm.img".into(),
            source: std::io::Error::from(std::io::ErrorKind::QuotaExceeded),
        };
        for e in [
            vault_full,
            primary_full,
            quota,
            InterceptError::NoSpace(full("")),
        ] {
            assert_eq!(export_error(e).errno(), Errno::NoSpc);
        }
        let eio = InterceptError::Io {
            op: "write",
            path: "vm.img".into(),
            source: std::io::Error::other("bad sector"),
        };
        assert_eq!(export_error(eio).errno(), Errno::Io);
    }

    /// Each kind of refusal gets its code, and its text is the reason itself.
    #[test]
    fn refusals_are_coded_by_kind_and_say_why() {
        let io = VaultError::Io {
            op: "read",
            path: "v/maps/map-1-2.dmap".into(),
            source: std::io::Error::other("disk on fire"),
        };
        for (e, rep, text) in [
            (
                "x:".parse::<Point>().unwrap_err(),
                REP_ERR_INVALID,
                "cannot understand point",
            ),
            (
                VaultError::FutureTime {
                    point: "2099-01-01T00:00:00Z".into(),
                    now: "2026-12-01T00:00:00Z".into(),
                },
                REP_ERR_INVALID,
                "point 2099-01-01T00:00:00Z is in the future (now is 2026-12-01T00:00:00Z)",
            ),
            (
                VaultError::SeqAfterNewest {
                    seq: Seq(9),
                    newest: Seq(4),
                },
                REP_ERR_INVALID,
                "point seq:9 is after the newest record (seq:4)",
            ),
            (
                VaultError::UnknownSnapshot("s".into()),
                REP_ERR_UNKNOWN,
                "no snapshot named \"s\"",
            ),
            (
                VaultError::BeforeBase {
                    point: "2026-01-01T00:00:00Z".into(),
                    base: "2026-02-01T00:00:00Z".into(),
                },
                REP_ERR_UNKNOWN,
                "point 2026-01-01T00:00:00Z is before the base image (oldest point 2026-02-01T00:00:00Z, @seq:0)",
            ),
            (
                io,
                REP_ERR_UNKNOWN,
                "I/O error: cannot open @p: read v/maps/map-1-2.dmap: disk on fire",
            ),
        ] {
            let r = refusal("@p", e);
            assert_eq!(r.option_reply(), rep, "{r}");
            assert!(r.to_string().starts_with(text), "{r}");
        }
    }
}
