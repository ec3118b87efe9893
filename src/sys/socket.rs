//! Socket helpers: file descriptors received as `SCM_RIGHTS` ancillary data on AF_UNIX
//! sockets (unix(7), recvmsg(2)), and socket buffer sizes (socket(7) `SO_RCVBUF`/`SO_SNDBUF`).

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{
    recvmsg, sockopt, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
};

/// Most descriptors one [`recv_with_fds`] accepts; more are lost and reported as truncation.
pub const MAX_FDS: usize = 64;

/// Receive into `buf`, appending the descriptors that came with the bytes to `fds` (already
/// close-on-exec). Returns the bytes read (0 = end of stream) and whether ancillary data was
/// truncated (descriptors lost in transit). Interrupted calls are retried.
pub fn recv_with_fds(
    sock: impl AsFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<(usize, bool)> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg(&sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok((msg.bytes, msg.flags.contains(ReturnFlags::CTRUNC)))
}

/// Ask for `bytes` of receive and send buffer (the kernel caps the request at
/// `net.core.rmem_max` / `wmem_max`).
pub fn set_buffer_sizes(sock: impl AsFd, bytes: usize) -> io::Result<()> {
    // Both are attempted even if the first fails.
    let recv = sockopt::set_socket_recv_buffer_size(&sock, bytes);
    let send = sockopt::set_socket_send_buffer_size(&sock, bytes);
    recv?;
    send?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    /// Send `data` with `fds` as SCM_RIGHTS (the client side, for the test).
    fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        let n = sendmsg(
            sock,
            &[io::IoSlice::new(data)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        assert_eq!(n, data.len());
    }

    #[test]
    fn descriptors_arrive_with_the_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = tempfile::tempfile().unwrap();
        f.set_len(123).unwrap();
        send_with_fds(&a, b"hello", &[f.as_fd(), f.as_fd()]);
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let (n, truncated) = recv_with_fds(&b, &mut buf, &mut fds).unwrap();
        assert_eq!((&buf[..n], truncated), (&b"hello"[..], false));
        assert_eq!(fds.len(), 2);
        // The received descriptor is the same file.
        let got = std::fs::File::from(fds.pop().unwrap());
        assert_eq!(got.metadata().unwrap().len(), 123);
        // Plain bytes, then end of stream.
        (&a).write_all(b"x").unwrap();
        drop(a);
        assert_eq!(recv_with_fds(&b, &mut buf, &mut fds).unwrap(), (1, false));
        assert_eq!(recv_with_fds(&b, &mut buf, &mut fds).unwrap(), (0, false));
    }

    #[test]
    fn buffer_sizes_can_be_set() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        set_buffer_sizes(&s, 1 << 20).unwrap();
        let got = sockopt::socket_recv_buffer_size(&s).unwrap();
        assert!(got > 0);
    }
}
