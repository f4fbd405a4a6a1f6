//! Per-root lookup cache: what a relative path is (file, directory, missing),
//! the file's validators and headers, and for small files their contents.
//!
//! Entries of a directory root are trusted for `revalidate_after`, then the file
//! is stat'ed again on the blocking pool; contents are reused when the stamp
//! (size, mtime, inode, device) is unchanged. A release root is immutable, so
//! its entries never expire; a switch to another release gets a fresh root.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;

use crate::encoding::Encoding;
use crate::mime;
use crate::options::{DEFAULT_CACHE_CONTROL, IMMUTABLE_CACHE_CONTROL};
use crate::pattern::ImmutableRule;

/// What a file looked like when it was stat'ed: if any of this changes, the
/// cached entry (and its ETag) is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) len: u64,
    pub(crate) mtime: SystemTime,
    pub(crate) ino: u64,
    pub(crate) dev: u64,
}

impl Stamp {
    pub(crate) fn of(m: &Metadata) -> Self {
        #[cfg(unix)]
        let (ino, dev) = {
            use std::os::unix::fs::MetadataExt;
            (m.ino(), m.dev())
        };
        #[cfg(not(unix))]
        let (ino, dev) = (0, 0);
        Stamp {
            len: m.len(),
            mtime: m.modified().unwrap_or(UNIX_EPOCH),
            ino,
            dev,
        }
    }

    fn since_epoch(&self) -> Duration {
        self.mtime.duration_since(UNIX_EPOCH).unwrap_or_default()
    }

    /// FNV-1a over the stamp: stable, cheap, 64 bits.
    fn hash(&self, seed: u64) -> u64 {
        let d = self.since_epoch();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
        for word in [self.dev, self.ino, d.as_secs(), u64::from(d.subsec_nanos()), self.len] {
            for b in word.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }
}

/// One representation on disk: the file itself or a precompressed sibling.
#[derive(Debug)]
pub(crate) struct Variant {
    pub(crate) path: PathBuf,
    pub(crate) stamp: Stamp,
    /// Strong ETag, quoted.
    pub(crate) etag: HeaderValue,
    pub(crate) last_modified: HeaderValue,
    /// Whole seconds since the epoch of the mtime (HTTP dates have no more).
    pub(crate) mtime_secs: u64,
    /// The bytes, for small files.
    pub(crate) content: Option<Bytes>,
    /// The open file behind `content`, for files of at least [`KEEP_OPEN_MIN`]
    /// bytes while the root has descriptors to spare: plain HTTP/1 responses
    /// send it with `sendfile(2)` instead of copying `content`.
    pub(crate) file: Option<KeptFile>,
}

/// Cached files at least this large keep their descriptor open. Below it,
/// copying the bytes into the socket costs less than a second system call.
pub(crate) const KEEP_OPEN_MIN: u64 = 32 * 1024;

/// Most descriptors kept open per root, so that a large site cannot use up
/// the process's file-descriptor limit. Files beyond it are served from memory.
pub(crate) const MAX_OPEN_FILES: usize = 256;

/// An open file counted against its root's [`MAX_OPEN_FILES`] while its cache
/// entry lives. A response being sent holds its own handle, so an evicted
/// entry's descriptor stays open until those responses are done.
#[derive(Debug)]
pub(crate) struct KeptFile {
    pub(crate) file: Arc<File>,
    slots: Arc<AtomicUsize>,
}

impl KeptFile {
    /// Keeps `file` if the root has a descriptor to spare.
    fn keep(file: File, slots: &Arc<AtomicUsize>) -> Option<Self> {
        slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_OPEN_FILES).then_some(n + 1)
            })
            .ok()?;
        Some(KeptFile {
            file: Arc::new(file),
            slots: Arc::clone(slots),
        })
    }
}

impl Drop for KeptFile {
    fn drop(&mut self) {
        self.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything needed to answer for one file without touching the disk.
#[derive(Debug)]
pub(crate) struct FileEntry {
    pub(crate) rel: Box<str>,
    pub(crate) identity: Variant,
    /// Precompressed siblings found next to the file, best first.
    pub(crate) siblings: Vec<(Encoding, Variant)>,
    pub(crate) content_type: HeaderValue,
    pub(crate) cache_control: HeaderValue,
    /// Eligible for on-the-fly compression (type and size).
    pub(crate) compressible: bool,
    /// ETags of the on-the-fly variants: br, zstd, gzip.
    pub(crate) coded_etags: [HeaderValue; 3],
    /// The identity ETag's bytes, the compression cache key.
    pub(crate) etag_key: Bytes,
}

impl FileEntry {
    /// Can the representation depend on Accept-Encoding?
    pub(crate) fn varies(&self) -> bool {
        self.compressible || !self.siblings.is_empty()
    }

    pub(crate) fn sibling(&self, enc: Encoding) -> Option<&Variant> {
        self.siblings.iter().find(|(e, _)| *e == enc).map(|(_, v)| v)
    }

    pub(crate) fn coded_etag(&self, enc: Encoding) -> &HeaderValue {
        match enc {
            Encoding::Brotli => &self.coded_etags[0],
            Encoding::Zstd => &self.coded_etags[1],
            Encoding::Gzip | Encoding::Identity => &self.coded_etags[2],
        }
    }

    fn content_bytes(&self) -> u64 {
        let v = |v: &Variant| v.content.as_ref().map_or(0, |c| c.len() as u64);
        v(&self.identity) + self.siblings.iter().map(|(_, s)| v(s)).sum::<u64>()
    }
}

/// What a relative path names.
#[derive(Debug, Clone)]
pub(crate) enum Lookup {
    File(Arc<FileEntry>),
    Dir,
    NotFound,
    /// A symlink leading outside the root, a special file or no permission.
    Forbidden,
}

/// The settings a lookup needs, shared with blocking tasks.
#[derive(Debug)]
pub(crate) struct LookupSettings {
    pub(crate) check_containment: bool,
    pub(crate) precompressed: bool,
    pub(crate) memory_file_max: u64,
    pub(crate) memory_total: u64,
    pub(crate) max_cached_paths: usize,
    pub(crate) revalidate_after: Duration,
    pub(crate) immutable: ImmutableRule,
    pub(crate) cache_control: HeaderValue,
    pub(crate) compress: bool,
    pub(crate) compress_min_size: u64,
    pub(crate) compress_max_size: u64,
    pub(crate) compress_types: Vec<String>,
}

struct Cached {
    lookup: Lookup,
    checked: Instant,
}

/// A served directory with its caches.
pub(crate) struct Root {
    /// Canonical path of the root directory.
    pub(crate) path: PathBuf,
    /// Release roots never change, so their lookups never expire; they were
    /// validated on deploy to hold no symlinks, so containment is not re-checked.
    pub(crate) immutable: bool,
    entries: RwLock<HashMap<Box<str>, Cached>>,
    /// Paths found missing, kept apart so random 404s cannot evict hot files.
    missing: Mutex<HashMap<Box<str>, Instant>>,
    mem_bytes: AtomicU64,
    /// Descriptors held by [`KeptFile`]s of this root's entries.
    open_files: Arc<AtomicUsize>,
}

impl Root {
    pub(crate) fn new(path: PathBuf, immutable: bool) -> Self {
        Root {
            path,
            immutable,
            entries: RwLock::new(HashMap::new()),
            missing: Mutex::new(HashMap::new()),
            mem_bytes: AtomicU64::new(0),
            open_files: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn fresh(&self, checked: Instant, s: &LookupSettings) -> bool {
        self.immutable || checked.elapsed() < s.revalidate_after
    }

    /// A cached lookup that is still fresh; otherwise the stale file entry (to
    /// reuse its contents) as `Err`.
    pub(crate) fn cached(&self, rel: &str, s: &LookupSettings) -> Result<Lookup, Option<Arc<FileEntry>>> {
        {
            let map = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = map.get(rel) {
                if self.fresh(c.checked, s) {
                    return Ok(c.lookup.clone());
                }
                return Err(match &c.lookup {
                    Lookup::File(e) => Some(Arc::clone(e)),
                    _ => None,
                });
            }
        }
        let missing = self.missing.lock().unwrap_or_else(PoisonError::into_inner);
        match missing.get(rel) {
            Some(&at) if self.fresh(at, s) => Ok(Lookup::NotFound),
            _ => Err(None),
        }
    }

    pub(crate) fn store(&self, rel: &str, lookup: &Lookup, s: &LookupSettings) {
        let now = Instant::now();
        if let Lookup::NotFound = lookup {
            let mut missing = self.missing.lock().unwrap_or_else(PoisonError::into_inner);
            if missing.len() >= s.max_cached_paths {
                missing.clear();
            }
            missing.insert(rel.into(), now);
            drop(missing);
            self.remove(rel);
            return;
        }
        let add = match lookup {
            Lookup::File(e) => e.content_bytes(),
            _ => 0,
        };
        let mut map = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = map.remove(rel) {
            self.release(&old);
        }
        // Evict arbitrary entries (HashMap order is randomised per map) until
        // both bounds hold.
        while !map.is_empty()
            && (map.len() >= s.max_cached_paths || self.mem_bytes.load(Ordering::Relaxed) + add > s.memory_total)
        {
            let Some(k) = map.keys().next().cloned() else { break };
            if let Some(old) = map.remove(&k) {
                self.release(&old);
            }
        }
        self.mem_bytes.fetch_add(add, Ordering::Relaxed);
        map.insert(
            rel.into(),
            Cached {
                lookup: lookup.clone(),
                checked: now,
            },
        );
        drop(map);
        self.missing.lock().unwrap_or_else(PoisonError::into_inner).remove(rel);
    }

    /// Forget a path (its file changed under a response being built).
    pub(crate) fn remove(&self, rel: &str) {
        let mut map = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = map.remove(rel) {
            self.release(&old);
        }
    }

    fn release(&self, old: &Cached) {
        if let Lookup::File(e) = &old.lookup {
            self.mem_bytes.fetch_sub(e.content_bytes(), Ordering::Relaxed);
        }
    }
}

/// Join validated `/`-separated segments under the root.
pub(crate) fn join(root: &Path, rel: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    for seg in rel.split('/').filter(|s| !s.is_empty()) {
        p.push(seg);
    }
    p
}

/// Look a path up on disk. Blocking: run on the blocking pool.
pub(crate) fn lookup_blocking(root: &Root, rel: &str, s: &LookupSettings, previous: Option<&FileEntry>) -> Lookup {
    let full = join(&root.path, rel);
    let meta = match fs::metadata(&full) {
        Ok(m) => m,
        Err(e) => return io_lookup(&full, &e),
    };
    if s.check_containment && !root.immutable && !rel.is_empty() {
        match fs::canonicalize(&full) {
            Ok(canon) if canon.starts_with(&root.path) => {}
            Ok(canon) => {
                tracing::debug!(path = %full.display(), target = %canon.display(), "Symlink leads outside the static root.");
                return Lookup::Forbidden;
            }
            Err(e) => return io_lookup(&full, &e),
        }
    }
    if meta.is_dir() {
        return Lookup::Dir;
    }
    if !meta.is_file() {
        // FIFOs, sockets and devices: opening one could block or leak.
        return Lookup::Forbidden;
    }
    let slots = &root.open_files;
    let identity = match load_variant(full, s, slots, previous.map(|p| &p.identity), 0) {
        Ok(Some(v)) => v,
        Ok(None) => return Lookup::Forbidden,
        Err(e) => return io_lookup(&join(&root.path, rel), &e),
    };
    let mut siblings = Vec::new();
    if s.precompressed {
        for enc in [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip] {
            let Some(suffix) = enc.file_suffix() else { continue };
            let mut p = identity.path.clone().into_os_string();
            p.push(suffix);
            let p = PathBuf::from(p);
            // Siblings must be plain files (no symlinks) at least as new as the
            // file: a stale `.br` left by an older build must not be served.
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_file() && Stamp::of(&m).mtime >= identity.stamp.mtime => {}
                _ => continue,
            }
            let prev = previous.and_then(|e| e.sibling(enc));
            if let Ok(Some(mut v)) = load_variant(p, s, slots, prev, identity.stamp.hash(0)) {
                v.etag = etag_value(v.stamp.hash(identity.stamp.hash(0)), Some(enc));
                siblings.push((enc, v));
            }
        }
    }
    let (content_type, essence) = mime::content_type(rel);
    let compressible = s.compress
        && (s.compress_min_size..=s.compress_max_size).contains(&identity.stamp.len)
        && mime::type_matches(essence, &s.compress_types);
    let cache_control = if s.immutable.matches(rel) {
        HeaderValue::from_static(IMMUTABLE_CACHE_CONTROL)
    } else if essence == "text/html" {
        HeaderValue::from_static(DEFAULT_CACHE_CONTROL)
    } else {
        s.cache_control.clone()
    };
    let h = identity.stamp.hash(0);
    let coded_etags = [
        etag_value(h, Some(Encoding::Brotli)),
        etag_value(h, Some(Encoding::Zstd)),
        etag_value(h, Some(Encoding::Gzip)),
    ];
    let etag_key = Bytes::copy_from_slice(identity.etag.as_bytes());
    Lookup::File(Arc::new(FileEntry {
        rel: rel.into(),
        identity,
        siblings,
        content_type,
        cache_control,
        compressible,
        coded_etags,
        etag_key,
    }))
}

fn io_lookup(path: &Path, e: &io::Error) -> Lookup {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Lookup::NotFound,
        io::ErrorKind::PermissionDenied => Lookup::Forbidden,
        _ => {
            tracing::debug!(path = %path.display(), error = %e, "Static lookup failed.");
            Lookup::NotFound
        }
    }
}

/// Open, fstat and (when small) read a file. `Ok(None)` if it is not a
/// regular file. Contents are reused from `previous` when the stamp matches.
fn load_variant(
    path: PathBuf,
    s: &LookupSettings,
    slots: &Arc<AtomicUsize>,
    previous: Option<&Variant>,
    seed: u64,
) -> io::Result<Option<Variant>> {
    let file = File::open(&path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let stamp = Stamp::of(&meta);
    let content = match previous {
        Some(p) if p.stamp == stamp && p.content.is_some() => p.content.clone(),
        _ if stamp.len <= s.memory_file_max => read_exact_len(&file, stamp.len)?,
        _ => None,
    };
    // The descriptor just opened is the file `content` came from (or one
    // with the same stamp), so its bytes are the cached ones.
    let file = match &content {
        Some(_) if stamp.len >= KEEP_OPEN_MIN => KeptFile::keep(file, slots),
        _ => None,
    };
    let secs = stamp.since_epoch().as_secs();
    let last_modified = HeaderValue::from_str(&httpdate::fmt_http_date(stamp.mtime))
        .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
    Ok(Some(Variant {
        path,
        stamp,
        etag: etag_value(stamp.hash(seed), None),
        last_modified,
        mtime_secs: secs,
        content,
        file,
    }))
}

/// Read exactly `len` bytes; `None` if the file is being changed (its length
/// differs), in which case the entry is used without cached contents.
pub(crate) fn read_exact_len(file: &File, len: u64) -> io::Result<Option<Bytes>> {
    let cap = usize::try_from(len).unwrap_or(usize::MAX);
    let mut buf = Vec::with_capacity(cap);
    file.take(len.saturating_add(1)).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 == len).then(|| Bytes::from(buf)))
}

fn etag_value(hash: u64, enc: Option<Encoding>) -> HeaderValue {
    let s = match enc {
        Some(e) => format!("\"{hash:016x}-{}\"", e.token()),
        None => format!("\"{hash:016x}\""),
    };
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(memory_total: u64, max_paths: usize) -> LookupSettings {
        LookupSettings {
            check_containment: true,
            precompressed: false,
            memory_file_max: 1 << 20,
            memory_total,
            max_cached_paths: max_paths,
            revalidate_after: Duration::from_secs(60),
            immutable: ImmutableRule::Never,
            cache_control: HeaderValue::from_static(DEFAULT_CACHE_CONTROL),
            compress: false,
            compress_min_size: 0,
            compress_max_size: 0,
            compress_types: Vec::new(),
        }
    }

    #[test]
    fn memory_and_path_bounds_hold() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..40 {
            fs::write(dir.path().join(format!("f{i}")), vec![b'x'; 10_000]).unwrap();
        }
        let root = Root::new(fs::canonicalize(dir.path()).unwrap(), false);
        let s = settings(100_000, 1000);
        for i in 0..40 {
            let rel = format!("f{i}");
            let found = lookup_blocking(&root, &rel, &s, None);
            assert!(matches!(&found, Lookup::File(e) if e.identity.content.is_some()));
            root.store(&rel, &found, &s);
            assert!(root.mem_bytes.load(Ordering::Relaxed) <= 100_000);
        }
        // Paths bound, including negative entries.
        let s = settings(1 << 30, 16);
        for i in 0..100 {
            let rel = format!("missing{i}");
            root.store(&rel, &Lookup::NotFound, &s);
            root.store(&format!("f{}", i % 40), &Lookup::Dir, &s);
        }
        assert!(root.entries.read().unwrap().len() <= 16);
        assert!(root.missing.lock().unwrap().len() <= 16);
        assert!(matches!(root.cached("missing99", &s), Ok(Lookup::NotFound)));
    }

    #[test]
    fn larger_cached_files_keep_their_descriptor_within_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("small"), vec![b's'; 1000]).unwrap();
        let big = KEEP_OPEN_MIN as usize;
        for i in 0..MAX_OPEN_FILES + 10 {
            fs::write(dir.path().join(format!("f{i}")), vec![b'x'; big]).unwrap();
        }
        let root = Root::new(fs::canonicalize(dir.path()).unwrap(), false);
        let s = settings(1 << 30, 100_000);
        let file_of = |l: &Lookup| match l {
            Lookup::File(e) => (e.identity.content.is_some(), e.identity.file.is_some()),
            other => panic!("{other:?}"),
        };
        assert_eq!(file_of(&lookup_blocking(&root, "small", &s, None)), (true, false));

        let mut kept = Vec::new();
        for i in 0..MAX_OPEN_FILES + 10 {
            let found = lookup_blocking(&root, &format!("f{i}"), &s, None);
            let (content, open) = file_of(&found);
            assert!(content, "f{i} is cached in memory");
            assert_eq!(open, i < MAX_OPEN_FILES, "f{i}: descriptor kept only within the bound");
            kept.push(found);
        }
        assert_eq!(root.open_files.load(Ordering::Relaxed), MAX_OPEN_FILES);
        // Dropping entries gives their descriptors back.
        kept.truncate(10);
        assert_eq!(root.open_files.load(Ordering::Relaxed), 10);
        let found = lookup_blocking(&root, &format!("f{}", MAX_OPEN_FILES + 5), &s, None);
        assert_eq!(file_of(&found), (true, true));
    }
}
