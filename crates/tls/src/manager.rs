//! The background certificate manager: obtains certificates at startup, renews them on
//! schedule, retries with backoff, and keeps serving the last good one meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinHandle;

use crate::on_demand::{OnDemandError, OnDemandPolicy};
use crate::schedule::{RenewalState, RenewalWindow, renew_due};
use crate::store::{StoreFuture, check_name};
use crate::{AcmeClient, CertExpiry, CertPem, CertResolver, CertStore, Clock, InternalCa, LoadedCert, TlsError};

/// How many orders run at once by default. ACME CAs limit concurrent pending orders
/// per account, and a startup with many sites should not open hundreds of validations.
pub const DEFAULT_MAX_CONCURRENT_ORDERS: usize = 4;

/// How long an order lease lasts: longer than an order takes ([`crate::acme::ORDER_TIMEOUT`]
/// twice over), short enough that a crashed holder blocks renewal only briefly.
pub const ORDER_LEASE_TTL: Duration = Duration::from_secs(10 * 60);

/// How long to wait before looking again when another instance holds the order lease.
const LEASE_BUSY_RETRY: Duration = Duration::from_secs(60);

/// Longest single sleep: the manager wakes at least this often to re-read the clock, so
/// a suspended machine or a stepped clock delays renewal by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// How often the renewal window is asked again while a certificate is not yet due: a
/// CA moves windows earlier when it must revoke (RFC 9773 §4.3), and Let's Encrypt
/// suggests polling about twice a day.
pub const RENEWAL_INFO_POLL: Duration = Duration::from_secs(6 * 3600);

/// Events buffered for slow subscribers before the oldest are dropped.
const EVENT_BUFFER: usize = 256;

/// What happened to a certificate, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertEvent {
    /// A certificate was obtained for a name that had none.
    Obtained {
        /// The certificate name.
        name: String,
    },
    /// A certificate was replaced by a newer one.
    Renewed {
        /// The certificate name.
        name: String,
    },
    /// An attempt failed; the previous certificate (if any) is still served.
    Failed {
        /// The certificate name.
        name: String,
        /// Consecutive failures so far.
        attempt: u32,
        /// Why, as a message (no secrets).
        error: String,
    },
}

/// Something that can produce a certificate for a set of names.
pub trait Issuer: Send + Sync + 'static {
    /// Issues a certificate for `names` (the first is its name). `previous` is the
    /// certificate being replaced, if any; `now` is the manager's clock.
    fn issue<'a>(
        &'a self,
        names: &'a [String],
        previous: Option<&'a CertPem>,
        now: SystemTime,
    ) -> StoreFuture<'a, CertPem>;

    /// Whether a stored certificate came from this kind of issuer, so switching a site
    /// between `internal` and `acme` orders anew instead of serving the old one.
    fn accepts(&self, _cert: &LoadedCert) -> bool {
        true
    }

    /// The issuer's suggested renewal window for `cert`, if it has an opinion (ACME ARI).
    fn renewal_window<'a>(&'a self, _name: &'a str, _cert: &'a CertPem) -> StoreFuture<'a, Option<RenewalWindow>> {
        Box::pin(async { Ok(None) })
    }
}

impl Issuer for AcmeClient {
    fn issue<'a>(
        &'a self,
        names: &'a [String],
        previous: Option<&'a CertPem>,
        _now: SystemTime,
    ) -> StoreFuture<'a, CertPem> {
        Box::pin(self.order(names, previous))
    }

    fn accepts(&self, cert: &LoadedCert) -> bool {
        !crate::internal_ca::from_some_internal_ca(cert)
    }

    fn renewal_window<'a>(&'a self, name: &'a str, cert: &'a CertPem) -> StoreFuture<'a, Option<RenewalWindow>> {
        Box::pin(AcmeClient::renewal_window(self, name, &cert.chain_pem))
    }
}

impl Issuer for InternalCa {
    fn issue<'a>(
        &'a self,
        names: &'a [String],
        _previous: Option<&'a CertPem>,
        now: SystemTime,
    ) -> StoreFuture<'a, CertPem> {
        Box::pin(async move { InternalCa::issue(self, names, now) })
    }

    fn accepts(&self, cert: &LoadedCert) -> bool {
        self.issued(cert)
    }
}

/// One certificate the manager keeps current.
#[derive(Clone)]
pub struct ManagedCert {
    /// The names it covers; the first names the certificate in the store. Every name is
    /// served by the resolver.
    pub names: Vec<String>,
    /// Who issues it.
    pub issuer: Arc<dyn Issuer>,
}

impl std::fmt::Debug for ManagedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedCert")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// On-demand issuance: who decides, and who issues.
pub struct OnDemand {
    /// The allow-list / ask URL and rate limits.
    pub policy: OnDemandPolicy,
    /// The issuer for names obtained on demand (normally the ACME client).
    pub issuer: Arc<dyn Issuer>,
}

/// How the manager runs.
pub struct ManagerConfig {
    /// At most this many orders at once ([`DEFAULT_MAX_CONCURRENT_ORDERS`]).
    pub max_concurrent_orders: usize,
    /// This instance's name in order leases (e.g. host name and process id).
    pub holder: String,
    /// On-demand issuance; `None` (the default) refuses every unknown name.
    pub on_demand: Option<OnDemand>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_orders: DEFAULT_MAX_CONCURRENT_ORDERS,
            holder: format!("pid-{}", std::process::id()),
            on_demand: None,
        }
    }
}

struct Inner {
    store: Arc<dyn CertStore>,
    resolver: Arc<CertResolver>,
    clock: Arc<dyn Clock>,
    orders: Semaphore,
    events: broadcast::Sender<CertEvent>,
    holder: String,
    on_demand: Option<OnDemand>,
    /// Per-name gates so concurrent first handshakes for one on-demand name order once.
    on_demand_gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Renewal tasks by certificate name.
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
}

/// Keeps certificates obtained and renewed in the background.
///
/// Each managed certificate gets a task: it serves the stored certificate at once if
/// there is one, orders when none is usable, and then sleeps until renewal is due
/// (RFC 9773 window if the issuer offers one, else two thirds of the lifetime). Orders
/// share a semaphore, take the store's lease for the name, and on failure back off
/// exponentially with jitter while the previous certificate stays in service.
///
/// Dropping the manager stops its tasks.
pub struct CertManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("holder", &self.inner.holder)
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// Starts managing `certs` on the current tokio runtime.
    pub fn start(
        certs: Vec<ManagedCert>,
        store: Arc<dyn CertStore>,
        resolver: Arc<CertResolver>,
        clock: Arc<dyn Clock>,
        config: ManagerConfig,
    ) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let manager = Self {
            inner: Arc::new(Inner {
                store,
                resolver,
                clock,
                orders: Semaphore::new(config.max_concurrent_orders.max(1)),
                events,
                holder: config.holder,
                on_demand: config.on_demand,
                on_demand_gates: Mutex::new(HashMap::new()),
                tasks: Mutex::new(HashMap::new()),
            }),
        };
        for cert in certs {
            manager.add(cert);
        }
        manager
    }

    /// Starts managing one more certificate (e.g. a site added by a reload). A
    /// certificate already managed under the same name (first entry of `names`) gets a
    /// fresh task with the new names and issuer; its served certificate stays until the
    /// new task replaces it.
    pub fn add(&self, cert: ManagedCert) {
        let Some(name) = cert.names.first().cloned() else {
            return;
        };
        let inner = self.inner.clone();
        let handle = tokio::spawn(async move { inner.run(cert).await });
        if let Some(old) = lock(&self.inner.tasks).insert(name, handle) {
            old.abort();
        }
    }

    /// Stops managing the certificate `name` (e.g. a site removed by a reload). Serving
    /// is left to the caller, who knows which host names to [`CertResolver::remove`].
    /// Returns whether it was managed.
    pub fn remove(&self, name: &str) -> bool {
        match lock(&self.inner.tasks).remove(name) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// The names of the managed certificates, sorted.
    pub fn managed(&self) -> Vec<String> {
        let mut names: Vec<_> = lock(&self.inner.tasks).keys().cloned().collect();
        names.sort();
        names
    }

    /// Events from now on (obtained, renewed, failed).
    pub fn subscribe(&self) -> broadcast::Receiver<CertEvent> {
        self.inner.events.subscribe()
    }

    /// Days to expiry of every served certificate.
    pub fn expiries(&self) -> Vec<CertExpiry> {
        self.inner.resolver.expiries(self.inner.clock.now())
    }

    /// Makes sure `name` has a certificate, obtaining one on demand if the policy allows.
    ///
    /// The edge calls this from a lazy TLS acceptor after reading the ClientHello of a
    /// name the resolver does not know, then completes the handshake. Without on-demand
    /// TLS configured, unknown names are refused. A name obtained this way is renewed
    /// like a configured one.
    pub async fn ensure_on_demand(&self, name: &str) -> Result<(), OnDemandError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.inner.resolver.lookup(&name).is_some() {
            return Ok(());
        }
        let Some(on_demand) = &self.inner.on_demand else {
            return Err(OnDemandError::Disabled);
        };
        let gate = lock(&self.inner.on_demand_gates)
            .entry(name.clone())
            .or_default()
            .clone();
        let result = {
            let _held = gate.lock().await;
            self.obtain_on_demand(on_demand, name.clone()).await
        };
        // Forget the gate unless another handshake is waiting on it, so names an
        // attacker makes up do not accumulate.
        let mut gates = lock(&self.inner.on_demand_gates);
        if Arc::strong_count(&gate) <= 2 {
            gates.remove(&name);
        }
        result
    }

    async fn obtain_on_demand(&self, on_demand: &OnDemand, name: String) -> Result<(), OnDemandError> {
        if self.inner.resolver.lookup(&name).is_some() {
            return Ok(());
        }
        on_demand.policy.check(&name).await?;
        let cert = ManagedCert {
            names: vec![name.clone()],
            issuer: on_demand.issuer.clone(),
        };
        let mut state = Task::new(&self.inner, cert.clone());
        state.load_stored().await;
        if state.current.is_none() {
            state.attempt().await;
        }
        match state.current.is_some() {
            true => {
                // Hand the name to a renewal task (it re-reads the store we just wrote).
                self.add(cert);
                Ok(())
            }
            false => Err(OnDemandError::Issuance {
                name,
                reason: state.last_error.unwrap_or_else(|| "unknown error".into()),
            }),
        }
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        for (_, task) in lock(&self.inner.tasks).drain() {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections only push, drain or look up; a poisoned map is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One certificate's renewal loop state.
struct Task<'a> {
    inner: &'a Inner,
    cert: ManagedCert,
    current: Option<CertPem>,
    state: RenewalState,
    /// Jitter for this certificate until its state changes, so a window pick is stable.
    unit: f64,
    last_error: Option<String>,
}

impl<'a> Task<'a> {
    fn new(inner: &'a Inner, cert: ManagedCert) -> Self {
        Self {
            inner,
            cert,
            current: None,
            state: RenewalState {
                current: None,
                window: None,
                failures: 0,
                last_failure: None,
            },
            unit: fastrand::f64(),
            last_error: None,
        }
    }

    fn name(&self) -> &str {
        self.cert.names.first().map_or("", String::as_str)
    }

    /// Serves the stored certificate, if the store has a usable one.
    async fn load_stored(&mut self) -> bool {
        let name = self.name().to_owned();
        match self.inner.store.load_cert(&name).await {
            Ok(Some(pem)) => match LoadedCert::from_pem(&name, &pem) {
                Ok(loaded) if !self.cert.names.iter().all(|n| loaded.covers(n)) => {
                    tracing::info!(%name, "Stored certificate does not cover every host name; ordering a new one.");
                }
                Ok(loaded) if !self.cert.issuer.accepts(&loaded) => {
                    tracing::info!(%name, "Stored certificate comes from another issuer; ordering a new one.");
                }
                Ok(loaded) => {
                    let newer = self
                        .state
                        .current
                        .is_none_or(|v| loaded.validity.not_after > v.not_after);
                    if newer {
                        self.install(&loaded);
                        self.state.current = Some(loaded.validity);
                        self.state.window = self.window(&pem).await;
                        self.current = Some(pem);
                        return true;
                    }
                }
                Err(e) => tracing::warn!(%name, error = %e, "Stored certificate is unusable; ordering a new one."),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(%name, error = %e, "Could not read the stored certificate."),
        }
        false
    }

    async fn window(&self, pem: &CertPem) -> Option<RenewalWindow> {
        match self.cert.issuer.renewal_window(self.name(), pem).await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(name = self.name(), error = %e, "No renewal information; using the lifetime rule.");
                None
            }
        }
    }

    fn install(&self, loaded: &LoadedCert) {
        for name in &self.cert.names {
            self.inner.resolver.set(name, loaded);
        }
    }

    /// Whether the served certificate is still good enough not to order now.
    fn fresh(&self, now: SystemTime) -> bool {
        self.state.current.is_some_and(|v| renew_due(&v) > now)
    }

    /// One order attempt under the semaphore and the store's lease.
    async fn attempt(&mut self) {
        let name = self.name().to_owned();
        let Ok(permit) = self.inner.orders.acquire().await else {
            return;
        };
        match self
            .inner
            .store
            .try_lock(&name, &self.inner.holder, ORDER_LEASE_TTL)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Wait without holding an order slot, then adopt what the other one saved.
                drop(permit);
                tracing::debug!(%name, "Another instance is ordering this certificate.");
                tokio::time::sleep(LEASE_BUSY_RETRY).await;
                self.load_stored().await;
                return;
            }
            Err(e) => {
                self.failed(format!("taking the order lease: {e}"));
                return;
            }
        }
        // Another instance may have renewed while we waited for the lease.
        if self.load_stored().await && self.fresh(self.inner.clock.now()) {
            let _ = self.inner.store.unlock(&name, &self.inner.holder).await;
            return;
        }
        let result = self.order().await;
        if let Err(e) = self.inner.store.unlock(&name, &self.inner.holder).await {
            tracing::warn!(%name, error = %e, "Could not release the order lease.");
        }
        match result {
            Ok((pem, loaded)) => {
                let renewed = self.current.is_some();
                self.install(&loaded);
                self.state = RenewalState {
                    current: Some(loaded.validity),
                    window: self.window(&pem).await,
                    failures: 0,
                    last_failure: None,
                };
                self.current = Some(pem);
                self.unit = fastrand::f64();
                self.last_error = None;
                tracing::info!(%name, renewed, "Certificate obtained.");
                let event = if renewed {
                    CertEvent::Renewed { name }
                } else {
                    CertEvent::Obtained { name }
                };
                let _ = self.inner.events.send(event);
            }
            Err(e) => self.failed(e.to_string()),
        }
    }

    async fn order(&self) -> Result<(CertPem, LoadedCert), TlsError> {
        let name = self.name();
        let pem = self
            .cert
            .issuer
            .issue(&self.cert.names, self.current.as_ref(), self.inner.clock.now())
            .await?;
        let loaded = LoadedCert::from_pem(name, &pem)?;
        // A certificate we could not store is still served: ordering it again would
        // spend CA rate limits; the next start orders anew if the store stays broken.
        if let Err(e) = self.inner.store.save_cert(name, &pem).await {
            tracing::error!(%name, error = %e, "Could not store the new certificate; serving it anyway.");
        }
        Ok((pem, loaded))
    }

    fn failed(&mut self, error: String) {
        self.state.failures = self.state.failures.saturating_add(1);
        self.state.last_failure = Some(self.inner.clock.now());
        self.unit = fastrand::f64();
        let name = self.name().to_owned();
        tracing::warn!(%name, attempt = self.state.failures, %error, "Certificate order failed; keeping the current certificate.");
        let _ = self.inner.events.send(CertEvent::Failed {
            name,
            attempt: self.state.failures,
            error: error.clone(),
        });
        self.last_error = Some(error);
    }

    /// Sleeps until `at` by the manager's clock, waking at least every [`MAX_SLEEP`].
    async fn sleep_until(&self, at: SystemTime) {
        loop {
            let now = self.inner.clock.now();
            let Ok(left) = at.duration_since(now) else { return };
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(MAX_SLEEP)).await;
        }
    }
}

impl Inner {
    async fn run(&self, cert: ManagedCert) {
        if let Some(bad) = cert.names.iter().find(|n| check_name(n).is_err()) {
            tracing::error!(name = %bad, "Not managing a certificate with an invalid name.");
            return;
        }
        let mut task = Task::new(self, cert);
        task.load_stored().await;
        loop {
            let next = task.state.next_attempt(task.unit);
            let poll_at = self.clock.now() + RENEWAL_INFO_POLL;
            if next > poll_at
                && let Some(pem) = task.current.clone()
            {
                task.sleep_until(poll_at).await;
                let window = task.window(&pem).await;
                if window != task.state.window {
                    tracing::info!(name = task.name(), ?window, "The CA moved the renewal window.");
                    task.state.window = window;
                }
                continue;
            }
            task.sleep_until(next).await;
            task.attempt().await;
        }
    }
}
