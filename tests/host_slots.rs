//! Slot events at the host (docs/host.md "Hot-plug"): a scripted fake appliance at the TLP
//! level with several cards on the tunnel bus, driven through `Host::on_tlp` with the slot
//! messages of `pcietun::tlp::slot` (docs/protocol.md "Slot messages").
//!
//! Covers: `Present` enumerates just that slot (no other function's BARs move) and the card
//! is usable; after `RemovalRequest` the function answers until `withdraw_slot` fences it
//! (handles then fail cleanly) and the host answers `RemovalAck` with the request's generation; `Removed` with a read in flight fails
//! that read with Unsupported Request at once while another slot's card keeps working;
//! `Occupied` at session start gives a card found by enumeration the generation its consumer
//! reports carry, and the next session forgets it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use pcietun::host::requester::RequestError;
use pcietun::host::tlpio::{MAX_TLP, ROOT_PORT};
use pcietun::host::{Downlink, Host, HostConfig, HostEvent, LinkError};
use pcietun::pci::{Bar, ConfigSpace, FunctionIds};
use pcietun::tlp::build::Cpl;
use pcietun::tlp::slot::{ConsumerEvent, SlotEvent, SlotMessage};
use pcietun::tlp::{Bdf, CplStatus, MemOp, Tlp, TlpHeader};

const NONE: u8 = 0xff;

#[derive(Debug)]
struct PipeLink(Mutex<mpsc::Sender<Vec<u8>>>);

impl Downlink for PipeLink {
    fn send_tlp(&self, tlp: &[u8]) -> Result<(), LinkError> {
        self.0
            .lock()
            .unwrap()
            .send(tlp.to_vec())
            .map_err(|_| LinkError::Closed)
    }
}

/// The fake appliance: one card (a 4 KiB BAR 0 whose every DW reads as its slot number) per
/// present slot.
struct Appliance {
    host: Arc<Host>,
    cards: Arc<Mutex<Vec<Option<ConfigSpace>>>>,
    /// Memory reads to this slot's card get no completion (held in flight).
    hold: Arc<AtomicU8>,
    held_rx: mpsc::Receiver<u8>,
    /// Slot messages the host sent.
    slot_rx: mpsc::Receiver<SlotMessage>,
}

fn card(slot: u8) -> ConfigSpace {
    let mut c = ConfigSpace::endpoint(FunctionIds {
        vendor_id: 0x1b36,
        device_id: 0x0e02,
        class_code: 0x08_80_00,
        revision: slot,
        ..Default::default()
    });
    c.set_bar(
        0,
        Bar::Memory32 {
            size: 4096,
            prefetchable: false,
        },
    )
    .unwrap();
    c
}

fn to_host(host: &Host, f: impl FnOnce(&mut [u8]) -> usize) {
    let mut b = vec![0u8; MAX_TLP];
    let n = f(&mut b);
    host.on_tlp(&b[..n]);
}

fn setup(present: &[u8]) -> Appliance {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let cfg = HostConfig {
        completion_timeout: Duration::from_secs(20),
        ..HostConfig::default()
    };
    let host = Host::new(Arc::new(PipeLink(Mutex::new(tx))), cfg);
    let mut v: Vec<Option<ConfigSpace>> = (0..32).map(|_| None).collect();
    for &s in present {
        v[s as usize] = Some(card(s));
    }
    let cards = Arc::new(Mutex::new(v));
    let hold = Arc::new(AtomicU8::new(NONE));
    let (held_tx, held_rx) = mpsc::channel();
    let (slot_tx, slot_rx) = mpsc::channel();
    let (h, c, hd) = (host.clone(), cards.clone(), hold.clone());
    std::thread::spawn(move || {
        while let Ok(bytes) = rx.recv() {
            let t = Tlp::parse(&bytes).expect("host sent a valid TLP");
            if let Some(m) = SlotMessage::from_tlp(&t) {
                let _ = slot_tx.send(m.expect("host sent a valid slot message"));
                continue;
            }
            let mut cards = c.lock().unwrap();
            match t.header {
                TlpHeader::Cfg(q) => {
                    let me = Bdf::new(q.target.bus(), q.target.device(), q.target.function());
                    let cs = (q.target.function() == 0)
                        .then(|| cards[q.target.device() as usize].as_mut())
                        .flatten();
                    let mut data = [0u8; 4];
                    let status = match cs {
                        None => CplStatus::Ur,
                        Some(cs) => {
                            if q.write {
                                for i in 0..4 {
                                    if q.first_be & (1 << i) != 0 {
                                        cs.write(q.register as usize + i, &t.data[i..i + 1]);
                                    }
                                }
                            } else {
                                cs.read(q.register as usize, &mut data);
                            }
                            CplStatus::Sc
                        }
                    };
                    let payload: &[u8] = if q.write || status != CplStatus::Sc {
                        &[]
                    } else {
                        &data
                    };
                    to_host(&h, |b| {
                        Cpl::new(me, ROOT_PORT, q.tag, status)
                            .emit(b, 4, 0, payload)
                            .unwrap()
                    });
                }
                TlpHeader::Mem(mr) if mr.op == MemOp::Read => {
                    let hit = cards.iter().enumerate().find_map(|(s, cs)| {
                        cs.as_ref()
                            .and_then(|cs| cs.decode(mr.address, false))
                            .map(|_| s as u8)
                    });
                    let Some(slot) = hit else {
                        to_host(&h, |b| {
                            Cpl::new(ROOT_PORT, ROOT_PORT, mr.tag, CplStatus::Ur)
                                .emit(b, 4, 0, &[])
                                .unwrap()
                        });
                        continue;
                    };
                    if hd.load(Ordering::SeqCst) == slot {
                        let _ = held_tx.send(slot);
                        continue;
                    }
                    let n = t.length_dw as usize * 4;
                    let payload: Vec<u8> = (0..n / 4)
                        .flat_map(|_| u32::from(slot).to_le_bytes())
                        .collect();
                    let me = Bdf::new(1, slot, 0);
                    to_host(&h, |b| {
                        Cpl::new(me, ROOT_PORT, mr.tag, CplStatus::Sc)
                            .emit(b, n as u16, (mr.address & 0x7f) as u8, &payload)
                            .unwrap()
                    });
                }
                _ => {}
            }
        }
    });
    host.on_link_up();
    Appliance {
        host,
        cards,
        hold,
        held_rx,
        slot_rx,
    }
}

fn slot_msg(host: &Host, event: SlotEvent, slot: u8, generation: u16) {
    let m = SlotMessage {
        event,
        slot,
        generation,
    };
    to_host(host, |b| m.emit(Bdf::new(0, 0, 0), b).unwrap());
}

fn events(host: &Host) -> Vec<HostEvent> {
    std::iter::from_fn(|| host.next_event(Duration::from_millis(0))).collect()
}

fn bar0(host: &Host, bdf: Bdf) -> (u64, u64) {
    let f = host.functions().into_iter().find(|f| f.bdf == bdf).unwrap();
    (f.bars[0].base, f.bars[0].size)
}

#[test]
fn present_enumerates_only_that_slot_and_moves_no_other_bar() {
    let a = setup(&[0]);
    let h = &a.host;
    assert_eq!(h.rescan().len(), 1);
    let before = bar0(h, Bdf::new(1, 0, 0));
    let _ = events(h);

    a.cards.lock().unwrap()[3] = Some(card(3));
    slot_msg(h, SlotEvent::Present, 3, 1);
    assert!(h.has_slot_work());
    let m = h.take_slot_work().unwrap();
    assert_eq!((m.event, m.slot), (SlotEvent::Present, 3));
    let found = h.present_slot(m.slot);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].bdf, Bdf::new(1, 3, 0));
    assert!(events(h).contains(&HostEvent::FunctionAdded(Bdf::new(1, 3, 0))));

    // Slot 0's BAR stayed; slot 3's does not overlap it.
    assert_eq!(bar0(h, Bdf::new(1, 0, 0)), before);
    let new = bar0(h, Bdf::new(1, 3, 0));
    assert!(new.0 >= before.0 + before.1 || new.0 + new.1 <= before.0);

    // Both cards answer at their own BARs.
    let f3 = h.open(Bdf::new(1, 3, 0)).unwrap();
    let f0 = h.open(Bdf::new(1, 0, 0)).unwrap();
    assert_eq!(f3.bar_read32(0, 0x10).unwrap(), 3);
    assert_eq!(f0.bar_read32(0, 0x10).unwrap(), 0);
}

#[test]
fn removal_request_withdraws_then_acks_with_its_generation() {
    let a = setup(&[0, 2]);
    let h = &a.host;
    assert_eq!(h.rescan().len(), 2);
    let f2 = h.open(Bdf::new(1, 2, 0)).unwrap();
    assert_eq!(f2.bar_read32(0, 0).unwrap(), 2);
    let _ = events(h);

    slot_msg(h, SlotEvent::RemovalRequest, 2, 7);
    assert!(events(h).contains(&HostEvent::RemovalRequested {
        slot: 2,
        generation: 7
    }));
    // The card keeps answering until its consumers let go (a VM's guest flushes and ejects
    // it): only the agent's `withdraw_slot` fences it.
    assert!(!f2.is_removed());
    assert_eq!(f2.bar_read32(0, 0).unwrap(), 2);
    assert_eq!(h.slot_functions(2), vec![Bdf::new(1, 2, 0)]);

    let m = h.take_slot_work().unwrap();
    assert_eq!(m.event, SlotEvent::RemovalRequest);
    assert_eq!(f2.bar_read32(0, 0).unwrap(), 2);
    assert_eq!(h.withdraw_slot(m.slot), vec![Bdf::new(1, 2, 0)]);
    // Withdrawn now: the handle fails cleanly, without a TLP.
    assert!(f2.is_removed());
    assert_eq!(f2.bar_read32(0, 0), Err(RequestError::UnsupportedRequest));
    assert!(events(h).contains(&HostEvent::FunctionRemoved(Bdf::new(1, 2, 0))));
    assert!(h.open(Bdf::new(1, 2, 0)).is_none());
    h.ack_removal(m.slot, m.generation).unwrap();
    let ack = a.slot_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        ack,
        SlotMessage {
            event: SlotEvent::RemovalAck,
            slot: 2,
            generation: 7
        }
    );
    // The other card is untouched.
    assert_eq!(
        h.open(Bdf::new(1, 0, 0)).unwrap().bar_read32(0, 0).unwrap(),
        0
    );
}

#[test]
fn surprise_removal_fails_requests_in_flight_and_spares_other_slots() {
    let a = setup(&[0, 5]);
    let h = a.host.clone();
    assert_eq!(h.rescan().len(), 2);
    let f5 = h.open(Bdf::new(1, 5, 0)).unwrap();
    let f0 = h.open(Bdf::new(1, 0, 0)).unwrap();
    a.hold.store(5, Ordering::SeqCst);
    let reader = std::thread::spawn(move || {
        let t0 = Instant::now();
        (f5.bar_read32(0, 0x20), t0.elapsed())
    });
    // The read reached the appliance and is outstanding.
    assert_eq!(a.held_rx.recv_timeout(Duration::from_secs(5)).unwrap(), 5);
    let _ = events(&h);

    slot_msg(&h, SlotEvent::Removed, 5, 1);
    let (r, took) = reader.join().unwrap();
    assert_eq!(r, Err(RequestError::UnsupportedRequest));
    // Failed by the removal, far ahead of the 20 s completion timeout.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(h.stats().failed_by_removal.load(Ordering::Relaxed), 1);
    let ev = events(&h);
    assert!(ev.contains(&HostEvent::FunctionRemoved(Bdf::new(1, 5, 0))));
    assert!(!ev
        .iter()
        .any(|e| matches!(e, HostEvent::CompletionTimeout { .. })));
    assert_eq!(h.functions().len(), 1);
    // The other slot's card still works.
    assert_eq!(f0.bar_read32(0, 0).unwrap(), 0);
}

#[test]
fn malformed_or_misdirected_slot_messages_are_counted_not_obeyed() {
    let a = setup(&[0]);
    let h = &a.host;
    assert_eq!(h.rescan().len(), 1);
    // A RemovalAck is host → appliance only.
    slot_msg(h, SlotEvent::RemovalAck, 0, 1);
    assert!(!h.has_slot_work());
    assert_eq!(h.stats().bad_slot_messages.load(Ordering::Relaxed), 1);
    // Slot 40 does not exist: the codec refuses it.
    let mut b = [0u8; 16];
    let m = SlotMessage {
        event: SlotEvent::Removed,
        slot: 0,
        generation: 1,
    };
    let n = m.emit(Bdf::new(0, 0, 0), &mut b).unwrap();
    b[13] = 40;
    h.on_tlp(&b[..n]);
    assert_eq!(h.stats().bad_slot_messages.load(Ordering::Relaxed), 2);
    assert_eq!(h.functions().len(), 1);
    // A flood of Present messages is bounded.
    for _ in 0..1000 {
        slot_msg(h, SlotEvent::Present, 9, 1);
    }
    let mut n = 0;
    while h.take_slot_work().is_some() {
        n += 1;
    }
    assert!(n <= 128, "{n} queued");
}

#[test]
fn occupied_gives_an_enumerated_card_its_generation_until_the_session_ends() {
    let a = setup(&[4]);
    let h = &a.host;
    assert_eq!(h.rescan().len(), 1);
    let _ = events(h);
    // Found by enumeration, no slot message yet: nothing to report under.
    assert!(!h
        .report_consumer(4, ConsumerEvent::Attached, "web1")
        .unwrap());

    slot_msg(h, SlotEvent::Occupied, 4, 9);
    assert!(
        events(h).contains(&HostEvent::SlotOccupied {
            slot: 4,
            generation: 9
        }),
        "the VM layer is told, so it can report again"
    );
    assert!(
        !h.has_slot_work(),
        "no hot-plug work: the card is enumerated already"
    );
    assert_eq!(h.functions().len(), 1);
    assert!(h
        .report_consumer(4, ConsumerEvent::Attached, "web1")
        .unwrap());
    assert_eq!(
        a.slot_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        SlotMessage {
            event: SlotEvent::Consumer,
            slot: 4,
            generation: 9
        }
    );
    // Another slot is still unknown.
    assert!(!h
        .report_consumer(5, ConsumerEvent::Attached, "web1")
        .unwrap());

    // The session ends: the generation belonged to it (the next appliance may count anew).
    h.on_link_down();
    h.on_link_up();
    assert!(!h
        .report_consumer(4, ConsumerEvent::Detached, "web1")
        .unwrap());
    assert!(a.slot_rx.try_recv().is_err(), "nothing was sent");
}
