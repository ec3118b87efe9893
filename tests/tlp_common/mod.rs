//! Shared by the TLP test binaries: a generator of valid TLPs of every kind, built from raw
//! random numbers so that proptest can shrink them.

#![allow(dead_code)]

use pcietun::tlp::message::{code, rule_for, Payload, RoutingSet, PCI_SIG_VDMS, RULES};
use pcietun::tlp::{
    Attr, Bdf, CfgRequest, Completion, CplStatus, IoRequest, MemOp, MemRequest, Message, Prefixes,
    Tlp, TlpHeader,
};
use proptest::prelude::*;

/// Everything a TLP owns, generated from raw random numbers; [`Owned::tlp`] borrows it.
#[derive(Debug, Clone)]
pub struct Owned {
    pub prefixes: Vec<u8>,
    pub data: Vec<u8>,
    pub tlp_header: TlpHeader,
    pub dw0: (u8, Attr, bool, bool, bool, u8, bool, u16),
}

impl Owned {
    pub fn tlp(&self) -> Tlp<'_> {
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
pub fn build(sel: u8, r: [u64; 6], n_local: u8, e2e: Vec<u32>) -> Owned {
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
            TlpHeader::Mem(MemRequest {
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
            TlpHeader::Mem(MemRequest {
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
                TlpHeader::Io(IoRequest {
                    write,
                    requester_id: rid,
                    tag,
                    first_be: (r[2] & 0xf) as u8,
                    last_be: 0,
                    address: (r[0] as u32) & !3,
                })
            } else {
                TlpHeader::Cfg(CfgRequest {
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
            TlpHeader::Cpl(Completion {
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
        // Messages: known codes (and PCI-SIG-Defined VDMs) follow their rule in
        // `message::RULES`; other codes take any routing and payload.
        _ => {
            let mut fields = r[3].to_be_bytes();
            let code = match r[2] % 4 {
                0 => (r[2] >> 2) as u8,
                1 if bit(9) => {
                    // A PCI-SIG-Defined VDM: Vendor ID 0001h, one of the named subtypes.
                    let rule = &PCI_SIG_VDMS[(r[2] >> 8) as usize % PCI_SIG_VDMS.len()];
                    fields[2..4].copy_from_slice(&code::PCI_SIG_VENDOR_ID.to_be_bytes());
                    fields[4] = rule.subtype.unwrap();
                    rule.code
                }
                _ => RULES[(r[2] >> 8) as usize % RULES.len()].code,
            };
            let rule = rule_for(code, &fields);
            let routings = rule.map_or(RoutingSet::ANY, |m| m.routings);
            let routing = routings
                .iter()
                .nth((r[1] % routings.len() as u64) as usize)
                .unwrap();
            let payload = rule.map_or(Payload::Any, |m| m.payload);
            if rule.is_some_and(|m| m.tc0) {
                tc = 0;
            }
            let any_len = (r[1] >> 8) as u16 % 16 + 1;
            let (with_data, len) = match payload {
                Payload::None => (false, None),
                Payload::Dw(n) => (true, Some(n)),
                Payload::NoneOrDw(n) => (bit(8), Some(n)),
                Payload::Any => (bit(8), Some(any_len)),
            };
            length_dw = (r[1] >> 8) as u16 % 1024 + 1;
            if with_data {
                length_dw = len.unwrap_or(any_len);
                data_dw = length_dw.into();
            }
            TlpHeader::Msg(Message {
                with_data,
                routing,
                requester_id: rid,
                tag,
                code,
                fields,
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

pub fn arb_tlp() -> impl Strategy<Value = Owned> {
    (
        any::<u8>(),
        any::<[u64; 6]>(),
        any::<u8>(),
        proptest::collection::vec(any::<u32>(), 0..=4),
    )
        .prop_map(|(sel, r, nl, e2e)| build(sel, r, nl, e2e))
}
