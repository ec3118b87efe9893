//! PCI / PCI Express configuration-space constants in one place.
//!
//! Offsets, capability IDs and bit masks from the PCI Local Bus Specification 3.0 (§6, type 0
//! header), the PCI-to-PCI Bridge Architecture Specification 1.2 (§3.2, type 1 header), the PCI
//! Bus Power Management Interface Specification 1.2, and the PCI Express Base Specification 4.0
//! (§7.5 PCI Express capability, §7.7 MSI/MSI-X, §7.8 AER, §9.3 SR-IOV, §7.8.7 ARI).
//! Cross-checked against Linux `include/uapi/linux/pci_regs.h`.

/// Size of PCI Express (extended) configuration space of one function.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Size of the conventional PCI configuration space (standard capabilities live below it).
pub const LEGACY_CONFIG_SIZE: usize = 256;
/// First offset of the extended capability list.
pub const EXT_CAP_START: usize = 0x100;
/// First offset standard capabilities may use (right after the 64-byte header).
pub const CAP_START: usize = 0x40;

/// Common header registers (both header types).
pub mod header {
    pub const VENDOR_ID: usize = 0x00;
    pub const DEVICE_ID: usize = 0x02;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const REVISION_ID: usize = 0x08;
    pub const CLASS_PROG: usize = 0x09;
    pub const CACHE_LINE_SIZE: usize = 0x0c;
    pub const LATENCY_TIMER: usize = 0x0d;
    pub const HEADER_TYPE: usize = 0x0e;
    pub const BIST: usize = 0x0f;
    pub const BAR0: usize = 0x10;
    pub const CAPABILITIES_POINTER: usize = 0x34;
    pub const INTERRUPT_LINE: usize = 0x3c;
    pub const INTERRUPT_PIN: usize = 0x3d;

    /// Type 0 only.
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    pub const SUBSYSTEM_ID: usize = 0x2e;
    pub const ROM_ADDRESS: usize = 0x30;

    /// Type 1 (bridge) only.
    pub const PRIMARY_BUS: usize = 0x18;
    pub const SECONDARY_BUS: usize = 0x19;
    pub const SUBORDINATE_BUS: usize = 0x1a;
    pub const SECONDARY_LATENCY: usize = 0x1b;
    pub const IO_BASE: usize = 0x1c;
    pub const IO_LIMIT: usize = 0x1d;
    pub const SECONDARY_STATUS: usize = 0x1e;
    pub const MEMORY_BASE: usize = 0x20;
    pub const MEMORY_LIMIT: usize = 0x22;
    pub const PREF_MEMORY_BASE: usize = 0x24;
    pub const PREF_MEMORY_LIMIT: usize = 0x26;
    pub const PREF_BASE_UPPER32: usize = 0x28;
    pub const PREF_LIMIT_UPPER32: usize = 0x2c;
    pub const IO_BASE_UPPER16: usize = 0x30;
    pub const IO_LIMIT_UPPER16: usize = 0x32;
    pub const BRIDGE_ROM_ADDRESS: usize = 0x38;
    pub const BRIDGE_CONTROL: usize = 0x3e;

    /// Header type register: layout in bits 6:0, multi-function in bit 7.
    pub const HEADER_TYPE_MASK: u8 = 0x7f;
    pub const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;
    pub const HEADER_TYPE_NORMAL: u8 = 0;
    pub const HEADER_TYPE_BRIDGE: u8 = 1;
}

/// Command register bits.
pub mod command {
    pub const IO_SPACE: u16 = 1 << 0;
    pub const MEMORY_SPACE: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const PARITY_ERROR_RESPONSE: u16 = 1 << 6;
    pub const SERR_ENABLE: u16 = 1 << 8;
    pub const INTX_DISABLE: u16 = 1 << 10;
    /// Every bit a PCI Express function implements as read-write.
    pub const WRITABLE: u16 =
        IO_SPACE | MEMORY_SPACE | BUS_MASTER | PARITY_ERROR_RESPONSE | SERR_ENABLE | INTX_DISABLE;
}

/// Status register bits (also the layout of the bridge secondary status register).
pub mod status {
    pub const INTERRUPT_STATUS: u16 = 1 << 3;
    pub const CAPABILITIES_LIST: u16 = 1 << 4;
    pub const MASTER_DATA_PARITY_ERROR: u16 = 1 << 8;
    pub const SIGNALED_TARGET_ABORT: u16 = 1 << 11;
    pub const RECEIVED_TARGET_ABORT: u16 = 1 << 12;
    pub const RECEIVED_MASTER_ABORT: u16 = 1 << 13;
    pub const SIGNALED_SYSTEM_ERROR: u16 = 1 << 14;
    pub const DETECTED_PARITY_ERROR: u16 = 1 << 15;
    /// The write-one-to-clear error bits.
    pub const RW1C: u16 = MASTER_DATA_PARITY_ERROR
        | SIGNALED_TARGET_ABORT
        | RECEIVED_TARGET_ABORT
        | RECEIVED_MASTER_ABORT
        | SIGNALED_SYSTEM_ERROR
        | DETECTED_PARITY_ERROR;
}

/// Base Address Register encoding.
pub mod bar {
    pub const IO_SPACE: u32 = 1 << 0;
    pub const MEM_TYPE_MASK: u32 = 0b110;
    pub const MEM_TYPE_64: u32 = 0b100;
    pub const MEM_PREFETCHABLE: u32 = 1 << 3;
    pub const MEM_ADDRESS_MASK: u32 = !0xf;
    pub const IO_ADDRESS_MASK: u32 = !0x3;
    pub const ROM_ENABLE: u32 = 1;
    pub const ROM_ADDRESS_MASK: u32 = !0x7ff;
}

/// Standard (conventional) capability IDs.
pub mod cap_id {
    pub const POWER_MANAGEMENT: u8 = 0x01;
    pub const MSI: u8 = 0x05;
    pub const VENDOR_SPECIFIC: u8 = 0x09;
    pub const SUBSYSTEM_VENDOR: u8 = 0x0d;
    pub const PCI_EXPRESS: u8 = 0x10;
    pub const MSIX: u8 = 0x11;
}

/// Extended capability IDs.
pub mod ext_cap_id {
    pub const AER: u16 = 0x0001;
    pub const DEVICE_SERIAL_NUMBER: u16 = 0x0003;
    pub const ACS: u16 = 0x000d;
    pub const ARI: u16 = 0x000e;
    pub const SRIOV: u16 = 0x0010;
    pub const RESIZABLE_BAR: u16 = 0x0015;
    pub const LTR: u16 = 0x0018;
    pub const SECONDARY_PCIE: u16 = 0x0019;
}

/// Power Management capability (PCI PM 1.2 §3.2).
pub mod pm {
    pub const PMC: usize = 0x02;
    pub const PMCSR: usize = 0x04;
    pub const LEN: usize = 8;
    pub const PMCSR_POWER_STATE: u16 = 0x0003;
    pub const PMCSR_NO_SOFT_RESET: u16 = 1 << 3;
    pub const PMCSR_PME_ENABLE: u16 = 1 << 8;
    pub const PMCSR_DATA_SELECT: u16 = 0xf << 9;
    pub const PMCSR_PME_STATUS: u16 = 1 << 15;
}

/// MSI capability (PCIe Base 4.0 §7.7.1).
pub mod msi {
    pub const CONTROL: usize = 0x02;
    pub const ADDRESS_LO: usize = 0x04;
    pub const CTRL_ENABLE: u16 = 1 << 0;
    pub const CTRL_MMC_SHIFT: u16 = 1;
    pub const CTRL_MME_SHIFT: u16 = 4;
    pub const CTRL_MME_MASK: u16 = 0x7 << 4;
    pub const CTRL_64BIT: u16 = 1 << 7;
    pub const CTRL_PER_VECTOR_MASK: u16 = 1 << 8;
}

/// MSI-X capability (PCIe Base 4.0 §7.7.2).
pub mod msix {
    pub const CONTROL: usize = 0x02;
    pub const TABLE: usize = 0x04;
    pub const PBA: usize = 0x08;
    pub const LEN: usize = 12;
    pub const CTRL_TABLE_SIZE: u16 = 0x07ff;
    pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;
    pub const CTRL_ENABLE: u16 = 1 << 15;
    pub const BIR_MASK: u32 = 0x7;
    pub const ENTRY_SIZE: usize = 16;
    pub const ENTRY_VECTOR_CONTROL: usize = 12;
    pub const VECTOR_MASKED: u32 = 1;
}

/// PCI Express capability (PCIe Base 4.0 §7.5.3).
pub mod exp {
    pub const FLAGS: usize = 0x02;
    pub const DEVCAP: usize = 0x04;
    pub const DEVCTL: usize = 0x08;
    pub const DEVSTA: usize = 0x0a;
    pub const LNKCAP: usize = 0x0c;
    pub const LNKCTL: usize = 0x10;
    pub const LNKSTA: usize = 0x12;
    pub const SLTCAP: usize = 0x14;
    pub const SLTCTL: usize = 0x18;
    pub const SLTSTA: usize = 0x1a;
    pub const RTCTL: usize = 0x1c;
    pub const RTCAP: usize = 0x1e;
    pub const RTSTA: usize = 0x20;
    pub const DEVCAP2: usize = 0x24;
    pub const DEVCTL2: usize = 0x28;
    pub const DEVSTA2: usize = 0x2a;
    pub const LNKCAP2: usize = 0x2c;
    pub const LNKCTL2: usize = 0x30;
    pub const LNKSTA2: usize = 0x32;
    /// Length of a version 2 capability; version 1 structures end at the root registers.
    pub const LEN_V2: usize = 0x3c;
    pub const LEN_V1: usize = 0x24;

    pub const FLAGS_VERSION_MASK: u16 = 0x000f;
    pub const FLAGS_TYPE_SHIFT: u16 = 4;
    pub const FLAGS_TYPE_MASK: u16 = 0x00f0;
    pub const FLAGS_SLOT_IMPLEMENTED: u16 = 1 << 8;
    pub const TYPE_ENDPOINT: u8 = 0x0;
    pub const TYPE_LEGACY_ENDPOINT: u8 = 0x1;
    pub const TYPE_ROOT_PORT: u8 = 0x4;
    pub const TYPE_UPSTREAM_PORT: u8 = 0x5;
    pub const TYPE_DOWNSTREAM_PORT: u8 = 0x6;
    pub const TYPE_RC_INTEGRATED: u8 = 0x9;

    pub const DEVCAP_MPS_MASK: u32 = 0x7;
    pub const DEVCAP_EXT_TAG: u32 = 1 << 5;
    pub const DEVCAP_RBE: u32 = 1 << 15;
    pub const DEVCAP_FLR: u32 = 1 << 28;

    pub const DEVCTL_ERR_REPORTING: u16 = 0x000f;
    pub const DEVCTL_RELAXED_ORDERING: u16 = 1 << 4;
    pub const DEVCTL_MPS_SHIFT: u16 = 5;
    pub const DEVCTL_MPS_MASK: u16 = 0x7 << 5;
    pub const DEVCTL_EXT_TAG: u16 = 1 << 8;
    pub const DEVCTL_PHANTOM: u16 = 1 << 9;
    pub const DEVCTL_AUX_PM: u16 = 1 << 10;
    pub const DEVCTL_NO_SNOOP: u16 = 1 << 11;
    pub const DEVCTL_MRRS_SHIFT: u16 = 12;
    pub const DEVCTL_MRRS_MASK: u16 = 0x7 << 12;
    /// Endpoints: Initiate Function Level Reset (always reads 0).
    /// Root ports: Bridge Configuration Retry Enable.
    pub const DEVCTL_BCR_FLR: u16 = 1 << 15;

    pub const DEVSTA_RW1C: u16 = 0x000f;

    pub const LNKCAP_SPEED_MASK: u32 = 0xf;
    pub const LNKCAP_WIDTH_SHIFT: u32 = 4;
    pub const LNKCAP_DLLLA_REPORTING: u32 = 1 << 20;
    pub const LNKCAP_PORT_SHIFT: u32 = 24;
    pub const LNKCTL_RETRAIN: u16 = 1 << 5;
    pub const LNKSTA_DLL_ACTIVE: u16 = 1 << 13;
    pub const LNKSTA_RW1C: u16 = 0xc000;

    pub const SLTCAP_ATTN_BUTTON: u32 = 1 << 0;
    pub const SLTCAP_POWER_CTRL: u32 = 1 << 1;
    pub const SLTCAP_ATTN_IND: u32 = 1 << 3;
    pub const SLTCAP_PWR_IND: u32 = 1 << 4;
    pub const SLTCAP_HP_SURPRISE: u32 = 1 << 5;
    pub const SLTCAP_HP_CAPABLE: u32 = 1 << 6;
    pub const SLTCAP_NO_CMD_COMPLETED: u32 = 1 << 18;
    pub const SLTCAP_PSN_SHIFT: u32 = 19;

    pub const SLTCTL_ATTN_BUTTON_EN: u16 = 1 << 0;
    pub const SLTCTL_PRESENCE_EN: u16 = 1 << 3;
    pub const SLTCTL_CMD_COMPLETED_EN: u16 = 1 << 4;
    pub const SLTCTL_HP_INT_EN: u16 = 1 << 5;
    pub const SLTCTL_DLLSC_EN: u16 = 1 << 12;
    pub const SLTCTL_WRITABLE: u16 = 0x1fff;

    pub const SLTSTA_ATTN_BUTTON: u16 = 1 << 0;
    pub const SLTSTA_POWER_FAULT: u16 = 1 << 1;
    pub const SLTSTA_MRL_CHANGED: u16 = 1 << 2;
    pub const SLTSTA_PRESENCE_CHANGED: u16 = 1 << 3;
    pub const SLTSTA_CMD_COMPLETED: u16 = 1 << 4;
    pub const SLTSTA_PRESENCE: u16 = 1 << 6;
    pub const SLTSTA_DLLSC: u16 = 1 << 8;
    pub const SLTSTA_RW1C: u16 = 0x011f;

    pub const RTSTA_PME: u32 = 1 << 16;

    pub const DEVCAP2_ARI_FORWARDING: u32 = 1 << 5;
    pub const DEVCAP2_10BIT_TAG_COMPLETER: u32 = 1 << 16;
    pub const DEVCAP2_10BIT_TAG_REQUESTER: u32 = 1 << 17;
    pub const DEVCTL2_ARI_FORWARDING: u16 = 1 << 5;
    pub const DEVCTL2_10BIT_TAG_REQUESTER: u16 = 1 << 12;
    pub const DEVCTL2_WRITABLE: u16 = 0xf7ff;
}

/// Advanced Error Reporting extended capability (PCIe Base 4.0 §7.8.4).
pub mod aer {
    pub const UNCOR_STATUS: usize = 0x04;
    pub const UNCOR_MASK: usize = 0x08;
    pub const UNCOR_SEVERITY: usize = 0x0c;
    pub const COR_STATUS: usize = 0x10;
    pub const COR_MASK: usize = 0x14;
    pub const CAP_CONTROL: usize = 0x18;
    pub const HEADER_LOG: usize = 0x1c;
    pub const ROOT_COMMAND: usize = 0x2c;
    pub const ROOT_STATUS: usize = 0x30;
    pub const ERROR_SOURCE: usize = 0x34;
    pub const LEN_ENDPOINT: usize = 0x2c;
    pub const LEN_ROOT_PORT: usize = 0x38;
    /// Implemented uncorrectable error bits (DLP … poisoned TLP egress blocked).
    pub const UNCOR_BITS: u32 = 0x07ff_f030;
    /// Implemented correctable error bits.
    pub const COR_BITS: u32 = 0x0000_f1c1;
    /// Writable bits of the capabilities-and-control register (the enables).
    pub const CAP_CONTROL_WRITABLE: u32 = (1 << 6) | (1 << 8) | (1 << 10);
    pub const ROOT_COMMAND_WRITABLE: u32 = 0x7;
    pub const ROOT_STATUS_RW1C: u32 = 0x7f;
    pub const UNCOR_SEVERITY_DEFAULT: u32 = 0x0046_2030;
    pub const COR_MASK_DEFAULT: u32 = 1 << 13;
}

/// Single Root I/O Virtualization extended capability (PCIe Base 4.0 §9.3.3).
pub mod sriov {
    pub const CAPABILITIES: usize = 0x04;
    pub const CONTROL: usize = 0x08;
    pub const STATUS: usize = 0x0a;
    pub const INITIAL_VFS: usize = 0x0c;
    pub const TOTAL_VFS: usize = 0x0e;
    pub const NUM_VFS: usize = 0x10;
    pub const FUNCTION_LINK: usize = 0x12;
    pub const FIRST_VF_OFFSET: usize = 0x14;
    pub const VF_STRIDE: usize = 0x16;
    pub const VF_DEVICE_ID: usize = 0x1a;
    pub const SUPPORTED_PAGE_SIZES: usize = 0x1c;
    pub const SYSTEM_PAGE_SIZE: usize = 0x20;
    pub const VF_BAR0: usize = 0x24;
    pub const MIGRATION_STATE: usize = 0x3c;
    pub const LEN: usize = 0x40;
    pub const CTRL_VF_ENABLE: u16 = 1 << 0;
    pub const CTRL_VF_MSE: u16 = 1 << 3;
    pub const CTRL_ARI_HIERARCHY: u16 = 1 << 4;
    pub const CTRL_WRITABLE: u16 = 0x001f;
}

/// Alternative Routing-ID Interpretation extended capability (PCIe Base 4.0 §7.8.7).
pub mod ari {
    pub const CAPABILITY: usize = 0x04;
    pub const CONTROL: usize = 0x06;
    pub const LEN: usize = 8;
    pub const CTRL_WRITABLE: u16 = 0x0073;
}
