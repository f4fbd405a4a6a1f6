//! [`StaticService`]: answers GET and HEAD for one static route.

mod conditional;

use std::fs::File;
use std::io;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};

use crate::FilesError;
use crate::body::{FileBody, Part};
use crate::cache::{self, FileEntry, Lookup, LookupSettings, Root, Stamp, Variant};
use crate::compress::{Compressed, Compressor};
use crate::encoding::{AcceptEncoding, Encoding};
use crate::listing;
use crate::options::{DEFAULT_CACHE_CONTROL, StaticOptions, StaticSource};
use crate::path::{DotfilesPolicy, SafePath, parse_request_path};
use crate::range::{ByteRange, RangeOutcome, parse_range};
use crate::releases::{ActiveRelease, ReleaseSlot};

/// How many times a request is retried when the file changes between the
/// lookup and the open (a deploy into a directory root in progress).
const MAX_ATTEMPTS: usize = 3;

/// Serves one static route: a directory or the active release of a slot.
///
/// Cheap to clone (one `Arc`); share it between connections. Every method is
/// non-blocking: disk work runs on tokio's blocking pool, and repeated requests
/// for small files are answered from memory without any system call.
#[derive(Clone)]
pub struct StaticService {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<LookupSettings>,
    spa: bool,
    index: Vec<String>,
    not_found_page: Option<String>,
    listing: bool,
    dotfiles: DotfilesPolicy,
    max_ranges: usize,
    sendfile: bool,
    source: Source,
    compressor: Compressor,
}

enum Source {
    Dir(Arc<Root>),
    Release {
        slot: ReleaseSlot,
        bound: ArcSwapOption<Bound>,
    },
}

/// The root built for the release a slot had when it was last looked at.
struct Bound {
    release: Arc<ActiveRelease>,
    root: Arc<Root>,
}

/// The part of the request that decides the response.
struct Req<'a> {
    head: bool,
    headers: &'a HeaderMap,
    query: Option<&'a str>,
}

/// How a found file is being used.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// The file that was asked for (or a directory's index).
    Normal,
    /// `index.html` standing in for a client-side route.
    SpaFallback,
    /// The custom 404 page.
    NotFoundPage,
}

enum Outcome {
    Done(Response<FileBody>),
    /// The file changed between lookup and open; look again.
    Retry,
}

/// The representation chosen for a response.
struct Rep<'a> {
    enc: Encoding,
    etag: &'a HeaderValue,
    last_modified: &'a HeaderValue,
    mtime_secs: u64,
    len: u64,
    data: RepData<'a>,
}

enum RepData<'a> {
    Memory(Bytes),
    Disk(&'a Variant),
}

impl std::fmt::Debug for StaticService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let src = match &self.inner.source {
            Source::Dir(r) => format!("dir {}", r.path.display()),
            Source::Release { slot, .. } => format!("release {}", slot.name()),
        };
        f.debug_struct("StaticService").field("source", &src).finish()
    }
}

impl StaticService {
    /// Build the service. For a directory source the root must exist; it is
    /// canonicalised once here (a blocking call: build services at startup or
    /// on reload, not per request). A release slot may still be empty: requests
    /// then get 503 until the first deploy.
    pub fn new(opts: StaticOptions) -> Result<Self, FilesError> {
        for name in &opts.index {
            if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
                return Err(FilesError::Option {
                    option: "index",
                    reason: format!("{name:?} must be a plain file name such as \"index.html\""),
                });
            }
        }
        let not_found_page = match &opts.not_found_page {
            None => None,
            Some(p) => Some(relative_page(p)?),
        };
        let cache_control = HeaderValue::from_str(&opts.cache_control).map_err(|_| FilesError::Option {
            option: "cache_control",
            reason: "not a valid header value".into(),
        })?;
        let source = match opts.source {
            StaticSource::Dir(dir) => {
                let canon = std::fs::canonicalize(&dir).map_err(|source| FilesError::Root {
                    path: dir.clone(),
                    source,
                })?;
                if !canon.is_dir() {
                    return Err(FilesError::RootNotDir { path: dir });
                }
                Source::Dir(Arc::new(Root::new(canon, false)))
            }
            StaticSource::Release(slot) => Source::Release {
                slot,
                bound: ArcSwapOption::empty(),
            },
        };
        let settings = LookupSettings {
            check_containment: !opts.follow_symlinks_outside_root,
            precompressed: opts.precompressed,
            memory_file_max: opts.memory_file_max,
            memory_total: opts.memory_total,
            max_cached_paths: opts.max_cached_paths.max(16),
            revalidate_after: opts.revalidate_after,
            immutable: opts.immutable,
            cache_control,
            compress: opts.compress,
            compress_min_size: opts.compress_min_size,
            compress_max_size: opts.compress_max_size,
            compress_types: opts.compress_types,
        };
        Ok(StaticService {
            inner: Arc::new(Inner {
                settings: Arc::new(settings),
                spa: opts.spa,
                index: opts.index,
                not_found_page,
                listing: opts.listing,
                dotfiles: opts.dotfiles,
                max_ranges: opts.max_ranges,
                sendfile: opts.sendfile,
                source,
                compressor: Compressor::new(opts.compress_concurrency, opts.compress_cache_bytes),
            }),
        })
    }

    /// Answer a request. `uri` is the request target relative to the route's
    /// mount point (the edge strips the route prefix), starting with `/`; a
    /// query string, if present, is only kept on redirects.
    ///
    /// Never fails: every outcome, including bad paths, is a response.
    pub async fn serve(&self, method: &Method, uri: &str, headers: &HeaderMap) -> Response<FileBody> {
        let head = match *method {
            Method::GET => false,
            Method::HEAD => true,
            _ => return method_not_allowed(),
        };
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        let safe = match parse_request_path(path, self.inner.dotfiles) {
            Ok(p) => p,
            Err(rejection) => {
                tracing::debug!(%rejection, "Static path refused.");
                return plain(rejection.status(), head);
            }
        };
        let Some(root) = self.root().await else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, head);
        };
        let req = Req { head, headers, query };
        for _ in 0..MAX_ATTEMPTS {
            if let Outcome::Done(resp) = self.serve_path(&root, &safe, &req).await {
                return resp;
            }
        }
        plain(StatusCode::SERVICE_UNAVAILABLE, head)
    }

    /// [`serve`](Self::serve) taking the request head; uses the URI's path and query.
    pub async fn serve_parts(&self, parts: &http::request::Parts) -> Response<FileBody> {
        let uri = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        self.serve(&parts.method, uri, &parts.headers).await
    }

    /// Whether responses of this route may send file ranges with
    /// `sendfile(2)` ([`FileBody::use_sendfile`]); the `sendfile` option.
    pub fn sendfile(&self) -> bool {
        self.inner.sendfile
    }

    /// The id of the release being served, for a release-backed service.
    pub async fn active_release(&self) -> Option<String> {
        match &self.inner.source {
            Source::Dir(_) => None,
            Source::Release { slot, .. } => slot.current().await.map(|r| r.id().to_owned()),
        }
    }

    async fn root(&self) -> Option<Arc<Root>> {
        match &self.inner.source {
            Source::Dir(root) => Some(Arc::clone(root)),
            Source::Release { slot, bound } => {
                let active = slot.current().await?;
                if let Some(b) = &*bound.load() {
                    if Arc::ptr_eq(&b.release, &active) {
                        return Some(Arc::clone(&b.root));
                    }
                }
                let root = Arc::new(Root::new(active.root().to_path_buf(), true));
                bound.store(Some(Arc::new(Bound {
                    release: active,
                    root: Arc::clone(&root),
                })));
                Some(root)
            }
        }
    }

    async fn lookup(&self, root: &Arc<Root>, rel: &str) -> Lookup {
        let previous = match root.cached(rel, &self.inner.settings) {
            Ok(found) => return found,
            Err(previous) => previous,
        };
        let (r, s, key) = (Arc::clone(root), Arc::clone(&self.inner.settings), rel.to_owned());
        let found = tokio::task::spawn_blocking(move || cache::lookup_blocking(&r, &key, &s, previous.as_deref()))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "Static lookup task failed.");
                Lookup::NotFound
            });
        root.store(rel, &found, &self.inner.settings);
        found
    }

    async fn serve_path(&self, root: &Arc<Root>, safe: &SafePath, req: &Req<'_>) -> Outcome {
        match self.lookup(root, safe.as_str()).await {
            Lookup::File(entry) if !safe.trailing_slash() => self.respond(root, &entry, Disposition::Normal, req).await,
            Lookup::File(_) | Lookup::NotFound => self.not_found(root, safe, req).await,
            Lookup::Forbidden => Outcome::Done(plain(StatusCode::FORBIDDEN, req.head)),
            Lookup::Dir if !safe.trailing_slash() => Outcome::Done(redirect_to_dir(safe, req.query)),
            Lookup::Dir => {
                for name in &self.inner.index {
                    let rel = child(safe.as_str(), name);
                    if let Lookup::File(entry) = self.lookup(root, &rel).await {
                        return self.respond(root, &entry, Disposition::Normal, req).await;
                    }
                }
                if self.inner.listing {
                    return Outcome::Done(self.listing(root, safe, req.head).await);
                }
                self.not_found(root, safe, req).await
            }
        }
    }

    async fn not_found(&self, root: &Arc<Root>, safe: &SafePath, req: &Req<'_>) -> Outcome {
        if self.inner.spa && !safe.has_extension() {
            for name in &self.inner.index {
                if let Lookup::File(entry) = self.lookup(root, name).await {
                    return self.respond(root, &entry, Disposition::SpaFallback, req).await;
                }
            }
        }
        if let Some(page) = &self.inner.not_found_page {
            if let Lookup::File(entry) = self.lookup(root, page).await {
                return self.respond(root, &entry, Disposition::NotFoundPage, req).await;
            }
        }
        Outcome::Done(plain(StatusCode::NOT_FOUND, req.head))
    }

    async fn listing(&self, root: &Arc<Root>, safe: &SafePath, head: bool) -> Response<FileBody> {
        let dir = cache::join(&root.path, safe.as_str());
        let shown = safe.to_string();
        let dotfiles = self.inner.dotfiles;
        let html = tokio::task::spawn_blocking(move || listing::render(&dir, &shown, dotfiles)).await;
        match html {
            Ok(Ok(html)) => {
                let body = Bytes::from(html);
                let len = body.len();
                let mut resp = Response::new(if head { FileBody::empty() } else { FileBody::full(body) });
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static(DEFAULT_CACHE_CONTROL));
                resp
            }
            _ => plain(StatusCode::NOT_FOUND, head),
        }
    }

    /// Build the response for a found file: preconditions, encoding, 304,
    /// ranges, then the body.
    async fn respond(&self, root: &Arc<Root>, entry: &Arc<FileEntry>, disp: Disposition, req: &Req<'_>) -> Outcome {
        let normal = disp != Disposition::NotFoundPage;
        let headers = req.headers;
        if normal {
            if let Some(status) = conditional::precondition_failed(headers, &entry.identity) {
                return Outcome::Done(plain(status, req.head));
            }
        }
        // Ranges always apply to the identity representation, and only when
        // If-Range (if any) still matches it.
        let range = match headers.get(header::RANGE) {
            Some(r) if normal && conditional::if_range_holds(headers, &entry.identity) => {
                parse_range(r.as_bytes(), entry.identity.stamp.len, self.inner.max_ranges)
            }
            _ => RangeOutcome::Ignore,
        };
        let rep = if range == RangeOutcome::Ignore {
            self.negotiate(entry, headers).await
        } else {
            identity(&entry.identity)
        };
        let cache_control = match disp {
            Disposition::Normal => entry.cache_control.clone(),
            _ => HeaderValue::from_static(DEFAULT_CACHE_CONTROL),
        };
        let mut resp = Response::new(FileBody::empty());
        // Room for this function's headers plus the edge's (request id and
        // security headers), so the map is allocated once and never grows.
        *resp.headers_mut() = http::HeaderMap::with_capacity(12);
        {
            let h = resp.headers_mut();
            h.insert(header::ETAG, rep.etag.clone());
            h.insert(header::LAST_MODIFIED, rep.last_modified.clone());
            h.insert(header::CACHE_CONTROL, cache_control);
            if entry.varies() {
                h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            }
        }
        if normal && conditional::not_modified(headers, rep.etag, rep.mtime_secs) {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return Outcome::Done(resp);
        }
        {
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, entry.content_type.clone());
            if rep.enc == Encoding::Identity {
                if normal {
                    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                }
            } else {
                h.insert(header::CONTENT_ENCODING, rep.enc.header_value());
            }
        }
        if disp == Disposition::NotFoundPage {
            *resp.status_mut() = StatusCode::NOT_FOUND;
        }
        match range {
            RangeOutcome::Unsatisfiable => {
                let mut r = plain(StatusCode::RANGE_NOT_SATISFIABLE, req.head);
                r.headers_mut()
                    .insert(header::CONTENT_RANGE, header_value(&format!("bytes */{}", rep.len)));
                Outcome::Done(r)
            }
            RangeOutcome::Ignore => {
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(rep.len));
                self.body(root, entry, &rep, None, req.head, resp).await
            }
            RangeOutcome::Satisfiable(ranges) => {
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                self.body(root, entry, &rep, Some(ranges), req.head, resp).await
            }
        }
    }

    /// Pick the best representation the client accepts.
    async fn negotiate<'e>(&self, entry: &'e FileEntry, headers: &HeaderMap) -> Rep<'e> {
        if !entry.varies() || !headers.contains_key(header::ACCEPT_ENCODING) {
            return identity(&entry.identity);
        }
        let accept = AcceptEncoding::from_headers(headers);
        let mut available = Vec::with_capacity(4);
        for enc in [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip] {
            if entry.compressible || entry.sibling(enc).is_some() {
                available.push(enc);
            }
        }
        available.push(Encoding::Identity);
        for enc in accept.rank(&available) {
            if enc == Encoding::Identity {
                break;
            }
            if let Some(v) = entry.sibling(enc) {
                let mut rep = identity(v);
                rep.enc = enc;
                return rep;
            }
            if !entry.compressible {
                continue;
            }
            let source = compress_source(&entry.identity);
            match self.inner.compressor.get(entry.etag_key.clone(), enc, source).await {
                Compressed::Ready(bytes) => {
                    return Rep {
                        enc,
                        etag: entry.coded_etag(enc),
                        last_modified: &entry.identity.last_modified,
                        mtime_secs: entry.identity.mtime_secs,
                        len: bytes.len() as u64,
                        data: RepData::Memory(bytes),
                    };
                }
                Compressed::NotWorth | Compressed::Busy => continue,
            }
        }
        identity(&entry.identity)
    }

    /// Attach the body (whole or ranges) and finish the response.
    async fn body(
        &self,
        root: &Arc<Root>,
        entry: &FileEntry,
        rep: &Rep<'_>,
        ranges: Option<Vec<ByteRange>>,
        head: bool,
        mut resp: Response<FileBody>,
    ) -> Outcome {
        let multipart = ranges.as_ref().is_some_and(|r| r.len() > 1);
        let boundary = if multipart { boundary() } else { String::new() };
        // Parts of the body, as (prefix bytes, range) pairs, plus the epilogue.
        let mut layout: Vec<(Option<Bytes>, ByteRange)> = Vec::new();
        let mut epilogue = None;
        match &ranges {
            None if rep.len > 0 => layout.push((
                None,
                ByteRange {
                    start: 0,
                    end: rep.len - 1,
                },
            )),
            None => {}
            Some(rs) if rs.len() == 1 => {
                let r = rs[0];
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes {}-{}/{}", r.start, r.end, rep.len)),
                );
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.len()));
                layout.push((None, r));
            }
            Some(rs) => {
                let ct = entry.content_type.to_str().unwrap_or("application/octet-stream");
                let mut total = 0u64;
                for r in rs {
                    let prefix = Bytes::from(format!(
                        "\r\n--{boundary}\r\nContent-Type: {ct}\r\nContent-Range: bytes {}-{}/{}\r\n\r\n",
                        r.start, r.end, rep.len
                    ));
                    total += prefix.len() as u64 + r.len();
                    layout.push((Some(prefix), *r));
                }
                let end = Bytes::from(format!("\r\n--{boundary}--\r\n"));
                total += end.len() as u64;
                epilogue = Some(end);
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    header_value(&format!("multipart/byteranges; boundary={boundary}")),
                );
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
            }
        }
        if head {
            return Outcome::Done(resp);
        }
        // In memory: slices of one buffer, no I/O at all (or, for a file
        // whose descriptor is kept open, one sendfile on plain HTTP/1).
        let (memory, kept) = match &rep.data {
            RepData::Memory(b) => (Some(b.clone()), None),
            RepData::Disk(v) => (v.content.clone(), v.file.as_ref()),
        };
        if let Some(bytes) = memory {
            let body = match (layout.len(), &epilogue) {
                (0, _) => FileBody::empty(),
                (1, None) => match kept {
                    Some(k) => FileBody::cached(slice(&bytes, layout[0].1), Arc::clone(&k.file), layout[0].1.start),
                    None => FileBody::full(slice(&bytes, layout[0].1)),
                },
                _ => {
                    let mut buf = BytesMut::new();
                    for (prefix, r) in &layout {
                        if let Some(p) = prefix {
                            buf.extend_from_slice(p);
                        }
                        buf.extend_from_slice(&slice(&bytes, *r));
                    }
                    if let Some(e) = &epilogue {
                        buf.extend_from_slice(e);
                    }
                    FileBody::full(buf.freeze())
                }
            };
            *resp.body_mut() = body;
            return Outcome::Done(resp);
        }
        let RepData::Disk(variant) = &rep.data else {
            return Outcome::Done(resp);
        };
        // On disk: open now, check it is still the file we described.
        let path = variant.path.clone();
        let ranges: Vec<ByteRange> = layout.iter().map(|(_, r)| *r).collect();
        let opened = tokio::task::spawn_blocking(move || -> io::Result<(File, Stamp)> {
            let f = File::open(&path)?;
            let m = f.metadata()?;
            // Start reading the ranges into the page cache now, off the serving
            // thread, in case they are sent with sendfile(2) from it.
            for r in ranges {
                crate::sendfile::prefetch(&f, r.start, r.len());
            }
            Ok((f, Stamp::of(&m)))
        })
        .await;
        let file = match opened {
            Ok(Ok((f, stamp))) if stamp == variant.stamp => f,
            other => {
                if let Ok(Err(e)) = &other {
                    tracing::debug!(path = %variant.path.display(), error = %e, "Static file vanished.");
                }
                root.remove(&entry.rel);
                return Outcome::Retry;
            }
        };
        let mut parts = Vec::with_capacity(layout.len() * 2 + 1);
        for (prefix, r) in layout {
            if let Some(p) = prefix {
                parts.push(Part::Bytes(p));
            }
            parts.push(Part::File {
                offset: r.start,
                len: r.len(),
            });
        }
        if let Some(e) = epilogue {
            parts.push(Part::Bytes(e));
        }
        *resp.body_mut() = FileBody::parts(parts, Some(file));
        Outcome::Done(resp)
    }
}

fn identity(v: &Variant) -> Rep<'_> {
    Rep {
        enc: Encoding::Identity,
        etag: &v.etag,
        last_modified: &v.last_modified,
        mtime_secs: v.mtime_secs,
        len: v.stamp.len,
        data: RepData::Disk(v),
    }
}

/// Where on-the-fly compression reads its input: memory, or the file.
fn compress_source(v: &Variant) -> impl FnOnce() -> io::Result<Bytes> + Send + 'static {
    let content = v.content.clone();
    let path = v.path.clone();
    let len = v.stamp.len;
    move || match content {
        Some(b) => Ok(b),
        None => cache::read_exact_len(&File::open(path)?, len)?
            .ok_or_else(|| io::Error::other("file changed while compressing")),
    }
}

fn slice(b: &Bytes, r: ByteRange) -> Bytes {
    // Ranges were clamped to the representation's length, which is b.len().
    let end = usize::try_from(r.end + 1).unwrap_or(usize::MAX).min(b.len());
    let start = usize::try_from(r.start).unwrap_or(usize::MAX).min(end);
    b.slice(start..end)
}

fn child(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn boundary() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `/docs` → `308 Location: docs/` (relative, so it works under any mount).
fn redirect_to_dir(safe: &SafePath, query: Option<&str>) -> Response<FileBody> {
    let name = safe.file_name().unwrap_or("");
    let mut loc = listing::encode_href(name);
    loc.push('/');
    if let Some(q) = query {
        loc.push('?');
        loc.push_str(q);
    }
    let mut resp = Response::new(FileBody::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&loc).unwrap_or_else(|_| HeaderValue::from_static("./")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

fn method_not_allowed() -> Response<FileBody> {
    let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, false);
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

/// A short text response: `404 Not Found\n`.
pub(crate) fn plain(status: StatusCode, head: bool) -> Response<FileBody> {
    let text = format!("{} {}\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let len = text.len();
    let mut resp = Response::new(if head { FileBody::empty() } else { FileBody::full(text) });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn relative_page(p: &std::path::Path) -> Result<String, FilesError> {
    use std::path::Component;
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => match s.to_str() {
                Some(s) => out.push(s),
                None => break,
            },
            Component::CurDir => {}
            _ => {
                return Err(FilesError::Option {
                    option: "not_found_page",
                    reason: format!("{} must be a path relative to the root, without '..'", p.display()),
                });
            }
        }
    }
    if out.is_empty() || out.len() != p.components().filter(|c| matches!(c, Component::Normal(_))).count() {
        return Err(FilesError::Option {
            option: "not_found_page",
            reason: format!("{} is not a usable file path", p.display()),
        });
    }
    Ok(out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let dir = std::env::temp_dir();
        let svc = StaticService::new(StaticOptions::dir(dir)).unwrap();
        let h = HeaderMap::new();
        let fut = svc.serve(&Method::GET, "/", &h);
        is_send(&fut);
    }

    #[test]
    fn not_found_page_must_be_relative() {
        assert_eq!(relative_page(std::path::Path::new("404.html")).unwrap(), "404.html");
        assert_eq!(
            relative_page(std::path::Path::new("./err/404.html")).unwrap(),
            "err/404.html"
        );
        assert!(relative_page(std::path::Path::new("/etc/passwd")).is_err());
        assert!(relative_page(std::path::Path::new("../x.html")).is_err());
    }
}
