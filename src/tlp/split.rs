//! Byte-enable arithmetic and transaction splitting (PCIe Base Specification §2.2.5 byte
//! enables, §2.2.7 the 4 KiB rule, §2.3.1.1 read completions and the Read Completion Boundary,
//! §7.5.3.4 Max_Payload_Size / Max_Read_Request_Size).
//!
//! Everything here is plain arithmetic over integers, allocation-free; the iterators yield
//! descriptions of the TLPs to build, and the caller copies the bytes.

/// A byte range of memory touched by a request: `len` bytes from `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub address: u64,
    /// Number of bytes (0 for a zero-length request).
    pub len: u32,
}

/// The bytes a memory request covers, given its DW-aligned address, Length and byte enables.
///
/// For 1 DW requests the enabled bytes need not be contiguous; the range then spans from the
/// first to the last enabled byte (which is what a completion's Byte Count reports, §2.3.1.1).
/// A 1 DW request with First BE 0000b is a zero-length request (`len == 0`).
pub fn covered_bytes(address: u64, length_dw: u16, first_be: u8, last_be: u8) -> ByteRange {
    let base = address & !3;
    if length_dw <= 1 {
        if first_be & 0xf == 0 {
            return ByteRange {
                address: base,
                len: 0,
            };
        }
        let lo = first_be.trailing_zeros();
        let hi = 8 - (first_be & 0xf).leading_zeros(); // one past the last enabled byte
        return ByteRange {
            address: base + u64::from(lo),
            len: hi - lo,
        };
    }
    let lo = (first_be & 0xf).trailing_zeros();
    let last = last_be & 0xf;
    let hi = if last == 0 {
        0
    } else {
        8 - last.leading_zeros()
    };
    let end = base + (u64::from(length_dw) - 1) * 4 + u64::from(hi);
    let start = base + u64::from(lo);
    ByteRange {
        address: start,
        len: (end - start) as u32,
    }
}

/// The DW-aligned address, Length and First/Last BE that cover exactly `len` bytes from
/// `address` (a request for a contiguous range). `len == 0` gives a zero-length request.
/// Returns `(dw_address, length_dw, first_be, last_be)`. `len` must be at most 4096.
pub fn byte_enables(address: u64, len: u32) -> (u64, u16, u8, u8) {
    let base = address & !3;
    if len == 0 {
        return (base, 1, 0, 0);
    }
    let off = (address & 3) as u32;
    let end = off + len; // relative to base, exclusive
    let length_dw = end.div_ceil(4);
    let first_mask = (0xfu8 << off) & 0xf;
    let tail = end - (length_dw - 1) * 4; // bytes used in the last DW, 1..=4
    let last_mask = (0xfu8 >> (4 - tail)) & 0xf;
    if length_dw == 1 {
        (base, 1, first_mask & last_mask, 0)
    } else {
        (base, length_dw as u16, first_mask, last_mask)
    }
}

/// One piece of a split request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestChunk {
    /// Bytes of the original range this piece covers.
    pub bytes: ByteRange,
    /// Offset of `bytes.address` from the start of the original range.
    pub offset: u32,
    /// DW-aligned header address.
    pub dw_address: u64,
    /// Length in DW.
    pub length_dw: u16,
    /// First DW BE.
    pub first_be: u8,
    /// Last DW BE.
    pub last_be: u8,
}

/// Why a size parameter is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// MPS / MRRS must be a power of two in 128..=4096 (§7.5.3.4).
    #[error("size {0} is not a power of two in 128..=4096")]
    MaxSize(u32),
    /// RCB is 64 or 128 bytes (§2.3.1.1).
    #[error("Read Completion Boundary {0} is not 64 or 128")]
    Rcb(u32),
    /// A single completion carries at most 4096 bytes in total.
    #[error("read of {0} bytes exceeds 4096")]
    TooLong(u32),
}

/// Splits a memory read or write of `len` bytes at `address` into requests of at most
/// `max` bytes of DW-aligned payload (Max_Read_Request_Size for reads, Max_Payload_Size for
/// writes), cutting at `max`-aligned addresses so that no piece crosses a 4 KiB boundary.
#[derive(Debug, Clone)]
pub struct SplitRequest {
    start: u64,
    next: u64,
    end: u64,
    max: u64,
    zero_len_pending: bool,
}

impl SplitRequest {
    /// Plan the split. `max` must be a power of two in 128..=4096.
    pub fn new(address: u64, len: u64, max: u32) -> Result<SplitRequest, SizeError> {
        if !(128..=4096).contains(&max) || !max.is_power_of_two() {
            return Err(SizeError::MaxSize(max));
        }
        Ok(SplitRequest {
            start: address,
            next: address,
            end: address.saturating_add(len),
            max: u64::from(max),
            zero_len_pending: len == 0,
        })
    }
}

impl Iterator for SplitRequest {
    type Item = RequestChunk;
    fn next(&mut self) -> Option<RequestChunk> {
        if self.zero_len_pending {
            self.zero_len_pending = false;
            return Some(RequestChunk {
                bytes: ByteRange {
                    address: self.start,
                    len: 0,
                },
                offset: 0,
                dw_address: self.start & !3,
                length_dw: 1,
                first_be: 0,
                last_be: 0,
            });
        }
        if self.next >= self.end {
            return None;
        }
        let s = self.next;
        let limit = ((s & !3) + self.max) & !(self.max - 1);
        let e = self.end.min(limit);
        self.next = e;
        let len = (e - s) as u32;
        let (dw_address, length_dw, first_be, last_be) = byte_enables(s, len);
        Some(RequestChunk {
            bytes: ByteRange { address: s, len },
            offset: (s - self.start) as u32,
            dw_address,
            length_dw,
            first_be,
            last_be,
        })
    }
}

/// One completion of a split read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletionChunk {
    /// Byte Count field: bytes remaining including this completion (1..=4096).
    pub byte_count: u16,
    /// Lower Address field: bits 6:0 of the first byte this completion returns.
    pub lower_address: u8,
    /// Length in DW of this completion's payload.
    pub length_dw: u16,
    /// Offset into the read data (relative to the first requested byte) of the first byte
    /// returned; the payload starts `lower_address & 3` bytes earlier, at a DW boundary.
    pub offset: u32,
    /// Bytes of requested data this completion returns.
    pub len: u32,
}

/// Splits the completion of a memory read of `len` bytes at `address` into CplDs of at most
/// Max_Payload_Size, where every completion but the last ends on a Read Completion Boundary
/// (§2.3.1.1), with the Byte Count and Lower Address each must carry.
#[derive(Debug, Clone)]
pub struct SplitCompletion {
    start: u64,
    next: u64,
    end: u64,
    rcb: u64,
    mps: u64,
    zero_len_pending: bool,
}

impl SplitCompletion {
    /// Plan the completions. `rcb` is 64 or 128, `mps` a power of two in 128..=4096, `len`
    /// at most 4096 (one request).
    pub fn new(address: u64, len: u32, rcb: u32, mps: u32) -> Result<SplitCompletion, SizeError> {
        if rcb != 64 && rcb != 128 {
            return Err(SizeError::Rcb(rcb));
        }
        if !(128..=4096).contains(&mps) || !mps.is_power_of_two() {
            return Err(SizeError::MaxSize(mps));
        }
        if len > 4096 {
            return Err(SizeError::TooLong(len));
        }
        Ok(SplitCompletion {
            start: address,
            next: address,
            end: address + u64::from(len),
            rcb: u64::from(rcb),
            mps: u64::from(mps),
            zero_len_pending: len == 0,
        })
    }

    /// Plan the completions for a request as it arrived (DW-aligned address, Length, BEs).
    pub fn for_request(
        address: u64,
        length_dw: u16,
        first_be: u8,
        last_be: u8,
        rcb: u32,
        mps: u32,
    ) -> Result<SplitCompletion, SizeError> {
        let r = covered_bytes(address, length_dw, first_be, last_be);
        Self::new(r.address, r.len, rcb, mps)
    }
}

impl Iterator for SplitCompletion {
    type Item = CompletionChunk;
    fn next(&mut self) -> Option<CompletionChunk> {
        if self.zero_len_pending {
            // §2.3.1.1: a zero-length read completes with 1 DW and Byte Count 1.
            self.zero_len_pending = false;
            return Some(CompletionChunk {
                byte_count: 1,
                lower_address: (self.start & 0x7f) as u8,
                length_dw: 1,
                offset: 0,
                len: 0,
            });
        }
        if self.next >= self.end {
            return None;
        }
        let s = self.next;
        let dw_start = s & !3;
        let e = if self.end <= dw_start + self.mps {
            self.end
        } else {
            (dw_start + self.mps) & !(self.rcb - 1)
        };
        self.next = e;
        let length_dw = ((e + 3) & !3) - dw_start;
        Some(CompletionChunk {
            byte_count: (self.end - s) as u16,
            lower_address: (s & 0x7f) as u8,
            length_dw: (length_dw / 4) as u16,
            offset: (s - self.start) as u32,
            len: (e - s) as u32,
        })
    }
}
