//! The Redfish management API over real HTTP on 127.0.0.1, against the in-memory pool:
//! every resource, authentication and roles, ETags and If-Match, the task life cycle of
//! assign/unassign, and each kind of bad input (right status, Redfish error body, nothing
//! changed).

mod mgmt_common;

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use mgmt_common::*;
use pcietun::mgmt::fake::Completion;
use serde_json::Value;

fn collect_links(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if k == "@odata.id" {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                } else if k == "target" {
                    // Action targets are POST-only.
                } else {
                    collect_links(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_links(x, out)),
        _ => {}
    }
}

#[test]
fn public_documents_need_no_credentials() {
    let api = start();
    let r = api.get("/redfish", Auth::None);
    assert_eq!(
        (r.status, &r.json["v1"]),
        (200, &Value::from("/redfish/v1/"))
    );
    let root = api.get("/redfish/v1/", Auth::None);
    assert_eq!(root.status, 200);
    assert_eq!(root.header("OData-Version"), Some("4.0"));
    assert_eq!(root.json["@odata.type"], "#ServiceRoot.v1_21_0.ServiceRoot");
    assert_eq!(
        root.json["Links"]["Sessions"]["@odata.id"],
        "/redfish/v1/SessionService/Sessions"
    );
    assert_eq!(root.json["UUID"].as_str().unwrap().len(), 36);
    assert_eq!(api.get("/redfish/v1", Auth::None).status, 200);
    let odata = api.get("/redfish/v1/odata", Auth::None);
    assert_eq!(odata.status, 200);
    assert!(odata.json["value"].as_array().unwrap().len() >= 5);
    let meta = api.get("/redfish/v1/$metadata", Auth::None);
    assert_eq!(meta.status, 200);
    assert!(meta
        .header("Content-Type")
        .unwrap()
        .starts_with("application/xml"));
    assert!(meta.text.contains("Zone_v1.xml") && meta.text.contains("Pcietun_v1.xml"));
    // The OEM schema itself is an ordinary, authenticated resource.
    assert_eq!(
        api.get("/redfish/v1/Schemas/Pcietun_v1.xml", Auth::None)
            .status,
        401
    );
    let admin = api.admin();
    let oem = api.get("/redfish/v1/Schemas/Pcietun_v1.xml", Auth::Token(&admin));
    assert_eq!(oem.status, 200);
    assert!(oem.text.contains("Pcietun.v1_0_0"));
}

#[test]
fn everything_else_needs_credentials() {
    let api = start();
    for path in [
        "/redfish/v1/Chassis",
        "/redfish/v1/Systems/alpha",
        "/redfish/v1/Fabrics/PCIe/Zones",
        "/redfish/v1/SessionService/Sessions",
        "/redfish/v1/NoSuchThing",
    ] {
        let r = api.get(path, Auth::None);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.code(), "Base.1.22.NoValidSession");
        assert!(r.header("WWW-Authenticate").unwrap().starts_with("Basic"));
    }
    assert_eq!(
        api.get("/redfish/v1/Chassis", Auth::Token("0123")).status,
        401
    );
    assert_eq!(
        api.get("/redfish/v1/Chassis", Auth::Basic(ADMIN, "wrong-password"))
            .status,
        401
    );
    assert_eq!(
        api.get("/redfish/v1/Chassis", Auth::Basic("nobody", ADMIN_PW))
            .status,
        401
    );
    let r = api.req(
        "GET",
        "/redfish/v1/Chassis",
        Auth::None,
        &[("Authorization", "Bearer x")],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        api.get("/redfish/v1/Chassis", Auth::Basic(ADMIN, ADMIN_PW))
            .status,
        200
    );
    // Changes without credentials are refused the same way, and change nothing.
    let r = api.post(ADD_ALPHA, Auth::None, &add_endpoint_body("nvme0"));
    assert_eq!(r.status, 401);
    assert_eq!(api.state("nvme0"), "unassigned");
}

#[test]
fn sessions_log_in_out_and_expire() {
    let api = start();
    let r = api.post(
        "/redfish/v1/SessionService/Sessions",
        Auth::None,
        &serde_json::json!({"UserName": ADMIN, "Password": "not the password"}).to_string(),
    );
    assert_eq!(r.status, 401);
    let (token, location) = api.login(ADMIN, ADMIN_PW);
    assert_eq!(token.len(), 64);
    let s = api.get(&location, Auth::Token(&token));
    assert_eq!(s.status, 200);
    assert_eq!(s.json["UserName"], ADMIN);
    assert_eq!(s.json["Password"], Value::Null);
    assert!(!s.text.contains(&token), "the token is never shown again");
    let list = api.get("/redfish/v1/SessionService/Sessions", Auth::Token(&token));
    assert_eq!(list.json["Members@odata.count"], 1);
    assert_eq!(api.delete(&location, Auth::Token(&token)).status, 204);
    assert_eq!(
        api.get("/redfish/v1/Chassis", Auth::Token(&token)).status,
        401
    );

    // Idle expiry (default 30 min), refreshed by use.
    let (token, _) = api.login(ADMIN, ADMIN_PW);
    api.clock.advance(Duration::from_secs(29 * 60));
    assert_eq!(
        api.get("/redfish/v1/Chassis", Auth::Token(&token)).status,
        200
    );
    api.clock.advance(Duration::from_secs(29 * 60));
    assert_eq!(
        api.get("/redfish/v1/Chassis", Auth::Token(&token)).status,
        200
    );
    api.clock.advance(Duration::from_secs(31 * 60));
    let r = api.get("/redfish/v1/Chassis", Auth::Token(&token));
    assert_eq!(r.status, 401);
    assert!(r.message().contains("expired"), "{}", r.message());

    // The timeout is an Administrator setting, within 30..=86400 s.
    let admin = api.admin();
    let r = api.patch(
        "/redfish/v1/SessionService",
        Auth::Token(&admin),
        &[],
        r#"{"SessionTimeout":60}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["SessionTimeout"], 60);
    let r = api.patch(
        "/redfish/v1/SessionService",
        Auth::Token(&admin),
        &[],
        r#"{"SessionTimeout":1}"#,
    );
    assert_eq!(
        (r.status, r.code()),
        (400, "Base.1.22.PropertyValueOutOfRange")
    );
    api.clock.advance(Duration::from_secs(61));
    assert_eq!(
        api.get("/redfish/v1/Chassis", Auth::Token(&admin)).status,
        401
    );
}

#[test]
fn inventory_shows_ids_class_state_owner_health() {
    let api = start();
    let t = api.admin();
    let f = api.get(
        "/redfish/v1/Chassis/appliance/PCIeDevices/nvme0/PCIeFunctions/nvme0",
        Auth::Token(&t),
    );
    assert_eq!(f.status, 200, "{}", f.text);
    let j = &f.json;
    assert_eq!(j["@odata.type"], "#PCIeFunction.v1_7_0.PCIeFunction");
    assert_eq!(j["VendorId"], "0x1b36");
    assert_eq!(j["DeviceId"], "0x0010");
    assert_eq!(j["ClassCode"], "0x010802");
    assert_eq!(j["DeviceClass"], "MassStorageController");
    assert_eq!(j["FunctionType"], "Physical");
    assert_eq!(j["Status"]["Health"], "OK");
    assert_eq!(j["Oem"]["Pcietun"]["State"], "unassigned");
    assert_eq!(j["Oem"]["Pcietun"]["Owner"], Value::Null);
    assert_eq!(f.header("ETag"), j["@odata.etag"].as_str());

    let vf = api.get(
        "/redfish/v1/Chassis/appliance/PCIeDevices/dma0/PCIeFunctions/dma0.vf2",
        Auth::Token(&t),
    );
    assert_eq!(vf.json["FunctionType"], "Virtual");
    assert_eq!(vf.json["FunctionId"], 2);
    assert_eq!(vf.json["Oem"]["Pcietun"]["PhysicalFunction"], "dma0");
    let dev = api.get(
        "/redfish/v1/Chassis/appliance/PCIeDevices/dma0",
        Auth::Token(&t),
    );
    assert_eq!(dev.json["Oem"]["Pcietun"]["VirtualFunctions"], 2);
    let fns = api.get(
        "/redfish/v1/Chassis/appliance/PCIeDevices/dma0/PCIeFunctions",
        Auth::Token(&t),
    );
    assert_eq!(fns.json["Members@odata.count"], 3);

    // A function under the wrong card, and unknown ids, are 404 naming the resource.
    let r = api.get(
        "/redfish/v1/Chassis/appliance/PCIeDevices/dma0/PCIeFunctions/nvme0",
        Auth::Token(&t),
    );
    assert_eq!((r.status, r.code()), (404, "Base.1.22.ResourceNotFound"));
    let r = api.get("/redfish/v1/Systems/gamma", Auth::Token(&t));
    assert_eq!(r.status, 404);
    assert!(r.message().contains("gamma"));

    let h = api.get("/redfish/v1/Systems/alpha", Auth::Token(&t));
    assert_eq!(h.json["Oem"]["Pcietun"]["Session"], "connected");
    assert_eq!(h.json["Oem"]["Pcietun"]["RttMicroseconds"], 42);
    let h = api.get("/redfish/v1/Systems/beta", Auth::Token(&t));
    assert_eq!(h.json["Oem"]["Pcietun"]["Session"], "disconnected");
    assert_eq!(h.json["Status"]["State"], "StandbyOffline");
}

#[test]
fn every_linked_resource_is_well_formed() {
    let api = start();
    let t = api.admin();
    // Assign one function so Connections and zone members exist.
    let r = api.post(ADD_ALPHA, Auth::Token(&t), &add_endpoint_body("nvme0"));
    assert_eq!(r.status, 202, "{}", r.text);
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from(["/redfish/v1/".to_string()]);
    while let Some(uri) = queue.pop_front() {
        if !seen.insert(uri.clone()) {
            continue;
        }
        let r = api.get(&uri, Auth::Token(&t));
        assert_eq!(r.status, 200, "GET {uri}: {}", r.text);
        if uri.ends_with(".xml") || uri.ends_with("$metadata") {
            continue;
        }
        assert_eq!(r.json["@odata.id"], Value::from(uri.as_str()), "{uri}");
        let ty = r.json["@odata.type"]
            .as_str()
            .unwrap_or_else(|| panic!("{uri} has no @odata.type"));
        assert!(ty.starts_with('#'), "{uri}: {ty}");
        assert_eq!(r.header("ETag"), r.json["@odata.etag"].as_str(), "{uri}");
        assert!(r.header("Allow").unwrap().contains("GET"), "{uri}");
        if let Some(m) = r.json.get("Members") {
            assert_eq!(
                r.json["Members@odata.count"],
                m.as_array().unwrap().len(),
                "{uri}"
            );
        }
        let mut links = Vec::new();
        collect_links(&r.json, &mut links);
        queue.extend(links.into_iter().filter(|l| l != &uri));
    }
    for must in [
        "/redfish/v1/Fabrics/PCIe/Endpoints/host-alpha",
        "/redfish/v1/Fabrics/PCIe/Endpoints/fn-dma0.vf1",
        "/redfish/v1/Fabrics/PCIe/Connections/nvme0",
        "/redfish/v1/Fabrics/PCIe/Zones/beta",
        "/redfish/v1/AccountService/Roles/Operator",
        "/redfish/v1/TaskService/Tasks/1",
    ] {
        assert!(
            seen.contains(must),
            "{must} not reachable by links; saw {seen:?}"
        );
    }
}

fn task_state(api: &Api, t: &str, task: &str) -> Value {
    let r = api.get(task, Auth::Token(t));
    assert_eq!(r.status, 200);
    r.json
}

#[test]
fn assign_and_unassign_tasks_follow_the_pool() {
    let api = start();
    api.pool.set_completion(Completion::Manual);
    let t = api.admin();
    let r = api.post(ADD_ALPHA, Auth::Token(&t), &add_endpoint_body("nvme0"));
    assert_eq!(r.status, 202, "{}", r.text);
    let task = r.header("Location").unwrap().to_string();
    assert_eq!(r.json["@odata.id"], Value::from(task.as_str()));
    assert_eq!(task_state(&api, &t, &task)["TaskState"], "Running");
    // Membership shows at once; the connection is attaching until the pool says it is done.
    let zone = api.get(ZONE_ALPHA, Auth::Token(&t));
    let members = zone.json["Links"]["Endpoints"].to_string();
    assert!(
        members.contains("fn-nvme0") && members.contains("host-alpha"),
        "{members}"
    );
    let c = api.get(
        "/redfish/v1/Fabrics/PCIe/Connections/nvme0",
        Auth::Token(&t),
    );
    assert_eq!(c.json["Oem"]["Pcietun"]["State"], "attaching");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(task_state(&api, &t, &task)["TaskState"], "Running");
    assert!(api.pool.complete("nvme0"));
    let done = task_state(&api, &t, &task);
    assert_eq!(done["TaskState"], "Completed");
    assert_eq!(done["TaskStatus"], "OK");
    assert_eq!(done["PercentComplete"], 100);
    assert!(done["EndTime"].is_string());
    let c = api.get(
        "/redfish/v1/Fabrics/PCIe/Connections/nvme0",
        Auth::Token(&t),
    );
    assert_eq!(c.json["Oem"]["Pcietun"]["State"], "attached");
    assert_eq!(
        c.json["Links"]["InitiatorEndpoints"][0]["@odata.id"],
        "/redfish/v1/Fabrics/PCIe/Endpoints/host-alpha"
    );
    let h = api.get("/redfish/v1/Systems/alpha", Auth::Token(&t));
    assert_eq!(h.json["Oem"]["Pcietun"]["Functions"][0], "nvme0");
    let f = api.get(
        "/redfish/v1/Chassis/appliance/PCIeDevices/nvme0/PCIeFunctions/nvme0",
        Auth::Token(&t),
    );
    assert_eq!(f.json["Oem"]["Pcietun"]["Owner"], "alpha");

    // Unassign through RemoveEndpoint: detaching until the pool lets go.
    let r = api.post(REMOVE_ALPHA, Auth::Token(&t), &add_endpoint_body("nvme0"));
    assert_eq!(r.status, 202, "{}", r.text);
    let task = r.header("Location").unwrap().to_string();
    let c = api.get(
        "/redfish/v1/Fabrics/PCIe/Connections/nvme0",
        Auth::Token(&t),
    );
    assert_eq!(c.json["Oem"]["Pcietun"]["State"], "detaching");
    assert!(!api
        .get(ZONE_ALPHA, Auth::Token(&t))
        .text
        .contains("fn-nvme0"));
    assert!(api.pool.complete("nvme0"));
    assert_eq!(task_state(&api, &t, &task)["TaskState"], "Completed");
    assert_eq!(
        api.get(
            "/redfish/v1/Fabrics/PCIe/Connections/nvme0",
            Auth::Token(&t)
        )
        .status,
        404
    );

    // A failed attach: the task says why, the function is free again.
    let r = api.post(ADD_ALPHA, Auth::Token(&t), &add_endpoint_body("dma0"));
    let task = r.header("Location").unwrap().to_string();
    assert!(api.pool.fail("dma0", "host did not enumerate the slot"));
    let failed = task_state(&api, &t, &task);
    assert_eq!(failed["TaskState"], "Exception");
    assert_eq!(failed["TaskStatus"], "Critical");
    assert!(failed["Messages"][0]["Resolution"]
        .as_str()
        .unwrap()
        .contains("did not enumerate"));
    assert_eq!(api.state("dma0"), "unassigned");

    // DELETE of a Connection unassigns too.
    api.pool.set_completion(Completion::Immediate);
    assert_eq!(
        api.post(ADD_ALPHA, Auth::Token(&t), &add_endpoint_body("dma0"))
            .status,
        202
    );
    let r = api.delete("/redfish/v1/Fabrics/PCIe/Connections/dma0", Auth::Token(&t));
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["TaskState"], "Completed");
    assert_eq!(api.state("dma0"), "unassigned");
    let tasks = api.get("/redfish/v1/TaskService/Tasks", Auth::Token(&t));
    assert_eq!(tasks.json["Members@odata.count"], 5);
}

#[test]
fn refusals_name_the_reason_and_change_nothing() {
    let api = start();
    let t = api.admin();
    let r = api.post(
        "/redfish/v1/Fabrics/PCIe/Zones/gamma/Actions/Zone.AddEndpoint",
        Auth::Token(&t),
        &add_endpoint_body("nvme0"),
    );
    assert_eq!(r.status, 404);
    assert!(
        r.message().contains("unknown host \"gamma\""),
        "{}",
        r.message()
    );
    let r = api.post(ADD_ALPHA, Auth::Token(&t), &add_endpoint_body("nvme9"));
    assert_eq!((r.status, r.code()), (400, "Base.1.22.ResourceNotFound"));
    assert!(
        r.message().contains("unknown function \"nvme9\""),
        "{}",
        r.message()
    );
    assert_eq!(
        api.post(ADD_ALPHA, Auth::Token(&t), &add_endpoint_body("nvme0"))
            .status,
        202
    );
    let r = api.post(
        "/redfish/v1/Fabrics/PCIe/Zones/beta/Actions/Zone.AddEndpoint",
        Auth::Token(&t),
        &add_endpoint_body("nvme0"),
    );
    assert_eq!((r.status, r.code()), (409, "Base.1.22.ResourceInUse"));
    assert!(
        r.message().contains("already assigned to host \"alpha\""),
        "{}",
        r.message()
    );
    assert_eq!(api.state("nvme0"), "assigned");
    let r = api.post(
        "/redfish/v1/Fabrics/PCIe/Zones/beta/Actions/Zone.RemoveEndpoint",
        Auth::Token(&t),
        &add_endpoint_body("nvme0"),
    );
    assert_eq!(r.status, 409);
    assert!(
        r.message()
            .contains("assigned to host \"alpha\", not \"beta\""),
        "{}",
        r.message()
    );
    let r = api.delete("/redfish/v1/Fabrics/PCIe/Connections/dma0", Auth::Token(&t));
    assert_eq!(r.status, 404);
    assert!(r.message().contains("not assigned"), "{}", r.message());
    api.pool.set_failed("dma0.vf1", "AER uncorrectable fatal");
    let r = api.post(ADD_ALPHA, Auth::Token(&t), &add_endpoint_body("dma0.vf1"));
    assert_eq!(r.status, 409);
    assert!(
        r.message().contains("AER uncorrectable fatal"),
        "{}",
        r.message()
    );
    // An initiator is not a target.
    let body = r#"{"Endpoint":{"@odata.id":"/redfish/v1/Fabrics/PCIe/Endpoints/host-beta"}}"#;
    let r = api.post(ADD_ALPHA, Auth::Token(&t), body);
    assert_eq!(
        (r.status, r.code()),
        (400, "Base.1.22.ActionParameterValueConflict")
    );
    let r = api.post(
        "/redfish/v1/Fabrics/PCIe/Zones/alpha/Actions/Zone.Reset",
        Auth::Token(&t),
        "{}",
    );
    assert_eq!((r.status, r.code()), (404, "Base.1.22.ActionNotSupported"));
    // Nothing of the refused requests happened; only the one accepted assignment exists.
    let conns = api.get("/redfish/v1/Fabrics/PCIe/Connections", Auth::Token(&t));
    assert_eq!(conns.json["Members@odata.count"], 1);
    assert_eq!(
        api.get("/redfish/v1/TaskService/Tasks", Auth::Token(&t))
            .json["Members@odata.count"],
        1
    );
}

#[test]
fn stale_etags_get_412_and_change_nothing() {
    let api = start();
    let t = api.admin();
    let zone = api.get(ZONE_ALPHA, Auth::Token(&t));
    let etag = zone.header("ETag").unwrap().to_string();
    // Operator two changes the zone first.
    assert_eq!(
        api.post(ADD_ALPHA, Auth::Token(&t), &add_endpoint_body("dma0"))
            .status,
        202
    );
    let now = api
        .get(ZONE_ALPHA, Auth::Token(&t))
        .header("ETag")
        .unwrap()
        .to_string();
    assert_ne!(etag, now, "membership changes the ETag");
    // Operator one's PATCH based on the old view is refused.
    let patch =
        r#"{"Links":{"Endpoints":[{"@odata.id":"/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0"}]}}"#;
    let r = api.patch(ZONE_ALPHA, Auth::Token(&t), &[("If-Match", &etag)], patch);
    assert_eq!((r.status, r.code()), (412, "Base.1.22.PreconditionFailed"));
    assert_eq!(
        (api.state("nvme0").as_str(), api.state("dma0").as_str()),
        ("unassigned", "assigned")
    );
    let r = api.req(
        "POST",
        ADD_ALPHA,
        Auth::Token(&t),
        &[("If-Match", &etag)],
        Some(add_endpoint_body("nvme0").as_bytes()),
    );
    assert_eq!(r.status, 412);
    // The ZoneETag parameter is checked the same way (428, as the Zone schema says).
    let body = serde_json::json!({"Endpoint": {"@odata.id": "/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0"}, "ZoneETag": etag}).to_string();
    let r = api.post(ADD_ALPHA, Auth::Token(&t), &body);
    assert_eq!(
        (r.status, r.code()),
        (428, "Base.1.22.PreconditionRequired")
    );
    assert_eq!(api.state("nvme0"), "unassigned");
    // With the current ETag the same PATCH goes through: dma0 leaves, nvme0 joins.
    let r = api.patch(ZONE_ALPHA, Auth::Token(&t), &[("If-Match", &now)], patch);
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["TaskState"], "Completed");
    assert_eq!(
        (api.state("nvme0").as_str(), api.state("dma0").as_str()),
        ("assigned", "unassigned")
    );
    // If-Match: * always matches; a PATCH that changes nothing is 200 with the zone.
    let r = api.patch(ZONE_ALPHA, Auth::Token(&t), &[("If-Match", "*")], patch);
    assert_eq!(r.status, 200);
    // Stale ETag on DELETE of a connection.
    let r = api.req(
        "DELETE",
        "/redfish/v1/Fabrics/PCIe/Connections/nvme0",
        Auth::Token(&t),
        &[("If-Match", "W/\"0000\"")],
        None,
    );
    assert_eq!(r.status, 412);
    assert_eq!(api.state("nvme0"), "assigned");
}

#[test]
fn zone_patch_checks_every_change_before_any() {
    let api = start();
    let t = api.admin();
    assert_eq!(
        api.post(
            "/redfish/v1/Fabrics/PCIe/Zones/beta/Actions/Zone.AddEndpoint",
            Auth::Token(&t),
            &add_endpoint_body("dma0")
        )
        .status,
        202
    );
    // nvme0 is free but dma0 belongs to beta: the whole PATCH is refused.
    let patch = r#"{"Links":{"Endpoints":[
        {"@odata.id":"/redfish/v1/Fabrics/PCIe/Endpoints/host-alpha"},
        {"@odata.id":"/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0"},
        {"@odata.id":"/redfish/v1/Fabrics/PCIe/Endpoints/fn-dma0"}]}}"#;
    let r = api.patch(ZONE_ALPHA, Auth::Token(&t), &[], patch);
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.message().contains("dma0"));
    assert_eq!(api.state("nvme0"), "unassigned");
    let patch = r#"{"Links":{"Endpoints":[{"@odata.id":"/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0"},{"@odata.id":"/redfish/v1/Fabrics/PCIe/Endpoints/fn-dma0.vf1"}]}}"#;
    let r = api.patch(ZONE_ALPHA, Auth::Token(&t), &[], patch);
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["TaskState"], "Completed");
    assert_eq!(
        (api.state("nvme0").as_str(), api.state("dma0.vf1").as_str()),
        ("assigned", "assigned")
    );
    let r = api.patch(
        ZONE_ALPHA,
        Auth::Token(&t),
        &[],
        r#"{"Links":{"Endpoints":[]}}"#,
    );
    assert_eq!(r.status, 202);
    assert_eq!(
        (api.state("nvme0").as_str(), api.state("dma0.vf1").as_str()),
        ("unassigned", "unassigned")
    );
}

/// (method, path, headers, body, status, Base message id).
type Case<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

#[test]
fn bad_input_gets_the_right_status_and_changes_nothing() {
    let api = start();
    let t = api.admin();
    let cases: Vec<Case<'_>> = vec![
        ("POST", ADD_ALPHA, vec![], b"{\"Endpoint\":".to_vec(), 400, "MalformedJSON"),
        ("POST", ADD_ALPHA, vec![], b"[1]".to_vec(), 400, "UnrecognizedRequestBody"),
        ("POST", ADD_ALPHA, vec![], br#"{"Endpoint":{"@odata.id":"/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0"},"Now":true}"#.to_vec(), 400, "ActionParameterUnknown"),
        ("POST", ADD_ALPHA, vec![], br#"{"Endpoint":"fn-nvme0"}"#.to_vec(), 400, "ActionParameterValueTypeError"),
        ("POST", ADD_ALPHA, vec![], b"{}".to_vec(), 400, "ActionParameterMissing"),
        ("POST", ADD_ALPHA, vec![], br#"{"Endpoint":{"@odata.id":"/redfish/v1/Chassis"}}"#.to_vec(), 400, "ActionParameterValueFormatError"),
        ("PATCH", ZONE_ALPHA, vec![], br#"{"Links":{"Endpoints":[]},"Colour":"red"}"#.to_vec(), 400, "PropertyUnknown"),
        ("PATCH", ZONE_ALPHA, vec![], br#"{"Name":"mine"}"#.to_vec(), 400, "PropertyNotWritable"),
        ("PATCH", ZONE_ALPHA, vec![], br#"{"Links":{"Endpoints":{"@odata.id":"x"}}}"#.to_vec(), 400, "PropertyValueTypeError"),
        ("PATCH", ZONE_ALPHA, vec![], b"{}".to_vec(), 400, "EmptyJSON"),
        ("PATCH", ZONE_ALPHA, vec![("Content-Type", "text/plain")], br#"{"Links":{"Endpoints":[]}}"#.to_vec(), 415, "UnrecognizedRequestBody"),
        ("POST", ADD_ALPHA, vec![], vec![b' '; 70 * 1024], 413, "PayloadTooLarge"),
        ("GET", "/redfish/v1/Chassis/appliance/Nope", vec![], vec![], 404, "ResourceMissingAtURI"),
        ("GET", "/redfish/v1/Fabrics/Ethernet", vec![], vec![], 404, "ResourceNotFound"),
        ("GET", "/redfish/v1/TaskService/Tasks/x", vec![], vec![], 404, "ResourceNotFound"),
        ("DELETE", ZONE_ALPHA, vec![], vec![], 405, "OperationNotAllowed"),
        ("PUT", "/redfish/v1/Chassis", vec![], b"{}".to_vec(), 405, "OperationNotAllowed"),
        ("GET", "/redfish/v1/Chassis?$expand=.", vec![], vec![], 501, "QueryParameterUnsupported"),
    ];
    for (method, path, headers, body, status, code) in cases {
        let body_opt = if body.is_empty() {
            None
        } else {
            Some(body.as_slice())
        };
        let r = api.req(method, path, Auth::Token(&t), &headers, body_opt);
        assert_eq!(r.status, status, "{method} {path}: {}", r.text);
        assert_eq!(
            r.code(),
            format!("Base.1.22.{code}"),
            "{method} {path}: {}",
            r.text
        );
        assert!(!r.message().is_empty());
        assert!(r.json["error"]["@Message.ExtendedInfo"][0]["Message"].is_string());
        if status == 405 {
            assert!(r.header("Allow").is_some());
        }
    }
    // A chunked body over the limit (no Content-Length) is refused too.
    let big = vec![b'x'; 200 * 1024];
    let r = api.req(
        "POST",
        ADD_ALPHA,
        Auth::Token(&t),
        &[("Transfer-Encoding", "chunked")],
        Some(&big),
    );
    assert_eq!(r.status, 413, "{}", r.text);
    for f in ["nvme0", "dma0", "dma0.vf1", "dma0.vf2"] {
        assert_eq!(api.state(f), "unassigned", "{f}");
    }
    assert_eq!(
        api.get("/redfish/v1/TaskService/Tasks", Auth::Token(&t))
            .json["Members@odata.count"],
        0
    );
    // HEAD: headers, no body.
    let r = api.req("HEAD", "/redfish/v1/Chassis", Auth::Token(&t), &[], None);
    assert_eq!(r.status, 200);
    assert!(r.text.is_empty());
}

#[test]
fn read_only_cannot_change_anything() {
    let api = start();
    let admin = api.admin();
    let ro = api.user(&admin, "watcher", "ReadOnly");
    let op = api.user(&admin, "operator", "Operator");
    assert_eq!(
        api.get("/redfish/v1/Fabrics/PCIe/Zones", Auth::Token(&ro))
            .status,
        200
    );
    let zone_etag = api
        .get(ZONE_ALPHA, Auth::Token(&ro))
        .header("ETag")
        .unwrap()
        .to_string();
    let patch =
        r#"{"Links":{"Endpoints":[{"@odata.id":"/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0"}]}}"#;
    let forbidden: Vec<(&str, &str, Option<String>)> = vec![
        ("POST", ADD_ALPHA, Some(add_endpoint_body("nvme0"))),
        ("PATCH", ZONE_ALPHA, Some(patch.to_string())),
        (
            "POST",
            "/redfish/v1/AccountService/Accounts",
            Some(r#"{"UserName":"x","Password":"xxxxxxxx","RoleId":"Administrator"}"#.into()),
        ),
        (
            "PATCH",
            "/redfish/v1/AccountService/Accounts/1",
            Some(r#"{"Password":"new-admin-pw"}"#.into()),
        ),
        ("DELETE", "/redfish/v1/AccountService/Accounts/1", None),
        (
            "PATCH",
            "/redfish/v1/SessionService",
            Some(r#"{"SessionTimeout":60}"#.into()),
        ),
    ];
    for (method, path, body) in &forbidden {
        let r = api.req(
            method,
            path,
            Auth::Token(&ro),
            &[],
            body.as_deref().map(str::as_bytes),
        );
        assert_eq!(r.status, 403, "ReadOnly {method} {path}: {}", r.text);
        assert_eq!(r.code(), "Base.1.22.InsufficientPrivilege");
        assert!(r.message().contains("watcher") && r.message().contains("ReadOnly"));
    }
    // Its own account is the only one it sees.
    let accounts = api.get("/redfish/v1/AccountService/Accounts", Auth::Token(&ro));
    assert_eq!(accounts.json["Members@odata.count"], 1);
    assert_eq!(
        api.get("/redfish/v1/AccountService/Accounts/1", Auth::Token(&ro))
            .status,
        403
    );
    // Nothing changed.
    assert_eq!(api.state("nvme0"), "unassigned");
    assert_eq!(
        api.get(ZONE_ALPHA, Auth::Token(&ro))
            .header("ETag")
            .unwrap(),
        zone_etag
    );
    assert!(
        api.get("/redfish/v1/AccountService/Accounts/1", Auth::Token(&admin))
            .status
            == 200
    );
    assert_eq!(
        api.get("/redfish/v1/SessionService", Auth::Token(&ro)).json["SessionTimeout"],
        1800
    );
    // ReadOnly may change its own password (ConfigureSelf).
    let me = accounts.json["Members"][0]["@odata.id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = api.patch(
        &me,
        Auth::Token(&ro),
        &[],
        r#"{"Password":"watcher-new-pw"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api.patch(&me, Auth::Token(&ro), &[], r#"{"RoleId":"Administrator"}"#);
    assert_eq!(r.status, 403);
    // Operator assigns, but manages no accounts.
    assert_eq!(
        api.post(ADD_ALPHA, Auth::Token(&op), &add_endpoint_body("nvme0"))
            .status,
        202
    );
    let r = api.post(
        "/redfish/v1/AccountService/Accounts",
        Auth::Token(&op),
        r#"{"UserName":"y","Password":"yyyyyyyy","RoleId":"ReadOnly"}"#,
    );
    assert_eq!(r.status, 403);
    // Basic authentication carries the same role.
    let r = api.post(
        ADD_ALPHA,
        Auth::Basic("watcher", "watcher-new-pw"),
        &add_endpoint_body("dma0"),
    );
    assert_eq!(r.status, 403);
}

#[test]
fn accounts_are_managed_by_administrators() {
    let api = start();
    let admin = api.admin();
    let r = api.post(
        "/redfish/v1/AccountService/Accounts",
        Auth::Token(&admin),
        r#"{"UserName":"ops","Password":"short","RoleId":"Operator"}"#,
    );
    assert_eq!(
        (r.status, r.code()),
        (400, "Base.1.22.PasswordIncorrectLength")
    );
    let r = api.post(
        "/redfish/v1/AccountService/Accounts",
        Auth::Token(&admin),
        r#"{"UserName":"ops","Password":"ops-password","RoleId":"Operator"}"#,
    );
    assert_eq!(r.status, 201);
    let uri = r.header("Location").unwrap().to_string();
    assert_eq!(r.json["Password"], Value::Null);
    let r = api.post(
        "/redfish/v1/AccountService/Accounts",
        Auth::Token(&admin),
        r#"{"UserName":"ops","Password":"ops-password","RoleId":"Operator"}"#,
    );
    assert_eq!(
        (r.status, r.code()),
        (409, "Base.1.22.ResourceAlreadyExists")
    );
    let r = api.post(
        "/redfish/v1/AccountService/Accounts",
        Auth::Token(&admin),
        r#"{"UserName":"x","Password":"xxxxxxxxx","RoleId":"God"}"#,
    );
    assert_eq!(
        (r.status, r.code()),
        (400, "Base.1.22.PropertyValueNotInList")
    );
    let (ops, _) = api.login("ops", "ops-password");
    // Stale ETag on an account PATCH.
    let r = api.patch(
        &uri,
        Auth::Token(&admin),
        &[("If-Match", "W/\"stale\"")],
        r#"{"Enabled":false}"#,
    );
    assert_eq!(r.status, 412);
    assert_eq!(
        api.get("/redfish/v1/Chassis", Auth::Token(&ops)).status,
        200
    );
    // Disabling ends its sessions and its Basic logins.
    let r = api.patch(&uri, Auth::Token(&admin), &[], r#"{"Enabled":false}"#);
    assert_eq!(r.status, 200);
    assert_eq!(
        api.get("/redfish/v1/Chassis", Auth::Token(&ops)).status,
        401
    );
    assert_eq!(
        api.get("/redfish/v1/Chassis", Auth::Basic("ops", "ops-password"))
            .status,
        401
    );
    assert_eq!(api.delete(&uri, Auth::Token(&admin)).status, 204);
    assert_eq!(api.get(&uri, Auth::Token(&admin)).status, 404);
    // The last Administrator stays.
    let r = api.delete("/redfish/v1/AccountService/Accounts/1", Auth::Token(&admin));
    assert_eq!(r.status, 409);
    let r = api.patch(
        "/redfish/v1/AccountService/Accounts/1",
        Auth::Token(&admin),
        &[],
        r#"{"RoleId":"ReadOnly"}"#,
    );
    assert_eq!(r.status, 409);
    let roles = api.get(
        "/redfish/v1/AccountService/Roles/Operator",
        Auth::Token(&admin),
    );
    assert_eq!(
        roles.json["AssignedPrivileges"],
        serde_json::json!(["Login", "ConfigureSelf", "ConfigureComponents"])
    );
}

#[test]
fn a_connection_policy_is_patched_with_its_etag_by_an_operator_and_bad_values_change_nothing() {
    use pcietun::mgmt::Pool;
    const CONN: &str = "/redfish/v1/Fabrics/PCIe/Connections/nvme0";
    let api = start();
    let admin = api.admin();
    let op = api.user(&admin, "op1", "Operator");
    let ro = api.user(&admin, "viewer", "ReadOnly");
    assert_eq!(
        api.post(ADD_ALPHA, Auth::Token(&op), &add_endpoint_body("nvme0"))
            .status,
        202
    );
    let r = api.get(CONN, Auth::Token(&ro));
    assert_eq!(r.status, 200);
    let p = &r.json["Oem"]["Pcietun"]["Policy"];
    assert!(
        p["MaxBytesPerSecondUp"].is_null()
            && p["MaxBytesPerSecondDown"].is_null()
            && p["MaxIOPS"].is_null()
            && p["Priority"] == 10,
        "{p}"
    );
    let etag = r.header("ETag").unwrap().to_string();
    let body =
        r#"{"Oem":{"Pcietun":{"Policy":{"MaxIOPS":100000,"MaxBytesPerSecondUp":2000000000}}}}"#;
    // ReadOnly may not.
    let r = api.patch(CONN, Auth::Token(&ro), &[("If-Match", &etag)], body);
    assert_eq!(
        (r.status, r.code()),
        (403, "Base.1.22.InsufficientPrivilege")
    );
    assert!(api.pool.policy("nvme0").unwrap().is_unlimited());
    // Bad values: each a 400 naming the property, nothing changes.
    for (bad, code) in [
        (
            r#"{"Oem":{"Pcietun":{"Policy":{"MaxIOPS":0}}}}"#,
            "Base.1.22.PropertyValueOutOfRange",
        ),
        (
            r#"{"Oem":{"Pcietun":{"Policy":{"MaxIOPS":-5}}}}"#,
            "Base.1.22.PropertyValueOutOfRange",
        ),
        (
            r#"{"Oem":{"Pcietun":{"Policy":{"MaxIOPS":"fast"}}}}"#,
            "Base.1.22.PropertyValueTypeError",
        ),
        (
            r#"{"Oem":{"Pcietun":{"Policy":{"MaxIOPS":1.5}}}}"#,
            "Base.1.22.PropertyValueTypeError",
        ),
        (
            r#"{"Oem":{"Pcietun":{"Policy":{"Weight":3}}}}"#,
            "Base.1.22.PropertyUnknown",
        ),
        (
            r#"{"Oem":{"Pcietun":{"Policy":{"Priority":0}}}}"#,
            "Base.1.22.PropertyValueOutOfRange",
        ),
        (
            r#"{"Oem":{"Pcietun":{"Policy":{"Priority":101}}}}"#,
            "Base.1.22.PropertyValueOutOfRange",
        ),
        (
            r#"{"Oem":{"Pcietun":{"Policy":{"Priority":"high"}}}}"#,
            "Base.1.22.PropertyValueTypeError",
        ),
        (
            r#"{"Oem":{"Pcietun":{"State":"attached"}}}"#,
            "Base.1.22.PropertyNotWritable",
        ),
        (r#"{"Name":"x"}"#, "Base.1.22.PropertyNotWritable"),
        (
            r#"{"Oem":{"Pcietun":{"Policy":{}}}}"#,
            "Base.1.22.EmptyJSON",
        ),
        (r#"{"Oem":"#, "Base.1.22.MalformedJSON"),
    ] {
        let r = api.patch(CONN, Auth::Token(&op), &[("If-Match", &etag)], bad);
        assert_eq!((r.status, r.code()), (400, code), "{bad}: {}", r.text);
        assert!(api.pool.policy("nvme0").unwrap().is_unlimited(), "{bad}");
    }
    // A stale ETag: 412.
    let r = api.patch(CONN, Auth::Token(&op), &[("If-Match", "W/\"0000\"")], body);
    assert_eq!((r.status, r.code()), (412, "Base.1.22.PreconditionFailed"));
    // The operator with the current ETag: applied, shown, and the ETag changes.
    let r = api.patch(CONN, Auth::Token(&op), &[("If-Match", &etag)], body);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["Oem"]["Pcietun"]["Policy"]["MaxIOPS"], 100000);
    let p = api.pool.policy("nvme0").unwrap();
    assert_eq!(
        (p.max_iops, p.max_bytes_per_sec_up, p.max_bytes_per_sec_down),
        (Some(100000), Some(2_000_000_000), None)
    );
    let r = api.get(CONN, Auth::Token(&ro));
    assert_eq!(
        r.json["Oem"]["Pcietun"]["Policy"]["MaxBytesPerSecondUp"],
        2_000_000_000u64
    );
    assert_ne!(
        r.header("ETag").unwrap(),
        etag,
        "a policy change changes the ETag"
    );
    let r = api.patch(CONN, Auth::Token(&op), &[("If-Match", &etag)], body);
    assert_eq!(r.status, 412, "the old ETag is stale now");
    // null lifts one cap, the others stay.
    let r = api.patch(
        CONN,
        Auth::Token(&op),
        &[],
        r#"{"Oem":{"Pcietun":{"Policy":{"MaxIOPS":null}}}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let p = api.pool.policy("nvme0").unwrap();
    assert_eq!(
        (p.max_iops, p.max_bytes_per_sec_up),
        (None, Some(2_000_000_000))
    );
    // A priority: set alone (the caps stay), shown, back to the default with null.
    let r = api.patch(
        CONN,
        Auth::Token(&op),
        &[],
        r#"{"Oem":{"Pcietun":{"Policy":{"Priority":30}}}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["Oem"]["Pcietun"]["Policy"]["Priority"], 30);
    let p = api.pool.policy("nvme0").unwrap();
    assert_eq!(
        (p.priority, p.max_bytes_per_sec_up),
        (Some(30), Some(2_000_000_000))
    );
    let r = api.patch(
        CONN,
        Auth::Token(&op),
        &[],
        r#"{"Oem":{"Pcietun":{"Policy":{"Priority":null,"MaxBytesPerSecondUp":null}}}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["Oem"]["Pcietun"]["Policy"]["Priority"], 10);
    assert!(api.pool.policy("nvme0").unwrap().is_unlimited());
}
