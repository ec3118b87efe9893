//! The rules a TLP must follow beyond its layout (PCIe Base Specification §2.2.5 byte
//! enables, §2.2.7 the 4 KiB rule and IO/configuration restrictions, §2.2.7.5 AtomicOp
//! operand sizes and alignment, §2.2.8 each Message Code's routing, payload and Traffic
//! Class — read from the table [`super::message::RULES`] —, §2.2.9 completion fields).
//!
//! [`Tlp::validate`] runs on every [`Tlp::parse`] and every [`Tlp::emit`].

use super::header::{MemOp, MemRequest, TlpHeader};
use super::{message, Error, Tlp};

pub(crate) fn invalid(field: &'static str, value: u64, kind: &'static str) -> Error {
    Error::InvalidField { field, value, kind }
}

/// Check byte enables of a memory request against §2.2.5.
#[inline]
pub fn check_byte_enables(first: u8, last: u8, length_dw: u16, address: u64) -> Result<(), Error> {
    let err = |reason| Error::ByteEnables {
        first,
        last,
        length_dw,
        reason,
    };
    if length_dw == 1 {
        if last != 0 {
            return Err(err("Last DW BE must be 0000b for a 1 DW request"));
        }
        return Ok(());
    }
    if first == 0 {
        return Err(err("First DW BE must not be 0000b when Length > 1 DW"));
    }
    if last == 0 {
        return Err(err("Last DW BE must not be 0000b when Length > 1 DW"));
    }
    let qw_aligned_2dw = length_dw == 2 && address & 7 == 0;
    if !qw_aligned_2dw {
        if !matches!(first, 0b1111 | 0b1110 | 0b1100 | 0b1000) {
            return Err(err(
                "First DW BE must be contiguous up to the end of the DW",
            ));
        }
        if !matches!(last, 0b0001 | 0b0011 | 0b0111 | 0b1111) {
            return Err(err(
                "Last DW BE must be contiguous from the start of the DW",
            ));
        }
    }
    Ok(())
}

impl Tlp<'_> {
    /// Check every rule of the specification this codec knows about: that each field fits
    /// its width and that the TLP follows the spec's rules. [`Tlp::emit`] calls it;
    /// [`Tlp::parse`] runs the rules part (fields read from the wire always fit).
    #[inline]
    pub fn validate(&self) -> Result<(), Error> {
        self.check_field_ranges()?;
        self.check_rules()
    }

    /// Values that fit their wire fields and a payload that matches Length. Only a value
    /// built by hand can break these.
    fn check_field_ranges(&self) -> Result<(), Error> {
        if self.tc > 7 {
            return Err(invalid("TC", self.tc.into(), self.name()));
        }
        if self.at > 3 {
            return Err(invalid("AT", self.at.into(), self.name()));
        }
        if !(1..=1024).contains(&self.length_dw) {
            return Err(invalid("Length", self.length_dw.into(), self.name()));
        }
        if self.tag() > 0x3ff {
            return Err(invalid("Tag", self.tag().into(), self.name()));
        }
        if self.kind().has_data() {
            if self.data.len() != usize::from(self.length_dw) * 4 {
                return Err(Error::PayloadMismatch {
                    length_dw: self.length_dw,
                    data_len: self.data.len(),
                });
            }
        } else if !self.data.is_empty() {
            return Err(Error::PayloadMismatch {
                length_dw: 0,
                data_len: self.data.len(),
            });
        }
        let (first, last) = match &self.header {
            TlpHeader::Mem(m) => {
                if m.address & 3 != 0 {
                    return Err(invalid("address (not DW-aligned)", m.address, self.name()));
                }
                if !m.addr64 && m.address > u64::from(u32::MAX) {
                    let what = "address (above 4 GiB in a 3 DW header)";
                    return Err(invalid(what, m.address, self.name()));
                }
                if m.ph > 3 {
                    return Err(invalid("PH", m.ph.into(), self.name()));
                }
                (m.first_be, m.last_be)
            }
            TlpHeader::Io(r) => {
                if r.address & 3 != 0 {
                    return Err(Error::ReservedBits("IO address bits 1:0"));
                }
                (r.first_be, r.last_be)
            }
            TlpHeader::Cfg(c) => {
                if c.register > 0xffc || c.register & 3 != 0 {
                    return Err(invalid("register", c.register.into(), self.name()));
                }
                (c.first_be, c.last_be)
            }
            TlpHeader::Cpl(c) => {
                if !(1..=4096).contains(&c.byte_count) {
                    return Err(invalid("Byte Count", c.byte_count.into(), self.name()));
                }
                if c.lower_address > 0x7f {
                    let la = c.lower_address.into();
                    return Err(invalid("Lower Address", la, self.name()));
                }
                (0, 0)
            }
            TlpHeader::Msg(_) => (0, 0),
        };
        if first > 0xf || last > 0xf {
            let be = u64::from(last) << 4 | u64::from(first);
            return Err(invalid("byte enables", be, self.name()));
        }
        Ok(())
    }

    /// The specification's rules for the TLP kind (run on every parse and emit).
    #[inline]
    pub(crate) fn check_rules(&self) -> Result<(), Error> {
        match &self.header {
            TlpHeader::Mem(m) => self.check_mem(m),
            TlpHeader::Io(r) => self.check_io_cfg(r.last_be),
            TlpHeader::Cfg(c) => self.check_io_cfg(c.last_be),
            TlpHeader::Cpl(_) => Ok(()),
            TlpHeader::Msg(m) => {
                let Some(rule) = message::rule_for(m.code, &m.fields) else {
                    return Ok(());
                };
                rule.check(m.routing, m.with_data, self.length_dw, self.tc)
                    .map_err(|violation| Error::Message {
                        code: m.code,
                        name: rule.name,
                        violation,
                        spec: rule.spec,
                    })
            }
        }
    }

    #[inline]
    fn check_mem(&self, m: &MemRequest) -> Result<(), Error> {
        if !self.th && m.ph != 0 {
            return Err(Error::ReservedBits("PH (address bits 1:0) without TH"));
        }
        let len = self.length_dw;
        if m.op.is_atomic() {
            let operand = match (m.op, len) {
                (MemOp::FetchAdd | MemOp::Swap, 1 | 2) => u64::from(len) * 4,
                (MemOp::Cas, 2 | 4 | 8) => u64::from(len) * 2,
                _ => return Err(invalid("AtomicOp operand Length", len.into(), self.name())),
            };
            if m.address % operand != 0 {
                let what = "AtomicOp address (not naturally aligned)";
                return Err(invalid(what, m.address, self.name()));
            }
            return Ok(());
        }
        if (m.address & 0xfff) + u64::from(len) * 4 > 0x1000 {
            return Err(Error::Crosses4K {
                address: m.address,
                length_dw: len,
            });
        }
        let be_holds_st = self.th && matches!(m.op, MemOp::Read | MemOp::ReadLocked);
        if !be_holds_st {
            check_byte_enables(m.first_be, m.last_be, len, m.address)?;
        }
        Ok(())
    }

    #[inline]
    fn check_io_cfg(&self, last: u8) -> Result<(), Error> {
        if self.length_dw != 1 {
            return Err(invalid("Length", self.length_dw.into(), self.name()));
        }
        if last != 0 {
            return Err(Error::ByteEnables {
                first: match &self.header {
                    TlpHeader::Io(r) => r.first_be,
                    TlpHeader::Cfg(c) => c.first_be,
                    _ => 0,
                },
                last,
                length_dw: 1,
                reason: "Last DW BE must be 0000b for IO and configuration requests",
            });
        }
        if self.tc != 0 {
            return Err(invalid("TC", self.tc.into(), self.name()));
        }
        if self.attr.ns || self.attr.ro || self.at != 0 || self.th {
            return Err(Error::ReservedBits(
                "Attr[1:0]/AT/TH of an IO or configuration request",
            ));
        }
        Ok(())
    }
}
