//! The session handshake: `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` from the `snow` crate, as
//! WireGuard uses it, in our fixed-size frames (docs/protocol.md §3, byte for byte).
//!
//! ```text
//! host (initiator)                                   appliance (responder)
//! INIT  = e, es, s, ss  {timestamp, epoch, params}  ->
//!                        <- RESP = e, ee, se, psk  {sid, epoch, chosen params}
//! DATA (key confirmation, ACK_REQ)                  ->   appliance allocates the session
//!                                   <- DATA (ACK)        host reports Connected
//! ```
//!
//! The host knows the appliance's static key in advance (pinned); the appliance learns the
//! host's from INIT (encrypted under the appliance's key, so no host identity travels in
//! clear) and looks it up in the list of hosts it accepts. The per-host PSK (all zero when none
//! is configured, as WireGuard) is mixed in last. The payloads carry the negotiation, so it is
//! authenticated by the handshake; the clear parts (header, the initiator's session id) are
//! bound in through the Noise prologue or checked to their only valid value.
//!
//! The frame keys are Noise's `Split()` outputs, taken raw (`dangerously_get_raw_split`): our
//! frames carry an explicit packet number and arrive out of order, which snow's in-order
//! `TransportState` cannot do, and the negotiated frame AEAD (AES-256-GCM or
//! ChaCha20-Poly1305 from `ring`) is not snow's. Each key is used with exactly one AEAD and a
//! unique nonce (docs/security.md "Frame keys").

use super::cookie::{CookieJar, MacKeys, MAC_LEN};
use super::crypto::Cipher;
use super::frame::{be32, CreditLimits, FrameError, FrameHeader, FrameType, HEADER_LEN};
use super::keys::{Psk, PublicKey, SecretKey};
use super::time::Instant;
use std::sync::LazyLock;
use zeroize::Zeroizing;

pub use super::keys::HostId;

/// The Noise protocol name.
pub const PROTOCOL: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// First bytes of the Noise prologue (the INIT header and sender id follow).
pub const PROLOGUE_LABEL: &[u8; 20] = b"pcietun handshake v1";

const DH_LEN: usize = 32;
const AEAD_TAG: usize = 16;

/// Bytes of the INIT payload before encryption.
pub const INIT_PAYLOAD_LEN: usize = 48;
/// Bytes of the RESP payload before encryption.
pub const RESP_PAYLOAD_LEN: usize = 40;
/// Bytes of an INIT body.
pub const INIT_BODY_LEN: usize = init_field::MAC2.end;
/// Bytes of a whole INIT frame.
pub const INIT_LEN: usize = HEADER_LEN + INIT_BODY_LEN;
/// Bytes of a RESP body.
pub const RESP_BODY_LEN: usize = resp_field::MAC1.end;
/// Bytes of a whole RESP frame.
pub const RESP_LEN: usize = HEADER_LEN + RESP_BODY_LEN;

// The layouts below are Noise's token sizes: e = 32, s = 32 + tag, payload + tag.
const _: () = {
    assert!(init_field::EPHEMERAL.end - init_field::EPHEMERAL.start == DH_LEN);
    assert!(init_field::STATIC.end - init_field::STATIC.start == DH_LEN + AEAD_TAG);
    assert!(init_field::PAYLOAD.end - init_field::PAYLOAD.start == INIT_PAYLOAD_LEN + AEAD_TAG);
    assert!(resp_field::EPHEMERAL.end - resp_field::EPHEMERAL.start == DH_LEN);
    assert!(resp_field::PAYLOAD.end - resp_field::PAYLOAD.start == RESP_PAYLOAD_LEN + AEAD_TAG);
};

/// INIT body layout (offsets after the 24-byte header).
pub mod init_field {
    use std::ops::Range;
    /// Session id the host will receive on (clear; random, non-zero).
    pub const SENDER: Range<usize> = 0..4;
    /// Noise `e`: the host's ephemeral public key.
    pub const EPHEMERAL: Range<usize> = 4..36;
    /// Noise `s`: the host's static public key, encrypted, with its tag.
    pub const STATIC: Range<usize> = 36..84;
    /// The INIT payload, encrypted, with its tag.
    pub const PAYLOAD: Range<usize> = 84..148;
    /// mac1 over the header and body before it.
    pub const MAC1: Range<usize> = 148..164;
    /// mac2 over the header and body before it (zero without a cookie).
    pub const MAC2: Range<usize> = 164..180;
}

/// RESP body layout (offsets after the 24-byte header).
pub mod resp_field {
    use std::ops::Range;
    /// Noise `e`: the appliance's ephemeral public key.
    pub const EPHEMERAL: Range<usize> = 0..32;
    /// The RESP payload, encrypted, with its tag.
    pub const PAYLOAD: Range<usize> = 32..88;
    /// mac1 over the header and body before it, keyed by the host's public key.
    pub const MAC1: Range<usize> = 88..104;
}

/// INIT payload layout (inside the encryption).
pub mod init_payload {
    use std::ops::Range;
    /// TAI64N timestamp: 8 bytes of seconds (TAI64 label), 4 of nanoseconds.
    pub const TIMESTAMP: Range<usize> = 0..12;
    /// The host's epoch for this session (unchanged by a rekey).
    pub const EPOCH: Range<usize> = 12..16;
    /// Lowest protocol version supported.
    pub const MIN_VERSION: usize = 16;
    /// Highest protocol version supported.
    pub const MAX_VERSION: usize = 17;
    /// The host's receive MTU.
    pub const MTU: Range<usize> = 18..20;
    /// [`super::init_flags`].
    pub const FLAGS: usize = 20;
    /// Frame AEADs offered: bit (code − 1) per [`crate::transport::crypto::Cipher`].
    pub const CIPHERS: usize = 21;
    /// Zero.
    pub const RESERVED: Range<usize> = 22..24;
    /// The host's receive credits, 6 × u32.
    pub const CREDITS: Range<usize> = 24..48;
}

/// RESP payload layout (inside the encryption).
pub mod resp_payload {
    use std::ops::Range;
    /// Session id the appliance receives on (non-zero).
    pub const SENDER: Range<usize> = 0..4;
    /// The appliance's epoch.
    pub const EPOCH: Range<usize> = 4..8;
    /// Chosen protocol version.
    pub const VERSION: usize = 8;
    /// [`super::resp_flags`].
    pub const FLAGS: usize = 9;
    /// Chosen frame AEAD (code of [`crate::transport::crypto::Cipher`]).
    pub const CIPHER: usize = 10;
    /// Zero.
    pub const RESERVED: usize = 11;
    /// Negotiated MTU.
    pub const MTU: Range<usize> = 12..14;
    /// Zero.
    pub const RESERVED2: Range<usize> = 14..16;
    /// The appliance's receive credits, 6 × u32.
    pub const CREDITS: Range<usize> = 16..40;
}

/// INIT payload flag bits.
pub mod init_flags {
    /// The host wants frames encrypted (either side asking turns encryption on).
    pub const ENCRYPT: u8 = 1;
    /// This handshake rekeys the running session of the same epoch in place.
    pub const REKEY: u8 = 2;
    /// All defined bits.
    pub const ALL: u8 = ENCRYPT | REKEY;
}

/// RESP payload flag bits.
pub mod resp_flags {
    /// Frames of this session are encrypted.
    pub const ENCRYPTED: u8 = 1;
    /// All defined bits.
    pub const ALL: u8 = ENCRYPTED;
}

static PARAMS: LazyLock<snow::params::NoiseParams> = LazyLock::new(|| {
    PROTOCOL
        .parse()
        .unwrap_or_else(|_| unreachable!("snow supports {PROTOCOL}"))
});

/// Handshake failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The frame header itself is malformed.
    #[error("handshake frame malformed: {0}")]
    Frame(#[from] FrameError),
    /// Not an INIT/RESP of the right size, or a header field that must be zero is not.
    #[error("handshake frame has the wrong type, length or header fields")]
    Shape,
    /// mac1 did not verify: garbage, or a message for another key.
    #[error("handshake mac1 mismatch")]
    BadMac1,
    /// The Noise message did not decrypt: forged, tampered with, or keys that do not match.
    #[error("handshake does not authenticate")]
    Decrypt,
    /// snow refused to build or run the handshake (a key of the wrong length).
    #[error("handshake state error")]
    Noise,
    /// A payload field out of range (zero id or epoch, tiny MTU, reserved bits).
    #[error("handshake field out of range")]
    Field,
    /// No version or frame AEAD in common.
    #[error("no common protocol version or cipher")]
    Version,
}

impl From<snow::Error> for HandshakeError {
    fn from(e: snow::Error) -> Self {
        match e {
            snow::Error::Decrypt | snow::Error::Input | snow::Error::Dh => HandshakeError::Decrypt,
            _ => HandshakeError::Noise,
        }
    }
}

/// A TAI64N timestamp (12 bytes, big-endian: `2^62 + 10 + unix seconds`, nanoseconds), as
/// WireGuard's INIT carries. Byte order is time order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tai64N(pub [u8; 12]);

impl std::fmt::Debug for Tai64N {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, n) = self.parts();
        write!(f, "Tai64N({s}.{n:09})")
    }
}

const TAI64_BASE: u64 = 0x4000_0000_0000_000a;

impl Tai64N {
    /// From Unix time.
    pub fn from_unix(secs: u64, nanos: u32) -> Tai64N {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&TAI64_BASE.wrapping_add(secs).to_be_bytes());
        b[8..].copy_from_slice(&nanos.min(999_999_999).to_be_bytes());
        Tai64N(b)
    }

    /// The wall clock now.
    pub fn now() -> Tai64N {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Tai64N::from_unix(d.as_secs(), d.subsec_nanos())
    }

    fn parts(&self) -> (u64, u32) {
        let mut s = [0u8; 8];
        s.copy_from_slice(&self.0[..8]);
        let mut n = [0u8; 4];
        n.copy_from_slice(&self.0[8..]);
        (
            u64::from_be_bytes(s).wrapping_sub(TAI64_BASE),
            u32::from_be_bytes(n),
        )
    }

    /// `self` advanced by `d`.
    pub fn after(self, d: std::time::Duration) -> Tai64N {
        let (s, n) = self.parts();
        let total = u128::from(s) * 1_000_000_000 + u128::from(n) + d.as_nanos();
        Tai64N::from_unix(
            (total / 1_000_000_000) as u64,
            (total % 1_000_000_000) as u32,
        )
    }

    /// The next timestamp after `self` (one nanosecond later).
    pub fn next(self) -> Tai64N {
        self.after(std::time::Duration::from_nanos(1))
    }
}

/// What the host proposes (the INIT payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitPayload {
    /// Strictly increasing per host: the appliance drops an INIT not newer than the last.
    pub timestamp: Tai64N,
    /// The host's epoch (new per session, the same for a rekey).
    pub epoch: u32,
    /// Lowest version supported.
    pub min_version: u8,
    /// Highest version supported.
    pub max_version: u8,
    /// The host's receive MTU.
    pub mtu: u16,
    /// The host wants encryption.
    pub encrypt: bool,
    /// Rekey of the running session with this epoch.
    pub rekey: bool,
    /// Frame AEADs offered, bit (code − 1) each.
    pub ciphers: u8,
    /// The host's receive credits.
    pub credits: CreditLimits,
}

fn put_credits(b: &mut [u8], c: &CreditLimits) {
    for (i, v) in c.iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
}

fn get_credits(b: &[u8]) -> CreditLimits {
    core::array::from_fn(|i| be32(b, 4 * i))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The offer bit of a cipher.
pub const fn cipher_bit(c: Cipher) -> u8 {
    1 << (c.code() - 1)
}

impl InitPayload {
    /// Encode.
    pub fn emit(&self, b: &mut [u8; INIT_PAYLOAD_LEN]) {
        use init_payload as f;
        b.fill(0);
        b[f::TIMESTAMP].copy_from_slice(&self.timestamp.0);
        b[f::EPOCH].copy_from_slice(&self.epoch.to_be_bytes());
        b[f::MIN_VERSION] = self.min_version;
        b[f::MAX_VERSION] = self.max_version;
        b[f::MTU].copy_from_slice(&self.mtu.to_be_bytes());
        b[f::FLAGS] = if self.encrypt { init_flags::ENCRYPT } else { 0 }
            | if self.rekey { init_flags::REKEY } else { 0 };
        b[f::CIPHERS] = self.ciphers;
        put_credits(&mut b[f::CREDITS], &self.credits);
    }

    /// Decode and range-check.
    pub fn parse(b: &[u8]) -> Result<InitPayload, HandshakeError> {
        use init_payload as f;
        if b.len() != INIT_PAYLOAD_LEN {
            return Err(HandshakeError::Shape);
        }
        let mut ts = [0u8; 12];
        ts.copy_from_slice(&b[f::TIMESTAMP]);
        let p = InitPayload {
            timestamp: Tai64N(ts),
            epoch: be32(b, f::EPOCH.start),
            min_version: b[f::MIN_VERSION],
            max_version: b[f::MAX_VERSION],
            mtu: be16(b, f::MTU.start),
            encrypt: b[f::FLAGS] & init_flags::ENCRYPT != 0,
            rekey: b[f::FLAGS] & init_flags::REKEY != 0,
            ciphers: b[f::CIPHERS],
            credits: get_credits(&b[f::CREDITS]),
        };
        if p.epoch == 0
            || p.mtu < 256
            || b[f::FLAGS] & !init_flags::ALL != 0
            || b[f::RESERVED] != [0, 0]
        {
            return Err(HandshakeError::Field);
        }
        Ok(p)
    }
}

/// What the appliance chose (the RESP payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespPayload {
    /// Session id the appliance receives on.
    pub session: u32,
    /// The appliance's epoch.
    pub epoch: u32,
    /// Chosen version.
    pub version: u8,
    /// Frames are encrypted.
    pub encrypt: bool,
    /// The frame AEAD.
    pub cipher: Cipher,
    /// Negotiated MTU.
    pub mtu: u16,
    /// The appliance's receive credits.
    pub credits: CreditLimits,
}

impl RespPayload {
    /// Encode.
    pub fn emit(&self, b: &mut [u8; RESP_PAYLOAD_LEN]) {
        use resp_payload as f;
        b.fill(0);
        b[f::SENDER].copy_from_slice(&self.session.to_be_bytes());
        b[f::EPOCH].copy_from_slice(&self.epoch.to_be_bytes());
        b[f::VERSION] = self.version;
        b[f::FLAGS] = if self.encrypt {
            resp_flags::ENCRYPTED
        } else {
            0
        };
        b[f::CIPHER] = self.cipher.code();
        b[f::MTU].copy_from_slice(&self.mtu.to_be_bytes());
        put_credits(&mut b[f::CREDITS], &self.credits);
    }

    /// Decode and range-check.
    pub fn parse(b: &[u8]) -> Result<RespPayload, HandshakeError> {
        use resp_payload as f;
        if b.len() != RESP_PAYLOAD_LEN {
            return Err(HandshakeError::Shape);
        }
        let cipher = Cipher::from_code(b[f::CIPHER]).ok_or(HandshakeError::Version)?;
        let p = RespPayload {
            session: be32(b, f::SENDER.start),
            epoch: be32(b, f::EPOCH.start),
            version: b[f::VERSION],
            encrypt: b[f::FLAGS] & resp_flags::ENCRYPTED != 0,
            cipher,
            mtu: be16(b, f::MTU.start),
            credits: get_credits(&b[f::CREDITS]),
        };
        if p.session == 0
            || p.epoch == 0
            || p.mtu < 256
            || b[f::FLAGS] & !resp_flags::ALL != 0
            || b[f::RESERVED] != 0
            || b[f::RESERVED2] != [0, 0]
        {
            return Err(HandshakeError::Field);
        }
        Ok(p)
    }
}

/// The two frame keys of a finished handshake (Noise `Split()`).
pub struct SessionKeys {
    /// Host to appliance.
    pub initiator_to_responder: Zeroizing<[u8; 32]>,
    /// Appliance to host.
    pub responder_to_initiator: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

fn split(hs: &mut snow::HandshakeState) -> SessionKeys {
    let (a, b) = hs.dangerously_get_raw_split();
    let keys = SessionKeys {
        initiator_to_responder: Zeroizing::new(a),
        responder_to_initiator: Zeroizing::new(b),
    };
    let (mut a, mut b) = (a, b);
    zeroize::Zeroize::zeroize(&mut a);
    zeroize::Zeroize::zeroize(&mut b);
    keys
}

fn check_header(frame: &[u8], ty: FrameType, len: usize) -> Result<FrameHeader, HandshakeError> {
    let h = FrameHeader::parse(frame)?;
    if h.ty != ty
        || frame.len() != len
        || h.flags != 0
        || h.n_records != 0
        || h.src_epoch != 0
        || h.pn != 0
        || (ty == FrameType::Init && h.dst_session != 0)
    {
        return Err(HandshakeError::Shape);
    }
    Ok(h)
}

fn prologue(frame: &[u8]) -> [u8; 20 + HEADER_LEN + 4] {
    let mut p = [0u8; 20 + HEADER_LEN + 4];
    p[..20].copy_from_slice(PROLOGUE_LABEL);
    p[20..20 + HEADER_LEN].copy_from_slice(&frame[..HEADER_LEN]);
    p[20 + HEADER_LEN..].copy_from_slice(&frame[HEADER_LEN + init_field::SENDER.start..][..4]);
    p
}

const ZERO_PSK: [u8; 32] = [0; 32];

/// A checked view of an INIT frame (sizes and header verified; nothing authenticated yet).
#[derive(Debug, Clone, Copy)]
pub struct InitFrame<'a>(&'a [u8]);

impl<'a> InitFrame<'a> {
    /// Check the length and every header field.
    pub fn new_checked(frame: &'a [u8]) -> Result<InitFrame<'a>, HandshakeError> {
        check_header(frame, FrameType::Init, INIT_LEN)?;
        Ok(InitFrame(frame))
    }

    fn body(&self, r: std::ops::Range<usize>) -> &'a [u8] {
        &self.0[HEADER_LEN + r.start..HEADER_LEN + r.end]
    }

    /// The session id the host receives on.
    pub fn sender(&self) -> u32 {
        be32(self.0, HEADER_LEN + init_field::SENDER.start)
    }

    /// The bytes mac1 covers.
    pub fn mac1_input(&self) -> &'a [u8] {
        &self.0[..HEADER_LEN + init_field::MAC1.start]
    }

    /// The mac1 field.
    pub fn mac1(&self) -> &'a [u8] {
        self.body(init_field::MAC1)
    }

    /// The bytes mac2 covers.
    pub fn mac2_input(&self) -> &'a [u8] {
        &self.0[..HEADER_LEN + init_field::MAC2.start]
    }

    /// The mac2 field.
    pub fn mac2(&self) -> &'a [u8] {
        self.body(init_field::MAC2)
    }
}

/// The host's half of a handshake in flight.
pub struct Initiator {
    hs: snow::HandshakeState,
    sid: u32,
    mac1: [u8; MAC_LEN],
    payload: InitPayload,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("sid", &self.sid)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Write an INIT to `out` and keep the state to read the answer. `jar` supplies mac1's key
    /// (the appliance's public key) and mac2's cookie when the appliance asked for one.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        local: &SecretKey,
        appliance: &PublicKey,
        psk: Option<&Psk>,
        sid: u32,
        payload: &InitPayload,
        jar: &CookieJar,
        now: Instant,
        out: &mut [u8; INIT_LEN],
    ) -> Result<Initiator, HandshakeError> {
        out.fill(0);
        FrameHeader {
            ty: FrameType::Init,
            flags: 0,
            n_records: 0,
            body_len: INIT_BODY_LEN as u16,
            dst_session: 0,
            src_epoch: 0,
            pn: 0,
        }
        .emit(out);
        out[HEADER_LEN + init_field::SENDER.start..][..4].copy_from_slice(&sid.to_be_bytes());
        let pro = prologue(out);
        let psk = psk.map_or(&ZERO_PSK, Psk::as_bytes);
        let mut hs = snow::Builder::new(PARAMS.clone())
            .local_private_key(local.as_bytes())?
            .remote_public_key(appliance.as_bytes())?
            .prologue(&pro)?
            .psk(2, psk)?
            .build_initiator()?;
        let mut pl = Zeroizing::new([0u8; INIT_PAYLOAD_LEN]);
        payload.emit(&mut pl);
        let msg = &mut out
            [HEADER_LEN + init_field::EPHEMERAL.start..HEADER_LEN + init_field::PAYLOAD.end];
        let n = hs.write_message(&pl[..], msg)?;
        if n != msg.len() {
            return Err(HandshakeError::Noise);
        }
        let mac1 = jar.keys().mac1(&out[..HEADER_LEN + init_field::MAC1.start]);
        out[HEADER_LEN + init_field::MAC1.start..HEADER_LEN + init_field::MAC1.end]
            .copy_from_slice(&mac1);
        let mac2 = jar.mac2(now, &out[..HEADER_LEN + init_field::MAC2.start]);
        out[HEADER_LEN + init_field::MAC2.start..HEADER_LEN + init_field::MAC2.end]
            .copy_from_slice(&mac2);
        Ok(Initiator {
            hs,
            sid,
            mac1,
            payload: payload.clone(),
        })
    }

    /// Our session id (the RESP's `dst_session`).
    pub fn sid(&self) -> u32 {
        self.sid
    }

    /// The mac1 we sent (a COOKIE reply is bound to it).
    pub fn mac1(&self) -> &[u8; MAC_LEN] {
        &self.mac1
    }

    /// What we proposed.
    pub fn payload(&self) -> &InitPayload {
        &self.payload
    }

    /// Read the appliance's RESP. `own` are the mac keys of our own public key. A RESP that
    /// fails leaves the handshake as it was (a forgery cannot end it).
    pub fn finish(
        &mut self,
        frame: &[u8],
        own: &MacKeys,
    ) -> Result<(RespPayload, SessionKeys), HandshakeError> {
        let h = check_header(frame, FrameType::Resp, RESP_LEN)?;
        if h.dst_session != self.sid {
            return Err(HandshakeError::Shape);
        }
        let mac1_at = HEADER_LEN + resp_field::MAC1.start;
        if !own.verify_mac1(&frame[..mac1_at], &frame[mac1_at..]) {
            return Err(HandshakeError::BadMac1);
        }
        let mut pl = Zeroizing::new([0u8; RESP_PAYLOAD_LEN]);
        let n = self.hs.read_message(
            &frame[HEADER_LEN + resp_field::EPHEMERAL.start..HEADER_LEN + resp_field::PAYLOAD.end],
            &mut pl[..],
        )?;
        if n != RESP_PAYLOAD_LEN || !self.hs.is_handshake_finished() {
            return Err(HandshakeError::Noise);
        }
        let p = RespPayload::parse(&pl[..])?;
        Ok((p, split(&mut self.hs)))
    }
}

/// The appliance's half: an INIT read and authenticated, not yet answered.
pub struct Responder {
    hs: snow::HandshakeState,
    sid: u32,
    remote: PublicKey,
    payload: InitPayload,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("sid", &self.sid)
            .field("remote", &self.remote)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Read an INIT (its mac1, and mac2 under load, were checked by the caller: this is the
    /// expensive part, two X25519 operations).
    pub fn read(local: &SecretKey, init: InitFrame<'_>) -> Result<Responder, HandshakeError> {
        let frame = init.0;
        let pro = prologue(frame);
        let mut hs = snow::Builder::new(PARAMS.clone())
            .local_private_key(local.as_bytes())?
            .prologue(&pro)?
            .build_responder()?;
        let mut pl = Zeroizing::new([0u8; INIT_PAYLOAD_LEN]);
        let n = hs.read_message(
            &frame[HEADER_LEN + init_field::EPHEMERAL.start..HEADER_LEN + init_field::PAYLOAD.end],
            &mut pl[..],
        )?;
        if n != INIT_PAYLOAD_LEN {
            return Err(HandshakeError::Noise);
        }
        let remote = hs.get_remote_static().ok_or(HandshakeError::Noise)?;
        let mut rs = [0u8; 32];
        rs.copy_from_slice(remote.get(..32).ok_or(HandshakeError::Noise)?);
        let payload = InitPayload::parse(&pl[..])?;
        Ok(Responder {
            hs,
            sid: init.sender(),
            remote: PublicKey::from_bytes(rs),
            payload,
        })
    }

    /// The host's static public key (how the appliance finds the host).
    pub fn remote(&self) -> &PublicKey {
        &self.remote
    }

    /// The host's session id.
    pub fn sid(&self) -> u32 {
        self.sid
    }

    /// What the host proposed.
    pub fn payload(&self) -> &InitPayload {
        &self.payload
    }

    /// Answer with `p`, mixing in the host's PSK; writes the RESP to `out`.
    pub fn respond(
        mut self,
        psk: Option<&Psk>,
        p: &RespPayload,
        out: &mut [u8; RESP_LEN],
    ) -> Result<SessionKeys, HandshakeError> {
        out.fill(0);
        FrameHeader {
            ty: FrameType::Resp,
            flags: 0,
            n_records: 0,
            body_len: RESP_BODY_LEN as u16,
            dst_session: self.sid,
            src_epoch: 0,
            pn: 0,
        }
        .emit(out);
        self.hs
            .set_psk(2, &psk.map_or(&ZERO_PSK, Psk::as_bytes)[..])?;
        let mut pl = Zeroizing::new([0u8; RESP_PAYLOAD_LEN]);
        p.emit(&mut pl);
        let msg = &mut out
            [HEADER_LEN + resp_field::EPHEMERAL.start..HEADER_LEN + resp_field::PAYLOAD.end];
        let n = self.hs.write_message(&pl[..], msg)?;
        if n != msg.len() || !self.hs.is_handshake_finished() {
            return Err(HandshakeError::Noise);
        }
        let mac1 = MacKeys::new(&self.remote).mac1(&out[..HEADER_LEN + resp_field::MAC1.start]);
        out[HEADER_LEN + resp_field::MAC1.start..].copy_from_slice(&mac1);
        Ok(split(&mut self.hs))
    }
}

#[cfg(test)]
mod tests;
