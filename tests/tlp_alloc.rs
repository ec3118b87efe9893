//! Proves the hot path does not allocate: a counting global allocator (this test binary only)
//! watches `Tlp::parse`, `classify`, `Tlp::emit` into a caller's buffer, the Packet view
//! accessors, the split iterators and the `tlp::build` constructors over a realistic mix of
//! TLPs.

mod alloc_common;

use pcietun::tlp::json::parse_hex;
use pcietun::tlp::split::{SplitCompletion, SplitRequest};
use pcietun::tlp::{build, classify, Bdf, CplStatus, Packet, Tlp};

fn mix() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "00000001 0100010f f7e00010",
        "20000010 0100abff 00000001 00002000",
        "80000001 91212345 20008001 0100010f 00000001 00000000 eebb7e3e",
        "34000000 01000020 00000000 00000000",
        "0a000000 00002004 01000500",
    ]
    .iter()
    .map(|h| parse_hex(h).unwrap())
    .collect();
    let mut mwr = parse_hex("60000040 010000ff 00000001 00000000").unwrap();
    mwr.extend(std::iter::repeat_n(0xa5, 256));
    v.push(mwr);
    let mut cpld = parse_hex("4a000010 01000040 00000a00").unwrap();
    cpld.extend(std::iter::repeat_n(0x5a, 64));
    v.push(cpld);
    v
}

#[test]
fn decode_and_encode_do_not_allocate() {
    let mix = mix();
    for b in &mix {
        assert!(Tlp::parse(b).is_ok(), "the mix must decode: {b:02x?}");
    }
    let mut out = [0u8; 4096 + 64];
    let payload = [0x3cu8; 1000];
    let before = alloc_common::allocations();
    let mut checksum = 0u64;
    for _ in 0..100 {
        for b in &mix {
            let t = Tlp::parse(b).expect("valid");
            let (class, credits) = classify(b).expect("valid");
            let p = Packet::new_checked(b.as_slice()).expect("valid");
            checksum += u64::from(p.length_dw()) + class.index() as u64 + u64::from(credits.data);
            let n = t.emit(&mut out).expect("fits");
            assert_eq!(&out[..n], b.as_slice());
            checksum += u64::from(t.ecrc()[0]);
        }
        for c in SplitCompletion::new(0x1000_0010, 4000, 64, 256).expect("valid") {
            checksum += u64::from(c.byte_count);
        }
        for c in SplitRequest::new(0x1000_0010, 20000, 512).expect("valid") {
            checksum += u64::from(c.length_dw);
        }
        // The constructors both halves use, including a split read completion.
        let rid = Bdf::new(1, 0, 0);
        checksum += build::mem_read(&mut out, rid, 7, 0x1_0000_0003, 300).expect("valid") as u64;
        checksum += build::mem_write(&mut out, rid, 0x2001, &payload).expect("valid") as u64;
        checksum += build::msi(&mut out, rid, 0xfee0_0000, 0x41).expect("valid") as u64;
        checksum += build::intx(&mut out, rid, 2, true).expect("valid") as u64;
        let cfg = build::Cfg {
            requester: Bdf(0),
            tag: 3,
            target: rid,
            type1: false,
            register: 0x10,
            first_be: 0xf,
        };
        checksum += cfg.write(&mut out, [1, 2, 3, 4]).expect("valid") as u64;
        let cpl = build::Cpl::new(rid, Bdf(0), 9, CplStatus::Sc);
        let mut split = cpl
            .read_completions(0x1010, &payload, 64, 128)
            .expect("valid");
        while let Some(n) = split.emit_next(&mut out) {
            checksum += n.expect("valid") as u64;
        }
    }
    let after = alloc_common::allocations();
    assert!(checksum > 0);
    assert_eq!(
        after - before,
        0,
        "{} allocations on the hot path",
        after - before
    );
    // The counter itself works: an allocation is seen.
    let v = std::hint::black_box(vec![1u8; 10]);
    assert!(alloc_common::allocations() > after && v.len() == 10);
}
