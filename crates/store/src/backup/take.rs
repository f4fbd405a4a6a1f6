//! Taking a backup.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use flate2::Compression;
use flate2::write::GzEncoder;
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use tracing::{debug, warn};

use super::archive::{ExactHashReader, HashWriter, archive_path};
use super::{
    ARCHIVE_PREFIX, ARCHIVE_SUFFIX, BackupError, BackupOptions, DATA_PREFIX, LOCK_FILE_NAME, MANIFEST_FORMAT,
    MANIFEST_NAME, Manifest, ManifestFile, PG_DUMP_ENTRY, RESTORE_PREVIOUS_PREFIX, RESTORE_STAGING_PREFIX,
    checksum_path, list_archives, stamp,
};
use crate::{Backend, Store, StoreError};

/// What a successful backup produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The archive.
    pub path: PathBuf,
    /// Its checksum file (`sha256sum` format).
    pub checksum_path: PathBuf,
    /// SHA-256 of the archive, hex.
    pub sha256: String,
    /// Size of the archive in bytes.
    pub size_bytes: u64,
    /// Number of files inside, including the database snapshot.
    pub files: usize,
    /// Their total uncompressed size.
    pub content_bytes: u64,
    /// The store backend that was snapshotted.
    pub backend: Backend,
    /// When the snapshot began: every write acknowledged before this is in the archive.
    pub started_at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// Older archives deleted by rotation.
    pub removed: Vec<PathBuf>,
}

/// Takes a backup of `store` and of its `data_dir` into `options.dir`, then deletes all but
/// the newest `options.keep` archives.
///
/// Safe while the server runs: the SQLite snapshot (`VACUUM INTO`) reads one consistent
/// state while writers go on; with PostgreSQL `pg_dump` does the same. Fails with
/// [`BackupError::PgDumpMissing`] when the store is on PostgreSQL and `pg_dump` is absent,
/// and with [`BackupError::Store`] when the database is unavailable. A failed backup leaves
/// no partial archive behind.
pub async fn take_backup(store: &Store, options: &BackupOptions) -> Result<BackupReport, BackupError> {
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let dir = options.dir.clone();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(BackupError::io("create", &dir))?;
    let stamp = stamp(started_at);
    let staging = dir.join(format!(".tmp-{stamp}-{}", std::process::id()));
    tokio::fs::create_dir(&staging)
        .await
        .map_err(BackupError::io("create", &staging))?;

    let result = build(store, options, &staging, &stamp, started_at).await;
    if let Err(e) = tokio::fs::remove_dir_all(&staging).await {
        warn!(path = %staging.display(), error = %e, "Could not remove the backup staging directory.");
    }
    let mut report = result?;

    let keep = options.keep;
    let rotate_dir = dir.clone();
    match tokio::task::spawn_blocking(move || rotate(&rotate_dir, keep)).await {
        Ok(Ok(removed)) => report.removed = removed,
        Ok(Err(e)) => warn!(error = %e, "Backup taken, but rotating old backups failed."),
        Err(e) => warn!(error = %e, "Backup taken, but rotating old backups failed."),
    }
    report.duration = clock.elapsed();
    Ok(report)
}

/// Everything that goes into one archive.
struct Plan {
    data_dir: PathBuf,
    dir: PathBuf,
    final_path: PathBuf,
    backend: Backend,
    created_at: String,
    /// Paths (canonical) that the walk of `data_dir` skips.
    excluded: HashSet<PathBuf>,
    /// The database snapshot file and its archive path.
    database: Option<(PathBuf, String)>,
    database_original_path: Option<String>,
}

async fn build(
    store: &Store,
    options: &BackupOptions,
    staging: &Path,
    stamp: &str,
    started_at: SystemTime,
) -> Result<BackupReport, BackupError> {
    let data_dir = store.options().data_dir.clone();
    let dir = options.dir.clone();
    let final_path = dir.join(format!("{ARCHIVE_PREFIX}{stamp}{ARCHIVE_SUFFIX}"));
    let backend = store.backend();

    let mut excluded = HashSet::new();
    excluded.insert(canonical(&dir));
    excluded.insert(canonical(&data_dir.join(LOCK_FILE_NAME)));

    let mut database_original_path = None;
    let database = match backend {
        Backend::Sqlite => {
            let snapshot = staging.join("database.sqlite3");
            store.sqlite_snapshot(&snapshot).await?;
            let entry = match store.sqlite_file() {
                Some(live) => {
                    let live = canonical(&live);
                    for suffix in ["", "-wal", "-shm", "-journal"] {
                        let mut name = live.as_os_str().to_owned();
                        name.push(suffix);
                        excluded.insert(PathBuf::from(name));
                    }
                    let inside = live
                        .strip_prefix(canonical(&data_dir))
                        .ok()
                        .and_then(|rel| archive_path(DATA_PREFIX, rel));
                    match inside {
                        Some(entry) => entry,
                        None => {
                            database_original_path = Some(live.display().to_string());
                            let name = live.file_name().and_then(|n| n.to_str()).unwrap_or("gatehouse.db");
                            format!("{DATA_PREFIX}/{name}")
                        }
                    }
                }
                None => format!("{DATA_PREFIX}/gatehouse.db"),
            };
            Some((snapshot, entry))
        }
        Backend::Postgres => {
            let dump = staging.join("gatehouse.pgdump");
            let program = options.pg_dump.clone();
            let url = store.options().url.clone();
            let target = dump.clone();
            tokio::task::spawn_blocking(move || run_pg_dump(&program, &url, &target))
                .await
                .map_err(|e| BackupError::Io {
                    action: "run pg_dump for",
                    path: dump.clone(),
                    source: std::io::Error::other(e.to_string()),
                })??;
            Some((dump, PG_DUMP_ENTRY.to_owned()))
        }
    };

    let plan = Plan {
        data_dir,
        dir,
        final_path,
        backend,
        created_at: humantime::format_rfc3339_millis(started_at).to_string(),
        excluded,
        database,
        database_original_path,
    };
    let path = plan.final_path.clone();
    let (sha256, size_bytes, files, content_bytes) = tokio::task::spawn_blocking(move || write_archive(&plan))
        .await
        .map_err(|e| BackupError::Io {
        action: "write",
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })??;
    Ok(BackupReport {
        checksum_path: checksum_path(&path),
        path,
        sha256,
        size_bytes,
        files,
        content_bytes,
        backend,
        started_at,
        duration: Duration::ZERO,
        removed: Vec::new(),
    })
}

/// Writes the archive under a temporary name, fsyncs it, renames it into place and writes
/// its checksum file. Returns (sha256, archive size, file count, content bytes).
fn write_archive(plan: &Plan) -> Result<(String, u64, usize, u64), BackupError> {
    let final_name = plan
        .final_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("backup.tar.gz")
        .to_owned();
    let partial = plan.dir.join(format!("{final_name}.partial"));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(BackupError::io("create", &partial))?;
    let written = write_entries(plan, file, &partial);
    let (sha256, size, files, content) = match written {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    if plan.final_path.exists() {
        let _ = fs::remove_file(&partial);
        return Err(BackupError::Io {
            action: "create",
            path: plan.final_path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    fs::rename(&partial, &plan.final_path).map_err(BackupError::io("rename", &partial))?;

    let sidecar = checksum_path(&plan.final_path);
    let sidecar_tmp = plan.dir.join(format!("{final_name}.sha256.partial"));
    let write_sidecar = || -> std::io::Result<()> {
        let mut f = File::create(&sidecar_tmp)?;
        // Two spaces: the `sha256sum -c` format.
        writeln!(f, "{sha256}  {final_name}")?;
        f.sync_all()?;
        fs::rename(&sidecar_tmp, &sidecar)?;
        // Persist both renames.
        File::open(&plan.dir)?.sync_all()
    };
    write_sidecar().map_err(BackupError::io("write", &sidecar))?;
    Ok((sha256, size, files, content))
}

fn write_entries(plan: &Plan, file: File, partial: &Path) -> Result<(String, u64, usize, u64), BackupError> {
    let write_err = BackupError::io("write", partial);
    let gz = GzEncoder::new(HashWriter::new(BufWriter::new(file)), Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut manifest = Manifest {
        format: MANIFEST_FORMAT,
        created_at: plan.created_at.clone(),
        gatehouse_version: env!("CARGO_PKG_VERSION").to_owned(),
        backend: plan.backend,
        database: plan.database.as_ref().map(|(_, entry)| entry.clone()),
        database_original_path: plan.database_original_path.clone(),
        files: Vec::new(),
        dirs: Vec::new(),
    };

    add_dir(&mut tar, DATA_PREFIX, &plan.data_dir, &mut manifest)?;
    if plan.data_dir.is_dir() {
        walk(&mut tar, plan, &plan.data_dir, Path::new(""), &mut manifest)?;
    }
    if let Some((snapshot, entry)) = &plan.database {
        if manifest.files.iter().any(|f| &f.path == entry) {
            return Err(BackupError::Io {
                action: "archive the database as",
                path: PathBuf::from(entry),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "data_dir has a file of the same name",
                ),
            });
        }
        if let Some(parent) = entry.rsplit_once('/').map(|(p, _)| p) {
            if parent != DATA_PREFIX && !manifest.dirs.iter().any(|d| d == parent) {
                add_dir(&mut tar, parent, snapshot, &mut manifest)?;
            }
        }
        add_file(&mut tar, snapshot, entry, 0o600, &mut manifest)?;
    }

    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::io("write", partial)(std::io::Error::other(e)))?;
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    tar.append_data(&mut header, MANIFEST_NAME, &json[..])
        .map_err(BackupError::io("write", partial))?;

    let gz = tar.into_inner().map_err(BackupError::io("write", partial))?;
    let hashing = gz.finish().map_err(BackupError::io("write", partial))?;
    let (buffered, sha256, size) = hashing.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| BackupError::io("write", partial)(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    let content = manifest.files.iter().map(|f| f.size).sum();
    Ok((sha256, size, manifest.files.len(), content))
}

type TarOut = tar::Builder<GzEncoder<HashWriter<BufWriter<File>>>>;

/// Archives `root/rel` recursively, in name order, skipping excluded paths.
fn walk(tar: &mut TarOut, plan: &Plan, root: &Path, rel: &Path, manifest: &mut Manifest) -> Result<(), BackupError> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(BackupError::io("read", &dir))?
        .collect::<Result<_, _>>()
        .map_err(BackupError::io("read", &dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let child_rel = rel.join(&name);
        let path = entry.path();
        if rel.as_os_str().is_empty() {
            let n = name.to_string_lossy();
            if n.starts_with(RESTORE_STAGING_PREFIX) || n.starts_with(RESTORE_PREVIOUS_PREFIX) {
                continue;
            }
        }
        if plan.excluded.contains(&canonical(&path)) {
            debug!(path = %path.display(), "Not backed up: excluded.");
            continue;
        }
        let Some(entry_path) = archive_path(DATA_PREFIX, &child_rel) else {
            warn!(path = %path.display(), "Not backed up: the file name is not UTF-8.");
            continue;
        };
        let kind = entry.file_type().map_err(BackupError::io("inspect", &path))?;
        if kind.is_dir() {
            add_dir(tar, &entry_path, &path, manifest)?;
            walk(tar, plan, root, &child_rel, manifest)?;
        } else if kind.is_file() {
            add_file(tar, &path, &entry_path, 0, manifest)?;
        } else {
            warn!(path = %path.display(), "Not backed up: only regular files and directories are.");
        }
    }
    Ok(())
}

fn add_dir(tar: &mut TarOut, entry_path: &str, source: &Path, manifest: &mut Manifest) -> Result<(), BackupError> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(0o755);
    if let Ok(meta) = fs::metadata(source) {
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
    }
    tar.append_data(&mut header, entry_path, std::io::empty())
        .map_err(BackupError::io("archive", source))?;
    manifest.dirs.push(entry_path.to_owned());
    Ok(())
}

/// Archives one file; `mode` 0 keeps the file's own permissions.
fn add_file(
    tar: &mut TarOut,
    source: &Path,
    entry_path: &str,
    mode: u32,
    manifest: &mut Manifest,
) -> Result<(), BackupError> {
    let file = File::open(source).map_err(BackupError::io("open", source))?;
    let meta = file.metadata().map_err(BackupError::io("inspect", source))?;
    let size = meta.len();
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    if mode != 0 {
        header.set_mode(mode);
    }
    let mut reader = ExactHashReader::new(file, size);
    tar.append_data(&mut header, entry_path, &mut reader)
        .map_err(BackupError::io("archive", source))?;
    manifest.files.push(ManifestFile {
        path: entry_path.to_owned(),
        size,
        sha256: reader.digest(),
    });
    Ok(())
}

/// Deletes all but the newest `keep` archives (and their checksum files); `keep == 0`
/// keeps everything.
fn rotate(dir: &Path, keep: usize) -> std::io::Result<Vec<PathBuf>> {
    if keep == 0 {
        return Ok(Vec::new());
    }
    let archives = list_archives(dir)?;
    let excess = archives.len().saturating_sub(keep);
    let mut removed = Vec::with_capacity(excess);
    for old in archives.into_iter().take(excess) {
        fs::remove_file(&old)?;
        match fs::remove_file(checksum_path(&old)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        removed.push(old);
    }
    Ok(removed)
}

/// The canonical form of `path` when it exists, else `path` itself (nothing to exclude).
fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// libpq connection parameters passed through to `pg_dump`; others (sqlx's own) are dropped.
const LIBPQ_PARAMS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "dbname",
    "options",
    "application_name",
    "connect_timeout",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "target_session_attrs",
];

/// The connection string for libpq and the password to pass in `PGPASSWORD`: the URL
/// without its password, keeping only parameters libpq knows, and sqlx's
/// `options[key]=value` rewritten as `options=-c key=value`.
fn pg_dump_url(url: &str) -> Result<(String, Option<String>), BackupError> {
    let mut parsed = url::Url::parse(url).map_err(|e| StoreError::Config(format!("invalid postgres url: {e}")))?;
    let password = parsed
        .password()
        .map(|p| percent_decode_str(p).decode_utf8_lossy().into_owned());
    // Only fails for URLs that cannot carry credentials; a postgres URL can.
    let _ = parsed.set_password(None);
    let mut options: Vec<String> = Vec::new();
    let mut kept: Vec<(String, String)> = Vec::new();
    for (key, value) in parsed.query_pairs() {
        if let Some(name) = key.strip_prefix("options[").and_then(|k| k.strip_suffix(']')) {
            options.push(format!("-c {name}={value}"));
        } else if key == "options" {
            options.push(value.into_owned());
        } else if LIBPQ_PARAMS.contains(&key.as_ref()) {
            kept.push((key.into_owned(), value.into_owned()));
        }
    }
    if !options.is_empty() {
        kept.push(("options".to_owned(), options.join(" ")));
    }
    // libpq decodes `%XX` but not `+`, so no form encoding here.
    let query: Vec<String> = kept
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect();
    parsed.set_query((!query.is_empty()).then(|| query.join("&")).as_deref());
    Ok((parsed.into(), password))
}

/// Runs `pg_dump --format=custom` for `url` into `dest`. The password travels in
/// `PGPASSWORD`, never on the command line (where `ps` would show it).
fn run_pg_dump(program: &Path, url: &str, dest: &Path) -> Result<(), BackupError> {
    let (conninfo, password) = pg_dump_url(url)?;
    let mut command = Command::new(program);
    command
        .arg("--format=custom")
        .arg("--no-password")
        .arg("--file")
        .arg(dest)
        .arg("--dbname")
        .arg(&conninfo)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(password) = &password {
        command.env("PGPASSWORD", password);
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BackupError::PgDumpMissing {
                program: program.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(BackupError::Io {
                action: "run",
                path: program.to_path_buf(),
                source,
            });
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut stderr = stderr.trim().to_owned();
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            stderr = stderr.replace(&password, "***");
        }
        if stderr.len() > 2000 {
            let cut = stderr.len() - 2000;
            let cut = (cut..stderr.len()).find(|i| stderr.is_char_boundary(*i)).unwrap_or(cut);
            stderr = format!("…{}", &stderr[cut..]);
        }
        return Err(BackupError::PgDumpFailed {
            status: output.status.to_string(),
            stderr,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_dump_gets_a_libpq_url_without_the_password() {
        let (url, password) = pg_dump_url(
            "postgres://app:p%40ss@db:5432/gh?options[search_path]=s1&sslmode=disable\
             &statement-cache-capacity=10",
        )
        .unwrap();
        assert_eq!(password.as_deref(), Some("p@ss"));
        assert!(!url.contains("p%40ss"), "{url}");
        assert!(url.starts_with("postgres://app@db:5432/gh?"), "{url}");
        assert!(url.contains("sslmode=disable"), "{url}");
        assert!(url.contains("options=%2Dc%20search%5Fpath%3Ds1"), "{url}");
        assert!(!url.contains("statement-cache"), "{url}");

        let (url, password) = pg_dump_url("postgres://postgres@127.0.0.1/test").unwrap();
        assert_eq!(url, "postgres://postgres@127.0.0.1/test");
        assert!(password.is_none());
    }
}
