//! An in-memory [`Pool`] with the real pool's rules (issue 11): a function belongs to at most one
//! host, only an unassigned function can be assigned, only an assigned one unassigned, and an
//! operation finishes when the pool says so.
//!
//! It lets the management API be tested (and demonstrated) without an appliance: the test
//! chooses whether operations finish at once ([`Completion::Immediate`]) or only when it calls
//! [`FakePool::complete`] / [`FakePool::fail`] ([`Completion::Manual`]), so a task's whole life
//! cycle can be observed.

use std::sync::Mutex;
use std::time::Duration;

use crate::sync::MutexExt;

use super::pool::{
    valid_id, valid_vm_name, AddCompleter, AddedCard, ApplianceInfo, Completer, EventSink,
    FunctionInfo, FunctionKind, FunctionMetrics, FunctionState, Health, HostInfo, HostMetrics,
    HostSession, MetricsSnapshot, Pool, PoolError, PoolEvent, VmConsumer, VmState,
};

/// When the fake pool finishes accepted operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Inside `assign`/`unassign`, before they return.
    Immediate,
    /// When the test calls [`FakePool::complete`] or [`FakePool::fail`].
    Manual,
}

#[derive(Debug)]
struct Pending {
    function: String,
    done: Completer,
}

#[derive(Debug)]
struct Inner {
    appliance: ApplianceInfo,
    functions: Vec<FunctionInfo>,
    hosts: Vec<HostInfo>,
    /// Counters the test set, by function / host id (absent: all zero).
    function_metrics: Vec<FunctionMetrics>,
    host_metrics: Vec<HostMetrics>,
    pending: Vec<Pending>,
    completion: Completion,
    sinks: Vec<EventSink>,
    /// Caps set through the API, by function id.
    policies: Vec<(String, super::pool::PolicySettings)>,
}

/// The in-memory pool.
#[derive(Debug)]
pub struct FakePool {
    inner: Mutex<Inner>,
}

/// Work to do once the lock is released: outcomes to report and events to send.
#[derive(Default)]
struct After {
    outcomes: Vec<(Completer, Result<(), PoolError>)>,
    events: Vec<PoolEvent>,
    sinks: Vec<EventSink>,
}

impl After {
    fn run(self) {
        for (done, outcome) in self.outcomes {
            done.finish(outcome);
        }
        for event in self.events {
            for sink in &self.sinks {
                sink.emit(event.clone());
            }
        }
    }
}

impl FakePool {
    /// An empty pool for the appliance `appliance`.
    pub fn new(appliance: ApplianceInfo) -> Self {
        FakePool {
            inner: Mutex::new(Inner {
                appliance,
                functions: Vec::new(),
                hosts: Vec::new(),
                function_metrics: Vec::new(),
                host_metrics: Vec::new(),
                pending: Vec::new(),
                policies: Vec::new(),
                completion: Completion::Immediate,
                sinks: Vec::new(),
            }),
        }
    }

    /// A small pool: an NVMe controller (`nvme0`), a DMA engine with two SR-IOV VFs
    /// (`dma0`, `dma0.vf1`, `dma0.vf2`; TotalVFs 4), and hosts `alpha` (connected) and `beta`
    /// (disconnected); nothing assigned.
    pub fn sample() -> Self {
        let pool = FakePool::new(ApplianceInfo {
            id: "appliance".into(),
            name: "pcietun appliance".into(),
            serial: None,
        });
        let base =
            |id: &str, device: &str, n: u16, kind, dev_id, class, model: &str| FunctionInfo {
                id: id.into(),
                device: device.into(),
                function_number: n,
                kind,
                vendor_id: 0x1b36,
                device_id: dev_id,
                subsystem_vendor_id: 0x1af4,
                subsystem_id: 0x1100,
                class_code: class,
                revision_id: 2,
                model: model.into(),
                state: FunctionState::Unassigned,
                health: Health::Ok,
                vm: None,
                total_vfs: 0,
            };
        pool.insert_function(base(
            "nvme0",
            "nvme0",
            0,
            FunctionKind::Physical,
            0x0010,
            0x01_08_02,
            "NVMe controller",
        ));
        pool.insert_function(FunctionInfo {
            total_vfs: 4,
            ..base(
                "dma0",
                "dma0",
                0,
                FunctionKind::Physical,
                0x0011,
                0xff_00_00,
                "DMA engine",
            )
        });
        for vf in 1..=2u16 {
            pool.insert_function(base(
                &format!("dma0.vf{vf}"),
                "dma0",
                vf,
                FunctionKind::Virtual {
                    physical: "dma0".into(),
                },
                0x0012,
                0xff_00_00,
                "DMA engine virtual function",
            ));
        }
        pool.add_host(HostInfo {
            id: "alpha".into(),
            session: HostSession::Connected,
            rtt: Some(Duration::from_micros(42)),
        });
        pool.add_host(HostInfo {
            id: "beta".into(),
            session: HostSession::Disconnected,
            rtt: None,
        });
        pool
    }

    /// Choose when accepted operations finish.
    pub fn set_completion(&self, completion: Completion) {
        self.inner.lock_or_recover().completion = completion;
    }

    /// Put a function into the inventory (hot-add, as the test describes it); emits
    /// `FunctionAdded`.
    pub fn insert_function(&self, function: FunctionInfo) {
        let mut after = After::default();
        {
            let mut inner = self.inner.lock_or_recover();
            after.events.push(PoolEvent::FunctionAdded {
                function: function.id.clone(),
            });
            inner.functions.retain(|f| f.id != function.id);
            inner.functions.push(function);
            after.sinks = inner.sinks.clone();
        }
        after.run();
    }

    /// Add or replace a host.
    pub fn add_host(&self, host: HostInfo) {
        let mut inner = self.inner.lock_or_recover();
        inner.hosts.retain(|h| h.id != host.id);
        inner.hosts.push(host);
    }

    /// Bring a host's session up or down (as its agent connecting or dying would): emits
    /// `HostConnected` / `HostLost` when the state changes; `false` for an unknown host.
    pub fn set_session(&self, host: &str, session: HostSession) -> bool {
        let mut after = After::default();
        {
            let mut inner = self.inner.lock_or_recover();
            let Some(h) = inner.hosts.iter_mut().find(|h| h.id == host) else {
                return false;
            };
            if h.session != session {
                h.session = session;
                h.rtt = None;
                after.events.push(match session {
                    HostSession::Connected => PoolEvent::HostConnected { host: host.into() },
                    HostSession::Disconnected => PoolEvent::HostLost { host: host.into() },
                });
            }
            after.sinks = inner.sinks.clone();
        }
        after.run();
        true
    }

    /// Set a function's counters (what [`Pool::metrics`] reports for it).
    pub fn set_function_metrics(&self, metrics: FunctionMetrics) {
        let mut inner = self.inner.lock_or_recover();
        inner
            .function_metrics
            .retain(|m| m.function != metrics.function);
        inner.function_metrics.push(metrics);
    }

    /// Set a host's counters (what [`Pool::metrics`] reports for it).
    pub fn set_host_metrics(&self, metrics: HostMetrics) {
        let mut inner = self.inner.lock_or_recover();
        inner.host_metrics.retain(|m| m.host != metrics.host);
        inner.host_metrics.push(metrics);
    }

    /// Mark a function failed (e.g. an AER fatal error); emits `FunctionStateChanged`.
    pub fn set_failed(&self, function: &str, reason: &str) {
        let mut after = After::default();
        {
            let mut inner = self.inner.lock_or_recover();
            let inner = &mut *inner;
            if let Some(f) = inner.functions.iter_mut().find(|f| f.id == function) {
                f.state = FunctionState::Failed {
                    reason: reason.into(),
                };
                f.health = Health::Critical;
                after.events.push(PoolEvent::FunctionStateChanged {
                    function: function.into(),
                    state: f.state.clone(),
                });
            }
            after.sinks = inner.sinks.clone();
        }
        after.run();
    }

    /// What a host's agent would report: the VM `vm` of the function's owner is now in
    /// `state`; emits `VmConsumer`. `false` if the function has no owner.
    pub fn report_vm(&self, function: &str, vm: &str, state: VmState) -> bool {
        let mut after = After::default();
        {
            let mut inner = self.inner.lock_or_recover();
            let inner = &mut *inner;
            let Some(f) = inner.functions.iter_mut().find(|f| f.id == function) else {
                return false;
            };
            let Some(host) = f.state.host().map(str::to_string) else {
                return false;
            };
            f.vm = Some(VmConsumer {
                name: vm.into(),
                state,
                since: std::time::SystemTime::now(),
            });
            after.events.push(PoolEvent::VmConsumer {
                function: function.into(),
                host,
                vm: vm.into(),
                state,
            });
            after.sinks = inner.sinks.clone();
        }
        after.run();
        true
    }

    /// Ids of the functions with an operation in flight.
    pub fn pending(&self) -> Vec<String> {
        let inner = self.inner.lock_or_recover();
        inner.pending.iter().map(|p| p.function.clone()).collect()
    }

    /// Finish the operation in flight on `function` successfully; false when there is none.
    pub fn complete(&self, function: &str) -> bool {
        self.settle(function, None)
    }

    /// Fail the operation in flight on `function`; the function goes back to where it was.
    /// False when there is none.
    pub fn fail(&self, function: &str, reason: &str) -> bool {
        self.settle(function, Some(reason))
    }

    fn settle(&self, function: &str, failure: Option<&str>) -> bool {
        let mut after = After::default();
        let found = {
            let mut inner = self.inner.lock_or_recover();
            let found = Self::settle_locked(&mut inner, function, failure, &mut after);
            after.sinks = inner.sinks.clone();
            found
        };
        after.run();
        found
    }

    fn settle_locked(
        inner: &mut Inner,
        function: &str,
        failure: Option<&str>,
        after: &mut After,
    ) -> bool {
        let Some(i) = inner.pending.iter().position(|p| p.function == function) else {
            return false;
        };
        let pending = inner.pending.remove(i);
        let Some(f) = inner.functions.iter_mut().find(|f| f.id == function) else {
            after.outcomes.push((
                pending.done,
                Err(PoolError::UnknownFunction {
                    function: function.into(),
                }),
            ));
            return true;
        };
        let (state, outcome) = match (&f.state, failure) {
            (FunctionState::Attaching { host }, None) => {
                (FunctionState::Assigned { host: host.clone() }, Ok(()))
            }
            (FunctionState::Detaching { .. }, None) => (FunctionState::Unassigned, Ok(())),
            // A failed attach leaves the function free; a failed detach leaves it with its owner.
            (FunctionState::Attaching { .. }, Some(reason)) => (
                FunctionState::Unassigned,
                Err(PoolError::FunctionFailed {
                    function: function.into(),
                    reason: reason.into(),
                }),
            ),
            (FunctionState::Detaching { host }, Some(reason)) => (
                FunctionState::Assigned { host: host.clone() },
                Err(PoolError::FunctionFailed {
                    function: function.into(),
                    reason: reason.into(),
                }),
            ),
            (other, _) => (
                other.clone(),
                Err(PoolError::InTransition {
                    function: function.into(),
                    state: other.name(),
                }),
            ),
        };
        if state == FunctionState::Unassigned {
            // The VM was its owner's.
            f.vm = None;
        }
        f.state = state.clone();
        after.events.push(PoolEvent::FunctionStateChanged {
            function: function.into(),
            state,
        });
        after.outcomes.push((pending.done, outcome));
        true
    }

    fn start(&self, function: &str, host: Option<&str>, done: Completer) -> Result<(), PoolError> {
        let mut after = After::default();
        let result = {
            let mut inner = self.inner.lock_or_recover();
            let inner = &mut *inner;
            after.sinks = inner.sinks.clone();
            if let Some(h) = host {
                if !inner.hosts.iter().any(|x| x.id == h) {
                    return Err(PoolError::UnknownHost { host: h.into() });
                }
            }
            let f = inner
                .functions
                .iter_mut()
                .find(|f| f.id == function)
                .ok_or_else(|| PoolError::UnknownFunction {
                    function: function.into(),
                })?;
            let next = match (&f.state, host) {
                (FunctionState::Failed { reason }, _) => {
                    return Err(PoolError::FunctionFailed {
                        function: function.into(),
                        reason: reason.clone(),
                    })
                }
                (FunctionState::Unassigned, Some(h)) => FunctionState::Attaching { host: h.into() },
                (FunctionState::Assigned { host: owner }, None) => FunctionState::Detaching {
                    host: owner.clone(),
                },
                (FunctionState::Assigned { host: owner }, Some(_)) => {
                    return Err(PoolError::AlreadyAssigned {
                        function: function.into(),
                        host: owner.clone(),
                    })
                }
                (FunctionState::Unassigned, None) => {
                    return Err(PoolError::NotAssigned {
                        function: function.into(),
                    })
                }
                (other, _) => {
                    return Err(PoolError::InTransition {
                        function: function.into(),
                        state: other.name(),
                    })
                }
            };
            f.state = next.clone();
            after.events.push(PoolEvent::FunctionStateChanged {
                function: function.into(),
                state: next,
            });
            inner.pending.push(Pending {
                function: function.into(),
                done,
            });
            if inner.completion == Completion::Immediate {
                Self::settle_locked(inner, function, None, &mut after);
            }
            Ok(())
        };
        after.run();
        result
    }
}

impl Pool for FakePool {
    fn policy(&self, function: &str) -> Result<super::pool::PolicySettings, PoolError> {
        let inner = self.inner.lock_or_recover();
        if !inner.functions.iter().any(|f| f.id == function) {
            return Err(PoolError::UnknownFunction {
                function: function.into(),
            });
        }
        Ok(inner
            .policies
            .iter()
            .find(|(f, _)| f == function)
            .map(|(_, p)| *p)
            .unwrap_or_default())
    }

    fn set_policy(
        &self,
        function: &str,
        policy: super::pool::PolicySettings,
    ) -> Result<(), PoolError> {
        let mut inner = self.inner.lock_or_recover();
        if !inner.functions.iter().any(|f| f.id == function) {
            return Err(PoolError::UnknownFunction {
                function: function.into(),
            });
        }
        inner.policies.retain(|(f, _)| f != function);
        if !policy.is_unlimited() {
            inner.policies.push((function.into(), policy));
        }
        Ok(())
    }

    fn appliance(&self) -> ApplianceInfo {
        self.inner.lock_or_recover().appliance.clone()
    }

    fn functions(&self) -> Vec<FunctionInfo> {
        self.inner.lock_or_recover().functions.clone()
    }

    fn hosts(&self) -> Vec<HostInfo> {
        self.inner.lock_or_recover().hosts.clone()
    }

    fn assign(&self, function: &str, host: &str, done: Completer) -> Result<(), PoolError> {
        self.start(function, Some(host), done)
    }

    /// Like the appliance: the function shows the named VM as `Pending` until a report.
    fn assign_to_vm(
        &self,
        function: &str,
        host: &str,
        vm: Option<&str>,
        done: Completer,
    ) -> Result<(), PoolError> {
        if let Some(v) = vm.filter(|v| !valid_vm_name(v)) {
            return Err(PoolError::BadDevice {
                reason: format!("bad VM name {v:?}"),
            });
        }
        self.start(function, Some(host), done)?;
        if let Some(v) = vm {
            let mut inner = self.inner.lock_or_recover();
            if let Some(f) = inner.functions.iter_mut().find(|f| f.id == function) {
                f.vm = Some(VmConsumer {
                    name: v.into(),
                    state: VmState::Pending,
                    since: std::time::SystemTime::now(),
                });
            }
        }
        Ok(())
    }

    fn unassign(&self, function: &str, done: Completer) -> Result<(), PoolError> {
        self.start(function, None, done)
    }

    /// The fake understands `dma[,OPTIONS]` (a DMA engine) and refuses every path-bearing kind
    /// of the real grammar (`nvme=`, `replay=`, `vfio-user=`) as an appliance without
    /// `[api] device_dirs` does; anything else is a bad spec. A card without a name is
    /// `cardN`; at most 32 cards, as on the appliance. It is in the inventory before `done`
    /// reports it (at once, whatever [`Completion`] says).
    fn add_function(
        &self,
        spec: &str,
        name: Option<&str>,
        done: AddCompleter,
    ) -> Result<(), PoolError> {
        let head = spec.split(',').next().unwrap_or("");
        let kind = head.split_once('=').map_or(head, |(k, _)| k);
        match kind {
            "dma" => {}
            "nvme" | "replay" | "vfio-user" => {
                return Err(PoolError::NotAllowed {
                    reason: format!(
                    "{kind} names a path on the appliance and no [api] device_dirs are configured"
                ),
                })
            }
            other => {
                return Err(PoolError::BadDevice {
                    reason: format!("unknown device kind {other:?} (dma, nvme, replay, vfio-user)"),
                })
            }
        }
        let mut after = After::default();
        let card = {
            let mut inner = self.inner.lock_or_recover();
            // Like the appliance: at most 32 cards (device numbers 0 to 31).
            let mut cards: Vec<&str> = inner.functions.iter().map(|f| f.device.as_str()).collect();
            cards.sort_unstable();
            cards.dedup();
            if cards.len() >= 32 {
                return Err(PoolError::NoFreeDevice);
            }
            let id = match name {
                Some(n) if !valid_id(n) => {
                    return Err(PoolError::BadDevice {
                        reason: format!("bad name {n:?}"),
                    })
                }
                Some(n) if inner.functions.iter().any(|f| f.id == n || f.device == n) => {
                    return Err(PoolError::NameTaken { name: n.into() })
                }
                Some(n) => n.to_string(),
                None => (0..)
                    .map(|i| format!("card{i}"))
                    .find(|c| !inner.functions.iter().any(|f| f.id == *c || f.device == *c))
                    .unwrap_or_default(),
            };
            inner.functions.push(FunctionInfo {
                id: id.clone(),
                device: id.clone(),
                function_number: 0,
                kind: FunctionKind::Physical,
                vendor_id: 0x1b36,
                device_id: 0x0011,
                subsystem_vendor_id: 0x1af4,
                subsystem_id: 0x1100,
                class_code: 0xff_00_00,
                revision_id: 2,
                model: "DMA engine".into(),
                state: FunctionState::Unassigned,
                health: Health::Ok,
                vm: None,
                total_vfs: 0,
            });
            after.events.push(PoolEvent::FunctionAdded {
                function: id.clone(),
            });
            after.sinks = inner.sinks.clone();
            AddedCard {
                device: id.clone(),
                functions: vec![id],
            }
        };
        done.finish(Ok(card));
        after.run();
        Ok(())
    }

    /// Changes the VF entries of the PF at once (whatever [`Completion`] says); its VFs are
    /// numbered from 1 (`PF.vf1`, ...), as [`FakePool::sample`]'s are.
    fn set_vf_count(&self, function: &str, n: u16, done: Completer) -> Result<(), PoolError> {
        let mut after = After::default();
        {
            let mut inner = self.inner.lock_or_recover();
            let pf = inner
                .functions
                .iter()
                .find(|f| f.id == function)
                .cloned()
                .ok_or_else(|| PoolError::UnknownFunction {
                    function: function.into(),
                })?;
            if pf.kind != FunctionKind::Physical || pf.total_vfs == 0 {
                return Err(PoolError::NotSriov {
                    function: function.into(),
                });
            }
            if n > pf.total_vfs {
                return Err(PoolError::TooManyVfs {
                    function: function.into(),
                    requested: n,
                    total: pf.total_vfs,
                });
            }
            if let Some(host) = pf.state.host() {
                return Err(PoolError::AlreadyAssigned {
                    function: function.into(),
                    host: host.into(),
                });
            }
            let is_vf = |f: &FunctionInfo| matches!(&f.kind, FunctionKind::Virtual { physical } if physical == function);
            if let Some(vf) = inner
                .functions
                .iter()
                .find(|f| is_vf(f) && !matches!(f.state, FunctionState::Unassigned))
            {
                return Err(PoolError::VfInUse {
                    function: function.into(),
                    vf: vf.id.clone(),
                    why: format!("is {}", vf.state.name()),
                });
            }
            let had = inner.functions.iter().filter(|f| is_vf(f)).count() as u16;
            inner.functions.retain(|f| {
                let gone = is_vf(f) && f.function_number > n;
                if gone {
                    after.events.push(PoolEvent::FunctionRemoved {
                        function: f.id.clone(),
                    });
                }
                !gone
            });
            let at = inner
                .functions
                .iter()
                .rposition(|f| f.id == function || is_vf(f))
                .map_or(inner.functions.len(), |i| i + 1);
            for (k, i) in (had + 1..=n).enumerate() {
                let id = format!("{function}.vf{i}");
                inner.functions.insert(
                    at + k,
                    FunctionInfo {
                        id: id.clone(),
                        function_number: i,
                        kind: FunctionKind::Virtual {
                            physical: function.into(),
                        },
                        device_id: pf.device_id.wrapping_add(1),
                        model: format!("{} virtual function", pf.model),
                        state: FunctionState::Unassigned,
                        health: Health::Ok,
                        vm: None,
                        total_vfs: 0,
                        ..pf.clone()
                    },
                );
                after.events.push(PoolEvent::FunctionAdded { function: id });
            }
            after.sinks = inner.sinks.clone();
        }
        done.finish(Ok(()));
        after.run();
        Ok(())
    }

    /// Removes every function of the card at once (whatever [`Completion`] says).
    fn remove_function(&self, function: &str, done: Completer) -> Result<(), PoolError> {
        let mut after = After::default();
        {
            let mut inner = self.inner.lock_or_recover();
            let f = inner
                .functions
                .iter()
                .find(|f| f.id == function)
                .ok_or_else(|| PoolError::UnknownFunction {
                    function: function.into(),
                })?;
            if let FunctionKind::Virtual { physical } = &f.kind {
                return Err(PoolError::VirtualFunction {
                    function: function.into(),
                    physical: physical.clone(),
                });
            }
            let device = f.device.clone();
            for f in inner.functions.iter().filter(|f| f.device == device) {
                match &f.state {
                    FunctionState::Unassigned | FunctionState::Failed { .. } => {}
                    FunctionState::Assigned { host } => {
                        return Err(PoolError::AlreadyAssigned {
                            function: f.id.clone(),
                            host: host.clone(),
                        })
                    }
                    other => {
                        return Err(PoolError::InTransition {
                            function: f.id.clone(),
                            state: other.name(),
                        })
                    }
                }
            }
            inner.functions.retain(|f| {
                if f.device == device {
                    after.events.push(PoolEvent::FunctionRemoved {
                        function: f.id.clone(),
                    });
                    false
                } else {
                    true
                }
            });
            after.sinks = inner.sinks.clone();
        }
        after.outcomes.push((done, Ok(())));
        after.run();
        Ok(())
    }

    fn subscribe(&self, sink: EventSink) {
        self.inner.lock_or_recover().sinks.push(sink);
    }

    /// One entry per function and host, in inventory order: the counters set by
    /// [`FakePool::set_function_metrics`] / [`FakePool::set_host_metrics`], else zeros.
    fn metrics(&self) -> MetricsSnapshot {
        let inner = self.inner.lock_or_recover();
        let functions = inner
            .functions
            .iter()
            .map(|f| {
                inner
                    .function_metrics
                    .iter()
                    .find(|m| m.function == f.id)
                    .cloned()
                    .unwrap_or_else(|| FunctionMetrics {
                        function: f.id.clone(),
                        ..FunctionMetrics::default()
                    })
            })
            .collect();
        let hosts = inner
            .hosts
            .iter()
            .map(|h| {
                inner
                    .host_metrics
                    .iter()
                    .find(|m| m.host == h.id)
                    .cloned()
                    .unwrap_or_else(|| HostMetrics {
                        host: h.id.clone(),
                        ..HostMetrics::default()
                    })
            })
            .collect();
        MetricsSnapshot { functions, hosts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    fn state(pool: &FakePool, id: &str) -> FunctionState {
        pool.functions()
            .into_iter()
            .find(|f| f.id == id)
            .unwrap()
            .state
    }

    #[test]
    fn assign_unassign_manual() {
        let pool = FakePool::sample();
        pool.set_completion(Completion::Manual);
        let outcome = Arc::new(StdMutex::new(None));
        let o = outcome.clone();
        pool.assign(
            "nvme0",
            "alpha",
            Completer::new(move |r| *o.lock_or_recover() = Some(r.is_ok())),
        )
        .unwrap();
        assert_eq!(
            state(&pool, "nvme0"),
            FunctionState::Attaching {
                host: "alpha".into()
            }
        );
        assert_eq!(*outcome.lock_or_recover(), None);
        // A second owner is refused while the first attaches.
        assert!(matches!(
            pool.assign("nvme0", "beta", Completer::ignored()),
            Err(PoolError::InTransition { .. })
        ));
        assert!(pool.complete("nvme0"));
        assert_eq!(*outcome.lock_or_recover(), Some(true));
        assert_eq!(
            state(&pool, "nvme0"),
            FunctionState::Assigned {
                host: "alpha".into()
            }
        );
        assert!(matches!(
            pool.assign("nvme0", "beta", Completer::ignored()),
            Err(PoolError::AlreadyAssigned { .. })
        ));
        pool.unassign("nvme0", Completer::ignored()).unwrap();
        assert!(pool.fail("nvme0", "host did not let go"));
        assert_eq!(
            state(&pool, "nvme0"),
            FunctionState::Assigned {
                host: "alpha".into()
            }
        );
    }

    #[test]
    fn refusals() {
        let pool = FakePool::sample();
        assert!(matches!(
            pool.assign("nope", "alpha", Completer::ignored()),
            Err(PoolError::UnknownFunction { .. })
        ));
        assert!(matches!(
            pool.assign("nvme0", "nope", Completer::ignored()),
            Err(PoolError::UnknownHost { .. })
        ));
        assert!(matches!(
            pool.unassign("nvme0", Completer::ignored()),
            Err(PoolError::NotAssigned { .. })
        ));
        pool.set_failed("dma0", "AER fatal");
        assert!(matches!(
            pool.assign("dma0", "alpha", Completer::ignored()),
            Err(PoolError::FunctionFailed { .. })
        ));
    }

    #[test]
    fn events_reach_subscribers() {
        let pool = FakePool::sample();
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let s = seen.clone();
        pool.subscribe(EventSink::new(move |e| s.lock_or_recover().push(e)));
        pool.assign("nvme0", "alpha", Completer::ignored()).unwrap();
        let seen = seen.lock_or_recover();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(
            seen[1],
            PoolEvent::FunctionStateChanged {
                function: "nvme0".into(),
                state: FunctionState::Assigned {
                    host: "alpha".into()
                }
            }
        );
    }
}
