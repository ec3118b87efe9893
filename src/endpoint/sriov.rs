//! SR-IOV virtual functions behind a physical function (PCIe r5.0 §9: VF Routing IDs from
//! First VF Offset and VF Stride §9.3.3.9-10, VF BARs §9.3.3.14, VF Enable and VF MSE
//! §9.3.3.3, NumVFs §9.3.3.7), and what the appliance does as the PF's driver: enable VFs
//! itself, present one standalone to the host it is assigned to (`vf_view.rs`), withdraw it.
//!
//! VFs exist while the PF's VF Enable is set: NumVFs of them, created when VF Enable goes
//! from clear to set and removed when it is cleared (NumVFs cannot change in between, the
//! capability ignores such writes) or the PF is reset. A VF's Routing ID follows the PF's
//! (PF + First VF Offset + index × VF Stride, on the PF's bus); a VF whose Routing ID leaves
//! the bus or is another function's is not created.

use std::time::{Duration, Instant};

use super::device::ResetKind;
use super::function::Outbound;
use super::proxied::{find_cfg, ProxiedFunction, VfInfo};
use super::vf_view::{find_sriov, pf_ids, VfError, VfView};
use super::wire::Bdf;
use crate::pci::spec::sriov;

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
/// create them when VF Enable/NumVFs say so, remove them when not, and route them (Routing
/// IDs on the PF's bus, each VF's slice of the VF BARs, VF MSE).
pub(crate) fn sync_vfs(functions: &mut Vec<ProxiedFunction>, pf: usize, mk: &mut VfFactory<'_>) {
    let pf_id = functions[pf].id;
    let pf_bdf = functions[pf].bdf();
    let d = functions[pf].decode;
    let want = d.vf_ids(pf_bdf);
    let n = want.len() as u16;
    if functions[pf].vf_count != n {
        let mut kept = Vec::with_capacity(functions.len());
        for mut f in functions.drain(..) {
            if f.is_vf_of(pf_id) {
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
        functions[pf].vf_count = n;
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
                index: i as u16,
                bars: [None; 6],
                mse: false,
                view: None,
            });
            functions.push(f);
        }
    }
    let Some(s) = d.sriov else { return };
    for f in functions.iter_mut() {
        let Some(vf) = f.vf.as_mut() else { continue };
        if vf.pf != pf_id {
            continue;
        }
        let i = u64::from(vf.index);
        for (j, b) in s.vf_bars.iter().enumerate() {
            vf.bars[j] = b.map(|(spec, base)| (spec, base.wrapping_add(i * spec.size)));
        }
        vf.mse = s.vf_mse;
        if let Some(bdf) = want.get(usize::from(vf.index)) {
            f.shared.set_bdf(*bdf);
        }
        f.refresh();
    }
}

/// The physical function at `pf` (device and function number).
fn find_pf(functions: &[ProxiedFunction], pf: Bdf) -> Result<usize, VfError> {
    find_cfg(functions, pf)
        .filter(|&i| functions[i].vf.is_none())
        .ok_or(VfError::NoSuchFunction(pf))
}

/// Routing IDs of `pf`'s virtual functions, by VF index.
pub(crate) fn virtual_functions(functions: &[ProxiedFunction], pf: Bdf) -> Vec<Bdf> {
    let Ok(i) = find_pf(functions, pf) else {
        return Vec::new();
    };
    let pf_id = functions[i].id;
    let mut vfs: Vec<(u16, Bdf)> = functions
        .iter()
        .filter_map(|f| {
            f.vf.as_ref()
                .filter(|v| v.pf == pf_id)
                .map(|v| (v.index, f.bdf()))
        })
        .collect();
    vfs.sort_unstable();
    vfs.into_iter().map(|(_, b)| b).collect()
}

/// Enable `n` virtual functions of `pf` (0: disable them) the way a PF driver does: VF
/// Enable cleared first, then NumVFs, then VF Enable and VF MSE set. When the PF already has
/// exactly `n` enabled, only VF MSE is set: its VFs and their views stay.
pub(crate) fn enable_vfs(
    functions: &mut Vec<ProxiedFunction>,
    pf: Bdf,
    n: u16,
    mk: &mut VfFactory<'_>,
) -> Result<Vec<Bdf>, VfError> {
    let i = find_pf(functions, pf)?;
    let f = &mut functions[i];
    let at = find_sriov(f.device.as_mut()).ok_or(VfError::NotSriov(pf))?;
    let reg = |off: usize| at + off as u16;
    let total = (f.device.config_read(reg(sriov::TOTAL_VFS & !3)) >> 16) as u16;
    if n > total {
        return Err(VfError::TooManyVfs {
            pf,
            requested: n,
            total,
        });
    }
    let ctrl = f.device.config_read(reg(sriov::CONTROL)) as u16;
    let num = f.device.config_read(reg(sriov::NUM_VFS)) as u16;
    let on = sriov::CTRL_VF_ENABLE | sriov::CTRL_VF_MSE;
    let write = |f: &mut ProxiedFunction, off: usize, v: u16| {
        f.device.config_write(reg(off), u32::from(v), 0x3);
    };
    if ctrl & sriov::CTRL_VF_ENABLE != 0 && num == n && n > 0 {
        // The VFs are there: only make sure their memory decodes.
        write(f, sriov::CONTROL, ctrl | on);
    } else {
        write(f, sriov::CONTROL, ctrl & !on);
        if n > 0 {
            write(f, sriov::NUM_VFS, n);
            write(f, sriov::CONTROL, ctrl | on);
        }
    }
    f.refresh();
    sync_vfs(functions, i, mk);
    Ok(virtual_functions(functions, pf))
}

/// Present VF `index` of `pf` standalone (see `vf_view.rs`), after a Function Level Reset
/// so that it starts in its power-on state. A VF already presented gets a fresh view.
/// Returns its Routing ID, which its completions, DMA and interrupts carry.
pub(crate) fn attach_view(
    functions: &mut [ProxiedFunction],
    pf: Bdf,
    index: u16,
    now: Option<Instant>,
) -> Result<Bdf, VfError> {
    let p = find_pf(functions, pf)?;
    let pf_id = functions[p].id;
    let s = functions[p].decode.sriov.ok_or(VfError::NotSriov(pf))?;
    let ids = pf_ids(functions[p].device.as_mut()).ok_or(VfError::NotSriov(pf))?;
    let v = functions
        .iter()
        .position(|f| {
            f.vf.as_ref()
                .is_some_and(|v| v.pf == pf_id && v.index == index)
        })
        .ok_or(VfError::NoSuchVf { pf, index })?;
    let f = &mut functions[v];
    let view = VfView::new(
        pf,
        ids,
        f.device.as_mut(),
        s.vf_bars.map(|b| b.map(|b| b.0)),
    )?;
    if let Some(vf) = f.vf.as_mut() {
        vf.view = Some(view);
    }
    f.reset(ResetKind::FunctionLevel, now);
    Ok(f.bdf())
}

/// Withdraw the view of the VF at `vf`: Function Level Reset, then the VF is routed by its
/// slice of the PF's VF BARs again.
pub(crate) fn detach_view(
    functions: &mut [ProxiedFunction],
    vf: Bdf,
    now: Option<Instant>,
) -> Result<(), VfError> {
    let i = find_cfg(functions, vf)
        .filter(|&i| functions[i].vf.as_ref().is_some_and(|v| v.view.is_some()))
        .ok_or(VfError::NotAView(vf))?;
    let f = &mut functions[i];
    f.reset(ResetKind::FunctionLevel, now);
    if let Some(v) = f.vf.as_mut() {
        v.view = None;
    }
    f.refresh();
    Ok(())
}
