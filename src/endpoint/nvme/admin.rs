//! Admin commands of the NVMe controller (NVMe 1.4c §5): the dispatch, Identify (§5.15),
//! Create/Delete I/O queues (§5.3–5.6), Get Log Page (§5.14), Set/Get Features (§5.21, §5.9),
//! Asynchronous Event Request (§5.2), Abort (§5.1) and Keep Alive (§5.16).

use super::identify::{self, MAX_IO_QUEUES};
use super::worker::{Outcome, Worker};
use super::{Cq, Ctrl, Sq, MAX_QUEUE_ENTRIES, MAX_TRANSFER, MSIX_VECTORS};
use crate::pci::class::nvme::{
    admin, aer, cc, cns, feat, log, select, Sqe, Status, CQES_LOG2, IDENTIFY_SIZE, SQES_LOG2,
};

impl Worker {
    /// Execute admin command `cmd` (§5).
    pub(super) fn admin(&mut self, cmd: &Sqe) -> Outcome {
        match cmd.opcode {
            admin::IDENTIFY => self.identify(cmd).into(),
            admin::CREATE_CQ => self.create_cq(cmd).into(),
            admin::CREATE_SQ => self.create_sq(cmd).into(),
            admin::DELETE_SQ => self.delete_sq(cmd).into(),
            admin::DELETE_CQ => self.delete_cq(cmd).into(),
            admin::GET_LOG_PAGE => self.get_log(cmd).into(),
            admin::SET_FEATURES => self.set_features(cmd).into(),
            admin::GET_FEATURES => self.get_features(cmd).into(),
            admin::ABORT => Outcome::ok(1), // bit 0 set: command not aborted
            admin::KEEP_ALIVE => Outcome::ok(0),
            admin::ASYNC_EVENT => {
                let mut c = self.shared.lock();
                if c.aer_cids.len() >= identify::AER_LIMIT {
                    return Outcome::err(Status::AER_LIMIT);
                }
                c.aer_cids.push(cmd.cid.get());
                self.shared.wake.notify_all();
                Outcome {
                    status: Status::SUCCESS,
                    dw0: 0,
                    post: false,
                    lba: 0,
                }
            }
            _ => Outcome::err(Status::INVALID_OPCODE),
        }
    }

    pub(super) fn identify(&mut self, cmd: &Sqe) -> Result<u32, Status> {
        let nsid = cmd.nsid.get();
        match cmd.identify_cns() {
            cns::NAMESPACE => {
                if nsid != 1 {
                    return Err(Status::INVALID_NAMESPACE);
                }
                identify::namespace(&self.identity, self.ns.blocks(), 9, &mut self.page);
            }
            cns::CONTROLLER => identify::controller(&self.identity, &mut self.page),
            cns::ACTIVE_NAMESPACES => {
                if nsid >= 0xffff_fffe {
                    return Err(Status::INVALID_NAMESPACE);
                }
                identify::active_ns_list(nsid, &mut self.page);
            }
            cns::NS_DESCRIPTORS => {
                if nsid != 1 {
                    return Err(Status::INVALID_NAMESPACE);
                }
                identify::ns_descriptors(&self.identity, &mut self.page);
            }
            // I/O Command Set specific Identify Controller for the NVM command set: no limits.
            cns::CSI_CONTROLLER if cmd.identify_csi() == 0 => self.page.fill(0),
            _ => return Err(Status::INVALID_FIELD),
        }
        self.data[..IDENTIFY_SIZE].copy_from_slice(&self.page[..]);
        self.send_to_host(cmd, IDENTIFY_SIZE)?;
        Ok(0)
    }

    pub(super) fn queue_limits(c: &Ctrl) -> (u16, u16) {
        c.feat
            .queues
            .map(|(s, q)| (s + 1, q + 1))
            .unwrap_or((MAX_IO_QUEUES, MAX_IO_QUEUES))
    }

    pub(super) fn create_cq(&mut self, cmd: &Sqe) -> Result<u32, Status> {
        let qid = cmd.queue_id();
        let size = cmd.queue_entries();
        let pc = cmd.queue_contiguous();
        let ien = cmd.cq_interrupts();
        let iv = cmd.cq_vector();
        let mut c = self.shared.lock();
        let (_, ncq) = Self::queue_limits(&c);
        if qid == 0 || qid > ncq || c.cqs[usize::from(qid)].is_some() {
            return Err(Status::INVALID_QID);
        }
        if !(2..=MAX_QUEUE_ENTRIES).contains(&size) {
            return Err(Status::INVALID_QSIZE);
        }
        if !pc || cmd.prp1.get() & 0xfff != 0 || cc::iocqes(c.cc) != CQES_LOG2 {
            return Err(Status::INVALID_FIELD);
        }
        if iv >= MSIX_VECTORS {
            return Err(Status::INVALID_VECTOR);
        }
        c.cqs[usize::from(qid)] = Some(Cq {
            base: cmd.prp1.get(),
            size: size as u16,
            head: 0,
            tail: 0,
            phase: true,
            iv,
            ien,
        });
        Ok(0)
    }

    pub(super) fn create_sq(&mut self, cmd: &Sqe) -> Result<u32, Status> {
        let qid = cmd.queue_id();
        let size = cmd.queue_entries();
        let pc = cmd.queue_contiguous();
        let cqid = cmd.sq_cqid();
        let mut c = self.shared.lock();
        let (nsq, _) = Self::queue_limits(&c);
        if qid == 0 || qid > nsq || c.sqs[usize::from(qid)].is_some() {
            return Err(Status::INVALID_QID);
        }
        if cqid == 0 || cqid > MAX_IO_QUEUES || c.cqs[usize::from(cqid)].is_none() {
            return Err(Status::CQ_INVALID);
        }
        if !(2..=MAX_QUEUE_ENTRIES).contains(&size) {
            return Err(Status::INVALID_QSIZE);
        }
        if !pc || cmd.prp1.get() & 0xfff != 0 || cc::iosqes(c.cc) != SQES_LOG2 {
            return Err(Status::INVALID_FIELD);
        }
        c.sqs[usize::from(qid)] = Some(Sq {
            base: cmd.prp1.get(),
            size: size as u16,
            head: 0,
            tail: 0,
            cqid,
        });
        c.ahead[usize::from(qid)].clear();
        Ok(0)
    }

    pub(super) fn delete_sq(&mut self, cmd: &Sqe) -> Result<u32, Status> {
        let qid = usize::from(cmd.queue_id());
        let mut c = self.shared.lock();
        if qid == 0 || qid > usize::from(MAX_IO_QUEUES) || c.sqs[qid].is_none() {
            return Err(Status::INVALID_QID);
        }
        c.sqs[qid] = None;
        c.ahead[qid].clear();
        Ok(0)
    }

    pub(super) fn delete_cq(&mut self, cmd: &Sqe) -> Result<u32, Status> {
        let qid = cmd.queue_id();
        let mut c = self.shared.lock();
        if qid == 0 || qid > MAX_IO_QUEUES || c.cqs[usize::from(qid)].is_none() {
            return Err(Status::INVALID_QID);
        }
        if c.sqs.iter().flatten().any(|s| s.cqid == qid) {
            return Err(Status::INVALID_QUEUE_DELETION);
        }
        c.cqs[usize::from(qid)] = None;
        let level = c.intx_level();
        drop(c);
        if !self.irq.msix_enabled() {
            self.irq.set_intx(level);
        }
        Ok(0)
    }

    pub(super) fn get_log(&mut self, cmd: &Sqe) -> Result<u32, Status> {
        let lid = cmd.log_id();
        let rae = cmd.log_rae();
        let offset = cmd.log_offset();
        let len = cmd.log_dwords() * 4;
        if len > MAX_TRANSFER as u64 || offset & 3 != 0 {
            return Err(Status::INVALID_FIELD);
        }
        let len = len as usize;
        {
            let mut c = self.shared.lock();
            match lid {
                log::ERROR => {
                    identify::error_log(&c.errors, &mut self.log);
                    if !rae {
                        c.aer_masked &= !1;
                    }
                }
                log::SMART => {
                    let mut h = c.health;
                    h.power_on_hours = c.started.elapsed().as_secs() / 3600;
                    identify::smart_log(&h, &mut self.log);
                    if !rae {
                        c.aer_masked &= !2;
                    }
                }
                log::FIRMWARE_SLOT => {
                    identify::firmware_log(&self.identity.firmware, &mut self.log)
                }
                _ => return Err(Status::INVALID_LOG_PAGE),
            }
            self.shared.wake.notify_all();
        }
        if offset >= self.log.len() as u64 {
            return Err(Status::INVALID_FIELD);
        }
        let src = &self.log[offset as usize..];
        let n = src.len().min(len);
        self.data[..len].fill(0);
        self.data[..n].copy_from_slice(&src[..n]);
        self.send_to_host(cmd, len)?;
        Ok(0)
    }

    pub(super) fn set_features(&mut self, cmd: &Sqe) -> Result<u32, Status> {
        let fid = cmd.feature_id();
        if cmd.feature_save() {
            return Err(Status::FEATURE_NOT_SAVEABLE);
        }
        let v = cmd.cdw11.get();
        let mut c = self.shared.lock();
        match fid {
            feat::ARBITRATION => c.feat.arbitration = v,
            feat::POWER_MGMT => {
                if v & 0x1f != 0 {
                    return Err(Status::INVALID_FIELD); // only power state 0 exists
                }
                c.feat.power = v & 0xff;
            }
            feat::TEMP_THRESHOLD => {
                let tmpth = (v & 0xffff) as u16;
                let tmpsel = (v >> 16) & 0xf;
                let thsel = (v >> 20) & 3;
                if tmpsel != 0 || thsel > 1 {
                    return Err(Status::INVALID_FIELD);
                }
                if thsel == 0 {
                    c.feat.temp_over = tmpth;
                } else {
                    c.feat.temp_under = tmpth;
                }
                let hot = identify::TEMPERATURE_K >= c.feat.temp_over
                    || identify::TEMPERATURE_K <= c.feat.temp_under;
                let was = c.health.critical_warning & 2 != 0;
                if hot {
                    c.health.critical_warning |= 2;
                    if !was && c.feat.async_events & feat::AEC_TEMPERATURE != 0 {
                        // SMART / health status, temperature threshold, SMART log.
                        c.async_event(aer::TYPE_SMART, aer::SMART_TEMPERATURE, log::SMART);
                        self.shared.wake.notify_all();
                    }
                } else {
                    c.health.critical_warning &= !2;
                }
            }
            feat::ERROR_RECOVERY => c.feat.error_recovery = v & 0x1_ffff,
            feat::VOLATILE_WC => c.feat.vwc = v & 1 != 0,
            feat::NUM_QUEUES => {
                let (nsq, ncq) = feat::split_num_queues(v);
                if nsq == 0xffff || ncq == 0xffff {
                    return Err(Status::INVALID_FIELD);
                }
                if c.sqs[1..].iter().any(Option::is_some) || c.cqs[1..].iter().any(Option::is_some)
                {
                    return Err(Status::SEQUENCE_ERROR);
                }
                let s = nsq.min(MAX_IO_QUEUES - 1);
                let q = ncq.min(MAX_IO_QUEUES - 1);
                c.feat.queues = Some((s, q));
                return Ok(feat::num_queues(s, q));
            }
            feat::IRQ_COALESCE => c.feat.coalescing = v & 0xffff,
            feat::IRQ_CONFIG => {
                let iv = (v & 0xffff) as usize;
                if iv >= c.feat.vector_cd.len() {
                    return Err(Status::INVALID_FIELD);
                }
                c.feat.vector_cd[iv] = v & (1 << 16) != 0;
            }
            feat::WRITE_ATOMIC => c.feat.write_atomic = v & 1,
            feat::ASYNC_EVENT => c.feat.async_events = v & 0x3ff,
            _ => return Err(Status::INVALID_FIELD),
        }
        Ok(0)
    }

    pub(super) fn get_features(&mut self, cmd: &Sqe) -> Result<u32, Status> {
        let fid = cmd.feature_id();
        let sel = cmd.feature_select();
        let c = self.shared.lock();
        let default = super::Features::default();
        let f = if sel == select::DEFAULT {
            &default
        } else {
            &c.feat
        };
        if sel == select::SUPPORTED {
            // Supported capabilities: everything here is changeable, nothing saveable.
            return match fid {
                feat::ARBITRATION..=feat::ASYNC_EVENT if fid != 3 => Ok(0b100),
                _ => Err(Status::INVALID_FIELD),
            };
        }
        if sel > select::SUPPORTED {
            return Err(Status::INVALID_FIELD);
        }
        Ok(match fid {
            feat::ARBITRATION => f.arbitration,
            feat::POWER_MGMT => f.power,
            feat::TEMP_THRESHOLD => {
                let v = cmd.cdw11.get();
                if (v >> 16) & 0xf != 0 || (v >> 20) & 3 > 1 {
                    return Err(Status::INVALID_FIELD);
                }
                let t = if (v >> 20) & 3 == 0 {
                    f.temp_over
                } else {
                    f.temp_under
                };
                u32::from(t)
            }
            feat::ERROR_RECOVERY => f.error_recovery,
            feat::VOLATILE_WC => u32::from(f.vwc),
            feat::NUM_QUEUES => {
                let (s, q) = f.queues.unwrap_or((MAX_IO_QUEUES - 1, MAX_IO_QUEUES - 1));
                feat::num_queues(s, q)
            }
            feat::IRQ_COALESCE => f.coalescing,
            feat::IRQ_CONFIG => {
                let iv = (cmd.cdw11.get() & 0xffff) as usize;
                let cd = *f.vector_cd.get(iv).ok_or(Status::INVALID_FIELD)?;
                iv as u32 | (u32::from(cd) << 16)
            }
            feat::WRITE_ATOMIC => f.write_atomic,
            feat::ASYNC_EVENT => f.async_events,
            _ => return Err(Status::INVALID_FIELD),
        })
    }
}
