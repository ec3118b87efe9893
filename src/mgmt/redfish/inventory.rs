//! Inventory resources: the appliance as a Chassis, its cards as PCIeDevices
//! (PCIeDevice.v1_22_0), their functions as PCIeFunctions (PCIeFunction.v1_7_0), and the hosts
//! as ComputerSystems (ComputerSystem.v1_28_0).
//!
//! Where the standard has no property — the pool state and owner of a function, a host's
//! tunnel session and RTT — it is under `Oem.Pcietun` (described by the OEM CSDL).
//!
//! Cards come and go while the appliance serves, through two OEM actions (the DMTF schemas make
//! the PCIeDevice collection neither insertable nor deletable, so a POST or DELETE there would
//! not be Redfish): `#Pcietun.AddDevice` on the Chassis, with `Spec` (the appliance's
//! `--device` grammar) and an optional `Name`, and `#Pcietun.RemoveDevice` on an unassigned
//! card. Both need the Administrator role (ConfigureManager: a spec names files and sockets on
//! the appliance) and answer `202 Accepted` with a Task that completes once the inventory shows
//! the change; the Task of an add carries the new card under `Oem.Pcietun` (`Device`,
//! `Functions`).

use axum::http::Request;
use bytes::Bytes;
use serde_json::{json, Value};

use super::body;
use super::error::{ApiError, ApiResult};
use super::uri::{
    chassis_uri, collection, device_uri, function_status_state, function_uri, initiator_uri, link,
    system_uri, target_uri,
};
use super::{check_if_match, etag_of, Caller, Reply, Service, Snapshot};

/// The Chassis' OEM action that adds a card.
pub const ADD_DEVICE: &str = "Pcietun.AddDevice";
/// A card's OEM action that removes it.
pub const REMOVE_DEVICE: &str = "Pcietun.RemoveDevice";
/// An SR-IOV physical function's OEM action that changes its VF count.
pub const SET_VF_COUNT: &str = "Pcietun.SetVfCount";
use crate::mgmt::auth::Privilege;
use crate::mgmt::pool::{
    valid_id, AddCompleter, AddedCard, FunctionInfo, FunctionKind, FunctionState, HostInfo,
    HostSession, PoolError,
};
use crate::mgmt::store::{Change, DeviceRecord, Table};
use crate::sync::MutexExt;

/// `PCIeFunction.DeviceClass` from the base class code (PCI Code and ID Assignment §1).
pub fn device_class(class_code: u32) -> &'static str {
    match class_code >> 16 {
        0x00 => "UnclassifiedDevice",
        0x01 => "MassStorageController",
        0x02 => "NetworkController",
        0x03 => "DisplayController",
        0x04 => "MultimediaController",
        0x05 => "MemoryController",
        0x06 => "Bridge",
        0x07 => "CommunicationController",
        0x08 => "GenericSystemPeripheral",
        0x09 => "InputDeviceController",
        0x0a => "DockingStation",
        0x0b => "Processor",
        0x0c => "SerialBusController",
        0x0d => "WirelessController",
        0x0e => "IntelligentController",
        0x0f => "SatelliteCommunicationsController",
        0x10 => "EncryptionController",
        0x11 => "SignalProcessingController",
        0x12 => "ProcessingAccelerators",
        0x13 => "NonEssentialInstrumentation",
        0x40 => "Coprocessor",
        0xff => "UnassignedClass",
        _ => "Other",
    }
}

fn check_chassis(s: &Snapshot, c: &str) -> ApiResult<()> {
    if c == s.appliance.id {
        Ok(())
    } else {
        Err(ApiError::not_found(
            "Chassis",
            c,
            format!("unknown chassis {c:?}"),
        ))
    }
}

fn check_device<'a>(s: &'a Snapshot, c: &str, d: &str) -> ApiResult<Vec<&'a FunctionInfo>> {
    check_chassis(s, c)?;
    let fns: Vec<_> = s.functions.iter().filter(|f| f.device == d).collect();
    if fns.is_empty() {
        Err(ApiError::not_found(
            "PCIeDevice",
            d,
            format!("unknown PCIe device {d:?}"),
        ))
    } else {
        Ok(fns)
    }
}

pub(crate) fn chassis_collection(s: &Snapshot) -> Value {
    collection(
        "/redfish/v1/Chassis",
        "ChassisCollection",
        "Chassis Collection",
        vec![chassis_uri(s)],
    )
}

pub(crate) fn chassis(s: &Snapshot, c: &str) -> ApiResult<Value> {
    check_chassis(s, c)?;
    let uri = chassis_uri(s);
    let mut v = json!({
        "@odata.id": uri,
        "@odata.type": "#Chassis.v1_28_0.Chassis",
        "Id": s.appliance.id,
        "Name": s.appliance.name,
        "ChassisType": "RackMount",
        "Manufacturer": "pcietun",
        "Model": "pcietun appliance",
        "Status": { "State": "Enabled", "Health": "OK" },
        "PCIeDevices": link(&format!("{uri}/PCIeDevices")),
        "Actions": { "Oem": { format!("#{ADD_DEVICE}"): {
            "target": format!("{uri}/Actions/Oem/{ADD_DEVICE}"),
        }}},
    });
    if let Some(serial) = &s.appliance.serial {
        v["SerialNumber"] = json!(serial);
    }
    Ok(v)
}

pub(crate) fn devices(s: &Snapshot, c: &str) -> ApiResult<Value> {
    check_chassis(s, c)?;
    Ok(collection(
        &format!("{}/PCIeDevices", chassis_uri(s)),
        "PCIeDeviceCollection",
        "PCIe Devices",
        s.devices().into_iter().map(|d| device_uri(s, d)).collect(),
    ))
}

fn worst_health<'a>(fns: impl Iterator<Item = &'a FunctionInfo>) -> &'static str {
    use crate::mgmt::pool::Health;
    let mut worst = Health::Ok;
    for f in fns {
        worst = match (worst, f.health) {
            (Health::Critical, _) | (_, Health::Critical) => Health::Critical,
            (Health::Warning, _) | (_, Health::Warning) => Health::Warning,
            _ => Health::Ok,
        };
    }
    worst.as_redfish()
}

pub(crate) fn device(s: &Snapshot, c: &str, d: &str) -> ApiResult<Value> {
    let fns = check_device(s, c, d)?;
    let uri = device_uri(s, d);
    let physical = fns
        .iter()
        .filter(|f| f.kind == FunctionKind::Physical)
        .count();
    let first = fns[0];
    let vfs = fns.len() - physical;
    Ok(json!({
        "@odata.id": uri,
        "@odata.type": "#PCIeDevice.v1_22_0.PCIeDevice",
        "Id": d,
        "Name": format!("{} {d}", first.model),
        "Model": first.model,
        "DeviceType": if physical > 1 { "MultiFunction" } else { "SingleFunction" },
        "Status": {
            "State": "Enabled",
            "Health": worst_health(fns.iter().copied()),
            "HealthRollup": worst_health(fns.iter().copied()),
        },
        "PCIeFunctions": link(&format!("{uri}/PCIeFunctions")),
        "Links": { "Chassis": [link(&chassis_uri(s))] },
        "Actions": { "Oem": { format!("#{REMOVE_DEVICE}"): {
            "target": format!("{uri}/Actions/Oem/{REMOVE_DEVICE}"),
        }}},
        "Oem": { "Pcietun": {
            "@odata.type": "#Pcietun.v1_0_0.PCIeDevice",
            "VirtualFunctions": vfs,
        }},
    }))
}

pub(crate) fn functions(s: &Snapshot, c: &str, d: &str) -> ApiResult<Value> {
    let fns = check_device(s, c, d)?;
    Ok(collection(
        &format!("{}/PCIeFunctions", device_uri(s, d)),
        "PCIeFunctionCollection",
        "PCIe Functions",
        fns.iter().map(|f| function_uri(s, f)).collect(),
    ))
}

/// The OEM block of a function: pool state and owner.
fn function_oem(f: &FunctionInfo) -> Value {
    let mut oem = json!({
        "@odata.type": "#Pcietun.v1_0_0.PCIeFunction",
        "State": f.state.name(),
        "Owner": f.state.host(),
        "Endpoint": link(&target_uri(&f.id)),
    });
    if let FunctionState::Failed { reason } = &f.state {
        oem["FailureReason"] = json!(reason);
    }
    if let FunctionKind::Virtual { physical } = &f.kind {
        oem["PhysicalFunction"] = json!(physical);
    }
    oem
}

/// How many VFs of the physical function `f` the inventory holds (its NumVFs).
fn num_vfs(s: &Snapshot, f: &FunctionInfo) -> usize {
    s.functions
        .iter()
        .filter(|v| matches!(&v.kind, FunctionKind::Virtual { physical } if *physical == f.id))
        .count()
}

pub(crate) fn function(s: &Snapshot, c: &str, d: &str, id: &str) -> ApiResult<Value> {
    check_device(s, c, d)?;
    let f = s.function(id).filter(|f| f.device == d).ok_or_else(|| {
        ApiError::not_found("PCIeFunction", id, format!("unknown function {id:?}"))
    })?;
    let mut oem = function_oem(f);
    let mut v = json!({
        "@odata.id": function_uri(s, f),
        "@odata.type": "#PCIeFunction.v1_7_0.PCIeFunction",
        "Id": f.id,
        "Name": format!("{} {}", f.model, f.id),
        "FunctionId": f.function_number,
        "FunctionType": match f.kind { FunctionKind::Physical => "Physical", FunctionKind::Virtual { .. } => "Virtual" },
        "FunctionProtocol": "PCIe",
        "DeviceClass": device_class(f.class_code),
        "VendorId": format!("0x{:04x}", f.vendor_id),
        "DeviceId": format!("0x{:04x}", f.device_id),
        "SubsystemVendorId": format!("0x{:04x}", f.subsystem_vendor_id),
        "SubsystemId": format!("0x{:04x}", f.subsystem_id),
        "ClassCode": format!("0x{:06x}", f.class_code & 0xff_ffff),
        "RevisionId": format!("0x{:02x}", f.revision_id),
        "Status": { "State": function_status_state(&f.state), "Health": f.health.as_redfish() },
        "Links": { "PCIeDevice": link(&device_uri(s, &f.device)) },
    });
    if f.kind == FunctionKind::Physical && f.total_vfs > 0 {
        // SR-IOV (the standard PCIeFunction has no VF count): current and most, and the
        // action that changes it.
        oem["NumVFs"] = json!(num_vfs(s, f));
        oem["TotalVFs"] = json!(f.total_vfs);
        v["Actions"] = json!({ "Oem": { format!("#{SET_VF_COUNT}"): {
            "target": format!("{}/Actions/Oem/{SET_VF_COUNT}", function_uri(s, f)),
            "NumVFs@Redfish.AllowableNumbers": [format!("0:{}", f.total_vfs)],
        }}});
    }
    v["Oem"] = json!({ "Pcietun": oem });
    Ok(v)
}

pub(crate) fn systems(s: &Snapshot) -> Value {
    collection(
        "/redfish/v1/Systems",
        "ComputerSystemCollection",
        "Hosts",
        s.hosts.iter().map(|h| system_uri(&h.id)).collect(),
    )
}

/// Functions a host has or is getting (attaching or assigned).
pub(crate) fn functions_of_host<'a>(
    s: &'a Snapshot,
    host: &'a str,
) -> impl Iterator<Item = &'a FunctionInfo> {
    s.functions.iter().filter(move |f| {
        matches!(&f.state, FunctionState::Attaching { host: h } | FunctionState::Assigned { host: h } if h == host)
    })
}

fn host_or_404<'a>(s: &'a Snapshot, h: &str) -> ApiResult<&'a HostInfo> {
    s.host(h)
        .ok_or_else(|| ApiError::not_found("ComputerSystem", h, format!("unknown host {h:?}")))
}

pub(crate) fn system(s: &Snapshot, h: &str) -> ApiResult<Value> {
    let host = host_or_404(s, h)?;
    let fns: Vec<&FunctionInfo> = functions_of_host(s, h).collect();
    let connected = host.session == HostSession::Connected;
    Ok(json!({
        "@odata.id": system_uri(h),
        "@odata.type": "#ComputerSystem.v1_28_0.ComputerSystem",
        "Id": h,
        "Name": format!("Host {h}"),
        "SystemType": "Physical",
        "Status": {
            "State": if connected { "Enabled" } else { "StandbyOffline" },
            "Health": "OK",
        },
        "PCIeFunctions": fns.iter().map(|f| link(&function_uri(s, f))).collect::<Vec<_>>(),
        "Links": { "Endpoints": [link(&initiator_uri(h))] },
        "Oem": { "Pcietun": {
            "@odata.type": "#Pcietun.v1_0_0.ComputerSystem",
            "Session": host.session.name(),
            "RttMicroseconds": host.rtt.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            "Functions": fns.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
        }},
    }))
}

/// The API error for a refusal of adding or removing a card (and, for the other variants, the
/// refusals every change shares).
pub(crate) fn card_error(e: PoolError) -> ApiError {
    let msg = e.to_string();
    match e {
        PoolError::BadDevice { .. } | PoolError::NotAllowed { .. } => {
            ApiError::action_parameter_conflict("Spec", "(see message)", msg)
        }
        PoolError::NameTaken { name } => ApiError::already_exists("PCIeFunction", "Name", &name),
        PoolError::UnknownFunction { function } => {
            ApiError::not_found("PCIeFunction", &function, msg)
        }
        PoolError::UnknownHost { host } => ApiError::not_found("ComputerSystem", &host, msg),
        PoolError::NoFreeDevice
        | PoolError::VirtualFunction { .. }
        | PoolError::AlreadyAssigned { .. }
        | PoolError::PooledVfs { .. }
        | PoolError::NotAssigned { .. }
        | PoolError::InTransition { .. }
        | PoolError::FunctionFailed { .. }
        | PoolError::VfInUse { .. } => ApiError::in_use(msg),
        PoolError::NotSriov { .. } => ApiError::action_not_supported(SET_VF_COUNT),
        PoolError::TooManyVfs {
            requested, total, ..
        } => ApiError::action_parameter_format(
            SET_VF_COUNT,
            "NumVFs",
            &requested.to_string(),
            &format!("0 to {total}, the function's TotalVFs"),
        ),
        PoolError::Abandoned | PoolError::Appliance(_) => ApiError::internal(msg),
    }
}

/// Why a card cannot be removed now, if it cannot: one of its functions belongs to a host or
/// is changing owner.
fn removal_refusal(d: &str, fns: &[&FunctionInfo]) -> Option<ApiError> {
    for f in fns {
        let why = match &f.state {
            FunctionState::Unassigned | FunctionState::Failed { .. } => continue,
            FunctionState::Assigned { host } => {
                format!("is assigned to host {host:?}: unassign it first")
            }
            FunctionState::Attaching { host } => format!("is being assigned to host {host:?}"),
            FunctionState::Detaching { host } => {
                format!("is being unassigned from host {host:?}; try again when it is free")
            }
            FunctionState::Resetting => "is being reset; try again when it is free".into(),
        };
        return Some(ApiError::in_use(format!(
            "card {d:?} cannot be removed: function {:?} {why}",
            f.id
        )));
    }
    None
}

impl Service {
    /// `#Pcietun.AddDevice` on `Chassis/{c}`: add a card (202 + Task).
    pub(crate) fn add_device(
        &self,
        caller: &Caller,
        req: &Request<Bytes>,
        c: &str,
        action: &str,
    ) -> ApiResult<Reply> {
        if action != ADD_DEVICE {
            return Err(ApiError::action_not_supported(action));
        }
        caller.require(Privilege::ConfigureManager)?;
        let create = body::device_create(req.body(), ADD_DEVICE)?;
        let _change = self.change.lock_or_recover();
        let s = self.snapshot();
        check_chassis(&s, c)?;
        if let Some(n) = &create.name {
            if !valid_id(n) {
                return Err(ApiError::action_parameter_format(
                    ADD_DEVICE,
                    "Name",
                    n,
                    "a letter, then up to 31 letters, digits, - or _",
                ));
            }
            if s.function(n).is_some() || s.devices().contains(&n.as_str()) {
                return Err(ApiError::already_exists("PCIeFunction", "Name", n));
            }
        }
        let title = match &create.name {
            Some(n) => format!("Add card {n} ({})", create.spec),
            None => format!("Add card ({})", create.spec),
        };
        let id = self.tasks.create(title, "POST", req.uri().path(), 1);
        let done = self.tasks.completer(id);
        let tasks = self.tasks.clone();
        let devices = format!("{}/PCIeDevices", chassis_uri(&s));
        let durable = self.durable.clone();
        let (spec, name) = (create.spec.clone(), create.name.clone());
        // The card is recorded (docs/api.md "Persistence") before the Task completes, so a
        // Completed add is a card that comes back after a restart.
        let added = AddCompleter::new(move |r| {
            let card = match r {
                Ok(card) => card,
                Err(e) => return done.finish(Err(e)),
            };
            let d = durable.clone();
            durable.later(move || {
                let r = d
                    .commit(vec![device_record(spec, name, &card)])
                    .map(|_| {
                        tasks.set_result(
                            id,
                            json!({
                                "@odata.type": "#Pcietun.v1_0_0.Task",
                                "Device": link(&format!("{devices}/{}", card.device)),
                                "Functions": card.functions,
                            }),
                        );
                    })
                    .map_err(|e| {
                        tracing::error!("management store: an added card was not saved: {e}");
                        PoolError::Appliance(
                            format!(
                                "the card was added but could not be stored, so it will not \
                                 come back after a restart: {e}"
                            )
                            .into(),
                        )
                    });
                done.finish(r);
            });
        });
        if let Err(e) = self
            .pool
            .add_function(&create.spec, create.name.as_deref(), added)
        {
            self.tasks.discard(id);
            return Err(card_error(e));
        }
        Reply::accepted_task(&self.tasks, id)
    }

    /// `#Pcietun.RemoveDevice` on `Chassis/{c}/PCIeDevices/{d}`: remove an unassigned card
    /// (202 + Task).
    pub(crate) fn remove_device(
        &self,
        caller: &Caller,
        req: &Request<Bytes>,
        c: &str,
        d: &str,
        action: &str,
    ) -> ApiResult<Reply> {
        if action != REMOVE_DEVICE {
            return Err(ApiError::action_not_supported(action));
        }
        caller.require(Privilege::ConfigureManager)?;
        body::no_parameters(req.body(), REMOVE_DEVICE)?;
        let _change = self.change.lock_or_recover();
        let s = self.snapshot();
        let current = device(&s, c, d)?;
        check_if_match(req.headers(), &device_uri(&s, d), &etag_of(&current))?;
        let fns = check_device(&s, c, d)?;
        if let Some(e) = removal_refusal(d, &fns) {
            return Err(e);
        }
        let pf = fns
            .iter()
            .filter(|f| f.kind == FunctionKind::Physical)
            .min_by_key(|f| f.function_number)
            .ok_or_else(|| {
                ApiError::in_use(format!(
                    "card {d:?} has only virtual functions; remove its physical function's card"
                ))
            })?;
        let id = self
            .tasks
            .create(format!("Remove card {d}"), "POST", req.uri().path(), 1);
        // Its record (if it was added over the API) and the assignment and policy records of
        // its functions go with it, once the pool has removed it.
        let changes = fns
            .iter()
            .flat_map(|f| {
                [
                    Table::Devices,
                    Table::Assignments,
                    Table::Policies,
                    Table::VfCounts,
                ]
                .map(|table| Change::Delete {
                    table,
                    key: f.id.clone(),
                })
            })
            .collect();
        if let Err(e) = self
            .pool
            .remove_function(&pf.id, self.saving_completer(id, changes))
        {
            self.tasks.discard(id);
            return Err(card_error(e));
        }
        Reply::accepted_task(&self.tasks, id)
    }
}

impl Service {
    /// `#Pcietun.SetVfCount` on `Chassis/{c}/PCIeDevices/{d}/PCIeFunctions/{f}`: change how
    /// many SR-IOV VFs the physical function has (202 + Task). The count is recorded
    /// (`VfCounts`, docs/api.md "Persistence") once the pool shows it, before the Task
    /// completes.
    pub(crate) fn set_vf_count(
        &self,
        caller: &Caller,
        req: &Request<Bytes>,
        c: &str,
        d: &str,
        f: &str,
        action: &str,
    ) -> ApiResult<Reply> {
        if action != SET_VF_COUNT {
            return Err(ApiError::action_not_supported(action));
        }
        caller.require(Privilege::ConfigureManager)?;
        let n = body::vf_count(req.body(), SET_VF_COUNT)?;
        let _change = self.change.lock_or_recover();
        let s = self.snapshot();
        let current = function(&s, c, d, f)?;
        let pf = s.function(f).filter(|x| x.device == d).ok_or_else(|| {
            ApiError::not_found("PCIeFunction", f, format!("unknown function {f:?}"))
        })?;
        check_if_match(req.headers(), &function_uri(&s, pf), &etag_of(&current))?;
        if pf.kind != FunctionKind::Physical || pf.total_vfs == 0 {
            return Err(ApiError::action_not_supported(SET_VF_COUNT));
        }
        if n > pf.total_vfs {
            return Err(card_error(PoolError::TooManyVfs {
                function: f.into(),
                requested: n,
                total: pf.total_vfs,
            }));
        }
        let id = self.tasks.create(
            format!("Set {f} to {n} virtual functions"),
            "POST",
            req.uri().path(),
            1,
        );
        let change = Change::Put {
            table: Table::VfCounts,
            key: f.to_string(),
            value: n.to_string().into_bytes(),
        };
        if let Err(e) = self
            .pool
            .set_vf_count(f, n, self.saving_completer(id, vec![change]))
        {
            self.tasks.discard(id);
            return Err(card_error(e));
        }
        Reply::accepted_task(&self.tasks, id)
    }
}

/// The store change that records a card added over the API under the id of its function 0.
fn device_record(spec: String, name: Option<String>, card: &AddedCard) -> Change {
    let record = DeviceRecord {
        spec,
        name,
        card: card.device.clone(),
        functions: card.functions.clone(),
    };
    Change::Put {
        table: Table::Devices,
        key: card
            .functions
            .first()
            .cloned()
            .unwrap_or_else(|| card.device.clone()),
        value: serde_json::to_vec(&record).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(device_class(0x01_08_02), "MassStorageController");
        assert_eq!(device_class(0xff_00_00), "UnassignedClass");
        assert_eq!(device_class(0x20_00_00), "Other");
    }
}
