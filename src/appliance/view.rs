//! Per-host views of the pool: which of the appliance's functions each host sees, at which
//! device number ("slot") of its tunnel bus, and the orderly-removal state machine of each slot
//! (docs/protocol.md "Slot messages"; PCIe r5.0 §6.7 hot-plug: presence detect, attention
//! button, surprise removal).
//!
//! Sans-I/O with explicit time, like the endpoint proxy: [`Views::assign`] and
//! [`Views::begin_removal`] return the [`SlotMessage`] to send on the host's session;
//! [`Views::on_removal_ack`] and [`Views::poll`] (with the time) report the slots whose function
//! is now detached — the caller then answers that function's outstanding requests with UR,
//! resets it and marks it unassigned in the inventory.
//!
//! Rules (the pool contract):
//! * a function keeps its slot while it stays assigned; a new assignment takes the host's lowest
//!   free slot (or a requested one), so other assignments never renumber it;
//! * a whole device (a multi-function card) keeps its function numbers within the slot; a single
//!   function (an SR-IOV VF) is presented as function 0 of its own slot;
//! * every assignment of a slot bumps that slot's generation; an acknowledgement carrying another
//!   generation is stale, ignored and counted.
//!
//! Routing questions the session layer asks on every TLP — [`Views::to_appliance`] (host-visible
//! routing ID → appliance routing ID, `None` = "no device") and [`Views::to_host`] (the reverse,
//! for the function's completions, DMA requests and interrupts) — are lookups in a 32-entry
//! array and do not allocate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::inventory::FunctionId;
use crate::tlp::slot::{SlotEvent, SlotMessage, SLOTS};
use crate::tlp::Bdf;
use crate::transport::HostId;

/// Grace period between a removal request and the detach when the host does not acknowledge
/// (`[options] removal_grace_ms`): [`crate::tlp::slot::DEFAULT_REMOVAL_GRACE`].
pub const DEFAULT_GRACE: Duration = crate::tlp::slot::DEFAULT_REMOVAL_GRACE;

/// Why a view refused a change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ViewError {
    /// The host already uses all 32 device numbers of its tunnel bus.
    #[error("host {host:?} has no free slot (all {SLOTS} device numbers are in use)")]
    NoFreeSlot {
        /// The host.
        host: HostId,
    },
    /// A requested slot number is out of range or already taken.
    #[error("slot {slot} of host {host:?} is taken or out of range (0..{SLOTS})")]
    SlotTaken {
        /// The host.
        host: HostId,
        /// The slot asked for.
        slot: u8,
    },
    /// The function is already in some host's view.
    #[error("function {0} is already in a host's view")]
    AlreadyPresent(FunctionId),
    /// The function is in no host's view.
    #[error("function {0} is in no host's view")]
    NotPresent(FunctionId),
    /// The function's removal has already started.
    #[error("function {0} is already being removed")]
    AlreadyRemoving(FunctionId),
}

/// What a slot shows of the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every function of appliance device number `.0`, each at its own function number.
    Device(u8),
    /// One function (an SR-IOV VF), presented as function 0 of the slot.
    Function(Bdf),
}

impl Target {
    fn contains(self, bdf: Bdf) -> Option<u8> {
        match self {
            Target::Device(d) if bdf.device() == d => Some(bdf.function()),
            Target::Function(f) if f.device() == bdf.device() && f.function() == bdf.function() => {
                Some(0)
            }
            _ => None,
        }
    }
}

/// Where a slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// The function is the host's.
    Present,
    /// A removal request was sent; the function is detached at `deadline` at the latest.
    Removing {
        /// When the grace period ends.
        deadline: Instant,
    },
}

/// One occupied slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotEntry {
    /// The inventory entry it shows.
    pub function: FunctionId,
    /// What of the appliance it shows.
    pub target: Target,
    /// Generation of this assignment.
    pub generation: u16,
    /// Present or being removed.
    pub state: SlotState,
}

/// A function that left a host's view: the caller fails its outstanding requests, sends
/// `removed` on the host's session (if it is up), resets the function and unassigns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    /// The former owner.
    pub host: HostId,
    /// The function.
    pub function: FunctionId,
    /// What of the appliance it showed.
    pub target: Target,
    /// The `Removed` message for the host.
    pub removed: SlotMessage,
}

/// One host's tunnel bus.
#[derive(Debug, Default, Clone)]
pub struct HostView {
    slots: [Option<SlotEntry>; SLOTS as usize],
    generations: [u16; SLOTS as usize],
}

impl HostView {
    /// The occupied slots, lowest first.
    pub fn slots(&self) -> impl Iterator<Item = (u8, &SlotEntry)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i as u8, s)))
    }

    /// The entry at `slot`.
    pub fn slot(&self, slot: u8) -> Option<&SlotEntry> {
        self.slots.get(usize::from(slot))?.as_ref()
    }

    fn free_slot(&self) -> Option<u8> {
        self.slots.iter().position(Option::is_none).map(|i| i as u8)
    }
}

/// Counters of the views.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ViewStats {
    /// Removal acknowledgements for a slot that is not being removed or with another generation.
    pub stale_acks: u64,
    /// Functions detached after their host acknowledged.
    pub acked: u64,
    /// Functions detached because the grace period ran out.
    pub grace_expired: u64,
}

/// Every host's view.
#[derive(Debug, Default)]
pub struct Views {
    hosts: BTreeMap<HostId, HostView>,
    grace: Duration,
    stats: ViewStats,
}

impl Views {
    /// No host sees anything yet; removals wait `grace` for an acknowledgement.
    pub fn new(grace: Duration) -> Views {
        Views {
            hosts: BTreeMap::new(),
            grace,
            stats: ViewStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ViewStats {
        self.stats
    }

    /// `host`'s view (empty if it was never given anything).
    pub fn view(&self, host: &HostId) -> Option<&HostView> {
        self.hosts.get(host)
    }

    /// The host and slot showing `function`.
    pub fn find(&self, function: &FunctionId) -> Option<(HostId, u8)> {
        self.hosts.iter().find_map(|(h, v)| {
            v.slots()
                .find(|(_, e)| &e.function == function)
                .map(|(s, _)| (*h, s))
        })
    }

    /// Put `function` (showing `target`) into `host`'s view at `slot` or its lowest free slot;
    /// returns the slot and the `Present` message to send if the host's session is up.
    pub fn assign(
        &mut self,
        host: HostId,
        function: FunctionId,
        target: Target,
        slot: Option<u8>,
    ) -> Result<(u8, SlotMessage), ViewError> {
        if self.find(&function).is_some() {
            return Err(ViewError::AlreadyPresent(function));
        }
        let v = self.hosts.entry(host).or_default();
        let slot = match slot {
            Some(s) if s < SLOTS && v.slots[usize::from(s)].is_none() => s,
            Some(s) => return Err(ViewError::SlotTaken { host, slot: s }),
            None => v.free_slot().ok_or(ViewError::NoFreeSlot { host })?,
        };
        let i = usize::from(slot);
        v.generations[i] = v.generations[i].wrapping_add(1);
        let generation = v.generations[i];
        v.slots[i] = Some(SlotEntry {
            function,
            target,
            generation,
            state: SlotState::Present,
        });
        Ok((
            slot,
            SlotMessage {
                event: SlotEvent::Present,
                slot,
                generation,
            },
        ))
    }

    /// Start the orderly removal of `function`: returns the `RemovalRequest` for its host.
    /// The function is detached by [`Views::on_removal_ack`] or, at `now + grace`, by
    /// [`Views::poll`].
    pub fn begin_removal(
        &mut self,
        function: &FunctionId,
        now: Instant,
    ) -> Result<(HostId, SlotMessage), ViewError> {
        let (host, slot) = self
            .find(function)
            .ok_or_else(|| ViewError::NotPresent(function.clone()))?;
        let grace = self.grace;
        let e = self.entry_mut(host, slot);
        if let SlotState::Removing { .. } = e.state {
            return Err(ViewError::AlreadyRemoving(function.clone()));
        }
        e.state = SlotState::Removing {
            deadline: now + grace,
        };
        Ok((
            host,
            SlotMessage {
                event: SlotEvent::RemovalRequest,
                slot,
                generation: e.generation,
            },
        ))
    }

    /// The host's answer to a removal request. A matching one detaches the function; a stale
    /// one (another generation, or no removal under way) is counted and changes nothing.
    pub fn on_removal_ack(&mut self, host: HostId, ack: &SlotMessage) -> Option<Detached> {
        let current = self
            .hosts
            .get(&host)
            .and_then(|v| v.slot(ack.slot))
            .filter(|e| {
                ack.event == SlotEvent::RemovalAck
                    && e.generation == ack.generation
                    && matches!(e.state, SlotState::Removing { .. })
            })
            .is_some();
        if !current {
            self.stats.stale_acks += 1;
            return None;
        }
        self.stats.acked += 1;
        self.detach_slot(host, ack.slot)
    }

    /// Detach `function` at once (it failed, it was pulled from the pool, or its host asked for
    /// a surprise removal).
    pub fn detach(&mut self, function: &FunctionId) -> Result<Detached, ViewError> {
        let (host, slot) = self
            .find(function)
            .ok_or_else(|| ViewError::NotPresent(function.clone()))?;
        self.detach_slot(host, slot)
            .ok_or_else(|| ViewError::NotPresent(function.clone()))
    }

    /// Let time pass: every removal whose grace period ended by `now` is detached and handed to
    /// `detached`.
    pub fn poll(&mut self, now: Instant, detached: &mut dyn FnMut(Detached)) {
        let mut due: Vec<(HostId, u8)> = Vec::new();
        for (h, v) in &self.hosts {
            for (s, e) in v.slots() {
                if matches!(e.state, SlotState::Removing { deadline } if deadline <= now) {
                    due.push((*h, s));
                }
            }
        }
        for (h, s) in due {
            self.stats.grace_expired += 1;
            if let Some(d) = self.detach_slot(h, s) {
                detached(d);
            }
        }
    }

    /// The earliest grace-period deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.hosts
            .values()
            .flat_map(|v| v.slots())
            .filter_map(|(_, e)| match e.state {
                SlotState::Removing { deadline } => Some(deadline),
                SlotState::Present => None,
            })
            .min()
    }

    /// The appliance routing ID a host's request to its own `bdf` (bus ignored) reaches, or
    /// `None`: no device there for this host (the caller answers UR / all-ones).
    pub fn to_appliance(&self, host: &HostId, bdf: Bdf) -> Option<Bdf> {
        let e = self.hosts.get(host)?.slot(bdf.device())?;
        match e.target {
            Target::Device(d) => Some(Bdf::new(0, d, bdf.function())),
            Target::Function(f) if bdf.function() == 0 => Some(f),
            Target::Function(_) => None,
        }
    }

    /// Which host owns appliance function `bdf`, and the routing ID it has in that host's view
    /// (bus 0 of the tunnel bus; the host's side renumbers buses).
    pub fn to_host(&self, bdf: Bdf) -> Option<(HostId, Bdf)> {
        self.hosts.iter().find_map(|(h, v)| {
            v.slots().find_map(|(s, e)| {
                e.target
                    .contains(bdf)
                    .map(|func| (*h, Bdf::new(0, s, func)))
            })
        })
    }

    fn entry_mut(&mut self, host: HostId, slot: u8) -> &mut SlotEntry {
        self.hosts
            .get_mut(&host)
            .and_then(|v| v.slots[usize::from(slot)].as_mut())
            .expect("found just before")
    }

    fn detach_slot(&mut self, host: HostId, slot: u8) -> Option<Detached> {
        let e = self.hosts.get_mut(&host)?.slots[usize::from(slot)].take()?;
        Some(Detached {
            host,
            removed: SlotMessage {
                event: SlotEvent::Removed,
                slot,
                generation: e.generation,
            },
            function: e.function,
            target: e.target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(n: &str) -> HostId {
        HostId::new(n).unwrap()
    }
    fn f(n: &str) -> FunctionId {
        FunctionId::named(n).unwrap()
    }

    #[test]
    fn lowest_free_slot_and_stable_numbers() {
        let mut v = Views::new(DEFAULT_GRACE);
        let (a, ma) = v
            .assign(h("a"), f("nvme0"), Target::Device(0), None)
            .unwrap();
        let (b, _) = v
            .assign(h("a"), f("dma0"), Target::Device(1), None)
            .unwrap();
        assert_eq!((a, b), (0, 1));
        assert_eq!(ma.event, SlotEvent::Present);
        // Another host's assignments start at slot 0 of its own bus.
        let (c, _) = v
            .assign(h("b"), f("dma1"), Target::Device(2), None)
            .unwrap();
        assert_eq!(c, 0);
        // Removing slot 0 of host a does not renumber slot 1.
        v.detach(&f("nvme0")).unwrap();
        assert_eq!(
            v.to_appliance(&h("a"), Bdf::new(3, 1, 0)),
            Some(Bdf::new(0, 1, 0))
        );
        assert_eq!(v.to_appliance(&h("a"), Bdf::new(0, 0, 0)), None);
        // The freed slot is reused, with a new generation.
        let (d, md) = v
            .assign(h("a"), f("dma2"), Target::Device(3), None)
            .unwrap();
        assert_eq!((d, md.generation), (0, ma.generation.wrapping_add(1)));
    }

    #[test]
    fn refusals() {
        let mut v = Views::new(DEFAULT_GRACE);
        v.assign(h("a"), f("x"), Target::Device(0), Some(4))
            .unwrap();
        assert_eq!(
            v.assign(h("b"), f("x"), Target::Device(0), None),
            Err(ViewError::AlreadyPresent(f("x")))
        );
        assert_eq!(
            v.assign(h("a"), f("y"), Target::Device(1), Some(4)),
            Err(ViewError::SlotTaken {
                host: h("a"),
                slot: 4
            })
        );
        assert_eq!(
            v.assign(h("a"), f("y"), Target::Device(1), Some(32)),
            Err(ViewError::SlotTaken {
                host: h("a"),
                slot: 32
            })
        );
        for i in 0..31u8 {
            v.assign(h("a"), f(&format!("z{i}")), Target::Device(2), None)
                .unwrap();
        }
        assert_eq!(
            v.assign(h("a"), f("full"), Target::Device(3), None),
            Err(ViewError::NoFreeSlot { host: h("a") })
        );
        assert_eq!(v.detach(&f("nope")), Err(ViewError::NotPresent(f("nope"))));
    }

    #[test]
    fn vf_is_function_zero_of_its_slot() {
        let mut v = Views::new(DEFAULT_GRACE);
        let vf = Bdf::new(0, 2, 3);
        v.assign(h("a"), f("nvme0").vf(1), Target::Function(vf), None)
            .unwrap();
        assert_eq!(v.to_appliance(&h("a"), Bdf::new(0, 0, 0)), Some(vf));
        assert_eq!(v.to_appliance(&h("a"), Bdf::new(0, 0, 1)), None);
        assert_eq!(v.to_host(vf), Some((h("a"), Bdf::new(0, 0, 0))));
        assert_eq!(
            v.to_host(Bdf::new(0, 2, 0)),
            None,
            "the PF is not the host's"
        );
        assert_eq!(v.to_appliance(&h("b"), Bdf::new(0, 0, 0)), None);
    }

    #[test]
    fn orderly_removal_acked_or_timed_out() {
        let t0 = Instant::now();
        let mut v = Views::new(Duration::from_secs(5));
        v.assign(h("a"), f("x"), Target::Device(0), None).unwrap();
        v.assign(h("a"), f("y"), Target::Device(1), None).unwrap();
        let (host, req) = v.begin_removal(&f("x"), t0).unwrap();
        assert_eq!(
            (host, req.event, req.slot),
            (h("a"), SlotEvent::RemovalRequest, 0)
        );
        assert_eq!(
            v.begin_removal(&f("x"), t0),
            Err(ViewError::AlreadyRemoving(f("x")))
        );
        // While being removed the host still reaches it (it is withdrawing its consumers).
        assert!(v.to_appliance(&h("a"), Bdf::new(0, 0, 0)).is_some());
        // A stale ack (wrong generation, wrong host, or for a slot not being removed) is counted.
        let mut stale = req;
        stale.event = SlotEvent::RemovalAck;
        stale.generation = stale.generation.wrapping_add(1);
        assert_eq!(v.on_removal_ack(h("a"), &stale), None);
        let mut ack = req;
        ack.event = SlotEvent::RemovalAck;
        assert_eq!(v.on_removal_ack(h("b"), &ack), None);
        let mut other = ack;
        other.slot = 1;
        assert_eq!(v.on_removal_ack(h("a"), &other), None);
        assert_eq!(v.stats().stale_acks, 3);
        let d = v.on_removal_ack(h("a"), &ack).unwrap();
        assert_eq!(d.function, f("x"));
        assert_eq!(d.removed.event, SlotEvent::Removed);
        assert_eq!(v.to_appliance(&h("a"), Bdf::new(0, 0, 0)), None);
        // A second ack of the same removal is stale.
        assert_eq!(v.on_removal_ack(h("a"), &ack), None);

        // No ack: the grace period detaches it, not a moment before.
        v.begin_removal(&f("y"), t0).unwrap();
        assert_eq!(v.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        let mut got = Vec::new();
        v.poll(t0 + Duration::from_millis(4999), &mut |d| got.push(d));
        assert!(got.is_empty());
        v.poll(t0 + Duration::from_secs(5), &mut |d| got.push(d));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].function, f("y"));
        assert_eq!(v.poll_timeout(), None);
        assert_eq!(v.stats().grace_expired, 1);
        assert_eq!(v.stats().acked, 1);
    }

    proptest! {
        /// Whatever the sequence of assignments and removals, an appliance function is in at
        /// most one host's view, the two translations are inverse, and a slot never changes
        /// what it shows while it stays occupied.
        #[test]
        fn views_stay_disjoint_and_inverse(ops in proptest::collection::vec((0u8..4, 0u8..3, 0u8..12), 1..200)) {
            let t0 = Instant::now();
            let hosts = [h("a"), h("b"), h("c")];
            let mut v = Views::new(Duration::from_secs(1));
            let mut shown: BTreeMap<(HostId, u8), Target> = BTreeMap::new();
            for (i, (op, host, func)) in ops.into_iter().enumerate() {
                let now = t0 + Duration::from_millis(100 * i as u64);
                let id = f(&format!("f{func}"));
                let target = if func < 8 { Target::Device(func) } else { Target::Function(Bdf::new(0, 9, func - 8)) };
                match op {
                    0 => { let _ = v.assign(hosts[usize::from(host)], id, target, None); }
                    1 => { let _ = v.begin_removal(&id, now); }
                    2 => { let _ = v.detach(&id); }
                    _ => v.poll(now, &mut |_| {}),
                }
                let mut seen = std::collections::HashSet::new();
                for hst in &hosts {
                    let Some(view) = v.view(hst) else { continue };
                    for (s, e) in view.slots() {
                        prop_assert!(seen.insert(e.function.clone()), "{} in two views", e.function);
                        if let Some(old) = shown.get(&(*hst, s)) {
                            prop_assert_eq!(*old, e.target);
                        }
                        let app = v.to_appliance(hst, Bdf::new(7, s, 0)).unwrap();
                        prop_assert_eq!(v.to_host(app), Some((*hst, Bdf::new(0, s, 0))));
                    }
                }
                shown.retain(|(hst, s), _| v.view(hst).and_then(|w| w.slot(*s)).is_some());
                for hst in &hosts {
                    if let Some(view) = v.view(hst) {
                        for (s, e) in view.slots() { shown.insert((*hst, s), e.target); }
                    }
                }
            }
        }
    }
}
