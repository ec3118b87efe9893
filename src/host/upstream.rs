//! The host's completer and upstream dispatch: what a card sends is sorted here (PCIe Base
//! Spec §2.2.9 completions to the requester, §2.2.7 DMA reads and writes against the DMA
//! windows with Unsupported Request / drop on a fault, §6.1 MSI/MSI-X writes and INTx messages
//! to the function's interrupts). Called from the transport pump thread (or whichever thread
//! drives the link); never blocks — not on the network, and not on a consumer.
//!
//! A DMA to client memory shared without a descriptor needs the vfio-user client's answer.
//! It is handed to the function's own worker ([`DmaWindows::defer`]). While a *write* (or
//! anything else nothing may pass) waits there, so does everything the function sends after
//! it, because PCIe ordering (§2.4.1) forbids a later read, write, completion or MSI to pass
//! a posted write; a deferred *read* holds nothing up. The worker answers a read the client
//! did not serve in time with a Completer Abort (§2.3.1); only that function waits.
//!
//! [`DmaWindows::defer`]: super::dma::DmaWindows::defer

use crate::sync::MutexExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::dma::{DmaWindowError, Overtaking};
use super::function::RemoteFunctionState;
use super::requester::{CplAction, CplInfo};
use super::root::{Host, HostEvent, RxScratch};
use super::tlpio::{self, Upstream, MAX_TLP, ROOT_PORT};
use crate::ratelimit::LogLimiter;
use crate::tlp::{self, build, Bdf};
use crate::warn_limited;

/// Where an upstream TLP is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// On the thread that drives the link: nothing may wait.
    Link,
    /// On the function's worker: may wait for the function's consumer.
    Worker,
}

impl Host {
    /// One TLP from the appliance. Never blocks on the network or on a consumer.
    pub fn on_tlp(&self, bytes: &[u8]) {
        crate::probe::hit(crate::probe::Ev::HostTlpIn);
        let up = match tlpio::classify_up(bytes) {
            Ok(u) => u,
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "malformed TLP from the appliance");
                return;
            }
        };
        let source = match up {
            Upstream::Completion { completer, .. } => Some(completer),
            Upstream::MemRead { requester, .. }
            | Upstream::MemWrite { requester, .. }
            | Upstream::Intx { requester, .. } => Some(requester),
            Upstream::Other(_) => None,
        };
        let f = source.and_then(|b| self.function(b));
        // Behind work that waits on the consumer, everything waits (§2.4.1).
        if let Some(f) = &f {
            if f.ctx().dma.busy() {
                self.defer(f, bytes, &up);
                return;
            }
        }
        self.dispatch(up, f, bytes, Ctx::Link);
    }

    /// A TLP the function's worker took over from [`Host::on_tlp`].
    fn on_deferred_tlp(&self, bytes: &[u8], f: Arc<RemoteFunctionState>) {
        // It parsed once already; the bytes are ours.
        if let Ok(up) = tlpio::classify_up(bytes) {
            self.dispatch(up, Some(f), bytes, Ctx::Worker);
        }
    }

    /// Hand the TLP to the function's worker, in order behind what it has queued.
    fn defer(&self, f: &Arc<RemoteFunctionState>, bytes: &[u8], up: &Upstream<'_>) {
        let queued = match self.me.upgrade() {
            Some(me) => {
                let owned = bytes.to_vec();
                let func = f.clone();
                // Later traffic may pass a read (§2.4.1); nothing passes a write, a message or
                // a completion.
                let overtaking = match up {
                    Upstream::MemRead { .. } => Overtaking::Allowed,
                    _ => Overtaking::Forbidden,
                };
                f.ctx().dma.defer(
                    bytes.len(),
                    overtaking,
                    Box::new(move || me.on_deferred_tlp(&owned, func)),
                )
            }
            // The host is being dropped: nobody is left to serve it.
            None => Err(DmaWindowError::QueueFull(0)),
        };
        if queued.is_err() {
            // A read still gets its answer, so the card does not wait out its completion
            // timeout; anything else is dropped (counted by the windows).
            if let Upstream::MemRead {
                requester,
                tag,
                address,
                len,
            } = *up
            {
                self.stats.dma_read_faults.fetch_add(1, Ordering::Relaxed);
                let mut rx = self.rx.lock_or_recover();
                self.fail_read(
                    &mut rx.out,
                    requester,
                    tag,
                    address,
                    len,
                    tlp::CplStatus::Ca,
                );
            }
        }
    }

    fn dispatch(
        &self,
        up: Upstream<'_>,
        f: Option<Arc<RemoteFunctionState>>,
        bytes: &[u8],
        ctx: Ctx,
    ) {
        match up {
            Upstream::Completion {
                tag,
                status,
                byte_count,
                lower_address,
                data,
                ..
            } => {
                let info = CplInfo {
                    tag,
                    status,
                    byte_count,
                    lower_address,
                    // EP (§2.7.2.2): poisoned data fails the request.
                    poisoned: tlp::Packet::new_checked(bytes).is_ok_and(|p| p.ep()),
                };
                // The slot is updated under the requester lock (see `nonposted`).
                let mut r = self.req.lock_or_recover();
                match r.on_completion(info, data) {
                    // Late (for a request that timed out; its tag was quarantined) or
                    // matching nothing: nobody waits for it.
                    CplAction::Late | CplAction::Unexpected => {
                        self.stats
                            .unexpected_completions
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    CplAction::Data {
                        token,
                        offset,
                        bytes,
                        done,
                    } => {
                        let c = &self.slots[token as usize];
                        let mut s = c.m.lock_or_recover();
                        let o = offset as usize;
                        if let Some(dst) = s.data.get_mut(o..o + bytes.len()) {
                            dst.copy_from_slice(bytes);
                        }
                        if done {
                            s.result = Some(Ok(()));
                            c.cv.notify_all();
                        }
                    }
                    CplAction::Done(token) => self.finish(token, Ok(())),
                    CplAction::Failed(token, e) => self.finish(token, Err(e)),
                }
            }
            Upstream::MemRead {
                requester,
                tag,
                address,
                len,
            } => match ctx {
                Ctx::Link => {
                    let mut rx = self.rx.lock_or_recover();
                    let RxScratch { stage, out } = &mut *rx;
                    let deferred = self.serve_dma_read(
                        f.as_ref(),
                        &mut stage[..],
                        &mut out[..],
                        requester,
                        tag,
                        address,
                        len,
                        ctx,
                    );
                    drop(rx);
                    if let (Some(f), Err(Deferred)) = (&f, deferred) {
                        self.defer(f, bytes, &up);
                    }
                }
                Ctx::Worker => {
                    // Off the hot path: scratch of its own, so the link thread never waits
                    // for this one's lock while the client takes its time.
                    let (mut stage, mut out) = (vec![0u8; 4096 + 8], vec![0u8; MAX_TLP]);
                    let _ = self.serve_dma_read(
                        f.as_ref(),
                        &mut stage,
                        &mut out,
                        requester,
                        tag,
                        address,
                        len,
                        ctx,
                    );
                }
            },
            Upstream::MemWrite {
                requester,
                address,
                data,
            } => {
                if let (Some(f), Err(Deferred)) = (
                    &f,
                    self.serve_dma_write(f.as_ref(), requester, address, data, ctx),
                ) {
                    self.defer(f, bytes, &up);
                }
            }
            Upstream::Intx {
                requester, assert, ..
            } => match &f {
                Some(f) => {
                    if assert {
                        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
                    }
                    f.ctx().irqs.set_intx(assert);
                }
                None => {
                    self.stats.unknown_requester.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%requester, "INTx message from an unknown requester");
                }
            },
            Upstream::Other(name) => match tlp::Tlp::parse(bytes)
                .ok()
                .and_then(|t| tlp::slot::Slot::from_tlp(&t))
            {
                Some(Ok(tlp::slot::Slot::Message(m))) => self.on_slot_message(m),
                Some(Ok(tlp::slot::Slot::VmTarget(t))) => self.on_vm_target(t),
                Some(Ok(tlp::slot::Slot::Consumer(_))) => {
                    // Host → appliance only.
                    self.stats.bad_slot_messages.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(e)) => {
                    self.stats.bad_slot_messages.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "slot message refused");
                }
                None => tracing::debug!(tlp = name, "upstream TLP ignored"),
            },
        }
    }

    /// Serve a card's memory write. `Err(Deferred)`: it needs the consumer's answer and was
    /// not touched; the caller hands it to the function's worker.
    fn serve_dma_write(
        &self,
        f: Option<&Arc<RemoteFunctionState>>,
        requester: Bdf,
        address: u64,
        data: &[u8],
        ctx: Ctx,
    ) -> Result<(), Deferred> {
        let Some(f) = f else {
            self.stats.unknown_requester.fetch_add(1, Ordering::Relaxed);
            static UNKNOWN: LogLimiter = LogLimiter::warnings();
            warn_limited!(UNKNOWN, %requester, address, "memory write from an unknown requester dropped");
            return Ok(());
        };
        let (mb, ml) = self.cfg.msi_window;
        if address >= mb && address < mb + ml {
            let mut v = [0u8; 4];
            let n = data.len().min(4);
            v[..n].copy_from_slice(&data[..n]);
            let value = u32::from_le_bytes(v);
            self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
            f.deliver_msi(value);
            return Ok(());
        }
        let r = match ctx {
            Ctx::Link => f.ctx().dma.try_write(address, data),
            Ctx::Worker => f.ctx().dma.write(address, data),
        };
        match r {
            Ok(()) => Ok(()),
            Err(DmaWindowError::WouldBlock { .. }) => Err(Deferred),
            Err(_) => {
                self.stats.dma_write_faults.fetch_add(1, Ordering::Relaxed);
                self.event(HostEvent::DmaFault {
                    function: requester,
                    address,
                    len: data.len() as u32,
                    write: true,
                });
                Ok(())
            }
        }
    }

    /// Answer a card's read that cannot be served with a completion without data: UR when
    /// the address is not the card's to read, CA when the memory behind it could not be
    /// reached in time.
    fn fail_read(
        &self,
        out: &mut [u8],
        requester: Bdf,
        tag: u16,
        address: u64,
        len: u32,
        status: tlp::CplStatus,
    ) {
        let cpl = build::Cpl::new(ROOT_PORT, requester, tag, status);
        if let Ok(k) = cpl.without_data(out, len.clamp(1, 4096) as u16, (address & 0x7f) as u8) {
            let _ = self.link.send_tlp(&out[..k]);
        }
    }

    /// Serve a card's memory read with `stage` and `out` as scratch. `Err(Deferred)`: it needs
    /// the consumer's answer and nothing was sent; the caller hands it to the function's worker.
    #[allow(clippy::too_many_arguments)]
    fn serve_dma_read(
        &self,
        f: Option<&Arc<RemoteFunctionState>>,
        stage: &mut [u8],
        out: &mut [u8],
        requester: Bdf,
        tag: u16,
        address: u64,
        len: u32,
        ctx: Ctx,
    ) -> Result<(), Deferred> {
        let n = len as usize;
        let r = match (f, n <= 4096) {
            (Some(_), _) if n == 0 => Ok(()),
            (Some(f), true) => {
                let buf = &mut stage[..n];
                match ctx {
                    Ctx::Link => f.ctx().dma.try_read(address, buf),
                    Ctx::Worker => f.ctx().dma.read(address, buf),
                }
            }
            (Some(_), false) => Err(DmaWindowError::Fault {
                kind: "read",
                iova: address,
                len: n,
            }),
            (None, _) => {
                self.stats.unknown_requester.fetch_add(1, Ordering::Relaxed);
                self.fail_read(out, requester, tag, address, len, tlp::CplStatus::Ur);
                return Ok(());
            }
        };
        match r {
            Ok(()) => {}
            Err(DmaWindowError::WouldBlock { .. }) => return Err(Deferred),
            Err(e) => {
                self.stats.dma_read_faults.fetch_add(1, Ordering::Relaxed);
                self.event(HostEvent::DmaFault {
                    function: requester,
                    address,
                    len,
                    write: false,
                });
                // The card may not read there: UR. The consumer did not answer: CA.
                let status = match e {
                    DmaWindowError::Unreachable(_) => tlp::CplStatus::Ca,
                    _ => tlp::CplStatus::Ur,
                };
                self.fail_read(out, requester, tag, address, len, status);
                return Ok(());
            }
        }
        let mps = f.map_or(128, |f| f.info().mps).clamp(128, 4096);
        let cpl = build::Cpl::new(ROOT_PORT, requester, tag, tlp::CplStatus::Sc);
        let mut plan = match cpl.read_completions(address, &stage[..n], self.cfg.rcb, mps) {
            Ok(p) => p,
            Err(e) => {
                // Answer Completer Abort rather than leave the card to its completion timeout.
                tracing::warn!(error = %e, "cannot split a DMA read completion");
                self.fail_read(out, requester, tag, address, len, tlp::CplStatus::Ca);
                return Ok(());
            }
        };
        while let Some(r) = plan.emit_next(out) {
            match r {
                Ok(k) => {
                    if self.link.send_tlp(&out[..k]).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not build a DMA completion");
                    break;
                }
            }
        }
        Ok(())
    }

    /// The transport will never send this TLP (no session, queue refused). A non-posted
    /// request of ours fails at once instead of waiting for its completion timeout.
    pub fn on_dropped(&self, bytes: &[u8]) {
        let Ok(t) = tlp::Tlp::parse(bytes) else {
            return;
        };
        if t.ordering_class() != tlp::OrderingClass::NonPosted || t.requester_id() != ROOT_PORT {
            return;
        }
        let tag = t.tag();
        let mut r = self.req.lock_or_recover();
        // Never sent: no completion can come, the tag is free at once.
        if r.cancel(tag).is_some() {
            self.finish(tag, Err(super::requester::RequestError::LinkDown));
        }
    }
}

/// The request needs the consumer's answer: hand it to the function's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deferred;
