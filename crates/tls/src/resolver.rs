//! SNI → certificate, and the rustls server configuration around it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedCipherSuite};

use crate::challenges::ACME_TLS_ALPN;
use crate::{Challenges, LoadedCert, TlsError, Validity};

/// Sessions kept for ID-based resumption (TLS 1.2 clients without tickets). Each entry
/// is a few hundred bytes, so this bounds the cache to a few MiB while covering many
/// thousands of returning clients.
pub const SESSION_CACHE_SIZE: usize = 16_384;

/// One served certificate.
#[derive(Debug, Clone)]
struct Entry {
    key: Arc<CertifiedKey>,
    validity: Validity,
}

/// A certificate's expiry, for metrics and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    /// The host name (or `*.` wildcard) the certificate is served for.
    pub name: String,
    /// End of validity.
    pub not_after: SystemTime,
    /// Whole days left (negative once expired).
    pub days_left: i64,
}

/// Picks the certificate for each handshake from the SNI name.
///
/// Lookup is exact first, then the one-label wildcard (`a.example.com` → `*.example.com`).
/// Names are matched case-insensitively and without a trailing dot. A name without a
/// certificate gets `None`, which rustls turns into a clean `unrecognized_name`-style
/// handshake failure — never another site's certificate.
///
/// The table is an immutable map behind an [`ArcSwap`]: handshakes read it without
/// locks; [`CertResolver::set`] and [`CertResolver::remove`] publish a new map (copy on
/// write — writes are rare: issuance, renewal, reload).
///
/// A ClientHello whose only ALPN protocol is `acme-tls/1` is a TLS-ALPN-01 validation:
/// it is answered from [`Challenges`] only, never with a real certificate.
#[derive(Debug)]
pub struct CertResolver {
    certs: ArcSwap<HashMap<String, Entry>>,
    /// The name whose certificate answers handshakes without SNI.
    fallback: ArcSwap<Option<String>>,
    challenges: Arc<Challenges>,
}

impl CertResolver {
    /// An empty resolver answering TLS-ALPN-01 validations from `challenges`.
    pub fn new(challenges: Arc<Challenges>) -> Self {
        Self {
            certs: ArcSwap::from_pointee(HashMap::new()),
            fallback: ArcSwap::from_pointee(None),
            challenges,
        }
    }

    /// Serves `cert` for `name` (a host name or `*.` wildcard), replacing any previous one.
    /// Handshakes already in progress keep the certificate they picked.
    pub fn set(&self, name: &str, cert: &LoadedCert) {
        let name = normalize(name);
        let entry = Entry {
            key: cert.key.clone(),
            validity: cert.validity,
        };
        self.certs.rcu(|old| {
            let mut map = HashMap::clone(old);
            map.insert(name.clone(), entry.clone());
            map
        });
    }

    /// Stops serving a certificate for `name`; `true` if there was one.
    pub fn remove(&self, name: &str) -> bool {
        let name = normalize(name);
        let mut removed = false;
        self.certs.rcu(|old| {
            let mut map = HashMap::clone(old);
            removed = map.remove(&name).is_some();
            map
        });
        removed
    }

    /// Answers handshakes without SNI (clients connecting by IP address send
    /// none) with the certificate served for `name` at that moment, so it
    /// follows renewals; `None` makes such handshakes fail.
    pub fn set_fallback_name(&self, name: Option<&str>) {
        self.fallback.store(Arc::new(name.map(normalize)));
    }

    /// The name whose certificate answers handshakes without SNI.
    pub fn fallback_name(&self) -> Option<String> {
        self.fallback.load().as_ref().clone()
    }

    /// The certificate that would be served for `sni`.
    pub fn lookup(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        self.lookup_entry(sni).map(|e| e.key)
    }

    /// Whether a certificate is served for exactly `name` (no wildcard fallback).
    pub fn contains(&self, name: &str) -> bool {
        self.certs.load().contains_key(&normalize(name))
    }

    /// The validity of the certificate served for exactly `name`.
    pub fn validity(&self, name: &str) -> Option<Validity> {
        self.certs.load().get(&normalize(name)).map(|e| e.validity)
    }

    /// Every served name with its expiry at `now`, sorted by name.
    pub fn expiries(&self, now: SystemTime) -> Vec<CertExpiry> {
        let map = self.certs.load();
        let mut out: Vec<_> = map
            .iter()
            .map(|(name, e)| CertExpiry {
                name: name.clone(),
                not_after: e.validity.not_after,
                days_left: e.validity.days_left(now),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn lookup_entry(&self, sni: &str) -> Option<Entry> {
        let name = normalize(sni);
        let map = self.certs.load();
        if let Some(e) = map.get(&name) {
            return Some(e.clone());
        }
        let (_, parent) = name.split_once('.')?;
        // `*.com`-style wildcards are never configured, but a parent must still be a name.
        if parent.is_empty() {
            return None;
        }
        map.get(&format!("*.{parent}")).cloned()
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        let acme_only = hello
            .alpn()
            .map(|mut protocols| protocols.all(|p| p == ACME_TLS_ALPN))
            .unwrap_or(false);
        if acme_only {
            let cert = self.challenges.tls_alpn01_cert(&normalize(sni?));
            tracing::debug!(
                sni = sni.unwrap_or(""),
                found = cert.is_some(),
                "TLS-ALPN-01 validation handshake."
            );
            return cert;
        }
        match sni {
            Some(sni) => self.lookup(sni),
            None => self.fallback.load().as_deref().and_then(|name| self.lookup(name)),
        }
    }
}

/// The cipher suites offered: AEAD only (AES-GCM and ChaCha20-Poly1305), forward secret
/// (ECDHE), in rustls's order of preference. rustls has no CBC, RC4 or 3DES suites at all;
/// listing them here makes the policy explicit and independent of provider defaults.
pub fn cipher_suites() -> Vec<SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

/// The rustls configuration for HTTPS listeners.
///
/// TLS 1.3 and 1.2 only, the suites of [`cipher_suites`] in the server's order, ALPN `h2`, `http/1.1` (and
/// `acme-tls/1`, which only a validation handshake can select: the resolver answers it
/// with a challenge certificate or not at all), resumption by tickets (rotating keys,
/// shared by every connection using this config) and by session ID ([`SESSION_CACHE_SIZE`]).
///
/// A connection that negotiated `acme-tls/1` (see `ServerConnection::alpn_protocol`)
/// has done its job once the handshake completes; the edge closes it without reading.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<ServerConfig, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = cipher_suites();
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls {
            what: "TLS server configuration".into(),
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    // Every suite offered is strong, but the server's order (AES-256 first) is the
    // policy: a client listing a weaker preference first does not get to pick it.
    config.ignore_client_order = true;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|source| TlsError::Rustls {
        what: "TLS session ticketer".into(),
        source,
    })?;
    Ok(config)
}
