//! In-memory port pair for the threaded driver (real time, same process): the in-process
//! link used by tests and `pcietun bench transport --link mem`. Seeded faults for the
//! sans-I/O simulation live in [`crate::transport::sim`]; here `inject_loss` applies.

use super::{Port, Wake};
use crate::transport::PeerAddr;
use crossbeam::channel::{self, Receiver, Sender};
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// One end of an in-memory link.
#[derive(Debug)]
pub struct MemPort {
    node: u32,
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    peer_wake: Sender<()>,
    stash: Option<Vec<u8>>,
}

struct MemWaker(Sender<()>);

impl Wake for MemWaker {
    fn wake(&self) {
        let _ = self.0.try_send(());
    }
}

/// Two connected ports: node 0 and node 1.
pub fn pair() -> (MemPort, MemPort) {
    let (a_tx, a_rx) = channel::bounded(4096);
    let (b_tx, b_rx) = channel::bounded(4096);
    let (aw_tx, aw_rx) = channel::bounded(1);
    let (bw_tx, bw_rx) = channel::bounded(1);
    (
        MemPort {
            node: 0,
            tx: b_tx,
            rx: a_rx,
            wake_tx: aw_tx.clone(),
            wake_rx: aw_rx,
            peer_wake: bw_tx.clone(),
            stash: None,
        },
        MemPort {
            node: 1,
            tx: a_tx,
            rx: b_rx,
            wake_tx: bw_tx,
            wake_rx: bw_rx,
            peer_wake: aw_tx,
            stash: None,
        },
    )
}

impl Port for MemPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, PeerAddr)>> {
        let f = match self.stash.take() {
            Some(f) => f,
            None => match self.rx.try_recv() {
                Ok(f) => f,
                Err(_) => return Ok(None),
            },
        };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(Some((n, PeerAddr::Mem(1 - self.node))))
    }

    fn send(&mut self, frame: &[u8], _dst: PeerAddr) -> io::Result<()> {
        // A full queue drops the frame, like a full NIC ring.
        let _ = self.tx.try_send(frame.to_vec());
        let _ = self.peer_wake.try_send(());
        Ok(())
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.stash.is_some() || !self.rx.is_empty() {
            return Ok(());
        }
        let t = timeout.unwrap_or(Duration::from_secs(3600));
        channel::select! {
            recv(self.rx) -> f => self.stash = f.ok(),
            recv(self.wake_rx) -> _ => {},
            default(t) => {},
        }
        Ok(())
    }

    fn waker(&self) -> Arc<dyn Wake> {
        Arc::new(MemWaker(self.wake_tx.clone()))
    }

    fn local_addr(&self) -> PeerAddr {
        PeerAddr::Mem(self.node)
    }

    fn mtu(&self) -> usize {
        9000
    }
}
