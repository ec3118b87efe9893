//! Raw Ethernet port: an AF_PACKET socket bound to one interface and EtherType 0x88B5, with an
//! optional 802.1Q tag carrying the configured priority (docs/protocol.md §1). Polled by mio.

use super::udp::{HrTimer, MioWaker};
use super::{LinkSpecError, Port, Wake};
use crate::sys::packet::{self, PacketSocket};
use crate::transport::PeerAddr;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

/// Our EtherType (until one is registered).
pub const ETHERTYPE: u16 = 0x88B5;
const ETH_P_8021Q: u16 = 0x8100;
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
        let mut parts = s.split(',');
        let iface = parts.next().unwrap_or_default().to_string();
        if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
            return Err(LinkSpecError::Interface(iface).into());
        }
        let mut spec = EthSpec {
            iface,
            vlan: None,
            pcp: None,
        };
        for p in parts {
            if let Some(v) = p.strip_prefix("vlan=") {
                let id: u16 = v.parse().map_err(|_| LinkSpecError::Vlan(v.to_string()))?;
                if id >= 4095 {
                    return Err(LinkSpecError::VlanRange(id).into());
                }
                spec.vlan = Some(id);
            } else if let Some(v) = p.strip_prefix("pcp=") {
                let n: u8 = v.parse().map_err(|_| LinkSpecError::Pcp(v.to_string()))?;
                if n > 7 {
                    return Err(LinkSpecError::PcpRange(n).into());
                }
                spec.pcp = Some(n);
            }
        }
        Ok(spec)
    }
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> io::Result<[u8; 6]> {
    let bad = || LinkSpecError::Mac(s.to_string());
    let mut m = [0u8; 6];
    let mut it = s.trim().split(':');
    for b in &mut m {
        let p = it.next().unwrap_or("");
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if it.next().is_some() {
        return Err(bad().into());
    }
    Ok(m)
}

/// An AF_PACKET socket on one interface.
#[derive(Debug)]
pub struct EthPort {
    sock: PacketSocket,
    mac: [u8; 6],
    mtu: usize,
    tag: Option<u16>,
    poll: Poll,
    events: Events,
    waker: Arc<MioWaker>,
    timer: HrTimer,
}

impl EthPort {
    /// Open and bind (needs CAP_NET_RAW).
    pub fn open(spec: &EthSpec) -> io::Result<EthPort> {
        let ifindex = packet::interface_index(&spec.iface)?;
        let sysfs = format!("/sys/class/net/{}", spec.iface);
        let mac = parse_mac(&std::fs::read_to_string(format!("{sysfs}/address"))?)?;
        let if_mtu: usize = std::fs::read_to_string(format!("{sysfs}/mtu"))?
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad interface MTU"))?;
        let sock = PacketSocket::open(ifindex, ETHERTYPE)?;
        let tag = if spec.vlan.is_some() || spec.pcp.is_some() {
            Some((u16::from(spec.pcp.unwrap_or(0)) << 13) | spec.vlan.unwrap_or(0))
        } else {
            None
        };
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut SourceFd(&sock.as_raw_fd()), SOCK, Interest::READABLE)?;
        let waker = Arc::new(MioWaker(Waker::new(poll.registry(), WAKE)?));
        let timer = HrTimer::new(&poll, TIMER)?;
        Ok(EthPort {
            timer,
            sock,
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
            let n = match self.sock.recv_split(&mut hdr, buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
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
        self.sock.send_split(&hdr[..hlen], frame)?;
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
        Some(self.sock.as_raw_fd())
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
        let why = |e: io::Error| {
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            e.get_ref()
                .and_then(|e| e.downcast_ref::<LinkSpecError>())
                .cloned()
        };
        let err = |s: &str| why(EthSpec::parse(s).unwrap_err());
        assert_eq!(err("veth0,pcp=8"), Some(LinkSpecError::PcpRange(8)));
        assert_eq!(err("veth0,vlan=4095"), Some(LinkSpecError::VlanRange(4095)));
        assert_eq!(err("veth0,vlan=x"), Some(LinkSpecError::Vlan("x".into())));
        assert_eq!(err(""), Some(LinkSpecError::Interface(String::new())));
        assert_eq!(
            parse_mac("02:00:00:00:00:0a\n").unwrap(),
            [2, 0, 0, 0, 0, 10]
        );
        let mac = |s: &str| why(parse_mac(s).unwrap_err());
        assert_eq!(
            mac("02:00:00:00:00"),
            Some(LinkSpecError::Mac("02:00:00:00:00".into()))
        );
        assert!(mac("02:00:00:00:00:00:01").is_some());
        assert_eq!(claimed_len(&[0x50, 0x54, 1, 3, 0, 0, 0, 8]), Some(48));
    }
}
