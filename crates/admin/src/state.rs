//! What the handlers share: the release store, the deployable slots with
//! their limits, and the token.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_files::{DeployOptions, ReleaseStore};
use tokio::sync::Mutex;

/// Longest pause between two chunks of an upload. A client that sends
/// nothing for this long is stalled or gone; holding the slot's upload lock
/// and a staging directory longer only delays the next deploy.
pub const DEFAULT_UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest time one upload may take. The default `max_upload` (512 MiB)
/// arrives within it at about 1 MB/s; a frontend build (1–50 MiB) needs a
/// fraction of it even over a slow uplink.
pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Shared state of the admin API. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub(crate) releases: ReleaseStore,
    slots: Arc<BTreeMap<String, Slot>>,
    token: Option<Arc<Token>>,
    pub(crate) upload_idle_timeout: Duration,
    pub(crate) upload_timeout: Duration,
    pub(crate) upstreams: Option<crate::upstreams::UpstreamsSource>,
    pub(crate) certificates: Option<crate::certificates::CertificatesSource>,
    pub(crate) reload: Option<crate::reload::ReloadSource>,
}

/// A deployable slot.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Limits and retention of deploys to it.
    pub(crate) deploy: DeployOptions,
    /// Held for the whole of an upload: one upload per slot at a time, so two
    /// deploys cannot race to move the pointer.
    pub(crate) upload: Arc<Mutex<()>>,
}

/// The admin bearer token. `Debug` never shows it.
pub(crate) struct Token(Box<[u8]>);

impl Token {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl AdminState {
    /// Adds the live upstream view served at `GET /upstreams`.
    pub fn with_upstreams(mut self, source: crate::upstreams::UpstreamsSource) -> Self {
        self.upstreams = Some(source);
        self
    }

    /// Adds the certificate list served at `GET /certificates`.
    pub fn with_certificates(mut self, source: crate::certificates::CertificatesSource) -> Self {
        self.certificates = Some(source);
        self
    }

    /// Enables `POST /reload`, which runs `source`.
    pub fn with_reload(mut self, source: crate::reload::ReloadSource) -> Self {
        self.reload = Some(source);
        self
    }

    /// State for [`router`](crate::router).
    ///
    /// `deploy` names the slots that may be deployed to (those the config
    /// knows) with their deploy options; any other slot is answered 404.
    /// With `token` set, every endpoint but `/healthz` needs it as a bearer
    /// token; without one they are open (the config allows that on loopback
    /// addresses only).
    pub fn new(releases: ReleaseStore, deploy: HashMap<String, DeployOptions>, token: Option<String>) -> Self {
        let slots = deploy
            .into_iter()
            .map(|(name, deploy)| {
                let slot = Slot {
                    deploy,
                    upload: Arc::new(Mutex::new(())),
                };
                (name, slot)
            })
            .collect();
        AdminState {
            releases,
            slots: Arc::new(slots),
            token: token.map(|t| Arc::new(Token(t.into_bytes().into_boxed_slice()))),
            upload_idle_timeout: DEFAULT_UPLOAD_IDLE_TIMEOUT,
            upload_timeout: DEFAULT_UPLOAD_TIMEOUT,
            upstreams: None,
            certificates: None,
            reload: None,
        }
    }

    /// Changes the upload timeouts: `idle` between two chunks, `total` for
    /// the whole upload.
    #[must_use]
    pub fn with_upload_timeouts(mut self, idle: Duration, total: Duration) -> Self {
        self.upload_idle_timeout = idle;
        self.upload_timeout = total;
        self
    }

    pub(crate) fn token(&self) -> Option<Arc<Token>> {
        self.token.clone()
    }

    pub(crate) fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.get(name)
    }

    /// Names of the deployable slots, sorted.
    pub fn slot_names(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().map(String::as_str)
    }
}
