//! Immutable frontend releases with an atomic "current" pointer per slot.
//!
//! # Layout
//!
//! ```text
//! <data_dir>/releases/<slot>/
//!     current                  pointer file: the active release id + "\n"
//!     20261121T120501Z-3f9a/   one immutable release (served as the root)
//!     20261121T121733Z-08c1/
//!     .staging-<id>/           a deploy in progress (removed on failure)
//!     .trash-<id>-<rand>/      a pruned release being deleted
//! ```
//!
//! # Invariants
//!
//! * A release directory is complete before it gets its final name: files are
//!   written (and fsync'ed) into `.staging-<id>/`, validated, then renamed into
//!   place with one `rename(2)`. A failed or refused deploy removes its staging
//!   directory and leaves the slot exactly as it was.
//! * Switching writes the new id to a temporary file, fsyncs it and renames it
//!   over `current` (atomic on POSIX), then fsyncs the slot directory: a reader
//!   sees the old id or the new one, never a mix, and a deploy is reported done
//!   only once the switch is on disk.
//! * A request resolves the active release once and reads every byte from that
//!   release's directory; files are opened before the response starts, and an
//!   open file stays readable after a switch or even after pruning (unlinked
//!   files live until closed), so in-flight downloads complete.
//! * Pruning keeps the newest `keep` releases and never removes the active one.
//!
//! # Seeing switches made by another process
//!
//! `gatehouse deploy`, `gatehouse rollback` run as separate processes that open
//! the same data directory. A [`ReleaseSlot`] held by the server re-reads the
//! pointer file at most every `poll_interval` (default
//! [`DEFAULT_POLL_INTERVAL`]), on the request path but off the I/O threads, so
//! an external switch is served within that interval. Switches made through the
//! server's own [`ReleaseStore`] (the admin upload endpoint) apply at once.

mod archive;
mod id;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use crate::error::{FilesError, Rejection};

/// How often a server re-reads a slot's pointer file: 100 ms makes a
/// `gatehouse rollback` feel instant while costing one small read per
/// interval (only when requests arrive).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Releases kept per slot by default: enough to roll back several deploys,
/// small enough that a frontend's builds take little disk.
pub const DEFAULT_KEEP: usize = 5;

/// Largest unpacked release by default. Vite builds are typically 1–50 MiB;
/// 512 MiB leaves room for media while stopping decompression bombs.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 512 * 1024 * 1024;

/// Most files and directories in one release by default.
pub const DEFAULT_MAX_FILES: u64 = 20_000;

/// Staging and trash directories older than this are leftovers of a crashed
/// deploy and are removed by the next prune; younger ones may belong to a
/// deploy running in another process.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// The pointer file's name inside a slot directory.
const POINTER: &str = "current";

/// Options of one deploy.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Refuse a release without `index.html` at its top (set for SPA slots).
    pub require_index: bool,
    /// Largest unpacked size, in bytes.
    pub max_total_bytes: u64,
    /// Largest compressed upload, in bytes (gzip can inflate endlessly from
    /// little output, so the input is bounded too).
    pub max_archive_bytes: u64,
    /// Most files and directories.
    pub max_files: u64,
    /// Releases to keep after the deploy (at least 1; the active one is never removed).
    pub keep: usize,
    /// Switch the slot to the new release (default). When false the release is
    /// only stored, to be activated later with [`ReleaseStore::rollback`].
    pub activate: bool,
    /// fsync files and directories before reporting success (default true).
    pub fsync: bool,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            require_index: false,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_archive_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_files: DEFAULT_MAX_FILES,
            keep: DEFAULT_KEEP,
            activate: true,
            fsync: true,
        }
    }
}

/// What `gatehouse releases NAME` shows for one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseInfo {
    /// The slot.
    pub slot: String,
    /// The release id (`20261121T120501Z-3f9a`).
    pub id: String,
    /// When it was deployed (from the id, UTC, second precision).
    pub created: SystemTime,
    /// Total size of its files, in bytes.
    pub size_bytes: u64,
    /// Number of regular files.
    pub files: u64,
    /// Whether it is the slot's active release.
    pub active: bool,
}

/// The release a slot points at: its id and canonical directory.
#[derive(Debug, PartialEq, Eq)]
pub struct ActiveRelease {
    id: String,
    root: PathBuf,
}

impl ActiveRelease {
    /// The release id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The release directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Releases of every slot under one data directory. Cheap to clone.
///
/// The deploy, list, rollback and prune methods do blocking file I/O: call
/// them from a CLI directly or wrap them in `spawn_blocking` in the server
/// ([`deploy_tar_gz_body`](Self::deploy_tar_gz_body) does that for uploads).
#[derive(Clone, Debug)]
pub struct ReleaseStore {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    dir: PathBuf,
    poll: Duration,
    slots: Mutex<HashMap<String, ReleaseSlot>>,
}

/// Counters shared by both deploy kinds.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) files: u64,
    entries: u64,
    bytes: u64,
}

impl Stats {
    fn count_entry(&mut self, opts: &DeployOptions) -> Result<(), FilesError> {
        self.entries += 1;
        if self.entries > opts.max_files {
            return Err(Rejection::TooManyFiles { limit: opts.max_files }.into());
        }
        Ok(())
    }

    fn reserve(&mut self, size: u64, opts: &DeployOptions) -> Result<(), FilesError> {
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > opts.max_total_bytes {
            return Err(Rejection::TooLarge {
                limit: opts.max_total_bytes,
            }
            .into());
        }
        Ok(())
    }
}

/// A staging directory, removed on drop unless installed.
struct Staging {
    path: PathBuf,
    installed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.installed {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "Could not remove a failed release's staging directory.");
            }
        }
    }
}

impl ReleaseStore {
    /// Open (creating if needed) `<data_dir>/releases`.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, FilesError> {
        Self::open_with_poll(data_dir, DEFAULT_POLL_INTERVAL)
    }

    /// Like [`open`](Self::open), with the interval at which slots re-read
    /// their pointer file.
    pub fn open_with_poll(data_dir: impl AsRef<Path>, poll: Duration) -> Result<Self, FilesError> {
        let dir = data_dir.as_ref().join("releases");
        fs::create_dir_all(&dir).map_err(|e| FilesError::io("create", &dir, e))?;
        Ok(ReleaseStore {
            inner: Arc::new(StoreInner {
                dir,
                poll,
                slots: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// `<data_dir>/releases`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn slot_dir(&self, slot: &str) -> Result<PathBuf, FilesError> {
        validate_slot(slot)?;
        Ok(self.inner.dir.join(slot))
    }

    /// The handle a [`StaticService`](crate::StaticService) serves from. Reads
    /// the pointer once now (blocking); the slot may be empty.
    pub fn slot(&self, name: &str) -> Result<ReleaseSlot, FilesError> {
        let dir = self.slot_dir(name)?;
        let mut slots = self.inner.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = slots.get(name) {
            return Ok(s.clone());
        }
        let active = read_active(&dir).map_err(|e| FilesError::io("read", dir.join(POINTER), e))?;
        let state = SlotState {
            name: name.to_owned(),
            dir,
            current: ArcSwapOption::new(active.map(Arc::new)),
            epoch: Instant::now(),
            checked_ms: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            poll: self.inner.poll,
        };
        let slot = ReleaseSlot { inner: Arc::new(state) };
        slots.insert(name.to_owned(), slot.clone());
        Ok(slot)
    }

    /// Names of the slots that have a directory.
    pub fn slots(&self) -> Result<Vec<String>, FilesError> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.inner.dir).map_err(|e| FilesError::io("read", &self.inner.dir, e))?;
        for e in rd.flatten() {
            if let Ok(name) = e.file_name().into_string() {
                if validate_slot(&name).is_ok() && e.path().is_dir() {
                    out.push(name);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Copy `src` into a new release of `slot`, validate it and (by default)
    /// switch to it. Symlinks and special files are refused.
    pub fn deploy_dir(&self, slot: &str, src: &Path, opts: &DeployOptions) -> Result<ReleaseInfo, FilesError> {
        let meta = fs::metadata(src).map_err(|e| FilesError::io("read", src, e))?;
        if !meta.is_dir() {
            return Err(FilesError::io(
                "read",
                src,
                io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
            ));
        }
        let (staging, id) = self.begin(slot)?;
        let mut stats = Stats::default();
        copy_tree(src, &staging.path, opts, &mut stats, 0)?;
        self.install(slot, staging, id, stats, opts)
    }

    /// Unpack a `.tar.gz` (read as it arrives) into a new release of `slot`,
    /// validate it and (by default) switch to it. Absolute paths, `..`, links,
    /// devices, duplicates, malformed or truncated archives and archives over
    /// the limits are refused, and nothing is left behind.
    pub fn deploy_tar_gz<R: Read>(
        &self,
        slot: &str,
        reader: R,
        opts: &DeployOptions,
    ) -> Result<ReleaseInfo, FilesError> {
        let (staging, id) = self.begin(slot)?;
        let mut stats = Stats::default();
        archive::extract(reader, &staging.path, opts, &mut stats)?;
        self.install(slot, staging, id, stats, opts)
    }

    /// [`deploy_tar_gz`](Self::deploy_tar_gz) for an upload endpoint: reads the
    /// request body as it arrives and extracts it on the blocking pool.
    pub async fn deploy_tar_gz_body<B>(
        &self,
        slot: &str,
        body: B,
        opts: DeployOptions,
    ) -> Result<ReleaseInfo, FilesError>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::fmt::Display,
    {
        validate_slot(slot)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(8);
        let store = self.clone();
        let slot_name = slot.to_owned();
        let task = tokio::task::spawn_blocking(move || {
            store.deploy_tar_gz(&slot_name, ChannelReader { rx, cur: Bytes::new() }, &opts)
        });
        let mut body = std::pin::pin!(body);
        loop {
            match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                None => break,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if tx.send(Ok(data)).await.is_err() {
                            break; // extraction already stopped (refused)
                        }
                    }
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                    break;
                }
            }
        }
        drop(tx);
        task.await
            .map_err(|e| FilesError::io("extract", self.inner.dir.join(slot), io::Error::other(e)))?
    }

    /// Releases of `slot`, newest first.
    pub fn list(&self, slot: &str) -> Result<Vec<ReleaseInfo>, FilesError> {
        let dir = self.slot_dir(slot)?;
        let active = read_pointer(&dir).map_err(|e| FilesError::io("read", dir.join(POINTER), e))?;
        let mut out = Vec::new();
        for id in release_ids(&dir)?.into_iter().rev() {
            let (size_bytes, files) =
                tree_size(&dir.join(&id)).map_err(|e| FilesError::io("read", dir.join(&id), e))?;
            out.push(ReleaseInfo {
                slot: slot.to_owned(),
                created: id::parse_time(&id).unwrap_or(SystemTime::UNIX_EPOCH),
                active: active.as_deref() == Some(id.as_str()),
                id,
                size_bytes,
                files,
            });
        }
        Ok(out)
    }

    /// The active release id of `slot`, read from disk.
    pub fn active(&self, slot: &str) -> Result<Option<String>, FilesError> {
        let dir = self.slot_dir(slot)?;
        read_pointer(&dir).map_err(|e| FilesError::io("read", dir.join(POINTER), e))
    }

    /// Switch `slot` to release `id` (a full id or a unique prefix), or with
    /// `None` to the newest release older than the active one.
    pub fn rollback(&self, slot: &str, id: Option<&str>) -> Result<ReleaseInfo, FilesError> {
        let dir = self.slot_dir(slot)?;
        let ids = release_ids(&dir)?;
        let target = match id {
            Some(want) => {
                let matches: Vec<&String> = ids.iter().filter(|i| i.starts_with(want)).collect();
                match matches.as_slice() {
                    [one] => (*one).clone(),
                    [] => {
                        return Err(FilesError::UnknownRelease {
                            slot: slot.into(),
                            id: want.into(),
                        });
                    }
                    _ if ids.iter().any(|i| i == want) => want.to_owned(),
                    _ => {
                        return Err(FilesError::AmbiguousRelease {
                            slot: slot.into(),
                            id: want.into(),
                        });
                    }
                }
            }
            None => {
                let active = read_pointer(&dir)
                    .map_err(|e| FilesError::io("read", dir.join(POINTER), e))?
                    .ok_or_else(|| FilesError::NoActiveRelease { slot: slot.into() })?;
                ids.iter()
                    .rev()
                    .find(|i| i.as_str() < active.as_str())
                    .cloned()
                    .ok_or_else(|| FilesError::NoPreviousRelease { slot: slot.into() })?
            }
        };
        self.switch(slot, &dir, &target, true)?;
        tracing::info!(slot, release = %target, "Release activated.");
        self.info(slot, &dir, &target, true)
    }

    /// Remove all but the newest `keep` releases (at least 1), never the
    /// active one. Also clears leftovers of crashed deploys. Returns the
    /// removed ids.
    pub fn prune(&self, slot: &str, keep: usize) -> Result<Vec<String>, FilesError> {
        let dir = self.slot_dir(slot)?;
        let active = read_pointer(&dir).map_err(|e| FilesError::io("read", dir.join(POINTER), e))?;
        let ids = release_ids(&dir)?;
        let mut removed = Vec::new();
        for id in ids.iter().rev().skip(keep.max(1)) {
            if active.as_deref() == Some(id.as_str()) {
                continue;
            }
            let trash = dir.join(format!(".trash-{id}-{:04x}", fastrand::u16(..)));
            // Rename first: the release disappears atomically, then is deleted.
            fs::rename(dir.join(id), &trash).map_err(|e| FilesError::io("rename", dir.join(id), e))?;
            if let Err(e) = fs::remove_dir_all(&trash) {
                tracing::warn!(path = %trash.display(), error = %e, "Could not delete a pruned release.");
            }
            removed.push(id.clone());
        }
        remove_stale(&dir);
        Ok(removed)
    }

    /// Create the slot directory and a fresh staging directory.
    fn begin(&self, slot: &str) -> Result<(Staging, String), FilesError> {
        let dir = self.slot_dir(slot)?;
        fs::create_dir_all(&dir).map_err(|e| FilesError::io("create", &dir, e))?;
        let ids = release_ids(&dir)?;
        let id = id::new_id(SystemTime::now(), ids.last().map(String::as_str));
        let path = dir.join(format!(".staging-{id}"));
        fs::create_dir(&path).map_err(|e| FilesError::io("create", &path, e))?;
        Ok((Staging { path, installed: false }, id))
    }

    fn install(
        &self,
        slot: &str,
        mut staging: Staging,
        id: String,
        stats: Stats,
        opts: &DeployOptions,
    ) -> Result<ReleaseInfo, FilesError> {
        if stats.files == 0 {
            return Err(Rejection::Empty.into());
        }
        if opts.require_index && !staging.path.join("index.html").is_file() {
            return Err(Rejection::MissingIndex.into());
        }
        if opts.fsync {
            sync_dirs(&staging.path).map_err(|e| FilesError::io("sync", &staging.path, e))?;
        }
        let dir = self.slot_dir(slot)?;
        let target = dir.join(&id);
        fs::rename(&staging.path, &target).map_err(|e| FilesError::io("rename", &staging.path, e))?;
        staging.installed = true;
        if opts.fsync {
            sync_dir(&dir).map_err(|e| FilesError::io("sync", &dir, e))?;
        }
        tracing::info!(slot, release = %id, files = stats.files, bytes = stats.bytes, "Release stored.");
        if opts.activate {
            self.switch(slot, &dir, &id, opts.fsync)?;
            tracing::info!(slot, release = %id, "Release activated.");
        }
        match self.prune(slot, opts.keep) {
            Ok(removed) if !removed.is_empty() => tracing::info!(slot, ?removed, "Old releases pruned."),
            Ok(_) => {}
            Err(e) => tracing::warn!(slot, error = %e, "Pruning old releases failed."),
        }
        let active = read_pointer(&dir).ok().flatten().as_deref() == Some(id.as_str());
        Ok(ReleaseInfo {
            slot: slot.to_owned(),
            created: id::parse_time(&id).unwrap_or(SystemTime::UNIX_EPOCH),
            id,
            size_bytes: stats.bytes,
            files: stats.files,
            active,
        })
    }

    /// Point the slot at `id` and tell this process's slot handle at once.
    fn switch(&self, slot: &str, dir: &Path, id: &str, fsync: bool) -> Result<(), FilesError> {
        write_pointer(dir, id, fsync).map_err(|e| FilesError::io("write", dir.join(POINTER), e))?;
        let handle = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(slot)
            .cloned();
        if let Some(h) = handle {
            match read_active(dir) {
                Ok(active) => h.inner.set(active),
                Err(e) => tracing::warn!(slot, error = %e, "Could not reload the active release."),
            }
        }
        Ok(())
    }

    fn info(&self, slot: &str, dir: &Path, id: &str, active: bool) -> Result<ReleaseInfo, FilesError> {
        let (size_bytes, files) = tree_size(&dir.join(id)).map_err(|e| FilesError::io("read", dir.join(id), e))?;
        Ok(ReleaseInfo {
            slot: slot.to_owned(),
            id: id.to_owned(),
            created: id::parse_time(id).unwrap_or(SystemTime::UNIX_EPOCH),
            size_bytes,
            files,
            active,
        })
    }
}

/// A live view of one slot's active release, shared by every service bound
/// to the slot. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReleaseSlot {
    inner: Arc<SlotState>,
}

#[derive(Debug)]
struct SlotState {
    name: String,
    dir: PathBuf,
    current: ArcSwapOption<ActiveRelease>,
    epoch: Instant,
    /// Milliseconds after `epoch` of the last pointer read.
    checked_ms: AtomicU64,
    refreshing: AtomicBool,
    poll: Duration,
}

impl SlotState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Install a newly read pointer; keeps the same `Arc` when the id did not
    /// change so services keep their caches.
    fn set(&self, active: Option<ActiveRelease>) {
        let current = self.current.load();
        let same = match (current.as_deref(), active.as_ref()) {
            (Some(a), Some(b)) => a == b,
            (None, None) => true,
            _ => false,
        };
        if !same {
            tracing::info!(slot = %self.name, release = active.as_ref().map(|a| a.id.as_str()), "Serving release.");
            self.current.store(active.map(Arc::new));
        }
        self.checked_ms.store(self.now_ms(), Ordering::Release);
    }
}

/// Resets the refreshing flag even if the request is cancelled mid-refresh.
struct Refreshing<'a>(&'a AtomicBool);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl ReleaseSlot {
    /// The slot's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The active release, re-reading the pointer file if the last read is
    /// older than the poll interval (one request at a time does it, on the
    /// blocking pool; the others use the value at hand).
    pub async fn current(&self) -> Option<Arc<ActiveRelease>> {
        let st = &self.inner;
        let poll_ms = u64::try_from(st.poll.as_millis()).unwrap_or(u64::MAX);
        if st.now_ms().saturating_sub(st.checked_ms.load(Ordering::Acquire)) < poll_ms
            || st.refreshing.swap(true, Ordering::AcqRel)
        {
            return st.current.load_full();
        }
        let _guard = Refreshing(&st.refreshing);
        let state = Arc::clone(st);
        match tokio::task::spawn_blocking(move || read_active(&state.dir)).await {
            Ok(Ok(active)) => st.set(active),
            Ok(Err(e)) => {
                tracing::warn!(slot = %st.name, error = %e, "Could not read the release pointer; serving the previous release.");
                st.checked_ms.store(st.now_ms(), Ordering::Release);
            }
            Err(e) => tracing::warn!(slot = %st.name, error = %e, "Release pointer task failed."),
        }
        st.current.load_full()
    }

    /// The active release as last read, without checking the pointer.
    pub fn current_cached(&self) -> Option<Arc<ActiveRelease>> {
        self.inner.current.load_full()
    }
}

/// Slot names: 1–64 of `[A-Za-z0-9_-]`.
fn validate_slot(name: &str) -> Result<(), FilesError> {
    if (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(FilesError::InvalidSlot(name.to_owned()))
    }
}

/// Release ids present in a slot directory, oldest first.
fn release_ids(dir: &Path) -> Result<Vec<String>, FilesError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FilesError::io("read", dir, e)),
    };
    let mut ids: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| id::is_valid(n))
        .filter(|n| dir.join(n).is_dir())
        .collect();
    ids.sort();
    Ok(ids)
}

fn read_pointer(dir: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(dir.join(POINTER)) {
        Ok(s) => {
            let id = s.trim();
            if id::is_valid(id) {
                Ok(Some(id.to_owned()))
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad release id {id:?}"),
                ))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_active(dir: &Path) -> io::Result<Option<ActiveRelease>> {
    let Some(id) = read_pointer(dir)? else {
        return Ok(None);
    };
    let root = fs::canonicalize(dir.join(&id))?;
    Ok(Some(ActiveRelease { id, root }))
}

fn write_pointer(dir: &Path, id: &str, fsync: bool) -> io::Result<()> {
    let tmp = dir.join(format!(".current.tmp-{:08x}", fastrand::u32(..)));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(id.as_bytes())?;
        f.write_all(b"\n")?;
        if fsync {
            f.sync_all()?;
        }
        fs::rename(&tmp, dir.join(POINTER))?;
        if fsync {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

fn sync_dirs(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_dirs(&e.path())?;
        }
    }
    sync_dir(dir)
}

/// (total bytes, regular files) under a directory; symlinks are not followed.
fn tree_size(dir: &Path) -> io::Result<(u64, u64)> {
    let (mut bytes, mut files) = (0, 0);
    for e in fs::read_dir(dir)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            let (b, f) = tree_size(&e.path())?;
            bytes += b;
            files += f;
        } else if ft.is_file() {
            bytes += e.metadata()?.len();
            files += 1;
        }
    }
    Ok((bytes, files))
}

fn copy_tree(src: &Path, dst: &Path, opts: &DeployOptions, stats: &mut Stats, depth: usize) -> Result<(), FilesError> {
    if depth >= archive::MAX_DEPTH {
        return Err(Rejection::BadPath {
            path: src.display().to_string(),
            reason: "nested too deeply",
        }
        .into());
    }
    let rd = fs::read_dir(src).map_err(|e| FilesError::io("read", src, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| FilesError::io("read", src, e))?;
        let from = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(Rejection::BadPath {
                path: from.display().to_string(),
                reason: "name is not UTF-8",
            }
            .into());
        };
        let ft = entry.file_type().map_err(|e| FilesError::io("read", &from, e))?;
        let to = dst.join(&name);
        if ft.is_symlink() {
            return Err(Rejection::SpecialFile {
                path: from.display().to_string(),
                kind: "symlink",
            }
            .into());
        }
        stats.count_entry(opts)?;
        if ft.is_dir() {
            fs::create_dir(&to).map_err(|e| FilesError::io("create", &to, e))?;
            copy_tree(&from, &to, opts, stats, depth + 1)?;
        } else if ft.is_file() {
            copy_file(&from, &to, opts, stats)?;
        } else {
            return Err(Rejection::SpecialFile {
                path: from.display().to_string(),
                kind: "device, FIFO or socket",
            }
            .into());
        }
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path, opts: &DeployOptions, stats: &mut Stats) -> Result<(), FilesError> {
    let src = File::open(from).map_err(|e| FilesError::io("open", from, e))?;
    let meta = src.metadata().map_err(|e| FilesError::io("read", from, e))?;
    stats.reserve(meta.len(), opts)?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| FilesError::io("create", to, e))?;
    // Copy at most the announced length: a file growing meanwhile is cut, not
    // allowed to blow the size limit.
    let copied = io::copy(&mut src.take(meta.len()), &mut dst).map_err(|e| FilesError::io("copy", from, e))?;
    if copied != meta.len() {
        return Err(FilesError::io(
            "copy",
            from,
            io::Error::other("file shrank while copying"),
        ));
    }
    if let Ok(mtime) = meta.modified() {
        let _ = dst.set_modified(mtime);
    }
    if opts.fsync {
        dst.sync_all().map_err(|e| FilesError::io("sync", to, e))?;
    }
    stats.files += 1;
    Ok(())
}

/// Remove staging/trash/temporary leftovers older than [`STALE_AFTER`].
fn remove_stale(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(".staging-") || name.starts_with(".trash-") || name.starts_with(".current.tmp-")) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if old {
            let p = e.path();
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            if let Err(err) = r {
                tracing::warn!(path = %p.display(), error = %err, "Could not remove a stale deploy leftover.");
            }
        }
    }
}

/// Blocking `Read` over chunks sent from an async task.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => self.cur = b,
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        for ok in ["frontend", "admin_qa", "a-b", "X1"] {
            assert!(validate_slot(ok).is_ok());
        }
        for bad in ["", ".", "..", "a/b", "a b", ".hidden", &"x".repeat(65)] {
            assert!(validate_slot(bad).is_err(), "{bad}");
        }
    }
}
