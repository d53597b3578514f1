//! The reply side of a connection, and the bound on the memory its requests hold.
//!
//! Replies are queued, and whoever finds nobody sending becomes the sender and writes out
//! everything queued until the queue is empty. The leader (see [`crate::workers`]) never
//! waits for another's reply to be written, except when the connection's budget is
//! spent; a worker with a large reply does (see [`Replies::send_large`]).
//!
//! The budget ([`crate::capacity::Bounds::max_request_memory`]) counts every byte a
//! request holds until its reply is on the socket: a WRITE's payload from before it is
//! read until it is written, a READ's buffer from before it is allocated until its reply
//! is written out, and every queued reply. The leader reserves a request's bytes
//! ([`Replies::reserve`]) before it reads the payload or starts the read; when they do
//! not fit, it stops reading requests until replies have gone out (a client that does not
//! read its replies then finds the server not reading its requests: TCP holds it back),
//! and a single request larger than the whole budget waits until it is alone.

use std::io::{self, Read, Write};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Replies queued beyond this many bytes are written out at once, whoever is reading.
pub(crate) const QUEUE_LIMIT: usize = 256 << 10;
/// Replies at least this large are written straight from the worker's buffer when nothing
/// else is queued, instead of being copied into the queue.
const DIRECT_REPLY: usize = 64 << 10;

/// Replies waiting to be written, and the connection's budget.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) bytes: Vec<u8>,
    /// The buffer last written out, kept for reuse.
    pub(crate) spare: Vec<u8>,
    /// Budget held by the replies in `bytes`: released once they are written.
    charged: usize,
    /// A worker is writing queued replies.
    pub(crate) sending: bool,
    /// The leader is blocked reading the socket (or waiting for budget): nobody will write
    /// replies for it.
    pub(crate) reading: bool,
    failed: bool,
    /// Workers waiting in [`Replies::send_large`] for the sender to finish.
    pub(crate) waiting: usize,
    /// Bytes of the budget in use: reserved payloads and queued or sending replies.
    pub(crate) used: usize,
    /// The leader waits in [`Replies::reserve`].
    wants_room: bool,
}

pub(crate) struct Replies<'a, W> {
    writer: &'a Mutex<W>,
    queue: Mutex<Queue>,
    /// Signalled when the sender stops while workers wait in `send_large`.
    idle: Condvar,
    /// Signalled when budget is released while the leader waits for it.
    room: Condvar,
    /// The connection's budget in bytes.
    bound: usize,
}

impl<'a, W: Write> Replies<'a, W> {
    pub(crate) fn new(writer: &'a Mutex<W>, bound: usize) -> Replies<'a, W> {
        Replies {
            writer,
            queue: Mutex::new(Queue::default()),
            idle: Condvar::new(),
            room: Condvar::new(),
            bound,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `need` bytes of the budget (the leader only). Waits while they do not fit and
    /// something else holds budget; meanwhile queued replies are written out (whoever
    /// replies while the leader waits writes too), since nobody else would.
    pub(crate) fn reserve(&self, need: usize) -> io::Result<()> {
        let mut q = self.lock();
        if q.used + need <= self.bound {
            q.used += need;
            return Ok(());
        }
        q.reading = true;
        let res = loop {
            if q.failed {
                break Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            if q.used == 0 || q.used + need <= self.bound {
                q.used += need;
                break Ok(());
            }
            if !q.sending && !q.bytes.is_empty() {
                if let Err(e) = self.drain(q, None) {
                    q = self.lock();
                    break Err(e);
                }
                q = self.lock();
                continue;
            }
            q.wants_room = true;
            q = self.room.wait(q).unwrap_or_else(|p| p.into_inner());
        };
        q.wants_room = false;
        q.reading = false;
        res
    }

    /// Gives back budget that a request held and no reply carries.
    pub(crate) fn release(&self, n: usize) {
        if n > 0 {
            let mut q = self.lock();
            self.release_locked(&mut q, n);
        }
    }

    fn release_locked(&self, q: &mut Queue, n: usize) {
        debug_assert!(q.used >= n, "released {n} of {} bytes in use", q.used);
        q.used = q.used.saturating_sub(n);
        if q.wants_room {
            self.room.notify_one();
        }
    }

    /// Queues a reply that holds `held` bytes of the budget (0: none yet; it is charged
    /// for its own length while queued). It is written now if the leader is blocked
    /// reading (or the queue is long); otherwise the leader writes it before it next
    /// reads the socket.
    pub(crate) fn send(&self, bytes: &[u8], held: usize) -> io::Result<()> {
        let mut q = self.lock();
        if q.failed {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let charge = held.max(bytes.len());
        q.used += charge - held;
        let now = !q.sending && (q.reading || q.bytes.len() + bytes.len() >= QUEUE_LIMIT);
        if now && bytes.len() >= DIRECT_REPLY && q.bytes.is_empty() {
            return self.drain(q, Some((bytes, charge)));
        }
        q.bytes.extend_from_slice(bytes);
        q.charged += charge;
        if !now {
            return Ok(());
        }
        self.drain(q, None)
    }

    /// Sends a large reply (a READ's data, holding `held` bytes of the budget) from its
    /// own buffer, never copying it into the queue, where a 64 MiB reply would be held
    /// twice (and the queue's buffer would keep that size): waits until nobody is
    /// sending, then writes it and whatever is queued.
    ///
    /// Only for workers that are not leading: the leader must never wait for the socket's
    /// writer, or a client that writes all its requests before reading replies would stall
    /// both sides.
    pub(crate) fn send_large(&self, bytes: &[u8], held: usize) -> io::Result<()> {
        let mut q = self.lock();
        while q.sending && !q.failed {
            q.waiting += 1;
            q = self.idle.wait(q).unwrap_or_else(|p| p.into_inner());
            q.waiting -= 1;
        }
        if q.failed {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let charge = held.max(bytes.len());
        q.used += charge - held;
        self.drain(q, Some((bytes, charge)))
    }

    /// The sender has stopped: a worker waiting to send a large reply may go (all of
    /// them when the connection failed).
    fn stopped_sending(&self, q: &mut Queue) {
        q.sending = false;
        if q.waiting > 0 {
            if q.failed {
                self.idle.notify_all();
            } else {
                self.idle.notify_one();
            }
        }
    }

    /// Writes out the queue (and `first`, with the budget it holds, before it) unless
    /// someone else is at it; releases the budget of what it wrote.
    fn drain<'q>(
        &'q self,
        mut q: MutexGuard<'q, Queue>,
        mut first: Option<(&[u8], usize)>,
    ) -> io::Result<()> {
        if q.sending || (first.is_none() && q.bytes.is_empty()) {
            return Ok(());
        }
        if q.failed {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        q.sending = true;
        loop {
            let (mut out, charge) = match first {
                Some((_, charge)) => (Vec::new(), charge),
                None => {
                    let spare = std::mem::take(&mut q.spare);
                    let charge = std::mem::take(&mut q.charged);
                    (std::mem::replace(&mut q.bytes, spare), charge)
                }
            };
            drop(q);
            let res = {
                let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                let data = first.take().map_or(out.as_slice(), |(b, _)| b);
                w.write_all(data).and_then(|()| w.flush())
            };
            out.clear();
            q = self.lock();
            if q.spare.capacity() < out.capacity() {
                q.spare = out;
            }
            self.release_locked(&mut q, charge);
            if let Err(e) = res {
                q.failed = true;
                self.stopped_sending(&mut q);
                q.bytes = Vec::new();
                let charged = std::mem::take(&mut q.charged);
                self.release_locked(&mut q, charged);
                // The leader must not wait for room that will never come.
                self.room.notify_all();
                return Err(e);
            }
            if q.bytes.is_empty() {
                self.stopped_sending(&mut q);
                return Ok(());
            }
        }
    }

    /// Writes out what is queued; called before the leader may block reading.
    pub(crate) fn flush_before_read(&self) -> io::Result<()> {
        let mut q = self.lock();
        q.reading = true;
        self.drain(q, None)
    }

    pub(crate) fn done_reading(&self) {
        self.lock().reading = false;
    }

    /// Writes out everything still queued (the connection is ending).
    pub(crate) fn finish(&self) -> io::Result<()> {
        let mut q = self.lock();
        q.reading = true;
        self.drain(q, None)
    }
}

/// The socket's reading half, as the request buffer sees it: every time the buffer has to
/// go to the socket (and may block there), queued replies are written out first.
pub(crate) struct SocketReader<'a, 'b, R, W> {
    pub(crate) inner: &'a mut R,
    pub(crate) replies: &'a Replies<'b, W>,
}

impl<R: Read, W: Write> Read for SocketReader<'_, '_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.replies.flush_before_read()?;
        let n = self.inner.read(buf);
        self.replies.done_reading();
        n
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A socket's writing half that keeps what is written and can be held shut (a client
    /// that does not read).
    #[derive(Clone, Default)]
    struct Gate {
        out: Arc<Mutex<Vec<u8>>>,
        held: Arc<AtomicBool>,
        writes: Arc<AtomicUsize>,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            while self.held.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    const UNBOUNDED: usize = usize::MAX / 2;

    /// A large reply that finds another worker sending waits for it and is then written
    /// from its own buffer: it is never copied into the queue, and the queue does not
    /// keep a buffer of its size afterwards.
    #[test]
    fn a_large_reply_is_not_copied_into_the_queue() {
        let gate = Gate::default();
        let writer = Mutex::new(gate.clone());
        let replies = Replies::new(&writer, UNBOUNDED);
        let small = [7u8; 16];
        let large: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        gate.held.store(true, Ordering::SeqCst);
        std::thread::scope(|s| {
            // The leader is blocked reading: a small reply is written by its worker, who
            // stays in the socket's write while the client does not read.
            replies.lock().reading = true;
            s.spawn(|| replies.send(&small, 0).unwrap());
            wait_for("the small reply is being written", || {
                gate.writes.load(Ordering::SeqCst) > 0
            });
            let t = s.spawn(|| replies.send_large(&large, 0).unwrap());
            // Until the large reply waits, or was put in the queue (as it once was).
            wait_for("the large reply waits for the sender", || {
                let q = replies.lock();
                q.waiting == 1 || !q.bytes.is_empty()
            });
            let queued = replies.lock().bytes.len();
            gate.held.store(false, Ordering::SeqCst);
            t.join().unwrap();
            assert_eq!(queued, 0, "the large reply was copied into the queue");
        });
        let out = gate.out.lock().unwrap();
        assert_eq!(out.len(), small.len() + large.len());
        assert_eq!(&out[..small.len()], &small);
        assert!(out[small.len()..] == large[..]);
        let q = replies.lock();
        assert!(!q.sending && q.waiting == 0);
        assert!(q.bytes.capacity() < QUEUE_LIMIT && q.spare.capacity() < QUEUE_LIMIT);
        assert_eq!(q.used, 0, "everything written gave its budget back");
    }

    /// A worker waiting to send a large reply is let go when the connection fails.
    #[test]
    fn a_waiting_large_reply_fails_with_the_connection() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_millis(50));
                Err(io::ErrorKind::ConnectionReset.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let writer = Mutex::new(Broken);
        let replies = Replies::new(&writer, UNBOUNDED);
        replies.lock().reading = true;
        std::thread::scope(|s| {
            let a = s.spawn(|| replies.send(&[1u8; 16], 0));
            wait_for("sending", || replies.lock().sending);
            let b = s.spawn(|| replies.send_large(&[2u8; QUEUE_LIMIT + 1], 0));
            assert!(a.join().unwrap().is_err());
            assert!(b.join().unwrap().is_err());
        });
    }

    /// The leader waits for budget while replies are stuck on a socket the client does
    /// not read, and goes on once they are written; what it queued itself is written out
    /// before it waits.
    #[test]
    fn a_reservation_waits_until_replies_are_written() {
        let gate = Gate::default();
        let writer = Mutex::new(gate.clone());
        let replies = Replies::new(&writer, 1 << 20);
        replies.reserve(600 << 10).unwrap();
        // The leader's own small reply, queued (it is not reading).
        replies.send(&[5u8; 16], 0).unwrap();
        gate.held.store(true, Ordering::SeqCst);
        let reserved = AtomicBool::new(false);
        std::thread::scope(|s| {
            // A worker sends the reserved read's reply; the client does not read.
            s.spawn(|| {
                replies
                    .send_large(&vec![3u8; 600 << 10], 600 << 10)
                    .unwrap()
            });
            // The worker is writing (held) before the leader asks: otherwise the leader
            // may find nobody sending and write the queue itself, into the held socket.
            wait_for("the worker writes", || {
                gate.writes.load(Ordering::SeqCst) > 0
            });
            let leader = s.spawn(|| {
                replies.reserve(600 << 10).unwrap();
                reserved.store(true, Ordering::SeqCst);
            });
            wait_for("the leader waits", || replies.lock().wants_room);
            std::thread::sleep(Duration::from_millis(50));
            assert!(!reserved.load(Ordering::SeqCst), "the budget was overrun");
            gate.held.store(false, Ordering::SeqCst);
            leader.join().unwrap();
        });
        assert_eq!(gate.out.lock().unwrap().len(), 16 + (600 << 10));
        assert_eq!(replies.lock().used, 600 << 10);
        // Larger than the whole budget: served alone, once nothing else holds any.
        replies.release(600 << 10);
        replies.reserve(4 << 20).unwrap();
        assert_eq!(replies.lock().used, 4 << 20);
    }

    /// A leader waiting for budget is let go when the connection fails.
    #[test]
    fn a_waiting_reservation_fails_with_the_connection() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_millis(50));
                Err(io::ErrorKind::ConnectionReset.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let writer = Mutex::new(Broken);
        let replies = Replies::new(&writer, 1 << 20);
        replies.reserve(1 << 20).unwrap();
        std::thread::scope(|s| {
            let leader = s.spawn(|| replies.reserve(1));
            wait_for("the leader waits", || replies.lock().wants_room);
            let worker = s.spawn(|| replies.send_large(&[2u8; 1 << 20], 1 << 20));
            assert!(worker.join().unwrap().is_err());
            assert!(leader.join().unwrap().is_err());
        });
    }
}
