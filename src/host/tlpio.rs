//! The host's TLPs: building the requests and completions the root complex sends, and
//! sorting what comes up from a card (PCIe Base Spec §2.2.7 memory requests, §2.2.8 messages,
//! §2.2.9 completions), on top of the [`crate::tlp`] codec.
//!
//! Every TLP is built by the constructors in [`crate::tlp::build`], shared with the endpoint
//! (memory requests, completions, INTx); [`cfg()`] only fixes the root port as the requester of
//! a configuration request. [`classify_up`] turns upstream bytes into an [`Upstream`] that
//! borrows its payload.

use crate::sync::MutexExt;
use crate::tlp::build::Cfg;
use crate::tlp::message;
use crate::tlp::{Bdf, CplStatus, MemOp, Tlp, TlpHeader};
use bytes::{Bytes, BytesMut};
use std::sync::Mutex;

/// Largest TLP the host builds: 4 DW header + 4096 bytes of payload + digest.
pub const MAX_TLP: usize = 16 + 4096 + 4;

/// Bytes of one [`TlpArena`] chunk.
const ARENA_CHUNK: usize = 256 * 1024;

/// Where a downlink copies the TLPs it is handed (`&[u8]`, built in a caller's buffer) into
/// the [`Bytes`] the transport keeps until the peer acknowledges them: consecutive TLPs are
/// split off one chunk, and a chunk is reused once every TLP cut from it is gone, so a steady
/// stream of TLPs allocates about once per 256 KiB instead of once per TLP. Shared by the
/// threads that send (a driver, the link's watcher); the lock is held for one copy.
#[derive(Debug, Default)]
pub struct TlpArena(Mutex<BytesMut>);

impl TlpArena {
    /// `tlp` as `Bytes` of its own.
    pub fn copy(&self, tlp: &[u8]) -> Bytes {
        let mut a = self.0.lock_or_recover();
        if a.capacity() < tlp.len() {
            // Reclaims the chunk when nothing cut from it is alive any more.
            a.reserve(ARENA_CHUNK.max(tlp.len()));
        }
        a.extend_from_slice(tlp);
        a.split().freeze()
    }
}

/// Bus/device/function of the virtual root port, the requester of every host request.
pub const ROOT_PORT: Bdf = Bdf::new(0, 0, 0);

/// Errors building a TLP (only from inconsistent arguments, never from the network).
pub use crate::tlp::build::BuildError;

/// CfgRd0/CfgWr0 of one DW at `register` (a DW-aligned byte offset, 0..=0xffc) of `target`,
/// from the root port.
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
        TlpHeader::Mem(m) if matches!(m.op, MemOp::Read | MemOp::Write) => {
            let r = crate::tlp::split::covered_bytes(m.address, t.length_dw, m.first_be, m.last_be);
            if m.op == MemOp::Read {
                Upstream::MemRead {
                    requester: m.requester_id,
                    tag: m.tag,
                    address: r.address,
                    len: r.len,
                }
            } else {
                let skip = (r.address - m.address) as usize;
                Upstream::MemWrite {
                    requester: m.requester_id,
                    address: r.address,
                    data: t.data.get(skip..skip + r.len as usize).unwrap_or(&[]),
                }
            }
        }
        TlpHeader::Msg(msg) => match message::intx(msg.code) {
            Some((assert, pin)) => Upstream::Intx {
                requester: msg.requester_id,
                assert,
                pin,
            },
            None => Upstream::Other(t.name()),
        },
        _ => Upstream::Other(t.name()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlp::build::{self, Cpl};

    #[test]
    fn host_requests_parse_back() {
        let mut b = [0u8; MAX_TLP];
        let n = cfg(&mut b, Bdf::new(1, 0, 0), 0x10, 9, 0xf, Some([1, 2, 3, 4])).unwrap();
        let t = Tlp::parse(&b[..n]).unwrap();
        assert_eq!(t.name(), "CfgWr0");
        let TlpHeader::Cfg(c) = t.header else {
            panic!("not a configuration request")
        };
        assert_eq!((c.requester_id, c.tag, c.register), (ROOT_PORT, 9, 0x10));
        assert_eq!(t.data, &[1, 2, 3, 4]);
    }

    #[test]
    fn card_memory_requests_classify_with_their_byte_enables() {
        let card = Bdf::new(1, 0, 0);
        let mut b = [0u8; MAX_TLP];
        let n = build::mem_read(&mut b, card, 5, 0x1_0000_0002, 6).unwrap();
        assert_eq!(
            classify_up(&b[..n]).unwrap(),
            Upstream::MemRead {
                requester: card,
                tag: 5,
                address: 0x1_0000_0002,
                len: 6
            }
        );
        let n = build::mem_write(&mut b, card, 0x1001, b"abc").unwrap();
        assert_eq!(
            classify_up(&b[..n]).unwrap(),
            Upstream::MemWrite {
                requester: card,
                address: 0x1001,
                data: b"abc"
            }
        );
    }

    #[test]
    fn upstream_kinds() {
        let card = Bdf::new(1, 0, 0);
        let mut b = [0u8; MAX_TLP];
        for (pin, assert) in [(0, true), (3, true), (2, false)] {
            let n = build::intx(&mut b, card, pin, assert).unwrap();
            assert_eq!(
                classify_up(&b[..n]).unwrap(),
                Upstream::Intx {
                    requester: card,
                    assert,
                    pin
                }
            );
        }
        let n = Cpl::new(card, ROOT_PORT, 3, CplStatus::Sc)
            .emit(&mut b, 4, 0, &[1, 2, 3, 4])
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
