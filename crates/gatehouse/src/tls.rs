//! HTTPS wiring: config → certificate store, internal CA, ACME client, certificate
//! manager and file watchers → the edge's `TlsRuntime`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use gatehouse_config::{AcmeChallenge, Config, HostPattern, SiteTls};
use gatehouse_edge::TlsRuntime;
use gatehouse_tls::store::StoreFuture;
use gatehouse_tls::{
    AcmeClient, AcmeConfig, CertManager, CertPem, CertResolver, ChallengeKind, Challenges, ExternalAccount,
    FileCertWatcher, FileStore, InternalCa, Issuer, LoadedCert, ManagedCert, ManagerConfig, OnDemand, OnDemandConfig,
    OnDemandPolicy, RenewalWindow, SystemClock, TlsError,
};
use tokio::sync::OnceCell;

/// Everything that keeps certificates current; dropping it stops renewals and
/// file watching (served certificates stay until the process ends).
pub(crate) struct Certificates {
    /// What the edge serves HTTPS with.
    pub(crate) runtime: TlsRuntime,
    _manager: Option<Arc<CertManager>>,
    _watchers: Vec<FileCertWatcher>,
}

/// Where certificates, keys and ACME accounts live.
pub(crate) fn certs_dir(config: &Config) -> PathBuf {
    config.server.data_dir.join("certs")
}

/// Where the internal CA lives.
pub(crate) fn ca_dir(config: &Config) -> PathBuf {
    certs_dir(config).join("ca")
}

/// The names a site's certificate covers: its host patterns as a certificate
/// spells them (`*.example.com`, IPv6 without brackets).
fn cert_names(hosts: &[HostPattern]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| match h {
            HostPattern::Exact(s) => s.trim_start_matches('[').trim_end_matches(']').to_owned(),
            HostPattern::Wildcard(suffix) => format!("*{suffix}"),
        })
        .collect()
}

/// Sets up certificates for every TLS site. Must run inside the control runtime:
/// the manager and the file watchers are tasks on it. `None` when the config has
/// no HTTPS listener.
pub(crate) fn start(config: &Config) -> anyhow::Result<Option<Certificates>> {
    if config.server.https.is_empty() {
        return Ok(None);
    }
    let challenges = Arc::new(Challenges::new());
    let resolver = Arc::new(CertResolver::new(challenges.clone()));
    let store = Arc::new(FileStore::new(certs_dir(config)));

    let uses = |mode: fn(&SiteTls) -> bool| config.sites.iter().any(|s| mode(&s.tls));
    let internal = if uses(|t| *t == SiteTls::Internal) {
        let dir = ca_dir(config);
        Some(Arc::new(InternalCa::load_or_create(&dir).with_context(|| {
            format!("cannot set up the internal CA in {}", dir.display())
        })?))
    } else {
        None
    };
    let acme =
        match &config.tls.acme {
            Some(a) if uses(|t| *t == SiteTls::Acme) || config.tls.on_demand.is_some() => Some(Arc::new(
                LazyAcme::new(acme_config(a), store.clone(), challenges.clone()),
            )),
            _ => None,
        };

    let mut managed = Vec::new();
    let mut watchers = Vec::new();
    for site in &config.sites {
        let names = cert_names(&site.hosts);
        let issuer: Arc<dyn Issuer> = match (&site.tls, &internal, &acme) {
            (SiteTls::Off, _, _) => continue,
            (SiteTls::Internal, Some(ca), _) => ca.clone(),
            (SiteTls::Acme, _, Some(acme)) => acme.clone(),
            (SiteTls::Files { cert, key }, _, _) => {
                let watcher = FileCertWatcher::start(
                    names,
                    cert.clone(),
                    key.clone(),
                    resolver.clone(),
                    gatehouse_tls::files::FILE_POLL_INTERVAL,
                )
                .with_context(|| format!("site {}: cannot load its certificate files", site.name))?;
                watchers.push(watcher);
                continue;
            }
            // The config crate guarantees the issuer exists for the mode.
            _ => anyhow::bail!("site {}: no issuer for tls = {:?}", site.name, site.tls.as_str()),
        };
        managed.push(ManagedCert { names, issuer });
    }

    let on_demand = match (&config.tls.on_demand, &acme) {
        (Some(od), Some(acme)) => {
            let ask = match &od.ask {
                Some(u) => Some(u.parse().with_context(|| format!("tls.on_demand.ask: {u}"))?),
                None => None,
            };
            let policy = OnDemandPolicy::new(
                OnDemandConfig {
                    allow: od.allow.clone(),
                    ask,
                    per_name_interval: od.per_name_interval,
                    global_limit: od.limit,
                    global_window: od.limit_window,
                },
                Arc::new(SystemClock),
            )
            .context("tls.on_demand")?;
            Some(OnDemand {
                policy,
                issuer: acme.clone(),
            })
        }
        _ => None,
    };
    let on_demand_enabled = on_demand.is_some();
    let manager = if managed.is_empty() && !on_demand_enabled {
        None
    } else {
        let defaults = ManagerConfig::default();
        Some(Arc::new(CertManager::start(
            managed,
            store,
            resolver.clone(),
            Arc::new(SystemClock),
            ManagerConfig {
                max_concurrent_orders: config
                    .tls
                    .acme
                    .as_ref()
                    .map_or(defaults.max_concurrent_orders, |a| a.max_concurrent_orders.get()),
                on_demand,
                ..defaults
            },
        )))
    };
    if let Some(manager) = &manager {
        let mut events = manager.subscribe();
        tokio::spawn(async move {
            // The manager logs each event itself; this keeps the channel drained.
            while let Ok(event) = events.recv().await {
                tracing::debug!(?event, "Certificate event.");
            }
        });
    }
    let mut runtime = TlsRuntime::new(resolver, challenges).context("cannot set up TLS")?;
    if let (true, Some(manager)) = (on_demand_enabled, &manager) {
        runtime = runtime.with_on_demand(manager.clone());
    }
    Ok(Some(Certificates {
        runtime,
        _manager: manager,
        _watchers: watchers,
    }))
}

fn acme_config(a: &gatehouse_config::Acme) -> AcmeConfig {
    AcmeConfig {
        directory_url: a.directory.clone(),
        contact: a.email.iter().map(|e| format!("mailto:{e}")).collect(),
        ca_root: a.ca_root.clone(),
        eab: a.eab.as_ref().map(|e| ExternalAccount {
            kid: e.kid.clone(),
            hmac_key: e.hmac.expose().to_owned(),
        }),
        challenge: match a.challenge {
            AcmeChallenge::Http01 => ChallengeKind::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeKind::TlsAlpn01,
        },
    }
}

/// The ACME client, connected (account loaded or registered) at the first order,
/// so a CA that is down at startup delays certificates — retried with the
/// manager's backoff — but never stops gatehouse from starting.
struct LazyAcme {
    config: AcmeConfig,
    store: Arc<FileStore>,
    challenges: Arc<Challenges>,
    client: OnceCell<AcmeClient>,
}

impl LazyAcme {
    fn new(config: AcmeConfig, store: Arc<FileStore>, challenges: Arc<Challenges>) -> Self {
        Self {
            config,
            store,
            challenges,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<&AcmeClient, TlsError> {
        self.client
            .get_or_try_init(|| AcmeClient::connect(&self.config, self.store.as_ref(), self.challenges.clone()))
            .await
    }
}

impl Issuer for LazyAcme {
    fn issue<'a>(
        &'a self,
        names: &'a [String],
        previous: Option<&'a CertPem>,
        _now: SystemTime,
    ) -> StoreFuture<'a, CertPem> {
        Box::pin(async move { self.client().await?.order(names, previous).await })
    }

    fn accepts(&self, cert: &LoadedCert) -> bool {
        !gatehouse_tls::from_some_internal_ca(cert)
    }

    fn renewal_window<'a>(&'a self, name: &'a str, cert: &'a CertPem) -> StoreFuture<'a, Option<RenewalWindow>> {
        Box::pin(async move { self.client().await?.renewal_window(name, &cert.chain_pem).await })
    }
}

/// `gatehouse trust`: where the internal CA's root is and how to trust it. Creates
/// the CA if it does not exist yet, so it can be trusted before the first start.
pub(crate) fn trust(path: &Path) -> anyhow::Result<()> {
    let config = gatehouse_config::load(path)?;
    let dir = ca_dir(&config);
    InternalCa::load_or_create(&dir).with_context(|| format!("cannot set up the internal CA in {}", dir.display()))?;
    let info = gatehouse_tls::trust_instructions(&dir);
    println!("{}", info.instructions);
    Ok(())
}
