//! Fuzz the NVMe driver's parsers of bytes the card writes into host memory: the Identify
//! Controller / Namespace pages and completion queue entries. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::drivers::nvme::{parse_cqe, parse_identify, PAGE};

fuzz_target!(|data: &[u8]| {
    let (ctrl, ns) = data.split_at(data.len() / 2);
    let mut c = ctrl.to_vec();
    let mut n = ns.to_vec();
    // Half the time pad to full pages so the field checks are reached.
    if data.first().is_some_and(|b| b & 1 == 1) {
        c.resize(PAGE, 0);
        n.resize(PAGE, 0);
    }
    let _ = parse_identify(&c, &n);
    if let Some(e) = data.get(..16) {
        let mut cqe = [0u8; 16];
        cqe.copy_from_slice(e);
        let _ = parse_cqe(&cqe, true);
        let _ = parse_cqe(&cqe, false);
    }
});
