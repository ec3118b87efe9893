//! The values an [`Endpoint`](super::Endpoint) hands out: peer handles, roles, events and
//! frames to transmit (docs/protocol.md §3, §7).

use super::{HostId, PeerAddr};
use bytes::Bytes;

/// Handle of one peer (a host on the server side, the server on the client side). Stable
/// across reconnections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

/// Which side of the handshake this endpoint plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Host agent: connects.
    Client,
    /// Appliance: accepts.
    Server,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// No authenticated frame for the idle timeout.
    IdleTimeout,
    /// The peer came back with a new epoch: the old session is gone.
    PeerRestarted,
    /// The session key reached its age or usage limit without a rekey.
    KeyExpired,
    /// Too many frames failed the tag check under one key (forgeries or a broken path).
    TooManyBadTags,
    /// The appliance stopped accepting the host (removed or re-keyed at run time).
    Removed,
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DownReason::IdleTimeout => "idle timeout",
            DownReason::PeerRestarted => "peer restarted",
            DownReason::KeyExpired => "key expired without a rekey",
            DownReason::TooManyBadTags => "too many failed tag checks",
            DownReason::Removed => "host removed",
        })
    }
}

/// Something the layer above must know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A session is up; TLPs can flow.
    Connected {
        /// The host on the other side (server) or ours (client).
        host: HostId,
        /// Where the peer is.
        peer: PeerAddr,
        /// The peer's epoch for this session.
        peer_epoch: u32,
    },
    /// The session is down. Every Non-Posted TLP the transport still held is returned: its
    /// completion will never come (complete it with a Completion Timeout). Requests already
    /// delivered whose completion is outstanding must be failed by the requester too.
    Down {
        /// Why.
        reason: DownReason,
        /// Non-Posted TLPs that were queued or unacknowledged.
        failed_nonposted: Vec<Bytes>,
    },
}

/// A frame to put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub dst: PeerAddr,
    /// Bytes written at the start of the caller's buffer.
    pub len: usize,
}
