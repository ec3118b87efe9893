//! The state one function's handles share with the proxy: Routing ID (bus and device number
//! captured from Type 0 configuration writes, PCIe r5.0 §2.2.6.2), decode state, MSI-X table
//! and INTx wire (§6.1), the queue of DMA reads for the TLP thread, and the endpoint's outbound
//! queue. The handles ([`DmaHandle`](super::DmaHandle), [`InterruptHandle`](super::InterruptHandle))
//! and the proxy's per-function record (`proxied.rs`) build on this module; it depends on
//! neither.

use crate::sync::MutexExt;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam::channel::Sender;

use super::decode::Decode;
use super::msix::{IntxState, MsixState};
use super::requester::{DmaError, DmaQueue, Op};
use super::wire::{self, Bdf};

/// State a function's handles share with the proxy.
#[derive(Debug)]
pub(crate) struct FunctionShared {
    bdf: AtomicU16,
    decode: Mutex<Decode>,
    pub(crate) msix: Mutex<MsixState>,
    pub(crate) intx: Mutex<IntxState>,
    /// DMA reads queued by device threads for the TLP thread.
    pub(crate) dma: DmaQueue,
    /// How long a device thread waits for a DMA read before it stops trusting the driver to
    /// run the endpoint at all (the completion timeout proper is the requester's).
    pub(crate) dma_backstop: Duration,
    /// Set by the pool's policy while the function's held TLPs are at their bound: device
    /// threads wait before queueing more DMA writes ([`FunctionShared::wait_until_released`]).
    hold_writes: AtomicBool,
    /// While above zero, posted TLPs are queued without waking the drainer
    /// ([`FunctionShared::hold_wakeups`]).
    wake_holds: AtomicU32,
    /// Posted TLPs queued under a hold since the drainer was last woken.
    held_tlps: AtomicU32,
    out: Outbound,
}

/// Under a wake-up hold, the drainer is still woken after this many TLPs, so a long transfer
/// streams instead of leaving all at once at the end (at MPS 256: 16 KiB, two frames).
const HOLD_MAX_TLPS: u32 = 64;

/// A wake-up for whoever drains the outbound queue (see [`Outbound`]).
pub(crate) type OutboundWake = Arc<dyn Fn() + Send + Sync>;

/// Where the wake-up is installed, shared by the endpoint and every function.
#[derive(Clone, Default)]
pub(crate) struct WakeSlot(pub(crate) Arc<OnceLock<OutboundWake>>);

impl std::fmt::Debug for WakeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WakeSlot({})", self.0.get().is_some())
    }
}

/// The endpoint's outbound queue as the device threads see it: after a device thread queues a
/// TLP (a DMA write, an MSI-X write) or a DMA read for the TLP thread, it calls the wake-up
/// installed by [`Proxy::set_outbound_wake`](super::Proxy::set_outbound_wake), so a pump
/// that sleeps on the network acts at once; a queued read also signals
/// [`Proxy::kicks`](super::Proxy::kicks) for drivers that wait on channels.
#[derive(Clone)]
pub(crate) struct Outbound {
    pub(crate) tx: Sender<Vec<u8>>,
    pub(crate) wake: WakeSlot,
    pub(crate) kick: Sender<()>,
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
    fn wake(&self) {
        crate::probe::hit(crate::probe::Ev::OutboundWake);
        if let Some(w) = self.wake.0.get() {
            w();
        }
    }

    fn send(&self, tlp: Vec<u8>) -> bool {
        crate::probe::hit(crate::probe::Ev::EpTlpOut);
        let ok = self.tx.send(tlp).is_ok();
        self.wake();
        ok
    }

    /// Work for the TLP thread's `poll` is queued.
    fn kick(&self) {
        // Full means a kick is already pending: one is enough.
        let _ = self.kick.try_send(());
        self.wake();
    }
}

impl FunctionShared {
    pub(crate) fn new(bdf: Bdf, decode: Decode, out: Outbound, dma_timeout: Duration) -> Self {
        let vectors = decode.msix.map_or(0, |m| m.vectors);
        FunctionShared {
            bdf: AtomicU16::new(bdf.0),
            decode: Mutex::new(decode),
            msix: Mutex::new(MsixState::new(vectors)),
            intx: Mutex::new(IntxState::default()),
            dma: DmaQueue::default(),
            dma_backstop: dma_timeout.saturating_mul(10).max(Duration::from_secs(10)),
            hold_writes: AtomicBool::new(false),
            wake_holds: AtomicU32::new(0),
            held_tlps: AtomicU32::new(0),
            out,
        }
    }

    /// Hold (or release) the function's device threads before their next DMA write.
    pub(crate) fn set_hold_writes(&self, hold: bool) {
        self.hold_writes.store(hold, Ordering::Release);
    }

    /// Whether device threads are held before their DMA writes.
    pub(crate) fn writes_held(&self) -> bool {
        self.hold_writes.load(Ordering::Acquire)
    }

    /// On a device thread, before a DMA write TLP is queued: wait while the pool holds the
    /// function's writes (back-pressure of a bandwidth cap, docs/api.md "Policy"). Returns
    /// `false` when Bus Master Enable was cleared meanwhile (a reset: the write is refused),
    /// or after the DMA backstop (never a hang: the write then goes and the pool holds it).
    pub(crate) fn wait_until_released(&self) -> bool {
        if !self.writes_held() {
            return true;
        }
        let until = std::time::Instant::now() + self.dma_backstop;
        while self.writes_held() {
            if !self.decode().bus_master {
                return false;
            }
            if std::time::Instant::now() >= until {
                return true;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        true
    }

    pub(crate) fn bdf(&self) -> Bdf {
        Bdf(self.bdf.load(Ordering::Relaxed))
    }

    pub(crate) fn set_bdf(&self, bdf: Bdf) {
        self.bdf.store(bdf.0, Ordering::Relaxed);
    }

    pub(crate) fn decode(&self) -> Decode {
        *self.decode.lock_or_recover()
    }

    /// Replace the decode state the handles see.
    pub(crate) fn set_decode(&self, d: Decode) {
        *self.decode.lock_or_recover() = d;
    }

    /// Clear Bus Master Enable in the handles' view (first step of a reset).
    pub(crate) fn block_dma(&self) {
        self.decode.lock_or_recover().bus_master = false;
    }

    /// Queue a TLP for the host; false when the endpoint is gone. Under a wake-up hold the
    /// drainer is woken only every [`HOLD_MAX_TLPS`] TLPs and when the hold ends.
    pub(crate) fn send(&self, tlp: Vec<u8>) -> bool {
        if self.wake_holds.load(Ordering::Acquire) == 0 {
            return self.out.send(tlp);
        }
        crate::probe::hit(crate::probe::Ev::EpTlpOut);
        let ok = self.out.tx.send(tlp).is_ok();
        if self.held_tlps.fetch_add(1, Ordering::AcqRel) + 1 >= HOLD_MAX_TLPS {
            self.held_tlps.store(0, Ordering::Release);
            self.out.wake();
        }
        ok
    }

    /// Start holding wake-ups: what a device thread posts until [`release_wakeups`]
    /// (a command's data, its completion entry and its interrupt) reaches the drainer with
    /// one wake-up and so leaves in as few frames as fit, instead of the first TLP waking it
    /// and the rest following in frames of their own. Reads are never held (their kick
    /// always wakes: the thread is about to wait for them).
    ///
    /// [`release_wakeups`]: FunctionShared::release_wakeups
    pub(crate) fn hold_wakeups(&self) {
        self.wake_holds.fetch_add(1, Ordering::AcqRel);
    }

    /// End a hold; the last one wakes the drainer if anything was queued under it.
    pub(crate) fn release_wakeups(&self) {
        if self.wake_holds.fetch_sub(1, Ordering::AcqRel) == 1
            && self.held_tlps.swap(0, Ordering::AcqRel) > 0
        {
            self.out.wake();
        }
    }

    /// Queue a DMA read for the TLP thread (refused when Bus Master Enable is clear or the
    /// function is gone) and wake the driver.
    pub(crate) fn submit_dma(&self, op: Arc<Op>) -> Result<(), DmaError> {
        crate::probe::hit(crate::probe::Ev::DmaReadQueued);
        self.dma.push(op, || {
            if self.decode().bus_master {
                Ok(())
            } else {
                Err(DmaError::BusMasterDisabled)
            }
        })?;
        self.out.kick();
        Ok(())
    }

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
        self.msix.lock_or_recover().drain_pending(&mut msgs);
        for (addr, data) in msgs {
            self.send_msi(addr, data);
        }
    }

    /// Send one MSI-X message (a posted memory write).
    pub(crate) fn send_msi(&self, addr: u64, data: u32) {
        let mut tlp = Vec::with_capacity(20);
        match wire::emit_msi(&mut tlp, self.bdf(), addr, data) {
            Ok(()) => {
                crate::probe::hit(crate::probe::Ev::Msi);
                self.send(tlp);
            }
            Err(e) => tracing::warn!(bdf = %self.bdf(), error = %e, "cannot send an MSI-X message"),
        }
    }
}
