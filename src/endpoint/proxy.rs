//! The endpoint proxy: terminates TLPs for every function the appliance fronts (PCIe r5.0
//! §2.2.7-2.2.9 request and completion rules, §2.3.1 request handling and Unsupported Request,
//! §2.3.1.1 completion splitting at the Read Completion Boundary and Max Payload Size, §2.7.2.2
//! poisoned TLPs, §6.15 AtomicOps, §7.5.1.1.3 decode enables).
//!
//! Sans-I/O with explicit time: [`Proxy::handle_tlp`] takes one TLP's bytes and does
//! everything it implies — device accesses, completions, DMA completions to waiting device
//! threads; [`Proxy::poll`] gives the endpoint the time and runs each function's DMA
//! requester (the shared [`crate::tlp::requester`] core: starts the reads device threads
//! queued, as tags allow, and expires timed-out requests and quarantined tags). Every TLP the
//! appliance sends (completions, DMA requests, MSI-X writes, INTx messages) goes, in order, to
//! the one outbound queue returned by [`Proxy::new`].
//!
//! The driver — whoever owns the link — drains that queue and calls `poll(now)` after
//! handling TLPs, when a device thread queued a read ([`Proxy::kicks`], or the wake-up of
//! [`Proxy::set_outbound_wake`]) and at [`Proxy::poll_timeout`]. The endpoint reads no
//! clock itself, so a simulator can drive it with simulated time.
//!
//! Routing: configuration requests by device and function number (the bus number is captured
//! from Type 0 writes, §2.2.6.2); memory and IO requests by BAR with decode enables respected;
//! completions by Requester ID to the function's tag table.
//!
//! Scoped routing (the pool, docs/appliance.md "Isolation"): [`Proxy::handle_tlp_scoped`]
//! handles a TLP of one host session with every lookup restricted to a [`FunctionSet`] — the
//! functions that host owns — so two hosts may program the same BAR addresses, a configuration
//! request or completion can name only the caller-translated function, and the completions it
//! causes come back to the caller (not the shared outbound queue) for the caller to send to
//! that session.
//!
//! SR-IOV (§9, `sriov.rs`): virtual functions come and go with their PF's VF Enable, as
//! functions of their own in the same table. The appliance can act as the PF's driver
//! ([`Proxy::enable_vfs`]) and present a VF to a host as a standalone function
//! ([`Proxy::attach_vf_view`], `vf_view.rs`): the view is that VF's entry in the table, so
//! configuration, memory and completion routing, DMA and interrupts all work as for any
//! function, under the VF's Routing ID.

use crate::sync::MutexExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use thiserror::Error;

use super::decode::MsixRegion;
use super::device::{AtomicOp, Device, DeviceError, ResetKind};
use super::function::{Outbound, WakeSlot};
use super::proxied::{find_cfg, ProxiedFunction};
use super::sriov::{self, sync_vfs, VfFactory};
use super::vf_view::VfError;
use super::wire::{self, AtomicKind, Bdf, CplStatus, ParsedHeader, ParsedKind, TlpViewError};
use crate::tlp::{self, build};

/// Errors from the endpoint proxy.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// A TLP could not be parsed (counted in [`ProxyStats::malformed`]).
    #[error("malformed TLP: {0}")]
    Malformed(#[from] TlpViewError),
    /// Two functions were given the same device/function number.
    #[error("function {0} is already present")]
    DuplicateFunction(Bdf),
    /// No physical function at this device/function number.
    #[error("no function at {0}")]
    NoFunction(Bdf),
}

/// Proxy construction parameters.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Completion timeout for device DMA reads.
    pub dma_timeout: Duration,
    /// Capacity of the outbound TLP queue (device threads block when it is full).
    pub outbound_capacity: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            dma_timeout: Duration::from_secs(2),
            outbound_capacity: 8192,
        }
    }
}

/// Counters: everything the proxy dropped or refused is counted here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProxyStats {
    /// TLPs handled.
    pub tlps_in: u64,
    /// TLPs that failed to parse.
    pub malformed: u64,
    /// Completions sent with Unsupported Request.
    pub unsupported: u64,
    /// Completions sent with Completer Abort.
    pub completer_aborts: u64,
    /// Posted writes dropped (no BAR claims them, decode disabled, or poisoned).
    pub dropped_writes: u64,
    /// Poisoned TLPs received.
    pub poisoned: u64,
    /// Completions that matched no outstanding request (late completions of timed-out
    /// requests, whose tags were quarantined, are absorbed and not counted here).
    pub unexpected_completions: u64,
    /// Messages received (and ignored).
    pub messages: u64,
}

/// A set of functions by device/function number (the low 8 bits of a Routing ID; the bus is
/// captured, never part of a function's identity): 256 bits, copied, no allocation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FunctionSet([u64; 4]);

impl FunctionSet {
    /// The empty set.
    pub const EMPTY: FunctionSet = FunctionSet([0; 4]);
    /// Every function.
    pub const ALL: FunctionSet = FunctionSet([u64::MAX; 4]);

    /// Add the function with device/function number `devfn`.
    pub fn insert(&mut self, devfn: u8) {
        self.0[usize::from(devfn >> 6)] |= 1 << (devfn & 63);
    }

    /// Remove it.
    pub fn remove(&mut self, devfn: u8) {
        self.0[usize::from(devfn >> 6)] &= !(1 << (devfn & 63));
    }

    /// Whether it holds `devfn`.
    pub fn contains(&self, devfn: u8) -> bool {
        self.0[usize::from(devfn >> 6)] & (1 << (devfn & 63)) != 0
    }

    /// Whether it holds the function at `bdf` (bus ignored).
    pub fn has(&self, bdf: Bdf) -> bool {
        self.contains(bdf.0 as u8)
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    /// The device/function numbers it holds, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|d| self.contains(*d))
    }
}

/// How one host's TLP is routed by [`Proxy::handle_tlp_scoped`] (internal state while it runs).
#[derive(Debug, Clone, Copy)]
struct Scope {
    functions: FunctionSet,
    /// For a configuration request: the target; for a completion: the requester — the
    /// appliance Routing ID that the host's ID stands for.
    id: Option<Bdf>,
}

/// The appliance side of the tunnel for a set of functions.
#[derive(Debug)]
pub struct Proxy {
    pub(crate) functions: Vec<ProxiedFunction>,
    pub(crate) out: Sender<Vec<u8>>,
    /// The wake-up device threads call after queueing (set once by the pump).
    pub(crate) wake: WakeSlot,
    /// Device threads signal here when they queued a DMA read (see [`Proxy::kicks`]).
    kick: (Sender<()>, Receiver<()>),
    pub(crate) cfg: ProxyConfig,
    stats: ProxyStats,
    /// Bytes a BAR read returns.
    scratch: Vec<u8>,
    /// Payload of one completion being built.
    pub(crate) next_id: u64,
    /// The latest time the driver gave [`Proxy::poll`].
    now: Option<Instant>,
    /// While [`Proxy::handle_tlp_scoped`] runs: the host's functions and translated ID.
    scope: Option<Scope>,
    /// While [`Proxy::handle_tlp_scoped`] runs: the completions it produced.
    replies: Vec<Vec<u8>>,
    /// The device/function number of the function the last handled TLP reached.
    claimed: Option<u8>,
}

impl Proxy {
    /// A new proxy and the receiving end of its outbound TLP queue.
    pub fn new(cfg: ProxyConfig) -> (Proxy, Receiver<Vec<u8>>) {
        let (tx, rx) = channel::bounded(cfg.outbound_capacity.max(16));
        (
            Proxy {
                functions: Vec::new(),
                out: tx,
                wake: WakeSlot::default(),
                kick: channel::bounded(1),
                cfg,
                stats: ProxyStats::default(),
                scratch: Vec::with_capacity(4096),
                next_id: 0,
                now: None,
                scope: None,
                replies: Vec::new(),
                claimed: None,
            },
            rx,
        )
    }

    /// Add a function at `bdf` (device and function numbers matter; the bus is captured).
    pub fn add_function(&mut self, bdf: Bdf, device: Box<dyn Device>) -> Result<(), ProxyError> {
        if find_cfg(&self.functions, bdf).is_some() {
            return Err(ProxyError::DuplicateFunction(bdf));
        }
        self.next_id += 1;
        self.functions.push(ProxiedFunction::new(
            self.next_id,
            bdf,
            device,
            self.outbound(),
            self.cfg.dma_timeout,
        ));
        Ok(())
    }

    /// Take the physical function at `bdf` (and its virtual functions) out of the endpoint
    /// while it serves: its DMA reads in flight fail, its device model is dropped (its worker
    /// joined) and TLPs to it get Unsupported Request from now on. The other functions are
    /// untouched. Returns how many functions (the PF and its VFs) went.
    pub fn remove_function(&mut self, bdf: Bdf) -> Result<usize, ProxyError> {
        let Some(pf) = self
            .functions
            .iter()
            // Device and function number (the bus is whatever the host's enumeration gave).
            .find(|f| f.vf.is_none() && f.bdf().0 as u8 == bdf.0 as u8)
            .map(|f| f.id)
        else {
            return Err(ProxyError::NoFunction(bdf));
        };
        let now = self.now;
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.functions.len() {
            let f = &self.functions[i];
            if f.id == pf || f.vf.as_ref().is_some_and(|v| v.pf == pf) {
                let mut f = self.functions.remove(i);
                f.retire(now);
                gone.push(f);
            } else {
                i += 1;
            }
        }
        let n = gone.len();
        // VFs before their PF (they share its device model's state).
        gone.reverse();
        drop(gone);
        Ok(n)
    }

    /// Put `device` in place of the physical function at `bdf`'s device model while the
    /// endpoint serves (its backing was replaced: a restarted vfio-user server). The function
    /// keeps its place and number but starts at power-on state: the old model's DMA reads in
    /// flight fail, its virtual functions go, and decode state, MSI-X, INTx and the DMA
    /// requester are new (so is its captured bus: the next Type 0 write sets it). The other
    /// functions are untouched, and the TLP path is as it was (no lookup changes shape).
    /// Returns the old model, for the caller to drop where dropping may block.
    pub fn replace_function(
        &mut self,
        bdf: Bdf,
        device: Box<dyn Device>,
    ) -> Result<Box<dyn Device>, ProxyError> {
        let Some(i) = self
            .functions
            .iter()
            .position(|f| f.vf.is_none() && f.bdf().0 as u8 == bdf.0 as u8)
        else {
            return Err(ProxyError::NoFunction(bdf));
        };
        let now = self.now;
        let pf = self.functions[i].id;
        let at = Bdf::new(0, self.functions[i].bdf().device(), bdf.function());
        // Its VFs first (they share the old model's state).
        let mut j = 0;
        while j < self.functions.len() {
            if self.functions[j].is_vf_of(pf) {
                let mut vf = self.functions.remove(j);
                vf.retire(now);
            } else {
                j += 1;
            }
        }
        let i = self
            .functions
            .iter()
            .position(|f| f.id == pf)
            .ok_or(ProxyError::NoFunction(bdf))?;
        self.next_id += 1;
        let fresh = ProxiedFunction::new(
            self.next_id,
            at,
            device,
            self.outbound(),
            self.cfg.dma_timeout,
        );
        let mut old = std::mem::replace(&mut self.functions[i], fresh);
        old.retire(now);
        Ok(old.device)
    }

    /// Routing IDs of the functions, in the order they were added.
    pub fn functions(&self) -> Vec<Bdf> {
        self.functions.iter().map(ProxiedFunction::bdf).collect()
    }

    /// Names of the functions' device models, in the same order.
    pub fn function_names(&self) -> Vec<String> {
        self.functions
            .iter()
            .map(|f| f.device.name().to_string())
            .collect()
    }

    /// Counters.
    pub fn stats(&self) -> ProxyStats {
        self.stats
    }

    /// Conventional reset of every function (link down, hot reset, peer restarted): DMA
    /// reads in flight fail, and their tags are free at once (nothing sent before can be
    /// answered).
    pub fn reset_all(&mut self) {
        let now = self.now;
        for f in &mut self.functions {
            f.reset(ResetKind::Conventional, now);
        }
        let pfs: Vec<u64> = self
            .functions
            .iter()
            .filter(|f| f.decode.sriov.is_some())
            .map(|f| f.id)
            .collect();
        for id in pfs {
            if let Some(i) = self.functions.iter().position(|f| f.id == id) {
                self.sync_vfs(i);
            }
        }
    }

    /// Conventional reset of the functions in `set` (their host's link went down, or the
    /// function changes owner): DMA reads in flight fail and their tags are free, the device
    /// model's volatile state is wiped (registers, queues, buffers, pending interrupts;
    /// persistent media stays). A reset PF loses its VFs, as [`Proxy::reset_all`] does.
    /// Returns how many functions were reset.
    pub fn reset_functions(&mut self, set: &FunctionSet) -> usize {
        let now = self.now;
        let mut n = 0;
        let mut pfs: Vec<u64> = Vec::new();
        for f in &mut self.functions {
            if set.has(f.bdf()) {
                f.reset(ResetKind::Conventional, now);
                n += 1;
                if f.decode.sriov.is_some() {
                    pfs.push(f.id);
                }
            }
        }
        for id in pfs {
            if let Some(i) = self.functions.iter().position(|f| f.id == id) {
                self.sync_vfs(i);
            }
        }
        n
    }

    /// The device/function numbers of every function now (virtual functions included).
    pub fn function_set(&self) -> FunctionSet {
        let mut s = FunctionSet::EMPTY;
        for f in &self.functions {
            s.insert(f.bdf().0 as u8);
        }
        s
    }

    /// Let time pass: run every function's DMA requester with `now` — start the reads device
    /// threads queued (as tags allow), expire requests whose completion timeout passed and
    /// free quarantined tags. Call it after [`Proxy::handle_tlp`], when
    /// [`Proxy::kicks`] fires (or the outbound wake-up is called) and at
    /// [`Proxy::poll_timeout`]. `now` must not go backwards.
    pub fn poll(&mut self, now: Instant) {
        self.now = Some(self.now.map_or(now, |t| t.max(now)));
        for f in &mut self.functions {
            f.poll_dma(now);
        }
    }

    /// When [`Proxy::poll`] next has a timer to run (possibly early, never late).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.functions
            .iter()
            .filter_map(|f| f.dma.poll_timeout())
            .min()
    }

    /// How long a driver thread may sleep at `now` before [`Proxy::poll`] has a timer to run:
    /// until [`Proxy::poll_timeout`], and never longer than `cap` (so the thread still sees
    /// its stop flag or its other work).
    pub fn poll_wait(&self, now: Instant, cap: Duration) -> Duration {
        self.poll_timeout()
            .map_or(cap, |t| t.saturating_duration_since(now).min(cap))
    }

    /// Fires (holds a message) when a device thread queued a DMA read that only
    /// [`Proxy::poll`] can start; a driver that waits on channels selects on it beside its
    /// inbound TLPs. Several kicks between two polls collapse into one.
    pub fn kicks(&self) -> Receiver<()> {
        self.kick.1.clone()
    }

    /// Counters of the requester of the function at `bdf` (tags, timeouts, late completions).
    pub fn requester_stats(&self, bdf: Bdf) -> Option<crate::tlp::requester::RequesterStats> {
        let i = find_cfg(&self.functions, bdf)?;
        Some(self.functions[i].dma.stats())
    }

    /// Act as the driver of the SR-IOV physical function at `pf`: enable `n` virtual
    /// functions (VF Enable cleared, NumVFs = `n`, VF Enable and VF MSE set — PCIe r5.0
    /// §9.3.3.3, §9.3.3.7), or disable them with `n` = 0. Returns their Routing IDs by VF
    /// index. When exactly `n` are enabled already they stay (only VF MSE is set); otherwise
    /// the old VFs (and their views) are removed first.
    pub fn enable_vfs(&mut self, pf: Bdf, n: u16) -> Result<Vec<Bdf>, VfError> {
        self.with_vf_factory(|functions, mk| sriov::enable_vfs(functions, pf, n, mk))
    }

    /// The configuration dword at `reg` of the function at `bdf` (a VF presented standalone:
    /// through its view), as the function's owner would read it; `None` when no function is
    /// there. For the appliance's own look at a function (its inventory entry), not a host's.
    pub fn config_read(&mut self, bdf: Bdf, reg: u16) -> Option<u32> {
        let i = find_cfg(&self.functions, bdf)?;
        Some(self.functions[i].config_read(reg & !3))
    }

    /// Routing IDs of the virtual functions of the PF at `pf`, by VF index (empty when it
    /// has none or is not a PF).
    pub fn virtual_functions(&self, pf: Bdf) -> Vec<Bdf> {
        sriov::virtual_functions(&self.functions, pf)
    }

    /// Present VF `index` (0-based) of the PF at `pf` as a standalone function, as Linux
    /// `vfio-pci` presents a VF to a VM (see `vf_view.rs`): Vendor ID of the PF, Device ID
    /// from its VF Device ID, the VF's BARs as ordinary BARs with their own Command register,
    /// its own MSI-X and PCI Express capabilities. The VF is reset (FLR) first, so a new
    /// owner never sees the last one's state. The returned Routing ID is the function's: the
    /// configuration requests to route to it, the Requester ID of its DMA and interrupts, the
    /// Completer ID of its completions. The view lasts until [`Proxy::detach_vf_view`] or
    /// until the VF itself goes (VF Enable cleared, PF reset).
    pub fn attach_vf_view(&mut self, pf: Bdf, index: u16) -> Result<Bdf, VfError> {
        sriov::attach_view(&mut self.functions, pf, index, self.now)
    }

    /// Withdraw the view of the VF at `vf`: the VF is reset (FLR) and routed by its slice of
    /// the PF's VF BARs again.
    pub fn detach_vf_view(&mut self, vf: Bdf) -> Result<(), VfError> {
        sriov::detach_view(&mut self.functions, vf, self.now)
    }

    /// Run `op` on the function table with what creating virtual functions takes.
    fn with_vf_factory<R>(
        &mut self,
        op: impl FnOnce(&mut Vec<ProxiedFunction>, &mut VfFactory<'_>) -> R,
    ) -> R {
        let mut mk = VfFactory {
            next_id: &mut self.next_id,
            out: Outbound {
                tx: self.out.clone(),
                wake: self.wake.clone(),
                kick: self.kick.0.clone(),
            },
            dma_timeout: self.cfg.dma_timeout,
            now: self.now,
        };
        op(&mut self.functions, &mut mk)
    }

    fn sync_vfs(&mut self, pf: usize) {
        self.with_vf_factory(|functions, mk| sync_vfs(functions, pf, mk));
    }

    fn send(&mut self, tlp: Vec<u8>) {
        crate::probe::hit(crate::probe::Ev::EpTlpOut);
        if self.scope.is_some() {
            // A scoped TLP's completions go back to its caller (its host's session only).
            self.replies.push(tlp);
            return;
        }
        // The queue only disconnects when the endpoint itself is gone. No wake-up: this runs
        // on the pump's own thread, which drains the queue after every TLP it hands us.
        let _ = self.out.send(tlp);
    }

    /// Whether a lookup may see function `f` (always, unless a scoped TLP is being handled).
    fn visible(&self, f: &ProxiedFunction) -> bool {
        self.scope.is_none_or(|s| s.functions.has(f.bdf()))
    }

    /// The completer ID of a refusal that no function claimed: the first visible function's.
    fn any_completer(&self) -> Bdf {
        self.functions
            .iter()
            .find(|f| self.visible(f))
            .map_or(Bdf(0), ProxiedFunction::bdf)
    }

    /// Handle one TLP of one host, restricted to `functions` (the functions it owns; bus
    /// numbers ignored): configuration requests reach only `id` (the appliance function the
    /// caller translated the host's target to; `None` or a function outside the set answers
    /// Unsupported Request), memory, IO and AtomicOp requests only the BARs of the set's
    /// functions, and a completion only the outstanding requests of the function `id` (the
    /// translated Requester ID) if it is in the set — anything else is counted as unexpected.
    /// The completions it causes are appended to `replies`, in order, for the caller to send
    /// to that host; nothing is queued on the shared outbound queue. No allocation beyond
    /// the completions themselves.
    pub fn handle_tlp_scoped(
        &mut self,
        tlp: &[u8],
        functions: &FunctionSet,
        id: Option<Bdf>,
        replies: &mut Vec<Vec<u8>>,
    ) -> Result<(), ProxyError> {
        self.scope = Some(Scope {
            functions: *functions,
            id,
        });
        std::mem::swap(&mut self.replies, replies);
        let r = self.handle_tlp(tlp);
        std::mem::swap(&mut self.replies, replies);
        self.scope = None;
        r
    }

    /// The outbound queue for a function's device threads.
    pub(crate) fn outbound(&self) -> Outbound {
        Outbound {
            tx: self.out.clone(),
            wake: self.wake.clone(),
            kick: self.kick.0.clone(),
        }
    }

    /// Hold (`true`) or release the DMA writes of the function at device/function number
    /// `devfn`: while held, its device threads wait before queueing another write TLP (the
    /// back-pressure of the pool's per-function policy). `false` if there is no such function.
    pub fn hold_dma_writes(&self, devfn: u8, hold: bool) -> bool {
        let mut found = false;
        for f in self.functions.iter().filter(|f| f.bdf().0 as u8 == devfn) {
            f.shared.set_hold_writes(hold);
            found = true;
        }
        found
    }

    /// Whether the outbound queue is empty now (nothing a device thread queued waits).
    pub fn outbound_is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Install the wake-up that device threads call after queueing an outbound TLP (from a
    /// worker thread: a DMA request, an MSI-X write), for a pump that sleeps on the network
    /// rather than on the queue. Only the first call takes effect.
    pub fn set_outbound_wake(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        let _ = self.wake.0.set(wake);
    }

    #[allow(clippy::too_many_arguments)]
    fn complete(
        &mut self,
        completer: Bdf,
        h: &ParsedHeader,
        status: CplStatus,
        byte_count: u16,
        lower_addr: u8,
        data: &[u8],
    ) {
        match status {
            CplStatus::Ur => self.stats.unsupported += 1,
            CplStatus::Ca => self.stats.completer_aborts += 1,
            _ => {}
        }
        let mut tlp = Vec::with_capacity(12 + data.len() + 3);
        match wire::emit_completion(
            &mut tlp,
            completer,
            h.requester,
            h.tag,
            status,
            byte_count,
            lower_addr,
            h.attr & 3,
            data,
        ) {
            Ok(()) => self.send(tlp),
            Err(e) => {
                tracing::error!(%completer, error = %e, "endpoint: cannot build a completion")
            }
        }
    }

    /// Handle one TLP from the host.
    pub fn handle_tlp(&mut self, tlp: &[u8]) -> Result<(), ProxyError> {
        self.stats.tlps_in += 1;
        crate::probe::hit(crate::probe::Ev::EpTlpIn);
        self.claimed = None;
        let h = match ParsedHeader::parse(tlp) {
            Ok(h) => h,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e.into());
            }
        };
        if h.poisoned {
            self.stats.poisoned += 1;
        }
        let payload = &tlp[h.payload.clone()];
        match h.kind {
            ParsedKind::Config {
                type1,
                write,
                target,
                reg,
            } => self.config(&h, type1, write, target, reg, payload),
            ParsedKind::MemRead { addr } => self.mem_read(&h, addr),
            ParsedKind::MemWrite { addr } => self.mem_write(&h, addr, payload),
            ParsedKind::IoRead { addr } => self.io(&h, u64::from(addr), None),
            ParsedKind::IoWrite { addr } => self.io(&h, u64::from(addr), Some(payload)),
            ParsedKind::Atomic { op, addr } => self.atomic(&h, op, addr, payload),
            ParsedKind::Completion {
                status,
                byte_count,
                lower_addr,
                ..
            } => {
                let scope = self.scope;
                let found = self
                    .functions
                    .iter_mut()
                    .find(|f| match scope {
                        None => f.bdf() == h.requester,
                        // Scoped: the translated requester, by device/function, if it is the
                        // host's.
                        Some(s) => s
                            .id
                            .is_some_and(|id| s.functions.has(id) && f.bdf().0 as u8 == id.0 as u8),
                    })
                    .map(|f| {
                        let ok = f.dma.on_completion(
                            h.tag, status, byte_count, lower_addr, h.poisoned, payload,
                        );
                        (f.bdf().0 as u8, ok)
                    });
                match found {
                    Some((devfn, true)) => self.claimed = Some(devfn),
                    _ => self.stats.unexpected_completions += 1,
                }
            }
            ParsedKind::Message { .. } => self.stats.messages += 1,
        }
        Ok(())
    }

    fn config(
        &mut self,
        h: &ParsedHeader,
        type1: bool,
        write: bool,
        target: Bdf,
        reg: u16,
        payload: &[u8],
    ) {
        // Scoped: the caller translated the host's target (its bus kept, for capture).
        let target = match self.scope {
            Some(s) => match s.id {
                Some(id) if s.functions.has(id) => id,
                _ => target,
            },
            None => target,
        };
        let in_scope = self
            .scope
            .is_none_or(|s| s.id.is_some_and(|id| s.functions.has(id)));
        let idx = if type1 || !in_scope {
            None
        } else {
            find_cfg(&self.functions, target)
        };
        let Some(i) = idx else {
            // No such function (or a Type 1 request, which an endpoint does not forward).
            self.complete(target, h, CplStatus::Ur, 4, 0, &[]);
            return;
        };
        self.claimed = Some(self.functions[i].bdf().0 as u8);
        if write {
            if h.poisoned {
                self.complete(target, h, CplStatus::Ur, 4, 0, &[]);
                return;
            }
            let mut v = [0u8; 4];
            v.copy_from_slice(&payload[..4]);
            let f = &mut self.functions[i];
            f.capture_bdf(target);
            let flr = f.config_write(reg, u32::from_le_bytes(v), h.first_be);
            if flr {
                f.reset(ResetKind::FunctionLevel, self.now);
            } else {
                f.refresh();
            }
            let me = f.bdf();
            if f.decode.sriov.is_some() {
                self.sync_vfs(i);
            }
            self.complete(me, h, CplStatus::Sc, 4, 0, &[]);
        } else {
            let f = &mut self.functions[i];
            let mut v = f.config_read(reg);
            if reg == 0x04 && f.shared.intx.lock().map(|s| s.level).unwrap_or(false) {
                v |= 1 << 19; // Status: Interrupt Status
            }
            let me = f.bdf();
            if reg == 0x0c && me.function() == 0 && f.vf.is_none() {
                let multi = self.functions.iter().any(|o| {
                    self.visible(o)
                        && o.vf.is_none()
                        && o.bdf().device() == me.device()
                        && o.bdf().function() != 0
                });
                if multi {
                    v |= 1 << 23; // Header Type: multi-function
                }
            }
            let mut data = v.to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                if h.first_be & (1 << i) == 0 {
                    *b = 0;
                }
            }
            self.complete(me, h, CplStatus::Sc, 4, 0, &data);
        }
    }

    /// The function (index), BAR and offset a memory request of `len` bytes at `addr` hits;
    /// records the function as [`claimed`](Self::claimed).
    fn claim_mem(&mut self, addr: u64, len: u64) -> Option<(usize, u8, u64)> {
        let claim = self
            .functions
            .iter()
            .enumerate()
            .filter(|(_, f)| self.visible(f))
            .find_map(|(i, f)| {
                f.decode
                    .claim_mem(addr, len.max(1))
                    .map(|(bar, off)| (i, bar, off))
            });
        self.claimed = claim.map(|(i, _, _)| self.functions[i].bdf().0 as u8);
        claim
    }

    /// The device/function number (appliance numbering) of the function that the TLP last
    /// given to [`handle_tlp`](Self::handle_tlp) or [`handle_tlp_scoped`](Self::handle_tlp_scoped)
    /// reached: the function a configuration or memory/IO request was decoded to, or whose
    /// outstanding request a completion answered. `None` when it reached none (answered UR,
    /// dropped, a message). What per-function traffic counters attribute a TLP by.
    pub fn claimed(&self) -> Option<u8> {
        self.claimed
    }

    /// Read from a BAR, serving the MSI-X table/PBA itself.
    fn bar_read(
        &mut self,
        i: usize,
        bar: u8,
        off: u64,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        let f = &mut self.functions[i];
        match f.decode.msix.and_then(|m| m.locate(bar, off)) {
            Some(MsixRegion::Table(o)) => f.shared.msix.lock_or_recover().read(false, o, data),
            Some(MsixRegion::Pba(o)) => f.shared.msix.lock_or_recover().read(true, o, data),
            None => return f.device.bar_read(bar, off, data),
        }
        Ok(())
    }

    fn bar_write(&mut self, i: usize, bar: u8, off: u64, data: &[u8]) -> Result<(), DeviceError> {
        let f = &mut self.functions[i];
        match f.decode.msix.and_then(|m| m.locate(bar, off)) {
            Some(MsixRegion::Table(o)) => {
                if f.shared.msix.lock_or_recover().write(o, data) {
                    f.shared.flush_msix(&f.decode);
                }
            }
            Some(MsixRegion::Pba(_)) => {} // the PBA is read-only
            None => return f.device.bar_write(bar, off, data),
        }
        Ok(())
    }

    fn mem_read(&mut self, h: &ParsedHeader, addr: u64) {
        let (lead, count) = wire::enabled_span(h.length_dw, h.first_be, h.last_be);
        let first = addr + u64::from(lead);
        let claim = self.claim_mem(addr, u64::from(h.length_dw) * 4);
        let Some((i, bar, off)) = claim else {
            let me = self.any_completer();
            self.complete(me, h, CplStatus::Ur, count as u16 & 0xfff, 0, &[]);
            return;
        };
        let me = self.functions[i].bdf();
        if count == 0 {
            // Zero-length read: one DW of undefined data, the device is not touched.
            self.complete(me, h, CplStatus::Sc, 1, (addr & 0x7f) as u8, &[0; 4]);
            return;
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.resize(count as usize, 0);
        let res = self.bar_read(i, bar, off + u64::from(lead), &mut buf);
        if res.is_err() {
            self.complete(me, h, CplStatus::Ca, count as u16 & 0xfff, 0, &[]);
            self.scratch = buf;
            return;
        }
        let d = self.functions[i].decode;
        let mps = u32::from(d.mps).clamp(128, 4096).next_power_of_two();
        let rcb = if d.rcb >= 128 { 128 } else { 64 };
        // The completion carries the request's Relaxed Ordering and No Snoop (§2.2.6.3).
        let cpl = build::Cpl {
            attr: tlp::Attr {
                ns: h.attr & 1 != 0,
                ro: h.attr & 2 != 0,
                ido: false,
            },
            ..build::Cpl::new(me, h.requester, h.tag, CplStatus::Sc)
        };
        let mut plan = match cpl.read_completions(first, &buf, rcb, mps) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("endpoint: cannot split a read completion: {e}");
                self.complete(me, h, CplStatus::Ca, count as u16, 0, &[]);
                self.scratch = buf;
                return;
            }
        };
        loop {
            let mut tlp = Vec::with_capacity(16 + mps as usize);
            match wire::emit_next_completion(&mut tlp, &mut plan) {
                None => break,
                Some(Ok(())) => self.send(tlp),
                Some(Err(e)) => {
                    tracing::error!(completer = %me, error = %e, "endpoint: cannot build a completion");
                    break;
                }
            }
        }
        self.scratch = buf;
    }

    fn mem_write(&mut self, h: &ParsedHeader, addr: u64, payload: &[u8]) {
        let Some((i, bar, off)) = self.claim_mem(addr, u64::from(h.length_dw) * 4) else {
            self.stats.dropped_writes += 1;
            return;
        };
        if h.poisoned {
            self.stats.dropped_writes += 1;
            return;
        }
        // Write each run of enabled bytes (byte enables may have holes in the first/last DW).
        let n = usize::from(h.length_dw) * 4;
        let enabled = |k: usize| -> bool {
            let dw = k / 4;
            let be = if dw == 0 {
                h.first_be
            } else if dw + 1 == usize::from(h.length_dw) {
                h.last_be
            } else {
                0xf
            };
            be & (1 << (k % 4)) != 0
        };
        let mut k = 0;
        while k < n {
            if !enabled(k) {
                k += 1;
                continue;
            }
            let start = k;
            while k < n && enabled(k) {
                k += 1;
            }
            if self
                .bar_write(i, bar, off + start as u64, &payload[start..k])
                .is_err()
            {
                self.stats.dropped_writes += 1;
            }
        }
    }

    fn io(&mut self, h: &ParsedHeader, addr: u64, payload: Option<&[u8]>) {
        let claim = self
            .functions
            .iter()
            .enumerate()
            .filter(|(_, f)| self.visible(f))
            .find_map(|(i, f)| f.decode.claim_io(addr, 4).map(|(bar, off)| (i, bar, off)));
        let Some((i, bar, off)) = claim else {
            let me = self.any_completer();
            self.complete(me, h, CplStatus::Ur, 4, 0, &[]);
            return;
        };
        self.claimed = Some(self.functions[i].bdf().0 as u8);
        let me = self.functions[i].bdf();
        let (lead, count) = wire::enabled_span(1, h.first_be, 0);
        let lead = u64::from(lead);
        match payload {
            Some(p) => {
                let status = if h.poisoned {
                    CplStatus::Ur
                } else if count == 0
                    || self
                        .bar_write(
                            i,
                            bar,
                            off + lead,
                            &p[lead as usize..(lead as usize + count as usize)],
                        )
                        .is_ok()
                {
                    CplStatus::Sc
                } else {
                    CplStatus::Ca
                };
                self.complete(me, h, status, 4, 0, &[]);
            }
            None => {
                let mut v = [0u8; 4];
                let res = if count == 0 {
                    Ok(())
                } else {
                    self.bar_read(
                        i,
                        bar,
                        off + lead,
                        &mut v[lead as usize..(lead + u64::from(count)) as usize],
                    )
                };
                match res {
                    Ok(()) => self.complete(me, h, CplStatus::Sc, 4, 0, &v),
                    Err(_) => self.complete(me, h, CplStatus::Ca, 4, 0, &[]),
                }
            }
        }
    }

    fn atomic(&mut self, h: &ParsedHeader, op: AtomicKind, addr: u64, payload: &[u8]) {
        let n = payload.len();
        let size = match op {
            AtomicKind::Cas => n / 2,
            _ => n,
        };
        let claim = self.claim_mem(addr, size as u64);
        let me = claim.map_or_else(|| self.any_completer(), |(i, _, _)| self.functions[i].bdf());
        let le = |b: &[u8]| -> u64 {
            let mut r = [0u8; 8];
            r[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
            u64::from_le_bytes(r)
        };
        let aligned = (size == 4 || size == 8) && addr % size as u64 == 0;
        let (Some((i, bar, off)), true, false) = (claim, aligned, h.poisoned) else {
            self.complete(me, h, CplStatus::Ur, size as u16 & 0xfff, 0, &[]);
            return;
        };
        let sz = size as u8;
        let aop = match op {
            AtomicKind::FetchAdd => AtomicOp::FetchAdd {
                size: sz,
                add: le(&payload[..size]),
            },
            AtomicKind::Swap => AtomicOp::Swap {
                size: sz,
                value: le(&payload[..size]),
            },
            AtomicKind::Cas => AtomicOp::Cas {
                size: sz,
                compare: le(&payload[..size]),
                swap: le(&payload[size..2 * size]),
            },
        };
        match self.functions[i].device.bar_atomic(bar, off, aop) {
            Ok(old) => {
                let bytes = old.to_le_bytes();
                self.complete(me, h, CplStatus::Sc, size as u16, 0, &bytes[..size]);
            }
            Err(DeviceError::Unsupported(_)) => {
                self.complete(me, h, CplStatus::Ur, size as u16, 0, &[])
            }
            Err(DeviceError::Failed(_)) => self.complete(me, h, CplStatus::Ca, size as u16, 0, &[]),
        }
    }
}

impl Drop for Proxy {
    /// Fail every DMA read before the device models go (dropping one joins its worker, which
    /// may be waiting for a read only this endpoint could finish).
    fn drop(&mut self) {
        let now = self.now;
        for f in &mut self.functions {
            f.retire(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::dma_engine::DmaEngine;

    #[test]
    fn a_replaced_function_starts_at_power_on_and_the_others_keep_their_state() {
        let (mut ep, _rx) = Proxy::new(ProxyConfig::default());
        ep.add_function(Bdf::new(0, 0, 0), Box::new(DmaEngine::new(4096)))
            .unwrap();
        ep.add_function(Bdf::new(0, 0, 1), Box::new(DmaEngine::new(4096)))
            .unwrap();
        ep.add_function(Bdf::new(0, 1, 0), Box::new(DmaEngine::new(4096)))
            .unwrap();
        for f in &mut ep.functions {
            // Memory Space and Bus Master Enable, as enumeration leaves them.
            f.config_write(0x04, 0x0006, 0x3);
            f.refresh();
        }
        let ids: Vec<u64> = ep.functions.iter().map(|f| f.id).collect();
        let old = ep
            .replace_function(Bdf::new(0, 0, 1), Box::new(DmaEngine::new(8192)))
            .unwrap();
        assert_eq!(old.name(), "dma");
        assert_eq!(
            ep.functions(),
            vec![Bdf::new(0, 0, 0), Bdf::new(0, 0, 1), Bdf::new(0, 1, 0)],
            "same place, same numbers"
        );
        assert_ne!(ep.functions[1].id, ids[1], "a new function record");
        assert_eq!(ep.functions[0].id, ids[0]);
        assert_eq!(ep.functions[2].id, ids[2]);
        assert_eq!(
            ep.functions[1].config_read(0x04) & 0xffff,
            0,
            "the new model is at power-on"
        );
        assert!(!ep.functions[1].decode.mem_enable);
        assert_eq!(ep.functions[0].config_read(0x04) & 0x6, 0x6);
        assert_eq!(ep.functions[2].config_read(0x04) & 0x6, 0x6);
        assert!(matches!(
            ep.replace_function(Bdf::new(0, 5, 0), Box::new(DmaEngine::new(4096))),
            Err(ProxyError::NoFunction(_))
        ));
    }
}
