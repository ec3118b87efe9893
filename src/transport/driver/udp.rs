//! UDP port on a mio event loop, IPv4 or IPv6 (docs/protocol.md §1, UDP encapsulation).

use super::{Port, Wake};
use crate::sys::{self, TimerFd};
use crate::transport::PeerAddr;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

const SOCK: Token = Token(0);
const WAKE: Token = Token(1);
const TIMER: Token = Token(2);

/// A bound UDP socket.
#[derive(Debug)]
pub struct UdpPort {
    sock: UdpSocket,
    poll: Poll,
    events: Events,
    waker: Arc<MioWaker>,
    timer: HrTimer,
    local: SocketAddr,
}

/// A timerfd in the poll set: epoll's timeout has millisecond granularity (mio rounds up),
/// far too coarse for ACK delays and pacing measured in microseconds.
#[derive(Debug)]
pub(crate) struct HrTimer {
    fd: TimerFd,
    token: Token,
    /// When the armed timer will fire (None: disarmed or fired).
    armed: std::cell::Cell<Option<std::time::Instant>>,
}

impl HrTimer {
    pub(crate) fn new(poll: &Poll, token: Token) -> io::Result<HrTimer> {
        let fd = TimerFd::new()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&fd.as_raw_fd()),
            token,
            Interest::READABLE,
        )?;
        Ok(HrTimer {
            fd,
            token,
            armed: std::cell::Cell::new(None),
        })
    }

    fn arm(&self, d: Duration) {
        // A failure leaves the timer disarmed: the wait then ends at the poll's own timeout
        // or the next event, which is late but not wrong.
        let _ = self.fd.arm_once(d);
    }

    fn clear(&self) {
        let _ = self.fd.clear();
    }

    /// `poll.poll` with microsecond-precise short timeouts. The timer is re-armed only when
    /// the new deadline is earlier than the armed one (an early wake-up is harmless: the
    /// caller just waits again), which keeps the syscalls off the common path.
    pub(crate) fn wait(
        &self,
        poll: &mut Poll,
        events: &mut mio::Events,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let t = match timeout {
            Some(t) if t > Duration::ZERO && t < Duration::from_millis(2) => {
                let target = std::time::Instant::now() + t;
                if self.armed.get().is_none_or(|a| a > target) {
                    self.arm(t);
                    self.armed.set(Some(target));
                }
                None
            }
            t => t,
        };
        let r = poll.poll(events, t);
        if events.iter().any(|e| e.token() == self.token) {
            self.clear();
            self.armed.set(None);
        }
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }
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
        grow_buffers(&sock);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut sock, SOCK, Interest::READABLE)?;
        let waker = Arc::new(MioWaker(Waker::new(poll.registry(), WAKE)?));
        let local = sock.local_addr()?;
        let timer = HrTimer::new(&poll, TIMER)?;
        Ok(UdpPort {
            sock,
            poll,
            events: Events::with_capacity(16),
            waker,
            timer,
            local,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.local
    }
}

/// Socket buffers to ask for: a burst of full windows must not overflow the kernel's queue
/// while the driver thread is descheduled (the default 208 KiB lost frames on loopback under
/// a busy TCG guest: every one of them then costs a retransmission). The kernel caps the
/// request at `net.core.rmem_max` / `wmem_max`.
const SOCKET_BUFFER: usize = 4 << 20;

fn grow_buffers(sock: &UdpSocket) {
    // Failure only leaves the default size, which is not an error.
    let _ = sys::socket::set_buffer_sizes(sock, SOCKET_BUFFER);
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
        self.timer.wait(&mut self.poll, &mut self.events, timeout)
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn local_addr(&self) -> PeerAddr {
        PeerAddr::Udp(self.local)
    }

    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.sock.as_raw_fd())
    }

    fn mtu(&self) -> usize {
        65507
    }
}
