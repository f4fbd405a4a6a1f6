//! The real binary: command-line behaviour, signals and memory bounds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_testkit::client::{self, TestBody, body};
use gatehouse_testkit::process::{Process, TempDir};
use gatehouse_testkit::upstream::{Behavior, Upstream, refused_addr};
use http::Request;
use http_body_util::BodyExt;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn gatehouse(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let p = dir.0.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn check_reports_errors_with_file_line_column_and_key() {
    let dir = TempDir::new("gh-check");
    let cases: &[(&str, &str)] = &[
        (
            "[server]\nhttp = [\":8080\"]\nlisten = true\n",
            ":3:1: server.listen: unknown field `listen`",
        ),
        (
            "[server]\nworkers = \"many\"\n",
            ":2:11: server.workers: invalid type: string \"many\"",
        ),
        (
            "[server]\nshutdown_timeout = \"soon\"\n",
            ":2:20: server.shutdown_timeout: invalid duration \"soon\"",
        ),
        (
            "[server]\nhttp = [\"300.0.0.1:80\"]\n",
            ":2:9: server.http[0]: invalid listen address",
        ),
        (
            "[server]\ntrusted_proxies = [\"10.0.0.0/40\"]\n",
            ":2:20: server.trusted_proxies[0]: invalid network",
        ),
        (
            "[[site]]\nhosts = [\"a.test\"]\n[[site]]\nhosts = [\"a.test\"]\n",
            ":4:10: site[1].hosts[0]: host \"a.test\" is already used by site[0]",
        ),
        (
            "[[site]]\nhosts = [\"a.test\"]\n[[site.route]]\npath = \"/\"\nupstream = \"api\"\n",
            ":5:12: site[0].route[0].upstream: upstream \"api\" is not defined",
        ),
        (
            "[server]\ndata_dir = \"${GH_TEST_UNSET_VAR}\"\n",
            ":2:13: environment variable GH_TEST_UNSET_VAR is not set",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = write(&dir, &format!("bad{i}.toml"), text);
        let (code, _, stderr) = gatehouse(&["check", "-c", &path]);
        assert_eq!(code, 1, "case {i} should fail: {stderr}");
        assert!(
            stderr.contains(&format!("{path}{expected}")),
            "case {i}: {stderr:?} lacks {expected:?}"
        );
    }
}

#[test]
fn check_prints_a_summary_of_a_valid_file() {
    let dir = TempDir::new("gh-check-ok");
    let path = write(
        &dir,
        "ok.toml",
        "[upstream.api]\ntargets = [\"127.0.0.1:9000\", \"127.0.0.1:9001\", \"unix:/run/api.sock\"]\nread_timeout = \"90s\"\n[[site]]\nhosts = [\"app.test\"]\n[[site.route]]\npath = \"/api/\"\nupstream = \"api\"\n",
    );
    let (code, stdout, stderr) = gatehouse(&["check", "-c", &path]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("site app.test"), "{stdout}");
    assert!(stdout.contains("route /api/"), "{stdout}");
    assert!(
        stdout.contains("upstream api: 127.0.0.1:9000, 127.0.0.1:9001, unix:/run/api.sock"),
        "{stdout}"
    );
    assert!(stdout.contains("connect 5s, response 60s, read 90s)"), "{stdout}");
    assert!(stdout.trim_end().ends_with(": ok"), "{stdout}");
}

#[test]
fn check_never_prints_a_database_password() {
    let dir = TempDir::new("gh-check-secret");
    let path = write(
        &dir,
        "db.toml",
        "[store]\nurl = \"postgres://app:${GH_TEST_DB_PW:-hunter2}@db.internal/app\"\n",
    );
    let (code, stdout, stderr) = gatehouse(&["check", "-c", &path]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("store: postgres://app:***@db.internal/app"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

#[test]
fn config_path_comes_from_the_environment() {
    let dir = TempDir::new("gh-env");
    let path = write(&dir, "env.toml", "[server]\nworkers = 0\n");
    let out = Command::new(BIN)
        .arg("check")
        .env("GATEHOUSE_CONFIG", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{path}:2:11: server.workers")), "{stderr}");
}

#[test]
fn init_writes_a_config_that_check_accepts() {
    let dir = TempDir::new("gh-init");
    let path = dir.0.join("gatehouse.toml").display().to_string();
    let (code, stdout, _) = gatehouse(&["init", &path]);
    assert_eq!(code, 0);
    assert!(stdout.contains("wrote"), "{stdout}");
    let (code, stdout, stderr) = gatehouse(&["check", "-c", &path]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("upstream app"), "{stdout}");
    let (code, _, stderr) = gatehouse(&["init", &path]);
    assert_eq!(code, 1);
    assert!(stderr.contains("already exists"), "{stderr}");
}

#[test]
fn quickstart_example_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/gatehouse.toml");
    let (code, stdout, stderr) = gatehouse(&["check", "-c", &example.display().to_string()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("upstream demo"), "{stdout}");
    assert!(stdout.contains("static dir"), "{stdout}");
}

#[test]
fn version_is_printed() {
    let (code, stdout, _) = gatehouse(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), format!("gatehouse {}", env!("CARGO_PKG_VERSION")));
}

fn proxy_to(addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[server]\nhttp = [\"127.0.0.1:0\"]\nworkers = 2\n{extra}\n[log]\nlevel = \"warn\"\n\
         [upstream.app]\ntargets = [\"{addr}\"]\nresponse_timeout = \"30s\"\n\
         [[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nupstream = \"app\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let up = Upstream::start(Behavior::Delay(Duration::from_millis(1500))).await;
    let mut gh = Process::serve(Path::new(BIN), &proxy_to(up.addr, "shutdown_timeout = \"10s\""));
    let url = format!("http://{}/slow", gh.addr);
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client::get(&url, &[]).await })
        })
        .collect();
    // Let the requests reach the upstream, then ask gatehouse to stop.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.requests().len() < 3 {
        assert!(Instant::now() < deadline, "requests did not reach the upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gh.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused once the listeners are closed.
    assert!(
        tokio::net::TcpStream::connect(gh.addr).await.is_err(),
        "listener still open after SIGTERM"
    );
    for r in in_flight {
        let reply = r.await.unwrap();
        assert_eq!(reply.status, 200, "an in-flight request was cut off");
        assert_eq!(reply.text(), "slow");
    }
    let code = tokio::task::spawn_blocking(move || gh.wait_exit(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[test]
fn sigterm_as_soon_as_serving_is_printed_is_a_graceful_stop() {
    // Each time at once after "serving on": the handlers must be in place by
    // then, or the signal's default action ends the process (no exit code).
    // A store that cannot be reached makes startup after that line slower.
    let dir = TempDir::new("gh-early-term");
    let extra = format!(
        "data_dir = \"{}\"\n[store]\nurl = \"postgres://postgres@127.0.0.1:1/gatehouse\"\nconnect_timeout = \"200ms\"",
        dir.0.join("data").display()
    );
    for _ in 0..10 {
        let mut gh = Process::serve(Path::new(BIN), &proxy_to(refused_addr(), &extra));
        gh.signal("TERM");
        assert_eq!(gh.wait_exit(Duration::from_secs(10)), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_bounds_the_wait() {
    let up = Upstream::start(Behavior::Delay(Duration::from_secs(30))).await;
    let mut gh = Process::serve(Path::new(BIN), &proxy_to(up.addr, "shutdown_timeout = \"300ms\""));
    let url = format!("http://{}/stuck", gh.addr);
    let stuck = tokio::spawn(async move {
        let req = Request::get(url).body(body(Bytes::new())).unwrap();
        client::http1().request(req).await
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.requests().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    gh.signal("TERM");
    let code = tokio::task::spawn_blocking(move || gh.wait_exit(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "exit took {:?}",
        started.elapsed()
    );
    assert!(
        stuck.await.unwrap().is_err(),
        "the stuck request was cut at the deadline"
    );
}

const GIB: u64 = 1 << 30;
/// Peak RSS allowed while a gigabyte streams through: buffers are per
/// connection and small, so anything near the body size means buffering.
const RSS_LIMIT_KIB: u64 = 96 * 1024;

fn streaming_body(total: u64) -> TestBody {
    BodyExt::boxed(http_body_util::StreamBody::new(gatehouse_testkit::data::frames(
        total,
        256 * 1024,
        b'u',
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_upload_and_download_stream_with_bounded_memory() {
    let sink = Upstream::start(Behavior::Sink).await;
    let gh = Process::serve(Path::new(BIN), &proxy_to(sink.addr, ""));
    let req = Request::post(format!("http://{}/upload", gh.addr))
        .header("content-length", GIB.to_string())
        .body(streaming_body(GIB))
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(120), client::send(&client::http1(), req))
        .await
        .expect("upload took too long");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), GIB.to_string(), "the upstream received every byte");
    let after_upload = gh.peak_rss_kib();
    drop(gh);

    let source = Upstream::start(Behavior::Generate(GIB)).await;
    let gh = Process::serve(Path::new(BIN), &proxy_to(source.addr, ""));
    let req = Request::get(format!("http://{}/download", gh.addr))
        .body(body(Bytes::new()))
        .unwrap();
    let resp = client::http1().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received: u64 = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
        assert!(Instant::now() < deadline, "download took too long");
    }
    assert_eq!(received, GIB);
    let after_download = gh.peak_rss_kib();
    println!("peak RSS: upload {after_upload} KiB, download {after_download} KiB");
    assert!(after_upload < RSS_LIMIT_KIB, "upload peak RSS {after_upload} KiB");
    assert!(after_download < RSS_LIMIT_KIB, "download peak RSS {after_download} KiB");
}
