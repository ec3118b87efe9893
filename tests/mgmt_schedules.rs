//! Schedules end to end over HTTP (docs/api.md "Schedules"), on the in-memory pool with a
//! manual clock set to chosen UTC times of day: a function moves to the window's host when the
//! window opens and to `Then` when it closes, each step a Task naming the schedule; what
//! conflicts is refused with a reason and changes nothing; schedules persist across a restart.
//!
//! The server also ticks once a real second; the tests tick themselves after moving the clock
//! and assert on the outcome, so either tick may act.

mod mgmt_common;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use mgmt_common::*;
use pcietun::mgmt::fake::FakePool;
use pcietun::mgmt::pool::{HostSession, Pool};
use pcietun::mgmt::store::{MemoryStore, Store};
use serde_json::{json, Value};

const FABRIC: &str = "/redfish/v1/Fabrics/PCIe";
const ADD: &str = "/redfish/v1/Fabrics/PCIe/Actions/Oem/Pcietun.AddSchedule";
const REMOVE: &str = "/redfish/v1/Fabrics/PCIe/Actions/Oem/Pcietun.RemoveSchedule";

/// Move the manual clock forward to the next `hh:mm:ss` UTC.
/// An account `name` with `role`, used with HTTP Basic (session tokens would expire as the
/// tests move the clock by hours).
fn basic_user(api: &Api, name: &'static str, role: &str) -> Auth<'static> {
    api.user(&api.admin(), name, role);
    Auth::Basic(name, Box::leak(format!("{name}-password").into_boxed_str()))
}

fn clock_to(api: &Api, hh: u64, mm: u64, ss: u64) {
    let now = unix_secs(api);
    let want = hh * 3600 + mm * 60 + ss;
    let ahead = (86_400 + want - now % 86_400) % 86_400;
    api.clock.advance(Duration::from_secs(ahead));
}

fn unix_secs(api: &Api) -> u64 {
    use pcietun::mgmt::clock::Clock;
    api.clock
        .wall()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The owner of `function` in the pool.
fn owner(api: &Api, function: &str) -> Option<String> {
    api.pool
        .functions()
        .into_iter()
        .find(|f| f.id == function)
        .and_then(|f| f.state.host().map(str::to_string))
}

fn ticks(api: &Api) {
    for _ in 0..3 {
        api.service.tick();
    }
}

fn add(api: &Api, token: Auth<'_>, body: Value) -> Resp {
    api.post(ADD, token, &body.to_string())
}

fn backup(then: Option<&str>) -> Value {
    json!({"Function": "nvme0", "Host": "alpha", "Start": "01:00", "End": "03:00", "Then": then})
}

fn task_names(api: &Api, token: Auth<'_>) -> Vec<String> {
    let list = api.get("/redfish/v1/TaskService/Tasks", token);
    list.json["Members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            api.get(m["@odata.id"].as_str().unwrap(), token).json["Name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn a_schedule_moves_its_function_at_the_window_edges() {
    let api = start();
    api.pool.set_session("beta", HostSession::Connected);
    let operator = basic_user(&api, "ops", "Operator");
    clock_to(&api, 0, 59, 30);
    let r = add(&api, operator, backup(Some("beta")));
    assert_eq!(r.status, 200, "{}", r.text);
    let listed = &r.json["Oem"]["Pcietun"]["Schedules"];
    assert_eq!(
        listed,
        &json!([{"Id": "1", "Function": "nvme0", "Host": "alpha", "Start": "01:00",
                 "End": "03:00", "Then": "beta", "Active": false}])
    );
    // Outside the window the function is where the last window sent it: beta.
    ticks(&api);
    assert_eq!(owner(&api, "nvme0").as_deref(), Some("beta"));
    clock_to(&api, 0, 59, 59);
    ticks(&api);
    assert_eq!(
        owner(&api, "nvme0").as_deref(),
        Some("beta"),
        "moved before 01:00"
    );
    clock_to(&api, 1, 0, 0);
    ticks(&api);
    assert_eq!(
        owner(&api, "nvme0").as_deref(),
        Some("alpha"),
        "not moved at 01:00"
    );
    let fabric = api.get(FABRIC, operator).json;
    assert_eq!(fabric["Oem"]["Pcietun"]["Schedules"][0]["Active"], true);
    clock_to(&api, 2, 59, 59);
    ticks(&api);
    assert_eq!(owner(&api, "nvme0").as_deref(), Some("alpha"));
    clock_to(&api, 3, 0, 0);
    ticks(&api);
    assert_eq!(
        owner(&api, "nvme0").as_deref(),
        Some("beta"),
        "not moved at 03:00"
    );

    let names = task_names(&api, operator);
    let ours: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("Schedule: "))
        .collect();
    assert_eq!(
        ours.iter()
            .map(|n| n.split(':').nth(1).unwrap().trim())
            .collect::<Vec<_>>(),
        [
            "assign nvme0 to beta",
            "unassign nvme0 from beta",
            "assign nvme0 to alpha",
            "unassign nvme0 from alpha",
            "assign nvme0 to beta",
        ],
        "{names:#?}"
    );
    assert!(
        ours[2]
            .contains("schedule 1: nvme0 to alpha 01:00–03:00 UTC, then to beta (in its window)"),
        "{}",
        ours[2]
    );
    let events: Vec<String> = api
        .service
        .events()
        .backlog_after(0)
        .iter()
        .map(|r| r.json.to_string())
        .filter(|e| e.contains("moved by a schedule"))
        .collect();
    assert_eq!(events.len(), 5, "{events:#?}");
}

#[test]
fn without_then_the_function_goes_back_to_the_pool_and_a_lost_host_is_waited_for() {
    let api = start();
    let admin = Auth::Basic(ADMIN, ADMIN_PW);
    clock_to(&api, 1, 30, 0);
    // beta is disconnected: the schedule waits for it.
    let r = add(
        &api,
        admin,
        json!({"Function": "nvme0", "Host": "beta", "Start": "01:00", "End": "03:00"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json["Oem"]["Pcietun"]["Schedules"][0]["Then"],
        Value::Null
    );
    ticks(&api);
    assert_eq!(owner(&api, "nvme0"), None);
    api.pool.set_session("beta", HostSession::Connected);
    ticks(&api);
    assert_eq!(owner(&api, "nvme0").as_deref(), Some("beta"));
    clock_to(&api, 3, 0, 0);
    ticks(&api);
    assert_eq!(
        owner(&api, "nvme0"),
        None,
        "back in the pool after the window"
    );
}

#[test]
fn conflicts_and_bad_schedules_are_refused_and_change_nothing() {
    let api = start();
    let admin = Auth::Basic(ADMIN, ADMIN_PW);
    let viewer = basic_user(&api, "viewer", "ReadOnly");
    clock_to(&api, 12, 0, 0);
    assert_eq!(add(&api, admin, backup(None)).status, 200);
    // A function assigned by hand cannot get a schedule.
    assert_eq!(
        api.post(ADD_ALPHA, admin, &add_endpoint_body("dma0.vf1"))
            .status,
        202
    );
    let before = api.get(FABRIC, admin).json;
    let tasks_before = task_names(&api, admin).len();
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"Function": "nvme0", "Host": "beta", "Start": "02:00", "End": "04:00"}),
            400,
            "ActionParameterValueConflict",
            "overlaps schedule 1",
        ),
        (
            json!({"Function": "nvme0", "Host": "beta", "Start": "23:00", "End": "01:01"}),
            400,
            "ActionParameterValueConflict",
            "overlaps schedule 1",
        ),
        (
            json!({"Function": "dma0.vf1", "Host": "beta", "Start": "05:00", "End": "06:00"}),
            409,
            "ResourceInUse",
            "assigned to host \"alpha\" by hand",
        ),
        (
            json!({"Function": "nvme0", "Host": "beta", "Start": "05:00", "End": "06:00", "Then": "beta"}),
            400,
            "ActionParameterValueConflict",
            "Then is the window's own host",
        ),
        (
            json!({"Function": "nope", "Host": "beta", "Start": "05:00", "End": "06:00"}),
            400,
            "ResourceNotFound",
            "nope",
        ),
        (
            json!({"Function": "dma0", "Host": "nohost", "Start": "05:00", "End": "06:00"}),
            400,
            "ResourceNotFound",
            "nohost",
        ),
        (
            json!({"Function": "dma0", "Host": "beta", "Start": "05:00", "End": "06:00", "Then": "nohost"}),
            400,
            "ResourceNotFound",
            "Then: unknown host",
        ),
        (
            json!({"Function": "dma0", "Host": "beta", "Start": "25:00", "End": "06:00"}),
            400,
            "ActionParameterValueFormatError",
            "HH:MM",
        ),
        (
            json!({"Function": "dma0", "Host": "beta", "Start": "05:00", "End": "05:00"}),
            400,
            "ActionParameterValueConflict",
            "must differ",
        ),
        (
            json!({"Function": "dma0", "Host": "beta", "Start": 5, "End": "06:00"}),
            400,
            "ActionParameterValueTypeError",
            "Start",
        ),
        (
            json!({"Function": "dma0", "Host": "beta", "Start": "05:00"}),
            400,
            "ActionParameterMissing",
            "End",
        ),
        (
            json!({"Function": "dma0", "Host": "beta", "Start": "05:00", "End": "06:00", "Daily": true}),
            400,
            "ActionParameterUnknown",
            "Daily",
        ),
    ];
    for (body, status, code, names) in cases {
        let r = add(&api, admin, body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.text);
        assert!(r.code().ends_with(code), "{body}: {}", r.text);
        assert!(r.message().contains(names), "{body}: {}", r.text);
    }
    let r = add(&api, viewer, backup(None));
    assert_eq!(r.status, 403, "{}", r.text);
    let r = api.post(REMOVE, viewer, &json!({"Id": "1"}).to_string());
    assert_eq!(r.status, 403, "{}", r.text);
    for id in [json!("7"), json!("x"), json!(1)] {
        let r = api.post(REMOVE, admin, &json!({"Id": id}).to_string());
        assert_eq!(r.status, 400, "{id}: {}", r.text);
    }
    assert_eq!(api.get(FABRIC, admin).json, before);
    assert_eq!(task_names(&api, admin).len(), tasks_before);

    // A scheduled function is not changed by hand, and says by which schedule.
    ticks(&api);
    let r = api.post(ADD_ALPHA, admin, &add_endpoint_body("nvme0"));
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.message().contains("managed by schedule 1"), "{}", r.text);
    // Removing the schedule leaves the function where it is and frees it.
    let r = api.post(REMOVE, admin, &json!({"Id": "1"}).to_string());
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["Oem"]["Pcietun"]["Schedules"], json!([]));
    assert_eq!(
        api.post(ADD_ALPHA, admin, &add_endpoint_body("nvme0"))
            .status,
        202
    );
}

#[test]
fn schedules_survive_a_restart_and_ids_are_not_reused() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let pool = Arc::new(FakePool::sample());
    let with_store = || {
        let store = store.clone();
        move |o: &mut pcietun::mgmt::redfish::ServiceOptions| o.store = store
    };
    {
        let api = start_custom(pool.clone(), with_store());
        let admin = Auth::Basic(ADMIN, ADMIN_PW);
        assert_eq!(add(&api, admin, backup(Some("beta"))).status, 200);
        let second = json!({"Function": "dma0", "Host": "alpha", "Start": "04:00", "End": "05:00"});
        assert_eq!(add(&api, admin, second).status, 200);
        let r = api.post(REMOVE, admin, &json!({"Id": "2"}).to_string());
        assert_eq!(r.status, 200);
        api.server.shutdown();
    }
    let api = start_custom(pool, with_store());
    let admin = Auth::Basic(ADMIN, ADMIN_PW);
    let fabric = api.get(FABRIC, admin).json;
    let listed = fabric["Oem"]["Pcietun"]["Schedules"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(listed.len(), 1, "{fabric}");
    assert_eq!(
        (&listed[0]["Id"], &listed[0]["Then"], &listed[0]["Start"]),
        (&json!("1"), &json!("beta"), &json!("01:00"))
    );
    let third = json!({"Function": "dma0", "Host": "alpha", "Start": "04:00", "End": "05:00"});
    let r = add(&api, admin, third);
    assert_eq!(r.status, 200);
    assert_eq!(r.json["Oem"]["Pcietun"]["Schedules"][1]["Id"], "3");
}
