//! The request path: a short sequence of named phases.
//!
//! 1. [`Worker::handle`] — *request filter*: client address, request id, host and
//!    path normalisation; malformed requests end here with 400.
//! 2. *route*: the [`Router`] picks a site and route (or 421/404/405).
//! 3. *action*: local responses (`respond`, `redirect`) are built directly; proxy
//!    routes continue with:
//!    - [`Worker::proxy`] *upstream peer*: pick a target of the pool;
//!    - *upstream request filter*: rewrite the path, set Host and forwarding
//!      headers, strip hop-by-hop headers;
//!    - *send* with the response-header timeout; failures become 502/504;
//!    - *response filter*: strip hop-by-hop headers, start upgrade tunnels.
//! 4. *logging*: every response carries the request id, and its body carries the
//!    access-log record, written when the body ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_balance::{
    Balancer, Health, HealthState, PassiveConfig, Policy, RetryBudget, SelectKey, StickyCookie, TargetSpec,
};
use gatehouse_config::{Action, Balance, Config, ProxyAction};
use gatehouse_observe::{AccessLogSender, AccessRecord};
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;

use gatehouse_policy::{ConcurrencyGuard, Decision, is_html_type};

use crate::body::{
    BodyFault, BodyRules, ClientBody, InFlight, PendingLog, RequestBody, RequestBodyError, ResponseBody,
    complete_headers,
};
use crate::clock;
use crate::forwarding::{self, PeerInfo, ProxyHeaders, X_REQUEST_ID};
use crate::h1::ExchangeError;
use crate::idle::Activity;
use crate::path::{self, PathError};
use crate::policies::{self, PolicySet};
use crate::pool::{SendError, TargetPool};
use crate::request_id;
use crate::router::{self, CompiledRoute, Match, Router};

/// State shared by all workers for one configuration.
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) router: Router,
    pub(crate) access_log: Option<AccessLogSender>,
    /// Health of every target, by upstream then target index, shared by all
    /// workers and the health checker.
    pub(crate) health: Vec<Vec<Arc<Health>>>,
    /// Sticky-cookie signing keys by upstream name (configured, or random per
    /// process).
    pub(crate) cookie_keys: std::collections::HashMap<String, Vec<u8>>,
    /// Rate limiters, upstream concurrency limits, connection counts.
    pub(crate) policies: PolicySet,
    /// HTTP/2 settings of client connections (from `[limits]`): prior
    /// knowledge, and HTTPS connections whose ALPN chose `h2`.
    pub(crate) http: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    /// HTTP/1.1 settings of the client connections hyper serves: HTTPS ones,
    /// and plain ones handed over by `front.rs`. Never switches to HTTP/2.
    pub(crate) http1: Arc<hyper::server::conn::http1::Builder>,
    /// Per-site HTTPS rules (redirects, HSTS, SNI check, ACME answers).
    pub(crate) tls: crate::tls::SitesTls,
}

impl Shared {
    /// Builds the state of one configuration. With `previous` (a reload), the
    /// health records and cookie keys of unchanged upstreams carry over (see
    /// `generation.rs`).
    pub(crate) fn new(
        config: Arc<Config>,
        access_log: Option<AccessLogSender>,
        previous: Option<&Shared>,
    ) -> Result<Self, crate::EdgeError> {
        let health = config
            .upstreams
            .iter()
            .map(|u| {
                let passive = PassiveConfig {
                    failures: u.passive.failures,
                    cooldown: u.passive.cooldown,
                    max_cooldown: u.passive.max_cooldown,
                };
                let start_up = u.health.as_ref().is_none_or(|h| !h.wait_healthy);
                u.targets
                    .iter()
                    .map(|t| {
                        crate::generation::previous_health(previous, &u.name, t, passive)
                            .unwrap_or_else(|| Arc::new(Health::new(format!("{}/{}", u.name, t.id), start_up, passive)))
                    })
                    .collect()
            })
            .collect();
        let cookie_keys = config
            .upstreams
            .iter()
            .filter_map(|u| match &u.balance {
                Balance::Cookie { secret, .. } => Some((
                    u.name.clone(),
                    match secret {
                        Some(s) => s.as_bytes().to_vec(),
                        // A random key survives reloads, so issued cookies stay valid.
                        None => crate::generation::previous_cookie_key(previous, &u.name)
                            .unwrap_or_else(|| (0..32).map(|_| fastrand::u8(..)).collect()),
                    },
                )),
                _ => None,
            })
            .collect();
        Ok(Self {
            router: Router::new(&config)?,
            policies: PolicySet::new(&config, previous.map(|p| &p.policies))?,
            http: Arc::new(crate::server::http_builder(&config.limits)),
            http1: Arc::new(crate::server::http1_builder(&config.limits)),
            config,
            access_log,
            health,
            cookie_keys,
            tls: crate::tls::SitesTls::default(),
        })
    }
}

/// Retries always allowed per window, so quiet routes can retry at all.
const RETRY_MIN_PER_WINDOW: u32 = 10;
/// Window over which the retry budget is counted.
const RETRY_WINDOW: Duration = Duration::from_secs(10);
/// Most attempts per request the config allows (see `retries.attempts`).
const MAX_ATTEMPTS: usize = 10;

/// One worker thread's view: the shared config plus its own upstream connection
/// pools, so pooled connections never cross threads.
pub(crate) struct Worker {
    shared: Arc<Shared>,
    upstreams: Vec<UpstreamClient>,
}

struct UpstreamClient {
    targets: Vec<TargetInfo>,
    balancer: Balancer,
    /// What the balancer hashes or pins on.
    key: KeyKind,
    /// Longest wait from sending a request to its response head.
    response_timeout: Duration,
    attempts: u32,
    retry_on_status: Vec<u16>,
    /// Largest idempotent request body read ahead so it can be retried.
    retry_buffer: u64,
    budget: RetryBudget,
    /// Count in-flight requests per target (least_conn and p2c need them).
    track_load: bool,
    /// Retry-After for "every target is down": the health-check interval.
    check_interval: Option<Duration>,
}

enum KeyKind {
    None,
    ClientIp,
    Header(http::HeaderName),
    Cookie(StickyCookie),
}

struct TargetInfo {
    pool: Arc<TargetPool>,
    /// `Host` header value used when the client's host is not preserved.
    host_header: HeaderValue,
}

/// Per-connection facts, computed once per connection.
pub(crate) struct ConnCtx {
    pub(crate) peer: PeerInfo,
    /// `http` or `https`, for forwarding headers.
    pub(crate) proto: &'static str,
    /// Requests started on this connection (for `keepalive_requests`).
    pub(crate) requests: AtomicU32,
    /// The TLS server name (SNI) the client asked for, lower-case.
    pub(crate) sni: Option<Box<str>>,
    /// Plain-HTTP connections: the queue through which static responses send
    /// file ranges with `sendfile(2)` (HTTP/1 only).
    pub(crate) sendfile: Option<gatehouse_files::Sendfile>,
    /// HTTP/2 connections: their open requests, so an idle one can be closed
    /// (`idle.rs`).
    pub(crate) activity: Option<Arc<Activity>>,
}

impl ConnCtx {
    pub(crate) fn new(peer: PeerInfo, proto: &'static str) -> Self {
        Self {
            peer,
            proto,
            requests: AtomicU32::new(0),
            sni: None,
            sendfile: None,
            activity: None,
        }
    }

    /// Records the TLS server name of the connection.
    pub(crate) fn with_sni(mut self, sni: Option<Box<str>>) -> Self {
        self.sni = sni;
        self
    }
}

/// What the request path learned about a request: for the response filter and
/// the access log.
struct Ctx<'a> {
    request_id: HeaderValue,
    client_ip: std::net::IpAddr,
    route: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    upstream_duration: Option<Duration>,
    bytes_in: Option<Arc<AtomicU64>>,
    /// The matched route, whose policies shape the response.
    matched: Option<&'a CompiledRoute>,
    /// The rate-limit decision, reported in `RateLimit` headers.
    decision: Option<Decision>,
    /// `Origin` of a request on a CORS route.
    origin: Option<HeaderValue>,
    /// The response is a CORS preflight answer (complete as it is).
    preflight: bool,
    /// Concurrency slots held until the response body ends.
    guards: Vec<ConcurrencyGuard>,
    /// Close the connection after this response (the request body was not read).
    close: bool,
    /// `Strict-Transport-Security` of the site, on HTTPS.
    hsts: Option<HeaderValue>,
}

impl Worker {
    /// Builds one worker's state for `shared`. With `previous` (a reload), the
    /// connection pools of unchanged targets carry over (see `generation.rs`).
    pub(crate) fn new(shared: Arc<Shared>, previous: Option<&Worker>) -> Self {
        let upstreams = shared
            .config
            .upstreams
            .iter()
            .zip(&shared.health)
            .map(|(u, health)| {
                let specs = u
                    .targets
                    .iter()
                    .zip(health)
                    .map(|(t, h)| TargetSpec::new(&t.id, t.weight, h.clone()))
                    .collect();
                let (policy, key) = match &u.balance {
                    Balance::RoundRobin => (Policy::RoundRobin, KeyKind::None),
                    Balance::LeastConn => (Policy::LeastConn, KeyKind::None),
                    Balance::P2c => (Policy::P2c, KeyKind::None),
                    Balance::IpHash => (Policy::IpHash, KeyKind::ClientIp),
                    Balance::HeaderHash(name) => (Policy::HeaderHash, KeyKind::Header(name.clone())),
                    Balance::Cookie { name, .. } => (
                        Policy::Cookie,
                        KeyKind::Cookie(StickyCookie::new(name.clone(), &shared.cookie_keys[&u.name])),
                    ),
                };
                UpstreamClient {
                    targets: u
                        .targets
                        .iter()
                        .map(|t| TargetInfo {
                            host_header: HeaderValue::from_str(t.authority.as_str())
                                .unwrap_or(HeaderValue::from_static("localhost")),
                            pool: crate::generation::previous_pool(previous, u, t)
                                .unwrap_or_else(|| TargetPool::new(t.clone(), u)),
                        })
                        .collect(),
                    balancer: Balancer::new(policy, specs),
                    key,
                    response_timeout: u.response_timeout,
                    attempts: u.retries.attempts,
                    retry_on_status: u.retries.on_status.clone(),
                    retry_buffer: u.retries.buffer,
                    budget: RetryBudget::new(u.retries.budget, RETRY_MIN_PER_WINDOW, RETRY_WINDOW),
                    track_load: matches!(u.balance, Balance::LeastConn | Balance::P2c),
                    check_interval: u.health.as_ref().map(|h| h.interval),
                }
            })
            .collect();
        Self { shared, upstreams }
    }

    /// The configuration this worker state was built for.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The connection pool of `upstream`'s target `id`, if it has one.
    pub(crate) fn pool(&self, upstream: &str, id: &str) -> Option<&Arc<TargetPool>> {
        let index = self.shared.config.upstreams.iter().position(|u| u.name == upstream)?;
        self.upstreams[index]
            .targets
            .iter()
            .map(|t| &t.pool)
            .find(|p| &*p.target.id == id)
    }

    /// Handles one request from a client connection. Never fails: every problem
    /// becomes a response, whose `HeaderMap` holds all its fields.
    pub(crate) async fn handle(
        self: Arc<Self>,
        conn: Arc<ConnCtx>,
        req: Request<ClientBody>,
    ) -> Response<ResponseBody> {
        let mut resp = self.handle_passing(conn, req).await;
        complete_headers(&mut resp);
        resp
    }

    /// [`handle`](Self::handle), except that a proxied answer's header fields
    /// may stay in the response body ([`ResponseBody::take_passed_fields`]),
    /// for a writer that takes them from there (`front.rs`). Fields in the
    /// `HeaderMap` replace passed ones of the same name.
    ///
    /// Takes the worker and the connection by `Arc`, so a connection's loop
    /// can hand on this future as it is, without an `async` block around it:
    /// each level of futures copies the request and the response once more.
    pub(crate) async fn handle_passing(
        self: Arc<Self>,
        conn: Arc<ConnCtx>,
        req: Request<ClientBody>,
    ) -> Response<ResponseBody> {
        // Open on its HTTP/2 connection until the response body ends.
        let open = conn.activity.as_ref().map(Activity::begin);
        let start = clock::now().into_std();
        let time = clock::system_now();
        let trusted = &self.shared.config.server.trusted_proxies;

        let client_ip = if conn.peer.trusted {
            forwarding::client_ip(req.headers(), conn.peer.ip, trusted)
        } else {
            conn.peer.ip
        };
        // Looked up only where it may be believed.
        let incoming_id = conn.peer.trusted.then(|| req.headers().get(&X_REQUEST_ID)).flatten();
        let request_id = match incoming_id {
            Some(id) if request_id::acceptable(id) => id.clone(),
            _ => request_id::generate(),
        };
        // The authority of an absolute-form (HTTP/1) or HTTP/2 request wins over
        // the Host header (RFC 9112 §3.2.2).
        let host = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => req.headers().get(header::HOST).cloned(),
        };
        let bytes_in = (self.shared.access_log.is_some() && req.body().as_ref().is_some_and(|b| !b.is_end_stream()))
            .then(|| Arc::new(AtomicU64::new(0)));
        let mut ctx = Ctx {
            request_id,
            client_ip,
            route: None,
            upstream: None,
            upstream_duration: None,
            bytes_in,
            matched: None,
            decision: None,
            origin: None,
            preflight: false,
            guards: Vec::new(),
            close: false,
            hsts: None,
        };
        let served = conn.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let log_parts = self
            .shared
            .access_log
            .as_ref()
            .map(|_| (req.method().clone(), req.uri().clone(), req.version()));

        let version = req.version();
        // Routing, route policies and the action, awaited here rather than in
        // a function of their own (one level of futures less).
        let mut resp = match policies::hygiene(&req) {
            Ok(()) => match self.select_route(&conn, &mut ctx, host.as_ref(), &req) {
                Err(resp) => resp,
                Ok((route, normalized)) => match self.route_policies(&mut ctx, route, &req).await {
                    Some(refused) => refused,
                    None => match &route.action {
                        Action::Proxy(p) => {
                            self.proxy(&conn, &mut ctx, route, p, req, normalized, host.as_ref(), start)
                                .await
                        }
                        _ => self.serve_local(&conn, &mut ctx, route, normalized, req).await,
                    },
                },
            },
            Err(why) => {
                ctx.close = true;
                local_error(StatusCode::BAD_REQUEST, why, &ctx.request_id)
            }
        };
        self.response_filter(&mut ctx, &mut resp);
        if let Some(hsts) = ctx.hsts.take() {
            resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, hsts);
        }
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS
            && (ctx.close || (version == Version::HTTP_11 && served >= self.shared.config.limits.keepalive_requests))
        {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp.headers_mut().insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
        if let (Some(sender), Some((method, uri, version))) = (&self.shared.access_log, log_parts) {
            let record = AccessRecord {
                time,
                request_id: ctx.request_id,
                client_ip,
                method,
                host,
                uri,
                version,
                status: resp.status().as_u16(),
                bytes_in: 0,
                bytes_out: 0,
                duration: Duration::ZERO,
                route: ctx.route,
                upstream: ctx.upstream,
                upstream_duration: ctx.upstream_duration,
            };
            resp.body_mut().set_log(Box::new(PendingLog {
                sender: sender.clone(),
                record,
                start,
                bytes_in: ctx.bytes_in,
            }));
        }
        if let Some(open) = open {
            resp.body_mut().hold_open(open);
        }
        resp
    }

    /// *Response filter*: rate-limit fields, CORS, security headers and header
    /// rules of the matched route (on the edge's own answers too, so a browser
    /// app sees a 429 or 503 rather than a CORS error).
    fn response_filter(&self, ctx: &mut Ctx<'_>, resp: &mut Response<ResponseBody>) {
        let Some(route) = ctx.matched else { return };
        // A proxied answer's fields go into the map first when anything below
        // reads them or removes or appends to them; otherwise they are passed
        // on as they are. (Rate-limit fields only replace, which a field in the
        // map does to passed ones of its name anyway.)
        if let Some(fields) = resp.body().passed_fields() {
            let changes = (!ctx.preflight && route.policy.cors.is_some())
                || fields.get(&header::CONTENT_TYPE).is_some_and(is_html_type)
                || !route.site.policy.response_headers.is_empty()
                || !route.policy.response_headers.is_empty();
            if changes {
                complete_headers(resp);
            }
        }
        let h = resp.headers_mut();
        if let Some(d) = &ctx.decision {
            d.write_headers(h);
        }
        if !ctx.preflight {
            if let Some(cors) = &route.policy.cors {
                cors.apply(ctx.origin.as_ref(), h);
            }
        }
        // On pages and files: what a browser renders or sniffs. API answers
        // (JSON and the like) from upstream routes are left as the backend sent them.
        if matches!(route.action, Action::Static(_)) || is_html(h) {
            route.policy.security_headers.apply(h);
        }
        route.site.policy.response_headers.apply(h);
        route.policy.response_headers.apply(h);
        if !ctx.guards.is_empty() {
            resp.body_mut().hold(std::mem::take(&mut ctx.guards));
        }
    }

    /// *Route* policies, in order: IP rules, CORS preflight, rate limit,
    /// concurrency limit, declared body size. `Some` is the refusal.
    async fn route_policies(
        &self,
        ctx: &mut Ctx<'_>,
        route: &CompiledRoute,
        req: &Request<ClientBody>,
    ) -> Option<Response<ResponseBody>> {
        let (site_ip, route_ip) = (&route.site.policy.ip_rules, &route.policy.ip_rules);
        if (!site_ip.is_empty() && !site_ip.check(ctx.client_ip).is_allowed())
            || (!route_ip.is_empty() && !route_ip.check(ctx.client_ip).is_allowed())
        {
            return Some(local_error(
                StatusCode::FORBIDDEN,
                "this client address is not allowed here",
                &ctx.request_id,
            ));
        }
        if let Some(cors) = &route.policy.cors {
            ctx.origin = req.headers().get(header::ORIGIN).cloned();
            // Before the rate limit: browsers send preflights on their own.
            if let Some(preflight) = cors.preflight(req.method(), req.headers()) {
                ctx.preflight = true;
                return Some(preflight.into_response().map(ResponseBody::full));
            }
        }
        if let Some((limiter, key)) = route
            .policy
            .rate_limit
            .and_then(|i| self.shared.policies.limiters.get(i))
        {
            let decision = limiter.check(&key.key(ctx.client_ip, req.headers(), None)).await;
            let allowed = decision.allowed;
            ctx.decision = Some(decision);
            if !allowed {
                return Some(local_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate limit exceeded",
                    &ctx.request_id,
                ));
            }
        }
        if let Some(limit) = &route.in_flight {
            match limit.try_acquire() {
                Some(guard) => ctx.guards.push(guard),
                None => return Some(shed(&ctx.request_id)),
            }
        }
        if let Some(max) = route.policy.max_body_size {
            if policies::content_length(req.headers()).is_some_and(|n| n > max) {
                // Refused before reading: the body is left unread, so the
                // connection cannot be reused.
                ctx.close = true;
                return Some(local_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large",
                    &ctx.request_id,
                ));
            }
        }
        None
    }

    /// The route for a request, and its path when normalizing changed it
    /// (`None`: the request's own path is normal); or the answer when there is
    /// none (bad Host or path, unknown host, no route, method not allowed, or an
    /// HTTPS rule that answers first).
    // The answer is used at once by the caller; boxing it would only add an
    // allocation to every refused request.
    #[allow(clippy::result_large_err)]
    fn select_route<'a>(
        &'a self,
        conn: &ConnCtx,
        ctx: &mut Ctx<'a>,
        host: Option<&HeaderValue>,
        req: &Request<ClientBody>,
    ) -> Result<(&'a CompiledRoute, Option<String>), Response<ResponseBody>> {
        let host_name = match host {
            Some(h) => match router::normalize_host(h.as_bytes()) {
                Ok(name) => Some(name),
                Err(()) => {
                    return Err(local_error(
                        StatusCode::BAD_REQUEST,
                        "invalid Host header",
                        &ctx.request_id,
                    ));
                }
            },
            None if req.version() == Version::HTTP_11 => {
                return Err(local_error(
                    StatusCode::BAD_REQUEST,
                    "missing Host header",
                    &ctx.request_id,
                ));
            }
            None => None,
        };
        // HTTPS rules before routing: ACME answers, redirect, SNI check, HSTS.
        let (router, tls) = (&self.shared.router, &self.shared.tls);
        let name = host_name.as_deref();
        if let Some(resp) = tls.before_routing(router, conn, name, req, &ctx.request_id, &mut ctx.hsts) {
            return Err(resp);
        }
        let path = match path::normalize(req.uri().path()) {
            Ok(p) => p,
            Err(e) => {
                let why = match e {
                    PathError::NotAbsolute => "request target must be an absolute path",
                    PathError::AboveRoot => "path climbs above the root",
                    PathError::BadEscape => "malformed percent-encoding in path",
                };
                return Err(local_error(StatusCode::BAD_REQUEST, why, &ctx.request_id));
            }
        };
        let route = match self.shared.router.route(host_name.as_deref(), &path, req.method()) {
            Match::Route(r) => r,
            Match::UnknownHost => {
                return Err(local_error(
                    StatusCode::MISDIRECTED_REQUEST,
                    "no site is configured for this host",
                    &ctx.request_id,
                ));
            }
            Match::NoRoute => {
                return Err(local_error(
                    StatusCode::NOT_FOUND,
                    "no route matches this path",
                    &ctx.request_id,
                ));
            }
            Match::MethodNotAllowed(methods) => {
                let mut resp = local_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed on this route",
                    &ctx.request_id,
                );
                let allow = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    resp.headers_mut().insert(header::ALLOW, v);
                }
                return Err(resp);
            }
        };
        ctx.route = Some(route.name.clone());
        ctx.matched = Some(route);
        // `None` when the path was already normal: the original is forwarded.
        let normalized = match path {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(s) => Some(s),
        };
        Ok((route, normalized))
    }

    /// The answer of a route that does not proxy: redirect, respond, static.
    async fn serve_local(
        &self,
        conn: &ConnCtx,
        ctx: &mut Ctx<'_>,
        route: &CompiledRoute,
        normalized: Option<String>,
        req: Request<ClientBody>,
    ) -> Response<ResponseBody> {
        let path = normalized.as_deref().unwrap_or(req.uri().path());
        match &route.action {
            Action::Redirect(r) => {
                let mut location = r.to.clone();
                if r.keep_path {
                    let rest = route.rest(path);
                    if location.ends_with('/') && rest.starts_with('/') {
                        location.pop();
                    }
                    location.push_str(rest);
                    if let Some(q) = req.uri().query() {
                        location.push('?');
                        location.push_str(q);
                    }
                }
                let mut resp = Response::new(ResponseBody::empty());
                *resp.status_mut() = r.status;
                match HeaderValue::from_str(&location) {
                    Ok(v) => {
                        resp.headers_mut().insert(header::LOCATION, v);
                        resp
                    }
                    Err(_) => local_error(
                        StatusCode::BAD_REQUEST,
                        "cannot build redirect location",
                        &ctx.request_id,
                    ),
                }
            }
            Action::Respond(r) => {
                let head = req.method() == Method::HEAD;
                let body = if head { Bytes::new() } else { route.respond_body.clone() };
                let mut resp = Response::new(ResponseBody::full(body));
                *resp.status_mut() = r.status;
                if head && r.status != StatusCode::NO_CONTENT && r.status != StatusCode::NOT_MODIFIED {
                    // The length a GET gets (RFC 9110 §9.3.2); never on 204
                    // and 304 (§8.6).
                    resp.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(route.respond_body.len()));
                }
                if let Ok(ct) = HeaderValue::from_str(&r.content_type) {
                    resp.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                resp
            }
            Action::Static(_) => {
                let Some(files) = &route.files else {
                    return local_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "static route not set up",
                        &ctx.request_id,
                    );
                };
                // The static server sees the path below the route prefix, and
                // decodes it (exactly once) itself.
                let rest = route.rest(path);
                let mut target = String::with_capacity(rest.len() + 32);
                target.push_str(if rest.is_empty() { "/" } else { rest });
                if let Some(q) = req.uri().query() {
                    target.push('?');
                    target.push_str(q);
                }
                // Boxed: file serving's state is large, and would otherwise
                // size (and be copied with) every request's future.
                let mut resp = Box::pin(files.serve(req.method(), &target, req.headers())).await;
                if let Some(queue) = &conn.sendfile {
                    // HTTP/2 frames its data itself; only HTTP/1 writes regions.
                    if req.version() <= http::Version::HTTP_11 && files.sendfile() {
                        resp.body_mut().use_sendfile(queue);
                    }
                }
                resp.map(ResponseBody::file)
            }
            _ => local_error(
                StatusCode::NOT_IMPLEMENTED,
                "route action not available",
                &ctx.request_id,
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn proxy(
        &self,
        conn: &ConnCtx,
        ctx: &mut Ctx<'_>,
        route: &CompiledRoute,
        action: &ProxyAction,
        mut req: Request<ClientBody>,
        normalized: Option<String>,
        host: Option<&HeaderValue>,
        start: Instant,
    ) -> Response<ResponseBody> {
        let Some(pool) = self.upstreams.get(action.upstream) else {
            return local_error(StatusCode::INTERNAL_SERVER_ERROR, "upstream missing", &ctx.request_id);
        };
        if let Some(Some(limit)) = self.shared.policies.upstream_limits.get(action.upstream) {
            match limit.try_acquire() {
                Some(guard) => ctx.guards.push(guard),
                None => return shed(&ctx.request_id),
            }
        }
        // Upstream request filter (the part that does not depend on the target).
        let wants_upgrade = req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE);
        let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let path_and_query = match upstream_path(&parts.uri, normalized.as_deref(), route, action) {
            Some(pq) => pq,
            None => return local_error(StatusCode::BAD_REQUEST, "cannot build upstream path", &ctx.request_id),
        };
        // Origin-form (`/path?query`): the connection already goes to the target.
        parts.uri = Uri::from(path_and_query);
        let upgrade = forwarding::strip_hop_by_hop(&mut parts.headers);
        let upgrade = upgrade.filter(|_| client_upgrade.is_some());
        if let Some(proto) = &upgrade {
            parts.headers.insert(header::UPGRADE, proto.clone());
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        // Operator rules first, then the identity headers gatehouse vouches for.
        policies::strip_internal_headers(&mut parts.headers);
        route.site.policy.request_headers.apply(&mut parts.headers);
        route.policy.request_headers.apply(&mut parts.headers);
        // Host is set for each attempt; these go into the head, not the map.
        let proxy_headers = ProxyHeaders::new(&parts.headers, &conn.peer, conn.proto, host, ctx.request_id.clone());
        parts.version = Version::HTTP_11;

        // What the balancer keys on.
        let ip_bytes: [u8; 16] = match ctx.client_ip {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        let header_key: Option<Vec<u8>> = match &pool.key {
            KeyKind::Header(name) => proxy_headers
                .get(name)
                .or_else(|| parts.headers.get(name))
                .map(|v| v.as_bytes().to_vec()),
            _ => None,
        };
        let key = match &pool.key {
            KeyKind::None => SelectKey::None,
            KeyKind::ClientIp => SelectKey::Hash(&ip_bytes),
            KeyKind::Header(_) => SelectKey::Hash(header_key.as_deref().unwrap_or(&ip_bytes)),
            KeyKind::Cookie(sticky) => sticky
                .find(parts.headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes))
                .map_or(SelectKey::None, SelectKey::Pinned),
        };
        let mut body = RequestBody::new(body, ctx.bytes_in.clone());
        let fault = (!body.is_end_stream()).then(|| Arc::new(BodyFault::default()));
        if let Some(fault) = &fault {
            let limits = &self.shared.config.limits;
            let rules = BodyRules {
                max: route.policy.max_body_size,
                timeout: limits.body_timeout,
                min_rate: limits.body_min_rate,
            };
            body = body.with_rules(rules, fault.clone());
        }
        let client_fault = || fault.as_ref().is_some_and(|f| f.too_large() || f.too_slow());
        // A small body of an idempotent request is read first, so the request
        // can be sent again after a reset or a retried status.
        let idempotent = is_idempotent(&parts.method);
        let mut buffered = None;
        if pool.attempts > 1
            && idempotent
            && fault.is_some()
            && policies::content_length(&parts.headers).is_some_and(|n| n <= pool.retry_buffer)
        {
            match body.collect().await {
                Ok(collected) => {
                    let data = collected.to_bytes();
                    body = RequestBody::buffered(data.clone());
                    buffered = Some(data);
                }
                Err(e) => {
                    ctx.close = true;
                    let (status, why) = match e {
                        RequestBodyError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
                        RequestBodyError::TooSlow => (StatusCode::REQUEST_TIMEOUT, "request body too slow"),
                        RequestBodyError::Client(_) => (StatusCode::BAD_REQUEST, "request body could not be read"),
                    };
                    return local_error(status, why, &ctx.request_id);
                }
            }
        }
        // Requests that can be sent again: without a body when statuses are
        // retried (a copy of the head is kept), or with a buffered body.
        let replay = (idempotent
            && ((body.is_end_stream() && buffered.is_none() && !pool.retry_on_status.is_empty())
                || buffered.is_some()))
        .then(|| (parts.method.clone(), parts.uri.clone(), parts.headers.clone(), buffered));
        let rebuild = |(method, uri, headers, data): &(http::Method, Uri, http::HeaderMap, Option<Bytes>)| {
            let mut r = Request::new(match data {
                Some(d) => RequestBody::buffered(d.clone()),
                None => RequestBody::empty(),
            });
            *r.method_mut() = method.clone();
            *r.uri_mut() = uri.clone();
            *r.headers_mut() = headers.clone();
            r
        };
        let mut pending = Some(Request::from_parts(parts, body));
        if pool.attempts > 1 {
            pool.budget.record_request(clock::now().into_std());
        }

        // Upstream peer and send, retrying on another target when allowed.
        let mut tried = [usize::MAX; MAX_ATTEMPTS];
        let mut n_tried = 0;
        let mut last_error: Option<(StatusCode, &'static str)> = None;
        let outcome = loop {
            if pending.is_none() {
                break None;
            }
            let Some(choice) = pool.balancer.select(key, &tried[..n_tried]) else {
                break None;
            };
            tried[n_tried.min(MAX_ATTEMPTS - 1)] = choice.index;
            n_tried += 1;
            let Some(target) = pool.targets.get(choice.index) else {
                break None;
            };
            let health = &self.shared.health[action.upstream][choice.index];
            ctx.upstream = Some(target.pool.target.id.clone());
            let host_header = match (action.preserve_host, host) {
                (true, Some(h)) => h.clone(),
                _ => target.host_header.clone(),
            };
            let in_flight = if pool.track_load {
                pool.balancer.acquire(choice.index).map(InFlight)
            } else {
                None
            };
            let may_retry = || (n_tried as u32) < pool.attempts && pool.budget.try_retry(clock::now().into_std());

            // The exchange's state is on the heap (`h1.rs`), so this future
            // is small. The response timeout runs on the connection's timer.
            let sent = target
                .pool
                .send(&mut pending, &proxy_headers, &host_header, pool.response_timeout)
                .await;
            ctx.upstream_duration = Some(clock::now().into_std().saturating_duration_since(start));
            match sent {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_server_error() {
                        health.record_failure();
                        if pool.retry_on_status.contains(&status.as_u16()) {
                            if let Some(replay) = &replay {
                                if may_retry() {
                                    tracing::debug!(
                                        request_id = ?ctx.request_id, upstream = %target.pool.target.id,
                                        status = status.as_u16(), "Retrying on another target."
                                    );
                                    last_error = Some((StatusCode::BAD_GATEWAY, "upstream failed"));
                                    pending = Some(rebuild(replay));
                                    continue;
                                }
                            }
                        }
                    } else {
                        health.record_success();
                    }
                    break Some((resp, in_flight, choice));
                }
                Err(_) if client_fault() => break None,
                Err(SendError::Exchange {
                    source: ExchangeError::ResponseTimeout(timeout),
                    ..
                }) => {
                    health.record_failure();
                    tracing::warn!(
                        request_id = ?ctx.request_id, route = %route.name, upstream = %target.pool.target.id,
                        ?timeout, "Upstream did not send response headers in time."
                    );
                    // Not retried: the request may still be running upstream.
                    last_error = Some((StatusCode::GATEWAY_TIMEOUT, "upstream timed out"));
                    break None;
                }
                Err(SendError::Exchange {
                    source: ExchangeError::RequestBody(e),
                    ..
                }) => {
                    // The client's side failed (it went away mid-body): not the
                    // target's fault, and nothing to retry.
                    tracing::debug!(request_id = ?ctx.request_id, error = %e, "Request body failed.");
                    ctx.close = true;
                    last_error = Some((StatusCode::BAD_REQUEST, "request body could not be read"));
                    break None;
                }
                Err(e) => {
                    health.record_failure();
                    tracing::warn!(
                        request_id = ?ctx.request_id, route = %route.name, upstream = %target.pool.target.id,
                        error = %error_chain(&e), "Upstream request failed."
                    );
                    last_error = Some(classify(&e));
                    // The request itself when it did not go out, else a copy.
                    let again = pending.take().or_else(|| replay.as_ref().map(rebuild));
                    if again.is_some() && may_retry() {
                        pending = again;
                        continue;
                    }
                    break None;
                }
            }
        };
        let Some((mut resp, in_flight, choice)) = outcome else {
            if let Some(fault) = &fault {
                // The client, not the upstream, broke the exchange.
                if fault.too_large() {
                    ctx.close = true;
                    return local_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large", &ctx.request_id);
                }
                if fault.too_slow() {
                    ctx.close = true;
                    return local_error(StatusCode::REQUEST_TIMEOUT, "request body too slow", &ctx.request_id);
                }
            }
            return match last_error {
                Some((status, why)) => local_error(status, why, &ctx.request_id),
                None => self.all_down(pool, action.upstream, &ctx.request_id),
            };
        };
        // Response filter.
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return local_error(
                    StatusCode::BAD_GATEWAY,
                    "upstream switched protocols unasked",
                    &ctx.request_id,
                );
            };
            let request_id = ctx.request_id.clone();
            let (mut parts, mut body) = resp.into_parts();
            // hyper writes this answer (the client's request asked to upgrade).
            if let Some(fields) = body.take_fields() {
                fields.merge_into(&mut parts.headers);
            }
            let Some(mut upstream) = body.into_upgraded() else {
                return local_error(StatusCode::BAD_GATEWAY, "upstream connection lost", &ctx.request_id);
            };
            tokio::spawn(async move {
                match client_upgrade.await {
                    Ok(client) => {
                        let mut client = TokioIo::new(client);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                            tracing::debug!(?request_id, error = %e, "Upgraded connection ended with an error.");
                        }
                    }
                    Err(e) => tracing::debug!(?request_id, error = %e, "Client upgrade did not complete."),
                }
            });
            return Response::from_parts(parts, ResponseBody::empty());
        }
        // Hop-by-hop fields were left out when the head was read (h1.rs).
        if choice.set_cookie {
            if let (KeyKind::Cookie(sticky), Some(spec)) = (&pool.key, pool.balancer.target(choice.index)) {
                // Added beside the upstream's own cookies, not instead of them.
                if let Some(fields) = resp.body_mut().take_fields() {
                    fields.merge_into(resp.headers_mut());
                }
                if let Ok(v) = HeaderValue::from_str(&sticky.set_cookie(spec.id)) {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
            }
        }
        resp.map(|body| ResponseBody::upstream(body, in_flight))
    }

    /// 503 when no target can take a request, with `Retry-After` set to when one
    /// may be back: the soonest end of an ejection, or the health-check interval.
    fn all_down(&self, pool: &UpstreamClient, upstream: usize, request_id: &HeaderValue) -> Response<ResponseBody> {
        let soonest_ejection = self.shared.health[upstream]
            .iter()
            .filter(|h| h.state() == HealthState::Ejected)
            .map(|h| h.ejected_for())
            .min();
        let wait = soonest_ejection
            .or(pool.check_interval)
            .unwrap_or(Duration::from_secs(1));
        tracing::warn!(
            upstream = %self.shared.config.upstreams[upstream].name,
            "No healthy target for a request."
        );
        let mut resp = local_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream target",
            request_id,
        );
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        resp
    }
}

/// Whether a response is an HTML page (`text/html` or `application/xhtml+xml`).
fn is_html(h: &http::HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE).is_some_and(|v| is_html_type(v.as_bytes()))
}

/// Methods that may be repeated without changing the outcome (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    )
}

/// Builds the path and query sent upstream: the normalised path, with the route
/// prefix rewritten if configured, and the original query.
fn upstream_path(
    uri: &Uri,
    normalized: Option<&str>,
    route: &CompiledRoute,
    action: &ProxyAction,
) -> Option<PathAndQuery> {
    if normalized.is_none() && action.rewrite.is_none() {
        return uri
            .path_and_query()
            .cloned()
            .or_else(|| Some(PathAndQuery::from_static("/")));
    }
    let path = normalized.unwrap_or_else(|| uri.path());
    let mut out = String::with_capacity(path.len() + 16);
    match &action.rewrite {
        Some(replacement) => {
            out.push_str(replacement.trim_end_matches('/'));
            out.push_str(route.rest(path));
            if out.is_empty() {
                out.push('/');
            }
        }
        None => out.push_str(path),
    }
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    PathAndQuery::from_maybe_shared(Bytes::from(out)).ok()
}

/// Maps a send failure to a status and a short, stable reason.
fn classify(e: &SendError) -> (StatusCode, &'static str) {
    match e {
        SendError::ConnectTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream connect timed out"),
        SendError::Connect { .. } => (StatusCode::BAD_GATEWAY, "upstream connection failed"),
        SendError::Exchange { source, .. } => match source {
            ExchangeError::Closed | ExchangeError::ClosedInHead | ExchangeError::Io(_) => {
                (StatusCode::BAD_GATEWAY, "upstream closed the connection")
            }
            _ => (StatusCode::BAD_GATEWAY, "invalid upstream response"),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// 503 for a request over a concurrency limit: no queue, come back in a second.
fn shed(request_id: &HeaderValue) -> Response<ResponseBody> {
    let mut resp = local_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many requests in flight",
        request_id,
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// A short plain-text error response carrying the request id.
pub(crate) fn local_error(status: StatusCode, why: &str, request_id: &HeaderValue) -> Response<ResponseBody> {
    let body = format!(
        "{} {}: {why} (request id {})\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        request_id.to_str().unwrap_or("-")
    );
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
