//! The EventService and its server-sent-events stream: pool events arrive as Redfish Events
//! with ResourceEvent messages, `Last-Event-ID` replays what a client missed, the stream needs
//! credentials and ends when the session that opened it ends.

mod mgmt_common;

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use mgmt_common::*;
use serde_json::Value;

/// Open the stream; returns a line reader.
fn open(api: &Api, token: &str, last: Option<&str>) -> (u16, String, Box<dyn BufRead + Send>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut b = ureq::http::Request::builder()
        .uri(format!("{}/redfish/v1/EventService/SSE", api.url))
        .header("X-Auth-Token", token);
    if let Some(l) = last {
        b = b.header("Last-Event-ID", l);
    }
    let resp = agent.run(b.body(()).unwrap()).unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let reader: Box<dyn Read + Send> = Box::new(resp.into_body().into_reader());
    (status, ct, Box::new(BufReader::new(reader)))
}

/// The next event (id, Event JSON), skipping comments; None at the end of the stream.
fn next_event(r: &mut dyn BufRead) -> Option<(u64, Value)> {
    let mut id = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.parse().ok();
        } else if let Some(d) = line.strip_prefix("data: ") {
            return Some((id?, serde_json::from_str(d).unwrap()));
        }
    }
}

fn message(ev: &Value) -> (&str, &str) {
    let e = &ev["Events"][0];
    (
        e["MessageId"].as_str().unwrap(),
        e["Message"].as_str().unwrap(),
    )
}

#[test]
fn pool_events_stream_to_clients() {
    let api = start();
    let admin = api.admin();
    let es = api.get("/redfish/v1/EventService", Auth::Token(&admin));
    assert_eq!(es.status, 200);
    assert_eq!(
        es.json["ServerSentEventUri"],
        "/redfish/v1/EventService/SSE"
    );
    let subs = api.get(
        "/redfish/v1/EventService/Subscriptions",
        Auth::Token(&admin),
    );
    assert_eq!(subs.json["Members@odata.count"], 0);
    assert_eq!(
        api.get("/redfish/v1/EventService/SSE", Auth::None).status,
        401
    );
    let r = api.post("/redfish/v1/EventService/SSE", Auth::Token(&admin), "{}");
    assert_eq!((r.status, r.code()), (405, "Base.1.22.OperationNotAllowed"));

    let viewer = api.user(&admin, "viewer", "ReadOnly");
    let (status, ct, mut stream) = open(&api, &viewer, None);
    assert_eq!(status, 200);
    assert_eq!(ct, "text/event-stream");
    assert_eq!(
        api.post(ADD_ALPHA, Auth::Token(&admin), &add_endpoint_body("nvme0"))
            .status,
        202
    );
    let (id1, ev) = next_event(&mut *stream).unwrap();
    assert_eq!(ev["@odata.type"], "#Event.v1_13_0.Event");
    assert_eq!(
        message(&ev),
        (
            "ResourceEvent.1.4.ResourceStateChanged",
            "The state of resource '/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0' has changed to attaching (alpha)."
        )
    );
    let (id2, ev) = next_event(&mut *stream).unwrap();
    assert_eq!(id2, id1 + 1);
    assert!(
        message(&ev).1.ends_with("changed to assigned (alpha)."),
        "{ev}"
    );
    assert_eq!(
        ev["Events"][0]["OriginOfCondition"]["@odata.id"],
        "/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0"
    );

    api.pool.set_failed("dma0", "AER uncorrectable fatal");
    let (_, ev) = next_event(&mut *stream).unwrap();
    assert_eq!(
        message(&ev).0,
        "ResourceEvent.1.4.ResourceStatusChangedCritical"
    );
    assert_eq!(ev["Events"][0]["MessageSeverity"], "Critical");

    // A client that reconnects with Last-Event-ID gets what came after it.
    let (_, _, mut again) = open(&api, &admin, Some(&id1.to_string()));
    let (id, _) = next_event(&mut *again).unwrap();
    assert_eq!(id, id2);
    // The replay covers every kept event after it, then the stream goes on live.
    let (_, ev) = next_event(&mut *again).unwrap();
    assert_eq!(
        message(&ev).0,
        "ResourceEvent.1.4.ResourceStatusChangedCritical"
    );
    drop(again);

    // Logging out ends the viewer's stream: the next event is not delivered to it.
    let sessions = api.get("/redfish/v1/SessionService/Sessions", Auth::Token(&admin));
    for m in sessions.json["Members"].as_array().unwrap() {
        let uri = m["@odata.id"].as_str().unwrap();
        let s = api.get(uri, Auth::Token(&admin));
        if s.json["UserName"] == "viewer" {
            assert_eq!(api.delete(uri, Auth::Token(&admin)).status, 204);
        }
    }
    assert_eq!(
        api.post(
            ADD_ALPHA,
            Auth::Token(&admin),
            &add_endpoint_body("dma0.vf1")
        )
        .status,
        202
    );
    assert!(
        next_event(&mut *stream).is_none(),
        "the stream outlived its session"
    );
}

/// An assignment that names a VM shows it on its Connection (`Pending`), a host's report of the
/// VM's attach is an event on that Connection and its new state, and the VM goes with the
/// assignment.
#[test]
fn vm_events_show_on_the_connection_and_the_stream() {
    let api = start();
    let admin = api.admin();
    let (_, _, mut stream) = open(&api, &admin, None);
    let body = serde_json::json!({
        "Endpoint": {"@odata.id": "/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0"},
        "Oem": {"Pcietun": {"Vm": {"Name": "web1"}}},
    })
    .to_string();
    let r = api.post(ADD_ALPHA, Auth::Token(&admin), &body);
    assert_eq!(r.status, 202, "{}", r.text);
    const CONN: &str = "/redfish/v1/Fabrics/PCIe/Connections/nvme0";
    let c = api.get(CONN, Auth::Token(&admin));
    assert_eq!(c.json["Oem"]["Pcietun"]["Vm"]["Name"], "web1", "{}", c.json);
    assert_eq!(c.json["Oem"]["Pcietun"]["Vm"]["State"], "Pending");
    // A name no host can carry is refused before anything starts.
    let bad = body.replace("web1", "web 1");
    let r = api.post(ADD_ALPHA, Auth::Token(&admin), &bad);
    assert_eq!(
        (r.status, r.code()),
        (400, "Base.1.22.ActionParameterValueFormatError")
    );

    assert!(api
        .pool
        .report_vm("nvme0", "web1", pcietun::mgmt::pool::VmState::Attached));
    let c = api.get(CONN, Auth::Token(&admin));
    assert_eq!(c.json["Oem"]["Pcietun"]["Vm"]["State"], "Attached");
    assert_eq!(
        c.json["Oem"]["Pcietun"]["Vm"]["Message"],
        "the function's device is in the VM"
    );
    let vm_event = loop {
        let (_, ev) = next_event(&mut *stream).unwrap();
        if ev["Events"][0]["OriginOfCondition"]["@odata.id"] == CONN {
            break ev;
        }
    };
    assert_eq!(
        message(&vm_event),
        (
            "ResourceEvent.1.4.ResourceStateChanged",
            "The state of resource '/redfish/v1/Fabrics/PCIe/Connections/nvme0' has changed to VM web1 on alpha Attached."
        )
    );

    // Unassigned: no Connection, no VM.
    use pcietun::mgmt::pool::Pool as _;
    let r = api.delete(CONN, Auth::Token(&admin));
    assert_eq!(r.status, 202, "{}", r.text);
    let f = api.pool.functions();
    let f = f.iter().find(|f| f.id == "nvme0").unwrap();
    assert_eq!(f.vm, None);
}
