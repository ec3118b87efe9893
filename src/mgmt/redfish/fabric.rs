//! The PCIe fabric (Fabric.v1_4_0): Endpoints (Endpoint.v1_8_2), Zones (Zone.v1_6_3) and
//! Connections (Connection.v1_4_0), and the assignment operations on them.
//!
//! * One Initiator endpoint per host (`host-{H}`, linked to `Systems/{H}`) and one Target
//!   endpoint per function (`fn-{F}`, linked to its PCIeFunction).
//! * One ZoneOfEndpoints per host (`Zones/{H}`): its initiator plus the targets the host has or
//!   is getting. Membership *is* the assignment: `#Zone.AddEndpoint` assigns, `#Zone.RemoveEndpoint`
//!   unassigns, and a PATCH of `Links/Endpoints` does both at once.
//! * One Connection per assignment (`Connections/{F}`), in state attaching, attached or
//!   detaching (`Oem.Pcietun.State`); DELETE unassigns.
//!
//! Every change answers `202 Accepted` with a Task ([`super::tasks`]) that finishes when the
//! pool says the host has the function (or has let it go). `If-Match` (and the Zone schema's
//! `ZoneETag`/`EndpointETag` parameters) are checked against the current ETags while holding
//! the service's change lock, so two operators cannot overwrite each other unknowingly.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{Method, Request};
use bytes::Bytes;
use serde_json::{json, Value};

use super::body;
use super::error::{ApiError, ApiResult};
use super::inventory::functions_of_host;
use super::tasks::timestamp;
use super::uri::{
    collection, connection_uri, function_status_state, function_uri, initiator_uri, link,
    system_uri, target_uri, zone_uri, ADD_SCHEDULE, FABRIC_URI, REMOVE_SCHEDULE,
};
use super::{check_if_match, etag_of, Caller, Reply, Service, Snapshot, FABRIC};
use crate::mgmt::auth::Privilege;
use crate::mgmt::pool::{
    Completer, FunctionInfo, FunctionKind, FunctionState, PolicySettings, PoolError,
};
use crate::mgmt::rules::Lease;
use crate::mgmt::store::{AssignmentRecord, Change, LeaseRecord, Table};
use crate::sync::MutexExt;

const ADD: &str = "Zone.AddEndpoint";

/// How long a request waits for commits already queued before it answers.
pub(crate) const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const REMOVE: &str = "Zone.RemoveEndpoint";

/// An endpoint named by id or URI.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EndpointRef {
    Initiator(String),
    Target(String),
}

fn endpoint_ref(id: &str) -> Option<EndpointRef> {
    if let Some(h) = id.strip_prefix("host-") {
        Some(EndpointRef::Initiator(h.to_string()))
    } else {
        id.strip_prefix("fn-")
            .map(|f| EndpointRef::Target(f.to_string()))
    }
}

fn endpoint_ref_uri(uri: &str) -> Option<EndpointRef> {
    let uri = uri.strip_suffix('/').unwrap_or(uri);
    let id = uri.strip_prefix(FABRIC_URI)?.strip_prefix("/Endpoints/")?;
    if id.contains('/') {
        return None;
    }
    endpoint_ref(id)
}

pub(crate) fn check_fabric(f: &str) -> ApiResult<()> {
    if f == FABRIC {
        Ok(())
    } else {
        Err(ApiError::not_found(
            "Fabric",
            f,
            format!("unknown fabric {f:?} (the fabric is {FABRIC:?})"),
        ))
    }
}

pub(crate) fn fabrics() -> Value {
    collection(
        "/redfish/v1/Fabrics",
        "FabricCollection",
        "Fabrics",
        vec![FABRIC_URI.into()],
    )
}

/// The Fabric resource; `oem` is its `Oem.Pcietun` (the rules, `super::rules`).
pub(crate) fn fabric(f: &str, oem: Value) -> ApiResult<Value> {
    check_fabric(f)?;
    Ok(json!({
        "@odata.id": FABRIC_URI,
        "@odata.type": "#Fabric.v1_4_0.Fabric",
        "Id": FABRIC,
        "Name": "PCIe over Ethernet fabric",
        "FabricType": "PCIe",
        "Status": { "State": "Enabled", "Health": "OK" },
        "Endpoints": link(&format!("{FABRIC_URI}/Endpoints")),
        "Zones": link(&format!("{FABRIC_URI}/Zones")),
        "Connections": link(&format!("{FABRIC_URI}/Connections")),
        "Actions": { "Oem": {
            format!("#{ADD_SCHEDULE}"): {
                "target": format!("{FABRIC_URI}/Actions/Oem/{ADD_SCHEDULE}"),
            },
            format!("#{REMOVE_SCHEDULE}"): {
                "target": format!("{FABRIC_URI}/Actions/Oem/{REMOVE_SCHEDULE}"),
            },
        }},
        "Oem": { "Pcietun": oem },
    }))
}

pub(crate) fn endpoints(s: &Snapshot, f: &str) -> ApiResult<Value> {
    check_fabric(f)?;
    let mut members: Vec<String> = s.hosts.iter().map(|h| initiator_uri(&h.id)).collect();
    members.extend(s.functions.iter().map(|f| target_uri(&f.id)));
    Ok(collection(
        &format!("{FABRIC_URI}/Endpoints"),
        "EndpointCollection",
        "Endpoints",
        members,
    ))
}

/// The Redfish `EntityType` closest to a function's class, if there is one.
fn entity_type(class_code: u32) -> Option<&'static str> {
    match class_code >> 16 {
        0x01 => Some("Drive"),
        0x02 => Some("NetworkController"),
        0x03 => Some("DisplayController"),
        0x06 => Some("Bridge"),
        0x0b | 0x40 => Some("Processor"),
        0x12 => Some("AccelerationFunction"),
        _ => None,
    }
}

/// Whether the connection of a function exists (attaching, attached or detaching).
fn has_connection(f: &FunctionInfo) -> bool {
    f.state.host().is_some()
}

/// The zone a function is a member of (attaching or assigned; a detaching one has left).
fn zone_of(f: &FunctionInfo) -> Option<&str> {
    match &f.state {
        FunctionState::Attaching { host } | FunctionState::Assigned { host } => Some(host),
        _ => None,
    }
}

pub(crate) fn endpoint(s: &Snapshot, f: &str, id: &str) -> ApiResult<Value> {
    check_fabric(f)?;
    let uri = format!("{FABRIC_URI}/Endpoints/{id}");
    let not_found = || ApiError::not_found("Endpoint", id, format!("unknown endpoint {id:?}"));
    match endpoint_ref(id).ok_or_else(not_found)? {
        EndpointRef::Initiator(h) => {
            let host = s.host(&h).ok_or_else(not_found)?;
            let connections: Vec<Value> = s
                .functions
                .iter()
                .filter(|f| f.state.host() == Some(&h))
                .map(|f| link(&connection_uri(&f.id)))
                .collect();
            Ok(json!({
                "@odata.id": uri,
                "@odata.type": "#Endpoint.v1_8_2.Endpoint",
                "Id": id,
                "Name": format!("Host {} initiator", host.id),
                "EndpointProtocol": "PCIe",
                "ConnectedEntities": [{
                    "EntityRole": "Initiator",
                    "EntityType": "RootComplex",
                    "EntityLink": link(&system_uri(&h)),
                }],
                "Status": {
                    "State": if host.session == crate::mgmt::pool::HostSession::Connected { "Enabled" } else { "StandbyOffline" },
                    "Health": "OK",
                },
                "Links": { "Zones": [link(&zone_uri(&h))], "Connections": connections },
            }))
        }
        EndpointRef::Target(fid) => {
            let func = s.function(&fid).ok_or_else(not_found)?;
            let mut entity = json!({
                "EntityRole": "Target",
                "EntityLink": link(&function_uri(s, func)),
            });
            if let Some(t) = entity_type(func.class_code) {
                entity["EntityType"] = json!(t);
            }
            let zones: Vec<Value> = zone_of(func)
                .map(|h| link(&zone_uri(h)))
                .into_iter()
                .collect();
            let connections: Vec<Value> = has_connection(func)
                .then(|| link(&connection_uri(&func.id)))
                .into_iter()
                .collect();
            Ok(json!({
                "@odata.id": uri,
                "@odata.type": "#Endpoint.v1_8_2.Endpoint",
                "Id": id,
                "Name": format!("{} {} target", func.model, func.id),
                "EndpointProtocol": "PCIe",
                "ConnectedEntities": [entity],
                "Status": {
                    "State": function_status_state(&func.state),
                    "Health": func.health.as_redfish(),
                },
                "Links": { "Zones": zones, "Connections": connections },
            }))
        }
    }
}

pub(crate) fn zones(s: &Snapshot, f: &str) -> ApiResult<Value> {
    check_fabric(f)?;
    Ok(collection(
        &format!("{FABRIC_URI}/Zones"),
        "ZoneCollection",
        "Zones",
        s.hosts.iter().map(|h| zone_uri(&h.id)).collect(),
    ))
}

pub(crate) fn zone(s: &Snapshot, f: &str, h: &str) -> ApiResult<Value> {
    check_fabric(f)?;
    s.host(h).ok_or_else(|| {
        ApiError::not_found("Zone", h, format!("unknown host {h:?} (no zone {h:?})"))
    })?;
    let uri = zone_uri(h);
    let mut members = vec![link(&initiator_uri(h))];
    members.extend(functions_of_host(s, h).map(|f| link(&target_uri(&f.id))));
    Ok(json!({
        "@odata.id": uri,
        "@odata.type": "#Zone.v1_6_3.Zone",
        "Id": h,
        "Name": format!("Functions of host {h}"),
        "ZoneType": "ZoneOfEndpoints",
        "Status": { "State": "Enabled", "Health": "OK" },
        "Links": { "Endpoints": members },
        "Actions": {
            "#Zone.AddEndpoint": { "target": format!("{uri}/Actions/{ADD}") },
            "#Zone.RemoveEndpoint": { "target": format!("{uri}/Actions/{REMOVE}") },
        },
    }))
}

pub(crate) fn connections(s: &Snapshot, f: &str) -> ApiResult<Value> {
    check_fabric(f)?;
    Ok(collection(
        &format!("{FABRIC_URI}/Connections"),
        "ConnectionCollection",
        "Connections",
        s.functions
            .iter()
            .filter(|f| has_connection(f))
            .map(|f| connection_uri(&f.id))
            .collect(),
    ))
}

/// `Oem.Pcietun.Policy` of a Connection: each cap, `null` when there is none, and the
/// priority in force.
fn policy_json(p: &PolicySettings) -> Value {
    json!({
        "MaxBytesPerSecondUp": p.max_bytes_per_sec_up,
        "MaxBytesPerSecondDown": p.max_bytes_per_sec_down,
        "MaxIOPS": p.max_iops,
        "Priority": p.priority(),
    })
}

pub(crate) fn connection(
    s: &Snapshot,
    f: &str,
    id: &str,
    policy: &PolicySettings,
    lease: Option<&Lease>,
) -> ApiResult<Value> {
    check_fabric(f)?;
    let func = s
        .function(id)
        .ok_or_else(|| ApiError::not_found("Connection", id, format!("unknown function {id:?}")))?;
    let (host, state, status) = match &func.state {
        FunctionState::Attaching { host } => (host, "attaching", "Starting"),
        FunctionState::Assigned { host } => (host, "attached", "Enabled"),
        FunctionState::Detaching { host } => (host, "detaching", "Quiesced"),
        _ => {
            return Err(ApiError::not_found(
                "Connection",
                id,
                format!("function {id:?} is not assigned"),
            ))
        }
    };
    Ok(json!({
        "@odata.id": connection_uri(id),
        "@odata.type": "#Connection.v1_4_0.Connection",
        "Id": id,
        "Name": format!("{id} assigned to {host}"),
        "Status": { "State": status, "Health": func.health.as_redfish() },
        "Links": {
            "InitiatorEndpoints": [link(&initiator_uri(host))],
            "TargetEndpoints": [link(&target_uri(id))],
        },
        "Oem": { "Pcietun": oem_connection(id, host, state, func, policy, lease) },
    }))
}

/// `Oem.Pcietun` of a Connection; `Vm` once the assignment names a VM or its host reported
/// one (docs/vms.md "Events").
fn oem_connection(
    id: &str,
    host: &str,
    state: &str,
    func: &FunctionInfo,
    policy: &PolicySettings,
    lease: Option<&Lease>,
) -> Value {
    let mut oem = json!({
        "@odata.type": "#Pcietun.v1_0_0.Connection",
        "State": state,
        "Function": id,
        "Host": host,
        "Policy": policy_json(policy),
    });
    if let Some(l) = lease.filter(|l| l.host == host) {
        oem["Lease"] = lease_json(l);
    }
    if let Some(vm) = &func.vm {
        oem["Vm"] = json!({
            "Name": vm.name,
            "State": vm.state.as_redfish(),
            "Message": vm.state.message(),
            "Since": super::tasks::timestamp(vm.since),
        });
    }
    oem
}

/// The API error for a pool refusal.
pub(crate) fn pool_error(e: PoolError) -> ApiError {
    let msg = e.to_string();
    match e {
        PoolError::UnknownFunction { function } => {
            ApiError::referenced_not_found("PCIeFunction", &function, msg)
        }
        PoolError::UnknownHost { host } => ApiError::not_found("ComputerSystem", &host, msg),
        PoolError::AlreadyAssigned { .. }
        | PoolError::PooledVfs { .. }
        | PoolError::NotAssigned { .. }
        | PoolError::InTransition { .. }
        | PoolError::FunctionFailed { .. } => ApiError::in_use(msg),
        PoolError::Abandoned | PoolError::Appliance(_) => ApiError::internal(msg),
        // Refusals of adding and removing cards (inventory.rs).
        other => super::inventory::card_error(other),
    }
}

/// One change of an assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Assign {
        function: String,
        host: String,
        /// The VM on the host that is to take it.
        vm: Option<String>,
        /// The assignment's lease, if it has one.
        lease: Option<Lease>,
    },
    Unassign {
        function: String,
    },
}

/// The store changes that record `op` once the pool has done it: the new owner (or none) of
/// the function and of the functions that move with it (the other physical functions of its
/// card; a virtual function moves alone), as the appliance's pool moves them.
pub(crate) fn assignment_changes(s: &Snapshot, op: &Op) -> Vec<Change> {
    let (function, host, vm, lease) = match op {
        Op::Assign {
            function,
            host,
            vm,
            lease,
        } => (
            function,
            Some(host.clone()),
            vm.clone(),
            lease.as_ref().map(lease_record),
        ),
        Op::Unassign { function } => (function, None, None, None),
    };
    let mut unit: Vec<&str> = vec![function.as_str()];
    if let Some(f) = s.function(function) {
        if f.kind == FunctionKind::Physical {
            unit.extend(
                s.functions
                    .iter()
                    .filter(|o| {
                        o.id != f.id && o.device == f.device && o.kind == FunctionKind::Physical
                    })
                    .map(|o| o.id.as_str()),
            );
        }
    }
    let value = serde_json::to_vec(&AssignmentRecord { host, vm, lease }).unwrap_or_default();
    unit.into_iter()
        .map(|f| Change::Put {
            table: Table::Assignments,
            key: f.to_string(),
            value: value.clone(),
        })
        .collect()
}

impl Service {
    /// The completer of one operation of task `id`: when the pool reports success, `changes`
    /// are committed to the store on the saver thread and only then is the operation
    /// reported done, so a Completed task is an acknowledged change that survives a crash.
    /// A failed commit fails the operation with a reason (the pool has made the change; it is
    /// not durable).
    pub(crate) fn saving_completer(&self, id: u64, changes: Vec<Change>) -> Completer {
        let tasks = self.tasks.clone();
        let durable = self.durable.clone();
        Completer::new(move |outcome| match outcome {
            Err(e) => tasks.finish_one(id, Err(e.to_string())),
            Ok(()) => {
                let d = durable.clone();
                durable.later(move || {
                    let r = d.commit(changes).map(|_| ()).map_err(|e| {
                        tracing::error!("management store: a change was not saved: {e}");
                        format!(
                            "the appliance made the change but could not store it, so it will \
                             not survive a restart: {e}"
                        )
                    });
                    tasks.finish_one(id, r);
                });
            }
        })
    }

    /// Start `ops` under one task; 202 with the task, or the first refusal if the very first
    /// operation is refused (then nothing started).
    fn start(
        &self,
        s: &Snapshot,
        name: String,
        method: &Method,
        uri: &str,
        ops: Vec<Op>,
    ) -> ApiResult<Reply> {
        // A function its schedules manage is not changed by hand (docs/api.md "Schedules").
        for op in &ops {
            let (Op::Assign { function, .. } | Op::Unassign { function }) = op;
            self.check_unscheduled(function)?;
        }
        self.start_ops(s, name, method, uri, ops, false)
    }

    /// [`Service::start`]; `by_rule`: the operations are a rule's (docs/api.md "Rules"), so
    /// the rules engine is told when each starts and ends and does not offer it twice.
    pub(crate) fn start_ops(
        &self,
        s: &Snapshot,
        name: String,
        method: &Method,
        uri: &str,
        ops: Vec<Op>,
        by_rule: bool,
    ) -> ApiResult<Reply> {
        let id = self.tasks.create(name, method.as_str(), uri, ops.len());
        for (i, op) in ops.iter().enumerate() {
            let mut done = self.saving_completer(id, assignment_changes(s, op));
            if by_rule {
                let function = match op {
                    Op::Assign { function, .. } | Op::Unassign { function } => function.clone(),
                };
                let rules = self.rules.clone();
                rules.lock_or_recover().started(&function);
                let inner = done;
                // Also runs when the pool refuses (the completer is dropped unfinished).
                done = Completer::new(move |outcome| {
                    rules.lock_or_recover().finished(&function);
                    inner.finish(outcome);
                });
            }
            let r = match op {
                Op::Assign {
                    function, host, vm, ..
                } => self.pool.assign_to_vm(function, host, vm.as_deref(), done),
                Op::Unassign { function, .. } => self.pool.unassign(function, done),
            };
            if r.is_ok() {
                // An accepted change replaces the function's lease (an assignment without
                // one, or an unassignment, ends it).
                let (function, lease) = match op {
                    Op::Assign {
                        function, lease, ..
                    } => (function, lease.clone()),
                    Op::Unassign { function } => (function, None),
                };
                self.rules.lock_or_recover().set_lease(function, lease);
            }
            if let Err(e) = r {
                if i == 0 {
                    self.tasks.discard(id);
                    return Err(pool_error(e));
                }
                // Later operations: the earlier ones are under way, so the task reports this
                // refusal instead of the request failing with half of it applied silently.
                self.tasks.refuse_one(id, &e);
            }
        }
        // A pool that finished at once has queued the commits: answer with the Task as they
        // leave it (Completed only once stored).
        self.durable.flush(FLUSH_WAIT);
        Reply::accepted_task(&self.tasks, id)
    }

    pub(crate) fn zone_action(
        &self,
        caller: &Caller,
        req: &Request<Bytes>,
        f: &str,
        h: &str,
        action: &str,
    ) -> ApiResult<Reply> {
        caller.require(Privilege::ConfigureComponents)?;
        check_fabric(f)?;
        let action: &'static str = match action {
            ADD => ADD,
            REMOVE => REMOVE,
            other => return Err(ApiError::action_not_supported(other)),
        };
        let params = body::endpoint_action(req.body(), action)?;
        let _change = self.change.lock_or_recover();
        let s = self.snapshot();
        let zone = zone(&s, f, h)?;
        let current = etag_of(&zone);
        check_if_match(req.headers(), &zone_uri(h), &current)?;
        if let Some(t) = &params.zone_etag {
            if !super::if_match_accepts(t, &current) {
                return Err(ApiError::etag_parameter_mismatch(
                    "ZoneETag",
                    &zone_uri(h),
                    &current,
                ));
            }
        }
        let function = match endpoint_ref_uri(&params.endpoint) {
            Some(EndpointRef::Target(fid)) if s.function(&fid).is_some() => fid,
            Some(EndpointRef::Initiator(other)) => {
                return Err(ApiError::action_parameter_conflict(
                    "Endpoint",
                    &params.endpoint,
                    format!(
                        "{} is the initiator of host {other:?}; zones hold one initiator, their host's",
                        params.endpoint
                    ),
                ))
            }
            Some(EndpointRef::Target(fid)) => {
                return Err(ApiError::referenced_not_found(
                    "PCIeFunction",
                    &fid,
                    format!("unknown function {fid:?}"),
                ))
            }
            None => {
                return Err(ApiError::action_parameter_format(
                    action,
                    "Endpoint",
                    &params.endpoint,
                    &format!("not an endpoint URI ({FABRIC_URI}/Endpoints/fn-FUNCTION)"),
                ))
            }
        };
        if let Some(t) = &params.endpoint_etag {
            let ep = endpoint(&s, f, &format!("fn-{function}"))?;
            let cur = etag_of(&ep);
            if !super::if_match_accepts(t, &cur) {
                return Err(ApiError::etag_parameter_mismatch(
                    "EndpointETag",
                    &params.endpoint,
                    &cur,
                ));
            }
        }
        let uri = req.uri().path();
        if action == ADD {
            self.start(
                &s,
                format!("Assign {function} to {h}"),
                req.method(),
                uri,
                vec![Op::Assign {
                    lease: params.lease.map(|d| Lease {
                        host: h.to_string(),
                        duration: d,
                        until: self.clock.wall() + d,
                    }),
                    function,
                    host: h.into(),
                    vm: params.vm,
                }],
            )
        } else {
            let func = s.function(&function).expect("checked above");
            if func.state.host() != Some(h) {
                return Err(ApiError::in_use(match func.state.host() {
                    Some(other) => {
                        format!("function {function:?} is assigned to host {other:?}, not {h:?}")
                    }
                    None => format!("function {function:?} is not assigned"),
                }));
            }
            self.start(
                &s,
                format!("Unassign {function} from {h}"),
                req.method(),
                uri,
                vec![Op::Unassign { function }],
            )
        }
    }

    pub(crate) fn patch_zone(
        &self,
        caller: &Caller,
        req: &Request<Bytes>,
        f: &str,
        h: &str,
    ) -> ApiResult<Reply> {
        caller.require(Privilege::ConfigureComponents)?;
        check_fabric(f)?;
        let patch = body::zone_patch(req.body())?;
        let _change = self.change.lock_or_recover();
        let s = self.snapshot();
        let current_zone = zone(&s, f, h)?;
        check_if_match(req.headers(), &zone_uri(h), &etag_of(&current_zone))?;
        let mut wanted = BTreeSet::new();
        for (i, uri) in patch.endpoints.iter().enumerate() {
            let pointer = format!("/Links/Endpoints/{i}");
            match endpoint_ref_uri(uri) {
                Some(EndpointRef::Initiator(other)) if other == h => {}
                Some(EndpointRef::Initiator(_)) => {
                    return Err(ApiError::property_incorrect(
                        &pointer,
                        uri,
                        format!(
                            "{uri} is another host's initiator; zone {h:?} holds only host {h:?}'s"
                        ),
                    ))
                }
                Some(EndpointRef::Target(fid)) if s.function(&fid).is_some() => {
                    wanted.insert(fid);
                }
                Some(EndpointRef::Target(fid)) => {
                    return Err(ApiError::referenced_not_found(
                        "PCIeFunction",
                        &fid,
                        format!("{pointer}: unknown function {fid:?}"),
                    ))
                }
                None => {
                    return Err(ApiError::property_format(
                        &pointer,
                        uri,
                        &format!("not an endpoint URI ({FABRIC_URI}/Endpoints/fn-FUNCTION)"),
                    ))
                }
            }
        }
        let have: BTreeSet<String> = functions_of_host(&s, h).map(|f| f.id.clone()).collect();
        let mut ops = Vec::new();
        // Check every change before starting any, so a refusal leaves everything as it was.
        for fid in have.difference(&wanted) {
            let func = s.function(fid).expect("member of the snapshot");
            if !matches!(func.state, FunctionState::Assigned { .. }) {
                return Err(ApiError::in_use(format!(
                    "function {fid:?} is {} and cannot be removed now",
                    func.state.name()
                )));
            }
            ops.push(Op::Unassign {
                function: fid.clone(),
            });
        }
        for fid in wanted.difference(&have) {
            let func = s.function(fid).expect("member of the snapshot");
            match &func.state {
                FunctionState::Unassigned => {}
                FunctionState::Failed { reason } => {
                    return Err(ApiError::in_use(format!(
                        "function {fid:?} failed: {reason}"
                    )))
                }
                other => {
                    return Err(ApiError::in_use(match other.host() {
                        Some(owner) => {
                            format!("function {fid:?} is already assigned to host {owner:?}")
                        }
                        None => format!("function {fid:?} is {}", other.name()),
                    }))
                }
            }
            ops.push(Op::Assign {
                function: fid.clone(),
                host: h.into(),
                vm: None,
                lease: None,
            });
        }
        if ops.is_empty() {
            return Ok(Reply::ok(current_zone));
        }
        let name = ops
            .iter()
            .map(|op| match op {
                Op::Assign { function, .. } => format!("+{function}"),
                Op::Unassign { function, .. } => format!("-{function}"),
            })
            .collect::<Vec<_>>()
            .join(" ");
        self.start(
            &s,
            format!("Zone {h}: {name}"),
            req.method(),
            req.uri().path(),
            ops,
        )
    }

    /// The Connection of `id` as GET shows it.
    pub(crate) fn get_connection(&self, f: &str, id: &str) -> ApiResult<Value> {
        let policy = self.pool.policy(id).unwrap_or_default();
        let lease = self.rules.lock_or_recover().lease(id).cloned();
        connection(&self.snapshot(), f, id, &policy, lease.as_ref())
    }

    /// PATCH of a Connection: its policy (`Oem.Pcietun.Policy`). Stored first (so what is
    /// acknowledged survives a restart), then applied by the pool at once; answers 200 with
    /// the Connection as it is now. Operator (ConfigureComponents) and `If-Match` as for
    /// assignments.
    pub(crate) fn patch_connection(
        &self,
        caller: &Caller,
        req: &Request<Bytes>,
        f: &str,
        id: &str,
    ) -> ApiResult<Reply> {
        caller.require(Privilege::ConfigureComponents)?;
        check_fabric(f)?;
        let patch = body::connection_patch(req.body())?;
        let _change = self.change.lock_or_recover();
        let s = self.snapshot();
        let old = self.pool.policy(id).map_err(pool_error)?;
        let lease = self.rules.lock_or_recover().lease(id).cloned();
        let conn = connection(&s, f, id, &old, lease.as_ref())?;
        check_if_match(req.headers(), &connection_uri(id), &etag_of(&conn))?;
        let pick = |p: Option<Option<u64>>, was: Option<u64>| p.unwrap_or(was);
        let new = PolicySettings {
            max_bytes_per_sec_up: pick(patch.up, old.max_bytes_per_sec_up),
            max_bytes_per_sec_down: pick(patch.down, old.max_bytes_per_sec_down),
            max_iops: pick(patch.iops, old.max_iops),
            priority: patch.priority.unwrap_or(old.priority),
        };
        let record = |p: &PolicySettings| -> Change {
            if p.is_unlimited() {
                Change::Delete {
                    table: Table::Policies,
                    key: id.to_string(),
                }
            } else {
                Change::Put {
                    table: Table::Policies,
                    key: id.to_string(),
                    value: serde_json::to_vec(p).unwrap_or_default(),
                }
            }
        };
        self.durable.commit(vec![record(&new)]).map_err(|e| {
            tracing::error!("management store: a policy was not saved: {e}");
            ApiError::internal(format!("the policy could not be stored: {e}"))
        })?;
        if let Err(e) = self.pool.set_policy(id, new) {
            // Nothing changed in the pool: the store goes back to what it had.
            if let Err(e2) = self.durable.commit(vec![record(&old)]) {
                tracing::error!("management store: a refused policy stays stored: {e2}");
            }
            return Err(pool_error(e));
        }
        tracing::info!(function = id, policy = ?new, "management API: policy set");
        let now = connection(&self.snapshot(), f, id, &new, lease.as_ref())?;
        Ok(Reply::ok(now))
    }

    pub(crate) fn delete_connection(
        &self,
        caller: &Caller,
        req: &Request<Bytes>,
        f: &str,
        id: &str,
    ) -> ApiResult<Reply> {
        caller.require(Privilege::ConfigureComponents)?;
        body::no_parameters(req.body(), "DELETE")?;
        let _change = self.change.lock_or_recover();
        let s = self.snapshot();
        let lease = self.rules.lock_or_recover().lease(id).cloned();
        let conn = connection(
            &s,
            f,
            id,
            &self.pool.policy(id).unwrap_or_default(),
            lease.as_ref(),
        )?;
        check_if_match(req.headers(), &connection_uri(id), &etag_of(&conn))?;
        let host = s
            .function(id)
            .and_then(|f| f.state.host())
            .unwrap_or_default()
            .to_string();
        self.start(
            &s,
            format!("Unassign {id} from {host}"),
            req.method(),
            req.uri().path(),
            vec![Op::Unassign {
                function: id.into(),
            }],
        )
    }
}

/// `Oem.Pcietun.Lease` of a Connection (and an entry of the Fabric's `Leases`, with the
/// function and host added).
pub(crate) fn lease_json(l: &Lease) -> Value {
    json!({
        "Seconds": l.duration.as_secs(),
        "ExpiresAt": timestamp(l.until),
    })
}

/// A lease as the store keeps it with its assignment.
pub(crate) fn lease_record(l: &Lease) -> LeaseRecord {
    LeaseRecord {
        seconds: l.duration.as_secs(),
        until_unix: unix_secs(l.until),
    }
}

/// Seconds since the Unix epoch of `t` (0 before it).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_uris() {
        assert_eq!(
            endpoint_ref_uri("/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0"),
            Some(EndpointRef::Target("nvme0".into()))
        );
        assert_eq!(
            endpoint_ref_uri("/redfish/v1/Fabrics/PCIe/Endpoints/host-a/"),
            Some(EndpointRef::Initiator("a".into()))
        );
        assert_eq!(
            endpoint_ref_uri("/redfish/v1/Fabrics/PCIe/Endpoints/x"),
            None
        );
        assert_eq!(
            endpoint_ref_uri("/redfish/v1/Fabrics/X/Endpoints/fn-a"),
            None
        );
        assert_eq!(
            endpoint_ref_uri("/redfish/v1/Fabrics/PCIe/Endpoints/fn-a/b"),
            None
        );
    }
}
