//! AF_PACKET raw sockets (packet(7)): one socket bound to one interface and one EtherType,
//! non-blocking, receiving whole Ethernet frames and sending frames we build ourselves.
//! Opening one needs `CAP_NET_RAW`.

use super::SysError;
use std::ffi::CString;
use std::io::{self, IoSlice, IoSliceMut};
use std::num::NonZeroU32;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::net::{
    recvmsg, sendmsg, socket_with, AddressFamily, Protocol, RecvAncillaryBuffer, RecvFlags,
    SendAncillaryBuffer, SendFlags, SocketFlags, SocketType,
};

/// `PACKET_IGNORE_OUTGOING` (Linux 4.20): do not loop our own transmissions back to us.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// The index of network interface `name` (if_nametoindex(3)).
pub fn interface_index(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| SysError::NulInName.io(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call, which only reads it.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(SysError::NoInterface(name.to_string()).io(io::ErrorKind::NotFound));
    }
    Ok(index)
}

/// A raw packet socket bound to one interface and EtherType.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Open a `SOCK_RAW` packet socket for frames of `ethertype` on interface `ifindex`
    /// (non-blocking, close-on-exec), and ask the kernel not to show us our own
    /// transmissions (not fatal on kernels without `PACKET_IGNORE_OUTGOING`).
    pub fn open(ifindex: u32, ethertype: u16) -> io::Result<PacketSocket> {
        let proto = ethertype.to_be();
        let raw_proto = NonZeroU32::new(proto.into())
            .ok_or_else(|| SysError::EtherTypeZero.io(io::ErrorKind::InvalidInput))?;
        let fd = socket_with(
            AddressFamily::PACKET,
            SocketType::RAW,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            Some(Protocol::from_raw(raw_proto)),
        )?;
        let ifindex = libc::c_int::try_from(ifindex)
            .map_err(|_| SysError::InterfaceIndex(ifindex).io(io::ErrorKind::InvalidInput))?;
        // SAFETY: sockaddr_ll is plain old data, for which all zero bytes are a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: `sll` is a valid sockaddr_ll that outlives the call, and the length passed
        // is its size; the kernel only reads it.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        // SAFETY: the option value is a c_int that outlives the call, and the length passed is
        // its size; the kernel only reads it. Failure (an old kernel) is not an error.
        let _ = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(PacketSocket { fd })
    }

    /// Receive one frame, scattered: its first `head.len()` bytes into `head` (the Ethernet
    /// header), the rest into `body`. Returns the bytes received; `WouldBlock` when no frame
    /// waits.
    pub fn recv_split(&self, head: &mut [u8], body: &mut [u8]) -> io::Result<usize> {
        let mut iov = [IoSliceMut::new(head), IoSliceMut::new(body)];
        let msg = recvmsg(
            &self.fd,
            &mut iov,
            &mut RecvAncillaryBuffer::default(),
            RecvFlags::empty(),
        )?;
        Ok(msg.bytes)
    }

    /// Send one frame gathered from `head` (the Ethernet header) and `body`.
    pub fn send_split(&self, head: &[u8], body: &[u8]) -> io::Result<usize> {
        let iov = [IoSlice::new(head), IoSlice::new(body)];
        Ok(sendmsg(
            &self.fd,
            &iov,
            &mut SendAncillaryBuffer::default(),
            SendFlags::empty(),
        )?)
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_resolve() {
        assert!(interface_index("lo").unwrap() > 0);
        assert_eq!(
            interface_index("no-such-if0").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            interface_index("l\0o").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
