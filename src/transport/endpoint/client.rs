//! The host's half of the handshake (docs/protocol.md §3): INIT with a strictly increasing
//! timestamp, RESP, the key confirmation, COOKIE replies, RESET probes and rekeys in place.
//! A session counts as connected only once the appliance confirmed it (its first
//! authenticated frame under the new keys).

use super::{ClientHs, Endpoint, HsKind, Role, SidRef};
use crate::transport::event::{ConnId, DownReason, Event};
use crate::transport::frame::{FrameHeader, VERSION};
use crate::transport::handshake::{
    cipher_bit, HandshakeError, InitPayload, Initiator, Tai64N, INIT_LEN,
};
use crate::transport::keyring::FrameKeys;
use crate::transport::logging::Kind;
use crate::transport::session::{Session, SessionParams};
use crate::transport::time::Instant;
use crate::transport::PeerAddr;
use bytes::BytesMut;
use rand::Rng;
use std::time::Duration;

impl Endpoint {
    /// The next INIT timestamp: the wall clock (read once, at creation, then advanced by
    /// `now`), and never equal to or below the previous one.
    fn timestamp(&mut self, now: Instant) -> Tai64N {
        let wall = self.wall_origin.after(Duration::from_nanos(now.as_nanos()));
        let t = match self.last_ts {
            Some(last) if wall <= last => last.next(),
            _ => wall,
        };
        self.last_ts = Some(t);
        t
    }

    /// Send a fresh INIT for slot `i` (every attempt is new: ephemeral, timestamp, sid).
    pub(super) fn start_handshake(
        &mut self,
        now: Instant,
        i: usize,
        kind: HsKind,
        retry: Duration,
    ) {
        if let Some(old) = self.slots[i].hs.take() {
            self.retire(old.init.sid());
        }
        let Some(server) = self.slots[i].server else {
            return;
        };
        let epoch = match kind {
            HsKind::Rekey => match &self.slots[i].session {
                Some(s) => s.p.local_epoch,
                None => return,
            },
            HsKind::Connect | HsKind::Probe => {
                self.next_epoch = self.next_epoch.wrapping_add(1).max(1);
                self.next_epoch
            }
        };
        let sid = self.fresh_sid();
        let payload = InitPayload {
            timestamp: self.timestamp(now),
            epoch,
            min_version: VERSION,
            max_version: VERSION,
            mtu: self.cfg.mtu.min(usize::from(u16::MAX)) as u16,
            encrypt: self.cfg.encrypt,
            rekey: kind == HsKind::Rekey,
            ciphers: self.ciphers(),
            credits: self.cfg.credits,
        };
        let mut frame = [0u8; INIT_LEN];
        let slot = &self.slots[i];
        let init = match Initiator::start(
            &self.local,
            &slot.public,
            slot.psk.as_ref(),
            sid,
            &payload,
            &slot.jar,
            now,
            &mut frame,
        ) {
            Ok(init) => init,
            Err(e) => {
                tracing::error!(host = %slot.host, error = %e, "transport: cannot build a handshake");
                return;
            }
        };
        let _ = self.queue(server, &frame);
        self.by_sid.insert(sid, SidRef::Handshake(i));
        self.slots[i].hs = Some(ClientHs {
            init,
            kind,
            epoch,
            next_retry: now + retry,
            retry,
            sent: now,
            after_cookie: false,
        });
        self.slots[i].reconnect_at = None;
        if kind == HsKind::Rekey {
            if let Some(s) = self.slots[i].session.as_mut() {
                s.keys.rekey_in_progress = true;
            }
        }
    }

    pub(super) fn start_rekey(&mut self, now: Instant, i: usize) {
        let retry = self.slots[i]
            .session
            .as_ref()
            .map_or(self.cfg.handshake_retry, Session::rekey_retry);
        self.start_handshake(now, i, HsKind::Rekey, retry);
    }

    pub(super) fn on_resp(&mut self, now: Instant, from: PeerAddr, h: &FrameHeader, frame: &[u8]) {
        let Some(&SidRef::Handshake(i)) = self.by_sid.get(&h.dst_session) else {
            self.stats.drop_bad_handshake += 1;
            return;
        };
        let own = self.own_macs.clone();
        let Some(hs) = self.slots[i].hs.as_mut() else {
            self.stats.drop_bad_handshake += 1;
            return;
        };
        let (resp, keys) = match hs.init.finish(frame, &own) {
            Ok(r) => r,
            Err(e) => {
                match e {
                    HandshakeError::BadMac1 => self.stats.drop_bad_mac1 += 1,
                    HandshakeError::Shape | HandshakeError::Frame(_) => {
                        self.stats.drop_bad_handshake += 1
                    }
                    _ => self.stats.drop_bad_handshake_mac += 1,
                }
                if let Some(sup) = self.log.allow(Kind::Refused, now) {
                    tracing::warn!(peer = %from, error = %e, suppressed = sup, "transport: RESP refused");
                }
                return;
            }
        };
        let offered = hs.init.payload().ciphers;
        let Some(hs) = self.slots[i].hs.take() else {
            return;
        };
        let sid = hs.init.sid();
        if resp.version != VERSION || offered & cipher_bit(resp.cipher) == 0 {
            // Authenticated, so the appliance really said so: a configuration mismatch.
            self.stats.handshakes_refused += 1;
            tracing::error!(
                host = %self.slots[i].host,
                peer = %from,
                version = resp.version,
                cipher = %resp.cipher,
                "transport: the appliance chose a version or cipher we did not offer"
            );
            self.retire(sid);
            if hs.kind != HsKind::Rekey {
                self.slots[i].reconnect_at = Some(now + self.cfg.reconnect_max);
            }
            return;
        }
        let fk = FrameKeys::of(Role::Client, keys, resp.cipher, resp.encrypt);
        let host = self.slots[i].host;
        match hs.kind {
            HsKind::Rekey => {
                match self.slots[i].session.as_mut() {
                    Some(s) if s.p.peer_epoch == resp.epoch => {
                        s.rekeyed(sid, resp.session, &fk, now);
                        self.by_sid.insert(sid, SidRef::Session(i));
                        tracing::info!(%host, peer = %from, cipher = %resp.cipher, rekeys = s.keys.rekeys, "transport: session rekeyed");
                    }
                    _ => self.retire(sid),
                }
                self.collect_retired(i);
                return;
            }
            HsKind::Probe => {
                let same = self.slots[i]
                    .session
                    .as_ref()
                    .is_some_and(|s| s.p.peer_epoch == resp.epoch);
                if same {
                    // The RESET was not a server restart: keep the running session.
                    self.retire(sid);
                    return;
                }
            }
            HsKind::Connect => {}
        }
        if self.slots[i].session.is_some() {
            self.stats.peer_restarts += 1;
            self.end_session(i, DownReason::PeerRestarted);
        }
        if let Some((old, _, _)) = self.slots[i].confirming.take() {
            for sid in old.keys.rx_sids() {
                self.retire(sid);
            }
        }
        let params = SessionParams {
            local_session: sid,
            peer_session: resp.session,
            local_epoch: hs.epoch,
            peer_epoch: resp.epoch,
            peer: from,
            role: Role::Client,
            mtu: usize::from(resp.mtu).min(self.cfg.mtu),
            local_credits: self.cfg.credits,
            peer_credits: resp.credits,
        };
        let mut s = Session::new(params, &fk, self.cfg.clone(), now, self.jitter.gen());
        s.seed_rtt(now.saturating_duration_since(hs.sent));
        // The key confirmation: the appliance allocates the session when this arrives.
        s.force_ack();
        self.by_sid.insert(sid, SidRef::Confirming(i));
        self.slots[i].confirming = Some((s, now + hs.retry, hs.retry));
    }

    pub(super) fn on_confirming_data(
        &mut self,
        now: Instant,
        from: PeerAddr,
        i: usize,
        h: &FrameHeader,
        frame: BytesMut,
    ) {
        let Some((s, _, _)) = self.slots[i].confirming.as_mut() else {
            return;
        };
        if s.handle_data(now, h, frame).is_err() {
            return;
        }
        let Some((mut s, _, _)) = self.slots[i].confirming.take() else {
            return;
        };
        s.p.peer = from;
        for sid in s.keys.rx_sids() {
            self.by_sid.insert(sid, SidRef::Session(i));
        }
        let (epoch, cipher) = (s.p.peer_epoch, s.keys.cipher());
        self.slots[i].session = Some(s);
        self.slots[i].backoff = Duration::from_millis(10);
        self.stats.handshakes += 1;
        let host = self.slots[i].host;
        tracing::info!(%host, peer = %from, %cipher, "transport: session established");
        self.events.push_back((
            ConnId(i),
            Event::Connected {
                host,
                peer: from,
                peer_epoch: epoch,
            },
        ));
    }

    pub(super) fn on_cookie(&mut self, now: Instant, h: &FrameHeader, frame: &[u8]) {
        let Some(&SidRef::Handshake(i)) = self.by_sid.get(&h.dst_session) else {
            self.stats.drop_bad_handshake += 1;
            return;
        };
        let Some(hs) = self.slots[i].hs.as_ref() else {
            self.stats.drop_bad_handshake += 1;
            return;
        };
        let mac1 = *hs.init.mac1();
        let (kind, retry, again) = (hs.kind, hs.retry, hs.after_cookie);
        if self.slots[i].jar.consume(now, frame, &mac1).is_err() {
            self.stats.drop_bad_handshake_mac += 1;
            return;
        }
        self.stats.cookies_received += 1;
        if let Some(sup) = self.log.allow(Kind::Load, now) {
            tracing::info!(host = %self.slots[i].host, suppressed = sup, "transport: the appliance is under load; retrying with its cookie");
        }
        if again {
            // The retry timer will send the next INIT, with this cookie.
            return;
        }
        // At once, with mac2. The attempt it answered is retired, so a second COOKIE for it
        // (a duplicate, or an on-path attacker) cannot make us send again.
        let kind = if kind == HsKind::Probe && self.slots[i].session.is_none() {
            HsKind::Connect
        } else {
            kind
        };
        self.start_handshake(now, i, kind, retry);
        if let Some(hs) = self.slots[i].hs.as_mut() {
            hs.after_cookie = true;
        }
    }

    pub(super) fn on_reset(&mut self, now: Instant, h: &FrameHeader) {
        self.stats.resets_received += 1;
        if self.role != Role::Client {
            return;
        }
        // The RESET names the session id the server did not know: our peer's id.
        let Some(i) = self.slots.iter().position(|s| {
            s.session
                .as_ref()
                .is_some_and(|s| s.keys.tx_sid() == h.dst_session)
        }) else {
            return;
        };
        if self.slots[i].hs.is_none() {
            self.start_handshake(now, i, HsKind::Probe, self.cfg.handshake_retry);
        }
    }

    /// Host timers of slot `i`: confirmation deadline, reconnect, handshake retry, rekey.
    pub(super) fn client_timers(&mut self, now: Instant, i: usize) {
        let mut restart = None;
        if let Some((c, deadline, retry)) = self.slots[i].confirming.as_mut() {
            if c.handle_timeout(now).is_some() || *deadline <= now {
                restart = Some(*retry);
            }
        }
        if let Some(retry) = restart {
            // The appliance never confirmed: start over with a fresh INIT.
            if let Some((c, _, _)) = self.slots[i].confirming.take() {
                for sid in c.keys.rx_sids() {
                    self.retire(sid);
                }
            }
            let retry = (retry * 2).min(self.cfg.reconnect_max);
            self.start_handshake(now, i, HsKind::Connect, retry);
        }
        if self.slots[i].reconnect_at.is_some_and(|t| t <= now) {
            self.start_handshake(now, i, HsKind::Connect, self.cfg.handshake_retry);
        }
        if let Some(hs) = self.slots[i].hs.as_ref() {
            if hs.next_retry <= now {
                let retry = (hs.retry * 2).min(self.cfg.reconnect_max);
                let kind = match hs.kind {
                    HsKind::Probe if self.slots[i].session.is_none() => HsKind::Connect,
                    k => k,
                };
                self.start_handshake(now, i, kind, retry);
            }
        }
        let rekey = self.slots[i].hs.is_none()
            && self.slots[i]
                .session
                .as_ref()
                .is_some_and(|s| s.wants_rekey(now));
        if rekey {
            self.start_rekey(now, i);
        }
    }
}
