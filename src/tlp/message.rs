//! Message routing and the rules of every Message Code the PCIe Base Specification defines
//! (6.x numbering: §2.2.8 Table 2-20 routing; §2.2.8.1–§2.2.8.11 Tables 2-21 to 2-36 for
//! INTx, power management, error signalling, Unlock, Set_Slot_Power_Limit, Vendor-Defined,
//! PCI-SIG-Defined VDMs (DRS, FRS, Hierarchy ID), Ignored, LTR, OBFF, PTM and IDE messages;
//! §10.3–§10.4 for the ATS messages).
//!
//! [`RULES`] is the one copy of that knowledge in the code base: for each code, the routings
//! r\[2:0\] it may use, whether it is a Msg or a MsgD (and how long the payload is where the
//! spec fixes it), whether it must travel on TC0, and the spec table it comes from. The
//! validator (`validate.rs`), the analyser output and the test generators all read it.

use core::fmt;

/// Message routing subfield r\[2:0\] of the Type field (§2.2.8 Table 2-20).
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

    /// Decode r\[2:0\]; 110 and 111 are reserved.
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

/// A set of routings (bit r of the mask allows r\[2:0\] = r).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoutingSet(u8);

impl RoutingSet {
    /// Every defined routing (what codes without a rule may use).
    pub const ANY: RoutingSet = RoutingSet(0b11_1111);

    /// Exactly `r`.
    pub const fn only(r: MsgRouting) -> RoutingSet {
        RoutingSet(1 << r as u8)
    }

    /// This set and `r`.
    pub const fn and(self, r: MsgRouting) -> RoutingSet {
        RoutingSet(self.0 | 1 << r as u8)
    }

    /// Whether `r` is in the set.
    pub const fn contains(self, r: MsgRouting) -> bool {
        self.0 & (1 << r as u8) != 0
    }

    /// The routings in the set, in r\[2:0\] order.
    pub fn iter(self) -> impl Iterator<Item = MsgRouting> {
        MsgRouting::ALL
            .into_iter()
            .filter(move |r| self.contains(*r))
    }

    /// Number of routings in the set.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for RoutingSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            write!(f, "{} ({:03b}b)", r.name(), r as u8)?;
        }
        Ok(())
    }
}

/// Whether a message carries data, and how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Payload {
    /// Msg only (no data payload).
    None,
    /// MsgD only, with exactly this many DWs.
    Dw(u16),
    /// Msg, or MsgD with exactly this many DWs (PTM Response / ResponseD share a code).
    NoneOrDw(u16),
    /// Msg or MsgD of any length (Vendor-Defined).
    Any,
}

impl Payload {
    /// Whether a message with (`with_data`, `length_dw`) follows this rule.
    pub const fn allows(self, with_data: bool, length_dw: u16) -> bool {
        match self {
            Payload::None => !with_data,
            Payload::Dw(n) => with_data && length_dw == n,
            Payload::NoneOrDw(n) => !with_data || length_dw == n,
            Payload::Any => true,
        }
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::None => f.write_str("Msg without data"),
            Payload::Dw(n) => write!(f, "MsgD with {n} DW of data"),
            Payload::NoneOrDw(n) => write!(f, "Msg, or MsgD with {n} DW of data"),
            Payload::Any => f.write_str("Msg or MsgD"),
        }
    }
}

/// What the specification requires of one Message Code (or one PCI-SIG-Defined VDM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgRule {
    /// Message Code.
    pub code: u8,
    /// For PCI-SIG-Defined VDMs (code 7Fh, Vendor ID 0001h), the Subtype in header byte 12.
    pub subtype: Option<u8>,
    /// The name the specification gives it.
    pub name: &'static str,
    /// The routings r\[2:0\] it may use.
    pub routings: RoutingSet,
    /// Msg or MsgD, and the payload length.
    pub payload: Payload,
    /// Whether it must use Traffic Class 0 (the spec's "must use the default Traffic Class
    /// designator (TC0)").
    pub tc0: bool,
    /// Where the rule comes from.
    pub spec: &'static str,
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
    /// Latency Tolerance Reporting (§2.2.8.8), local.
    pub const LTR: u8 = 0x10;
    /// Optimized Buffer Flush/Fill (§2.2.8.9), local.
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
    /// The Ignored Messages (§2.2.8.7), once the PCIe 1.0a hot-plug indicator and button
    /// messages; local.
    pub const IGNORED: [u8; 7] = [0x40, 0x41, 0x43, 0x44, 0x45, 0x47, 0x48];
    /// Set_Slot_Power_Limit (§2.2.8.5), local, MsgD with 1 DW.
    pub const SET_SLOT_POWER_LIMIT: u8 = 0x50;
    /// PTM Request (§2.2.8.10), local.
    pub const PTM_REQUEST: u8 = 0x52;
    /// PTM Response (Msg) / ResponseD (MsgD, 1 DW) (§2.2.8.10), local.
    pub const PTM_RESPONSE: u8 = 0x53;
    /// IDE Sync (§2.2.8.11), local (Link IDE) or by ID (Selective IDE).
    pub const IDE_SYNC: u8 = 0x54;
    /// IDE Fail (§2.2.8.11), local (Link IDE) or by ID (Selective IDE).
    pub const IDE_FAIL: u8 = 0x55;
    /// Vendor_Defined Type 0 (§2.2.8.6).
    pub const VENDOR_DEFINED_0: u8 = 0x7e;
    /// Vendor_Defined Type 1 (§2.2.8.6); with Vendor ID 0001h, a PCI-SIG-Defined VDM.
    pub const VENDOR_DEFINED_1: u8 = 0x7f;
    /// The PCI-SIG's Vendor ID, which makes a Vendor_Defined Type 1 message a PCI-SIG-Defined
    /// VDM (§2.2.8.6.1); header bytes 10–11.
    pub const PCI_SIG_VENDOR_ID: u16 = 0x0001;
    /// PCI-SIG-Defined VDM Subtype (header byte 12): Hierarchy ID (§2.2.8.6.4).
    pub const SUBTYPE_HIERARCHY_ID: u8 = 0x01;
    /// PCI-SIG-Defined VDM Subtype: Device Readiness Status (§2.2.8.6.2).
    pub const SUBTYPE_DRS: u8 = 0x08;
    /// PCI-SIG-Defined VDM Subtype: Function Readiness Status (§2.2.8.6.3).
    pub const SUBTYPE_FRS: u8 = 0x09;
}

use MsgRouting::{Broadcast, ById, Gathered, Local, ToRc};

const fn rule(
    code: u8,
    name: &'static str,
    routings: RoutingSet,
    payload: Payload,
    tc0: bool,
    spec: &'static str,
) -> MsgRule {
    MsgRule {
        code,
        subtype: None,
        name,
        routings,
        payload,
        tc0,
        spec,
    }
}

const LOCAL: RoutingSet = RoutingSet::only(Local);
const TO_RC: RoutingSet = RoutingSet::only(ToRc);
const BY_ID: RoutingSet = RoutingSet::only(ById);
const BROADCAST: RoutingSet = RoutingSet::only(Broadcast);
/// Vendor-Defined messages: 000, 010, 011 or 100 (Table 2-28; no message uses 001 or 101).
const VDM: RoutingSet = RoutingSet::only(ToRc).and(ById).and(Broadcast).and(Local);
const INTX: &str = "§2.2.8.1 Table 2-21";
const PM: &str = "§2.2.8.2 Table 2-23";
const ERR: &str = "§2.2.8.3 Table 2-24";
const IGNORED: &str = "§2.2.8.7 Table 2-32";
const IDE: &str = "§2.2.8.11 Table 2-36";
const PTM: &str = "§2.2.8.10 Table 2-35";
const VDM_SPEC: &str = "§2.2.8.6 Table 2-28";

/// Every Message Code of the base specification, in code order. Codes not listed are not
/// defined by the specification (a Completer answers them with Unsupported Request, §2.2.8:
/// "the Message Code field must be fully decoded"); the codec carries them with any routing.
pub const RULES: &[MsgRule] = {
    use Payload::{Any, Dw, None, NoneOrDw};
    &[
        rule(0x00, "Unlock", BROADCAST, None, true, "§2.2.8.4 Table 2-26"),
        rule(
            0x01,
            "ATS_Invalidate_Request",
            BY_ID,
            Dw(2),
            false,
            "§10.3.1",
        ),
        rule(
            0x02,
            "ATS_Invalidate_Completion",
            BY_ID,
            None,
            false,
            "§10.3.2",
        ),
        rule(0x04, "Page_Request", TO_RC, None, false, "§10.4.1"),
        rule(0x05, "PRG_Response", BY_ID, None, false, "§10.4.2"),
        rule(0x10, "LTR", LOCAL, None, true, "§2.2.8.8 Table 2-33"),
        rule(0x12, "OBFF", LOCAL, None, true, "§2.2.8.9 Table 2-34"),
        rule(0x14, "PM_Active_State_Nak", LOCAL, None, true, PM),
        rule(0x18, "PM_PME", TO_RC, None, true, PM),
        rule(0x19, "PME_Turn_Off", BROADCAST, None, true, PM),
        rule(
            0x1b,
            "PME_TO_Ack",
            RoutingSet::only(Gathered),
            None,
            true,
            PM,
        ),
        rule(0x20, "Assert_INTA", LOCAL, None, true, INTX),
        rule(0x21, "Assert_INTB", LOCAL, None, true, INTX),
        rule(0x22, "Assert_INTC", LOCAL, None, true, INTX),
        rule(0x23, "Assert_INTD", LOCAL, None, true, INTX),
        rule(0x24, "Deassert_INTA", LOCAL, None, true, INTX),
        rule(0x25, "Deassert_INTB", LOCAL, None, true, INTX),
        rule(0x26, "Deassert_INTC", LOCAL, None, true, INTX),
        rule(0x27, "Deassert_INTD", LOCAL, None, true, INTX),
        rule(0x30, "ERR_COR", TO_RC, None, true, ERR),
        rule(0x31, "ERR_NONFATAL", TO_RC, None, true, ERR),
        rule(0x33, "ERR_FATAL", TO_RC, None, true, ERR),
        // The Ignored Messages, named after the PCIe 1.0a hot-plug messages they once were;
        // receivers only account their credits, and the current table fixes no payload.
        rule(
            0x40,
            "Ignored_Attention_Indicator_Off",
            LOCAL,
            Any,
            false,
            IGNORED,
        ),
        rule(
            0x41,
            "Ignored_Attention_Indicator_On",
            LOCAL,
            Any,
            false,
            IGNORED,
        ),
        rule(
            0x43,
            "Ignored_Attention_Indicator_Blink",
            LOCAL,
            Any,
            false,
            IGNORED,
        ),
        rule(
            0x44,
            "Ignored_Power_Indicator_Off",
            LOCAL,
            Any,
            false,
            IGNORED,
        ),
        rule(
            0x45,
            "Ignored_Power_Indicator_On",
            LOCAL,
            Any,
            false,
            IGNORED,
        ),
        rule(
            0x47,
            "Ignored_Power_Indicator_Blink",
            LOCAL,
            Any,
            false,
            IGNORED,
        ),
        rule(
            0x48,
            "Ignored_Attention_Button_Pressed",
            LOCAL,
            Any,
            false,
            IGNORED,
        ),
        rule(
            0x50,
            "Set_Slot_Power_Limit",
            LOCAL,
            Dw(1),
            true,
            "§2.2.8.5 Table 2-27",
        ),
        rule(0x52, "PTM_Request", LOCAL, None, true, PTM),
        rule(0x53, "PTM_Response", LOCAL, NoneOrDw(1), true, PTM),
        // IDE messages travel on the TC of their IDE stream.
        rule(0x54, "IDE_Sync", LOCAL.and(ById), None, false, IDE),
        rule(0x55, "IDE_Fail", LOCAL.and(ById), None, false, IDE),
        rule(0x7e, "Vendor_Defined_Type_0", VDM, Any, false, VDM_SPEC),
        rule(0x7f, "Vendor_Defined_Type_1", VDM, Any, false, VDM_SPEC),
    ]
};

/// The PCI-SIG-Defined VDMs with rules of their own (§2.2.8.6.1–§2.2.8.6.4): Vendor_Defined
/// Type 1 messages with Vendor ID 0001h in header bytes 10–11, told apart by the Subtype in
/// byte 12. Other subtypes follow the Vendor_Defined Type 1 rule.
pub const PCI_SIG_VDMS: &[MsgRule] = &[
    MsgRule {
        subtype: Some(code::SUBTYPE_HIERARCHY_ID),
        ..rule(
            0x7f,
            "Hierarchy_ID",
            BROADCAST,
            Payload::Dw(4),
            true,
            "§2.2.8.6.4 Table 2-31",
        )
    },
    MsgRule {
        subtype: Some(code::SUBTYPE_DRS),
        ..rule(
            0x7f,
            "DRS",
            LOCAL,
            Payload::None,
            true,
            "§2.2.8.6.2 Table 2-29",
        )
    },
    MsgRule {
        subtype: Some(code::SUBTYPE_FRS),
        ..rule(
            0x7f,
            "FRS",
            TO_RC,
            Payload::None,
            true,
            "§2.2.8.6.3 Table 2-30",
        )
    },
];

const NO_RULE: u8 = u8::MAX;

/// Message Code → index into [`RULES`], built at compile time.
const INDEX: [u8; 256] = {
    let mut index = [NO_RULE; 256];
    let mut i = 0;
    while i < RULES.len() {
        let c = RULES[i].code as usize;
        assert!(index[c] == NO_RULE, "a Message Code appears twice in RULES");
        index[c] = i as u8;
        i += 1;
    }
    index
};

/// The rule for a Message Code (`None` for codes the specification does not define).
#[inline]
pub const fn rule_for_code(code: u8) -> Option<&'static MsgRule> {
    match INDEX[code as usize] {
        NO_RULE => None,
        i => Some(&RULES[i as usize]),
    }
}

/// The rule a message follows: the PCI-SIG-Defined VDM's own rule when it is one, else the
/// rule of its code. `fields` are header bytes 8..16.
#[inline]
pub fn rule_for(code: u8, fields: &[u8; 8]) -> Option<&'static MsgRule> {
    if code == code::VENDOR_DEFINED_1
        && u16::from_be_bytes([fields[2], fields[3]]) == code::PCI_SIG_VENDOR_ID
    {
        if let Some(r) = PCI_SIG_VDMS.iter().find(|r| r.subtype == Some(fields[4])) {
            return Some(r);
        }
    }
    rule_for_code(code)
}

/// Human name of a Message Code (`None` for codes the specification does not define).
pub const fn code_name(code: u8) -> Option<&'static str> {
    match rule_for_code(code) {
        Some(r) => Some(r.name),
        None => None,
    }
}

/// An Assert_INTx / Deassert_INTx Message Code (§2.2.8.1 Table 2-21) read back: `Some((assert,
/// pin))` with `pin` 0..=3 for INTA..INTD, `None` for any other code. The inverse of
/// [`crate::tlp::build::intx`].
pub const fn intx(code: u8) -> Option<(bool, u8)> {
    match code {
        code::ASSERT_INTA..=0x23 => Some((true, code - code::ASSERT_INTA)),
        code::DEASSERT_INTA..=0x27 => Some((false, code - code::DEASSERT_INTA)),
        _ => None,
    }
}

/// Why a message breaks its code's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A routing the code does not allow.
    Routing {
        /// r\[2:0\] found.
        found: MsgRouting,
        /// What the rule allows.
        allowed: RoutingSet,
    },
    /// Msg where MsgD is required, or the wrong payload length.
    Payload {
        /// MsgD rather than Msg.
        with_data: bool,
        /// Length field (decoded).
        length_dw: u16,
        /// What the rule requires.
        required: Payload,
    },
    /// A Traffic Class other than TC0 where the spec requires TC0.
    TrafficClass(u8),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Routing { found, allowed } => write!(
                f,
                "routing {} ({:03b}b) is not allowed, it must be {allowed}",
                found.name(),
                *found as u8
            ),
            Violation::Payload {
                with_data: false,
                required,
                ..
            } => write!(f, "a Msg without data, it must be a {required}"),
            Violation::Payload {
                length_dw,
                required,
                ..
            } => write!(
                f,
                "a MsgD with {length_dw} DW of data, it must be a {required}"
            ),
            Violation::TrafficClass(tc) => write!(f, "on TC{tc}, it must use TC0"),
        }
    }
}

impl MsgRule {
    /// Check one message against this rule.
    #[inline]
    pub const fn check(
        &self,
        routing: MsgRouting,
        with_data: bool,
        length_dw: u16,
        tc: u8,
    ) -> Result<(), Violation> {
        if !self.routings.contains(routing) {
            return Err(Violation::Routing {
                found: routing,
                allowed: self.routings,
            });
        }
        if !self.payload.allows(with_data, length_dw) {
            return Err(Violation::Payload {
                with_data,
                length_dw,
                required: self.payload,
            });
        }
        if self.tc0 && tc != 0 {
            return Err(Violation::TrafficClass(tc));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_finds_every_rule_and_nothing_else() {
        for r in RULES {
            assert_eq!(rule_for_code(r.code), Some(r));
            assert!(!r.routings.is_empty(), "{}", r.name);
            // No message defined by the specification uses address routing (Table 2-20
            // note 27).
            assert!(!r.routings.contains(MsgRouting::ByAddress), "{}", r.name);
        }
        let defined = (0..=255u8).filter(|c| rule_for_code(*c).is_some()).count();
        assert_eq!(defined, RULES.len());
        assert_eq!(rule_for_code(0x03), None);
        assert_eq!(code_name(0x12), Some("OBFF"));
    }

    #[test]
    fn intx_codes_read_back() {
        let got: Vec<_> = (0..=255u8)
            .filter_map(|c| intx(c).map(|i| (c, i)))
            .collect();
        assert_eq!(
            got,
            [
                (0x20, (true, 0)),
                (0x21, (true, 1)),
                (0x22, (true, 2)),
                (0x23, (true, 3)),
                (0x24, (false, 0)),
                (0x25, (false, 1)),
                (0x26, (false, 2)),
                (0x27, (false, 3)),
            ]
        );
        for (c, _) in got {
            let name = code_name(c).unwrap();
            assert!(name.starts_with("Assert_INT") || name.starts_with("Deassert_INT"));
        }
    }

    #[test]
    fn pci_sig_vdms_are_told_apart_by_vendor_and_subtype() {
        let drs = [0, 0, 0x00, 0x01, code::SUBTYPE_DRS, 0, 0, 0];
        assert_eq!(rule_for(0x7f, &drs).map(|r| r.name), Some("DRS"));
        // Another vendor's VDM with the same byte 12 is an ordinary Type 1 VDM.
        let other = [0, 0, 0x1a, 0xf4, code::SUBTYPE_DRS, 0, 0, 0];
        assert_eq!(
            rule_for(0x7f, &other).map(|r| r.name),
            Some("Vendor_Defined_Type_1")
        );
        // Type 0 VDMs are never PCI-SIG-Defined VDMs.
        assert_eq!(
            rule_for(0x7e, &drs).map(|r| r.name),
            Some("Vendor_Defined_Type_0")
        );
    }

    #[test]
    fn violations_name_the_rule() {
        let ltr = rule_for_code(code::LTR).unwrap();
        assert_eq!(ltr.check(MsgRouting::Local, false, 1024, 0), Ok(()));
        let e = ltr.check(MsgRouting::ToRc, false, 1024, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "routing RC (000b) is not allowed, it must be Local (100b)"
        );
        assert_eq!(
            ltr.check(MsgRouting::Local, false, 1024, 3),
            Err(Violation::TrafficClass(3))
        );
        let spl = rule_for_code(code::SET_SLOT_POWER_LIMIT).unwrap();
        assert!(spl.check(MsgRouting::Local, true, 1, 0).is_ok());
        assert!(spl.check(MsgRouting::Local, false, 1024, 0).is_err());
        assert!(spl.check(MsgRouting::Local, true, 2, 0).is_err());
        let vdm = rule_for_code(code::VENDOR_DEFINED_0).unwrap();
        assert_eq!(
            vdm.routings.to_string(),
            "RC (000b) or ID (010b) or Broadcast (011b) or Local (100b)"
        );
    }
}
