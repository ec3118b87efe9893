//! Physical Region Page entries and lists (NVMe 1.4c §4.3): turning PRP1/PRP2 into the list of
//! host memory segments a command's data occupies.
//!
//! PRP1 may carry an offset into its page (DW aligned); if the data needs more than the rest of
//! that page and one more page, PRP2 points to a PRP list whose entries are page aligned, and
//! whose last entry points to the next list page when more entries remain.

use super::spec::Status;

/// Reads host memory (the controller's DMA), so PRP lists can be fetched.
pub trait HostMemory {
    /// Read `buf.len()` bytes at `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Status>;
}

/// Segments `(address, length)` of `len` bytes described by `prp1`/`prp2` with the given
/// memory page size. `out` is cleared first and reused to avoid allocation.
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
        out.push((prp2, left));
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
                    out.push((e, l));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Mem(HashMap<u64, u64>);
    impl HostMemory for Mem {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Status> {
            for (i, c) in buf.chunks_mut(8).enumerate() {
                let v = self.0.get(&(addr + i as u64 * 8)).copied().unwrap_or(0);
                c.copy_from_slice(&v.to_le_bytes()[..c.len()]);
            }
            Ok(())
        }
    }

    #[test]
    fn one_and_two_pages() {
        let m = Mem(HashMap::new());
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
        let mut expect = vec![(0x1_0000u64, page)];
        for i in 0..63u64 {
            map.insert(list1 + i * 8, 0x10_0000 + i * 0x200);
            expect.push((0x10_0000 + i * 0x200, page));
        }
        map.insert(list1 + 63 * 8, list2);
        for i in 0..6u64 {
            map.insert(list2 + i * 8, 0x20_0000 + i * 0x200);
            expect.push((0x20_0000 + i * 0x200, page));
        }
        let m = Mem(map);
        let mut v = Vec::new();
        segments(&m, 0x1_0000, list1, 70 * page, page, &mut v).unwrap();
        assert_eq!(v, expect);
        assert_eq!(v.iter().map(|s| s.1).sum::<usize>(), 70 * page);
    }
}
