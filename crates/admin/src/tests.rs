//! Handler tests without sockets: requests go through the whole router
//! (auth, routing, extractors, handlers) with `tower::ServiceExt::oneshot`.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use bytes::Bytes;
use gatehouse_files::{DeployOptions, ReleaseStore};
use gatehouse_testkit::data::{noise, tar_gz};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::releases::{ReleaseJson, ReleaseList};

const TOKEN: &str = "test-token-0123456789abcdef0123456789";
/// Compressed upload limit of the test slots.
const MAX_UPLOAD: u64 = 64 * 1024;
/// Unpacked size limit of the test slots.
const MAX_SIZE: u64 = 256 * 1024;

struct Api {
    router: Router,
    store: ReleaseStore,
    _dir: tempfile::TempDir,
}

fn slot_opts(spa: bool) -> DeployOptions {
    DeployOptions {
        require_index: spa,
        max_total_bytes: MAX_SIZE,
        max_archive_bytes: MAX_UPLOAD,
        max_files: 100,
        keep: 5,
        activate: true,
        fsync: false,
    }
}

fn api_with(token: Option<&str>, idle: Duration) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(dir.path()).unwrap();
    let slots = HashMap::from([
        ("frontend".to_owned(), slot_opts(true)),
        ("assets".to_owned(), slot_opts(false)),
    ]);
    let state = AdminState::new(store.clone(), slots, token.map(str::to_owned))
        .with_upload_timeouts(idle, Duration::from_secs(30));
    Api {
        router: router(state),
        store,
        _dir: dir,
    }
}

fn api() -> Api {
    api_with(Some(TOKEN), Duration::from_secs(30))
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an error reply: status, code, and that the body is exactly
    /// `{"error", "code"}`.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", String::from_utf8_lossy(&self.body));
        let v: serde_json::Value = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
        assert_eq!(self.headers[header::CONTENT_TYPE], "application/json");
    }
}

impl Api {
    async fn send(&self, req: Request<Body>) -> Reply {
        let resp = tokio::time::timeout(Duration::from_secs(20), self.router.clone().oneshot(req))
            .await
            .expect("request timed out")
            .unwrap();
        let (parts, body) = resp.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn call(&self, method: Method, uri: &str, body: impl Into<Body>) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(body.into())
            .unwrap();
        self.send(req).await
    }

    async fn put(&self, slot: &str, archive: Vec<u8>) -> Reply {
        self.call(Method::PUT, &format!("/releases/{slot}"), archive).await
    }

    async fn rollback(&self, uri: &str, body: &str) -> Reply {
        self.call(Method::POST, uri, body.to_owned()).await
    }

    async fn list(&self, slot: &str) -> ReleaseList {
        let r = self
            .call(Method::GET, &format!("/releases/{slot}"), Body::empty())
            .await;
        assert_eq!(r.status, 200);
        r.json()
    }

    /// The active release on disk, and that no deploy left anything behind.
    fn active_and_clean(&self, slot: &str) -> Option<String> {
        let dir = self.store.dir().join(slot);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().into_string().unwrap();
                assert!(!name.starts_with(".staging-"), "leftover {name} in {}", dir.display());
            }
        }
        self.store.active(slot).unwrap()
    }
}

/// A `.tar.gz` of `files` (path, contents).
fn site(marker: &str) -> Vec<u8> {
    let index = format!("<h1>{marker}</h1>");
    let js = format!("console.log('{marker}')");
    tar_gz(&[
        ("index.html", index.as_bytes()),
        ("assets/app-BxK3f9aQ.js", js.as_bytes()),
    ])
}

/// A request body fed chunk by chunk from the test; no length is announced.
fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    (tx, Body::from_stream(stream))
}

#[tokio::test]
async fn healthz_answers_without_a_token() {
    let api = api();
    let r = api.send(Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
}

#[tokio::test]
async fn everything_else_needs_the_bearer_token() {
    let api = api();
    let bare = |method: Method, uri: &str| Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
    // No header, on every endpoint, on unknown paths and methods too.
    for (method, uri) in [
        (Method::GET, "/releases/frontend"),
        (Method::PUT, "/releases/frontend"),
        (Method::POST, "/releases/frontend/rollback"),
        (Method::GET, "/releases/nope"),
        (Method::GET, "/nope"),
        (Method::DELETE, "/releases/frontend"),
        (Method::GET, "/healthz/"),
        (Method::GET, "/%68ealthz"),
    ] {
        let r = api.send(bare(method.clone(), uri)).await;
        r.assert_error(401, "unauthorized");
        assert_eq!(
            r.headers[header::WWW_AUTHENTICATE],
            "Bearer realm=\"gatehouse admin\"",
            "{method} {uri}"
        );
        assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    }
    let with = |value: &str| {
        Request::get("/releases/frontend")
            .header(header::AUTHORIZATION, value)
            .body(Body::empty())
            .unwrap()
    };
    // A wrong token, a prefix of the right one, the right one plus a byte.
    for wrong in [
        "Bearer wrong".to_owned(),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        format!("Bearer {TOKEN}x"),
    ] {
        let r = api.send(with(&wrong)).await;
        r.assert_error(401, "invalid_token");
        assert_eq!(
            r.headers[header::WWW_AUTHENTICATE],
            "Bearer realm=\"gatehouse admin\", error=\"invalid_token\""
        );
        assert!(!String::from_utf8_lossy(&r.body).contains(TOKEN));
    }
    // Other schemes and malformed values count as no token.
    for value in [format!("Basic {TOKEN}"), format!("Bearer{TOKEN}"), "Bearer ".to_owned()] {
        api.send(with(&value)).await.assert_error(401, "unauthorized");
    }
    // Two Authorization headers are ambiguous, even if one is right.
    let two = Request::get("/releases/frontend")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::AUTHORIZATION, "Bearer wrong")
        .body(Body::empty())
        .unwrap();
    api.send(two).await.assert_error(401, "unauthorized");
    // The right one; the scheme is case-insensitive.
    assert_eq!(api.send(with(&format!("Bearer {TOKEN}"))).await.status, 200);
    assert_eq!(api.send(with(&format!("bearer {TOKEN}"))).await.status, 200);
}

#[tokio::test]
async fn without_a_token_the_endpoints_are_open() {
    let api = api_with(None, Duration::from_secs(30));
    let r = api
        .send(Request::put("/releases/frontend").body(Body::from(site("v1"))).unwrap())
        .await;
    assert_eq!(r.status, 201);
    let r = api
        .send(Request::get("/releases/frontend").body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn the_token_stays_out_of_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let state = AdminState::new(
        ReleaseStore::open(dir.path()).unwrap(),
        HashMap::new(),
        Some(TOKEN.to_owned()),
    );
    let shown = format!("{state:?}");
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(shown.contains("***"), "{shown}");
}

#[tokio::test]
async fn upload_list_and_rollback() {
    let api = api();
    assert_eq!(
        api.list("frontend").await,
        ReleaseList {
            slot: "frontend".into(),
            active: None,
            releases: vec![]
        }
    );

    let r = api.put("frontend", site("v1")).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    let v1: ReleaseJson = r.json();
    assert_eq!((v1.slot.as_str(), v1.files, v1.active), ("frontend", 2, true));
    assert_eq!(v1.size_bytes, ("<h1>v1</h1>".len() + "console.log('v1')".len()) as u64);
    // RFC 3339, UTC, seconds.
    assert_eq!(v1.created.len(), "2026-11-21T12:05:01Z".len(), "{}", v1.created);
    assert!(
        v1.created.ends_with('Z') && v1.created.as_bytes()[10] == b'T',
        "{}",
        v1.created
    );
    assert!(v1.id.starts_with(&v1.created[..4]), "{} vs {}", v1.id, v1.created);
    assert_eq!(api.active_and_clean("frontend"), Some(v1.id.clone()));

    let v2: ReleaseJson = api.put("frontend", site("v2")).await.json();
    assert!(v2.id > v1.id);
    let list = api.list("frontend").await;
    assert_eq!(list.active.as_deref(), Some(v2.id.as_str()));
    let ids: Vec<(&str, bool)> = list.releases.iter().map(|r| (r.id.as_str(), r.active)).collect();
    assert_eq!(ids, [(v2.id.as_str(), true), (v1.id.as_str(), false)]);
    let served = std::fs::read_to_string(api.store.dir().join("frontend").join(&v2.id).join("index.html")).unwrap();
    assert_eq!(served, "<h1>v2</h1>");

    // Back one release, then nothing older is left.
    let r = api
        .call(Method::POST, "/releases/frontend/rollback", Body::empty())
        .await;
    assert_eq!(r.status, 200);
    let back: ReleaseJson = r.json();
    assert_eq!((back.id.as_str(), back.active), (v1.id.as_str(), true));
    assert_eq!(api.active_and_clean("frontend"), Some(v1.id.clone()));
    api.call(Method::POST, "/releases/frontend/rollback", Body::empty())
        .await
        .assert_error(409, "no_previous_release");

    // To a given id: in the query string, or in a JSON body.
    let r = api
        .call(
            Method::POST,
            &format!("/releases/frontend/rollback?id={}", v2.id),
            Body::empty(),
        )
        .await;
    assert_eq!(r.json::<ReleaseJson>().id, v2.id);
    let body = format!("{{\"id\": \"{}\"}}", v1.id);
    let r = api.call(Method::POST, "/releases/frontend/rollback", body).await;
    assert_eq!(r.json::<ReleaseJson>().id, v1.id);
    // Both, agreeing.
    let r = api
        .call(
            Method::POST,
            &format!("/releases/frontend/rollback?id={}", v2.id),
            format!("{{\"id\": \"{}\"}}", v2.id),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(api.active_and_clean("frontend"), Some(v2.id.clone()));
}

#[tokio::test]
async fn rollback_errors() {
    let api = api();
    api.rollback("/releases/frontend/rollback", "")
        .await
        .assert_error(409, "no_active_release");
    let v1: ReleaseJson = api.put("frontend", site("v1")).await.json();
    let _v2: ReleaseJson = api.put("frontend", site("v2")).await.json();
    api.rollback("/releases/frontend/rollback?id=20000101T000000Z-0000", "")
        .await
        .assert_error(404, "unknown_release");
    // Every id of this run shares its prefix up to the minute.
    api.rollback(&format!("/releases/frontend/rollback?id={}", &v1.id[..8]), "")
        .await
        .assert_error(409, "ambiguous_release");
    api.rollback("/releases/frontend/rollback", "{\"id\": 5}")
        .await
        .assert_error(400, "bad_request");
    api.rollback("/releases/frontend/rollback", "{\"release\": \"x\"}")
        .await
        .assert_error(400, "bad_request");
    api.rollback("/releases/frontend/rollback?id=", "")
        .await
        .assert_error(400, "bad_request");
    api.rollback(
        &format!("/releases/frontend/rollback?id={}", v1.id),
        "{\"id\": \"20000101T000000Z-0000\"}",
    )
    .await
    .assert_error(400, "bad_request");
    // A buffered body is small.
    let big = format!("{{\"id\": \"{}\"}}", "x".repeat(SMALL_BODY_LIMIT));
    api.rollback("/releases/frontend/rollback", &big)
        .await
        .assert_error(413, "too_large");
    api.rollback("/releases/nope/rollback", "")
        .await
        .assert_error(404, "unknown_slot");
}

#[tokio::test]
async fn unknown_slots_routes_and_methods() {
    let api = api();
    for (method, uri) in [
        (Method::GET, "/releases/nope"),
        (Method::PUT, "/releases/nope"),
        (Method::POST, "/releases/nope/rollback"),
        (Method::GET, "/releases/..%2f..%2fetc"),
        (Method::GET, "/releases/%ff"),
    ] {
        let r = api.call(method, uri, site("x")).await;
        r.assert_error(404, "unknown_slot");
        let v: serde_json::Value = r.json();
        assert!(v["error"].as_str().unwrap().contains("\"assets\", \"frontend\""), "{v}");
    }
    assert!(!api.store.dir().join("nope").exists());
    api.call(Method::GET, "/nope", Body::empty())
        .await
        .assert_error(404, "not_found");
    api.call(Method::GET, "/releases", Body::empty())
        .await
        .assert_error(404, "not_found");
    let r = api.call(Method::DELETE, "/releases/frontend", Body::empty()).await;
    r.assert_error(405, "method_not_allowed");
    let allow = r.headers[header::ALLOW].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("PUT"), "{allow}");
    api.call(Method::GET, "/releases/frontend/rollback", Body::empty())
        .await
        .assert_error(405, "method_not_allowed");
}

#[tokio::test]
async fn refused_uploads_leave_the_slot_unchanged() {
    let api = api();
    let v1: ReleaseJson = api.put("frontend", site("v1")).await.json();
    let unchanged = |api: &Api| {
        assert_eq!(api.active_and_clean("frontend"), Some(v1.id.clone()));
    };

    // Not gzip at all.
    api.put("frontend", b"this is not a tarball".to_vec())
        .await
        .assert_error(400, "bad_archive");
    unchanged(&api);
    // A truncated archive.
    let mut cut = site("v2");
    cut.truncate(cut.len() / 2);
    api.put("frontend", cut).await.assert_error(400, "bad_archive");
    unchanged(&api);
    // Path traversal inside the archive.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../evil\0\0");
    h.set_cksum();
    tar.append(&h, &b"x"[..]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    let r = api.put("frontend", gz.finish().unwrap()).await;
    r.assert_error(400, "bad_archive");
    unchanged(&api);
    assert!(!api.store.dir().join("evil").exists());
    // An SPA slot needs index.html; another slot does not.
    let no_index = tar_gz(&[("app.js", b"1")]);
    api.put("frontend", no_index.clone())
        .await
        .assert_error(400, "missing_index");
    unchanged(&api);
    assert_eq!(api.put("assets", no_index).await.status, 201);
    // An empty archive.
    api.put("frontend", tar_gz(&[]))
        .await
        .assert_error(400, "empty_release");
    unchanged(&api);
    // Unpacks to more than max_size (zeros compress well below max_upload).
    let zeros = vec![0u8; MAX_SIZE as usize + 1];
    let bomb = tar_gz(&[("index.html", b"x"), ("big.bin", &zeros)]);
    assert!((bomb.len() as u64) < MAX_UPLOAD);
    api.put("frontend", bomb).await.assert_error(413, "too_large");
    unchanged(&api);
    // Larger than max_upload, announced by Content-Length.
    let noisy = tar_gz(&[("index.html", b"x"), ("noise.bin", &noise(MAX_UPLOAD as usize * 2))]);
    api.put("frontend", noisy.clone()).await.assert_error(413, "too_large");
    unchanged(&api);
    // Larger than max_upload, streamed without a length.
    let (tx, body) = channel_body();
    let feed = tokio::spawn(async move {
        for chunk in noisy.chunks(8192) {
            if tx.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                break; // the server stopped reading
            }
        }
    });
    api.call(Method::PUT, "/releases/frontend", body)
        .await
        .assert_error(413, "too_large");
    feed.await.unwrap();
    unchanged(&api);
}

#[tokio::test]
async fn oversized_upload_is_refused_before_reading() {
    let api = api();
    // The body never yields: reading it would hang until the test times out.
    let (_tx, body) = channel_body();
    let req = Request::put("/releases/frontend")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_LENGTH, MAX_UPLOAD + 1)
        .body(body)
        .unwrap();
    api.send(req).await.assert_error(413, "too_large");
    assert_eq!(api.active_and_clean("frontend"), None);
}

#[tokio::test]
async fn stalled_upload_times_out() {
    let api = api_with(Some(TOKEN), Duration::from_millis(200));
    let v1: ReleaseJson = api.put("frontend", site("v1")).await.json();
    let (tx, body) = channel_body();
    let archive = site("v2");
    tx.send(Bytes::copy_from_slice(&archive[..20])).await.unwrap();
    let started = std::time::Instant::now();
    api.call(Method::PUT, "/releases/frontend", body)
        .await
        .assert_error(408, "upload_timeout");
    assert!(started.elapsed() >= Duration::from_millis(200));
    drop(tx);
    assert_eq!(api.active_and_clean("frontend"), Some(v1.id));
}

#[tokio::test]
async fn one_upload_per_slot_at_a_time() {
    let api = api();
    let (tx, body) = channel_body();
    let first = {
        let router = api.router.clone();
        let req = Request::put("/releases/frontend")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(body)
            .unwrap();
        tokio::spawn(async move { router.oneshot(req).await.unwrap().status() })
    };
    // Once the store reads the first chunk, the first upload holds the slot.
    let archive = site("v1");
    tx.send(Bytes::copy_from_slice(&archive[..10])).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tx.capacity() < tx.max_capacity() {
        assert!(std::time::Instant::now() < deadline, "the first upload is not read");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    api.put("frontend", site("v2"))
        .await
        .assert_error(409, "deploy_in_progress");
    // Another slot is independent.
    assert_eq!(api.put("assets", site("a")).await.status, 201);
    tx.send(Bytes::copy_from_slice(&archive[10..])).await.unwrap();
    drop(tx);
    assert_eq!(first.await.unwrap(), StatusCode::CREATED);
    assert_eq!(api.put("frontend", site("v3")).await.status, 201);
}

#[test]
fn test_archives_are_what_they_claim() {
    // The helper must produce what the store accepts, or the tests above
    // would pass for the wrong reason.
    let dir = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(dir.path()).unwrap();
    let info = store.deploy_tar_gz("s", &site("v")[..], &slot_opts(true)).unwrap();
    assert_eq!(info.files, 2);
    let root: &Path = &store.dir().join("s").join(&info.id);
    assert!(root.join("assets/app-BxK3f9aQ.js").is_file());
}

#[tokio::test]
async fn reload_relays_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(dir.path()).unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = calls.clone();
    let source = ReloadSource::new(move || {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            match n {
                0 => Err(ReloadError::InvalidConfig("gh.toml:3:11: server.workers: bad".into())),
                1 => Err(ReloadError::NotApplied("cannot listen on 127.0.0.1:80".into())),
                _ => Ok(ReloadReport {
                    generation: 2,
                    added: vec!["127.0.0.1:8081".into()],
                    removed: vec![],
                    warnings: vec!["log changed; restart to apply it".into()],
                }),
            }
        }
    });
    let state = AdminState::new(store.clone(), HashMap::new(), Some(TOKEN.to_owned())).with_reload(source);
    let api = Api {
        router: router(state),
        store,
        _dir: dir,
    };
    let r = api.call(Method::POST, "/reload", Body::empty()).await;
    r.assert_error(422, "invalid_config");
    let v: serde_json::Value = r.json();
    assert!(
        v["error"].as_str().unwrap().contains("gh.toml:3:11: server.workers"),
        "{v}"
    );
    api.call(Method::POST, "/reload", Body::empty())
        .await
        .assert_error(409, "not_applied");
    let r = api.call(Method::POST, "/reload", Body::empty()).await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = r.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["generation"], 2);
    assert_eq!(v["added"][0], "127.0.0.1:8081");
    assert_eq!(v["warnings"][0], "log changed; restart to apply it");
    api.call(Method::GET, "/reload", Body::empty())
        .await
        .assert_error(405, "method_not_allowed");
    // Without the token nothing runs.
    let req = Request::post("/reload").body(Body::empty()).unwrap();
    assert_eq!(api.send(req).await.status, 401);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);

    // A server without a reload source has no such endpoint.
    api_with(Some(TOKEN), Duration::from_secs(30))
        .call(Method::POST, "/reload", Body::empty())
        .await
        .assert_error(404, "not_found");
}
