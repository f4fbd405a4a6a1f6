//! The typed runtime configuration, produced from the file model by validation.
//!
//! Everything here is already checked: addresses parse, durations are durations,
//! routes point at upstreams that exist (by index), host names are normalised.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use std::num::NonZeroU64;
use std::sync::Arc;

pub use gatehouse_policy::{CorsPolicy, HeaderRules, IpRules, KeyKind, Rate, RateSpec, SecurityHeaders};
use http::{Method, StatusCode};
use ipnet::IpNet;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Process-wide settings.
    pub server: Server,
    /// Logging settings.
    pub log: Log,
    /// Sites in file order.
    pub sites: Vec<Site>,
    /// Upstream pools; routes refer to them by index.
    pub upstreams: Vec<Upstream>,
    /// Release slots, by name (every slot a route serves is present).
    pub releases: Vec<ReleaseSlot>,
    /// Durable storage.
    pub store: Store,
    /// Backups.
    pub backup: Backup,
    /// Redis for shared rate limits; `None` keeps limits in this process.
    pub redis: Option<Redis>,
    /// Rate limits: the named ones of `[rate_limit.NAME]`, then the inline ones
    /// of routes. Routes refer to them by index.
    pub rate_limits: Vec<RateLimit>,
    /// Request size limits and client timeouts.
    pub limits: Limits,
    /// HTTPS settings shared by all sites.
    pub tls: Tls,
}

/// HTTPS settings shared by all sites, validated.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// The ACME account and CA; `None` when neither `acme_email` nor `[acme]` is set.
    pub acme: Option<Acme>,
    /// On-demand certificates; `None` (off) unless `[tls.on_demand]` exists.
    pub on_demand: Option<OnDemand>,
    /// What a request whose Host differs from the SNI name gets.
    pub sni_mismatch: SniMismatch,
    /// `[tls] default_sni`: the host whose certificate answers handshakes
    /// without SNI (normalised as site hosts are; IPv6 in brackets). When unset,
    /// the first IP-address host of a TLS site, if any.
    pub default_sni: Option<String>,
}

/// `[acme]` and `server.acme_email`, validated.
#[derive(Debug, Clone)]
pub struct Acme {
    /// Contact address, if given.
    pub email: Option<String>,
    /// Directory URL (`https://…`).
    pub directory: String,
    /// Extra root trusted for the CA's HTTPS.
    pub ca_root: Option<PathBuf>,
    /// External Account Binding.
    pub eab: Option<Eab>,
    /// Orders in flight at once.
    pub max_concurrent_orders: NonZeroUsize,
    /// The challenge type answered.
    pub challenge: AcmeChallenge,
}

/// External Account Binding credentials.
#[derive(Debug, Clone)]
pub struct Eab {
    /// Key id.
    pub kid: String,
    /// HMAC key, base64url.
    pub hmac: Secret,
}

/// The ACME challenge type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// A token served on the plain-HTTP listener (port 80 for public CAs).
    Http01,
    /// A special certificate on the HTTPS listener (port 443 for public CAs).
    TlsAlpn01,
}

/// `[tls.on_demand]`, validated: at least one of `allow` and `ask` is set.
#[derive(Debug, Clone)]
pub struct OnDemand {
    /// Allowed names: exact, or `*.example.com` for one extra label.
    pub allow: Vec<String>,
    /// URL asked `?domain=NAME`; 200 allows.
    pub ask: Option<String>,
    /// At most one attempt per name in this interval.
    pub per_name_interval: Duration,
    /// At most this many attempts …
    pub limit: u32,
    /// … in this window.
    pub limit_window: Duration,
}

/// What a request whose Host differs from the TLS SNI name gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SniMismatch {
    /// 421 Misdirected Request (RFC 9110 §15.5.20).
    #[default]
    Refuse,
    /// Served by the site its Host names.
    Allow,
}

/// Where a site's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteTls {
    /// Plain HTTP only.
    Off,
    /// Ordered from the ACME CA and renewed in the background.
    Acme,
    /// Issued by gatehouse's local CA.
    Internal,
    /// PEM files managed elsewhere, reloaded when they change.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
}

impl SiteTls {
    /// The config name: `off`, `acme`, `internal` or `files`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Acme => "acme",
            Self::Internal => "internal",
            Self::Files { .. } => "files",
        }
    }
}

/// `[redis]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redis {
    /// `redis://…`; may carry a password.
    pub url: Secret,
    /// Most a request waits for Redis.
    pub timeout: Duration,
    /// Most one connection attempt takes.
    pub connect_timeout: Duration,
    /// Longest pause between reconnect attempts.
    pub reconnect_max: Duration,
    /// Key prefix.
    pub key_prefix: String,
}

/// A rate limit, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// `[rate_limit.NAME]`'s name, or the route's name for an inline limit. It
    /// names the limit in `RateLimit-Policy` and in Redis keys.
    pub name: String,
    /// Rate and key.
    pub spec: RateSpec,
    /// Counted in Redis.
    pub shared: bool,
    /// Most keys kept in memory.
    pub max_keys: NonZeroUsize,
}

/// `[limits]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head in bytes.
    pub max_header_size: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Largest request body; `None`: no limit.
    pub max_body_size: Option<u64>,
    /// Time to send a request head, and idle keep-alive time.
    pub header_timeout: Duration,
    /// Longest pause while sending a body.
    pub body_timeout: Duration,
    /// Slowest average body rate in bytes per second after `body_timeout`.
    pub body_min_rate: Option<NonZeroU64>,
    /// Most open connections per client IP.
    pub max_connections_per_ip: Option<u32>,
    /// Requests per keep-alive connection.
    pub keepalive_requests: u32,
}

/// Policies of a site, checked before its routes' own.
#[derive(Debug, Clone, Default)]
pub struct SitePolicy {
    /// IP allow/deny rules.
    pub ip_rules: IpRules,
    /// Header rules for requests sent upstream.
    pub request_headers: HeaderRules,
    /// Header rules for responses.
    pub response_headers: HeaderRules,
}

/// Policies of a route, with site and server settings already resolved where
/// the most specific one wins (security headers, body size).
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    /// Index into [`Config::rate_limits`].
    pub rate_limit: Option<usize>,
    /// CORS policy.
    pub cors: Option<Arc<CorsPolicy>>,
    /// Most requests in flight.
    pub max_in_flight: Option<usize>,
    /// IP allow/deny rules (the site's are checked first).
    pub ip_rules: IpRules,
    /// Security headers added to responses.
    pub security_headers: SecurityHeaders,
    /// Header rules for requests sent upstream (after the site's).
    pub request_headers: HeaderRules,
    /// Header rules for responses (after the site's).
    pub response_headers: HeaderRules,
    /// Largest request body; `None`: no limit.
    pub max_body_size: Option<u64>,
}

/// `[store]`, validated.
#[derive(Debug, Clone)]
pub struct Store {
    /// Database URL (`sqlite://…` relative to data_dir, or `postgres://…`).
    pub url: String,
    /// Most pooled connections.
    pub max_connections: u32,
    /// Time to open one connection.
    pub connect_timeout: Duration,
}

/// `[backup]`, validated.
#[derive(Debug, Clone)]
pub struct Backup {
    /// Interval of scheduled backups; `None` means only on demand.
    pub every: Option<Duration>,
    /// Backups kept.
    pub keep: u32,
    /// Backup directory.
    pub dir: PathBuf,
}

/// A release slot's deploy rules.
#[derive(Debug, Clone)]
pub struct ReleaseSlot {
    /// Slot name.
    pub name: String,
    /// Releases kept.
    pub keep: usize,
    /// Largest unpacked release in bytes (`None`: the built-in default).
    pub max_size: Option<u64>,
    /// Largest upload in bytes.
    pub max_upload: Option<u64>,
    /// Most files.
    pub max_files: Option<u64>,
    /// Releases must contain `index.html`.
    pub spa: bool,
}

/// Where a static route's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaticSource {
    /// A directory.
    Dir(PathBuf),
    /// The active release of a slot.
    Release(String),
}

/// What happens to paths with a segment starting with `.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dotfiles {
    /// 403.
    Deny,
    /// 404.
    Hide,
    /// Served.
    Allow,
}

/// Which files get the long-lived immutable cache header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Immutable {
    /// File names carrying a content hash.
    Fingerprinted,
    /// None.
    Never,
    /// Paths matching these globs.
    Globs(Vec<String>),
}

/// A static route, validated. `None` fields take the static server's defaults.
#[derive(Debug, Clone)]
pub struct StaticAction {
    /// Files to serve.
    pub source: StaticSource,
    /// Single-page-app fallback.
    pub spa: bool,
    /// Index file names.
    pub index: Option<Vec<String>>,
    /// Custom 404 page, relative to the root.
    pub not_found_page: Option<PathBuf>,
    /// Directory listings.
    pub listing: bool,
    /// Dotfile policy.
    pub dotfiles: Dotfiles,
    /// Follow symlinks outside the root.
    pub follow_symlinks: bool,
    /// Immutable-caching rule.
    pub immutable: Immutable,
    /// Cache-Control for other files.
    pub cache_control: Option<String>,
    /// Serve precompressed siblings.
    pub precompressed: bool,
    /// Compress on the fly.
    pub compress: bool,
    /// Smallest file compressed on the fly.
    pub compress_min_size: Option<u64>,
    /// Largest file compressed on the fly.
    pub compress_max_size: Option<u64>,
    /// Most ranges per request.
    pub max_ranges: Option<usize>,
    /// Zero-copy `sendfile(2)` for file contents on plain HTTP/1 connections.
    pub sendfile: bool,
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct Server {
    /// Directory for state, resolved against the config file's directory.
    pub data_dir: PathBuf,
    /// Plain-HTTP listen addresses.
    pub http: Vec<SocketAddr>,
    /// HTTPS listen addresses.
    pub https: Vec<SocketAddr>,
    /// Number of worker threads.
    pub workers: NonZeroUsize,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Deadline for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// The admin API listener; `None` when `server.admin` is not set.
    pub admin: Option<Admin>,
    /// Reload when the config file's modification time changes.
    pub watch_config: bool,
}

/// The admin API listener, validated: a non-loopback address always has a token.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Listen address.
    pub listen: SocketAddr,
    /// Bearer token every endpoint but `/healthz` requires; `None` (loopback
    /// only) leaves the endpoints open to local processes.
    pub token: Option<Secret>,
}

/// A secret value (token, password). `Debug` prints `***`, and there is no
/// `Display`, so it cannot end up in a log line by accident; read it with
/// [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret string.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that has to compare or send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Access logging disabled.
    Off,
    /// Standard output.
    Stdout,
    /// Appended to this file.
    File(PathBuf),
}

/// `[log]`, validated.
#[derive(Debug, Clone)]
pub struct Log {
    /// A `tracing` filter directive such as `info` or `info,gatehouse_edge=debug`.
    pub level: String,
    /// Format of diagnostic logs.
    pub format: LogFormat,
    /// Access-log destination.
    pub access_log: AccessLogTarget,
    /// Access-log line format.
    pub access_log_format: LogFormat,
}

/// A host-name pattern of a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// An exact, lower-case host name or IP address.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`; matches exactly one
    /// extra label (`a.example.com`, not `a.b.example.com` or `example.com`).
    Wildcard(String),
}

impl HostPattern {
    /// Whether `host` (lower-case, as patterns are stored) is one this pattern covers.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

/// A site, validated.
#[derive(Debug, Clone)]
pub struct Site {
    /// A display name: the first host pattern, or `default`.
    pub name: String,
    /// Host patterns.
    pub hosts: Vec<HostPattern>,
    /// Whether this site answers unknown hosts.
    pub default: bool,
    /// Routes in file order (the router orders them by prefix length).
    pub routes: Vec<Route>,
    /// Site-wide policies.
    pub policy: SitePolicy,
    /// Where the site's certificate comes from.
    pub tls: SiteTls,
    /// `Strict-Transport-Security` max-age sent on HTTPS responses; `None`: not sent.
    pub hsts: Option<Duration>,
    /// Plain-HTTP requests get a 308 to `https://`.
    pub redirect_https: bool,
}

/// A route, validated.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name used in logs and metrics.
    pub name: String,
    /// Normalised path prefix, always starting with `/`.
    pub path: String,
    /// Methods this route accepts; `None` accepts all.
    pub methods: Option<Vec<Method>>,
    /// What to do with a matching request.
    pub action: Action,
    /// Edge policies.
    pub policy: RoutePolicy,
}

/// What a route does with a request.
///
/// New kinds of routes (static files, built-in services) are added as variants.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Action {
    /// Reverse-proxy to an upstream pool.
    Proxy(ProxyAction),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    Respond(Respond),
    /// Serve static files.
    Static(Box<StaticAction>),
}

/// Proxy settings of a route.
#[derive(Debug, Clone)]
pub struct ProxyAction {
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Replacement for the route prefix, if the path is rewritten. `strip_prefix`
    /// is a rewrite to `/`.
    pub rewrite: Option<String>,
    /// Forward the client's Host header instead of the target's authority.
    pub preserve_host: bool,
}

/// A redirect response.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// Location (URL or absolute path).
    pub to: String,
    /// A 3xx redirect status.
    pub status: StatusCode,
    /// Append the rest of the path and the query to `to`.
    pub keep_path: bool,
}

/// A fixed response.
#[derive(Debug, Clone)]
pub struct Respond {
    /// Status code.
    pub status: StatusCode,
    /// Body.
    pub body: String,
    /// Content type of the body.
    pub content_type: String,
}

/// An upstream pool, validated.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The pool's name from `[upstream.NAME]`.
    pub name: String,
    /// Backend targets.
    pub targets: Vec<Target>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed until response headers arrive.
    pub response_timeout: Duration,
    /// Longest pause between two reads of a response body.
    pub read_timeout: Duration,
    /// Idle keep-alive connection lifetime.
    pub idle_timeout: Duration,
    /// Idle connections kept per target per worker.
    pub keepalive: usize,
    /// Balancing policy.
    pub balance: Balance,
    /// Active health checks.
    pub health: Option<HealthCheck>,
    /// Passive health checks.
    pub passive: Passive,
    /// Retry rules.
    pub retries: Retries,
    /// Most requests in flight to the pool.
    pub max_in_flight: Option<usize>,
}

/// How an upstream spreads requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin.
    RoundRobin,
    /// Fewest in-flight requests.
    LeastConn,
    /// Power of two choices.
    P2c,
    /// Consistent hashing on the client IP.
    IpHash,
    /// Consistent hashing on a header (the client IP when it is absent).
    HeaderHash(http::HeaderName),
    /// Sticky cookie.
    Cookie {
        /// Cookie name.
        name: String,
        /// Signing key; `None` means a random key per process.
        secret: Option<String>,
    },
}

impl Balance {
    /// The config name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConn => "least_conn",
            Self::P2c => "p2c",
            Self::IpHash => "ip_hash",
            Self::HeaderHash(_) => "header_hash",
            Self::Cookie { .. } => "cookie",
        }
    }
}

/// Active health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path requested with GET.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Time allowed per check.
    pub timeout: Duration,
    /// Successes to become healthy.
    pub rise: u32,
    /// Failures to become unhealthy.
    pub fall: u32,
    /// Healthy statuses, inclusive.
    pub status: (u16, u16),
    /// New targets wait for a passing check before getting traffic.
    pub wait_healthy: bool,
}

/// Passive health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passive {
    /// Consecutive failures that eject; 0 disables.
    pub failures: u32,
    /// First ejection.
    pub cooldown: Duration,
    /// Longest ejection.
    pub max_cooldown: Duration,
}

/// Retry rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    /// Tries per request including the first.
    pub attempts: u32,
    /// Statuses retried for idempotent requests without a body.
    pub on_status: Vec<u16>,
    /// Retries as a fraction of requests.
    pub budget: f64,
    /// Largest request body (of an idempotent request) kept in memory so the
    /// request can be sent again; 0 keeps none.
    pub buffer: u64,
}

/// A backend address: a TCP `host:port` or a Unix-domain socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP address (IPv6 without brackets); `localhost` for a
    /// Unix-domain socket.
    pub host: String,
    /// TCP port (0 for a Unix-domain socket).
    pub port: u16,
    /// The Host header sent to the target: `host:port` (IPv6 in brackets), or
    /// `localhost` for a Unix-domain socket.
    pub authority: http::uri::Authority,
    /// The socket path of a `unix:` target.
    pub unix: Option<std::path::PathBuf>,
    /// The target as written in the config (`host:port` or `unix:/path`): its
    /// identity, and its name in logs, the admin API and `gatehouse check`.
    pub id: std::sync::Arc<str>,
    /// Relative share of traffic.
    pub weight: u32,
}
