//! Typed options of a static route, with their defaults.

use std::path::PathBuf;
use std::time::Duration;

use crate::mime::DEFAULT_COMPRESSIBLE_TYPES;
use crate::path::DotfilesPolicy;
use crate::pattern::ImmutableRule;
use crate::range::DEFAULT_MAX_RANGES;
use crate::releases::ReleaseSlot;

/// The index file looked up in directories: what every bundler emits.
pub const DEFAULT_INDEX: &str = "index.html";

/// Smallest file compressed on the fly: below ~1 KiB the saving is a few
/// hundred bytes, less than a TCP segment, and not worth a CPU pass.
pub const DEFAULT_COMPRESS_MIN_SIZE: u64 = 1024;

/// Largest file compressed on the fly: 4 MiB covers big JS bundles; beyond
/// that, precompress at build time (compressing costs ~10–50 ms per MiB).
pub const DEFAULT_COMPRESS_MAX_SIZE: u64 = 4 * 1024 * 1024;

/// Memory kept for on-the-fly compressed results (FIFO evicted). A typical
/// SPA's text assets compress to well under this in all three codings.
pub const DEFAULT_COMPRESS_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Compressions running at once; more requests meanwhile get the identity (or
/// a precompressed) representation instead of waiting, so a flood of requests
/// for uncached variants cannot take more than this many blocking threads.
pub const DEFAULT_COMPRESS_CONCURRENCY: usize = 2;

/// Files up to this size are kept in memory once read: 256 KiB covers the
/// HTML, CSS, small JS chunks and icons that make most requests.
pub const DEFAULT_MEMORY_FILE_MAX: u64 = 256 * 1024;

/// Total bytes of file contents kept in memory per root.
pub const DEFAULT_MEMORY_TOTAL: u64 = 64 * 1024 * 1024;

/// Most paths (found or not) whose lookup is remembered per root; bounds the
/// memory an attacker can make us spend by asking for random paths.
pub const DEFAULT_MAX_CACHED_PATHS: usize = 10_000;

/// How long a cached lookup of a *directory* root is trusted before the file
/// is stat'ed again (like nginx's `open_file_cache_valid`, default 60 s; we
/// pick 1 s so edits during development show up at once). Release roots are
/// immutable and never revalidated.
pub const DEFAULT_REVALIDATE_AFTER: Duration = Duration::from_secs(1);

/// `Cache-Control` of fingerprinted files: a year, and `immutable` so browsers
/// do not even revalidate on reload.
pub const IMMUTABLE_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// `Cache-Control` of HTML, the SPA fallback, the 404 page and — by default —
/// every other file that is not fingerprinted: browsers may store them but
/// must revalidate (a cheap 304), so a new release is seen on the next load.
pub const DEFAULT_CACHE_CONTROL: &str = "no-cache";

/// Where the files come from.
#[derive(Debug, Clone)]
pub enum StaticSource {
    /// A directory on disk, served as it is (`static = { dir = "./dist" }`).
    Dir(PathBuf),
    /// The active release of a slot (`static = { release = "frontend" }`),
    /// from [`ReleaseStore::slot`](crate::ReleaseStore::slot).
    Release(ReleaseSlot),
}

/// Options of one static route. Build with [`StaticOptions::dir`] or
/// [`StaticOptions::release`] and adjust fields; every field has a default.
#[derive(Debug, Clone)]
pub struct StaticOptions {
    /// Where the files come from.
    pub source: StaticSource,
    /// Single-page app: a request for an extension-less path that does not
    /// exist is answered with the root `index.html` (200, `no-cache`).
    pub spa: bool,
    /// Index files tried, in order, for a directory request (`/docs/`).
    pub index: Vec<String>,
    /// A file (relative to the root) sent with status 404 for missing paths.
    pub not_found_page: Option<PathBuf>,
    /// Generate an HTML listing for directories without an index file.
    pub listing: bool,
    /// Dotfile policy (default: deny with 403).
    pub dotfiles: DotfilesPolicy,
    /// Allow symlinks that resolve outside the root (default false: 403).
    pub follow_symlinks_outside_root: bool,
    /// Which files are fingerprinted and cached for a year.
    pub immutable: ImmutableRule,
    /// `Cache-Control` for files that are neither fingerprinted nor HTML.
    pub cache_control: String,
    /// Serve `.br`, `.zst` and `.gz` siblings when the client accepts them.
    pub precompressed: bool,
    /// Compress eligible files on the fly (br, zstd, gzip).
    pub compress: bool,
    /// Smallest file compressed on the fly, in bytes.
    pub compress_min_size: u64,
    /// Largest file compressed on the fly, in bytes.
    pub compress_max_size: u64,
    /// Media types compressed on the fly (`text/` matches a prefix).
    pub compress_types: Vec<String>,
    /// Memory for cached compressed results, in bytes.
    pub compress_cache_bytes: u64,
    /// Compressions allowed to run at once.
    pub compress_concurrency: usize,
    /// Files up to this size are cached in memory.
    pub memory_file_max: u64,
    /// Total memory for cached file contents per root.
    pub memory_total: u64,
    /// Most remembered path lookups per root.
    pub max_cached_paths: usize,
    /// How long a lookup under a directory root is trusted.
    pub revalidate_after: Duration,
    /// Most ranges honoured in one request.
    pub max_ranges: usize,
    /// Let [`StaticService::sendfile`](crate::StaticService::sendfile) report
    /// that file contents may be sent with `sendfile(2)` (default true).
    pub sendfile: bool,
}

impl StaticOptions {
    /// Defaults, serving a directory.
    pub fn dir(root: impl Into<PathBuf>) -> Self {
        Self::with_source(StaticSource::Dir(root.into()))
    }

    /// Defaults, serving the active release of a slot.
    pub fn release(slot: ReleaseSlot) -> Self {
        Self::with_source(StaticSource::Release(slot))
    }

    /// Defaults for a given source.
    pub fn with_source(source: StaticSource) -> Self {
        StaticOptions {
            source,
            spa: false,
            index: vec![DEFAULT_INDEX.to_owned()],
            not_found_page: None,
            listing: false,
            dotfiles: DotfilesPolicy::Deny,
            follow_symlinks_outside_root: false,
            immutable: ImmutableRule::Fingerprinted,
            cache_control: DEFAULT_CACHE_CONTROL.to_owned(),
            precompressed: true,
            compress: true,
            compress_min_size: DEFAULT_COMPRESS_MIN_SIZE,
            compress_max_size: DEFAULT_COMPRESS_MAX_SIZE,
            compress_types: DEFAULT_COMPRESSIBLE_TYPES.iter().map(|s| (*s).to_owned()).collect(),
            compress_cache_bytes: DEFAULT_COMPRESS_CACHE_BYTES,
            compress_concurrency: DEFAULT_COMPRESS_CONCURRENCY,
            memory_file_max: DEFAULT_MEMORY_FILE_MAX,
            memory_total: DEFAULT_MEMORY_TOTAL,
            max_cached_paths: DEFAULT_MAX_CACHED_PATHS,
            revalidate_after: DEFAULT_REVALIDATE_AFTER,
            max_ranges: DEFAULT_MAX_RANGES,
            sendfile: true,
        }
    }
}
