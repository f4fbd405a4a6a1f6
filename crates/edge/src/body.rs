//! Body types on the request path.
//!
//! Both wrap hyper's streaming [`Incoming`] without buffering: data frames are
//! passed through one at a time, so memory stays bounded whatever the body size,
//! and back-pressure from the slower side reaches the faster one.

use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use gatehouse_files::{Chunk, FileBody};
use gatehouse_observe::{AccessLogSender, AccessRecord};
use gatehouse_policy::ConcurrencyGuard;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::fields::PassedFields;
use crate::h1::UpstreamBody;
use crate::idle::OpenRequest;

/// Limits on how a client sends a request body (`[limits]` and the route's
/// `max_body_size`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyRules {
    /// Most bytes accepted.
    pub(crate) max: Option<u64>,
    /// Longest pause between two reads.
    pub(crate) timeout: Duration,
    /// Slowest average rate (bytes per second) once `timeout` has passed.
    pub(crate) min_rate: Option<NonZeroU64>,
}

/// Why the edge stopped reading a request body; read by the handler to choose
/// 413 or 408 when the upstream exchange then fails.
#[derive(Debug, Default)]
pub(crate) struct BodyFault(AtomicU8);

impl BodyFault {
    const TOO_LARGE: u8 = 1;
    const TOO_SLOW: u8 = 2;

    pub(crate) fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::TOO_LARGE
    }

    pub(crate) fn too_slow(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::TOO_SLOW
    }
}

/// A request body the edge refused to keep reading.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The client's connection failed.
    #[error(transparent)]
    Client(#[from] hyper::Error),
    /// More bytes than `max_body_size`.
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    /// The body arrived too slowly.
    #[error("request body too slow")]
    TooSlow,
}

/// Enforcement state of [`BodyRules`]: created with the first poll.
struct Watch {
    rules: BodyRules,
    fault: Arc<BodyFault>,
    start: Instant,
    received: u64,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Watch {
    /// When the body is late: `timeout` after the last data, or when the average
    /// rate since `start + timeout` falls below `min_rate`.
    fn deadline(&self, now: Instant) -> Instant {
        let idle = now + self.rules.timeout;
        match self.rules.min_rate {
            Some(rate) => {
                let covered = Duration::from_secs_f64(self.received as f64 / rate.get() as f64);
                idle.min(self.start + self.rules.timeout + covered)
            }
            None => idle,
        }
    }
}

/// A client's request body as its connection delivers it: hyper's stream, or
/// `None` for a request without a body (see `front.rs`). Boxed, so a
/// `Request<ClientBody>` fits in 256 bytes: requests are moved through several
/// futures, and larger values take a slower copy each time.
pub(crate) type ClientBody = Option<Box<Incoming>>;

// The sizes the two comments on boxing rely on.
const _: () = assert!(std::mem::size_of::<http::Request<ClientBody>>() <= 256);
const _: () = assert!(std::mem::size_of::<http::Request<RequestBody>>() <= 256);

/// hyper's request body as a [`ClientBody`]: `None` when it is already known
/// to be empty, which saves the box.
pub(crate) fn client_body(body: Incoming) -> ClientBody {
    (!body.is_end_stream()).then(|| Box::new(body))
}

pin_project! {
    /// A client's request body on its way upstream, counting bytes for the
    /// access log when it is on, and enforcing the size and rate limits. Empty
    /// for replayed body-less requests.
    pub struct RequestBody {
        #[pin]
        inner: ClientBody,
        counter: Option<Arc<AtomicU64>>,
        watch: Option<Box<Watch>>,
        // A body read ahead so the request can be sent again (no `inner`);
        // boxed, as `inner` is, so the upstream request fits in 256 bytes.
        buffered: Option<Box<Bytes>>,
    }
}

impl RequestBody {
    pub(crate) fn new(inner: ClientBody, counter: Option<Arc<AtomicU64>>) -> Self {
        Self {
            inner,
            counter,
            watch: None,
            buffered: None,
        }
    }

    /// A body already read into memory (for a request that may be retried).
    pub(crate) fn buffered(data: Bytes) -> Self {
        Self {
            inner: None,
            counter: None,
            watch: None,
            buffered: (!data.is_empty()).then(|| Box::new(data)),
        }
    }

    /// Enforces `rules` on this body; `fault` records why reading stopped.
    pub(crate) fn with_rules(mut self, rules: BodyRules, fault: Arc<BodyFault>) -> Self {
        if !self.is_end_stream() {
            self.watch = Some(Box::new(Watch {
                rules,
                fault,
                start: Instant::now(),
                received: 0,
                timer: None,
            }));
        }
        self
    }

    /// No body (a retry of a request that had none).
    pub(crate) fn empty() -> Self {
        Self {
            inner: None,
            counter: None,
            watch: None,
            buffered: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(this.buffered.take().map(|d| Ok(Frame::data(*d))));
        };
        let res = inner.poll_frame(cx);
        let len = match &res {
            Poll::Ready(Some(Ok(frame))) => frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => 0,
        };
        if len > 0 {
            if let Some(counter) = this.counter.as_ref() {
                counter.fetch_add(len, Ordering::Relaxed);
            }
        }
        if let Some(watch) = this.watch.as_mut() {
            match &res {
                Poll::Ready(Some(Ok(_))) => {
                    watch.received += len;
                    if let Some(max) = watch.rules.max {
                        if watch.received > max {
                            watch.fault.0.store(BodyFault::TOO_LARGE, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(RequestBodyError::TooLarge(max))));
                        }
                    }
                    let deadline = watch.deadline(Instant::now());
                    if let Some(timer) = watch.timer.as_mut() {
                        timer.as_mut().reset(deadline.into());
                    }
                }
                Poll::Pending => {
                    if watch.timer.is_none() {
                        let deadline = watch.deadline(Instant::now());
                        watch.timer = Some(Box::pin(tokio::time::sleep_until(deadline.into())));
                    }
                    if let Some(timer) = watch.timer.as_mut() {
                        if timer.as_mut().poll(cx).is_ready() {
                            watch.fault.0.store(BodyFault::TOO_SLOW, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(RequestBodyError::TooSlow)));
                        }
                    }
                }
                _ => {}
            }
        }
        res.map(|o| o.map(|r| r.map_err(RequestBodyError::Client)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.buffered.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(self.buffered.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// Holds a request in a target's in-flight count (for least_conn and p2c)
/// until the response body is finished or dropped.
pub(crate) struct InFlight(pub(crate) Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        // The connection goes back to its pool when `body` has been read to the end.
        Upstream { #[pin] body: UpstreamBody, in_flight: Option<InFlight> },
        Full { data: Option<Bytes> },
        File { #[pin] body: FileBody },
    }
}

pin_project! {
    /// A response body sent to a client: streamed from an upstream or generated
    /// locally. When access logging is on it carries the request's log record,
    /// which is written when the body is finished or dropped (a client that goes
    /// away mid-download is still logged, with the bytes it got).
    pub struct ResponseBody {
        #[pin]
        kind: Kind,
        log: Option<Box<PendingLog>>,
        // Concurrency-limit slots, held until the body ends or is dropped.
        guards: Vec<ConcurrencyGuard>,
        // The request counts as open on an HTTP/2 connection until then.
        open: Option<OpenRequest>,
    }
}

impl ResponseBody {
    /// Streams an upstream body; its connection is released to its pool when
    /// the body ends, or closed if the body is dropped before that.
    pub(crate) fn upstream(body: UpstreamBody, in_flight: Option<InFlight>) -> Self {
        let in_flight = if body.is_end_stream() { None } else { in_flight };
        Self {
            kind: Kind::Upstream { body, in_flight },
            log: None,
            guards: Vec::new(),
            open: None,
        }
    }

    pub(crate) fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
            log: None,
            guards: Vec::new(),
            open: None,
        }
    }

    pub(crate) fn file(body: FileBody) -> Self {
        Self {
            kind: Kind::File { body },
            log: None,
            guards: Vec::new(),
            open: None,
        }
    }

    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Full { data: None },
            log: None,
            guards: Vec::new(),
            open: None,
        }
    }

    pub(crate) fn set_log(&mut self, log: Box<PendingLog>) {
        self.log = Some(log);
    }

    /// Holds concurrency-limit slots until the body ends.
    pub(crate) fn hold(&mut self, guards: Vec<ConcurrencyGuard>) {
        self.guards = guards;
    }

    /// Keeps the request open on its connection until the body ends.
    pub(crate) fn hold_open(&mut self, open: OpenRequest) {
        self.open = Some(open);
    }

    /// A proxied answer's header fields that are not in the response's
    /// `HeaderMap` (see `fields.rs`).
    pub(crate) fn passed_fields(&self) -> Option<&PassedFields> {
        match &self.kind {
            Kind::Upstream { body, .. } => body.fields(),
            _ => None,
        }
    }

    /// Takes the [`passed_fields`](Self::passed_fields): whoever does writes
    /// them, or puts them in the map.
    pub(crate) fn take_passed_fields(&mut self) -> Option<PassedFields> {
        match &mut self.kind {
            Kind::Upstream { body, .. } => body.take_fields(),
            _ => None,
        }
    }
}

/// Puts a proxied answer's passed fields into the response's `HeaderMap`, for
/// anything that reads or changes the fields, or writes only the map (hyper).
pub(crate) fn complete_headers(resp: &mut http::Response<ResponseBody>) {
    if let Some(fields) = resp.body_mut().take_passed_fields() {
        fields.merge_into(resp.headers_mut());
    }
}

/// Errors a response body can end with: the upstream connection or file I/O.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for ResponseBody {
    type Data = Chunk;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Chunk>, BoxError>>> {
        let this = self.project();
        let res = match this.kind.project() {
            KindProj::Upstream { mut body, in_flight } => {
                let res = body.as_mut().poll_frame(cx);
                let finished = match &res {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if finished {
                    in_flight.take();
                }
                res.map(|f| f.map(|f| f.map(|f| f.map_data(Chunk::Bytes)).map_err(Into::into)))
            }
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(Chunk::Bytes(d))))),
            KindProj::File { body } => body.poll_frame(cx).map_err(Into::into),
        };
        if let (Some(log), Poll::Ready(Some(Ok(frame)))) = (this.log.as_mut(), &res) {
            if let Some(data) = frame.data_ref() {
                log.record.bytes_out += data.remaining() as u64;
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::File { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::File { body } => body.size_hint(),
        }
    }
}

/// An access-log record waiting for its response body to finish.
pub(crate) struct PendingLog {
    pub(crate) sender: AccessLogSender,
    /// Sent when the body is done (on drop).
    pub(crate) record: AccessRecord,
    pub(crate) start: Instant,
    pub(crate) bytes_in: Option<Arc<AtomicU64>>,
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        let record = &mut self.record;
        record.duration = crate::clock::now().into_std().saturating_duration_since(self.start);
        if let Some(counter) = &self.bytes_in {
            record.bytes_in = counter.load(Ordering::Relaxed);
        }
        self.sender.send(record);
    }
}
