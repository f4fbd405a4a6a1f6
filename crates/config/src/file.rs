//! The file model: what `gatehouse.toml` may contain, exactly as written.
//!
//! Every struct rejects unknown keys. Values that the second layer validates are
//! wrapped in [`Spanned`] so errors can point at them. Defaults and meanings are
//! documented here and in `docs/config.md`; keep the two in step.

use std::collections::BTreeMap;

use serde::Deserialize;
pub use toml::Spanned;

use crate::error::{ErrorKind, RawError};
use crate::model::Secret;

/// The whole config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Process-wide settings: listeners, data directory, workers, shutdown.
    #[serde(default)]
    pub server: ServerFile,
    /// Logging and access logs.
    #[serde(default)]
    pub log: LogFile,
    /// Sites, matched by the request's host name, each with its routes.
    #[serde(default)]
    pub site: Vec<Spanned<SiteFile>>,
    /// Named pools of backend servers that routes proxy to.
    #[serde(default)]
    pub upstream: BTreeMap<String, Spanned<UpstreamFile>>,
    /// Release slots for static sites: deploy limits and retention.
    #[serde(default)]
    pub release: BTreeMap<String, Spanned<ReleaseFile>>,
    /// Durable storage.
    #[serde(default)]
    pub store: StoreFile,
    /// Scheduled backups.
    #[serde(default)]
    pub backup: BackupFile,
    /// Redis, to share rate limits between instances.
    pub redis: Option<Spanned<RedisFile>>,
    /// Named rate limits that routes refer to with `rate_limit = "NAME"`.
    #[serde(default)]
    pub rate_limit: BTreeMap<String, Spanned<RateLimitFile>>,
    /// Named CORS policies that routes refer to with `cors = "NAME"`.
    #[serde(default)]
    pub cors: BTreeMap<String, Spanned<CorsFile>>,
    /// Request size limits and client timeouts.
    #[serde(default)]
    pub limits: LimitsFile,
    /// The ACME certificate authority (default: Let's Encrypt).
    pub acme: Option<Spanned<AcmeFile>>,
    /// HTTPS behaviour shared by all sites: SNI checks, on-demand certificates.
    pub tls: Option<Spanned<TlsFile>>,
}

/// `[acme]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeFile {
    /// ACME directory URL. Default: Let's Encrypt production.
    pub directory: Option<Spanned<String>>,
    /// PEM file of an extra root trusted for the CA's own HTTPS (private ACME servers).
    pub ca_root: Option<Spanned<String>>,
    /// External Account Binding key id, given by the CA. Needs `eab_hmac`.
    pub eab_kid: Option<Spanned<String>>,
    /// External Account Binding HMAC key (base64url), given by the CA. Needs `eab_kid`.
    pub eab_hmac: Option<Spanned<Secret>>,
    /// Orders in flight at once. Default 4.
    pub max_concurrent_orders: Option<Spanned<i64>>,
    /// `"http-01"` (default) or `"tls-alpn-01"`.
    pub challenge: Option<Spanned<String>>,
}

/// `[tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// What an HTTPS request whose Host differs from the TLS SNI name gets:
    /// `"421"` (default, Misdirected Request) or `"allow"`.
    pub sni_mismatch: Option<Spanned<String>>,
    /// The host name whose certificate answers handshakes without SNI.
    pub default_sni: Option<Spanned<String>>,
    /// Certificates obtained at the first handshake for names not in the config.
    /// Off unless this table exists.
    pub on_demand: Option<Spanned<OnDemandFile>>,
}

/// `[tls.on_demand]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandFile {
    /// Names (exact or `*.example.com`) that may get a certificate.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// `http://…` URL asked `GET ?domain=NAME`; only a 200 answer allows the name.
    pub ask: Option<Spanned<String>>,
    /// At most one attempt per name in this interval. Default `15m`.
    pub per_name_interval: Option<Spanned<String>>,
    /// At most this many attempts overall, `"COUNT/PERIOD"`. Default `"20/1h"`.
    pub limit: Option<Spanned<String>>,
}

/// `tls = "acme" | "internal" | "off" | { cert = "…", key = "…" }` on a site.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SiteTlsFile {
    /// `"acme"`, `"internal"` or `"off"`.
    Mode(String),
    /// PEM files managed elsewhere.
    Files {
        /// Certificate chain, leaf first.
        cert: String,
        /// Private key.
        key: String,
    },
}

/// `[redis]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`.
    pub url: Spanned<Secret>,
    /// Most a request waits for Redis before deciding locally. Default `50ms`.
    pub timeout: Option<Spanned<String>>,
    /// Most one background connection attempt takes. Default `2s`.
    pub connect_timeout: Option<Spanned<String>>,
    /// Longest pause between reconnect attempts. Default `5s`.
    pub reconnect_max: Option<Spanned<String>>,
    /// Prefix of every key. Default `gatehouse:rl:`.
    pub key_prefix: Option<Spanned<String>>,
}

/// `[rate_limit.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// `"COUNT/PERIOD [burst N] [per KEY]"`, e.g. `"20/s burst 40"`.
    pub rate: Spanned<String>,
    /// `"ip"` (default), `"user"`, `"route"` or `"header NAME"`.
    pub key: Option<Spanned<String>>,
    /// Count in Redis (shared between instances). Default: true when `[redis]` is set.
    pub shared: Option<Spanned<bool>>,
    /// Most keys kept in memory. Default 100000.
    pub max_keys: Option<Spanned<i64>>,
}

/// `[cors.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    /// Allowed origins: exact (`"https://app.example.com"`), one-label wildcards
    /// (`"https://*.example.com"`), or `["*"]`.
    pub origins: Vec<String>,
    /// Allow cookies and `Authorization`. Default false.
    #[serde(default)]
    pub credentials: bool,
    /// Methods a preflight may ask for. Default GET, HEAD, POST, PUT, PATCH, DELETE.
    pub methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for. Default `authorization`, `content-type`.
    pub allow_headers: Option<Vec<String>>,
    /// Response headers scripts may read. Default none.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long browsers cache a preflight. Default `10m`.
    pub max_age: Option<Spanned<String>>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest request head (request line and headers). Default `64KiB`.
    pub max_header_size: Option<Spanned<String>>,
    /// Most request headers. Default 100.
    pub max_headers: Option<Spanned<i64>>,
    /// Largest request body. Default: no limit.
    pub max_body_size: Option<Spanned<String>>,
    /// Time allowed to send a request head; also how long an idle keep-alive
    /// connection is kept. Default `30s`.
    pub header_timeout: Option<Spanned<String>>,
    /// Longest pause while sending a request body. Default `60s`.
    pub body_timeout: Option<Spanned<String>>,
    /// Slowest average body rate per second after `body_timeout`, e.g. `"1KiB"`,
    /// or `"off"`. Default `1KiB`.
    pub body_min_rate: Option<Spanned<String>>,
    /// Most open connections from one IP address. Default: no limit.
    pub max_connections_per_ip: Option<Spanned<i64>>,
    /// Requests served on one keep-alive connection before it is closed. Default 1000.
    pub keepalive_requests: Option<Spanned<i64>>,
}

/// `security_headers = true | false | { … }`
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SecurityHeadersFile {
    /// `true`: the defaults; `false`: none.
    Enabled(bool),
    /// Individual settings.
    Custom(SecurityHeadersTable),
}

/// `security_headers = { nosniff = true, referrer_policy = "…", frame = "deny", csp = "…" }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityHeadersTable {
    /// `X-Content-Type-Options: nosniff`. Default true.
    pub nosniff: Option<bool>,
    /// `Referrer-Policy` value, or `false`. Default `strict-origin-when-cross-origin`.
    pub referrer_policy: Option<toml::Value>,
    /// `X-Frame-Options`: `"deny"` (default), `"sameorigin"` or `"off"`.
    pub frame: Option<String>,
    /// `Content-Security-Policy` for HTML responses. Default none.
    pub csp: Option<String>,
}

/// `headers = { request = { … }, response = { … } }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersFile {
    /// Rules for the request sent upstream.
    #[serde(default)]
    pub request: HeaderRulesFile,
    /// Rules for the response sent to the client.
    #[serde(default)]
    pub response: HeaderRulesFile,
}

/// `{ set = { … }, add = { … }, remove = [ … ] }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesFile {
    /// Headers replaced (or created).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers appended.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// `sqlite://FILE` (relative to data_dir) or `postgres://…`. Default
    /// `sqlite://gatehouse.db`.
    pub url: Option<Spanned<String>>,
    /// Most pooled database connections. Default 10.
    pub max_connections: Option<Spanned<i64>>,
    /// Time allowed to open one connection. Default `5s`.
    pub connect_timeout: Option<Spanned<String>>,
}

/// `[backup]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupFile {
    /// Take a backup this often while serving (e.g. `24h`). Default: only on
    /// `gatehouse backup`.
    pub every: Option<Spanned<String>>,
    /// Backups kept. Default 7.
    pub keep: Option<Spanned<i64>>,
    /// Where backups go. Default `DATA_DIR/backups`.
    pub dir: Option<String>,
}

/// `[release.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseFile {
    /// Releases kept after a deploy. Default 5.
    pub keep: Option<Spanned<i64>>,
    /// Largest unpacked release, e.g. `"512MiB"`.
    pub max_size: Option<Spanned<String>>,
    /// Largest compressed upload.
    pub max_upload: Option<Spanned<String>>,
    /// Most files in a release.
    pub max_files: Option<Spanned<i64>>,
    /// Refuse releases without `index.html`. Default: true when a route serves
    /// the slot with `spa = true`.
    pub spa: Option<bool>,
}

/// `static = { … }` on a route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFile {
    /// Serve this directory.
    pub dir: Option<Spanned<String>>,
    /// Serve the active release of this slot.
    pub release: Option<Spanned<String>>,
    /// Single-page app fallback to `index.html`.
    #[serde(default)]
    pub spa: bool,
    /// Index file names. Default `["index.html"]`.
    pub index: Option<Vec<String>>,
    /// Page sent with 404, relative to the root.
    pub not_found_page: Option<String>,
    /// Directory listings. Default false.
    #[serde(default)]
    pub listing: bool,
    /// `deny` (403), `hide` (404) or `allow`. Default `deny`.
    pub dotfiles: Option<Spanned<String>>,
    /// Follow symlinks leading outside the root. Default false.
    #[serde(default)]
    pub follow_symlinks: bool,
    /// `"fingerprinted"`, `"never"` or a list of globs.
    pub immutable: Option<Spanned<toml::Value>>,
    /// Cache-Control of files neither fingerprinted nor HTML. Default `no-cache`.
    pub cache_control: Option<Spanned<String>>,
    /// Serve `.br`/`.zst`/`.gz` siblings. Default true.
    pub precompressed: Option<bool>,
    /// Compress on the fly. Default true.
    pub compress: Option<bool>,
    /// Smallest file compressed on the fly. Default `1KiB`.
    pub compress_min_size: Option<Spanned<String>>,
    /// Largest file compressed on the fly. Default `4MiB`.
    pub compress_max_size: Option<Spanned<String>>,
    /// Most ranges in one request. Default 16.
    pub max_ranges: Option<Spanned<i64>>,
    /// Send file contents with sendfile(2) on plain HTTP/1. Default true.
    pub sendfile: Option<bool>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Directory for state (databases, certificates, releases). Default `./data`,
    /// relative to the config file.
    pub data_dir: Option<String>,
    /// Plain HTTP listen addresses (HTTP/1.1, and HTTP/2 with prior knowledge).
    /// Default `["0.0.0.0:8080"]`.
    pub http: Option<Vec<Spanned<String>>>,
    /// HTTPS listen addresses (TLS 1.2/1.3, HTTP/2 and HTTP/1.1). Default: none.
    pub https: Option<Vec<Spanned<String>>>,
    /// Contact address for the ACME account; turns on ACME certificates for
    /// public host names. Default: none.
    pub acme_email: Option<Spanned<String>>,
    /// Worker threads, each with its own event loop. Default: one per CPU core.
    pub workers: Option<Spanned<i64>>,
    /// Peers (CIDR or single IP) whose `X-Forwarded-For`, `Forwarded` and
    /// `X-Request-Id` headers are believed. Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// How long a graceful shutdown waits for in-flight requests. Default `30s`.
    pub shutdown_timeout: Option<Spanned<String>>,
    /// Listen address of the admin API (`127.0.0.1:2019`). Default: no admin
    /// listener.
    pub admin: Option<Spanned<String>>,
    /// Bearer token the admin API requires, at least 32 characters; usually
    /// `${GATEHOUSE_ADMIN_TOKEN}`. Required when `admin` is not a loopback address.
    pub admin_token: Option<Spanned<Secret>>,
    /// Security headers of every site (`true`, `false` or a table). Default true.
    pub security_headers: Option<Spanned<SecurityHeadersFile>>,
    /// Reload the config when this file changes (its modification time is
    /// checked every second). Default false: reload with SIGHUP or
    /// `gatehouse reload`.
    pub watch_config: Option<bool>,
}

/// A secret read from the file: the same string, but `Debug` never shows it.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// Minimum level, or a filter like `info,gatehouse_edge=debug`. Default `info`.
    pub level: Option<Spanned<String>>,
    /// `text` (readable in a terminal) or `json`. Default `text`.
    pub format: Option<Spanned<String>>,
    /// `stdout`, `off`, or a file path. Default `stdout`.
    pub access_log: Option<Spanned<String>>,
    /// `text` or `json`. Default: the same as `format`.
    pub access_log_format: Option<Spanned<String>>,
}

/// `[[site]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    /// Host names this site answers: exact names (`app.example.com`), IP
    /// addresses, or one-label wildcards (`*.example.com`).
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Answer requests whose host matches no site. At most one site may set it.
    #[serde(default)]
    pub default: bool,
    /// Routes, matched by path prefix; the longest matching prefix wins.
    #[serde(default)]
    pub route: Vec<Spanned<RouteFile>>,
    /// Only these client networks may use the site.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// These client networks are refused (deny wins over allow).
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// Header rules for the whole site.
    pub headers: Option<Spanned<HeadersFile>>,
    /// Security headers of the site's responses. Default: `[server]`'s.
    pub security_headers: Option<Spanned<SecurityHeadersFile>>,
    /// Largest request body on this site. Default: `[limits] max_body_size`.
    pub max_body_size: Option<Spanned<String>>,
    /// Where the site's certificate comes from. Default: `"acme"` for public
    /// names when ACME is configured, `"internal"` for localhost, `.localhost`,
    /// `.test` and IP addresses, else `"off"` (plain HTTP only).
    pub tls: Option<Spanned<SiteTlsFile>>,
    /// `Strict-Transport-Security` max-age (`"1y"`), or `false`. Default `"365d"`
    /// for `acme` and files sites, off for `internal`.
    pub hsts: Option<Spanned<toml::Value>>,
    /// Redirect plain HTTP to HTTPS with 308 (except ACME challenges). Default
    /// true for sites with TLS.
    pub redirect_https: Option<Spanned<bool>>,
}

/// `[[site.route]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Path prefix, starting with `/`. `/api` matches `/api` and `/api/…` but not
    /// `/apix`; `/` matches everything.
    pub path: Spanned<String>,
    /// Only these methods match (e.g. `["GET", "HEAD"]`). Default: all.
    pub methods: Option<Vec<Spanned<String>>>,
    /// A name for logs and metrics. Default: the site's first host and the path.
    pub name: Option<String>,

    /// Proxy to this `[upstream.NAME]`.
    pub upstream: Option<Spanned<String>>,
    /// Answer with a redirect.
    pub redirect: Option<Spanned<RedirectFile>>,
    /// Answer with a fixed response.
    pub respond: Option<Spanned<RespondFile>>,
    /// Serve static files from a directory or a release slot.
    #[serde(rename = "static")]
    pub static_files: Option<Spanned<StaticFile>>,

    /// Remove the route's prefix before proxying (`/api/users` → `/users`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the route's prefix with this before proxying
    /// (`path = "/api/"`, `rewrite = "/v1/"`: `/api/users` → `/v1/users`).
    pub rewrite: Option<Spanned<String>>,
    /// Send the client's `Host` header upstream instead of the target's address.
    #[serde(default)]
    pub preserve_host: bool,

    /// A `[rate_limit.NAME]`, or an inline rate such as `"5/m burst 10 per ip"`.
    pub rate_limit: Option<Spanned<String>>,
    /// A `[cors.NAME]` policy.
    pub cors: Option<Spanned<String>>,
    /// Most requests in flight on this route; more get 503 at once.
    pub max_in_flight: Option<Spanned<i64>>,
    /// Only these client networks may use the route.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// These client networks are refused (deny wins over allow).
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// Header rules of this route (after the site's).
    pub headers: Option<Spanned<HeadersFile>>,
    /// Security headers of this route's responses. Default: the site's.
    pub security_headers: Option<Spanned<SecurityHeadersFile>>,
    /// Largest request body on this route. Default: the site's.
    pub max_body_size: Option<Spanned<String>>,
}

/// `redirect = { to = "...", status = 308, keep_path = true }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectFile {
    /// Target URL or absolute path.
    pub to: Spanned<String>,
    /// 301, 302, 303, 307 or 308. Default 308.
    pub status: Option<Spanned<i64>>,
    /// Append the part of the path after the route prefix, and the query string.
    #[serde(default)]
    pub keep_path: bool,
}

/// `respond = { status = 200, body = "ok" }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondFile {
    /// Status code, 100–599. Default 200.
    pub status: Option<Spanned<i64>>,
    /// Body text. Default empty.
    #[serde(default)]
    pub body: String,
    /// Content type. Default `text/plain; charset=utf-8`.
    pub content_type: Option<Spanned<String>>,
}

/// `[upstream.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// Backends: `"host:port"` or `{ addr = "host:port", weight = 3 }`.
    pub targets: Vec<Spanned<TargetFile>>,
    /// `round_robin` (default), `least_conn`, `p2c`, `ip_hash`, `header_hash` or `cookie`.
    pub balance: Option<Spanned<String>>,
    /// The header hashed by `balance = "header_hash"`.
    pub hash_header: Option<Spanned<String>>,
    /// Sticky-cookie settings for `balance = "cookie"`.
    pub cookie: Option<Spanned<CookieFile>>,
    /// Active health checks.
    pub health: Option<Spanned<HealthFile>>,
    /// Passive health: ejection after consecutive failures.
    pub passive: Option<Spanned<PassiveFile>>,
    /// Retries on another target.
    pub retries: Option<Spanned<RetriesFile>>,
    /// Time to establish a TCP connection to a target. Default `5s`.
    pub connect_timeout: Option<Spanned<String>>,
    /// Time from sending the request to receiving the response headers. Default `60s`.
    pub response_timeout: Option<Spanned<String>>,
    /// Longest pause between two reads of a response body. Default `5m`.
    pub read_timeout: Option<Spanned<String>>,
    /// How long an idle keep-alive connection stays in the pool. Default `90s`.
    pub idle_timeout: Option<Spanned<String>>,
    /// Idle keep-alive connections kept per target and worker. Default 64.
    pub keepalive: Option<Spanned<i64>>,
    /// Most requests in flight to the whole pool; more get 503 at once.
    pub max_in_flight: Option<Spanned<i64>>,
}

/// A target: an address, or an address with a weight.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TargetFile {
    /// `"host:port"`
    Addr(String),
    /// `{ addr = "host:port", weight = 3 }`
    Weighted {
        /// `host:port`
        addr: String,
        /// Relative share, 1–1000. Default 1.
        weight: Option<i64>,
    },
}

/// `cookie = { name = "…", secret = "…" }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieFile {
    /// Cookie name. Default `gatehouse_sticky`.
    pub name: Option<String>,
    /// Key signing the cookie (at least 16 characters); use `${VAR}`. Default: a
    /// random key per process (stickiness then resets on restart).
    pub secret: Option<Spanned<String>>,
}

/// `health = { path = "/healthz", interval = "5s", … }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// Path requested with GET.
    pub path: Spanned<String>,
    /// Time between checks. Default `5s`.
    pub interval: Option<Spanned<String>>,
    /// Time allowed per check. Default `2s`.
    pub timeout: Option<Spanned<String>>,
    /// Consecutive successes that make a target healthy. Default 2.
    pub rise: Option<Spanned<i64>>,
    /// Consecutive failures that make a target unhealthy. Default 3.
    pub fall: Option<Spanned<i64>>,
    /// Healthy status range, `"200-399"` (default) or one code `"204"`.
    pub status: Option<Spanned<String>>,
    /// New targets get traffic only after passing checks. Default true.
    pub wait_healthy: Option<bool>,
}

/// `passive = { failures = 5, cooldown = "10s", max_cooldown = "5m" }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveFile {
    /// Consecutive connect errors or 5xx answers that eject a target; 0 turns
    /// passive checks off. Default 5.
    pub failures: Option<Spanned<i64>>,
    /// First ejection; it doubles with each consecutive ejection. Default `10s`.
    pub cooldown: Option<Spanned<String>>,
    /// Longest ejection. Default `5m`.
    pub max_cooldown: Option<Spanned<String>>,
}

/// `retries = { attempts = 2, on_status = [502, 503, 504], budget = 0.2 }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesFile {
    /// Tries per request, the first included (1 = no retries). Default 2.
    pub attempts: Option<Spanned<i64>>,
    /// Upstream statuses retried for idempotent requests without a body.
    /// Default: none.
    pub on_status: Option<Vec<Spanned<i64>>>,
    /// Retries allowed as a fraction of requests. Default 0.2.
    pub budget: Option<Spanned<f64>>,
    /// Bodies of idempotent requests (PUT, DELETE, …) up to this size are read
    /// before sending so they can be retried. `"0"` turns it off. Default `64KiB`.
    pub buffer: Option<Spanned<String>>,
}

impl FileConfig {
    /// Parses TOML text into the file model.
    pub(crate) fn from_toml(text: &str) -> Result<Self, RawError> {
        let de = toml::Deserializer::parse(text).map_err(|e| toml_error(&e, String::new()))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            // `Spanned<T>` adds a private field name to the path; hide it.
            let path = e.path().to_string().replace(".$__serde_spanned_private_value", "");
            let path = if path == "." { String::new() } else { path };
            toml_error(e.inner(), path)
        })
    }
}

fn toml_error(e: &toml::de::Error, path: String) -> RawError {
    let message = e.message().trim().to_owned();
    RawError {
        offset: e.span().map(|s| s.start),
        path,
        kind: ErrorKind::Syntax(message),
    }
}
