//! Replay devices through the endpoint: real cards' `lspci -xxxx` dumps (the four under
//! tests/data/lspci/ plus every function of the machine running the test) are replayed, their
//! configuration space is read back *through TLPs*, written in `lspci -xxxx` format, and
//! Debian's `lspci -F FILE -vvv` must decode it exactly as it decodes the original — also after
//! an OS-style pass that sizes and moves every BAR (then only BAR addresses may differ).

mod prereq;

use prereq::{lspci_or_skip, lspci_vvv, normalise_addresses};
use std::process::Command;

use pcietun::endpoint::loopback::LoopbackHost;
use pcietun::endpoint::replay::ReplayDevice;
use pcietun::endpoint::{Bdf, Proxy, ProxyConfig};
use pcietun::pci::lspci::{self, DumpFunction};
use pcietun::pci::replay::ReplaySizes;

const TARGET: Bdf = Bdf::new(5, 0, 0);

/// Dumps to check: the repository's, and this machine's own functions (when readable in full).
fn dumps() -> Vec<(String, DumpFunction)> {
    let mut out = Vec::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lspci");
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "txt") {
            let text = std::fs::read_to_string(&p).unwrap();
            for f in lspci::parse(&text).unwrap() {
                out.push((p.display().to_string(), f));
            }
        }
    }
    if let Ok(o) = Command::new("lspci").arg("-xxxx").output() {
        if o.status.success() {
            let text = String::from_utf8_lossy(&o.stdout);
            for f in lspci::parse(&text).unwrap_or_default() {
                if f.config.len() == 4096 {
                    out.push((format!("this machine {}", f.description), f));
                }
            }
        }
    }
    out
}

fn read_back(h: &mut LoopbackHost) -> Vec<u8> {
    let mut cfg = Vec::with_capacity(4096);
    for reg in (0..4096u16).step_by(4) {
        cfg.extend_from_slice(&h.cfg_read(TARGET, reg).unwrap().to_le_bytes());
    }
    cfg
}

fn start(f: &DumpFunction) -> (LoopbackHost, Vec<pcietun::pci::replay::ReplayBar>) {
    let dev = ReplayDevice::from_config("replay", &f.config, &ReplaySizes::default()).unwrap();
    let bars = dev.bars();
    let (mut ep, rx) = Proxy::new(ProxyConfig::default());
    ep.add_function(Bdf::new(0, 0, 0), Box::new(dev)).unwrap();
    (LoopbackHost::start(ep, rx, 4096), bars)
}

#[test]
fn replayed_config_space_decodes_like_the_original() {
    if !lspci_or_skip("lspci decoding of replayed devices") {
        return;
    }
    let all = dumps();
    assert!(all.len() >= 4, "the repository's dumps are there");
    for (origin, f) in &all {
        let (mut h, _) = start(f);
        let ours = read_back(&mut h);
        let n = f.config.len();
        assert_eq!(
            &ours[..n],
            &f.config[..],
            "{origin}: bytes read through TLPs"
        );
        let original = lspci_vvv(&lspci::format_function(
            &f.address,
            &f.description,
            &f.config,
        ));
        let replayed = lspci_vvv(&lspci::format_function(
            &f.address,
            &f.description,
            &ours[..n],
        ));
        assert_eq!(replayed, original, "{origin}: lspci -vvv decode differs");
    }
}

#[test]
fn bars_size_move_and_hold_data_like_a_card() {
    if !lspci_or_skip("lspci decoding of replayed devices") {
        return;
    }
    for (origin, f) in &dumps() {
        let (mut h, bars) = start(f);
        // What an OS does: disable decode, size every BAR, place it, enable decode.
        h.cfg_write(TARGET, 0x04, 0).unwrap();
        let mut next_mem = 0x4000_0000u64;
        let mut next_io = 0x1000u64;
        let mut placed = Vec::new();
        for b in &bars {
            let reg = 0x10 + 4 * b.index as u16;
            h.cfg_write(TARGET, reg, 0xffff_ffff).unwrap();
            let low = h.cfg_read(TARGET, reg).unwrap();
            let mask = if b.io { low & !3 } else { low & !0xf };
            assert_eq!(
                u64::from(!mask).wrapping_add(1) & 0xffff_ffff,
                b.size & 0xffff_ffff,
                "{origin}: BAR {} sizes to {}",
                b.index,
                b.size
            );
            let base = if b.io { &mut next_io } else { &mut next_mem };
            let addr = (*base + b.size - 1) & !(b.size - 1);
            *base = addr + b.size;
            h.cfg_write(TARGET, reg, addr as u32).unwrap();
            if b.is_64 {
                h.cfg_write(TARGET, reg + 4, 0).unwrap();
            }
            placed.push((b, addr));
        }
        // Re-enable what the card had enabled (the dump's Command register).
        let command = u16::from_le_bytes([f.config[4], f.config[5]]);
        h.cfg_write(TARGET, 0x04, u32::from(command)).unwrap();
        let n = f.config.len();
        let ours = read_back(&mut h);
        let original = lspci_vvv(&lspci::format_function(
            &f.address,
            &f.description,
            &f.config,
        ));
        let replayed = lspci_vvv(&lspci::format_function(
            &f.address,
            &f.description,
            &ours[..n],
        ));
        let o = normalise_addresses(&original);
        let r = normalise_addresses(&replayed);
        assert_eq!(r, o, "{origin}: decode after BAR assignment");
        // Memory BARs hold what is written (MSI-X table ranges are the endpoint's own).
        h.cfg_write(TARGET, 0x04, u32::from(command | 0x2)).unwrap();
        for (b, addr) in placed.iter().filter(|(b, _)| !b.io && b.size >= 0x100) {
            let probe = addr + b.size - 8;
            h.write32(probe, 0x5a5a_0000 | b.index as u32).unwrap();
            assert_eq!(
                h.read32(probe).unwrap(),
                0x5a5a_0000 | b.index as u32,
                "{origin}: BAR {} memory",
                b.index
            );
        }
    }
}

#[test]
fn bad_dumps_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.txt");
    std::fs::write(&p, "00:00.0 Thing\n00: 86 80 zz\n").unwrap();
    let e = ReplayDevice::from_file(&p, &ReplaySizes::default()).unwrap_err();
    assert!(e.to_string().contains("bad.txt"), "{e}");
    std::fs::write(&p, "").unwrap();
    assert!(ReplayDevice::from_file(&p, &ReplaySizes::default()).is_err());
    let missing = dir.path().join("missing.txt");
    let e = ReplayDevice::from_file(&missing, &ReplaySizes::default()).unwrap_err();
    assert!(e.to_string().contains("missing.txt"), "{e}");
}
