//! SNI selection, protocol versions, ALPN, resumption and the internal CA, over sockets.

use std::process::Command;
use std::sync::Arc;

use rustls::version::{TLS12, TLS13};

use crate::common::{TempDir, TlsServer, client_config, dns_names, handshake, resolver_with_internal_certs};

#[tokio::test]
async fn sni_selects_among_names_and_refuses_unknown() {
    let dir = TempDir::new("tls-sni");
    let (resolver, ca) = resolver_with_internal_certs(&dir.0, &["a.test", "b.test", "*.wild.test"]);
    let server = TlsServer::start(resolver.clone()).await;
    let client = client_config(ca.root_pem(), &[&TLS13, &TLS12], &[b"h2", b"http/1.1"]);

    for (sni, expected) in [
        ("a.test", "a.test"),
        ("b.test", "b.test"),
        ("x.wild.test", "*.wild.test"),
        ("B.TEST", "b.test"),
    ] {
        let hs = handshake(server.addr, sni, client.clone()).await.unwrap();
        assert_eq!(dns_names(&hs.leaf), vec![expected.to_owned()], "{sni}");
        assert_eq!(hs.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(hs.version, rustls::ProtocolVersion::TLSv1_3);
    }

    // No certificate: a handshake failure, never another site's certificate.
    for sni in ["c.test", "deep.x.wild.test", "wild.test"] {
        assert!(handshake(server.addr, sni, client.clone()).await.is_err(), "{sni}");
    }

    // Hot swap: a new certificate for a.test is served by the next full handshake (a
    // fresh client, so no session is resumed).
    let fresh = || client_config(ca.root_pem(), &[&TLS13], &[]);
    let before = handshake(server.addr, "a.test", fresh()).await.unwrap().leaf;
    let pem = ca.issue(&["a.test".into()], std::time::SystemTime::now()).unwrap();
    resolver.set("a.test", &gatehouse_tls::LoadedCert::from_pem("a.test", &pem).unwrap());
    let after = handshake(server.addr, "a.test", fresh()).await.unwrap().leaf;
    assert_ne!(before, after);
    assert!(resolver.remove("a.test"));
    assert!(handshake(server.addr, "a.test", fresh()).await.is_err());
}

/// Clients connecting by IP address send no SNI; they get the certificate of the
/// fallback name as it is when they connect, and without one the handshake fails.
#[tokio::test]
async fn no_sni_gets_the_fallback_names_certificate() {
    let dir = TempDir::new("tls-no-sni");
    let (resolver, ca) = resolver_with_internal_certs(&dir.0, &["a.test"]);
    let server = TlsServer::start(resolver.clone()).await;
    let client = client_config(ca.root_pem(), &[&TLS13], &[]);
    assert!(handshake(server.addr, "127.0.0.1", client.clone()).await.is_err());

    // Named before its certificate exists: still no certificate.
    resolver.set_fallback_name(Some("127.0.0.1"));
    assert_eq!(resolver.fallback_name().as_deref(), Some("127.0.0.1"));
    assert!(handshake(server.addr, "127.0.0.1", client.clone()).await.is_err());

    let issue = || {
        let pem = ca.issue(&["127.0.0.1".into()], std::time::SystemTime::now()).unwrap();
        gatehouse_tls::LoadedCert::from_pem("127.0.0.1", &pem).unwrap()
    };
    let loaded = issue();
    assert_eq!(loaded.names, vec!["127.0.0.1".to_owned()]);
    resolver.set("127.0.0.1", &loaded);
    // Fresh clients, so no session is resumed.
    let fresh = || client_config(ca.root_pem(), &[&TLS13], &[]);
    let first = handshake(server.addr, "127.0.0.1", fresh()).await.unwrap().leaf;
    assert_eq!(first.as_ref(), loaded.key.cert[0].as_ref());
    // A renewal is served to clients without SNI at once.
    resolver.set("127.0.0.1", &issue());
    let renewed = handshake(server.addr, "127.0.0.1", fresh()).await.unwrap().leaf;
    assert_ne!(first, renewed);

    resolver.set_fallback_name(None);
    assert!(handshake(server.addr, "127.0.0.1", client).await.is_err());
}

#[tokio::test]
async fn tls12_works_http11_alpn_and_resumption() {
    let dir = TempDir::new("tls-versions");
    let (resolver, ca) = resolver_with_internal_certs(&dir.0, &["a.test"]);
    let server = TlsServer::start(resolver).await;

    let tls12 = client_config(ca.root_pem(), &[&TLS12], &[b"http/1.1"]);
    let hs = handshake(server.addr, "a.test", tls12.clone()).await.unwrap();
    assert_eq!(hs.version, rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(hs.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(!hs.resumed);
    // The client kept a session (ticket or ID); the second handshake resumes it.
    assert!(handshake(server.addr, "a.test", tls12).await.unwrap().resumed);

    let tls13 = client_config(ca.root_pem(), &[&TLS13], &[]);
    handshake(server.addr, "a.test", tls13.clone()).await.unwrap();
    assert!(handshake(server.addr, "a.test", tls13).await.unwrap().resumed);
}

#[test]
fn server_config_policy() {
    let resolver = Arc::new(gatehouse_tls::CertResolver::new(Arc::new(
        gatehouse_tls::Challenges::new(),
    )));
    let config = gatehouse_tls::server_config(resolver).unwrap();
    for suite in gatehouse_tls::cipher_suites() {
        let name = format!("{:?}", suite.suite());
        assert!(name.contains("GCM") || name.contains("CHACHA20_POLY1305"), "{name}");
        assert!(!name.contains("CBC"), "{name}");
    }
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"acme-tls/1".to_vec()]
    );
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok() || Command::new(program).arg("version").output().is_ok()
}

/// Old protocol versions and CBC suites are refused, as seen by OpenSSL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_old_versions_and_cbc_refused() {
    if !have("openssl") {
        println!("skipped: openssl is not installed");
        return;
    }
    let dir = TempDir::new("tls-openssl");
    let (resolver, ca) = resolver_with_internal_certs(&dir.0, &["a.test"]);
    let server = TlsServer::start(resolver).await;
    let root = dir.0.join("root.pem");
    std::fs::write(&root, ca.root_pem()).unwrap();
    let connect = format!("127.0.0.1:{}", server.addr.port());
    let run = move |args: Vec<&'static str>| {
        let connect = connect.clone();
        let root = root.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("openssl")
                .args(["s_client", "-connect", &connect, "-servername", "a.test", "-CAfile"])
                .arg(&root)
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        })
    };
    let (ok, out) = run(vec!["-tls1_2"]).await.unwrap();
    assert!(ok && out.contains("Verify return code: 0 (ok)"), "{out}");
    for old in ["-tls1", "-tls1_1"] {
        // SECLEVEL=0 lets OpenSSL 3 offer TLS 1.0/1.1 at all, so the refusal is the server's.
        let (ok, out) = run(vec![old, "-cipher", "DEFAULT:@SECLEVEL=0"]).await.unwrap();
        assert!(
            !ok && out.contains(" alert "), // handshake_failure or protocol_version
            "{old} was not refused: {out}"
        );
    }
    let (ok, out) = run(vec![
        "-tls1_2",
        "-cipher",
        "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA256",
    ])
    .await
    .unwrap();
    assert!(
        !ok && out.contains("alert handshake failure"),
        "a CBC suite was not refused: {out}"
    );
}

/// curl, with only the internal CA's root trusted, accepts the leaf for localhost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_trusts_internal_ca_leaf() {
    if !have("curl") {
        println!("skipped: curl is not installed");
        return;
    }
    let dir = TempDir::new("tls-curl");
    let (resolver, ca) = resolver_with_internal_certs(&dir.0, &["localhost", "dev.test"]);
    let server = TlsServer::start(resolver).await;
    let root = ca.root_path();
    assert!(root.is_file());
    let port = server.addr.port();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--fail", "--http1.1", "--max-time", "10", "--cacert"])
            .arg(&root)
            .args(["--resolve", &format!("dev.test:{port}:127.0.0.1")])
            .arg(format!("https://dev.test:{port}/"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"ok");
}
