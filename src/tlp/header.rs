//! The type-specific parts of a TLP header, as plain values (PCIe Base Specification §2.2.6
//! transaction descriptor and attributes, §2.2.7 memory/IO/configuration requests and
//! AtomicOps, §2.2.8 messages, §2.2.9 completions).

use super::{Bdf, Kind, MsgRouting};

/// The three attribute bits (§2.2.6.3–§2.2.6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    /// Attr\[0\], No Snoop.
    pub ns: bool,
    /// Attr\[1\], Relaxed Ordering.
    pub ro: bool,
    /// Attr\[2\], ID-Based Ordering.
    pub ido: bool,
}

/// What a memory-addressed request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemOp {
    /// MRd.
    Read,
    /// MRdLk.
    ReadLocked,
    /// MWr.
    Write,
    /// DMWr.
    DeferrableWrite,
    /// FetchAdd AtomicOp.
    FetchAdd,
    /// Swap AtomicOp.
    Swap,
    /// CAS AtomicOp.
    Cas,
}

impl MemOp {
    /// The [`Kind`] of this operation.
    pub const fn kind(self) -> Kind {
        match self {
            MemOp::Read => Kind::MRd,
            MemOp::ReadLocked => Kind::MRdLk,
            MemOp::Write => Kind::MWr,
            MemOp::DeferrableWrite => Kind::DMWr,
            MemOp::FetchAdd => Kind::FetchAdd,
            MemOp::Swap => Kind::Swap,
            MemOp::Cas => Kind::Cas,
        }
    }
    /// Whether this is an AtomicOp.
    pub const fn is_atomic(self) -> bool {
        matches!(self, MemOp::FetchAdd | MemOp::Swap | MemOp::Cas)
    }
}

/// Memory Read/Write, Deferrable Memory Write and AtomicOp requests (§2.2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRequest {
    /// The operation.
    pub op: MemOp,
    /// 4 DW header (64-bit address format).
    pub addr64: bool,
    /// Requester ID.
    pub requester_id: Bdf,
    /// 10-bit tag (with TH on a posted write, bits 7:0 are ST\[7:0\]).
    pub tag: u16,
    /// First DW BE (with TH on a read, First/Last BE hold ST\[7:0\]).
    pub first_be: u8,
    /// Last DW BE.
    pub last_be: u8,
    /// DW-aligned address (bits 1:0 zero).
    pub address: u64,
    /// Processing Hints, address bits 1:0 when TH is set (reserved, zero, otherwise).
    pub ph: u8,
}

/// IO Read/Write requests (§2.2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoRequest {
    /// IOWr rather than IORd.
    pub write: bool,
    /// Requester ID.
    pub requester_id: Bdf,
    /// 10-bit tag.
    pub tag: u16,
    /// First DW BE.
    pub first_be: u8,
    /// Last DW BE (must be 0).
    pub last_be: u8,
    /// DW-aligned IO address.
    pub address: u32,
}

/// Configuration requests (§2.2.7, Figure 2-21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CfgRequest {
    /// CfgWr rather than CfgRd.
    pub write: bool,
    /// Type 1 rather than Type 0.
    pub type1: bool,
    /// Requester ID.
    pub requester_id: Bdf,
    /// 10-bit tag.
    pub tag: u16,
    /// First DW BE.
    pub first_be: u8,
    /// Last DW BE (must be 0).
    pub last_be: u8,
    /// Bus/Device/Function targeted.
    pub target: Bdf,
    /// Byte offset of the register DW in configuration space (0..=0xffc, DW-aligned).
    pub register: u16,
}

/// Completion Status (§2.2.9 Table 2-34).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CplStatus {
    /// 000b Successful Completion.
    Sc,
    /// 001b Unsupported Request.
    Ur,
    /// 010b Configuration Request Retry Status.
    Crs,
    /// 100b Completer Abort.
    Ca,
}

impl CplStatus {
    /// Decode; other encodings are reserved.
    pub const fn from_bits(b: u8) -> Option<CplStatus> {
        Some(match b {
            0 => CplStatus::Sc,
            1 => CplStatus::Ur,
            2 => CplStatus::Crs,
            4 => CplStatus::Ca,
            _ => return None,
        })
    }
    /// Encode.
    pub const fn bits(self) -> u8 {
        match self {
            CplStatus::Sc => 0,
            CplStatus::Ur => 1,
            CplStatus::Crs => 2,
            CplStatus::Ca => 4,
        }
    }
    /// `"SC"`, `"UR"`, `"CRS"` or `"CA"`.
    pub const fn name(self) -> &'static str {
        match self {
            CplStatus::Sc => "SC",
            CplStatus::Ur => "UR",
            CplStatus::Crs => "CRS",
            CplStatus::Ca => "CA",
        }
    }
    /// Inverse of [`CplStatus::name`].
    pub fn from_name(s: &str) -> Option<CplStatus> {
        [CplStatus::Sc, CplStatus::Ur, CplStatus::Crs, CplStatus::Ca]
            .into_iter()
            .find(|c| c.name() == s)
    }
}

/// Completions (§2.2.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// CplD / CplDLk.
    pub with_data: bool,
    /// CplLk / CplDLk.
    pub locked: bool,
    /// Completer ID.
    pub completer_id: Bdf,
    /// Completion Status.
    pub status: CplStatus,
    /// Byte Count Modified (PCI-X bridges only).
    pub bcm: bool,
    /// Remaining byte count, 1..=4096 (the field's 0 means 4096).
    pub byte_count: u16,
    /// Requester ID of the request.
    pub requester_id: Bdf,
    /// 10-bit tag of the request.
    pub tag: u16,
    /// Lower Address\[6:0\].
    pub lower_address: u8,
}

/// Messages (§2.2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// MsgD rather than Msg.
    pub with_data: bool,
    /// Routing r\[2:0\].
    pub routing: MsgRouting,
    /// Requester ID.
    pub requester_id: Bdf,
    /// 10-bit tag (reserved for most messages, carried through).
    pub tag: u16,
    /// Message Code.
    pub code: u8,
    /// Header bytes 8..16, whose meaning depends on the code and routing (an address for
    /// address routing, a target ID in bytes 8..10 for ID routing, LTR values, …).
    pub fields: [u8; 8],
}

impl Message {
    /// The address of an address-routed message.
    pub fn address(&self) -> u64 {
        u64::from_be_bytes(self.fields) & !3
    }
    /// The target ID of an ID-routed message (bytes 8..10).
    pub fn target_id(&self) -> Bdf {
        Bdf(u16::from_be_bytes([self.fields[0], self.fields[1]]))
    }
}

/// The type-specific part of a TLP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlpHeader {
    /// MRd, MRdLk, MWr, DMWr, FetchAdd, Swap, CAS.
    Mem(MemRequest),
    /// IORd, IOWr.
    Io(IoRequest),
    /// CfgRd0/1, CfgWr0/1.
    Cfg(CfgRequest),
    /// Cpl, CplD, CplLk, CplDLk.
    Cpl(Completion),
    /// Msg, MsgD.
    Msg(Message),
}
