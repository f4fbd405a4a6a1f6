//! Retry budget: retries may add at most a fraction of the request load.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts requests and retries in a sliding window (two halves) and allows a
/// retry only while `retries < ⌊ratio × requests⌋ + min_retries`.
///
/// Without a budget, a failing upstream receives every request `attempts`
/// times exactly when it can least afford it.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_retries: u32,
    half: Duration,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    requests: [u32; 2],
    retries: [u32; 2],
}

impl RetryBudget {
    /// Retries allowed as a fraction of requests (e.g. 0.2), plus `min_retries`
    /// per window so low-traffic routes can still retry; the window is `window`
    /// long.
    pub fn new(ratio: f64, min_retries: u32, window: Duration) -> Self {
        Self {
            ratio: ratio.clamp(0.0, 10.0),
            min_retries,
            half: (window / 2).max(Duration::from_millis(1)),
            state: Mutex::new(Window {
                started: Instant::now(),
                requests: [0; 2],
                retries: [0; 2],
            }),
        }
    }

    fn roll(&self, w: &mut Window, now: Instant) {
        let elapsed = now.saturating_duration_since(w.started);
        if elapsed >= self.half * 2 {
            *w = Window {
                started: now,
                requests: [0; 2],
                retries: [0; 2],
            };
        } else if elapsed >= self.half {
            w.requests = [w.requests[1], 0];
            w.retries = [w.retries[1], 0];
            w.started += self.half;
        }
    }

    /// Counts a first attempt, made at `now` (the caller's clock reading:
    /// the request path reads the clock once and shares the reading).
    pub fn record_request(&self, now: Instant) {
        if let Ok(mut w) = self.state.lock() {
            self.roll(&mut w, now);
            w.requests[1] = w.requests[1].saturating_add(1);
        }
    }

    /// Asks to retry at `now`; counts the retry when allowed.
    pub fn try_retry(&self, now: Instant) -> bool {
        let Ok(mut w) = self.state.lock() else { return false };
        self.roll(&mut w, now);
        let requests = f64::from(w.requests[0]) + f64::from(w.requests[1]);
        let retries = w.retries[0] + w.retries[1];
        // Whole retries only: 0.2 × 4 requests allows none beyond the minimum.
        let allowed = (self.ratio * requests).floor() as u32 + self.min_retries;
        if retries < allowed {
            w.retries[1] = w.retries[1].saturating_add(1);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_the_ratio() {
        let b = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        let now = Instant::now();
        let mut allowed = 0;
        for _ in 0..1000 {
            b.record_request(now);
            if b.try_retry(now) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 200);
    }

    #[test]
    fn a_minimum_lets_quiet_routes_retry() {
        let b = RetryBudget::new(0.2, 3, Duration::from_secs(10));
        let now = Instant::now();
        b.record_request(now);
        assert!(b.try_retry(now));
        assert!(b.try_retry(now));
        assert!(b.try_retry(now));
        assert!(!b.try_retry(now));
    }

    #[test]
    fn the_window_slides() {
        let b = RetryBudget::new(0.0, 1, Duration::from_millis(100));
        let now = Instant::now();
        assert!(b.try_retry(now));
        assert!(!b.try_retry(now));
        // Half a window on, the spent retry still counts; a whole window on, it is gone.
        assert!(!b.try_retry(now + Duration::from_millis(60)));
        assert!(b.try_retry(now + Duration::from_millis(120)));
    }
}
