//! The keyed GCRA state behind a local limiter: a sharded map from a 64-bit key
//! hash to the key's theoretical arrival time (TAT), with a hard cap on keys.
//!
//! governor's own keyed stores grow without bound between `retain_recent` calls;
//! this one counts its keys so the limiter can refuse to add more than the cap
//! (new keys then share one overflow cell, see `local.rs`) and sweep one shard at a
//! time on the request path, which keeps each sweep short.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use governor::nanos::Nanos;
use governor::state::StateStore;
use rustc_hash::FxHashMap;

/// 64 shards: two workers per core never meet on one lock in practice, and a
/// sweep of one shard touches 1/64 of the keys.
pub(super) const SHARDS: usize = 64;
const SHARD_SHIFT: u32 = 64 - SHARDS.trailing_zeros();

/// Cheap to clone: clones share the same map (governor takes the store by value).
#[derive(Debug, Clone)]
pub(super) struct Store(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    shards: Box<[Mutex<FxHashMap<u64, u64>>]>,
    len: AtomicUsize,
}

impl Store {
    pub(super) fn new() -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(FxHashMap::default())).collect();
        Store(Arc::new(Inner {
            shards,
            len: AtomicUsize::new(0),
        }))
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, FxHashMap<u64, u64>> {
        // The key is a keyed SipHash output, so its top bits are uniform.
        let index = (key >> SHARD_SHIFT) as usize;
        lock(&self.0.shards[index])
    }

    /// Keys currently stored (exact, updated under the shard locks).
    pub(super) fn len(&self) -> usize {
        self.0.len.load(Ordering::Relaxed)
    }

    pub(super) fn contains(&self, key: u64) -> bool {
        self.shard(key).contains_key(&key)
    }

    /// Removes the keys of shard `index` whose TAT is at or below `drop_below`
    /// (their state is indistinguishable from a fresh key's). Returns how many.
    pub(super) fn sweep_shard(&self, index: usize, drop_below: u64) -> usize {
        let mut map = lock(&self.0.shards[index % SHARDS]);
        let before = map.len();
        map.retain(|_, tat| *tat > drop_below);
        let removed = before - map.len();
        // Give memory back after a flood of one-off keys has expired.
        if map.capacity() > 64 && map.capacity() > 4 * map.len() {
            map.shrink_to_fit();
        }
        drop(map);
        self.0.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold plain integers; a panic elsewhere cannot leave one half-updated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StateStore for Store {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.shard(*key);
        let old = map.get(key).copied();
        let (outcome, tat) = f(old.map(Nanos::from))?;
        map.insert(*key, tat.as_u64());
        if old.is_none() {
            self.0.len.fetch_add(1, Ordering::Relaxed);
        }
        Ok(outcome)
    }
}
