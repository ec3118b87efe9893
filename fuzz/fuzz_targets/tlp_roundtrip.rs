//! Fuzz decode → encode → decode: every TLP that decodes must encode back to exactly the
//! input bytes, decode again to the same value, and survive the JSON form unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::tlp::{json::TlpJson, Tlp};

fuzz_target!(|data: &[u8]| {
    let Ok(t) = Tlp::parse(data) else { return };
    let mut out = vec![0u8; t.buffer_len()];
    let n = t.emit(&mut out).expect("a decoded TLP encodes");
    assert_eq!(&out[..n], data, "encode changed the bytes");
    let again = Tlp::parse(&out).expect("re-decodes");
    assert_eq!(again, t);
    let line = TlpJson::from_tlp(&t).to_line();
    let mut from_json = Vec::new();
    TlpJson::from_line(&line)
        .expect("our JSON parses")
        .encode(&mut from_json)
        .expect("our JSON encodes");
    assert_eq!(from_json, data, "JSON round trip changed the bytes");
});
