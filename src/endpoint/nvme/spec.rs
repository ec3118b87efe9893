//! NVMe 1.4 constants: controller register offsets and fields (NVM Express Base Specification
//! 1.4c §3.1), command opcodes (§5, §6), status codes (§4.6.1.2) and feature identifiers (§5.21).

/// Controller register offsets (§3.1, Figure 78).
pub mod reg {
    /// Controller Capabilities (64-bit).
    pub const CAP: u64 = 0x00;
    /// Version.
    pub const VS: u64 = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: u64 = 0x0c;
    /// Interrupt Mask Clear.
    pub const INTMC: u64 = 0x10;
    /// Controller Configuration.
    pub const CC: u64 = 0x14;
    /// Controller Status.
    pub const CSTS: u64 = 0x1c;
    /// NVM Subsystem Reset.
    pub const NSSR: u64 = 0x20;
    /// Admin Queue Attributes.
    pub const AQA: u64 = 0x24;
    /// Admin Submission Queue Base Address (64-bit).
    pub const ASQ: u64 = 0x28;
    /// Admin Completion Queue Base Address (64-bit).
    pub const ACQ: u64 = 0x30;
    /// Controller Memory Buffer Location.
    pub const CMBLOC: u64 = 0x38;
    /// Controller Memory Buffer Size.
    pub const CMBSZ: u64 = 0x3c;
    /// First doorbell (stride 0: SQ y tail at 0x1000 + 8y, CQ y head at 0x1000 + 8y + 4).
    pub const DOORBELLS: u64 = 0x1000;
}

/// Controller Configuration fields (§3.1.5).
pub mod cc {
    /// Enable.
    pub const EN: u32 = 1;
    /// I/O Command Set Selected, bits 6:4.
    pub fn css(cc: u32) -> u32 {
        (cc >> 4) & 7
    }
    /// Memory Page Size, bits 10:7 (page = 2^(12 + MPS)).
    pub fn mps(cc: u32) -> u32 {
        (cc >> 7) & 0xf
    }
    /// Shutdown Notification, bits 15:14.
    pub fn shn(cc: u32) -> u32 {
        (cc >> 14) & 3
    }
    /// I/O Submission Queue Entry Size (log2), bits 19:16.
    pub fn iosqes(cc: u32) -> u32 {
        (cc >> 16) & 0xf
    }
    /// I/O Completion Queue Entry Size (log2), bits 23:20.
    pub fn iocqes(cc: u32) -> u32 {
        (cc >> 20) & 0xf
    }
}

/// Controller Status fields (§3.1.6).
pub mod csts {
    /// Ready.
    pub const RDY: u32 = 1;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown processing occurring.
    pub const SHST_OCCURRING: u32 = 1 << 2;
    /// Shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 2 << 2;
    /// Shutdown status mask.
    pub const SHST_MASK: u32 = 3 << 2;
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
}

/// A completion status: Status Code Type and Status Code, plus Do Not Retry (§4.6.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Status Code Type.
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// Do Not Retry.
    pub dnr: bool,
}

impl Status {
    /// Successful Completion.
    pub const SUCCESS: Status = Status::generic(0x00, false);
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = Status::generic(0x01, true);
    /// Invalid Field in Command.
    pub const INVALID_FIELD: Status = Status::generic(0x02, true);
    /// Data Transfer Error.
    pub const DATA_TRANSFER: Status = Status::generic(0x04, false);
    /// Internal Error.
    pub const INTERNAL: Status = Status::generic(0x06, false);
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: Status = Status::generic(0x07, false);
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0b, true);
    /// Command Sequence Error.
    pub const SEQUENCE_ERROR: Status = Status::generic(0x0c, true);
    /// PRP Offset Invalid.
    pub const PRP_OFFSET_INVALID: Status = Status::generic(0x13, true);
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80, true);
    /// Completion Queue Invalid.
    pub const CQ_INVALID: Status = Status::specific(0x00);
    /// Invalid Queue Identifier.
    pub const INVALID_QID: Status = Status::specific(0x01);
    /// Invalid Queue Size.
    pub const INVALID_QSIZE: Status = Status::specific(0x02);
    /// Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT: Status = Status::specific(0x05);
    /// Invalid Interrupt Vector.
    pub const INVALID_VECTOR: Status = Status::specific(0x08);
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: Status = Status::specific(0x09);
    /// Invalid Queue Deletion.
    pub const INVALID_QUEUE_DELETION: Status = Status::specific(0x0c);
    /// Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: Status = Status::specific(0x0d);
    /// Write Fault (media error).
    pub const WRITE_FAULT: Status = Status {
        sct: 2,
        sc: 0x80,
        dnr: false,
    };
    /// Unrecovered Read Error (media error).
    pub const READ_ERROR: Status = Status {
        sct: 2,
        sc: 0x81,
        dnr: false,
    };

    const fn generic(sc: u8, dnr: bool) -> Status {
        Status { sct: 0, sc, dnr }
    }
    const fn specific(sc: u8) -> Status {
        Status {
            sct: 1,
            sc,
            dnr: true,
        }
    }

    /// The 15-bit Status Field of a completion queue entry (DW3 bits 31:17): SC in bits 7:0,
    /// SCT in 10:8, DNR in 14.
    pub fn field(self) -> u16 {
        u16::from(self.sc) | (u16::from(self.sct & 7) << 8) | (u16::from(self.dnr) << 14)
    }

    /// Whether this is Successful Completion.
    pub fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }
}

/// A submission queue entry, decoded (§4.2, Figure 105).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Command {
    /// Opcode.
    pub opcode: u8,
    /// Fused operation bits.
    pub fuse: u8,
    /// PRP or SGL for Data Transfer.
    pub psdt: u8,
    /// Command Identifier.
    pub cid: u16,
    /// Namespace Identifier.
    pub nsid: u32,
    /// PRP Entry 1.
    pub prp1: u64,
    /// PRP Entry 2.
    pub prp2: u64,
    /// Command DWords 10..=15.
    pub cdw: [u32; 6],
}

impl Command {
    /// Decode a 64-byte submission queue entry.
    pub fn parse(b: &[u8; 64]) -> Command {
        let dw =
            |i: usize| u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        let qw = |i: usize| u64::from(dw(i)) | (u64::from(dw(i + 1)) << 32);
        Command {
            opcode: b[0],
            fuse: b[1] & 3,
            psdt: (b[1] >> 6) & 3,
            cid: u16::from_le_bytes([b[2], b[3]]),
            nsid: dw(1),
            prp1: qw(6),
            prp2: qw(8),
            cdw: [dw(10), dw(11), dw(12), dw(13), dw(14), dw(15)],
        }
    }

    /// Command DWord `n` (10..=15).
    pub fn cdw(&self, n: usize) -> u32 {
        self.cdw[n - 10]
    }

    /// Encode (for tests and host-side tools).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0] = self.opcode;
        b[1] = self.fuse | (self.psdt << 6);
        b[2..4].copy_from_slice(&self.cid.to_le_bytes());
        b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        b[24..32].copy_from_slice(&self.prp1.to_le_bytes());
        b[32..40].copy_from_slice(&self.prp2.to_le_bytes());
        for (i, v) in self.cdw.iter().enumerate() {
            b[40 + i * 4..44 + i * 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// A completion queue entry (§4.6, Figure 124).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Command specific DW0.
    pub dw0: u32,
    /// SQ Head Pointer.
    pub sq_head: u16,
    /// SQ Identifier.
    pub sq_id: u16,
    /// Command Identifier.
    pub cid: u16,
    /// Phase Tag.
    pub phase: bool,
    /// Status field (15 bits: SC, SCT, CRD, M, DNR).
    pub status: u16,
}

impl Completion {
    /// Encode to 16 bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[8..10].copy_from_slice(&self.sq_head.to_le_bytes());
        b[10..12].copy_from_slice(&self.sq_id.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        let sf = (self.status << 1) | u16::from(self.phase);
        b[14..16].copy_from_slice(&sf.to_le_bytes());
        b
    }

    /// Decode 16 bytes.
    pub fn parse(b: &[u8; 16]) -> Completion {
        let sf = u16::from_le_bytes([b[14], b[15]]);
        Completion {
            dw0: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            sq_head: u16::from_le_bytes([b[8], b[9]]),
            sq_id: u16::from_le_bytes([b[10], b[11]]),
            cid: u16::from_le_bytes([b[12], b[13]]),
            phase: sf & 1 != 0,
            status: sf >> 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_field_layout() {
        // LBA Out of Range, DNR: SC 0x80 in bits 7:0, SCT 0 in 10:8, DNR bit 14.
        assert_eq!(Status::LBA_OUT_OF_RANGE.field(), 0x4080);
        // Invalid Queue Identifier: SCT 1, SC 1, DNR.
        assert_eq!(Status::INVALID_QID.field(), 0x4101);
        let c = Completion {
            dw0: 7,
            sq_head: 3,
            sq_id: 1,
            cid: 0x1234,
            phase: true,
            status: Status::INVALID_FIELD.field(),
        };
        let b = c.to_bytes();
        assert_eq!(
            u16::from_le_bytes([b[14], b[15]]),
            0x8005,
            "DNR bit 15, SC 0x02 in 8:1, P"
        );
        assert_eq!(Completion::parse(&b), c);
    }

    #[test]
    fn command_roundtrip() {
        let c = Command {
            opcode: 2,
            cid: 9,
            nsid: 1,
            prp1: 0x1_0000_1000,
            prp2: 0x1_0000_3000,
            cdw: [10, 0, 7, 0, 0, 0],
            ..Command::default()
        };
        assert_eq!(Command::parse(&c.to_bytes()), c);
    }
}
