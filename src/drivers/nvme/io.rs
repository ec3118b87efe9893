//! The NVMe driver's I/O queue pair (NVMe 1.4c §4.1 queue processing, §4.3 PRPs, §6.9 Read,
//! §6.15 Write, §6.8 Flush): command slots and their buffers, Read/Write submission, the
//! passthrough of any I/O command ([`NvmeDriver::submit_command`],
//! [`NvmeDriver::io_command`]), staged entries with one doorbell per batch, completion reaping
//! (polled or on the MSI-X eventfd) and pipelined transfers.
//!
//! The hot path — `submit`, `poll`, `wait` — allocates nothing and reads no register: it
//! writes entries and PRP lists into the driver's memory, posts doorbell writes, and reads
//! completions from its memory.

use std::time::{Duration, Instant};

use super::{
    set_prps, Data, InvalidRequest, IoDone, IoOp, NvmeDriver, NvmeError, Queue, SlotData,
    SlotState, MAX_TRANSFER, PAGE,
};
use crate::pci::class::nvme::Sqe;

impl NvmeDriver {
    fn slot_off(&self, slot: u16) -> u64 {
        self.at.data + u64::from(slot) * MAX_TRANSFER as u64
    }

    /// Copy `data` into the buffer of `slot` (before submitting a write from it).
    pub fn fill_slot(&self, slot: u16, data: &[u8]) -> Result<(), NvmeError> {
        if slot as usize >= self.cfg.depth || data.len() > MAX_TRANSFER {
            return Err(InvalidRequest::SlotBuffer {
                slot,
                len: data.len(),
            }
            .into());
        }
        self.mem.write_at(self.slot_off(slot), data)?;
        Ok(())
    }

    /// Copy the start of `slot`'s buffer into `buf` (after a read into it completed).
    pub fn slot_data(&self, slot: u16, buf: &mut [u8]) -> Result<(), NvmeError> {
        if slot as usize >= self.cfg.depth || buf.len() > MAX_TRANSFER {
            return Err(InvalidRequest::SlotBuffer {
                slot,
                len: buf.len(),
            }
            .into());
        }
        self.mem.read_at(self.slot_off(slot), buf)?;
        Ok(())
    }

    /// A free slot, if any (fill it, then [`submit`](Self::submit) it).
    pub fn take_slot(&mut self) -> Option<u16> {
        let slot = self.free.pop()?;
        self.slots[slot as usize] = SlotState::Taken;
        Some(slot)
    }

    /// Submit Read or Write of `blocks` blocks at `lba` using `slot`'s buffer.
    pub fn submit(&mut self, slot: u16, op: IoOp, lba: u64, blocks: u32) -> Result<(), NvmeError> {
        self.check_slot(slot)?;
        let bytes = blocks as usize * self.info.block_size as usize;
        if blocks == 0 || bytes > self.info.max_transfer {
            return Err(InvalidRequest::TransferSize {
                blocks,
                bytes,
                max: self.info.max_transfer,
            }
            .into());
        }
        if lba
            .checked_add(u64::from(blocks))
            .is_none_or(|e| e > self.info.blocks)
        {
            return Err(InvalidRequest::BeyondNamespace {
                lba,
                blocks,
                size: self.info.blocks,
            }
            .into());
        }
        let cmd = match op {
            IoOp::Read => Sqe::read(1, lba, blocks),
            IoOp::Write => Sqe::write(1, lba, blocks),
        };
        self.submit_command(slot, cmd, SlotData::Buffer(bytes))
    }

    fn check_slot(&self, slot: u16) -> Result<(), NvmeError> {
        match self.slots.get(slot as usize) {
            None => Err(InvalidRequest::NoSlot(slot).into()),
            Some(SlotState::Busy(_)) => Err(InvalidRequest::SlotBusy(slot).into()),
            Some(_) => Ok(()),
        }
    }

    /// Submit I/O command `cmd` as it is, using `slot` (its command identifier becomes the
    /// slot) and ring the doorbell. With [`SlotData::Buffer`] the driver points the command
    /// at the slot's buffer; with [`SlotData::AsGiven`] its PRP entries are sent unchanged.
    /// No other field is checked: this is the passthrough of a command the caller built.
    pub fn submit_command(&mut self, slot: u16, cmd: Sqe, data: SlotData) -> Result<(), NvmeError> {
        self.stage_command(slot, cmd, data)?;
        self.ring_doorbell()
    }

    /// [`submit_command`](Self::submit_command) without ringing the doorbell: the controller
    /// sees this entry, and every other one staged, at the next
    /// [`ring_doorbell`](Self::ring_doorbell) — one posted write for a whole batch.
    pub fn stage_command(
        &mut self,
        slot: u16,
        mut cmd: Sqe,
        data: SlotData,
    ) -> Result<(), NvmeError> {
        self.check_slot(slot)?;
        if let SlotData::Buffer(len) = data {
            if len > MAX_TRANSFER {
                return Err(InvalidRequest::SlotTransfer(len).into());
            }
            let list = self.at.prp + u64::from(slot) * PAGE as u64;
            set_prps(&self.mem, &mut cmd, self.slot_off(slot), len, list)?;
        }
        cmd.cid.set(slot);
        let mut q = std::mem::replace(&mut self.io, Queue::new(1, 0, 0, 1));
        let r = self.write_entry(&mut q, &cmd);
        self.io = q;
        r?;
        if self.slots[slot as usize] == SlotState::Free {
            // Submitted without take_slot: it leaves the free list here.
            self.free.retain(|&s| s != slot);
        }
        self.slots[slot as usize] = SlotState::Busy(Instant::now());
        self.staged += 1;
        Ok(())
    }

    /// Ring the I/O SQ tail doorbell for the entries staged since the last ring, if any.
    pub fn ring_doorbell(&mut self) -> Result<(), NvmeError> {
        if self.staged == 0 {
            return Ok(());
        }
        self.staged = 0;
        crate::probe::hit(crate::probe::Ev::DrvSqDoorbell);
        self.w32(self.sq_doorbell(&self.io), u32::from(self.io.sq_tail))
    }

    /// Put `slot` back on the free list (once).
    fn release(&mut self, slot: u16) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            if *s != SlotState::Free {
                *s = SlotState::Free;
                self.free.push(slot);
            }
        }
    }

    /// Reap every completion already posted; returns how many `on_done` got.
    pub fn poll(&mut self, on_done: &mut impl FnMut(IoDone)) -> Result<usize, NvmeError> {
        let mut q = std::mem::replace(&mut self.io, Queue::new(1, 0, 0, 1));
        let r = self.reap(&mut q, on_done);
        self.io = q;
        r
    }

    fn reap(
        &mut self,
        q: &mut Queue,
        on_done: &mut impl FnMut(IoDone),
    ) -> Result<usize, NvmeError> {
        let mut n = 0;
        let mut reaped = 0;
        while let Some(c) = self.pop(q)? {
            reaped += 1;
            crate::probe::hit(crate::probe::Ev::DrvReaped);
            let cid = c.cid.get();
            let Some(&SlotState::Busy(started)) = self.slots.get(cid as usize) else {
                tracing::warn!(cid, "completion for a command not in flight");
                continue;
            };
            let latency = started.elapsed();
            self.release(cid);
            n += 1;
            on_done(IoDone {
                slot: cid,
                status: c.status(),
                dw0: c.dw0.get(),
                sq_head: c.sqhd.get(),
                sq_id: c.sqid.get(),
                latency,
            });
        }
        q.unreported = q.unreported.saturating_add(reaped);
        if reaped > 0 && q.unreported > q.lazy {
            crate::probe::hit(crate::probe::Ev::DrvCqDoorbell);
            q.unreported = 0;
            self.w32(self.cq_doorbell(q), u32::from(q.cq_head))?;
        }
        Ok(n)
    }

    /// Wait until at least one command completes (or the command timeout passes) and reap.
    /// Staged commands are made visible first (their doorbell is rung).
    pub fn wait(&mut self, on_done: &mut impl FnMut(IoDone)) -> Result<usize, NvmeError> {
        self.ring_doorbell()?;
        let t0 = Instant::now();
        loop {
            let n = self.poll(on_done)?;
            if n > 0 || self.in_flight() == 0 {
                return Ok(n);
            }
            if t0.elapsed() > self.cfg.command_timeout {
                let busy = |s: &SlotState| matches!(s, SlotState::Busy(_));
                let cid = self.slots.iter().position(busy).unwrap_or(0) as u16;
                return Err(NvmeError::CommandTimeout {
                    cid,
                    ms: self.cfg.command_timeout.as_millis(),
                });
            }
            match &self.irq {
                // The eventfd counts interrupts, so one raised between the poll and this wait
                // is not lost. The timeout only bounds a lost interrupt.
                Some(fd) => {
                    crate::probe::hit(crate::probe::Ev::DrvIrqWait);
                    self.io_interrupts += fd.wait_timeout(Duration::from_millis(5))?;
                    crate::probe::hit(crate::probe::Ev::DrvIrqWake);
                }
                None => std::hint::spin_loop(),
            }
        }
    }

    /// Run I/O command `cmd` on its own and wait for it, whatever its status: `data` goes
    /// through a slot's buffer (at most [`MAX_TRANSFER`] bytes); with [`Data::None`] the PRP
    /// entries of `cmd` are sent as they are. The queue must be idle (no command in flight).
    pub fn io_command(&mut self, cmd: Sqe, data: Data<'_>) -> Result<IoDone, NvmeError> {
        if self.in_flight() > 0 {
            return Err(InvalidRequest::QueueBusy(self.in_flight()).into());
        }
        let slot = self.take_slot().ok_or(InvalidRequest::NoFreeSlot)?;
        let ptr = match &data {
            Data::None => SlotData::AsGiven,
            Data::FromDevice(b) => SlotData::Buffer(b.len()),
            Data::ToDevice(b) => {
                if let Err(e) = self.fill_slot(slot, b) {
                    self.release(slot);
                    return Err(e);
                }
                SlotData::Buffer(b.len())
            }
        };
        if let Err(e) = self.submit_command(slot, cmd, ptr) {
            self.release(slot);
            return Err(e);
        }
        let mut got = None;
        let done = loop {
            self.wait(&mut |d| got = Some(d))?;
            if let Some(d) = got {
                break d;
            }
        };
        if let Data::FromDevice(b) = data {
            self.slot_data(slot, b)?;
        }
        Ok(done)
    }

    /// Flush the volatile write cache of namespace 1 (§6.8).
    pub fn flush(&mut self) -> Result<(), NvmeError> {
        let d = self.io_command(Sqe::flush(1), Data::None)?;
        if d.status.is_success() {
            Ok(())
        } else {
            Err(NvmeError::Status {
                cmd: "Flush",
                status: d.status,
            })
        }
    }

    /// Run `len` bytes of `op` at `lba` through the queue, keeping it as full as the depth
    /// allows: `data` is written (Write) or filled (Read). `progress` gets bytes done.
    pub fn transfer(
        &mut self,
        op: IoOp,
        lba: u64,
        data: &mut [u8],
        progress: &mut impl FnMut(u64),
    ) -> Result<(), NvmeError> {
        let bs = self.info.block_size as usize;
        if data.len() % bs != 0 {
            return Err(InvalidRequest::NotBlocks {
                len: data.len(),
                block: bs,
            }
            .into());
        }
        let chunk = self.info.max_transfer;
        // Chunk offset each in-flight slot serves.
        let mut at = vec![0usize; self.cfg.depth];
        let mut next = 0usize;
        let mut failed: Option<NvmeError> = None;
        let mut done = Vec::with_capacity(self.cfg.depth);
        while next < data.len() || self.in_flight() > 0 {
            while next < data.len() && failed.is_none() {
                let Some(slot) = self.take_slot() else { break };
                let n = chunk.min(data.len() - next);
                if op == IoOp::Write {
                    self.fill_slot(slot, &data[next..next + n])?;
                }
                at[slot as usize] = next;
                self.submit(slot, op, lba + (next / bs) as u64, (n / bs) as u32)?;
                next += n;
            }
            self.wait(&mut |d| done.push(d))?;
            for d in done.drain(..) {
                let off = at[d.slot as usize];
                let n = chunk.min(data.len() - off);
                if !d.status.is_success() {
                    failed.get_or_insert(NvmeError::Status {
                        cmd: if op == IoOp::Read { "Read" } else { "Write" },
                        status: d.status,
                    });
                    continue;
                }
                if op == IoOp::Read {
                    self.slot_data(d.slot, &mut data[off..off + n])?;
                }
                progress(n as u64);
            }
            if failed.is_some() && self.in_flight() == 0 {
                break;
            }
        }
        failed.map_or(Ok(()), Err)
    }
}
