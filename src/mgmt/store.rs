//! What the management plane persists — accounts, assignments, per-assignment policies,
//! event subscriptions — behind a small [`Store`] trait, with an embedded transactional backend
//! ([`RedbStore`], on the `redb` crate).
//!
//! The trait is a key-value store of opaque values in a few named [`Table`]s, changed only in
//! [`Store::commit`] batches: a batch is applied whole or not at all, and once `commit`
//! returns it survives a crash (redb commits with `Durability::Immediate`: copy-on-write pages,
//! then a checksummed header flip, fsynced). What the values are (JSON of an account, a
//! policy) is the caller's business, so a second backend (the fabric issue's) only has to
//! provide these four operations. `tests/mgmt_store.rs` SIGKILLs a writer at random moments
//! and checks that every restart finds an acknowledged state or the one before it.
//!
//! The Redfish service keeps its durable state here (docs/api.md, "Persistence"): accounts
//! ([`AccountRecord`], the Argon2 hash, never a password), the assignments the API
//! acknowledged ([`AssignmentRecord`]) and, in [`Table::Meta`], a generation counter that
//! every commit of the service increments ([`GENERATION`]), with a lease when the assignment
//! has one ([`LeaseRecord`]); the policies of Connections; the appliance-wide rules
//! ([`RulesRecord`] in [`Table::Rules`]); the EventService's push subscriptions
//! ([`SubscriptionRecord`] in [`Table::Subscriptions`]); the cards added over the API
//! ([`DeviceRecord`] in [`Table::Devices`], built again when the appliance starts).
//! [`MemoryStore`] is the backend
//! of an appliance started without a configuration file: nothing survives its restart.
//!
//! A stored value that does not decode (a hand-edited or foreign file) is logged and skipped
//! by the loaders here, never a panic. A database made before the `assignments` table existed
//! gets it when it is opened (every table is created on open).

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use crate::sync::MutexExt;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// The tables of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// API accounts, by user name.
    Accounts,
    /// Assignments made through the API, by function id: the owner the operator last
    /// acknowledged, or none (explicitly unassigned). Restored when the appliance starts.
    Assignments,
    /// Per-assignment policies, by function id.
    Policies,
    /// Event subscriptions, by subscription id.
    Subscriptions,
    /// The appliance-wide rules ([`RulesRecord`] under [`RULES_KEY`]) and the schedules
    /// ([`ScheduleRecord`] under [`schedule_key`]); docs/api.md "Rules", "Schedules".
    Rules,
    /// Cards added over the API (`#Pcietun.AddDevice`), by the id of their function 0
    /// ([`DeviceRecord`]): built again when the appliance starts; a card removed over the API
    /// leaves this table with its assignment and policy records.
    Devices,
    /// SR-IOV VF counts set over the API (`#Pcietun.SetVfCount`), by the id of the physical
    /// function: the count (a JSON number), set again when the appliance starts.
    VfCounts,
    /// The store's own bookkeeping (schema version, generation counters).
    Meta,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 8] = [
        Table::Accounts,
        Table::Assignments,
        Table::Policies,
        Table::Subscriptions,
        Table::Rules,
        Table::Devices,
        Table::VfCounts,
        Table::Meta,
    ];

    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(match self {
            Table::Accounts => "accounts",
            Table::Assignments => "assignments",
            Table::Policies => "policies",
            Table::Subscriptions => "subscriptions",
            Table::Rules => "rules",
            Table::Devices => "devices",
            Table::VfCounts => "vf_counts",
            Table::Meta => "meta",
        })
    }
}

/// One change of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set `key` to `value`.
    Put {
        /// The table.
        table: Table,
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` (no error if absent).
    Delete {
        /// The table.
        table: Table,
        /// The key.
        key: String,
    },
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption, a database locked by another process).
    #[error("management store {path}: {source}")]
    Backend {
        /// The database file.
        path: PathBuf,
        /// The backend's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A value could not be encoded for storing.
    #[error("management store: cannot encode a value: {0}")]
    Encode(String),
}

/// Persistent state of the management plane.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The value of `key` in `table`.
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every entry of `table`, by key order.
    fn list(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Apply `changes` atomically and durably: when this returns `Ok`, all of them survive a
    /// crash; when it fails or the process dies first, none of them is visible.
    fn commit(&self, changes: &[Change]) -> Result<(), StoreError>;
}

/// The store in one redb database file.
///
/// redb rather than SQLite: pure Rust (no C library to build or link), ACID with crash-safe
/// copy-on-write commits, and a key-value model that is exactly this trait; the file is locked
/// against a second process opening it.
#[derive(Debug)]
pub struct RedbStore {
    db: redb::Database,
    path: PathBuf,
}

impl RedbStore {
    /// Open (or create) the database at `path`; every table exists afterwards.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |e: redb::Error| StoreError::Backend {
            path: path.to_path_buf(),
            source: Box::new(e),
        };
        if !path.exists() {
            Self::create_atomically(path).map_err(err)?;
        }
        let db = redb::Database::create(path).map_err(|e| err(e.into()))?;
        let store = RedbStore {
            db,
            path: path.to_path_buf(),
        };
        let txn = store.db.begin_write().map_err(|e| err(e.into()))?;
        for t in Table::ALL {
            txn.open_table(t.definition()).map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(store)
    }

    /// A new database is made beside `path` and renamed into place once its first commit is
    /// durable: redb's commits are crash-safe, but the creation of the file is not (a kill
    /// while redb writes the first header leaves a file it refuses to open). A left-over
    /// half-made file from an earlier crash is discarded.
    fn create_atomically(path: &Path) -> Result<(), redb::Error> {
        let io = redb::Error::Io;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        {
            let db = redb::Database::create(&tmp)?;
            let txn = db.begin_write()?;
            for t in Table::ALL {
                txn.open_table(t.definition())?;
            }
            txn.commit()?;
        }
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Backend {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }
}

impl Store for RedbStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn
            .open_table(table.definition())
            .map_err(|e| self.err(e))?;
        let v = t.get(key).map_err(|e| self.err(e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    fn list(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn
            .open_table(table.definition())
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        for c in changes {
            match c {
                Change::Put { table, key, value } => {
                    let mut t = txn
                        .open_table(table.definition())
                        .map_err(|e| self.err(e))?;
                    t.insert(key.as_str(), value.as_slice())
                        .map_err(|e| self.err(e))?;
                }
                Change::Delete { table, key } => {
                    let mut t = txn
                        .open_table(table.definition())
                        .map_err(|e| self.err(e))?;
                    t.remove(key.as_str()).map_err(|e| self.err(e))?;
                }
            }
        }
        // Dropping an uncommitted transaction aborts it: an error above leaves nothing.
        txn.commit().map_err(|e| self.err(e))
    }
}

/// The in-memory backend: the same atomic batches, nothing durable. For an appliance whose
/// API has no state file (it warns that nothing will survive a restart) and for tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: std::sync::Mutex<std::collections::BTreeMap<(u8, String), Vec<u8>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }
}

fn table_index(t: Table) -> u8 {
    Table::ALL.iter().position(|x| *x == t).unwrap_or(0) as u8
}

impl Store for MemoryStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tables
            .lock_or_recover()
            .get(&(table_index(table), key.to_string()))
            .cloned())
    }

    fn list(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let t = table_index(table);
        Ok(self
            .tables
            .lock_or_recover()
            .iter()
            .filter(|((i, _), _)| *i == t)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        let mut tables = self.tables.lock_or_recover();
        for c in changes {
            match c {
                Change::Put { table, key, value } => {
                    tables.insert((table_index(*table), key.clone()), value.clone());
                }
                Change::Delete { table, key } => {
                    tables.remove(&(table_index(*table), key.clone()));
                }
            }
        }
        Ok(())
    }
}

/// The [`Table::Meta`] key of the generation: a decimal counter that every commit of the
/// management service increments in the same batch, so the state after a restart tells how
/// many changes had been made durable (the log says which generation was loaded).
pub const GENERATION: &str = "generation";

/// The [`Table::Meta`] key of the next account id (ids are never reused).
pub const NEXT_ACCOUNT_ID: &str = "next_account_id";

/// An API account as stored (key: its id). Only the Argon2id PHC hash of the password is kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountRecord {
    /// Stable id.
    pub id: String,
    /// Login name.
    pub user: String,
    /// RoleId (`Administrator`, `Operator`, `ReadOnly`).
    pub role: String,
    /// Whether it may log in.
    pub enabled: bool,
    /// Argon2id PHC string.
    pub hash: String,
}

/// An assignment the API acknowledged (key: the function id): the owner, or `None` for a
/// function explicitly returned to the pool (which then stays unassigned across restarts even
/// if the configuration assigns it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentRecord {
    /// The owner.
    pub host: Option<String>,
    /// The VM on the owner the assignment named (`Oem.Pcietun.Vm.Name`, `ctl assign --vm`);
    /// absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// The lease the assignment carries (`Oem.Pcietun.LeaseSeconds`, `ctl assign --lease`);
    /// absent when it has none and in records written before leases existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseRecord>,
}

/// A lease as stored with its assignment: the hold time and when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    /// The hold time asked for, in seconds.
    pub seconds: u64,
    /// When it ends, in seconds since the Unix epoch (UTC).
    pub until_unix: u64,
}

/// A card added over the API (`#Pcietun.AddDevice`, [`Table::Devices`], keyed by the id of its
/// function 0): what the appliance needs to build it again at the same place with the same
/// function ids when it starts (docs/api.md "Persistence").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRecord {
    /// The spec as the client sent it (the `--device` grammar); checked again against
    /// `[api] device_dirs` when it is restored.
    pub spec: String,
    /// The `Name` the client gave (`None`: the ids derive from the device number).
    pub name: Option<String>,
    /// The card's PCIeDevice id (`card-DD`, its device number) when it was added.
    pub card: String,
    /// Its function ids then, function 0 first.
    pub functions: Vec<String>,
}

/// The [`Table::Rules`] key of the appliance-wide rules.
pub const RULES_KEY: &str = "rules";

/// The [`Table::Rules`] key prefix of a schedule: `schedule/` and its id in 20 digits, so the
/// table lists schedules in id order.
pub const SCHEDULE_PREFIX: &str = "schedule/";

/// The [`Table::Rules`] key of schedule `id`.
pub fn schedule_key(id: u64) -> String {
    format!("{SCHEDULE_PREFIX}{id:020}")
}

/// The [`Table::Meta`] key of the next schedule id (ids are never reused).
pub const NEXT_SCHEDULE_ID: &str = "next_schedule_id";

/// A schedule as stored (docs/api.md "Schedules"): the function goes to `host` from `start`
/// to `end` (UTC, `HH:MM`, daily), and to `then` (or the pool) outside.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRecord {
    /// The function.
    pub function: String,
    /// Its owner during the window.
    pub host: String,
    /// Window start, `HH:MM` UTC.
    pub start: String,
    /// Window end, `HH:MM` UTC (before `start`: the window wraps midnight).
    pub end: String,
    /// Its owner outside (`None`: the pool).
    pub then: Option<String>,
}

/// The [`Table::Subscriptions`] key of subscription `id` (20 digits, so the table lists
/// subscriptions in id order).
pub fn subscription_key(id: u64) -> String {
    format!("{id:020}")
}

/// The [`Table::Meta`] key of the next subscription id (ids are never reused).
pub const NEXT_SUBSCRIPTION_ID: &str = "next_subscription_id";

/// A push event subscription as stored (docs/api.md "Events"): where events go and which
/// ones. The empty lists mean "every event".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRecord {
    /// The `http` or `https` URL events are POSTed to.
    pub destination: String,
    /// The client's `Context`, sent back in every event.
    pub context: String,
    /// `EventTypes` filter.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// `RegistryPrefixes` filter.
    #[serde(default)]
    pub registry_prefixes: Vec<String>,
    /// `MessageIds` filter.
    #[serde(default)]
    pub message_ids: Vec<String>,
    /// `OriginResources` filter (resource URIs).
    #[serde(default)]
    pub origin_resources: Vec<String>,
    /// `SubordinateResources`: origins below an `OriginResources` entry match too.
    #[serde(default)]
    pub subordinate_resources: bool,
    /// `DeliveryRetryPolicy` (`SuspendRetries` or `TerminateAfterRetries`).
    pub retry_policy: String,
    /// Suspended after its retries ran out (`Status.State` `Disabled`); no events are sent.
    #[serde(default)]
    pub suspended: bool,
}

/// The appliance-wide rules as stored (docs/api.md "Rules"). Once stored (by a PATCH of
/// `Oem.Pcietun.Rules` on the Fabric), they win over the configuration's `[api]
/// reclaim_after_s`, as acknowledged assignments win over configured ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesRecord {
    /// Seconds a host's session may be lost before its functions return to the pool; `None`
    /// for never.
    pub reclaim_after_s: Option<u64>,
}

/// Decode every value of `table` as `T`; an entry that does not decode is logged (warn, with
/// the store's name for it) and skipped.
pub fn load_records<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    table: Table,
) -> Result<Vec<(String, T)>, StoreError> {
    let mut out = Vec::new();
    for (key, value) in store.list(table)? {
        match serde_json::from_slice::<T>(&value) {
            Ok(v) => out.push((key, v)),
            Err(e) => tracing::warn!(
                table = ?table,
                key = %key.escape_debug(),
                error = %e,
                "management store: a stored value does not decode; skipped"
            ),
        }
    }
    Ok(out)
}

/// The stored generation (0 for a new store; a value that does not decode is logged and
/// counted as 0).
pub fn generation(store: &dyn Store) -> Result<u64, StoreError> {
    meta_u64(store, GENERATION)
}

/// A decimal counter of [`Table::Meta`] (0 when absent or unreadable, which is logged).
pub fn meta_u64(store: &dyn Store, key: &str) -> Result<u64, StoreError> {
    Ok(match store.get(Table::Meta, key)? {
        None => 0,
        Some(v) => match std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()) {
            Some(n) => n,
            None => {
                tracing::warn!(key, "management store: meta value does not decode; using 0");
                0
            }
        },
    })
}

/// The assignments to make when the appliance starts (see [`plan_restore`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestorePlan {
    /// From the store, applied first: (function, host).
    pub stored: Vec<(String, String)>,
    /// From the configuration, for functions the store does not mention: (function, host).
    pub configured: Vec<(String, String)>,
    /// Stored entries that name a function or host the appliance does not have (logged,
    /// ignored, kept in the store).
    pub ignored: Vec<String>,
}

/// Merge the acknowledged assignments of the store with the configuration's: every stored
/// entry wins for its function (an owner is applied, `None` keeps the function unassigned);
/// configured entries apply only to functions the store does not mention. A stored entry
/// whose function is not in the inventory (`functions`) or whose host is not known (`hosts`)
/// is reported in [`RestorePlan::ignored`] and does not block the configuration's entry for
/// that function either, since the store keeps it for when the function comes back.
pub fn plan_restore(
    stored: &[(String, AssignmentRecord)],
    configured: &[(String, String)],
    functions: &[String],
    hosts: &[String],
) -> RestorePlan {
    let mut plan = RestorePlan::default();
    let mut mentioned = std::collections::BTreeSet::new();
    for (function, rec) in stored {
        if !functions.contains(function) {
            plan.ignored.push(format!(
                "stored assignment of function {function:?}, which the appliance does not have"
            ));
            continue;
        }
        match &rec.host {
            Some(h) if !hosts.contains(h) => {
                plan.ignored.push(format!(
                    "stored assignment of function {function:?} to host {h:?}, which is not a known host"
                ));
                continue;
            }
            Some(h) => plan.stored.push((function.clone(), h.clone())),
            None => {}
        }
        mentioned.insert(function.as_str());
    }
    plan.configured = configured
        .iter()
        .filter(|(f, _)| !mentioned.contains(f.as_str()))
        .cloned()
        .collect();
    plan
}

/// A job of the [`Durable`] saver thread.
type Job = Box<dyn FnOnce() + Send>;

/// The management service's handle on its store: every commit carries the next
/// [`GENERATION`] in the same batch, commits are serialised, and [`Durable::later`] runs work
/// (a commit, then completing the Task it acknowledges) on a dedicated saver thread, so the
/// fsync of a commit never blocks the appliance's serving loop nor the API's I/O workers.
pub struct Durable {
    store: Arc<dyn Store>,
    name: String,
    generation: Mutex<u64>,
    saver: Mutex<Option<mpsc::Sender<Job>>>,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Durable {
    /// Wrap `store` (named `name` in logs: its path, or "memory").
    pub fn new(store: Arc<dyn Store>, name: impl Into<String>) -> Result<Arc<Self>, StoreError> {
        let generation = generation(&*store)?;
        Ok(Arc::new(Durable {
            store,
            name: name.into(),
            generation: Mutex::new(generation),
            saver: Mutex::new(None),
        }))
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Its name (path or "memory").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The generation of the last commit.
    pub fn generation(&self) -> u64 {
        *self.generation.lock_or_recover()
    }

    /// Commit `changes` with the next generation; the generation on success. On failure
    /// nothing of the batch is stored and the generation is unchanged.
    pub fn commit(&self, mut changes: Vec<Change>) -> Result<u64, StoreError> {
        let mut g = self.generation.lock_or_recover();
        let next = *g + 1;
        changes.push(Change::Put {
            table: Table::Meta,
            key: GENERATION.into(),
            value: next.to_string().into_bytes(),
        });
        self.store.commit(&changes)?;
        *g = next;
        Ok(next)
    }

    /// Wait (at most `timeout`) until every job given to [`Durable::later`] before this call
    /// has run: a request that has just seen the pool finish an operation, or reads a Task,
    /// sees the Task as the commit left it. Cheap when the saver is idle.
    pub fn flush(&self, timeout: std::time::Duration) {
        if self.saver.lock_or_recover().is_none() {
            return;
        }
        let (tx, rx) = mpsc::channel::<()>();
        self.later(move || {
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(timeout);
    }

    /// Run `job` on the saver thread, after every job given before it (started on first use;
    /// if it cannot be started, `job` runs on the calling thread).
    pub fn later(&self, job: impl FnOnce() + Send + 'static) {
        let mut saver = self.saver.lock_or_recover();
        if saver.is_none() {
            let (tx, rx) = mpsc::channel::<Job>();
            let spawned = std::thread::Builder::new()
                .name("api-store".into())
                .spawn(move || {
                    // Ends when the service (and with it the sender) is gone.
                    for job in rx {
                        job();
                    }
                });
            match spawned {
                Ok(_) => *saver = Some(tx),
                Err(e) => {
                    tracing::error!("management store: cannot start the saver thread: {e}");
                    drop(saver);
                    job();
                    return;
                }
            }
        }
        let job: Job = Box::new(job);
        if let Some(tx) = saver.as_ref() {
            if let Err(mpsc::SendError(job)) = tx.send(job) {
                *saver = None;
                drop(saver);
                job();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(table: Table, key: &str, value: &str) -> Change {
        Change::Put {
            table,
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn batches_persist_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("mgmt.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            s.commit(&[
                put(Table::Accounts, "ops", "{\"role\":\"Operator\"}"),
                put(Table::Policies, "nvme0", "{\"max_iops\":1000}"),
                put(Table::Accounts, "viewer", "{}"),
            ])
            .unwrap();
            s.commit(&[Change::Delete {
                table: Table::Accounts,
                key: "viewer".into(),
            }])
            .unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(
            s.list(Table::Accounts).unwrap(),
            vec![("ops".to_string(), b"{\"role\":\"Operator\"}".to_vec())]
        );
        assert_eq!(
            s.get(Table::Policies, "nvme0").unwrap().as_deref(),
            Some(&b"{\"max_iops\":1000}"[..])
        );
        assert_eq!(s.get(Table::Subscriptions, "x").unwrap(), None);
    }

    #[test]
    fn a_second_process_cannot_open_it_and_errors_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("mgmt.redb");
        let _first = RedbStore::open(&path).unwrap();
        let e = RedbStore::open(&path).unwrap_err();
        assert!(e.to_string().contains("mgmt.redb"), "{e}");
        let e = RedbStore::open(d.path()).unwrap_err();
        assert!(e.to_string().contains("management store"), "{e}");
    }

    fn rec(host: Option<&str>) -> AssignmentRecord {
        AssignmentRecord {
            host: host.map(str::to_string),
            vm: None,
            lease: None,
        }
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn pair(f: &str, h: &str) -> (String, String) {
        (f.to_string(), h.to_string())
    }

    #[test]
    fn restore_store_wins_over_the_configuration() {
        let stored = vec![
            ("dma-a".to_string(), rec(Some("web2"))),
            ("dma-b".to_string(), rec(None)),
            ("gone".to_string(), rec(Some("web1"))),
            ("dma-c".to_string(), rec(Some("nobody"))),
        ];
        let configured = vec![
            pair("dma-a", "web1"),
            pair("dma-b", "web1"),
            pair("dma-c", "web1"),
            pair("dma-d", "web2"),
        ];
        let plan = plan_restore(
            &stored,
            &configured,
            &strs(&["dma-a", "dma-b", "dma-c", "dma-d"]),
            &strs(&["web1", "web2"]),
        );
        // The store's owner for dma-a; dma-b stays unassigned although configured.
        assert_eq!(plan.stored, vec![pair("dma-a", "web2")]);
        // dma-c's stored host is unknown: ignored, so the configuration applies; dma-d is
        // not in the store.
        assert_eq!(
            plan.configured,
            vec![pair("dma-c", "web1"), pair("dma-d", "web2")]
        );
        assert_eq!(plan.ignored.len(), 2, "{:?}", plan.ignored);
        assert!(plan.ignored[0].contains("\"gone\""), "{:?}", plan.ignored);
        assert!(plan.ignored[1].contains("\"nobody\""), "{:?}", plan.ignored);
    }

    #[test]
    fn restore_with_an_empty_store_is_the_configuration() {
        let configured = vec![pair("a", "h"), pair("b", "h")];
        let plan = plan_restore(&[], &configured, &strs(&["a", "b"]), &strs(&["h"]));
        assert_eq!(plan.stored, Vec::<(String, String)>::new());
        assert_eq!(plan.configured, configured);
        assert!(plan.ignored.is_empty());
    }

    #[test]
    fn bad_stored_values_are_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        for store in [
            Box::new(MemoryStore::new()) as Box<dyn Store>,
            Box::new(RedbStore::open(&dir.path().join("s.redb")).unwrap()),
        ] {
            store
                .commit(&[
                    put(Table::Assignments, "good", "{\"host\":\"web1\"}"),
                    put(Table::Assignments, "free", "{\"host\":null}"),
                    put(Table::Assignments, "broken", "{\"host\":"),
                    put(Table::Assignments, "wrong-type", "{\"host\":7}"),
                    put(Table::Assignments, "extra", "{\"host\":null,\"x\":1}"),
                    Change::Put {
                        table: Table::Assignments,
                        key: "binary".into(),
                        value: vec![0xff, 0x00, 0xfe],
                    },
                    put(Table::Meta, GENERATION, "not a number"),
                ])
                .unwrap();
            let got = load_records::<AssignmentRecord>(&*store, Table::Assignments).unwrap();
            assert_eq!(
                got,
                vec![
                    ("free".to_string(), rec(None)),
                    ("good".to_string(), rec(Some("web1"))),
                ]
            );
            assert_eq!(generation(&*store).unwrap(), 0);
            let accounts = load_records::<AccountRecord>(&*store, Table::Assignments).unwrap();
            assert!(accounts.is_empty());
        }
    }

    #[test]
    fn memory_store_batches() {
        let s = MemoryStore::new();
        s.commit(&[put(Table::Accounts, "1", "a"), put(Table::Meta, "1", "m")])
            .unwrap();
        s.commit(&[Change::Delete {
            table: Table::Meta,
            key: "1".into(),
        }])
        .unwrap();
        assert_eq!(s.list(Table::Accounts).unwrap().len(), 1);
        assert_eq!(s.get(Table::Meta, "1").unwrap(), None);
        assert_eq!(
            s.get(Table::Accounts, "1").unwrap().as_deref(),
            Some(&b"a"[..])
        );
    }
}
