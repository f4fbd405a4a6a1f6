//! Client-facing HTTP/1.1 on raw sockets: gatehouse serves plain requests on
//! its own loop and hands a connection to hyper for the first request that
//! needs more (a body, `Expect`, an upgrade, HTTP/1.0, a broken head). These
//! tests check both sides of that line on one connection, response framing,
//! pipelining and closing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gatehouse_testkit::Gatehouse;
use gatehouse_testkit::upstream::{Behavior, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

/// A site with fixed answers and, under `/app/`, the upstream `target`.
fn config(target: &str) -> String {
    format!(
        r#"
[upstream.app]
targets = ["{target}"]

[[site]]
hosts = ["a.test"]
  [[site.route]]
  path = "/a"
  respond = {{ status = 200, body = "alpha" }}
  [[site.route]]
  path = "/b"
  respond = {{ status = 201, body = "bravo!" }}
  [[site.route]]
  path = "/empty"
  respond = {{ status = 204 }}
  [[site.route]]
  path = "/app/"
  upstream = "app"
"#
    )
}

/// One response as read off the socket.
#[derive(Debug)]
struct Answer {
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    /// A field's value (names compared without case), if present.
    fn field(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads exactly one response (framed by its head) from `s`, whose bytes
/// start in `pending`; what follows it stays in `pending`.
async fn read_answer(s: &mut TcpStream, pending: &mut Vec<u8>, head_request: bool) -> Answer {
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, pending).await;
    };
    let head = String::from_utf8(pending.drain(..head_end).collect()).unwrap();
    let mut answer = Answer { head, body: Vec::new() };
    let status = answer.status();
    if head_request || status == 204 || status == 304 {
        return answer;
    }
    if let Some(len) = answer.field("content-length") {
        let len: usize = len.parse().unwrap();
        while pending.len() < len {
            fill(s, pending).await;
        }
        answer.body = pending.drain(..len).collect();
        return answer;
    }
    assert_eq!(answer.field("transfer-encoding"), Some("chunked"), "{}", answer.head);
    loop {
        let line_end = loop {
            if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            fill(s, pending).await;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&pending[..line_end]).unwrap(), 16).unwrap();
        pending.drain(..line_end + 2);
        while pending.len() < size + 2 {
            fill(s, pending).await;
        }
        answer.body.extend(pending.drain(..size));
        assert_eq!(pending.drain(..2).as_slice(), b"\r\n", "chunk ends with CRLF");
        if size == 0 {
            return answer;
        }
    }
}

async fn fill(s: &mut TcpStream, pending: &mut Vec<u8>) {
    let mut chunk = [0u8; 16 * 1024];
    let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
        .await
        .expect("response in time")
        .unwrap();
    assert!(n > 0, "connection closed; had {:?}", String::from_utf8_lossy(pending));
    pending.extend_from_slice(&chunk[..n]);
}

/// Whether the server closes `s` (without sending more) within the wait.
async fn closes(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await, Ok(Ok(0)))
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let gh = Gatehouse::start(&config("127.0.0.1:9"));
    let mut s = TcpStream::connect(gh.addr).await.unwrap();
    s.write_all(
        b"GET /a HTTP/1.1\r\nhost: a.test\r\n\r\nGET /b HTTP/1.1\r\nhost: a.test\r\n\r\nGET /a?x HTTP/1.1\r\nHost: A.test\r\nX-Many: 1\r\nx-many: 2\r\n\r\n",
    )
    .await
    .unwrap();
    let mut pending = Vec::new();
    let first = read_answer(&mut s, &mut pending, false).await;
    let second = read_answer(&mut s, &mut pending, false).await;
    let third = read_answer(&mut s, &mut pending, false).await;
    assert_eq!((first.status(), first.body.as_slice()), (200, &b"alpha"[..]));
    assert_eq!((second.status(), second.body.as_slice()), (201, &b"bravo!"[..]));
    assert_eq!((third.status(), third.body.as_slice()), (200, &b"alpha"[..]));
    assert!(second.head.starts_with("HTTP/1.1 201 Created\r\n"), "{}", second.head);
    for answer in [&first, &second, &third] {
        // An HTTP date: "Sun, 22 Nov 2026 02:26:38 GMT".
        let date = answer.field("date").expect("a date field");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        assert!(answer.field("x-request-id").is_some_and(|id| !id.is_empty()));
        assert_eq!(answer.field("connection"), None);
    }
    assert_ne!(first.field("x-request-id"), second.field("x-request-id"));
    assert!(pending.is_empty(), "nothing after the three answers");
}

#[tokio::test]
async fn requests_with_bodies_after_plain_ones_share_the_connection() {
    let up = Upstream::echo().await;
    let gh = Gatehouse::start(&config(&up.addr.to_string()));
    let mut s = TcpStream::connect(gh.addr).await.unwrap();
    let mut pending = Vec::new();
    s.write_all(b"GET /a HTTP/1.1\r\nhost: a.test\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut s, &mut pending, false).await.body, b"alpha");
    // An empty body declared as such is still one gatehouse serves itself.
    s.write_all(b"POST /app/echo HTTP/1.1\r\nhost: a.test\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let empty = read_answer(&mut s, &mut pending, false).await;
    assert_eq!((empty.status(), empty.body.as_slice()), (200, &b""[..]));
    assert_eq!(up.last().header("content-length"), "0");
    // A body framed by its length, then one in chunks: hyper's from here on.
    s.write_all(b"POST /app/echo HTTP/1.1\r\nhost: a.test\r\ncontent-length: 11\r\n\r\nhello world")
        .await
        .unwrap();
    let echoed = read_answer(&mut s, &mut pending, false).await;
    assert_eq!((echoed.status(), echoed.body.as_slice()), (200, &b"hello world"[..]));
    s.write_all(
        b"PUT /app/echo HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let echoed = read_answer(&mut s, &mut pending, false).await;
    assert_eq!((echoed.status(), echoed.body.as_slice()), (200, &b"abcde"[..]));
    // Expect: 100-continue is answered before the body is sent.
    s.write_all(b"POST /app/echo HTTP/1.1\r\nhost: a.test\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let interim = read_answer(&mut s, &mut pending, true).await;
    assert!(interim.head.starts_with("HTTP/1.1 100"), "{}", interim.head);
    s.write_all(b"ok").await.unwrap();
    let echoed = read_answer(&mut s, &mut pending, false).await;
    assert_eq!(echoed.body, b"ok");
    s.write_all(b"GET /b HTTP/1.1\r\nhost: a.test\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut s, &mut pending, false).await.body, b"bravo!");
    assert_eq!(up.requests().len(), 4);
}

#[tokio::test]
async fn a_websocket_upgrade_after_a_plain_request_on_the_same_connection() {
    let up = Upstream::start(Behavior::WebSocketEcho).await;
    let gh = Gatehouse::start(&config(&up.addr.to_string()));
    let mut s = TcpStream::connect(gh.addr).await.unwrap();
    let mut pending = Vec::new();
    s.write_all(b"GET /a HTTP/1.1\r\nhost: a.test\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut s, &mut pending, false).await.body, b"alpha");
    assert!(pending.is_empty());
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://a.test/app/ws", s).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("ping over the same connection")).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed, Message::text("ping over the same connection"));
}

/// An upstream that answers every request head with a body in chunks (no
/// length), keeping the connection open; returns its address.
async fn chunked_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..i + 4);
                        let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                        for _ in 0..100 {
                            answer.extend_from_slice(b"3e8\r\n");
                            answer.extend_from_slice(&[b'x'; 1000]);
                            answer.extend_from_slice(b"\r\n");
                        }
                        answer.extend_from_slice(b"0\r\n\r\n");
                        if s.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn head_204_and_unknown_lengths_are_framed_correctly() {
    let gh = Gatehouse::start(&config(&chunked_upstream().await));
    let mut s = TcpStream::connect(gh.addr).await.unwrap();
    let mut pending = Vec::new();
    // HEAD: the length a GET would get, and no body (the next answer follows
    // directly).
    s.write_all(b"HEAD /a HTTP/1.1\r\nhost: a.test\r\n\r\nGET /b HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_answer(&mut s, &mut pending, true).await;
    assert_eq!((head.status(), head.field("content-length")), (200, Some("5")));
    assert_eq!(read_answer(&mut s, &mut pending, false).await.body, b"bravo!");
    // 204: neither a length nor a body.
    s.write_all(b"GET /empty HTTP/1.1\r\nhost: a.test\r\n\r\nGET /a HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    let empty = read_answer(&mut s, &mut pending, false).await;
    assert_eq!(empty.status(), 204);
    assert_eq!(empty.field("content-length"), None);
    assert_eq!(empty.field("transfer-encoding"), None);
    assert_eq!(read_answer(&mut s, &mut pending, false).await.body, b"alpha");
    // A body streamed without a length goes out in chunks, and the
    // connection carries on after it.
    s.write_all(b"GET /app/stream HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    let streamed = read_answer(&mut s, &mut pending, false).await;
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.field("content-length"), None);
    assert_eq!(streamed.body, vec![b'x'; 100_000]);
    s.write_all(b"GET /a HTTP/1.1\r\nhost: a.test\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut s, &mut pending, false).await.body, b"alpha");
}

#[tokio::test]
async fn connection_close_and_http10_end_the_connection_after_the_answer() {
    let gh = Gatehouse::start(&config("127.0.0.1:9"));
    let mut s = TcpStream::connect(gh.addr).await.unwrap();
    let mut pending = Vec::new();
    s.write_all(b"GET /a HTTP/1.1\r\nhost: a.test\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut s, &mut pending, false).await.body, b"alpha");
    s.write_all(b"GET /b HTTP/1.1\r\nhost: a.test\r\nConnection: Close\r\n\r\n")
        .await
        .unwrap();
    let last = read_answer(&mut s, &mut pending, false).await;
    assert_eq!(last.body, b"bravo!");
    assert_eq!(last.field("connection"), Some("close"));
    assert!(closes(&mut s).await, "closed after the answer");

    // HTTP/1.0 without keep-alive: hyper's, answered, then closed.
    let mut s = TcpStream::connect(gh.addr).await.unwrap();
    let mut pending = Vec::new();
    s.write_all(b"GET /a HTTP/1.0\r\nhost: a.test\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut s, &mut pending, false).await;
    assert_eq!((answer.status(), answer.body.as_slice()), (200, &b"alpha"[..]));
    assert!(closes(&mut s).await, "HTTP/1.0 closes");
}

#[tokio::test]
async fn broken_requests_after_plain_ones_get_400_and_close() {
    let gh = Gatehouse::start(&config("127.0.0.1:9"));
    for broken in [
        &b"GET /a HTTP/1.1\r\nhost: a.test\r\nbad header\r\n\r\n"[..],
        b"GET /a HTTP/1.1\r\nhost: a.test\r\nx: \x01\r\n\r\n",
        b"NOT A REQUEST\r\n\r\n",
        b"GET /a HTTP/1.1\r\nhost: a.test\r\n folded: value\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(gh.addr).await.unwrap();
        let mut pending = Vec::new();
        s.write_all(b"GET /a HTTP/1.1\r\nhost: a.test\r\n\r\n").await.unwrap();
        assert_eq!(read_answer(&mut s, &mut pending, false).await.body, b"alpha");
        s.write_all(broken).await.unwrap();
        let answer = read_answer(&mut s, &mut pending, false).await;
        assert_eq!(answer.status(), 400, "{:?}", String::from_utf8_lossy(broken));
        assert!(closes(&mut s).await);
    }
    // An HTTP/2 preface after a request is an error that closes the
    // connection, not a switch to HTTP/2 (whose SETTINGS frame would come
    // back).
    let mut s = TcpStream::connect(gh.addr).await.unwrap();
    let mut pending = Vec::new();
    s.write_all(b"GET /a HTTP/1.1\r\nhost: a.test\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut s, &mut pending, false).await.body, b"alpha");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    assert!(closes(&mut s).await, "closed with nothing sent");
}

#[tokio::test]
async fn a_client_that_goes_away_mid_request_releases_what_the_request_held() {
    let up = Upstream::start(Behavior::Delay(Duration::from_secs(3))).await;
    let gh = Gatehouse::start(&format!(
        r#"
[upstream.app]
targets = ["{}"]
response_timeout = "10s"

[[site]]
hosts = ["a.test"]
  [[site.route]]
  path = "/"
  upstream = "app"
  max_in_flight = 1
"#,
        up.addr
    ));
    let mut gone = TcpStream::connect(gh.addr).await.unwrap();
    gone.write_all(b"GET /slow HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    // The request reaches the upstream and holds the route's only slot.
    let deadline = tokio::time::Instant::now() + WAIT;
    while up.requests().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut pending = Vec::new();
    let mut busy = TcpStream::connect(gh.addr).await.unwrap();
    busy.write_all(b"GET /other HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut busy, &mut pending, false).await.status(), 503);
    // The first client leaves; its request ends with it, well before the
    // upstream would have answered.
    drop(gone);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let mut s = TcpStream::connect(gh.addr).await.unwrap();
        s.write_all(b"GET /again HTTP/1.1\r\nhost: a.test\r\n\r\n")
            .await
            .unwrap();
        let status = read_answer(&mut s, &mut Vec::new(), false).await.status();
        if status != 503 {
            // Served (after the upstream's delay): the slot was free.
            assert_eq!(status, 200);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot was never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
