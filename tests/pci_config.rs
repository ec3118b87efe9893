//! Configuration-space semantics, byte-exact: BAR sizing, masks, RW1C, capability walking,
//! FLR, MSI / MSI-X behaviour, root-port slot events, bridge windows, SR-IOV.

mod pci_common;

use pci_common::{full_endpoint, root_port};
use pcietun::pci::spec::{command, exp, status};
use pcietun::pci::{
    walk_capabilities, Bar, CapabilityId, ConfigSpace, FunctionIds, InterruptOutcome, MsiMessage,
    MsixCap, PciError, SlotConfig, SriovCap,
};

const PCIE: usize = 0x6c; // PCI Express capability offset in full_endpoint()
const MSI: usize = 0x48;
const MSIX: usize = 0x60;

fn size_probe(c: &mut ConfigSpace, off: usize) -> u32 {
    let old = c.read_u32(off);
    c.write_u32(off, 0xffff_ffff);
    let v = c.read_u32(off);
    c.write_u32(off, old);
    v
}

#[test]
fn bar_sizing_reads_back_size_masks_for_every_bar_type() {
    let mut c = full_endpoint();
    assert_eq!(
        size_probe(&mut c, 0x10),
        0xffff_c004,
        "64-bit 16K, low half"
    );
    assert_eq!(
        size_probe(&mut c, 0x14),
        0xffff_ffff,
        "64-bit 16K, high half"
    );
    assert_eq!(
        size_probe(&mut c, 0x18),
        0xfff0_0008,
        "32-bit prefetchable 1M"
    );
    assert_eq!(size_probe(&mut c, 0x1c), 0xffff_ffe1, "I/O 32 bytes");
    assert_eq!(
        size_probe(&mut c, 0x20),
        0,
        "unused BAR is hardwired to zero"
    );
    assert_eq!(size_probe(&mut c, 0x24), 0);
    assert_eq!(size_probe(&mut c, 0x30), 0xffff_0001, "64K expansion ROM");
    // After sizing, the original (zero) addresses are back.
    assert_eq!(c.read_u32(0x10), 0x0000_0004);

    // A 64-bit BAR above 4 GiB sizes in the high dword too.
    let mut big = ConfigSpace::endpoint(FunctionIds::default());
    big.set_bar(
        4,
        Bar::Memory64 {
            size: 8 << 30,
            prefetchable: true,
        },
    )
    .unwrap();
    assert_eq!(size_probe(&mut big, 0x20), 0x0000_000c);
    assert_eq!(size_probe(&mut big, 0x24), 0xffff_fffe);
}

#[test]
fn bar_declarations_are_validated() {
    let mut c = ConfigSpace::endpoint(FunctionIds::default());
    assert!(matches!(
        c.set_bar(
            0,
            Bar::Memory32 {
                size: 3000,
                prefetchable: false
            }
        ),
        Err(PciError::BadBarSize {
            index: 0,
            size: 3000,
            ..
        })
    ));
    assert!(matches!(
        c.set_bar(1, Bar::Io { size: 2 }),
        Err(PciError::BadBarSize { .. })
    ));
    assert_eq!(
        c.set_bar(
            5,
            Bar::Memory64 {
                size: 4096,
                prefetchable: false
            }
        ),
        Err(PciError::Bar64NoRoom { index: 5 })
    );
    assert_eq!(
        c.set_bar(6, Bar::Io { size: 4 }),
        Err(PciError::BarIndex { index: 6, slots: 6 })
    );
    c.set_bar(
        2,
        Bar::Memory64 {
            size: 4096,
            prefetchable: false,
        },
    )
    .unwrap();
    assert_eq!(
        c.set_bar(3, Bar::Unused),
        Err(PciError::SlotTaken { index: 3 })
    );
    let mut br = ConfigSpace::bridge(FunctionIds::default());
    assert_eq!(
        br.set_bar(2, Bar::Io { size: 4 }),
        Err(PciError::BarIndex { index: 2, slots: 2 })
    );
    assert_eq!(
        c.set_expansion_rom(1024),
        Err(PciError::BadRomSize { size: 1024 })
    );
}

#[test]
fn programmed_bars_decode_only_while_enabled() {
    let mut c = full_endpoint();
    c.write_u32(0x10, 0xfebf_0000);
    c.write_u32(0x14, 0x0000_0001);
    c.write_u32(0x18, 0xfe00_0000);
    c.write_u32(0x1c, 0x0000_c040);
    let bars = c.bars();
    assert_eq!(bars.len(), 3);
    assert_eq!(
        (bars[0].index, bars[0].address, bars[0].size),
        (0, 0x1_febf_0000, 16384)
    );
    assert!(bars[0].is_64 && !bars[0].prefetchable);
    assert_eq!(
        (bars[1].address, bars[1].size, bars[1].prefetchable),
        (0xfe00_0000, 1 << 20, true)
    );
    assert_eq!(
        (bars[2].address, bars[2].size, bars[2].io),
        (0xc040, 32, true)
    );
    assert_eq!(
        c.decode(0x1_febf_0010, false),
        None,
        "memory decode is off after reset"
    );
    c.write_u16(0x04, command::MEMORY_SPACE);
    assert_eq!(c.decode(0x1_febf_0010, false), Some((0, 0x10)));
    assert_eq!(c.decode(0x1_febf_4000, false), None, "one past the BAR");
    assert_eq!(c.decode(0xfe0f_ffff, false), Some((2, 0xf_ffff)));
    assert_eq!(c.decode(0xc044, true), None, "I/O decode still off");
    c.write_u16(0x04, command::MEMORY_SPACE | command::IO_SPACE);
    assert_eq!(c.decode(0xc044, true), Some((3, 4)));
}

#[test]
fn command_status_and_read_only_header_fields() {
    let mut c = full_endpoint();
    c.write_u16(0x04, 0xffff);
    assert_eq!(
        c.command(),
        0x0547,
        "only the PCIe-implemented command bits stick"
    );
    assert!(c.memory_enabled() && c.io_enabled() && c.bus_master_enabled() && c.intx_disabled());
    c.write_u16(0x04, 0);
    assert!(!c.bus_master_enabled() && !c.intx_disabled());

    // CfgWr byte enables: only the enabled bytes are written, even non-contiguous ones.
    c.write_dword(0x3c, 0xffff_ff0e, 0b0001);
    assert_eq!(c.read_u8(0x3c), 0x0e);
    c.write_dword(0x0c, 0x0000_0020, 0b1110);
    assert_eq!(c.read_u8(0x0c), 0x00, "byte 0 not enabled");
    c.write_dword(0x0c, 0x0000_0020, 0b1001);
    assert_eq!(c.read_u8(0x0c), 0x20);
    let ev = c.write_dword(PCIE + exp::DEVCTL, 0x0000_8000, 0b0010);
    assert!(ev.function_level_reset, "FLR through a one-byte CfgWr");
    assert!(c.take_flr());

    // Beyond 4 KiB: reads zero, writes vanish, nothing wraps.
    let before = c.snapshot();
    c.write(4094, &[0xff; 8]);
    c.write(usize::MAX, &[0xff; 4]);
    let mut tail = [0xaa; 6];
    c.read(4094, &mut tail);
    assert_eq!(tail, [before[4094], before[4095], 0, 0, 0, 0]);
    assert_eq!(c.snapshot(), before);
    c.read(usize::MAX - 1, &mut tail);
    assert_eq!(tail, [0; 6]);

    // Read-only identity.
    c.write_u32(0x00, 0);
    c.write_u32(0x08, 0);
    c.write_u32(0x2c, 0);
    assert_eq!(c.read_u32(0x00), 0x0010_1b36);
    assert_eq!(c.read_u32(0x08), 0x0108_0202);
    assert_eq!(c.read_u32(0x2c), 0x1100_1af4);
    // Interrupt Line is RW, Pin is RO; Cache Line Size RW; header type RO.
    c.write_u16(0x3c, 0x040b);
    assert_eq!(c.read_u16(0x3c), 0x010b);
    c.write(0x0c, &[0x10, 0xff, 0xff, 0xff]);
    assert_eq!(c.read_u32(0x0c), 0x0000_0010);

    // Status: Capabilities List RO, error bits RW1C, interrupt status RO (device-set).
    assert_eq!(c.status(), status::CAPABILITIES_LIST);
    c.signal_status(status::RECEIVED_MASTER_ABORT | status::SIGNALED_TARGET_ABORT);
    c.set_intx_status(true);
    assert_eq!(c.read_u16(0x06), 0x2818);
    c.write_u16(0x06, 0); // zeros never clear
    assert_eq!(c.read_u16(0x06), 0x2818);
    c.write_u16(
        0x06,
        status::RECEIVED_MASTER_ABORT | status::INTERRUPT_STATUS | status::CAPABILITIES_LIST,
    );
    assert_eq!(
        c.read_u16(0x06),
        0x0818,
        "only the written RW1C bit cleared"
    );
    c.set_intx_status(false);
    assert_eq!(c.read_u16(0x06), 0x0810);
}

#[test]
fn capability_lists_are_chained_byte_exact() {
    let c = full_endpoint();
    let img = c.snapshot();
    assert_eq!(img[0x34], 0x40);
    assert_eq!(&img[0x40..0x42], &[0x01, 0x48]); // PM -> MSI
    assert_eq!(&img[0x48..0x4a], &[0x05, 0x60]); // MSI -> MSI-X
    assert_eq!(&img[0x60..0x62], &[0x11, 0x6c]); // MSI-X -> PCIe
    assert_eq!(&img[0x6c..0x6e], &[0x10, 0x00]); // PCIe, end
                                                 // AER v2 at 0x100 -> ARI at 0x12c -> SR-IOV at 0x134 -> end.
    assert_eq!(&img[0x100..0x104], &0x12c2_0001u32.to_le_bytes());
    assert_eq!(&img[0x12c..0x130], &0x1341_000eu32.to_le_bytes());
    assert_eq!(&img[0x134..0x138], &0x0001_0010u32.to_le_bytes());
    let walk: Vec<_> = walk_capabilities(&img)
        .into_iter()
        .map(|f| (f.offset, f.id))
        .collect();
    assert_eq!(
        walk,
        vec![
            (0x40, CapabilityId::Standard(0x01)),
            (0x48, CapabilityId::Standard(0x05)),
            (0x60, CapabilityId::Standard(0x11)),
            (0x6c, CapabilityId::Standard(0x10)),
            (0x100, CapabilityId::Extended { id: 1, version: 2 }),
            (
                0x12c,
                CapabilityId::Extended {
                    id: 0x0e,
                    version: 1
                }
            ),
            (
                0x134,
                CapabilityId::Extended {
                    id: 0x10,
                    version: 1
                }
            ),
        ]
    );
    assert_eq!(c.capability_offset::<MsixCap>(), Some(0x60));
    assert_eq!(c.capability_offset::<SriovCap>(), Some(0x134));
    // MSI-X registers: table size 7, table BIR 0 @0x2000, PBA BIR 0 @0x3000.
    assert_eq!(
        &img[0x62..0x6c],
        &[0x07, 0x00, 0x00, 0x20, 0, 0, 0x00, 0x30, 0, 0]
    );
    // Capability headers are read-only.
    let mut c = c;
    c.write(0x40, &[0xff, 0xff]);
    c.write_u32(0x100, 0xffff_ffff);
    assert_eq!(c.snapshot(), img);
}

#[test]
fn walking_survives_loops_and_garbage_pointers() {
    let mut img = vec![0u8; 4096];
    img[0x06] = 0x10;
    img[0x34] = 0x40;
    img[0x40] = 0x01;
    img[0x41] = 0x50;
    img[0x50] = 0x05;
    img[0x51] = 0x40; // loop back
    img[0x100..0x104].copy_from_slice(&0x1000_0001u32.to_le_bytes()); // next = 0x100: loop
    let w = walk_capabilities(&img);
    assert_eq!(w.len(), 3);
    img[0x51] = 0x13; // pointer into the header area: ends the walk
    assert_eq!(walk_capabilities(&img).len(), 3);
}

#[test]
fn function_level_reset_restores_defaults_and_tells_the_device() {
    let mut c = full_endpoint();
    let reset_image = c.snapshot();
    c.write_u16(0x04, command::MEMORY_SPACE | command::BUS_MASTER);
    c.write_u32(0x10, 0xfebf_0000);
    c.write_u16(MSIX + 2, 0x8000);
    c.msix_mut().unwrap().write_table(12, &[0]);
    c.write_u16(PCIE + exp::DEVCTL, 0x5020 | 0x0100);
    assert_ne!(c.snapshot(), reset_image);
    assert!(!c.take_flr());

    let ev = c.write_u16(PCIE + exp::DEVCTL, 0x8000 | 0x5020);
    assert!(ev.function_level_reset);
    assert!(c.take_flr(), "the device is told once");
    assert!(!c.take_flr());
    assert_eq!(
        c.snapshot(),
        reset_image,
        "every register back to its default"
    );
    assert!(c.msix().unwrap().entry(0).unwrap().masked);
    assert_eq!(
        c.read_u16(PCIE + exp::DEVCTL) & 0x8000,
        0,
        "Initiate FLR reads 0"
    );

    // A root port has Bridge Configuration Retry Enable there, not FLR.
    let mut rp = root_port(SlotConfig::default());
    let ev = rp.write_u16(0x40 + exp::DEVCTL, 0x8000);
    assert!(!ev.function_level_reset && !rp.take_flr());
    assert_eq!(rp.read_u16(0x40 + exp::DEVCTL), 0x8000);
}

#[test]
fn device_control_fields_are_exposed() {
    let mut c = full_endpoint();
    let p = c.pcie().unwrap();
    assert_eq!(
        (p.max_payload_size(), p.max_read_request_size()),
        (128, 512)
    );
    assert!(!p.extended_tag_enabled() && !p.ten_bit_tag_requester_enabled());
    // DevCap: MPS 512 supported, extended tag, RBE, FLR.
    assert_eq!(c.read_u32(PCIE + exp::DEVCAP), 0x1000_8022);
    // DevCap2: 10-bit tag completer + requester supported.
    assert_eq!(c.read_u32(PCIE + exp::DEVCAP2) & 0x3_0000, 0x3_0000);
    c.write_u16(PCIE + exp::DEVCTL, (5 << 12) | (2 << 5) | 0x0100);
    c.write_u16(PCIE + exp::DEVCTL2, 1 << 12);
    let p = c.pcie().unwrap();
    assert_eq!(
        (p.max_payload_size(), p.max_read_request_size()),
        (512, 4096)
    );
    assert!(p.extended_tag_enabled() && p.ten_bit_tag_requester_enabled());
    // Device Status error bits are RW1C.
    c.pcie_mut().unwrap().report_device_error(0b1001);
    assert_eq!(c.read_u16(PCIE + exp::DEVSTA) & 0xf, 0b1001);
    c.write_u16(PCIE + exp::DEVSTA, 0b0001);
    assert_eq!(c.read_u16(PCIE + exp::DEVSTA) & 0xf, 0b1000);
}

#[test]
fn msix_table_pba_and_masking() {
    let mut c = full_endpoint();
    let m = c.msix_mut().unwrap();
    assert_eq!(
        (m.vectors(), m.table_bar(), m.table_offset(), m.table_len()),
        (8, 0, 0x2000, 128)
    );
    assert_eq!((m.pba_bar(), m.pba_offset(), m.pba_len()), (0, 0x3000, 8));
    assert_eq!(
        m.raise(1),
        InterruptOutcome::Disabled,
        "MSI-X not enabled yet"
    );
    // Program vector 1: address fee0_1000, data 0x41, still masked (reset state).
    m.write_table(16, &[0x00, 0x10, 0xe0, 0xfe, 0, 0, 0, 0, 0x41, 0, 0, 0]);
    let mut row = [0u8; 16];
    m.read_table(16, &mut row);
    assert_eq!(
        row,
        [0x00, 0x10, 0xe0, 0xfe, 0, 0, 0, 0, 0x41, 0, 0, 0, 1, 0, 0, 0]
    );
    // Reserved Vector Control bits are read-only.
    m.write_table(28, &[0xfe, 0xff, 0xff, 0xff]);
    m.read_table(28, &mut row[..4]);
    assert_eq!(
        row[..4],
        [0x00, 0, 0, 0],
        "mask cleared, reserved bits stay zero"
    );
    m.write_table(28, &[1]);

    let ev = c.write_u16(MSIX + 2, 0x8000);
    assert!(ev.interrupt_config);
    let m = c.msix_mut().unwrap();
    assert!(m.enabled() && !m.function_masked());
    assert_eq!(m.raise(1), InterruptOutcome::Pending);
    let mut pba = [0u8; 8];
    m.read_pba(0, &mut pba);
    assert_eq!(pba, [0x02, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(m.poll_pending(), None, "still masked");
    assert!(m.write_table(28, &[0]), "unmasking is reported");
    let msg = MsiMessage {
        address: 0xfee0_1000,
        data: 0x41,
    };
    assert_eq!(m.poll_pending(), Some((1, msg)));
    assert!(!m.is_pending(1));
    assert_eq!(m.raise(1), InterruptOutcome::Send(msg));
    assert_eq!(m.raise(8), InterruptOutcome::Disabled, "no such vector");

    // Function Mask holds every vector pending.
    c.write_u16(MSIX + 2, 0xc000);
    let m = c.msix_mut().unwrap();
    assert_eq!(m.raise(1), InterruptOutcome::Pending);
    c.write_u16(MSIX + 2, 0x8000);
    assert_eq!(c.msix_mut().unwrap().poll_pending(), Some((1, msg)));
    // Table size / locations are read-only.
    c.write_u32(MSIX + 4, 0xffff_ffff);
    c.write_u16(MSIX + 2, 0xbfff);
    assert_eq!(c.read_u32(MSIX), 0x8007_6c11);
    assert_eq!(c.read_u32(MSIX + 4), 0x2000);
}

#[test]
fn msi_multiple_messages_and_per_vector_masking() {
    let mut c = full_endpoint();
    // 64-bit, per-vector masking, 4 vectors capable (MMC = 2).
    assert_eq!(c.read_u16(MSI + 2), 0x0184);
    c.write_u32(MSI + 4, 0xfee0_0003); // low two bits are not writable
    c.write_u32(MSI + 8, 0x0000_0001);
    c.write_u16(MSI + 0x0c, 0x4020);
    c.write_u32(MSI + 0x10, 0xffff_ffff); // only 4 mask bits exist
    assert_eq!(c.read_u32(MSI + 4), 0xfee0_0000);
    assert_eq!(c.read_u32(MSI + 0x10), 0x0000_000f);
    c.write_u32(MSI + 0x10, 0b0010);
    c.write_u16(MSI + 2, 0x0021 | 0x000e); // enable, MME = 2 (4 vectors); MMC stays RO
    assert_eq!(c.read_u16(MSI + 2), 0x01a5);
    let m = c.msi_mut().unwrap();
    assert_eq!(m.enabled_vectors(), 4);
    let msg3 = MsiMessage {
        address: 0x1_fee0_0000,
        data: 0x4023,
    };
    assert_eq!(m.raise(3), InterruptOutcome::Send(msg3));
    assert_eq!(m.raise(1), InterruptOutcome::Pending);
    assert_eq!(m.raise(4), InterruptOutcome::Disabled);
    assert_eq!(m.pending_bits(), 0b0010);
    c.write_u32(MSI + 0x14, 0); // pending bits are read-only
    assert_eq!(c.read_u32(MSI + 0x14), 0b0010);
    c.write_u32(MSI + 0x10, 0);
    let m = c.msi_mut().unwrap();
    assert_eq!(
        m.poll_pending(),
        Some((
            1,
            MsiMessage {
                address: 0x1_fee0_0000,
                data: 0x4021
            }
        ))
    );
    assert_eq!(m.pending_bits(), 0);
}

#[test]
fn root_port_presence_change_sets_rw1c_status_and_interrupts() {
    let mut rp = root_port(SlotConfig::default());
    let (sltctl, sltsta, lnksta) = (0x40 + exp::SLTCTL, 0x40 + exp::SLTSTA, 0x40 + exp::LNKSTA);
    assert_eq!(
        rp.read_u16(0x40 + exp::FLAGS),
        0x0142,
        "v2 root port, slot implemented"
    );
    // Slot Capabilities: attention button, indicators, surprise, hot-plug capable, slot #1.
    assert_eq!(rp.read_u32(0x40 + exp::SLTCAP), 0x0008_0079);
    assert_eq!(rp.read_u16(sltsta), 0);
    // The OS enables presence, DLL state change and command completed events + HPIE.
    let ev = rp.write_u16(
        sltctl,
        exp::SLTCTL_PRESENCE_EN
            | exp::SLTCTL_DLLSC_EN
            | exp::SLTCTL_CMD_COMPLETED_EN
            | exp::SLTCTL_HP_INT_EN,
    );
    assert!(ev.slot_command);
    assert_eq!(
        rp.read_u16(sltsta),
        exp::SLTSTA_CMD_COMPLETED,
        "command completed"
    );
    rp.write_u16(sltsta, exp::SLTSTA_CMD_COMPLETED);
    assert_eq!(rp.read_u16(sltsta), 0);
    assert!(!rp.pcie().unwrap().hotplug_interrupt_pending());

    // A card arrives.
    assert!(
        rp.pcie_mut().unwrap().set_presence(true),
        "hot-plug interrupt due"
    );
    assert_eq!(rp.read_u16(sltsta), 0x0148, "PDS | PDC | DLLSC");
    assert_ne!(rp.read_u16(lnksta) & exp::LNKSTA_DLL_ACTIVE, 0);
    // The OS acknowledges PDC only; DLLSC stays, PDS is read-only.
    rp.write_u16(sltsta, exp::SLTSTA_PRESENCE_CHANGED | exp::SLTSTA_PRESENCE);
    assert_eq!(rp.read_u16(sltsta), 0x0140);
    rp.write_u16(sltsta, exp::SLTSTA_DLLSC);
    assert_eq!(rp.read_u16(sltsta), 0x0040);
    assert!(!rp.pcie().unwrap().hotplug_interrupt_pending());

    // Attention button (not enabled: no interrupt), then removal.
    assert!(!rp.pcie_mut().unwrap().press_attention_button());
    assert_eq!(rp.read_u16(sltsta), 0x0041);
    assert!(rp.pcie_mut().unwrap().set_presence(false));
    assert_eq!(rp.read_u16(sltsta), 0x0109);
    assert_eq!(rp.read_u16(lnksta) & exp::LNKSTA_DLL_ACTIVE, 0);
    // Same state again: no new change bits.
    rp.write_u16(sltsta, 0x01ff);
    rp.pcie_mut().unwrap().set_presence(false);
    assert_eq!(rp.read_u16(sltsta), 0);

    // No Command Completed Support: slot control writes complete silently.
    let mut rp = root_port(SlotConfig {
        no_command_completed: true,
        ..SlotConfig::default()
    });
    rp.write_u16(sltctl, 0x1fff);
    assert_eq!(rp.read_u16(sltctl), 0x1fff);
    assert_eq!(rp.read_u16(sltsta), 0);
}

#[test]
fn bridge_bus_numbers_and_windows() {
    let mut rp = root_port(SlotConfig::default());
    assert_eq!(rp.read_u8(0x0e), 0x01, "type 1 header");
    rp.write_u32(0x18, 0xff03_0100); // secondary latency timer is RO 0 on PCIe
    assert_eq!(rp.read_u32(0x18), 0x0003_0100);
    assert_eq!(rp.bus_numbers(), (0, 1, 3));
    assert_eq!(
        rp.memory_window(),
        Some((0, 0xf_ffff)),
        "reset: base 0 limit 0"
    );
    rp.write_u32(0x20, 0xfe8f_fe80);
    assert_eq!(rp.memory_window(), Some((0xfe80_0000, 0xfe8f_ffff)));
    rp.write_u32(0x24, 0x0001_fff1); // base above limit: closed
    assert_eq!(rp.memory_window(), Some((0xfe80_0000, 0xfe8f_ffff)));
    assert_eq!(rp.prefetchable_window(), None);
    assert_eq!(rp.read_u32(0x24), 0x0001_fff1, "64-bit type bits read-only");
    rp.write_u32(0x24, 0xfff1_0001);
    rp.write_u32(0x28, 0x0000_0004);
    rp.write_u32(0x2c, 0x0000_0004);
    assert_eq!(
        rp.prefetchable_window(),
        Some((0x4_0000_0000, 0x4_ffff_ffff))
    );
    rp.write_u16(0x1c, 0x2010);
    assert_eq!(rp.io_window(), Some((0x1000, 0x2fff)));
    rp.write_u16(0x3e, 0xffff);
    assert_eq!(rp.bridge_control(), 0x007f);
    // Secondary status is RW1C and starts clear.
    rp.write_u16(0x1e, 0xffff);
    assert_eq!(rp.read_u16(0x1e), 0);
}

#[test]
fn sriov_vf_enable_numvfs_routing_and_vf_bar_sizing() {
    let mut c = full_endpoint();
    let s = 0x134;
    assert_eq!(
        c.read_u32(s + 0x0c),
        0x0004_0004,
        "InitialVFs 4, TotalVFs 4"
    );
    assert_eq!(
        size_probe(&mut c, s + 0x24),
        0xffff_c004,
        "VF BAR0: 64-bit 16K per VF"
    );
    assert_eq!(size_probe(&mut c, s + 0x28), 0xffff_ffff);
    c.write_u16(s + 0x10, 3);
    c.write_u32(s + 0x24, 0xd000_0000);
    let ev = c.write_u16(s + 0x08, 0x0009); // VF Enable + VF MSE
    assert!(ev.sriov);
    let sr = c.capability::<SriovCap>().unwrap();
    assert!(sr.vf_enabled() && sr.vf_memory_enabled());
    assert_eq!(sr.num_vfs(), 3);
    assert_eq!(sr.vf_routing_id(0x0100, 0), Some(0x0101));
    assert_eq!(sr.vf_routing_id(0x0100, 2), Some(0x0103));
    assert_eq!(sr.vf_routing_id(0x0100, 3), None);
    let b = sr.vf_bars();
    assert_eq!((b[0].address, b[0].size), (0xd000_0000, 16384));
    // System page size only accepts supported sizes (0x553).
    c.write_u32(s + 0x20, 0xffff_ffff);
    assert_eq!(c.read_u32(s + 0x20), 0x553);
}

#[test]
fn aer_records_errors_and_clears_them_rw1c() {
    use pcietun::pci::AerCap;
    let mut c = full_endpoint();
    let a = c.capability_mut::<AerCap>().unwrap();
    let header = [0x40, 0, 0, 1, 0, 0, 0, 0xff, 0, 0, 0, 0, 0xfe, 0xbf, 0, 0];
    assert_eq!(
        a.record_uncorrectable(1 << 20, Some(&header)),
        1 << 20,
        "UR unmasked"
    );
    assert_eq!(c.read_u32(0x104), 1 << 20);
    assert_eq!(c.read_u32(0x118) & 0x1f, 20, "first error pointer");
    assert_eq!(
        c.read_u32(0x11c),
        0x4000_0001,
        "header log dword 0, big-endian TLP bytes"
    );
    assert_eq!(c.read_u32(0x10c), 0x0046_2030, "default severity");
    c.write_u32(0x104, 1 << 20);
    assert_eq!(c.read_u32(0x104), 0);
    c.write_u32(0x108, 0xffff_ffff);
    assert_eq!(c.read_u32(0x108), 0x07ff_f030, "only implemented mask bits");
}

#[test]
fn raw_and_power_management_capabilities() {
    use pcietun::pci::{PmCap, RawCapability};
    let mut c = ConfigSpace::endpoint(FunctionIds {
        vendor_id: 0x1234,
        ..FunctionIds::default()
    });
    // Vendor-specific capability: length byte, then one writable scratch byte and a
    // read-only signature.
    let image = [0x09, 0x00, 0x08, 0x00, 0xa5, 0x5a, 0xc3, 0x3c];
    let mask = [0, 0, 0, 0xff, 0, 0, 0, 0];
    let raw = RawCapability::with_write_mask(CapabilityId::Standard(0x09), &image, &mask);
    assert_eq!(c.add_capability(Box::new(raw)).unwrap(), 0x40);
    assert_eq!(c.add_capability(Box::new(PmCap::new())).unwrap(), 0x48);
    c.write_u32(0x40, 0xffff_ffff);
    c.write_u32(0x44, 0);
    assert_eq!(
        c.read_u32(0x40),
        0xff08_4809,
        "header RO, byte 3 RW, linked to PM at 0x48"
    );
    assert_eq!(c.read_u32(0x44), 0x3cc3_5aa5);
    // PMCSR: power state RW, PME status RW1C.
    c.write_u16(0x4c, 0x0003);
    assert_eq!(c.capability::<PmCap>().unwrap().power_state(), 3);
    assert_eq!(c.read_u16(0x4c), 0x000b, "D3hot, No_Soft_Reset");
    let names: Vec<_> = c.capabilities().map(|(o, _, n)| (o, n)).collect();
    assert_eq!(names, vec![(0x40, "raw"), (0x48, "Power Management")]);
    // The standard list is full after 0x100 - 0x40 bytes.
    for _ in 0..22 {
        c.add_capability(Box::new(PmCap::new())).unwrap();
    }
    assert!(matches!(
        c.add_capability(Box::new(PmCap::new())),
        Err(PciError::NoRoom {
            name: "Power Management",
            len: 8
        })
    ));
}
