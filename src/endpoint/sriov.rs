//! SR-IOV virtual functions behind a physical function (PCIe r5.0 §9: VF Routing IDs from
//! First VF Offset and VF Stride §9.3.3.9-10, VF BARs §9.3.3.14, VF Enable and VF MSE §9.3.3.3).

use super::function::{Function, VfInfo};
use super::proxy::Endpoint;
use super::wire::Bdf;

impl Endpoint {
    /// Bring a physical function's virtual functions in line with its SR-IOV capability:
    /// create them when VF Enable/NumVFs say so, remove them when not, and route their BARs.
    pub(crate) fn sync_vfs(&mut self, pf: usize) {
        let pf_id = self.functions[pf].id;
        let pf_bdf = self.functions[pf].bdf();
        let d = self.functions[pf].decode;
        let want = d.vf_ids(pf_bdf);
        let have: Vec<Bdf> = self
            .functions
            .iter()
            .filter(|f| f.vf.is_some_and(|v| v.pf == pf_id))
            .map(Function::bdf)
            .collect();
        if have != want {
            let mut kept = Vec::with_capacity(self.functions.len());
            for f in self.functions.drain(..) {
                if f.vf.is_some_and(|v| v.pf == pf_id) {
                    f.retire();
                } else {
                    kept.push(f);
                }
            }
            self.functions = kept;
            let pf = self
                .functions
                .iter()
                .position(|f| f.id == pf_id)
                .unwrap_or_default();
            for (i, bdf) in want.iter().enumerate() {
                if bdf.bus() != pf_bdf.bus() || self.find_cfg(*bdf).is_some() {
                    tracing::warn!(
                        "VF {} of {pf_bdf} at {bdf} collides or leaves the bus; not created",
                        i + 1
                    );
                    continue;
                }
                let Some(dev) = self.functions[pf].device.create_vf(i as u16) else {
                    break;
                };
                self.next_id += 1;
                let mut f = Function::new(
                    self.next_id,
                    *bdf,
                    dev,
                    self.outbound(),
                    self.cfg.dma_timeout,
                );
                f.vf = Some(VfInfo {
                    pf: pf_id,
                    bars: [None; 6],
                    mse: false,
                });
                self.functions.push(f);
            }
        }
        // Route each VF's slice of the VF BARs.
        let Some(s) = d.sriov else { return };
        let mut n = 0u64;
        for f in self.functions.iter_mut() {
            let Some(vf) = f.vf.as_mut() else { continue };
            if vf.pf != pf_id {
                continue;
            }
            for (j, b) in s.vf_bars.iter().enumerate() {
                vf.bars[j] = b.map(|(spec, base)| (spec, base.wrapping_add(n * spec.size)));
            }
            vf.mse = s.vf_mse;
            n += 1;
            f.refresh();
        }
    }
}
