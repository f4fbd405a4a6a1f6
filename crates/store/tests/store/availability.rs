//! A database that is down: calls fail fast, the store recovers by itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_store::{MetaRepo, ReleaseRepo, Store, StoreState};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::common::{self, PgScratch, READY};

/// A port on 127.0.0.1 where nothing listens (bound once, then released).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn calls_fail_fast_while_postgres_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port().await;
    let mut options = common::options(
        &format!("postgres://postgres:hunter2@127.0.0.1:{port}/test"),
        dir.path(),
    );
    options.connect_timeout = Duration::from_secs(2);
    let store = Store::open(options).unwrap();
    assert!(!store.is_ready());

    for _ in 0..3 {
        let started = Instant::now();
        let err = store.releases().list("frontend").await.unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The background task has tried and says why.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let StoreState::Unavailable { error, attempts, .. } = store.state() {
            assert!(attempts >= 1);
            assert!(!error.is_empty());
            break;
        }
        assert!(Instant::now() < deadline, "state: {:?}", store.state());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = store.meta().get("x").await.unwrap_err();
    assert!(err.to_string().contains("database unavailable"), "{err}");
    // The password never shows up in what may be logged.
    assert!(!format!("{store:?} {:?} {err}", store.state()).contains("hunter2"));
    let err = store.wait_ready(Duration::from_millis(200)).await.unwrap_err();
    assert!(err.is_unavailable());
}

/// A TCP forwarder to PostgreSQL that can be started and stopped, standing in for a
/// database server that goes down and comes back.
struct Proxy {
    port: u16,
    upstream: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    fn new(port: u16, upstream: String) -> Self {
        Self {
            port,
            upstream,
            tasks: Arc::default(),
        }
    }

    async fn start(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let upstream = self.upstream.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Closes the listener and every forwarded connection.
    fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_becomes_ready_when_postgres_comes_back_and_trips_when_it_goes() {
    let Some(admin) = common::postgres_url() else {
        return;
    };
    let scratch = PgScratch::schema(&admin).await;
    let real = url::Url::parse(&scratch.url).unwrap();
    let upstream = format!("{}:{}", real.host_str().unwrap(), real.port().unwrap_or(5432));
    let port = closed_port().await;
    let mut via_proxy = real.clone();
    via_proxy.set_port(Some(port)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut options = common::options(via_proxy.as_str(), dir.path());
    options.connect_timeout = Duration::from_secs(2);
    let store = Store::open(options).unwrap();

    // Down at startup: fast failures.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    assert!(store.meta().get("k").await.unwrap_err().is_unavailable());
    assert!(started.elapsed() < Duration::from_secs(1));

    // The database appears: the store connects, migrates and serves.
    let proxy = Proxy::new(port, upstream);
    proxy.start().await;
    store.wait_ready(READY).await.unwrap();
    store.meta().set("k", "v").await.unwrap();

    // It goes away: the first call notices, the following ones fail fast.
    proxy.stop();
    let started = Instant::now();
    let err = store.meta().get("k").await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    assert!(!store.is_ready());
    let started = Instant::now();
    let err = store.releases().list("s").await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // And it comes back.
    proxy.start().await;
    store.wait_ready(READY).await.unwrap();
    assert_eq!(store.meta().get("k").await.unwrap().as_deref(), Some("v"));
    store.close().await;
    proxy.stop();
}
