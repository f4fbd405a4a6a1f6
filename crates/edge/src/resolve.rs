//! Host-name targets: resolved when first used and again once the answer is
//! [`RESOLVE_EVERY`] old, so a backend that moves (a container restarted with
//! a new address, a DNS failover) is followed without a reload, while new
//! connections do not each pay for a lookup. A failed lookup keeps the last
//! good answer and is retried after [`RETRY_FAILED_AFTER`].
//!
//! Lookups run on the blocking pool (the system resolver, as `getaddrinfo`
//! honours `/etc/hosts` and `nsswitch.conf`); the cache is shared by every
//! worker and by the health checker.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an answer is used before the name is looked up again.
pub(crate) const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// After a failed lookup the last good answer is used this long before the
/// next attempt, so a dead resolver is not asked on every connection.
pub(crate) const RETRY_FAILED_AFTER: Duration = Duration::from_secs(5);

struct Entry {
    addrs: Arc<[SocketAddr]>,
    /// When the entry must be refreshed.
    refresh_at: Instant,
}

/// Answers by `(host, port)`.
#[derive(Default)]
pub(crate) struct Cache {
    entries: Mutex<HashMap<(String, u16), Entry>>,
}

impl Cache {
    /// The process-wide cache.
    pub(crate) fn global() -> &'static Cache {
        static CACHE: OnceLock<Cache> = OnceLock::new();
        CACHE.get_or_init(Cache::default)
    }

    fn fresh(&self, host: &str, port: u16, now: Instant) -> (Option<Arc<[SocketAddr]>>, bool) {
        let Ok(entries) = self.entries.lock() else {
            return (None, true);
        };
        match entries.get(&(host.to_owned(), port)) {
            Some(e) => (Some(e.addrs.clone()), now >= e.refresh_at),
            None => (None, true),
        }
    }

    fn store(&self, host: &str, port: u16, addrs: Arc<[SocketAddr]>, refresh_at: Instant) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert((host.to_owned(), port), Entry { addrs, refresh_at });
        }
    }

    /// The addresses of `host:port`, from the cache while fresh, otherwise from
    /// `resolve`.
    pub(crate) async fn lookup<F, Fut>(
        &self,
        host: &str,
        port: u16,
        now: Instant,
        resolve: F,
    ) -> io::Result<Arc<[SocketAddr]>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<Vec<SocketAddr>>>,
    {
        let (cached, stale) = self.fresh(host, port, now);
        if let (Some(addrs), false) = (&cached, stale) {
            return Ok(addrs.clone());
        }
        match resolve().await {
            Ok(found) if !found.is_empty() => {
                let addrs: Arc<[SocketAddr]> = found.into();
                if cached.as_deref().is_some_and(|old| old != &*addrs) {
                    tracing::info!(host, port, addrs = ?addrs, "Target name resolves to new addresses.");
                }
                self.store(host, port, addrs.clone(), now + RESOLVE_EVERY);
                Ok(addrs)
            }
            result => {
                let error = match result {
                    Err(e) => e,
                    Ok(_) => io::Error::new(io::ErrorKind::NotFound, format!("{host} has no addresses")),
                };
                match cached {
                    Some(old) => {
                        tracing::warn!(host, port, error = %error, "Cannot resolve target; using its last addresses.");
                        self.store(host, port, old.clone(), now + RETRY_FAILED_AFTER);
                        Ok(old)
                    }
                    None => Err(error),
                }
            }
        }
    }
}

/// The addresses of a host-name target, through the process-wide cache.
pub(crate) async fn addrs(host: &str, port: u16) -> io::Result<Arc<[SocketAddr]>> {
    Cache::global()
        .lookup(host, port, Instant::now(), || async move {
            tokio::net::lookup_host((host, port)).await.map(Iterator::collect)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn answer(list: &[&str]) -> io::Result<Vec<SocketAddr>> {
        Ok(list.iter().map(|s| addr(s)).collect())
    }

    #[tokio::test]
    async fn answers_are_reused_until_they_age_then_looked_up_again() {
        let cache = Cache::default();
        let t0 = Instant::now();
        let a = cache
            .lookup("api", 80, t0, || async { answer(&["10.0.0.1:80"]) })
            .await
            .unwrap();
        assert_eq!(&*a, &[addr("10.0.0.1:80")]);
        // Fresh: the resolver is not asked (it would return something else).
        let b = cache
            .lookup("api", 80, t0 + RESOLVE_EVERY / 2, || async { answer(&["10.0.0.2:80"]) })
            .await
            .unwrap();
        assert_eq!(&*b, &[addr("10.0.0.1:80")]);
        // Aged: the new answer is taken.
        let c = cache
            .lookup("api", 80, t0 + RESOLVE_EVERY, || async { answer(&["10.0.0.2:80"]) })
            .await
            .unwrap();
        assert_eq!(&*c, &[addr("10.0.0.2:80")]);
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_the_last_answer_and_retries_later() {
        let cache = Cache::default();
        let t0 = Instant::now();
        cache
            .lookup("api", 80, t0, || async { answer(&["10.0.0.1:80"]) })
            .await
            .unwrap();
        let t1 = t0 + RESOLVE_EVERY;
        let kept = cache
            .lookup("api", 80, t1, || async { Err(io::Error::other("SERVFAIL")) })
            .await
            .unwrap();
        assert_eq!(&*kept, &[addr("10.0.0.1:80")]);
        // Within the retry pause the failing resolver is not asked again.
        let still = cache
            .lookup("api", 80, t1 + RETRY_FAILED_AFTER / 2, || async {
                answer(&["10.0.0.9:80"])
            })
            .await
            .unwrap();
        assert_eq!(&*still, &[addr("10.0.0.1:80")]);
        let later = cache
            .lookup("api", 80, t1 + RETRY_FAILED_AFTER, || async {
                answer(&["10.0.0.9:80"])
            })
            .await
            .unwrap();
        assert_eq!(&*later, &[addr("10.0.0.9:80")]);
        // An empty answer counts as a failure.
        let empty = cache
            .lookup("api", 80, t1 + RETRY_FAILED_AFTER + RESOLVE_EVERY, || async {
                answer(&[])
            })
            .await
            .unwrap();
        assert_eq!(&*empty, &[addr("10.0.0.9:80")]);
    }

    #[tokio::test]
    async fn an_unknown_name_without_a_past_answer_is_an_error() {
        let cache = Cache::default();
        let e = cache
            .lookup("nope", 80, Instant::now(), || async { answer(&[]) })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let real = addrs("localhost", 8080).await.unwrap();
        assert!(
            real.iter().all(|a| a.ip().is_loopback() && a.port() == 8080),
            "{real:?}"
        );
    }
}
