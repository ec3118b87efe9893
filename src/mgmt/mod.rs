//! The management plane: the DMTF Redfish API of the appliance and the client that
//! `pcietun ctl` uses (issue 14; the pool it drives is issue 11's).
//!
//! * [`pool`] — the narrow seam to the appliance: inventory, hosts, assign/unassign as
//!   operations with a [`pool::Completer`], events. [`fake`] is an in-memory pool.
//! * [`redfish`] — the Redfish service as a synchronous request → response core.
//! * [`auth`] — accounts, roles, password hashing, session tokens.
//! * [`server`] — the HTTP(S) server (axum, rustls) on its own thread.
//! * [`metrics`] — `/metrics`, the Prometheus exposition of the pool's counters.
//! * [`config`] — `[api]` configuration and the administrator's password file.
//! * [`client`] — the API client behind `pcietun ctl`.
//!
//! Layering: `mgmt` may use `tlp`, `pci`, `transport`, `endpoint` and `appliance`, never `host`
//! or `drivers`; nothing below imports `mgmt`.

pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod fake;
pub mod metrics;
pub mod pool;
pub mod redfish;
pub mod server;

pub use config::{ApiConfig, ApiFileConfig, TlsFiles};
pub use pool::{Completer, EventSink, Pool, PoolError, PoolEvent};
pub use server::{Server, ServerError, ServerHandle};
