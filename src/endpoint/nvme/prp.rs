//! Physical Region Page entries and lists (NVMe 1.4c §4.3): turning PRP1/PRP2 into the list of
//! host memory segments a command's data occupies.
//!
//! PRP1 may carry an offset into its page (DW aligned); if the data needs more than the rest of
//! that page and one more page, PRP2 points to a PRP list whose entries are page aligned, and
//! whose last entry points to the next list page when more entries remain.
//!
//! Physically contiguous pages are merged into one segment, so the controller moves them with
//! one DMA (the requester splits it at MPS/MRRS itself); each list page is read with one DMA.

use crate::pci::class::nvme::Status;

/// Reads host memory (the controller's DMA), so PRP lists can be fetched.
pub trait HostMemory {
    /// Read `buf.len()` bytes at `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Status>;
}

/// Segments `(address, length)` of `len` bytes described by `prp1`/`prp2` with the given
/// memory page size, physically contiguous pages merged. `out` is cleared first and reused to
/// avoid allocation.
pub fn segments(
    mem: &dyn HostMemory,
    prp1: u64,
    prp2: u64,
    len: usize,
    page: usize,
    out: &mut Vec<(u64, usize)>,
) -> Result<(), Status> {
    out.clear();
    if len == 0 {
        return Ok(());
    }
    if prp1 & 3 != 0 {
        return Err(Status::PRP_OFFSET_INVALID);
    }
    let page64 = page as u64;
    let first = (page - (prp1 % page64) as usize).min(len);
    out.push((prp1, first));
    let mut left = len - first;
    if left == 0 {
        return Ok(());
    }
    if left <= page {
        if prp2 % page64 != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        push(out, prp2, left);
        return Ok(());
    }
    // PRP2 is a list pointer (it may have a DW-aligned offset into its page).
    if prp2 & 7 != 0 {
        return Err(Status::PRP_OFFSET_INVALID);
    }
    let mut list = prp2;
    let mut entries = [0u8; 512 * 8];
    loop {
        let slots = (page - (list % page64) as usize) / 8;
        let pages_left = left.div_ceil(page);
        // Whether the whole remainder fits in this list page, or its last slot chains on.
        let (n_data, chained) = if pages_left <= slots {
            (pages_left, false)
        } else {
            (slots - 1, true)
        };
        let n_read = n_data + usize::from(chained);
        let mut done = 0;
        while done < n_read {
            let n = (n_read - done).min(entries.len() / 8);
            let bytes = &mut entries[..n * 8];
            mem.read(list + (done as u64) * 8, bytes)?;
            for k in 0..n {
                let e = u64::from_le_bytes(bytes[k * 8..k * 8 + 8].try_into().unwrap_or([0; 8]));
                let idx = done + k;
                if idx < n_data {
                    if e % page64 != 0 {
                        return Err(Status::PRP_OFFSET_INVALID);
                    }
                    let l = left.min(page);
                    push(out, e, l);
                    left -= l;
                } else {
                    if e & 7 != 0 {
                        return Err(Status::PRP_OFFSET_INVALID);
                    }
                    list = e;
                }
            }
            done += n;
        }
        if !chained || left == 0 {
            return Ok(());
        }
    }
}

/// Append a segment, extending the previous one when it ends exactly where this one starts.
fn push(out: &mut Vec<(u64, usize)>, addr: u64, len: usize) {
    if let Some(last) = out.last_mut() {
        if last.0.checked_add(last.1 as u64) == Some(addr) {
            last.1 += len;
            return;
        }
    }
    out.push((addr, len));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::HashMap;

    /// Host memory holding PRP entries; counts the DMA reads made of it.
    struct Mem(HashMap<u64, u64>, Cell<usize>);
    impl Mem {
        fn new(map: HashMap<u64, u64>) -> Self {
            Mem(map, Cell::new(0))
        }
    }
    impl HostMemory for Mem {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Status> {
            self.1.set(self.1.get() + 1);
            for (i, c) in buf.chunks_mut(8).enumerate() {
                let v = self.0.get(&(addr + i as u64 * 8)).copied().unwrap_or(0);
                c.copy_from_slice(&v.to_le_bytes()[..c.len()]);
            }
            Ok(())
        }
    }

    #[test]
    fn one_and_two_pages() {
        let m = Mem::new(HashMap::new());
        let mut v = Vec::new();
        segments(&m, 0x10_0200, 0, 512, 4096, &mut v).unwrap();
        assert_eq!(v, vec![(0x10_0200, 512)]);
        segments(&m, 0x10_0e00, 0x20_0000, 4096, 4096, &mut v).unwrap();
        assert_eq!(v, vec![(0x10_0e00, 512), (0x20_0000, 3584)]);
        assert_eq!(
            segments(&m, 0x10_0e00, 0x20_0010, 4096, 4096, &mut v),
            Err(Status::PRP_OFFSET_INVALID)
        );
    }

    #[test]
    fn chained_list() {
        // Page 512 bytes => 64 slots per list page. 70 pages of data: 63 in the first list page,
        // its last slot chains to a second list page holding the other 7.
        let page = 512usize;
        let mut map = HashMap::new();
        let list1 = 0x9000u64;
        let list2 = 0xa000u64;
        for i in 0..63u64 {
            map.insert(list1 + i * 8, 0x10_0000 + i * 0x200);
        }
        map.insert(list1 + 63 * 8, list2);
        for i in 0..6u64 {
            map.insert(list2 + i * 8, 0x20_0000 + i * 0x200);
        }
        let m = Mem::new(map);
        let mut v = Vec::new();
        segments(&m, 0x1_0000, list1, 70 * page, page, &mut v).unwrap();
        // Each list page's run of contiguous pages is one segment; each list page one read.
        let expect = vec![
            (0x1_0000u64, page),
            (0x10_0000, 63 * page),
            (0x20_0000, 6 * page),
        ];
        assert_eq!(v, expect);
        assert_eq!(m.1.get(), 2, "one DMA read per list page");
    }

    #[test]
    fn partly_contiguous_pages_merge() {
        // PRP1 mid-page, then list pages: [A+1p, A+2p] continue PRP1's page, [B, B+1p] a second
        // run, C alone, and the last page D (partial) alone.
        let page = 4096usize;
        let a = 0x40_0000u64;
        let (b, c, d) = (0x80_0000u64, 0x50_0000u64, 0x60_0000u64);
        let entries = [a + 0x1000, a + 0x2000, b, b + 0x1000, c, d];
        let list = 0x9000u64;
        let map = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (list + i as u64 * 8, *e))
            .collect();
        let m = Mem::new(map);
        let mut v = Vec::new();
        let len = 0xc00 + 5 * page + 100;
        segments(&m, a + 0x400, list, len, page, &mut v).unwrap();
        assert_eq!(
            v,
            vec![
                (a + 0x400, 0xc00 + 2 * page),
                (b, 2 * page),
                (c, page),
                (d, 100)
            ]
        );
        assert_eq!(v.iter().map(|s| s.1).sum::<usize>(), len);
        assert_eq!(m.1.get(), 1, "the list page is read with one DMA");
        // Two pages without a list: contiguous PRP2 merges too.
        segments(&m, a + 0xe00, a + 0x1000, 4096, page, &mut v).unwrap();
        assert_eq!(v, vec![(a + 0xe00, 4096)]);
    }
}
