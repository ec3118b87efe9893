//! The DMA engine test device: moves N bytes between its own buffer and host memory, in either
//! direction, and interrupts on completion. What the benchmarks drive to measure the tunnel's
//! DMA throughput and interrupt latency. (A pcietun-defined device; PCI header per PCI Local
//! Bus 3.0 §6.1, class 0x088000 "other system peripheral", MSI-X per PCIe r5.0 §7.7.2.)
//!
//! The register interface (BAR0 registers, CONTROL and STATUS bits, error codes, IDs) is
//! [`crate::pci::class::dma_engine`], shared with the driver; its reference is
//! docs/appliance.md, "The DMA engine test device". BAR2 (64-bit prefetchable) is the buffer
//! itself, readable and writable by the host, with 4- and 8-byte AtomicOps (FetchAdd, Swap,
//! CAS).

use crate::sync::{CondvarExt, MutexExt};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use super::device::{
    apply_atomic, AtomicOp, Decode, Device, DeviceContext, DeviceError, DmaError, InterruptHandle,
    MsixLayout, ResetKind,
};
use super::pcicfg::{self, build_config, pci_decode, ModelConfig};
use crate::pci::class::dma_engine::{
    control, reg, status, ErrorCode, CLASS_CODE, DEVICE_ID, ID_VALUE, MSIX_PBA, MSIX_TABLE,
    MSIX_VECTORS, REGS_BAR_SIZE, VENDOR_ID, VERSION_VALUE, VF_DEVICE_ID,
};
use crate::pci::{Bar, ConfigSpace, FunctionIds, SriovConfig};

#[derive(Debug, Default)]
struct Regs {
    host_addr: u64,
    buf_offset: u32,
    length: u32,
    control: u32,
    status: u32,
    completions: u32,
    bytes: u64,
    last_ns: u32,
    start: bool,
    stop: bool,
    epoch: u64,
}

#[derive(Debug)]
struct Shared {
    regs: Mutex<Regs>,
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
}

impl Shared {
    fn regs(&self) -> MutexGuard<'_, Regs> {
        self.regs.lock_or_recover()
    }
    fn buf(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buf.lock_or_recover()
    }
}

/// The DMA engine device model.
#[derive(Debug)]
pub struct DmaEngine {
    cfg: ConfigSpace,
    shared: Arc<Shared>,
    irq: Option<InterruptHandle>,
    worker: Option<JoinHandle<()>>,
    buf_size: usize,
}

impl DmaEngine {
    /// A DMA engine with a `buf_size`-byte buffer (rounded up to a power of two, at least 4 KiB).
    pub fn new(buf_size: usize) -> Self {
        Self::build(buf_size, false, 0)
    }

    /// A DMA engine that is an SR-IOV physical function with up to `total_vfs` virtual
    /// functions (First VF Offset 1, stride 1), each a DMA engine with the same buffer size.
    pub fn with_vfs(buf_size: usize, total_vfs: u16) -> Self {
        Self::build(buf_size, false, total_vfs)
    }

    fn build(buf_size: usize, vf: bool, total_vfs: u16) -> Self {
        let size = buf_size.clamp(4096, 1 << 30).next_power_of_two();
        let (vendor_id, device_id) = if vf {
            (0xffff, 0xffff) // VFs read all-ones IDs; the PF's VF Device ID names them
        } else {
            (VENDOR_ID, DEVICE_ID)
        };
        let mut bars = [Bar::Unused; 6];
        bars[0] = Bar::Memory64 {
            size: REGS_BAR_SIZE,
            prefetchable: false,
        };
        bars[2] = Bar::Memory64 {
            size: size as u64,
            prefetchable: true,
        };
        let cfg = build_config(&ModelConfig {
            ids: FunctionIds {
                vendor_id,
                device_id,
                revision: 1,
                class_code: CLASS_CODE,
                subsystem_vendor_id: VENDOR_ID,
                subsystem_id: DEVICE_ID,
                interrupt_pin: u8::from(!vf),
                multifunction: false,
            },
            bars,
            msix: Some(MsixLayout {
                vectors: MSIX_VECTORS,
                table_bar: 0,
                table_offset: MSIX_TABLE,
                pba_bar: 0,
                pba_offset: MSIX_PBA,
            }),
            mps_supported: 256,
            sriov: (total_vfs > 0).then_some(SriovConfig {
                initial_vfs: total_vfs,
                total_vfs,
                first_vf_offset: 1,
                vf_stride: 1,
                vf_device_id: VF_DEVICE_ID,
                supported_page_sizes: 0x553,
                vf_bars: bars,
            }),
            vf,
        })
        .expect("the DMA engine layout is fixed and its buffer size clamped to a valid BAR");
        DmaEngine {
            buf_size: size,
            cfg,
            shared: Arc::new(Shared {
                regs: Mutex::new(Regs::default()),
                buf: Mutex::new(vec![0; size]),
                wake: Condvar::new(),
            }),
            irq: None,
            worker: None,
        }
    }

    fn sync_intx(&self, r: &Regs) {
        if let Some(irq) = &self.irq {
            if !irq.msix_enabled() {
                irq.set_intx(
                    r.control & control::IRQ_EN != 0
                        && r.status & (status::DONE | status::ERROR) != 0,
                );
            }
        }
    }

    fn read_reg(&self, off: u64) -> u32 {
        let r = self.shared.regs();
        let size = self.shared.buf().len() as u64;
        match off {
            reg::ID => ID_VALUE,
            reg::VERSION => VERSION_VALUE,
            reg::BUF_SIZE_LO => size as u32,
            reg::BUF_SIZE_HI => (size >> 32) as u32,
            reg::HOST_ADDR_LO => r.host_addr as u32,
            reg::HOST_ADDR_HI => (r.host_addr >> 32) as u32,
            reg::BUF_OFFSET => r.buf_offset,
            reg::LENGTH => r.length,
            reg::CONTROL => r.control,
            reg::STATUS => r.status,
            reg::COMPLETIONS => r.completions,
            reg::BYTES_LO => r.bytes as u32,
            reg::BYTES_HI => (r.bytes >> 32) as u32,
            reg::LAST_NS => r.last_ns,
            _ => 0,
        }
    }

    fn write_reg(&self, off: u64, v: u32, mask: u32) {
        let mut r = self.shared.regs();
        let m = |old: u32| (old & !mask) | (v & mask);
        match off {
            reg::HOST_ADDR_LO => {
                r.host_addr = (r.host_addr & !0xffff_ffff) | u64::from(m(r.host_addr as u32))
            }
            reg::HOST_ADDR_HI => {
                r.host_addr =
                    (r.host_addr & 0xffff_ffff) | (u64::from(m((r.host_addr >> 32) as u32)) << 32)
            }
            reg::BUF_OFFSET => r.buf_offset = m(r.buf_offset),
            reg::LENGTH => r.length = m(r.length),
            reg::CONTROL => {
                r.control = m(r.control) & control::WRITABLE;
                self.sync_intx(&r);
            }
            reg::DOORBELL if r.status & status::BUSY == 0 => {
                r.status =
                    (r.status & !(status::CODE_MASK | status::DONE | status::ERROR)) | status::BUSY;
                r.start = true;
                self.sync_intx(&r);
                self.shared.wake.notify_all();
            }
            reg::STATUS => {
                let clear = v & mask & (status::DONE | status::ERROR);
                r.status &= !clear;
                self.sync_intx(&r);
            }
            _ => {}
        }
    }
}

impl Drop for DmaEngine {
    fn drop(&mut self) {
        self.shared.regs().stop = true;
        self.shared.wake.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn worker(shared: Arc<Shared>, ctx: DeviceContext) {
    let mut tmp: Vec<u8> = Vec::new();
    loop {
        let (addr, off, len, to_host, epoch) = {
            let mut r = shared.regs();
            while !r.start && !r.stop {
                r = shared.wake.wait_or_recover(r);
            }
            if r.stop {
                return;
            }
            r.start = false;
            (
                r.host_addr,
                r.buf_offset as usize,
                r.length as usize,
                r.control & control::TO_HOST != 0,
                r.epoch,
            )
        };
        let t0 = Instant::now();
        let buf_len = shared.buf().len();
        let result: Result<(), ErrorCode> =
            if len == 0 || off.checked_add(len).is_none_or(|e| e > buf_len) {
                Err(ErrorCode::Range)
            } else if to_host {
                tmp.clear();
                tmp.extend_from_slice(&shared.buf()[off..off + len]);
                ctx.dma.write(addr, &tmp).map_err(dma_code)
            } else {
                tmp.resize(len, 0);
                ctx.dma
                    .read(addr, &mut tmp[..len])
                    .map(|()| {
                        shared.buf()[off..off + len].copy_from_slice(&tmp[..len]);
                    })
                    .map_err(dma_code)
            };
        let ns = u32::try_from(t0.elapsed().as_nanos()).unwrap_or(u32::MAX);
        let mut r = shared.regs();
        if r.epoch != epoch {
            continue; // reset while the transfer ran
        }
        r.completions = r.completions.wrapping_add(1);
        r.last_ns = ns;
        r.status &= !status::BUSY;
        match result {
            Ok(()) => {
                r.bytes += len as u64;
                r.status |= status::DONE;
            }
            Err(code) => r.status |= status::ERROR | code.status_bits(),
        }
        if r.control & control::IRQ_EN != 0 {
            if ctx.irq.msix_enabled() {
                ctx.irq.signal_msix(0);
            } else {
                ctx.irq.set_intx(true);
            }
        }
    }
}

fn dma_code(e: DmaError) -> ErrorCode {
    match e {
        DmaError::BusMasterDisabled => ErrorCode::BusMasterDisabled,
        DmaError::Timeout { .. } => ErrorCode::CompletionTimeout,
        _ => ErrorCode::HostRefused,
    }
}

impl Device for DmaEngine {
    fn name(&self) -> &str {
        "dma"
    }

    fn attach(&mut self, ctx: DeviceContext) {
        self.irq = Some(ctx.irq.clone());
        let shared = self.shared.clone();
        self.worker = std::thread::Builder::new()
            .name("dma-engine".into())
            .spawn(move || worker(shared, ctx))
            .ok();
    }

    fn config_read(&mut self, reg: u16) -> u32 {
        pcicfg::config_read(&self.cfg, reg)
    }

    fn config_write(&mut self, reg: u16, value: u32, be: u8) -> bool {
        pcicfg::config_write(&mut self.cfg, reg, value, be)
    }

    fn decode(&self) -> Decode {
        pci_decode(&self.cfg, &[])
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        match bar {
            0 => {
                for (i, b) in data.iter_mut().enumerate() {
                    let o = offset + i as u64;
                    *b = self.read_reg(o & !3).to_le_bytes()[(o & 3) as usize];
                }
                Ok(())
            }
            2 => {
                let buf = self.shared.buf();
                let o = offset as usize;
                let src = buf
                    .get(o..o + data.len())
                    .ok_or(DeviceError::Unsupported("beyond buffer"))?;
                data.copy_from_slice(src);
                Ok(())
            }
            _ => Err(DeviceError::Unsupported("no such BAR")),
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        match bar {
            0 => {
                let mut i = 0usize;
                while i < data.len() {
                    let o = offset + i as u64;
                    let dw = o & !3;
                    let mut v = [0u8; 4];
                    let mut mask = 0u32;
                    let mut k = (o - dw) as usize;
                    while k < 4 && i < data.len() {
                        v[k] = data[i];
                        mask |= 0xff << (k * 8);
                        k += 1;
                        i += 1;
                    }
                    self.write_reg(dw, u32::from_le_bytes(v), mask);
                }
                Ok(())
            }
            2 => {
                let mut buf = self.shared.buf();
                let o = offset as usize;
                let dst = buf
                    .get_mut(o..o + data.len())
                    .ok_or(DeviceError::Unsupported("beyond buffer"))?;
                dst.copy_from_slice(data);
                Ok(())
            }
            _ => Err(DeviceError::Unsupported("no such BAR")),
        }
    }

    fn bar_atomic(&mut self, bar: u8, offset: u64, op: AtomicOp) -> Result<u64, DeviceError> {
        if bar != 2 {
            return Err(DeviceError::Unsupported("AtomicOps only on the buffer BAR"));
        }
        let mut buf = self.shared.buf();
        let mem = buf
            .get_mut(offset as usize..)
            .ok_or(DeviceError::Unsupported("beyond buffer"))?;
        apply_atomic(mem, op)
    }

    fn create_vf(&mut self, _index: u16) -> Option<Box<dyn Device>> {
        pci_decode(&self.cfg, &[])
            .sriov
            .map(|_| Box::new(DmaEngine::build(self.buf_size, true, 0)) as Box<dyn Device>)
    }

    fn reset(&mut self, kind: ResetKind) {
        self.cfg.reset();
        let mut r = self.shared.regs();
        let stop = r.stop;
        let epoch = r.epoch + 1;
        *r = Regs {
            stop,
            epoch,
            ..Regs::default()
        };
        drop(r);
        if kind == ResetKind::Conventional {
            // The buffer is volatile device memory: a conventional reset (link down, or the
            // pool moving the function to another host) leaves nothing of the last owner's.
            self.shared.buf().fill(0);
        }
    }
}
