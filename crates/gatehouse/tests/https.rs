#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HTTPS through the real binary over real sockets: the internal CA checked by curl
//! and rustls, HTTP/2 over TLS, SNI among files-mode sites, the Host/SNI check,
//! redirects and HSTS, old TLS versions refused, on-demand refusals, certificates
//! following reloads (and `GET /certificates`), and real ACME
//! issuance against Pebble (`GATEHOUSE_TEST_PEBBLE`; skipped without it unless
//! `CI=true`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_testkit::process::{Process, TempDir};
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// The binary, serving `toml`; returns it with its HTTP and HTTPS addresses.
fn serve(toml: &str) -> (Process, SocketAddr, SocketAddr) {
    let process = Process::serve(Path::new(BIN), toml);
    let line = process
        .stdout
        .recv_timeout(Duration::from_secs(10))
        .expect("no https line");
    let port: u16 = line
        .strip_suffix('/')
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line: {line}"));
    assert!(line.contains("https://"), "{line}");
    let http = process.addr;
    (process, http, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn client_config(root_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// Retries the handshake until the certificate is served (issuance is a background task).
async fn wait_for_cert(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>, limit: Duration) -> Tls {
    let deadline = Instant::now() + limit;
    loop {
        match connect(addr, sni, config.clone()).await {
            Ok(tls) => return tls,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no certificate for {sni} within {limit:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

struct Reply {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: String,
}

/// One GET over `tls`, with HTTP/2 when ALPN chose `h2`.
async fn get(tls: Tls, host: &str, path: &str) -> Reply {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(req).await.unwrap()
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// GET over plain HTTP with a Host header.
async fn get_http(addr: SocketAddr, host: &str, path: &str) -> gatehouse_testkit::client::Reply {
    gatehouse_testkit::client::get(&format!("http://{addr}{path}"), &[("host", host)]).await
}

/// The leaf's subjectAltName entries that `pick` keeps.
fn leaf_sans<T>(tls: &Tls, pick: impl Fn(&x509_parser::extensions::GeneralName<'_>) -> Option<T>) -> Vec<T> {
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().filter_map(pick).collect(),
        _ => Vec::new(),
    }
}

/// The leaf's DNS-name subjectAltNames.
fn leaf_names(tls: &Tls) -> Vec<String> {
    leaf_sans(tls, |name| match name {
        x509_parser::extensions::GeneralName::DNSName(n) => Some((*n).to_owned()),
        _ => None,
    })
}

const INTERNAL: &str = r#"
[server]
http = ["127.0.0.1:0"]
https = ["127.0.0.1:0"]
workers = 2
data_dir = "DATA"

[log]
access_log = "off"

[[site]]
hosts = ["localhost"]
[[site.route]]
path = "/"
respond = { body = "hello over tls" }

[[site]]
hosts = ["other.localhost"]
[[site.route]]
path = "/"
respond = { body = "other" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_ca_serves_localhost_to_curl_and_rustls_with_h2() {
    let dir = TempDir::new("gh-https-internal");
    let data = dir.0.join("data");
    let (_gh, http, https) = serve(&INTERNAL.replace("DATA", data.to_str().unwrap()));
    let root_path = data.join("certs/ca/root.pem");
    let root = std::fs::read_to_string(&root_path).unwrap();

    // rustls, HTTP/1.1 and HTTP/2 by ALPN.
    let h1 = client_config(&root, &[b"http/1.1"]);
    let tls = wait_for_cert(https, "localhost", h1.clone(), Duration::from_secs(15)).await;
    assert_eq!(leaf_names(&tls), vec!["localhost".to_owned()]);
    let reply = get(tls, "localhost", "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, Version::HTTP_11);
    assert_eq!(reply.body, "hello over tls");
    assert!(
        reply.headers.get("strict-transport-security").is_none(),
        "no HSTS for internal sites"
    );
    let h2 = client_config(&root, &[b"h2", b"http/1.1"]);
    let tls = connect(https, "localhost", h2.clone()).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let reply = get(tls, "localhost", "/").await;
    assert_eq!((reply.status, reply.version), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(reply.body, "hello over tls");

    // curl trusting only the internal root.
    let out = Command::new("curl")
        .args(["-sS", "--http2", "-w", "\n%{http_version}", "--cacert"])
        .arg(&root_path)
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", https.port())])
        .arg(format!("https://localhost:{}/", https.port()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "hello over tls\n2");

    // Host/SNI mismatch: 421, even though the Host names a configured site.
    let tls = wait_for_cert(https, "other.localhost", h1.clone(), Duration::from_secs(15)).await;
    assert_eq!(get(tls, "other.localhost", "/").await.body, "other");
    let tls = connect(https, "localhost", h1.clone()).await.unwrap();
    let reply = get(tls, "other.localhost", "/").await;
    assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{}", reply.body);

    // Plain HTTP of a TLS site: 308 to https, path and query kept; challenge paths not.
    let reply = get_http(http, "localhost", "/a/b?x=1&y=2").await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        reply.header("location"),
        format!("https://localhost:{}/a/b?x=1&y=2", https.port())
    );
    let reply = get_http(http, "localhost", "/.well-known/acme-challenge/unknown-token").await;
    assert_eq!(reply.status, StatusCode::OK, "not redirected, routed as usual");
    assert_eq!(reply.text(), "hello over tls");

    // TLS 1.0 and 1.1 are refused by the server.
    let connect_to = format!("127.0.0.1:{}", https.port());
    for old in ["-tls1", "-tls1_1"] {
        // SECLEVEL=0 lets OpenSSL 3 offer the old versions at all, so a refusal is the server's.
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &connect_to, "-servername", "localhost", old])
            .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
            .stdin(std::process::Stdio::null())
            .output();
        let Ok(out) = out else {
            println!("skipped: openssl is not installed; TLS 1.0/1.1 refusal not checked");
            break;
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if text.contains("unknown option") || text.contains("no protocols available") {
            println!("skipped: this openssl cannot offer {old}");
            continue;
        }
        assert!(
            !out.status.success() && text.contains(" alert "),
            "{old} was not refused: {text}"
        );
    }
}

/// A self-signed certificate for `name`, written as NAME.pem and NAME.key.
fn make_cert(dir: &Path, name: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    cert.pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_mode_picks_the_certificate_by_sni_with_hsts() {
    let dir = TempDir::new("gh-https-files");
    let a = make_cert(&dir.0, "a.example.com");
    let b = make_cert(&dir.0, "b.example.com");
    let d = dir.0.display();
    let toml = format!(
        r#"
[server]
http = ["127.0.0.1:0"]
https = ["127.0.0.1:0"]
workers = 1
data_dir = "{d}/data"
[log]
access_log = "off"

[[site]]
hosts = ["a.example.com"]
tls = {{ cert = "{d}/a.example.com.pem", key = "{d}/a.example.com.key" }}
route = [{{ path = "/", respond = {{ body = "site a" }} }}]

[[site]]
hosts = ["b.example.com"]
tls = {{ cert = "{d}/b.example.com.pem", key = "{d}/b.example.com.key" }}
hsts = "30d"
route = [{{ path = "/", respond = {{ body = "site b" }} }}]
"#
    );
    let (_gh, http, https) = serve(&toml);
    let both = format!("{a}{b}");
    let config = client_config(&both, &[b"h2", b"http/1.1"]);

    let tls = connect(https, "a.example.com", config.clone()).await.unwrap();
    assert_eq!(leaf_names(&tls), vec!["a.example.com".to_owned()]);
    let reply = get(tls, "a.example.com", "/").await;
    assert_eq!(reply.body, "site a");
    assert_eq!(reply.headers["strict-transport-security"], "max-age=31536000");

    let tls = connect(https, "b.example.com", config.clone()).await.unwrap();
    assert_eq!(leaf_names(&tls), vec!["b.example.com".to_owned()]);
    let reply = get(tls, "b.example.com", "/").await;
    assert_eq!(reply.body, "site b");
    assert_eq!(reply.headers["strict-transport-security"], "max-age=2592000");

    // A name without a certificate gets a handshake failure, not another site's.
    assert!(connect(https, "c.example.com", config.clone()).await.is_err());

    let reply = get_http(http, "b.example.com", "/x?y").await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        reply.header("location"),
        format!("https://b.example.com:{}/x?y", https.port())
    );
    assert!(
        reply.headers.get("strict-transport-security").is_none(),
        "HSTS only over HTTPS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_refuses_names_not_allowed() {
    let dir = TempDir::new("gh-https-ondemand");
    let d = dir.0.display();
    // The CA is unreachable: a name that got past the policy would fail at the order,
    // which this test must never reach.
    let toml = format!(
        r#"
[server]
http = ["127.0.0.1:0"]
https = ["127.0.0.1:0"]
workers = 1
data_dir = "{d}/data"
acme_email = "ops@example.com"
[log]
access_log = "off"
[acme]
directory = "https://127.0.0.1:9/dir"
[tls.on_demand]
allow = ["*.customers.example.com"]

[[site]]
default = true
route = [{{ path = "/", respond = {{ body = "default" }} }}]
"#
    );
    let (_gh, _http, https) = serve(&toml);
    let config = client_config("", &[b"http/1.1"]);
    let start = Instant::now();
    for name in ["evil.example.com", "a.b.customers.example.com", "customers.example.com"] {
        let err = connect(https, name, config.clone()).await.expect_err(name).to_string();
        assert!(err.contains("alert") || err.contains("Alert"), "{name}: {err}");
    }
    assert!(start.elapsed() < Duration::from_secs(5), "refusals are immediate");
    assert!(
        !dir.0.join("data/certs/accounts").exists(),
        "no ACME account was created for a refused name"
    );
}

/// Real issuance through the binary: HTTP-01 on 127.0.0.1:5002, then TLS-ALPN-01 on
/// 127.0.0.1:5001, each served certificate chaining to Pebble's root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_issues_for_the_binary_with_http01_and_tls_alpn01() {
    let Some((pebble_bin, challtestsrv_bin)) = gatehouse_testkit::pebble::binaries() else {
        return;
    };
    let _lock = gatehouse_testkit::pebble::lock();
    let dir = TempDir::new("gh-https-pebble");

    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let pebble_cert = params.self_signed(&key).unwrap();
    let cert_path = dir.0.join("pebble-cert.pem");
    std::fs::write(&cert_path, pebble_cert.pem()).unwrap();
    std::fs::write(dir.0.join("pebble-key.pem"), key.serialize_pem()).unwrap();
    let config = serde_json::json!({"pebble": {
        "listenAddress": "127.0.0.1:14000",
        "managementListenAddress": "127.0.0.1:15000",
        "certificate": cert_path,
        "privateKey": dir.0.join("pebble-key.pem"),
        "httpPort": 5002,
        "tlsPort": 5001,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    let config_path = dir.0.join("pebble.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let spawn = |program: &Path, args: &[&str], env: &[(&str, &str)], log: &str| {
        let out = std::fs::File::create(dir.0.join(log)).unwrap();
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        KillOnDrop(child)
    };
    let _challtestsrv = spawn(
        &challtestsrv_bin,
        gatehouse_testkit::pebble::CHALLTESTSRV_ARGS,
        &[],
        "challtestsrv.log",
    );
    let _pebble = spawn(
        &pebble_bin,
        &[
            "-config",
            config_path.to_str().unwrap(),
            "-dnsserver",
            gatehouse_testkit::pebble::DNS_SERVER,
        ],
        gatehouse_testkit::pebble::PEBBLE_ENV,
        "pebble.log",
    );
    for port in [8055, 14000, 15000] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "nothing listens on port {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Pebble's issuing root.
    let tls = connect(
        "127.0.0.1:15000".parse().unwrap(),
        "localhost",
        client_config(&pebble_cert.pem(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let root = get(tls, "localhost", "/roots/0").await.body;
    assert!(root.contains("BEGIN CERTIFICATE"), "{root}");
    let client = client_config(&root, &[b"http/1.1"]);

    for (challenge, name) in [
        ("http-01", "http01.gatehouse.example"),
        ("tls-alpn-01", "alpn.gatehouse.example"),
    ] {
        let toml = format!(
            r#"
[server]
http = ["127.0.0.1:5002"]
https = ["127.0.0.1:5001"]
workers = 1
data_dir = "{d}/data"
acme_email = "ops@gatehouse.example"
[log]
access_log = "off"
[acme]
directory = "https://127.0.0.1:14000/dir"
ca_root = "{cert}"
challenge = "{challenge}"

[[site]]
hosts = ["{name}"]
route = [{{ path = "/", respond = {{ body = "issued" }} }}]
"#,
            d = dir.0.display(),
            cert = cert_path.display(),
        );
        let (gh, http, https) = serve(&toml);
        let tls = wait_for_cert(https, name, client.clone(), Duration::from_secs(90)).await;
        assert_eq!(leaf_names(&tls), vec![name.to_owned()], "{challenge}");
        let reply = get(tls, name, "/").await;
        assert_eq!(reply.body, "issued");
        assert_eq!(reply.headers["strict-transport-security"], "max-age=31536000");
        assert_eq!(get_http(http, name, "/").await.status, StatusCode::PERMANENT_REDIRECT);
        assert!(dir.0.join(format!("data/certs/sites/{name}/key.pem")).is_file());

        // A site added by a reload gets its certificate ordered without a restart.
        let added = format!("reload.{name}");
        let toml = format!(
            "{toml}\n[[site]]\nhosts = [\"{added}\"]\nroute = [{{ path = \"/\", respond = {{ body = \"added\" }} }}]\n"
        );
        std::fs::write(&gh.config, toml).unwrap();
        gh.signal("HUP");
        let tls = wait_for_cert(https, &added, client.clone(), Duration::from_secs(90)).await;
        assert_eq!(leaf_names(&tls), vec![added.clone()], "{challenge}");
        assert_eq!(get(tls, &added, "/").await.body, "added");
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `config` over the running server's file and reloads it through
/// `POST /reload` on the admin address; the status and the JSON or error body.
async fn reload_with(gh: &Process, config: &str, admin: &str, token: &str) -> gatehouse_testkit::client::Reply {
    std::fs::write(&gh.config, config).unwrap();
    let req = Request::post(format!("{admin}/reload"))
        .header("authorization", format!("Bearer {token}"))
        .body(gatehouse_testkit::client::body(Bytes::new()))
        .unwrap();
    gatehouse_testkit::client::send(&gatehouse_testkit::client::http1(), req).await
}

fn leaf_der(tls: &Tls) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_follow_reload_and_bad_files_refuse_it() {
    let dir = TempDir::new("gh-https-reload");
    let a = make_cert(&dir.0, "a.example.com");
    let b = make_cert(&dir.0, "b.example.com");
    let d = dir.0.display().to_string();
    let token = "c3rts-c3rts-c3rts-c3rts-c3rts-c3rts";
    let files_site = |name: &str, cert: &str| {
        format!(
            "[[site]]\nhosts = [\"{name}\"]\ntls = {{ cert = \"{d}/{cert}\", key = \"{d}/{name}.key\" }}\n\
             route = [{{ path = \"/\", respond = {{ body = \"{name}\" }} }}]\n"
        )
    };
    let internal_site = |name: &str, body: &str| {
        format!(
            "[[site]]\nhosts = [\"{name}\"]\ntls = \"internal\"\n\
             route = [{{ path = \"/\", respond = {{ body = \"{body}\" }} }}]\n"
        )
    };
    let config = |sites: &[String]| {
        format!(
            "[server]\nhttp = [\"127.0.0.1:0\"]\nhttps = [\"127.0.0.1:0\"]\nworkers = 1\n\
             admin = \"127.0.0.1:0\"\nadmin_token = \"{token}\"\ndata_dir = \"{d}/data\"\n\
             [log]\naccess_log = \"off\"\n\n{}",
            sites.concat()
        )
    };
    let (gh, _http, https) = serve(&config(&[
        files_site("a.example.com", "a.example.com.pem"),
        internal_site("localhost", "one"),
    ]));
    let admin_line = gh.stdout.recv_timeout(Duration::from_secs(5)).unwrap();
    let admin = admin_line.rsplit(' ').next().unwrap().trim_end_matches('/').to_owned();
    let root = std::fs::read_to_string(dir.0.join("data/certs/ca/root.pem")).unwrap();
    let trusted = client_config(&format!("{a}{b}{root}"), &[b"http/1.1"]);

    let tls = connect(https, "a.example.com", trusted.clone()).await.unwrap();
    assert_eq!(get(tls, "a.example.com", "/").await.body, "a.example.com");
    let tls = wait_for_cert(https, "localhost", trusted.clone(), Duration::from_secs(15)).await;
    let localhost_leaf = leaf_der(&tls);
    assert!(connect(https, "b.example.com", trusted.clone()).await.is_err());

    // Site a goes, site b and an internal site come: served as soon as the reload answers
    // (b) or once issued (new.localhost); the unchanged site keeps its certificate.
    let sites = config(&[
        files_site("b.example.com", "b.example.com.pem"),
        internal_site("localhost", "two"),
        internal_site("new.localhost", "new"),
    ]);
    let reply = reload_with(&gh, &sites, &admin, token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let tls = connect(https, "b.example.com", trusted.clone()).await.unwrap();
    assert_eq!(leaf_names(&tls), vec!["b.example.com".to_owned()]);
    assert_eq!(get(tls, "b.example.com", "/").await.body, "b.example.com");
    assert!(
        connect(https, "a.example.com", trusted.clone()).await.is_err(),
        "a removed site's certificate is no longer served"
    );
    let tls = connect(https, "localhost", trusted.clone()).await.unwrap();
    assert!(
        leaf_der(&tls) == localhost_leaf,
        "an unchanged site keeps its certificate"
    );
    assert_eq!(get(tls, "localhost", "/").await.body, "two");
    let tls = wait_for_cert(https, "new.localhost", trusted.clone(), Duration::from_secs(15)).await;
    assert_eq!(leaf_names(&tls), vec!["new.localhost".to_owned()]);
    assert_eq!(get(tls, "new.localhost", "/").await.body, "new");

    // The admin API lists what is served now, with days to expiry.
    let auth = format!("Bearer {token}");
    let view = gatehouse_testkit::client::get(&format!("{admin}/certificates"), &[("authorization", &auth)]).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.text());
    let v: serde_json::Value = serde_json::from_slice(&view.body).unwrap();
    let served: Vec<(&str, i64)> = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["days_left"].as_i64().unwrap()))
        .collect();
    let names: Vec<&str> = served.iter().map(|c| c.0).collect();
    assert_eq!(names, ["b.example.com", "localhost", "new.localhost"], "{v}");
    // Internal leaves live 7 days; rcgen's self-signed default runs for decades.
    assert!((6..=7).contains(&served[1].1) && (6..=7).contains(&served[2].1), "{v}");
    assert!(served[0].1 > 365, "{v}");
    assert!(
        v["certificates"][1]["not_after"].as_str().unwrap().ends_with('Z'),
        "{v}"
    );

    // A certificate file that cannot be read refuses the whole reload, with the site
    // and the file named; everything keeps serving as before.
    let sites = config(&[
        files_site("b.example.com", "missing.pem"),
        internal_site("localhost", "three"),
        internal_site("new.localhost", "new"),
    ]);
    let reply = reload_with(&gh, &sites, &admin, token).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    let text = reply.text();
    assert!(
        text.contains("b.example.com")
            && text.contains("cannot load its certificate files")
            && text.contains("missing.pem"),
        "{text}"
    );
    let tls = connect(https, "b.example.com", trusted.clone()).await.unwrap();
    assert_eq!(get(tls, "b.example.com", "/").await.body, "b.example.com");
    let tls = connect(https, "localhost", trusted.clone()).await.unwrap();
    assert_eq!(
        get(tls, "localhost", "/").await.body,
        "two",
        "the refused config did not apply"
    );
}

/// The internal-CA config with `header_timeout = "1s"`, served from a data
/// directory in a new temporary directory named `name`: the directory (kept
/// alive by the caller), the process, its HTTPS address and the CA's root.
fn serve_internal_with_1s_header_timeout(name: &str) -> (TempDir, Process, SocketAddr, String) {
    let dir = TempDir::new(name);
    let data = dir.0.join("data");
    let toml = INTERNAL.replace("DATA", data.to_str().unwrap()) + "\n[limits]\nheader_timeout = \"1s\"\n";
    let (gh, _http, https) = serve(&toml);
    let root = std::fs::read_to_string(data.join("certs/ca/root.pem")).unwrap();
    (dir, gh, https, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_that_sends_nothing_is_closed_after_header_timeout() {
    use tokio::io::AsyncReadExt;
    let (_dir, _gh, https, root) = serve_internal_with_1s_header_timeout("gh-https-idle");
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let config = client_config(&root, &[alpn]);
        let mut tls = wait_for_cert(https, "localhost", config, Duration::from_secs(15)).await;
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
        let waited = started.elapsed();
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "{alpn:?}: the idle connection was not closed: {read:?}"
        );
        assert!(
            waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
            "{alpn:?}: closed after {waited:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_serves_plain_requests_hands_bodies_over_and_times_out_heads() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, _gh, https, root) = serve_internal_with_1s_header_timeout("gh-https-h1");
    let config = client_config(&root, &[b"http/1.1"]);
    // Two plain requests, then one with a body (served after the hand-over),
    // on one connection.
    let mut tls = wait_for_cert(https, "localhost", config.clone(), Duration::from_secs(15)).await;
    tls.write_all(
        b"GET /a HTTP/1.1\r\nhost: localhost\r\n\r\nHEAD /b HTTP/1.1\r\nhost: localhost\r\n\r\n\
          POST /c HTTP/1.1\r\nhost: localhost\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut all)).await;
    assert!(read.is_ok(), "the connection closed after the last answer");
    let all = String::from_utf8_lossy(&all);
    assert_eq!(all.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{all}");
    assert_eq!(
        all.matches("hello over tls").count(),
        2,
        "a body for GET and POST, none for HEAD: {all}"
    );
    assert!(all.contains("content-length: 14\r\n"), "{all}");

    // A head not finished within header_timeout gets 408, as on plain HTTP.
    let mut tls = wait_for_cert(https, "localhost", config, Duration::from_secs(15)).await;
    let started = Instant::now();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: loc").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_over_tls_reaches_a_slow_reader_whole() {
    use gatehouse_testkit::upstream::{Behavior, Upstream};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 2 << 20;
    let up = Upstream::start(Behavior::Generate(SIZE as u64)).await;
    let dir = TempDir::new("gh-https-big");
    let data = dir.0.join("data");
    let toml = INTERNAL.replace("DATA", data.to_str().unwrap()).replace(
        "respond = { body = \"hello over tls\" }",
        &format!("respond = {{ body = \"hello over tls\" }}\n[[site.route]]\npath = \"/big\"\nupstream = \"app\"\n\n[upstream.app]\ntargets = [\"{}\"]", up.addr),
    );
    let (_gh, _http, https) = serve(&toml);
    let root = std::fs::read_to_string(data.join("certs/ca/root.pem")).unwrap();
    let config = client_config(&root, &[b"http/1.1"]);
    drop(wait_for_cert(https, "localhost", config.clone(), Duration::from_secs(15)).await);
    // A small receive window, read slowly: the server's writes keep meeting a
    // full socket, and the connection stays open after the answer (nothing
    // but a flush sends TLS records left over from a write; front.rs's unit
    // tests check that flush directly).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(https).await.unwrap();
    let name = ServerName::try_from("localhost".to_owned()).unwrap();
    let mut tls = TlsConnector::from(config).connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /big HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let body_start = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut chunk))
            .await
            .expect("the head in time")
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..body_start]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {SIZE}")), "{head}");
    while got.len() - body_start < SIZE {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("stalled after {} of {SIZE} body bytes", got.len() - body_start))
            .unwrap();
        assert!(n > 0, "closed after {} of {SIZE} body bytes", got.len() - body_start);
        got.extend_from_slice(&chunk[..n]);
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert_eq!(got.len() - body_start, SIZE, "nothing after the body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_over_tls_is_closed_with_a_goaway() {
    let (_dir, _gh, https, root) = serve_internal_with_1s_header_timeout("gh-https-h2-idle");
    let tls = wait_for_cert(
        https,
        "localhost",
        client_config(&root, &[b"h2"]),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("https://localhost/").body(Empty::<Bytes>::new()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        &resp.into_body().collect().await.unwrap().to_bytes()[..],
        b"hello over tls"
    );
    // Idle from here: a GOAWAY between one and two periods later, and the
    // connection ends cleanly (one cut off without it ends in an error).
    let idle_since = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle connection was closed")
        .unwrap()
        .expect("closed with a GOAWAY");
    let waited = idle_since.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
}

/// The leaf's IPv4-address subjectAltNames.
fn leaf_ips(tls: &Tls) -> Vec<String> {
    leaf_sans(tls, |name| match name {
        x509_parser::extensions::GeneralName::IPAddress(ip) => <[u8; 4]>::try_from(*ip)
            .ok()
            .map(|v4| std::net::Ipv4Addr::from(v4).to_string()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_sni_get_the_ip_sites_or_the_default_sni_certificate() {
    let dir = TempDir::new("gh-https-nosni");
    let data = dir.0.join("data");
    let d = data.display();
    let config = |extra: &str| {
        format!(
            "[server]\nhttp = [\"127.0.0.1:0\"]\nhttps = [\"127.0.0.1:0\"]\nworkers = 1\ndata_dir = \"{d}\"\n\
             [log]\naccess_log = \"off\"\n{extra}\n\
             [[site]]\nhosts = [\"localhost\"]\nroute = [{{ path = \"/\", respond = {{ body = \"by name\" }} }}]\n\
             [[site]]\nhosts = [\"127.0.0.1\"]\nroute = [{{ path = \"/\", respond = {{ body = \"by address\" }} }}]\n"
        )
    };

    // An IP-address site (internal CA by default): clients never send SNI for an
    // address, and get its certificate.
    let (gh, _http, https) = serve(&config(""));
    let root = std::fs::read_to_string(data.join("certs/ca/root.pem")).unwrap();
    let client = client_config(&root, &[b"http/1.1"]);
    let tls = wait_for_cert(https, "127.0.0.1", client.clone(), Duration::from_secs(15)).await;
    assert_eq!(leaf_ips(&tls), vec!["127.0.0.1".to_owned()]);
    assert_eq!(get(tls, "127.0.0.1", "/").await.body, "by address");
    // The connection is held to that name: another site's Host gets 421.
    let tls = connect(https, "127.0.0.1", client.clone()).await.unwrap();
    assert_eq!(get(tls, "localhost", "/").await.status, StatusCode::MISDIRECTED_REQUEST);
    drop(gh);

    // `[tls] default_sni` picks the certificate instead: a client that sends no SNI
    // (SNI off, verifying the name itself) gets localhost's.
    let (_gh, _http, https) = serve(&config("[tls]\ndefault_sni = \"localhost\"\n"));
    let mut no_sni = (*client_config(&root, &[b"http/1.1"])).clone();
    no_sni.enable_sni = false;
    let no_sni = Arc::new(no_sni);
    let tls = wait_for_cert(https, "localhost", no_sni.clone(), Duration::from_secs(15)).await;
    assert_eq!(leaf_names(&tls), vec!["localhost".to_owned()]);
    assert_eq!(get(tls, "localhost", "/").await.body, "by name");
    let tls = connect(https, "localhost", no_sni).await.unwrap();
    assert_eq!(get(tls, "127.0.0.1", "/").await.status, StatusCode::MISDIRECTED_REQUEST);
    // Clients that send SNI are unaffected.
    let tls = connect(https, "localhost", client).await.unwrap();
    assert_eq!(get(tls, "localhost", "/").await.body, "by name");
}
