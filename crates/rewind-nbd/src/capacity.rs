//! What clients may use of the server: connections, worker threads, request memory.
//!
//! One [`Capacity`] is shared by every connection of a server. A connection is admitted
//! ([`Capacity::admit`]) or refused with a reason the client prints
//! ([`crate::refuse_connection`]); its worker threads beyond its own are taken from the
//! server's [`Bounds::max_threads`], one at a time, when a request would otherwise wait
//! for one; and its request payloads plus queued replies stay within
//! [`Bounds::max_request_memory`] (the connection stops reading requests until its
//! client has read enough replies, so TCP's flow control holds the client back).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Worker threads one connection may have at most (its own included): requests that wait
/// on the disk at once.
pub const WORKERS_PER_CONNECTION: usize = 32;

/// The server's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Bytes of request payloads (WRITE data read, READ data being read or not yet sent)
    /// and queued replies one connection holds at most. A single request larger than this
    /// is still served, alone.
    pub max_request_memory: usize,
    /// Connections served at once; one more is refused with a reason.
    pub max_connections: usize,
    /// Worker threads over all connections, besides each connection's own thread.
    pub max_threads: usize,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            max_request_memory: 64 << 20,
            max_connections: 256,
            max_threads: 512,
        }
    }
}

/// The limits and what is in use of them.
#[derive(Debug, Default)]
pub struct Capacity {
    bounds: Bounds,
    connections: AtomicUsize,
    threads: AtomicUsize,
    refusing: AtomicUsize,
}

/// Refusals answered at once at most; beyond them an over-limit connection is closed
/// without a word (each refusal holds a thread for as long as its client takes).
const MAX_REFUSING: usize = 16;

impl Capacity {
    pub fn new(bounds: Bounds) -> Capacity {
        Capacity {
            bounds,
            ..Capacity::default()
        }
    }

    pub fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    /// A place for one more connection, held until the [`Admitted`] is dropped; `None`
    /// when [`Bounds::max_connections`] are served.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        take(&self.connections, self.bounds.max_connections).then(|| Admitted(self.clone()))
    }

    /// A place for one more refusal in progress (see [`MAX_REFUSING`]).
    pub fn refusing(self: &Arc<Self>) -> Option<Refusing> {
        take(&self.refusing, MAX_REFUSING).then(|| Refusing(self.clone()))
    }

    /// The reason an over-limit client is given.
    pub fn refusal_text(&self) -> String {
        format!(
            "the server serves at most {} connections at once and all are in use; try again later (`rewind serve --max-connections` raises the limit)",
            self.bounds.max_connections
        )
    }

    /// Connections served now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Worker threads running now, besides the connections' own.
    pub fn threads(&self) -> usize {
        self.threads.load(Ordering::Relaxed)
    }

    /// One worker thread more, if [`Bounds::max_threads`] allows.
    pub(crate) fn take_thread(&self) -> bool {
        take(&self.threads, self.bounds.max_threads)
    }

    pub(crate) fn give_thread(&self) {
        self.threads.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one more in `n` unless it is at `max`.
fn take(n: &AtomicUsize, max: usize) -> bool {
    n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
        (c < max).then_some(c + 1)
    })
    .is_ok()
}

/// One admitted connection; its place is free again when this is dropped.
#[derive(Debug)]
pub struct Admitted(Arc<Capacity>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One refusal in progress.
#[derive(Debug)]
pub struct Refusing(Arc<Capacity>);

impl Drop for Refusing {
    fn drop(&mut self) {
        self.0.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_beyond_the_limit_are_not_admitted_until_one_ends() {
        let c = Arc::new(Capacity::new(Bounds {
            max_connections: 2,
            ..Bounds::default()
        }));
        let a = c.admit();
        let b = c.admit();
        assert!(a.is_some() && b.is_some());
        assert!(c.admit().is_none());
        assert_eq!(c.connections(), 2);
        drop(a);
        assert!(c.admit().is_some(), "a place is free again");
        assert!(c.refusal_text().contains("at most 2 connections"));
        assert!(c.refusal_text().contains("--max-connections"));
    }

    #[test]
    fn threads_stop_at_the_limit() {
        let c = Capacity::new(Bounds {
            max_threads: 1,
            ..Bounds::default()
        });
        assert!(c.take_thread());
        assert!(!c.take_thread());
        c.give_thread();
        assert!(c.take_thread());
        assert_eq!(c.threads(), 1);
    }
}
