//! Shared builders for the `pci_*` integration tests.
#![allow(dead_code)]

use pcietun::pci::{
    AerCap, AriCap, Bar, ConfigSpace, ExpressConfig, FunctionIds, MsiCap, MsixCap, PciExpressCap,
    PmCap, SlotConfig, SriovCap, SriovConfig,
};

/// An NVMe-like endpoint with every capability type: BAR0 64-bit 16K, BAR2 32-bit
/// prefetchable 1M, BAR3 I/O 32 bytes, 64K ROM; PM, MSI (64-bit, 4 vectors, maskable),
/// MSI-X (8 vectors, table at BAR0+0x2000, PBA at BAR0+0x3000), PCIe endpoint, AER, ARI,
/// SR-IOV.
pub fn full_endpoint() -> ConfigSpace {
    let mut c = ConfigSpace::endpoint(FunctionIds {
        vendor_id: 0x1b36,
        device_id: 0x0010,
        revision: 2,
        class_code: 0x010802,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x1100,
        interrupt_pin: 1,
        multifunction: false,
    });
    c.set_bar(
        0,
        Bar::Memory64 {
            size: 16 << 10,
            prefetchable: false,
        },
    )
    .unwrap();
    c.set_bar(
        2,
        Bar::Memory32 {
            size: 1 << 20,
            prefetchable: true,
        },
    )
    .unwrap();
    c.set_bar(3, Bar::Io { size: 32 }).unwrap();
    c.set_expansion_rom(64 << 10).unwrap();
    c.add_capability(Box::new(PmCap::new())).unwrap();
    c.add_capability(Box::new(MsiCap::new(4, true, true)))
        .unwrap();
    c.add_capability(Box::new(MsixCap::new(8, 0, 0x2000, 0, 0x3000)))
        .unwrap();
    c.add_capability(Box::new(PciExpressCap::new(ExpressConfig::default())))
        .unwrap();
    c.add_capability(Box::new(AerCap::new(false))).unwrap();
    c.add_capability(Box::new(AriCap::new(0))).unwrap();
    let mut vf_bars = [Bar::Unused; 6];
    vf_bars[0] = Bar::Memory64 {
        size: 16 << 10,
        prefetchable: false,
    };
    c.add_capability(Box::new(
        SriovCap::new(SriovConfig {
            initial_vfs: 4,
            total_vfs: 4,
            first_vf_offset: 1,
            vf_stride: 1,
            vf_device_id: 0x0011,
            supported_page_sizes: 0x553,
            vf_bars,
        })
        .unwrap(),
    ))
    .unwrap();
    c
}

/// A root port (type 1) with a hot-plug slot, MSI and AER.
pub fn root_port(slot: SlotConfig) -> ConfigSpace {
    let mut c = ConfigSpace::bridge(FunctionIds {
        vendor_id: 0x1b36,
        device_id: 0x000c,
        class_code: 0x060400,
        interrupt_pin: 1,
        ..FunctionIds::default()
    });
    c.add_capability(Box::new(PciExpressCap::new(ExpressConfig::root_port(
        1, slot,
    ))))
    .unwrap();
    c.add_capability(Box::new(MsiCap::new(1, true, false)))
        .unwrap();
    c.add_capability(Box::new(AerCap::new(true))).unwrap();
    c
}

/// Reads `tests/data/lspci/NAME`.
pub fn dump_text(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/lspci")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The real-card dumps shipped in `tests/data/lspci`.
pub const DUMPS: [&str; 4] = [
    "intel-82576-nic.txt",
    "amd-fiji-gpu.txt",
    "intel-sunrisepoint-root-port.txt",
    "vmware-nvme.txt",
];
