//! Static X25519 key pairs, optional pre-shared keys, host identities and the files they live
//! in (docs/security.md "Key management").
//!
//! Key files hold one base64 line, as WireGuard's `wg genkey` writes them. A private key or PSK
//! file must be a regular file readable by its owner only (mode `0600` or stricter); one that a
//! group or others can read is refused. Secrets are zeroized on drop and never printed: their
//! `Debug` shows `..`. Public keys are not secret; they print as base64.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Bytes of every key here.
pub const KEY_LEN: usize = 32;

/// Environment variable that may hold a private key (base64) instead of `--key FILE`.
pub const KEY_ENV: &str = "PCIETUN_PRIVATE_KEY";

/// Largest key file we read (one base64 line and some whitespace).
const MAX_KEY_FILE: u64 = 256;

/// What went wrong with a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not 32 bytes of base64.
    #[error("{what}: not a key (want 32 bytes in base64, 44 characters)")]
    Malformed {
        /// Where the text came from.
        what: String,
    },
    /// The key file can be read by group or others.
    #[error("{path}: key file is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`", path = .path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file, or too large to be a key.
    #[error("{path}: not a key file ({why})", path = .path.display())]
    NotAKeyFile {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        why: &'static str,
    },
    /// Refusing to overwrite an existing key.
    #[error("{path}: already exists; refusing to overwrite a key", path = .path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// I/O on the key file.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The environment variable is set but not valid UTF-8.
    #[error("${0} is not valid UTF-8")]
    Env(&'static str),
    /// The public development key on a link other than loopback.
    #[error(
        "the built-in development key is public and only allowed on loopback, not on {addr}; \
         create keys with `pcietun keygen` (docs/security.md)"
    )]
    DevelopmentKeyOffLoopback {
        /// The non-loopback address.
        addr: String,
    },
    /// A host name that does not fit a [`HostId`].
    #[error("host id {0:?} must be 1 to 16 bytes")]
    BadHostId(String),
    /// The same public key listed for two hosts.
    #[error("hosts {0:?} and {1:?} have the same public key")]
    DuplicateHost(String, String),
}

fn decode32(text: &str, what: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let bad = || KeyError::Malformed {
        what: what.to_string(),
    };
    let t = text.trim();
    // 32 bytes are 44 base64 characters; anything longer is not a key (and is not decoded).
    if t.len() != 44 {
        return Err(bad());
    }
    let mut out = Zeroizing::new([0u8; 48]);
    let n = B64.decode_slice(t, &mut out[..]).map_err(|_| bad())?;
    if n != KEY_LEN {
        return Err(bad());
    }
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    k.copy_from_slice(&out[..KEY_LEN]);
    Ok(k)
}

/// Read a secret file: a regular file, owner-only permissions, small. The text is zeroized
/// when the caller drops it.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(KeyError::NotAKeyFile {
            path: path.to_path_buf(),
            why: "not a regular file",
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(KeyError::NotAKeyFile {
            path: path.to_path_buf(),
            why: "too large",
        });
    }
    let mut text = Zeroizing::new(String::with_capacity(MAX_KEY_FILE as usize));
    f.take(MAX_KEY_FILE).read_to_string(&mut text).map_err(io)?;
    Ok(text)
}

/// Write `text` to a new file with mode 0600; never overwrites.
fn write_secret_file(path: &Path, text: &str) -> Result<(), KeyError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_path_buf(),
            },
            _ => KeyError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    // The umask cannot widen 0600, but a pre-existing ACL default could: set it explicitly.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.write_all(b"\n").map_err(io)?;
    f.sync_all().map_err(io)
}

/// An X25519 private key (a host's or the appliance's static key).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// A fresh key from the operating system's generator (clamped as RFC 7748 §5 does, the
    /// canonical form `wg genkey` writes too).
    pub fn generate() -> SecretKey {
        let mut k = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut k);
        k[0] &= 248;
        k[31] &= 127;
        k[31] |= 64;
        let s = SecretKey(k);
        k.zeroize();
        s
    }

    /// From raw bytes (tests and the development key).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SecretKey {
        SecretKey(bytes)
    }

    /// The raw bytes, for the handshake.
    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The matching public key (X25519 with the base point).
    pub fn public_key(&self) -> PublicKey {
        let s = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(*x25519_dalek::PublicKey::from(&s).as_bytes())
    }

    /// From base64 text; `what` names the source in errors.
    pub fn from_base64(text: &str, what: &str) -> Result<SecretKey, KeyError> {
        Ok(SecretKey(*decode32(text, what)?))
    }

    /// The key as base64 (for the key file only).
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.0))
    }

    /// Read a key file (refused when group or others can read it).
    pub fn from_file(path: &Path) -> Result<SecretKey, KeyError> {
        let text = read_secret_file(path)?;
        SecretKey::from_base64(&text, &path.display().to_string())
    }

    /// Read a key from the environment variable `var`; `Ok(None)` when it is unset.
    pub fn from_env(var: &'static str) -> Result<Option<SecretKey>, KeyError> {
        match std::env::var(var) {
            Ok(v) => {
                let v = Zeroizing::new(v);
                SecretKey::from_base64(&v, &format!("${var}")).map(Some)
            }
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::Env(var)),
        }
    }

    /// Write to a new file with mode 0600 (refuses to overwrite).
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        write_secret_file(path, &self.to_base64())
    }

    /// The built-in appliance development key. PUBLIC, so NOT secret: allowed only when every
    /// address involved is loopback ([`require_loopback`]).
    pub fn development_appliance() -> SecretKey {
        SecretKey(*b"pcietun-dev-appliance-NOT-SECRET")
    }

    /// The built-in host development key (as public as [`development_appliance`](Self::development_appliance)).
    pub fn development_host() -> SecretKey {
        SecretKey(*b"pcietun-dev-host-key--NOT-SECRET")
    }

    /// Whether this is one of the development keys.
    pub fn is_development(&self) -> bool {
        let a = SecretKey::development_appliance();
        let h = SecretKey::development_host();
        self.0 == a.0 || self.0 == h.0
    }
}

/// An X25519 public key: a host's (listed by the appliance) or the appliance's (pinned by the
/// host).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// From raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> PublicKey {
        PublicKey(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<PublicKey, KeyError> {
        Ok(PublicKey(*decode32(s, "public key")?))
    }
}

/// An optional 32-byte pre-shared key mixed into the handshake (Noise `psk2`): a second,
/// symmetric secret on top of the static keys, for a post-quantum hedge or defence in depth.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Psk([u8; KEY_LEN]);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(..)")
    }
}

impl Psk {
    /// From raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Psk {
        Psk(bytes)
    }

    /// A fresh PSK from the operating system's generator.
    pub fn generate() -> Psk {
        let mut k = Psk([0; KEY_LEN]);
        OsRng.fill_bytes(&mut k.0);
        k
    }

    /// The raw bytes, for the handshake.
    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// From base64 text.
    pub fn from_base64(text: &str, what: &str) -> Result<Psk, KeyError> {
        Ok(Psk(*decode32(text, what)?))
    }

    /// Read a PSK file (refused when group or others can read it).
    pub fn from_file(path: &Path) -> Result<Psk, KeyError> {
        let text = read_secret_file(path)?;
        Psk::from_base64(&text, &path.display().to_string())
    }

    /// Write to a new file with mode 0600 (refuses to overwrite).
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        write_secret_file(path, &Zeroizing::new(B64.encode(self.0)))
    }
}

/// A 16-byte host name (ASCII, zero padded): how logs, events and the configuration name a
/// host. It never travels on the wire; the appliance knows a host by its public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct HostId(pub [u8; 16]);

impl HostId {
    /// From a name of 1 to 16 bytes.
    pub fn new(name: &str) -> Result<HostId, KeyError> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() > 16 {
            return Err(KeyError::BadHostId(name.to_string()));
        }
        let mut id = [0u8; 16];
        id[..b.len()].copy_from_slice(b);
        Ok(HostId(id))
    }
}

impl std::fmt::Display for HostId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(16);
        write!(f, "{}", String::from_utf8_lossy(&self.0[..end]))
    }
}

impl std::fmt::Debug for HostId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostId({self})")
    }
}

/// A host the appliance accepts: its name, its public key, and optionally a PSK.
#[derive(Debug, Clone)]
pub struct HostKey {
    /// Name for logs and events.
    pub host: HostId,
    /// The host's static public key.
    pub public: PublicKey,
    /// Optional pre-shared key (the all-zero PSK when absent, as WireGuard).
    pub psk: Option<Psk>,
}

/// Name the appliance gives the development host key.
pub const DEVELOPMENT_HOST_NAME: &str = "host";

/// Our private key: from `file`, else from [`KEY_ENV`], else `None`.
pub fn load_secret(file: Option<&Path>) -> Result<Option<SecretKey>, KeyError> {
    match file {
        Some(f) => SecretKey::from_file(f).map(Some),
        None => SecretKey::from_env(KEY_ENV),
    }
}

/// Refuse the development keys unless every address is loopback. `addrs` are link addresses
/// as the CLI takes them: `udp:IP:PORT` (loopback when IP is) or anything else (`eth:…`,
/// never loopback).
pub fn require_loopback<'a>(addrs: impl IntoIterator<Item = &'a str>) -> Result<(), KeyError> {
    for a in addrs {
        let loopback = a
            .strip_prefix("udp:")
            .and_then(|s| s.parse::<std::net::SocketAddr>().ok())
            .is_some_and(|s| s.ip().is_loopback());
        if !loopback {
            return Err(KeyError::DevelopmentKeyOffLoopback {
                addr: a.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip_and_public_key() {
        let k = SecretKey::generate();
        let t = k.to_base64();
        assert_eq!(t.len(), 44);
        let k2 = SecretKey::from_base64(&t, "t").unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        let p: PublicKey = k.public_key().to_string().parse().unwrap();
        assert_eq!(p, k.public_key());
        assert!(SecretKey::from_base64("AAAA", "x").is_err());
        assert!(SecretKey::from_base64(&"A".repeat(44), "x").is_err());
        assert!(SecretKey::from_base64(&"A".repeat(4000), "x").is_err());
        assert!("not base64 at all, not at all, not at all!!!"
            .parse::<PublicKey>()
            .is_err());
    }

    /// RFC 7748 §6.1: Alice's private key and public key.
    #[test]
    fn public_key_matches_rfc7748() {
        let hex = |s: &str| -> [u8; 32] {
            core::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        };
        let sk = SecretKey::from_bytes(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            sk.public_key().as_bytes(),
            &hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }

    #[test]
    fn secrets_never_print() {
        let k = SecretKey::from_bytes([0x41; 32]);
        let p = Psk::from_bytes([0x41; 32]);
        let s = format!("{k:?} {p:?}");
        assert!(!s.contains("QUFB") && !s.contains("65"), "{s}");
        assert_eq!(s, "SecretKey(..) Psk(..)");
    }

    #[test]
    fn files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let k = SecretKey::generate();
        k.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(k.write_new(&path), Err(KeyError::Exists { .. })));
        assert_eq!(
            SecretKey::from_file(&path).unwrap().public_key(),
            k.public_key()
        );
        for bad in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
            let e = SecretKey::from_file(&path).unwrap_err();
            assert!(
                matches!(e, KeyError::Permissions { mode, .. } if mode == bad),
                "{e}"
            );
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(SecretKey::from_file(&path).is_ok());
        assert!(matches!(
            SecretKey::from_file(dir.path()),
            Err(KeyError::NotAKeyFile { .. }) | Err(KeyError::Permissions { .. })
        ));
        let psk_path = dir.path().join("psk");
        Psk::generate().write_new(&psk_path).unwrap();
        assert!(Psk::from_file(&psk_path).is_ok());
        let big = dir.path().join("big");
        std::fs::write(&big, "A".repeat(1000)).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            SecretKey::from_file(&big),
            Err(KeyError::NotAKeyFile { .. })
        ));
    }

    #[test]
    fn development_keys_only_on_loopback() {
        assert!(SecretKey::development_appliance().is_development());
        assert!(!SecretKey::generate().is_development());
        assert!(require_loopback(["udp:127.0.0.1:7470", "udp:[::1]:1"]).is_ok());
        for off in [
            "udp:0.0.0.0:7470",
            "udp:10.0.0.1:7470",
            "eth:eth0",
            "udp:[::]:7",
        ] {
            let e = require_loopback(["udp:127.0.0.1:1", off]).unwrap_err();
            assert!(e.to_string().contains(off), "{e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn key_text_parsers_never_panic(t in ".{0,80}") {
            let _ = t.parse::<PublicKey>();
            let _ = SecretKey::from_base64(&t, "t");
            let _ = Psk::from_base64(&t, "t");
        }

        #[test]
        fn base64_keys_roundtrip(b in proptest::array::uniform32(0u8..)) {
            let p = PublicKey::from_bytes(b);
            proptest::prop_assert_eq!(p.to_string().parse::<PublicKey>().unwrap(), p);
        }
    }

    #[test]
    fn host_ids() {
        assert_eq!(HostId::new("ab").unwrap().to_string(), "ab");
        assert!(HostId::new(&"x".repeat(17)).is_err());
        assert!(HostId::new("").is_err());
    }
}
