//! Configuration of the management API: the `[api]` table of the appliance configuration, the
//! `--api ADDR` / `--api-admin NAME:PASSWORD_FILE` flags, and the first administrator's
//! password file (which must not be readable by group or others; there is no built-in default
//! password).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

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
    /// `--api-admin` without `NAME:FILE`.
    #[error("--api-admin wants NAME:PASSWORD_FILE, got {0:?}")]
    AdminArg(String),
    /// A listen address that does not parse.
    #[error("API listen address {0:?} is not IP:PORT")]
    Listen(String),
    /// Only one of the TLS files.
    #[error("[api] TLS needs both tls_cert and tls_key")]
    TlsPair,
    /// A session timeout outside 30..=86400 s.
    #[error("[api] session_timeout_s must be 30 to 86400, got {0}")]
    SessionTimeout(u64),
}

/// The `[api]` table as written in the appliance configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiFileConfig {
    /// `listen = "127.0.0.1:8443"`.
    pub listen: Option<String>,
    /// `tls_cert = "PATH"`.
    pub tls_cert: Option<PathBuf>,
    /// `tls_key = "PATH"`.
    pub tls_key: Option<PathBuf>,
    /// `admin = "NAME"`.
    pub admin: Option<String>,
    /// `admin_password_file = "PATH"`.
    pub admin_password_file: Option<PathBuf>,
    /// `session_timeout_s = 1800`.
    pub session_timeout_s: Option<u64>,
}

impl ApiConfig {
    /// Resolve the `[api]` table (relative paths are relative to `base`, the configuration
    /// file's directory).
    pub fn from_file(file: &ApiFileConfig, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg = ApiConfig::default();
        if let Some(l) = &file.listen {
            cfg.listen = parse_listen(l)?;
        }
        let rel = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };
        cfg.tls = match (&file.tls_cert, &file.tls_key) {
            (Some(c), Some(k)) => Some(TlsFiles {
                cert: rel(c),
                key: rel(k),
            }),
            (None, None) => None,
            _ => return Err(ConfigError::TlsPair),
        };
        cfg.admin = file.admin.clone();
        cfg.admin_password_file = file.admin_password_file.as_ref().map(rel);
        if let Some(t) = file.session_timeout_s {
            if !super::redfish::body::SESSION_TIMEOUT_RANGE.contains(&t) {
                return Err(ConfigError::SessionTimeout(t));
            }
            cfg.session_timeout = Duration::from_secs(t);
        }
        Ok(cfg)
    }

    /// Apply `--api-admin NAME:PASSWORD_FILE`.
    pub fn set_admin_arg(&mut self, arg: &str) -> Result<(), ConfigError> {
        let (name, file) = arg
            .split_once(':')
            .filter(|(n, f)| !n.is_empty() && !f.is_empty())
            .ok_or_else(|| ConfigError::AdminArg(arg.into()))?;
        self.admin = Some(name.into());
        self.admin_password_file = Some(file.into());
        Ok(())
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

/// Read a secret file: refused if group- or other-accessible; its first line is the secret.
pub fn read_password_file(path: &Path) -> Result<Zeroizing<String>, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| ConfigError::PasswordFile {
        path: path.into(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::PasswordFileMode {
            path: path.into(),
            mode,
        });
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
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
    fn file_table() {
        let t: ApiFileConfig = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nadmin = \"root\"\nadmin_password_file = \"pw\"\ntls_cert = \"c.pem\"\ntls_key = \"/k.pem\"\n",
        )
        .unwrap();
        let c = ApiConfig::from_file(&t, Path::new("/etc/pcietun")).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(
            c.admin_password_file.as_deref(),
            Some(Path::new("/etc/pcietun/pw"))
        );
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "/etc/pcietun/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        assert!(toml::from_str::<ApiFileConfig>("bogus = 1").is_err());
        let t: ApiFileConfig = toml::from_str("tls_cert = \"c\"").unwrap();
        assert!(matches!(
            ApiConfig::from_file(&t, Path::new("/")),
            Err(ConfigError::TlsPair)
        ));
        assert!(matches!(
            ApiConfig::default().admin_credentials(),
            Err(ConfigError::NoAdministrator)
        ));
        let mut c = ApiConfig::default();
        assert!(c.set_admin_arg("root").is_err());
        c.set_admin_arg("root:/x").unwrap();
        assert_eq!(c.admin.as_deref(), Some("root"));
        assert_eq!(ApiConfig::default().listen.to_string(), DEFAULT_LISTEN);
    }
}
