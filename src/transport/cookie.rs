//! WireGuard's denial-of-service defences for the handshake (docs/protocol.md §3.4, after the
//! WireGuard paper §5.3 and §5.4.7): `mac1` on every INIT and RESP, keyed by the receiver's
//! public key, so a flood of garbage is dropped after one BLAKE2s; and, when the appliance is
//! under load, `mac2` keyed by a *cookie* that proves the sender can receive at its source
//! address, handed out in an encrypted COOKIE frame (type 5).
//!
//! * `mac1 = MAC(HASH("mac1----" ‖ Spub_receiver), msg[..mac1])`
//! * `cookie = MAC(R, source address)`, `R` a random secret replaced every 2 minutes
//! * `mac2 = MAC(cookie, msg[..mac2])`
//! * COOKIE body = `nonce(24) ‖ XAEAD(HASH("cookie--" ‖ Spub_appliance), nonce, cookie, mac1)`
//!
//! `HASH` is BLAKE2s-256, `MAC` keyed BLAKE2s with a 16-byte output, `XAEAD`
//! XChaCha20-Poly1305 — the `blake2` and `chacha20poly1305` crates, nothing of our own.

use super::frame::{FrameHeader, FrameType, HEADER_LEN};
use super::keys::PublicKey;
use super::time::Instant;
use super::PeerAddr;
use blake2::digest::{Digest, Mac};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::rngs::OsRng;
use rand::RngCore;
use std::time::Duration;
use zeroize::Zeroizing;

/// Bytes of mac1 and mac2.
pub const MAC_LEN: usize = 16;
/// Bytes of a COOKIE body: nonce, encrypted cookie, tag.
pub const COOKIE_BODY_LEN: usize = 24 + MAC_LEN + 16;
/// Bytes of a whole COOKIE frame.
pub const COOKIE_LEN: usize = HEADER_LEN + COOKIE_BODY_LEN;
/// How long the appliance's cookie secret (and so a cookie) lives.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// How long a host uses a cookie: a little less, so it never sends one just expired.
const COOKIE_USE_LIFETIME: Duration = Duration::from_secs(115);

const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";

/// COOKIE body layout.
mod field {
    use std::ops::Range;
    pub const NONCE: Range<usize> = 0..24;
    pub const COOKIE: Range<usize> = 24..40;
    pub const TAG: Range<usize> = 40..56;
}

/// Why a COOKIE frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// Wrong length or header fields.
    #[error("COOKIE frame malformed")]
    Shape,
    /// Did not decrypt: forged, or not an answer to our last INIT.
    #[error("COOKIE frame does not authenticate")]
    Decrypt,
}

type Mac16 = Blake2sMac<blake2::digest::consts::U16>;

fn hash(label: &[u8], key: &PublicKey) -> Zeroizing<[u8; 32]> {
    let mut h = Blake2s256::new();
    h.update(label);
    h.update(key.as_bytes());
    Zeroizing::new(h.finalize().into())
}

/// Keyed BLAKE2s-128. Keys of 1..=32 bytes are always accepted.
fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut m = <Mac16 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("BLAKE2s takes keys of 1 to 32 bytes"));
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize().into_bytes().into()
}

/// Constant-time comparison of two MACs.
fn ct_eq(a: &[u8; MAC_LEN], b: &[u8]) -> bool {
    b.len() == MAC_LEN && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The source address as cookie input: a kind byte, then the address bytes.
fn addr_bytes(a: &PeerAddr, out: &mut [u8; 19]) -> usize {
    match a {
        PeerAddr::Udp(s) => {
            let port = s.port().to_be_bytes();
            match s.ip() {
                std::net::IpAddr::V4(ip) => {
                    out[0] = 4;
                    out[1..5].copy_from_slice(&ip.octets());
                    out[5..7].copy_from_slice(&port);
                    7
                }
                std::net::IpAddr::V6(ip) => {
                    out[0] = 6;
                    out[1..17].copy_from_slice(&ip.octets());
                    out[17..19].copy_from_slice(&port);
                    19
                }
            }
        }
        PeerAddr::Eth(m) => {
            out[0] = 0xe;
            out[1..7].copy_from_slice(m);
            7
        }
        PeerAddr::Mem(n) => {
            out[0] = 0x3;
            out[1..5].copy_from_slice(&n.to_be_bytes());
            5
        }
    }
}

/// The two MAC keys derived from one public key (the receiver's). mac1's BLAKE2s state is
/// keyed once here, so checking a mac1 costs only the message's blocks.
#[derive(Clone)]
pub struct MacKeys {
    mac1: Mac16,
    cookie: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MacKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKeys(..)")
    }
}

impl MacKeys {
    /// Keys for messages to the owner of `receiver`.
    pub fn new(receiver: &PublicKey) -> MacKeys {
        MacKeys {
            mac1: <Mac16 as KeyInit>::new_from_slice(&hash(LABEL_MAC1, receiver)[..])
                .unwrap_or_else(|_| unreachable!("a 32-byte BLAKE2s key")),
            cookie: hash(LABEL_COOKIE, receiver),
        }
    }

    /// mac1 over `msg` (every byte before the mac1 field).
    pub fn mac1(&self, msg: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.mac1.clone();
        Mac::update(&mut m, msg);
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is the mac1 of `msg`.
    pub fn verify_mac1(&self, msg: &[u8], tag: &[u8]) -> bool {
        ct_eq(&self.mac1(msg), tag)
    }
}

/// Whether `tag` is the mac2 of `msg` under `cookie`. An all-zero tag (the host has no
/// cookie) is refused without computing anything: a real mac2 is zero with probability 2^-128.
pub fn verify_mac2_with(cookie: &[u8; MAC_LEN], msg: &[u8], tag: &[u8]) -> bool {
    if tag.iter().all(|&b| b == 0) {
        return false;
    }
    ct_eq(&mac(cookie, &[msg]), tag)
}

/// The appliance side: makes cookies, checks mac2, writes COOKIE frames.
#[derive(Debug)]
pub struct CookieMaker {
    keys: MacKeys,
    secret: Zeroizing<[u8; 32]>,
    born: Option<Instant>,
}

impl CookieMaker {
    /// For an appliance whose public key is `own`.
    pub fn new(own: &PublicKey) -> CookieMaker {
        CookieMaker {
            keys: MacKeys::new(own),
            secret: Zeroizing::new([0; 32]),
            born: None,
        }
    }

    /// The mac1 keys of messages sent to us.
    pub fn keys(&self) -> &MacKeys {
        &self.keys
    }

    /// The current cookie of `src` (a new secret every two minutes).
    pub fn cookie(&mut self, now: Instant, src: &PeerAddr) -> [u8; MAC_LEN] {
        if self
            .born
            .is_none_or(|b| now.saturating_duration_since(b) >= COOKIE_SECRET_LIFETIME)
        {
            OsRng.fill_bytes(&mut self.secret[..]);
            self.born = Some(now);
        }
        let mut a = [0u8; 19];
        let n = addr_bytes(src, &mut a);
        mac(&self.secret[..], &[&a[..n]])
    }

    /// Whether `tag` is a valid mac2 of `msg` (every byte before mac2) from `src`.
    pub fn verify_mac2(&mut self, now: Instant, src: &PeerAddr, msg: &[u8], tag: &[u8]) -> bool {
        let c = self.cookie(now, src);
        verify_mac2_with(&c, msg, tag)
    }

    /// Write a COOKIE frame answering an INIT from `src` whose sender session id is `sid` and
    /// whose mac1 was `mac1`.
    pub fn reply(
        &mut self,
        now: Instant,
        src: &PeerAddr,
        sid: u32,
        mac1: &[u8],
        out: &mut [u8; COOKIE_LEN],
    ) {
        let cookie = self.cookie(now, src);
        self.reply_with(&cookie, sid, mac1, out);
    }

    /// [`reply`](Self::reply) with the cookie already computed.
    pub fn reply_with(
        &self,
        cookie: &[u8; MAC_LEN],
        sid: u32,
        mac1: &[u8],
        out: &mut [u8; COOKIE_LEN],
    ) {
        out.fill(0);
        FrameHeader {
            ty: FrameType::Cookie,
            flags: 0,
            n_records: 0,
            body_len: COOKIE_BODY_LEN as u16,
            dst_session: sid,
            src_epoch: 0,
            pn: 0,
        }
        .emit(out);
        let b = &mut out[HEADER_LEN..];
        OsRng.fill_bytes(&mut b[field::NONCE]);
        let nonce = *XNonce::from_slice(&b[field::NONCE]);
        b[field::COOKIE].copy_from_slice(cookie);
        let aead = XChaCha20Poly1305::new(self.keys.cookie[..].into());
        // Encrypting 16 bytes cannot exceed XChaCha20-Poly1305's limits.
        if let Ok(tag) = aead.encrypt_in_place_detached(&nonce, mac1, &mut b[field::COOKIE]) {
            b[field::TAG].copy_from_slice(&tag);
        }
    }
}

/// The host side: the mac keys for one appliance and the latest cookie it gave us.
#[derive(Debug, Clone)]
pub struct CookieJar {
    keys: MacKeys,
    cookie: Option<([u8; MAC_LEN], Instant)>,
}

impl CookieJar {
    /// For the appliance whose public key is `appliance`.
    pub fn new(appliance: &PublicKey) -> CookieJar {
        CookieJar {
            keys: MacKeys::new(appliance),
            cookie: None,
        }
    }

    /// The mac1 keys of messages to that appliance.
    pub fn keys(&self) -> &MacKeys {
        &self.keys
    }

    /// Take the cookie out of a COOKIE frame answering the INIT whose mac1 was `sent_mac1`.
    pub fn consume(
        &mut self,
        now: Instant,
        frame: &[u8],
        sent_mac1: &[u8; MAC_LEN],
    ) -> Result<(), CookieError> {
        let h = FrameHeader::parse(frame).map_err(|_| CookieError::Shape)?;
        if h.ty != FrameType::Cookie
            || frame.len() != COOKIE_LEN
            || h.flags != 0
            || h.n_records != 0
            || h.src_epoch != 0
            || h.pn != 0
        {
            return Err(CookieError::Shape);
        }
        let b = &frame[HEADER_LEN..];
        let nonce = XNonce::from_slice(&b[field::NONCE]);
        let mut cookie = [0u8; MAC_LEN];
        cookie.copy_from_slice(&b[field::COOKIE]);
        let aead = XChaCha20Poly1305::new(self.keys.cookie[..].into());
        aead.decrypt_in_place_detached(nonce, sent_mac1, &mut cookie, b[field::TAG].into())
            .map_err(|_| CookieError::Decrypt)?;
        self.cookie = Some((cookie, now));
        Ok(())
    }

    /// mac2 for `msg` (every byte before mac2): keyed by a fresh cookie, else all zero.
    pub fn mac2(&self, now: Instant, msg: &[u8]) -> [u8; MAC_LEN] {
        match self.cookie {
            Some((c, at)) if now.saturating_duration_since(at) < COOKIE_USE_LIFETIME => {
                mac(&c, &[msg])
            }
            _ => [0; MAC_LEN],
        }
    }

    /// Whether a usable cookie is held.
    pub fn has_cookie(&self, now: Instant) -> bool {
        self.cookie
            .is_some_and(|(_, at)| now.saturating_duration_since(at) < COOKIE_USE_LIFETIME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::keys::SecretKey;
    use proptest::prelude::*;

    fn udp(s: &str) -> PeerAddr {
        PeerAddr::Udp(s.parse().unwrap())
    }

    #[test]
    fn mac1_is_keyed_by_the_receiver() {
        let a = SecretKey::generate().public_key();
        let b = SecretKey::generate().public_key();
        let msg = [7u8; 100];
        let m = MacKeys::new(&a).mac1(&msg);
        assert!(MacKeys::new(&a).verify_mac1(&msg, &m));
        assert!(!MacKeys::new(&b).verify_mac1(&msg, &m));
        let mut g = msg;
        g[99] ^= 1;
        assert!(!MacKeys::new(&a).verify_mac1(&g, &m));
        assert!(!MacKeys::new(&a).verify_mac1(&msg, &m[..15]));
    }

    /// The keyed BLAKE2s-128 is the standard one: RFC 7693 Appendix B's BLAKE2s-256 of "abc"
    /// through the same crate, and the 16-byte keyed variant is deterministic and key-sensitive.
    #[test]
    fn blake2s_is_the_standard_function() {
        let d: [u8; 32] = Blake2s256::digest(b"abc").into();
        assert_eq!(
            d[..8],
            [0x50, 0x8c, 0x5e, 0x8c, 0x32, 0x7c, 0x14, 0xe2],
            "RFC 7693 BLAKE2s-256(\"abc\")"
        );
        assert_eq!(mac(&[1; 16], &[b"x"]), mac(&[1; 16], &[b"x"]));
        assert_ne!(mac(&[1; 16], &[b"x"]), mac(&[2; 16], &[b"x"]));
    }

    #[test]
    fn cookie_roundtrip_binds_address_and_mac1() {
        let server = SecretKey::generate().public_key();
        let mut maker = CookieMaker::new(&server);
        let mut jar = CookieJar::new(&server);
        let now = Instant::from_nanos(5);
        let src = udp("192.0.2.1:4000");
        let mac1 = [9u8; MAC_LEN];
        let mut f = [0u8; COOKIE_LEN];
        maker.reply(now, &src, 77, &mac1, &mut f);
        assert_eq!(FrameHeader::parse(&f).unwrap().dst_session, 77);
        // wrong mac1 (not our INIT) and bit flips are refused
        assert_eq!(
            jar.consume(now, &f, &[8; MAC_LEN]),
            Err(CookieError::Decrypt)
        );
        for i in HEADER_LEN..COOKIE_LEN {
            let mut g = f;
            g[i] ^= 1;
            assert!(jar.consume(now, &g, &mac1).is_err(), "flip at {i}");
        }
        assert!(!jar.has_cookie(now));
        jar.consume(now, &f, &mac1).unwrap();
        assert!(jar.has_cookie(now));
        let msg = [3u8; 120];
        let m2 = jar.mac2(now, &msg);
        assert!(maker.verify_mac2(now, &src, &msg, &m2));
        assert!(!maker.verify_mac2(now, &udp("192.0.2.1:4001"), &msg, &m2));
        assert!(!maker.verify_mac2(now, &udp("192.0.2.2:4000"), &msg, &m2));
        assert!(!maker.verify_mac2(now, &src, &msg[1..], &m2));
        // the cookie dies with the secret (2 minutes), and the host stops using it before
        let later = now + COOKIE_SECRET_LIFETIME;
        assert!(!maker.verify_mac2(later, &src, &msg, &m2));
        assert_eq!(jar.mac2(now + COOKIE_USE_LIFETIME, &msg), [0; MAC_LEN]);
        // a forged cookie from someone without the appliance's public key
        let mut other = CookieMaker::new(&SecretKey::generate().public_key());
        other.reply(now, &src, 77, &mac1, &mut f);
        assert_eq!(jar.consume(now, &f, &mac1), Err(CookieError::Decrypt));
    }

    #[test]
    fn address_encodings_differ() {
        let mut seen = std::collections::HashSet::new();
        for a in [
            udp("10.0.0.1:1"),
            udp("10.0.0.1:2"),
            udp("[::1]:1"),
            PeerAddr::Eth([1; 6]),
            PeerAddr::Mem(1),
        ] {
            let mut b = [0u8; 19];
            let n = addr_bytes(&a, &mut b);
            assert!(seen.insert(b[..n].to_vec()), "{a}");
        }
    }

    proptest! {
        #[test]
        fn cookie_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut jar = CookieJar::new(&PublicKey::from_bytes([1; 32]));
            prop_assert!(jar.consume(Instant::ZERO, &data, &[0; MAC_LEN]).is_err());
        }
    }
}
