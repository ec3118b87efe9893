//! Fuzz the QMP engine: arbitrary monitor bytes, delivered in reads of fuzzer-chosen sizes,
//! with commands issued between reads. Nothing may panic; every reply names a command that
//! was issued and is delivered at most once; readiness comes at most once.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use pcietun::host::qmp::{Output, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut % 61) + 1;
    let mut p = Protocol::new();
    let mut issued = HashSet::new();
    let mut answered = HashSet::new();
    let mut ready = 0;
    for (i, chunk) in rest.chunks(step).enumerate() {
        if i % 3 == 0 {
            issued.insert(p.command("query-pci", None));
        }
        p.receive(chunk);
        let _ = p.take_transmit();
        while let Some(o) = p.poll_output() {
            match o {
                Output::Reply { id, .. } => {
                    assert!(issued.contains(&id), "reply to id {id} never issued");
                    assert!(answered.insert(id), "second reply to id {id}");
                }
                Output::Ready(_) => ready += 1,
                Output::Event(_) => {}
            }
        }
        while p.poll_error().is_some() {}
    }
    assert!(ready <= 1);
    assert!(p.outstanding() <= issued.len() + 1);
});
