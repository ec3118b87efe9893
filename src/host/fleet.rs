//! A host agent with several appliances at once (docs/host.md "Several appliances").
//!
//! One [`Agent`] per appliance — its own transport session, its own [`super::Host`] root
//! complex and root port — and each appliance's functions under their own PCI segment
//! (domain): the first appliance is segment 0000, so an agent with one appliance looks exactly
//! as it always did, the next 0001, and so on. A session lost with one appliance is that
//! agent's business only (its functions see the surprise-down, the others' I/O goes on); the
//! control socket serves all of them ([`Fleet::fabric`]), and the vfio-user sockets of
//! segment S ≠ 0 are named `SSSS:BB:DD.F.sock` ([`Agent::socket_name`]) so they never
//! collide.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::agent::{Agent, AgentConfig, AgentError, Target};
use super::control::{Addr, Fabric, Segment};
use crate::transport::driver::DriverStats;
use crate::transport::keys::KeyError;
use crate::transport::PublicKey;

/// At most this many appliances per agent (each has its threads and its session).
pub const MAX_APPLIANCES: usize = 16;
/// Longest appliance name.
pub const MAX_NAME: usize = 32;

/// One appliance of the agent: `--appliance NAME=ADDR[@PUBKEY]`, or an `[[appliance]]`
/// entry (`name`, `connect`, `public_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceSpec {
    /// Its name in logs, `status` and errors: 1–[`MAX_NAME`] letters, digits, `-`, `_`.
    pub name: String,
    /// Where it is.
    pub target: Target,
    /// Its static public key (None: the development appliance's, loopback only).
    pub key: Option<PublicKey>,
}

/// One `[[appliance]]` entry of the agent's configuration file.
///
/// ```toml
/// [[appliance]]
/// name = "rack1"
/// connect = "udp:10.0.0.1:7470"
/// public_key = "…"            # `pcietun pubkey` on the appliance; absent: development key
/// ```
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceEntry {
    /// [`ApplianceSpec::name`].
    pub name: String,
    /// Its address, as `--connect` takes it.
    pub connect: String,
    /// Its public key (base64).
    pub public_key: Option<String>,
}

impl ApplianceEntry {
    /// The checked entry.
    pub fn spec(&self) -> Result<ApplianceSpec, FleetError> {
        ApplianceSpec::new(&self.name, &self.connect, self.public_key.as_deref())
    }
}

/// Why the appliances cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Not `NAME=ADDR[@PUBKEY]`.
    #[error("--appliance {0:?}: expected NAME=ADDR[@PUBKEY], e.g. rack2=udp:10.0.0.2:7470")]
    Syntax(String),
    /// A name with characters or a length we do not take.
    #[error("appliance name {0:?}: use 1-{MAX_NAME} letters, digits, '-' or '_'")]
    BadName(String),
    /// The address is neither `udp:IP:PORT` nor `eth:IFACE[,peer=MAC]`.
    #[error(
        "appliance {name}: bad address {addr:?}: expected udp:IP:PORT or eth:IFACE[,peer=MAC]"
    )]
    BadTarget {
        /// The appliance.
        name: String,
        /// The address as given.
        addr: String,
    },
    /// The public key does not parse.
    #[error("appliance {name}: public key: {source}")]
    Key {
        /// The appliance.
        name: String,
        /// Why.
        #[source]
        source: KeyError,
    },
    /// Two entries with one name.
    #[error("appliance {0:?} is given twice")]
    DuplicateName(String),
    /// Two entries with one address (two sessions with one appliance replace each other).
    #[error("appliances {first:?} and {second:?} are both at {target}")]
    DuplicateTarget {
        /// The first entry's name.
        first: String,
        /// The second entry's name.
        second: String,
        /// The address.
        target: Target,
    },
    /// More than [`MAX_APPLIANCES`].
    #[error("{0} appliances: at most {MAX_APPLIANCES} per agent")]
    TooMany(usize),
    /// An empty list.
    #[error("no appliance given")]
    Empty,
    /// Starting or connecting one appliance's agent failed.
    #[error("appliance {name} (segment {segment:04x}): {source}")]
    Agent {
        /// The appliance.
        name: String,
        /// Its segment.
        segment: u16,
        /// Why.
        #[source]
        source: AgentError,
    },
}

fn valid_name(n: &str) -> bool {
    (1..=MAX_NAME).contains(&n.len())
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

impl ApplianceSpec {
    /// An entry from its parts (the config file's `name`, `connect`, `public_key`).
    pub fn new(name: &str, addr: &str, key: Option<&str>) -> Result<ApplianceSpec, FleetError> {
        if !valid_name(name) {
            return Err(FleetError::BadName(name.chars().take(64).collect()));
        }
        let target = addr.parse().map_err(|_| FleetError::BadTarget {
            name: name.to_string(),
            addr: addr.chars().take(128).collect(),
        })?;
        let key = key
            .map(|k| {
                k.parse().map_err(|source| FleetError::Key {
                    name: name.to_string(),
                    source,
                })
            })
            .transpose()?;
        Ok(ApplianceSpec {
            name: name.to_string(),
            target,
            key,
        })
    }
}

impl std::str::FromStr for ApplianceSpec {
    type Err = FleetError;
    /// `NAME=ADDR[@PUBKEY]` (`@` appears in no address and in no base64 key).
    fn from_str(s: &str) -> Result<ApplianceSpec, FleetError> {
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| FleetError::Syntax(s.chars().take(128).collect()))?;
        let (addr, key) = match rest.split_once('@') {
            Some((a, k)) => (a, Some(k)),
            None => (rest, None),
        };
        if addr.is_empty() || key.is_some_and(|k| k.is_empty() || k.contains('@')) {
            return Err(FleetError::Syntax(s.chars().take(128).collect()));
        }
        ApplianceSpec::new(name, addr, key)
    }
}

/// Refuse an empty list, more than [`MAX_APPLIANCES`], a name or an address given twice.
pub fn check(specs: &[ApplianceSpec]) -> Result<(), FleetError> {
    if specs.is_empty() {
        return Err(FleetError::Empty);
    }
    if specs.len() > MAX_APPLIANCES {
        return Err(FleetError::TooMany(specs.len()));
    }
    for (i, a) in specs.iter().enumerate() {
        for b in &specs[..i] {
            if a.name == b.name {
                return Err(FleetError::DuplicateName(a.name.clone()));
            }
            if a.target == b.target {
                return Err(FleetError::DuplicateTarget {
                    first: b.name.clone(),
                    second: a.name.clone(),
                    target: a.target.clone(),
                });
            }
        }
    }
    Ok(())
}

/// One appliance of a running [`Fleet`].
#[derive(Debug)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub target: Target,
    /// Its agent (segment: [`Agent::segment`]).
    pub agent: Arc<Agent>,
}

/// The agents of a host agent with several appliances, segment `i` for the `i`-th.
#[derive(Debug)]
pub struct Fleet {
    host_id: String,
    members: Vec<Member>,
}

impl Fleet {
    /// Start one agent per appliance of `specs` ([`check`]ed first): `base` gives the host
    /// id, our key, the PSK, loss and root-complex settings; each spec its target and key.
    pub fn start(base: &AgentConfig, specs: &[ApplianceSpec]) -> Result<Fleet, FleetError> {
        check(specs)?;
        let mut members: Vec<Member> = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let segment = i as u16; // i < MAX_APPLIANCES
            let cfg = AgentConfig {
                target: s.target.clone(),
                appliance_key: s.key,
                ..base.clone()
            };
            match Agent::start(cfg) {
                Ok(a) => members.push(Member {
                    name: s.name.clone(),
                    target: s.target.clone(),
                    agent: Arc::new(a.with_segment(segment)),
                }),
                Err(source) => {
                    for m in &members {
                        m.agent.stop();
                    }
                    return Err(FleetError::Agent {
                        name: s.name.clone(),
                        segment,
                        source,
                    });
                }
            }
        }
        Ok(Fleet {
            host_id: base.host_id.clone(),
            members,
        })
    }

    /// The appliances, segment 0 first.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Wait (all together at most `timeout`) until every appliance's session is up and
    /// enumerated; the functions found, with their segments.
    pub fn wait_scan(&self, timeout: Duration) -> Result<Vec<Addr>, FleetError> {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        for m in &self.members {
            let left = deadline.saturating_duration_since(Instant::now());
            let found = m
                .agent
                .wait_scan(left)
                .map_err(|source| FleetError::Agent {
                    name: m.name.clone(),
                    segment: m.agent.segment(),
                    source,
                })?;
            all.extend(found.into_iter().map(|b| Addr::new(m.agent.segment(), b)));
        }
        Ok(all)
    }

    /// What the control socket serves: every appliance under its segment.
    pub fn fabric(&self) -> Fabric {
        Fabric {
            host_id: self.host_id.clone(),
            segments: self
                .members
                .iter()
                .map(|m| Segment {
                    segment: m.agent.segment(),
                    name: m.name.clone(),
                    target: m.target.to_string(),
                    host: m.agent.host().clone(),
                })
                .collect(),
        }
    }

    /// Serve every function not served yet in `dir` ([`Agent::serve_vfio_user`], names per
    /// segment); the new socket paths.
    pub fn serve_vfio_user(&self, dir: &Path) -> Result<Vec<PathBuf>, FleetError> {
        let mut paths = Vec::new();
        for m in &self.members {
            paths.extend(
                m.agent
                    .serve_vfio_user(dir)
                    .map_err(|source| FleetError::Agent {
                        name: m.name.clone(),
                        segment: m.agent.segment(),
                        source,
                    })?,
            );
        }
        Ok(paths)
    }

    /// End every vfio-user server of every appliance (sockets removed).
    pub fn close_vfio_user(&self) {
        for m in &self.members {
            m.agent.close_vfio_user();
        }
    }

    /// Stop every agent; each appliance's name and final transport counters.
    pub fn stop(&self) -> Vec<(String, DriverStats)> {
        self.members
            .iter()
            .map(|m| (m.name.clone(), m.agent.stop()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<ApplianceSpec, FleetError> {
        s.parse()
    }

    #[test]
    fn parses_the_forms() {
        let a = spec("rack2=udp:10.0.0.2:7470").unwrap();
        assert_eq!(a.name, "rack2");
        assert_eq!(a.target, Target::Udp("10.0.0.2:7470".parse().unwrap()));
        assert_eq!(a.key, None);
        let k = crate::transport::SecretKey::development_appliance().public_key();
        let b = spec(&format!("b_1=eth:eth0,peer=02:00:00:00:00:01@{k}")).unwrap();
        assert_eq!(
            b.target,
            Target::Eth("eth:eth0,peer=02:00:00:00:00:01".into())
        );
        assert_eq!(b.key, Some(k));
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let e = |s: &str| spec(s).unwrap_err().to_string();
        assert!(e("udp:10.0.0.2:7470").contains("expected NAME=ADDR"));
        assert!(e("=udp:10.0.0.2:7470").contains("appliance name"));
        assert!(e("a b=udp:10.0.0.2:7470").contains("appliance name"));
        assert!(e(&format!("{}=udp:1.2.3.4:1", "x".repeat(33))).contains("appliance name"));
        assert!(e("a=tcp:1.2.3.4:5").contains("bad address"));
        assert!(e("a=").contains("expected NAME=ADDR"));
        assert!(e("a=udp:1.2.3.4:5@").contains("expected NAME=ADDR"));
        assert!(e("a=udp:1.2.3.4:5@notakey").contains("public key"));
    }

    #[test]
    fn duplicates_and_counts_are_refused() {
        let a = spec("a=udp:127.0.0.1:1").unwrap();
        let b = spec("b=udp:127.0.0.1:2").unwrap();
        assert!(check(&[a.clone(), b.clone()]).is_ok());
        let a2 = spec("a=udp:127.0.0.1:3").unwrap();
        assert!(matches!(
            check(&[a.clone(), b.clone(), a2]),
            Err(FleetError::DuplicateName(n)) if n == "a"
        ));
        let c = spec("c=udp:127.0.0.1:2").unwrap();
        let e = check(&[a.clone(), b, c]).unwrap_err().to_string();
        assert_eq!(e, "appliances \"b\" and \"c\" are both at udp:127.0.0.1:2");
        assert!(matches!(check(&[]), Err(FleetError::Empty)));
        let many: Vec<ApplianceSpec> = (0..=MAX_APPLIANCES)
            .map(|i| spec(&format!("n{i}=udp:127.0.0.1:{}", 1000 + i)).unwrap())
            .collect();
        assert!(matches!(check(&many), Err(FleetError::TooMany(17))));
        assert!(check(&many[..MAX_APPLIANCES]).is_ok());
    }
}
