//! Injected faults: the Nth operation of a kind fails with EIO or ENOSPC, once or from then
//! on (optionally only on paths containing a given text).

use std::io;

/// The kinds of operation a fault can hit; [`crate::SimStats`] counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Read,
    Write,
    /// `sync_data` or `sync_all` of a file.
    Sync,
    /// `sync_dir`.
    SyncDir,
    /// An open that creates a file.
    Create,
    Rename,
    Remove,
    SetLen,
    /// `zero_range` (punch or zero).
    Zero,
}

impl OpKind {
    pub const ALL: [OpKind; 9] = [
        OpKind::Read,
        OpKind::Write,
        OpKind::Sync,
        OpKind::SyncDir,
        OpKind::Create,
        OpKind::Rename,
        OpKind::Remove,
        OpKind::SetLen,
        OpKind::Zero,
    ];
}

/// The error a fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// EIO: the device failed.
    Eio,
    /// ENOSPC: the file system is full.
    Enospc,
}

impl FaultKind {
    pub(crate) fn error(self) -> io::Error {
        match self {
            FaultKind::Eio => io::Error::from_raw_os_error(libc::EIO),
            FaultKind::Enospc => io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub op: OpKind,
    /// The first operation of that kind to fail (1: the first one), counted over the paths
    /// the fault applies to.
    pub nth: u64,
    pub kind: FaultKind,
    /// Fail every operation of that kind from the Nth on (else only the Nth).
    pub sticky: bool,
    /// Only operations on paths containing this text count (`None`: all).
    pub path_contains: Option<String>,
    /// `path_contains` must be the whole path, not a part of it.
    pub path_exact: bool,
    /// Once it has hit, a sticky fault fails that kind of operation on every path (a
    /// device that died, a file system that filled up), not only on the paths it counts.
    pub everywhere: bool,
    /// A failing write lands its first half (whole sectors) before it fails, as a device
    /// that dies part way may leave it.
    pub torn: bool,
    /// Operations of this kind on matching paths seen so far.
    pub(crate) seen: u64,
}

impl Fault {
    /// The Nth operation of `op` fails with `kind`, once.
    pub fn once(op: OpKind, nth: u64, kind: FaultKind) -> Fault {
        Fault {
            op,
            nth,
            kind,
            sticky: false,
            path_contains: None,
            path_exact: false,
            everywhere: false,
            torn: false,
            seen: 0,
        }
    }

    /// Every operation of `op` from the Nth on fails with `kind`.
    pub fn from_then_on(op: OpKind, nth: u64, kind: FaultKind) -> Fault {
        Fault {
            sticky: true,
            ..Fault::once(op, nth, kind)
        }
    }

    /// A failing write lands its first half first (see [`Fault::torn`]'s field).
    pub fn torn(self) -> Fault {
        Fault { torn: true, ..self }
    }

    /// Only on paths containing `text`.
    pub fn on_paths(self, text: &str) -> Fault {
        Fault {
            path_contains: Some(text.to_string()),
            ..self
        }
    }

    /// Only on exactly `path`.
    pub fn on_path(self, path: &std::path::Path) -> Fault {
        Fault {
            path_contains: Some(path.to_string_lossy().into_owned()),
            path_exact: true,
            ..self
        }
    }

    /// A sticky fault that, once it hit, fails its kind of operation on every path.
    pub fn everywhere(self) -> Fault {
        Fault {
            everywhere: true,
            ..self
        }
    }
}

/// The faults of a [`crate::SimStorage`]. A failed sync drops the data it did not make
/// durable (`lose_unsynced_on_failed_sync`, on by default): Linux marks such pages clean
/// after a writeback error and may evict them, and the next sync then reports success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultPlan {
    pub faults: Vec<Fault>,
    pub lose_unsynced_on_failed_sync: bool,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            faults: Vec::new(),
            lose_unsynced_on_failed_sync: true,
        }
    }
}

impl FaultPlan {
    pub fn new(faults: Vec<Fault>) -> FaultPlan {
        FaultPlan {
            faults,
            ..FaultPlan::default()
        }
    }

    /// Counts an operation; its error if a fault hits it, and whether the fault tears a
    /// write.
    pub(crate) fn check(
        &mut self,
        op: OpKind,
        path: &std::path::Path,
    ) -> Option<(io::Error, bool)> {
        let mut hit: Option<(FaultKind, bool)> = None;
        for f in &mut self.faults {
            if f.op != op {
                continue;
            }
            if f.sticky && f.everywhere && f.seen >= f.nth {
                hit.get_or_insert((f.kind, f.torn));
                continue;
            }
            if let Some(t) = &f.path_contains {
                let p = path.to_string_lossy();
                let matches = if f.path_exact {
                    p == t.as_str()
                } else {
                    p.contains(t.as_str())
                };
                if !matches {
                    continue;
                }
            }
            f.seen += 1;
            if f.seen == f.nth || (f.sticky && f.seen > f.nth) {
                hit.get_or_insert((f.kind, f.torn));
            }
        }
        hit.map(|(k, torn)| (k.error(), torn))
    }
}
