//! An in-process TLP pipe with a minimal host on the other end, for tests, examples and
//! benchmarks of the appliance without a network (the "host" is a tiny PCIe root complex:
//! it issues configuration and memory requests, serves device DMA from a byte vector, and
//! records MSI-X writes and INTx messages). Everything crosses as TLP bytes, exactly as it
//! would over the transport.
//!
//! Host memory occupies `[HOST_MEM_BASE, HOST_MEM_BASE + size)`; DMA outside it gets
//! Unsupported Request. Memory writes to `[MSI_BASE, MSI_BASE + 1 MiB)` are interrupts.
//! Read completions to the device are split at 64-byte boundaries and at 128 bytes, so every
//! test exercises completion reassembly.
//!
//! [`serve_channels`] is the endpoint half alone: the loop that drives a [`Proxy`] from
//! in-process channels, for rigs whose host is the real one (`crate::host::Host` with a
//! `ChannelDownlink`).

use crate::sync::{CondvarExt, MutexExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use thiserror::Error;

use super::proxy::{Proxy, ProxyStats};
use super::wire::{self, Bdf, CplStatus, ParsedHeader, ParsedKind};
use crate::tlp::{build, message};

/// Where host memory starts on the host's bus (above 4 GiB, so 64-bit addressing is exercised).
pub const HOST_MEM_BASE: u64 = 0x1_0000_0000;
/// Where MSI writes land (the x86 interrupt window).
pub const MSI_BASE: u64 = crate::pci::caps::X86_MSI_WINDOW.start;

/// Errors of the loopback host.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LoopbackError {
    /// No completion arrived in time.
    #[error("no completion within {0:?}")]
    Timeout(Duration),
    /// The completion carried a non-successful status.
    #[error("completion status {0:?}")]
    Status(CplStatus),
    /// The endpoint thread has gone.
    #[error("endpoint thread stopped")]
    Closed,
    /// The request could not be built from the arguments (e.g. a read crossing 4 KiB).
    #[error(transparent)]
    Build(#[from] wire::TlpViewError),
}

/// What the host side has observed.
#[derive(Debug, Default)]
struct HostState {
    mem: Vec<u8>,
    msi: Vec<(u64, u32)>,
    intx_asserted: bool,
    intx_messages: u64,
    dma_reads: u64,
    dma_writes: u64,
    bad_dma: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<HostState>,
    cv: Condvar,
}

/// Drive `ep` from in-process channels until `stop` is set, as an appliance's pump drives it
/// from a transport link: each TLP from `inbound` goes to [`Proxy::handle_tlp`], each TLP the
/// proxy sends (`outbound`, as [`Proxy::new`] returned it) to `deliver`, a device thread's
/// queued DMA read ([`Proxy::kicks`]) wakes the loop at once, and [`Proxy::poll`] runs the
/// requester's timers on real time. It sleeps at most `tick` between turns, so `stop` is seen
/// within one. For tests and benchmarks that join a host to an endpoint in one process.
pub fn serve_channels(
    ep: &mut Proxy,
    inbound: &Receiver<Vec<u8>>,
    outbound: &Receiver<Vec<u8>>,
    mut deliver: impl FnMut(&[u8]),
    stop: &AtomicBool,
    tick: Duration,
) {
    let kicks = ep.kicks();
    while !stop.load(Ordering::Relaxed) {
        ep.poll(Instant::now());
        let wait = ep.poll_wait(Instant::now(), tick);
        channel::select! {
            recv(kicks) -> _ => {},
            recv(inbound) -> t => if let Ok(t) = t { let _ = ep.handle_tlp(&t); },
            recv(outbound) -> t => if let Ok(t) = t { deliver(&t); },
            default(wait) => {}
        }
    }
}

/// The host end of an in-process link to a [`Proxy`].
#[derive(Debug)]
pub struct LoopbackHost {
    to_ep: Option<Sender<Vec<u8>>>,
    cpl_rx: Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    stats_rx: Receiver<ProxyStats>,
    stats_req: Option<Sender<()>>,
    next_tag: u16,
    /// Timeout for each host request.
    pub timeout: Duration,
}

impl LoopbackHost {
    /// Start the endpoint on its own thread, with `mem_size` bytes of host memory.
    pub fn start(mut ep: Proxy, ep_out: Receiver<Vec<u8>>, mem_size: usize) -> LoopbackHost {
        let (to_ep, ep_in) = channel::unbounded::<Vec<u8>>();
        let (stats_req, stats_req_rx) = channel::unbounded::<()>();
        let (stats_tx, stats_rx) = channel::unbounded();
        let ep_thread = std::thread::Builder::new()
            .name("loopback-endpoint".into())
            .spawn(move || {
                // The endpoint's driver: TLPs in, DMA kicks and timers, all with real time.
                let kicks = ep.kicks();
                loop {
                    let wait = ep.poll_wait(Instant::now(), Duration::from_secs(1));
                    channel::select! {
                        recv(ep_in) -> m => match m {
                            Ok(tlp) => { let _ = ep.handle_tlp(&tlp); }
                            Err(_) => break,
                        },
                        recv(kicks) -> _ => {}
                        recv(stats_req_rx) -> m => {
                            if m.is_err() { break; }
                            let _ = stats_tx.send(ep.stats());
                        }
                        default(wait) => {}
                    }
                    ep.poll(Instant::now());
                }
            })
            .expect("spawn endpoint thread");
        let shared = Arc::new(Shared {
            state: Mutex::new(HostState {
                mem: vec![0; mem_size],
                ..HostState::default()
            }),
            cv: Condvar::new(),
        });
        let (cpl_tx, cpl_rx) = channel::unbounded();
        let s2 = shared.clone();
        let to_ep2 = to_ep.clone();
        let pump = std::thread::Builder::new()
            .name("loopback-host".into())
            .spawn(move || {
                for tlp in ep_out {
                    host_handle(&s2, &to_ep2, &cpl_tx, &tlp);
                }
            })
            .expect("spawn host thread");
        LoopbackHost {
            to_ep: Some(to_ep),
            cpl_rx,
            shared,
            threads: vec![ep_thread, pump],
            stats_rx,
            stats_req: Some(stats_req),
            next_tag: 0,
            timeout: Duration::from_secs(5),
        }
    }

    /// Send raw TLP bytes to the endpoint.
    pub fn send_raw(&self, tlp: Vec<u8>) -> Result<(), LoopbackError> {
        self.to_ep
            .as_ref()
            .ok_or(LoopbackError::Closed)?
            .send(tlp)
            .map_err(|_| LoopbackError::Closed)
    }

    /// The endpoint's counters.
    pub fn proxy_stats(&self) -> Result<ProxyStats, LoopbackError> {
        self.stats_req
            .as_ref()
            .ok_or(LoopbackError::Closed)?
            .send(())
            .map_err(|_| LoopbackError::Closed)?;
        self.stats_rx
            .recv_timeout(self.timeout)
            .map_err(|_| LoopbackError::Timeout(self.timeout))
    }

    /// A fresh 8-bit tag for a host request.
    pub fn tag(&mut self) -> u16 {
        self.next_tag = (self.next_tag + 1) & 0xff;
        self.next_tag
    }

    /// Send a non-posted request built by the caller (with tag `tag`) and collect its
    /// completions as raw TLPs, until the one that ends it (by Byte Count or status).
    pub fn request(
        &mut self,
        tlp: Vec<u8>,
        tag: u16,
    ) -> Result<(CplStatus, Vec<Vec<u8>>), LoopbackError> {
        self.send_raw(tlp)?;
        let deadline = Instant::now() + self.timeout;
        let mut parts = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let c = self
                .cpl_rx
                .recv_timeout(left)
                .map_err(|_| LoopbackError::Timeout(self.timeout))?;
            let Ok(h) = ParsedHeader::parse(&c) else {
                continue;
            };
            let ParsedKind::Completion {
                status,
                byte_count,
                lower_addr,
                ..
            } = h.kind
            else {
                continue;
            };
            if h.tag != tag {
                continue;
            }
            let data = c[h.payload.clone()].to_vec();
            let bc = if byte_count == 0 {
                4096
            } else {
                usize::from(byte_count)
            };
            let avail = data.len().saturating_sub(usize::from(lower_addr & 3));
            let last = status != CplStatus::Sc || data.is_empty() || bc <= avail;
            parts.push(c);
            if last {
                return Ok((status, parts));
            }
        }
    }

    /// Configuration read (Type 0) of the DW at `reg`.
    pub fn cfg_read(&mut self, bdf: Bdf, reg: u16) -> Result<u32, LoopbackError> {
        let tag = self.tag();
        let tlp = cfg_tlp(bdf, reg, tag, None)?;
        let (st, parts) = self.request(tlp, tag)?;
        if st != CplStatus::Sc {
            return Err(LoopbackError::Status(st));
        }
        let c = &parts[0];
        let h = ParsedHeader::parse(c).map_err(|_| LoopbackError::Closed)?;
        let p = &c[h.payload];
        Ok(u32::from_le_bytes([p[0], p[1], p[2], p[3]]))
    }

    /// Configuration write (Type 0) of a whole DW.
    pub fn cfg_write(&mut self, bdf: Bdf, reg: u16, value: u32) -> Result<(), LoopbackError> {
        let tag = self.tag();
        let tlp = cfg_tlp(bdf, reg, tag, Some(value))?;
        let (st, _) = self.request(tlp, tag)?;
        if st != CplStatus::Sc {
            return Err(LoopbackError::Status(st));
        }
        Ok(())
    }

    /// Memory read of `len` bytes (1..=4096, not crossing 4 KiB) at `addr`; returns the data
    /// reassembled from every completion.
    pub fn mem_read(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, LoopbackError> {
        let tag = self.tag();
        let mut tlp = Vec::new();
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        wire::emit_mem_read(&mut tlp, Bdf(0), tag, addr, len)?;
        let (st, parts) = self.request(tlp, tag)?;
        if st != CplStatus::Sc {
            return Err(LoopbackError::Status(st));
        }
        let mut out = Vec::with_capacity(len as usize);
        for c in parts {
            let h = ParsedHeader::parse(&c).map_err(|_| LoopbackError::Closed)?;
            let ParsedKind::Completion {
                lower_addr,
                byte_count,
                ..
            } = h.kind
            else {
                continue;
            };
            let p = &c[h.payload];
            let lead = usize::from(lower_addr & 3);
            let bc = if byte_count == 0 {
                4096
            } else {
                usize::from(byte_count)
            };
            let n = (p.len() - lead).min(bc);
            out.extend_from_slice(&p[lead..lead + n]);
        }
        out.truncate(len as usize);
        Ok(out)
    }

    /// 32-bit MMIO read.
    pub fn read32(&mut self, addr: u64) -> Result<u32, LoopbackError> {
        let v = self.mem_read(addr, 4)?;
        Ok(u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
    }

    /// 64-bit MMIO read as two 32-bit reads, low then high (what Linux's `lo_hi_readq` does).
    pub fn read64(&mut self, addr: u64) -> Result<u64, LoopbackError> {
        let lo = self.read32(addr)?;
        let hi = self.read32(addr + 4)?;
        Ok((u64::from(hi) << 32) | u64::from(lo))
    }

    /// Posted memory write.
    pub fn mem_write(&mut self, addr: u64, data: &[u8]) -> Result<(), LoopbackError> {
        let mut tlp = Vec::new();
        wire::emit_mem_write(&mut tlp, Bdf(0), addr, data)?;
        self.send_raw(tlp)
    }

    /// 32-bit MMIO write.
    pub fn write32(&mut self, addr: u64, v: u32) -> Result<(), LoopbackError> {
        self.mem_write(addr, &v.to_le_bytes())
    }

    /// 64-bit MMIO write as two 32-bit writes, low then high.
    pub fn write64(&mut self, addr: u64, v: u64) -> Result<(), LoopbackError> {
        self.write32(addr, v as u32)?;
        self.write32(addr + 4, (v >> 32) as u32)
    }

    /// Read host memory (what the device wrote by DMA).
    pub fn host_read(&self, addr: u64, len: usize) -> Vec<u8> {
        let st = self.shared.state.lock_or_recover();
        let off = (addr - HOST_MEM_BASE) as usize;
        st.mem[off..off + len].to_vec()
    }

    /// Write host memory (what the device will read by DMA).
    pub fn host_write(&self, addr: u64, data: &[u8]) {
        let mut st = self.shared.state.lock_or_recover();
        let off = (addr - HOST_MEM_BASE) as usize;
        st.mem[off..off + data.len()].copy_from_slice(data);
    }

    /// MSI writes seen so far: (address, data).
    pub fn msi_log(&self) -> Vec<(u64, u32)> {
        self.shared.state.lock_or_recover().msi.clone()
    }

    /// Wait until at least `n` MSI writes have been seen.
    pub fn wait_msi_count(&self, n: usize, timeout: Duration) -> bool {
        self.wait(timeout, |s| s.msi.len() >= n)
    }

    /// Wait until the INTx wire is at `level`.
    pub fn wait_intx(&self, level: bool, timeout: Duration) -> bool {
        self.wait(timeout, |s| s.intx_asserted == level)
    }

    /// INTx Assert/Deassert messages seen.
    pub fn intx_messages(&self) -> u64 {
        self.shared.state.lock_or_recover().intx_messages
    }

    /// DMA reads the host answered with Unsupported Request (outside host memory).
    pub fn bad_dma(&self) -> u64 {
        self.shared.state.lock_or_recover().bad_dma
    }

    /// Wait for a condition on host-side state.
    fn wait(&self, timeout: Duration, f: impl Fn(&HostState) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock_or_recover();
        while !f(&st) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self.shared.cv.wait_timeout_or_recover(st, deadline - now).0;
        }
        true
    }
}

impl Drop for LoopbackHost {
    fn drop(&mut self) {
        // Closing the control channel stops the endpoint thread, which drops the endpoint and
        // its devices (joining their workers); that closes the outbound queue, which stops the
        // host thread.
        self.to_ep = None;
        self.stats_req = None;
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

fn cfg_tlp(bdf: Bdf, reg: u16, tag: u16, value: Option<u32>) -> Result<Vec<u8>, LoopbackError> {
    let cfg = build::Cfg {
        requester: Bdf(0),
        tag,
        target: bdf,
        type1: false,
        register: reg,
        first_be: 0xf,
    };
    let mut t = vec![0u8; 16];
    let n = match value {
        Some(v) => cfg.write(&mut t, v.to_le_bytes()),
        None => cfg.read(&mut t),
    }
    .map_err(wire::TlpViewError::from)?;
    t.truncate(n);
    Ok(t)
}

/// The host's side of one TLP from the endpoint.
fn host_handle(s: &Shared, to_ep: &Sender<Vec<u8>>, cpl_tx: &Sender<Vec<u8>>, tlp: &[u8]) {
    let Ok(h) = ParsedHeader::parse(tlp) else {
        return;
    };
    match h.kind {
        ParsedKind::Completion { .. } => {
            let _ = cpl_tx.send(tlp.to_vec());
        }
        ParsedKind::MemWrite { addr } => {
            let (lead, count) = wire::enabled_span(h.length_dw, h.first_be, h.last_be);
            let a = addr + u64::from(lead);
            let data =
                &tlp[h.payload.start + lead as usize..h.payload.start + (lead + count) as usize];
            let mut st = s.state.lock_or_recover();
            if crate::pci::caps::X86_MSI_WINDOW.contains(&a) && data.len() == 4 {
                st.msi
                    .push((a, u32::from_le_bytes([data[0], data[1], data[2], data[3]])));
            } else if a >= HOST_MEM_BASE
                && a - HOST_MEM_BASE + data.len() as u64 <= st.mem.len() as u64
            {
                let off = (a - HOST_MEM_BASE) as usize;
                st.mem[off..off + data.len()].copy_from_slice(data);
                st.dma_writes += 1;
            } else {
                st.bad_dma += 1;
            }
            s.cv.notify_all();
        }
        ParsedKind::MemRead { addr } => {
            let (lead, count) = wire::enabled_span(h.length_dw, h.first_be, h.last_be);
            let first = addr + u64::from(lead);
            let mut st = s.state.lock_or_recover();
            let ok = first >= HOST_MEM_BASE
                && first - HOST_MEM_BASE + u64::from(count) <= st.mem.len() as u64;
            if !ok {
                st.bad_dma += 1;
                drop(st);
                let mut c = Vec::new();
                let bc = count as u16 & 0xfff; // 4096 is 0 on the wire
                match wire::emit_completion(
                    &mut c,
                    Bdf(0),
                    h.requester,
                    h.tag,
                    CplStatus::Ur,
                    bc,
                    0,
                    0,
                    &[],
                ) {
                    Ok(()) => {
                        let _ = to_ep.send(c);
                    }
                    Err(e) => tracing::error!("loopback host: cannot build a completion: {e}"),
                }
                return;
            }
            st.dma_reads += 1;
            let base = (first - HOST_MEM_BASE) as usize;
            let data = &st.mem[base..base + count as usize];
            // Split at 64-byte boundaries (RCB 64), at most 128 bytes per completion (MPS 128).
            let cpl = build::Cpl::new(Bdf(0), h.requester, h.tag, CplStatus::Sc);
            let mut tlps = Vec::new();
            match cpl.read_completions(first, data, 64, 128) {
                Ok(mut plan) => loop {
                    let mut c = Vec::new();
                    match wire::emit_next_completion(&mut c, &mut plan) {
                        None => break,
                        Some(Ok(())) => tlps.push(c),
                        Some(Err(e)) => {
                            tracing::error!("loopback host: cannot build a completion: {e}");
                            break;
                        }
                    }
                },
                Err(e) => tracing::error!("loopback host: cannot split a read: {e}"),
            }
            drop(st);
            for c in tlps {
                let _ = to_ep.send(c);
            }
        }
        ParsedKind::Message { code, .. } => {
            if let Some((assert, _pin)) = message::intx(code) {
                let mut st = s.state.lock_or_recover();
                st.intx_asserted = assert;
                st.intx_messages += 1;
                s.cv.notify_all();
            }
        }
        _ => {}
    }
}
