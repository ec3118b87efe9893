//! Per-frame protection and anti-replay (docs/protocol.md §4 "Protection").
//!
//! One frame is one AEAD unit, sealed with `ring`: AES-256-GCM when both ends have AES
//! instructions, ChaCha20-Poly1305 otherwise (the choice is negotiated inside the Noise
//! handshake, docs/protocol.md §3). The 96-bit nonce is `0x00000000 ‖ pn`, so it is unique per
//! key as long as packet numbers are (they never repeat within a session). With encryption off
//! the AEAD is used with an empty plaintext over the whole frame as associated data, so every
//! frame is still authenticated.

use super::frame::{HEADER_LEN, TAG_LEN};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};

/// Why a frame failed to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Tag did not verify: forged, corrupted or wrong key.
    #[error("authentication tag mismatch")]
    BadTag,
}

/// The frame AEAD of a session (docs/protocol.md §3, the `cipher` byte of RESP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Cipher {
    /// ChaCha20-Poly1305 (RFC 8439): fast everywhere in software.
    ChaCha20Poly1305,
    /// AES-256-GCM: fastest where the CPU has AES and carry-less multiply instructions.
    Aes256Gcm,
}

impl Cipher {
    /// Wire code (bit in the INIT offer, value in the RESP choice).
    pub const fn code(self) -> u8 {
        match self {
            Cipher::ChaCha20Poly1305 => 1,
            Cipher::Aes256Gcm => 2,
        }
    }

    /// From a wire code.
    pub const fn from_code(c: u8) -> Option<Cipher> {
        match c {
            1 => Some(Cipher::ChaCha20Poly1305),
            2 => Some(Cipher::Aes256Gcm),
            _ => None,
        }
    }

    /// Whether this CPU runs AES-GCM in hardware (AES-NI + PCLMULQDQ on x86, AES + PMULL on
    /// aarch64). Without them ring's constant-time software AES is slower than ChaCha20.
    pub fn hardware_aes() -> bool {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            std::arch::is_x86_feature_detected!("aes")
                && std::arch::is_x86_feature_detected!("pclmulqdq")
        }
        #[cfg(target_arch = "aarch64")]
        {
            std::arch::is_aarch64_feature_detected!("aes")
                && std::arch::is_aarch64_feature_detected!("pmull")
        }
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
        {
            false
        }
    }

    fn algorithm(self) -> &'static ring::aead::Algorithm {
        match self {
            Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &AES_256_GCM,
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cipher::ChaCha20Poly1305 => "ChaCha20-Poly1305",
            Cipher::Aes256Gcm => "AES-256-GCM",
        })
    }
}

/// One direction's key.
#[derive(Clone)]
pub struct PacketKey {
    aead: LessSafeKey,
    cipher: Cipher,
    encrypt: bool,
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketKey")
            .field("cipher", &self.cipher)
            .field("encrypt", &self.encrypt)
            .finish_non_exhaustive()
    }
}

fn nonce(pn: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&pn.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

impl PacketKey {
    /// A key; `encrypt` selects confidentiality (else authentication only).
    pub fn new(cipher: Cipher, key: &[u8; 32], encrypt: bool) -> Self {
        // Both algorithms take exactly 32-byte keys, so this cannot fail.
        let unbound = UnboundKey::new(cipher.algorithm(), key)
            .unwrap_or_else(|_| unreachable!("32-byte key for a 256-bit AEAD"));
        PacketKey {
            aead: LessSafeKey::new(unbound),
            cipher,
            encrypt,
        }
    }

    /// Whether bodies are encrypted.
    pub fn encrypts(&self) -> bool {
        self.encrypt
    }

    /// The AEAD in use.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// Protect `frame` in place: header, body, then `TAG_LEN` bytes reserved for the tag.
    /// `frame` must be at least `HEADER_LEN + TAG_LEN` long.
    pub fn seal(&self, pn: u64, frame: &mut [u8]) {
        let n = nonce(pn);
        let tag_at = frame.len() - TAG_LEN;
        let (msg, tag_out) = frame.split_at_mut(tag_at);
        let tag = if self.encrypt {
            let (hdr, body) = msg.split_at_mut(HEADER_LEN);
            self.aead
                .seal_in_place_separate_tag(n, Aad::from(&*hdr), body)
        } else {
            self.aead
                .seal_in_place_separate_tag(n, Aad::from(&*msg), &mut [])
        };
        // Sealing fails only for inputs beyond the AEAD's 2^36-byte bound.
        if let Ok(tag) = tag {
            tag_out.copy_from_slice(tag.as_ref());
        }
    }

    /// Verify (and decrypt) `frame` in place.
    pub fn open(&self, pn: u64, frame: &mut [u8]) -> Result<(), CryptoError> {
        if frame.len() < HEADER_LEN + TAG_LEN {
            return Err(CryptoError::BadTag);
        }
        let n = nonce(pn);
        let tag_at = frame.len() - TAG_LEN;
        let (msg, tag) = frame.split_at_mut(tag_at);
        let tag = Tag::try_from(&*tag).map_err(|_| CryptoError::BadTag)?;
        let r = if self.encrypt {
            let (hdr, body) = msg.split_at_mut(HEADER_LEN);
            self.aead
                .open_in_place_separate_tag(n, Aad::from(&*hdr), tag, body, 0..)
                .map(|_| ())
        } else {
            self.aead
                .open_in_place_separate_tag(n, Aad::from(&*msg), tag, &mut [], 0..)
                .map(|_| ())
        };
        r.map_err(|_| CryptoError::BadTag)
    }
}

/// Sliding anti-replay window over packet numbers (256 wide).
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    highest: u64,
    bits: [u64; 4],
}

const WINDOW: u64 = 256;

impl ReplayWindow {
    /// Whether `pn` would be accepted (not seen, not too old). Does not record it.
    pub fn check(&self, pn: u64) -> bool {
        if pn == 0 {
            return false;
        }
        if pn > self.highest {
            return true;
        }
        let age = self.highest - pn;
        if age >= WINDOW {
            return false;
        }
        let bit = pn % WINDOW;
        self.bits[(bit / 64) as usize] & (1 << (bit % 64)) == 0
    }

    /// Record `pn` as seen (call only after the tag verified and [`check`](Self::check) passed).
    pub fn record(&mut self, pn: u64) {
        if pn > self.highest {
            let shift = pn - self.highest;
            if shift >= WINDOW {
                self.bits = [0; 4];
            } else {
                for p in self.highest + 1..pn {
                    let b = p % WINDOW;
                    self.bits[(b / 64) as usize] &= !(1 << (b % 64));
                }
            }
            self.highest = pn;
        }
        let b = pn % WINDOW;
        self.bits[(b / 64) as usize] |= 1 << (b % 64);
    }

    /// Highest packet number recorded (0: none yet).
    pub fn highest(&self) -> u64 {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = vec![7u8; HEADER_LEN];
        f.extend_from_slice(body);
        f.extend_from_slice(&[0; TAG_LEN]);
        f
    }

    #[test]
    fn seal_open_both_modes_both_ciphers_and_tamper() {
        for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
            for enc in [true, false] {
                let k = PacketKey::new(cipher, &[3; 32], enc);
                let mut f = frame(b"hello tlp");
                k.seal(9, &mut f);
                assert_eq!(&f[HEADER_LEN..HEADER_LEN + 9] == b"hello tlp", !enc);
                let sealed = f.clone();
                k.open(9, &mut f).unwrap();
                assert_eq!(&f[HEADER_LEN..HEADER_LEN + 9], b"hello tlp");
                for i in 0..sealed.len() {
                    let mut g = sealed.clone();
                    g[i] ^= 0x10;
                    assert_eq!(
                        k.open(9, &mut g),
                        Err(CryptoError::BadTag),
                        "{cipher} bit flip at {i}"
                    );
                }
                let mut g = sealed.clone();
                assert!(k.open(10, &mut g).is_err(), "wrong pn");
                let mut g = sealed.clone();
                assert!(
                    PacketKey::new(cipher, &[4; 32], enc)
                        .open(9, &mut g)
                        .is_err(),
                    "wrong key"
                );
                let other = match cipher {
                    Cipher::Aes256Gcm => Cipher::ChaCha20Poly1305,
                    Cipher::ChaCha20Poly1305 => Cipher::Aes256Gcm,
                };
                let mut g = sealed.clone();
                assert!(
                    PacketKey::new(other, &[3; 32], enc)
                        .open(9, &mut g)
                        .is_err(),
                    "same key, other cipher"
                );
                assert!(k.open(9, &mut [0u8; HEADER_LEN + TAG_LEN - 1]).is_err());
            }
        }
    }

    /// RFC 8439 §2.8.2 test vector through our key type (nonce layout aside, the AEAD is the
    /// standard one): the sealed body and tag match the RFC byte for byte.
    #[test]
    fn chacha20_poly1305_matches_rfc8439() {
        let key: [u8; 32] = core::array::from_fn(|i| 0x80 + i as u8);
        let nonce = [
            0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
        ];
        let aad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let mut pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
        let tag = k
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut pt,
            )
            .unwrap();
        assert_eq!(&pt[..8], &[0xd3, 0x1a, 0x8d, 0x34, 0x64, 0x8e, 0x60, 0xdb]);
        assert_eq!(
            tag.as_ref(),
            &[
                0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60,
                0x06, 0x91
            ]
        );
    }

    #[test]
    fn cipher_codes() {
        for c in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
            assert_eq!(Cipher::from_code(c.code()), Some(c));
        }
        assert_eq!(Cipher::from_code(0), None);
        assert_eq!(Cipher::from_code(3), None);
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        assert!(!w.check(0));
        for pn in [1, 3, 2, 10, 300] {
            assert!(w.check(pn));
            w.record(pn);
            assert!(!w.check(pn));
        }
        assert!(!w.check(10), "older than the window");
        assert!(w.check(299));
        assert!(w.check(100));
        w.record(299);
        assert!(!w.check(299));
        w.record(1000);
        assert!(!w.check(299));
        assert!(w.check(999));
        assert_eq!(w.highest(), 1000);
    }
}
