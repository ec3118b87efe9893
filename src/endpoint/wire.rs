//! The TLP header fields the endpoint acts on, parsed from and emitted to wire bytes
//! (PCIe Base Specification r5.0 §2.2: common header §2.2.1, memory/IO/config request headers
//! §2.2.7, completions §2.2.9, messages §2.2.8, 10-bit tags §2.2.6.2, byte enables §2.2.5).
//!
//! This is the endpoint's narrow view of a TLP: exactly what routing a request to a function and
//! answering it needs. Parsing never panics: every length is checked once and malformed input is
//! a [`WireError`]. It is deliberately small so it can be re-pointed at `crate::tlp`'s full codec
//! without touching the proxy.

use thiserror::Error;

/// Why a TLP could not be parsed by the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// Fewer bytes than the header needs.
    #[error("TLP truncated: {got} bytes, header needs {need}")]
    Truncated {
        /// Bytes present.
        got: usize,
        /// Bytes the header (and payload) require.
        need: usize,
    },
    /// A Fmt/Type the endpoint does not know.
    #[error("unknown Fmt/Type byte 0x{0:02x}")]
    UnknownType(u8),
    /// A field combination the specification forbids (e.g. an IO request longer than 1 DW).
    #[error("malformed TLP: {0}")]
    Malformed(&'static str),
}

/// A PCIe Routing ID: bus, device, function (ARI functions use device 0, function 0..255).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Bdf(pub u16);

impl Bdf {
    /// Build from bus, device (0..32) and function (0..8).
    pub const fn new(bus: u8, dev: u8, func: u8) -> Self {
        Bdf(((bus as u16) << 8) | (((dev & 0x1f) as u16) << 3) | (func & 7) as u16)
    }
    /// Bus number.
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Device number.
    pub const fn dev(self) -> u8 {
        ((self.0 >> 3) & 0x1f) as u8
    }
    /// Function number.
    pub const fn func(self) -> u8 {
        (self.0 & 7) as u8
    }
}

impl std::fmt::Display for Bdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus(), self.dev(), self.func())
    }
}

/// Completion status (§2.2.9, Table 2-34).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CplStatus {
    /// Successful Completion.
    Success,
    /// Unsupported Request.
    UnsupportedRequest,
    /// Configuration Request Retry Status.
    RetryStatus,
    /// Completer Abort.
    CompleterAbort,
    /// A reserved encoding (treated as UR by a requester).
    Reserved(u8),
}

impl CplStatus {
    fn from_bits(b: u8) -> Self {
        match b {
            0 => Self::Success,
            1 => Self::UnsupportedRequest,
            2 => Self::RetryStatus,
            4 => Self::CompleterAbort,
            other => Self::Reserved(other),
        }
    }
    fn bits(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::UnsupportedRequest => 1,
            Self::RetryStatus => 2,
            Self::CompleterAbort => 4,
            Self::Reserved(b) => b & 7,
        }
    }
}

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

/// What kind of TLP, with the kind-specific fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
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
        /// Remaining byte count including this completion's payload (0 encodes 4096).
        byte_count: u16,
        /// Lower seven bits of the address of the first byte of this payload.
        lower_addr: u8,
    },
    /// Message (with or without data).
    Message {
        /// Routing subfield r[2:0].
        routing: u8,
        /// Message code.
        code: u8,
    },
}

/// A parsed TLP header, plus where its payload lies in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The kind and kind-specific fields.
    pub kind: Kind,
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
    /// Length field in DW (1..=1024); 0 for TLPs without payload and without a length meaning.
    pub length_dw: u16,
    /// First DW byte enables.
    pub first_be: u8,
    /// Last DW byte enables.
    pub last_be: u8,
    /// Payload byte range inside the parsed buffer (empty when there is none).
    pub payload: std::ops::Range<usize>,
}

const FMT_DATA: u8 = 0b010;
const FMT_4DW: u8 = 0b001;

impl Header {
    /// Parse one TLP (prefixes skipped; a trailing ECRC DW, if TD is set, is ignored).
    pub fn parse(b: &[u8]) -> Result<Header, WireError> {
        let mut off = 0;
        while let Some(&byte0) = b.get(off) {
            if byte0 >> 5 == 0b100 {
                off += 4;
            } else {
                break;
            }
        }
        let h = b.get(off..).unwrap_or(&[]);
        if h.len() < 12 {
            return Err(WireError::Truncated {
                got: b.len(),
                need: off + 12,
            });
        }
        let fmt = h[0] >> 5;
        let ty = h[0] & 0x1f;
        let four_dw = fmt & FMT_4DW != 0;
        let has_data = fmt & FMT_DATA != 0;
        let hdr_len = if four_dw { 16 } else { 12 };
        if h.len() < hdr_len {
            return Err(WireError::Truncated {
                got: b.len(),
                need: off + hdr_len,
            });
        }
        let tc = (h[1] >> 4) & 7;
        let t9 = (h[1] >> 7) & 1;
        let t8 = (h[1] >> 3) & 1;
        let attr = ((h[1] >> 2) & 1) << 2 | ((h[2] >> 4) & 3);
        let poisoned = h[2] & 0x40 != 0;
        let len_field = (u16::from(h[2] & 3) << 8) | u16::from(h[3]);
        let length_dw = if len_field == 0 { 1024 } else { len_field };
        let requester = Bdf(u16::from_be_bytes([h[4], h[5]]));
        let tag = (u16::from(t9) << 9) | (u16::from(t8) << 8) | u16::from(h[6]);
        let last_be = h[7] >> 4;
        let first_be = h[7] & 0xf;
        let addr64 = || -> u64 {
            if four_dw {
                (u64::from(u32::from_be_bytes([h[8], h[9], h[10], h[11]])) << 32)
                    | u64::from(u32::from_be_bytes([h[12], h[13], h[14], h[15]]) & !3)
            } else {
                u64::from(u32::from_be_bytes([h[8], h[9], h[10], h[11]]) & !3)
            }
        };
        let mut out = Header {
            kind: Kind::MemRead { addr: 0 },
            requester,
            tag,
            tc,
            attr,
            poisoned,
            length_dw: if has_data || ty <= 1 { length_dw } else { 0 },
            first_be,
            last_be,
            payload: 0..0,
        };
        out.kind = match (ty, has_data) {
            (0b0_0000 | 0b0_0001, false) => Kind::MemRead { addr: addr64() },
            (0b0_0000, true) => Kind::MemWrite { addr: addr64() },
            (0b0_0010, _) => {
                if four_dw || length_dw != 1 || last_be != 0 {
                    return Err(WireError::Malformed("IO request must be 3 DW, length 1"));
                }
                let addr = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) & !3;
                if has_data {
                    Kind::IoWrite { addr }
                } else {
                    Kind::IoRead { addr }
                }
            }
            (0b0_0100 | 0b0_0101, _) => {
                if four_dw || length_dw != 1 || last_be != 0 {
                    return Err(WireError::Malformed(
                        "configuration request must be 3 DW, length 1",
                    ));
                }
                Kind::Config {
                    type1: ty == 0b0_0101,
                    write: has_data,
                    target: Bdf(u16::from_be_bytes([h[8], h[9]])),
                    reg: (u16::from(h[10] & 0xf) << 8) | u16::from(h[11] & 0xfc),
                }
            }
            (0b0_1100..=0b0_1110, true) => {
                let op = match ty {
                    0b0_1100 => AtomicKind::FetchAdd,
                    0b0_1101 => AtomicKind::Swap,
                    _ => AtomicKind::Cas,
                };
                let addr = if four_dw {
                    (u64::from(u32::from_be_bytes([h[8], h[9], h[10], h[11]])) << 32)
                        | u64::from(u32::from_be_bytes([h[12], h[13], h[14], h[15]]))
                } else {
                    u64::from(u32::from_be_bytes([h[8], h[9], h[10], h[11]]))
                };
                Kind::Atomic { op, addr }
            }
            (0b0_1010 | 0b0_1011, _) => {
                if four_dw {
                    return Err(WireError::Malformed("completion must be 3 DW"));
                }
                let bc = (u16::from(h[6] & 0xf) << 8) | u16::from(h[7]);
                out.requester = Bdf(u16::from_be_bytes([h[8], h[9]]));
                out.tag = (u16::from(t9) << 9) | (u16::from(t8) << 8) | u16::from(h[10]);
                out.first_be = 0;
                out.last_be = 0;
                Kind::Completion {
                    completer: Bdf(u16::from_be_bytes([h[4], h[5]])),
                    status: CplStatus::from_bits(h[6] >> 5),
                    byte_count: bc,
                    lower_addr: h[11] & 0x7f,
                }
            }
            (0b1_0000..=0b1_0111, _) => {
                if !four_dw {
                    return Err(WireError::Malformed("message must be 4 DW"));
                }
                Kind::Message {
                    routing: ty & 7,
                    code: h[7],
                }
            }
            _ => return Err(WireError::UnknownType(h[0])),
        };
        if has_data {
            let start = off + hdr_len;
            let end = start + usize::from(length_dw) * 4;
            if b.len() < end {
                return Err(WireError::Truncated {
                    got: b.len(),
                    need: end,
                });
            }
            out.payload = start..end;
        }
        Ok(out)
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
    let len = u32::from(length_dw) * 4;
    if length_dw <= 1 {
        if first_be & 0xf == 0 {
            return (0, 0);
        }
        let lead = (first_be & 0xf).trailing_zeros();
        let top = 4 - ((first_be & 0xf) << 4).leading_zeros().min(4);
        return (lead, top.saturating_sub(lead).max(1));
    }
    let lead = (first_be & 0xf).trailing_zeros().min(4);
    let trail = if last_be & 0xf == 0 {
        4
    } else {
        (((last_be & 0xf) as u32) << 28).leading_zeros()
    };
    (lead, len.saturating_sub(lead + trail))
}

/// Header fields common to what the endpoint emits.
fn dw0(buf: &mut [u8], fmt: u8, ty: u8, tag: u16, attr: u8, ep: bool, length_dw: u16) {
    buf[0] = (fmt << 5) | (ty & 0x1f);
    buf[1] = (((tag >> 9) & 1) as u8) << 7 | (((tag >> 8) & 1) as u8) << 3 | ((attr >> 2) & 1) << 2;
    buf[2] = (u8::from(ep) << 6) | ((attr & 3) << 4) | ((length_dw >> 8) as u8 & 3);
    buf[3] = length_dw as u8;
}

/// Append a completion (Cpl when `data` is empty, CplD otherwise) to `out` (§2.2.9).
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
) {
    let start = out.len();
    out.resize(start + 12, 0);
    let len_dw = data.len().div_ceil(4) as u16;
    let fmt = if data.is_empty() { 0 } else { FMT_DATA };
    let h = &mut out[start..];
    dw0(h, fmt, 0b0_1010, tag, attr, false, len_dw & 0x3ff);
    h[4..6].copy_from_slice(&completer.0.to_be_bytes());
    h[6] = (status.bits() << 5) | ((byte_count >> 8) as u8 & 0xf);
    h[7] = byte_count as u8;
    h[8..10].copy_from_slice(&requester.0.to_be_bytes());
    h[10] = tag as u8;
    h[11] = lower_addr & 0x7f;
    out.extend_from_slice(data);
    let pad = (4 - data.len() % 4) % 4;
    out.resize(out.len() + pad, 0);
}

/// Append a memory read request (3 DW header below 4 GiB, 4 DW above).
pub fn emit_mem_read(out: &mut Vec<u8>, requester: Bdf, tag: u16, addr: u64, len: u32) {
    let (first_be, last_be, len_dw) = byte_enables(addr, len);
    emit_mem_header(
        out, 0, requester, tag, addr, len_dw, first_be, last_be, false,
    );
}

/// Append a memory write request carrying `data` at `addr` (any alignment, ≤ 4096 bytes).
pub fn emit_mem_write(out: &mut Vec<u8>, requester: Bdf, addr: u64, data: &[u8]) {
    let (first_be, last_be, len_dw) = byte_enables(addr, data.len() as u32);
    emit_mem_header(
        out, FMT_DATA, requester, 0, addr, len_dw, first_be, last_be, false,
    );
    let lead = (addr & 3) as usize;
    let start = out.len();
    out.resize(start + usize::from(len_dw) * 4, 0);
    out[start + lead..start + lead + data.len()].copy_from_slice(data);
}

#[allow(clippy::too_many_arguments)]
fn emit_mem_header(
    out: &mut Vec<u8>,
    fmt: u8,
    requester: Bdf,
    tag: u16,
    addr: u64,
    len_dw: u16,
    first_be: u8,
    last_be: u8,
    ep: bool,
) {
    let four = addr > u64::from(u32::MAX);
    let start = out.len();
    out.resize(start + if four { 16 } else { 12 }, 0);
    let h = &mut out[start..];
    dw0(
        h,
        fmt | u8::from(four),
        0,
        tag,
        0,
        ep,
        if len_dw == 1024 { 0 } else { len_dw },
    );
    h[4..6].copy_from_slice(&requester.0.to_be_bytes());
    h[6] = tag as u8;
    h[7] = (last_be << 4) | first_be;
    if four {
        h[8..12].copy_from_slice(&((addr >> 32) as u32).to_be_bytes());
        h[12..16].copy_from_slice(&((addr as u32) & !3).to_be_bytes());
    } else {
        h[8..12].copy_from_slice(&((addr as u32) & !3).to_be_bytes());
    }
}

/// Byte enables and DW length for `len` bytes at `addr` (§2.2.5). `len` must be 1..=4096.
pub fn byte_enables(addr: u64, len: u32) -> (u8, u8, u16) {
    let lead = (addr & 3) as u32;
    let total = lead + len;
    let len_dw = total.div_ceil(4) as u16;
    let end_in_last = total - (u32::from(len_dw) - 1) * 4; // 1..=4
    let first_mask: u8 = 0xf << lead;
    if len_dw == 1 {
        let last_mask = 0xfu8 >> (4 - end_in_last);
        (first_mask & last_mask & 0xf, 0, 1)
    } else {
        (first_mask & 0xf, 0xfu8 >> (4 - end_in_last), len_dw)
    }
}

/// Append an INTx Assert/Deassert message (§2.2.8.1): `pin` 0..4 is INTA..INTD.
pub fn emit_intx(out: &mut Vec<u8>, requester: Bdf, pin: u8, assert: bool) {
    let start = out.len();
    out.resize(start + 16, 0);
    let h = &mut out[start..];
    // Fmt 001 (4 DW, no data), Type 10100: local, terminate at receiver.
    h[0] = 0x34;
    h[4..6].copy_from_slice(&requester.0.to_be_bytes());
    h[7] = if assert { 0x20 } else { 0x24 } + (pin & 3);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfgrd_parse_matches_spec_layout() {
        // CfgRd0, length 1, requester 00:00.0 tag 5, BE 0xf, target 01:00.0 register 0x10
        let b = [0x04, 0, 0, 1, 0, 0, 5, 0x0f, 0x01, 0x00, 0x00, 0x10];
        let h = Header::parse(&b).unwrap();
        assert_eq!(
            h.kind,
            Kind::Config {
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
            CplStatus::Success,
            6,
            0x42,
            0,
            &[1, 2, 3, 4, 5, 6, 7, 8],
        );
        assert_eq!(&v[..4], &[0x4a, 0x80, 0x00, 0x02]);
        let h = Header::parse(&v).unwrap();
        assert_eq!(h.tag, 0x2ab);
        assert_eq!(
            h.kind,
            Kind::Completion {
                completer: Bdf::new(1, 0, 0),
                status: CplStatus::Success,
                byte_count: 6,
                lower_addr: 0x42
            }
        );
        assert_eq!(&v[h.payload], &[1, 2, 3, 4, 5, 6, 7, 8]);
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
        emit_mem_write(&mut v, Bdf::new(2, 3, 1), 0x1_2345_6782, &[9, 8, 7]);
        let h = Header::parse(&v).unwrap();
        assert_eq!(
            h.kind,
            Kind::MemWrite {
                addr: 0x1_2345_6780
            }
        );
        assert_eq!(h.first_be, 0xc);
        assert_eq!(h.last_be, 0x1);
        assert_eq!(&v[h.payload][2..5], &[9, 8, 7]);
    }

    #[test]
    fn truncated_is_error() {
        assert!(matches!(
            Header::parse(&[0x40, 0, 0, 4, 0, 0, 0, 0xff, 0, 0, 0, 0]),
            Err(WireError::Truncated { .. })
        ));
        assert!(Header::parse(&[]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn completion_roundtrip(
            c in 0u16.., r in 0u16.., tag in 0u16..1024, st in 0u8..8, bc in 0u16..4096,
            la in 0u8..128, data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)
        ) {
            let mut v = Vec::new();
            let status = CplStatus::from_bits(st);
            emit_completion(&mut v, Bdf(c), Bdf(r), tag, status, bc, la, 0, &data);
            let h = Header::parse(&v).unwrap();
            proptest::prop_assert_eq!(h.tag, tag);
            proptest::prop_assert_eq!(h.requester, Bdf(r));
            proptest::prop_assert_eq!(h.kind, Kind::Completion {
                completer: Bdf(c), status, byte_count: bc, lower_addr: la
            });
            proptest::prop_assert_eq!(&v[h.payload][..data.len()], &data[..]);
        }

        #[test]
        fn mem_requests_roundtrip(addr in 0u64..(1 << 52), len in 1u32..=4096, tag in 0u16..1024) {
            let mut v = Vec::new();
            emit_mem_read(&mut v, Bdf(5), tag, addr, len);
            let h = Header::parse(&v).unwrap();
            proptest::prop_assert_eq!(h.kind, Kind::MemRead { addr: addr & !3 });
            proptest::prop_assert_eq!(h.tag, tag);
            proptest::prop_assert_eq!(h.first_byte_offset(), (addr & 3) as u32);
            proptest::prop_assert_eq!(h.byte_count(), len);
        }

        #[test]
        fn parse_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = Header::parse(&b);
        }
    }
}
