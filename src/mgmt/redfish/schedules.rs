//! Schedules as API resources (docs/api.md "Schedules"): listed in `Oem.Pcietun.Schedules` of
//! the Fabric, added and removed with its OEM actions `#Pcietun.AddSchedule` and
//! `#Pcietun.RemoveSchedule` (Operator: a schedule is assignments made ahead of time), persisted
//! in the store's `Rules` table, and applied by [`Service::tick`] with the same orderly
//! hand-over as a manual move: the function is unassigned from its current owner (a Task), and
//! on a later tick, once it is free, assigned to the host the schedule names (another Task);
//! each Task's name says which schedule did it.
//!
//! What conflicts, refused with a reason (the engine, [`crate::mgmt::schedule`], defines the
//! windows): a window that shares a minute with another schedule of the function (400
//! `ActionParameterValueConflict` naming it); a function assigned by hand (409
//! `ResourceInUse`: unassign it first); and, the other way round, assigning, unassigning or
//! moving by hand a function that has a schedule (409, naming the schedule). A schedule does
//! not give its function to a host whose session is down; it waits for the host.

use axum::http::{Method, Request};
use bytes::Bytes;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::fabric::{check_fabric, Op};
use super::rules::task_id;
use super::uri::{connection_uri, zone_uri, ADD_SCHEDULE, FABRIC_URI, REMOVE_SCHEDULE};
use super::{body, Caller, Reply, Service, Snapshot};
use crate::mgmt::auth::Privilege;
use crate::mgmt::pool::{FunctionState, HostSession};
use crate::mgmt::schedule::{format_minute, parse_minute, Conflict, Schedule, Schedules, Window};
use crate::mgmt::store::{
    meta_u64, schedule_key, Change, Durable, ScheduleRecord, StoreError, Table, NEXT_SCHEDULE_ID,
    SCHEDULE_PREFIX,
};
use crate::sync::MutexExt;

fn record(s: &Schedule) -> ScheduleRecord {
    ScheduleRecord {
        function: s.function.clone(),
        host: s.host.clone(),
        start: format_minute(s.window.start),
        end: format_minute(s.window.end),
        then: s.then.clone(),
    }
}

/// The stored schedules (an entry that does not decode is logged and skipped).
pub(crate) fn load_schedules(durable: &Durable) -> Result<Schedules, StoreError> {
    let mut out = Schedules::new();
    for (key, value) in durable.store().list(Table::Rules)? {
        let Some(id) = key.strip_prefix(SCHEDULE_PREFIX) else {
            continue;
        };
        let parsed = serde_json::from_slice::<ScheduleRecord>(&value)
            .ok()
            .and_then(|r| {
                let window = Window::new(parse_minute(&r.start)?, parse_minute(&r.end)?)?;
                Some(Schedule {
                    id: id.parse().ok()?,
                    function: r.function,
                    host: r.host,
                    window,
                    then: r.then,
                })
            });
        match parsed {
            Some(s) => out.insert(s),
            None => tracing::warn!(
                key = %key.escape_debug(),
                "management store: a stored schedule does not decode; skipped"
            ),
        }
    }
    Ok(out)
}

/// One entry of `Oem.Pcietun.Schedules`.
pub(crate) fn schedule_json(s: &Schedule, active: bool) -> Value {
    json!({
        "Id": s.id.to_string(),
        "Function": s.function,
        "Host": s.host,
        "Start": format_minute(s.window.start),
        "End": format_minute(s.window.end),
        "Then": s.then,
        "Active": active,
    })
}

impl Service {
    /// `Oem.Pcietun.Schedules` of the Fabric.
    pub(crate) fn schedules_json(&self) -> Value {
        let now = self.clock.wall();
        let schedules = self.schedules.lock_or_recover();
        Value::Array(
            schedules
                .all()
                .map(|s| {
                    let active = schedules
                        .desired(&s.function, now)
                        .is_some_and(|d| d.in_window && d.by.id == s.id);
                    schedule_json(s, active)
                })
                .collect(),
        )
    }

    /// The refusal of a manual change of `function` while schedules manage it.
    pub(crate) fn check_unscheduled(&self, function: &str) -> ApiResult<()> {
        let schedules = self.schedules.lock_or_recover();
        let mine: Vec<String> = schedules
            .of_function(function)
            .map(Schedule::describe)
            .collect();
        if mine.is_empty() {
            Ok(())
        } else {
            Err(ApiError::in_use(format!(
                "function {function:?} is managed by {}: remove the schedule first \
                 (#{REMOVE_SCHEDULE} on {FABRIC_URI})",
                mine.join("; ")
            )))
        }
    }

    /// `POST …/Fabrics/PCIe/Actions/Oem/{action}`.
    pub(crate) fn fabric_action(
        &self,
        caller: &Caller,
        req: &Request<Bytes>,
        f: &str,
        action: &str,
    ) -> ApiResult<Reply> {
        let action: &'static str = match action {
            ADD_SCHEDULE => ADD_SCHEDULE,
            REMOVE_SCHEDULE => REMOVE_SCHEDULE,
            other => return Err(ApiError::action_not_supported(other)),
        };
        caller.require(Privilege::ConfigureComponents)?;
        check_fabric(f)?;
        if action == ADD_SCHEDULE {
            self.add_schedule(req, action)
        } else {
            self.remove_schedule(req, action)
        }
    }

    fn add_schedule(&self, req: &Request<Bytes>, action: &'static str) -> ApiResult<Reply> {
        let p = body::schedule_create(req.body(), action)?;
        let _change = self.change.lock_or_recover();
        let s = self.snapshot();
        let func = s.function(&p.function).ok_or_else(|| {
            ApiError::referenced_not_found(
                "PCIeFunction",
                &p.function,
                format!("unknown function {:?}", p.function),
            )
        })?;
        for (name, host) in [("Host", Some(&p.host)), ("Then", p.then.as_ref())] {
            if let Some(h) = host {
                if s.host(h).is_none() {
                    return Err(ApiError::referenced_not_found(
                        "ComputerSystem",
                        h,
                        format!("{name}: unknown host {h:?}"),
                    ));
                }
            }
        }
        let mut schedules = self.schedules.lock_or_recover();
        if schedules.of_function(&p.function).next().is_none() {
            if let Some(owner) = func.state.host() {
                return Err(ApiError::in_use(format!(
                    "function {:?} is assigned to host {owner:?} by hand; unassign it before \
                     scheduling it",
                    p.function
                )));
            }
        }
        let id = meta_u64(self.durable.store(), NEXT_SCHEDULE_ID)
            .map_err(|e| ApiError::internal(format!("the schedule could not be stored: {e}")))?
            .max(1);
        let new = Schedule {
            id,
            function: p.function.clone(),
            host: p.host.clone(),
            window: p.window,
            then: p.then.clone(),
        };
        if let Err(c) = schedules.check(&new) {
            return Err(match c {
                Conflict::Overlaps(other) => ApiError::action_parameter_conflict(
                    "Start",
                    &format_minute(new.window.start),
                    format!(
                        "the window {} overlaps {} of function {:?}",
                        new.window.describe(),
                        other.describe(),
                        p.function
                    ),
                ),
                Conflict::ThenIsHost => ApiError::action_parameter_conflict(
                    "Then",
                    &p.host,
                    "Then is the window's own host: the function would never move",
                ),
                Conflict::TooMany => ApiError::in_use(format!(
                    "{} schedules exist already; remove one first",
                    crate::mgmt::schedule::MAX_SCHEDULES
                )),
            });
        }
        let value = serde_json::to_vec(&record(&new))
            .map_err(|e| ApiError::internal(format!("the schedule could not be encoded: {e}")))?;
        self.durable
            .commit(vec![
                Change::Put {
                    table: Table::Rules,
                    key: schedule_key(id),
                    value,
                },
                Change::Put {
                    table: Table::Meta,
                    key: NEXT_SCHEDULE_ID.into(),
                    value: (id + 1).to_string().into_bytes(),
                },
            ])
            .map_err(|e| {
                tracing::error!("management store: a schedule was not saved: {e}");
                ApiError::internal(format!("the schedule could not be stored: {e}"))
            })?;
        tracing::info!("management API: {} added", new.describe());
        schedules.insert(new);
        drop(schedules);
        Ok(Reply::ok(self.get_fabric(super::FABRIC)?))
    }

    fn remove_schedule(&self, req: &Request<Bytes>, action: &'static str) -> ApiResult<Reply> {
        let id = body::schedule_remove(req.body(), action)?;
        let _change = self.change.lock_or_recover();
        let mut schedules = self.schedules.lock_or_recover();
        let Some(gone) = schedules.get(id).cloned() else {
            return Err(ApiError::referenced_not_found(
                "Schedule",
                &id.to_string(),
                format!("no schedule {id}"),
            ));
        };
        self.durable
            .commit(vec![Change::Delete {
                table: Table::Rules,
                key: schedule_key(id),
            }])
            .map_err(|e| {
                tracing::error!("management store: a schedule removal was not saved: {e}");
                ApiError::internal(format!("the schedule removal could not be stored: {e}"))
            })?;
        schedules.remove(id);
        drop(schedules);
        tracing::info!(
            "management API: {} removed; the function stays where it is",
            gone.describe()
        );
        Ok(Reply::ok(self.get_fabric(super::FABRIC)?))
    }

    /// Move every scheduled function one step towards where its schedules want it (called
    /// by [`Service::tick`] with the change lock held); the ids of the Tasks started.
    pub(crate) fn apply_schedules(&self, s: &Snapshot) -> Vec<u64> {
        let now = self.clock.wall();
        let plans: Vec<(String, crate::mgmt::schedule::Desired)> = {
            let schedules = self.schedules.lock_or_recover();
            let functions: std::collections::BTreeSet<&str> =
                schedules.all().map(|x| x.function.as_str()).collect();
            functions
                .into_iter()
                .filter_map(|f| Some((f.to_string(), schedules.desired(f, now)?)))
                .collect()
        };
        let mut started = Vec::new();
        for (function, want) in plans {
            let Some(func) = s.function(&function) else {
                continue;
            };
            let why = format!(
                "{} ({} window)",
                want.by.describe(),
                if want.in_window {
                    "in its"
                } else {
                    "after its"
                }
            );
            let (op, name, method, uri) = match (&func.state, &want.owner) {
                (FunctionState::Assigned { host }, Some(w)) if host == w => continue,
                (FunctionState::Assigned { host }, _) => (
                    Op::Unassign {
                        function: function.clone(),
                    },
                    format!("Schedule: unassign {function} from {host}: {why}"),
                    Method::DELETE,
                    connection_uri(&function),
                ),
                (FunctionState::Unassigned, Some(w)) => {
                    let up = s
                        .host(w)
                        .is_some_and(|h| h.session == HostSession::Connected);
                    if !up {
                        continue;
                    }
                    (
                        Op::Assign {
                            function: function.clone(),
                            host: w.clone(),
                            vm: None,
                            lease: None,
                        },
                        format!("Schedule: assign {function} to {w}: {why}"),
                        Method::POST,
                        format!("{}/Actions/Zone.AddEndpoint", zone_uri(w)),
                    )
                }
                // Already free, or attaching, detaching, resetting, failed: later.
                _ => continue,
            };
            match self.start_ops(s, name.clone(), &method, &uri, vec![op], true) {
                Ok(reply) => {
                    tracing::info!("management API: {name}");
                    self.events
                        .push_rule(&function, &format!("moved by a schedule ({name})"), now);
                    started.extend(task_id(&reply));
                }
                Err(e) => tracing::warn!(
                    function = %function,
                    "management API: a schedule could not move the function now (retried): {}",
                    e.body()
                ),
            }
        }
        started
    }
}
