//! Reliable, authenticated transport of TLPs over raw Ethernet and UDP (docs/protocol.md).
//!
//! The core is sans-I/O, in the quinn-proto shape: an [`Endpoint`] (one per socket, many
//! sessions) is fed frames with [`Endpoint::handle_frame`] and the time, and produces frames
//! with [`Endpoint::poll_transmit`], a deadline with [`Endpoint::poll_timeout`], delivered
//! TLPs with [`Endpoint::poll_delivered`] and [`Event`]s with [`Endpoint::poll_event`].
//! [`sim`] runs it over a seeded faulty in-memory link; [`driver`] runs it on threads over an
//! in-memory link, UDP or raw Ethernet behind one [`driver::TransportHandle`].
//!
//! Sessions are set up by a Noise handshake ([`handshake`], docs/protocol.md §3) between static
//! X25519 keys ([`keys`]), defended against floods by cookies and rate limits ([`cookie`],
//! [`ratelimit`]) and rekeyed in place (`keyring.rs`); docs/security.md has the threat model.

pub mod congestion;
pub mod cookie;
pub mod crypto;
pub mod driver;
pub mod endpoint;
pub mod event;
pub mod frame;
pub mod handshake;
mod keyring;
pub mod keys;
mod logging;
pub mod ratelimit;
pub mod recv;
mod send;
mod session;
pub mod sim;
pub mod stats;
pub mod time;

/// The buffer types of the API (re-exported so callers need not depend on `bytes`).
pub use bytes::{Bytes, BytesMut};
pub use crypto::Cipher;
pub use endpoint::{ConnId, DownReason, Endpoint, Event, Role, Transmit};
pub use frame::CreditLimits;
pub use keys::{HostId, HostKey, KeyError, Psk, PublicKey, SecretKey};
pub use recv::Delivered;
pub use stats::{EndpointStats, Stats};
pub use time::{Clock, Instant};

use std::time::Duration;

/// Full frames of unsent TLPs a session is worth holding at least, whatever its congestion
/// window ([`Endpoint::wants_more`]): enough for the next transmit to fill frames while the
/// rest of a backlog waits with the submitter, where its order is decided.
pub const UNSENT_FRAMES: usize = 4;

/// Where a frame comes from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// A UDP socket address (IPv4 or IPv6).
    Udp(std::net::SocketAddr),
    /// An Ethernet MAC address.
    Eth([u8; 6]),
    /// A node of an in-memory link.
    Mem(u32),
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Udp(a) => write!(f, "udp:{a}"),
            PeerAddr::Eth(m) => write!(
                f,
                "eth:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            PeerAddr::Mem(n) => write!(f, "mem:{n}"),
        }
    }
}

/// Why a TLP was not accepted for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No established session for this peer (yet, or any more).
    #[error("no established session")]
    NotConnected,
    /// The bytes are not a TLP.
    #[error("not a TLP: {0}")]
    Classify(#[from] crate::tlp::ClassifyError),
    /// Larger than a frame can carry at the negotiated MTU.
    #[error("TLP of {len} bytes exceeds the {max}-byte maximum at this MTU")]
    TooLarge {
        /// TLP length
        len: usize,
        /// largest accepted
        max: usize,
    },
    /// Needs more credits than the receiver ever allocates.
    #[error("TLP needs more credits than the peer allocates")]
    ExceedsCredits,
    /// The send queue is full; retry after the peer returned credits.
    #[error("send queue full")]
    QueueFull,
}

/// Transport tunables (defaults suit a data-centre LAN).
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest frame we accept (our header through tag). UDP default 1472.
    pub mtu: usize,
    /// Ask for encrypted frames (the peer may also ask; either wins).
    pub encrypt: bool,
    /// Receive credits we allocate: P hdr, P data, NP hdr, NP data, Cpl hdr, Cpl data.
    pub credits: CreditLimits,
    /// Send a keepalive after this much silence.
    pub keepalive_interval: Duration,
    /// Declare the peer down after this much silence.
    pub idle_timeout: Duration,
    /// Longest an ACK is delayed.
    pub ack_delay: Duration,
    /// Bounds of the retransmission timeout.
    pub min_rto: Duration,
    /// Upper bound of the retransmission timeout.
    pub max_rto: Duration,
    /// RTO before the first RTT sample.
    pub initial_rto: Duration,
    /// First handshake retransmission delay (doubles).
    pub handshake_retry: Duration,
    /// Cap of the handshake / reconnect backoff.
    pub reconnect_max: Duration,
    /// Bytes of TLPs a session queues before `send_tlp` says `QueueFull`.
    pub max_pending_bytes: usize,
    /// Target queuing delay of the congestion controller.
    pub cc_target: Duration,
    /// Largest congestion window.
    pub max_window_bytes: usize,
    /// Server role: how often the appliance runs a coordinated drain (every session holds
    /// back for about two RTTs so all measure the true base delay; at least 40 × the largest
    /// SRTT). `Duration::ZERO` disables drains.
    pub cc_drain_interval: Duration,
    /// Frame AEAD: `None` negotiates (AES-256-GCM when both ends have AES instructions,
    /// ChaCha20-Poly1305 otherwise); `Some` offers or accepts only that one.
    pub cipher: Option<Cipher>,
    /// The host rekeys a session in place when its send key is this old…
    pub rekey_after: Duration,
    /// …and a key this old is never used again (the session ends if no rekey happened).
    pub reject_after: Duration,
    /// The host rekeys after this many frames under one key (the appliance asks for it)…
    pub rekey_after_frames: u64,
    /// …and no key seals more than this many (AES-GCM's confidentiality limit is 2^23 frames
    /// of this size; ChaCha20-Poly1305's is far higher).
    pub reject_after_frames: u64,
    /// Failed tag checks one receive key tolerates before the session ends (half of it asks
    /// for a rekey). Far below the AEADs' integrity limits (2^36 for ChaCha20-Poly1305).
    pub max_failed_tags: u64,
    /// How long an older receive key stays after a newer one was first used.
    pub rekey_overlap: Duration,
    /// Appliance: handshakes per second it works through before it is *under load* and asks
    /// for cookies…
    pub handshake_rate: u32,
    /// …with this burst.
    pub handshake_burst: u32,
    /// Appliance under load: handshakes per second and source (with a valid cookie)…
    pub source_handshake_rate: u32,
    /// …with this burst.
    pub source_handshake_burst: u32,
    /// Appliance: RESET hints per second at most (an answer to DATA for an unknown session; a
    /// flood of such frames gets no more answers than this).
    pub reset_rate: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mtu: 1472,
            encrypt: true,
            credits: [1024, 16384, 256, 256, 1024, 16384],
            keepalive_interval: Duration::from_millis(20),
            idle_timeout: Duration::from_secs(1),
            ack_delay: Duration::from_micros(500),
            min_rto: Duration::from_millis(1),
            max_rto: Duration::from_millis(200),
            initial_rto: Duration::from_millis(20),
            handshake_retry: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            max_pending_bytes: 1 << 20,
            cc_target: Duration::from_millis(1),
            max_window_bytes: 16 << 20,
            cc_drain_interval: Duration::from_millis(100),
            cipher: None,
            rekey_after: Duration::from_secs(120),
            reject_after: Duration::from_secs(180),
            rekey_after_frames: 1 << 22,
            reject_after_frames: 1 << 23,
            max_failed_tags: 1 << 20,
            rekey_overlap: Duration::from_secs(2),
            handshake_rate: 100,
            handshake_burst: 20,
            source_handshake_rate: 20,
            source_handshake_burst: 5,
            reset_rate: 1000,
        }
    }
}
