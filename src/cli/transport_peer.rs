//! `pcietun transport-peer` (hidden): a minimal transport endpoint for multi-process and
//! network-namespace tests (docs/transport.md). `--listen` echoes every delivered TLP back to
//! its sender; `--connect` sends `--count` TLPs of mixed classes and checks that each comes
//! back exactly once, per-class in order, with no Non-Posted or Completion TLP passing an
//! earlier posted write (docs/protocol.md §6).

use bytes::Bytes;
use pcietun::tlp::OrderingClass;
use pcietun::transport::driver::{
    self, eth, DriverConfig, HandleError, Peers, TransportHandle, Upcall,
};
use pcietun::transport::{
    keys, Event, HostId, HostKey, PeerAddr, Psk, PublicKey, SecretKey, SendError,
};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Why a transport-peer run failed.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    /// Neither or both of `--listen` and `--connect`.
    #[error("give exactly one of --listen or --connect")]
    Mode,
    /// No session within the timeout.
    #[error("no session established")]
    NoSession,
    /// Echoes missing at the deadline.
    #[error("only {got} of {count} TLPs echoed in time")]
    Lost {
        /// Echoes received.
        got: u32,
        /// TLPs sent.
        count: u32,
    },
    /// A TLP overtook a posted write sent before it (PCIe ordering, §2.4.1).
    #[error("{class:?} #{seq} passed a posted write")]
    PassedPosted {
        /// Its ordering class.
        class: OrderingClass,
        /// Its sequence number in that class.
        seq: u32,
    },
    /// The link reported an event mid-run (e.g. the session went down).
    #[error("link event {0:?}")]
    Event(Event),
    /// The transport dropped a TLP.
    #[error("TLP dropped: {0}")]
    Dropped(SendError),
    /// The sending thread panicked.
    #[error("the sender thread panicked")]
    SenderPanicked,
}

/// Arguments of `pcietun transport-peer`.
#[derive(Debug, clap::Args)]
pub struct PeerArgs {
    /// Accept sessions on `udp:IP:PORT` or `eth:IFACE` and echo TLPs.
    #[arg(long, conflicts_with = "connect")]
    listen: Option<String>,
    /// Connect to `udp:IP:PORT` or `eth:IFACE[,peer=MAC]` and run the echo check.
    #[arg(long)]
    connect: Option<String>,
    /// Host name in events (not sent).
    #[arg(long, default_value = "test-host")]
    host_id: String,
    /// Our private key file (default: $PCIETUN_PRIVATE_KEY, else the development key).
    #[arg(long, value_name = "FILE")]
    key: Option<std::path::PathBuf>,
    /// The other side's public key: the appliance's (--connect) or the one host accepted
    /// (--listen). Default: the development key's.
    #[arg(long, value_name = "PUBKEY")]
    peer_key: Option<String>,
    /// Optional pre-shared key file.
    #[arg(long, value_name = "FILE")]
    psk_file: Option<std::path::PathBuf>,
    /// TLPs to send (client).
    #[arg(long, default_value_t = 10_000)]
    count: u32,
    /// Drop this percentage of sent frames (seeded).
    #[arg(long, default_value_t = 0.0)]
    inject_loss: f64,
    /// Authenticate but do not encrypt frames.
    #[arg(long)]
    no_encrypt: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Split `eth:IFACE,...,peer=MAC` into the port spec and the peer MAC.
fn eth_peer(spec: &str) -> Res<PeerAddr> {
    for p in spec.split(',') {
        if let Some(m) = p.strip_prefix("peer=") {
            return Ok(PeerAddr::Eth(eth::parse_mac(m)?));
        }
    }
    Ok(PeerAddr::Eth([0xff; 6]))
}

pub fn run(a: PeerArgs) -> Res<ExitCode> {
    let host = HostId::new(&a.host_id)?;
    let psk = a.psk_file.as_deref().map(Psk::from_file).transpose()?;
    let key = keys::load_secret(a.key.as_deref())?;
    let peer_key: Option<PublicKey> = a.peer_key.as_deref().map(str::parse).transpose()?;
    if key.is_none() || peer_key.is_none() {
        let addr = a.listen.as_deref().or(a.connect.as_deref()).unwrap_or("");
        keys::require_loopback([addr])?;
        eprintln!("pcietun: warning: no --key/--peer-key given, using the built-in development keys: the link is NOT secure");
    }
    let listening = a.listen.is_some();
    let key = key.unwrap_or_else(|| {
        if listening {
            SecretKey::development_appliance()
        } else {
            SecretKey::development_host()
        }
    });
    let peer_key = peer_key.unwrap_or_else(|| {
        if listening {
            SecretKey::development_host().public_key()
        } else {
            SecretKey::development_appliance().public_key()
        }
    });
    let (port, peers) = match (&a.listen, &a.connect) {
        (Some(l), None) => (
            driver::open(l)?,
            Peers::Accept(vec![HostKey {
                host,
                public: peer_key,
                psk,
            }]),
        ),
        (None, Some(c)) => {
            if let Some(addr) = c.strip_prefix("udp:") {
                let server: std::net::SocketAddr = addr.parse()?;
                let bind = if server.is_ipv4() {
                    "udp:0.0.0.0:0"
                } else {
                    "udp:[::]:0"
                };
                let port = driver::open(bind)?;
                (
                    port,
                    Peers::Connect {
                        server: PeerAddr::Udp(server),
                        host,
                        server_key: peer_key,
                        psk,
                    },
                )
            } else {
                let server = eth_peer(c.strip_prefix("eth:").unwrap_or(c))?;
                (
                    driver::open(c)?,
                    Peers::Connect {
                        server,
                        host,
                        server_key: peer_key,
                        psk,
                    },
                )
            }
        }
        _ => return Err(PeerError::Mode.into()),
    };
    let mut cfg = DriverConfig::new(key, peers);
    cfg.inject_loss = a.inject_loss / 100.0;
    cfg.transport.encrypt = !a.no_encrypt;
    let t = TransportHandle::spawn(port, cfg)?;
    if listening {
        println!("transport-peer ready: {}", t.local_addr());
        std::io::stdout().flush()?;
        while let Some(u) = t.recv() {
            match u {
                Upcall::Tlp { conn, tlp, .. } => t.send(conn, tlp)?,
                Upcall::Event { conn, event } => eprintln!("transport-peer: {conn:?} {event:?}"),
                Upcall::Dropped { .. } => {}
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    client(t, a.count, Duration::from_secs(a.timeout_secs))
}

/// TLP `i` of the mixed stream: 60 % MWr, 25 % MRd, 15 % CplD, with ordering witnesses
/// (class sequence at bytes 4..8, posted writes before it at 8..12).
fn witness_tlp(i: u32, seqs: &mut [u32; 3], posted: &mut u32) -> Bytes {
    let class = match i.wrapping_mul(2_654_435_761) % 100 {
        0..60 => OrderingClass::Posted,
        60..85 => OrderingClass::NonPosted,
        _ => OrderingClass::Completion,
    };
    let (b0, dws) = match class {
        OrderingClass::Posted => (0x60u8, 1 + i % 32),
        OrderingClass::NonPosted => (0x20, 0),
        OrderingClass::Completion => (0x4a, 1 + i % 8),
    };
    let len = if dws == 0 { 1 } else { dws };
    let mut v = vec![b0, 0, (len >> 8) as u8 & 3, len as u8];
    v.extend_from_slice(&seqs[class.index()].to_be_bytes());
    v.extend_from_slice(&posted.to_be_bytes());
    v.extend_from_slice(&i.to_be_bytes());
    v.resize(16 + 4 * dws as usize, (i & 0xff) as u8);
    seqs[class.index()] += 1;
    if class == OrderingClass::Posted {
        *posted += 1;
    }
    Bytes::from(v)
}

fn client(t: TransportHandle, count: u32, timeout: Duration) -> Res<ExitCode> {
    let deadline = Instant::now() + timeout;
    let conn = loop {
        if Instant::now() > deadline {
            return Err(PeerError::NoSession.into());
        }
        if let Some(Upcall::Event {
            conn,
            event: Event::Connected { peer, .. },
        }) = t.recv_timeout(Duration::from_millis(100))
        {
            eprintln!("transport-peer: connected to {peer}");
            break conn;
        }
    };
    let t = std::sync::Arc::new(t);
    let tx = t.clone();
    let sender = std::thread::spawn(move || -> Result<(), HandleError> {
        let (mut seqs, mut posted) = ([0u32; 3], 0u32);
        for i in 0..count {
            tx.send(conn, witness_tlp(i, &mut seqs, &mut posted))?;
        }
        Ok(())
    });
    let mut next = [0u32; 3];
    let mut posted_seen = 0u32;
    let mut got = 0u32;
    let start = Instant::now();
    while got < count {
        if Instant::now() > deadline {
            return Err(PeerError::Lost { got, count }.into());
        }
        match t.recv_timeout(Duration::from_millis(100)) {
            Some(Upcall::Tlp { class, tlp, .. }) => {
                let f = |at: usize| {
                    u32::from_be_bytes([tlp[at], tlp[at + 1], tlp[at + 2], tlp[at + 3]])
                };
                let c = class.index();
                if f(4) != next[c] {
                    return Err(
                        format!("{class:?} #{} arrived, expected #{}", f(4), next[c]).into(),
                    );
                }
                if class != OrderingClass::Posted && f(8) > posted_seen {
                    return Err(PeerError::PassedPosted { class, seq: f(4) }.into());
                }
                if class == OrderingClass::Posted {
                    posted_seen += 1;
                }
                next[c] += 1;
                got += 1;
            }
            Some(Upcall::Event { event, .. }) => return Err(PeerError::Event(event).into()),
            Some(Upcall::Dropped { error, .. }) => return Err(PeerError::Dropped(error).into()),
            None => {}
        }
    }
    sender.join().map_err(|_| PeerError::SenderPanicked)??;
    let el = start.elapsed();
    let st = t.stats()?;
    println!(
        "transport-peer done: {count} TLPs echoed exactly once, in order, in {el:.2?}; retransmits {}, injected drops {}",
        st.sessions.iter().map(|s| s.1.retransmits).sum::<u64>(),
        st.injected_drops
    );
    Ok(ExitCode::SUCCESS)
}
