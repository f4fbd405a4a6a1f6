//! Shared limits: one GCRA bucket per key in Redis, updated by an atomic script.
//!
//! Lifecycle of the connection (owned by one background thread, `gatehouse-redis`,
//! with its own single-threaded runtime, so it does not depend on any worker):
//!
//! 1. **Connecting.** Requests decide locally ([`super::DecisionSource::Fallback`]).
//!    A failed attempt is logged once (`warn`), then retried with exponential
//!    backoff between `reconnect_min` and `reconnect_max`.
//! 2. **Up.** A connection is proven by running the script once; requests then
//!    run the script, each waiting at most `timeout`.
//! 3. **Down.** The first request that sees an error or a timeout flips the state
//!    (one `warn` per outage, `outages` + 1) and wakes the background thread;
//!    every request after it decides locally at once, without touching Redis,
//!    until the thread has reconnected (`info` with the outage's length). Back to 2.
//!
//! **Invariant:** a request never waits on Redis longer than `timeout`, and never
//! passes without a decision: every fallback is a local GCRA decision, counted in
//! `fallback_decisions`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Script};
use tokio::sync::{Notify, oneshot};

use crate::PolicyError;

/// Most a request waits for Redis. A same-datacentre round trip is well under a
/// millisecond; 50 ms covers a busy Redis and GC pauses while keeping the worst
/// case a small fraction of a typical request budget.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// Most one connection attempt (TCP, handshake and the first script run) takes
/// in the background before it counts as failed.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First pause before reconnecting: short, so a blip costs little shared state.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts: a restarted Redis is picked up
/// within seconds, and a dead one costs one attempt every 5 s.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Prefix of every key gatehouse writes, so a shared Redis stays readable.
pub const DEFAULT_KEY_PREFIX: &str = "gatehouse:rl:";

/// GCRA on one key, atomically (a script runs alone in Redis).
///
/// KEYS[1] the bucket. ARGV[1] emission interval T (µs). ARGV[2] tolerance
/// tau = T × (burst − 1) (µs). The TAT is kept in µs of the Redis server's clock
/// (one clock for every instance, whatever their skew) and expires when it stops
/// mattering, so idle keys cost nothing. Returns `{1, new TAT − now}` when
/// allowed, `{0, time until allowed}` when not (both µs).
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local ahead = tat - now
if ahead > tau then
  return {0, ahead - tau}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, new_tat - now}
";

/// Where and how to reach Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]` (or `redis+unix://`).
    pub url: String,
    /// Most a request waits ([`DEFAULT_REDIS_TIMEOUT`]).
    pub timeout: Duration,
    /// Most one background connection attempt takes ([`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// First reconnect pause ([`DEFAULT_RECONNECT_MIN`]).
    pub reconnect_min: Duration,
    /// Longest reconnect pause ([`DEFAULT_RECONNECT_MAX`]).
    pub reconnect_max: Duration,
    /// Prefix of every key ([`DEFAULT_KEY_PREFIX`]); instances share limits when
    /// their prefixes and policy names match.
    pub key_prefix: String,
}

impl RedisOptions {
    /// Options with the defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
        }
    }
}

/// Counters of a [`RedisBackend`] (for metrics and the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RedisStats {
    /// Whether requests currently go to Redis.
    pub connected: bool,
    /// Outages so far (each logged once).
    pub outages: u64,
    /// Decisions made by Redis.
    pub shared_decisions: u64,
    /// Decisions made locally because Redis was not usable.
    pub fallback_decisions: u64,
    /// Requests whose Redis call failed or timed out (each also a fallback).
    pub errors: u64,
}

/// The Redis connection shared by every limiter of a process.
pub struct RedisBackend {
    state: Arc<State>,
    /// Dropping it stops the background thread.
    _stop: oneshot::Sender<()>,
}

struct State {
    /// `host:port` only: the URL may hold a password and is never logged.
    addr: String,
    key_prefix: String,
    timeout: Duration,
    script: Script,
    conn: ArcSwapOption<MultiplexedConnection>,
    up: AtomicBool,
    /// An outage has been logged and not yet its recovery.
    outage_logged: AtomicBool,
    down_since: Mutex<Option<Instant>>,
    wake: Notify,
    outages: AtomicU64,
    shared_decisions: AtomicU64,
    fallback_decisions: AtomicU64,
    errors: AtomicU64,
}

/// What the script answered.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reply {
    pub(super) allowed: bool,
    pub(super) ahead_us: u64,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("addr", &self.state.addr)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Validates the options and starts connecting in the background. Returns at
    /// once: an unreachable Redis is not an error, requests fall back meanwhile.
    pub fn start(options: RedisOptions) -> Result<Arc<RedisBackend>, PolicyError> {
        let err = |reason: String| PolicyError::Redis { reason };
        for (name, d) in [
            ("timeout", options.timeout),
            ("connect_timeout", options.connect_timeout),
            ("reconnect_min", options.reconnect_min),
        ] {
            if d.is_zero() {
                return Err(err(format!("{name} must be greater than zero")));
            }
        }
        if options.reconnect_max < options.reconnect_min {
            return Err(err("reconnect_max must not be less than reconnect_min".into()));
        }
        let info = options
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| err(format!("invalid url: {}", e.detail().unwrap_or("unsupported form"))))?;
        let addr = info.addr.to_string();
        let client = Client::open(info).map_err(|e| err(format!("invalid url: {e}")))?;
        let state = Arc::new(State {
            addr,
            key_prefix: options.key_prefix.clone(),
            timeout: options.timeout,
            script: Script::new(GCRA_SCRIPT),
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            outage_logged: AtomicBool::new(false),
            down_since: Mutex::new(Some(Instant::now())),
            wake: Notify::new(),
            outages: AtomicU64::new(0),
            shared_decisions: AtomicU64::new(0),
            fallback_decisions: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err(format!("cannot start the connection runtime: {e}")))?;
        let thread_state = state.clone();
        std::thread::Builder::new()
            .name("gatehouse-redis".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stop_rx => {}
                        () = supervise(&thread_state, &client, &options) => {}
                    }
                });
            })
            .map_err(|e| err(format!("cannot start the connection thread: {e}")))?;
        Ok(Arc::new(RedisBackend { state, _stop: stop_tx }))
    }

    /// Whether requests currently go to Redis.
    pub fn is_connected(&self) -> bool {
        self.state.up.load(Ordering::Acquire)
    }

    /// Waits until connected, at most `limit`. For startup and tests; the request
    /// path never waits for a connection.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.is_connected() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.state.key_prefix
    }

    /// Counters.
    pub fn stats(&self) -> RedisStats {
        let s = &self.state;
        RedisStats {
            connected: self.is_connected(),
            outages: s.outages.load(Ordering::Relaxed),
            shared_decisions: s.shared_decisions.load(Ordering::Relaxed),
            fallback_decisions: s.fallback_decisions.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
        }
    }

    pub(super) fn count_fallback(&self) {
        self.state.fallback_decisions.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs the script for `key`; `None` means "decide locally" (already counted).
    pub(super) async fn gcra(&self, key: &[u8], interval_us: u64, tau_us: u64) -> Option<Reply> {
        let s = &self.state;
        let Some(conn) = s.conn.load_full() else {
            self.count_fallback();
            return None;
        };
        let mut conn = MultiplexedConnection::clone(&conn);
        let mut call = s.script.key(key);
        call.arg(interval_us).arg(tau_us);
        let why = match tokio::time::timeout(s.timeout, call.invoke_async::<(i64, i64)>(&mut conn)).await {
            Ok(Ok((allowed, ahead))) => {
                s.shared_decisions.fetch_add(1, Ordering::Relaxed);
                return Some(Reply {
                    allowed: allowed == 1,
                    ahead_us: u64::try_from(ahead).unwrap_or(0),
                });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", s.timeout),
        };
        s.errors.fetch_add(1, Ordering::Relaxed);
        self.count_fallback();
        s.mark_down(&why);
        None
    }
}

impl State {
    /// Called by the request that saw the failure; only the first one of an
    /// outage logs.
    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            *self.down_since.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            self.log_outage(why);
            self.wake.notify_one();
        }
    }

    fn log_outage(&self, why: &str) {
        if !self.outage_logged.swap(true, Ordering::AcqRel) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                redis = %self.addr,
                error = %why,
                "Redis is unusable; shared rate limits fall back to local limits until it recovers."
            );
        }
    }

    fn mark_up(&self, conn: MultiplexedConnection) {
        self.conn.store(Some(Arc::new(conn)));
        self.up.store(true, Ordering::Release);
        let since = self.down_since.lock().unwrap_or_else(PoisonError::into_inner).take();
        if self.outage_logged.swap(false, Ordering::AcqRel) {
            tracing::info!(
                redis = %self.addr,
                outage = ?since.map(|t| t.elapsed()),
                fallback_decisions = self.fallback_decisions.load(Ordering::Relaxed),
                "Redis is reachable again; shared rate limits resumed."
            );
        } else {
            tracing::info!(redis = %self.addr, "Connected to Redis for shared rate limits.");
        }
    }
}

/// The background loop: connect (with backoff) whenever the state is down.
async fn supervise(state: &State, client: &Client, options: &RedisOptions) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(options.connect_timeout)
        .set_response_timeout(options.timeout);
    let mut backoff = options.reconnect_min;
    loop {
        if state.up.load(Ordering::Acquire) {
            state.wake.notified().await;
            // Give a restarting Redis a moment before the first attempt.
            tokio::time::sleep(options.reconnect_min).await;
            backoff = options.reconnect_min;
            continue;
        }
        match tokio::time::timeout(options.connect_timeout, connect(state, client, &config)).await {
            Ok(Ok(conn)) => {
                state.mark_up(conn);
                backoff = options.reconnect_min;
            }
            Ok(Err(e)) => {
                state.log_outage(&e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(options.reconnect_max);
            }
            Err(_) => {
                state.log_outage(&format!("connecting took longer than {:?}", options.connect_timeout));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(options.reconnect_max);
            }
        }
    }
}

/// A new connection, proven by one run of the script on a probe key (so a Redis
/// that accepts connections but cannot run scripts or write stays "down").
async fn connect(
    state: &State,
    client: &Client,
    config: &AsyncConnectionConfig,
) -> redis::RedisResult<MultiplexedConnection> {
    let mut conn = client.get_multiplexed_async_connection_with_config(config).await?;
    let probe = format!("{}probe", state.key_prefix);
    let _: (i64, i64) = state
        .script
        .key(probe)
        .arg(1u64)
        .arg(0u64)
        .invoke_async(&mut conn)
        .await?;
    Ok(conn)
}
