//! Socket helpers: file descriptors sent and received as `SCM_RIGHTS` ancillary data on
//! AF_UNIX stream sockets (unix(7), sendmsg(2), recvmsg(2)), exact-length framed reads that
//! collect them, and socket buffer sizes (socket(7) `SO_RCVBUF`/`SO_SNDBUF`). Both vfio-user
//! ends of the crate (the host's server, the appliance's client) frame their messages with
//! these.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, sockopt, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
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

/// Read exactly `buf.len()` bytes from a stream socket, appending the descriptors that came
/// with them to `fds` and noting in `truncated` when some were lost in transit. `Ok(false)` on
/// end of stream before any byte; end of stream after some bytes is `UnexpectedEof`.
pub fn recv_exact_with_fds(
    sock: impl AsFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    truncated: &mut bool,
) -> io::Result<bool> {
    let fd = sock.as_fd();
    let mut at = 0;
    while at < buf.len() {
        let (n, t) = recv_with_fds(fd, &mut buf[at..], fds)?;
        *truncated |= t;
        if n == 0 {
            if at == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        at += n;
    }
    Ok(true)
}

/// Send all of `data` on a stream socket with `fds` (at most [`MAX_FDS`]) as `SCM_RIGHTS`
/// attached to its first byte; the rest of a partial send follows as plain bytes. Interrupted
/// calls are retried; a send timeout set on the socket applies to each call.
pub fn send_all_with_fds(sock: impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one message; at most {MAX_FDS}",
                fds.len()
            ),
        ));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut at = 0;
    let mut first = !fds.is_empty();
    while at < data.len() || first {
        let mut control = SendAncillaryBuffer::new(&mut space);
        if first && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other(
                "control buffer too small for the descriptors",
            ));
        }
        match sendmsg(
            &sock,
            &[IoSlice::new(&data[at..])],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(0) if at < data.len() => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                at += n;
                first = false;
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
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

    fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[BorrowedFd<'_>]) {
        send_all_with_fds(sock, data, fds).unwrap();
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
    fn exact_reads_collect_descriptors_across_partial_reads() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = tempfile::tempfile().unwrap();
        send_with_fds(&a, b"0123", &[f.as_fd()]);
        (&a).write_all(b"4567").unwrap();
        let mut buf = [0u8; 8];
        let (mut fds, mut truncated) = (Vec::new(), false);
        assert!(recv_exact_with_fds(&b, &mut buf, &mut fds, &mut truncated).unwrap());
        assert_eq!((&buf, fds.len(), truncated), (b"01234567", 1, false));
        (&a).write_all(b"xy").unwrap();
        drop(a);
        let e = recv_exact_with_fds(&b, &mut buf, &mut fds, &mut truncated).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(!recv_exact_with_fds(&b, &mut buf, &mut fds, &mut truncated).unwrap());
        // Too many descriptors is refused before anything is sent.
        let (c, _d) = UnixStream::pair().unwrap();
        let many = vec![f.as_fd(); MAX_FDS + 1];
        assert!(send_all_with_fds(&c, b"z", &many).is_err());
    }

    #[test]
    fn buffer_sizes_can_be_set() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        set_buffer_sizes(&s, 1 << 20).unwrap();
        let got = sockopt::socket_recv_buffer_size(&s).unwrap();
        assert!(got > 0);
    }
}
