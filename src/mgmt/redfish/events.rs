//! The EventService (EventService.v1_12_0) and its server-sent-events stream (DSP0266
//! §"Server-sent events"): every [`PoolEvent`] becomes a Redfish Event (Event.v1_13_0) with a
//! message of the standard ResourceEvent registry (1.4) — a function added or removed, its
//! state or owner changed, it failed; a host connected or lost — whose `OriginOfCondition` is
//! the resource concerned.
//!
//! The log keeps the newest [`BACKLOG`] events, so a client reconnecting with `Last-Event-ID`
//! gets what it missed (when it is still kept), and fans events out to live streams through a
//! bounded broadcast channel (a stream that falls behind skips what it lost, and is told so by
//! the event ids). The stream itself is served by the HTTP layer ([`crate::mgmt::server`]);
//! this module formats it.
//!
//! Push subscriptions (`EventService/Subscriptions`, EventDestination) are kept here too: each
//! event a subscription's filters accept is queued, with the subscription's `Context`, on its
//! [`crate::mgmt::push::Worker`] while the event is recorded, so every subscriber gets events
//! in id order. The resources and their persistence are [`super::subscriptions`].
//!
//! PCIe errors (docs/api.md "Events"): [`ErrorWatch`] compares each function's Unsupported
//! Request, Completer Abort and Completion Timeout counters once a second with what it last
//! reported, and each function whose counters grew gets one event
//! (`ResourceEvent.1.4.ResourceErrorsDetected`, one record per kind, with the count since the
//! last report) whose `OriginOfCondition` is its PCIeFunction.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::tasks::timestamp;
use super::uri::{collection, connection_uri, function_uri, system_uri, target_uri};
use crate::mgmt::pool::{FunctionMetrics, FunctionState, PoolEvent, VmState};
use crate::mgmt::push::{RetryPolicy, State, Worker};
use crate::mgmt::store::SubscriptionRecord;
use crate::sync::MutexExt;

/// How many events are kept for `Last-Event-ID` replay.
pub const BACKLOG: usize = 256;

/// How many live streams may be open at once.
pub const MAX_STREAMS: usize = 16;

/// The registry of the messages events carry.
pub const RESOURCE_EVENT: &str = "ResourceEvent.1.4";

/// The SSE stream's URI.
pub const SSE_URI: &str = "/redfish/v1/EventService/SSE";

/// The push subscriptions' collection.
pub const SUBSCRIPTIONS_URI: &str = "/redfish/v1/EventService/Subscriptions";

/// The most push subscriptions at once.
pub const MAX_SUBSCRIPTIONS: usize = 16;

/// The `EventType`s events carry (`EventTypesForSubscription`).
pub const EVENT_TYPES: [&str; 4] = ["StatusChange", "ResourceAdded", "ResourceRemoved", "Alert"];

/// A push subscription: what is stored, and its delivery thread (none while suspended).
#[derive(Debug)]
pub struct Subscription {
    /// Its stored form.
    pub record: SubscriptionRecord,
    /// Its delivery.
    pub worker: Worker,
}

/// One record of an Event: (MessageId within ResourceEvent, args, severity, EventType,
/// origin URI).
type Entry = (
    &'static str,
    Vec<String>,
    &'static str,
    &'static str,
    String,
);

/// Whether a subscription's filters accept one event record (DSP0266 "Event subscription":
/// every filter given must match; an empty list does not filter).
pub fn accepts(r: &SubscriptionRecord, record: &Value) -> bool {
    let s = |k: &str| record.get(k).and_then(Value::as_str).unwrap_or("");
    let message_id = s("MessageId");
    let prefix = message_id.split('.').next().unwrap_or("");
    let key = message_id.rsplit('.').next().unwrap_or("");
    let origin = record
        .pointer("/OriginOfCondition/@odata.id")
        .and_then(Value::as_str)
        .unwrap_or("");
    (r.event_types.is_empty() || r.event_types.iter().any(|t| t == s("EventType")))
        && (r.registry_prefixes.is_empty() || r.registry_prefixes.iter().any(|p| p == prefix))
        && (r.message_ids.is_empty()
            || r.message_ids
                .iter()
                .any(|m| m == message_id || *m == format!("{prefix}.{key}")))
        && (r.origin_resources.is_empty()
            || r.origin_resources.iter().any(|o| {
                origin == o
                    || (r.subordinate_resources
                        && origin
                            .strip_prefix(o.as_str())
                            .is_some_and(|rest| rest.starts_with('/')))
            }))
}

/// The body POSTed to a subscriber: the Event with only the records its filters accept and
/// its `Context`; `None` when it accepts none.
pub fn payload_for(r: &SubscriptionRecord, event: &Value) -> Option<Vec<u8>> {
    let records: Vec<Value> = event
        .get("Events")?
        .as_array()?
        .iter()
        .filter(|rec| accepts(r, rec))
        .cloned()
        .collect();
    if records.is_empty() {
        return None;
    }
    let mut out = event.clone();
    out["Events"] = Value::Array(records);
    out["Context"] = Value::String(r.context.clone());
    serde_json::to_vec(&out).ok()
}

/// The kinds of PCIe error a function's counters record.
const ERROR_KINDS: [(&str, &str); 3] = [
    ("UnsupportedRequests", "Unsupported Request"),
    ("CompleterAborts", "Completer Abort"),
    ("CompletionTimeouts", "Completion Timeout"),
];

/// What [`ErrorWatch::observe`] found grown for one function: per kind of
/// [`ERROR_KINDS`] (its index), the count since the last report and the total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReport {
    /// The function.
    pub function: String,
    /// (kind index, since the last report, in all).
    pub grown: Vec<(usize, u64, u64)>,
}

/// The error counters last reported, per function (sans-I/O; called once a second, which is
/// the rate limit: one event per function per call at most).
#[derive(Debug, Default)]
pub struct ErrorWatch {
    last: HashMap<String, [u64; 3]>,
}

impl ErrorWatch {
    /// Compare `metrics` with what was last seen; a function seen for the first time starts
    /// from zero, and a counter that went down (a card replaced at the same id) starts again
    /// from zero. Functions gone are forgotten.
    pub fn observe(&mut self, metrics: &[FunctionMetrics]) -> Vec<ErrorReport> {
        let mut out = Vec::new();
        let mut next = HashMap::with_capacity(metrics.len());
        for m in metrics {
            let now = [
                m.unsupported_requests,
                m.completer_aborts,
                m.completion_timeouts,
            ];
            let before = self.last.get(&m.function).copied().unwrap_or_default();
            let grown: Vec<(usize, u64, u64)> = (0..3)
                .filter(|&i| now[i] != before[i])
                .filter_map(|i| {
                    let since = if now[i] > before[i] {
                        now[i] - before[i]
                    } else {
                        now[i]
                    };
                    (since > 0).then_some((i, since, now[i]))
                })
                .collect();
            if !grown.is_empty() {
                out.push(ErrorReport {
                    function: m.function.clone(),
                    grown,
                });
            }
            next.insert(m.function.clone(), now);
        }
        self.last = next;
        out
    }
}

/// One event, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Monotonic id (the SSE `id:` field).
    pub id: u64,
    /// The Event resource.
    pub json: Value,
}

impl EventRecord {
    /// The SSE frame: `id: N` and one `data:` line of JSON.
    pub fn sse_frame(&self) -> String {
        format!("id: {}\ndata: {}\n\n", self.id, self.json)
    }
}

/// The event log.
#[derive(Debug)]
pub struct EventLog {
    backlog: Mutex<(u64, VecDeque<Arc<EventRecord>>)>,
    tx: broadcast::Sender<Arc<EventRecord>>,
    /// Live streams open now.
    pub streams: std::sync::atomic::AtomicUsize,
    /// Push subscriptions, by id.
    pub(crate) subscriptions: Mutex<BTreeMap<u64, Subscription>>,
    /// The retry settings of every subscription (`DeliveryRetryAttempts`,
    /// `DeliveryRetryIntervalSeconds`).
    pub retry: RetryPolicy,
    /// The PCIe error counters last reported.
    pub(crate) errors: Mutex<ErrorWatch>,
}

/// (MessageId within ResourceEvent, args, severity, EventType, origin URI).
fn describe(e: &PoolEvent) -> Entry {
    match e {
        PoolEvent::FunctionAdded { function } => (
            "ResourceCreated",
            vec![],
            "OK",
            "ResourceAdded",
            target_uri(function),
        ),
        PoolEvent::FunctionRemoved { function } => (
            "ResourceRemoved",
            vec![],
            "OK",
            "ResourceRemoved",
            target_uri(function),
        ),
        PoolEvent::FunctionStateChanged {
            function,
            state: FunctionState::Failed { reason },
        } => (
            "ResourceStatusChangedCritical",
            vec![target_uri(function), format!("Critical ({reason})")],
            "Critical",
            "StatusChange",
            target_uri(function),
        ),
        PoolEvent::FunctionStateChanged { function, state } => {
            let to = match state.host() {
                Some(h) => format!("{} ({h})", state.name()),
                None => state.name().to_string(),
            };
            (
                "ResourceStateChanged",
                vec![target_uri(function), to],
                "OK",
                "StatusChange",
                target_uri(function),
            )
        }
        PoolEvent::FunctionRecovered { function } => (
            "ResourceStatusChangedOK",
            vec![target_uri(function), "OK (recovered)".into()],
            "OK",
            "StatusChange",
            target_uri(function),
        ),
        PoolEvent::HostConnected { host } => (
            "ResourceStateChanged",
            vec![system_uri(host), "connected".into()],
            "OK",
            "StatusChange",
            system_uri(host),
        ),
        PoolEvent::HostLost { host } => (
            "ResourceStateChanged",
            vec![system_uri(host), "disconnected".into()],
            "OK",
            "StatusChange",
            system_uri(host),
        ),
        // Policy throttling (docs/api.md "Policy"): the standard threshold messages, on the
        // Connection, naming the cap's property and its value.
        PoolEvent::PolicyThrottling {
            function,
            property,
            cap,
            throttled,
        } => (
            if *throttled {
                "ResourceWarningThresholdExceeded"
            } else {
                "ResourceWarningThresholdCleared"
            },
            vec![format!("Oem/Pcietun/Policy/{property}"), cap.to_string()],
            if *throttled { "Warning" } else { "OK" },
            "Alert",
            connection_uri(function),
        ),
        // A VM event on the assignment: its Connection's Oem.Pcietun.Vm changed.
        PoolEvent::VmConsumer {
            function,
            host,
            vm,
            state,
        } => (
            "ResourceStateChanged",
            vec![
                connection_uri(function),
                format!("VM {vm} on {host} {}", state.as_redfish()),
            ],
            match state {
                VmState::Failed | VmState::EjectRefused | VmState::SurpriseRemoved => "Warning",
                _ => "OK",
            },
            "StatusChange",
            connection_uri(function),
        ),
    }
}

fn message_text(id: &str, args: &[String]) -> String {
    let template = match id {
        "ResourceCreated" => "The resource was created successfully.",
        "ResourceRemoved" => "The resource was removed successfully.",
        "ResourceStatusChangedCritical" | "ResourceStatusChangedOK" => {
            "The health of resource '%1' has changed to %2."
        }
        "ResourceWarningThresholdExceeded" => {
            "The resource property %1 has exceeded its warning threshold of value %2."
        }
        "ResourceWarningThresholdCleared" => {
            "The resource property %1 has cleared the warning threshold of value %2."
        }
        "ResourceErrorsDetected" => "The resource property %1 has detected errors of type '%2'.",
        _ => "The state of resource '%1' has changed to %2.",
    };
    let mut out = template.to_string();
    for (i, a) in args.iter().enumerate().rev() {
        out = out.replace(&format!("%{}", i + 1), a);
    }
    out
}

impl EventLog {
    /// An empty log with the default retry settings.
    pub fn new() -> Arc<Self> {
        Self::with_retry(RetryPolicy::default())
    }

    /// An empty log whose subscriptions retry as `retry` says.
    pub fn with_retry(retry: RetryPolicy) -> Arc<Self> {
        let (tx, _) = broadcast::channel(BACKLOG);
        Arc::new(EventLog {
            backlog: Mutex::new((1, VecDeque::new())),
            tx,
            streams: std::sync::atomic::AtomicUsize::new(0),
            subscriptions: Mutex::new(BTreeMap::new()),
            retry,
            errors: Mutex::new(ErrorWatch::default()),
        })
    }

    /// Record a pool event (called from the pool's threads; never blocks on a client).
    pub fn push(&self, event: &PoolEvent, now: SystemTime) {
        self.record(vec![describe(event)], now);
    }

    /// Record that a rule or a schedule (docs/api.md "Rules", "Schedules") is moving a
    /// function: a Warning `ResourceStateChanged` of its Connection whose second argument says
    /// what and why (with the Task's name). The function's own state changes follow as pool
    /// events.
    pub fn push_rule(&self, function: &str, what: &str, now: SystemTime) {
        self.record(
            vec![(
                "ResourceStateChanged",
                vec![connection_uri(function), what.to_string()],
                "Warning",
                "StatusChange",
                connection_uri(function),
            )],
            now,
        );
    }

    /// Compare the functions' error counters with the last report and record one event per
    /// function whose counters grew; `origin` gives each function's resource URI (its
    /// PCIeFunction). Called once a second.
    pub fn report_errors(
        &self,
        metrics: &[FunctionMetrics],
        origin: impl Fn(&str) -> Option<String>,
        now: SystemTime,
    ) {
        let reports = self.errors.lock_or_recover().observe(metrics);
        for r in reports {
            let Some(uri) = origin(&r.function) else {
                continue;
            };
            let entries = r
                .grown
                .iter()
                .map(|&(kind, since, total)| {
                    let (property, name) = ERROR_KINDS[kind];
                    (
                        "ResourceErrorsDetected",
                        vec![
                            property.to_string(),
                            format!("{name}: {since} since the last report, {total} in all"),
                        ],
                        "Warning",
                        "Alert",
                        uri.clone(),
                    )
                })
                .collect();
            self.record(entries, now);
        }
    }

    fn record(&self, entries: Vec<Entry>, now: SystemTime) {
        let mut b = self.backlog.lock_or_recover();
        let id = b.0;
        b.0 += 1;
        let records: Vec<Value> = entries
            .into_iter()
            .enumerate()
            .map(|(member, (msg, args, severity, event_type, origin))| {
                json!({
                    "MemberId": member.to_string(),
                    "EventId": id.to_string(),
                    "EventType": event_type,
                    "EventTimestamp": timestamp(now),
                    "MessageId": format!("{RESOURCE_EVENT}.{msg}"),
                    "Message": message_text(msg, &args),
                    "MessageArgs": args,
                    "MessageSeverity": severity,
                    "OriginOfCondition": { "@odata.id": origin },
                })
            })
            .collect();
        let record = Arc::new(EventRecord {
            id,
            json: json!({
                "@odata.type": "#Event.v1_13_0.Event",
                "Id": id.to_string(),
                "Name": "pcietun pool event",
                "Events": records,
            }),
        });
        if b.1.len() >= BACKLOG {
            b.1.pop_front();
        }
        b.1.push_back(record.clone());
        // Queued while holding the backlog lock, so each subscriber gets events in id order.
        for sub in self.subscriptions.lock_or_recover().values() {
            if sub.record.suspended {
                continue;
            }
            if let Some(body) = payload_for(&sub.record, &record.json) {
                sub.worker.offer(Arc::new(body));
            }
        }
        // Sent while holding the backlog lock so a new stream sees each event exactly once:
        // either in its replay or on its receiver.
        let _ = self.tx.send(record);
    }

    /// Events after `last` (all kept ones when `None`) and a receiver for the ones after them.
    pub fn subscribe(
        &self,
        last: Option<u64>,
    ) -> (Vec<Arc<EventRecord>>, broadcast::Receiver<Arc<EventRecord>>) {
        let b = self.backlog.lock_or_recover();
        let replay = match last {
            Some(l) => b.1.iter().filter(|r| r.id > l).cloned().collect(),
            None => Vec::new(),
        };
        (replay, self.tx.subscribe())
    }

    /// Events after `last`, for a request that is not a live stream.
    pub fn backlog_after(&self, last: u64) -> Vec<Arc<EventRecord>> {
        self.subscribe(Some(last)).0
    }
}

impl super::Service {
    /// Report the PCIe errors counted since the last call (once a second, from
    /// [`super::Service::tick`]): one event per function whose counters grew, its
    /// PCIeFunction the origin.
    pub(crate) fn report_errors(&self) {
        let metrics = self.pool.metrics();
        let s = self.snapshot();
        self.events.report_errors(
            &metrics.functions,
            |id| s.function(id).map(|f| function_uri(&s, f)),
            self.clock.wall(),
        );
    }
}

pub(crate) fn event_service(retry: &RetryPolicy) -> Value {
    json!({
        "@odata.id": "/redfish/v1/EventService",
        "@odata.type": "#EventService.v1_12_0.EventService",
        "Id": "EventService",
        "Name": "Event Service",
        "ServiceEnabled": true,
        "Status": { "State": "Enabled", "Health": "OK" },
        "ServerSentEventUri": SSE_URI,
        "EventFormatTypes": ["Event"],
        "RegistryPrefixes": ["ResourceEvent"],
        "EventTypesForSubscription": EVENT_TYPES,
        "SubordinateResourcesSupported": true,
        "DeliveryRetryAttempts": retry.attempts,
        "DeliveryRetryIntervalSeconds": retry.interval.as_secs(),
        "SSEFilterPropertiesSupported": {
            "EventFormatType": false,
            "MessageId": false,
            "MetricReportDefinition": false,
            "OriginResource": false,
            "RegistryPrefix": false,
            "ResourceType": false,
            "SubordinateResources": false,
        },
        "Subscriptions": { "@odata.id": SUBSCRIPTIONS_URI },
    })
}

/// The URI of subscription `id`.
pub(crate) fn subscription_uri(id: u64) -> String {
    format!("{SUBSCRIPTIONS_URI}/{id}")
}

/// The Subscriptions collection.
pub(crate) fn subscriptions(log: &EventLog) -> Value {
    collection(
        SUBSCRIPTIONS_URI,
        "EventDestinationCollection",
        "Event subscriptions",
        log.subscriptions
            .lock_or_recover()
            .keys()
            .map(|id| subscription_uri(*id))
            .collect(),
    )
}

/// One subscription (EventDestination).
pub(crate) fn subscription_json(id: u64, sub: &Subscription) -> Value {
    let r = &sub.record;
    let (state, ..) = sub.worker.status();
    let suspended = r.suspended || state != State::Active;
    let mut v = json!({
        "@odata.id": subscription_uri(id),
        "@odata.type": "#EventDestination.v1_17_0.EventDestination",
        "Id": id.to_string(),
        "Name": format!("Event subscription {id}"),
        "Destination": r.destination,
        "Protocol": "Redfish",
        "SubscriptionType": "RedfishEvent",
        "EventFormatType": "Event",
        "Context": r.context,
        "RegistryPrefixes": r.registry_prefixes,
        "MessageIds": r.message_ids,
        "OriginResources": r.origin_resources.iter().map(|o| json!({ "@odata.id": o })).collect::<Vec<_>>(),
        "SubordinateResources": r.subordinate_resources,
        "DeliveryRetryPolicy": r.retry_policy,
        "Status": {
            "State": if suspended { "Disabled" } else { "Enabled" },
            "Health": if suspended { "Warning" } else { "OK" },
        },
    });
    if !r.event_types.is_empty() {
        v["EventTypes"] = json!(r.event_types);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(context: &str) -> SubscriptionRecord {
        SubscriptionRecord {
            destination: "http://127.0.0.1:1/".into(),
            context: context.into(),
            event_types: vec![],
            registry_prefixes: vec![],
            message_ids: vec![],
            origin_resources: vec![],
            subordinate_resources: false,
            retry_policy: "SuspendRetries".into(),
            suspended: false,
        }
    }

    fn metrics(f: &str, ur: u64, ca: u64, cto: u64) -> FunctionMetrics {
        FunctionMetrics {
            function: f.into(),
            unsupported_requests: ur,
            completer_aborts: ca,
            completion_timeouts: cto,
            ..FunctionMetrics::default()
        }
    }

    #[test]
    fn error_counters_are_reported_once_per_call_with_the_count_since_the_last() {
        let mut w = ErrorWatch::default();
        assert_eq!(w.observe(&[metrics("a", 0, 0, 0)]), vec![]);
        let r = w.observe(&[metrics("a", 3, 0, 1), metrics("b", 0, 0, 0)]);
        assert_eq!(
            r,
            vec![ErrorReport {
                function: "a".into(),
                grown: vec![(0, 3, 3), (2, 1, 1)]
            }]
        );
        assert_eq!(w.observe(&[metrics("a", 3, 0, 1)]), vec![]);
        let r = w.observe(&[metrics("a", 10, 2, 1)]);
        assert_eq!(r[0].grown, vec![(0, 7, 10), (1, 2, 2)]);
        // A counter that went down (a new card at the same id) counts from zero again.
        let r = w.observe(&[metrics("a", 4, 2, 1)]);
        assert_eq!(r[0].grown, vec![(0, 4, 4)]);
        let r = w.observe(&[metrics("a", 0, 2, 1)]);
        assert_eq!(r, vec![]);
    }

    #[test]
    fn error_reports_are_one_event_per_function_on_its_pcie_function() {
        let log = EventLog::new();
        let (_, mut rx) = log.subscribe(None);
        let origin = |f: &str| {
            Some(format!(
                "/redfish/v1/Chassis/x/PCIeDevices/d/PCIeFunctions/{f}"
            ))
        };
        log.report_errors(&[metrics("nvme0", 5, 0, 2)], origin, SystemTime::UNIX_EPOCH);
        let ev = rx.try_recv().unwrap();
        let recs = ev.json["Events"].as_array().unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(
            recs[0]["MessageId"],
            "ResourceEvent.1.4.ResourceErrorsDetected"
        );
        assert_eq!(recs[0]["MemberId"], "0");
        assert_eq!(recs[1]["MemberId"], "1");
        assert_eq!(
            recs[0]["Message"],
            "The resource property UnsupportedRequests has detected errors of type \
             'Unsupported Request: 5 since the last report, 5 in all'."
        );
        assert_eq!(recs[1]["MessageArgs"][0], "CompletionTimeouts");
        assert_eq!(recs[0]["MessageSeverity"], "Warning");
        assert_eq!(
            recs[0]["OriginOfCondition"]["@odata.id"],
            "/redfish/v1/Chassis/x/PCIeDevices/d/PCIeFunctions/nvme0"
        );
        log.report_errors(&[metrics("nvme0", 5, 0, 2)], origin, SystemTime::UNIX_EPOCH);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn subscription_filters_pick_records_and_add_the_context() {
        let log = EventLog::new();
        log.push(
            &PoolEvent::HostLost {
                host: "alpha".into(),
            },
            SystemTime::UNIX_EPOCH,
        );
        let ev = log.backlog_after(0).pop().unwrap().json.clone();
        let all = sub("ctx-1");
        let body: Value = serde_json::from_slice(&payload_for(&all, &ev).unwrap()).unwrap();
        assert_eq!(body["Context"], "ctx-1");
        assert_eq!(body["Events"], ev["Events"]);
        let mut f = sub("");
        f.event_types = vec!["Alert".into()];
        assert!(payload_for(&f, &ev).is_none());
        f.event_types = vec!["StatusChange".into()];
        assert!(payload_for(&f, &ev).is_some());
        f.message_ids = vec!["ResourceEvent.ResourceStateChanged".into()];
        assert!(payload_for(&f, &ev).is_some());
        f.message_ids = vec!["ResourceEvent.1.4.ResourceStateChanged".into()];
        assert!(payload_for(&f, &ev).is_some());
        f.message_ids = vec!["ResourceEvent.ResourceCreated".into()];
        assert!(payload_for(&f, &ev).is_none());
        let mut o = sub("");
        o.origin_resources = vec!["/redfish/v1/Systems".into()];
        assert!(payload_for(&o, &ev).is_none());
        o.subordinate_resources = true;
        assert!(payload_for(&o, &ev).is_some());
        o.origin_resources = vec!["/redfish/v1/Sys".into()];
        assert!(
            payload_for(&o, &ev).is_none(),
            "a prefix that is not a parent"
        );
        o.origin_resources = vec!["/redfish/v1/Systems/alpha".into()];
        o.subordinate_resources = false;
        assert!(payload_for(&o, &ev).is_some());
        let mut r = sub("");
        r.registry_prefixes = vec!["Base".into()];
        assert!(payload_for(&r, &ev).is_none());
    }

    #[test]
    fn policy_throttling_is_a_threshold_message_on_the_connection() {
        let log = EventLog::new();
        let (_, mut rx) = log.subscribe(None);
        for throttled in [true, false] {
            log.push(
                &PoolEvent::PolicyThrottling {
                    function: "dma-a".into(),
                    property: "MaxBytesPerSecondUp",
                    cap: 5_000_000,
                    throttled,
                },
                SystemTime::UNIX_EPOCH,
            );
        }
        let on = rx.try_recv().unwrap();
        let ev = &on.json["Events"][0];
        assert_eq!(
            ev["MessageId"],
            "ResourceEvent.1.4.ResourceWarningThresholdExceeded"
        );
        assert_eq!(ev["MessageSeverity"], "Warning");
        assert_eq!(
            ev["Message"],
            "The resource property Oem/Pcietun/Policy/MaxBytesPerSecondUp has exceeded its \
             warning threshold of value 5000000."
        );
        assert_eq!(
            ev["OriginOfCondition"]["@odata.id"],
            "/redfish/v1/Fabrics/PCIe/Connections/dma-a"
        );
        let off = rx.try_recv().unwrap();
        let ev = &off.json["Events"][0];
        assert_eq!(
            ev["MessageId"],
            "ResourceEvent.1.4.ResourceWarningThresholdCleared"
        );
        assert_eq!(ev["MessageSeverity"], "OK");
        assert_eq!(ev["MessageArgs"][1], "5000000");
    }

    #[test]
    fn events_are_logged_replayed_and_broadcast() {
        let log = EventLog::new();
        let now = SystemTime::UNIX_EPOCH;
        log.push(
            &PoolEvent::FunctionAdded {
                function: "nvme0".into(),
            },
            now,
        );
        let (replay, mut rx) = log.subscribe(Some(0));
        assert_eq!(replay.len(), 1);
        log.push(
            &PoolEvent::FunctionStateChanged {
                function: "nvme0".into(),
                state: FunctionState::Assigned {
                    host: "alpha".into(),
                },
            },
            now,
        );
        let live = rx.try_recv().unwrap();
        assert_eq!(live.id, 2);
        let ev = &live.json["Events"][0];
        assert_eq!(ev["MessageId"], "ResourceEvent.1.4.ResourceStateChanged");
        assert_eq!(
            ev["Message"],
            "The state of resource '/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0' has changed to assigned (alpha)."
        );
        assert_eq!(
            ev["OriginOfCondition"]["@odata.id"],
            "/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0"
        );
        assert!(live.sse_frame().starts_with("id: 2\ndata: {"));
        assert!(live.sse_frame().ends_with("}\n\n"));
        assert_eq!(log.backlog_after(1).len(), 1);
        for i in 0..(BACKLOG + 5) {
            log.push(
                &PoolEvent::HostLost {
                    host: format!("h{i}"),
                },
                now,
            );
        }
        assert_eq!(log.backlog_after(0).len(), BACKLOG);
        let failed = PoolEvent::FunctionStateChanged {
            function: "dma0".into(),
            state: FunctionState::Failed {
                reason: "AER fatal".into(),
            },
        };
        log.push(&failed, now);
        let last = log.backlog_after(0).pop().unwrap();
        assert_eq!(last.json["Events"][0]["MessageSeverity"], "Critical");
    }
}
