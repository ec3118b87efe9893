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
//!   serving thread fed by all of them, which also routes the endpoint's outbound queue to
//!   the owners' sessions.
//!
//! Either way the pool's routing core ([`Router`]) decides which session every TLP may reach,
//! and a [`Control`] handle changes assignments while it serves.
//!
//! Either way every listener is opened before readiness is announced (all or nothing), and
//! the stop is orderly: devices first (their workers end), then the links.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::Select;

use super::config::{ApplianceConfig, AssignSpec};
use super::control::{Control, ControlError, ControlPort, PoolEvent};
use super::counters::{ApplianceStats, Counters};
use super::devices::{self, BuildWarning, Scratch};
use super::inventory::{FunctionEntry, Inventory};
use super::pump::{Pump, STATS_EVERY};
use super::router::{LinkOp, Router};
use super::ApplianceError;
use crate::endpoint::Proxy;
use crate::transport::driver::{
    self, Direct, DriverConfig, HandleError, Peers, Port, TransportHandle,
};
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
    /// The pool: inventory, views, assignments, and the routing of every TLP.
    router: Router<(usize, ConnId)>,
    control: Control,
    port: ControlPort,
    warnings: Vec<BuildWarning>,
    counters: Counters,
    scratch: Scratch,
}

/// What serving keeps of an [`Appliance`] (see [`Appliance::into_serving`]).
struct Serving {
    endpoint: Proxy,
    router: Router<(usize, ConnId)>,
    control: Control,
    port: ControlPort,
    counters: Counters,
    scratch: Scratch,
}

/// A link to serve on, and the name its errors carry.
type NamedPort = (String, Box<dyn Port>);

impl Appliance {
    /// Read the keys and build every device of `cfg` (backing files opened or created), and
    /// apply its assignments. Nothing listens yet.
    ///
    /// Assignments: the configured ones (`[[assign]]`, `assign =`); a configuration with none
    /// and exactly one accepted host (the single-host appliance, the development key
    /// included) gives every function to that host. Otherwise unassigned functions are
    /// visible to no host until [`Control::assign`].
    pub fn build(cfg: ApplianceConfig) -> Result<Appliance, ApplianceError> {
        Self::build_with(cfg, |_, configured| StartAssignments {
            restored: Vec::new(),
            configured,
        })
    }

    /// [`Appliance::build`], with the caller choosing the assignments made at start: `choose`
    /// sees the inventory and the assignments [`Appliance::build`] would make (the configured
    /// ones, or the single-host default) and returns what to apply. The management API uses
    /// it to restore the assignments it acknowledged before a restart (its store wins over
    /// the configuration, docs/api.md "Persistence").
    pub fn build_with(
        cfg: ApplianceConfig,
        choose: impl FnOnce(&Inventory, Vec<AssignSpec>) -> StartAssignments,
    ) -> Result<Appliance, ApplianceError> {
        let (key, hosts) = cfg.identity()?;
        let mut b = devices::build(&cfg)?;
        let inventory = std::mem::take(&mut b.inventory);
        let warnings = std::mem::take(&mut b.warnings);
        let probes = std::mem::take(&mut b.probes);
        let (endpoint, outbound, scratch) = b.into_parts();
        let plan = choose(&inventory, default_assignments(&cfg, &inventory));
        let mut router = Router::new(inventory, outbound, cfg.removal_grace);
        for a in &plan.restored {
            match router.assign(&a.function, a.host) {
                Ok(()) => {}
                // Moved already with the other functions of its card.
                Err(ControlError::AlreadyAssigned { owner, .. }) if owner == a.host => {}
                Err(e) => tracing::warn!(
                    function = %a.function,
                    host = %a.host,
                    error = %e,
                    "appliance: a restored assignment cannot be applied; skipped"
                ),
            }
        }
        for a in &plan.configured {
            match router.assign(&a.function, a.host) {
                Ok(()) => {}
                Err(ControlError::AlreadyAssigned { owner, .. }) if !plan.restored.is_empty() => {
                    tracing::warn!(
                        function = %a.function,
                        host = %a.host,
                        %owner,
                        "appliance: configured assignment not applied: a restored one gave the card away"
                    )
                }
                Err(e) => return Err(e.into()),
            }
        }
        for (id, probe) in probes {
            router.watch(id, probe);
        }
        router.set_keys(hosts.clone());
        let (control, port) = Control::new();
        port.publish(router.snapshot());
        Ok(Appliance {
            cfg,
            key,
            hosts,
            endpoint,
            router,
            control,
            port,
            warnings,
            counters: Counters::default(),
            scratch,
        })
    }

    /// The run-time control of its pool (commands wait until it serves).
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &ApplianceConfig {
        &self.cfg
    }

    /// The functions it fronts, in configuration order.
    pub fn functions(&self) -> &[FunctionEntry] {
        self.router.inventory().functions()
    }

    /// The inventory: every function under its stable id and owner, and the known hosts.
    pub fn inventory(&self) -> &Inventory {
        self.router.inventory()
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
        let control = self.control.clone();
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
                control,
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

    /// What serving keeps of the appliance: the endpoint, the pool's router (which holds the
    /// endpoint's outbound queue), the control channel, the counters and the scratch files
    /// (dropped after the endpoint, so the devices' workers end first).
    fn into_serving(self) -> Serving {
        Serving {
            endpoint: self.endpoint,
            router: self.router,
            control: self.control,
            port: self.port,
            counters: self.counters,
            scratch: self.scratch,
        }
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
        let Serving {
            mut endpoint,
            router,
            control,
            port: cport,
            counters,
            scratch,
        } = self.into_serving();
        let mut router = router.rekey(|k| k.1);
        let mut pump = Pump::new(Direct::new(port, dc), &endpoint);
        control.set_wake(pump.wake());
        on_ready(&Ready {
            listen: vec![pump.local_addr()],
            functions,
        })
        .map_err(ApplianceError::Announce)?;
        let result = pump.run(&mut endpoint, &mut router, &cport, stop, &counters);
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
        let Serving {
            mut endpoint,
            mut router,
            control,
            port: cport,
            counters,
            scratch,
        } = self.into_serving();
        let links = handles;
        // Commands and device-thread TLPs wake the select below through this channel.
        let (wake_tx, wake_rx) = crossbeam::channel::bounded::<()>(1);
        {
            let w = wake_tx.clone();
            endpoint.set_outbound_wake(Arc::new(move || {
                let _ = w.try_send(());
            }));
        }
        control.set_wake(Arc::new(move || {
            let _ = wake_tx.try_send(());
        }));
        let publish = |links: &[TransportHandle], ep: &Proxy, router: &mut Router<_>| {
            // By link index (a link that stopped shows nothing; the loop ends then anyway).
            let stats = links
                .iter()
                .map(|l| l.stats().unwrap_or_default())
                .collect();
            super::pump::publish_all(&counters, &cport, stats, |i, c| (i, ConnId(c)), ep, router);
        };
        let announced = on_ready(&Ready {
            listen: links.iter().map(TransportHandle::local_addr).collect(),
            functions,
        })
        .map_err(ApplianceError::Announce);

        let mut result = announced;
        let mut published = Instant::now();
        let mut events: Vec<PoolEvent> = Vec::new();
        let kicks = endpoint.kicks();
        while result.is_ok() && !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            // Time for the endpoint's DMA requester (queued reads, timeouts) and the pool's
            // grace periods; then commands, then what the functions queued.
            endpoint.poll(now);
            router.poll(&mut endpoint, now);
            while let Ok(c) = cport.commands.try_recv() {
                router.command(&mut endpoint, c, now);
            }
            for op in router.take_link_ops() {
                for l in &links {
                    let r = match &op {
                        LinkOp::Add(k) => l.add_host(k.clone()),
                        LinkOp::Remove(h) => l.remove_host(*h),
                    };
                    if let Err(e) = r {
                        tracing::warn!("appliance: host change not applied to a link: {e}");
                    }
                }
            }
            router.drain_outbound(usize::MAX);
            let held = flush_threaded(&links, &mut router);
            router.take_events(&mut events);
            cport.notify(&mut events);
            if router.changed() || published.elapsed() >= STATS_EVERY {
                publish(&links, &endpoint, &mut router);
                published = Instant::now();
            }
            for answer in router.take_answers() {
                answer();
            }
            if !endpoint.outbound_is_empty() || !cport.commands.is_empty() {
                continue;
            }
            let cap = if held {
                Duration::from_micros(200)
            } else {
                Duration::from_millis(100)
            };
            let wait = endpoint.poll_wait(Instant::now(), cap);
            let wait = router.poll_timeout().map_or(wait, |t| {
                wait.min(t.saturating_duration_since(Instant::now()))
            });
            let mut sel = Select::new();
            for l in links.iter() {
                sel.recv(l.upcalls());
            }
            // A device thread queued a DMA read, a TLP, or a command arrived.
            let kick = sel.recv(&kicks);
            let woken = sel.recv(&wake_rx);
            let Ok(op) = sel.select_timeout(wait) else {
                continue;
            };
            let i = op.index();
            if i == kick {
                let _ = op.recv(&kicks);
                continue;
            }
            if i == woken {
                let _ = op.recv(&wake_rx);
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
            let now = Instant::now();
            router.on_upcall(&mut endpoint, (i, up.conn()), up, now);
            // What else that link delivered, before the per-pass work above (which scans
            // every function): one pass per TLP made the loop's cost per TLP grow with the
            // sessions (issue 11; the single-link pump does the same).
            for _ in 0..driver::RECV_PER_ROUND * 4 {
                let Ok(up) = links[i].upcalls().try_recv() else {
                    break;
                };
                router.on_upcall(&mut endpoint, (i, up.conn()), up, now);
            }
        }
        // Orderly stop: devices first (their workers end), then the links.
        let ep_stats = endpoint.stats();
        publish(&links, &endpoint, &mut router);
        drop(endpoint);
        drop(scratch);
        let stats = links.iter().filter_map(|l| l.stats().ok()).collect();
        counters.publish(stats, ep_stats, router.stats());
        for t in links {
            t.shutdown();
        }
        result
    }
}

/// Send what the router queued on the links, in order (asking for the queue again for every
/// TLP: it is topped up from the functions' queues in their priorities' order), without
/// blocking; `true` when a link's queue is full and TLPs wait.
fn flush_threaded(links: &[TransportHandle], router: &mut Router<(usize, ConnId)>) -> bool {
    while let Some(((i, conn), t)) = router.transmit_queue().pop_front() {
        match links[i].try_send(conn, t) {
            Ok(()) => {}
            Err(HandleError::Full(t)) => {
                router.transmit_queue().push_front(((i, conn), t));
                return true;
            }
            Err(e) => tracing::debug!("appliance: TLP not sent: {e}"),
        }
    }
    false
}

/// The assignments to apply at start: the configured ones, or — with none configured and one
/// accepted host — every function to that host (the single-host appliance): each card, or for
/// a card whose virtual functions the appliance pools, each of those VFs (the PF is withheld).
fn default_assignments(cfg: &ApplianceConfig, inv: &Inventory) -> Vec<AssignSpec> {
    if !cfg.assignments.is_empty() {
        return cfg.assignments.clone();
    }
    let fns = inv.functions();
    let pooled = |dev: u8| {
        fns.iter()
            .any(|o| o.vf_of.is_some() && o.bdf.device() == dev)
    };
    match inv.hosts() {
        [only] => fns
            .iter()
            .filter(|f| match f.vf_of {
                Some(_) => true,
                // One entry per card: its other functions move with it.
                None => {
                    !pooled(f.bdf.device())
                        && fns
                            .iter()
                            .find(|o| o.vf_of.is_none() && o.bdf.device() == f.bdf.device())
                            .is_some_and(|first| first.id == f.id)
                }
            })
            .map(|f| AssignSpec {
                function: f.id.clone(),
                host: *only,
                vm: None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The assignments [`Appliance::build_with`] makes before serving.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartAssignments {
    /// Applied first (restored state); one that cannot be applied is logged and skipped.
    pub restored: Vec<AssignSpec>,
    /// Applied next, as configured: one that fails fails the build (unless a restored one
    /// took its card already, which is logged).
    pub configured: Vec<AssignSpec>,
}

/// An appliance serving on its own thread. Dropping it stops it.
#[derive(Debug)]
pub struct Running {
    ready: Ready,
    stop: Arc<AtomicBool>,
    counters: Counters,
    control: Control,
    thread: Option<JoinHandle<Result<(), ApplianceError>>>,
}

impl Running {
    /// The run-time control of its pool: list, assign, unassign, events.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

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
