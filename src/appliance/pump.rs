//! The appliance's pump on a [`Direct`] transport driver: the thread that reads the network
//! runs the endpoint and sends its answers, so an MMIO read crosses no thread boundary inside
//! the appliance (with a threaded `TransportHandle` it crossed three: driver → pump → sender →
//! driver). Device threads (NVMe, DMA engine) queue their TLPs on the endpoint's outbound
//! queue (and their DMA reads for [`Proxy::poll`]) and wake the pump through the link's
//! waker, only when it sleeps; so does a [`Control`](super::Control) handle with a command.
//!
//! Which session each TLP goes to, the per-host isolation and the resets on a lost or
//! restarted host are the routing core's business ([`Router`]).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::{ControlPort, PoolEvent, Wake};
use super::counters::Counters;
use super::router::{LinkOp, Router};
use crate::endpoint::Proxy;
use crate::transport::driver::{Direct, DriverStats};
use crate::transport::{Bytes, ConnId, Endpoint, PeerAddr, SendError};

/// How often the pump publishes its counters for other threads.
pub(crate) const STATS_EVERY: Duration = Duration::from_millis(100);

/// An endpoint served over one [`Direct`] link from the calling thread.
pub struct Pump {
    d: Direct,
    sleeping: Arc<AtomicBool>,
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("local", &self.d.local_addr())
            .finish()
    }
}

impl Pump {
    /// A pump for `ep` on `d`; installs the endpoint's outbound wake-up.
    pub fn new(d: Direct, ep: &Proxy) -> Pump {
        let p = Pump {
            d,
            sleeping: Arc::new(AtomicBool::new(false)),
        };
        ep.set_outbound_wake(p.wake());
        p
    }

    /// A wake-up for the pump: wakes it if it sleeps on the network.
    pub(crate) fn wake(&self) -> Wake {
        let waker = self.d.waker();
        let s = self.sleeping.clone();
        Arc::new(move || {
            if s.swap(false, Ordering::AcqRel) {
                waker.wake();
            }
        })
    }

    /// Our address on the link.
    pub fn local_addr(&self) -> PeerAddr {
        self.d.local_addr()
    }

    /// The link's counters now.
    pub fn stats(&self) -> DriverStats {
        self.d.stats()
    }

    fn publish(
        &self,
        ep: &Proxy,
        router: &mut Router<ConnId>,
        counters: &Counters,
        control: &ControlPort,
    ) {
        publish_all(
            counters,
            control,
            vec![self.d.stats()],
            |_, c| ConnId(c),
            ep,
            router,
        );
    }

    /// Serve until `stop` is set, publishing counters every 100 ms and when it returns.
    pub(crate) fn run(
        &mut self,
        ep: &mut Proxy,
        router: &mut Router<ConnId>,
        control: &ControlPort,
        stop: &AtomicBool,
        counters: &Counters,
    ) -> io::Result<()> {
        let result = self.serve(ep, router, control, stop, counters);
        self.publish(ep, router, counters, control);
        result
    }

    fn serve(
        &mut self,
        ep: &mut Proxy,
        router: &mut Router<ConnId>,
        control: &ControlPort,
        stop: &AtomicBool,
        counters: &Counters,
    ) -> io::Result<()> {
        let kicks = ep.kicks();
        let mut published = Instant::now();
        let mut events: Vec<PoolEvent> = Vec::new();
        self.publish(ep, router, counters, control);
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            // Time for the endpoint's DMA requester (queued reads, timeouts) and the pool's
            // grace periods.
            ep.poll(now);
            router.poll(ep, now);
            while let Ok(c) = control.commands.try_recv() {
                router.command(ep, c, now);
            }
            for op in router.take_link_ops() {
                match op {
                    LinkOp::Add(k) => {
                        self.d.add_host(&k);
                    }
                    LinkOp::Remove(h) => {
                        self.d.remove_host(h);
                    }
                }
            }
            router.drain_outbound(usize::MAX);
            let held = self.flush(router);
            router.take_events(&mut events);
            control.notify(&mut events);
            if router.changed() || published.elapsed() >= STATS_EVERY {
                self.publish(ep, router, counters, control);
                published = Instant::now();
            }
            for answer in router.take_answers() {
                answer();
            }
            self.sleeping.store(true, Ordering::Release);
            // A read or command queued since `poll` (its wake-up saw us awake): go again.
            if !held && (!router_idle(ep, &kicks) || !control.commands.is_empty()) {
                self.sleeping.store(false, Ordering::Release);
                continue;
            }
            // Held back by a full session queue: ACKs wake us, but never sleep long.
            let cap = if held {
                Duration::from_micros(200)
            } else {
                Duration::from_millis(50)
            };
            let wait = ep.poll_wait(Instant::now(), cap);
            let wait = router.poll_timeout().map_or(wait, |t| {
                wait.min(t.saturating_duration_since(Instant::now()))
            });
            let up = self.d.poll_wake(Some(wait));
            self.sleeping.store(false, Ordering::Release);
            if let Some(u) = up? {
                let now = Instant::now();
                let conn = u.conn();
                router.on_upcall(ep, conn, u, now);
                // Every TLP of the frames this round took, before the per-pass work above
                // (which scans every function and session): one pass per frame made the
                // loop's cost per TLP grow with the sessions (issue 11, docs/bench.md).
                while let Some(u) = self.d.take_queued() {
                    let conn = u.conn();
                    router.on_upcall(ep, conn, u, now);
                }
            }
        }
        Ok(())
    }

    /// Send what the router queued, in order, while the sessions want more (see [`flush`]).
    /// `true` when TLPs wait for a session.
    fn flush(&mut self, router: &mut Router<ConnId>) -> bool {
        flush(router, &mut self.d)
    }
}

/// The sessions of one link, as the serving loop submits into them.
pub trait Sessions<K> {
    /// Whether session `key` can usefully take another TLP now: its own queue of unsent
    /// TLPs is short ([`Endpoint::wants_more`]).
    ///
    /// [`Endpoint::wants_more`]: crate::transport::Endpoint::wants_more
    fn wants_more(&self, key: K) -> bool;
    /// Queue `tlp` on session `key` (transmitted by the link's next round).
    fn submit(&mut self, key: K, tlp: Bytes) -> Result<(), SendError>;
}

impl Sessions<ConnId> for Direct {
    fn wants_more(&self, key: ConnId) -> bool {
        Direct::wants_more(self, key)
    }
    fn submit(&mut self, key: ConnId, tlp: Bytes) -> Result<(), SendError> {
        Direct::submit(self, key, tlp)
    }
}

impl Sessions<ConnId> for Endpoint {
    fn wants_more(&self, key: ConnId) -> bool {
        Endpoint::wants_more(self, key)
    }
    fn submit(&mut self, key: ConnId, tlp: Bytes) -> Result<(), SendError> {
        self.send_tlp(key, tlp)
    }
}

/// Move what the router queued into the sessions, in order (the router tops up from the
/// functions' queues in their priorities' order at every TLP), but only into a session that
/// wants more: a session holds at most about a congestion window of unsent bytes, so a
/// saturated link's backlog stays in the router's per-function queues, where the priorities
/// decide the order (issue 14; docs/api.md "Priority"). A session's own queue is one FIFO: a
/// backlog there would leave in arrival order, whatever the priorities. A session that wants
/// no more holds up only its own TLPs ([`Router::pop_transmit`]): other hosts' go on.
/// `true` when TLPs wait for a session (its queue short of room or full).
pub fn flush<K: Copy + PartialEq + std::fmt::Debug>(
    router: &mut Router<K>,
    link: &mut impl Sessions<K>,
) -> bool {
    while let Some((c, t)) = router.pop_transmit(|k| link.wants_more(k)) {
        // Queued only: the next poll sends everything flushed here in as few frames as fit
        // (one frame per TLP would cap DMA at the frame rate).
        match link.submit(c, t.clone()) {
            Ok(()) => {}
            Err(SendError::QueueFull) => {
                router.unpop_transmit(c, t);
                return true;
            }
            Err(e) => tracing::debug!("appliance: TLP not sent: {e}"),
        }
    }
    router.transmit_pending()
}

/// Nothing queued by a device thread since the last look.
fn router_idle(ep: &Proxy, kicks: &crossbeam::channel::Receiver<()>) -> bool {
    ep.outbound_is_empty() && kicks.try_recv().is_err()
}

/// Publish everything the serving loop counts, for both serving loops (one link or several):
/// each session's transport counters and RTT into its host's, each function's requester
/// timeouts, then the counters and the pool snapshot. `key(link, conn)` names a session the way
/// the router does.
pub(crate) fn publish_all<K: Copy + PartialEq + std::fmt::Debug>(
    counters: &Counters,
    control: &ControlPort,
    links: Vec<DriverStats>,
    key: impl Fn(usize, usize) -> K,
    ep: &crate::endpoint::Proxy,
    router: &mut Router<K>,
) {
    for (i, l) in links.iter().enumerate() {
        for (c, st) in &l.sessions {
            router.sample_session(key(i, *c), st);
        }
    }
    router.sample_requesters(ep);
    counters.publish(links, ep.stats(), router.stats());
    control.publish(router.snapshot());
}
