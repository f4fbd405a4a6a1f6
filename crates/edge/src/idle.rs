//! Telling when an HTTP/2 client connection is idle.
//!
//! An idle HTTP/1 keep-alive connection is closed by its own head timeout
//! (`front.rs`, or hyper's after a hand-over), which covers the wait for the
//! next request; hyper has no idle timeout for HTTP/2.
//! An HTTP/2 connection counts its requests here instead: one with no request
//! open and none started for a whole period is asked to close (GOAWAY) by
//! [`crate::drain`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Requests of one client connection.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    started: AtomicU64,
    open: AtomicU32,
}

/// Holds a request open on its connection until the guard (carried by the
/// response body) is dropped.
#[derive(Debug)]
pub(crate) struct OpenRequest(Arc<Activity>);

impl Activity {
    /// Records a request starting.
    pub(crate) fn begin(self: &Arc<Self>) -> OpenRequest {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenRequest(self.clone())
    }

    /// Completes once a whole `period` passed with no request open and none
    /// started: between one and two periods after the connection went idle.
    pub(crate) async fn idle(&self, period: Duration) {
        let mut seen = self.started.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(period).await;
            let now = self.started.load(Ordering::Relaxed);
            if now == seen && self.open.load(Ordering::Relaxed) == 0 {
                return;
            }
            seen = now;
        }
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_open_requests_and_new_ones() {
        let activity = Arc::new(Activity::default());
        let period = Duration::from_secs(10);
        let open = activity.begin();
        let started = tokio::time::Instant::now();
        let idle = activity.idle(period);
        tokio::pin!(idle);
        // An open request keeps the connection for as long as it lasts.
        assert!(tokio::time::timeout(Duration::from_secs(35), &mut idle).await.is_err());
        drop(open);
        idle.await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(40) && waited <= Duration::from_secs(50),
            "{waited:?}"
        );

        // A request that started and ended within a period counts as activity.
        let started = tokio::time::Instant::now();
        let idle = activity.idle(period);
        tokio::pin!(idle);
        assert!(tokio::time::timeout(Duration::from_secs(5), &mut idle).await.is_err());
        drop(activity.begin());
        idle.await;
        assert!(started.elapsed() >= Duration::from_secs(20), "{:?}", started.elapsed());
    }
}
