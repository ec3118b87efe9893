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

/// Where every header field lives, relative to the first header byte (§2.2.1.1, §2.2.6–§2.2.9):
/// byte ranges for multi-byte fields (big-endian), [`Bits`](field::Bits) for fields inside
/// one byte. This block is the only place in the code base that states a bit position of a
/// TLP header; the getters and setters of [`Packet`] read it, and everything else goes
/// through them.
pub mod field {
    /// A byte range inside the header.
    pub type Field = core::ops::Range<usize>;

    /// A bit field inside one header byte: the value is `(byte >> shift) & mask`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Bits {
        /// Header byte.
        pub byte: usize,
        /// Position of the field's least significant bit (bit 0 is the LSB of the byte).
        pub shift: u8,
        /// Mask of the field's width, before shifting.
        pub mask: u8,
    }

    impl Bits {
        /// Read the field from header bytes `h`.
        #[inline]
        pub const fn get(self, h: &[u8]) -> u8 {
            (h[self.byte] >> self.shift) & self.mask
        }

        /// Write the low bits of `v` into the field, leaving the other bits of the byte.
        #[inline]
        pub fn put(self, h: &mut [u8], v: u8) {
            let b = &mut h[self.byte];
            *b = (*b & !(self.mask << self.shift)) | ((v & self.mask) << self.shift);
        }
    }

    const fn bits(byte: usize, hi: u8, lo: u8) -> Bits {
        Bits {
            byte,
            shift: lo,
            mask: ((1u16 << (hi - lo + 1)) - 1) as u8,
        }
    }

    // DW0, common to every TLP (§2.2.1.1, Figure 2-5).
    /// Fmt\[2:0\]: byte 0 bits 7:5.
    pub const FMT: Bits = bits(0, 7, 5);
    /// Type\[4:0\]: byte 0 bits 4:0.
    pub const TYPE: Bits = bits(0, 4, 0);
    /// T9 (Tag bit 9): byte 1 bit 7.
    pub const T9: Bits = bits(1, 7, 7);
    /// TC\[2:0\]: byte 1 bits 6:4.
    pub const TC: Bits = bits(1, 6, 4);
    /// T8 (Tag bit 8): byte 1 bit 3.
    pub const T8: Bits = bits(1, 3, 3);
    /// Attr\[2\], ID-Based Ordering: byte 1 bit 2.
    pub const ATTR_IDO: Bits = bits(1, 2, 2);
    /// LN (reserved since 6.0): byte 1 bit 1.
    pub const LN: Bits = bits(1, 1, 1);
    /// TH: byte 1 bit 0.
    pub const TH: Bits = bits(1, 0, 0);
    /// TD: byte 2 bit 7.
    pub const TD: Bits = bits(2, 7, 7);
    /// EP: byte 2 bit 6.
    pub const EP: Bits = bits(2, 6, 6);
    /// Attr\[1\], Relaxed Ordering: byte 2 bit 5.
    pub const ATTR_RO: Bits = bits(2, 5, 5);
    /// Attr\[0\], No Snoop: byte 2 bit 4.
    pub const ATTR_NS: Bits = bits(2, 4, 4);
    /// AT\[1:0\]: byte 2 bits 3:2.
    pub const AT: Bits = bits(2, 3, 2);
    /// Length\[9:8\]: byte 2 bits 1:0.
    pub const LENGTH_HI: Bits = bits(2, 1, 0);
    /// Length\[7:0\]: byte 3.
    pub const LENGTH_LO: usize = 3;

    // Requests (memory, IO, configuration, messages, AtomicOps), DW1 (§2.2.7).
    /// Requester ID.
    pub const REQUESTER_ID: Field = 4..6;
    /// Tag\[7:0\] (T9/T8 live in byte 1).
    pub const TAG: usize = 6;
    /// Last DW BE: byte 7 bits 7:4.
    pub const LAST_BE: Bits = bits(7, 7, 4);
    /// First DW BE: byte 7 bits 3:0.
    pub const FIRST_BE: Bits = bits(7, 3, 0);
    /// Message Code (same byte as the byte enables of other requests, §2.2.8).
    pub const MSG_CODE: usize = 7;

    /// 32-bit address (3 DW header); bits 1:0 of its last byte are PH.
    pub const ADDR32: Field = 8..12;
    /// Upper address DW of a 4 DW header.
    pub const ADDR64_HI: Field = 8..12;
    /// Lower address DW of a 4 DW header; bits 1:0 of its last byte are PH.
    pub const ADDR64_LO: Field = 12..16;
    /// Processing Hints (address bits 1:0) of a 3 DW header: byte 11 bits 1:0.
    pub const PH32: Bits = bits(11, 1, 0);
    /// Processing Hints of a 4 DW header: byte 15 bits 1:0.
    pub const PH64: Bits = bits(15, 1, 0);

    // Configuration requests, DW2 (§2.2.7, Figure 2-39).
    /// Bus Number, Device Number (7:3) and Function Number (2:0) of the target.
    pub const CFG_TARGET: Field = 8..10;
    /// Reserved: byte 10 bits 7:4.
    pub const CFG_RSVD_HI: Bits = bits(10, 7, 4);
    /// Extended Register Number: byte 10 bits 3:0 (register byte offset bits 11:8).
    pub const CFG_EXT_REG: Bits = bits(10, 3, 0);
    /// Register Number: byte 11 bits 7:2 (register byte offset bits 7:2).
    pub const CFG_REG: Bits = bits(11, 7, 2);
    /// Reserved: byte 11 bits 1:0.
    pub const CFG_RSVD_LO: Bits = bits(11, 1, 0);

    /// Messages: bytes 8..16, meaning depends on the Message Code (§2.2.8).
    pub const MSG_FIELDS: Field = 8..16;

    // Completions (§2.2.9, Figure 2-79).
    /// Completer ID.
    pub const COMPLETER_ID: Field = 4..6;
    /// Completion Status\[2:0\]: byte 6 bits 7:5.
    pub const CPL_STATUS: Bits = bits(6, 7, 5);
    /// BCM: byte 6 bit 4.
    pub const BCM: Bits = bits(6, 4, 4);
    /// Byte Count\[11:8\]: byte 6 bits 3:0.
    pub const BYTE_COUNT_HI: Bits = bits(6, 3, 0);
    /// Byte Count\[7:0\]: byte 7.
    pub const BYTE_COUNT_LO: usize = 7;
    /// Requester ID of the request being completed.
    pub const CPL_REQUESTER_ID: Field = 8..10;
    /// Tag\[7:0\] of the request being completed.
    pub const CPL_TAG: usize = 10;
    /// Reserved: byte 11 bit 7.
    pub const CPL_RSVD: Bits = bits(11, 7, 7);
    /// Lower Address\[6:0\]: byte 11 bits 6:0.
    pub const LOWER_ADDR: Bits = bits(11, 6, 0);
}

/// The most End-End TLP Prefixes a TLP may carry (§2.2.10.2).
pub const MAX_E2E_PREFIXES: usize = 4;
/// Local prefixes we accept in front of a TLP; more is treated as malformed input so that
/// a stream of prefix DWs cannot make us walk an unbounded buffer.
pub const MAX_LOCAL_PREFIXES: usize = 4;

/// Fmt\[2:0\] of a TLP prefix (§2.2.1.1 Table 2-2).
pub const FMT_PREFIX: u8 = 0b100;
/// Fmt bit 0: 4 DW header.
pub const FMT_4DW: u8 = 0b001;
/// Fmt bit 1: with data.
pub const FMT_DATA: u8 = 0b010;
/// Type bit 4 of a prefix: End-End rather than Local (§2.2.10).
pub const PREFIX_E2E: u8 = 0b1_0000;

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
        if field::FMT.get(dw0) != FMT_PREFIX {
            break;
        }
        if field::TYPE.get(dw0) & PREFIX_E2E != 0 {
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
    let h = &b[off..off + 4];
    let fmt = field::FMT.get(h);
    let ty = field::TYPE.get(h);
    let kind = Kind::from_fmt_type(fmt, ty).ok_or(Error::ReservedFmtType { fmt, ty })?;
    let header_len = if fmt & FMT_4DW != 0 { 16 } else { 12 };
    let len_field = (usize::from(field::LENGTH_HI.get(h)) << 8) | usize::from(h[field::LENGTH_LO]);
    let length_dw = if len_field == 0 { 1024 } else { len_field };
    let payload_len = if fmt & FMT_DATA != 0 {
        length_dw * 4
    } else {
        0
    };
    let digest = field::TD.get(h) != 0;
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

    /// Wrap a buffer to build a TLP in: `layout` says where the prefixes, header, payload and
    /// digest go, whatever the buffer holds now (the setters then write the header). The
    /// buffer must be exactly [`Layout::total_len`] bytes, so no accessor can go out of bounds.
    #[inline]
    pub fn with_layout(buffer: T, layout: Layout) -> Result<Self, Error> {
        let have = buffer.as_ref().len();
        let need = layout.total_len();
        if have < need {
            return Err(Error::BufferTooSmall { need, have });
        }
        if have != need || !matches!(layout.header_len, 12 | 16) || layout.prefix_len % 4 != 0 {
            return Err(Error::LengthMismatch {
                expected: need,
                actual: have,
            });
        }
        Ok(Packet { buffer, layout })
    }

    /// The layout found by [`Packet::new_checked`] (or given to [`Packet::with_layout`]).
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

    #[inline]
    fn bits(&self, f: field::Bits) -> u8 {
        f.get(self.header())
    }

    #[inline]
    fn flag(&self, f: field::Bits) -> bool {
        self.bits(f) != 0
    }

    /// Fmt\[2:0\].
    #[inline]
    pub fn fmt(&self) -> u8 {
        self.bits(field::FMT)
    }
    /// Type\[4:0\].
    #[inline]
    pub fn ty(&self) -> u8 {
        self.bits(field::TYPE)
    }
    /// Traffic Class.
    #[inline]
    pub fn tc(&self) -> u8 {
        self.bits(field::TC)
    }
    /// Tag bits T9 and T8 as a value to OR into the tag (0, 0x100, 0x200 or 0x300).
    #[inline]
    pub fn tag_hi(&self) -> u16 {
        (u16::from(self.bits(field::T9)) << 9) | (u16::from(self.bits(field::T8)) << 8)
    }
    /// Attr\[2\], ID-Based Ordering.
    #[inline]
    pub fn attr_ido(&self) -> bool {
        self.flag(field::ATTR_IDO)
    }
    /// LN (Lightweight Notification; reserved since 6.0, carried through).
    #[inline]
    pub fn ln(&self) -> bool {
        self.flag(field::LN)
    }
    /// TH, TLP Processing Hints present.
    #[inline]
    pub fn th(&self) -> bool {
        self.flag(field::TH)
    }
    /// TD, TLP digest present.
    #[inline]
    pub fn td(&self) -> bool {
        self.flag(field::TD)
    }
    /// EP, poisoned.
    #[inline]
    pub fn ep(&self) -> bool {
        self.flag(field::EP)
    }
    /// Attr\[1\], Relaxed Ordering.
    #[inline]
    pub fn attr_ro(&self) -> bool {
        self.flag(field::ATTR_RO)
    }
    /// Attr\[0\], No Snoop.
    #[inline]
    pub fn attr_ns(&self) -> bool {
        self.flag(field::ATTR_NS)
    }
    /// AT\[1:0\], Address Type.
    #[inline]
    pub fn at(&self) -> u8 {
        self.bits(field::AT)
    }
    /// Length in DW, decoded (a field of 0 means 1024).
    #[inline]
    pub fn length_dw(&self) -> u16 {
        let v = (u16::from(self.bits(field::LENGTH_HI)) << 8)
            | u16::from(self.header()[field::LENGTH_LO]);
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
        self.bits(field::FIRST_BE)
    }
    /// Last DW byte enables.
    #[inline]
    pub fn last_be(&self) -> u8 {
        self.bits(field::LAST_BE)
    }
    /// Message Code.
    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.header()[field::MSG_CODE]
    }
    /// Header bytes 8..16 of a message (their meaning depends on the Message Code).
    #[inline]
    pub fn msg_fields(&self) -> [u8; 8] {
        let mut f = [0u8; 8];
        f.copy_from_slice(&self.header()[field::MSG_FIELDS]);
        f
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
        self.bits(self.ph_field())
    }
    #[inline]
    fn ph_field(&self) -> field::Bits {
        if self.layout.header_len == 16 {
            field::PH64
        } else {
            field::PH32
        }
    }
    /// Target Bus/Device/Function of a configuration request.
    #[inline]
    pub fn cfg_target(&self) -> u16 {
        be16(self.header(), field::CFG_TARGET)
    }
    /// Register byte offset of a configuration request: Extended Register Number in bits
    /// 11:8, Register Number in bits 7:2.
    #[inline]
    pub fn cfg_register(&self) -> u16 {
        (u16::from(self.bits(field::CFG_EXT_REG)) << 8)
            | (u16::from(self.bits(field::CFG_REG)) << 2)
    }
    /// Whether a reserved bit of a configuration request's DW2 is set.
    #[inline]
    pub fn cfg_reserved_bits(&self) -> bool {
        self.flag(field::CFG_RSVD_HI) || self.flag(field::CFG_RSVD_LO)
    }
    /// Completer ID of a completion.
    #[inline]
    pub fn completer_id(&self) -> u16 {
        be16(self.header(), field::COMPLETER_ID)
    }
    /// Completion Status\[2:0\] (raw).
    #[inline]
    pub fn cpl_status(&self) -> u8 {
        self.bits(field::CPL_STATUS)
    }
    /// BCM.
    #[inline]
    pub fn bcm(&self) -> bool {
        self.flag(field::BCM)
    }
    /// Byte Count, decoded (a field of 0 means 4096).
    #[inline]
    pub fn byte_count(&self) -> u16 {
        let v = (u16::from(self.bits(field::BYTE_COUNT_HI)) << 8)
            | u16::from(self.header()[field::BYTE_COUNT_LO]);
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
    /// Lower Address\[6:0\] of a completion.
    #[inline]
    pub fn lower_address(&self) -> u8 {
        self.bits(field::LOWER_ADDR)
    }
    /// Whether the reserved bit 7 of a completion's byte 11 is set.
    #[inline]
    pub fn cpl_reserved_bit(&self) -> bool {
        self.flag(field::CPL_RSVD)
    }
}

/// The setter half: one setter per field, writing only that field's bits. Values wider than
/// the field are cut to its width; [`crate::tlp::Tlp::emit`] validates every value first, so
/// nothing it writes is ever cut.
impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// The prefix DWs, writable.
    #[inline]
    pub fn prefixes_mut(&mut self) -> &mut [u8] {
        let n = self.layout.prefix_len;
        &mut self.buffer.as_mut()[..n]
    }

    /// The header bytes, writable.
    #[inline]
    pub fn header_mut(&mut self) -> &mut [u8] {
        let s = self.layout.prefix_len;
        let n = self.layout.header_len;
        &mut self.buffer.as_mut()[s..s + n]
    }

    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let s = self.layout.prefix_len + self.layout.header_len;
        let n = self.layout.payload_len;
        &mut self.buffer.as_mut()[s..s + n]
    }

    /// Write the digest (wire byte order) when the layout has one; otherwise nothing.
    #[inline]
    pub fn set_ecrc(&mut self, digest: [u8; 4]) {
        let l = self.layout;
        if l.digest {
            let s = l.prefix_len + l.header_len + l.payload_len;
            self.buffer.as_mut()[s..s + 4].copy_from_slice(&digest);
        }
    }

    #[inline]
    fn set_bits(&mut self, f: field::Bits, v: u8) {
        f.put(self.header_mut(), v);
    }

    #[inline]
    fn set_be16(&mut self, r: field::Field, v: u16) {
        self.header_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    #[inline]
    fn set_be32(&mut self, r: field::Field, v: u32) {
        self.header_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Fmt\[2:0\].
    #[inline]
    pub fn set_fmt(&mut self, v: u8) {
        self.set_bits(field::FMT, v);
    }
    /// Type\[4:0\].
    #[inline]
    pub fn set_ty(&mut self, v: u8) {
        self.set_bits(field::TYPE, v);
    }
    /// Traffic Class.
    #[inline]
    pub fn set_tc(&mut self, v: u8) {
        self.set_bits(field::TC, v);
    }
    /// T9 and T8 from bits 9 and 8 of a tag.
    #[inline]
    pub fn set_tag_hi(&mut self, tag: u16) {
        self.set_bits(field::T9, (tag >> 9) as u8);
        self.set_bits(field::T8, (tag >> 8) as u8);
    }
    /// Attr\[2\], ID-Based Ordering.
    #[inline]
    pub fn set_attr_ido(&mut self, v: bool) {
        self.set_bits(field::ATTR_IDO, v.into());
    }
    /// LN.
    #[inline]
    pub fn set_ln(&mut self, v: bool) {
        self.set_bits(field::LN, v.into());
    }
    /// TH.
    #[inline]
    pub fn set_th(&mut self, v: bool) {
        self.set_bits(field::TH, v.into());
    }
    /// TD.
    #[inline]
    pub fn set_td(&mut self, v: bool) {
        self.set_bits(field::TD, v.into());
    }
    /// EP.
    #[inline]
    pub fn set_ep(&mut self, v: bool) {
        self.set_bits(field::EP, v.into());
    }
    /// Attr\[1\], Relaxed Ordering.
    #[inline]
    pub fn set_attr_ro(&mut self, v: bool) {
        self.set_bits(field::ATTR_RO, v.into());
    }
    /// Attr\[0\], No Snoop.
    #[inline]
    pub fn set_attr_ns(&mut self, v: bool) {
        self.set_bits(field::ATTR_NS, v.into());
    }
    /// AT\[1:0\].
    #[inline]
    pub fn set_at(&mut self, v: u8) {
        self.set_bits(field::AT, v);
    }
    /// Length in DW, 1..=1024 (1024 is written as the field value 0).
    #[inline]
    pub fn set_length_dw(&mut self, v: u16) {
        let f = v & 0x3ff;
        self.set_bits(field::LENGTH_HI, (f >> 8) as u8);
        self.header_mut()[field::LENGTH_LO] = f as u8;
    }
    /// Requester ID of a request.
    #[inline]
    pub fn set_requester_id(&mut self, v: u16) {
        self.set_be16(field::REQUESTER_ID, v);
    }
    /// 10-bit tag of a request (T9, T8 and Tag\[7:0\]).
    #[inline]
    pub fn set_tag(&mut self, v: u16) {
        self.set_tag_hi(v);
        self.header_mut()[field::TAG] = v as u8;
    }
    /// First DW byte enables.
    #[inline]
    pub fn set_first_be(&mut self, v: u8) {
        self.set_bits(field::FIRST_BE, v);
    }
    /// Last DW byte enables.
    #[inline]
    pub fn set_last_be(&mut self, v: u8) {
        self.set_bits(field::LAST_BE, v);
    }
    /// Message Code.
    #[inline]
    pub fn set_msg_code(&mut self, v: u8) {
        self.header_mut()[field::MSG_CODE] = v;
    }
    /// Header bytes 8..16 of a message.
    #[inline]
    pub fn set_msg_fields(&mut self, v: &[u8; 8]) {
        self.header_mut()[field::MSG_FIELDS].copy_from_slice(v);
    }
    /// Address of a memory/IO/AtomicOp request (bits 1:0 are left to [`Packet::set_ph`]); a
    /// 3 DW header takes bits 31:2.
    #[inline]
    pub fn set_address(&mut self, v: u64) {
        let ph = self.ph();
        if self.layout.header_len == 16 {
            self.set_be32(field::ADDR64_HI, (v >> 32) as u32);
            self.set_be32(field::ADDR64_LO, v as u32 & !3);
        } else {
            self.set_be32(field::ADDR32, v as u32 & !3);
        }
        self.set_ph(ph);
    }
    /// Processing Hints (address bits 1:0).
    #[inline]
    pub fn set_ph(&mut self, v: u8) {
        let f = self.ph_field();
        self.set_bits(f, v);
    }
    /// Target Bus/Device/Function of a configuration request.
    #[inline]
    pub fn set_cfg_target(&mut self, v: u16) {
        self.set_be16(field::CFG_TARGET, v);
    }
    /// Register byte offset of a configuration request (0..=0xffc; bits 1:0 are not stored).
    #[inline]
    pub fn set_cfg_register(&mut self, v: u16) {
        self.set_bits(field::CFG_EXT_REG, (v >> 8) as u8);
        self.set_bits(field::CFG_REG, (v >> 2) as u8);
    }
    /// Completer ID of a completion.
    #[inline]
    pub fn set_completer_id(&mut self, v: u16) {
        self.set_be16(field::COMPLETER_ID, v);
    }
    /// Completion Status\[2:0\] (raw).
    #[inline]
    pub fn set_cpl_status(&mut self, v: u8) {
        self.set_bits(field::CPL_STATUS, v);
    }
    /// BCM.
    #[inline]
    pub fn set_bcm(&mut self, v: bool) {
        self.set_bits(field::BCM, v.into());
    }
    /// Byte Count, 1..=4096 (4096 is written as the field value 0).
    #[inline]
    pub fn set_byte_count(&mut self, v: u16) {
        let f = v & 0xfff;
        self.set_bits(field::BYTE_COUNT_HI, (f >> 8) as u8);
        self.header_mut()[field::BYTE_COUNT_LO] = f as u8;
    }
    /// Requester ID of a completion.
    #[inline]
    pub fn set_cpl_requester_id(&mut self, v: u16) {
        self.set_be16(field::CPL_REQUESTER_ID, v);
    }
    /// 10-bit tag of a completion (T9, T8 and Tag\[7:0\]).
    #[inline]
    pub fn set_cpl_tag(&mut self, v: u16) {
        self.set_tag_hi(v);
        self.header_mut()[field::CPL_TAG] = v as u8;
    }
    /// Lower Address\[6:0\] of a completion.
    #[inline]
    pub fn set_lower_address(&mut self, v: u8) {
        self.set_bits(field::LOWER_ADDR, v);
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
    fn construct() {
        // Build the same CplD through the setters, on a buffer that starts out all ones.
        let mut b = [0xffu8; 16];
        let layout = Layout {
            prefix_len: 0,
            header_len: 12,
            payload_len: 4,
            digest: false,
            kind: Kind::CplD,
        };
        let mut p = Packet::with_layout(&mut b[..], layout).unwrap();
        p.header_mut().fill(0);
        p.set_fmt(0b010);
        p.set_ty(0b01010);
        p.set_length_dw(1);
        p.set_completer_id(0x0100);
        p.set_byte_count(4);
        p.payload_mut().copy_from_slice(&[0x4d, 0x14, 0x08, 0xa8]);
        assert_eq!(b, CPLD);
        // The view over a built buffer parses as the same TLP.
        assert_eq!(Packet::new_checked(&b[..]).unwrap().layout(), &layout);
        assert!(matches!(
            Packet::with_layout(&mut b[..15], layout),
            Err(Error::BufferTooSmall { need: 16, have: 15 })
        ));
    }

    type P<'a> = Packet<&'a mut [u8]>;
    type Case = (&'static str, fn(&mut P<'_>, u64), fn(&P<'_>) -> u64, u64);

    /// Every setter, with its getter and the largest value the field holds.
    const CASES: &[Case] = &[
        ("fmt", |p, v| p.set_fmt(v as u8), |p| p.fmt().into(), 7),
        ("ty", |p, v| p.set_ty(v as u8), |p| p.ty().into(), 0x1f),
        ("tc", |p, v| p.set_tc(v as u8), |p| p.tc().into(), 7),
        (
            "ido",
            |p, v| p.set_attr_ido(v & 1 != 0),
            |p| p.attr_ido().into(),
            1,
        ),
        ("ln", |p, v| p.set_ln(v & 1 != 0), |p| p.ln().into(), 1),
        ("th", |p, v| p.set_th(v & 1 != 0), |p| p.th().into(), 1),
        ("td", |p, v| p.set_td(v & 1 != 0), |p| p.td().into(), 1),
        ("ep", |p, v| p.set_ep(v & 1 != 0), |p| p.ep().into(), 1),
        (
            "ro",
            |p, v| p.set_attr_ro(v & 1 != 0),
            |p| p.attr_ro().into(),
            1,
        ),
        (
            "ns",
            |p, v| p.set_attr_ns(v & 1 != 0),
            |p| p.attr_ns().into(),
            1,
        ),
        ("at", |p, v| p.set_at(v as u8), |p| p.at().into(), 3),
        (
            "length",
            |p, v| p.set_length_dw((v % 1024) as u16 + 1),
            |p| u64::from(p.length_dw()) - 1,
            1023,
        ),
        (
            "rid",
            |p, v| p.set_requester_id(v as u16),
            |p| p.requester_id().into(),
            0xffff,
        ),
        ("tag", |p, v| p.set_tag(v as u16), |p| p.tag().into(), 0x3ff),
        (
            "first_be",
            |p, v| p.set_first_be(v as u8),
            |p| p.first_be().into(),
            0xf,
        ),
        (
            "last_be",
            |p, v| p.set_last_be(v as u8),
            |p| p.last_be().into(),
            0xf,
        ),
        (
            "msg_code",
            |p, v| p.set_msg_code(v as u8),
            |p| p.msg_code().into(),
            0xff,
        ),
        (
            "msg_fields",
            |p, v| p.set_msg_fields(&v.to_be_bytes()),
            |p| u64::from_be_bytes(p.msg_fields()),
            u64::MAX,
        ),
        (
            "address",
            |p, v| p.set_address(v << 2),
            |p| p.address() >> 2,
            u64::MAX >> 2,
        ),
        ("ph", |p, v| p.set_ph(v as u8), |p| p.ph().into(), 3),
        (
            "cfg_target",
            |p, v| p.set_cfg_target(v as u16),
            |p| p.cfg_target().into(),
            0xffff,
        ),
        (
            "cfg_register",
            |p, v| p.set_cfg_register((v as u16) << 2),
            |p| u64::from(p.cfg_register()) >> 2,
            0x3ff,
        ),
        (
            "completer",
            |p, v| p.set_completer_id(v as u16),
            |p| p.completer_id().into(),
            0xffff,
        ),
        (
            "status",
            |p, v| p.set_cpl_status(v as u8),
            |p| p.cpl_status().into(),
            7,
        ),
        ("bcm", |p, v| p.set_bcm(v & 1 != 0), |p| p.bcm().into(), 1),
        (
            "byte_count",
            |p, v| p.set_byte_count((v % 4096) as u16 + 1),
            |p| u64::from(p.byte_count()) - 1,
            4095,
        ),
        (
            "cpl_rid",
            |p, v| p.set_cpl_requester_id(v as u16),
            |p| p.cpl_requester_id().into(),
            0xffff,
        ),
        (
            "cpl_tag",
            |p, v| p.set_cpl_tag(v as u16),
            |p| p.cpl_tag().into(),
            0x3ff,
        ),
        (
            "lower_addr",
            |p, v| p.set_lower_address(v as u8),
            |p| p.lower_address().into(),
            0x7f,
        ),
    ];

    fn view(b: &mut [u8]) -> P<'_> {
        let layout = Layout {
            prefix_len: 0,
            header_len: 16,
            payload_len: 0,
            digest: false,
            kind: Kind::Msg(crate::tlp::MsgRouting::Local),
        };
        Packet::with_layout(b, layout).unwrap()
    }

    proptest::proptest! {
        /// Each setter changes only the bits its field owns (found by writing a few values
        /// over all zeros and all ones), whatever the other bytes hold, and its getter reads
        /// the value back.
        #[test]
        fn every_setter_writes_only_its_field(
            start in proptest::prelude::any::<[u8; 16]>(), v in proptest::prelude::any::<u64>()
        ) {
            for &(name, set, get, max) in CASES {
                let mut owned = [0u8; 16];
                for fill in [0u8, 0xff] {
                    for x in [0, max, max - 1] {
                        let mut t = [fill; 16];
                        set(&mut view(&mut t), x);
                        for i in 0..16 {
                            owned[i] |= t[i] ^ fill;
                        }
                    }
                }
                let mut b = start;
                let mut p = view(&mut b);
                set(&mut p, v);
                let want = if max == u64::MAX { v } else { v % (max + 1) };
                proptest::prop_assert_eq!(get(&p), want, "{}", name);
                for i in 0..16 {
                    proptest::prop_assert_eq!(b[i] & !owned[i], start[i] & !owned[i], "{} byte {}", name, i);
                }
            }
        }
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
