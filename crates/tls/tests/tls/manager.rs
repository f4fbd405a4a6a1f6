//! The manager's schedule under a controllable clock, and on-demand refusals.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gatehouse_tls::on_demand::OnDemandError;
use gatehouse_tls::store::StoreFuture;
use gatehouse_tls::{
    CertEvent, CertManager, CertPem, CertResolver, CertStore, Challenges, Clock, InternalCa, Issuer, ManagedCert,
    ManagerConfig, ManualClock, OnDemand, OnDemandConfig, OnDemandPolicy,
};

use crate::common::TempDir;

/// Wall time that moves with tokio's (paused) clock, so the manager's sleeps and its
/// notion of "now" agree while the test runs in milliseconds.
struct TokioClock {
    base: SystemTime,
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.base + self.start.elapsed()
    }
}

/// An in-memory store (no blocking I/O, which paused time cannot see).
#[derive(Default)]
struct MemoryStore {
    certs: Mutex<HashMap<String, CertPem>>,
}

impl CertStore for MemoryStore {
    fn load_cert<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<CertPem>> {
        Box::pin(async move { Ok(self.certs.lock().unwrap().get(name).cloned()) })
    }
    fn save_cert<'a>(&'a self, name: &'a str, cert: &'a CertPem) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.certs.lock().unwrap().insert(name.to_owned(), cert.clone());
            Ok(())
        })
    }
    fn list_certs(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move { Ok(self.certs.lock().unwrap().keys().cloned().collect()) })
    }
    fn load_account<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async { Ok(None) })
    }
    fn save_account<'a>(&'a self, _: &'a str, _: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn try_lock<'a>(&'a self, _: &'a str, _: &'a str, _: Duration) -> StoreFuture<'a, bool> {
        Box::pin(async { Ok(true) })
    }
    fn unlock<'a>(&'a self, _: &'a str, _: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// Issues from the internal CA, failing on the attempts its script says; records when.
struct ScriptedIssuer {
    ca: InternalCa,
    script: Mutex<Vec<bool>>,
    calls: Mutex<Vec<SystemTime>>,
}

impl Issuer for ScriptedIssuer {
    fn issue<'a>(&'a self, names: &'a [String], _: Option<&'a CertPem>, now: SystemTime) -> StoreFuture<'a, CertPem> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(now);
            let mut script = self.script.lock().unwrap();
            let ok = if script.is_empty() { true } else { script.remove(0) };
            if ok {
                self.ca.issue(names, now)
            } else {
                Err(gatehouse_tls::TlsError::Config("scripted failure".into()))
            }
        })
    }
}

async fn next_event(rx: &mut tokio::sync::broadcast::Receiver<CertEvent>) -> CertEvent {
    tokio::time::timeout(Duration::from_secs(30 * 86_400), rx.recv())
        .await
        .expect("no event within 30 simulated days")
        .unwrap()
}

fn within(gap: Duration, low: Duration, high: Duration) -> bool {
    gap >= low && gap <= high + Duration::from_secs(1)
}

#[tokio::test(start_paused = true)]
async fn backoff_after_failures_then_renewal_at_two_thirds_keeping_the_old_cert() {
    let dir = TempDir::new("tls-manager");
    let issuer = Arc::new(ScriptedIssuer {
        ca: InternalCa::load_or_create(&dir.0).unwrap(),
        script: Mutex::new(vec![false, false, false, true, false, false, true]),
        calls: Mutex::new(Vec::new()),
    });
    let resolver = Arc::new(CertResolver::new(Arc::new(Challenges::new())));
    let clock = Arc::new(TokioClock {
        base: SystemTime::now(),
        start: tokio::time::Instant::now(),
    });
    let manager = CertManager::start(
        vec![ManagedCert {
            names: vec!["m.test".into(), "www.m.test".into()],
            issuer: issuer.clone(),
        }],
        Arc::new(MemoryStore::default()),
        resolver.clone(),
        clock.clone(),
        ManagerConfig::default(),
    );
    let mut events = manager.subscribe();

    for attempt in 1..=3 {
        match next_event(&mut events).await {
            CertEvent::Failed {
                name,
                attempt: n,
                error,
            } => {
                assert_eq!((name.as_str(), n), ("m.test", attempt));
                assert!(error.contains("scripted failure"));
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(
            resolver.lookup("m.test").is_none(),
            "no certificate yet: handshakes fail"
        );
    }
    assert_eq!(
        next_event(&mut events).await,
        CertEvent::Obtained { name: "m.test".into() }
    );
    let first = resolver.lookup("m.test").unwrap();
    assert!(resolver.lookup("www.m.test").is_some());

    let calls = issuer.calls.lock().unwrap().clone();
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].duration_since(w[0]).unwrap()).collect();
    // Jittered exponential backoff: [30 s, 60 s), [60 s, 120 s), [120 s, 240 s).
    let s = Duration::from_secs;
    assert!(within(gaps[0], s(30), s(60)), "{gaps:?}");
    assert!(within(gaps[1], s(60), s(120)), "{gaps:?}");
    assert!(within(gaps[2], s(120), s(240)), "{gaps:?}");

    // Renewal at two thirds of the 7-day (+1 h backdated) lifetime fails twice; the
    // first certificate keeps being served.
    for attempt in 1..=2 {
        assert!(matches!(next_event(&mut events).await, CertEvent::Failed { attempt: n, .. } if n == attempt));
        assert!(Arc::ptr_eq(&first, &resolver.lookup("m.test").unwrap()));
    }
    assert_eq!(
        next_event(&mut events).await,
        CertEvent::Renewed { name: "m.test".into() }
    );
    assert_ne!(first.cert[0], resolver.lookup("m.test").unwrap().cert[0]);

    let calls = issuer.calls.lock().unwrap().clone();
    let lifetime = s(7 * 86_400 + 3600);
    let due = calls[3] - s(3600) + lifetime * 2 / 3;
    // Certificates carry whole seconds, so the due time is known to within a second.
    let first_renewal = calls[4];
    let early = due.duration_since(first_renewal).unwrap_or_default();
    let late = first_renewal.duration_since(due).unwrap_or_default();
    assert!(
        early < s(1) && late < s(2),
        "renewal attempted {early:?} early / {late:?} late"
    );
    assert!(within(calls[5].duration_since(calls[4]).unwrap(), s(30), s(60)));
    assert!(within(calls[6].duration_since(calls[5]).unwrap(), s(60), s(120)));

    let expiry = manager.expiries();
    assert_eq!(expiry.len(), 2);
    assert!(
        expiry.iter().all(|e| e.days_left == 6 || e.days_left == 7),
        "{expiry:?}"
    );
}

/// A stored certificate is reused only if it covers every host name and came from the
/// site's issuer; otherwise a new one is ordered at startup.
#[tokio::test]
async fn stored_certificates_are_reused_only_when_they_fit() {
    let dir = TempDir::new("tls-reuse");
    let ca = Arc::new(InternalCa::load_or_create(&dir.0.join("ca")).unwrap());
    let other_ca = InternalCa::load_or_create(&dir.0.join("other-ca")).unwrap();
    let store = Arc::new(MemoryStore::default());
    let now = SystemTime::now();
    let fits = ca.issue(&["s.test".into(), "www.s.test".into()], now).unwrap();
    store.save_cert("s.test", &fits).await.unwrap();
    store
        .save_cert("narrow.test", &ca.issue(&["narrow.test".into()], now).unwrap())
        .await
        .unwrap();
    store
        .save_cert("foreign.test", &other_ca.issue(&["foreign.test".into()], now).unwrap())
        .await
        .unwrap();

    let resolver = Arc::new(CertResolver::new(Arc::new(Challenges::new())));
    let managed = |names: &[&str]| ManagedCert {
        names: names.iter().map(|n| n.to_string()).collect(),
        issuer: ca.clone(),
    };
    let manager = CertManager::start(
        vec![],
        store.clone(),
        resolver.clone(),
        Arc::new(gatehouse_tls::SystemClock),
        ManagerConfig::default(),
    );
    let mut events = manager.subscribe();
    manager.add(managed(&["s.test", "www.s.test"]));
    manager.add(managed(&["narrow.test", "www.narrow.test"]));
    manager.add(managed(&["foreign.test"]));
    let mut obtained = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            CertEvent::Obtained { name } => obtained.push(name),
            other => panic!("{other:?}"),
        }
    }
    obtained.sort();
    assert_eq!(obtained, vec!["foreign.test", "narrow.test"]);
    let served = resolver.lookup("www.s.test").unwrap();
    let stored = gatehouse_tls::LoadedCert::from_pem("s.test", &fits).unwrap();
    assert_eq!(
        served.cert[0], stored.key.cert[0],
        "the fitting stored certificate is reused"
    );
    assert!(resolver.lookup("www.narrow.test").is_some());
    assert_eq!(manager.managed(), vec!["foreign.test", "narrow.test", "s.test"]);
}

#[test]
fn on_demand_needs_allow_or_ask() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let err = OnDemandPolicy::new(OnDemandConfig::new(vec![], None), clock).unwrap_err();
    assert!(err.to_string().contains("needs `allow` or `ask`"), "{err}");
}

#[tokio::test]
async fn on_demand_allow_list_and_rate_limits() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let mut config = OnDemandConfig::new(vec!["*.shop.test".into(), "a.test".into()], None);
    config.global_limit = 2;
    let policy = OnDemandPolicy::new(config, clock.clone()).unwrap();

    assert_eq!(
        policy.check("evil.test").await,
        Err(OnDemandError::NotAllowed {
            name: "evil.test".into()
        })
    );
    assert!(matches!(
        policy.check("x.y.shop.test").await,
        Err(OnDemandError::NotAllowed { .. })
    ));
    for bad in ["127.0.0.1", "*.shop.test", "localhost", "UPPER.shop.test", "a b"] {
        assert!(
            matches!(policy.check(bad).await, Err(OnDemandError::InvalidName { .. })),
            "{bad}"
        );
    }
    policy.check("one.shop.test").await.unwrap();
    assert!(matches!(
        policy.check("one.shop.test").await,
        Err(OnDemandError::NameRateLimited { .. })
    ));
    policy.check("a.test").await.unwrap();
    assert!(matches!(
        policy.check("two.shop.test").await,
        Err(OnDemandError::GlobalRateLimited { .. })
    ));
    clock.advance(Duration::from_secs(3600));
    policy.check("two.shop.test").await.unwrap();
    policy.check("one.shop.test").await.unwrap();
}

/// A tiny `ask` endpoint: 200 for `domain=ok.test`, 403 for anything else.
async fn ask_server() -> SocketAddr {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let ok = req.uri().query() == Some("token=t&domain=ok.test");
                    let status = if ok { 200 } else { 403 };
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .status(status)
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .unwrap(),
                    )
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn on_demand_through_the_manager() {
    let dir = TempDir::new("tls-on-demand");
    let resolver = Arc::new(CertResolver::new(Arc::new(Challenges::new())));
    let clock: Arc<dyn Clock> = Arc::new(gatehouse_tls::SystemClock);
    let ca = Arc::new(InternalCa::load_or_create(&dir.0.join("ca")).unwrap());

    // Off by default: nothing is obtained for unknown names.
    let off = CertManager::start(
        vec![],
        Arc::new(MemoryStore::default()),
        resolver.clone(),
        clock.clone(),
        ManagerConfig::default(),
    );
    assert_eq!(off.ensure_on_demand("ok.test").await, Err(OnDemandError::Disabled));
    drop(off);

    let ask = format!("http://{}/check?token=t", ask_server().await).parse().unwrap();
    let policy = OnDemandPolicy::new(OnDemandConfig::new(vec![], Some(ask)), clock.clone()).unwrap();
    let manager = CertManager::start(
        vec![],
        Arc::new(MemoryStore::default()),
        resolver.clone(),
        clock,
        ManagerConfig {
            on_demand: Some(OnDemand { policy, issuer: ca }),
            ..ManagerConfig::default()
        },
    );
    assert_eq!(
        manager.ensure_on_demand("evil.test").await,
        Err(OnDemandError::AskRefused {
            name: "evil.test".into(),
            status: 403
        })
    );
    assert!(resolver.lookup("evil.test").is_none());
    manager.ensure_on_demand("ok.test").await.unwrap();
    assert!(resolver.lookup("ok.test").is_some());
    // Known now: no second order, no rate limit hit.
    manager.ensure_on_demand("OK.test.").await.unwrap();
    // And renewed like a configured name until removed.
    assert_eq!(manager.managed(), vec!["ok.test".to_owned()]);
    assert!(manager.remove("ok.test"));
    assert!(!manager.remove("ok.test"));
    assert!(manager.managed().is_empty());
}
