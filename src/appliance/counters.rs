//! The appliance's counters: each link's transport statistics, the endpoint proxy's and the
//! pool's routing counters, as
//! one snapshot that the serving loop publishes every `STATS_EVERY` and any thread may read.

use super::router::RouterStats;
use crate::endpoint::ProxyStats;
use crate::sync::MutexExt;
use crate::transport::driver::DriverStats;
use std::sync::{Arc, Mutex};

/// Everything the appliance counts: per link, and the endpoint's own.
#[derive(Debug, Clone, Default)]
pub struct ApplianceStats {
    /// Transport counters of each link, in listen order.
    pub links: Vec<DriverStats>,
    /// The endpoint proxy's counters (TLPs in, UR/CA sent, drops).
    pub endpoint: ProxyStats,
    /// The pool's routing counters (isolation drops, resets, detaches).
    pub routing: RouterStats,
}

/// A shared view of [`ApplianceStats`], refreshed every 100 ms while the appliance serves and
/// once more when it stops. Cheap to clone; readable from any thread.
#[derive(Debug, Clone, Default)]
pub struct Counters(Arc<Mutex<ApplianceStats>>);

impl Counters {
    /// The counters as last published.
    pub fn snapshot(&self) -> ApplianceStats {
        self.0.lock_or_recover().clone()
    }

    pub(crate) fn publish(
        &self,
        links: Vec<DriverStats>,
        endpoint: ProxyStats,
        routing: RouterStats,
    ) {
        *self.0.lock_or_recover() = ApplianceStats {
            links,
            endpoint,
            routing,
        };
    }
}
