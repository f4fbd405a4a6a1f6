//! HTTPS for gatehouse, independent of listeners and config files.
//!
//! - [`CertStore`] / [`FileStore`]: certificates, keys and ACME accounts at rest.
//! - [`CertResolver`] + [`server_config`]: the rustls side — SNI → certificate,
//!   hot-swappable, TLS 1.2/1.3 with AEAD suites, `h2`/`http/1.1` ALPN, resumption.
//! - [`InternalCa`]: a local CA for development names; [`trust_instructions`].
//! - [`AcmeClient`]: RFC 8555 orders with HTTP-01 or TLS-ALPN-01 via [`Challenges`],
//!   RFC 9773 renewal information, External Account Binding.
//! - [`CertManager`]: the background task that obtains and renews, with a bound on
//!   concurrent orders, jittered backoff and [`CertEvent`]s; on-demand issuance gated
//!   by an [`OnDemandPolicy`].
//! - [`FileCertWatcher`]: certificates from PEM files, reloaded when they change.
//!
//! The crate knows nothing about gatehouse's config format or HTTP handling: the edge
//! asks [`Challenges::http01_response`] on its plain-HTTP listener and builds its TLS
//! acceptor from [`server_config`].

pub mod acme;
mod challenges;
mod error;
pub mod files;
pub mod internal_ca;
pub mod manager;
pub mod on_demand;
mod pem;
mod resolver;
pub mod schedule;
pub mod store;

pub use acme::{AcmeClient, AcmeConfig, ChallengeKind, ExternalAccount};
pub use challenges::{ACME_TLS_ALPN, Challenges, HTTP01_PREFIX};
pub use error::TlsError;
pub use files::{FileCertWatcher, load_pem_files};
pub use internal_ca::{InternalCa, TrustInfo, from_some_internal_ca, trust_instructions};
pub use manager::{CertEvent, CertManager, Issuer, ManagedCert, ManagerConfig, OnDemand};
pub use on_demand::{OnDemandConfig, OnDemandError, OnDemandPolicy};
pub use pem::{CertPem, LoadedCert, Validity, parse_chain, parse_key, validity};
pub use resolver::{CertExpiry, CertResolver, SESSION_CACHE_SIZE, cipher_suites, server_config};
pub use schedule::{Clock, ManualClock, RenewalWindow, SystemClock};
pub use store::{CertStore, FileStore};
