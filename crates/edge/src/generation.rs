//! Generations: one validated configuration with the edge state built from it.
//!
//! A reload builds a complete new generation beside the running one — router,
//! static services, health records, per-worker pools — and only then swaps it
//! in. What carries over from the previous generation is decided here:
//!
//! - the [`Health`] record of a target whose upstream name, address and passive
//!   settings are unchanged (so a target that is down or ejected stays so);
//! - the random sticky-cookie key of an upstream without a configured secret
//!   (so issued cookies keep pinning);
//! - a worker's connection pool of a target whose address and pool settings are
//!   unchanged (so a reload does not cause a burst of new upstream connections).
//!
//! Everything else is rebuilt. Requests already running keep the generation
//! they started with: they hold its `Arc`s until they end.

use std::sync::Arc;

use gatehouse_balance::{Health, PassiveConfig};
use gatehouse_config::{Target, Upstream};
use tokio::sync::watch;

use crate::handler::{Shared, Worker};
use crate::healthcheck;
use crate::pool::TargetPool;

/// The configuration being served, numbered from 1 at startup and counted up
/// by every successful reload.
pub(crate) struct Generation {
    /// 1 for the config the server started with.
    pub(crate) number: u64,
    /// State shared by every worker for this config.
    pub(crate) shared: Arc<Shared>,
}

/// The health record of `target` in the previous generation, if the target is
/// unchanged: same upstream, same address, same passive settings (a record
/// keeps the passive settings it was made with).
pub(crate) fn previous_health(
    previous: Option<&Shared>,
    upstream: &str,
    target: &Target,
    passive: PassiveConfig,
) -> Option<Arc<Health>> {
    let previous = previous?;
    let index = previous.config.upstreams.iter().position(|u| u.name == upstream)?;
    let old = &previous.config.upstreams[index];
    let old_passive = PassiveConfig {
        failures: old.passive.failures,
        cooldown: old.passive.cooldown,
        max_cooldown: old.passive.max_cooldown,
    };
    if old_passive != passive {
        return None;
    }
    let at = old.targets.iter().position(|t| t.id == target.id)?;
    previous.health.get(index)?.get(at).cloned()
}

/// The cookie key the previous generation used for `upstream`.
pub(crate) fn previous_cookie_key(previous: Option<&Shared>, upstream: &str) -> Option<Vec<u8>> {
    previous?.cookie_keys.get(upstream).cloned()
}

/// The previous generation's pool for `target` of `upstream`, if the target and
/// the pool settings are unchanged.
pub(crate) fn previous_pool(
    previous: Option<&Worker>,
    upstream: &Upstream,
    target: &Target,
) -> Option<Arc<TargetPool>> {
    previous?
        .pool(&upstream.name, &target.id)
        .filter(|pool| pool.fits(target, upstream))
        .cloned()
}

/// The active health checks of one generation, on their own thread.
pub(crate) struct Checker {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checker {
    /// Starts the checks of every target of `shared` whose upstream has
    /// `health` set. The checks write to the generation's (possibly inherited)
    /// health records.
    pub(crate) fn start(shared: &Shared) -> Self {
        let jobs = shared
            .config
            .upstreams
            .iter()
            .zip(&shared.health)
            .filter_map(|(u, health)| u.health.as_ref().map(|check| (u, health, check)))
            .flat_map(|(u, health, check)| {
                u.targets.iter().zip(health).map(|(t, h)| healthcheck::Job {
                    target: t.clone(),
                    check: check.clone(),
                    health: h.clone(),
                })
            })
            .collect();
        let (stop, rx) = watch::channel(false);
        Self {
            thread: healthcheck::start(jobs, rx),
            stop,
        }
    }

    /// Asks the checks to stop (a check in progress is abandoned) and returns
    /// the thread to join.
    pub(crate) fn stop(self) -> Option<std::thread::JoinHandle<()>> {
        let _ = self.stop.send(true);
        self.thread
    }
}
