//! HTTPS wiring: config → certificate store, internal CA, ACME client, certificate
//! manager and file watchers → the edge's `TlsRuntime`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context;
use gatehouse_config::{AcmeChallenge, Config, HostPattern, SiteTls};
use gatehouse_edge::TlsRuntime;
use gatehouse_tls::store::StoreFuture;
use gatehouse_tls::{
    AcmeClient, AcmeConfig, CertManager, CertPem, CertResolver, ChallengeKind, Challenges, ExternalAccount,
    FileCertWatcher, FileStore, InternalCa, Issuer, LoadedCert, ManagedCert, ManagerConfig, OnDemand, OnDemandConfig,
    OnDemandPolicy, RenewalWindow, SystemClock, TlsError, load_pem_files,
};
use tokio::sync::OnceCell;

/// Everything that keeps certificates current; dropping it stops renewals and
/// file watching (served certificates stay until the process ends).
///
/// Site certificates follow reloads: [`Certificates::prepare`] checks a new
/// config's certificate sources (loads changed PEM files, creates the internal CA
/// if a site needs it first), and [`Certificates::apply`] switches to them once the
/// edge has accepted the config, with the no-SNI fallback name. The `[acme]`
/// section, `[tls]` but for `default_sni`, and the HTTPS listeners need a restart.
pub(crate) struct Certificates {
    /// What the edge serves HTTPS with.
    pub(crate) runtime: TlsRuntime,
    resolver: Arc<CertResolver>,
    store: Arc<FileStore>,
    challenges: Arc<Challenges>,
    /// The startup config's `[acme]`, for an ACME site added by a reload.
    acme_config: Option<gatehouse_config::Acme>,
    manager: Arc<CertManager>,
    /// What reloads change. Never held across file I/O.
    state: Mutex<State>,
}

struct State {
    internal: Option<Arc<InternalCa>>,
    acme: Option<Arc<LazyAcme>>,
    /// The running sources, by certificate name (a site's first host name).
    sources: HashMap<String, Source>,
}

/// Where one site's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Spec {
    /// Obtained and renewed by the manager.
    Managed { names: Vec<String>, issuer: IssuerKind },
    /// Read from PEM files, polled for changes.
    Files {
        names: Vec<String>,
        cert: PathBuf,
        key: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IssuerKind {
    Internal,
    Acme,
}

impl Spec {
    fn names(&self) -> &[String] {
        match self {
            Spec::Managed { names, .. } | Spec::Files { names, .. } => names,
        }
    }
}

struct Source {
    spec: Spec,
    /// Set for [`Spec::Files`]; dropping it stops the polling.
    _watcher: Option<FileCertWatcher>,
}

/// A config's certificate sources, checked and ready to switch to.
pub(crate) struct Plan {
    specs: Vec<(String, Spec)>,
    /// Whose certificate answers handshakes without SNI.
    fallback: Option<String>,
    /// Freshly loaded PEM files of new or changed [`Spec::Files`] sources.
    loaded: HashMap<String, LoadedCert>,
    internal: Option<Arc<InternalCa>>,
    acme: Option<Arc<LazyAcme>>,
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
            HostPattern::Exact(s) => cert_name(s).to_owned(),
            HostPattern::Wildcard(suffix) => format!("*{suffix}"),
        })
        .collect()
}

/// An exact host as a certificate spells it: IPv6 without brackets.
fn cert_name(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Each TLS site's certificate source, by certificate name.
fn specs(config: &Config) -> Vec<(String, Spec)> {
    let mut specs = Vec::new();
    for site in &config.sites {
        let names = cert_names(&site.hosts);
        let Some(key) = names.first().cloned() else {
            continue;
        };
        let spec = match &site.tls {
            SiteTls::Off => continue,
            SiteTls::Internal => Spec::Managed {
                names,
                issuer: IssuerKind::Internal,
            },
            SiteTls::Acme => Spec::Managed {
                names,
                issuer: IssuerKind::Acme,
            },
            SiteTls::Files { cert, key } => Spec::Files {
                names,
                cert: cert.clone(),
                key: key.clone(),
            },
        };
        specs.push((key, spec));
    }
    specs
}

/// The host whose certificate answers handshakes without SNI: `[tls]
/// default_sni`, else the first IP-address host of a TLS site (clients never
/// send SNI for an address), else none.
fn fallback_name(config: &Config) -> Option<String> {
    if let Some(name) = &config.tls.default_sni {
        return Some(cert_name(name).to_owned());
    }
    config
        .sites
        .iter()
        .filter(|s| s.tls != SiteTls::Off)
        .flat_map(|s| &s.hosts)
        .find_map(|h| match h {
            HostPattern::Exact(name) => {
                let bare = cert_name(name);
                bare.parse::<std::net::IpAddr>().is_ok().then(|| bare.to_owned())
            }
            HostPattern::Wildcard(_) => None,
        })
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

    // On-demand names are ordered through ACME, so it needs the client at once.
    let acme = match (&config.tls.acme, &config.tls.on_demand) {
        (Some(a), Some(_)) => Some(Arc::new(LazyAcme::new(
            acme_config(a),
            store.clone(),
            challenges.clone(),
        ))),
        _ => None,
    };
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
    let defaults = ManagerConfig::default();
    let manager = Arc::new(CertManager::start(
        Vec::new(),
        store.clone(),
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
    ));
    let mut events = manager.subscribe();
    tokio::spawn(async move {
        // The manager logs each event itself; this keeps the channel drained.
        while let Ok(event) = events.recv().await {
            tracing::debug!(?event, "Certificate event.");
        }
    });
    let mut runtime = TlsRuntime::new(resolver.clone(), challenges.clone()).context("cannot set up TLS")?;
    if on_demand_enabled {
        runtime = runtime.with_on_demand(manager.clone());
    }
    let certificates = Certificates {
        runtime,
        resolver,
        store,
        challenges,
        acme_config: config.tls.acme.clone(),
        manager,
        state: Mutex::new(State {
            internal: None,
            acme,
            sources: HashMap::new(),
        }),
    };
    let plan = certificates.prepare(config)?;
    certificates.apply(plan);
    Ok(Some(certificates))
}

impl Certificates {
    /// Every served host name with its certificate's expiry, sorted by name.
    pub(crate) fn expiries(&self) -> Vec<gatehouse_tls::CertExpiry> {
        self.manager.expiries()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks `config`'s certificate sources without changing what is served:
    /// loads the PEM files of new or changed file sources and sets up the
    /// internal CA or the ACME client if a site needs one for the first time.
    /// Blocking file I/O. An error names the site and the file.
    pub(crate) fn prepare(&self, config: &Config) -> anyhow::Result<Plan> {
        let specs = specs(config);
        // A snapshot: reloads run one at a time, so nothing changes it before `apply`.
        let (mut internal, mut acme, unchanged) = {
            let state = self.state();
            let unchanged: HashSet<&str> = specs
                .iter()
                .filter(|(name, spec)| state.sources.get(name).is_some_and(|s| s.spec == *spec))
                .map(|(name, _)| name.as_str())
                .collect();
            (state.internal.clone(), state.acme.clone(), unchanged)
        };
        let mut loaded = HashMap::new();
        for (name, spec) in &specs {
            match spec {
                Spec::Files { names, cert, key } => {
                    if unchanged.contains(name.as_str()) {
                        continue;
                    }
                    let site = site_of(config, name);
                    let pem = load_pem_files(&names[0], cert, key)
                        .with_context(|| format!("site {site}: cannot load its certificate files"))?;
                    loaded.insert(name.clone(), pem);
                }
                Spec::Managed {
                    issuer: IssuerKind::Internal,
                    ..
                } if internal.is_none() => {
                    let dir = ca_dir(config);
                    internal =
                        Some(Arc::new(InternalCa::load_or_create(&dir).with_context(|| {
                            format!("cannot set up the internal CA in {}", dir.display())
                        })?));
                }
                Spec::Managed {
                    issuer: IssuerKind::Acme,
                    ..
                } if acme.is_none() => {
                    // [acme] is restart-only, so the startup config's is the one in force.
                    let Some(a) = &self.acme_config else {
                        anyhow::bail!(
                            "site {}: tls = \"acme\" needs an [acme] section, and adding one needs a restart",
                            site_of(config, name)
                        );
                    };
                    acme = Some(Arc::new(LazyAcme::new(
                        acme_config(a),
                        self.store.clone(),
                        self.challenges.clone(),
                    )));
                }
                Spec::Managed { .. } => {}
            }
        }
        Ok(Plan {
            specs,
            fallback: fallback_name(config),
            loaded,
            internal,
            acme,
        })
    }

    /// Switches to a prepared config's certificate sources: new and changed sites
    /// start being served or ordered (a changed site keeps its current certificate
    /// until the new one is ready), and host names no site covers any more stop
    /// being served. Must run inside the control runtime.
    pub(crate) fn apply(&self, plan: Plan) {
        let mut guard = self.state();
        let state = &mut *guard;
        state.internal = plan.internal;
        state.acme = plan.acme;
        self.resolver.set_fallback_name(plan.fallback.as_deref());
        let mut loaded = plan.loaded;
        let wanted: HashMap<&str, &Spec> = plan.specs.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let served_after: HashSet<&str> = plan
            .specs
            .iter()
            .flat_map(|(_, s)| s.names().iter().map(String::as_str))
            .collect();

        // Sources that went away or changed: stop them, and stop serving the
        // names nothing covers any more.
        let stale: Vec<String> = state
            .sources
            .iter()
            .filter(|(name, source)| wanted.get(name.as_str()) != Some(&&source.spec))
            .map(|(name, _)| name.clone())
            .collect();
        let mut removed = Vec::new();
        for name in stale {
            let Some(source) = state.sources.remove(&name) else {
                continue;
            };
            let still_managed = matches!(wanted.get(name.as_str()), Some(Spec::Managed { .. }));
            if matches!(source.spec, Spec::Managed { .. }) && !still_managed {
                self.manager.remove(&name);
            }
            for host in source.spec.names() {
                if !served_after.contains(host.as_str()) && self.resolver.remove(host) {
                    removed.push(host.clone());
                }
            }
        }

        let mut added = Vec::new();
        for (name, spec) in &plan.specs {
            if state.sources.contains_key(name) {
                continue;
            }
            let watcher = match spec {
                Spec::Managed { names, issuer } => {
                    let issuer: Arc<dyn Issuer> = match (issuer, &state.internal, &state.acme) {
                        (IssuerKind::Internal, Some(ca), _) => ca.clone(),
                        (IssuerKind::Acme, _, Some(acme)) => acme.clone(),
                        // `prepare` set up the issuer every managed source needs.
                        _ => continue,
                    };
                    self.manager.add(ManagedCert {
                        names: names.clone(),
                        issuer,
                    });
                    None
                }
                Spec::Files { names, cert, key } => {
                    // `prepare` loaded every new or changed file source.
                    let Some(pem) = loaded.remove(name) else {
                        continue;
                    };
                    Some(FileCertWatcher::with_loaded(
                        names.clone(),
                        cert.clone(),
                        key.clone(),
                        &pem,
                        self.resolver.clone(),
                        gatehouse_tls::files::FILE_POLL_INTERVAL,
                    ))
                }
            };
            added.push(name.clone());
            state.sources.insert(
                name.clone(),
                Source {
                    spec: spec.clone(),
                    _watcher: watcher,
                },
            );
        }
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(?added, no_longer_served = ?removed, "Certificate sources updated.");
        }
    }
}

/// The name of the site whose certificate is called `cert_name`, for errors.
fn site_of<'a>(config: &'a Config, cert_name: &'a str) -> &'a str {
    config
        .sites
        .iter()
        .find(|s| cert_names(&s.hosts).first().map(String::as_str) == Some(cert_name))
        .map_or(cert_name, |s| s.name.as_str())
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
