//! Raw Ethernet port: an AF_PACKET socket bound to one interface and EtherType 0x88B5, with an
//! optional 802.1Q tag carrying the configured priority (docs/protocol.md §1). Polled by mio.

use super::udp::{HrTimer, MioWaker};
use super::{Port, Wake};
use crate::transport::PeerAddr;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// Our EtherType (until one is registered).
pub const ETHERTYPE: u16 = 0x88B5;
const ETH_P_8021Q: u16 = 0x8100;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const SOCK: Token = Token(0);
const WAKE: Token = Token(1);
const TIMER: Token = Token(2);

/// `eth:IFACE[,vlan=ID][,pcp=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthSpec {
    /// Interface name.
    pub iface: String,
    /// 802.1Q VLAN id; with `pcp` set and no id, VLAN 0 (priority tag only).
    pub vlan: Option<u16>,
    /// 802.1p priority (0..=7); implies a tag.
    pub pcp: Option<u8>,
}

impl EthSpec {
    /// Parse `IFACE[,vlan=ID][,pcp=N]` (without the `eth:` prefix). Unknown keys such as
    /// `peer=` are ignored here (the host agent reads them).
    pub fn parse(s: &str) -> io::Result<EthSpec> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let mut parts = s.split(',');
        let iface = parts.next().unwrap_or_default().to_string();
        if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
            return Err(bad(format!("bad interface name {iface:?}")));
        }
        let mut spec = EthSpec {
            iface,
            vlan: None,
            pcp: None,
        };
        for p in parts {
            if let Some(v) = p.strip_prefix("vlan=") {
                let id: u16 = v.parse().map_err(|_| bad(format!("bad vlan {v:?}")))?;
                if id >= 4095 {
                    return Err(bad(format!("vlan {id} out of range")));
                }
                spec.vlan = Some(id);
            } else if let Some(v) = p.strip_prefix("pcp=") {
                let n: u8 = v.parse().map_err(|_| bad(format!("bad pcp {v:?}")))?;
                if n > 7 {
                    return Err(bad(format!("pcp {n} out of range 0..=7")));
                }
                spec.pcp = Some(n);
            }
        }
        Ok(spec)
    }
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> io::Result<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut it = s.trim().split(':');
    for b in &mut m {
        let p = it.next().unwrap_or("");
        *b = u8::from_str_radix(p, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad MAC {s:?}")))?;
    }
    if it.next().is_some() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad MAC {s:?}"),
        ));
    }
    Ok(m)
}

/// An AF_PACKET socket on one interface.
#[derive(Debug)]
pub struct EthPort {
    fd: OwnedFd,
    mac: [u8; 6],
    mtu: usize,
    tag: Option<u16>,
    poll: Poll,
    events: Events,
    waker: Arc<MioWaker>,
    timer: HrTimer,
}

fn sys(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl EthPort {
    /// Open and bind (needs CAP_NET_RAW).
    pub fn open(spec: &EthSpec) -> io::Result<EthPort> {
        let name = CString::new(spec.iface.clone())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {}", spec.iface),
            ));
        }
        let sysfs = format!("/sys/class/net/{}", spec.iface);
        let mac = parse_mac(&std::fs::read_to_string(format!("{sysfs}/address"))?)?;
        let if_mtu: usize = std::fs::read_to_string(format!("{sysfs}/mtu"))?
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad interface MTU"))?;
        let proto = ETHERTYPE.to_be();
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = sys(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto.into(),
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain old data; zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
        sys(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        })?;
        let one: libc::c_int = 1;
        // SAFETY: option value is a c_int of the size passed. Not fatal on old kernels.
        let _ = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        let tag = if spec.vlan.is_some() || spec.pcp.is_some() {
            Some((u16::from(spec.pcp.unwrap_or(0)) << 13) | spec.vlan.unwrap_or(0))
        } else {
            None
        };
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut SourceFd(&fd.as_raw_fd()), SOCK, Interest::READABLE)?;
        let waker = Arc::new(MioWaker(Waker::new(poll.registry(), WAKE)?));
        let timer = HrTimer::new(&poll, TIMER)?;
        Ok(EthPort {
            timer,
            fd,
            mac,
            mtu: if_mtu - if tag.is_some() { 4 } else { 0 },
            tag,
            poll,
            events: Events::with_capacity(16),
            waker,
        })
    }

    /// Our MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

/// Length a frame claims in its own header (to strip Ethernet padding), if plausible.
fn claimed_len(f: &[u8]) -> Option<usize> {
    if f.len() < 8 {
        return None;
    }
    let body = usize::from(u16::from_be_bytes([f[6], f[7]]));
    let tag = if f[3] == 3 { 16 } else { 0 };
    Some(24 + body + tag)
}

impl Port for EthPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, PeerAddr)>> {
        loop {
            let mut hdr = [0u8; 14];
            let mut iov = [
                libc::iovec {
                    iov_base: hdr.as_mut_ptr().cast(),
                    iov_len: hdr.len(),
                },
                libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                },
            ];
            // SAFETY: msghdr is plain old data; the iovecs point at live buffers.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = 2;
            // SAFETY: valid fd and msghdr.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Ok(None);
                }
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n < 14 {
                continue;
            }
            let mut len = n - 14;
            let mut src = [0u8; 6];
            src.copy_from_slice(&hdr[6..12]);
            if src == self.mac {
                continue;
            }
            let ty = u16::from_be_bytes([hdr[12], hdr[13]]);
            if ty == ETH_P_8021Q {
                // Tag left in the frame (no VLAN offload): drop TCI and inner type.
                if len < 4 || u16::from_be_bytes([buf[2], buf[3]]) != ETHERTYPE {
                    continue;
                }
                buf.copy_within(4..len, 0);
                len -= 4;
            } else if ty != ETHERTYPE {
                continue;
            }
            if let Some(c) = claimed_len(&buf[..len]) {
                if c < len {
                    len = c; // minimum-size padding added by a NIC
                }
            }
            return Ok(Some((len, PeerAddr::Eth(src))));
        }
    }

    fn send(&mut self, frame: &[u8], dst: PeerAddr) -> io::Result<()> {
        let PeerAddr::Eth(mac) = dst else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an Ethernet peer",
            ));
        };
        let mut hdr = [0u8; 18];
        hdr[..6].copy_from_slice(&mac);
        hdr[6..12].copy_from_slice(&self.mac);
        let hlen = match self.tag {
            Some(tci) => {
                hdr[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
                hdr[14..16].copy_from_slice(&tci.to_be_bytes());
                hdr[16..18].copy_from_slice(&ETHERTYPE.to_be_bytes());
                18
            }
            None => {
                hdr[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
                14
            }
        };
        let mut iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: hlen,
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: msghdr is plain old data; the iovecs point at live buffers that the kernel
        // only reads.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = 2;
        // SAFETY: valid fd and msghdr.
        let r = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.timer.wait(&mut self.poll, &mut self.events, timeout)
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn local_addr(&self) -> PeerAddr {
        PeerAddr::Eth(self.mac)
    }

    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn mtu(&self) -> usize {
        self.mtu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_and_mac_parsing() {
        assert_eq!(
            EthSpec::parse("veth0,vlan=5,pcp=6,peer=aa:bb:cc:dd:ee:ff").unwrap(),
            EthSpec {
                iface: "veth0".into(),
                vlan: Some(5),
                pcp: Some(6)
            }
        );
        assert!(EthSpec::parse("veth0,pcp=8").is_err());
        assert!(EthSpec::parse("").is_err());
        assert_eq!(
            parse_mac("02:00:00:00:00:0a\n").unwrap(),
            [2, 0, 0, 0, 0, 10]
        );
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("02:00:00:00:00:00:01").is_err());
        assert_eq!(claimed_len(&[0x50, 0x54, 1, 3, 0, 0, 0, 8]), Some(48));
    }
}
