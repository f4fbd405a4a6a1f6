//! Edge policies on the request path: the process-wide parts (rate limiters, the
//! Redis backend, upstream concurrency limits, per-IP connection counts) and the
//! request-hygiene checks that run before routing.
//!
//! Per-route policies live in the compiled route table (`router.rs`); the
//! handler consults both in the phases described in `handler.rs`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use gatehouse_config::Config;
use gatehouse_policy::{ConcurrencyLimit, KeyKind, LimiterOptions, RateLimiter, RedisBackend, RedisOptions};
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Version};

use crate::EdgeError;

/// Policies shared by every worker for one configuration.
pub(crate) struct PolicySet {
    /// Rate limiters by index of `Config::rate_limits`, with their key kind.
    pub(crate) limiters: Vec<(Arc<RateLimiter>, KeyKind)>,
    /// `max_in_flight` of each upstream, by upstream index.
    pub(crate) upstream_limits: Vec<Option<Arc<ConcurrencyLimit>>>,
    /// Connection counts per client address, when limited.
    pub(crate) connections: Option<Arc<ConnLimits>>,
    /// The Redis connection of shared limiters, with the settings it was made
    /// from (a reload keeps it while they are unchanged).
    redis: Option<(gatehouse_config::Redis, Arc<RedisBackend>)>,
    /// What each limiter was built from, so a reload can keep an unchanged one
    /// (and its buckets: clients do not get a fresh burst on every reload).
    limits: Vec<gatehouse_config::RateLimit>,
}

impl PolicySet {
    /// Builds the policies of `config`. With `previous` (a reload), the Redis
    /// connection, unchanged rate limiters and the per-IP connection counts
    /// carry over.
    pub(crate) fn new(config: &Config, previous: Option<&PolicySet>) -> Result<Self, EdgeError> {
        let policy_err = |what: String| move |source| EdgeError::Policy { what, source };
        let redis = match &config.redis {
            Some(r) => match previous.and_then(|p| p.redis.as_ref()).filter(|(old, _)| old == r) {
                Some((_, backend)) => Some((r.clone(), backend.clone())),
                None => {
                    let mut options = RedisOptions::new(r.url.expose());
                    options.timeout = r.timeout;
                    options.connect_timeout = r.connect_timeout;
                    options.reconnect_max = r.reconnect_max.max(options.reconnect_min);
                    options.key_prefix.clone_from(&r.key_prefix);
                    Some((
                        r.clone(),
                        RedisBackend::start(options).map_err(policy_err("redis".into()))?,
                    ))
                }
            },
            None => None,
        };
        let mut limiters = Vec::with_capacity(config.rate_limits.len());
        for limit in &config.rate_limits {
            let reused = previous.and_then(|p| {
                let i = p.limits.iter().position(|old| old == limit)?;
                let (limiter, _) = &p.limiters[i];
                // A shared limiter must use the Redis connection kept above.
                let same_backend =
                    !limit.shared || matches!((&p.redis, &redis), (Some((a, _)), Some((b, _))) if a == b);
                same_backend.then(|| limiter.clone())
            });
            let limiter = match reused {
                Some(l) => l,
                None => {
                    let options = LimiterOptions {
                        max_keys: limit.max_keys,
                        ..LimiterOptions::default()
                    };
                    let mut limiter = RateLimiter::new(&limit.name, limit.spec.rate, &options)
                        .map_err(policy_err(format!("rate limit {}", limit.name)))?;
                    if limit.shared {
                        if let Some((_, backend)) = &redis {
                            limiter = limiter.shared(backend.clone());
                        }
                    }
                    Arc::new(limiter)
                }
            };
            limiters.push((limiter, limit.spec.key.clone()));
        }
        let upstream_limits = config
            .upstreams
            .iter()
            .map(|u| {
                u.max_in_flight
                    .map(|max| ConcurrencyLimit::new(&u.name, max))
                    .transpose()
                    .map_err(policy_err(format!("upstream {}", u.name)))
            })
            .collect::<Result<_, _>>()?;
        let connections = config.limits.max_connections_per_ip.map(|max| {
            match previous.and_then(|p| p.connections.as_ref()).filter(|c| c.max == max) {
                Some(c) => c.clone(),
                None => Arc::new(ConnLimits::new(max)),
            }
        });
        Ok(Self {
            limiters,
            upstream_limits,
            connections,
            redis,
            limits: config.rate_limits.clone(),
        })
    }
}

/// Shards of the per-IP connection table: accepts on different workers rarely
/// contend for one lock.
const CONN_SHARDS: usize = 16;

/// Open connections per client address, bounded by `max`.
pub(crate) struct ConnLimits {
    max: u32,
    shards: Vec<Mutex<HashMap<IpAddr, u32>>>,
    hasher: std::hash::RandomState,
}

/// One counted connection; uncounted on drop.
pub(crate) struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    fn new(max: u32) -> Self {
        Self {
            max,
            shards: (0..CONN_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        &self.shards[(self.hasher.hash_one(ip) as usize) % CONN_SHARDS]
    }

    /// Counts a new connection from `ip`; `false` when it already has `max`.
    fn acquire(&self, ip: IpAddr) -> bool {
        let Ok(mut map) = self.shard(&ip).lock() else {
            return true;
        };
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        if let Ok(mut map) = self.shard(&ip).lock() {
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

impl ConnSlot {
    /// Counts a connection from `ip` against `[limits] max_connections_per_ip`.
    /// `None` when the address is over its limit; `Some` (possibly uncounted)
    /// otherwise.
    pub(crate) fn acquire(limits: Option<&Arc<ConnLimits>>, ip: IpAddr) -> Option<Option<ConnSlot>> {
        let Some(limits) = limits else {
            return Some(None);
        };
        let ip = ip.to_canonical();
        limits.acquire(ip).then(|| {
            Some(ConnSlot {
                limits: limits.clone(),
                ip,
            })
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.limits.release(self.ip);
    }
}

/// Why a request is refused before routing.
pub(crate) fn hygiene<B>(req: &Request<B>) -> Result<(), &'static str> {
    let headers = req.headers();
    // One pass over the fields instead of a lookup per rule.
    let (mut host, mut hosts, mut chunked, mut length) = (None, 0u32, false, None);
    let mut lengths_differ = false;
    for (name, value) in headers {
        if name == header::HOST {
            host = host.or(Some(value));
            hosts += 1;
        } else if name == header::CONTENT_LENGTH {
            match length {
                None => length = Some(value),
                Some(first) => lengths_differ |= first != value,
            }
        } else if name == header::TRANSFER_ENCODING {
            chunked = true;
        }
    }
    if matches!(req.version(), Version::HTTP_10 | Version::HTTP_11) {
        // RFC 9112 §6.1: a request with both is a smuggling attempt or a broken
        // client. hyper's HTTP/1 parser already drops the length (and closes the
        // connection after the response), so this only catches a request that
        // reaches the handler some other way with both still set.
        if chunked && length.is_some() {
            return Err("both Content-Length and Transfer-Encoding");
        }
        // Absolute-form (`GET http://a.example/ HTTP/1.1`) names the host twice;
        // if they differ, one of the two parsers in a chain would route it
        // elsewhere (RFC 9112 §3.2.2 lets the URI win; we refuse instead).
        if let (Some(authority), Some(h)) = (req.uri().authority(), host) {
            if !authority.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) {
                return Err("request target and Host header name different hosts");
            }
        }
    }
    // RFC 9112 §3.2: more than one Host is a 400.
    if hosts > 1 {
        return Err("more than one Host header");
    }
    if lengths_differ {
        return Err("conflicting Content-Length headers");
    }
    Ok(())
}

/// The declared body length, if the request says one.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// Removes every client-supplied `X-Gatehouse-*` header: gatehouse alone sets
/// them, and backends may trust them.
pub(crate) fn strip_internal_headers(headers: &mut HeaderMap) {
    const PREFIX: &[u8] = b"x-gatehouse-";
    let has_any = headers.keys().any(|k| k.as_str().as_bytes().starts_with(PREFIX));
    if !has_any {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().as_bytes().starts_with(PREFIX))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let r = req(
            Version::HTTP_11,
            "/",
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
        );
        assert!(hygiene(&r).is_err());
        let r = req(
            Version::HTTP_11,
            "/",
            &[("content-length", "5"), ("content-length", "6")],
        );
        assert!(hygiene(&r).is_err());
        let r = req(
            Version::HTTP_11,
            "/",
            &[("content-length", "5"), ("content-length", "5")],
        );
        assert!(hygiene(&r).is_ok());
    }

    #[test]
    fn absolute_form_must_agree_with_host() {
        let r = req(Version::HTTP_11, "http://a.example/x", &[("host", "b.example")]);
        assert!(hygiene(&r).is_err());
        let r = req(Version::HTTP_11, "http://A.example/x", &[("host", "a.EXAMPLE")]);
        assert!(hygiene(&r).is_ok());
        let r = req(Version::HTTP_11, "/", &[("host", "a.example"), ("host", "b.example")]);
        assert!(hygiene(&r).is_err());
    }

    #[test]
    fn internal_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("x-gatehouse-user", HeaderValue::from_static("admin"));
        h.append("X-Gatehouse-Roles", HeaderValue::from_static("root"));
        h.insert("x-gatehousex", HeaderValue::from_static("kept"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_internal_headers(&mut h);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("x-gatehousex") && h.contains_key("accept"));
    }

    #[test]
    fn connection_counts_are_bounded_per_address() {
        let limits = ConnLimits::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limits.acquire(a) && limits.acquire(a));
        assert!(!limits.acquire(a));
        assert!(limits.acquire(b));
        limits.release(a);
        assert!(limits.acquire(a));
    }
}
