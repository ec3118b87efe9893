//! Fuzz the vfio-user server engine: arbitrary bytes, split into messages by their own header
//! sizes, go through `Connection::handle` against the in-memory device. Nothing may panic, and
//! every reply must be a well-formed reply header whose size matches its length. The input
//! also goes through every body parser, which must emit back the bytes it parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::host::vfio_user::memdev::MemDevice;
use pcietun::host::vfio_user::wire::{
    Command, DeviceInfoRepr, DmaAccessRepr, DmaMapRepr, DmaUnmapRepr, IrqInfoRepr, IrqSetRepr,
    MessageHeader, MessageHeaderRepr, MessageType, RegionAccessRepr, RegionInfoRepr,
    RegionIoFdsRepr, VersionRepr, HEADER_LEN,
};
use pcietun::host::vfio_user::{Connection, FunctionContext, ServerConfig};

/// A body that parses emits back to the same bytes (every field is significant).
macro_rules! body_roundtrip {
    ($data:expr, $($repr:ident),*) => {$(
        if let Ok(r) = $repr::parse($data) {
            let mut out = [0u8; $repr::LEN];
            r.emit(&mut out);
            assert_eq!(&out[..], &$data[..$repr::LEN]);
        }
    )*};
}

fuzz_target!(|data: &[u8]| {
    body_roundtrip!(
        data,
        VersionRepr,
        DmaMapRepr,
        DmaUnmapRepr,
        DeviceInfoRepr,
        RegionInfoRepr,
        RegionIoFdsRepr,
        IrqInfoRepr,
        IrqSetRepr,
        RegionAccessRepr,
        DmaAccessRepr
    );
    let ctx = FunctionContext::new("fuzz", MemDevice::irq_counts());
    let dev = MemDevice::new(0x1234, 0x5678, ctx.clone());
    let mut conn = Connection::new(dev, ctx, ServerConfig::default());
    let mut out = Vec::new();
    // Half the inputs start negotiated so the fuzzer reaches the other commands quickly.
    if data.first().is_some_and(|b| b & 1 == 1) {
        let json = b"{\"capabilities\":{}}\0";
        let mut v = vec![0u8; HEADER_LEN + VersionRepr::LEN + json.len()];
        MessageHeaderRepr {
            id: 0,
            command: Command::Version,
            size: v.len() as u32,
            kind: MessageType::Command,
            no_reply: false,
            error: None,
        }
        .emit_bytes(&mut v);
        VersionRepr { major: 0, minor: 0 }.emit(&mut v[HEADER_LEN..]);
        v[HEADER_LEN + VersionRepr::LEN..].copy_from_slice(json);
        assert!(conn.handle(&v, Vec::new(), &mut out));
    }
    let mut rest = data.get(1..).unwrap_or(&[]);
    while rest.len() >= HEADER_LEN {
        let size = MessageHeader::new_unchecked(rest).size() as usize;
        let take = size.clamp(HEADER_LEN, rest.len());
        let (msg, tail) = rest.split_at(take);
        rest = tail;
        if conn.handle(msg, Vec::new(), &mut out) {
            let h =
                MessageHeaderRepr::parse(&MessageHeader::new_checked(&out[..]).unwrap()).unwrap();
            assert_eq!(h.kind, MessageType::Reply);
            assert_eq!(h.size as usize, out.len());
        }
    }
});
