//! Intents: multi-step work that the manifest records before the first step touches
//! anything, so that a crash, a kill or a Ctrl-C leaves a record of what was under way and
//! the next opener can finish it (DESIGN.md, "Catalog": intents of fade, compaction,
//! rewind, resync). Stored in the manifest from version 3 on; the manifest's crc covers
//! them.
//!
//! ```text
//! intents: u32 n, n * { kind u8, u32 len, payload[len] }
//! kind 1, restore in place:
//!   target_seq u64 | target_time i64 | started_ns i64
//!   u16 len + UTF-8 undo snapshot name | u16 len + UTF-8 point as the user wrote it
//! kind 2, serving (a live volume is open on the primary):
//!   boot_id [16] | checkpoint_seq u64
//! ```
//!
//! "Serving" is the fact recovery needs that must not live only in the dirty region log:
//! a server ran in that boot of the machine, and the primary was synced up to that seq. If
//! it is still there when the vault is opened, the last stop was not clean; in another boot,
//! the machine crashed and the primary may lack writes since the checkpoint, whatever the
//! dirty region log (missing, zeroed, damaged, moved) says.
//!
//! An unknown kind is an error, never skipped: a build that does not know an intent cannot
//! finish it, and must not open the vault as if nothing were under way.

use crate::codec::{Reader, Writer};
use crate::{DecodeError, Seq};

const WHAT: &str = "manifest intent";
const KIND_RESTORE_IN_PLACE: u8 = 1;
const KIND_SERVING: u8 = 2;

/// Work under way that the next opener of the vault must finish (or supersede).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Intent {
    /// The primary is being brought back to a point by copying the blocks changed since;
    /// until it is done the primary is neither that point nor the one before.
    RestoreInPlace(RestoreInPlace),
    /// A live volume is open on the primary (see the module doc).
    Serving(Serving),
}

/// A live volume is open: in which boot, and how far the primary is synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serving {
    pub boot_id: [u8; 16],
    /// Every record up to this seq is durable in the primary.
    pub checkpoint_seq: Seq,
}

/// An in-place restore under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreInPlace {
    /// The point the primary is being brought to.
    pub target_seq: Seq,
    pub target_time_ns: i64,
    /// When the restore started.
    pub started_ns: i64,
    /// The snapshot that keeps the state before the restore (taken right after the intent
    /// is committed, before any block is copied).
    pub undo_snapshot: String,
    /// The point as the user wrote it (for messages).
    pub point: String,
}

impl Intent {
    pub(crate) fn encode(&self, w: &mut Writer<'_>) {
        match self {
            Intent::RestoreInPlace(r) => {
                let mut payload = Vec::new();
                let mut p = Writer(&mut payload);
                p.u64(r.target_seq.0);
                p.i64(r.target_time_ns);
                p.i64(r.started_ns);
                p.short_bytes(r.undo_snapshot.as_bytes());
                p.short_bytes(r.point.as_bytes());
                w.u8(KIND_RESTORE_IN_PLACE);
                w.u32(payload.len() as u32);
                w.bytes(&payload);
            }
            Intent::Serving(s) => {
                w.u8(KIND_SERVING);
                w.u32(24);
                w.bytes(&s.boot_id);
                w.u64(s.checkpoint_seq.0);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Intent, DecodeError> {
        let kind_at = r.pos();
        let kind = r.u8()?;
        let len = r.u32()? as usize;
        let at = r.pos();
        let payload = r.take(len)?;
        match kind {
            KIND_RESTORE_IN_PLACE => {
                let mut p = Reader::new(payload, WHAT);
                let target_seq = Seq(p.u64()?);
                let target_time_ns = p.i64()?;
                let started_ns = p.i64()?;
                let undo_snapshot = text(p.short_bytes()?, at, "undo snapshot name")?;
                let point = text(p.short_bytes()?, at, "point")?;
                if p.pos() != payload.len() {
                    return Err(DecodeError::invalid(at + p.pos(), WHAT, "trailing bytes"));
                }
                Ok(Intent::RestoreInPlace(RestoreInPlace {
                    target_seq,
                    target_time_ns,
                    started_ns,
                    undo_snapshot,
                    point,
                }))
            }
            KIND_SERVING => {
                if payload.len() != 24 {
                    return Err(DecodeError::invalid(at, WHAT, "serving intent length"));
                }
                let mut p = Reader::new(payload, WHAT);
                let mut boot_id = [0u8; 16];
                boot_id.copy_from_slice(p.take(16)?);
                Ok(Intent::Serving(Serving {
                    boot_id,
                    checkpoint_seq: Seq(p.u64()?),
                }))
            }
            _ => Err(DecodeError::invalid(kind_at, WHAT, "unknown intent kind")),
        }
    }
}

fn text(b: &[u8], at: usize, what: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::invalid(at, WHAT, what))
}
