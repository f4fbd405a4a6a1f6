//! Rate limits: GCRA per key, in process (governor) or shared through Redis.
//!
//! A [`Rate`] of `per_period` requests per `period` with a `burst` allows `burst`
//! requests at once and then one request every `period / per_period` (the emission
//! interval): `"20/s burst 40"` takes 40 requests in a burst, then 20 a second.
//! This is the generic cell rate algorithm: per key it stores one number, the
//! theoretical arrival time (TAT), so memory per key is constant whatever the rate.
//!
//! One [`RateLimiter`] is built per configured policy (a named `[rate_limit.NAME]`
//! table or an inline `rate_limit = "…"` on a route). Every route using the same
//! limiter shares its buckets. [`KeyKind`] says how a request picks its bucket.
//!
//! ## Headers
//! Decisions render the fields of draft-ietf-httpapi-ratelimit-headers-10 (the
//! current draft; it replaced `RateLimit-Limit/-Remaining/-Reset` with two
//! structured fields):
//!
//! ```text
//! RateLimit-Policy: "api";q=40;w=2
//! RateLimit: "api";r=39;t=1
//! Retry-After: 1                      (429 only)
//! ```
//!
//! * `q` is the burst and `w` the time in whole seconds (rounded up) in which an
//!   empty bucket refills completely, so `q/w` never advertises more than the rate.
//!   `"20/s"` gives `q=20;w=1`, `"100/m"` gives `q=100;w=60`.
//! * `r` is how many more requests would be allowed right now.
//! * `t` is, on an allowed request, the seconds (rounded up) until the full burst is
//!   available again; on a denied request it equals `Retry-After`, the seconds
//!   (rounded up, at least 1) until the next request can pass, as the draft asks
//!   both to name the same moment.

mod local;
mod parse;
mod redis;
mod store;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

pub use self::redis::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEY_PREFIX, DEFAULT_RECONNECT_MAX, DEFAULT_RECONNECT_MIN, DEFAULT_REDIS_TIMEOUT,
    RedisBackend, RedisOptions, RedisStats,
};
use crate::PolicyError;

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Default cap on keys per limiter. An entry is 16 bytes in a hash table that
/// doubles as it grows, so 100 000 keys cost at most about 4 MiB per limiter;
/// more distinct clients than that within one refill period is either an attack
/// (which then shares one overflow bucket instead of growing memory) or a site
/// large enough to raise `max_keys` deliberately.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Default time for one full pass of the idle-key sweep. Sweeping happens on the
/// request path one shard (1/64 of the table) at a time, so a pass every 10 s
/// keeps each step tiny while idle keys leave within seconds of becoming fresh.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// IPv6 clients are keyed by their /64: a single host usually owns a whole /64
/// and could otherwise rotate through 2^64 addresses, each with a fresh bucket.
pub const IPV6_KEY_PREFIX: u8 = 64;

/// The longest time a full burst may take to refill. Keeps every product of the
/// emission interval and the burst far inside `u64` nanoseconds and exact in the
/// double-precision microseconds of the Redis script.
pub const MAX_REFILL: Duration = Duration::from_secs(366 * 86_400);

/// A GCRA rate: `per_period` requests per `period`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests allowed per `period` in the long run.
    pub per_period: NonZeroU32,
    /// The period of `per_period`.
    pub period: Duration,
    /// Requests allowed at once (the bucket size).
    pub burst: NonZeroU32,
}

impl Rate {
    /// A validated rate: the emission interval (`period / per_period`) must be at
    /// least 1 µs, and refilling a full burst must take at most [`MAX_REFILL`].
    pub fn new(per_period: NonZeroU32, period: Duration, burst: NonZeroU32) -> Result<Rate, PolicyError> {
        let err = |reason: &str| PolicyError::Rate {
            input: format!("{per_period} per {period:?} burst {burst}"),
            reason: reason.to_owned(),
        };
        let rate = Rate {
            per_period,
            period,
            burst,
        };
        if rate.emission_interval() < Duration::from_micros(1) {
            return Err(err("more than 1 000 000 requests a second cannot be limited"));
        }
        if rate.emission_interval().saturating_mul(burst.get()) > MAX_REFILL {
            return Err(err("refilling a full burst would take more than a year"));
        }
        Ok(rate)
    }

    /// Time between two requests in the long run: `period / per_period`.
    pub fn emission_interval(&self) -> Duration {
        self.period / self.per_period.get()
    }

    /// The `q` and `w` of `RateLimit-Policy`: the burst, and the whole seconds
    /// (rounded up, at least 1) an empty bucket takes to refill.
    pub fn quota_window(&self) -> (u32, u64) {
        let refill = self.emission_interval().saturating_mul(self.burst.get());
        (self.burst.get(), ceil_secs(refill).max(1))
    }
}

impl fmt::Display for Rate {
    /// The string form, e.g. `20/s burst 40` (parses back to the same rate when the
    /// period is whole seconds).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.period.as_secs();
        let (n, unit) = match secs {
            s if s % 86_400 == 0 && s > 0 => (s / 86_400, "d"),
            s if s % 3600 == 0 && s > 0 => (s / 3600, "h"),
            s if s % 60 == 0 && s > 0 => (s / 60, "m"),
            s => (s, "s"),
        };
        if n == 1 {
            write!(f, "{}/{unit}", self.per_period)?;
        } else {
            write!(f, "{}/{n}{unit}", self.per_period)?;
        }
        if self.burst != self.per_period {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

/// What a request's bucket is chosen by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// The client IP after trusted-proxy processing (IPv6 by its /64).
    Ip,
    /// The authenticated user id; requests without one fall back to their IP.
    User,
    /// The value of a request header (e.g. an API key); requests without it (or
    /// with an empty value) fall back to their IP, so omitting it does not escape
    /// the limit.
    Header(HeaderName),
    /// One bucket for the whole limiter, whoever asks.
    Route,
}

impl KeyKind {
    /// The key of a request. `client_ip` is the real client address (trusted
    /// proxies already applied); `user` the authenticated user id, if any.
    pub fn key<'a>(&self, client_ip: IpAddr, headers: &'a HeaderMap, user: Option<&'a str>) -> RateKey<'a> {
        match self {
            KeyKind::Ip => RateKey::ip(client_ip),
            KeyKind::User => match user {
                Some(u) if !u.is_empty() => RateKey::Bytes(u.as_bytes()),
                _ => RateKey::ip(client_ip),
            },
            KeyKind::Header(name) => match headers.get(name) {
                Some(v) if !v.is_empty() => RateKey::Bytes(v.as_bytes()),
                _ => RateKey::ip(client_ip),
            },
            KeyKind::Route => RateKey::Route,
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Ip => f.write_str("ip"),
            KeyKind::User => f.write_str("user"),
            KeyKind::Header(h) => write!(f, "header {h}"),
            KeyKind::Route => f.write_str("route"),
        }
    }
}

/// A parsed `"20/s burst 40 per ip"`: the rate and the key kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateSpec {
    /// The rate.
    pub rate: Rate,
    /// How requests are keyed (default [`KeyKind::Ip`]).
    pub key: KeyKind,
}

impl FromStr for RateSpec {
    type Err = PolicyError;

    /// Parses the string form; see the grammar in `ratelimit/parse.rs` and
    /// `docs/policies.md`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse::parse(s)
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {}", self.rate, self.key)
    }
}

/// The bucket a request is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKey<'a> {
    /// A client address, already normalised by [`RateKey::ip`].
    Ip(IpAddr),
    /// A user id, header value or any other byte string.
    Bytes(&'a [u8]),
    /// The single bucket of a per-route limit.
    Route,
}

impl RateKey<'static> {
    /// The key of a client address: IPv4-mapped IPv6 becomes IPv4, and IPv6 is
    /// cut to its /64 ([`IPV6_KEY_PREFIX`]).
    pub fn ip(addr: IpAddr) -> RateKey<'static> {
        match addr.to_canonical() {
            IpAddr::V4(v4) => RateKey::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & (u128::MAX << (128 - u32::from(IPV6_KEY_PREFIX)));
                RateKey::Ip(IpAddr::V6(bits.into()))
            }
        }
    }
}

impl RateKey<'_> {
    /// Appends the Redis form of the key (`ip:192.0.2.1`, `k:<bytes>`, `route`).
    fn write_redis(&self, out: &mut Vec<u8>) {
        match self {
            RateKey::Ip(ip) => {
                out.extend_from_slice(b"ip:");
                out.extend_from_slice(ip.to_string().as_bytes());
            }
            RateKey::Bytes(b) => {
                out.extend_from_slice(b"k:");
                out.extend_from_slice(b);
            }
            RateKey::Route => out.extend_from_slice(b"route"),
        }
    }
}

/// Limits of one limiter's in-process state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimiterOptions {
    /// Most keys kept ([`DEFAULT_MAX_KEYS`]). When full, requests with new keys
    /// share one overflow bucket (with the same rate) until idle keys expire: memory
    /// stays bounded and the limit never fails open.
    pub max_keys: NonZeroUsize,
    /// Time for one full pass of the idle-key sweep ([`DEFAULT_SWEEP_INTERVAL`]).
    pub sweep_interval: Duration,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        LimiterOptions {
            max_keys: NonZeroUsize::new(DEFAULT_MAX_KEYS).unwrap_or(NonZeroUsize::MIN),
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
        }
    }
}

/// Where a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionSource {
    /// The in-process limiter (no Redis configured).
    Local,
    /// The shared limiter in Redis.
    Shared,
    /// The in-process limiter because Redis was unreachable, slow or failing.
    Fallback,
}

/// The answer for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests that would still be allowed right now.
    pub remaining: u32,
    /// Allowed: time until the full burst is available again. Denied: equal to
    /// `retry_after`.
    pub reset: Duration,
    /// Denied: time until the next request can pass. Allowed: zero.
    pub retry_after: Duration,
    /// Where the decision was made.
    pub source: DecisionSource,
    meta: Arc<Meta>,
}

/// Per-limiter data the headers need, rendered once.
#[derive(Debug)]
struct Meta {
    name: Box<str>,
    policy_value: HeaderValue,
    /// `"name";r=`
    ratelimit_prefix: Box<str>,
}

impl Decision {
    /// The limiter's name (the policy identifier in the headers).
    pub fn policy(&self) -> &str {
        &self.meta.name
    }

    /// `Retry-After` in whole seconds, rounded up, at least 1 (denied decisions).
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }

    /// Appends `RateLimit-Policy`, `RateLimit` and (denied only) `Retry-After`.
    /// Call it on every response of a rate-limited route, allowed or not.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY, self.meta.policy_value.clone());
        let t = if self.allowed {
            ceil_secs(self.reset)
        } else {
            self.retry_after_secs()
        };
        let mut buf = itoa::Buffer::new();
        let mut value = String::with_capacity(self.meta.ratelimit_prefix.len() + 16);
        value.push_str(&self.meta.ratelimit_prefix);
        value.push_str(buf.format(self.remaining));
        value.push_str(";t=");
        value.push_str(buf.format(t));
        // The prefix was validated when the limiter was built; digits are valid.
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(RATELIMIT, v);
        }
        if !self.allowed {
            headers.insert(RETRY_AFTER, HeaderValue::from(self.retry_after_secs()));
        }
    }

    /// The headers of [`Decision::write_headers`] in a new map.
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(3);
        self.write_headers(&mut h);
        h
    }
}

/// The 429 answer for a denied decision: the rate-limit headers, `Retry-After`,
/// and a one-line text body.
pub fn too_many_requests(decision: &Decision) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from_static(b"429 Too Many Requests: rate limit exceeded\n"));
    *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    decision.write_headers(resp.headers_mut());
    resp
}

/// Counters of one limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterStats {
    /// Keys held in memory now.
    pub keys: usize,
    /// Requests counted in the overflow bucket because the key table was full.
    pub overflowed: u64,
}

/// One rate-limit policy: a local GCRA limiter, optionally shared through Redis.
///
/// `Send + Sync`; share it between workers in an `Arc`.
pub struct RateLimiter<C: Clock = DefaultClock> {
    rate: Rate,
    local: local::LocalLimiter<C>,
    shared: Option<Shared>,
    meta: Arc<Meta>,
}

struct Shared {
    backend: Arc<RedisBackend>,
    /// `{key_prefix}{name}:`
    prefix: Box<[u8]>,
    interval_us: u64,
    tau_us: u64,
}

impl<C: Clock> fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.meta.name)
            .field("rate", &self.rate)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimiter<DefaultClock> {
    /// A local limiter named `name` (the policy identifier in the headers: 1–64
    /// printable ASCII characters without `"` or `\`).
    pub fn new(name: &str, rate: Rate, options: &LimiterOptions) -> Result<Self, PolicyError> {
        Self::with_clock(name, rate, options, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    /// [`RateLimiter::new`] with another clock (tests use governor's
    /// `FakeRelativeClock`).
    pub fn with_clock(name: &str, rate: Rate, options: &LimiterOptions, clock: C) -> Result<Self, PolicyError> {
        crate::check_name(name)?;
        if options.sweep_interval.is_zero() {
            return Err(PolicyError::Limiter {
                policy: name.to_owned(),
                reason: "the sweep interval must be greater than zero".into(),
            });
        }
        let (q, w) = rate.quota_window();
        let policy_value = HeaderValue::try_from(format!("\"{name}\";q={q};w={w}")).map_err(|_| PolicyError::Name {
            name: name.to_owned(),
            reason: "not a valid header value",
        })?;
        let meta = Arc::new(Meta {
            name: name.into(),
            policy_value,
            ratelimit_prefix: format!("\"{name}\";r=").into(),
        });
        Ok(RateLimiter {
            rate,
            local: local::LocalLimiter::new(name, rate, options, clock),
            shared: None,
            meta,
        })
    }

    /// Shares this limiter through Redis: instances with the same policy name and
    /// key prefix count in the same buckets. The local limiter stays as the
    /// fallback while Redis is unreachable.
    pub fn shared(mut self, backend: Arc<RedisBackend>) -> Self {
        let mut prefix = backend.key_prefix().as_bytes().to_vec();
        prefix.extend_from_slice(self.meta.name.as_bytes());
        prefix.push(b':');
        let interval = self.rate.emission_interval();
        let interval_us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        let tau_us = interval_us.saturating_mul(u64::from(self.rate.burst.get() - 1));
        self.shared = Some(Shared {
            backend,
            prefix: prefix.into(),
            interval_us,
            tau_us,
        });
        self
    }

    /// The policy name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Whether this limiter is shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Counts one request under `key` and decides. With Redis, waits at most the
    /// backend's timeout and otherwise decides locally ([`DecisionSource::Fallback`]);
    /// without Redis it never waits (the future is ready at once).
    pub async fn check(&self, key: &RateKey<'_>) -> Decision {
        let Some(shared) = &self.shared else {
            return self.decide_local(key, DecisionSource::Local);
        };
        if shared.backend.is_connected() {
            let mut redis_key = Vec::with_capacity(shared.prefix.len() + 48);
            redis_key.extend_from_slice(&shared.prefix);
            key.write_redis(&mut redis_key);
            if let Some(reply) = shared.backend.gcra(&redis_key, shared.interval_us, shared.tau_us).await {
                return self.decide_shared(reply, shared);
            }
        } else {
            shared.backend.count_fallback();
        }
        self.decide_local(key, DecisionSource::Fallback)
    }

    /// Counts one request in the in-process limiter only (no Redis).
    pub fn check_local(&self, key: &RateKey<'_>) -> Decision {
        self.decide_local(key, DecisionSource::Local)
    }

    fn decide_local(&self, key: &RateKey<'_>, source: DecisionSource) -> Decision {
        let o = self.local.check(key);
        Decision {
            allowed: o.allowed,
            remaining: o.remaining,
            reset: o.reset,
            retry_after: o.retry_after,
            source,
            meta: self.meta.clone(),
        }
    }

    fn decide_shared(&self, reply: redis::Reply, shared: &Shared) -> Decision {
        let (allowed, remaining, reset, retry_after) = if reply.allowed {
            // ahead = new TAT − now ≥ one interval; the bucket holds
            // (tau + T − ahead) / T more requests.
            let room = (shared.tau_us + shared.interval_us).saturating_sub(reply.ahead_us);
            let remaining = u32::try_from(room / shared.interval_us.max(1)).unwrap_or(u32::MAX);
            (true, remaining, Duration::from_micros(reply.ahead_us), Duration::ZERO)
        } else {
            let wait = Duration::from_micros(reply.ahead_us);
            (false, 0, wait, wait)
        };
        Decision {
            allowed,
            remaining,
            reset,
            retry_after,
            source: DecisionSource::Shared,
            meta: self.meta.clone(),
        }
    }

    /// Removes every idle key now (the request path already does this a shard at
    /// a time). Returns how many were removed.
    pub fn sweep(&self) -> usize {
        self.local.sweep_all()
    }

    /// Counters of the in-process state.
    pub fn stats(&self) -> LimiterStats {
        LimiterStats {
            keys: self.local.len(),
            overflowed: self.local.overflowed(),
        }
    }
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
