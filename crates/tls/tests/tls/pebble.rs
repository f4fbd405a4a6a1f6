//! Real ACME issuance against Pebble, Let's Encrypt's test server.
//!
//! Needs `pebble` and `pebble-challtestsrv` (Debian package `pebble`). Set
//! `GATEHOUSE_TEST_PEBBLE=1` to use them from `PATH`, or to the path of the `pebble`
//! binary (`pebble-challtestsrv` is looked for beside it, then in `PATH`). Without it the
//! test prints `skipped: …` and passes, unless `CI=true`.
//!
//! Pebble validates HTTP-01 on port 5002 and TLS-ALPN-01 on port 5001 of 127.0.0.1
//! (challtestsrv answers every DNS query with 127.0.0.1), and listens on 14000 (ACME),
//! 15000 (management), 8053 and 8055 (challtestsrv). Those ports are fixed, so everything
//! that needs them runs in this one test function, holding `gatehouse_testkit::pebble::lock()`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_tls::{
    AcmeClient, AcmeConfig, CertEvent, CertManager, CertResolver, CertStore, ChallengeKind, Challenges, FileStore,
    LoadedCert, ManagedCert, ManagerConfig, SystemClock,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::version::{TLS12, TLS13};

use crate::common::{TempDir, TlsServer, client_config, dns_names, handshake};

const DIRECTORY: &str = "https://127.0.0.1:14000/dir";

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pebble and challtestsrv binaries, or `None` (test skipped).
fn binaries() -> Option<(PathBuf, PathBuf)> {
    gatehouse_testkit::pebble::binaries()
}

fn spawn(program: &Path, args: &[&str], env: &[(&str, &str)], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    Child(child)
}

async fn wait_for_port(port: u16, what: &str) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not listen on port {port}");
}

/// Serves HTTP-01 answers from `challenges` on 127.0.0.1:5002, as the edge's HTTP
/// listener will.
async fn http01_server(challenges: Arc<Challenges>) -> tokio::task::JoinHandle<()> {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:5002").await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let challenges = challenges.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let answer = challenges.http01_response(req.uri().path());
                    async move {
                        let response = match answer {
                            Some(body) => hyper::Response::builder()
                                .header("content-type", "text/plain")
                                .body(Full::new(Bytes::from(body))),
                            None => hyper::Response::builder().status(404).body(Full::new(Bytes::new())),
                        };
                        Ok::<_, Infallible>(response.unwrap())
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    })
}

/// GET over HTTPS trusting only `root_pem`; the body as text.
async fn https_get(addr: SocketAddr, path: &str, root_pem: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let config = client_config(root_pem, &[&TLS13, &TLS12], &[b"http/1.1"]);
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_issues_with_http01_and_tls_alpn01() {
    let Some((pebble_bin, challtestsrv_bin)) = binaries() else {
        return;
    };
    // The ports are fixed: one Pebble test at a time on this machine (see crates/gatehouse/tests/https.rs).
    let _lock = gatehouse_testkit::pebble::lock();
    let dir = TempDir::new("tls-pebble");

    // Pebble's own HTTPS certificate.
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let pebble_cert = params.self_signed(&key).unwrap();
    let cert_path = dir.0.join("pebble-cert.pem");
    std::fs::write(&cert_path, pebble_cert.pem()).unwrap();
    std::fs::write(dir.0.join("pebble-key.pem"), key.serialize_pem()).unwrap();
    let pebble_config = |eab_keys: serde_json::Value| {
        let config = serde_json::json!({"pebble": {
            "listenAddress": "127.0.0.1:14000",
            "managementListenAddress": "127.0.0.1:15000",
            "certificate": cert_path,
            "privateKey": dir.0.join("pebble-key.pem"),
            "httpPort": 5002,
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": !eab_keys.is_null(),
            "externalAccountMACKeys": eab_keys,
        }});
        let path = dir.0.join(format!("pebble-{}.json", fastrand::u32(..)));
        std::fs::write(&path, config.to_string()).unwrap();
        path
    };
    let start_pebble = |config: &Path| {
        spawn(
            &pebble_bin,
            &[
                "-config",
                config.to_str().unwrap(),
                "-dnsserver",
                gatehouse_testkit::pebble::DNS_SERVER,
            ],
            gatehouse_testkit::pebble::PEBBLE_ENV,
            &dir.0.join("pebble.log"),
        )
    };

    let _challtestsrv = spawn(
        &challtestsrv_bin,
        gatehouse_testkit::pebble::CHALLTESTSRV_ARGS,
        &[],
        &dir.0.join("challtestsrv.log"),
    );
    let pebble = start_pebble(&pebble_config(serde_json::Value::Null));
    wait_for_port(8055, "pebble-challtestsrv").await;
    wait_for_port(14000, "pebble").await;

    // What the edge will run: HTTP-01 answers on the HTTP listener, the resolver (with
    // its TLS-ALPN-01 answers) on the HTTPS listener.
    let challenges = Arc::new(Challenges::new());
    let resolver = Arc::new(CertResolver::new(challenges.clone()));
    let _http = http01_server(challenges.clone()).await;
    let https = TlsServer::start_on("127.0.0.1:5001", resolver.clone()).await;

    let store = FileStore::new(dir.0.join("certs"));
    let mut acme_config = AcmeConfig {
        directory_url: DIRECTORY.to_owned(),
        contact: vec!["mailto:ops@gatehouse.test".to_owned()],
        ca_root: Some(cert_path.clone()),
        eab: None,
        challenge: ChallengeKind::Http01,
    };
    let acme = AcmeClient::connect(&acme_config, &store, challenges.clone())
        .await
        .unwrap();
    assert!(store.load_account(DIRECTORY).await.unwrap().is_some(), "account stored");
    let again = AcmeClient::connect(&acme_config, &store, challenges.clone())
        .await
        .unwrap();
    assert_eq!(again.account_id(), acme.account_id(), "the stored account is reused");

    // HTTP-01.
    let http_name = "http.test.gatehouse".to_owned();
    let pem = acme.order(std::slice::from_ref(&http_name), None).await.unwrap();
    assert!(
        challenges.is_empty(),
        "challenge responses are withdrawn after the order"
    );
    resolver.set(&http_name, &LoadedCert::from_pem(&http_name, &pem).unwrap());

    // TLS-ALPN-01, with the same stored account.
    acme_config.challenge = ChallengeKind::TlsAlpn01;
    let acme_alpn = AcmeClient::connect(&acme_config, &store, challenges.clone())
        .await
        .unwrap();
    assert_eq!(acme_alpn.account_id(), acme.account_id());
    let alpn_name = "alpn.test.gatehouse".to_owned();
    let pem_alpn = acme_alpn.order(std::slice::from_ref(&alpn_name), None).await.unwrap();
    assert!(challenges.is_empty());
    resolver.set(&alpn_name, &LoadedCert::from_pem(&alpn_name, &pem_alpn).unwrap());

    // Both served certificates chain to Pebble's issuing root.
    let root = https_get("127.0.0.1:15000".parse().unwrap(), "/roots/0", &pebble_cert.pem()).await;
    assert!(root.contains("BEGIN CERTIFICATE"), "{root}");
    let client = client_config(&root, &[&TLS13, &TLS12], &[b"h2", b"http/1.1"]);
    for name in [&http_name, &alpn_name] {
        let hs = handshake(https.addr, name, client.clone()).await.unwrap();
        assert_eq!(dns_names(&hs.leaf), vec![name.clone()]);
    }

    // Renewal information: Pebble releases without ARI answer None, newer ones a window.
    let window = acme.renewal_window(&http_name, &pem.chain_pem).await.unwrap();
    println!("pebble renewal window: {window:?}");

    // The manager orders configured names at startup, stores and serves them.
    let manager = CertManager::start(
        vec![ManagedCert {
            names: vec!["mgr.test.gatehouse".into(), "www.mgr.test.gatehouse".into()],
            issuer: Arc::new(acme),
        }],
        Arc::new(store.clone()),
        resolver.clone(),
        Arc::new(SystemClock),
        ManagerConfig::default(),
    );
    let mut events = manager.subscribe();
    let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
        .await
        .expect("no certificate event within 60 s")
        .unwrap();
    assert_eq!(
        event,
        CertEvent::Obtained {
            name: "mgr.test.gatehouse".into()
        }
    );
    let hs = handshake(https.addr, "www.mgr.test.gatehouse", client).await.unwrap();
    assert_eq!(
        dns_names(&hs.leaf),
        vec!["mgr.test.gatehouse".to_owned(), "www.mgr.test.gatehouse".to_owned()]
    );
    assert!(store.load_cert("mgr.test.gatehouse").await.unwrap().is_some());
    let expiry = manager.expiries();
    assert!(expiry.iter().all(|e| e.days_left > 0), "{expiry:?}");
    drop(manager);

    // External Account Binding: a CA that requires it refuses a plain registration and
    // accepts one bound with the key it handed out.
    drop(pebble);
    let hmac: Vec<u8> = (0..48).map(|_| fastrand::u8(..)).collect();
    let hmac = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, hmac);
    let _pebble = start_pebble(&pebble_config(serde_json::json!({ "kid-gatehouse": hmac })));
    wait_for_port(14000, "pebble (EAB)").await;
    let eab_store = FileStore::new(dir.0.join("certs-eab"));
    acme_config.challenge = ChallengeKind::Http01;
    let refused = AcmeClient::connect(&acme_config, &eab_store, challenges.clone()).await;
    let err = refused.expect_err("registration without EAB must fail").to_string();
    assert!(
        err.contains("externalAccountRequired") || err.contains("external"),
        "{err}"
    );
    acme_config.eab = Some(gatehouse_tls::ExternalAccount {
        kid: "kid-gatehouse".into(),
        hmac_key: hmac,
    });
    let bound = AcmeClient::connect(&acme_config, &eab_store, challenges.clone())
        .await
        .unwrap();
    let eab_name = "eab.test.gatehouse".to_owned();
    bound.order(std::slice::from_ref(&eab_name), None).await.unwrap();
}
