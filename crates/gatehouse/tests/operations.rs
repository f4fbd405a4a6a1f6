//! Static hosting through the edge, and the operations commands (deploy,
//! releases, rollback, backup, restore, migrate) against a running server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gatehouse_testkit::Gatehouse;
use gatehouse_testkit::client::get;
use gatehouse_testkit::process::{Process, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_site(dir: &Path, marker: &str) {
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("index.html"), format!("<h1>{marker}</h1>")).unwrap();
    std::fs::write(dir.join("assets/app-BxK3f9aQ.js"), format!("console.log('{marker}')")).unwrap();
}

#[tokio::test]
async fn static_directory_route_serves_an_spa() {
    let dir = TempDir::new("gh-static");
    write_site(&dir.0, "dist");
    let gh = Gatehouse::start(&format!(
        "[[site]]\nhosts = [\"app.test\"]\n[[site.route]]\npath = \"/\"\nstatic = {{ dir = \"{}\", spa = true }}\n\
         [[site.route]]\npath = \"/api/\"\nrespond = {{ body = \"api\" }}\n",
        dir.0.display()
    ));
    let h = [("host", "app.test")];
    let r = get(&gh.url("/"), &h).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "<h1>dist</h1>"));
    assert_eq!(r.header("cache-control"), "no-cache");
    assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
    // Client-side routes fall back to index.html; missing assets do not.
    let r = get(&gh.url("/users/42"), &h).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "<h1>dist</h1>"));
    assert_eq!(get(&gh.url("/assets/missing-AAAAAAAA.js"), &h).await.status, 404);
    let r = get(&gh.url("/assets/app-BxK3f9aQ.js"), &h).await;
    assert_eq!(r.header("cache-control"), "public, max-age=31536000, immutable");
    let etag = r.header("etag").to_owned();
    let r = get(
        &gh.url("/assets/app-BxK3f9aQ.js"),
        &[("host", "app.test"), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(r.status, 304);
    let r = get(
        &gh.url("/assets/app-BxK3f9aQ.js"),
        &[("host", "app.test"), ("range", "bytes=0-6")],
    )
    .await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (206, "console"));
    // Traversal is contained by both the edge and the static server.
    assert_eq!(get(&gh.url("/../../etc/passwd"), &h).await.status, 400);
    assert_eq!(get(&gh.url("/%2e%2e/%2e%2e/etc/passwd"), &h).await.status, 400);
    let r = get(&gh.url("/assets/..%2f..%2fetc%2fpasswd"), &h).await;
    assert!(r.status.is_client_error(), "{}", r.status);
    // Longer prefixes still win over the static root.
    assert_eq!(get(&gh.url("/api/x"), &h).await.text(), "api");
    // Every static response is logged.
    gh.wait_for_log_line("/users/42").await;
}

fn wait_for_body(url: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    loop {
        let body = rt.block_on(get(url, &[])).text();
        if body == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} still serves {body:?}, expected {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn deploy_list_and_rollback_switch_a_running_server() {
    let dir = TempDir::new("gh-deploy");
    let (v1, v2) = (dir.0.join("v1"), dir.0.join("v2"));
    write_site(&v1, "v1");
    write_site(&v2, "v2");
    let toml = format!(
        "[server]\nhttp = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\n[log]\naccess_log = \"off\"\n\
         [release.frontend]\nkeep = 2\n\
         [[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nstatic = {{ release = \"frontend\", spa = true }}\n",
        dir.0.join("data").display()
    );
    let cfg = dir.0.join("gatehouse.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let cfg = cfg.display().to_string();

    let (code, out, err) = run(&["deploy", &v1.display().to_string(), "--release", "frontend", "-c", &cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("to frontend: 2 files"), "{out}");
    let gh = Process::serve(Path::new(BIN), &toml);
    let url = format!("http://{}/", gh.addr);
    wait_for_body(&url, "<h1>v1</h1>");

    let (code, _, err) = run(&["deploy", &v2.display().to_string(), "--release", "frontend", "-c", &cfg]);
    assert_eq!(code, 0, "{err}");
    wait_for_body(&url, "<h1>v2</h1>");

    let (code, out, _) = run(&["releases", "frontend", "-c", &cfg]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with('*'), "newest release is active: {out}");

    let (code, out, err) = run(&["rollback", "frontend", "-c", &cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("frontend now serves"), "{out}");
    wait_for_body(&url, "<h1>v1</h1>");

    // A release without index.html is refused for an SPA slot, and nothing changes.
    let empty = dir.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("readme.txt"), "x").unwrap();
    let (code, _, err) = run(&[
        "deploy",
        &empty.display().to_string(),
        "--release",
        "frontend",
        "-c",
        &cfg,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("index.html"), "{err}");
    wait_for_body(&url, "<h1>v1</h1>");
    let (_, out, _) = run(&["releases", "frontend", "-c", &cfg]);
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn backup_and_restore_round_trip() {
    let dir = TempDir::new("gh-backup");
    let data = dir.0.join("data");
    let site = dir.0.join("site");
    write_site(&site, "backed-up");
    let toml = format!(
        "[server]\nhttp = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\n[log]\naccess_log = \"off\"\n[backup]\nkeep = 2\n\
         [[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nstatic = {{ release = \"frontend\", spa = true }}\n",
        data.display()
    );
    let cfg = dir.0.join("gatehouse.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let cfg = cfg.display().to_string();

    let (code, out, err) = run(&["migrate", "-c", &cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied migration") || out.contains("up to date"), "{out}");
    assert_eq!(
        run(&["deploy", &site.display().to_string(), "-r", "frontend", "-c", &cfg]).0,
        0
    );

    let mut gh = Process::serve(Path::new(BIN), &toml);
    let (code, out, err) = run(&["backup", "-c", &cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backup written:"), "{out}");
    let archive = std::fs::read_dir(data.join("backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "gz"))
        .expect("an archive");
    let archive = archive.display().to_string();

    // Refused while the server holds the data directory.
    let (code, _, err) = run(&["restore", &archive, "-c", &cfg]);
    assert_eq!(code, 1);
    assert!(err.contains("in use by a running gatehouse"), "{err}");
    assert!(err.contains("or pass --force"), "{err}");
    // A second server on the same data directory is refused too.
    let (code, _, err) = run(&["serve", "-c", &cfg]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot start") && err.contains("stop it first"), "{err}");

    gh.signal("TERM");
    assert_eq!(gh.wait_exit(Duration::from_secs(10)), Some(0));
    // Lose the releases, then restore them.
    std::fs::remove_dir_all(data.join("releases")).unwrap();
    let (code, out, err) = run(&["restore", &archive, "-c", &cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("files verified"), "{out}");
    let gh = Process::serve(Path::new(BIN), &toml);
    wait_for_body(&format!("http://{}/", gh.addr), "<h1>backed-up</h1>");

    // A corrupted archive is refused and nothing is touched.
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let bad = dir.0.join("bad.tar.gz");
    std::fs::write(&bad, &bytes).unwrap();
    drop(gh);
    let (code, _, err) = run(&["restore", &bad.display().to_string(), "--force", "-c", &cfg]);
    assert_eq!(code, 1);
    assert!(
        err.to_lowercase().contains("checksum") || err.contains("corrupt"),
        "{err}"
    );
    assert!(data.join("releases").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_downloads_keep_memory_and_threads_bounded() {
    let dir = TempDir::new("gh-bigfiles");
    let root = dir.0.join("root");
    std::fs::create_dir_all(&root).unwrap();
    // 8 MiB of varied bytes, so nothing compresses it.
    let data = gatehouse_testkit::data::noise(8 << 20);
    std::fs::write(root.join("big.bin"), &data).unwrap();
    let toml = format!(
        "[server]\nhttp = [\"127.0.0.1:0\"]\nworkers = 2\ndata_dir = \"{}\"\n[log]\naccess_log = \"off\"\n\
         [[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nstatic = {{ dir = \"{}\" }}\n",
        dir.0.join("data").display(),
        root.display()
    );
    let gh = Process::serve(Path::new(BIN), &toml);
    let url = format!("http://{}/big.bin", gh.addr);
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let r = get(&url, &[]).await;
                assert_eq!(r.status, 200);
                r.body.len()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), data.len());
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", gh.child.id())).unwrap();
    let threads: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let peak = gh.peak_rss_kib();
    println!("40 x 8 MiB downloads: peak RSS {peak} KiB, {threads} threads");
    // 40 responses in flight hold a read chunk and hyper's write buffer each
    // (well under 1 MiB); whole-file or retained buffers would need 320 MiB+.
    assert!(peak < 160 * 1024, "peak RSS {peak} KiB");
    // 2 workers x 8 blocking threads, plus main, access log, the store's and a
    // few others; an unbounded blocking pool reached hundreds here.
    assert!(threads <= 40, "{threads} threads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_continues_while_the_database_is_down() {
    let dir = TempDir::new("gh-db-down");
    // Nothing listens on port 1: the store retries in the background.
    let toml = format!(
        "[server]\nhttp = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\n[log]\naccess_log = \"off\"\n\
         [store]\nurl = \"postgres://postgres@127.0.0.1:1/gatehouse\"\nconnect_timeout = \"200ms\"\n\
         [[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"still here\" }}\n",
        dir.0.join("data").display()
    );
    let mut gh = Process::serve(Path::new(BIN), &toml);
    let started = Instant::now();
    let r = get(&format!("http://{}/", gh.addr), &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "still here"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "requests do not wait for the database"
    );
    gh.signal("TERM");
    assert_eq!(
        gh.wait_exit(Duration::from_secs(10)),
        Some(0),
        "shutdown does not hang on the store"
    );
}

/// Bytes read by the server's serving threads (`gatehouse-worker-N`), from
/// `/proc/PID/task/*/io`. `sendfile(2)` counts the file bytes it sends as read
/// by the thread that calls it; the copying path reads files on the blocking
/// pool's threads instead.
fn worker_rchar(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !comm.starts_with("gatehouse-worke") {
            continue;
        }
        let io = std::fs::read_to_string(task.join("io")).unwrap_or_default();
        total += io
            .lines()
            .find_map(|l| l.strip_prefix("rchar:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Reads one HTTP/1 response with a Content-Length from `stream`: (head, body).
async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap()
        .parse()
        .unwrap();
    let mut body = buf[head_end..].to_vec();
    assert!(body.len() <= len, "more bytes than Content-Length");
    body.resize(len, 0);
    let have = buf.len() - head_end;
    stream.read_exact(&mut body[have..]).await.unwrap();
    (head, body)
}

fn sendfile_config(dir: &Path, root: &Path, sendfile: bool) -> String {
    format!(
        "[server]\nhttp = [\"127.0.0.1:0\"]\nworkers = 1\ndata_dir = \"{}\"\n[log]\naccess_log = \"off\"\n\
         [[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nstatic = {{ dir = \"{}\", sendfile = {sendfile} }}\n",
        dir.join("data").display(),
        root.display()
    )
}

#[tokio::test]
async fn large_files_go_out_with_sendfile_on_plain_http1_and_arrive_intact() {
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new("gh-sendfile");
    let root = dir.0.join("root");
    std::fs::create_dir_all(&root).unwrap();
    // 6 MiB of varied bytes: above the in-memory cache's size limit, and any
    // zeros or misplaced bytes would show.
    let data = gatehouse_testkit::data::noise(6 << 20);
    std::fs::write(root.join("big.bin"), &data).unwrap();
    std::fs::write(root.join("small.txt"), "small file").unwrap();
    // 100 KiB: kept in the in-memory cache, and large enough to keep its
    // descriptor open for sendfile.
    let medium = data[..100 << 10].to_vec();
    std::fs::write(root.join("medium.bin"), &medium).unwrap();
    let gh = Process::serve(Path::new(BIN), &sendfile_config(&dir.0, &root, true));
    let before = worker_rchar(gh.child.id());

    // Several responses on one keep-alive connection: a whole large file, a
    // single range, two ranges, a small cached file, and the large file again.
    let mut conn = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
    let ask = |range: Option<&str>, path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\n{}\r\n",
            range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default()
        )
    };
    conn.write_all(ask(None, "/big.bin").as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body == data, "the whole file differs");

    conn.write_all(ask(Some("bytes=1000000-1999999"), "/big.bin").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(body == data[1_000_000..2_000_000], "the range differs");

    conn.write_all(ask(Some("bytes=0-9,5000000-5000099"), "/big.bin").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(head.to_ascii_lowercase().contains("multipart/byteranges"), "{head}");
    let find = |needle: &[u8]| body.windows(needle.len()).position(|w| w == needle);
    let first = find(&data[0..10]).expect("first part");
    let second = find(&data[5_000_000..5_000_100]).expect("second part");
    assert!(first < second);

    conn.write_all(ask(None, "/small.txt").as_bytes()).await.unwrap();
    let (_, body) = read_response(&mut conn).await;
    assert_eq!(body, b"small file");
    conn.write_all(ask(None, "/big.bin").as_bytes()).await.unwrap();
    let (_, body) = read_response(&mut conn).await;
    assert!(body == data, "the whole file differs on the reused connection");

    // The cached medium file goes out with sendfile from its kept descriptor
    // too (the worker "reads" it), whole and as a range, on the same connection.
    let before_medium = worker_rchar(gh.child.id());
    for _ in 0..3 {
        conn.write_all(ask(None, "/medium.bin").as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut conn).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body == medium, "the cached file differs");
    }
    conn.write_all(ask(Some("bytes=50000-"), "/medium.bin").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(body == medium[50_000..], "the cached file's range differs");
    let medium_sent = worker_rchar(gh.child.id()) - before_medium;
    let expected = 3 * medium.len() as u64 + (medium.len() as u64 - 50_000);
    assert!(
        medium_sent >= expected,
        "serving thread sent {medium_sent} bytes of the cached file with sendfile, expected {expected}"
    );

    // HTTP/2 (h2c) frames data itself: it reads the file, and gets the same bytes.
    let client = gatehouse_testkit::client::h2c();
    let req = http::Request::get(format!("http://{}/big.bin", gh.addr))
        .body(gatehouse_testkit::client::body(""))
        .unwrap();
    let r = gatehouse_testkit::client::send(&client, req).await;
    assert_eq!(r.status, 200);
    assert!(r.body == data, "the file over HTTP/2 differs");

    // The file bytes of the HTTP/1 responses were read by the serving thread's
    // sendfile: at least 2 whole files and the ranges.
    let read_by_worker = worker_rchar(gh.child.id()) - before;
    assert!(
        read_by_worker >= 2 * data.len() as u64 + 1_000_000,
        "serving thread read {read_by_worker} bytes"
    );
}

#[tokio::test]
async fn sendfile_off_reads_files_on_the_blocking_pool() {
    let dir = TempDir::new("gh-nosendfile");
    let root = dir.0.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), &data).unwrap();
    let gh = Process::serve(Path::new(BIN), &sendfile_config(&dir.0, &root, false));
    let before = worker_rchar(gh.child.id());
    let r = get(&format!("http://{}/big.bin", gh.addr), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == data, "the file differs");
    let read_by_worker = worker_rchar(gh.child.id()) - before;
    assert!(read_by_worker < 1 << 20, "serving thread read {read_by_worker} bytes");
}
