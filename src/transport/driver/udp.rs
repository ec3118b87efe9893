//! UDP port on a mio event loop, IPv4 or IPv6 (docs/protocol.md §1, UDP encapsulation).

use super::{Port, Wake};
use crate::transport::PeerAddr;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const SOCK: Token = Token(0);
const WAKE: Token = Token(1);

/// A bound UDP socket.
#[derive(Debug)]
pub struct UdpPort {
    sock: UdpSocket,
    poll: Poll,
    events: Events,
    waker: Arc<MioWaker>,
    local: SocketAddr,
}

/// Wakes a mio poll.
#[derive(Debug)]
pub struct MioWaker(pub(crate) Waker);

impl Wake for MioWaker {
    fn wake(&self) {
        let _ = self.0.wake();
    }
}

impl UdpPort {
    /// Bind `addr` (port 0 picks a free port).
    pub fn bind(addr: SocketAddr) -> io::Result<UdpPort> {
        let mut sock = UdpSocket::bind(addr)?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut sock, SOCK, Interest::READABLE)?;
        let waker = Arc::new(MioWaker(Waker::new(poll.registry(), WAKE)?));
        let local = sock.local_addr()?;
        Ok(UdpPort {
            sock,
            poll,
            events: Events::with_capacity(16),
            waker,
            local,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.local
    }
}

impl Port for UdpPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, PeerAddr)>> {
        match self.sock.recv_from(buf) {
            Ok((n, from)) => Ok(Some((n, PeerAddr::Udp(from)))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            // ICMP errors (port unreachable) surface here on Linux; they are not fatal.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn send(&mut self, frame: &[u8], dst: PeerAddr) -> io::Result<()> {
        let PeerAddr::Udp(a) = dst else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a UDP peer",
            ));
        };
        self.sock.send_to(frame, a).map(|_| ())
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn local_addr(&self) -> PeerAddr {
        PeerAddr::Udp(self.local)
    }

    fn mtu(&self) -> usize {
        65507
    }
}
