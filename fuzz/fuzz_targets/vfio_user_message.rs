//! Fuzz the vfio-user server engine: arbitrary bytes, split into messages by their own header
//! sizes, go through `Connection::handle` against the in-memory device. Nothing may panic, and
//! every reply must be a well-formed reply header whose size matches its length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::host::vfio_user::memdev::MemDevice;
use pcietun::host::vfio_user::wire::{Header, HeaderRepr, MessageType, HEADER_LEN};
use pcietun::host::vfio_user::{Connection, FunctionContext, ServerConfig};

fuzz_target!(|data: &[u8]| {
    let ctx = FunctionContext::new("fuzz", MemDevice::irq_counts());
    let dev = MemDevice::new(0x1234, 0x5678, ctx.clone());
    let mut conn = Connection::new(dev, ctx, ServerConfig::default());
    let mut out = Vec::new();
    // Half the inputs start negotiated so the fuzzer reaches the other commands quickly.
    if data.first().is_some_and(|b| b & 1 == 1) {
        let mut v = vec![0u8; HEADER_LEN];
        v.extend_from_slice(&[0, 0, 0, 0]);
        v.extend_from_slice(b"{\"capabilities\":{}}\0");
        let size = v.len() as u32;
        v[2..4].copy_from_slice(&1u16.to_ne_bytes());
        v[4..8].copy_from_slice(&size.to_ne_bytes());
        assert!(conn.handle(&v, Vec::new(), &mut out));
    }
    let mut rest = data.get(1..).unwrap_or(&[]);
    while rest.len() >= HEADER_LEN {
        let size = Header::new_unchecked(rest).size() as usize;
        let take = size.clamp(HEADER_LEN, rest.len());
        let (msg, tail) = rest.split_at(take);
        rest = tail;
        if conn.handle(msg, Vec::new(), &mut out) {
            let h = HeaderRepr::parse(&Header::new_checked(&out[..]).unwrap()).unwrap();
            assert_eq!(h.kind, MessageType::Reply);
            assert_eq!(h.size as usize, out.len());
        }
    }
});
