//! Seeded sans-I/O simulation of the pool's routing core (`appliance::Router` over a real
//! endpoint `Proxy` with DMA engine cards), issue 11 "How it must be shown to work": N hosts
//! connect, drop, restart and replace their sessions, the operator assigns and unassigns
//! functions at random (hosts acknowledge removals, or ignore them until the grace period
//! ends), and every host sends a random mix of legitimate and forged TLPs — memory reads and
//! writes at the addresses every host programs alike, configuration requests to any device
//! number, completions with made-up requester IDs and tags — while the cards "send" forged
//! TLPs under any Routing ID.
//!
//! Invariants, checked on every TLP the router puts on the wire, over 10^5 steps per seed:
//! * a host's memory read returns only bytes that host wrote (or zeros of a reset card) —
//!   nothing another host wrote ever reaches it, and nothing it writes reaches another's card;
//! * a successful completion or a function's TLP reaches only the host that owns the function
//!   in the reference model (built from the control API's outcomes alone), under the slot the
//!   host's view shows it at;
//! * every unassign completes (acknowledged, grace period, or owner gone), and a detached
//!   function has no DMA request outstanding.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pcietun::appliance::inventory::{FunctionEntry, FunctionId, Inventory};
use pcietun::appliance::{ControlError, Router};
use pcietun::endpoint::dma_engine::DmaEngine;
use pcietun::endpoint::wire::{self, Bdf, CplStatus, ParsedHeader, ParsedKind as Kind};
use pcietun::endpoint::{Proxy, ProxyConfig};
use pcietun::tlp::slot::{SlotEvent, SlotMessage};
use pcietun::tlp::Tlp;
use pcietun::transport::HostId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const HOSTS: usize = 4;
const CARDS: u8 = 6;
const BUF: u64 = 4096;
const GRACE: Duration = Duration::from_millis(500);
/// The host's root port: the requester of its requests.
const ROOT: Bdf = Bdf::new(0, 0, 0);
const BUS: u8 = 1;

fn regs(slot: u8) -> u64 {
    0x8000_0000 + u64::from(slot) * 0x10_0000
}
fn buf(slot: u8) -> u64 {
    0xc000_0000 + u64::from(slot) * 0x10_0000
}

fn cfg_tlp(target: Bdf, reg: u16, tag: u8, value: Option<u32>) -> Vec<u8> {
    let mut t = vec![0u8; 12];
    t[0] = if value.is_some() { 0x44 } else { 0x04 };
    t[3] = 1;
    t[4..6].copy_from_slice(&ROOT.0.to_be_bytes());
    t[6] = tag;
    t[7] = 0x0f;
    t[8..10].copy_from_slice(&target.0.to_be_bytes());
    t[10] = (reg >> 8) as u8;
    t[11] = reg as u8 & 0xfc;
    if let Some(v) = value {
        t.extend_from_slice(&v.to_le_bytes());
    }
    t
}

struct SimHost {
    id: HostId,
    /// Its byte: everything it writes to a card.
    mark: u8,
    session: Option<usize>,
    epoch: u32,
    /// Slots it believes it has (from enumeration and Present/Removed).
    slots: [bool; 32],
    /// Slots the appliance said at session start it has (`Occupied`).
    occupied: [bool; 32],
    /// Outstanding reads: tag → expected length.
    reads: HashMap<u16, (usize, u8, u64)>,
    next_tag: u16,
}

type Outcomes = Arc<Mutex<Vec<(usize, Result<(), ControlError>)>>>;

struct Sim {
    rng: StdRng,
    ep: Proxy,
    router: Router<usize>,
    hosts: Vec<SimHost>,
    ids: Vec<FunctionId>,
    /// Reference model: the owner of each card, from the control API's outcomes only.
    owner: Vec<Option<usize>>,
    /// Unassigns asked for and not yet reported.
    unassigning: Vec<bool>,
    outcomes: Outcomes,
    now: Instant,
    next_key: usize,
    checked: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let (mut ep, outbound) = Proxy::new(ProxyConfig::default());
        let hosts: Vec<SimHost> = (0..HOSTS)
            .map(|i| SimHost {
                id: HostId::new(&format!("h{i}")).unwrap(),
                mark: 0x10 + i as u8,
                session: None,
                epoch: 0,
                slots: [false; 32],
                occupied: [false; 32],
                reads: HashMap::new(),
                next_tag: 0,
            })
            .collect();
        let mut inv = Inventory::new(hosts.iter().map(|h| h.id));
        let mut ids = Vec::new();
        for d in 0..CARDS {
            let bdf = Bdf::new(0, d, 0);
            let mut dev = DmaEngine::new(BUF as usize);
            let e = FunctionEntry::describe(bdf, None, &mut dev).unwrap();
            ids.push(e.id.clone());
            ep.add_function(bdf, Box::new(dev)).unwrap();
            inv.add(e).unwrap();
        }
        Sim {
            rng: StdRng::seed_from_u64(seed),
            ep,
            router: Router::new(inv, outbound, GRACE),
            hosts,
            ids,
            owner: vec![None; usize::from(CARDS)],
            unassigning: vec![false; usize::from(CARDS)],
            outcomes: Arc::new(Mutex::new(Vec::new())),
            now: Instant::now(),
            next_key: 1,
            checked: 0,
        }
    }

    fn host_of_key(&self, key: usize) -> Option<usize> {
        self.hosts.iter().position(|h| h.session == Some(key))
    }

    /// Send a TLP from host `h` and process everything that comes back.
    fn send(&mut self, h: usize, tlp: &[u8]) {
        let Some(key) = self.hosts[h].session else {
            return;
        };
        self.router.on_tlp(&mut self.ep, key, tlp);
        self.deliver();
    }

    /// The reference model's card at host `h`'s `slot`, per the router's view of h.
    fn card_at(&self, h: usize, slot: u8) -> Option<usize> {
        let v = self.router.views().view(&self.hosts[h].id)?;
        let e = v.slot(slot)?;
        self.ids.iter().position(|id| *id == e.function)
    }

    fn deliver(&mut self) {
        loop {
            self.collect_outcomes();
            let Some((key, t)) = self.router.transmit_queue().pop_front() else {
                return;
            };
            let h = self
                .host_of_key(key)
                .unwrap_or_else(|| panic!("TLP for session {key}, which is not up"));
            self.checked += 1;
            let p = Tlp::parse(&t).expect("the router sends well-formed TLPs");
            if let Some(m) = SlotMessage::from_tlp(&p) {
                let m = m.expect("a valid slot message");
                self.on_slot(h, m);
                continue;
            }
            let ph = ParsedHeader::parse(&t).unwrap();
            let from = Bdf(u16::from_be_bytes([t[4], t[5]]));
            match ph.kind {
                Kind::Completion { status, .. } => {
                    if status == CplStatus::Sc && ph.requester == ROOT {
                        // A successful answer comes from a function h owns, at its slot.
                        let card = self.card_at(h, from.device());
                        assert!(
                            card.is_some_and(|c| self.owner[c] == Some(h)),
                            "host {h} got a completion from slot {} it does not own",
                            from.device()
                        );
                    }
                    if let Some((len, slot, addr)) = self.hosts[h].reads.remove(&ph.tag) {
                        let data = &t[ph.payload.clone()];
                        if status == CplStatus::Sc {
                            assert_eq!(data.len(), len);
                            let mark = self.hosts[h].mark;
                            assert!(
                                data.iter().all(|&b| b == 0 || b == mark),
                                "host {h} read bytes another host wrote at slot {slot} \
                                 {addr:#x} (card {:?}, from {from}): {data:x?}",
                                self.card_at(h, slot)
                            );
                        }
                    }
                }
                Kind::MemWrite { addr } => {
                    // A card's TLP: the address names the appliance device.
                    let card = (addr >> 12) as usize & 0xff;
                    assert_eq!(
                        self.owner.get(card).copied().flatten(),
                        Some(h),
                        "card {card}'s TLP reached host {h}"
                    );
                    assert_eq!(
                        self.card_at(h, from.device()),
                        Some(card),
                        "under the slot h's view shows it at"
                    );
                    assert_eq!(from.bus(), 0, "bus kept");
                }
                other => panic!("unexpected TLP to host {h}: {other:?}"),
            }
        }
    }

    fn collect_outcomes(&mut self) {
        let done: Vec<_> = std::mem::take(&mut *self.outcomes.lock().unwrap());
        for (card, r) in done {
            r.unwrap_or_else(|e| panic!("unassign of card {card} failed: {e}"));
            assert!(self.unassigning[card]);
            self.unassigning[card] = false;
            self.owner[card] = None;
            // Detached: reset, nothing of its DMA outstanding.
            let s = self.ep.requester_stats(Bdf::new(0, card as u8, 0)).unwrap();
            assert_eq!(
                s.started,
                s.completed + s.timeouts + s.link_down + s.reset + s.error_completions,
                "card {card} detached with requests outstanding"
            );
        }
    }

    fn on_slot(&mut self, h: usize, m: SlotMessage) {
        match m.event {
            SlotEvent::Present => {
                self.hosts[h].slots[usize::from(m.slot)] = true;
                self.program(h, m.slot);
            }
            SlotEvent::RemovalRequest => {
                if self.rng.gen_bool(0.7) {
                    let ack = SlotMessage {
                        event: SlotEvent::RemovalAck,
                        ..m
                    };
                    let mut b = [0u8; 16];
                    let n = ack.emit(ROOT, &mut b).unwrap();
                    self.hosts[h].slots[usize::from(m.slot)] = false;
                    self.send(h, &b[..n]);
                }
            }
            SlotEvent::Removed => self.hosts[h].slots[usize::from(m.slot)] = false,
            SlotEvent::Occupied => self.hosts[h].occupied[usize::from(m.slot)] = true,
            // No assignment of the simulation names a VM.
            SlotEvent::VmTarget => panic!("the appliance named a VM nobody asked for"),
            SlotEvent::RemovalAck | SlotEvent::Consumer => {
                panic!("the appliance sent a host's message")
            }
        }
    }

    /// What an OS does with a new card: BARs at this host's addresses for the slot, then
    /// memory space and bus mastering on.
    fn program(&mut self, h: usize, slot: u8) {
        let t = Bdf::new(BUS, slot, 0);
        for (reg, v) in [
            (0x10, regs(slot) as u32 | 0x4),
            (0x14, 0),
            (0x18, buf(slot) as u32 | 0xc),
            (0x1c, 0),
            (0x04, 0x6),
        ] {
            let tlp = cfg_tlp(t, reg, 0x80, Some(v));
            self.send(h, &tlp);
        }
    }

    fn enumerate(&mut self, h: usize) {
        self.hosts[h].slots = [false; 32];
        for slot in 0..32u8 {
            if self.card_at(h, slot).is_some() {
                self.hosts[h].slots[usize::from(slot)] = true;
                self.program(h, slot);
            }
        }
    }

    fn tag(&mut self, h: usize) -> u16 {
        let t = self.hosts[h].next_tag;
        self.hosts[h].next_tag = (t + 1) % 256;
        t
    }

    fn step(&mut self) {
        let h = self.rng.gen_range(0..HOSTS);
        // Mostly the slots it has, sometimes any.
        let slot = if self.rng.gen_bool(0.8) {
            let mine: Vec<u8> = (0..32u8)
                .filter(|s| self.hosts[h].slots[usize::from(*s)])
                .collect();
            if mine.is_empty() {
                self.rng.gen_range(0..8)
            } else {
                mine[self.rng.gen_range(0..mine.len())]
            }
        } else {
            self.rng.gen_range(0..8)
        };
        match self.rng.gen_range(0..100) {
            0..=24 => {
                let off = self.rng.gen_range(0..BUF / 64) * 64;
                let data = vec![self.hosts[h].mark; 64];
                let mut t = Vec::new();
                wire::emit_mem_write(&mut t, ROOT, buf(slot) + off, &data).unwrap();
                self.send(h, &t);
            }
            25..=49 => {
                let off = self.rng.gen_range(0..BUF / 64) * 64;
                let tag = self.tag(h);
                self.hosts[h].reads.insert(tag, (64, slot, buf(slot) + off));
                let mut t = Vec::new();
                wire::emit_mem_read(&mut t, ROOT, tag, buf(slot) + off, 64).unwrap();
                self.send(h, &t);
                self.hosts[h].reads.remove(&tag);
            }
            50..=57 => {
                let target = Bdf::new(
                    self.rng.gen(),
                    self.rng.gen_range(0..32),
                    self.rng.gen_range(0..8),
                );
                let reg = self.rng.gen_range(0..64u16) * 4;
                let tlp = cfg_tlp(target, reg, 0x81, None);
                self.send(h, &tlp);
            }
            58..=65 => {
                // A forged completion under any requester ID and tag.
                let req = Bdf(self.rng.gen());
                let mut t = Vec::new();
                let data = vec![self.hosts[h].mark; 64];
                wire::emit_completion(
                    &mut t,
                    ROOT,
                    req,
                    self.rng.gen_range(0..256),
                    CplStatus::Sc,
                    64,
                    0,
                    0,
                    &data,
                )
                .unwrap();
                self.send(h, &t);
            }
            66..=73 => {
                // A card sends a TLP (as its DMA and interrupts do) under any Routing ID — any
                // function of a card's device number is that card's (its other functions,
                // its VFs); the address says which device it is, for the check at delivery.
                let devfn: u8 = if self.rng.gen_bool(0.8) {
                    self.rng.gen_range(0..CARDS) << 3
                } else {
                    self.rng.gen()
                };
                let mut t = Vec::new();
                wire::emit_mem_write(
                    &mut t,
                    Bdf(u16::from(devfn)),
                    u64::from(devfn >> 3) << 12,
                    &[1; 4],
                )
                .unwrap();
                self.router.route_outbound(t);
                self.deliver();
            }
            74..=81 => {
                let card = self.rng.gen_range(0..usize::from(CARDS));
                let host = self.rng.gen_range(0..HOSTS);
                let id = self.ids[card].clone();
                if self.rng.gen_bool(0.5) {
                    let r = self.router.assign(&id, self.hosts[host].id);
                    match r {
                        Ok(()) => {
                            assert!(self.owner[card].is_none(), "card {card} given twice");
                            self.owner[card] = Some(host);
                        }
                        Err(ControlError::AlreadyAssigned { .. }) => {
                            assert!(self.owner[card].is_some())
                        }
                        Err(e) => panic!("assign: {e}"),
                    }
                } else {
                    let out = self.outcomes.clone();
                    let was = self.unassigning[card];
                    let owned = self.owner[card].is_some();
                    self.unassigning[card] = true;
                    let refused = Arc::new(Mutex::new(None));
                    let r2 = refused.clone();
                    self.router.unassign(
                        &mut self.ep,
                        &id,
                        self.now,
                        Box::new(move |r| match r {
                            Err(e @ (ControlError::NotAssigned(_) | ControlError::Busy(_))) => {
                                *r2.lock().unwrap() = Some(e)
                            }
                            r => out.lock().unwrap().push((card, r)),
                        }),
                    );
                    let refusal = refused.lock().unwrap().take();
                    if let Some(e) = refusal {
                        match e {
                            ControlError::NotAssigned(_) => assert!(!owned),
                            _ => assert!(was, "busy only while being removed"),
                        }
                        self.unassigning[card] = was;
                    }
                }
                self.deliver();
            }
            82..=87 => {
                // Sessions: connect (a new session, same or new epoch), or go down.
                match self.rng.gen_range(0..3) {
                    0 if self.hosts[h].session.is_some() => {
                        let key = self.hosts[h].session.take().unwrap();
                        self.router.on_down(&mut self.ep, key, self.now);
                        self.deliver();
                    }
                    _ => {
                        let restart = self.rng.gen_bool(0.5);
                        if restart {
                            self.hosts[h].epoch += 1;
                        }
                        let key = self.next_key;
                        self.next_key += 1;
                        // The old session, if any, is replaced (a second process, same key).
                        self.hosts[h].session = Some(key);
                        self.hosts[h].occupied = [false; 32];
                        let (id, epoch) = (self.hosts[h].id, self.hosts[h].epoch);
                        self.router
                            .on_connected(&mut self.ep, key, id, epoch, self.now);
                        self.deliver();
                        self.enumerate(h);
                        // The session's `Occupied` messages name exactly the slots its
                        // enumeration finds.
                        assert_eq!(
                            self.hosts[h].occupied, self.hosts[h].slots,
                            "host {h}: Occupied at session start differs from what it enumerates"
                        );
                    }
                }
            }
            _ => {
                self.now += Duration::from_millis(self.rng.gen_range(1..200));
                self.router.poll(&mut self.ep, self.now);
                self.ep.poll(self.now);
                self.deliver();
            }
        }
    }

    fn finish(&mut self) {
        // Let every grace period end: every unassign under way completes.
        self.now += GRACE * 2;
        self.router.poll(&mut self.ep, self.now);
        self.deliver();
        self.collect_outcomes();
        assert!(
            self.unassigning.iter().all(|u| !u),
            "unassigns left hanging: {:?}",
            self.unassigning
        );
        // The router's inventory agrees with the reference model.
        for (c, id) in self.ids.iter().enumerate() {
            let e = self.router.inventory().get(id).unwrap();
            assert_eq!(
                e.owner(),
                self.owner[c].map(|h| self.hosts[h].id),
                "card {c}"
            );
        }
    }
}

fn run(seed: u64, steps: u32) -> Sim {
    let mut s = Sim::new(seed);
    for _ in 0..steps {
        s.step();
    }
    s.finish();
    s
}

#[test]
fn nothing_crosses_between_hosts_over_random_pool_histories() {
    for seed in [1u64, 2, 3] {
        let s = run(seed, 100_000);
        let st = s.router.stats();
        // The run exercised what it claims to.
        assert!(
            s.checked > 50_000,
            "seed {seed}: {} TLPs checked",
            s.checked
        );
        assert!(st.no_device > 0, "{st:?}");
        assert!(st.foreign_completions > 0, "{st:?}");
        assert!(st.unowned_outbound > 0, "{st:?}");
        assert!(st.detached > 0, "{st:?}");
        assert!(st.host_resets > 0, "{st:?}");
        assert!(st.sessions_replaced > 0, "{st:?}");
        assert!(s.ep.stats().unexpected_completions > 0);
    }
}

/// Take the next TLP queued for `key` (waiting for device threads up to 5 s), dropping
/// nothing else: TLPs for other sessions are kept for later checks.
fn next_for(s: &mut Sim, key: usize, others: &mut Vec<(usize, Vec<u8>)>) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        s.ep.poll(Instant::now());
        s.router.drain_outbound(usize::MAX);
        while let Some((k, t)) = s.router.transmit_queue().pop_front() {
            if k == key {
                return t.to_vec();
            }
            others.push((k, t.to_vec()));
        }
        assert!(Instant::now() < deadline, "nothing for session {key}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The third scenario, at the routing core: host B answers the DMA read that host
/// A's card issued — same tag, and the Requester ID that A's card has in *A's* view (B's own
/// card sits at the same slot of B's view). B's completion reaches B's card (which expects
/// nothing: an unexpected completion), A's read stays outstanding until A answers it, and A's
/// card holds A's bytes. Then A's card is detached while a read is in flight: the read fails at
/// once, nothing stays outstanding.
#[test]
fn a_host_cannot_complete_another_hosts_dma_read() {
    use pcietun::pci::class::dma_engine::reg;
    let mut s = Sim::new(7);
    let (a, b) = (0usize, 1usize);
    s.router.assign(&s.ids[0].clone(), s.hosts[a].id).unwrap();
    s.router.assign(&s.ids[1].clone(), s.hosts[b].id).unwrap();
    s.owner[0] = Some(a);
    s.owner[1] = Some(b);
    for (h, key) in [(a, 100usize), (b, 200)] {
        s.hosts[h].session = Some(key);
        let id = s.hosts[h].id;
        s.router.on_connected(&mut s.ep, key, id, 1, s.now);
        s.enumerate(h);
    }
    let mut others = Vec::new();
    // A: DMA read of 64 bytes from its memory at 0x1000 into its card's buffer.
    let start = |s: &mut Sim, h: usize| {
        for (r, v) in [
            (reg::HOST_ADDR_LO, 0x1000u32),
            (reg::HOST_ADDR_HI, 0),
            (reg::BUF_OFFSET, 0),
            (reg::LENGTH, 64),
            (reg::CONTROL, 0),
            (reg::DOORBELL, 1),
        ] {
            let mut t = Vec::new();
            wire::emit_mem_write(&mut t, ROOT, regs(0) + r, &v.to_le_bytes()).unwrap();
            s.send(h, &t);
        }
    };
    start(&mut s, a);
    let mrd = next_for(&mut s, 100, &mut others);
    let h = ParsedHeader::parse(&mrd).unwrap();
    assert!(
        matches!(h.kind, Kind::MemRead { addr: 0x1000 }),
        "{:?}",
        h.kind
    );
    // The card's ID in A's view: slot 0, the bus A programmed.
    assert_eq!(h.requester, Bdf::new(BUS, 0, 0));

    // B forges the answer: A's tag, A's card's ID in A's view (= B's own card's in B's).
    let mut forged = Vec::new();
    wire::emit_completion(
        &mut forged,
        ROOT,
        h.requester,
        h.tag,
        CplStatus::Sc,
        64,
        0,
        0,
        &[0xbb; 64],
    )
    .unwrap();
    let unexpected = s.ep.stats().unexpected_completions;
    s.router.on_tlp(&mut s.ep, 200, &forged);
    assert_eq!(s.ep.stats().unexpected_completions, unexpected + 1);
    let ra = s.ep.requester_stats(Bdf::new(BUS, 0, 0)).unwrap();
    assert_eq!(ra.completed, 0, "A's read is still outstanding");

    // A answers its own read; its card gets A's bytes.
    let mut real = Vec::new();
    wire::emit_completion(
        &mut real,
        ROOT,
        h.requester,
        h.tag,
        CplStatus::Sc,
        64,
        0,
        0,
        &[0xaa; 64],
    )
    .unwrap();
    s.router.on_tlp(&mut s.ep, 100, &real);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        s.ep.poll(Instant::now());
        let mut t = Vec::new();
        let tag = 0x42;
        wire::emit_mem_read(&mut t, ROOT, tag, buf(0), 64).unwrap();
        s.hosts[a].reads.insert(tag, (64, 0, buf(0)));
        s.router.on_tlp(&mut s.ep, 100, &t);
        let c = next_for(&mut s, 100, &mut others);
        let ch = ParsedHeader::parse(&c).unwrap();
        if c[ch.payload.clone()] == [0xaa; 64] {
            break;
        }
        assert!(
            c[ch.payload].iter().all(|&x| x == 0),
            "only A's bytes or none yet"
        );
        assert!(Instant::now() < deadline, "A's DMA read never finished");
        std::thread::sleep(Duration::from_millis(5));
    }

    // Another read in flight, then A loses the card (no session to ask: detached at once).
    start(&mut s, a);
    let _ = next_for(&mut s, 100, &mut others);
    let before = s.ep.requester_stats(Bdf::new(BUS, 0, 0)).unwrap();
    assert_eq!(before.started, before.completed + 1, "one read in flight");
    let key = s.hosts[a].session.take().unwrap();
    s.router.on_down(&mut s.ep, key, s.now);
    let done: Outcomes = s.outcomes.clone();
    s.router.unassign(
        &mut s.ep,
        &s.ids[0].clone(),
        s.now,
        Box::new(move |r| done.lock().unwrap().push((0, r))),
    );
    s.unassigning[0] = true;
    // collect_outcomes checks that nothing is outstanding for the detached card.
    s.collect_outcomes();
    assert_eq!(s.owner[0], None);
    let after = s.ep.requester_stats(Bdf::new(BUS, 0, 0)).unwrap();
    assert_eq!(
        after.started,
        after.completed + after.link_down + after.reset
    );
    // Nothing of A's went to B meanwhile.
    assert!(
        others.iter().all(|(k, _)| *k != 200),
        "B got {:?}",
        others.len()
    );
}

/// A card whose backing goes away (a vfio-user server that died; here a probe the test
/// flips): at the next poll its host gets a surprise `Removed` for its slot, the function is
/// `Failed` in the inventory with a `FunctionFailed` event, it cannot be assigned again, and
/// the host's other card stays where it was.
#[test]
fn a_card_whose_backing_fails_is_surprise_removed_and_failed() {
    use pcietun::appliance::devices::HealthProbe;
    use pcietun::appliance::{FunctionState, PoolEvent};
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut s = Sim::new(3);
    let a = 0usize;
    let host = s.hosts[a].id;
    s.router.assign(&s.ids[0].clone(), host).unwrap();
    s.router.assign(&s.ids[1].clone(), host).unwrap();
    s.owner[0] = Some(a);
    s.owner[1] = Some(a);
    s.hosts[a].session = Some(100);
    s.router.on_connected(&mut s.ep, 100, host, 1, s.now);
    s.enumerate(a);
    let gone = Arc::new(AtomicBool::new(false));
    let g = gone.clone();
    s.router.watch(
        s.ids[0].clone(),
        HealthProbe::new(move || {
            g.load(Ordering::SeqCst)
                .then(|| "the server disconnected".to_string())
        }),
    );
    s.router.transmit_queue().clear();
    let mut events = Vec::new();
    s.router.take_events(&mut events);
    events.clear();

    // Healthy: polling changes nothing.
    s.router.poll(&mut s.ep, s.now);
    assert!(s.router.transmit_queue().is_empty());
    let slot0 = s
        .router
        .views()
        .view(&host)
        .unwrap()
        .slots()
        .find(|(_, e)| e.function == s.ids[0])
        .map(|(n, _)| n)
        .unwrap();

    gone.store(true, Ordering::SeqCst);
    s.router.poll(&mut s.ep, s.now);
    let mut removed = Vec::new();
    while let Some((key, t)) = s.router.transmit_queue().pop_front() {
        let p = Tlp::parse(&t).unwrap();
        if let Some(Ok(m)) = SlotMessage::from_tlp(&p) {
            removed.push((key, m.event, m.slot));
        }
    }
    assert_eq!(
        removed,
        vec![(100, SlotEvent::Removed, slot0)],
        "one surprise removal"
    );
    let inv = s.router.inventory();
    assert_eq!(inv.get(&s.ids[0]).unwrap().state, FunctionState::Failed);
    assert_eq!(
        inv.get(&s.ids[1]).unwrap().state,
        FunctionState::Assigned(host)
    );
    s.router.take_events(&mut events);
    assert!(
        events.contains(&PoolEvent::FunctionFailed(s.ids[0].clone())),
        "{events:?}"
    );
    assert_eq!(
        s.router.assign(&s.ids[0].clone(), host),
        Err(ControlError::Failed(s.ids[0].clone()))
    );
    // Reported once.
    s.router.poll(&mut s.ep, s.now);
    events.clear();
    s.router.take_events(&mut events);
    assert!(events.is_empty(), "{events:?}");
}

/// A probe whose backing fails after `gone` is set, and whose reviver fails `misses` times
/// (recording when it was called) and then returns `card()`, watched by the same kind of
/// probe.
#[allow(clippy::type_complexity)]
fn revivable_probe(
    gone: Arc<std::sync::atomic::AtomicBool>,
    misses: usize,
    attempts: Arc<Mutex<Vec<Instant>>>,
    card: Arc<dyn Fn() -> Box<dyn pcietun::endpoint::Device> + Send + Sync>,
) -> pcietun::appliance::devices::HealthProbe {
    use pcietun::appliance::devices::HealthProbe;
    use std::sync::atomic::Ordering;
    let g = gone.clone();
    HealthProbe::new(move || {
        g.load(Ordering::SeqCst)
            .then(|| "the server disconnected".to_string())
    })
    .with_reviver(move || {
        let mut a = attempts.lock().unwrap();
        a.push(Instant::now());
        if a.len() <= misses {
            return Err("cannot connect to vfio-user server: connection refused".into());
        }
        // The new backing serves until told otherwise.
        gone.store(false, Ordering::SeqCst);
        Ok((
            card(),
            revivable_probe(gone.clone(), misses, attempts.clone(), card.clone()),
        ))
    })
}

/// Poll the router (real time: the revival thread sleeps its backoff) until `until` holds.
fn poll_until(s: &mut Sim, what: &str, until: impl Fn(&Sim) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !until(s) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
        s.router.poll(&mut s.ep, s.now);
    }
}

/// A failed card whose backing comes back (a vfio-user server restarted; here a fake probe
/// and reviver): attempts are spaced by a doubling backoff, the inventory says why it is
/// still failed and when the next attempt is, and once it is back the card is replaced in
/// the endpoint at power-on state, `FunctionRecovered` is published and — its previous owner
/// still connected — it is given back to that host, which sees it present again.
#[test]
fn a_failed_card_whose_backing_comes_back_is_recovered_and_given_back() {
    use pcietun::appliance::{FunctionState, PoolEvent};
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut s = Sim::new(5);
    let a = 0usize;
    let host = s.hosts[a].id;
    s.router.assign(&s.ids[0].clone(), host).unwrap();
    s.owner[0] = Some(a);
    s.hosts[a].session = Some(100);
    s.router.on_connected(&mut s.ep, 100, host, 1, s.now);
    s.deliver();
    s.enumerate(a);
    let gone = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    s.router.watch(
        s.ids[0].clone(),
        revivable_probe(
            gone.clone(),
            2,
            attempts.clone(),
            Arc::new(|| Box::new(DmaEngine::new(BUF as usize))),
        ),
    );
    let mut events = Vec::new();
    s.router.take_events(&mut events);
    events.clear();
    // The old model did DMA-capable work: its requester counts are what we compare against.
    gone.store(true, Ordering::SeqCst);
    s.router.poll(&mut s.ep, s.now);
    s.owner[0] = None;
    s.deliver();
    let id = s.ids[0].clone();
    assert_eq!(
        s.router.inventory().get(&id).unwrap().state,
        FunctionState::Failed
    );
    let why = s
        .router
        .inventory()
        .get(&id)
        .unwrap()
        .failure
        .clone()
        .unwrap();
    assert!(
        why.contains("the server disconnected") && why.contains("bringing it back"),
        "{why}"
    );
    // A failed attempt shows in the inventory with the next delay.
    poll_until(&mut s, "a failed attempt", |s| {
        s.router
            .inventory()
            .get(&s.ids[0])
            .and_then(|e| e.failure.clone())
            .is_some_and(|f| f.contains("connection refused") && f.contains("next attempt in"))
    });
    poll_until(&mut s, "the recovery", |s| {
        s.router.inventory().get(&s.ids[0]).unwrap().state != FunctionState::Failed
    });
    let at = attempts.lock().unwrap().clone();
    assert_eq!(at.len(), 3, "two misses, then back");
    let (g1, g2) = (at[1] - at[0], at[2] - at[1]);
    assert!(
        g1 >= Duration::from_millis(190) && g2 >= Duration::from_millis(390),
        "backoff doubles from 100 ms: {g1:?} then {g2:?}"
    );
    s.router.take_events(&mut events);
    let recovered = events
        .iter()
        .position(|e| *e == PoolEvent::FunctionRecovered(id.clone()))
        .unwrap_or_else(|| panic!("{events:?}"));
    let given = events
        .iter()
        .position(|e| {
            *e == PoolEvent::AssignmentChanged {
                function: id.clone(),
                host: Some(host),
            }
        })
        .unwrap_or_else(|| panic!("{events:?}"));
    assert!(recovered < given, "{events:?}");
    let e = s.router.inventory().get(&id).unwrap();
    assert_eq!(e.state, FunctionState::Assigned(host), "given back");
    assert_eq!(e.failure, None);
    // A new function record: its requester has done nothing yet.
    let st = s.ep.requester_stats(Bdf::new(0, 0, 0)).unwrap();
    assert_eq!(st.started, 0, "{st:?}");
    // The host is told it is present and programs it (the sim checks what it sees).
    let mut present = Vec::new();
    for (key, t) in s.router.transmit_queue().iter() {
        if let Some(Ok(m)) = SlotMessage::from_tlp(&Tlp::parse(t).unwrap()) {
            present.push((*key, m.event));
        }
    }
    assert_eq!(present, vec![(100, SlotEvent::Present)]);
    s.owner[0] = Some(a);
    s.deliver();
    // And it is watched again: a second failure is seen.
    gone.store(true, Ordering::SeqCst);
    s.router.poll(&mut s.ep, s.now);
    assert_eq!(
        s.router.inventory().get(&id).unwrap().state,
        FunctionState::Failed
    );
}

/// A backing that comes back as a different device (another server on the same socket) is
/// refused: the function stays failed, the inventory says why, and attempts continue.
#[test]
fn a_backing_that_comes_back_as_another_device_is_refused() {
    use pcietun::appliance::FunctionState;
    use pcietun::endpoint::replay::ReplayDevice;
    use pcietun::pci::replay::ReplaySizes;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut s = Sim::new(6);
    let gone = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    s.router.watch(
        s.ids[1].clone(),
        revivable_probe(
            gone.clone(),
            0,
            attempts.clone(),
            Arc::new(|| {
                let dump = concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/data/lspci/vmware-nvme.txt"
                );
                Box::new(
                    ReplayDevice::from_file(std::path::Path::new(dump), &ReplaySizes::default())
                        .unwrap(),
                )
            }),
        ),
    );
    gone.store(true, Ordering::SeqCst);
    s.router.poll(&mut s.ep, s.now);
    let id = s.ids[1].clone();
    poll_until(&mut s, "the refusal", |s| {
        s.router
            .inventory()
            .get(&s.ids[1])
            .and_then(|e| e.failure.clone())
            .is_some_and(|f| f.contains("different device"))
    });
    let e = s.router.inventory().get(&id).unwrap();
    assert_eq!(e.state, FunctionState::Failed);
    let f = e.failure.clone().unwrap();
    assert!(f.contains("15ad:07f0") && f.contains("1b36"), "{f}");
    assert_eq!(s.ep.function_names()[1], "dma", "the old model stays");
    poll_until(&mut s, "another attempt", |_| {
        attempts.lock().unwrap().len() >= 2
    });
}
