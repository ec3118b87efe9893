//! The endpoint proxy's completer and requester rules, observed as TLP bytes: completion
//! splitting at RCB/MPS with Byte Count and Lower Address, Unsupported Request, decode enables,
//! poisoned writes, AtomicOps, multi-function devices, and the DMA engine's DMA and interrupts.

use std::time::{Duration, Instant};

use pcietun::endpoint::dma_engine::DmaEngine;
use pcietun::endpoint::loopback::{LoopbackHost, HOST_MEM_BASE, MSI_BASE};
use pcietun::endpoint::wire::{self, CplStatus, ParsedHeader, ParsedKind};
use pcietun::endpoint::{Bdf, Proxy, ProxyConfig};
use pcietun::pci::class::dma_engine::{self, reg};

const F0: Bdf = Bdf::new(2, 0, 0);
const F1: Bdf = Bdf::new(2, 0, 1);
const REGS: u64 = 0xfe00_0000;
const BUF: u64 = 0x8000_0000;
const BUF1: u64 = 0x9000_0000;

/// The next TLP the endpoint sends within `timeout`, driving it meanwhile as its driver would:
/// `poll` with real time after every wake-up (a device thread's DMA kick, a timer).
fn recv_driven(
    ep: &mut Proxy,
    rx: &crossbeam::channel::Receiver<Vec<u8>>,
    timeout: Duration,
) -> Result<Vec<u8>, crossbeam::channel::RecvTimeoutError> {
    let kicks = ep.kicks();
    let deadline = Instant::now() + timeout;
    loop {
        let now = Instant::now();
        ep.poll(now);
        if let Ok(t) = rx.try_recv() {
            return Ok(t);
        }
        if now >= deadline {
            return Err(crossbeam::channel::RecvTimeoutError::Timeout);
        }
        let wake = ep.poll_timeout().map_or(deadline, |t| t.min(deadline));
        crossbeam::channel::select! {
            recv(kicks) -> _ => {}
            recv(rx) -> t => return t.map_err(|_| crossbeam::channel::RecvTimeoutError::Disconnected),
            default(wake.saturating_duration_since(now)) => {}
        }
    }
}

fn setup(timeout: Duration) -> LoopbackHost {
    let (mut ep, rx) = Proxy::new(ProxyConfig {
        dma_timeout: timeout,
        ..ProxyConfig::default()
    });
    ep.add_function(Bdf::new(0, 0, 0), Box::new(DmaEngine::new(1 << 20)))
        .unwrap();
    ep.add_function(Bdf::new(0, 0, 1), Box::new(DmaEngine::new(1 << 16)))
        .unwrap();
    let mut h = LoopbackHost::start(ep, rx, 4 << 20);
    for (f, regs, buf) in [(F0, REGS, BUF), (F1, REGS + 0x10_0000, BUF1)] {
        h.cfg_write(f, 0x10, regs as u32).unwrap();
        h.cfg_write(f, 0x14, 0).unwrap();
        h.cfg_write(f, 0x18, buf as u32).unwrap();
        h.cfg_write(f, 0x1c, 0).unwrap();
        h.cfg_write(f, 0x04, 0x0006).unwrap();
    }
    h
}

fn mrd(h: &mut LoopbackHost, addr: u64, len: u32) -> (CplStatus, Vec<Vec<u8>>) {
    let tag = h.tag();
    let mut t = Vec::new();
    wire::emit_mem_read(&mut t, Bdf(0), tag, addr, len).unwrap();
    h.request(t, tag).unwrap()
}

#[test]
fn read_completions_split_at_rcb_and_mps() {
    let mut h = setup(Duration::from_secs(2));
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    h.mem_write(BUF, &data).unwrap();
    // 4096 bytes from 0x24 into the buffer, MPS 128, RCB 64.
    let (st, parts) = mrd(&mut h, BUF + 0x24, 4000);
    assert_eq!(st, CplStatus::Sc);
    let mut got = Vec::new();
    let mut expect_bc = 4000u32;
    let mut addr = BUF + 0x24;
    for (i, c) in parts.iter().enumerate() {
        let hd = ParsedHeader::parse(c).unwrap();
        let ParsedKind::Completion {
            byte_count,
            lower_addr,
            completer,
            ..
        } = hd.kind
        else {
            panic!("not a completion")
        };
        assert_eq!(completer, F0);
        assert_eq!(u32::from(byte_count), expect_bc & 0xfff, "completion {i}");
        assert_eq!(u64::from(lower_addr), addr & 0x7f);
        let p = &c[hd.payload.clone()];
        assert!(p.len() <= 128, "payload within MPS");
        let lead = usize::from(lower_addr & 3);
        let n = (p.len() - lead).min(expect_bc as usize);
        if i > 0 {
            assert_eq!(addr % 64, 0, "later completions start on the RCB");
        }
        got.extend_from_slice(&p[lead..lead + n]);
        expect_bc -= n as u32;
        addr += n as u64;
    }
    assert_eq!(expect_bc, 0);
    assert_eq!(got, data[0x24..0x24 + 4000]);
    // Raising MPS to 256 halves the number of completions for an aligned 4 KiB read.
    let (_, small) = mrd(&mut h, BUF, 4096);
    let pcie = 0x54;
    let ctl = h.cfg_read(F0, pcie + 8).unwrap();
    h.cfg_write(F0, pcie + 8, (ctl & !(7 << 5)) | (1 << 5))
        .unwrap();
    let (_, big) = mrd(&mut h, BUF, 4096);
    assert_eq!((small.len(), big.len()), (32, 16));
}

#[test]
fn unsupported_request_and_decode_enable() {
    let mut h = setup(Duration::from_secs(2));
    // Nothing at this address: UR.
    let (st, _) = mrd(&mut h, 0xdead_0000, 4);
    assert_eq!(st, CplStatus::Ur);
    // A function that does not exist: UR for config.
    assert!(h.cfg_read(Bdf::new(2, 3, 0), 0).is_err());
    // Memory decode off: reads UR, writes dropped.
    h.write32(BUF, 0x1234_5678).unwrap();
    h.cfg_write(F0, 0x04, 0x0004).unwrap();
    let (st, _) = mrd(&mut h, BUF, 4);
    assert_eq!(st, CplStatus::Ur);
    h.write32(BUF, 0xffff_ffff).unwrap();
    h.cfg_write(F0, 0x04, 0x0006).unwrap();
    assert_eq!(
        h.read32(BUF).unwrap(),
        0x1234_5678,
        "write while disabled was dropped"
    );
    // A poisoned write is dropped too.
    let mut t = Vec::new();
    wire::emit_mem_write(&mut t, Bdf(0), BUF, &[1, 2, 3, 4]).unwrap();
    t[2] |= 0x40;
    h.send_raw(t).unwrap();
    assert_eq!(
        h.read32(BUF).unwrap(),
        0x1234_5678,
        "poisoned write dropped"
    );
    let st = h.proxy_stats().unwrap();
    assert_eq!(st.dropped_writes, 2);
    assert_eq!(st.poisoned, 1);
    assert!(st.unsupported >= 3);
}

#[test]
fn atomic_ops_on_buffer_bar() {
    let mut h = setup(Duration::from_secs(2));
    h.mem_write(BUF + 8, &10u64.to_le_bytes()).unwrap();
    let atomic = |h: &mut LoopbackHost, ty: u8, addr: u64, ops: &[u8]| -> (CplStatus, u64) {
        let tag = h.tag();
        let mut t = vec![0u8; 12];
        t[0] = 0x40 | ty; // 3 DW with data
        t[3] = (ops.len() / 4) as u8;
        t[6] = tag as u8;
        t[7] = 0xff;
        t[8..12].copy_from_slice(&(addr as u32).to_be_bytes());
        t.extend_from_slice(ops);
        let (st, parts) = h.request(t, tag).unwrap();
        let c = &parts[0];
        let hd = ParsedHeader::parse(c).unwrap();
        let p = &c[hd.payload];
        let mut v = [0u8; 8];
        v[..p.len().min(8)].copy_from_slice(&p[..p.len().min(8)]);
        (st, u64::from_le_bytes(v))
    };
    // FetchAdd 64-bit: returns 10, memory becomes 15.
    assert_eq!(
        atomic(&mut h, 0x0c, BUF + 8, &5u64.to_le_bytes()),
        (CplStatus::Sc, 10)
    );
    // CAS 64-bit: compare 15 swap 99.
    let mut ops = 15u64.to_le_bytes().to_vec();
    ops.extend_from_slice(&99u64.to_le_bytes());
    assert_eq!(atomic(&mut h, 0x0e, BUF + 8, &ops), (CplStatus::Sc, 15));
    // Swap 32-bit.
    assert_eq!(
        atomic(&mut h, 0x0d, BUF + 8, &7u32.to_le_bytes()),
        (CplStatus::Sc, 99)
    );
    assert_eq!(h.mem_read(BUF + 8, 8).unwrap(), 7u64.to_le_bytes());
    // AtomicOps to the register BAR are not supported: UR.
    assert_eq!(
        atomic(&mut h, 0x0c, REGS, &1u32.to_le_bytes()).0,
        CplStatus::Ur
    );
}

#[test]
fn multi_function_device_isolation() {
    let mut h = setup(Duration::from_secs(2));
    assert_ne!(
        h.cfg_read(F0, 0x0c).unwrap() & (1 << 23),
        0,
        "function 0 is multi-function"
    );
    assert_eq!(h.read32(REGS).unwrap(), dma_engine::ID_VALUE);
    assert_eq!(h.read32(REGS + 0x10_0000).unwrap(), dma_engine::ID_VALUE);
    assert_eq!(h.read32(REGS + reg::BUF_SIZE_LO).unwrap(), 1 << 20);
    assert_eq!(
        h.read32(REGS + 0x10_0000 + reg::BUF_SIZE_LO).unwrap(),
        1 << 16
    );
    h.write32(BUF, 0xaaaa_aaaa).unwrap();
    h.write32(BUF1, 0x5555_5555).unwrap();
    assert_eq!(h.read32(BUF).unwrap(), 0xaaaa_aaaa);
    assert_eq!(h.read32(BUF1).unwrap(), 0x5555_5555);
    // FLR of function 1 leaves function 0 alone.
    h.cfg_write(F1, 0x54 + 8, 0x8000).unwrap();
    assert_eq!(h.cfg_read(F1, 0x18).unwrap() & !0xf, 0);
    assert_eq!(h.cfg_read(F0, 0x18).unwrap() & !0xf, BUF as u32);
    assert_eq!(h.read32(BUF).unwrap(), 0xaaaa_aaaa);
}

fn start_dma(h: &mut LoopbackHost, host: u64, off: u32, len: u32, control: u32) {
    h.write64(REGS + reg::HOST_ADDR_LO, host).unwrap();
    h.write32(REGS + reg::BUF_OFFSET, off).unwrap();
    h.write32(REGS + reg::LENGTH, len).unwrap();
    h.write32(REGS + reg::CONTROL, control).unwrap();
    h.write32(REGS + reg::DOORBELL, 1).unwrap();
}

fn wait_status(h: &mut LoopbackHost) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = h.read32(REGS + reg::STATUS).unwrap();
        if s & dma_engine::status::BUSY == 0 {
            return s;
        }
        assert!(Instant::now() < deadline, "DMA engine stuck busy");
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn dma_engine_moves_data_both_ways_with_msix() {
    let mut h = setup(Duration::from_secs(2));
    // MSI-X vector 0 -> MSI_BASE + 0x40, data 0x77; enable MSI-X.
    h.write64(REGS + 0x1000, MSI_BASE + 0x40).unwrap();
    h.write32(REGS + 0x1008, 0x77).unwrap();
    h.write32(REGS + 0x100c, 0).unwrap();
    let msix_cap = 0x48;
    let ctl = h.cfg_read(F0, msix_cap).unwrap();
    h.cfg_write(F0, msix_cap, ctl | (1 << 31)).unwrap();

    let src: Vec<u8> = (0..65536u32).map(|i| (i ^ (i >> 8)) as u8).collect();
    h.host_write(HOST_MEM_BASE + 0x1_0003, &src);
    // Host -> buffer (DMA read, unaligned host address, many MRRS-sized requests).
    start_dma(
        &mut h,
        HOST_MEM_BASE + 0x1_0003,
        0x100,
        65536,
        dma_engine::control::IRQ_EN,
    );
    assert_eq!(wait_status(&mut h), dma_engine::status::DONE);
    assert!(h.wait_msi_count(1, Duration::from_secs(5)));
    assert_eq!(h.msi_log()[0], (MSI_BASE + 0x40, 0x77));
    assert_eq!(h.mem_read(BUF + 0x100, 256).unwrap(), src[..256]);
    // Buffer -> host (DMA write) to a different place.
    h.write32(REGS + reg::STATUS, dma_engine::status::DONE)
        .unwrap();
    start_dma(
        &mut h,
        HOST_MEM_BASE + 0x20_0001,
        0x100,
        65536,
        dma_engine::control::IRQ_EN | dma_engine::control::TO_HOST,
    );
    assert_eq!(wait_status(&mut h), dma_engine::status::DONE);
    assert!(h.wait_msi_count(2, Duration::from_secs(5)));
    assert_eq!(h.host_read(HOST_MEM_BASE + 0x20_0001, 65536), src);
    assert_eq!(h.read32(REGS + reg::COMPLETIONS).unwrap(), 2);
    assert_eq!(h.read32(REGS + reg::BYTES_LO).unwrap(), 131072);
}

#[test]
fn dma_engine_errors_and_intx() {
    let mut h = setup(Duration::from_millis(300));
    // Host address outside host memory: the host answers UR, the engine reports code 4 and,
    // without MSI-X, raises INTA until software clears the status.
    start_dma(&mut h, 0x40_0000_0000, 0, 4096, dma_engine::control::IRQ_EN);
    let s = wait_status(&mut h);
    assert_eq!(s & dma_engine::status::ERROR, dma_engine::status::ERROR);
    assert_eq!((s >> 8) & 0xff, 4);
    assert!(h.wait_intx(true, Duration::from_secs(5)));
    assert!(h.bad_dma() > 0);
    h.write32(REGS + reg::STATUS, dma_engine::status::ERROR)
        .unwrap();
    assert!(h.wait_intx(false, Duration::from_secs(5)));
    // Bus Master Enable clear: code 2, and nothing reaches the host.
    h.cfg_write(F0, 0x04, 0x0002).unwrap();
    let before = h.bad_dma();
    start_dma(&mut h, HOST_MEM_BASE, 0, 64, dma_engine::control::TO_HOST);
    let s = wait_status(&mut h);
    assert_eq!((s >> 8) & 0xff, 2);
    assert_eq!(h.bad_dma(), before);
    assert_eq!(h.host_read(HOST_MEM_BASE, 64), vec![0; 64]);
    // Beyond the buffer: code 1.
    h.cfg_write(F0, 0x04, 0x0006).unwrap();
    start_dma(&mut h, HOST_MEM_BASE, (1 << 20) - 16, 64, 0);
    assert_eq!((wait_status(&mut h) >> 8) & 0xff, 1);
}

#[test]
fn sriov_virtual_functions_appear_route_and_dma() {
    let (mut ep, rx) = Proxy::new(ProxyConfig::default());
    ep.add_function(Bdf::new(0, 0, 0), Box::new(DmaEngine::with_vfs(1 << 16, 4)))
        .unwrap();
    let mut h = LoopbackHost::start(ep, rx, 1 << 20);
    let pf = Bdf::new(3, 0, 0);
    let vf = |i: u8| Bdf::new(3, 0, i);
    h.cfg_write(pf, 0x10, REGS as u32).unwrap();
    h.cfg_write(pf, 0x18, BUF as u32).unwrap();
    h.cfg_write(pf, 0x04, 0x0006).unwrap();
    assert!(h.cfg_read(vf(1), 0).is_err(), "no VFs before VF Enable");
    // SR-IOV capability at 0x100: TotalVFs 4, offset 1, stride 1, VF Device ID.
    assert_eq!(h.cfg_read(pf, 0x100).unwrap() & 0xffff, 0x0010);
    assert_eq!(h.cfg_read(pf, 0x10c).unwrap() >> 16, 4);
    assert_eq!(h.cfg_read(pf, 0x114).unwrap(), 0x0001_0001);
    assert_eq!(
        h.cfg_read(pf, 0x118).unwrap() >> 16,
        u32::from(dma_engine::VF_DEVICE_ID)
    );
    // VF BAR0 sizing reads back the per-VF size.
    h.cfg_write(pf, 0x124, 0xffff_ffff).unwrap();
    assert_eq!(h.cfg_read(pf, 0x124).unwrap(), 0xffff_e004);
    let vf_regs = 0xd000_0000u64;
    let vf_bufs = 0xc000_0000u64;
    h.cfg_write(pf, 0x124, vf_regs as u32).unwrap();
    h.cfg_write(pf, 0x128, 0).unwrap();
    h.cfg_write(pf, 0x12c, vf_bufs as u32).unwrap();
    h.cfg_write(pf, 0x130, 0).unwrap();
    h.cfg_write(pf, 0x110, 2).unwrap(); // NumVFs
    h.cfg_write(pf, 0x108, 0x9).unwrap(); // VF Enable + VF MSE
    assert_eq!(
        h.cfg_read(vf(1), 0).unwrap(),
        0xffff_ffff,
        "VF IDs read all-ones"
    );
    assert_eq!(
        h.cfg_read(vf(2), 8).unwrap() >> 8,
        0x08_80_00,
        "VF 2 class code"
    );
    assert!(h.cfg_read(vf(3), 0).is_err(), "only NumVFs VFs exist");
    // VF 2's registers and buffer are its slices of the VF BARs.
    assert_eq!(h.read32(vf_regs + 0x2000).unwrap(), dma_engine::ID_VALUE);
    assert_eq!(
        h.read32(vf_regs + 0x2000 + reg::BUF_SIZE_LO).unwrap(),
        1 << 16
    );
    // VF 2 does DMA as itself once its own Bus Master Enable is set.
    h.cfg_write(vf(2), 0x04, 0x0004).unwrap();
    let src: Vec<u8> = (0..4096u32).map(|i| (i * 5) as u8).collect();
    h.host_write(HOST_MEM_BASE + 0x8000, &src);
    let r = vf_regs + 0x2000;
    h.write64(r + reg::HOST_ADDR_LO, HOST_MEM_BASE + 0x8000)
        .unwrap();
    h.write32(r + reg::BUF_OFFSET, 0).unwrap();
    h.write32(r + reg::LENGTH, 4096).unwrap();
    h.write32(r + reg::DOORBELL, 1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.read32(r + reg::STATUS).unwrap() & dma_engine::status::DONE == 0 {
        assert!(Instant::now() < deadline, "VF DMA never finished");
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(h.mem_read(vf_bufs + (1 << 16), 4096).unwrap(), src);
    assert_eq!(
        h.mem_read(vf_bufs, 64).unwrap(),
        vec![0; 64],
        "VF 1 untouched"
    );
    assert_eq!(h.mem_read(BUF, 64).unwrap(), vec![0; 64], "PF untouched");
    // VF MSE off: VF BARs stop decoding; VF Enable off: the VFs disappear.
    h.cfg_write(pf, 0x108, 0x1).unwrap();
    assert!(h.read32(vf_regs).is_err());
    h.cfg_write(pf, 0x108, 0x0).unwrap();
    assert!(h.cfg_read(vf(1), 0).is_err());
}

/// The requester side seen as raw TLPs at a sans-I/O endpoint: reads split at MRRS and 4 KiB,
/// tags drawn from the tag space the Device Control registers allow (5-bit, 8-bit, 10-bit),
/// never reused while outstanding; a late or foreign completion is counted, not delivered.
#[test]
fn requester_tags_and_read_splitting() {
    use pcietun::endpoint::wire::emit_completion;
    for (devctl_bits, devctl2_bits, tag_space) in [
        (0u32, 0u32, 32u16),     // no extended tags: 5-bit
        (1 << 8, 0, 256),        // extended tags: 8-bit
        (1 << 8, 1 << 12, 1024), // 10-bit tag requester enable
    ] {
        let (mut ep, rx) = Proxy::new(ProxyConfig::default());
        ep.add_function(Bdf::new(0, 0, 0), Box::new(DmaEngine::new(1 << 20)))
            .unwrap();
        let cfg = |ep: &mut Proxy, reg: u16, v: u32| {
            let mut t = vec![
                0x44,
                0,
                0,
                1,
                0,
                0,
                1,
                0x0f,
                0x02,
                0x00,
                (reg >> 8) as u8,
                reg as u8,
            ];
            t.extend_from_slice(&v.to_le_bytes());
            ep.handle_tlp(&t).unwrap();
        };
        cfg(&mut ep, 0x10, REGS as u32);
        cfg(&mut ep, 0x04, 0x0006);
        // MRRS 128 (code 0), MPS 128, plus the tag enables under test.
        cfg(&mut ep, 0x54 + 8, devctl_bits);
        cfg(&mut ep, 0x54 + 0x28, devctl2_bits);
        while rx.try_recv().is_ok() {}
        // Start a 64 KiB DMA read from host address 0x1_0000_0f00 (crosses 4 KiB pages).
        let host = 0x1_0000_0f00u64;
        for (off, v) in [
            (reg::HOST_ADDR_LO, host as u32),
            (reg::HOST_ADDR_HI, (host >> 32) as u32),
            (reg::LENGTH, 65536),
            (reg::CONTROL, 0),
            (reg::DOORBELL, 1),
        ] {
            let mut t = Vec::new();
            wire::emit_mem_write(&mut t, Bdf(0), REGS + off, &v.to_le_bytes()).unwrap();
            ep.handle_tlp(&t).unwrap();
        }
        // Collect requests until the requester stops (out of tags or done), check the batch,
        // then answer it: each batch must fill the whole tag space (or finish the transfer).
        let mut served = 0u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        while served < 65536 {
            assert!(
                Instant::now() < deadline,
                "DMA stalled after {served} bytes"
            );
            let mut batch = Vec::new();
            while let Ok(t) = recv_driven(&mut ep, &rx, Duration::from_millis(60)) {
                let hd = ParsedHeader::parse(&t).unwrap();
                if let ParsedKind::MemRead { addr } = hd.kind {
                    batch.push((hd, addr));
                }
            }
            let left_chunks = ((65536 - served) / 128) as usize;
            assert_eq!(
                batch.len(),
                left_chunks.min(usize::from(tag_space)),
                "outstanding reads with a {tag_space}-tag space"
            );
            let mut tags = std::collections::HashSet::new();
            for (hd, addr) in &batch {
                let first = addr + u64::from(hd.first_byte_offset());
                let n = hd.byte_count();
                assert!(
                    hd.tag < tag_space,
                    "tag {} outside a {tag_space}-tag space",
                    hd.tag
                );
                // A 10-bit tag never has Tag[9:8] = 00b (PCIe §2.2.6.2).
                assert!(
                    tag_space < 1024 || hd.tag >= 256,
                    "10-bit tag {} with Tag[9:8] = 00b",
                    hd.tag
                );
                assert!(
                    tags.insert(hd.tag),
                    "tag {} reused while outstanding",
                    hd.tag
                );
                assert!(n <= 128, "request of {n} bytes exceeds MRRS 128");
                assert_eq!(
                    first / 4096,
                    (first + u64::from(n) - 1) / 4096,
                    "crosses 4 KiB"
                );
            }
            for (hd, addr) in batch {
                let first = addr + u64::from(hd.first_byte_offset());
                let n = hd.byte_count();
                let data =
                    vec![(addr % 251) as u8; (first as usize % 4 + n as usize).div_ceil(4) * 4];
                let mut c = Vec::new();
                emit_completion(
                    &mut c,
                    Bdf(0),
                    hd.requester,
                    hd.tag,
                    CplStatus::Sc,
                    n as u16,
                    (first & 0x7f) as u8,
                    0,
                    &data,
                )
                .unwrap();
                ep.handle_tlp(&c).unwrap();
                served += u64::from(n);
            }
        }
        // A completion nobody asked for is counted and dropped.
        let mut c = Vec::new();
        emit_completion(
            &mut c,
            Bdf(0),
            Bdf::new(2, 0, 0),
            7,
            CplStatus::Sc,
            4,
            0,
            0,
            &[0; 4],
        )
        .unwrap();
        ep.handle_tlp(&c).unwrap();
        assert_eq!(ep.stats().unexpected_completions, 1);
        // The engine finished and its buffer holds what the host served.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut t = Vec::new();
            wire::emit_mem_read(&mut t, Bdf(0), 9, REGS + reg::STATUS, 4).unwrap();
            ep.handle_tlp(&t).unwrap();
            let st = loop {
                let r = recv_driven(&mut ep, &rx, Duration::from_secs(1)).unwrap();
                let hd = ParsedHeader::parse(&r).unwrap();
                if let ParsedKind::Completion { .. } = hd.kind {
                    if hd.tag == 9 {
                        break u32::from_le_bytes(r[hd.payload][..4].try_into().unwrap());
                    }
                }
            };
            if st & dma_engine::status::DONE != 0 {
                break;
            }
            assert!(Instant::now() < deadline, "engine never reported done");
        }
    }
}

/// Completion timeout: a DMA read the host never answers fails after the timeout (the engine
/// reports code 3); the late completion that turns up afterwards is absorbed, not taken for a
/// newer request's data; the next transfer works.
#[test]
fn completion_timeout_and_late_completion() {
    use pcietun::endpoint::wire::emit_completion;
    let (mut ep, rx) = Proxy::new(ProxyConfig {
        dma_timeout: Duration::from_millis(100),
        ..ProxyConfig::default()
    });
    ep.add_function(Bdf::new(0, 0, 0), Box::new(DmaEngine::new(4096)))
        .unwrap();
    let mut cfg = |reg: u16, v: u32| {
        let mut t = vec![0x44, 0, 0, 1, 0, 0, 1, 0x0f, 0x02, 0x00, 0, reg as u8];
        t.extend_from_slice(&v.to_le_bytes());
        ep.handle_tlp(&t).unwrap();
    };
    cfg(0x10, REGS as u32);
    cfg(0x18, BUF as u32);
    cfg(0x04, 0x0006);
    let mw = |ep: &mut Proxy, off: u64, v: u32| {
        let mut t = Vec::new();
        wire::emit_mem_write(&mut t, Bdf(0), REGS + off, &v.to_le_bytes()).unwrap();
        ep.handle_tlp(&t).unwrap();
    };
    let status = |ep: &mut Proxy, rx: &crossbeam::channel::Receiver<Vec<u8>>| -> u32 {
        let mut t = Vec::new();
        wire::emit_mem_read(&mut t, Bdf(0), 9, REGS + reg::STATUS, 4).unwrap();
        ep.handle_tlp(&t).unwrap();
        loop {
            let r = recv_driven(ep, rx, Duration::from_secs(2)).unwrap();
            let hd = ParsedHeader::parse(&r).unwrap();
            if matches!(hd.kind, ParsedKind::Completion { .. }) && hd.tag == 9 {
                return u32::from_le_bytes(r[hd.payload][..4].try_into().unwrap());
            }
        }
    };
    mw(&mut ep, reg::HOST_ADDR_LO, 0x1000);
    mw(&mut ep, reg::LENGTH, 64);
    mw(&mut ep, reg::DOORBELL, 1);
    let req = loop {
        let t = recv_driven(&mut ep, &rx, Duration::from_secs(2)).unwrap();
        let hd = ParsedHeader::parse(&t).unwrap();
        if let ParsedKind::MemRead { .. } = hd.kind {
            break hd;
        }
    };
    // Do not answer: the engine must give up with a completion timeout.
    let t0 = Instant::now();
    let s = loop {
        let s = status(&mut ep, &rx);
        if s & dma_engine::status::BUSY == 0 {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert_eq!(s & dma_engine::status::ERROR, dma_engine::status::ERROR);
    assert_eq!((s >> 8) & 0xff, 3, "error code: completion timeout");
    // The late completion is absorbed (its tag was quarantined), not counted as unexpected.
    let mut c = Vec::new();
    emit_completion(
        &mut c,
        Bdf(0),
        req.requester,
        req.tag,
        CplStatus::Sc,
        64,
        0,
        0,
        &[0xee; 64],
    )
    .unwrap();
    ep.handle_tlp(&c).unwrap();
    assert_eq!(ep.stats().unexpected_completions, 0);
    // A second transfer, answered, succeeds and carries the new data, not the late bytes.
    mw(&mut ep, reg::STATUS, dma_engine::status::ERROR);
    mw(&mut ep, reg::DOORBELL, 1);
    let req = loop {
        let t = recv_driven(&mut ep, &rx, Duration::from_secs(2)).unwrap();
        let hd = ParsedHeader::parse(&t).unwrap();
        if let ParsedKind::MemRead { .. } = hd.kind {
            break hd;
        }
    };
    let mut c = Vec::new();
    emit_completion(
        &mut c,
        Bdf(0),
        req.requester,
        req.tag,
        CplStatus::Sc,
        64,
        0,
        0,
        &[0x11; 64],
    )
    .unwrap();
    ep.handle_tlp(&c).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&mut ep, &rx) & dma_engine::status::DONE == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut t = Vec::new();
    wire::emit_mem_read(&mut t, Bdf(0), 10, REGS + reg::BYTES_LO, 4).unwrap();
    ep.handle_tlp(&t).unwrap();
    let bytes = loop {
        let r = recv_driven(&mut ep, &rx, Duration::from_secs(2)).unwrap();
        let hd = ParsedHeader::parse(&r).unwrap();
        if matches!(hd.kind, ParsedKind::Completion { .. }) && hd.tag == 10 {
            break u32::from_le_bytes(r[hd.payload][..4].try_into().unwrap());
        }
    };
    assert_eq!(bytes, 64);
    let mut t = Vec::new();
    wire::emit_mem_read(&mut t, Bdf(0), 11, BUF, 64).unwrap();
    ep.handle_tlp(&t).unwrap();
    let data = loop {
        let r = recv_driven(&mut ep, &rx, Duration::from_secs(2)).unwrap();
        let hd = ParsedHeader::parse(&r).unwrap();
        if matches!(hd.kind, ParsedKind::Completion { .. }) && hd.tag == 11 {
            break r[hd.payload].to_vec();
        }
    };
    assert_eq!(
        data,
        vec![0x11; 64],
        "the buffer holds the answered data, not the late bytes"
    );
}

/// A device that only hands out its DMA handle: the test drives the reads.
struct Probe {
    ctx: std::sync::Arc<std::sync::Mutex<Option<pcietun::endpoint::DeviceContext>>>,
}

impl pcietun::endpoint::Device for Probe {
    fn name(&self) -> &str {
        "probe"
    }
    fn attach(&mut self, ctx: pcietun::endpoint::DeviceContext) {
        *self.ctx.lock().unwrap() = Some(ctx);
    }
    fn config_read(&mut self, _reg: u16) -> u32 {
        0
    }
    fn config_write(&mut self, _reg: u16, _value: u32, _be: u8) -> bool {
        false
    }
    fn decode(&self) -> pcietun::endpoint::device::Decode {
        pcietun::endpoint::device::Decode {
            io_enable: false,
            mem_enable: false,
            bus_master: true,
            intx_disable: true,
            int_pin: 0,
            bars: [None; 6],
            mps: 128,
            mrrs: 128,
            rcb: 64,
            ext_tags: false,
            ten_bit_tags: false,
            msix: None,
            msix_enabled: false,
            msix_masked: false,
            sriov: None,
        }
    }
    fn bar_read(
        &mut self,
        _bar: u8,
        _offset: u64,
        _data: &mut [u8],
    ) -> Result<(), pcietun::endpoint::DeviceError> {
        Err(pcietun::endpoint::DeviceError::Unsupported("no BARs"))
    }
    fn bar_write(
        &mut self,
        _bar: u8,
        _offset: u64,
        _data: &[u8],
    ) -> Result<(), pcietun::endpoint::DeviceError> {
        Err(pcietun::endpoint::DeviceError::Unsupported("no BARs"))
    }
    fn reset(&mut self, _kind: pcietun::endpoint::device::ResetKind) {}
}

/// The endpoint's DMA requester under simulated time: the test is the endpoint's driver and
/// gives it `t0 + offset`, never the wall clock, so timeouts fire exactly where the simulated
/// clock says (the only real waiting is for the device thread to queue its read, which the
/// kick reports). Covers a completion timeout, the late completion after it, a read split at
/// MRRS and answered out of order, and link down with a read in flight.
#[test]
fn dma_requester_under_simulated_time() {
    use pcietun::endpoint::wire::emit_completion;
    use pcietun::endpoint::DmaError;
    const PROBE: Bdf = Bdf::new(0, 0, 0);
    let timeout = Duration::from_millis(100);
    let (mut ep, rx) = Proxy::new(ProxyConfig {
        dma_timeout: timeout,
        ..ProxyConfig::default()
    });
    let ctx = std::sync::Arc::new(std::sync::Mutex::new(None));
    ep.add_function(PROBE, Box::new(Probe { ctx: ctx.clone() }))
        .unwrap();
    let dma = ctx.lock().unwrap().as_ref().unwrap().dma.clone();
    let kicks = ep.kicks();
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let start_read = |addr: u64, len: usize| {
        let dma = dma.clone();
        let h = std::thread::spawn(move || {
            let mut b = vec![0u8; len];
            dma.read(addr, &mut b).map(|()| b)
        });
        kicks
            .recv_timeout(Duration::from_secs(10))
            .expect("the read is queued");
        h
    };
    let mem_reads = |rx: &crossbeam::channel::Receiver<Vec<u8>>| -> Vec<(u16, u64, u32)> {
        rx.try_iter()
            .filter_map(|t| {
                let hd = ParsedHeader::parse(&t).unwrap();
                match hd.kind {
                    ParsedKind::MemRead { addr } => Some((
                        hd.tag,
                        addr + u64::from(hd.first_byte_offset()),
                        hd.byte_count(),
                    )),
                    _ => None,
                }
            })
            .collect()
    };
    let cpl = |tag: u16, addr: u64, remaining: u32, data: &[u8]| {
        let lead = (addr & 3) as usize;
        let mut p = vec![0u8; (lead + data.len()).div_ceil(4) * 4];
        p[lead..lead + data.len()].copy_from_slice(data);
        let mut c = Vec::new();
        emit_completion(
            &mut c,
            Bdf(0x100),
            PROBE,
            tag,
            CplStatus::Sc,
            remaining as u16,
            (addr & 0x7f) as u8,
            0,
            &p,
        )
        .unwrap();
        c
    };
    let stats = |ep: &Proxy| ep.requester_stats(PROBE).unwrap();

    // 1. Completion timeout, at exactly the simulated deadline.
    let reader = start_read(0x1000, 64);
    ep.poll(at(0));
    let reqs = mem_reads(&rx);
    assert_eq!(reqs.len(), 1);
    let (late_tag, _, _) = reqs[0];
    assert_eq!(ep.poll_timeout(), Some(at(100)));
    ep.poll(at(99));
    assert_eq!(stats(&ep).timeouts, 0);
    ep.poll(at(100));
    assert_eq!(
        reader.join().unwrap(),
        Err(DmaError::Timeout {
            addr: 0x1000,
            len: 64
        })
    );
    assert_eq!(stats(&ep).timeouts, 1);

    // 2. The late completion is absorbed: not delivered, not unexpected, tag freed.
    ep.handle_tlp(&cpl(late_tag, 0x1000, 64, &[0xee; 64]))
        .unwrap();
    assert_eq!(stats(&ep).late, 1);
    assert_eq!(ep.stats().unexpected_completions, 0);

    // 3. A 300-byte read splits at MRRS 128 (three requests, 5-bit tags, none the timed-out
    //    tag's successor in use twice) and reassembles when answered out of order.
    let src: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    let reader = start_read(0x2_0040, 300);
    ep.poll(at(150));
    let mut reqs = mem_reads(&rx);
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|&(tag, _, n)| tag < 32 && n <= 128));
    reqs.reverse();
    for (tag, addr, n) in reqs {
        let off = (addr - 0x2_0040) as usize;
        ep.handle_tlp(&cpl(tag, addr, n, &src[off..off + n as usize]))
            .unwrap();
    }
    assert_eq!(reader.join().unwrap().unwrap(), src);
    assert_eq!(ep.poll_timeout(), None, "nothing outstanding, no timer");

    // 4. Link down with a read in flight: it fails at once, its tag is free, a completion
    //    for it afterwards matches nothing.
    let reader = start_read(0x3000, 16);
    ep.poll(at(200));
    let (tag, _, _) = mem_reads(&rx)[0];
    ep.reset_all();
    assert_eq!(
        reader.join().unwrap(),
        Err(DmaError::Reset { addr: 0x3000 })
    );
    ep.handle_tlp(&cpl(tag, 0x3000, 16, &[0; 16])).unwrap();
    assert_eq!(ep.stats().unexpected_completions, 1);
    assert_eq!(stats(&ep).link_down, 1);
    assert_eq!(ep.poll_timeout(), None);
}
