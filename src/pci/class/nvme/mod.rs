//! NVM Express register interface (NVM Express Base Specification 1.4c): what the NVMe
//! controller model (`src/endpoint/nvme`) and the user-space NVMe driver
//! (`src/drivers/nvme/`) share.
//!
//! * This file: the PCI class code (§2.1.5), the controller registers of BAR0 (§3.1) as
//!   offsets in [`reg`] and their fields in [`cap`], [`vs`], [`cc`], [`csts`], [`aqa`];
//!   opcodes (§5, §6), Identify CNS values (§5.15), log page and feature identifiers (§5.14,
//!   §5.21).
//! * [`queue`]: submission and completion queue entries ([`Sqe`], [`Cqe`], §4.2, §4.6), the
//!   status field ([`Status`], §4.6.1), and the command-specific dwords of the commands both
//!   sides use.
//! * [`identify`]: the Identify Controller and Identify Namespace data structures, the
//!   namespace identification descriptors and the log pages (§5.15.2, §5.14.1).
//!
//! Register fields are `const fn` getters over the raw register value, and shift/mask
//! constants for building one, so a driver's write and the model's decode of the same field
//! are spelled the same way.

pub mod identify;
pub mod queue;

pub use identify::{
    ErrorLogEntry, FirmwareSlotLog, IdentifyController, IdentifyNamespace, LbaFormat,
    NsDescriptorHeader, PowerStateDescriptor, SmartLog,
};
pub use queue::{sct, select, Cqe, DsmRange, Sqe, Status};

/// PCI class code of an NVM Express I/O controller: base class 01h (mass storage), sub-class
/// 08h (non-volatile memory), programming interface 02h (NVM Express), §2.1.5.
pub const CLASS_CODE: u32 = 0x01_08_02;
/// Base class and sub-class (the upper 16 bits of [`CLASS_CODE`]): what a driver matches.
pub const CLASS_NVM: u32 = CLASS_CODE >> 8;

/// Size of a submission queue entry in bytes (2^[`SQES_LOG2`]).
pub const SQE_SIZE: usize = 64;
/// Size of a completion queue entry in bytes (2^[`CQES_LOG2`]).
pub const CQE_SIZE: usize = 16;
/// log2 of [`SQE_SIZE`], as CC.IOSQES and Identify SQES hold it.
pub const SQES_LOG2: u32 = 6;
/// log2 of [`CQE_SIZE`], as CC.IOCQES and Identify CQES hold it.
pub const CQES_LOG2: u32 = 4;
/// Size of every Identify data structure (§5.15.2).
pub const IDENTIFY_SIZE: usize = 4096;
/// The smallest memory page size (CC.MPS = 0 and CAP.MPSMIN = 0: 2^12).
pub const MIN_PAGE_SIZE: usize = 4096;
/// NSID that addresses every namespace (§3.2.1.3, "broadcast").
pub const NSID_ALL: u32 = 0xffff_ffff;

/// Controller register offsets in BAR0 (§3.1, "Register Definition").
pub mod reg {
    /// Controller Capabilities (64-bit, [`cap`](super::cap)).
    pub const CAP: u64 = 0x00;
    /// Version ([`vs`](super::vs)).
    pub const VS: u64 = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: u64 = 0x0c;
    /// Interrupt Mask Clear.
    pub const INTMC: u64 = 0x10;
    /// Controller Configuration ([`cc`](super::cc)).
    pub const CC: u64 = 0x14;
    /// Controller Status ([`csts`](super::csts)).
    pub const CSTS: u64 = 0x1c;
    /// NVM Subsystem Reset.
    pub const NSSR: u64 = 0x20;
    /// Admin Queue Attributes ([`aqa`](super::aqa)).
    pub const AQA: u64 = 0x24;
    /// Admin Submission Queue Base Address (64-bit).
    pub const ASQ: u64 = 0x28;
    /// Admin Completion Queue Base Address (64-bit).
    pub const ACQ: u64 = 0x30;
    /// Controller Memory Buffer Location.
    pub const CMBLOC: u64 = 0x38;
    /// Controller Memory Buffer Size.
    pub const CMBSZ: u64 = 0x3c;
    /// First doorbell register (§3.1.24, §3.1.25).
    pub const DOORBELLS: u64 = 0x1000;

    /// Submission Queue `qid` Tail Doorbell: `0x1000 + (2·qid) · (4 << CAP.DSTRD)`.
    pub const fn sq_tail_doorbell(qid: u16, dstrd: u32) -> u64 {
        DOORBELLS + 2 * qid as u64 * (4 << dstrd)
    }

    /// Completion Queue `qid` Head Doorbell: `0x1000 + (2·qid + 1) · (4 << CAP.DSTRD)`.
    pub const fn cq_head_doorbell(qid: u16, dstrd: u32) -> u64 {
        DOORBELLS + (2 * qid as u64 + 1) * (4 << dstrd)
    }

    /// Which doorbell a register offset is: `Some((qid, is_completion_queue))` for an offset
    /// at or above [`DOORBELLS`] that starts a doorbell with stride `dstrd`.
    pub const fn doorbell(offset: u64, dstrd: u32) -> Option<(u16, bool)> {
        let stride = 4u64 << dstrd;
        if offset < DOORBELLS || (offset - DOORBELLS) % stride != 0 {
            return None;
        }
        let k = (offset - DOORBELLS) / stride;
        if k / 2 > u16::MAX as u64 {
            return None;
        }
        Some(((k / 2) as u16, k % 2 == 1))
    }
}

/// Controller Capabilities fields (§3.1.1).
pub mod cap {
    /// Contiguous Queues Required.
    pub const CQR: u64 = 1 << 16;
    /// Command Sets Supported: the NVM command set (CSS bit 0, register bit 37).
    pub const CSS_NVM: u64 = 1 << 37;
    /// NVM Subsystem Reset Supported.
    pub const NSSRS: u64 = 1 << 36;
    /// Position of Timeout (bits 31:24, in 500 ms units).
    pub const TO_SHIFT: u32 = 24;
    /// Position of Doorbell Stride (bits 35:32).
    pub const DSTRD_SHIFT: u32 = 32;
    /// Position of Memory Page Size Minimum (bits 51:48).
    pub const MPSMIN_SHIFT: u32 = 48;
    /// Position of Memory Page Size Maximum (bits 55:52).
    pub const MPSMAX_SHIFT: u32 = 52;

    /// Maximum Queue Entries Supported, a 0's based value (bits 15:0).
    pub const fn mqes(cap: u64) -> u16 {
        cap as u16
    }
    /// Timeout, in 500 ms units (bits 31:24).
    pub const fn to(cap: u64) -> u8 {
        (cap >> TO_SHIFT) as u8
    }
    /// Doorbell Stride: doorbells are `4 << DSTRD` bytes apart (bits 35:32).
    pub const fn dstrd(cap: u64) -> u32 {
        ((cap >> DSTRD_SHIFT) & 0xf) as u32
    }
    /// Memory Page Size Minimum: 2^(12 + MPSMIN) (bits 51:48).
    pub const fn mpsmin(cap: u64) -> u32 {
        ((cap >> MPSMIN_SHIFT) & 0xf) as u32
    }
    /// Memory Page Size Maximum: 2^(12 + MPSMAX) (bits 55:52).
    pub const fn mpsmax(cap: u64) -> u32 {
        ((cap >> MPSMAX_SHIFT) & 0xf) as u32
    }
}

/// Version register (§3.1.2): major in bits 31:16, minor in 15:8, tertiary in 7:0.
pub mod vs {
    /// NVM Express 1.4.0.
    pub const V1_4_0: u32 = version(1, 4, 0);

    /// The register value of version `major.minor.tertiary`.
    pub const fn version(major: u16, minor: u8, tertiary: u8) -> u32 {
        ((major as u32) << 16) | ((minor as u32) << 8) | tertiary as u32
    }
    /// (major, minor, tertiary) of a register value.
    pub const fn split(vs: u32) -> (u16, u8, u8) {
        ((vs >> 16) as u16, (vs >> 8) as u8, vs as u8)
    }
}

/// Controller Configuration fields (§3.1.5).
pub mod cc {
    /// Enable.
    pub const EN: u32 = 1;
    /// Position of I/O Command Set Selected (bits 6:4; 000b = NVM).
    pub const CSS_SHIFT: u32 = 4;
    /// Position of Memory Page Size (bits 10:7; page = 2^(12 + MPS)).
    pub const MPS_SHIFT: u32 = 7;
    /// Position of Arbitration Mechanism Selected (bits 13:11; 000b = round robin).
    pub const AMS_SHIFT: u32 = 11;
    /// Shutdown Notification mask (bits 15:14).
    pub const SHN_MASK: u32 = 3 << 14;
    /// Shutdown Notification: normal shutdown.
    pub const SHN_NORMAL: u32 = 1 << 14;
    /// Shutdown Notification: abrupt shutdown.
    pub const SHN_ABRUPT: u32 = 2 << 14;
    /// Position of I/O Submission Queue Entry Size (bits 19:16, log2 of the size).
    pub const IOSQES_SHIFT: u32 = 16;
    /// Position of I/O Completion Queue Entry Size (bits 23:20, log2 of the size).
    pub const IOCQES_SHIFT: u32 = 20;
    /// The bits a controller implements in 1.4 (EN and bits 23:4; the rest are reserved).
    pub const DEFINED: u32 = 0x00ff_fff1;

    /// I/O Command Set Selected.
    pub const fn css(cc: u32) -> u32 {
        (cc >> CSS_SHIFT) & 7
    }
    /// Memory Page Size.
    pub const fn mps(cc: u32) -> u32 {
        (cc >> MPS_SHIFT) & 0xf
    }
    /// Shutdown Notification (0 none, 1 normal, 2 abrupt).
    pub const fn shn(cc: u32) -> u32 {
        (cc & SHN_MASK) >> 14
    }
    /// I/O Submission Queue Entry Size (log2).
    pub const fn iosqes(cc: u32) -> u32 {
        (cc >> IOSQES_SHIFT) & 0xf
    }
    /// I/O Completion Queue Entry Size (log2).
    pub const fn iocqes(cc: u32) -> u32 {
        (cc >> IOCQES_SHIFT) & 0xf
    }
}

/// Controller Status fields (§3.1.6).
pub mod csts {
    /// Ready.
    pub const RDY: u32 = 1;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown Status mask (bits 3:2).
    pub const SHST_MASK: u32 = 3 << 2;
    /// Shutdown Status: processing occurring.
    pub const SHST_OCCURRING: u32 = 1 << 2;
    /// Shutdown Status: processing complete.
    pub const SHST_COMPLETE: u32 = 2 << 2;
}

/// Admin Queue Attributes fields (§3.1.8): both sizes are 0's based, 12 bits each.
pub mod aqa {
    /// The bits that exist (ASQS 11:0, ACQS 27:16).
    pub const DEFINED: u32 = 0x0fff_0fff;

    /// The register value for admin queues of `sq_entries` and `cq_entries` entries (each
    /// 2..=4096).
    pub const fn new(sq_entries: u16, cq_entries: u16) -> u32 {
        (((cq_entries as u32).wrapping_sub(1) & 0xfff) << 16)
            | ((sq_entries as u32).wrapping_sub(1) & 0xfff)
    }
    /// Admin Submission Queue Size in entries (ASQS + 1).
    pub const fn sq_entries(aqa: u32) -> u32 {
        (aqa & 0xfff) + 1
    }
    /// Admin Completion Queue Size in entries (ACQS + 1).
    pub const fn cq_entries(aqa: u32) -> u32 {
        ((aqa >> 16) & 0xfff) + 1
    }
}

/// Admin command opcodes (§5, Figure 139).
pub mod admin {
    /// Delete I/O Submission Queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT: u8 = 0x0c;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
}

/// NVM command set opcodes (§6, Figure 346).
pub mod nvm {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DSM: u8 = 0x09;
}

/// Identify Controller or Namespace Structure values (§5.15.1, Figure 244).
pub mod cns {
    /// Identify Namespace of the NSID.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active Namespace ID list (NSIDs greater than the NSID).
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    /// Namespace Identification Descriptor list of the NSID.
    pub const NS_DESCRIPTORS: u8 = 0x03;
    /// I/O Command Set specific Identify Controller (the CSI in CDW11).
    pub const CSI_CONTROLLER: u8 = 0x06;
}

/// Log page identifiers (§5.14.1, Figure 191).
pub mod log {
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FIRMWARE_SLOT: u8 = 0x03;
}

/// Feature identifiers (§5.21.1, Figure 283).
pub mod feat {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power Management.
    pub const POWER_MGMT: u8 = 0x02;
    /// Temperature Threshold.
    pub const TEMP_THRESHOLD: u8 = 0x04;
    /// Error Recovery.
    pub const ERROR_RECOVERY: u8 = 0x05;
    /// Volatile Write Cache.
    pub const VOLATILE_WC: u8 = 0x06;
    /// Number of Queues.
    pub const NUM_QUEUES: u8 = 0x07;
    /// Interrupt Coalescing.
    pub const IRQ_COALESCE: u8 = 0x08;
    /// Interrupt Vector Configuration.
    pub const IRQ_CONFIG: u8 = 0x09;
    /// Write Atomicity Normal.
    pub const WRITE_ATOMIC: u8 = 0x0a;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT: u8 = 0x0b;

    /// Number of Queues (§5.21.1.7) in CDW11 of Set Features and in DW0 of its completion:
    /// `sqs` and `cqs` I/O queues, each a 0's based count (NSQR 15:0, NCQR 31:16).
    pub const fn num_queues(sqs: u16, cqs: u16) -> u32 {
        (sqs as u32) | ((cqs as u32) << 16)
    }
    /// (NSQR, NCQR) of a Number of Queues value, 0's based.
    pub const fn split_num_queues(v: u32) -> (u16, u16) {
        (v as u16, (v >> 16) as u16)
    }
    /// Asynchronous Event Configuration bit: SMART / Health critical warning, temperature.
    pub const AEC_TEMPERATURE: u32 = 1 << 1;
}

/// Asynchronous event types and the completion DW0 of an Asynchronous Event Request (§5.2.1,
/// Figure 146).
pub mod aer {
    /// Error status.
    pub const TYPE_ERROR: u8 = 0;
    /// SMART / Health status.
    pub const TYPE_SMART: u8 = 1;
    /// Error information: invalid doorbell register.
    pub const ERROR_INVALID_DOORBELL: u8 = 0x00;
    /// Error information: invalid doorbell write value.
    pub const ERROR_INVALID_DOORBELL_VALUE: u8 = 0x01;
    /// SMART / Health information: temperature threshold.
    pub const SMART_TEMPERATURE: u8 = 0x01;

    /// Completion DW0: event type (2:0), event information (15:8), log page (23:16).
    pub const fn dw0(ty: u8, info: u8, log_page: u8) -> u32 {
        (ty as u32 & 7) | ((info as u32) << 8) | ((log_page as u32) << 16)
    }
    /// (type, information, log page) of a completion DW0.
    pub const fn split(dw0: u32) -> (u8, u8, u8) {
        ((dw0 & 7) as u8, (dw0 >> 8) as u8, (dw0 >> 16) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbells_with_stride_0_and_2() {
        assert_eq!(reg::sq_tail_doorbell(0, 0), 0x1000);
        assert_eq!(reg::cq_head_doorbell(0, 0), 0x1004);
        assert_eq!(reg::sq_tail_doorbell(3, 0), 0x1018);
        assert_eq!(reg::cq_head_doorbell(3, 0), 0x101c);
        // DSTRD 2: 16-byte stride.
        assert_eq!(reg::sq_tail_doorbell(1, 2), 0x1020);
        assert_eq!(reg::cq_head_doorbell(1, 2), 0x1030);
        for qid in [0u16, 1, 7, 1000] {
            for dstrd in [0, 1, 4] {
                let sq = reg::sq_tail_doorbell(qid, dstrd);
                let cq = reg::cq_head_doorbell(qid, dstrd);
                assert_eq!(reg::doorbell(sq, dstrd), Some((qid, false)));
                assert_eq!(reg::doorbell(cq, dstrd), Some((qid, true)));
            }
        }
        assert_eq!(reg::doorbell(0xffc, 0), None);
        assert_eq!(reg::doorbell(0x1002, 0), None);
        assert_eq!(reg::doorbell(0x1008, 2), None);
    }

    #[test]
    fn register_fields() {
        // MQES 1023, CQR, TO 30 (15 s), DSTRD 0, CSS NVM, MPSMIN = MPSMAX = 0.
        let cap = 1023 | cap::CQR | (30 << cap::TO_SHIFT) | cap::CSS_NVM;
        assert_eq!(cap, 0x0000_0020_1e01_03ff);
        assert_eq!(
            (cap::mqes(cap), cap::to(cap), cap::dstrd(cap)),
            (1023, 30, 0)
        );
        assert_eq!((cap::mpsmin(cap), cap::mpsmax(cap)), (0, 0));
        assert_eq!(cap::dstrd(3 << 32), 3);
        assert_eq!(cap::mpsmin(2 << 48) + cap::mpsmax(5 << 52), 7);
        assert_eq!(vs::V1_4_0, 0x0001_0400);
        assert_eq!(vs::split(0x0002_0103), (2, 1, 3));
        // What a driver writes to CC: EN, NVM, 4 KiB pages, 64/16-byte entries.
        let c = cc::EN | (SQES_LOG2 << cc::IOSQES_SHIFT) | (CQES_LOG2 << cc::IOCQES_SHIFT);
        assert_eq!(c, 0x0046_0001);
        assert_eq!((cc::iosqes(c), cc::iocqes(c)), (6, 4));
        assert_eq!((cc::css(c), cc::mps(c), cc::shn(c)), (0, 0, 0));
        assert_eq!(cc::shn(c | cc::SHN_NORMAL), 1);
        assert_eq!(cc::shn(c | cc::SHN_ABRUPT), 2);
        assert_eq!(cc::mps(3 << cc::MPS_SHIFT), 3);
        assert_eq!(cc::css(7 << cc::CSS_SHIFT), 7);
        assert_eq!(aqa::new(32, 16), 0x000f_001f);
        assert_eq!(
            (aqa::sq_entries(0x000f_001f), aqa::cq_entries(0x000f_001f)),
            (32, 16)
        );
        assert_eq!(csts::SHST_COMPLETE & csts::SHST_MASK, 0b1000);
        assert_eq!(feat::num_queues(3, 3), 0x0003_0003);
        assert_eq!(feat::split_num_queues(0x0001_0002), (2, 1));
        assert_eq!(
            aer::dw0(aer::TYPE_SMART, aer::SMART_TEMPERATURE, log::SMART),
            0x0002_0101
        );
        assert_eq!(aer::split(0x0002_0101), (1, 1, 2));
        assert_eq!(CLASS_NVM, 0x0108);
    }
}
