//! Ordering classes and flow-control credits (PCIe Base Specification §2.4 ordering rules,
//! §2.6.1 flow-control credit types).
//!
//! The transport uses this to put each TLP in the Posted, Non-Posted or Completion queue and to
//! charge it the right header and data credits, without knowing anything else about the TLP.

use super::packet::{field, FMT_PREFIX};
use super::Kind;

/// The three flow-control / ordering classes of PCIe (§2.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrderingClass {
    /// Memory writes and messages: never wait for a round trip.
    Posted,
    /// Reads, IO and configuration requests, AtomicOps: expect a completion.
    NonPosted,
    /// Completions, with or without data.
    Completion,
}

impl OrderingClass {
    /// All classes, in a fixed order (handy for per-class arrays).
    pub const ALL: [OrderingClass; 3] = [Self::Posted, Self::NonPosted, Self::Completion];

    /// Index 0..3 for per-class arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Flow-control credits one TLP consumes: one header credit and one data credit per 4 DW
/// (16 bytes) of payload, rounded up (§2.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Credits {
    /// Header credits (always 1 per TLP).
    pub header: u16,
    /// Data credits: ceil(payload DW / 4).
    pub data: u16,
}

/// Why a byte string could not be classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// Fewer than the 4 bytes of the first header DW.
    #[error("TLP truncated: {0} bytes, need at least 4")]
    Truncated(usize),
    /// A Fmt/Type combination the specification reserves.
    #[error("reserved Fmt/Type 0x{0:02x}")]
    ReservedType(u8),
}

/// Classify a TLP from its first header DW (prefixes, if any, are skipped).
///
/// Only the Fmt/Type byte and the Length field are read (Fmt/Type decoded by the same table
/// as the full codec, [`Kind::from_fmt_type`]); [`crate::tlp::Tlp::parse`] validates the rest.
#[inline]
pub fn classify(bytes: &[u8]) -> Result<(OrderingClass, Credits), ClassifyError> {
    let mut off = 0;
    loop {
        let Some(dw0) = bytes.get(off..off + 4) else {
            return Err(ClassifyError::Truncated(bytes.len()));
        };
        let fmt = field::FMT.get(dw0);
        if fmt == FMT_PREFIX {
            off += 4; // a TLP prefix (local or end-to-end)
            continue;
        }
        let kind = Kind::from_fmt_type(fmt, field::TYPE.get(dw0))
            .ok_or(ClassifyError::ReservedType(dw0[field::FMT.byte]))?;
        let data = if kind.has_data() {
            let len =
                (u16::from(field::LENGTH_HI.get(dw0)) << 8) | u16::from(dw0[field::LENGTH_LO]);
            let dws = if len == 0 { 1024 } else { len };
            dws.div_ceil(4)
        } else {
            0
        };
        return Ok((kind.ordering_class(), Credits { header: 1, data }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_common_tlps() {
        // MRd32, length 1
        assert_eq!(
            classify(&[0x00, 0, 0, 1]).unwrap(),
            (OrderingClass::NonPosted, Credits { header: 1, data: 0 })
        );
        // MWr64, length 16 DW -> 4 data credits
        assert_eq!(
            classify(&[0x60, 0, 0, 16]).unwrap(),
            (OrderingClass::Posted, Credits { header: 1, data: 4 })
        );
        // CplD, length 0 = 1024 DW -> 256 credits
        assert_eq!(
            classify(&[0x4a, 0, 0, 0]).unwrap(),
            (
                OrderingClass::Completion,
                Credits {
                    header: 1,
                    data: 256
                }
            )
        );
        // Msg to RC with an end-to-end prefix in front
        assert_eq!(
            classify(&[0x90, 0, 0, 0, 0x30, 0, 0, 0]).unwrap().0,
            OrderingClass::Posted
        );
        assert_eq!(classify(&[0x00, 0]), Err(ClassifyError::Truncated(2)));
        assert_eq!(
            classify(&[0x03, 0, 0, 0]),
            Err(ClassifyError::ReservedType(0x03))
        );
        // IO requests have no 4 DW form; messages no 3 DW form.
        assert_eq!(
            classify(&[0x22, 0, 0, 1]),
            Err(ClassifyError::ReservedType(0x22))
        );
        assert_eq!(
            classify(&[0x10, 0, 0, 0]),
            Err(ClassifyError::ReservedType(0x10))
        );
    }
}
