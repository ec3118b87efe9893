//! vfio-user message wire format (QEMU `docs/interop/vfio-user.rst`, "Header" and the
//! per-command request/reply tables), with the Linux VFIO PCI region and IRQ indices and flags
//! of `<linux/vfio.h>` that its bodies carry.
//!
//! Shared by both ends this crate implements: the host's vfio-user *server*
//! (`crate::host::vfio_user`, which re-exports this module as `wire`) and the appliance's
//! vfio-user *client* (`crate::endpoint::vfio_user_client`). It is self-contained (no I/O), so
//! it lives in the `pci` layer that both sides may import.
//!
//! smoltcp style: [`MessageHeader`] is a zero-copy view over the first 16 bytes of a message with one
//! accessor per field (offsets in [`field`]); [`MessageHeaderRepr`] is the plain value with
//! `parse`/`emit`. Each command body is written down once, as the spec's table: a `#[repr(C)]`
//! zerocopy struct (`DmaMapWire`, `RegionInfoWire`, …) whose field offsets and size are checked
//! against the spec's offsets at compile time, and whose `view` is the checked zero-copy view of
//! a message body; beside it a plain `Repr` (`DmaMapRepr`, …) with `parse(&[u8])` and
//! `emit(&mut [u8])`. Every field is in host byte order, as the specification says. Nothing
//! here panics on input: short or inconsistent bytes are a [`WireError`].
//!
//! | command | body (request / reply) |
//! | --- | --- |
//! | `VFIO_USER_VERSION` (1) | [`VersionWire`] + JSON, both ways |
//! | `VFIO_USER_DMA_MAP` (2) | [`DmaMapWire`] / empty |
//! | `VFIO_USER_DMA_UNMAP` (3) | [`DmaUnmapWire`] / the same |
//! | `VFIO_USER_DEVICE_GET_INFO` (4) | [`DeviceInfoWire`] both ways |
//! | `VFIO_USER_DEVICE_GET_REGION_INFO` (5) | [`RegionInfoWire`] both ways |
//! | `VFIO_USER_DEVICE_GET_REGION_IO_FDS` (6) | [`RegionIoFdsWire`] (+ sub-regions in the reply) |
//! | `VFIO_USER_DEVICE_GET_IRQ_INFO` (7) | [`IrqInfoWire`] both ways |
//! | `VFIO_USER_DEVICE_SET_IRQS` (8) | [`IrqSetWire`] + optional bools / empty |
//! | `VFIO_USER_REGION_READ` (9) | [`RegionAccessWire`] / the same + data |
//! | `VFIO_USER_REGION_WRITE` (10) | [`RegionAccessWire`] + data / the same |
//! | `VFIO_USER_DMA_READ` (11) | [`DmaAccessWire`] / the same + data |
//! | `VFIO_USER_DMA_WRITE` (12) | [`DmaAccessWire`] + data / the same |
//! | `VFIO_USER_DEVICE_RESET` (13) | empty both ways |

use std::fmt;
use std::ops::Range;

use zerocopy::byteorder::native_endian::{U16, U32, U64};

/// Length of the common message header.
pub const HEADER_LEN: usize = 16;

/// Byte offsets of the message header (vfio-user.rst "Header").
pub mod field {
    /// A byte range inside the header.
    pub type Field = core::ops::Range<usize>;

    /// Message ID.
    pub const ID: Field = 0..2;
    /// Command.
    pub const COMMAND: Field = 2..4;
    /// Message size, header included.
    pub const SIZE: Field = 4..8;
    /// Flags: type (bits 0-3), no_reply (4), error (5).
    pub const FLAGS: Field = 8..12;
    /// Error: an errno in error replies.
    pub const ERROR: Field = 12..16;
}

/// Flag bits of the header (`Flags` field).
pub mod flags {
    /// Mask of the message type (bits 0-3).
    pub const TYPE_MASK: u32 = 0xf;
    /// Type value of a command message.
    pub const TYPE_COMMAND: u32 = 0;
    /// Type value of a reply message.
    pub const TYPE_REPLY: u32 = 1;
    /// The sender does not want a reply.
    pub const NO_REPLY: u32 = 1 << 4;
    /// The reply reports an error; the `Error` field holds an errno.
    pub const ERROR: u32 = 1 << 5;
}

/// Why bytes are not a valid vfio-user message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the structure needs.
    #[error("{what} needs {need} bytes, message has {got}")]
    Truncated {
        /// The structure being parsed.
        what: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Bytes available.
        got: usize,
    },
    /// The header's message size is below the header length.
    #[error("message size {0} is smaller than the 16-byte header")]
    SizeTooSmall(u32),
    /// The message type bits are neither command nor reply.
    #[error("unknown message type {0:#x} in flags")]
    BadType(u32),
    /// The version data is not NUL-terminated UTF-8.
    #[error("version data is not NUL-terminated UTF-8")]
    BadVersionData,
}

/// Command numbers (table "Commands").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `VFIO_USER_VERSION`
    Version,
    /// `VFIO_USER_DMA_MAP`
    DmaMap,
    /// `VFIO_USER_DMA_UNMAP`
    DmaUnmap,
    /// `VFIO_USER_DEVICE_GET_INFO`
    DeviceGetInfo,
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`
    DeviceGetRegionInfo,
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`
    DeviceGetRegionIoFds,
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`
    DeviceGetIrqInfo,
    /// `VFIO_USER_DEVICE_SET_IRQS`
    DeviceSetIrqs,
    /// `VFIO_USER_REGION_READ`
    RegionRead,
    /// `VFIO_USER_REGION_WRITE`
    RegionWrite,
    /// `VFIO_USER_DMA_READ` (server to client)
    DmaRead,
    /// `VFIO_USER_DMA_WRITE` (server to client)
    DmaWrite,
    /// `VFIO_USER_DEVICE_RESET`
    DeviceReset,
    /// Any other number (dirty pages, write-multi, features, migration…).
    Other(u16),
}

impl From<u16> for Command {
    fn from(v: u16) -> Self {
        match v {
            1 => Self::Version,
            2 => Self::DmaMap,
            3 => Self::DmaUnmap,
            4 => Self::DeviceGetInfo,
            5 => Self::DeviceGetRegionInfo,
            6 => Self::DeviceGetRegionIoFds,
            7 => Self::DeviceGetIrqInfo,
            8 => Self::DeviceSetIrqs,
            9 => Self::RegionRead,
            10 => Self::RegionWrite,
            11 => Self::DmaRead,
            12 => Self::DmaWrite,
            13 => Self::DeviceReset,
            other => Self::Other(other),
        }
    }
}

impl From<Command> for u16 {
    fn from(c: Command) -> u16 {
        match c {
            Command::Version => 1,
            Command::DmaMap => 2,
            Command::DmaUnmap => 3,
            Command::DeviceGetInfo => 4,
            Command::DeviceGetRegionInfo => 5,
            Command::DeviceGetRegionIoFds => 6,
            Command::DeviceGetIrqInfo => 7,
            Command::DeviceSetIrqs => 8,
            Command::RegionRead => 9,
            Command::RegionWrite => 10,
            Command::DmaRead => 11,
            Command::DmaWrite => 12,
            Command::DeviceReset => 13,
            Command::Other(v) => v,
        }
    }
}

fn get_u16(b: &[u8], r: Range<usize>) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[r]);
    u16::from_ne_bytes(a)
}
fn get_u32(b: &[u8], r: Range<usize>) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[r]);
    u32::from_ne_bytes(a)
}

fn check(what: &'static str, b: &[u8], need: usize) -> Result<(), WireError> {
    if b.len() < need {
        Err(WireError::Truncated {
            what,
            need,
            got: b.len(),
        })
    } else {
        Ok(())
    }
}

/// Zero-copy view of the 16-byte message header.
#[derive(Debug, Clone, Copy)]
pub struct MessageHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> MessageHeader<T> {
    /// Wrap a buffer without checking it (accessors may panic on a short buffer).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wrap a buffer after checking it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check("header", buffer.as_ref(), HEADER_LEN)?;
        Ok(Self { buffer })
    }

    /// Message ID, echoed in the reply.
    pub fn id(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ID)
    }
    /// Command number.
    pub fn command(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::COMMAND)
    }
    /// Size of the whole message including this header.
    pub fn size(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::SIZE)
    }
    /// Flags word.
    pub fn flags(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::FLAGS)
    }
    /// Error field (an errno in error replies).
    pub fn error(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::ERROR)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> MessageHeader<T> {
    fn put(&mut self, r: Range<usize>, bytes: &[u8]) {
        self.buffer.as_mut()[r].copy_from_slice(bytes);
    }
    /// Set the message ID.
    pub fn set_id(&mut self, v: u16) {
        self.put(field::ID, &v.to_ne_bytes());
    }
    /// Set the command number.
    pub fn set_command(&mut self, v: u16) {
        self.put(field::COMMAND, &v.to_ne_bytes());
    }
    /// Set the message size.
    pub fn set_size(&mut self, v: u32) {
        self.put(field::SIZE, &v.to_ne_bytes());
    }
    /// Set the flags word.
    pub fn set_flags(&mut self, v: u32) {
        self.put(field::FLAGS, &v.to_ne_bytes());
    }
    /// Set the error field.
    pub fn set_error(&mut self, v: u32) {
        self.put(field::ERROR, &v.to_ne_bytes());
    }
}

/// The ID and command of a message whose header is too short or too malformed to parse, so
/// that an error reply can still name them (both zero if the four bytes are not there).
pub fn salvage_id_command(msg: &[u8]) -> (u16, u16) {
    if msg.len() < field::COMMAND.end {
        return (0, 0);
    }
    (get_u16(msg, field::ID), get_u16(msg, field::COMMAND))
}

/// Whether a message is a command or a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// A request that expects a reply unless `no_reply` is set.
    Command,
    /// The reply to an earlier command with the same ID.
    Reply,
}

/// The header as a plain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeaderRepr {
    /// Message ID.
    pub id: u16,
    /// Command.
    pub command: Command,
    /// Whole message size, header included.
    pub size: u32,
    /// Command or reply.
    pub kind: MessageType,
    /// Command that wants no reply.
    pub no_reply: bool,
    /// `Some(errno)` when the error flag is set.
    pub error: Option<u32>,
}

impl MessageHeaderRepr {
    /// Parse a header view.
    pub fn parse<T: AsRef<[u8]>>(h: &MessageHeader<T>) -> Result<Self, WireError> {
        let size = h.size();
        if (size as usize) < HEADER_LEN {
            return Err(WireError::SizeTooSmall(size));
        }
        let f = h.flags();
        let kind = match f & flags::TYPE_MASK {
            flags::TYPE_COMMAND => MessageType::Command,
            flags::TYPE_REPLY => MessageType::Reply,
            other => return Err(WireError::BadType(other)),
        };
        Ok(Self {
            id: h.id(),
            command: Command::from(h.command()),
            size,
            kind,
            no_reply: f & flags::NO_REPLY != 0,
            error: (f & flags::ERROR != 0).then(|| h.error()),
        })
    }

    /// A reply header to `self` (same ID and command) for a message of `size` bytes.
    pub fn reply(&self, size: u32) -> Self {
        Self {
            id: self.id,
            command: self.command,
            size,
            kind: MessageType::Reply,
            no_reply: false,
            error: None,
        }
    }

    /// Bytes after the header.
    pub fn body_len(&self) -> usize {
        (self.size as usize).saturating_sub(HEADER_LEN)
    }

    /// Write into a header view.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut MessageHeader<T>) {
        h.set_id(self.id);
        h.set_command(self.command.into());
        h.set_size(self.size);
        let mut f = match self.kind {
            MessageType::Command => flags::TYPE_COMMAND,
            MessageType::Reply => flags::TYPE_REPLY,
        };
        if self.no_reply {
            f |= flags::NO_REPLY;
        }
        if self.error.is_some() {
            f |= flags::ERROR;
        }
        h.set_flags(f);
        h.set_error(self.error.unwrap_or(0));
    }

    /// Emit into the first 16 bytes of `buf` (which must hold them).
    pub fn emit_bytes(&self, buf: &mut [u8]) {
        self.emit(&mut MessageHeader::new_unchecked(&mut buf[..HEADER_LEN]));
    }
}

impl fmt::Display for MessageHeaderRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vfio-user {:?} id={} {:?} size={}",
            self.kind, self.id, self.command, self.size
        )?;
        if self.no_reply {
            write!(f, " no_reply")?;
        }
        if let Some(e) = self.error {
            write!(f, " error={e}")?;
        }
        Ok(())
    }
}

/// Define one message body: the wire struct (its offsets checked against the spec's at compile
/// time, with a checked `view`) and the plain `Repr` with `LEN`, `parse` and `emit`.
macro_rules! body {
    (
        $(#[$m:meta])*
        $repr:ident / $wire:ident, $what:literal, $len:literal bytes {
            $( $(#[$fm:meta])* $f:ident : $t:ident @ $off:literal ),* $(,)?
        }
    ) => {
        #[doc = concat!("The ", $what, " body as it is on the wire (see [`", stringify!($repr), "`]).")]
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        pub struct $wire { $( $(#[$fm])* pub $f: body!(@wire $t) ),* }

        // The layout is the spec's table: every offset and the size, checked by the compiler.
        const _: () = {
            assert!(std::mem::size_of::<$wire>() == $len);
            $( assert!(std::mem::offset_of!($wire, $f) == $off); )*
        };

        impl $wire {
            /// Checked zero-copy view of the start of a message body.
            pub fn view(body: &[u8]) -> Result<&Self, WireError> {
                let got = body.len();
                Self::ref_from_prefix(body)
                    .map(|(v, _)| v)
                    .map_err(|_| WireError::Truncated { what: $what, need: $len, got })
            }
            /// Checked zero-copy mutable view of the start of a message body.
            pub fn view_mut(body: &mut [u8]) -> Result<&mut Self, WireError> {
                let got = body.len();
                Self::mut_from_prefix(body)
                    .map(|(v, _)| v)
                    .map_err(|_| WireError::Truncated { what: $what, need: $len, got })
            }
        }

        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $repr { $( $(#[$fm])* pub $f: $t ),* }

        impl $repr {
            /// Encoded length in bytes.
            pub const LEN: usize = $len;
            /// Parse from the start of a message body.
            pub fn parse(b: &[u8]) -> Result<Self, WireError> {
                Ok(Self::from_wire($wire::view(b)?))
            }
            /// The value of a wire view.
            pub fn from_wire(w: &$wire) -> Self {
                Self { $( $f: w.$f.get() ),* }
            }
            /// The wire form.
            pub fn to_wire(&self) -> $wire {
                $wire { $( $f: <body!(@wire $t)>::new(self.$f) ),* }
            }
            /// Emit into the start of `b` (which must hold [`Self::LEN`] bytes).
            pub fn emit(&self, b: &mut [u8]) {
                b[..Self::LEN].copy_from_slice(self.to_wire().as_bytes());
            }
        }
    };
    (@wire u16) => { U16 };
    (@wire u32) => { U32 };
    (@wire u64) => { U64 };
}

pub use bodies::*;

/// Region indices of a VFIO PCI device (`VFIO_PCI_*_REGION_INDEX`, `<linux/vfio.h>`).
pub mod region {
    /// `VFIO_PCI_BAR0_REGION_INDEX` .. `VFIO_PCI_BAR5_REGION_INDEX`.
    pub const BARS: core::ops::Range<u32> = 0..6;
    /// `VFIO_PCI_ROM_REGION_INDEX`.
    pub const ROM: u32 = 6;
    /// `VFIO_PCI_CONFIG_REGION_INDEX`.
    pub const CONFIG: u32 = 7;
    /// `VFIO_PCI_VGA_REGION_INDEX`.
    pub const VGA: u32 = 8;
    /// `VFIO_REGION_INFO_FLAG_READ`.
    pub const FLAG_READ: u32 = 1 << 0;
    /// `VFIO_REGION_INFO_FLAG_WRITE`.
    pub const FLAG_WRITE: u32 = 1 << 1;
    /// `VFIO_REGION_INFO_FLAG_MMAP`.
    pub const FLAG_MMAP: u32 = 1 << 2;
    /// `VFIO_REGION_INFO_FLAG_CAPS`.
    pub const FLAG_CAPS: u32 = 1 << 3;
}

/// IRQ indices of a VFIO PCI device (`VFIO_PCI_*_IRQ_INDEX`) and the flags of
/// `VFIO_USER_DEVICE_SET_IRQS` (`VFIO_IRQ_SET_*`, `<linux/vfio.h>`).
pub mod irq {
    /// `VFIO_PCI_INTX_IRQ_INDEX`.
    pub const INTX: u32 = 0;
    /// `VFIO_PCI_MSI_IRQ_INDEX`.
    pub const MSI: u32 = 1;
    /// `VFIO_PCI_MSIX_IRQ_INDEX`.
    pub const MSIX: u32 = 2;
    /// `VFIO_PCI_ERR_IRQ_INDEX`.
    pub const ERR: u32 = 3;
    /// `VFIO_PCI_REQ_IRQ_INDEX`.
    pub const REQ: u32 = 4;
    /// `VFIO_IRQ_INFO_EVENTFD`.
    pub const INFO_EVENTFD: u32 = 1 << 0;
    /// `VFIO_IRQ_SET_DATA_NONE`.
    pub const SET_DATA_NONE: u32 = 1 << 0;
    /// `VFIO_IRQ_SET_DATA_BOOL`.
    pub const SET_DATA_BOOL: u32 = 1 << 1;
    /// `VFIO_IRQ_SET_DATA_EVENTFD`.
    pub const SET_DATA_EVENTFD: u32 = 1 << 2;
    /// `VFIO_IRQ_SET_ACTION_MASK`.
    pub const SET_ACTION_MASK: u32 = 1 << 3;
    /// `VFIO_IRQ_SET_ACTION_UNMASK`.
    pub const SET_ACTION_UNMASK: u32 = 1 << 4;
    /// `VFIO_IRQ_SET_ACTION_TRIGGER`.
    pub const SET_ACTION_TRIGGER: u32 = 1 << 5;
}

/// The bodies, in a module of their own: zerocopy's `KnownLayout` derive adds helper types
/// without `Debug`.
#[allow(missing_debug_implementations)]
mod bodies {
    use super::{WireError, U16, U32, U64};
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

    body!(
        /// `VFIO_USER_VERSION` fixed part, request and reply; JSON version data follows.
        VersionRepr / VersionWire, "version", 4 bytes {
            /// Major version.
            major: u16 @ 0,
            /// Minor version.
            minor: u16 @ 2,
        }
    );
    body!(
        /// `VFIO_USER_DMA_MAP` request (the reply has no payload).
        DmaMapRepr / DmaMapWire, "dma map", 32 bytes {
            /// Size of this structure.
            argsz: u32 @ 0,
            /// Bit 0 readable, bit 1 writeable.
            flags: u32 @ 4,
            /// File offset of the region in the descriptor that came with the message.
            offset: u64 @ 8,
            /// Base DMA address.
            address: u64 @ 16,
            /// Size of the region.
            size: u64 @ 24,
        }
    );
    body!(
        /// `VFIO_USER_DMA_UNMAP` request and reply.
        DmaUnmapRepr / DmaUnmapWire, "dma unmap", 24 bytes {
            /// Largest reply payload (request); size of the reply payload (reply).
            argsz: u32 @ 0,
            /// `VFIO_DMA_UNMAP_FLAG_*`.
            flags: u32 @ 4,
            /// Base DMA address of the region.
            address: u64 @ 8,
            /// Size of the region.
            size: u64 @ 16,
        }
    );
    body!(
        /// `VFIO_USER_DEVICE_GET_INFO` request and reply.
        DeviceInfoRepr / DeviceInfoWire, "device info", 16 bytes {
            /// Largest (request) or required (reply) reply payload size.
            argsz: u32 @ 0,
            /// `VFIO_DEVICE_FLAGS_RESET` (bit 0), `VFIO_DEVICE_FLAGS_PCI` (bit 1).
            flags: u32 @ 4,
            /// Regions the device exposes.
            num_regions: u32 @ 8,
            /// Interrupt types the device supports.
            num_irqs: u32 @ 12,
        }
    );
    body!(
        /// `VFIO_USER_DEVICE_GET_REGION_INFO` request and reply (`struct vfio_region_info`).
        RegionInfoRepr / RegionInfoWire, "region info", 32 bytes {
            /// Largest (request) or required (reply) reply payload size.
            argsz: u32 @ 0,
            /// `VFIO_REGION_INFO_FLAG_*`: read, write, mmap, caps.
            flags: u32 @ 4,
            /// Region index.
            index: u32 @ 8,
            /// Offset of the first capability, from the start of this structure.
            cap_offset: u32 @ 12,
            /// Size of the region.
            size: u64 @ 16,
            /// mmap offset of a mappable region.
            offset: u64 @ 24,
        }
    );
    body!(
        /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS` request and the fixed part of its reply (the
        /// sub-region array follows in the reply). This server does not offer it.
        RegionIoFdsRepr / RegionIoFdsWire, "region io fds", 16 bytes {
            /// Largest (request) or required (reply) reply payload size.
            argsz: u32 @ 0,
            /// Must be zero.
            flags: u32 @ 4,
            /// Region index.
            index: u32 @ 8,
            /// Sub-regions in the reply.
            count: u32 @ 12,
        }
    );
    body!(
        /// `VFIO_USER_DEVICE_GET_IRQ_INFO` request and reply (`struct vfio_irq_info`).
        IrqInfoRepr / IrqInfoWire, "irq info", 16 bytes {
            /// Largest (request) or required (reply) reply payload size.
            argsz: u32 @ 0,
            /// `VFIO_IRQ_INFO_*`.
            flags: u32 @ 4,
            /// IRQ index.
            index: u32 @ 8,
            /// Vectors of this index.
            count: u32 @ 12,
        }
    );
    body!(
        /// `VFIO_USER_DEVICE_SET_IRQS` request (`struct vfio_irq_set`; optional bool data follows;
        /// the reply has no payload).
        IrqSetRepr / IrqSetWire, "set irqs", 20 bytes {
            /// Size of the request payload, data included.
            argsz: u32 @ 0,
            /// One `VFIO_IRQ_SET_DATA_*` and one `VFIO_IRQ_SET_ACTION_*` bit.
            flags: u32 @ 4,
            /// IRQ index.
            index: u32 @ 8,
            /// First vector.
            start: u32 @ 12,
            /// Vectors.
            count: u32 @ 16,
        }
    );
    body!(
        /// `VFIO_USER_REGION_READ`/`WRITE` request and reply (data follows where present).
        RegionAccessRepr / RegionAccessWire, "region access", 16 bytes {
            /// Offset into the region.
            offset: u64 @ 0,
            /// Region index.
            region: u32 @ 8,
            /// Bytes transferred.
            count: u32 @ 12,
        }
    );
    body!(
        /// `VFIO_USER_DMA_READ`/`WRITE` request and reply (data follows where present).
        DmaAccessRepr / DmaAccessWire, "dma access", 16 bytes {
            /// Client DMA address.
            address: u64 @ 0,
            /// Bytes transferred.
            count: u64 @ 8,
        }
    );
}

/// Split a `VFIO_USER_VERSION` body into its fixed part and its JSON text (without the NUL).
/// Empty version data is allowed (the spec makes it optional).
pub fn parse_version(body: &[u8]) -> Result<(VersionRepr, &str), WireError> {
    let v = VersionRepr::parse(body)?;
    let data = &body[VersionRepr::LEN..];
    if data.is_empty() {
        return Ok((v, ""));
    }
    let text = match data.iter().position(|&b| b == 0) {
        Some(nul) => &data[..nul],
        None => return Err(WireError::BadVersionData),
    };
    let text = std::str::from_utf8(text).map_err(|_| WireError::BadVersionData)?;
    Ok((v, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A REGION_READ command as the rust-vmm client sends it (little-endian host): id 7,
    /// command 9, size 32, flags 0, error 0, offset 0x10, region 7, count 4.
    static REGION_READ_BYTES: [u8; 32] = [
        0x07, 0x00, 0x09, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x04, 0x00,
        0x00, 0x00,
    ];

    #[test]
    #[cfg(target_endian = "little")]
    fn test_deconstruct() {
        let h = MessageHeader::new_checked(&REGION_READ_BYTES[..]).unwrap();
        assert_eq!(h.id(), 7);
        assert_eq!(h.command(), 9);
        assert_eq!(h.size(), 32);
        assert_eq!(h.flags(), 0);
        let body = RegionAccessRepr::parse(&REGION_READ_BYTES[HEADER_LEN..]).unwrap();
        assert_eq!(
            body,
            RegionAccessRepr {
                offset: 0x10,
                region: 7,
                count: 4
            }
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn test_construct() {
        let mut buf = [0u8; 32];
        MessageHeaderRepr {
            id: 7,
            command: Command::RegionRead,
            size: 32,
            kind: MessageType::Command,
            no_reply: false,
            error: None,
        }
        .emit_bytes(&mut buf);
        RegionAccessRepr {
            offset: 0x10,
            region: 7,
            count: 4,
        }
        .emit(&mut buf[HEADER_LEN..]);
        assert_eq!(buf, REGION_READ_BYTES);
    }

    #[test]
    fn salvage_reads_what_is_there() {
        assert_eq!(salvage_id_command(&REGION_READ_BYTES[..3]), (0, 0));
        assert_eq!(salvage_id_command(&REGION_READ_BYTES[..4]), (7, 9));
        assert_eq!(salvage_id_command(&[]), (0, 0));
    }

    #[test]
    fn error_reply_sets_flags() {
        let mut buf = [0u8; HEADER_LEN];
        let mut r =
            MessageHeaderRepr::parse(&MessageHeader::new_unchecked(&REGION_READ_BYTES[..16]))
                .unwrap();
        r = r.reply(16);
        r.error = Some(22);
        r.emit_bytes(&mut buf);
        let h = MessageHeader::new_unchecked(&buf[..]);
        assert_eq!(h.flags(), flags::TYPE_REPLY | flags::ERROR);
        assert_eq!(h.error(), 22);
        assert_eq!(h.size(), 16);
    }

    #[test]
    fn short_and_bad_headers_are_errors() {
        assert!(matches!(
            MessageHeader::new_checked(&[0u8; 15][..]),
            Err(WireError::Truncated {
                need: 16,
                got: 15,
                ..
            })
        ));
        let mut b = REGION_READ_BYTES;
        b[4..8].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(
            MessageHeaderRepr::parse(&MessageHeader::new_unchecked(&b[..])),
            Err(WireError::SizeTooSmall(8))
        );
        let mut b = REGION_READ_BYTES;
        b[8..12].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(
            MessageHeaderRepr::parse(&MessageHeader::new_unchecked(&b[..])),
            Err(WireError::BadType(3))
        );
    }

    #[test]
    fn version_data() {
        let mut body = vec![0u8, 0, 0, 0];
        body.extend_from_slice(b"{\"capabilities\":{}}\0");
        let (v, text) = parse_version(&body).unwrap();
        assert_eq!((v.major, v.minor), (0, 0));
        assert_eq!(text, "{\"capabilities\":{}}");
        assert_eq!(
            parse_version(&body[..body.len() - 1]),
            Err(WireError::BadVersionData)
        );
        assert_eq!(parse_version(&[0, 0, 1, 0]).unwrap().1, "");
    }

    /// Byte-exact checks of one body against a static capture of it (little-endian host):
    /// parse, the wire view, emit over stale bytes, and a one-byte-short body.
    macro_rules! exact {
        ($name:ident, $repr:ident, $wire:ident, $bytes:expr, $value:expr) => {
            #[test]
            #[cfg(target_endian = "little")]
            fn $name() {
                let bytes: &[u8] = &$bytes;
                let value: $repr = $value;
                assert_eq!(bytes.len(), $repr::LEN);
                assert_eq!($repr::parse(bytes), Ok(value));
                assert_eq!($repr::from_wire($wire::view(bytes).unwrap()), value);
                let mut out = vec![0xa5u8; $repr::LEN + 3];
                value.emit(&mut out);
                assert_eq!(&out[..$repr::LEN], bytes);
                assert_eq!(&out[$repr::LEN..], &[0xa5; 3]);
                let mut via_view = vec![0u8; $repr::LEN];
                *$wire::view_mut(&mut via_view).unwrap() = value.to_wire();
                assert_eq!(via_view, bytes);
                assert!(matches!(
                    $repr::parse(&bytes[..$repr::LEN - 1]),
                    Err(WireError::Truncated { need, got, .. })
                        if need == $repr::LEN && got == $repr::LEN - 1
                ));
            }
        };
    }

    exact!(
        version_bytes,
        VersionRepr,
        VersionWire,
        [0x01, 0x00, 0x02, 0x00],
        VersionRepr { major: 1, minor: 2 }
    );
    exact!(
        dma_map_bytes,
        DmaMapRepr,
        DmaMapWire,
        [
            0x20, 0, 0, 0, // argsz 32
            0x03, 0, 0, 0, // flags: readable | writeable
            0x00, 0x10, 0, 0, 0, 0, 0, 0, // offset 0x1000
            0, 0, 0, 0, 0x01, 0, 0, 0, // address 0x1_0000_0000
            0, 0, 0x01, 0, 0, 0, 0, 0, // size 0x10000
        ],
        DmaMapRepr {
            argsz: 32,
            flags: 3,
            offset: 0x1000,
            address: 0x1_0000_0000,
            size: 0x10000
        }
    );
    exact!(
        dma_unmap_bytes,
        DmaUnmapRepr,
        DmaUnmapWire,
        [
            0x18, 0, 0, 0, // argsz 24
            0x02, 0, 0, 0, // flags: VFIO_DMA_UNMAP_FLAG_ALL
            0, 0, 0, 0x80, 0, 0, 0, 0, // address 0x8000_0000
            0, 0x20, 0, 0, 0, 0, 0, 0, // size 0x2000
        ],
        DmaUnmapRepr {
            argsz: 24,
            flags: 2,
            address: 0x8000_0000,
            size: 0x2000
        }
    );
    exact!(
        device_info_bytes,
        DeviceInfoRepr,
        DeviceInfoWire,
        [0x10, 0, 0, 0, 0x03, 0, 0, 0, 0x09, 0, 0, 0, 0x05, 0, 0, 0,],
        DeviceInfoRepr {
            argsz: 16,
            flags: 3,
            num_regions: 9,
            num_irqs: 5
        }
    );
    exact!(
        region_info_bytes,
        RegionInfoRepr,
        RegionInfoWire,
        [
            0x20, 0, 0, 0, // argsz 32
            0x03, 0, 0, 0, // flags: read | write
            0x07, 0, 0, 0, // index 7 (config space)
            0x20, 0, 0, 0, // cap_offset 32
            0, 0x10, 0, 0, 0, 0, 0, 0, // size 0x1000
            0, 0, 0, 0, 0x10, 0, 0, 0, // offset 0x10_0000_0000
        ],
        RegionInfoRepr {
            argsz: 32,
            flags: 3,
            index: 7,
            cap_offset: 32,
            size: 0x1000,
            offset: 0x10_0000_0000
        }
    );
    exact!(
        region_io_fds_bytes,
        RegionIoFdsRepr,
        RegionIoFdsWire,
        [0x10, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0x01, 0, 0, 0,],
        RegionIoFdsRepr {
            argsz: 16,
            flags: 0,
            index: 2,
            count: 1
        }
    );
    exact!(
        irq_info_bytes,
        IrqInfoRepr,
        IrqInfoWire,
        [0x10, 0, 0, 0, 0x09, 0, 0, 0, 0x01, 0, 0, 0, 0x01, 0, 0, 0,],
        IrqInfoRepr {
            argsz: 16,
            flags: 9,
            index: 1,
            count: 1
        }
    );
    exact!(
        irq_set_bytes,
        IrqSetRepr,
        IrqSetWire,
        [
            0x14, 0, 0, 0, // argsz 20
            0x24, 0, 0, 0, // DATA_EVENTFD | ACTION_TRIGGER
            0x02, 0, 0, 0, // index 2 (MSI-X)
            0x01, 0, 0, 0, // start 1
            0x02, 0, 0, 0, // count 2
        ],
        IrqSetRepr {
            argsz: 20,
            flags: 0x24,
            index: 2,
            start: 1,
            count: 2
        }
    );
    exact!(
        region_access_bytes,
        RegionAccessRepr,
        RegionAccessWire,
        REGION_READ_BYTES[HEADER_LEN..],
        RegionAccessRepr {
            offset: 0x10,
            region: 7,
            count: 4
        }
    );
    exact!(
        dma_access_bytes,
        DmaAccessRepr,
        DmaAccessWire,
        [
            0x10, 0, 0, 0, 0x01, 0, 0, 0, // address 0x1_0000_0010
            0, 0x02, 0, 0, 0, 0, 0, 0, // count 0x200
        ],
        DmaAccessRepr {
            address: 0x1_0000_0010,
            count: 0x200
        }
    );

    /// Round trip of one body from arbitrary field values; each field must land at the offset
    /// of the spec's table (listed here a second time, independently of the definitions).
    macro_rules! roundtrip {
        ($name:ident, $repr:ident { $($f:ident : $t:ident @ $off:literal),* $(,)? }) => {
            proptest! {
                #[test]
                fn $name($($f: $t,)* tail in proptest::collection::vec(any::<u8>(), 0..8)) {
                    let r = $repr { $($f),* };
                    let mut buf = vec![0u8; $repr::LEN];
                    buf.extend_from_slice(&tail);
                    r.emit(&mut buf);
                    $( prop_assert_eq!(&buf[$off..$off + std::mem::size_of::<$t>()], &$f.to_ne_bytes()[..]); )*
                    prop_assert_eq!(&buf[$repr::LEN..], &tail[..]);
                    prop_assert_eq!($repr::parse(&buf), Ok(r));
                }
            }
        };
    }

    roundtrip!(version_roundtrip, VersionRepr { major: u16 @ 0, minor: u16 @ 2 });
    roundtrip!(dma_map_roundtrip, DmaMapRepr {
        argsz: u32 @ 0, flags: u32 @ 4, offset: u64 @ 8, address: u64 @ 16, size: u64 @ 24 });
    roundtrip!(dma_unmap_roundtrip, DmaUnmapRepr {
        argsz: u32 @ 0, flags: u32 @ 4, address: u64 @ 8, size: u64 @ 16 });
    roundtrip!(device_info_roundtrip, DeviceInfoRepr {
        argsz: u32 @ 0, flags: u32 @ 4, num_regions: u32 @ 8, num_irqs: u32 @ 12 });
    roundtrip!(region_info_roundtrip, RegionInfoRepr {
        argsz: u32 @ 0, flags: u32 @ 4, index: u32 @ 8, cap_offset: u32 @ 12, size: u64 @ 16,
        offset: u64 @ 24 });
    roundtrip!(region_io_fds_roundtrip, RegionIoFdsRepr {
        argsz: u32 @ 0, flags: u32 @ 4, index: u32 @ 8, count: u32 @ 12 });
    roundtrip!(irq_info_roundtrip, IrqInfoRepr {
        argsz: u32 @ 0, flags: u32 @ 4, index: u32 @ 8, count: u32 @ 12 });
    roundtrip!(irq_set_roundtrip, IrqSetRepr {
        argsz: u32 @ 0, flags: u32 @ 4, index: u32 @ 8, start: u32 @ 12, count: u32 @ 16 });
    roundtrip!(region_access_roundtrip, RegionAccessRepr {
        offset: u64 @ 0, region: u32 @ 8, count: u32 @ 12 });
    roundtrip!(dma_access_roundtrip, DmaAccessRepr { address: u64 @ 0, count: u64 @ 8 });

    proptest! {
        #[test]
        fn header_roundtrip(id: u16, cmd: u16, size in 16u32.., reply: bool, no_reply: bool, err: Option<u32>) {
            let r = MessageHeaderRepr {
                id, command: Command::from(cmd), size,
                kind: if reply { MessageType::Reply } else { MessageType::Command },
                no_reply, error: err,
            };
            let mut buf = [0u8; HEADER_LEN];
            r.emit_bytes(&mut buf);
            prop_assert_eq!(MessageHeaderRepr::parse(&MessageHeader::new_unchecked(&buf[..])).unwrap(), r);
        }

        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(h) = MessageHeader::new_checked(&bytes[..]) {
                let _ = MessageHeaderRepr::parse(&h);
            }
            let _ = parse_version(&bytes);
            // Each body parses exactly when it is long enough.
            prop_assert_eq!(VersionRepr::parse(&bytes).is_ok(), bytes.len() >= VersionRepr::LEN);
            prop_assert_eq!(DmaMapRepr::parse(&bytes).is_ok(), bytes.len() >= DmaMapRepr::LEN);
            prop_assert_eq!(DmaUnmapRepr::parse(&bytes).is_ok(), bytes.len() >= DmaUnmapRepr::LEN);
            prop_assert_eq!(DeviceInfoRepr::parse(&bytes).is_ok(), bytes.len() >= DeviceInfoRepr::LEN);
            prop_assert_eq!(RegionInfoRepr::parse(&bytes).is_ok(), bytes.len() >= RegionInfoRepr::LEN);
            prop_assert_eq!(RegionIoFdsRepr::parse(&bytes).is_ok(), bytes.len() >= RegionIoFdsRepr::LEN);
            prop_assert_eq!(IrqInfoRepr::parse(&bytes).is_ok(), bytes.len() >= IrqInfoRepr::LEN);
            prop_assert_eq!(IrqSetRepr::parse(&bytes).is_ok(), bytes.len() >= IrqSetRepr::LEN);
            prop_assert_eq!(RegionAccessRepr::parse(&bytes).is_ok(), bytes.len() >= RegionAccessRepr::LEN);
            prop_assert_eq!(DmaAccessRepr::parse(&bytes).is_ok(), bytes.len() >= DmaAccessRepr::LEN);
        }
    }
}
