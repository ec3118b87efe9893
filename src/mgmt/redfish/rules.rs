//! The rules as API resources (docs/api.md "Rules"): `Oem.Pcietun` of the Fabric
//! (`/redfish/v1/Fabrics/PCIe`) holds the appliance-wide lost-session rule
//! (`Rules.ReclaimAfterSeconds`, PATCHable), the reclaims it has pending and every lease;
//! a Connection shows its own lease (`Oem.Pcietun.Lease`), granted with the
//! `Oem.Pcietun.LeaseSeconds` parameter of `#Zone.AddEndpoint`.
//!
//! Redfish has no schema for either, hence OEM properties (described in the CSDL the service
//! serves, `Pcietun_v1.xml`) on the standard resources they belong to, rather than OEM
//! resources of their own.
//!
//! [`Service::tick`] applies the rules: once a second (the HTTP server's ticker; tests call it
//! with a manual clock) it asks the engine ([`crate::mgmt::rules`]) what is due and returns
//! each such function to the pool as a manual unassignment would (a Task, the pool's orderly
//! removal and FLR, the store updated when done), with a Task name and an event that say why.
//!
//! Privileges: changing the lost-session rule needs ConfigureManager (Administrator: it
//! concerns every host); a lease goes with an assignment and needs what assigning needs,
//! ConfigureComponents (Operator).

use std::time::{Duration, UNIX_EPOCH};

use axum::http::{Method, Request};
use bytes::Bytes;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::fabric::{check_fabric, fabric, lease_json, Op};
use super::tasks::timestamp;
use super::uri::{connection_uri, FABRIC_URI};
use super::{body, check_if_match, etag_of, Caller, Reply, Service};
use crate::mgmt::auth::Privilege;
use crate::mgmt::pool::{EventSink, PoolEvent};
use crate::mgmt::rules::{Lease, Rules};
use crate::mgmt::store::{
    load_records, AssignmentRecord, Change, Durable, RulesRecord, StoreError, Table, RULES_KEY,
};
use crate::sync::MutexExt;

/// The rules the service starts with: the stored rules when a PATCH stored some (they win),
/// else `configured` (`[api] reclaim_after_s`); and the lease of every stored assignment that
/// has one (its expiry is absolute, so time passed while the appliance was down counts).
pub(crate) fn load_rules(
    durable: &Durable,
    configured: Option<Duration>,
) -> Result<Rules, StoreError> {
    let mut rules = Rules::new();
    let stored = match durable.store().get(Table::Rules, RULES_KEY)? {
        None => None,
        Some(v) => match serde_json::from_slice::<RulesRecord>(&v) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "management store: the stored rules do not decode; using the configuration's"
                );
                None
            }
        },
    };
    rules.set_reclaim_after(match stored {
        Some(r) => r.reclaim_after_s.map(Duration::from_secs),
        None => configured,
    });
    for (function, rec) in load_records::<AssignmentRecord>(durable.store(), Table::Assignments)? {
        if let (Some(host), Some(l)) = (rec.host, rec.lease) {
            rules.set_lease(
                &function,
                Some(Lease {
                    host,
                    duration: Duration::from_secs(l.seconds),
                    until: UNIX_EPOCH + Duration::from_secs(l.until_unix),
                }),
            );
        }
    }
    Ok(rules)
}

impl Service {
    /// Feed the pool's host session events to the rules engine (done once, at start).
    pub(crate) fn watch_sessions(&self) {
        let (rules, clock) = (self.rules.clone(), self.clock.clone());
        self.pool.subscribe(EventSink::new(move |e| match e {
            PoolEvent::HostLost { host } => {
                rules
                    .lock_or_recover()
                    .host_lost(&host, clock.now(), clock.wall())
            }
            PoolEvent::HostConnected { host } => rules.lock_or_recover().host_connected(&host),
            _ => {}
        }));
    }

    /// Apply the rules as of now (after reporting the PCIe errors counted since the last tick,
    /// [`super::events::EventLog::report_errors`]): every function due goes back to the pool under a Task of
    /// its own (named after the reason) with a Warning event of its Connection; then every
    /// scheduled function takes one step towards where its schedules want it
    /// ([`super::schedules`]). Returns the ids of the Tasks started. The HTTP server calls it
    /// once a second.
    pub fn tick(&self) -> Vec<u64> {
        self.report_errors();
        let _change = self.change.lock_or_recover();
        let s = self.snapshot();
        let (now, wall) = (self.clock.now(), self.clock.wall());
        let due = {
            let mut rules = self.rules.lock_or_recover();
            rules.observe(&s.hosts, &s.functions, now, wall);
            rules.due(&s.functions, now, wall)
        };
        let mut started = Vec::new();
        for d in due {
            // An earlier reclaim of this tick may have moved it (the functions of a card
            // move together).
            let still = self.snapshot();
            let owner = still.function(&d.function).map(|f| &f.state);
            if !matches!(owner, Some(crate::mgmt::pool::FunctionState::Assigned { host }) if *host == d.host)
            {
                continue;
            }
            let why = d.describe();
            let op = Op::Unassign {
                function: d.function.clone(),
            };
            match self.start_ops(
                &still,
                why.clone(),
                &Method::DELETE,
                &connection_uri(&d.function),
                vec![op],
                true,
            ) {
                Ok(reply) => {
                    tracing::warn!(
                        function = %d.function,
                        host = %d.host,
                        reason = d.reason.name(),
                        "management API: {why}"
                    );
                    self.events.push_rule(
                        &d.function,
                        &format!("reclaimed by a rule ({why})"),
                        wall,
                    );
                    started.extend(task_id(&reply));
                }
                Err(e) => tracing::warn!(
                    function = %d.function,
                    "management API: a rule could not reclaim the function now (retried): {}",
                    e.body()
                ),
            }
        }
        started.extend(self.apply_schedules(&self.snapshot()));
        started
    }

    /// `Oem.Pcietun` of the Fabric: the rules, the pending reclaims, the leases.
    fn fabric_oem(&self) -> Value {
        let s = self.snapshot();
        let rules = self.rules.lock_or_recover().clone();
        let pending: Vec<Value> = rules
            .pending(&s.functions, self.clock.now())
            .into_iter()
            .map(|p| {
                json!({
                    "Function": p.function,
                    "Host": p.host,
                    "LostSince": timestamp(p.since),
                    "ReclaimAt": rules
                        .reclaim_after()
                        .map(|a| timestamp(p.since + a)),
                })
            })
            .collect();
        let leases: Vec<Value> = rules
            .leases()
            .map(|(f, l)| {
                let mut v = lease_json(l);
                v["Function"] = json!(f);
                v["Host"] = json!(l.host);
                v
            })
            .collect();
        json!({
            "@odata.type": "#Pcietun.v1_0_0.Fabric",
            "Rules": {
                "ReclaimAfterSeconds": rules.reclaim_after().map(|d| d.as_secs()),
            },
            "PendingReclaims": pending,
            "Leases": leases,
            "Schedules": self.schedules_json(),
        })
    }

    /// GET of the Fabric.
    pub(crate) fn get_fabric(&self, f: &str) -> ApiResult<Value> {
        check_fabric(f)?;
        fabric(f, self.fabric_oem())
    }

    /// PATCH of the Fabric: its rules. Stored first, then applied; 200 with the Fabric.
    pub(crate) fn patch_fabric(
        &self,
        caller: &Caller,
        req: &Request<Bytes>,
        f: &str,
    ) -> ApiResult<Reply> {
        caller.require(Privilege::ConfigureManager)?;
        check_fabric(f)?;
        let patch = body::fabric_patch(req.body())?;
        let _change = self.change.lock_or_recover();
        check_if_match(req.headers(), FABRIC_URI, &etag_of(&self.get_fabric(f)?))?;
        let mut record = RulesRecord {
            reclaim_after_s: self
                .rules
                .lock_or_recover()
                .reclaim_after()
                .map(|d| d.as_secs()),
        };
        if let Some(after) = patch.reclaim_after {
            record.reclaim_after_s = after.map(|d| d.as_secs());
        }
        let value = serde_json::to_vec(&record)
            .map_err(|e| ApiError::internal(format!("the rules could not be encoded: {e}")))?;
        self.durable
            .commit(vec![Change::Put {
                table: Table::Rules,
                key: RULES_KEY.into(),
                value,
            }])
            .map_err(|e| {
                tracing::error!("management store: the rules were not saved: {e}");
                ApiError::internal(format!("the rules could not be stored: {e}"))
            })?;
        self.rules
            .lock_or_recover()
            .set_reclaim_after(record.reclaim_after_s.map(Duration::from_secs));
        tracing::info!(
            reclaim_after_s = ?record.reclaim_after_s,
            user = %caller.account.user,
            "management API: rules changed"
        );
        Ok(Reply::ok(self.get_fabric(f)?))
    }
}

/// The id of the Task a 202 reply carries.
pub(crate) fn task_id(reply: &Reply) -> Option<u64> {
    reply.body.as_ref()?["Id"].as_str()?.parse().ok()
}
