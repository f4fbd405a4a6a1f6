//! A local certificate authority for development names (`tls = "internal"`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use crate::store::{PUBLIC_MODE, SECRET_MODE, write_atomic};
use crate::{CertPem, TlsError};

/// How long leaf certificates from the internal CA live. Short, so a leaked dev key is
/// soon useless; renewal at two thirds (about 4.7 days) needs no one's attention.
pub const INTERNAL_LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long the root lives. Long, because trusting it is a manual step per machine.
pub const INTERNAL_ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Leaves start an hour in the past so clients with a slightly slow clock accept them.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);

/// The root's common name; also how other issuers recognise its certificates.
pub(crate) const INTERNAL_CA_NAME: &str = "gatehouse internal CA";

const ROOT_CERT_FILE: &str = "root.pem";
const ROOT_KEY_FILE: &str = "root.key";

/// The local CA: a root certificate and key kept in a directory (normally
/// `data_dir/certs/ca/`), created on first use and reused afterwards.
pub struct InternalCa {
    dir: PathBuf,
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for InternalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl InternalCa {
    /// Loads the CA from `dir`, or creates it (ECDSA P-256, [`INTERNAL_ROOT_LIFETIME`]) if
    /// `dir` holds none. The key file is written with mode 0600. Blocking file I/O.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        let existing = match (std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path)) {
            (Ok(cert), Ok(key)) => Some((cert, key)),
            (Err(e), _) if e.kind() != std::io::ErrorKind::NotFound => return Err(TlsError::io(&cert_path, e)),
            (_, Err(e)) if e.kind() != std::io::ErrorKind::NotFound => return Err(TlsError::io(&key_path, e)),
            _ => None,
        };
        let (root_pem, key) = match existing {
            Some((root_pem, key_pem)) => {
                let key = KeyPair::from_pem(&key_pem).map_err(|source| TlsError::Rcgen {
                    what: "reading the internal CA key",
                    source,
                })?;
                (root_pem, key)
            }
            None => {
                let key = KeyPair::generate().map_err(|source| TlsError::Rcgen {
                    what: "generating the internal CA key",
                    source,
                })?;
                let now = SystemTime::now();
                let cert = root_params(now).self_signed(&key).map_err(|source| TlsError::Rcgen {
                    what: "creating the internal CA root",
                    source,
                })?;
                let root_pem = cert.pem();
                // Key first: a root certificate without its key would be unusable.
                write_atomic(&key_path, key.serialize_pem().as_bytes(), SECRET_MODE)?;
                write_atomic(&cert_path, root_pem.as_bytes(), PUBLIC_MODE)?;
                tracing::info!(path = %cert_path.display(), "Created the internal certificate authority.");
                (root_pem, key)
            }
        };
        let issuer = Issuer::from_ca_cert_pem(&root_pem, key).map_err(|source| TlsError::Rcgen {
            what: "reading the internal CA root",
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            root_pem,
            issuer,
        })
    }

    /// Whether `cert` was issued by this CA (its chain ends in this root).
    pub fn issued(&self, cert: &crate::LoadedCert) -> bool {
        let root = crate::parse_chain("internal CA", &self.root_pem).ok();
        match (root.as_ref().and_then(|r| r.first()), cert.key.cert.last()) {
            (Some(root), Some(last)) => root == last,
            _ => false,
        }
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Where the root certificate is stored.
    pub fn root_path(&self) -> PathBuf {
        self.dir.join(ROOT_CERT_FILE)
    }

    /// Issues a leaf for `names` (host names, `*.` wildcards or IP addresses), valid
    /// from an hour before `now` for [`INTERNAL_LEAF_LIFETIME`], with a fresh P-256 key.
    /// The chain is the leaf followed by the root.
    pub fn issue(&self, names: &[String], now: SystemTime) -> Result<CertPem, TlsError> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(|source| TlsError::Rcgen {
            what: "internal certificate names",
            source,
        })?;
        let mut dn = DistinguishedName::new();
        if let Some(first) = names.first() {
            dn.push(DnType::CommonName, first.as_str());
        }
        params.distinguished_name = dn;
        params.not_before = (now - CLOCK_SKEW_ALLOWANCE).into();
        params.not_after = (now + INTERNAL_LEAF_LIFETIME).into();
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(|source| TlsError::Rcgen {
            what: "generating an internal leaf key",
            source,
        })?;
        let cert = params.signed_by(&key, &self.issuer).map_err(|source| TlsError::Rcgen {
            what: "signing an internal leaf",
            source,
        })?;
        Ok(CertPem {
            chain_pem: format!("{}{}", cert.pem(), self.root_pem),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Whether `cert`'s chain ends in a gatehouse internal CA root (this one or another
/// data directory's): such a certificate is never a publicly trusted one.
pub fn from_some_internal_ca(cert: &crate::LoadedCert) -> bool {
    let Some(last) = cert.key.cert.last() else {
        return false;
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(last.as_ref()) else {
        return false;
    };
    parsed.subject() == parsed.issuer()
        && parsed
            .subject()
            .iter_common_name()
            .any(|cn| cn.as_str() == Ok(INTERNAL_CA_NAME))
}

fn root_params(now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "gatehouse");
    dn.push(DnType::CommonName, INTERNAL_CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = (now - CLOCK_SKEW_ALLOWANCE).into();
    params.not_after = (now + INTERNAL_ROOT_LIFETIME).into();
    params.serial_number = Some(random_serial());
    params
}

/// A positive 127-bit serial (RFC 5280 allows up to 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Where the internal CA's root is and how to make this machine trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustInfo {
    /// The root certificate file.
    pub root_path: PathBuf,
    /// Human instructions (several lines) for the common systems and browsers.
    pub instructions: String,
}

/// What `gatehouse trust` prints: the root's path under `ca_dir` (normally
/// `data_dir/certs/ca`) and how to trust it. Does not create the CA.
pub fn trust_instructions(ca_dir: &Path) -> TrustInfo {
    let root_path = ca_dir.join(ROOT_CERT_FILE);
    let p = root_path.display();
    let instructions = format!(
        "The internal CA root certificate is {p}\n\
         (it is created the first time a site with tls = \"internal\" is served).\n\
         \n\
         Trust it on this machine:\n\
         \x20 Debian/Ubuntu: sudo cp {p} /usr/local/share/ca-certificates/gatehouse.crt && sudo update-ca-certificates\n\
         \x20 Fedora/RHEL:   sudo cp {p} /etc/pki/ca-trust/source/anchors/gatehouse.pem && sudo update-ca-trust\n\
         \x20 macOS:         sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {p}\n\
         \x20 Windows:       certutil -addstore -f ROOT {p}\n\
         \x20 Firefox:       Settings > Privacy & Security > Certificates > View Certificates > Authorities > Import\n\
         \x20 curl:          curl --cacert {p} https://localhost/\n\
         \n\
         Only trust it on machines you develop on: whoever holds its key can impersonate any site to them."
    );
    TrustInfo {
        root_path,
        instructions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LoadedCert;

    #[test]
    fn creates_once_then_reuses_and_issues() {
        let dir = std::env::temp_dir().join(format!("gh-ca-{}-{}", std::process::id(), fastrand::u64(..)));
        let ca = InternalCa::load_or_create(&dir).unwrap();
        let again = InternalCa::load_or_create(&dir).unwrap();
        assert_eq!(ca.root_pem(), again.root_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(ROOT_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let now = SystemTime::now();
        let pem = again.issue(&["localhost".into(), "127.0.0.1".into()], now).unwrap();
        let loaded = LoadedCert::from_pem("localhost", &pem).unwrap();
        let life = loaded.validity.lifetime();
        assert!(
            life >= INTERNAL_LEAF_LIFETIME
                && life <= INTERNAL_LEAF_LIFETIME + CLOCK_SKEW_ALLOWANCE + Duration::from_secs(2)
        );
        assert_eq!(loaded.key.cert.len(), 2);
        assert!(loaded.covers("localhost") && loaded.covers("LOCALHOST.") && loaded.covers("127.0.0.1"));
        assert!(!loaded.covers("other.test"));
        assert!(ca.issued(&loaded) && from_some_internal_ca(&loaded));

        let wild = LoadedCert::from_pem("w", &ca.issue(&["*.dev.test".into()], now).unwrap()).unwrap();
        assert!(wild.covers("a.dev.test"));
        assert!(!wild.covers("a.b.dev.test") && !wild.covers("dev.test"));

        let other_dir = dir.join("other");
        let other = InternalCa::load_or_create(&other_dir).unwrap();
        assert!(!other.issued(&loaded), "another data directory's CA did not issue it");
        let info = trust_instructions(&dir);
        assert_eq!(info.root_path, ca.root_path());
        assert!(info.instructions.contains("update-ca-certificates"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
