//! Push event subscriptions as resources (docs/api.md "Events"):
//! `POST /redfish/v1/EventService/Subscriptions` creates an EventDestination (201 and its
//! `Location`), `GET` lists and shows them, `DELETE …/Subscriptions/{id}` removes one.
//!
//! Creating and deleting need ConfigureComponents (Operator or Administrator), which is what
//! the DMTF privilege registry asks of EventDestination; ReadOnly may list and read them (a
//! destination is not a secret: the body parser refuses credentials in the URL and custom
//! headers). Each subscription is committed to the store's `Subscriptions` table before it is
//! acknowledged and restored when the service starts; the one a retry run suspends is stored
//! as suspended, the one it terminates (`TerminateAfterRetries`) is deleted.

use std::sync::{Arc, Weak};

use axum::http::{header, Request, StatusCode};
use bytes::Bytes;

use super::error::{ApiError, ApiResult};
use super::events::{
    subscription_json, subscription_uri, EventLog, Subscription, MAX_SUBSCRIPTIONS,
};
use super::{body, check_if_match, etag_of, Caller, Reply, Service};
use crate::mgmt::auth::Privilege;
use crate::mgmt::push::{Exhausted, Outbox, State, Worker};
use crate::mgmt::store::{
    meta_u64, subscription_key, Change, Durable, StoreError, SubscriptionRecord, Table,
    NEXT_SUBSCRIPTION_ID,
};
use crate::sync::MutexExt;

/// Start the delivery of subscription `id` into `log` (suspended records get none).
fn start_worker(
    log: &Arc<EventLog>,
    durable: &Arc<Durable>,
    id: u64,
    record: &SubscriptionRecord,
) -> std::io::Result<Worker> {
    let exhausted = Exhausted::parse(&record.retry_policy).unwrap_or(Exhausted::Suspend);
    let outbox = if record.suspended {
        Outbox::suspended(log.retry, exhausted)
    } else {
        Outbox::new(log.retry, exhausted)
    };
    let (weak, durable): (Weak<EventLog>, _) = (Arc::downgrade(log), durable.clone());
    Worker::start(
        format!("{id} ({})", record.destination),
        record.destination.clone(),
        outbox,
        Box::new(move |state| {
            let Some(log) = weak.upgrade() else {
                return;
            };
            let mut subs = log.subscriptions.lock_or_recover();
            let change = match state {
                State::Terminated => {
                    subs.remove(&id);
                    Change::Delete {
                        table: Table::Subscriptions,
                        key: subscription_key(id),
                    }
                }
                State::Suspended | State::Active => {
                    let Some(sub) = subs.get_mut(&id) else {
                        return;
                    };
                    sub.record.suspended = true;
                    match serde_json::to_vec(&sub.record) {
                        Ok(value) => Change::Put {
                            table: Table::Subscriptions,
                            key: subscription_key(id),
                            value,
                        },
                        Err(_) => return,
                    }
                }
            };
            drop(subs);
            if let Err(e) = durable.commit(vec![change]) {
                tracing::error!(
                    subscription = id,
                    "event subscription: the change after its retries ran out could not be \
                     stored: {e}"
                );
            }
        }),
    )
}

/// Restore the stored subscriptions into `log` (an entry that does not decode, or whose
/// destination no longer passes the checks, is logged and skipped).
pub(crate) fn load_subscriptions(
    log: &Arc<EventLog>,
    durable: &Arc<Durable>,
) -> Result<(), StoreError> {
    let mut subs = log.subscriptions.lock_or_recover();
    for (key, value) in durable.store().list(Table::Subscriptions)? {
        let parsed = key.parse::<u64>().ok().and_then(|id| {
            let r = serde_json::from_slice::<SubscriptionRecord>(&value).ok()?;
            crate::mgmt::push::check_destination(&r.destination).ok()?;
            Exhausted::parse(&r.retry_policy)?;
            Some((id, r))
        });
        let Some((id, record)) = parsed else {
            tracing::warn!(
                key = %key.escape_debug(),
                "management store: a stored event subscription does not decode; skipped"
            );
            continue;
        };
        match start_worker(log, durable, id, &record) {
            Ok(worker) => {
                subs.insert(id, Subscription { record, worker });
            }
            Err(e) => tracing::error!(
                subscription = id,
                "event subscription: cannot start its delivery thread: {e}"
            ),
        }
    }
    if !subs.is_empty() {
        tracing::info!(
            count = subs.len(),
            "restored the stored event subscriptions"
        );
    }
    Ok(())
}

fn parse_id(id: &str) -> Option<u64> {
    (!id.starts_with('+')).then(|| id.parse().ok()).flatten()
}

impl Service {
    /// `GET …/Subscriptions/{id}`.
    pub(crate) fn subscription(&self, id: &str) -> ApiResult<Reply> {
        let missing =
            || ApiError::not_found("EventDestination", id, format!("no subscription {id:?}"));
        let n = parse_id(id).ok_or_else(missing)?;
        let subs = self.events.subscriptions.lock_or_recover();
        let sub = subs.get(&n).ok_or_else(missing)?;
        Ok(Reply::ok(subscription_json(n, sub)))
    }

    /// `POST …/Subscriptions`.
    pub(crate) fn create_subscription(&self, caller: &Caller, bytes: &[u8]) -> ApiResult<Reply> {
        caller.require(Privilege::ConfigureComponents)?;
        let record = body::subscription_create(bytes)?;
        let _change = self.change.lock_or_recover();
        if self.events.subscriptions.lock_or_recover().len() >= MAX_SUBSCRIPTIONS {
            return Err(ApiError::in_use(format!(
                "the service already has {MAX_SUBSCRIPTIONS} event subscriptions; delete one first"
            )));
        }
        let id = meta_u64(self.durable.store(), NEXT_SUBSCRIPTION_ID)
            .map_err(|e| ApiError::internal(format!("the subscription could not be stored: {e}")))?
            .max(1);
        let value = serde_json::to_vec(&record).map_err(|e| {
            ApiError::internal(format!("the subscription could not be stored: {e}"))
        })?;
        self.durable
            .commit(vec![
                Change::Put {
                    table: Table::Subscriptions,
                    key: subscription_key(id),
                    value,
                },
                Change::Put {
                    table: Table::Meta,
                    key: NEXT_SUBSCRIPTION_ID.into(),
                    value: (id + 1).to_string().into_bytes(),
                },
            ])
            .map_err(|e| {
                ApiError::internal(format!("the subscription could not be stored: {e}"))
            })?;
        let worker = start_worker(&self.events, &self.durable, id, &record).map_err(|e| {
            ApiError::internal(format!("cannot start the subscription's delivery: {e}"))
        })?;
        tracing::info!(
            subscription = id,
            destination = %record.destination,
            by = %caller.account.user,
            "event subscription created"
        );
        let sub = Subscription { record, worker };
        let json = subscription_json(id, &sub);
        self.events.subscriptions.lock_or_recover().insert(id, sub);
        Ok(Reply::ok(json)
            .status(StatusCode::CREATED)
            .header(header::LOCATION, &subscription_uri(id)))
    }

    /// `DELETE …/Subscriptions/{id}`.
    pub(crate) fn delete_subscription(
        &self,
        caller: &Caller,
        req: &Request<Bytes>,
        id: &str,
    ) -> ApiResult<Reply> {
        caller.require(Privilege::ConfigureComponents)?;
        let missing =
            || ApiError::not_found("EventDestination", id, format!("no subscription {id:?}"));
        let n = parse_id(id).ok_or_else(missing)?;
        let _change = self.change.lock_or_recover();
        let current = {
            let subs = self.events.subscriptions.lock_or_recover();
            subscription_json(n, subs.get(&n).ok_or_else(missing)?)
        };
        check_if_match(req.headers(), &subscription_uri(n), &etag_of(&current))?;
        self.durable
            .commit(vec![Change::Delete {
                table: Table::Subscriptions,
                key: subscription_key(n),
            }])
            .map_err(|e| ApiError::internal(format!("the deletion could not be stored: {e}")))?;
        self.events.subscriptions.lock_or_recover().remove(&n);
        tracing::info!(subscription = n, by = %caller.account.user, "event subscription deleted");
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    }
}
