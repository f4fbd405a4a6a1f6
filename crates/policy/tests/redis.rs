//! Shared rate limits against a real Redis (`GATEHOUSE_TEST_REDIS_URL`), and the
//! fallback to local limits when it is closed, cut mid-test, or stalls.
//!
//! Redis is reached through a small TCP proxy in this file where a test needs to
//! break the connection; the proxy only forwards to the configured Redis on
//! loopback. Every test uses its own key prefix, so tests run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_policy::{DecisionSource, LimiterOptions, RateKey, RateLimiter, RateSpec, RedisBackend, RedisOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const CLIENT: RateKey<'static> = RateKey::Ip(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)));

fn redis_url() -> Option<String> {
    match std::env::var("GATEHOUSE_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but GATEHOUSE_TEST_REDIS_URL is not set"
            );
            println!("skipped: set GATEHOUSE_TEST_REDIS_URL");
            None
        }
    }
}

/// A prefix no other test (or earlier run) uses.
fn prefix(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("gatehouse-test:{test}:{}:{nanos}:", std::process::id())
}

fn options(url: &str, test: &str) -> RedisOptions {
    RedisOptions {
        // Generous for a loaded 2-core CI machine; the outage tests check the
        // bound separately.
        timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(500),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        key_prefix: prefix(test),
        ..RedisOptions::new(url)
    }
}

fn limiter(spec: &str, backend: &Arc<RedisBackend>) -> RateLimiter {
    let rate = spec.parse::<RateSpec>().unwrap().rate;
    RateLimiter::new("shared", rate, &LimiterOptions::default())
        .unwrap()
        .shared(backend.clone())
}

#[tokio::test]
async fn two_instances_share_one_limit() {
    let Some(url) = redis_url() else { return };
    let opts = options(&url, "share");
    // Two backends: two connections and two threads, as two gatehouse processes.
    let (one, two) = (
        RedisBackend::start(opts.clone()).unwrap(),
        RedisBackend::start(opts).unwrap(),
    );
    assert!(
        one.wait_connected(Duration::from_secs(5)).await,
        "cannot reach Redis at {url}"
    );
    assert!(two.wait_connected(Duration::from_secs(5)).await);
    let (a, b) = (limiter("1/m burst 10", &one), limiter("1/m burst 10", &two));

    let mut allowed = [0, 0];
    let mut last_denied = None;
    for i in 0..40 {
        let d = if i % 2 == 0 {
            a.check(&CLIENT).await
        } else {
            b.check(&CLIENT).await
        };
        assert_eq!(d.source, DecisionSource::Shared);
        if d.allowed {
            allowed[i % 2] += 1;
        } else {
            last_denied = Some(d);
        }
    }
    assert_eq!(allowed, [5, 5], "the two instances together allow exactly the burst");
    let denied = last_denied.unwrap();
    // The next request is one emission interval (60 s) away.
    assert!(
        (59..=60).contains(&denied.retry_after_secs()),
        "{:?}",
        denied.retry_after
    );
    assert_eq!(denied.headers()["ratelimit-policy"], "\"shared\";q=10;w=600");
    assert_eq!(one.stats().shared_decisions, 20);
    assert_eq!(two.stats().shared_decisions, 20);
    assert_eq!(one.stats().fallback_decisions, 0);
    // Other clients are not affected.
    let other = RateKey::Ip(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 8)));
    let d = b.check(&other).await;
    assert!(d.allowed);
    assert_eq!(d.remaining, 9);
}

#[tokio::test]
async fn shared_limit_recovers_after_the_window() {
    let Some(url) = redis_url() else { return };
    let backend = RedisBackend::start(options(&url, "recover")).unwrap();
    assert!(backend.wait_connected(Duration::from_secs(5)).await);
    let l = limiter("20/s burst 2", &backend);
    let first = l.check(&CLIENT).await;
    assert!(first.allowed);
    assert_eq!(first.remaining, 1);
    assert!(l.check(&CLIENT).await.allowed);
    let denied = l.check(&CLIENT).await;
    assert!(!denied.allowed);
    assert_eq!(denied.source, DecisionSource::Shared);
    assert!(
        denied.retry_after <= Duration::from_millis(50),
        "{:?}",
        denied.retry_after
    );
    assert_eq!(denied.headers()["retry-after"], "1");
    tokio::time::sleep(denied.retry_after + Duration::from_millis(5)).await;
    let again = l.check(&CLIENT).await;
    assert!(again.allowed, "one request passes after one emission interval");
    assert!(!l.check(&CLIENT).await.allowed);
    // A full refill brings the whole burst back.
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(l.check(&CLIENT).await.allowed);
    assert!(l.check(&CLIENT).await.allowed);
}

#[tokio::test]
async fn closed_port_falls_back_to_local_limits() {
    let Some(_) = redis_url() else { return };
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut opts = options(&format!("redis://{closed}"), "closed");
    opts.timeout = Duration::from_secs(1);
    let backend = RedisBackend::start(opts).unwrap();
    let l = limiter("1/m burst 3", &backend);
    let started = Instant::now();
    let mut allowed = 0;
    for _ in 0..10 {
        let d = l.check(&CLIENT).await;
        assert_eq!(d.source, DecisionSource::Fallback);
        allowed += usize::from(d.allowed);
    }
    assert_eq!(allowed, 3, "local limits apply: never fail open");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no request waited for Redis: {:?}",
        started.elapsed()
    );
    // Several reconnect attempts fail meanwhile, but the outage is reported once.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = backend.stats();
    assert!(!stats.connected);
    assert_eq!(stats.outages, 1);
    assert_eq!(stats.fallback_decisions, 10);
    assert_eq!(stats.shared_decisions, 0);
}

#[tokio::test]
async fn outage_mid_test_falls_back_and_recovers() {
    let Some(url) = redis_url() else { return };
    let proxy = Proxy::start(&url).await;
    let backend = RedisBackend::start(options(&proxy.url, "outage")).unwrap();
    assert!(backend.wait_connected(Duration::from_secs(5)).await);
    let l = limiter("1/m burst 5", &backend);
    for _ in 0..2 {
        let d = l.check(&CLIENT).await;
        assert!(d.allowed);
        assert_eq!(d.source, DecisionSource::Shared);
    }

    proxy.set(Mode::Cut);
    let started = Instant::now();
    let d = l.check(&CLIENT).await;
    assert_eq!(d.source, DecisionSource::Fallback);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "bounded by the timeout: {:?}",
        started.elapsed()
    );
    // The local limiter decides from now on: its own fresh burst of 5, then no.
    let mut allowed = usize::from(d.allowed);
    for _ in 0..9 {
        let d = l.check(&CLIENT).await;
        assert_eq!(d.source, DecisionSource::Fallback);
        allowed += usize::from(d.allowed);
    }
    assert_eq!(allowed, 5);
    let stats = backend.stats();
    assert!(!stats.connected);
    assert_eq!(stats.outages, 1, "logged once per outage, not per request");
    assert_eq!(stats.fallback_decisions, 10);

    proxy.set(Mode::Forward);
    assert!(
        backend.wait_connected(Duration::from_secs(5)).await,
        "reconnects in the background"
    );
    let d = l.check(&CLIENT).await;
    assert_eq!(d.source, DecisionSource::Shared);
    // Redis kept its count through the outage: 2 before + this one.
    assert!(d.allowed);
    assert_eq!(d.remaining, 2);
    assert_eq!(backend.stats().outages, 1);
}

#[tokio::test]
async fn stalled_redis_costs_one_timeout_then_nothing() {
    let Some(url) = redis_url() else { return };
    let proxy = Proxy::start(&url).await;
    let mut opts = options(&proxy.url, "stall");
    opts.timeout = Duration::from_millis(150);
    let backend = RedisBackend::start(opts).unwrap();
    assert!(backend.wait_connected(Duration::from_secs(5)).await);
    let l = limiter("1/m burst 5", &backend);
    assert_eq!(l.check(&CLIENT).await.source, DecisionSource::Shared);

    proxy.set(Mode::Stall);
    let started = Instant::now();
    let d = l.check(&CLIENT).await;
    let waited = started.elapsed();
    assert_eq!(d.source, DecisionSource::Fallback);
    assert!(
        waited >= Duration::from_millis(140),
        "waited for the timeout: {waited:?}"
    );
    assert!(waited < Duration::from_millis(600), "but not much longer: {waited:?}");
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(l.check(&CLIENT).await.source, DecisionSource::Fallback);
    }
    assert!(
        started.elapsed() < Duration::from_millis(140),
        "later requests skip Redis: {:?}",
        started.elapsed()
    );
    assert_eq!(backend.stats().outages, 1);
    assert_eq!(backend.stats().errors, 1);

    proxy.set(Mode::Forward);
    assert!(backend.wait_connected(Duration::from_secs(5)).await);
    assert_eq!(l.check(&CLIENT).await.source, DecisionSource::Shared);
}

#[tokio::test]
async fn invalid_options_are_refused() {
    assert!(RedisBackend::start(RedisOptions::new("http://127.0.0.1:6379")).is_err());
    let mut o = RedisOptions::new("redis://127.0.0.1:6379");
    o.timeout = Duration::ZERO;
    assert!(RedisBackend::start(o).is_err());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Bytes flow both ways.
    Forward,
    /// Connections stay open but nothing is forwarded (a hung Redis).
    Stall,
    /// Every connection is closed and new ones are closed at once (Redis stopped).
    Cut,
}

struct Proxy {
    url: String,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    async fn start(redis_url: &str) -> Proxy {
        // redis://[user:pass@]host:port[/db]
        let (scheme, rest) = redis_url.split_once("://").unwrap();
        let (userinfo, hostpath) = match rest.rsplit_once('@') {
            Some((u, h)) => (format!("{u}@"), h),
            None => (String::new(), rest),
        };
        let (hostport, path) = match hostpath.split_once('/') {
            Some((h, p)) => (h, format!("/{p}")),
            None => (hostpath, String::new()),
        };
        let target: SocketAddr = tokio::net::lookup_host(hostport).await.unwrap().next().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(Mode::Forward);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *rx.borrow() == Mode::Cut {
                    continue; // dropped: closed at once
                }
                tokio::spawn(pipe(client, target, rx.clone()));
            }
        });
        Proxy {
            url: format!("{scheme}://{userinfo}{addr}{path}"),
            mode,
        }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn pipe(client: TcpStream, target: SocketAddr, rx: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let mut cut = rx.clone();
    tokio::select! {
        () = forward(cr, sw, rx.clone()) => {}
        () = forward(sr, cw, rx) => {}
        _ = cut.wait_for(|m| *m == Mode::Cut) => {}
    }
    // Dropping the halves closes both connections.
}

async fn forward(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Ok(m) = mode.wait_for(|m| *m != Mode::Stall).await.map(|m| *m) else {
            return;
        };
        if m == Mode::Cut || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
