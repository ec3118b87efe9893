//! Frame wire format: the 24-byte header, the 64-byte ACK block and the TLP records
//! (docs/protocol.md §2 and §4). Zero-copy parsing into plain values; malformed input is a
//! [`FrameError`], never a panic.

use std::ops::Range;

/// `"PT"`.
pub const MAGIC: u16 = 0x5054;
/// Protocol version implemented here.
pub const VERSION: u8 = 1;
/// Bytes of the fixed frame header.
pub const HEADER_LEN: usize = 24;
/// Bytes of the AEAD tag that ends every DATA frame.
pub const TAG_LEN: usize = 16;
/// Bytes of the ACK block.
pub const ACK_LEN: usize = 64;
/// Bytes of a TLP record header.
pub const RECORD_HDR_LEN: usize = 8;
/// SACK ranges an ACK block can carry.
pub const MAX_SACK: usize = 3;
/// Largest TLP: 4 prefix DW + 4 header DW + 1024 payload DW + 1 digest DW.
pub const MAX_TLP_LEN: usize = 4 * (4 + 4 + 1024 + 1);
/// Overhead of a DATA frame without ACK block or records.
pub const DATA_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..2;
    pub const VERSION: usize = 2;
    pub const TYPE: usize = 3;
    pub const FLAGS: usize = 4;
    pub const N_RECORDS: usize = 5;
    pub const BODY_LEN: Range<usize> = 6..8;
    pub const DST_SESSION: Range<usize> = 8..12;
    pub const SRC_EPOCH: Range<usize> = 12..16;
    pub const PN: Range<usize> = 16..24;
}

/// Frame types (header byte 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    /// Client hello.
    Init = 1,
    /// Server answer.
    Resp = 2,
    /// TLPs and/or ACKs.
    Data = 3,
    /// Hint from a server that does not know the session.
    Reset = 4,
    /// The appliance is under load: a cookie for the INIT's mac2 (docs/protocol.md §3.4).
    Cookie = 5,
}

/// Header flag bits.
pub mod flags {
    /// Body encrypted.
    pub const ENCRYPTED: u8 = 1;
    /// ACK block present.
    pub const ACK: u8 = 2;
    /// Please acknowledge now.
    pub const ACK_REQ: u8 = 4;
    /// The appliance runs a coordinated drain: hold the congestion window at two frames for
    /// two RTTs (docs/protocol.md §8).
    pub const DRAIN: u8 = 8;
    /// Server only: please rekey this session soon (its key is near a limit, §3.5).
    pub const REKEY: u8 = 16;
    /// All defined bits.
    pub const ALL: u8 = ENCRYPTED | ACK | ACK_REQ | DRAIN | REKEY;
}

/// Why a frame could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the fixed part.
    #[error("frame truncated: {have} bytes, need {need}")]
    Truncated {
        /// bytes present
        have: usize,
        /// bytes required
        need: usize,
    },
    /// Not our magic.
    #[error("bad magic 0x{0:04x}")]
    BadMagic(u16),
    /// Unsupported version.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// Unknown frame type.
    #[error("unknown frame type {0}")]
    BadType(u8),
    /// Reserved flag bits set.
    #[error("reserved flag bits set: 0x{0:02x}")]
    BadFlags(u8),
    /// `body_len` disagrees with the frame length.
    #[error("body length {body_len} does not fit a {frame_len}-byte frame")]
    BadLength {
        /// header field
        body_len: usize,
        /// bytes received
        frame_len: usize,
    },
    /// A record runs past the body or has an impossible length.
    #[error("TLP record {index} malformed")]
    BadRecord {
        /// record index in the frame
        index: usize,
    },
    /// Records and `n_records` disagree.
    #[error("record count mismatch: header says {declared}, body holds {found}")]
    RecordCount {
        /// header field
        declared: usize,
        /// records parsed
        found: usize,
    },
    /// An ACK block with more than [`MAX_SACK`] ranges or a reversed range.
    #[error("malformed ACK block")]
    BadAck,
}

/// The fixed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub ty: FrameType,
    /// Flag bits ([`flags`]).
    pub flags: u8,
    /// Number of TLP records.
    pub n_records: u8,
    /// Bytes of body.
    pub body_len: u16,
    /// Receiver's session id.
    pub dst_session: u32,
    /// Sender's epoch.
    pub src_epoch: u32,
    /// Packet number.
    pub pn: u64,
}

fn be16(b: &[u8], r: Range<usize>) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[r]);
    u16::from_be_bytes(a)
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], r: Range<usize>) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[r]);
    u64::from_be_bytes(a)
}

impl Header {
    /// Parse and check the header of `frame` (the whole frame, so `body_len` can be checked).
    pub fn parse(frame: &[u8]) -> Result<Header, FrameError> {
        if frame.len() < HEADER_LEN {
            return Err(FrameError::Truncated {
                have: frame.len(),
                need: HEADER_LEN,
            });
        }
        let magic = be16(frame, field::MAGIC);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if frame[field::VERSION] != VERSION {
            return Err(FrameError::BadVersion(frame[field::VERSION]));
        }
        let ty = match frame[field::TYPE] {
            1 => FrameType::Init,
            2 => FrameType::Resp,
            3 => FrameType::Data,
            4 => FrameType::Reset,
            5 => FrameType::Cookie,
            t => return Err(FrameError::BadType(t)),
        };
        let fl = frame[field::FLAGS];
        if fl & !flags::ALL != 0 {
            return Err(FrameError::BadFlags(fl));
        }
        let body_len = be16(frame, field::BODY_LEN);
        let tag = if ty == FrameType::Data { TAG_LEN } else { 0 };
        if HEADER_LEN + usize::from(body_len) + tag != frame.len() {
            return Err(FrameError::BadLength {
                body_len: body_len.into(),
                frame_len: frame.len(),
            });
        }
        Ok(Header {
            ty,
            flags: fl,
            n_records: frame[field::N_RECORDS],
            body_len,
            dst_session: be32(frame, field::DST_SESSION.start),
            src_epoch: be32(frame, field::SRC_EPOCH.start),
            pn: be64(frame, field::PN),
        })
    }

    /// Write the header into `buf[..HEADER_LEN]`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[field::MAGIC].copy_from_slice(&MAGIC.to_be_bytes());
        buf[field::VERSION] = VERSION;
        buf[field::TYPE] = self.ty as u8;
        buf[field::FLAGS] = self.flags;
        buf[field::N_RECORDS] = self.n_records;
        buf[field::BODY_LEN].copy_from_slice(&self.body_len.to_be_bytes());
        buf[field::DST_SESSION].copy_from_slice(&self.dst_session.to_be_bytes());
        buf[field::SRC_EPOCH].copy_from_slice(&self.src_epoch.to_be_bytes());
        buf[field::PN].copy_from_slice(&self.pn.to_be_bytes());
    }
}

/// Cumulative credit limits, in the order P hdr, P data, NP hdr, NP data, Cpl hdr, Cpl data.
pub type CreditLimits = [u32; 6];

/// The ACK block (docs/protocol.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AckBlock {
    /// Next TLP seq expected.
    pub cum_ack: u32,
    /// How long the receiver held this ACK, µs.
    pub ack_delay_us: u32,
    /// Cumulative credit limits.
    pub limits: CreditLimits,
    /// Number of valid entries in `sack`.
    pub n_sack: u8,
    /// Received ranges above `cum_ack`, `[start, end)`.
    pub sack: [(u32, u32); MAX_SACK],
}

impl AckBlock {
    /// Parse the 64-byte block at the start of `b`.
    pub fn parse(b: &[u8]) -> Result<AckBlock, FrameError> {
        if b.len() < ACK_LEN {
            return Err(FrameError::Truncated {
                have: b.len(),
                need: ACK_LEN,
            });
        }
        let mut limits = [0u32; 6];
        for (i, l) in limits.iter_mut().enumerate() {
            *l = be32(b, 8 + 4 * i);
        }
        let n_sack = b[32];
        if usize::from(n_sack) > MAX_SACK {
            return Err(FrameError::BadAck);
        }
        let mut sack = [(0, 0); MAX_SACK];
        for (i, s) in sack.iter_mut().enumerate().take(n_sack.into()) {
            *s = (be32(b, 36 + 8 * i), be32(b, 40 + 8 * i));
            if (s.1.wrapping_sub(s.0) as i32) <= 0 {
                return Err(FrameError::BadAck);
            }
        }
        Ok(AckBlock {
            cum_ack: be32(b, 0),
            ack_delay_us: be32(b, 4),
            limits,
            n_sack,
            sack,
        })
    }

    /// Write the block into `b[..ACK_LEN]`.
    pub fn emit(&self, b: &mut [u8]) {
        b[..ACK_LEN].fill(0);
        b[0..4].copy_from_slice(&self.cum_ack.to_be_bytes());
        b[4..8].copy_from_slice(&self.ack_delay_us.to_be_bytes());
        for (i, l) in self.limits.iter().enumerate() {
            b[8 + 4 * i..12 + 4 * i].copy_from_slice(&l.to_be_bytes());
        }
        b[32] = self.n_sack;
        for (i, s) in self.sack.iter().enumerate().take(self.n_sack.into()) {
            b[36 + 8 * i..40 + 8 * i].copy_from_slice(&s.0.to_be_bytes());
            b[40 + 8 * i..44 + 8 * i].copy_from_slice(&s.1.to_be_bytes());
        }
    }
}

/// One TLP record, as offsets into the body it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef {
    /// TLP sequence number.
    pub seq: u32,
    /// Class byte (0 P, 1 NP, 2 Cpl).
    pub class: u8,
    /// Where the TLP bytes are, relative to the start of the records area.
    pub range: Range<usize>,
}

/// Padded length of a record carrying `tlp_len` bytes.
pub const fn record_len(tlp_len: usize) -> usize {
    RECORD_HDR_LEN + tlp_len.div_ceil(4) * 4
}

/// Write a record at the start of `b`; returns bytes written. `b` must hold
/// [`record_len`]`(tlp.len())` bytes.
pub fn emit_record(b: &mut [u8], seq: u32, class: u8, tlp: &[u8]) -> usize {
    let n = record_len(tlp.len());
    b[0..4].copy_from_slice(&seq.to_be_bytes());
    b[4..6].copy_from_slice(&(tlp.len() as u16).to_be_bytes());
    b[6] = class;
    b[7] = 0;
    b[8..8 + tlp.len()].copy_from_slice(tlp);
    b[8 + tlp.len()..n].fill(0);
    n
}

/// Iterates over the records of a DATA body (the part after the optional ACK block).
#[derive(Debug)]
pub struct Records<'a> {
    body: &'a [u8],
    off: usize,
    index: usize,
    declared: usize,
}

impl<'a> Records<'a> {
    /// Records in `body`; `declared` is the header's `n_records`.
    pub fn new(body: &'a [u8], declared: u8) -> Self {
        Records {
            body,
            off: 0,
            index: 0,
            declared: declared.into(),
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<RecordRef, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.off == self.body.len() {
            if self.index != self.declared {
                let e = FrameError::RecordCount {
                    declared: self.declared,
                    found: self.index,
                };
                self.index = self.declared;
                return Some(Err(e));
            }
            return None;
        }
        let bad = FrameError::BadRecord { index: self.index };
        let rest = &self.body[self.off..];
        if rest.len() < RECORD_HDR_LEN || self.index >= self.declared {
            self.off = self.body.len();
            self.index = self.declared;
            return Some(Err(
                if self.index >= self.declared && rest.len() >= RECORD_HDR_LEN {
                    FrameError::RecordCount {
                        declared: self.declared,
                        found: self.declared + 1,
                    }
                } else {
                    bad
                },
            ));
        }
        let seq = be32(rest, 0);
        let len = usize::from(be16(rest, 4..6));
        let class = rest[6];
        let total = record_len(len);
        if len == 0 || len > MAX_TLP_LEN || class > 2 || rest[7] != 0 || total > rest.len() {
            self.off = self.body.len();
            self.index = self.declared;
            return Some(Err(bad));
        }
        let start = self.off + RECORD_HDR_LEN;
        self.off += total;
        self.index += 1;
        Some(Ok(RecordRef {
            seq,
            class,
            range: start..start + len,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HDR: [u8; 24] = [
        0x50, 0x54, 1, 3, 0x03, 2, 0x00, 0x50, 0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 1, 0,
    ];

    #[test]
    fn header_deconstruct_and_construct() {
        let mut frame = HDR.to_vec();
        frame.resize(24 + 0x50 + 16, 0);
        let h = Header::parse(&frame).unwrap();
        assert_eq!(
            h,
            Header {
                ty: FrameType::Data,
                flags: flags::ENCRYPTED | flags::ACK,
                n_records: 2,
                body_len: 0x50,
                dst_session: 7,
                src_epoch: 9,
                pn: 256,
            }
        );
        let mut out = [0u8; 24];
        h.emit(&mut out);
        assert_eq!(out, HDR);
    }

    #[test]
    fn header_rejects_garbage() {
        let mut f = HDR.to_vec();
        f.resize(24 + 0x50 + 16, 0);
        let mut g = f.clone();
        g[0] = 0;
        assert!(matches!(Header::parse(&g), Err(FrameError::BadMagic(_))));
        let mut g = f.clone();
        g[2] = 2;
        assert_eq!(Header::parse(&g), Err(FrameError::BadVersion(2)));
        let mut g = f.clone();
        g[4] = 0x80;
        assert_eq!(Header::parse(&g), Err(FrameError::BadFlags(0x80)));
        assert!(matches!(
            Header::parse(&f[..f.len() - 1]),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            Header::parse(&f[..10]),
            Err(FrameError::Truncated { .. })
        ));
    }

    #[test]
    fn records_roundtrip_and_padding() {
        let mut body = vec![0u8; 64];
        let mut off = emit_record(&mut body, 5, 0, &[1, 2, 3, 4, 5]);
        assert_eq!(off, 16);
        assert_eq!(
            &body[..16],
            &[0, 0, 0, 5, 0, 5, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0]
        );
        off += emit_record(&mut body[off..], 6, 2, &[9; 12]);
        let recs: Vec<_> = Records::new(&body[..off], 2)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(recs[0].range, 8..13);
        assert_eq!(recs[1].seq, 6);
        assert_eq!(recs[1].class, 2);
        assert_eq!(&body[recs[1].range.clone()], &[9; 12]);
        // wrong count either way
        assert!(Records::new(&body[..off], 3).any(|r| r.is_err()));
        assert!(Records::new(&body[..off], 1).any(|r| r.is_err()));
    }

    proptest! {
        #[test]
        fn header_roundtrip(ty in 1u8..=5, fl in 0u8..32, n in any::<u8>(), body in 0u16..2000,
                            sid in any::<u32>(), ep in any::<u32>(), pn in any::<u64>()) {
            let ty = match ty { 1 => FrameType::Init, 2 => FrameType::Resp, 3 => FrameType::Data, 4 => FrameType::Reset, _ => FrameType::Cookie };
            let h = Header { ty, flags: fl, n_records: n, body_len: body, dst_session: sid, src_epoch: ep, pn };
            let tag = if ty == FrameType::Data { TAG_LEN } else { 0 };
            let mut f = vec![0u8; HEADER_LEN + body as usize + tag];
            h.emit(&mut f);
            prop_assert_eq!(Header::parse(&f), Ok(h));
        }

        #[test]
        fn ack_roundtrip(cum in any::<u32>(), d in any::<u32>(), l in any::<[u32; 6]>(), n in 0u8..=3,
                         s in proptest::array::uniform3((any::<u32>(), 1u32..1000))) {
            let mut sack = [(0, 0); 3];
            for i in 0..n as usize { sack[i] = (s[i].0, s[i].0.wrapping_add(s[i].1)); }
            let a = AckBlock { cum_ack: cum, ack_delay_us: d, limits: l, n_sack: n, sack };
            let mut b = [0u8; ACK_LEN];
            a.emit(&mut b);
            prop_assert_eq!(AckBlock::parse(&b), Ok(a));
        }

        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), n in any::<u8>()) {
            let _ = Header::parse(&data);
            let _ = AckBlock::parse(&data);
            let mut count = 0;
            for r in Records::new(&data, n) {
                if let Ok(r) = r { prop_assert!(r.range.end <= data.len()); }
                count += 1;
                prop_assert!(count <= 300);
            }
        }
    }
}
