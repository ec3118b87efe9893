//! Fuzz the NVMe driver's reading of bytes the card writes into host memory: the Identify
//! Controller / Namespace pages (`parse_identify`, over the shared layouts of
//! `pcietun::pci::class::nvme`) and the status field of completion queue entries. Nothing
//! may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::drivers::nvme::{parse_identify, PAGE};
use pcietun::pci::class::nvme::Status;

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
        // DW3 bits 31:16 of a completion queue entry: phase tag and status field.
        let st = Status::from_field(u16::from_le_bytes([e[14], e[15]]) >> 1);
        let _ = (
            st.to_string(),
            st.is_success(),
            st.dnr(),
            st.crd(),
            st.more(),
        );
    }
});
