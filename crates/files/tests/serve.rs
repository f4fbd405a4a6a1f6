//! HTTP semantics of the static service, on real files in a tempdir.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

#[path = "support/helpers.rs"]
mod helpers;

use std::io::{Read, Write};
use std::time::{Duration, SystemTime};

use gatehouse_files::{DotfilesPolicy, ImmutableRule, StaticOptions};
use helpers::*;
use http::{Method, StatusCode};

fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "index.html", "<!doctype html><title>home</title>");
    write(r, "app.js", text(20_000));
    write(r, "style.css", "body{margin:0}");
    write(r, "img.png", noise(5000, 1));
    write(r, "docs/index.html", "<h1>docs</h1>");
    write(r, "empty/.keep", "");
    write(r, "assets/index-BxK3f9aQ.js", text(3000));
    write(r, "app.3f9a1c2b.js", "console.log(1)");
    write(r, "favicon.ico", noise(300, 2));
    dir
}

#[tokio::test]
async fn get_head_types_and_methods() {
    let dir = site();
    let svc = service(StaticOptions::dir(dir.path()));

    let g = get(&svc, "/").await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(g.header("cache-control"), Some("no-cache"));
    assert_eq!(&g.body[..], b"<!doctype html><title>home</title>");
    let etag = g.header("etag").unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"));
    assert!(g.header("last-modified").is_some());
    assert_eq!(g.header("accept-ranges"), Some("bytes"));

    let h = req(&svc, Method::HEAD, "/index.html", &[]).await;
    assert_eq!(h.status, StatusCode::OK);
    assert!(h.body.is_empty());
    assert_eq!(h.header("content-length"), Some(g.body.len().to_string().as_str()));
    assert_eq!(h.header("etag"), Some(etag.as_str()));

    assert_eq!(
        get(&svc, "/style.css").await.header("content-type"),
        Some("text/css; charset=utf-8")
    );
    assert_eq!(
        get(&svc, "/app.js").await.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(get(&svc, "/img.png").await.header("content-type"), Some("image/png"));

    for m in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        let r = req(&svc, m, "/index.html", &[]).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    assert_eq!(get(&svc, "/nope.txt").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn conditional_requests() {
    let dir = site();
    let svc = service(StaticOptions::dir(dir.path()));
    let first = get(&svc, "/style.css").await;
    let etag = first.header("etag").unwrap().to_owned();
    let lm = first.header("last-modified").unwrap().to_owned();

    let r = get_with(&svc, "/style.css", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("cache-control"), Some("no-cache"));

    let weak = format!("W/{etag}");
    let list = format!("\"other\", {weak}");
    assert_eq!(
        get_with(&svc, "/style.css", &[("if-none-match", &list)]).await.status,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        get_with(&svc, "/style.css", &[("if-none-match", "*")]).await.status,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        get_with(&svc, "/style.css", &[("if-none-match", "\"nope\"")])
            .await
            .status,
        StatusCode::OK
    );

    assert_eq!(
        get_with(&svc, "/style.css", &[("if-modified-since", &lm)]).await.status,
        StatusCode::NOT_MODIFIED
    );
    let long_ago = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(86_400 * 365));
    assert_eq!(
        get_with(&svc, "/style.css", &[("if-modified-since", &long_ago)])
            .await
            .status,
        StatusCode::OK
    );
    // If-None-Match wins over If-Modified-Since.
    let r = get_with(
        &svc,
        "/style.css",
        &[("if-none-match", "\"nope\""), ("if-modified-since", &lm)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // HEAD is conditional too.
    assert_eq!(
        req(&svc, Method::HEAD, "/style.css", &[("if-none-match", &etag)])
            .await
            .status,
        StatusCode::NOT_MODIFIED
    );

    // If-Match / If-Unmodified-Since.
    assert_eq!(
        get_with(&svc, "/style.css", &[("if-match", &etag)]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_with(&svc, "/style.css", &[("if-match", "\"nope\"")]).await.status,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        get_with(&svc, "/style.css", &[("if-match", &weak)]).await.status,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        get_with(&svc, "/style.css", &[("if-unmodified-since", &long_ago)])
            .await
            .status,
        StatusCode::PRECONDITION_FAILED
    );
}

async fn check_ranges(opts: StaticOptions, data: &[u8]) {
    let svc = service(opts);
    let len = data.len();
    let full = get(&svc, "/blob.bin").await;
    assert_eq!(&full.body[..], data);
    let etag = full.header("etag").unwrap().to_owned();
    let lm = full.header("last-modified").unwrap().to_owned();

    let r = get_with(&svc, "/blob.bin", &[("range", "bytes=0-99")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-range"), Some(format!("bytes 0-99/{len}").as_str()));
    assert_eq!(&r.body[..], &data[..100]);
    assert_eq!(r.header("etag"), Some(etag.as_str()));

    let r = get_with(&svc, "/blob.bin", &[("range", "bytes=-500")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &data[len - 500..]);

    let r = get_with(&svc, "/blob.bin", &[("range", &format!("bytes={}-", len - 10))]).await;
    assert_eq!(&r.body[..], &data[len - 10..]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {}-{}/{len}", len - 10, len - 1).as_str())
    );

    let r = get_with(&svc, "/blob.bin", &[("range", &format!("bytes={len}-"))]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), Some(format!("bytes */{len}").as_str()));

    // Syntax errors and too many ranges: ignored, whole file.
    for ignored in ["bytes=5-1", "lines=0-1", "bytes=x-y"] {
        let r = get_with(&svc, "/blob.bin", &[("range", ignored)]).await;
        assert_eq!(r.status, StatusCode::OK, "{ignored}");
        assert_eq!(r.body.len(), len);
    }
    let many: Vec<String> = (0..17).map(|i| format!("{}-{}", i * 200, i * 200)).collect();
    let r = get_with(&svc, "/blob.bin", &[("range", &format!("bytes={}", many.join(",")))]).await;
    assert_eq!(r.status, StatusCode::OK);

    // If-Range: matching ETag or date → 206; anything else → full 200.
    let r = get_with(&svc, "/blob.bin", &[("range", "bytes=10-19"), ("if-range", &etag)]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &data[10..20]);
    let r = get_with(&svc, "/blob.bin", &[("range", "bytes=10-19"), ("if-range", &lm)]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    for stale in ["\"old-etag\"", &format!("W/{etag}"), "Mon, 01 Jan 2001 00:00:00 GMT"] {
        let r = get_with(&svc, "/blob.bin", &[("range", "bytes=10-19"), ("if-range", stale)]).await;
        assert_eq!(r.status, StatusCode::OK, "if-range {stale}");
        assert_eq!(&r.body[..], data);
        assert!(r.header("content-range").is_none());
    }

    // Several ranges → multipart/byteranges, overlapping ones merged.
    let r = get_with(&svc, "/blob.bin", &[("range", "bytes=0-9,1000-1009,5-12")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    let ct = r.header("content-type").unwrap().to_owned();
    let boundary = ct.strip_prefix("multipart/byteranges; boundary=").expect(&ct);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(body.matches(&format!("--{boundary}\r\n")).count(), 2, "{body}");
    assert!(body.ends_with(&format!("\r\n--{boundary}--\r\n")));
    assert!(body.contains(&format!("Content-Range: bytes 0-12/{len}")));
    assert!(body.contains(&format!("Content-Range: bytes 1000-1009/{len}")));
    let first_part = &r.body[r.body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    assert_eq!(&first_part[..13], &data[..13]);
}

#[tokio::test]
async fn ranges_from_memory_and_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let data = noise(300_000, 9);
    write(dir.path(), "blob.bin", &data);
    // Default: 300 KB is above the in-memory limit → streamed from disk.
    check_ranges(StaticOptions::dir(dir.path()), &data).await;
    let mut in_memory = StaticOptions::dir(dir.path());
    in_memory.memory_file_max = 1 << 20;
    check_ranges(in_memory, &data).await;
}

#[tokio::test]
async fn streams_large_files_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let data = noise(3 * 1024 * 1024 + 17, 4);
    write(dir.path(), "big.bin", &data);
    let svc = service(StaticOptions::dir(dir.path()));
    let g = get(&svc, "/big.bin").await;
    assert_eq!(g.status, StatusCode::OK);
    assert!(g.body == data, "body differs");
    assert!(g.frames > 5, "expected a streamed body, got {} frames", g.frames);
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out).unwrap();
    out
}

fn unbrotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(data, 4096).read_to_end(&mut out).unwrap();
    out
}

#[tokio::test]
async fn precompressed_siblings_by_accept_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let js = text(10_000);
    write(r, "app.js", &js);
    write(r, "app.js.gz", gz(js.as_bytes()));
    write(r, "app.js.br", b"BROTLI-SIBLING");
    write(r, "app.js.zst", b"ZSTD-SIBLING");
    let mut opts = StaticOptions::dir(r);
    opts.compress = false;
    let svc = service(opts);

    let id = get(&svc, "/app.js").await;
    assert_eq!(id.header("vary"), Some("Accept-Encoding"));
    assert!(id.header("content-encoding").is_none());
    assert_eq!(&id.body[..], js.as_bytes());
    let id_etag = id.header("etag").unwrap().to_owned();

    let cases: &[(&str, Option<&str>)] = &[
        ("gzip, deflate, br, zstd", Some("br")),
        ("gzip, zstd", Some("zstd")),
        ("gzip", Some("gzip")),
        ("br;q=0.5, gzip;q=0.9", Some("gzip")),
        ("br;q=0, gzip;q=0, zstd;q=0", None),
        ("identity", None),
        ("*", Some("br")),
        ("*;q=0.1, identity;q=1", None),
        ("deflate", None),
    ];
    let mut etags = vec![id_etag.clone()];
    for (ae, want) in cases {
        let g = get_with(&svc, "/app.js", &[("accept-encoding", ae)]).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.header("content-encoding"), *want, "accept-encoding: {ae}");
        assert_eq!(g.header("vary"), Some("Accept-Encoding"));
        assert_eq!(g.header("content-type"), Some("text/javascript; charset=utf-8"));
        match *want {
            Some("br") => assert_eq!(&g.body[..], b"BROTLI-SIBLING"),
            Some("zstd") => assert_eq!(&g.body[..], b"ZSTD-SIBLING"),
            Some("gzip") => assert_eq!(gunzip(&g.body), js.as_bytes()),
            _ => assert_eq!(&g.body[..], js.as_bytes()),
        }
        let etag = g.header("etag").unwrap().to_owned();
        if want.is_some() {
            assert_ne!(etag, id_etag, "a coded variant needs its own ETag");
            assert!(g.header("accept-ranges").is_none());
        }
        etags.push(etag.clone());
        // 304 for the variant's own ETag, with Vary.
        let nm = get_with(&svc, "/app.js", &[("accept-encoding", ae), ("if-none-match", &etag)]).await;
        assert_eq!(nm.status, StatusCode::NOT_MODIFIED, "{ae}");
        assert_eq!(nm.header("vary"), Some("Accept-Encoding"));
    }
    etags.sort();
    etags.dedup();
    assert_eq!(etags.len(), 4, "identity, br, zstd and gzip ETags differ");

    // A sibling older than the file (a leftover of a previous build) is ignored.
    let old = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(r.join("app.js.br"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let mut opts = StaticOptions::dir(r);
    opts.compress = false;
    let fresh = service(opts);
    let g = get_with(&fresh, "/app.js", &[("accept-encoding", "br")]).await;
    assert!(g.header("content-encoding").is_none(), "stale .br must not be served");
}

#[tokio::test]
async fn on_the_fly_compression() {
    let dir = site();
    let svc = service(StaticOptions::dir(dir.path()));
    let js = std::fs::read(dir.path().join("app.js")).unwrap();

    let br = get_with(&svc, "/app.js", &[("accept-encoding", "gzip, br, zstd")]).await;
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert_eq!(br.header("vary"), Some("Accept-Encoding"));
    assert!(br.body.len() < js.len() / 3);
    assert_eq!(unbrotli(&br.body), js);

    let zs = get_with(&svc, "/app.js", &[("accept-encoding", "zstd")]).await;
    assert_eq!(zs.header("content-encoding"), Some("zstd"));
    assert_eq!(zstd::decode_all(&zs.body[..]).unwrap(), js);

    let gzr = get_with(&svc, "/app.js", &[("accept-encoding", "gzip")]).await;
    assert_eq!(gzr.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&gzr.body), js);

    // Cached: same bytes and ETag again; HEAD knows the coded length.
    let again = get_with(&svc, "/app.js", &[("accept-encoding", "br")]).await;
    assert_eq!(again.body, br.body);
    assert_eq!(again.header("etag"), br.header("etag"));
    let head = req(&svc, Method::HEAD, "/app.js", &[("accept-encoding", "br")]).await;
    assert_eq!(head.header("content-length"), Some(br.body.len().to_string().as_str()));
    assert_eq!(head.header("content-encoding"), Some("br"));

    // A Range request gets identity bytes.
    let r = get_with(&svc, "/app.js", &[("accept-encoding", "br"), ("range", "bytes=0-9")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(r.header("content-encoding").is_none());
    assert_eq!(&r.body[..], &js[..10]);

    // Too small, or not a compressible type: identity and no Vary.
    for path in ["/style.css", "/img.png"] {
        let g = get_with(&svc, path, &[("accept-encoding", "br, gzip")]).await;
        assert!(g.header("content-encoding").is_none(), "{path}");
        assert!(g.header("vary").is_none(), "{path}");
    }

    // Compression off: identity, no Vary.
    let mut opts = StaticOptions::dir(dir.path());
    opts.compress = false;
    let off = service(opts);
    let g = get_with(&off, "/app.js", &[("accept-encoding", "br")]).await;
    assert!(g.header("content-encoding").is_none());
    assert!(g.header("vary").is_none());
}

#[tokio::test]
async fn cache_control_by_pattern() {
    let dir = site();
    let svc = service(StaticOptions::dir(dir.path()));
    let immutable = Some("public, max-age=31536000, immutable");
    assert_eq!(
        get(&svc, "/assets/index-BxK3f9aQ.js").await.header("cache-control"),
        immutable
    );
    assert_eq!(get(&svc, "/app.3f9a1c2b.js").await.header("cache-control"), immutable);
    assert_eq!(get(&svc, "/app.js").await.header("cache-control"), Some("no-cache"));
    assert_eq!(
        get(&svc, "/favicon.ico").await.header("cache-control"),
        Some("no-cache")
    );
    assert_eq!(get(&svc, "/index.html").await.header("cache-control"), Some("no-cache"));
    assert_eq!(get(&svc, "/docs/").await.header("cache-control"), Some("no-cache"));

    let mut opts = StaticOptions::dir(dir.path());
    opts.immutable = ImmutableRule::globs(["*.ico"]).unwrap();
    opts.cache_control = "public, max-age=600".into();
    let svc = service(opts);
    assert_eq!(get(&svc, "/favicon.ico").await.header("cache-control"), immutable);
    assert_eq!(
        get(&svc, "/assets/index-BxK3f9aQ.js").await.header("cache-control"),
        Some("public, max-age=600")
    );
    assert_eq!(get(&svc, "/index.html").await.header("cache-control"), Some("no-cache"));

    let mut opts = StaticOptions::dir(dir.path());
    opts.immutable = ImmutableRule::Never;
    let svc = service(opts);
    assert_eq!(
        get(&svc, "/assets/index-BxK3f9aQ.js").await.header("cache-control"),
        Some("no-cache")
    );
}

#[tokio::test]
async fn spa_fallback_and_not_found() {
    let dir = site();
    write(dir.path(), "404.html", "<h1>custom not found</h1>");
    let mut opts = StaticOptions::dir(dir.path());
    opts.spa = true;
    let spa = service(opts);
    let index = std::fs::read(dir.path().join("index.html")).unwrap();

    for route in ["/users/42", "/settings", "/a/b/c/", "/empty/"] {
        let g = get(&spa, route).await;
        assert_eq!(g.status, StatusCode::OK, "{route}");
        assert_eq!(&g.body[..], &index[..], "{route}");
        assert_eq!(g.header("cache-control"), Some("no-cache"));
        assert_eq!(g.header("content-type"), Some("text/html; charset=utf-8"));
    }
    for asset in [
        "/assets/missing-ABCD1234.js",
        "/missing.png",
        "/users/john.doe",
        "/robots.txt",
    ] {
        let g = get(&spa, asset).await;
        assert_eq!(g.status, StatusCode::NOT_FOUND, "{asset}");
        assert_ne!(&g.body[..], &index[..]);
    }
    // Existing files are still served as themselves.
    assert_eq!(get(&spa, "/style.css").await.body, "body{margin:0}");

    // Without SPA: 404; with a custom page: its body, status 404.
    let plain = service(StaticOptions::dir(dir.path()));
    assert_eq!(get(&plain, "/users/42").await.status, StatusCode::NOT_FOUND);
    let mut opts = StaticOptions::dir(dir.path());
    opts.not_found_page = Some("404.html".into());
    let custom = service(opts);
    let g = get(&custom, "/nope.js").await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);
    assert_eq!(g.body, "<h1>custom not found</h1>");
    assert_eq!(g.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(g.header("cache-control"), Some("no-cache"));
    let g = req(&custom, Method::HEAD, "/nope.js", &[]).await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);
    assert!(g.body.is_empty());
}

#[tokio::test]
async fn directories_index_redirect_and_listing() {
    let dir = site();
    write(dir.path(), "files/<img src=x onerror=\"alert(1)\">.txt", "x");
    write(dir.path(), "files/a b.txt", "y");
    write(dir.path(), "files/.secret", "z");
    let svc = service(StaticOptions::dir(dir.path()));

    let r = get(&svc, "/docs").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.header("location"), Some("docs/"));
    let r = get(&svc, "/docs?x=1").await;
    assert_eq!(r.header("location"), Some("docs/?x=1"));
    let r = get(&svc, "/docs/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "<h1>docs</h1>");
    assert_eq!(get(&svc, "/files/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&svc, "/docs/index.html/").await.status, StatusCode::NOT_FOUND);

    let mut opts = StaticOptions::dir(dir.path());
    opts.listing = true;
    let svc = service(opts);
    let r = get(&svc, "/files/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let html = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(!html.contains("<img"), "{html}");
    assert!(
        html.contains("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.txt"),
        "{html}"
    );
    assert!(html.contains("href=\"./a%20b.txt\""));
    assert!(!html.contains(".secret"));
    // An index file still wins over the listing.
    assert_eq!(get(&svc, "/docs/").await.body, "<h1>docs</h1>");
}

#[tokio::test]
async fn dotfiles_policy() {
    let dir = site();
    write(dir.path(), ".env", "SECRET=1");
    write(dir.path(), ".well-known/security.txt", "Contact: x");
    let deny = service(StaticOptions::dir(dir.path()));
    assert_eq!(get(&deny, "/.env").await.status, StatusCode::FORBIDDEN);
    assert_eq!(get(&deny, "/.well-known/security.txt").await.status, StatusCode::OK);
    let mut opts = StaticOptions::dir(dir.path());
    opts.dotfiles = DotfilesPolicy::Hide;
    assert_eq!(get(&service(opts), "/.env").await.status, StatusCode::NOT_FOUND);
    let mut opts = StaticOptions::dir(dir.path());
    opts.dotfiles = DotfilesPolicy::Allow;
    assert_eq!(get(&service(opts), "/.env").await.body, "SECRET=1");
}

#[tokio::test]
async fn changed_files_are_seen_after_revalidation() {
    let dir = site();
    let mut opts = StaticOptions::dir(dir.path());
    opts.revalidate_after = Duration::ZERO;
    let svc = service(opts);
    let a = get(&svc, "/style.css").await;
    write(dir.path(), "style.css", "body{margin:1px;padding:0}");
    let b = get(&svc, "/style.css").await;
    assert_eq!(b.body, "body{margin:1px;padding:0}");
    assert_ne!(a.header("etag"), b.header("etag"));
    std::fs::remove_file(dir.path().join("style.css")).unwrap();
    assert_eq!(get(&svc, "/style.css").await.status, StatusCode::NOT_FOUND);
    write(dir.path(), "style.css", "back");
    assert_eq!(get(&svc, "/style.css").await.body, "back");

    // A large (streamed) file replaced between requests is served whole and new.
    let big1 = noise(600_000, 5);
    let big2 = noise(700_000, 6);
    write(dir.path(), "big.bin", &big1);
    assert!(get(&svc, "/big.bin").await.body == big1);
    write(dir.path(), "big.bin", &big2);
    assert!(get(&svc, "/big.bin").await.body == big2);
}

#[tokio::test]
async fn options_are_validated() {
    let dir = site();
    let mut opts = StaticOptions::dir(dir.path());
    opts.index = vec!["../x".into()];
    assert!(gatehouse_files::StaticService::new(opts).is_err());
    let mut opts = StaticOptions::dir(dir.path());
    opts.not_found_page = Some("/etc/passwd".into());
    assert!(gatehouse_files::StaticService::new(opts).is_err());
    assert!(gatehouse_files::StaticService::new(StaticOptions::dir(dir.path().join("missing"))).is_err());
    assert!(gatehouse_files::StaticService::new(StaticOptions::dir(dir.path().join("index.html"))).is_err());
}
