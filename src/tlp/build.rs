//! Constructors for the TLPs both halves of the tunnel build (PCIe Base Specification §2.2.5
//! byte enables, §2.2.4.1 32- and 64-bit address formats, §2.2.7 memory and configuration
//! requests, §2.2.8.1 INTx messages, §2.2.9 completions, §2.3.1.1 read completions and the
//! Read Completion Boundary, §6.1.4 MSI / MSI-X, which are posted memory writes).
//!
//! Each constructor writes one TLP into the caller's buffer and returns its length; none
//! allocates. The header goes through [`Tlp::emit_padded`], so every TLP built here passes the
//! same validation as one parsed from the wire. Arguments that cannot make a valid TLP — too
//! long, crossing 4 KiB, a ragged completion payload, an out-of-range field, a buffer too
//! small — are a [`BuildError`]: never a panic, never a silently cut value.

use super::split::{self, SizeError, SplitCompletion};
use super::{
    Attr, Bdf, CfgRequest, Completion, CplStatus, Error, IoRequest, MemOp, MemRequest, Message,
    MsgRouting, Prefixes, Tlp, TlpHeader,
};

/// Largest TLP these constructors build: a 4 DW header and 4096 bytes of payload (no
/// prefixes, no digest).
pub const MAX_LEN: usize = 16 + 4096;

/// Why a TLP could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The codec refused the TLP: a field out of range, or the output buffer too small
    /// ([`Error::BufferTooSmall`]).
    #[error(transparent)]
    Tlp(#[from] Error),
    /// One request carries at most 4096 bytes.
    #[error("request of {len} bytes at {address:#x} is longer than 4096 bytes")]
    TooLong {
        /// First byte.
        address: u64,
        /// Bytes asked for.
        len: usize,
    },
    /// A memory request must not cross a 4 KiB boundary (§2.2.7).
    #[error("request of {len} bytes at {address:#x} crosses a 4 KiB boundary")]
    Crosses4K {
        /// First byte.
        address: u64,
        /// Bytes asked for.
        len: usize,
    },
    /// A completion's payload is whole DWs.
    #[error("completion payload of {0} bytes is not a whole number of DWs")]
    RaggedPayload(usize),
    /// INTx pins are 0 (INTA) to 3 (INTD).
    #[error("INTx pin {0} is not 0..=3 (INTA..INTD)")]
    IntxPin(u8),
    /// MSI and MSI-X messages are DW writes to a DW-aligned address (§6.1.4).
    #[error("MSI address {0:#x} is not DW-aligned")]
    MsiAddress(u64),
    /// Configuration registers are DW offsets 0..=0xffc.
    #[error("configuration register {0:#x} is not a DW offset in 0..=0xffc")]
    CfgRegister(u16),
    /// A Read Completion Boundary or Max_Payload_Size the split cannot use.
    #[error(transparent)]
    Split(#[from] SizeError),
}

const fn tlp(length_dw: u16, header: TlpHeader, tc: u8, attr: Attr) -> Tlp<'static> {
    Tlp {
        prefixes: Prefixes::NONE,
        tc,
        attr,
        th: false,
        td: false,
        ep: false,
        at: 0,
        ln: false,
        length_dw,
        header,
        data: &[],
    }
}

/// The DW address, Length and byte enables of a memory request for `len` bytes at
/// `address`, after checking it fits one TLP.
fn mem_span(address: u64, len: usize) -> Result<(u64, u16, u8, u8), BuildError> {
    if len > 4096 {
        return Err(BuildError::TooLong { address, len });
    }
    if len > 0 && (address & 0xfff) + len as u64 > 0x1000 {
        return Err(BuildError::Crosses4K { address, len });
    }
    Ok(split::byte_enables(address, len as u32))
}

fn mem_header(op: MemOp, requester: Bdf, tag: u16, dw: u64, first: u8, last: u8) -> TlpHeader {
    TlpHeader::Mem(MemRequest {
        op,
        // §2.2.4.1: addresses below 4 GiB must use the 32-bit format.
        addr64: dw > u64::from(u32::MAX),
        requester_id: requester,
        tag,
        first_be: first,
        last_be: last,
        address: dw,
        ph: 0,
    })
}

/// A Memory Read Request for `len` bytes (0..=4096, not crossing 4 KiB) at `address`, any
/// alignment: a 3 DW header below 4 GiB, 4 DW above; byte enables from the address and length.
/// `len == 0` is a zero-length read (1 DW, no byte enabled).
pub fn mem_read(
    buf: &mut [u8],
    requester: Bdf,
    tag: u16,
    address: u64,
    len: u32,
) -> Result<usize, BuildError> {
    let (dw, length_dw, first, last) = mem_span(address, len as usize)?;
    let header = mem_header(MemOp::Read, requester, tag, dw, first, last);
    Ok(tlp(length_dw, header, 0, Attr::default()).emit_padded(buf, 0, &[])?)
}

/// A Memory Write Request of `data` (0..=4096 bytes, not crossing 4 KiB) at `address`, any
/// alignment: the bytes are placed at their offset in the first DW and the byte enables say
/// which are written. Empty `data` is a zero-length write.
pub fn mem_write(
    buf: &mut [u8],
    requester: Bdf,
    address: u64,
    data: &[u8],
) -> Result<usize, BuildError> {
    let (dw, length_dw, first, last) = mem_span(address, data.len())?;
    let header = mem_header(MemOp::Write, requester, 0, dw, first, last);
    let lead = (address & 3) as usize;
    Ok(tlp(length_dw, header, 0, Attr::default()).emit_padded(buf, lead, data)?)
}

/// An MSI or MSI-X message: a posted 1 DW Memory Write of `data` (little-endian, as a
/// function writes its Message Data) to the DW-aligned `address` (§6.1.4, §6.1.4.5).
pub fn msi(buf: &mut [u8], requester: Bdf, address: u64, data: u32) -> Result<usize, BuildError> {
    if address & 3 != 0 {
        return Err(BuildError::MsiAddress(address));
    }
    mem_write(buf, requester, address, &data.to_le_bytes())
}

/// An IO request (§2.2.7, IORd/IOWr): one DW at the DW-aligned `address`, the bytes
/// `first_be` selects read or written (Last BE 0, TC 0, no attributes: §2.2.6.3). `write`:
/// the DW written (IOWr), else a read.
pub fn io(
    buf: &mut [u8],
    requester: Bdf,
    tag: u16,
    address: u32,
    first_be: u8,
    write: Option<[u8; 4]>,
) -> Result<usize, BuildError> {
    let header = TlpHeader::Io(IoRequest {
        write: write.is_some(),
        requester_id: requester,
        tag,
        first_be,
        last_be: 0,
        address: address & !3,
    });
    let payload: &[u8] = write.as_ref().map_or(&[], |d| &d[..]);
    Ok(tlp(1, header, 0, Attr::default()).emit_padded(buf, 0, payload)?)
}

/// A configuration request (§2.2.7): Type 0 to a function on the link, Type 1 to be
/// forwarded by a bridge; one DW, Last BE 0, TC 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cfg {
    /// Requester ID (the root port).
    pub requester: Bdf,
    /// Tag.
    pub tag: u16,
    /// The function addressed.
    pub target: Bdf,
    /// Type 1 rather than Type 0.
    pub type1: bool,
    /// Byte offset of the register DW (0..=0xffc, DW-aligned).
    pub register: u16,
    /// First DW byte enables: which bytes of the DW are read or written.
    pub first_be: u8,
}

impl Cfg {
    fn build(&self, buf: &mut [u8], data: Option<&[u8; 4]>) -> Result<usize, BuildError> {
        if self.register > 0xffc || self.register & 3 != 0 {
            return Err(BuildError::CfgRegister(self.register));
        }
        let header = TlpHeader::Cfg(CfgRequest {
            write: data.is_some(),
            type1: self.type1,
            requester_id: self.requester,
            tag: self.tag,
            first_be: self.first_be,
            last_be: 0,
            target: self.target,
            register: self.register,
        });
        let payload: &[u8] = data.map_or(&[], |d| &d[..]);
        Ok(tlp(1, header, 0, Attr::default()).emit_padded(buf, 0, payload)?)
    }

    /// CfgRd0 / CfgRd1.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, BuildError> {
        self.build(buf, None)
    }

    /// CfgWr0 / CfgWr1 of the DW `data` (the bytes the byte enables select are written).
    pub fn write(&self, buf: &mut [u8], data: [u8; 4]) -> Result<usize, BuildError> {
        self.build(buf, Some(&data))
    }
}

/// The transaction a completion answers, and its status (§2.2.9). The Traffic Class and the
/// attributes are the request's (§2.2.6.6, §2.2.6.3: a completion carries the request's TC
/// and its Relaxed Ordering / No Snoop bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpl {
    /// Completer ID.
    pub completer: Bdf,
    /// Requester ID of the request.
    pub requester: Bdf,
    /// Tag of the request.
    pub tag: u16,
    /// Completion Status.
    pub status: CplStatus,
    /// Traffic Class of the request.
    pub tc: u8,
    /// Attributes of the request.
    pub attr: Attr,
}

impl Cpl {
    /// A completion of `requester`'s `tag` from `completer`, TC 0, no attributes.
    pub const fn new(completer: Bdf, requester: Bdf, tag: u16, status: CplStatus) -> Cpl {
        Cpl {
            completer,
            requester,
            tag,
            status,
            tc: 0,
            attr: Attr {
                ns: false,
                ro: false,
                ido: false,
            },
        }
    }

    fn header(&self, with_data: bool, byte_count: u16, lower_address: u8) -> TlpHeader {
        TlpHeader::Cpl(Completion {
            with_data,
            locked: false,
            completer_id: self.completer,
            status: self.status,
            bcm: false,
            byte_count,
            requester_id: self.requester,
            tag: self.tag,
            lower_address,
        })
    }

    /// A Cpl without data: the answer to an IO or configuration write, or to a read that did
    /// not succeed. `byte_count` is 1..=4096 (for a failed read, the bytes it asked for).
    pub fn without_data(
        &self,
        buf: &mut [u8],
        byte_count: u16,
        lower_address: u8,
    ) -> Result<usize, BuildError> {
        // Length is reserved without data: zero on the wire, which the codec spells 1024.
        let h = self.header(false, byte_count, lower_address);
        Ok(tlp(1024, h, self.tc, self.attr).emit_padded(buf, 0, &[])?)
    }

    /// A CplD carrying `payload` (whole DWs, 1..=1024 of them), with the Byte Count (bytes
    /// remaining, this completion's included) and Lower Address the split gave it; with an
    /// empty `payload`, the Cpl of [`without_data`](Self::without_data).
    pub fn emit(
        &self,
        buf: &mut [u8],
        byte_count: u16,
        lower_address: u8,
        payload: &[u8],
    ) -> Result<usize, BuildError> {
        if payload.is_empty() {
            return self.without_data(buf, byte_count, lower_address);
        }
        if payload.len() % 4 != 0 || payload.len() > 4096 {
            return Err(BuildError::RaggedPayload(payload.len()));
        }
        let h = self.header(true, byte_count, lower_address);
        let length_dw = (payload.len() / 4) as u16;
        Ok(tlp(length_dw, h, self.tc, self.attr).emit_padded(buf, 0, payload)?)
    }

    /// The CplDs that return `data`, the bytes a memory read asked for from `address`, split
    /// so that each is at most `mps` bytes and every one but the last ends on the Read
    /// Completion Boundary `rcb` (§2.3.1.1). Empty `data` answers a zero-length read (one DW,
    /// Byte Count 1).
    pub fn read_completions<'a>(
        &self,
        address: u64,
        data: &'a [u8],
        rcb: u32,
        mps: u32,
    ) -> Result<ReadCompletions<'a>, BuildError> {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        Ok(ReadCompletions {
            cpl: *self,
            plan: SplitCompletion::new(address, len, rcb, mps)?,
            data,
        })
    }
}

/// The completions of one memory read, built one at a time into the caller's buffer (see
/// [`Cpl::read_completions`]).
#[derive(Debug, Clone)]
pub struct ReadCompletions<'a> {
    cpl: Cpl,
    plan: SplitCompletion,
    data: &'a [u8],
}

impl ReadCompletions<'_> {
    /// Build the next completion into `buf` and return its length; `None` once all are built.
    pub fn emit_next(&mut self, buf: &mut [u8]) -> Option<Result<usize, BuildError>> {
        let c = self.plan.next()?;
        let from = c.offset as usize;
        let bytes = &self.data[from..from + c.len as usize];
        let h = self.cpl.header(true, c.byte_count, c.lower_address);
        let lead = usize::from(c.lower_address & 3);
        let t = tlp(c.length_dw, h, self.cpl.tc, self.cpl.attr);
        Some(t.emit_padded(buf, lead, bytes).map_err(BuildError::from))
    }
}

/// An Assert_INTx or Deassert_INTx message (§2.2.8.1): `pin` 0..=3 is INTA..INTD. Local
/// routing, no data, TC 0. `requester` is the transmitting Upstream Port (the spec wants its
/// Function Number 0; this is left to the caller).
pub fn intx(buf: &mut [u8], requester: Bdf, pin: u8, assert: bool) -> Result<usize, BuildError> {
    if pin > 3 {
        return Err(BuildError::IntxPin(pin));
    }
    let base = if assert {
        super::message::code::ASSERT_INTA
    } else {
        super::message::code::DEASSERT_INTA
    };
    let header = TlpHeader::Msg(Message {
        with_data: false,
        routing: MsgRouting::Local,
        requester_id: requester,
        tag: 0,
        code: base + pin,
        fields: [0; 8],
    });
    Ok(tlp(1024, header, 0, Attr::default()).emit_padded(buf, 0, &[])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlp::json::parse_hex;

    #[test]
    fn io_requests_parse_back() {
        let mut b = [0u8; 32];
        let n = io(&mut b, Bdf::new(0, 0, 0), 7, 0x1006, 0b1100, None).unwrap();
        let t = Tlp::parse(&b[..n]).unwrap();
        assert_eq!(
            t.header,
            TlpHeader::Io(IoRequest {
                write: false,
                requester_id: Bdf::new(0, 0, 0),
                tag: 7,
                first_be: 0b1100,
                last_be: 0,
                address: 0x1004,
            })
        );
        let n = io(
            &mut b,
            Bdf::new(0, 0, 0),
            8,
            0x1008,
            0xf,
            Some([1, 2, 3, 4]),
        )
        .unwrap();
        let t = Tlp::parse(&b[..n]).unwrap();
        assert!(matches!(
            t.header,
            TlpHeader::Io(IoRequest { write: true, .. })
        ));
        assert_eq!(t.data, &[1, 2, 3, 4]);
    }

    fn hex(s: &str) -> Vec<u8> {
        parse_hex(s).unwrap()
    }

    #[test]
    fn byte_exact_requests() {
        let mut b = [0u8; MAX_LEN];
        // MRd32 of 6 bytes at 0x1001: 2 DW, First BE 1110b, Last BE 0111b.
        let n = mem_read(&mut b, Bdf::new(1, 0, 0), 5, 0x1001, 6).unwrap();
        assert_eq!(b[..n], hex("00000002 0100057e 00001000"));
        // Above 4 GiB: the 4 DW form.
        let n = mem_read(&mut b, Bdf::new(1, 0, 0), 0x3ab, 0x1_0000_2000, 64).unwrap();
        assert_eq!(b[..n], hex("20880010 0100abff 00000001 00002000"));
        // MWr32 of 3 bytes at 0xfee0_0001: the bytes sit at their offset, zeros around.
        let n = mem_write(&mut b, Bdf::new(0, 2, 0), 0xfee0_0001, &[0xaa, 0xbb, 0xcc]).unwrap();
        assert_eq!(b[..n], hex("40000001 0010000e fee00000 00aabbcc"));
        // MSI: a 1 DW write of the Message Data, little-endian.
        let n = msi(&mut b, Bdf::new(0, 2, 0), 0xfee0_0000, 0x4041).unwrap();
        assert_eq!(b[..n], hex("40000001 0010000f fee00000 41400000"));
        // CfgWr1 of register 0x104 (Extended Register Number 1).
        let cfg = Cfg {
            requester: Bdf(0),
            tag: 9,
            target: Bdf::new(2, 0, 1),
            type1: true,
            register: 0x104,
            first_be: 0x3,
        };
        let n = cfg.write(&mut b, [1, 2, 3, 4]).unwrap();
        assert_eq!(b[..n], hex("45000001 00000903 02010104 01020304"));
        let n = cfg.read(&mut b).unwrap();
        assert_eq!(b[..n], hex("05000001 00000903 02010104"));
        // Assert_INTB.
        let n = intx(&mut b, Bdf::new(1, 0, 0), 1, true).unwrap();
        assert_eq!(b[..n], hex("34000000 01000021 00000000 00000000"));
    }

    #[test]
    fn byte_exact_completions() {
        let mut b = [0u8; MAX_LEN];
        let cpl = Cpl::new(Bdf::new(1, 0, 0), Bdf(0), 0x2ab, CplStatus::Sc);
        let n = cpl
            .emit(&mut b, 6, 0x42, &[1, 2, 3, 4, 5, 6, 7, 8])
            .unwrap();
        assert_eq!(b[..n], hex("4a800002 01000006 0000ab42 01020304 05060708"));
        let ur = Cpl::new(Bdf(1), Bdf(2), 1, CplStatus::Ur);
        let n = ur.without_data(&mut b, 4096, 0).unwrap();
        assert_eq!(b[..n], hex("0a000000 00012000 00020100"));
        // emit: the same Cpl for no payload, the same CplD for one.
        let n = ur.emit(&mut b, 4096, 0, &[]).unwrap();
        assert_eq!(b[..n], hex("0a000000 00012000 00020100"));
        let n = cpl
            .emit(&mut b, 6, 0x42, &[1, 2, 3, 4, 5, 6, 7, 8])
            .unwrap();
        assert_eq!(b[..n], hex("4a800002 01000006 0000ab42 01020304 05060708"));
        // 256 bytes at 0x1010, RCB 64, MPS 128: three CplDs, the first up to the RCB.
        let data: Vec<u8> = (0..=255).collect();
        let mut split = cpl.read_completions(0x1010, &data, 64, 128).unwrap();
        let mut got = Vec::new();
        while let Some(r) = split.emit_next(&mut b) {
            let t = Tlp::parse(&b[..r.unwrap()]).unwrap();
            let TlpHeader::Cpl(c) = t.header else {
                panic!()
            };
            got.push((c.byte_count, c.lower_address, t.data.len()));
            let lead = usize::from(c.lower_address & 3);
            let off = 256 - usize::from(c.byte_count);
            let n = (t.data.len() - lead).min(usize::from(c.byte_count));
            assert_eq!(&t.data[lead..lead + n], &data[off..off + n]);
        }
        assert_eq!(got, [(256, 0x10, 112), (144, 0, 128), (16, 0, 16)]);
        // A read of 3 bytes at 0x2001 completes with the bytes at offset 1 of one DW.
        let mut split = cpl.read_completions(0x2001, &[7, 8, 9], 64, 128).unwrap();
        let n = split.emit_next(&mut b).unwrap().unwrap();
        assert_eq!(b[..n], hex("4a800001 01000003 0000ab01 00070809"));
        assert!(split.emit_next(&mut b).is_none());
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut b = [0u8; MAX_LEN];
        let r = Bdf(0);
        assert_eq!(
            mem_read(&mut b, r, 0, 0x1000, 4097),
            Err(BuildError::TooLong {
                address: 0x1000,
                len: 4097
            })
        );
        assert_eq!(
            mem_write(&mut b, r, 0xffe, &[0; 4]),
            Err(BuildError::Crosses4K {
                address: 0xffe,
                len: 4
            })
        );
        assert!(matches!(
            mem_read(&mut b, r, 0x400, 0, 4),
            Err(BuildError::Tlp(Error::InvalidField { field: "Tag", .. }))
        ));
        assert!(matches!(
            mem_write(&mut b[..15], r, 0, &[1]),
            Err(BuildError::Tlp(Error::BufferTooSmall {
                need: 16,
                have: 15
            }))
        ));
        assert_eq!(
            msi(&mut b, r, 0xfee0_0002, 1),
            Err(BuildError::MsiAddress(0xfee0_0002))
        );
        assert_eq!(intx(&mut b, r, 4, true), Err(BuildError::IntxPin(4)));
        let cfg = Cfg {
            requester: r,
            tag: 0,
            target: r,
            type1: false,
            register: 0x1000,
            first_be: 0xf,
        };
        assert_eq!(cfg.read(&mut b), Err(BuildError::CfgRegister(0x1000)));
        let cpl = Cpl::new(r, r, 0, CplStatus::Sc);
        assert_eq!(
            cpl.emit(&mut b, 3, 0, &[1, 2, 3]),
            Err(BuildError::RaggedPayload(3))
        );
        assert!(matches!(
            cpl.without_data(&mut b, 4097, 0),
            Err(BuildError::Tlp(Error::InvalidField { .. }))
        ));
        assert!(matches!(
            cpl.read_completions(0, &[0; 8], 32, 128),
            Err(BuildError::Split(SizeError::Rcb(32)))
        ));
    }
}
