//! MSI-X table and Pending Bit Array contents of one function (PCIe r5.0 §6.1.4, §7.7.2) and
//! the INTx wire state (§6.1.2): plain state, no I/O. The function's shared state
//! (`function.rs`) holds them; it sends the messages they produce.

const ENTRY: usize = 16;

/// MSI-X table and PBA contents.
#[derive(Debug)]
pub(crate) struct MsixState {
    /// Per vector: address low, address high, data, vector control.
    table: Vec<[u32; 4]>,
    pba: Vec<u64>,
}

impl MsixState {
    pub(crate) fn new(vectors: u16) -> Self {
        let n = usize::from(vectors);
        MsixState {
            table: vec![[0, 0, 0, 1]; n],
            pba: vec![0; n.div_ceil(64)],
        }
    }

    /// Number of vectors.
    pub(crate) fn vectors(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn reset(&mut self) {
        for e in &mut self.table {
            *e = [0, 0, 0, 1];
        }
        self.pba.iter_mut().for_each(|p| *p = 0);
    }

    /// Read from the table (`pba == false`) or PBA at byte offset `off`.
    pub(crate) fn read(&self, pba: bool, off: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = off as usize + i;
            *b = if pba {
                self.pba.get(o / 8).map_or(0, |q| q.to_le_bytes()[o % 8])
            } else {
                self.table
                    .get(o / ENTRY)
                    .map_or(0, |e| e[(o % ENTRY) / 4].to_le_bytes()[o % 4])
            };
        }
    }

    /// Write to the table (the PBA is read-only). Returns true when a vector control changed.
    pub(crate) fn write(&mut self, off: u64, data: &[u8]) -> bool {
        let mut ctl_changed = false;
        for (i, b) in data.iter().enumerate() {
            let o = off as usize + i;
            let Some(e) = self.table.get_mut(o / ENTRY) else {
                continue;
            };
            let dw = (o % ENTRY) / 4;
            let mut bytes = e[dw].to_le_bytes();
            bytes[o % 4] = *b;
            let mut v = u32::from_le_bytes(bytes);
            if dw == 0 {
                // Message Address bits 1:0 keep the message DW-aligned; the spec lets them
                // be read-only zero (PCIe Base Spec §7.7.2.2).
                v &= !3;
            }
            if dw == 3 {
                v &= 1; // only the Mask bit is writable
                ctl_changed = true;
            }
            e[dw] = v;
        }
        ctl_changed
    }

    fn pending(&self, v: usize) -> bool {
        self.pba[v / 64] & (1 << (v % 64)) != 0
    }

    fn set_pending(&mut self, v: usize, on: bool) {
        if on {
            self.pba[v / 64] |= 1 << (v % 64);
        } else {
            self.pba[v / 64] &= !(1 << (v % 64));
        }
    }

    /// Fire vector `v`: returns the message (address, data) to send, or marks it pending.
    pub(crate) fn fire(&mut self, v: usize, deliverable: bool) -> Option<(u64, u32)> {
        let e = *self.table.get(v)?;
        if deliverable && e[3] & 1 == 0 {
            Some(((u64::from(e[1]) << 32) | u64::from(e[0]), e[2]))
        } else {
            self.set_pending(v, true);
            None
        }
    }

    /// Messages for pending vectors that have become deliverable (their bits cleared).
    pub(crate) fn drain_pending(&mut self, out: &mut Vec<(u64, u32)>) {
        for v in 0..self.table.len() {
            if self.pending(v) && self.table[v][3] & 1 == 0 {
                self.set_pending(v, false);
                let e = self.table[v];
                out.push(((u64::from(e[1]) << 32) | u64::from(e[0]), e[2]));
            }
        }
    }
}

/// INTx wire state.
#[derive(Debug, Default)]
pub(crate) struct IntxState {
    /// What the device asks for.
    pub(crate) level: bool,
    /// What the host has been told.
    pub(crate) asserted: bool,
}
