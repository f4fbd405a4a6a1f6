//! ACME (RFC 8555) issuance with instant-acme: the account, one order at a time per
//! call, HTTP-01 or TLS-ALPN-01 answered through [`Challenges`], and RFC 9773 renewal
//! information.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::sign::CertifiedKey;

use crate::pem::parse_chain;
use crate::schedule::RenewalWindow;
use crate::{CertPem, CertStore, Challenges, TlsError};

/// Let's Encrypt's production directory, the default when ACME is on.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How long to wait for the CA to validate challenges and to issue. Let's Encrypt
/// usually needs seconds; two minutes covers a slow validation without holding an
/// order slot forever.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Which challenge proves control of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChallengeKind {
    /// `GET http://NAME/.well-known/acme-challenge/TOKEN` on port 80.
    #[default]
    Http01,
    /// A TLS handshake on port 443 with ALPN `acme-tls/1` (RFC 8737).
    TlsAlpn01,
}

/// External Account Binding credentials (RFC 8555 §7.3.4), as CAs such as ZeroSSL or
/// a corporate CA hand them out. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalAccount {
    /// The key identifier.
    pub kid: String,
    /// The HMAC key, base64url as given by the CA (padding optional).
    pub hmac_key: String,
}

impl std::fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAccount")
            .field("kid", &self.kid)
            .field("hmac_key", &format_args!("<redacted>"))
            .finish()
    }
}

/// How to reach the ACME server and who we are to it.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The directory URL ([`LETS_ENCRYPT_DIRECTORY`] by default).
    pub directory_url: String,
    /// Contact URIs for the account, e.g. `mailto:ops@example.com`.
    pub contact: Vec<String>,
    /// A PEM root to trust for the ACME server's own HTTPS instead of the system roots
    /// (private CAs, Pebble).
    pub ca_root: Option<PathBuf>,
    /// External Account Binding, when the CA requires it.
    pub eab: Option<ExternalAccount>,
    /// The challenge to answer.
    pub challenge: ChallengeKind,
}

impl AcmeConfig {
    /// Let's Encrypt with HTTP-01 and the given contact e-mail.
    pub fn lets_encrypt(email: &str) -> Self {
        Self {
            directory_url: LETS_ENCRYPT_DIRECTORY.to_owned(),
            contact: vec![format!("mailto:{email}")],
            ca_root: None,
            eab: None,
            challenge: ChallengeKind::Http01,
        }
    }
}

/// An ACME account ready to order certificates.
pub struct AcmeClient {
    account: Account,
    challenges: Arc<Challenges>,
    challenge: ChallengeKind,
    directory_url: String,
}

impl std::fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeClient")
            .field("directory_url", &self.directory_url)
            .field("account", &self.account.id())
            .field("challenge", &self.challenge)
            .finish()
    }
}

impl AcmeClient {
    /// Restores the account stored for the directory, or registers a new one (agreeing
    /// to the CA's terms, with EAB if configured) and stores its credentials.
    pub async fn connect(
        config: &AcmeConfig,
        store: &dyn CertStore,
        challenges: Arc<Challenges>,
    ) -> Result<Self, TlsError> {
        let url = &config.directory_url;
        let builder = match &config.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        }
        .map_err(|e| TlsError::acme(format!("HTTP client for {url}"), e))?;
        let account = match store.load_account(url).await? {
            Some(stored) => {
                let credentials: AccountCredentials =
                    serde_json::from_str(&stored).map_err(|source| TlsError::Json {
                        what: format!("stored ACME account for {url}"),
                        source,
                    })?;
                builder
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| TlsError::acme(format!("restoring the account at {url}"), e))?
            }
            None => {
                let eab = match &config.eab {
                    Some(eab) => Some(ExternalAccountKey::new(eab.kid.clone(), &decode_hmac(&eab.hmac_key)?)),
                    None => None,
                };
                let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder
                    .create(&new, url.clone(), eab.as_ref())
                    .await
                    .map_err(|e| TlsError::acme(format!("creating an account at {url}"), e))?;
                let text = serde_json::to_string(&credentials).map_err(|source| TlsError::Json {
                    what: format!("ACME account for {url}"),
                    source,
                })?;
                store.save_account(url, &text).await?;
                tracing::info!(directory = %url, account = account.id(), "Registered an ACME account.");
                account
            }
        };
        Ok(Self {
            account,
            challenges,
            challenge: config.challenge,
            directory_url: url.clone(),
        })
    }

    /// The account URL the CA assigned.
    pub fn account_id(&self) -> &str {
        self.account.id()
    }

    /// Orders a certificate for `names` (the first is the certificate's name), answering
    /// the configured challenge, and returns the chain with a fresh P-256 key.
    ///
    /// With `previous` set and a CA offering ARI, the order says which certificate it
    /// replaces (RFC 9773 §5), which CAs may reward with relaxed rate limits.
    pub async fn order(&self, names: &[String], previous: Option<&CertPem>) -> Result<CertPem, TlsError> {
        let Some(primary) = names.first() else {
            return Err(TlsError::Config("an ACME order needs at least one name".into()));
        };
        if let Some(wildcard) = names.iter().find(|n| n.starts_with("*.")) {
            return Err(TlsError::Config(format!(
                "{wildcard}: wildcard certificates need the DNS-01 challenge, which gatehouse does not answer"
            )));
        }
        let identifiers: Vec<Identifier> = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Identifier::Ip(ip),
                Err(_) => Identifier::Dns(n.clone()),
            })
            .collect();
        let replaces = previous.and_then(|p| certificate_id(primary, &p.chain_pem));
        let mut order = match replaces {
            Some(id) => match self.account.new_order(&NewOrder::new(&identifiers).replaces(id)).await {
                Err(instant_acme::Error::Unsupported(_)) => self.account.new_order(&NewOrder::new(&identifiers)).await,
                other => other,
            },
            None => self.account.new_order(&NewOrder::new(&identifiers)).await,
        }
        .map_err(|e| TlsError::acme(format!("new order for {primary}"), e))?;

        // Published responses are withdrawn when this guard drops, whatever happens next.
        let mut published = Published {
            challenges: &self.challenges,
            http01: Vec::new(),
            tls_alpn01: Vec::new(),
        };
        let wanted = match self.challenge {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| TlsError::acme(format!("authorization for {primary}"), e))?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(TlsError::Order {
                        name: primary.clone(),
                        reason: format!("authorization is {other:?}"),
                    });
                }
            }
            let identifier = authz.identifier().to_string();
            let Some(mut challenge) = authz.challenge(wanted.clone()) else {
                return Err(TlsError::Order {
                    name: primary.clone(),
                    reason: format!("the CA offers no {wanted:?} challenge for {identifier}"),
                });
            };
            let key_authorization = challenge.key_authorization();
            match self.challenge {
                ChallengeKind::Http01 => {
                    self.challenges.add_http01(&challenge.token, key_authorization.as_str());
                    published.http01.push(challenge.token.clone());
                }
                ChallengeKind::TlsAlpn01 => {
                    let cert = tls_alpn01_cert(&identifier, key_authorization.digest().as_ref())?;
                    self.challenges.add_tls_alpn01(&identifier, cert);
                    published.tls_alpn01.push(identifier.clone());
                }
            }
            tracing::debug!(name = %identifier, challenge = ?wanted, "Published an ACME challenge response.");
            challenge
                .set_ready()
                .await
                .map_err(|e| TlsError::acme(format!("challenge for {identifier}"), e))?;
        }

        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(2.0)
            .timeout(ORDER_TIMEOUT);
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| TlsError::acme(format!("validation for {primary}"), e))?;
        if status != OrderStatus::Ready {
            return Err(TlsError::Order {
                name: primary.clone(),
                reason: format!(
                    "order is {status:?} after validation: {}",
                    challenge_errors(&mut order).await
                ),
            });
        }
        drop(published);

        let key = KeyPair::generate().map_err(|source| TlsError::Rcgen {
            what: "generating a certificate key",
            source,
        })?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(|source| TlsError::Rcgen {
            what: "certificate request names",
            source,
        })?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(|source| TlsError::Rcgen {
            what: "certificate signing request",
            source,
        })?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| TlsError::acme(format!("finalizing the order for {primary}"), e))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| TlsError::acme(format!("downloading the certificate for {primary}"), e))?;
        Ok(CertPem {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA's suggested renewal window for the leaf of `chain_pem` (RFC 9773), or
    /// `None` when the CA does not offer renewal information or the certificate lacks
    /// an authority key identifier.
    pub async fn renewal_window(&self, name: &str, chain_pem: &str) -> Result<Option<RenewalWindow>, TlsError> {
        let Some(id) = certificate_id(name, chain_pem) else {
            return Ok(None);
        };
        match self.account.renewal_info(&id).await {
            Ok((info, _retry_after)) => Ok(Some(RenewalWindow {
                start: SystemTime::from(info.suggested_window.start),
                end: SystemTime::from(info.suggested_window.end),
            })),
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(TlsError::acme(format!("renewal information for {name}"), e)),
        }
    }
}

/// Withdraws published challenge responses on drop.
struct Published<'a> {
    challenges: &'a Challenges,
    http01: Vec<String>,
    tls_alpn01: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for token in &self.http01 {
            self.challenges.remove_http01(token);
        }
        for name in &self.tls_alpn01 {
            self.challenges.remove_tls_alpn01(name);
        }
    }
}

/// The ARI identifier of the leaf of `chain_pem`, if it can be computed.
fn certificate_id(name: &str, chain_pem: &str) -> Option<CertificateIdentifier<'static>> {
    let chain = parse_chain(name, chain_pem).ok()?;
    CertificateIdentifier::try_from(&chain[0])
        .ok()
        .map(CertificateIdentifier::into_owned)
}

/// Why an order's challenges failed, as the CA described it.
async fn challenge_errors(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for challenge in &authz.challenges {
            if let Some(problem) = &challenge.error {
                reasons.push(format!("{}: {problem}", authz.identifier()));
            }
        }
    }
    if reasons.is_empty() {
        "the CA gave no reason".to_owned()
    } else {
        reasons.join("; ")
    }
}

/// The self-signed certificate that answers a TLS-ALPN-01 validation for `name`:
/// its only SAN is `name` and it carries the critical `acmeIdentifier` extension with
/// the SHA-256 of the key authorization (RFC 8737 §3).
fn tls_alpn01_cert(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let rcgen_err = |source| TlsError::Rcgen {
        what: "TLS-ALPN-01 certificate",
        source,
    };
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(rcgen_err)?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|source| TlsError::Rustls {
        what: format!("TLS-ALPN-01 key for {name}"),
        source,
    })?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)))
}

fn decode_hmac(text: &str) -> Result<Vec<u8>, TlsError> {
    let trimmed = text.trim().trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
        .map_err(|_| TlsError::Config("acme.eab_hmac is not base64url".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eab_key_decodes_both_alphabets() {
        assert_eq!(decode_hmac("_-8").unwrap(), vec![0xff, 0xef]);
        assert_eq!(decode_hmac("/+8=").unwrap(), vec![0xff, 0xef]);
        assert!(decode_hmac("***").is_err());
        let eab = ExternalAccount {
            kid: "k".into(),
            hmac_key: "secret".into(),
        };
        assert!(!format!("{eab:?}").contains("secret"));
    }

    #[test]
    fn tls_alpn01_cert_has_the_extension() {
        let cert = tls_alpn01_cert("a.example", &[7u8; 32]).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.cert[0].as_ref()).unwrap();
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
    }
}
