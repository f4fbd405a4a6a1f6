//! Client connections speaking HTTP/1.1, served without hyper for the common
//! request.
//!
//! hyper's server side (its parser, dispatcher and encoder) was the largest
//! single cost on the proxy path. This loop serves a connection's requests
//! itself for as long as each one is a plain HTTP/1.1 request without a body:
//! no `Transfer-Encoding`, no `Content-Length` but a single `Content-Length: 0`,
//! no `Expect`, no `Upgrade` (nor `Connection: upgrade`), and not `CONNECT`. Any other request — one with a
//! body, an upgrade, HTTP/1.0, a head that does not parse or is too large — is
//! handed to hyper at a request boundary, together with every byte read so far
//! ([`Ended::HandOff`]). hyper then serves the rest of the connection exactly as
//! it would have from the start, its error answers (400, 414, 431) included.
//! A request body is therefore never read here: whatever follows a head is the
//! next request (RFC 9112 §6.3: a request without either field has no body).
//!
//! - Heads are parsed by `httparse` (hyper's own parser) into `http` types;
//!   header values share the read buffer.
//! - A proxied answer's header fields are written as they arrived from the
//!   upstream ([`CarriesFields`], `fields.rs`), after those gatehouse did not
//!   set itself.
//! - Responses are framed per RFC 9112 §6: no body after HEAD, 204 and 304;
//!   `Content-Length` when the length is known, chunked otherwise. A
//!   `Transfer-Encoding` field from the handler is never passed on.
//! - A head and as much of its body as is ready go out in one `writev`.
//! - `header_timeout` runs from when the connection starts waiting for a head:
//!   an idle keep-alive connection is closed when it passes, and a client that
//!   has not finished its first head gets 408 ([`Ended::TimedOut`]).
//! - Draining ([`serve`]'s `stop`): a connection waiting for a head closes at
//!   once; one with a request in progress closes after its response, which
//!   says `Connection: close`.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::{ClientBody, ResponseBody};
use crate::drain::Entered;
use crate::fields::PassedFields;
use crate::h1::{FieldNames, deadline_after, parse_decimal, write_hex};

/// Header fields parsed in place. A request with more (when `max_headers`
/// allows them) goes to hyper.
const MAX_FIELDS: usize = 100;
/// Free room the read buffer has before each read.
const READ_SIZE: usize = 8 * 1024;
/// Pieces (head, body data, chunk framing) gathered for one `writev`.
const MAX_PIECES: usize = 32;
/// Body bytes gathered before they are written.
const MAX_QUEUED: usize = 64 * 1024;

/// What a client that never finished its first request head gets before the
/// connection closes.
pub(crate) const REQUEST_TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
/// The request-head limits of a connection, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Time to send a head, from when the connection starts waiting for it.
    pub(crate) header_timeout: Duration,
    /// Largest head, in bytes.
    pub(crate) max_head: usize,
    /// Most header fields.
    pub(crate) max_headers: usize,
}

impl Limits {
    pub(crate) fn new(limits: &gatehouse_config::Limits) -> Self {
        Self {
            header_timeout: limits.header_timeout,
            max_head: limits.max_header_size,
            max_headers: limits.max_headers,
        }
    }
}

/// A response body that may hold header fields of its own: a proxied
/// answer's, passed on without a `HeaderMap` (`fields.rs`). They are written
/// before the response's own fields, except those the response's map also
/// names.
pub(crate) trait CarriesFields {
    /// The fields, taken out of the body.
    fn take_fields(&mut self) -> Option<PassedFields>;
}

impl CarriesFields for ResponseBody {
    fn take_fields(&mut self) -> Option<PassedFields> {
        self.take_passed_fields()
    }
}

/// How [`serve`] ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The connection is done: closed by either side, failed, drained, or a
    /// response asked to close it.
    Closed,
    /// No complete head within `header_timeout`, after `served` requests.
    TimedOut { served: u64 },
    /// A request this loop does not serve starts with these bytes (everything
    /// read and not yet answered): hyper takes the connection over.
    HandOff(Bytes),
}

/// Serves HTTP/1.1 requests on `io`, each answered by `service`, until the
/// connection ends or a request must go to hyper. `stop` asks the connection to
/// finish (a drain); the caller wakes the task when it is set.
pub(crate) async fn serve<I, F, Fut, B>(io: &mut I, limits: &Limits, stop: &AtomicBool, mut service: F) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<ClientBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body + CarriesFields,
{
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut names = FieldNames::default();
    let mut out: Vec<u8> = Vec::with_capacity(512);
    let mut pieces: VecDeque<Piece<B::Data>> = VecDeque::with_capacity(MAX_PIECES);
    // One timer for the connection, moved later for each head: moving a
    // pending tokio timer is one atomic update.
    let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
    let mut served = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            // A drain started while the last response went out: a pipelined
            // request is left unanswered, as on any connection that closes.
            return Ended::Closed;
        }
        timer.as_mut().reset(deadline_after(limits.header_timeout));
        let (req, asked_close) = loop {
            if !buf.is_empty() {
                match parse(&mut buf, &mut names, limits) {
                    Parsed::Request(req, close) => break (req, close),
                    Parsed::Partial => {}
                    Parsed::HandOff(bytes) => return Ended::HandOff(bytes),
                }
            }
            let waited = poll_fn(|cx| {
                // Checked before every read, so nothing is handed to hyper
                // once a drain has started.
                if stop.load(Ordering::Relaxed) {
                    return Poll::Ready(Wait::Stop);
                }
                if buf.capacity() - buf.len() < READ_SIZE / 2 {
                    buf.reserve(READ_SIZE);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut buf) {
                    Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(Wait::Closed),
                    Poll::Ready(Ok(_)) => Poll::Ready(Wait::Data),
                    Poll::Pending => {
                        // Outside tokio's cooperative budget, as
                        // `tokio::time::timeout` polls its timer.
                        let expired = pin!(tokio::task::coop::unconstrained(timer.as_mut()))
                            .poll(cx)
                            .is_ready();
                        if expired {
                            Poll::Ready(Wait::TimedOut)
                        } else {
                            Poll::Pending
                        }
                    }
                }
            })
            .await;
            match waited {
                Wait::Data => {}
                Wait::Closed | Wait::Stop => return Ended::Closed,
                Wait::TimedOut => return Ended::TimedOut { served },
            }
        };
        served += 1;
        let head_only = *req.method() == Method::HEAD;
        let mut handling = pin!(service(req));
        let handled = poll_fn(|cx| {
            if let Poll::Ready(resp) = handling.as_mut().poll(cx) {
                return Poll::Ready(Some(resp));
            }
            if client_gone(&mut *io, &mut buf, cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let Some(resp) = handled else {
            // Nobody is waiting: the request is dropped, and with it its
            // upstream exchange and the slots it holds.
            return Ended::Closed;
        };
        let close = asked_close || stop.load(Ordering::Relaxed);
        let keep = respond(&mut *io, &mut buf, &mut out, &mut pieces, resp, head_only, close).await;
        if !keep {
            let _ = poll_fn(|cx| Pin::new(&mut *io).poll_shutdown(cx)).await;
            return Ended::Closed;
        }
    }
}

/// While a request is in progress: whether the client has closed its side (or
/// the connection failed), which ends the request as hyper does. What the client
/// sends meanwhile (a pipelined request) is kept in `buf`, and once there is
/// any the connection is not read again until the response is out. No system
/// call unless the poller saw the socket become readable.
fn client_gone<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut, cx: &mut Context<'_>) -> bool {
    if !buf.is_empty() {
        return false;
    }
    if buf.capacity() < READ_SIZE / 2 {
        buf.reserve(READ_SIZE);
    }
    matches!(
        tokio_util::io::poll_read_buf(Pin::new(io), cx, buf),
        Poll::Ready(Ok(0) | Err(_))
    )
}

/// [`serve`] under a drain: the loop is asked to stop when the drain starts,
/// and ended (`None`) once the drain's deadline has passed.
pub(crate) async fn serve_draining<I, F, Fut, B>(
    io: &mut I,
    limits: &Limits,
    entered: &mut Entered,
    service: F,
) -> Option<Ended>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<ClientBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body + CarriesFields,
{
    let stop = AtomicBool::new(false);
    let mut front = pin!(serve(io, limits, &stop, service));
    poll_fn(|cx| {
        if entered.poll_stopping(cx) {
            stop.store(true, Ordering::Relaxed);
            if entered.is_forced() {
                return Poll::Ready(None);
            }
        }
        front.as_mut().poll(cx).map(Some)
    })
    .await
}

/// What waiting for more of a head brought.
enum Wait {
    Data,
    Closed,
    Stop,
    TimedOut,
}

/// The outcome of parsing what a connection has read.
#[derive(Debug)]
// Made once per request and moved straight on: boxing the request would only
// add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
    /// A request this loop serves, and whether the client asked to close.
    Request(Request<ClientBody>, bool),
    /// The head is not complete yet.
    Partial,
    /// Hyper's to serve, from these bytes on.
    HandOff(Bytes),
}

/// Parses the request head at the start of `buf`. On success the head is taken
/// off `buf`; on [`Parsed::HandOff`] everything is.
pub(crate) fn parse(buf: &mut BytesMut, names: &mut FieldNames, limits: &Limits) -> Parsed {
    // Where the target and each field lie in `buf`: the parse borrows `buf`,
    // and only the head is split off it afterwards.
    let mut spans = [[0u32; 4]; MAX_FIELDS];
    let parsed = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        // Only the first `max_head` bytes can hold a head: what lies beyond
        // never changes the outcome, however the bytes arrived.
        let window = &buf[..buf.len().min(limits.max_head)];
        let max = limits.max_headers.clamp(1, MAX_FIELDS);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            window,
            &mut slots[..max],
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if window.len() < limits.max_head => return Parsed::Partial,
            // Too large, too many fields, or invalid: hyper answers.
            _ => return Parsed::HandOff(buf.split().freeze()),
        };
        match plain_request(&req) {
            Some((method, close)) => {
                let base = window.as_ptr() as usize;
                // Offsets within a head (at most 16 MiB) fit in u32.
                let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
                let path = req.path.unwrap_or_default().as_bytes();
                let target = [at(path), at(path) + path.len() as u32];
                for (span, h) in spans.iter_mut().zip(req.headers.iter()) {
                    let (name, value) = (at(h.name.as_bytes()), at(h.value));
                    *span = [name, name + h.name.len() as u32, value, value + h.value.len() as u32];
                }
                Some((len, method, target, req.headers.len(), close))
            }
            None => None,
        }
    };
    let Some((len, method, [target_start, target_end], fields, close)) = parsed else {
        return Parsed::HandOff(buf.split().freeze());
    };
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target_start as usize..target_end as usize)) else {
        return Parsed::HandOff(rejoin(head, buf));
    };
    let mut headers = HeaderMap::with_capacity(fields);
    for (position, &[name_start, name_end, value_start, value_end]) in spans[..fields].iter().enumerate() {
        let name = names.name(position, &head[name_start as usize..name_end as usize]);
        let value = HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize));
        match (name, value) {
            (Ok(name), Ok(value)) => headers.append(name, value),
            _ => return Parsed::HandOff(rejoin(head, buf)),
        };
    }
    let mut req = Request::new(None);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Request(req, close)
}

/// A request [`parse`] accepted, as plain values (for the fuzz targets and
/// property tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    /// Length of its head in the input.
    pub head_len: usize,
    pub method: String,
    pub target: String,
    /// Field names (lower case) and values, in order.
    pub fields: Vec<(String, Vec<u8>)>,
    /// The client asked to close the connection.
    pub close: bool,
}

/// Feeds `data` to [`parse`] `step` bytes at a time, as reads would bring it
/// (with default limits), and returns every request served here in order, then
/// `Ok` with what hyper gets (the bytes handed over, then those not read yet)
/// or `Err` with the bytes still waiting for the rest of a head.
pub(crate) fn read_requests(data: &[u8], step: usize) -> (Vec<ParsedRequest>, Result<Vec<u8>, Vec<u8>>) {
    let limits = Limits {
        header_timeout: Duration::from_secs(30),
        max_head: 64 * 1024,
        max_headers: 100,
    };
    let (mut buf, mut names, mut requests) = (BytesMut::new(), FieldNames::default(), Vec::new());
    for (i, piece) in data.chunks(step.max(1)).enumerate() {
        buf.extend_from_slice(piece);
        while !buf.is_empty() {
            let before = buf.len();
            match parse(&mut buf, &mut names, &limits) {
                Parsed::Request(req, close) => requests.push(ParsedRequest {
                    head_len: before - buf.len(),
                    method: req.method().to_string(),
                    target: req.uri().to_string(),
                    fields: req
                        .headers()
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                        .collect(),
                    close,
                }),
                Parsed::Partial => break,
                Parsed::HandOff(bytes) => {
                    // hyper reads what was not read yet from the socket.
                    let unread = data.get((i + 1) * step.max(1)..).unwrap_or_default();
                    return (requests, Ok([&bytes[..], unread].concat()));
                }
            }
        }
    }
    (requests, Err(buf.to_vec()))
}

/// The method of a request this loop serves, and whether it asks to close the
/// connection; `None` for one that goes to hyper.
fn plain_request(req: &httparse::Request<'_, '_>) -> Option<(Method, bool)> {
    if req.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    if method == Method::CONNECT {
        return None;
    }
    let (mut close, mut length) = (false, false);
    for field in req.headers.iter() {
        let name = field.name.as_bytes();
        let is = |known: &[u8]| name.len() == known.len() && name.eq_ignore_ascii_case(known);
        if is(b"content-length") {
            // One `Content-Length: 0` (an empty POST, say) has no body
            // either; any other length, or a second field, goes to hyper.
            if length || field.value != b"0" {
                return None;
            }
            length = true;
        }
        if is(b"transfer-encoding") || is(b"expect") || is(b"upgrade") {
            return None;
        }
        if is(b"connection") {
            for token in field.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                }
            }
        }
    }
    Some((method, close))
}

/// `head` followed by what is left in `buf`, for a hand-off after the head was
/// split off (rare: only a target or field that `http` refuses).
fn rejoin(head: Bytes, buf: &mut BytesMut) -> Bytes {
    let mut all = BytesMut::with_capacity(head.len() + buf.len());
    all.extend_from_slice(&head);
    all.extend_from_slice(buf);
    buf.clear();
    all.freeze()
}

/// A piece of what goes out: a range of the connection's `out` buffer (a head,
/// a chunk-size line), body data, or fixed framing.
enum Piece<D> {
    Out(usize, usize),
    Data(D),
    Fixed(&'static [u8]),
}

impl<D: Buf> Piece<D> {
    fn bytes<'a>(&'a self, out: &'a [u8]) -> &'a [u8] {
        match self {
            Piece::Out(start, end) => &out[*start..*end],
            Piece::Data(d) => d.chunk(),
            Piece::Fixed(s) => s,
        }
    }

    /// Consumes up to `n` bytes; returns how many.
    fn advance(&mut self, n: usize) -> usize {
        match self {
            Piece::Out(start, end) => {
                let step = n.min(*end - *start);
                *start += step;
                step
            }
            Piece::Data(d) => {
                let step = n.min(d.chunk().len());
                d.advance(step);
                step
            }
            Piece::Fixed(s) => {
                let step = n.min(s.len());
                *s = &s[step..];
                step
            }
        }
    }

    /// Whether [`Self::bytes`] shows less than is left (a file region
    /// longer than its placeholder).
    fn is_partial(&self) -> bool {
        matches!(self, Piece::Data(d) if d.chunk().len() < d.remaining())
    }

    fn is_done(&self) -> bool {
        match self {
            Piece::Out(start, end) => start == end,
            Piece::Data(d) => !d.has_remaining(),
            Piece::Fixed(s) => s.is_empty(),
        }
    }
}

/// How a response body is delimited.
enum Framing {
    /// No body is written (HEAD, 204, 304).
    None,
    /// `Content-Length`: the bytes still to come.
    Length(u64),
    Chunked,
}

/// What polling the response body brought.
enum Next<T> {
    Frame(Option<T>),
    /// The body has nothing yet and pieces are waiting: write them first.
    Flush,
    /// The client closed the connection while the body had nothing to send.
    Gone,
}

/// Writes `resp` to `io`. Returns whether the connection can carry another
/// request: not when `close` is set, the response asked to close, the body
/// failed or did not match its length, or writing failed.
#[allow(clippy::too_many_arguments)]
async fn respond<I, B>(
    io: &mut I,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    pieces: &mut VecDeque<Piece<B::Data>>,
    resp: Response<B>,
    head_only: bool,
    mut close: bool,
) -> bool
where
    I: AsyncRead + AsyncWrite + Unpin,
    B: Body + CarriesFields,
{
    let (mut parts, mut body) = resp.into_parts();
    let mut passed = body.take_fields();
    let mut status = parts.status;
    if status.is_informational() {
        // Never produced for the requests served here (no upgrades, no
        // `Expect`); hyper answers the same, with a bare head.
        status = StatusCode::INTERNAL_SERVER_ERROR;
        parts.headers.clear();
        passed = None;
        close = true;
    }
    let no_body = head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    out.clear();
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut given_length: Option<&[u8]> = None;
    let (mut has_date, mut says_close) = (false, false);
    let own = &parts.headers;
    let passed = passed
        .iter()
        .flat_map(PassedFields::iter)
        .filter(|(name, _)| !names(own, name));
    for (name, value) in passed.chain(own.iter().map(|(n, v)| (n, v.as_bytes()))) {
        match *name {
            header::CONTENT_LENGTH => {
                given_length.get_or_insert(value);
                continue;
            }
            header::TRANSFER_ENCODING => continue,
            header::CONNECTION => {
                says_close |= value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
                close |= says_close;
            }
            header::DATE => has_date = true,
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let ended = body.is_end_stream();
    let exact = if ended { Some(0) } else { body.size_hint().exact() };
    let mut framing = if no_body {
        if status != StatusCode::NO_CONTENT {
            // The length of what a GET would have got, as the handler gave it.
            if let Some(given) = given_length {
                put_field(out, b"content-length: ", given);
            } else if let Some(n) = exact.filter(|&n| head_only && n > 0) {
                put_length(out, n);
            }
        }
        Framing::None
    } else {
        let length = exact.or_else(|| given_length.and_then(parse_decimal));
        match length {
            Some(n) => {
                put_length(out, n);
                Framing::Length(n)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        }
    };
    if close && !says_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !has_date {
        put_date(out);
    }
    out.extend_from_slice(b"\r\n");
    pieces.clear();
    pieces.push_back(Piece::Out(0, out.len()));
    if ended || matches!(framing, Framing::None | Framing::Length(0)) {
        // Nothing to write of the body; dropping it releases what it holds.
        drop(body);
        return write_pieces(io, out, pieces).await.is_ok() && !close;
    }
    let mut body = pin!(body);
    let mut queued = 0usize;
    loop {
        let next = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Pending if !pieces.is_empty() => Poll::Ready(Next::Flush),
            Poll::Pending if client_gone(&mut *io, &mut *buf, cx) => Poll::Ready(Next::Gone),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Next::Frame(frame)),
        })
        .await;
        let frame = match next {
            Next::Flush => {
                if write_pieces(io, out, pieces).await.is_err() {
                    return false;
                }
                queued = 0;
                continue;
            }
            Next::Frame(None) => break,
            Next::Gone => return false,
            // The client sees the body end short: the connection closes
            // without its end (the last chunk, or the rest of the length).
            Next::Frame(Some(Err(_))) => return false,
            Next::Frame(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            // Trailers are not passed on.
            continue;
        };
        let n = data.remaining();
        if n == 0 {
            continue;
        }
        match &mut framing {
            Framing::Length(left) => {
                if n as u64 > *left {
                    // More than the length said: what was promised goes out,
                    // then the connection closes.
                    let _ = write_pieces(io, out, pieces).await;
                    return false;
                }
                *left -= n as u64;
                pieces.push_back(Piece::Data(data));
                if *left == 0 {
                    // Complete: the body has released its upstream connection
                    // with its last data, and is dropped below.
                    break;
                }
            }
            Framing::Chunked => {
                let start = out.len();
                write_hex(out, n as u64);
                out.extend_from_slice(b"\r\n");
                pieces.push_back(Piece::Out(start, out.len()));
                pieces.push_back(Piece::Data(data));
                pieces.push_back(Piece::Fixed(b"\r\n"));
            }
            Framing::None => {}
        }
        queued += n;
        if pieces.len() + 3 > MAX_PIECES || queued >= MAX_QUEUED {
            if write_pieces(io, out, pieces).await.is_err() {
                return false;
            }
            queued = 0;
        }
    }
    match framing {
        Framing::Chunked => pieces.push_back(Piece::Fixed(b"0\r\n\r\n")),
        // The body ended short of its length: the client must not take
        // the next bytes for the rest of it.
        Framing::Length(left) if left > 0 => close = true,
        _ => {}
    }
    write_pieces(io, out, pieces).await.is_ok() && !close
}

/// Writes every piece, gathered into as few `writev` calls as the socket takes,
/// and flushes; `out` is cleared once everything from it is out.
async fn write_pieces<I, D>(io: &mut I, out: &mut Vec<u8>, pieces: &mut VecDeque<Piece<D>>) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
    D: Buf,
{
    poll_fn(|cx| -> Poll<io::Result<()>> {
        while !pieces.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_PIECES];
            let mut count = 0;
            for (slot, piece) in slices.iter_mut().zip(pieces.iter()) {
                *slot = IoSlice::new(piece.bytes(out));
                count += 1;
                if piece.is_partial() {
                    // What follows must wait until this piece is all out.
                    break;
                }
            }
            let mut n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero)));
            }
            while let Some(piece) = pieces.front_mut() {
                n -= piece.advance(n);
                if !piece.is_done() {
                    break;
                }
                pieces.pop_front();
            }
        }
        // A TLS stream takes bytes before it has sent them all: its records
        // go out only here if the socket was full (nothing to do on TCP).
        Pin::new(&mut *io).poll_flush(cx)
    })
    .await?;
    out.clear();
    Ok(())
}

/// Whether `map` has a field called `name`. gatehouse's own fields in a proxied
/// answer are few: a scan is cheaper than hashing.
fn names(map: &HeaderMap, name: &HeaderName) -> bool {
    if map.keys_len() <= 8 {
        map.keys().any(|k| k == name)
    } else {
        map.contains_key(name)
    }
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn put_length(out: &mut Vec<u8>, n: u64) {
    put_field(out, b"content-length: ", itoa::Buffer::new().format(n).as_bytes());
}

thread_local! {
    /// The `Date` value of the current second, formatted once per second per
    /// worker thread.
    static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
}

fn put_date(out: &mut Vec<u8>) {
    let now = crate::clock::system_now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let value = DATE.with(|cached| {
        let (at, value) = cached.get();
        if at == second {
            return value;
        }
        let mut value = [0u8; 29];
        let text = httpdate::fmt_http_date(now);
        if text.len() == value.len() {
            value.copy_from_slice(text.as_bytes());
            cached.set((second, value));
        }
        value
    });
    if value[0] != 0 {
        put_field(out, b"date: ", &value);
    }
}

/// A connection handed to hyper: the bytes already read come first.
pub(crate) struct Replay<T> {
    read: Bytes,
    io: T,
}

impl<T> Replay<T> {
    pub(crate) fn new(read: Bytes, io: T) -> Self {
        Self { read, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Replay<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Replay<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::Arc;

    use http_body::{Frame, SizeHint};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const LIMITS: Limits = Limits {
        header_timeout: Duration::from_secs(5),
        max_head: 8192,
        max_headers: 100,
    };

    fn parse_all(bytes: &[u8]) -> Parsed {
        parse(&mut BytesMut::from(bytes), &mut FieldNames::default(), &LIMITS)
    }

    #[test]
    fn plain_requests_are_parsed_and_everything_else_handed_off_whole() {
        let Parsed::Request(req, close) = parse_all(
            b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\nX-Two: 1\r\nx-two: 2\r\nConnection: keep-alive, Close\r\n\r\n",
        ) else {
            panic!("a plain GET is served here");
        };
        assert!(close);
        assert_eq!(
            (req.method(), req.uri().path(), req.uri().query()),
            (&Method::GET, "/p", Some("q=1"))
        );
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers().get_all("x-two").iter().count(), 2);
        assert!(req.body().is_none());

        let Parsed::Request(req, _) = parse_all(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n") else {
            panic!("an empty POST is served here");
        };
        assert_eq!(req.headers()[header::CONTENT_LENGTH], "0");
        assert!(req.body().is_none());

        for head in [
            &b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi"[..],
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\nContent-Length: 2\r\n\r\nhi",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 00\r\n\r\n",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0, 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nhost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.0\r\nhost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n",
            b"GET / HTTP/1.1\r\nbroken\r\n\r\n",
            b"GET / HTTP/1.1\r\nx: \x7f\r\n\r\n",
        ] {
            let mut with_next = head.to_vec();
            with_next.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
            match parse_all(&with_next) {
                Parsed::HandOff(bytes) => assert_eq!(bytes, with_next, "{:?}", String::from_utf8_lossy(head)),
                other => panic!("{:?} should go to hyper, got {other:?}", String::from_utf8_lossy(head)),
            }
        }
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_handed_off() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nhost: a\r\n"[..]);
        let mut names = FieldNames::default();
        assert!(matches!(parse(&mut buf, &mut names, &LIMITS), Parsed::Partial));
        assert_eq!(buf.len(), 25, "a partial head stays in the buffer");
        buf.extend_from_slice(b"\r\nGET /2 HTTP/1.1\r\n");
        assert!(matches!(parse(&mut buf, &mut names, &LIMITS), Parsed::Request(..)));
        assert_eq!(&buf[..], b"GET /2 HTTP/1.1\r\n", "what follows the head stays");

        let mut big = b"GET / HTTP/1.1\r\nx: ".to_vec();
        big.resize(LIMITS.max_head, b'a');
        assert!(matches!(parse_all(&big), Parsed::HandOff(b) if b.len() == LIMITS.max_head));
        let many: String = (0..101).map(|i| format!("x{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse_all(many.as_bytes()), Parsed::HandOff(_)));
    }

    /// A body of `frames`, with no size hint unless `exact`.
    struct Frames {
        frames: VecDeque<Result<Bytes, &'static str>>,
        exact: Option<u64>,
    }

    impl CarriesFields for Frames {
        fn take_fields(&mut self) -> Option<PassedFields> {
            None
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = &'static str;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            Poll::Ready(self.frames.pop_front().map(|f| f.map(Frame::data)))
        }
        fn is_end_stream(&self) -> bool {
            self.frames.is_empty()
        }
        fn size_hint(&self) -> SizeHint {
            self.exact.map_or_else(SizeHint::default, SizeHint::with_exact)
        }
    }

    fn frames(parts: &[Result<&str, &'static str>], exact: Option<u64>) -> Frames {
        Frames {
            frames: parts
                .iter()
                .map(|p| p.map(|s| Bytes::copy_from_slice(s.as_bytes())))
                .collect(),
            exact,
        }
    }

    /// Writes `resp` as the answer to a GET (or HEAD) and returns the bytes
    /// sent and whether the connection stays open.
    async fn written(resp: Response<Frames>, head_only: bool) -> (String, bool) {
        written_closing(resp, head_only, false).await
    }

    async fn written_closing(resp: Response<Frames>, head_only: bool, close: bool) -> (String, bool) {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (mut out, mut pieces) = (Vec::new(), VecDeque::new());
        let keep = respond(
            &mut ours,
            &mut BytesMut::new(),
            &mut out,
            &mut pieces,
            resp,
            head_only,
            close,
        )
        .await;
        drop(ours);
        let mut text = String::new();
        theirs.read_to_string(&mut text).await.unwrap();
        // The date changes; the rest must not.
        let text = text
            .split("\r\n")
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\r\n");
        (text, keep)
    }

    #[tokio::test]
    async fn responses_are_framed_by_length_or_in_chunks() {
        let mut resp = Response::new(frames(&[Ok("hello "), Ok("world")], Some(11)));
        resp.headers_mut().insert("x-a", HeaderValue::from_static("1"));
        resp.headers_mut()
            .insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(
            written(resp, false).await,
            (
                "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 11\r\n\r\nhello world".into(),
                true
            )
        );
        let mut resp = Response::new(frames(&[Ok("hello"), Ok(""), Ok("0123456789abcdef")], None));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        assert_eq!(
            written(resp, false).await,
            (
                "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
                    .into(),
                true
            )
        );
        // A length given by the handler frames a body of unknown size.
        let mut resp = Response::new(frames(&[Ok("abc")], None));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert_eq!(
            written(resp, false).await,
            ("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc".into(), true)
        );
    }

    #[tokio::test]
    async fn a_closing_connection_says_so_once() {
        // The handler's own `Connection` field without `close`: one is added.
        let mut resp = Response::new(frames(&[], None));
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("x-hint"));
        assert_eq!(
            written_closing(resp, false, true).await,
            (
                "HTTP/1.1 200 OK\r\nconnection: x-hint\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
                false
            )
        );
        // The handler said it: not repeated, and the connection closes.
        let mut resp = Response::new(frames(&[], None));
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        assert_eq!(
            written(resp, false).await,
            (
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".into(),
                false
            )
        );
    }

    #[tokio::test]
    async fn bodies_that_break_their_framing_close_the_connection() {
        // Shorter than its length: the connection closes after what there was.
        let mut resp = Response::new(frames(&[Ok("ab")], None));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(
            written(resp, false).await,
            ("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab".into(), false),
            "what there was, then the close"
        );
        // Longer than its length: nothing past the length is sent.
        let mut resp = Response::new(frames(&[Ok("abcdef")], None));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let (text, keep) = written(resp, false).await;
        assert!(!keep);
        assert!(!text.contains("abcdef"), "{text}");
        // A failing chunked body ends without its last chunk.
        let resp = Response::new(frames(&[Ok("abc"), Err("upstream gone")], None));
        let (text, keep) = written(resp, false).await;
        assert!(!keep);
        assert!(!text.ends_with("0\r\n\r\n"), "{text}");
    }

    #[tokio::test]
    async fn head_and_no_content_answers_have_no_body() {
        let resp = Response::new(frames(&[Ok("hello")], Some(5)));
        assert_eq!(
            written(resp, true).await,
            ("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".into(), true)
        );
        let mut resp = Response::new(frames(&[], Some(0)));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert_eq!(
            written(resp, false).await,
            ("HTTP/1.1 204 No Content\r\n\r\n".into(), true)
        );
        let mut resp = Response::new(frames(&[], None));
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
        assert_eq!(
            written(resp, false).await,
            ("HTTP/1.1 304 Not Modified\r\ncontent-length: 42\r\n\r\n".into(), true)
        );
    }

    /// A writer that, like a TLS stream, takes bytes at once and sends them
    /// on only when flushed.
    struct SendsOnFlush {
        inner: DuplexStream,
        held: Vec<u8>,
    }

    impl AsyncRead for SendsOnFlush {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for SendsOnFlush {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.held.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = &mut *self;
            while !this.held.is_empty() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.held))?;
                this.held.drain(..n);
            }
            Pin::new(&mut this.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            ready!(self.as_mut().poll_flush(cx))?;
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn responses_are_flushed_on_a_connection_that_stays_open() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let mut ours = SendsOnFlush {
            inner: ours,
            held: Vec::new(),
        };
        let (mut out, mut pieces) = (Vec::new(), VecDeque::new());
        let resp = Response::new(frames(&[Ok("hello")], Some(5)));
        let keep = respond(
            &mut ours,
            &mut BytesMut::new(),
            &mut out,
            &mut pieces,
            resp,
            false,
            false,
        )
        .await;
        assert!(keep);
        let mut answer = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(1), theirs.read(&mut answer))
            .await
            .expect("the answer was flushed")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("\r\n\r\nhello"),
            "{answer}"
        );
    }

    async fn serve_on(theirs: DuplexStream, stop: &AtomicBool, limits: Limits) -> (Ended, u32) {
        let mut ours = theirs;
        let mut calls = 0;
        let ended = serve(&mut ours, &limits, stop, |req: Request<ClientBody>| {
            calls += 1;
            let body = frames(&[Ok(req.uri().path())], None);
            async move { Response::new(body) }
        })
        .await;
        (ended, calls)
    }

    #[tokio::test]
    async fn a_request_for_hyper_ends_the_loop_with_every_unanswered_byte() {
        let (ours, mut client) = tokio::io::duplex(1 << 16);
        let stop = AtomicBool::new(false);
        let server = tokio::spawn(async move {
            let stop = stop;
            serve_on(ours, &stop, LIMITS).await
        });
        client
            .write_all(b"GET /one HTTP/1.1\r\n\r\nPOST /two HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET /three")
            .await
            .unwrap();
        let (ended, calls) = server.await.unwrap();
        assert_eq!(calls, 1);
        match ended {
            Ended::HandOff(bytes) => {
                assert_eq!(
                    &bytes[..],
                    b"POST /two HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET /three"
                );
            }
            other => panic!("{other:?}"),
        }
        let mut answer = vec![0u8; 4096];
        let n = client.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.ends_with("4\r\n/one\r\n0\r\n\r\n"), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_stop_when_asked_and_time_out() {
        // Asked to stop while waiting for a head: ends at once.
        let (ours, mut client) = tokio::io::duplex(1 << 16);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let server = tokio::spawn(async move { serve_on(ours, &flag, LIMITS).await });
        client.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        assert!(client.read(&mut buf).await.unwrap() > 0);
        stop.store(true, Ordering::Relaxed);
        // The caller wakes the task when it sets the flag; here the timer does.
        let (ended, calls) = server.await.unwrap();
        assert!(matches!(ended, Ended::Closed), "{ended:?}");
        assert_eq!(calls, 1);

        // Asked to stop in the middle of a head: ends at once too.
        let (ours, mut client) = tokio::io::duplex(1 << 16);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = tokio::time::Instant::now();
        let server = tokio::spawn(async move { serve_on(ours, &flag, LIMITS).await });
        client.write_all(b"GET /a HTTP/1.1\r\nho").await.unwrap();
        tokio::task::yield_now().await;
        stop.store(true, Ordering::Relaxed);
        client.write_all(b"st: a\r\n").await.unwrap();
        let (ended, calls) = server.await.unwrap();
        assert!(matches!(ended, Ended::Closed), "{ended:?}");
        assert_eq!(calls, 0);
        assert!(started.elapsed() < LIMITS.header_timeout);

        // A head that never completes: timed out with nothing served.
        let (ours, mut client) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move { serve_on(ours, &AtomicBool::new(false), LIMITS).await });
        client.write_all(b"GET /a HTTP/1.1\r\nhost").await.unwrap();
        let (ended, calls) = server.await.unwrap();
        assert!(matches!(ended, Ended::TimedOut { served: 0 }), "{ended:?}");
        assert_eq!(calls, 0);
    }
}
