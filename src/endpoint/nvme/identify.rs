//! What the controller model reports about itself: the contents of its Identify data (NVMe
//! 1.4c §5.15.2: Identify Controller, Identify Namespace, the active namespace list and the
//! namespace identification descriptors) and of its log pages (§5.14.1: error information,
//! SMART / health, firmware slot). The byte layouts are the shared structures of
//! [`crate::pci::class::nvme::identify`]; this file holds the model's values.

use std::collections::VecDeque;

use zerocopy::{FromZeros, IntoBytes};

use crate::pci::class::nvme::identify::{nidt, oncs, put_ascii};
use crate::pci::class::nvme::{
    vs, ErrorLogEntry, FirmwareSlotLog, IdentifyController, IdentifyNamespace, LbaFormat,
    NsDescriptorHeader, SmartLog, Status, CQES_LOG2, IDENTIFY_SIZE, SQES_LOG2,
};

/// What the controller says about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    /// PCI vendor ID.
    pub vid: u16,
    /// PCI subsystem vendor ID.
    pub ssvid: u16,
    /// Serial number (ASCII, at most 20 bytes).
    pub serial: String,
    /// Controller ID (CNTLID): 1 for a physical function, 1 + n for its VF n (SR-IOV).
    pub cntlid: u16,
    /// Model number (ASCII, at most 40 bytes).
    pub model: String,
    /// Firmware revision (ASCII, at most 8 bytes).
    pub firmware: String,
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier.
    pub eui64: [u8; 8],
    /// Namespace UUID.
    pub uuid: [u8; 16],
}

/// Maximum Data Transfer Size as a power of two of the minimum page size (2^5 * 4 KiB).
pub const MDTS: u8 = 5;
/// Number of supported I/O queue pairs.
pub const MAX_IO_QUEUES: u16 = 16;
/// Error log entries kept (ELPE + 1).
pub const ERROR_LOG_ENTRIES: usize = 4;
/// Outstanding Asynchronous Event Requests allowed (AERL + 1).
pub const AER_LIMIT: usize = 4;
/// Composite temperature reported, in kelvin.
pub const TEMPERATURE_K: u16 = 308;
/// Warning composite temperature threshold, in kelvin.
pub const WCTEMP_K: u16 = 343;

/// Identify Controller data (CNS 01h) into a 4096-byte buffer.
pub fn controller(id: &Identity, b: &mut [u8; IDENTIFY_SIZE]) {
    b.fill(0);
    let c: &mut IdentifyController = zerocopy::transmute_mut!(b);
    c.vid.set(id.vid);
    c.ssvid.set(id.ssvid);
    put_ascii(&mut c.sn, &id.serial);
    put_ascii(&mut c.mn, &id.model);
    put_ascii(&mut c.fr, &id.firmware);
    c.rab = 6; // 64 commands
    c.mdts = MDTS;
    c.cntlid.set(id.cntlid);
    c.ver.set(vs::V1_4_0);
    c.cntrltype = 1; // I/O controller
    c.oacs.set(0); // none of the optional admin commands
    c.acl = 3; // 4 concurrent Aborts
    c.aerl = (AER_LIMIT - 1) as u8;
    c.frmw = 0x03; // 1 slot, slot 1 read-only
    c.lpa = 0x04; // extended data for Get Log Page (NUMDU, offsets)
    c.elpe = (ERROR_LOG_ENTRIES - 1) as u8;
    c.npss = 0; // one power state
    c.avscc = 1;
    c.wctemp.set(WCTEMP_K);
    c.cctemp.set(373);
    c.sqes = ((SQES_LOG2 << 4) | SQES_LOG2) as u8; // 64 bytes, required and maximum
    c.cqes = ((CQES_LOG2 << 4) | CQES_LOG2) as u8; // 16 bytes
    c.nn.set(1);
    c.oncs.set(oncs::DSM | oncs::WRITE_ZEROES);
    c.vwc = 0x07; // present, Flush with NSID FFFFFFFFh supported
    c.sgls.set(0); // not supported
    let nqn = format!("nqn.2024-01.dev.pcietun:nvme:{}", id.serial.trim());
    let n = nqn.len().min(255);
    c.subnqn[..n].copy_from_slice(&nqn.as_bytes()[..n]);
    // Power state 0: 25 W, operational.
    c.psd[0].mp.set(2500);
}

/// Identify Namespace data (CNS 00h) for a namespace of `blocks` blocks of 2^`lbads` bytes.
pub fn namespace(id: &Identity, blocks: u64, lbads: u8, b: &mut [u8; IDENTIFY_SIZE]) {
    b.fill(0);
    let n: &mut IdentifyNamespace = zerocopy::transmute_mut!(b);
    n.nsze.set(blocks);
    n.ncap.set(blocks);
    n.nuse.set(blocks);
    n.nsfeat = 0;
    n.nlbaf = 0; // one format
    n.flbas = 0; // format 0, no metadata
    n.nguid = id.nguid;
    n.eui64 = id.eui64;
    n.lbaf[0] = LbaFormat {
        lbads,
        ..LbaFormat::default()
    };
}

/// Active Namespace ID list (CNS 02h): namespaces with an ID greater than `after`.
pub fn active_ns_list(after: u32, b: &mut [u8; IDENTIFY_SIZE]) {
    b.fill(0);
    if after < 1 {
        b[..4].copy_from_slice(&1u32.to_le_bytes());
    }
}

/// Namespace Identification Descriptor list (CNS 03h): EUI-64, NGUID, UUID, CSI (NVM).
pub fn ns_descriptors(id: &Identity, b: &mut [u8; IDENTIFY_SIZE]) {
    b.fill(0);
    let mut at = 0;
    for (nidt, data) in [
        (nidt::EUI64, &id.eui64[..]),
        (nidt::NGUID, &id.nguid[..]),
        (nidt::UUID, &id.uuid[..]),
        (nidt::CSI, &[0u8][..]),
    ] {
        let h = NsDescriptorHeader {
            nidt,
            nidl: data.len() as u8,
            ..NsDescriptorHeader::default()
        };
        let hl = size_of::<NsDescriptorHeader>();
        b[at..at + hl].copy_from_slice(h.as_bytes());
        b[at + hl..at + hl + data.len()].copy_from_slice(data);
        at += hl + data.len();
    }
}

/// The Error Information log entry of a failed command: error `count` (unique, increasing),
/// the command's queue and identifier, its status, the LBA of the first failing block (0 if
/// none) and its namespace.
pub fn error_entry(
    count: u64,
    sqid: u16,
    cid: u16,
    status: Status,
    lba: u64,
    nsid: u32,
) -> ErrorLogEntry {
    ErrorLogEntry {
        error_count: count.into(),
        sqid: sqid.into(),
        cid: cid.into(),
        // The status field as in the completion: bits 15:1, the phase tag bit 0.
        status: (status.field() << 1).into(),
        param_error_location: 0xffff.into(), // not specific
        lba: lba.into(),
        nsid: nsid.into(),
        ..ErrorLogEntry::default()
    }
}

/// Error Information log (LID 01h) of the last [`ERROR_LOG_ENTRIES`] errors (oldest first in
/// `entries`), newest first.
pub fn error_log(entries: &VecDeque<ErrorLogEntry>, out: &mut Vec<u8>) {
    let size = size_of::<ErrorLogEntry>();
    out.clear();
    out.resize(ERROR_LOG_ENTRIES * size, 0);
    let slots = out.chunks_exact_mut(size);
    for (e, b) in entries.iter().rev().take(ERROR_LOG_ENTRIES).zip(slots) {
        b.copy_from_slice(e.as_bytes());
    }
}

/// Health counters behind the SMART log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    /// 512-byte units read.
    pub units_read: u64,
    /// 512-byte units written.
    pub units_written: u64,
    /// Read commands.
    pub read_cmds: u64,
    /// Write commands.
    pub write_cmds: u64,
    /// Media and data integrity errors.
    pub media_errors: u64,
    /// Error log entries ever created.
    pub error_entries: u64,
    /// Power-on time in hours.
    pub power_on_hours: u64,
    /// Critical warning bits (bit 1: temperature).
    pub critical_warning: u8,
}

/// SMART / Health Information log (LID 02h, 512 bytes).
pub fn smart_log(h: &Health, out: &mut Vec<u8>) {
    let mut log = SmartLog::new_zeroed();
    log.critical_warning = h.critical_warning;
    log.temperature.set(TEMPERATURE_K);
    log.avail_spare = 100; // %
    log.spare_thresh = 10; // %
    log.percent_used = 0;
    // Data units are thousands of 512-byte units, rounded up.
    log.data_units_read.set(h.units_read.div_ceil(1000).into());
    log.data_units_written
        .set(h.units_written.div_ceil(1000).into());
    log.host_reads.set(h.read_cmds.into());
    log.host_writes.set(h.write_cmds.into());
    log.power_cycles.set(1);
    log.power_on_hours.set(h.power_on_hours.into());
    log.media_errors.set(h.media_errors.into());
    log.error_log_entries.set(h.error_entries.into());
    out.clear();
    out.extend_from_slice(log.as_bytes());
}

/// Firmware Slot Information log (LID 03h, 512 bytes): slot 1 active.
pub fn firmware_log(fw: &str, out: &mut Vec<u8>) {
    let mut log = FirmwareSlotLog::new_zeroed();
    log.afi = 1; // slot 1 active
    put_ascii(&mut log.frs[0], fw);
    out.clear();
    out.extend_from_slice(log.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            vid: 0x1b36,
            ssvid: 0x1b36,
            serial: "SN123".into(),
            cntlid: 3,
            model: "model".into(),
            firmware: "1.0".into(),
            nguid: [7; 16],
            eui64: [8; 8],
            uuid: [9; 16],
        }
    }

    #[test]
    fn controller_fields_at_spec_offsets() {
        let mut b = [0u8; 4096];
        controller(&id(), &mut b);
        assert_eq!(&b[4..9], b"SN123");
        assert_eq!(b[9], b' ');
        assert_eq!(b[77], MDTS);
        assert_eq!(u16::from_le_bytes([b[78], b[79]]), 3, "CNTLID");
        assert_eq!(&b[80..84], &[0, 4, 1, 0]);
        assert_eq!((b[512], b[513]), (0x66, 0x44));
        assert_eq!(u32::from_le_bytes(b[516..520].try_into().unwrap()), 1);
        assert_eq!(
            u16::from_le_bytes([b[520], b[521]]),
            0b1100,
            "ONCS: DSM, Write Zeroes"
        );
        assert!(b[768..].starts_with(b"nqn.2024-01.dev.pcietun:nvme:SN123"));
        assert_eq!(u16::from_le_bytes([b[2048], b[2049]]), 2500);
    }

    #[test]
    fn namespace_and_descriptors() {
        let mut b = [0u8; 4096];
        namespace(&id(), 2048, 9, &mut b);
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 2048);
        assert_eq!(&b[104..120], &[7; 16]);
        assert_eq!(&b[120..128], &[8; 8]);
        assert_eq!(b[130], 9);
        ns_descriptors(&id(), &mut b);
        assert_eq!(&b[0..4], &[1, 8, 0, 0]);
        assert_eq!(&b[12..16], &[2, 16, 0, 0]);
        assert_eq!(&b[32..36], &[3, 16, 0, 0]);
        assert_eq!(&b[52..57], &[4, 1, 0, 0, 0]);
    }

    #[test]
    fn log_pages_at_spec_offsets() {
        let mut out = Vec::new();
        let e = |count| error_entry(count, 1, 9, Status::LBA_OUT_OF_RANGE, 77, 1);
        error_log(&VecDeque::from([e(1), e(2)]), &mut out);
        assert_eq!(out.len(), 4 * 64);
        assert_eq!(
            u64::from_le_bytes(out[0..8].try_into().unwrap()),
            2,
            "newest first"
        );
        assert_eq!(u16::from_le_bytes([out[12], out[13]]) >> 1, 0x4080);
        assert_eq!(u16::from_le_bytes([out[14], out[15]]), 0xffff);
        assert_eq!(u64::from_le_bytes(out[16..24].try_into().unwrap()), 77);
        assert_eq!(u64::from_le_bytes(out[64..72].try_into().unwrap()), 1);
        assert!(out[128..].iter().all(|&b| b == 0));
        let h = Health {
            units_read: 1001,
            write_cmds: 3,
            ..Health::default()
        };
        smart_log(&h, &mut out);
        assert_eq!(out.len(), 512);
        assert_eq!(u16::from_le_bytes([out[1], out[2]]), TEMPERATURE_K);
        assert_eq!(u64::from_le_bytes(out[32..40].try_into().unwrap()), 2);
        assert_eq!(u64::from_le_bytes(out[80..88].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(out[112..120].try_into().unwrap()), 1);
        firmware_log("0.1.0", &mut out);
        assert_eq!((out.len(), out[0]), (512, 1));
        assert_eq!(&out[8..16], b"0.1.0   ");
    }
}
