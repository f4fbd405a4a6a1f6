//! Site and route matching.
//!
//! A request is matched in two steps: its host picks a site (exact name, then a
//! one-label wildcard, then the default site), and its normalised path picks the
//! site's route with the longest matching prefix whose methods allow the request.

use std::sync::Arc;

use bytes::Bytes;
use gatehouse_config::{Action, Config, HostPattern, RoutePolicy, SitePolicy};
use gatehouse_files::{ReleaseStore, StaticService};
use gatehouse_policy::ConcurrencyLimit;
use http::Method;

use crate::statics;
// Keys come from the config only and the maps never grow at run time, so a
// flood of hostile host names cannot degrade them; a fast hash is safe here.
use rustc_hash::FxHashMap as HashMap;

/// The compiled routing table of one configuration.
#[derive(Debug)]
pub(crate) struct Router {
    exact: HashMap<Box<str>, usize>,
    wildcard: HashMap<Box<str>, usize>,
    default: Option<usize>,
    sites: Vec<SiteRoutes>,
}

#[derive(Debug)]
struct SiteRoutes {
    /// Sorted by prefix length, longest first.
    routes: Vec<CompiledRoute>,
}

/// A site's own policies, checked before its routes'.
#[derive(Debug)]
pub(crate) struct CompiledSite {
    pub(crate) policy: SitePolicy,
}

/// A route ready for the request path.
#[derive(Debug)]
pub(crate) struct CompiledRoute {
    /// The prefix with any trailing `/` removed (empty for `/`).
    prefix: Box<str>,
    methods: Option<Vec<Method>>,
    pub(crate) name: Arc<str>,
    pub(crate) action: Action,
    /// Pre-built body of a `respond` action.
    pub(crate) respond_body: Bytes,
    /// The static server of a `static` action.
    pub(crate) files: Option<StaticService>,
    /// The site's policies (IP rules, header rules).
    pub(crate) site: Arc<CompiledSite>,
    /// The route's policies.
    pub(crate) policy: RoutePolicy,
    /// `max_in_flight` of the route.
    pub(crate) in_flight: Option<Arc<ConcurrencyLimit>>,
}

/// Outcome of matching a request.
#[derive(Debug)]
pub(crate) enum Match<'a> {
    /// A route accepts the request.
    Route(&'a CompiledRoute),
    /// No site answers this host.
    UnknownHost,
    /// The site has no route for this path.
    NoRoute,
    /// Routes match the path, but none allows the method; `Allow` lists these.
    MethodNotAllowed(Vec<Method>),
}

impl CompiledRoute {
    /// The part of `path` after the route's prefix: empty or starting with `/`.
    pub(crate) fn rest<'p>(&self, path: &'p str) -> &'p str {
        path.get(self.prefix.len()..).unwrap_or("")
    }

    fn matches_path(&self, path: &str) -> bool {
        match path.strip_prefix(&*self.prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || self.prefix.is_empty(),
            None => false,
        }
    }

    fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }
}

impl Router {
    pub(crate) fn new(config: &Config) -> Result<Self, crate::EdgeError> {
        let mut releases: Option<ReleaseStore> = None;
        let mut exact = HashMap::default();
        let mut wildcard = HashMap::default();
        let mut default = None;
        let mut sites = Vec::with_capacity(config.sites.len());
        for (i, site) in config.sites.iter().enumerate() {
            for h in &site.hosts {
                match h {
                    HostPattern::Exact(name) => exact.insert(name.as_str().into(), i),
                    HostPattern::Wildcard(suffix) => wildcard.insert(suffix.as_str().into(), i),
                };
            }
            if site.default {
                default = Some(i);
            }
            let compiled_site = Arc::new(CompiledSite {
                policy: site.policy.clone(),
            });
            let mut routes: Vec<CompiledRoute> = Vec::with_capacity(site.routes.len());
            for r in &site.routes {
                let in_flight = match r.policy.max_in_flight {
                    Some(max) => {
                        Some(
                            ConcurrencyLimit::new(&r.name, max).map_err(|source| crate::EdgeError::Policy {
                                what: format!("route {}", r.name),
                                source,
                            })?,
                        )
                    }
                    None => None,
                };
                let files = match &r.action {
                    Action::Static(st) => Some(statics::build(st, &mut releases, &config.server.data_dir).map_err(
                        |source| crate::EdgeError::Static {
                            route: r.name.clone(),
                            source,
                        },
                    )?),
                    _ => None,
                };
                routes.push(CompiledRoute {
                    prefix: r.path.trim_end_matches('/').into(),
                    methods: r.methods.clone(),
                    name: r.name.as_str().into(),
                    respond_body: match &r.action {
                        Action::Respond(resp) => Bytes::from(resp.body.clone()),
                        _ => Bytes::new(),
                    },
                    files,
                    action: r.action.clone(),
                    site: compiled_site.clone(),
                    policy: r.policy.clone(),
                    in_flight,
                });
            }
            // Stable sort: among equal prefixes, file order decides (method-specific
            // routes written first win over catch-alls).
            routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
            sites.push(SiteRoutes { routes });
        }
        Ok(Self {
            exact,
            wildcard,
            default,
            sites,
        })
    }

    /// Finds the site for a normalised (lower-case, port-less) host.
    pub(crate) fn site(&self, host: Option<&str>) -> Option<usize> {
        if let Some(host) = host {
            if let Some(&i) = self.exact.get(host) {
                return Some(i);
            }
            if let Some(dot) = host.find('.') {
                if let Some(&i) = self.wildcard.get(&host[dot..]) {
                    return Some(i);
                }
            }
        }
        self.default
    }

    /// Matches a request.
    pub(crate) fn route(&self, host: Option<&str>, path: &str, method: &Method) -> Match<'_> {
        let Some(site) = self.site(host).and_then(|i| self.sites.get(i)) else {
            return Match::UnknownHost;
        };
        let mut allowed: Option<Vec<Method>> = None;
        for route in &site.routes {
            if !route.matches_path(path) {
                continue;
            }
            if route.allows(method) {
                return Match::Route(route);
            }
            if let Some(methods) = &route.methods {
                let list = allowed.get_or_insert_with(Vec::new);
                for m in methods {
                    if !list.contains(m) {
                        list.push(m.clone());
                    }
                }
            }
        }
        match allowed {
            Some(methods) => Match::MethodNotAllowed(methods),
            None => Match::NoRoute,
        }
    }
}

/// Extracts the host used for site matching: lower-cased, without port or
/// trailing dots. Returns `Err` for a syntactically invalid host.
///
/// Accepted forms (RFC 9110 §7.2, RFC 3986 §3.2.2): `name[:port]`, `IPv4[:port]`
/// and `[IPv6][:port]`. A name may contain only letters, digits, `.`, `-` and
/// `_`; a `:` ends it and everything after must be digits, so a value such as
/// `evil:1.example.org:443` is refused rather than matched as `*.example.org`.
pub(crate) fn normalize_host(raw: &[u8]) -> Result<std::borrow::Cow<'_, str>, ()> {
    let port_ok = |p: &[u8]| p.iter().all(u8::is_ascii_digit);
    if let Some(rest) = raw.strip_prefix(b"[") {
        let s = std::str::from_utf8(raw).map_err(|_| ())?;
        let end = rest.iter().position(|&b| b == b']').ok_or(())?;
        let (inside, after) = (&s[1..end + 1], &rest[end + 1..]);
        inside.parse::<std::net::Ipv6Addr>().map_err(|_| ())?;
        match after.strip_prefix(b":") {
            Some(port) if port_ok(port) => {}
            None if after.is_empty() => {}
            _ => return Err(()),
        }
        let host = &s[..end + 2];
        return Ok(if host.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(host.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(host)
        });
    }
    // One pass over the name: every byte checked, upper case noted.
    let mut upper = false;
    let mut end = raw.len();
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {}
            b'A'..=b'Z' => upper = true,
            b':' => {
                if !port_ok(&raw[i + 1..]) {
                    return Err(());
                }
                end = i;
                break;
            }
            _ => return Err(()),
        }
    }
    let mut name = &raw[..end];
    while let [rest @ .., b'.'] = name {
        name = rest;
    }
    if name.is_empty() {
        return Err(());
    }
    // Only ASCII letters, digits and `.-_` are left.
    let name = std::str::from_utf8(name).map_err(|_| ())?;
    Ok(if upper {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(toml: &str) -> Router {
        let cfg = gatehouse_config::parse_with_env(toml, std::path::Path::new("t.toml"), &|_| None).unwrap();
        Router::new(&cfg).unwrap()
    }

    fn name<'a>(m: Match<'a>) -> &'a str {
        match m {
            Match::Route(r) => &r.name,
            other => panic!("no route: {other:?}"),
        }
    }

    const CFG: &str = r#"
[[site]]
hosts = ["app.example.com"]
  [[site.route]]
  path = "/"
  name = "root"
  respond = {}
  [[site.route]]
  path = "/api"
  name = "api"
  respond = {}
  [[site.route]]
  path = "/api/admin/"
  name = "admin"
  methods = ["POST"]
  respond = {}
[[site]]
hosts = ["*.example.com"]
  [[site.route]]
  path = "/"
  name = "wild"
  respond = {}
[[site]]
default = true
  [[site.route]]
  path = "/only"
  name = "default-only"
  respond = {}
"#;

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let r = router(CFG);
        let h = Some("app.example.com");
        assert_eq!(name(r.route(h, "/", &Method::GET)), "root");
        assert_eq!(name(r.route(h, "/api", &Method::GET)), "api");
        assert_eq!(name(r.route(h, "/api/", &Method::GET)), "api");
        assert_eq!(name(r.route(h, "/api/x", &Method::GET)), "api");
        assert_eq!(name(r.route(h, "/apix", &Method::GET)), "root");
        assert_eq!(name(r.route(h, "/api/admin/users", &Method::POST)), "admin");
        assert_eq!(name(r.route(h, "/api/admin", &Method::POST)), "admin");
    }

    #[test]
    fn method_mismatch_falls_back_to_shorter_prefix() {
        let r = router(CFG);
        assert_eq!(
            name(r.route(Some("app.example.com"), "/api/admin/users", &Method::GET)),
            "api"
        );
    }

    #[test]
    fn method_not_allowed_lists_methods() {
        let r = router(
            "[[site]]\nhosts=[\"a.com\"]\n[[site.route]]\npath=\"/x\"\nmethods=[\"GET\",\"HEAD\"]\nrespond={}\n",
        );
        match r.route(Some("a.com"), "/x/y", &Method::DELETE) {
            Match::MethodNotAllowed(m) => assert_eq!(m, vec![Method::GET, Method::HEAD]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.route(Some("a.com"), "/y", &Method::GET), Match::NoRoute));
    }

    #[test]
    fn wildcards_match_exactly_one_label() {
        let r = router(CFG);
        assert_eq!(name(r.route(Some("shop.example.com"), "/", &Method::GET)), "wild");
        // Two labels: not the wildcard, so the default site (which has no `/`).
        assert!(matches!(
            r.route(Some("a.b.example.com"), "/", &Method::GET),
            Match::NoRoute
        ));
        assert_eq!(
            name(r.route(Some("a.b.example.com"), "/only", &Method::GET)),
            "default-only"
        );
        assert_eq!(
            name(r.route(Some("example.com"), "/only", &Method::GET)),
            "default-only"
        );
    }

    #[test]
    fn unknown_host_without_default_site() {
        let r = router("[[site]]\nhosts=[\"a.com\"]\n[[site.route]]\npath=\"/\"\nrespond={}\n");
        assert!(matches!(r.route(Some("b.com"), "/", &Method::GET), Match::UnknownHost));
        assert!(matches!(r.route(None, "/", &Method::GET), Match::UnknownHost));
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(normalize_host(b"App.Example.com:8080").unwrap(), "app.example.com");
        assert_eq!(normalize_host(b"example.com.").unwrap(), "example.com");
        assert_eq!(normalize_host(b"[::1]:443").unwrap(), "[::1]");
        assert_eq!(normalize_host(b"127.0.0.1").unwrap(), "127.0.0.1");
        assert!(normalize_host(b"a.com:80x").is_err());
        assert!(normalize_host(b"a b.com").is_err());
        assert!(normalize_host(b"").is_err());
        assert!(normalize_host(b"[::1]x").is_err());
        assert!(normalize_host(b"a.com/evil").is_err());
        // Colons and brackets never survive into a name.
        assert!(normalize_host(b"evil:1.example.org:443").is_err());
        assert!(normalize_host(b"a:1:2").is_err());
        assert!(normalize_host(b"::1").is_err());
        assert!(normalize_host(b".[").is_err());
        assert!(normalize_host(b"[not-v6]").is_err());
        assert_eq!(normalize_host(b"a.com..").unwrap(), "a.com");
        assert_eq!(normalize_host(b"[::1]").unwrap(), "[::1]");
        assert_eq!(normalize_host(b"example.com:").unwrap(), "example.com");
    }
}
