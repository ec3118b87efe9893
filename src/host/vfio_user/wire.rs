//! vfio-user message wire format (QEMU `docs/interop/vfio-user.rst`, "Header" and the
//! per-command request/reply tables).
//!
//! smoltcp style: [`Header`] is a zero-copy view over the first 16 bytes of a message with one
//! accessor per field; [`HeaderRepr`] is the plain value with `parse`/`emit`. Each command body
//! that the server parses or emits has a small `Repr` with `parse(&[u8])` and `emit(&mut [u8])`.
//! Every field is in host byte order, as the specification says. Nothing here panics on input:
//! short or inconsistent bytes are a [`WireError`].

use std::fmt;
use std::ops::Range;

/// Length of the common message header.
pub const HEADER_LEN: usize = 16;

mod field {
    use std::ops::Range;
    pub const ID: Range<usize> = 0..2;
    pub const COMMAND: Range<usize> = 2..4;
    pub const SIZE: Range<usize> = 4..8;
    pub const FLAGS: Range<usize> = 8..12;
    pub const ERROR: Range<usize> = 12..16;
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
fn get_u64(b: &[u8], r: Range<usize>) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[r]);
    u64::from_ne_bytes(a)
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
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
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

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
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
pub struct HeaderRepr {
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

impl HeaderRepr {
    /// Parse a header view.
    pub fn parse<T: AsRef<[u8]>>(h: &Header<T>) -> Result<Self, WireError> {
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
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Header<T>) {
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
        self.emit(&mut Header::new_unchecked(&mut buf[..HEADER_LEN]));
    }
}

impl fmt::Display for HeaderRepr {
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

/// Define a fixed-size body struct with `LEN`, `parse` and `emit`.
macro_rules! body {
    ($(#[$m:meta])* $name:ident, $what:literal, $len:expr, { $($(#[$fm:meta])* $f:ident : $t:ident = $off:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        impl $name {
            /// Encoded length in bytes.
            pub const LEN: usize = $len;
            /// Parse from the start of a message body.
            pub fn parse(b: &[u8]) -> Result<Self, WireError> {
                check($what, b, Self::LEN)?;
                Ok(Self { $($f: body!(@get $t, b, $off)),* })
            }
            /// Emit into the start of `b` (which must hold [`Self::LEN`] bytes).
            pub fn emit(&self, b: &mut [u8]) {
                $( b[$off..$off + std::mem::size_of::<$t>()].copy_from_slice(&self.$f.to_ne_bytes()); )*
            }
        }
    };
    (@get u16, $b:ident, $off:expr) => { get_u16($b, $off..$off + 2) };
    (@get u32, $b:ident, $off:expr) => { get_u32($b, $off..$off + 4) };
    (@get u64, $b:ident, $off:expr) => { get_u64($b, $off..$off + 8) };
}

body!(
    /// `VFIO_USER_VERSION` fixed part; JSON version data follows.
    VersionRepr, "version", 4, { major: u16 = 0, minor: u16 = 2 }
);
body!(
    /// `VFIO_USER_DMA_MAP` request.
    DmaMapRepr, "dma map", 32, {
        argsz: u32 = 0, flags: u32 = 4, offset: u64 = 8, address: u64 = 16, size: u64 = 24
    }
);
body!(
    /// `VFIO_USER_DMA_UNMAP` request and reply.
    DmaUnmapRepr, "dma unmap", 24, { argsz: u32 = 0, flags: u32 = 4, address: u64 = 8, size: u64 = 16 }
);
body!(
    /// `VFIO_USER_DEVICE_GET_INFO` request and reply.
    DeviceInfoRepr, "device info", 16, { argsz: u32 = 0, flags: u32 = 4, num_regions: u32 = 8, num_irqs: u32 = 12 }
);
body!(
    /// `VFIO_USER_DEVICE_GET_REGION_INFO` request and reply (`struct vfio_region_info`).
    RegionInfoRepr, "region info", 32, {
        argsz: u32 = 0, flags: u32 = 4, index: u32 = 8, cap_offset: u32 = 12, size: u64 = 16, offset: u64 = 24
    }
);
body!(
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO` request and reply.
    IrqInfoRepr, "irq info", 16, { argsz: u32 = 0, flags: u32 = 4, index: u32 = 8, count: u32 = 12 }
);
body!(
    /// `VFIO_USER_DEVICE_SET_IRQS` request (optional bool data follows).
    IrqSetRepr, "set irqs", 20, { argsz: u32 = 0, flags: u32 = 4, index: u32 = 8, start: u32 = 12, count: u32 = 16 }
);
body!(
    /// `VFIO_USER_REGION_READ`/`WRITE` request and reply (data follows where present).
    RegionAccessRepr, "region access", 16, { offset: u64 = 0, region: u32 = 8, count: u32 = 12 }
);
body!(
    /// `VFIO_USER_DMA_READ`/`WRITE` request and reply (data follows where present).
    DmaAccessRepr, "dma access", 16, { address: u64 = 0, count: u64 = 8 }
);

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
        let h = Header::new_checked(&REGION_READ_BYTES[..]).unwrap();
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
        HeaderRepr {
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
    fn error_reply_sets_flags() {
        let mut buf = [0u8; HEADER_LEN];
        let mut r = HeaderRepr::parse(&Header::new_unchecked(&REGION_READ_BYTES[..16])).unwrap();
        r = r.reply(16);
        r.error = Some(22);
        r.emit_bytes(&mut buf);
        let h = Header::new_unchecked(&buf[..]);
        assert_eq!(h.flags(), flags::TYPE_REPLY | flags::ERROR);
        assert_eq!(h.error(), 22);
        assert_eq!(h.size(), 16);
    }

    #[test]
    fn short_and_bad_headers_are_errors() {
        assert!(matches!(
            Header::new_checked(&[0u8; 15][..]),
            Err(WireError::Truncated {
                need: 16,
                got: 15,
                ..
            })
        ));
        let mut b = REGION_READ_BYTES;
        b[4..8].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(
            HeaderRepr::parse(&Header::new_unchecked(&b[..])),
            Err(WireError::SizeTooSmall(8))
        );
        let mut b = REGION_READ_BYTES;
        b[8..12].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(
            HeaderRepr::parse(&Header::new_unchecked(&b[..])),
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

    proptest! {
        #[test]
        fn header_roundtrip(id: u16, cmd: u16, size in 16u32.., reply: bool, no_reply: bool, err: Option<u32>) {
            let r = HeaderRepr {
                id, command: Command::from(cmd), size,
                kind: if reply { MessageType::Reply } else { MessageType::Command },
                no_reply, error: err,
            };
            let mut buf = [0u8; HEADER_LEN];
            r.emit_bytes(&mut buf);
            prop_assert_eq!(HeaderRepr::parse(&Header::new_unchecked(&buf[..])).unwrap(), r);
        }

        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(h) = Header::new_checked(&bytes[..]) {
                let _ = HeaderRepr::parse(&h);
            }
            let _ = RegionInfoRepr::parse(&bytes);
            let _ = IrqSetRepr::parse(&bytes);
            let _ = parse_version(&bytes);
        }

        #[test]
        fn region_info_roundtrip(argsz: u32, flags: u32, index: u32, cap_offset: u32, size: u64, offset: u64) {
            let r = RegionInfoRepr { argsz, flags, index, cap_offset, size, offset };
            let mut buf = [0u8; RegionInfoRepr::LEN];
            r.emit(&mut buf);
            prop_assert_eq!(RegionInfoRepr::parse(&buf).unwrap(), r);
        }

        #[test]
        fn dma_map_roundtrip(argsz: u32, flags: u32, offset: u64, address: u64, size: u64) {
            let r = DmaMapRepr { argsz, flags, offset, address, size };
            let mut buf = [0u8; DmaMapRepr::LEN];
            r.emit(&mut buf);
            prop_assert_eq!(DmaMapRepr::parse(&buf).unwrap(), r);
        }
    }
}
