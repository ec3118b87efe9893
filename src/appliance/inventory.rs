//! The inventory: every function the appliance fronts, under a stable id, with its PCI
//! identity and its place in the pool (unassigned, assigned to one host, resetting between
//! owners, failed) — the table that assignment, per-host routing and the management API read
//! and change (docs/appliance.md "The pool: inventory, assignment, isolation").
//!
//! Sans-I/O: plain data and the state machine of one function's ownership. Nothing here
//! sends a TLP or resets a device; the runtime does that, and tells the inventory when a reset
//! finished ([`Inventory::reset_done`]). The rules it enforces: a function has at most one
//! owner; only known hosts own functions; a function being reset or failed is not handed out;
//! only an unassigned function leaves the pool.
//!
//! PCI identity is read from the function's configuration space (PCI Local Bus 3.0 §6.2.1
//! Vendor/Device ID, Revision, Class Code, Subsystem IDs; the SR-IOV extended capability's
//! TotalVFs, PCIe r5.0 §9.3.3.7).

use std::fmt;
use std::str::FromStr;

use crate::endpoint::{Bdf, Device};
use crate::transport::HostId;

/// Longest configured function name.
pub const MAX_NAME_LEN: usize = 32;
/// SR-IOV extended capability ID (PCIe r5.0 §9.3.3).
const SRIOV_CAP_ID: u32 = 0x0010;

/// Why an inventory operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// A name that cannot be a function id.
    #[error(
        "function name {0:?} must be 1 to 32 letters, digits, '-' or '_', starting with a letter"
    )]
    BadName(String),
    /// Text that is neither a derived id nor a valid name.
    #[error("{0:?} is not a function id (want a name, DD.F or DD.F.vfN)")]
    BadId(String),
    /// No function with this id.
    #[error("unknown function {0}")]
    UnknownFunction(FunctionId),
    /// No host with this id.
    #[error("unknown host {0}")]
    UnknownHost(HostId),
    /// Two functions with one id.
    #[error("function id {0} is already in use")]
    DuplicateId(FunctionId),
    /// The function belongs to a host already.
    #[error("function {function} is already assigned to {owner}")]
    AlreadyAssigned {
        /// The function.
        function: FunctionId,
        /// Its owner.
        owner: HostId,
    },
    /// The function is not assigned (nothing to unassign).
    #[error("function {0} is not assigned")]
    NotAssigned(FunctionId),
    /// The function is being reset between owners.
    #[error("function {0} is being reset")]
    Resetting(FunctionId),
    /// The function failed.
    #[error("function {0} failed")]
    Failed(FunctionId),
    /// The function has not failed (nothing to recover).
    #[error("function {0} has not failed")]
    NotFailed(FunctionId),
}

/// A function's stable id: a configured name (`ssd-a`), or derived from where it sits —
/// `DD.F` (slot and function, hex slot) for a physical function, `DD.F.vfN` for its N-th
/// virtual function (0-based, as Linux numbers `virtfnN`). Names start with a letter, derived
/// ids with a digit, so the two never collide. Survives restarts as long as the configuration
/// keeps the device where it is (or keeps its name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionId(String);

impl FunctionId {
    /// The derived id of the physical function at `bdf` (the bus is not part of it).
    pub fn derived(bdf: Bdf) -> FunctionId {
        FunctionId(format!("{:02x}.{}", bdf.device(), bdf.function()))
    }

    /// A configured name.
    pub fn named(name: &str) -> Result<FunctionId, InventoryError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(FunctionId(name.to_string()))
        } else {
            Err(InventoryError::BadName(name.to_string()))
        }
    }

    /// The id of virtual function `index` (0-based) of this physical function.
    pub fn vf(&self, index: u16) -> FunctionId {
        FunctionId(format!("{}.vf{index}", self.0))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FunctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for FunctionId {
    type Err = InventoryError;

    /// Any id [`FunctionId`] can produce: a name, `DD.F`, or either followed by `.vfN`.
    fn from_str(s: &str) -> Result<FunctionId, InventoryError> {
        let bad = || InventoryError::BadId(s.chars().take(64).collect());
        let (base, vf) = match s.rsplit_once(".vf") {
            Some((b, digits)) => {
                let n: u16 = digits.parse().map_err(|_| bad())?;
                if n.to_string() != digits {
                    return Err(bad()); // no leading zeros or signs: one spelling per id
                }
                (b, Some(n))
            }
            None => (s, None),
        };
        let pf = match base.split_once('.') {
            Some((d, f)) if d.len() == 2 && f.len() == 1 => {
                let dev = u8::from_str_radix(d, 16).map_err(|_| bad())?;
                let func: u8 = f.parse().map_err(|_| bad())?;
                if dev >= 32 || func >= 8 || d != format!("{dev:02x}") {
                    return Err(bad());
                }
                FunctionId::derived(Bdf::new(0, dev, func))
            }
            Some(_) => return Err(bad()),
            None => FunctionId::named(base).map_err(|_| bad())?,
        };
        Ok(match vf {
            Some(n) => pf.vf(n),
            None => pf,
        })
    }
}

impl serde::Serialize for FunctionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// What a function says it is (its configuration space header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PciIdentity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base << 16 | sub-class << 8 | programming interface.
    pub class: u32,
    /// Subsystem Vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

impl PciIdentity {
    /// Read from a device's configuration space (a type 0 header).
    pub fn read(dev: &mut dyn Device) -> PciIdentity {
        PciIdentity::from_dwords(
            dev.config_read(0x00),
            dev.config_read(0x08),
            dev.config_read(0x2c),
        )
    }

    /// From the header's dwords at 0x00 (IDs), 0x08 (revision, class) and 0x2c (subsystem).
    pub fn from_dwords(id: u32, rev_class: u32, subsys: u32) -> PciIdentity {
        PciIdentity {
            vendor: id as u16,
            device: (id >> 16) as u16,
            revision: rev_class as u8,
            class: rev_class >> 8,
            subsystem_vendor: subsys as u16,
            subsystem: (subsys >> 16) as u16,
        }
    }
}

/// TotalVFs of the device's SR-IOV capability (0 when it has none): a bounded walk of the
/// extended capability list from 0x100.
pub fn total_vfs(dev: &mut dyn Device) -> u16 {
    let mut at = 0x100u16;
    // At most (4096 - 256) / 4 headers; a loop in the list ends the walk.
    for _ in 0..960 {
        let h = dev.config_read(at);
        if h == 0 || h == u32::MAX {
            return 0;
        }
        if h & 0xffff == SRIOV_CAP_ID {
            return (dev.config_read(at + 0x0c) >> 16) as u16;
        }
        let next = (h >> 20) as u16 & !3;
        if next < 0x100 {
            return 0;
        }
        at = next;
    }
    0
}

/// Where a function is in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "host", rename_all = "snake_case")]
pub enum FunctionState {
    /// In the pool, visible to no host.
    Unassigned,
    /// Owned by this host: only its session sees the function.
    Assigned(#[serde(serialize_with = "host_str")] HostId),
    /// Being reset between owners (FLR or a model reset, volatile state wiped); then
    /// unassigned.
    Resetting,
    /// Broken: not handed to any host until removed.
    Failed,
}

fn host_str<S: serde::Serializer>(h: &HostId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(h)
}

/// One function of the pool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FunctionEntry {
    /// Stable id.
    pub id: FunctionId,
    /// Where it sits on the appliance (device and function number; bus 0).
    #[serde(serialize_with = "bdf_str")]
    pub bdf: Bdf,
    /// For a virtual function: its physical function and its index (0-based).
    pub vf_of: Option<(FunctionId, u16)>,
    /// The device model (`nvme`, `dma`, `replay`).
    pub model: String,
    /// PCI identity.
    pub ids: PciIdentity,
    /// SR-IOV virtual functions it can offer (0: not a physical function with SR-IOV).
    pub total_vfs: u16,
    /// Ownership.
    pub state: FunctionState,
    /// While [`FunctionState::Failed`]: why, and what is being done about it (a vfio-user
    /// server being restarted or reconnected to, with the next attempt's delay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

fn bdf_str<S: serde::Serializer>(b: &Bdf, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{:02x}.{}", b.device(), b.function()))
}

impl fmt::Display for FunctionEntry {
    /// `DD.F MODEL`, and the name when it has one: `00.0 nvme`, `01.0 dma (dma-a)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}.{} {}",
            self.bdf.device(),
            self.bdf.function(),
            self.model
        )?;
        match &self.vf_of {
            None if self.id != FunctionId::derived(self.bdf) => write!(f, " ({})", self.id),
            Some(_) => write!(f, " ({})", self.id),
            None => Ok(()),
        }
    }
}

impl FunctionEntry {
    /// The entry of the physical function `dev` at `bdf`, unassigned, under `name` or the
    /// id derived from `bdf`.
    pub fn describe(
        bdf: Bdf,
        name: Option<&str>,
        dev: &mut dyn Device,
    ) -> Result<FunctionEntry, InventoryError> {
        let id = match name {
            Some(n) => FunctionId::named(n)?,
            None => FunctionId::derived(bdf),
        };
        Ok(FunctionEntry {
            id,
            bdf,
            vf_of: None,
            model: dev.name().to_string(),
            ids: PciIdentity::read(dev),
            total_vfs: total_vfs(dev),
            state: FunctionState::Unassigned,
            failure: None,
        })
    }

    /// Its owner, if assigned.
    pub fn owner(&self) -> Option<HostId> {
        match self.state {
            FunctionState::Assigned(h) => Some(h),
            _ => None,
        }
    }
}

/// The functions of the pool and the hosts that may own them.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    functions: Vec<FunctionEntry>,
    hosts: Vec<HostId>,
}

impl Inventory {
    /// An inventory that knows `hosts` and holds no function yet.
    pub fn new(hosts: impl IntoIterator<Item = HostId>) -> Inventory {
        let mut inv = Inventory::default();
        for h in hosts {
            inv.add_host(h);
        }
        inv
    }

    /// Every function, in the order added.
    pub fn functions(&self) -> &[FunctionEntry] {
        &self.functions
    }

    /// The hosts known.
    pub fn hosts(&self) -> &[HostId] {
        &self.hosts
    }

    /// The function with this id.
    pub fn get(&self, id: &FunctionId) -> Option<&FunctionEntry> {
        self.functions.iter().find(|f| f.id == *id)
    }

    /// The function at `bdf` (device and function number).
    pub fn at(&self, bdf: Bdf) -> Option<&FunctionEntry> {
        self.functions
            .iter()
            .find(|f| f.bdf.device() == bdf.device() && f.bdf.function() == bdf.function())
    }

    /// The functions `host` owns, in inventory order.
    pub fn owned_by(&self, host: HostId) -> impl Iterator<Item = &FunctionEntry> + '_ {
        self.functions
            .iter()
            .filter(move |f| f.owner() == Some(host))
    }

    /// Make `host` known (adding a known host again changes nothing).
    pub fn add_host(&mut self, host: HostId) {
        if !self.hosts.contains(&host) {
            self.hosts.push(host);
        }
    }

    /// Forget `host` (it must own nothing: the caller checks).
    pub fn remove_host(&mut self, host: HostId) {
        self.hosts.retain(|h| *h != host);
    }

    /// Add a function (a card plugged into the running pool). Its id must be new.
    pub fn add(&mut self, entry: FunctionEntry) -> Result<(), InventoryError> {
        if self.get(&entry.id).is_some() {
            return Err(InventoryError::DuplicateId(entry.id));
        }
        if let FunctionState::Assigned(h) = entry.state {
            if !self.hosts.contains(&h) {
                return Err(InventoryError::UnknownHost(h));
            }
        }
        self.functions.push(entry);
        Ok(())
    }

    /// Take an unassigned (or failed) function out of the pool.
    pub fn remove(&mut self, id: &FunctionId) -> Result<FunctionEntry, InventoryError> {
        let i = self.index(id)?;
        match self.functions[i].state {
            FunctionState::Unassigned | FunctionState::Failed => Ok(self.functions.remove(i)),
            FunctionState::Assigned(owner) => Err(InventoryError::AlreadyAssigned {
                function: id.clone(),
                owner,
            }),
            FunctionState::Resetting => Err(InventoryError::Resetting(id.clone())),
        }
    }

    /// Give an unassigned function to a known host.
    pub fn assign(&mut self, id: &FunctionId, host: HostId) -> Result<(), InventoryError> {
        let i = self.index(id)?;
        if !self.hosts.contains(&host) {
            return Err(InventoryError::UnknownHost(host));
        }
        let f = &mut self.functions[i];
        match f.state {
            FunctionState::Unassigned => {
                f.state = FunctionState::Assigned(host);
                Ok(())
            }
            FunctionState::Assigned(owner) => Err(InventoryError::AlreadyAssigned {
                function: id.clone(),
                owner,
            }),
            FunctionState::Resetting => Err(InventoryError::Resetting(id.clone())),
            FunctionState::Failed => Err(InventoryError::Failed(id.clone())),
        }
    }

    /// Take a function from its owner: it goes to [`FunctionState::Resetting`] until the
    /// runtime reports the reset done. Returns the former owner.
    pub fn unassign(&mut self, id: &FunctionId) -> Result<HostId, InventoryError> {
        let i = self.index(id)?;
        let f = &mut self.functions[i];
        match f.state {
            FunctionState::Assigned(owner) => {
                f.state = FunctionState::Resetting;
                Ok(owner)
            }
            FunctionState::Unassigned => Err(InventoryError::NotAssigned(id.clone())),
            FunctionState::Resetting => Err(InventoryError::Resetting(id.clone())),
            FunctionState::Failed => Err(InventoryError::Failed(id.clone())),
        }
    }

    /// The reset between owners finished: the function is back in the pool.
    pub fn reset_done(&mut self, id: &FunctionId) -> Result<(), InventoryError> {
        let i = self.index(id)?;
        let f = &mut self.functions[i];
        if f.state == FunctionState::Resetting {
            f.state = FunctionState::Unassigned;
        }
        Ok(())
    }

    /// Mark a function failed (its reset did not complete, its backing store broke). It keeps
    /// no owner.
    pub fn fail(&mut self, id: &FunctionId) -> Result<(), InventoryError> {
        let i = self.index(id)?;
        self.functions[i].state = FunctionState::Failed;
        Ok(())
    }

    /// Say why a failed function failed and what is being done about it (shown with it).
    pub fn set_failure(&mut self, id: &FunctionId, why: String) -> Result<(), InventoryError> {
        let i = self.index(id)?;
        if self.functions[i].state != FunctionState::Failed {
            return Err(InventoryError::NotFailed(id.clone()));
        }
        self.functions[i].failure = Some(why);
        Ok(())
    }

    /// A failed function whose backing is back (a restarted vfio-user server, the same card):
    /// unassigned again, its failure cleared. Refused unless it is failed.
    pub fn recover(&mut self, id: &FunctionId) -> Result<(), InventoryError> {
        let i = self.index(id)?;
        if self.functions[i].state != FunctionState::Failed {
            return Err(InventoryError::NotFailed(id.clone()));
        }
        self.functions[i].state = FunctionState::Unassigned;
        self.functions[i].failure = None;
        Ok(())
    }

    /// The virtual functions of the physical function `pf` the pool holds, by VF index.
    pub fn vfs_of(&self, pf: &FunctionId) -> impl Iterator<Item = &FunctionEntry> + '_ {
        let pf = pf.clone();
        self.functions
            .iter()
            .filter(move |f| f.vf_of.as_ref().is_some_and(|(p, _)| *p == pf))
    }

    /// Replace the pooled virtual functions of `pf` by `vfs` (the VF count changed: every VF
    /// was torn down and the new ones created, PCIe r5.0 §9.3.3.3), placed right after `pf`.
    /// Refused — nothing changes — while one of the old VFs belongs to a host or is being
    /// reset. Returns the ids that left and those that joined (a VF index kept keeps its id).
    pub fn replace_vfs(
        &mut self,
        pf: &FunctionId,
        vfs: Vec<FunctionEntry>,
    ) -> Result<(Vec<FunctionId>, Vec<FunctionId>), InventoryError> {
        self.index(pf)?;
        for v in self.vfs_of(pf) {
            match v.state {
                FunctionState::Unassigned | FunctionState::Failed => {}
                FunctionState::Assigned(owner) => {
                    return Err(InventoryError::AlreadyAssigned {
                        function: v.id.clone(),
                        owner,
                    })
                }
                FunctionState::Resetting => return Err(InventoryError::Resetting(v.id.clone())),
            }
        }
        if let Some(v) = vfs.iter().find(|v| {
            v.vf_of.as_ref().is_none_or(|(p, _)| p != pf)
                || self.get(&v.id).is_some_and(|o| o.vf_of.is_none())
        }) {
            return Err(InventoryError::DuplicateId(v.id.clone()));
        }
        let old: Vec<FunctionId> = self.vfs_of(pf).map(|v| v.id.clone()).collect();
        let new: Vec<FunctionId> = vfs.iter().map(|v| v.id.clone()).collect();
        self.functions.retain(|f| !old.contains(&f.id));
        let at = self.index(pf)? + 1;
        self.functions.splice(at..at, vfs);
        let gone = old.iter().filter(|o| !new.contains(o)).cloned().collect();
        let joined = new.into_iter().filter(|n| !old.contains(n)).collect();
        Ok((gone, joined))
    }

    fn index(&self, id: &FunctionId) -> Result<usize, InventoryError> {
        self.functions
            .iter()
            .position(|f| f.id == *id)
            .ok_or_else(|| InventoryError::UnknownFunction(id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::dma_engine::DmaEngine;
    use proptest::prelude::*;

    fn host(s: &str) -> HostId {
        HostId::new(s).unwrap()
    }

    fn dma(bdf: Bdf, name: Option<&str>, vfs: u16) -> FunctionEntry {
        FunctionEntry::describe(bdf, name, &mut DmaEngine::with_vfs(4096, vfs)).unwrap()
    }

    #[test]
    fn ids_are_derived_from_where_a_function_sits_or_its_name() {
        assert_eq!(FunctionId::derived(Bdf::new(3, 0x1a, 2)).as_str(), "1a.2");
        assert_eq!(
            FunctionId::derived(Bdf::new(0, 0, 1)).vf(3).as_str(),
            "00.1.vf3"
        );
        assert_eq!(
            FunctionId::named("ssd-a").unwrap().vf(0).as_str(),
            "ssd-a.vf0"
        );
        for bad in ["", "1abc", "a b", "a.b", "é", &"x".repeat(33)] {
            assert!(FunctionId::named(bad).is_err(), "{bad:?}");
        }
        for good in ["00.0", "1f.7", "00.1.vf0", "ssd-a", "ssd_a.vf12", "A"] {
            let id: FunctionId = good.parse().unwrap();
            assert_eq!(id.as_str(), good);
        }
        for bad in [
            "20.0",
            "00.8",
            "0.0",
            "00.0.vf",
            "00.0.vf01",
            "00.0.vf-1",
            "1A.0",
            "a.b.c",
        ] {
            assert!(bad.parse::<FunctionId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identity_and_sriov_come_from_configuration_space() {
        let e = dma(Bdf::new(0, 2, 0), None, 3);
        assert_eq!(e.id.as_str(), "02.0");
        assert_eq!(e.model, "dma");
        assert_eq!((e.ids.vendor, e.ids.device), (0x1b36, 0x0e02));
        assert_eq!(e.ids.class, 0x08_80_00);
        assert_eq!(e.total_vfs, 3);
        assert_eq!(e.state, FunctionState::Unassigned);
        assert_eq!(e.to_string(), "02.0 dma");
        assert_eq!(dma(Bdf::new(0, 2, 0), None, 0).total_vfs, 0);
        assert_eq!(
            dma(Bdf::new(0, 0, 1), Some("x"), 0).to_string(),
            "00.1 dma (x)"
        );
    }

    #[test]
    fn a_function_has_at_most_one_owner() {
        let (a, b) = (host("a"), host("b"));
        let mut inv = Inventory::new([a, b]);
        let f = FunctionId::derived(Bdf::new(0, 0, 0));
        inv.add(dma(Bdf::new(0, 0, 0), None, 0)).unwrap();
        inv.assign(&f, a).unwrap();
        assert_eq!(inv.get(&f).unwrap().owner(), Some(a));
        assert_eq!(
            inv.assign(&f, b),
            Err(InventoryError::AlreadyAssigned {
                function: f.clone(),
                owner: a
            })
        );
        assert_eq!(inv.owned_by(a).count(), 1);
        assert_eq!(inv.owned_by(b).count(), 0);
        // Unassign goes through a reset; nothing is handed out meanwhile.
        assert_eq!(inv.unassign(&f), Ok(a));
        assert_eq!(inv.get(&f).unwrap().state, FunctionState::Resetting);
        assert_eq!(inv.assign(&f, b), Err(InventoryError::Resetting(f.clone())));
        assert_eq!(inv.owned_by(a).count(), 0);
        inv.reset_done(&f).unwrap();
        inv.assign(&f, b).unwrap();
        assert_eq!(inv.get(&f).unwrap().owner(), Some(b));
    }

    #[test]
    fn refusals_name_the_reason() {
        let a = host("a");
        let mut inv = Inventory::new([a]);
        let f = FunctionId::named("card").unwrap();
        inv.add(dma(Bdf::new(0, 1, 0), Some("card"), 0)).unwrap();
        let nobody = FunctionId::named("nobody").unwrap();
        assert_eq!(
            inv.assign(&nobody, a).unwrap_err().to_string(),
            "unknown function nobody"
        );
        assert_eq!(
            inv.assign(&f, host("z")).unwrap_err().to_string(),
            "unknown host z"
        );
        assert_eq!(
            inv.unassign(&f).unwrap_err(),
            InventoryError::NotAssigned(f.clone())
        );
        assert_eq!(
            inv.add(dma(Bdf::new(0, 2, 0), Some("card"), 0)),
            Err(InventoryError::DuplicateId(f.clone()))
        );
        inv.fail(&f).unwrap();
        assert_eq!(
            inv.assign(&f, a).unwrap_err().to_string(),
            "function card failed"
        );
        assert_eq!(inv.at(Bdf::new(0, 1, 0)).unwrap().id, f);
    }

    #[test]
    fn only_a_function_nobody_owns_leaves_the_pool() {
        let a = host("a");
        let mut inv = Inventory::new([a]);
        let f = FunctionId::derived(Bdf::new(0, 0, 0));
        inv.add(dma(Bdf::new(0, 0, 0), None, 0)).unwrap();
        inv.assign(&f, a).unwrap();
        assert!(matches!(
            inv.remove(&f),
            Err(InventoryError::AlreadyAssigned { .. })
        ));
        inv.unassign(&f).unwrap();
        assert_eq!(inv.remove(&f), Err(InventoryError::Resetting(f.clone())));
        inv.reset_done(&f).unwrap();
        assert_eq!(inv.remove(&f).unwrap().id, f);
        assert!(inv.functions().is_empty());
        assert_eq!(
            inv.remove(&f),
            Err(InventoryError::UnknownFunction(f.clone()))
        );
    }

    #[test]
    fn entries_serialize_with_stable_keys() {
        let mut e = dma(Bdf::new(0, 0, 1), Some("dma-a"), 0);
        e.state = FunctionState::Assigned(host("web1"));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["id"], "dma-a");
        assert_eq!(v["bdf"], "00.1");
        assert_eq!(v["ids"]["vendor"], 0x1b36);
        assert_eq!(v["state"]["state"], "assigned");
        assert_eq!(v["state"]["host"], "web1");
        let v = serde_json::to_value(FunctionState::Unassigned).unwrap();
        assert_eq!(v["state"], "unassigned");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Assign(usize, usize),
        Unassign(usize),
        ResetDone(usize),
        Fail(usize),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, 0..3usize).prop_map(|(f, h)| Op::Assign(f, h)),
            (0..4usize).prop_map(Op::Unassign),
            (0..4usize).prop_map(Op::ResetDone),
            (0..4usize).prop_map(Op::Fail),
            (0..4usize).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Parsing any text never panics, and whatever parses prints back as the same text.
        #[test]
        fn function_id_parse_is_total_and_canonical(s in "\\PC{0,40}") {
            if let Ok(id) = s.parse::<FunctionId>() {
                prop_assert_eq!(id.as_str(), s.as_str());
            }
        }

        /// Every id the inventory makes parses back to itself.
        #[test]
        fn every_made_id_parses_back(dev in 0u8..32, func in 0u8..8, vf in proptest::option::of(any::<u16>()),
                                     name in proptest::option::of("[a-zA-Z][a-zA-Z0-9_-]{0,31}")) {
            let pf = match &name {
                Some(n) => FunctionId::named(n).unwrap(),
                None => FunctionId::derived(Bdf::new(0, dev, func)),
            };
            let id = match vf { Some(i) => pf.vf(i), None => pf };
            prop_assert_eq!(id.as_str().parse::<FunctionId>(), Ok(id.clone()));
        }

        /// Whatever is asked, in any order: ownership changes only through a refusal-checked
        /// path (a refused operation changes nothing), no function is owned by an unknown
        /// host, and a function is never handed from one owner to another without passing
        /// through Resetting.
        #[test]
        fn ownership_rules_hold_under_any_sequence(ops in proptest::collection::vec(op(), 1..200)) {
            let hosts = [host("a"), host("b")];
            let mut inv = Inventory::new(hosts);
            let ids: Vec<FunctionId> = (0..4u8).map(|i| FunctionId::derived(Bdf::new(0, i, 0))).collect();
            for i in 0..4u8 {
                inv.add(dma(Bdf::new(0, i, 0), None, 0)).unwrap();
            }
            let all_hosts = [host("a"), host("b"), host("stranger")];
            for o in ops {
                let before = inv.functions().to_vec();
                let res = match &o {
                    Op::Assign(f, h) => inv.assign(&ids[*f], all_hosts[*h]),
                    Op::Unassign(f) => inv.unassign(&ids[*f]).map(|_| ()),
                    Op::ResetDone(f) => inv.reset_done(&ids[*f]),
                    Op::Fail(f) => inv.fail(&ids[*f]),
                    Op::Remove(f) => inv.remove(&ids[*f]).map(|_| ()),
                };
                if res.is_err() {
                    prop_assert_eq!(inv.functions(), &before[..], "refused {:?} changed state", o);
                }
                for f in inv.functions() {
                    if let Some(h) = f.owner() {
                        prop_assert!(hosts.contains(&h));
                    }
                    // Owner changes only Unassigned -> Assigned(h); never Assigned(a) -> Assigned(b).
                    if let Some(old) = before.iter().find(|b| b.id == f.id) {
                        if let (Some(x), Some(y)) = (old.owner(), f.owner()) {
                            prop_assert_eq!(x, y);
                        }
                        if let (Some(_), FunctionState::Unassigned) = (old.owner(), f.state) {
                            prop_assert!(false, "owner dropped without a reset");
                        }
                    }
                }
            }
        }
    }
}
