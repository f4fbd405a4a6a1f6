//! Active health checks: a GET to each target on a timer.
//!
//! They run on their own thread with a small runtime, so a slow or hanging
//! target never takes time from the workers that serve requests.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_balance::Health;
use gatehouse_config::{HealthCheck, Target};
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

/// One target to check.
pub(crate) struct Job {
    pub(crate) target: Target,
    pub(crate) check: HealthCheck,
    pub(crate) health: Arc<Health>,
}

/// Starts the checker thread if there is anything to check.
pub(crate) fn start(jobs: Vec<Job>, shutdown: watch::Receiver<bool>) -> Option<std::thread::JoinHandle<()>> {
    if jobs.is_empty() {
        return None;
    }
    let spawned = std::thread::Builder::new()
        .name("gatehouse-health".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot start the health checker.");
                    return;
                }
            };
            runtime.block_on(async move {
                let tasks: Vec<_> = jobs
                    .into_iter()
                    .map(|job| tokio::spawn(run(job, shutdown.clone())))
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the health-checker thread.");
            None
        }
    }
}

async fn run(job: Job, mut shutdown: watch::Receiver<bool>) {
    // Spread the first checks so targets are not all probed in the same instant.
    let jitter = Duration::from_millis(fastrand::u64(..job.check.interval.as_millis().min(1000) as u64 + 1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + jitter, job.check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = ticker.tick() => {}
        }
        // A checker being replaced by a reload must not record a late result
        // into a health record the new checker already owns.
        let result = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            result = tokio::time::timeout(job.check.timeout, probe(&job)) => result,
        };
        let ok = match result {
            Ok(Ok(status)) => {
                let ok = (job.check.status.0..=job.check.status.1).contains(&status);
                if !ok {
                    tracing::debug!(target = %job.target.id, status, "Health check got an unhealthy status.");
                }
                ok
            }
            Ok(Err(e)) => {
                tracing::debug!(target = %job.target.id, error = %e, "Health check failed.");
                false
            }
            Err(_) => {
                tracing::debug!(target = %job.target.id, "Health check timed out.");
                false
            }
        };
        job.health.record_check(ok, job.check.rise, job.check.fall);
    }
}

/// One check on a fresh connection (it also proves the target accepts them).
async fn probe(job: &Job) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let stream = crate::connect::connect(&job.target).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn_task = tokio::spawn(conn);
    let req = Request::get(job.check.path.as_str())
        .header(header::HOST, job.target.authority.as_str())
        .header(header::USER_AGENT, "gatehouse-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    conn_task.abort();
    Ok(resp.status().as_u16())
}
