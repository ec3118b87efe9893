//! Interrupts of a function: the MSI-X table and Pending Bit Array (PCIe r5.0 §6.1.4, §7.7.2)
//! and legacy INTx as Assert_INTx/Deassert_INTx messages (§2.2.8.1, §6.1.2).
//!
//! MSI-X messages are posted memory writes on the same outbound queue as the function's DMA
//! writes, so an interrupt never overtakes the data it announces. A vector that fires while it
//! (or the whole function) is masked, or while Bus Master Enable is clear, sets its pending bit
//! and is sent when unmasked. INTx follows the device's level, gated by Interrupt Disable and by
//! MSI-X Enable; a message goes out only on a change of the wire's state.

use std::sync::Arc;

use super::device::Decode;
use super::function::FunctionShared;
use super::wire;

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
    fn fire(&mut self, v: usize, deliverable: bool) -> Option<(u64, u32)> {
        let e = *self.table.get(v)?;
        if deliverable && e[3] & 1 == 0 {
            Some(((u64::from(e[1]) << 32) | u64::from(e[0]), e[2]))
        } else {
            self.set_pending(v, true);
            None
        }
    }

    /// Messages for pending vectors that have become deliverable (their bits cleared).
    fn drain_pending(&mut self, out: &mut Vec<(u64, u32)>) {
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

/// Raises interrupts as one function. Cheap to clone; usable from any thread.
#[derive(Debug, Clone)]
pub struct InterruptHandle {
    pub(crate) f: Arc<FunctionShared>,
}

impl InterruptHandle {
    /// Whether MSI-X is enabled (then INTx is off and vectors are what the driver configured).
    pub fn msix_enabled(&self) -> bool {
        self.f.decode().msix_enabled
    }

    /// Number of MSI-X vectors the function has (0 without MSI-X).
    pub fn msix_vectors(&self) -> u16 {
        self.f.decode().msix.map_or(0, |m| m.vectors)
    }

    /// Signal MSI-X vector `vector`. Returns `false` (and does nothing) when MSI-X is not
    /// enabled or the vector does not exist; a masked vector becomes pending.
    pub fn signal_msix(&self, vector: u16) -> bool {
        let d = self.f.decode();
        if !d.msix_enabled {
            return false;
        }
        let deliverable = !d.msix_masked && d.bus_master;
        let msg = {
            let mut m = self.f.msix.lock().unwrap_or_else(|e| e.into_inner());
            if usize::from(vector) >= m.table.len() {
                return false;
            }
            m.fire(usize::from(vector), deliverable)
        };
        if let Some((addr, data)) = msg {
            self.f.send_msi(addr, data);
        }
        true
    }

    /// Set the function's INTx level (the device's interrupt request).
    pub fn set_intx(&self, level: bool) {
        let mut s = self.f.intx.lock().unwrap_or_else(|e| e.into_inner());
        s.level = level;
        self.f.sync_intx(&mut s, &self.f.decode());
    }

    /// The device's current INTx request (what Status.Interrupt Status shows).
    pub fn intx_level(&self) -> bool {
        self.f.intx.lock().unwrap_or_else(|e| e.into_inner()).level
    }
}

impl FunctionShared {
    /// Bring the INTx wire in line with the level and the gates; send a message on change.
    pub(crate) fn sync_intx(&self, s: &mut IntxState, d: &Decode) {
        let want = s.level && !d.intx_disable && !d.msix_enabled && d.int_pin != 0;
        if want != s.asserted {
            s.asserted = want;
            let mut tlp = Vec::with_capacity(16);
            match wire::emit_intx(&mut tlp, self.bdf(), d.int_pin.saturating_sub(1), want) {
                Ok(()) => {
                    self.send(tlp);
                }
                Err(e) => tracing::warn!(bdf = %self.bdf(), error = %e, "cannot signal INTx"),
            }
        }
    }

    /// Send every pending MSI-X vector that is now deliverable.
    pub(crate) fn flush_msix(&self, d: &Decode) {
        if !d.msix_enabled || d.msix_masked || !d.bus_master {
            return;
        }
        let mut msgs = Vec::new();
        self.msix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain_pending(&mut msgs);
        for (addr, data) in msgs {
            self.send_msi(addr, data);
        }
    }

    fn send_msi(&self, addr: u64, data: u32) {
        let mut tlp = Vec::with_capacity(20);
        match wire::emit_msi(&mut tlp, self.bdf(), addr, data) {
            Ok(()) => {
                self.send(tlp);
            }
            Err(e) => tracing::warn!(bdf = %self.bdf(), error = %e, "cannot send an MSI-X message"),
        }
    }
}
