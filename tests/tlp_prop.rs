//! Property tests for the TLP codec: encode∘decode is the identity on every valid TLP (across
//! every kind, prefix mix and header flag), decoding arbitrary or corrupted bytes never
//! panics and whatever it accepts re-encodes to the same bytes, the JSON form round-trips,
//! `classify` agrees with the full decoder, and the split helpers keep their invariants.

mod tlp_common;

use pcietun::tlp::build::{self, BuildError};
use pcietun::tlp::json::TlpJson;
use pcietun::tlp::split::{byte_enables, covered_bytes, SplitCompletion, SplitRequest};
use pcietun::tlp::{classify, Bdf, CplStatus, MemOp, Tlp, TlpHeader};
use proptest::prelude::*;
use tlp_common::arb_tlp;

fn encode(t: &Tlp<'_>) -> Vec<u8> {
    let mut out = vec![0u8; t.buffer_len()];
    let n = t.emit(&mut out).unwrap_or_else(|e| panic!("{e}: {t:?}"));
    assert_eq!(n, out.len());
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_is_identity(o in arb_tlp()) {
        let t = o.tlp();
        let bytes = encode(&t);
        let back = Tlp::parse(&bytes).map_err(|e| TestCaseError::fail(format!("{e}: {t:?}")))?;
        prop_assert_eq!(back, t);
        prop_assert_eq!(encode(&back), bytes.clone());
        // classify (DW0 only) agrees with the full decoder.
        let (class, credits) = classify(&bytes).unwrap();
        prop_assert_eq!(class, t.ordering_class());
        prop_assert_eq!(credits, t.credits());
        // Display never panics and names the kind.
        prop_assert!(t.to_string().contains(t.name()));
    }

    #[test]
    fn json_round_trips(o in arb_tlp()) {
        let t = o.tlp();
        let bytes = encode(&t);
        let line = TlpJson::from_tlp(&t).to_line();
        let j = TlpJson::from_line(&line).unwrap();
        let mut out = Vec::new();
        j.encode(&mut out).map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
        prop_assert_eq!(out, bytes);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(t) = Tlp::parse(&b) {
            prop_assert_eq!(encode(&t), b);
        }
    }

    #[test]
    fn decode_never_panics_on_corrupted_tlps(o in arb_tlp(), pos in any::<usize>(), mask in 1u8.., cut in any::<bool>()) {
        let mut b = encode(&o.tlp());
        if cut {
            b.truncate(pos % (b.len() + 1));
        } else {
            let i = pos % b.len();
            b[i] ^= mask;
        }
        if let Ok(t) = Tlp::parse(&b) {
            prop_assert_eq!(encode(&t), b);
        }
    }

    #[test]
    fn split_helpers_never_panic(address in any::<u64>(), len in any::<u32>(), length_dw in 0u16..=1024, first in any::<u8>(), last in any::<u8>(), shift in 6u32..=13) {
        let r = covered_bytes(address, length_dw, first, last);
        prop_assert!(r.len <= u32::from(length_dw.max(1)) * 4);
        let _ = byte_enables(address, len % 4097);
        if let Ok(it) = SplitRequest::new(address, u64::from(len % 70000), 1 << shift) {
            prop_assert!(it.take(1000).count() <= 1000);
        }
        if let Ok(it) = SplitCompletion::new(address, len % 5000, 1 << (shift % 2 + 6), 1 << shift) {
            prop_assert!(it.take(1000).count() <= 1000);
        }
    }

    #[test]
    fn byte_enables_and_covered_bytes_are_inverse(address in any::<u64>(), len in 0u32..=4096) {
        let address = address & 0xffff_ffff_ffff;
        let (dw, length_dw, first, last) = byte_enables(address, len);
        prop_assert_eq!(dw % 4, 0);
        let r = covered_bytes(dw, length_dw, first, last);
        if len == 0 {
            prop_assert_eq!((r.len, length_dw, first), (0, 1, 0));
        } else {
            prop_assert_eq!((r.address, r.len), (address, len));
            prop_assert_eq!(u32::from(length_dw), ((address & 3) as u32 + len).div_ceil(4));
        }
    }

    #[test]
    fn split_request_covers_the_range_within_limits(address in any::<u32>(), len in 0u64..20000, shift in 7u32..=12) {
        let max = 1u32 << shift;
        let address = u64::from(address);
        let mut next = address;
        let mut pieces = 0;
        for c in SplitRequest::new(address, len, max).unwrap() {
            pieces += 1;
            prop_assert_eq!(c.bytes.address, next);
            prop_assert_eq!(u64::from(c.offset), next - address);
            prop_assert!(u32::from(c.length_dw) * 4 <= max);
            let end = c.dw_address + u64::from(c.length_dw) * 4;
            prop_assert!(c.dw_address >> 12 == (end - 1) >> 12, "crosses 4 KiB: {:?}", c);
            let cov = covered_bytes(c.dw_address, c.length_dw, c.first_be, c.last_be);
            if len == 0 {
                // A zero-length read: 1 DW, no byte enabled.
                prop_assert_eq!((cov.len, c.length_dw, c.first_be, c.last_be), (0, 1, 0, 0));
            } else {
                prop_assert_eq!(cov, c.bytes);
            }
            next += u64::from(c.bytes.len);
        }
        prop_assert_eq!(next, address + len);
        prop_assert!(pieces >= 1);
    }

    #[test]
    fn split_completion_follows_rcb_rules(address in any::<u32>(), len in 0u32..=4096, rcb128 in any::<bool>(), shift in 7u32..=12) {
        let address = u64::from(address);
        // One read request never crosses 4 KiB.
        let len = len.min((0x1000 - (address & 0xfff)) as u32);
        let rcb = if rcb128 { 128 } else { 64 };
        let mps = 1u32 << shift;
        let chunks: Vec<_> = SplitCompletion::new(address, len, rcb, mps).unwrap().collect();
        prop_assert!(!chunks.is_empty());
        let mut next = address;
        let mut remaining = len;
        for (i, c) in chunks.iter().enumerate() {
            prop_assert!(u32::from(c.length_dw) * 4 <= mps);
            prop_assert_eq!(u64::from(c.lower_address), next & 0x7f);
            if len == 0 {
                prop_assert_eq!((c.byte_count, c.length_dw), (1, 1));
                break;
            }
            prop_assert_eq!(u32::from(c.byte_count), remaining);
            let end = next + u64::from(c.len);
            if i + 1 < chunks.len() {
                prop_assert_eq!(end % u64::from(rcb), 0, "non-final completion must end on the RCB");
            }
            prop_assert_eq!(u64::from(c.length_dw) * 4, ((end + 3) & !3) - (next & !3));
            remaining -= c.len;
            next = end;
        }
        prop_assert_eq!(remaining, 0);
    }
}

/// Parse what a constructor built, check that it re-encodes to the same bytes, and return it.
fn parsed(b: &[u8]) -> Result<Tlp<'_>, TestCaseError> {
    let t = Tlp::parse(b).map_err(|e| TestCaseError::fail(format!("{e}: {b:02x?}")))?;
    prop_assert_eq!(encode(&t), b.to_vec());
    Ok(t)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn built_memory_requests_parse_back(
        address in any::<u64>(), len in 0usize..=4096, rid in any::<u16>(), tag in 0u16..1024,
        seed in any::<u8>(), low in any::<bool>(),
    ) {
        let address = if low { address & 0xffff_ffff } else { address };
        let mut buf = [0u8; build::MAX_LEN];
        let crosses = len > 0 && (address & 0xfff) + len as u64 > 0x1000;
        let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
        for write in [false, true] {
            let r = if write {
                build::mem_write(&mut buf, Bdf(rid), address, &data)
            } else {
                build::mem_read(&mut buf, Bdf(rid), tag, address, len as u32)
            };
            if crosses {
                prop_assert_eq!(r, Err(BuildError::Crosses4K { address, len }));
                continue;
            }
            let n = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let t = parsed(&buf[..n])?;
            let TlpHeader::Mem(m) = t.header else { return Err(TestCaseError::fail("not memory")) };
            prop_assert_eq!(m.op, if write { MemOp::Write } else { MemOp::Read });
            prop_assert_eq!(m.requester_id, Bdf(rid));
            // §2.2.4.1: the 32-bit format exactly when the address is below 4 GiB.
            prop_assert_eq!(m.addr64, address & !3 > 0xffff_ffff);
            let cov = covered_bytes(m.address, t.length_dw, m.first_be, m.last_be);
            prop_assert_eq!(cov.len as usize, len);
            if len > 0 {
                prop_assert_eq!(cov.address, address);
            }
            if write {
                let lead = (address & 3) as usize;
                prop_assert_eq!(&t.data[lead..lead + len], &data[..]);
                prop_assert!(t.data[..lead].iter().chain(&t.data[lead + len..]).all(|b| *b == 0));
            } else {
                prop_assert_eq!(m.tag, tag);
            }
        }
    }

    #[test]
    fn built_config_requests_and_interrupts_parse_back(
        target in any::<u16>(), reg in 0u16..1024, be in 0u8..16, tag in 0u16..1024,
        type1 in any::<bool>(), value in any::<[u8; 4]>(), pin in 0u8..4, assert in any::<bool>(),
        msi_addr in any::<u64>(), msi_data in any::<u32>(),
    ) {
        let mut buf = [0u8; build::MAX_LEN];
        let cfg = build::Cfg { requester: Bdf(0), tag, target: Bdf(target), type1, register: reg * 4, first_be: be };
        for write in [false, true] {
            let n = if write { cfg.write(&mut buf, value) } else { cfg.read(&mut buf) }.unwrap();
            let t = parsed(&buf[..n])?;
            let TlpHeader::Cfg(c) = t.header else { return Err(TestCaseError::fail("not cfg")) };
            prop_assert_eq!((c.write, c.type1, c.target, c.register, c.first_be, c.tag), (write, type1, Bdf(target), reg * 4, be, tag));
            prop_assert_eq!(t.data, if write { &value[..] } else { &[][..] });
        }
        let n = build::intx(&mut buf, Bdf(target), pin, assert).unwrap();
        let t = parsed(&buf[..n])?;
        let TlpHeader::Msg(m) = t.header else { return Err(TestCaseError::fail("not a message")) };
        prop_assert_eq!(m.code, if assert { 0x20 } else { 0x24 } + pin);
        let msi_addr = msi_addr & !3;
        let n = build::msi(&mut buf, Bdf(target), msi_addr, msi_data).unwrap();
        let t = parsed(&buf[..n])?;
        prop_assert_eq!(t.data, &msi_data.to_le_bytes()[..]);
        let TlpHeader::Mem(m) = t.header else { return Err(TestCaseError::fail("not memory")) };
        prop_assert_eq!((m.address, m.first_be, m.last_be), (msi_addr, 0xf, 0));
    }

    #[test]
    fn built_read_completions_reassemble_the_data(
        address in any::<u32>(), len in 0usize..=4096, rcb128 in any::<bool>(), shift in 7u32..=12,
        tag in 0u16..1024, tc in 0u8..8, seed in any::<u8>(),
    ) {
        let address = u64::from(address);
        let len = len.min((0x1000 - (address & 0xfff)) as usize);
        let (rcb, mps) = (if rcb128 { 128 } else { 64 }, 1u32 << shift);
        let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
        let cpl = build::Cpl { tc, ..build::Cpl::new(Bdf(0x100), Bdf(0), tag, CplStatus::Sc) };
        let mut split = cpl.read_completions(address, &data, rcb, mps).unwrap();
        let mut buf = [0u8; build::MAX_LEN];
        let mut got = Vec::new();
        let mut next = address;
        while let Some(r) = split.emit_next(&mut buf) {
            let n = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let t = parsed(&buf[..n])?;
            let TlpHeader::Cpl(c) = t.header else { return Err(TestCaseError::fail("not a completion")) };
            prop_assert_eq!((c.tag, c.status, t.tc), (tag, CplStatus::Sc, tc));
            prop_assert!(t.data.len() <= mps as usize);
            prop_assert_eq!(u64::from(c.lower_address), next & 0x7f);
            let lead = usize::from(c.lower_address & 3);
            if len == 0 {
                prop_assert_eq!((c.byte_count, t.data.len()), (1, 4));
                break;
            }
            prop_assert_eq!(usize::from(c.byte_count), len - got.len());
            let take = (t.data.len() - lead).min(usize::from(c.byte_count));
            got.extend_from_slice(&t.data[lead..lead + take]);
            next = address + got.len() as u64;
            if got.len() < len {
                prop_assert_eq!(next % u64::from(rcb), 0, "non-final completion must end on the RCB");
            }
        }
        prop_assert_eq!(got, data);
    }
}

/// The generator above must reach every TLP kind, or the identity property proves little.
#[test]
fn generator_covers_every_kind() {
    use proptest::strategy::ValueTree;
    use std::collections::BTreeSet;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = arb_tlp();
    let mut seen = BTreeSet::new();
    let (mut with_prefix, mut with_td, mut with_th) = (false, false, false);
    for _ in 0..5000 {
        let o = strategy.new_tree(&mut runner).unwrap().current();
        let t = o.tlp();
        seen.insert(t.name());
        with_prefix |= !t.prefixes.is_empty();
        with_td |= t.td;
        with_th |= t.th;
    }
    for name in [
        "MRd32",
        "MRd64",
        "MRdLk32",
        "MRdLk64",
        "MWr32",
        "MWr64",
        "DMWr32",
        "DMWr64",
        "IORd",
        "IOWr",
        "CfgRd0",
        "CfgWr0",
        "CfgRd1",
        "CfgWr1",
        "Cpl",
        "CplD",
        "CplLk",
        "CplDLk",
        "Msg",
        "MsgD",
        "FetchAdd32",
        "FetchAdd64",
        "Swap32",
        "Swap64",
        "CAS32",
        "CAS64",
        "CAS128",
    ] {
        assert!(seen.contains(name), "generator never produced {name}");
    }
    assert!(with_prefix && with_td && with_th);
}
