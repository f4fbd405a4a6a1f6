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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use gatehouse_config::{Action, Config, ProxyAction};
use gatehouse_observe::{AccessLogSender, AccessRecord};
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::{PendingLog, RequestBody, ResponseBody};
use crate::forwarding::{self, PeerInfo, X_REQUEST_ID};
use crate::path::{self, PathError};
use crate::pool::{SendError, TargetPool};
use crate::request_id;
use crate::router::{self, CompiledRoute, Match, Router};

/// State shared by all workers for one configuration.
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) router: Router,
    pub(crate) access_log: Option<AccessLogSender>,
}

impl Shared {
    pub(crate) fn new(config: Arc<Config>, access_log: Option<AccessLogSender>) -> Result<Self, crate::EdgeError> {
        Ok(Self {
            router: Router::new(&config)?,
            config,
            access_log,
        })
    }
}

/// One worker thread's view: the shared config plus its own upstream connection
/// pools, so pooled connections never cross threads.
pub(crate) struct Worker {
    shared: Arc<Shared>,
    upstreams: Vec<UpstreamClient>,
}

struct UpstreamClient {
    targets: Vec<TargetInfo>,
    next: AtomicUsize,
    response_timeout: Duration,
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
}

/// What the request path learned about a request, for the access log.
struct Ctx {
    request_id: HeaderValue,
    route: Option<Arc<str>>,
    upstream: Option<http::uri::Authority>,
    upstream_duration: Option<Duration>,
    bytes_in: Option<Arc<AtomicU64>>,
}

impl Worker {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let upstreams = shared
            .config
            .upstreams
            .iter()
            .map(|u| UpstreamClient {
                targets: u
                    .targets
                    .iter()
                    .map(|t| TargetInfo {
                        host_header: HeaderValue::from_str(t.authority.as_str())
                            .unwrap_or(HeaderValue::from_static("localhost")),
                        pool: TargetPool::new(t.clone(), u),
                    })
                    .collect(),
                next: AtomicUsize::new(0),
                response_timeout: u.response_timeout,
            })
            .collect();
        Self { shared, upstreams }
    }

    /// Handles one request from a client connection. Never fails: every problem
    /// becomes a response.
    pub(crate) async fn handle(&self, conn: &ConnCtx, req: Request<Incoming>) -> Response<ResponseBody> {
        let start = Instant::now();
        let time = SystemTime::now();
        let trusted = &self.shared.config.server.trusted_proxies;

        let client_ip = if conn.peer.trusted {
            forwarding::client_ip(req.headers(), conn.peer.ip, trusted)
        } else {
            conn.peer.ip
        };
        let request_id = match req.headers().get(&X_REQUEST_ID) {
            Some(id) if conn.peer.trusted && request_id::acceptable(id) => id.clone(),
            _ => request_id::generate(),
        };
        // The authority of an absolute-form (HTTP/1) or HTTP/2 request wins over
        // the Host header (RFC 9112 §3.2.2).
        let host = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => req.headers().get(header::HOST).cloned(),
        };
        let bytes_in =
            (self.shared.access_log.is_some() && !req.body().is_end_stream()).then(|| Arc::new(AtomicU64::new(0)));
        let mut ctx = Ctx {
            request_id,
            route: None,
            upstream: None,
            upstream_duration: None,
            bytes_in,
        };
        let log_parts = self
            .shared
            .access_log
            .as_ref()
            .map(|_| (req.method().clone(), req.uri().clone(), req.version()));

        let mut resp = self.dispatch(conn, &mut ctx, host.as_ref(), req, start).await;

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
        resp
    }

    async fn dispatch(
        &self,
        conn: &ConnCtx,
        ctx: &mut Ctx,
        host: Option<&HeaderValue>,
        req: Request<Incoming>,
        start: Instant,
    ) -> Response<ResponseBody> {
        let host_name = match host {
            Some(h) => match router::normalize_host(h.as_bytes()) {
                Ok(name) => Some(name),
                Err(()) => return local_error(StatusCode::BAD_REQUEST, "invalid Host header", &ctx.request_id),
            },
            None if req.version() == Version::HTTP_11 => {
                return local_error(StatusCode::BAD_REQUEST, "missing Host header", &ctx.request_id);
            }
            None => None,
        };
        let path = match path::normalize(req.uri().path()) {
            Ok(p) => p,
            Err(e) => {
                let why = match e {
                    PathError::NotAbsolute => "request target must be an absolute path",
                    PathError::AboveRoot => "path climbs above the root",
                    PathError::BadEscape => "malformed percent-encoding in path",
                };
                return local_error(StatusCode::BAD_REQUEST, why, &ctx.request_id);
            }
        };
        let route = match self.shared.router.route(host_name.as_deref(), &path, req.method()) {
            Match::Route(r) => r,
            Match::UnknownHost => {
                return local_error(
                    StatusCode::MISDIRECTED_REQUEST,
                    "no site is configured for this host",
                    &ctx.request_id,
                );
            }
            Match::NoRoute => return local_error(StatusCode::NOT_FOUND, "no route matches this path", &ctx.request_id),
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
                return resp;
            }
        };
        ctx.route = Some(route.name.clone());
        match &route.action {
            Action::Proxy(p) => {
                // `None` when the path was already normal: the original is forwarded.
                let normalized = match path {
                    std::borrow::Cow::Borrowed(_) => None,
                    std::borrow::Cow::Owned(s) => Some(s),
                };
                self.proxy(conn, ctx, route, p, req, normalized, host, start).await
            }
            Action::Redirect(r) => {
                let mut location = r.to.clone();
                if r.keep_path {
                    let rest = route.rest(&path);
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
                let body = if req.method() == Method::HEAD {
                    Bytes::new()
                } else {
                    route.respond_body.clone()
                };
                let mut resp = Response::new(ResponseBody::full(body));
                *resp.status_mut() = r.status;
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
                let rest = route.rest(&path);
                let mut target = String::with_capacity(rest.len() + 32);
                target.push_str(if rest.is_empty() { "/" } else { rest });
                if let Some(q) = req.uri().query() {
                    target.push('?');
                    target.push_str(q);
                }
                let resp = files.serve(req.method(), &target, req.headers()).await;
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
        ctx: &mut Ctx,
        route: &CompiledRoute,
        action: &ProxyAction,
        mut req: Request<Incoming>,
        normalized: Option<String>,
        host: Option<&HeaderValue>,
        start: Instant,
    ) -> Response<ResponseBody> {
        let Some(pool) = self.upstreams.get(action.upstream) else {
            return local_error(StatusCode::INTERNAL_SERVER_ERROR, "upstream missing", &ctx.request_id);
        };
        // Upstream peer: round robin over the pool's targets.
        let n = pool.next.fetch_add(1, Ordering::Relaxed);
        let Some(target) = pool.targets.get(n % pool.targets.len().max(1)) else {
            return local_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream has no targets",
                &ctx.request_id,
            );
        };
        ctx.upstream = Some(target.pool.target.authority.clone());

        // Upstream request filter.
        let wants_upgrade = req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE);
        let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let path_and_query = match upstream_path(&parts.uri, normalized.as_deref(), route, action) {
            Some(pq) => pq,
            None => return local_error(StatusCode::BAD_REQUEST, "cannot build upstream path", &ctx.request_id),
        };
        // Origin-form (`/path?query`): the connection already goes to the target.
        parts.uri = Uri::from(path_and_query);
        // Room for the headers added below, so the map grows at most once.
        parts.headers.reserve(6);
        let upgrade = forwarding::strip_hop_by_hop(&mut parts.headers);
        let upgrade = upgrade.filter(|_| client_upgrade.is_some());
        if let Some(proto) = &upgrade {
            parts.headers.insert(header::UPGRADE, proto.clone());
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let host_header = match (action.preserve_host, host) {
            (true, Some(h)) => h.clone(),
            _ => target.host_header.clone(),
        };
        parts.headers.insert(header::HOST, host_header);
        forwarding::add_forwarding_headers(&mut parts.headers, &conn.peer, conn.proto, host);
        parts.headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
        parts.version = Version::HTTP_11;
        let upstream_req = Request::from_parts(parts, RequestBody::new(body, ctx.bytes_in.clone()));

        // Send, bounded by the response-header timeout.
        let sent = tokio::time::timeout(pool.response_timeout, target.pool.send(upstream_req)).await;
        ctx.upstream_duration = Some(start.elapsed());
        let (mut resp, conn) = match sent {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                let (status, why) = classify(&e);
                tracing::warn!(
                    request_id = ?ctx.request_id, route = %route.name, upstream = %target.pool.target.authority,
                    error = %error_chain(&e), "Upstream request failed."
                );
                return local_error(status, why, &ctx.request_id);
            }
            Err(_) => {
                tracing::warn!(
                    request_id = ?ctx.request_id, route = %route.name, upstream = %target.pool.target.authority,
                    timeout = ?pool.response_timeout, "Upstream did not send response headers in time."
                );
                return local_error(StatusCode::GATEWAY_TIMEOUT, "upstream timed out", &ctx.request_id);
            }
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
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let request_id = ctx.request_id.clone();
            tokio::spawn(async move {
                let (client, upstream) = tokio::join!(client_upgrade, upstream_upgrade);
                match (client, upstream) {
                    (Ok(client), Ok(upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                            tracing::debug!(?request_id, error = %e, "Upgraded connection ended with an error.");
                        }
                    }
                    (c, u) => tracing::debug!(
                        ?request_id,
                        client_ok = c.is_ok(),
                        upstream_ok = u.is_ok(),
                        "Upgrade did not complete."
                    ),
                }
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, ResponseBody::empty());
        }
        forwarding::strip_hop_by_hop(resp.headers_mut());
        resp.map(|body| ResponseBody::upstream(body, conn))
    }
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
        SendError::Http { .. } => (StatusCode::BAD_GATEWAY, "upstream closed the connection"),
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
