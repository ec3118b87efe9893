//! Configuration of the management API server: where it listens, TLS, the first administrator
//! and its password file (which must be a regular file readable by its owner only, the rule of
//! key files in `crate::transport::keys`; there is no built-in default password).
//!
//! The appliance's `[api]` table and its `--api` / `--api-admin` flags are parsed by
//! `crate::appliance::config` into its own plain `ApiSettings` (mgmt and appliance do not
//! import each other); `pcietun appliance` converts that into an [`ApiConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use zeroize::Zeroizing;

use super::store::{MemoryStore, RedbStore, Store, StoreError};

use super::redfish::{DEFAULT_MAX_BODY, DEFAULT_SESSION_TIMEOUT};

/// Where the API listens by default: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// TLS certificate chain and private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The resolved API configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// TLS, or plain HTTP when `None`.
    pub tls: Option<TlsFiles>,
    /// Name of the first administrator.
    pub admin: Option<String>,
    /// File holding its password.
    pub admin_password_file: Option<PathBuf>,
    /// Session idle timeout.
    pub session_timeout: Duration,
    /// Largest request body accepted.
    pub max_body: usize,
    /// The state file (accounts, acknowledged assignments; docs/api.md "Persistence"), or
    /// `None` for state in memory only, which does not survive a restart.
    pub state: Option<PathBuf>,
    /// The lost-session rule (`[api] reclaim_after_s`; docs/api.md "Rules"): how long a
    /// host's session may be lost before its functions return to the pool; `None` for never.
    /// Rules changed through the API are stored and win over it.
    pub reclaim_after: Option<Duration>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            tls: None,
            admin: None,
            admin_password_file: None,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
            state: None,
            reclaim_after: None,
        }
    }
}

/// Why the API configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No `admin` / `admin_password_file`.
    #[error("the API needs a first administrator: set [api] admin = \"NAME\" and admin_password_file = \"PATH\" (or --api-admin NAME:PASSWORD_FILE); there is no default password")]
    NoAdministrator,
    /// The password file cannot be read.
    #[error("admin password file {path}: {source}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The password file is readable by others.
    #[error(
        "admin password file {path} is readable by group or others (mode {mode:o}); chmod 600 it"
    )]
    PasswordFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The password in the file does not meet the policy.
    #[error("admin password file {path}: the password must be {min} to {max} characters on the first line")]
    PasswordLength {
        /// The file.
        path: PathBuf,
        /// Minimum.
        min: usize,
        /// Maximum.
        max: usize,
    },
    /// Not a regular file, or too large to hold a password.
    #[error("admin password file {path}: {why}")]
    PasswordFileKind {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// A listen address that does not parse.
    #[error("API listen address {0:?} is not IP:PORT")]
    Listen(String),
}

/// Largest password file read (one line of at most 128 characters, and some slack).
const MAX_PASSWORD_FILE: u64 = 4096;

impl ApiConfig {
    /// Open the state store: the file of [`ApiConfig::state`] (created if absent; an error
    /// that names it when it cannot be opened, is locked by another process or is not a
    /// store), or a [`MemoryStore`] with a warning in the log that nothing will survive a
    /// restart. Returns the store and its name for logs.
    pub fn open_state(&self) -> Result<(Arc<dyn Store>, String), StoreError> {
        match &self.state {
            Some(path) => {
                let store = RedbStore::open(path)?;
                tracing::info!(path = %path.display(), "management API state file opened");
                Ok((Arc::new(store), path.display().to_string()))
            }
            None => {
                tracing::warn!(
                    "management API: no state file (no configuration file and no --state): \
                     accounts and assignments made through the API are kept in memory only and \
                     will NOT survive a restart"
                );
                Ok((Arc::new(MemoryStore::new()), "memory".to_string()))
            }
        }
    }

    /// The first administrator and its password, read from the password file.
    pub fn admin_credentials(&self) -> Result<(String, Zeroizing<String>), ConfigError> {
        match (&self.admin, &self.admin_password_file) {
            (Some(name), Some(file)) => Ok((name.clone(), read_password_file(file)?)),
            _ => Err(ConfigError::NoAdministrator),
        }
    }
}

/// Parse an `IP:PORT` listen address.
pub fn parse_listen(s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| ConfigError::Listen(s.into()))
}

/// Read a password file: refused unless it is a regular file that only its owner can read
/// (mode 0600 or stricter) and small; its first line is the password.
pub fn read_password_file(path: &Path) -> Result<Zeroizing<String>, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let io = |source| ConfigError::PasswordFile {
        path: path.into(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    let kind = |why| ConfigError::PasswordFileKind {
        path: path.into(),
        why,
    };
    if !meta.is_file() {
        return Err(kind("not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::PasswordFileMode {
            path: path.into(),
            mode,
        });
    }
    if meta.len() > MAX_PASSWORD_FILE {
        return Err(kind("too large for a password file"));
    }
    let mut text = Zeroizing::new(String::new());
    f.take(MAX_PASSWORD_FILE)
        .read_to_string(&mut text)
        .map_err(io)?;
    let first = text.lines().next().unwrap_or("");
    let range = crate::mgmt::auth::PASSWORD_LEN;
    if !range.contains(&first.chars().count()) {
        return Err(ConfigError::PasswordLength {
            path: path.into(),
            min: *range.start(),
            max: *range.end(),
        });
    }
    Ok(Zeroizing::new(first.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn password_file_rules() {
        let d = tempfile::tempdir().unwrap();
        let good = write(d.path(), "good", "s3cret-password\nignored\n", 0o600);
        assert_eq!(
            read_password_file(&good).unwrap().as_str(),
            "s3cret-password"
        );
        let open = write(d.path(), "open", "s3cret-password\n", 0o644);
        let e = read_password_file(&open).unwrap_err();
        assert!(
            matches!(e, ConfigError::PasswordFileMode { mode: 0o644, .. }),
            "{e}"
        );
        let short = write(d.path(), "short", "abc\n", 0o400);
        assert!(matches!(
            read_password_file(&short),
            Err(ConfigError::PasswordLength { .. })
        ));
        assert!(matches!(
            read_password_file(&d.path().join("missing")),
            Err(ConfigError::PasswordFile { .. })
        ));
    }

    #[test]
    fn not_a_file_and_no_administrator() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_password_file(d.path()),
            Err(ConfigError::PasswordFileKind { .. })
        ));
        let big = write(d.path(), "big", &"x".repeat(5000), 0o600);
        assert!(matches!(
            read_password_file(&big),
            Err(ConfigError::PasswordFileKind { .. })
        ));
        assert!(matches!(
            ApiConfig::default().admin_credentials(),
            Err(ConfigError::NoAdministrator)
        ));
        assert_eq!(ApiConfig::default().listen.to_string(), DEFAULT_LISTEN);
    }
}
