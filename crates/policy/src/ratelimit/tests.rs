use std::net::{IpAddr, Ipv4Addr};

use governor::clock::FakeRelativeClock;

use super::*;

fn rate(s: &str) -> Rate {
    s.parse::<RateSpec>().unwrap().rate
}

fn limiter(spec: &str) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    let l = RateLimiter::with_clock("api", rate(spec), &LimiterOptions::default(), clock.clone()).unwrap();
    (l, clock)
}

const A: RateKey<'static> = RateKey::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
const B: RateKey<'static> = RateKey::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));

#[test]
fn parses_the_string_forms() {
    let s: RateSpec = "20/s burst 40".parse().unwrap();
    assert_eq!(s.rate.per_period.get(), 20);
    assert_eq!(s.rate.period, Duration::from_secs(1));
    assert_eq!(s.rate.burst.get(), 40);
    assert_eq!(s.key, KeyKind::Ip);
    let s: RateSpec = "100/m".parse().unwrap();
    assert_eq!(
        (s.rate.per_period.get(), s.rate.period, s.rate.burst.get()),
        (100, Duration::from_secs(60), 100)
    );
    let s: RateSpec = "5/s burst 10 per ip".parse().unwrap();
    assert_eq!((s.rate.burst.get(), s.key), (10, KeyKind::Ip));
    let s: RateSpec = "  1000/H  PER  User ".parse().unwrap();
    assert_eq!((s.rate.period, s.key), (Duration::from_secs(3600), KeyKind::User));
    let s: RateSpec = "10/5m per header X-Api-Key".parse().unwrap();
    assert_eq!(s.rate.period, Duration::from_secs(300));
    assert_eq!(s.key, KeyKind::Header(HeaderName::from_static("x-api-key")));
    let s: RateSpec = "3/day per route".parse().unwrap();
    assert_eq!((s.rate.period, s.key), (Duration::from_secs(86_400), KeyKind::Route));
    assert_eq!(s.rate.emission_interval(), Duration::from_secs(28_800));
}

#[test]
fn display_round_trips() {
    for s in [
        "20/s burst 40 per ip",
        "100/m per user",
        "10/5m per header x-api-key",
        "3/d per route",
        "7/10s burst 1 per ip",
    ] {
        let spec: RateSpec = s.parse().unwrap();
        assert_eq!(spec.to_string(), s);
        assert_eq!(spec.to_string().parse::<RateSpec>().unwrap(), spec);
    }
}

#[test]
fn parse_errors_say_what_is_wrong() {
    for (input, needle) in [
        ("", "empty"),
        ("20", "no '/'"),
        ("x/s", "whole number"),
        ("0/s", "at least 1"),
        ("20/", "no unit"),
        ("20/w", "unknown unit"),
        ("20/s burst", "needs a number"),
        ("20/s burst 0", "at least 1"),
        ("20/s per", "needs ip"),
        ("20/s per planet", "unknown key"),
        ("20/s per header", "header name"),
        ("20/s per header bad:name", "not a valid header name"),
        ("20/s per ip burst 3", "before"),
        ("20/s burst 2 burst 3", "twice"),
        ("20/s please", "unexpected"),
        ("99999999/s", "1 000 000"),
        ("1/d burst 4000", "a year"),
        ("99999999999/s", "too large"),
    ] {
        let e = input.parse::<RateSpec>().unwrap_err().to_string();
        assert!(e.contains(needle), "{input:?}: {e}");
        assert!(e.contains(&format!("{input:?}")), "error names the input: {e}");
    }
}

#[test]
fn burst_then_rate() {
    let (l, clock) = limiter("10/s burst 3");
    let d: Vec<_> = (0..4).map(|_| l.check_local(&A)).collect();
    assert!(d[..3].iter().all(|d| d.allowed));
    assert_eq!(d.iter().map(|d| d.remaining).collect::<Vec<_>>(), [2, 1, 0, 0]);
    assert!(!d[3].allowed);
    assert_eq!(d[3].retry_after, Duration::from_millis(100));
    // Another key has its own bucket.
    assert!(l.check_local(&B).allowed);
    // One emission interval later exactly one more passes.
    clock.advance(Duration::from_millis(100));
    assert!(l.check_local(&A).allowed);
    assert!(!l.check_local(&A).allowed);
    // After a full refill the whole burst is back: recovery after the window.
    clock.advance(Duration::from_millis(300));
    assert_eq!((0..4).filter(|_| l.check_local(&A).allowed).count(), 3);
}

#[test]
fn long_run_rate_is_respected() {
    let (l, clock) = limiter("20/s burst 5");
    let mut allowed = 0;
    // 10 s of a client asking every millisecond.
    for _ in 0..10_000 {
        if l.check_local(&A).allowed {
            allowed += 1;
        }
        clock.advance(Duration::from_millis(1));
    }
    assert!((200..=205).contains(&allowed), "{allowed}");
}

#[test]
fn headers_follow_the_draft() {
    let (l, clock) = limiter("20/s burst 40");
    let d = l.check_local(&A);
    let h = d.headers();
    assert_eq!(h[RATELIMIT_POLICY], "\"api\";q=40;w=2");
    assert_eq!(h[RATELIMIT], "\"api\";r=39;t=1");
    assert!(h.get(RETRY_AFTER).is_none());
    for _ in 0..39 {
        l.check_local(&A);
    }
    let denied = l.check_local(&A);
    assert!(!denied.allowed);
    let h = denied.headers();
    assert_eq!(h[RATELIMIT], "\"api\";r=0;t=1");
    assert_eq!(h[RETRY_AFTER], "1");
    assert_eq!(denied.retry_after, Duration::from_millis(50));
    let resp = too_many_requests(&denied);
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()[RETRY_AFTER], "1");
    assert_eq!(resp.headers()[RATELIMIT_POLICY], "\"api\";q=40;w=2");
    assert!(std::str::from_utf8(resp.body()).unwrap().starts_with("429"));
    clock.advance(Duration::from_millis(50));
    assert!(l.check_local(&A).allowed);

    let (slow, _) = limiter("100/m");
    let h = slow.check_local(&A).headers();
    assert_eq!(h[RATELIMIT_POLICY], "\"api\";q=100;w=60");
    assert_eq!(h[RATELIMIT], "\"api\";r=99;t=1");
    let (daily, _) = limiter("2/d");
    let first = daily.check_local(&A);
    daily.check_local(&A);
    let denied = daily.check_local(&A);
    assert_eq!(first.headers()[RATELIMIT], "\"api\";r=1;t=43200");
    assert_eq!(denied.headers()[RETRY_AFTER], "43200");
    assert_eq!(denied.headers()[RATELIMIT], "\"api\";r=0;t=43200");
}

#[test]
fn policy_names_are_checked() {
    let r = rate("1/s");
    assert!(RateLimiter::new("", r, &LimiterOptions::default()).is_err());
    assert!(RateLimiter::new("a\"b", r, &LimiterOptions::default()).is_err());
    assert!(RateLimiter::new("app.example.com/api/", r, &LimiterOptions::default()).is_ok());
}

#[test]
fn keys_by_kind() {
    let ip: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_static("k1"));
    let by_header = KeyKind::Header(HeaderName::from_static("x-api-key"));
    assert_eq!(by_header.key(ip, &headers, None), RateKey::Bytes(b"k1"));
    // Without the header the client falls back to its address, not to a shared key.
    assert_eq!(by_header.key(ip, &HeaderMap::new(), None), RateKey::ip(ip));
    assert_eq!(KeyKind::User.key(ip, &headers, Some("u42")), RateKey::Bytes(b"u42"));
    assert_eq!(KeyKind::User.key(ip, &headers, None), RateKey::ip(ip));
    assert_eq!(KeyKind::Route.key(ip, &headers, None), RateKey::Route);
    // IPv6 by /64; IPv4-mapped as IPv4.
    let same_64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
    let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(RateKey::ip(ip), RateKey::ip(same_64));
    assert_ne!(RateKey::ip(ip), RateKey::ip(other_64));
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    assert_eq!(RateKey::ip(mapped), A);
    let mut out = Vec::new();
    RateKey::ip(ip).write_redis(&mut out);
    assert_eq!(out, b"ip:2001:db8:1:2::");
}

#[test]
fn idle_keys_are_swept() {
    let clock = FakeRelativeClock::default();
    let options = LimiterOptions {
        sweep_interval: Duration::from_millis(640),
        ..LimiterOptions::default()
    };
    let l = RateLimiter::with_clock("api", rate("10/s burst 2"), &options, clock.clone()).unwrap();
    for i in 0..1000u32 {
        l.check_local(&RateKey::Bytes(&i.to_be_bytes()));
    }
    assert_eq!(l.stats().keys, 1000);
    // Not yet fresh: nothing goes.
    assert_eq!(l.sweep(), 0);
    clock.advance(Duration::from_secs(1));
    // The request path sweeps one shard per 10 ms here; 64 steps clear the table.
    for _ in 0..70 {
        clock.advance(Duration::from_millis(10));
        l.check_local(&A);
    }
    assert_eq!(l.stats().keys, 1, "only the active key is left");
    clock.advance(Duration::from_secs(1));
    assert_eq!(l.sweep(), 1);
    assert_eq!(l.stats().keys, 0);
}

#[test]
fn key_cap_holds_and_overflow_is_limited() {
    let clock = FakeRelativeClock::default();
    let options = LimiterOptions {
        max_keys: NonZeroUsize::new(100).unwrap(),
        ..LimiterOptions::default()
    };
    let l = RateLimiter::with_clock("api", rate("1/m burst 2"), &options, clock.clone()).unwrap();
    for i in 0..100u32 {
        assert!(l.check_local(&RateKey::Bytes(&i.to_be_bytes())).allowed);
    }
    assert_eq!(l.stats().keys, 100);
    // New keys now share the overflow bucket: two pass, the rest are limited
    // (never fail open), and memory does not grow.
    let overflow: Vec<bool> = (1000..1010u32)
        .map(|i| l.check_local(&RateKey::Bytes(&i.to_be_bytes())).allowed)
        .collect();
    assert_eq!(overflow.iter().filter(|a| **a).count(), 2, "{overflow:?}");
    assert!(l.stats().keys <= 101);
    assert_eq!(l.stats().overflowed, 10);
    // Known keys keep their own buckets.
    assert!(l.check_local(&RateKey::Bytes(&5u32.to_be_bytes())).allowed);
    assert!(!l.check_local(&RateKey::Bytes(&5u32.to_be_bytes())).allowed);
    // Once idle keys expire, new keys get their own buckets again.
    clock.advance(Duration::from_secs(300));
    l.sweep();
    assert!(l.check_local(&RateKey::Bytes(&2000u32.to_be_bytes())).allowed);
    assert!(l.check_local(&RateKey::Bytes(&2000u32.to_be_bytes())).allowed);
    assert_eq!(l.stats().keys, 1);
}

#[test]
fn shared_across_threads() {
    let l = Arc::new(RateLimiter::new("api", rate("1/m burst 50"), &LimiterOptions::default()).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let l = l.clone();
            std::thread::spawn(move || (0..100).filter(|_| l.check_local(&A).allowed).count())
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, 50);
}

#[tokio::test]
async fn local_check_is_ready_at_once() {
    let (l, _) = limiter("1/s");
    let d = l.check(&A).await;
    assert!(d.allowed);
    assert_eq!(d.source, DecisionSource::Local);
    assert!(!l.check(&A).await.allowed);
}

#[test]
fn policies_are_shareable_between_workers() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RateLimiter>();
    send_sync::<RedisBackend>();
    send_sync::<Decision>();
    send_sync::<crate::CorsPolicy>();
    send_sync::<crate::IpRules>();
    send_sync::<crate::ConcurrencyLimit>();
    send_sync::<crate::ConcurrencyGuard>();
    send_sync::<crate::SecurityHeaders>();
    send_sync::<crate::HeaderRules>();
    // The check future can move between threads of a multi-threaded runtime.
    fn send<T: Send>(_: T) {}
    let l = RateLimiter::new("api", rate("1/s"), &LimiterOptions::default()).unwrap();
    send(l.check(&A));
}
