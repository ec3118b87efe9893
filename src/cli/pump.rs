//! The appliance's pump on a [`Direct`] transport driver: the thread that reads the network
//! runs the endpoint and sends its answers, so an MMIO read crosses no thread boundary inside
//! the appliance (with a threaded `TransportHandle` it crossed three: driver → pump → sender →
//! driver). Device threads (NVMe, DMA engine) queue their TLPs on the endpoint's outbound
//! queue (and their DMA reads for [`Endpoint::poll`]) and wake the pump through the link's
//! waker, only when it sleeps.
//!
//! The appliance serves the session that last sent it a TLP (or connected); a host that
//! reconnects with a new epoch, or the serving session going down, resets every function, as
//! a hot reset or a surprise-down would on PCIe.

use bytes::Bytes;
use crossbeam::channel::Receiver;
use pcietun::endpoint::Endpoint;
use pcietun::transport::driver::{Direct, DriverStats, Upcall};
use pcietun::transport::{ConnId, Event, SendError};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the pump publishes its counters for other threads.
const STATS_EVERY: Duration = Duration::from_millis(100);

/// An endpoint served over one [`Direct`] link from the calling thread.
pub struct Pump {
    d: Direct,
    serving: Serving<ConnId>,
    sleeping: Arc<AtomicBool>,
    /// An outbound TLP waiting for room in the session's queue.
    held: Option<Bytes>,
    stats: Arc<Mutex<DriverStats>>,
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("owner", &self.serving.owner())
            .finish()
    }
}

impl Pump {
    /// A pump for `ep` on `d`; installs the endpoint's outbound wake-up.
    pub fn new(d: Direct, ep: &Endpoint) -> Pump {
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
            serving: Serving::default(),
            sleeping,
            held: None,
            stats: Arc::new(Mutex::new(DriverStats::default())),
        }
    }

    /// Counters, refreshed every 100 ms while [`run`](Self::run) runs and when it returns.
    pub fn stats_handle(&self) -> Arc<Mutex<DriverStats>> {
        self.stats.clone()
    }

    /// The link's counters now.
    pub fn stats(&self) -> DriverStats {
        self.d.stats()
    }

    fn publish(&self) {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = self.d.stats();
    }

    /// Serve until `stop` is set.
    pub fn run(
        &mut self,
        ep: &mut Endpoint,
        outbound: &Receiver<Vec<u8>>,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let mut published = Instant::now();
        let kicks = ep.kicks();
        while !stop.load(Ordering::Relaxed) {
            // Time for the endpoint's DMA requester: queued reads, timeouts.
            ep.poll(Instant::now());
            self.flush(outbound);
            if published.elapsed() >= STATS_EVERY {
                self.publish();
                published = Instant::now();
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
            let cap = ep.poll_timeout().map_or(cap, |t| {
                cap.min(t.saturating_duration_since(Instant::now()))
            });
            let up = self.d.poll_wake(Some(cap));
            self.sleeping.store(false, Ordering::Release);
            if let Some(u) = up? {
                self.on_upcall(ep, u);
            }
        }
        self.publish();
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
            let Some(c) = self.serving.owner() else {
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

    fn on_upcall(&mut self, ep: &mut Endpoint, u: Upcall) {
        let conn = u.conn();
        let held = &mut self.held;
        self.serving.on_upcall(ep, conn, u, &mut |owner| {
            if owner.is_none() {
                *held = None;
            }
        });
    }
}

/// Which session the appliance serves — the one that last sent a TLP or connected — and
/// the resets PCIe would do: a host back with a new epoch resets every function (hot
/// reset), the served session going down too (surprise-down). `K` names a session: its
/// `ConnId`, or (link, `ConnId`) when there are several links.
#[derive(Debug)]
pub struct Serving<K> {
    owner: Option<K>,
    epochs: Vec<(K, u32)>,
}

impl<K> Default for Serving<K> {
    fn default() -> Self {
        Serving {
            owner: None,
            epochs: Vec::new(),
        }
    }
}

impl<K: Copy + PartialEq> Serving<K> {
    /// The session answered now.
    pub fn owner(&self) -> Option<K> {
        self.owner
    }

    /// Act on one upcall from session `key`. `owner_changed` sees a new owner before the
    /// endpoint acts on the TLP that made it the owner (a sender thread must know where
    /// the answers go before they exist).
    pub fn on_upcall(
        &mut self,
        ep: &mut Endpoint,
        key: K,
        u: Upcall,
        owner_changed: &mut dyn FnMut(Option<K>),
    ) {
        match u {
            Upcall::Tlp { tlp, .. } => {
                self.set_owner(Some(key), owner_changed);
                if let Err(e) = ep.handle_tlp(&tlp) {
                    tracing::warn!("appliance: {e}");
                }
            }
            Upcall::Event {
                event:
                    Event::Connected {
                        host,
                        peer,
                        peer_epoch,
                    },
                ..
            } => {
                tracing::info!("appliance: host {host} connected from {peer}");
                match self.epochs.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, e)) if *e != peer_epoch => {
                        // The host restarted: what it set up is gone, as after a hot reset.
                        ep.reset_all();
                        *e = peer_epoch;
                    }
                    Some(_) => {}
                    None => self.epochs.push((key, peer_epoch)),
                }
                self.set_owner(Some(key), owner_changed);
            }
            Upcall::Event {
                conn,
                event: Event::Down { reason, .. },
            } => {
                tracing::warn!("appliance: session {} down: {reason:?}", conn.0);
                if self.owner == Some(key) {
                    // Link down resets the functions, as a surprise-down does on PCIe.
                    self.set_owner(None, owner_changed);
                    ep.reset_all();
                }
            }
            Upcall::Dropped { error, .. } => {
                tracing::debug!("appliance: TLP not sent: {error}");
            }
        }
    }

    fn set_owner(&mut self, owner: Option<K>, changed: &mut dyn FnMut(Option<K>)) {
        if self.owner != owner {
            self.owner = owner;
            changed(owner);
        }
    }
}
