//! The typed TLP value: parse from bytes and emit back to the identical bytes (PCIe Base
//! Specification §2.2.1.1 common fields, §2.2.5 byte enables, §2.2.7 memory/IO/configuration
//! requests and AtomicOps §2.2.7.5 / Deferrable Memory Write, §2.2.8 messages, §2.2.9
//! completions, §2.2.10 prefixes, §2.7.1 ECRC).
//!
//! [`Tlp::parse`] borrows the payload and prefix bytes from its input and allocates nothing;
//! [`Tlp::emit`] writes into a caller's buffer. Both run the same [`Tlp::validate`], so every
//! value that parses also emits, to the same bytes.

pub use super::header::{
    Attr, CfgRequest, Completion, CplStatus, IoRequest, MemOp, MemRequest, Message, TlpHeader,
};
use super::packet::{Layout, Packet};
use super::prefix::Prefixes;
use super::validate::invalid;
use super::{ecrc, Bdf, Credits, Error, Kind, OrderingClass};

/// One TLP: prefixes, header fields, payload. Borrows from the bytes it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlp<'a> {
    /// Local and End-End prefixes.
    pub prefixes: Prefixes<'a>,
    /// Traffic Class 0..=7.
    pub tc: u8,
    /// Attributes.
    pub attr: Attr,
    /// TH: TLP Processing Hints present.
    pub th: bool,
    /// TD: a TLP digest (ECRC) follows; [`Tlp::emit`] computes it.
    pub td: bool,
    /// EP: poisoned.
    pub ep: bool,
    /// Address Type 0..=3.
    pub at: u8,
    /// LN bit (reserved since 6.0; carried through).
    pub ln: bool,
    /// Length in DW, 1..=1024: the payload length for TLPs with data, the requested length
    /// for reads, the raw field otherwise.
    pub length_dw: u16,
    /// The type-specific header.
    pub header: TlpHeader,
    /// The payload (empty for TLPs without data).
    pub data: &'a [u8],
}

impl<'a> Tlp<'a> {
    /// The Fmt/Type kind.
    pub const fn kind(&self) -> Kind {
        match &self.header {
            TlpHeader::Mem(m) => m.op.kind(),
            TlpHeader::Io(io) => {
                if io.write {
                    Kind::IOWr
                } else {
                    Kind::IORd
                }
            }
            TlpHeader::Cfg(c) => match (c.write, c.type1) {
                (false, false) => Kind::CfgRd0,
                (true, false) => Kind::CfgWr0,
                (false, true) => Kind::CfgRd1,
                (true, true) => Kind::CfgWr1,
            },
            TlpHeader::Cpl(c) => match (c.with_data, c.locked) {
                (false, false) => Kind::Cpl,
                (true, false) => Kind::CplD,
                (false, true) => Kind::CplLk,
                (true, true) => Kind::CplDLk,
            },
            TlpHeader::Msg(m) => {
                if m.with_data {
                    Kind::MsgD(m.routing)
                } else {
                    Kind::Msg(m.routing)
                }
            }
        }
    }

    /// Whether the header is 4 DW.
    pub const fn four_dw(&self) -> bool {
        match &self.header {
            TlpHeader::Mem(m) => m.addr64,
            TlpHeader::Msg(_) => true,
            _ => false,
        }
    }

    /// Fmt\[2:0\].
    pub const fn fmt(&self) -> u8 {
        ((self.kind().has_data() as u8) << 1) | self.four_dw() as u8
    }

    /// Header length in bytes (12 or 16).
    pub const fn header_len(&self) -> usize {
        if self.four_dw() {
            16
        } else {
            12
        }
    }

    /// Bytes [`Tlp::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        self.prefixes.as_bytes().len()
            + self.header_len()
            + self.data.len()
            + if self.td { 4 } else { 0 }
    }

    /// The 10-bit tag of the transaction (requests and completions).
    pub const fn tag(&self) -> u16 {
        match &self.header {
            TlpHeader::Mem(m) => m.tag,
            TlpHeader::Io(r) => r.tag,
            TlpHeader::Cfg(r) => r.tag,
            TlpHeader::Cpl(c) => c.tag,
            TlpHeader::Msg(m) => m.tag,
        }
    }

    /// The Requester ID of the transaction (for completions: of the request completed).
    pub const fn requester_id(&self) -> Bdf {
        match &self.header {
            TlpHeader::Mem(m) => m.requester_id,
            TlpHeader::Io(r) => r.requester_id,
            TlpHeader::Cfg(r) => r.requester_id,
            TlpHeader::Cpl(c) => c.requester_id,
            TlpHeader::Msg(m) => m.requester_id,
        }
    }

    /// Ordering class (§2.4).
    pub const fn ordering_class(&self) -> OrderingClass {
        self.kind().ordering_class()
    }

    /// Flow-control credits this TLP consumes (§2.6.1): 1 header credit, and one data credit
    /// per 4 DW of payload.
    pub const fn credits(&self) -> Credits {
        Credits {
            header: 1,
            data: (self.data.len() / 4).div_ceil(4) as u16,
        }
    }

    /// The stable name used in JSON and the analyser: `MRd32`, `MWr64`, `FetchAdd32`,
    /// `CAS128`, `CfgRd0`, `CplD`, `Msg`, … (see docs/tlp.md).
    pub fn name(&self) -> &'static str {
        match &self.header {
            TlpHeader::Mem(m) => {
                let op = m.op;
                if op.is_atomic() {
                    let operand = match (op, self.length_dw) {
                        (MemOp::Cas, 2) | (MemOp::FetchAdd | MemOp::Swap, 1) => 32,
                        (MemOp::Cas, 4) | (MemOp::FetchAdd | MemOp::Swap, 2) => 64,
                        _ => 128,
                    };
                    match (op, operand) {
                        (MemOp::FetchAdd, 32) => "FetchAdd32",
                        (MemOp::FetchAdd, _) => "FetchAdd64",
                        (MemOp::Swap, 32) => "Swap32",
                        (MemOp::Swap, _) => "Swap64",
                        (_, 32) => "CAS32",
                        (_, 64) => "CAS64",
                        _ => "CAS128",
                    }
                } else {
                    match (op, m.addr64) {
                        (MemOp::Read, false) => "MRd32",
                        (MemOp::Read, true) => "MRd64",
                        (MemOp::ReadLocked, false) => "MRdLk32",
                        (MemOp::ReadLocked, true) => "MRdLk64",
                        (MemOp::Write, false) => "MWr32",
                        (MemOp::Write, true) => "MWr64",
                        (_, false) => "DMWr32",
                        (_, true) => "DMWr64",
                    }
                }
            }
            TlpHeader::Io(r) => ["IORd", "IOWr"][r.write as usize],
            TlpHeader::Cfg(c) => match (c.write, c.type1) {
                (false, false) => "CfgRd0",
                (true, false) => "CfgWr0",
                (false, true) => "CfgRd1",
                (true, true) => "CfgWr1",
            },
            TlpHeader::Cpl(c) => match (c.with_data, c.locked) {
                (false, false) => "Cpl",
                (true, false) => "CplD",
                (false, true) => "CplLk",
                (true, true) => "CplDLk",
            },
            TlpHeader::Msg(m) => ["Msg", "MsgD"][m.with_data as usize],
        }
    }

    /// Parse and validate one TLP (prefixes + header + payload + digest, nothing else).
    /// Verifies the ECRC when TD is set.
    #[inline]
    pub fn parse(bytes: &'a [u8]) -> Result<Tlp<'a>, Error> {
        let p = Packet::new_checked(bytes)?;
        let tlp = Self::from_packet(&p)?;
        // Fields read from the wire always fit their widths; only the spec's rules remain.
        tlp.check_rules()?;
        if let Some(found) = p.ecrc() {
            let computed = u32::from_be_bytes(ecrc::compute(
                tlp.prefixes.end_to_end_bytes(),
                p.header(),
                p.payload(),
            ));
            if found != computed {
                return Err(Error::Ecrc { found, computed });
            }
        }
        Ok(tlp)
    }

    /// Read the fields of a checked [`Packet`] (no semantic validation; see [`Tlp::validate`]).
    #[inline]
    pub fn from_packet(p: &Packet<&'a [u8]>) -> Result<Tlp<'a>, Error> {
        let l = *p.layout();
        let buf: &'a [u8] = p.into_inner();
        let header = match l.kind {
            Kind::MRd
            | Kind::MRdLk
            | Kind::MWr
            | Kind::DMWr
            | Kind::FetchAdd
            | Kind::Swap
            | Kind::Cas => TlpHeader::Mem(MemRequest {
                op: match l.kind {
                    Kind::MRd => MemOp::Read,
                    Kind::MRdLk => MemOp::ReadLocked,
                    Kind::MWr => MemOp::Write,
                    Kind::DMWr => MemOp::DeferrableWrite,
                    Kind::FetchAdd => MemOp::FetchAdd,
                    Kind::Swap => MemOp::Swap,
                    _ => MemOp::Cas,
                },
                addr64: l.header_len == 16,
                requester_id: Bdf(p.requester_id()),
                tag: p.tag(),
                first_be: p.first_be(),
                last_be: p.last_be(),
                address: p.address(),
                ph: p.ph(),
            }),
            Kind::IORd | Kind::IOWr => {
                if p.ph() != 0 {
                    return Err(Error::ReservedBits("IO address bits 1:0"));
                }
                TlpHeader::Io(IoRequest {
                    write: l.kind == Kind::IOWr,
                    requester_id: Bdf(p.requester_id()),
                    tag: p.tag(),
                    first_be: p.first_be(),
                    last_be: p.last_be(),
                    address: p.address() as u32,
                })
            }
            Kind::CfgRd0 | Kind::CfgWr0 | Kind::CfgRd1 | Kind::CfgWr1 => {
                if p.cfg_reserved_bits() {
                    return Err(Error::ReservedBits("configuration request DW2"));
                }
                TlpHeader::Cfg(CfgRequest {
                    write: matches!(l.kind, Kind::CfgWr0 | Kind::CfgWr1),
                    type1: matches!(l.kind, Kind::CfgRd1 | Kind::CfgWr1),
                    requester_id: Bdf(p.requester_id()),
                    tag: p.tag(),
                    first_be: p.first_be(),
                    last_be: p.last_be(),
                    target: Bdf(p.cfg_target()),
                    register: p.cfg_register(),
                })
            }
            Kind::Cpl | Kind::CplD | Kind::CplLk | Kind::CplDLk => {
                if p.cpl_reserved_bit() {
                    return Err(Error::ReservedBits("completion byte 11 bit 7"));
                }
                let status = CplStatus::from_bits(p.cpl_status()).ok_or(invalid(
                    "completion status",
                    p.cpl_status().into(),
                    "Cpl",
                ))?;
                TlpHeader::Cpl(Completion {
                    with_data: l.kind.has_data(),
                    locked: matches!(l.kind, Kind::CplLk | Kind::CplDLk),
                    completer_id: Bdf(p.completer_id()),
                    status,
                    bcm: p.bcm(),
                    byte_count: p.byte_count(),
                    requester_id: Bdf(p.cpl_requester_id()),
                    tag: p.cpl_tag(),
                    lower_address: p.lower_address(),
                })
            }
            Kind::Msg(routing) | Kind::MsgD(routing) => TlpHeader::Msg(Message {
                with_data: l.kind.has_data(),
                routing,
                requester_id: Bdf(p.requester_id()),
                tag: p.tag(),
                code: p.msg_code(),
                fields: p.msg_fields(),
            }),
        };
        let prefixes = Prefixes::new_unchecked(&buf[..l.prefix_len]);
        let start = l.prefix_len + l.header_len;
        Ok(Tlp {
            prefixes,
            tc: p.tc(),
            attr: Attr {
                ns: p.attr_ns(),
                ro: p.attr_ro(),
                ido: p.attr_ido(),
            },
            th: p.th(),
            td: p.td(),
            ep: p.ep(),
            at: p.at(),
            ln: p.ln(),
            length_dw: p.length_dw(),
            header,
            data: &buf[start..start + l.payload_len],
        })
    }

    /// Where [`Tlp::emit`] puts the prefixes, header, payload and digest.
    pub const fn layout(&self) -> Layout {
        Layout {
            prefix_len: self.prefixes.as_bytes().len(),
            header_len: self.header_len(),
            payload_len: self.data.len(),
            digest: self.td,
            kind: self.kind(),
        }
    }

    /// Write the TLP into `buf` (which must hold at least [`Tlp::buffer_len`] bytes) and
    /// return the number of bytes written. Computes the ECRC when TD is set. The header is
    /// written through the [`Packet`] setters.
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        self.validate()?;
        let total = self.buffer_len();
        if buf.len() < total {
            return Err(Error::BufferTooSmall {
                need: total,
                have: buf.len(),
            });
        }
        let mut p = Packet::with_layout(&mut buf[..total], self.layout())?;
        p.payload_mut().copy_from_slice(self.data);
        self.finish(&mut p);
        Ok(total)
    }

    /// Write the TLP into `buf` with a payload assembled in place: `lead` zero bytes, then
    /// `bytes`, then zeros up to Length DWs (`self.data` is not used). This is how a request
    /// or completion for bytes that do not start or end on a DW boundary is built with one
    /// copy and no scratch buffer. Validates like [`Tlp::emit`]; on an error the contents of
    /// `buf` are unspecified. Returns the number of bytes written.
    #[inline]
    pub fn emit_padded(&self, buf: &mut [u8], lead: usize, bytes: &[u8]) -> Result<usize, Error> {
        let payload_len = if self.kind().has_data() {
            usize::from(self.length_dw) * 4
        } else {
            0
        };
        let used = lead.saturating_add(bytes.len());
        if used > payload_len {
            return Err(Error::PayloadMismatch {
                length_dw: self.length_dw,
                data_len: used,
            });
        }
        let layout = Layout {
            payload_len,
            ..self.layout()
        };
        let total = layout.total_len();
        if buf.len() < total {
            return Err(Error::BufferTooSmall {
                need: total,
                have: buf.len(),
            });
        }
        let mut p = Packet::with_layout(&mut buf[..total], layout)?;
        let payload = p.payload_mut();
        payload[..lead].fill(0);
        payload[lead..used].copy_from_slice(bytes);
        payload[used..].fill(0);
        Tlp {
            data: p.payload(),
            ..*self
        }
        .validate()?;
        self.finish(&mut p);
        Ok(total)
    }

    /// Prefixes, header and digest of a TLP whose payload is already in `p`.
    #[inline]
    fn finish(&self, p: &mut Packet<&mut [u8]>) {
        p.prefixes_mut().copy_from_slice(self.prefixes.as_bytes());
        self.write_header(p);
        if self.td {
            let digest = ecrc::compute(self.prefixes.end_to_end_bytes(), p.header(), p.payload());
            p.set_ecrc(digest);
        }
    }

    /// The ECRC digest (wire byte order) this TLP carries or would carry with TD set.
    pub fn ecrc(&self) -> [u8; 4] {
        let mut hdr = [0u8; 16];
        let layout = Layout {
            prefix_len: 0,
            header_len: self.header_len(),
            payload_len: 0,
            digest: false,
            kind: self.kind(),
        };
        let hl = layout.header_len;
        if let Ok(mut p) = Packet::with_layout(&mut hdr[..hl], layout) {
            self.write_header(&mut p);
            p.set_td(true);
        }
        ecrc::compute(self.prefixes.end_to_end_bytes(), &hdr[..hl], self.data)
    }

    /// Write the header of a validated TLP through the [`Packet`] setters.
    #[inline]
    fn write_header<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.header_mut().fill(0);
        p.set_fmt(self.fmt());
        p.set_ty(self.kind().type_bits());
        p.set_tc(self.tc);
        p.set_attr_ido(self.attr.ido);
        p.set_ln(self.ln);
        p.set_th(self.th);
        p.set_td(self.td);
        p.set_ep(self.ep);
        p.set_attr_ro(self.attr.ro);
        p.set_attr_ns(self.attr.ns);
        p.set_at(self.at);
        p.set_length_dw(self.length_dw);
        match &self.header {
            TlpHeader::Mem(m) => {
                set_request_dw1(p, m.requester_id, m.tag, m.first_be, m.last_be);
                p.set_address(m.address);
                p.set_ph(m.ph);
            }
            TlpHeader::Io(r) => {
                set_request_dw1(p, r.requester_id, r.tag, r.first_be, r.last_be);
                p.set_address(r.address.into());
            }
            TlpHeader::Cfg(c) => {
                set_request_dw1(p, c.requester_id, c.tag, c.first_be, c.last_be);
                p.set_cfg_target(c.target.0);
                p.set_cfg_register(c.register);
            }
            TlpHeader::Cpl(c) => {
                p.set_completer_id(c.completer_id.0);
                p.set_cpl_status(c.status.bits());
                p.set_bcm(c.bcm);
                p.set_byte_count(c.byte_count);
                p.set_cpl_requester_id(c.requester_id.0);
                p.set_cpl_tag(c.tag);
                p.set_lower_address(c.lower_address);
            }
            TlpHeader::Msg(m) => {
                p.set_requester_id(m.requester_id.0);
                p.set_tag(m.tag);
                p.set_msg_code(m.code);
                p.set_msg_fields(&m.fields);
            }
        }
    }
}

/// DW 1 of a memory, I/O or configuration request (§2.2.7, §2.2.6.2): Requester ID, Tag,
/// Last and First DW Byte Enables — the same for all three.
#[inline]
fn set_request_dw1<T: AsRef<[u8]> + AsMut<[u8]>>(
    p: &mut Packet<T>,
    requester: Bdf,
    tag: u16,
    first_be: u8,
    last_be: u8,
) {
    p.set_requester_id(requester.0);
    p.set_tag(tag);
    p.set_last_be(last_be);
    p.set_first_be(first_be);
}
