//! Target selection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::hash::{rendezvous_score, stable_hash};
use crate::health::Health;

/// How an upstream spreads requests over its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Each target in turn, in proportion to its weight.
    RoundRobin,
    /// The target with the fewest requests in flight (relative to its weight).
    LeastConn,
    /// Power of two choices: two random targets, the less loaded one wins.
    P2c,
    /// Consistent hashing on the client address.
    IpHash,
    /// Consistent hashing on a request header (falls back to the client address
    /// when the header is absent).
    HeaderHash,
    /// A signed cookie pins a client to a target; new clients and clients whose
    /// target is down are placed by round robin.
    Cookie,
}

impl Policy {
    /// The config name of the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConn => "least_conn",
            Self::P2c => "p2c",
            Self::IpHash => "ip_hash",
            Self::HeaderHash => "header_hash",
            Self::Cookie => "cookie",
        }
    }
}

/// A target as the balancer sees it.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// Stable identity (the same in every instance): hashing and cookies use it.
    pub id: u64,
    /// Relative share of traffic, at least 1.
    pub weight: u32,
    /// Shared health record.
    pub health: Arc<Health>,
}

impl TargetSpec {
    /// A target identified by its address text (e.g. `10.0.0.5:8080`).
    pub fn new(address: &str, weight: u32, health: Arc<Health>) -> Self {
        Self {
            id: stable_hash(0, address.as_bytes()),
            weight: weight.max(1),
            health,
        }
    }
}

/// What selection is based on, besides load and health.
#[derive(Debug, Clone, Copy)]
pub enum SelectKey<'a> {
    /// Nothing (round robin, least_conn, p2c).
    None,
    /// Bytes to hash (client address or header value).
    Hash(&'a [u8]),
    /// The target a sticky cookie names.
    Pinned(u64),
}

/// The result of a selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Index of the chosen target.
    pub index: usize,
    /// For cookie stickiness: the client is not (or no longer) pinned to this
    /// target, so the response should set the cookie.
    pub set_cookie: bool,
}

struct Entry {
    spec: TargetSpec,
    in_flight: Arc<AtomicU32>,
}

/// One worker's balancer for one upstream.
pub struct Balancer {
    policy: Policy,
    entries: Vec<Entry>,
    /// Weighted round-robin order, interleaved (smooth), one slot per weight unit.
    sequence: Vec<usize>,
    next: AtomicUsize,
}

/// Longest interleaved sequence kept; weights are scaled down past it.
const MAX_SEQUENCE: u64 = 4096;

impl Balancer {
    /// A balancer over `targets` (in config order).
    pub fn new(policy: Policy, targets: Vec<TargetSpec>) -> Self {
        let sequence = smooth_sequence(&targets.iter().map(|t| t.weight).collect::<Vec<_>>());
        Self {
            policy,
            entries: targets
                .into_iter()
                .map(|spec| Entry {
                    spec,
                    in_flight: Arc::new(AtomicU32::new(0)),
                })
                .collect(),
            sequence,
            next: AtomicUsize::new(fastrand::usize(..1024)),
        }
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no targets.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Target `i`'s spec.
    pub fn target(&self, i: usize) -> Option<&TargetSpec> {
        self.entries.get(i).map(|e| &e.spec)
    }

    /// Requests in flight on target `i` from this worker.
    pub fn in_flight(&self, i: usize) -> u32 {
        self.entries.get(i).map_or(0, |e| e.in_flight.load(Ordering::Relaxed))
    }

    /// The counter to hold while a request is in flight on target `i`:
    /// increment now, and decrement with [`release`] when the response is done.
    pub fn acquire(&self, i: usize) -> Option<Arc<AtomicU32>> {
        let e = self.entries.get(i)?;
        e.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(e.in_flight.clone())
    }

    fn usable(&self, i: usize, exclude: &[usize]) -> bool {
        !exclude.contains(&i) && self.entries[i].spec.health.is_available()
    }

    /// Chooses a target, skipping `exclude` (targets already tried) and targets
    /// that are down or ejected. `None` means no target can take the request.
    pub fn select(&self, key: SelectKey<'_>, exclude: &[usize]) -> Option<Choice> {
        if self.entries.is_empty() {
            return None;
        }
        let plain = |index| Choice {
            index,
            set_cookie: false,
        };
        match (self.policy, key) {
            (Policy::IpHash | Policy::HeaderHash, SelectKey::Hash(bytes)) => self.hashed(bytes, exclude).map(plain),
            (Policy::LeastConn, _) => self.least_conn(exclude).map(plain),
            (Policy::P2c, _) => self.p2c(exclude).map(plain),
            (Policy::Cookie, SelectKey::Pinned(id)) => match self.entries.iter().position(|e| e.spec.id == id) {
                Some(i) if self.usable(i, exclude) => Some(plain(i)),
                _ => self.round_robin(exclude).map(|index| Choice {
                    index,
                    set_cookie: true,
                }),
            },
            (Policy::Cookie, _) => self.round_robin(exclude).map(|index| Choice {
                index,
                set_cookie: true,
            }),
            _ => self.round_robin(exclude).map(plain),
        }
    }

    fn round_robin(&self, exclude: &[usize]) -> Option<usize> {
        let n = self.sequence.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| self.sequence[(start + k) % n])
            .find(|&i| self.usable(i, exclude))
    }

    fn least_conn(&self, exclude: &[usize]) -> Option<usize> {
        let n = self.entries.len();
        // Rotate the starting point so ties are spread instead of always going
        // to the first target.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !self.usable(i, exclude) {
                continue;
            }
            let load = u64::from(self.entries[i].in_flight.load(Ordering::Relaxed));
            let w = u64::from(self.entries[i].spec.weight);
            // load_i / w_i < load_b / w_b  ⇔  load_i * w_b < load_b * w_i
            match best {
                Some((_, bl, bw)) if load * bw >= bl * w => {}
                _ => best = Some((i, load, w)),
            }
        }
        best.map(|(i, _, _)| i)
    }

    fn p2c(&self, exclude: &[usize]) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.entries.len()).filter(|&i| self.usable(i, exclude)).collect();
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let a = candidates[fastrand::usize(..n)];
                let mut b = candidates[fastrand::usize(..n - 1)];
                if b == a {
                    b = candidates[n - 1];
                }
                let load = |i: usize| {
                    u64::from(self.entries[i].in_flight.load(Ordering::Relaxed)) * 1000
                        / u64::from(self.entries[i].spec.weight)
                };
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    fn hashed(&self, key: &[u8], exclude: &[usize]) -> Option<usize> {
        let kh = stable_hash(0x5eed, key);
        let mut best: Option<(usize, f64)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if !self.usable(i, exclude) {
                continue;
            }
            let s = rendezvous_score(kh, e.spec.id, e.spec.weight);
            if best.is_none_or(|(_, bs)| s > bs) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Interleaves targets by weight (the smooth weighted round robin nginx uses):
/// weights 5,1,1 give `a a b a c a a` rather than `a a a a a b c`.
fn smooth_sequence(weights: &[u32]) -> Vec<usize> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w.max(1)));
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x.max(1) / g.max(1))).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SEQUENCE {
        // Keep proportions approximately; every target keeps at least one slot.
        w = w.iter().map(|&x| (x * MAX_SEQUENCE / total).max(1)).collect();
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &wi) in current.iter_mut().zip(&w) {
            *c += wi as i64;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i)))
            .unwrap_or((0, &0));
        current[best] -= total;
        seq.push(best);
    }
    seq
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::PassiveConfig;

    fn targets(weights: &[u32]) -> Vec<TargetSpec> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let name = format!("10.0.0.{i}:80");
                TargetSpec::new(
                    &name,
                    w,
                    Arc::new(Health::new(name.clone(), true, PassiveConfig::DEFAULT)),
                )
            })
            .collect()
    }

    fn counts(b: &Balancer, n: usize, mut key: impl FnMut(usize) -> Vec<u8>) -> Vec<usize> {
        let mut c = vec![0; b.len()];
        for k in 0..n {
            let bytes = key(k);
            let choice = b.select(SelectKey::Hash(&bytes), &[]).unwrap();
            c[choice.index] += 1;
        }
        c
    }

    #[test]
    fn smooth_sequence_interleaves() {
        assert_eq!(smooth_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence(&[2, 2]), vec![0, 1]);
        assert_eq!(smooth_sequence(&[1, 1, 1]).len(), 3);
    }

    #[test]
    fn weighted_round_robin_follows_weights() {
        let b = Balancer::new(Policy::RoundRobin, targets(&[3, 1]));
        let c = counts(&b, 4000, |_| Vec::new());
        assert_eq!(c, vec![3000, 1000]);
    }

    #[test]
    fn unavailable_and_excluded_targets_are_skipped() {
        let t = targets(&[1, 1, 1]);
        t[1].health.record_check(false, 1, 1);
        let b = Balancer::new(Policy::RoundRobin, t);
        for _ in 0..30 {
            let i = b.select(SelectKey::None, &[0]).unwrap().index;
            assert_eq!(i, 2);
        }
        assert_eq!(b.select(SelectKey::None, &[0, 2]), None);
    }

    #[test]
    fn least_conn_prefers_idle_targets() {
        let b = Balancer::new(Policy::LeastConn, targets(&[1, 1, 1]));
        let _a = b.acquire(0);
        let _b = b.acquire(0);
        let _c = b.acquire(1);
        assert_eq!(b.select(SelectKey::None, &[]).unwrap().index, 2);
        let _d = b.acquire(2);
        let _e = b.acquire(2);
        assert_eq!(b.select(SelectKey::None, &[]).unwrap().index, 1);
    }

    #[test]
    fn least_conn_spreads_ties() {
        let b = Balancer::new(Policy::LeastConn, targets(&[1, 1, 1, 1]));
        let c = counts(&b, 4000, |_| Vec::new());
        assert!(c.iter().all(|&x| x == 1000), "{c:?}");
    }

    #[test]
    fn p2c_avoids_the_loaded_target() {
        let b = Balancer::new(Policy::P2c, targets(&[1, 1]));
        let held: Vec<_> = (0..5).map(|_| b.acquire(0)).collect();
        for _ in 0..100 {
            assert_eq!(b.select(SelectKey::None, &[]).unwrap().index, 1);
        }
        drop(held);
    }

    #[test]
    fn p2c_spreads_evenly_when_idle() {
        let b = Balancer::new(Policy::P2c, targets(&[1, 1, 1]));
        let c = counts(&b, 30_000, |_| Vec::new());
        assert!(c.iter().all(|&x| (8_500..11_500).contains(&x)), "{c:?}");
    }

    #[test]
    fn consistent_hashing_is_stable_and_even() {
        let b = Balancer::new(Policy::IpHash, targets(&[1, 1, 1, 1]));
        let key = |k: usize| format!("198.51.{}.{}", k / 256, k % 256).into_bytes();
        let c = counts(&b, 20_000, key);
        assert!(c.iter().all(|&x| (4_400..5_600).contains(&x)), "{c:?}");
        for k in 0..100 {
            let a = b.select(SelectKey::Hash(&key(k)), &[]).unwrap();
            let again = b.select(SelectKey::Hash(&key(k)), &[]).unwrap();
            assert_eq!(a, again);
        }
    }

    #[test]
    fn adding_a_target_moves_about_one_in_n_keys() {
        let four = Balancer::new(Policy::HeaderHash, targets(&[1, 1, 1, 1]));
        let five = Balancer::new(Policy::HeaderHash, targets(&[1, 1, 1, 1, 1]));
        let n = 20_000;
        let mut moved = 0;
        for k in 0..n {
            let key = format!("user-{k}").into_bytes();
            let a = four.select(SelectKey::Hash(&key), &[]).unwrap().index;
            let b = five.select(SelectKey::Hash(&key), &[]).unwrap().index;
            if a != b {
                // Keys only ever move to the new target.
                assert_eq!(b, 4);
                moved += 1;
            }
        }
        // Ideal: 1/5 = 20%.
        assert!((n * 17 / 100..n * 23 / 100).contains(&moved), "moved {moved}");
    }

    #[test]
    fn hashing_skips_a_down_target_and_keeps_the_others() {
        let t = targets(&[1, 1, 1]);
        let b = Balancer::new(Policy::IpHash, t.clone());
        let before: Vec<usize> = (0..3000)
            .map(|k| b.select(SelectKey::Hash(&(k as u32).to_le_bytes()), &[]).unwrap().index)
            .collect();
        t[0].health.record_check(false, 1, 1);
        for (k, &was) in before.iter().enumerate() {
            let now = b.select(SelectKey::Hash(&(k as u32).to_le_bytes()), &[]).unwrap().index;
            if was != 0 {
                assert_eq!(now, was, "keys of healthy targets stay put");
            } else {
                assert_ne!(now, 0);
            }
        }
    }

    #[test]
    fn cookie_pins_and_falls_back() {
        let t = targets(&[1, 1, 1]);
        let b = Balancer::new(Policy::Cookie, t.clone());
        let id = t[2].id;
        for _ in 0..10 {
            assert_eq!(
                b.select(SelectKey::Pinned(id), &[]).unwrap(),
                Choice {
                    index: 2,
                    set_cookie: false
                }
            );
        }
        t[2].health.record_check(false, 1, 1);
        let c = b.select(SelectKey::Pinned(id), &[]).unwrap();
        assert_ne!(c.index, 2);
        assert!(c.set_cookie, "a new pin is set when the old target is down");
        assert!(b.select(SelectKey::None, &[]).unwrap().set_cookie);
    }
}
