//! Inventory resources: the appliance as a Chassis, its cards as PCIeDevices
//! (PCIeDevice.v1_22_0), their functions as PCIeFunctions (PCIeFunction.v1_7_0), and the hosts
//! as ComputerSystems (ComputerSystem.v1_28_0).
//!
//! Where the standard has no property — the pool state and owner of a function, a host's
//! tunnel session and RTT — it is under `Oem.Pcietun` (described by the OEM CSDL).

use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::uri::{
    chassis_uri, collection, device_uri, function_status_state, function_uri, initiator_uri, link,
    system_uri, target_uri,
};
use super::Snapshot;
use crate::mgmt::pool::{FunctionInfo, FunctionKind, FunctionState, HostInfo, HostSession};

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

pub(crate) fn function(s: &Snapshot, c: &str, d: &str, id: &str) -> ApiResult<Value> {
    check_device(s, c, d)?;
    let f = s.function(id).filter(|f| f.device == d).ok_or_else(|| {
        ApiError::not_found("PCIeFunction", id, format!("unknown function {id:?}"))
    })?;
    Ok(json!({
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
        "Oem": { "Pcietun": function_oem(f) },
    }))
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
