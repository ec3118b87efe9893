//! Frame wire format: the 24-byte header, the 64-byte ACK block and the TLP records
//! (docs/protocol.md §2 and §4). Zero-copy parsing into plain values; malformed input is a
//! [`FrameError`], never a panic.
//!
//! smoltcp style: the byte offsets of each format live in one offset module ([`field`] for the
//! header, [`ack_field`] for the ACK block, [`record_field`] for a record header), so the layout
//! reads like the tables of docs/protocol.md. [`AckView`] and [`RecordView`] are zero-copy
//! views (checked once by `new_checked`, then one accessor and one setter per field);
//! [`FrameHeader`], [`AckBlock`] and [`RecordHeader`] are the plain values with `parse`/`emit`.

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

/// Byte offsets of the frame header (docs/protocol.md §2).
pub mod field {
    /// A byte range inside a structure.
    pub type Field = core::ops::Range<usize>;

    /// `0x5054`.
    pub const MAGIC: Field = 0..2;
    /// Protocol version.
    pub const VERSION: usize = 2;
    /// Frame type.
    pub const TYPE: usize = 3;
    /// Flag bits.
    pub const FLAGS: usize = 4;
    /// TLP records in a DATA frame.
    pub const N_RECORDS: usize = 5;
    /// Bytes between the header and the tag.
    pub const BODY_LEN: Field = 6..8;
    /// Session id chosen by the receiver.
    pub const DST_SESSION: Field = 8..12;
    /// Sender's epoch.
    pub const SRC_EPOCH: Field = 12..16;
    /// Packet number.
    pub const PN: Field = 16..24;
}

/// Byte offsets of the ACK block (docs/protocol.md §4 "ACK block").
pub mod ack_field {
    use super::field::Field;

    /// Next TLP sequence number expected.
    pub const CUM_ACK: Field = 0..4;
    /// How long the receiver held the ACK, µs.
    pub const ACK_DELAY: Field = 4..8;
    /// Six cumulative credit limits (P hdr, P data, NP hdr, NP data, Cpl hdr, Cpl data).
    pub const LIMITS: Field = 8..32;
    /// Number of valid SACK ranges (0..=3).
    pub const N_SACK: usize = 32;
    /// Reserved, sent as zero, ignored on receipt.
    pub const RESERVED0: Field = 33..36;
    /// Three (start u32, end u32) ranges, end exclusive.
    pub const SACK: Field = 36..60;
    /// Reserved, sent as zero, ignored on receipt.
    pub const RESERVED1: Field = 60..64;

    /// Credit limit `i` (0..6).
    pub const fn limit(i: usize) -> Field {
        LIMITS.start + 4 * i..LIMITS.start + 4 * i + 4
    }
    /// Start of SACK range `i` (0..3).
    pub const fn sack_start(i: usize) -> Field {
        SACK.start + 8 * i..SACK.start + 8 * i + 4
    }
    /// End of SACK range `i` (0..3).
    pub const fn sack_end(i: usize) -> Field {
        SACK.start + 8 * i + 4..SACK.start + 8 * i + 8
    }
}

/// Byte offsets of a TLP record (docs/protocol.md §4 "TLP record").
pub mod record_field {
    use super::field::Field;

    /// TLP sequence number.
    pub const SEQ: Field = 0..4;
    /// TLP length in bytes (without padding).
    pub const LEN: Field = 4..6;
    /// Ordering class: 0 Posted, 1 Non-Posted, 2 Completion.
    pub const CLASS: usize = 6;
    /// Reserved, must be zero.
    pub const RESERVED: usize = 7;
    /// First byte of the TLP; zero padding to a 4-byte boundary follows it.
    pub const TLP: usize = 8;
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
pub struct FrameHeader {
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

fn be32_at(b: &[u8], r: Range<usize>) -> u32 {
    be32(b, r.start)
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

impl FrameHeader {
    /// Parse and check the header of `frame` (the whole frame, so `body_len` can be checked).
    pub fn parse(frame: &[u8]) -> Result<FrameHeader, FrameError> {
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
        Ok(FrameHeader {
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

/// Zero-copy view of a 64-byte ACK block (docs/protocol.md §4).
#[derive(Debug, Clone, Copy)]
pub struct AckView<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> AckView<T> {
    /// Wrap a buffer without checking it (accessors panic on a buffer under [`ACK_LEN`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wrap a buffer after checking it holds a whole ACK block.
    pub fn new_checked(buffer: T) -> Result<Self, FrameError> {
        let have = buffer.as_ref().len();
        if have < ACK_LEN {
            return Err(FrameError::Truncated {
                have,
                need: ACK_LEN,
            });
        }
        Ok(Self { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Next TLP sequence number expected.
    pub fn cum_ack(&self) -> u32 {
        be32_at(self.buffer.as_ref(), ack_field::CUM_ACK)
    }
    /// ACK delay, µs.
    pub fn ack_delay_us(&self) -> u32 {
        be32_at(self.buffer.as_ref(), ack_field::ACK_DELAY)
    }
    /// Credit limit `i` (0..6; panics beyond).
    pub fn limit(&self, i: usize) -> u32 {
        assert!(i < 6, "credit limit index {i}");
        be32_at(self.buffer.as_ref(), ack_field::limit(i))
    }
    /// All six credit limits.
    pub fn limits(&self) -> CreditLimits {
        std::array::from_fn(|i| self.limit(i))
    }
    /// Number of SACK ranges as sent (not checked against [`MAX_SACK`] here).
    pub fn n_sack(&self) -> u8 {
        self.buffer.as_ref()[ack_field::N_SACK]
    }
    /// SACK range `i` (0..3; panics beyond), `[start, end)`.
    pub fn sack(&self, i: usize) -> (u32, u32) {
        assert!(i < MAX_SACK, "SACK index {i}");
        let b = self.buffer.as_ref();
        (
            be32_at(b, ack_field::sack_start(i)),
            be32_at(b, ack_field::sack_end(i)),
        )
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> AckView<T> {
    fn put32(&mut self, r: Range<usize>, v: u32) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }
    /// Set the cumulative ACK.
    pub fn set_cum_ack(&mut self, v: u32) {
        self.put32(ack_field::CUM_ACK, v);
    }
    /// Set the ACK delay.
    pub fn set_ack_delay_us(&mut self, v: u32) {
        self.put32(ack_field::ACK_DELAY, v);
    }
    /// Set credit limit `i` (0..6; panics beyond).
    pub fn set_limit(&mut self, i: usize, v: u32) {
        assert!(i < 6, "credit limit index {i}");
        self.put32(ack_field::limit(i), v);
    }
    /// Set the number of SACK ranges.
    pub fn set_n_sack(&mut self, v: u8) {
        self.buffer.as_mut()[ack_field::N_SACK] = v;
    }
    /// Set SACK range `i` (0..3; panics beyond).
    pub fn set_sack(&mut self, i: usize, (start, end): (u32, u32)) {
        assert!(i < MAX_SACK, "SACK index {i}");
        self.put32(ack_field::sack_start(i), start);
        self.put32(ack_field::sack_end(i), end);
    }
    /// Zero the reserved bytes.
    pub fn clear_reserved(&mut self) {
        let b = self.buffer.as_mut();
        b[ack_field::RESERVED0].fill(0);
        b[ack_field::RESERVED1].fill(0);
    }
}

impl AckBlock {
    /// Parse a checked view: at most [`MAX_SACK`] ranges, each non-empty (modulo 2^32).
    /// Reserved bytes are ignored.
    pub fn parse_view<T: AsRef<[u8]>>(v: &AckView<T>) -> Result<AckBlock, FrameError> {
        let n_sack = v.n_sack();
        if usize::from(n_sack) > MAX_SACK {
            return Err(FrameError::BadAck);
        }
        let mut sack = [(0, 0); MAX_SACK];
        for (i, s) in sack.iter_mut().enumerate().take(n_sack.into()) {
            *s = v.sack(i);
            if (s.1.wrapping_sub(s.0) as i32) <= 0 {
                return Err(FrameError::BadAck);
            }
        }
        Ok(AckBlock {
            cum_ack: v.cum_ack(),
            ack_delay_us: v.ack_delay_us(),
            limits: v.limits(),
            n_sack,
            sack,
        })
    }

    /// Parse the 64-byte block at the start of `b`.
    pub fn parse(b: &[u8]) -> Result<AckBlock, FrameError> {
        Self::parse_view(&AckView::new_checked(b)?)
    }

    /// Write into a view: every field, unused SACK slots and reserved bytes zero.
    pub fn emit_view<T: AsRef<[u8]> + AsMut<[u8]>>(&self, v: &mut AckView<T>) {
        v.set_cum_ack(self.cum_ack);
        v.set_ack_delay_us(self.ack_delay_us);
        for (i, &l) in self.limits.iter().enumerate() {
            v.set_limit(i, l);
        }
        v.set_n_sack(self.n_sack);
        for i in 0..MAX_SACK {
            let s = if i < usize::from(self.n_sack) {
                self.sack[i]
            } else {
                (0, 0)
            };
            v.set_sack(i, s);
        }
        v.clear_reserved();
    }

    /// Write the block into `b[..ACK_LEN]` (`b` must hold [`ACK_LEN`] bytes).
    pub fn emit(&self, b: &mut [u8]) {
        self.emit_view(&mut AckView::new_unchecked(&mut b[..ACK_LEN]));
    }
}

/// Zero-copy view of one TLP record: the 8-byte record header, the TLP, its padding
/// (docs/protocol.md §4 "TLP record").
#[derive(Debug, Clone, Copy)]
pub struct RecordView<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RecordView<T> {
    /// Wrap a buffer without checking it (accessors may panic on a short buffer).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wrap the record at the start of `buffer` after checking that its header and its
    /// padded TLP ([`record_len`] of the `len` field) are all there.
    pub fn new_checked(buffer: T) -> Result<Self, FrameError> {
        let have = buffer.as_ref().len();
        if have < RECORD_HDR_LEN {
            return Err(FrameError::Truncated {
                have,
                need: RECORD_HDR_LEN,
            });
        }
        let v = Self { buffer };
        let need = v.total_len();
        if have < need {
            return Err(FrameError::Truncated { have, need });
        }
        Ok(v)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// TLP sequence number.
    pub fn seq(&self) -> u32 {
        be32_at(self.buffer.as_ref(), record_field::SEQ)
    }
    /// TLP length in bytes.
    pub fn tlp_len(&self) -> u16 {
        be16(self.buffer.as_ref(), record_field::LEN)
    }
    /// Ordering class byte.
    pub fn class(&self) -> u8 {
        self.buffer.as_ref()[record_field::CLASS]
    }
    /// Reserved byte (must be zero).
    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[record_field::RESERVED]
    }
    /// Bytes of the whole record, padding included.
    pub fn total_len(&self) -> usize {
        record_len(self.tlp_len().into())
    }
    /// The TLP bytes (without padding).
    pub fn tlp(&self) -> &[u8] {
        let start = record_field::TLP;
        &self.buffer.as_ref()[start..start + usize::from(self.tlp_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RecordView<T> {
    /// Set the sequence number.
    pub fn set_seq(&mut self, v: u32) {
        self.buffer.as_mut()[record_field::SEQ].copy_from_slice(&v.to_be_bytes());
    }
    /// Set the TLP length.
    pub fn set_tlp_len(&mut self, v: u16) {
        self.buffer.as_mut()[record_field::LEN].copy_from_slice(&v.to_be_bytes());
    }
    /// Set the class byte.
    pub fn set_class(&mut self, v: u8) {
        self.buffer.as_mut()[record_field::CLASS] = v;
    }
    /// Zero the reserved byte.
    pub fn clear_reserved(&mut self) {
        self.buffer.as_mut()[record_field::RESERVED] = 0;
    }
    /// The TLP bytes, mutable (length from the `len` field).
    pub fn tlp_mut(&mut self) -> &mut [u8] {
        let start = record_field::TLP;
        let len = usize::from(self.tlp_len());
        &mut self.buffer.as_mut()[start..start + len]
    }
    /// Zero the padding after the TLP.
    pub fn clear_padding(&mut self) {
        let (start, end) = (
            record_field::TLP + usize::from(self.tlp_len()),
            self.total_len(),
        );
        self.buffer.as_mut()[start..end].fill(0);
    }
}

/// A TLP record header as a plain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// TLP sequence number.
    pub seq: u32,
    /// Class byte (0 P, 1 NP, 2 Cpl).
    pub class: u8,
    /// TLP length in bytes (1..=[`MAX_TLP_LEN`]).
    pub tlp_len: u16,
}

impl RecordHeader {
    /// Check a record view: a TLP length of 1..=[`MAX_TLP_LEN`], a known class and a zero
    /// reserved byte. `index` is the record's position, for the error.
    pub fn parse<T: AsRef<[u8]>>(
        v: &RecordView<T>,
        index: usize,
    ) -> Result<RecordHeader, FrameError> {
        let len = usize::from(v.tlp_len());
        if len == 0 || len > MAX_TLP_LEN || v.class() > 2 || v.reserved() != 0 {
            return Err(FrameError::BadRecord { index });
        }
        Ok(RecordHeader {
            seq: v.seq(),
            class: v.class(),
            tlp_len: v.tlp_len(),
        })
    }

    /// Write the 8 header bytes into a view (the TLP and its padding are the caller's).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, v: &mut RecordView<T>) {
        v.set_seq(self.seq);
        v.set_tlp_len(self.tlp_len);
        v.set_class(self.class);
        v.clear_reserved();
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
/// [`record_len`]`(tlp.len())` bytes, and `tlp` at most [`MAX_TLP_LEN`] bytes.
pub fn emit_record(b: &mut [u8], seq: u32, class: u8, tlp: &[u8]) -> usize {
    let n = record_len(tlp.len());
    let mut v = RecordView::new_unchecked(&mut b[..n]);
    RecordHeader {
        seq,
        class,
        tlp_len: tlp.len() as u16,
    }
    .emit(&mut v);
    v.tlp_mut().copy_from_slice(tlp);
    v.clear_padding();
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
        let parsed = RecordView::new_checked(rest)
            .map_err(|_| bad)
            .and_then(|v| Ok((RecordHeader::parse(&v, self.index)?, v.total_len())));
        let (h, total) = match parsed {
            Ok(p) => p,
            Err(e) => {
                self.off = self.body.len();
                self.index = self.declared;
                return Some(Err(e));
            }
        };
        let start = self.off + record_field::TLP;
        self.off += total;
        self.index += 1;
        Some(Ok(RecordRef {
            seq: h.seq,
            class: h.class,
            range: start..start + usize::from(h.tlp_len),
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
        let h = FrameHeader::parse(&frame).unwrap();
        assert_eq!(
            h,
            FrameHeader {
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
        assert!(matches!(
            FrameHeader::parse(&g),
            Err(FrameError::BadMagic(_))
        ));
        let mut g = f.clone();
        g[2] = 2;
        assert_eq!(FrameHeader::parse(&g), Err(FrameError::BadVersion(2)));
        let mut g = f.clone();
        g[4] = 0x80;
        assert_eq!(FrameHeader::parse(&g), Err(FrameError::BadFlags(0x80)));
        assert!(matches!(
            FrameHeader::parse(&f[..f.len() - 1]),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            FrameHeader::parse(&f[..10]),
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

    /// An ACK block as docs/protocol.md §4 lays it out: cum_ack 0x100, ack_delay 25 µs, limits
    /// 1..=6, two SACK ranges [0x102, 0x105) and [0x110, 0x111), reserved bytes zero.
    static ACK_BYTES: [u8; ACK_LEN] = [
        0x00, 0x00, 0x01, 0x00, // cum_ack
        0x00, 0x00, 0x00, 0x19, // ack_delay_us
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x03, // limits
        0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x06, //
        0x02, 0x00, 0x00, 0x00, // n_sack, reserved
        0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x01, 0x05, // sack[0]
        0x00, 0x00, 0x01, 0x10, 0x00, 0x00, 0x01, 0x11, // sack[1]
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // sack[2], unused
        0x00, 0x00, 0x00, 0x00, // reserved
    ];

    fn ack_repr() -> AckBlock {
        AckBlock {
            cum_ack: 0x100,
            ack_delay_us: 25,
            limits: [1, 2, 3, 4, 5, 6],
            n_sack: 2,
            sack: [(0x102, 0x105), (0x110, 0x111), (0, 0)],
        }
    }

    #[test]
    fn ack_deconstruct() {
        let v = AckView::new_checked(&ACK_BYTES[..]).unwrap();
        assert_eq!(v.cum_ack(), 0x100);
        assert_eq!(v.ack_delay_us(), 25);
        assert_eq!(v.limits(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(v.n_sack(), 2);
        assert_eq!(v.sack(0), (0x102, 0x105));
        assert_eq!(v.sack(1), (0x110, 0x111));
    }

    #[test]
    fn ack_construct() {
        let mut b = [0xffu8; ACK_LEN];
        let mut v = AckView::new_unchecked(&mut b[..]);
        v.set_cum_ack(0x100);
        v.set_ack_delay_us(25);
        for i in 0..6 {
            v.set_limit(i, i as u32 + 1);
        }
        v.set_n_sack(2);
        v.set_sack(0, (0x102, 0x105));
        v.set_sack(1, (0x110, 0x111));
        v.set_sack(2, (0, 0));
        v.clear_reserved();
        assert_eq!(b, ACK_BYTES);
    }

    #[test]
    fn ack_parse_and_emit() {
        assert_eq!(AckBlock::parse(&ACK_BYTES), Ok(ack_repr()));
        // Emit overwrites everything, stale bytes included.
        let mut b = [0xa5u8; ACK_LEN];
        ack_repr().emit(&mut b);
        assert_eq!(b, ACK_BYTES);
        // Reserved bytes are ignored on receipt.
        let mut r = ACK_BYTES;
        r[33] = 1;
        r[63] = 1;
        assert_eq!(AckBlock::parse(&r), Ok(ack_repr()));
    }

    #[test]
    fn ack_rejects_garbage() {
        assert_eq!(
            AckBlock::parse(&ACK_BYTES[..63]),
            Err(FrameError::Truncated { have: 63, need: 64 })
        );
        let mut b = ACK_BYTES;
        b[ack_field::N_SACK] = 4;
        assert_eq!(AckBlock::parse(&b), Err(FrameError::BadAck));
        // An empty SACK range.
        let mut b = ACK_BYTES;
        b[ack_field::sack_end(1)].copy_from_slice(&0x110u32.to_be_bytes());
        assert_eq!(AckBlock::parse(&b), Err(FrameError::BadAck));
    }

    /// A record carrying a 5-byte TLP: seq 5, class 0, three bytes of padding.
    static RECORD_BYTES: [u8; 16] = [0, 0, 0, 5, 0, 5, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0];

    #[test]
    fn record_deconstruct_and_parse() {
        let v = RecordView::new_checked(&RECORD_BYTES[..]).unwrap();
        assert_eq!(
            (v.seq(), v.tlp_len(), v.class(), v.reserved()),
            (5, 5, 0, 0)
        );
        assert_eq!(v.total_len(), 16);
        assert_eq!(v.tlp(), &[1, 2, 3, 4, 5]);
        assert_eq!(
            RecordHeader::parse(&v, 0),
            Ok(RecordHeader {
                seq: 5,
                class: 0,
                tlp_len: 5
            })
        );
        // Header present but the padded TLP is not.
        assert_eq!(
            RecordView::new_checked(&RECORD_BYTES[..15]).map(|_| ()),
            Err(FrameError::Truncated { have: 15, need: 16 })
        );
        assert!(RecordView::new_checked(&RECORD_BYTES[..7]).is_err());
    }

    #[test]
    fn record_construct_and_emit() {
        let mut b = [0xffu8; 16];
        let mut v = RecordView::new_unchecked(&mut b[..]);
        RecordHeader {
            seq: 5,
            class: 0,
            tlp_len: 5,
        }
        .emit(&mut v);
        v.tlp_mut().copy_from_slice(&[1, 2, 3, 4, 5]);
        v.clear_padding();
        assert_eq!(b, RECORD_BYTES);
        let mut c = [0xffu8; 16];
        assert_eq!(emit_record(&mut c, 5, 0, &[1, 2, 3, 4, 5]), 16);
        assert_eq!(c, RECORD_BYTES);
    }

    #[test]
    fn record_header_rejects_bad_fields() {
        let check = |f: fn(&mut [u8; 16])| {
            let mut b = RECORD_BYTES;
            f(&mut b);
            RecordHeader::parse(&RecordView::new_unchecked(&b[..]), 3)
        };
        let bad = Err(FrameError::BadRecord { index: 3 });
        assert_eq!(check(|b| b[6] = 3), bad);
        assert_eq!(check(|b| b[7] = 1), bad);
        assert_eq!(check(|b| b[4..6].copy_from_slice(&[0, 0])), bad);
        assert_eq!(
            check(|b| b[4..6].copy_from_slice(&(MAX_TLP_LEN as u16 + 1).to_be_bytes())),
            bad
        );
    }

    proptest! {
        #[test]
        fn records_roundtrip(tlps in proptest::collection::vec(
            (any::<u32>(), 0u8..=2, proptest::collection::vec(any::<u8>(), 1..200)), 0..8)) {
            let mut body = vec![0xeeu8; tlps.iter().map(|t| record_len(t.2.len())).sum()];
            let mut off = 0;
            for (seq, class, tlp) in &tlps {
                off += emit_record(&mut body[off..], *seq, *class, tlp);
            }
            prop_assert_eq!(off, body.len());
            let recs: Vec<_> = Records::new(&body, tlps.len() as u8).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(recs.len(), tlps.len());
            for (r, (seq, class, tlp)) in recs.iter().zip(&tlps) {
                prop_assert_eq!(r.seq, *seq);
                prop_assert_eq!(r.class, *class);
                prop_assert_eq!(&body[r.range.clone()], &tlp[..]);
                // Padding is zero.
                prop_assert!(body[r.range.end..r.range.start - RECORD_HDR_LEN + record_len(tlp.len())]
                    .iter().all(|&b| b == 0));
            }
        }

        #[test]
        fn ack_view_setters_match_getters(cum in any::<u32>(), d in any::<u32>(),
                                          l in any::<[u32; 6]>(), n in any::<u8>(),
                                          s in any::<[(u32, u32); 3]>()) {
            let mut b = [0u8; ACK_LEN];
            let mut v = AckView::new_checked(&mut b[..]).unwrap();
            v.set_cum_ack(cum);
            v.set_ack_delay_us(d);
            for (i, &x) in l.iter().enumerate() { v.set_limit(i, x); }
            v.set_n_sack(n);
            for (i, &x) in s.iter().enumerate() { v.set_sack(i, x); }
            prop_assert_eq!((v.cum_ack(), v.ack_delay_us(), v.limits(), v.n_sack()), (cum, d, l, n));
            for (i, &x) in s.iter().enumerate() { prop_assert_eq!(v.sack(i), x); }
            prop_assert!(b[ack_field::RESERVED0].iter().chain(&b[ack_field::RESERVED1]).all(|&x| x == 0));
        }

        #[test]
        fn header_roundtrip(ty in 1u8..=5, fl in 0u8..32, n in any::<u8>(), body in 0u16..2000,
                            sid in any::<u32>(), ep in any::<u32>(), pn in any::<u64>()) {
            let ty = match ty { 1 => FrameType::Init, 2 => FrameType::Resp, 3 => FrameType::Data, 4 => FrameType::Reset, _ => FrameType::Cookie };
            let h = FrameHeader { ty, flags: fl, n_records: n, body_len: body, dst_session: sid, src_epoch: ep, pn };
            let tag = if ty == FrameType::Data { TAG_LEN } else { 0 };
            let mut f = vec![0u8; HEADER_LEN + body as usize + tag];
            h.emit(&mut f);
            prop_assert_eq!(FrameHeader::parse(&f), Ok(h));
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
            let _ = FrameHeader::parse(&data);
            let _ = AckBlock::parse(&data);
            if let Ok(v) = RecordView::new_checked(&data[..]) {
                prop_assert!(v.total_len() <= data.len());
                prop_assert_eq!(v.tlp().len(), usize::from(v.tlp_len()));
                let _ = RecordHeader::parse(&v, 0);
            }
            let mut count = 0;
            for r in Records::new(&data, n) {
                if let Ok(r) = r { prop_assert!(r.range.end <= data.len()); }
                count += 1;
                prop_assert!(count <= 300);
            }
        }
    }
}
