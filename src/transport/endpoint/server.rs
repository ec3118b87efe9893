//! The appliance's half of the handshake (docs/protocol.md §3): the cheap checks that come
//! before any public-key work (header, mac1, load, cookie, per-source rate), then the Noise
//! read, the host lookup by static key, the timestamp check against replays, and the RESP.
//! No session is allocated until the host's first authenticated DATA frame: until then a
//! host has one bounded pending slot, which only a newer INIT from that same host replaces.

use super::{Endpoint, Pending, SidRef, LOAD_HOLD};
use crate::transport::cookie::{verify_mac2_with, COOKIE_LEN};
use crate::transport::crypto::{Cipher, PacketKey};
use crate::transport::event::{ConnId, DownReason, Event, Role};
use crate::transport::frame::{flags, FrameHeader, VERSION};
use crate::transport::handshake::{
    cipher_bit, InitFrame, InitPayload, RespPayload, Responder, RESP_LEN,
};
use crate::transport::keyring::FrameKeys;
use crate::transport::logging::Kind;
use crate::transport::ratelimit::Verdict;
use crate::transport::session::{Session, SessionParams};
use crate::transport::time::Instant;
use crate::transport::PeerAddr;
use bytes::BytesMut;
use rand::Rng;

impl Endpoint {
    /// The AEAD for a host that offered `offered`: AES-256-GCM when both have it, else
    /// ChaCha20-Poly1305.
    fn choose_cipher(&self, offered: u8) -> Option<Cipher> {
        let common = offered & self.ciphers();
        [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305]
            .into_iter()
            .find(|&c| common & cipher_bit(c) != 0)
    }

    fn refused(&mut self, now: Instant, from: &PeerAddr, why: &'static str) {
        if let Some(sup) = self.log.allow(Kind::Refused, now) {
            tracing::warn!(peer = %from, reason = why, suppressed = sup, "transport: handshake refused");
        }
    }

    /// Whether an INIT that passed mac1 may have the public-key work done now. Under load it
    /// must carry a valid mac2 (else it earns a COOKIE) and its source must be within rate.
    fn admit(&mut self, now: Instant, from: &PeerAddr, init: InitFrame<'_>) -> bool {
        let under_load = self.under_load_until.is_some_and(|t| now < t);
        if !under_load && self.load.allow(now) {
            return true;
        }
        if !under_load {
            tracing::warn!(
                rate = self.cfg.handshake_rate,
                "transport: handshake budget spent; under load, asking for cookies"
            );
        }
        self.under_load_until = Some(now + LOAD_HOLD);
        let cookie = self.cookies.cookie(now, from);
        if verify_mac2_with(&cookie, init.mac2_input(), init.mac2()) {
            return match self.sources.check(now, from) {
                Verdict::Allow => true,
                Verdict::Limited | Verdict::TableFull => {
                    self.stats.drop_rate_limited += 1;
                    if let Some(sup) = self.log.allow(Kind::Load, now) {
                        tracing::warn!(peer = %from, suppressed = sup, "transport: handshakes rate-limited for this source");
                    }
                    false
                }
            };
        }
        // Every INIT that passed mac1 gets its COOKIE (80 bytes for 204: no amplification),
        // so a flood cannot starve a genuine host of one.
        let mut f = [0u8; COOKIE_LEN];
        self.cookies
            .reply_with(&cookie, init.sender(), init.mac1(), &mut f);
        if self.queue(*from, &f) {
            self.stats.cookies_sent += 1;
        } else {
            self.stats.drop_under_load += 1;
        }
        if let Some(sup) = self.log.allow(Kind::Load, now) {
            tracing::warn!(peer = %from, suppressed = sup, "transport: under load; INIT answered with a cookie");
        }
        false
    }

    pub(super) fn on_init(&mut self, now: Instant, from: PeerAddr, frame: &[u8]) {
        if self.role != Role::Server {
            self.stats.drop_bad_handshake += 1;
            return;
        }
        let Ok(init) = InitFrame::new_checked(frame) else {
            self.stats.drop_bad_handshake += 1;
            return;
        };
        if !self.own_macs.verify_mac1(init.mac1_input(), init.mac1()) {
            self.stats.drop_bad_mac1 += 1;
            return;
        }
        if !self.admit(now, &from, init) {
            return;
        }
        self.stats.handshakes_processed += 1;
        let r = match Responder::read(&self.local, init) {
            Ok(r) => r,
            Err(_) => {
                self.stats.drop_bad_handshake_mac += 1;
                self.refused(now, &from, "INIT does not authenticate");
                return;
            }
        };
        let Some(&i) = self.by_key.get(r.remote()) else {
            self.stats.drop_unknown_host += 1;
            if let Some(sup) = self.log.allow(Kind::Refused, now) {
                tracing::warn!(peer = %from, key = %r.remote(), suppressed = sup,
                    "transport: handshake refused: static key not on the list of hosts");
            }
            return;
        };
        let p: InitPayload = r.payload().clone();
        if self.slots[i].last_ts.is_some_and(|t| p.timestamp <= t) {
            self.stats.drop_replayed_init += 1;
            if let Some(sup) = self.log.allow(Kind::Refused, now) {
                tracing::warn!(peer = %from, host = %self.slots[i].host, suppressed = sup,
                    "transport: handshake refused: replayed INIT (timestamp not newer than the last)");
            }
            return;
        }
        self.slots[i].last_ts = Some(p.timestamp);
        if p.min_version > VERSION || p.max_version < VERSION {
            self.stats.handshakes_refused += 1;
            self.refused(now, &from, "no common protocol version");
            return;
        }
        let Some(cipher) = self.choose_cipher(p.ciphers) else {
            self.stats.handshakes_refused += 1;
            self.refused(now, &from, "no common frame cipher");
            return;
        };
        let encrypt = p.encrypt || self.cfg.encrypt;
        if p.rekey {
            self.rekey(now, from, i, r, &p, cipher, encrypt);
            return;
        }
        if let Some(old) = self.slots[i].pending.take() {
            self.retire(old.sid);
        }
        let sid = self.fresh_sid();
        let mtu = p.mtu.min(self.cfg.mtu.min(usize::from(u16::MAX)) as u16);
        let resp = RespPayload {
            session: sid,
            epoch: self.epoch,
            version: VERSION,
            encrypt,
            cipher,
            mtu,
            credits: self.cfg.credits,
        };
        let peer_sid = r.sid();
        let psk = self.slots[i].psk.clone();
        let mut out = [0u8; RESP_LEN];
        let keys = match r.respond(psk.as_ref(), &resp, &mut out) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "transport: cannot answer a handshake");
                return;
            }
        };
        let keys = FrameKeys::of(Role::Server, keys, cipher, encrypt);
        self.by_sid.insert(sid, SidRef::Pending(i));
        self.slots[i].pending = Some(Pending {
            sid,
            peer_sid,
            peer_epoch: p.epoch,
            rx: PacketKey::new(cipher, &keys.rx, encrypt),
            keys,
            mtu,
            peer_credits: p.credits,
            expires: now + self.cfg.idle_timeout,
            sent: now,
        });
        let _ = self.queue(from, &out);
    }

    /// An authenticated rekey INIT for host `i`: new keys for its running session, which
    /// keeps everything else.
    #[allow(clippy::too_many_arguments)]
    fn rekey(
        &mut self,
        now: Instant,
        from: PeerAddr,
        i: usize,
        r: Responder,
        p: &InitPayload,
        cipher: Cipher,
        encrypt: bool,
    ) {
        let ok = self.slots[i]
            .session
            .as_ref()
            .is_some_and(|s| s.p.peer_epoch == p.epoch);
        if !ok {
            self.stats.handshakes_refused += 1;
            self.refused(now, &from, "rekey for a session that does not exist");
            return;
        }
        let sid = self.fresh_sid();
        let Some(s) = self.slots[i].session.as_mut() else {
            return;
        };
        let resp = RespPayload {
            session: sid,
            epoch: self.epoch,
            version: VERSION,
            encrypt,
            cipher,
            mtu: s.p.mtu.min(usize::from(u16::MAX)) as u16,
            credits: self.cfg.credits,
        };
        let peer_sid = r.sid();
        let mut out = [0u8; RESP_LEN];
        let keys = match r.respond(self.slots[i].psk.as_ref(), &resp, &mut out) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "transport: cannot answer a rekey");
                return;
            }
        };
        let keys = FrameKeys::of(Role::Server, keys, cipher, encrypt);
        let Some(s) = self.slots[i].session.as_mut() else {
            return;
        };
        s.keys.add_responder(sid, peer_sid, &keys, now);
        self.by_sid.insert(sid, SidRef::Session(i));
        self.collect_retired(i);
        tracing::debug!(host = %self.slots[i].host, peer = %from, "transport: rekey answered");
        let _ = self.queue(from, &out);
    }

    /// A DATA frame for a pending session: if it authenticates, the host holds the keys and
    /// is live — allocate the session (replacing an older one of the same host).
    pub(super) fn on_pending_data(
        &mut self,
        now: Instant,
        from: PeerAddr,
        i: usize,
        h: &FrameHeader,
        mut frame: BytesMut,
    ) {
        let Some(p) = self.slots[i].pending.as_ref() else {
            return;
        };
        let mode_ok = (h.flags & flags::ENCRYPTED != 0) == p.keys.encrypt;
        if h.src_epoch != p.peer_epoch
            || !mode_ok
            || h.pn == 0
            || p.rx.open(h.pn, &mut frame).is_err()
        {
            self.stats.drop_bad_handshake_mac += 1;
            return;
        }
        let Some(p) = self.slots[i].pending.take() else {
            return;
        };
        if self.slots[i].session.is_some() {
            self.stats.peer_restarts += 1;
            self.end_session(i, DownReason::PeerRestarted);
        }
        let params = SessionParams {
            local_session: p.sid,
            peer_session: p.peer_sid,
            local_epoch: self.epoch,
            peer_epoch: p.peer_epoch,
            peer: from,
            role: Role::Server,
            mtu: p.mtu.into(),
            local_credits: self.cfg.credits,
            peer_credits: p.peer_credits,
        };
        let mut s = Session::new(params, &p.keys, self.cfg.clone(), now, self.jitter.gen());
        s.seed_rtt(now.saturating_duration_since(p.sent));
        let ki = s.keys.rx_index(p.sid).unwrap_or(0);
        // Authenticated: the session exists even if the body is malformed (it is dropped).
        let _ = s.accept_opened(now, h, frame, ki);
        // Confirm to the host at once: it reports the session up on this frame.
        s.force_ack();
        let cipher = s.keys.cipher();
        self.by_sid.insert(p.sid, SidRef::Session(i));
        self.slots[i].session = Some(s);
        self.stats.handshakes += 1;
        // A newcomer measures its base delay behind everyone's queue: drain soon
        // (LEDBAT++'s initial slowdown, coordinated).
        let interval = self.cfg.cc_drain_interval;
        if !interval.is_zero() {
            let t = now + interval / 5;
            self.next_drain = Some(self.next_drain.map_or(t, |n| n.min(t)));
        }
        let host = self.slots[i].host;
        tracing::info!(%host, peer = %from, %cipher, "transport: session established");
        self.events.push_back((
            ConnId(i),
            Event::Connected {
                host,
                peer: from,
                peer_epoch: p.peer_epoch,
            },
        ));
    }
}
