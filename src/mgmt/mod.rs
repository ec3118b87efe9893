//! The management plane: the DMTF Redfish API of the appliance and the client that
//! `pcietun ctl` uses (issue 14; the pool it drives is issue 11's).
//!
//! * [`pool`] — the narrow seam to the appliance: inventory, hosts, assign/unassign as
//!   operations with a [`pool::Completer`], events. [`fake`] is an in-memory pool.
//! * [`redfish`] — the Redfish service as a synchronous request → response core.
//! * [`auth`] — accounts, roles, password hashing, session tokens.
//! * [`server`] — the HTTP(S) server (axum, rustls) on its own thread.
//! * [`metrics`] — `/metrics`, the Prometheus exposition of the pool's counters.
//! * [`config`] — the server's configuration and the administrator's password file.
//! * [`rules`] — the lost-session rule and leases: a sans-I/O engine the service applies.
//! * [`schedule`] — schedules (a function to host A in a daily UTC window, then to host B):
//!   a sans-I/O engine the service applies.
//! * [`push`] — delivery of events to push subscriptions: a bounded outbox with the
//!   EventService's retry rules (sans-I/O) and a thread that POSTs.
//! * [`store`] — persistent state (accounts, acknowledged assignments, policies, rules, cards
//!   added over the API) in redb.
//! * [`client`] — the API client behind `pcietun ctl`.
//! * [`exposition`] and [`watch`] — `ctl watch`: a parser of the Prometheus text format and the
//!   per-function and per-host rates it shows.
//!
//! Layering: `mgmt` sits beside `crate::appliance`, not on it: it may use `tlp`, `pci`,
//! `transport` and `endpoint`, never `appliance`, `host` or `drivers`, and nothing below imports
//! `mgmt` (tests/layering.rs). It reaches the appliance only through [`Pool`]; `pcietun
//! appliance` (src/cli) is the one place that adapts the appliance to it.

pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod exposition;
pub mod fake;
pub mod metrics;
pub mod pool;
pub mod push;
pub mod redfish;
pub mod rules;
pub mod schedule;
pub mod server;
pub mod store;
pub mod watch;

pub use config::{ApiConfig, TlsFiles};
pub use pool::{Completer, EventSink, Pool, PoolError, PoolEvent};
pub use server::{Server, ServerError, ServerHandle};
