//! Push event subscriptions (EventService/Subscriptions) against the in-process service over
//! a real HTTP server, delivering to a tiny HTTP receiver on loopback: events arrive in order
//! with the subscription's Context and only as its filters say; a refusing receiver gets the
//! retries, then the subscription is suspended (or removed under TerminateAfterRetries) and
//! stays so after a restart; ReadOnly cannot subscribe; bad destinations and unsupported
//! filters are 400 and change nothing; PCIe error counters raise one event per function per
//! tick with the count since the last.

mod mgmt_common;
mod mgmt_push_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mgmt_common::*;
use mgmt_push_common::*;
use pcietun::mgmt::fake::FakePool;
use pcietun::mgmt::pool::FunctionMetrics;
use pcietun::mgmt::push::RetryPolicy;
use pcietun::mgmt::store::{MemoryStore, Store};
use serde_json::{json, Value};

const SUBS: &str = "/redfish/v1/EventService/Subscriptions";
const WAIT: Duration = Duration::from_secs(10);

fn quick(store: Arc<dyn Store>) -> Api {
    start_custom(Arc::new(FakePool::sample()), move |o| {
        o.store = store;
        o.delivery_retry = RetryPolicy {
            attempts: 2,
            interval: Duration::from_millis(300),
        };
    })
}

fn subscribe(api: &Api, token: &str, body: Value) -> Resp {
    api.post(SUBS, Auth::Token(token), &body.to_string())
}

fn members(api: &Api, token: &str) -> Vec<String> {
    let r = api.get(SUBS, Auth::Token(token));
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["Members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["@odata.id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_subscriber_gets_the_assignment_events_in_order_with_its_context() {
    let api = quick(Arc::new(MemoryStore::new()));
    let admin = api.admin();
    let operator = api.user(&admin, "op", "Operator");
    let rx = Receiver::start(204);
    let r = subscribe(
        &api,
        &operator,
        json!({"Destination": rx.url, "Protocol": "Redfish", "Context": "ticket-42"}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let loc = r.header("Location").unwrap().to_string();
    assert_eq!(loc, format!("{SUBS}/1"));
    assert_eq!(
        r.json["@odata.type"],
        "#EventDestination.v1_17_0.EventDestination"
    );
    assert_eq!(r.json["Status"]["State"], "Enabled");
    assert_eq!(r.json["Context"], "ticket-42");
    assert_eq!(r.json["DeliveryRetryPolicy"], "SuspendRetries");
    assert_eq!(members(&api, &admin), vec![loc.clone()]);
    let got = api.get(&loc, Auth::Token(&admin));
    assert_eq!(
        (got.status, &got.json["Destination"]),
        (200, &json!(rx.url))
    );
    let es = api.get("/redfish/v1/EventService", Auth::Token(&admin));
    assert_eq!(es.json["DeliveryRetryAttempts"], 2);

    assert_eq!(
        api.post(
            ADD_ALPHA,
            Auth::Token(&operator),
            &add_endpoint_body("nvme0")
        )
        .status,
        202
    );
    let (_, line, ev) = rx.next(WAIT).unwrap();
    assert!(
        line.starts_with("POST /events HTTP/1.1 application/json"),
        "{line}"
    );
    assert_eq!(ev["Context"], "ticket-42");
    assert_eq!(ev["@odata.type"], "#Event.v1_13_0.Event");
    let first: u64 = ev["Id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        records(&ev),
        vec![(
            "ResourceEvent.1.4.ResourceStateChanged".into(),
            "The state of resource '/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0' has changed to attaching (alpha).".into()
        )]
    );
    let ev = rx.event(WAIT);
    assert_eq!(ev["Id"], (first + 1).to_string());
    assert!(
        records(&ev)[0].1.ends_with("changed to assigned (alpha)."),
        "{ev}"
    );
    assert_eq!(ev["Context"], "ticket-42");
    let r = api.delete(
        "/redfish/v1/Fabrics/PCIe/Connections/nvme0",
        Auth::Token(&operator),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let mut ids = vec![first, first + 1];
    let mut states = Vec::new();
    while states.last().map(String::as_str) != Some("unassigned") {
        let ev = rx.event(WAIT);
        ids.push(ev["Id"].as_str().unwrap().parse().unwrap());
        let m = &records(&ev)[0].1;
        states.push(
            m.rsplit("changed to ")
                .next()
                .unwrap()
                .trim_end_matches('.')
                .split(' ')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(states.first().map(String::as_str), Some("detaching"));
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "in order: {ids:?}"
    );

    // Deleted: nothing more arrives.
    let r = api.delete(&loc, Auth::Token(&operator));
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(members(&api, &admin).is_empty());
    assert_eq!(api.get(&loc, Auth::Token(&admin)).status, 404);
    api.post(
        ADD_ALPHA,
        Auth::Token(&operator),
        &add_endpoint_body("dma0"),
    );
    assert!(rx.quiet(Duration::from_millis(500)));
}

#[test]
fn filters_choose_the_events() {
    let api = quick(Arc::new(MemoryStore::new()));
    let admin = api.admin();
    let systems = Receiver::start(200);
    let created = Receiver::start(200);
    assert_eq!(
        subscribe(
            &api,
            &admin,
            json!({"Destination": systems.url, "Protocol": "Redfish", "Context": "s",
                   "OriginResources": [{"@odata.id": "/redfish/v1/Systems"}],
                   "SubordinateResources": true}),
        )
        .status,
        201
    );
    assert_eq!(
        subscribe(
            &api,
            &admin,
            json!({"Destination": created.url, "Protocol": "Redfish", "Context": "c",
                   "RegistryPrefixes": ["ResourceEvent"],
                   "MessageIds": ["ResourceEvent.ResourceStatusChangedCritical"],
                   "EventTypes": ["StatusChange"]}),
        )
        .status,
        201
    );
    api.post(ADD_ALPHA, Auth::Token(&admin), &add_endpoint_body("nvme0"));
    api.pool.set_failed("dma0", "AER uncorrectable fatal");
    let ev = created.event(WAIT);
    assert_eq!(
        records(&ev)[0].0,
        "ResourceEvent.1.4.ResourceStatusChangedCritical"
    );
    assert_eq!(ev["Context"], "c");
    assert!(created.quiet(Duration::from_millis(300)));
    assert!(
        systems.quiet(Duration::from_millis(100)),
        "no host event yet"
    );
}

#[test]
fn a_refusing_receiver_gets_the_retries_then_the_subscription_is_suspended_across_a_restart() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let api = quick(store.clone());
    let admin = api.admin();
    let rx = Receiver::start(503);
    let r = subscribe(
        &api,
        &admin,
        json!({"Destination": rx.url, "Protocol": "Redfish", "Context": "x"}),
    );
    assert_eq!(r.status, 201);
    let loc = r.header("Location").unwrap().to_string();
    api.post(ADD_ALPHA, Auth::Token(&admin), &add_endpoint_body("nvme0"));
    // The first POST and 2 retries, each after the 300 ms interval, all of the first event.
    let mut times = Vec::new();
    for _ in 0..3 {
        let (t, _, ev) = rx.next(WAIT).unwrap();
        assert!(records(&ev)[0].1.ends_with("attaching (alpha)."), "{ev}");
        times.push(t);
    }
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= Duration::from_millis(280), "retry after {gap:?}");
    }
    assert!(
        rx.quiet(Duration::from_millis(800)),
        "no more after the retries"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let s = api.get(&loc, Auth::Token(&admin));
        if s.json["Status"]["State"] == "Disabled" {
            break;
        }
        assert!(Instant::now() < deadline, "{}", s.text);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Suspended: new events are not sent even once the receiver would take them.
    rx.status.store(200, std::sync::atomic::Ordering::SeqCst);
    api.post(ADD_ALPHA, Auth::Token(&admin), &add_endpoint_body("dma0"));
    assert!(rx.quiet(Duration::from_millis(500)));

    // A new service over the same store: the subscription is back, still suspended.
    drop(api);
    let again = quick(store);
    let admin = again.admin();
    assert_eq!(members(&again, &admin), vec![loc.clone()]);
    let s = again.get(&loc, Auth::Token(&admin));
    assert_eq!(s.json["Status"]["State"], "Disabled", "{}", s.text);
    assert_eq!(s.json["Context"], "x");
    // A new subscription gets the next id, not a reused one.
    let r = subscribe(
        &again,
        &admin,
        json!({"Destination": rx.url, "Protocol": "Redfish"}),
    );
    assert_eq!(r.header("Location"), Some(format!("{SUBS}/2").as_str()));
    assert_eq!(r.json["Context"], "");
}

#[test]
fn terminate_after_retries_removes_the_subscription() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let api = quick(store.clone());
    let admin = api.admin();
    let rx = Receiver::start(500);
    let r = subscribe(
        &api,
        &admin,
        json!({"Destination": rx.url, "Protocol": "Redfish", "Context": "t",
               "DeliveryRetryPolicy": "TerminateAfterRetries"}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    api.post(ADD_ALPHA, Auth::Token(&admin), &add_endpoint_body("nvme0"));
    for _ in 0..3 {
        rx.next(WAIT).unwrap();
    }
    let deadline = Instant::now() + WAIT;
    while !members(&api, &admin).is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(api);
    let again = quick(store);
    let admin = again.admin();
    assert!(
        members(&again, &admin).is_empty(),
        "gone from the store too"
    );
}

#[test]
fn read_only_cannot_subscribe_and_bad_bodies_are_refused() {
    let api = quick(Arc::new(MemoryStore::new()));
    let admin = api.admin();
    let viewer = api.user(&admin, "viewer", "ReadOnly");
    let good = json!({"Destination": "http://127.0.0.1:9/x", "Protocol": "Redfish"});
    let r = subscribe(&api, &viewer, good.clone());
    assert_eq!(
        (r.status, r.code()),
        (403, "Base.1.22.InsufficientPrivilege"),
        "{}",
        r.text
    );
    assert_eq!(api.get(SUBS, Auth::Token(&viewer)).status, 200);
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"Protocol": "Redfish"}),
            "PropertyMissing",
            "Destination",
        ),
        (
            json!({"Destination": "http://h/"}),
            "PropertyMissing",
            "Protocol",
        ),
        (
            json!({"Destination": "ftp://h/x", "Protocol": "Redfish"}),
            "PropertyValueIncorrect",
            "http:// or https://",
        ),
        (
            json!({"Destination": "file:///etc/passwd", "Protocol": "Redfish"}),
            "PropertyValueIncorrect",
            "http:// or https://",
        ),
        (
            json!({"Destination": "http://u:secret@h/x", "Protocol": "Redfish"}),
            "PropertyValueIncorrect",
            "credentials",
        ),
        (
            json!({"Destination": "not a url", "Protocol": "Redfish"}),
            "PropertyValueIncorrect",
            "Destination",
        ),
        (
            json!({"Destination": 7, "Protocol": "Redfish"}),
            "PropertyValueTypeError",
            "Destination",
        ),
        (
            json!({"Destination": "http://h/", "Protocol": "SNMPv2c"}),
            "PropertyValueNotInList",
            "Protocol",
        ),
        (
            json!({"Destination": "http://h/", "Protocol": "Redfish", "SubscriptionType": "SSE"}),
            "PropertyValueNotInList",
            "SubscriptionType",
        ),
        (
            json!({"Destination": "http://h/", "Protocol": "Redfish", "ResourceTypes": ["Systems"]}),
            "PropertyValueIncorrect",
            "ResourceTypes",
        ),
        (
            json!({"Destination": "http://h/", "Protocol": "Redfish", "HttpHeaders": [{"Authorization": "Bearer s3cret"}]}),
            "PropertyValueIncorrect",
            "headers",
        ),
        (
            json!({"Destination": "http://h/", "Protocol": "Redfish", "EventTypes": ["MetricReport"]}),
            "PropertyValueNotInList",
            "EventTypes",
        ),
        (
            json!({"Destination": "http://h/", "Protocol": "Redfish", "RegistryPrefixes": ["Base"]}),
            "PropertyValueNotInList",
            "RegistryPrefixes",
        ),
        (
            json!({"Destination": "http://h/", "Protocol": "Redfish", "MessageIds": ["Base.1.0.Success"]}),
            "PropertyValueIncorrect",
            "ResourceEvent",
        ),
        (
            json!({"Destination": "http://h/", "Protocol": "Redfish", "OriginResources": ["/redfish/v1/Systems"]}),
            "PropertyValueTypeError",
            "OriginResources",
        ),
        (
            json!({"Destination": "http://h/", "Protocol": "Redfish", "OriginResources": [{"@odata.id": "http://elsewhere/"}]}),
            "PropertyValueIncorrect",
            "OriginResources",
        ),
        (
            json!({"Destination": "http://h/", "Protocol": "Redfish", "DeliveryRetryPolicy": "RetryForever"}),
            "PropertyValueNotInList",
            "DeliveryRetryPolicy",
        ),
        (
            json!({"Destination": "http://h/", "Protocol": "Redfish", "Context": "x".repeat(300)}),
            "PropertyValueIncorrect",
            "256",
        ),
        (
            json!({"Destination": "http://h/", "Protocol": "Redfish", "Colour": "red"}),
            "PropertyUnknown",
            "Colour",
        ),
        (
            json!({"Destination": "http://h/", "Protocol": "Redfish", "Status": {}}),
            "PropertyNotWritable",
            "Status",
        ),
    ];
    for (body, code, mentions) in cases {
        let r = subscribe(&api, &admin, body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert_eq!(r.code(), format!("Base.1.22.{code}"), "{body}: {}", r.text);
        assert!(
            r.message().contains(mentions) || r.text.contains(mentions),
            "{body}: {}",
            r.text
        );
        assert!(!r.text.contains("s3cret"), "a header value is never echoed");
    }
    assert!(members(&api, &admin).is_empty(), "nothing was created");
    for _ in 0..16 {
        assert_eq!(subscribe(&api, &admin, good.clone()).status, 201);
    }
    let r = subscribe(&api, &admin, good);
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(
        api.delete(&format!("{SUBS}/1"), Auth::Token(&viewer))
            .status,
        403
    );
    assert_eq!(
        api.delete(&format!("{SUBS}/99"), Auth::Token(&admin))
            .status,
        404
    );
    assert_eq!(
        api.delete(&format!("{SUBS}/+1"), Auth::Token(&admin))
            .status,
        404
    );
    assert_eq!(
        api.patch(&format!("{SUBS}/1"), Auth::Token(&admin), &[], "{}")
            .status,
        405
    );
}

fn errors(f: &str, ur: u64, ca: u64, cto: u64) -> FunctionMetrics {
    FunctionMetrics {
        function: f.into(),
        unsupported_requests: ur,
        completer_aborts: ca,
        completion_timeouts: cto,
        ..FunctionMetrics::default()
    }
}

#[test]
fn pcie_errors_raise_one_event_per_function_per_tick_with_the_count() {
    let api = quick(Arc::new(MemoryStore::new()));
    let admin = api.admin();
    let rx = Receiver::start(200);
    subscribe(
        &api,
        &admin,
        json!({"Destination": rx.url, "Protocol": "Redfish", "Context": "err",
               "MessageIds": ["ResourceEvent.ResourceErrorsDetected"]}),
    );
    // The server ticks once a second on its own; the test ticks too, which only makes the
    // windows shorter: the counts must add up whatever the split.
    api.pool.set_function_metrics(errors("nvme0", 1, 0, 0));
    api.service.tick();
    let ev = rx.event(WAIT);
    assert_eq!(ev["Context"], "err");
    let rec = &ev["Events"][0];
    assert_eq!(rec["MessageId"], "ResourceEvent.1.4.ResourceErrorsDetected");
    assert_eq!(rec["MessageSeverity"], "Warning");
    assert_eq!(rec["EventType"], "Alert");
    assert_eq!(
        rec["OriginOfCondition"]["@odata.id"],
        "/redfish/v1/Chassis/appliance/PCIeDevices/nvme0/PCIeFunctions/nvme0"
    );
    assert_eq!(
        rec["MessageArgs"],
        json!([
            "UnsupportedRequests",
            "Unsupported Request: 1 since the last report, 1 in all"
        ])
    );
    // A burst (many URs and timeouts between two ticks) is one event with the counts.
    for n in 2..=50 {
        api.pool.set_function_metrics(errors("nvme0", n, 0, n / 10));
    }
    api.service.tick();
    let mut ur = 0;
    let mut cto = 0;
    let mut events = 0;
    while let Some((_, _, ev)) = rx.next(Duration::from_millis(1500)) {
        events += 1;
        assert!(events <= 2, "a burst is one event per tick");
        for r in ev["Events"].as_array().unwrap() {
            let arg = r["MessageArgs"][1].as_str().unwrap();
            let n: u64 = arg
                .split(": ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            match r["MessageArgs"][0].as_str().unwrap() {
                "UnsupportedRequests" => ur += n,
                "CompletionTimeouts" => cto += n,
                other => panic!("{other}"),
            }
        }
    }
    assert_eq!((ur, cto), (49, 5));
    // Nothing new: no event.
    api.service.tick();
    assert!(rx.quiet(Duration::from_millis(300)));
    // The SSE stream's backlog carries them too.
    assert!(api
        .service
        .events()
        .backlog_after(0)
        .iter()
        .any(|r| r.json.to_string().contains("ResourceErrorsDetected")));
}
