//! Slot messages: how the appliance tells a host that a card was plugged into, or is to be
//! pulled from, one of the host's hot-plug slots, and how the host answers — carried in-band as
//! PCIe Vendor-Defined Type 1 Messages (PCIe Base Specification §2.2.8.6), so they are ordered
//! with the function's own TLPs and a receiver that does not know them discards them silently,
//! as §2.2.8.6 requires for Type 1.
//!
//! Layout (a 4 DW Msg header, no data; routing 100b "Local — terminate at receiver"):
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | Fmt 001, Type 1 0100 (Msg, Local), TC 0, Length 0 |
//! | 4..6 | Requester ID (the sender's port) |
//! | 6 | Tag (reserved, 0) |
//! | 7 | Message Code 0111 1111 (Vendor_Defined Type 1) |
//! | 8..10 | reserved (Bus/Device/Function for ID routing only) |
//! | 10..12 | Vendor ID: [`PCIETUN_VENDOR_ID`] |
//! | 12 | [`SlotEvent`] |
//! | 13 | slot: the device number on the host's tunnel bus (0..32) |
//! | 14..16 | generation of the assignment (big-endian): a removal acknowledgement for an older assignment of the same slot is recognisably stale |
//!
//! Two events carry data (a MsgD: Fmt 011, Length = the data's DW count, at most
//! [`MAX_DATA_DW`]): the host's [`ConsumerReport`] (0x82, what its VM did with the slot's
//! function) and the appliance's [`VmTarget`] (0x04, the VM the assignment names, sent just
//! before its `Present`). Their data, after the same 16 header bytes:
//!
//! | data bytes | field |
//! | --- | --- |
//! | 0 | [`ConsumerEvent`] (a report) or 0 (a VM target) |
//! | 1 | N, the VM name's length, 1..=[`MAX_VM_NAME`] |
//! | 2..2+N | the VM name, `[A-Za-z0-9._-]` |
//! | 2+N.. | zero up to the next DW |
//!
//! A host that predates them drops both as unknown events (counted); its `Present` still comes
//! as a plain Msg, so an old host works with a new appliance.
//!
//! At the start of every session the appliance sends one `Occupied` (0x05, no data) per slot
//! the host has, with that assignment's generation (preceded by its [`VmTarget`] when the
//! assignment names a VM): the host finds those cards by enumerating, not by a hot-plug event,
//! and learns from it the generation its reports about them must carry. A host that predates
//! it drops it as unknown; it then reports nothing about the cards it found at session start.
//!
//! This module is the one place that knows the layout; the appliance builds `Present`,
//! `RemovalRequest`, `Removed`, `Occupied` and [`VmTarget`], the host builds `RemovalAck` and
//! [`ConsumerReport`], and both parse with [`Slot::from_tlp`] (or [`SlotMessage::from_tlp`] for
//! the header alone).

use super::message::code;
use super::{Attr, Bdf, Error, Message, MsgRouting, Prefixes, Tlp, TlpHeader};

/// The vendor ID in pcietun's Vendor-Defined Messages (the placeholder of the models' IDs until
/// one is registered; docs/protocol.md).
pub const PCIETUN_VENDOR_ID: u16 = 0x1b36;

/// Offsets within the 8 header bytes 8..16 that a [`Message`] carries in `fields`.
mod field {
    pub const VENDOR: core::ops::Range<usize> = 2..4;
    pub const EVENT: usize = 4;
    pub const SLOT: usize = 5;
    pub const GENERATION: core::ops::Range<usize> = 6..8;
}

/// Number of slots a host's tunnel bus has (device numbers 0..32).
pub const SLOTS: u8 = 32;

/// How long, by default, the appliance waits for a host's `RemovalAck` after its
/// `RemovalRequest` before it detaches the function anyway (the appliance's
/// `[options] removal_grace_ms`). Both ends know it: the host agent fits its VM consumers'
/// eject wait inside it. Long enough for a VM's eject: the guest's pciehp alone waits 5 s after
/// the attention button, and the agent waits up to its VM grace (default 15 s, docs/vms.md)
/// for `DEVICE_DELETED` before it acknowledges.
pub const DEFAULT_REMOVAL_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// What happened to a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SlotEvent {
    /// Appliance → host: a function was assigned to this host at this slot (Presence Detect
    /// and Data Link Layer State Changed: the card is there and its link is up).
    Present = 0x01,
    /// Appliance → host: the function is about to be taken away (the attention button of an
    /// orderly removal): withdraw it from its consumers, then answer [`SlotEvent::RemovalAck`].
    RemovalRequest = 0x02,
    /// Appliance → host: the function is gone (after the acknowledgement, after the grace
    /// period, or because it failed): a surprise removal if the host still used it.
    Removed = 0x03,
    /// Appliance → host, with data ([`VmTarget`]): the assignment about to be presented at
    /// this slot and generation names the VM that is to take it.
    VmTarget = 0x04,
    /// Appliance → host, at session start: the slot holds the assignment of this generation
    /// (no hot-plug event: the host finds the card by enumeration). The generation the host's
    /// [`ConsumerReport`]s about it carry.
    Occupied = 0x05,
    /// Host → appliance: the function's consumers let it go; detach it now.
    RemovalAck = 0x81,
    /// Host → appliance, with data ([`ConsumerReport`]): what a VM did with the function.
    Consumer = 0x82,
}

impl SlotEvent {
    /// Decode byte 12.
    pub const fn from_u8(v: u8) -> Option<SlotEvent> {
        Some(match v {
            0x01 => Self::Present,
            0x02 => Self::RemovalRequest,
            0x03 => Self::Removed,
            0x04 => Self::VmTarget,
            0x05 => Self::Occupied,
            0x81 => Self::RemovalAck,
            0x82 => Self::Consumer,
            _ => return None,
        })
    }

    /// Whether the message carries data (a MsgD): [`VmTarget`] and [`ConsumerReport`].
    pub const fn has_data(self) -> bool {
        matches!(self, Self::VmTarget | Self::Consumer)
    }
}

/// Longest VM name a slot message carries.
pub const MAX_VM_NAME: usize = 64;

/// Most data DWs a slot message carries (code, length and the longest name, padded).
pub const MAX_DATA_DW: usize = (2 + MAX_VM_NAME).div_ceil(4);

/// A VM's name as slot messages carry it: 1 to [`MAX_VM_NAME`] bytes of `[A-Za-z0-9._-]`
/// (the names `pcietun host --vm NAME=...` accepts). Fixed size, no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmName {
    len: u8,
    bytes: [u8; MAX_VM_NAME],
}

impl VmName {
    /// A checked name.
    pub fn new(name: &str) -> Result<VmName, SlotError> {
        Self::from_bytes(name.as_bytes())
    }

    fn from_bytes(b: &[u8]) -> Result<VmName, SlotError> {
        if b.is_empty() || b.len() > MAX_VM_NAME {
            return Err(SlotError::BadVmName);
        }
        if !b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            return Err(SlotError::BadVmName);
        }
        let mut bytes = [0u8; MAX_VM_NAME];
        bytes[..b.len()].copy_from_slice(b);
        Ok(VmName {
            len: b.len() as u8,
            bytes,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Checked ASCII on construction.
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl core::fmt::Debug for VmName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl core::fmt::Display for VmName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::str::FromStr for VmName {
    type Err = SlotError;
    fn from_str(s: &str) -> Result<VmName, SlotError> {
        VmName::new(s)
    }
}

/// What a VM did with a function (data byte 0 of a [`ConsumerReport`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConsumerEvent {
    /// The function's device is in the VM (hot-added and confirmed).
    Attached = 0x01,
    /// Attaching it failed (the VM is unknown to the host, unreachable, or QEMU refused).
    AttachFailed = 0x02,
    /// The guest did not let go within the host's grace period, or refused the eject.
    EjectRefused = 0x03,
    /// The guest ejected it (an orderly hot-remove).
    Detached = 0x04,
    /// It was withdrawn under the guest (a surprise removal).
    SurpriseRemoved = 0x05,
    /// The VM is gone (QEMU exited), and the device with it.
    VmGone = 0x06,
}

impl ConsumerEvent {
    /// Decode data byte 0.
    pub const fn from_u8(v: u8) -> Option<ConsumerEvent> {
        Some(match v {
            0x01 => Self::Attached,
            0x02 => Self::AttachFailed,
            0x03 => Self::EjectRefused,
            0x04 => Self::Detached,
            0x05 => Self::SurpriseRemoved,
            0x06 => Self::VmGone,
            _ => return None,
        })
    }

    /// Every event, in code order.
    pub const ALL: [ConsumerEvent; 6] = [
        Self::Attached,
        Self::AttachFailed,
        Self::EjectRefused,
        Self::Detached,
        Self::SurpriseRemoved,
        Self::VmGone,
    ];

    /// A stable snake-case name (logs, events).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::AttachFailed => "attach_failed",
            Self::EjectRefused => "eject_refused",
            Self::Detached => "detached",
            Self::SurpriseRemoved => "surprise_removed",
            Self::VmGone => "vm_gone",
        }
    }
}

/// Host → appliance: what VM `vm` did with the function in `slot` of the assignment
/// `generation` (event 0x82, a MsgD; layout in the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConsumerReport {
    /// Device number on the host's tunnel bus.
    pub slot: u8,
    /// The assignment it is about (as in the `Present` / `RemovalRequest` the host got).
    pub generation: u16,
    /// What happened.
    pub event: ConsumerEvent,
    /// The VM.
    pub vm: VmName,
}

/// Appliance → host: the assignment `generation` of `slot` names VM `vm` as its consumer
/// (event 0x04, a MsgD sent just before the assignment's `Present`; layout in the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmTarget {
    /// Device number on the host's tunnel bus.
    pub slot: u8,
    /// The assignment it is about (the `Present` that follows carries the same).
    pub generation: u16,
    /// The VM.
    pub vm: VmName,
}

/// Any pcietun slot message, decoded with its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// One without data (`Present`, `RemovalRequest`, `Removed`, `Occupied`, `RemovalAck`).
    Message(SlotMessage),
    /// A host's [`ConsumerReport`].
    Consumer(ConsumerReport),
    /// The appliance's [`VmTarget`].
    VmTarget(VmTarget),
}

impl Slot {
    /// `None` when `tlp` is not a pcietun slot message; otherwise the message or why it does
    /// not decode.
    pub fn from_tlp(tlp: &Tlp<'_>) -> Option<Result<Slot, SlotError>> {
        let m = match SlotMessage::from_tlp(tlp)? {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        Some(match m.event {
            SlotEvent::Consumer => decode_data(tlp.data).and_then(|(code, vm)| {
                let event =
                    ConsumerEvent::from_u8(code).ok_or(SlotError::UnknownConsumerEvent(code))?;
                Ok(Slot::Consumer(ConsumerReport {
                    slot: m.slot,
                    generation: m.generation,
                    event,
                    vm,
                }))
            }),
            SlotEvent::VmTarget => decode_data(tlp.data).and_then(|(code, vm)| {
                if code != 0 {
                    return Err(SlotError::BadData);
                }
                Ok(Slot::VmTarget(VmTarget {
                    slot: m.slot,
                    generation: m.generation,
                    vm,
                }))
            }),
            _ => Ok(Slot::Message(m)),
        })
    }
}

/// Data of a MsgD slot message: (code, name); exactly `2 + N` bytes padded with zeros to a DW.
fn decode_data(data: &[u8]) -> Result<(u8, VmName), SlotError> {
    if data.len() < 4 || data.len() > MAX_DATA_DW * 4 {
        return Err(SlotError::BadData);
    }
    let n = usize::from(data[1]);
    if n == 0 || n > MAX_VM_NAME || (2 + n).div_ceil(4) * 4 != data.len() {
        return Err(SlotError::BadData);
    }
    if data[2 + n..].iter().any(|&b| b != 0) {
        return Err(SlotError::BadData);
    }
    Ok((data[0], VmName::from_bytes(&data[2..2 + n])?))
}

/// Write a MsgD slot message (`event`, `slot`, `generation`, data `code` + `vm`) into `buf`.
fn emit_with_data(
    event: SlotEvent,
    slot: u8,
    generation: u16,
    code: u8,
    vm: &VmName,
    requester: Bdf,
    buf: &mut [u8],
) -> Result<usize, Error> {
    let mut data = [0u8; MAX_DATA_DW * 4];
    let n = vm.as_str().len();
    data[0] = code;
    data[1] = n as u8;
    data[2..2 + n].copy_from_slice(vm.as_str().as_bytes());
    let len = (2 + n).div_ceil(4) * 4;
    let mut tlp = SlotMessage {
        event,
        slot,
        generation,
    }
    .to_tlp(requester);
    if let TlpHeader::Msg(m) = &mut tlp.header {
        m.with_data = true;
    }
    tlp.length_dw = (len / 4) as u16;
    tlp.data = &data[..len];
    tlp.emit(buf)
}

impl ConsumerReport {
    /// Write the TLP into `buf` (16 header bytes + at most [`MAX_DATA_DW`] DW); its length.
    pub fn emit(&self, requester: Bdf, buf: &mut [u8]) -> Result<usize, Error> {
        emit_with_data(
            SlotEvent::Consumer,
            self.slot,
            self.generation,
            self.event as u8,
            &self.vm,
            requester,
            buf,
        )
    }
}

impl VmTarget {
    /// Write the TLP into `buf` (16 header bytes + at most [`MAX_DATA_DW`] DW); its length.
    pub fn emit(&self, requester: Bdf, buf: &mut [u8]) -> Result<usize, Error> {
        emit_with_data(
            SlotEvent::VmTarget,
            self.slot,
            self.generation,
            0,
            &self.vm,
            requester,
            buf,
        )
    }
}

/// Longest slot message on the wire (a MsgD with the longest name).
pub const MAX_SLOT_TLP: usize = 16 + MAX_DATA_DW * 4;

/// A slot message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotMessage {
    /// What happened.
    pub event: SlotEvent,
    /// Device number on the host's tunnel bus, `0..SLOTS`.
    pub slot: u8,
    /// Which assignment of that slot this is about (increments with every assignment).
    pub generation: u16,
}

/// A pcietun Vendor-Defined Message that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// Byte 12 is no event this version knows.
    #[error("unknown slot event {0:#04x}")]
    UnknownEvent(u8),
    /// The slot number is outside the tunnel bus.
    #[error("slot {0} is outside 0..{SLOTS}")]
    BadSlot(u8),
    /// Not routed Local, or carries data when its event has none (or none when it has).
    #[error("slot message with routing {0:?} or a payload its event does not carry")]
    BadShape(MsgRouting),
    /// The data of a report or VM target is not code, length, name and zero padding.
    #[error("slot message data is not a VM event code, a name length and a name")]
    BadData,
    /// A VM name that is empty, longer than 64 bytes or not `[A-Za-z0-9._-]`.
    #[error("VM name must be 1 to {MAX_VM_NAME} characters of [A-Za-z0-9._-]")]
    BadVmName,
    /// Data byte 0 of a report is no VM event this version knows.
    #[error("unknown VM event {0:#04x}")]
    UnknownConsumerEvent(u8),
}

impl SlotMessage {
    /// The TLP that carries this message, sent by `requester`.
    pub fn to_tlp(&self, requester: Bdf) -> Tlp<'static> {
        let mut fields = [0u8; 8];
        fields[field::VENDOR].copy_from_slice(&PCIETUN_VENDOR_ID.to_be_bytes());
        fields[field::EVENT] = self.event as u8;
        fields[field::SLOT] = self.slot;
        fields[field::GENERATION].copy_from_slice(&self.generation.to_be_bytes());
        Tlp {
            prefixes: Prefixes::default(),
            tc: 0,
            attr: Attr::default(),
            th: false,
            td: false,
            ep: false,
            at: 0,
            ln: false,
            // A Msg without data has its Length field reserved (0); the codec reads a raw 0 as
            // 1024 DW, the same encoding as a full-length request.
            length_dw: 1024,
            header: TlpHeader::Msg(Message {
                with_data: false,
                routing: MsgRouting::Local,
                requester_id: requester,
                tag: 0,
                code: code::VENDOR_DEFINED_1,
                fields,
            }),
            data: &[],
        }
    }

    /// Write the TLP into `buf` (16 bytes); returns its length.
    pub fn emit(&self, requester: Bdf, buf: &mut [u8]) -> Result<usize, Error> {
        self.to_tlp(requester).emit(buf)
    }

    /// `None` when `tlp` is not a pcietun slot message (any other TLP, or another vendor's
    /// message); otherwise the message or why it does not decode.
    pub fn from_tlp(tlp: &Tlp<'_>) -> Option<Result<SlotMessage, SlotError>> {
        let TlpHeader::Msg(m) = &tlp.header else {
            return None;
        };
        let vendor = u16::from_be_bytes([m.fields[field::VENDOR.start], m.fields[3]]);
        if m.code != code::VENDOR_DEFINED_1 || vendor != PCIETUN_VENDOR_ID {
            return None;
        }
        Some(Self::decode(m, tlp.data))
    }

    fn decode(m: &Message, data: &[u8]) -> Result<SlotMessage, SlotError> {
        if m.routing != MsgRouting::Local {
            return Err(SlotError::BadShape(m.routing));
        }
        let event = SlotEvent::from_u8(m.fields[field::EVENT])
            .ok_or(SlotError::UnknownEvent(m.fields[field::EVENT]))?;
        if event.has_data() != m.with_data || event.has_data() == data.is_empty() {
            return Err(SlotError::BadShape(m.routing));
        }
        let slot = m.fields[field::SLOT];
        if slot >= SLOTS {
            return Err(SlotError::BadSlot(slot));
        }
        let generation = u16::from_be_bytes([m.fields[6], m.fields[7]]);
        Ok(SlotMessage {
            event,
            slot,
            generation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Present`, slot 3, generation 0x0102, from the appliance's port 00:00.0: Fmt 001 Type
    /// 10100 (Msg, Local), Length 0; RID 0000; tag 00; code 7f; reserved 0000; vendor 1b36;
    /// event 01; slot 03; generation 0102.
    static PRESENT: [u8; 16] = [
        0x34, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00, 0x1b, 0x36, 0x01, 0x03, 0x01,
        0x02,
    ];

    #[test]
    fn emit_is_byte_exact() {
        let msg = SlotMessage {
            event: SlotEvent::Present,
            slot: 3,
            generation: 0x0102,
        };
        let mut buf = [0u8; 32];
        let n = msg.emit(Bdf(0), &mut buf).unwrap();
        assert_eq!(&buf[..n], &PRESENT);
    }

    #[test]
    fn parse_round_trips_every_event() {
        for event in [
            SlotEvent::Present,
            SlotEvent::RemovalRequest,
            SlotEvent::Removed,
            SlotEvent::Occupied,
            SlotEvent::RemovalAck,
        ] {
            for slot in [0, 7, SLOTS - 1] {
                let msg = SlotMessage {
                    event,
                    slot,
                    generation: 0xbeef,
                };
                let mut buf = [0u8; 16];
                let n = msg.emit(Bdf::new(1, 2, 0), &mut buf).unwrap();
                let tlp = Tlp::parse(&buf[..n]).unwrap();
                assert_eq!(SlotMessage::from_tlp(&tlp), Some(Ok(msg)));
            }
        }
    }

    #[test]
    fn foreign_messages_are_not_ours() {
        let mut other = PRESENT;
        other[10] = 0x80; // vendor 8086
        other[11] = 0x86;
        let tlp = Tlp::parse(&other).unwrap();
        assert_eq!(SlotMessage::from_tlp(&tlp), None);
    }

    #[test]
    fn bad_event_and_slot_are_errors_not_panics() {
        let mut bytes = PRESENT;
        bytes[12] = 0x44;
        let tlp = Tlp::parse(&bytes).unwrap();
        assert_eq!(
            SlotMessage::from_tlp(&tlp),
            Some(Err(SlotError::UnknownEvent(0x44)))
        );
        let mut bytes = PRESENT;
        bytes[13] = 40;
        let tlp = Tlp::parse(&bytes).unwrap();
        assert_eq!(
            SlotMessage::from_tlp(&tlp),
            Some(Err(SlotError::BadSlot(40)))
        );
    }

    /// `Consumer` from the host's root port 00:00.0, slot 2, generation 7, `Attached` by VM
    /// "web1": Fmt 011 Type 10100 (MsgD, Local), Length 2; RID 0000; tag 00; code 7f; reserved
    /// 0000; vendor 1b36; event 82; slot 02; generation 0007; data 01 04 "web1" 00 00.
    static ATTACHED_WEB1: [u8; 24] = [
        0x74, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00, 0x1b, 0x36, 0x82, 0x02, 0x00,
        0x07, 0x01, 0x04, b'w', b'e', b'b', b'1', 0x00, 0x00,
    ];

    fn report(event: ConsumerEvent, vm: &str) -> ConsumerReport {
        ConsumerReport {
            slot: 2,
            generation: 7,
            event,
            vm: VmName::new(vm).unwrap(),
        }
    }

    #[test]
    fn consumer_report_is_byte_exact() {
        let mut buf = [0u8; MAX_SLOT_TLP];
        let n = report(ConsumerEvent::Attached, "web1")
            .emit(Bdf(0), &mut buf)
            .unwrap();
        assert_eq!(&buf[..n], &ATTACHED_WEB1);
        let tlp = Tlp::parse(&ATTACHED_WEB1).unwrap();
        assert_eq!(
            Slot::from_tlp(&tlp),
            Some(Ok(Slot::Consumer(report(ConsumerEvent::Attached, "web1"))))
        );
    }

    #[test]
    fn longest_name_fits_and_longer_is_refused() {
        let long = "a".repeat(MAX_VM_NAME);
        let r = report(ConsumerEvent::VmGone, &long);
        let mut buf = [0u8; MAX_SLOT_TLP];
        let n = r.emit(Bdf(0), &mut buf).unwrap();
        assert_eq!(n, MAX_SLOT_TLP);
        let tlp = Tlp::parse(&buf[..n]).unwrap();
        assert_eq!(Slot::from_tlp(&tlp), Some(Ok(Slot::Consumer(r))));
        assert_eq!(
            VmName::new(&"a".repeat(MAX_VM_NAME + 1)),
            Err(SlotError::BadVmName)
        );
        for bad in ["", "a b", "web/1", "wéb", "a\n"] {
            assert_eq!(VmName::new(bad), Err(SlotError::BadVmName), "{bad:?}");
        }
    }

    #[test]
    fn bad_report_data_is_an_error_not_a_panic() {
        // Each corruption of the data (after the 16 header bytes) is refused.
        let cases: [(usize, u8, SlotError); 5] = [
            (16, 0x09, SlotError::UnknownConsumerEvent(0x09)),
            (17, 0, SlotError::BadData), // empty name
            (17, 9, SlotError::BadData), // longer than the data
            (18, b' ', SlotError::BadVmName),
            (22, 1, SlotError::BadData), // padding not zero
        ];
        for (at, v, want) in cases {
            let mut b = ATTACHED_WEB1;
            b[at] = v;
            let tlp = Tlp::parse(&b).unwrap();
            assert_eq!(Slot::from_tlp(&tlp), Some(Err(want)), "byte {at} = {v:#x}");
        }
        // A report without data, and a Present with data, have the wrong shape.
        let mut b = PRESENT;
        b[12] = 0x82;
        let tlp = Tlp::parse(&b).unwrap();
        assert!(matches!(
            Slot::from_tlp(&tlp),
            Some(Err(SlotError::BadShape(_)))
        ));
        let mut b = ATTACHED_WEB1;
        b[12] = 0x01;
        let tlp = Tlp::parse(&b).unwrap();
        assert!(matches!(
            Slot::from_tlp(&tlp),
            Some(Err(SlotError::BadShape(_)))
        ));
    }

    #[test]
    fn vm_target_round_trips() {
        let t = VmTarget {
            slot: 31,
            generation: 0xffff,
            vm: VmName::new("db-1.prod_x").unwrap(),
        };
        let mut buf = [0u8; MAX_SLOT_TLP];
        let n = t.emit(Bdf(0), &mut buf).unwrap();
        let tlp = Tlp::parse(&buf[..n]).unwrap();
        assert_eq!(Slot::from_tlp(&tlp), Some(Ok(Slot::VmTarget(t))));
        // The header alone still decodes (what a caller that ignores data sees).
        assert_eq!(
            SlotMessage::from_tlp(&tlp).map(|r| r.map(|m| m.event)),
            Some(Ok(SlotEvent::VmTarget))
        );
        // A target's code byte is reserved (0).
        buf[16] = 1;
        let tlp = Tlp::parse(&buf[..n]).unwrap();
        assert_eq!(Slot::from_tlp(&tlp), Some(Err(SlotError::BadData)));
    }

    proptest::proptest! {
        /// Every report round-trips through bytes, whatever its name.
        #[test]
        fn reports_round_trip(
            slot in 0..SLOTS,
            generation: u16,
            code in 0..ConsumerEvent::ALL.len(),
            name in "[A-Za-z0-9._-]{1,64}",
        ) {
            let r = ConsumerReport {
                slot,
                generation,
                event: ConsumerEvent::ALL[code],
                vm: VmName::new(&name).unwrap(),
            };
            let mut buf = [0u8; MAX_SLOT_TLP];
            let n = r.emit(Bdf::new(0, 0, 0), &mut buf).unwrap();
            proptest::prop_assert_eq!(n % 4, 0);
            let tlp = Tlp::parse(&buf[..n]).unwrap();
            proptest::prop_assert_eq!(Slot::from_tlp(&tlp), Some(Ok(Slot::Consumer(r))));
            proptest::prop_assert_eq!(r.vm.as_str(), name.as_str());
        }

        /// Arbitrary data after a report header never panics, and what decodes re-encodes to
        /// the same bytes.
        #[test]
        fn arbitrary_report_data(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let mut bytes = ATTACHED_WEB1[..16].to_vec();
            let dw = data.len() / 4;
            let data = &data[..dw * 4];
            bytes[3] = dw as u8;
            bytes[2] = ((dw >> 8) & 3) as u8;
            if dw == 0 {
                bytes[0] = 0x34; // Msg without data
            }
            bytes.extend_from_slice(data);
            if let Ok(tlp) = Tlp::parse(&bytes) {
                if let Some(Ok(Slot::Consumer(r))) = Slot::from_tlp(&tlp) {
                    let mut buf = [0u8; MAX_SLOT_TLP];
                    let n = r.emit(Bdf(0), &mut buf).unwrap();
                    proptest::prop_assert_eq!(&buf[..n], &bytes[..]);
                }
            }
        }
    }
}
