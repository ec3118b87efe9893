//! Property tests for the TLP codec: encode∘decode is the identity on every valid TLP (across
//! every kind, prefix mix and header flag), decoding arbitrary or corrupted bytes never
//! panics and whatever it accepts re-encodes to the same bytes, the JSON form round-trips,
//! `classify` agrees with the full decoder, and the split helpers keep their invariants.

use pcietun::tlp::json::TlpJson;
use pcietun::tlp::message::{code, required_routing};
use pcietun::tlp::split::{byte_enables, covered_bytes, SplitCompletion, SplitRequest};
use pcietun::tlp::{
    classify, Attr, Bdf, CfgRequest, Completion, CplStatus, Header, IoRequest, MemOp, MemRequest,
    Message, MsgRouting, Prefixes, Tlp,
};
use proptest::prelude::*;

/// Everything a TLP owns, generated from raw random numbers; [`Owned::tlp`] borrows it.
#[derive(Debug, Clone)]
struct Owned {
    prefixes: Vec<u8>,
    data: Vec<u8>,
    tlp_header: Header,
    dw0: (u8, Attr, bool, bool, bool, u8, bool, u16),
}

impl Owned {
    fn tlp(&self) -> Tlp<'_> {
        let (tc, attr, th, td, ep, at, ln, length_dw) = self.dw0;
        Tlp {
            prefixes: Prefixes::new(&self.prefixes).expect("generated prefixes are valid"),
            tc,
            attr,
            th,
            td,
            ep,
            at,
            ln,
            length_dw,
            header: self.tlp_header,
            data: &self.data,
        }
    }
}

const FIRST: [u8; 4] = [0b1111, 0b1110, 0b1100, 0b1000];
const LAST: [u8; 4] = [0b0001, 0b0011, 0b0111, 0b1111];
const KNOWN_CODES: [u8; 27] = [
    code::UNLOCK,
    code::ATS_INVALIDATE_REQUEST,
    code::ATS_INVALIDATE_COMPLETION,
    code::PAGE_REQUEST,
    code::PRG_RESPONSE,
    code::LTR,
    code::OBFF,
    code::PM_ACTIVE_STATE_NAK,
    code::PM_PME,
    code::PME_TURN_OFF,
    code::PME_TO_ACK,
    0x20,
    0x21,
    0x22,
    0x23,
    0x24,
    0x25,
    0x26,
    0x27,
    code::ERR_COR,
    code::ERR_NONFATAL,
    code::ERR_FATAL,
    code::SET_SLOT_POWER_LIMIT,
    code::PTM_REQUEST,
    code::PTM_RESPONSE,
    code::VENDOR_DEFINED_0,
    code::VENDOR_DEFINED_1,
];

fn fill(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Build a valid TLP from a kind selector and random words.
fn build(sel: u8, r: [u64; 6], n_local: u8, e2e: Vec<u32>) -> Owned {
    let bit = |i: u32| r[5] >> i & 1 != 0;
    let mut tc = (r[4] & 7) as u8;
    let mut attr = Attr {
        ns: bit(0),
        ro: bit(1),
        ido: bit(2),
    };
    let mut th = bit(3);
    let td = bit(4);
    let ep = bit(5);
    let mut at = (r[4] >> 3 & 3) as u8;
    let ln = bit(6);
    let tag = (r[4] >> 8 & 0x3ff) as u16;
    let rid = Bdf((r[4] >> 20) as u16);
    let mut length_dw: u16;
    let mut data_dw = 0usize;
    let header = match sel % 12 {
        // MRd, MRdLk, MWr, DMWr
        k @ 0..=3 => {
            let op = [
                MemOp::Read,
                MemOp::ReadLocked,
                MemOp::Write,
                MemOp::DeferrableWrite,
            ][k as usize];
            let addr64 = bit(7);
            let address = if addr64 {
                r[0] & !3
            } else {
                r[0] & 0xffff_fffc
            };
            let room = ((0x1000 - (address & 0xfff)) / 4) as u16;
            let want = if bit(8) {
                (r[1] % 1024) as u16 + 1
            } else {
                (r[1] % 32) as u16 + 1
            };
            length_dw = want.min(room);
            let qw2 = length_dw == 2 && address & 7 == 0;
            let (first_be, last_be) = if length_dw == 1 {
                ((r[2] & 0xf) as u8, 0)
            } else if qw2 {
                ((r[2] % 15) as u8 + 1, (r[2] >> 8) as u8 % 15 + 1)
            } else {
                (FIRST[(r[2] & 3) as usize], LAST[(r[2] >> 2 & 3) as usize])
            };
            let (first_be, last_be) = if th && matches!(op, MemOp::Read | MemOp::ReadLocked) {
                // The BE byte carries ST[7:0].
                ((r[3] & 0xf) as u8, (r[3] >> 4 & 0xf) as u8)
            } else {
                (first_be, last_be)
            };
            if matches!(op, MemOp::Write | MemOp::DeferrableWrite) {
                data_dw = length_dw.into();
            }
            Header::Mem(MemRequest {
                op,
                addr64,
                requester_id: rid,
                tag,
                first_be,
                last_be,
                address,
                ph: if th { (r[3] >> 8 & 3) as u8 } else { 0 },
            })
        }
        // AtomicOps
        4 => {
            let (op, len) = [
                (MemOp::FetchAdd, 1u16),
                (MemOp::FetchAdd, 2),
                (MemOp::Swap, 1),
                (MemOp::Swap, 2),
                (MemOp::Cas, 2),
                (MemOp::Cas, 4),
                (MemOp::Cas, 8),
            ][(r[1] % 7) as usize];
            let operand = if op == MemOp::Cas {
                len as u64 * 2
            } else {
                len as u64 * 4
            };
            let addr64 = bit(7);
            let address = if addr64 { r[0] } else { r[0] & 0xffff_ffff } & !(operand - 1);
            length_dw = len;
            data_dw = len.into();
            Header::Mem(MemRequest {
                op,
                addr64,
                requester_id: rid,
                tag,
                first_be: (r[2] & 0xf) as u8,
                last_be: (r[2] >> 4 & 0xf) as u8,
                address,
                ph: if th { (r[3] & 3) as u8 } else { 0 },
            })
        }
        // IO, configuration
        k @ 5..=6 => {
            tc = 0;
            attr.ns = false;
            attr.ro = false;
            at = 0;
            th = false;
            length_dw = 1;
            let write = bit(7);
            if write {
                data_dw = 1;
            }
            if k == 5 {
                Header::Io(IoRequest {
                    write,
                    requester_id: rid,
                    tag,
                    first_be: (r[2] & 0xf) as u8,
                    last_be: 0,
                    address: (r[0] as u32) & !3,
                })
            } else {
                Header::Cfg(CfgRequest {
                    write,
                    type1: bit(8),
                    requester_id: rid,
                    tag,
                    first_be: (r[2] & 0xf) as u8,
                    last_be: 0,
                    target: Bdf(r[0] as u16),
                    register: ((r[1] & 0x3ff) * 4) as u16,
                })
            }
        }
        // Completions
        7..=8 => {
            let with_data = bit(7);
            length_dw = (r[1] % 1024) as u16 + 1;
            if with_data {
                length_dw = (r[1] % 64) as u16 + 1;
                data_dw = length_dw.into();
            }
            Header::Cpl(Completion {
                with_data,
                locked: bit(8),
                completer_id: Bdf(r[0] as u16),
                status: [CplStatus::Sc, CplStatus::Ur, CplStatus::Crs, CplStatus::Ca]
                    [(r[2] & 3) as usize],
                bcm: bit(9),
                byte_count: (r[2] >> 8) as u16 % 4096 + 1,
                requester_id: rid,
                tag,
                lower_address: (r[3] & 0x7f) as u8,
            })
        }
        // Messages
        _ => {
            let code = if bit(7) {
                KNOWN_CODES[(r[2] % KNOWN_CODES.len() as u64) as usize]
            } else {
                r[2] as u8
            };
            let routing = required_routing(code).unwrap_or(MsgRouting::ALL[(r[1] % 6) as usize]);
            let with_data = bit(8);
            length_dw = (r[1] >> 8) as u16 % 1024 + 1;
            if with_data {
                length_dw = (r[1] >> 8) as u16 % 16 + 1;
                data_dw = length_dw.into();
            }
            Header::Msg(Message {
                with_data,
                routing,
                requester_id: rid,
                tag,
                code,
                fields: r[3].to_be_bytes(),
            })
        }
    };
    let mut prefixes = Vec::new();
    for i in 0..n_local % 3 {
        let ty = [0x80u8, 0x8e, 0x8f][(r[0] as usize + i as usize) % 3];
        prefixes.extend_from_slice(&[ty, i, 2, 3]);
    }
    for dw in e2e {
        let ty = [0x90u8, 0x91, 0x9e, 0x9f][(dw >> 30) as usize];
        prefixes.extend_from_slice(&[ty, (dw >> 16) as u8, (dw >> 8) as u8, dw as u8]);
    }
    Owned {
        prefixes,
        data: fill(r[5], data_dw * 4),
        tlp_header: header,
        dw0: (tc, attr, th, td, ep, at, ln, length_dw),
    }
}

fn arb_tlp() -> impl Strategy<Value = Owned> {
    (
        any::<u8>(),
        any::<[u64; 6]>(),
        any::<u8>(),
        proptest::collection::vec(any::<u32>(), 0..=4),
    )
        .prop_map(|(sel, r, nl, e2e)| build(sel, r, nl, e2e))
}

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
            prop_assert_eq!(cov, c.bytes);
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
