//! An in-memory PCI function: the reference [`VfioDevice`] the vfio-user server is tested against
//! before any tunnel is involved (PCI Local Bus Spec 3.0 §6.1 type 0 header, §6.8.2 MSI-X
//! capability; a tiny register file in BAR0 for doorbells and DMA).
//!
//! BAR0 (4 KiB, 32-bit memory) layout:
//!
//! | offset | register |
//! | --- | --- |
//! | 0x000..0x100 | scratch RAM (read/write) |
//! | 0x100 | doorbell: writing `v` raises MSI-X vector `v` (or INTx if `v == 0xffff`) |
//! | 0x200 | DMA address (u64) |
//! | 0x208 | DMA length (u32, at most 256) |
//! | 0x20c | DMA command: 1 = scratch → host memory, 2 = host memory → scratch |
//! | 0x210 | DMA status: 0 = ok, 1 = fault (outside the DMA windows) |
//! | 0x800 | MSI-X table (4 entries), 0x900 PBA |

use super::{FunctionContext, IrqIndex, RegionDesc, VfioDevice, VfioDeviceError, CONFIG_REGION};

const BAR0_SIZE: u64 = 4096;
const CONFIG_SIZE: usize = 256;
const MSIX_CAP: usize = 0x40;
/// Doorbell register offset in BAR0.
pub const DOORBELL: u64 = 0x100;
/// DMA address register.
pub const DMA_ADDR: u64 = 0x200;
/// DMA length register.
pub const DMA_LEN: u64 = 0x208;
/// DMA command register.
pub const DMA_CMD: u64 = 0x20c;
/// DMA status register.
pub const DMA_STATUS: u64 = 0x210;
/// MSI-X vectors.
pub const MSIX_VECTORS: u32 = 4;

/// The in-memory function.
#[derive(Debug)]
pub struct MemDevice {
    config: [u8; CONFIG_SIZE],
    bar0: Vec<u8>,
    bar0_size_probe: bool,
    ctx: FunctionContext,
    resets: u32,
}

impl MemDevice {
    /// A function with these IDs, its interrupts and DMA windows in `ctx` (which should have
    /// 1 INTx and [`MSIX_VECTORS`] MSI-X vectors, see [`MemDevice::irq_counts`]).
    pub fn new(vendor: u16, device: u16, ctx: FunctionContext) -> Self {
        let mut c = [0u8; CONFIG_SIZE];
        c[0..2].copy_from_slice(&vendor.to_le_bytes());
        c[2..4].copy_from_slice(&device.to_le_bytes());
        c[6] = 0x10; // status: capabilities list
        c[8] = 1; // revision
        c[9..12].copy_from_slice(&[0x00, 0x80, 0xff]); // class ff/80/00: unassigned "other"
        c[0x34] = MSIX_CAP as u8;
        c[0x3d] = 1; // INTA#
        c[MSIX_CAP] = 0x11;
        c[MSIX_CAP + 2..MSIX_CAP + 4].copy_from_slice(&((MSIX_VECTORS - 1) as u16).to_le_bytes());
        c[MSIX_CAP + 4..MSIX_CAP + 8].copy_from_slice(&0x800u32.to_le_bytes()); // BIR 0
        c[MSIX_CAP + 8..MSIX_CAP + 12].copy_from_slice(&0x900u32.to_le_bytes());
        Self {
            config: c,
            bar0: vec![0; BAR0_SIZE as usize],
            bar0_size_probe: false,
            ctx,
            resets: 0,
        }
    }

    /// Interrupt vectors per index this device needs in its [`FunctionContext`].
    pub const fn irq_counts() -> [u32; IrqIndex::COUNT] {
        [1, 0, MSIX_VECTORS, 0, 0]
    }

    /// How many resets the device has seen.
    pub fn resets(&self) -> u32 {
        self.resets
    }

    fn reg32(&self, off: u64) -> u32 {
        let o = off as usize;
        u32::from_le_bytes([
            self.bar0[o],
            self.bar0[o + 1],
            self.bar0[o + 2],
            self.bar0[o + 3],
        ])
    }

    fn run_dma(&mut self) {
        let o = DMA_ADDR as usize;
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.bar0[o..o + 8]);
        let addr = u64::from_le_bytes(a);
        let len = (self.reg32(DMA_LEN) as usize).min(256);
        let cmd = self.reg32(DMA_CMD);
        let r = match cmd {
            1 => self.ctx.dma.write(addr, &self.bar0[..len]),
            2 => {
                let mut buf = [0u8; 256];
                let r = self.ctx.dma.read(addr, &mut buf[..len]);
                if r.is_ok() {
                    self.bar0[..len].copy_from_slice(&buf[..len]);
                }
                r
            }
            _ => Ok(()),
        };
        let status: u32 = if r.is_ok() { 0 } else { 1 };
        let s = DMA_STATUS as usize;
        self.bar0[s..s + 4].copy_from_slice(&status.to_le_bytes());
    }
}

impl VfioDevice for MemDevice {
    fn region(&self, index: u32) -> RegionDesc {
        match index {
            0 => RegionDesc::rw(BAR0_SIZE),
            CONFIG_REGION => RegionDesc::rw(CONFIG_SIZE as u64),
            _ => RegionDesc::NONE,
        }
    }

    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), VfioDeviceError> {
        let o = offset as usize;
        match index {
            0 => data.copy_from_slice(&self.bar0[o..o + data.len()]),
            CONFIG_REGION => {
                let mut c = self.config;
                if self.bar0_size_probe {
                    c[0x10..0x14].copy_from_slice(&(!(BAR0_SIZE as u32 - 1)).to_le_bytes());
                }
                data.copy_from_slice(&c[o..o + data.len()]);
            }
            _ => {
                return Err(VfioDeviceError::BadAccess {
                    region: index,
                    offset,
                    len: data.len(),
                })
            }
        }
        Ok(())
    }

    fn region_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), VfioDeviceError> {
        let o = offset as usize;
        match index {
            0 => {
                self.bar0[o..o + data.len()].copy_from_slice(data);
                if offset == DOORBELL && data.len() == 4 {
                    let v = self.reg32(DOORBELL);
                    if v == 0xffff {
                        self.ctx.irqs.set_intx(true);
                    } else {
                        self.ctx.irqs.trigger(IrqIndex::Msix, v);
                    }
                } else if offset == DMA_CMD && data.len() == 4 {
                    self.run_dma();
                }
            }
            CONFIG_REGION => {
                for (i, &b) in data.iter().enumerate() {
                    let at = o + i;
                    match at {
                        // command register, latency/cache line
                        0x04 | 0x05 | 0x0c | 0x0d | 0x3c => self.config[at] = b,
                        0x10..=0x13 => {
                            self.config[at] = b;
                        }
                        // MSI-X message control: enable and function mask bits
                        x if x == MSIX_CAP + 3 => self.config[at] = b & 0xc0,
                        _ => {}
                    }
                }
                if (o..o + data.len()).any(|a| (0x10..0x14).contains(&a)) {
                    let bar = u32::from_le_bytes([
                        self.config[0x10],
                        self.config[0x11],
                        self.config[0x12],
                        self.config[0x13],
                    ]);
                    self.bar0_size_probe = bar == 0xffff_ffff;
                    let base = bar & !(BAR0_SIZE as u32 - 1);
                    self.config[0x10..0x14].copy_from_slice(&base.to_le_bytes());
                }
            }
            _ => {
                return Err(VfioDeviceError::BadAccess {
                    region: index,
                    offset,
                    len: data.len(),
                })
            }
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), VfioDeviceError> {
        self.resets += 1;
        self.bar0.iter_mut().for_each(|b| *b = 0);
        self.config[4] = 0;
        self.config[5] = 0;
        Ok(())
    }
}
