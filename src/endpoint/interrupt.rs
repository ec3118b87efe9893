//! The handle a device raises interrupts with: MSI-X vectors (PCIe r5.0 §6.1.4, §7.7.2) and
//! legacy INTx as Assert_INTx/Deassert_INTx messages (§2.2.8.1, §6.1.2). The table and PBA
//! state is `msix.rs`'s; sending and gating is the function state's (`function.rs`).
//!
//! MSI-X messages are posted memory writes on the same outbound queue as the function's DMA
//! writes, so an interrupt never overtakes the data it announces. A vector that fires while it
//! (or the whole function) is masked, or while Bus Master Enable is clear, sets its pending bit
//! and is sent when unmasked. INTx follows the device's level, gated by Interrupt Disable and by
//! MSI-X Enable; a message goes out only on a change of the wire's state.

use crate::sync::MutexExt;
use std::sync::Arc;

use super::function::FunctionShared;

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
            let mut m = self.f.msix.lock_or_recover();
            if usize::from(vector) >= m.vectors() {
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
        let mut s = self.f.intx.lock_or_recover();
        s.level = level;
        self.f.sync_intx(&mut s, &self.f.decode());
    }

    /// The device's current INTx request (what Status.Interrupt Status shows).
    pub fn intx_level(&self) -> bool {
        self.f.intx.lock_or_recover().level
    }
}
