//! Streaming, validating extraction of a `.tar.gz` release.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use tar::EntryType;

use super::{DeployOptions, Stats};
use crate::error::{FilesError, Rejection};

/// Deepest directory nesting accepted in a release.
pub(crate) const MAX_DEPTH: usize = 64;
/// Longest path accepted inside a release, in bytes.
const MAX_ENTRY_PATH: usize = 4096;

/// Extract `reader` (gzip-compressed tar) into the empty directory `dst`.
pub(crate) fn extract<R: Read>(
    reader: R,
    dst: &Path,
    opts: &DeployOptions,
    stats: &mut Stats,
) -> Result<(), FilesError> {
    let over = Arc::new(AtomicBool::new(false));
    let limited = Limited {
        inner: reader,
        left: opts.max_archive_bytes,
        over: Arc::clone(&over),
    };
    let limit_err = |e: io::Error| -> FilesError {
        if over.load(Ordering::Relaxed) {
            Rejection::ArchiveTooLarge {
                limit: opts.max_archive_bytes,
            }
            .into()
        } else {
            Rejection::Malformed(e.to_string()).into()
        }
    };
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(limited));
    for entry in archive.entries().map_err(limit_err)? {
        let mut entry = entry.map_err(limit_err)?;
        let raw = String::from_utf8(entry.path_bytes().into_owned()).map_err(|e| Rejection::BadPath {
            path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            reason: "name is not UTF-8",
        })?;
        let kind = entry.header().entry_type();
        let rel = match kind {
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            EntryType::Symlink | EntryType::Link => {
                return Err(special(raw, "link"));
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(special(raw, "device or FIFO"));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => entry_path(&raw)?,
            _ => return Err(special(raw, "unsupported tar entry type")),
        };
        let Some(rel) = rel else {
            // "./": the archive's top directory itself.
            continue;
        };
        stats.count_entry(opts)?;
        let target = dst.join(&rel);
        if kind == EntryType::Directory {
            fs::create_dir_all(&target).map_err(|e| FilesError::io("create", &target, e))?;
            continue;
        }
        let size = entry.header().size().map_err(limit_err)?;
        stats.reserve(size, opts)?;
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| FilesError::io("create", parent, e))?;
        }
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&target) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Rejection::Duplicate { path: raw }.into());
            }
            Err(e) => return Err(FilesError::io("create", &target, e)),
        };
        let copied = io::copy(&mut (&mut entry).take(size), &mut file).map_err(limit_err)?;
        if copied != size {
            return Err(Rejection::Malformed(format!("entry {raw:?} is truncated")).into());
        }
        stats.files += 1;
        if let Ok(mtime) = entry.header().mtime() {
            let _ = file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime.min(1 << 40)));
        }
        if opts.fsync {
            file.sync_all().map_err(|e| FilesError::io("sync", &target, e))?;
        }
    }
    // Read to the end so gzip checks its CRC and length trailer: a truncated
    // or corrupted upload must fail even if the tar end marker was intact.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(limit_err)?;
    Ok(())
}

fn special(path: String, kind: &'static str) -> FilesError {
    Rejection::SpecialFile { path, kind }.into()
}

/// Validate an archive entry path; `None` for the top directory (`./`).
fn entry_path(raw: &str) -> Result<Option<String>, FilesError> {
    let bad = |reason| -> FilesError {
        Rejection::BadPath {
            path: raw.to_owned(),
            reason,
        }
        .into()
    };
    if raw.len() > MAX_ENTRY_PATH {
        return Err(bad("path too long"));
    }
    if raw.starts_with('/') {
        return Err(bad("absolute path"));
    }
    if raw.contains('\\') {
        return Err(bad("backslash in path"));
    }
    let mut segs = Vec::new();
    for seg in raw.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err(bad("'..' component")),
            s if s.chars().any(char::is_control) => return Err(bad("control character")),
            s if s.contains(':') => return Err(bad("':' in name")),
            s => segs.push(s),
        }
    }
    if segs.len() > MAX_DEPTH {
        return Err(bad("nested too deeply"));
    }
    Ok((!segs.is_empty()).then(|| segs.join("/")))
}

/// A reader that fails once more than `left` bytes were read.
struct Limited<R> {
    inner: R,
    left: u64,
    over: Arc<AtomicBool>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(n)
            }
            None => {
                self.over.store(true, Ordering::Relaxed);
                Err(io::Error::other("archive size limit exceeded"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths() {
        assert_eq!(entry_path("./").unwrap(), None);
        assert_eq!(entry_path("./a/b.js").unwrap().as_deref(), Some("a/b.js"));
        assert_eq!(entry_path("dist//x").unwrap().as_deref(), Some("dist/x"));
        for bad in ["/etc/passwd", "../x", "a/../../x", "a\\b", "C:/x", "a/\u{1}"] {
            assert!(entry_path(bad).is_err(), "{bad}");
        }
    }
}
