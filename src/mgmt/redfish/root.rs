//! Service-level documents: `/redfish` (version), the ServiceRoot (ServiceRoot.v1_21_0), the
//! OData service document, `$metadata` (CSDL referencing every DMTF schema the service uses,
//! DSP0266 §"Service metadata") and the OEM CSDL for `Oem.Pcietun`; plus the TaskService.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::tasks::{task_json, task_uri, timestamp, TaskTable};
use super::uri::collection;
use crate::mgmt::pool::ApplianceInfo;

fn link(uri: &str) -> Value {
    json!({ "@odata.id": uri })
}

/// The DSP0266 version this service implements.
pub const REDFISH_VERSION: &str = "1.20.0";

pub(crate) fn version() -> Value {
    json!({ "v1": "/redfish/v1/" })
}

pub(crate) fn service_root(uuid: &str, appliance: &ApplianceInfo) -> Value {
    json!({
        "@odata.id": "/redfish/v1/",
        "@odata.type": "#ServiceRoot.v1_21_0.ServiceRoot",
        "Id": "RootService",
        "Name": appliance.name,
        "RedfishVersion": REDFISH_VERSION,
        "UUID": uuid,
        "Product": "pcietun",
        "Vendor": "pcietun",
        "ProtocolFeaturesSupported": {
            "ExpandQuery": { "ExpandAll": false, "Levels": false, "Links": false, "NoLinks": false },
            "SelectQuery": false,
            "FilterQuery": false,
            "OnlyMemberQuery": false,
            "ExcerptQuery": false,
        },
        "Chassis": link("/redfish/v1/Chassis"),
        "Systems": link("/redfish/v1/Systems"),
        "Fabrics": link("/redfish/v1/Fabrics"),
        "Tasks": link("/redfish/v1/TaskService"),
        "SessionService": link("/redfish/v1/SessionService"),
        "AccountService": link("/redfish/v1/AccountService"),
        "EventService": link("/redfish/v1/EventService"),
        "Links": { "Sessions": link("/redfish/v1/SessionService/Sessions") },
    })
}

pub(crate) fn odata() -> Value {
    let singleton =
        |name: &str, url: &str| json!({ "name": name, "kind": "Singleton", "url": url });
    json!({
        "@odata.context": "/redfish/v1/$metadata",
        "value": [
            singleton("Service", "/redfish/v1/"),
            singleton("Chassis", "/redfish/v1/Chassis"),
            singleton("Systems", "/redfish/v1/Systems"),
            singleton("Fabrics", "/redfish/v1/Fabrics"),
            singleton("Tasks", "/redfish/v1/TaskService"),
            singleton("SessionService", "/redfish/v1/SessionService"),
            singleton("AccountService", "/redfish/v1/AccountService"),
            singleton("EventService", "/redfish/v1/EventService"),
            singleton("Sessions", "/redfish/v1/SessionService/Sessions"),
        ],
    })
}

/// The DMTF schemas (file, namespaces) the service's resources use.
const SCHEMAS: &[(&str, &[&str])] = &[
    (
        "ServiceRoot_v1.xml",
        &["ServiceRoot", "ServiceRoot.v1_21_0"],
    ),
    ("ChassisCollection_v1.xml", &["ChassisCollection"]),
    ("Chassis_v1.xml", &["Chassis", "Chassis.v1_28_0"]),
    ("PCIeDeviceCollection_v1.xml", &["PCIeDeviceCollection"]),
    ("PCIeDevice_v1.xml", &["PCIeDevice", "PCIeDevice.v1_22_0"]),
    ("PCIeFunctionCollection_v1.xml", &["PCIeFunctionCollection"]),
    (
        "PCIeFunction_v1.xml",
        &["PCIeFunction", "PCIeFunction.v1_7_0"],
    ),
    (
        "ComputerSystemCollection_v1.xml",
        &["ComputerSystemCollection"],
    ),
    (
        "ComputerSystem_v1.xml",
        &["ComputerSystem", "ComputerSystem.v1_28_0"],
    ),
    ("FabricCollection_v1.xml", &["FabricCollection"]),
    ("Fabric_v1.xml", &["Fabric", "Fabric.v1_4_0"]),
    ("EndpointCollection_v1.xml", &["EndpointCollection"]),
    ("Endpoint_v1.xml", &["Endpoint", "Endpoint.v1_8_2"]),
    ("ZoneCollection_v1.xml", &["ZoneCollection"]),
    ("Zone_v1.xml", &["Zone", "Zone.v1_6_3"]),
    ("ConnectionCollection_v1.xml", &["ConnectionCollection"]),
    ("Connection_v1.xml", &["Connection", "Connection.v1_4_0"]),
    ("TaskService_v1.xml", &["TaskService", "TaskService.v1_3_0"]),
    ("TaskCollection_v1.xml", &["TaskCollection"]),
    ("Task_v1.xml", &["Task", "Task.v1_7_4"]),
    (
        "SessionService_v1.xml",
        &["SessionService", "SessionService.v1_2_0"],
    ),
    ("SessionCollection_v1.xml", &["SessionCollection"]),
    ("Session_v1.xml", &["Session", "Session.v1_8_0"]),
    (
        "AccountService_v1.xml",
        &["AccountService", "AccountService.v1_18_1"],
    ),
    (
        "ManagerAccountCollection_v1.xml",
        &["ManagerAccountCollection"],
    ),
    (
        "ManagerAccount_v1.xml",
        &["ManagerAccount", "ManagerAccount.v1_14_1"],
    ),
    ("RoleCollection_v1.xml", &["RoleCollection"]),
    ("Role_v1.xml", &["Role", "Role.v1_3_3"]),
    (
        "EventService_v1.xml",
        &["EventService", "EventService.v1_12_0"],
    ),
    (
        "EventDestinationCollection_v1.xml",
        &["EventDestinationCollection"],
    ),
    (
        "EventDestination_v1.xml",
        &["EventDestination", "EventDestination.v1_17_0"],
    ),
    ("Event_v1.xml", &["Event", "Event.v1_13_0"]),
    ("Message_v1.xml", &["Message", "Message.v1_3_0"]),
    ("Resource_v1.xml", &["Resource", "Resource.v1_0_0"]),
    ("RedfishExtensions_v1.xml", &["RedfishExtensions.v1_0_0"]),
];

/// The OEM schema for `Oem.Pcietun` (CSDL, served at `/redfish/v1/Schemas/Pcietun_v1.xml`).
pub const OEM_SCHEMA: &str = include_str!("Pcietun_v1.xml");

pub(crate) fn metadata() -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <edmx:Edmx xmlns:edmx=\"http://docs.oasis-open.org/odata/ns/edmx\" Version=\"4.0\">\n",
    );
    for (file, namespaces) in SCHEMAS {
        out.push_str(&format!(
            "  <edmx:Reference Uri=\"http://redfish.dmtf.org/schemas/v1/{file}\">\n"
        ));
        for ns in *namespaces {
            out.push_str(&format!("    <edmx:Include Namespace=\"{ns}\"/>\n"));
        }
        out.push_str("  </edmx:Reference>\n");
    }
    out.push_str(
        "  <edmx:Reference Uri=\"/redfish/v1/Schemas/Pcietun_v1.xml\">\n\
         \x20   <edmx:Include Namespace=\"Pcietun\"/>\n\
         \x20   <edmx:Include Namespace=\"Pcietun.v1_0_0\"/>\n\
         \x20 </edmx:Reference>\n\
         \x20 <edmx:DataServices>\n\
         \x20   <Schema xmlns=\"http://docs.oasis-open.org/odata/ns/edm\" Namespace=\"Service\">\n\
         \x20     <EntityContainer Name=\"Service\" Extends=\"ServiceRoot.v1_21_0.ServiceContainer\"/>\n\
         \x20   </Schema>\n\
         \x20 </edmx:DataServices>\n\
         </edmx:Edmx>\n",
    );
    out
}

pub(crate) fn task_service(now: SystemTime) -> Value {
    json!({
        "@odata.id": "/redfish/v1/TaskService",
        "@odata.type": "#TaskService.v1_3_0.TaskService",
        "Id": "TaskService",
        "Name": "Task Service",
        "ServiceEnabled": true,
        "DateTime": timestamp(now),
        "CompletedTaskOverWritePolicy": "Oldest",
        "LifeCycleEventOnTaskStateChange": false,
        "Status": { "State": "Enabled", "Health": "OK" },
        "Tasks": link("/redfish/v1/TaskService/Tasks"),
    })
}

pub(crate) fn tasks(tasks: &TaskTable) -> Value {
    collection(
        "/redfish/v1/TaskService/Tasks",
        "TaskCollection",
        "Tasks",
        tasks.ids().into_iter().map(task_uri).collect(),
    )
}

pub(crate) fn task(tasks: &TaskTable, id: &str) -> ApiResult<Value> {
    let not_found = || ApiError::not_found("Task", id, format!("unknown task {id:?}"));
    let n: u64 = id.parse().map_err(|_| not_found())?;
    tasks.get(n).map(|t| task_json(&t)).ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_every_schema_and_the_oem_one() {
        let m = metadata();
        for (file, _) in SCHEMAS {
            assert!(m.contains(file), "{file}");
        }
        assert!(m.contains("Pcietun_v1.xml"));
        assert!(OEM_SCHEMA.contains("Namespace=\"Pcietun.v1_0_0\""));
    }
}
