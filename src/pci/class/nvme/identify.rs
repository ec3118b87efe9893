//! Identify data structures and log pages (NVM Express Base Specification 1.4c): Identify
//! Controller (§5.15.2.2, Figure 247) with its power state descriptors (Figure 248), Identify
//! Namespace of the NVM command set (§5.15.2.1, Figure 245) with its LBA formats (Figure 246),
//! the namespace identification descriptors (§5.15.2.4, Figure 249), and the log pages of
//! Get Log Page (§5.14.1): Error Information (Figure 194), SMART / Health Information (Figure
//! 196) and Firmware Slot Information (Figure 197).
//!
//! Every structure is a `zerocopy` struct of its exact size with little-endian fields: the
//! controller fills one in place (`mut_from_bytes` over its 4 KiB page), a driver reads one
//! from whatever bytes the card wrote (`ref_from_bytes` cannot fail on a full page and never
//! panics). Reserved ranges are named `rsvd<offset>`.

use zerocopy::little_endian::{U128, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::IDENTIFY_SIZE;

/// One power state descriptor of Identify Controller (Figure 248): 32 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PowerStateDescriptor {
    /// Maximum Power, in 0.01 W (or 0.0001 W with MXPS).
    pub mp: U16,
    /// Reserved.
    pub rsvd2: u8,
    /// Max Power Scale (bit 0) and Non-Operational State (bit 1).
    pub flags: u8,
    /// Entry Latency, µs.
    pub enlat: U32,
    /// Exit Latency, µs.
    pub exlat: U32,
    /// Relative Read Throughput.
    pub rrt: u8,
    /// Relative Read Latency.
    pub rrl: u8,
    /// Relative Write Throughput.
    pub rwt: u8,
    /// Relative Write Latency.
    pub rwl: u8,
    /// Idle Power.
    pub idlp: U16,
    /// Idle Power Scale (bits 7:6).
    pub ips: u8,
    /// Reserved.
    pub rsvd19: u8,
    /// Active Power.
    pub actp: U16,
    /// Active Power Workload (2:0) and Active Power Scale (7:6).
    pub apw_aps: u8,
    /// Reserved.
    pub rsvd23: [u8; 9],
}

/// Identify Controller data structure (CNS 01h, Figure 247): 4096 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IdentifyController {
    /// PCI Vendor ID.
    pub vid: U16,
    /// PCI Subsystem Vendor ID.
    pub ssvid: U16,
    /// Serial Number (ASCII, space padded).
    pub sn: [u8; 20],
    /// Model Number (ASCII, space padded).
    pub mn: [u8; 40],
    /// Firmware Revision (ASCII, space padded).
    pub fr: [u8; 8],
    /// Recommended Arbitration Burst (2^RAB commands).
    pub rab: u8,
    /// IEEE OUI Identifier.
    pub ieee: [u8; 3],
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities.
    pub cmic: u8,
    /// Maximum Data Transfer Size, a power of two of CAP.MPSMIN pages (0: no limit).
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: U16,
    /// Version (the VS register's format).
    pub ver: U32,
    /// RTD3 Resume Latency, µs.
    pub rtd3r: U32,
    /// RTD3 Entry Latency, µs.
    pub rtd3e: U32,
    /// Optional Asynchronous Events Supported.
    pub oaes: U32,
    /// Controller Attributes.
    pub ctratt: U32,
    /// Read Recovery Levels Supported.
    pub rrls: U16,
    /// Reserved.
    pub rsvd102: [u8; 9],
    /// Controller Type (1: I/O controller).
    pub cntrltype: u8,
    /// FRU Globally Unique Identifier.
    pub fguid: [u8; 16],
    /// Command Retry Delay Time 1, in 100 ms.
    pub crdt1: U16,
    /// Command Retry Delay Time 2.
    pub crdt2: U16,
    /// Command Retry Delay Time 3.
    pub crdt3: U16,
    /// Reserved.
    pub rsvd134: [u8; 106],
    /// Reserved for the NVMe Management Interface.
    pub rsvd240: [u8; 16],
    /// Optional Admin Command Support.
    pub oacs: U16,
    /// Abort Command Limit (0's based).
    pub acl: u8,
    /// Asynchronous Event Request Limit (0's based).
    pub aerl: u8,
    /// Firmware Updates.
    pub frmw: u8,
    /// Log Page Attributes.
    pub lpa: u8,
    /// Error Log Page Entries (0's based).
    pub elpe: u8,
    /// Number of Power States Support (0's based).
    pub npss: u8,
    /// Admin Vendor Specific Command Configuration.
    pub avscc: u8,
    /// Autonomous Power State Transition Attributes.
    pub apsta: u8,
    /// Warning Composite Temperature Threshold, K.
    pub wctemp: U16,
    /// Critical Composite Temperature Threshold, K.
    pub cctemp: U16,
    /// Maximum Time for Firmware Activation, 100 ms.
    pub mtfa: U16,
    /// Host Memory Buffer Preferred Size, 4 KiB units.
    pub hmpre: U32,
    /// Host Memory Buffer Minimum Size.
    pub hmmin: U32,
    /// Total NVM Capacity, bytes.
    pub tnvmcap: [u8; 16],
    /// Unallocated NVM Capacity, bytes.
    pub unvmcap: [u8; 16],
    /// Replay Protected Memory Block Support.
    pub rpmbs: U32,
    /// Extended Device Self-test Time, minutes.
    pub edstt: U16,
    /// Device Self-test Options.
    pub dsto: u8,
    /// Firmware Update Granularity, 4 KiB.
    pub fwug: u8,
    /// Keep Alive Support, 100 ms (0: not supported).
    pub kas: U16,
    /// Host Controlled Thermal Management Attributes.
    pub hctma: U16,
    /// Minimum Thermal Management Temperature.
    pub mntmt: U16,
    /// Maximum Thermal Management Temperature.
    pub mxtmt: U16,
    /// Sanitize Capabilities.
    pub sanicap: U32,
    /// Host Memory Buffer Minimum Descriptor Entry Size.
    pub hmminds: U32,
    /// Host Memory Maximum Descriptors Entries.
    pub hmmaxd: U16,
    /// NVM Set Identifier Maximum.
    pub nsetidmax: U16,
    /// Endurance Group Identifier Maximum.
    pub endgidmax: U16,
    /// ANA Transition Time.
    pub anatt: u8,
    /// Asymmetric Namespace Access Capabilities.
    pub anacap: u8,
    /// ANA Group Identifier Maximum.
    pub anagrpmax: U32,
    /// Number of ANA Group Identifiers.
    pub nanagrpid: U32,
    /// Persistent Event Log Size.
    pub pels: U32,
    /// Reserved.
    pub rsvd356: [u8; 156],
    /// Submission Queue Entry Size: maximum (7:4) and required (3:0), log2.
    pub sqes: u8,
    /// Completion Queue Entry Size: maximum (7:4) and required (3:0), log2.
    pub cqes: u8,
    /// Maximum Outstanding Commands.
    pub maxcmd: U16,
    /// Number of Namespaces.
    pub nn: U32,
    /// Optional NVM Command Support.
    pub oncs: U16,
    /// Fused Operation Support.
    pub fuses: U16,
    /// Format NVM Attributes.
    pub fna: u8,
    /// Volatile Write Cache.
    pub vwc: u8,
    /// Atomic Write Unit Normal.
    pub awun: U16,
    /// Atomic Write Unit Power Fail.
    pub awupf: U16,
    /// NVM Vendor Specific Command Configuration.
    pub nvscc: u8,
    /// Namespace Write Protection Capabilities.
    pub nwpc: u8,
    /// Atomic Compare & Write Unit.
    pub acwu: U16,
    /// Reserved.
    pub rsvd534: [u8; 2],
    /// SGL Support.
    pub sgls: U32,
    /// Maximum Number of Allowed Namespaces.
    pub mnan: U32,
    /// Reserved.
    pub rsvd544: [u8; 224],
    /// NVM Subsystem NVMe Qualified Name (UTF-8, NUL terminated).
    pub subnqn: [u8; 256],
    /// Reserved.
    pub rsvd1024: [u8; 768],
    /// NVMe over Fabrics attributes.
    pub nvmof: [u8; 256],
    /// Power State Descriptors 0..=31.
    pub psd: [PowerStateDescriptor; 32],
    /// Vendor Specific.
    pub vs: [u8; 1024],
}

/// Optional NVM Command Support bits (ONCS).
pub mod oncs {
    /// Dataset Management.
    pub const DSM: u16 = 1 << 2;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u16 = 1 << 3;
}

/// One LBA Format of Identify Namespace (Figure 246): 4 bytes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct LbaFormat {
    /// Metadata Size, bytes.
    pub ms: U16,
    /// LBA Data Size: the block is 2^LBADS bytes (≥ 9 when the format is valid).
    pub lbads: u8,
    /// Relative Performance (bits 1:0).
    pub rp: u8,
}

/// Identify Namespace data structure of the NVM command set (CNS 00h, Figure 245): 4096 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IdentifyNamespace {
    /// Namespace Size, logical blocks.
    pub nsze: U64,
    /// Namespace Capacity.
    pub ncap: U64,
    /// Namespace Utilization.
    pub nuse: U64,
    /// Namespace Features.
    pub nsfeat: u8,
    /// Number of LBA Formats (0's based).
    pub nlbaf: u8,
    /// Formatted LBA Size: the format in use (bits 3:0), metadata at end of LBA (bit 4).
    pub flbas: u8,
    /// Metadata Capabilities.
    pub mc: u8,
    /// End-to-end Data Protection Capabilities.
    pub dpc: u8,
    /// End-to-end Data Protection Type Settings.
    pub dps: u8,
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities.
    pub nmic: u8,
    /// Reservation Capabilities.
    pub rescap: u8,
    /// Format Progress Indicator.
    pub fpi: u8,
    /// Deallocate Logical Block Features.
    pub dlfeat: u8,
    /// Namespace Atomic Write Unit Normal.
    pub nawun: U16,
    /// Namespace Atomic Write Unit Power Fail.
    pub nawupf: U16,
    /// Namespace Atomic Compare & Write Unit.
    pub nacwu: U16,
    /// Namespace Atomic Boundary Size Normal.
    pub nabsn: U16,
    /// Namespace Atomic Boundary Offset.
    pub nabo: U16,
    /// Namespace Atomic Boundary Size Power Fail.
    pub nabspf: U16,
    /// Namespace Optimal I/O Boundary.
    pub noiob: U16,
    /// NVM Capacity, bytes.
    pub nvmcap: [u8; 16],
    /// Namespace Preferred Write Granularity.
    pub npwg: U16,
    /// Namespace Preferred Write Alignment.
    pub npwa: U16,
    /// Namespace Preferred Deallocate Granularity.
    pub npdg: U16,
    /// Namespace Preferred Deallocate Alignment.
    pub npda: U16,
    /// Namespace Optimal Write Size.
    pub nows: U16,
    /// Reserved.
    pub rsvd74: [u8; 18],
    /// ANA Group Identifier.
    pub anagrpid: U32,
    /// Reserved.
    pub rsvd96: [u8; 3],
    /// Namespace Attributes.
    pub nsattr: u8,
    /// NVM Set Identifier.
    pub nvmsetid: U16,
    /// Endurance Group Identifier.
    pub endgid: U16,
    /// Namespace Globally Unique Identifier.
    pub nguid: [u8; 16],
    /// IEEE Extended Unique Identifier.
    pub eui64: [u8; 8],
    /// LBA Formats 0..=15.
    pub lbaf: [LbaFormat; 16],
    /// Reserved.
    pub rsvd192: [u8; 192],
    /// Vendor Specific.
    pub vs: [u8; 3712],
}

impl IdentifyNamespace {
    /// The LBA format in use (FLBAS bits 3:0 index the 16 formats).
    pub fn lba_format(&self) -> LbaFormat {
        self.lbaf[usize::from(self.flbas & 0xf)]
    }
}

/// Header of one Namespace Identification Descriptor (Figure 249); NIDL bytes of the
/// identifier follow it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NsDescriptorHeader {
    /// Namespace Identifier Type ([`nidt`]).
    pub nidt: u8,
    /// Namespace Identifier Length.
    pub nidl: u8,
    /// Reserved.
    pub rsvd2: [u8; 2],
}

/// Namespace Identifier Types (Figure 250).
pub mod nidt {
    /// IEEE Extended Unique Identifier (8 bytes).
    pub const EUI64: u8 = 1;
    /// Namespace Globally Unique Identifier (16 bytes).
    pub const NGUID: u8 = 2;
    /// Namespace UUID (16 bytes).
    pub const UUID: u8 = 3;
    /// Command Set Identifier (1 byte; 0 = NVM).
    pub const CSI: u8 = 4;
}

/// One Error Information log entry (LID 01h, Figure 194): 64 bytes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ErrorLogEntry {
    /// Error Count: unique and increasing (0: the entry is invalid).
    pub error_count: U64,
    /// Submission Queue ID.
    pub sqid: U16,
    /// Command ID.
    pub cid: U16,
    /// Status Field (bits 15:1) of the failed completion; bit 0 is the Phase Tag.
    pub status: U16,
    /// Parameter Error Location (FFFFh: not specific).
    pub param_error_location: U16,
    /// LBA of the first failing block.
    pub lba: U64,
    /// Namespace.
    pub nsid: U32,
    /// Vendor Specific Information Available.
    pub vs: u8,
    /// Transport Type.
    pub trtype: u8,
    /// Reserved.
    pub rsvd30: [u8; 2],
    /// Command Specific Information.
    pub csi: U64,
    /// Transport Type Specific Information.
    pub ttsi: U16,
    /// Reserved.
    pub rsvd42: [u8; 22],
}

/// SMART / Health Information log (LID 02h, Figure 196): 512 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SmartLog {
    /// Critical Warning bits (bit 1: temperature).
    pub critical_warning: u8,
    /// Composite Temperature, K.
    pub temperature: U16,
    /// Available Spare, %.
    pub avail_spare: u8,
    /// Available Spare Threshold, %.
    pub spare_thresh: u8,
    /// Percentage Used.
    pub percent_used: u8,
    /// Endurance Group Critical Warning Summary.
    pub endurance_cw: u8,
    /// Reserved.
    pub rsvd7: [u8; 25],
    /// Data Units Read: thousands of 512-byte units, rounded up.
    pub data_units_read: U128,
    /// Data Units Written.
    pub data_units_written: U128,
    /// Host Read Commands.
    pub host_reads: U128,
    /// Host Write Commands.
    pub host_writes: U128,
    /// Controller Busy Time, minutes.
    pub ctrl_busy_time: U128,
    /// Power Cycles.
    pub power_cycles: U128,
    /// Power On Hours.
    pub power_on_hours: U128,
    /// Unsafe Shutdowns.
    pub unsafe_shutdowns: U128,
    /// Media and Data Integrity Errors.
    pub media_errors: U128,
    /// Number of Error Information Log Entries over the controller's life.
    pub error_log_entries: U128,
    /// Warning Composite Temperature Time, minutes.
    pub warning_temp_time: U32,
    /// Critical Composite Temperature Time, minutes.
    pub critical_temp_time: U32,
    /// Temperature Sensors 1..=8, K.
    pub temp_sensor: [U16; 8],
    /// Thermal Management Temperature 1 Transition Count.
    pub thm_temp1_count: U32,
    /// Thermal Management Temperature 2 Transition Count.
    pub thm_temp2_count: U32,
    /// Total Time For Thermal Management Temperature 1, s.
    pub thm_temp1_time: U32,
    /// Total Time For Thermal Management Temperature 2, s.
    pub thm_temp2_time: U32,
    /// Reserved.
    pub rsvd232: [u8; 280],
}

/// Firmware Slot Information log (LID 03h, Figure 197): 512 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct FirmwareSlotLog {
    /// Active Firmware Info: active slot (2:0), next slot at reset (6:4).
    pub afi: u8,
    /// Reserved.
    pub rsvd1: [u8; 7],
    /// Firmware Revision for Slots 1..=7 (ASCII).
    pub frs: [[u8; 8]; 7],
    /// Reserved.
    pub rsvd64: [u8; 448],
}

const _: () = {
    assert!(size_of::<PowerStateDescriptor>() == 32);
    assert!(size_of::<IdentifyController>() == IDENTIFY_SIZE);
    assert!(size_of::<IdentifyNamespace>() == IDENTIFY_SIZE);
    assert!(size_of::<LbaFormat>() == 4);
    assert!(size_of::<NsDescriptorHeader>() == 4);
    assert!(size_of::<ErrorLogEntry>() == 64);
    assert!(size_of::<SmartLog>() == 512);
    assert!(size_of::<FirmwareSlotLog>() == 512);
};

/// Copy `s` into an ASCII field as Identify's text fields hold it: printable characters only,
/// padded with spaces, cut at the field's length.
pub fn put_ascii(field: &mut [u8], s: &str) {
    field.fill(b' ');
    for (d, c) in field
        .iter_mut()
        .zip(s.bytes().filter(|c| c.is_ascii_graphic() || *c == b' '))
    {
        *d = c;
    }
}

/// An ASCII field as text: invalid UTF-8 replaced, the padding trimmed.
pub fn ascii(field: &[u8]) -> String {
    String::from_utf8_lossy(field)
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use proptest::prelude::*;
    use zerocopy::FromZeros;

    #[test]
    fn identify_controller_offsets() {
        // Figure 247, byte ranges of the fields both sides use (and their neighbours).
        let at = [
            (offset_of!(IdentifyController, vid), 0),
            (offset_of!(IdentifyController, ssvid), 2),
            (offset_of!(IdentifyController, sn), 4),
            (offset_of!(IdentifyController, mn), 24),
            (offset_of!(IdentifyController, fr), 64),
            (offset_of!(IdentifyController, rab), 72),
            (offset_of!(IdentifyController, ieee), 73),
            (offset_of!(IdentifyController, cmic), 76),
            (offset_of!(IdentifyController, mdts), 77),
            (offset_of!(IdentifyController, cntlid), 78),
            (offset_of!(IdentifyController, ver), 80),
            (offset_of!(IdentifyController, oaes), 92),
            (offset_of!(IdentifyController, ctratt), 96),
            (offset_of!(IdentifyController, cntrltype), 111),
            (offset_of!(IdentifyController, fguid), 112),
            (offset_of!(IdentifyController, crdt1), 128),
            (offset_of!(IdentifyController, oacs), 256),
            (offset_of!(IdentifyController, acl), 258),
            (offset_of!(IdentifyController, aerl), 259),
            (offset_of!(IdentifyController, frmw), 260),
            (offset_of!(IdentifyController, lpa), 261),
            (offset_of!(IdentifyController, elpe), 262),
            (offset_of!(IdentifyController, npss), 263),
            (offset_of!(IdentifyController, avscc), 264),
            (offset_of!(IdentifyController, wctemp), 266),
            (offset_of!(IdentifyController, cctemp), 268),
            (offset_of!(IdentifyController, tnvmcap), 280),
            (offset_of!(IdentifyController, kas), 320),
            (offset_of!(IdentifyController, pels), 352),
            (offset_of!(IdentifyController, sqes), 512),
            (offset_of!(IdentifyController, cqes), 513),
            (offset_of!(IdentifyController, maxcmd), 514),
            (offset_of!(IdentifyController, nn), 516),
            (offset_of!(IdentifyController, oncs), 520),
            (offset_of!(IdentifyController, fuses), 522),
            (offset_of!(IdentifyController, vwc), 525),
            (offset_of!(IdentifyController, acwu), 532),
            (offset_of!(IdentifyController, sgls), 536),
            (offset_of!(IdentifyController, mnan), 540),
            (offset_of!(IdentifyController, subnqn), 768),
            (offset_of!(IdentifyController, nvmof), 1792),
            (offset_of!(IdentifyController, psd), 2048),
            (offset_of!(IdentifyController, vs), 3072),
        ];
        for (i, (got, want)) in at.iter().enumerate() {
            assert_eq!(got, want, "field {i}");
        }
        assert_eq!(offset_of!(PowerStateDescriptor, enlat), 4);
        assert_eq!(offset_of!(PowerStateDescriptor, idlp), 16);
        assert_eq!(offset_of!(PowerStateDescriptor, actp), 20);
    }

    #[test]
    fn identify_namespace_offsets() {
        let at = [
            (offset_of!(IdentifyNamespace, nsze), 0),
            (offset_of!(IdentifyNamespace, ncap), 8),
            (offset_of!(IdentifyNamespace, nuse), 16),
            (offset_of!(IdentifyNamespace, nsfeat), 24),
            (offset_of!(IdentifyNamespace, nlbaf), 25),
            (offset_of!(IdentifyNamespace, flbas), 26),
            (offset_of!(IdentifyNamespace, dlfeat), 33),
            (offset_of!(IdentifyNamespace, noiob), 46),
            (offset_of!(IdentifyNamespace, nvmcap), 48),
            (offset_of!(IdentifyNamespace, nows), 72),
            (offset_of!(IdentifyNamespace, anagrpid), 92),
            (offset_of!(IdentifyNamespace, nsattr), 99),
            (offset_of!(IdentifyNamespace, nvmsetid), 100),
            (offset_of!(IdentifyNamespace, endgid), 102),
            (offset_of!(IdentifyNamespace, nguid), 104),
            (offset_of!(IdentifyNamespace, eui64), 120),
            (offset_of!(IdentifyNamespace, lbaf), 128),
            (offset_of!(IdentifyNamespace, vs), 384),
        ];
        for (i, (got, want)) in at.iter().enumerate() {
            assert_eq!(got, want, "field {i}");
        }
        assert_eq!(offset_of!(LbaFormat, lbads), 2);
    }

    #[test]
    fn log_page_offsets() {
        assert_eq!(offset_of!(ErrorLogEntry, sqid), 8);
        assert_eq!(offset_of!(ErrorLogEntry, cid), 10);
        assert_eq!(offset_of!(ErrorLogEntry, status), 12);
        assert_eq!(offset_of!(ErrorLogEntry, param_error_location), 14);
        assert_eq!(offset_of!(ErrorLogEntry, lba), 16);
        assert_eq!(offset_of!(ErrorLogEntry, nsid), 24);
        assert_eq!(offset_of!(ErrorLogEntry, csi), 32);
        assert_eq!(offset_of!(SmartLog, temperature), 1);
        assert_eq!(offset_of!(SmartLog, avail_spare), 3);
        assert_eq!(offset_of!(SmartLog, data_units_read), 32);
        assert_eq!(offset_of!(SmartLog, data_units_written), 48);
        assert_eq!(offset_of!(SmartLog, host_reads), 64);
        assert_eq!(offset_of!(SmartLog, host_writes), 80);
        assert_eq!(offset_of!(SmartLog, power_cycles), 112);
        assert_eq!(offset_of!(SmartLog, power_on_hours), 128);
        assert_eq!(offset_of!(SmartLog, media_errors), 160);
        assert_eq!(offset_of!(SmartLog, error_log_entries), 176);
        assert_eq!(offset_of!(SmartLog, warning_temp_time), 192);
        assert_eq!(offset_of!(SmartLog, temp_sensor), 200);
        assert_eq!(offset_of!(SmartLog, thm_temp2_time), 228);
        assert_eq!(offset_of!(FirmwareSlotLog, frs), 8);
    }

    #[test]
    fn controller_bytes_land_where_the_spec_puts_them() {
        let mut c = IdentifyController::new_zeroed();
        c.vid.set(0x1b36);
        put_ascii(&mut c.sn, "SN123");
        c.mdts = 5;
        c.ver.set(0x0001_0400);
        c.psd[0].mp.set(2500);
        let b = c.as_bytes();
        assert_eq!(&b[0..2], &[0x36, 0x1b]);
        assert_eq!(&b[4..10], b"SN123 ");
        assert_eq!(b[23], b' ');
        assert_eq!(b[77], 5);
        assert_eq!(&b[80..84], &[0, 4, 1, 0]);
        assert_eq!(&b[2048..2050], &2500u16.to_le_bytes());
        assert_eq!(ascii(&c.sn), "SN123");
        let mut n = IdentifyNamespace::new_zeroed();
        n.flbas = 0x11; // format 1, metadata at the end of the LBA
        n.lbaf[1].lbads = 12;
        assert_eq!(n.as_bytes()[128 + 4 + 2], 12);
        assert_eq!(n.lba_format().lbads, 12);
    }

    #[test]
    fn ascii_fields() {
        let mut f = [0u8; 8];
        put_ascii(&mut f, "a\u{e9}b\tc longer than eight");
        assert_eq!(&f, b"abc long");
        assert_eq!(ascii(b"  x y \0\0"), "x y");
        assert_eq!(ascii(&[0xff, b'a']), "\u{fffd}a");
    }

    proptest! {
        #[test]
        fn any_page_is_a_structure(page in proptest::collection::vec(any::<u8>(), 4096)) {
            let c = IdentifyController::ref_from_bytes(&page[..]).unwrap();
            prop_assert_eq!(c.mdts, page[77]);
            prop_assert_eq!(c.nn.get(), u32::from_le_bytes(page[516..520].try_into().unwrap()));
            let _ = (ascii(&c.sn), ascii(&c.mn), ascii(&c.fr));
            let n = IdentifyNamespace::ref_from_bytes(&page[..]).unwrap();
            let f = usize::from(page[26] & 0xf);
            prop_assert_eq!(n.lba_format().lbads, page[128 + 4 * f + 2]);
            prop_assert!(IdentifyController::ref_from_bytes(&page[..4095]).is_err());
        }
    }
}
