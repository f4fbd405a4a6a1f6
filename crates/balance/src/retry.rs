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

    fn roll(&self, w: &mut Window) {
        let elapsed = w.started.elapsed();
        if elapsed >= self.half * 2 {
            *w = Window {
                started: Instant::now(),
                requests: [0; 2],
                retries: [0; 2],
            };
        } else if elapsed >= self.half {
            w.requests = [w.requests[1], 0];
            w.retries = [w.retries[1], 0];
            w.started += self.half;
        }
    }

    /// Counts a first attempt.
    pub fn record_request(&self) {
        if let Ok(mut w) = self.state.lock() {
            self.roll(&mut w);
            w.requests[1] = w.requests[1].saturating_add(1);
        }
    }

    /// Asks to retry; counts the retry when allowed.
    pub fn try_retry(&self) -> bool {
        let Ok(mut w) = self.state.lock() else { return false };
        self.roll(&mut w);
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
        let mut allowed = 0;
        for _ in 0..1000 {
            b.record_request();
            if b.try_retry() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 200);
    }

    #[test]
    fn a_minimum_lets_quiet_routes_retry() {
        let b = RetryBudget::new(0.2, 3, Duration::from_secs(10));
        b.record_request();
        assert!(b.try_retry());
        assert!(b.try_retry());
        assert!(b.try_retry());
        assert!(!b.try_retry());
    }

    #[test]
    fn the_window_slides() {
        let b = RetryBudget::new(0.0, 1, Duration::from_millis(100));
        assert!(b.try_retry());
        assert!(!b.try_retry());
        std::thread::sleep(Duration::from_millis(120));
        assert!(b.try_retry());
    }
}
