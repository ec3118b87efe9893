//! Per-frame protection and anti-replay (docs/protocol.md §4 "Protection").
//!
//! ChaCha20-Poly1305 from RustCrypto. With encryption off the AEAD is used with an empty
//! plaintext over the whole frame as associated data, so every frame is still authenticated.

use super::frame::{HEADER_LEN, TAG_LEN};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

/// Why a frame failed to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Tag did not verify: forged, corrupted or wrong key.
    #[error("authentication tag mismatch")]
    BadTag,
}

/// One direction's key.
#[derive(Clone)]
pub struct PacketKey {
    aead: ChaCha20Poly1305,
    encrypt: bool,
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketKey")
            .field("encrypt", &self.encrypt)
            .finish_non_exhaustive()
    }
}

fn nonce(pn: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&pn.to_be_bytes());
    *Nonce::from_slice(&n)
}

impl PacketKey {
    /// A key; `encrypt` selects confidentiality (else authentication only).
    pub fn new(key: &[u8; 32], encrypt: bool) -> Self {
        PacketKey {
            aead: ChaCha20Poly1305::new(Key::from_slice(key)),
            encrypt,
        }
    }

    /// Whether bodies are encrypted.
    pub fn encrypts(&self) -> bool {
        self.encrypt
    }

    /// Protect `frame` in place: header, body, then `TAG_LEN` bytes reserved for the tag.
    pub fn seal(&self, pn: u64, frame: &mut [u8]) {
        let n = nonce(pn);
        let tag_at = frame.len() - TAG_LEN;
        let (msg, tag_out) = frame.split_at_mut(tag_at);
        let tag = if self.encrypt {
            let (hdr, body) = msg.split_at_mut(HEADER_LEN);
            self.aead.encrypt_in_place_detached(&n, hdr, body)
        } else {
            self.aead.encrypt_in_place_detached(&n, msg, &mut [])
        };
        // Encryption with a 96-bit nonce cannot fail for frames below 256 GiB.
        if let Ok(tag) = tag {
            tag_out.copy_from_slice(&tag);
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
        let tag = *Tag::from_slice(tag);
        let r = if self.encrypt {
            let (hdr, body) = msg.split_at_mut(HEADER_LEN);
            self.aead.decrypt_in_place_detached(&n, hdr, body, &tag)
        } else {
            self.aead.decrypt_in_place_detached(&n, msg, &mut [], &tag)
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
    fn seal_open_both_modes_and_tamper() {
        for enc in [true, false] {
            let k = PacketKey::new(&[3; 32], enc);
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
                    "bit flip at {i}"
                );
            }
            let mut g = sealed.clone();
            assert!(k.open(10, &mut g).is_err(), "wrong pn");
            let mut g = sealed.clone();
            assert!(
                PacketKey::new(&[4; 32], enc).open(9, &mut g).is_err(),
                "wrong key"
            );
        }
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
    }
}
