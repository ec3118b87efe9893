//! The keys of one session over time (docs/protocol.md §3.5 "Rekeying"): the send key, up
//! to three receive keys (previous, current, next) each found by the session id the peer
//! addresses, and the per-key limits — age, frames sealed, failed tag checks.
//!
//! A rekey is a new Noise handshake inside the running session; the reliability state (TLP
//! sequence numbers, credits, replay buffer) does not change, only the keys. The host switches
//! its send key when it reads the RESP; the appliance when the first frame under the new key
//! arrives (so it never sends under a key the host may not have yet). Each side keeps an older
//! receive key for [`KeyLimits::overlap`] after a newer one was first used, so frames sealed
//! under it that are still in flight are not lost; a late one past that is simply dropped and
//! its TLPs are retransmitted under the new key.

use super::crypto::{Cipher, PacketKey, ReplayWindow};
use super::event::Role;
use super::handshake::SessionKeys;
use super::time::Instant;
use super::{Config, DownReason};
use std::time::Duration;
use zeroize::Zeroizing;

/// Raw frame keys from a handshake, for one side.
pub(crate) struct FrameKeys {
    pub tx: Zeroizing<[u8; 32]>,
    pub rx: Zeroizing<[u8; 32]>,
    pub cipher: Cipher,
    pub encrypt: bool,
}

impl FrameKeys {
    /// One side's frame keys from a finished handshake: the host (the Noise initiator,
    /// [`Role::Client`]) sends with `initiator_to_responder` and receives with
    /// `responder_to_initiator`; the appliance the other way round.
    pub fn of(role: Role, keys: SessionKeys, cipher: Cipher, encrypt: bool) -> Self {
        let SessionKeys {
            initiator_to_responder: i2r,
            responder_to_initiator: r2i,
        } = keys;
        let (tx, rx) = match role {
            Role::Client => (i2r, r2i),
            Role::Server => (r2i, i2r),
        };
        Self {
            tx,
            rx,
            cipher,
            encrypt,
        }
    }
}

impl std::fmt::Debug for FrameKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameKeys")
            .field("cipher", &self.cipher)
            .field("encrypt", &self.encrypt)
            .finish_non_exhaustive()
    }
}

/// When keys are renewed and retired (from [`Config`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyLimits {
    pub rekey_after: Duration,
    pub reject_after: Duration,
    pub rekey_after_frames: u64,
    pub reject_after_frames: u64,
    pub max_failed_tags: u64,
    pub overlap: Duration,
}

impl KeyLimits {
    pub fn from_config(c: &Config) -> KeyLimits {
        KeyLimits {
            rekey_after: c.rekey_after,
            reject_after: c.reject_after.max(c.rekey_after),
            rekey_after_frames: c.rekey_after_frames,
            reject_after_frames: c.reject_after_frames.max(c.rekey_after_frames),
            max_failed_tags: c.max_failed_tags.max(2),
            overlap: c.rekey_overlap,
        }
    }
}

#[derive(Debug)]
struct TxKey {
    peer_sid: u32,
    key: PacketKey,
    first_pn: u64,
    born: Instant,
}

#[derive(Debug)]
struct RxKey {
    sid: u32,
    key: PacketKey,
    window: ReplayWindow,
    born: Instant,
    failed: u64,
    used: bool,
    retire_at: Option<Instant>,
}

/// Why a frame did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// The packet number was seen or is too old.
    Replay,
    /// The tag did not verify.
    BadTag,
    /// …and that was one failure too many for this key: the session must end.
    TagLimit,
}

const RX_KEYS: usize = 3;

#[derive(Debug)]
pub(crate) struct KeyRing {
    tx: TxKey,
    /// Appliance side: the send key of a rekey, used once its receive key (the sid) is.
    next_tx: Option<(u32, TxKey)>,
    rx: [Option<RxKey>; RX_KEYS],
    limits: KeyLimits,
    /// Receive session ids no longer in use, for the endpoint to forget.
    pub retired: Vec<u32>,
    /// Host side: a rekey handshake is running (its own timer drives it).
    pub rekey_in_progress: bool,
    /// The peer asked for a rekey (an authenticated `REKEY` flag).
    peer_asked: bool,
    /// Completed key changes.
    pub rekeys: u64,
}

fn rx_key(sid: u32, keys: &FrameKeys, now: Instant) -> RxKey {
    RxKey {
        sid,
        key: PacketKey::new(keys.cipher, &keys.rx, keys.encrypt),
        window: ReplayWindow::default(),
        born: now,
        failed: 0,
        used: false,
        retire_at: None,
    }
}

fn tx_key(peer_sid: u32, keys: &FrameKeys, now: Instant, first_pn: u64) -> TxKey {
    TxKey {
        peer_sid,
        key: PacketKey::new(keys.cipher, &keys.tx, keys.encrypt),
        first_pn,
        born: now,
    }
}

impl KeyRing {
    /// The keys of a new session: receive on `rx_sid`, send to `tx_sid`.
    pub fn new(
        rx_sid: u32,
        tx_sid: u32,
        keys: &FrameKeys,
        now: Instant,
        limits: KeyLimits,
    ) -> KeyRing {
        KeyRing {
            tx: tx_key(tx_sid, keys, now, 1),
            next_tx: None,
            rx: [Some(rx_key(rx_sid, keys, now)), None, None],
            limits,
            retired: Vec::with_capacity(2 * RX_KEYS),
            rekey_in_progress: false,
            peer_asked: false,
            rekeys: 0,
        }
    }

    /// Which receive key a frame for `sid` uses.
    pub fn rx_index(&self, sid: u32) -> Option<usize> {
        self.rx
            .iter()
            .position(|k| k.as_ref().is_some_and(|k| k.sid == sid))
    }

    /// Every receive session id in use.
    pub fn rx_sids(&self) -> impl Iterator<Item = u32> + '_ {
        self.rx.iter().flatten().map(|k| k.sid)
    }

    /// The peer's session id we send to.
    pub fn tx_sid(&self) -> u32 {
        self.tx.peer_sid
    }

    /// Whether frames under receive key `ki` must be encrypted.
    pub fn rx_encrypts(&self, ki: usize) -> bool {
        self.rx[ki].as_ref().is_some_and(|k| k.key.encrypts())
    }

    /// Whether we encrypt what we send.
    pub fn tx_encrypts(&self) -> bool {
        self.tx.key.encrypts()
    }

    /// The AEAD of the send key.
    pub fn cipher(&self) -> Cipher {
        self.tx.key.cipher()
    }

    /// Check the packet number and the tag of a frame under key `ki`, decrypting it.
    pub fn open(&mut self, ki: usize, pn: u64, frame: &mut [u8]) -> Result<(), OpenError> {
        let max = self.limits.max_failed_tags;
        let Some(k) = self.rx[ki].as_mut() else {
            return Err(OpenError::BadTag);
        };
        if !k.window.check(pn) {
            return Err(OpenError::Replay);
        }
        if k.key.open(pn, frame).is_err() {
            k.failed += 1;
            return Err(if k.failed >= max {
                OpenError::TagLimit
            } else {
                OpenError::BadTag
            });
        }
        Ok(())
    }

    /// A frame under key `ki` was opened and is acted on: record its packet number. The first
    /// frame under a newer key retires the older ones (after the overlap) and, on the
    /// appliance, switches the send key. `next_pn` is our next packet number.
    pub fn accept(&mut self, ki: usize, pn: u64, now: Instant, next_pn: u64) {
        let Some(k) = self.rx[ki].as_mut() else {
            return;
        };
        k.window.record(pn);
        if k.used {
            return;
        }
        k.used = true;
        let (sid, born) = (k.sid, k.born);
        let overlap = self.limits.overlap;
        for o in self.rx.iter_mut().flatten() {
            if o.born < born || (o.born == born && o.sid != sid) {
                o.retire_at.get_or_insert(now + overlap);
            }
        }
        if let Some((s, _)) = &self.next_tx {
            if *s == sid {
                if let Some((_, mut t)) = self.next_tx.take() {
                    t.first_pn = next_pn;
                    self.tx = t;
                    self.rekeys += 1;
                    self.peer_asked = false;
                }
            }
        }
    }

    fn push_rx(&mut self, k: RxKey) {
        if let Some(slot) = self.rx.iter_mut().find(|s| s.is_none()) {
            *slot = Some(k);
            return;
        }
        // Full: the oldest goes.
        let oldest = (0..RX_KEYS)
            .min_by_key(|&i| self.rx[i].as_ref().map_or(Instant::ZERO, |k| k.born))
            .unwrap_or(0);
        if let Some(old) = self.rx[oldest].replace(k) {
            self.retired.push(old.sid);
        }
    }

    fn drop_rx(&mut self, sid: u32) {
        for s in self.rx.iter_mut() {
            if s.as_ref().is_some_and(|k| k.sid == sid) {
                *s = None;
                self.retired.push(sid);
            }
        }
    }

    /// Appliance side: a rekey handshake produced `keys`; receive them on `rx_sid` now, send
    /// under them to `tx_sid` once the host uses them. A rekey not yet used is replaced.
    pub fn add_responder(&mut self, rx_sid: u32, tx_sid: u32, keys: &FrameKeys, now: Instant) {
        if let Some((old, _)) = self.next_tx.take() {
            self.drop_rx(old);
        }
        self.push_rx(rx_key(rx_sid, keys, now));
        self.next_tx = Some((rx_sid, tx_key(tx_sid, keys, now, 0)));
    }

    /// Host side: the RESP of our rekey gave `keys`; send under them from now on (packet
    /// numbers go on from `next_pn`) and receive on `rx_sid` as soon as the appliance does.
    pub fn add_initiator(
        &mut self,
        rx_sid: u32,
        tx_sid: u32,
        keys: &FrameKeys,
        now: Instant,
        next_pn: u64,
    ) {
        self.push_rx(rx_key(rx_sid, keys, now));
        self.tx = tx_key(tx_sid, keys, now, next_pn);
        self.rekeys += 1;
        self.rekey_in_progress = false;
        self.peer_asked = false;
    }

    /// The peer asked for a rekey.
    pub fn on_rekey_request(&mut self) {
        self.peer_asked = true;
    }

    /// Frames sealed under the send key so far.
    fn sealed(&self, next_pn: u64) -> u64 {
        next_pn.saturating_sub(self.tx.first_pn)
    }

    fn failed_max(&self) -> u64 {
        self.rx
            .iter()
            .flatten()
            .map(|k| k.failed)
            .max()
            .unwrap_or(0)
    }

    /// Whether one more frame may be sealed (below the hard per-key limit).
    pub fn can_seal(&self, next_pn: u64) -> bool {
        self.sealed(next_pn) < self.limits.reject_after_frames
    }

    /// Seal a frame with the send key.
    pub fn seal(&self, pn: u64, frame: &mut [u8]) {
        self.tx.key.seal(pn, frame);
    }

    /// Host side: whether a rekey is due (age, frames sealed, failed tags, or the appliance
    /// asked).
    pub fn wants_rekey(&self, now: Instant, next_pn: u64) -> bool {
        !self.rekey_in_progress
            && (now >= self.tx.born + self.limits.rekey_after
                || self.sealed(next_pn) >= self.limits.rekey_after_frames
                || self.failed_max() >= self.limits.max_failed_tags / 2
                || self.peer_asked)
    }

    /// Appliance side: whether to ask the host for a rekey (our own counters are near a
    /// limit, or the host is late).
    pub fn asks_rekey(&self, now: Instant, next_pn: u64) -> bool {
        let late =
            self.limits.rekey_after + (self.limits.reject_after - self.limits.rekey_after) / 2;
        self.next_tx.is_none()
            && (self.sealed(next_pn) >= self.limits.rekey_after_frames
                || self.failed_max() >= self.limits.max_failed_tags / 2
                || now >= self.tx.born + late)
    }

    /// Retire receive keys past their overlap or age; `Some` when the send key is too old.
    /// (A key that sealed its limit of frames just stops sealing until the rekey lands.)
    pub fn on_timeout(&mut self, now: Instant) -> Option<DownReason> {
        let reject = self.limits.reject_after;
        for i in 0..RX_KEYS {
            let expired = self.rx[i]
                .as_ref()
                .is_some_and(|k| k.retire_at.is_some_and(|t| t <= now) || now >= k.born + reject);
            if expired {
                if let Some(k) = self.rx[i].take() {
                    self.retired.push(k.sid);
                }
            }
        }
        if let Some((sid, t)) = &self.next_tx {
            if now >= t.born + reject {
                let sid = *sid;
                self.next_tx = None;
                self.drop_rx(sid);
            }
        }
        if now >= self.tx.born + reject {
            return Some(DownReason::KeyExpired);
        }
        None
    }

    /// The next deadline of the key timers (`host`: include the rekey time).
    pub fn deadline(&self, host: bool) -> Instant {
        let mut t = self.tx.born + self.limits.reject_after;
        if host && !self.rekey_in_progress {
            t = t.min(self.tx.born + self.limits.rekey_after);
        }
        for k in self.rx.iter().flatten() {
            if let Some(r) = k.retire_at {
                t = t.min(r);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::{HEADER_LEN, TAG_LEN};

    const MS: Duration = Duration::from_millis(1);

    fn keys(b: u8) -> FrameKeys {
        FrameKeys {
            tx: Zeroizing::new([b; 32]),
            rx: Zeroizing::new([b ^ 0xff; 32]),
            cipher: Cipher::ChaCha20Poly1305,
            encrypt: true,
        }
    }

    fn mirror(k: &FrameKeys) -> FrameKeys {
        FrameKeys {
            tx: k.rx.clone(),
            rx: k.tx.clone(),
            cipher: k.cipher,
            encrypt: k.encrypt,
        }
    }

    fn limits() -> KeyLimits {
        KeyLimits {
            rekey_after: 100 * MS,
            reject_after: 300 * MS,
            rekey_after_frames: 1000,
            reject_after_frames: 2000,
            max_failed_tags: 10,
            overlap: 50 * MS,
        }
    }

    fn frame(ring: &KeyRing, pn: u64) -> Vec<u8> {
        let mut f = vec![1u8; HEADER_LEN + 8 + TAG_LEN];
        ring.seal(pn, &mut f);
        f
    }

    #[test]
    fn rekey_switches_senders_in_order_and_retires_after_overlap() {
        let t0 = Instant::from_nanos(1);
        let k1 = keys(1);
        // host receives on 10, appliance on 20
        let mut host = KeyRing::new(10, 20, &k1, t0, limits());
        let mut app = KeyRing::new(20, 10, &mirror(&k1), t0, limits());
        let ki = app.rx_index(20).unwrap();
        let mut f = frame(&host, 1);
        app.open(ki, 1, &mut f).unwrap();
        app.accept(ki, 1, t0, 1);
        // rekey: appliance makes keys (receives on 21), host learns them (receives on 11)
        let k2 = keys(2);
        let t1 = t0 + 10 * MS;
        app.add_responder(21, 11, &mirror(&k2), t1);
        assert_eq!(
            app.tx_sid(),
            10,
            "appliance keeps sending under the old key"
        );
        host.add_initiator(11, 21, &k2, t1, 5);
        assert_eq!(host.tx_sid(), 21, "host switches at once");
        // an old frame still in flight opens; the new one switches the appliance
        let mut old = frame(&KeyRing::new(99, 20, &k1, t0, limits()), 4);
        app.open(app.rx_index(20).unwrap(), 4, &mut old).unwrap();
        let mut new = frame(&host, 5);
        let ki = app.rx_index(21).unwrap();
        app.open(ki, 5, &mut new).unwrap();
        app.accept(ki, 5, t1, 7);
        assert_eq!(app.tx_sid(), 11);
        assert_eq!((app.rekeys, host.rekeys), (1, 1));
        // the old receive key lives for the overlap, then goes
        assert!(app.on_timeout(t1 + 49 * MS).is_none());
        assert!(app.rx_index(20).is_some());
        assert!(app.on_timeout(t1 + 50 * MS).is_none());
        assert!(app.rx_index(20).is_none());
        assert_eq!(app.retired, vec![20]);
    }

    #[test]
    fn failed_tags_are_limited_per_key() {
        let t0 = Instant::ZERO;
        let mut r = KeyRing::new(1, 2, &keys(3), t0, limits());
        let mut results = Vec::new();
        for pn in 1..=10 {
            let mut f = vec![0u8; HEADER_LEN + TAG_LEN];
            results.push(r.open(0, pn, &mut f));
        }
        assert!(results[..9].iter().all(|r| *r == Err(OpenError::BadTag)));
        assert_eq!(results[9], Err(OpenError::TagLimit));
        assert!(r.wants_rekey(t0, 1), "half the limit asks for new keys");
    }

    #[test]
    fn limits_trigger_rekey_then_expiry() {
        let t0 = Instant::ZERO;
        let mut r = KeyRing::new(1, 2, &keys(3), t0, limits());
        assert!(!r.wants_rekey(t0 + 99 * MS, 1));
        assert!(r.wants_rekey(t0 + 100 * MS, 1), "age");
        assert!(r.wants_rekey(t0, 1001), "frames");
        assert!(!r.asks_rekey(t0, 1) && r.asks_rekey(t0, 1001));
        assert!(r.asks_rekey(t0 + 200 * MS, 1), "the host is late");
        r.rekey_in_progress = true;
        assert!(!r.wants_rekey(t0 + 100 * MS, 1));
        assert!(r.can_seal(2000) && !r.can_seal(2001));
        assert_eq!(r.on_timeout(t0 + 300 * MS), Some(DownReason::KeyExpired));
        assert_eq!(r.on_timeout(t0 + 299 * MS), None);
    }

    #[test]
    fn an_unused_rekey_is_replaced() {
        let t0 = Instant::ZERO;
        let mut app = KeyRing::new(20, 10, &keys(1), t0, limits());
        app.add_responder(21, 11, &keys(2), t0);
        app.add_responder(22, 12, &keys(3), t0);
        assert!(app.rx_index(21).is_none() && app.rx_index(22).is_some());
        assert_eq!(app.retired, vec![21]);
        assert_eq!(app.rx_sids().count(), 2);
    }
}
