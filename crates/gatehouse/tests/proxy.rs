//! Reverse-proxy behaviour, in-process: routing, headers, bodies, upgrades and
//! upstream failures, against scripted upstreams on real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gatehouse_testkit::Gatehouse;
use gatehouse_testkit::client::{self, body, get, send};
use gatehouse_testkit::upstream::{Behavior, Upstream, refused_addr};
use http::Request;
use tokio_tungstenite::tungstenite::Message;

fn proxy_config(targets: &str, extra_route: &str) -> String {
    format!(
        r#"
[upstream.app]
targets = [{targets}]
response_timeout = "500ms"
connect_timeout = "500ms"

[[site]]
hosts = ["app.test"]
  [[site.route]]
  path = "/"
  upstream = "app"
  {extra_route}
"#
    )
}

#[tokio::test]
async fn routes_by_host_wildcard_and_longest_prefix() {
    let api = Upstream::echo().await;
    let admin = Upstream::echo().await;
    let wild = Upstream::echo().await;
    let gh = Gatehouse::start(&format!(
        r#"
[upstream.api]
targets = ["{}"]
[upstream.admin]
targets = ["{}"]
[upstream.wild]
targets = ["{}"]
[[site]]
hosts = ["app.test"]
  [[site.route]]
  path = "/"
  respond = {{ body = "root" }}
  [[site.route]]
  path = "/api/"
  upstream = "api"
  [[site.route]]
  path = "/api/admin/"
  upstream = "admin"
[[site]]
hosts = ["*.shop.test"]
  [[site.route]]
  path = "/"
  upstream = "wild"
"#,
        api.addr, admin.addr, wild.addr
    ));
    let r = get(&gh.url("/api/users?x=1"), &[("host", "app.test")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), api.addr.port().to_string());
    assert_eq!(api.last().uri, "/api/users?x=1");

    let r = get(&gh.url("/api/admin/panel"), &[("host", "APP.test:8080")]).await;
    assert_eq!(r.header("x-upstream"), admin.addr.port().to_string());

    let r = get(&gh.url("/apix"), &[("host", "app.test")]).await;
    assert_eq!(r.text(), "root");

    let r = get(&gh.url("/"), &[("host", "eu.shop.test")]).await;
    assert_eq!(r.header("x-upstream"), wild.addr.port().to_string());

    // Two labels below the wildcard is not a match, and there is no default site.
    let r = get(&gh.url("/"), &[("host", "a.eu.shop.test")]).await;
    assert_eq!(r.status, 421);
    assert!(r.text().contains("no site is configured"), "{}", r.text());

    // Path normalisation happens before routing: this cannot reach /api/admin/.
    let r = get(&gh.url("/api/admin/../x"), &[("host", "app.test")]).await;
    assert_eq!(r.header("x-upstream"), api.addr.port().to_string());
    assert_eq!(api.last().uri, "/api/x");
    let r = get(&gh.url("/api/%2e%2e/%2e%2e/etc"), &[("host", "app.test")]).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_stripped() {
    let up = Upstream::echo().await;
    let gh = Gatehouse::start(&proxy_config(&format!("\"{}\"", up.addr), ""));
    let r = get(
        &gh.url("/hello"),
        &[
            ("host", "app.test"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6"),
            ("x-request-id", "spoofed-id"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-custom", "kept"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    // The peer is not a trusted proxy: none of its forwarding claims survive.
    assert_eq!(seen.header("x-forwarded-for"), "127.0.0.1");
    assert_eq!(seen.header("x-forwarded-proto"), "http");
    assert_eq!(seen.header("x-forwarded-host"), "app.test");
    assert_eq!(seen.header("forwarded"), "for=127.0.0.1;host=\"app.test\";proto=http");
    assert_ne!(seen.header("x-request-id"), "spoofed-id");
    assert_eq!(seen.header("x-request-id").len(), 32);
    assert_eq!(r.header("x-request-id"), seen.header("x-request-id"));
    // Host is the target's address unless preserve_host is set.
    assert_eq!(seen.header("host"), up.addr.to_string());
    for hop in ["x-private", "keep-alive", "proxy-authorization"] {
        assert!(seen.headers.get(hop).is_none(), "{hop} reached the upstream");
    }
    assert_eq!(seen.header("x-custom"), "kept");
    for replaced in [
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "x-request-id",
    ] {
        assert_eq!(seen.headers.get_all(replaced).iter().count(), 1, "{replaced} sent once");
    }

    let line = gh.wait_for_log_line(r.header("x-request-id")).await;
    assert!(line.contains(" 127.0.0.1 "), "{line}");
    assert!(line.contains("\"GET app.test /hello HTTP/1.1\" 200"), "{line}");
    assert!(line.contains(&format!("upstream={}", up.addr)), "{line}");
}

#[tokio::test]
async fn trusted_proxy_headers_are_believed() {
    let up = Upstream::echo().await;
    let gh = Gatehouse::start(&format!(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n{}",
        proxy_config(&format!("\"{}\"", up.addr), "preserve_host = true")
    ));
    let r = get(
        &gh.url("/"),
        &[
            ("host", "app.test"),
            ("x-forwarded-for", "203.0.113.5"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "edge-abc-123"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), "203.0.113.5, 127.0.0.1");
    assert_eq!(seen.header("x-forwarded-proto"), "https");
    assert_eq!(seen.header("x-request-id"), "edge-abc-123");
    assert_eq!(seen.header("host"), "app.test");
    assert_eq!(r.header("x-request-id"), "edge-abc-123");
    let line = gh.wait_for_log_line("edge-abc-123").await;
    assert!(
        line.contains(" 203.0.113.5 edge-abc-123 "),
        "client ip from XFF: {line}"
    );
}

#[tokio::test]
async fn prefix_strip_and_rewrite() {
    let up = Upstream::echo().await;
    let gh = Gatehouse::start(&format!(
        r#"
[upstream.app]
targets = ["{0}"]
[[site]]
hosts = ["app.test"]
  [[site.route]]
  path = "/api/"
  upstream = "app"
  strip_prefix = true
  [[site.route]]
  path = "/old/"
  upstream = "app"
  rewrite = "/v2/"
"#,
        up.addr
    ));
    get(&gh.url("/api/users/7?full=1"), &[("host", "app.test")]).await;
    assert_eq!(up.last().uri, "/users/7?full=1");
    get(&gh.url("/api"), &[("host", "app.test")]).await;
    assert_eq!(up.last().uri, "/");
    get(&gh.url("/old/items"), &[("host", "app.test")]).await;
    assert_eq!(up.last().uri, "/v2/items");
}

#[tokio::test]
async fn redirect_respond_and_method_rules() {
    let gh = Gatehouse::start(
        r#"
[[site]]
hosts = ["app.test"]
  [[site.route]]
  path = "/docs/"
  redirect = { to = "https://docs.example.com/", status = 301, keep_path = true }
  [[site.route]]
  path = "/ping"
  methods = ["GET"]
  respond = { status = 202, body = "pong", content_type = "text/x-pong" }
"#,
    );
    let r = get(&gh.url("/docs/guide/intro?lang=en"), &[("host", "app.test")]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), "https://docs.example.com/guide/intro?lang=en");
    let r = get(&gh.url("/ping"), &[("host", "app.test")]).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str(), r.header("content-type")),
        (202, "pong", "text/x-pong")
    );
    let req = Request::post(gh.url("/ping"))
        .header("host", "app.test")
        .body(body("x"))
        .unwrap();
    let r = send(&client::http1(), req).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), "GET");
    let r = get(&gh.url("/nothing"), &[("host", "app.test")]).await;
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains(r.header("x-request-id")),
        "error body carries the request id"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_is_proxied_as_http1() {
    let up = Upstream::echo().await;
    let gh =
        Gatehouse::start(&proxy_config(&format!("\"{}\"", up.addr), "").replace("[\"app.test\"]", "[\"127.0.0.1\"]"));
    // HTTP/2 carries the host in :authority, taken here from the URI.
    let req = Request::post(gh.url("/h2")).body(body("over h2")).unwrap();
    let r = send(&client::h2c(), req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "over h2");
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.header("x-forwarded-host"), gh.addr.to_string());
    let line = gh.wait_for_log_line("/h2 HTTP/2.0").await;
    assert!(line.contains("in=7 out=7"), "{line}");
}

#[tokio::test]
async fn round_robin_spreads_over_targets() {
    let a = Upstream::echo().await;
    let b = Upstream::echo().await;
    let gh = Gatehouse::start(&format!(
        "[server]\nworkers = 1\n{}",
        proxy_config(&format!("\"{}\", \"{}\"", a.addr, b.addr), "")
    ));
    for _ in 0..10 {
        assert_eq!(get(&gh.url("/"), &[("host", "app.test")]).await.status, 200);
    }
    assert_eq!((a.requests().len(), b.requests().len()), (5, 5));
}

#[tokio::test]
async fn refused_upstream_gives_502_with_request_id() {
    let gh = Gatehouse::start(&proxy_config(&format!("\"{}\"", refused_addr()), ""));
    let r = get(&gh.url("/"), &[("host", "app.test")]).await;
    assert_eq!(r.status, 502);
    let id = r.header("x-request-id");
    assert_eq!(id.len(), 32);
    assert_eq!(
        r.text(),
        format!("502 Bad Gateway: upstream connection failed (request id {id})\n")
    );
    let line = gh.wait_for_log_line(id).await;
    assert!(line.contains("\" 502 "), "{line}");
}

#[tokio::test]
async fn slow_upstream_gives_504() {
    let up = Upstream::start(Behavior::Delay(Duration::from_secs(3))).await;
    let gh = Gatehouse::start(&proxy_config(&format!("\"{}\"", up.addr), ""));
    let started = std::time::Instant::now();
    let r = get(&gh.url("/"), &[("host", "app.test")]).await;
    assert_eq!(r.status, 504);
    assert!(
        r.text()
            .starts_with("504 Gateway Timeout: upstream timed out (request id "),
        "{}",
        r.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the 500ms response timeout applied"
    );
    // Not sent again: the request may still be running upstream.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn the_response_timeout_starts_again_for_each_request_on_a_connection() {
    // Each answer takes 300 ms of the 500 ms allowed; the connection's deadline
    // must move with each request, or the later ones would time out early.
    let up = Upstream::start(Behavior::Delay(Duration::from_millis(300))).await;
    let gh = Gatehouse::start(&proxy_config(&format!("\"{}\"", up.addr), ""));
    for i in 0..6 {
        let r = get(&gh.url("/"), &[("host", "app.test")]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // One pool per worker thread: at most two connections carried the six.
    assert!(up.connections() <= 2, "{} upstream connections", up.connections());
}

#[tokio::test]
async fn reset_upstream_gives_502() {
    let up = Upstream::start(Behavior::Reset).await;
    let gh = Gatehouse::start(&proxy_config(&format!("\"{}\"", up.addr), ""));
    let r = get(&gh.url("/"), &[("host", "app.test")]).await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("upstream closed the connection"), "{}", r.text());
}

#[tokio::test]
async fn upstream_closing_mid_body_truncates_the_response_visibly() {
    let up = Upstream::start(Behavior::CloseMidBody).await;
    let gh = Gatehouse::start(&proxy_config(&format!("\"{}\"", up.addr), ""));
    let req = Request::get(gh.url("/"))
        .header("host", "app.test")
        .body(body(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client::http1().request(req))
        .await
        .expect("headers in time")
        .expect("headers arrive before the upstream closes");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "100");
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        http_body_util::BodyExt::collect(resp.into_body()),
    )
    .await
    .expect("the truncated body ends instead of hanging");
    assert!(
        body.is_err(),
        "the client must see an incomplete body, not a short success"
    );
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let up = Upstream::start(Behavior::WebSocketEcho).await;
    let gh = Gatehouse::start(&proxy_config(&format!("\"{}\"", up.addr), ""));
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws/chat",
        gh.addr
    ))
    .unwrap();
    req.headers_mut().insert("host", "app.test".parse().unwrap());
    let (mut ws, resp) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(format!("hello {i}")));
    }
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().len(), big.len());
    ws.close(None).await.unwrap();
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/ws/chat");
    assert_eq!(seen.header("upgrade").to_ascii_lowercase(), "websocket");
    assert_eq!(seen.header("x-forwarded-for"), "127.0.0.1");
}

#[tokio::test]
async fn request_bodies_stream_both_ways() {
    let up = Upstream::echo().await;
    let gh = Gatehouse::start(&proxy_config(&format!("\"{}\"", up.addr), ""));
    // A chunked body in 100 pieces, echoed back intact.
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = (0..100u8)
        .map(|i| Ok(hyper::body::Frame::data(Bytes::from(vec![i; 1000]))))
        .collect();
    let stream_body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let req = Request::put(gh.url("/upload"))
        .header("host", "app.test")
        .body(http_body_util::BodyExt::boxed(stream_body))
        .unwrap();
    let r = send(&client::http1(), req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100_000);
    assert!(
        r.body
            .chunks(1000)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8))
    );
    let line = gh.wait_for_log_line("/upload").await;
    assert!(line.contains("in=100000 out=100000"), "{line}");
}

#[tokio::test]
async fn missing_or_bad_host_is_rejected() {
    let gh = Gatehouse::start("[[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nrespond = {}\n");
    for bad in [
        "bad host",
        "evil:1.example.org:443",
        "a:1:2",
        "[::1",
        "[nope]:80",
        "x.com:8o",
    ] {
        let r = get(&gh.url("/"), &[("host", bad)]).await;
        assert_eq!(r.status, 400, "Host {bad:?}");
    }
    let r = get(&gh.url("/"), &[("host", "anything.example")]).await;
    assert_eq!(r.status, 200, "the default site answers unknown hosts");
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let up = Upstream::echo().await;
    let gh = Gatehouse::start(&format!(
        "[server]\nworkers = 1\n{}",
        proxy_config(&format!("\"{}\"", up.addr), "")
    ));
    for _ in 0..20 {
        assert_eq!(get(&gh.url("/"), &[("host", "app.test")]).await.status, 200);
    }
    assert_eq!(up.requests().len(), 20);
    assert_eq!(up.connections(), 1, "sequential requests reuse one upstream connection");
}

#[tokio::test]
async fn abandoned_response_does_not_poison_the_pool() {
    let up = Upstream::start(Behavior::Generate(8 << 20)).await;
    let gh = Gatehouse::start(&format!(
        "[server]\nworkers = 1\n{}",
        proxy_config(&format!("\"{}\"", up.addr), "")
    ));
    // Read only the head of a large response, then hang up.
    let req = Request::get(gh.url("/big"))
        .header("host", "app.test")
        .body(body(Bytes::new()))
        .unwrap();
    let resp = client::http1().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The half-read connection is not reused: the next response is whole.
    let r = get(&gh.url("/again"), &[("host", "app.test")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 8 << 20);
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn upstream_closing_after_each_response_is_handled() {
    let up = Upstream::start(Behavior::CloseAfterResponse).await;
    let gh = Gatehouse::start(&format!(
        "[server]\nworkers = 1\n{}",
        proxy_config(&format!("\"{}\"", up.addr), "")
    ));
    for i in 0..10 {
        let r = get(&gh.url("/"), &[("host", "app.test")]).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "bye"), "request {i}");
        assert!(r.headers.get("connection").is_none(), "hop-by-hop header leaked");
    }
    assert_eq!(up.connections(), 10);
}

#[tokio::test]
async fn idle_http2_connections_are_closed_and_busy_ones_kept() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let up = Upstream::start(Behavior::Delay(Duration::from_secs(1))).await;
    let gh = Gatehouse::start(&format!(
        r#"
[limits]
header_timeout = "300ms"

[upstream.app]
targets = ["{}"]
response_timeout = "5s"

[[site]]
hosts = ["app.test"]
  [[site.route]]
  path = "/"
  upstream = "app"
"#,
        up.addr
    ));
    let stream = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    // A request open for longer than several idle periods keeps the connection.
    let req = Request::get("http://app.test/slow")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&text[..], b"slow");
    // Idle afterwards: the server closes it within two periods, with a GOAWAY
    // (a connection cut off without one ends in an error here).
    let idle_since = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .unwrap()
        .expect("closed gracefully");
    assert!(
        idle_since.elapsed() < Duration::from_secs(2),
        "{:?}",
        idle_since.elapsed()
    );
}
