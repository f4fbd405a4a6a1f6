//! Health of one target, shared by every worker.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Passive health: how many consecutive failures eject a target, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveConfig {
    /// Consecutive connect errors or 5xx answers that eject a target; 0 disables
    /// passive ejection.
    pub failures: u32,
    /// First ejection; each further consecutive ejection doubles it.
    pub cooldown: Duration,
    /// Longest ejection.
    pub max_cooldown: Duration,
}

impl PassiveConfig {
    /// Defaults: eject after 3 consecutive failures — one failure is often a
    /// restart blip, three in a row rarely is — for 10 s, doubling up to 5 min.
    pub const DEFAULT: Self = Self {
        failures: 3,
        cooldown: Duration::from_secs(10),
        max_cooldown: Duration::from_secs(300),
    };
}

/// What a target looks like to the balancer right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Receives traffic.
    Up,
    /// Failing active health checks.
    Down,
    /// Ejected by passive checks until the cooldown ends.
    Ejected,
}

impl HealthState {
    /// Lower-case name for logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Ejected => "ejected",
        }
    }
}

/// Shared health record of one target.
#[derive(Debug)]
pub struct Health {
    name: String,
    epoch: Instant,
    /// Result of active checks (always true when none are configured).
    active_up: AtomicBool,
    /// Milliseconds since `epoch` until which the target is ejected.
    ejected_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Consecutive ejections without a success in between (for the backoff).
    ejections: AtomicU32,
    passive: PassiveConfig,
    /// Active-check counters: consecutive successes and failures.
    rise_count: AtomicU32,
    fall_count: AtomicU32,
}

impl Health {
    /// A new record. `start_up` is false when active checks must pass before the
    /// target gets traffic.
    pub fn new(name: impl Into<String>, start_up: bool, passive: PassiveConfig) -> Self {
        Self {
            name: name.into(),
            epoch: Instant::now(),
            active_up: AtomicBool::new(start_up),
            ejected_until_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            passive,
            rise_count: AtomicU32::new(0),
            fall_count: AtomicU32::new(0),
        }
    }

    /// The target's name (its address), for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        if !self.active_up.load(Ordering::Relaxed) {
            return HealthState::Down;
        }
        // Read the clock only for targets that were ever ejected.
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until != 0 && until > self.now_ms() {
            HealthState::Ejected
        } else {
            HealthState::Up
        }
    }

    /// Whether the target should get traffic now.
    pub fn is_available(&self) -> bool {
        self.state() == HealthState::Up
    }

    /// Time until an ejected target comes back (zero when not ejected).
    pub fn ejected_for(&self) -> Duration {
        Duration::from_millis(
            self.ejected_until_ms
                .load(Ordering::Relaxed)
                .saturating_sub(self.now_ms()),
        )
    }

    /// A request to this target succeeded.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 && self.state() == HealthState::Up {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A request to this target failed (connect error, reset, or 5xx). Returns
    /// the ejection time when this failure ejected the target.
    pub fn record_failure(&self) -> Option<Duration> {
        if self.passive.failures == 0 {
            return None;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < self.passive.failures || self.state() == HealthState::Ejected {
            return None;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(20);
        let cooldown = self
            .passive
            .cooldown
            .saturating_mul(1u32 << k.min(16))
            .min(self.passive.max_cooldown);
        self.ejected_until_ms
            .store(self.now_ms() + cooldown.as_millis() as u64, Ordering::Relaxed);
        tracing::warn!(target = %self.name, failures = n, ?cooldown, "Target ejected after consecutive failures.");
        Some(cooldown)
    }

    /// Records an active health-check result with rise/fall thresholds. Returns
    /// the new state when this result changed it.
    pub fn record_check(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let was_up = self.active_up.load(Ordering::Relaxed);
        if ok {
            self.fall_count.store(0, Ordering::Relaxed);
            let n = self.rise_count.fetch_add(1, Ordering::Relaxed) + 1;
            if !was_up && n >= rise.max(1) {
                self.active_up.store(true, Ordering::Relaxed);
                // A target that passes its checks again starts with a clean slate.
                self.ejected_until_ms.store(0, Ordering::Relaxed);
                self.ejections.store(0, Ordering::Relaxed);
                tracing::info!(target = %self.name, "Target is healthy.");
                return Some(true);
            }
        } else {
            self.rise_count.store(0, Ordering::Relaxed);
            let n = self.fall_count.fetch_add(1, Ordering::Relaxed) + 1;
            if was_up && n >= fall.max(1) {
                self.active_up.store(false, Ordering::Relaxed);
                tracing::warn!(target = %self.name, "Target failed its health checks.");
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(failures: u32, ms: u64) -> PassiveConfig {
        PassiveConfig {
            failures,
            cooldown: Duration::from_millis(ms),
            max_cooldown: Duration::from_millis(ms * 4),
        }
    }

    #[test]
    fn consecutive_failures_eject_with_growing_cooldown() {
        let h = Health::new("t", true, passive(2, 100));
        assert_eq!(h.record_failure(), None);
        assert_eq!(h.record_failure(), Some(Duration::from_millis(100)));
        assert_eq!(h.state(), HealthState::Ejected);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(h.state(), HealthState::Up);
        h.record_failure();
        assert_eq!(
            h.record_failure(),
            Some(Duration::from_millis(200)),
            "second ejection doubles"
        );
        std::thread::sleep(Duration::from_millis(220));
        h.record_failure();
        assert_eq!(h.record_failure(), Some(Duration::from_millis(400)));
        std::thread::sleep(Duration::from_millis(420));
        h.record_failure();
        assert_eq!(
            h.record_failure(),
            Some(Duration::from_millis(400)),
            "capped at max_cooldown"
        );
    }

    #[test]
    fn success_resets_the_failure_streak() {
        let h = Health::new("t", true, passive(3, 100));
        h.record_failure();
        h.record_failure();
        h.record_success();
        assert_eq!(h.record_failure(), None);
        assert_eq!(h.state(), HealthState::Up);
    }

    #[test]
    fn active_checks_use_rise_and_fall() {
        let h = Health::new("t", false, PassiveConfig::DEFAULT);
        assert_eq!(h.state(), HealthState::Down);
        assert_eq!(h.record_check(true, 2, 3), None);
        assert_eq!(h.record_check(true, 2, 3), Some(true));
        assert!(h.is_available());
        assert_eq!(h.record_check(false, 2, 3), None);
        assert_eq!(h.record_check(false, 2, 3), None);
        assert_eq!(h.record_check(false, 2, 3), Some(false));
        assert_eq!(h.state(), HealthState::Down);
    }

    #[test]
    fn zero_failures_disables_passive_ejection() {
        let h = Health::new("t", true, passive(0, 100));
        for _ in 0..10 {
            assert_eq!(h.record_failure(), None);
        }
        assert!(h.is_available());
    }
}
