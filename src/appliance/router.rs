//! The pool's routing core: which host session each TLP of the appliance may reach, in both
//! directions, and the ownership changes that move functions between hosts (docs/appliance.md
//! "Isolation" and "Assignment"; docs/protocol.md §10 slot messages; PCIe r5.0 §6.7 hot-plug,
//! §2.3.1 Unsupported Request, §2.3.2 unexpected completions).
//!
//! Sans-I/O with explicit time, like the endpoint proxy it drives: the serving loop hands it
//! each upcall of the transport ([`Router::on_upcall`]), the time ([`Router::poll`]) and the
//! control commands ([`Router::command`]); it drives the [`Proxy`] and queues what goes on the
//! wire, per session, in [`Router::transmit_queue`] (the loop drains it in order). A seeded
//! simulator drives the same struct (tests/appliance_pool_sim.rs).
//!
//! Rules (enforced here, never trusted to a host):
//! * inbound, a TLP of host H's session reaches only H's functions: configuration requests by
//!   the device number in H's view ([`Views::to_appliance`]) — anything else completes UR with
//!   no data (all-ones to the reader), as a Type 0 request to an absent device does; memory, IO
//!   and AtomicOp requests are decoded against the BARs of H's functions only
//!   ([`Proxy::handle_tlp_scoped`]), so two hosts may program the same addresses; completions
//!   reach only the outstanding requests of the H-owned function they name;
//! * outbound, every TLP the functions send (DMA requests, MSI/MSI-X writes, INTx messages)
//!   names its function in bytes 4–5 and goes to that function's owner's session only, with
//!   the ID translated to the owner's view; the completions of a host's requests go back to
//!   that session; a TLP of an unowned function, or of one whose owner is offline, is dropped
//!   and counted ([`RouterStats`]);
//! * a host's session going down, being replaced by another session of the same host, or the
//!   host coming back with a new epoch resets **that host's** functions only;
//! * functions move in units: a card (every physical function of one device number, which
//!   keeps its function numbers in one slot) or one SR-IOV VF (function 0 of its own slot).
//!   Unassign is orderly — `RemovalRequest`, then the host's `RemovalAck` or the grace period,
//!   then `Removed`; the function is reset (volatile state wiped, media kept) before anyone
//!   else can own it.
//!
//! The data path allocates nothing but the TLPs themselves: a 256-entry table maps an
//! appliance device/function number to its owner and host-visible number, and each host's
//! [`FunctionSet`] scopes the endpoint's lookups.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam::channel::Receiver;

use super::arbiter::{Arbiter, BACKLOG_HIGH, BACKLOG_LOW, OWN, PRIORITY_DEFAULT};
use super::config::AssignSpec;
use super::control::{
    Command, ControlError, Done, FunctionStatus, HostStatus, NewCard, PoolEvent, Snapshot,
    VmConsumer,
};
use super::devices::{HealthProbe, Scratch};
use super::inventory::{FunctionEntry, FunctionId, FunctionState, Inventory, InventoryError};
use super::policy::{Policy, Shaper, HOLD_HIGH, HOLD_LOW};
use super::traffic::{FunctionTraffic, HostTraffic};
use super::view::{Detached, SlotState, Target, ViewError, Views};
use crate::endpoint::wire::{self, CplStatus, ParsedHeader, ParsedKind as Kind};
use crate::endpoint::{Bdf, FunctionSet, Proxy};
use crate::pci::caps::X86_MSI_WINDOW;
use crate::ratelimit::TokenBucket;
use crate::sync::MutexExt;
use crate::tlp::message::code;
use crate::tlp::slot::{ConsumerReport, Slot, SlotEvent, SlotMessage, VmName, VmTarget};
use crate::tlp::Tlp;
use crate::transport::driver::Upcall;
use crate::transport::{Event, HostId, HostKey, PublicKey};

/// Most TLPs waiting for room in the sessions' queues before the router stops taking the
/// endpoint's outbound queue (its bound then pushes back on the device threads).
pub const TRANSMIT_CAP: usize = 4096;

/// TLPs taken from the functions' queues ([`Arbiter`]) into the transmit queue at a time:
/// few, so that the order of the link stays the arbiter's (a function's priority acts within
/// this many TLPs), and enough that the serving loop always has a batch to send.
pub const STAGE: usize = 64;

/// Consumer reports (VM events) one host session may send per second on average
/// ([`REPORT_BURST`] at once); more are dropped and counted, so a hostile host cannot flood the
/// management plane's event stream. A VM event is one per attach or detach: an honest agent
/// sends a handful per assignment.
pub const REPORTS_PER_SECOND: u32 = 10;
/// Consumer reports one host session may send at once.
pub const REPORT_BURST: u32 = 20;

/// A change to the hosts the links accept, for the serving loop to apply to every link
/// (the router owns no link).
#[derive(Debug, Clone)]
pub(crate) enum LinkOp {
    /// Accept this host.
    Add(HostKey),
    /// Stop accepting this host and close its session.
    Remove(HostId),
}

/// Everything the routing core dropped, refused or did to a host, counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RouterStats {
    /// TLPs from a session the router has no `Connected` for (never acted on).
    pub unknown_session: u64,
    /// Configuration requests to a device number outside the host's view (answered UR).
    pub no_device: u64,
    /// Completions naming no function of the sending host (dropped; they change nothing).
    pub foreign_completions: u64,
    /// TLPs of functions that have no owner (unassigned, detached, resetting): dropped.
    pub unowned_outbound: u64,
    /// TLPs of functions whose owner has no session up: dropped.
    pub owner_offline: u64,
    /// Outbound TLPs too short or shaped unlike anything the endpoint sends: dropped.
    pub malformed_outbound: u64,
    /// Slot messages from a host that do not decode, or that a host may not send.
    pub bad_slot_messages: u64,
    /// Times a host's functions were reset because its session went down, was replaced, or
    /// its host restarted.
    pub host_resets: u64,
    /// Sessions of a host replaced by a newer session of the same host.
    pub sessions_replaced: u64,
    /// Functions detached from their owner (after an acknowledgement, the grace period, or
    /// at once when the owner had no session).
    pub detached: u64,
    /// Consumer reports (VM events) accepted and raised as `PoolEvent::VmConsumer`.
    pub consumer_reports: u64,
    /// Consumer reports for a slot the sending host does not have, or for another generation
    /// of its assignment (a stale or forged report): dropped.
    pub stale_consumer_reports: u64,
    /// Consumer reports over the session's rate ([`REPORTS_PER_SECOND`]): dropped.
    pub limited_consumer_reports: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    /// Index into `hosts`.
    host: usize,
    /// Device/function number in the host's view.
    host_devfn: u8,
}

#[derive(Debug)]
struct HostState<K> {
    id: HostId,
    session: Option<K>,
    epoch: Option<u32>,
    /// The device/function numbers of the functions it owns (appliance numbering).
    scope: FunctionSet,
    rtt: Option<Duration>,
    /// Traffic of its sessions that ended.
    traffic: HostTraffic,
    /// Traffic of its current session, as last sampled.
    live: HostTraffic,
    /// The current session's budget of consumer reports, and when it last earned credit.
    reports: TokenBucket,
    reports_at: Option<Instant>,
}

impl<K> HostState<K> {
    /// A known host with no session, owning nothing.
    fn new(id: HostId) -> HostState<K> {
        HostState {
            id,
            session: None,
            epoch: None,
            scope: FunctionSet::EMPTY,
            rtt: None,
            traffic: HostTraffic::default(),
            live: HostTraffic::default(),
            reports: TokenBucket::new(REPORTS_PER_SECOND, REPORT_BURST),
            reports_at: None,
        }
    }
}

/// An unassign waiting for its function to be detached.
struct Pending {
    /// The id the slot is kept under (the card's first function, or the VF).
    key: FunctionId,
    done: Done,
}

/// An answer to a control command, given after the pool it changed is published.
type Answer = Box<dyn FnOnce() + Send>;

/// The routing core for sessions named by `K` (a `ConnId`, or (link, `ConnId`)).
pub struct Router<K> {
    inventory: Inventory,
    /// The keys of the hosts accepted (configured, or added at run time).
    keys: Vec<HostKey>,
    /// Changes to the accepted hosts the serving loop is to apply to its links.
    link_ops: Vec<LinkOp>,
    views: Views,
    hosts: Vec<HostState<K>>,
    routes: [Option<Route>; 256],
    outbound: Receiver<Vec<u8>>,
    out: VecDeque<(K, Bytes)>,
    replies: Vec<Vec<u8>>,
    pending: Vec<Pending>,
    events: Vec<PoolEvent>,
    stats: RouterStats,
    changed: bool,
    /// Temporary backing files of cards added while serving (dropped after the endpoint).
    scratch: Scratch,
    /// Functions whose backing may go away (vfio-user servers), checked on every poll.
    probes: Vec<Probe>,
    /// Answers to add/remove commands, given after the pool they changed is published.
    answers: Vec<Answer>,
    /// Outcomes of unassign commands, which arrive with the detach (any time later): given,
    /// like `answers`, only after the next publish.
    late: Arc<Mutex<Vec<Answer>>>,
    /// Per-function traffic by device/function number (appliance numbering).
    traffic: Box<[FunctionTraffic; 256]>,
    /// The requester timeouts last read of each function ([`Router::sample_requesters`]).
    timeouts_seen: Box<[u64; 256]>,
    /// The VM consuming each assigned slot, by the slot's key (its unit's first function):
    /// named by the assignment, then as its owner last reported. Gone with the assignment.
    consumers: std::collections::BTreeMap<FunctionId, VmConsumer>,
    /// The VM each assignment named (by the slot's key), sent again as a [`VmTarget`] at the
    /// start of every session of its owner. Gone with the assignment.
    named: std::collections::BTreeMap<FunctionId, VmName>,
    /// Per-function caps (docs/api.md "Policy"), by function id: they belong to the function
    /// whoever owns it.
    policies: Vec<(FunctionId, Policy)>,
    /// The shapers enforcing them, by appliance device/function number.
    shapers: Vec<Option<Box<Shaper>>>,
    /// The device/function numbers that have a shaper.
    shaped: FunctionSet,
    /// The functions whose DMA writes are held (their shaper is at [`HOLD_HIGH`]).
    gated: FunctionSet,
    /// The functions' queues for the link, shared by priority (docs/api.md "Policy").
    arbiter: Arbiter<K>,
    /// The functions whose arbiter queue is at [`BACKLOG_HIGH`] (their DMA writes are held too).
    backed: FunctionSet,
    /// The holds last given to the endpoint (`gated` ∪ `backed` as of then).
    holds: FunctionSet,
}

/// A watched function: its probe, and whether its failure was handled.
struct Probe {
    function: FunctionId,
    probe: HealthProbe,
    failed: bool,
    /// Who owned it when it failed (it gets it back on recovery, if still connected).
    owner: Option<HostId>,
    /// While failed and revivable: the thread bringing its backing back.
    revival: Option<Revival>,
}

/// First wait before bringing a failed backing back; it doubles after each failed attempt.
pub const REVIVE_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between attempts.
pub const REVIVE_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What a revival thread reports.
enum Revived {
    /// An attempt failed; the next one is `next` from now.
    Attempt { why: String, next: Duration },
    /// The backing is back, serving the same device: its new model and probe.
    Back(Box<dyn crate::endpoint::Device>, HealthProbe),
}

/// A thread making attempts with capped exponential backoff until the backing is back
/// or it is told to stop (the function was removed, the router dropped).
struct Revival {
    rx: crossbeam::channel::Receiver<Revived>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Revival {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// The identity a revived backing must show to stand in for the failed one: vendor, device
/// and class (a different card on the same socket is refused).
fn same_card(
    want: &super::inventory::PciIdentity,
    dev: &mut dyn crate::endpoint::Device,
) -> Result<(), String> {
    let got = super::inventory::PciIdentity::read(dev);
    if (got.vendor, got.device, got.class) == (want.vendor, want.device, want.class) {
        Ok(())
    } else {
        Err(format!(
            "the server now serves a different device ({:04x}:{:04x} class {:06x}, was \
             {:04x}:{:04x} class {:06x}): refused",
            got.vendor, got.device, got.class, want.vendor, want.device, want.class
        ))
    }
}

impl Revival {
    /// Start bringing `function` (identity `want`) back with `revive`.
    fn start(
        function: &FunctionId,
        want: super::inventory::PciIdentity,
        revive: super::devices::Reviver,
    ) -> Option<Revival> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (tx, rx) = crossbeam::channel::unbounded();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("revive-{function}"))
            .spawn(move || {
                let mut delay = REVIVE_BACKOFF_MIN;
                loop {
                    let until = Instant::now() + delay;
                    while Instant::now() < until {
                        if s2.load(Ordering::Acquire) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20).min(delay));
                    }
                    if s2.load(Ordering::Acquire) {
                        return;
                    }
                    let r = (revive.0)().and_then(|(mut dev, probe)| {
                        same_card(&want, &mut *dev).map(|()| (dev, probe))
                    });
                    let next = (delay * 2).min(REVIVE_BACKOFF_MAX);
                    let msg = match r {
                        Ok((dev, probe)) => {
                            let _ = tx.send(Revived::Back(dev, probe));
                            return;
                        }
                        Err(why) => Revived::Attempt { why, next },
                    };
                    if tx.send(msg).is_err() {
                        return;
                    }
                    delay = next;
                }
            });
        match spawned {
            Ok(_) => Some(Revival { rx, stop }),
            Err(e) => {
                tracing::error!(%function, "appliance: cannot start reviving the function: {e}");
                None
            }
        }
    }
}

impl<K> std::fmt::Debug for Router<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("functions", &self.inventory.functions().len())
            .field("hosts", &self.hosts.len())
            .field("queued", &self.out.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<K: Copy + PartialEq + std::fmt::Debug> Router<K> {
    /// A router over `inventory` (its hosts are the ones that may own functions) that takes
    /// the endpoint's TLPs from `outbound`; removals wait `grace` for an acknowledgement.
    pub fn new(inventory: Inventory, outbound: Receiver<Vec<u8>>, grace: Duration) -> Router<K> {
        let hosts = inventory
            .hosts()
            .iter()
            .map(|h| HostState::new(*h))
            .collect();
        Router {
            inventory,
            keys: Vec::new(),
            link_ops: Vec::new(),
            views: Views::new(grace),
            hosts,
            routes: [None; 256],
            outbound,
            out: VecDeque::new(),
            replies: Vec::new(),
            pending: Vec::new(),
            events: Vec::new(),
            stats: RouterStats::default(),
            changed: true,
            scratch: Scratch::default(),
            probes: Vec::new(),
            answers: Vec::new(),
            late: Arc::default(),
            traffic: Box::new([FunctionTraffic::default(); 256]),
            timeouts_seen: Box::new([0; 256]),
            consumers: std::collections::BTreeMap::new(),
            named: std::collections::BTreeMap::new(),
            policies: Vec::new(),
            shapers: (0..256).map(|_| None).collect(),
            shaped: FunctionSet::EMPTY,
            gated: FunctionSet::EMPTY,
            arbiter: Arbiter::new(),
            backed: FunctionSet::EMPTY,
            holds: FunctionSet::EMPTY,
        }
    }

    /// The same router with sessions named another way (the runtime builds one before it
    /// knows whether it serves one link or several).
    pub fn rekey<J: Copy + PartialEq + std::fmt::Debug>(self, f: impl Fn(K) -> J) -> Router<J> {
        Router {
            inventory: self.inventory,
            keys: self.keys,
            link_ops: self.link_ops,
            views: self.views,
            hosts: self
                .hosts
                .into_iter()
                .map(|h| HostState {
                    id: h.id,
                    session: h.session.map(&f),
                    epoch: h.epoch,
                    scope: h.scope,
                    rtt: h.rtt,
                    traffic: h.traffic,
                    live: h.live,
                    reports: h.reports,
                    reports_at: h.reports_at,
                })
                .collect(),
            routes: self.routes,
            outbound: self.outbound,
            out: self.out.into_iter().map(|(k, t)| (f(k), t)).collect(),
            replies: self.replies,
            pending: self.pending,
            events: self.events,
            stats: self.stats,
            changed: self.changed,
            scratch: self.scratch,
            probes: self.probes,
            answers: self.answers,
            late: self.late,
            traffic: self.traffic,
            timeouts_seen: self.timeouts_seen,
            consumers: self.consumers,
            named: self.named,
            policies: self.policies,
            shapers: self.shapers,
            shaped: self.shaped,
            gated: self.gated,
            arbiter: self.arbiter.map_keys(&f),
            backed: self.backed,
            holds: self.holds,
        }
    }

    /// The keys of the hosts accepted at start (the configured ones): what
    /// [`Control::set_host_key`](super::Control::set_host_key) keeps the PSK of, and what
    /// [`Control::add_host`](super::Control::add_host) checks a new key against.
    pub(crate) fn set_keys(&mut self, keys: Vec<HostKey>) {
        for k in &keys {
            if !self.hosts.iter().any(|h| h.id == k.host) {
                self.inventory.add_host(k.host);
                self.hosts.push(HostState::new(k.host));
            }
        }
        self.keys = keys;
    }

    /// The changes to the accepted hosts since the last call, for the serving loop to apply
    /// to every link, in order.
    pub(crate) fn take_link_ops(&mut self) -> Vec<LinkOp> {
        std::mem::take(&mut self.link_ops)
    }

    /// Accept a new host at run time (it owns nothing yet; it gets functions by assignment).
    fn add_host(&mut self, key: HostKey) -> Result<(), ControlError> {
        if self.keys.iter().any(|k| k.host == key.host)
            || self.hosts.iter().any(|h| h.id == key.host)
        {
            return Err(ControlError::HostExists(key.host));
        }
        if let Some(k) = self.keys.iter().find(|k| k.public == key.public) {
            return Err(ControlError::KeyInUse(k.host));
        }
        tracing::info!(host = %key.host, "appliance: host added");
        self.inventory.add_host(key.host);
        self.hosts.push(HostState::new(key.host));
        self.keys.push(key.clone());
        self.link_ops.push(LinkOp::Add(key));
        self.changed = true;
        Ok(())
    }

    /// Stop accepting `host`: refused while it owns functions (or one is being removed from
    /// it); otherwise its session is closed (a `HostLost` if it was up) and it is forgotten.
    fn remove_host(
        &mut self,
        ep: &mut Proxy,
        host: HostId,
        now: Instant,
    ) -> Result<(), ControlError> {
        let Some(hi) = self.hosts.iter().position(|h| h.id == host) else {
            return Err(ControlError::UnknownHost(host));
        };
        let owned = self.inventory.owned_by(host).count()
            + self.views.view(&host).map_or(0, |v| v.slots().count());
        if owned > 0 || !self.hosts[hi].scope.is_empty() {
            return Err(ControlError::HostOwnsFunctions(host));
        }
        if self.hosts[hi].session.is_some() {
            self.lose(ep, hi, now);
        }
        self.hosts.remove(hi);
        for r in self.routes.iter_mut().flatten() {
            if r.host > hi {
                r.host -= 1;
            }
        }
        self.inventory.remove_host(host);
        self.keys.retain(|k| k.host != host);
        self.link_ops.push(LinkOp::Remove(host));
        tracing::info!(%host, "appliance: host removed; its key is no longer accepted");
        self.changed = true;
        Ok(())
    }

    /// Give `host` a new key: its session under the old key is closed (a surprise-down: its
    /// functions are reset and stay its own), the old key is refused from now on, the new key
    /// connects and gets the same functions. The PSK, if any, stays.
    fn set_host_key(&mut self, host: HostId, public: PublicKey) -> Result<(), ControlError> {
        let Some(i) = self.keys.iter().position(|k| k.host == host) else {
            return Err(ControlError::UnknownHost(host));
        };
        if self.keys[i].public == public {
            return Ok(());
        }
        if let Some(k) = self.keys.iter().find(|k| k.public == public) {
            return Err(ControlError::KeyInUse(k.host));
        }
        self.keys[i].public = public;
        self.link_ops.push(LinkOp::Remove(host));
        self.link_ops.push(LinkOp::Add(self.keys[i].clone()));
        tracing::info!(%host, "appliance: host re-keyed; its old key is no longer accepted");
        self.changed = true;
        Ok(())
    }

    /// Apply the start assignments (configured or restored; before serving: no session is
    /// up), each with the VM it names.
    pub fn apply(&mut self, assignments: &[AssignSpec]) -> Result<(), ControlError> {
        for a in assignments {
            self.assign_vm(&a.function, a.host, a.vm)?;
        }
        Ok(())
    }

    /// Counters.
    pub fn stats(&self) -> RouterStats {
        self.stats
    }

    /// The inventory as it stands.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The per-host views.
    pub fn views(&self) -> &Views {
        &self.views
    }

    /// The functions `host` owns now (appliance device/function numbers).
    pub fn scope(&self, host: &HostId) -> FunctionSet {
        self.hosts
            .iter()
            .find(|h| h.id == *host)
            .map_or(FunctionSet::EMPTY, |h| h.scope)
    }

    /// The session that owns appliance function `devfn` now, and the function's number in
    /// that host's view.
    pub fn owner_of(&self, devfn: u8) -> Option<(HostId, Option<K>, u8)> {
        self.routes[usize::from(devfn)].map(|r| {
            let h = &self.hosts[r.host];
            (h.id, h.session, r.host_devfn)
        })
    }

    /// What is waiting to go on the wire, in order: (session, TLP). The driver pops from
    /// the front and pushes a TLP back to the front when its session's queue is full; it
    /// calls this again for every TLP (each call tops the queue up to [`STAGE`] TLPs from the
    /// functions' queues, in the order of their priorities).
    pub fn transmit_queue(&mut self) -> &mut VecDeque<(K, Bytes)> {
        self.stage();
        &mut self.out
    }

    /// The next TLP to put on the wire for a session that `wants` more now, in order: the
    /// earliest such in the transmit queue, else the next one in the priorities' order from
    /// the functions' queues whose session does ([`Arbiter::pop_where`]). A session that
    /// wants no more (its own queue holds about a congestion window) holds up only its own
    /// TLPs: each session's TLPs still leave in their order, and another host's go past
    /// them. `None` when nothing waits for a session that wants more.
    pub fn pop_transmit(&mut self, mut wants: impl FnMut(K) -> bool) -> Option<(K, Bytes)> {
        // The earliest TLP of a session comes first: a session's later TLPs are never taken
        // from the arbiter while an earlier one waits here (it would be found first).
        if let Some(at) = self.out.iter().position(|(k, _)| wants(*k)) {
            return self.out.remove(at);
        }
        let (i, key, tlp) = self.arbiter.pop_where(|k| wants(*k))?;
        self.took(i);
        Some((key, tlp))
    }

    /// Put back a TLP that [`Router::pop_transmit`] gave and its session would not take
    /// after all (its queue was full): it is sent first when the session wants more.
    pub fn unpop_transmit(&mut self, key: K, tlp: Bytes) {
        self.out.push_front((key, tlp));
    }

    /// Anything waits to go on the wire (in the transmit queue or the functions' queues).
    pub fn transmit_pending(&self) -> bool {
        !self.out.is_empty() || !self.arbiter.is_empty()
    }

    /// Top the transmit queue up to [`STAGE`] from the arbiter.
    fn stage(&mut self) {
        while self.out.len() < STAGE {
            let Some((i, key, tlp)) = self.arbiter.pop() else {
                return;
            };
            self.took(i);
            self.out.push_back((key, tlp));
        }
    }

    /// A TLP left arbiter queue `i`: a function held at its backlog bound is released
    /// below [`BACKLOG_LOW`].
    fn took(&mut self, i: usize) {
        if i < OWN && self.arbiter.queue_len(i) < BACKLOG_LOW {
            self.backed.remove(i as u8);
        }
    }

    /// Queue `tlp` for session `key` in arbiter queue `queue` (a function's device/function
    /// number, or [`OWN`]); straight to the transmit queue while nothing waits in the arbiter.
    fn enqueue(&mut self, queue: usize, key: K, tlp: Bytes) {
        if self.arbiter.is_empty() && self.out.len() < STAGE {
            self.out.push_back((key, tlp));
            return;
        }
        self.arbiter.push(queue, key, tlp);
        if queue < OWN && self.arbiter.queue_len(queue) >= BACKLOG_HIGH {
            self.backed.insert(queue as u8);
        }
    }

    /// Everything in the arbiter to the transmit queue now, in its order (before a slot
    /// message: what was routed before it goes before it, as it did without priorities).
    fn stage_all(&mut self) {
        let out = &mut self.out;
        self.arbiter.drain(|_, k, t| out.push_back((k, t)));
        self.backed = FunctionSet::EMPTY;
    }

    /// Drop what waits for session `key`, which ended (a later session may reuse the key:
    /// nothing of this one may reach it).
    fn purge(&mut self, key: K) {
        let gone = self.arbiter.discard(&key);
        let before = self.out.len();
        self.out.retain(|(k, _)| *k != key);
        let gone = gone + before - self.out.len();
        if gone > 0 {
            tracing::debug!(?key, gone, "appliance: TLPs for an ended session dropped");
        }
        let backed = self.backed;
        for d in backed.iter() {
            if self.arbiter.queue_len(usize::from(d)) < BACKLOG_LOW {
                self.backed.remove(d);
            }
        }
    }

    /// TLPs of the function at appliance device/function number `devfn` in its queue for
    /// the link (not yet in the transmit queue).
    pub fn queued(&self, devfn: u8) -> usize {
        self.arbiter.queue_len(usize::from(devfn))
    }

    /// Events since the last call.
    pub fn take_events(&mut self, into: &mut Vec<PoolEvent>) {
        into.append(&mut self.events);
    }

    /// Whether the pool changed since the last [`snapshot`](Self::snapshot).
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Record the round-trip time the transport measured for session `key`.
    pub fn set_rtt(&mut self, key: K, rtt: Option<Duration>) {
        if let Some(h) = self.hosts.iter_mut().find(|h| h.session == Some(key)) {
            h.rtt = rtt;
        }
    }

    /// Take in the transport's counters of session `key` (its RTT and traffic), as the
    /// serving loop samples them before each publish. Unknown keys are ignored.
    pub fn sample_session(&mut self, key: K, stats: &crate::transport::Stats) {
        if let Some(h) = self.hosts.iter_mut().find(|h| h.session == Some(key)) {
            h.rtt = (stats.srtt > Duration::ZERO).then_some(stats.srtt);
            h.live = HostTraffic::of_session(stats);
        }
    }

    /// Take in the completion timeouts of every function's DMA requester.
    pub fn sample_requesters(&mut self, ep: &Proxy) {
        for e in self.inventory.functions() {
            let d = usize::from(e.bdf.0 as u8);
            let Some(now) = ep.requester_stats(e.bdf).map(|s| s.timeouts) else {
                continue;
            };
            // A reset requester starts again from zero: count from there.
            let seen = self.timeouts_seen[d].min(now);
            self.traffic[d].completion_timeouts += now - seen;
            self.timeouts_seen[d] = now;
        }
    }

    /// The traffic of the function at appliance device/function number `devfn`.
    pub fn traffic(&self, devfn: u8) -> FunctionTraffic {
        self.traffic[usize::from(devfn)]
    }

    /// Host `hi`'s session ended (or was replaced): its traffic so far is kept.
    fn end_session(&mut self, hi: usize) {
        let h = &mut self.hosts[hi];
        h.traffic = h.traffic.plus(std::mem::take(&mut h.live));
        h.rtt = None;
    }

    /// The sessions up, with their hosts.
    pub fn sessions(&self) -> impl Iterator<Item = (K, HostId)> + '_ {
        self.hosts
            .iter()
            .filter_map(|h| h.session.map(|k| (k, h.id)))
    }

    /// Answers held back until the pool they changed is published ([`snapshot`](Self::snapshot)).
    pub(crate) fn take_answers(&mut self) -> Vec<Answer> {
        let mut a = std::mem::take(&mut self.answers);
        a.append(&mut self.late.lock_or_recover());
        a
    }

    /// The pool for the control API's snapshots.
    pub(crate) fn snapshot(&mut self) -> Snapshot {
        self.changed = false;
        let functions = self
            .inventory
            .functions()
            .iter()
            .map(|e| {
                let key = self.slot_key(e);
                let found = key.as_ref().and_then(|k| {
                    self.views.find(k).and_then(|(h, s)| {
                        self.views.view(&h)?.slot(s).map(|entry| (s, entry.state))
                    })
                });
                FunctionStatus {
                    entry: e.clone(),
                    slot: found.map(|(s, _)| s),
                    detaching: matches!(found, Some((_, SlotState::Removing { .. }))),
                    traffic: self.traffic[usize::from(e.bdf.0 as u8)],
                    vm: key
                        .as_ref()
                        .filter(|_| found.is_some())
                        .and_then(|k| self.consumers.get(k))
                        .copied(),
                    policy: self.policy_of(&e.id),
                }
            })
            .collect();
        let hosts = self
            .hosts
            .iter()
            .map(|h| HostStatus {
                id: h.id,
                connected: h.session.is_some(),
                epoch: h.epoch,
                rtt: h.rtt.filter(|_| h.session.is_some()),
                traffic: h.traffic.plus(h.live),
                functions: self
                    .inventory
                    .owned_by(h.id)
                    .map(|e| e.id.clone())
                    .collect(),
            })
            .collect();
        Snapshot { functions, hosts }
    }

    /// Act on one upcall of session `key`.
    pub fn on_upcall(&mut self, ep: &mut Proxy, key: K, u: Upcall, now: Instant) {
        match u {
            Upcall::Tlp { tlp, .. } => self.on_tlp(ep, key, &tlp),
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
                self.on_connected(ep, key, host, peer_epoch, now);
            }
            Upcall::Event {
                event: Event::Down { reason, .. },
                ..
            } => {
                tracing::warn!("appliance: session {key:?} down: {reason:?}");
                self.on_down(ep, key, now);
            }
            Upcall::Dropped { error, .. } => {
                tracing::debug!("appliance: TLP not sent: {error}");
            }
        }
    }

    /// A session of `host` is up.
    pub fn on_connected(&mut self, ep: &mut Proxy, key: K, host: HostId, epoch: u32, now: Instant) {
        // Another host's stale record of this session key (a reused id) goes first.
        for i in 0..self.hosts.len() {
            if self.hosts[i].session == Some(key) && self.hosts[i].id != host {
                self.lose(ep, i, now);
            }
        }
        let hi = match self.hosts.iter().position(|h| h.id == host) {
            Some(i) => i,
            None => {
                // Authenticated by the transport but not in the inventory (cannot happen with
                // the appliance's own configuration): known from now on, owning nothing.
                self.inventory.add_host(host);
                self.hosts.push(HostState::new(host));
                self.hosts.len() - 1
            }
        };
        let h = &self.hosts[hi];
        let replaced = h.session.is_some_and(|k| k != key);
        let restarted = h.epoch.is_some_and(|e| e != epoch);
        if replaced {
            self.stats.sessions_replaced += 1;
        }
        if replaced || restarted {
            // What the host set up is gone (or belongs to a session that is no more): reset
            // its functions, as a hot reset would; nobody else's. Nothing more goes to the
            // old session; the new one enumerates what the host has now.
            self.drain_outbound(usize::MAX);
            if let Some(k) = self.hosts[hi].session {
                self.purge(k);
            }
            self.hosts[hi].session = None;
            self.reset_host(ep, hi, now);
        }
        self.end_session(hi);
        let h = &mut self.hosts[hi];
        h.session = Some(key);
        h.epoch = Some(epoch);
        h.reports = TokenBucket::new(REPORTS_PER_SECOND, REPORT_BURST);
        h.reports_at = None;
        self.announce_slots(hi, key);
        self.events.push(PoolEvent::HostConnected { host, epoch });
        self.changed = true;
    }

    /// At the start of host `hi`'s session `key`: one `Occupied` per slot of its view, with the
    /// assignment's generation (after its [`VmTarget`] if the assignment named a VM). The host
    /// finds these cards by enumeration, not by a `Present`; this is how it learns the
    /// generation its consumer reports about them must carry — the only one
    /// [`on_consumer_report`](Self::on_consumer_report) accepts. Queued before anything else of
    /// the session, so the host knows them before its enumeration completes.
    fn announce_slots(&mut self, hi: usize, key: K) {
        let host = self.hosts[hi].id;
        let Some(v) = self.views.view(&host) else {
            return;
        };
        let slots: Vec<(u8, u16, Option<VmName>)> = v
            .slots()
            .map(|(slot, e)| (slot, e.generation, self.named.get(&e.function).copied()))
            .collect();
        for (slot, generation, vm) in slots {
            if let Some(vm) = vm {
                self.send_vm_target(
                    key,
                    VmTarget {
                        slot,
                        generation,
                        vm,
                    },
                );
            }
            self.send_slot(
                key,
                SlotMessage {
                    event: SlotEvent::Occupied,
                    slot,
                    generation,
                },
            );
        }
    }

    /// Session `key` is down.
    pub fn on_down(&mut self, ep: &mut Proxy, key: K, now: Instant) {
        if let Some(hi) = self.hosts.iter().position(|h| h.session == Some(key)) {
            self.lose(ep, hi, now);
        }
    }

    fn lose(&mut self, ep: &mut Proxy, hi: usize, now: Instant) {
        self.drain_outbound(usize::MAX);
        if let Some(k) = self.hosts[hi].session {
            self.purge(k);
        }
        self.hosts[hi].session = None;
        self.end_session(hi);
        // A surprise-down: the host's functions are reset, nobody else's.
        self.reset_host(ep, hi, now);
        self.events.push(PoolEvent::HostLost(self.hosts[hi].id));
        self.changed = true;
    }

    /// Reset every function of host `hi` (they stay its own); removals under way finish now,
    /// since the host that would acknowledge them is gone.
    fn reset_host(&mut self, ep: &mut Proxy, hi: usize, now: Instant) {
        // Whatever its functions queued belongs to the old session: route it first.
        self.drain_outbound(usize::MAX);
        let scope = self.hosts[hi].scope;
        self.flush_held(ep, &scope, now);
        if !scope.is_empty() {
            ep.reset_functions(&scope);
        }
        self.stats.host_resets += 1;
        let host = self.hosts[hi].id;
        let removing: Vec<FunctionId> = self
            .views
            .view(&host)
            .map(|v| {
                v.slots()
                    .filter(|(_, e)| matches!(e.state, SlotState::Removing { .. }))
                    .map(|(_, e)| e.function.clone())
                    .collect()
            })
            .unwrap_or_default();
        for f in removing {
            if let Ok(d) = self.views.detach(&f) {
                self.finish_detach(ep, d, now);
            }
        }
    }

    /// Route what the endpoint's functions queued, up to `max` TLPs (and never past
    /// [`TRANSMIT_CAP`] waiting, unless `max` is unbounded).
    pub fn drain_outbound(&mut self, max: usize) {
        if !self.shaped.is_empty() {
            self.release_held(Instant::now());
        }
        let mut n = 0;
        while n < max && (max == usize::MAX || self.out.len() + self.arbiter.len() < TRANSMIT_CAP) {
            let Ok(t) = self.outbound.try_recv() else {
                return;
            };
            self.route_outbound(t);
            n += 1;
        }
    }

    /// One TLP a function sent (DMA request, MSI/MSI-X write, INTx message): through its
    /// policy's shaper if it has one (held there while over budget), then to its owner's
    /// session, with the function's ID in the owner's numbering, or dropped and counted.
    pub fn route_outbound(&mut self, tlp: Vec<u8>) {
        // Every TLP the endpoint emits has no prefix and its function's ID in bytes 4..6
        // (Requester ID of requests and messages, Completer ID of completions).
        if tlp.len() < 12 || tlp[0] >> 5 == 0b100 {
            self.stats.malformed_outbound += 1;
            return;
        }
        let d = tlp[5];
        if let Some(s) = self.shapers[usize::from(d)].as_mut() {
            match s.offer(Instant::now(), tlp) {
                Some(t) => self.route_now(t),
                None => {
                    if s.len() >= HOLD_HIGH {
                        self.gated.insert(d);
                    }
                }
            }
            return;
        }
        self.route_now(tlp);
    }

    /// Route a TLP the shaper let go (or that has none).
    fn route_now(&mut self, mut tlp: Vec<u8>) {
        let Some(r) = self.routes[usize::from(tlp[5])] else {
            self.stats.unowned_outbound += 1;
            return;
        };
        let Some(key) = self.hosts[r.host].session else {
            self.stats.owner_offline += 1;
            return;
        };
        let d = tlp[5];
        count_upstream(&mut self.traffic[usize::from(d)], &tlp);
        tlp[5] = r.host_devfn;
        self.enqueue(usize::from(d), key, Bytes::from(tlp));
    }

    /// Route what the shapers' budgets let go at `now`, in each function's order.
    fn release_held(&mut self, now: Instant) {
        let shaped = self.shaped;
        for d in shaped.iter() {
            let i = usize::from(d);
            let Some(mut s) = self.shapers[i].take() else {
                continue;
            };
            if !s.is_empty() {
                let mut t = self.traffic[i];
                s.release(now, &mut t, |tlp| self.route_now(tlp));
                self.traffic[i] = t;
                if s.len() < HOLD_LOW {
                    self.gated.remove(d);
                }
            }
            self.shapers[i] = Some(s);
        }
    }

    /// Route everything the shapers of `set` hold, budget or not (the functions are reset
    /// or detached: what they sent before goes first, as without a policy), and let their
    /// device threads go.
    fn flush_held(&mut self, ep: &Proxy, set: &FunctionSet, now: Instant) {
        let shaped = self.shaped;
        for d in set.iter().filter(|&d| shaped.contains(d)) {
            let i = usize::from(d);
            if let Some(mut s) = self.shapers[i].take() {
                let mut t = self.traffic[i];
                s.flush(now, &mut t, |tlp| self.route_now(tlp));
                self.traffic[i] = t;
                self.shapers[i] = Some(s);
            }
            self.gated.remove(d);
            self.holds.remove(d);
            ep.hold_dma_writes(d, false);
        }
    }

    /// Hold or release the functions' device threads as their queues stand: a shaper at its
    /// bound ([`HOLD_HIGH`]; released below [`HOLD_LOW`]) or an arbiter queue at its bound
    /// ([`BACKLOG_HIGH`]; released below [`BACKLOG_LOW`]) holds them. Only changes reach the
    /// endpoint.
    fn sync_gates(&mut self, ep: &Proxy) {
        let mut want = self.gated;
        for d in self.backed.iter() {
            want.insert(d);
        }
        if want == self.holds {
            return;
        }
        for d in 0..=255u8 {
            let w = want.contains(d);
            if w != self.holds.contains(d) {
                ep.hold_dma_writes(d, w);
            }
        }
        self.holds = want;
    }

    /// Report the shaped functions that started or stopped being held by their caps
    /// ([`PoolEvent::Throttling`], at most one change per function per
    /// [`THROTTLE_QUIET`](super::policy::THROTTLE_QUIET)).
    fn throttle_events(&mut self, now: Instant) {
        let shaped = self.shaped;
        for d in shaped.iter() {
            let Some(s) = self.shapers[usize::from(d)].as_mut() else {
                continue;
            };
            if let Some(c) = s.throttle_change(now) {
                let policy = s.policy();
                self.throttle_event(d, c.limit, &policy, c.throttled);
            }
        }
    }

    /// Raise a [`PoolEvent::Throttling`] for the function at device/function number `d`.
    fn throttle_event(
        &mut self,
        d: u8,
        limit: super::policy::Limit,
        policy: &Policy,
        throttled: bool,
    ) {
        let Some(e) = self
            .inventory
            .functions()
            .iter()
            .find(|e| e.bdf.0 as u8 == d)
        else {
            return;
        };
        tracing::info!(function = %e.id, ?limit, throttled, "appliance: policy throttling");
        self.events.push(PoolEvent::Throttling {
            function: e.id.clone(),
            limit,
            cap: limit.of(policy).unwrap_or(0),
            throttled,
        });
    }

    /// The caps of `function` (unlimited unless set).
    pub fn policy_of(&self, function: &FunctionId) -> Policy {
        self.policies
            .iter()
            .find(|(f, _)| f == function)
            .map_or(Policy::UNLIMITED, |(_, p)| *p)
    }

    /// Cap `function`'s traffic and set its priority from `now` on ([`Policy::UNLIMITED`]
    /// lifts the caps — what is held goes at once, in order — and gives it the default
    /// priority).
    pub fn set_policy(
        &mut self,
        ep: &Proxy,
        function: &FunctionId,
        policy: Policy,
        now: Instant,
    ) -> Result<(), ControlError> {
        policy.check().map_err(ControlError::BadPolicy)?;
        let e = self
            .inventory
            .get(function)
            .ok_or_else(|| ControlError::UnknownFunction(function.clone()))?;
        let d = e.bdf.0 as u8;
        let i = usize::from(d);
        self.policies.retain(|(f, _)| f != function);
        if !policy.is_unlimited() {
            self.policies.push((function.clone(), policy));
        }
        // Its share of the link from its next quantum on; nothing queued moves.
        self.arbiter.set_weight(i, policy.weight());
        if !policy.has_caps() {
            let mut one = FunctionSet::EMPTY;
            one.insert(d);
            self.flush_held(ep, &one, now);
            self.drop_shaper(d);
        } else {
            match self.shapers[i].as_mut() {
                Some(s) => s.set_policy(policy, now),
                None => self.shapers[i] = Some(Box::new(Shaper::new(policy, now))),
            }
            self.shaped.insert(d);
            // The new budget may let held TLPs go now.
            self.release_held(now);
        }
        tracing::info!(%function, ?policy, "appliance: policy set");
        self.changed = true;
        Ok(())
    }

    /// Forget the caps of the functions at device number `dev` (their card left the pool).
    fn drop_policies(&mut self, ep: &Proxy, dev: u8, now: Instant) {
        let mut set = FunctionSet::EMPTY;
        (0..8u8).for_each(|f| set.insert(dev << 3 | f));
        self.flush_held(ep, &set, now);
        let inventory = &self.inventory;
        self.policies
            .retain(|(f, _)| inventory.get(f).is_some_and(|e| e.bdf.device() != dev));
        for d in set.iter() {
            self.drop_shaper(d);
            self.arbiter.set_weight(usize::from(d), PRIORITY_DEFAULT);
        }
    }

    /// Remove the shaper of the function at `d` (its caps are gone; what it held was
    /// flushed), reporting the end of a throttling that was reported.
    fn drop_shaper(&mut self, d: u8) {
        if let Some(s) = self.shapers[usize::from(d)].take() {
            if let Some(limit) = s.throttling() {
                self.throttle_event(d, limit, &s.policy(), false);
            }
        }
        self.shaped.remove(d);
    }

    fn host_of(&self, key: K) -> Option<usize> {
        self.hosts.iter().position(|h| h.session == Some(key))
    }

    /// The appliance function that `host_bdf` in host `hi`'s view stands for, if it is that
    /// host's (bus taken from the host's ID: the function captures it).
    fn inbound_id(&self, hi: usize, host_bdf: Bdf) -> Option<Bdf> {
        let app = self.views.to_appliance(&self.hosts[hi].id, host_bdf)?;
        let devfn = app.0 as u8;
        match self.routes[usize::from(devfn)] {
            Some(r) if r.host == hi => Some(Bdf::new(host_bdf.bus(), app.device(), app.function())),
            _ => None,
        }
    }

    /// One TLP from session `key`.
    pub fn on_tlp(&mut self, ep: &mut Proxy, key: K, tlp: &[u8]) {
        let Some(hi) = self.host_of(key) else {
            self.stats.unknown_session += 1;
            return;
        };
        // Whatever the functions queued before this request goes first: a read completion
        // never passes an earlier DMA write or interrupt of the same function.
        self.drain_outbound(usize::MAX);
        let scope = self.hosts[hi].scope;
        let mut replies = std::mem::take(&mut self.replies);
        let h = ParsedHeader::parse(tlp);
        let id = match &h {
            Ok(h) => match h.kind {
                Kind::Config {
                    type1: false,
                    target,
                    ..
                } => match self.inbound_id(hi, target) {
                    Some(id) => Some(id),
                    None => {
                        self.stats.no_device += 1;
                        self.no_device(key, h, target);
                        self.replies = replies;
                        return;
                    }
                },
                Kind::Completion { .. } => match self.inbound_id(hi, h.requester) {
                    Some(id) => Some(id),
                    None => {
                        self.stats.foreign_completions += 1;
                        self.replies = replies;
                        return;
                    }
                },
                Kind::Message { .. } => {
                    if let Some(m) = Tlp::parse(tlp).ok().as_ref().and_then(Slot::from_tlp) {
                        self.on_slot_message(ep, hi, m.ok(), Instant::now());
                        self.replies = replies;
                        return;
                    }
                    None
                }
                _ => None,
            },
            Err(_) => None,
        };
        if let Err(e) = ep.handle_tlp_scoped(tlp, &scope, id, &mut replies) {
            tracing::debug!("appliance: {e}");
        }
        let claimed = ep.claimed();
        if let Some(d) = claimed {
            let t = &mut self.traffic[usize::from(d)];
            t.tlps_down += 1;
            t.bytes_down += tlp.len() as u64;
            if let Ok(ParsedHeader {
                kind:
                    Kind::Completion {
                        status: CplStatus::Sc,
                        ..
                    },
                payload,
                ..
            }) = &h
            {
                t.dma_read_bytes += payload.len() as u64;
            }
        }
        for mut r in replies.drain(..) {
            // A capped function's completions go through its shaper (behind what it holds:
            // a completion never passes the function's held writes), and are routed from
            // there, to this same host (the function is its).
            if let Some(d) = claimed
                .filter(|&d| r.len() >= 12 && r[5] == d && self.shapers[usize::from(d)].is_some())
            {
                if self.routes[usize::from(d)].is_some_and(|rt| rt.host == hi) {
                    self.route_outbound(r);
                    continue;
                }
            }
            // Its own completions count for the function it reached (and queue with its
            // TLPs); a refusal of a request that reached no function counts for none.
            let mut queue = OWN;
            if let Some(d) = claimed.filter(|&d| r.len() >= 12 && r[5] == d) {
                count_upstream(&mut self.traffic[usize::from(d)], &r);
                queue = usize::from(d);
            }
            // The completer is one of the host's functions (or none, for a refusal): its ID
            // in the host's numbering.
            if r.len() >= 12 {
                if let Some(rt) = self.routes[usize::from(r[5])].filter(|rt| rt.host == hi) {
                    r[5] = rt.host_devfn;
                }
            }
            self.enqueue(queue, key, Bytes::from(r));
        }
        self.replies = replies;
    }

    /// Answer a configuration request to a device number outside the host's view: UR, no
    /// data (the host's reader sees all-ones), completer = the target it asked for.
    fn no_device(&mut self, key: K, h: &ParsedHeader, target: Bdf) {
        let mut t = Vec::with_capacity(12);
        match wire::emit_completion(
            &mut t,
            target,
            h.requester,
            h.tag,
            CplStatus::Ur,
            4,
            0,
            h.attr & 3,
            &[],
        ) {
            Ok(()) => self.enqueue(OWN, key, Bytes::from(t)),
            Err(e) => tracing::error!("appliance: cannot build a completion: {e}"),
        }
    }

    fn on_slot_message(&mut self, ep: &mut Proxy, hi: usize, m: Option<Slot>, now: Instant) {
        match m {
            Some(Slot::Message(m)) if m.event == SlotEvent::RemovalAck => {
                if let Some(d) = self.views.on_removal_ack(self.hosts[hi].id, &m) {
                    self.finish_detach(ep, d, now);
                }
            }
            Some(Slot::Consumer(r)) => self.on_consumer_report(hi, r, now),
            // Undecodable, or an event only the appliance sends.
            _ => self.stats.bad_slot_messages += 1,
        }
    }

    /// A host's report of what its VM did with the function in one of its slots: within the
    /// session's rate, and only for a slot the host has at that generation (the host is known
    /// by its session, never by what the message says), it becomes the slot's consumer and a
    /// [`PoolEvent::VmConsumer`]; anything else is dropped and counted.
    fn on_consumer_report(&mut self, hi: usize, r: ConsumerReport, now: Instant) {
        let h = &mut self.hosts[hi];
        if let Some(at) = h.reports_at {
            h.reports.earn(now.saturating_duration_since(at));
        }
        h.reports_at = Some(now);
        if !h.reports.take() {
            self.stats.limited_consumer_reports += 1;
            return;
        }
        let host = h.id;
        let Some(function) = self
            .views
            .view(&host)
            .and_then(|v| v.slot(r.slot))
            .filter(|e| e.generation == r.generation)
            .map(|e| e.function.clone())
        else {
            self.stats.stale_consumer_reports += 1;
            return;
        };
        self.stats.consumer_reports += 1;
        tracing::info!(%function, %host, vm = %r.vm, event = r.event.name(), "appliance: VM event");
        self.consumers.insert(
            function.clone(),
            VmConsumer {
                vm: r.vm,
                event: Some(r.event),
                since: std::time::SystemTime::now(),
            },
        );
        self.events.push(PoolEvent::VmConsumer {
            function,
            host,
            vm: r.vm,
            event: r.event,
        });
        self.changed = true;
    }

    /// Watch `function`'s backing: once `probe` reports it gone, the function fails
    /// ([`fail`](Self::fail)) at the next [`poll`](Self::poll).
    pub fn watch(&mut self, function: FunctionId, probe: HealthProbe) {
        self.probes.push(Probe {
            function,
            probe,
            failed: false,
            owner: None,
            revival: None,
        });
    }

    /// Fail the watched functions whose backing went away, start bringing back the ones that
    /// can come back, and put back in service those that are back.
    fn check_health(&mut self, ep: &mut Proxy, now: Instant) {
        let mut gone = Vec::new();
        let mut back = Vec::new();
        for (i, p) in self.probes.iter_mut().enumerate() {
            if !p.failed {
                if let Some(why) = p.probe.check() {
                    p.failed = true;
                    gone.push((i, why));
                }
                continue;
            }
            let Some(r) = &p.revival else { continue };
            // Never blocks: the attempts run on the revival thread.
            while let Ok(m) = r.rx.try_recv() {
                match m {
                    Revived::Attempt { why, next } => {
                        tracing::warn!(function = %p.function, reason = %why, retry_in = ?next,
                            "appliance: failed function not back yet");
                        let _ = self
                            .inventory
                            .set_failure(&p.function, format!("{why}; next attempt in {next:?}"));
                        self.changed = true;
                    }
                    Revived::Back(dev, probe) => {
                        back.push((i, dev, probe));
                        break;
                    }
                }
            }
        }
        for (i, why) in gone {
            let f = self.probes[i].function.clone();
            tracing::warn!(function = %f, reason = %why, "appliance: function failed");
            self.probes[i].owner = self.inventory.get(&f).and_then(FunctionEntry::owner);
            self.fail(ep, &f, now);
            let entry = self.inventory.get(&f).cloned();
            let revival = match (entry, self.probes[i].probe.reviver()) {
                (Some(e), Some(rv)) if e.state == FunctionState::Failed => {
                    Revival::start(&f, e.ids, rv.clone())
                }
                _ => None,
            };
            let note = if revival.is_some() {
                format!("{why}; bringing it back (first attempt in {REVIVE_BACKOFF_MIN:?})")
            } else {
                why
            };
            let _ = self.inventory.set_failure(&f, note);
            self.probes[i].revival = revival;
        }
        for (i, dev, probe) in back {
            self.recover(ep, i, dev, probe);
        }
    }

    /// Put watched function `i`, whose backing is back as `dev`, in service again: its model
    /// replaced in the endpoint (power-on state), unassigned with a
    /// [`PoolEvent::FunctionRecovered`], and given back to its previous owner if that host is
    /// connected and the rest of its card is still unassigned.
    fn recover(
        &mut self,
        ep: &mut Proxy,
        i: usize,
        dev: Box<dyn crate::endpoint::Device>,
        probe: HealthProbe,
    ) {
        let f = self.probes[i].function.clone();
        self.probes[i].revival = None;
        let Some(e) = self.inventory.get(&f).cloned() else {
            return;
        };
        // Whatever the old model queued has no owner (it was detached when it failed).
        self.drain_outbound(usize::MAX);
        match ep.replace_function(e.bdf, dev) {
            Ok(old) => {
                // Its threads are joined on drop (quick for a dead server, but not the serving
                // thread's business).
                let _ = std::thread::Builder::new()
                    .name("vfio-user-retire".into())
                    .spawn(move || drop(old));
            }
            Err(err) => {
                tracing::error!(function = %f, "appliance: cannot put the revived function back: {err}");
                return;
            }
        }
        self.drain_outbound(usize::MAX);
        if self.inventory.recover(&f).is_err() {
            return;
        }
        let p = &mut self.probes[i];
        p.probe = probe;
        p.failed = false;
        let owner = p.owner.take();
        tracing::info!(function = %f, "appliance: function recovered");
        self.events.push(PoolEvent::FunctionRecovered(f.clone()));
        self.changed = true;
        let Some(owner) = owner else { return };
        let connected = self
            .hosts
            .iter()
            .any(|h| h.id == owner && h.session.is_some());
        if !connected {
            tracing::info!(function = %f, host = %owner,
                "appliance: previous owner not connected: the function stays unassigned");
            return;
        }
        if let Err(err) = self.assign(&f, owner) {
            tracing::info!(function = %f, host = %owner,
                "appliance: not given back to its previous owner: {err}");
        }
    }

    /// Take `function` out of service: if a host owns it, its slot is detached at once (a
    /// surprise removal: `Removed`, no request first; outstanding requests fail), the rest
    /// of its card goes back to the pool, and the function is [`FunctionState::Failed`] —
    /// handed to no host — with a [`PoolEvent::FunctionFailed`].
    pub fn fail(&mut self, ep: &mut Proxy, function: &FunctionId, now: Instant) {
        let Some(e) = self.inventory.get(function).cloned() else {
            return;
        };
        if e.state == FunctionState::Failed {
            return;
        }
        if let Some(key) = self.slot_key(&e) {
            // Not in a view: unassigned, or its removal already detached it.
            if let Ok(d) = self.views.detach(&key) {
                self.finish_detach(ep, d, now);
            }
        }
        let _ = self.inventory.fail(function);
        self.events
            .push(PoolEvent::FunctionFailed(function.clone()));
        self.changed = true;
    }

    /// Let time pass: removals whose grace period ended are detached, functions whose
    /// backing went away fail.
    pub fn poll(&mut self, ep: &mut Proxy, now: Instant) {
        if !self.shaped.is_empty() {
            self.release_held(now);
            self.throttle_events(now);
        }
        self.sync_gates(ep);
        if !self.probes.is_empty() {
            self.check_health(ep, now);
        }
        if self.views.poll_timeout().is_none_or(|t| t > now) {
            return;
        }
        let mut due = Vec::new();
        self.views.poll(now, &mut |d| due.push(d));
        for d in due {
            self.finish_detach(ep, d, now);
        }
    }

    /// When [`poll`](Self::poll) next has a grace period to end or held TLPs to release.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let held = self
            .shaped
            .iter()
            .filter_map(|d| self.shapers[usize::from(d)].as_ref()?.deadline())
            .min();
        match (self.views.poll_timeout(), held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// TLPs the functions' policies hold now (all functions).
    pub fn held(&self) -> usize {
        self.shaped
            .iter()
            .filter_map(|d| self.shapers[usize::from(d)].as_ref())
            .map(|s| s.len())
            .sum()
    }

    /// Apply one control command.
    pub(crate) fn command(&mut self, ep: &mut Proxy, c: Command, now: Instant) {
        // Answered once the changed pool is published, so that a caller who waited sees the
        // change in the next `Control::functions`.
        match c {
            Command::Assign {
                function,
                host,
                vm,
                done,
            } => {
                let r = self.assign_vm(&function, host, vm);
                self.answers.push(Box::new(move || done(r)));
            }
            Command::Unassign { function, done } => {
                // Its outcome comes later (with the detach): held until the next publish too.
                let late = self.late.clone();
                let held: Done = Box::new(move |r| {
                    late.lock_or_recover().push(Box::new(move || done(r)));
                });
                self.unassign(ep, &function, now, held)
            }
            Command::Add { card, done } => {
                let r = self.add_card(ep, card);
                self.answers.push(Box::new(move || done(r)));
            }
            Command::Remove { function, done } => {
                let r = self.remove_card(ep, &function);
                self.answers.push(Box::new(move || done(r)));
            }
            Command::SetPolicy {
                function,
                policy,
                done,
            } => {
                let r = self.set_policy(ep, &function, policy, now);
                self.answers.push(Box::new(move || done(r)));
            }
            Command::SetVfs { function, n, done } => {
                let r = self.set_vf_count(ep, &function, n, now);
                self.answers.push(Box::new(move || done(r)));
            }
            Command::AddHost { key, done } => {
                let r = self.add_host(key);
                self.answers.push(Box::new(move || done(r)));
            }
            Command::RemoveHost { host, done } => {
                let r = self.remove_host(ep, host, now);
                self.answers.push(Box::new(move || done(r)));
            }
            Command::SetHostKey { host, public, done } => {
                let r = self.set_host_key(host, public);
                self.answers.push(Box::new(move || done(r)));
            }
        }
    }

    /// Enable `n` virtual functions of the physical function `function` (see
    /// [`Control::set_vf_count`](super::Control::set_vf_count)).
    fn set_vf_count(
        &mut self,
        ep: &mut Proxy,
        function: &FunctionId,
        n: u16,
        now: Instant,
    ) -> Result<(), ControlError> {
        let pf = self
            .inventory
            .get(function)
            .ok_or_else(|| ControlError::UnknownFunction(function.clone()))?
            .clone();
        if pf.vf_of.is_some() || pf.total_vfs == 0 {
            return Err(ControlError::NotSriov(function.clone()));
        }
        if n > pf.total_vfs {
            return Err(ControlError::TooManyVfs {
                function: function.clone(),
                requested: n,
                total: pf.total_vfs,
            });
        }
        match pf.state {
            FunctionState::Unassigned => {}
            FunctionState::Assigned(owner) => {
                return Err(ControlError::AlreadyAssigned {
                    function: function.clone(),
                    owner,
                })
            }
            FunctionState::Resetting => return Err(ControlError::Busy(function.clone())),
            FunctionState::Failed => return Err(ControlError::Failed(function.clone())),
        }
        let old: Vec<FunctionEntry> = self.inventory.vfs_of(function).cloned().collect();
        for v in &old {
            let why = match v.state {
                FunctionState::Unassigned | FunctionState::Failed => continue,
                FunctionState::Assigned(owner) => format!("is assigned to {owner}"),
                FunctionState::Resetting => "is being reset".to_string(),
            };
            return Err(ControlError::VfInUse {
                function: function.clone(),
                vf: v.id.clone(),
                why,
            });
        }
        if old.len() == usize::from(n) {
            return Ok(());
        }
        // Nothing routes to the old VFs (unassigned); what they queued has no owner.
        let mut gone_set = FunctionSet::EMPTY;
        for v in &old {
            gone_set.insert(v.bdf.device() << 3 | v.bdf.function());
        }
        self.flush_held(ep, &gone_set, now);
        self.drain_outbound(usize::MAX);
        let vfs = match super::devices::pool_vfs(ep, &pf, n) {
            Ok(v) => v,
            Err(e) => {
                // The PF's VFs are in an unknown state: put back what was there if we can.
                let back = super::devices::pool_vfs(ep, &pf, old.len() as u16).unwrap_or_default();
                let _ = self.inventory.replace_vfs(function, back);
                self.changed = true;
                return Err(ControlError::BadDevice(e.to_string()));
            }
        };
        if n == 0 {
            // `pool_vfs` enables nothing for 0: clear VF Enable here.
            if let Err(e) = ep.enable_vfs(pf.bdf, 0) {
                return Err(ControlError::BadDevice(e.to_string()));
            }
        }
        self.drain_outbound(usize::MAX);
        let (gone, joined) = self.inventory.replace_vfs(function, vfs)?;
        for id in &gone {
            if let Some(v) = old.iter().find(|v| v.id == *id) {
                let d = v.bdf.device() << 3 | v.bdf.function();
                self.policies.retain(|(f, _)| f != id);
                self.drop_shaper(d);
                self.arbiter.set_weight(usize::from(d), PRIORITY_DEFAULT);
                self.traffic[usize::from(d)] = FunctionTraffic::default();
                self.timeouts_seen[usize::from(d)] = 0;
            }
            self.events.push(PoolEvent::FunctionRemoved(id.clone()));
        }
        for id in joined {
            self.events.push(PoolEvent::FunctionAdded(id));
        }
        tracing::info!(%function, vfs = n, "appliance: VF count set");
        self.changed = true;
        Ok(())
    }

    /// Put a card built while serving at the lowest device number no function uses, under
    /// its name or the id derived from there, unassigned.
    fn add_card(&mut self, ep: &mut Proxy, card: NewCard) -> Result<FunctionId, ControlError> {
        let NewCard {
            name,
            mut device,
            probe,
            scratch,
            vfs,
        } = card;
        let used = ep.function_set();
        let dev = (0..32u8)
            .find(|d| (0..8u8).all(|f| !used.contains(d << 3 | f)))
            .ok_or(ControlError::NoFreeDevice)?;
        let bdf = Bdf::new(0, dev, 0);
        let entry = FunctionEntry::describe(bdf, name.as_deref(), &mut *device)?;
        if self.inventory.get(&entry.id).is_some() {
            return Err(ControlError::Inventory(InventoryError::DuplicateId(
                entry.id,
            )));
        }
        ep.add_function(bdf, device)
            .map_err(|e| ControlError::BadDevice(e.to_string()))?;
        let vf_entries = match super::devices::pool_vfs(ep, &entry, vfs) {
            Ok(v) => v,
            Err(e) => {
                // Nothing of it stays: the pool is as it was.
                let _ = ep.remove_function(bdf);
                self.drain_outbound(usize::MAX);
                return Err(ControlError::BadDevice(e.to_string()));
            }
        };
        // A new card at a device number another card had: its counters start from zero.
        for f in 0..8u8 {
            let d = usize::from(dev << 3 | f);
            self.traffic[d] = FunctionTraffic::default();
            self.timeouts_seen[d] = 0;
        }
        let id = entry.id.clone();
        self.inventory.add(entry)?;
        for vf in vf_entries {
            let vf_id = vf.id.clone();
            self.inventory.add(vf)?;
            self.events.push(PoolEvent::FunctionAdded(vf_id));
        }
        self.scratch.append(scratch);
        if let Some(probe) = probe {
            self.watch(id.clone(), probe);
        }
        self.events.push(PoolEvent::FunctionAdded(id.clone()));
        tracing::info!(function = %id, %bdf, "appliance: card added");
        self.changed = true;
        Ok(id)
    }

    /// Take an unassigned card (every function at `function`'s device number) out of the
    /// pool and the endpoint.
    fn remove_card(&mut self, ep: &mut Proxy, function: &FunctionId) -> Result<(), ControlError> {
        let e = self
            .inventory
            .get(function)
            .ok_or_else(|| ControlError::UnknownFunction(function.clone()))?
            .clone();
        if e.vf_of.is_some() {
            return Err(ControlError::VirtualFunction(function.clone()));
        }
        let dev = e.bdf.device();
        let card: Vec<FunctionEntry> = self
            .inventory
            .functions()
            .iter()
            .filter(|o| o.bdf.device() == dev)
            .cloned()
            .collect();
        for o in &card {
            match o.state {
                FunctionState::Unassigned | FunctionState::Failed => {}
                FunctionState::Assigned(owner) => {
                    return Err(ControlError::AlreadyAssigned {
                        function: o.id.clone(),
                        owner,
                    })
                }
                FunctionState::Resetting => return Err(ControlError::Busy(o.id.clone())),
            }
        }
        // Nothing routes to it (unassigned); what it queued has no owner.
        self.drain_outbound(usize::MAX);
        for o in card.iter().filter(|o| o.vf_of.is_none()) {
            if let Err(err) = ep.remove_function(o.bdf) {
                tracing::debug!("appliance: removing {}: {err}", o.id);
            }
        }
        self.drain_outbound(usize::MAX);
        // Dropping a probe stops its revival thread.
        self.probes
            .retain(|p| card.iter().all(|o| o.id != p.function));
        self.drop_policies(ep, dev, Instant::now());
        for o in &card {
            self.inventory.remove(&o.id)?;
            self.events.push(PoolEvent::FunctionRemoved(o.id.clone()));
        }
        tracing::info!(%function, "appliance: card removed");
        self.changed = true;
        Ok(())
    }

    /// The functions that move with `e`: its whole card (every physical function at its
    /// device number), or the VF alone.
    fn unit(&self, e: &FunctionEntry) -> Vec<FunctionId> {
        if e.vf_of.is_some() {
            return vec![e.id.clone()];
        }
        self.inventory
            .functions()
            .iter()
            .filter(|o| o.vf_of.is_none() && o.bdf.device() == e.bdf.device())
            .map(|o| o.id.clone())
            .collect()
    }

    /// Whether the appliance pools virtual functions of the physical function `pf`.
    fn has_pooled_vfs(&self, pf: &FunctionId) -> bool {
        self.inventory
            .functions()
            .iter()
            .any(|o| o.vf_of.as_ref().is_some_and(|(p, _)| p == pf))
    }

    /// The id the slot showing `e`'s unit is kept under (its first function), if any.
    fn slot_key(&self, e: &FunctionEntry) -> Option<FunctionId> {
        self.unit(e).into_iter().next()
    }

    /// Give `function`'s unit to `host` now; its slot is announced if the host's session is
    /// up.
    pub fn assign(&mut self, function: &FunctionId, host: HostId) -> Result<(), ControlError> {
        self.assign_vm(function, host, None)
    }

    /// [`assign`](Self::assign), naming the VM of `host` that is to take the function: a
    /// [`VmTarget`] goes to the host just before the `Present` (a host that predates it drops
    /// the unknown message and attaches by its own configuration).
    pub fn assign_vm(
        &mut self,
        function: &FunctionId,
        host: HostId,
        vm: Option<VmName>,
    ) -> Result<(), ControlError> {
        let e = self
            .inventory
            .get(function)
            .ok_or_else(|| ControlError::UnknownFunction(function.clone()))?
            .clone();
        let Some(hi) = self.hosts.iter().position(|h| h.id == host) else {
            return Err(ControlError::UnknownHost(host));
        };
        let unit = self.unit(&e);
        if let Some(pf) = unit.iter().find(|id| self.has_pooled_vfs(id)) {
            return Err(ControlError::PooledVfs(pf.clone()));
        }
        for id in &unit {
            match self.inventory.get(id).map(|f| f.state) {
                Some(FunctionState::Unassigned) | None => {}
                Some(FunctionState::Assigned(owner)) => {
                    return Err(ControlError::AlreadyAssigned {
                        function: function.clone(),
                        owner,
                    })
                }
                Some(FunctionState::Resetting) => return Err(ControlError::Busy(function.clone())),
                Some(FunctionState::Failed) => return Err(ControlError::Failed(id.clone())),
            }
        }
        let target = match e.vf_of {
            Some(_) => Target::Function(e.bdf),
            None => Target::Device(e.bdf.device()),
        };
        let (slot, present) = self
            .views
            .assign(host, unit[0].clone(), target, None)
            .map_err(|err| match err {
                ViewError::NoFreeSlot { host } | ViewError::SlotTaken { host, .. } => {
                    ControlError::NoFreeSlot(host)
                }
                _ => ControlError::Busy(function.clone()),
            })?;
        for id in &unit {
            self.inventory.assign(id, host)?;
            self.events.push(PoolEvent::AssignmentChanged {
                function: id.clone(),
                host: Some(host),
            });
        }
        self.rebuild_routes();
        if let Some(vm) = vm {
            self.consumers.insert(
                unit[0].clone(),
                VmConsumer {
                    vm,
                    event: None,
                    since: std::time::SystemTime::now(),
                },
            );
            self.named.insert(unit[0].clone(), vm);
        }
        if let Some(key) = self.hosts[hi].session {
            if let Some(vm) = vm {
                self.send_vm_target(
                    key,
                    VmTarget {
                        slot: present.slot,
                        generation: present.generation,
                        vm,
                    },
                );
            }
            self.send_slot(key, present);
        }
        tracing::info!(%function, %host, slot, "appliance: assigned");
        self.changed = true;
        Ok(())
    }

    /// Take `function`'s unit from its owner in order; `done` is called once it is back in
    /// the pool (or with the refusal).
    pub fn unassign(&mut self, ep: &mut Proxy, function: &FunctionId, now: Instant, done: Done) {
        match self.begin_unassign(ep, function, now) {
            Ok(Some(key)) => self.pending.push(Pending { key, done }),
            Ok(None) => done(Ok(())),
            Err(e) => done(Err(e)),
        }
    }

    /// `Some(key)`: a removal request went out, the outcome comes with the detach; `None`:
    /// detached at once (the owner had no session).
    fn begin_unassign(
        &mut self,
        ep: &mut Proxy,
        function: &FunctionId,
        now: Instant,
    ) -> Result<Option<FunctionId>, ControlError> {
        let e = self
            .inventory
            .get(function)
            .ok_or_else(|| ControlError::UnknownFunction(function.clone()))?
            .clone();
        match e.state {
            FunctionState::Assigned(_) => {}
            FunctionState::Unassigned => return Err(ControlError::NotAssigned(function.clone())),
            FunctionState::Resetting => return Err(ControlError::Busy(function.clone())),
            FunctionState::Failed => return Err(ControlError::Failed(function.clone())),
        }
        let key = self
            .slot_key(&e)
            .ok_or_else(|| ControlError::NotAssigned(function.clone()))?;
        let (host, _) = self
            .views
            .find(&key)
            .ok_or_else(|| ControlError::NotAssigned(function.clone()))?;
        let session = self
            .hosts
            .iter()
            .find(|h| h.id == host)
            .and_then(|h| h.session);
        match session {
            Some(s) => {
                let (_, req) = self
                    .views
                    .begin_removal(&key, now)
                    .map_err(|_| ControlError::Busy(function.clone()))?;
                self.send_slot(s, req);
                self.changed = true;
                Ok(Some(key))
            }
            None => {
                let d = self
                    .views
                    .detach(&key)
                    .map_err(|_| ControlError::NotAssigned(function.clone()))?;
                self.finish_detach(ep, d, now);
                Ok(None)
            }
        }
    }

    /// A function left its host's view: tell the host (`Removed`), stop routing it, reset it
    /// (its outstanding DMA reads fail, volatile state wiped), and put it back in the pool.
    fn finish_detach(&mut self, ep: &mut Proxy, d: Detached, now: Instant) {
        self.stats.detached += 1;
        // Its consumer was a VM of the host it left.
        self.consumers.remove(&d.function);
        self.named.remove(&d.function);
        // What the function queued while it was the host's still goes to the host.
        self.drain_outbound(usize::MAX);
        {
            let mut set = FunctionSet::EMPTY;
            match d.target {
                Target::Device(dev) => (0..8u8).for_each(|f| set.insert(dev << 3 | f)),
                Target::Function(b) => set.insert(b.0 as u8),
            }
            self.flush_held(ep, &set, now);
        }
        let Some(hi) = self.hosts.iter().position(|h| h.id == d.host) else {
            return;
        };
        if let Some(key) = self.hosts[hi].session {
            self.send_slot(key, d.removed);
        }
        self.rebuild_routes();
        // What the slot showed, less what another slot still shows (a VF of the card that is
        // assigned on its own). From the target, not the old routes: several slots may have
        // left the views at once (grace periods ending together).
        let mut set = FunctionSet::EMPTY;
        match d.target {
            Target::Device(dev) => (0..8u8).for_each(|f| set.insert(dev << 3 | f)),
            Target::Function(b) => set.insert(b.0 as u8),
        }
        for devfn in set.iter().collect::<Vec<_>>() {
            if self.routes[usize::from(devfn)].is_some() {
                set.remove(devfn);
            }
        }
        ep.reset_functions(&set);
        // Whatever it queued as it was being reset has no owner now.
        self.drain_outbound(usize::MAX);
        let unit = self
            .inventory
            .get(&d.function)
            .cloned()
            .map(|e| self.unit(&e))
            .unwrap_or_default();
        for id in &unit {
            if self.inventory.unassign(id).is_ok() {
                let _ = self.inventory.reset_done(id);
                self.events.push(PoolEvent::AssignmentChanged {
                    function: id.clone(),
                    host: None,
                });
            }
        }
        tracing::info!(function = %d.function, host = %d.host, "appliance: detached and reset");
        self.changed = true;
        if let Some(i) = self.pending.iter().position(|p| p.key == d.function) {
            let p = self.pending.swap_remove(i);
            (p.done)(Ok(()));
        }
    }

    fn send_vm_target(&mut self, key: K, t: VmTarget) {
        let mut b = [0u8; crate::tlp::slot::MAX_SLOT_TLP];
        match t.emit(Bdf(0), &mut b) {
            Ok(n) => self.out.push_back((key, Bytes::copy_from_slice(&b[..n]))),
            Err(e) => tracing::error!("appliance: cannot build a VM target: {e}"),
        }
    }

    fn send_slot(&mut self, key: K, m: SlotMessage) {
        self.stage_all();
        let mut b = [0u8; 16];
        match m.emit(Bdf(0), &mut b) {
            Ok(n) => self.out.push_back((key, Bytes::copy_from_slice(&b[..n]))),
            Err(e) => tracing::error!("appliance: cannot build a slot message: {e}"),
        }
    }

    /// Recompute the owner table and the hosts' scopes from the views: a card's slot covers
    /// every function at its device number (its VFs included, unless a VF is assigned on its
    /// own, which then takes precedence).
    fn rebuild_routes(&mut self) {
        self.routes = [None; 256];
        for h in &mut self.hosts {
            h.scope = FunctionSet::EMPTY;
        }
        for pass in 0..2 {
            for hi in 0..self.hosts.len() {
                let Some(v) = self.views.view(&self.hosts[hi].id) else {
                    continue;
                };
                for (slot, e) in v.slots() {
                    match (pass, e.target) {
                        (0, Target::Device(d)) => {
                            for f in 0..8u8 {
                                self.routes[usize::from(d << 3 | f)] = Some(Route {
                                    host: hi,
                                    host_devfn: slot << 3 | f,
                                });
                            }
                        }
                        (1, Target::Function(b)) => {
                            self.routes[usize::from(b.0 as u8)] = Some(Route {
                                host: hi,
                                host_devfn: slot << 3,
                            });
                        }
                        _ => {}
                    }
                }
            }
        }
        for (devfn, r) in self.routes.iter().enumerate() {
            if let Some(r) = r {
                self.hosts[r.host].scope.insert(devfn as u8);
            }
        }
    }
}

/// Count one TLP a function sends its host (a completion, a DMA request, an interrupt).
fn count_upstream(t: &mut FunctionTraffic, tlp: &[u8]) {
    t.tlps_up += 1;
    t.bytes_up += tlp.len() as u64;
    let Ok(h) = ParsedHeader::parse(tlp) else {
        return;
    };
    match h.kind {
        Kind::MemWrite { addr } if X86_MSI_WINDOW.contains(&addr) => t.interrupts += 1,
        Kind::MemWrite { .. } => t.dma_write_bytes += h.payload.len() as u64,
        Kind::Message { code, .. } if (code::ASSERT_INTA..code::DEASSERT_INTA).contains(&code) => {
            t.interrupts += 1
        }
        Kind::Completion {
            status: CplStatus::Ur,
            ..
        } => t.unsupported_requests += 1,
        Kind::Completion {
            status: CplStatus::Ca,
            ..
        } => t.completer_aborts += 1,
        _ => {}
    }
}

#[cfg(test)]
mod vf_count_tests {
    //! [`Router::set_vf_count`]: refusals, stable ids, the inventory and the pool events.
    use super::*;
    use crate::appliance::config::{ApplianceConfig, DeviceConfig, DeviceSpec};
    use crate::appliance::devices;

    fn setup(vfs: u16) -> (Router<u32>, Proxy, HostId) {
        let cfg = ApplianceConfig {
            devices: vec![
                DeviceConfig {
                    bdf: Bdf::new(0, 0, 0),
                    name: Some("dma".into()),
                    spec: DeviceSpec::Dma { buffer: 4096, vfs },
                },
                DeviceConfig {
                    bdf: Bdf::new(0, 1, 0),
                    name: Some("plain".into()),
                    spec: DeviceSpec::Dma {
                        buffer: 4096,
                        vfs: 0,
                    },
                },
            ],
            ..ApplianceConfig::default()
        };
        let host = cfg.accepted_host_ids()[0];
        let b = devices::build(&cfg).unwrap();
        let inventory = b.inventory.clone();
        let (ep, outbound, _scratch) = b.into_parts();
        (
            Router::new(inventory, outbound, Duration::from_millis(10)),
            ep,
            host,
        )
    }

    fn id(s: &str) -> FunctionId {
        s.parse().unwrap()
    }

    fn ids(r: &Router<u32>) -> Vec<String> {
        r.inventory()
            .functions()
            .iter()
            .map(|f| f.id.as_str().to_string())
            .collect()
    }

    fn events(r: &mut Router<u32>) -> Vec<PoolEvent> {
        let mut v = Vec::new();
        r.take_events(&mut v);
        v
    }

    #[test]
    fn lowering_and_raising_keeps_ids_and_reports_each_vf() {
        let (mut r, mut ep, _) = setup(3);
        let now = Instant::now();
        assert_eq!(ids(&r), ["dma", "dma.vf0", "dma.vf1", "dma.vf2", "plain"]);
        r.set_vf_count(&mut ep, &id("dma"), 1, now).unwrap();
        assert_eq!(ids(&r), ["dma", "dma.vf0", "plain"]);
        assert_eq!(ep.virtual_functions(Bdf::new(0, 0, 0)).len(), 1);
        assert_eq!(
            events(&mut r),
            [
                PoolEvent::FunctionRemoved(id("dma.vf1")),
                PoolEvent::FunctionRemoved(id("dma.vf2"))
            ]
        );
        r.set_vf_count(&mut ep, &id("dma"), 0, now).unwrap();
        assert_eq!(ids(&r), ["dma", "plain"]);
        assert!(ep.virtual_functions(Bdf::new(0, 0, 0)).is_empty());
        r.set_vf_count(&mut ep, &id("dma"), 2, now).unwrap();
        // The same ids, Routing IDs and places as `vfs = 2` gives, unassigned.
        assert_eq!(ids(&r), ["dma", "dma.vf0", "dma.vf1", "plain"]);
        let vf1 = r.inventory().get(&id("dma.vf1")).unwrap();
        assert_eq!(vf1.bdf, Bdf::new(0, 0, 2));
        assert_eq!(vf1.vf_of, Some((id("dma"), 1)));
        assert_eq!(vf1.state, FunctionState::Unassigned);
        assert_eq!(
            events(&mut r),
            [
                PoolEvent::FunctionRemoved(id("dma.vf0")),
                PoolEvent::FunctionAdded(id("dma.vf0")),
                PoolEvent::FunctionAdded(id("dma.vf1"))
            ]
        );
        // The same count again changes nothing.
        r.set_vf_count(&mut ep, &id("dma"), 2, now).unwrap();
        assert!(events(&mut r).is_empty());
    }

    #[test]
    fn refusals() {
        let (mut r, mut ep, host) = setup(3);
        let now = Instant::now();
        assert_eq!(
            r.set_vf_count(&mut ep, &id("dma"), 4, now),
            Err(ControlError::TooManyVfs {
                function: id("dma"),
                requested: 4,
                total: 3
            })
        );
        assert_eq!(
            r.set_vf_count(&mut ep, &id("plain"), 1, now),
            Err(ControlError::NotSriov(id("plain")))
        );
        assert_eq!(
            r.set_vf_count(&mut ep, &id("dma.vf0"), 1, now),
            Err(ControlError::NotSriov(id("dma.vf0")))
        );
        assert_eq!(
            r.set_vf_count(&mut ep, &id("nope"), 1, now),
            Err(ControlError::UnknownFunction(id("nope")))
        );
        // A VF that belongs to a host blocks any change (every VF is torn down), and nothing
        // changes.
        r.assign(&id("dma.vf2"), host).unwrap();
        let err = r.set_vf_count(&mut ep, &id("dma"), 1, now).unwrap_err();
        assert!(
            matches!(&err, ControlError::VfInUse { function, vf, .. } if *function == id("dma") && *vf == id("dma.vf2")),
            "{err:?}"
        );
        assert!(err.to_string().contains("unassign it"), "{err}");
        assert_eq!(ids(&r), ["dma", "dma.vf0", "dma.vf1", "dma.vf2", "plain"]);
        assert_eq!(ep.virtual_functions(Bdf::new(0, 0, 0)).len(), 3);
        // Any other count too: every VF is torn down and recreated.
        assert!(matches!(
            r.set_vf_count(&mut ep, &id("dma"), 2, now),
            Err(ControlError::VfInUse { .. })
        ));
    }

    #[test]
    fn a_pf_with_no_vfs_is_assignable_and_then_keeps_its_vf_count() {
        let (mut r, mut ep, host) = setup(2);
        let now = Instant::now();
        r.set_vf_count(&mut ep, &id("dma"), 0, now).unwrap();
        // Without pooled VFs the PF is an ordinary card a host may own ...
        r.assign(&id("dma"), host).unwrap();
        // ... and its owner is its driver: the appliance does not enable VFs under it.
        assert_eq!(
            r.set_vf_count(&mut ep, &id("dma"), 1, now),
            Err(ControlError::AlreadyAssigned {
                function: id("dma"),
                owner: host
            })
        );
        assert!(ep.virtual_functions(Bdf::new(0, 0, 0)).is_empty());
    }
}
