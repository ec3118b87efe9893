//! The host's completer and upstream dispatch: what a card sends is sorted here (PCIe Base
//! Spec §2.2.9 completions to the requester, §2.2.7 DMA reads and writes against the DMA
//! windows with Unsupported Request / drop on a fault, §6.1 MSI/MSI-X writes and INTx messages
//! to the function's interrupts). Called from the transport pump thread; never blocks on the
//! network.

use crate::sync::MutexExt;
use std::sync::atomic::Ordering;

use super::requester::{CplAction, CplInfo};
use super::root::{Host, HostEvent, RxScratch};
use super::tlpio::{self, Upstream, ROOT_PORT};
use crate::tlp::{self, build, Bdf};

impl Host {
    /// One TLP from the appliance. Never blocks on the network.
    pub fn on_tlp(&self, bytes: &[u8]) {
        let up = match tlpio::classify_up(bytes) {
            Ok(u) => u,
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "malformed TLP from the appliance");
                return;
            }
        };
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
            } => self.serve_dma_read(requester, tag, address, len),
            Upstream::MemWrite {
                requester,
                address,
                data,
            } => self.serve_dma_write(requester, address, data),
            Upstream::Intx {
                requester, assert, ..
            } => match self.function(requester) {
                Some(f) => {
                    if assert {
                        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
                    }
                    f.ctx().irqs.set_intx(assert);
                }
                None => {
                    self.stats.unknown_requester.fetch_add(1, Ordering::Relaxed);
                }
            },
            Upstream::Other(name) => tracing::debug!(tlp = name, "upstream TLP ignored"),
        }
    }

    fn serve_dma_write(&self, requester: Bdf, address: u64, data: &[u8]) {
        let Some(f) = self.function(requester) else {
            self.stats.unknown_requester.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%requester, address, "memory write from an unknown requester dropped");
            return;
        };
        let (mb, ml) = self.cfg.msi_window;
        if address >= mb && address < mb + ml {
            let mut v = [0u8; 4];
            let n = data.len().min(4);
            v[..n].copy_from_slice(&data[..n]);
            let value = u32::from_le_bytes(v);
            self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
            f.deliver_msi(value);
            return;
        }
        if f.ctx().dma.write(address, data).is_err() {
            self.stats.dma_write_faults.fetch_add(1, Ordering::Relaxed);
            self.event(HostEvent::DmaFault {
                function: requester,
                address,
                len: data.len() as u32,
                write: true,
            });
        }
    }

    /// Answer a card's memory read that cannot be served with a Cpl without data of
    /// `status`: Byte Count the bytes it asked for, Lower Address its address's low 7 bits.
    fn fail_dma_read(
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

    fn serve_dma_read(&self, requester: Bdf, tag: u16, address: u64, len: u32) {
        let f = self.function(requester);
        let mut rx = self.rx.lock_or_recover();
        let RxScratch { stage, out } = &mut *rx;
        let n = len as usize;
        let ok = match (&f, n <= 4096) {
            (Some(f), true) => n == 0 || f.ctx().dma.read(address, &mut stage[..n]).is_ok(),
            _ => false,
        };
        if !ok {
            match f {
                Some(_) => {
                    self.stats.dma_read_faults.fetch_add(1, Ordering::Relaxed);
                    self.event(HostEvent::DmaFault {
                        function: requester,
                        address,
                        len,
                        write: false,
                    });
                }
                None => {
                    self.stats.unknown_requester.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.fail_dma_read(out, requester, tag, address, len, tlp::CplStatus::Ur);
            return;
        }
        let mps = f.as_ref().map_or(128, |f| f.info().mps).clamp(128, 4096);
        let cpl = build::Cpl::new(ROOT_PORT, requester, tag, tlp::CplStatus::Sc);
        let mut plan = match cpl.read_completions(address, &stage[..n], self.cfg.rcb, mps) {
            Ok(p) => p,
            Err(e) => {
                // Answer Completer Abort rather than leave the card to its completion timeout.
                tracing::warn!(error = %e, "cannot split a DMA read completion");
                self.fail_dma_read(out, requester, tag, address, len, tlp::CplStatus::Ca);
                return;
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
