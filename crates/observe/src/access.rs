//! The access log: one line per request, written by a background thread.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use gatehouse_config::{AccessLogTarget, LogFormat};
use http::{HeaderValue, Method, Uri, Version};

use crate::ObserveError;

/// Records that may wait for the writer. At ~200 bytes each this is ~1.6 MB of
/// memory at most, and absorbs a burst of 8k requests while the disk stalls.
const QUEUE_CAPACITY: usize = 8192;
/// Lines are flushed at least this often when traffic trickles in, so `tail -f`
/// stays current.
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Write buffer size: large writes keep the syscall count low under load.
const BUFFER_SIZE: usize = 64 * 1024;
/// While records keep coming, the writer sleeps this long between batches instead
/// of parking on the queue. A parked writer must be woken by the worker that
/// sends the next record — a futex call and a context switch per request, which
/// profiling showed costing more than the rest of the proxy path. 8192 records
/// per 5 ms is 1.6M requests/s of headroom before anything is dropped.
const BATCH_INTERVAL: Duration = Duration::from_millis(5);

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
    tx: SyncSender<AccessRecord>,
    dropped: Arc<AtomicU64>,
}

impl AccessLogSender {
    /// Queues a record without blocking. If the queue is full the record is
    /// dropped and counted.
    pub fn send(&self, record: AccessRecord) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
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
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("gatehouse-access-log".into())
            .spawn(move || write_loop(rx, out, format))
            .map_err(ObserveError::Thread)?;
        Ok(Self {
            sender: Some(AccessLogSender {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            }),
            thread: Some(thread),
        })
    }

    /// A handle for submitting records.
    pub fn sender(&self) -> Option<AccessLogSender> {
        self.sender.clone()
    }

    /// Records dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.sender.as_ref().map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }

    /// Stops accepting records, writes everything queued, and flushes. Records
    /// still held by other senders' clones are written once those are dropped.
    pub fn finish(mut self) {
        self.sender = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(rx: Receiver<AccessRecord>, out: Box<dyn Write + Send>, format: LogFormat) {
    let mut batch = Batch {
        lines: Vec::with_capacity(BUFFER_SIZE + 1024),
        out,
        failed: false,
        torn: false,
        clock: Clock::default(),
        format,
    };
    loop {
        // Idle: park until a record arrives (or flush periodically).
        let first = match rx.recv_timeout(FLUSH_INTERVAL) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                batch.flush();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        batch.add(&first);
        // Busy: drain in batches without parking, so senders never wake us.
        loop {
            let mut wrote = 0usize;
            loop {
                match rx.try_recv() {
                    Ok(r) => {
                        batch.add(&r);
                        wrote += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        batch.flush();
                        return;
                    }
                }
            }
            batch.flush();
            if wrote == 0 {
                break;
            }
            std::thread::sleep(BATCH_INTERVAL);
        }
    }
    batch.flush();
}

/// Lines on their way out: records are formatted straight into `lines`, which
/// is written in one call when it fills and whenever the writer flushes.
struct Batch {
    lines: Vec<u8>,
    out: Box<dyn Write + Send>,
    failed: bool,
    /// A write of lines failed: it may have ended mid-line.
    torn: bool,
    clock: Clock,
    format: LogFormat,
}

impl Batch {
    fn add(&mut self, r: &AccessRecord) {
        match self.format {
            LogFormat::Text => format_text(&mut self.lines, &mut self.clock, r),
            // Writing to a Vec cannot fail.
            LogFormat::Json => {
                let _ = write_json(&mut self.lines, r);
            }
        }
        if self.lines.len() >= BUFFER_SIZE {
            self.write_out();
        }
    }

    fn write_out(&mut self) {
        if self.lines.is_empty() {
            return;
        }
        // After a failed write, part of a line may be out: the next batch
        // starts on a line of its own.
        let restart: &[u8] = if self.torn { b"\n" } else { b"" };
        match self
            .out
            .write_all(restart)
            .and_then(|()| self.out.write_all(&self.lines))
        {
            Ok(()) => (self.failed, self.torn) = (false, false),
            Err(e) => {
                self.torn = true;
                report(e, &mut self.failed);
            }
        }
        self.lines.clear();
    }

    fn flush(&mut self) {
        self.write_out();
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Formats timestamps, re-using the date and time up to the second: every line
/// within one second shares that prefix, so only the milliseconds are new.
#[derive(Default)]
struct Clock {
    second: u64,
    /// `2026-11-21T12:32:43.`
    prefix: Vec<u8>,
}

impl Clock {
    fn write(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
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

fn write_json(out: &mut impl Write, r: &AccessRecord) -> io::Result<()> {
    let host = r
        .host
        .as_ref()
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    let value = serde_json::json!({
        "time": humantime::format_rfc3339_millis(r.time).to_string(),
        "request_id": r.request_id.to_str().unwrap_or(""),
        "client_ip": r.client_ip.to_string(),
        "method": r.method.as_str(),
        "host": host,
        "path": r.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        "version": version_str(r.version),
        "status": r.status,
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out,
        "duration_ms": ms(r.duration),
        "route": r.route.as_deref(),
        "upstream": r.upstream.as_deref(),
        "upstream_ms": r.upstream_duration.map(ms),
    });
    serde_json::to_writer(&mut *out, &value)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
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
        sender.send(record());
        // The writer takes the first record and fails to write it whole.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.0.lock().unwrap().1 < 2 {
            assert!(std::time::Instant::now() < deadline, "the first write never came");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut second = record();
        second.status = 503;
        sender.send(second);
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
    fn text_lines_carry_every_field() {
        let buf = Shared::default();
        let log = AccessLog::with_writer(Box::new(buf.clone()), LogFormat::Text).unwrap();
        log.sender().unwrap().send(record());
        log.finish();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.starts_with("2023-11-14T22:13:20.123Z 203.0.113.9 abc123 \"POST app.example.com /api/items?q="),
            "{text}"
        );
        assert!(text.contains(" HTTP/1.1\" 201 in=42 out=7 dur_ms=1.500 route=app.example.com/api/ upstream=127.0.0.1:8000 upstream_ms=1.200\n"), "{text}");
    }

    #[test]
    fn json_lines_parse() {
        let buf = Shared::default();
        let log = AccessLog::with_writer(Box::new(buf.clone()), LogFormat::Json).unwrap();
        let sender = log.sender().unwrap();
        sender.send(record());
        sender.send(record());
        drop(sender);
        log.finish();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
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
