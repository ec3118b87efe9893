//! Conformance of our vfio-user server against an independent client: the rust-vmm
//! `vfio_user::Client` (cloud-hypervisor's implementation) connects over a real UNIX socket,
//! negotiates the version, reads IDs, BARs and config space, writes a BAR, arms an MSI-X
//! eventfd and receives an interrupt, shares a memfd with DMA_MAP and sees the device DMA into
//! it — and sees a DMA outside the mapping refused without touching the memory.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use pcietun::host::vfio_user::irq::set_flags;
use pcietun::host::vfio_user::memdev::{self, MemDevice};
use pcietun::host::vfio_user::{
    Connection, EventFd, FunctionContext, FunctionServer, ServerConfig, CONFIG_REGION,
};

const VENDOR: u16 = 0x1b36;
const DEVICE: u16 = 0x0011;

fn start_server(dir: &tempfile::TempDir) -> (PathBuf, FunctionContext) {
    let path = dir.path().join("01:00.0.sock");
    let ctx = FunctionContext::new("01:00.0", MemDevice::irq_counts());
    let dev = MemDevice::new(VENDOR, DEVICE, ctx.clone());
    let mut conn = Connection::new(dev, ctx.clone(), ServerConfig::default());
    let server = FunctionServer::bind(&path).expect("bind socket");
    std::thread::spawn(move || server.serve_forever(&mut conn));
    (path, ctx)
}

fn memfd(len: u64) -> std::fs::File {
    // SAFETY: plain syscall with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: fresh descriptor we own.
    let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.set_len(len).unwrap();
    f
}

fn w32(c: &mut vfio_user::Client, off: u64, v: u32) {
    c.region_write(0, off, &v.to_le_bytes()).unwrap();
}
fn r32(c: &mut vfio_user::Client, region: u32, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(region, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

#[test]
fn rust_vmm_client_drives_our_server() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ctx) = start_server(&dir);
    let mut c = vfio_user::Client::new(&path).expect("version negotiation and region discovery");

    // Regions: BAR0 4 KiB, config 256 bytes, the other BARs absent.
    assert_eq!(c.region(0).map(|r| r.size), Some(4096));
    assert_eq!(c.region(CONFIG_REGION).map(|r| r.size), Some(256));
    assert_eq!(c.region(1).map(|r| r.size), Some(0));
    assert!(
        c.region(0).unwrap().file_offset.is_none(),
        "no mmap of BARs"
    );

    // IDs and header through config space.
    let id = r32(&mut c, CONFIG_REGION, 0);
    assert_eq!(id & 0xffff, VENDOR as u32);
    assert_eq!(id >> 16, DEVICE as u32);
    // Capability pointer leads to MSI-X (id 0x11) with 4 vectors.
    let cap = r32(&mut c, CONFIG_REGION, 0x34) & 0xff;
    let msix = r32(&mut c, CONFIG_REGION, cap as u64);
    assert_eq!(msix & 0xff, 0x11);
    assert_eq!(((msix >> 16) & 0x7ff) + 1, memdev::MSIX_VECTORS);

    // BAR sizing through config writes.
    c.region_write(CONFIG_REGION, 0x10, &0xffff_ffffu32.to_le_bytes())
        .unwrap();
    assert_eq!(r32(&mut c, CONFIG_REGION, 0x10), !(4096u32 - 1));

    // Write a BAR and read it back.
    c.region_write(0, 0x20, b"tunnelled!").unwrap();
    let mut back = [0u8; 10];
    c.region_read(0, 0x20, &mut back).unwrap();
    assert_eq!(&back, b"tunnelled!");

    // Interrupts: arm MSI-X vector 2 with an eventfd, ring the doorbell, receive it.
    let info = c.get_irq_info(2).unwrap();
    assert_eq!(info.count, memdev::MSIX_VECTORS);
    assert_ne!(info.flags & 1, 0, "eventfd signalling offered");
    let efd = EventFd::new().unwrap();
    c.set_irqs(
        2,
        set_flags::DATA_EVENTFD | set_flags::ACTION_TRIGGER,
        2,
        1,
        &[efd.as_raw_fd()],
    )
    .unwrap();
    w32(&mut c, memdev::DOORBELL, 2);
    assert_eq!(efd.wait_timeout(Duration::from_secs(5)).unwrap(), 1);
    assert_eq!(ctx.irqs.delivered(), 1);

    // DMA: share 64 KiB of "guest RAM" at IOVA 4 GiB; the device writes into it.
    let ram = memfd(0x10000);
    c.dma_map(0, 0x1_0000_0000, 0x10000, ram.as_raw_fd())
        .unwrap();
    assert_eq!(ctx.dma.len(), 1);
    c.region_write(0, 0, b"device-to-host DMA payload......")
        .unwrap();
    c.region_write(0, memdev::DMA_ADDR, &0x1_0000_0100u64.to_le_bytes())
        .unwrap();
    w32(&mut c, memdev::DMA_LEN, 32);
    w32(&mut c, memdev::DMA_CMD, 1);
    assert_eq!(r32(&mut c, 0, memdev::DMA_STATUS), 0);
    let mut got = [0u8; 32];
    ram.read_exact_at(&mut got, 0x100).unwrap();
    assert_eq!(&got, b"device-to-host DMA payload......");

    // Host-to-device: the device reads what the guest put in its RAM.
    ram.write_all_at(b"guest data", 0x800).unwrap();
    c.region_write(0, memdev::DMA_ADDR, &0x1_0000_0800u64.to_le_bytes())
        .unwrap();
    w32(&mut c, memdev::DMA_LEN, 10);
    w32(&mut c, memdev::DMA_CMD, 2);
    let mut scratch = [0u8; 10];
    c.region_read(0, 0, &mut scratch).unwrap();
    assert_eq!(&scratch, b"guest data");

    // A DMA straddling the end of the window is refused and changes nothing.
    c.region_write(0, memdev::DMA_ADDR, &0x1_0000_fff0u64.to_le_bytes())
        .unwrap();
    w32(&mut c, memdev::DMA_LEN, 32);
    w32(&mut c, memdev::DMA_CMD, 1);
    assert_eq!(r32(&mut c, 0, memdev::DMA_STATUS), 1);
    let mut tail = [0u8; 16];
    ram.read_exact_at(&mut tail, 0xfff0).unwrap();
    assert_eq!(tail, [0u8; 16]);
    assert_eq!(
        ctx.dma
            .stats()
            .write_faults
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // After DMA_UNMAP the same DMA faults.
    c.dma_unmap(0x1_0000_0000, 0x10000).unwrap();
    assert!(ctx.dma.is_empty());
    c.region_write(0, memdev::DMA_ADDR, &0x1_0000_0100u64.to_le_bytes())
        .unwrap();
    w32(&mut c, memdev::DMA_CMD, 1);
    assert_eq!(r32(&mut c, 0, memdev::DMA_STATUS), 1);

    // Reset clears the device.
    c.reset().unwrap();
    c.region_read(0, 0x20, &mut back).unwrap();
    assert_eq!(back, [0u8; 10]);
    c.shutdown().unwrap();
}

#[test]
fn server_accepts_a_new_client_after_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ctx) = start_server(&dir);
    {
        let mut c = vfio_user::Client::new(&path).unwrap();
        let ram = memfd(0x1000);
        c.dma_map(0, 0x2000, 0x1000, ram.as_raw_fd()).unwrap();
        assert_eq!(ctx.dma.len(), 1);
        c.shutdown().unwrap();
    }
    // The next client starts clean: the old client's DMA windows are gone.
    let mut c = vfio_user::Client::new(&path).unwrap();
    assert_eq!(r32(&mut c, CONFIG_REGION, 0) & 0xffff, VENDOR as u32);
    assert!(ctx.dma.is_empty());
}
