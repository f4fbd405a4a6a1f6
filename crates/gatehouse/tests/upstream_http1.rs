//! The upstream side of the proxy against hand-written HTTP/1.1 answers on
//! real sockets: body framings, interim responses, broken answers, early
//! answers and connections the upstream closes while they sit in the pool.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gatehouse_testkit::Gatehouse;
use gatehouse_testkit::client::{self, body, get, send};
use http::Request;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};

/// What a scripted upstream does after reading a request head.
#[derive(Clone, Copy)]
enum After {
    /// Waits for the next request on the same connection.
    KeepOpen,
    /// Closes the connection at once.
    Close,
    /// Reads and drops whatever else arrives, until the peer closes.
    Drain,
}

/// An upstream that answers every request head with `answer`.
struct Scripted {
    /// Its target in gatehouse's config.
    target: String,
    connections: Arc<AtomicUsize>,
    /// Every request head it read.
    heads: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    /// An upstream that reads a request head on each connection, then hands
    /// the connection to `answer`.
    async fn start_with<F, Fut>(answer: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Copy + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Self::new(listener.local_addr().unwrap().to_string());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = [0u8; 4096];
                    let _ = stream.read(&mut head).await;
                    answer(stream).await;
                });
            }
        });
        up
    }

    async fn start(answer: &'static [u8], after: After) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Self::new(listener.local_addr().unwrap().to_string());
        let (count, heads) = (up.connections.clone(), up.heads.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, answer, after, heads.clone()));
            }
        });
        up
    }

    /// The same on a Unix-domain socket at `path`.
    fn start_unix(path: &std::path::Path, answer: &'static [u8], after: After) -> Self {
        let listener = UnixListener::bind(path).unwrap();
        let up = Self::new(format!("unix:{}", path.display()));
        let (count, heads) = (up.connections.clone(), up.heads.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, answer, after, heads.clone()));
            }
        });
        up
    }

    fn new(target: String) -> Self {
        Self {
            target,
            connections: Arc::new(AtomicUsize::new(0)),
            heads: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn gatehouse(&self) -> Gatehouse {
        self.gatehouse_with("")
    }

    fn gatehouse_with(&self, upstream_extra: &str) -> Gatehouse {
        self.gatehouse_with_route(upstream_extra, "")
    }

    /// A gatehouse in front of this upstream, with `upstream_extra` in the
    /// upstream's table and `route_extra` in the `/` route's.
    fn gatehouse_with_route(&self, upstream_extra: &str, route_extra: &str) -> Gatehouse {
        Gatehouse::start(&format!(
            r#"
[server]
workers = 1

[upstream.app]
targets = ["{}"]
response_timeout = "2s"
{upstream_extra}

[[site]]
default = true
  [[site.route]]
  path = "/"
  upstream = "app"
  {route_extra}
"#,
            self.target
        ))
    }
}

async fn serve(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    answer: &'static [u8],
    after: After,
    heads: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        // One request head (these tests send bodies only where `Drain` reads them).
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head: Vec<u8> = buf.drain(..end).collect();
        heads.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
        if stream.write_all(answer).await.is_err() {
            return;
        }
        match after {
            After::KeepOpen => {}
            After::Close => return,
            After::Drain => {
                while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
                return;
            }
        }
    }
}

/// Reads from `s` into `got` until `got` contains `end`; panics if the peer
/// closes first or nothing arrives for 5 s.
async fn read_until(s: &mut tokio::net::TcpStream, got: &mut Vec<u8>, end: &[u8]) {
    let mut chunk = [0u8; 1024];
    while !got.windows(end.len()).any(|w| w == end) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(got));
        got.extend_from_slice(&chunk[..n]);
    }
}

/// GETs `/` through `gh` and reads the whole answer: `Err` when the exchange
/// or the body failed. Panics if it takes more than 5 s (a hang).
async fn get_to_the_end(gh: &Gatehouse) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let req = Request::get(gh.url("/")).body(body(Bytes::new())).unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        let resp = client::http1().request(req).await?;
        assert_eq!(resp.status(), 200);
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|_| ())
            .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
    })
    .await
    .expect("the body ends instead of hanging")
}

#[tokio::test]
async fn chunked_answers_are_relayed_and_their_connection_reused() {
    let up = Scripted::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
        After::KeepOpen,
    )
    .await;
    let gh = up.gatehouse();
    for _ in 0..3 {
        let r = get(&gh.url("/"), &[]).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello world"));
    }
    assert_eq!(
        up.connections(),
        1,
        "a complete chunked answer leaves the connection reusable"
    );
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let up = Scripted::start(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::KeepOpen,
    )
    .await;
    let gh = up.gatehouse();
    let r = get(&gh.url("/"), &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
}

#[tokio::test]
async fn a_flood_of_interim_answers_still_times_out() {
    // Never a final answer, and always more bytes to read: the exchange stays
    // busy, and its deadline must fire all the same.
    let up = Scripted::start_with(|mut stream| async move {
        let flood = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(256);
        while stream.write_all(&flood).await.is_ok() {}
    })
    .await;
    let gh = up.gatehouse();
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), get(&gh.url("/"), &[]))
        .await
        .expect("the response timeout fired");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn broken_answers_give_502() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: three\r\n\r\nabc",
        b"HTTP/1.1 2xx OK\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ] {
        let up = Scripted::start(answer, After::Close).await;
        let gh = up.gatehouse();
        let r = get(&gh.url("/"), &[]).await;
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(answer));
        let id = r.header("x-request-id");
        assert_eq!(
            r.text(),
            format!("502 Bad Gateway: invalid upstream response (request id {id})\n")
        );
    }
}

#[tokio::test]
async fn a_broken_chunked_body_is_a_visible_truncation() {
    let up = Scripted::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        After::KeepOpen,
    )
    .await;
    let gh = up.gatehouse();
    // Depending on how far the answer got, the client sees a failed exchange
    // or a body that ends in an error, never a short success.
    assert!(
        get_to_the_end(&gh).await.is_err(),
        "a broken body must not look complete"
    );
}

#[tokio::test]
async fn bodies_delimited_by_close_arrive_whole() {
    let up = Scripted::start(b"HTTP/1.1 200 OK\r\n\r\nuntil the upstream closes", After::Close).await;
    let gh = up.gatehouse();
    for _ in 0..2 {
        let r = get(&gh.url("/"), &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "until the upstream closes")
        );
    }
    assert_eq!(up.connections(), 2, "such a connection is never reused");
}

#[tokio::test]
async fn head_answers_carry_no_body() {
    let up = Scripted::start(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", After::KeepOpen).await;
    let gh = up.gatehouse();
    for _ in 0..3 {
        let req = Request::head(gh.url("/")).body(body(Bytes::new())).unwrap();
        let r = send(&client::http1(), req).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), "10");
        assert!(r.body.is_empty());
    }
    assert_eq!(
        up.connections(),
        1,
        "the connection stays in step after bodiless answers"
    );
}

#[tokio::test]
async fn an_early_answer_during_an_upload_reaches_the_client() {
    // The upstream refuses as soon as it has the head, then drains the body.
    let up = Scripted::start(
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!",
        After::Drain,
    )
    .await;
    let gh = up.gatehouse();
    let req = Request::post(gh.url("/upload"))
        .body(body(Bytes::from(vec![b'x'; 4 << 20])))
        .unwrap();
    let r = send(&client::http1(), req).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (413, "big!"));
}

#[tokio::test]
async fn connections_the_upstream_closed_while_idle_are_not_used() {
    // Keep-alive answers, but the upstream hangs up right after each one.
    let up = Scripted::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", After::Close).await;
    let gh = up.gatehouse();
    for method in ["GET", "POST", "GET", "DELETE"] {
        let r = get(&gh.url("/"), &[]).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"), "GET");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let req = Request::builder()
            .method(method)
            .uri(gh.url("/"))
            .body(body(Bytes::new()))
            .unwrap();
        let r = send(&client::http1(), req).await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "ok"),
            "{method} after a close"
        );
    }
    assert_eq!(up.connections(), 8, "every request needed a new connection");
}

#[tokio::test]
async fn unix_socket_targets_are_proxied_and_health_checked() {
    let dir = std::env::temp_dir().join(format!("gh-unix-target-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.sock");
    let up = Scripted::start_unix(
        &path,
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nvia uds",
        After::KeepOpen,
    );
    let gh = up.gatehouse_with(r#"health = { path = "/healthz", interval = "100ms" }"#);
    // New targets wait for their first passing check: a 200 proves the check
    // reached the socket too.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = get(&gh.url("/page"), &[]).await;
        if r.status == 200 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "via uds"));
    let heads = up.heads.lock().unwrap().clone();
    assert!(heads.iter().any(|h| h.starts_with("GET /healthz ")), "{heads:?}");
    let proxied = heads
        .iter()
        .find(|h| h.starts_with("GET /page "))
        .expect("the request reached the socket");
    assert!(proxied.contains("\r\nhost: localhost\r\n"), "{proxied}");
    let line = gh.wait_for_log_line(r.header("x-request-id")).await;
    assert!(line.contains(&format!("upstream={}", up.target)), "{line}");
    drop(gh);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_refused_request_body_is_never_sent_again_without_it() {
    use gatehouse_testkit::upstream::{Behavior, Upstream};
    use http_body_util::{BodyExt, StreamBody};
    let app = Upstream::start(Behavior::Sink).await;
    let gh = Gatehouse::start(&format!(
        r#"
[server]
workers = 1

[upstream.app]
targets = ["{}"]
retries = {{ attempts = 3 }}

[[site]]
default = true
  [[site.route]]
  path = "/"
  upstream = "app"
  max_body_size = "1KiB"
"#,
        app.addr
    ));
    // A pooled connection to the upstream...
    assert_eq!(get(&gh.url("/warm"), &[]).await.status, 200);
    // ...then a chunked upload whose first piece is over the limit: the body
    // fails before a byte of it is written.
    let frames = gatehouse_testkit::data::frames(2400, 2400, b'x');
    let req = Request::post(gh.url("/up"))
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap();
    let r = send(&client::http1(), req).await;
    assert_eq!(r.status, 413);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen: Vec<String> = app
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect();
    assert_eq!(
        seen,
        ["GET /warm"],
        "the POST reached no upstream, not even without its body"
    );
}

#[tokio::test]
async fn connect_is_refused() {
    let up = Scripted::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", After::KeepOpen).await;
    let gh = up.gatehouse();
    let mut s = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    // An authority-form target is no path to route: CONNECT never becomes a tunnel.
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("request target must be an absolute path"), "{answer}");
    assert!(up.heads.lock().unwrap().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn answers_that_leave_doubt_close_their_connection() {
    for (answer, why) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"[..],
            "bytes after the body",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            "Connection: close",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "both Transfer-Encoding and Content-Length",
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "HTTP/1.0"),
    ] {
        let up = Scripted::start(answer, After::KeepOpen).await;
        let gh = up.gatehouse();
        for _ in 0..2 {
            let r = get(&gh.url("/"), &[]).await;
            assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"), "{why}");
        }
        assert_eq!(up.connections(), 2, "{why}: the connection was not reused");
    }
}

#[tokio::test]
async fn chunked_request_bodies_reach_the_upstream_chunked() {
    use http_body_util::{BodyExt, StreamBody};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Scripted::new(listener.local_addr().unwrap().to_string());
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        while !raw.ends_with(b"0\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(n) if n > 0 => raw.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        let _ = tx.send(raw);
    });
    let gh = up.gatehouse();
    let frames = gatehouse_testkit::data::frames(2500, 1000, b'x');
    let req = Request::post(gh.url("/up"))
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap();
    assert_eq!(send(&client::http1(), req).await.text(), "ok");
    let raw = String::from_utf8(rx.await.unwrap()).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    // However the pieces were cut on the way, the framing is valid chunked
    // encoding of the whole body, ending with the last chunk.
    let mut rest = body;
    let mut decoded = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk-size line");
        let size = usize::from_str_radix(size, 16).expect("a hex chunk size");
        if size == 0 {
            assert_eq!(after, "\r\n", "the last chunk ends the body");
            break;
        }
        decoded.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").expect("CRLF after the chunk data");
    }
    assert_eq!(decoded, "x".repeat(2500));
}

#[tokio::test]
async fn bytes_after_a_101_reach_the_client_through_the_tunnel() {
    let up = Scripted::start(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x-test\r\n\r\nfirst bytes",
        After::KeepOpen,
    )
    .await;
    let gh = up.gatehouse();
    let mut s = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
    s.write_all(b"GET /tunnel HTTP/1.1\r\nhost: app.test\r\nconnection: upgrade\r\nupgrade: x-test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    // The tunnel delivers the upstream's first bytes.
    read_until(&mut s, &mut got, b"first bytes").await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 101 "), "{got}");
    assert!(got.to_ascii_lowercase().contains("\r\nupgrade: x-test\r\n"), "{got}");
}

#[tokio::test]
async fn expect_continue_reaches_the_upstream_and_the_body_follows() {
    // The upstream asks for the body with its own 100, then answers.
    let up = Scripted::start(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::Drain,
    )
    .await;
    let gh = up.gatehouse();
    let mut s = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
    s.write_all(b"POST /e HTTP/1.1\r\nhost: app.test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    // gatehouse asks the client for the body (it reads it at once)...
    read_until(&mut s, &mut got, b"100 Continue\r\n\r\n").await;
    s.write_all(b"hello").await.unwrap();
    // ...and relays only the upstream's final answer.
    read_until(&mut s, &mut got, b"\r\n\r\nok").await;
    let got = String::from_utf8_lossy(&got);
    assert_eq!(got.matches("100 Continue").count(), 1, "{got}");
    assert!(got.contains("HTTP/1.1 200 OK\r\n"), "{got}");
    let heads = up.heads.lock().unwrap().clone();
    assert!(heads[0].contains("\r\nexpect: 100-continue\r\n"), "{heads:?}");
}

#[tokio::test]
async fn a_body_with_pauses_shorter_than_read_timeout_arrives_whole() {
    // Five pieces 150 ms apart: 600 ms in all, twice the read timeout, but
    // never a 300 ms pause. The deadline moves with every piece.
    let up = Scripted::start_with(|mut stream| async move {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 25\r\n\r\n").await;
        for piece in ["piece", "piece", "piece", "piece", "piece"] {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let _ = stream.write_all(piece.as_bytes()).await;
        }
    })
    .await;
    let gh = up.gatehouse_with(r#"read_timeout = "300ms""#);
    let r = get(&gh.url("/"), &[]).await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "piece".repeat(5)));
}

#[tokio::test]
async fn an_upstream_silent_mid_body_is_cut_off_after_read_timeout() {
    // Promises ten bytes, sends five, then neither sends nor closes.
    let up = Scripted::start(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", After::KeepOpen).await;
    let gh = up.gatehouse_with(r#"read_timeout = "300ms""#);
    let started = std::time::Instant::now();
    assert!(
        get_to_the_end(&gh).await.is_err(),
        "a cut-off body must not look complete"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

/// An answer with repeated fields, hop-by-hop fields, and an `X-Request-Id` of
/// the upstream's own. `Connection: close`: every request gets a connection of
/// its own, which `After::Drain` reads to the end (request bodies included).
const MANY_FIELDS: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\nSet-Cookie: a=1\r\n\
X-Request-Id: from-upstream\r\nConnection: close, X-Hop\r\nX-Hop: gone\r\nKeep-Alive: timeout=5\r\n\
X-A: 2\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok";

/// Every value of `name` in `r`, in order.
fn all<'r>(r: &'r client::Reply, name: &str) -> Vec<&'r str> {
    r.headers.get_all(name).iter().map(|v| v.to_str().unwrap()).collect()
}

#[tokio::test]
async fn an_answers_fields_reach_the_client_alike_on_every_kind_of_connection() {
    let up = Scripted::start(MANY_FIELDS, After::Drain).await;
    let gh = up.gatehouse();
    let bodyless = get(&gh.url("/"), &[]).await;
    let head = send(
        &client::http1(),
        Request::head(gh.url("/")).body(body(Bytes::new())).unwrap(),
    )
    .await;
    // A body sends the request to hyper's HTTP/1 server; h2c is HTTP/2.
    let with_body = send(&client::http1(), Request::post(gh.url("/")).body(body("data")).unwrap()).await;
    let http2 = send(
        &client::h2c(),
        Request::get(gh.url("/")).body(body(Bytes::new())).unwrap(),
    )
    .await;
    for (what, r) in [
        ("GET", &bodyless),
        ("HEAD", &head),
        ("POST", &with_body),
        ("h2c", &http2),
    ] {
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(all(r, "x-a"), ["1", "2"], "{what}");
        assert_eq!(all(r, "set-cookie"), ["a=1", "b=2"], "{what}");
        assert_eq!(all(r, "content-type"), ["text/plain"], "{what}");
        let ids = all(r, "x-request-id");
        assert_eq!(ids.len(), 1, "{what}: gatehouse's id replaces the upstream's: {ids:?}");
        assert_ne!(ids[0], "from-upstream", "{what}");
        for hop in ["x-hop", "keep-alive"] {
            assert!(r.headers.get(hop).is_none(), "{what}: {hop} is hop-by-hop");
        }
        // Not an HTML page: no security headers.
        assert!(r.headers.get("x-content-type-options").is_none(), "{what}");
    }
    assert_eq!(
        (bodyless.text(), with_body.text(), http2.text()),
        ("ok".into(), "ok".into(), "ok".into())
    );
    assert_eq!((head.header("content-length"), head.body.len()), ("2", 0));
    // Each request was its own upstream exchange with its own id.
    assert_eq!(up.connections(), 4);
    assert_ne!(bodyless.header("x-request-id"), http2.header("x-request-id"));
}

#[tokio::test]
async fn response_rules_and_security_headers_see_the_upstreams_fields() {
    let up = Scripted::start(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nX-A: 1\r\nX-B: theirs\r\n\
X-Frame-Options: SAMEORIGIN\r\nSet-Cookie: a=1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        After::Drain,
    )
    .await;
    let gh = up.gatehouse_with_route(
        "",
        r#"headers = { response = { remove = ["x-a"], set = { x-b = "ours" }, add = { set-cookie = "c=3" } } }"#,
    );
    let r = get(&gh.url("/"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("x-a").is_none(), "removed by the rule");
    assert_eq!(all(&r, "x-b"), ["ours"], "set replaces the upstream's value");
    assert_eq!(all(&r, "set-cookie"), ["a=1", "c=3"], "add keeps the upstream's");
    // An HTML page gets the security headers it lacks and keeps its own.
    assert_eq!(all(&r, "x-frame-options"), ["SAMEORIGIN"]);
    assert_eq!(all(&r, "x-content-type-options"), ["nosniff"]);
    assert_eq!(all(&r, "content-type"), ["text/html; charset=utf-8"]);
}

#[tokio::test]
async fn a_sticky_cookie_is_added_beside_the_upstreams_cookies() {
    let up = Scripted::start(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        After::Drain,
    )
    .await;
    let gh = up.gatehouse_with("balance = \"cookie\"\ncookie = { name = \"gh_app\" }");
    let r = get(&gh.url("/"), &[]).await;
    let cookies = all(&r, "set-cookie");
    assert_eq!(cookies.len(), 3, "{cookies:?}");
    assert_eq!(cookies[..2], ["a=1", "b=2"]);
    assert!(cookies[2].starts_with("gh_app="), "{cookies:?}");
}

#[tokio::test]
async fn rate_limit_fields_replace_the_upstreams_own() {
    let up = Scripted::start(
        b"HTTP/1.1 200 OK\r\nRateLimit: \"theirs\";r=1\r\nRateLimit-Policy: \"theirs\";q=1\r\nX-A: 1\r\n\
Connection: close\r\nContent-Length: 2\r\n\r\nok",
        After::Drain,
    )
    .await;
    let gh = up.gatehouse_with_route("", r#"rate_limit = "1000/s per ip""#);
    let r = get(&gh.url("/"), &[]).await;
    assert_eq!(r.status, 200);
    let policy = all(&r, "ratelimit-policy");
    assert_eq!(policy.len(), 1, "{policy:?}");
    assert!(!policy[0].contains("theirs"), "{policy:?}");
    let limit = all(&r, "ratelimit");
    assert_eq!(limit.len(), 1, "{limit:?}");
    assert!(!limit[0].contains("theirs"), "{limit:?}");
    assert_eq!(all(&r, "x-a"), ["1"]);
}
