//! Second layer for the edge-policy keys: `[redis]`, `[rate_limit.NAME]`,
//! `[cors.NAME]`, `[limits]`, and the policy keys of sites, routes and
//! upstreams. The policy crate's constructors do the checking; this module adds
//! the file position and key path to their messages.

use std::collections::HashMap;
use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_policy::{
    CorsOptions, CorsPolicy, Direction, FrameOptions, HeaderRules, IpRules, KeyKind, RateSpec, SecurityHeaders,
    SecurityHeadersOptions,
};
use ipnet::IpNet;

use crate::error::RawError;
use crate::file::{self, Spanned};
use crate::model::{Limits, RateLimit, Redis, RoutePolicy, Secret, SitePolicy};
use crate::units;

/// Defaults of the policy keys, each with its reason.
mod defaults {
    use std::time::Duration;

    /// A Redis round trip on the same network takes well under a millisecond;
    /// 50 ms bounds what a sick Redis adds to a request.
    pub(super) const REDIS_TIMEOUT: Duration = Duration::from_millis(50);
    pub(super) const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub(super) const REDIS_RECONNECT_MAX: Duration = Duration::from_secs(5);
    pub(super) const REDIS_KEY_PREFIX: &str = "gatehouse:rl:";
    /// About 4 MiB of state per limit at most.
    pub(super) const RATE_LIMIT_MAX_KEYS: usize = 100_000;
    /// Large cookies and tokens fit (browsers cap one cookie at 4 KiB); nginx
    /// allows 4 × 8 KiB, so 64 KiB refuses nothing a browser sends.
    pub(super) const MAX_HEADER_SIZE: u64 = 64 * 1024;
    /// hyper's default and far more than any browser sends.
    pub(super) const MAX_HEADERS: usize = 100;
    /// Long enough for a phone on a bad network to send a request head.
    pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
    /// nginx's `client_body_timeout`.
    pub(super) const BODY_TIMEOUT: Duration = Duration::from_secs(60);
    /// 1 KiB/s: slower than any real upload, fast enough to stop a slow POST
    /// from holding a connection for hours.
    pub(super) const BODY_MIN_RATE: u64 = 1024;
    /// nginx's `keepalive_requests`: connections are recycled now and then, so
    /// memory a long-lived connection accumulated is freed.
    pub(super) const KEEPALIVE_REQUESTS: u32 = 1000;
}

/// hyper's smallest read buffer: a head limit below it cannot be enforced.
const MIN_HEADER_SIZE: u64 = 8192;

/// A config error at `span` (shared by the policy and TLS keys).
pub(crate) fn invalid(
    span: Option<std::ops::Range<usize>>,
    key: impl Into<String>,
    msg: impl Into<String>,
) -> RawError {
    RawError::invalid(span.map(|s| s.start), key, msg)
}

/// An optional duration greater than zero, or `default`.
pub(crate) fn duration(v: Option<&Spanned<String>>, key: &str, default: Duration) -> Result<Duration, RawError> {
    match v {
        None => Ok(default),
        Some(s) => {
            let d = units::duration(s.get_ref()).map_err(|m| invalid(Some(s.span()), key, m))?;
            if d.is_zero() {
                return Err(invalid(Some(s.span()), key, "must be greater than zero"));
            }
            Ok(d)
        }
    }
}

fn size(v: &Spanned<String>, key: &str) -> Result<u64, RawError> {
    units::size(v.get_ref()).map_err(|m| invalid(Some(v.span()), key, m))
}

fn int_in(v: &Spanned<i64>, key: &str, min: i64, max: i64) -> Result<i64, RawError> {
    let n = *v.get_ref();
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(invalid(Some(v.span()), key, format!("expected {min} to {max}")))
    }
}

pub(crate) fn convert_redis(r: Option<Spanned<file::RedisFile>>) -> Result<Option<Redis>, RawError> {
    let Some(r) = r else { return Ok(None) };
    let r = r.into_inner();
    let url = r.url.get_ref().expose();
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(invalid(
            Some(r.url.span()),
            "redis.url",
            "expected redis://[:PASSWORD@]HOST:PORT[/DB]",
        ));
    }
    let key_prefix = match &r.key_prefix {
        None => defaults::REDIS_KEY_PREFIX.to_owned(),
        Some(p) if !p.get_ref().is_empty() && p.get_ref().len() <= 64 => p.get_ref().clone(),
        Some(p) => {
            return Err(invalid(
                Some(p.span()),
                "redis.key_prefix",
                "expected 1 to 64 characters",
            ));
        }
    };
    Ok(Some(Redis {
        url: Secret::new(url),
        timeout: duration(r.timeout.as_ref(), "redis.timeout", defaults::REDIS_TIMEOUT)?,
        connect_timeout: duration(
            r.connect_timeout.as_ref(),
            "redis.connect_timeout",
            defaults::REDIS_CONNECT_TIMEOUT,
        )?,
        reconnect_max: duration(
            r.reconnect_max.as_ref(),
            "redis.reconnect_max",
            defaults::REDIS_RECONNECT_MAX,
        )?,
        key_prefix,
    }))
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_key_kind(s: &str) -> Result<KeyKind, String> {
    // Reuse the rate grammar's `per KEY` so both spellings agree.
    let spec: RateSpec = format!("1/s per {s}")
        .parse()
        .map_err(|_| format!("invalid key {s:?}; expected \"ip\", \"user\", \"route\" or \"header NAME\""))?;
    Ok(spec.key)
}

/// `[rate_limit.NAME]` tables, in name order; returns them and their indices.
pub(crate) fn convert_rate_limits(
    tables: std::collections::BTreeMap<String, Spanned<file::RateLimitFile>>,
    redis: bool,
) -> Result<(Vec<RateLimit>, HashMap<String, usize>), RawError> {
    let mut out = Vec::with_capacity(tables.len());
    let mut index = HashMap::new();
    for (name, t) in tables {
        let key = format!("rate_limit.{name}");
        if !valid_name(&name) {
            return Err(invalid(
                Some(t.span()),
                key,
                "a rate limit name is 1–64 letters, digits, `_` or `-`",
            ));
        }
        let t = t.into_inner();
        let rate_text = t.rate.get_ref();
        let mut spec: RateSpec = rate_text.parse().map_err(|e: gatehouse_policy::PolicyError| {
            invalid(Some(t.rate.span()), format!("{key}.rate"), e.to_string())
        })?;
        if let Some(k) = &t.key {
            if rate_text.to_ascii_lowercase().contains(" per ") {
                return Err(invalid(
                    Some(k.span()),
                    format!("{key}.key"),
                    "the rate already says `per …`; set the key in one place",
                ));
            }
            spec.key = parse_key_kind(k.get_ref()).map_err(|m| invalid(Some(k.span()), format!("{key}.key"), m))?;
        }
        let shared = match &t.shared {
            None => redis,
            Some(s) if *s.get_ref() && !redis => {
                return Err(invalid(
                    Some(s.span()),
                    format!("{key}.shared"),
                    "a shared limit needs a [redis] table with its url",
                ));
            }
            Some(s) => *s.get_ref(),
        };
        let max_keys = match &t.max_keys {
            None => NonZeroUsize::new(defaults::RATE_LIMIT_MAX_KEYS).unwrap_or(NonZeroUsize::MIN),
            Some(m) => NonZeroUsize::new(int_in(m, &format!("{key}.max_keys"), 1, 100_000_000)? as usize)
                .unwrap_or(NonZeroUsize::MIN),
        };
        index.insert(name.clone(), out.len());
        out.push(RateLimit {
            name,
            spec,
            shared,
            max_keys,
        });
    }
    Ok((out, index))
}

pub(crate) fn convert_cors(
    tables: std::collections::BTreeMap<String, Spanned<file::CorsFile>>,
) -> Result<HashMap<String, Arc<CorsPolicy>>, RawError> {
    let mut out = HashMap::new();
    for (name, t) in tables {
        let key = format!("cors.{name}");
        let span = t.span();
        if !valid_name(&name) {
            return Err(invalid(
                Some(span),
                key,
                "a CORS policy name is 1–64 letters, digits, `_` or `-`",
            ));
        }
        let t = t.into_inner();
        let defaults = CorsOptions::default();
        let max_age = match &t.max_age {
            None => defaults.max_age,
            Some(m) => {
                Some(units::duration(m.get_ref()).map_err(|e| invalid(Some(m.span()), format!("{key}.max_age"), e))?)
            }
        };
        let options = CorsOptions {
            origins: t.origins,
            credentials: t.credentials,
            methods: t.methods.unwrap_or(defaults.methods),
            allow_headers: t.allow_headers.unwrap_or(defaults.allow_headers),
            expose_headers: t.expose_headers,
            max_age,
        };
        let policy = CorsPolicy::new(&name, &options).map_err(|e| invalid(Some(span), key, e.to_string()))?;
        out.insert(name, Arc::new(policy));
    }
    Ok(out)
}

pub(crate) fn convert_limits(l: &file::LimitsFile) -> Result<Limits, RawError> {
    let max_header_size = match &l.max_header_size {
        None => defaults::MAX_HEADER_SIZE,
        Some(s) => {
            let n = size(s, "limits.max_header_size")?;
            if !(MIN_HEADER_SIZE..=16 * 1024 * 1024).contains(&n) {
                return Err(invalid(
                    Some(s.span()),
                    "limits.max_header_size",
                    "expected 8KiB to 16MiB",
                ));
            }
            n
        }
    };
    let body_min_rate = match &l.body_min_rate {
        None => NonZeroU64::new(defaults::BODY_MIN_RATE),
        Some(s) if s.get_ref().trim().eq_ignore_ascii_case("off") => None,
        Some(s) => Some(NonZeroU64::new(size(s, "limits.body_min_rate")?).ok_or_else(|| {
            invalid(
                Some(s.span()),
                "limits.body_min_rate",
                "expected bytes per second such as \"1KiB\", or \"off\"",
            )
        })?),
    };
    Ok(Limits {
        max_header_size: usize::try_from(max_header_size).unwrap_or(usize::MAX),
        max_headers: match &l.max_headers {
            None => defaults::MAX_HEADERS,
            Some(n) => int_in(n, "limits.max_headers", 1, 10_000)? as usize,
        },
        max_body_size: l
            .max_body_size
            .as_ref()
            .map(|s| size(s, "limits.max_body_size"))
            .transpose()?,
        header_timeout: duration(
            l.header_timeout.as_ref(),
            "limits.header_timeout",
            defaults::HEADER_TIMEOUT,
        )?,
        body_timeout: duration(l.body_timeout.as_ref(), "limits.body_timeout", defaults::BODY_TIMEOUT)?,
        body_min_rate,
        max_connections_per_ip: l
            .max_connections_per_ip
            .as_ref()
            .map(|n| int_in(n, "limits.max_connections_per_ip", 1, 1_000_000).map(|n| n as u32))
            .transpose()?,
        keepalive_requests: match &l.keepalive_requests {
            None => defaults::KEEPALIVE_REQUESTS,
            Some(n) => int_in(n, "limits.keepalive_requests", 1, 1_000_000_000)? as u32,
        },
    })
}

pub(crate) fn security_headers(
    v: Option<&Spanned<file::SecurityHeadersFile>>,
    key: &str,
    inherited: &SecurityHeaders,
) -> Result<SecurityHeaders, RawError> {
    let Some(v) = v else { return Ok(inherited.clone()) };
    let table = match v.get_ref() {
        file::SecurityHeadersFile::Enabled(true) => return Ok(SecurityHeaders::default()),
        file::SecurityHeadersFile::Enabled(false) => return Ok(SecurityHeaders::off()),
        file::SecurityHeadersFile::Custom(t) => t,
    };
    let defaults = SecurityHeadersOptions::default();
    let referrer_policy = match &table.referrer_policy {
        None => defaults.referrer_policy,
        Some(toml::Value::Boolean(false)) => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(invalid(
                Some(v.span()),
                format!("{key}.referrer_policy"),
                "expected a Referrer-Policy value such as \"no-referrer\", or false",
            ));
        }
    };
    let frame = match table.frame.as_deref() {
        None => defaults.frame,
        Some("deny") => FrameOptions::Deny,
        Some("sameorigin") => FrameOptions::SameOrigin,
        Some("off") => FrameOptions::Off,
        Some(other) => {
            return Err(invalid(
                Some(v.span()),
                format!("{key}.frame"),
                format!("unknown value {other:?}; expected \"deny\", \"sameorigin\" or \"off\""),
            ));
        }
    };
    let options = SecurityHeadersOptions {
        nosniff: table.nosniff.unwrap_or(defaults.nosniff),
        referrer_policy,
        frame,
        content_security_policy: table.csp.clone(),
    };
    SecurityHeaders::new(&options).map_err(|e| invalid(Some(v.span()), key, e.to_string()))
}

fn header_rules(v: Option<&Spanned<file::HeadersFile>>, key: &str) -> Result<(HeaderRules, HeaderRules), RawError> {
    let Some(v) = v else {
        return Ok((HeaderRules::default(), HeaderRules::default()));
    };
    let build = |dir: Direction, r: &file::HeaderRulesFile, which: &str| {
        let set: Vec<(&str, &str)> = r.set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let add: Vec<(&str, &str)> = r.add.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let remove: Vec<&str> = r.remove.iter().map(String::as_str).collect();
        HeaderRules::new(dir, &set, &add, &remove)
            .map_err(|e| invalid(Some(v.span()), format!("{key}.headers.{which}"), e.to_string()))
    };
    let h = v.get_ref();
    Ok((
        build(Direction::Request, &h.request, "request")?,
        build(Direction::Response, &h.response, "response")?,
    ))
}

fn networks(list: &[Spanned<String>], key: &str) -> Result<Vec<IpNet>, RawError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            crate::convert::parse_cidr(s.get_ref()).map_err(|m| invalid(Some(s.span()), format!("{key}[{i}]"), m))
        })
        .collect()
}

/// The policy keys of a `[[site]]`, taken out before its routes are converted.
pub(crate) struct SiteKeys {
    pub(crate) allow: Vec<Spanned<String>>,
    pub(crate) deny: Vec<Spanned<String>>,
    pub(crate) headers: Option<Spanned<file::HeadersFile>>,
    pub(crate) security_headers: Option<Spanned<file::SecurityHeadersFile>>,
    pub(crate) max_body_size: Option<Spanned<String>>,
}

/// What a site's routes inherit.
pub(crate) struct SiteDefaults {
    pub(crate) security_headers: SecurityHeaders,
    pub(crate) max_body_size: Option<u64>,
}

pub(crate) fn convert_site(
    keys: &SiteKeys,
    key: &str,
    server_security: &SecurityHeaders,
    limits: &Limits,
) -> Result<(SitePolicy, SiteDefaults), RawError> {
    let (request_headers, response_headers) = header_rules(keys.headers.as_ref(), key)?;
    let policy = SitePolicy {
        ip_rules: IpRules::new(
            &networks(&keys.allow, &format!("{key}.allow"))?,
            &networks(&keys.deny, &format!("{key}.deny"))?,
        ),
        request_headers,
        response_headers,
    };
    let defaults = SiteDefaults {
        security_headers: security_headers(
            keys.security_headers.as_ref(),
            &format!("{key}.security_headers"),
            server_security,
        )?,
        max_body_size: match &keys.max_body_size {
            None => limits.max_body_size,
            Some(s) => Some(size(s, &format!("{key}.max_body_size"))?),
        },
    };
    Ok((policy, defaults))
}

/// Named limits and policies routes may refer to; inline limits are appended.
pub(crate) struct Named {
    pub(crate) rate_limits: Vec<RateLimit>,
    pub(crate) rate_limit_index: HashMap<String, usize>,
    pub(crate) cors: HashMap<String, Arc<CorsPolicy>>,
    pub(crate) redis: bool,
}

/// The policy keys of a `[[site.route]]`.
pub(crate) struct RouteKeys {
    pub(crate) rate_limit: Option<Spanned<String>>,
    pub(crate) cors: Option<Spanned<String>>,
    pub(crate) max_in_flight: Option<Spanned<i64>>,
    pub(crate) allow: Vec<Spanned<String>>,
    pub(crate) deny: Vec<Spanned<String>>,
    pub(crate) headers: Option<Spanned<file::HeadersFile>>,
    pub(crate) security_headers: Option<Spanned<file::SecurityHeadersFile>>,
    pub(crate) max_body_size: Option<Spanned<String>>,
}

impl RouteKeys {
    pub(crate) fn take(r: &mut file::RouteFile) -> Self {
        RouteKeys {
            rate_limit: r.rate_limit.take(),
            cors: r.cors.take(),
            max_in_flight: r.max_in_flight.take(),
            allow: std::mem::take(&mut r.allow),
            deny: std::mem::take(&mut r.deny),
            headers: r.headers.take(),
            security_headers: r.security_headers.take(),
            max_body_size: r.max_body_size.take(),
        }
    }
}

pub(crate) fn convert_route(
    keys: RouteKeys,
    key: &str,
    route_name: &str,
    site: &SiteDefaults,
    named: &mut Named,
) -> Result<RoutePolicy, RawError> {
    let rate_limit = match &keys.rate_limit {
        None => None,
        Some(r) => {
            let text = r.get_ref();
            if text.contains('/') {
                let spec: RateSpec = text.parse().map_err(|e: gatehouse_policy::PolicyError| {
                    invalid(Some(r.span()), format!("{key}.rate_limit"), e.to_string())
                })?;
                named.rate_limits.push(RateLimit {
                    name: route_name.to_owned(),
                    spec,
                    shared: named.redis,
                    max_keys: NonZeroUsize::new(defaults::RATE_LIMIT_MAX_KEYS).unwrap_or(NonZeroUsize::MIN),
                });
                Some(named.rate_limits.len() - 1)
            } else {
                match named.rate_limit_index.get(text) {
                    Some(&i) => Some(i),
                    None => {
                        let mut known: Vec<&str> = named.rate_limit_index.keys().map(String::as_str).collect();
                        known.sort_unstable();
                        return Err(invalid(
                            Some(r.span()),
                            format!("{key}.rate_limit"),
                            format!(
                                "rate limit {text:?} is not defined; defined: {known:?} (an inline rate contains a `/`, like \"20/s\")"
                            ),
                        ));
                    }
                }
            }
        }
    };
    let cors = match &keys.cors {
        None => None,
        Some(c) => match named.cors.get(c.get_ref()) {
            Some(p) => Some(p.clone()),
            None => {
                let mut known: Vec<&str> = named.cors.keys().map(String::as_str).collect();
                known.sort_unstable();
                return Err(invalid(
                    Some(c.span()),
                    format!("{key}.cors"),
                    format!("CORS policy {:?} is not defined; defined: {known:?}", c.get_ref()),
                ));
            }
        },
    };
    let (request_headers, response_headers) = header_rules(keys.headers.as_ref(), key)?;
    Ok(RoutePolicy {
        rate_limit,
        cors,
        max_in_flight: keys
            .max_in_flight
            .as_ref()
            .map(|n| int_in(n, &format!("{key}.max_in_flight"), 1, 10_000_000).map(|n| n as usize))
            .transpose()?,
        ip_rules: IpRules::new(
            &networks(&keys.allow, &format!("{key}.allow"))?,
            &networks(&keys.deny, &format!("{key}.deny"))?,
        ),
        security_headers: security_headers(
            keys.security_headers.as_ref(),
            &format!("{key}.security_headers"),
            &site.security_headers,
        )?,
        request_headers,
        response_headers,
        max_body_size: match &keys.max_body_size {
            None => site.max_body_size,
            Some(s) => Some(size(s, &format!("{key}.max_body_size"))?),
        },
    })
}

pub(crate) fn upstream_max_in_flight(v: Option<&Spanned<i64>>, key: &str) -> Result<Option<usize>, RawError> {
    v.map(|n| int_in(n, &format!("{key}.max_in_flight"), 1, 10_000_000).map(|n| n as usize))
        .transpose()
}
