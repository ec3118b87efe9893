//! Push delivery of events to subscribers (DSP0266 "Event subscription"; docs/api.md
//! "Events"): each subscription has an [`Outbox`] — a bounded queue and the retry policy of
//! the EventService (`DeliveryRetryAttempts`, `DeliveryRetryIntervalSeconds`) — and a
//! [`Worker`] thread that POSTs what the outbox says to send, one event at a time, in order.
//!
//! The outbox is sans-I/O (explicit time, no sockets) so its rules are tested
//! deterministically: memory is bounded whatever the number of events (at most
//! [`QUEUE_LIMIT`] waiting; a new event beyond that drops the oldest, counted in
//! [`Outbox::lost`] and logged); a failed POST (a transport error, a timeout or a non-2xx
//! status) is retried after the retry interval, at most `attempts` times; after that the
//! subscription is suspended (`SuspendRetries`: kept, `Status.State` `Disabled`, nothing more
//! queued) or terminated (`TerminateAfterRetries`: the service deletes it), as the
//! EventDestination schema describes. The interval is constant between retries, which is
//! what the schema's `DeliveryRetryIntervalSeconds` means.
//!
//! The HTTP client is `ureq` (already the tree's client for `pcietun ctl`: small, blocking,
//! rustls with the WebPKI roots for `https`), with a timeout on the whole exchange and no
//! redirects followed. Destinations are chosen by an operator (the Operator role may create
//! subscriptions): the appliance POSTs to whatever `http(s)` URL it is given, including
//! loopback and private addresses, so who may subscribe is who may make the appliance send
//! requests (docs/api.md "Events").

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::MutexExt;

/// The most events waiting for one subscriber.
pub const QUEUE_LIMIT: usize = 256;

/// How long one POST may take (connect, send, answer).
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest destination URL accepted.
pub const MAX_DESTINATION_LEN: usize = 2048;

/// What happens when the retries of an event run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// `SuspendRetries`: the subscription stays, disabled.
    Suspend,
    /// `TerminateAfterRetries`: the subscription is deleted.
    Terminate,
}

impl Exhausted {
    /// The `DeliveryRetryPolicy` value.
    pub fn name(self) -> &'static str {
        match self {
            Exhausted::Suspend => "SuspendRetries",
            Exhausted::Terminate => "TerminateAfterRetries",
        }
    }

    /// From a `DeliveryRetryPolicy` value this service supports.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "SuspendRetries" => Some(Exhausted::Suspend),
            "TerminateAfterRetries" => Some(Exhausted::Terminate),
            _ => None,
        }
    }
}

/// The EventService's retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries of a failed POST (`DeliveryRetryAttempts`).
    pub attempts: u32,
    /// Wait before each retry (`DeliveryRetryIntervalSeconds`).
    pub interval: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            interval: Duration::from_secs(10),
        }
    }
}

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Delivering.
    Active,
    /// Retries ran out; nothing more is sent (`Status.State` `Disabled`).
    Suspended,
    /// Retries ran out under `TerminateAfterRetries`; the subscription is to be deleted.
    Terminated,
}

/// What the outbox wants done next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next<T> {
    /// POST this event now.
    Send(T),
    /// Nothing before this instant (a retry's wait).
    WaitUntil(Instant),
    /// Nothing to send.
    Idle,
}

/// One subscriber's queue and retry state (sans-I/O).
#[derive(Debug)]
pub struct Outbox<T> {
    queue: VecDeque<T>,
    policy: RetryPolicy,
    exhausted: Exhausted,
    /// Failed POSTs of the event at the head of the queue.
    failures: u32,
    not_before: Option<Instant>,
    state: State,
    lost: u64,
    delivered: u64,
}

impl<T: Clone> Outbox<T> {
    /// An empty, active outbox.
    pub fn new(policy: RetryPolicy, exhausted: Exhausted) -> Self {
        Outbox {
            queue: VecDeque::new(),
            policy,
            exhausted,
            failures: 0,
            not_before: None,
            state: State::Active,
            lost: 0,
            delivered: 0,
        }
    }

    /// An outbox that starts suspended (restored from the store).
    pub fn suspended(policy: RetryPolicy, exhausted: Exhausted) -> Self {
        Outbox {
            state: State::Suspended,
            ..Outbox::new(policy, exhausted)
        }
    }

    /// Queue an event; `true` when the queue was full and the oldest waiting event was
    /// dropped (or, when not active, the event itself was not queued).
    pub fn push(&mut self, event: T) -> bool {
        if self.state != State::Active {
            self.lost += 1;
            return true;
        }
        let dropped = self.queue.len() >= QUEUE_LIMIT;
        if dropped {
            self.queue.pop_front();
            self.lost += 1;
            // The event being retried is gone; the next one starts afresh (still after the
            // retry wait, so a refusing receiver is not hammered).
            self.failures = 0;
        }
        self.queue.push_back(event);
        dropped
    }

    /// What to do at `now`.
    pub fn next(&self, now: Instant) -> Next<T> {
        if self.state != State::Active {
            return Next::Idle;
        }
        let Some(head) = self.queue.front() else {
            return Next::Idle;
        };
        match self.not_before {
            Some(t) if t > now => Next::WaitUntil(t),
            _ => Next::Send(head.clone()),
        }
    }

    /// The event last given by [`Outbox::next`] was delivered.
    pub fn delivered(&mut self) {
        if self.queue.pop_front().is_some() {
            self.delivered += 1;
        }
        self.failures = 0;
        self.not_before = None;
    }

    /// Its POST failed at `now`; returns the new state (not [`State::Active`] once the
    /// retries have run out: the queue is then dropped, counted as lost).
    pub fn failed(&mut self, now: Instant) -> State {
        self.failures += 1;
        if self.failures > self.policy.attempts {
            self.state = match self.exhausted {
                Exhausted::Suspend => State::Suspended,
                Exhausted::Terminate => State::Terminated,
            };
            self.lost += self.queue.len() as u64;
            self.queue.clear();
            self.failures = 0;
            self.not_before = None;
        } else {
            self.not_before = Some(now + self.policy.interval);
        }
        self.state
    }

    /// Where the subscription stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Events dropped (queue full, or not queued while not active), since it was made.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Events delivered, since it was made.
    pub fn delivered_count(&self) -> u64 {
        self.delivered
    }

    /// Events waiting.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Failed POSTs of the event at the head of the queue.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// Not `http://` or `https://`.
    #[error("the destination must be an http:// or https:// URL")]
    Scheme,
    /// No host, credentials in the URL, a fragment, spaces or control characters, too long.
    #[error("the destination is not a usable URL: {0}")]
    Malformed(&'static str),
}

/// Check a subscription's `Destination`: an absolute `http` or `https` URL with a host, no
/// user information (a password in a URL would be shown by every GET) and no fragment.
pub fn check_destination(url: &str) -> Result<(), DestinationError> {
    if url.len() > MAX_DESTINATION_LEN {
        return Err(DestinationError::Malformed("longer than 2048 bytes"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DestinationError::Malformed(
            "it contains spaces or control characters",
        ));
    }
    let lower = url.to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &url[7..]
    } else if lower.starts_with("https://") {
        &url[8..]
    } else {
        return Err(DestinationError::Scheme);
    };
    if url.contains('#') {
        return Err(DestinationError::Malformed("it has a fragment"));
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(DestinationError::Malformed(
            "user information (credentials) in the URL",
        ));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    if host.is_empty() {
        return Err(DestinationError::Malformed("no host"));
    }
    let uri: Result<ureq::http::Uri, _> = url.parse();
    if uri.is_err() {
        return Err(DestinationError::Malformed("it does not parse as a URI"));
    }
    Ok(())
}

/// What a worker reports when its subscription stops being active.
pub type OnEnd = Box<dyn Fn(State) + Send + Sync>;

struct Shared {
    outbox: Mutex<Outbox<Arc<Vec<u8>>>>,
    wake: Condvar,
    closed: std::sync::atomic::AtomicBool,
}

/// A subscription's delivery thread; stopped when dropped (after the POST in progress, if
/// any, which is bounded by [`POST_TIMEOUT`]).
pub struct Worker {
    shared: Arc<Shared>,
    label: String,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Start delivering to `destination` (checked with [`check_destination`]); `label` names
    /// the subscription in logs; `on_end` is called (on the worker's thread) when retries run
    /// out.
    pub fn start(
        label: String,
        destination: String,
        outbox: Outbox<Arc<Vec<u8>>>,
        on_end: OnEnd,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            outbox: Mutex::new(outbox),
            wake: Condvar::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(POST_TIMEOUT))
            .user_agent(concat!("pcietun/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let (s, l) = (shared.clone(), label.clone());
        std::thread::Builder::new()
            .name("api-push".into())
            .spawn(move || run(&s, &agent, &l, &destination, &on_end))?;
        Ok(Worker { shared, label })
    }

    /// Queue an event's JSON (never blocks on the network).
    pub fn offer(&self, body: Arc<Vec<u8>>) {
        let dropped = {
            let mut o = self.shared.outbox.lock_or_recover();
            let dropped = o.push(body);
            (dropped && o.state() == State::Active).then(|| o.lost())
        };
        if let Some(lost) = dropped {
            // One line per power of two lost, so a stuck receiver does not flood the log.
            if lost.is_power_of_two() {
                tracing::warn!(
                    subscription = %self.label,
                    lost,
                    "event subscription: queue full ({QUEUE_LIMIT}); dropped the oldest event"
                );
            }
        }
        self.shared.wake.notify_one();
    }

    /// (state, events lost, events delivered, waiting).
    pub fn status(&self) -> (State, u64, u64, usize) {
        let o = self.shared.outbox.lock_or_recover();
        (o.state(), o.lost(), o.delivered_count(), o.waiting())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.wake.notify_all();
    }
}

/// POST `body`; `Err` with why it failed.
fn post(agent: &ureq::Agent, destination: &str, body: &[u8]) -> Result<(), String> {
    let req = ureq::http::Request::builder()
        .method("POST")
        .uri(destination)
        .header("Content-Type", "application/json")
        .header("OData-Version", "4.0")
        .body(body.to_vec())
        .map_err(|e| e.to_string())?;
    let resp = agent.run(req).map_err(|e| e.to_string())?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}

fn run(shared: &Shared, agent: &ureq::Agent, label: &str, destination: &str, on_end: &OnEnd) {
    use std::sync::atomic::Ordering;
    let mut o = shared.outbox.lock_or_recover();
    loop {
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        match o.next(Instant::now()) {
            Next::Idle => {
                if o.state() != State::Active {
                    return;
                }
                o = shared.wake.wait(o).unwrap_or_else(|p| p.into_inner());
            }
            Next::WaitUntil(t) => {
                let left = t.saturating_duration_since(Instant::now());
                o = shared
                    .wake
                    .wait_timeout(o, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            Next::Send(body) => {
                drop(o);
                let result = post(agent, destination, &body);
                o = shared.outbox.lock_or_recover();
                match result {
                    Ok(()) => o.delivered(),
                    Err(why) => {
                        let state = o.failed(Instant::now());
                        let failures = o.failures();
                        if state == State::Active {
                            tracing::warn!(
                                subscription = %label,
                                failures,
                                "event subscription: delivery failed ({why}); retrying"
                            );
                        } else {
                            tracing::warn!(
                                subscription = %label,
                                state = ?state,
                                "event subscription: delivery failed ({why}) and the retries \
                                 ran out; the subscription is {}",
                                if state == State::Suspended { "suspended" } else { "removed" }
                            );
                            drop(o);
                            on_end(state);
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            interval: Duration::from_secs(5),
        }
    }

    #[test]
    fn events_go_in_order_and_failures_wait_the_interval() {
        let t0 = Instant::now();
        let mut o = Outbox::new(policy(), Exhausted::Suspend);
        assert_eq!(o.next(t0), Next::Idle);
        o.push(1);
        o.push(2);
        assert_eq!(o.next(t0), Next::Send(1));
        assert_eq!(o.failed(t0), State::Active);
        assert_eq!(o.next(t0), Next::WaitUntil(t0 + Duration::from_secs(5)));
        assert_eq!(
            o.next(t0 + Duration::from_secs(4)),
            Next::WaitUntil(t0 + Duration::from_secs(5))
        );
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(o.next(t1), Next::Send(1));
        o.delivered();
        assert_eq!(o.next(t1), Next::Send(2));
        o.delivered();
        assert_eq!(o.next(t1), Next::Idle);
        assert_eq!((o.delivered_count(), o.lost()), (2, 0));
    }

    #[test]
    fn retries_run_out_into_suspension_or_termination() {
        for (exhausted, end) in [
            (Exhausted::Suspend, State::Suspended),
            (Exhausted::Terminate, State::Terminated),
        ] {
            let mut t = Instant::now();
            let mut o = Outbox::new(policy(), exhausted);
            o.push("a");
            o.push("b");
            // The first POST and two retries (attempts = 2) fail.
            for _ in 0..2 {
                assert_eq!(o.next(t), Next::Send("a"));
                assert_eq!(o.failed(t), State::Active);
                t += Duration::from_secs(5);
            }
            assert_eq!(o.next(t), Next::Send("a"));
            assert_eq!(o.failed(t), end);
            assert_eq!(o.next(t + Duration::from_secs(60)), Next::Idle);
            assert_eq!(o.lost(), 2);
            assert!(o.push("c"));
            assert_eq!(o.waiting(), 0);
            assert_eq!(o.lost(), 3);
        }
    }

    #[test]
    fn a_success_resets_the_failures() {
        let t = Instant::now();
        let mut o = Outbox::new(policy(), Exhausted::Suspend);
        for i in 0..10 {
            o.push(i);
            o.failed(t);
            o.failed(t);
            o.delivered();
        }
        assert_eq!(o.state(), State::Active);
        assert_eq!(o.delivered_count(), 10);
    }

    #[test]
    fn the_queue_is_bounded_and_drops_the_oldest() {
        let t = Instant::now();
        let mut o = Outbox::new(policy(), Exhausted::Suspend);
        for i in 0..QUEUE_LIMIT {
            assert!(!o.push(i));
        }
        assert!(o.push(QUEUE_LIMIT));
        assert!(o.push(QUEUE_LIMIT + 1));
        assert_eq!(o.waiting(), QUEUE_LIMIT);
        assert_eq!(o.lost(), 2);
        assert_eq!(o.next(t), Next::Send(2));
    }

    #[test]
    fn a_restored_suspended_outbox_sends_nothing() {
        let mut o = Outbox::suspended(policy(), Exhausted::Suspend);
        assert!(o.push(1));
        assert_eq!(o.next(Instant::now()), Next::Idle);
        assert_eq!(o.state(), State::Suspended);
    }

    #[test]
    fn destinations_are_http_urls_without_credentials() {
        for ok in [
            "http://127.0.0.1:9000/events",
            "https://collector.example.com/redfish?x=1",
            "HTTP://[::1]:8080/",
            "http://host",
        ] {
            assert_eq!(check_destination(ok), Ok(()), "{ok}");
        }
        for (bad, err) in [
            ("ftp://host/x", DestinationError::Scheme),
            ("file:///etc/passwd", DestinationError::Scheme),
            ("redfish-sse://10.0.0.1:80", DestinationError::Scheme),
            ("/relative", DestinationError::Scheme),
            ("", DestinationError::Scheme),
        ] {
            assert_eq!(check_destination(bad), Err(err), "{bad}");
        }
        for bad in [
            "http://user:pw@host/",
            "http:///path",
            "http://:80/",
            "http://host/a b",
            "http://host/#frag",
            "http://host/\n",
        ] {
            assert!(
                matches!(check_destination(bad), Err(DestinationError::Malformed(_))),
                "{bad}"
            );
        }
        let long = format!("http://h/{}", "a".repeat(MAX_DESTINATION_LEN));
        assert!(check_destination(&long).is_err());
    }
}
