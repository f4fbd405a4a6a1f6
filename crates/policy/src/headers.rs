//! Security headers and header add/set/remove rules.
//!
//! [`SecurityHeaders`] fills in defaults on responses: `X-Content-Type-Options`
//! and `Referrer-Policy` on every response, `X-Frame-Options` and the optional
//! `Content-Security-Policy` on HTML responses (the only ones a browser frames or
//! runs scripts in). A header the response already has is left alone, so a backend
//! that knows better (an embeddable widget, its own CSP) wins; to force a value,
//! use a `set` rule.
//!
//! [`HeaderRules`] are `remove`, then `set` (replace), then `add` (append), with
//! names and values checked when the rules are built. Rules never touch framing
//! headers (`Content-Length`, `Transfer-Encoding`, `Connection`, …) or `Host`, and
//! request rules never touch the headers gatehouse itself vouches for
//! (`X-Forwarded-*`, `Forwarded`, `X-Request-Id`, `X-Gatehouse-*`): backends trust
//! those, so a rule must not be able to forge them.

use http::header::{CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::PolicyError;

/// `Referrer-Policy` by default: browsers' own default since 2021, stated
/// explicitly so older browsers and embedded web views do not leak full URLs
/// (with their tokens and ids) to other sites.
pub const DEFAULT_REFERRER_POLICY: &str = "strict-origin-when-cross-origin";

/// `Content-Security-Policy` header name.
const CSP: HeaderName = http::header::CONTENT_SECURITY_POLICY;

/// Whether and how pages may be framed by other pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameOptions {
    /// `X-Frame-Options: DENY` (default): clickjacking needs framing, and an app's
    /// own pages rarely frame themselves.
    #[default]
    Deny,
    /// `X-Frame-Options: SAMEORIGIN`.
    SameOrigin,
    /// No header (for pages meant to be embedded; prefer CSP `frame-ancestors`).
    Off,
}

/// `security_headers` as the config crate fills it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityHeadersOptions {
    /// `X-Content-Type-Options: nosniff` (default on): stops browsers from running
    /// an upload or a mislabelled file as script or HTML.
    pub nosniff: bool,
    /// `Referrer-Policy` ([`DEFAULT_REFERRER_POLICY`]); `None` omits it.
    pub referrer_policy: Option<String>,
    /// `X-Frame-Options` on HTML ([`FrameOptions::Deny`]).
    pub frame: FrameOptions,
    /// `Content-Security-Policy` on HTML (none by default: a wrong CSP breaks an
    /// app, so it is opt-in).
    pub content_security_policy: Option<String>,
}

impl Default for SecurityHeadersOptions {
    fn default() -> Self {
        SecurityHeadersOptions {
            nosniff: true,
            referrer_policy: Some(DEFAULT_REFERRER_POLICY.to_owned()),
            frame: FrameOptions::Deny,
            content_security_policy: None,
        }
    }
}

/// Compiled security headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityHeaders {
    nosniff: bool,
    referrer: Option<HeaderValue>,
    frame: Option<HeaderValue>,
    csp: Option<HeaderValue>,
}

const REFERRER_TOKENS: &[&str] = &[
    "no-referrer",
    "no-referrer-when-downgrade",
    "origin",
    "origin-when-cross-origin",
    "same-origin",
    "strict-origin",
    "strict-origin-when-cross-origin",
    "unsafe-url",
];

impl Default for SecurityHeaders {
    fn default() -> Self {
        SecurityHeaders {
            nosniff: true,
            referrer: Some(HeaderValue::from_static(DEFAULT_REFERRER_POLICY)),
            frame: Some(HeaderValue::from_static("DENY")),
            csp: None,
        }
    }
}

impl SecurityHeaders {
    /// Compiles the options, checking the referrer policy tokens and the CSP value.
    pub fn new(options: &SecurityHeadersOptions) -> Result<SecurityHeaders, PolicyError> {
        let referrer = match &options.referrer_policy {
            None => None,
            Some(p) => {
                let bad = p
                    .split(',')
                    .map(str::trim)
                    .find(|t| !REFERRER_TOKENS.contains(&t.to_ascii_lowercase().as_str()));
                if let Some(t) = bad {
                    return Err(PolicyError::Header {
                        name: "referrer-policy".into(),
                        reason: format!("unknown policy {t:?} (one of {})", REFERRER_TOKENS.join(", ")),
                    });
                }
                Some(value("referrer-policy", p)?)
            }
        };
        let frame = match options.frame {
            FrameOptions::Deny => Some(HeaderValue::from_static("DENY")),
            FrameOptions::SameOrigin => Some(HeaderValue::from_static("SAMEORIGIN")),
            FrameOptions::Off => None,
        };
        let csp = match &options.content_security_policy {
            Some(p) if p.trim().is_empty() => {
                return Err(PolicyError::Header {
                    name: "content-security-policy".into(),
                    reason: "empty; leave it out instead".into(),
                });
            }
            Some(p) => Some(value("content-security-policy", p)?),
            None => None,
        };
        Ok(SecurityHeaders {
            nosniff: options.nosniff,
            referrer,
            frame,
            csp,
        })
    }

    /// No security headers (`security_headers = false`).
    pub fn off() -> SecurityHeaders {
        SecurityHeaders {
            nosniff: false,
            referrer: None,
            frame: None,
            csp: None,
        }
    }

    /// Adds the headers the response lacks (see the module docs for which go on
    /// which responses).
    pub fn apply(&self, resp: &mut HeaderMap) {
        // One hash lookup per header: insert only where the response has none.
        if self.nosniff {
            resp.entry(X_CONTENT_TYPE_OPTIONS)
                .or_insert_with(|| HeaderValue::from_static("nosniff"));
        }
        if let Some(v) = &self.referrer {
            resp.entry(REFERRER_POLICY).or_insert_with(|| v.clone());
        }
        if (self.frame.is_some() || self.csp.is_some()) && is_html(resp) {
            if let Some(v) = &self.frame {
                resp.entry(X_FRAME_OPTIONS).or_insert_with(|| v.clone());
            }
            if let Some(v) = &self.csp {
                resp.entry(CSP).or_insert_with(|| v.clone());
            }
        }
    }
}

fn is_html(h: &HeaderMap) -> bool {
    h.get(CONTENT_TYPE).is_some_and(|v| is_html_type(v.as_bytes()))
}

/// Whether a `Content-Type` value names an HTML or XHTML page: the answers
/// that get `X-Frame-Options` and a CSP.
pub fn is_html_type(value: &[u8]) -> bool {
    let essence = value.split(|c| *c == b';').next().unwrap_or_default().trim_ascii();
    essence.eq_ignore_ascii_case(b"text/html") || essence.eq_ignore_ascii_case(b"application/xhtml+xml")
}

fn value(name: &str, v: &str) -> Result<HeaderValue, PolicyError> {
    HeaderValue::from_str(v).map_err(|_| PolicyError::Header {
        name: name.to_owned(),
        reason: format!("{v:?} is not a valid header value (visible ASCII, spaces and tabs only)"),
    })
}

/// Which messages a [`HeaderRules`] applies to; request rules are stricter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Rules for the request sent upstream.
    Request,
    /// Rules for the response sent to the client.
    Response,
}

/// Headers that frame the message or belong to one connection: changing them
/// would corrupt the exchange (they are managed by the proxy itself).
const FRAMING: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers gatehouse sets and backends trust.
const IDENTITY: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
];

/// `headers = { request = {…}, response = {…} }`, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderRules {
    /// Checks and compiles the rules. A name may appear once in `set` and not in
    /// both `set` and `remove`.
    pub fn new<N: AsRef<str>, V: AsRef<str>>(
        direction: Direction,
        set: &[(N, V)],
        add: &[(N, V)],
        remove: &[N],
    ) -> Result<HeaderRules, PolicyError> {
        let mut rules = HeaderRules::default();
        for n in remove {
            rules.remove.push(name(direction, n.as_ref())?);
        }
        for (n, v) in set {
            let hn = name(direction, n.as_ref())?;
            if rules.set.iter().any(|(existing, _)| *existing == hn) {
                return Err(PolicyError::Header {
                    name: n.as_ref().into(),
                    reason: "set twice".into(),
                });
            }
            if rules.remove.contains(&hn) {
                return Err(PolicyError::Header {
                    name: n.as_ref().into(),
                    reason: "both set and removed".into(),
                });
            }
            rules.set.push((hn, value(n.as_ref(), v.as_ref())?));
        }
        for (n, v) in add {
            let hn = name(direction, n.as_ref())?;
            rules.add.push((hn, value(n.as_ref(), v.as_ref())?));
        }
        Ok(rules)
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the rules: remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

fn name(direction: Direction, n: &str) -> Result<HeaderName, PolicyError> {
    let err = |reason: &str| PolicyError::Header {
        name: n.to_owned(),
        reason: reason.to_owned(),
    };
    let hn = HeaderName::from_bytes(n.trim().as_bytes()).map_err(|_| err("not a valid header name"))?;
    let s = hn.as_str();
    if FRAMING.contains(&s) {
        return Err(err(
            "framing and connection headers are managed by the proxy and cannot be changed by rules",
        ));
    }
    if direction == Direction::Request && (IDENTITY.contains(&s) || s.starts_with("x-gatehouse-")) {
        return Err(err(
            "gatehouse sets this request header itself and backends trust it; a rule must not forge it",
        ));
    }
    Ok(hn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn html() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        h
    }

    #[test]
    fn defaults_on_html() {
        let s = SecurityHeaders::new(&SecurityHeadersOptions::default()).unwrap();
        assert_eq!(s, SecurityHeaders::default());
        let mut h = html();
        s.apply(&mut h);
        assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[REFERRER_POLICY], "strict-origin-when-cross-origin");
        assert_eq!(h[X_FRAME_OPTIONS], "DENY");
        assert!(h.get(CSP).is_none());
    }

    #[test]
    fn frame_and_csp_only_on_html() {
        let options = SecurityHeadersOptions {
            content_security_policy: Some("default-src 'self'; frame-ancestors 'none'".into()),
            ..SecurityHeadersOptions::default()
        };
        let s = SecurityHeaders::new(&options).unwrap();
        let mut json = HeaderMap::new();
        json.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        s.apply(&mut json);
        assert_eq!(json[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(json.get(X_FRAME_OPTIONS).is_none());
        assert!(json.get(CSP).is_none());
        let mut h = html();
        s.apply(&mut h);
        assert_eq!(h[CSP], "default-src 'self'; frame-ancestors 'none'");
        let mut upper = HeaderMap::new();
        upper.insert(CONTENT_TYPE, HeaderValue::from_static("Text/HTML"));
        s.apply(&mut upper);
        assert_eq!(upper[X_FRAME_OPTIONS], "DENY");
    }

    #[test]
    fn backend_values_win() {
        let s = SecurityHeaders::default();
        let mut h = html();
        h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN"));
        h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        s.apply(&mut h);
        assert_eq!(h[X_FRAME_OPTIONS], "SAMEORIGIN");
        assert_eq!(h[REFERRER_POLICY], "no-referrer");
        assert_eq!(h.get_all(X_FRAME_OPTIONS).iter().count(), 1);
    }

    #[test]
    fn overrides_and_off() {
        let options = SecurityHeadersOptions {
            nosniff: false,
            referrer_policy: None,
            frame: FrameOptions::SameOrigin,
            content_security_policy: None,
        };
        let mut h = html();
        SecurityHeaders::new(&options).unwrap().apply(&mut h);
        assert_eq!(h[X_FRAME_OPTIONS], "SAMEORIGIN");
        assert!(h.get(X_CONTENT_TYPE_OPTIONS).is_none());
        assert!(h.get(REFERRER_POLICY).is_none());
        let mut h = html();
        SecurityHeaders::off().apply(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn invalid_security_options() {
        let bad_referrer = SecurityHeadersOptions {
            referrer_policy: Some("always".into()),
            ..Default::default()
        };
        assert!(SecurityHeaders::new(&bad_referrer).is_err());
        let bad_csp = SecurityHeadersOptions {
            content_security_policy: Some("a\nb".into()),
            ..Default::default()
        };
        assert!(SecurityHeaders::new(&bad_csp).is_err());
        let list = SecurityHeadersOptions {
            referrer_policy: Some("no-referrer, strict-origin".into()),
            ..Default::default()
        };
        assert!(SecurityHeaders::new(&list).is_ok());
    }

    #[test]
    fn rules_remove_then_set_then_add() {
        let rules = HeaderRules::new(
            Direction::Response,
            &[("cache-control", "no-store")],
            &[("link", "</app.css>; rel=preload"), ("Link", "</app.js>; rel=preload")],
            &["server", "x-powered-by"],
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("server", HeaderValue::from_static("werkzeug"));
        h.insert("x-powered-by", HeaderValue::from_static("flask"));
        h.insert("cache-control", HeaderValue::from_static("public, max-age=60"));
        h.insert("link", HeaderValue::from_static("</font.woff2>; rel=preload"));
        rules.apply(&mut h);
        assert!(h.get("server").is_none());
        assert!(h.get("x-powered-by").is_none());
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h.get_all("link").iter().count(), 3);
        assert!(!rules.is_empty());
    }

    #[test]
    fn rules_reject_invalid_and_forbidden_headers() {
        let none: &[(&str, &str)] = &[];
        let empty: &[&str] = &[];
        assert!(HeaderRules::new(Direction::Response, &[("bad name", "x")], none, empty).is_err());
        assert!(HeaderRules::new(Direction::Response, &[("x-ok", "line\nbreak")], none, empty).is_err());
        assert!(HeaderRules::new(Direction::Response, &[("content-length", "0")], none, empty).is_err());
        assert!(HeaderRules::new(Direction::Request, none, none, &["Transfer-Encoding"]).is_err());
        assert!(HeaderRules::new(Direction::Request, &[("X-Gatehouse-User", "admin")], none, empty).is_err());
        assert!(HeaderRules::new(Direction::Request, none, &[("x-forwarded-for", "1.2.3.4")], empty).is_err());
        assert!(HeaderRules::new(Direction::Request, &[("x-a", "1"), ("X-A", "2")], none, empty).is_err());
        assert!(HeaderRules::new(Direction::Request, &[("x-a", "1")], none, &["x-a"]).is_err());
        // The same identity header is fine on responses (it is informational there).
        assert!(HeaderRules::new(Direction::Response, &[("x-request-id", "fixed")], none, empty).is_ok());
        let e = HeaderRules::new(Direction::Request, &[("x-gatehouse-roles", "admin")], none, empty).unwrap_err();
        assert!(e.to_string().contains("x-gatehouse-roles"), "{e}");
    }
}
