//! The request body of an upload, bounded in size and time.
//!
//! The release store reads the body as it arrives; this wrapper ends it with
//! an error when the client sends more than the slot's `max_upload`, pauses
//! longer than the idle timeout, or takes longer than the total timeout. It
//! records which of those happened, so the handler answers 413 or 408 rather
//! than the "malformed archive" the store sees.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Why an upload was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cutoff {
    /// More bytes than the limit.
    TooLarge,
    /// No bytes for the idle timeout.
    Idle,
    /// Past the total timeout.
    Deadline,
}

/// The error the store reads when an upload is cut off or the client's body
/// fails.
#[derive(Debug)]
pub(crate) enum UploadError {
    Cutoff(Cutoff),
    Body(String),
}

impl fmt::Display for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UploadError::Cutoff(Cutoff::TooLarge) => f.write_str("the upload is larger than the limit"),
            UploadError::Cutoff(Cutoff::Idle) => f.write_str("the client stopped sending"),
            UploadError::Cutoff(Cutoff::Deadline) => f.write_str("the upload took too long"),
            UploadError::Body(e) => write!(f, "the upload ended early: {e}"),
        }
    }
}

impl std::error::Error for UploadError {}

/// A body ended by size and time limits. See the module docs.
pub(crate) struct UploadBody<B> {
    inner: B,
    limit: u64,
    received: u64,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
    cutoff: Arc<OnceLock<Cutoff>>,
    /// The idle timer runs from the first poll after a frame was delivered:
    /// it measures how long the client keeps us waiting, not how long the
    /// store took to write the previous chunk.
    waiting: bool,
    done: bool,
}

impl<B> UploadBody<B> {
    /// Wraps `inner`; the returned cell is set when the body is cut off.
    pub(crate) fn new(inner: B, limit: u64, idle: Duration, total: Duration) -> (Self, Arc<OnceLock<Cutoff>>) {
        let now = Instant::now();
        let cutoff = Arc::new(OnceLock::new());
        let body = UploadBody {
            inner,
            limit,
            received: 0,
            idle,
            idle_timer: Box::pin(tokio::time::sleep_until(now + idle)),
            deadline: Box::pin(tokio::time::sleep_until(now + total)),
            cutoff: Arc::clone(&cutoff),
            waiting: true,
            done: false,
        };
        (body, cutoff)
    }

    fn cut(&mut self, why: Cutoff) -> Poll<Option<Result<Frame<Bytes>, UploadError>>> {
        self.done = true;
        let _ = self.cutoff.set(why);
        Poll::Ready(Some(Err(UploadError::Cutoff(why))))
    }
}

impl<B> Body for UploadBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    type Data = Bytes;
    type Error = UploadError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UploadError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.waiting {
            this.waiting = true;
            let next = Instant::now() + this.idle;
            this.idle_timer.as_mut().reset(next);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len() as u64);
                    if this.received > this.limit {
                        return this.cut(Cutoff::TooLarge);
                    }
                }
                this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(UploadError::Body(e.to_string()))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return this.cut(Cutoff::Deadline);
                }
                if this.idle_timer.as_mut().poll(cx).is_ready() {
                    return this.cut(Cutoff::Idle);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}
