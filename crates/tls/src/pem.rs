//! PEM ↔ rustls types, and the facts the scheduler needs from a certificate.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// A certificate chain and its private key, as PEM text.
///
/// This is what stores keep and issuers return. `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertPem {
    /// The chain, leaf first.
    pub chain_pem: String,
    /// The leaf's private key (PKCS#8, SEC1 or PKCS#1). Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for CertPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPem")
            .field("chain_pem", &format_args!("<{} bytes>", self.chain_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

/// The validity period of a leaf certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// The total lifetime (zero for a malformed certificate whose end precedes its start).
    pub fn lifetime(&self) -> Duration {
        self.not_after.duration_since(self.not_before).unwrap_or_default()
    }

    /// Whole days left at `now`, negative once expired.
    pub fn days_left(&self, now: SystemTime) -> i64 {
        match self.not_after.duration_since(now) {
            Ok(left) => (left.as_secs() / 86_400) as i64,
            Err(past) => -((past.duration().as_secs().div_ceil(86_400)) as i64),
        }
    }
}

/// A certificate ready to serve: the rustls key plus its validity and names.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The leaf's validity.
    pub validity: Validity,
    /// The leaf's subjectAltName entries: DNS names (lower-case, `*.` wildcards kept)
    /// and IP addresses in their usual text form.
    pub names: Vec<String>,
}

impl LoadedCert {
    /// Parses `pem` (chain + key), checks that the key matches the leaf, and reads its validity.
    ///
    /// `name` only labels errors.
    pub fn from_pem(name: &str, pem: &CertPem) -> Result<Self, TlsError> {
        let chain = parse_chain(name, &pem.chain_pem)?;
        let key = parse_key(name, &pem.key_pem)?;
        let validity = validity(name, &chain[0])?;
        let names = san_names(name, &chain[0])?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|source| TlsError::Rustls {
            what: format!("private key for {name}"),
            source,
        })?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|source| TlsError::Rustls {
            what: format!("certificate and key for {name}"),
            source,
        })?;
        Ok(Self {
            key: Arc::new(certified),
            validity,
            names,
        })
    }

    /// Whether the leaf is valid for `host` (exact, or a one-label wildcard SAN).
    pub fn covers(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|san| {
            san == &host
                || san.strip_prefix("*.").is_some_and(|suffix| {
                    host.split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
                })
        })
    }
}

/// The DNS and IP subjectAltName entries of a DER certificate.
fn san_names(name: &str, der: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| TlsError::pem(format!("certificate for {name}"), e.to_string()))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general in &san.value.general_names {
            match general {
                GeneralName::DNSName(dns) => out.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    out.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Every `CERTIFICATE` block of `pem`, in order; an error if there is none.
pub fn parse_chain(name: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::pem(format!("certificate chain for {name}"), e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::pem(
            format!("certificate chain for {name}"),
            "no CERTIFICATE block found",
        ));
    }
    Ok(chain)
}

/// The first private key block of `pem`.
pub fn parse_key(name: &str, pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        // The pki-types error names the section kind, never key bytes.
        TlsError::pem(format!("private key for {name}"), e.to_string())
    })
}

/// The validity period of a DER certificate.
pub fn validity(name: &str, der: &CertificateDer<'_>) -> Result<Validity, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| TlsError::pem(format!("certificate for {name}"), e.to_string()))?;
    let v = cert.validity();
    Ok(Validity {
        not_before: to_system_time(v.not_before.timestamp()),
        not_after: to_system_time(v.not_after.timestamp()),
    })
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_left_rounds_toward_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let v = Validity {
            not_before: now,
            not_after: now + Duration::from_secs(86_400 * 3 + 10),
        };
        assert_eq!(v.days_left(now), 3);
        assert_eq!(v.days_left(now + Duration::from_secs(86_400 * 4)), -1);
        assert_eq!(v.lifetime(), Duration::from_secs(86_400 * 3 + 10));
    }

    #[test]
    fn rejects_empty_and_garbage() {
        assert!(parse_chain("x", "").is_err());
        assert!(parse_chain("x", "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
        assert!(parse_key("x", "nothing").is_err());
    }
}
