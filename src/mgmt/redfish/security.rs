//! SessionService (SessionService.v1_2_0, Session.v1_8_0) and AccountService
//! (AccountService.v1_18_1, ManagerAccount.v1_14_1, Role.v1_3_3), and authentication of every
//! request (DSP0266 §"Authentication": `X-Auth-Token` sessions and HTTP Basic).
//!
//! Privileges (Redfish privilege registry, standard roles): reading needs Login; assignments
//! need ConfigureComponents (Operator); accounts need ConfigureUsers and the service's own
//! settings and other users' sessions ConfigureManager (Administrator); anyone may change
//! their own password and end their own sessions (ConfigureSelf).

use axum::http::{header, HeaderMap, Request, StatusCode};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use super::body;
use super::error::{ApiError, ApiResult};
use super::tasks::timestamp;
use super::uri::collection;
use super::{check_if_match, etag_of, Caller, Reply, Service};
use crate::mgmt::auth::{
    hash_password, verify_password, AccountView, Accounts, AuthError, Privilege, Role, SessionView,
    MAX_SESSIONS, PASSWORD_LEN,
};
use crate::mgmt::store::{
    load_records, meta_u64, AccountRecord, Change, Durable, StoreError, Table, NEXT_ACCOUNT_ID,
};
use crate::sync::MutexExt;

const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";
const ACCOUNTS: &str = "/redfish/v1/AccountService/Accounts";
const ROLES: &str = "/redfish/v1/AccountService/Roles";

fn link(uri: &str) -> Value {
    json!({ "@odata.id": uri })
}

fn session_uri(id: &str) -> String {
    format!("{SESSIONS}/{id}")
}

fn account_uri(id: &str) -> String {
    format!("{ACCOUNTS}/{id}")
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::PasswordLength => {
            ApiError::password_length(*PASSWORD_LEN.start(), *PASSWORD_LEN.end())
        }
        AuthError::UserExists(u) => ApiError::already_exists("ManagerAccount", "UserName", &u),
        AuthError::BadUserName(u) => ApiError::property_format(
            "/UserName",
            &u,
            &AuthError::BadUserName(u.clone()).to_string(),
        ),
        AuthError::UnknownAccount(id) => {
            ApiError::not_found("ManagerAccount", &id, format!("unknown account {id:?}"))
        }
        e @ AuthError::LastAdministrator => ApiError::cannot_delete(e.to_string()),
        e @ AuthError::TooManyAccounts => ApiError::in_use(e.to_string()),
        e @ AuthError::Hash(_) => ApiError::internal(e.to_string()),
    }
}

fn store_error(e: StoreError) -> ApiError {
    tracing::error!("management store: {e}");
    ApiError::internal(format!(
        "the change was not made: it could not be stored ({e})"
    ))
}

fn session_json(s: &SessionView) -> Value {
    json!({
        "@odata.id": session_uri(&s.id),
        "@odata.type": "#Session.v1_8_0.Session",
        "Id": s.id,
        "Name": format!("Session of {}", s.user),
        "UserName": s.user,
        "Password": null,
        "SessionType": "Redfish",
        "CreatedTime": timestamp(s.created),
    })
}

fn account_json(a: &AccountView) -> Value {
    json!({
        "@odata.id": account_uri(&a.id),
        "@odata.type": "#ManagerAccount.v1_14_1.ManagerAccount",
        "Id": a.id,
        "Name": format!("Account {}", a.user),
        "UserName": a.user,
        "RoleId": a.role.id(),
        "Enabled": a.enabled,
        "Locked": false,
        "Password": null,
        "AccountTypes": ["Redfish"],
        "Links": { "Role": link(&format!("{ROLES}/{}", a.role.id())) },
    })
}

pub(crate) fn account_service() -> Value {
    json!({
        "@odata.id": "/redfish/v1/AccountService",
        "@odata.type": "#AccountService.v1_18_1.AccountService",
        "Id": "AccountService",
        "Name": "Account Service",
        "ServiceEnabled": true,
        "Status": { "State": "Enabled", "Health": "OK" },
        "MinPasswordLength": PASSWORD_LEN.start(),
        "MaxPasswordLength": PASSWORD_LEN.end(),
        "LocalAccountAuth": "Enabled",
        "Accounts": link(ACCOUNTS),
        "Roles": link(ROLES),
    })
}

pub(crate) fn roles() -> Value {
    collection(
        ROLES,
        "RoleCollection",
        "Roles",
        Role::ALL
            .iter()
            .map(|r| format!("{ROLES}/{}", r.id()))
            .collect(),
    )
}

pub(crate) fn role(id: &str) -> ApiResult<Value> {
    let r = Role::parse(id)
        .ok_or_else(|| ApiError::not_found("Role", id, format!("unknown role {id:?}")))?;
    Ok(json!({
        "@odata.id": format!("{ROLES}/{}", r.id()),
        "@odata.type": "#Role.v1_3_3.Role",
        "Id": r.id(),
        "Name": format!("{} role", r.id()),
        "RoleId": r.id(),
        "IsPredefined": true,
        "AssignedPrivileges": r.privileges().iter().map(|p| p.name()).collect::<Vec<_>>(),
        "OemPrivileges": [],
    }))
}

/// Parse `Authorization: Basic …` into (user, password).
fn basic_credentials(value: &str) -> Option<(String, zeroize::Zeroizing<String>)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?,
    );
    let text = std::str::from_utf8(&raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((
        user.to_string(),
        zeroize::Zeroizing::new(password.to_string()),
    ))
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The first administrator is unusable.
    #[error("first administrator: {0}")]
    Admin(#[from] AuthError),
    /// The store cannot be read or seeded.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The accounts of a starting service: the stored ones, or — when the store has no usable
/// enabled Administrator (a new store) — the configured first administrator, stored at once.
/// The configured administrator never overrides a stored account: the log says which is used.
pub(crate) fn load_accounts(
    durable: &Durable,
    admin: &str,
    admin_hash: String,
) -> Result<Accounts, StartError> {
    let records = load_records::<AccountRecord>(durable.store(), Table::Accounts)?;
    let stored = records.len();
    let next_id = meta_u64(durable.store(), NEXT_ACCOUNT_ID)?;
    let accounts = Accounts::from_records(records.into_iter().map(|(_, r)| r).collect(), next_id);
    if accounts.has_administrator() {
        let users: Vec<String> = accounts.list().into_iter().map(|a| a.user).collect();
        tracing::info!(
            store = %durable.name(),
            generation = durable.generation(),
            accounts = %users.join(","),
            configured_admin = %admin,
            "management API: using the {} stored account(s); the configured administrator and \
             its password file only seed an empty store and are not used",
            users.len()
        );
        return Ok(accounts);
    }
    if stored > 0 {
        tracing::warn!(
            store = %durable.name(),
            stored,
            "management API: the store has no usable enabled Administrator; seeding the \
             configured one"
        );
    }
    let mut seeded = accounts;
    let view = seeded.create(admin, admin_hash, Role::Administrator, true)?;
    let mut changes = vec![Change::Put {
        table: Table::Meta,
        key: NEXT_ACCOUNT_ID.into(),
        value: seeded.next_id().to_string().into_bytes(),
    }];
    if let Some(r) = seeded.record(&view.id) {
        changes.push(account_change(&r)?);
    }
    durable.commit(changes)?;
    tracing::info!(
        store = %durable.name(),
        admin = %view.user,
        "management API: the store had no accounts; seeded the configured administrator"
    );
    Ok(seeded)
}

fn account_change(r: &AccountRecord) -> Result<Change, StoreError> {
    Ok(Change::Put {
        table: Table::Accounts,
        key: r.id.clone(),
        value: serde_json::to_vec(r).map_err(|e| StoreError::Encode(e.to_string()))?,
    })
}

impl Service {
    /// Commit the state of account `id` in `next` (gone from it: deleted) before `next`
    /// replaces the live table; a failure changes nothing.
    fn save_accounts(&self, next: &Accounts, id: &str) -> ApiResult<()> {
        let mut changes = vec![Change::Put {
            table: Table::Meta,
            key: NEXT_ACCOUNT_ID.into(),
            value: next.next_id().to_string().into_bytes(),
        }];
        match next.record(id) {
            Some(r) => changes.push(account_change(&r).map_err(store_error)?),
            None => changes.push(Change::Delete {
                table: Table::Accounts,
                key: id.into(),
            }),
        }
        self.durable.commit(changes).map_err(store_error)?;
        Ok(())
    }

    /// Who sent this request (401 when nobody valid).
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> ApiResult<Caller> {
        let now = self.clock.now();
        if let Some(token) = headers.get("X-Auth-Token") {
            let token = token
                .to_str()
                .map_err(|_| ApiError::no_valid_session("the X-Auth-Token header is not text"))?;
            let mut auth = self.auth.lock_or_recover();
            let session = auth.sessions.authenticate(token, now).ok_or_else(|| {
                ApiError::no_valid_session("the session token is unknown or expired")
            })?;
            let account = auth
                .accounts
                .get(&session.account)
                .filter(|a| a.enabled)
                .ok_or_else(|| {
                    ApiError::no_valid_session("the session's account is disabled or gone")
                })?;
            return Ok(Caller {
                account,
                session: Some(session.id),
            });
        }
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let (user, password) =
                value
                    .to_str()
                    .ok()
                    .and_then(basic_credentials)
                    .ok_or_else(|| {
                        ApiError::no_valid_session("the Authorization header is not HTTP Basic")
                    })?;
            let account = self.check_password(&user, &password)?;
            return Ok(Caller {
                account,
                session: None,
            });
        }
        Err(ApiError::no_valid_session(
            "send an X-Auth-Token (POST /redfish/v1/SessionService/Sessions) or HTTP Basic credentials",
        ))
    }

    /// Verify credentials without holding the lock during the (slow) hash.
    fn check_password(&self, user: &str, password: &str) -> ApiResult<AccountView> {
        let found = {
            let auth = self.auth.lock_or_recover();
            auth.accounts.hash_of(user)
        };
        let ok = verify_password(password, found.as_ref().map(|(_, h)| h.as_str()));
        match found {
            Some((account, _)) if ok && account.enabled => Ok(account),
            _ => Err(ApiError::no_valid_session("wrong user name or password")),
        }
    }

    pub(crate) fn login(&self, bytes: &[u8]) -> ApiResult<Reply> {
        let creds = body::session_create(bytes)?;
        let account = self.check_password(&creds.user, &creds.password)?;
        let mut auth = self.auth.lock_or_recover();
        let (session, token) = auth
            .sessions
            .create(&account, self.clock.now(), self.clock.wall())
            .ok_or_else(|| ApiError::session_limit(MAX_SESSIONS))?;
        tracing::info!(user = %account.user, session = %session.id, "API session created");
        Ok(Reply::ok(session_json(&session))
            .status(StatusCode::CREATED)
            .header(header::LOCATION, &session_uri(&session.id))
            .header(
                header::HeaderName::from_static("x-auth-token"),
                token.expose(),
            ))
    }

    pub(crate) fn session_service(&self) -> Value {
        let timeout = self.auth.lock_or_recover().sessions.timeout.as_secs();
        json!({
            "@odata.id": "/redfish/v1/SessionService",
            "@odata.type": "#SessionService.v1_2_0.SessionService",
            "Id": "SessionService",
            "Name": "Session Service",
            "ServiceEnabled": true,
            "SessionTimeout": timeout,
            "Status": { "State": "Enabled", "Health": "OK" },
            "Sessions": link(SESSIONS),
        })
    }

    pub(crate) fn patch_session_service(
        &self,
        caller: &Caller,
        req: &Request<Bytes>,
    ) -> ApiResult<Reply> {
        caller.require(Privilege::ConfigureManager)?;
        let patch = body::session_service_patch(req.body())?;
        let _change = self.change.lock_or_recover();
        check_if_match(
            req.headers(),
            "/redfish/v1/SessionService",
            &etag_of(&self.session_service()),
        )?;
        self.auth.lock_or_recover().sessions.timeout =
            std::time::Duration::from_secs(patch.timeout_s);
        Ok(Reply::ok(self.session_service()))
    }

    pub(crate) fn sessions(&self, caller: &Caller) -> Value {
        let mut auth = self.auth.lock_or_recover();
        let all = caller.has(Privilege::ConfigureManager);
        let members = auth
            .sessions
            .list(self.clock.now())
            .into_iter()
            .filter(|s| all || s.account == caller.account.id)
            .map(|s| session_uri(&s.id))
            .collect();
        collection(SESSIONS, "SessionCollection", "Sessions", members)
    }

    fn visible_session(&self, caller: &Caller, id: &str) -> ApiResult<SessionView> {
        let mut auth = self.auth.lock_or_recover();
        auth.sessions
            .get(id, self.clock.now())
            .filter(|s| s.account == caller.account.id || caller.has(Privilege::ConfigureManager))
            .ok_or_else(|| ApiError::not_found("Session", id, format!("no session {id:?}")))
    }

    pub(crate) fn session(&self, caller: &Caller, id: &str) -> ApiResult<Value> {
        self.visible_session(caller, id).map(|s| session_json(&s))
    }

    pub(crate) fn logout(&self, caller: &Caller, id: &str) -> ApiResult<Reply> {
        let s = self.visible_session(caller, id)?;
        if s.account == caller.account.id {
            caller.require(Privilege::ConfigureSelf)?;
        } else {
            caller.require(Privilege::ConfigureManager)?;
        }
        self.auth.lock_or_recover().sessions.delete(id);
        tracing::info!(session = %id, by = %caller.account.user, "API session ended");
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    }

    pub(crate) fn accounts(&self, caller: &Caller) -> Value {
        let auth = self.auth.lock_or_recover();
        let all = caller.has(Privilege::ConfigureUsers);
        let members = auth
            .accounts
            .list()
            .into_iter()
            .filter(|a| all || a.id == caller.account.id)
            .map(|a| account_uri(&a.id))
            .collect();
        collection(ACCOUNTS, "ManagerAccountCollection", "Accounts", members)
    }

    fn visible_account(&self, caller: &Caller, id: &str) -> ApiResult<AccountView> {
        let auth = self.auth.lock_or_recover();
        let a = auth.accounts.get(id).ok_or_else(|| {
            ApiError::not_found("ManagerAccount", id, format!("unknown account {id:?}"))
        })?;
        if a.id != caller.account.id {
            caller.require(Privilege::ConfigureUsers)?;
        }
        Ok(a)
    }

    pub(crate) fn account(&self, caller: &Caller, id: &str) -> ApiResult<Value> {
        self.visible_account(caller, id).map(|a| account_json(&a))
    }

    pub(crate) fn create_account(&self, caller: &Caller, bytes: &[u8]) -> ApiResult<Reply> {
        caller.require(Privilege::ConfigureUsers)?;
        let req = body::account_create(bytes)?;
        let hash = hash_password(&req.password).map_err(auth_error)?;
        let mut auth = self.auth.lock_or_recover();
        let mut next = auth.accounts.clone();
        let a = next
            .create(&req.user, hash, req.role, req.enabled)
            .map_err(auth_error)?;
        self.save_accounts(&next, &a.id)?;
        auth.accounts = next;
        tracing::info!(user = %a.user, role = a.role.id(), by = %caller.account.user, "API account created");
        Ok(Reply::ok(account_json(&a))
            .status(StatusCode::CREATED)
            .header(header::LOCATION, &account_uri(&a.id)))
    }

    pub(crate) fn patch_account(
        &self,
        caller: &Caller,
        req: &Request<Bytes>,
        id: &str,
    ) -> ApiResult<Reply> {
        let current = self.visible_account(caller, id)?;
        let patch = body::account_patch(req.body())?;
        let own = current.id == caller.account.id;
        if patch.role.is_some() || patch.enabled.is_some() || !own {
            caller.require(Privilege::ConfigureUsers)?;
        } else {
            caller.require(Privilege::ConfigureSelf)?;
        }
        let hash = patch
            .password
            .as_ref()
            .map(|p| hash_password(p))
            .transpose()
            .map_err(auth_error)?;
        let _change = self.change.lock_or_recover();
        let mut auth = self.auth.lock_or_recover();
        let now_json = auth
            .accounts
            .get(id)
            .map(|a| account_json(&a))
            .ok_or_else(|| auth_error(AuthError::UnknownAccount(id.into())))?;
        check_if_match(req.headers(), &account_uri(id), &etag_of(&now_json))?;
        let mut next = auth.accounts.clone();
        let a = next
            .update(id, hash, patch.role, patch.enabled)
            .map_err(auth_error)?;
        self.save_accounts(&next, &a.id)?;
        auth.accounts = next;
        if !a.enabled || patch.password.is_some() {
            // A disabled account keeps no session; a new password ends the other sessions.
            let keep = caller.session.clone().filter(|_| own && a.enabled);
            let ids: Vec<String> = auth
                .sessions
                .list(self.clock.now())
                .into_iter()
                .filter(|s| s.account == a.id && Some(&s.id) != keep.as_ref())
                .map(|s| s.id)
                .collect();
            for s in ids {
                auth.sessions.delete(&s);
            }
        }
        tracing::info!(account = %a.user, by = %caller.account.user, "API account changed");
        Ok(Reply::ok(account_json(&a)))
    }

    pub(crate) fn delete_account(
        &self,
        caller: &Caller,
        req: &Request<Bytes>,
        id: &str,
    ) -> ApiResult<Reply> {
        caller.require(Privilege::ConfigureUsers)?;
        let _change = self.change.lock_or_recover();
        let mut auth = self.auth.lock_or_recover();
        let now_json = auth
            .accounts
            .get(id)
            .map(|a| account_json(&a))
            .ok_or_else(|| auth_error(AuthError::UnknownAccount(id.into())))?;
        check_if_match(req.headers(), &account_uri(id), &etag_of(&now_json))?;
        let mut next = auth.accounts.clone();
        let a = next.delete(id).map_err(auth_error)?;
        self.save_accounts(&next, &a.id)?;
        auth.accounts = next;
        auth.sessions.delete_account(&a.id);
        tracing::info!(account = %a.user, by = %caller.account.user, "API account removed");
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mgmt::store::{MemoryStore, Store};
    use std::sync::Arc;

    #[test]
    fn the_configured_admin_only_seeds_an_empty_store() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let d = Durable::new(store.clone(), "memory").unwrap();
        let first = load_accounts(&d, "admin", hash_password("first-password").unwrap()).unwrap();
        assert_eq!(first.list().len(), 1);
        assert_eq!(d.generation(), 1, "the seed is committed");
        // Stored: an operator besides the admin.
        let mut next = first.clone();
        let op = next
            .create(
                "ops",
                hash_password("operator-pw").unwrap(),
                Role::Operator,
                true,
            )
            .unwrap();
        d.commit(vec![account_change(&next.record(&op.id).unwrap()).unwrap()])
            .unwrap();
        // A restart with a changed password file (and another name) does not override it.
        let d = Durable::new(store.clone(), "memory").unwrap();
        let again = load_accounts(&d, "root", hash_password("second-password").unwrap()).unwrap();
        let users: Vec<String> = again.list().into_iter().map(|a| a.user).collect();
        assert_eq!(users, vec!["admin".to_string(), "ops".to_string()]);
        assert!(again.verify("admin", "first-password").is_some());
        assert!(again.verify("admin", "second-password").is_none());
        assert!(again.verify("root", "second-password").is_none());
        assert_eq!(again.next_id(), 3, "ids are not reused");
        // Nothing secret is stored but the hash.
        for (_, v) in store.list(Table::Accounts).unwrap() {
            let text = String::from_utf8(v).unwrap();
            assert!(
                !text.contains("first-password") && text.contains("$argon2id$"),
                "{text}"
            );
        }
    }

    #[test]
    fn corrupt_stored_accounts_are_skipped_and_a_store_without_admin_is_seeded() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        store
            .commit(&[
                Change::Put {
                    table: Table::Accounts,
                    key: "5".into(),
                    value: b"{not json".to_vec(),
                },
                Change::Put {
                    table: Table::Accounts,
                    key: "6".into(),
                    value: br#"{"id":"6","user":"x","role":"God","enabled":true,"hash":"h"}"#
                        .to_vec(),
                },
            ])
            .unwrap();
        let d = Durable::new(store.clone(), "memory").unwrap();
        let a = load_accounts(&d, "admin", hash_password("first-password").unwrap()).unwrap();
        let users: Vec<String> = a.list().into_iter().map(|a| a.user).collect();
        assert_eq!(users, vec!["admin".to_string()]);
        assert!(a.verify("admin", "first-password").is_some());
    }

    #[test]
    fn basic() {
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:pa:ss")
        );
        let (u, p) = basic_credentials(&v).unwrap();
        assert_eq!((u.as_str(), p.as_str()), ("admin", "pa:ss"));
        assert!(basic_credentials("Bearer abc").is_none());
        assert!(basic_credentials("Basic !!!").is_none());
    }
}
