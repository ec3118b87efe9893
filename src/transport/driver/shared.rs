//! A link driven by whichever thread needs it (leader/follower): a thread that waits for an
//! answer — a requester waiting for its completion — runs the link itself, so the request
//! leaves from its own thread and the answer wakes it directly from the socket, the way a raw
//! ping-pong does. While nobody waits, a *watcher* thread sleeps on the socket's descriptor
//! *without* holding the link and processes what arrives (the peer's requests, interrupts,
//! timers). With the threaded pump instead, every round trip woke the pump twice.
//!
//! In-process ports have no descriptor; there the watcher holds the link while it sleeps and
//! waiting threads fall back to being woken by it.
//!
//! While requesters drive the link (and for [`GRACE`] after the last one stopped) the watcher
//! sleeps on its kick alone, not on the socket: otherwise every answer would wake it as well
//! as the requester that waits for it (two threads woken per round trip, on two vCPUs the
//! one the peer runs on). A requester kicks it at the end of a drive only when a timer is due
//! before the watcher would wake anyway. What arrives unasked in that window (an interrupt
//! right after a register read) waits at most `GRACE` if no requester takes it first.

use super::direct::{Direct, DirectSender};
use super::{HandleError, Upcall, Wake};
use crate::sync::MutexExt;
use crate::sys::{fd, EventFd};
use crate::transport::endpoint::ConnId;
use crate::transport::SendError;
use bytes::Bytes;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Sends closer together than this, with no wait for an answer between them, are a burst
/// (see [`SharedLink::send`]).
const BURST: Duration = Duration::from_micros(20);

/// How long after the last drive the watcher still leaves the socket to requesters (a
/// driver's next register read usually follows within a round trip).
const GRACE: Duration = Duration::from_micros(100);

/// What the link hands up, called on whichever thread is driving.
pub type Dispatch = Box<dyn Fn(Upcall) + Send + Sync>;

/// A non-blocking eventfd that wakes the watcher.
#[derive(Debug)]
struct Kick(EventFd);

impl Kick {
    fn new() -> io::Result<Kick> {
        Ok(Kick(EventFd::new_nonblocking()?))
    }

    fn drain(&self) {
        // Nothing pending reads as 0; there is nothing else to do on failure.
        let _ = self.0.drain();
    }
}

impl Wake for Kick {
    fn wake(&self) {
        // The counter saturating is the only failure, and then the watcher is awake anyway.
        let _ = self.0.signal();
    }
}

/// A [`Direct`] shared by the threads that need it (see the module docs).
pub struct SharedLink {
    d: Mutex<Direct>,
    /// When [`send`](Self::send) last sent (nanoseconds since `base`).
    last_tx: AtomicU64,
    base: Instant,
    /// The watcher has been kicked and not yet woken.
    kicked: AtomicBool,
    sender: DirectSender,
    kick: Arc<Kick>,
    fd: Option<RawFd>,
    dispatch: OnceLock<Dispatch>,
    /// Busy-poll mode: a waiting thread spins for the link instead of sleeping.
    busy: bool,
    /// A requester is driving the link.
    driving: AtomicBool,
    /// When the last drive ended (nanoseconds since `base`).
    last_drive: AtomicU64,
    /// When the watcher wakes on its own (nanoseconds since `base`; set under the link).
    watcher_wake: AtomicU64,
}

impl std::fmt::Debug for SharedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLink")
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

impl SharedLink {
    /// Share `d`. Nothing runs until [`run_watcher`](Self::run_watcher) or
    /// [`drive`](Self::drive) is called; set the upcall handler first.
    pub fn new(mut d: Direct) -> io::Result<SharedLink> {
        let kick = Arc::new(Kick::new()?);
        let sender = d.sender_also_waking(Some(kick.clone()));
        Ok(SharedLink {
            busy: d.busy_poll(),
            driving: AtomicBool::new(false),
            last_drive: AtomicU64::new(0),
            watcher_wake: AtomicU64::new(0),
            fd: d.readiness_fd(),
            d: Mutex::new(d),
            last_tx: AtomicU64::new(0),
            base: Instant::now(),
            kicked: AtomicBool::new(false),
            sender,
            kick,
            dispatch: OnceLock::new(),
        })
    }

    /// Where upcalls go (only the first call takes effect).
    pub fn set_dispatch(&self, f: Dispatch) {
        let _ = self.dispatch.set(f);
    }

    fn dispatch(&self, u: Upcall) {
        if let Some(f) = self.dispatch.get() {
            f(u);
        }
    }

    /// Send `tlp` to `conn` from any thread: straight out when the link is free, otherwise
    /// queued for whoever drives it (in order with everything queued before).
    pub fn send(&self, conn: ConnId, tlp: Bytes) -> Result<(), HandleError> {
        // A lone TLP leaves at once, from this thread. In a burst (another send within
        // BURST, with no wait for an answer in between) it is only queued and the watcher
        // sends the lot, in as few frames as fit, on the other CPU while this thread
        // produces the next one. A request sent right after the answer to the previous one
        // is not a burst: queueing it would cost a watcher wake-up per round trip.
        let now = self.base.elapsed().as_nanos() as u64;
        let last = self.last_tx.swap(now, Ordering::Relaxed);
        if now.saturating_sub(last) < BURST.as_nanos() as u64 {
            self.sender
                .queue(conn, tlp)
                .map_err(|_| HandleError::Stopped)?;
            if !self.kicked.swap(true, Ordering::AcqRel) {
                self.kick.wake();
            }
            return Ok(());
        }
        if let Ok(mut d) = self.d.try_lock() {
            if !d.has_queued() {
                match d.send(conn, tlp.clone()) {
                    Ok(()) => return Ok(()),
                    Err(SendError::QueueFull) => {}
                    Err(error) => {
                        drop(d);
                        self.dispatch(Upcall::Dropped { conn, tlp, error });
                        return Ok(());
                    }
                }
            }
        }
        self.enqueue(conn, tlp)
    }

    /// Queue for whoever runs the link: the Direct's thread if it sleeps inside the link, the
    /// watcher (once, until it wakes) otherwise.
    fn enqueue(&self, conn: ConnId, tlp: Bytes) -> Result<(), HandleError> {
        self.sender.queue(conn, tlp)?;
        if !self.kicked.swap(true, Ordering::AcqRel) {
            self.kick.wake();
        }
        Ok(())
    }

    /// Run the link on this thread until `done()` or `deadline`. Returns false at once when
    /// another thread is running it (then wait to be woken: that thread hands up what
    /// arrives, including what `done` waits for). In busy-poll mode it never sleeps: it
    /// spins until it has the link or `done()`, then polls the link without blocking.
    pub fn drive(&self, done: &dyn Fn() -> bool, deadline: Instant) -> bool {
        if self.fd.is_none() {
            return false;
        }
        let ns = |t: Instant| t.saturating_duration_since(self.base).as_nanos() as u64;
        let mut d = loop {
            match self.d.try_lock_or_recover() {
                Some(d) => break d,
                None if self.busy => {
                    if done() || Instant::now() >= deadline {
                        self.last_tx.store(0, Ordering::Relaxed);
                        return true;
                    }
                    std::hint::spin_loop();
                }
                None => return false,
            }
        };
        self.driving.store(true, Ordering::SeqCst);
        while !done() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match d.poll_wake(Some(deadline - now)) {
                Ok(Some(u)) => self.dispatch(u),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "transport link failed");
                    break;
                }
            }
        }
        let next = d.next_deadline();
        self.last_drive.store(ns(Instant::now()), Ordering::SeqCst);
        self.driving.store(false, Ordering::SeqCst);
        drop(d);
        // The next send follows an answer, not a burst.
        self.last_tx.store(0, Ordering::Relaxed);
        // The watcher sleeps on a deadline it read before we ran the link: kick it when a
        // timer is now due before it wakes (otherwise it wakes in time, at most GRACE late
        // for anything unasked that arrives meanwhile).
        if next.is_some_and(|t| ns(t) < self.watcher_wake.load(Ordering::SeqCst)) {
            self.kick.wake();
        }
        true
    }

    /// The watcher: hand up whatever arrives while no thread drives the link, and run its
    /// timers, until `stop`. `each` runs with the link now and then (counters).
    pub fn run_watcher(&self, stop: &AtomicBool, mut each: impl FnMut(&Direct)) -> io::Result<()> {
        let mut last_each = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let Some(fd) = self.fd else {
                // In-process port: sleep inside the link.
                let mut d = self.d.lock_or_recover();
                let u = d.poll_wake(Some(Duration::from_millis(50)))?;
                if last_each.elapsed() >= Duration::from_millis(100) {
                    each(&d);
                    last_each = Instant::now();
                }
                drop(d);
                if let Some(u) = u {
                    self.dispatch(u);
                }
                continue;
            };
            // Wait for the link if a requester runs it (it hands up what arrives meanwhile).
            let timeout = {
                let mut d = self.d.lock_or_recover();
                // Everything that is ready, without sleeping.
                while let Some(u) = d.poll_wake(Some(Duration::ZERO))? {
                    self.dispatch(u);
                }
                if last_each.elapsed() >= Duration::from_millis(100) {
                    each(&d);
                    last_each = Instant::now();
                }
                let now = Instant::now();
                let mut t = d.next_deadline().map_or(Duration::from_millis(50), |t| {
                    t.saturating_duration_since(now)
                });
                if d.has_queued() {
                    // Held back by a full session queue: ACKs free it; look again soon.
                    t = t.min(Duration::from_micros(200));
                }
                let wake =
                    (now + t.min(Duration::from_secs(1))).saturating_duration_since(self.base);
                self.watcher_wake
                    .store(wake.as_nanos() as u64, Ordering::SeqCst);
                t
            };
            // Sleep without holding the link, so a requester can take it: on the socket, or
            // on the kick alone while requesters drive (they take what arrives).
            let now = self.base.elapsed().as_nanos() as u64;
            let since = now.saturating_sub(self.last_drive.load(Ordering::SeqCst));
            let grace = GRACE.as_nanos() as u64;
            let driving = self.driving.load(Ordering::SeqCst);
            if driving || since < grace {
                // Back within GRACE at the latest to watch the socket again.
                let left = if driving {
                    GRACE
                } else {
                    Duration::from_nanos(grace - since).max(Duration::from_micros(10))
                };
                self.sleep_kicked(timeout.min(left));
            } else {
                self.sleep(fd, timeout);
            }
        }
        if let Ok(d) = self.d.lock() {
            each(&d);
        }
        Ok(())
    }

    /// ppoll(2) on the kick eventfd and the socket (nanosecond timeouts: ACK delays and
    /// pacing are microseconds).
    fn sleep(&self, fd: RawFd, timeout: Duration) {
        let t = timeout.min(Duration::from_secs(1));
        crate::probe::hit(crate::probe::Ev::LinkSleep);
        // An error is treated like a spurious wake-up: the loop looks at the link and sleeps again.
        let [kicked, _] = fd::wait_readable([self.kick.0.as_raw_fd(), fd], t).unwrap_or([false; 2]);
        crate::probe::hit(crate::probe::Ev::LinkWake);
        if kicked {
            self.kicked.store(false, Ordering::Release);
            self.kick.drain();
        }
    }

    /// Sleep until kicked or `timeout`, not on the socket.
    fn sleep_kicked(&self, timeout: Duration) {
        crate::probe::hit(crate::probe::Ev::LinkSleep);
        let [kicked] = fd::wait_readable([self.kick.0.as_raw_fd()], timeout).unwrap_or([false]);
        crate::probe::hit(crate::probe::Ev::LinkWake);
        if kicked {
            self.kicked.store(false, Ordering::Release);
            self.kick.drain();
        }
    }

    /// A snapshot of the link's counters (waits while another thread drives it).
    pub fn stats(&self) -> super::DriverStats {
        self.d.lock_or_recover().stats()
    }
}
