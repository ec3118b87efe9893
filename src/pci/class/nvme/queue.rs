//! NVMe queue entries (NVM Express Base Specification 1.4c): the submission queue entry
//! (§4.2, Figure 105 "Common Command Format"), the completion queue entry (§4.6, Figure 124)
//! with its status field (§4.6.1, Figure 125; status codes §4.6.1.2), the Dataset Management
//! range (§6.7, Figure 364), and the command-specific dwords of the commands this project's
//! driver sends and its model executes: Identify (§5.15), Create / Delete I/O Completion and
//! Submission Queue (§5.3–5.6), Get Log Page (§5.14), Set / Get Features (§5.21, §5.9),
//! Asynchronous Event Request (§5.2), Read / Write / Write Zeroes (§6.9, §6.15, §6.16), Flush
//! (§6.8) and Dataset Management (§6.7).
//!
//! Both sides see the same bytes: a driver builds an [`Sqe`] with a constructor and writes
//! `sqe.as_bytes()` into its queue; the controller reads the entry with
//! `Sqe::read_from_bytes` (any 64 bytes are an entry) and decodes the fields with the
//! accessors below, named after the command they belong to.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{admin, nvm, CQE_SIZE, SQE_SIZE};

/// A submission queue entry (§4.2, Figure 105): 64 bytes, little-endian.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Sqe {
    /// CDW0 bits 7:0: Opcode.
    pub opcode: u8,
    /// CDW0 bits 15:8: Fused Operation (bits 1:0) and PRP or SGL for Data Transfer (7:6).
    pub flags: u8,
    /// CDW0 bits 31:16: Command Identifier.
    pub cid: U16,
    /// Namespace Identifier.
    pub nsid: U32,
    /// Command Dword 2.
    pub cdw2: U32,
    /// Command Dword 3.
    pub cdw3: U32,
    /// Metadata Pointer.
    pub mptr: U64,
    /// Data Pointer: PRP Entry 1.
    pub prp1: U64,
    /// Data Pointer: PRP Entry 2 (a second page, or a PRP list).
    pub prp2: U64,
    /// Command Dword 10.
    pub cdw10: U32,
    /// Command Dword 11.
    pub cdw11: U32,
    /// Command Dword 12.
    pub cdw12: U32,
    /// Command Dword 13.
    pub cdw13: U32,
    /// Command Dword 14.
    pub cdw14: U32,
    /// Command Dword 15.
    pub cdw15: U32,
}

const _: () = assert!(size_of::<Sqe>() == SQE_SIZE);

/// Force Unit Access, CDW12 bit 30 of Read and Write (§6.9, §6.15).
const FUA: u32 = 1 << 30;

impl Sqe {
    /// A command with this opcode and every other field zero.
    pub fn new(opcode: u8) -> Sqe {
        Sqe {
            opcode,
            ..Sqe::default()
        }
    }

    /// Set the namespace.
    pub fn with_nsid(mut self, nsid: u32) -> Sqe {
        self.nsid.set(nsid);
        self
    }

    /// Set PRP Entry 1 and 2.
    pub fn with_prps(mut self, prp1: u64, prp2: u64) -> Sqe {
        self.prp1.set(prp1);
        self.prp2.set(prp2);
        self
    }

    /// Set Command Dwords 10..=15 (in that order).
    pub fn with_cdws(mut self, cdw: [u32; 6]) -> Sqe {
        for (d, v) in [
            &mut self.cdw10,
            &mut self.cdw11,
            &mut self.cdw12,
            &mut self.cdw13,
            &mut self.cdw14,
            &mut self.cdw15,
        ]
        .into_iter()
        .zip(cdw)
        {
            d.set(v);
        }
        self
    }

    /// Fused Operation (CDW0 bits 9:8): 0 normal.
    pub fn fuse(&self) -> u8 {
        self.flags & 3
    }

    /// PRP or SGL for Data Transfer (CDW0 bits 15:14): 0 PRPs.
    pub fn psdt(&self) -> u8 {
        (self.flags >> 6) & 3
    }

    // --- Identify (§5.15.1, Figures 242–243) ---

    /// Identify: `cns` ([`cns`](super::cns)) of namespace `nsid`; PRP1 is the 4 KiB buffer.
    pub fn identify(cns: u8, nsid: u32) -> Sqe {
        Sqe::new(admin::IDENTIFY)
            .with_nsid(nsid)
            .with_cdws([u32::from(cns), 0, 0, 0, 0, 0])
    }
    /// Identify: Controller or Namespace Structure (CDW10 bits 7:0).
    pub fn identify_cns(&self) -> u8 {
        self.cdw10.get() as u8
    }
    /// Identify: Command Set Identifier (CDW11 bits 31:24).
    pub fn identify_csi(&self) -> u8 {
        (self.cdw11.get() >> 24) as u8
    }

    // --- Create / Delete I/O queues (§5.3–5.6, Figures 149–158) ---

    /// Create I/O Completion Queue `qid` of `entries` entries (2..=65536) at `base`
    /// (physically contiguous), signalling interrupt vector `iv` when `ien`.
    pub fn create_io_cq(qid: u16, entries: u32, base: u64, iv: u16, ien: bool) -> Sqe {
        let cdw11 = (u32::from(iv) << 16) | (u32::from(ien) << 1) | 1;
        Sqe::new(admin::CREATE_CQ).with_prps(base, 0).with_cdws([
            queue_cdw10(qid, entries),
            cdw11,
            0,
            0,
            0,
            0,
        ])
    }
    /// Create I/O Submission Queue `qid` of `entries` entries (2..=65536) at `base`
    /// (physically contiguous, priority urgent/ignored), completing on CQ `cqid`.
    pub fn create_io_sq(qid: u16, entries: u32, base: u64, cqid: u16) -> Sqe {
        Sqe::new(admin::CREATE_SQ).with_prps(base, 0).with_cdws([
            queue_cdw10(qid, entries),
            (u32::from(cqid) << 16) | 1,
            0,
            0,
            0,
            0,
        ])
    }
    /// Delete I/O Submission Queue `qid`.
    pub fn delete_io_sq(qid: u16) -> Sqe {
        Sqe::new(admin::DELETE_SQ).with_cdws([u32::from(qid), 0, 0, 0, 0, 0])
    }
    /// Delete I/O Completion Queue `qid`.
    pub fn delete_io_cq(qid: u16) -> Sqe {
        Sqe::new(admin::DELETE_CQ).with_cdws([u32::from(qid), 0, 0, 0, 0, 0])
    }
    /// Create / Delete queue: Queue Identifier (CDW10 bits 15:0).
    pub fn queue_id(&self) -> u16 {
        self.cdw10.get() as u16
    }
    /// Create queue: Queue Size in entries (CDW10 bits 31:16, 0's based, plus one).
    pub fn queue_entries(&self) -> u32 {
        (self.cdw10.get() >> 16) + 1
    }
    /// Create queue: Physically Contiguous (CDW11 bit 0).
    pub fn queue_contiguous(&self) -> bool {
        self.cdw11.get() & 1 != 0
    }
    /// Create I/O Completion Queue: Interrupts Enabled (CDW11 bit 1).
    pub fn cq_interrupts(&self) -> bool {
        self.cdw11.get() & 2 != 0
    }
    /// Create I/O Completion Queue: Interrupt Vector (CDW11 bits 31:16).
    pub fn cq_vector(&self) -> u16 {
        (self.cdw11.get() >> 16) as u16
    }
    /// Create I/O Submission Queue: Completion Queue Identifier (CDW11 bits 31:16).
    pub fn sq_cqid(&self) -> u16 {
        (self.cdw11.get() >> 16) as u16
    }

    // --- Get Log Page (§5.14, Figures 188–190) ---

    /// Get Log Page `lid` of namespace `nsid`: `dwords` (≥ 1) dwords from byte `offset`
    /// (dword aligned); Retain Asynchronous Event when `rae`.
    pub fn get_log_page(lid: u8, nsid: u32, dwords: u32, offset: u64, rae: bool) -> Sqe {
        let numd = dwords.wrapping_sub(1);
        let cdw10 = u32::from(lid) | (u32::from(rae) << 15) | ((numd & 0xffff) << 16);
        Sqe::new(admin::GET_LOG_PAGE).with_nsid(nsid).with_cdws([
            cdw10,
            numd >> 16,
            offset as u32,
            (offset >> 32) as u32,
            0,
            0,
        ])
    }
    /// Get Log Page: Log Page Identifier (CDW10 bits 7:0).
    pub fn log_id(&self) -> u8 {
        self.cdw10.get() as u8
    }
    /// Get Log Page: Retain Asynchronous Event (CDW10 bit 15).
    pub fn log_rae(&self) -> bool {
        self.cdw10.get() & (1 << 15) != 0
    }
    /// Get Log Page: Number of Dwords (NUMDU:NUMDL, 0's based, plus one).
    pub fn log_dwords(&self) -> u64 {
        u64::from(((self.cdw11.get() & 0xffff) << 16) | (self.cdw10.get() >> 16)) + 1
    }
    /// Get Log Page: Log Page Offset in bytes (CDW13:CDW12).
    pub fn log_offset(&self) -> u64 {
        u64::from(self.cdw12.get()) | (u64::from(self.cdw13.get()) << 32)
    }

    // --- Set / Get Features (§5.21, §5.9, Figures 281, 192) ---

    /// Set Features `fid` to `value` (CDW11), not saved.
    pub fn set_features(fid: u8, value: u32) -> Sqe {
        Sqe::new(admin::SET_FEATURES).with_cdws([u32::from(fid), value, 0, 0, 0, 0])
    }
    /// Get Features `fid` with select `sel` ([`select`]) and CDW11 `arg` (e.g. the vector of
    /// Interrupt Vector Configuration).
    pub fn get_features(fid: u8, sel: u8, arg: u32) -> Sqe {
        let cdw10 = u32::from(fid) | (u32::from(sel & 7) << 8);
        Sqe::new(admin::GET_FEATURES).with_cdws([cdw10, arg, 0, 0, 0, 0])
    }
    /// Set / Get Features: Feature Identifier (CDW10 bits 7:0).
    pub fn feature_id(&self) -> u8 {
        self.cdw10.get() as u8
    }
    /// Set Features: Save (CDW10 bit 31).
    pub fn feature_save(&self) -> bool {
        self.cdw10.get() & (1 << 31) != 0
    }
    /// Get Features: Select (CDW10 bits 10:8).
    pub fn feature_select(&self) -> u8 {
        ((self.cdw10.get() >> 8) & 7) as u8
    }

    /// Asynchronous Event Request (§5.2): completes when the controller has an event.
    pub fn async_event_request() -> Sqe {
        Sqe::new(admin::ASYNC_EVENT)
    }

    // --- NVM commands (§6) ---

    /// Read `blocks` (1..=65536) logical blocks at `slba` of namespace `nsid`.
    pub fn read(nsid: u32, slba: u64, blocks: u32) -> Sqe {
        Sqe::block_range(nvm::READ, nsid, slba, blocks)
    }
    /// Write `blocks` (1..=65536) logical blocks at `slba` of namespace `nsid`.
    pub fn write(nsid: u32, slba: u64, blocks: u32) -> Sqe {
        Sqe::block_range(nvm::WRITE, nsid, slba, blocks)
    }
    /// Write Zeroes over `blocks` (1..=65536) logical blocks at `slba`.
    pub fn write_zeroes(nsid: u32, slba: u64, blocks: u32) -> Sqe {
        Sqe::block_range(nvm::WRITE_ZEROES, nsid, slba, blocks)
    }
    /// Flush namespace `nsid` ([`NSID_ALL`](super::NSID_ALL): every namespace).
    pub fn flush(nsid: u32) -> Sqe {
        Sqe::new(nvm::FLUSH).with_nsid(nsid)
    }
    /// Dataset Management of `ranges` (1..=256) [`DsmRange`]s at PRP1; Deallocate when
    /// `deallocate`.
    pub fn dsm(nsid: u32, ranges: u32, deallocate: bool) -> Sqe {
        Sqe::new(nvm::DSM).with_nsid(nsid).with_cdws([
            ranges.wrapping_sub(1) & 0xff,
            u32::from(deallocate) << 2,
            0,
            0,
            0,
            0,
        ])
    }
    fn block_range(opcode: u8, nsid: u32, slba: u64, blocks: u32) -> Sqe {
        debug_assert!((1..=65536).contains(&blocks), "{blocks} blocks");
        Sqe::new(opcode).with_nsid(nsid).with_cdws([
            slba as u32,
            (slba >> 32) as u32,
            blocks.wrapping_sub(1) & 0xffff,
            0,
            0,
            0,
        ])
    }
    /// Set or clear Force Unit Access (Read / Write CDW12 bit 30).
    pub fn with_fua(mut self, fua: bool) -> Sqe {
        let c = self.cdw12.get() & !FUA;
        self.cdw12.set(c | if fua { FUA } else { 0 });
        self
    }
    /// Read / Write / Write Zeroes: Starting LBA (CDW11:CDW10).
    pub fn slba(&self) -> u64 {
        u64::from(self.cdw10.get()) | (u64::from(self.cdw11.get()) << 32)
    }
    /// Read / Write / Write Zeroes: Number of Logical Blocks (CDW12 bits 15:0, 0's based,
    /// plus one).
    pub fn blocks(&self) -> u32 {
        (self.cdw12.get() & 0xffff) + 1
    }
    /// Read / Write: Force Unit Access (CDW12 bit 30).
    pub fn fua(&self) -> bool {
        self.cdw12.get() & FUA != 0
    }
    /// Dataset Management: Number of Ranges (CDW10 bits 7:0, 0's based, plus one).
    pub fn dsm_ranges(&self) -> usize {
        (self.cdw10.get() & 0xff) as usize + 1
    }
    /// Dataset Management: Attribute – Deallocate (CDW11 bit 2).
    pub fn dsm_deallocate(&self) -> bool {
        self.cdw11.get() & (1 << 2) != 0
    }
}

/// CDW10 of Create I/O CQ / SQ: Queue Size (31:16, 0's based) and Queue Identifier (15:0).
fn queue_cdw10(qid: u16, entries: u32) -> u32 {
    (entries.wrapping_sub(1) << 16) | u32::from(qid)
}

/// Get Features Select values (§5.9.1, Figure 192, CDW10 bits 10:8).
pub mod select {
    /// Current value.
    pub const CURRENT: u8 = 0;
    /// Default value.
    pub const DEFAULT: u8 = 1;
    /// Saved value.
    pub const SAVED: u8 = 2;
    /// Supported capabilities.
    pub const SUPPORTED: u8 = 3;
}

/// A completion queue entry (§4.6, Figure 124): 16 bytes, little-endian.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Cqe {
    /// DW0: command specific.
    pub dw0: U32,
    /// DW1: command specific (reserved for most commands).
    pub dw1: U32,
    /// DW2 bits 15:0: SQ Head Pointer.
    pub sqhd: U16,
    /// DW2 bits 31:16: SQ Identifier.
    pub sqid: U16,
    /// DW3 bits 15:0: Command Identifier.
    pub cid: U16,
    /// DW3 bits 31:16: Phase Tag (bit 0 here, bit 16 of DW3) and Status Field (bits 15:1
    /// here, 31:17 of DW3). Read them with [`phase`](Cqe::phase) and
    /// [`status`](Cqe::status).
    pub status_phase: U16,
}

const _: () = assert!(size_of::<Cqe>() == CQE_SIZE);

impl Cqe {
    /// An entry completing command `cid` of SQ `sqid`, whose head is now `sqhd`.
    pub fn new(dw0: u32, sqhd: u16, sqid: u16, cid: u16, status: Status, phase: bool) -> Cqe {
        Cqe {
            dw0: U32::new(dw0),
            dw1: U32::ZERO,
            sqhd: U16::new(sqhd),
            sqid: U16::new(sqid),
            cid: U16::new(cid),
            status_phase: U16::new((status.field() << 1) | u16::from(phase)),
        }
    }

    /// Phase Tag: the entry is new when it differs from the previous pass over the queue.
    pub fn phase(&self) -> bool {
        self.status_phase.get() & 1 != 0
    }

    /// Status Field.
    pub fn status(&self) -> Status {
        Status::from_field(self.status_phase.get() >> 1)
    }
}

/// Status Code Type values (§4.6.1.1, Figure 126).
pub mod sct {
    /// Generic Command Status.
    pub const GENERIC: u8 = 0;
    /// Command Specific Status.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and Data Integrity Errors.
    pub const MEDIA: u8 = 2;
    /// Path Related Status.
    pub const PATH: u8 = 3;
    /// Vendor Specific.
    pub const VENDOR: u8 = 7;
}

/// The 15-bit Status Field of a completion (§4.6.1, Figure 125): Status Code (bits 7:0),
/// Status Code Type (10:8), Command Retry Delay (12:11), More (13), Do Not Retry (14).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(u16);

impl Status {
    /// Successful Completion.
    pub const SUCCESS: Status = Status::new(sct::GENERIC, 0x00, false);
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = Status::new(sct::GENERIC, 0x01, true);
    /// Invalid Field in Command.
    pub const INVALID_FIELD: Status = Status::new(sct::GENERIC, 0x02, true);
    /// Data Transfer Error.
    pub const DATA_TRANSFER: Status = Status::new(sct::GENERIC, 0x04, false);
    /// Internal Error.
    pub const INTERNAL: Status = Status::new(sct::GENERIC, 0x06, false);
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: Status = Status::new(sct::GENERIC, 0x07, false);
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: Status = Status::new(sct::GENERIC, 0x0b, true);
    /// Command Sequence Error.
    pub const SEQUENCE_ERROR: Status = Status::new(sct::GENERIC, 0x0c, true);
    /// PRP Offset Invalid.
    pub const PRP_OFFSET_INVALID: Status = Status::new(sct::GENERIC, 0x13, true);
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: Status = Status::new(sct::GENERIC, 0x80, true);
    /// Completion Queue Invalid.
    pub const CQ_INVALID: Status = Status::new(sct::COMMAND_SPECIFIC, 0x00, true);
    /// Invalid Queue Identifier.
    pub const INVALID_QID: Status = Status::new(sct::COMMAND_SPECIFIC, 0x01, true);
    /// Invalid Queue Size.
    pub const INVALID_QSIZE: Status = Status::new(sct::COMMAND_SPECIFIC, 0x02, true);
    /// Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT: Status = Status::new(sct::COMMAND_SPECIFIC, 0x05, true);
    /// Invalid Interrupt Vector.
    pub const INVALID_VECTOR: Status = Status::new(sct::COMMAND_SPECIFIC, 0x08, true);
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: Status = Status::new(sct::COMMAND_SPECIFIC, 0x09, true);
    /// Invalid Queue Deletion.
    pub const INVALID_QUEUE_DELETION: Status = Status::new(sct::COMMAND_SPECIFIC, 0x0c, true);
    /// Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: Status = Status::new(sct::COMMAND_SPECIFIC, 0x0d, true);
    /// Write Fault (media error).
    pub const WRITE_FAULT: Status = Status::new(sct::MEDIA, 0x80, false);
    /// Unrecovered Read Error (media error).
    pub const READ_ERROR: Status = Status::new(sct::MEDIA, 0x81, false);

    /// A status of type `sct` (3 bits) and code `sc`, with Do Not Retry when `dnr`.
    pub const fn new(sct: u8, sc: u8, dnr: bool) -> Status {
        Status(sc as u16 | ((sct as u16 & 7) << 8) | ((dnr as u16) << 14))
    }

    /// The status held in a 15-bit Status Field (bit 15 is ignored).
    pub const fn from_field(field: u16) -> Status {
        Status(field & 0x7fff)
    }

    /// The 15-bit Status Field.
    pub const fn field(self) -> u16 {
        self.0
    }

    /// Status Code.
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }

    /// Status Code Type ([`sct`]).
    pub const fn sct(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }

    /// Command Retry Delay: which of the controller's CRDT times to wait before a retry.
    pub const fn crd(self) -> u8 {
        ((self.0 >> 11) & 3) as u8
    }

    /// More: the Error Information log page has more about this command.
    pub const fn more(self) -> bool {
        self.0 & (1 << 13) != 0
    }

    /// Do Not Retry.
    pub const fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }

    /// Whether this is Successful Completion (whatever CRD, More and DNR say).
    pub const fn is_success(self) -> bool {
        self.sct() == sct::GENERIC && self.sc() == 0
    }

    /// The specification's name of the status code, when it is one this module defines.
    pub fn name(self) -> Option<&'static str> {
        Some(match (self.sct(), self.sc()) {
            (sct::GENERIC, 0x00) => "Successful Completion",
            (sct::GENERIC, 0x01) => "Invalid Command Opcode",
            (sct::GENERIC, 0x02) => "Invalid Field in Command",
            (sct::GENERIC, 0x04) => "Data Transfer Error",
            (sct::GENERIC, 0x06) => "Internal Error",
            (sct::GENERIC, 0x07) => "Command Abort Requested",
            (sct::GENERIC, 0x0b) => "Invalid Namespace or Format",
            (sct::GENERIC, 0x0c) => "Command Sequence Error",
            (sct::GENERIC, 0x13) => "PRP Offset Invalid",
            (sct::GENERIC, 0x80) => "LBA Out of Range",
            (sct::COMMAND_SPECIFIC, 0x00) => "Completion Queue Invalid",
            (sct::COMMAND_SPECIFIC, 0x01) => "Invalid Queue Identifier",
            (sct::COMMAND_SPECIFIC, 0x02) => "Invalid Queue Size",
            (sct::COMMAND_SPECIFIC, 0x05) => "Asynchronous Event Request Limit Exceeded",
            (sct::COMMAND_SPECIFIC, 0x08) => "Invalid Interrupt Vector",
            (sct::COMMAND_SPECIFIC, 0x09) => "Invalid Log Page",
            (sct::COMMAND_SPECIFIC, 0x0c) => "Invalid Queue Deletion",
            (sct::COMMAND_SPECIFIC, 0x0d) => "Feature Identifier Not Saveable",
            (sct::MEDIA, 0x80) => "Write Fault",
            (sct::MEDIA, 0x81) => "Unrecovered Read Error",
            _ => return None,
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status code type {:#x}, status code {:#04x}",
            self.sct(),
            self.sc()
        )?;
        if let Some(n) = self.name() {
            write!(f, " ({n})")?;
        }
        if self.dnr() {
            write!(f, ", do not retry")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Status({:#06x}: {self})", self.0)
    }
}

/// One Dataset Management range (§6.7, Figure 364): 16 bytes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DsmRange {
    /// Context Attributes.
    pub attributes: U32,
    /// Length in logical blocks.
    pub blocks: U32,
    /// Starting LBA.
    pub slba: U64,
}

const _: () = assert!(size_of::<DsmRange>() == 16);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use proptest::prelude::*;

    #[test]
    fn sqe_fields_at_spec_offsets() {
        // Figure 105: CDW0 at 0 (opcode, flags, CID at 2), NSID at 4, CDW2/3 at 8/12, MPTR at
        // 16, DPTR at 24 (PRP1) and 32 (PRP2), CDW10..15 at 40..64.
        assert_eq!(offset_of!(Sqe, opcode), 0);
        assert_eq!(offset_of!(Sqe, flags), 1);
        assert_eq!(offset_of!(Sqe, cid), 2);
        assert_eq!(offset_of!(Sqe, nsid), 4);
        assert_eq!(offset_of!(Sqe, cdw2), 8);
        assert_eq!(offset_of!(Sqe, cdw3), 12);
        assert_eq!(offset_of!(Sqe, mptr), 16);
        assert_eq!(offset_of!(Sqe, prp1), 24);
        assert_eq!(offset_of!(Sqe, prp2), 32);
        assert_eq!(offset_of!(Sqe, cdw10), 40);
        assert_eq!(offset_of!(Sqe, cdw11), 44);
        assert_eq!(offset_of!(Sqe, cdw12), 48);
        assert_eq!(offset_of!(Sqe, cdw13), 52);
        assert_eq!(offset_of!(Sqe, cdw14), 56);
        assert_eq!(offset_of!(Sqe, cdw15), 60);
        assert_eq!(size_of::<Sqe>(), 64);
    }

    #[test]
    fn cqe_fields_at_spec_offsets() {
        // Figure 124: DW0 at 0, DW1 at 4, SQHD at 8, SQID at 10, CID at 12, P + status at 14.
        assert_eq!(offset_of!(Cqe, dw0), 0);
        assert_eq!(offset_of!(Cqe, dw1), 4);
        assert_eq!(offset_of!(Cqe, sqhd), 8);
        assert_eq!(offset_of!(Cqe, sqid), 10);
        assert_eq!(offset_of!(Cqe, cid), 12);
        assert_eq!(offset_of!(Cqe, status_phase), 14);
        assert_eq!(size_of::<Cqe>(), 16);
        assert_eq!(offset_of!(DsmRange, blocks), 4);
        assert_eq!(offset_of!(DsmRange, slba), 8);
    }

    #[test]
    fn read_command_bytes() {
        // A Read of 8 blocks at LBA 0x1_0000_0010 of NSID 1, CID 0x1234, PRP1 + PRP2.
        let mut s = Sqe::read(1, 0x1_0000_0010, 8).with_prps(0x1_0000_1000, 0x1_0000_3000);
        s.cid.set(0x1234);
        let want: [u8; 64] = [
            0x02, 0x00, 0x34, 0x12, 0x01, 0x00, 0x00, 0x00, // CDW0, NSID
            0, 0, 0, 0, 0, 0, 0, 0, // CDW2, CDW3
            0, 0, 0, 0, 0, 0, 0, 0, // MPTR
            0x00, 0x10, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // PRP1
            0x00, 0x30, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // PRP2
            0x10, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // CDW10/11: SLBA
            0x07, 0x00, 0x00, 0x00, 0, 0, 0, 0, // CDW12: NLB 0's based, CDW13
            0, 0, 0, 0, 0, 0, 0, 0, // CDW14, CDW15
        ];
        assert_eq!(s.as_bytes(), &want[..]);
        let back = Sqe::read_from_bytes(&want).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            (back.slba(), back.blocks(), back.fua()),
            (0x1_0000_0010, 8, false)
        );
        assert!(back.with_fua(true).fua());
        assert_eq!(back.with_fua(true).with_fua(false), back);
    }

    #[test]
    fn admin_command_dwords() {
        let cq = Sqe::create_io_cq(1, 33, 0x40_0000_5000, 1, true);
        assert_eq!(cq.opcode, admin::CREATE_CQ);
        assert_eq!((cq.cdw10.get(), cq.cdw11.get()), (0x0020_0001, 0x0001_0003));
        assert_eq!(
            (cq.queue_id(), cq.queue_entries(), cq.cq_vector()),
            (1, 33, 1)
        );
        assert!(cq.queue_contiguous() && cq.cq_interrupts());
        let sq = Sqe::create_io_sq(1, 33, 0x40_0000_4000, 1);
        assert_eq!((sq.cdw10.get(), sq.cdw11.get()), (0x0020_0001, 0x0001_0001));
        assert_eq!(sq.sq_cqid(), 1);
        assert_eq!(Sqe::delete_io_cq(3).queue_id(), 3);
        // Error log, 64 dwords: NUMDL 63 in CDW10 31:16.
        let log = Sqe::get_log_page(0x01, 0, 64, 0, false);
        assert_eq!((log.cdw10.get(), log.cdw11.get()), (0x003f_0001, 0));
        let big = Sqe::get_log_page(0x02, 0xffff_ffff, 0x12_3457, 0x1_0000_0200, true);
        assert_eq!(big.log_dwords(), 0x12_3457);
        let all = Sqe::get_log_page(0x02, 0, 0, 0, false); // NUMD all-ones
        assert_eq!(all.log_dwords(), 1 << 32);
        assert_eq!(big.log_offset(), 0x1_0000_0200);
        assert!(big.log_rae());
        assert_eq!(big.log_id(), 2);
        let gf = Sqe::get_features(0x04, select::SUPPORTED, 7);
        assert_eq!((gf.cdw10.get(), gf.cdw11.get()), (0x0304, 7));
        assert_eq!((gf.feature_id(), gf.feature_select()), (4, 3));
        let id = Sqe::identify(0x06, 0);
        assert_eq!((id.identify_cns(), id.identify_csi()), (6, 0));
        let dsm = Sqe::dsm(1, 3, true);
        assert_eq!((dsm.dsm_ranges(), dsm.dsm_deallocate()), (3, true));
        let mut flags = Sqe::new(0);
        flags.flags = 0b0100_0001;
        assert_eq!((flags.fuse(), flags.psdt()), (1, 1));
    }

    #[test]
    fn cqe_status_field_layout() {
        // LBA Out of Range, DNR: SC 0x80 in bits 7:0, SCT 0 in 10:8, DNR bit 14.
        assert_eq!(Status::LBA_OUT_OF_RANGE.field(), 0x4080);
        // Invalid Queue Identifier: SCT 1, SC 1, DNR.
        assert_eq!(Status::INVALID_QID.field(), 0x4101);
        let c = Cqe::new(7, 3, 1, 0x1234, Status::INVALID_FIELD, true);
        let b = c.as_bytes();
        assert_eq!(&b[..4], &[7, 0, 0, 0]);
        assert_eq!(&b[8..14], &[3, 0, 1, 0, 0x34, 0x12]);
        // DW3 bits 31:16 = bytes 14..16: DNR at bit 15, SC 0x02 in bits 8:1, P in bit 0.
        assert_eq!(u16::from_le_bytes([b[14], b[15]]), 0x8005);
        let back = Cqe::read_from_bytes(b).unwrap();
        assert_eq!(back, c);
        assert!(back.phase());
        assert_eq!(back.status(), Status::INVALID_FIELD);
        assert!(!Cqe::new(0, 0, 0, 0, Status::SUCCESS, false).phase());
        assert_eq!(
            Status::INVALID_QID.to_string(),
            "status code type 0x1, status code 0x01 (Invalid Queue Identifier), do not retry"
        );
        assert_eq!(Status::from_field(0x7fff).crd(), 3);
        assert!(Status::from_field(1 << 13).more());
        assert!(
            Status::from_field(1 << 14).is_success(),
            "DNR alone is success"
        );
    }

    proptest! {
        #[test]
        fn any_bytes_are_entries_and_round_trip(b in any::<[u8; 64]>()) {
            let s = Sqe::read_from_bytes(&b).unwrap();
            prop_assert_eq!(s.as_bytes(), &b[..]);
            let c = Cqe::read_from_bytes(&b[..16]).unwrap();
            prop_assert_eq!(c.as_bytes(), &b[..16]);
            let st = c.status();
            prop_assert_eq!(st, Status::new(st.sct(), st.sc(), st.dnr()).with_rest(st));
            let _ = st.to_string();
            prop_assert_eq!(c.phase(), b[14] & 1 == 1);
        }

        #[test]
        fn status_fields_round_trip(sct in 0u8..8, sc in any::<u8>(), dnr in any::<bool>()) {
            let s = Status::new(sct, sc, dnr);
            prop_assert_eq!((s.sct(), s.sc(), s.dnr()), (sct, sc, dnr));
            let c = Cqe::new(0, 0, 0, 0, s, true);
            prop_assert_eq!(c.status(), s);
        }
    }

    impl Status {
        /// `self` with CRD and More taken from `other` (for the round-trip property).
        fn with_rest(self, other: Status) -> Status {
            Status(self.0 | (other.0 & (0x3 << 11 | 1 << 13)))
        }
    }
}
