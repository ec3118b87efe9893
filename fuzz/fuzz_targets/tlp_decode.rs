//! Fuzz the TLP decoder: any bytes must decode or fail with a typed error, never panic; the
//! DW0-only classifier, the Packet view, Display and the JSON form must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::tlp::{classify, json::TlpJson, Packet, Tlp};

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    if let Ok(p) = Packet::new_checked(data) {
        let _ = (p.ecrc(), p.length_dw(), p.address(), p.byte_count(), p.payload().len());
    }
    if let Ok(t) = Tlp::parse(data) {
        let _ = t.to_string();
        let _ = TlpJson::from_tlp(&t).to_line();
        // Whatever decodes is consistent with the DW0-only classifier.
        let (class, credits) = classify(data).expect("a valid TLP classifies");
        assert_eq!(class, t.ordering_class());
        assert_eq!(credits, t.credits());
    }
});
