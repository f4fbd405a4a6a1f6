//! Where certificates, keys and ACME accounts live: the [`CertStore`] trait and the
//! [`FileStore`] under `data_dir/certs/`.
//!
//! The trait is shaped so a database can implement it later (see `CertRepo` in the
//! store crate): every call is async and fallible, and [`CertStore::try_lock`] is a
//! lease with a holder and a time to live, which a SQL table can provide across
//! instances so that only one of them orders a given certificate.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{CertPem, TlsError};

/// The boxed future every [`CertStore`] method returns (object-safe async).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, TlsError>> + Send + 'a>>;

/// Storage for certificates, their keys and ACME account credentials.
///
/// Implementations must make each write atomic: a reader sees the old or the new
/// certificate, never half of one, and a chain is never paired with another key.
pub trait CertStore: Send + Sync + 'static {
    /// The certificate stored under `name`, or `None`.
    fn load_cert<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<CertPem>>;

    /// Stores (or replaces) the certificate `name`.
    fn save_cert<'a>(&'a self, name: &'a str, cert: &'a CertPem) -> StoreFuture<'a, ()>;

    /// The names of every stored certificate, sorted.
    fn list_certs(&self) -> StoreFuture<'_, Vec<String>>;

    /// The serialized ACME account credentials for `directory_url`, or `None`.
    fn load_account<'a>(&'a self, directory_url: &'a str) -> StoreFuture<'a, Option<String>>;

    /// Stores the serialized ACME account credentials for `directory_url`. Secret.
    fn save_account<'a>(&'a self, directory_url: &'a str, credentials: &'a str) -> StoreFuture<'a, ()>;

    /// Tries to take the lease that lets one holder order the certificate `name`.
    ///
    /// Returns `true` when `holder` now holds it for `ttl`: it was free, had expired,
    /// or `holder` held it already. Returns `false` while another holder's lease is live.
    fn try_lock<'a>(&'a self, name: &'a str, holder: &'a str, ttl: Duration) -> StoreFuture<'a, bool>;

    /// Releases the lease on `name` if `holder` holds it.
    fn unlock<'a>(&'a self, name: &'a str, holder: &'a str) -> StoreFuture<'a, ()>;
}

/// Checks that a certificate name can be used as a file name and a database key:
/// a host name, a `*.` wildcard or an IP address, at most 253 characters.
pub fn check_name(name: &str) -> Result<(), TlsError> {
    let bad = |reason| {
        Err(TlsError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 253 {
        return bad("longer than 253 characters");
    }
    if name.starts_with('.') || name.contains("..") {
        return bad("empty label");
    }
    let body = name.strip_prefix("*.").unwrap_or(name);
    if !body
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b':'))
    {
        return bad("only lowercase letters, digits, '.', '-' and ':' are allowed (and a leading '*.')");
    }
    Ok(())
}

/// The file name for a certificate name (`*` cannot be typed safely in shells).
fn file_stem(name: &str) -> String {
    match name.strip_prefix("*.") {
        Some(rest) => format!("_wildcard_.{rest}"),
        None => name.replace(':', "_"),
    }
}

/// A file name for an ACME directory URL: readable, and unique enough because the URL
/// itself is stored inside the file and checked on load.
fn account_stem(directory_url: &str) -> String {
    let mut s: String = directory_url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(200);
    s
}

/// Account credentials as stored on disk.
#[derive(Serialize, Deserialize)]
struct AccountFile {
    directory_url: String,
    credentials: String,
}

/// A lease as stored on disk.
#[derive(Serialize, Deserialize)]
struct LockFile {
    holder: String,
    expires_unix_ms: u64,
}

/// A [`CertStore`] on the local file system.
///
/// Layout under its root (normally `data_dir/certs`):
///
/// ```text
/// sites/<name>/cert.pem     chain, leaf first (0644)
/// sites/<name>/key.pem      private key (0600)
/// accounts/<directory>.json ACME account credentials (0600)
/// locks/<name>.lock         order leases (holder, expiry)
/// ```
///
/// Every file is written to a temporary name in the same directory, synced, then renamed.
/// A certificate's key is renamed into place before its chain, and readers check that
/// the two match, so a crash between the renames is seen as "no usable certificate"
/// for one name, never as a wrong one.
///
/// Leases are only meaningful between tasks of one process (the data directory is
/// locked by one server); a database store gives them meaning across instances.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn site_dir(&self, name: &str) -> PathBuf {
        self.root.join("sites").join(file_stem(name))
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(format!("{}.lock", file_stem(name)))
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, TlsError> + Send + 'static) -> Result<T, TlsError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(TlsError::Config(format!("certificate store task failed: {e}"))),
    }
}

/// Reads a file, mapping "not found" to `None`.
fn read_optional(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TlsError::io(path, e)),
    }
}

/// Creates `dir` (and parents) with owner-only permissions for new directories.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| TlsError::io(dir, e))
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory with
/// mode `mode` (owner-only for secrets), synced, then renamed over `path`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let dir = path
        .parent()
        .ok_or_else(|| TlsError::Config(format!("{} has no parent directory", path.display())))?;
    create_private_dir(dir)?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{}", std::process::id(), fastrand::u64(..)));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(TlsError::io(path, e));
    }
    Ok(())
}

/// Permissions for files holding secrets.
pub(crate) const SECRET_MODE: u32 = 0o600;
/// Permissions for public files (certificates).
pub(crate) const PUBLIC_MODE: u32 = 0o644;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl CertStore for FileStore {
    fn load_cert<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<CertPem>> {
        Box::pin(async move {
            check_name(name)?;
            let dir = self.site_dir(name);
            blocking(move || {
                let Some(chain_pem) = read_optional(&dir.join("cert.pem"))? else {
                    return Ok(None);
                };
                let Some(key_pem) = read_optional(&dir.join("key.pem"))? else {
                    return Ok(None);
                };
                Ok(Some(CertPem { chain_pem, key_pem }))
            })
            .await
        })
    }

    fn save_cert<'a>(&'a self, name: &'a str, cert: &'a CertPem) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            check_name(name)?;
            let dir = self.site_dir(name);
            let cert = cert.clone();
            blocking(move || {
                write_atomic(&dir.join("key.pem"), cert.key_pem.as_bytes(), SECRET_MODE)?;
                write_atomic(&dir.join("cert.pem"), cert.chain_pem.as_bytes(), PUBLIC_MODE)
            })
            .await
        })
    }

    fn list_certs(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            let dir = self.root.join("sites");
            blocking(move || {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(TlsError::io(&dir, e)),
                };
                let mut names = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| TlsError::io(&dir, e))?;
                    let Some(stem) = entry.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if !entry.path().join("cert.pem").is_file() {
                        continue;
                    }
                    let name = match stem.strip_prefix("_wildcard_.") {
                        Some(rest) => format!("*.{rest}"),
                        None => stem.replace('_', ":"),
                    };
                    names.push(name);
                }
                names.sort();
                Ok(names)
            })
            .await
        })
    }

    fn load_account<'a>(&'a self, directory_url: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let path = self
                .root
                .join("accounts")
                .join(format!("{}.json", account_stem(directory_url)));
            let url = directory_url.to_owned();
            blocking(move || {
                let Some(text) = read_optional(&path)? else {
                    return Ok(None);
                };
                let file: AccountFile = serde_json::from_str(&text).map_err(|source| TlsError::Json {
                    what: path.display().to_string(),
                    source,
                })?;
                Ok((file.directory_url == url).then_some(file.credentials))
            })
            .await
        })
    }

    fn save_account<'a>(&'a self, directory_url: &'a str, credentials: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = self
                .root
                .join("accounts")
                .join(format!("{}.json", account_stem(directory_url)));
            let file = AccountFile {
                directory_url: directory_url.to_owned(),
                credentials: credentials.to_owned(),
            };
            let text = serde_json::to_vec_pretty(&file).map_err(|source| TlsError::Json {
                what: path.display().to_string(),
                source,
            })?;
            blocking(move || write_atomic(&path, &text, SECRET_MODE)).await
        })
    }

    fn try_lock<'a>(&'a self, name: &'a str, holder: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            check_name(name)?;
            let path = self.lock_path(name);
            let holder = holder.to_owned();
            blocking(move || {
                let now = unix_ms(SystemTime::now());
                if let Some(text) = read_optional(&path)? {
                    // An unreadable lease file is treated as expired rather than wedging renewal.
                    if let Ok(lease) = serde_json::from_str::<LockFile>(&text)
                        && lease.holder != holder
                        && lease.expires_unix_ms > now
                    {
                        return Ok(false);
                    }
                }
                let lease = LockFile {
                    holder,
                    expires_unix_ms: now.saturating_add(ttl.as_millis() as u64),
                };
                let text = serde_json::to_vec(&lease).map_err(|source| TlsError::Json {
                    what: path.display().to_string(),
                    source,
                })?;
                write_atomic(&path, &text, SECRET_MODE)?;
                Ok(true)
            })
            .await
        })
    }

    fn unlock<'a>(&'a self, name: &'a str, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            check_name(name)?;
            let path = self.lock_path(name);
            let holder = holder.to_owned();
            blocking(move || {
                if let Some(text) = read_optional(&path)?
                    && serde_json::from_str::<LockFile>(&text).is_ok_and(|l| l.holder == holder)
                {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(TlsError::io(&path, e)),
                    }
                }
                Ok(())
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a.example",
            "*.example.com",
            "127.0.0.1",
            "::1",
            "xn--bcher-kva.example",
        ] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            "A.example",
            "a..b",
            ".a",
            "a b",
            "*",
            "a.*.b",
            "a_b",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(file_stem("*.a.example"), "_wildcard_.a.example");
        assert_eq!(file_stem("::1"), "__1");
    }

    #[test]
    fn account_file_names_are_plain() {
        assert_eq!(account_stem("https://127.0.0.1:14000/dir"), "127.0.0.1_14000_dir");
    }
}
