//! The DMA engine test device: moves N bytes between its own buffer and host memory, in either
//! direction, and interrupts on completion. What the benchmarks drive to measure the tunnel's
//! DMA throughput and interrupt latency. (A pcietun-defined device; PCI header per PCI Local
//! Bus 3.0 §6.1, class 0x088000 "other system peripheral", MSI-X per PCIe r5.0 §7.7.2.)
//!
//! BAR0 (64-bit, 8 KiB) registers, all 32-bit little-endian:
//!
//! | offset | name        | access | meaning |
//! |--------|-------------|--------|---------|
//! | 0x00   | ID          | RO     | `0x31414d44` ("DMA1") |
//! | 0x04   | VERSION     | RO     | 1 |
//! | 0x08   | BUF_SIZE_LO | RO     | buffer (BAR2) size, low 32 bits |
//! | 0x0c   | BUF_SIZE_HI | RO     | high 32 bits |
//! | 0x10   | HOST_ADDR_LO| RW     | host bus address, low 32 bits |
//! | 0x14   | HOST_ADDR_HI| RW     | high 32 bits |
//! | 0x18   | BUF_OFFSET  | RW     | offset in the device buffer |
//! | 0x1c   | LENGTH      | RW     | bytes to move |
//! | 0x20   | CONTROL     | RW     | bit 0 DIR: 0 host→buffer (DMA read), 1 buffer→host (DMA write); bit 1 IRQ_EN |
//! | 0x24   | DOORBELL    | WO     | write any value: start (ignored while busy) |
//! | 0x28   | STATUS      | RW1C   | bit 0 BUSY (RO), bit 1 DONE, bit 2 ERROR; bits 15:8 error code (RO) |
//! | 0x2c   | COMPLETIONS | RO     | transfers completed (successful or not) |
//! | 0x30   | BYTES_LO    | RO     | total bytes moved, low 32 bits |
//! | 0x34   | BYTES_HI    | RO     | high 32 bits |
//! | 0x38   | LAST_NS     | RO     | device-side duration of the last transfer in ns (saturating) |
//!
//! Error codes: 1 range (offset + length beyond the buffer, or zero length), 2 Bus Master
//! Enable clear, 3 completion timeout, 4 host refused (UR/CA/poisoned/malformed).
//! MSI-X: 1 vector, table at BAR0 0x1000, PBA at 0x1800. Without MSI-X, INTx (INTA) is asserted
//! while IRQ_EN and STATUS.DONE or ERROR are set; clearing them (RW1C) deasserts it.
//! BAR2 (64-bit prefetchable) is the buffer itself, readable and writable by the host, with
//! 4- and 8-byte AtomicOps (FetchAdd, Swap, CAS).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use super::device::{
    apply_atomic, AtomicOp, Decode, Device, DeviceContext, DeviceError, DmaError, InterruptHandle,
    MsixLayout, ResetKind,
};
use super::pcicfg::{self, build_config, pci_decode, ModelConfig};
use crate::pci::{Bar, ConfigSpace, FunctionIds, SriovConfig};

/// Register offsets.
pub mod reg {
    /// Identification.
    pub const ID: u64 = 0x00;
    /// Version.
    pub const VERSION: u64 = 0x04;
    /// Buffer size, low.
    pub const BUF_SIZE_LO: u64 = 0x08;
    /// Buffer size, high.
    pub const BUF_SIZE_HI: u64 = 0x0c;
    /// Host address, low.
    pub const HOST_ADDR_LO: u64 = 0x10;
    /// Host address, high.
    pub const HOST_ADDR_HI: u64 = 0x14;
    /// Offset in the buffer.
    pub const BUF_OFFSET: u64 = 0x18;
    /// Length in bytes.
    pub const LENGTH: u64 = 0x1c;
    /// Control: direction, interrupt enable.
    pub const CONTROL: u64 = 0x20;
    /// Doorbell.
    pub const DOORBELL: u64 = 0x24;
    /// Status.
    pub const STATUS: u64 = 0x28;
    /// Completed transfers.
    pub const COMPLETIONS: u64 = 0x2c;
    /// Bytes moved, low.
    pub const BYTES_LO: u64 = 0x30;
    /// Bytes moved, high.
    pub const BYTES_HI: u64 = 0x34;
    /// Last transfer's duration in ns.
    pub const LAST_NS: u64 = 0x38;
}

/// ID register value.
pub const ID_VALUE: u32 = 0x3141_4d44;
/// CONTROL: direction buffer→host.
pub const CONTROL_TO_HOST: u32 = 1;
/// CONTROL: interrupt enable.
pub const CONTROL_IRQ: u32 = 2;
/// STATUS bits.
pub const STATUS_BUSY: u32 = 1;
/// STATUS: done.
pub const STATUS_DONE: u32 = 2;
/// STATUS: error.
pub const STATUS_ERROR: u32 = 4;
/// Default PCI device ID.
pub const DEFAULT_DEVICE: u16 = 0x0e02;
/// Device ID of its SR-IOV virtual functions.
pub const VF_DEVICE: u16 = 0x0e03;

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
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn buf(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
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
            (super::nvme::DEFAULT_VENDOR, DEFAULT_DEVICE)
        };
        let mut bars = [Bar::Unused; 6];
        bars[0] = Bar::Memory64 {
            size: 0x2000,
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
                class_code: 0x08_80_00,
                subsystem_vendor_id: super::nvme::DEFAULT_VENDOR,
                subsystem_id: DEFAULT_DEVICE,
                interrupt_pin: u8::from(!vf),
                multifunction: false,
            },
            bars,
            msix: Some(MsixLayout {
                vectors: 1,
                table_bar: 0,
                table_offset: 0x1000,
                pba_bar: 0,
                pba_offset: 0x1800,
            }),
            mps_supported: 256,
            sriov: (total_vfs > 0).then_some(SriovConfig {
                initial_vfs: total_vfs,
                total_vfs,
                first_vf_offset: 1,
                vf_stride: 1,
                vf_device_id: VF_DEVICE,
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
                    r.control & CONTROL_IRQ != 0 && r.status & (STATUS_DONE | STATUS_ERROR) != 0,
                );
            }
        }
    }

    fn read_reg(&self, off: u64) -> u32 {
        let r = self.shared.regs();
        let size = self.shared.buf().len() as u64;
        match off {
            reg::ID => ID_VALUE,
            reg::VERSION => 1,
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
                r.control = m(r.control) & 3;
                self.sync_intx(&r);
            }
            reg::DOORBELL if r.status & STATUS_BUSY == 0 => {
                r.status = (r.status & !(0xff00 | STATUS_DONE | STATUS_ERROR)) | STATUS_BUSY;
                r.start = true;
                self.sync_intx(&r);
                self.shared.wake.notify_all();
            }
            reg::STATUS => {
                let clear = v & mask & (STATUS_DONE | STATUS_ERROR);
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
                r = shared.wake.wait(r).unwrap_or_else(|e| e.into_inner());
            }
            if r.stop {
                return;
            }
            r.start = false;
            (
                r.host_addr,
                r.buf_offset as usize,
                r.length as usize,
                r.control & CONTROL_TO_HOST != 0,
                r.epoch,
            )
        };
        let t0 = Instant::now();
        let buf_len = shared.buf().len();
        let result: Result<(), u32> =
            if len == 0 || off.checked_add(len).is_none_or(|e| e > buf_len) {
                Err(1)
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
        r.status &= !STATUS_BUSY;
        match result {
            Ok(()) => {
                r.bytes += len as u64;
                r.status |= STATUS_DONE;
            }
            Err(code) => r.status |= STATUS_ERROR | (code << 8),
        }
        if r.control & CONTROL_IRQ != 0 {
            if ctx.irq.msix_enabled() {
                ctx.irq.signal_msix(0);
            } else {
                ctx.irq.set_intx(true);
            }
        }
    }
}

fn dma_code(e: DmaError) -> u32 {
    match e {
        DmaError::BusMasterDisabled => 2,
        DmaError::Timeout { .. } => 3,
        _ => 4,
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

    fn reset(&mut self, _kind: ResetKind) {
        self.cfg.reset();
        let mut r = self.shared.regs();
        let stop = r.stop;
        let epoch = r.epoch + 1;
        *r = Regs {
            stop,
            epoch,
            ..Regs::default()
        };
    }
}
