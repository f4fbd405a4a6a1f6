//! CORS: named policies answered at the edge.
//!
//! A route with a CORS policy has its preflights (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) answered by [`CorsPolicy::preflight`] without
//! reaching the upstream, and every other response passed through
//! [`CorsPolicy::apply`], which first removes any `Access-Control-*` header the
//! upstream set: on such a route the edge alone decides, so a backend that
//! reflects every origin cannot undo the policy.
//!
//! Rules kept here:
//! * an origin is echoed only when it matches the list; a disallowed origin gets no
//!   CORS headers at all;
//! * `"*"` never goes with credentials (a config error), and with credentials the
//!   allowed origin is echoed, never `*`;
//! * whenever the answer depends on the origin, `Vary: Origin` is added, on
//!   allowed and refused answers alike, so caches keep them apart;
//! * `https://*.example.com` matches exactly one label in place of `*`
//!   (`https://a.example.com`, not `https://example.com`, `https://a.b.example.com`,
//!   `https://evil-example.com` or `https://example.com.evil.org`), like the
//!   wildcards of `[[site]] hosts`; scheme and port must match too.
//! * the origin `null` (sandboxed frames, `file:` pages) cannot be allowed.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, CONTENT_TYPE, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

use crate::PolicyError;

/// Methods allowed when a policy names none: what a JSON API behind a route
/// typically uses. The origin list, not the method list, is the security boundary.
pub const DEFAULT_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// Request headers allowed when a policy names none: the two a browser app almost
/// always sends to an API (`Authorization: Bearer …`, `Content-Type:
/// application/json`), which otherwise fail their preflight.
pub const DEFAULT_ALLOW_HEADERS: &[&str] = &["authorization", "content-type"];

/// `Access-Control-Max-Age` when a policy sets none: ten minutes spares most
/// preflights while a config change still reaches browsers quickly (Chromium caps
/// the value at two hours anyway).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

/// `[cors.NAME]` as the config crate fills it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsOptions {
    /// Allowed origins: `"https://app.example.com"`, `"http://localhost:5173"`,
    /// `"https://*.example.com"`, or `["*"]` for any (not with credentials).
    pub origins: Vec<String>,
    /// Allow cookies and `Authorization` (`Access-Control-Allow-Credentials: true`).
    pub credentials: bool,
    /// Allowed methods ([`DEFAULT_METHODS`]).
    pub methods: Vec<String>,
    /// Allowed request headers ([`DEFAULT_ALLOW_HEADERS`]); `["*"]` allows whatever
    /// a preflight asks for (answered by echoing the list).
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read beyond the safelisted ones (none by
    /// default); `["*"]` only without credentials.
    pub expose_headers: Vec<String>,
    /// How long browsers may cache a preflight ([`DEFAULT_MAX_AGE`]); `None` omits
    /// the header.
    pub max_age: Option<Duration>,
}

impl Default for CorsOptions {
    fn default() -> Self {
        CorsOptions {
            origins: Vec::new(),
            credentials: false,
            methods: DEFAULT_METHODS.iter().map(|m| (*m).to_owned()).collect(),
            allow_headers: DEFAULT_ALLOW_HEADERS.iter().map(|h| (*h).to_owned()).collect(),
            expose_headers: Vec::new(),
            max_age: Some(DEFAULT_MAX_AGE),
        }
    }
}

/// A compiled CORS policy. `Send + Sync`; share it in an `Arc`.
#[derive(Clone)]
pub struct CorsPolicy {
    name: Box<str>,
    any_origin: bool,
    /// Normalised `scheme://host[:port]`, lower case.
    exact: Vec<Box<str>>,
    wildcards: Vec<Wildcard>,
    credentials: bool,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    any_header: bool,
    allow_headers: Vec<HeaderName>,
    allow_headers_value: Option<HeaderValue>,
    expose_value: Option<HeaderValue>,
    max_age_value: Option<HeaderValue>,
}

impl fmt::Debug for CorsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CorsPolicy")
            .field("name", &self.name)
            .field("any_origin", &self.any_origin)
            .field("exact", &self.exact)
            .field("wildcards", &self.wildcards.len())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// `scheme://*.suffix[:port]`
#[derive(Debug, Clone)]
struct Wildcard {
    /// `https://`
    scheme: Box<str>,
    /// `.example.com`
    suffix: Box<str>,
    /// `:8443`, or empty for the scheme's default port.
    port: Box<str>,
}

/// The answer to a preflight.
#[derive(Debug, Clone)]
pub enum Preflight {
    /// Allowed: answer `204` with these headers.
    Allowed(HeaderMap),
    /// Refused: answer `403` with no CORS headers (only `Vary`).
    Rejected(Rejection),
}

/// Why a preflight was refused (for the log; the client sees a short body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The origin is not in the policy.
    Origin,
    /// The requested method is not allowed.
    Method(String),
    /// A requested header is not allowed.
    Header(String),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Origin => f.write_str("origin not allowed"),
            Rejection::Method(m) => write!(f, "method {m:?} not allowed"),
            Rejection::Header(h) => write!(f, "request header {h:?} not allowed"),
        }
    }
}

impl Preflight {
    /// The response the edge sends: `204 No Content` with the CORS headers, or
    /// `403 Forbidden` with `Vary` and a one-line body.
    pub fn into_response(self) -> Response<Bytes> {
        match self {
            Preflight::Allowed(headers) => {
                let mut resp = Response::new(Bytes::new());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                *resp.headers_mut() = headers;
                resp
            }
            Preflight::Rejected(why) => {
                let mut resp = Response::new(Bytes::from(format!("403 Forbidden: CORS preflight rejected ({why})\n")));
                *resp.status_mut() = StatusCode::FORBIDDEN;
                let h = resp.headers_mut();
                h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                h.insert(VARY, preflight_vary());
                resp
            }
        }
    }
}

fn preflight_vary() -> HeaderValue {
    HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
}

impl CorsPolicy {
    /// Compiles `[cors.NAME]`; every inconsistency is an error naming the policy.
    pub fn new(name: &str, options: &CorsOptions) -> Result<CorsPolicy, PolicyError> {
        let err = |reason: String| PolicyError::Cors {
            policy: name.to_owned(),
            reason,
        };
        crate::check_name(name)?;
        if options.origins.is_empty() {
            return Err(err("list at least one origin in `origins` (or \"*\" for any)".into()));
        }
        let mut any_origin = false;
        let mut exact = Vec::new();
        let mut wildcards = Vec::new();
        for origin in &options.origins {
            let o = origin.trim();
            if o == "*" {
                any_origin = true;
            } else if o.eq_ignore_ascii_case("null") {
                return Err(err(
                    "the origin \"null\" is shared by every sandboxed frame and local file and cannot be allowed"
                        .into(),
                ));
            } else if o.contains('*') {
                wildcards.push(parse_wildcard(o).map_err(|why| err(format!("origin {o:?}: {why}")))?);
            } else {
                exact.push(
                    normalise_origin(o)
                        .map_err(|why| err(format!("origin {o:?}: {why}")))?
                        .into_boxed_str(),
                );
            }
        }
        if any_origin && options.origins.len() > 1 {
            return Err(err("\"*\" allows every origin; list it alone".into()));
        }
        if any_origin && options.credentials {
            return Err(err(
                "origins = [\"*\"] cannot be combined with credentials = true: browsers refuse it, and echoing any origin instead would let every site act as the user; list the origins"
                    .into(),
            ));
        }
        exact.sort();
        exact.dedup();

        let mut methods = Vec::new();
        for m in &options.methods {
            let upper = m.trim().to_ascii_uppercase();
            let method =
                Method::from_bytes(upper.as_bytes()).map_err(|_| err(format!("{m:?} is not a valid method")))?;
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        if methods.is_empty() {
            return Err(err("`methods` is empty; leave it out for the default list".into()));
        }
        let methods_value = join_value(methods.iter().map(Method::as_str)).map_err(err)?;

        let any_header = options.allow_headers.iter().any(|h| h.trim() == "*");
        if any_header && options.allow_headers.len() > 1 {
            return Err(err("\"*\" in `allow_headers` allows every header; list it alone".into()));
        }
        let mut allow_headers = Vec::new();
        if !any_header {
            for h in &options.allow_headers {
                let name = HeaderName::from_bytes(h.trim().as_bytes())
                    .map_err(|_| err(format!("{h:?} is not a valid header name")))?;
                if !allow_headers.contains(&name) {
                    allow_headers.push(name);
                }
            }
        }
        let allow_headers_value = if allow_headers.is_empty() {
            None
        } else {
            Some(join_value(allow_headers.iter().map(HeaderName::as_str)).map_err(err)?)
        };

        let expose_any = options.expose_headers.iter().any(|h| h.trim() == "*");
        if expose_any && options.credentials {
            return Err(err(
                "expose_headers = [\"*\"] means the literal header \"*\" when credentials are allowed; list the headers".into(),
            ));
        }
        let mut expose = Vec::new();
        for h in &options.expose_headers {
            let h = h.trim();
            if h != "*" {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| err(format!("{h:?} is not a valid header name")))?;
            }
            expose.push(h.to_ascii_lowercase());
        }
        let expose_value = if expose.is_empty() {
            None
        } else {
            Some(join_value(expose.iter().map(String::as_str)).map_err(err)?)
        };
        let max_age_value = options.max_age.map(|d| HeaderValue::from(d.as_secs()));

        Ok(CorsPolicy {
            name: name.into(),
            any_origin,
            exact,
            wildcards,
            credentials: options.credentials,
            methods,
            methods_value,
            any_header,
            allow_headers,
            allow_headers_value,
            expose_value,
            max_age_value,
        })
    }

    /// The policy name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `origin` (the request's `Origin` value) is allowed.
    pub fn allows_origin(&self, origin: &[u8]) -> bool {
        self.any_origin
            || self.exact.iter().any(|e| e.as_bytes().eq_ignore_ascii_case(origin))
            || self.wildcards.iter().any(|w| w.matches(origin))
    }

    /// Whether the answer depends on the request's origin (then `Vary: Origin`).
    fn varies(&self) -> bool {
        !self.any_origin || self.credentials
    }

    /// Answers a CORS preflight, or returns `None` when the request is not one
    /// (not `OPTIONS`, or no `Origin` or no `Access-Control-Request-Method`): such
    /// a request goes on as usual.
    pub fn preflight(&self, method: &Method, req_headers: &HeaderMap) -> Option<Preflight> {
        if method != Method::OPTIONS {
            return None;
        }
        let origin = req_headers.get(ORIGIN)?;
        let requested = req_headers.get(ACCESS_CONTROL_REQUEST_METHOD)?;
        if !self.allows_origin(origin.as_bytes()) {
            return Some(Preflight::Rejected(Rejection::Origin));
        }
        let requested_method = Method::from_bytes(requested.as_bytes()).ok();
        match requested_method {
            Some(m) if self.methods.contains(&m) => {}
            _ => {
                let shown = String::from_utf8_lossy(requested.as_bytes()).into_owned();
                return Some(Preflight::Rejected(Rejection::Method(shown)));
            }
        }
        let mut echo_headers = None;
        if let Some(list) = req_headers.get(ACCESS_CONTROL_REQUEST_HEADERS) {
            let Ok(text) = list.to_str() else {
                return Some(Preflight::Rejected(Rejection::Header(
                    String::from_utf8_lossy(list.as_bytes()).into(),
                )));
            };
            for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let ok = match HeaderName::from_bytes(item.as_bytes()) {
                    Ok(name) => self.any_header || self.allow_headers.contains(&name),
                    Err(_) => false,
                };
                if !ok {
                    return Some(Preflight::Rejected(Rejection::Header(item.to_owned())));
                }
            }
            if self.any_header {
                // Echo rather than `*`: `*` never covers `Authorization`, and is
                // literal with credentials.
                echo_headers = Some(list.clone());
            }
        }

        let mut h = HeaderMap::with_capacity(7);
        self.write_origin(origin, &mut h);
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone());
        if let Some(v) = echo_headers.or_else(|| self.allow_headers_value.clone()) {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(v) = &self.max_age_value {
            h.insert(ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        h.insert(VARY, preflight_vary());
        Some(Preflight::Allowed(h))
    }

    /// Adds the CORS headers of an actual (non-preflight) response: removes the
    /// upstream's `Access-Control-*` headers, adds `Vary: Origin` when the answer
    /// depends on the origin, and, if `origin` is allowed, the
    /// `Access-Control-Allow-Origin` (and credentials and expose) headers.
    pub fn apply(&self, origin: Option<&HeaderValue>, resp_headers: &mut HeaderMap) {
        // One pass over the (few) names instead of six lookups: most backends on a
        // CORS route send none of these.
        if resp_headers.keys().any(|k| k.as_str().starts_with("access-control-")) {
            for name in [
                ACCESS_CONTROL_ALLOW_ORIGIN,
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                ACCESS_CONTROL_EXPOSE_HEADERS,
                ACCESS_CONTROL_ALLOW_METHODS,
                ACCESS_CONTROL_ALLOW_HEADERS,
                ACCESS_CONTROL_MAX_AGE,
            ] {
                resp_headers.remove(name);
            }
        }
        if self.varies() {
            add_vary_origin(resp_headers);
        }
        let Some(origin) = origin else { return };
        if !self.allows_origin(origin.as_bytes()) {
            return;
        }
        self.write_origin(origin, resp_headers);
        if let Some(v) = &self.expose_value {
            resp_headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }

    fn write_origin(&self, origin: &HeaderValue, h: &mut HeaderMap) {
        if self.any_origin && !self.credentials {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        } else {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        if self.credentials {
            h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

/// Appends `Vary: Origin` unless `Vary` already lists it or `*`.
fn add_vary_origin(h: &mut HeaderMap) {
    let present = h.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.eq_ignore_ascii_case("origin"))
        })
    });
    if !present {
        h.append(VARY, HeaderValue::from_static("Origin"));
    }
}

fn join_value<'a>(items: impl Iterator<Item = &'a str>) -> Result<HeaderValue, String> {
    let joined = items.collect::<Vec<_>>().join(", ");
    HeaderValue::try_from(joined.as_str()).map_err(|_| format!("{joined:?} is not a valid header value"))
}

/// Splits `scheme://rest` and checks the scheme.
fn split_scheme(o: &str) -> Result<(String, &str), &'static str> {
    let Some((scheme, rest)) = o.split_once("://") else {
        return Err("an origin is scheme://host[:port], e.g. \"https://app.example.com\"");
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return Err("invalid scheme");
    }
    // A trailing slash is a common slip; browsers never send one.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err("an origin has no path, query or user info: only scheme://host[:port]");
    }
    Ok((scheme, rest))
}

/// Splits `host[:port]` and drops the scheme's default port.
fn split_port<'a>(scheme: &str, rest: &'a str) -> Result<(&'a str, &'a str), &'static str> {
    let (host, port) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => (&rest[..i], &rest[i + 1..]),
        _ => (rest, ""),
    };
    if !port.is_empty() {
        let n: u16 = port.parse().map_err(|_| "invalid port")?;
        if n == 0 {
            return Err("invalid port");
        }
        if (scheme == "https" && n == 443) || (scheme == "http" && n == 80) {
            return Ok((host, ""));
        }
    }
    Ok((host, port))
}

fn valid_label(l: &str) -> bool {
    !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn normalise_origin(o: &str) -> Result<String, &'static str> {
    let (scheme, rest) = split_scheme(o)?;
    let (host, port) = split_port(&scheme, rest)?;
    let host = host.to_ascii_lowercase();
    let ok_host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty() && host.split('.').all(valid_label)
    };
    if !ok_host {
        return Err("invalid host");
    }
    Ok(if port.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    })
}

fn parse_wildcard(o: &str) -> Result<Wildcard, &'static str> {
    let (scheme, rest) = split_scheme(o)?;
    let (host, port) = split_port(&scheme, rest)?;
    let Some(suffix) = host.strip_prefix("*.") else {
        return Err("a wildcard origin is scheme://*.domain, e.g. \"https://*.example.com\"");
    };
    let suffix = suffix.to_ascii_lowercase();
    if suffix.contains('*') || !suffix.split('.').all(valid_label) {
        return Err("only the first label may be \"*\"");
    }
    if suffix.split('.').count() < 2 {
        return Err("the part after \"*.\" needs at least two labels (\"*.com\" would allow every .com site)");
    }
    Ok(Wildcard {
        scheme: format!("{scheme}://").into(),
        suffix: format!(".{suffix}").into(),
        port: if port.is_empty() {
            "".into()
        } else {
            format!(":{port}").into()
        },
    })
}

impl Wildcard {
    fn matches(&self, origin: &[u8]) -> bool {
        let Some(rest) = strip_prefix_ci(origin, self.scheme.as_bytes()) else {
            return false;
        };
        let host = if self.port.is_empty() {
            if rest.contains(&b':') {
                return false;
            }
            rest
        } else {
            match rest.strip_suffix(self.port.as_bytes()) {
                Some(h) => h,
                None => return false,
            }
        };
        let Some(label) = strip_suffix_ci(host, self.suffix.as_bytes()) else {
            return false;
        };
        // Exactly one non-empty DNS label stands in for `*`.
        !label.is_empty() && label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    }
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &s[prefix.len()..])
}

fn strip_suffix_ci<'a>(s: &'a [u8], suffix: &[u8]) -> Option<&'a [u8]> {
    let cut = s.len().checked_sub(suffix.len())?;
    s[cut..].eq_ignore_ascii_case(suffix).then(|| &s[..cut])
}

#[cfg(test)]
mod tests;
