//! Accounts, roles and sessions of the management API (Redfish AccountService and
//! SessionService, DSP0266 §"Security details"; privileges from the Redfish privilege registry
//! DSP8011's standard roles).
//!
//! * Roles: `ReadOnly` (Login, ConfigureSelf), `Operator` (+ ConfigureComponents: assign,
//!   unassign, policy) and `Administrator` (+ ConfigureManager, ConfigureUsers: hosts, keys,
//!   accounts).
//! * Passwords are stored only as Argon2id PHC strings (RustCrypto `argon2`, default
//!   parameters); a login for an unknown user still runs one verification so that timing does
//!   not tell which names exist.
//! * Session tokens are 256 bits from the OS RNG. The service keeps only their SHA-256, looks
//!   sessions up by it and compares in constant time (`subtle`); a token is shown once, in the
//!   `X-Auth-Token` header of the login response. Sessions expire after an idle timeout.
//! * Nothing here logs or formats a password or a token.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::mgmt::store::AccountRecord;

/// Password length policy (AccountService MinPasswordLength / MaxPasswordLength).
pub const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 8..=128;

/// How many sessions may exist at once.
pub const MAX_SESSIONS: usize = 64;

/// How many accounts may exist.
pub const MAX_ACCOUNTS: usize = 64;

/// A Redfish privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Log in and read.
    Login,
    /// Change one's own password, end one's own sessions.
    ConfigureSelf,
    /// Change components: assignments, policies.
    ConfigureComponents,
    /// Change the service: hosts, keys, sessions of others, the session timeout.
    ConfigureManager,
    /// Manage accounts.
    ConfigureUsers,
}

impl Privilege {
    /// The Redfish name.
    pub fn name(self) -> &'static str {
        match self {
            Privilege::Login => "Login",
            Privilege::ConfigureSelf => "ConfigureSelf",
            Privilege::ConfigureComponents => "ConfigureComponents",
            Privilege::ConfigureManager => "ConfigureManager",
            Privilege::ConfigureUsers => "ConfigureUsers",
        }
    }
}

/// One of the standard Redfish roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Administrator,
    /// Assign, unassign, policy.
    Operator,
    /// Read.
    ReadOnly,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 3] = [Role::Administrator, Role::Operator, Role::ReadOnly];

    /// The RoleId.
    pub fn id(self) -> &'static str {
        match self {
            Role::Administrator => "Administrator",
            Role::Operator => "Operator",
            Role::ReadOnly => "ReadOnly",
        }
    }

    /// Parse a RoleId.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.id() == s)
    }

    /// The privileges the role grants.
    pub fn privileges(self) -> &'static [Privilege] {
        use Privilege::*;
        match self {
            Role::Administrator => &[
                Login,
                ConfigureSelf,
                ConfigureComponents,
                ConfigureManager,
                ConfigureUsers,
            ],
            Role::Operator => &[Login, ConfigureSelf, ConfigureComponents],
            Role::ReadOnly => &[Login, ConfigureSelf],
        }
    }

    /// Whether the role grants `p`.
    pub fn has(self, p: Privilege) -> bool {
        self.privileges().contains(&p)
    }
}

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The password is too short or too long.
    #[error("passwords must be {} to {} characters long", PASSWORD_LEN.start(), PASSWORD_LEN.end())]
    PasswordLength,
    /// An account with that name exists.
    #[error("an account named {0:?} already exists")]
    UserExists(String),
    /// The name is not acceptable.
    #[error("account names are 1 to 32 characters of A-Z a-z 0-9 . _ - (got {0:?})")]
    BadUserName(String),
    /// No such account.
    #[error("no account with id {0:?}")]
    UnknownAccount(String),
    /// The change would leave no enabled administrator.
    #[error("the last enabled Administrator cannot be removed, disabled or demoted")]
    LastAdministrator,
    /// Too many accounts.
    #[error("the service already has {MAX_ACCOUNTS} accounts")]
    TooManyAccounts,
    /// The password hasher failed.
    #[error("password hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
}

/// An account as the API shows it (no secret material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    /// Stable id (`/redfish/v1/AccountService/Accounts/{id}`).
    pub id: String,
    /// Login name.
    pub user: String,
    /// Role.
    pub role: Role,
    /// Whether it may log in.
    pub enabled: bool,
}

#[derive(Clone)]
struct Account {
    view: AccountView,
    hash: String,
}

/// Hash a password for storage.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    if !PASSWORD_LEN.contains(&password.chars().count()) {
        return Err(AuthError::PasswordLength);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(AuthError::Hash)
}

fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the user does not exist, so both paths cost the same.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut pw = [0u8; 16];
        OsRng.fill_bytes(&mut pw);
        let pw: String = pw.iter().map(|b| format!("{b:02x}")).collect();
        hash_password(&pw).unwrap_or_default()
    })
}

fn valid_user(user: &str) -> bool {
    (1..=32).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The account table (cloned to prepare a change that is applied only once it is stored).
#[derive(Clone)]
pub struct Accounts {
    list: Vec<Account>,
    next_id: u64,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|a| &a.view))
            .finish()
    }
}

impl Accounts {
    /// A table with one administrator, whose password is given as an already computed hash
    /// (see [`hash_password`]).
    pub fn with_admin(user: &str, hash: String) -> Result<Self, AuthError> {
        if !valid_user(user) {
            return Err(AuthError::BadUserName(user.into()));
        }
        Ok(Accounts {
            list: vec![Account {
                view: AccountView {
                    id: "1".into(),
                    user: user.into(),
                    role: Role::Administrator,
                    enabled: true,
                },
                hash,
            }],
            next_id: 2,
        })
    }

    /// A table of stored accounts (see [`crate::mgmt::store::AccountRecord`]), whose next new
    /// id is `next_id` (raised above every stored id). A record with a bad name, role, id or
    /// hash, or a second record of a name, is logged and skipped.
    pub fn from_records(records: Vec<AccountRecord>, next_id: u64) -> Self {
        let mut list: Vec<Account> = Vec::new();
        let mut next = next_id.max(1);
        for r in records {
            let id_num = r.id.parse::<u64>().ok();
            let role = Role::parse(&r.role);
            let why = if !valid_user(&r.user) {
                Some("bad user name")
            } else if id_num.is_none() {
                Some("bad id")
            } else if role.is_none() {
                Some("unknown role")
            } else if PasswordHash::new(&r.hash).is_err() {
                Some("not a password hash")
            } else if list
                .iter()
                .any(|a| a.view.user == r.user || a.view.id == r.id)
            {
                Some("a second account with that name or id")
            } else if list.len() >= MAX_ACCOUNTS {
                Some("too many accounts")
            } else {
                None
            };
            if let Some(why) = why {
                tracing::warn!(
                    id = %r.id.escape_debug(),
                    user = %r.user.escape_debug(),
                    why,
                    "management store: stored account skipped"
                );
                continue;
            }
            let (Some(n), Some(role)) = (id_num, role) else {
                continue;
            };
            next = next.max(n.saturating_add(1));
            list.push(Account {
                view: AccountView {
                    id: r.id,
                    user: r.user,
                    role,
                    enabled: r.enabled,
                },
                hash: r.hash,
            });
        }
        Accounts {
            list,
            next_id: next,
        }
    }

    /// The stored form of account `id`.
    pub fn record(&self, id: &str) -> Option<AccountRecord> {
        self.list
            .iter()
            .find(|a| a.view.id == id)
            .map(|a| AccountRecord {
                id: a.view.id.clone(),
                user: a.view.user.clone(),
                role: a.view.role.id().to_string(),
                enabled: a.view.enabled,
                hash: a.hash.clone(),
            })
    }

    /// The stored form of every account.
    pub fn records(&self) -> Vec<AccountRecord> {
        self.list
            .iter()
            .filter_map(|a| self.record(&a.view.id))
            .collect()
    }

    /// The id the next created account gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Whether some account is an enabled Administrator.
    pub fn has_administrator(&self) -> bool {
        self.list
            .iter()
            .any(|a| a.view.enabled && a.view.role == Role::Administrator)
    }

    /// Every account.
    pub fn list(&self) -> Vec<AccountView> {
        self.list.iter().map(|a| a.view.clone()).collect()
    }

    /// One account by id.
    pub fn get(&self, id: &str) -> Option<AccountView> {
        self.list
            .iter()
            .find(|a| a.view.id == id)
            .map(|a| a.view.clone())
    }

    /// Check a user name and password; the account if they match and it is enabled.
    pub fn verify(&self, user: &str, password: &str) -> Option<AccountView> {
        match self.list.iter().find(|a| a.view.user == user) {
            Some(a) => (verify(password, &a.hash) && a.view.enabled).then(|| a.view.clone()),
            None => {
                let _ = verify(password, dummy_hash());
                None
            }
        }
    }

    /// The hash for `user` (to verify outside the lock).
    pub fn hash_of(&self, user: &str) -> Option<(AccountView, String)> {
        self.list
            .iter()
            .find(|a| a.view.user == user)
            .map(|a| (a.view.clone(), a.hash.clone()))
    }

    /// Create an account from a password hash.
    pub fn create(
        &mut self,
        user: &str,
        hash: String,
        role: Role,
        enabled: bool,
    ) -> Result<AccountView, AuthError> {
        if !valid_user(user) {
            return Err(AuthError::BadUserName(user.into()));
        }
        if self.list.iter().any(|a| a.view.user == user) {
            return Err(AuthError::UserExists(user.into()));
        }
        if self.list.len() >= MAX_ACCOUNTS {
            return Err(AuthError::TooManyAccounts);
        }
        let view = AccountView {
            id: self.next_id.to_string(),
            user: user.into(),
            role,
            enabled,
        };
        self.next_id += 1;
        self.list.push(Account {
            view: view.clone(),
            hash,
        });
        Ok(view)
    }

    fn admins_besides(&self, id: &str) -> usize {
        self.list
            .iter()
            .filter(|a| a.view.id != id && a.view.enabled && a.view.role == Role::Administrator)
            .count()
    }

    /// Apply a change to an account; refuses to leave no enabled Administrator.
    pub fn update(
        &mut self,
        id: &str,
        hash: Option<String>,
        role: Option<Role>,
        enabled: Option<bool>,
    ) -> Result<AccountView, AuthError> {
        let others = self.admins_besides(id);
        let a = self
            .list
            .iter_mut()
            .find(|a| a.view.id == id)
            .ok_or_else(|| AuthError::UnknownAccount(id.into()))?;
        let role_after = role.unwrap_or(a.view.role);
        let enabled_after = enabled.unwrap_or(a.view.enabled);
        let was_admin = a.view.role == Role::Administrator && a.view.enabled;
        if was_admin && !(role_after == Role::Administrator && enabled_after) && others == 0 {
            return Err(AuthError::LastAdministrator);
        }
        if let Some(h) = hash {
            a.hash = h;
        }
        a.view.role = role_after;
        a.view.enabled = enabled_after;
        Ok(a.view.clone())
    }

    /// Remove an account; refuses to remove the last enabled Administrator.
    pub fn delete(&mut self, id: &str) -> Result<AccountView, AuthError> {
        let i = self
            .list
            .iter()
            .position(|a| a.view.id == id)
            .ok_or_else(|| AuthError::UnknownAccount(id.into()))?;
        let v = &self.list[i].view;
        if v.role == Role::Administrator && v.enabled && self.admins_besides(id) == 0 {
            return Err(AuthError::LastAdministrator);
        }
        Ok(self.list.remove(i).view)
    }
}

/// Verify a password against a PHC hash (slow: call without holding locks).
pub fn verify_password(password: &str, hash: Option<&str>) -> bool {
    verify(password, hash.unwrap_or_else(|| dummy_hash()))
}

/// A login session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// Public id (`/redfish/v1/SessionService/Sessions/{id}`); not a secret.
    pub id: String,
    /// The account's id.
    pub account: String,
    /// The account's name at login.
    pub user: String,
    /// When it was created.
    pub created: SystemTime,
}

struct Session {
    view: SessionView,
    token_hash: [u8; 32],
    last_used: Instant,
}

/// A new session's secret, shown to the client once.
pub struct Token(String);

impl Token {
    /// The token text for the `X-Auth-Token` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(hidden)")
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The session table.
pub struct Sessions {
    by_hash: HashMap<[u8; 32], Session>,
    /// Idle timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("count", &self.by_hash.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Sessions {
    /// An empty table.
    pub fn new(timeout: Duration) -> Self {
        Sessions {
            by_hash: HashMap::new(),
            timeout,
        }
    }

    fn expire(&mut self, now: Instant) {
        let timeout = self.timeout;
        self.by_hash
            .retain(|_, s| now.saturating_duration_since(s.last_used) < timeout);
    }

    /// Start a session for `account`; `None` when the table is full.
    pub fn create(
        &mut self,
        account: &AccountView,
        now: Instant,
        wall: SystemTime,
    ) -> Option<(SessionView, Token)> {
        self.expire(now);
        if self.by_hash.len() >= MAX_SESSIONS {
            return None;
        }
        let token = random_hex(32);
        let view = SessionView {
            id: random_hex(16),
            account: account.id.clone(),
            user: account.user.clone(),
            created: wall,
        };
        self.by_hash.insert(
            token_hash(&token),
            Session {
                view: view.clone(),
                token_hash: token_hash(&token),
                last_used: now,
            },
        );
        Some((view, Token(token)))
    }

    /// The live session holding `token`, refreshed; expired sessions are removed.
    pub fn authenticate(&mut self, token: &str, now: Instant) -> Option<SessionView> {
        self.expire(now);
        let h = token_hash(token);
        let s = self.by_hash.get_mut(&h)?;
        if !bool::from(s.token_hash.ct_eq(&h)) {
            return None;
        }
        s.last_used = now;
        Some(s.view.clone())
    }

    /// Every live session.
    pub fn list(&mut self, now: Instant) -> Vec<SessionView> {
        self.expire(now);
        let mut v: Vec<_> = self.by_hash.values().map(|s| s.view.clone()).collect();
        v.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        v
    }

    /// One live session by id.
    pub fn get(&mut self, id: &str, now: Instant) -> Option<SessionView> {
        self.expire(now);
        self.by_hash
            .values()
            .find(|s| s.view.id == id)
            .map(|s| s.view.clone())
    }

    /// End a session by id.
    pub fn delete(&mut self, id: &str) -> bool {
        let before = self.by_hash.len();
        self.by_hash.retain(|_, s| s.view.id != id);
        self.by_hash.len() != before
    }

    /// End every session of an account.
    pub fn delete_account(&mut self, account: &str) {
        self.by_hash.retain(|_, s| s.view.account != account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        assert!(Role::ReadOnly.has(Privilege::Login));
        assert!(!Role::ReadOnly.has(Privilege::ConfigureComponents));
        assert!(Role::Operator.has(Privilege::ConfigureComponents));
        assert!(!Role::Operator.has(Privilege::ConfigureUsers));
        assert!(Role::Administrator.has(Privilege::ConfigureUsers));
        assert_eq!(Role::parse("Operator"), Some(Role::Operator));
        assert_eq!(Role::parse("operator"), None);
    }

    #[test]
    fn passwords() {
        assert!(matches!(
            hash_password("short"),
            Err(AuthError::PasswordLength)
        ));
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("correct horse"));
        let a = Accounts::with_admin("root", h).unwrap();
        assert!(a.verify("root", "correct horse").is_some());
        assert!(a.verify("root", "wrong horse!").is_none());
        assert!(a.verify("nobody", "correct horse").is_none());
    }

    #[test]
    fn last_admin_is_kept() {
        let mut a = Accounts::with_admin("root", hash_password("pw-pw-pw").unwrap()).unwrap();
        assert!(matches!(a.delete("1"), Err(AuthError::LastAdministrator)));
        assert!(matches!(
            a.update("1", None, Some(Role::Operator), None),
            Err(AuthError::LastAdministrator)
        ));
        assert!(matches!(
            a.update("1", None, None, Some(false)),
            Err(AuthError::LastAdministrator)
        ));
        let b = a
            .create(
                "second",
                hash_password("pw-pw-pw").unwrap(),
                Role::Administrator,
                true,
            )
            .unwrap();
        assert!(matches!(
            a.create("second", String::new(), Role::ReadOnly, true),
            Err(AuthError::UserExists(_))
        ));
        a.update("1", None, Some(Role::ReadOnly), None).unwrap();
        assert!(matches!(a.delete(&b.id), Err(AuthError::LastAdministrator)));
    }

    #[test]
    fn sessions_expire_when_idle() {
        let a = AccountView {
            id: "1".into(),
            user: "u".into(),
            role: Role::ReadOnly,
            enabled: true,
        };
        let mut s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let (view, token) = s.create(&a, t0, SystemTime::now()).unwrap();
        assert_eq!(token.expose().len(), 64);
        assert_eq!(format!("{token:?}"), "Token(hidden)");
        assert_eq!(
            s.authenticate(token.expose(), t0 + Duration::from_secs(59)),
            Some(view.clone())
        );
        // Use refreshes it.
        assert!(s
            .authenticate(token.expose(), t0 + Duration::from_secs(118))
            .is_some());
        assert!(s
            .authenticate(token.expose(), t0 + Duration::from_secs(178))
            .is_none());
        assert!(s.list(t0 + Duration::from_secs(178)).is_empty());
        assert!(s.authenticate("", t0).is_none());
    }

    #[test]
    fn session_limit() {
        let a = AccountView {
            id: "1".into(),
            user: "u".into(),
            role: Role::ReadOnly,
            enabled: true,
        };
        let mut s = Sessions::new(Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..MAX_SESSIONS {
            assert!(s.create(&a, now, SystemTime::now()).is_some());
        }
        assert!(s.create(&a, now, SystemTime::now()).is_none());
        s.delete_account("1");
        assert!(s.create(&a, now, SystemTime::now()).is_some());
    }
}
