//! The access log: one line per request, formatted by the thread that served
//! it and written by a background thread.
//!
//! Each thread formats its lines into a buffer of its own (its *lane*), under a
//! lock that only the writer shares, and only to swap the buffer out. The writer
//! takes every lane's lines every 5 ms while they keep coming (every 100 ms when
//! idle; a lane filling fast wakes it) and writes them. So a line
//! costs its thread the formatting and an uncontended lock, never I/O, and the
//! writer's turns on a shared core are short: one `write` of what came in.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, SystemTime};

use gatehouse_config::{AccessLogTarget, LogFormat};
use http::{HeaderValue, Method, Uri, Version};
use serde::Serialize;

use crate::ObserveError;

/// Formatted lines one thread may hold for the writer (about 10k lines): beyond
/// this, while the disk stalls, lines are dropped and counted rather than
/// memory growing without bound.
const LANE_CAPACITY: usize = 2 * 1024 * 1024;
/// A buffer that grew past four times this (a stall, a burst) is cut back to
/// this size after its lines are written.
const BUFFER_SIZE: usize = 64 * 1024;
/// While lines keep coming, the writer takes them this often. Nothing wakes it
/// for each line (that would be a futex call and a context switch per request).
const BATCH_INTERVAL: Duration = Duration::from_millis(5);
/// When nothing came in its last turn, the writer looks again after this long,
/// so `tail -f` stays current while traffic trickles in.
const IDLE_INTERVAL: Duration = Duration::from_millis(100);
/// A lane that fills past this between two turns (a burst after an idle spell,
/// a much faster machine) wakes the writer at once, well before it is full.
const WAKE_AT: usize = LANE_CAPACITY / 4;

/// Everything the access log says about one request.
///
/// Fields are cheap to fill on the request path: header values and URIs are
/// reference-counted, so building a record does not copy strings.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// When the request head was received.
    pub time: SystemTime,
    /// The request id sent upstream and returned to the client.
    pub request_id: HeaderValue,
    /// The client's address (after trusted-proxy processing).
    pub client_ip: IpAddr,
    /// Request method.
    pub method: Method,
    /// Host the request was for, as sent by the client.
    pub host: Option<HeaderValue>,
    /// Request target (path and query as received).
    pub uri: Uri,
    /// HTTP version of the client connection.
    pub version: Version,
    /// Response status sent to the client.
    pub status: u16,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// Time from request head to the end of the response body.
    pub duration: Duration,
    /// Name of the route that handled the request.
    pub route: Option<Arc<str>>,
    /// The upstream target (`host:port` or `unix:/path`), when the request was proxied.
    pub upstream: Option<Arc<str>>,
    /// Time until the upstream's response headers arrived.
    pub upstream_duration: Option<Duration>,
}

/// Handle to the access-log writer thread.
pub struct AccessLog {
    sender: Option<AccessLogSender>,
    thread: Option<JoinHandle<()>>,
}

/// A cheap, cloneable handle for workers to submit records.
#[derive(Clone)]
pub struct AccessLogSender {
    shared: Arc<Shared>,
}

struct Shared {
    format: LogFormat,
    /// Every thread's lane, for the writer.
    lanes: Mutex<Vec<Arc<Lane>>>,
    /// For a thread whose own lane is gone (it is exiting).
    fallback: Arc<Lane>,
    dropped: AtomicU64,
    /// The `AccessLog` is finished or dropped: the writer ends once every
    /// sender is gone and their lines are out.
    finishing: AtomicBool,
    /// How often the writer looks while lines come in, and while they don't.
    intervals: (Duration, Duration),
    /// The writer thread, for a lane that fills fast to wake it.
    writer: OnceLock<Thread>,
}

/// One thread's formatted lines that the writer has not taken yet.
#[derive(Default)]
struct Lane(Mutex<LaneState>);

impl Lane {
    /// The lane's state. A panic while a line was being formatted leaves the
    /// lock poisoned and maybe part of a line: that part is cut off and the
    /// lane goes on, so one bad line does not cost every later one.
    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.0.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            let whole = state.lines.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            state.lines.truncate(whole);
            self.0.clear_poison();
            state
        })
    }
}

#[derive(Default)]
struct LaneState {
    lines: Vec<u8>,
    clock: Clock,
}

thread_local! {
    /// This thread's lane of each access log it has written to. The `Weak`
    /// keeps a finished log's allocation, so its address is never taken for a
    /// newer log's.
    static LANES: RefCell<Vec<(Weak<Shared>, Arc<Lane>)>> = const { RefCell::new(Vec::new()) };
}

impl AccessLogSender {
    /// Formats `record` into this thread's lane; the writer writes it within
    /// 5 ms while lines keep coming, within 100 ms after an idle spell, and at
    /// once when the lane passes 512 KiB. Never waits for I/O. If the lane is
    /// full (the writer is stuck on a stalled disk) the line is dropped and
    /// counted.
    pub fn send(&self, record: &AccessRecord) {
        let format = self.shared.format;
        let added = LANES
            .try_with(|lanes| {
                let mut lanes = lanes.borrow_mut();
                let this = Arc::as_ptr(&self.shared);
                if let Some((_, lane)) = lanes.iter().find(|(log, _)| log.as_ptr() == this) {
                    return add(lane, format, record);
                }
                // Lanes of logs that are gone are forgotten here.
                lanes.retain(|(log, _)| log.strong_count() > 0);
                let lane = Arc::new(Lane::default());
                if let Ok(mut all) = self.shared.lanes.lock() {
                    all.push(lane.clone());
                }
                let added = add(&lane, format, record);
                lanes.push((Arc::downgrade(&self.shared), lane));
                added
            })
            .unwrap_or_else(|_| add(&self.shared.fallback, format, record));
        match added {
            Added::Yes => {}
            Added::WakeWriter => {
                if let Some(writer) = self.shared.writer.get() {
                    writer.unpark();
                }
            }
            Added::Dropped => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What became of a line.
enum Added {
    Yes,
    /// Added, and the lane just filled past [`WAKE_AT`].
    WakeWriter,
    /// The lane was full.
    Dropped,
}

/// Formats `record` into `lane`, unless it is full.
fn add(lane: &Lane, format: LogFormat, record: &AccessRecord) -> Added {
    let mut state = lane.lock();
    let before = state.lines.len();
    if before >= LANE_CAPACITY {
        return Added::Dropped;
    }
    let LaneState { lines, clock } = &mut *state;
    match format {
        LogFormat::Text => format_text(lines, clock, record),
        // Writing to a Vec cannot fail.
        LogFormat::Json => {
            let _ = write_json(lines, clock, record);
        }
    }
    if before < WAKE_AT && lines.len() >= WAKE_AT {
        Added::WakeWriter
    } else {
        Added::Yes
    }
}

impl AccessLog {
    /// Starts the writer for `target`; returns `None` when access logging is off.
    pub fn start(target: &AccessLogTarget, format: LogFormat) -> Result<Option<Self>, ObserveError> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| ObserveError::AccessLogFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| ObserveError::AccessLogFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                Box::new(file)
            }
        };
        Ok(Some(Self::with_writer(out, format)?))
    }

    /// Starts a writer thread that writes formatted lines to `out`.
    pub fn with_writer(out: Box<dyn Write + Send>, format: LogFormat) -> Result<Self, ObserveError> {
        Self::with_intervals(out, format, (BATCH_INTERVAL, IDLE_INTERVAL))
    }

    fn with_intervals(
        out: Box<dyn Write + Send>,
        format: LogFormat,
        intervals: (Duration, Duration),
    ) -> Result<Self, ObserveError> {
        let shared = Arc::new(Shared {
            format,
            lanes: Mutex::new(Vec::new()),
            fallback: Arc::default(),
            dropped: AtomicU64::new(0),
            finishing: AtomicBool::new(false),
            intervals,
            writer: OnceLock::new(),
        });
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("gatehouse-access-log".into())
            .spawn(move || write_loop(&writer, out))
            .map_err(ObserveError::Thread)?;
        let _ = shared.writer.set(thread.thread().clone());
        Ok(Self {
            sender: Some(AccessLogSender { shared }),
            thread: Some(thread),
        })
    }

    /// A handle for submitting records.
    pub fn sender(&self) -> Option<AccessLogSender> {
        self.sender.clone()
    }

    /// Records dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.sender
            .as_ref()
            .map_or(0, |s| s.shared.dropped.load(Ordering::Relaxed))
    }

    /// Writes every line sent so far and waits for the writer to end. Senders
    /// still held elsewhere keep working; the writer ends once they are gone
    /// and their lines are out.
    pub fn finish(mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Lets the writer end once every sender is gone.
    fn stop(&mut self) {
        if let Some(sender) = self.sender.take() {
            sender.shared.finishing.store(true, Ordering::Release);
        }
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for AccessLog {
    /// Dropped without [`finish`](Self::finish): the writer still writes
    /// everything and ends on its own.
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_loop(shared: &Arc<Shared>, out: Box<dyn Write + Send>) {
    let mut out = Output {
        out,
        failed: false,
        torn: false,
    };
    let mut spare = Vec::with_capacity(BUFFER_SIZE);
    let (batch, idle) = shared.intervals;
    // Turns in a row that took nothing. The writer counts as idle after two: a
    // wake that cut a sleep short can leave one turn with nothing to take while
    // lines keep coming.
    let mut empty_turns: u32 = 2;
    loop {
        // Sleeps first: lines come in after the log starts. A lane filling
        // fast, and the log finishing, wake it early.
        std::thread::park_timeout(if empty_turns >= 2 { idle } else { batch });
        // Read before the lanes are emptied: a sender that is gone had put
        // its lines in before it went, and they are taken below.
        let last = shared.finishing.load(Ordering::Acquire) && Arc::strong_count(shared) == 1;
        std::sync::atomic::fence(Ordering::Acquire);
        let lanes = shared.lanes.lock().map(|l| l.clone()).unwrap_or_default();
        let mut took = false;
        for lane in lanes.iter().chain([&shared.fallback]) {
            {
                let mut state = lane.lock();
                if state.lines.is_empty() {
                    continue;
                }
                std::mem::swap(&mut state.lines, &mut spare);
            }
            took = true;
            out.write(&spare);
            spare.clear();
            if spare.capacity() > 4 * BUFFER_SIZE {
                spare.shrink_to(BUFFER_SIZE);
            }
        }
        if took {
            out.flush();
            empty_turns = 0;
        } else {
            empty_turns = empty_turns.saturating_add(1);
        }
        drop(lanes);
        // A lane only the list still holds belongs to a thread that has
        // ended; once its last lines are out it is let go.
        if let Ok(mut all) = shared.lanes.lock() {
            all.retain(|lane| Arc::strong_count(lane) > 1 || !lane.lock().lines.is_empty());
        }
        if last {
            return;
        }
    }
}

/// Where the lines go, and what went wrong there.
struct Output {
    out: Box<dyn Write + Send>,
    failed: bool,
    /// A write of lines failed: it may have ended mid-line.
    torn: bool,
}

impl Output {
    fn write(&mut self, lines: &[u8]) {
        // After a failed write, part of a line may be out: the next lines
        // start on a line of their own.
        let restart: &[u8] = if self.torn { b"\n" } else { b"" };
        match self.out.write_all(restart).and_then(|()| self.out.write_all(lines)) {
            Ok(()) => (self.failed, self.torn) = (false, false),
            Err(e) => {
                self.torn = true;
                report(e, &mut self.failed);
            }
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            report(e, &mut self.failed);
        }
    }
}

/// Logs a write failure once per failure streak, not once per line.
fn report(e: io::Error, failed: &mut bool) {
    if !*failed {
        tracing::error!(error = %e, "Access log write failed; lines are being lost.");
    }
    *failed = true;
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// Appends `bytes` with anything that could break the line format escaped.
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Almost always: nothing to escape, one copy.
    if is_clean(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if needs_escape(b) {
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(&[b'\\', b'x', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether no byte of `bytes` needs escaping: eight bytes at a time.
fn is_clean(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Nonzero when a byte of `v` is zero (exact as to whether, not which).
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let Ok(eight) = <[u8; 8]>::try_from(chunk) else {
            return false;
        };
        let x = u64::from_le_bytes(eight);
        // Bytes from 0x80 up; with those excluded, `x - 0x20` per byte
        // borrows exactly where a byte is below 0x20.
        let dirty = (x & HIGH)
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
            | has_zero(x ^ (ONES * 0x7f))
            | has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')));
        if dirty != 0 {
            return false;
        }
    }
    !chunks.remainder().iter().any(|&b| needs_escape(b))
}

/// A byte that could break a text line: a quote, a backslash, a control byte
/// or anything beyond ASCII.
fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b)
}

/// Milliseconds to the microsecond, as the text format writes them: 0.53,
/// not 0.5305190000000001.
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Formats timestamps, re-using the date and time up to the second: every line
/// within one second shares that prefix, so only the milliseconds are new.
#[derive(Default)]
struct Clock {
    second: u64,
    /// `2026-11-21T12:32:43.`
    prefix: Vec<u8>,
    /// The last time [`Clock::text`] gave.
    text: Vec<u8>,
}

/// 9999-12-31T23:59:59Z, the last second RFC 3339 can write (and humantime's
/// `Display` fails past it).
const LAST_SECOND: u64 = 253_402_300_799;

impl Clock {
    /// Writes `t` as RFC 3339 UTC with milliseconds. A clock set before 1970
    /// writes 1970-01-01T00:00:00.000Z; one set past 9999 writes the last
    /// second of 9999.
    fn write(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs().min(LAST_SECOND);
        if self.prefix.is_empty() || second != self.second {
            let whole = std::time::UNIX_EPOCH + Duration::from_secs(second);
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            self.prefix.clear();
            self.prefix.extend_from_slice(text.trim_end_matches('Z').as_bytes());
            self.prefix.push(b'.');
            self.second = second;
        }
        out.extend_from_slice(&self.prefix);
        let ms = since.subsec_millis();
        out.extend_from_slice(&[
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }

    /// `t` as [`Clock::write`] writes it, in a buffer of the clock's own.
    fn text(&mut self, t: SystemTime) -> &str {
        let mut text = std::mem::take(&mut self.text);
        text.clear();
        self.write(&mut text, t);
        self.text = text;
        // Always ASCII: digits, `-`, `:`, `T`, `.` and `Z`.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }
}

/// Writes a duration as milliseconds with three decimals, without floats.
fn write_ms(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros();
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(us / 1000).as_bytes());
    let frac = (us % 1000) as u32;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// IPv4 is written digit by digit (the `Display` impl goes through the
/// formatting machinery and costs ten times as much); IPv6 is rare enough.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let mut buf = itoa::Buffer::new();
            for (i, octet) in o.iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(buf.format(*octet).as_bytes());
            }
        }
        // Writing to a Vec cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn write_int(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Puts the text line for `r` in `out`.
fn format_text(out: &mut Vec<u8>, clock: &mut Clock, r: &AccessRecord) {
    clock.write(out, r.time);
    out.extend_from_slice(b" ");
    write_ip(out, r.client_ip);
    out.extend_from_slice(b" ");
    out.extend_from_slice(r.request_id.as_bytes());
    out.extend_from_slice(b" \"");
    out.extend_from_slice(r.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    match &r.host {
        Some(h) => write_escaped(out, h.as_bytes()),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" ");
    let target = r.uri.path_and_query().map_or("/", |pq| pq.as_str());
    write_escaped(out, target.as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(version_str(r.version).as_bytes());
    out.extend_from_slice(b"\" ");
    write_int(out, u64::from(r.status));
    out.extend_from_slice(b" in=");
    write_int(out, r.bytes_in);
    out.extend_from_slice(b" out=");
    write_int(out, r.bytes_out);
    out.extend_from_slice(b" dur_ms=");
    write_ms(out, r.duration);
    out.extend_from_slice(b" route=");
    match &r.route {
        Some(route) => write_escaped(out, route.as_bytes()),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" upstream=");
    match &r.upstream {
        Some(u) => write_escaped(out, u.as_bytes()),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" upstream_ms=");
    match r.upstream_duration {
        Some(d) => write_ms(out, d),
        None => out.push(b'-'),
    }
    out.push(b'\n');
}

/// One JSON access-log line, serialized straight from the record: nothing
/// per field is allocated but a `Host` that is not UTF-8 (a map of owned
/// strings cost about thirty allocations a line). Keys come in this order.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    client_ip: IpAddr,
    request_id: &'a str,
    method: &'a str,
    host: Option<Cow<'a, str>>,
    path: &'a str,
    version: &'static str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    upstream_ms: Option<f64>,
}

fn write_json(out: &mut impl Write, clock: &mut Clock, r: &AccessRecord) -> io::Result<()> {
    let line = JsonLine {
        time: clock.text(r.time),
        client_ip: r.client_ip,
        request_id: r.request_id.to_str().unwrap_or(""),
        method: r.method.as_str(),
        host: r.host.as_ref().map(|h| String::from_utf8_lossy(h.as_bytes())),
        path: r.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        version: version_str(r.version),
        status: r.status,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        duration_ms: ms(r.duration),
        route: r.route.as_deref(),
        upstream: r.upstream.as_deref(),
        upstream_ms: r.upstream_duration.map(ms),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Waits (at most 5 s) until `done`; `what` names what never happened.
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn record() -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            request_id: HeaderValue::from_static("abc123"),
            client_ip: "203.0.113.9".parse().unwrap(),
            method: Method::POST,
            host: Some(HeaderValue::from_static("app.example.com")),
            uri: "/api/items?q=\"x\""
                .parse()
                .unwrap_or_else(|_| "/api/items?q=x".parse().unwrap()),
            version: Version::HTTP_11,
            status: 201,
            bytes_in: 42,
            bytes_out: 7,
            duration: Duration::from_micros(1500),
            route: Some(Arc::from("app.example.com/api/")),
            upstream: Some(Arc::from("127.0.0.1:8000")),
            upstream_duration: Some(Duration::from_micros(1200)),
        }
    }

    /// Takes 10 bytes of its first write, fails the next, then takes all.
    #[derive(Clone, Default)]
    struct Flaky(Arc<Mutex<(Vec<u8>, usize)>>);
    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut state = self.0.lock().unwrap();
            state.1 += 1;
            match state.1 {
                1 => {
                    let n = buf.len().min(10);
                    state.0.extend_from_slice(&buf[..n]);
                    Ok(n)
                }
                2 => Err(io::Error::other("disk full")),
                _ => {
                    state.0.extend_from_slice(buf);
                    Ok(buf.len())
                }
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn after_a_failed_write_the_next_line_starts_on_its_own() {
        let out = Flaky::default();
        let log = AccessLog::with_writer(Box::new(out.clone()), LogFormat::Text).unwrap();
        let sender = log.sender().unwrap();
        sender.send(&record());
        // The writer takes the first record and fails to write it whole.
        wait_until("the first write never came", || out.0.lock().unwrap().1 >= 2);
        let mut second = record();
        second.status = 503;
        sender.send(&second);
        drop(sender);
        log.finish();
        let text = String::from_utf8(out.0.lock().unwrap().0.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        assert_eq!(lines[0], "2023-11-14", "the torn start of the first line");
        assert!(
            lines[1].starts_with("2023-11-14T22:13:20.123Z 203.0.113.9 abc123 "),
            "{text:?}"
        );
        assert!(lines[1].contains("\" 503 in=42"), "{text:?}");
    }

    #[test]
    fn a_lane_filling_fast_wakes_the_writer() {
        let mut one = Vec::new();
        format_text(&mut one, &mut Clock::default(), &record());
        // Lines that stay under the mark, and the one that crosses it.
        let under = (WAKE_AT - 1) / one.len();
        // The writer looks only once an hour by itself, so only the lane
        // crossing the mark can wake it.
        let hour = Duration::from_secs(3600);
        let buf = Shared::default();
        let log = AccessLog::with_intervals(Box::new(buf.clone()), LogFormat::Text, (hour, hour)).unwrap();
        let sender = log.sender().unwrap();
        for _ in 0..under {
            sender.send(&record());
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(buf.text().is_empty(), "the writer woke before the mark");
        sender.send(&record());
        wait_until("the writer slept through the burst", || {
            buf.text().lines().count() == under + 1
        });
        assert_eq!(log.dropped(), 0);
        drop(sender);
        log.finish();
    }

    #[test]
    fn a_panic_mid_line_costs_only_that_line() {
        let buf = Shared::default();
        let log = AccessLog::with_writer(Box::new(buf.clone()), LogFormat::Text).unwrap();
        let sender = log.sender().unwrap();
        sender.send(&record());
        // Poison this thread's lane as a panic halfway through a line would.
        let poisoner = sender.shared.lanes.lock().unwrap()[0].clone();
        let poisoned = std::thread::spawn(move || {
            let mut state = poisoner.0.lock().unwrap();
            state.lines.extend_from_slice(b"half a li");
            panic!("formatting failed");
        })
        .join();
        // It panicked holding the lock. (Whether the lock is still poisoned
        // depends on whether the writer has looked since.)
        assert!(poisoned.is_err());
        let mut second = record();
        second.status = 503;
        sender.send(&second);
        assert_eq!(log.dropped(), 0);
        drop(sender);
        log.finish();
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        for line in &lines {
            assert!(
                line.starts_with("2023-11-14T22:13:20.123Z 203.0.113.9 abc123 "),
                "{text:?}"
            );
        }
        assert!(
            lines[0].contains("\" 201 in=42") && lines[1].contains("\" 503 in=42"),
            "{text:?}"
        );
    }

    #[test]
    fn every_threads_lines_arrive_in_their_order() {
        let buf = Shared::default();
        let log = AccessLog::with_writer(Box::new(buf.clone()), LogFormat::Text).unwrap();
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let sender = log.sender().unwrap();
                std::thread::spawn(move || {
                    let mut r = record();
                    r.request_id = HeaderValue::from(t);
                    for n in 0..1000 {
                        r.bytes_in = n;
                        sender.send(&r);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.finish();
        let text = buf.text();
        for t in 0..4 {
            let seen: Vec<u64> = text
                .lines()
                .filter(|l| l.split(' ').nth(2) == Some(&t.to_string()))
                .map(|l| {
                    l.split(" in=")
                        .nth(1)
                        .unwrap()
                        .split(' ')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            assert_eq!(seen, (0..1000).collect::<Vec<u64>>(), "thread {t}");
        }
        assert_eq!(text.lines().count(), 4000);
    }

    #[test]
    fn the_lane_of_a_thread_that_ended_is_let_go_once_written() {
        let buf = Shared::default();
        let log = AccessLog::with_writer(Box::new(buf.clone()), LogFormat::Text).unwrap();
        let sender = log.sender().unwrap();
        let lanes = || sender.shared.lanes.lock().unwrap().len();
        let sent = sender.clone();
        std::thread::spawn(move || sent.send(&record())).join().unwrap();
        // (The writer may already have let it go.)
        assert!(lanes() <= 1);
        wait_until("the lane was kept", || lanes() == 0);
        assert_eq!(buf.text().lines().count(), 1, "its line was written first");
        drop(sender);
        log.finish();
    }

    #[test]
    fn a_sender_still_held_after_finish_keeps_its_lines() {
        let buf = Shared::default();
        let log = AccessLog::with_writer(Box::new(buf.clone()), LogFormat::Text).unwrap();
        let sender = log.sender().unwrap();
        let finishing = std::thread::spawn(move || log.finish());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!finishing.is_finished(), "the writer waits for the sender");
        sender.send(&record());
        drop(sender);
        finishing.join().unwrap();
        let text = buf.text();
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    /// Holds every write until opened.
    #[derive(Clone, Default)]
    struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>, Shared);
    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (open, opened) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = opened.wait(open).unwrap();
            }
            self.1.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_disk_drops_and_counts_lines_instead_of_growing() {
        let out = Gate::default();
        let log = AccessLog::with_writer(Box::new(out.clone()), LogFormat::Text).unwrap();
        let sender = log.sender().unwrap();
        let sent = 2 * LANE_CAPACITY / 100;
        for _ in 0..sent {
            sender.send(&record());
        }
        let dropped = log.dropped();
        assert!(dropped > 0, "a full lane drops lines");
        {
            let (open, opened) = &*out.0;
            *open.lock().unwrap() = true;
            opened.notify_all();
        }
        drop(sender);
        log.finish();
        let written = out.1.text().lines().count();
        assert_eq!(
            written as u64 + dropped,
            sent as u64,
            "every line is written or counted"
        );
    }

    #[test]
    fn text_lines_carry_every_field() {
        let buf = Shared::default();
        let log = AccessLog::with_writer(Box::new(buf.clone()), LogFormat::Text).unwrap();
        log.sender().unwrap().send(&record());
        log.finish();
        let text = buf.text();
        assert!(
            text.starts_with("2023-11-14T22:13:20.123Z 203.0.113.9 abc123 \"POST app.example.com /api/items?q="),
            "{text}"
        );
        assert!(text.contains(" HTTP/1.1\" 201 in=42 out=7 dur_ms=1.500 route=app.example.com/api/ upstream=127.0.0.1:8000 upstream_ms=1.200\n"), "{text}");
    }

    #[test]
    fn json_lines_carry_every_field_in_the_documented_order() {
        let mut r = record();
        // Characters a JSON string must escape.
        r.uri = "/api/\"x\"\\y?q=1".parse().unwrap();
        r.request_id = HeaderValue::from_static("a\"b\\c");
        let mut out = Vec::new();
        write_json(&mut out, &mut Clock::default(), &r).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                r#"{"time":"2023-11-14T22:13:20.123Z","client_ip":"203.0.113.9","request_id":"a\"b\\c","#,
                r#""method":"POST","host":"app.example.com","path":"/api/\"x\"\\y?q=1","version":"HTTP/1.1","#,
                r#""status":201,"bytes_in":42,"bytes_out":7,"duration_ms":1.5,"route":"app.example.com/api/","#,
                r#""upstream":"127.0.0.1:8000","upstream_ms":1.2}"#,
                "\n"
            )
        );
    }

    #[test]
    fn the_clock_keeps_its_second_only_while_it_lasts() {
        let mut clock = Clock::default();
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for offset_ms in [123, 999, 1_000, 1_005, 86_400_000, 0, 7] {
            let t = base + Duration::from_millis(offset_ms);
            let expected = humantime::format_rfc3339_millis(t).to_string();
            assert_eq!(clock.text(t), expected, "{offset_ms} ms after the base");
            let mut line = Vec::new();
            clock.write(&mut line, t);
            assert_eq!(line, expected.as_bytes());
        }
        // A clock set before 1970 or past 9999 gives the nearest time that can
        // be written, and no panic.
        let before = SystemTime::UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(clock.text(before), "1970-01-01T00:00:00.000Z");
        let after = SystemTime::UNIX_EPOCH + Duration::from_secs(LAST_SECOND + 86_400) + Duration::from_millis(42);
        assert_eq!(clock.text(after), "9999-12-31T23:59:59.042Z");
    }

    #[test]
    fn json_lines_say_null_for_what_is_missing_and_keep_odd_bytes_valid() {
        let mut r = record();
        // obs-text: allowed in a header value, not UTF-8.
        r.host = Some(HeaderValue::from_bytes(b"caf\xe9.example").unwrap());
        r.client_ip = "2001:db8::1".parse().unwrap();
        r.route = None;
        r.upstream = None;
        r.upstream_duration = None;
        r.duration = Duration::from_nanos(530_519_923);
        let mut out = Vec::new();
        write_json(&mut out, &mut Clock::default(), &r).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["host"], "caf\u{fffd}.example");
        assert_eq!(line["client_ip"], "2001:db8::1");
        // Cut to the microsecond, as in the text format, with no float noise.
        assert!(
            String::from_utf8_lossy(&out).contains(r#""duration_ms":530.519,"#),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert!(line["route"].is_null() && line["upstream"].is_null() && line["upstream_ms"].is_null());
        r.host = None;
        out.clear();
        write_json(&mut out, &mut Clock::default(), &r).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(line["host"].is_null());
    }

    #[test]
    fn json_lines_parse() {
        let buf = Shared::default();
        let log = AccessLog::with_writer(Box::new(buf.clone()), LogFormat::Json).unwrap();
        let sender = log.sender().unwrap();
        sender.send(&record());
        sender.send(&record());
        drop(sender);
        log.finish();
        let text = buf.text();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["status"], 201);
        assert_eq!(lines[0]["upstream"], "127.0.0.1:8000");
        assert_eq!(lines[0]["request_id"], "abc123");
    }

    #[test]
    fn the_fast_check_agrees_with_the_byte_rule() {
        // Every byte value, at every position of a 16-byte string (two words
        // and a tail), among clean neighbours.
        for len in [1usize, 7, 8, 9, 16, 19] {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[pos] = b;
                    assert_eq!(is_clean(&s), !needs_escape(b), "byte {b:#x} at {pos} of {len}");
                }
            }
        }
        assert!(is_clean(b""));
        assert!(is_clean(b"127.0.0.1:8080 /a/b?c=d&e=f ~!#$%&'()*+,-./:;<=>?@[]^_`{|}"));
    }

    #[test]
    fn hostile_bytes_are_escaped() {
        let mut out = Vec::new();
        write_escaped(&mut out, b"a\"b\nc\\\x7f");
        assert_eq!(out, b"a\\x22b\\x0ac\\x5c\\x7f");
    }
}
