//! One function behind the endpoint: the device model plus the state its handles share with the
//! proxy (Routing ID, decode state, tag table, MSI-X table, INTx wire), PCIe r5.0 §2.2.6.2
//! (capturing the bus and device number from Type 0 configuration writes) and §6.6.2 (FLR).

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam::channel::Sender;
use std::sync::OnceLock;

use super::device::{
    BarSpec, Decode, Device, DeviceContext, DmaHandle, InterruptHandle, ResetKind,
};
use super::interrupt::{IntxState, MsixState};
use super::requester::Requester;
use super::wire::Bdf;

/// State a function's handles share with the proxy.
#[derive(Debug)]
pub(crate) struct FunctionShared {
    bdf: AtomicU16,
    decode: Mutex<Decode>,
    pub(crate) requester: Requester,
    pub(crate) msix: Mutex<MsixState>,
    pub(crate) intx: Mutex<IntxState>,
    out: Outbound,
}

/// A wake-up for whoever drains the outbound queue (see [`Outbound`]).
pub(crate) type Wake = Arc<dyn Fn() + Send + Sync>;

/// Where the wake-up is installed, shared by the endpoint and every function.
#[derive(Clone, Default)]
pub(crate) struct WakeSlot(pub(crate) Arc<OnceLock<Wake>>);

impl std::fmt::Debug for WakeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WakeSlot({})", self.0.get().is_some())
    }
}

/// The endpoint's outbound queue as the device threads see it: after a device thread queues a
/// TLP (a DMA request, an MSI-X write) it calls the wake-up installed by
/// [`Endpoint::set_outbound_wake`](super::Endpoint::set_outbound_wake), so a pump that sleeps
/// on the network socket sends it at once.
#[derive(Clone)]
pub(crate) struct Outbound {
    pub(crate) tx: Sender<Vec<u8>>,
    pub(crate) wake: WakeSlot,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("queued", &self.tx.len())
            .field("wake", &self.wake)
            .finish()
    }
}

impl Outbound {
    fn send(&self, tlp: Vec<u8>) -> bool {
        let ok = self.tx.send(tlp).is_ok();
        if let Some(w) = self.wake.0.get() {
            w();
        }
        ok
    }
}

impl FunctionShared {
    pub(crate) fn bdf(&self) -> Bdf {
        Bdf(self.bdf.load(Ordering::Relaxed))
    }

    pub(crate) fn decode(&self) -> Decode {
        *self.decode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a TLP for the host; false when the endpoint is gone.
    pub(crate) fn send(&self, tlp: Vec<u8>) -> bool {
        self.out.send(tlp)
    }
}

/// What makes a function a virtual function: its PF and the PF-provided decode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VfInfo {
    /// The PF's function id.
    pub(crate) pf: u64,
    /// VF BARs (this VF's slice of the PF's VF BARs).
    pub(crate) bars: [Option<(BarSpec, u64)>; 6],
    /// VF Memory Space Enable of the PF.
    pub(crate) mse: bool,
}

/// A function as the proxy holds it.
pub(crate) struct Function {
    /// Unique among the endpoint's functions, stable while the function exists.
    pub(crate) id: u64,
    pub(crate) device: Box<dyn Device>,
    pub(crate) decode: Decode,
    pub(crate) shared: Arc<FunctionShared>,
    pub(crate) vf: Option<VfInfo>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("bdf", &self.shared.bdf())
            .field("device", &self.device.name())
            .finish()
    }
}

impl Function {
    pub(crate) fn new(
        id: u64,
        bdf: Bdf,
        mut device: Box<dyn Device>,
        out: Outbound,
        dma_timeout: Duration,
    ) -> Self {
        let decode = device.decode();
        let vectors = decode.msix.map_or(0, |m| m.vectors);
        let shared = Arc::new(FunctionShared {
            bdf: AtomicU16::new(bdf.0),
            decode: Mutex::new(decode),
            requester: Requester::new(dma_timeout),
            msix: Mutex::new(MsixState::new(vectors)),
            intx: Mutex::new(IntxState::default()),
            out,
        });
        device.attach(DeviceContext {
            dma: DmaHandle { f: shared.clone() },
            irq: InterruptHandle { f: shared.clone() },
        });
        Function {
            id,
            device,
            decode,
            shared,
            vf: None,
        }
    }

    pub(crate) fn bdf(&self) -> Bdf {
        self.shared.bdf()
    }

    /// Capture bus and device number from a Type 0 configuration write.
    pub(crate) fn capture_bdf(&self, target: Bdf) {
        let cur = self.bdf();
        let new = Bdf::new(target.bus(), target.device(), cur.function());
        self.shared.bdf.store(new.0, Ordering::Relaxed);
    }

    /// Re-read the decode state after a config write or reset and apply its side effects:
    /// INTx gating, pending MSI-X vectors becoming deliverable.
    pub(crate) fn refresh(&mut self) {
        let mut d = self.device.decode();
        if let Some(vf) = &self.vf {
            d.bars = vf.bars;
            d.mem_enable = vf.mse;
        }
        self.decode = d;
        *self.shared.decode.lock().unwrap_or_else(|e| e.into_inner()) = d;
        {
            let mut s = self.shared.intx.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.sync_intx(&mut s, &d);
        }
        self.shared.flush_msix(&d);
    }

    /// Stop any DMA waiters before the function is dropped (its worker may be blocked on a
    /// completion that only the TLP thread could deliver).
    pub(crate) fn retire(&self) {
        self.shared.requester.abandon_all();
    }

    /// Function Level Reset or conventional reset.
    pub(crate) fn reset(&mut self, kind: ResetKind) {
        // Block new DMA first, then quiesce the device, then forget what was in flight.
        {
            let mut d = self.shared.decode.lock().unwrap_or_else(|e| e.into_inner());
            d.bus_master = false;
        }
        // Waiters on DMA reads fail at once (their completions can only arrive on this thread,
        // which is busy here), so device workers can quiesce.
        self.shared.requester.abandon_all();
        self.device.reset(kind);
        self.shared
            .msix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
        {
            let mut s = self.shared.intx.lock().unwrap_or_else(|e| e.into_inner());
            s.level = false;
        }
        self.refresh();
    }
}
