//! Rate limiting of the transport's `tracing` events (docs/security.md "Logging"). Sessions
//! established, rekeyed and lost are rare and always logged; refusals and load events can
//! come at line rate from an attacker, so each kind gets a few lines per second (a
//! [`TokenBucket`], the crate's one rate limiter) and the next
//! line that gets through says how many were suppressed. Time is the caller's (sans-I/O).

use super::time::Instant;
use crate::ratelimit::TokenBucket;

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
/// Lines per second (and at once) of each kind.
const PER_SECOND: u32 = 5;

#[derive(Debug, Clone, Copy)]
struct Limited {
    tokens: TokenBucket,
    last: Option<Instant>,
    suppressed: u64,
}

#[derive(Debug)]
pub(crate) struct LogLimiter {
    kinds: [Limited; KINDS],
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter {
            kinds: [Limited {
                tokens: TokenBucket::new(PER_SECOND, PER_SECOND),
                last: None,
                suppressed: 0,
            }; KINDS],
        }
    }
}

impl LogLimiter {
    /// Whether to log one event of `kind` at `now`: `Some(n)` with the number of events
    /// suppressed since the last one logged, or `None` (counted as suppressed).
    pub fn allow(&mut self, kind: Kind, now: Instant) -> Option<u64> {
        let k = &mut self.kinds[kind as usize];
        if let Some(last) = k.last {
            k.tokens.earn(now.saturating_duration_since(last));
        }
        k.last = Some(k.last.map_or(now, |l| l.max(now)));
        if k.tokens.take() {
            Some(std::mem::take(&mut k.suppressed))
        } else {
            k.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_few_per_second_then_a_count() {
        let mut l = LogLimiter::default();
        let t0 = Instant::from_nanos(1);
        let got: Vec<_> = (0..100).map(|_| l.allow(Kind::Refused, t0)).collect();
        assert_eq!(got.iter().filter(|g| g.is_some()).count(), 5);
        assert_eq!(l.allow(Kind::Load, t0), Some(0), "kinds are separate");
        assert_eq!(
            l.allow(Kind::Refused, t0 + Duration::from_secs(1)),
            Some(95)
        );
        assert_eq!(l.allow(Kind::Refused, t0 + Duration::from_secs(1)), Some(0));
    }
}
