//! Counters for everything (docs/protocol.md §9): per-session [`Stats`] and endpoint-wide
//! [`EndpointStats`] (drops that belong to no session).

use std::time::Duration;

/// Per-session counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// DATA frames sent.
    pub frames_sent: u64,
    /// DATA frames accepted.
    pub frames_received: u64,
    /// Frame bytes sent.
    pub bytes_sent: u64,
    /// Frame bytes accepted.
    pub bytes_received: u64,
    /// ACK-only frames sent (including keepalives).
    pub ack_only_sent: u64,
    /// Keepalives sent.
    pub keepalives_sent: u64,
    /// TLPs submitted by the layer above.
    pub tlps_submitted: u64,
    /// TLPs transmitted for the first time.
    pub tlps_sent: u64,
    /// TLPs delivered upward (exactly once, in order).
    pub tlps_delivered: u64,
    /// TLP retransmissions.
    pub retransmits: u64,
    /// Retransmissions triggered by gaps (fast retransmit).
    pub fast_retransmits: u64,
    /// Retransmission timeouts.
    pub rto_expirations: u64,
    /// Duplicate TLPs received (dropped).
    pub dup_tlps: u64,
    /// TLPs beyond the receive window (dropped).
    pub out_of_window_tlps: u64,
    /// Frames with a bad tag (forged or corrupted).
    pub drop_bad_tag: u64,
    /// Frames whose packet number was replayed or too old.
    pub drop_replay: u64,
    /// Frames with a stale epoch.
    pub drop_stale_epoch: u64,
    /// Authenticated frames with a malformed body.
    pub drop_malformed: u64,
    /// Frames whose encryption flag disagreed with the session.
    pub drop_wrong_mode: u64,
    /// Frames for a session id this session received on before a rekey and no longer does.
    pub drop_stale_key: u64,
    /// Key changes completed (rekeys in place).
    pub rekeys: u64,
    /// The frame AEAD of the current send key.
    pub cipher: Option<crate::transport::Cipher>,
    /// Times the sender had TLPs but no credits.
    pub credit_stalls: u64,
    /// Smoothed RTT.
    pub srtt: Duration,
    /// Minimum RTT.
    pub min_rtt: Duration,
    /// Congestion window, bytes.
    pub cwnd: usize,
    /// Largest frame this session sends, bytes: the smaller of both ends' sizes, agreed in
    /// the handshake (protocol.md §3.2).
    pub mtu: usize,
}

/// Endpoint-wide counters: frames that never reached a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EndpointStats {
    /// Frames that failed header parsing.
    pub drop_bad_header: u64,
    /// DATA frames for a session id we do not know.
    pub drop_unknown_session: u64,
    /// DATA frames for a session that was replaced or closed.
    pub drop_stale_session: u64,
    /// INIT from a static key that is not on the list of hosts.
    pub drop_unknown_host: u64,
    /// INIT/RESP/COOKIE that did not authenticate (Noise decryption or cookie failed).
    pub drop_bad_handshake_mac: u64,
    /// INIT/RESP whose mac1 did not verify (garbage, or meant for another key): dropped
    /// before any public-key work.
    pub drop_bad_mac1: u64,
    /// INIT whose timestamp was not newer than the host's last one: a replay.
    pub drop_replayed_init: u64,
    /// INIT dropped under load: its source is over its rate.
    pub drop_rate_limited: u64,
    /// INIT dropped under load without an answer (the output queue was full).
    pub drop_under_load: u64,
    /// COOKIE replies sent (the appliance was under load).
    pub cookies_sent: u64,
    /// COOKIE replies accepted (host).
    pub cookies_received: u64,
    /// INITs that got as far as the public-key work (the expensive part).
    pub handshakes_processed: u64,
    /// Authenticated handshakes refused: no common version or cipher, a rekey for no session.
    pub handshakes_refused: u64,
    /// Malformed or unexpected handshake frames.
    pub drop_bad_handshake: u64,
    /// Frames that arrived from the wrong address for their session.
    pub drop_wrong_peer: u64,
    /// RESET hints received.
    pub resets_received: u64,
    /// RESET hints sent.
    pub resets_sent: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Sessions declared down.
    pub sessions_down: u64,
    /// Peers detected as restarted.
    pub peer_restarts: u64,
    /// Coordinated congestion drains started (server role).
    pub drains: u64,
}
