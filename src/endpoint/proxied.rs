//! A function as the proxy holds it: the device model, the decode state the proxy routes on,
//! the state shared with the function's handles, its DMA requester, and what makes it a
//! virtual function (PCIe r5.0 §6.6.2 Function Level Reset, §9 SR-IOV), including the view
//! that presents a VF standalone (`vf_view.rs`). Only the TLP thread touches a [`ProxiedFunction`].

use crate::sync::MutexExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::decode::{BarSpec, Decode};
use super::device::{Device, DeviceContext, ResetKind};
use super::dma::DmaHandle;
use super::function::{FunctionShared, Outbound};
use super::interrupt::InterruptHandle;
use super::requester::DmaRequester;
use super::vf_view::VfView;
use super::wire::Bdf;
use crate::tlp::requester::RequestError;

/// What makes a function a virtual function: its PF and the PF-provided decode.
#[derive(Debug)]
pub(crate) struct VfInfo {
    /// The PF's function id.
    pub(crate) pf: u64,
    /// 0-based VF index (VF index + 1 of the SR-IOV specification).
    pub(crate) index: u16,
    /// VF BARs (this VF's slice of the PF's VF BARs).
    pub(crate) bars: [Option<(BarSpec, u64)>; 6],
    /// VF Memory Space Enable of the PF.
    pub(crate) mse: bool,
    /// Presented standalone: the view's header routes it instead of the PF's VF BARs.
    pub(crate) view: Option<VfView>,
}

/// A function as the proxy holds it.
pub(crate) struct ProxiedFunction {
    /// Unique among the endpoint's functions, stable while the function exists.
    pub(crate) id: u64,
    pub(crate) device: Box<dyn Device>,
    pub(crate) decode: Decode,
    pub(crate) shared: Arc<FunctionShared>,
    pub(crate) dma: DmaRequester,
    pub(crate) vf: Option<VfInfo>,
    /// A PF: the NumVFs its virtual functions were created for (0: none exist).
    pub(crate) vf_count: u16,
}

impl std::fmt::Debug for ProxiedFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxiedFunction")
            .field("bdf", &self.shared.bdf())
            .field("device", &self.device.name())
            .finish()
    }
}

impl ProxiedFunction {
    pub(crate) fn new(
        id: u64,
        bdf: Bdf,
        mut device: Box<dyn Device>,
        out: Outbound,
        dma_timeout: Duration,
    ) -> Self {
        let decode = device.decode();
        let shared = Arc::new(FunctionShared::new(bdf, decode, out, dma_timeout));
        device.attach(DeviceContext {
            dma: DmaHandle { f: shared.clone() },
            irq: InterruptHandle { f: shared.clone() },
        });
        ProxiedFunction {
            id,
            device,
            decode,
            shared,
            dma: DmaRequester::new(dma_timeout),
            vf: None,
            vf_count: 0,
        }
    }

    pub(crate) fn bdf(&self) -> Bdf {
        self.shared.bdf()
    }

    /// A virtual function of the PF whose function id is `pf`.
    pub(crate) fn is_vf_of(&self, pf: u64) -> bool {
        self.vf.as_ref().is_some_and(|v| v.pf == pf)
    }

    /// Capture bus and device number from a Type 0 configuration write. A VF's Routing ID
    /// follows its PF's instead (§9.3.3.9-10), so a VF captures nothing — except a VF
    /// presented standalone (a view), which is an ordinary function to the host that owns it:
    /// it captures that host's bus number (its device and function stay its own on the
    /// appliance; the pool maps those), or its DMA and interrupts would carry a bus the host
    /// does not have and be dropped there.
    pub(crate) fn capture_bdf(&self, target: Bdf) {
        let cur = self.bdf();
        match &self.vf {
            None => self
                .shared
                .set_bdf(Bdf::new(target.bus(), target.device(), cur.function())),
            Some(vf) if vf.view.is_some() => {
                self.shared
                    .set_bdf(Bdf::new(target.bus(), cur.device(), cur.function()))
            }
            Some(_) => {}
        }
    }

    /// The configuration dword at `reg`: the device's, or through the view of a VF
    /// presented standalone.
    pub(crate) fn config_read(&mut self, reg: u16) -> u32 {
        match self.vf.as_ref().and_then(|v| v.view.as_ref()) {
            Some(view) => view.config_read(self.device.as_mut(), reg),
            None => self.device.config_read(reg),
        }
    }

    /// A configuration write, to the device or through the view; `true` when it initiated a
    /// Function Level Reset.
    pub(crate) fn config_write(&mut self, reg: u16, value: u32, be: u8) -> bool {
        match self.vf.as_mut().and_then(|v| v.view.as_mut()) {
            Some(view) => view.config_write(self.device.as_mut(), reg, value, be),
            None => self.device.config_write(reg, value, be),
        }
    }

    /// Re-read the decode state after a config write or reset and apply its side effects:
    /// INTx gating, pending MSI-X vectors becoming deliverable.
    pub(crate) fn refresh(&mut self) {
        let mut d = self.device.decode();
        if let Some(vf) = &self.vf {
            match &vf.view {
                Some(view) => view.apply(&mut d, vf.mse),
                None => {
                    d.bars = vf.bars;
                    d.mem_enable = vf.mse;
                }
            }
        }
        self.decode = d;
        self.shared.set_decode(d);
        {
            let mut s = self.shared.intx.lock_or_recover();
            self.shared.sync_intx(&mut s, &d);
        }
        self.shared.flush_msix(&d);
    }

    /// Run the DMA requester: admit queued reads, expire timed-out ones, issue requests.
    pub(crate) fn poll_dma(&mut self, now: Instant) {
        let shared = &self.shared;
        self.dma
            .poll(now, &shared.dma, &self.decode, shared.bdf(), |tlp| {
                shared.send(tlp);
            });
    }

    /// Fail every DMA read and accept no more: the function is being removed. Its worker
    /// may be blocked on a completion only the TLP thread could deliver.
    pub(crate) fn retire(&mut self, now: Option<Instant>) {
        self.shared.block_dma();
        self.shared.set_hold_writes(false);
        self.dma
            .fail_all(now, &self.shared.dma, RequestError::LinkDown, true);
    }

    /// Function Level Reset or conventional reset. `now`: the latest time the driver gave
    /// the endpoint (a Function Level Reset quarantines the tags in flight from then).
    pub(crate) fn reset(&mut self, kind: ResetKind, now: Option<Instant>) {
        // Block new DMA first, then fail what is queued or in flight (device workers wait on
        // it, and only this thread could finish it), then quiesce the device.
        self.shared.block_dma();
        let error = match kind {
            // The host may still answer requests issued before the FLR.
            ResetKind::FunctionLevel => RequestError::Reset,
            // Hot reset or link down: nothing sent before can be answered.
            ResetKind::Conventional => RequestError::LinkDown,
        };
        self.dma.fail_all(now, &self.shared.dma, error, false);
        self.device.reset(kind);
        if let Some(view) = self.vf.as_mut().and_then(|v| v.view.as_mut()) {
            view.reset();
        }
        self.shared.msix.lock_or_recover().reset();
        {
            let mut s = self.shared.intx.lock_or_recover();
            s.level = false;
        }
        self.refresh();
    }
}

/// The function a configuration request for `bdf` goes to (device and function number; the
/// bus is captured, not matched).
pub(crate) fn find_cfg(functions: &[ProxiedFunction], bdf: Bdf) -> Option<usize> {
    functions
        .iter()
        .position(|f| f.bdf().device() == bdf.device() && f.bdf().function() == bdf.function())
}
