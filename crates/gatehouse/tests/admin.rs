//! The admin API of a running `gatehouse serve`, over real sockets: uploads
//! made with curl switch what the static route serves, rollbacks switch it
//! back, and refused uploads change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gatehouse_testkit::client::get;
use gatehouse_testkit::data::{noise, tar_gz};
use gatehouse_testkit::process::{Process, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const TOKEN: &str = "admin-test-token-5f0c9a1e7b3d4c2a8e6f";
/// `max_upload` of the test slot.
const MAX_UPLOAD: usize = 16 * 1024;

struct Server {
    process: Process,
    admin: String,
    site: String,
    data: PathBuf,
    dir: TempDir,
}

fn start() -> Server {
    let dir = TempDir::new("gh-admin");
    let data = dir.0.join("data");
    let toml = format!(
        "[server]\nhttp = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nadmin_token = \"{TOKEN}\"\ndata_dir = \"{}\"\n\
         [log]\naccess_log = \"off\"\n\
         [release.frontend]\nkeep = 3\nmax_upload = \"16KiB\"\n\
         [[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nstatic = {{ release = \"frontend\", spa = true }}\n",
        data.display()
    );
    let process = Process::serve(Path::new(BIN), &toml);
    let deadline = Instant::now() + Duration::from_secs(10);
    let admin = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = process.stdout.recv_timeout(left).expect("no admin line on stdout");
        if let Some(url) = line.strip_prefix("gatehouse admin API on ") {
            break url.trim_end_matches('/').to_owned();
        }
    };
    assert!(admin.starts_with("http://127.0.0.1:"), "{admin}");
    Server {
        site: format!("http://{}/", process.addr),
        process,
        admin,
        data,
        dir,
    }
}

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// Runs curl against the admin API with the token (unless `auth` is None)
/// and returns the status and body.
fn curl(server: &Server, method: &str, path: &str, auth: Option<&str>, extra: &[&str]) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}", "--max-time", "30"]);
    if let Some(token) = auth {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    cmd.args(extra).arg(format!("{}{path}", server.admin));
    let out = cmd.output().expect("curl is needed for this test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {method} {path} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, status) = stdout.rsplit_once('\n').unwrap();
    Reply {
        status: status.parse().unwrap(),
        body: body.to_owned(),
    }
}

/// PUTs the file as the body of `/releases/{slot}`.
fn upload(server: &Server, slot: &str, archive: &Path, extra: &[&str]) -> Reply {
    let data = format!("@{}", archive.display());
    let mut args = vec!["-H", "Content-Type: application/gzip", "--data-binary", &data];
    args.extend_from_slice(extra);
    curl(server, "PUT", &format!("/releases/{slot}"), Some(TOKEN), &args)
}

/// Writes a `.tar.gz` of `files` into the test directory.
fn archive(server: &Server, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let path = server.dir.0.join(name);
    std::fs::write(&path, tar_gz(files)).unwrap();
    path
}

fn build(server: &Server, marker: &str) -> PathBuf {
    let index = format!("<h1>{marker}</h1>");
    let js = format!("console.log('{marker}')");
    archive(
        server,
        &format!("{marker}.tar.gz"),
        &[
            ("index.html", index.as_bytes()),
            ("assets/app-BxK3f9aQ.js", js.as_bytes()),
        ],
    )
}

/// What the static route serves at `/`, as soon as it is `expected`
/// (the server re-reads the slot pointer at most every 100 ms).
async fn wait_for_site(server: &Server, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = get(&server.site, &[]).await.text();
        if body == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the site still serves {body:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The active release as the API reports it, after checking that the
/// slot has no leftover staging directory.
fn active(server: &Server) -> String {
    let slot_dir = server.data.join("releases/frontend");
    for e in std::fs::read_dir(&slot_dir).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        assert!(!name.starts_with(".staging-"), "leftover {name}");
    }
    let r = curl(server, "GET", "/releases/frontend", Some(TOKEN), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["active"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn upload_switches_the_running_site_and_rollback_switches_back() {
    let mut server = start();
    let r = curl(&server, "GET", "/healthz", None, &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(get(&server.site, &[]).await.status, 503, "an empty slot serves nothing");

    let v1 = build(&server, "v1");
    let r = upload(&server, "frontend", &v1, &[]);
    assert_eq!(r.status, 201, "{}", r.body);
    let id1 = r.json()["id"].as_str().unwrap().to_owned();
    assert!(r.json()["active"].as_bool().unwrap());
    wait_for_site(&server, "<h1>v1</h1>").await;

    let v2 = build(&server, "v2");
    let r = upload(&server, "frontend", &v2, &[]);
    assert_eq!(r.status, 201, "{}", r.body);
    let id2 = r.json()["id"].as_str().unwrap().to_owned();
    wait_for_site(&server, "<h1>v2</h1>").await;
    let r = get(&format!("{}assets/app-BxK3f9aQ.js", server.site), &[]).await;
    assert_eq!(r.text(), "console.log('v2')");

    let list = curl(&server, "GET", "/releases/frontend", Some(TOKEN), &[]);
    assert_eq!(list.status, 200);
    let ids: Vec<String> = list.json()["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [id2.clone(), id1.clone()]);

    let r = curl(&server, "POST", "/releases/frontend/rollback", Some(TOKEN), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"].as_str().unwrap(), id1);
    wait_for_site(&server, "<h1>v1</h1>").await;
    let r = curl(&server, "POST", "/releases/frontend/rollback", Some(TOKEN), &[]);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["code"].as_str().unwrap(), "no_previous_release");

    // Forward again, by id in a JSON body.
    let body = format!("{{\"id\":\"{id2}\"}}");
    let r = curl(
        &server,
        "POST",
        "/releases/frontend/rollback",
        Some(TOKEN),
        &["-H", "Content-Type: application/json", "--data", &body],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for_site(&server, "<h1>v2</h1>").await;

    // The admin listener stops with the server.
    server.process.signal("TERM");
    assert_eq!(server.process.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn refused_uploads_leave_the_active_release_serving() {
    let server = start();
    let v1 = build(&server, "v1");
    assert_eq!(upload(&server, "frontend", &v1, &[]).status, 201);
    wait_for_site(&server, "<h1>v1</h1>").await;
    let id1 = active(&server);
    let v2 = build(&server, "v2");

    // Without the token, or with a wrong one.
    let path = format!("@{}", v2.display());
    for auth in [None, Some("wrong-token-wrong-token-wrong-token!")] {
        let r = curl(&server, "PUT", "/releases/frontend", auth, &["--data-binary", &path]);
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let www = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "-X", "PUT", "--data-binary", &path])
        .arg(format!("{}/releases/frontend", server.admin))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&www.stdout).to_ascii_lowercase();
    assert!(head.contains("www-authenticate: bearer"), "{head}");

    // Not an archive.
    let junk = server.dir.0.join("junk.tar.gz");
    std::fs::write(&junk, b"certainly not gzip").unwrap();
    let r = upload(&server, "frontend", &junk, &[]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["code"].as_str().unwrap(), "bad_archive");

    // A cut-off archive.
    let whole = std::fs::read(&v2).unwrap();
    let cut = server.dir.0.join("cut.tar.gz");
    std::fs::write(&cut, &whole[..whole.len() - 12]).unwrap();
    let r = upload(&server, "frontend", &cut, &[]);
    assert_eq!(r.status, 400, "{}", r.body);

    // No index.html in an SPA slot.
    let no_index = archive(&server, "no-index.tar.gz", &[("app.js", b"x")]);
    let r = upload(&server, "frontend", &no_index, &[]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["code"].as_str().unwrap(), "missing_index");

    // Over max_upload: refused from Content-Length before the body is read
    // (curl waits for `100 Continue`, which never comes).
    let noisy = archive(
        &server,
        "big.tar.gz",
        &[("index.html", b"<h1>big</h1>"), ("noise.bin", &noise(4 * MAX_UPLOAD))],
    );
    assert!(std::fs::metadata(&noisy).unwrap().len() > MAX_UPLOAD as u64);
    let r = upload(&server, "frontend", &noisy, &["-H", "Expect: 100-continue"]);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["code"].as_str().unwrap(), "too_large");
    // Over max_upload, streamed without a length: cut off while reading.
    let r = upload(
        &server,
        "frontend",
        &noisy,
        &["-H", "Transfer-Encoding: chunked", "-H", "Expect: 100-continue"],
    );
    assert_eq!(r.status, 413, "{}", r.body);

    // A slot the config does not have.
    let r = upload(&server, "other", &v2, &[]);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(!server.data.join("releases/other").exists());

    // Nothing moved: the API, the disk and the site (checked again after
    // the 100 ms pointer poll) all still show v1.
    assert_eq!(active(&server), id1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&server.site, &[]).await.text(), "<h1>v1</h1>");
    let list = curl(&server, "GET", "/releases/frontend", Some(TOKEN), &[]);
    assert_eq!(list.json()["releases"].as_array().unwrap().len(), 1, "{}", list.body);
}

#[test]
fn a_busy_admin_port_stops_startup() {
    let dir = TempDir::new("gh-admin-busy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = dir.0.join("gatehouse.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhttp = [\"127.0.0.1:0\"]\nadmin = \"{}\"\ndata_dir = \"{}\"\n",
            taken.local_addr().unwrap(),
            dir.0.join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN).arg("serve").arg("-c").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on server.admin"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("serving on"));
}
