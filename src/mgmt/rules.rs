//! Rules that return functions to the pool on their own (issue 14, "Rules"): the lost-session
//! rule and leases. A sans-I/O engine: it holds what it has been told (host sessions lost and
//! regained, leases granted) and, given the pool's state and the time, says which functions
//! are due to go back ([`Rules::due`]); it never calls the pool. The Redfish service
//! ([`crate::mgmt::redfish`]) feeds it the pool's events, asks it once a second
//! (`Service::tick`) and unassigns what is due in the pool's ordinary orderly way (slot event,
//! grace period, FLR), each under a Task whose name says why.
//!
//! * **Lost session** ([`Rules::set_reclaim_after`]): a host whose session has been down for
//!   longer than `reclaim_after` loses its functions. The time is monotonic and starts when the
//!   appliance learns the session is gone ([`Rules::host_lost`]) or, for a host already
//!   disconnected when it is first seen (after an appliance restart), when it is first seen
//!   ([`Rules::observe`]). A host that comes back before the deadline keeps them
//!   ([`Rules::host_connected`]); a deadline restarts from zero after every loss.
//! * **Leases** ([`Rules::set_lease`]): an assignment may carry a maximum hold time; at its
//!   wall-clock expiry (`until`, persisted with the assignment so it survives a restart) the
//!   function is unassigned. A lease ends with its assignment: a function unassigned, moved, or
//!   reassigned without a lease drops it.
//!
//! Only a function that is `assigned` is due: one attaching, detaching or resetting is left
//! until it settles (the next tick sees it again), and one the service has already started
//! returning is not offered twice ([`Rules::started`] / [`Rules::finished`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use super::pool::{FunctionInfo, FunctionState, HostInfo, HostSession};

/// Longest `reclaim_after` accepted (30 days); beyond it a deadline would be meaningless.
pub const MAX_RECLAIM_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

/// Longest lease accepted (366 days).
pub const MAX_LEASE: Duration = Duration::from_secs(366 * 24 * 3600);

/// A lease on one function's assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The owner the lease was granted to.
    pub host: String,
    /// The hold time asked for.
    pub duration: Duration,
    /// When it ends (wall clock, UTC).
    pub until: SystemTime,
}

/// Why a function is due to go back to the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Its owner's session has been lost for `lost_for` (at least the configured time).
    SessionLost {
        /// How long the session has been down.
        lost_for: Duration,
        /// The configured time.
        reclaim_after: Duration,
    },
    /// Its lease ended.
    LeaseExpired {
        /// The lease.
        lease: Lease,
    },
}

impl Reason {
    /// A short stable name (`ctl --json`, logs).
    pub fn name(&self) -> &'static str {
        match self {
            Reason::SessionLost { .. } => "session-lost",
            Reason::LeaseExpired { .. } => "lease-expired",
        }
    }
}

/// One function due to go back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The function.
    pub function: String,
    /// Its owner now.
    pub host: String,
    /// Why.
    pub reason: Reason,
}

impl Due {
    /// What the Task and the event say, for people.
    pub fn describe(&self) -> String {
        match &self.reason {
            Reason::SessionLost {
                lost_for,
                reclaim_after,
            } => format!(
                "Reclaim {} from {}: its session has been lost for {} s (rule: reclaim after {} s)",
                self.function,
                self.host,
                lost_for.as_secs(),
                reclaim_after.as_secs()
            ),
            Reason::LeaseExpired { lease } => format!(
                "Reclaim {} from {}: its lease of {} s ended at {}",
                self.function,
                self.host,
                lease.duration.as_secs(),
                humantime::format_rfc3339_seconds(lease.until)
            ),
        }
    }
}

/// A reclaim that has not happened yet: a function of a lost host, with when it will be
/// taken (shown by the API and `ctl rules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The function.
    pub function: String,
    /// Its owner, whose session is down.
    pub host: String,
    /// When the appliance learnt the session was down (wall clock).
    pub since: SystemTime,
    /// How long it has been down.
    pub lost_for: Duration,
    /// Time left before the rule takes the function (`None`: no rule configured).
    pub left: Option<Duration>,
}

/// The rules engine (sans-I/O; every method takes the time it needs).
#[derive(Debug, Default, Clone)]
pub struct Rules {
    reclaim_after: Option<Duration>,
    /// Hosts whose session is down, and since when (monotonic for the deadline, wall clock
    /// to show).
    lost: BTreeMap<String, (Instant, SystemTime)>,
    /// Leases by function.
    leases: BTreeMap<String, Lease>,
    /// Functions the service is returning now.
    started: BTreeSet<String>,
}

impl Rules {
    /// No rule configured, nothing known.
    pub fn new() -> Self {
        Rules::default()
    }

    /// The lost-session rule: `None` keeps functions of lost hosts forever.
    pub fn reclaim_after(&self) -> Option<Duration> {
        self.reclaim_after
    }

    /// Set the lost-session rule (applies at once, also to hosts already lost: their time
    /// down counts).
    pub fn set_reclaim_after(&mut self, after: Option<Duration>) {
        self.reclaim_after = after;
    }

    /// A host's session went down at `now` (`wall` on the wall clock); a second report keeps
    /// the first time.
    pub fn host_lost(&mut self, host: &str, now: Instant, wall: SystemTime) {
        self.lost.entry(host.to_string()).or_insert((now, wall));
    }

    /// A host's session came up: its deadline is cancelled.
    pub fn host_connected(&mut self, host: &str) {
        self.lost.remove(host);
    }

    /// Reconcile with the pool's view: a disconnected host not yet known as lost is lost from
    /// `now`, a connected one is not lost, a host the pool no longer has is forgotten; a
    /// lease whose function is no longer with the host it was granted to has ended.
    pub fn observe(
        &mut self,
        hosts: &[HostInfo],
        functions: &[FunctionInfo],
        now: Instant,
        wall: SystemTime,
    ) {
        self.lost.retain(|h, _| hosts.iter().any(|x| &x.id == h));
        for h in hosts {
            match h.session {
                HostSession::Connected => {
                    self.lost.remove(&h.id);
                }
                HostSession::Disconnected => self.host_lost(&h.id, now, wall),
            }
        }
        self.leases.retain(|f, lease| {
            functions
                .iter()
                .any(|x| &x.id == f && x.state.host() == Some(lease.host.as_str()))
        });
    }

    /// Grant (`Some`) or clear (`None`) the lease of `function`'s assignment.
    pub fn set_lease(&mut self, function: &str, lease: Option<Lease>) {
        match lease {
            Some(l) => {
                self.leases.insert(function.to_string(), l);
            }
            None => {
                self.leases.remove(function);
            }
        }
    }

    /// The lease of `function`, if its assignment has one.
    pub fn lease(&self, function: &str) -> Option<&Lease> {
        self.leases.get(function)
    }

    /// Every lease, by function.
    pub fn leases(&self) -> impl Iterator<Item = (&str, &Lease)> {
        self.leases.iter().map(|(f, l)| (f.as_str(), l))
    }

    /// The service started returning `function`: it is not due again until
    /// [`Rules::finished`].
    pub fn started(&mut self, function: &str) {
        self.started.insert(function.to_string());
    }

    /// The return of `function` is over (done or failed).
    pub fn finished(&mut self, function: &str) {
        self.started.remove(function);
    }

    /// The functions due to go back now, in function order; a function due for both reasons
    /// is listed once, for the session (the older condition).
    pub fn due(&self, functions: &[FunctionInfo], now: Instant, wall: SystemTime) -> Vec<Due> {
        let mut out = Vec::new();
        for f in functions {
            let FunctionState::Assigned { host } = &f.state else {
                continue;
            };
            if self.started.contains(&f.id) {
                continue;
            }
            if let (Some(after), Some((since, _))) = (self.reclaim_after, self.lost.get(host)) {
                let lost_for = now.saturating_duration_since(*since);
                if lost_for >= after {
                    out.push(Due {
                        function: f.id.clone(),
                        host: host.clone(),
                        reason: Reason::SessionLost {
                            lost_for,
                            reclaim_after: after,
                        },
                    });
                    continue;
                }
            }
            if let Some(lease) = self.leases.get(&f.id) {
                if &lease.host == host && wall >= lease.until {
                    out.push(Due {
                        function: f.id.clone(),
                        host: host.clone(),
                        reason: Reason::LeaseExpired {
                            lease: lease.clone(),
                        },
                    });
                }
            }
        }
        out
    }

    /// The functions of lost hosts that the rule has not taken yet.
    pub fn pending(&self, functions: &[FunctionInfo], now: Instant) -> Vec<Pending> {
        functions
            .iter()
            .filter_map(|f| {
                let host = f.state.host()?;
                let (since, wall) = self.lost.get(host)?;
                let lost_for = now.saturating_duration_since(*since);
                Some(Pending {
                    function: f.id.clone(),
                    host: host.to_string(),
                    since: *wall,
                    lost_for,
                    left: self.reclaim_after.map(|a| a.saturating_sub(lost_for)),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mgmt::pool::{FunctionKind, Health};

    fn func(id: &str, state: FunctionState) -> FunctionInfo {
        FunctionInfo {
            id: id.into(),
            device: id.into(),
            function_number: 0,
            kind: FunctionKind::Physical,
            vendor_id: 0x1b36,
            device_id: 0x11,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            class_code: 0xff0000,
            revision_id: 0,
            model: "DMA engine".into(),
            state,
            health: Health::Ok,
            vm: None,
            total_vfs: 0,
        }
    }

    fn assigned(id: &str, host: &str) -> FunctionInfo {
        func(id, FunctionState::Assigned { host: host.into() })
    }

    fn host(id: &str, session: HostSession) -> HostInfo {
        HostInfo {
            id: id.into(),
            session,
            rtt: None,
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_lost_host_loses_its_functions_at_the_deadline_not_before() {
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut r = Rules::new();
        r.set_reclaim_after(Some(10 * MIN));
        let fs = [assigned("a", "web1"), assigned("b", "web2")];
        r.host_lost("web1", t0, w0);
        assert!(r
            .due(&fs, t0 + 10 * MIN - Duration::from_millis(1), w0)
            .is_empty());
        let due = r.due(&fs, t0 + 10 * MIN, w0);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(
            (due[0].function.as_str(), due[0].host.as_str()),
            ("a", "web1")
        );
        assert_eq!(
            due[0].reason,
            Reason::SessionLost {
                lost_for: 10 * MIN,
                reclaim_after: 10 * MIN
            }
        );
        assert!(
            due[0].describe().contains("lost for 600 s"),
            "{}",
            due[0].describe()
        );
        // Once started it is not offered again until finished.
        r.started("a");
        assert!(r.due(&fs, t0 + 11 * MIN, w0).is_empty());
        r.finished("a");
        assert_eq!(r.due(&fs, t0 + 11 * MIN, w0).len(), 1);
    }

    #[test]
    fn a_host_that_comes_back_keeps_its_functions_and_a_new_loss_starts_afresh() {
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH;
        let mut r = Rules::new();
        r.set_reclaim_after(Some(10 * MIN));
        let fs = [assigned("a", "web1")];
        r.host_lost("web1", t0, w0);
        r.host_connected("web1");
        assert!(r.due(&fs, t0 + 60 * MIN, w0).is_empty());
        r.host_lost("web1", t0 + 60 * MIN, w0);
        r.host_lost("web1", t0 + 65 * MIN, w0); // a repeat keeps the first time
        assert!(r.due(&fs, t0 + 69 * MIN, w0).is_empty());
        assert_eq!(r.due(&fs, t0 + 70 * MIN, w0).len(), 1);
    }

    #[test]
    fn no_rule_no_reclaim_and_only_settled_functions_are_due() {
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH;
        let mut r = Rules::new();
        r.host_lost("web1", t0, w0);
        let fs = [
            assigned("a", "web1"),
            func(
                "b",
                FunctionState::Detaching {
                    host: "web1".into(),
                },
            ),
            func(
                "c",
                FunctionState::Attaching {
                    host: "web1".into(),
                },
            ),
        ];
        assert!(r.due(&fs, t0 + 1000 * MIN, w0).is_empty());
        let p = r.pending(&fs, t0 + 5 * MIN);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].left, None);
        r.set_reclaim_after(Some(10 * MIN));
        let p = r.pending(&fs, t0 + 4 * MIN);
        assert_eq!(p[0].left, Some(6 * MIN));
        let due = r.due(&fs, t0 + 1000 * MIN, w0);
        assert_eq!(
            due.iter().map(|d| d.function.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn observe_starts_the_clock_for_hosts_found_disconnected() {
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH;
        let mut r = Rules::new();
        r.set_reclaim_after(Some(MIN));
        let fs = [assigned("a", "web1"), assigned("b", "web2")];
        let hosts = [
            host("web1", HostSession::Disconnected),
            host("web2", HostSession::Connected),
        ];
        r.host_lost("web2", t0, w0); // missed reconnect: the snapshot corrects it
        r.observe(&hosts, &fs, t0 + MIN, w0);
        assert!(r.due(&fs, t0 + MIN, w0).is_empty());
        let due = r.due(&fs, t0 + 2 * MIN, w0);
        assert_eq!(
            due.iter().map(|d| d.function.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        // A host the pool forgot is forgotten.
        r.observe(&[], &fs, t0 + 3 * MIN, w0);
        assert!(r.due(&fs, t0 + 100 * MIN, w0).is_empty());
    }

    #[test]
    fn leases_expire_on_the_wall_clock_and_end_with_their_assignment() {
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut r = Rules::new();
        let lease = Lease {
            host: "web1".into(),
            duration: 2 * 60 * MIN,
            until: w0 + 2 * 60 * MIN,
        };
        r.set_lease("a", Some(lease.clone()));
        let fs = [assigned("a", "web1")];
        assert!(r
            .due(&fs, t0, w0 + 2 * 60 * MIN - Duration::from_secs(1))
            .is_empty());
        let due = r.due(&fs, t0, w0 + 2 * 60 * MIN);
        assert_eq!(
            due,
            vec![Due {
                function: "a".into(),
                host: "web1".into(),
                reason: Reason::LeaseExpired {
                    lease: lease.clone()
                },
            }]
        );
        assert!(
            due[0].describe().contains("lease of 7200 s"),
            "{}",
            due[0].describe()
        );
        // Moved to another host (say, by hand between two ticks): that lease is over.
        let moved = [assigned("a", "web2")];
        assert!(r.due(&moved, t0, w0 + 3 * 60 * MIN).is_empty());
        r.observe(&[host("web2", HostSession::Connected)], &moved, t0, w0);
        assert_eq!(r.lease("a"), None);
        // Cleared explicitly.
        r.set_lease("a", Some(lease));
        r.set_lease("a", None);
        assert!(r.due(&fs, t0, w0 + 3 * 60 * MIN).is_empty());
    }
}
