//! Second layer: file model → typed [`Config`], with every semantic check.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, StatusCode};
use ipnet::IpNet;

use crate::error::RawError;
use crate::file::{self, FileConfig, Spanned};
use crate::model::*;
use crate::policy;
use crate::units;

/// Defaults, each with the reason for its value.
pub(crate) mod defaults {
    use std::time::Duration;

    /// An unprivileged port, so the quickstart runs without root.
    pub(crate) const HTTP_LISTEN: &str = "0.0.0.0:8080";
    /// Relative to the config file, so a project folder carries its own state.
    pub(crate) const DATA_DIR: &str = "./data";
    /// Long enough for ordinary API calls and downloads to finish, short enough that
    /// a deploy or restart does not hang on a stuck client.
    pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
    /// A healthy backend on the same network connects in milliseconds; 5 s
    /// tolerates a SYN retransmit (1 s, then 3 s) before giving up.
    pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// nginx's `proxy_read_timeout` default; slow reports and exports fit.
    pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Long enough for event streams with a heartbeat every few minutes at
    /// most, short enough that an upstream gone silent mid-body (a partition,
    /// no reset) does not hold its client for ever.
    pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(300);
    /// Below the 2–5 minute idle timeouts typical of app servers' keep-alive, so
    /// gatehouse closes first and never writes into a connection being closed.
    /// (gunicorn's default keep-alive is 2 s; pools re-open cheaply.)
    pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
    /// Enough idle connections per target and worker to absorb bursts without
    /// reconnecting; nginx deployments commonly use `keepalive 32..64`.
    pub(crate) const KEEPALIVE: usize = 64;
    /// 308 keeps the method and body, unlike 301/302.
    pub(crate) const REDIRECT_STATUS: u16 = 308;
    pub(crate) const RESPOND_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
    pub(crate) const LOG_LEVEL: &str = "info";
    /// SQLite in data_dir: nothing to install, one file to back up.
    pub(crate) const STORE_URL: &str = "sqlite://gatehouse.db";
    /// Enough for the auth and notification services on one instance; several
    /// instances on one PostgreSQL stay well under its default 100 connections.
    pub(crate) const STORE_MAX_CONNECTIONS: u32 = 10;
    pub(crate) const STORE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Frequent enough to notice a dead target within seconds, rare enough to be
    /// negligible load on the backend.
    pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    pub(crate) const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    /// Two passes before trusting a target again avoids flapping; three misses
    /// before giving up tolerates one slow check.
    pub(crate) const HEALTH_RISE: u32 = 2;
    pub(crate) const HEALTH_FALL: u32 = 3;
    /// Envoy's consecutive-5xx default: one bad response is noise, five in a row
    /// is a sick target.
    pub(crate) const PASSIVE_FAILURES: u32 = 5;
    pub(crate) const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);
    pub(crate) const PASSIVE_MAX_COOLDOWN: Duration = Duration::from_secs(300);
    /// One retry hides a dead target from clients without doubling load.
    pub(crate) const RETRY_ATTEMPTS: u32 = 2;
    /// At most 20% extra load from retries (the common service-mesh default).
    pub(crate) const RETRY_BUDGET: f64 = 0.2;
    /// Form posts and JSON API calls fit; held in memory only for the time
    /// of the exchange.
    pub(crate) const RETRY_BUFFER: u64 = 64 * 1024;
    pub(crate) const STICKY_COOKIE: &str = "gatehouse_sticky";
    /// A week of daily backups.
    pub(crate) const BACKUP_KEEP: u32 = 7;
    /// Enough to roll back a few deploys without filling the disk.
    pub(crate) const RELEASE_KEEP: usize = 5;
}

const METHODS_HINT: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, CONNECT or TRACE (or a custom token)";

fn err<T>(
    span: Option<std::ops::Range<usize>>,
    path: impl Into<String>,
    msg: impl Into<String>,
) -> Result<T, RawError> {
    Err(RawError::invalid(span.map(|s| s.start), path, msg))
}

fn at<T>(s: &Spanned<T>) -> Option<std::ops::Range<usize>> {
    Some(s.span())
}

pub(crate) fn convert(mut file: FileConfig, base_dir: &Path) -> Result<Config, RawError> {
    let server_security = policy::security_headers(
        file.server.security_headers.as_ref(),
        "server.security_headers",
        &SecurityHeaders::default(),
    )?;
    let acme_email = file.server.acme_email.take();
    let https_file = file.server.https.take();
    let server = convert_server(file.server, base_dir)?;
    let https = crate::tls::convert_https(https_file.as_ref(), &server.http)?;
    if let Some(admin) = &server.admin {
        if let Some(i) = https.iter().position(|a| *a == admin.listen && a.port() != 0) {
            let span = https_file.as_ref().and_then(|l| l.get(i)).map(Spanned::span);
            return err(
                span,
                format!("server.https[{i}]"),
                format!("{} is the admin API's address; HTTPS needs its own", admin.listen),
            );
        }
    }
    let server = Server { https, ..server };
    let default_sni_span = file
        .tls
        .as_ref()
        .and_then(|t| t.get_ref().default_sni.as_ref())
        .map(Spanned::span);
    let tls = crate::tls::convert_tls(acme_email.as_ref(), file.acme.take(), file.tls.take(), base_dir)?;
    // The first site ordering from ACME, for the listener check below.
    let mut acme_site: Option<(std::ops::Range<usize>, String)> = None;
    let redis = policy::convert_redis(file.redis.take())?;
    let limits = policy::convert_limits(&file.limits)?;
    let (rate_limits, rate_limit_index) =
        policy::convert_rate_limits(std::mem::take(&mut file.rate_limit), redis.is_some())?;
    let mut named = policy::Named {
        rate_limits,
        rate_limit_index,
        cors: policy::convert_cors(std::mem::take(&mut file.cors))?,
        redis: redis.is_some(),
    };
    let log = convert_log(file.log, base_dir)?;

    let mut upstreams = Vec::with_capacity(file.upstream.len());
    let mut upstream_index = HashMap::new();
    for (name, up) in file.upstream {
        let key = format!("upstream.{name}");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return err(at(&up), key, "an upstream name is letters, digits, `_` and `-`");
        }
        upstream_index.insert(name.clone(), upstreams.len());
        upstreams.push(convert_upstream(name, up, &key)?);
    }

    let mut sites = Vec::with_capacity(file.site.len());
    let mut seen_hosts: HashMap<String, usize> = HashMap::new();
    let mut default_site: Option<usize> = None;
    for (i, site) in file.site.into_iter().enumerate() {
        let key = format!("site[{i}]");
        let site_span = site.span();
        let mut site = site.into_inner();
        let site_keys = policy::SiteKeys {
            allow: std::mem::take(&mut site.allow),
            deny: std::mem::take(&mut site.deny),
            headers: site.headers.take(),
            security_headers: site.security_headers.take(),
            max_body_size: site.max_body_size.take(),
        };
        let (site_policy, site_defaults) = policy::convert_site(&site_keys, &key, &server_security, &limits)?;
        let mut hosts = Vec::with_capacity(site.hosts.len());
        let host_spans = site.hosts.iter().map(Spanned::span).collect();
        for (j, h) in site.hosts.iter().enumerate() {
            let hkey = format!("{key}.hosts[{j}]");
            let pattern = host_pattern(h.get_ref()).or_else(|m| err(at(h), &hkey, m))?;
            let canonical = match &pattern {
                HostPattern::Exact(s) => s.clone(),
                HostPattern::Wildcard(s) => format!("*{s}"),
            };
            if let Some(prev) = seen_hosts.insert(canonical.clone(), i) {
                return err(
                    at(h),
                    hkey,
                    format!("host {canonical:?} is already used by site[{prev}]; each host belongs to one site"),
                );
            }
            hosts.push(pattern);
        }
        if site.default {
            if let Some(prev) = default_site {
                return err(
                    Some(site_span),
                    format!("{key}.default"),
                    format!("site[{prev}] is already the default site; only one site may set `default = true`"),
                );
            }
            default_site = Some(i);
        }
        if hosts.is_empty() && !site.default {
            return err(
                Some(site_span),
                format!("{key}.hosts"),
                "a site needs at least one host name, or `default = true`",
            );
        }
        let cx = crate::tls::SiteContext {
            key: &key,
            hosts: &hosts,
            host_spans,
            https: !server.https.is_empty(),
            acme: tls.acme.is_some(),
            base_dir,
        };
        let (site_tls, hsts, redirect_https) =
            crate::tls::convert_site(site.tls.as_ref(), site.hsts.as_ref(), site.redirect_https.as_ref(), &cx)?;
        if site_tls == SiteTls::Acme && acme_site.is_none() {
            acme_site = Some((site.tls.as_ref().map_or(site_span.clone(), Spanned::span), key.clone()));
        }
        let name = site
            .hosts
            .first()
            .map_or_else(|| "default".to_owned(), |h| h.get_ref().to_ascii_lowercase());
        let mut routes = Vec::with_capacity(site.route.len());
        let mut seen_paths: HashMap<(String, Option<Vec<Method>>), usize> = HashMap::new();
        for (j, mut route) in site.route.into_iter().enumerate() {
            let rkey = format!("{key}.route[{j}]");
            let route_span = route.span();
            let route_keys = policy::RouteKeys::take(route.get_mut());
            let mut r = convert_route(route, base_dir, &rkey, &name, &upstream_index, &upstreams)?;
            r.policy = policy::convert_route(route_keys, &rkey, &r.name, &site_defaults, &mut named)?;
            if let Some(prev) = seen_paths.insert((r.path.clone(), r.methods.clone()), j) {
                return err(
                    Some(route_span),
                    format!("{rkey}.path"),
                    format!(
                        "route[{prev}] of this site already has path {:?} with the same methods",
                        r.path
                    ),
                );
            }
            routes.push(r);
        }
        sites.push(Site {
            name,
            hosts,
            default: site.default,
            routes,
            policy: site_policy,
            tls: site_tls,
            hsts,
            redirect_https,
        });
    }
    if let Some(name) = &tls.default_sni {
        let served = sites
            .iter()
            .any(|s| s.tls != SiteTls::Off && s.hosts.iter().any(|h| h.matches(name)));
        if !served {
            return err(
                default_sni_span,
                "tls.default_sni",
                format!("no site with TLS has the host {name:?}; name one of their hosts"),
            );
        }
    }
    if let Some(acme) = &tls.acme {
        if acme.challenge == AcmeChallenge::Http01 && server.http.is_empty() {
            if let Some((span, key)) = acme_site {
                return err(
                    Some(span),
                    format!("{key}.tls"),
                    "the ACME HTTP-01 challenge is answered on a plain-HTTP listener (port 80 for public CAs),                      and `server.http` is empty; add one or set `challenge = \"tls-alpn-01\"` in [acme]",
                );
            }
        }
    }

    // Release slots: declared ones, plus any slot a route serves.
    let mut releases: Vec<ReleaseSlot> = Vec::new();
    for (name, rel) in &file.release {
        let key = format!("release.{name}");
        if !valid_slot(name) {
            return err(at(rel), key, "a release slot name is 1–64 letters, digits, `_` or `-`");
        }
        let r = rel.get_ref();
        let keep = match &r.keep {
            None => defaults::RELEASE_KEEP,
            Some(k) => usize::try_from(*k.get_ref())
                .ok()
                .filter(|k| (1..=1000).contains(k))
                .ok_or_else(|| RawError::invalid(Some(k.span().start), format!("{key}.keep"), "expected 1 to 1000"))?,
        };
        let max_files = match &r.max_files {
            None => None,
            Some(k) => Some(u64::try_from(*k.get_ref()).ok().filter(|k| *k > 0).ok_or_else(|| {
                RawError::invalid(
                    Some(k.span().start),
                    format!("{key}.max_files"),
                    "expected a positive number",
                )
            })?),
        };
        releases.push(ReleaseSlot {
            name: name.clone(),
            keep,
            max_size: opt_size(r.max_size.as_ref(), &format!("{key}.max_size"))?,
            max_upload: opt_size(r.max_upload.as_ref(), &format!("{key}.max_upload"))?,
            max_files,
            spa: r.spa.unwrap_or(false),
        });
    }
    for site in &sites {
        for route in &site.routes {
            if let Action::Static(st) = &route.action {
                if let StaticSource::Release(slot) = &st.source {
                    let declared = file.release.get(slot).and_then(|r| r.get_ref().spa);
                    match releases.iter_mut().find(|r| &r.name == slot) {
                        Some(r) => r.spa = declared.unwrap_or(r.spa || st.spa),
                        None => releases.push(ReleaseSlot {
                            name: slot.clone(),
                            keep: defaults::RELEASE_KEEP,
                            max_size: None,
                            max_upload: None,
                            max_files: None,
                            spa: st.spa,
                        }),
                    }
                }
            }
        }
    }

    let store = Store {
        url: match &file.store.url {
            None => defaults::STORE_URL.to_owned(),
            Some(u) => {
                let v = u.get_ref();
                if !(v.starts_with("sqlite:") || v.starts_with("postgres://") || v.starts_with("postgresql://")) {
                    return err(at(u), "store.url", "expected sqlite://FILE or postgres://USER@HOST/DB");
                }
                v.clone()
            }
        },
        max_connections: match &file.store.max_connections {
            None => defaults::STORE_MAX_CONNECTIONS,
            Some(m) => u32::try_from(*m.get_ref())
                .ok()
                .filter(|m| (1..=1000).contains(m))
                .ok_or_else(|| {
                    RawError::invalid(Some(m.span().start), "store.max_connections", "expected 1 to 1000")
                })?,
        },
        connect_timeout: opt_duration(
            file.store.connect_timeout.as_ref(),
            "store.connect_timeout",
            defaults::STORE_CONNECT_TIMEOUT,
        )?,
    };
    let backup = Backup {
        every: match &file.backup.every {
            None => None,
            Some(e) => Some(opt_duration(Some(e), "backup.every", Duration::ZERO)?),
        },
        keep: match &file.backup.keep {
            None => defaults::BACKUP_KEEP,
            Some(k) => u32::try_from(*k.get_ref())
                .ok()
                .filter(|k| (1..=10_000).contains(k))
                .ok_or_else(|| RawError::invalid(Some(k.span().start), "backup.keep", "expected 1 to 10000"))?,
        },
        dir: match &file.backup.dir {
            Some(d) => resolve_path(base_dir, d),
            None => server.data_dir.join("backups"),
        },
    };

    Ok(Config {
        server,
        log,
        sites,
        upstreams,
        releases,
        store,
        backup,
        redis,
        rate_limits: named.rate_limits,
        limits,
        tls,
    })
}

fn convert_server(s: file::ServerFile, base_dir: &Path) -> Result<Server, RawError> {
    let data_dir = resolve_path(base_dir, s.data_dir.as_deref().unwrap_or(defaults::DATA_DIR));
    let http = match s.http {
        None => vec![parse_listen(defaults::HTTP_LISTEN).map_err(|m| RawError::invalid(None, "server.http", m))?],
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, a) in list.iter().enumerate() {
                let addr = parse_listen(a.get_ref()).or_else(|m| err(at(a), format!("server.http[{i}]"), m))?;
                if out.contains(&addr) {
                    return err(at(a), format!("server.http[{i}]"), format!("{addr} is listed twice"));
                }
                out.push(addr);
            }
            out
        }
    };
    let workers = match s.workers {
        None => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        Some(w) => match usize::try_from(*w.get_ref()).ok().and_then(NonZeroUsize::new) {
            Some(n) if n.get() <= 1024 => n,
            _ => return err(at(&w), "server.workers", "workers must be between 1 and 1024"),
        },
    };
    let mut trusted_proxies = Vec::with_capacity(s.trusted_proxies.len());
    for (i, p) in s.trusted_proxies.iter().enumerate() {
        let net = parse_cidr(p.get_ref()).or_else(|m| err(at(p), format!("server.trusted_proxies[{i}]"), m))?;
        trusted_proxies.push(net);
    }
    let shutdown_timeout = opt_duration(
        s.shutdown_timeout.as_ref(),
        "server.shutdown_timeout",
        defaults::SHUTDOWN_TIMEOUT,
    )?;
    let admin = convert_admin(s.admin.as_ref(), s.admin_token.as_ref(), &http)?;
    Ok(Server {
        data_dir,
        http,
        https: Vec::new(),
        workers,
        trusted_proxies,
        shutdown_timeout,
        admin,
        watch_config: s.watch_config.unwrap_or(false),
    })
}

/// Shortest admin token accepted: 32 characters of a random hex or base64
/// string carry 128 bits or more, far beyond guessing over the network.
const ADMIN_TOKEN_MIN_CHARS: usize = 32;

fn convert_admin(
    listen: Option<&Spanned<String>>,
    token: Option<&Spanned<Secret>>,
    http: &[SocketAddr],
) -> Result<Option<Admin>, RawError> {
    let Some(listen) = listen else {
        if let Some(t) = token {
            return err(
                at(t),
                "server.admin_token",
                "there is no admin listener to protect; set `admin = \"127.0.0.1:2019\"` too, or remove `admin_token`",
            );
        }
        return Ok(None);
    };
    let addr = parse_listen(listen.get_ref()).or_else(|m| err(at(listen), "server.admin", m))?;
    if let Some(i) = http.iter().position(|h| *h == addr && addr.port() != 0) {
        return err(
            at(listen),
            "server.admin",
            format!("{addr} is already used by server.http[{i}]; the admin API needs its own address"),
        );
    }
    let token = match token {
        None => None,
        Some(t) => {
            // Never echo the value: it is a secret.
            let value = t.get_ref().expose();
            let chars = value.chars().count();
            if chars < ADMIN_TOKEN_MIN_CHARS {
                return err(
                    at(t),
                    "server.admin_token",
                    format!(
                        "the token has {chars} characters; use at least {ADMIN_TOKEN_MIN_CHARS} \
                         (for example the output of `openssl rand -hex 32`)"
                    ),
                );
            }
            if !value.bytes().all(|b| b.is_ascii_graphic()) {
                return err(
                    at(t),
                    "server.admin_token",
                    "the token may only contain printable ASCII characters without spaces \
                     (for example the output of `openssl rand -hex 32`)",
                );
            }
            Some(t.get_ref().clone())
        }
    };
    if token.is_none() && !addr.ip().to_canonical().is_loopback() {
        return err(
            at(listen),
            "server.admin",
            format!(
                "{addr} is not a loopback address, so the admin API needs `admin_token` \
                 (at least {ADMIN_TOKEN_MIN_CHARS} characters); or listen on 127.0.0.1 or [::1]"
            ),
        );
    }
    Ok(Some(Admin { listen: addr, token }))
}

fn convert_log(l: file::LogFile, base_dir: &Path) -> Result<Log, RawError> {
    let level = match &l.level {
        None => defaults::LOG_LEVEL.to_owned(),
        Some(v) => {
            let s = v.get_ref().trim();
            if s.is_empty() {
                return err(
                    at(v),
                    "log.level",
                    "expected a level (error, warn, info, debug, trace) or a filter like \"info,gatehouse_edge=debug\"",
                );
            }
            s.to_owned()
        }
    };
    let format = log_format(l.format.as_ref(), "log.format")?.unwrap_or(LogFormat::Text);
    let access_log_format = log_format(l.access_log_format.as_ref(), "log.access_log_format")?.unwrap_or(format);
    let access_log = match l.access_log.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("stdout") => AccessLogTarget::Stdout,
        Some("off") => AccessLogTarget::Off,
        Some("") => {
            return err(
                l.access_log.as_ref().and_then(at),
                "log.access_log",
                "expected \"stdout\", \"off\" or a file path",
            );
        }
        Some(path) => AccessLogTarget::File(resolve_path(base_dir, path)),
    };
    Ok(Log {
        level,
        format,
        access_log,
        access_log_format,
    })
}

fn log_format(v: Option<&Spanned<String>>, key: &str) -> Result<Option<LogFormat>, RawError> {
    match v.map(|s| s.get_ref().as_str()) {
        None => Ok(None),
        Some("text") => Ok(Some(LogFormat::Text)),
        Some("json") => Ok(Some(LogFormat::Json)),
        Some(other) => err(
            v.and_then(at),
            key,
            format!("unknown format {other:?}; expected \"text\" or \"json\""),
        ),
    }
}

fn convert_route(
    route: Spanned<file::RouteFile>,
    base_dir: &Path,
    key: &str,
    site_name: &str,
    upstream_index: &HashMap<String, usize>,
    upstreams: &[Upstream],
) -> Result<Route, RawError> {
    let span = route.span();
    let r = route.into_inner();
    let path = r.path.get_ref();
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) || path.contains("/../") || path.ends_with("/..") {
        return err(
            at(&r.path),
            format!("{key}.path"),
            format!("invalid path prefix {path:?}; expected an absolute path like \"/\" or \"/api/\""),
        );
    }
    let methods = match &r.methods {
        None => None,
        Some(list) => {
            if list.is_empty() {
                return err(
                    Some(span.clone()),
                    format!("{key}.methods"),
                    "an empty method list matches nothing; remove `methods` to match all",
                );
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, m) in list.iter().enumerate() {
                let upper = m.get_ref().to_ascii_uppercase();
                let method = Method::from_bytes(upper.as_bytes()).or_else(|_| {
                    err(
                        at(m),
                        format!("{key}.methods[{i}]"),
                        format!("invalid method {:?}; expected {METHODS_HINT}", m.get_ref()),
                    )
                })?;
                out.push(method);
            }
            Some(out)
        }
    };

    let mut actions = Vec::new();
    if r.upstream.is_some() {
        actions.push("upstream");
    }
    if r.redirect.is_some() {
        actions.push("redirect");
    }
    if r.respond.is_some() {
        actions.push("respond");
    }
    if r.static_files.is_some() {
        actions.push("static");
    }
    let action = match actions.len() {
        0 => {
            return err(
                Some(span),
                key,
                "a route needs one action: `upstream`, `redirect` or `respond`",
            );
        }
        1 => {
            if let Some(up) = &r.upstream {
                let Some(&idx) = upstream_index.get(up.get_ref()) else {
                    let known: Vec<String> = upstreams.iter().map(|u| format!("{:?}", u.name)).collect();
                    let hint = if known.is_empty() {
                        "no upstreams are defined; add an [upstream.NAME] table".to_owned()
                    } else {
                        format!("defined upstreams: {}", known.join(", "))
                    };
                    return err(
                        at(up),
                        format!("{key}.upstream"),
                        format!("upstream {:?} is not defined; {hint}", up.get_ref()),
                    );
                };
                let rewrite = match (&r.rewrite, r.strip_prefix) {
                    (Some(rw), true) => {
                        return err(
                            at(rw),
                            format!("{key}.rewrite"),
                            "set either `rewrite` or `strip_prefix`, not both",
                        );
                    }
                    (Some(rw), false) => {
                        if !rw.get_ref().starts_with('/') {
                            return err(at(rw), format!("{key}.rewrite"), "a rewrite must start with `/`");
                        }
                        Some(rw.get_ref().clone())
                    }
                    (None, true) => Some("/".to_owned()),
                    (None, false) => None,
                };
                Action::Proxy(ProxyAction {
                    upstream: idx,
                    rewrite,
                    preserve_host: r.preserve_host,
                })
            } else if let Some(red) = r.redirect {
                let red = red.into_inner();
                let status = match &red.status {
                    None => StatusCode::from_u16(defaults::REDIRECT_STATUS)
                        .map_err(|_| RawError::invalid(None, key, "bad default"))?,
                    Some(s) => match *s.get_ref() {
                        301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(*s.get_ref() as u16)
                            .map_err(|_| RawError::invalid(None, key, "bad status"))?,
                        other => {
                            return err(
                                at(s),
                                format!("{key}.redirect.status"),
                                format!("{other} is not a redirect status; expected 301, 302, 303, 307 or 308"),
                            );
                        }
                    },
                };
                let to = red.to.get_ref();
                if to.is_empty() || to.contains(['\r', '\n']) || http::HeaderValue::from_str(to).is_err() {
                    return err(
                        at(&red.to),
                        format!("{key}.redirect.to"),
                        "expected a URL or absolute path usable as a Location header",
                    );
                }
                reject_proxy_options(&span, &r.rewrite, r.strip_prefix, r.preserve_host, key, "redirect")?;
                Action::Redirect(Redirect {
                    to: to.clone(),
                    status,
                    keep_path: red.keep_path,
                })
            } else if let Some(resp) = r.respond {
                let resp = resp.into_inner();
                let status = match &resp.status {
                    None => StatusCode::OK,
                    Some(s) => u16::try_from(*s.get_ref())
                        .ok()
                        .filter(|c| (200..=599).contains(c))
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .ok_or_else(|| {
                            RawError::invalid(
                                Some(s.span().start),
                                format!("{key}.respond.status"),
                                "expected a status code from 200 to 599",
                            )
                        })?,
                };
                let content_type = match &resp.content_type {
                    None => defaults::RESPOND_CONTENT_TYPE.to_owned(),
                    Some(ct) => {
                        if http::HeaderValue::from_str(ct.get_ref()).is_err() || ct.get_ref().is_empty() {
                            return err(
                                at(ct),
                                format!("{key}.respond.content_type"),
                                "expected a media type such as \"application/json\"",
                            );
                        }
                        ct.get_ref().clone()
                    }
                };
                reject_proxy_options(&span, &r.rewrite, r.strip_prefix, r.preserve_host, key, "respond")?;
                Action::Respond(Respond {
                    status,
                    body: resp.body,
                    content_type,
                })
            } else if let Some(st) = r.static_files {
                reject_proxy_options(&span, &r.rewrite, r.strip_prefix, r.preserve_host, key, "static")?;
                Action::Static(Box::new(convert_static(st, &format!("{key}.static"), base_dir)?))
            } else {
                return err(Some(span), key, "a route needs one action");
            }
        }
        _ => {
            return err(
                Some(span),
                key,
                format!(
                    "a route has exactly one action, but this one sets {}",
                    actions.join(" and ")
                ),
            );
        }
    };
    let name = r.name.unwrap_or_else(|| format!("{site_name}{}", r.path.get_ref()));
    Ok(Route {
        name,
        path: r.path.into_inner(),
        methods,
        action,
        policy: RoutePolicy::default(),
    })
}

fn reject_proxy_options(
    route_span: &std::ops::Range<usize>,
    rewrite: &Option<Spanned<String>>,
    strip: bool,
    preserve: bool,
    key: &str,
    action: &str,
) -> Result<(), RawError> {
    if let Some(rw) = rewrite {
        return err(
            at(rw),
            format!("{key}.rewrite"),
            format!("`rewrite` only applies to `upstream` routes, not `{action}`"),
        );
    }
    if strip {
        return err(
            Some(route_span.clone()),
            format!("{key}.strip_prefix"),
            format!("`strip_prefix` only applies to `upstream` routes, not `{action}`"),
        );
    }
    if preserve {
        return err(
            Some(route_span.clone()),
            format!("{key}.preserve_host"),
            format!("`preserve_host` only applies to `upstream` routes, not `{action}`"),
        );
    }
    Ok(())
}

fn convert_upstream(name: String, up: Spanned<file::UpstreamFile>, key: &str) -> Result<Upstream, RawError> {
    let span = up.span();
    let u = up.into_inner();
    if u.targets.is_empty() {
        return err(
            Some(span),
            format!("{key}.targets"),
            "an upstream needs at least one target (\"host:port\")",
        );
    }
    let mut targets = Vec::with_capacity(u.targets.len());
    for (i, t) in u.targets.iter().enumerate() {
        let tkey = format!("{key}.targets[{i}]");
        let (addr, weight) = match t.get_ref() {
            file::TargetFile::Addr(a) => (a.as_str(), 1),
            file::TargetFile::Weighted { addr, weight } => {
                let w = match weight {
                    None => 1,
                    Some(w) => u32::try_from(*w)
                        .ok()
                        .filter(|w| (1..=1000).contains(w))
                        .ok_or_else(|| {
                            RawError::invalid(Some(t.span().start), format!("{tkey}.weight"), "a weight is 1 to 1000")
                        })?,
                };
                (addr.as_str(), w)
            }
        };
        let mut target = parse_target(addr).or_else(|m| err(at(t), &tkey, m))?;
        target.weight = weight;
        if targets.iter().any(|x: &Target| x.id == target.id) {
            return err(at(t), tkey, format!("target {} is listed twice", target.id));
        }
        targets.push(target);
    }
    let keepalive = match &u.keepalive {
        None => defaults::KEEPALIVE,
        Some(k) => usize::try_from(*k.get_ref())
            .ok()
            .filter(|k| *k <= 100_000)
            .ok_or_else(|| {
                RawError::invalid(
                    Some(k.span().start),
                    format!("{key}.keepalive"),
                    "expected a number from 0 to 100000",
                )
            })?,
    };
    let balance = match u.balance.as_ref().map(|b| b.get_ref().as_str()) {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("least_conn") => Balance::LeastConn,
        Some("p2c") => Balance::P2c,
        Some("ip_hash") => Balance::IpHash,
        Some("header_hash") => {
            let Some(h) = &u.hash_header else {
                return err(
                    u.balance.as_ref().and_then(at),
                    format!("{key}.hash_header"),
                    "balance = \"header_hash\" needs `hash_header`, the header to hash (e.g. \"X-User-Id\")",
                );
            };
            let name = http::HeaderName::from_bytes(h.get_ref().as_bytes())
                .or_else(|_| err(at(h), format!("{key}.hash_header"), "expected a header name"))?;
            Balance::HeaderHash(name)
        }
        Some("cookie") => {
            let (name, secret) = match &u.cookie {
                None => (defaults::STICKY_COOKIE.to_owned(), None),
                Some(c) => {
                    let c = c.get_ref();
                    let name = c.name.clone().unwrap_or_else(|| defaults::STICKY_COOKIE.to_owned());
                    if name.is_empty()
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    {
                        return err(
                            Some(span),
                            format!("{key}.cookie.name"),
                            "a cookie name is letters, digits, `_` and `-`",
                        );
                    }
                    let secret = match &c.secret {
                        Some(s) if s.get_ref().len() < 16 => {
                            return err(
                                at(s),
                                format!("{key}.cookie.secret"),
                                "the secret needs at least 16 characters",
                            );
                        }
                        Some(s) => Some(s.get_ref().clone()),
                        None => None,
                    };
                    (name, secret)
                }
            };
            Balance::Cookie { name, secret }
        }
        Some(other) => {
            return err(
                u.balance.as_ref().and_then(at),
                format!("{key}.balance"),
                format!(
                    "unknown policy {other:?}; expected round_robin, least_conn, p2c, ip_hash, header_hash or cookie"
                ),
            );
        }
    };
    if u.hash_header.is_some() && !matches!(balance, Balance::HeaderHash(_)) {
        return err(
            u.hash_header.as_ref().and_then(at),
            format!("{key}.hash_header"),
            "`hash_header` only applies to balance = \"header_hash\"",
        );
    }
    if u.cookie.is_some() && !matches!(balance, Balance::Cookie { .. }) {
        return err(
            u.cookie.as_ref().and_then(at),
            format!("{key}.cookie"),
            "`cookie` only applies to balance = \"cookie\"",
        );
    }
    let health = match &u.health {
        None => None,
        Some(h) => {
            let hkey = format!("{key}.health");
            let hv = h.get_ref();
            if !hv.path.get_ref().starts_with('/') {
                return err(
                    at(&hv.path),
                    format!("{hkey}.path"),
                    "a health-check path starts with `/`",
                );
            }
            let count = |v: &Option<Spanned<i64>>, name: &str, default: u32| -> Result<u32, RawError> {
                match v {
                    None => Ok(default),
                    Some(n) => u32::try_from(*n.get_ref())
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| {
                            RawError::invalid(Some(n.span().start), format!("{hkey}.{name}"), "expected 1 to 100")
                        }),
                }
            };
            let status = match &hv.status {
                None => (200, 399),
                Some(st) => parse_status_range(st.get_ref()).ok_or_else(|| {
                    RawError::invalid(
                        Some(st.span().start),
                        format!("{hkey}.status"),
                        "expected a status or range such as \"200-399\" or \"204\"",
                    )
                })?,
            };
            Some(HealthCheck {
                path: hv.path.get_ref().clone(),
                interval: opt_duration(
                    hv.interval.as_ref(),
                    &format!("{hkey}.interval"),
                    defaults::HEALTH_INTERVAL,
                )?,
                timeout: opt_duration(
                    hv.timeout.as_ref(),
                    &format!("{hkey}.timeout"),
                    defaults::HEALTH_TIMEOUT,
                )?,
                rise: count(&hv.rise, "rise", defaults::HEALTH_RISE)?,
                fall: count(&hv.fall, "fall", defaults::HEALTH_FALL)?,
                status,
                wait_healthy: hv.wait_healthy.unwrap_or(true),
            })
        }
    };
    let passive = match &u.passive {
        None => Passive {
            failures: defaults::PASSIVE_FAILURES,
            cooldown: defaults::PASSIVE_COOLDOWN,
            max_cooldown: defaults::PASSIVE_MAX_COOLDOWN,
        },
        Some(p) => {
            let pv = p.get_ref();
            let pkey = format!("{key}.passive");
            let failures = match &pv.failures {
                None => defaults::PASSIVE_FAILURES,
                Some(f) => u32::try_from(*f.get_ref()).ok().filter(|f| *f <= 1000).ok_or_else(|| {
                    RawError::invalid(Some(f.span().start), format!("{pkey}.failures"), "expected 0 to 1000")
                })?,
            };
            let cooldown = opt_duration(
                pv.cooldown.as_ref(),
                &format!("{pkey}.cooldown"),
                defaults::PASSIVE_COOLDOWN,
            )?;
            let max_cooldown = opt_duration(
                pv.max_cooldown.as_ref(),
                &format!("{pkey}.max_cooldown"),
                defaults::PASSIVE_MAX_COOLDOWN.max(cooldown),
            )?;
            if max_cooldown < cooldown {
                return err(
                    Some(p.span()),
                    format!("{pkey}.max_cooldown"),
                    "max_cooldown must not be shorter than cooldown",
                );
            }
            Passive {
                failures,
                cooldown,
                max_cooldown,
            }
        }
    };
    let retries = match &u.retries {
        None => Retries {
            attempts: defaults::RETRY_ATTEMPTS,
            on_status: Vec::new(),
            budget: defaults::RETRY_BUDGET,
            buffer: defaults::RETRY_BUFFER,
        },
        Some(r) => {
            let rv = r.get_ref();
            let rkey = format!("{key}.retries");
            let attempts = match &rv.attempts {
                None => defaults::RETRY_ATTEMPTS,
                Some(a) => u32::try_from(*a.get_ref())
                    .ok()
                    .filter(|a| (1..=10).contains(a))
                    .ok_or_else(|| {
                        RawError::invalid(
                            Some(a.span().start),
                            format!("{rkey}.attempts"),
                            "expected 1 (no retries) to 10",
                        )
                    })?,
            };
            let mut on_status = Vec::new();
            for (i, st) in rv.on_status.iter().flatten().enumerate() {
                match u16::try_from(*st.get_ref()) {
                    Ok(code) if (500..=599).contains(&code) => on_status.push(code),
                    _ => {
                        return err(
                            at(st),
                            format!("{rkey}.on_status[{i}]"),
                            "only 5xx statuses can be retried",
                        );
                    }
                }
            }
            let budget = match &rv.budget {
                None => defaults::RETRY_BUDGET,
                Some(b) if (0.0..=1.0).contains(b.get_ref()) => *b.get_ref(),
                Some(b) => return err(at(b), format!("{rkey}.budget"), "expected a fraction from 0.0 to 1.0"),
            };
            let buffer = match &rv.buffer {
                None => defaults::RETRY_BUFFER,
                Some(b) => {
                    let n = units::size(b.get_ref()).or_else(|m| err(at(b), format!("{rkey}.buffer"), m))?;
                    if n > 16 << 20 {
                        return err(at(b), format!("{rkey}.buffer"), "expected at most 16MiB");
                    }
                    n
                }
            };
            Retries {
                attempts,
                on_status,
                budget,
                buffer,
            }
        }
    };
    Ok(Upstream {
        name,
        targets,
        connect_timeout: opt_duration(
            u.connect_timeout.as_ref(),
            &format!("{key}.connect_timeout"),
            defaults::CONNECT_TIMEOUT,
        )?,
        response_timeout: opt_duration(
            u.response_timeout.as_ref(),
            &format!("{key}.response_timeout"),
            defaults::RESPONSE_TIMEOUT,
        )?,
        read_timeout: opt_duration(
            u.read_timeout.as_ref(),
            &format!("{key}.read_timeout"),
            defaults::READ_TIMEOUT,
        )?,
        idle_timeout: opt_duration(
            u.idle_timeout.as_ref(),
            &format!("{key}.idle_timeout"),
            defaults::IDLE_TIMEOUT,
        )?,
        keepalive,
        balance,
        health,
        passive,
        retries,
        max_in_flight: policy::upstream_max_in_flight(u.max_in_flight.as_ref(), key)?,
    })
}

fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let c = s.trim().parse().ok()?;
            (c, c)
        }
    };
    ((100..=599).contains(&a) && (100..=599).contains(&b) && a <= b).then_some((a, b))
}

fn opt_duration(v: Option<&Spanned<String>>, key: &str, default: Duration) -> Result<Duration, RawError> {
    match v {
        None => Ok(default),
        Some(s) => {
            let d = units::duration(s.get_ref()).or_else(|m| err(at(s), key, m))?;
            if d.is_zero() {
                return err(at(s), key, "a timeout must be greater than zero");
            }
            Ok(d)
        }
    }
}

pub(crate) fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    // Drop `.` components so messages read `conf/data`, not `conf/./data`.
    let rel: PathBuf = p
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    base.join(rel)
}

/// Parses a listen address: `IP:PORT`, `[IPv6]:PORT` or `:PORT` (all interfaces).
pub(crate) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let full = if let Some(port) = s.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        s.to_owned()
    };
    full.parse::<SocketAddr>().map_err(|_| {
        format!("invalid listen address {s:?}; expected IP:PORT such as \"0.0.0.0:80\", \"[::]:443\" or \":8080\"")
    })
}

pub(crate) fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "invalid network {s:?}; expected an IP address or CIDR such as \"10.0.0.0/8\" or \"fd00::/8\""
    ))
}

/// Longest Unix-domain socket path (`sun_path` holds 108 bytes with the NUL).
const MAX_UNIX_PATH: usize = 107;

fn parse_target(s: &str) -> Result<Target, String> {
    let hint = || {
        format!(
            "invalid target {s:?}; expected host:port such as \"127.0.0.1:8000\", \"[::1]:8000\" or \"api.internal:80\", or unix:/path/to/socket"
        )
    };
    if let Some(path) = s.strip_prefix("unix:") {
        if !path.starts_with('/') || path.len() > MAX_UNIX_PATH || path.contains('\0') {
            return Err(format!(
                "invalid target {s:?}; a Unix-domain socket is written unix:/absolute/path (at most {MAX_UNIX_PATH} bytes)"
            ));
        }
        return Ok(Target {
            host: "localhost".into(),
            port: 0,
            authority: http::uri::Authority::from_static("localhost"),
            unix: Some(path.into()),
            id: s.into(),
            weight: 1,
        });
    }
    if s.contains("://") {
        return Err(format!("{}; write the address without a scheme", hint()));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(hint)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| hint())?;
        (h.to_owned(), p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(hint)?;
        if h.is_empty() || h.contains(':') || !valid_hostname(h) {
            return Err(hint());
        }
        (h.to_ascii_lowercase(), p)
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(hint)?;
    let authority_str = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let authority = authority_str.parse().map_err(|_| hint())?;
    Ok(Target {
        host,
        port,
        authority,
        unix: None,
        id: authority_str.into(),
        weight: 1,
    })
}

fn valid_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Parses a site host pattern.
pub(crate) fn host_pattern(s: &str) -> Result<HostPattern, String> {
    let lower = s.trim().trim_end_matches('.').to_ascii_lowercase();
    if lower == "*" {
        return Err("`*` is not a host pattern; set `default = true` on the site to answer every host".into());
    }
    if let Some(suffix) = lower.strip_prefix("*.") {
        if !valid_hostname(suffix) || !suffix.contains(|c: char| c.is_ascii_alphabetic()) {
            return Err(format!(
                "invalid wildcard {s:?}; expected a pattern like \"*.example.com\""
            ));
        }
        return Ok(HostPattern::Wildcard(format!(".{suffix}")));
    }
    if lower.contains('*') {
        return Err(format!(
            "invalid host {s:?}; `*` is only allowed as the whole first label, as in \"*.example.com\""
        ));
    }
    if let Some(v6) = lower.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if v6.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(HostPattern::Exact(lower));
        }
    }
    if lower.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(HostPattern::Exact(format!("[{lower}]")));
    }
    if lower.contains(':') {
        return Err(format!("invalid host {s:?}; give the name without a port"));
    }
    if !valid_hostname(&lower) {
        return Err(format!("invalid host name {s:?}"));
    }
    Ok(HostPattern::Exact(lower))
}

fn valid_slot(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn opt_size(v: Option<&Spanned<String>>, key: &str) -> Result<Option<u64>, RawError> {
    match v {
        None => Ok(None),
        Some(s) => units::size(s.get_ref()).map(Some).or_else(|m| err(at(s), key, m)),
    }
}

fn convert_static(st: Spanned<file::StaticFile>, key: &str, base_dir: &Path) -> Result<StaticAction, RawError> {
    let span = st.span();
    let f = st.into_inner();
    let source = match (&f.dir, &f.release) {
        (Some(d), None) => {
            if d.get_ref().is_empty() {
                return err(at(d), format!("{key}.dir"), "expected a directory path");
            }
            StaticSource::Dir(resolve_path(base_dir, d.get_ref()))
        }
        (None, Some(r)) => {
            if !valid_slot(r.get_ref()) {
                return err(
                    at(r),
                    format!("{key}.release"),
                    "a release slot name is 1–64 letters, digits, `_` or `-`",
                );
            }
            StaticSource::Release(r.get_ref().clone())
        }
        _ => return err(Some(span), key, "set exactly one of `dir` or `release`"),
    };
    let dotfiles = match f.dotfiles.as_ref().map(|d| d.get_ref().as_str()) {
        None | Some("deny") => Dotfiles::Deny,
        Some("hide") => Dotfiles::Hide,
        Some("allow") => Dotfiles::Allow,
        Some(other) => {
            return err(
                f.dotfiles.as_ref().and_then(at),
                format!("{key}.dotfiles"),
                format!("unknown policy {other:?}; expected \"deny\", \"hide\" or \"allow\""),
            );
        }
    };
    let immutable = match &f.immutable {
        None => Immutable::Fingerprinted,
        Some(v) => match v.get_ref() {
            toml::Value::String(s) if s == "fingerprinted" => Immutable::Fingerprinted,
            toml::Value::String(s) if s == "never" => Immutable::Never,
            toml::Value::Array(items) => {
                let mut globs = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_str() {
                        Some(g) if !g.is_empty() => globs.push(g.to_owned()),
                        _ => return err(at(v), format!("{key}.immutable"), "expected a list of glob strings"),
                    }
                }
                Immutable::Globs(globs)
            }
            _ => {
                return err(
                    at(v),
                    format!("{key}.immutable"),
                    "expected \"fingerprinted\", \"never\" or a list of globs",
                );
            }
        },
    };
    if let Some(cc) = &f.cache_control {
        if http::HeaderValue::from_str(cc.get_ref()).is_err() || cc.get_ref().is_empty() {
            return err(
                at(cc),
                format!("{key}.cache_control"),
                "expected a Cache-Control value such as \"no-cache\"",
            );
        }
    }
    if let Some(index) = &f.index {
        if index.iter().any(|i| i.is_empty() || i.contains('/')) {
            return err(
                Some(span),
                format!("{key}.index"),
                "index entries are file names without `/`",
            );
        }
    }
    let max_ranges = match &f.max_ranges {
        None => None,
        Some(m) => Some(
            usize::try_from(*m.get_ref())
                .ok()
                .filter(|m| (1..=1000).contains(m))
                .ok_or_else(|| {
                    RawError::invalid(Some(m.span().start), format!("{key}.max_ranges"), "expected 1 to 1000")
                })?,
        ),
    };
    Ok(StaticAction {
        source,
        spa: f.spa,
        index: f.index,
        not_found_page: f.not_found_page.map(PathBuf::from),
        listing: f.listing,
        dotfiles,
        follow_symlinks: f.follow_symlinks,
        immutable,
        cache_control: f.cache_control.map(Spanned::into_inner),
        precompressed: f.precompressed.unwrap_or(true),
        compress: f.compress.unwrap_or(true),
        compress_min_size: opt_size(f.compress_min_size.as_ref(), &format!("{key}.compress_min_size"))?,
        compress_max_size: opt_size(f.compress_max_size.as_ref(), &format!("{key}.compress_max_size"))?,
        max_ranges,
        sendfile: f.sendfile.unwrap_or(true),
    })
}
