//! The host's TLPs: building the requests and completions the root complex sends, and
//! sorting what comes up from a card (PCIe Base Spec §2.2.7 memory requests, §2.2.8 messages,
//! §2.2.9 completions), on top of the [`crate::tlp`] codec.
//!
//! Builders write into a caller buffer and return the length (no allocation); they are thin
//! wrappers over the constructors in [`crate::tlp::build`], shared with the endpoint, with the
//! root port as the requester. [`classify_up`] turns upstream bytes into an [`Upstream`] that
//! borrows its payload.

use crate::tlp::build::{self, Cfg, Cpl};
use crate::tlp::message::code;
use crate::tlp::{Bdf, CplStatus, MemOp, Tlp, TlpHeader};

/// Largest TLP the host builds: 4 DW header + 4096 bytes of payload + digest.
pub const MAX_TLP: usize = 16 + 4096 + 4;

/// Bus/device/function of the virtual root port, the requester of every host request.
pub const ROOT_PORT: Bdf = Bdf::new(0, 0, 0);

/// Errors building a TLP (only from inconsistent arguments, never from the network).
pub use crate::tlp::build::BuildError;

/// CfgRd0/CfgWr0 of one DW at `register` (a DW-aligned byte offset, 0..=0xffc) of `target`.
pub fn cfg(
    buf: &mut [u8],
    target: Bdf,
    register: u16,
    tag: u16,
    first_be: u8,
    write: Option<[u8; 4]>,
) -> Result<usize, BuildError> {
    let c = Cfg {
        requester: ROOT_PORT,
        tag,
        target,
        type1: false,
        register,
        first_be,
    };
    match write {
        Some(data) => c.write(buf, data),
        None => c.read(buf),
    }
}

/// MRd of `len` bytes (0..=4096, not crossing 4 KiB) at `address`.
pub fn mem_read(
    buf: &mut [u8],
    requester: Bdf,
    address: u64,
    len: u32,
    tag: u16,
) -> Result<usize, BuildError> {
    build::mem_read(buf, requester, tag, address, len)
}

/// MWr of `data` (0..=4096 bytes, not crossing 4 KiB) at `address`; the payload is
/// assembled straight in `buf`.
pub fn mem_write(
    buf: &mut [u8],
    requester: Bdf,
    address: u64,
    data: &[u8],
) -> Result<usize, BuildError> {
    build::mem_write(buf, requester, address, data)
}

/// A completion the host returns for a card's MRd. `data` is the DW-aligned payload (empty
/// for a completion without data, e.g. Unsupported Request); `byte_count` is 1..=4096.
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
    let c = Cpl::new(completer, requester, tag, status);
    if data.is_empty() {
        c.without_data(buf, byte_count, lower_address)
    } else {
        c.with_data(buf, byte_count, lower_address, data)
    }
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
        TlpHeader::Cpl(c) => Upstream::Completion {
            completer: c.completer_id,
            tag: c.tag,
            status: c.status,
            byte_count: c.byte_count,
            lower_address: c.lower_address,
            data: t.data,
        },
        TlpHeader::Mem(m) if m.op == MemOp::Read => {
            let r = crate::tlp::split::covered_bytes(m.address, t.length_dw, m.first_be, m.last_be);
            Upstream::MemRead {
                requester: m.requester_id,
                tag: m.tag,
                address: r.address,
                len: r.len,
            }
        }
        TlpHeader::Mem(m) if m.op == MemOp::Write => {
            let r = crate::tlp::split::covered_bytes(m.address, t.length_dw, m.first_be, m.last_be);
            let skip = (r.address - m.address) as usize;
            let data = t.data.get(skip..skip + r.len as usize).unwrap_or(&[]);
            Upstream::MemWrite {
                requester: m.requester_id,
                address: r.address,
                data,
            }
        }
        TlpHeader::Msg(msg) => match msg.code {
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

/// An Assert_INTA / Deassert_INTA message as a card sends it (used by tests and fake
/// completers).
pub fn intx(buf: &mut [u8], requester: Bdf, assert: bool) -> Result<usize, BuildError> {
    build::intx(buf, requester, 0, assert)
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
        let n = mem_write(&mut b, ROOT_PORT, 0x1001, b"abc").unwrap();
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
