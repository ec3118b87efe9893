//! `#Pcietun.SetVfCount` over real HTTP on 127.0.0.1, against the in-memory pool: the VF count
//! and TotalVFs on an SR-IOV physical function, the action's Task, the inventory and events
//! after it, the stored record, and each refusal (right status, Redfish error body, nothing
//! changed).

mod mgmt_common;

use std::sync::Arc;

use mgmt_common::*;
use pcietun::mgmt::fake::FakePool;
use pcietun::mgmt::pool::EventSink;
use pcietun::mgmt::store::{MemoryStore, Store, Table};
use pcietun::mgmt::Pool;
use serde_json::Value;

const DMA0: &str = "/redfish/v1/Chassis/appliance/PCIeDevices/dma0/PCIeFunctions/dma0";
const SET: &str =
    "/redfish/v1/Chassis/appliance/PCIeDevices/dma0/PCIeFunctions/dma0/Actions/Oem/Pcietun.SetVfCount";

fn vfs(api: &Api) -> Vec<String> {
    api.pool
        .functions()
        .into_iter()
        .filter(|f| f.id.starts_with("dma0.vf"))
        .map(|f| f.id)
        .collect()
}

fn start_stored() -> (Api, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let s = store.clone();
    let api = start_custom(Arc::new(FakePool::sample()), move |o| o.store = s);
    (api, store)
}

fn wait_task(api: &Api, admin: &str, location: &str) -> Value {
    for _ in 0..200 {
        let t = api.get(location, Auth::Token(admin));
        if t.json["TaskState"] != "Running" {
            return t.json;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("task {location} still running");
}

#[test]
fn a_physical_function_shows_its_vf_count_and_the_action_changes_it() {
    let (api, store) = start_stored();
    let admin = api.admin();
    let f = api.get(DMA0, Auth::Token(&admin));
    assert_eq!(f.status, 200);
    assert_eq!(f.json["Oem"]["Pcietun"]["NumVFs"], 2);
    assert_eq!(f.json["Oem"]["Pcietun"]["TotalVFs"], 4);
    let action = &f.json["Actions"]["Oem"]["#Pcietun.SetVfCount"];
    assert_eq!(action["target"], SET);
    assert_eq!(action["NumVFs@Redfish.AllowableNumbers"][0], "0:4");
    // Neither a function without SR-IOV nor a VF offers it.
    let nvme = api.get(
        "/redfish/v1/Chassis/appliance/PCIeDevices/nvme0/PCIeFunctions/nvme0",
        Auth::Token(&admin),
    );
    assert!(nvme.json.get("Actions").is_none(), "{}", nvme.text);
    assert!(nvme.json["Oem"]["Pcietun"].get("NumVFs").is_none());

    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    api.pool
        .subscribe(EventSink::new(move |e| sink.lock().unwrap().push(e)));
    let r = api.post(SET, Auth::Token(&admin), r#"{"NumVFs": 4}"#);
    assert_eq!(r.status, 202, "{}", r.text);
    let location = r.header("Location").unwrap().to_string();
    let t = wait_task(&api, &admin, &location);
    assert_eq!(t["TaskState"], "Completed", "{t}");
    assert_eq!(vfs(&api), ["dma0.vf1", "dma0.vf2", "dma0.vf3", "dma0.vf4"]);
    let f = api.get(DMA0, Auth::Token(&admin));
    assert_eq!(f.json["Oem"]["Pcietun"]["NumVFs"], 4);
    // The new VFs are inventory entries like the others (unassigned, their own endpoint).
    let vf4 = api.get(
        "/redfish/v1/Chassis/appliance/PCIeDevices/dma0/PCIeFunctions/dma0.vf4",
        Auth::Token(&admin),
    );
    assert_eq!(vf4.status, 200, "{}", vf4.text);
    assert_eq!(vf4.json["FunctionType"], "Virtual");
    assert_eq!(vf4.json["Oem"]["Pcietun"]["State"], "unassigned");
    assert_eq!(
        store.get(Table::VfCounts, "dma0").unwrap().as_deref(),
        Some(&b"4"[..]),
        "the count is stored before the task completes"
    );
    let r = api.post(SET, Auth::Token(&admin), r#"{"NumVFs": 1}"#);
    assert_eq!(r.status, 202, "{}", r.text);
    let t = wait_task(&api, &admin, r.header("Location").unwrap());
    assert_eq!(t["TaskState"], "Completed", "{t}");
    assert_eq!(vfs(&api), ["dma0.vf1"]);
    assert_eq!(
        store.get(Table::VfCounts, "dma0").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    let seen: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    for vf in ["dma0.vf3", "dma0.vf4"] {
        assert!(
            seen.iter()
                .any(|e| e.contains("FunctionAdded") && e.contains(vf)),
            "{seen:?}"
        );
        assert!(
            seen.iter()
                .any(|e| e.contains("FunctionRemoved") && e.contains(vf)),
            "{seen:?}"
        );
    }
}

#[test]
fn refusals_change_nothing() {
    let api = start();
    let admin = api.admin();
    let operator = api.user(&admin, "op", "Operator");
    let cases: &[(&str, Auth<'_>, &str, u16, &str)] = &[
        (SET, Auth::None, r#"{"NumVFs": 1}"#, 401, ""),
        (
            SET,
            Auth::Token(&operator),
            r#"{"NumVFs": 1}"#,
            403,
            "InsufficientPrivilege",
        ),
        (SET, Auth::Token(&admin), r#"{"NumVFs": 5}"#, 400, "ActionParameterValueFormatError"),
        (SET, Auth::Token(&admin), r#"{"NumVFs": -1}"#, 400, "ActionParameterValueFormatError"),
        (SET, Auth::Token(&admin), r#"{"NumVFs": "2"}"#, 400, "ActionParameterValueTypeError"),
        (SET, Auth::Token(&admin), r#"{}"#, 400, "ActionParameterMissing"),
        (SET, Auth::Token(&admin), r#"{"NumVFs": 1, "X": 2}"#, 400, "ActionParameterUnknown"),
        (SET, Auth::Token(&admin), r#"{"#, 400, "MalformedJSON"),
        (
            "/redfish/v1/Chassis/appliance/PCIeDevices/nvme0/PCIeFunctions/nvme0/Actions/Oem/Pcietun.SetVfCount",
            Auth::Token(&admin),
            r#"{"NumVFs": 1}"#,
            404,
            "ActionNotSupported",
        ),
        (
            "/redfish/v1/Chassis/appliance/PCIeDevices/dma0/PCIeFunctions/dma0.vf1/Actions/Oem/Pcietun.SetVfCount",
            Auth::Token(&admin),
            r#"{"NumVFs": 1}"#,
            404,
            "ActionNotSupported",
        ),
        (
            "/redfish/v1/Chassis/appliance/PCIeDevices/dma0/PCIeFunctions/dma0/Actions/Oem/Pcietun.Other",
            Auth::Token(&admin),
            r#"{"NumVFs": 1}"#,
            404,
            "ActionNotSupported",
        ),
        (
            "/redfish/v1/Chassis/appliance/PCIeDevices/dma0/PCIeFunctions/nope/Actions/Oem/Pcietun.SetVfCount",
            Auth::Token(&admin),
            r#"{"NumVFs": 1}"#,
            404,
            "ResourceNotFound",
        ),
    ];
    for (uri, auth, body, status, code) in cases {
        let r = api.post(uri, *auth, body);
        assert_eq!(r.status, *status, "{uri} {body}: {}", r.text);
        if !code.is_empty() {
            assert!(r.code().ends_with(code), "{uri} {body}: {}", r.text);
        }
        assert_eq!(vfs(&api), ["dma0.vf1", "dma0.vf2"], "{uri} {body}");
    }
    // A VF that belongs to a host: 409, with the reason.
    let r = api.post(
        ADD_ALPHA,
        Auth::Token(&admin),
        &add_endpoint_body("dma0.vf2"),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(api.state("dma0.vf2"), "assigned");
    let r = api.post(SET, Auth::Token(&admin), r#"{"NumVFs": 1}"#);
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.message().contains("dma0.vf2"), "{}", r.text);
    assert!(r.message().contains("unassign it"), "{}", r.text);
    assert_eq!(vfs(&api), ["dma0.vf1", "dma0.vf2"]);
    // A stale ETag: 412.
    let r = api.req(
        "POST",
        SET,
        Auth::Token(&admin),
        &[("If-Match", "W/\"stale\"")],
        Some(br#"{"NumVFs": 1}"#),
    );
    assert_eq!(r.status, 412, "{}", r.text);
}
