//! The rules of the management API (docs/api.md "Rules") end to end over HTTP, on the in-memory
//! pool with a manual clock: the lost-session rule takes a lost host's functions at its
//! deadline and not before, a host back in time keeps them; a lease returns its function when
//! it ends and is shown on the Connection; both are Tasks and events saying why; the rules
//! persist and are restored by a restarted service; bad input and missing privileges are
//! refused with Redfish errors and change nothing.
//!
//! The server also ticks the rules once a real second; the tests call `Service::tick`
//! themselves after moving the clock and assert on the outcome (state, Tasks), so either tick
//! may be the one that acts.

mod mgmt_common;

use std::sync::Arc;
use std::time::Duration;

use mgmt_common::*;
use pcietun::mgmt::fake::FakePool;
use pcietun::mgmt::pool::HostSession;
use pcietun::mgmt::store::{MemoryStore, Store};
use serde_json::{json, Value};

const FABRIC: &str = "/redfish/v1/Fabrics/PCIe";
const CONN_NVME0: &str = "/redfish/v1/Fabrics/PCIe/Connections/nvme0";

/// An account `name` with `role`, used with HTTP Basic (session tokens would expire as the
/// tests move the clock by hours).
fn basic_user(api: &Api, name: &'static str, role: &str) -> Auth<'static> {
    api.user(&api.admin(), name, role);
    Auth::Basic(name, Box::leak(format!("{name}-password").into_boxed_str()))
}

fn set_reclaim(api: &Api, token: Auth<'_>, value: Value) -> Resp {
    api.patch(
        FABRIC,
        token,
        &[],
        &json!({"Oem": {"Pcietun": {"Rules": {"ReclaimAfterSeconds": value}}}}).to_string(),
    )
}

fn assign(api: &Api, token: Auth<'_>, function: &str, lease: Option<Value>) -> Resp {
    let mut body = json!({
        "Endpoint": {"@odata.id": format!("/redfish/v1/Fabrics/PCIe/Endpoints/fn-{function}")}
    });
    if let Some(l) = lease {
        body["Oem"] = json!({"Pcietun": {"LeaseSeconds": l}});
    }
    api.post(ADD_ALPHA, token, &body.to_string())
}

/// Every Task of the service, as JSON.
fn tasks(api: &Api, token: Auth<'_>) -> Vec<Value> {
    let list = api.get("/redfish/v1/TaskService/Tasks", token);
    list.json["Members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| api.get(m["@odata.id"].as_str().unwrap(), token).json)
        .collect()
}

fn reclaim_tasks(api: &Api, token: Auth<'_>) -> Vec<Value> {
    tasks(api, token)
        .into_iter()
        .filter(|t| t["Name"].as_str().unwrap_or("").starts_with("Reclaim "))
        .collect()
}

fn tick_after(api: &Api, by: Duration) {
    api.clock.advance(by);
    api.service.tick();
}

#[test]
fn a_lost_host_loses_its_functions_at_the_deadline_and_not_before() {
    let api = start();
    let admin = Auth::Basic(ADMIN, ADMIN_PW);
    let r = set_reclaim(&api, admin, json!(600));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json["Oem"]["Pcietun"]["Rules"]["ReclaimAfterSeconds"],
        600
    );
    assert_eq!(assign(&api, admin, "nvme0", None).status, 202);
    assert_eq!(api.state("nvme0"), "assigned");

    assert!(api.pool.set_session("alpha", HostSession::Disconnected));
    let fabric = api.get(FABRIC, admin).json;
    let pending = &fabric["Oem"]["Pcietun"]["PendingReclaims"];
    assert_eq!(pending.as_array().unwrap().len(), 1, "{fabric}");
    assert_eq!(pending[0]["Function"], "nvme0");
    assert_eq!(pending[0]["Host"], "alpha");
    assert!(pending[0]["ReclaimAt"].is_string(), "{pending}");

    tick_after(&api, Duration::from_secs(599));
    assert_eq!(api.state("nvme0"), "assigned", "taken before the deadline");
    assert!(reclaim_tasks(&api, admin).is_empty());

    tick_after(&api, Duration::from_secs(1));
    assert_eq!(
        api.state("nvme0"),
        "unassigned",
        "not taken at the deadline"
    );
    let t = reclaim_tasks(&api, admin);
    assert_eq!(t.len(), 1, "{t:?}");
    let name = t[0]["Name"].as_str().unwrap();
    assert!(
        name.contains("nvme0 from alpha") && name.contains("session has been lost for 600 s"),
        "{name}"
    );
    assert_eq!(t[0]["TaskState"], "Completed", "{}", t[0]);
    assert_eq!(t[0]["Payload"]["HttpOperation"], "DELETE");
    assert_eq!(t[0]["Payload"]["TargetUri"], CONN_NVME0);
    // The event says why; the Connection is gone, nothing is pending.
    let events: Vec<String> = api
        .service
        .events()
        .backlog_after(0)
        .iter()
        .map(|r| r.json.to_string())
        .collect();
    let ours: Vec<&String> = events
        .iter()
        .filter(|l| l.contains("reclaimed by a rule") && l.contains("lost for 600 s"))
        .collect();
    assert_eq!(ours.len(), 1, "{events:#?}");
    assert!(
        ours[0].contains("\"MessageSeverity\":\"Warning\""),
        "{}",
        ours[0]
    );
    assert!(ours[0].contains(CONN_NVME0), "{}", ours[0]);
    assert_eq!(api.get(CONN_NVME0, admin).status, 404);
    let fabric = api.get(FABRIC, admin).json;
    assert_eq!(fabric["Oem"]["Pcietun"]["PendingReclaims"], json!([]));
    // Nothing more happens on later ticks.
    tick_after(&api, Duration::from_secs(3600));
    assert_eq!(reclaim_tasks(&api, admin).len(), 1);
}

#[test]
fn a_host_back_before_the_deadline_keeps_its_functions() {
    let api = start();
    let admin = Auth::Basic(ADMIN, ADMIN_PW);
    assert_eq!(set_reclaim(&api, admin, json!(600)).status, 200);
    assert_eq!(assign(&api, admin, "nvme0", None).status, 202);
    api.pool.set_session("alpha", HostSession::Disconnected);
    tick_after(&api, Duration::from_secs(599));
    api.pool.set_session("alpha", HostSession::Connected);
    tick_after(&api, Duration::from_secs(3600));
    assert_eq!(api.state("nvme0"), "assigned");
    // A new loss starts the deadline afresh.
    api.pool.set_session("alpha", HostSession::Disconnected);
    tick_after(&api, Duration::from_secs(599));
    assert_eq!(api.state("nvme0"), "assigned");
    tick_after(&api, Duration::from_secs(1));
    assert_eq!(api.state("nvme0"), "unassigned");
}

#[test]
fn without_the_rule_lost_hosts_keep_their_functions() {
    let api = start();
    let admin = Auth::Basic(ADMIN, ADMIN_PW);
    let fabric = api.get(FABRIC, admin).json;
    assert_eq!(
        fabric["Oem"]["Pcietun"]["Rules"]["ReclaimAfterSeconds"],
        Value::Null
    );
    assert_eq!(assign(&api, admin, "nvme0", None).status, 202);
    api.pool.set_session("alpha", HostSession::Disconnected);
    tick_after(&api, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(api.state("nvme0"), "assigned");
    // null turns the rule off; setting it counts the time already lost.
    let r = set_reclaim(&api, admin, Value::Null);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json["Oem"]["Pcietun"]["Rules"]["ReclaimAfterSeconds"],
        Value::Null
    );
    tick_after(&api, Duration::from_secs(1));
    assert_eq!(api.state("nvme0"), "assigned");
    assert_eq!(set_reclaim(&api, admin, json!(60)).status, 200);
    api.service.tick();
    assert_eq!(api.state("nvme0"), "unassigned");
}

#[test]
fn a_lease_returns_its_function_when_it_ends_and_shows_on_the_connection() {
    let api = start();
    let operator = basic_user(&api, "ops", "Operator");
    let r = assign(&api, operator, "nvme0", Some(json!(7200)));
    assert_eq!(r.status, 202, "{}", r.text);
    let conn = api.get(CONN_NVME0, operator).json;
    let lease = &conn["Oem"]["Pcietun"]["Lease"];
    assert_eq!(lease["Seconds"], 7200, "{conn}");
    assert!(lease["ExpiresAt"].as_str().unwrap().ends_with("+00:00"));
    let fabric = api.get(FABRIC, operator).json;
    let leases = fabric["Oem"]["Pcietun"]["Leases"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (leases[0]["Function"].clone(), leases[0]["Host"].clone()),
        (json!("nvme0"), json!("alpha"))
    );
    assert_eq!(leases[0]["ExpiresAt"], lease["ExpiresAt"]);

    tick_after(&api, Duration::from_secs(7199));
    assert_eq!(
        api.state("nvme0"),
        "assigned",
        "taken before the lease ended"
    );
    tick_after(&api, Duration::from_secs(1));
    assert_eq!(
        api.state("nvme0"),
        "unassigned",
        "kept after the lease ended"
    );
    let t = reclaim_tasks(&api, operator);
    assert_eq!(t.len(), 1);
    assert!(
        t[0]["Name"]
            .as_str()
            .unwrap()
            .contains("its lease of 7200 s ended"),
        "{}",
        t[0]
    );
    let fabric = api.get(FABRIC, operator).json;
    assert_eq!(fabric["Oem"]["Pcietun"]["Leases"], json!([]));
}

#[test]
fn a_lease_ends_with_its_assignment() {
    let api = start();
    let admin = Auth::Basic(ADMIN, ADMIN_PW);
    assert_eq!(assign(&api, admin, "nvme0", Some(json!(60))).status, 202);
    assert_eq!(api.delete(CONN_NVME0, admin).status, 202);
    assert_eq!(api.state("nvme0"), "unassigned");
    // Assigned again without a lease: the old one does not take it.
    assert_eq!(assign(&api, admin, "nvme0", None).status, 202);
    let conn = api.get(CONN_NVME0, admin).json;
    assert!(conn["Oem"]["Pcietun"].get("Lease").is_none(), "{conn}");
    tick_after(&api, Duration::from_secs(3600));
    assert_eq!(api.state("nvme0"), "assigned");
}

#[test]
fn bad_rules_and_leases_are_refused_and_change_nothing() {
    let api = start();
    let admin = Auth::Basic(ADMIN, ADMIN_PW);
    let before = api.get(FABRIC, admin).json;
    let patch = |body: Value| api.patch(FABRIC, admin, &[], &body.to_string());
    let cases = [
        (
            json!({"Oem": {"Pcietun": {"Rules": {"ReclaimAfterSeconds": 600, "Extra": 1}}}}),
            "PropertyUnknown",
            "/Oem/Pcietun/Rules/Extra",
        ),
        (
            json!({"Oem": {"Pcietun": {"Rules": {"ReclaimAfterSeconds": "10m"}}}}),
            "PropertyValueTypeError",
            "ReclaimAfterSeconds",
        ),
        (
            json!({"Oem": {"Pcietun": {"Rules": {"ReclaimAfterSeconds": 0}}}}),
            "PropertyValueOutOfRange",
            "ReclaimAfterSeconds",
        ),
        (
            json!({"Oem": {"Pcietun": {"Rules": {"ReclaimAfterSeconds": -5}}}}),
            "PropertyValueOutOfRange",
            "ReclaimAfterSeconds",
        ),
        (
            json!({"Oem": {"Pcietun": {"Rules": {"ReclaimAfterSeconds": 2_592_001}}}}),
            "PropertyValueOutOfRange",
            "2592000",
        ),
        (
            json!({"Oem": {"Pcietun": {"PendingReclaims": []}}}),
            "PropertyNotWritable",
            "PendingReclaims",
        ),
        (
            json!({"FabricType": "PCIe"}),
            "PropertyNotWritable",
            "FabricType",
        ),
        (json!({}), "EmptyJSON", ""),
    ];
    for (body, code, names) in cases {
        let r = patch(body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.code().ends_with(code), "{body}: {}", r.text);
        assert!(r.text.contains(names), "{body}: {}", r.text);
    }
    let r = api.patch(
        "/redfish/v1/Fabrics/Other",
        admin,
        &[],
        &json!({"Oem": {"Pcietun": {"Rules": {"ReclaimAfterSeconds": 5}}}}).to_string(),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    // A stale ETag.
    let r = api.patch(
        FABRIC,
        admin,
        &[("If-Match", "W/\"0000\"")],
        &json!({"Oem": {"Pcietun": {"Rules": {"ReclaimAfterSeconds": 5}}}}).to_string(),
    );
    assert_eq!(r.status, 412, "{}", r.text);
    assert_eq!(api.get(FABRIC, admin).json, before);

    // Leases: 0, a string, too long, an unknown function or host.
    let leases = [
        (json!(0), "ActionParameterValueFormatError", "LeaseSeconds"),
        (json!(-1), "ActionParameterValueFormatError", "LeaseSeconds"),
        (json!("2h"), "ActionParameterValueTypeError", "LeaseSeconds"),
        (json!(1.5), "ActionParameterValueTypeError", "LeaseSeconds"),
        (
            json!(366 * 24 * 3600 + 1),
            "ActionParameterValueFormatError",
            "31622400",
        ),
    ];
    for (lease, code, names) in leases {
        let r = assign(&api, admin, "nvme0", Some(lease.clone()));
        assert_eq!(r.status, 400, "{lease}: {}", r.text);
        assert!(r.code().ends_with(code), "{lease}: {}", r.text);
        assert!(r.text.contains(names), "{lease}: {}", r.text);
        assert_eq!(api.state("nvme0"), "unassigned");
    }
    let r = assign(&api, admin, "nope", Some(json!(60)));
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("nope"), "{}", r.text);
    let r = api.post(
        "/redfish/v1/Fabrics/PCIe/Zones/nohost/Actions/Zone.AddEndpoint",
        admin,
        &json!({"Endpoint": {"@odata.id": "/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0"},
                "Oem": {"Pcietun": {"LeaseSeconds": 60}}})
        .to_string(),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.text.contains("nohost"), "{}", r.text);
    let fabric = api.get(FABRIC, admin).json;
    assert_eq!(fabric["Oem"]["Pcietun"]["Leases"], json!([]));
    assert!(tasks(&api, admin).is_empty());
}

#[test]
fn changing_the_rule_needs_an_administrator_and_a_lease_an_operator() {
    let api = start();
    let admin = Auth::Basic(ADMIN, ADMIN_PW);
    let viewer = basic_user(&api, "viewer", "ReadOnly");
    let operator = basic_user(&api, "ops", "Operator");
    for token in [viewer, operator] {
        let r = set_reclaim(&api, token, json!(60));
        assert_eq!(r.status, 403, "{}", r.text);
        assert!(r.text.contains("ConfigureManager"), "{}", r.text);
    }
    let r = assign(&api, viewer, "nvme0", Some(json!(60)));
    assert_eq!(r.status, 403, "{}", r.text);
    // Everyone may read them.
    let fabric = api.get(FABRIC, viewer).json;
    assert_eq!(
        fabric["Oem"]["Pcietun"]["Rules"]["ReclaimAfterSeconds"],
        Value::Null
    );
    assert_eq!(assign(&api, operator, "nvme0", Some(json!(60))).status, 202);
    // The administrator may change the rule.
    assert_eq!(set_reclaim(&api, admin, json!(60)).status, 200);
}

#[test]
fn rules_and_leases_survive_a_restart_and_stored_rules_win_over_the_configuration() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let pool = Arc::new(FakePool::sample());
    let configured = |secs| {
        let store = store.clone();
        move |o: &mut pcietun::mgmt::redfish::ServiceOptions| {
            o.store = store;
            o.reclaim_after = Some(Duration::from_secs(secs));
        }
    };
    let expires;
    {
        let api = start_custom(pool.clone(), configured(300));
        let admin = Auth::Basic(ADMIN, ADMIN_PW);
        let fabric = api.get(FABRIC, admin).json;
        assert_eq!(
            fabric["Oem"]["Pcietun"]["Rules"]["ReclaimAfterSeconds"], 300,
            "the configuration's rule applies while none is stored"
        );
        assert_eq!(set_reclaim(&api, admin, json!(900)).status, 200);
        assert_eq!(assign(&api, admin, "nvme0", Some(json!(7200))).status, 202);
        // Reading the Task waits for its commit.
        assert_eq!(reclaim_tasks(&api, admin).len(), 0);
        expires = api.get(CONN_NVME0, admin).json["Oem"]["Pcietun"]["Lease"]["ExpiresAt"].clone();
        api.server.shutdown();
    }
    let api = start_custom(pool, configured(300));
    let admin = Auth::Basic(ADMIN, ADMIN_PW);
    let fabric = api.get(FABRIC, admin).json;
    assert_eq!(
        fabric["Oem"]["Pcietun"]["Rules"]["ReclaimAfterSeconds"], 900,
        "{fabric}"
    );
    let conn = api.get(CONN_NVME0, admin).json;
    assert_eq!(conn["Oem"]["Pcietun"]["Lease"]["Seconds"], 7200, "{conn}");
    assert_eq!(conn["Oem"]["Pcietun"]["Lease"]["ExpiresAt"], expires);
    // The restored lease still ends (the new clock started at about the same moment).
    tick_after(&api, Duration::from_secs(7201));
    assert_eq!(api.state("nvme0"), "unassigned");
}
