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
    let end = base
        .saturating_add((u64::from(length_dw) - 1) * 4)
        .saturating_add(u64::from(hi));
    let start = base.saturating_add(u64::from(lo));
    ByteRange {
        address: start,
        // Byte enables the spec forbids (e.g. First BE 0 in a multi-DW request) give an empty
        // or truncated range rather than a panic; `Tlp::parse` rejects such requests anyway.
        len: end.saturating_sub(start) as u32,
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
        let e = match (s & !3).checked_add(self.max) {
            Some(limit) => self.end.min(limit & !(self.max - 1)),
            None => self.end,
        };
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
            end: address.saturating_add(u64::from(len)),
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
        let e = match dw_start.checked_add(self.mps) {
            Some(limit) if self.end > limit => limit & !(self.rcb - 1),
            _ => self.end,
        };
        self.next = e;
        let length_dw = (e.saturating_add(3) & !3) - dw_start;
        Some(CompletionChunk {
            byte_count: (self.end - s) as u16,
            lower_address: (s & 0x7f) as u8,
            length_dw: (length_dw / 4) as u16,
            offset: (s - self.start) as u32,
            len: (e - s) as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_enable_arithmetic() {
        assert_eq!(byte_enables(0x1001, 6), (0x1000, 2, 0b1110, 0b0111));
        assert_eq!(byte_enables(0x1003, 1), (0x1000, 1, 0b1000, 0));
        assert_eq!(byte_enables(0x1000, 4096), (0x1000, 1024, 0xf, 0xf));
        assert_eq!(byte_enables(0x1002, 0), (0x1000, 1, 0, 0));
        assert_eq!(
            covered_bytes(0x1000, 2, 0b1110, 0b0111),
            ByteRange {
                address: 0x1001,
                len: 6
            }
        );
        // 1 DW with non-contiguous enables: from the first to the last enabled byte.
        assert_eq!(
            covered_bytes(0x2000, 1, 0b1001, 0),
            ByteRange {
                address: 0x2000,
                len: 4
            }
        );
    }

    #[test]
    fn read_completion_split_at_rcb_and_mps() {
        // 256 bytes at 0x1010, RCB 64, MPS 128: the first CplD stops at the RCB boundary
        // 0x1080, the next carries a full 128 bytes, the last the remaining 16.
        let c: Vec<_> = SplitCompletion::new(0x1010, 256, 64, 128)
            .unwrap()
            .collect();
        let expect = [
            (256, 0x10, 28, 0, 112),
            (144, 0x00, 32, 112, 128),
            (16, 0x00, 4, 240, 16),
        ];
        assert_eq!(c.len(), expect.len());
        for (got, (bc, la, dw, off, len)) in c.iter().zip(expect) {
            assert_eq!(
                (
                    got.byte_count,
                    got.lower_address,
                    got.length_dw,
                    got.offset,
                    got.len
                ),
                (bc, la, dw, off, len)
            );
        }
        // A 1-byte read at 0x1003: Lower Address 3, Byte Count 1, 1 DW.
        let c: Vec<_> = SplitCompletion::for_request(0x1000, 1, 0b1000, 0, 64, 256)
            .unwrap()
            .collect();
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].byte_count, c[0].lower_address, c[0].length_dw),
            (1, 3, 1)
        );
        // Zero-length read: one DW, Byte Count 1.
        let c: Vec<_> = SplitCompletion::for_request(0x1000, 1, 0, 0, 64, 256)
            .unwrap()
            .collect();
        assert_eq!((c.len(), c[0].byte_count, c[0].length_dw), (1, 1, 1));
        assert_eq!(
            SplitCompletion::new(0, 8, 32, 128).unwrap_err(),
            SizeError::Rcb(32)
        );
        assert_eq!(
            SplitCompletion::new(0, 8, 64, 100).unwrap_err(),
            SizeError::MaxSize(100)
        );
        assert_eq!(
            SplitCompletion::new(0, 5000, 64, 128).unwrap_err(),
            SizeError::TooLong(5000)
        );
    }

    #[test]
    fn request_split_at_max_and_4k() {
        // 64 bytes straddling a 4 KiB boundary: two requests.
        let c: Vec<_> = SplitRequest::new(0x0ff0, 0x40, 512).unwrap().collect();
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].dw_address, c[0].length_dw, c[0].offset),
            (0x0ff0, 4, 0)
        );
        assert_eq!(
            (c[1].dw_address, c[1].length_dw, c[1].offset),
            (0x1000, 12, 16)
        );
        // 1000 bytes from an unaligned address with MRRS 256: pieces end on 256-byte boundaries.
        let c: Vec<_> = SplitRequest::new(0x2003, 1000, 256).unwrap().collect();
        assert_eq!(c.len(), 4);
        assert_eq!(
            (c[0].first_be, c[0].length_dw, c[0].bytes.len),
            (0b1000, 64, 253)
        );
        assert_eq!(c[1].bytes.address, 0x2100);
        let total: u32 = c.iter().map(|p| p.bytes.len).sum();
        assert_eq!(total, 1000);
        assert_eq!(
            SplitRequest::new(0, 1, 64).unwrap_err(),
            SizeError::MaxSize(64)
        );
    }
}
