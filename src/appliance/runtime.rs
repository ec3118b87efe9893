//! The running appliance: an [`Appliance`] is built from an [`ApplianceConfig`] (every device
//! built, nothing listening yet), then served — on the calling thread ([`Appliance::serve`],
//! what `pcietun appliance` does until SIGTERM) or on its own thread ([`Appliance::start`],
//! what tests, the bench rig and embedders do) — until it is told to stop.
//!
//! Serving shapes (docs/appliance.md "The runtime as a library" and "Inside the endpoint"):
//! * **One link** (the usual case): the endpoint runs on the thread that drives the link, a
//!   [`Pump`] on a [`Direct`] driver — a request and its completion cross no thread inside
//!   the appliance.
//! * **Several links**: a threaded driver ([`TransportHandle`]) per link, the endpoint on the
//!   serving thread fed by all of them, and a sender thread that drains the endpoint's
//!   outbound queue to the session being served.
//!
//! Either way every listener is opened before readiness is announced (all or nothing), and
//! the stop is orderly: devices first (their workers end), then the links.

use crate::sync::MutexExt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam::channel::{Receiver, Select};

use super::config::ApplianceConfig;
use super::counters::{ApplianceStats, Counters};
use super::devices::{self, BuildWarning, Scratch};
use super::inventory::{FunctionEntry, Inventory};
use super::pump::{Pump, STATS_EVERY};
use super::session::Sessions;
use super::ApplianceError;
use crate::endpoint::Proxy;
use crate::transport::driver::{self, Direct, DriverConfig, Peers, Port, TransportHandle};
use crate::transport::{ConnId, HostKey, PeerAddr, SecretKey};

/// What the appliance announces once every listener is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The bound addresses, in listen order (a `udp:…:0` listener shows its real port).
    pub listen: Vec<PeerAddr>,
    /// The functions fronted (the inventory when serving started).
    pub functions: Vec<FunctionEntry>,
}

impl Ready {
    /// The first UDP address listened on.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.listen.iter().find_map(|a| match a {
            PeerAddr::Udp(s) => Some(*s),
            _ => None,
        })
    }
}

/// An appliance with every device built, not serving yet.
#[derive(Debug)]
pub struct Appliance {
    cfg: ApplianceConfig,
    /// Our private key and the hosts we accept (read from their files at build time).
    key: SecretKey,
    hosts: Vec<HostKey>,
    endpoint: Proxy,
    outbound: Receiver<Vec<u8>>,
    inventory: Inventory,
    warnings: Vec<BuildWarning>,
    counters: Counters,
    scratch: Scratch,
}

/// A link to serve on, and the name its errors carry.
type NamedPort = (String, Box<dyn Port>);

impl Appliance {
    /// Read the keys and build every device of `cfg` (backing files opened or created).
    /// Nothing listens yet.
    pub fn build(cfg: ApplianceConfig) -> Result<Appliance, ApplianceError> {
        let (key, hosts) = cfg.identity()?;
        let mut b = devices::build(&cfg)?;
        let inventory = std::mem::take(&mut b.inventory);
        let warnings = std::mem::take(&mut b.warnings);
        let (endpoint, outbound, scratch) = b.into_parts();
        Ok(Appliance {
            cfg,
            key,
            hosts,
            endpoint,
            outbound,
            inventory,
            warnings,
            counters: Counters::default(),
            scratch,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &ApplianceConfig {
        &self.cfg
    }

    /// The functions it fronts, in configuration order.
    pub fn functions(&self) -> &[FunctionEntry] {
        self.inventory.functions()
    }

    /// The inventory: every function under its stable id, and the known hosts.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// What the operator should know about the devices built.
    pub fn warnings(&self) -> &[BuildWarning] {
        &self.warnings
    }

    /// Its counters (they keep the final values after serving stops).
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// Serve on the configured listen addresses from the calling thread until `stop` is set.
    /// `on_ready` runs once every listener is open, before the first TLP is served.
    pub fn serve(
        self,
        stop: &AtomicBool,
        on_ready: impl FnOnce(&Ready) -> io::Result<()>,
    ) -> Result<(), ApplianceError> {
        let links = self.open_listeners()?;
        self.serve_links(links, stop, on_ready)
    }

    /// As [`serve`](Self::serve), on ports the caller opened (an in-memory link, a socket in
    /// another network namespace) instead of the configured listen addresses.
    pub fn serve_on(
        self,
        ports: Vec<Box<dyn Port>>,
        stop: &AtomicBool,
        on_ready: impl FnOnce(&Ready) -> io::Result<()>,
    ) -> Result<(), ApplianceError> {
        let links = ports
            .into_iter()
            .map(|p| (p.local_addr().to_string(), p))
            .collect();
        self.serve_links(links, stop, on_ready)
    }

    /// Open the configured listeners and serve on a thread of its own; returns once they are
    /// open.
    pub fn start(self) -> Result<Running, ApplianceError> {
        let links = self.open_listeners()?;
        self.start_links(links)
    }

    /// As [`start`](Self::start), on ports the caller opened.
    pub fn start_on(self, ports: Vec<Box<dyn Port>>) -> Result<Running, ApplianceError> {
        let links = ports
            .into_iter()
            .map(|p| (p.local_addr().to_string(), p))
            .collect();
        self.start_links(links)
    }

    fn open_listeners(&self) -> Result<Vec<NamedPort>, ApplianceError> {
        self.cfg
            .listen
            .iter()
            .map(|l| {
                let name = l.to_string();
                driver::open(&name)
                    .map(|p| (name.clone(), p))
                    .map_err(|source| ApplianceError::Listen {
                        listen: name,
                        source,
                    })
            })
            .collect()
    }

    fn start_links(self, links: Vec<NamedPort>) -> Result<Running, ApplianceError> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = self.counters.clone();
        let (ready_tx, ready_rx) = crossbeam::channel::bounded::<Ready>(1);
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("appliance".into())
                .spawn(move || {
                    self.serve_links(links, &stop, |r| {
                        let _ = ready_tx.send(r.clone());
                        Ok(())
                    })
                })
                .map_err(|source| ApplianceError::Thread {
                    what: "appliance",
                    source,
                })?
        };
        match ready_rx.recv() {
            Ok(ready) => Ok(Running {
                ready,
                stop,
                counters,
                thread: Some(thread),
            }),
            // It stopped before announcing: its error says why.
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) | Err(_) => Err(ApplianceError::Panicked),
            },
        }
    }

    /// The transport settings of every link: the accepted hosts and the link knobs.
    fn driver_config(&self, link: usize) -> DriverConfig {
        let mut dc = DriverConfig::new(self.key.clone(), Peers::Accept(self.hosts.clone()));
        let o = &self.cfg.link;
        dc.inject_loss = self.cfg.inject_loss / 100.0;
        dc.transport.encrypt = o.encrypt;
        if let Some(mtu) = o.mtu {
            dc.transport.mtu = mtu;
        }
        dc.seed = if o.seed == 0 {
            0
        } else {
            o.seed.wrapping_add(link as u64)
        };
        dc.busy_poll = o.busy_poll;
        dc
    }

    fn serve_links(
        self,
        mut links: Vec<NamedPort>,
        stop: &AtomicBool,
        on_ready: impl FnOnce(&Ready) -> io::Result<()>,
    ) -> Result<(), ApplianceError> {
        match links.len() {
            0 => Err(ApplianceError::NoListener),
            1 => {
                let (name, port) = links.remove(0);
                self.serve_direct(name, port, stop, on_ready)
            }
            _ => self.serve_threaded(links, stop, on_ready),
        }
    }

    /// What serving keeps of the appliance: the endpoint, its outbound queue, the counters
    /// and the scratch files (dropped after the endpoint, so the devices' workers end first).
    fn into_serving(self) -> (Proxy, Receiver<Vec<u8>>, Counters, Scratch) {
        (self.endpoint, self.outbound, self.counters, self.scratch)
    }

    /// One link: the endpoint runs on the thread that drives the link.
    fn serve_direct(
        self,
        name: String,
        port: Box<dyn Port>,
        stop: &AtomicBool,
        on_ready: impl FnOnce(&Ready) -> io::Result<()>,
    ) -> Result<(), ApplianceError> {
        let dc = self.driver_config(0);
        let functions = self.functions().to_vec();
        let (mut endpoint, outbound, counters, scratch) = self.into_serving();
        let mut pump = Pump::new(Direct::new(port, dc), &endpoint);
        on_ready(&Ready {
            listen: vec![pump.local_addr()],
            functions,
        })
        .map_err(ApplianceError::Announce)?;
        let result = pump.run(&mut endpoint, &outbound, stop, &counters);
        // Orderly stop: devices first (their workers end), then the link.
        drop(endpoint);
        drop(scratch);
        drop(pump);
        result.map_err(|source| ApplianceError::Transport {
            listen: name,
            source,
        })
    }

    /// Several links: a threaded driver per link, the endpoint on this thread, a sender
    /// thread draining the outbound queue to the session being served.
    fn serve_threaded(
        self,
        links: Vec<NamedPort>,
        stop: &AtomicBool,
        on_ready: impl FnOnce(&Ready) -> io::Result<()>,
    ) -> Result<(), ApplianceError> {
        let functions = self.functions().to_vec();
        let mut handles = Vec::with_capacity(links.len());
        let mut names = Vec::with_capacity(links.len());
        for (i, (name, port)) in links.into_iter().enumerate() {
            let h = TransportHandle::spawn(port, self.driver_config(i)).map_err(|source| {
                ApplianceError::StartLink {
                    listen: name.clone(),
                    source,
                }
            })?;
            handles.push(h);
            names.push(name);
        }
        let (mut endpoint, outbound, counters, scratch) = self.into_serving();
        let links = Arc::new(handles);
        // Where the sender thread sends: the session being served.
        let owner: Arc<Mutex<Option<(usize, ConnId)>>> = Arc::new(Mutex::new(None));
        let sender = {
            let links = links.clone();
            let owner = owner.clone();
            std::thread::Builder::new()
                .name("appliance-tx".into())
                .spawn(move || {
                    for tlp in outbound {
                        let dst = *owner.lock_or_recover();
                        match dst {
                            Some((i, conn)) => {
                                if links[i].send(conn, Bytes::from(tlp)).is_err() {
                                    break;
                                }
                            }
                            None => tracing::debug!("appliance: no host session; TLP dropped"),
                        }
                    }
                })
                .map_err(|source| ApplianceError::Thread {
                    what: "appliance sender",
                    source,
                })?
        };
        let publish = |links: &[TransportHandle], ep: &Proxy| {
            let stats = links.iter().filter_map(|l| l.stats().ok()).collect();
            counters.publish(stats, ep.stats());
        };
        let announced = on_ready(&Ready {
            listen: links.iter().map(TransportHandle::local_addr).collect(),
            functions,
        })
        .map_err(ApplianceError::Announce);

        let mut sessions = Sessions::default();
        let mut result = announced;
        let mut published = Instant::now();
        let kicks = endpoint.kicks();
        while result.is_ok() && !stop.load(Ordering::SeqCst) {
            // Time for the endpoint's DMA requester: queued reads, timeouts.
            endpoint.poll(Instant::now());
            if published.elapsed() >= STATS_EVERY {
                publish(&links, &endpoint);
                published = Instant::now();
            }
            let wait = endpoint.poll_wait(Instant::now(), Duration::from_millis(100));
            let mut sel = Select::new();
            for l in links.iter() {
                sel.recv(l.upcalls());
            }
            // A device thread queued a DMA read.
            let kick = sel.recv(&kicks);
            let Ok(op) = sel.select_timeout(wait) else {
                continue;
            };
            let i = op.index();
            if i == kick {
                let _ = op.recv(&kicks);
                continue;
            }
            let up = match op.recv(links[i].upcalls()) {
                Ok(up) => up,
                Err(_) => {
                    result = Err(ApplianceError::LinkStopped {
                        listen: names[i].clone(),
                    });
                    break;
                }
            };
            let mut set_owner = |o: Option<(usize, ConnId)>| {
                *owner.lock_or_recover() = o;
            };
            sessions.on_upcall(&mut endpoint, (i, up.conn()), up, &mut set_owner);
        }
        // Orderly stop: devices first (their workers end), then the sender, then the links.
        let ep_stats = endpoint.stats();
        drop(endpoint);
        drop(scratch);
        let _ = sender.join();
        if let Ok(links) = Arc::try_unwrap(links) {
            let stats = links.iter().filter_map(|l| l.stats().ok()).collect();
            counters.publish(stats, ep_stats);
            for t in links {
                t.shutdown();
            }
        }
        result
    }
}

/// An appliance serving on its own thread. Dropping it stops it.
#[derive(Debug)]
pub struct Running {
    ready: Ready,
    stop: Arc<AtomicBool>,
    counters: Counters,
    thread: Option<JoinHandle<Result<(), ApplianceError>>>,
}

impl Running {
    /// What it announced: bound addresses and functions.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Its counters, at most 100 ms old.
    pub fn stats(&self) -> ApplianceStats {
        self.counters.snapshot()
    }

    /// A shared handle on its counters.
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// True once the serving thread has ended (a link failed; [`shutdown`](Self::shutdown)
    /// says why).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stop serving (devices first, then the links) and return the final counters, or what
    /// made it stop on its own.
    pub fn shutdown(mut self) -> Result<ApplianceStats, ApplianceError> {
        self.stop_and_join()?;
        Ok(self.counters.snapshot())
    }

    fn stop_and_join(&mut self) -> Result<(), ApplianceError> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| ApplianceError::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            tracing::warn!("appliance: {e}");
        }
    }
}
