//! The driver without a thread: the caller owns the endpoint and the port and runs them in
//! its own thread ([`Direct::poll`]), so a request and its answer cross no thread boundary —
//! the lowest-latency way to use the transport (an MMIO read path, a benchmark). Same
//! [`Upcall`]s as [`super::TransportHandle`].

use super::core::Core;
use super::{DriverConfig, DriverStats, Port, Upcall};
use crate::transport::endpoint::ConnId;
use crate::transport::{PeerAddr, SendError};
use bytes::Bytes;
use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

/// A transport endpoint driven by the caller's thread.
pub struct Direct {
    core: Core,
    queue: VecDeque<Upcall>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").finish_non_exhaustive()
    }
}

impl Direct {
    /// Over `port` (nothing runs until [`poll`](Self::poll) is called).
    pub fn new(port: Box<dyn Port>, cfg: DriverConfig) -> Direct {
        Direct {
            core: Core::new(port, cfg),
            queue: VecDeque::with_capacity(1024),
        }
    }

    /// Our address on the link.
    pub fn local_addr(&self) -> PeerAddr {
        self.core.port.local_addr()
    }

    /// Queue a TLP and transmit at once. `QueueFull` means: poll, then retry.
    pub fn send(&mut self, conn: ConnId, tlp: Bytes) -> Result<(), SendError> {
        self.core.submit(conn, tlp).map_err(|(_, e)| e)?;
        self.core.transmit();
        Ok(())
    }

    /// Run the link until an upcall is ready or `timeout` passes (`None`: wait for ever).
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<Option<Upcall>> {
        let end = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(u) = self.queue.pop_front() {
                return Ok(Some(u));
            }
            // One frame at a time: its TLPs go up before we drain the socket (the final
            // would-block read then happens off the latency path, on the next call).
            let mut work = self.core.receive(1)?;
            work |= self.core.transmit();
            let q = &mut self.queue;
            let mut sink = |u: Upcall| {
                q.push_back(u);
                Ok(())
            };
            work |= self.core.deliver(&mut sink).unwrap_or(true);
            if !self.queue.is_empty() {
                continue;
            }
            let left = match end {
                Some(e) => {
                    let now = Instant::now();
                    if now >= e {
                        return Ok(None);
                    }
                    Some(e - now)
                }
                None => None,
            };
            if work {
                continue;
            }
            if self.core.busy {
                std::thread::yield_now(); // see the threaded driver: never hold a core
            } else {
                self.core.wait(left)?;
            }
        }
    }

    /// A snapshot of all counters.
    pub fn stats(&self) -> DriverStats {
        self.core.snapshot()
    }
}
