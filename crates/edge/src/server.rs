//! Listeners and worker threads.
//!
//! Each worker is a thread with its own single-threaded tokio runtime, its own
//! accept loop and its own upstream connection pools (thread-per-core, as nginx
//! runs one process per core). Every worker has its own listening socket per
//! address, bound with `SO_REUSEPORT`, so the kernel spreads new connections
//! across workers and no lock is shared on the request path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use gatehouse_config::Config;
use gatehouse_observe::AccessLogSender;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::EdgeError;
use crate::forwarding::PeerInfo;
use crate::handler::{ConnCtx, Shared, Worker};
use crate::healthcheck;
use crate::policies::ConnSlot;
use crate::tls::{TlsRuntime, WorkerTls};

/// Pending connections the kernel queues per socket; matches common
/// `net.core.somaxconn` defaults so bursts of new clients are not refused.
const LISTEN_BACKLOG: i32 = 4096;
/// The first bytes of an HTTP/2 connection with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// What a client that never finished its first request head gets before the
/// connection closes.
const REQUEST_TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
/// Concurrent HTTP/2 streams per connection: enough for a browser's page load,
/// bounded so one connection cannot monopolise a worker.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Blocking-pool threads per worker (file reads for static routes). Reads are
/// short; more threads than this only add per-thread allocator heaps and
/// memory (an unbounded pool reached 460 threads and 2.9 GB serving 50
/// concurrent 10 MB downloads), while queued reads wait microseconds.
const WORKER_BLOCKING_THREADS: usize = 8;
/// Pause after an `accept` error such as running out of file descriptors, so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// A server whose sockets are bound but which is not yet serving.
pub struct BoundServer {
    config: Arc<Config>,
    access_log: Option<AccessLogSender>,
    /// `sockets[worker]` holds that worker's socket for every address: the
    /// HTTP ones, then (from index `local_addrs.len()`) the HTTPS ones.
    sockets: Vec<Vec<std::net::TcpListener>>,
    local_addrs: Vec<SocketAddr>,
    https_addrs: Vec<SocketAddr>,
    tls: Option<TlsRuntime>,
}

/// A running server; dropping it does not stop it — call [`RunningServer::shutdown`].
pub struct RunningServer {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
}

/// Binds every listener of `config`, so that errors such as "address in use"
/// are reported before anything starts serving.
pub fn bind(config: Arc<Config>, access_log: Option<AccessLogSender>) -> Result<BoundServer, EdgeError> {
    let workers = config.server.workers.get();
    let mut sockets: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut local_addrs = Vec::with_capacity(config.server.http.len());
    let mut https_addrs = Vec::with_capacity(config.server.https.len());
    for (i, &addr) in config.server.http.iter().chain(&config.server.https).enumerate() {
        let bind_err = |source| EdgeError::Bind { addr, source };
        // Probe without SO_REUSEPORT first: it fails if anything else holds the
        // port, even another process that set SO_REUSEPORT itself, so two servers
        // never silently share a port. It also resolves port 0.
        let actual = {
            let probe = std::net::TcpListener::bind(addr).map_err(bind_err)?;
            probe.local_addr().map_err(bind_err)?
        };
        for worker in &mut sockets {
            worker.push(reuseport_listener(actual).map_err(|source| EdgeError::Bind { addr: actual, source })?);
        }
        if i < config.server.http.len() {
            local_addrs.push(actual);
        } else {
            https_addrs.push(actual);
        }
    }
    Ok(BoundServer {
        config,
        access_log,
        sockets,
        local_addrs,
        https_addrs,
        tls: None,
    })
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

impl BoundServer {
    /// The bound plain-HTTP addresses (with real ports when the config said port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The bound HTTPS addresses.
    pub fn https_addrs(&self) -> &[SocketAddr] {
        &self.https_addrs
    }

    /// Serves HTTPS on the `https` listeners with these certificates, and answers
    /// ACME HTTP-01 challenges on the plain-HTTP ones. Required when the config
    /// has HTTPS listeners.
    pub fn with_tls(mut self, tls: TlsRuntime) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Starts the worker threads.
    pub fn start(self) -> Result<RunningServer, EdgeError> {
        if !self.https_addrs.is_empty() && self.tls.is_none() {
            return Err(EdgeError::NoTls(self.https_addrs));
        }
        let mut shared = Shared::new(self.config.clone(), self.access_log)?;
        let https_port = self.https_addrs.first().map(SocketAddr::port);
        shared.tls = crate::tls::SitesTls::new(&self.config, https_port, self.tls.as_ref());
        let shared = Arc::new(shared);
        let https_from = self.local_addrs.len();
        let (tx, rx) = watch::channel(false);
        let deadline = self.config.server.shutdown_timeout;
        let mut threads = Vec::with_capacity(self.sockets.len() + 1);
        let jobs = self
            .config
            .upstreams
            .iter()
            .zip(&shared.health)
            .filter_map(|(u, health)| u.health.as_ref().map(|check| (u, health, check)))
            .flat_map(|(u, health, check)| {
                u.targets.iter().zip(health).map(|(t, h)| healthcheck::Job {
                    target: t.clone(),
                    check: check.clone(),
                    health: h.clone(),
                })
            })
            .collect();
        threads.extend(healthcheck::start(jobs, rx.clone()));
        for (i, sockets) in self.sockets.into_iter().enumerate() {
            let shared = shared.clone();
            let rx = rx.clone();
            let tls = self.tls.clone().map(|t| (t, https_from));
            let thread = std::thread::Builder::new()
                .name(format!("gatehouse-worker-{i}"))
                .spawn(move || run_worker(i, shared, sockets, rx, deadline, tls))
                .map_err(EdgeError::Thread)?;
            threads.push(thread);
        }
        tracing::info!(addrs = ?self.local_addrs, https = ?self.https_addrs, workers = self.config.server.workers.get(), "Listening.");
        Ok(RunningServer {
            shared,
            shutdown: tx,
            threads,
            local_addrs: self.local_addrs,
        })
    }
}

impl RunningServer {
    /// The bound addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// A live view of every upstream target's health, for the admin API.
    pub fn upstreams(&self) -> UpstreamsView {
        UpstreamsView(self.shared.clone())
    }

    /// Starts a graceful shutdown: listeners close at once, idle connections are
    /// closed, in-flight requests get up to `shutdown_timeout` to finish.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until every worker has stopped. Blocks the calling thread.
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("A worker thread panicked.");
            }
        }
    }

    /// Waits until every worker has stopped, without blocking an async runtime.
    pub async fn wait(self) {
        let _ = tokio::task::spawn_blocking(move || self.join()).await;
    }
}

fn run_worker(
    id: usize,
    shared: Arc<Shared>,
    sockets: Vec<std::net::TcpListener>,
    shutdown: watch::Receiver<bool>,
    deadline: Duration,
    tls: Option<(TlsRuntime, usize)>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(WORKER_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "Cannot start worker runtime.");
            return;
        }
    };
    runtime.block_on(async move {
        let worker = Arc::new(Worker::new(shared.clone()));
        let graceful = Arc::new(GracefulShutdown::new());
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let limits = &shared.config.limits;
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_headers(limits.max_headers)
            // The head must fit the read buffer: a larger one gets 431.
            .max_buf_size(limits.max_header_size.max(8192))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
        // Sockets from index `https_from` on are HTTPS.
        let (tls, https_from) = match tls {
            Some((runtime, from)) => (Some(Arc::new(WorkerTls::new(runtime, &builder))), from),
            None => (None, usize::MAX),
        };
        let builder = Arc::new(builder);

        let mut accept_tasks = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            let listener = match TcpListener::from_std(socket) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(worker = id, error = %e, "Cannot register listener.");
                    continue;
                }
            };
            accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                worker.clone(),
                builder.clone(),
                graceful.clone(),
                shared.clone(),
                shutdown.clone(),
                tls.clone().filter(|_| i >= https_from),
            )));
        }
        for t in accept_tasks {
            let _ = t.await;
        }
        // Listeners are closed now. Ask connections to finish and wait for them.
        let Ok(graceful) = Arc::try_unwrap(graceful) else {
            tracing::error!(
                worker = id,
                "Shutdown tracker still shared; not waiting for connections."
            );
            return;
        };
        let open = graceful.count();
        if open > 0 {
            tracing::info!(worker = id, connections = open, ?deadline, "Draining connections.");
        }
        if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
            tracing::warn!(
                worker = id,
                ?deadline,
                "Shutdown deadline passed; closing remaining connections."
            );
        }
    });
}

async fn accept_loop(
    listener: TcpListener,
    worker: Arc<Worker>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<Arc<WorkerTls>>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "Accept failed.");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Some(slot) = ConnSlot::acquire(shared.policies.connections.as_ref(), peer.ip()) else {
            tracing::debug!(%peer, "Connection refused: too many open connections from this address.");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let peer_info = PeerInfo::new(peer.ip(), &shared.config.server.trusted_proxies);
        let header_timeout = shared.config.limits.header_timeout;
        let worker = worker.clone();
        let watcher = graceful.watcher();
        if let Some(tls) = &tls {
            let (tls, stop) = (tls.clone(), shutdown.clone());
            tokio::spawn(async move {
                let _slot = slot;
                crate::tls::serve_connection(tls, stream, peer, peer_info, header_timeout, worker, watcher, stop).await;
            });
            continue;
        }
        let conn = Arc::new(ConnCtx::new(peer_info, "http"));
        let builder = builder.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let ready = tokio::select! {
                ready = first_bytes(&stream, header_timeout) => ready,
                _ = stop.wait_for(|stop| *stop) => false,
            };
            if !ready {
                return;
            }
            // A second handle on the socket, to answer 408 after hyper gave up
            // on a request head.
            let alarm = socket2::SockRef::from(&stream).try_clone().ok();
            let service_conn = conn.clone();
            let service = service_fn(move |req| {
                let worker = worker.clone();
                let conn = service_conn.clone();
                async move { Ok::<_, Infallible>(worker.handle(&conn, req).await) }
            });
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                let timed_out = e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout);
                if timed_out && conn.requests.load(Ordering::Relaxed) == 0 {
                    if let Some(alarm) = alarm {
                        let _ = alarm.send(REQUEST_TIMEOUT_RESPONSE);
                    }
                }
                tracing::debug!(%peer, error = %e, "Client connection ended with an error.");
            }
        });
    }
}

/// Waits until the client has sent enough to tell HTTP/1 from HTTP/2, at most
/// `timeout`; `false` when it sent nothing in time or closed. (Version
/// detection has no timeout of its own, and hyper's head timeout starts only
/// after it.)
async fn first_bytes(stream: &tokio::net::TcpStream, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 {
            return false;
        }
        if n >= H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] {
            return true;
        }
        // Part of an HTTP/2 preface: the rest is on its way.
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A cheap, cloneable handle to the live state of the upstream targets.
#[derive(Clone)]
pub struct UpstreamsView(Arc<Shared>);

/// One upstream in an [`UpstreamsView`] snapshot.
#[derive(Debug, Clone)]
pub struct UpstreamStatus {
    /// `[upstream.NAME]`
    pub name: String,
    /// Balancing policy (`round_robin`, `least_conn`, …).
    pub policy: &'static str,
    /// Its targets in config order.
    pub targets: Vec<TargetStatus>,
}

/// One target in an [`UpstreamsView`] snapshot.
#[derive(Debug, Clone)]
pub struct TargetStatus {
    /// `host:port`
    pub address: String,
    /// Configured weight.
    pub weight: u32,
    /// `up`, `down` (failing active checks) or `ejected` (passive checks).
    pub state: &'static str,
    /// Time left in an ejection.
    pub ejected_for: Duration,
}

impl UpstreamsView {
    /// The current state of every target.
    pub fn snapshot(&self) -> Vec<UpstreamStatus> {
        self.0
            .config
            .upstreams
            .iter()
            .zip(&self.0.health)
            .map(|(u, health)| UpstreamStatus {
                name: u.name.clone(),
                policy: u.balance.as_str(),
                targets: u
                    .targets
                    .iter()
                    .zip(health)
                    .map(|(t, h)| TargetStatus {
                        address: t.authority.to_string(),
                        weight: t.weight,
                        state: h.state().as_str(),
                        ejected_for: h.ejected_for(),
                    })
                    .collect(),
            })
            .collect()
    }
}
