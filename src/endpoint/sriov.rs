//! SR-IOV virtual functions behind a physical function (PCIe r5.0 §9: VF Routing IDs from
//! First VF Offset and VF Stride §9.3.3.9-10, VF BARs §9.3.3.14, VF Enable and VF MSE §9.3.3.3).

use std::time::{Duration, Instant};

use super::function::Outbound;
use super::proxied::{find_cfg, ProxiedFunction, VfInfo};
use super::wire::Bdf;

/// What creating a virtual function takes from the endpoint.
pub(crate) struct VfFactory<'a> {
    /// The endpoint's function id counter.
    pub(crate) next_id: &'a mut u64,
    /// The endpoint's outbound queue.
    pub(crate) out: Outbound,
    /// Completion timeout of device DMA.
    pub(crate) dma_timeout: Duration,
    /// The latest time the driver gave the endpoint.
    pub(crate) now: Option<Instant>,
}

/// Bring physical function `pf`'s virtual functions in line with its SR-IOV capability:
/// create them when VF Enable/NumVFs say so, remove them when not, and route their BARs.
pub(crate) fn sync_vfs(functions: &mut Vec<ProxiedFunction>, pf: usize, mk: &mut VfFactory<'_>) {
    let pf_id = functions[pf].id;
    let pf_bdf = functions[pf].bdf();
    let d = functions[pf].decode;
    let want = d.vf_ids(pf_bdf);
    let have: Vec<Bdf> = functions
        .iter()
        .filter(|f| f.vf.is_some_and(|v| v.pf == pf_id))
        .map(ProxiedFunction::bdf)
        .collect();
    if have != want {
        let mut kept = Vec::with_capacity(functions.len());
        for f in functions.drain(..) {
            if f.vf.is_some_and(|v| v.pf == pf_id) {
                let mut f = f;
                f.retire(mk.now);
            } else {
                kept.push(f);
            }
        }
        *functions = kept;
        let pf = functions
            .iter()
            .position(|f| f.id == pf_id)
            .unwrap_or_default();
        for (i, bdf) in want.iter().enumerate() {
            if bdf.bus() != pf_bdf.bus() || find_cfg(functions, *bdf).is_some() {
                tracing::warn!(
                    "VF {} of {pf_bdf} at {bdf} collides or leaves the bus; not created",
                    i + 1
                );
                continue;
            }
            let Some(dev) = functions[pf].device.create_vf(i as u16) else {
                break;
            };
            *mk.next_id += 1;
            let mut f =
                ProxiedFunction::new(*mk.next_id, *bdf, dev, mk.out.clone(), mk.dma_timeout);
            f.vf = Some(VfInfo {
                pf: pf_id,
                bars: [None; 6],
                mse: false,
            });
            functions.push(f);
        }
    }
    // Route each VF's slice of the VF BARs.
    let Some(s) = d.sriov else { return };
    let mut n = 0u64;
    for f in functions.iter_mut() {
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
