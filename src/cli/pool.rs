//! The management API's view of the running appliance: [`mgmt::Pool`] implemented over
//! [`appliance::Control`]. The two are sibling layers that never import each other (the
//! layering test holds them to it); this is the one place that translates between them, so the
//! API, `pcietun ctl` and the library callers all drive the same assignments.
//!
//! What it maps: the inventory snapshot (ids, PCI identity, state with the owner, an orderly
//! removal in progress as `detaching`) to `FunctionInfo`; the hosts' sessions and RTT to
//! `HostInfo`; assign/unassign to the serving loop's orderly protocol, each reported through its
//! `Completer` when the loop finishes it (the Task of the API completes then, never before);
//! the loop's pool events to the API's event stream; adding and removing cards
//! (`Control::add_function` / `remove_function`) with the API's confinement of what a spec may
//! name (see [`api_spec`]); the router's per-function traffic and the transport's per-host
//! counters (summed over each host's sessions) to `metrics()`.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use pcietun::appliance::config::{parse_device_flag, DeviceSpec};
use pcietun::appliance::control::{ControlError, FunctionStatus, HostStatus, PoolEvent};
use pcietun::appliance::policy::Limit;
use pcietun::appliance::{Control, FunctionId, FunctionState, InventoryError};
use pcietun::mgmt::pool::{
    AddCompleter, AddedCard, ApplianceInfo, Completer, Directions, EventSink, FunctionInfo,
    FunctionKind, FunctionMetrics, FunctionState as ApiState, Health, HostInfo, HostMetrics,
    HostSession, MetricsSnapshot, PolicySettings, Pool, PoolError, PoolEvent as ApiEvent,
    VmConsumer, VmState,
};
use pcietun::tlp::slot::{ConsumerEvent, VmName};
use pcietun::transport::HostId;

// The API validates priorities against its own copy of the range (mgmt and appliance never
// import each other); this adapter is where the two meet, so it holds them equal.
const _: () = {
    use pcietun::appliance::arbiter as a;
    use pcietun::mgmt::pool as m;
    assert!(a::PRIORITY_MIN == m::PRIORITY_MIN);
    assert!(a::PRIORITY_MAX == m::PRIORITY_MAX);
    assert!(a::PRIORITY_DEFAULT == m::PRIORITY_DEFAULT);
};

/// The appliance's pool behind the management API.
pub struct AppliancePool {
    control: Control,
    info: ApplianceInfo,
    /// Where a card added over the API may have its files and sockets (`[api] device_dirs`).
    device_dirs: Vec<PathBuf>,
}

impl AppliancePool {
    /// The pool of the appliance that `control` drives.
    pub fn new(control: Control, id: &str) -> AppliancePool {
        AppliancePool {
            control,
            info: ApplianceInfo {
                id: id.to_string(),
                name: format!("pcietun appliance {id}"),
                serial: None,
            },
            device_dirs: Vec::new(),
        }
    }

    /// Let cards added over the API use files and sockets under `dirs` (`[api] device_dirs`;
    /// none: no path-bearing kind over the API).
    pub fn with_device_dirs(mut self, dirs: &[PathBuf]) -> AppliancePool {
        self.device_dirs = dirs.to_vec();
        self
    }

    fn find(&self, function: &str) -> Result<FunctionStatus, PoolError> {
        self.control
            .functions()
            .into_iter()
            .find(|f| f.entry.id.as_str() == function)
            .ok_or_else(|| PoolError::UnknownFunction {
                function: function.to_string(),
            })
    }
}

/// The API's state of a function: the owner, and whether an orderly removal is under way.
fn api_state(f: &FunctionStatus) -> ApiState {
    match f.entry.state {
        FunctionState::Unassigned => ApiState::Unassigned,
        FunctionState::Assigned(h) if f.detaching => ApiState::Detaching {
            host: h.to_string(),
        },
        FunctionState::Assigned(h) => ApiState::Assigned {
            host: h.to_string(),
        },
        FunctionState::Resetting => ApiState::Resetting,
        FunctionState::Failed => ApiState::Failed {
            reason: f
                .entry
                .failure
                .clone()
                .unwrap_or_else(|| "the function failed (reset or backing store)".into()),
        },
    }
}

/// The API's id of the card at device number `device`: a card is its device number on the
/// appliance.
fn card_id(device: u8) -> String {
    format!("card-{device:02x}")
}

/// The device number a card id of [`card_id`] names (a card stored by the API, restored at
/// the next start).
pub fn card_device(card: &str) -> Option<u8> {
    let hex = card.strip_prefix("card-")?;
    let n = u8::from_str_radix(hex, 16).ok()?;
    (hex.len() == 2 && n < 32 && card_id(n) == card).then_some(n)
}

fn function_info(f: &FunctionStatus) -> FunctionInfo {
    let e = &f.entry;
    let (kind, number) = match &e.vf_of {
        Some((pf, index)) => (
            FunctionKind::Virtual {
                physical: pf.to_string(),
            },
            *index,
        ),
        None => (FunctionKind::Physical, u16::from(e.bdf.function())),
    };
    let device = card_id(e.bdf.device());
    FunctionInfo {
        id: e.id.to_string(),
        device,
        function_number: number,
        kind,
        vendor_id: e.ids.vendor,
        device_id: e.ids.device,
        subsystem_vendor_id: e.ids.subsystem_vendor,
        subsystem_id: e.ids.subsystem,
        class_code: e.ids.class,
        revision_id: e.ids.revision,
        model: e.model.clone(),
        state: api_state(f),
        health: if e.state == FunctionState::Failed {
            Health::Critical
        } else {
            Health::Ok
        },
        vm: f.vm.map(|c| VmConsumer {
            name: c.vm.to_string(),
            state: vm_state(c.event),
            since: c.since,
        }),
        total_vfs: e.total_vfs,
    }
}

/// The API's state of a VM consumer from the last event its host reported (`None`: named by
/// the assignment, nothing reported yet).
fn vm_state(e: Option<ConsumerEvent>) -> VmState {
    match e {
        None => VmState::Pending,
        Some(ConsumerEvent::Attached) => VmState::Attached,
        Some(ConsumerEvent::AttachFailed) => VmState::Failed,
        Some(ConsumerEvent::EjectRefused) => VmState::EjectRefused,
        Some(ConsumerEvent::Detached) => VmState::Detached,
        Some(ConsumerEvent::SurpriseRemoved) => VmState::SurpriseRemoved,
        Some(ConsumerEvent::VmGone) => VmState::Gone,
    }
}

fn host_info(h: &HostStatus) -> HostInfo {
    HostInfo {
        id: h.id.to_string(),
        session: if h.connected {
            HostSession::Connected
        } else {
            HostSession::Disconnected
        },
        rtt: h.rtt,
    }
}

fn function_metrics(f: &FunctionStatus) -> FunctionMetrics {
    let t = &f.traffic;
    FunctionMetrics {
        function: f.entry.id.to_string(),
        tlps: Directions {
            downstream: t.tlps_down,
            upstream: t.tlps_up,
        },
        bytes: Directions {
            downstream: t.bytes_down,
            upstream: t.bytes_up,
        },
        dma_read_bytes: t.dma_read_bytes,
        dma_write_bytes: t.dma_write_bytes,
        interrupts: t.interrupts,
        unsupported_requests: t.unsupported_requests,
        completer_aborts: t.completer_aborts,
        completion_timeouts: t.completion_timeouts,
        throttled: pcietun::mgmt::pool::Throttled {
            bandwidth_up_nanos: t.throttled_nanos_up,
            bandwidth_down_nanos: t.throttled_nanos_down,
            iops_nanos: t.throttled_nanos_iops,
        },
    }
}

fn host_metrics(h: &HostStatus) -> HostMetrics {
    let t = &h.traffic;
    HostMetrics {
        host: h.id.to_string(),
        tlps: Directions {
            downstream: t.tlps_down,
            upstream: t.tlps_up,
        },
        bytes: Directions {
            downstream: t.bytes_down,
            upstream: t.bytes_up,
        },
        retransmits: t.retransmits,
        credit_stalls: t.credit_stalls,
    }
}

/// The API's error for a refusal of the serving loop.
fn pool_error(e: ControlError) -> PoolError {
    match e {
        ControlError::UnknownFunction(f) => PoolError::UnknownFunction {
            function: f.to_string(),
        },
        ControlError::UnknownHost(h) => PoolError::UnknownHost {
            host: h.to_string(),
        },
        ControlError::AlreadyAssigned { function, owner } => PoolError::AlreadyAssigned {
            function: function.to_string(),
            host: owner.to_string(),
        },
        ControlError::NotAssigned(f) => PoolError::NotAssigned {
            function: f.to_string(),
        },
        ControlError::Busy(f) => PoolError::InTransition {
            function: f.to_string(),
            state: "changing owner",
        },
        ControlError::Failed(f) => PoolError::FunctionFailed {
            function: f.to_string(),
            reason: "out of service".into(),
        },
        ControlError::BadDevice(reason) => PoolError::BadDevice { reason },
        ControlError::NoFreeDevice => PoolError::NoFreeDevice,
        ControlError::PooledVfs(f) => PoolError::PooledVfs {
            function: f.to_string(),
        },
        ControlError::NotSriov(f) => PoolError::NotSriov {
            function: f.to_string(),
        },
        ControlError::TooManyVfs {
            function,
            requested,
            total,
        } => PoolError::TooManyVfs {
            function: function.to_string(),
            requested,
            total,
        },
        ControlError::VfInUse { function, vf, why } => PoolError::VfInUse {
            function: function.to_string(),
            vf: vf.to_string(),
            why,
        },
        ControlError::Inventory(InventoryError::DuplicateId(id)) => PoolError::NameTaken {
            name: id.to_string(),
        },
        ControlError::Inventory(e @ InventoryError::BadName(_)) => PoolError::BadDevice {
            reason: e.to_string(),
        },
        other => PoolError::Appliance(Box::new(other)),
    }
}

fn function_id(f: &FunctionStatus) -> FunctionId {
    f.entry.id.clone()
}

/// The card `spec` describes, if the management API may add it: `spec` in the `--device`
/// grammar; every path it names (an NVMe backing file, a replay dump, a vfio-user socket)
/// absolute and, once symlinks are resolved, under one of `dirs` (with none, path-bearing
/// kinds are refused); no server process started (the grammar has no `start`, and a spec that
/// carried one would be refused). The paths in the returned spec are the resolved ones, so
/// the card opens what was checked.
///
/// Why: the API runs with the appliance's privileges, and a spec names server-side files. An
/// Administrator of the API is not thereby an administrator of the machine: it may use what
/// the configuration put in `device_dirs` and nothing else (docs/api.md "Adding and removing
/// cards"). What stays open: a file under a listed directory replaced by a symlink between
/// this check and the card's open (the directories are the operator's to keep private).
pub fn api_spec(spec: &str, dirs: &[PathBuf]) -> Result<DeviceSpec, PoolError> {
    let bad = |reason: String| PoolError::BadDevice { reason };
    let parsed = parse_device_flag(spec).map_err(|p| bad(format!("{spec:?}: {p}")))?;
    Ok(match parsed {
        d @ DeviceSpec::Dma { .. } => d,
        DeviceSpec::Nvme {
            path,
            create_size,
            serial,
            sriov,
        } => DeviceSpec::Nvme {
            path: confine("nvme", &path, create_size.is_some(), dirs)?,
            create_size,
            serial,
            sriov,
        },
        DeviceSpec::Replay { dump, bars } => DeviceSpec::Replay {
            dump: confine("replay", &dump, false, dirs)?,
            bars,
        },
        DeviceSpec::VfioUser {
            socket,
            connect_timeout,
            start,
        } => {
            if !start.is_empty() {
                return Err(PoolError::NotAllowed {
                    reason: "a vfio-user card added over the API cannot start a server process; start it yourself and give its socket".into(),
                });
            }
            DeviceSpec::VfioUser {
                socket: confine("vfio-user", &socket, false, dirs)?,
                connect_timeout,
                start,
            }
        }
        DeviceSpec::ScratchNvme { .. } => {
            return Err(bad("scratch NVMe cards are not offered over the API".into()))
        }
    })
}

/// `path` resolved, if it is under one of `dirs` (see [`api_spec`]). `may_create`: the file
/// need not exist yet (an NVMe backing file with `size=`), its directory must.
fn confine(
    kind: &str,
    path: &Path,
    may_create: bool,
    dirs: &[PathBuf],
) -> Result<PathBuf, PoolError> {
    let shown = path.display();
    if dirs.is_empty() {
        return Err(PoolError::NotAllowed {
            reason: format!(
                "{kind} names a path on the appliance ({shown}) and no [api] device_dirs are configured; list the directories the API may use there"
            ),
        });
    }
    let bad = |reason: String| PoolError::BadDevice { reason };
    if !path.is_absolute() {
        return Err(bad(format!("{kind} path {shown} must be absolute")));
    }
    let resolved = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
            let (Some(parent), Some(Component::Normal(file))) =
                (path.parent(), path.components().next_back())
            else {
                return Err(bad(format!("{kind} path {shown} names no file")));
            };
            std::fs::canonicalize(parent)
                .map_err(|e| bad(format!("{kind} path {shown}: {}: {e}", parent.display())))?
                .join(file)
        }
        Err(e) => return Err(bad(format!("{kind} path {shown}: {e}"))),
    };
    let inside = dirs.iter().any(|d| {
        std::fs::canonicalize(d)
            .map(|d| resolved.starts_with(d))
            .unwrap_or(false)
    });
    if inside {
        Ok(resolved)
    } else {
        Err(PoolError::NotAllowed {
            reason: format!(
                "{kind} path {shown} is outside the directories the API may use ([api] device_dirs: {})",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }
}

/// The card of the function `id` as the inventory shows it now: its API device id and its
/// functions (the physical ones at its device number, then their VFs).
fn added_card(control: &Control, id: &FunctionId) -> AddedCard {
    let all = control.functions();
    let dev = all
        .iter()
        .find(|f| f.entry.id == *id)
        .map(|f| f.entry.bdf.device());
    let device = all
        .iter()
        .find(|f| f.entry.id == *id)
        .map(function_info)
        .map_or_else(|| id.to_string(), |f| f.device);
    let mut functions: Vec<String> = all
        .iter()
        .filter(|f| f.entry.vf_of.is_none() && Some(f.entry.bdf.device()) == dev)
        .map(|f| f.entry.id.to_string())
        .collect();
    let pfs = functions.clone();
    functions.extend(
        all.iter()
            .filter(|f| {
                f.entry
                    .vf_of
                    .as_ref()
                    .is_some_and(|(pf, _)| pfs.contains(&pf.to_string()))
            })
            .map(|f| f.entry.id.to_string()),
    );
    if functions.is_empty() {
        functions.push(id.to_string());
    }
    AddedCard { device, functions }
}

impl Pool for AppliancePool {
    fn appliance(&self) -> ApplianceInfo {
        self.info.clone()
    }

    fn functions(&self) -> Vec<FunctionInfo> {
        self.control.functions().iter().map(function_info).collect()
    }

    fn hosts(&self) -> Vec<HostInfo> {
        self.control.hosts().iter().map(host_info).collect()
    }

    fn assign(&self, function: &str, host: &str, done: Completer) -> Result<(), PoolError> {
        self.assign_to_vm(function, host, None, done)
    }

    fn assign_to_vm(
        &self,
        function: &str,
        host: &str,
        vm: Option<&str>,
        done: Completer,
    ) -> Result<(), PoolError> {
        let vm = vm
            .map(|v| {
                VmName::new(v).map_err(|e| PoolError::BadDevice {
                    reason: format!("VM name {v:?}: {e}"),
                })
            })
            .transpose()?;
        let f = self.find(function)?;
        let known = self
            .control
            .hosts()
            .iter()
            .any(|h| h.id.to_string() == host);
        let host_id =
            HostId::new(host)
                .ok()
                .filter(|_| known)
                .ok_or_else(|| PoolError::UnknownHost {
                    host: host.to_string(),
                })?;
        // Refuse at once what the loop would refuse, so the API answers 4xx, not a failed Task.
        // A card (its physical functions move together) with a PF whose VFs are pooled.
        if f.entry.vf_of.is_none() {
            let all = self.control.functions();
            let dev = f.entry.bdf.device();
            let pf_of_pool = all.iter().find(|pf| {
                pf.entry.vf_of.is_none()
                    && pf.entry.bdf.device() == dev
                    && all.iter().any(|g| {
                        g.entry
                            .vf_of
                            .as_ref()
                            .is_some_and(|(p, _)| *p == pf.entry.id)
                    })
            });
            if let Some(pf) = pf_of_pool {
                return Err(PoolError::PooledVfs {
                    function: pf.entry.id.to_string(),
                });
            }
        }
        match api_state(&f) {
            ApiState::Unassigned => {}
            ApiState::Assigned { host } | ApiState::Detaching { host } => {
                return Err(PoolError::AlreadyAssigned {
                    function: function.to_string(),
                    host,
                })
            }
            ApiState::Failed { reason } => {
                return Err(PoolError::FunctionFailed {
                    function: function.to_string(),
                    reason,
                })
            }
            s => {
                return Err(PoolError::InTransition {
                    function: function.to_string(),
                    state: s.name(),
                })
            }
        }
        self.control
            .assign_to_vm(function_id(&f), host_id, vm, move |r| {
                done.finish(r.map_err(pool_error))
            });
        Ok(())
    }

    fn unassign(&self, function: &str, done: Completer) -> Result<(), PoolError> {
        let f = self.find(function)?;
        match api_state(&f) {
            ApiState::Assigned { .. } => {}
            ApiState::Unassigned => {
                return Err(PoolError::NotAssigned {
                    function: function.to_string(),
                })
            }
            ApiState::Failed { reason } => {
                return Err(PoolError::FunctionFailed {
                    function: function.to_string(),
                    reason,
                })
            }
            s => {
                return Err(PoolError::InTransition {
                    function: function.to_string(),
                    state: s.name(),
                })
            }
        }
        self.control
            .unassign(function_id(&f), move |r| done.finish(r.map_err(pool_error)));
        Ok(())
    }

    fn add_function(
        &self,
        spec: &str,
        name: Option<&str>,
        done: AddCompleter,
    ) -> Result<(), PoolError> {
        let spec = api_spec(spec, &self.device_dirs)?;
        if let Some(n) = name {
            FunctionId::named(n).map_err(|e| PoolError::BadDevice {
                reason: e.to_string(),
            })?;
            if self
                .control
                .functions()
                .iter()
                .any(|f| f.entry.id.as_str() == n)
            {
                return Err(PoolError::NameTaken { name: n.into() });
            }
        }
        // The card is built on the calling thread of Control::add_function (a backing file
        // opened, a server connected to, up to its connect timeout): not the API's.
        let control = self.control.clone();
        let name = name.map(str::to_string);
        std::thread::Builder::new()
            .name("api-add-card".into())
            .spawn(move || {
                let c = control.clone();
                control.add_function(&spec, name.as_deref(), move |r| match r {
                    Ok(id) => done.finish(Ok(added_card(&c, &id))),
                    Err(e) => done.finish(Err(pool_error(e))),
                });
            })
            .map_err(|e| PoolError::Appliance(Box::new(e)))?;
        Ok(())
    }

    fn remove_function(&self, function: &str, done: Completer) -> Result<(), PoolError> {
        let f = self.find(function)?;
        if let Some((pf, _)) = &f.entry.vf_of {
            return Err(PoolError::VirtualFunction {
                function: function.to_string(),
                physical: pf.to_string(),
            });
        }
        // Refuse at once what the loop would refuse (any function of the card busy).
        let dev = f.entry.bdf.device();
        for g in self.control.functions() {
            let same_card = g.entry.bdf.device() == dev && g.entry.vf_of.is_none()
                || g.entry
                    .vf_of
                    .as_ref()
                    .is_some_and(|(pf, _)| *pf == f.entry.id);
            if !same_card {
                continue;
            }
            match api_state(&g) {
                ApiState::Unassigned | ApiState::Failed { .. } => {}
                ApiState::Assigned { host } => {
                    return Err(PoolError::AlreadyAssigned {
                        function: g.entry.id.to_string(),
                        host,
                    })
                }
                s => {
                    return Err(PoolError::InTransition {
                        function: g.entry.id.to_string(),
                        state: s.name(),
                    })
                }
            }
        }
        self.control
            .remove_function(function_id(&f), move |r| done.finish(r.map_err(pool_error)));
        Ok(())
    }

    fn set_vf_count(&self, function: &str, n: u16, done: Completer) -> Result<(), PoolError> {
        let f = self.find(function)?;
        // Refuse at once what the loop would refuse (so no Task is started for it).
        if f.entry.vf_of.is_some() || f.entry.total_vfs == 0 {
            return Err(PoolError::NotSriov {
                function: function.to_string(),
            });
        }
        if n > f.entry.total_vfs {
            return Err(PoolError::TooManyVfs {
                function: function.to_string(),
                requested: n,
                total: f.entry.total_vfs,
            });
        }
        self.control.set_vf_count(function_id(&f), n, move |r| {
            done.finish(r.map_err(pool_error))
        });
        Ok(())
    }

    fn subscribe(&self, sink: EventSink) {
        let events = self.control.subscribe();
        let spawned = std::thread::Builder::new()
            .name("api-events".into())
            .spawn(move || {
                // Ends when the serving loop drops its subscribers (the appliance stopped).
                for e in events {
                    let api = match e {
                        PoolEvent::FunctionAdded(f) => ApiEvent::FunctionAdded {
                            function: f.to_string(),
                        },
                        PoolEvent::FunctionRemoved(f) => ApiEvent::FunctionRemoved {
                            function: f.to_string(),
                        },
                        PoolEvent::HostConnected { host, .. } => ApiEvent::HostConnected {
                            host: host.to_string(),
                        },
                        PoolEvent::HostLost(host) => ApiEvent::HostLost {
                            host: host.to_string(),
                        },
                        PoolEvent::FunctionFailed(f) => ApiEvent::FunctionStateChanged {
                            function: f.to_string(),
                            state: ApiState::Failed {
                                reason: "the function failed (reset or backing store)".into(),
                            },
                        },
                        PoolEvent::FunctionRecovered(f) => ApiEvent::FunctionRecovered {
                            function: f.to_string(),
                        },
                        PoolEvent::AssignmentChanged { function, host } => {
                            ApiEvent::FunctionStateChanged {
                                function: function.to_string(),
                                state: match host {
                                    Some(h) => ApiState::Assigned {
                                        host: h.to_string(),
                                    },
                                    None => ApiState::Unassigned,
                                },
                            }
                        }
                        PoolEvent::Throttling {
                            function,
                            limit,
                            cap,
                            throttled,
                        } => ApiEvent::PolicyThrottling {
                            function: function.to_string(),
                            property: match limit {
                                Limit::Up => "MaxBytesPerSecondUp",
                                Limit::Down => "MaxBytesPerSecondDown",
                                Limit::Iops => "MaxIOPS",
                            },
                            cap,
                            throttled,
                        },
                        PoolEvent::VmConsumer {
                            function,
                            host,
                            vm,
                            event,
                        } => ApiEvent::VmConsumer {
                            function: function.to_string(),
                            host: host.to_string(),
                            vm: vm.to_string(),
                            state: vm_state(Some(event)),
                        },
                    };
                    sink.emit(api);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("management API: cannot start the event thread: {e}");
        }
    }

    fn policy(&self, function: &str) -> Result<PolicySettings, PoolError> {
        let p = self.find(function)?.policy;
        Ok(PolicySettings {
            max_bytes_per_sec_up: p.max_bytes_per_sec_up,
            max_bytes_per_sec_down: p.max_bytes_per_sec_down,
            max_iops: p.max_iops,
            priority: p.priority,
        })
    }

    fn set_policy(&self, function: &str, policy: PolicySettings) -> Result<(), PoolError> {
        let f = self.find(function)?;
        let p = pcietun::appliance::Policy {
            max_bytes_per_sec_up: policy.max_bytes_per_sec_up,
            max_bytes_per_sec_down: policy.max_bytes_per_sec_down,
            max_iops: policy.max_iops,
            priority: policy.priority,
        };
        self.control
            .set_policy_wait(f.entry.id, p, std::time::Duration::from_secs(10))
            .map_err(pool_error)
    }

    fn metrics(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            functions: self
                .control
                .functions()
                .iter()
                .map(function_metrics)
                .collect(),
            hosts: self.control.hosts().iter().map(host_metrics).collect(),
        }
    }
}

/// The pool as an `Arc<dyn Pool>` for `mgmt::Server::start`; cards added over the API may use
/// paths under `device_dirs` only.
pub fn shared(control: Control, id: &str, device_dirs: &[PathBuf]) -> Arc<dyn Pool> {
    Arc::new(AppliancePool::new(control, id).with_device_dirs(device_dirs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: Result<DeviceSpec, PoolError>) -> String {
        match r {
            Err(e @ (PoolError::NotAllowed { .. } | PoolError::BadDevice { .. })) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn card_ids_name_their_device_number() {
        assert_eq!(card_device(&card_id(0x1f)), Some(0x1f));
        assert_eq!(card_device("card-03"), Some(3));
        for bad in [
            "card-20", "card-3", "card-003", "card-0g", "card-+3", "card-0A", "03", "",
        ] {
            assert_eq!(card_device(bad), None, "{bad}");
        }
    }

    #[test]
    fn specs_over_the_api_are_confined() {
        let d = tempfile::tempdir().unwrap();
        let allowed = d.path().join("disks");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(allowed.join("a.img"), b"").unwrap();
        std::fs::write(d.path().join("secret"), b"").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), allowed.join("link")).unwrap();
        let dirs = vec![allowed.clone()];
        let real = std::fs::canonicalize(&allowed).unwrap();

        // No paths: always fine; with no device_dirs, path-bearing kinds are refused.
        assert!(matches!(
            api_spec("dma,buffer=64K", &[]),
            Ok(DeviceSpec::Dma { .. })
        ));
        let a = format!("nvme={}", allowed.join("a.img").display());
        assert!(refused(api_spec(&a, &[])).contains("device_dirs"));
        // Inside: resolved; a new file with size= is allowed when its directory is inside.
        match api_spec(&a, &dirs).unwrap() {
            DeviceSpec::Nvme { path, .. } => assert_eq!(path, real.join("a.img")),
            other => panic!("{other:?}"),
        }
        let new = format!("nvme={},size=1M", allowed.join("new.img").display());
        assert!(
            matches!(api_spec(&new, &dirs), Ok(DeviceSpec::Nvme { path, .. }) if path == real.join("new.img"))
        );
        // Missing without size=, relative, .., symlink out, elsewhere: refused.
        let missing = format!("nvme={}", allowed.join("nope.img").display());
        assert!(refused(api_spec(&missing, &dirs)).contains("nope.img"));
        assert!(refused(api_spec("nvme=disks/a.img", &dirs)).contains("absolute"));
        let up = format!("nvme={}/../secret", allowed.display());
        assert!(refused(api_spec(&up, &dirs)).contains("outside"));
        let link = format!("nvme={}", allowed.join("link").display());
        assert!(refused(api_spec(&link, &dirs)).contains("outside"));
        assert!(refused(api_spec("replay=/etc/passwd", &dirs)).contains("outside"));
        let sock = format!("vfio-user={}/../x.sock", allowed.display());
        assert!(refused(api_spec(&sock, &dirs)).contains("vfio-user"));
        // Not the grammar.
        assert!(refused(api_spec("floppy", &dirs)).contains("floppy"));
        assert!(refused(api_spec("dma,start=/bin/sh", &dirs)).contains("start"));
    }
}
