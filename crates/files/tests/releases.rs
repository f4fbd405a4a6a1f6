//! Releases: deploy, list, rollback, prune, archive validation, and switching
//! under concurrent load, on real directories.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

#[path = "support/helpers.rs"]
mod helpers;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gatehouse_files::{DeployOptions, FilesError, Rejection, ReleaseStore, StaticOptions};
use helpers::*;
use http::StatusCode;
use http_body_util::BodyExt;

/// Which rejection a case expects.
type IsRejection = fn(&Rejection) -> bool;

fn opts() -> DeployOptions {
    DeployOptions {
        require_index: true,
        fsync: false,
        ..DeployOptions::default()
    }
}

/// A build whose every file carries `marker`; the asset is large enough to be
/// streamed from disk in several chunks.
fn build(marker: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "index.html",
        format!("<html><!-- release {marker} --></html>"),
    );
    write(dir.path(), "assets/app.js", marker.repeat(400_000 / marker.len()));
    write(dir.path(), "assets/small.css", format!("/* {marker} */"));
    dir
}

/// Entries of a slot directory other than release ids and the pointer.
fn leftovers(data: &Path, slot: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(data.join("releases").join(slot)) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n != "current" && !(n.len() == 21 && n.as_bytes()[8] == b'T'))
        .collect()
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(enc);
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "./", &[][..]).unwrap();
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, format!("./{name}"), *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// An archive with one hand-made entry whose name bypasses tar's own checks.
fn evil_tar_gz(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(enc);
    let mut ok = tar::Header::new_gnu();
    ok.set_size(5);
    ok.set_mode(0o644);
    b.append_data(&mut ok, "index.html", &b"hello"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    let raw = &mut h.as_old_mut().name;
    raw[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    let data: &[u8] = if kind == tar::EntryType::Regular { b"evil!" } else { b"" };
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

#[test]
fn deploy_list_rollback_prune() {
    let data = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(data.path()).unwrap();
    let a = store.deploy_dir("web", build("AAAA").path(), &opts()).unwrap();
    let b = store.deploy_dir("web", build("BBBB").path(), &opts()).unwrap();
    let c = store.deploy_dir("web", build("CCCC").path(), &opts()).unwrap();
    assert!(a.id < b.id && b.id < c.id, "ids sort by time");
    assert!(a.active && b.active && c.active, "each deploy activates");
    assert_eq!(c.files, 3);

    let list = store.list("web").unwrap();
    assert_eq!(
        list.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [&c.id, &b.id, &a.id]
    );
    assert_eq!(list.iter().filter(|r| r.active).count(), 1);
    assert!(list[0].active);
    assert_eq!(list[0].files, 3);
    assert_eq!(list[0].size_bytes, c.size_bytes);
    assert!(list[0].created >= list[2].created);

    // Previous, then previous again, then none older.
    assert_eq!(store.rollback("web", None).unwrap().id, b.id);
    assert_eq!(store.rollback("web", None).unwrap().id, a.id);
    assert!(matches!(
        store.rollback("web", None),
        Err(FilesError::NoPreviousRelease { .. })
    ));
    // By id, or unique prefix.
    assert_eq!(store.rollback("web", Some(&c.id)).unwrap().id, c.id);
    assert_eq!(store.rollback("web", Some(&b.id[..19])).unwrap().id, b.id);
    assert_eq!(store.active("web").unwrap().as_deref(), Some(b.id.as_str()));
    let unknown = store.rollback("web", Some("19990101T000000Z-0000")).unwrap_err();
    assert!(matches!(unknown, FilesError::UnknownRelease { .. }));
    assert_eq!(unknown.http_status(), StatusCode::NOT_FOUND);
    assert!(matches!(
        store.rollback("../etc", None),
        Err(FilesError::InvalidSlot(_))
    ));

    // Prune to 1 keeps the newest and the active one.
    let removed = store.prune("web", 1).unwrap();
    assert_eq!(removed, vec![a.id.clone()]);
    let ids: Vec<String> = store.list("web").unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![c.id.clone(), b.id.clone()]);

    // keep = 2 on deploy: the new one and the one before remain.
    let mut o = opts();
    o.keep = 2;
    let d = store.deploy_dir("web", build("DDDD").path(), &o).unwrap();
    let ids: Vec<String> = store.list("web").unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![d.id.clone(), c.id.clone()]);
    assert!(leftovers(data.path(), "web").is_empty());

    // Stored but not activated.
    let mut o = opts();
    o.activate = false;
    let e = store.deploy_dir("web", build("EEEE").path(), &o).unwrap();
    assert!(!e.active);
    assert_eq!(store.active("web").unwrap().as_deref(), Some(d.id.as_str()));
    assert_eq!(store.slots().unwrap(), vec!["web".to_owned()]);
}

#[test]
fn invalid_directories_leave_nothing_behind() {
    let data = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(data.path()).unwrap();
    let good = store.deploy_dir("web", build("GOOD").path(), &opts()).unwrap();

    let no_index = tempfile::tempdir().unwrap();
    write(no_index.path(), "app.js", "x");
    let with_link = build("LINK");
    std::os::unix::fs::symlink("/etc/passwd", with_link.path().join("passwd")).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let big = build("BIG!");

    let small_limit = DeployOptions {
        max_total_bytes: 1000,
        ..opts()
    };
    let few_files = DeployOptions { max_files: 2, ..opts() };
    let default = opts();
    let cases: Vec<(&Path, &DeployOptions, IsRejection)> = vec![
        (no_index.path(), &default, |r| matches!(r, Rejection::MissingIndex)),
        (with_link.path(), &default, |r| {
            matches!(r, Rejection::SpecialFile { .. })
        }),
        (empty.path(), &default, |r| matches!(r, Rejection::Empty)),
        (big.path(), &small_limit, |r| matches!(r, Rejection::TooLarge { .. })),
        (big.path(), &few_files, |r| matches!(r, Rejection::TooManyFiles { .. })),
    ];
    for (src, o, want) in cases {
        match store.deploy_dir("web", src, o) {
            Err(FilesError::Rejected(r)) => assert!(want(&r), "{src:?}: {r}"),
            other => panic!("{src:?}: {other:?}"),
        }
        assert_eq!(store.active("web").unwrap().as_deref(), Some(good.id.as_str()));
        assert_eq!(store.list("web").unwrap().len(), 1);
        assert!(
            leftovers(data.path(), "web").is_empty(),
            "{:?}",
            leftovers(data.path(), "web")
        );
    }
    // A non-SPA slot does not need index.html.
    let o = DeployOptions {
        require_index: false,
        ..opts()
    };
    assert!(store.deploy_dir("assets", no_index.path(), &o).is_ok());
}

#[test]
fn tar_gz_deploy_and_rejections() {
    let data = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(data.path()).unwrap();
    let ok = tar_gz(&[
        ("index.html", b"<p>v1</p>"),
        ("assets/app-BxK3f9aQ.js", b"console.log(1)"),
    ]);
    let first = store.deploy_tar_gz("web", &ok[..], &opts()).unwrap();
    assert_eq!(first.files, 2);
    let root = data.path().join("releases/web").join(&first.id);
    assert_eq!(
        std::fs::read_to_string(root.join("assets/app-BxK3f9aQ.js")).unwrap(),
        "console.log(1)"
    );

    let mut truncated = tar_gz(&[("index.html", &[b'x'; 10_000][..])]);
    truncated.truncate(truncated.len() - 12);
    let mut corrupt = ok.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    let huge = vec![b'z'; 300_000];
    let many: Vec<(String, Vec<u8>)> = (0..30).map(|i| (format!("f{i}.txt"), b"x".to_vec())).collect();
    let many_refs: Vec<(&str, &[u8])> = many.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    let mut many_files = many_refs.clone();
    many_files.push(("index.html", b"x"));

    let cases: Vec<(&str, Vec<u8>, DeployOptions, IsRejection)> = vec![
        ("garbage", b"this is not gzip at all".to_vec(), opts(), |r| {
            matches!(r, Rejection::Malformed(_))
        }),
        ("truncated", truncated, opts(), |r| matches!(r, Rejection::Malformed(_))),
        ("corrupt", corrupt, opts(), |r| matches!(r, Rejection::Malformed(_))),
        (
            "gzip of non-tar",
            {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&[7u8; 2000]).unwrap();
                e.finish().unwrap()
            },
            opts(),
            |r| matches!(r, Rejection::Malformed(_) | Rejection::Empty),
        ),
        (
            "dotdot",
            evil_tar_gz("../evil.txt", tar::EntryType::Regular, None),
            opts(),
            |r| matches!(r, Rejection::BadPath { .. }),
        ),
        (
            "nested dotdot",
            evil_tar_gz("a/../../evil.txt", tar::EntryType::Regular, None),
            opts(),
            |r| matches!(r, Rejection::BadPath { .. }),
        ),
        (
            "absolute",
            evil_tar_gz("/tmp/evil.txt", tar::EntryType::Regular, None),
            opts(),
            |r| matches!(r, Rejection::BadPath { .. }),
        ),
        (
            "symlink",
            evil_tar_gz("link", tar::EntryType::Symlink, Some("/etc/passwd")),
            opts(),
            |r| matches!(r, Rejection::SpecialFile { .. }),
        ),
        (
            "hardlink",
            evil_tar_gz("hard", tar::EntryType::Link, Some("index.html")),
            opts(),
            |r| matches!(r, Rejection::SpecialFile { .. }),
        ),
        ("fifo", evil_tar_gz("fifo", tar::EntryType::Fifo, None), opts(), |r| {
            matches!(r, Rejection::SpecialFile { .. })
        }),
        (
            "duplicate",
            evil_tar_gz("index.html", tar::EntryType::Regular, None),
            opts(),
            |r| matches!(r, Rejection::Duplicate { .. }),
        ),
        ("no index", tar_gz(&[("app.js", b"x")]), opts(), |r| {
            matches!(r, Rejection::MissingIndex)
        }),
        (
            "too large",
            tar_gz(&[("index.html", &huge)]),
            DeployOptions {
                max_total_bytes: 100_000,
                ..opts()
            },
            |r| matches!(r, Rejection::TooLarge { .. }),
        ),
        (
            "archive too large",
            tar_gz(&[("index.html", &noise(50_000, 3))]),
            DeployOptions {
                max_archive_bytes: 10_000,
                ..opts()
            },
            |r| matches!(r, Rejection::ArchiveTooLarge { .. }),
        ),
        (
            "too many files",
            tar_gz(&many_files),
            DeployOptions {
                max_files: 10,
                ..opts()
            },
            |r| matches!(r, Rejection::TooManyFiles { .. }),
        ),
    ];
    for (name, archive, o, want) in cases {
        let err = store.deploy_tar_gz("web", &archive[..], &o).unwrap_err();
        match &err {
            FilesError::Rejected(r) => assert!(want(r), "{name}: {r}"),
            other => panic!("{name}: {other}"),
        }
        assert!(err.http_status().is_client_error(), "{name}");
        assert_eq!(
            store.active("web").unwrap().as_deref(),
            Some(first.id.as_str()),
            "{name}"
        );
        assert_eq!(store.list("web").unwrap().len(), 1, "{name}");
        assert!(
            leftovers(data.path(), "web").is_empty(),
            "{name}: {:?}",
            leftovers(data.path(), "web")
        );
        assert!(!data.path().join("releases/evil.txt").exists(), "{name}");
        assert!(!data.path().join("evil.txt").exists(), "{name}");
    }
    assert_eq!(
        store
            .deploy_tar_gz(
                "web",
                &tar_gz(&[("index.html", &huge)])[..],
                &DeployOptions {
                    max_total_bytes: 100_000,
                    ..opts()
                }
            )
            .unwrap_err()
            .http_status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[tokio::test]
async fn upload_body_is_streamed_into_a_release() {
    let data = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(data.path()).unwrap();
    let archive = tar_gz(&[("index.html", b"<p>uploaded</p>")]);
    let body = http_body_util::Full::new(Bytes::from(archive));
    let info = store.deploy_tar_gz_body("web", body, opts()).await.unwrap();
    assert!(info.active);
    let svc = service(StaticOptions::release(store.slot("web").unwrap()));
    assert_eq!(get(&svc, "/").await.body, "<p>uploaded</p>");

    let bad = http_body_util::Full::new(Bytes::from_static(b"nope"));
    let err = store.deploy_tar_gz_body("web", bad, opts()).await.unwrap_err();
    assert!(matches!(err, FilesError::Rejected(Rejection::Malformed(_))));
    assert_eq!(store.active("web").unwrap().as_deref(), Some(info.id.as_str()));
}

#[tokio::test]
async fn empty_slot_is_503_until_first_deploy() {
    let data = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open_with_poll(data.path(), Duration::ZERO).unwrap();
    let svc = service(StaticOptions::release(store.slot("web").unwrap()));
    assert_eq!(get(&svc, "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    store.deploy_dir("web", build("FIRST").path(), &opts()).unwrap();
    assert!(String::from_utf8_lossy(&get(&svc, "/").await.body).contains("FIRST"));
}

#[tokio::test]
async fn switch_made_by_another_process_is_seen_within_the_poll_interval() {
    let data = tempfile::tempdir().unwrap();
    let server_store = ReleaseStore::open_with_poll(data.path(), Duration::from_millis(20)).unwrap();
    let cli = ReleaseStore::open(data.path()).unwrap();
    let a = cli.deploy_dir("web", build("AAAA").path(), &opts()).unwrap();
    let svc = service(StaticOptions::release(server_store.slot("web").unwrap()));
    assert!(String::from_utf8_lossy(&get(&svc, "/").await.body).contains("AAAA"));
    // A separate store (as `gatehouse deploy` / `rollback` would open) switches.
    cli.deploy_dir("web", build("BBBB").path(), &opts()).unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(String::from_utf8_lossy(&get(&svc, "/").await.body).contains("BBBB"));
    assert_eq!(svc.active_release().await.as_deref(), store_active(&cli).as_deref());
    cli.rollback("web", Some(&a.id)).unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(String::from_utf8_lossy(&get(&svc, "/").await.body).contains("AAAA"));
}

fn store_active(store: &ReleaseStore) -> Option<String> {
    store.active("web").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_download_survives_switch_and_prune() {
    let data = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(data.path()).unwrap();
    let old = build("OLD1");
    write(old.path(), "video.bin", noise(5 * 1024 * 1024, 11));
    let expected = std::fs::read(old.path().join("video.bin")).unwrap();
    store.deploy_dir("web", old.path(), &opts()).unwrap();
    let svc = service(StaticOptions::release(store.slot("web").unwrap()));

    let resp = svc
        .serve(&http::Method::GET, "/video.bin", &http::HeaderMap::new())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let gatehouse_files::Chunk::Bytes(first) = body.frame().await.unwrap().unwrap().into_data().unwrap() else {
        panic!("a file region without sendfile");
    };
    let mut got = first.to_vec();

    // Switch to a new release and prune the old one while the download runs.
    let mut o = opts();
    o.keep = 1;
    store.deploy_dir("web", build("NEW2").path(), &o).unwrap();
    assert_eq!(store.list("web").unwrap().len(), 1, "old release pruned");
    assert_eq!(get(&svc, "/video.bin").await.status, StatusCode::NOT_FOUND);

    while let Some(frame) = body.frame().await {
        let gatehouse_files::Chunk::Bytes(data) = frame.unwrap().into_data().unwrap() else {
            panic!("a file region without sendfile");
        };
        got.extend_from_slice(&data);
    }
    assert!(got == expected, "download of the old release completed intact");
}

/// Several tasks request index.html and a streamed asset in a loop while the
/// slot is switched 20 times: no errors, and every body is entirely one
/// release's (the marker never mixes within a response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_under_concurrent_load_never_mixes_releases() {
    let data = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(data.path()).unwrap();
    let markers = ["AAAA", "BBBB", "CCCC"];
    let mut ids = Vec::new();
    for m in markers {
        ids.push(store.deploy_dir("web", build(m).path(), &opts()).unwrap().id);
    }
    let mut so = StaticOptions::release(store.slot("web").unwrap());
    so.spa = true;
    let svc = service(so);

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (svc, stop, served) = (svc.clone(), Arc::clone(&stop), Arc::clone(&served));
        tasks.push(tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                let path = match (t + n) % 3 {
                    0 => "/",
                    1 => "/assets/app.js",
                    _ => "/some/client/route",
                };
                let g = get(&svc, path).await;
                assert_eq!(g.status, StatusCode::OK, "{path}");
                let body = String::from_utf8(g.body.to_vec()).unwrap();
                let marker = ["AAAA", "BBBB", "CCCC"]
                    .into_iter()
                    .find(|m| body.contains(m))
                    .expect("a release marker");
                if path == "/assets/app.js" {
                    assert_eq!(body.len(), 400_000);
                    assert!(body.as_bytes().chunks(4).all(|c| c == marker.as_bytes()), "mixed body");
                } else {
                    assert_eq!(body, format!("<html><!-- release {marker} --></html>"));
                }
                seen.insert(marker);
                n += 1;
                served.fetch_add(1, Ordering::Relaxed);
            }
            seen.len()
        }));
    }
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let id = &ids[i % ids.len()];
        let info = store.rollback("web", Some(id)).unwrap();
        assert!(info.active);
        // The switch is visible to this process at once.
        assert_eq!(svc.active_release().await.as_deref(), Some(id.as_str()));
    }
    tokio::time::sleep(Duration::from_millis(15)).await;
    stop.store(true, Ordering::Relaxed);
    let mut max_seen = 0;
    for t in tasks {
        max_seen = max_seen.max(t.await.expect("request task failed"));
    }
    assert!(
        served.load(Ordering::Relaxed) > 100,
        "served {}",
        served.load(Ordering::Relaxed)
    );
    assert!(max_seen >= 2, "tasks saw releases switch");
}
