//! The management plane: the DMTF Redfish API of the appliance and the client that
//! `pcietun ctl` uses (issue 14; the pool it drives is issue 11's).
//!
//! * [`pool`] — the narrow seam to the appliance: inventory, hosts, assign/unassign as
//!   operations with a [`pool::Completer`], events. [`fake`] is an in-memory pool.
//!
//! Layering: `mgmt` may use `tlp`, `pci`, `transport`, `endpoint` and `appliance`, never `host`
//! or `drivers`; nothing below imports `mgmt`.

pub mod fake;
pub mod pool;

pub use pool::{Completer, EventSink, Pool, PoolError, PoolEvent};
