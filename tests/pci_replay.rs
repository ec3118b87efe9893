//! Replay of real cards: parse their `lspci -xxxx` dumps, present them through the
//! configuration-space emulator, write them back in lspci format, and check that Debian's
//! `lspci -F FILE -vvv` decodes ours exactly as it decodes the original.
//!
//! Normalisation: none for the as-dumped comparison (the replayed space reads back the dump
//! byte for byte, BAR values included). For the "after the OS reassigned BARs" comparison,
//! the address after `Region N: Memory at` / `I/O ports at` / `Expansion ROM at` is replaced
//! by `<addr>` on both sides — that is the only thing allowed to differ.

mod pci_common;
mod prereq;

use pci_common::{dump_text, DUMPS};
use pcietun::pci::lspci::{self, DumpFunction};
use pcietun::pci::replay::{replay, ReplayError, ReplaySizes};
use pcietun::pci::spec::exp;
use pcietun::pci::{walk_capabilities, ConfigSpace, HeaderType, PciError};
use prereq::{lspci_or_skip, normalise_addresses};

/// `lspci -F -vvv` of a dump, which must decode to more than a header line.
fn lspci_vvv(text: &str) -> String {
    let s = prereq::lspci_vvv(text);
    assert!(s.lines().count() > 5, "lspci decoded almost nothing:\n{s}");
    s
}

fn one(name: &str) -> DumpFunction {
    let mut f = lspci::parse(&dump_text(name)).unwrap();
    assert_eq!(f.len(), 1, "{name}");
    f.remove(0)
}

fn read_back(cfg: &ConfigSpace, len: usize) -> Vec<u8> {
    cfg.snapshot()[..len].to_vec()
}

#[test]
fn dumps_parse_with_their_addresses_and_lengths() {
    let lens: Vec<_> = DUMPS
        .iter()
        .map(|n| (one(n).address.to_string(), one(n).config.len()))
        .collect();
    assert_eq!(
        lens,
        vec![
            ("09:00.0".to_string(), 4096),
            ("09:00.0".to_string(), 4096),
            ("00:1c.0".to_string(), 4096),
            ("03:00.0".to_string(), 256),
        ]
    );
}

#[test]
fn replay_presents_each_card_byte_for_byte_and_writes_the_same_text() {
    for name in DUMPS {
        let f = one(name);
        let r = replay(&f.config, &ReplaySizes::default()).unwrap();
        let back = read_back(&r.config, f.config.len());
        assert_eq!(back, f.config, "{name}: replayed bytes differ");
        assert_eq!(
            walk_capabilities(&back),
            walk_capabilities(&f.config),
            "{name}"
        );
        let text = lspci::format_function(&f.address, &f.description, &back);
        assert_eq!(text, dump_text(name), "{name}: writer is not byte-exact");
    }
}

#[test]
fn lspci_decodes_replayed_cards_exactly_like_the_originals() {
    if !lspci_or_skip("lspci decoding of replayed spaces") {
        return;
    }
    for name in DUMPS {
        let f = one(name);
        let mut r = replay(&f.config, &ReplaySizes::default()).unwrap();
        let original = lspci_vvv(&dump_text(name));
        let ours = lspci::format_function(
            &f.address,
            &f.description,
            &read_back(&r.config, f.config.len()),
        );
        assert_eq!(lspci_vvv(&ours), original, "{name}");

        // An OS sizing every BAR and the ROM, then restoring them, changes nothing.
        let (bars, rom) = match r.config.header_type() {
            HeaderType::Endpoint => (0x10..0x28, 0x30),
            HeaderType::Bridge => (0x10..0x18, 0x38),
        };
        for off in bars.step_by(4).chain([rom]) {
            let old = r.config.read_u32(off);
            r.config.write_u32(off, 0xffff_ffff);
            r.config.write_u32(off, old);
        }
        let ours = lspci::format_function(
            &f.address,
            &f.description,
            &read_back(&r.config, f.config.len()),
        );
        assert_eq!(lspci_vvv(&ours), original, "{name} after BAR sizing");

        // An OS moving every BAR elsewhere: only the addresses differ.
        for b in &r.bars {
            let off = 0x10 + 4 * b.index;
            let lo = r.config.read_u32(off);
            let flags = lo & if b.io { 0x3 } else { 0xf };
            let new =
                if b.io { 0x4000 } else { 0x8000_0000 } + b.size as u32 * (b.index as u32 + 1);
            r.config.write_u32(off, new | flags);
        }
        let ours = lspci::format_function(
            &f.address,
            &f.description,
            &read_back(&r.config, f.config.len()),
        );
        let decoded = lspci_vvv(&ours);
        if !r.bars.is_empty() {
            assert_ne!(decoded, original, "{name}: BAR moves must show");
        }
        assert_eq!(
            normalise_addresses(&decoded),
            normalise_addresses(&original),
            "{name} after BAR moves"
        );
    }
}

#[test]
fn a_64_byte_dump_and_multi_function_files_replay_too() {
    if !lspci_or_skip("lspci decoding of replayed spaces") {
        return;
    }
    let nvme = dump_text("vmware-nvme.txt");
    let short: String = nvme.lines().take(5).map(|l| format!("{l}\n")).collect();
    let f = lspci::parse(&short).unwrap().remove(0);
    assert_eq!(f.config.len(), 64);
    let r = replay(&f.config, &ReplaySizes::parse("bar0=16K,bar2=8").unwrap()).unwrap();
    let ours = lspci::format_function(&f.address, &f.description, &read_back(&r.config, 64));
    assert_eq!(lspci_vvv(&ours), lspci_vvv(&short));

    let both = format!("{}{}", dump_text("intel-82576-nic.txt"), nvme);
    let funcs = lspci::parse(&both).unwrap();
    assert_eq!(funcs.len(), 2);
    assert_eq!(lspci::write(&funcs), both);
    assert_eq!(lspci_vvv(&lspci::write(&funcs)), lspci_vvv(&both));
}

fn probe(c: &mut ConfigSpace, off: usize) -> u32 {
    let old = c.read_u32(off);
    c.write_u32(off, 0xffff_ffff);
    let v = c.read_u32(off);
    c.write_u32(off, old);
    v
}

#[test]
fn replayed_bars_size_as_given_or_inferred() {
    let nic = one("intel-82576-nic.txt");
    let mut r = replay(&nic.config, &ReplaySizes::default()).unwrap();
    let sizes: Vec<_> = r
        .bars
        .iter()
        .map(|b| (b.index, b.size, b.inferred))
        .collect();
    assert_eq!(
        sizes,
        vec![
            (0, 128 << 10, true),
            (1, 256 << 10, true),
            (2, 32, true),
            (3, 16 << 10, true)
        ]
    );
    assert_eq!(probe(&mut r.config, 0x10), 0xfffe_0000);
    assert_eq!(probe(&mut r.config, 0x18), 0xffff_ffe1);
    assert_eq!(probe(&mut r.config, 0x1c), 0xffff_c000);
    assert_eq!(probe(&mut r.config, 0x20), 0, "unimplemented BAR");
    assert_eq!(
        probe(&mut r.config, 0x30),
        0xfffe_0000,
        "ROM read-only without rom="
    );

    let gpu = one("amd-fiji-gpu.txt");
    let sizes = ReplaySizes::parse("bar0=256M, bar2=2M,bar4=256,bar5=256K,rom=128K").unwrap();
    let mut r = replay(&gpu.config, &sizes).unwrap();
    assert_eq!(probe(&mut r.config, 0x10), 0xf000_000c);
    assert_eq!(probe(&mut r.config, 0x14), 0xffff_ffff);
    assert_eq!(probe(&mut r.config, 0x18), 0xffe0_000c);
    assert_eq!(probe(&mut r.config, 0x20), 0xffff_ff01);
    assert_eq!(probe(&mut r.config, 0x24), 0xfffc_0000);
    assert_eq!(probe(&mut r.config, 0x30), 0xfffe_0001);
    assert!(r.bars.iter().all(|b| !b.inferred));

    assert_eq!(
        replay(&gpu.config, &ReplaySizes::parse("bar1=4K").unwrap()).unwrap_err(),
        ReplayError::UpperHalf { index: 1 }
    );
    assert!(matches!(
        replay(&gpu.config, &ReplaySizes::parse("bar0=3000").unwrap()),
        Err(ReplayError::Pci(PciError::BadBarSize {
            index: 0,
            size: 3000,
            ..
        }))
    ));
    for bad in [
        "bar6=4K",
        "bar0",
        "bar0=",
        "bar0=12Q",
        "foo=1",
        "bar0=99999999999999999999T",
    ] {
        assert!(
            matches!(ReplaySizes::parse(bad), Err(ReplayError::BadOption { .. })),
            "{bad}"
        );
    }
    assert_eq!(
        replay(&gpu.config[..32], &ReplaySizes::default()).unwrap_err(),
        ReplayError::TooShort { len: 32 }
    );
}

#[test]
fn replayed_nic_keeps_read_only_bytes_and_opens_control_fields() {
    let nic = one("intel-82576-nic.txt");
    let mut r = replay(&nic.config, &ReplaySizes::default()).unwrap();
    let c = &mut r.config;
    // Read-only: IDs, the Device Serial Number, SR-IOV's TotalVFs, capability headers.
    for off in [0x00, 0x08, 0x2c, 0x40, 0x144, 0x148, 0x16c, 0x160] {
        let v = c.read_u32(off);
        c.write_u32(off, !v);
        assert_eq!(c.read_u32(off), v, "offset {off:#x} must be read-only");
    }
    // Command register and MSI-X control are writable.
    c.write_u16(0x04, 0x0006);
    assert_eq!(c.read_u16(0x04), 0x0006);
    let m = c.msix().unwrap();
    assert_eq!(
        (
            m.vectors(),
            m.table_bar(),
            m.table_offset(),
            m.pba_bar(),
            m.pba_offset()
        ),
        (10, 3, 0, 3, 0x2000)
    );
    assert!(m.enabled(), "as dumped: Enable+");
    c.write_u16(0x72, 0x4009);
    assert!(!c.msix().unwrap().enabled() && c.msix().unwrap().function_masked());
    // SR-IOV NumVFs and VF Enable are writable; FLR brings the dump back.
    c.write_u16(0x170, 7);
    assert_eq!(c.read_u16(0x170), 7);
    let devctl = 0xa0 + exp::DEVCTL;
    c.write_u16(devctl, c.read_u16(devctl) | 0x8000);
    assert!(c.take_flr());
    assert_eq!(
        read_back(c, 4096),
        nic.config,
        "FLR restores the dumped state"
    );

    // The replayed root port keeps its slot and acknowledges hot-plug commands.
    let rp = one("intel-sunrisepoint-root-port.txt");
    let mut r = replay(&rp.config, &ReplaySizes::default()).unwrap();
    let p = r.config.pcie().unwrap();
    assert_eq!(p.port_type(), pcietun::pci::PortType::RootPort);
    // Dumped: PresDet+, LinkState changed+ (0x0140). RW1C acknowledges the change bit.
    assert_eq!(r.config.read_u16(0x40 + exp::SLTSTA), 0x0140);
    r.config.write_u16(0x40 + exp::SLTSTA, 0x0100);
    assert_eq!(r.config.read_u16(0x40 + exp::SLTSTA), 0x0040);
    r.config.write_u32(0x18, 0x0005_0400);
    assert_eq!(r.config.bus_numbers(), (0, 4, 5));
}

#[test]
fn bad_dumps_are_typed_errors_with_line_numbers() {
    let text = dump_text("intel-82576-nic.txt");
    let broken = text.replacen("30: 00 00 fe ff", "30: 00 00 fe fz", 1);
    let e = lspci::parse(&broken).unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 5: byte 4 is \"fz\", expected two hex digits"
    );
    let missing: String = text
        .lines()
        .filter(|l| !l.starts_with("a0:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let e = lspci::parse(&missing).unwrap_err();
    assert_eq!(
        e.to_string(),
        "09:00.0 (line 1): byte 0xa0 is missing (rows must be complete and contiguous from 0)"
    );
    let dup = text.replacen("10: ", "00: ", 1);
    assert!(matches!(
        lspci::parse(&dup),
        Err(lspci::LspciError::DuplicateRow {
            line: 3,
            offset: 0,
            ..
        })
    ));
    let long = text.replacen("\n10: 00 00 a6 b1", "\n10: 00 00 a6 b1 00", 1);
    assert!(matches!(
        lspci::parse(&long),
        Err(lspci::LspciError::BadByte { .. })
            | Err(lspci::LspciError::TooManyBytes { line: 3, .. })
    ));
}
