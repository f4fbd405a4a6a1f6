//! Hot reload: new config for new requests, nothing dropped, bad files refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gatehouse_testkit::Gatehouse;
use gatehouse_testkit::client::{self, body, get};
use gatehouse_testkit::process::{Process, TempDir};
use gatehouse_testkit::upstream::{Behavior, HeldAddr, Upstream};
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// Generation `n` of the config under load: `/v` answers `v{n}` and `/api/`
/// goes to upstream `a` or `b` (alternating); `/ws` always goes to the
/// WebSocket echo.
fn load_config(n: usize, a: SocketAddr, b: SocketAddr, ws: SocketAddr) -> String {
    let api = if n % 2 == 0 { a } else { b };
    format!(
        "[server]\nhttp = [\"127.0.0.1:0\"]\nworkers = 2\nshutdown_timeout = \"2s\"\n\
         [upstream.api]\ntargets = [\"{api}\"]\n\
         [upstream.ws]\ntargets = [\"{ws}\"]\n\
         [[site]]\ndefault = true\n\
         [[site.route]]\npath = \"/v\"\nrespond = {{ body = \"v{n}\" }}\n\
         [[site.route]]\npath = \"/api/\"\nupstream = \"api\"\n\
         [[site.route]]\npath = \"/ws\"\nupstream = \"ws\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_drop_no_request_and_no_websocket() {
    let a = Upstream::start(Behavior::Status(200, "from a")).await;
    let b = Upstream::start(Behavior::Status(200, "from b")).await;
    let ws_up = Upstream::start(Behavior::WebSocketEcho).await;
    let gh = Gatehouse::start(&load_config(0, a.addr, b.addr, ws_up.addr));
    let base = format!("http://{}", gh.addr);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (stop, ok, failed, base) = (stop.clone(), ok.clone(), failed.clone(), base.clone());
        clients.push(tokio::spawn(async move {
            // Keep-alive connections: they must see every reload too.
            let http = client::http1();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let path = if (n + i) % 2 == 0 { "/api/x" } else { "/v" };
                n += 1;
                let req = Request::get(format!("{base}{path}")).body(body(Bytes::new())).unwrap();
                match tokio::time::timeout(Duration::from_secs(10), http.request(req)).await {
                    Ok(Ok(resp)) if resp.status() == 200 => {
                        let got = http_body_util::BodyExt::collect(resp.into_body()).await;
                        if got.is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    other => {
                        eprintln!("request failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let echoed = Arc::new(AtomicU64::new(0));
    let mut sockets = Vec::new();
    for i in 0..4 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gh.addr))
            .await
            .unwrap();
        let (stop, echoed) = (stop.clone(), echoed.clone());
        sockets.push(tokio::spawn(async move {
            let mut ws = ws;
            let mut n = 0u64;
            // Echo until told to stop, then once more: the socket must still work.
            loop {
                let last = stop.load(Ordering::Relaxed);
                let text = format!("socket {i} message {n}");
                ws.send(Message::text(text.clone()))
                    .await
                    .expect("websocket send failed");
                let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
                    .await
                    .expect("websocket echo timed out")
                    .expect("websocket closed")
                    .expect("websocket error");
                assert_eq!(reply.into_text().unwrap().as_str(), text);
                echoed.fetch_add(1, Ordering::Relaxed);
                n += 1;
                if last {
                    return n;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    // One more keep-alive client, used only between reloads: its pooled
    // connection outlives every reload and must follow each one.
    let keepalive = client::http1();
    let next = |path: &str| Request::get(format!("{base}{path}")).body(body(Bytes::new())).unwrap();
    assert_eq!(client::send(&keepalive, next("/v")).await.text(), "v0");
    let mut generation = 1;
    let mut shown = 0;
    for round in 1..=20 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        if round % 5 == 0 {
            // Invalid: an undefined upstream. Nothing changes.
            let bad =
                load_config(round, a.addr, b.addr, ws_up.addr).replace("upstream = \"api\"", "upstream = \"nope\"");
            let err = gh.reload(&bad).unwrap_err();
            assert!(
                err.contains("test.toml:") && err.contains("upstream \"nope\" is not defined"),
                "{err}"
            );
        } else {
            let reloaded = gh.reload(&load_config(round, a.addr, b.addr, ws_up.addr)).unwrap();
            generation += 1;
            shown = round;
            assert_eq!(reloaded.generation, generation);
            assert!(reloaded.added.is_empty() && reloaded.removed.is_empty());
        }
        // The very next request uses the config now current, on a new
        // connection and on one kept alive across the reload.
        assert_eq!(get(&format!("{base}/v"), &[]).await.text(), format!("v{shown}"));
        assert_eq!(client::send(&keepalive, next("/v")).await.text(), format!("v{shown}"));
        let want = if shown % 2 == 0 { "from a" } else { "from b" };
        assert_eq!(client::send(&keepalive, next("/api/x")).await.text(), want);
    }
    // Enough traffic to mean something, even on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ok.load(Ordering::Relaxed) < 3000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    for s in sockets {
        assert!(s.await.unwrap() > 10, "each WebSocket echoed throughout");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "{ok} requests, {failed} failed, {} WebSocket echoes across 20 reloads",
        echoed.load(Ordering::Relaxed)
    );
    assert_eq!(failed, 0);
    assert!(ok >= 3000, "{ok} requests");
    assert_eq!(ws_up.connections(), 4, "the WebSockets were never reconnected");
    assert!(!a.requests().is_empty() && !b.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_of_unchanged_targets_survives_and_checks_restart() {
    let live = Upstream::echo().await;
    let held = HeldAddr::new();
    let dead = held.addr;
    let extra = Upstream::echo().await;
    let config = |body: &str, targets: &str| {
        format!(
            "[upstream.api]\ntargets = [{targets}]\n\
             health = {{ path = \"/\", interval = \"100ms\", timeout = \"1s\", rise = 1, fall = 1, wait_healthy = false }}\n\
             passive = {{ failures = 0 }}\n\
             [[site]]\ndefault = true\n\
             [[site.route]]\npath = \"/v\"\nrespond = {{ body = \"{body}\" }}\n\
             [[site.route]]\npath = \"/\"\nupstream = \"api\"\n"
        )
    };
    let gh = Gatehouse::start(&config("one", &format!("\"{}\", \"{dead}\"", live.addr)));
    let view = gh.upstreams();
    let state = |i: usize| view.snapshot()[0].targets[i].state;
    // Targets start up (wait_healthy = false): "down" is the checker's verdict.
    wait_until("the dead target is marked down", || state(1) == "down").await;

    let targets = format!("\"{}\", \"{dead}\", \"{}\"", live.addr, extra.addr);
    assert_eq!(gh.reload(&config("two", &targets)).unwrap().generation, 2);
    let (generation, snapshot) = view.snapshot_with_generation();
    assert_eq!(generation, 2, "the view shows the current generation");
    assert_eq!(snapshot[0].targets.len(), 3, "{snapshot:?}");
    assert_eq!(snapshot[0].targets[1].state, "down", "health state survived the reload");
    assert_eq!(snapshot[0].targets[2].state, "up", "a new target starts afresh");
    assert_eq!(get(&gh.url("/v"), &[]).await.text(), "two");
    for _ in 0..6 {
        let r = get(&gh.url("/"), &[]).await;
        assert_eq!(
            r.status,
            200,
            "the down target gets no traffic: {} {:?}",
            r.text(),
            view.snapshot()
        );
    }

    // The new checker owns the surviving record: the target comes back.
    let _revived = Upstream::start_held(held, Behavior::Echo);
    wait_until("the revived target is marked up", || state(1) == "up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_listeners_serve_and_removed_ones_refuse_and_drain() {
    let config = |http: &str| {
        format!(
            "[server]\nhttp = [{http}]\nworkers = 2\nshutdown_timeout = \"2s\"\n\
             [[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"hi\" }}\n"
        )
    };
    // Distinct loopback addresses with port 0 are distinct listeners.
    let gh = Gatehouse::start(&config("\"127.0.0.1:0\", \"127.0.0.2:0\""));
    let [kept, old] = gh.addrs()[..] else {
        panic!("two listeners")
    };

    // A keep-alive connection on the listener about to go away.
    let mut conn = tokio::net::TcpStream::connect(old).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // A reload that cannot bind changes nothing.
    let busy = std::net::TcpListener::bind("127.0.0.4:0").unwrap();
    let taken = busy.local_addr().unwrap();
    let err = gh
        .reload(&config(&format!("\"127.0.0.1:0\", \"{taken}\"")))
        .unwrap_err();
    assert!(err.contains("cannot listen on"), "{err}");
    assert_eq!(gh.addrs(), vec![kept, old]);

    let reloaded = gh.reload(&config("\"127.0.0.1:0\", \"127.0.0.3:0\"")).unwrap();
    assert_eq!(reloaded.removed, vec![old]);
    let [added] = reloaded.added[..] else {
        panic!("one listener added")
    };
    assert_eq!(gh.addrs(), vec![kept, added], "the unchanged listener kept its socket");
    assert_eq!(get(&format!("http://{added}/"), &[]).await.text(), "hi");
    assert_eq!(get(&format!("http://{kept}/"), &[]).await.text(), "hi");
    wait_until_async("the removed listener refuses connections", || async move {
        tokio::net::TcpStream::connect(old).await.is_err()
    })
    .await;
    // Its idle keep-alive connection was closed by the drain.
    let n = tokio::time::timeout(Duration::from_secs(3), conn.read(&mut buf))
        .await
        .expect("the drained connection was closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[test]
fn sighup_and_gatehouse_reload_with_the_real_binary() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = TempDir::new("gh-reload-hup");
    let config = |body: &str| {
        format!(
            "[server]\nhttp = [\"127.0.0.1:0\"]\nworkers = 1\ndata_dir = \"{}\"\n[log]\naccess_log = \"off\"\n\
             [[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"{body}\" }}\n",
            dir.0.join("data").display()
        )
    };
    let mut gh = Process::serve(Path::new(BIN), &config("one"));
    let url = format!("http://{}/", gh.addr);
    let body = || rt.block_on(get(&url, &[])).text();
    assert_eq!(body(), "one");

    std::fs::write(&gh.config, config("two")).unwrap();
    gh.signal("HUP");
    wait_sync("SIGHUP applied the new config", || body() == "two");

    // An invalid file: the server logs it and keeps serving.
    std::fs::write(&gh.config, "[server]\nworkers = \"many\"\n").unwrap();
    gh.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(body(), "two");
    let cfg = gh.config.display().to_string();
    let (code, _, stderr) = run(&["reload", "-c", &cfg], None);
    assert_eq!(code, 1);
    assert!(stderr.contains(&format!("{cfg}:2:11: server.workers")), "{stderr}");
    assert!(stderr.contains("keeps serving its current config"), "{stderr}");

    // Without an admin address, `gatehouse reload` signals the pid in the lock file.
    std::fs::write(&gh.config, config("three")).unwrap();
    let (code, stdout, stderr) = run(&["reload", "-c", &cfg], None);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("sent SIGHUP"), "{stdout}");
    wait_sync("gatehouse reload applied the new config", || body() == "three");

    // After reloads, a shutdown still finishes cleanly.
    gh.signal("TERM");
    assert_eq!(gh.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn gatehouse_reload_through_the_admin_api_reports_errors() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = TempDir::new("gh-reload-admin");
    let token = "r3load-r3load-r3load-r3load-r3load";
    let config = |body: &str| {
        format!(
            "[server]\nhttp = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\nadmin_token = \"{token}\"\n\
             data_dir = \"{}\"\n[log]\naccess_log = \"off\"\n\
             [[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"{body}\" }}\n",
            dir.0.join("data").display()
        )
    };
    let gh = Process::serve(Path::new(BIN), &config("one"));
    let admin_line = gh.stdout.recv_timeout(Duration::from_secs(5)).unwrap();
    let admin = admin_line.rsplit(' ').next().unwrap().trim_end_matches('/').to_owned();
    let url = format!("http://{}/", gh.addr);
    let cfg = gh.config.display().to_string();

    // The server itself reads the file and reports its error.
    std::fs::write(&gh.config, config("two").replace("workers = 1", "workers = \"many\"")).unwrap();
    let (code, _, stderr) = run(&["reload", "--admin", &admin], Some(token));
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid_config"), "{stderr}");
    assert!(stderr.contains(&format!("{cfg}:3:11: server.workers")), "{stderr}");
    let (code, _, stderr) = run(
        &["reload", "--admin", &admin],
        Some("wrong-wrong-wrong-wrong-wrong-wrong"),
    );
    assert_eq!(code, 1, "a wrong token is refused");
    assert!(stderr.contains("invalid_token"), "{stderr}");
    assert_eq!(rt.block_on(get(&url, &[])).text(), "one");

    std::fs::write(&gh.config, config("two")).unwrap();
    let (code, stdout, stderr) = run(&["reload", "--admin", &admin], Some(token));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("generation 2"), "{stdout}");
    assert_eq!(rt.block_on(get(&url, &[])).text(), "two");
    let auth = format!("Bearer {token}");
    let view = rt.block_on(get(&format!("{admin}/upstreams"), &[("authorization", &auth)]));
    let v: serde_json::Value = serde_json::from_slice(&view.body).unwrap();
    assert_eq!(v["generation"], 2, "{}", view.text());
}

#[test]
fn watch_config_reloads_when_the_file_changes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = TempDir::new("gh-reload-watch");
    let config = |body: &str| {
        format!(
            "[server]\nhttp = [\"127.0.0.1:0\"]\nworkers = 1\nwatch_config = true\ndata_dir = \"{}\"\n\
             [log]\naccess_log = \"off\"\n\
             [[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"{body}\" }}\n",
            dir.0.join("data").display()
        )
    };
    let gh = Process::serve(Path::new(BIN), &config("one"));
    let url = format!("http://{}/", gh.addr);
    let body = || rt.block_on(get(&url, &[])).text();
    assert_eq!(body(), "one");
    std::fs::write(&gh.config, config("two")).unwrap();
    wait_sync("the changed file was picked up", || body() == "two");
}

fn run(args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("GATEHOUSE_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("GATEHOUSE_ADMIN_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until_async<F: std::future::Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn wait_sync(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
