//! UDP port on a mio event loop, IPv4 or IPv6 (docs/protocol.md §1, UDP encapsulation).
//!
//! Where the kernel has them, the port moves many frames per system call through `quinn-udp`:
//! generic segmentation offload on send (`UDP_SEGMENT`: one sendmsg(2) carries a run of
//! equal-size frames that leave as separate datagrams) and `UDP_GRO` + recvmmsg(2) on receive
//! (one slot returns a run of datagrams from one sender with their stride), udp(7). A kernel
//! without them, or a driver that refuses GSO at run time, falls back to one datagram per call
//! (quinn-udp turns GSO off on the first `EIO`/`EINVAL`). Fragmentation is off
//! (`IP_PMTUDISC_PROBE`): a frame the path cannot carry fails instead of being fragmented, so
//! the frame size must fit the path ([`Port::path_mtu`]).

use super::{Port, Received, Wake, MAX_RECV_SLOTS};
use crate::sys::{self, TimerFd};
use crate::transport::PeerAddr;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

const SOCK: Token = Token(0);
const WAKE: Token = Token(1);
const TIMER: Token = Token(2);

/// A GRO slot: the largest coalesced run the kernel hands up (one UDP length field's worth).
const GRO_SLOT: usize = 64 * 1024;
/// Largest UDP payload one GSO send may carry in total.
const GSO_MAX_BYTES: usize = 65507;

/// A bound UDP socket.
#[derive(Debug)]
pub struct UdpPort {
    sock: UdpSocket,
    /// Segmentation offload state (`None`: plain sendto/recvfrom, one datagram per call).
    offload: Option<quinn_udp::UdpSocketState>,
    /// A coalesced (GRO) run received by [`Port::recv`], handed out one frame per call.
    stash: Stash,
    poll: Poll,
    events: Events,
    waker: Arc<MioWaker>,
    timer: HrTimer,
    local: SocketAddr,
}

/// Frames of a GRO run that [`Port::recv`] has not handed out yet.
#[derive(Debug, Default)]
struct Stash {
    buf: Vec<u8>,
    off: usize,
    len: usize,
    stride: usize,
    from: Option<SocketAddr>,
}

impl Stash {
    /// The next frame, if any.
    fn unstash(&mut self, buf: &mut [u8]) -> Option<(usize, PeerAddr)> {
        let from = self.from?;
        let n = self.stride.min(self.len - self.off);
        let take = n.min(buf.len());
        buf[..take].copy_from_slice(&self.buf[self.off..self.off + take]);
        self.off += n;
        if self.off >= self.len {
            self.from = None;
        }
        Some((take, PeerAddr::Udp(from)))
    }
}

/// What the kernel offers a [`UdpPort`] (for logs and the benchmark's baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct UdpOffload {
    /// Frames one send may carry (1: no GSO).
    pub gso_segments: usize,
    /// Coalesced receive (UDP_GRO) is on.
    pub gro: bool,
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
    /// Bind `addr` (port 0 picks a free port), with segmentation offload where the kernel
    /// has it.
    pub fn bind(addr: SocketAddr) -> io::Result<UdpPort> {
        Self::bind_with(addr, true)
    }

    /// Bind `addr` without offloads: one datagram per sendto(2) / recvfrom(2) (the plain raw
    /// baseline).
    pub fn bind_plain(addr: SocketAddr) -> io::Result<UdpPort> {
        Self::bind_with(addr, false)
    }

    fn bind_with(addr: SocketAddr, offload: bool) -> io::Result<UdpPort> {
        let mut sock = UdpSocket::bind(addr)?;
        grow_buffers(&sock);
        let offload = if offload {
            Some(quinn_udp::UdpSocketState::new((&sock).into())?)
        } else {
            None
        };
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut sock, SOCK, Interest::READABLE)?;
        let waker = Arc::new(MioWaker(Waker::new(poll.registry(), WAKE)?));
        let local = sock.local_addr()?;
        let timer = HrTimer::new(&poll, TIMER)?;
        Ok(UdpPort {
            sock,
            offload,
            stash: Stash::default(),
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

    /// What the kernel offers this socket.
    pub fn offload(&self) -> UdpOffload {
        match &self.offload {
            Some(o) => UdpOffload {
                gso_segments: o.max_gso_segments(),
                gro: o.gro_segments() > 1,
            },
            None => UdpOffload {
                gso_segments: 1,
                gro: false,
            },
        }
    }
}

/// One recvmmsg(2) through quinn-udp into `slots` slots of `slot` bytes of `buf`.
fn recv_offload(
    state: &quinn_udp::UdpSocketState,
    sock: &UdpSocket,
    buf: &mut [u8],
    slot: usize,
    out: &mut [Received],
) -> io::Result<usize> {
    let k = out.len().min(MAX_RECV_SLOTS).min(buf.len() / slot.max(1));
    if k == 0 {
        return Ok(0);
    }
    let mut chunks = buf.chunks_mut(slot);
    let mut iov: [IoSliceMut<'_>; MAX_RECV_SLOTS] =
        std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or(&mut [])));
    let mut meta = [quinn_udp::RecvMeta::default(); MAX_RECV_SLOTS];
    let n = match state.recv(sock.into(), &mut iov[..k], &mut meta[..k]) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
        // ICMP errors (port unreachable) surface here on Linux; they are not fatal.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
        Err(e) => return Err(e),
    };
    for (o, m) in out.iter_mut().zip(&meta[..n]) {
        *o = Received {
            len: m.len,
            stride: if m.stride == 0 { m.len } else { m.stride },
            from: PeerAddr::Udp(m.addr),
        };
    }
    Ok(n)
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
        if let Some(state) = &self.offload {
            // A GRO socket may hand up a coalesced run: keep it and give one frame per call.
            if let Some(r) = self.stash.unstash(buf) {
                return Ok(Some(r));
            }
            let st = &mut self.stash;
            st.buf.resize(GRO_SLOT, 0);
            let mut got = [Received::default()];
            if recv_offload(state, &self.sock, &mut st.buf, GRO_SLOT, &mut got)? == 0 {
                return Ok(None);
            }
            let Received { len, stride, from } = got[0];
            let PeerAddr::Udp(from) = from else {
                return Ok(None);
            };
            (st.off, st.len, st.stride, st.from) = (0, len, stride, Some(from));
            return Ok(self.stash.unstash(buf));
        }
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

    fn recv_slot(&self, mtu: usize) -> usize {
        match &self.offload {
            Some(o) if o.gro_segments() > 1 => GRO_SLOT,
            _ => mtu,
        }
    }

    fn recv_slots(&self) -> usize {
        match &self.offload {
            // Runs from one sender coalesce into one slot; more slots catch other senders.
            Some(o) if o.gro_segments() > 1 => 4,
            Some(_) => MAX_RECV_SLOTS,
            None => 1,
        }
    }

    fn recv_batch(
        &mut self,
        buf: &mut [u8],
        slot: usize,
        out: &mut [Received],
    ) -> io::Result<usize> {
        let Some(state) = &self.offload else {
            let (Some(first), Some(b)) = (out.first_mut(), buf.get_mut(..slot)) else {
                return Ok(0);
            };
            return Ok(match self.recv(b)? {
                Some((len, from)) => {
                    *first = Received {
                        len,
                        stride: len,
                        from,
                    };
                    1
                }
                None => 0,
            });
        };
        if self.stash.from.is_some() {
            // Frames left from a `recv` call go first, one per slot, in order.
            let mut n = 0;
            while n < out.len() && self.stash.from.is_some() {
                let Some(b) = buf.get_mut(n * slot..(n + 1) * slot) else {
                    break;
                };
                if let Some((len, from)) = self.stash.unstash(b) {
                    out[n] = Received {
                        len,
                        stride: len,
                        from,
                    };
                    n += 1;
                }
            }
            return Ok(n);
        }
        recv_offload(state, &self.sock, buf, slot, out)
    }

    fn max_segments(&self) -> usize {
        self.offload.as_ref().map_or(1, |o| o.max_gso_segments())
    }

    fn send_segments(&mut self, frames: &[u8], seg: usize, dst: PeerAddr) -> io::Result<()> {
        let PeerAddr::Udp(a) = dst else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a UDP peer",
            ));
        };
        let Some(state) = &self.offload else {
            let mut r = Ok(());
            for f in frames.chunks(seg.max(1)) {
                if let Err(e) = self.sock.send_to(f, a) {
                    r = Err(e);
                }
            }
            return r;
        };
        let mut r = Ok(());
        // Runs beyond one UDP length field or the kernel's segment limit go in several calls.
        let per_call = (GSO_MAX_BYTES / seg.max(1))
            .min(state.max_gso_segments())
            .max(1);
        for run in frames.chunks(per_call * seg.max(1)) {
            let t = quinn_udp::Transmit {
                destination: a,
                ecn: None,
                contents: run,
                segment_size: (run.len() > seg).then_some(seg),
                src_ip: None,
            };
            if let Err(e) = state.try_send((&self.sock).into(), &t) {
                r = Err(e);
            }
        }
        r
    }

    fn path_mtu(&self, dst: PeerAddr) -> Option<usize> {
        let PeerAddr::Udp(a) = dst else {
            return None;
        };
        path_mtu(self.local, a)
    }
}

/// The route's MTU toward `dst` less the IP and UDP headers: a throw-away socket connected
/// to `dst` (connect(2) on UDP sends nothing) asked for `IP_MTU` / `IPV6_MTU` (ip(7), ipv6(7)).
pub fn path_mtu(local: SocketAddr, dst: SocketAddr) -> Option<usize> {
    let bind: SocketAddr = match (dst, local) {
        // The same source address where we have one (policy routing may depend on it).
        (SocketAddr::V4(_), SocketAddr::V4(l)) => (*l.ip(), 0).into(),
        (SocketAddr::V4(_), _) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        (SocketAddr::V6(_), _) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = std::net::UdpSocket::bind(bind).ok()?;
    probe.connect(dst).ok()?;
    let (mtu, headers) = match dst {
        SocketAddr::V4(_) => (rustix::net::sockopt::ip_mtu(&probe).ok()?, 20 + 8),
        SocketAddr::V6(_) => (rustix::net::sockopt::ipv6_mtu(&probe).ok()?, 40 + 8),
    };
    (mtu as usize).checked_sub(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(offload_rx: bool) -> (UdpPort, UdpPort) {
        let lo = "127.0.0.1:0".parse().unwrap();
        let tx = UdpPort::bind(lo).unwrap();
        let rx = if offload_rx {
            UdpPort::bind(lo).unwrap()
        } else {
            UdpPort::bind_plain(lo).unwrap()
        };
        (tx, rx)
    }

    /// `n` frames of `seg` bytes and a short last one, each filled with its index.
    fn run(n: usize, seg: usize, last: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n {
            v.extend(std::iter::repeat_n(i as u8, seg));
        }
        v.extend(std::iter::repeat_n(n as u8, last));
        v
    }

    /// Every frame, in order, however the receiver gets them (`recv` or `recv_batch`).
    fn collect(rx: &mut UdpPort, want: usize, batch: bool) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let slot = rx.recv_slot(2048);
        let k = rx.recv_slots();
        let mut buf = vec![0u8; slot * k];
        let mut got = [Received::default(); MAX_RECV_SLOTS];
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while frames.len() < want && std::time::Instant::now() < end {
            if batch {
                let n = rx.recv_batch(&mut buf, slot, &mut got[..k]).unwrap();
                for (i, g) in got[..n].iter().enumerate() {
                    let b = &buf[i * slot..i * slot + g.len];
                    frames.extend(b.chunks(g.stride).map(<[u8]>::to_vec));
                }
                if n == 0 {
                    rx.wait(Some(Duration::from_millis(10))).unwrap();
                }
            } else {
                let mut b = [0u8; 2048];
                match rx.recv(&mut b).unwrap() {
                    Some((n, _)) => frames.push(b[..n].to_vec()),
                    None => rx.wait(Some(Duration::from_millis(10))).unwrap(),
                }
            }
        }
        frames
    }

    fn check(frames: &[Vec<u8>], n: usize, seg: usize, last: usize) {
        assert_eq!(frames.len(), n + 1, "one datagram per frame");
        for (i, f) in frames.iter().enumerate() {
            let len = if i == n { last } else { seg };
            assert_eq!(f.len(), len, "frame {i}");
            assert!(f.iter().all(|&b| b == i as u8), "frame {i} content");
        }
    }

    #[test]
    fn a_segmented_run_arrives_as_separate_frames_whoever_receives() {
        // GRO receiver with recv_batch and with recv (the stash), and a plain receiver on
        // which the kernel splits the run itself.
        for (offload_rx, batch) in [(true, true), (true, false), (false, true)] {
            let (mut tx, mut rx) = pair(offload_rx);
            let (n, seg, last) = (10, 1200, 500);
            let frames = run(n, seg, last);
            let dst = rx.local_addr();
            tx.send_segments(&frames, seg, dst).unwrap();
            let got = collect(&mut rx, n + 1, batch);
            check(&got, n, seg, last);
        }
    }

    #[test]
    fn long_runs_are_split_to_what_one_call_carries() {
        let (mut tx, mut rx) = pair(true);
        // 80 frames of 1400 B: more than one UDP length field and than 64 segments.
        let (n, seg, last) = (80, 1400, 1);
        let frames = run(n, seg, last);
        tx.send_segments(&frames, seg, rx.local_addr()).unwrap();
        let got = collect(&mut rx, n + 1, true);
        check(&got, n, seg, last);
    }

    #[test]
    fn plain_ports_offer_no_offload_and_loopback_has_a_path_mtu() {
        let lo = "127.0.0.1:0".parse().unwrap();
        let p = UdpPort::bind_plain(lo).unwrap();
        assert_eq!(
            p.offload(),
            UdpOffload {
                gso_segments: 1,
                gro: false
            }
        );
        assert_eq!(p.max_segments(), 1);
        let q = UdpPort::bind(lo).unwrap();
        // Loopback's MTU is 65536 on Linux; whatever it is, it exceeds a jumbo frame.
        let mtu = p
            .path_mtu(q.local_addr())
            .expect("IP_MTU on a connected socket");
        assert!(mtu >= 8972, "{mtu}");
    }
}
