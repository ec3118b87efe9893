//! Handshake messages INIT and RESP, their HMAC-SHA256 authentication and the HKDF key
//! schedule (docs/protocol.md §3).

use super::frame::{be32, CreditLimits, FrameError, FrameHeader, FrameType, HEADER_LEN};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of an INIT or RESP body.
pub const BODY_LEN: usize = 104;
/// Bytes of a whole INIT or RESP frame.
pub const FRAME_LEN: usize = HEADER_LEN + BODY_LEN;
const MAC_AT: usize = 72;

/// A 16-byte host identity (ASCII, zero padded).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct HostId(pub [u8; 16]);

impl HostId {
    /// From a name of at most 16 bytes.
    pub fn new(name: &str) -> Result<HostId, HandshakeError> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() > 16 {
            return Err(HandshakeError::BadHostId(name.to_string()));
        }
        let mut id = [0u8; 16];
        id[..b.len()].copy_from_slice(b);
        Ok(HostId(id))
    }
}

impl std::fmt::Display for HostId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(16);
        write!(f, "{}", String::from_utf8_lossy(&self.0[..end]))
    }
}

impl std::fmt::Debug for HostId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostId({self})")
    }
}

/// A 32-byte pre-shared key.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(pub [u8; 32]);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(..)")
    }
}

impl Psk {
    /// The built-in development key (NOT secure; for loopback demos only).
    pub const DEVELOPMENT: Psk = Psk(*b"pcietun-development-key-insecure");

    /// From 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Psk, HandshakeError> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return Err(HandshakeError::BadPsk);
        }
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b =
                u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| HandshakeError::BadPsk)?;
        }
        Ok(Psk(k))
    }
}

/// Handshake failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The frame itself is malformed.
    #[error("handshake frame malformed: {0}")]
    Frame(#[from] FrameError),
    /// Not an INIT/RESP of the right size.
    #[error("handshake frame has the wrong type or length")]
    Shape,
    /// MAC did not verify.
    #[error("handshake MAC mismatch")]
    BadMac,
    /// No version in common.
    #[error("no common protocol version")]
    Version,
    /// A zero session id / epoch, or a bad MTU.
    #[error("handshake field out of range")]
    Field,
    /// Host id not acceptable.
    #[error("host id {0:?} must be 1..=16 bytes")]
    BadHostId(String),
    /// PSK not 64 hex digits.
    #[error("pre-shared key must be 64 hex digits")]
    BadPsk,
}

/// The client's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    /// Who is connecting.
    pub host_id: HostId,
    /// Client nonce.
    pub nonce: [u8; 16],
    /// Session id the client receives on.
    pub session: u32,
    /// Client epoch.
    pub epoch: u32,
    /// Lowest version supported.
    pub min_version: u8,
    /// Highest version supported.
    pub max_version: u8,
    /// Client's receive MTU.
    pub mtu: u16,
    /// Client wants encryption.
    pub encrypt: bool,
    /// Client's receive credits.
    pub credits: CreditLimits,
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    /// Server nonce.
    pub nonce: [u8; 16],
    /// Client nonce echoed.
    pub client_nonce: [u8; 16],
    /// Session id the server receives on.
    pub session: u32,
    /// Client session id (the header's dst_session).
    pub client_session: u32,
    /// Server epoch.
    pub epoch: u32,
    /// Chosen version.
    pub version: u8,
    /// Encryption on.
    pub encrypt: bool,
    /// Negotiated MTU.
    pub mtu: u16,
    /// Server's receive credits.
    pub credits: CreditLimits,
}

fn mac(psk: &Psk, label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC accepts keys of any length; new_from_slice cannot fail for HMAC.
    let mut m = <HmacSha256 as Mac>::new_from_slice(&psk.0).unwrap_or_else(|_| unreachable!());
    m.update(label);
    for p in parts {
        m.update(p);
    }
    m
}

fn put_credits(b: &mut [u8], c: &CreditLimits) {
    for (i, v) in c.iter().enumerate() {
        b[48 + 4 * i..52 + 4 * i].copy_from_slice(&v.to_be_bytes());
    }
}

fn get_credits(b: &[u8]) -> CreditLimits {
    let mut c = [0; 6];
    for (i, v) in c.iter_mut().enumerate() {
        *v = be32(b, 48 + 4 * i);
    }
    c
}

fn check_shape(frame: &[u8], ty: FrameType) -> Result<FrameHeader, HandshakeError> {
    let h = FrameHeader::parse(frame)?;
    if h.ty != ty || frame.len() != FRAME_LEN {
        return Err(HandshakeError::Shape);
    }
    Ok(h)
}

impl Init {
    /// Encode and MAC into a [`FRAME_LEN`]-byte frame.
    pub fn emit(&self, psk: &Psk, out: &mut [u8; FRAME_LEN]) {
        out.fill(0);
        FrameHeader {
            ty: FrameType::Init,
            flags: 0,
            n_records: 0,
            body_len: BODY_LEN as u16,
            dst_session: 0,
            src_epoch: 0,
            pn: 0,
        }
        .emit(out);
        let b = &mut out[HEADER_LEN..];
        b[0..16].copy_from_slice(&self.host_id.0);
        b[16..32].copy_from_slice(&self.nonce);
        b[32..36].copy_from_slice(&self.session.to_be_bytes());
        b[36..40].copy_from_slice(&self.epoch.to_be_bytes());
        b[40] = self.min_version;
        b[41] = self.max_version;
        b[42..44].copy_from_slice(&self.mtu.to_be_bytes());
        b[44] = u8::from(self.encrypt);
        put_credits(b, &self.credits);
        let tag = mac(psk, b"pcietun-init-v1", &[&out[..HEADER_LEN + MAC_AT]]).finalize();
        out[HEADER_LEN + MAC_AT..].copy_from_slice(&tag.into_bytes());
    }

    /// Parse without checking the MAC (the server needs the host id to find the key).
    pub fn parse_unverified(frame: &[u8]) -> Result<Init, HandshakeError> {
        check_shape(frame, FrameType::Init)?;
        let b = &frame[HEADER_LEN..];
        let mut host = [0; 16];
        host.copy_from_slice(&b[0..16]);
        let mut nonce = [0; 16];
        nonce.copy_from_slice(&b[16..32]);
        let init = Init {
            host_id: HostId(host),
            nonce,
            session: be32(b, 32),
            epoch: be32(b, 36),
            min_version: b[40],
            max_version: b[41],
            mtu: u16::from_be_bytes([b[42], b[43]]),
            encrypt: b[44] & 1 != 0,
            credits: get_credits(b),
        };
        if init.session == 0 || init.epoch == 0 || init.mtu < 256 || b[44] > 1 {
            return Err(HandshakeError::Field);
        }
        Ok(init)
    }

    /// Check the MAC of an INIT frame against `psk`.
    pub fn verify(frame: &[u8], psk: &Psk) -> Result<(), HandshakeError> {
        check_shape(frame, FrameType::Init)?;
        mac(psk, b"pcietun-init-v1", &[&frame[..HEADER_LEN + MAC_AT]])
            .verify_slice(&frame[HEADER_LEN + MAC_AT..])
            .map_err(|_| HandshakeError::BadMac)
    }
}

impl Resp {
    /// Encode and MAC (binding the whole INIT frame) into a [`FRAME_LEN`]-byte frame.
    pub fn emit(&self, psk: &Psk, init_frame: &[u8], out: &mut [u8; FRAME_LEN]) {
        out.fill(0);
        FrameHeader {
            ty: FrameType::Resp,
            flags: 0,
            n_records: 0,
            body_len: BODY_LEN as u16,
            dst_session: self.client_session,
            src_epoch: self.epoch,
            pn: 0,
        }
        .emit(out);
        let b = &mut out[HEADER_LEN..];
        b[0..16].copy_from_slice(&self.nonce);
        b[16..32].copy_from_slice(&self.client_nonce);
        b[32..36].copy_from_slice(&self.session.to_be_bytes());
        b[36..40].copy_from_slice(&self.epoch.to_be_bytes());
        b[40] = self.version;
        b[41] = u8::from(self.encrypt);
        b[42..44].copy_from_slice(&self.mtu.to_be_bytes());
        put_credits(b, &self.credits);
        let tag = mac(
            psk,
            b"pcietun-resp-v1",
            &[init_frame, &out[..HEADER_LEN + MAC_AT]],
        )
        .finalize();
        out[HEADER_LEN + MAC_AT..].copy_from_slice(&tag.into_bytes());
    }

    /// Parse and verify a RESP against the INIT frame we sent and our key.
    pub fn parse_verified(
        frame: &[u8],
        init_frame: &[u8],
        psk: &Psk,
    ) -> Result<Resp, HandshakeError> {
        let h = check_shape(frame, FrameType::Resp)?;
        mac(
            psk,
            b"pcietun-resp-v1",
            &[init_frame, &frame[..HEADER_LEN + MAC_AT]],
        )
        .verify_slice(&frame[HEADER_LEN + MAC_AT..])
        .map_err(|_| HandshakeError::BadMac)?;
        let b = &frame[HEADER_LEN..];
        let mut nonce = [0; 16];
        nonce.copy_from_slice(&b[0..16]);
        let mut client_nonce = [0; 16];
        client_nonce.copy_from_slice(&b[16..32]);
        let r = Resp {
            nonce,
            client_nonce,
            session: be32(b, 32),
            client_session: h.dst_session,
            epoch: be32(b, 36),
            version: b[40],
            encrypt: b[41] & 1 != 0,
            mtu: u16::from_be_bytes([b[42], b[43]]),
            credits: get_credits(b),
        };
        if r.session == 0 || r.epoch == 0 || r.epoch != h.src_epoch || r.mtu < 256 {
            return Err(HandshakeError::Field);
        }
        if r.version != super::frame::VERSION {
            return Err(HandshakeError::Version);
        }
        Ok(r)
    }
}

/// The two directional session keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Client to server.
    pub c2s: [u8; 32],
    /// Server to client.
    pub s2c: [u8; 32],
}

/// HKDF-SHA256 key schedule of docs/protocol.md §3.
pub fn derive_keys(psk: &Psk, init: &Init, resp: &Resp) -> SessionKeys {
    let mut salt = [0u8; 32];
    salt[..16].copy_from_slice(&init.nonce);
    salt[16..].copy_from_slice(&resp.nonce);
    let hk = Hkdf::<Sha256>::new(Some(&salt), &psk.0);
    let mut info = [0u8; 15 + 16];
    info[..15].copy_from_slice(b"pcietun-keys-v1");
    info[15..19].copy_from_slice(&init.session.to_be_bytes());
    info[19..23].copy_from_slice(&resp.session.to_be_bytes());
    info[23..27].copy_from_slice(&init.epoch.to_be_bytes());
    info[27..31].copy_from_slice(&resp.epoch.to_be_bytes());
    let mut okm = [0u8; 64];
    // 64 bytes is far below HKDF-SHA256's 8160-byte limit.
    let _ = hk.expand(&info, &mut okm);
    let mut c2s = [0; 32];
    let mut s2c = [0; 32];
    c2s.copy_from_slice(&okm[..32]);
    s2c.copy_from_slice(&okm[32..]);
    SessionKeys { c2s, s2c }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn init() -> Init {
        Init {
            host_id: HostId::new("host-a").unwrap(),
            nonce: [1; 16],
            session: 0x11,
            epoch: 5,
            min_version: 1,
            max_version: 1,
            mtu: 1472,
            encrypt: true,
            credits: [64, 1024, 32, 0, 64, 1024],
        }
    }

    fn resp() -> Resp {
        Resp {
            nonce: [2; 16],
            client_nonce: [1; 16],
            session: 0x22,
            client_session: 0x11,
            epoch: 9,
            version: 1,
            encrypt: true,
            mtu: 1400,
            credits: [1, 2, 3, 4, 5, 6],
        }
    }

    #[test]
    fn init_resp_roundtrip_and_mac() {
        let psk = Psk([7; 32]);
        let mut f = [0u8; FRAME_LEN];
        init().emit(&psk, &mut f);
        assert_eq!(Init::parse_unverified(&f).unwrap(), init());
        Init::verify(&f, &psk).unwrap();
        assert_eq!(Init::verify(&f, &Psk([8; 32])), Err(HandshakeError::BadMac));
        for i in 0..FRAME_LEN {
            let mut g = f;
            g[i] ^= 1;
            assert!(Init::verify(&g, &psk).is_err(), "flip at {i} accepted");
        }
        let mut r = [0u8; FRAME_LEN];
        resp().emit(&psk, &f, &mut r);
        assert_eq!(Resp::parse_verified(&r, &f, &psk).unwrap(), resp());
        // a RESP bound to another INIT (old nonce) is refused
        let mut other = init();
        other.nonce = [3; 16];
        let mut f2 = [0u8; FRAME_LEN];
        other.emit(&psk, &mut f2);
        assert_eq!(
            Resp::parse_verified(&r, &f2, &psk),
            Err(HandshakeError::BadMac)
        );
        let k1 = derive_keys(&psk, &init(), &resp());
        let k2 = derive_keys(&psk, &other, &resp());
        assert_ne!(k1, k2);
        assert_ne!(k1.c2s, k1.s2c);
    }

    #[test]
    fn psk_hex() {
        let k = Psk::from_hex(&"0a".repeat(32)).unwrap();
        assert_eq!(k.0, [10; 32]);
        assert!(Psk::from_hex("zz").is_err());
        assert!(Psk::from_hex(&"g0".repeat(32)).is_err());
        assert_eq!(HostId::new("ab").unwrap().to_string(), "ab");
        assert!(HostId::new(&"x".repeat(17)).is_err());
    }

    proptest! {
        #[test]
        fn handshake_parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let psk = Psk([1; 32]);
            let _ = Init::parse_unverified(&data);
            let _ = Init::verify(&data, &psk);
            prop_assert!(Resp::parse_verified(&data, &data, &psk).is_err());
        }

        #[test]
        fn init_roundtrip(nonce in any::<[u8; 16]>(), s in 1u32.., e in 1u32.., mtu in 256u16.., enc: bool,
                          c in any::<[u32; 6]>()) {
            let i = Init { nonce, session: s, epoch: e, mtu, encrypt: enc, credits: c, ..init() };
            let mut f = [0u8; FRAME_LEN];
            i.emit(&Psk([0; 32]), &mut f);
            prop_assert_eq!(Init::parse_unverified(&f), Ok(i));
        }
    }
}
