//! Property tests: the lspci parser never panics and round-trips what the writer produces;
//! arbitrary configuration writes never panic and never change a read-only bit; a replay
//! device presents any dump byte for byte.

mod pci_common;

use pci_common::{dump_text, full_endpoint, root_port};
use pcietun::pci::lspci::{self, PciAddress};
use pcietun::pci::replay::{replay, ReplaySizes};
use pcietun::pci::{ConfigSpace, SlotConfig};
use proptest::prelude::*;

fn spaces() -> Vec<(&'static str, ConfigSpace)> {
    let nic = lspci::parse(&dump_text("intel-82576-nic.txt"))
        .unwrap()
        .remove(0);
    let rp = lspci::parse(&dump_text("intel-sunrisepoint-root-port.txt"))
        .unwrap()
        .remove(0);
    vec![
        ("full endpoint", full_endpoint()),
        ("root port", root_port(SlotConfig::default())),
        (
            "replayed 82576",
            replay(&nic.config, &ReplaySizes::default()).unwrap().config,
        ),
        (
            "replayed root port",
            replay(&rp.config, &ReplaySizes::default()).unwrap().config,
        ),
    ]
}

fn write_op() -> impl Strategy<Value = (usize, usize, u32)> {
    // Mostly inside the interesting first 0x200 bytes, sometimes anywhere (and past 4 KiB).
    let off = prop_oneof![3 => 0usize..0x200, 1 => 0usize..0x1010];
    (
        off,
        prop_oneof![Just(1usize), Just(2), Just(4)],
        any::<u32>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn config_writes_never_change_read_only_bits(ops in proptest::collection::vec(write_op(), 1..24)) {
        for (name, mut c) in spaces() {
            let ro: Vec<u8> = (0..4096).map(|o| c.byte_mask(o).read_only()).collect();
            let mut before = c.snapshot();
            for &(off, len, val) in &ops {
                let off = off - off % len; // naturally aligned, like a CfgWr
                c.write(off, &val.to_le_bytes()[..len]);
                let mut buf = [0u8; 8];
                c.read(off, &mut buf); // reads anywhere never panic
                let after = c.snapshot();
                for o in 0..4096 {
                    prop_assert_eq!(
                        (after[o] ^ before[o]) & ro[o], 0,
                        "{}: read-only bits of byte {:#x} changed by write {:#x}/{} = {:#x}",
                        name, o, off, len, val
                    );
                }
                before = after;
            }
            c.take_flr();
        }
    }

    #[test]
    fn replay_presents_any_dump_exactly(
        len in prop_oneof![Just(64usize), Just(256), Just(4096)],
        seed in proptest::collection::vec(any::<u8>(), 4096),
        cap_ptr in 0x40u8..=0xff,
        std_id in prop::sample::select(vec![0x01u8, 0x05, 0x10, 0x11]),
        ext_id in prop::sample::select(vec![0x0001u16, 0x000e, 0x0010]),
    ) {
        let mut dump = seed[..len].to_vec();
        // Claim a capability list whose first entries are types replay models, so the walker
        // and the typed capabilities get exercised on garbage.
        dump[0x06] |= 0x10;
        dump[0x34] = cap_ptr;
        let p = (cap_ptr & 0xfc) as usize;
        if p < len {
            dump[p] = std_id;
        }
        if len > 0x100 {
            dump[0x100..0x102].copy_from_slice(&ext_id.to_le_bytes());
        }
        if let Ok(r) = replay(&dump, &ReplaySizes::default()) {
            prop_assert_eq!(&r.config.snapshot()[..len], &dump[..]);
        }
    }

    #[test]
    fn writer_output_parses_back_to_the_same_bytes(
        rows in prop_oneof![Just(4usize), Just(16), Just(256)],
        bytes in proptest::collection::vec(any::<u8>(), 4096),
        bus in any::<u8>(), dev in 0u8..32, func in 0u8..8, domain in proptest::option::of(any::<u16>()),
        desc in "[!-~]([ -~]{0,40}[!-~])?",
    ) {
        let address = PciAddress { domain: domain.map(u32::from), bus, device: dev, function: func };
        let config = &bytes[..rows * 16];
        let text = lspci::format_function(&address, &desc, config);
        let back = lspci::parse(&text).unwrap();
        prop_assert_eq!(back.len(), 1);
        prop_assert_eq!(back[0].address, address);
        prop_assert_eq!(&back[0].description, &desc);
        prop_assert_eq!(&back[0].config[..], config);
    }

    #[test]
    fn parser_never_panics_on_arbitrary_text(s in "([0-9a-fA-F:. \t]|\n|[g-z]|-){0,600}") {
        let _ = lspci::parse(&s);
    }

    #[test]
    fn parser_never_panics_on_mutated_real_dumps(pos in 0usize..17000, byte in any::<u8>(), cut in 0usize..17000) {
        let mut t = dump_text("intel-82576-nic.txt").into_bytes();
        let p = pos % t.len();
        t[p] = byte;
        t.truncate(cut.max(1));
        let s = String::from_utf8_lossy(&t);
        if let Ok(funcs) = lspci::parse(&s) {
            let again = lspci::parse(&lspci::write(&funcs)).unwrap();
            prop_assert_eq!(again.len(), funcs.len());
            for (a, b) in again.iter().zip(&funcs) {
                prop_assert_eq!(&a.config, &b.config);
            }
        }
    }
}
