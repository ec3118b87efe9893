//! PCIe Transaction Layer Packets, non-Flit mode (PCIe Base Specification 6.x, chapter 2).
//!
//! * [`Packet`] — zero-copy view over the bytes of one TLP ([`packet`]).
//! * [`Tlp`] — the typed value: [`Tlp::parse`] borrows payload and prefixes from the input,
//!   [`Tlp::emit`] writes the identical bytes back ([`repr`]). Neither allocates.
//! * [`classify`] — ordering class and flow-control credits from DW0 alone ([`class`]).
//! * [`split`] — byte-enable arithmetic, splitting requests at MRRS/MPS and read completions
//!   at the Read Completion Boundary.
//! * [`build`] — constructors for what both halves build: memory reads and writes, MSI,
//!   configuration requests, completions (split at RCB/MPS), INTx messages.
//! * [`header`] — the type-specific header values; validation rules live in `validate.rs`.
//! * [`ecrc`] — the TLP digest (§2.7.1); [`message`], [`prefix`] — message codes and prefixes.
//! * [`json`] — the stable JSON form used by `pcietun tlp` (documented in docs/tlp.md).

pub mod build;
pub mod class;
mod display;
pub mod ecrc;
pub mod header;
pub mod json;
pub mod message;
pub mod packet;
pub mod prefix;
pub mod repr;
pub mod requester;
pub mod slot;
pub mod split;
mod validate;

pub use class::{classify, ClassifyError, Credits, OrderingClass};
pub use message::MsgRouting;
pub use packet::Packet;
pub use prefix::{Prefix, Prefixes};
pub use repr::{
    Attr, CfgRequest, Completion, CplStatus, IoRequest, MemOp, MemRequest, Message, Tlp, TlpHeader,
};
pub use validate::check_byte_enables;

use core::fmt;

/// A PCI Requester/Completer ID: bus (8 bits), device (5), function (3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Bdf(pub u16);

impl Bdf {
    /// Build from bus, device (0..32) and function (0..8); extra bits are masked off.
    pub const fn new(bus: u8, dev: u8, func: u8) -> Bdf {
        Bdf(((bus as u16) << 8) | (((dev & 0x1f) as u16) << 3) | (func & 7) as u16)
    }
    /// Bus number.
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Device number.
    pub const fn device(self) -> u8 {
        ((self.0 >> 3) & 0x1f) as u8
    }
    /// Function number.
    pub const fn function(self) -> u8 {
        (self.0 & 7) as u8
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus(),
            self.device(),
            self.function()
        )
    }
}

impl core::str::FromStr for Bdf {
    type Err = Error;
    /// Parse `"bb:dd.f"` (hex).
    fn from_str(s: &str) -> Result<Bdf, Error> {
        let bad = || Error::BadBdf;
        let (bus, rest) = s.split_once(':').ok_or_else(bad)?;
        let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
        let bus = u8::from_str_radix(bus, 16).map_err(|_| bad())?;
        let dev = u8::from_str_radix(dev, 16).map_err(|_| bad())?;
        let func = u8::from_str_radix(func, 16).map_err(|_| bad())?;
        if dev > 0x1f || func > 7 {
            return Err(bad());
        }
        Ok(Bdf::new(bus, dev, func))
    }
}

/// The TLP type given by Fmt\[2:0\] and Type\[4:0\] (§2.2.1.1, Table 2-3). The address width of
/// memory requests and AtomicOps is Fmt bit 0 and not part of the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Memory Read Request.
    MRd,
    /// Memory Read Request-Locked.
    MRdLk,
    /// Memory Write Request.
    MWr,
    /// Deferrable Memory Write Request.
    DMWr,
    /// I/O Read Request.
    IORd,
    /// I/O Write Request.
    IOWr,
    /// Type 0 Configuration Read.
    CfgRd0,
    /// Type 0 Configuration Write.
    CfgWr0,
    /// Type 1 Configuration Read.
    CfgRd1,
    /// Type 1 Configuration Write.
    CfgWr1,
    /// Completion without data.
    Cpl,
    /// Completion with data.
    CplD,
    /// Locked completion without data.
    CplLk,
    /// Locked completion with data.
    CplDLk,
    /// Message without data.
    Msg(MsgRouting),
    /// Message with data.
    MsgD(MsgRouting),
    /// Fetch and Add AtomicOp.
    FetchAdd,
    /// Unconditional Swap AtomicOp.
    Swap,
    /// Compare and Swap AtomicOp.
    Cas,
}

impl Kind {
    /// Decode Fmt/Type of a header (not a prefix). `None` for reserved encodings.
    #[inline]
    pub const fn from_fmt_type(fmt: u8, ty: u8) -> Option<Kind> {
        Some(match (fmt, ty) {
            (0b000 | 0b001, 0b0_0000) => Kind::MRd,
            (0b000 | 0b001, 0b0_0001) => Kind::MRdLk,
            (0b010 | 0b011, 0b0_0000) => Kind::MWr,
            (0b010 | 0b011, 0b1_1011) => Kind::DMWr,
            (0b000, 0b0_0010) => Kind::IORd,
            (0b010, 0b0_0010) => Kind::IOWr,
            (0b000, 0b0_0100) => Kind::CfgRd0,
            (0b010, 0b0_0100) => Kind::CfgWr0,
            (0b000, 0b0_0101) => Kind::CfgRd1,
            (0b010, 0b0_0101) => Kind::CfgWr1,
            (0b000, 0b0_1010) => Kind::Cpl,
            (0b010, 0b0_1010) => Kind::CplD,
            (0b000, 0b0_1011) => Kind::CplLk,
            (0b010, 0b0_1011) => Kind::CplDLk,
            (0b001, 0b1_0000..=0b1_0101) => match MsgRouting::from_bits(ty & 7) {
                Some(r) => Kind::Msg(r),
                None => return None,
            },
            (0b011, 0b1_0000..=0b1_0101) => match MsgRouting::from_bits(ty & 7) {
                Some(r) => Kind::MsgD(r),
                None => return None,
            },
            (0b010 | 0b011, 0b0_1100) => Kind::FetchAdd,
            (0b010 | 0b011, 0b0_1101) => Kind::Swap,
            (0b010 | 0b011, 0b0_1110) => Kind::Cas,
            _ => return None,
        })
    }

    /// Type\[4:0\] of this kind.
    pub const fn type_bits(self) -> u8 {
        match self {
            Kind::MRd | Kind::MWr => 0b0_0000,
            Kind::MRdLk => 0b0_0001,
            Kind::DMWr => 0b1_1011,
            Kind::IORd | Kind::IOWr => 0b0_0010,
            Kind::CfgRd0 | Kind::CfgWr0 => 0b0_0100,
            Kind::CfgRd1 | Kind::CfgWr1 => 0b0_0101,
            Kind::Cpl | Kind::CplD => 0b0_1010,
            Kind::CplLk | Kind::CplDLk => 0b0_1011,
            Kind::Msg(r) | Kind::MsgD(r) => 0b1_0000 | r as u8,
            Kind::FetchAdd => 0b0_1100,
            Kind::Swap => 0b0_1101,
            Kind::Cas => 0b0_1110,
        }
    }

    /// Whether TLPs of this kind carry a data payload (Fmt bit 1).
    pub const fn has_data(self) -> bool {
        matches!(
            self,
            Kind::MWr
                | Kind::DMWr
                | Kind::IOWr
                | Kind::CfgWr0
                | Kind::CfgWr1
                | Kind::CplD
                | Kind::CplDLk
                | Kind::MsgD(_)
                | Kind::FetchAdd
                | Kind::Swap
                | Kind::Cas
        )
    }

    /// The ordering / flow-control class (§2.4, §2.6.1).
    pub const fn ordering_class(self) -> OrderingClass {
        match self {
            Kind::MWr | Kind::Msg(_) | Kind::MsgD(_) => OrderingClass::Posted,
            Kind::Cpl | Kind::CplD | Kind::CplLk | Kind::CplDLk => OrderingClass::Completion,
            _ => OrderingClass::NonPosted,
        }
    }
}

/// Why bytes are not a valid TLP, or a [`Tlp`] value cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the prefixes/header do.
    #[error("TLP truncated: need at least {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The buffer length disagrees with Fmt, Length and TD.
    #[error("TLP length mismatch: header says {expected} bytes in total, buffer has {actual}")]
    LengthMismatch {
        /// What the header implies.
        expected: usize,
        /// What the buffer holds.
        actual: usize,
    },
    /// A Fmt/Type combination the specification reserves (§2.2.1.1 Table 2-3).
    #[error("reserved Fmt/Type combination: Fmt {fmt:03b} Type {ty:05b}")]
    ReservedFmtType {
        /// Fmt\[2:0\].
        fmt: u8,
        /// Type\[4:0\].
        ty: u8,
    },
    /// More prefixes than the specification (or our bound) allows.
    #[error("too many {} TLP prefixes", if *end_to_end { "End-End" } else { "Local" })]
    TooManyPrefixes {
        /// Which kind overflowed.
        end_to_end: bool,
    },
    /// A Local prefix after an End-End prefix.
    #[error("Local TLP prefix after an End-End TLP prefix")]
    PrefixOrder,
    /// A reserved field or bit is not zero.
    #[error("reserved bits set in {0}")]
    ReservedBits(&'static str),
    /// A field holds a value outside its range or forbidden for this TLP kind.
    #[error("invalid {field} {value:#x} for {kind}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The TLP kind.
        kind: &'static str,
    },
    /// A message that breaks the rule of its Message Code (§2.2.8, [`message::RULES`]):
    /// routing, Msg/MsgD and payload length, or Traffic Class.
    #[error("{name} (Message Code {code:#04x}) is {violation} (PCIe Base Specification {spec})")]
    Message {
        /// Message Code.
        code: u8,
        /// The message's name.
        name: &'static str,
        /// Which part of the rule it breaks.
        violation: message::Violation,
        /// The table the rule comes from.
        spec: &'static str,
    },
    /// Byte enables the specification forbids (§2.2.5).
    #[error("forbidden byte enables: First BE {first:#x}, Last BE {last:#x}, Length {length_dw} DW: {reason}")]
    ByteEnables {
        /// First DW BE.
        first: u8,
        /// Last DW BE.
        last: u8,
        /// Length in DW.
        length_dw: u16,
        /// Which rule.
        reason: &'static str,
    },
    /// A memory request crossing a 4 KiB boundary (§2.2.7).
    #[error("request at {address:#x} of {length_dw} DW crosses a 4 KiB boundary")]
    Crosses4K {
        /// Start address.
        address: u64,
        /// Length in DW.
        length_dw: u16,
    },
    /// Payload bytes disagree with the Length field.
    #[error("payload of {data_len} bytes does not match Length {length_dw} DW")]
    PayloadMismatch {
        /// Length field, decoded.
        length_dw: u16,
        /// Payload bytes.
        data_len: usize,
    },
    /// The TLP digest does not match the ECRC computed over the TLP (§2.7.1).
    #[error("ECRC mismatch: TLP carries {found:08x}, computed {computed:08x}")]
    Ecrc {
        /// Digest in the TLP (wire byte order).
        found: u32,
        /// Digest computed (wire byte order).
        computed: u32,
    },
    /// The output buffer is too small for [`Tlp::emit`].
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A bus/device/function string that is not `bb:dd.f`.
    #[error("bad requester/completer ID, expected bb:dd.f in hex")]
    BadBdf,
}
