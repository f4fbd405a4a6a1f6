//! Concurrency limits: at most N requests in flight per route or upstream, and an
//! immediate "no" beyond that (the caller answers 503 with `Retry-After`). There
//! is no queue: a queue in front of a saturated backend only adds latency, while
//! a fast 503 lets clients and load balancers go elsewhere.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use crate::PolicyError;

/// `Retry-After` of a shed request. Requests in flight usually finish within a
/// second, so asking clients to come back after one spreads the retry load without
/// keeping them away long.
pub const DEFAULT_SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A limit on requests in flight. Share it in an `Arc` between workers.
pub struct ConcurrencyLimit {
    name: Box<str>,
    max: usize,
    in_flight: AtomicUsize,
    shed: AtomicU64,
    retry_after: Duration,
}

impl fmt::Debug for ConcurrencyLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("name", &self.name)
            .field("max", &self.max)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl ConcurrencyLimit {
    /// At most `max` (≥ 1) requests in flight under `name` (used in logs and
    /// metrics).
    pub fn new(name: &str, max: usize) -> Result<Arc<Self>, PolicyError> {
        if max == 0 {
            return Err(PolicyError::Concurrency { name: name.to_owned() });
        }
        Ok(Arc::new(ConcurrencyLimit {
            name: name.into(),
            max,
            in_flight: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
            retry_after: DEFAULT_SHED_RETRY_AFTER,
        }))
    }

    /// Takes a slot, or returns `None` when all `max` are taken (counted as shed).
    /// Keep the guard until the response body has been sent: dropping it frees
    /// the slot.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConcurrencyGuard> {
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= self.max {
                self.shed.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self
                .in_flight
                .compare_exchange_weak(current, current + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Some(ConcurrencyGuard { limit: self.clone() }),
                Err(actual) => current = actual,
            }
        }
    }

    /// The name given at construction.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests refused so far.
    pub fn shed_count(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// The 503 answer for a shed request: `Retry-After` and a one-line body.
    pub fn service_unavailable(&self) -> Response<Bytes> {
        let mut resp = Response::new(Bytes::from_static(
            b"503 Service Unavailable: too many requests in flight\n",
        ));
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        h.insert(RETRY_AFTER, HeaderValue::from(self.retry_after.as_secs().max(1)));
        resp
    }
}

/// A slot of a [`ConcurrencyLimit`]; freed on drop. `Send + 'static`, so it can
/// travel inside a response body.
#[derive(Debug)]
pub struct ConcurrencyGuard {
    limit: Arc<ConcurrencyLimit>,
}

impl Drop for ConcurrencyGuard {
    fn drop(&mut self) {
        self.limit.in_flight.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_beyond_the_limit_and_frees_on_drop() {
        let limit = ConcurrencyLimit::new("api", 2).unwrap();
        let a = limit.try_acquire().unwrap();
        let b = limit.try_acquire().unwrap();
        assert_eq!(limit.in_flight(), 2);
        assert!(limit.try_acquire().is_none());
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.shed_count(), 2);
        drop(a);
        assert_eq!(limit.in_flight(), 1);
        let c = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        drop((b, c));
        assert_eq!(limit.in_flight(), 0);
    }

    #[test]
    fn zero_is_a_config_error() {
        assert!(matches!(
            ConcurrencyLimit::new("x", 0),
            Err(PolicyError::Concurrency { .. })
        ));
    }

    #[test]
    fn shed_answer_is_503_with_retry_after() {
        let limit = ConcurrencyLimit::new("api", 1).unwrap();
        let resp = limit.service_unavailable();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn never_exceeds_the_limit_across_threads() {
        let limit = ConcurrencyLimit::new("api", 3).unwrap();
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (limit, peak) = (limit.clone(), peak.clone());
                std::thread::spawn(move || {
                    let mut got = 0;
                    for _ in 0..2000 {
                        if let Some(g) = limit.try_acquire() {
                            peak.fetch_max(limit.in_flight(), Ordering::Relaxed);
                            got += 1;
                            drop(g);
                        }
                    }
                    got
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(total > 0);
        assert!(
            peak.load(Ordering::Relaxed) <= 3,
            "peak {}",
            peak.load(Ordering::Relaxed)
        );
        assert_eq!(limit.in_flight(), 0);
    }
}
