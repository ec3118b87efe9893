//! The management API's view of the running appliance: [`mgmt::Pool`] implemented over
//! [`appliance::Control`]. The two are sibling layers that never import each other (the
//! layering test holds them to it); this is the one place that translates between them, so the
//! API, `pcietun ctl` and the library callers all drive the same assignments.
//!
//! What it maps: the inventory snapshot (ids, PCI identity, state with the owner, an orderly
//! removal in progress as `detaching`) to `FunctionInfo`; the hosts' sessions and RTT to
//! `HostInfo`; assign/unassign to the serving loop's orderly protocol, each reported through its
//! `Completer` when the loop finishes it (the Task of the API completes then, never before);
//! the loop's pool events to the API's event stream. Not yet mapped: per-function and per-host
//! traffic counters (`metrics()` returns none, so `/metrics` shows assignment and session state
//! only; the counters exist in `ApplianceStats` keyed by session, not yet by host).

use std::sync::Arc;

use pcietun::appliance::control::{ControlError, FunctionStatus, HostStatus, PoolEvent};
use pcietun::appliance::{Control, FunctionId, FunctionState};
use pcietun::mgmt::pool::{
    ApplianceInfo, Completer, EventSink, FunctionInfo, FunctionKind, FunctionState as ApiState,
    Health, HostInfo, HostSession, MetricsSnapshot, Pool, PoolError, PoolEvent as ApiEvent,
};
use pcietun::transport::HostId;

/// The appliance's pool behind the management API.
pub struct AppliancePool {
    control: Control,
    info: ApplianceInfo,
}

impl AppliancePool {
    /// The pool of the appliance that `control` drives.
    pub fn new(control: Control, id: &str) -> AppliancePool {
        AppliancePool {
            control,
            info: ApplianceInfo {
                id: id.to_string(),
                name: format!("pcietun appliance {id}"),
                serial: None,
            },
        }
    }

    fn find(&self, function: &str) -> Result<FunctionStatus, PoolError> {
        self.control
            .functions()
            .into_iter()
            .find(|f| f.entry.id.as_str() == function)
            .ok_or_else(|| PoolError::UnknownFunction {
                function: function.to_string(),
            })
    }
}

/// The API's state of a function: the owner, and whether an orderly removal is under way.
fn api_state(f: &FunctionStatus) -> ApiState {
    match f.entry.state {
        FunctionState::Unassigned => ApiState::Unassigned,
        FunctionState::Assigned(h) if f.detaching => ApiState::Detaching {
            host: h.to_string(),
        },
        FunctionState::Assigned(h) => ApiState::Assigned {
            host: h.to_string(),
        },
        FunctionState::Resetting => ApiState::Resetting,
        FunctionState::Failed => ApiState::Failed {
            reason: f
                .entry
                .failure
                .clone()
                .unwrap_or_else(|| "the function failed (reset or backing store)".into()),
        },
    }
}

fn function_info(f: &FunctionStatus) -> FunctionInfo {
    let e = &f.entry;
    let (kind, number) = match &e.vf_of {
        Some((pf, index)) => (
            FunctionKind::Virtual {
                physical: pf.to_string(),
            },
            *index,
        ),
        None => (FunctionKind::Physical, u16::from(e.bdf.function())),
    };
    // A card is its device number on the appliance.
    let device = format!("card-{:02x}", e.bdf.device());
    FunctionInfo {
        id: e.id.to_string(),
        device,
        function_number: number,
        kind,
        vendor_id: e.ids.vendor,
        device_id: e.ids.device,
        subsystem_vendor_id: e.ids.subsystem_vendor,
        subsystem_id: e.ids.subsystem,
        class_code: e.ids.class,
        revision_id: e.ids.revision,
        model: e.model.clone(),
        state: api_state(f),
        health: if e.state == FunctionState::Failed {
            Health::Critical
        } else {
            Health::Ok
        },
    }
}

fn host_info(h: &HostStatus) -> HostInfo {
    HostInfo {
        id: h.id.to_string(),
        session: if h.connected {
            HostSession::Connected
        } else {
            HostSession::Disconnected
        },
        rtt: h.rtt,
    }
}

/// The API's error for a refusal of the serving loop.
fn pool_error(e: ControlError) -> PoolError {
    match e {
        ControlError::UnknownFunction(f) => PoolError::UnknownFunction {
            function: f.to_string(),
        },
        ControlError::UnknownHost(h) => PoolError::UnknownHost {
            host: h.to_string(),
        },
        ControlError::AlreadyAssigned { function, owner } => PoolError::AlreadyAssigned {
            function: function.to_string(),
            host: owner.to_string(),
        },
        ControlError::NotAssigned(f) => PoolError::NotAssigned {
            function: f.to_string(),
        },
        ControlError::Busy(f) => PoolError::InTransition {
            function: f.to_string(),
            state: "changing owner",
        },
        ControlError::Failed(f) => PoolError::FunctionFailed {
            function: f.to_string(),
            reason: "out of service".into(),
        },
        other => PoolError::Appliance(Box::new(other)),
    }
}

fn function_id(f: &FunctionStatus) -> FunctionId {
    f.entry.id.clone()
}

impl Pool for AppliancePool {
    fn appliance(&self) -> ApplianceInfo {
        self.info.clone()
    }

    fn functions(&self) -> Vec<FunctionInfo> {
        self.control.functions().iter().map(function_info).collect()
    }

    fn hosts(&self) -> Vec<HostInfo> {
        self.control.hosts().iter().map(host_info).collect()
    }

    fn assign(&self, function: &str, host: &str, done: Completer) -> Result<(), PoolError> {
        let f = self.find(function)?;
        let known = self
            .control
            .hosts()
            .iter()
            .any(|h| h.id.to_string() == host);
        let host_id =
            HostId::new(host)
                .ok()
                .filter(|_| known)
                .ok_or_else(|| PoolError::UnknownHost {
                    host: host.to_string(),
                })?;
        // Refuse at once what the loop would refuse, so the API answers 4xx, not a failed Task.
        match api_state(&f) {
            ApiState::Unassigned => {}
            ApiState::Assigned { host } | ApiState::Detaching { host } => {
                return Err(PoolError::AlreadyAssigned {
                    function: function.to_string(),
                    host,
                })
            }
            ApiState::Failed { reason } => {
                return Err(PoolError::FunctionFailed {
                    function: function.to_string(),
                    reason,
                })
            }
            s => {
                return Err(PoolError::InTransition {
                    function: function.to_string(),
                    state: s.name(),
                })
            }
        }
        self.control.assign(function_id(&f), host_id, move |r| {
            done.finish(r.map_err(pool_error))
        });
        Ok(())
    }

    fn unassign(&self, function: &str, done: Completer) -> Result<(), PoolError> {
        let f = self.find(function)?;
        match api_state(&f) {
            ApiState::Assigned { .. } => {}
            ApiState::Unassigned => {
                return Err(PoolError::NotAssigned {
                    function: function.to_string(),
                })
            }
            ApiState::Failed { reason } => {
                return Err(PoolError::FunctionFailed {
                    function: function.to_string(),
                    reason,
                })
            }
            s => {
                return Err(PoolError::InTransition {
                    function: function.to_string(),
                    state: s.name(),
                })
            }
        }
        self.control
            .unassign(function_id(&f), move |r| done.finish(r.map_err(pool_error)));
        Ok(())
    }

    fn subscribe(&self, sink: EventSink) {
        let events = self.control.subscribe();
        let spawned = std::thread::Builder::new()
            .name("api-events".into())
            .spawn(move || {
                // Ends when the serving loop drops its subscribers (the appliance stopped).
                for e in events {
                    let api = match e {
                        PoolEvent::FunctionAdded(f) => ApiEvent::FunctionAdded {
                            function: f.to_string(),
                        },
                        PoolEvent::FunctionRemoved(f) => ApiEvent::FunctionRemoved {
                            function: f.to_string(),
                        },
                        PoolEvent::HostConnected { host, .. } => ApiEvent::HostConnected {
                            host: host.to_string(),
                        },
                        PoolEvent::HostLost(host) => ApiEvent::HostLost {
                            host: host.to_string(),
                        },
                        PoolEvent::FunctionFailed(f) => ApiEvent::FunctionStateChanged {
                            function: f.to_string(),
                            state: ApiState::Failed {
                                reason: "the function failed (reset or backing store)".into(),
                            },
                        },
                        PoolEvent::FunctionRecovered(f) => ApiEvent::FunctionRecovered {
                            function: f.to_string(),
                        },
                        PoolEvent::AssignmentChanged { function, host } => {
                            ApiEvent::FunctionStateChanged {
                                function: function.to_string(),
                                state: match host {
                                    Some(h) => ApiState::Assigned {
                                        host: h.to_string(),
                                    },
                                    None => ApiState::Unassigned,
                                },
                            }
                        }
                    };
                    sink.emit(api);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("management API: cannot start the event thread: {e}");
        }
    }

    fn metrics(&self) -> MetricsSnapshot {
        MetricsSnapshot::default()
    }
}

/// The pool as an `Arc<dyn Pool>` for `mgmt::Server::start`.
pub fn shared(control: Control, id: &str) -> Arc<dyn Pool> {
    Arc::new(AppliancePool::new(control, id))
}
