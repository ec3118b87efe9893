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
//! This module is the one place that knows the layout; the appliance builds `Present`,
//! `RemovalRequest` and `Removed`, the host builds `RemovalAck`, and both parse with
//! [`SlotMessage::from_tlp`].

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
    /// Host → appliance: the function's consumers let it go; detach it now.
    RemovalAck = 0x81,
}

impl SlotEvent {
    /// Decode byte 12.
    pub const fn from_u8(v: u8) -> Option<SlotEvent> {
        Some(match v {
            0x01 => Self::Present,
            0x02 => Self::RemovalRequest,
            0x03 => Self::Removed,
            0x81 => Self::RemovalAck,
            _ => return None,
        })
    }
}

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
    /// Not routed Local, or carries data.
    #[error("slot message with routing {0:?} or a payload")]
    BadShape(MsgRouting),
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
        if m.routing != MsgRouting::Local || m.with_data || !data.is_empty() {
            return Err(SlotError::BadShape(m.routing));
        }
        let event = SlotEvent::from_u8(m.fields[field::EVENT])
            .ok_or(SlotError::UnknownEvent(m.fields[field::EVENT]))?;
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
}
