//! `tls = { cert, key }`: certificates managed by someone else, picked up again when
//! their files change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::{CertPem, CertResolver, LoadedCert, TlsError};

/// How often the files are checked for changes. Cheap (two `stat` calls), and quick
/// enough that a certbot or cert-manager renewal is served within seconds.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Reads and parses a PEM chain file and key file. Blocking file I/O.
pub fn load_pem_files(name: &str, cert: &Path, key: &Path) -> Result<LoadedCert, TlsError> {
    let chain_pem = std::fs::read_to_string(cert).map_err(|e| TlsError::io(cert, e))?;
    let key_pem = std::fs::read_to_string(key).map_err(|e| TlsError::io(key, e))?;
    LoadedCert::from_pem(name, &CertPem { chain_pem, key_pem })
}

/// A certificate served from files for some names, reloaded when the files change.
///
/// The files are polled by modification time and size; a change is applied only when
/// the new pair parses and matches, otherwise the previous certificate stays and the
/// error is logged (a half-copied file is retried at the next poll). Dropping the
/// watcher stops polling; the certificate stays in the resolver.
#[derive(Debug)]
pub struct FileCertWatcher {
    task: JoinHandle<()>,
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl FileCertWatcher {
    /// Loads the files now (an error here is a startup error) and serves them for
    /// `names`, then polls every `interval` on the current tokio runtime.
    pub fn start(
        names: Vec<String>,
        cert: PathBuf,
        key: PathBuf,
        resolver: Arc<CertResolver>,
        interval: Duration,
    ) -> Result<Self, TlsError> {
        let label = names.first().cloned().unwrap_or_default();
        let loaded = load_pem_files(&label, &cert, &key)?;
        Ok(Self::with_loaded(names, cert, key, &loaded, resolver, interval))
    }

    /// Like [`FileCertWatcher::start`] with the files already loaded by
    /// [`load_pem_files`]: a reload loads every site's files first and starts
    /// serving them only once the whole new configuration is accepted.
    pub fn with_loaded(
        names: Vec<String>,
        cert: PathBuf,
        key: PathBuf,
        loaded: &LoadedCert,
        resolver: Arc<CertResolver>,
        interval: Duration,
    ) -> Self {
        let label = names.first().cloned().unwrap_or_default();
        for name in &names {
            resolver.set(name, loaded);
        }
        let mut seen = (stamp(&cert), stamp(&key));
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let now = (stamp(&cert), stamp(&key));
                if now == seen {
                    continue;
                }
                let (c, k, l) = (cert.clone(), key.clone(), label.clone());
                let result = tokio::task::spawn_blocking(move || load_pem_files(&l, &c, &k)).await;
                match result {
                    Ok(Ok(loaded)) => {
                        for name in &names {
                            resolver.set(name, &loaded);
                        }
                        seen = now;
                        tracing::info!(name = %label, cert = %cert.display(), "Reloaded certificate files.");
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(name = %label, error = %e, "Changed certificate files are unusable; keeping the previous certificate.");
                    }
                    Err(e) => tracing::warn!(name = %label, error = %e, "Certificate reload task failed."),
                }
            }
        });
        Self { task }
    }
}

impl Drop for FileCertWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
