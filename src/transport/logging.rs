//! Rate limiting of the transport's `tracing` events (docs/security.md "Logging"). Sessions
//! established, rekeyed and lost are rare and always logged; refusals and load events can
//! come at line rate from an attacker, so each kind gets a few lines per second and the next
//! line that gets through says how many were suppressed. Time is the caller's (sans-I/O).

use super::time::Instant;
use std::time::Duration;

/// Classes of events that an attacker can trigger at will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A handshake message refused (why: mac1, decrypt, unknown key, replay, version).
    Refused,
    /// The appliance is under load: cookies sent, sources rate-limited.
    Load,
    /// Frames of a session that failed the tag check.
    BadTag,
}

const KINDS: usize = 3;
const WINDOW: Duration = Duration::from_secs(1);
const PER_WINDOW: u32 = 5;

#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    start: [Option<Instant>; KINDS],
    count: [u32; KINDS],
    suppressed: [u64; KINDS],
}

impl LogLimiter {
    /// Whether to log one event of `kind` at `now`: `Some(n)` with the number of events
    /// suppressed since the last one logged, or `None` (counted as suppressed).
    pub fn allow(&mut self, kind: Kind, now: Instant) -> Option<u64> {
        let k = kind as usize;
        if self.start[k].is_none_or(|s| now.saturating_duration_since(s) >= WINDOW) {
            self.start[k] = Some(now);
            self.count[k] = 0;
        }
        if self.count[k] < PER_WINDOW {
            self.count[k] += 1;
            Some(std::mem::take(&mut self.suppressed[k]))
        } else {
            self.suppressed[k] += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_per_second_then_a_count() {
        let mut l = LogLimiter::default();
        let t0 = Instant::from_nanos(1);
        let got: Vec<_> = (0..100).map(|_| l.allow(Kind::Refused, t0)).collect();
        assert_eq!(got.iter().filter(|g| g.is_some()).count(), 5);
        assert_eq!(l.allow(Kind::Load, t0), Some(0), "kinds are separate");
        assert_eq!(l.allow(Kind::Refused, t0 + WINDOW), Some(95));
        assert_eq!(l.allow(Kind::Refused, t0 + WINDOW), Some(0));
    }
}
