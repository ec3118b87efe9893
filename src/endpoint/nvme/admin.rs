//! Admin commands of the NVMe controller (NVMe 1.4c §5): Identify (§5.15), Create/Delete I/O
//! queues (§5.3-5.7), Get Log Page (§5.14), Set/Get Features (§5.21, §5.15).

use super::identify::{self, ErrorEntry, MAX_IO_QUEUES};
use super::spec::{cc, feat, Command, Status};
use super::worker::{Worker, MAX_TRANSFER};
use super::{Cq, Ctrl, Sq, MAX_QUEUE_ENTRIES, MSIX_VECTORS};

impl Worker {
    pub(super) fn identify(&mut self, cmd: &Command) -> Result<u32, Status> {
        let cns = cmd.cdw(10) & 0xff;
        let csi = cmd.cdw(11) >> 24;
        match cns {
            0x00 => {
                if cmd.nsid != 1 {
                    return Err(Status::INVALID_NAMESPACE);
                }
                identify::namespace(&self.identity, self.backend.blocks(), 9, &mut self.page);
            }
            0x01 => identify::controller(&self.identity, &mut self.page),
            0x02 => {
                if cmd.nsid >= 0xffff_fffe {
                    return Err(Status::INVALID_NAMESPACE);
                }
                identify::active_ns_list(cmd.nsid, &mut self.page);
            }
            0x03 => {
                if cmd.nsid != 1 {
                    return Err(Status::INVALID_NAMESPACE);
                }
                identify::ns_descriptors(&self.identity, &mut self.page);
            }
            // I/O Command Set specific Identify Controller for the NVM command set: no limits.
            0x06 if csi == 0 => self.page.fill(0),
            _ => return Err(Status::INVALID_FIELD),
        }
        self.data[..4096].copy_from_slice(&self.page[..]);
        self.send_to_host(cmd, 4096)?;
        Ok(0)
    }

    pub(super) fn queue_limits(c: &Ctrl) -> (u16, u16) {
        c.feat
            .queues
            .map(|(s, q)| (s + 1, q + 1))
            .unwrap_or((MAX_IO_QUEUES, MAX_IO_QUEUES))
    }

    pub(super) fn create_cq(&mut self, cmd: &Command) -> Result<u32, Status> {
        let qid = (cmd.cdw(10) & 0xffff) as u16;
        let size = (cmd.cdw(10) >> 16) + 1;
        let pc = cmd.cdw(11) & 1 != 0;
        let ien = cmd.cdw(11) & 2 != 0;
        let iv = (cmd.cdw(11) >> 16) as u16;
        let mut c = self.shared.lock();
        let (_, ncq) = Self::queue_limits(&c);
        if qid == 0 || qid > ncq || c.cqs[usize::from(qid)].is_some() {
            return Err(Status::INVALID_QID);
        }
        if !(2..=MAX_QUEUE_ENTRIES).contains(&size) {
            return Err(Status::INVALID_QSIZE);
        }
        if !pc || cmd.prp1 & 0xfff != 0 || cc::iocqes(c.cc) != 4 {
            return Err(Status::INVALID_FIELD);
        }
        if iv >= MSIX_VECTORS {
            return Err(Status::INVALID_VECTOR);
        }
        c.cqs[usize::from(qid)] = Some(Cq {
            base: cmd.prp1,
            size: size as u16,
            head: 0,
            tail: 0,
            phase: true,
            iv,
            ien,
        });
        Ok(0)
    }

    pub(super) fn create_sq(&mut self, cmd: &Command) -> Result<u32, Status> {
        let qid = (cmd.cdw(10) & 0xffff) as u16;
        let size = (cmd.cdw(10) >> 16) + 1;
        let pc = cmd.cdw(11) & 1 != 0;
        let cqid = (cmd.cdw(11) >> 16) as u16;
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
        if !pc || cmd.prp1 & 0xfff != 0 || cc::iosqes(c.cc) != 6 {
            return Err(Status::INVALID_FIELD);
        }
        c.sqs[usize::from(qid)] = Some(Sq {
            base: cmd.prp1,
            size: size as u16,
            head: 0,
            tail: 0,
            cqid,
        });
        Ok(0)
    }

    pub(super) fn delete_sq(&mut self, cmd: &Command) -> Result<u32, Status> {
        let qid = usize::from((cmd.cdw(10) & 0xffff) as u16);
        let mut c = self.shared.lock();
        if qid == 0 || qid > usize::from(MAX_IO_QUEUES) || c.sqs[qid].is_none() {
            return Err(Status::INVALID_QID);
        }
        c.sqs[qid] = None;
        Ok(0)
    }

    pub(super) fn delete_cq(&mut self, cmd: &Command) -> Result<u32, Status> {
        let qid = (cmd.cdw(10) & 0xffff) as u16;
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

    pub(super) fn get_log(&mut self, cmd: &Command) -> Result<u32, Status> {
        let lid = (cmd.cdw(10) & 0xff) as u8;
        let rae = cmd.cdw(10) & (1 << 15) != 0;
        let numd = (((cmd.cdw(11) & 0xffff) << 16) | (cmd.cdw(10) >> 16)) as usize + 1;
        let offset = u64::from(cmd.cdw(12)) | (u64::from(cmd.cdw(13)) << 32);
        let len = numd * 4;
        if len > MAX_TRANSFER || offset & 3 != 0 {
            return Err(Status::INVALID_FIELD);
        }
        {
            let mut c = self.shared.lock();
            match lid {
                0x01 => {
                    let entries: Vec<ErrorEntry> = c.errors.iter().copied().collect();
                    identify::error_log(&entries, &mut self.log);
                    if !rae {
                        c.aer_masked &= !1;
                    }
                }
                0x02 => {
                    let mut h = c.health;
                    h.power_on_hours = c.started.elapsed().as_secs() / 3600;
                    identify::smart_log(&h, &mut self.log);
                    if !rae {
                        c.aer_masked &= !2;
                    }
                }
                0x03 => identify::firmware_log(&self.identity.firmware, &mut self.log),
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

    pub(super) fn set_features(&mut self, cmd: &Command) -> Result<u32, Status> {
        let fid = (cmd.cdw(10) & 0xff) as u8;
        if cmd.cdw(10) & (1 << 31) != 0 {
            return Err(Status::FEATURE_NOT_SAVEABLE);
        }
        let v = cmd.cdw(11);
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
                    if !was && c.feat.async_events & 2 != 0 {
                        // SMART / health status, temperature threshold, SMART log.
                        c.async_event(1, 0x01, 0x02);
                        self.shared.wake.notify_all();
                    }
                } else {
                    c.health.critical_warning &= !2;
                }
            }
            feat::ERROR_RECOVERY => c.feat.error_recovery = v & 0x1_ffff,
            feat::VOLATILE_WC => c.feat.vwc = v & 1 != 0,
            feat::NUM_QUEUES => {
                let nsq = (v & 0xffff) as u16;
                let ncq = (v >> 16) as u16;
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
                return Ok(u32::from(s) | (u32::from(q) << 16));
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

    pub(super) fn get_features(&mut self, cmd: &Command) -> Result<u32, Status> {
        let fid = (cmd.cdw(10) & 0xff) as u8;
        let sel = (cmd.cdw(10) >> 8) & 7;
        let c = self.shared.lock();
        let default = super::Features::default();
        let f = if sel == 1 { &default } else { &c.feat };
        if sel == 3 {
            // Supported capabilities: everything here is changeable, nothing saveable.
            return match fid {
                feat::ARBITRATION..=feat::ASYNC_EVENT if fid != 3 => Ok(0b100),
                _ => Err(Status::INVALID_FIELD),
            };
        }
        if sel > 3 {
            return Err(Status::INVALID_FIELD);
        }
        Ok(match fid {
            feat::ARBITRATION => f.arbitration,
            feat::POWER_MGMT => f.power,
            feat::TEMP_THRESHOLD => {
                let v = cmd.cdw(11);
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
                u32::from(s) | (u32::from(q) << 16)
            }
            feat::IRQ_COALESCE => f.coalescing,
            feat::IRQ_CONFIG => {
                let iv = (cmd.cdw(11) & 0xffff) as usize;
                let cd = *f.vector_cd.get(iv).ok_or(Status::INVALID_FIELD)?;
                iv as u32 | (u32::from(cd) << 16)
            }
            feat::WRITE_ATOMIC => f.write_atomic,
            feat::ASYNC_EVENT => f.async_events,
            _ => return Err(Status::INVALID_FIELD),
        })
    }
}
