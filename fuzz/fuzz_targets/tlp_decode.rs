//! Fuzz the TLP decoder: any bytes must decode or fail with a typed error, never panic; the
//! DW0-only classifier, the Packet view, Display and the JSON form must not panic either; nor
//! must the slot-message parser (`tlp::slot`: VM names and events from a host), and what it
//! accepts re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::tlp::slot::{self, Slot};
use pcietun::tlp::{classify, json::TlpJson, Bdf, Packet, Tlp, TlpHeader};

fn t_requester(t: &Tlp<'_>) -> Bdf {
    match &t.header {
        TlpHeader::Msg(m) => m.requester_id,
        _ => Bdf(0),
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    if let Ok(p) = Packet::new_checked(data) {
        let _ = (
            p.ecrc(),
            p.length_dw(),
            p.address(),
            p.byte_count(),
            p.payload().len(),
        );
    }
    if let Ok(t) = Tlp::parse(data) {
        let _ = t.to_string();
        let _ = TlpJson::from_tlp(&t).to_line();
        // Whatever decodes is consistent with the DW0-only classifier.
        let (class, credits) = classify(data).expect("a valid TLP classifies");
        assert_eq!(class, t.ordering_class());
        assert_eq!(credits, t.credits());
        if let Some(Ok(m)) = Slot::from_tlp(&t) {
            let mut buf = [0u8; slot::MAX_SLOT_TLP];
            let n = match m {
                Slot::Consumer(r) => r.emit(t_requester(&t), &mut buf),
                Slot::VmTarget(v) => v.emit(t_requester(&t), &mut buf),
                Slot::Message(s) => s.emit(t_requester(&t), &mut buf),
            }
            .expect("a decoded slot message encodes");
            // Fixed fields only: the parser ignores reserved header bits it does not check.
            assert_eq!(Slot::from_tlp(&Tlp::parse(&buf[..n]).unwrap()), Some(Ok(m)));
        }
    }
});
