//! Protocol-analyser one-liners for TLPs (`Display` for [`Tlp`] and [`Kind`]).
//!
//! The format is for people, not parsers (use `pcietun tlp decode --json` for that):
//! kind, IDs, tag, address or target, byte enables, length, flags, then the payload.

use super::message::{code, rule_for};
use super::repr::{Tlp, TlpHeader};
use super::Kind;
use core::fmt;

/// How many payload bytes the one-liner shows before eliding.
const SHOW_DATA: usize = 16;

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Msg(r) => write!(f, "Msg({r})"),
            Kind::MsgD(r) => write!(f, "MsgD({r})"),
            other => write!(f, "{other:?}"),
        }
    }
}

impl fmt::Display for Tlp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.prefixes.iter() {
            write!(f, "[{p}] ")?;
        }
        write!(f, "{:<10}", self.name())?;
        match &self.header {
            TlpHeader::Mem(m) => {
                write!(
                    f,
                    " RID {} Tag {:03x} Addr {:#x}",
                    m.requester_id, m.tag, m.address
                )?;
                write!(f, " Len {}", self.length_dw)?;
                write!(f, " BE {:x}/{:x}", m.first_be, m.last_be)?;
                if self.th {
                    write!(f, " TH PH {}", m.ph)?;
                }
            }
            TlpHeader::Io(r) => write!(
                f,
                " RID {} Tag {:03x} Addr {:#x} BE {:x}",
                r.requester_id, r.tag, r.address, r.first_be
            )?,
            TlpHeader::Cfg(c) => write!(
                f,
                " RID {} Tag {:03x} Dev {} Reg {:#05x} BE {:x}",
                c.requester_id, c.tag, c.target, c.register, c.first_be
            )?,
            TlpHeader::Cpl(c) => {
                write!(
                    f,
                    " CID {} RID {} Tag {:03x} {} BC {} LA {:#04x}",
                    c.completer_id,
                    c.requester_id,
                    c.tag,
                    c.status.name(),
                    c.byte_count,
                    c.lower_address
                )?;
                if c.with_data {
                    write!(f, " Len {}", self.length_dw)?;
                }
                if c.bcm {
                    f.write_str(" BCM")?;
                }
            }
            TlpHeader::Msg(m) => {
                match rule_for(m.code, &m.fields) {
                    Some(r) => write!(f, " {}", r.name)?,
                    None => write!(f, " Code {:#04x}", m.code)?,
                }
                write!(f, " Route {} RID {}", m.routing, m.requester_id)?;
                let fld = m.fields;
                match m.code {
                    code::VENDOR_DEFINED_0 | code::VENDOR_DEFINED_1 => {
                        write!(f, " Vendor {:02x}{:02x}", fld[2], fld[3])?;
                    }
                    code::LTR => write!(
                        f,
                        " NoSnoop {:02x}{:02x} Snoop {:02x}{:02x}",
                        fld[4], fld[5], fld[6], fld[7]
                    )?,
                    _ => {}
                }
                match m.routing {
                    super::MsgRouting::ByAddress => write!(f, " Addr {:#x}", m.address())?,
                    super::MsgRouting::ById => write!(f, " Target {}", m.target_id())?,
                    _ => {
                        if m.fields != [0; 8] && m.code != code::LTR {
                            write!(f, " Fields {:016x}", u64::from_be_bytes(m.fields))?;
                        }
                    }
                }
                if m.with_data {
                    write!(f, " Len {}", self.length_dw)?;
                }
            }
        }
        if self.tc != 0 {
            write!(f, " TC{}", self.tc)?;
        }
        for (on, name) in [
            (self.attr.ro, "RO"),
            (self.attr.ns, "NS"),
            (self.attr.ido, "IDO"),
            (self.ep, "EP"),
            (self.ln, "LN"),
        ] {
            if on {
                write!(f, " {name}")?;
            }
        }
        if self.at != 0 {
            write!(f, " AT{}", self.at)?;
        }
        if self.td {
            let d = self.ecrc();
            write!(f, " ECRC {:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])?;
        }
        if !self.data.is_empty() {
            f.write_str(" Data ")?;
            for b in self.data.iter().take(SHOW_DATA) {
                write!(f, "{b:02x}")?;
            }
            if self.data.len() > SHOW_DATA {
                write!(f, "…(+{} B)", self.data.len() - SHOW_DATA)?;
            }
        }
        Ok(())
    }
}
