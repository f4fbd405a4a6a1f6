//! Pending ACME challenge responses, shared between the ACME client (which adds and
//! removes them) and the listeners (which answer with them).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::sign::CertifiedKey;

/// The path prefix of HTTP-01 challenge requests (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The ALPN protocol name of TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Challenge responses currently published.
///
/// HTTP-01: token → key authorization, answered by the HTTP listener via
/// [`Challenges::http01_response`]. TLS-ALPN-01: host name → self-signed certificate
/// carrying the `acmeIdentifier` extension, served by [`crate::CertResolver`] when a
/// ClientHello offers only `acme-tls/1`. Entries live only while an order runs.
#[derive(Debug, Default)]
pub struct Challenges {
    http01: RwLock<HashMap<String, String>>,
    tls_alpn01: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The body to answer `GET path` with, if `path` is a published HTTP-01 challenge.
    ///
    /// The edge calls this for every plain-HTTP request whose path starts with
    /// [`HTTP01_PREFIX`] (before any redirect to HTTPS) and answers `200` with the
    /// returned text as `text/plain`, or `404` when it returns `None`.
    pub fn http01_response(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        // Tokens are base64url (RFC 8555 §8.1); anything else cannot be one of ours.
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        read(&self.http01).get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `name`, if a validation is pending for it.
    pub fn tls_alpn01_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        read(&self.tls_alpn01).get(name).cloned()
    }

    pub(crate) fn add_http01(&self, token: &str, key_authorization: &str) {
        write(&self.http01).insert(token.to_owned(), key_authorization.to_owned());
    }

    pub(crate) fn remove_http01(&self, token: &str) {
        write(&self.http01).remove(token);
    }

    pub(crate) fn add_tls_alpn01(&self, name: &str, cert: Arc<CertifiedKey>) {
        write(&self.tls_alpn01).insert(name.to_owned(), cert);
    }

    pub(crate) fn remove_tls_alpn01(&self, name: &str) {
        write(&self.tls_alpn01).remove(name);
    }

    /// How many challenge responses are published (for tests and diagnostics).
    pub fn len(&self) -> usize {
        read(&self.http01).len() + read(&self.tls_alpn01).len()
    }

    /// Whether no challenge response is published.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Critical sections only insert, remove or clone, so a poisoned lock still holds a
/// consistent map and is used as is.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http01_lookup() {
        let c = Challenges::new();
        c.add_http01("tok-EN_1", "tok-EN_1.thumb");
        assert_eq!(
            c.http01_response("/.well-known/acme-challenge/tok-EN_1").as_deref(),
            Some("tok-EN_1.thumb")
        );
        assert_eq!(c.http01_response("/.well-known/acme-challenge/other"), None);
        assert_eq!(c.http01_response("/.well-known/acme-challenge/"), None);
        assert_eq!(c.http01_response("/.well-known/acme-challenge/../x"), None);
        assert_eq!(c.http01_response("/tok-EN_1"), None);
        c.remove_http01("tok-EN_1");
        assert!(c.is_empty());
    }
}
