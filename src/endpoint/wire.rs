//! The TLP fields the endpoint acts on, parsed from and emitted to wire bytes through
//! `crate::tlp`'s codec (PCIe Base Specification §2.2: common header §2.2.1, memory/IO/config
//! requests §2.2.7, completions §2.2.9, messages §2.2.8, 10-bit tags §2.2.6.2, byte enables
//! §2.2.5).
//!
//! This is the endpoint's narrow view of a TLP — exactly what routing a request to a function
//! and answering it needs — over the full codec, which does all validation: anything the codec
//! rejects (reserved types, wrong lengths, bad byte enables, 4 KiB crossings…) is a
//! [`TlpViewError`], never a panic. The `emit_*` functions are thin `Vec`-appending wrappers over
//! the constructors in [`crate::tlp::build`] (shared with the host); they return the same
//! errors, and leave `out` unchanged on one.

use thiserror::Error;

use crate::tlp::build::{self, BuildError};
pub use crate::tlp::Bdf;
use crate::tlp::{self, split, Attr, Tlp};

/// Why a TLP could not be parsed (or built) by the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TlpViewError {
    /// The codec rejected it.
    #[error(transparent)]
    Tlp(#[from] tlp::Error),
    /// A TLP kind the endpoint does not handle (Deferrable Memory Write).
    #[error("unsupported TLP kind {0}")]
    Unsupported(tlp::Kind),
    /// A TLP could not be built from the arguments given (see [`crate::tlp::build`]).
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Completion status (§2.2.9): the codec's own type.
pub use crate::tlp::CplStatus;

/// AtomicOp kinds (§6.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicKind {
    /// FetchAdd.
    FetchAdd,
    /// Unconditional Swap.
    Swap,
    /// Compare and Swap (operands: compare, then swap).
    Cas,
}

/// What kind of TLP a [`ParsedHeader`] is, with the kind-specific fields the endpoint routes
/// on (the codec's bare Fmt/Type is [`crate::tlp::Kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParsedKind {
    /// Memory read request (MRd / MRdLk).
    MemRead {
        /// Byte address of the first DW (bits 1:0 zero).
        addr: u64,
    },
    /// Memory write request.
    MemWrite {
        /// Byte address of the first DW.
        addr: u64,
    },
    /// IO read request.
    IoRead {
        /// Byte address of the DW.
        addr: u32,
    },
    /// IO write request.
    IoWrite {
        /// Byte address of the DW.
        addr: u32,
    },
    /// Configuration request (type 0 or 1).
    Config {
        /// Type 1 (to be forwarded by a bridge) rather than type 0.
        type1: bool,
        /// Write rather than read.
        write: bool,
        /// Target function.
        target: Bdf,
        /// DW-aligned register offset (0..4096).
        reg: u16,
    },
    /// AtomicOp request.
    Atomic {
        /// Which operation.
        op: AtomicKind,
        /// Byte address (naturally aligned to the operand size).
        addr: u64,
    },
    /// Completion, with or without data.
    Completion {
        /// The completer.
        completer: Bdf,
        /// Completion status.
        status: CplStatus,
        /// Remaining byte count including this completion's payload (1..=4096).
        byte_count: u16,
        /// Lower seven bits of the address of the first byte of this payload.
        lower_addr: u8,
    },
    /// Message (with or without data).
    Message {
        /// Routing subfield r\[2:0\].
        routing: u8,
        /// Message code.
        code: u8,
    },
}

/// A parsed TLP header, plus where its payload lies in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHeader {
    /// The kind and kind-specific fields.
    pub kind: ParsedKind,
    /// Requester ID (for completions: the original requester the completion routes to).
    pub requester: Bdf,
    /// Tag, 10 bits wide (T9/T8 included).
    pub tag: u16,
    /// Traffic class.
    pub tc: u8,
    /// Attributes: bit 0 No Snoop, bit 1 Relaxed Ordering, bit 2 ID-Based Ordering.
    pub attr: u8,
    /// Poisoned (EP).
    pub poisoned: bool,
    /// Length field in DW (1..=1024) of requests and of TLPs with data.
    pub length_dw: u16,
    /// First DW byte enables.
    pub first_be: u8,
    /// Last DW byte enables.
    pub last_be: u8,
    /// Payload byte range inside the parsed buffer (empty when there is none).
    pub payload: std::ops::Range<usize>,
}

fn attr_bits(a: Attr) -> u8 {
    u8::from(a.ns) | u8::from(a.ro) << 1 | u8::from(a.ido) << 2
}

fn attr_of(bits: u8) -> Attr {
    Attr {
        ns: bits & 1 != 0,
        ro: bits & 2 != 0,
        ido: bits & 4 != 0,
    }
}

impl ParsedHeader {
    /// Parse one TLP (exactly one: the buffer must hold nothing else).
    pub fn parse(b: &[u8]) -> Result<ParsedHeader, TlpViewError> {
        let t = Tlp::parse(b)?;
        let start = (t.data.as_ptr() as usize).saturating_sub(b.as_ptr() as usize);
        let payload = if t.data.is_empty() {
            0..0
        } else {
            start..start + t.data.len()
        };
        let (kind, requester, first_be, last_be) = match t.header {
            tlp::TlpHeader::Mem(m) => {
                let kind = match m.op {
                    tlp::MemOp::Read | tlp::MemOp::ReadLocked => {
                        ParsedKind::MemRead { addr: m.address }
                    }
                    tlp::MemOp::Write => ParsedKind::MemWrite { addr: m.address },
                    tlp::MemOp::FetchAdd => ParsedKind::Atomic {
                        op: AtomicKind::FetchAdd,
                        addr: m.address,
                    },
                    tlp::MemOp::Swap => ParsedKind::Atomic {
                        op: AtomicKind::Swap,
                        addr: m.address,
                    },
                    tlp::MemOp::Cas => ParsedKind::Atomic {
                        op: AtomicKind::Cas,
                        addr: m.address,
                    },
                    tlp::MemOp::DeferrableWrite => {
                        return Err(TlpViewError::Unsupported(tlp::Kind::DMWr))
                    }
                };
                (kind, m.requester_id, m.first_be, m.last_be)
            }
            tlp::TlpHeader::Io(r) => {
                let kind = if r.write {
                    ParsedKind::IoWrite { addr: r.address }
                } else {
                    ParsedKind::IoRead { addr: r.address }
                };
                (kind, r.requester_id, r.first_be, r.last_be)
            }
            tlp::TlpHeader::Cfg(c) => (
                ParsedKind::Config {
                    type1: c.type1,
                    write: c.write,
                    target: c.target,
                    reg: c.register,
                },
                c.requester_id,
                c.first_be,
                c.last_be,
            ),
            tlp::TlpHeader::Cpl(c) => (
                ParsedKind::Completion {
                    completer: c.completer_id,
                    status: c.status,
                    byte_count: c.byte_count,
                    lower_addr: c.lower_address,
                },
                c.requester_id,
                0,
                0,
            ),
            tlp::TlpHeader::Msg(m) => (
                ParsedKind::Message {
                    routing: m.routing as u8,
                    code: m.code,
                },
                m.requester_id,
                0,
                0,
            ),
        };
        Ok(ParsedHeader {
            kind,
            requester,
            tag: t.tag(),
            tc: t.tc,
            attr: attr_bits(t.attr),
            poisoned: t.ep,
            length_dw: t.length_dw,
            first_be,
            last_be,
            payload,
        })
    }

    /// Total bytes enabled by the byte enables and length (§2.2.5), i.e. the byte count of
    /// a memory read request.
    pub fn byte_count(&self) -> u32 {
        enabled_span(self.length_dw, self.first_be, self.last_be).1
    }

    /// Offset (0..4) of the first enabled byte within the first DW.
    pub fn first_byte_offset(&self) -> u32 {
        enabled_span(self.length_dw, self.first_be, self.last_be).0
    }
}

/// `(leading disabled bytes, span from first to last enabled byte)` of a request (§2.2.5).
/// A 1-DW request with no enabled bytes (a zero-length read) gives `(0, 0)`.
pub fn enabled_span(length_dw: u16, first_be: u8, last_be: u8) -> (u32, u32) {
    let r = split::covered_bytes(0, length_dw, first_be, last_be);
    (r.address as u32, r.len)
}

/// Byte enables and DW length for `len` bytes (1..=4096) at `addr`: `(first, last, length)`.
pub fn byte_enables(addr: u64, len: u32) -> (u8, u8, u16) {
    let (_, length_dw, first, last) = split::byte_enables(addr, len);
    (first, last, length_dw)
}

/// Append one TLP built by a `tlp::build` constructor to `out`; `room` bounds its length. On
/// an error `out` is left as it was.
fn append(
    out: &mut Vec<u8>,
    room: usize,
    f: impl FnOnce(&mut [u8]) -> Result<usize, BuildError>,
) -> Result<(), TlpViewError> {
    let start = out.len();
    out.resize(start + room, 0);
    match f(&mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e.into())
        }
    }
}

/// Room for a 4 DW header and `payload` bytes placed anywhere in their first DW.
const fn room(payload: usize) -> usize {
    16 + payload + 8
}

/// Append a completion to `out` (§2.2.9): a Cpl when `data` is empty, a CplD otherwise
/// (`data` is the payload, whole DWs). A `byte_count` of 0 is the wire encoding of 4096.
/// `attr` bits 0–2 are No Snoop, Relaxed Ordering and ID-Based Ordering.
#[allow(clippy::too_many_arguments)]
pub fn emit_completion(
    out: &mut Vec<u8>,
    completer: Bdf,
    requester: Bdf,
    tag: u16,
    status: CplStatus,
    byte_count: u16,
    lower_addr: u8,
    attr: u8,
    data: &[u8],
) -> Result<(), TlpViewError> {
    let bc = if byte_count == 0 { 4096 } else { byte_count };
    let cpl = build::Cpl {
        attr: attr_of(attr),
        ..build::Cpl::new(completer, requester, tag, status)
    };
    append(out, room(data.len()), |b| cpl.emit(b, bc, lower_addr, data))
}

/// Append the next CplD of a split read (see [`build::Cpl::read_completions`]) to `out`;
/// `None` once every completion is built.
pub fn emit_next_completion(
    out: &mut Vec<u8>,
    plan: &mut build::ReadCompletions<'_>,
) -> Option<Result<(), TlpViewError>> {
    let start = out.len();
    out.resize(start + build::MAX_LEN, 0);
    match plan.emit_next(&mut out[start..]) {
        Some(Ok(n)) => {
            out.truncate(start + n);
            Some(Ok(()))
        }
        other => {
            out.truncate(start);
            other.map(|r| r.map(|_| ()).map_err(TlpViewError::from))
        }
    }
}

/// Append a memory read request for `len` bytes (0..=4096, not crossing 4 KiB) at `addr`
/// (3 DW header below 4 GiB, 4 DW above).
pub fn emit_mem_read(
    out: &mut Vec<u8>,
    requester: Bdf,
    tag: u16,
    addr: u64,
    len: u32,
) -> Result<(), TlpViewError> {
    append(out, room(0), |b| {
        build::mem_read(b, requester, tag, addr, len)
    })
}

/// Append a memory write request carrying `data` (0..=4096 bytes, not crossing 4 KiB) at
/// `addr` (any alignment).
pub fn emit_mem_write(
    out: &mut Vec<u8>,
    requester: Bdf,
    addr: u64,
    data: &[u8],
) -> Result<(), TlpViewError> {
    append(out, room(data.len()), |b| {
        build::mem_write(b, requester, addr, data)
    })
}

/// Append an MSI / MSI-X message: a 1 DW posted write of `data` to the DW-aligned `addr`.
pub fn emit_msi(
    out: &mut Vec<u8>,
    requester: Bdf,
    addr: u64,
    data: u32,
) -> Result<(), TlpViewError> {
    append(out, room(4), |b| build::msi(b, requester, addr, data))
}

/// Append an INTx Assert/Deassert message (§2.2.8.1): `pin` 0..=3 is INTA..INTD.
pub fn emit_intx(
    out: &mut Vec<u8>,
    requester: Bdf,
    pin: u8,
    assert: bool,
) -> Result<(), TlpViewError> {
    append(out, room(0), |b| build::intx(b, requester, pin, assert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfgrd_parse_matches_spec_layout() {
        // CfgRd0, length 1, requester 00:00.0 tag 5, BE 0xf, target 01:00.0 register 0x10
        let b = [0x04, 0, 0, 1, 0, 0, 5, 0x0f, 0x01, 0x00, 0x00, 0x10];
        let h = ParsedHeader::parse(&b).unwrap();
        assert_eq!(
            h.kind,
            ParsedKind::Config {
                type1: false,
                write: false,
                target: Bdf::new(1, 0, 0),
                reg: 0x10
            }
        );
        assert_eq!(h.tag, 5);
        assert_eq!(h.byte_count(), 4);
    }

    #[test]
    fn completion_emit_then_parse() {
        let mut v = Vec::new();
        emit_completion(
            &mut v,
            Bdf::new(1, 0, 0),
            Bdf::new(0, 0, 0),
            0x2ab,
            CplStatus::Sc,
            6,
            0x42,
            0,
            &[1, 2, 3, 4, 5, 6, 7, 8],
        )
        .unwrap();
        assert_eq!(&v[..4], &[0x4a, 0x80, 0x00, 0x02]);
        let h = ParsedHeader::parse(&v).unwrap();
        assert_eq!(h.tag, 0x2ab);
        assert_eq!(
            h.kind,
            ParsedKind::Completion {
                completer: Bdf::new(1, 0, 0),
                status: CplStatus::Sc,
                byte_count: 6,
                lower_addr: 0x42
            }
        );
        assert_eq!(&v[h.payload], &[1, 2, 3, 4, 5, 6, 7, 8]);
        // Byte Count 4096 is the field value 0.
        let mut v = Vec::new();
        emit_completion(&mut v, Bdf(1), Bdf(2), 1, CplStatus::Ur, 0, 0, 0, &[]).unwrap();
        assert_eq!((v[0], v[6] & 0xef, v[7]), (0x0a, 0x20, 0));
    }

    #[test]
    fn byte_enables_examples() {
        assert_eq!(byte_enables(0x1000, 4), (0xf, 0, 1));
        assert_eq!(byte_enables(0x1001, 2), (0x6, 0, 1));
        assert_eq!(byte_enables(0x1002, 4), (0xc, 0x3, 2));
        assert_eq!(byte_enables(0x1000, 4096), (0xf, 0xf, 1024));
        assert_eq!(enabled_span(1, 0x6, 0), (1, 2));
        assert_eq!(enabled_span(1, 0x5, 0), (0, 3));
        assert_eq!(enabled_span(2, 0xc, 0x3), (2, 4));
        assert_eq!(enabled_span(1, 0, 0), (0, 0));
    }

    #[test]
    fn mem_write_64bit_roundtrip() {
        let mut v = Vec::new();
        emit_mem_write(&mut v, Bdf::new(2, 3, 1), 0x1_2345_6782, &[9, 8, 7]).unwrap();
        let h = ParsedHeader::parse(&v).unwrap();
        assert_eq!(
            h.kind,
            ParsedKind::MemWrite {
                addr: 0x1_2345_6780
            }
        );
        assert_eq!(h.first_be, 0xc);
        assert_eq!(h.last_be, 0x1);
        assert_eq!(&v[h.payload][2..5], &[9, 8, 7]);
    }

    #[test]
    fn intx_message_layout() {
        let mut v = Vec::new();
        emit_intx(&mut v, Bdf::new(1, 0, 0), 0, true).unwrap();
        assert_eq!(v.len(), 16);
        assert_eq!((v[0], v[7]), (0x34, 0x20));
        let h = ParsedHeader::parse(&v).unwrap();
        assert_eq!(
            h.kind,
            ParsedKind::Message {
                routing: 4,
                code: 0x20
            }
        );
    }

    #[test]
    fn bad_arguments_are_errors_and_leave_out_unchanged() {
        let mut v = vec![0xaa];
        // A ragged completion payload is refused, not cut or padded.
        assert!(matches!(
            emit_completion(&mut v, Bdf(1), Bdf(2), 1, CplStatus::Sc, 6, 0, 0, &[1; 6]),
            Err(TlpViewError::Build(BuildError::RaggedPayload(6)))
        ));
        assert!(matches!(
            emit_mem_read(&mut v, Bdf(0), 0, 0xffc, 8),
            Err(TlpViewError::Build(BuildError::Crosses4K { .. }))
        ));
        assert!(matches!(
            emit_intx(&mut v, Bdf(0), 4, true),
            Err(TlpViewError::Build(BuildError::IntxPin(4)))
        ));
        assert!(matches!(
            emit_completion(
                &mut v,
                Bdf(1),
                Bdf(2),
                0x400,
                CplStatus::Sc,
                4,
                0,
                0,
                &[0; 4]
            ),
            Err(TlpViewError::Build(BuildError::Tlp(_)))
        ));
        assert_eq!(v, [0xaa]);
        // MSI: one DW of Message Data.
        emit_msi(&mut v, Bdf(0x100), 0xfee0_0000, 0x4041).unwrap();
        let h = ParsedHeader::parse(&v[1..]).unwrap();
        assert_eq!(h.kind, ParsedKind::MemWrite { addr: 0xfee0_0000 });
        assert_eq!(&v[1..][h.payload], &[0x41, 0x40, 0, 0]);
    }

    #[test]
    fn malformed_is_error() {
        assert!(matches!(
            ParsedHeader::parse(&[0x40, 0, 0, 4, 0, 0, 0, 0xff, 0, 0, 0, 0]),
            Err(TlpViewError::Tlp(_))
        ));
        assert!(ParsedHeader::parse(&[]).is_err());
        // A reserved Fmt/Type.
        assert!(ParsedHeader::parse(&[0x03, 0, 0, 1, 0, 0, 0, 0xf, 0, 0, 0, 0]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn completion_roundtrip(
            c in 0u16.., r in 0u16.., tag in 0u16..1024, st in 0usize..4, bc in 1u16..=4096,
            la in 0u8..128, dws in 0usize..16
        ) {
            let status = [CplStatus::Sc, CplStatus::Ur,
                CplStatus::Crs, CplStatus::Ca][st];
            let data: Vec<u8> = (0..dws * 4).map(|i| i as u8).collect();
            let mut v = Vec::new();
            emit_completion(&mut v, Bdf(c), Bdf(r), tag, status, bc, la, 0, &data).unwrap();
            let h = ParsedHeader::parse(&v).unwrap();
            proptest::prop_assert_eq!(h.tag, tag);
            proptest::prop_assert_eq!(h.requester, Bdf(r));
            proptest::prop_assert_eq!(h.kind, ParsedKind::Completion {
                completer: Bdf(c), status, byte_count: bc, lower_addr: la
            });
            proptest::prop_assert_eq!(&v[h.payload], &data[..]);
        }

        #[test]
        fn mem_requests_roundtrip(addr in 0u64..(1 << 52), len in 1u32..=4096, tag in 0u16..1024) {
            let len = len.min(4096 - (addr & 0xfff) as u32);
            let mut v = Vec::new();
            emit_mem_read(&mut v, Bdf(5), tag, addr, len).unwrap();
            let h = ParsedHeader::parse(&v).unwrap();
            proptest::prop_assert_eq!(h.kind, ParsedKind::MemRead { addr: addr & !3 });
            proptest::prop_assert_eq!(h.tag, tag);
            proptest::prop_assert_eq!(h.first_byte_offset(), (addr & 3) as u32);
            proptest::prop_assert_eq!(h.byte_count(), len);
        }

        #[test]
        fn parse_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = ParsedHeader::parse(&b);
        }
    }
}
