//! Malformed and hostile vfio-user clients: every bad message gets an error reply with a
//! meaningful errno, nothing reaches the device, and the server keeps serving. Also the
//! server-to-client DMA_READ/DMA_WRITE path for memory shared without a file descriptor.
//!
//! Then the consumers of docs/security.md ("The host agent and its consumers"), with real
//! sockets and memfds, first against one vfio-user server with the in-memory device, then
//! against the whole host agent over a UDP session to a fake two-function appliance:
//!
//! * guest memory shorter than declared, or shrunk after `DMA_MAP`: refused, or the card's DMA
//!   past the end fails (Unsupported Request) — never SIGBUS, the agent lives;
//! * a pipe as interrupt eventfd: refused; an eventfd whose counter the client filled: the
//!   card's interrupts (more than 512) block nothing, the other function keeps working;
//! * a client that never answers the agent's DMA_READ: its card's DMA gets a Completer Abort
//!   in bounded time, the other function's I/O is unaffected, the session stays up.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::tlpio::{self, ROOT_PORT};
use pcietun::host::vfio_user::memdev::{self, MemDevice};
use pcietun::host::vfio_user::{
    Connection, EventFd, FunctionContext, FunctionServer, ServerConfig, CONFIG_REGION,
};
use pcietun::host::{HostConfig, HostEvent};
use pcietun::pci::{Bar, ConfigSpace, ExpressConfig, FunctionIds, MsixCap, PciExpressCap};
use pcietun::tlp::build::{self, Cpl};
use pcietun::tlp::{Bdf, CplStatus, MemOp, Tlp, TlpHeader};
use pcietun::transport::driver::{udp::UdpPort, DriverConfig, Peers, TransportHandle, Upcall};
use pcietun::transport::{ConnId, Event, HostId, HostKey, SecretKey};

/// The agent's static key and the fake appliance's (fixed: the test needs no secrecy).
fn host_key() -> SecretKey {
    SecretKey::from_bytes([0x44; 32])
}
fn appliance_key() -> SecretKey {
    SecretKey::from_bytes([0x55; 32])
}

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

// ---------------------------------------------------------------------------------------------
// Hostile consumers against one server with the in-memory device.
// ---------------------------------------------------------------------------------------------

/// A memfd of `len` bytes, sealed against shrinking and growing (as QEMU's
/// memory-backend-memfd makes guest RAM) or not.
fn memfd(len: u64, sealed: bool) -> std::fs::File {
    use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
    let f = std::fs::File::from(
        memfd_create("guest-ram", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap(),
    );
    f.set_len(len).unwrap();
    if sealed {
        fcntl_add_seals(&f, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL).unwrap();
    }
    f
}

fn dma_map_body(address: u64, size: u64) -> Vec<u8> {
    let mut b = 32u32.to_ne_bytes().to_vec();
    b.extend_from_slice(&3u32.to_ne_bytes()); // readable | writeable
    for v in [0u64, address, size] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b
}

fn irq_set_body(flags: u32, index: u32, start: u32, count: u32) -> Vec<u8> {
    let mut b = 20u32.to_ne_bytes().to_vec();
    for v in [flags, index, start, count] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b
}

/// DATA_EVENTFD | ACTION_TRIGGER.
const EVENTFD_TRIGGER: u32 = (1 << 2) | (1 << 5);

impl Raw {
    /// DMA_MAP with one descriptor (or none): the reply.
    fn dma_map(&mut self, address: u64, size: u64, fd: Option<RawFd>) -> Reply {
        let m = self.message(2, 0, &dma_map_body(address, size));
        match fd {
            Some(fd) => self.send_fds(&m, &[fd]),
            None => self.s.write_all(&m).unwrap(),
        }
        self.recv()
    }

    /// SET_IRQS arming `fds.len()` vectors of `index` from `start`: the reply.
    fn set_irqs(&mut self, index: u32, start: u32, fds: &[RawFd]) -> Reply {
        let body = irq_set_body(EVENTFD_TRIGGER, index, start, fds.len() as u32);
        let m = self.message(8, 0, &body);
        self.send_fds(&m, fds);
        self.recv()
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Reply {
        let mut w = region_access(offset, region, data.len() as u32);
        w.extend_from_slice(data);
        self.call(10, &w)
    }

    fn region_read(&mut self, region: u32, offset: u64, len: u32) -> Vec<u8> {
        let r = self.call(9, &region_access(offset, region, len));
        assert_eq!(r.flags, REPLY, "REGION_READ failed: {r:?}");
        r.body[16..].to_vec()
    }

    /// The in-memory device DMAs `len` bytes: `read` from `address` into its scratch, or
    /// writes its scratch to `address`. Returns DMA_STATUS (0 = done).
    fn device_dma(&mut self, address: u64, len: u32, read: bool) -> u32 {
        let mut w = address.to_ne_bytes().to_vec();
        w.extend_from_slice(&len.to_ne_bytes());
        assert_eq!(self.region_write(0, memdev::DMA_ADDR, &w).flags, REPLY);
        let cmd: u32 = if read { 2 } else { 1 };
        assert_eq!(
            self.region_write(0, memdev::DMA_CMD, &cmd.to_ne_bytes())
                .flags,
            REPLY
        );
        let s = self.region_read(0, memdev::DMA_STATUS, 4);
        u32::from_ne_bytes(s.try_into().unwrap())
    }
}

/// Guest RAM shorter than the window it is declared for is refused; a sealed memfd of the
/// right size works.
#[test]
fn short_memfd_declared_long_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ctx) = start(&dir);
    let mut c = Raw::connect(&path);
    c.version();
    let short = memfd(4096, true);
    assert_error(
        &c.dma_map(0x10_0000, 1 << 20, Some(short.as_raw_fd())),
        libc::EINVAL,
    );
    assert!(ctx.dma.is_empty());
    // Not a file at all: refused too.
    let (sock, _peer) = UnixStream::pair().unwrap();
    assert_error(
        &c.dma_map(0x10_0000, 4096, Some(sock.as_raw_fd())),
        libc::EINVAL,
    );
    // The right size maps, and the device's DMA reaches it.
    let ram = memfd(1 << 20, true);
    assert_eq!(
        c.dma_map(0x10_0000, 1 << 20, Some(ram.as_raw_fd())).flags,
        REPLY
    );
    assert_eq!(c.region_write(0, 0, b"to guest").flags, REPLY);
    assert_eq!(c.device_dma(0x10_0000 + 0xf_0000, 8, false), 0);
    let mut b = [0u8; 8];
    ram.read_exact_at(&mut b, 0xf_0000).unwrap();
    assert_eq!(&b, b"to guest");
}

/// Guest RAM without seals, shrunk after DMA_MAP: the device's DMA past the new end fails
/// (it would have raised SIGBUS and killed the process), is counted, and everything else
/// keeps working, including DMA to what is left.
#[test]
fn memfd_shrunk_after_dma_map_fails_the_dma_without_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ctx) = start(&dir);
    let mut c = Raw::connect(&path);
    c.version();
    let ram = memfd(1 << 20, false);
    ram.write_all_at(b"guest data", 0x8_0000).unwrap();
    assert_eq!(
        c.dma_map(0x10_0000, 1 << 20, Some(ram.as_raw_fd())).flags,
        REPLY
    );
    assert_eq!(c.device_dma(0x18_0000, 10, true), 0, "DMA works before");
    assert_eq!(c.region_read(0, 0, 10), b"guest data");

    ram.set_len(4096).unwrap();
    assert_eq!(
        c.device_dma(0x18_0000, 10, true),
        1,
        "read past the end fails"
    );
    assert_eq!(c.device_dma(0x18_0000, 10, false), 1, "write too");
    let st = ctx.dma.stats();
    assert_eq!(st.vanished.load(Ordering::Relaxed), 2);
    assert_eq!(
        ram.metadata().unwrap().len(),
        4096,
        "the failed write grew nothing"
    );
    // The page that is left still takes DMA; the server still serves.
    assert_eq!(c.region_write(0, 0, b"still here").flags, REPLY);
    assert_eq!(c.device_dma(0x10_0100, 10, false), 0);
    let mut b = [0u8; 10];
    ram.read_exact_at(&mut b, 0x100).unwrap();
    assert_eq!(&b, b"still here");
    let mut c2 = Raw::connect(&path);
    drop(c);
    assert_eq!(c2.version().flags, REPLY);
}

/// A pipe (or a socket, or a memfd) as an interrupt eventfd is refused: only eventfds are
/// taken. An eventfd whose counter the client filled blocks nothing: over 512 interrupts in a
/// row, every command is still answered at once.
#[test]
fn pipe_as_irq_fd_is_refused_and_a_full_eventfd_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ctx) = start(&dir);
    let mut c = Raw::connect(&path);
    c.version();
    let mut p = [0; 2];
    // SAFETY: pipe2(2) writes two new descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let ram = memfd(4096, true);
    for bad in [p[1], ram.as_raw_fd()] {
        assert_error(&c.set_irqs(2, 0, &[bad]), libc::EINVAL);
    }
    let good = EventFd::new().unwrap();
    assert_error(&c.set_irqs(2, 0, &[good.as_raw_fd(), p[1]]), libc::EINVAL);
    for fd in p {
        // SAFETY: closing the two pipe ends made above, once.
        unsafe { libc::close(fd) };
    }

    // A real eventfd, filled: the next write to it would block.
    let full = EventFd::new().unwrap();
    assert_eq!(c.set_irqs(2, 0, &[full.as_raw_fd()]).flags, REPLY);
    let other = EventFd::new().unwrap();
    assert_eq!(c.set_irqs(2, 1, &[other.as_raw_fd()]).flags, REPLY);
    rustix::io::write(&full, &(u64::MAX - 1).to_ne_bytes()).unwrap();
    let t0 = Instant::now();
    for _ in 0..600 {
        // The doorbell raises MSI-X vector 0 from the server's own thread.
        let r = c.region_write(0, memdev::DOORBELL, &0u32.to_ne_bytes());
        assert_eq!(r.flags, REPLY);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "600 interrupts took {:?}",
        t0.elapsed()
    );
    // The other vector arrives; the stuck one was skipped, not waited on.
    assert_eq!(
        c.region_write(0, memdev::DOORBELL, &1u32.to_ne_bytes())
            .flags,
        REPLY
    );
    assert_eq!(other.wait_timeout(Duration::from_secs(5)).unwrap(), 1);
    assert!(ctx.irqs.full() >= 1);
    // Once the client reads, its interrupts come again (a write still waiting for room when
    // it read completes then too).
    assert_eq!(full.drain().unwrap(), u64::MAX - 1);
    c.region_write(0, memdev::DOORBELL, &0u32.to_ne_bytes());
    let n = full.wait_timeout(Duration::from_secs(5)).unwrap();
    assert!((1..=2).contains(&n), "{n}");
}

/// A client that shares memory without a descriptor and never answers the server's DMA_READ:
/// the device's DMA fails after the reply time limit, not after 5 s, and later ones fail at
/// once until the client answers something again.
#[test]
fn never_answering_client_costs_one_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ctx) = start(&dir);
    let mut c = Raw::connect(&path);
    c.version();
    assert_eq!(c.dma_map(0x40000, 0x1000, None).flags, REPLY);
    let mut w = 0x40000u64.to_ne_bytes().to_vec();
    w.extend_from_slice(&8u32.to_ne_bytes());
    assert_eq!(c.region_write(0, memdev::DMA_ADDR, &w).flags, REPLY);
    // DMA_CMD read: the server asks us with DMA_READ, which we ignore.
    let m = c.message(10, 0, &{
        let mut b = region_access(memdev::DMA_CMD, 0, 4);
        b.extend_from_slice(&2u32.to_ne_bytes());
        b
    });
    let cmd_id = c.id;
    let t0 = Instant::now();
    c.s.write_all(&m).unwrap();
    let req = c.recv();
    assert_eq!(req.command, 11, "DMA_READ to us");
    let done = c.recv();
    let took = t0.elapsed();
    assert_eq!((done.id, done.flags), (cmd_id, REPLY));
    let limit = ServerConfig::default().client_reply_timeout;
    assert!(took >= limit, "{took:?}");
    assert!(took < limit + Duration::from_secs(2), "{took:?}");
    let s = c.region_read(0, memdev::DMA_STATUS, 4);
    assert_eq!(s, 1u32.to_ne_bytes(), "the DMA failed");
    assert_eq!(ctx.dma.stats().unreachable.load(Ordering::Relaxed), 1);
    // The client is unresponsive now: the next DMA fails at once, without asking it.
    let t0 = Instant::now();
    assert_eq!(c.device_dma(0x40000, 8, true), 1);
    assert!(t0.elapsed() < limit, "{:?}", t0.elapsed());
    // A (late) reply shows it is alive: the next DMA asks it again, and it answers.
    let mut rep = Vec::new();
    rep.extend_from_slice(&req.id.to_ne_bytes());
    rep.extend_from_slice(&11u16.to_ne_bytes());
    rep.extend_from_slice(&(32u32 + 8).to_ne_bytes());
    rep.extend_from_slice(&REPLY.to_ne_bytes());
    rep.extend_from_slice(&0u32.to_ne_bytes());
    rep.extend_from_slice(&req.body[..16]);
    rep.extend_from_slice(b"too late");
    c.s.write_all(&rep).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let m = c.message(10, 0, &{
        let mut b = region_access(memdev::DMA_CMD, 0, 4);
        b.extend_from_slice(&2u32.to_ne_bytes());
        b
    });
    c.s.write_all(&m).unwrap();
    let req = c.recv();
    assert_eq!(req.command, 11);
    let mut rep = Vec::new();
    rep.extend_from_slice(&req.id.to_ne_bytes());
    rep.extend_from_slice(&11u16.to_ne_bytes());
    rep.extend_from_slice(&(32u32 + 8).to_ne_bytes());
    rep.extend_from_slice(&REPLY.to_ne_bytes());
    rep.extend_from_slice(&0u32.to_ne_bytes());
    rep.extend_from_slice(&req.body[..16]);
    rep.extend_from_slice(b"in time!");
    c.s.write_all(&rep).unwrap();
    assert_eq!(c.recv().flags, REPLY);
    assert_eq!(c.region_read(0, 0, 8), b"in time!");
}

// ---------------------------------------------------------------------------------------------
// The whole host agent over a UDP session, against a fake appliance with two functions.
// ---------------------------------------------------------------------------------------------

const BAR0: usize = 0x4000;
const TABLE: usize = 0x2000;
const FN_A: Bdf = Bdf::new(1, 0, 0);
const FN_B: Bdf = Bdf::new(1, 0, 1);

fn card(function: u8) -> ConfigSpace {
    let mut c = ConfigSpace::endpoint(FunctionIds {
        vendor_id: 0x1b36,
        device_id: 0x0010 + u16::from(function),
        class_code: 0x010802,
        multifunction: true,
        ..Default::default()
    });
    c.set_bar(
        0,
        Bar::Memory64 {
            size: BAR0 as u64,
            prefetchable: false,
        },
    )
    .unwrap();
    c.add_capability(Box::new(PciExpressCap::new(ExpressConfig::default())))
        .unwrap();
    c.add_capability(Box::new(MsixCap::new(4, 0, TABLE as u32, 0, 0x3000)))
        .unwrap();
    c
}

/// A completion the fake appliance received for one of its cards' DMA reads.
#[derive(Debug)]
struct CardCompletion {
    requester: Bdf,
    tag: u16,
    status: CplStatus,
    data: Vec<u8>,
}

/// A transport server on loopback whose card (two functions, 01:00.0 and 01:00.1) answers the
/// host's config and memory requests, and which can make its functions DMA and interrupt.
struct FakeAppliance {
    addr: SocketAddr,
    handle: Arc<TransportHandle>,
    conn: Arc<Mutex<Option<ConnId>>>,
    bar0: Arc<[Mutex<Vec<u8>>; 2]>,
    completions: Mutex<mpsc::Receiver<CardCompletion>>,
    downs: Arc<AtomicUsize>,
}

fn fake_appliance() -> FakeAppliance {
    let port = UdpPort::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = port.addr();
    let cfg = DriverConfig::new(
        appliance_key(),
        Peers::Accept(vec![HostKey {
            host: HostId::new("test-host").unwrap(),
            public: host_key().public_key(),
            psk: None,
        }]),
    );
    let handle = Arc::new(TransportHandle::spawn(Box::new(port), cfg).unwrap());
    let bar0: Arc<[Mutex<Vec<u8>>; 2]> =
        Arc::new([Mutex::new(vec![0u8; BAR0]), Mutex::new(vec![0u8; BAR0])]);
    let conn = Arc::new(Mutex::new(None));
    let downs = Arc::new(AtomicUsize::new(0));
    let (cpl_tx, cpl_rx) = mpsc::channel();
    let (h, b, c, d) = (handle.clone(), bar0.clone(), conn.clone(), downs.clone());
    std::thread::spawn(move || {
        let mut cs = [card(0), card(1)];
        let mut out = vec![0u8; tlpio::MAX_TLP];
        while let Some(up) = h.recv() {
            let (conn, tlp) = match up {
                Upcall::Tlp { conn, tlp, .. } => (conn, tlp),
                Upcall::Event {
                    conn,
                    event: Event::Connected { .. },
                } => {
                    *c.lock().unwrap() = Some(conn);
                    continue;
                }
                Upcall::Event {
                    event: Event::Down { .. },
                    ..
                } => {
                    d.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                _ => continue,
            };
            let t = Tlp::parse(&tlp).unwrap();
            let n = match t.header {
                TlpHeader::Cfg(q) if q.target.device() == 0 && q.target.function() < 2 => {
                    let f = usize::from(q.target.function());
                    let me = Bdf::new(1, 0, q.target.function());
                    let mut data = [0u8; 4];
                    if q.write {
                        for i in 0..4 {
                            if q.first_be & (1 << i) != 0 {
                                cs[f].write(q.register as usize + i, &t.data[i..i + 1]);
                            }
                        }
                    } else {
                        cs[f].read(q.register as usize, &mut data);
                    }
                    let payload: &[u8] = if q.write { &[] } else { &data };
                    Cpl::new(me, ROOT_PORT, q.tag, CplStatus::Sc).emit(&mut out, 4, 0, payload)
                }
                TlpHeader::Cfg(q) => {
                    Cpl::new(q.target, ROOT_PORT, q.tag, CplStatus::Ur).emit(&mut out, 4, 0, &[])
                }
                TlpHeader::Mem(m) => {
                    let r = pcietun::tlp::split::covered_bytes(
                        m.address,
                        t.length_dw,
                        m.first_be,
                        m.last_be,
                    );
                    let hit = (0..2).find_map(|f| match cs[f].decode(r.address, false) {
                        Some((0, off)) => Some((f, off as usize)),
                        _ => None,
                    });
                    match (m.op, hit) {
                        (MemOp::Write, Some((f, o))) => {
                            let skip = (r.address & 3) as usize;
                            b[f].lock().unwrap()[o..o + r.len as usize]
                                .copy_from_slice(&t.data[skip..skip + r.len as usize]);
                            continue;
                        }
                        (MemOp::Read, Some((f, o))) => {
                            let dw = o & !3;
                            let payload =
                                b[f].lock().unwrap()[dw..dw + t.length_dw as usize * 4].to_vec();
                            let me = Bdf::new(1, 0, f as u8);
                            Cpl::new(me, ROOT_PORT, m.tag, CplStatus::Sc).emit(
                                &mut out,
                                r.len as u16,
                                (r.address & 0x7f) as u8,
                                &payload,
                            )
                        }
                        _ => continue,
                    }
                }
                TlpHeader::Cpl(cpl) => {
                    let skip = (cpl.lower_address & 3) as usize;
                    let data = t.data.get(skip..).unwrap_or(&[]).to_vec();
                    let _ = cpl_tx.send(CardCompletion {
                        requester: cpl.requester_id,
                        tag: cpl.tag,
                        status: cpl.status,
                        data,
                    });
                    continue;
                }
                _ => continue,
            };
            let n = n.unwrap();
            let _ = h.send(conn, Bytes::copy_from_slice(&out[..n]));
        }
    });
    FakeAppliance {
        addr,
        handle,
        conn,
        bar0,
        completions: Mutex::new(cpl_rx),
        downs,
    }
}

impl FakeAppliance {
    fn send(&self, tlp: &[u8]) {
        let conn = self.conn.lock().unwrap().expect("session");
        self.handle.send(conn, Bytes::copy_from_slice(tlp)).unwrap();
    }

    /// Function `f` of the card reads host memory; its completion (status and data), or
    /// `None` if none came within `wait`.
    fn dma_read(
        &self,
        f: Bdf,
        address: u64,
        len: u32,
        tag: u16,
        wait: Duration,
    ) -> Option<CardCompletion> {
        let mut out = vec![0u8; tlpio::MAX_TLP];
        let n = build::mem_read(&mut out, f, tag, address, len).unwrap();
        self.send(&out[..n]);
        let rx = self.completions.lock().unwrap();
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let c = rx.recv_timeout(left).ok()?;
            if c.requester == f && c.tag == tag {
                return Some(c);
            }
        }
    }

    /// Function `f` of the card writes host memory.
    fn dma_write(&self, f: Bdf, address: u64, data: &[u8]) {
        let mut out = vec![0u8; tlpio::MAX_TLP];
        let n = build::mem_write(&mut out, f, address, data).unwrap();
        self.send(&out[..n]);
    }

    /// Function `f` fires MSI-X `vector` as its table (programmed by the host) says.
    fn msix(&self, f: Bdf, vector: usize) {
        let (addr, data) = {
            let b = self.bar0[usize::from(f.function())].lock().unwrap();
            let e = TABLE + 16 * vector;
            let u = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
            assert_eq!(
                u(e + 12) & 1,
                0,
                "vector {vector} masked in the card's table"
            );
            (u64::from(u(e)) | u64::from(u(e + 4)) << 32, u(e + 8))
        };
        self.dma_write(f, addr, &data.to_le_bytes());
    }
}

/// A host agent connected to a fake appliance, serving both functions over vfio-user.
struct Rig {
    app: FakeAppliance,
    agent: Agent,
    _dir: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
}

fn rig() -> Rig {
    let app = fake_appliance();
    let agent = Agent::start(AgentConfig {
        target: Target::Udp(app.addr),
        host_id: "test-host".into(),
        key: Some(host_key()),
        appliance_key: Some(appliance_key().public_key()),
        psk: None,
        inject_loss: 0.0,
        host: HostConfig::default(),
    })
    .unwrap();
    let found = agent.wait_scan(Duration::from_secs(20)).unwrap();
    assert_eq!(found, vec![FN_A, FN_B]);
    let dir = tempfile::tempdir().unwrap();
    let paths = agent.serve_vfio_user(dir.path()).unwrap();
    assert_eq!(paths.len(), 2);
    Rig {
        app,
        agent,
        a: paths[0].clone(),
        b: paths[1].clone(),
        _dir: dir,
    }
}

impl Rig {
    /// The session never dropped on either side, and the agent still sees its card.
    fn assert_session_held(&self) {
        assert_eq!(
            self.app.downs.load(Ordering::Relaxed),
            0,
            "the appliance saw the session drop"
        );
        let host = self.agent.host();
        assert!(host.is_link_up());
        let events: Vec<HostEvent> =
            std::iter::from_fn(|| host.next_event(Duration::ZERO)).collect();
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, HostEvent::LinkDown | HostEvent::FunctionRemoved(_))),
            "{events:?}"
        );
        assert_eq!(host.functions().len(), 2);
    }
}

/// Client B's MMIO: write a word of BAR0 and read it back, through the tunnel. Returns the
/// slowest round trip.
fn mmio_round_trips(c: &mut Raw, n: u32) -> Duration {
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let t0 = Instant::now();
        assert_eq!(
            c.region_write(0, 0x100, &(i * 3).to_le_bytes()).flags,
            REPLY
        );
        let v = c.region_read(0, 0x100, 4);
        worst = worst.max(t0.elapsed());
        assert_eq!(v, (i * 3).to_le_bytes(), "BAR0 word, round {i}");
    }
    worst
}

/// A client that never answers the agent's DMA_READ, on function A. The card's DMA from it
/// gets a Completer Abort within the reply time limit (later ones at once); meanwhile function
/// B's I/O on the same agent goes on at full speed, and the session does not drop.
#[test]
fn agent_never_answering_client_costs_only_its_own_function() {
    let r = rig();
    let mut a = Raw::connect(&r.a);
    a.version();
    assert_eq!(a.dma_map(0x8000_0000, 0x10000, None).flags, REPLY);
    let mut b = Raw::connect(&r.b);
    b.version();
    mmio_round_trips(&mut b, 5);

    // Function B works the whole time A's DMA waits for A's client.
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        let t0 = Instant::now();
        while done_rx.try_recv().is_err() && t0.elapsed() < Duration::from_secs(20) {
            worst = worst.max(mmio_round_trips(&mut b, 10));
        }
        (b, worst)
    });
    let t0 = Instant::now();
    let cpl = r
        .app
        .dma_read(FN_A, 0x8000_0010, 64, 0x21, Duration::from_secs(10))
        .expect("the card gets an answer");
    let took = t0.elapsed();
    assert_eq!(cpl.status, CplStatus::Ca, "Completer Abort for the DMA");
    let limit = ServerConfig::default().client_reply_timeout;
    assert!(
        took >= limit && took < limit + Duration::from_secs(2),
        "{took:?}"
    );
    // A's client did get asked (and stays silent).
    let req = a.recv();
    assert_eq!(req.command, 11, "DMA_READ");
    // The next one fails at once: the client is unresponsive.
    let t0 = Instant::now();
    let cpl = r
        .app
        .dma_read(FN_A, 0x8000_0020, 4, 0x22, Duration::from_secs(10))
        .expect("answer");
    assert_eq!(cpl.status, CplStatus::Ca);
    assert!(t0.elapsed() < limit, "{:?}", t0.elapsed());
    std::thread::sleep(Duration::from_millis(300));
    done_tx.send(()).unwrap();
    let (mut b, worst) = worker.join().unwrap();
    assert!(
        worst < Duration::from_millis(400),
        "B's slowest MMIO round trip: {worst:?}"
    );
    mmio_round_trips(&mut b, 5);
    let fa = r.agent.host().open(FN_A).unwrap().context();
    assert!(fa.dma.stats().unreachable.load(Ordering::Relaxed) >= 1);
    r.assert_session_held();
    // And A's own config space is still reachable through its (silent) client's socket.
    let id = a.region_read(CONFIG_REGION, 0, 4);
    assert_eq!(id, [0x36, 0x1b, 0x10, 0x00]);
}

/// Guest RAM that shrinks under the agent: the card's DMA past the new end gets Unsupported
/// Request (a write is dropped), the agent lives, the session holds, the other function works.
#[test]
fn agent_dma_past_a_shrunk_memfd_is_unsupported_request() {
    let r = rig();
    let mut a = Raw::connect(&r.a);
    a.version();
    // Declared longer than it is: refused.
    let short = memfd(4096, false);
    assert_error(
        &a.dma_map(0x1_0000_0000, 1 << 20, Some(short.as_raw_fd())),
        libc::EINVAL,
    );
    let ram = memfd(1 << 20, false);
    assert_eq!(
        a.dma_map(0x1_0000_0000, 1 << 20, Some(ram.as_raw_fd()))
            .flags,
        REPLY
    );
    ram.write_all_at(b"guest bytes!", 0x9_0000).unwrap();
    let cpl = r
        .app
        .dma_read(FN_A, 0x1_0009_0000, 12, 0x31, Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        (cpl.status, &cpl.data[..12]),
        (CplStatus::Sc, &b"guest bytes!"[..])
    );

    ram.set_len(0x1000).unwrap();
    let cpl = r
        .app
        .dma_read(FN_A, 0x1_0009_0000, 12, 0x32, Duration::from_secs(5))
        .unwrap();
    assert_eq!(cpl.status, CplStatus::Ur, "past the new end");
    r.app.dma_write(FN_A, 0x1_0008_0000, b"nowhere");
    // Behind the write on the same link: once this completes, the write was handled.
    let cpl = r
        .app
        .dma_read(FN_A, 0x1_0000_0100, 4, 0x33, Duration::from_secs(5))
        .unwrap();
    assert_eq!(cpl.status, CplStatus::Sc, "the page that is left");
    let fa = r.agent.host().open(FN_A).unwrap().context();
    assert_eq!(fa.dma.stats().vanished.load(Ordering::Relaxed), 2);
    assert_eq!(ram.metadata().unwrap().len(), 0x1000);
    let mut b = Raw::connect(&r.b);
    b.version();
    mmio_round_trips(&mut b, 10);
    r.assert_session_held();
}

/// A pipe as function A's interrupt eventfd is refused; an eventfd whose counter A's client
/// filled takes more than 512 interrupts from the card without blocking anything: function B's
/// MMIO and interrupts carry on, the session holds.
#[test]
fn agent_interrupts_to_a_hostile_eventfd_block_nothing() {
    let r = rig();
    let mut a = Raw::connect(&r.a);
    a.version();
    let mut p = [0; 2];
    // SAFETY: pipe2(2) writes two new descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    assert_error(&a.set_irqs(2, 0, &[p[1]]), libc::EINVAL);
    for fd in p {
        // SAFETY: closing the two pipe ends made above, once.
        unsafe { libc::close(fd) };
    }
    let full = EventFd::new().unwrap();
    assert_eq!(a.set_irqs(2, 0, &[full.as_raw_fd()]).flags, REPLY);
    rustix::io::write(&full, &(u64::MAX - 1).to_ne_bytes()).unwrap();
    let mut b = Raw::connect(&r.b);
    b.version();
    let eb = EventFd::new().unwrap();
    assert_eq!(b.set_irqs(2, 1, &[eb.as_raw_fd()]).flags, REPLY);
    // Both MSI-X tables are programmed once these reads (behind the table writes) return.
    a.region_read(0, 0, 4);
    b.region_read(0, 0, 4);

    for _ in 0..1000 {
        r.app.msix(FN_A, 0);
    }
    let worst = mmio_round_trips(&mut b, 20);
    assert!(
        worst < Duration::from_millis(400),
        "B's slowest MMIO round trip: {worst:?}"
    );
    r.app.msix(FN_B, 1);
    assert_eq!(eb.wait_timeout(Duration::from_secs(5)).unwrap(), 1);
    let fa = r.agent.host().open(FN_A).unwrap().context();
    let t0 = Instant::now();
    while fa.irqs.full() == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no skipped write counted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // A's client reads its eventfd: its interrupts arrive again. (A write that was still
    // waiting for room when the client read completes then too, so the count may be 2.)
    assert_eq!(full.drain().unwrap(), u64::MAX - 1);
    r.app.msix(FN_A, 0);
    let n = full.wait_timeout(Duration::from_secs(5)).unwrap();
    assert!((1..=2).contains(&n), "{n}");
    r.assert_session_held();
}

/// A card's write to client memory shared without a descriptor waits for the client's
/// DMA_WRITE reply on the function's worker — and the MSI the card sends after it waits
/// behind it (PCIe ordering: nothing passes a posted write), so the guest never sees the
/// interrupt before the data. Function B is not held up meanwhile.
#[test]
fn agent_interrupt_waits_behind_a_write_to_client_memory() {
    let r = rig();
    let mut a = Raw::connect(&r.a);
    a.version();
    assert_eq!(a.dma_map(0x8000_0000, 0x10000, None).flags, REPLY);
    let ea = EventFd::new().unwrap();
    assert_eq!(a.set_irqs(2, 0, &[ea.as_raw_fd()]).flags, REPLY);
    a.region_read(0, 0, 4); // behind the MSI-X table write
    let mut b = Raw::connect(&r.b);
    b.version();

    r.app.dma_write(FN_A, 0x8000_0040, b"payload!");
    r.app.msix(FN_A, 0);
    // The client is asked to store the payload; it takes its time.
    let req = a.recv();
    assert_eq!(req.command, 12, "DMA_WRITE");
    assert_eq!(&req.body[16..24], b"payload!");
    assert_eq!(
        ea.wait_timeout(Duration::from_millis(200)).unwrap(),
        0,
        "the interrupt overtook the data"
    );
    let worst = mmio_round_trips(&mut b, 10);
    assert!(
        worst < Duration::from_millis(400),
        "B's slowest MMIO round trip: {worst:?}"
    );
    // Stored: now the interrupt comes.
    let mut rep = Vec::new();
    rep.extend_from_slice(&req.id.to_ne_bytes());
    rep.extend_from_slice(&12u16.to_ne_bytes());
    rep.extend_from_slice(&32u32.to_ne_bytes());
    rep.extend_from_slice(&REPLY.to_ne_bytes());
    rep.extend_from_slice(&0u32.to_ne_bytes());
    rep.extend_from_slice(&req.body[..16]);
    a.s.write_all(&rep).unwrap();
    assert_eq!(ea.wait_timeout(Duration::from_secs(5)).unwrap(), 1);
    let fa = r.agent.host().open(FN_A).unwrap().context();
    assert_eq!(fa.dma.stats().write_bytes.load(Ordering::Relaxed), 8);
    assert_eq!(fa.dma.stats().write_faults.load(Ordering::Relaxed), 0);
    r.assert_session_held();
}
