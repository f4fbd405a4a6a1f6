//! On-demand TLS: whether a name nobody configured may get a certificate at its first
//! handshake. Off unless configured; when on, an allow-list or an `ask` endpoint must
//! approve every name, and issuance is rate limited per name and overall.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{StatusCode, Uri};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::store::check_name;
use crate::{Clock, TlsError};

/// Default minimum time between two attempts for one name: a failed validation is not
/// retried by every new handshake (Let's Encrypt allows 5 failures per name per hour).
pub const DEFAULT_PER_NAME_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Default number of on-demand issuances allowed per [`DEFAULT_GLOBAL_WINDOW`]: enough
/// for a burst of new customer domains, far below CA account limits (300 orders / 3 h).
pub const DEFAULT_GLOBAL_LIMIT: u32 = 20;

/// Default window for [`DEFAULT_GLOBAL_LIMIT`].
pub const DEFAULT_GLOBAL_WINDOW: Duration = Duration::from_secs(3600);

/// How long the `ask` endpoint may take; a handshake is waiting.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// On-demand settings, as converted from config.
#[derive(Debug, Clone)]
pub struct OnDemandConfig {
    /// Names that may be obtained: exact (`shop.example`) or one-label wildcards
    /// (`*.customers.example`).
    pub allow: Vec<String>,
    /// A URL asked `GET URL?domain=NAME`; only `200 OK` approves the name.
    pub ask: Option<Uri>,
    /// Minimum time between attempts for one name.
    pub per_name_interval: Duration,
    /// At most this many attempts in any `global_window`.
    pub global_limit: u32,
    /// The window of `global_limit`.
    pub global_window: Duration,
}

impl OnDemandConfig {
    /// Default limits, approving names by `allow` and/or `ask`.
    pub fn new(allow: Vec<String>, ask: Option<Uri>) -> Self {
        Self {
            allow,
            ask,
            per_name_interval: DEFAULT_PER_NAME_INTERVAL,
            global_limit: DEFAULT_GLOBAL_LIMIT,
            global_window: DEFAULT_GLOBAL_WINDOW,
        }
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OnDemandError {
    /// On-demand TLS is not configured.
    #[error("on-demand TLS is off")]
    Disabled,
    /// The name is not a host name we would order (IP, wildcard, bad characters).
    #[error("{name:?} cannot be obtained on demand: {reason}")]
    InvalidName {
        /// The SNI name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The allow-list does not contain the name.
    #[error("{name} is not in the on-demand allow-list")]
    NotAllowed {
        /// The SNI name.
        name: String,
    },
    /// The `ask` endpoint answered something other than 200.
    #[error("the ask endpoint refused {name} with status {status}")]
    AskRefused {
        /// The SNI name.
        name: String,
        /// Its answer.
        status: u16,
    },
    /// The `ask` endpoint could not be reached in time.
    #[error("the ask endpoint failed for {name}: {reason}")]
    AskFailed {
        /// The SNI name.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// The name was attempted too recently.
    #[error("{name} was attempted less than {interval:?} ago")]
    NameRateLimited {
        /// The SNI name.
        name: String,
        /// The per-name interval.
        interval: Duration,
    },
    /// Too many on-demand attempts overall.
    #[error("on-demand issuance limit reached ({limit} per {window:?})")]
    GlobalRateLimited {
        /// The limit.
        limit: u32,
        /// Its window.
        window: Duration,
    },
    /// The name was approved but issuance failed.
    #[error("issuing a certificate for {name} failed: {reason}")]
    Issuance {
        /// The SNI name.
        name: String,
        /// Why.
        reason: String,
    },
}

#[derive(Default)]
struct Limits {
    last_attempt: HashMap<String, SystemTime>,
    recent: VecDeque<SystemTime>,
}

/// Decides whether a name may be obtained on demand, and counts attempts.
pub struct OnDemandPolicy {
    config: OnDemandConfig,
    clock: Arc<dyn Clock>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    limits: Mutex<Limits>,
}

impl std::fmt::Debug for OnDemandPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemandPolicy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OnDemandPolicy {
    /// A policy from `config`; refuses a config with neither `allow` nor `ask`, since that
    /// would let anyone make the server order certificates for any name.
    pub fn new(config: OnDemandConfig, clock: Arc<dyn Clock>) -> Result<Self, TlsError> {
        if config.allow.is_empty() && config.ask.is_none() {
            return Err(TlsError::Config(
                "tls.on_demand needs `allow` or `ask`: otherwise anyone could make the server order certificates"
                    .into(),
            ));
        }
        if config.global_limit == 0 {
            return Err(TlsError::Config("tls.on_demand global limit must be at least 1".into()));
        }
        for pattern in &config.allow {
            check_name(pattern).map_err(|e| TlsError::Config(format!("tls.on_demand.allow: {e}")))?;
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| TlsError::Config(format!("TLS client for the on-demand ask endpoint: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            config,
            clock,
            client: Client::builder(TokioExecutor::new()).build(connector),
            limits: Mutex::new(Limits::default()),
        })
    }

    /// Approves `name` for issuance now, or says why not. Cheap checks (name, allow-list,
    /// rate limits) run before the `ask` request; an approval counts against the limits.
    pub async fn check(&self, name: &str) -> Result<(), OnDemandError> {
        if let Err(e) = check_name(name) {
            return Err(OnDemandError::InvalidName {
                name: name.to_owned(),
                reason: e.to_string(),
            });
        }
        if name.starts_with("*.") || name.parse::<std::net::IpAddr>().is_ok() || !name.contains('.') {
            return Err(OnDemandError::InvalidName {
                name: name.to_owned(),
                reason: "only fully qualified host names are obtained on demand".into(),
            });
        }
        if !self.config.allow.is_empty() && !self.config.allow.iter().any(|p| matches(p, name)) {
            return Err(OnDemandError::NotAllowed { name: name.to_owned() });
        }
        self.rate_check(name, false)?;
        if let Some(ask) = &self.config.ask {
            self.ask(ask, name).await?;
        }
        self.rate_check(name, true)
    }

    fn rate_check(&self, name: &str, record: bool) -> Result<(), OnDemandError> {
        let now = self.clock.now();
        let mut limits = self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let window = self.config.global_window;
        while limits
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t).unwrap_or_default() >= window)
        {
            limits.recent.pop_front();
        }
        let interval = self.config.per_name_interval;
        limits
            .last_attempt
            .retain(|_, t| now.duration_since(*t).unwrap_or_default() < interval);
        if limits.last_attempt.contains_key(name) {
            return Err(OnDemandError::NameRateLimited {
                name: name.to_owned(),
                interval,
            });
        }
        if limits.recent.len() >= self.config.global_limit as usize {
            return Err(OnDemandError::GlobalRateLimited {
                limit: self.config.global_limit,
                window,
            });
        }
        if record {
            limits.recent.push_back(now);
            limits.last_attempt.insert(name.to_owned(), now);
        }
        Ok(())
    }

    async fn ask(&self, ask: &Uri, name: &str) -> Result<(), OnDemandError> {
        let failed = |reason: String| OnDemandError::AskFailed {
            name: name.to_owned(),
            reason,
        };
        // `name` passed check_name: only [a-z0-9.-:], nothing to escape.
        let url = match ask.query() {
            Some(_) => format!("{ask}&domain={name}"),
            None => format!("{ask}?domain={name}"),
        };
        let uri: Uri = url.parse().map_err(|e| failed(format!("bad URL {url}: {e}")))?;
        let response = tokio::time::timeout(ASK_TIMEOUT, self.client.get(uri))
            .await
            .map_err(|_| failed(format!("no answer within {ASK_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        match response.status() {
            StatusCode::OK => Ok(()),
            status => Err(OnDemandError::AskRefused {
                name: name.to_owned(),
                status: status.as_u16(),
            }),
        }
    }
}

/// Whether allow-list `pattern` covers `name` (exact, or `*.` one label deep).
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("a.example", "a.example"));
        assert!(!matches("a.example", "b.example"));
        assert!(matches("*.example", "a.example"));
        assert!(!matches("*.example", "a.b.example"));
        assert!(!matches("*.example", "example"));
    }
}
