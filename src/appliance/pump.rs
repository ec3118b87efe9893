//! The appliance's pump on a [`Direct`] transport driver: the thread that reads the network
//! runs the endpoint and sends its answers, so an MMIO read crosses no thread boundary inside
//! the appliance (with a threaded `TransportHandle` it crossed three: driver → pump → sender →
//! driver). Device threads (NVMe, DMA engine) queue their TLPs on the endpoint's outbound
//! queue (and their DMA reads for [`Proxy::poll`]) and wake the pump through the link's
//! waker, only when it sleeps.
//!
//! Which session gets the answers, and the resets on a lost or restarted host, are
//! [`Sessions`]' business.

use bytes::Bytes;
use crossbeam::channel::Receiver;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::counters::Counters;
use super::session::Sessions;
use crate::endpoint::Proxy;
use crate::transport::driver::{Direct, DriverStats, Upcall};
use crate::transport::{ConnId, PeerAddr, SendError};

/// How often the pump publishes its counters for other threads.
pub(crate) const STATS_EVERY: Duration = Duration::from_millis(100);

/// An endpoint served over one [`Direct`] link from the calling thread.
pub struct Pump {
    d: Direct,
    sessions: Sessions<ConnId>,
    sleeping: Arc<AtomicBool>,
    /// An outbound TLP waiting for room in the session's queue.
    held: Option<Bytes>,
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("owner", &self.sessions.owner())
            .finish()
    }
}

impl Pump {
    /// A pump for `ep` on `d`; installs the endpoint's outbound wake-up.
    pub fn new(d: Direct, ep: &Proxy) -> Pump {
        let sleeping = Arc::new(AtomicBool::new(false));
        let waker = d.waker();
        let s = sleeping.clone();
        ep.set_outbound_wake(Arc::new(move || {
            if s.swap(false, Ordering::AcqRel) {
                waker.wake();
            }
        }));
        Pump {
            d,
            sessions: Sessions::default(),
            sleeping,
            held: None,
        }
    }

    /// Our address on the link.
    pub fn local_addr(&self) -> PeerAddr {
        self.d.local_addr()
    }

    /// The link's counters now.
    pub fn stats(&self) -> DriverStats {
        self.d.stats()
    }

    fn publish(&self, ep: &Proxy, counters: &Counters) {
        counters.publish(vec![self.d.stats()], ep.stats());
    }

    /// Serve until `stop` is set, publishing counters every 100 ms and when it returns.
    pub fn run(
        &mut self,
        ep: &mut Proxy,
        outbound: &Receiver<Vec<u8>>,
        stop: &AtomicBool,
        counters: &Counters,
    ) -> io::Result<()> {
        let mut published = Instant::now();
        let result = self.serve(ep, outbound, stop, counters, &mut published);
        self.publish(ep, counters);
        result
    }

    fn serve(
        &mut self,
        ep: &mut Proxy,
        outbound: &Receiver<Vec<u8>>,
        stop: &AtomicBool,
        counters: &Counters,
        published: &mut Instant,
    ) -> io::Result<()> {
        let kicks = ep.kicks();
        while !stop.load(Ordering::Relaxed) {
            // Time for the endpoint's DMA requester: queued reads, timeouts.
            ep.poll(Instant::now());
            self.flush(outbound);
            if published.elapsed() >= STATS_EVERY {
                self.publish(ep, counters);
                *published = Instant::now();
            }
            self.sleeping.store(true, Ordering::Release);
            // A read queued since `poll` (its wake-up saw us awake): poll again first.
            if self.held.is_none() && (!outbound.is_empty() || kicks.try_recv().is_ok()) {
                self.sleeping.store(false, Ordering::Release);
                continue;
            }
            // Held back by a full session queue: ACKs wake us, but never sleep long.
            let cap = if self.held.is_some() {
                Duration::from_micros(200)
            } else {
                Duration::from_millis(50)
            };
            let up = self.d.poll_wake(Some(ep.poll_wait(Instant::now(), cap)));
            self.sleeping.store(false, Ordering::Release);
            if let Some(u) = up? {
                self.on_upcall(ep, u);
            }
        }
        Ok(())
    }

    /// Send what the endpoint queued, in queue order (the wire's order), to the serving
    /// session.
    fn flush(&mut self, outbound: &Receiver<Vec<u8>>) {
        loop {
            let t = match self.held.take() {
                Some(t) => t,
                None => match outbound.try_recv() {
                    Ok(v) => Bytes::from(v),
                    Err(_) => return,
                },
            };
            let Some(c) = self.sessions.owner() else {
                tracing::debug!("appliance: no host session; TLP dropped");
                continue;
            };
            // Queued only: the next poll sends everything flushed here in as few frames as
            // fit (one frame per TLP would cap DMA at the frame rate).
            match self.d.submit(c, t.clone()) {
                Ok(()) => {}
                Err(SendError::QueueFull) => {
                    self.held = Some(t);
                    return;
                }
                Err(e) => tracing::debug!("appliance: TLP not sent: {e}"),
            }
        }
    }

    fn on_upcall(&mut self, ep: &mut Proxy, u: Upcall) {
        let conn = u.conn();
        let held = &mut self.held;
        self.sessions.on_upcall(ep, conn, u, &mut |owner| {
            if owner.is_none() {
                *held = None;
            }
        });
    }
}
