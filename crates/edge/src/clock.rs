//! The request path's clock: at most one reading per poll of a connection.
//!
//! A proxied request needs the time at many points: its start, the header and
//! response timers it arms, the idle pool's bookkeeping, the retry budget's
//! window, the `Date` field and its log line's durations. Most of them fall in
//! the same poll of its connection's task, microseconds apart: one when the
//! request arrives, one when the upstream's answer does.
//!
//! Inside a [`Timed`] future (each client connection's task) the first [`now`]
//! of a poll reads the clock and the rest of that poll reuse the reading, so a
//! request reads the clock about twice instead of about ten times. Outside one
//! (hyper's HTTP/2 stream tasks, the health checker, tests) every call reads
//! the clock. A reading is never carried from one poll to the next, so it is
//! never older than the poll that uses it.
//!
//! [`system_now`] derives the wall-clock time from [`now`] and a reading of
//! the system clock taken at most [`WALL_REFRESH`] before, so a change of the
//! system clock shows within that time.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// How long a wall-clock anchor is used before the system clock is read again.
const WALL_REFRESH: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
enum Reading {
    /// Not inside a [`Timed`] poll: every call reads the clock.
    Off,
    /// Inside a poll that has not read the clock yet.
    Unread,
    /// Inside a poll, which read the clock at this time.
    At(Instant),
}

thread_local! {
    static READING: Cell<Reading> = const { Cell::new(Reading::Off) };
    /// The system clock read at an instant, for [`system_now`].
    static WALL: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
}

/// The current time: this poll's reading inside a [`Timed`] future, a fresh
/// one outside.
pub(crate) fn now() -> Instant {
    READING.with(|reading| match reading.get() {
        Reading::At(at) => at,
        Reading::Off => Instant::now(),
        Reading::Unread => {
            let at = Instant::now();
            reading.set(Reading::At(at));
            at
        }
    })
}

/// The wall-clock time at [`now`].
pub(crate) fn system_now() -> SystemTime {
    let at = now();
    WALL.with(|wall| {
        if let Some((anchor, system)) = wall.get() {
            let since = at.saturating_duration_since(anchor);
            if since < WALL_REFRESH {
                return system + since;
            }
        }
        let system = SystemTime::now();
        wall.set(Some((at, system)));
        system
    })
}

pin_project_lite::pin_project! {
    /// A future whose every poll reads the clock at most once (see the
    /// module's documentation).
    pub(crate) struct Timed<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Timed<F> {
    pub(crate) fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Restored afterwards, and on unwinding, so a poll nested in another
        // (a future polled by hand inside this one) leaves the outer one as it was.
        struct Restore(Reading);
        impl Drop for Restore {
            fn drop(&mut self) {
                READING.with(|reading| reading.set(self.0));
            }
        }
        let _restore = Restore(READING.with(|reading| reading.replace(Reading::Unread)));
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `f` once inside a [`Timed`] future.
    fn in_one_poll<T>(f: impl FnOnce() -> T) -> T {
        let mut f = Some(f);
        let timed = Timed::new(std::future::poll_fn(move |_| Poll::Ready(f.take().map(|f| f()))));
        let waker = std::task::Waker::noop();
        match std::pin::pin!(timed).poll(&mut Context::from_waker(waker)) {
            Poll::Ready(Some(out)) => out,
            _ => unreachable!("the future is ready at once"),
        }
    }

    #[test]
    fn one_poll_reads_the_clock_once() {
        let (first, second) = in_one_poll(|| {
            let first = now();
            std::thread::sleep(Duration::from_millis(5));
            (first, now())
        });
        assert_eq!(first, second, "the second call reused the poll's reading");
    }

    #[test]
    fn a_reading_is_not_carried_into_the_next_poll_or_outside() {
        let step = Duration::from_millis(5);
        let in_first = in_one_poll(now);
        std::thread::sleep(step);
        let outside = now();
        assert!(outside >= in_first + step);
        std::thread::sleep(step);
        let outside_again = now();
        assert!(
            outside_again >= outside + step,
            "outside a poll, every call reads the clock"
        );
        std::thread::sleep(step);
        let in_next = in_one_poll(now);
        assert!(in_next >= outside_again + step);
    }

    #[test]
    fn a_nested_poll_leaves_the_outer_reading_alone() {
        let (outer, inner, after) = in_one_poll(|| {
            let outer = now();
            std::thread::sleep(Duration::from_millis(5));
            let inner = in_one_poll(now);
            (outer, inner, now())
        });
        assert!(
            inner >= outer + Duration::from_millis(5),
            "the nested poll read the clock afresh"
        );
        assert_eq!(after, outer, "the outer poll kept its reading");
    }

    #[test]
    fn wall_time_follows_the_system_clock() {
        let before = SystemTime::now();
        let derived = system_now();
        std::thread::sleep(Duration::from_millis(20));
        let later = system_now();
        let after = SystemTime::now();
        assert!(derived >= before - Duration::from_millis(1) && derived <= after);
        let step = later.duration_since(derived).expect("time went forward");
        assert!(step >= Duration::from_millis(20), "{step:?}");
        assert!(later <= after + Duration::from_millis(1));
    }
}
