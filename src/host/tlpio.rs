//! The host's TLPs: building the requests and completions the root complex sends, and
//! sorting what comes up from a card (PCIe Base Spec §2.2.7 memory requests, §2.2.8 messages,
//! §2.2.9 completions), on top of the [`crate::tlp`] codec.
//!
//! Builders write into a caller buffer and return the length (no allocation). [`classify_up`]
//! turns upstream bytes into an [`Upstream`] that borrows its payload.

use crate::tlp::message::code;
use crate::tlp::{
    Attr, Bdf, CfgRequest, Completion, CplStatus, Header, MemOp, MemRequest, MsgRouting, Prefixes,
    Tlp,
};

/// Largest TLP the host builds: 4 DW header + 4096 bytes of payload + digest.
pub const MAX_TLP: usize = 16 + 4096 + 4;

/// Bus/device/function of the virtual root port, the requester of every host request.
pub const ROOT_PORT: Bdf = Bdf::new(0, 0, 0);

fn tlp<'a>(length_dw: u16, header: Header, data: &'a [u8]) -> Tlp<'a> {
    Tlp {
        prefixes: Prefixes::NONE,
        tc: 0,
        attr: Attr::default(),
        th: false,
        td: false,
        ep: false,
        at: 0,
        ln: false,
        length_dw,
        header,
        data,
    }
}

/// Errors building a TLP (only from inconsistent arguments, never from the network).
pub type BuildError = crate::tlp::Error;

/// CfgRd0/CfgWr0 of one DW at `register` (DW-aligned byte offset) of `target`.
pub fn cfg(
    buf: &mut [u8],
    target: Bdf,
    register: u16,
    tag: u16,
    first_be: u8,
    write: Option<[u8; 4]>,
) -> Result<usize, BuildError> {
    let data = write.unwrap_or([0; 4]);
    let h = Header::Cfg(CfgRequest {
        write: write.is_some(),
        type1: false,
        requester_id: ROOT_PORT,
        tag,
        first_be,
        last_be: 0,
        target,
        register: register & !3,
    });
    let payload: &[u8] = if write.is_some() { &data } else { &[] };
    tlp(1, h, payload).emit(buf)
}

/// MRd of `len` bytes (1..=4096, not crossing 4 KiB) at `address`.
pub fn mem_read(
    buf: &mut [u8],
    requester: Bdf,
    address: u64,
    len: u32,
    tag: u16,
) -> Result<usize, BuildError> {
    let (dw_addr, length_dw, first_be, last_be) = crate::tlp::split::byte_enables(address, len);
    let h = Header::Mem(MemRequest {
        op: MemOp::Read,
        addr64: dw_addr > u64::from(u32::MAX),
        requester_id: requester,
        tag,
        first_be,
        last_be,
        address: dw_addr,
        ph: 0,
    });
    tlp(length_dw, h, &[]).emit(buf)
}

/// MWr of `data` (1..=4096 bytes, not crossing 4 KiB) at `address`. `scratch` holds the
/// DW-aligned payload.
pub fn mem_write(
    buf: &mut [u8],
    requester: Bdf,
    scratch: &mut [u8],
    address: u64,
    data: &[u8],
) -> Result<usize, BuildError> {
    let (dw_addr, length_dw, first_be, last_be) =
        crate::tlp::split::byte_enables(address, data.len() as u32);
    let skip = (address & 3) as usize;
    let n = length_dw as usize * 4;
    scratch[..n].fill(0);
    scratch[skip..skip + data.len()].copy_from_slice(data);
    let h = Header::Mem(MemRequest {
        op: MemOp::Write,
        addr64: dw_addr > u64::from(u32::MAX),
        requester_id: requester,
        tag: 0,
        first_be,
        last_be,
        address: dw_addr,
        ph: 0,
    });
    tlp(length_dw, h, &scratch[..n]).emit(buf)
}

/// A completion the host returns for a card's MRd. `data` is the DW-aligned payload (empty
/// for a completion without data, e.g. Unsupported Request).
#[allow(clippy::too_many_arguments)]
pub fn completion(
    buf: &mut [u8],
    completer: Bdf,
    requester: Bdf,
    tag: u16,
    status: CplStatus,
    byte_count: u16,
    lower_address: u8,
    data: &[u8],
) -> Result<usize, BuildError> {
    let h = Header::Cpl(Completion {
        with_data: !data.is_empty(),
        locked: false,
        completer_id: completer,
        status,
        bcm: false,
        byte_count,
        requester_id: requester,
        tag,
        lower_address: lower_address & 0x7f,
    });
    // Length is reserved (zero on the wire, which the codec spells 1024) without data.
    let length_dw = if data.is_empty() {
        1024
    } else {
        (data.len() / 4) as u16
    };
    tlp(length_dw, h, data).emit(buf)
}

/// What a card sent upstream, as the host acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream<'a> {
    /// A completion for one of the host's requests.
    Completion {
        /// Completer (the card).
        completer: Bdf,
        /// Tag of the host's request.
        tag: u16,
        /// Status.
        status: CplStatus,
        /// Remaining bytes, this completion's included.
        byte_count: u16,
        /// Lower address bits.
        lower_address: u8,
        /// DW-aligned payload.
        data: &'a [u8],
    },
    /// The card reads host memory (DMA).
    MemRead {
        /// The card.
        requester: Bdf,
        /// Its tag.
        tag: u16,
        /// First byte.
        address: u64,
        /// Bytes.
        len: u32,
    },
    /// The card writes host memory (DMA or an MSI/MSI-X message).
    MemWrite {
        /// The card.
        requester: Bdf,
        /// First byte written.
        address: u64,
        /// The bytes written (byte enables applied).
        data: &'a [u8],
    },
    /// Assert_INTx / Deassert_INTx.
    Intx {
        /// The card.
        requester: Bdf,
        /// Asserted (true) or deasserted.
        assert: bool,
        /// 0 = INTA … 3 = INTD.
        pin: u8,
    },
    /// Anything else (other messages, I/O or config requests toward the host…).
    Other(&'static str),
}

/// Parse upstream TLP bytes.
pub fn classify_up(bytes: &[u8]) -> Result<Upstream<'_>, crate::tlp::Error> {
    let t = Tlp::parse(bytes)?;
    Ok(match t.header {
        Header::Cpl(c) => Upstream::Completion {
            completer: c.completer_id,
            tag: c.tag,
            status: c.status,
            byte_count: c.byte_count,
            lower_address: c.lower_address,
            data: t.data,
        },
        Header::Mem(m) if m.op == MemOp::Read => {
            let r = crate::tlp::split::covered_bytes(m.address, t.length_dw, m.first_be, m.last_be);
            Upstream::MemRead {
                requester: m.requester_id,
                tag: m.tag,
                address: r.address,
                len: r.len,
            }
        }
        Header::Mem(m) if m.op == MemOp::Write => {
            let r = crate::tlp::split::covered_bytes(m.address, t.length_dw, m.first_be, m.last_be);
            let skip = (r.address - m.address) as usize;
            let data = t.data.get(skip..skip + r.len as usize).unwrap_or(&[]);
            Upstream::MemWrite {
                requester: m.requester_id,
                address: r.address,
                data,
            }
        }
        Header::Msg(msg) => match msg.code {
            c @ code::ASSERT_INTA..=0x23 => Upstream::Intx {
                requester: msg.requester_id,
                assert: true,
                pin: c - code::ASSERT_INTA,
            },
            c @ code::DEASSERT_INTA..=0x27 => Upstream::Intx {
                requester: msg.requester_id,
                assert: false,
                pin: c - code::DEASSERT_INTA,
            },
            _ => Upstream::Other(t.name()),
        },
        _ => Upstream::Other(t.name()),
    })
}

/// An INTx message as a card sends it (used by tests and fake completers).
pub fn intx(buf: &mut [u8], requester: Bdf, assert: bool) -> Result<usize, BuildError> {
    let h = Header::Msg(crate::tlp::Message {
        with_data: false,
        routing: MsgRouting::Local,
        requester_id: requester,
        tag: 0,
        code: if assert {
            code::ASSERT_INTA
        } else {
            code::DEASSERT_INTA
        },
        fields: [0; 8],
    });
    tlp(1024, h, &[]).emit(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_requests_parse_back() {
        let mut b = [0u8; MAX_TLP];
        let n = mem_read(&mut b, ROOT_PORT, 0x1_0000_0002, 6, 5).unwrap();
        let t = Tlp::parse(&b[..n]).unwrap();
        assert_eq!(t.name(), "MRd64");
        assert_eq!(t.length_dw, 2);
        let mut s = [0u8; 4100];
        let n = mem_write(&mut b, ROOT_PORT, &mut s, 0x1001, b"abc").unwrap();
        let t = Tlp::parse(&b[..n]).unwrap();
        assert_eq!(t.data, &[0, b'a', b'b', b'c']);
        let n = cfg(&mut b, Bdf::new(1, 0, 0), 0x10, 9, 0xf, Some([1, 2, 3, 4])).unwrap();
        assert_eq!(Tlp::parse(&b[..n]).unwrap().name(), "CfgWr0");
    }

    #[test]
    fn upstream_kinds() {
        let card = Bdf::new(1, 0, 0);
        let mut b = [0u8; MAX_TLP];
        let n = intx(&mut b, card, true).unwrap();
        assert_eq!(
            classify_up(&b[..n]).unwrap(),
            Upstream::Intx {
                requester: card,
                assert: true,
                pin: 0
            }
        );
        let n = completion(
            &mut b,
            card,
            ROOT_PORT,
            3,
            CplStatus::Sc,
            4,
            0,
            &[1, 2, 3, 4],
        )
        .unwrap();
        assert!(matches!(
            classify_up(&b[..n]).unwrap(),
            Upstream::Completion {
                tag: 3,
                data: [1, 2, 3, 4],
                ..
            }
        ));
        assert!(classify_up(&[0xff; 3]).is_err());
    }
}
