//! Per-request costs of the policies: a local rate-limit check for a key that
//! already has a bucket, CORS on an actual response, and an IP lookup in a list of
//! 1000 networks. Run with `cargo bench -p gatehouse-policy --bench hot`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benches: a panic is a failure report

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gatehouse_policy::{CorsOptions, CorsPolicy, IpRules, LimiterOptions, RateKey, RateLimiter, RateSpec};
use http::{HeaderMap, HeaderValue};
use ipnet::{IpNet, Ipv4Net};

fn xorshift(seed: &mut u32) -> u32 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 17;
    *seed ^= *seed << 5;
    *seed
}

fn ratelimit(c: &mut Criterion) {
    // A huge rate keeps every decision "allowed"; the cost is the same either way.
    let allowed = RateLimiter::new(
        "api",
        "1000000/s".parse::<RateSpec>().unwrap().rate,
        &LimiterOptions::default(),
    )
    .unwrap();
    let denied = RateLimiter::new(
        "api",
        "1/m".parse::<RateSpec>().unwrap().rate,
        &LimiterOptions::default(),
    )
    .unwrap();
    // A realistic table: 10 000 other clients already tracked.
    for i in 0..10_000u32 {
        let key = RateKey::ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
        allowed.check_local(&key);
        denied.check_local(&key);
    }
    let key = RateKey::ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 42)));
    c.bench_function("ratelimit/local_check_existing_key", |b| {
        b.iter(|| black_box(allowed.check_local(black_box(&key))))
    });
    c.bench_function("ratelimit/local_check_denied", |b| {
        b.iter(|| black_box(denied.check_local(black_box(&key))))
    });
    let decision = allowed.check_local(&key);
    c.bench_function("ratelimit/write_headers", |b| {
        b.iter_batched_ref(
            HeaderMap::new,
            |h| decision.write_headers(black_box(h)),
            BatchSize::SmallInput,
        )
    });
}

fn cors(c: &mut Criterion) {
    let options = CorsOptions {
        origins: vec![
            "https://app.example.com".into(),
            "https://admin.example.com".into(),
            "http://localhost:5173".into(),
            "https://*.preview.example.com".into(),
        ],
        credentials: true,
        expose_headers: vec!["x-request-id".into()],
        ..CorsOptions::default()
    };
    let policy = CorsPolicy::new("frontend", &options).unwrap();
    let mut template = HeaderMap::new();
    template.insert("content-type", HeaderValue::from_static("application/json"));
    template.insert("content-length", HeaderValue::from_static("42"));
    template.insert("date", HeaderValue::from_static("Sat, 21 Nov 2026 12:00:00 GMT"));
    let exact = HeaderValue::from_static("https://app.example.com");
    let wildcard = HeaderValue::from_static("https://pr-42.preview.example.com");
    let denied = HeaderValue::from_static("https://evil.example.net");
    for (name, origin) in [("exact", &exact), ("wildcard", &wildcard), ("denied", &denied)] {
        c.bench_function(&format!("cors/apply_{name}"), |b| {
            b.iter_batched_ref(
                || template.clone(),
                |h| policy.apply(Some(black_box(origin)), h),
                BatchSize::SmallInput,
            )
        });
    }
}

fn iprules(c: &mut Criterion) {
    let mut seed = 0x1234_5678;
    let nets: Vec<IpNet> = (0..1000)
        .map(|_| {
            let addr = Ipv4Addr::from(xorshift(&mut seed));
            let len = 16 + (xorshift(&mut seed) % 17) as u8;
            IpNet::V4(Ipv4Net::new(addr, len).unwrap().trunc())
        })
        .collect();
    let rules = IpRules::new(&[], &nets);
    let probes: Vec<IpAddr> = (0..1024)
        .map(|_| IpAddr::V4(Ipv4Addr::from(xorshift(&mut seed))))
        .collect();
    let mut i = 0;
    c.bench_function("iprules/check_1000_networks", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(rules.check(black_box(probes[i])))
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = ratelimit, cors, iprules }
criterion_main!(benches);
