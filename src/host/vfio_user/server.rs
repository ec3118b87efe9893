//! The vfio-user protocol engine for one client connection, sans I/O (vfio-user.rst,
//! "Protocol Specification": VERSION, DMA_MAP/UNMAP, DEVICE_GET_INFO, GET_REGION_INFO,
//! GET_IRQ_INFO, SET_IRQS, REGION_READ/WRITE, DEVICE_RESET).
//!
//! [`Connection::handle`] takes one complete message and the file descriptors that came with
//! it and writes the reply into a caller-owned buffer (reused, so steady-state MMIO does not
//! allocate). It never panics on input: anything malformed gets an error reply with an errno,
//! and never reaches the device.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use super::irq::{info_flags, IrqIndex};
use super::{FunctionContext, VfioDevice, CONFIG_REGION, NUM_REGIONS};
use crate::host::dma::{Access, DmaMemory, DmaWindowError, MmapMemory};
use crate::pci::vfio_user::{
    self, Command, DeviceInfoRepr, DmaMapRepr, DmaUnmapRepr, IrqInfoRepr, IrqSetRepr,
    MessageHeader, MessageHeaderRepr, MessageType, RegionAccessRepr, RegionInfoRepr, WireError,
    HEADER_LEN,
};
use crate::ratelimit::LogLimiter;
use crate::{info_limited, warn_limited};

/// `VFIO_DEVICE_FLAGS_RESET`.
const DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// `VFIO_DEVICE_FLAGS_PCI`.
const DEVICE_FLAGS_PCI: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_READ` / `_WRITE`.
const REGION_READ: u32 = 1 << 0;
const REGION_WRITE: u32 = 1 << 1;
/// DMA_MAP flags: readable, writeable.
const DMA_READABLE: u32 = 1 << 0;
const DMA_WRITEABLE: u32 = 1 << 1;
/// DMA_UNMAP flags (`VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`, `VFIO_DMA_UNMAP_FLAG_ALL`).
const UNMAP_DIRTY_BITMAP: u32 = 1 << 0;
const UNMAP_ALL: u32 = 1 << 1;

/// Limits this server announces in its VERSION reply.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// File descriptors we accept in one message.
    pub max_msg_fds: u32,
    /// Largest REGION/DMA read or write.
    pub max_data_xfer_size: u32,
    /// Largest number of DMA windows.
    pub max_dma_maps: u32,
    /// Whether DEVICE_RESET is offered.
    pub resettable: bool,
    /// How long a DMA_READ/DMA_WRITE to the client (memory shared without a descriptor) waits
    /// for its reply. Then the card's access fails (a read gets a Completer Abort) and the
    /// client counts as unresponsive until it answers again.
    pub client_reply_timeout: Duration,
    /// How long a message to the client may wait for room in the socket. A client that stops
    /// reading for that long is disconnected (its DMA windows and eventfds are dropped).
    pub client_send_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_msg_fds: 16,
            max_data_xfer_size: 1 << 20,
            max_dma_maps: 65535,
            resettable: true,
            client_reply_timeout: Duration::from_millis(500),
            client_send_timeout: Duration::from_secs(5),
        }
    }
}

/// Limits the client announced (defaults from the spec when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCaps {
    /// Descriptors the client accepts per message.
    pub max_msg_fds: u32,
    /// Largest DMA_READ/WRITE the client accepts.
    pub max_data_xfer_size: u32,
}

impl Default for ClientCaps {
    fn default() -> Self {
        Self {
            max_msg_fds: 1,
            max_data_xfer_size: 1 << 20,
        }
    }
}

/// Counters of one connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnStats {
    /// Commands handled (successfully or not).
    pub commands: u64,
    /// Commands answered with an error.
    pub errors: u64,
    /// DMA_MAP commands accepted.
    pub dma_maps: u64,
    /// DMA_UNMAP commands accepted.
    pub dma_unmaps: u64,
}

/// Why a command failed; becomes the errno of the error reply.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("header says the message is {size} bytes, but {got} bytes arrived")]
    SizeMismatch { size: u32, got: usize },
    #[error("VERSION must come first")]
    VersionFirst,
    #[error("VERSION sent twice")]
    VersionTwice,
    #[error("client proposes major version {0}, this server speaks 0")]
    MajorVersion(u16),
    #[error("version data is not JSON: {0}")]
    VersionJson(#[source] serde_json::Error),
    #[error("version capability {0} is not a u32")]
    CapabilityNotU32(&'static str),
    #[error("no IRQ index {0}")]
    NoIrqIndex(u32),
    #[error("DMA_MAP with {0} descriptors")]
    DmaMapFds(usize),
    #[error("DMA_MAP flags {0:#x}")]
    DmaMapFlags(u32),
    #[error("DMA_UNMAP flags {0:#x}")]
    DmaUnmapFlags(u32),
    #[error("no region {0}")]
    NoRegion(u32),
    #[error("REGION_WRITE count {count} but {data} data bytes")]
    WriteCount { count: u32, data: usize },
    #[error("command {0:?} is not supported")]
    Unsupported(Command),
    #[error(transparent)]
    Dma(#[from] DmaWindowError),
    #[error(transparent)]
    Irq(#[from] super::irq::IrqError),
    #[error(transparent)]
    Device(#[from] super::VfioDeviceError),
    #[error("{0} exceeds the {1}-byte transfer limit")]
    TooBig(u32, u32),
}

impl Refusal {
    fn errno(&self) -> u32 {
        (match self {
            Self::Wire(_) | Self::Irq(_) => libc::EINVAL,
            Self::SizeMismatch { .. }
            | Self::VersionFirst
            | Self::VersionTwice
            | Self::MajorVersion(_)
            | Self::VersionJson(_)
            | Self::CapabilityNotU32(_)
            | Self::NoIrqIndex(_)
            | Self::DmaMapFds(_)
            | Self::DmaMapFlags(_)
            | Self::DmaUnmapFlags(_)
            | Self::NoRegion(_)
            | Self::WriteCount { .. } => libc::EINVAL,
            Self::Unsupported(_) => libc::ENOTSUP,
            Self::Dma(DmaWindowError::Overlap { .. }) => libc::EEXIST,
            Self::Dma(DmaWindowError::TooMany(_)) => libc::ENOSPC,
            Self::Dma(_) => libc::EINVAL,
            Self::Device(e) => return e.errno(),
            Self::TooBig(..) => libc::E2BIG,
        }) as u32
    }
}

/// Makes the memory behind a DMA window the client shared without a file descriptor
/// (reached with DMA_READ/DMA_WRITE): `(iova, len) -> memory`.
pub type RemoteMemoryFactory = Box<dyn Fn(u64, u64) -> Arc<dyn DmaMemory> + Send>;

/// The protocol engine for one client of one function.
pub struct Connection<D: VfioDevice> {
    device: D,
    ctx: FunctionContext,
    cfg: ServerConfig,
    client: Option<ClientCaps>,
    remote_memory: Option<RemoteMemoryFactory>,
    stats: ConnStats,
    /// Refusals and malformed messages: a hostile client can send them at line rate.
    refusals: LogLimiter,
    /// Connects, negotiations and disconnects: a client can repeat them at will.
    sessions: LogLimiter,
}

impl<D: VfioDevice> std::fmt::Debug for Connection<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("client", &self.client)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

type Result<T> = std::result::Result<T, Refusal>;

impl<D: VfioDevice> Connection<D> {
    /// An engine serving `device`, whose interrupts and DMA windows are `ctx`.
    pub fn new(device: D, ctx: FunctionContext, cfg: ServerConfig) -> Self {
        Self {
            device,
            ctx,
            cfg,
            client: None,
            remote_memory: None,
            stats: ConnStats::default(),
            refusals: LogLimiter::warnings(),
            sessions: LogLimiter::warnings(),
        }
    }

    /// How fd-less DMA windows are reached (set by the socket layer).
    pub fn set_remote_memory(&mut self, f: Option<RemoteMemoryFactory>) {
        self.remote_memory = f;
    }

    /// The device.
    pub fn device(&mut self) -> &mut D {
        &mut self.device
    }

    /// The shared interrupt and DMA state.
    pub fn context(&self) -> &FunctionContext {
        &self.ctx
    }

    /// The limits this server announced.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// The client's limits, once VERSION was negotiated.
    pub fn client_caps(&self) -> Option<ClientCaps> {
        self.client
    }

    /// Counters.
    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// Largest message a well-behaved client sends (REGION_WRITE of the transfer limit).
    pub fn max_message(&self) -> usize {
        HEADER_LEN + RegionAccessRepr::LEN + self.cfg.max_data_xfer_size as usize
    }

    /// The client went away: forget the negotiation, drop its eventfds and DMA windows.
    pub fn disconnected(&mut self) {
        self.client = None;
        self.remote_memory = None;
        let n = self.ctx.dma.unmap_all();
        self.ctx.irqs.reset();
        info_limited!(self.sessions, function = %self.ctx.dma.name(), dma_windows = n,
            "vfio-user client disconnected");
    }

    /// Handle one whole message (`msg` is exactly `size` bytes as the header says) with the
    /// descriptors that came with it. Writes the reply into `out` and returns `true`, or
    /// returns `false` when no reply is due (no_reply commands, stray replies).
    pub fn handle(&mut self, msg: &[u8], fds: Vec<OwnedFd>, out: &mut Vec<u8>) -> bool {
        out.clear();
        let hdr = match MessageHeader::new_checked(msg).and_then(|h| MessageHeaderRepr::parse(&h)) {
            Ok(h) => h,
            Err(e) => {
                self.stats.errors += 1;
                warn_limited!(self.refusals, function = %self.ctx.dma.name(), error = %e,
                    "malformed vfio-user header");
                // Echo what can be read of the ID and command so the client can match it.
                let (id, cmd) = vfio_user::salvage_id_command(msg);
                let r = MessageHeaderRepr {
                    id,
                    command: Command::from(cmd),
                    size: HEADER_LEN as u32,
                    kind: MessageType::Reply,
                    no_reply: false,
                    error: Some(libc::EINVAL as u32),
                };
                out.resize(HEADER_LEN, 0);
                r.emit_bytes(out);
                return true;
            }
        };
        if hdr.kind == MessageType::Reply {
            tracing::debug!(%hdr, "stray reply ignored");
            return false;
        }
        self.stats.commands += 1;
        let body = msg.get(HEADER_LEN..hdr.size as usize).unwrap_or(&[]);
        if body.len() != hdr.body_len() {
            return self.refuse(
                &hdr,
                Refusal::SizeMismatch {
                    size: hdr.size,
                    got: msg.len(),
                },
                out,
            );
        }
        // Room for the reply header; commands append their payload after it.
        out.resize(HEADER_LEN, 0);
        match self.dispatch(&hdr, body, fds, out) {
            Ok(()) => {
                if hdr.no_reply {
                    out.clear();
                    return false;
                }
                let size = out.len() as u32;
                hdr.reply(size).emit_bytes(out);
                true
            }
            Err(e) => self.refuse(&hdr, e, out),
        }
    }

    fn refuse(&mut self, hdr: &MessageHeaderRepr, e: Refusal, out: &mut Vec<u8>) -> bool {
        self.stats.errors += 1;
        warn_limited!(self.refusals, function = %self.ctx.dma.name(), %hdr, error = %e,
            "vfio-user command refused");
        out.clear();
        if hdr.no_reply {
            return false;
        }
        let mut r = hdr.reply(HEADER_LEN as u32);
        r.error = Some(e.errno());
        out.resize(HEADER_LEN, 0);
        r.emit_bytes(out);
        true
    }

    fn dispatch(
        &mut self,
        hdr: &MessageHeaderRepr,
        body: &[u8],
        fds: Vec<OwnedFd>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        if hdr.command == Command::Version {
            return self.version(body, out);
        }
        if self.client.is_none() {
            return Err(Refusal::VersionFirst);
        }
        match hdr.command {
            Command::DmaMap => self.dma_map(body, fds),
            Command::DmaUnmap => self.dma_unmap(body, out),
            Command::DeviceGetInfo => {
                let _req = DeviceInfoRepr::parse(body)?;
                let flags = DEVICE_FLAGS_PCI
                    | if self.cfg.resettable {
                        DEVICE_FLAGS_RESET
                    } else {
                        0
                    };
                emit_body(out, DeviceInfoRepr::LEN, |b| {
                    DeviceInfoRepr {
                        argsz: DeviceInfoRepr::LEN as u32,
                        flags,
                        num_regions: NUM_REGIONS,
                        num_irqs: IrqIndex::COUNT as u32,
                    }
                    .emit(b)
                });
                Ok(())
            }
            Command::DeviceGetRegionInfo => self.region_info(body, out),
            Command::DeviceGetIrqInfo => {
                let req = IrqInfoRepr::parse(body)?;
                let idx = IrqIndex::from_u32(req.index).ok_or(Refusal::NoIrqIndex(req.index))?;
                let flags = info_flags::EVENTFD
                    | match idx {
                        IrqIndex::Intx => info_flags::MASKABLE | info_flags::AUTOMASKED,
                        IrqIndex::Msi => info_flags::NORESIZE,
                        _ => info_flags::MASKABLE,
                    };
                let count = self.ctx.irqs.count(idx);
                emit_body(out, IrqInfoRepr::LEN, |b| {
                    IrqInfoRepr {
                        argsz: IrqInfoRepr::LEN as u32,
                        flags,
                        index: req.index,
                        count,
                    }
                    .emit(b)
                });
                Ok(())
            }
            Command::DeviceSetIrqs => {
                let req = IrqSetRepr::parse(body)?;
                let data = &body[IrqSetRepr::LEN..];
                self.ctx
                    .irqs
                    .set_irqs(req.flags, req.index, req.start, req.count, data, fds)?;
                if let Some(idx) = IrqIndex::from_u32(req.index) {
                    self.device.irqs_changed(idx);
                }
                Ok(())
            }
            Command::RegionRead => self.region_read(body, out),
            Command::RegionWrite => self.region_write(body, out),
            Command::DeviceReset => {
                if !self.cfg.resettable {
                    return Err(Refusal::Unsupported(Command::DeviceReset));
                }
                self.device.reset()?;
                Ok(())
            }
            other => Err(Refusal::Unsupported(other)),
        }
    }

    fn version(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.client.is_some() {
            return Err(Refusal::VersionTwice);
        }
        let (v, text) = vfio_user::parse_version(body)?;
        if v.major != 0 {
            return Err(Refusal::MajorVersion(v.major));
        }
        let json: serde_json::Value = if text.trim().is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(text).map_err(Refusal::VersionJson)?
        };
        let caps = json.get("capabilities");
        let cap = |name: &str| caps.and_then(|c| c.get(name));
        let num = |name: &'static str| -> Result<Option<u32>> {
            match cap(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or(Refusal::CapabilityNotU32(name)),
            }
        };
        let mut client = ClientCaps::default();
        if let Some(n) = num("max_msg_fds")? {
            client.max_msg_fds = n;
        }
        if let Some(n) = num("max_data_xfer_size")? {
            client.max_data_xfer_size = n.max(1);
        }
        // Our reply lists only capabilities the client proposed (the spec's subset rule).
        let mut ours = serde_json::Map::new();
        if cap("max_msg_fds").is_some() {
            ours.insert("max_msg_fds".into(), self.cfg.max_msg_fds.into());
        }
        if cap("max_data_xfer_size").is_some() {
            ours.insert(
                "max_data_xfer_size".into(),
                self.cfg.max_data_xfer_size.into(),
            );
        }
        if cap("max_dma_maps").is_some() {
            let theirs = num("max_dma_maps")?.unwrap_or(u32::MAX);
            ours.insert(
                "max_dma_maps".into(),
                self.cfg.max_dma_maps.min(theirs).into(),
            );
        }
        if let Some(p) = num("pgsizes")? {
            let page = 4096u32;
            ours.insert(
                "pgsizes".into(),
                (if p & page != 0 { page } else { p }).into(),
            );
        }
        let text = serde_json::json!({ "capabilities": ours }).to_string();
        let start = out.len();
        out.resize(start + vfio_user::VersionRepr::LEN, 0);
        vfio_user::VersionRepr { major: 0, minor: 0 }.emit(&mut out[start..]);
        out.extend_from_slice(text.as_bytes());
        out.push(0);
        info_limited!(
            self.sessions,
            function = %self.ctx.dma.name(),
            client_minor = v.minor,
            ?client,
            "vfio-user version negotiated (0.0)"
        );
        self.client = Some(client);
        Ok(())
    }

    fn dma_map(&mut self, body: &[u8], mut fds: Vec<OwnedFd>) -> Result<()> {
        let req = DmaMapRepr::parse(body)?;
        if fds.len() > 1 {
            return Err(Refusal::DmaMapFds(fds.len()));
        }
        if req.flags & !(DMA_READABLE | DMA_WRITEABLE) != 0 {
            return Err(Refusal::DmaMapFlags(req.flags));
        }
        let access = Access {
            read: req.flags & DMA_READABLE != 0,
            write: req.flags & DMA_WRITEABLE != 0,
        };
        if req.size == 0 || req.address.checked_add(req.size).is_none() {
            return Err(DmaWindowError::BadRange {
                iova: req.address,
                len: req.size,
            }
            .into());
        }
        let mem: Arc<dyn DmaMemory> = match fds.pop() {
            Some(fd) => Arc::new(MmapMemory::new(fd, req.offset, req.size, access)?),
            None => match &self.remote_memory {
                Some(make) => make(req.address, req.size),
                None => return Err(Refusal::Unsupported(Command::DmaRead)),
            },
        };
        self.ctx.dma.map(req.address, access, mem)?;
        self.stats.dma_maps += 1;
        Ok(())
    }

    fn dma_unmap(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let req = DmaUnmapRepr::parse(body)?;
        if req.flags & UNMAP_DIRTY_BITMAP != 0 || req.flags & !(UNMAP_DIRTY_BITMAP | UNMAP_ALL) != 0
        {
            return Err(Refusal::DmaUnmapFlags(req.flags));
        }
        if req.flags & UNMAP_ALL != 0 {
            self.ctx.dma.unmap_all();
        } else {
            self.ctx.dma.unmap(req.address, req.size)?;
        }
        self.stats.dma_unmaps += 1;
        emit_body(out, DmaUnmapRepr::LEN, |b| {
            DmaUnmapRepr {
                argsz: DmaUnmapRepr::LEN as u32,
                ..req
            }
            .emit(b)
        });
        Ok(())
    }

    fn region_info(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let req = RegionInfoRepr::parse(body)?;
        if req.index >= NUM_REGIONS {
            return Err(Refusal::NoRegion(req.index));
        }
        let d = self.device.region(req.index);
        let mut flags = 0;
        if d.size > 0 && d.readable {
            flags |= REGION_READ;
        }
        if d.size > 0 && d.writable {
            flags |= REGION_WRITE;
        }
        emit_body(out, RegionInfoRepr::LEN, |b| {
            RegionInfoRepr {
                argsz: RegionInfoRepr::LEN as u32,
                flags,
                index: req.index,
                cap_offset: 0,
                size: d.size,
                offset: 0,
            }
            .emit(b)
        });
        Ok(())
    }

    fn check_access(&mut self, a: &RegionAccessRepr, write: bool) -> Result<()> {
        if a.count > self.cfg.max_data_xfer_size {
            return Err(Refusal::TooBig(a.count, self.cfg.max_data_xfer_size));
        }
        let bad = || super::VfioDeviceError::BadAccess {
            region: a.region,
            offset: a.offset,
            len: a.count as usize,
        };
        if a.region >= NUM_REGIONS {
            return Err(bad().into());
        }
        let d = self.device.region(a.region);
        let end = a.offset.checked_add(a.count as u64).ok_or_else(bad)?;
        let allowed = if write { d.writable } else { d.readable };
        if end > d.size || !allowed || a.count == 0 {
            return Err(bad().into());
        }
        if a.region == CONFIG_REGION && end > 4096 {
            return Err(bad().into());
        }
        Ok(())
    }

    fn region_read(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let req = RegionAccessRepr::parse(body)?;
        self.check_access(&req, false)?;
        let start = out.len();
        out.resize(start + RegionAccessRepr::LEN + req.count as usize, 0);
        req.emit(&mut out[start..]);
        let data = &mut out[start + RegionAccessRepr::LEN..];
        self.device.region_read(req.region, req.offset, data)?;
        Ok(())
    }

    fn region_write(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let req = RegionAccessRepr::parse(body)?;
        let data = &body[RegionAccessRepr::LEN..];
        if data.len() != req.count as usize {
            return Err(Refusal::WriteCount {
                count: req.count,
                data: data.len(),
            });
        }
        self.check_access(&req, true)?;
        self.device.region_write(req.region, req.offset, data)?;
        emit_body(out, RegionAccessRepr::LEN, |b| req.emit(b));
        Ok(())
    }
}

fn emit_body(out: &mut Vec<u8>, len: usize, f: impl FnOnce(&mut [u8])) {
    let start = out.len();
    out.resize(start + len, 0);
    f(&mut out[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::vfio_user::memdev::MemDevice;
    use proptest::prelude::*;

    fn engine() -> Connection<MemDevice> {
        let ctx = FunctionContext::new("t", MemDevice::irq_counts());
        let dev = MemDevice::new(0x1234, 0x5678, ctx.clone());
        Connection::new(dev, ctx, ServerConfig::default())
    }

    fn message(cmd: u16, body: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        MessageHeaderRepr {
            id: 9,
            command: Command::from(cmd),
            size: (HEADER_LEN + body.len()) as u32,
            kind: MessageType::Command,
            no_reply: false,
            error: None,
        }
        .emit_bytes(&mut m);
        m.extend_from_slice(body);
        m
    }

    fn negotiated() -> Connection<MemDevice> {
        let mut c = engine();
        let mut out = Vec::new();
        assert!(c.handle(&message(1, b"\0\0\0\0{}\0"), vec![], &mut out));
        assert!(
            MessageHeaderRepr::parse(&MessageHeader::new_unchecked(&out[..]))
                .unwrap()
                .error
                .is_none()
        );
        c
    }

    #[test]
    fn device_info_reports_a_resettable_pci_device() {
        let mut c = negotiated();
        let mut out = Vec::new();
        assert!(c.handle(&message(4, &[0; 16]), vec![], &mut out));
        let info = DeviceInfoRepr::parse(&out[HEADER_LEN..]).unwrap();
        assert_eq!(info.flags, DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET);
        assert_eq!((info.num_regions, info.num_irqs), (9, 5));
        assert_eq!(out.len(), HEADER_LEN + 16);
    }

    #[test]
    fn region_read_reply_carries_the_data() {
        let mut c = negotiated();
        let mut out = Vec::new();
        let mut body = [0u8; 16];
        RegionAccessRepr {
            offset: 0,
            region: CONFIG_REGION,
            count: 4,
        }
        .emit(&mut body);
        assert!(c.handle(&message(9, &body), vec![], &mut out));
        assert_eq!(&out[HEADER_LEN + 16..], &[0x34, 0x12, 0x78, 0x56]);
        assert_eq!(c.stats().errors, 0);
    }

    proptest! {
        /// Any sequence of (command, body) pairs: no panic, every reply well formed and sized.
        #[test]
        fn any_command_sequence_is_answered_sanely(
            cmds in proptest::collection::vec((0u16..20, proptest::collection::vec(any::<u8>(), 0..48)), 1..20)
        ) {
            let mut c = negotiated();
            let mut out = Vec::new();
            for (cmd, body) in cmds {
                if c.handle(&message(cmd, &body), vec![], &mut out) {
                    let h = MessageHeaderRepr::parse(&MessageHeader::new_checked(&out[..]).unwrap()).unwrap();
                    prop_assert_eq!(h.kind, MessageType::Reply);
                    prop_assert_eq!(h.size as usize, out.len());
                    prop_assert_eq!(h.id, 9);
                    if h.error.is_some() {
                        prop_assert_eq!(out.len(), HEADER_LEN);
                    }
                }
            }
        }
    }
}
