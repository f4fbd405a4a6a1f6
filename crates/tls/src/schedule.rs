//! When to renew: pure functions of the certificate, the failures so far and a clock.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::Validity;

/// A source of wall-clock time, so schedules can be tested without waiting.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug)]
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self(Mutex::new(start))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *t += by;
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: SystemTime) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Renew after this fraction of the lifetime has passed: two thirds leaves a third of
/// the lifetime (30 days for a 90-day certificate) for retries through a CA outage.
pub const RENEW_AT_FRACTION: (u32, u32) = (2, 3);

/// First retry delay after a failed order. Long enough not to hammer a CA that just
/// refused us, short enough that a transient network error heals quickly.
pub const BACKOFF_BASE: Duration = Duration::from_secs(60);

/// Longest delay between retries: a site without a certificate should not wait more
/// than a few hours once the cause is fixed. (Let's Encrypt's failed-validation limit
/// is 5 per hour per name, which 1 min · 2ⁿ respects after the first few attempts.)
pub const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);

/// When renewal becomes due by the lifetime rule (no renewal information).
pub fn renew_due(validity: &Validity) -> SystemTime {
    let (num, den) = RENEW_AT_FRACTION;
    validity.not_before + validity.lifetime() * num / den
}

/// A renewal window suggested by the CA (RFC 9773 ARI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalWindow {
    /// Start of the suggested window.
    pub start: SystemTime,
    /// End of the suggested window.
    pub end: SystemTime,
}

impl RenewalWindow {
    /// A uniformly random point in the window (`unit` in `[0, 1)`), as RFC 9773 §4.2
    /// asks, so that many clients do not renew at the same instant.
    pub fn pick(&self, unit: f64) -> SystemTime {
        let span = self.end.duration_since(self.start).unwrap_or_default();
        self.start + span.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// The delay before retry number `failures` (1 = after the first failure): exponential
/// from [`BACKOFF_BASE`], capped at [`BACKOFF_MAX`], then scaled by a jitter factor in
/// `[0.5, 1.0)` taken from `unit` in `[0, 1)` so instances sharing a CA spread out.
pub fn backoff(failures: u32, unit: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let raw = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX);
    raw.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// What the manager knows about one certificate when deciding what to do next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewalState {
    /// The certificate currently served, if any.
    pub current: Option<Validity>,
    /// The CA's suggested window for it, if it offers ARI.
    pub window: Option<RenewalWindow>,
    /// Consecutive failed attempts since the last success.
    pub failures: u32,
    /// When the last attempt failed.
    pub last_failure: Option<SystemTime>,
}

impl RenewalState {
    /// When to next try to order: now for a missing certificate, at the ARI pick or the
    /// two-thirds point for a good one; after a failure, no earlier than the last failure
    /// plus [`backoff`] (at most [`BACKOFF_MAX`], so an expiring certificate is retried
    /// several times a day). `unit` in `[0, 1)` supplies the jitter.
    pub fn next_attempt(&self, unit: f64) -> SystemTime {
        let due = match (self.current, self.window) {
            (None, _) => SystemTime::UNIX_EPOCH,
            (Some(_), Some(window)) => window.pick(unit),
            (Some(v), None) => renew_due(&v),
        };
        match self.last_failure {
            Some(at) if self.failures > 0 => due.max(at + backoff(self.failures, unit)),
            _ => due,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    #[test]
    fn renews_at_two_thirds() {
        let v = Validity {
            not_before: t0(),
            not_after: t0() + 90 * DAY,
        };
        assert_eq!(renew_due(&v), t0() + 60 * DAY);
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert_eq!(backoff(1, 0.0), BACKOFF_BASE / 2);
        assert!(backoff(1, 0.999) < BACKOFF_BASE);
        assert_eq!(backoff(2, 0.0), BACKOFF_BASE);
        assert_eq!(backoff(3, 0.0), BACKOFF_BASE * 2);
        assert_eq!(backoff(40, 0.0), BACKOFF_MAX / 2);
        assert!(backoff(u32::MAX, 0.999) <= BACKOFF_MAX);
    }

    #[test]
    fn ari_window_wins_over_fraction() {
        let v = Validity {
            not_before: t0(),
            not_after: t0() + 90 * DAY,
        };
        let window = RenewalWindow {
            start: t0() + 10 * DAY,
            end: t0() + 12 * DAY,
        };
        let s = RenewalState {
            current: Some(v),
            window: Some(window),
            failures: 0,
            last_failure: None,
        };
        assert_eq!(s.next_attempt(0.5), t0() + 11 * DAY);
    }

    #[test]
    fn missing_certificate_is_due_now() {
        let s = RenewalState {
            current: None,
            window: None,
            failures: 0,
            last_failure: None,
        };
        let clock = ManualClock::new(t0());
        assert!(s.next_attempt(0.3) <= clock.now());
    }
}
