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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::tasks::timestamp;
use super::uri::{collection, connection_uri, system_uri, target_uri};
use crate::mgmt::pool::{FunctionState, PoolEvent, VmState};
use crate::sync::MutexExt;

/// How many events are kept for `Last-Event-ID` replay.
pub const BACKLOG: usize = 256;

/// How many live streams may be open at once.
pub const MAX_STREAMS: usize = 16;

/// The registry of the messages events carry.
pub const RESOURCE_EVENT: &str = "ResourceEvent.1.4";

/// The SSE stream's URI.
pub const SSE_URI: &str = "/redfish/v1/EventService/SSE";

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
}

/// (MessageId within ResourceEvent, args, severity, EventType, origin URI).
fn describe(
    e: &PoolEvent,
) -> (
    &'static str,
    Vec<String>,
    &'static str,
    &'static str,
    String,
) {
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
        _ => "The state of resource '%1' has changed to %2.",
    };
    let mut out = template.to_string();
    for (i, a) in args.iter().enumerate().rev() {
        out = out.replace(&format!("%{}", i + 1), a);
    }
    out
}

impl EventLog {
    /// An empty log.
    pub fn new() -> Arc<Self> {
        let (tx, _) = broadcast::channel(BACKLOG);
        Arc::new(EventLog {
            backlog: Mutex::new((1, VecDeque::new())),
            tx,
            streams: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Record a pool event (called from the pool's threads; never blocks on a client).
    pub fn push(&self, event: &PoolEvent, now: SystemTime) {
        let (msg, args, severity, event_type, origin) = describe(event);
        self.record(msg, args, severity, event_type, origin, now);
    }

    /// Record that a rule or a schedule (docs/api.md "Rules", "Schedules") is moving a
    /// function: a Warning `ResourceStateChanged` of its Connection whose second argument says
    /// what and why (with the Task's name). The function's own state changes follow as pool
    /// events.
    pub fn push_rule(&self, function: &str, what: &str, now: SystemTime) {
        self.record(
            "ResourceStateChanged",
            vec![connection_uri(function), what.to_string()],
            "Warning",
            "StatusChange",
            connection_uri(function),
            now,
        );
    }

    fn record(
        &self,
        msg: &str,
        args: Vec<String>,
        severity: &str,
        event_type: &str,
        origin: String,
        now: SystemTime,
    ) {
        let mut b = self.backlog.lock_or_recover();
        let id = b.0;
        b.0 += 1;
        let record = Arc::new(EventRecord {
            id,
            json: json!({
                "@odata.type": "#Event.v1_13_0.Event",
                "Id": id.to_string(),
                "Name": "pcietun pool event",
                "Events": [{
                    "MemberId": "0",
                    "EventId": id.to_string(),
                    "EventType": event_type,
                    "EventTimestamp": timestamp(now),
                    "MessageId": format!("{RESOURCE_EVENT}.{msg}"),
                    "Message": message_text(msg, &args),
                    "MessageArgs": args,
                    "MessageSeverity": severity,
                    "OriginOfCondition": { "@odata.id": origin },
                }],
            }),
        });
        if b.1.len() >= BACKLOG {
            b.1.pop_front();
        }
        b.1.push_back(record.clone());
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

pub(crate) fn event_service() -> Value {
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
        "SSEFilterPropertiesSupported": {
            "EventFormatType": false,
            "MessageId": false,
            "MetricReportDefinition": false,
            "OriginResource": false,
            "RegistryPrefix": false,
            "ResourceType": false,
            "SubordinateResources": false,
        },
        "Subscriptions": { "@odata.id": "/redfish/v1/EventService/Subscriptions" },
    })
}

pub(crate) fn subscriptions() -> Value {
    collection(
        "/redfish/v1/EventService/Subscriptions",
        "EventDestinationCollection",
        "Event subscriptions",
        Vec::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
