//! The pool's routing core and a host's VM reports (issue 15 "Events"; docs/protocol.md §10
//! `Consumer` / `VmTarget`): an assignment that names a VM sends the host a `VmTarget` before
//! its `Present`; a consumer report becomes a `PoolEvent::VmConsumer` only from the session of
//! the host that owns that slot, at the assignment's current generation, and within the
//! session's rate — a foreign, stale or flooding report is dropped and counted. A card the host
//! finds by enumeration at session start (assigned while it was away, or kept across a lost
//! session) gets its generation from the `Occupied` the session starts with (after its
//! `VmTarget` when the assignment names a VM); a report from before a move never counts for the
//! function's new owner, nor for a later assignment of the same slot.

use std::time::{Duration, Instant};

use pcietun::appliance::config::AssignSpec;
use pcietun::appliance::control::PoolEvent;
use pcietun::appliance::inventory::{FunctionEntry, FunctionId, Inventory};
use pcietun::appliance::router::{RouterStats, REPORTS_PER_SECOND, REPORT_BURST};
use pcietun::appliance::Router;
use pcietun::endpoint::dma_engine::DmaEngine;
use pcietun::endpoint::wire::Bdf;
use pcietun::endpoint::{Proxy, ProxyConfig};
use pcietun::tlp::slot::{
    ConsumerEvent, ConsumerReport, Slot, SlotEvent, SlotMessage, VmName, MAX_SLOT_TLP,
};
use pcietun::tlp::Tlp;
use pcietun::transport::HostId;

const A: usize = 1;
const B: usize = 2;

struct Pool {
    ep: Proxy,
    router: Router<usize>,
    ids: Vec<FunctionId>,
    a: HostId,
    b: HostId,
}

fn pool() -> Pool {
    let (mut ep, outbound) = Proxy::new(ProxyConfig::default());
    let a = HostId::new("host-a").unwrap();
    let b = HostId::new("host-b").unwrap();
    let mut inv = Inventory::new([a, b]);
    let mut ids = Vec::new();
    for d in 0..2u8 {
        let bdf = Bdf::new(0, d, 0);
        let mut dev = DmaEngine::new(4096);
        let e = FunctionEntry::describe(bdf, None, &mut dev).unwrap();
        ids.push(e.id.clone());
        ep.add_function(bdf, Box::new(dev)).unwrap();
        inv.add(e).unwrap();
    }
    let mut router = Router::new(inv, outbound, Duration::from_secs(30));
    let now = Instant::now();
    router.on_connected(&mut ep, A, a, 1, now);
    router.on_connected(&mut ep, B, b, 1, now);
    let mut p = Pool {
        ep,
        router,
        ids,
        a,
        b,
    };
    p.events();
    p
}

impl Pool {
    /// Everything queued for session `key`, decoded as slot messages.
    fn sent_to(&mut self, key: usize) -> Vec<Slot> {
        let q = self.router.transmit_queue();
        let mut out = Vec::new();
        q.retain(|(k, t)| {
            if *k != key {
                return true;
            }
            if let Some(Ok(s)) = Tlp::parse(t).ok().as_ref().and_then(Slot::from_tlp) {
                out.push(s);
            }
            false
        });
        out
    }

    fn events(&mut self) -> Vec<PoolEvent> {
        let mut e = Vec::new();
        self.router.take_events(&mut e);
        e
    }

    fn report(&mut self, key: usize, slot: u8, generation: u16, event: ConsumerEvent, vm: &str) {
        let r = ConsumerReport {
            slot,
            generation,
            event,
            vm: VmName::new(vm).unwrap(),
        };
        let mut b = [0u8; MAX_SLOT_TLP];
        let n = r.emit(Bdf::new(0, 0, 0), &mut b).unwrap();
        self.router.on_tlp(&mut self.ep, key, &b[..n]);
    }

    fn vm_events(&mut self) -> Vec<(FunctionId, HostId, String, ConsumerEvent)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                PoolEvent::VmConsumer {
                    function,
                    host,
                    vm,
                    event,
                } => Some((function, host, vm.to_string(), event)),
                _ => None,
            })
            .collect()
    }
}

/// `n` reports from session `key` about (`slot`, `generation`), as fast as they go: at most the
/// burst plus what the time the loop took earned count (each one event), the rest are dropped
/// and counted. The stats after.
fn flood(p: &mut Pool, key: usize, slot: u8, generation: u16, n: u64) -> RouterStats {
    let before = p.router.stats();
    let t0 = Instant::now();
    for _ in 0..n {
        p.report(key, slot, generation, ConsumerEvent::Attached, "web1");
    }
    let elapsed = t0.elapsed();
    let st = p.router.stats();
    let counted = st.consumer_reports - before.consumer_reports;
    let earned = (elapsed.as_secs_f64() * f64::from(REPORTS_PER_SECOND)).ceil() as u64;
    assert!(
        counted >= u64::from(REPORT_BURST) && counted <= u64::from(REPORT_BURST) + earned + 1,
        "{st:?} in {elapsed:?}"
    );
    assert_eq!(
        counted + st.limited_consumer_reports - before.limited_consumer_reports,
        n
    );
    assert_eq!(p.vm_events().len() as u64, counted);
    st
}

/// Assign `ids[0]` to host-a naming VM web1; the (slot, generation) of its `Present`.
fn assign_named(p: &mut Pool) -> (u8, u16) {
    let f = p.ids[0].clone();
    p.router
        .assign_vm(&f, p.a, Some(VmName::new("web1").unwrap()))
        .unwrap();
    let sent = p.sent_to(A);
    // The VM's name first, then the Present of the same assignment.
    let [Slot::VmTarget(t), Slot::Message(m)] = sent.as_slice() else {
        panic!("expected VmTarget then Present, got {sent:?}");
    };
    assert_eq!(m.event, SlotEvent::Present);
    assert_eq!((t.slot, t.generation), (m.slot, m.generation));
    assert_eq!(t.vm.as_str(), "web1");
    (m.slot, m.generation)
}

#[test]
fn an_assignment_without_a_vm_sends_a_plain_present() {
    let mut p = pool();
    let f = p.ids[0].clone();
    p.router.assign(&f, p.a).unwrap();
    let sent = p.sent_to(A);
    assert!(
        matches!(
            sent.as_slice(),
            [Slot::Message(SlotMessage {
                event: SlotEvent::Present,
                ..
            })]
        ),
        "{sent:?}"
    );
}

#[test]
fn the_owners_report_is_an_event_and_others_are_dropped_and_counted() {
    let mut p = pool();
    let (slot, generation) = assign_named(&mut p);
    p.events();

    // The owner's report of the current assignment.
    p.report(A, slot, generation, ConsumerEvent::Attached, "web1");
    let ev = p.vm_events();
    assert_eq!(
        ev,
        vec![(
            p.ids[0].clone(),
            p.a,
            "web1".into(),
            ConsumerEvent::Attached
        )]
    );
    assert_eq!(p.router.stats().consumer_reports, 1);

    // Another host naming the same slot and generation (it has no such slot, or another
    // function there): dropped, counted, no event.
    p.report(B, slot, generation, ConsumerEvent::Detached, "web1");
    // The owner, about an older or newer assignment of that slot.
    p.report(
        A,
        slot,
        generation.wrapping_sub(1),
        ConsumerEvent::Detached,
        "web1",
    );
    p.report(
        A,
        slot,
        generation.wrapping_add(1),
        ConsumerEvent::Detached,
        "web1",
    );
    // The owner, about a slot it does not have.
    p.report(A, slot + 5, generation, ConsumerEvent::Detached, "web1");
    assert!(p.vm_events().is_empty());
    let st = p.router.stats();
    assert_eq!(
        (st.consumer_reports, st.stale_consumer_reports),
        (1, 4),
        "{st:?}"
    );

    // Host-b's own function: its report is its own event, not host-a's.
    let g = p.ids[1].clone();
    p.router.assign(&g, p.b).unwrap();
    let Some(Slot::Message(m)) = p.sent_to(B).pop() else {
        panic!("no Present for host-b");
    };
    p.events();
    p.report(B, m.slot, m.generation, ConsumerEvent::AttachFailed, "db");
    assert_eq!(
        p.vm_events(),
        vec![(
            p.ids[1].clone(),
            p.b,
            "db".into(),
            ConsumerEvent::AttachFailed
        )]
    );
}

#[test]
fn a_report_after_the_function_left_is_stale() {
    let mut p = pool();
    let (slot, generation) = assign_named(&mut p);
    let f = p.ids[0].clone();
    let now = Instant::now();
    p.router
        .unassign(&mut p.ep, &f, now, Box::new(|r| assert!(r.is_ok())));
    let Some(Slot::Message(req)) = p.sent_to(A).pop() else {
        panic!("no RemovalRequest");
    };
    assert_eq!(req.event, SlotEvent::RemovalRequest);
    // While the removal runs the owner still reports (the guest ejected it).
    p.report(A, slot, generation, ConsumerEvent::Detached, "web1");
    assert_eq!(p.vm_events().len(), 1);
    let ack = SlotMessage {
        event: SlotEvent::RemovalAck,
        ..req
    };
    let mut b = [0u8; 16];
    let n = ack.emit(Bdf::new(0, 0, 0), &mut b).unwrap();
    p.router.on_tlp(&mut p.ep, A, &b[..n]);
    p.events();
    // Detached and reset: a late report about it changes nothing.
    p.report(A, slot, generation, ConsumerEvent::SurpriseRemoved, "web1");
    assert!(p.vm_events().is_empty());
    assert_eq!(p.router.stats().stale_consumer_reports, 1);
}

#[test]
fn a_flood_of_reports_is_rate_limited_per_session() {
    let mut p = pool();
    let (slot, generation) = assign_named(&mut p);
    p.events();
    let st = flood(&mut p, A, slot, generation, 1000);
    // Another session's budget is its own.
    let g = p.ids[1].clone();
    p.router.assign(&g, p.b).unwrap();
    let Some(Slot::Message(m)) = p.sent_to(B).pop() else {
        panic!("no Present for host-b");
    };
    p.report(B, m.slot, m.generation, ConsumerEvent::Attached, "db");
    assert_eq!(p.router.stats().consumer_reports, st.consumer_reports + 1);
}

/// Session `key` of host `id` comes up; everything it was sent at once, decoded.
fn connect(p: &mut Pool, key: usize, id: HostId) -> Vec<Slot> {
    p.router.on_connected(&mut p.ep, key, id, 1, Instant::now());
    p.sent_to(key)
}

/// Unassign `f`, its owner's session `key` acknowledging the removal request.
fn unassign_acked(p: &mut Pool, key: usize, f: &FunctionId) {
    p.router.unassign(
        &mut p.ep,
        f,
        Instant::now(),
        Box::new(|r| assert!(r.is_ok())),
    );
    let Some(Slot::Message(req)) = p.sent_to(key).pop() else {
        panic!("no RemovalRequest");
    };
    assert_eq!(req.event, SlotEvent::RemovalRequest);
    let ack = SlotMessage {
        event: SlotEvent::RemovalAck,
        ..req
    };
    let mut b = [0u8; 16];
    let n = ack.emit(Bdf::new(0, 0, 0), &mut b).unwrap();
    p.router.on_tlp(&mut p.ep, key, &b[..n]);
}

#[test]
fn a_session_starts_with_the_generation_of_every_slot_the_host_has() {
    let mut p = pool();
    let (a, b) = (p.a, p.b);
    // host-a is away while two functions are assigned to it (one naming a VM): no Present.
    p.router.on_down(&mut p.ep, A, Instant::now());
    let (f, g) = (p.ids[0].clone(), p.ids[1].clone());
    p.router
        .assign_vm(&f, p.a, Some(VmName::new("web1").unwrap()))
        .unwrap();
    p.router.assign(&g, p.a).unwrap();
    assert!(p.sent_to(A).is_empty());
    // Its next session starts with the VM target and Occupied of each (no Present: the host
    // enumerates them), in slot order.
    const A2: usize = 3;
    let sent = connect(&mut p, A2, a);
    let [Slot::VmTarget(t), Slot::Message(o0), Slot::Message(o1)] = sent.as_slice() else {
        panic!("expected VmTarget, Occupied, Occupied; got {sent:?}");
    };
    assert_eq!(
        (o0.event, o1.event),
        (SlotEvent::Occupied, SlotEvent::Occupied)
    );
    assert_eq!(
        (t.slot, t.generation, t.vm.as_str()),
        (o0.slot, o0.generation, "web1")
    );
    assert_ne!(o0.slot, o1.slot);
    p.events();

    // Reports at those generations count, for the right function each.
    p.report(A2, o0.slot, o0.generation, ConsumerEvent::Attached, "web1");
    p.report(
        A2,
        o1.slot,
        o1.generation,
        ConsumerEvent::AttachFailed,
        "db",
    );
    assert_eq!(
        p.vm_events(),
        vec![
            (f.clone(), p.a, "web1".into(), ConsumerEvent::Attached),
            (g.clone(), p.a, "db".into(), ConsumerEvent::AttachFailed)
        ]
    );
    // Another generation, a slot it does not have, or another host naming the slot: dropped.
    p.report(
        A2,
        o0.slot,
        o0.generation.wrapping_add(1),
        ConsumerEvent::Detached,
        "web1",
    );
    p.report(
        A2,
        o0.slot,
        o0.generation.wrapping_sub(1),
        ConsumerEvent::Detached,
        "web1",
    );
    p.report(A2, 7, o0.generation, ConsumerEvent::Detached, "web1");
    p.report(B, o0.slot, o0.generation, ConsumerEvent::Detached, "web1");
    // The old session's key is no session of host-a's any more.
    p.report(A, o0.slot, o0.generation, ConsumerEvent::Detached, "web1");
    assert!(p.vm_events().is_empty());
    let st = p.router.stats();
    assert_eq!(
        (st.consumer_reports, st.stale_consumer_reports),
        (2, 4),
        "{st:?}"
    );
    assert_eq!(st.unknown_session, 1, "{st:?}");

    // A host with nothing assigned gets nothing at session start.
    assert!(connect(&mut p, 4, b).is_empty());
}

#[test]
fn a_report_from_before_a_move_never_counts_for_the_new_owner_or_assignment() {
    let mut p = pool();
    let (a, b) = (p.a, p.b);
    let (slot, gen_a) = assign_named(&mut p);
    let f = p.ids[0].clone();
    // host-a reconnects: nothing changed, so the same generation again, after the VM the
    // assignment named.
    let sent = connect(&mut p, 3, a);
    let [Slot::VmTarget(t), Slot::Message(o)] = sent.as_slice() else {
        panic!("expected VmTarget, Occupied; got {sent:?}");
    };
    assert_eq!(
        (o.event, o.slot, o.generation),
        (SlotEvent::Occupied, slot, gen_a)
    );
    assert_eq!((t.slot, t.generation, t.vm.as_str()), (slot, gen_a, "web1"));
    // The function moves to host-b, whose session names its own slot and generation.
    unassign_acked(&mut p, 3, &f);
    p.router.assign(&f, p.b).unwrap();
    let Some(Slot::Message(pb)) = p.sent_to(B).pop() else {
        panic!("no Present for host-b");
    };
    p.events();
    // host-a's report about its old assignment (sent late, or forged): dropped.
    p.report(3, slot, gen_a, ConsumerEvent::VmGone, "web1");
    // host-a naming host-b's slot and generation: its own view has nothing there.
    p.report(3, pb.slot, pb.generation, ConsumerEvent::VmGone, "web1");
    assert!(p.vm_events().is_empty());
    assert_eq!(p.router.stats().stale_consumer_reports, 2);
    // host-a's next session names nothing: it has nothing.
    assert!(connect(&mut p, 5, a).is_empty());
    // host-b's new session names its slot, no VM (its assignment named none).
    let sent = connect(&mut p, 6, b);
    let [Slot::Message(o)] = sent.as_slice() else {
        panic!("expected one Occupied, got {sent:?}");
    };
    assert_eq!(
        (o.event, o.slot, o.generation),
        (SlotEvent::Occupied, pb.slot, pb.generation)
    );
    p.report(6, pb.slot, pb.generation, ConsumerEvent::Attached, "db");
    assert_eq!(
        p.vm_events(),
        vec![(f.clone(), p.b, "db".into(), ConsumerEvent::Attached)]
    );

    // Back to host-a, at the slot it had: a new generation, and the old one stays stale.
    unassign_acked(&mut p, 6, &f);
    p.router.assign(&f, p.a).unwrap();
    let Some(Slot::Message(pa)) = p.sent_to(5).pop() else {
        panic!("no Present for host-a");
    };
    assert_eq!(pa.slot, slot);
    assert_ne!(pa.generation, gen_a);
    p.events();
    p.report(5, slot, gen_a, ConsumerEvent::Attached, "web1");
    assert!(p.vm_events().is_empty());
    p.report(5, slot, pa.generation, ConsumerEvent::Attached, "web1");
    assert_eq!(p.vm_events().len(), 1);
}

#[test]
fn a_flood_at_the_session_start_generation_is_rate_limited() {
    let mut p = pool();
    let a = p.a;
    p.router.on_down(&mut p.ep, A, Instant::now());
    let f = p.ids[0].clone();
    p.router.assign(&f, p.a).unwrap();
    let sent = connect(&mut p, 3, a);
    let [Slot::Message(o)] = sent.as_slice() else {
        panic!("expected one Occupied, got {sent:?}");
    };
    p.events();
    flood(&mut p, 3, o.slot, o.generation, 500);
}

/// Start assignments (the configuration's, or those an appliance restores from its state
/// store after a restart) keep the VM they named: the host's first session after the start
/// gets that VM's target before the slot's Occupied, as after a run-time `assign --vm`.
#[test]
fn a_restored_assignment_names_its_vm_again_at_the_next_session() {
    let mut p = pool();
    let a = p.a;
    p.router.on_down(&mut p.ep, A, Instant::now());
    let (f, g) = (p.ids[0].clone(), p.ids[1].clone());
    p.router
        .apply(&[
            AssignSpec {
                function: f.clone(),
                host: a,
                vm: Some(VmName::new("web1").unwrap()),
            },
            AssignSpec {
                function: g.clone(),
                host: a,
                vm: None,
            },
        ])
        .unwrap();
    let sent = connect(&mut p, 3, a);
    let [Slot::VmTarget(t), Slot::Message(o0), Slot::Message(o1)] = sent.as_slice() else {
        panic!("expected VmTarget, Occupied, Occupied; got {sent:?}");
    };
    assert_eq!(
        (o0.event, o1.event),
        (SlotEvent::Occupied, SlotEvent::Occupied)
    );
    assert_eq!(
        (t.slot, t.generation, t.vm.as_str()),
        (o0.slot, o0.generation, "web1")
    );
}
