//! Identify data structures and log pages (NVMe 1.4c §5.15.2 Identify Controller, Figure 247;
//! Identify Namespace, Figure 245 (NVM command set §6.1); namespace identification descriptors,
//! Figure 249; Get Log Page §5.14.1: error information Figure 194, SMART / health Figure 196,
//! firmware slot Figure 197).

/// What the controller says about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    /// PCI vendor ID.
    pub vid: u16,
    /// PCI subsystem vendor ID.
    pub ssvid: u16,
    /// Serial number (ASCII, at most 20 bytes).
    pub serial: String,
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

fn put_str(buf: &mut [u8], s: &str) {
    buf.fill(b' ');
    for (d, c) in buf
        .iter_mut()
        .zip(s.bytes().filter(|c| c.is_ascii_graphic() || *c == b' '))
    {
        *d = c;
    }
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Identify Controller data (CNS 01h) into a 4096-byte buffer.
pub fn controller(id: &Identity, b: &mut [u8; 4096]) {
    b.fill(0);
    put16(b, 0, id.vid);
    put16(b, 2, id.ssvid);
    put_str(&mut b[4..24], &id.serial);
    put_str(&mut b[24..64], &id.model);
    put_str(&mut b[64..72], &id.firmware);
    b[72] = 6; // RAB: 64 commands
    b[77] = MDTS;
    put16(b, 78, 1); // CNTLID
    put32(b, 80, 0x0001_0400); // VER 1.4.0
    b[111] = 1; // CNTRLTYPE: I/O controller
    put16(b, 256, 0); // OACS: none of the optional admin commands
    b[258] = 3; // ACL: 4 concurrent Aborts
    b[259] = (AER_LIMIT - 1) as u8; // AERL
    b[260] = 0x03; // FRMW: 1 slot, slot 1 read-only
    b[261] = 0x04; // LPA: extended data for Get Log Page (NUMDU, offsets)
    b[262] = (ERROR_LOG_ENTRIES - 1) as u8; // ELPE
    b[263] = 0; // NPSS: one power state
    b[264] = 1; // AVSCC
    put16(b, 266, WCTEMP_K);
    put16(b, 268, 373); // CCTEMP
    b[512] = 0x66; // SQES: 64 bytes
    b[513] = 0x44; // CQES: 16 bytes
    put32(b, 516, 1); // NN
    put16(b, 520, (1 << 2) | (1 << 3)); // ONCS: Dataset Management, Write Zeroes
    b[525] = 0x07; // VWC: present, Flush with NSID FFFFFFFFh supported
    put32(b, 536, 0); // SGLS: not supported
    let nqn = format!("nqn.2024-01.dev.pcietun:nvme:{}", id.serial.trim());
    let n = nqn.len().min(255);
    b[768..768 + n].copy_from_slice(&nqn.as_bytes()[..n]);
    // Power state 0: 25 W, operational.
    put16(b, 2048, 2500);
}

/// Identify Namespace data (CNS 00h) for a namespace of `blocks` blocks of 2^`lbads` bytes.
pub fn namespace(id: &Identity, blocks: u64, lbads: u8, b: &mut [u8; 4096]) {
    b.fill(0);
    put64(b, 0, blocks); // NSZE
    put64(b, 8, blocks); // NCAP
    put64(b, 16, blocks); // NUSE
    b[24] = 0; // NSFEAT
    b[25] = 0; // NLBAF: one format
    b[26] = 0; // FLBAS: format 0, no metadata
    b[104..120].copy_from_slice(&id.nguid);
    b[120..128].copy_from_slice(&id.eui64);
    put32(b, 128, u32::from(lbads) << 16); // LBAF0: MS 0, LBADS, RP 0
}

/// Active Namespace ID list (CNS 02h): namespaces with an ID greater than `after`.
pub fn active_ns_list(after: u32, b: &mut [u8; 4096]) {
    b.fill(0);
    if after < 1 {
        put32(b, 0, 1);
    }
}

/// Namespace Identification Descriptor list (CNS 03h): EUI-64, NGUID, UUID, CSI (NVM).
pub fn ns_descriptors(id: &Identity, b: &mut [u8; 4096]) {
    b.fill(0);
    let mut at = 0;
    for (nidt, data) in [
        (1u8, &id.eui64[..]),
        (2, &id.nguid[..]),
        (3, &id.uuid[..]),
        (4, &[0u8][..]),
    ] {
        b[at] = nidt;
        b[at + 1] = data.len() as u8;
        b[at + 4..at + 4 + data.len()].copy_from_slice(data);
        at += 4 + data.len();
    }
}

/// One error information log entry (64 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorEntry {
    /// Error count (unique, increasing).
    pub count: u64,
    /// Submission queue ID.
    pub sqid: u16,
    /// Command ID.
    pub cid: u16,
    /// Status field (15 bits) with the phase bit position zero.
    pub status: u16,
    /// LBA of the first failing block, if any.
    pub lba: u64,
    /// Namespace.
    pub nsid: u32,
}

/// Error Information log (LID 01h), newest first.
pub fn error_log(entries: &[ErrorEntry], out: &mut Vec<u8>) {
    out.clear();
    out.resize(ERROR_LOG_ENTRIES * 64, 0);
    for (i, e) in entries.iter().rev().take(ERROR_LOG_ENTRIES).enumerate() {
        let b = &mut out[i * 64..i * 64 + 64];
        put64(b, 0, e.count);
        put16(b, 8, e.sqid);
        put16(b, 10, e.cid);
        put16(b, 12, e.status << 1);
        put16(b, 14, 0xffff); // parameter error location: not specific
        put64(b, 16, e.lba);
        put32(b, 24, e.nsid);
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
    out.clear();
    out.resize(512, 0);
    out[0] = h.critical_warning;
    put16(out, 1, TEMPERATURE_K);
    out[3] = 100; // available spare %
    out[4] = 10; // available spare threshold %
    out[5] = 0; // percentage used
                // Data units are thousands of 512-byte units, rounded up.
    put64(out, 32, h.units_read.div_ceil(1000));
    put64(out, 48, h.units_written.div_ceil(1000));
    put64(out, 64, h.read_cmds);
    put64(out, 80, h.write_cmds);
    put64(out, 112, 1); // power cycles
    put64(out, 128, h.power_on_hours);
    put64(out, 160, h.media_errors);
    put64(out, 176, h.error_entries);
}

/// Firmware Slot Information log (LID 03h, 512 bytes): slot 1 active.
pub fn firmware_log(fw: &str, out: &mut Vec<u8>) {
    out.clear();
    out.resize(512, 0);
    out[0] = 1; // AFI: slot 1 active
    put_str(&mut out[8..16], fw);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            vid: 0x1b36,
            ssvid: 0x1b36,
            serial: "SN123".into(),
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
        assert_eq!(&b[80..84], &[0, 4, 1, 0]);
        assert_eq!((b[512], b[513]), (0x66, 0x44));
        assert_eq!(u32::from_le_bytes(b[516..520].try_into().unwrap()), 1);
        assert!(b[768..].starts_with(b"nqn.2024-01.dev.pcietun:nvme:SN123"));
    }

    #[test]
    fn namespace_and_descriptors() {
        let mut b = [0u8; 4096];
        namespace(&id(), 2048, 9, &mut b);
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 2048);
        assert_eq!(b[130], 9);
        ns_descriptors(&id(), &mut b);
        assert_eq!(&b[0..4], &[1, 8, 0, 0]);
        assert_eq!(&b[12..16], &[2, 16, 0, 0]);
        assert_eq!(&b[32..36], &[3, 16, 0, 0]);
        assert_eq!(&b[52..57], &[4, 1, 0, 0, 0]);
    }
}
