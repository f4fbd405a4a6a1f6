//! Edge policies for gatehouse, as a library.
//!
//! Each module turns a typed options struct (filled by the config crate) into a
//! compiled policy that the request path consults with cheap, non-blocking calls:
//!
//! | module | compiled type | consulted with |
//! |---|---|---|
//! | [`ratelimit`] | [`RateLimiter`] (local GCRA, optionally shared through [`RedisBackend`]) | [`RateLimiter::check`] → [`Decision`] |
//! | [`concurrency`] | [`ConcurrencyLimit`] | [`ConcurrencyLimit::try_acquire`] → guard or shed |
//! | [`cors`] | [`CorsPolicy`] | [`CorsPolicy::preflight`], [`CorsPolicy::apply`] |
//! | [`iprules`] | [`IpRules`] | [`IpRules::check`] |
//! | [`headers`] | [`SecurityHeaders`], [`HeaderRules`] | `apply(&mut HeaderMap)` |
//!
//! Nothing here reads config files, owns sockets (except the Redis connection of
//! [`RedisBackend`]) or knows about hyper connections. `docs/policies.md` describes
//! the proposed config keys and which function the edge calls in which phase.
//!
//! **Invariant:** no call on the request path blocks a thread or waits on Redis
//! longer than its configured timeout; every failure of a shared backend turns into
//! a local decision that is logged (once per outage) and counted.

pub mod concurrency;
pub mod cors;
pub mod headers;
pub mod iprules;
pub mod ratelimit;

pub use concurrency::{ConcurrencyGuard, ConcurrencyLimit};
pub use cors::{CorsOptions, CorsPolicy, Preflight};
pub use headers::{Direction, FrameOptions, HeaderRules, SecurityHeaders, SecurityHeadersOptions, is_html_type};
pub use iprules::{IpRules, IpVerdict};
pub use ratelimit::{
    Decision, DecisionSource, KeyKind, LimiterOptions, LimiterStats, Rate, RateKey, RateLimiter, RateSpec,
    RedisBackend, RedisOptions, RedisStats, too_many_requests,
};

/// Errors from building a policy out of its options. Request-time calls do not
/// fail: they answer with a decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A rate such as `"20/s burst 40 per ip"` did not parse.
    #[error(
        "invalid rate limit {input:?}: {reason}; expected e.g. \"20/s\", \"100/m burst 200\" or \"5/s burst 10 per ip\""
    )]
    Rate {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A policy name is empty or not printable ASCII.
    #[error("invalid policy name {name:?}: {reason}")]
    Name {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A limiter option is out of range.
    #[error("rate limit {policy:?}: {reason}")]
    Limiter {
        /// Policy name.
        policy: String,
        /// What is wrong.
        reason: String,
    },
    /// A CORS policy is inconsistent or names an invalid origin, method or header.
    #[error("cors policy {policy:?}: {reason}")]
    Cors {
        /// Policy name.
        policy: String,
        /// What is wrong.
        reason: String,
    },
    /// A header rule names an invalid or forbidden header, or an invalid value.
    #[error("header rule {name:?}: {reason}")]
    Header {
        /// The header name as given.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A network in an allow or deny list does not parse.
    #[error(
        "invalid network {input:?}: expected an address (\"192.0.2.7\", \"2001:db8::1\") or a CIDR (\"10.0.0.0/8\", \"fd00::/8\")"
    )]
    Network {
        /// The text as given.
        input: String,
    },
    /// The Redis URL or options are invalid (the server's reachability is not
    /// checked here: an unreachable Redis means local fallback, not an error).
    #[error("redis: {reason}")]
    Redis {
        /// What is wrong.
        reason: String,
    },
    /// A concurrency limit of zero.
    #[error("concurrency limit {name:?}: the limit must be at least 1")]
    Concurrency {
        /// Name of the limit.
        name: String,
    },
}

/// Checks a policy name: 1–64 printable ASCII characters without `"` or `\`, so it
/// can be written into the `RateLimit` structured fields and into logs verbatim.
pub(crate) fn check_name(name: &str) -> Result<(), PolicyError> {
    let err = |reason| PolicyError::Name {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(err("it is empty"));
    }
    if name.len() > 64 {
        return Err(err("it is longer than 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err(err("only printable ASCII without '\"' or '\\' is allowed"));
    }
    Ok(())
}
