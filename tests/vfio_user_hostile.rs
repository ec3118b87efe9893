//! Malformed and hostile vfio-user clients: every bad message gets an error reply with a
//! meaningful errno, nothing reaches the device, and the server keeps serving. Also the
//! server-to-client DMA_READ/DMA_WRITE path for memory shared without a file descriptor.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use pcietun::host::vfio_user::memdev::{self, MemDevice};
use pcietun::host::vfio_user::{
    Connection, EventFd, FunctionContext, FunctionServer, ServerConfig, CONFIG_REGION,
};

fn start(dir: &tempfile::TempDir) -> (PathBuf, FunctionContext) {
    let path = dir.path().join("02:00.0.sock");
    let ctx = FunctionContext::new("02:00.0", MemDevice::irq_counts());
    let dev = MemDevice::new(0x1234, 0x5678, ctx.clone());
    let mut conn = Connection::new(dev, ctx.clone(), ServerConfig::default());
    let server = FunctionServer::bind(&path).unwrap();
    std::thread::spawn(move || server.serve_forever(&mut conn));
    (path, ctx)
}

struct Raw {
    s: UnixStream,
    id: u16,
}

#[derive(Debug)]
struct Reply {
    id: u16,
    command: u16,
    flags: u32,
    error: u32,
    body: Vec<u8>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

impl Raw {
    fn connect(path: &PathBuf) -> Self {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s, id: 100 }
    }

    fn message(&mut self, command: u16, flags: u32, body: &[u8]) -> Vec<u8> {
        self.id = self.id.wrapping_add(1);
        let mut m = Vec::new();
        m.extend_from_slice(&self.id.to_ne_bytes());
        m.extend_from_slice(&command.to_ne_bytes());
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    fn send_fds(&mut self, bytes: &[u8], fds: &[RawFd]) {
        let mut cbuf = [0u64; 32];
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut _,
            iov_len: bytes.len(),
        };
        // SAFETY: test helper building a valid msghdr over live buffers.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if !fds.is_empty() {
                let space = libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) as usize;
                msg.msg_control = cbuf.as_mut_ptr().cast();
                msg.msg_controllen = space as _;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr(),
                    libc::CMSG_DATA(c) as *mut RawFd,
                    fds.len(),
                );
            }
            assert_eq!(
                libc::sendmsg(self.s.as_raw_fd(), &msg, 0),
                bytes.len() as isize
            );
        }
    }

    fn recv(&mut self) -> Reply {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        let size = u32_at(&h, 4) as usize;
        let mut body = vec![0u8; size - 16];
        self.s.read_exact(&mut body).unwrap();
        Reply {
            id: u16::from_ne_bytes([h[0], h[1]]),
            command: u16::from_ne_bytes([h[2], h[3]]),
            flags: u32_at(&h, 8),
            error: u32_at(&h, 12),
            body,
        }
    }

    fn call(&mut self, command: u16, body: &[u8]) -> Reply {
        let m = self.message(command, 0, body);
        self.s.write_all(&m).unwrap();
        let r = self.recv();
        assert_eq!(r.id, self.id, "reply echoes the message id");
        assert_eq!(r.command, command);
        r
    }

    fn version(&mut self) -> Reply {
        let mut b = vec![0u8, 0, 3, 0];
        b.extend_from_slice(
            br#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":65536,"pgsizes":4096}}"#,
        );
        b.push(0);
        self.call(1, &b)
    }
}

fn region_access(offset: u64, region: u32, count: u32) -> Vec<u8> {
    let mut b = offset.to_ne_bytes().to_vec();
    b.extend_from_slice(&region.to_ne_bytes());
    b.extend_from_slice(&count.to_ne_bytes());
    b
}

const ERROR: u32 = 1 << 5;
const REPLY: u32 = 1;

fn assert_error(r: &Reply, errno: i32) {
    assert_eq!(r.flags, REPLY | ERROR, "error reply flags for {r:?}");
    assert_eq!(r.error, errno as u32, "errno for {r:?}");
    assert!(r.body.is_empty(), "an error reply is only a header");
}

#[test]
fn hostile_messages_get_error_replies_and_the_server_survives() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ctx) = start(&dir);
    let mut c = Raw::connect(&path);

    // Anything before VERSION is refused.
    assert_error(
        &c.call(9, &region_access(0, CONFIG_REGION, 4)),
        libc::EINVAL,
    );
    // Wrong major, garbage JSON, missing NUL.
    let mut bad = vec![1u8, 0, 0, 0];
    bad.extend_from_slice(b"{}\0");
    assert_error(&c.call(1, &bad), libc::EINVAL);
    assert_error(&c.call(1, b"\0\0\0\0{not json\0"), libc::EINVAL);
    assert_error(&c.call(1, b"\0\0\0\0{}"), libc::EINVAL);
    assert_error(
        &c.call(1, b"\0\0\0\0{\"capabilities\":{\"max_msg_fds\":-1}}\0"),
        libc::EINVAL,
    );
    // A good VERSION: 0.0 back, JSON capabilities only from the client's list.
    let v = c.version();
    assert_eq!(v.flags, REPLY);
    assert_eq!(&v.body[..4], &[0, 0, 0, 0], "major 0 minor 0");
    let json = std::str::from_utf8(&v.body[4..v.body.len() - 1]).unwrap();
    let caps: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(caps["capabilities"]["max_msg_fds"], 16);
    assert_eq!(caps["capabilities"]["pgsizes"], 4096);
    assert!(caps["capabilities"].get("max_dma_maps").is_none());
    assert_eq!(*v.body.last().unwrap(), 0, "NUL-terminated");
    // A second VERSION is refused.
    assert_error(&c.version(), libc::EINVAL);

    // Unknown and unsupported commands.
    assert_error(&c.call(99, &[]), libc::ENOTSUP);
    assert_error(&c.call(6, &[0; 16]), libc::ENOTSUP);
    // Truncated bodies.
    assert_error(&c.call(9, &[0; 3]), libc::EINVAL);
    assert_error(&c.call(5, &[0; 8]), libc::EINVAL);
    // Out-of-range accesses never reach the device.
    assert_error(&c.call(9, &region_access(4090, 0, 16)), libc::EINVAL);
    assert_error(&c.call(9, &region_access(u64::MAX - 1, 0, 4)), libc::EINVAL);
    assert_error(&c.call(9, &region_access(0, 3, 4)), libc::EINVAL);
    assert_error(&c.call(9, &region_access(0, 1000, 4)), libc::EINVAL);
    assert_error(&c.call(9, &region_access(0, 0, 2 << 20)), libc::E2BIG);
    assert_error(&c.call(5, &[0; 32].map(|_| 0xff)), libc::EINVAL);
    // Write whose count disagrees with its data.
    let mut w = region_access(0, 0, 8);
    w.extend_from_slice(&[1, 2, 3]);
    assert_error(&c.call(10, &w), libc::EINVAL);
    // SET_IRQS with a bad index, bad flags.
    let irq_set = |flags: u32, index: u32| {
        let mut b = 20u32.to_ne_bytes().to_vec();
        for v in [flags, index, 0, 1] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b
    };
    assert_error(&c.call(8, &irq_set(0x21, 7)), libc::EINVAL);
    assert_error(&c.call(8, &irq_set(0xffff, 2)), libc::EINVAL);
    // DMA_MAP overlapping, zero-sized, unmap of nothing.
    let dma_map = |addr: u64, size: u64| {
        let mut b = 32u32.to_ne_bytes().to_vec();
        b.extend_from_slice(&3u32.to_ne_bytes());
        for v in [0u64, addr, size] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b
    };
    assert_error(&c.call(2, &dma_map(0x1000, 0)), libc::EINVAL);
    assert_error(&c.call(2, &dma_map(u64::MAX - 10, 0x1000)), libc::EINVAL);
    let mut unmap = 24u32.to_ne_bytes().to_vec();
    unmap.extend_from_slice(&0u32.to_ne_bytes());
    unmap.extend_from_slice(&0x5000u64.to_ne_bytes());
    unmap.extend_from_slice(&0x1000u64.to_ne_bytes());
    assert_error(&c.call(3, &unmap), libc::EINVAL);
    // DMA_MAP with two descriptors.
    let f1 = tempfile::tempfile().unwrap();
    let f2 = tempfile::tempfile().unwrap();
    let m = c.message(2, 0, &dma_map(0x1000, 0x1000));
    c.send_fds(&m, &[f1.as_raw_fd(), f2.as_raw_fd()]);
    assert_error(&c.recv(), libc::EINVAL);
    assert!(ctx.dma.is_empty());

    // An oversized message is refused, its body skipped, and framing kept.
    let big = vec![0u8; (1 << 20) + 64];
    let mut m = c.message(10, 0, &big);
    m[16..32].copy_from_slice(&region_access(0, 0, big.len() as u32 - 16));
    c.s.write_all(&m).unwrap();
    assert_error(&c.recv(), libc::E2BIG);

    // Still serving: a normal read works.
    let r = c.call(9, &region_access(0, CONFIG_REGION, 4));
    assert_eq!(r.flags, REPLY);
    assert_eq!(&r.body[16..], &[0x34, 0x12, 0x78, 0x56]);

    // A header whose size is below 16 loses framing: error reply, then the server closes.
    let mut m = c.message(9, 0, &[]);
    m[4..8].copy_from_slice(&4u32.to_ne_bytes());
    c.s.write_all(&m).unwrap();
    assert_error(&c.recv(), libc::EINVAL);
    let mut byte = [0u8; 1];
    assert_eq!(c.s.read(&mut byte).unwrap(), 0, "connection closed");

    // And the next client is served normally.
    let mut c2 = Raw::connect(&path);
    assert_eq!(c2.version().flags, REPLY);
    assert_eq!(c2.call(9, &region_access(0, CONFIG_REGION, 2)).flags, REPLY);
}

#[test]
fn no_reply_commands_are_silent_and_intx_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _ctx) = start(&dir);
    let mut c = Raw::connect(&path);
    c.version();
    // Arm INTx with an eventfd.
    let efd = EventFd::new().unwrap();
    let mut b = 20u32.to_ne_bytes().to_vec();
    for v in [(1u32 << 2) | (1 << 5), 0, 0, 1] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    let m = c.message(8, 0, &b);
    c.send_fds(&m, &[efd.as_raw_fd()]);
    assert_eq!(c.recv().flags, REPLY);
    // A no_reply doorbell write (0xffff = INTx) produces no reply but an interrupt.
    let mut w = region_access(memdev::DOORBELL, 0, 4);
    w.extend_from_slice(&0xffffu32.to_ne_bytes());
    let m = c.message(10, 1 << 4, &w);
    c.s.write_all(&m).unwrap();
    assert_eq!(efd.wait_timeout(Duration::from_secs(5)).unwrap(), 1);
    // The next reply we get belongs to the next command.
    let r = c.call(9, &region_access(0, CONFIG_REGION, 2));
    assert_eq!(r.flags, REPLY);
}

#[test]
fn fdless_dma_map_is_served_with_dma_read_and_dma_write() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ctx) = start(&dir);
    let mut c = Raw::connect(&path);
    c.version();
    // Share 4 KiB at IOVA 0x40000 without a descriptor.
    let mut b = 32u32.to_ne_bytes().to_vec();
    b.extend_from_slice(&3u32.to_ne_bytes());
    for v in [0u64, 0x40000, 0x1000] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    assert_eq!(c.call(2, &b).flags, REPLY);
    assert_eq!(ctx.dma.len(), 1);

    // The client's memory, served by this test.
    let mut memory = vec![0u8; 0x1000];
    memory[0x10..0x18].copy_from_slice(b"from vm!");

    // Device DMA write: scratch -> client memory at 0x40100, 16 bytes.
    let mut w = region_access(0, 0, 16);
    w.extend_from_slice(b"device wrote it!");
    assert_eq!(c.call(10, &w).flags, REPLY);
    let mut w = region_access(memdev::DMA_ADDR, 0, 12);
    w.extend_from_slice(&0x40100u64.to_ne_bytes());
    w.extend_from_slice(&16u32.to_ne_bytes());
    assert_eq!(c.call(10, &w).flags, REPLY);
    let mut w = region_access(memdev::DMA_CMD, 0, 4);
    w.extend_from_slice(&1u32.to_ne_bytes());
    let m = c.message(10, 0, &w);
    let cmd_id = c.id;
    c.s.write_all(&m).unwrap();
    // The server asks us with DMA_WRITE before it answers our REGION_WRITE.
    let req = c.recv();
    assert_eq!(req.command, 12, "DMA_WRITE");
    assert_eq!(req.flags & 0xf, 0, "a command from the server");
    let addr = u64::from_ne_bytes(req.body[0..8].try_into().unwrap());
    let count = u64::from_ne_bytes(req.body[8..16].try_into().unwrap()) as usize;
    assert_eq!((addr, count), (0x40100, 16));
    let off = (addr - 0x40000) as usize;
    memory[off..off + count].copy_from_slice(&req.body[16..16 + count]);
    let mut rep = Vec::new();
    rep.extend_from_slice(&req.id.to_ne_bytes());
    rep.extend_from_slice(&12u16.to_ne_bytes());
    rep.extend_from_slice(&(16u32 + 16).to_ne_bytes());
    rep.extend_from_slice(&REPLY.to_ne_bytes());
    rep.extend_from_slice(&0u32.to_ne_bytes());
    rep.extend_from_slice(&req.body[..16]);
    c.s.write_all(&rep).unwrap();
    let done = c.recv();
    assert_eq!((done.id, done.flags), (cmd_id, REPLY));
    assert_eq!(&memory[0x100..0x110], b"device wrote it!");

    // Device DMA read: client memory 0x40010 -> scratch.
    let mut w = region_access(memdev::DMA_ADDR, 0, 12);
    w.extend_from_slice(&0x40010u64.to_ne_bytes());
    w.extend_from_slice(&8u32.to_ne_bytes());
    assert_eq!(c.call(10, &w).flags, REPLY);
    let mut w = region_access(memdev::DMA_CMD, 0, 4);
    w.extend_from_slice(&2u32.to_ne_bytes());
    let m = c.message(10, 0, &w);
    c.s.write_all(&m).unwrap();
    let req = c.recv();
    assert_eq!(req.command, 11, "DMA_READ");
    let addr = u64::from_ne_bytes(req.body[0..8].try_into().unwrap());
    let count = u64::from_ne_bytes(req.body[8..16].try_into().unwrap()) as usize;
    let off = (addr - 0x40000) as usize;
    let mut rep = Vec::new();
    rep.extend_from_slice(&req.id.to_ne_bytes());
    rep.extend_from_slice(&11u16.to_ne_bytes());
    rep.extend_from_slice(&((32 + count) as u32).to_ne_bytes());
    rep.extend_from_slice(&REPLY.to_ne_bytes());
    rep.extend_from_slice(&0u32.to_ne_bytes());
    rep.extend_from_slice(&req.body[..16]);
    rep.extend_from_slice(&memory[off..off + count]);
    c.s.write_all(&rep).unwrap();
    assert_eq!(c.recv().flags, REPLY);
    let r = c.call(9, &region_access(0, 0, 8));
    assert_eq!(&r.body[16..], b"from vm!");
    let r = c.call(9, &region_access(memdev::DMA_STATUS, 0, 4));
    assert_eq!(&r.body[16..], &[0, 0, 0, 0], "DMA succeeded");
}
