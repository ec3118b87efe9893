//! Command fetch started by the doorbell (NVMe 1.4c §4.1: the controller may fetch any entry
//! between its head and the tail the host wrote, as soon as the doorbell is written).
//!
//! Without this the SQ tail doorbell only woke the worker, and the worker then queued the
//! fetch for the TLP thread: two thread hand-offs before the one round trip a command needs
//! left the appliance. Now the register file — on the TLP thread, in the pass that handled the
//! doorbell — starts the DMA reads of the new entries itself ([`on_doorbell`]), so the
//! Memory Read leaves at once and the worker wakes while it is on the wire. The worker then
//! takes the reads that start at its head ([`take`]) instead of issuing its own.
//!
//! The reads are only a head start, never a second source of truth: which entries form a
//! batch (head, CQ room, `FETCH_MAX`) is still decided by the worker under the controller's
//! lock. A read that no longer starts at the head (the worker took fewer entries than it
//! covers) or belongs to an older controller epoch or queue is dropped; each SQ's chain is
//! cleared when the queue is created, deleted or the controller reset, so entries of an old
//! queue are never run. At most [`MAX_READS`] reads per SQ are outstanding, each within the
//! ring (a wrap starts a new one), each at most `FETCH_MAX` entries.

use std::collections::VecDeque;

use super::{Ctrl, Sq, FETCH_MAX};
use crate::endpoint::device::{DmaHandle, PendingRead};
use crate::pci::class::nvme::{cc, csts, SQE_SIZE};

/// Reads started ahead per submission queue.
pub(super) const MAX_READS: usize = 8;

/// A read of SQ entries `first .. first + n` started by a doorbell.
#[derive(Debug)]
pub(crate) struct Ahead {
    epoch: u64,
    base: u64,
    first: u16,
    n: u16,
    read: PendingRead,
}

/// The chain of reads of each submission queue, in ring order (by qid).
pub(crate) type Chains = Vec<VecDeque<Ahead>>;

/// Empty chains for `queues` submission queues (room for every read allocated now).
pub(crate) fn chains(queues: usize) -> Chains {
    (0..queues)
        .map(|_| VecDeque::with_capacity(MAX_READS))
        .collect()
}

fn current(a: &Ahead, c_epoch: u64, sq: &Sq) -> bool {
    a.epoch == c_epoch && a.base == sq.base
}

/// On the TLP thread, after I/O SQ `qid`'s tail doorbell moved: start reading the entries up
/// to the new tail that no read covers yet.
pub(super) fn on_doorbell(c: &mut Ctrl, dma: &DmaHandle, qid: usize) {
    let ready = c.cc & cc::EN != 0
        && c.csts & csts::RDY != 0
        && c.csts & csts::CFS == 0
        && cc::shn(c.cc) == 0
        && !c.stop;
    let Some(sq) = c.sqs.get(qid).copied().flatten() else {
        return;
    };
    let epoch = c.epoch;
    let Some(chain) = c.ahead.get_mut(qid) else {
        return;
    };
    if !ready || qid == 0 {
        chain.clear();
        return;
    }
    // A chain that no longer starts at the head is stale (the worker fetched past it).
    if chain
        .front()
        .is_some_and(|a| !current(a, epoch, &sq) || a.first != sq.head)
    {
        chain.clear();
    }
    let mut at = chain.back().map_or(sq.head, |a| (a.first + a.n) % sq.size);
    while at != sq.tail && chain.len() < MAX_READS {
        // Up to the tail or the end of the ring, whichever comes first.
        let run = if sq.tail > at {
            sq.tail - at
        } else {
            sq.size - at
        };
        let n = run.min(FETCH_MAX as u16);
        let addr = sq.base + u64::from(at) * SQE_SIZE as u64;
        let Ok(read) = dma.start_read(addr, usize::from(n) * SQE_SIZE) else {
            // Bus Master Enable clear or the function going away: the worker finds out.
            return;
        };
        chain.push_back(Ahead {
            epoch,
            base: sq.base,
            first: at,
            n,
            read,
        });
        at = (at + n) % sq.size;
    }
}

/// On the worker, forming a batch of `n` entries of SQ `qid` from `sq.head`: move the reads
/// that cover its first entries, whole and in order, to `out`; returns how many entries they
/// cover (the worker reads the rest itself).
pub(super) fn take(c: &mut Ctrl, qid: usize, sq: &Sq, n: u16, out: &mut Vec<PendingRead>) -> u16 {
    let epoch = c.epoch;
    let Some(chain) = c.ahead.get_mut(qid) else {
        return 0;
    };
    if chain
        .front()
        .is_some_and(|a| !current(a, epoch, sq) || a.first != sq.head)
    {
        chain.clear();
    }
    let mut covered = 0u16;
    while let Some(a) = chain.front() {
        if covered + a.n > n || out.len() == out.capacity() {
            break;
        }
        covered += a.n;
        if let Some(a) = chain.pop_front() {
            out.push(a.read);
        }
    }
    covered
}
