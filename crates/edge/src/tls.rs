//! HTTPS on the edge: TLS handshakes on the HTTPS listeners, and the per-site
//! HTTPS rules of the request path (ACME HTTP-01 answers, redirects to
//! `https://`, HSTS, the Host/SNI check).
//!
//! Certificates are not chosen here: the rustls config comes from
//! `gatehouse_tls::server_config`, whose resolver the binary keeps filled.
//!
//! A TLS connection's life: accept → handshake (bounded by `limits.header_timeout`;
//! with on-demand TLS the ClientHello is read first, so a certificate can be
//! obtained for its name) → a validation handshake for ACME TLS-ALPN-01 is closed
//! at once → HTTP/2 if ALPN chose `h2` (hyper), else HTTP/1.1 (`front.rs`, then
//! hyper from the first request it hands over) → `Worker::handle`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use gatehouse_config::{Config, SniMismatch};
use gatehouse_tls::{ACME_TLS_ALPN, CertManager, CertResolver, Challenges, HTTP01_PREFIX};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::server::Acceptor;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};

use crate::EdgeError;
use crate::body::{ResponseBody, client_body};
use crate::drain::Entered;
use crate::forwarding::PeerInfo;
use crate::front::{self, Ended, REQUEST_TIMEOUT_RESPONSE, Replay};
use crate::handler::{ConnCtx, Worker, local_error};
use crate::idle::Activity;
use crate::router::Router;

/// What the edge needs to serve HTTPS: the rustls config (with the certificate
/// resolver), the ACME challenge answers, and optionally the certificate manager
/// for on-demand certificates. Built by the binary, handed to
/// [`BoundServer::with_tls`](crate::BoundServer::with_tls).
#[derive(Clone)]
pub struct TlsRuntime {
    config: Arc<ServerConfig>,
    resolver: Arc<CertResolver>,
    challenges: Arc<Challenges>,
    on_demand: Option<Arc<CertManager>>,
}

impl std::fmt::Debug for TlsRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRuntime")
            .field("on_demand", &self.on_demand.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsRuntime {
    /// TLS for the HTTPS listeners with certificates from `resolver`, answering
    /// ACME HTTP-01 challenges from `challenges` on the plain-HTTP listeners.
    pub fn new(resolver: Arc<CertResolver>, challenges: Arc<Challenges>) -> Result<Self, EdgeError> {
        let config = gatehouse_tls::server_config(resolver.clone()).map_err(EdgeError::Tls)?;
        Ok(Self {
            config: Arc::new(config),
            resolver,
            challenges,
            on_demand: None,
        })
    }

    /// Obtains certificates for unknown names at their first handshake, as the
    /// manager's on-demand policy allows.
    pub fn with_on_demand(mut self, manager: Arc<CertManager>) -> Self {
        self.on_demand = Some(manager);
        self
    }

    /// The challenge answers for the plain-HTTP listeners.
    pub(crate) fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }
}

/// One worker's TLS acceptor.
pub(crate) struct WorkerTls {
    runtime: TlsRuntime,
    acceptor: TlsAcceptor,
}

/// A TCP connection accepted on an HTTPS listener.
pub(crate) struct Accepted {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) peer_info: PeerInfo,
}

impl WorkerTls {
    pub(crate) fn new(runtime: TlsRuntime) -> Self {
        Self {
            acceptor: TlsAcceptor::from(runtime.config.clone()),
            runtime,
        }
    }

    /// The handshake; with on-demand TLS, first reads the ClientHello and lets the
    /// manager obtain a certificate for a name it has none for.
    async fn handshake(&self, stream: TcpStream) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let Some(manager) = &self.runtime.on_demand else {
            return self.acceptor.accept(stream).await;
        };
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
        let hello = start.client_hello();
        // A TLS-ALPN-01 validation is answered by the resolver, never ordered.
        let validation = hello.alpn().is_some_and(|mut a| a.any(|p| p == ACME_TLS_ALPN));
        if let (Some(name), false) = (hello.server_name().map(str::to_owned), validation) {
            if let Err(e) = manager.ensure_on_demand(&name).await {
                // The handshake then fails for want of a certificate: a clean alert.
                tracing::debug!(%name, error = %e, "No on-demand certificate.");
            }
        }
        start.into_stream(self.runtime.config.clone()).await
    }
}

/// Buffer for a connection's first decrypted bytes (see [`serve_connection`]).
/// Smaller than the reads hyper makes into its own buffer (8 KiB and up), so
/// once it is drained later reads bypass it without a copy.
const FIRST_READ_BUFFER: usize = 4 * 1024;

/// How long ending a TLS session (sending close_notify) may take once the
/// HTTP/1.1 loop is done with it.
const TLS_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves one accepted HTTPS connection until it ends. A failed or slow handshake,
/// or no request bytes within `header_timeout` after it, is logged at debug level
/// and the connection closed.
/// The HTTP settings are those of the generation current at accept (HTTP/2
/// when ALPN chose `h2`, else HTTP/1.1, which never switches to HTTP/2); each
/// request uses the generation current when it arrives.
pub(crate) async fn serve_connection(
    tls: Arc<WorkerTls>,
    accepted: Accepted,
    limits: front::Limits,
    current: Arc<ArcSwap<Worker>>,
    (builder, http1): (Arc<auto::Builder<TokioExecutor>>, Arc<http1::Builder>),
    mut entered: Entered,
) {
    let Accepted {
        stream,
        peer,
        peer_info,
    } = accepted;
    let header_timeout = limits.header_timeout;
    let handshake = tokio::select! {
        hs = tokio::time::timeout(header_timeout, tls.handshake(stream)) => hs,
        () = entered.stopped() => return,
    };
    let stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed.");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, timeout = ?header_timeout, "TLS handshake timed out.");
            return;
        }
    };
    let session = stream.get_ref().1;
    let alpn = session.alpn_protocol();
    if alpn == Some(ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation: the handshake was the whole exchange.
        return;
    }
    let http2 = alpn == Some(b"h2");
    // Without SNI the client got the fallback name's certificate: the Host
    // check holds it to that name.
    let sni = match session.server_name() {
        Some(s) => Some(s.trim_end_matches('.').to_ascii_lowercase().into()),
        None => tls
            .runtime
            .resolver
            .fallback_name()
            .map(|name| match name.parse::<std::net::Ipv6Addr>() {
                Ok(_) => format!("[{name}]").into(),
                Err(_) => name.into(),
            }),
    };
    // Like the plain-HTTP listeners: a client that completes the handshake and
    // then sends nothing is closed after `header_timeout` (hyper's head timeout
    // only starts with the first byte). The first bytes are read through a small
    // buffer, which hyper's larger reads bypass afterwards.
    let mut stream = BufReader::with_capacity(FIRST_READ_BUFFER, stream);
    let first = tokio::select! {
        read = tokio::time::timeout(header_timeout, stream.fill_buf()) => match read {
            Ok(Ok(bytes)) => !bytes.is_empty(),
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::debug!(%peer, timeout = ?header_timeout, "TLS connection sent no request in time.");
                false
            }
        },
        () = entered.stopped() => false,
    };
    if !first {
        return;
    }
    let activity = http2.then(|| Arc::new(Activity::default()));
    let mut ctx = ConnCtx::new(peer_info, "https").with_sni(sni);
    ctx.activity.clone_from(&activity);
    let conn = Arc::new(ctx);
    let service_conn = conn.clone();
    let service_current = current.clone();
    let service = service_fn(move |req| {
        let worker = service_current.load_full();
        let conn = service_conn.clone();
        async move { Ok::<_, Infallible>(worker.handle(conn, req.map(client_body)).await) }
    });
    let error = if http2 {
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let ended = entered.serve(connection, activity.map(|a| (a, header_timeout))).await;
        if ended.idle {
            tracing::debug!(%peer, "Idle HTTP/2 connection closed.");
        }
        ended.output.and_then(Result::err)
    } else {
        // As on plain HTTP: gatehouse's own loop first, hyper from the first
        // request it hands over.
        let served = front::serve_draining(&mut stream, &limits, &mut entered, |req| {
            let worker = current.load_full();
            worker.handle_passing(conn.clone(), req)
        })
        .await;
        let read = match served {
            Some(Ended::HandOff(read)) => read,
            Some(Ended::TimedOut { served: 0 }) => {
                let _ = stream.write_all(REQUEST_TIMEOUT_RESPONSE).await;
                let _ = stream.shutdown().await;
                return;
            }
            Some(_) => {
                // Idle, drained or closed by a response: end the TLS session
                // properly (close_notify), briefly.
                let _ = tokio::time::timeout(TLS_CLOSE_WAIT, stream.shutdown()).await;
                return;
            }
            // The drain's deadline passed: no waiting.
            None => return,
        };
        let connection = http1
            .serve_connection(TokioIo::new(Replay::new(read, stream)), service)
            .with_upgrades();
        let ended = entered.serve(connection, None).await;
        ended.output.and_then(Result::err).map(Into::into)
    };
    if let Some(e) = error {
        tracing::debug!(%peer, error = %e, "Client connection ended with an error.");
    }
}

/// The HTTPS rules of each site, indexed like `Config::sites`.
#[derive(Default)]
pub(crate) struct SitesTls {
    /// False without a TLS runtime: then nothing here applies.
    active: bool,
    sites: Vec<SiteRules>,
    /// The port `https://` redirects name (omitted when 443).
    https_port: Option<u16>,
    sni_mismatch: SniMismatch,
    challenges: Option<Arc<Challenges>>,
}

struct SiteRules {
    redirect: bool,
    hsts: Option<HeaderValue>,
}

impl SitesTls {
    pub(crate) fn new(config: &Config, https_port: Option<u16>, runtime: Option<&TlsRuntime>) -> Self {
        let sites = config
            .sites
            .iter()
            .map(|s| SiteRules {
                redirect: s.redirect_https && https_port.is_some(),
                hsts: s
                    .hsts
                    .and_then(|age| HeaderValue::from_str(&format!("max-age={}", age.as_secs())).ok()),
            })
            .collect();
        Self {
            active: runtime.is_some(),
            sites,
            https_port,
            sni_mismatch: config.tls.sni_mismatch,
            challenges: runtime.map(|r| r.challenges().clone()),
        }
    }

    /// Runs before routing. On plain HTTP: answers ACME HTTP-01 challenges and
    /// redirects TLS sites to `https://` (never a challenge path). On HTTPS:
    /// refuses a Host that differs from the SNI name with 421, and sets `hsts` to
    /// the site's `Strict-Transport-Security` value. `Some` is the response to send.
    pub(crate) fn before_routing<B>(
        &self,
        router: &Router,
        conn: &ConnCtx,
        host: Option<&str>,
        req: &Request<B>,
        request_id: &HeaderValue,
        hsts: &mut Option<HeaderValue>,
    ) -> Option<Response<ResponseBody>> {
        if !self.active {
            return None;
        }
        let site = router.site(host).and_then(|i| self.sites.get(i));
        if conn.proto == "http" {
            let path = req.uri().path();
            if path.starts_with(HTTP01_PREFIX) {
                if let Some(answer) = self.challenges.as_ref().and_then(|c| c.http01_response(path)) {
                    let mut resp = Response::new(ResponseBody::full(answer));
                    resp.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    return Some(resp);
                }
                return None;
            }
            if let (Some(site), Some(host)) = (site, host) {
                if site.redirect {
                    return Some(self.redirect(host, req, request_id));
                }
            }
            return None;
        }
        if self.sni_mismatch == SniMismatch::Refuse {
            if let (Some(sni), Some(host)) = (conn.sni.as_deref(), host) {
                if sni != host {
                    return Some(local_error(
                        StatusCode::MISDIRECTED_REQUEST,
                        "the Host header does not match the TLS server name",
                        request_id,
                    ));
                }
            }
        }
        *hsts = site.and_then(|s| s.hsts.clone());
        None
    }

    /// 308 to the same host, path and query over HTTPS.
    fn redirect<B>(&self, host: &str, req: &Request<B>, request_id: &HeaderValue) -> Response<ResponseBody> {
        let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = match self.https_port {
            Some(443) | None => format!("https://{host}{pq}"),
            Some(port) => format!("https://{host}:{port}{pq}"),
        };
        match HeaderValue::from_str(&location) {
            Ok(v) => {
                let mut resp = Response::new(ResponseBody::empty());
                *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
                resp.headers_mut().insert(header::LOCATION, v);
                resp
            }
            Err(_) => local_error(StatusCode::BAD_REQUEST, "cannot build redirect location", request_id),
        }
    }
}
