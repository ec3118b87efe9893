//! The driver without a thread: the caller owns the endpoint and the port and runs them in
//! its own thread ([`Direct::poll`]), so a request and its answer cross no thread boundary —
//! the lowest-latency way to use the transport (an MMIO read path, a benchmark). Same
//! [`Upcall`]s as [`super::TransportHandle`].

use super::engine::Engine;
use super::{DriverConfig, DriverStats, HandleError, Port, Upcall, Wake};
use crate::transport::endpoint::ConnId;
use crate::transport::{PeerAddr, SendError};
use bytes::Bytes;
use crossbeam::channel::{self, Receiver, Sender};
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Capacity of the queue behind [`DirectSender`]s. Large, because the Direct's own thread
/// may queue through a sender too (the host pump answers a DMA read with its completions)
/// and must never block on a queue only it drains; still bounded (tags bound what is
/// outstanding).
const INBOX: usize = 65536;

/// In busy-poll mode, how long after its last work a Direct spins hard before it yields the
/// CPU on every idle round: about one raw round trip here, so a requester waiting for its
/// answer and a pump waiting for the next request hold their CPUs the way a raw busy-poll
/// ping-pong does, while two ends that share one CPU (or threads they wait for, like device
/// workers) get it back within that time instead of after a whole spin.
const BUSY_SPIN: Duration = Duration::from_micros(15);

/// Most frames one round takes from the port before it runs the timers, transmits and
/// delivers. A round's fixed work — every session's timers and transmit check, and the
/// caller's pass over its own state between rounds (the appliance's serving loop) — grows
/// with the sessions, so taking one frame per round made an appliance with 224 busy sessions
/// spend its time on those scans and fall behind until the hosts' timers fired (issue 11).
/// Taking what is waiting, up to this many, spreads one pass over all of them; with a single
/// frame waiting it costs nothing extra (one receive call returns what there is).
pub const RECV_PER_ROUND: usize = 64;

/// The queue behind [`DirectSender`]s, and whether the Direct's thread sleeps in the link.
struct Inbox {
    rx: Receiver<(ConnId, Bytes)>,
    tx: Sender<(ConnId, Bytes)>,
    sleeping: Arc<AtomicBool>,
}

/// A transport endpoint driven by the caller's thread.
pub struct Direct {
    engine: Engine,
    queue: VecDeque<Upcall>,
    /// TLPs other threads queued through a [`DirectSender`] (created with the first).
    inbox: Option<Inbox>,
    /// An inbox TLP waiting for room in its session's queue.
    held: Option<(ConnId, Bytes)>,
    /// Busy-poll mode: since when the link has had no work (None: it just had some).
    idle_since: Option<Instant>,
}

/// Queues TLPs for a [`Direct`] from other threads and wakes its thread when it sleeps; the
/// Direct's thread sends them the next time it polls (in queue order).
#[derive(Clone)]
pub struct DirectSender {
    tx: Sender<(ConnId, Bytes)>,
    sleeping: Arc<AtomicBool>,
    waker: Arc<dyn Wake>,
    extra: Option<Arc<dyn Wake>>,
}

impl std::fmt::Debug for DirectSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectSender")
            .field("queued", &self.tx.len())
            .finish()
    }
}

impl DirectSender {
    /// Queue, waking the Direct's thread only if it sleeps inside the Direct (not the extra
    /// waker: the caller wakes whoever else must drain the queue).
    pub(crate) fn queue(&self, conn: ConnId, tlp: Bytes) -> Result<(), HandleError> {
        self.tx
            .send((conn, tlp))
            .map_err(|_| HandleError::Stopped)?;
        if self.sleeping.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
        Ok(())
    }

    /// Queue `tlp` for `conn`, blocking while the queue is full (back-pressure).
    pub fn send(&self, conn: ConnId, tlp: Bytes) -> Result<(), HandleError> {
        self.tx
            .send((conn, tlp))
            .map_err(|_| HandleError::Stopped)?;
        if self.sleeping.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
        if let Some(w) = &self.extra {
            w.wake();
        }
        Ok(())
    }
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").finish_non_exhaustive()
    }
}

impl Direct {
    /// Over `port` (nothing runs until [`poll`](Self::poll) is called).
    pub fn new(port: Box<dyn Port>, cfg: DriverConfig) -> Direct {
        Direct {
            engine: Engine::new(port, cfg),
            queue: VecDeque::with_capacity(1024),
            inbox: None,
            held: None,
            idle_since: None,
        }
    }

    /// A sender for other threads (all senders share one queue).
    pub fn sender(&mut self) -> DirectSender {
        self.sender_also_waking(None)
    }

    /// A sender that, besides the Direct's own waker, also wakes `extra` (a thread that
    /// watches the link without owning it).
    pub(crate) fn sender_also_waking(&mut self, extra: Option<Arc<dyn Wake>>) -> DirectSender {
        let waker = self.engine.port.waker();
        let inbox = self.inbox.get_or_insert_with(|| {
            let (tx, rx) = channel::bounded(INBOX);
            Inbox {
                rx,
                tx,
                sleeping: Arc::new(AtomicBool::new(false)),
            }
        });
        DirectSender {
            tx: inbox.tx.clone(),
            sleeping: inbox.sleeping.clone(),
            waker,
            extra,
        }
    }

    /// Submit what other threads queued. Returns whether anything was taken.
    fn drain_inbox(&mut self) -> bool {
        let Some(Inbox { rx, .. }) = &self.inbox else {
            return false;
        };
        let mut work = false;
        loop {
            let (c, t) = match self.held.take() {
                Some(x) => x,
                None => match rx.try_recv() {
                    Ok(x) => x,
                    Err(_) => return work,
                },
            };
            work = true;
            match self.engine.submit(c, t) {
                Ok(()) => {}
                Err((t, SendError::QueueFull)) => {
                    self.held = Some((c, t));
                    return work;
                }
                Err((tlp, error)) => self.queue.push_back(Upcall::Dropped {
                    conn: c,
                    tlp,
                    error,
                }),
            }
        }
    }

    /// Sleep in the kernel until a frame, a wake-up or `timeout` (announcing it to senders).
    fn sleep(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.engine.busy {
            // Spin hard for BUSY_SPIN after the last work, then yield (see the threaded
            // driver: holding a core for good starves the threads an answer needs).
            let now = Instant::now();
            let since = *self.idle_since.get_or_insert(now);
            if now.duration_since(since) < BUSY_SPIN {
                for _ in 0..32 {
                    std::hint::spin_loop();
                }
            } else {
                std::thread::yield_now();
            }
            return Ok(());
        }
        let cap = if self.held.is_some() {
            Some(timeout.map_or(Duration::from_micros(200), |t| {
                t.min(Duration::from_micros(200))
            }))
        } else {
            timeout
        };
        if let Some(i) = &self.inbox {
            i.sleeping.store(true, Ordering::Release);
            if !i.rx.is_empty() && self.held.is_none() {
                i.sleeping.store(false, Ordering::Release);
                return Ok(());
            }
        }
        let r = self.engine.wait(cap);
        if let Some(i) = &self.inbox {
            i.sleeping.store(false, Ordering::Release);
        }
        r
    }

    /// Whether this link spins instead of sleeping ([`DriverConfig::busy_poll`]).
    pub fn busy_poll(&self) -> bool {
        self.engine.busy
    }

    /// Our address on the link.
    pub fn local_addr(&self) -> PeerAddr {
        self.engine.port.local_addr()
    }

    /// Accept the host `h` from now on, while the link runs (see
    /// [`Endpoint::add_host`](crate::transport::Endpoint::add_host)).
    pub fn add_host(&mut self, h: &crate::transport::HostKey) -> ConnId {
        self.engine.add_host(h)
    }

    /// Stop accepting `host` and close its session, while the link runs (see
    /// [`Endpoint::remove_host`](crate::transport::Endpoint::remove_host)); its `Down` upcall
    /// comes with the next poll. TLPs other threads queued for it are dropped as upcalls.
    pub fn remove_host(&mut self, host: crate::transport::HostId) -> bool {
        if self
            .held
            .as_ref()
            .is_some_and(|(c, _)| self.engine.ep.host(*c) == Some(host))
        {
            self.held = None;
        }
        self.engine.remove_host(host)
    }

    /// Queue a TLP without transmitting: the next [`poll`](Self::poll) /
    /// [`poll_wake`](Self::poll_wake) sends it, batched with whatever else was queued (as
    /// many TLPs per frame as fit). `QueueFull` means: poll, then retry.
    pub fn submit(&mut self, conn: ConnId, tlp: Bytes) -> Result<(), SendError> {
        self.engine.submit(conn, tlp).map_err(|(_, e)| e)
    }

    /// Whether session `conn` can usefully take another TLP now ([`Endpoint::wants_more`]:
    /// its unsent bytes are below about a congestion window). `true` when not connected.
    ///
    /// [`Endpoint::wants_more`]: crate::transport::Endpoint::wants_more
    pub fn wants_more(&self, conn: ConnId) -> bool {
        self.engine.ep.wants_more(conn)
    }

    /// Bytes of session `conn`'s TLPs queued and not yet framed.
    pub fn unsent_bytes(&self, conn: ConnId) -> usize {
        self.engine.ep.unsent_bytes(conn)
    }

    /// Queue a TLP and transmit at once. `QueueFull` means: poll, then retry.
    pub fn send(&mut self, conn: ConnId, tlp: Bytes) -> Result<(), SendError> {
        self.engine.submit(conn, tlp).map_err(|(_, e)| e)?;
        self.engine.transmit();
        Ok(())
    }

    /// One round: queued TLPs in, the frames waiting in (up to [`RECV_PER_ROUND`]), timers,
    /// frames out, upcalls.
    fn round(&mut self) -> io::Result<bool> {
        let mut work = self.drain_inbox();
        work |= self.engine.receive(RECV_PER_ROUND)?;
        work |= self.engine.transmit();
        let q = &mut self.queue;
        let mut sink = |u: Upcall| {
            q.push_back(u);
            Ok(())
        };
        work |= self.engine.deliver(&mut sink).unwrap_or(true);
        if work {
            self.idle_since = None;
        }
        Ok(work)
    }

    /// Run the link until an upcall is ready or `timeout` passes (`None`: wait for ever).
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<Option<Upcall>> {
        let end = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(u) = self.queue.pop_front() {
                return Ok(Some(u));
            }
            let work = self.round()?;
            if !self.queue.is_empty() {
                continue;
            }
            let left = match end {
                Some(e) => {
                    let now = Instant::now();
                    if now >= e {
                        return Ok(None);
                    }
                    Some(e - now)
                }
                None => None,
            };
            if !work {
                self.sleep(left)?;
            }
        }
    }

    /// Wakes a [`poll_wake`](Self::poll_wake) (or [`poll`](Self::poll)) blocked in the
    /// kernel, from any thread.
    pub fn waker(&self) -> Arc<dyn Wake> {
        self.engine.port.waker()
    }

    /// Like [`poll`](Self::poll), but also returns `Ok(None)` as soon as the thread was woken
    /// (by [`waker`](Self::waker), a frame that carried no upcall, or a timer), so the caller
    /// can serve other work — a queue that other threads fill — between link events.
    pub fn poll_wake(&mut self, timeout: Option<Duration>) -> io::Result<Option<Upcall>> {
        if let Some(u) = self.queue.pop_front() {
            return Ok(Some(u));
        }
        if !self.round()? && self.queue.is_empty() {
            self.sleep(timeout)?;
            self.round()?;
        }
        Ok(self.queue.pop_front())
    }

    /// An upcall the last round already produced, without running the link (a caller that
    /// handles a batch of frames' TLPs before its own per-pass work).
    pub fn take_queued(&mut self) -> Option<Upcall> {
        self.queue.pop_front()
    }

    /// When the link next needs attention (a timer), in real time; `None`: nothing armed.
    pub fn next_deadline(&self) -> Option<Instant> {
        let t = self.engine.ep.poll_timeout()?;
        Some(Instant::now() + self.engine.clock.until(t))
    }

    /// Whether TLPs from [`DirectSender`]s wait to be submitted.
    pub(crate) fn has_queued(&self) -> bool {
        self.held.is_some() || self.inbox.as_ref().is_some_and(|i| !i.rx.is_empty())
    }

    /// The port's descriptor to watch, if it has one.
    pub(crate) fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        self.engine.port.readiness_fd()
    }

    /// A snapshot of all counters.
    pub fn stats(&self) -> DriverStats {
        self.engine.snapshot()
    }
}
