//! NVM command set I/O commands (NVMe 1.4c §6): Read (§6.9), Write (§6.15), Flush (§6.8),
//! Write Zeroes (§6.16), Dataset Management (§6.7), against the namespace (a slice of the
//! backing store, see `namespace.rs`).

use zerocopy::FromBytes;

use super::worker::{Outcome, Worker};
use super::MAX_TRANSFER;
use crate::pci::class::nvme::{nvm, DsmRange, Sqe, Status, NSID_ALL};

impl Worker {
    pub(super) fn io(&mut self, cmd: &Sqe) -> Outcome {
        let blocks = self.ns.blocks();
        let bs = u64::from(self.ns.block_size());
        let nsid = cmd.nsid.get();
        if !(cmd.opcode == nvm::FLUSH && nsid == NSID_ALL) && nsid != 1 {
            return Outcome::err(Status::INVALID_NAMESPACE);
        }
        let slba = cmd.slba();
        let nlb = u64::from(cmd.blocks());
        let in_range = slba.checked_add(nlb).is_some_and(|e| e <= blocks);
        let fail = |status: Status| Outcome {
            status,
            dw0: 0,
            post: true,
            lba: slba,
        };
        match cmd.opcode {
            nvm::READ | nvm::WRITE => {
                if !in_range {
                    return fail(Status::LBA_OUT_OF_RANGE);
                }
                let len = (nlb * bs) as usize;
                if len > MAX_TRANSFER {
                    return fail(Status::INVALID_FIELD);
                }
                // A Write whose data was read ahead (see `prefetch`) needs no mapping.
                let pre = match self.current {
                    Some(k) if cmd.opcode == nvm::WRITE => {
                        self.prefetch.take(k, len, &mut self.data)
                    }
                    _ => None,
                };
                if pre.is_none() {
                    if let Err(s) = self.map(cmd, len) {
                        return fail(s);
                    }
                }
                if cmd.opcode == nvm::READ {
                    if let Err(e) = self.ns.read(slba, &mut self.data[..len]) {
                        tracing::warn!("nvme: {e}");
                        self.shared.lock().health.media_errors += 1;
                        return fail(Status::READ_ERROR);
                    }
                    if let Err(s) = self.dma_out(len) {
                        return fail(s);
                    }
                    let mut c = self.shared.lock();
                    c.health.read_cmds += 1;
                    c.health.units_read += nlb;
                } else {
                    if let Err(s) = pre.unwrap_or_else(|| self.dma_in(len)) {
                        return fail(s);
                    }
                    let fua = cmd.fua();
                    let write_through = !self.shared.lock().feat.vwc;
                    let res = self.ns.write(slba, &self.data[..len]).and_then(|()| {
                        if fua || write_through {
                            self.ns.flush()
                        } else {
                            Ok(())
                        }
                    });
                    if let Err(e) = res {
                        tracing::warn!("nvme: {e}");
                        self.shared.lock().health.media_errors += 1;
                        return fail(Status::WRITE_FAULT);
                    }
                    let mut c = self.shared.lock();
                    c.health.write_cmds += 1;
                    c.health.units_written += nlb;
                }
                Outcome::ok(0)
            }
            nvm::FLUSH => match self.ns.flush() {
                Ok(()) => Outcome::ok(0),
                Err(e) => {
                    tracing::warn!("nvme: {e}");
                    fail(Status::WRITE_FAULT)
                }
            },
            nvm::WRITE_ZEROES => {
                if !in_range {
                    return fail(Status::LBA_OUT_OF_RANGE);
                }
                match self.ns.write_zeroes(slba, nlb) {
                    Ok(()) => Outcome::ok(0),
                    Err(e) => {
                        tracing::warn!("nvme: {e}");
                        fail(Status::WRITE_FAULT)
                    }
                }
            }
            nvm::DSM => {
                let nr = cmd.dsm_ranges();
                let deallocate = cmd.dsm_deallocate();
                let len = nr * size_of::<DsmRange>();
                if let Err(s) = self.map(cmd, len).and_then(|()| self.dma_in(len)) {
                    return Outcome::err(s);
                }
                let mut ranges = Vec::with_capacity(nr);
                let Ok(list) = <[DsmRange]>::ref_from_bytes(&self.data[..len]) else {
                    return Outcome::err(Status::INTERNAL);
                };
                for r in list {
                    let (s, n) = (r.slba.get(), u64::from(r.blocks.get()));
                    if s.checked_add(n).is_none_or(|e| e > blocks) {
                        return fail(Status::LBA_OUT_OF_RANGE);
                    }
                    ranges.push((s, n));
                }
                if deallocate {
                    for (s, n) in ranges {
                        if let Err(e) = self.ns.deallocate(s, n) {
                            tracing::warn!("nvme: {e}");
                            return fail(Status::WRITE_FAULT);
                        }
                    }
                }
                Outcome::ok(0)
            }
            _ => Outcome::err(Status::INVALID_OPCODE),
        }
    }
}
