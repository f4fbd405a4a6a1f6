//! Verifying and restoring a backup.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::archive::is_safe_relative;
use super::{
    ARCHIVE_SUFFIX, BackupError, DATA_PREFIX, DEFAULT_DIR_NAME, DataDirLock, LOCK_FILE_NAME, LockError,
    MANIFEST_FORMAT, MANIFEST_NAME, Manifest, PG_DUMP_ENTRY, RESTORE_PREVIOUS_PREFIX, RESTORE_STAGING_PREFIX,
    checksum_path, stamp,
};
use crate::Backend;
use crate::digest::hex;

/// The manifest is small JSON; anything larger is not one of ours.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

/// How to restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Restore even when the data-dir lock is held (a server seems to run). Only for a lock
    /// you know to be wrong: a running server keeps writing to the files moved aside.
    pub force: bool,
    /// The configured `[backup] dir`; when it is inside `data_dir` it stays in place (as
    /// the default `backups` directory always does).
    pub backup_dir: Option<PathBuf>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The archive.
    pub archive: PathBuf,
    /// When the backup was taken (RFC 3339).
    pub created_at: String,
    /// The backend it came from.
    pub backend: Backend,
    /// Number of files, all matching their checksums.
    pub files: usize,
    /// Their total size.
    pub content_bytes: u64,
    /// Whether the `.sha256` file beside the archive existed and matched (a missing one is
    /// only a warning: the manifest still covers every file).
    pub checksum_file_verified: bool,
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The verification that preceded the restore.
    pub verified: VerifyReport,
    /// The data directory that was restored.
    pub data_dir: PathBuf,
    /// Where the SQLite database now is, for SQLite backups.
    pub database: Option<PathBuf>,
    /// For PostgreSQL backups: the extracted `pg_dump` file, next to the archive. Load it with
    /// `pg_restore --clean --if-exists --no-owner -d URL FILE`.
    pub postgres_dump: Option<PathBuf>,
    /// Where the previous contents of `data_dir` were moved (delete it once satisfied), or
    /// `None` when `data_dir` was empty.
    pub previous: Option<PathBuf>,
    /// True when the lock was held by someone else and `force` overrode it.
    pub forced: bool,
}

/// Checks an archive without writing anything: the checksum file (when present), every
/// file's size and SHA-256 against the manifest, and the archive's structure.
pub fn verify(archive: &Path) -> Result<VerifyReport, BackupError> {
    let scanned = scan(archive, None)?;
    let checksum_file_verified = verify_checksum_file(archive)?;
    Ok(scanned.report(archive, checksum_file_verified))
}

/// Restores `archive` into `data_dir`. Blocking (run it on a blocking thread in async code).
///
/// 1. Takes the data-dir lock: refuses with [`BackupError::Lock`] while a server holds it,
///    unless `options.force`.
/// 2. Extracts everything into `data_dir/.restore-<stamp>/` and checks every file against
///    the manifest and the archive against its checksum file. A corrupted or truncated
///    archive is refused ([`BackupError::Corrupt`], [`BackupError::Truncated`]) and the
///    staging directory removed: `data_dir` is untouched.
/// 3. Moves the current contents of `data_dir` into `data_dir/.pre-restore-<stamp>/` and the
///    verified files into `data_dir`, by renames on the same file system (so it also works
///    when `data_dir` is a mount point). The lock file, the `backups` directory, the
///    directory holding the archive and earlier restore leftovers stay in place.
pub fn restore(archive: &Path, data_dir: &Path, options: RestoreOptions) -> Result<RestoreReport, BackupError> {
    let (lock, forced) = match DataDirLock::acquire(data_dir) {
        Ok(lock) => (Some(lock), false),
        Err(err @ LockError::InUse { .. }) if options.force => {
            warn!(error = %err, "Restoring despite the data-dir lock (forced).");
            (None, true)
        }
        Err(err) => return Err(err.into()),
    };
    let stamp = stamp(SystemTime::now());
    let staging = data_dir.join(format!("{RESTORE_STAGING_PREFIX}{stamp}"));
    fs::create_dir(&staging).map_err(BackupError::io("create", &staging))?;

    let result = restore_from_staging(archive, data_dir, &staging, &stamp, &options);
    if let Err(e) = fs::remove_dir_all(&staging) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!(path = %staging.display(), error = %e, "Could not remove the restore staging directory.");
        }
    }
    drop(lock);
    let (verified, database, postgres_dump, previous) = result?;
    Ok(RestoreReport {
        verified,
        data_dir: data_dir.to_path_buf(),
        database,
        postgres_dump,
        previous,
        forced,
    })
}

type Restored = (VerifyReport, Option<PathBuf>, Option<PathBuf>, Option<PathBuf>);

fn restore_from_staging(
    archive: &Path,
    data_dir: &Path,
    staging: &Path,
    stamp: &str,
    options: &RestoreOptions,
) -> Result<Restored, BackupError> {
    let scanned = scan(archive, Some(staging))?;
    let checksum_file_verified = verify_checksum_file(archive)?;
    let verified = scanned.report(archive, checksum_file_verified);

    let refused = |reason: String| BackupError::Refused {
        data_dir: data_dir.to_path_buf(),
        reason,
    };
    let stays = stays_in_place(archive, data_dir, options.backup_dir.as_deref());
    let source = staging.join(DATA_PREFIX);
    fs::create_dir_all(&source).map_err(BackupError::io("create", &source))?;
    let incoming = names(&source)?;
    if let Some(clash) = incoming.iter().find(|n| stays(n)) {
        return Err(refused(format!(
            "the backup contains {}, which a restore leaves in place",
            clash.to_string_lossy()
        )));
    }

    // The PostgreSQL dump goes next to the archive, not into data_dir.
    let postgres_dump = if scanned.manifest.database.as_deref() == Some(PG_DUMP_ENTRY) {
        let name = archive
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.strip_suffix(ARCHIVE_SUFFIX).unwrap_or(n))
            .unwrap_or("gatehouse-backup");
        let dest = archive.with_file_name(format!("{name}.pgdump"));
        move_file(&staging.join(PG_DUMP_ENTRY), &dest)?;
        Some(dest)
    } else {
        None
    };

    let current: Vec<OsString> = names(data_dir)?.into_iter().filter(|n| !stays(n)).collect();
    let previous = data_dir.join(format!("{RESTORE_PREVIOUS_PREFIX}{stamp}"));
    if !current.is_empty() {
        fs::create_dir(&previous).map_err(BackupError::io("create", &previous))?;
    }
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let swap = (|| {
        for name in &current {
            let pair = (data_dir.join(name), previous.join(name));
            fs::rename(&pair.0, &pair.1).map_err(BackupError::io("move aside", &pair.0))?;
            moved.push(pair);
        }
        for name in &incoming {
            let pair = (source.join(name), data_dir.join(name));
            fs::rename(&pair.0, &pair.1).map_err(BackupError::io("move into place", &pair.0))?;
            moved.push(pair);
        }
        File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(BackupError::io("sync", data_dir))
    })();
    if let Err(e) = swap {
        // Put everything back where it was, newest move first.
        for (from, to) in moved.iter().rev() {
            if let Err(undo) = fs::rename(to, from) {
                warn!(from = %to.display(), to = %from.display(), error = %undo, "Could not undo a restore step; move it back by hand.");
            }
        }
        if current.is_empty() || names(&previous).map(|n| n.is_empty()).unwrap_or(false) {
            let _ = fs::remove_dir(&previous);
        }
        return Err(e);
    }

    let database = match (&scanned.manifest.database, scanned.manifest.backend) {
        (Some(entry), Backend::Sqlite) => entry
            .strip_prefix(DATA_PREFIX)
            .and_then(|rel| rel.strip_prefix('/'))
            .map(|rel| data_dir.join(rel)),
        _ => None,
    };
    Ok((
        verified,
        database,
        postgres_dump,
        (!current.is_empty()).then_some(previous),
    ))
}

/// Top-level names of `data_dir` that a restore neither replaces nor moves aside.
fn stays_in_place(archive: &Path, data_dir: &Path, backup_dir: Option<&Path>) -> impl Fn(&OsString) -> bool {
    // The first component of `path` below `data_dir`, if it is below.
    let top = |path: &Path| {
        std::path::absolute(path)
            .ok()
            .zip(std::path::absolute(data_dir).ok())
            .and_then(|(p, d)| {
                p.strip_prefix(&d)
                    .ok()
                    .and_then(|rel| rel.components().next())
                    .map(|c| c.as_os_str().to_owned())
            })
    };
    let archive_top = top(archive);
    let backup_top = backup_dir.and_then(top);
    move |name: &OsString| {
        let text = name.to_string_lossy();
        text == LOCK_FILE_NAME
            || text == DEFAULT_DIR_NAME
            || text.starts_with(RESTORE_STAGING_PREFIX)
            || text.starts_with(RESTORE_PREVIOUS_PREFIX)
            || archive_top.as_ref() == Some(name)
            || backup_top.as_ref() == Some(name)
    }
}

fn names(dir: &Path) -> Result<Vec<OsString>, BackupError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(BackupError::io("read", dir))? {
        out.push(entry.map_err(BackupError::io("read", dir))?.file_name());
    }
    out.sort();
    Ok(out)
}

fn move_file(from: &Path, to: &Path) -> Result<(), BackupError> {
    if fs::rename(from, to).is_ok() {
        return Ok(());
    }
    // Another file system: copy instead.
    fs::copy(from, to).map_err(BackupError::io("copy to", to))?;
    Ok(())
}

/// An archive that was read end to end and matched its manifest.
struct Scanned {
    manifest: Manifest,
}

impl Scanned {
    fn report(&self, archive: &Path, checksum_file_verified: bool) -> VerifyReport {
        VerifyReport {
            archive: archive.to_path_buf(),
            created_at: self.manifest.created_at.clone(),
            backend: self.manifest.backend,
            files: self.manifest.files.len(),
            content_bytes: self.manifest.files.iter().map(|f| f.size).sum(),
            checksum_file_verified,
        }
    }
}

/// Reads the whole archive, writing its entries under `dest` when given, and checks them
/// against the manifest.
fn scan(archive: &Path, dest: Option<&Path>) -> Result<Scanned, BackupError> {
    let corrupt = |reason: String| BackupError::Corrupt {
        path: archive.to_path_buf(),
        reason,
    };
    let read_err = |e: io::Error| read_error(archive, e);

    let file = File::open(archive).map_err(BackupError::io("open", archive))?;
    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    let mut files: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let mut manifest_bytes: Option<Vec<u8>> = None;

    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let path = entry.path().map_err(read_err)?.into_owned();
        let Some(name) = path.to_str().map(|s| s.trim_end_matches('/').to_owned()) else {
            return Err(corrupt(format!("entry {} is not UTF-8", path.display())));
        };
        let rel = Path::new(&name);
        let allowed = is_safe_relative(rel)
            && (name == MANIFEST_NAME
                || name == DATA_PREFIX
                || name.starts_with("data/")
                || name == "postgres"
                || name == PG_DUMP_ENTRY);
        if !allowed {
            return Err(corrupt(format!("unexpected entry {name:?}")));
        }
        let size = entry.header().size().map_err(read_err)?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                if let Some(dest) = dest {
                    let dir = dest.join(rel);
                    fs::create_dir_all(&dir).map_err(BackupError::io("create", &dir))?;
                }
                dirs.insert(name);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if name == MANIFEST_NAME {
                    if size > MAX_MANIFEST_BYTES {
                        return Err(corrupt(format!("manifest.json is {size} bytes")));
                    }
                    let mut bytes = Vec::new();
                    entry.read_to_end(&mut bytes).map_err(read_err)?;
                    if bytes.len() as u64 != size {
                        return Err(truncated(archive, "inside manifest.json"));
                    }
                    manifest_bytes = Some(bytes);
                    continue;
                }
                let (written, sha256) = match dest {
                    Some(dest) => {
                        let target = dest.join(rel);
                        if let Some(parent) = target.parent() {
                            fs::create_dir_all(parent).map_err(BackupError::io("create", parent))?;
                        }
                        let mut out = File::create(&target).map_err(BackupError::io("create", &target))?;
                        let copied = copy_hashed(archive, &mut entry, &mut out, &target)?;
                        out.sync_all().map_err(BackupError::io("write", &target))?;
                        if let Ok(mode) = entry.header().mode() {
                            set_mode(&target, mode)?;
                        }
                        copied
                    }
                    None => copy_hashed(archive, &mut entry, &mut io::sink(), archive)?,
                };
                if written != size {
                    return Err(truncated(archive, &format!("inside {name}")));
                }
                if files.insert(name.clone(), (size, sha256)).is_some() {
                    return Err(corrupt(format!("{name} appears twice")));
                }
            }
            other => {
                return Err(corrupt(format!("entry {name:?} has unsupported type {other:?}")));
            }
        }
    }
    // Read to the end of the gzip stream: this checks its CRC and length trailer.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(read_err)?;

    let Some(bytes) = manifest_bytes else {
        return Err(truncated(archive, "manifest.json (the last entry) is missing"));
    };
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("manifest.json is unreadable: {e}")))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(corrupt(format!(
            "manifest format {} is not supported (this gatehouse reads format {MANIFEST_FORMAT})",
            manifest.format
        )));
    }
    for expected in &manifest.files {
        match files.remove(&expected.path) {
            None => {
                return Err(corrupt(format!(
                    "{} is listed in the manifest but missing",
                    expected.path
                )));
            }
            Some((size, sha256)) => {
                if size != expected.size || sha256 != expected.sha256 {
                    return Err(corrupt(format!(
                        "checksum mismatch for {}: expected {} ({} bytes), found {sha256} \
                         ({size} bytes)",
                        expected.path, expected.sha256, expected.size
                    )));
                }
            }
        }
    }
    if let Some(extra) = files.keys().next() {
        return Err(corrupt(format!("{extra} is not listed in the manifest")));
    }
    if let Some(dest) = dest {
        for dir in &manifest.dirs {
            if is_safe_relative(Path::new(dir)) {
                let dir = dest.join(dir);
                fs::create_dir_all(&dir).map_err(BackupError::io("create", &dir))?;
            }
        }
    }
    Ok(Scanned { manifest })
}

/// Checks `<archive>.sha256` when it exists; `Ok(false)` when it does not.
fn verify_checksum_file(archive: &Path) -> Result<bool, BackupError> {
    let sidecar = checksum_path(archive);
    let text = match fs::read_to_string(&sidecar) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            warn!(archive = %archive.display(), "No checksum file beside the backup; relying on the manifest inside it.");
            return Ok(false);
        }
        Err(e) => return Err(BackupError::io("read", &sidecar)(e)),
    };
    let expected = text.split_whitespace().next().unwrap_or_default();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BackupError::Corrupt {
            path: archive.to_path_buf(),
            reason: format!("{} does not hold a SHA-256", sidecar.display()),
        });
    }
    let mut file = File::open(archive).map_err(BackupError::io("open", archive))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(BackupError::io("read", archive))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual = hex(&hasher.finalize());
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(BackupError::Corrupt {
            path: archive.to_path_buf(),
            reason: format!("its SHA-256 is {actual} but {} says {expected}", sidecar.display()),
        });
    }
    Ok(true)
}

/// Copies an entry while hashing it; errors reading the archive are corruption or
/// truncation, errors writing are I/O errors on `target`.
fn copy_hashed(
    archive: &Path,
    src: &mut impl Read,
    dst: &mut impl Write,
    target: &Path,
) -> Result<(u64, String), BackupError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(archive, e)),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(BackupError::io("write", target))?;
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

fn read_error(archive: &Path, e: io::Error) -> BackupError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        truncated(archive, &e.to_string())
    } else {
        BackupError::Corrupt {
            path: archive.to_path_buf(),
            reason: e.to_string(),
        }
    }
}

fn truncated(archive: &Path, where_: &str) -> BackupError {
    BackupError::Truncated {
        path: archive.to_path_buf(),
        reason: format!("the archive ends early ({where_})"),
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777))
        .map_err(BackupError::io("set permissions of", path))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), BackupError> {
    Ok(())
}
