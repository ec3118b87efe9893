//! Overlapped data fetch for Write commands (NVMe 1.4c §6.15; §4.1 lets a controller execute
//! the commands of a submission queue in any order).
//!
//! Over the tunnel a DMA read is a network round trip, and a Write needs one before it can
//! complete. When a fetched batch holds several Writes, the worker asks the [`Prefetcher`] to
//! read the data of up to [`SLOTS`] of them at once (one scoped thread each, into preallocated
//! buffers), then executes the commands in order as before; a Write whose data is already here
//! takes it. Only the data read is overlapped: media writes and completions stay in submission
//! order on the worker.
//!
//! The prefetcher knows the batch (its entries), the namespace's geometry and the DMA handle
//! it is given — not the worker, which owns it.

use super::prp::{self, HostMemory};
use super::PAGE;
use crate::endpoint::device::DmaHandle;
use crate::pci::class::nvme::{nvm, Sqe, Status};

/// Writes whose data is read concurrently.
pub(super) const SLOTS: usize = 8;
/// Largest Write prefetched (bigger ones read their data when they run).
pub(super) const MAX_LEN: usize = 32 * 1024;

/// The namespace a Write must fit to be worth reading ahead.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    /// Namespace size in logical blocks.
    pub(super) blocks: u64,
    /// Logical block size in bytes.
    pub(super) block_size: u32,
}

/// One prefetched Write's data.
struct Slot {
    /// Index in the batch of the command this slot holds, if any.
    cmd: Option<usize>,
    len: usize,
    data: Vec<u8>,
    segs: Vec<(u64, usize)>,
    result: Result<(), Status>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            cmd: None,
            len: 0,
            data: vec![0; MAX_LEN],
            segs: Vec::with_capacity(16),
            result: Ok(()),
        }
    }

    fn fetch(&mut self, dma: &DmaHandle, cmd: &Sqe) {
        struct Mem<'a>(&'a DmaHandle);
        impl HostMemory for Mem<'_> {
            fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Status> {
                self.0.read(addr, buf).map_err(|_| Status::DATA_TRANSFER)
            }
        }
        let len = self.len;
        let (prp1, prp2) = (cmd.prp1.get(), cmd.prp2.get());
        self.result =
            prp::segments(&Mem(dma), prp1, prp2, len, PAGE, &mut self.segs).and_then(|()| {
                let mut at = 0;
                for &(addr, n) in &self.segs {
                    dma.read(addr, &mut self.data[at..at + n])
                        .map_err(|_| Status::DATA_TRANSFER)?;
                    at += n;
                }
                Ok(())
            });
    }
}

/// The data of Writes read ahead of their execution, for the batch being run.
pub(super) struct Prefetcher {
    slots: Vec<Slot>,
}

impl Prefetcher {
    /// Buffers for [`SLOTS`] Writes of up to [`MAX_LEN`] bytes, allocated once.
    pub(super) fn new() -> Self {
        Prefetcher {
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
        }
    }

    /// Forget whatever was read ahead (a batch starts or ends).
    pub(super) fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| s.cmd = None);
    }

    /// Before running command `k` of the batch `sqes`: if it is a prefetchable Write whose
    /// data is not here yet, read the data of it and of the next prefetchable Writes of the
    /// batch (up to [`SLOTS`]) concurrently.
    pub(super) fn prefetch_from(
        &mut self,
        dma: &DmaHandle,
        geometry: Geometry,
        sqes: &[Sqe],
        k: usize,
    ) {
        if self.slots.iter().any(|s| s.cmd == Some(k)) {
            return;
        }
        if prefetchable(&sqes[k], geometry).is_none() {
            return;
        }
        let mut used = 0;
        for (j, cmd) in sqes.iter().enumerate().skip(k) {
            if used == SLOTS {
                break;
            }
            if let Some(len) = prefetchable(cmd, geometry) {
                let slot = &mut self.slots[used];
                slot.cmd = Some(j);
                slot.len = len;
                used += 1;
            }
        }
        self.slots[used..].iter_mut().for_each(|s| s.cmd = None);
        if used < 2 {
            // Nothing to overlap: the Write reads its data itself.
            self.slots[0].cmd = None;
            return;
        }
        std::thread::scope(|s| {
            for slot in self.slots[..used].iter_mut() {
                let Some(j) = slot.cmd.take() else { continue };
                let cmd = sqes[j];
                // The slot is claimed only once its data is here; if no thread can be made,
                // the Write simply reads its data itself when it runs.
                let spawned = std::thread::Builder::new()
                    .name("nvme-prefetch".into())
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || {
                        slot.fetch(dma, &cmd);
                        slot.cmd = Some(j);
                    });
                if let Err(e) = spawned {
                    tracing::debug!("nvme: no prefetch thread: {e}");
                }
            }
        });
    }

    /// Take the prefetched data of batch command `k` (a Write of `len` bytes) into `data`,
    /// if there is any: `Some` of how its read went.
    pub(super) fn take(
        &mut self,
        k: usize,
        len: usize,
        data: &mut [u8],
    ) -> Option<Result<(), Status>> {
        let slot = self.slots.iter_mut().find(|s| s.cmd == Some(k))?;
        slot.cmd = None;
        if slot.len != len {
            return None;
        }
        if slot.result.is_ok() {
            data[..len].copy_from_slice(&slot.data[..len]);
        }
        Some(slot.result)
    }
}

/// The data length of `cmd` if it is a Write worth prefetching (valid in every way the Write
/// path checks before its data transfer).
fn prefetchable(cmd: &Sqe, geometry: Geometry) -> Option<usize> {
    if cmd.opcode != nvm::WRITE || cmd.nsid.get() != 1 || cmd.psdt() != 0 || cmd.fuse() != 0 {
        return None;
    }
    let nlb = u64::from(cmd.blocks());
    if cmd
        .slba()
        .checked_add(nlb)
        .is_none_or(|e| e > geometry.blocks)
    {
        return None;
    }
    let len = nlb * u64::from(geometry.block_size);
    (len <= MAX_LEN as u64).then_some(len as usize)
}
