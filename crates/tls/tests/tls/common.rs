//! Helpers: temp directories, a TLS server on the resolver, rustls clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use gatehouse_tls::{CertResolver, Challenges, InternalCa, LoadedCert};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TLS listener using `gatehouse_tls::server_config(resolver)`, answering every
/// request with `200 ok` and closing. Stops on drop.
pub(crate) struct TlsServer {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsServer {
    pub(crate) async fn start(resolver: Arc<CertResolver>) -> Self {
        Self::start_on("127.0.0.1:0", resolver).await
    }

    pub(crate) async fn start_on(addr: &str, resolver: Arc<CertResolver>) -> Self {
        let config = Arc::new(gatehouse_tls::server_config(resolver).unwrap());
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if tls.get_ref().1.alpn_protocol() == Some(gatehouse_tls::ACME_TLS_ALPN) {
                        // A validation handshake: done once the handshake is.
                        return;
                    }
                    let mut buf = [0u8; 2048];
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tls.read(&mut buf)).await;
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A resolver and the internal CA that issued certificates for `names` (one cert per name).
pub(crate) fn resolver_with_internal_certs(dir: &std::path::Path, names: &[&str]) -> (Arc<CertResolver>, InternalCa) {
    let ca = InternalCa::load_or_create(dir).unwrap();
    let resolver = Arc::new(CertResolver::new(Arc::new(Challenges::new())));
    for name in names {
        let pem = ca.issue(&[name.to_string()], std::time::SystemTime::now()).unwrap();
        resolver.set(name, &LoadedCert::from_pem(name, &pem).unwrap());
    }
    (resolver, ca)
}

pub(crate) fn client_config(
    root_pem: &str,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// What a client saw of a completed handshake.
pub(crate) struct Handshake {
    pub(crate) leaf: CertificateDer<'static>,
    pub(crate) alpn: Option<Vec<u8>>,
    pub(crate) version: rustls::ProtocolVersion,
    pub(crate) resumed: bool,
}

pub(crate) async fn handshake(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>) -> std::io::Result<Handshake> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    let (_, conn) = tls.get_ref();
    let out = Handshake {
        leaf: conn.peer_certificates().unwrap()[0].clone().into_owned(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version().unwrap(),
        resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
    };
    let _ = tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut sink = Vec::new();
    let _ = tls.read_to_end(&mut sink).await;
    Ok(out)
}

/// The DNS names in a certificate's subjectAltName.
pub(crate) fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                out.push((*n).to_owned());
            }
        }
    }
    out
}
