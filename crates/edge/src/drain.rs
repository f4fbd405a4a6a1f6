//! Draining client connections, and closing idle HTTP/2 ones.
//!
//! When its listener is removed or the server stops, every connection is asked
//! to finish gracefully: an HTTP/1 connection closes after its current
//! response, an HTTP/2 one sends GOAWAY and closes once its open streams end.
//! What is still open at the deadline is closed ([`Drain::force`]).
//! An HTTP/2 connection left idle (see [`Activity::idle`]) is asked the same
//! way, and closed if it has not ended one idle period later (the GOAWAY
//! exchange needs the client's answer); an idle HTTP/1 connection times out on
//! its own head timeout (`front.rs`, or hyper's).
//!
//! The connection's task checks an atomic flag on each wake-up and hands its
//! waker to the drain once. (A channel receiver polled on every wake-up, as a
//! `watch`, takes a lock each time: measurable on a path that wakes twice per
//! proxied request.)

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::service::HttpService;
use hyper_util::server::conn::auto::{HttpServerConnExec, UpgradeableConnection};

use crate::idle::Activity;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection that can be asked to finish gracefully.
pub(crate) trait Graceful: Future {
    /// Starts the graceful end; the connection must still be polled to its end.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, E, B> Graceful for UpgradeableConnection<'static, I, S, E>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: HttpServerConnExec<S::Future, B>,
    Self: Future,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    Self: Future,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// The connections one accept loop is responsible for.
#[derive(Default)]
pub(crate) struct Drain {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    stopping: AtomicBool,
    /// Past the deadline: connections end without finishing.
    force: AtomicBool,
    next_id: AtomicU64,
    /// Every connection not yet ended, with its task's waker once polled.
    conns: Mutex<HashMap<u64, Option<Waker>>>,
    /// Woken when the last connection ends after `stopping` was set.
    all_ended: tokio::sync::Notify,
}

impl Inner {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Option<Waker>>> {
        // The map stays consistent whatever panicked while holding it.
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes every connection that has been polled (outside the lock).
    fn wake_all(&self) {
        let wakers: Vec<Waker> = self.conns().values().flatten().cloned().collect();
        for waker in wakers {
            waker.wake();
        }
    }
}

impl Drain {
    /// Counts a newly accepted connection, from before its handshake on.
    pub(crate) fn enter(&self) -> Entered {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner.conns().insert(id, None);
        Entered {
            inner: self.inner.clone(),
            id,
            waker: None,
        }
    }

    /// Connections not yet ended.
    pub(crate) fn count(&self) -> usize {
        self.inner.conns().len()
    }

    /// Asks every connection to finish and waits until all have ended.
    pub(crate) async fn shutdown(&self) {
        let ended = self.inner.all_ended.notified();
        tokio::pin!(ended);
        // Registered before the flag is set, so the last connection's
        // notification cannot slip in between.
        ended.as_mut().enable();
        self.inner.stopping.store(true, Ordering::SeqCst);
        if self.inner.conns().is_empty() {
            return;
        }
        self.inner.wake_all();
        ended.await;
    }

    /// Closes every connection still open (after [`Self::shutdown`] ran out of
    /// time): each ends at its next poll, which this brings about.
    pub(crate) fn force(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.force.store(true, Ordering::SeqCst);
        self.inner.wake_all();
    }
}

/// A connection counted by its [`Drain`]; uncounted when dropped.
pub(crate) struct Entered {
    inner: Arc<Inner>,
    id: u64,
    /// The waker last handed to the drain.
    waker: Option<Waker>,
}

impl Entered {
    /// Whether the drain has started; until it has, the drain holds this
    /// task's waker (handed over again only when it changes).
    pub(crate) fn poll_stopping(&mut self, cx: &Context<'_>) -> bool {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            if let Some(slot) = self.inner.conns().get_mut(&self.id) {
                *slot = Some(waker.clone());
            }
            self.waker = Some(waker);
        }
        // Read after the waker is in place: a drain that started before it
        // was either sees it or is seen here.
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Whether the drain's deadline has passed: the connection must end now.
    pub(crate) fn is_forced(&self) -> bool {
        self.inner.force.load(Ordering::SeqCst)
    }

    /// Completes once the drain has started: for the work before the
    /// connection is served (a TLS handshake, waiting for the first bytes),
    /// which has nothing to finish and simply stops.
    pub(crate) async fn stopped(&mut self) {
        std::future::poll_fn(|cx| {
            if self.poll_stopping(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Serves `conn` until it ends, asking it to finish when the drain starts or,
    /// with `idle`, when the HTTP/2 connection has been idle for the period.
    pub(crate) fn serve<C: Graceful>(self, conn: C, idle: Option<(Arc<Activity>, Duration)>) -> Draining<C> {
        Draining {
            conn,
            entered: self,
            asked: false,
            went_idle: false,
            idle: idle.map(|(activity, period)| {
                Box::pin(async move {
                    activity.idle(period).await;
                    period
                }) as Pin<Box<dyn Future<Output = Duration> + Send>>
            }),
            grace: None,
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut conns = self.inner.conns();
        conns.remove(&self.id);
        if conns.is_empty() && self.inner.stopping.load(Ordering::SeqCst) {
            self.inner.all_ended.notify_waiters();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection being served under a [`Drain`]; see [`Entered::serve`].
    pub(crate) struct Draining<C> {
        #[pin]
        conn: C,
        entered: Entered,
        asked: bool,
        went_idle: bool,
        idle: Option<Pin<Box<dyn Future<Output = Duration> + Send>>>,
        // How long an idle connection asked to close has left.
        grace: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

/// How a connection ended.
pub(crate) struct Ended<T> {
    /// The connection's own result; `None` when it was closed unfinished (the
    /// drain's deadline, or an idle connection that did not end in time).
    pub(crate) output: Option<T>,
    /// It was an idle HTTP/2 connection, asked to close.
    pub(crate) idle: bool,
}

impl<C: Graceful> Future for Draining<C> {
    type Output = Ended<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !*this.asked {
            if this.entered.poll_stopping(cx) {
                *this.asked = true;
                this.conn.as_mut().graceful_shutdown();
            } else if let Some(idle) = this.idle.as_mut() {
                if let Poll::Ready(period) = idle.as_mut().poll(cx) {
                    *this.idle = None;
                    *this.asked = true;
                    *this.went_idle = true;
                    *this.grace = Some(Box::pin(tokio::time::sleep(period)));
                    this.conn.as_mut().graceful_shutdown();
                }
            }
        }
        if let Poll::Ready(output) = this.conn.poll(cx) {
            return Poll::Ready(Ended {
                output: Some(output),
                idle: *this.went_idle,
            });
        }
        let out_of_time = this.grace.as_mut().is_some_and(|g| g.as_mut().poll(cx).is_ready());
        if out_of_time || (*this.asked && this.entered.inner.force.load(Ordering::SeqCst)) {
            // Dropping the connection closes it.
            return Poll::Ready(Ended {
                output: None,
                idle: *this.went_idle,
            });
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that ends once asked to, unless it is stubborn (a client
    /// that never answers the GOAWAY exchange, a request that never ends).
    #[derive(Default)]
    struct Conn {
        asked: bool,
        stubborn: bool,
    }

    impl Future for Conn {
        type Output = &'static str;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<&'static str> {
            if self.asked && !self.stubborn {
                Poll::Ready("finished")
            } else {
                Poll::Pending
            }
        }
    }

    /// Whether `shutdown` has still not completed 100 ms on.
    async fn still_waiting(shutdown: impl Future<Output = ()>) -> bool {
        tokio::time::timeout(Duration::from_millis(100), shutdown)
            .await
            .is_err()
    }

    fn stubborn() -> Conn {
        Conn {
            asked: false,
            stubborn: true,
        }
    }

    impl Graceful for Conn {
        fn graceful_shutdown(self: Pin<&mut Self>) {
            self.get_mut().asked = true;
        }
    }

    #[tokio::test]
    async fn shutdown_asks_every_connection_and_waits_for_all() {
        let drain = Drain::default();
        let served = tokio::spawn(drain.enter().serve(Conn::default(), None));
        // Counted before its first poll too (as during a TLS handshake).
        let waiting = drain.enter();
        tokio::task::yield_now().await;
        assert_eq!(drain.count(), 2);
        assert!(!drain.inner.stopping.load(Ordering::SeqCst));

        let shutdown = drain.shutdown();
        tokio::pin!(shutdown);
        // The served connection finishes; the other one is still counted.
        assert!(still_waiting(&mut shutdown).await);
        let ended = served.await.unwrap();
        assert_eq!((ended.output, ended.idle), (Some("finished"), false));
        assert_eq!(drain.count(), 1);
        assert!(waiting.inner.stopping.load(Ordering::SeqCst));
        drop(waiting);
        tokio::time::timeout(Duration::from_secs(1), shutdown)
            .await
            .expect("the drain ends with its last connection");
        assert_eq!(drain.count(), 0);
    }

    #[tokio::test]
    async fn work_before_serving_stops_when_the_drain_starts() {
        let drain = Drain::default();
        let mut entered = drain.enter();
        let waiting = tokio::spawn(async move {
            entered.stopped().await;
            entered
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let shutdown = drain.shutdown();
        tokio::pin!(shutdown);
        // The drain starts, and waits for this connection...
        assert!(still_waiting(&mut shutdown).await);
        // ...which it woke; dropping it (the connection given up) ends the drain.
        let entered = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the drain")
            .unwrap();
        drop(entered);
        tokio::time::timeout(Duration::from_secs(1), shutdown)
            .await
            .expect("the drain ends with it");
    }

    #[tokio::test]
    async fn a_connection_entering_a_stopped_drain_is_asked_at_once() {
        let drain = Drain::default();
        tokio::time::timeout(Duration::from_secs(1), drain.shutdown())
            .await
            .expect("nothing to wait for");
        let ended = tokio::time::timeout(Duration::from_secs(1), drain.enter().serve(Conn::default(), None))
            .await
            .expect("asked on its first poll");
        assert_eq!(ended.output, Some("finished"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_asked_to_close_and_says_so() {
        let drain = Drain::default();
        let activity = Arc::new(Activity::default());
        let period = Duration::from_secs(10);
        let ended = tokio::time::timeout(
            Duration::from_secs(25),
            drain.enter().serve(Conn::default(), Some((activity, period))),
        )
        .await
        .expect("closed within two periods");
        assert_eq!((ended.output, ended.idle), (Some("finished"), true));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_that_does_not_end_is_closed_a_period_later() {
        let drain = Drain::default();
        let activity = Arc::new(Activity::default());
        let period = Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        let ended = tokio::time::timeout(
            Duration::from_secs(60),
            drain.enter().serve(stubborn(), Some((activity, period))),
        )
        .await
        .expect("closed without the client's help");
        assert_eq!((ended.output, ended.idle), (None, true));
        let waited = started.elapsed();
        // Idle after one or two periods, then one more.
        assert!(
            waited >= Duration::from_secs(20) && waited <= Duration::from_secs(30),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn force_closes_what_the_drain_could_not_finish() {
        let drain = Drain::default();
        let served = tokio::spawn(drain.enter().serve(stubborn(), None));
        tokio::task::yield_now().await;
        assert!(
            still_waiting(drain.shutdown()).await,
            "a connection that does not finish keeps the drain waiting"
        );
        drain.force();
        let ended = tokio::time::timeout(Duration::from_secs(1), served)
            .await
            .expect("closed at once")
            .unwrap();
        assert_eq!(ended.output, None);
        assert_eq!(drain.count(), 0);
    }
}
