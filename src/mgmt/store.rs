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
//! Not wired into the Redfish service yet: accounts, assignments, policies and subscriptions
//! still live in memory there (docs/api.md, "Not yet"). A database made before the
//! `assignments` table existed gets it when it is opened (every table is created on open).

use std::path::{Path, PathBuf};

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
    /// The store's own bookkeeping (schema version, generation counters).
    Meta,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 5] = [
        Table::Accounts,
        Table::Assignments,
        Table::Policies,
        Table::Subscriptions,
        Table::Meta,
    ];

    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(match self {
            Table::Accounts => "accounts",
            Table::Assignments => "assignments",
            Table::Policies => "policies",
            Table::Subscriptions => "subscriptions",
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
}

/// Persistent state of the management plane.
pub trait Store: Send + Sync + 'static {
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
}
