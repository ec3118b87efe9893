//! The host's root complex: a virtual root port (PCIe Base 4.0 §7.5.3 with a hot-plug slot,
//! §6.7), the requester that turns config/memory accesses into TLPs and waits for their
//! completions, and the completer side that serves a card's DMA from the DMA windows and
//! turns its MSI/MSI-X writes and INTx messages into interrupts (§6.1) — that upstream half is
//! in `upstream.rs`.
//!
//! Threads: whoever pumps the transport calls [`Host::on_tlp`], [`Host::on_link_up`] and
//! [`Host::on_link_down`]; these never block on the network. Callers of the access methods
//! ([`Host::cfg_read`], [`Host::mem_read`] … and the vfio-user servers) block for at most the
//! completion timeout and must not be the pump thread. A timed-out or link-down access fails
//! with a [`RequestError`] and raises a [`HostEvent`]; the function-level API turns failed reads
//! into all-ones data, as a real root port does after a surprise removal.

use crate::sync::{CondvarExt, MutexExt, RwLockExt};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use super::enumerate::{self, ConfigAccess, EnumConfig, FunctionInfo};
use super::function::{RemoteFunction, RemoteFunctionState, RootComplex};
use super::requester::{Expect, RequestError, Requester, RequesterConfig, StartError, TagSpace};
use super::tlpio::{self, MAX_TLP, ROOT_PORT};
use crate::pci::{ConfigSpace, ExpressConfig, FunctionIds, PciExpressCap, SlotConfig};
use crate::tlp::slot::{
    ConsumerEvent, ConsumerReport, SlotEvent, SlotMessage, VmName, VmTarget, MAX_SLOT_TLP, SLOTS,
};
use crate::tlp::{build, Bdf};
use crate::transport::driver::HandleError;

/// The transport toward the appliance, as the host uses it.
pub trait Downlink: Send + Sync + std::fmt::Debug {
    /// Queue one TLP for reliable, in-order delivery.
    fn send_tlp(&self, tlp: &[u8]) -> Result<(), LinkError>;

    /// Run the link on the calling thread until `done()` or `deadline`, handing up what
    /// arrives (so a requester's completion wakes the requester itself). `false`: not
    /// possible now (another thread runs the link and will hand the completion up).
    fn drive(&self, _done: &dyn Fn() -> bool, _deadline: Instant) -> bool {
        false
    }
}

/// A [`Downlink`] into an in-process channel, for tests and benchmarks that join a host to an
/// endpoint in one process (the far end reads the TLPs and answers through
/// [`Host::on_tlp`]). Each TLP is sent as an owned copy.
#[derive(Debug, Clone)]
pub struct ChannelDownlink(pub crossbeam::channel::Sender<Vec<u8>>);

impl Downlink for ChannelDownlink {
    fn send_tlp(&self, tlp: &[u8]) -> Result<(), LinkError> {
        self.0.send(tlp.to_vec()).map_err(|_| LinkError::Closed)
    }
}

/// Why the link toward the appliance did not take a TLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// No transport session toward the appliance: not established yet, or lost.
    #[error("no transport session to the appliance")]
    NoSession,
    /// The transport's driver has stopped (the link was shut down).
    #[error("the transport driver has stopped")]
    Stopped,
    /// The transport's send queue is full; the TLP was not queued.
    #[error("the transport send queue is full")]
    QueueFull,
    /// The far end of an in-process link is gone.
    #[error("the far end of the link is gone")]
    Closed,
}

impl From<HandleError> for LinkError {
    fn from(e: HandleError) -> Self {
        match e {
            HandleError::Stopped => LinkError::Stopped,
            HandleError::Full(_) => LinkError::QueueFull,
        }
    }
}

/// Host settings.
#[derive(Debug, Clone, Copy)]
pub struct HostConfig {
    /// Completion timeout for every non-posted request.
    pub completion_timeout: Duration,
    /// Windows, MPS, MRRS for enumeration.
    pub enumeration: EnumConfig,
    /// Read Completion Boundary of the root port (64 bytes).
    pub rcb: u32,
    /// Memory writes into `[base, base+len)` are interrupts (MSI/MSI-X), not DMA.
    pub msi_window: (u64, u64),
    /// Secondary bus number of the root port (where the tunnelled functions sit).
    pub bus: u8,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            completion_timeout: Duration::from_millis(1000),
            enumeration: EnumConfig::default(),
            rcb: 64,
            msi_window: {
                let w = crate::pci::caps::X86_MSI_WINDOW;
                (w.start, w.end - w.start)
            },
            bus: 1,
        }
    }
}

/// Something the consumer of the host should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// The tunnel is up.
    LinkUp,
    /// The tunnel went down; outstanding requests failed.
    LinkDown,
    /// A function appeared below the root port (slot presence detect / DLL active).
    FunctionAdded(Bdf),
    /// A function disappeared.
    FunctionRemoved(Bdf),
    /// The appliance asked for an orderly removal of the card in `slot` (the attention
    /// button, PCIe Base 4.0 §6.7.1.5): its functions keep working while their consumers
    /// let go (a VM's guest ejects them); then [`Host::withdraw_slot`] fences them (accesses
    /// fail with Unsupported Request) and [`Host::ack_removal`] answers.
    RemovalRequested {
        /// Device number on the tunnel bus.
        slot: u8,
        /// Generation of the assignment being removed (echoed in the acknowledgement).
        generation: u16,
    },
    /// At session start the appliance said `slot` holds the assignment `generation` (a card
    /// the host finds by enumeration, with no hot-plug event): reports about it carry that
    /// generation from now on, and a consumer that kept the card across a lost session (a VM)
    /// says so again ([`Host::report_consumer`]).
    SlotOccupied {
        /// Device number on the tunnel bus.
        slot: u8,
        /// Generation of the assignment.
        generation: u16,
    },
    /// The root port's slot has an enabled hot-plug event pending (the interrupt an OS gets).
    HotPlugInterrupt,
    /// A request got no completion in time.
    CompletionTimeout {
        /// Function addressed (the root port's ID for memory requests).
        target: Bdf,
    },
    /// A card touched memory outside its DMA windows.
    DmaFault {
        /// The card.
        function: Bdf,
        /// Address.
        address: u64,
        /// Bytes.
        len: u32,
        /// A write (dropped) rather than a read (answered with UR).
        write: bool,
    },
}

/// Counters of the host.
#[derive(Debug, Default)]
pub struct HostStats {
    /// Upstream TLPs that did not parse.
    pub malformed: AtomicU64,
    /// Completions for no outstanding request.
    pub unexpected_completions: AtomicU64,
    /// DMA reads refused with UR.
    pub dma_read_faults: AtomicU64,
    /// DMA writes dropped.
    pub dma_write_faults: AtomicU64,
    /// Interrupts received (MSI, MSI-X, INTx assert).
    pub interrupts: AtomicU64,
    /// Requests from unknown requester IDs.
    pub unknown_requester: AtomicU64,
    /// Events dropped because nobody read them.
    pub events_dropped: AtomicU64,
    /// Slot messages that did not decode or make no sense toward a host.
    pub bad_slot_messages: AtomicU64,
    /// Outstanding requests failed because their function's slot reported it removed.
    pub failed_by_removal: AtomicU64,
}

#[derive(Debug, Default)]
pub(super) struct CompletionSlotState {
    pub(super) data: Vec<u8>,
    pub(super) result: Option<Result<(), RequestError>>,
}

#[derive(Debug, Default)]
pub(super) struct CompletionSlot {
    pub(super) m: Mutex<CompletionSlotState>,
    pub(super) cv: Condvar,
}

#[derive(Debug)]
pub(super) struct RxScratch {
    pub(super) stage: Vec<u8>,
    pub(super) out: Vec<u8>,
}

const MAX_EVENTS: usize = 1024;

/// What the host knows of one slot's assignment.
#[derive(Debug, Default, Clone, Copy)]
struct SlotMeta {
    /// The assignment's generation, once a `Present`, `Occupied` (at session start) or
    /// `RemovalRequest` of this session told it (an appliance that predates `Occupied` tells
    /// none for the cards found at session start: reports about them are not sent).
    generation: Option<u16>,
    /// The VM a [`VmTarget`] named, for that generation.
    vm: Option<(u16, VmName)>,
}

/// Bound of slot work queued for the agent (a hostile appliance cannot grow it further).
const MAX_SLOT_WORK: usize = 4 * SLOTS as usize;

/// `inflight` marker of a tag whose request addresses no slot (or none yet).
const NO_SLOT: u8 = 0xff;

thread_local! {
    static TX: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_TLP]);
}

/// The root complex of one host toward one appliance session.
#[derive(Debug)]
pub struct Host {
    /// Itself, for work handed to a function's worker (`upstream.rs`).
    pub(super) me: Weak<Host>,
    pub(super) link: Arc<dyn Downlink>,
    pub(super) cfg: HostConfig,
    pub(super) req: Mutex<Requester<u16>>,
    pub(super) slots: Vec<CompletionSlot>,
    /// Per tag: the slot (device number) its outstanding request addresses, so a surprise
    /// removal fails exactly that slot's requests. Written under the requester lock.
    inflight: Vec<AtomicU8>,
    /// Slot messages the pump thread received that need blocking work (enumerating a
    /// presented card, withdrawing a card's consumers): done by [`Host::take_slot_work`]'s
    /// caller, never by the pump.
    slot_work: Mutex<VecDeque<SlotMessage>>,
    /// Per slot: the generation of its assignment (from `Present` / `Occupied` /
    /// `RemovalRequest`), kept after the card left so a late report names it, and the VM the
    /// assignment names. Forgotten with the session: the next one (perhaps of a restarted
    /// appliance, whose generations start again) tells them anew.
    slot_meta: Mutex<[SlotMeta; SLOTS as usize]>,
    link_up: AtomicBool,
    functions: RwLock<Vec<Arc<RemoteFunctionState>>>,
    /// Functions gone with the link; reused when the same function comes back, so consumers
    /// (vfio-user servers) holding them keep working after a reconnect.
    retired: Mutex<Vec<Arc<RemoteFunctionState>>>,
    root_port: Mutex<ConfigSpace>,
    events: Mutex<VecDeque<HostEvent>>,
    events_cv: Condvar,
    pub(super) rx: Mutex<RxScratch>,
    pub(super) stats: HostStats,
}

impl Host {
    /// A host sending its TLPs through `link`. The link starts down.
    pub fn new(link: Arc<dyn Downlink>, cfg: HostConfig) -> Arc<Self> {
        let mut rp = ConfigSpace::bridge(FunctionIds {
            // No vendor ID is registered for pcietun yet. Like the appliance's device models we
            // use the 1b36 vendor of emulated devices with an ID outside QEMU's allocated range
            // (0e00 root port, 0e01 NVMe, 0e02 DMA engine) rather than 0x0001, which lspci
            // names "SafeNet (wrong ID)"; change all three together once an ID is registered.
            vendor_id: 0x1b36,
            device_id: 0x0e00,
            class_code: 0x06_04_00,
            ..Default::default()
        });
        let slot = SlotConfig {
            surprise: true,
            ..SlotConfig::default()
        };
        // The capability list is ours to build; failure would be a programming error.
        let _ = rp.add_capability(Box::new(PciExpressCap::new(ExpressConfig::root_port(
            1, slot,
        ))));
        let h = crate::pci::spec::header::PRIMARY_BUS;
        rp.write(h, &[0, cfg.bus, cfg.bus]);
        let slots = (0..1024)
            .map(|_| CompletionSlot {
                m: Mutex::new(CompletionSlotState {
                    data: vec![0; 4096],
                    result: None,
                }),
                cv: Condvar::new(),
            })
            .collect();
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            link,
            cfg,
            req: Mutex::new(Requester::new(RequesterConfig::with_timeout(
                cfg.completion_timeout,
            ))),
            slots,
            inflight: (0..1024).map(|_| AtomicU8::new(NO_SLOT)).collect(),
            slot_work: Mutex::new(VecDeque::new()),
            slot_meta: Mutex::new([SlotMeta::default(); SLOTS as usize]),
            link_up: AtomicBool::new(false),
            functions: RwLock::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            root_port: Mutex::new(rp),
            events: Mutex::new(VecDeque::new()),
            events_cv: Condvar::new(),
            rx: Mutex::new(RxScratch {
                stage: vec![0; 4096 + 8],
                out: vec![0; MAX_TLP],
            }),
            stats: HostStats::default(),
        })
    }

    /// Settings.
    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &HostStats {
        &self.stats
    }

    /// Whether the tunnel is up.
    pub fn is_link_up(&self) -> bool {
        self.link_up.load(Ordering::Acquire)
    }

    pub(super) fn event(&self, e: HostEvent) {
        // A card (or the consumer steering it) can raise DMA faults at line rate.
        static FAULTS: crate::ratelimit::LogLimiter = crate::ratelimit::LogLimiter::warnings();
        match e {
            HostEvent::DmaFault { .. } => crate::info_limited!(FAULTS, event = ?e, "host event"),
            _ => tracing::info!(event = ?e, "host event"),
        }
        let mut q = self.events.lock_or_recover();
        if q.len() >= MAX_EVENTS {
            q.pop_front();
            self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(e);
        self.events_cv.notify_all();
    }

    /// The next event, waiting up to `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<HostEvent> {
        let deadline = Instant::now() + timeout;
        let mut q = self.events.lock_or_recover();
        loop {
            if let Some(e) = q.pop_front() {
                return Some(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            q = self.events_cv.wait_timeout_or_recover(q, deadline - now).0;
        }
    }

    /// The tunnel came up. Call [`Host::rescan`] afterwards from a non-pump thread.
    pub fn on_link_up(&self) {
        // A new session (perhaps with a restarted appliance, without a `Down` seen first):
        // its `Occupied` and `Present` messages, which follow, tell the generations.
        self.forget_slots();
        self.link_up.store(true, Ordering::Release);
        self.event(HostEvent::LinkUp);
    }

    /// The tunnel went down: every outstanding request fails, the slot reports the card gone
    /// (presence detect and DLL state changed), functions are removed.
    pub fn on_link_down(&self) {
        self.link_up.store(false, Ordering::Release);
        self.forget_slots();
        {
            let mut r = self.req.lock_or_recover();
            r.link_down(|tag| self.finish(tag, Err(RequestError::LinkDown)));
        }
        self.event(HostEvent::LinkDown);
        let gone: Vec<Bdf> = {
            let mut f = self.functions.write_or_recover();
            let mut retired = self.retired.lock_or_recover();
            let bdfs = f.iter().map(|s| s.info().bdf).collect();
            retired.extend(f.drain(..));
            bdfs
        };
        for bdf in gone {
            self.event(HostEvent::FunctionRemoved(bdf));
        }
        self.set_slot(false);
    }

    /// Generations belong to the session's appliance: a report sent before the next session
    /// told them again could name another assignment.
    fn forget_slots(&self) {
        *self.slot_meta.lock_or_recover() = [SlotMeta::default(); SLOTS as usize];
    }

    fn set_slot(&self, present: bool) {
        let irq = {
            let mut rp = self.root_port.lock_or_recover();
            rp.pcie_mut().is_some_and(|p| p.set_presence(present))
        };
        if irq {
            self.event(HostEvent::HotPlugInterrupt);
        }
    }

    pub(super) fn finish(&self, tag: u16, r: Result<(), RequestError>) {
        if let Some(c) = self.slots.get(tag as usize) {
            c.m.lock_or_recover().result = Some(r);
            c.cv.notify_all();
        }
    }

    /// Enumerate the functions below the root port (configuring BARs, MPS/MRRS, tags), and
    /// report additions and removals as slot events. Blocks on configuration requests: never
    /// call it from the thread that calls [`Host::on_tlp`].
    pub fn rescan(self: &Arc<Self>) -> Vec<FunctionInfo> {
        if !self.is_link_up() {
            return Vec::new();
        }
        let mut acc = TlpConfigAccess(self);
        let found = enumerate::enumerate(&mut acc, self.cfg.bus, &self.cfg.enumeration);
        // 10-bit tags toward the cards when every one completes them.
        let ten = !found.is_empty() && found.iter().all(|f| f.ten_bit_completer);
        // Requests outstanding keep their tags; new ones draw from the new space.
        self.req
            .lock_or_recover()
            .set_tag_space(if ten { TagSpace::Ten } else { TagSpace::Eight });
        let (added, removed, revived) = {
            let mut fs = self.functions.write_or_recover();
            let removed: Vec<Bdf> = fs
                .iter()
                .map(|f| f.info().bdf)
                .filter(|b| !found.iter().any(|f| f.bdf == *b))
                .collect();
            let mut added = Vec::new();
            let mut revived = Vec::new();
            let old = std::mem::take(&mut *fs);
            let mut retired = self.retired.lock_or_recover();
            for info in &found {
                let known = old.iter().any(|f| f.info() == info);
                let reuse = old
                    .iter()
                    .chain(retired.iter())
                    .find(|f| f.info() == info)
                    .cloned();
                if !known {
                    added.push(info.bdf);
                }
                match reuse {
                    Some(f) => {
                        if !known {
                            revived.push(f.clone());
                        }
                        fs.push(f);
                    }
                    None => fs.push(Arc::new(RemoteFunctionState::new(info.clone()))),
                }
            }
            retired.retain(|r| !fs.iter().any(|f| Arc::ptr_eq(f, r)));
            (added, removed, revived)
        };
        // A function back after a link loss lost its interrupt programming: redo it for the
        // consumer that still holds it.
        for f in revived {
            use super::vfio_user::{IrqIndex, VfioDevice};
            let msix = f.uses_msix();
            let msi = f.ctx().irqs.is_armed(IrqIndex::Msi, 0);
            let mut rf = RemoteFunction::new(self.clone(), f);
            if msix {
                rf.irqs_changed(IrqIndex::Msix);
            } else if msi {
                rf.irqs_changed(IrqIndex::Msi);
            }
        }
        self.update_windows(&found);
        for b in removed {
            self.event(HostEvent::FunctionRemoved(b));
        }
        for b in added {
            self.event(HostEvent::FunctionAdded(b));
        }
        self.set_slot(!found.is_empty());
        found
    }

    /// The slot (device number) whose function decodes memory address `a`.
    fn slot_of_address(&self, a: u64) -> Option<u8> {
        self.functions.read_or_recover().iter().find_map(|f| {
            let i = f.info();
            i.bars
                .iter()
                .any(|b| b.size > 0 && !b.io && a >= b.base && a - b.base < b.size)
                .then_some(i.bdf.device())
        })
    }

    /// A slot message from the appliance (PCIe Base 4.0 §6.7.3 hot-plug events, carried as
    /// pcietun Vendor-Defined Messages, `tlp::slot`). Called on the pump thread; never blocks
    /// on the network: what needs configuration requests is queued for
    /// [`Host::take_slot_work`].
    pub fn on_slot_message(&self, m: SlotMessage) {
        tracing::info!(?m, "slot message");
        match m.event {
            SlotEvent::Present | SlotEvent::RemovalRequest | SlotEvent::Occupied => {
                let mut meta = self.slot_meta.lock_or_recover();
                let e = &mut meta[usize::from(m.slot)];
                e.generation = Some(m.generation);
                if e.vm.is_some_and(|(g, _)| g != m.generation) {
                    e.vm = None;
                }
            }
            _ => {}
        }
        match m.event {
            SlotEvent::Present => self.queue_slot_work(m),
            SlotEvent::RemovalRequest => {
                // Attention: the consumers must let go. The card keeps answering while they
                // do (a VM's guest flushes and ejects it); the agent fences it with
                // `withdraw_slot` once they did, then acknowledges.
                self.event(HostEvent::RemovalRequested {
                    slot: m.slot,
                    generation: m.generation,
                });
                self.queue_slot_work(m);
            }
            SlotEvent::Removed => {
                self.surprise_remove(m.slot);
                // The agent still has to take down the card's consumers (sockets).
                self.queue_slot_work(m);
            }
            // Session start: the card is found by enumeration; its consumers may report again
            // (a VM that kept it across the lost session: `HostEvent::SlotOccupied`).
            SlotEvent::Occupied => self.event(HostEvent::SlotOccupied {
                slot: m.slot,
                generation: m.generation,
            }),
            SlotEvent::RemovalAck | SlotEvent::Consumer | SlotEvent::VmTarget => {
                // Host → appliance only (a VM target comes decoded, to `on_vm_target`).
                self.stats.bad_slot_messages.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The appliance names the VM that is to take the assignment `t.generation` of
    /// `t.slot` (it precedes that assignment's `Present`). Never blocks.
    pub fn on_vm_target(&self, t: VmTarget) {
        tracing::info!(slot = t.slot, generation = t.generation, vm = %t.vm, "assignment names a VM");
        if let Some(e) = self
            .slot_meta
            .lock_or_recover()
            .get_mut(usize::from(t.slot))
        {
            e.vm = Some((t.generation, t.vm));
        }
    }

    /// The VM the current assignment of `slot` names, if the appliance named one.
    pub fn slot_vm(&self, slot: u8) -> Option<VmName> {
        let meta = self.slot_meta.lock_or_recover();
        let e = meta.get(usize::from(slot))?;
        match (e.generation, e.vm) {
            (Some(g), Some((vg, vm))) if g == vg => Some(vm),
            _ => None,
        }
    }

    /// The generation of `slot`'s current (or last) assignment, if a slot message told it.
    pub fn slot_generation(&self, slot: u8) -> Option<u16> {
        self.slot_meta
            .lock_or_recover()
            .get(usize::from(slot))?
            .generation
    }

    /// Tell the appliance what VM `vm` did with the card in `slot` ([`ConsumerReport`] with
    /// the assignment's generation). `Ok(false)`: not sent, the host knows no generation for
    /// the slot in this session (no `Present`, `Occupied` or `RemovalRequest` yet — an
    /// appliance that predates `Occupied`), or `vm` is not a name a slot message carries.
    pub fn report_consumer(
        &self,
        slot: u8,
        event: ConsumerEvent,
        vm: &str,
    ) -> Result<bool, LinkError> {
        let (Some(generation), Ok(vm)) = (self.slot_generation(slot), VmName::new(vm)) else {
            return Ok(false);
        };
        let r = ConsumerReport {
            slot,
            generation,
            event,
            vm,
        };
        let mut buf = [0u8; MAX_SLOT_TLP];
        let n = r.emit(ROOT_PORT, &mut buf).map_err(|_| LinkError::Closed)?;
        self.link.send_tlp(&buf[..n])?;
        Ok(true)
    }

    fn queue_slot_work(&self, m: SlotMessage) {
        let mut q = self.slot_work.lock_or_recover();
        if q.len() >= MAX_SLOT_WORK {
            self.stats.bad_slot_messages.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(m);
    }

    /// Whether slot messages wait for [`Host::take_slot_work`].
    pub fn has_slot_work(&self) -> bool {
        !self.slot_work.lock_or_recover().is_empty()
    }

    /// The next slot message that needs blocking work (`Present`: call
    /// [`Host::present_slot`]; `RemovalRequest`: withdraw the consumers, then
    /// [`Host::ack_removal`]).
    pub fn take_slot_work(&self) -> Option<SlotMessage> {
        self.slot_work.lock_or_recover().pop_front()
    }

    /// Take the functions of the card in `slot` (its device number on the root port's bus)
    /// out of the host's list.
    fn take_slot(&self, slot: u8) -> Vec<Arc<RemoteFunctionState>> {
        let mut fs = self.functions.write_or_recover();
        let (gone, keep) = std::mem::take(&mut *fs)
            .into_iter()
            .partition(|f| f.info().bdf.device() == slot);
        *fs = keep;
        gone
    }

    /// Surprise removal of the card in `slot` (§6.7.1.2 with §6.2.10 Downstream Port
    /// Containment semantics): every outstanding non-posted request to it completes with
    /// Unsupported Request at once, its functions fail every later access, and
    /// `FunctionRemoved` is raised. Other slots' requests are untouched. Never blocks.
    pub fn surprise_remove(&self, slot: u8) {
        let gone = self.take_slot(slot);
        for f in &gone {
            f.mark_removed();
        }
        {
            let now = Instant::now();
            let mut r = self.req.lock_or_recover();
            for (tag, mark) in self.inflight.iter().enumerate() {
                if mark.load(Ordering::Acquire) != slot {
                    continue;
                }
                // Quarantined, not freed: a completion still on its way must not match a
                // new request that reused the tag.
                if r.abandon(now, tag as u16).is_some() {
                    self.stats.failed_by_removal.fetch_add(1, Ordering::Relaxed);
                    self.finish(tag as u16, Err(RequestError::UnsupportedRequest));
                }
            }
        }
        for f in &gone {
            self.event(HostEvent::FunctionRemoved(f.info().bdf));
        }
        let any = !self.functions.read_or_recover().is_empty();
        self.set_slot(any);
    }

    /// Enumerate just the card presented in `slot` (BARs assigned above every other
    /// function's, which stay where they are) and raise `FunctionAdded` for each of its
    /// functions. Blocks on configuration requests: never call it on the pump thread.
    pub fn present_slot(self: &Arc<Self>, slot: u8) -> Vec<FunctionInfo> {
        if !self.is_link_up() || slot >= SLOTS {
            return Vec::new();
        }
        let existing: Vec<FunctionInfo> = self
            .functions
            .read_or_recover()
            .iter()
            .filter(|f| f.info().bdf.device() != slot)
            .map(|f| f.info().clone())
            .collect();
        let mut acc = TlpConfigAccess(self);
        let found = enumerate::enumerate_device(
            &mut acc,
            self.cfg.bus,
            slot,
            &self.cfg.enumeration,
            &existing,
        );
        let mut added = Vec::new();
        {
            let mut fs = self.functions.write_or_recover();
            for info in &found {
                if let Some(old) = fs.iter_mut().find(|f| f.info().bdf == info.bdf) {
                    if old.info() == info && !old.is_removed() {
                        continue;
                    }
                    old.mark_removed();
                    *old = Arc::new(RemoteFunctionState::new(info.clone()));
                } else {
                    fs.push(Arc::new(RemoteFunctionState::new(info.clone())));
                }
                added.push(info.bdf);
            }
        }
        let all = self.functions();
        self.update_windows(&all);
        for b in added {
            self.event(HostEvent::FunctionAdded(b));
        }
        self.set_slot(!all.is_empty());
        found
    }

    /// The functions of the card in `slot` (still in the host's list).
    pub fn slot_functions(&self, slot: u8) -> Vec<Bdf> {
        self.functions
            .read_or_recover()
            .iter()
            .map(|f| f.info().bdf)
            .filter(|b| b.device() == slot)
            .collect()
    }

    /// Withdraw the card in `slot` for an orderly removal: its functions leave the host's
    /// list (`FunctionRemoved`); returns their addresses so the caller can close their
    /// consumers before [`Host::ack_removal`].
    pub fn withdraw_slot(&self, slot: u8) -> Vec<Bdf> {
        let gone = self.take_slot(slot);
        let bdfs: Vec<Bdf> = gone.iter().map(|f| f.info().bdf).collect();
        for f in &gone {
            f.mark_removed();
        }
        for b in &bdfs {
            self.event(HostEvent::FunctionRemoved(*b));
        }
        bdfs
    }

    /// Tell the appliance the consumers of `slot`'s card let it go (`RemovalAck` with the
    /// generation of the request).
    pub fn ack_removal(&self, slot: u8, generation: u16) -> Result<(), LinkError> {
        let m = SlotMessage {
            event: SlotEvent::RemovalAck,
            slot,
            generation,
        };
        let mut buf = [0u8; 16];
        let n = m.emit(ROOT_PORT, &mut buf).map_err(|_| LinkError::Closed)?;
        self.link.send_tlp(&buf[..n])
    }

    /// Program the root port's bridge windows to cover what enumeration assigned.
    fn update_windows(&self, found: &[FunctionInfo]) {
        use crate::pci::spec::header as h;
        let w = self.cfg.enumeration.windows;
        let mut rp = self.root_port.lock_or_recover();
        let mem_lo = w.mem.0;
        let mem_hi = w.mem.0 + w.mem.1 - 1;
        rp.write_u16(h::MEMORY_BASE, ((mem_lo >> 16) as u16) & 0xfff0);
        rp.write_u16(h::MEMORY_LIMIT, ((mem_hi >> 16) as u16) & 0xfff0);
        let p_lo = w.pref.0;
        let p_hi = w.pref.0 + w.pref.1 - 1;
        rp.write_u16(h::PREF_MEMORY_BASE, ((p_lo >> 16) as u16 & 0xfff0) | 1);
        rp.write_u16(h::PREF_MEMORY_LIMIT, ((p_hi >> 16) as u16 & 0xfff0) | 1);
        rp.write_u32(h::PREF_BASE_UPPER32, (p_lo >> 32) as u32);
        rp.write_u32(h::PREF_LIMIT_UPPER32, (p_hi >> 32) as u32);
        let io_lo = w.io.0;
        let io_hi = w.io.0 + w.io.1 - 1;
        rp.write(
            h::IO_BASE,
            &[((io_lo >> 8) as u8) & 0xf0, ((io_hi >> 8) as u8) & 0xf0],
        );
        let any = !found.is_empty();
        rp.write_u16(h::COMMAND, if any { 0x7 } else { 0 });
    }

    /// The functions found by the last [`Host::rescan`].
    pub fn functions(&self) -> Vec<FunctionInfo> {
        self.functions
            .read_or_recover()
            .iter()
            .map(|f| f.info().clone())
            .collect()
    }

    /// Open a function for a user-space driver or a vfio-user server.
    pub fn open(self: &Arc<Self>, bdf: Bdf) -> Option<RemoteFunction> {
        let f = self
            .functions
            .read_or_recover()
            .iter()
            .find(|f| f.info().bdf == bdf)
            .cloned()?;
        Some(RemoteFunction::new(self.clone(), f))
    }

    pub(super) fn function(&self, bdf: Bdf) -> Option<Arc<RemoteFunctionState>> {
        self.functions
            .read_or_recover()
            .iter()
            .find(|f| f.info().bdf == bdf)
            .cloned()
    }

    /// Read the root port's own configuration space (it is local, no TLP).
    pub fn root_port_read(&self, offset: usize, buf: &mut [u8]) {
        self.root_port.lock_or_recover().read(offset, buf);
    }

    /// Write the root port's configuration space (e.g. Slot Control by the consumer's OS).
    pub fn root_port_write(&self, offset: usize, data: &[u8]) {
        let irq = {
            let mut rp = self.root_port.lock_or_recover();
            rp.write(offset, data);
            rp.pcie().is_some_and(|p| p.hotplug_interrupt_pending())
        };
        if irq {
            self.event(HostEvent::HotPlugInterrupt);
        }
    }

    /// The root port's whole configuration space.
    pub fn root_port_snapshot(&self) -> Vec<u8> {
        self.root_port.lock_or_recover().snapshot()
    }

    /// Send a non-posted request built by `build(buf, tag)` and wait for its completion data
    /// (`out.len()` bytes, 0 for writes). `mem_addr`: the address of a memory read, whose
    /// completions' Lower Address the requester checks.
    fn nonposted(
        &self,
        target: Bdf,
        mem_addr: Option<u64>,
        out: &mut [u8],
        build: impl FnOnce(&mut [u8], u16) -> Result<usize, tlpio::BuildError>,
    ) -> Result<(), RequestError> {
        if !self.is_link_up() {
            return Err(RequestError::LinkDown);
        }
        let start = Instant::now();
        let deadline = start + self.cfg.completion_timeout;
        let len = out.len() as u32;
        let expect = match mem_addr {
            Some(addr) => Expect::MemRead { addr, len },
            None => Expect::Other { len },
        };
        // The tag is its own token: it names the slot the caller waits on.
        let target_slot = match mem_addr {
            Some(a) => self.slot_of_address(a),
            None => Some(target.device()),
        }
        .unwrap_or(NO_SLOT);
        let tag = loop {
            let now = Instant::now();
            let mut r = self.req.lock_or_recover();
            let started = r.start_tagged(now, expect);
            match started {
                Ok(t) => {
                    // Under the requester lock, so a surprise removal (which fails requests
                    // under it) sees either no request or one that is marked and reset.
                    self.slots[t as usize].m.lock_or_recover().result = None;
                    self.inflight[t as usize].store(target_slot, Ordering::Release);
                    break t;
                }
                Err(StartError::BadRead { .. }) => return Err(RequestError::InvalidRequest),
                Err(StartError::TagsExhausted(_)) if now < deadline => {
                    drop(r);
                    std::thread::sleep(Duration::from_micros(50))
                }
                Err(StartError::TagsExhausted(_)) => return Err(RequestError::Timeout),
            }
        };
        let slot = &self.slots[tag as usize];
        let sent = TX.with(|tx| {
            let tx = &mut *tx.borrow_mut();
            let n = build(tx, tag).map_err(|_| RequestError::InvalidRequest)?;
            self.link
                .send_tlp(&tx[..n])
                .map_err(|_| RequestError::LinkDown)
        });
        if let Err(e) = sent {
            // Never sent: no completion can come, the tag is free at once.
            self.req.lock_or_recover().cancel(tag);
            return Err(e);
        }
        // Wait by running the link ourselves when we can (the completion then wakes us
        // straight from the socket); otherwise whoever runs it wakes us through the slot.
        self.link
            .drive(&|| slot.m.lock_or_recover().result.is_some(), deadline);
        let mut c = slot.m.lock_or_recover();
        loop {
            if let Some(r) = c.result.take() {
                if r.is_ok() {
                    out.copy_from_slice(&c.data[..out.len()]);
                }
                return r;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(c);
                // A completion may still come: the requester quarantines the tag.
                if self.req.lock_or_recover().abandon(now, tag).is_some() {
                    self.event(HostEvent::CompletionTimeout { target });
                    return Err(RequestError::Timeout);
                }
                // The completion won the race; its result is already in the slot.
                c = slot.m.lock_or_recover();
                continue;
            }
            c = slot.cv.wait_timeout_or_recover(c, deadline - now).0;
        }
    }

    /// CfgRd0 of the DW at `reg` of `bdf`.
    pub fn cfg_read(&self, bdf: Bdf, reg: u16) -> Result<u32, RequestError> {
        let mut b = [0u8; 4];
        self.nonposted(bdf, None, &mut b, |buf, tag| {
            tlpio::cfg(buf, bdf, reg, tag, 0xf, None)
        })?;
        Ok(u32::from_le_bytes(b))
    }

    /// CfgWr0 of the bytes of `value` selected by `first_be` at `reg` of `bdf`.
    pub fn cfg_write(
        &self,
        bdf: Bdf,
        reg: u16,
        first_be: u8,
        value: u32,
    ) -> Result<(), RequestError> {
        self.nonposted(bdf, None, &mut [], |buf, tag| {
            tlpio::cfg(buf, bdf, reg, tag, first_be, Some(value.to_le_bytes()))
        })
    }

    /// Memory read of `buf.len()` bytes at bus address `address` (split at 4 KiB).
    pub fn mem_read(&self, address: u64, buf: &mut [u8]) -> Result<(), RequestError> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = address + done as u64;
            let n = ((4096 - (a & 0xfff)) as usize).min(buf.len() - done);
            self.nonposted(ROOT_PORT, Some(a), &mut buf[done..done + n], |b, tag| {
                build::mem_read(b, ROOT_PORT, tag, a, n as u32)
            })?;
            done += n;
        }
        Ok(())
    }

    /// IORd of the bytes `first_be` selects in the DW at IO address `address` of `target`'s
    /// IO BAR (`target` names the card for a surprise removal to fail the wait). The DW is
    /// returned as read (bytes not enabled are whatever the card sent).
    pub fn io_read(&self, target: Bdf, address: u32, first_be: u8) -> Result<u32, RequestError> {
        let mut b = [0u8; 4];
        self.nonposted(target, None, &mut b, |buf, tag| {
            crate::tlp::build::io(buf, ROOT_PORT, tag, address, first_be, None)
        })?;
        Ok(u32::from_le_bytes(b))
    }

    /// IOWr of the bytes `first_be` selects of `value` at the DW at IO address `address`
    /// (non-posted: returns once the card completed it).
    pub fn io_write(
        &self,
        target: Bdf,
        address: u32,
        first_be: u8,
        value: u32,
    ) -> Result<(), RequestError> {
        self.nonposted(target, None, &mut [], |buf, tag| {
            crate::tlp::build::io(
                buf,
                ROOT_PORT,
                tag,
                address,
                first_be,
                Some(value.to_le_bytes()),
            )
        })
    }

    /// Posted memory write of `data` at `address` (split at Max Payload Size and 4 KiB).
    pub fn mem_write(&self, address: u64, data: &[u8]) -> Result<(), RequestError> {
        if !self.is_link_up() {
            return Err(RequestError::LinkDown);
        }
        let mps = self.cfg.enumeration.max_payload.clamp(128, 4096) as u64;
        let mut done = 0usize;
        while done < data.len() {
            let a = address + done as u64;
            let n = ((mps - (a & (mps - 1))) as usize).min(data.len() - done);
            TX.with(|tx| {
                let buf = &mut *tx.borrow_mut();
                let len = build::mem_write(buf, ROOT_PORT, a, &data[done..done + n])
                    .map_err(|_| RequestError::InvalidRequest)?;
                self.link
                    .send_tlp(&buf[..len])
                    .map_err(|_| RequestError::LinkDown)
            })?;
            done += n;
        }
        Ok(())
    }
}

/// [`ConfigAccess`] over TLPs: failed reads are all-ones, as on real hardware.
struct TlpConfigAccess<'a>(&'a Host);

impl ConfigAccess for TlpConfigAccess<'_> {
    fn cfg_read(&mut self, bdf: Bdf, reg: u16) -> u32 {
        self.0.cfg_read(bdf, reg).unwrap_or(0xffff_ffff)
    }
    fn cfg_write(&mut self, bdf: Bdf, reg: u16, value: u32) {
        if let Err(e) = self.0.cfg_write(bdf, reg, 0xf, value) {
            tracing::warn!(%bdf, reg, error = %e, "configuration write failed");
        }
    }
}

impl RootComplex for Host {
    fn cfg_read(&self, bdf: Bdf, reg: u16) -> Result<u32, RequestError> {
        Host::cfg_read(self, bdf, reg)
    }

    fn cfg_write(&self, bdf: Bdf, reg: u16, first_be: u8, value: u32) -> Result<(), RequestError> {
        Host::cfg_write(self, bdf, reg, first_be, value)
    }

    fn mem_read(&self, address: u64, buf: &mut [u8]) -> Result<(), RequestError> {
        Host::mem_read(self, address, buf)
    }

    fn mem_write(&self, address: u64, data: &[u8]) -> Result<(), RequestError> {
        Host::mem_write(self, address, data)
    }

    fn io_read(&self, target: Bdf, address: u32, first_be: u8) -> Result<u32, RequestError> {
        Host::io_read(self, target, address, first_be)
    }

    fn io_write(
        &self,
        target: Bdf,
        address: u32,
        first_be: u8,
        value: u32,
    ) -> Result<(), RequestError> {
        Host::io_write(self, target, address, first_be, value)
    }

    fn msi_base(&self) -> u64 {
        self.cfg.msi_window.0
    }
}
