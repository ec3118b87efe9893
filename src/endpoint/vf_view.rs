//! A virtual function presented as a standalone function, the way Linux `vfio-pci` presents
//! a VF to a virtual machine (`drivers/vfio/pci/vfio_pci_config.c`): the host it is assigned to
//! sees an ordinary type 0 function and can run the unmodified driver of the device class.
//!
//! A VF's own configuration space is not that (PCIe r5.0 §9.3.4): its Vendor and Device ID
//! read all-ones (the PF's VF Device ID names it, §9.3.3.11), it has no BAR registers (its
//! memory is its slice of the PF's VF BARs, §9.3.3.14, decoded while the PF's VF MSE is set,
//! §9.3.3.3.4), its Command register's Memory Space Enable is read-only zero and it has no
//! INTx. The view synthesises the header over it:
//!
//! | offset | what the host sees |
//! | --- | --- |
//! | 0x00 | Vendor ID of the PF, Device ID = the PF's VF Device ID |
//! | 0x04 | Command of the view's own (Memory Space, Bus Master, Parity/SERR, Interrupt Disable writable; I/O Space read-only zero), Status of the VF |
//! | 0x08, 0x2c | Revision, Class Code, Subsystem IDs of the VF |
//! | 0x10–0x24 | the VF BARs as ordinary BAR registers: same size, type and prefetchability, sizeable and programmable by that host |
//! | 0x0c, 0x3c | Cache Line Size, Interrupt Line of the view's own; Header Type 0, Interrupt Pin 0 |
//! | 0x34, 0x40–0xfff | the VF's own: its capability list (MSI-X, PCI Express with FLR, …) |
//!
//! The endpoint routes memory requests by the view's BARs — an access at view BAR *i* +
//! *offset* is the VF's BAR *i* at *offset*, i.e. its slice of the PF's VF BAR *i* — while the
//! view's Memory Space Enable *and* the PF's VF MSE are set; the VF's slice of the PF's own VF
//! BAR space stops decoding while the view exists. DMA and interrupts keep the VF's Routing ID.
//! Each view has its own header, so two hosts that each own one VF of the same PF never see
//! each other's BAR programming or Command bits. A Function Level Reset of the view (Initiate
//! FLR in the VF's PCI Express capability) resets the VF and the view's header alike.

use thiserror::Error;

use super::decode::{BarKind, BarSpec, Decode};
use super::device::Device;
use super::wire::Bdf;
use crate::pci::spec::{command, header as h, sriov};
use crate::pci::{Bar, ConfigSpace, FunctionIds, PciError};

/// Why a virtual function could not be enabled, presented or withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VfError {
    /// No physical function at that device and function number.
    #[error("no physical function at {0}")]
    NoSuchFunction(Bdf),
    /// The function has no SR-IOV capability.
    #[error("{0} has no SR-IOV capability")]
    NotSriov(Bdf),
    /// More VFs asked for than the PF offers.
    #[error("{pf} offers {total} virtual functions (TotalVFs); {requested} asked for")]
    TooManyVfs {
        /// The PF.
        pf: Bdf,
        /// NumVFs asked for.
        requested: u16,
        /// TotalVFs.
        total: u16,
    },
    /// The VF does not exist now.
    #[error(
        "VF {index} of {pf} does not exist (VF Enable clear, index not below NumVFs, or its \
         Routing ID taken by another function)"
    )]
    NoSuchVf {
        /// The PF.
        pf: Bdf,
        /// 0-based VF index.
        index: u16,
    },
    /// The function is not a VF presented standalone.
    #[error("{0} is not a virtual function presented standalone")]
    NotAView(Bdf),
    /// A VF BAR cannot be presented as an ordinary BAR.
    #[error("VF BAR {index} of {pf} cannot be presented as a BAR: {source}")]
    Bar {
        /// The PF.
        pf: Bdf,
        /// BAR index.
        index: usize,
        /// Why.
        source: PciError,
    },
}

/// What the view takes from the PF: its Vendor ID and its SR-IOV capability's VF Device ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PfIds {
    pub(crate) vendor: u16,
    pub(crate) vf_device: u16,
}

/// Command bits the view implements as read-write (no I/O BARs: I/O Space stays zero).
const VIEW_COMMAND: u16 = command::MEMORY_SPACE
    | command::BUS_MASTER
    | command::PARITY_ERROR_RESPONSE
    | command::SERR_ENABLE
    | command::INTX_DISABLE;

/// The synthesised header of one VF presented standalone.
#[derive(Debug)]
pub(crate) struct VfView {
    header: ConfigSpace,
    specs: [Option<BarSpec>; 6],
}

impl VfView {
    /// A view of the VF whose device is `vf`, under a PF with `ids` whose VF BARs are
    /// `vf_bars` (the size of one VF's slice each).
    pub(crate) fn new(
        pf: Bdf,
        ids: PfIds,
        vf: &mut dyn Device,
        vf_bars: [Option<BarSpec>; 6],
    ) -> Result<VfView, VfError> {
        let class_rev = vf.config_read(h::REVISION_ID as u16);
        let subsystem = vf.config_read(h::SUBSYSTEM_VENDOR_ID as u16);
        let mut header = ConfigSpace::endpoint(FunctionIds {
            vendor_id: ids.vendor,
            device_id: ids.vf_device,
            revision: class_rev as u8,
            class_code: class_rev >> 8,
            subsystem_vendor_id: subsystem as u16,
            subsystem_id: (subsystem >> 16) as u16,
            interrupt_pin: 0,
            multifunction: false,
        });
        let mut specs = [None; 6];
        for (index, spec) in vf_bars.iter().enumerate() {
            let Some(spec) = *spec else { continue };
            let bar = match spec.kind {
                BarKind::Mem64 => Bar::Memory64 {
                    size: spec.size,
                    prefetchable: spec.prefetchable,
                },
                BarKind::Mem32 => Bar::Memory32 {
                    size: u32::try_from(spec.size).unwrap_or(0),
                    prefetchable: spec.prefetchable,
                },
                // VF BARs are memory BARs (§9.3.3.14); the SR-IOV capability cannot say
                // otherwise, so this cannot come from a real PF.
                BarKind::Io => continue,
            };
            header
                .set_bar(index, bar)
                .map_err(|source| VfError::Bar { pf, index, source })?;
            specs[index] = Some(spec);
        }
        header
            .regs_mut()
            .set_rw(h::COMMAND, 2, u64::from(VIEW_COMMAND));
        Ok(VfView { header, specs })
    }

    /// The configuration dword at `reg` as the host sees it.
    pub(crate) fn config_read(&self, vf: &mut dyn Device, reg: u16) -> u32 {
        let reg = reg & 0xffc;
        match usize::from(reg) {
            h::COMMAND => {
                (self.header.read_u32(h::COMMAND) & 0xffff) | (vf.config_read(reg) & !0xffff)
            }
            h::CAPABILITIES_POINTER => vf.config_read(reg),
            r if r < 0x40 => self.header.read_u32(r),
            _ => vf.config_read(reg),
        }
    }

    /// A configuration write from the host. `true` when it initiated a Function Level Reset.
    pub(crate) fn config_write(
        &mut self,
        vf: &mut dyn Device,
        reg: u16,
        value: u32,
        be: u8,
    ) -> bool {
        let reg = reg & 0xffc;
        match usize::from(reg) {
            h::COMMAND => {
                self.header.write_dword(h::COMMAND, value, be & 0x3);
                // The VF's own Command register follows (its Bus Master Enable is what the
                // model itself sees), and its Status takes the RW1C writes.
                vf.config_write(reg, value, be)
            }
            h::CAPABILITIES_POINTER => false,
            r if r < 0x40 => {
                self.header.write_dword(r, value, be);
                false
            }
            _ => vf.config_write(reg, value, be),
        }
    }

    /// Route by the view: its BARs, its Memory Space Enable (and the PF's VF MSE), its Bus
    /// Master Enable; no I/O, no INTx, not a PF.
    pub(crate) fn apply(&self, d: &mut Decode, vf_mse: bool) {
        d.bars = [None; 6];
        for (i, spec) in self.specs.iter().enumerate() {
            if let (Some(spec), Some(b)) = (spec, self.header.bar(i)) {
                d.bars[i] = Some((*spec, b.address));
            }
        }
        d.mem_enable = self.header.memory_enabled() && vf_mse;
        d.io_enable = false;
        d.bus_master = self.header.bus_master_enabled();
        d.intx_disable = true;
        d.int_pin = 0;
        d.sriov = None;
    }

    /// Power-on state (Function Level Reset or conventional reset of the VF).
    pub(crate) fn reset(&mut self) {
        self.header.reset();
    }
}

/// The offset of `device`'s SR-IOV extended capability, walking the extended list from 0x100
/// as an OS does (bounded: a looping list ends the walk).
pub(crate) fn find_sriov(device: &mut dyn Device) -> Option<u16> {
    let mut at = 0x100u16;
    for _ in 0..(4096 / 4) {
        let hdr = device.config_read(at);
        if hdr == 0 || hdr == 0xffff_ffff {
            return None;
        }
        if hdr & 0xffff == u32::from(crate::pci::spec::ext_cap_id::SRIOV) {
            return Some(at);
        }
        let next = ((hdr >> 20) & 0xffc) as u16;
        if next < 0x100 {
            return None;
        }
        at = next;
    }
    None
}

/// The PF's identity as its views present it.
pub(crate) fn pf_ids(pf: &mut dyn Device) -> Option<PfIds> {
    let at = find_sriov(pf)?;
    // VF Device ID is the upper half of the dword at 0x18 of the capability.
    let dw = (sriov::VF_DEVICE_ID & !3) as u16;
    let vf_device = pf.config_read(at + dw) >> 16;
    Some(PfIds {
        vendor: pf.config_read(0) as u16,
        vf_device: vf_device as u16,
    })
}
