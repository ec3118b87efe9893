//! The NVMe driver's admin queue (NVMe 1.4c §5): synchronous passthrough of any admin
//! command ([`NvmeDriver::admin_command`]), commands left outstanding such as Asynchronous
//! Event Requests (§5.2, [`NvmeDriver::admin_submit`], [`NvmeDriver::admin_completions`]),
//! and the Identify (§5.15), Get Log Page (§5.14) and Set / Get Features (§5.21, §5.9)
//! helpers.

use std::time::{Duration, Instant};

use zerocopy::FromBytes;

use super::{
    set_prps, Data, InvalidRequest, NvmeDriver, NvmeError, Queue, Unsupported, ADMIN_MAX_TRANSFER,
    MAX_ASYNC_ADMIN,
};
use crate::pci::class::nvme::{
    cns, select, Cqe, IdentifyController, IdentifyNamespace, Sqe, IDENTIFY_SIZE,
};

impl NvmeDriver {
    fn next_admin_cid(&mut self) -> u16 {
        loop {
            self.admin_cid = self.admin_cid.wrapping_add(1);
            if !self.async_cids.contains(&self.admin_cid) {
                return self.admin_cid;
            }
        }
    }

    /// Run admin command `cmd` and wait for its completion, whatever its status: the driver
    /// sets the command identifier and, for `data`, the data pointer (at most
    /// [`ADMIN_MAX_TRANSFER`] bytes, copied through the driver's admin buffer); with
    /// [`Data::None`] the PRP entries of `cmd` are sent as they are.
    pub fn admin_command(&mut self, mut cmd: Sqe, data: Data<'_>) -> Result<Cqe, NvmeError> {
        let len = match &data {
            Data::None => 0,
            Data::FromDevice(b) => b.len(),
            Data::ToDevice(b) => b.len(),
        };
        if len > ADMIN_MAX_TRANSFER {
            return Err(InvalidRequest::AdminTransfer(len).into());
        }
        match &data {
            Data::None => {}
            Data::FromDevice(_) => self.mem.zero(self.at.admin_data, len)?,
            Data::ToDevice(b) => self.mem.write_at(self.at.admin_data, b)?,
        }
        if !matches!(data, Data::None) {
            set_prps(
                &self.mem,
                &mut cmd,
                self.at.admin_data,
                len,
                self.at.admin_prp,
            )?;
        }
        cmd.cid.set(self.next_admin_cid());
        let mut q = std::mem::replace(&mut self.admin, Queue::new(0, 0, 0, 1));
        let r = self.admin_roundtrip(&mut q, &cmd);
        self.admin = q;
        let cqe = r?;
        if let Data::FromDevice(b) = data {
            self.mem.read_at(self.at.admin_data, b)?;
        }
        Ok(cqe)
    }

    /// [`admin_command`](Self::admin_command), with an error status as an error.
    pub(super) fn admin_ok(
        &mut self,
        name: &'static str,
        cmd: Sqe,
        data: Data<'_>,
    ) -> Result<Cqe, NvmeError> {
        let cqe = self.admin_command(cmd, data)?;
        match cqe.status() {
            s if s.is_success() => Ok(cqe),
            status => Err(NvmeError::Status { cmd: name, status }),
        }
    }

    fn admin_roundtrip(&mut self, q: &mut Queue, sqe: &Sqe) -> Result<Cqe, NvmeError> {
        self.push(q, sqe)?;
        let t0 = Instant::now();
        loop {
            if let Some(cqe) = self.pop(q)? {
                self.w32(self.cq_doorbell(q), u32::from(q.cq_head))?;
                let cid = cqe.cid.get();
                if cid == sqe.cid.get() {
                    return Ok(cqe);
                }
                if let Some(i) = self.async_cids.iter().position(|&c| c == cid) {
                    // An earlier admin_submit command (e.g. an AER) completed meanwhile.
                    self.async_cids.swap_remove(i);
                    self.async_done.push_back(cqe);
                } else {
                    // A stale completion (e.g. of an earlier timed-out command).
                    tracing::debug!(cid, "admin completion for no outstanding command");
                }
                continue;
            }
            if t0.elapsed() > self.timeout {
                return Err(NvmeError::CommandTimeout {
                    cid: sqe.cid.get(),
                    ms: self.timeout.as_millis(),
                });
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Submit admin command `cmd` as it is (PRP entries included) without waiting: it stays
    /// outstanding until [`admin_completions`](Self::admin_completions) reaps it — the way an
    /// Asynchronous Event Request is used. Returns its command identifier.
    pub fn admin_submit(&mut self, mut cmd: Sqe) -> Result<u16, NvmeError> {
        if self.async_cids.len() >= MAX_ASYNC_ADMIN {
            return Err(InvalidRequest::AdminOutstanding.into());
        }
        let cid = self.next_admin_cid();
        cmd.cid.set(cid);
        let mut q = std::mem::replace(&mut self.admin, Queue::new(0, 0, 0, 1));
        let r = self.push(&mut q, &cmd);
        self.admin = q;
        r?;
        self.async_cids.push(cid);
        Ok(cid)
    }

    /// Reap the completions of [`admin_submit`](Self::admin_submit) commands posted so far
    /// (and ring the admin CQ head doorbell); returns how many `on_done` got. Does not wait.
    pub fn admin_completions(&mut self, on_done: &mut impl FnMut(Cqe)) -> Result<usize, NvmeError> {
        let mut n = 0;
        while let Some(c) = self.async_done.pop_front() {
            on_done(c);
            n += 1;
        }
        let mut q = std::mem::replace(&mut self.admin, Queue::new(0, 0, 0, 1));
        let mut reaped = 0;
        let r = loop {
            match self.pop(&mut q) {
                Ok(Some(c)) => {
                    reaped += 1;
                    let cid = c.cid.get();
                    if let Some(i) = self.async_cids.iter().position(|&x| x == cid) {
                        self.async_cids.swap_remove(i);
                        on_done(c);
                        n += 1;
                    } else {
                        tracing::debug!(cid, "admin completion for no outstanding command");
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let rang = if reaped > 0 {
            self.w32(self.cq_doorbell(&q), u32::from(q.cq_head))
        } else {
            Ok(())
        };
        self.admin = q;
        r.and(rang).map(|()| n)
    }

    /// Admin commands submitted with [`admin_submit`](Self::admin_submit) not reaped yet.
    pub fn admin_outstanding(&self) -> usize {
        self.async_cids.len() + self.async_done.len()
    }

    /// The raw Identify data structure `cns` of namespace `nsid` (§5.15).
    pub fn identify(&mut self, cns: u8, nsid: u32) -> Result<Vec<u8>, NvmeError> {
        let mut page = vec![0u8; IDENTIFY_SIZE];
        self.admin_ok(
            "Identify",
            Sqe::identify(cns, nsid),
            Data::FromDevice(&mut page),
        )?;
        Ok(page)
    }

    /// Identify Controller (CNS 01h).
    pub fn identify_controller(&mut self) -> Result<Box<IdentifyController>, NvmeError> {
        let page = self.identify(cns::CONTROLLER, 0)?;
        let short = Unsupported::IdentifySize {
            cns: cns::CONTROLLER,
            len: page.len(),
        };
        Ok(Box::new(
            IdentifyController::read_from_bytes(&page).map_err(|_| short)?,
        ))
    }

    /// Identify Namespace `nsid` (CNS 00h).
    pub fn identify_namespace(&mut self, nsid: u32) -> Result<Box<IdentifyNamespace>, NvmeError> {
        let page = self.identify(cns::NAMESPACE, nsid)?;
        let short = Unsupported::IdentifySize {
            cns: cns::NAMESPACE,
            len: page.len(),
        };
        Ok(Box::new(
            IdentifyNamespace::read_from_bytes(&page).map_err(|_| short)?,
        ))
    }

    /// Get Log Page `lid` of namespace `nsid` into `buf` (a whole number of dwords, at most
    /// [`ADMIN_MAX_TRANSFER`] bytes), from offset 0, Retain Asynchronous Event clear.
    pub fn get_log_page(&mut self, lid: u8, nsid: u32, buf: &mut [u8]) -> Result<(), NvmeError> {
        if buf.is_empty() || buf.len() % 4 != 0 {
            return Err(InvalidRequest::LogPageSize(buf.len()).into());
        }
        let cmd = Sqe::get_log_page(lid, nsid, (buf.len() / 4) as u32, 0, false);
        self.admin_ok("Get Log Page", cmd, Data::FromDevice(buf))?;
        Ok(())
    }

    /// Set Features `fid` to `value`; returns the completion's DW0.
    pub fn set_features(&mut self, fid: u8, value: u32) -> Result<u32, NvmeError> {
        let c = self.admin_ok("Set Features", Sqe::set_features(fid, value), Data::None)?;
        Ok(c.dw0.get())
    }

    /// The current value of feature `fid` (`arg`: CDW11, e.g. the interrupt vector).
    pub fn get_features(&mut self, fid: u8, arg: u32) -> Result<u32, NvmeError> {
        let cmd = Sqe::get_features(fid, select::CURRENT, arg);
        let c = self.admin_ok("Get Features", cmd, Data::None)?;
        Ok(c.dw0.get())
    }
}
