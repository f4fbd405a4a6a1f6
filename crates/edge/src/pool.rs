//! Upstream connection pools: one per target per worker.
//!
//! Each worker owns its pools, so a pooled connection is only ever used by the
//! thread that opened it and the lock below is never contended. A connection is
//! checked out for one request and comes back when that request's response body
//! has been read to the end (see `h1.rs`); a response abandoned half-way closes
//! its connection instead, so a half-read response can never leak into the next
//! request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_config::{Target, Upstream};
use http::{HeaderValue, Request, Response};

use crate::body::RequestBody;
use crate::fields::PassedFields;
use crate::forwarding::ProxyHeaders;
use crate::h1::{Conn, Exchange, ExchangeError, Failed, UpstreamBody};

/// Why a request could not be sent to a target.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection within the connect timeout.
    #[error("connect to {target} timed out after {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    /// The connection failed (refused, unreachable, name not resolved, no socket).
    #[error("connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed after connecting.
    #[error("exchange with {target}: {source}")]
    Exchange {
        target: String,
        #[source]
        source: ExchangeError,
    },
}

/// Connection pool of one target.
pub(crate) struct TargetPool {
    pub(crate) target: Target,
    idle: Mutex<Idle>,
    max_idle: usize,
    /// How often `put` sweeps: [`SWEEP_EVERY`], or `idle_timeout` if shorter.
    sweep_every: Duration,
    idle_timeout: Duration,
    connect_timeout: Duration,
    /// Longest pause between two reads of a response body.
    read_timeout: Duration,
}

/// How often putting a connection back also closes idle ones that expired or
/// that the upstream closed. Looking at a socket on every put cost more than
/// all the rest of putting the connection back.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

struct Idle {
    /// Oldest first; requests take the most recently used.
    conns: VecDeque<IdleConn>,
    /// When `put` last swept.
    swept: Instant,
}

struct IdleConn {
    conn: Conn,
    since: Instant,
}

impl TargetPool {
    pub(crate) fn new(target: Target, upstream: &Upstream) -> Arc<Self> {
        Arc::new(Self {
            target,
            idle: Mutex::new(Idle {
                conns: VecDeque::new(),
                swept: Instant::now(),
            }),
            max_idle: upstream.keepalive,
            sweep_every: SWEEP_EVERY.min(upstream.idle_timeout),
            idle_timeout: upstream.idle_timeout,
            connect_timeout: upstream.connect_timeout,
            read_timeout: upstream.read_timeout,
        })
    }

    /// Whether this pool was built for exactly this target and these pool
    /// settings, so a reload may keep it (and its idle connections).
    pub(crate) fn fits(&self, target: &Target, upstream: &Upstream) -> bool {
        // Weight is the balancer's business, not the pool's.
        self.target.id == target.id
            && self.target.authority == target.authority
            && self.target.host == target.host
            && self.target.port == target.port
            && self.target.unix == target.unix
            && self.max_idle == upstream.keepalive
            && self.idle_timeout == upstream.idle_timeout
            && self.connect_timeout == upstream.connect_timeout
            && self.read_timeout == upstream.read_timeout
    }

    /// Takes back a connection whose exchange ended cleanly. At most every
    /// `sweep_every`, and whenever the pool is full, also closes idle
    /// connections at the old end that expired or that the upstream closed
    /// (nothing else watches idle connections, so they are swept here;
    /// `take_idle` checks the one it takes).
    pub(crate) fn put(&self, conn: Conn) {
        let Ok(mut idle) = self.idle.lock() else { return };
        let now = crate::clock::now().into_std();
        let full = idle.conns.len() >= self.max_idle;
        if full || now.saturating_duration_since(idle.swept) >= self.sweep_every {
            idle.swept = now;
            while let Some(oldest) = idle.conns.front_mut() {
                if now.saturating_duration_since(oldest.since) < self.idle_timeout && oldest.conn.is_reusable() {
                    break;
                }
                idle.conns.pop_front();
            }
        }
        if idle.conns.len() < self.max_idle {
            idle.conns.push_back(IdleConn { conn, since: now });
        }
    }

    /// The most recently used connection that is still open, if any.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        let now = crate::clock::now().into_std();
        while let Some(mut idle_conn) = idle.conns.pop_back() {
            if now.saturating_duration_since(idle_conn.since) < self.idle_timeout && idle_conn.conn.is_reusable() {
                return Some(idle_conn.conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let target = || self.target.id.to_string();
        match tokio::time::timeout(self.connect_timeout, crate::connect::connect(&self.target)).await {
            Err(_) => Err(SendError::ConnectTimeout {
                target: target(),
                timeout: self.connect_timeout,
            }),
            Ok(Err(source)) => Err(SendError::Connect {
                target: target(),
                source,
            }),
            Ok(Ok(stream)) => Ok(Conn::new(stream)),
        }
    }

    /// Sends the request in `pending`, with gatehouse's own headers `extra` and
    /// `Host: host`, on a pooled or new connection and waits for the response
    /// head, at most `timeout` from the request going out on the connection
    /// that answers.
    ///
    /// The request is taken out of `pending` when it goes out. A pooled
    /// connection that fails before any answer (the upstream closed it as the
    /// request went out) is replaced once by a new connection when the request
    /// can be sent again (see [`Failed`]). When the request can still go
    /// elsewhere it is back in `pending` with the error, so the caller can try
    /// another target. (By reference rather than by value: the request is
    /// large, and every future it passes through would copy it.)
    pub(crate) async fn send(
        self: &Arc<Self>,
        pending: &mut Option<Request<RequestBody>>,
        extra: &ProxyHeaders,
        host: &HeaderValue,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let mut pooled = self.take_idle();
        // One `Exchange::start` in the future's state whichever connection is
        // used, and connecting (rare: connections are pooled) boxed: the
        // future stays small, so creating and awaiting it copies little.
        loop {
            let was_pooled = pooled.is_some();
            let conn = match pooled.take() {
                Some(conn) => conn,
                None => Box::pin(self.connect()).await?,
            };
            let Some(req) = pending.take() else {
                debug_assert!(false, "send called without a request");
                let nothing = std::io::Error::other("no request to send");
                return Err(self.exchange_error(ExchangeError::Io(nothing)));
            };
            match Exchange::start(conn, req, extra, host, timeout).await {
                Ok((parts, fields, exchange)) => return Ok(self.response(parts, fields, exchange)),
                Err(Failed { error, unsent }) => {
                    let again = unsent.is_some() && was_pooled;
                    *pending = unsent;
                    if again {
                        tracing::debug!(upstream = %self.target.id, %error, "Pooled connection failed; sending on a new one.");
                    } else {
                        return Err(self.exchange_error(error));
                    }
                }
            }
        }
    }

    fn response(
        self: &Arc<Self>,
        parts: http::response::Parts,
        fields: PassedFields,
        exchange: Box<Exchange>,
    ) -> Response<UpstreamBody> {
        Response::from_parts(
            parts,
            UpstreamBody::new(exchange, fields, self.clone(), self.read_timeout),
        )
    }

    fn exchange_error(&self, source: ExchangeError) -> SendError {
        SendError::Exchange {
            target: self.target.id.to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::Stream;

    async fn pool_and_listener(idle_timeout: &str) -> (Arc<TargetPool>, tokio::net::TcpListener) {
        pool_with(&format!("idle_timeout = \"{idle_timeout}\"")).await
    }

    /// A pool for one target on a local listener, with `settings` in its upstream.
    async fn pool_with(settings: &str) -> (Arc<TargetPool>, tokio::net::TcpListener) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let toml = format!(
            "[upstream.app]\ntargets = [\"{}\"]\n{settings}\n",
            listener.local_addr().unwrap()
        );
        let cfg = gatehouse_config::parse_with_env(&toml, std::path::Path::new("t.toml"), &|_| None).unwrap();
        let up = &cfg.upstreams[0];
        (TargetPool::new(up.targets[0].clone(), up), listener)
    }

    /// A pooled connection and the upstream's end of it.
    async fn open(listener: &tokio::net::TcpListener) -> (Conn, tokio::net::TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (Conn::new(Stream::Tcp(client.unwrap())), accepted.unwrap().0)
    }

    fn idle_count(pool: &TargetPool) -> usize {
        pool.idle.lock().unwrap().conns.len()
    }

    fn request() -> Request<RequestBody> {
        Request::builder().uri("/x").body(RequestBody::empty()).unwrap()
    }

    fn extra() -> ProxyHeaders {
        let peer = crate::forwarding::PeerInfo::new(std::net::Ipv4Addr::LOCALHOST.into(), &[]);
        ProxyHeaders::new(
            &http::HeaderMap::new(),
            &peer,
            "http",
            None,
            HeaderValue::from_static("id-1"),
        )
    }

    /// What `send` leaves in `pending`: nothing once the request went out; the
    /// request itself when no connection could be made, for another target.
    #[tokio::test]
    async fn send_takes_the_request_only_when_it_goes_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (pool, listener) = pool_with("").await;
        let upstream = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request head ended early");
                head.extend_from_slice(&buf[..n]);
            }
            socket.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
            (head, socket)
        });
        let host = HeaderValue::from_static("app");
        let mut pending = Some(request());
        let resp = pool
            .send(&mut pending, &extra(), &host, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(resp.status(), http::StatusCode::NO_CONTENT);
        assert!(pending.is_none(), "the request went out");
        let (head, _socket) = upstream.await.unwrap();
        assert!(
            head.starts_with(b"GET /x HTTP/1.1\r\n"),
            "{}",
            String::from_utf8_lossy(&head)
        );

        // Nothing listens on the target any more.
        let (dead, listener) = pool_with("").await;
        drop(listener);
        let mut pending = Some(request());
        let sent = dead.send(&mut pending, &extra(), &host, Duration::from_secs(5)).await;
        assert!(matches!(sent, Err(SendError::Connect { .. })), "{:?}", sent.err());
        assert_eq!(pending.map(|r| r.uri().clone()), Some(http::Uri::from_static("/x")));
    }

    #[tokio::test]
    async fn idle_connections_the_upstream_closed_are_swept_on_the_next_put() {
        let (pool, listener) = pool_and_listener("90s").await;
        let (a, a_upstream) = open(&listener).await;
        let (b, _b_upstream) = open(&listener).await;
        pool.put(a);
        assert_eq!(idle_count(&pool), 1);
        drop(a_upstream);
        // Let the runtime's poller see the close, and the next sweep come due.
        tokio::time::sleep(SWEEP_EVERY + Duration::from_millis(50)).await;
        tokio::task::yield_now().await;
        pool.put(b);
        assert_eq!(
            idle_count(&pool),
            1,
            "the closed connection was dropped, the live one kept"
        );
        assert!(pool.take_idle().is_some());
    }

    #[tokio::test]
    async fn a_full_pool_makes_room_by_sweeping_closed_connections() {
        let (pool, listener) = pool_with("keepalive = 2").await;
        let mut ends = Vec::new();
        for _ in 0..pool.max_idle {
            let (conn, end) = open(&listener).await;
            ends.push(end);
            pool.put(conn);
        }
        // The upstream closes the oldest connection, well before the next
        // timed sweep is due.
        drop(ends.remove(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::task::yield_now().await;
        let (fresh, _end) = open(&listener).await;
        pool.put(fresh);
        assert_eq!(idle_count(&pool), pool.max_idle, "the closed one made room");
        let newest = pool.idle.lock().unwrap().conns.back().map(|c| c.since);
        assert!(
            newest.is_some_and(|t| t.elapsed() < Duration::from_millis(40)),
            "the fresh one was kept"
        );
    }

    #[tokio::test]
    async fn expired_idle_connections_are_swept_on_the_next_put() {
        let (pool, listener) = pool_and_listener("50ms").await;
        let mut upstream_ends = Vec::new();
        for _ in 0..3 {
            let (conn, end) = open(&listener).await;
            upstream_ends.push(end);
            pool.put(conn);
        }
        assert_eq!(idle_count(&pool), 3);
        tokio::time::sleep(Duration::from_millis(80)).await;
        let (fresh, _end) = open(&listener).await;
        pool.put(fresh);
        assert_eq!(idle_count(&pool), 1, "only the fresh connection is left");
    }
}
