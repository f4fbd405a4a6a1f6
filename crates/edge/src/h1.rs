//! HTTP/1.1 to upstreams, driven by the request's own task.
//!
//! hyper's client runs every connection in a task of its own and hands each
//! request and response to it through channels. On the proxy path those
//! hand-offs cost more than the protocol work itself, so the upstream side is
//! spoken here instead: the request task writes the request head and body and
//! reads the response on the same socket, and the response body is read by
//! whoever polls it (hyper's server side, writing to the client).
//!
//! - Response heads are parsed by `httparse` (hyper's own parser); the header
//!   fields stay in the head's bytes ([`PassedFields`]) and become a
//!   `HeaderMap` only where something reads or changes them.
//! - Response bodies are framed per RFC 9112 §6.3: none for HEAD, 1xx, 204 and
//!   304; chunked when `Transfer-Encoding` ends in `chunked`; `Content-Length`
//!   (a list must agree); otherwise until the upstream closes.
//! - The request body keeps being written while the response is read, so an
//!   upstream may answer early or stream its answer (an echo) without either
//!   side stalling.
//! - A connection goes back to its pool only when both messages are complete,
//!   nothing extra arrived, and neither side asked to close.

use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connect::Stream;
use crate::fields::PassedFields;
use crate::forwarding::ProxyHeaders;

use crate::body::{RequestBody, RequestBodyError};
use crate::pool::TargetPool;

/// Largest response head (status line and header fields) accepted.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section (read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;
/// Read sizes: a head fits the first, bodies are read in larger pieces.
const READ_HEAD: usize = 8 * 1024;
const READ_BODY: usize = 64 * 1024;

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The upstream closed the connection without answering.
    #[error("connection closed before a response")]
    Closed,
    /// The upstream closed the connection in the middle of the response head.
    #[error("connection closed in the middle of the response head")]
    ClosedInHead,
    /// The response head is not valid HTTP/1.
    #[error("invalid response head: {0}")]
    Head(#[from] httparse::Error),
    /// The head parsed but its fields are unusable.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    /// The response head is larger than [`MAX_HEAD`].
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// A chunked body broke its framing.
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
    /// The upstream closed the connection before the end of the body.
    #[error("connection closed before the end of the response body")]
    Truncated,
    /// The upstream sent nothing of the body for longer than `read_timeout`.
    #[error("no response body bytes for {0:?}")]
    ReadTimeout(std::time::Duration),
    /// No response head within `response_timeout` of the request going out.
    #[error("no response head within {0:?}")]
    ResponseTimeout(std::time::Duration),
    /// The client's request body failed (too large, too slow, or its connection).
    #[error("request body: {0}")]
    RequestBody(#[source] RequestBodyError),
    /// Reading from or writing to the upstream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// An open HTTP/1.1 connection to an upstream target.
pub(crate) struct Conn {
    io: Stream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// Reused between requests for the request head.
    head: Vec<u8>,
    /// The header names of the last answers.
    names: FieldNames,
    /// The response-head deadline, then the response body's read timeout;
    /// kept from one exchange to the next: moving a pending tokio timer later
    /// is one atomic update, where a new timer per request is registered and
    /// removed under the driver's lock.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    pub(crate) fn new(io: Stream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            head: Vec::with_capacity(512),
            names: FieldNames::default(),
            timer: None,
        }
    }

    /// Sets the connection's timer to `deadline`.
    fn arm(&mut self, deadline: tokio::time::Instant) {
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Whether the armed deadline has passed (and if not, wakes the task when it does).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        // Outside tokio's cooperative budget: an exchange kept busy (a flood of
        // interim answers, a fast upload) may have used it up, and a budgeted
        // timer would then never look at the clock.
        self.timer.as_mut().is_some_and(|t| {
            std::pin::pin!(tokio::task::coop::unconstrained(t.as_mut()))
                .poll(cx)
                .is_ready()
        })
    }

    /// Whether an idle connection can carry another request: the upstream has
    /// neither closed it nor sent anything unasked. Usually no system call: the
    /// socket is read only when the poller saw it become readable.
    pub(crate) fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads what the socket has into `buf`, with room for at least `want`
    /// bytes. `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < want.max(1) {
            self.buf.reserve(want.max(1));
        }
        // tokio's `poll_read` forgets the socket's readiness after a short
        // read (the socket is drained), so the next read waits for the poller
        // instead of returning EAGAIN.
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// Bytes waiting to be written: part of a head (or a chunk-size line), then
/// body data, then a fixed suffix (`\r\n` after a chunk, the last chunk).
struct Outbox {
    head: Vec<u8>,
    head_pos: usize,
    data: Bytes,
    tail: &'static [u8],
    /// Whether any byte was written.
    wrote: bool,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.head_pos == self.head.len() && self.data.is_empty() && self.tail.is_empty()
    }

    fn poll_flush(&mut self, io: &mut Stream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let slices = [
                IoSlice::new(&self.head[self.head_pos..]),
                IoSlice::new(&self.data),
                IoSlice::new(self.tail),
            ];
            let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wrote = true;
            self.advance(n);
        }
        self.head.clear();
        self.head_pos = 0;
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        let h = (self.head.len() - self.head_pos).min(n);
        self.head_pos += h;
        n -= h;
        let d = self.data.len().min(n);
        self.data.advance(d);
        n -= d;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }
}

/// The request side of an exchange: the head, then the body as it arrives.
struct Sender {
    out: Outbox,
    body: Option<RequestBody>,
    chunked: bool,
    /// The first body frame may go out with the head in one write.
    coalesce: bool,
    /// A frame was taken from the body, so the request cannot be sent again.
    started: bool,
    /// Everything was written.
    done: bool,
    /// A write failed; nothing more is sent (the upstream may still answer).
    failed: bool,
}

impl Sender {
    fn queue(&mut self, data: Bytes) {
        if self.chunked {
            write_hex(&mut self.out.head, data.len() as u64);
            self.out.head.extend_from_slice(b"\r\n");
            self.out.tail = b"\r\n";
        }
        self.out.data = data;
    }

    /// Takes one frame from the body into the outbox. `Ready(Ok(()))` when a
    /// frame (or the end) was taken.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match ready!(Pin::new(body).poll_frame(cx)) {
            Some(Ok(frame)) => {
                self.started = true;
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        self.queue(data);
                    }
                }
            }
            None => {
                self.body = None;
                if self.chunked {
                    self.out.tail = b"0\r\n\r\n";
                }
            }
            Some(Err(e)) => {
                // Part of the body may be gone: the request cannot be sent again.
                self.started = true;
                self.body = None;
                return Poll::Ready(Err(ExchangeError::RequestBody(e)));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes as much of the request as can go now.
    fn poll_send(&mut self, io: &mut Stream, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        if std::mem::take(&mut self.coalesce) {
            if let Poll::Ready(res) = self.poll_body(cx) {
                res?;
            }
        }
        loop {
            if !self.out.is_empty() {
                ready!(self.out.poll_flush(io, cx))?;
                continue;
            }
            if self.body.is_none() {
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_body(cx))?;
        }
    }

    /// Advances the request while the response is being read: a failed write
    /// stops the request but not the response; a failed client body ends both.
    fn progress(&mut self, io: &mut Stream, cx: &mut Context<'_>) -> Result<(), ExchangeError> {
        if self.done || self.failed {
            return Ok(());
        }
        match self.poll_send(io, cx) {
            Poll::Ready(Err(ExchangeError::Io(e))) => {
                tracing::debug!(error = %e, "Upstream stopped taking the request body.");
                self.failed = true;
                self.body = None;
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// The body is complete.
    Done,
    /// This many bytes remain.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
pub(crate) struct ParsedHead {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// The end-to-end header fields: hop-by-hop ones (RFC 9110 §7.6.1) and those
    /// `Connection` names are left out, except in a `101` answer, which keeps
    /// them all for the client.
    pub(crate) fields: PassedFields,
    /// Bytes after the head, already read.
    pub(crate) rest: Bytes,
    /// `Connection: close` was sent.
    close: bool,
    /// `Transfer-Encoding` was sent: whether its last coding is `chunked`.
    chunked: Option<bool>,
    /// What `Content-Length` said.
    length: Length,
}

impl ParsedHead {
    /// The fields as a map, as a response written by hyper would carry them.
    #[cfg(test)]
    pub(crate) fn headers(&self) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        self.fields.clone().merge_into(&mut map);
        map
    }

    /// Not an interim answer (`100 Continue`, `103 Early Hints`); `101` is final.
    fn is_final(&self) -> bool {
        !self.status.is_informational() || self.status == StatusCode::SWITCHING_PROTOCOLS
    }
}

/// The `Content-Length` fields of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    Absent,
    Is(u64),
    Invalid(&'static str),
}

impl Length {
    /// Takes in one field value (a list of lengths that must all agree).
    fn add(self, value: &[u8]) -> Self {
        value
            .split(|b| *b == b',')
            .fold(self, |seen, part| match (seen, parse_decimal(part.trim_ascii())) {
                (Length::Invalid(why), _) => Length::Invalid(why),
                (_, None) => Length::Invalid("Content-Length"),
                (Length::Is(l), Some(n)) if l != n => Length::Invalid("conflicting Content-Length values"),
                (_, Some(n)) => Length::Is(n),
            })
    }
}

/// Header names most answers carry at most; later ones are always parsed.
const REMEMBERED_NAMES: usize = 32;
/// Longer names are always parsed, so a connection's memory of names stays small.
const REMEMBERED_NAME_LEN: usize = 64;

/// `timeout` from now; a timeout too long to add (the config sets no upper
/// bound) is as good as none.
pub(crate) fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = crate::clock::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The header names of a connection's last answers, by position. An upstream
/// sends the same names in the same order answer after answer; a name whose
/// bytes match the one seen at its position is taken from here instead of
/// being parsed again (`HeaderName::from_bytes` depends on the bytes alone).
#[derive(Default)]
pub(crate) struct FieldNames(Vec<(Box<[u8]>, HeaderName)>);

impl FieldNames {
    pub(crate) fn name(&mut self, position: usize, raw: &[u8]) -> Result<HeaderName, ExchangeError> {
        if let Some((seen, name)) = self.0.get(position) {
            if **seen == *raw {
                return Ok(name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw).map_err(|_| ExchangeError::Invalid("header name"))?;
        if raw.len() <= REMEMBERED_NAME_LEN {
            let entry = || (Box::from(raw), name.clone());
            match position.cmp(&self.0.len()) {
                std::cmp::Ordering::Less => self.0[position] = entry(),
                std::cmp::Ordering::Equal if position < REMEMBERED_NAMES => self.0.push(entry()),
                _ => {}
            }
        }
        Ok(name)
    }
}

/// Parses a response head at the start of `buf`. `Ok(None)` when more bytes are
/// needed (and `buf` is left as it was); on success the head is taken off
/// `buf`, and after a final head (not `1xx`, or `101`) what followed it is
/// moved to [`ParsedHead::rest`]. On an error `buf` holds whatever is left: the
/// connection is not used again.
#[cfg(test)]
pub(crate) fn parse_head(buf: &mut BytesMut) -> Result<Option<ParsedHead>, ExchangeError> {
    parse_head_with(buf, &mut FieldNames::default())
}

/// [`parse_head`], with the names of earlier answers on the connection.
fn parse_head_with(buf: &mut BytesMut, names: &mut FieldNames) -> Result<Option<ParsedHead>, ExchangeError> {
    // Where each field's name and value lie in `buf`: the parse borrows
    // `buf`, and only the head is split off it afterwards, so the buffer's
    // spare room stays with the connection for the next answer.
    let mut spans = [[0u32; 4]; MAX_HEADERS];
    let (len, code, minor, fields) = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        // Only the first MAX_HEAD bytes can hold a head: what lies beyond never
        // changes the outcome, however the bytes arrived.
        let window = &buf[..buf.len().min(MAX_HEAD)];
        // The default config refuses folded lines (obs-fold): no value can
        // hold CR or LF, so values may be passed to clients as they are.
        let parsed =
            httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, window, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(ExchangeError::HeadTooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let base = window.as_ptr() as usize;
        // Offsets within MAX_HEAD (64 KiB) fit in u32.
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            let (name, value) = (at(h.name.as_bytes()), at(h.value));
            *span = [name, name + h.name.len() as u32, value, value + h.value.len() as u32];
        }
        (len, resp.code, resp.version, resp.headers.len())
    };
    let bytes = buf.split_to(len).freeze();
    let status = code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ExchangeError::Invalid("status code"))?;
    let version = if minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let keep_all = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut head = ParsedHead {
        status,
        version,
        fields: PassedFields::with_capacity(bytes.clone(), fields),
        rest: Bytes::new(),
        close: false,
        chunked: None,
        length: Length::Absent,
    };
    // Names `Connection` lists, removed at the end (they may come before it).
    let mut listed: Vec<HeaderName> = Vec::new();
    for (position, &[name_start, name_end, value_start, value_end]) in spans[..fields].iter().enumerate() {
        let field = &bytes[name_start as usize..name_end as usize];
        let raw = &bytes[value_start as usize..value_end as usize];
        let name = names.name(position, field)?;
        match name.as_str() {
            "connection" => {
                for token in raw.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        head.close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.eq_ignore_ascii_case(b"upgrade") {
                        if let Ok(n) = HeaderName::from_bytes(token) {
                            listed.push(n);
                        }
                    }
                }
                if !keep_all {
                    continue;
                }
            }
            "transfer-encoding" => {
                let last = raw.rsplit(|b| *b == b',').next().map(<[u8]>::trim_ascii);
                head.chunked = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
                if !keep_all {
                    continue;
                }
            }
            "content-length" => head.length = head.length.add(raw),
            other if !keep_all && crate::forwarding::hop_by_hop_index(other).is_some() => continue,
            _ => {}
        }
        head.fields.push(name, value_start, value_end);
    }
    if !keep_all {
        for name in listed {
            // Never let `Connection` remove what the framing relies on.
            if name != header::CONTENT_LENGTH {
                head.fields.remove(&name);
            }
        }
    }
    // What followed a final head; `buf` keeps its spare room. After an interim
    // answer the next head follows in `buf`, where it stays.
    if head.is_final() {
        head.rest = buf.split().freeze();
    }
    Ok(Some(head))
}

/// The body framing of a response to `method`, and whether the connection
/// may carry another request afterwards. Removes a `Content-Length` that a
/// `Transfer-Encoding` overrides.
fn framing(method: &Method, head: &mut ParsedHead) -> Result<(Framing, bool), ExchangeError> {
    let mut keep_alive = head.version == Version::HTTP_11 && !head.close;
    let status = head.status.as_u16();
    if method == Method::HEAD || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok((Framing::Done, keep_alive));
    }
    if let Some(chunked) = head.chunked {
        // RFC 9112 §6.3: the transfer coding wins over a length, and such a
        // message is not trusted to leave the connection clean.
        if head.length != Length::Absent {
            head.fields.remove(&header::CONTENT_LENGTH);
            keep_alive = false;
        }
        return Ok(if chunked {
            (Framing::Chunked(Chunked::Size), keep_alive)
        } else {
            (Framing::UntilClose, false)
        });
    }
    match head.length {
        Length::Invalid(why) => Err(ExchangeError::Invalid(why)),
        Length::Is(0) => Ok((Framing::Done, keep_alive)),
        Length::Is(n) => Ok((Framing::Length(n), keep_alive)),
        Length::Absent => Ok((Framing::UntilClose, false)),
    }
}

/// A decimal number of at most 19 digits (so it cannot overflow).
pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter()
        .try_fold(0u64, |n, b| b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0')))
}

/// `n` in lower-case hex, as a chunk size.
pub(crate) fn write_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Takes the final response head from the front of `buf`, skipping interim
/// answers (`100 Continue`, `103 Early Hints`; a `101` is final). `Ok(None)`
/// when more bytes are needed.
///
/// `scanned` is how much of `buf` an earlier call saw without finding a whole
/// head (0 when none did). The parser starts over each time, so after a first
/// partial head it runs again only once a blank line has arrived: a head
/// trickling in a byte at a time costs linear, not quadratic, work.
fn take_head(
    buf: &mut BytesMut,
    scanned: &mut usize,
    names: &mut FieldNames,
) -> Result<Option<ParsedHead>, ExchangeError> {
    while !buf.is_empty() {
        if *scanned > 0 {
            let new = &buf[scanned.saturating_sub(3)..];
            let blank_line = new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n");
            if !blank_line {
                *scanned = buf.len();
                if buf.len() >= MAX_HEAD {
                    return Err(ExchangeError::HeadTooLarge);
                }
                return Ok(None);
            }
        }
        let Some(head) = parse_head_with(buf, names)? else {
            *scanned = buf.len();
            return Ok(None);
        };
        *scanned = 0;
        if head.is_final() {
            return Ok(Some(head));
        }
    }
    Ok(None)
}

/// What a body reader found in the bytes it has.
enum Piece {
    Data(Bytes),
    NeedMore,
    End,
}

/// Reads the next piece of a body by its `framing` from what is buffered: the
/// bytes that came with the head (`rest`) first, then `buf`. No I/O: the
/// exchange and [`read_response`] feed it.
fn next_piece(framing: &mut Framing, rest: &mut Bytes, buf: &mut BytesMut) -> Result<Piece, ExchangeError> {
    match framing {
        Framing::Done => Ok(Piece::End),
        Framing::Length(left) => {
            let limit = usize::try_from(*left).unwrap_or(usize::MAX);
            let data = if !rest.is_empty() {
                rest.split_to(limit.min(rest.len()))
            } else if !buf.is_empty() {
                buf.split_to(limit.min(buf.len())).freeze()
            } else {
                return Ok(Piece::NeedMore);
            };
            *left -= data.len() as u64;
            if *left == 0 {
                *framing = Framing::Done;
            }
            Ok(Piece::Data(data))
        }
        Framing::UntilClose => Ok(if !rest.is_empty() {
            Piece::Data(std::mem::take(rest))
        } else if !buf.is_empty() {
            Piece::Data(buf.split().freeze())
        } else {
            Piece::NeedMore
        }),
        Framing::Chunked(state) => {
            if !rest.is_empty() {
                // Rare: only the bytes that came with the head are copied.
                let mut joined = BytesMut::with_capacity(rest.len() + buf.len());
                joined.extend_from_slice(rest);
                joined.extend_from_slice(buf);
                *buf = joined;
                *rest = Bytes::new();
            }
            match state.decode(buf)? {
                Decoded::Data(data) => Ok(Piece::Data(data)),
                Decoded::NeedMore => Ok(Piece::NeedMore),
                Decoded::End => {
                    *framing = Framing::Done;
                    Ok(Piece::End)
                }
            }
        }
    }
}

/// The stream ended while a body reader wanted more: the end of an
/// until-close body, a truncation for any other.
fn end_of_stream(framing: &mut Framing) -> Result<(), ExchangeError> {
    match framing {
        Framing::Done => Ok(()),
        Framing::UntilClose => {
            *framing = Framing::Done;
            Ok(())
        }
        Framing::Length(_) | Framing::Chunked(_) => Err(ExchangeError::Truncated),
    }
}

/// Reads a whole response to a GET from `data`, fed `step` bytes at a time,
/// through the exchange's own head and body readers: the final status and the
/// body. For the fuzz targets and property tests (`lib.rs`, `fuzzing`).
pub(crate) fn read_response(data: &[u8], step: usize) -> Result<(StatusCode, Vec<u8>), ExchangeError> {
    let mut input = data.chunks(step.max(1));
    let mut buf = BytesMut::new();
    let mut scanned = 0;
    // Shared by the interim answers and the final one, as on a connection.
    let mut names = FieldNames::default();
    let mut head = loop {
        if let Some(head) = take_head(&mut buf, &mut scanned, &mut names)? {
            break head;
        }
        match input.next() {
            Some(piece) => buf.extend_from_slice(piece),
            None if buf.is_empty() => return Err(ExchangeError::Closed),
            None => return Err(ExchangeError::ClosedInHead),
        }
    };
    let (mut framing, _) = framing(&Method::GET, &mut head)?;
    let mut rest = std::mem::take(&mut head.rest);
    let mut body = Vec::new();
    loop {
        match next_piece(&mut framing, &mut rest, &mut buf)? {
            Piece::Data(data) => body.extend_from_slice(&data),
            Piece::End => break,
            Piece::NeedMore => match input.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => {
                    end_of_stream(&mut framing)?;
                    break;
                }
            },
        }
    }
    Ok((head.status, body))
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// In the trailer section, having seen this many bytes of it.
    Trailers(usize),
}

/// One step of decoding a chunked body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Body data.
    Data(Bytes),
    /// More input is needed.
    NeedMore,
    /// The last chunk and trailer section were read.
    End,
}

impl Chunked {
    /// Decodes from the front of `buf`, consuming what it used.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ExchangeError> {
        loop {
            match *self {
                Chunked::Size => {
                    let Some(i) = buf.iter().position(|b| *b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(ExchangeError::Chunked("chunk-size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    if i > MAX_CHUNK_LINE {
                        return Err(ExchangeError::Chunked("chunk-size line too long"));
                    }
                    let line = buf[..i]
                        .strip_suffix(b"\r")
                        .ok_or(ExchangeError::Chunked("chunk-size line without CRLF"))?;
                    let size = chunk_size(line).ok_or(ExchangeError::Chunked("bad chunk size"))?;
                    buf.advance(i + 1);
                    *self = if size == 0 {
                        Chunked::Trailers(0)
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    *self = if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ExchangeError::Chunked("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers(seen) => {
                    let Some(i) = buf.iter().position(|b| *b == b'\n') else {
                        // Two bytes without a newline can only become a field
                        // line, which with its newline must still fit.
                        if buf.len() > 1 && seen + buf.len() + 1 > MAX_TRAILERS {
                            return Err(ExchangeError::Chunked("trailer section too large"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let blank = &buf[..i] == b"\r";
                    if !blank && buf[..i].last() != Some(&b'\r') {
                        return Err(ExchangeError::Chunked("trailer line without CRLF"));
                    }
                    buf.advance(i + 1);
                    if blank {
                        return Ok(Decoded::End);
                    }
                    let seen = seen + i + 1;
                    if seen > MAX_TRAILERS {
                        return Err(ExchangeError::Chunked("trailer section too large"));
                    }
                    *self = Chunked::Trailers(seen);
                }
            }
        }
    }
}

/// The size in a chunk-size line: hex digits, then optional whitespace and
/// extensions (`;name=value`), which are ignored.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |n, b| {
        let d = (*b as char).to_digit(16)?;
        Some((n << 4) | u64::from(d))
    })
}

/// A request in flight on one connection: the head has been (or is being)
/// written, the response is read by [`Exchange::poll_head`] and then by
/// [`UpstreamBody`].
pub(crate) struct Exchange {
    conn: Conn,
    send: Sender,
    /// Frames the answer.
    method: Method,
    /// The request, but its body, until the answer's head is in: it is given
    /// back when the request may be sent again. Kept here rather than in the
    /// future that waits for the head, so that future stays small.
    request: Option<http::request::Parts>,
    framing: Framing,
    keep_alive: bool,
    /// Body bytes that arrived with the head.
    rest: Bytes,
    /// Whether any response byte was read.
    answered: bool,
    /// The upstream answered `101 Switching Protocols`.
    switching: bool,
    /// How much of a partial response head was already looked at.
    scanned: usize,
}

/// An exchange that failed; `unsent` is the request back when it may be sent
/// again: the upstream answered nothing, no body byte was taken from the
/// client, and the request is idempotent or was not written at all.
pub(crate) struct Failed {
    pub(crate) error: ExchangeError,
    pub(crate) unsent: Option<Request<RequestBody>>,
}

impl Exchange {
    /// Writes `req` with gatehouse's headers `extra` and `Host: host` on `conn`
    /// and waits for the response head, at most `timeout`.
    ///
    /// Not an `async fn`: the head is encoded and the exchange boxed right
    /// away, so the future holds only the box, not `conn` and `req` as well.
    pub(crate) fn start(
        mut conn: Conn,
        req: Request<RequestBody>,
        extra: &ProxyHeaders,
        host: &HeaderValue,
        timeout: Duration,
    ) -> impl Future<Output = Result<(http::response::Parts, PassedFields, Box<Exchange>), Failed>> + use<> {
        let (parts, body) = req.into_parts();
        let mut head = std::mem::take(&mut conn.head);
        let chunked = encode_head(&mut head, &parts, (extra, host), &body);
        let has_body = !body.is_end_stream();
        // Boxed once here: the exchange then travels inside the response body
        // by pointer instead of being copied through every layer.
        let mut x = Box::new(Exchange {
            conn,
            send: Sender {
                out: Outbox {
                    head,
                    head_pos: 0,
                    data: Bytes::new(),
                    tail: b"",
                    wrote: false,
                },
                body: has_body.then_some(body),
                chunked,
                coalesce: has_body,
                started: false,
                done: false,
                failed: false,
            },
            method: parts.method.clone(),
            request: Some(parts),
            framing: Framing::Done,
            keep_alive: false,
            rest: Bytes::new(),
            answered: false,
            switching: false,
            scanned: 0,
        });
        async move {
            x.conn.arm(deadline_after(timeout));
            let head = std::future::poll_fn(|cx| match x.poll_head(cx) {
                Poll::Pending if x.conn.poll_deadline(cx) => Poll::Ready(Err(ExchangeError::ResponseTimeout(timeout))),
                polled => polled,
            });
            match head.await {
                Ok(head) => {
                    // Not needed any more; the body may stream for long.
                    x.request = None;
                    let (parts, fields) = response_parts(head);
                    Ok((parts, fields, x))
                }
                Err(error) => {
                    // Not after a timeout: the request may still be running.
                    let resendable = !x.answered
                        && !x.send.started
                        && !matches!(error, ExchangeError::RequestBody(_) | ExchangeError::ResponseTimeout(_))
                        && (crate::handler::is_idempotent(&x.method) || !x.send.out.wrote);
                    let unsent = resendable
                        .then(|| {
                            let x = *x;
                            let body = x.send.body.unwrap_or_else(RequestBody::empty);
                            x.request.map(|parts| Request::from_parts(parts, body))
                        })
                        .flatten();
                    Err(Failed { error, unsent })
                }
            }
        }
    }

    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<ParsedHead, ExchangeError>> {
        loop {
            self.send.progress(&mut self.conn.io, cx)?;
            if let Some(mut head) = take_head(&mut self.conn.buf, &mut self.scanned, &mut self.conn.names)? {
                let (framing, keep_alive) = framing(&self.method, &mut head)?;
                self.framing = framing;
                self.switching = head.status == StatusCode::SWITCHING_PROTOCOLS;
                self.keep_alive = keep_alive && !self.switching;
                self.rest = std::mem::take(&mut head.rest);
                return Poll::Ready(Ok(head));
            }
            match ready!(self.conn.poll_fill(cx, READ_HEAD)) {
                Ok(0) if self.conn.buf.is_empty() => return Poll::Ready(Err(ExchangeError::Closed)),
                Ok(0) => return Poll::Ready(Err(ExchangeError::ClosedInHead)),
                Ok(_) => self.answered = true,
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// The next piece of the response body.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ExchangeError>>> {
        loop {
            match next_piece(&mut self.framing, &mut self.rest, &mut self.conn.buf) {
                Ok(Piece::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Piece::End) => return Poll::Ready(None),
                Err(e) => return Poll::Ready(Some(Err(e))),
                Ok(Piece::NeedMore) => {}
            }
            let want = match self.framing {
                Framing::Length(left) => usize::try_from(left).unwrap_or(usize::MAX).min(READ_BODY),
                _ => READ_BODY,
            };
            match ready!(self.conn.poll_fill(cx, want)) {
                Ok(0) => return Poll::Ready(end_of_stream(&mut self.framing).err().map(Err)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    /// The connection, if it can carry another request.
    fn into_reusable(self: Box<Self>) -> Option<Conn> {
        let clean = self.keep_alive
            && self.send.done
            && !self.send.failed
            && self.framing == Framing::Done
            && self.rest.is_empty()
            && self.conn.buf.is_empty();
        let mut conn = self.conn;
        conn.head = self.send.out.head;
        conn.head.clear();
        clean.then_some(conn)
    }
}

/// Writes the request head: the client's headers but those gatehouse sets,
/// then gatehouse's. Returns whether the body is sent chunked: a body of
/// unknown length without a `Content-Length` from the client.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    (extra, host): (&ProxyHeaders, &HeaderValue),
    body: &RequestBody,
) -> bool {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() { b"/" } else { target.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if ProxyHeaders::replaces(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    extra.write(host, out);
    let mut chunked = false;
    if !body.is_end_stream() && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        match body.size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                let mut digits = itoa::Buffer::new();
                out.extend_from_slice(digits.format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                chunked = true;
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

/// The response's parts, with an empty `HeaderMap`, and its header fields.
fn response_parts(head: ParsedHead) -> (http::response::Parts, PassedFields) {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = head.status;
    parts.version = head.version;
    (parts, head.fields)
}

/// A response body read from an upstream connection, which goes back to its
/// pool when the body is complete, or is closed if the body is dropped before.
pub(crate) struct UpstreamBody {
    exchange: Option<Box<Exchange>>,
    /// The answer's header fields until they are written or put in a map.
    fields: Option<PassedFields>,
    pool: Arc<TargetPool>,
    read_timeout: Duration,
    /// Whether the connection's timer counts `read_timeout`: set the first
    /// time the body has to wait for the upstream, then pushed back whenever
    /// bytes arrive.
    waited: bool,
}

impl UpstreamBody {
    pub(crate) fn new(
        exchange: Box<Exchange>,
        fields: PassedFields,
        pool: Arc<TargetPool>,
        read_timeout: Duration,
    ) -> Self {
        let mut body = Self {
            exchange: Some(exchange),
            fields: Some(fields),
            pool,
            read_timeout,
            waited: false,
        };
        if body.is_end_stream() && !body.exchange.as_ref().is_some_and(|x| x.switching) {
            // Nothing to read (HEAD, 204, 304, an empty body): reusable now.
            body.finish();
        }
        body
    }

    /// The answer's header fields, the first time this is called.
    pub(crate) fn take_fields(&mut self) -> Option<PassedFields> {
        self.fields.take()
    }

    /// The answer's header fields, unless taken.
    pub(crate) fn fields(&self) -> Option<&PassedFields> {
        self.fields.as_ref()
    }

    fn finish(&mut self) {
        if let Some(conn) = self.exchange.take().and_then(Exchange::into_reusable) {
            self.pool.put(conn);
        }
    }

    /// The raw connection after a `101 Switching Protocols`, with any bytes the
    /// upstream sent after its head.
    pub(crate) fn into_upgraded(mut self) -> Option<Upgraded> {
        let x = self.exchange.take()?;
        let mut pre = BytesMut::from(&x.rest[..]);
        pre.extend_from_slice(&x.conn.buf);
        Some(Upgraded {
            io: x.conn.io,
            pre: pre.freeze(),
        })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = &mut *self;
        let Some(x) = this.exchange.as_mut() else {
            return Poll::Ready(None);
        };
        if let Err(e) = x.send.progress(&mut x.conn.io, cx) {
            this.exchange = None;
            return Poll::Ready(Some(Err(e)));
        }
        let Poll::Ready(polled) = x.poll_data(cx) else {
            if !this.waited {
                this.waited = true;
                x.conn.arm(deadline_after(this.read_timeout));
            }
            if x.conn.poll_deadline(cx) {
                tracing::warn!(
                    upstream = %this.pool.target.id, timeout = ?this.read_timeout,
                    "Upstream sent no response body bytes in time; the response is cut off."
                );
                this.exchange = None;
                return Poll::Ready(Some(Err(ExchangeError::ReadTimeout(this.read_timeout))));
            }
            return Poll::Pending;
        };
        if this.waited {
            x.conn.arm(deadline_after(this.read_timeout));
        }
        match polled {
            Some(Ok(data)) => {
                if x.framing == Framing::Done {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            None => {
                this.finish();
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                this.exchange = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.exchange.as_ref().is_none_or(|x| x.framing == Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.exchange.as_ref().map(|x| x.framing) {
            None | Some(Framing::Done) => SizeHint::with_exact(0),
            Some(Framing::Length(n)) => SizeHint::with_exact(n),
            Some(_) => SizeHint::default(),
        }
    }
}

/// An upstream connection after `101 Switching Protocols`: first the bytes
/// already read, then the socket.
pub(crate) struct Upgraded {
    io: Stream,
    pre: Bytes,
}

impl AsyncRead for Upgraded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
