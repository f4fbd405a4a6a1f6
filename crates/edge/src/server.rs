//! Listeners and worker threads.
//!
//! Each worker is a thread with its own single-threaded tokio runtime, its own
//! accept loop and its own upstream connection pools (thread-per-core, as nginx
//! runs one process per core). Every worker has its own listening socket per
//! address, bound with `SO_REUSEPORT`, so the kernel spreads new connections
//! across workers and no lock is shared on the request path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use gatehouse_config::Config;
use gatehouse_files::Sendfile;
use gatehouse_observe::AccessLogSender;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::EdgeError;
use crate::body::client_body;
use crate::clock::Timed;
use crate::drain::Drain;
use crate::forwarding::PeerInfo;
use crate::front::{self, Ended, REQUEST_TIMEOUT_RESPONSE, Replay};
use crate::generation::{Checker, Generation};
use crate::handler::{ConnCtx, Shared, Worker};
use crate::idle::Activity;
use crate::policies::ConnSlot;
use crate::tls::{TlsRuntime, WorkerTls};
use crate::zerocopy::ZeroCopyStream;

/// Pending connections the kernel queues per socket; matches common
/// `net.core.somaxconn` defaults so bursts of new clients are not refused.
const LISTEN_BACKLOG: i32 = 4096;
/// The first bytes of an HTTP/2 connection with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
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
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
}

/// A cheap, cloneable handle that swaps a new configuration into a running
/// server (see [`Reloader::reload`]).
#[derive(Clone)]
pub struct Reloader(Arc<Control>);

/// What a successful reload changed.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The new generation number (the startup config is generation 1).
    pub generation: u64,
    /// Listen addresses bound and served by this reload.
    pub added: Vec<SocketAddr>,
    /// Listen addresses that stopped accepting; their open connections drain.
    pub removed: Vec<SocketAddr>,
}

/// Shared by the running server, its reloaders and its upstream views.
struct Control {
    /// The generation new requests use.
    current: ArcSwap<Generation>,
    workers: Vec<WorkerSlot>,
    shutdown: watch::Sender<bool>,
    /// Certificates and challenge answers of the HTTPS listeners.
    tls: Option<TlsRuntime>,
    /// Port of the first HTTPS listener, for redirects.
    https_port: Option<u16>,
    /// Reloads and shutdown take this lock, so they never interleave.
    state: Mutex<ControlState>,
}

/// How the control side reaches one worker thread.
struct WorkerSlot {
    /// The worker's runtime: accept loops of added listeners are spawned on it.
    runtime: tokio::runtime::Handle,
    /// The worker's state for the current generation; each request loads it.
    current: Arc<ArcSwap<Worker>>,
}

struct ControlState {
    listeners: Vec<Listener>,
    checker: Option<Checker>,
    /// Threads of health checkers replaced by reloads, joined at the end.
    old_checkers: Vec<JoinHandle<()>>,
    /// One per worker, cloned into each of its accept loops: the worker
    /// thread exits once every clone is gone. Emptied by shutdown.
    alive: Vec<mpsc::Sender<()>>,
    stopped: bool,
}

/// One listen address, served by an accept loop on every worker.
struct Listener {
    /// The address as configured (`127.0.0.1:0` stays `:0`): reloads compare this.
    configured: SocketAddr,
    /// The bound address.
    actual: SocketAddr,
    /// An HTTPS listener (kept as it is by reloads).
    tls: bool,
    /// Stops this address's accept loops, which then drain their connections.
    stop: watch::Sender<bool>,
}

/// Binds every listener of `config`, so that errors such as "address in use"
/// are reported before anything starts serving.
pub fn bind(config: Arc<Config>, access_log: Option<AccessLogSender>) -> Result<BoundServer, EdgeError> {
    let workers = config.server.workers.get();
    let mut sockets: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut local_addrs = Vec::with_capacity(config.server.http.len());
    let mut https_addrs = Vec::with_capacity(config.server.https.len());
    for (i, &addr) in config.server.http.iter().chain(&config.server.https).enumerate() {
        let (actual, per_worker) = bind_address(addr, workers)?;
        for (worker, socket) in sockets.iter_mut().zip(per_worker) {
            worker.push(socket);
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

/// Binds one address: one `SO_REUSEPORT` socket per worker.
fn bind_address(addr: SocketAddr, workers: usize) -> Result<(SocketAddr, Vec<std::net::TcpListener>), EdgeError> {
    let bind_err = |source| EdgeError::Bind { addr, source };
    // Probe without SO_REUSEPORT first: it fails if anything else holds the
    // port, even another process that set SO_REUSEPORT itself, so two servers
    // never silently share a port. It also resolves port 0.
    let actual = {
        let probe = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        probe.local_addr().map_err(bind_err)?
    };
    let sockets = (0..workers)
        .map(|_| reuseport_listener(actual).map_err(|source| EdgeError::Bind { addr: actual, source }))
        .collect::<Result<_, _>>()?;
    Ok((actual, sockets))
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

/// hyper's HTTP/1 server settings from `[limits]`, on either builder type
/// (hyper's own, or the one inside hyper-util's auto builder).
macro_rules! http1_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout($limits.header_timeout)
            .max_headers($limits.max_headers)
            // The head must fit the read buffer: a larger one gets 431.
            .max_buf_size($limits.max_header_size.max(8192))
            .keep_alive(true)
    };
}

/// The HTTP/2 settings of client connections, from `[limits]`, for hyper-util's
/// auto builder. gatehouse gives it HTTP/2 connections only (prior knowledge,
/// or ALPN `h2`); the HTTP/1 settings are there for a client that chose `h2`
/// and then speaks HTTP/1.1, which the builder still serves.
pub(crate) fn http_builder(limits: &gatehouse_config::Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    http1_settings!(builder.http1(), limits);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    builder
}

/// The HTTP/1.1 settings of the client connections hyper serves, from
/// `[limits]`. (hyper-util's auto builder would switch a connection to HTTP/2
/// on a preface, whatever `http1_only` says, when upgrades are on.)
pub(crate) fn http1_builder(limits: &gatehouse_config::Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    http1_settings!(builder, limits);
    builder
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
        let mut shared = Shared::new(self.config.clone(), self.access_log, None)?;
        let https_port = self.https_addrs.first().map(SocketAddr::port);
        shared.tls = crate::tls::SitesTls::new(&self.config, https_port, self.tls.as_ref());
        let shared = Arc::new(shared);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let https: Vec<(SocketAddr, SocketAddr)> = self
            .config
            .server
            .https
            .iter()
            .copied()
            .zip(self.https_addrs.iter().copied())
            .collect();
        let listeners: Vec<Listener> = self
            .config
            .server
            .http
            .iter()
            .zip(&self.local_addrs)
            .map(|(&configured, &actual)| (configured, actual, false))
            .chain(https.iter().map(|&(configured, actual)| (configured, actual, true)))
            .map(|(configured, actual, tls)| Listener {
                configured,
                actual,
                tls,
                stop: watch::channel(false).0,
            })
            .collect();
        let mut threads = Vec::with_capacity(self.sockets.len());
        let mut workers = Vec::with_capacity(self.sockets.len());
        let mut alive = Vec::with_capacity(self.sockets.len());
        for (i, sockets) in self.sockets.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(WORKER_BLOCKING_THREADS)
                .build()
                .map_err(EdgeError::Thread)?;
            let current = Arc::new(ArcSwap::from_pointee(Worker::new(shared.clone(), None)));
            let (alive_tx, alive_rx) = mpsc::channel(1);
            let worker_tls = self.tls.clone().map(|t| Arc::new(WorkerTls::new(t)));
            for (socket, listener) in sockets.into_iter().zip(&listeners) {
                runtime.spawn(accept_loop(
                    socket,
                    current.clone(),
                    listener.stop.subscribe(),
                    shutdown_rx.clone(),
                    alive_tx.clone(),
                    worker_tls.clone().filter(|_| listener.tls),
                ));
            }
            workers.push(WorkerSlot {
                runtime: runtime.handle().clone(),
                current,
            });
            alive.push(alive_tx);
            let rx = shutdown_rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("gatehouse-worker-{i}"))
                .spawn(move || run_worker(runtime, rx, alive_rx))
                .map_err(EdgeError::Thread)?;
            threads.push(thread);
        }
        let checker = Checker::start(&shared);
        tracing::info!(addrs = ?self.local_addrs, https = ?self.https_addrs, workers = self.config.server.workers.get(), "Listening.");
        let control = Control {
            current: ArcSwap::from_pointee(Generation { number: 1, shared }),
            workers,
            shutdown,
            tls: self.tls,
            https_port,
            state: Mutex::new(ControlState {
                listeners,
                checker: Some(checker),
                old_checkers: Vec::new(),
                alive,
                stopped: false,
            }),
        };
        Ok(RunningServer {
            control: Arc::new(control),
            threads,
        })
    }
}

impl RunningServer {
    /// The addresses being served now (they change with reloads).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.control.state().listeners.iter().map(|l| l.actual).collect()
    }

    /// A live view of every upstream target's health, for the admin API.
    pub fn upstreams(&self) -> UpstreamsView {
        UpstreamsView(self.control.clone())
    }

    /// A handle for reloading the configuration.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.control.clone())
    }

    /// Swaps in a new configuration; see [`Reloader::reload`].
    pub fn reload(&self, config: Arc<Config>) -> Result<Reloaded, EdgeError> {
        self.control.reload(config)
    }

    /// Starts a graceful shutdown: listeners close at once, idle connections are
    /// closed, in-flight requests get up to `shutdown_timeout` to finish.
    pub fn shutdown(&self) {
        let mut state = self.control.state();
        state.stopped = true;
        let _ = self.control.shutdown.send(true);
        // Without these the worker threads would wait for further accept loops.
        state.alive.clear();
        if let Some(thread) = state.checker.take().and_then(Checker::stop) {
            state.old_checkers.push(thread);
        }
    }

    /// Waits until every worker has stopped. Blocks the calling thread.
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("A worker thread panicked.");
            }
        }
        let checkers = std::mem::take(&mut self.control.state().old_checkers);
        for t in checkers {
            if t.join().is_err() {
                tracing::error!("The health-check thread panicked.");
            }
        }
    }

    /// Waits until every worker has stopped, without blocking an async runtime.
    pub async fn wait(self) {
        let _ = tokio::task::spawn_blocking(move || self.join()).await;
    }
}

impl Reloader {
    /// Swaps `config` in as the new generation, all or nothing.
    ///
    /// Everything that can fail — building routes and static services,
    /// binding added listen addresses — happens first; on error the running
    /// generation is untouched. Then every worker's state is swapped
    /// atomically: the next request on any connection, keep-alive ones
    /// included, uses the new config, while requests in flight and upgraded
    /// connections (WebSockets) keep the generation they started with. Added
    /// addresses start accepting; removed ones stop accepting and drain their
    /// connections within `shutdown_timeout`. Health records, cookie keys and
    /// pools of unchanged targets carry over; health checks restart for the
    /// new target set.
    ///
    /// `server.workers` cannot change at runtime: the running number is kept.
    pub fn reload(&self, config: Arc<Config>) -> Result<Reloaded, EdgeError> {
        self.0.reload(config)
    }

    /// The generation being served.
    pub fn generation(&self) -> u64 {
        self.0.current.load().number
    }
}

impl Control {
    /// The lock-protected state; a panic while it was held leaves nothing
    /// half-changed that matters here, so a poisoned lock is used as is.
    fn state(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn reload(&self, config: Arc<Config>) -> Result<Reloaded, EdgeError> {
        let mut state = self.state();
        if state.stopped {
            return Err(EdgeError::Stopped);
        }
        let old = self.current.load_full();
        let running = self.workers.len();
        if config.server.workers.get() != running {
            tracing::warn!(
                configured = config.server.workers.get(),
                running,
                "server.workers changes need a restart; keeping the running workers."
            );
        }

        // Build: nothing below may change the running generation until the
        // commit, so every `?` leaves it untouched.
        let mut shared = Shared::new(config.clone(), old.shared.access_log.clone(), Some(&old.shared))?;
        shared.tls = crate::tls::SitesTls::new(&config, self.https_port, self.tls.as_ref());
        let shared = Arc::new(shared);
        let mut added: Vec<(SocketAddr, SocketAddr, Vec<std::net::TcpListener>)> = Vec::new();
        for &addr in &config.server.http {
            let known =
                state.listeners.iter().any(|l| l.configured == addr && !l.tls) || added.iter().any(|a| a.0 == addr);
            if !known {
                let (actual, sockets) = bind_address(addr, running)?;
                added.push((addr, actual, sockets));
            }
        }
        let workers: Vec<Arc<Worker>> = self
            .workers
            .iter()
            .map(|slot| Arc::new(Worker::new(shared.clone(), Some(&slot.current.load()))))
            .collect();

        // Commit.
        let number = old.number + 1;
        self.current.store(Arc::new(Generation {
            number,
            shared: shared.clone(),
        }));
        for (slot, worker) in self.workers.iter().zip(workers) {
            slot.current.store(worker);
        }
        let shutdown_rx = self.shutdown.subscribe();
        let mut added_addrs = Vec::with_capacity(added.len());
        for (configured, actual, sockets) in added {
            let listener = Listener {
                configured,
                actual,
                tls: false,
                stop: watch::channel(false).0,
            };
            for ((slot, socket), alive) in self.workers.iter().zip(sockets).zip(&state.alive) {
                slot.runtime.spawn(accept_loop(
                    socket,
                    slot.current.clone(),
                    listener.stop.subscribe(),
                    shutdown_rx.clone(),
                    alive.clone(),
                    None,
                ));
            }
            state.listeners.push(listener);
            added_addrs.push(actual);
        }
        let mut removed = Vec::new();
        state.listeners.retain(|l| {
            // HTTPS listeners change only with a restart.
            let keep = l.tls || config.server.http.contains(&l.configured);
            if !keep {
                let _ = l.stop.send(true);
                removed.push(l.actual);
            }
            keep
        });
        if let Some(thread) = state.checker.take().and_then(Checker::stop) {
            state.old_checkers.push(thread);
        }
        state.checker = Some(Checker::start(&shared));
        // Joined at the end; finished ones need not be kept until then.
        state.old_checkers.retain(|t| !t.is_finished());
        tracing::info!(generation = number, added = ?added_addrs, ?removed, "Configuration reloaded.");
        Ok(Reloaded {
            generation: number,
            added: added_addrs,
            removed,
        })
    }
}

/// Drives one worker's runtime until shutdown, then until every accept loop
/// has drained its connections.
fn run_worker(runtime: tokio::runtime::Runtime, mut shutdown: watch::Receiver<bool>, mut alive: mpsc::Receiver<()>) {
    runtime.block_on(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
        // `None` once the last accept loop (and the control side) let go.
        let _ = alive.recv().await;
    });
    // Dropping the runtime ends what is left: upgraded connections (WebSockets).
}

/// Accepts connections on one worker's socket for one address until the
/// address is removed by a reload or the server shuts down, then drains the
/// connections it accepted: HTTP/1 connections close after their current
/// response, HTTP/2 ones get GOAWAY, and whatever remains after
/// `shutdown_timeout` is dropped. Upgraded connections are not drained: they
/// live on until the worker stops.
async fn accept_loop(
    socket: std::net::TcpListener,
    current: Arc<ArcSwap<Worker>>,
    mut stop: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
    tls: Option<Arc<WorkerTls>>,
) {
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "Cannot register listener.");
            return;
        }
    };
    let addr = listener.local_addr().ok();
    let drain = Drain::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = stop.wait_for(|stop| *stop) => break,
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
        let worker_now = current.load();
        let shared = worker_now.shared();
        let Some(slot) = ConnSlot::acquire(shared.policies.connections.as_ref(), peer.ip()) else {
            tracing::debug!(%peer, "Connection refused: too many open connections from this address.");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let limits = front::Limits::new(&shared.config.limits);
        let builder = shared.http.clone();
        let http1 = shared.http1.clone();
        let peer_info = PeerInfo::new(peer.ip(), &shared.config.server.trusted_proxies);
        drop(worker_now);
        let current = current.clone();
        let mut entered = drain.enter();
        if let Some(tls) = &tls {
            let tls = tls.clone();
            // Each connection's task reads the clock at most once per poll.
            tokio::spawn(Timed::new(async move {
                let _slot = slot;
                let accepted = crate::tls::Accepted {
                    stream,
                    peer,
                    peer_info,
                };
                let builders = (builder, http1);
                crate::tls::serve_connection(tls, accepted, limits, current, builders, entered).await;
            }));
            continue;
        }
        tokio::spawn(Timed::new(async move {
            let _slot = slot;
            let first = tokio::select! {
                first = first_bytes(&stream, limits.header_timeout) => first,
                () = entered.stopped() => None,
            };
            let Some(http2) = first else {
                return;
            };
            let activity = http2.then(|| Arc::new(Activity::default()));
            let sendfile = Sendfile::new();
            let conn = ConnCache::new(peer.ip(), Some(sendfile.clone()), activity.clone());
            let mut io = ZeroCopyStream::new(stream, sendfile);
            let service_conn = conn.clone();
            let service_current = current.clone();
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                // Each request takes the generation current when it arrives and
                // keeps it until its handler has the response; the body keeps
                // what it still needs (its upstream pool) on its own.
                let worker = service_current.load_full();
                let conn = service_conn.get(&worker);
                async move { Ok::<_, Infallible>(worker.handle(conn, req.map(client_body)).await) }
            });
            if http2 {
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service)
                    .into_owned();
                let ended = entered
                    .serve(connection, activity.map(|a| (a, limits.header_timeout)))
                    .await;
                if ended.idle {
                    tracing::debug!(%peer, "Idle HTTP/2 connection closed.");
                }
                if let Some(Err(e)) = ended.output {
                    tracing::debug!(%peer, error = %e, "Client connection ended with an error.");
                }
                return;
            }
            // HTTP/1 starts on gatehouse's own loop (see `front.rs`), and goes
            // to hyper from the first request that loop hands over.
            let served = front::serve_draining(&mut io, &limits, &mut entered, |req| {
                // As on hyper's connections: each request takes the generation
                // current when it arrives.
                let worker = current.load_full();
                let ctx = conn.get(&worker);
                worker.handle_passing(ctx, req)
            })
            .await;
            let replay = match served {
                Some(Ended::HandOff(read)) => read,
                Some(Ended::TimedOut { served: 0 }) => {
                    let _ = io.write_all(REQUEST_TIMEOUT_RESPONSE).await;
                    let _ = io.shutdown().await;
                    return;
                }
                _ => return,
            };
            let connection = http1
                .serve_connection(TokioIo::new(Replay::new(replay, io)), service)
                .with_upgrades();
            let ended = entered.serve(connection, None).await;
            if let Some(Err(e)) = ended.output {
                tracing::debug!(%peer, error = %e, "Client connection ended with an error.");
            }
        }));
    }
    drop(listener);
    let deadline = current.load().shared().config.server.shutdown_timeout;
    let open = drain.count();
    if open > 0 {
        tracing::info!(?addr, connections = open, ?deadline, "Draining connections.");
    }
    if tokio::time::timeout(deadline, drain.shutdown()).await.is_err() {
        tracing::warn!(
            ?addr,
            ?deadline,
            "Drain deadline passed; closing remaining connections."
        );
        drain.force();
    }
}

/// Waits until the client has sent enough to tell HTTP/1 from HTTP/2, at most
/// `timeout`: `Some(true)` for HTTP/2 (its preface), `Some(false)` for HTTP/1,
/// `None` when it sent nothing in time or closed. (Version detection has no
/// timeout of its own, and hyper's head timeout starts only after it.)
async fn first_bytes(stream: &tokio::net::TcpStream, timeout: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return None,
        };
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n >= H2_PREFACE.len() {
            return Some(true);
        }
        // Part of an HTTP/2 preface: the rest is on its way.
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A connection's [`ConnCtx`], rebuilt only when a request arrives under a
/// different configuration (whose `trusted_proxies` may differ).
struct ConnCache {
    ip: std::net::IpAddr,
    /// The connection's queue of zero-copy file regions (see [`ZeroCopyStream`]).
    sendfile: Option<Sendfile>,
    /// HTTP/2 only: the connection's open requests, which outlive any config.
    activity: Option<Arc<Activity>>,
    /// The config the context was built for (held, so the comparison by
    /// address is sound), and the context.
    ctx: Mutex<Option<(Arc<Config>, Arc<ConnCtx>)>>,
}

impl ConnCache {
    fn new(ip: std::net::IpAddr, sendfile: Option<Sendfile>, activity: Option<Arc<Activity>>) -> Arc<Self> {
        Arc::new(Self {
            ip,
            sendfile,
            activity,
            ctx: Mutex::new(None),
        })
    }

    /// The context for a request served by `worker`. The lock is only ever
    /// taken by the connection's own requests, on one thread.
    fn get(&self, worker: &Worker) -> Arc<ConnCtx> {
        let config = &worker.shared().config;
        let mut cached = self.ctx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*cached {
            Some((c, ctx)) if Arc::ptr_eq(c, config) => ctx.clone(),
            _ => {
                let mut ctx = ConnCtx::new(PeerInfo::new(self.ip, &config.server.trusted_proxies), "http");
                ctx.sendfile.clone_from(&self.sendfile);
                ctx.activity.clone_from(&self.activity);
                // The count of requests belongs to the connection, not to a config.
                if let Some((_, old)) = &*cached {
                    ctx.requests
                        .store(old.requests.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                let ctx = Arc::new(ctx);
                *cached = Some((config.clone(), ctx.clone()));
                ctx
            }
        }
    }
}

/// A cheap, cloneable handle to the live state of the upstream targets, always
/// of the generation being served.
#[derive(Clone)]
pub struct UpstreamsView(Arc<Control>);

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
        self.snapshot_with_generation().1
    }

    /// The generation being served and the current state of its targets, read
    /// together.
    pub fn snapshot_with_generation(&self) -> (u64, Vec<UpstreamStatus>) {
        let generation = self.0.current.load_full();
        let shared = &generation.shared;
        let upstreams = shared
            .config
            .upstreams
            .iter()
            .zip(&shared.health)
            .map(|(u, health)| UpstreamStatus {
                name: u.name.clone(),
                policy: u.balance.as_str(),
                targets: u
                    .targets
                    .iter()
                    .zip(health)
                    .map(|(t, h)| TargetStatus {
                        address: t.id.to_string(),
                        weight: t.weight,
                        state: h.state().as_str(),
                        ejected_for: h.ejected_for(),
                    })
                    .collect(),
            })
            .collect();
        (generation.number, upstreams)
    }
}
