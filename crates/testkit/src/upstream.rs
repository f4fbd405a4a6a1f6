//! Scripted upstream servers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, hyper::Error>;

/// What an upstream does with each request.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200, streaming the request body back. Response header `x-upstream` carries
    /// the upstream's port.
    Echo,
    /// A fixed status and body.
    Status(u16, &'static str),
    /// Waits, then answers 200 `slow`.
    Delay(Duration),
    /// Announces a 100-byte body, sends 10 bytes, and closes the connection.
    CloseMidBody,
    /// Reads the request, then resets the connection without answering.
    Reset,
    /// Reads the whole body and answers with its length in bytes as text.
    Sink,
    /// Answers 200 with a streamed body of this many bytes.
    Generate(u64),
    /// Completes a WebSocket handshake and echoes every message.
    WebSocketEcho,
    /// Answers 200 `bye` with `Connection: close`, then closes the connection.
    CloseAfterResponse,
    /// Reads the whole request, body included, then resets the connection.
    ResetAfterBody,
}

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: Method,
    /// Request target (origin-form).
    pub uri: Uri,
    /// Protocol version on the upstream connection.
    pub version: Version,
    /// Headers as received.
    pub headers: HeaderMap,
}

impl Recorded {
    /// A header as text, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts an upstream on `127.0.0.1:0`.
    pub async fn start(behavior: Behavior) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), behavior).await
    }

    /// Starts an upstream on a given address.
    pub async fn start_at(addr: SocketAddr, behavior: Behavior) -> Self {
        Self::serve_on(TcpListener::bind(addr).await.unwrap(), behavior)
    }

    /// Starts an upstream on a held port (to bring a stopped one back, or a
    /// dead target to life): the port cannot have been taken in between.
    pub fn start_held(held: HeldAddr, behavior: Behavior) -> Self {
        held.socket.listen(1024).unwrap();
        held.socket.set_nonblocking(true).unwrap();
        Self::serve_on(TcpListener::from_std(held.socket.into()).unwrap(), behavior)
    }

    /// Stops the upstream (as a killed process would: open connections drop)
    /// and keeps its port held, refusing connections, for [`Self::start_held`].
    pub async fn stop(mut self) -> HeldAddr {
        self.task.abort();
        // The listener is closed once the aborted task is gone.
        let _ = (&mut self.task).await;
        HeldAddr::at(self.addr)
    }

    fn serve_on(listener: TcpListener, behavior: Behavior) -> Self {
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(listener, behavior, requests.clone(), connections.clone()));
        Self {
            addr,
            requests,
            connections,
            task,
        }
    }

    /// Shorthand for [`Behavior::Echo`].
    pub async fn echo() -> Self {
        Self::start(Behavior::Echo).await
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The last request received; panics if none.
    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("the upstream received no request")
    }
}

/// A port on 127.0.0.1 that is held but refuses connections: its socket is
/// bound and not listening. Unlike [`refused_addr`], no other test's listener
/// or outgoing connection can take the port while this is alive, so an
/// upstream can be started on it later ([`Upstream::start_held`]).
pub struct HeldAddr {
    socket: socket2::Socket,
    /// The held address.
    pub addr: SocketAddr,
}

impl HeldAddr {
    /// Holds a fresh port.
    pub fn new() -> Self {
        Self::at("127.0.0.1:0".parse().unwrap())
    }

    /// Holds `addr` (free again, say, after [`Upstream::stop`]).
    pub fn at(addr: SocketAddr) -> Self {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).unwrap();
        // Connections the stopped upstream had may linger in TIME_WAIT.
        socket.set_reuse_address(true).unwrap();
        socket.bind(&addr.into()).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        Self { socket, addr }
    }
}

impl Default for HeldAddr {
    fn default() -> Self {
        Self::new()
    }
}

/// An address on which nothing listens (connections are refused). The port is
/// free again at once: use [`HeldAddr`] for a target that must stay dead or
/// come back at the same address.
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn serve(
    listener: TcpListener,
    behavior: Behavior,
    requests: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<AtomicUsize>,
) {
    // Connection tasks live in this set, so stopping the upstream (aborting
    // this task) drops every open connection too, as a killed process would.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while conns.try_join_next().is_some() {}
        connections.fetch_add(1, Ordering::SeqCst);
        let behavior = behavior.clone();
        let requests = requests.clone();
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        conns.spawn(async move {
            match behavior {
                Behavior::CloseMidBody => close_mid_body(stream).await,
                Behavior::Reset => reset(stream).await,
                Behavior::ResetAfterBody => reset_after_body(stream, requests).await,
                Behavior::WebSocketEcho => websocket_echo(stream, requests).await,
                behavior => {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let behavior = behavior.clone();
                        let requests = requests.clone();
                        async move { Ok::<_, Infallible>(respond(behavior, req, requests, port).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                }
            }
        });
    }
}

fn record(req: &Request<Incoming>, requests: &Mutex<Vec<Recorded>>) {
    requests.lock().unwrap().push(Recorded {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    });
}

fn full(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

async fn respond(
    behavior: Behavior,
    req: Request<Incoming>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    port: u16,
) -> Response<Body> {
    record(&req, &requests);
    let mut resp = match behavior {
        Behavior::Echo => {
            let mut r = Response::new(req.into_body().boxed());
            r.headers_mut().insert("x-echo", "1".parse().unwrap());
            r
        }
        Behavior::Status(code, body) => full(code, body),
        Behavior::Delay(d) => {
            tokio::time::sleep(d).await;
            full(200, "slow")
        }
        Behavior::Sink => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => return full(400, "body error"),
                }
            }
            full(200, n.to_string())
        }
        Behavior::Generate(total) => {
            let stream = crate::data::frames::<hyper::Error>(total, 64 * 1024, b'x');
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut()
                .insert("content-length", total.to_string().parse().unwrap());
            r
        }
        Behavior::CloseAfterResponse => {
            let mut r = full(200, "bye");
            r.headers_mut().insert("connection", "close".parse().unwrap());
            r
        }
        Behavior::CloseMidBody | Behavior::Reset | Behavior::ResetAfterBody | Behavior::WebSocketEcho => {
            full(500, "unreachable")
        }
    };
    resp.headers_mut()
        .insert("x-upstream", port.to_string().parse().unwrap());
    resp
}

async fn read_head(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    buf
}

async fn close_mid_body(mut stream: tokio::net::TcpStream) {
    read_head(&mut stream).await;
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
        .await;
    let _ = stream.flush().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn reset(mut stream: tokio::net::TcpStream) {
    read_head(&mut stream).await;
    // Linger 0 turns the close into a TCP reset.
    let std = stream.into_std().unwrap();
    let socket = socket2::Socket::from(std);
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(socket);
}

async fn reset_after_body(mut stream: tokio::net::TcpStream, requests: Arc<Mutex<Vec<Recorded>>>) {
    let head = read_head(&mut stream).await;
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let body_start = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |p| p + 4);
    let mut have = head.len() - body_start;
    let mut buf = [0u8; 4096];
    while have < len {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => have += n,
            _ => break,
        }
    }
    let method = text.split(' ').next().unwrap_or("GET").to_ascii_uppercase();
    requests.lock().unwrap().push(Recorded {
        method: Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET),
        uri: Uri::from_static("/"),
        version: Version::HTTP_11,
        headers: HeaderMap::new(),
    });
    let std = stream.into_std().unwrap();
    let socket = socket2::Socket::from(std);
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(socket);
}

#[allow(clippy::result_large_err)] // the callback signature is tungstenite's
async fn websocket_echo(stream: tokio::net::TcpStream, requests: Arc<Mutex<Vec<Recorded>>>) {
    let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                    resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
        requests.lock().unwrap().push(Recorded {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        });
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            break;
        }
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}
