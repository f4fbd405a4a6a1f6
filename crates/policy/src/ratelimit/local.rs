//! The in-process limiter: governor's GCRA over the bounded [`Store`].

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use governor::Quota;
use governor::clock::{Clock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;

use super::store::{SHARDS, Store};
use super::{LimiterOptions, Rate, RateKey};

/// The hash that stands for "every new key while the table is full". Real keys
/// that hash to it are moved to the neighbouring value.
const OVERFLOW_KEY: u64 = 0;

/// What a local check found, before it becomes a [`super::Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outcome {
    pub(super) allowed: bool,
    pub(super) remaining: u32,
    /// Time until the full burst is available again.
    pub(super) reset: Duration,
    /// Time until the next request would be allowed (zero when allowed).
    pub(super) retry_after: Duration,
}

#[derive(Debug)]
pub(super) struct LocalLimiter<C: Clock> {
    name: Box<str>,
    rate: Rate,
    gcra: governor::RateLimiter<u64, Store, C, StateInformationMiddleware>,
    store: Store,
    clock: C,
    /// Taken just before governor takes its own start, so our relative times are
    /// at most a few nanoseconds ahead of governor's (absorbed by the sweep margin).
    start: C::Instant,
    hasher: std::hash::RandomState,
    max_keys: usize,
    /// Relative time (ns) after which the next shard is swept.
    next_sweep: AtomicU64,
    sweep_step: u64,
    cursor: AtomicUsize,
    overflowing: AtomicBool,
    overflowed: AtomicU64,
}

impl<C: Clock + Clone> LocalLimiter<C> {
    pub(super) fn new(name: &str, rate: Rate, options: &LimiterOptions, clock: C) -> Self {
        // `Rate` keeps the emission interval at 1 µs or more, so `with_period`
        // always has a period; the fallback only satisfies the type.
        let quota = Quota::with_period(rate.emission_interval())
            .unwrap_or_else(|| Quota::per_second(rate.per_period))
            .allow_burst(rate.burst);
        let store = Store::new();
        let start = clock.now();
        let gcra = governor::RateLimiter::new(quota, store.clone(), clock.clone());
        let sweep_step = (options.sweep_interval.as_nanos() / SHARDS as u128).max(1);
        Self {
            name: name.into(),
            rate,
            gcra,
            store,
            clock,
            start,
            hasher: std::hash::RandomState::new(),
            max_keys: options.max_keys.get(),
            next_sweep: AtomicU64::new(0),
            sweep_step: u64::try_from(sweep_step).unwrap_or(u64::MAX),
            cursor: AtomicUsize::new(0),
            overflowing: AtomicBool::new(false),
            overflowed: AtomicU64::new(0),
        }
    }

    pub(super) fn check(&self, key: &RateKey<'_>) -> Outcome {
        let mut hash = self.hasher.hash_one(key);
        if hash == OVERFLOW_KEY {
            hash = OVERFLOW_KEY + 1;
        }
        self.maybe_sweep();
        if self.store.len() >= self.max_keys && !self.store.contains(hash) {
            hash = OVERFLOW_KEY;
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            if !self.overflowing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    policy = %self.name,
                    max_keys = self.max_keys,
                    "Rate limit key table is full; new clients share one overflow limit until idle keys expire."
                );
            }
        }
        let interval = self.rate.emission_interval();
        match self.gcra.check_key(&hash) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                // Within one emission interval of the exact TAT; rounding up keeps
                // the advertised reset conservative.
                let used = self.rate.burst.get().saturating_sub(remaining);
                Outcome {
                    allowed: true,
                    remaining,
                    reset: interval * used,
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Outcome {
                    allowed: false,
                    remaining: 0,
                    reset: wait,
                    retry_after: wait,
                }
            }
        }
    }

    /// Sweeps one shard when its turn has come: a whole pass takes
    /// `sweep_interval`, each step costs 1/64 of the table, and only one thread
    /// wins each step.
    fn maybe_sweep(&self) {
        let now = self.now_rel();
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        if self
            .next_sweep
            .compare_exchange(
                due,
                now.saturating_add(self.sweep_step),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return;
        }
        let shard = self.cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
        self.store.sweep_shard(shard, self.drop_below(now));
        self.note_recovery();
    }

    /// Sweeps every shard now.
    pub(super) fn sweep_all(&self) -> usize {
        let drop_below = self.drop_below(self.now_rel());
        let removed = (0..SHARDS).map(|i| self.store.sweep_shard(i, drop_below)).sum();
        self.note_recovery();
        removed
    }

    fn note_recovery(&self) {
        // Hysteresis: report recovery once there is room for a tenth of the cap.
        if self.overflowing.load(Ordering::Relaxed)
            && self.store.len() < self.max_keys - self.max_keys / 10
            && self.overflowing.swap(false, Ordering::Relaxed)
        {
            tracing::info!(policy = %self.name, keys = self.store.len(), "Rate limit key table has room again.");
        }
    }

    fn now_rel(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    /// A key whose TAT is not after "now" behaves exactly like an absent key.
    /// One emission interval of margin (as governor's `retain_recent` keeps)
    /// covers the difference between our start and governor's.
    fn drop_below(&self, now: u64) -> u64 {
        let margin = Nanos::from(self.rate.emission_interval()).as_u64();
        now.saturating_sub(margin)
    }

    pub(super) fn len(&self) -> usize {
        self.store.len()
    }

    pub(super) fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}
