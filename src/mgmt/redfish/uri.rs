//! What the resource modules share: the URIs of every resource (so inventory and fabric can link
//! to each other without importing each other), references and resource collections as the
//! Redfish Specification (DSP0266) shapes them, and the `Status.State` (Resource.v1 `State`) of
//! a function.

use serde_json::{json, Value};

use super::Snapshot;
use crate::mgmt::pool::{FunctionInfo, FunctionState};

/// The one fabric's resource.
pub(crate) const FABRIC_URI: &str = "/redfish/v1/Fabrics/PCIe";

/// A Redfish reference (`{"@odata.id": …}`).
pub(crate) fn link(uri: &str) -> Value {
    json!({ "@odata.id": uri })
}

/// A resource collection of `members`.
pub(crate) fn collection(uri: &str, ty: &str, name: &str, members: Vec<String>) -> Value {
    json!({
        "@odata.id": uri,
        "@odata.type": format!("#{ty}.{ty}"),
        "Name": name,
        "Members@odata.count": members.len(),
        "Members": members.iter().map(|m| link(m)).collect::<Vec<_>>(),
    })
}

/// The appliance's Chassis.
pub(crate) fn chassis_uri(s: &Snapshot) -> String {
    format!("/redfish/v1/Chassis/{}", s.appliance.id)
}

/// A card (PCIeDevice) of the appliance.
pub(crate) fn device_uri(s: &Snapshot, dev: &str) -> String {
    format!("{}/PCIeDevices/{dev}", chassis_uri(s))
}

/// A function (PCIeFunction) of a card.
pub(crate) fn function_uri(s: &Snapshot, f: &FunctionInfo) -> String {
    format!("{}/PCIeFunctions/{}", device_uri(s, &f.device), f.id)
}

/// A host (ComputerSystem).
pub(crate) fn system_uri(host: &str) -> String {
    format!("/redfish/v1/Systems/{host}")
}

/// `Status.State` of a function, by its pool state.
pub(crate) fn function_status_state(state: &FunctionState) -> &'static str {
    match state {
        FunctionState::Unassigned => "StandbySpare",
        FunctionState::Attaching { .. } => "Starting",
        FunctionState::Assigned { .. } => "Enabled",
        FunctionState::Detaching { .. } => "Quiesced",
        FunctionState::Resetting | FunctionState::Failed { .. } => "UnavailableOffline",
    }
}

/// The Initiator endpoint of a host.
pub(crate) fn initiator_uri(host: &str) -> String {
    format!("{FABRIC_URI}/Endpoints/host-{host}")
}

/// The Target endpoint of a function.
pub(crate) fn target_uri(function: &str) -> String {
    format!("{FABRIC_URI}/Endpoints/fn-{function}")
}

/// A host's zone.
pub(crate) fn zone_uri(host: &str) -> String {
    format!("{FABRIC_URI}/Zones/{host}")
}

/// An assignment's connection.
pub(crate) fn connection_uri(function: &str) -> String {
    format!("{FABRIC_URI}/Connections/{function}")
}

/// `#Pcietun.AddSchedule`.
pub const ADD_SCHEDULE: &str = "Pcietun.AddSchedule";
/// `#Pcietun.RemoveSchedule`.
pub const REMOVE_SCHEDULE: &str = "Pcietun.RemoveSchedule";
