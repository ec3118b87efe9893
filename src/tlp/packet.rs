//! Zero-copy view over the bytes of one non-Flit-mode TLP (PCIe Base Specification 6.x,
//! §2.2.1.1 common header fields, §2.2.4–§2.2.9 per-type header layouts, §2.2.10 TLP
//! prefixes, §2.2.3 TLP digest).
//!
//! [`Packet`] is the smoltcp-style wire view: [`Packet::new_checked`] walks the prefixes,
//! decodes Fmt/Type and checks once that the buffer holds exactly prefixes + header + payload
//! (+ digest); every accessor after that is in bounds. Field offsets are relative to the first
//! header byte (after the prefixes) and live in [`field`], so the layout reads like the spec's
//! figures. The typed value lives in [`crate::tlp::Tlp`].

use super::{Error, Kind};
use zerocopy::byteorder::big_endian::{U16, U32};
use zerocopy::FromBytes;

/// Byte offsets of the header fields, relative to the first header byte (§2.2.1.1, §2.2.6–§2.2.9).
pub mod field {
    /// A byte range inside the header.
    pub type Field = core::ops::Range<usize>;

    /// Byte 0: Fmt[2:0] (bits 7:5) and Type[4:0] (bits 4:0).
    pub const FMT_TYPE: usize = 0;
    /// Byte 1: T9 (7), TC[2:0] (6:4), T8 (3), Attr[2] (2), LN (1), TH (0).
    pub const TC_FLAGS: usize = 1;
    /// Byte 2: TD (7), EP (6), Attr[1:0] (5:4), AT[1:0] (3:2), Length[9:8] (1:0).
    pub const TD_EP_ATTR: usize = 2;
    /// Byte 3: Length[7:0].
    pub const LENGTH_LO: usize = 3;

    // Requests (memory, IO, configuration, messages, AtomicOps), DW1.
    /// Requester ID.
    pub const REQUESTER_ID: Field = 4..6;
    /// Tag[7:0] (T9/T8 live in byte 1).
    pub const TAG: usize = 6;
    /// Last DW BE (7:4) and First DW BE (3:0); Message Code for messages.
    pub const BE: usize = 7;
    /// Message Code (same byte as the byte enables of other requests).
    pub const MSG_CODE: usize = 7;

    /// 32-bit address (3 DW header), bits 1:0 are PH.
    pub const ADDR32: Field = 8..12;
    /// Upper address DW of a 4 DW header.
    pub const ADDR64_HI: Field = 8..12;
    /// Lower address DW of a 4 DW header, bits 1:0 are PH.
    pub const ADDR64_LO: Field = 12..16;

    /// Configuration requests, DW2: Bus, Device/Function, Ext Register, Register.
    pub const CFG_TARGET: Field = 8..10;
    /// Reserved (7:4) and Extended Register Number (3:0).
    pub const CFG_EXT_REG: usize = 10;
    /// Register Number (7:2), reserved (1:0).
    pub const CFG_REG: usize = 11;

    /// Messages: bytes 8..16, meaning depends on the Message Code (§2.2.8).
    pub const MSG_FIELDS: Field = 8..16;

    // Completions (§2.2.9).
    /// Completer ID.
    pub const COMPLETER_ID: Field = 4..6;
    /// Status (7:5), BCM (4), Byte Count[11:8] (3:0).
    pub const CPL_STATUS: usize = 6;
    /// Byte Count[7:0].
    pub const CPL_BYTE_COUNT_LO: usize = 7;
    /// Requester ID of the request being completed.
    pub const CPL_REQUESTER_ID: Field = 8..10;
    /// Tag[7:0] of the request being completed.
    pub const CPL_TAG: usize = 10;
    /// Reserved (7) and Lower Address[6:0].
    pub const CPL_LOWER_ADDR: usize = 11;
}

/// The most End-End TLP Prefixes a TLP may carry (§2.2.10.2).
pub const MAX_E2E_PREFIXES: usize = 4;
/// Local prefixes we accept in front of a TLP; more is treated as malformed input so that
/// a stream of prefix DWs cannot make us walk an unbounded buffer.
pub const MAX_LOCAL_PREFIXES: usize = 4;

/// Layout facts derived from DW0 of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of prefixes in front of the header.
    pub prefix_len: usize,
    /// Header length in bytes (12 or 16).
    pub header_len: usize,
    /// Payload length in bytes (0 for TLPs without data).
    pub payload_len: usize,
    /// Whether a 4-byte digest (ECRC) follows.
    pub digest: bool,
    /// The decoded TLP kind.
    pub kind: Kind,
}

impl Layout {
    /// Total length of the TLP in bytes.
    pub const fn total_len(&self) -> usize {
        self.prefix_len + self.header_len + self.payload_len + if self.digest { 4 } else { 0 }
    }
}

/// A zero-copy view over one TLP (prefixes, header, payload, digest).
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    layout: Layout,
}

/// Walk the prefixes and DW0 of `b`: where everything is and how long the TLP must be.
#[inline]
pub fn layout(b: &[u8]) -> Result<Layout, Error> {
    let mut off = 0;
    let (mut local, mut e2e) = (0usize, 0usize);
    loop {
        let Some(dw0) = b.get(off..off + 4) else {
            return Err(Error::Truncated {
                need: off + 4,
                have: b.len(),
            });
        };
        if dw0[0] >> 5 != 0b100 {
            break;
        }
        if dw0[0] & 0x10 != 0 {
            e2e += 1;
            if e2e > MAX_E2E_PREFIXES {
                return Err(Error::TooManyPrefixes { end_to_end: true });
            }
        } else {
            if e2e != 0 {
                // §2.2.10: Local TLP Prefixes precede any End-End TLP Prefix.
                return Err(Error::PrefixOrder);
            }
            local += 1;
            if local > MAX_LOCAL_PREFIXES {
                return Err(Error::TooManyPrefixes { end_to_end: false });
            }
        }
        off += 4;
    }
    let fmt = b[off] >> 5;
    let ty = b[off] & 0x1f;
    let kind = Kind::from_fmt_type(fmt, ty).ok_or(Error::ReservedFmtType { fmt, ty })?;
    let header_len = if fmt & 1 != 0 { 16 } else { 12 };
    let len_field = (usize::from(b[off + 2] & 0x03) << 8) | usize::from(b[off + 3]);
    let length_dw = if len_field == 0 { 1024 } else { len_field };
    let payload_len = if fmt & 0b010 != 0 { length_dw * 4 } else { 0 };
    let digest = b[off + 2] & 0x80 != 0;
    Ok(Layout {
        prefix_len: off,
        header_len,
        payload_len,
        digest,
        kind,
    })
}

#[inline]
fn be16(b: &[u8], r: field::Field) -> u16 {
    U16::read_from_bytes(&b[r]).map_or(0, |v| v.get())
}

#[inline]
fn be32(b: &[u8], r: field::Field) -> u32 {
    U32::read_from_bytes(&b[r]).map_or(0, |v| v.get())
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap a buffer, checking that it holds exactly one complete TLP whose Fmt/Type is defined
    /// by the specification. After this, no accessor can go out of bounds.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let b = buffer.as_ref();
        let layout = layout(b)?;
        let total = layout.total_len();
        if b.len() < layout.prefix_len + layout.header_len {
            return Err(Error::Truncated {
                need: layout.prefix_len + layout.header_len,
                have: b.len(),
            });
        }
        if b.len() != total {
            return Err(Error::LengthMismatch {
                expected: total,
                actual: b.len(),
            });
        }
        Ok(Packet { buffer, layout })
    }

    /// The layout found by [`Packet::new_checked`].
    #[inline]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The whole underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The prefix DWs (possibly empty).
    #[inline]
    pub fn prefixes(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.layout.prefix_len]
    }

    /// The header bytes (12 or 16).
    #[inline]
    pub fn header(&self) -> &[u8] {
        let s = self.layout.prefix_len;
        &self.buffer.as_ref()[s..s + self.layout.header_len]
    }

    /// The data payload (empty for TLPs without data).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let s = self.layout.prefix_len + self.layout.header_len;
        &self.buffer.as_ref()[s..s + self.layout.payload_len]
    }

    /// The TLP digest (ECRC) when TD is set.
    #[inline]
    pub fn ecrc(&self) -> Option<u32> {
        if !self.layout.digest {
            return None;
        }
        let s = self.layout.prefix_len + self.layout.header_len + self.layout.payload_len;
        Some(be32(self.buffer.as_ref(), s..s + 4))
    }

    /// Bytes covered by the TLP, from the first prefix to the end of the payload (no digest).
    #[inline]
    pub fn without_digest(&self) -> &[u8] {
        let l = &self.layout;
        &self.buffer.as_ref()[..l.prefix_len + l.header_len + l.payload_len]
    }

    /// Fmt[2:0].
    #[inline]
    pub fn fmt(&self) -> u8 {
        self.header()[field::FMT_TYPE] >> 5
    }
    /// Type[4:0].
    #[inline]
    pub fn ty(&self) -> u8 {
        self.header()[field::FMT_TYPE] & 0x1f
    }
    /// Traffic Class.
    #[inline]
    pub fn tc(&self) -> u8 {
        (self.header()[field::TC_FLAGS] >> 4) & 0x7
    }
    /// Tag bits T9 and T8 as a value to OR into the tag (0, 0x100, 0x200 or 0x300).
    #[inline]
    pub fn tag_hi(&self) -> u16 {
        let b = self.header()[field::TC_FLAGS];
        (u16::from(b >> 7) << 9) | (u16::from((b >> 3) & 1) << 8)
    }
    /// Attr[2], ID-Based Ordering.
    #[inline]
    pub fn attr_ido(&self) -> bool {
        self.header()[field::TC_FLAGS] & 0x04 != 0
    }
    /// LN (Lightweight Notification; reserved since 6.0, carried through).
    #[inline]
    pub fn ln(&self) -> bool {
        self.header()[field::TC_FLAGS] & 0x02 != 0
    }
    /// TH, TLP Processing Hints present.
    #[inline]
    pub fn th(&self) -> bool {
        self.header()[field::TC_FLAGS] & 0x01 != 0
    }
    /// TD, TLP digest present.
    #[inline]
    pub fn td(&self) -> bool {
        self.header()[field::TD_EP_ATTR] & 0x80 != 0
    }
    /// EP, poisoned.
    #[inline]
    pub fn ep(&self) -> bool {
        self.header()[field::TD_EP_ATTR] & 0x40 != 0
    }
    /// Attr[1], Relaxed Ordering.
    #[inline]
    pub fn attr_ro(&self) -> bool {
        self.header()[field::TD_EP_ATTR] & 0x20 != 0
    }
    /// Attr[0], No Snoop.
    #[inline]
    pub fn attr_ns(&self) -> bool {
        self.header()[field::TD_EP_ATTR] & 0x10 != 0
    }
    /// AT[1:0], Address Type.
    #[inline]
    pub fn at(&self) -> u8 {
        (self.header()[field::TD_EP_ATTR] >> 2) & 0x3
    }
    /// Length in DW, decoded (a field of 0 means 1024).
    #[inline]
    pub fn length_dw(&self) -> u16 {
        let h = self.header();
        let v = (u16::from(h[field::TD_EP_ATTR] & 0x3) << 8) | u16::from(h[field::LENGTH_LO]);
        if v == 0 {
            1024
        } else {
            v
        }
    }
    /// Requester ID of a request (DW1).
    #[inline]
    pub fn requester_id(&self) -> u16 {
        be16(self.header(), field::REQUESTER_ID)
    }
    /// 10-bit tag of a request.
    #[inline]
    pub fn tag(&self) -> u16 {
        self.tag_hi() | u16::from(self.header()[field::TAG])
    }
    /// First DW byte enables.
    #[inline]
    pub fn first_be(&self) -> u8 {
        self.header()[field::BE] & 0xf
    }
    /// Last DW byte enables.
    #[inline]
    pub fn last_be(&self) -> u8 {
        self.header()[field::BE] >> 4
    }
    /// Message Code.
    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.header()[field::MSG_CODE]
    }
    /// The address of a memory/IO/AtomicOp request, low two bits (PH) cleared.
    #[inline]
    pub fn address(&self) -> u64 {
        let h = self.header();
        if self.layout.header_len == 16 {
            (u64::from(be32(h, field::ADDR64_HI)) << 32) | u64::from(be32(h, field::ADDR64_LO) & !3)
        } else {
            u64::from(be32(h, field::ADDR32) & !3)
        }
    }
    /// Processing Hints (the low two address bits).
    #[inline]
    pub fn ph(&self) -> u8 {
        self.header()[self.layout.header_len - 1] & 3
    }
    /// Completer ID of a completion.
    #[inline]
    pub fn completer_id(&self) -> u16 {
        be16(self.header(), field::COMPLETER_ID)
    }
    /// Completion Status[2:0] (raw).
    #[inline]
    pub fn cpl_status(&self) -> u8 {
        self.header()[field::CPL_STATUS] >> 5
    }
    /// BCM.
    #[inline]
    pub fn bcm(&self) -> bool {
        self.header()[field::CPL_STATUS] & 0x10 != 0
    }
    /// Byte Count, decoded (a field of 0 means 4096).
    #[inline]
    pub fn byte_count(&self) -> u16 {
        let h = self.header();
        let v =
            (u16::from(h[field::CPL_STATUS] & 0xf) << 8) | u16::from(h[field::CPL_BYTE_COUNT_LO]);
        if v == 0 {
            4096
        } else {
            v
        }
    }
    /// Requester ID of a completion.
    #[inline]
    pub fn cpl_requester_id(&self) -> u16 {
        be16(self.header(), field::CPL_REQUESTER_ID)
    }
    /// 10-bit tag of a completion.
    #[inline]
    pub fn cpl_tag(&self) -> u16 {
        self.tag_hi() | u16::from(self.header()[field::CPL_TAG])
    }
    /// Lower Address[6:0] of a completion.
    #[inline]
    pub fn lower_address(&self) -> u8 {
        self.header()[field::CPL_LOWER_ADDR] & 0x7f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CplD with 1 DW of data, as a Linux AER log printed it (plus its payload).
    static CPLD: [u8; 16] = [
        0x4a, 0x00, 0x00, 0x01, 0x01, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x4d, 0x14, 0x08,
        0xa8,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&CPLD[..]).unwrap();
        assert_eq!((p.fmt(), p.ty()), (0b010, 0b01010));
        assert_eq!(p.layout().kind, Kind::CplD);
        assert_eq!(
            (p.tc(), p.td(), p.ep(), p.length_dw()),
            (0, false, false, 1)
        );
        assert_eq!(
            (p.completer_id(), p.cpl_status(), p.byte_count()),
            (0x0100, 0, 4)
        );
        assert_eq!(
            (p.cpl_requester_id(), p.cpl_tag(), p.lower_address()),
            (0, 0, 0)
        );
        assert_eq!(p.payload(), &[0x4d, 0x14, 0x08, 0xa8]);
        assert_eq!(p.ecrc(), None);
    }

    #[test]
    fn checked_constructor_rejects_bad_lengths() {
        assert!(matches!(
            Packet::new_checked(&CPLD[..15]),
            Err(Error::LengthMismatch { .. })
        ));
        assert!(matches!(
            Packet::new_checked(&CPLD[..8]),
            Err(Error::Truncated { .. })
        ));
        let mut longer = CPLD.to_vec();
        longer.push(0);
        assert!(matches!(
            Packet::new_checked(&longer[..]),
            Err(Error::LengthMismatch { .. })
        ));
    }
}
