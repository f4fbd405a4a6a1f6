//! Load balancing, health checks and retries, against scripted upstreams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gatehouse_testkit::Gatehouse;
use gatehouse_testkit::client::{self, body, get, send};
use gatehouse_testkit::upstream::{Behavior, Upstream, refused_addr};
use http::Request;

fn config(upstream: &str) -> String {
    format!(
        "[server]\nworkers = 1\ntrusted_proxies = [\"127.0.0.1\"]\n[log]\nlevel = \"error\"\n{upstream}\n\
         [[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nupstream = \"app\"\n"
    )
}

async fn hits(gh: &Gatehouse, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut by_port = HashMap::new();
    for _ in 0..n {
        let r = get(&gh.url("/"), headers).await;
        assert_eq!(r.status, 200, "{}", r.text());
        *by_port.entry(r.header("x-upstream").to_owned()).or_insert(0) += 1;
    }
    by_port
}

fn port(u: &Upstream) -> String {
    u.addr.port().to_string()
}

#[tokio::test]
async fn weighted_round_robin_is_exact() {
    let (a, b) = (Upstream::echo().await, Upstream::echo().await);
    let gh = Gatehouse::start(&config(&format!(
        "[upstream.app]\ntargets = [{{ addr = \"{}\", weight = 3 }}, \"{}\"]\n",
        a.addr, b.addr
    )));
    let h = hits(&gh, 200, &[]).await;
    assert_eq!((h[&port(&a)], h[&port(&b)]), (150, 50));
}

#[tokio::test]
async fn least_conn_and_p2c_avoid_the_slow_target() {
    for policy in ["least_conn", "p2c"] {
        let slow = Upstream::start(Behavior::Delay(Duration::from_millis(300))).await;
        let fast = Upstream::echo().await;
        let gh = Gatehouse::start(&config(&format!(
            "[upstream.app]\ntargets = [\"{}\", \"{}\"]\nbalance = \"{policy}\"\n",
            slow.addr, fast.addr
        )));
        // 40 concurrent clients, each sending requests back to back for 1 s.
        let deadline = Instant::now() + Duration::from_secs(1);
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let url = gh.url("/");
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        assert_eq!(get(&url, &[]).await.status, 200);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let (s, f) = (slow.requests().len(), fast.requests().len());
        assert!(f > s * 5, "{policy}: slow {s}, fast {f}");
    }
}

#[tokio::test]
async fn ip_hash_and_header_hash_are_consistent() {
    let ups = [Upstream::echo().await, Upstream::echo().await, Upstream::echo().await];
    let targets = ups
        .iter()
        .map(|u| format!("\"{}\"", u.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let gh = Gatehouse::start(&config(&format!(
        "[upstream.app]\ntargets = [{targets}]\nbalance = \"ip_hash\"\n"
    )));
    let mut used = std::collections::HashSet::new();
    for i in 0..60 {
        let ip = format!("203.0.113.{i}");
        let first = get(&gh.url("/"), &[("x-forwarded-for", &ip)])
            .await
            .header("x-upstream")
            .to_owned();
        for _ in 0..3 {
            let again = get(&gh.url("/"), &[("x-forwarded-for", &ip)]).await;
            assert_eq!(again.header("x-upstream"), first, "client {ip} moved");
        }
        used.insert(first);
    }
    assert_eq!(used.len(), 3, "60 clients spread over all targets");

    let gh = Gatehouse::start(&config(&format!(
        "[upstream.app]\ntargets = [{targets}]\nbalance = \"header_hash\"\nhash_header = \"x-user\"\n"
    )));
    for user in ["alice", "bob", "carol", "dave"] {
        let first = get(&gh.url("/"), &[("x-user", user)])
            .await
            .header("x-upstream")
            .to_owned();
        for _ in 0..5 {
            assert_eq!(get(&gh.url("/"), &[("x-user", user)]).await.header("x-upstream"), first);
        }
    }
}

#[tokio::test]
async fn sticky_cookie_pins_and_fails_over() {
    let (a, b) = (Upstream::echo().await, Upstream::echo().await);
    let gh = Gatehouse::start(&config(&format!(
        "[upstream.app]\ntargets = [\"{}\", \"{}\"]\nbalance = \"cookie\"\n\
         cookie = {{ name = \"gh_app\", secret = \"0123456789abcdef0123456789abcdef\" }}\n\
         passive = {{ failures = 1, cooldown = \"30s\" }}\n",
        a.addr, b.addr
    )));
    let first = get(&gh.url("/"), &[]).await;
    let set = first.header("set-cookie").to_owned();
    assert!(set.starts_with("gh_app=") && set.contains("HttpOnly"), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let pinned = first.header("x-upstream").to_owned();
    for _ in 0..10 {
        let r = get(&gh.url("/"), &[("cookie", &cookie)]).await;
        assert_eq!(r.header("x-upstream"), pinned);
        assert!(r.headers.get("set-cookie").is_none(), "no new cookie while pinned");
    }
    // A forged cookie is ignored (the client is placed anew, with a fresh cookie).
    let r = get(&gh.url("/"), &[("cookie", "gh_app=0000000000000001.0000000000000000")]).await;
    assert!(r.headers.get("set-cookie").is_some());
    // The pinned target dies: the client moves and gets a new cookie.
    let (dead, alive) = if pinned == port(&a) { (a, b) } else { (b, a) };
    drop(dead);
    let r = get(&gh.url("/"), &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "the retry hides the dead target");
    assert_eq!(r.header("x-upstream"), port(&alive));
    assert!(r.header("set-cookie").starts_with("gh_app="));
}

#[tokio::test]
async fn retry_hides_a_dead_target_from_get_clients() {
    let live = Upstream::echo().await;
    // Default passive checks: the dead target is ejected after a few failures,
    // and every one of those is retried on the live target.
    let gh = Gatehouse::start(&config(&format!(
        "[upstream.app]\ntargets = [\"{}\", \"{}\"]\n",
        refused_addr(),
        live.addr
    )));
    let h = hits(&gh, 40, &[]).await;
    assert_eq!(
        h.get(&port(&live)),
        Some(&40),
        "every request answered by the live target"
    );
}

#[tokio::test]
async fn a_post_whose_body_went_upstream_is_not_retried() {
    let (a, b) = (
        Upstream::start(Behavior::ResetAfterBody).await,
        Upstream::start(Behavior::ResetAfterBody).await,
    );
    let gh = Gatehouse::start(&config(&format!(
        "[upstream.app]\ntargets = [\"{}\", \"{}\"]\nretries = {{ attempts = 3, on_status = [502, 503] }}\n",
        a.addr, b.addr
    )));
    let req = Request::post(gh.url("/orders")).body(body("pay once")).unwrap();
    let r = send(&client::http1(), req).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        a.requests().len() + b.requests().len(),
        1,
        "the POST reached exactly one target"
    );
}

#[tokio::test]
async fn a_small_idempotent_body_is_buffered_and_retried_after_a_reset() {
    let resetting = Upstream::start(Behavior::ResetAfterBody).await;
    let sink = Upstream::start(Behavior::Sink).await;
    let gh = Gatehouse::start(&config(&format!(
        "[upstream.app]\ntargets = [\"{}\", \"{}\"]\nretries = {{ attempts = 2, buffer = \"4KiB\" }}\npassive = {{ failures = 0 }}\n",
        resetting.addr, sink.addr
    )));
    // Some PUTs go to the resetting target first, which reads the whole body
    // and resets; each still succeeds, with its whole body, on the other one.
    for _ in 0..4 {
        let req = Request::put(gh.url("/doc")).body(body(vec![b'p'; 3000])).unwrap();
        let r = send(&client::http1(), req).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "3000");
    }
    assert_eq!(sink.requests().len(), 4);
    assert!(
        !resetting.requests().is_empty(),
        "some PUTs were sent to the resetting target first"
    );
    // Larger than the buffer: streamed, so not replayable after a reset.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let req = Request::put(gh.url("/doc")).body(body(vec![b'p'; 5000])).unwrap();
        statuses.push(send(&client::http1(), req).await.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 502]);
}

#[tokio::test]
async fn status_retries_only_for_idempotent_requests() {
    let failing = Upstream::start(Behavior::Status(503, "busy")).await;
    let fine = Upstream::echo().await;
    let gh = Gatehouse::start(&config(&format!(
        "[upstream.app]\ntargets = [\"{}\", \"{}\"]\nretries = {{ attempts = 2, on_status = [503] }}\npassive = {{ failures = 0 }}\n",
        failing.addr, fine.addr
    )));
    for _ in 0..10 {
        assert_eq!(get(&gh.url("/"), &[]).await.status, 200, "GET retried past the 503");
    }
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let req = Request::post(gh.url("/")).body(body("x")).unwrap();
        statuses.push(send(&client::http1(), req).await.status.as_u16());
    }
    assert!(statuses.contains(&503), "POSTs are not retried: {statuses:?}");
}

#[tokio::test]
async fn retry_budget_caps_amplification() {
    let a = Upstream::start(Behavior::Status(503, "down")).await;
    let b = Upstream::start(Behavior::Status(503, "down")).await;
    let c = Upstream::start(Behavior::Status(503, "down")).await;
    let gh = Gatehouse::start(&config(&format!(
        "[upstream.app]\ntargets = [\"{}\", \"{}\", \"{}\"]\n\
         retries = {{ attempts = 3, on_status = [503], budget = 0.2 }}\npassive = {{ failures = 0 }}\n",
        a.addr, b.addr, c.addr
    )));
    let n = 200;
    for _ in 0..n {
        assert_eq!(get(&gh.url("/"), &[]).await.status, 503);
    }
    let total = a.requests().len() + b.requests().len() + c.requests().len();
    // Without a budget: 3 x 200 = 600. With it: 200 + 20% + the per-window minimum (10).
    assert!(total <= n + n / 5 + 10, "upstream saw {total} requests for {n}");
    assert!(total > n, "some retries were allowed");
}

#[tokio::test]
async fn all_targets_down_gives_503_with_retry_after() {
    let gh = Gatehouse::start(&config(&format!(
        "[upstream.app]\ntargets = [\"{}\", \"{}\"]\npassive = {{ failures = 1, cooldown = \"7s\" }}\n",
        refused_addr(),
        refused_addr()
    )));
    let first = get(&gh.url("/"), &[]).await;
    assert_eq!(first.status, 502, "both targets refused");
    let r = get(&gh.url("/"), &[]).await;
    assert_eq!(r.status, 503);
    let after: u64 = r.header("retry-after").parse().unwrap();
    assert!((5..=7).contains(&after), "retry-after {after}");
    assert!(r.text().contains("no healthy upstream target"));
}

#[tokio::test]
async fn health_checks_remove_a_dead_target_and_bring_it_back() {
    let a = Upstream::echo().await;
    let b = Upstream::echo().await;
    let gh = Gatehouse::start(&config(&format!(
        "[upstream.app]\ntargets = [\"{}\", \"{}\"]\n\
         health = {{ path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 2 }}\n\
         passive = {{ failures = 0 }}\nretries = {{ attempts = 1 }}\n",
        a.addr, b.addr
    )));
    // Targets start unhealthy (503) until their first check passes.
    assert_eq!(get(&gh.url("/"), &[]).await.status, 503);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(get(&gh.url("/"), &[]).await.status.as_u16());
        }
        if statuses.iter().all(|&s| s == 200) && hits(&gh, 10, &[]).await.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "targets never became healthy: {statuses:?}");
    }
    let held = a.stop().await;
    // Within fall x interval (+ one interval of slack) the dead target is out:
    // with retries off, any request sent to it would fail.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let h = hits(&gh, 20, &[]).await;
    assert_eq!(h.get(&port(&b)), Some(&20));
    // It comes back after it recovers.
    let a = Upstream::start_held(held, Behavior::Echo);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if hits(&gh, 10, &[]).await.contains_key(&port(&a)) {
            break;
        }
        assert!(Instant::now() < deadline, "recovered target got no traffic");
    }
    assert!(
        a.requests().iter().any(|r| r.uri == "/healthz"),
        "checks reached the target"
    );
}
