//! NVM command set I/O commands (NVMe 1.4c §6): Read (§6.9), Write (§6.15), Flush (§6.8),
//! Write Zeroes (§6.16), Dataset Management (§6.7), against the namespace's backing store.

use super::spec::{nvm, Command, Status};
use super::worker::{Outcome, Worker, MAX_TRANSFER};

impl Worker {
    pub(super) fn io(&mut self, cmd: &Command) -> Outcome {
        let blocks = self.backend.blocks();
        let bs = u64::from(self.backend.block_size());
        if !(cmd.opcode == nvm::FLUSH && cmd.nsid == 0xffff_ffff) && cmd.nsid != 1 {
            return Outcome::err(Status::INVALID_NAMESPACE);
        }
        let slba = u64::from(cmd.cdw(10)) | (u64::from(cmd.cdw(11)) << 32);
        let nlb = u64::from(cmd.cdw(12) & 0xffff) + 1;
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
                let pre = if cmd.opcode == nvm::WRITE {
                    self.take_prefetched(len)
                } else {
                    None
                };
                if pre.is_none() {
                    if let Err(s) = self.map(cmd, len) {
                        return fail(s);
                    }
                }
                let off = slba * bs;
                if cmd.opcode == nvm::READ {
                    if let Err(e) = self.backend.read_at(&mut self.data[..len], off) {
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
                    let fua = cmd.cdw(12) & (1 << 30) != 0;
                    let write_through = !self.shared.lock().feat.vwc;
                    let res = self
                        .backend
                        .write_at(&self.data[..len], off)
                        .and_then(|()| {
                            if fua || write_through {
                                self.backend.flush()
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
            nvm::FLUSH => match self.backend.flush() {
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
                match self.backend.write_zeroes(slba * bs, nlb * bs) {
                    Ok(()) => Outcome::ok(0),
                    Err(e) => {
                        tracing::warn!("nvme: {e}");
                        fail(Status::WRITE_FAULT)
                    }
                }
            }
            nvm::DSM => {
                let nr = (cmd.cdw(10) & 0xff) as usize + 1;
                let deallocate = cmd.cdw(11) & (1 << 2) != 0;
                let len = nr * 16;
                if let Err(s) = self.map(cmd, len).and_then(|()| self.dma_in(len)) {
                    return Outcome::err(s);
                }
                let mut ranges = Vec::with_capacity(nr);
                for r in self.data[..len].chunks_exact(16) {
                    let n = u64::from(u32::from_le_bytes([r[4], r[5], r[6], r[7]]));
                    let s =
                        u64::from_le_bytes([r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]]);
                    if s.checked_add(n).is_none_or(|e| e > blocks) {
                        return fail(Status::LBA_OUT_OF_RANGE);
                    }
                    ranges.push((s, n));
                }
                if deallocate {
                    for (s, n) in ranges {
                        if let Err(e) = self.backend.deallocate(s * bs, n * bs) {
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
