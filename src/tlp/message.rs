//! Message routing (PCIe Base Specification §2.2.8, Table 2-20) and the base-spec Message
//! Codes (§2.2.8.1–§2.2.8.11; ATS messages §10.3, PTM §6.21.3, LTR §6.18, OBFF §6.19).

use core::fmt;

/// Message routing subfield r[2:0] of the Type field (§2.2.8 Table 2-20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgRouting {
    /// 000: routed to the Root Complex.
    ToRc = 0,
    /// 001: routed by address.
    ByAddress = 1,
    /// 010: routed by ID.
    ById = 2,
    /// 011: broadcast from the Root Complex.
    Broadcast = 3,
    /// 100: local, terminate at receiver.
    Local = 4,
    /// 101: gathered and routed to the Root Complex.
    Gathered = 5,
}

impl MsgRouting {
    /// All defined routings.
    pub const ALL: [MsgRouting; 6] = [
        Self::ToRc,
        Self::ByAddress,
        Self::ById,
        Self::Broadcast,
        Self::Local,
        Self::Gathered,
    ];

    /// Decode r[2:0]; 110 and 111 are reserved.
    pub const fn from_bits(r: u8) -> Option<MsgRouting> {
        Some(match r {
            0 => Self::ToRc,
            1 => Self::ByAddress,
            2 => Self::ById,
            3 => Self::Broadcast,
            4 => Self::Local,
            5 => Self::Gathered,
            _ => return None,
        })
    }

    /// The stable name used in JSON and the analyser output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ToRc => "RC",
            Self::ByAddress => "Address",
            Self::ById => "ID",
            Self::Broadcast => "Broadcast",
            Self::Local => "Local",
            Self::Gathered => "Gathered",
        }
    }

    /// Inverse of [`MsgRouting::name`].
    pub fn from_name(s: &str) -> Option<MsgRouting> {
        Self::ALL.into_iter().find(|r| r.name() == s)
    }
}

impl fmt::Display for MsgRouting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Message Codes of the base specification.
pub mod code {
    /// Unlock (§2.2.8.4), broadcast from RC.
    pub const UNLOCK: u8 = 0x00;
    /// ATS Invalidate Request (§10.3.1), routed by ID, MsgD.
    pub const ATS_INVALIDATE_REQUEST: u8 = 0x01;
    /// ATS Invalidate Completion (§10.3.2), routed by ID.
    pub const ATS_INVALIDATE_COMPLETION: u8 = 0x02;
    /// ATS Page Request (§10.4.1), routed to RC.
    pub const PAGE_REQUEST: u8 = 0x04;
    /// ATS PRG Response (§10.4.2), routed by ID.
    pub const PRG_RESPONSE: u8 = 0x05;
    /// Latency Tolerance Reporting (§2.2.8.8), routed to RC.
    pub const LTR: u8 = 0x10;
    /// Optimized Buffer Flush/Fill (§2.2.8.9), broadcast from RC.
    pub const OBFF: u8 = 0x12;
    /// PM_Active_State_Nak (§2.2.8.2), local.
    pub const PM_ACTIVE_STATE_NAK: u8 = 0x14;
    /// PM_PME (§2.2.8.2), routed to RC.
    pub const PM_PME: u8 = 0x18;
    /// PME_Turn_Off (§2.2.8.2), broadcast from RC.
    pub const PME_TURN_OFF: u8 = 0x19;
    /// PME_TO_Ack (§2.2.8.2), gathered to RC.
    pub const PME_TO_ACK: u8 = 0x1b;
    /// Assert_INTA (§2.2.8.1), local; B, C, D follow.
    pub const ASSERT_INTA: u8 = 0x20;
    /// Deassert_INTA (§2.2.8.1), local; B, C, D follow.
    pub const DEASSERT_INTA: u8 = 0x24;
    /// ERR_COR (§2.2.8.3), routed to RC.
    pub const ERR_COR: u8 = 0x30;
    /// ERR_NONFATAL (§2.2.8.3), routed to RC.
    pub const ERR_NONFATAL: u8 = 0x31;
    /// ERR_FATAL (§2.2.8.3), routed to RC.
    pub const ERR_FATAL: u8 = 0x33;
    /// Set_Slot_Power_Limit (§2.2.8.5), local, MsgD with 1 DW.
    pub const SET_SLOT_POWER_LIMIT: u8 = 0x50;
    /// PTM Request (§2.2.8.10), local.
    pub const PTM_REQUEST: u8 = 0x52;
    /// PTM Response (Msg) / ResponseD (MsgD) (§2.2.8.10), local.
    pub const PTM_RESPONSE: u8 = 0x53;
    /// Vendor_Defined Type 0 (§2.2.8.6).
    pub const VENDOR_DEFINED_0: u8 = 0x7e;
    /// Vendor_Defined Type 1 (§2.2.8.6).
    pub const VENDOR_DEFINED_1: u8 = 0x7f;
}

/// Human name of a Message Code (`None` for codes this codec does not name).
pub const fn code_name(code: u8) -> Option<&'static str> {
    Some(match code {
        code::UNLOCK => "Unlock",
        code::ATS_INVALIDATE_REQUEST => "ATS_Invalidate_Request",
        code::ATS_INVALIDATE_COMPLETION => "ATS_Invalidate_Completion",
        code::PAGE_REQUEST => "Page_Request",
        code::PRG_RESPONSE => "PRG_Response",
        code::LTR => "LTR",
        code::OBFF => "OBFF",
        code::PM_ACTIVE_STATE_NAK => "PM_Active_State_Nak",
        code::PM_PME => "PM_PME",
        code::PME_TURN_OFF => "PME_Turn_Off",
        code::PME_TO_ACK => "PME_TO_Ack",
        0x20 => "Assert_INTA",
        0x21 => "Assert_INTB",
        0x22 => "Assert_INTC",
        0x23 => "Assert_INTD",
        0x24 => "Deassert_INTA",
        0x25 => "Deassert_INTB",
        0x26 => "Deassert_INTC",
        0x27 => "Deassert_INTD",
        code::ERR_COR => "ERR_COR",
        code::ERR_NONFATAL => "ERR_NONFATAL",
        code::ERR_FATAL => "ERR_FATAL",
        code::SET_SLOT_POWER_LIMIT => "Set_Slot_Power_Limit",
        code::PTM_REQUEST => "PTM_Request",
        code::PTM_RESPONSE => "PTM_Response",
        code::VENDOR_DEFINED_0 => "Vendor_Defined_Type_0",
        code::VENDOR_DEFINED_1 => "Vendor_Defined_Type_1",
        _ => return None,
    })
}

/// The routing the specification requires for a Message Code, where it fixes one. Vendor-Defined
/// messages may use any routing; unknown codes are not checked.
pub const fn required_routing(code: u8) -> Option<MsgRouting> {
    use MsgRouting::*;
    Some(match code {
        code::UNLOCK | code::PME_TURN_OFF | code::OBFF => Broadcast,
        code::ATS_INVALIDATE_REQUEST | code::ATS_INVALIDATE_COMPLETION | code::PRG_RESPONSE => ById,
        code::PAGE_REQUEST | code::LTR | code::PM_PME => ToRc,
        code::ERR_COR | code::ERR_NONFATAL | code::ERR_FATAL => ToRc,
        code::PME_TO_ACK => Gathered,
        code::PM_ACTIVE_STATE_NAK
        | code::SET_SLOT_POWER_LIMIT
        | code::PTM_REQUEST
        | code::PTM_RESPONSE => Local,
        0x20..=0x27 => Local,
        _ => return None,
    })
}
