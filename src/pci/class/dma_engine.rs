//! Register interface of the DMA engine test device (a pcietun-defined device; its reference is
//! docs/appliance.md, "The DMA engine test device"): what the model
//! (`src/endpoint/dma_engine.rs`) and its driver (`src/drivers/dma_engine.rs`) share.
//!
//! PCI face: class 0x088000 ("other system peripheral"), vendor 0x1b36, device 0x0e02 (its
//! SR-IOV virtual functions 0x0e03). BAR0 (64-bit, 8 KiB) holds the registers below, all
//! 32-bit little-endian, and the MSI-X table (one vector) at 0x1000 with its PBA at 0x1800;
//! BAR2 (64-bit prefetchable) is the device's buffer itself.
//!
//! | offset | register     | access | meaning |
//! |--------|--------------|--------|---------|
//! | 0x00   | ID           | RO     | [`ID_VALUE`] (`"DMA1"`) |
//! | 0x04   | VERSION      | RO     | [`VERSION_VALUE`] |
//! | 0x08   | BUF_SIZE_LO  | RO     | buffer (BAR2) size, low 32 bits |
//! | 0x0c   | BUF_SIZE_HI  | RO     | high 32 bits |
//! | 0x10   | HOST_ADDR_LO | RW     | host bus address, low 32 bits |
//! | 0x14   | HOST_ADDR_HI | RW     | high 32 bits |
//! | 0x18   | BUF_OFFSET   | RW     | offset in the device buffer |
//! | 0x1c   | LENGTH       | RW     | bytes to move |
//! | 0x20   | CONTROL      | RW     | [`control`] bits: direction, interrupt enable |
//! | 0x24   | DOORBELL     | WO     | any write starts the transfer (ignored while busy) |
//! | 0x28   | STATUS       | RW1C   | [`status`] bits: BUSY (RO), DONE, ERROR; error code in 15:8 (RO) |
//! | 0x2c   | COMPLETIONS  | RO     | transfers finished (successful or not) |
//! | 0x30   | BYTES_LO     | RO     | total bytes moved, low 32 bits |
//! | 0x34   | BYTES_HI     | RO     | high 32 bits |
//! | 0x38   | LAST_NS      | RO     | device-side duration of the last transfer in ns (saturating) |
//!
//! Without MSI-X, INTx (INTA) is asserted while CONTROL.IRQ_EN and STATUS.DONE or ERROR are
//! set; clearing them (RW1C) deasserts it.

use super::DEFAULT_VENDOR_ID;

/// PCI class code (base 08h system peripheral, sub-class 80h other).
pub const CLASS_CODE: u32 = 0x08_80_00;
/// PCI vendor ID of the device.
pub const VENDOR_ID: u16 = DEFAULT_VENDOR_ID;
/// PCI device ID of the device (and its SR-IOV physical function).
pub const DEVICE_ID: u16 = 0x0e02;
/// Device ID of its SR-IOV virtual functions (the PF's VF Device ID register).
pub const VF_DEVICE_ID: u16 = 0x0e03;

/// BAR holding the registers (and the MSI-X table and PBA).
pub const REGS_BAR: u8 = 0;
/// Size of the register BAR.
pub const REGS_BAR_SIZE: u64 = 0x2000;
/// BAR that is the device's buffer.
pub const BUFFER_BAR: u8 = 2;
/// MSI-X: vectors, table offset and PBA offset in BAR0.
pub const MSIX_VECTORS: u16 = 1;
/// MSI-X table offset in BAR0.
pub const MSIX_TABLE: u32 = 0x1000;
/// MSI-X PBA offset in BAR0.
pub const MSIX_PBA: u32 = 0x1800;

/// Value of the ID register: `"DMA1"` in ASCII, little-endian.
pub const ID_VALUE: u32 = 0x3141_4d44;
/// Value of the VERSION register.
pub const VERSION_VALUE: u32 = 1;

/// BAR0 register offsets.
pub mod reg {
    /// Identification ([`ID_VALUE`](super::ID_VALUE)).
    pub const ID: u64 = 0x00;
    /// Version.
    pub const VERSION: u64 = 0x04;
    /// Buffer size, low 32 bits.
    pub const BUF_SIZE_LO: u64 = 0x08;
    /// Buffer size, high 32 bits.
    pub const BUF_SIZE_HI: u64 = 0x0c;
    /// Host bus address, low 32 bits.
    pub const HOST_ADDR_LO: u64 = 0x10;
    /// Host bus address, high 32 bits.
    pub const HOST_ADDR_HI: u64 = 0x14;
    /// Offset in the device buffer.
    pub const BUF_OFFSET: u64 = 0x18;
    /// Bytes to move.
    pub const LENGTH: u64 = 0x1c;
    /// Direction and interrupt enable ([`control`](super::control)).
    pub const CONTROL: u64 = 0x20;
    /// Any write starts a transfer.
    pub const DOORBELL: u64 = 0x24;
    /// Busy / done / error and the error code ([`status`](super::status)).
    pub const STATUS: u64 = 0x28;
    /// Transfers finished.
    pub const COMPLETIONS: u64 = 0x2c;
    /// Bytes moved in total, low 32 bits.
    pub const BYTES_LO: u64 = 0x30;
    /// Bytes moved in total, high 32 bits.
    pub const BYTES_HI: u64 = 0x34;
    /// Device-side duration of the last transfer in ns.
    pub const LAST_NS: u64 = 0x38;
}

/// CONTROL register bits.
pub mod control {
    /// Direction: set = buffer → host (a DMA write), clear = host → buffer (a DMA read).
    pub const TO_HOST: u32 = 1 << 0;
    /// Interrupt when the transfer finishes.
    pub const IRQ_EN: u32 = 1 << 1;
    /// The bits that exist (the rest read 0).
    pub const WRITABLE: u32 = TO_HOST | IRQ_EN;
}

/// STATUS register bits.
pub mod status {
    /// A transfer is running (read-only).
    pub const BUSY: u32 = 1 << 0;
    /// The last transfer finished successfully (RW1C).
    pub const DONE: u32 = 1 << 1;
    /// The last transfer failed (RW1C); its [`ErrorCode`](super::ErrorCode) is in bits 15:8.
    pub const ERROR: u32 = 1 << 2;
    /// Position of the error code.
    pub const CODE_SHIFT: u32 = 8;
    /// Mask of the error code.
    pub const CODE_MASK: u32 = 0xff << CODE_SHIFT;

    /// The error code field of a STATUS value.
    pub const fn code(status: u32) -> u8 {
        ((status & CODE_MASK) >> CODE_SHIFT) as u8
    }
}

/// Why a transfer failed (STATUS bits 15:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Offset + length beyond the buffer, or zero length.
    Range,
    /// Bus Master Enable is clear.
    BusMasterDisabled,
    /// A DMA read got no completion in time.
    CompletionTimeout,
    /// The host refused the DMA (Unsupported Request, Completer Abort, poisoned, malformed).
    HostRefused,
    /// A code this version does not define.
    Other(u8),
}

impl ErrorCode {
    /// The code as the register holds it.
    pub const fn code(self) -> u8 {
        match self {
            ErrorCode::Range => 1,
            ErrorCode::BusMasterDisabled => 2,
            ErrorCode::CompletionTimeout => 3,
            ErrorCode::HostRefused => 4,
            ErrorCode::Other(c) => c,
        }
    }

    /// Decode a register value.
    pub const fn from_code(code: u8) -> ErrorCode {
        match code {
            1 => ErrorCode::Range,
            2 => ErrorCode::BusMasterDisabled,
            3 => ErrorCode::CompletionTimeout,
            4 => ErrorCode::HostRefused,
            c => ErrorCode::Other(c),
        }
    }

    /// STATUS bits 15:8 holding this code.
    pub const fn status_bits(self) -> u32 {
        (self.code() as u32) << status::CODE_SHIFT
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorCode::Range => write!(f, "range (beyond the buffer or zero length)"),
            ErrorCode::BusMasterDisabled => write!(f, "bus mastering off"),
            ErrorCode::CompletionTimeout => write!(f, "completion timeout"),
            ErrorCode::HostRefused => write!(f, "host refused the DMA"),
            ErrorCode::Other(c) => write!(f, "unknown error code {c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_register_spells_dma1() {
        assert_eq!(&ID_VALUE.to_le_bytes(), b"DMA1");
    }

    #[test]
    fn error_codes_round_trip_and_sit_in_bits_15_8() {
        for c in 0..=255u8 {
            assert_eq!(ErrorCode::from_code(c).code(), c);
        }
        let s = status::ERROR | ErrorCode::HostRefused.status_bits();
        assert_eq!(s, 0x0404);
        assert_eq!(status::code(s), 4);
        assert_eq!(
            ErrorCode::from_code(status::code(s)),
            ErrorCode::HostRefused
        );
    }

    #[test]
    fn registers_are_the_documented_offsets() {
        // docs/appliance.md's table, in order: 15 DWs from 0x00 to 0x38.
        let regs = [
            reg::ID,
            reg::VERSION,
            reg::BUF_SIZE_LO,
            reg::BUF_SIZE_HI,
            reg::HOST_ADDR_LO,
            reg::HOST_ADDR_HI,
            reg::BUF_OFFSET,
            reg::LENGTH,
            reg::CONTROL,
            reg::DOORBELL,
            reg::STATUS,
            reg::COMPLETIONS,
            reg::BYTES_LO,
            reg::BYTES_HI,
            reg::LAST_NS,
        ];
        for (i, r) in regs.iter().enumerate() {
            assert_eq!(*r, 4 * i as u64);
        }
        assert!(u64::from(MSIX_TABLE) >= 4 * regs.len() as u64);
        assert!(u64::from(MSIX_PBA) < REGS_BAR_SIZE);
    }
}
