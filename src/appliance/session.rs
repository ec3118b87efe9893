//! Host sessions and which of them the appliance's functions answer, with the resets PCIe
//! does when a link goes away (PCIe r5.0 §6.6.1 conventional reset: a hot reset, or a
//! surprise-down that takes the Data Link Layer down, returns every function below it to its
//! reset state).
//!
//! Today every function answers one session: the one that last sent a TLP or connected (one
//! host per appliance). A host that comes back with a new epoch (it restarted) resets every
//! function, as a hot reset would; the served session going down does too. This is the seam
//! where per-host routing goes (docs/appliance.md "Plan: the pool"): the assignment table
//! decides per function which session owns it, and a session going down resets only its own.

use crate::endpoint::Proxy;
use crate::transport::driver::Upcall;
use crate::transport::Event;

/// Which session the appliance serves, and the epoch each session's host last connected
/// with. `K` names a session: its `ConnId`, or (link, `ConnId`) when there are several links.
#[derive(Debug)]
pub struct Sessions<K> {
    owner: Option<K>,
    epochs: Vec<(K, u32)>,
}

impl<K> Default for Sessions<K> {
    fn default() -> Self {
        Sessions {
            owner: None,
            epochs: Vec::new(),
        }
    }
}

impl<K: Copy + PartialEq> Sessions<K> {
    /// The session answered now.
    pub fn owner(&self) -> Option<K> {
        self.owner
    }

    /// Act on one upcall from session `key`: hand a TLP to the endpoint, track epochs, reset
    /// on a restarted host or a lost owner. `owner_changed` sees a new owner before the
    /// endpoint acts on the TLP that made it the owner (a sender thread must know where the
    /// answers go before they exist).
    pub fn on_upcall(
        &mut self,
        ep: &mut Proxy,
        key: K,
        u: Upcall,
        owner_changed: &mut dyn FnMut(Option<K>),
    ) {
        match u {
            Upcall::Tlp { tlp, .. } => {
                self.set_owner(Some(key), owner_changed);
                if let Err(e) = ep.handle_tlp(&tlp) {
                    tracing::warn!("appliance: {e}");
                }
            }
            Upcall::Event {
                event:
                    Event::Connected {
                        host,
                        peer,
                        peer_epoch,
                    },
                ..
            } => {
                tracing::info!("appliance: host {host} connected from {peer}");
                match self.epochs.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, e)) if *e != peer_epoch => {
                        // The host restarted: what it set up is gone, as after a hot reset.
                        ep.reset_all();
                        *e = peer_epoch;
                    }
                    Some(_) => {}
                    None => self.epochs.push((key, peer_epoch)),
                }
                self.set_owner(Some(key), owner_changed);
            }
            Upcall::Event {
                conn,
                event: Event::Down { reason, .. },
            } => {
                tracing::warn!("appliance: session {} down: {reason:?}", conn.0);
                if self.owner == Some(key) {
                    // Link down resets the functions, as a surprise-down does on PCIe.
                    self.set_owner(None, owner_changed);
                    ep.reset_all();
                }
            }
            Upcall::Dropped { error, .. } => {
                tracing::debug!("appliance: TLP not sent: {error}");
            }
        }
    }

    fn set_owner(&mut self, owner: Option<K>, changed: &mut dyn FnMut(Option<K>)) {
        if self.owner != owner {
            self.owner = owner;
            changed(owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::dma_engine::DmaEngine;
    use crate::endpoint::wire::ParsedHeader;
    use crate::endpoint::{Bdf, ProxyConfig};
    use crate::tlp::OrderingClass;
    use crate::transport::{ConnId, DownReason, HostId, PeerAddr};
    use bytes::Bytes;
    use crossbeam::channel::Receiver;

    /// A Type 0 configuration request to device 0 function 0, register at byte offset `reg`.
    fn cfg_tlp(tag: u8, reg: u8, value: Option<u32>) -> Bytes {
        let mut t = vec![0u8; 12];
        t[0] = if value.is_some() { 0x44 } else { 0x04 };
        t[3] = 1;
        t[6] = tag;
        t[7] = 0x0f;
        t[8..10].copy_from_slice(&Bdf::new(1, 0, 0).0.to_be_bytes());
        t[11] = reg;
        if let Some(v) = value {
            t.extend_from_slice(&v.to_le_bytes());
        }
        Bytes::from(t)
    }

    fn tlp(conn: usize, t: Bytes) -> Upcall {
        Upcall::Tlp {
            conn: ConnId(conn),
            class: OrderingClass::NonPosted,
            tlp: t,
        }
    }

    fn connected(conn: usize, epoch: u32) -> Upcall {
        Upcall::Event {
            conn: ConnId(conn),
            event: Event::Connected {
                host: HostId::new("h").unwrap(),
                peer: PeerAddr::Mem(conn as u32),
                peer_epoch: epoch,
            },
        }
    }

    fn down(conn: usize) -> Upcall {
        Upcall::Event {
            conn: ConnId(conn),
            event: Event::Down {
                reason: DownReason::IdleTimeout,
                failed_nonposted: Vec::new(),
            },
        }
    }

    struct Rig {
        ep: Proxy,
        out: Receiver<Vec<u8>>,
        s: Sessions<ConnId>,
        changes: Vec<Option<ConnId>>,
    }

    impl Rig {
        fn new() -> Rig {
            let (mut ep, out) = Proxy::new(ProxyConfig::default());
            ep.add_function(Bdf::new(0, 0, 0), Box::new(DmaEngine::new(4096)))
                .unwrap();
            Rig {
                ep,
                out,
                s: Sessions::default(),
                changes: Vec::new(),
            }
        }

        fn up(&mut self, key: usize, u: Upcall) {
            let changes = &mut self.changes;
            self.s
                .on_upcall(&mut self.ep, ConnId(key), u, &mut |o| changes.push(o));
        }

        /// The Command register, read by session `conn`.
        fn command(&mut self, conn: usize) -> u16 {
            self.up(conn, tlp(conn, cfg_tlp(9, 0x04, None)));
            let c = self.out.try_recv().expect("a completion");
            let h = ParsedHeader::parse(&c).unwrap();
            u16::from_le_bytes([c[h.payload.start], c[h.payload.start + 1]])
        }

        fn set_command(&mut self, conn: usize, v: u16) {
            self.up(conn, tlp(conn, cfg_tlp(8, 0x04, Some(u32::from(v)))));
            self.out.try_recv().expect("a CfgWr completion");
        }
    }

    #[test]
    fn the_last_sender_is_served() {
        let mut r = Rig::new();
        assert_eq!(r.s.owner(), None);
        r.up(1, connected(1, 7));
        assert_eq!(r.s.owner(), Some(ConnId(1)));
        r.set_command(2, 0x6);
        assert_eq!(r.s.owner(), Some(ConnId(2)));
        assert_eq!(r.changes, vec![Some(ConnId(1)), Some(ConnId(2))]);
    }

    #[test]
    fn a_restarted_host_resets_every_function() {
        let mut r = Rig::new();
        r.up(1, connected(1, 7));
        r.set_command(1, 0x6);
        assert_eq!(r.command(1) & 0x6, 0x6);
        // Same epoch again (a reconnection of the same incarnation): nothing is reset.
        r.up(1, connected(1, 7));
        assert_eq!(r.command(1) & 0x6, 0x6);
        // New epoch: the host restarted.
        r.up(1, connected(1, 8));
        assert_eq!(r.command(1) & 0x6, 0);
    }

    #[test]
    fn losing_the_served_session_resets_only_when_it_was_served() {
        let mut r = Rig::new();
        r.up(1, connected(1, 7));
        r.set_command(1, 0x6);
        // Another session going down changes nothing.
        r.up(2, down(2));
        assert_eq!(r.s.owner(), Some(ConnId(1)));
        assert_eq!(r.command(1) & 0x6, 0x6);
        r.up(1, down(1));
        assert_eq!(r.s.owner(), None);
        assert_eq!(r.changes.last(), Some(&None));
        assert_eq!(r.command(1) & 0x6, 0, "surprise-down reset the function");
    }
}
