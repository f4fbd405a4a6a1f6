//! Hot reload: the server side (SIGHUP, `POST /reload`, the config-file watch)
//! and the `gatehouse reload` command.
//!
//! The server re-reads and validates the whole file, keeps the settings that
//! only a restart can change (logging them), and hands the rest to the edge,
//! which swaps it in all at once or not at all. See `docs/reload.md`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use gatehouse_admin::{ReloadError, ReloadReport};
use gatehouse_config::{Config, Tls};
use gatehouse_edge::Reloader;
use gatehouse_store::backup::{DataDirLock, LockError};

use crate::tls::Certificates;

/// How often `server.watch_config` looks at the file's modification time.
/// Editors save within milliseconds; a second is quick enough for a person and
/// costs one `stat` per second.
pub(crate) const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Longest wait for the server's answer to `gatehouse reload`. Building a new
/// generation takes milliseconds; the margin covers a machine under load.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Reloads the running server from its config file. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    reloader: Reloader,
    /// The sites' certificates, when there are HTTPS listeners.
    certificates: Option<Arc<Certificates>>,
    /// The config being served; the lock also makes reloads one at a time.
    running: Mutex<Arc<Config>>,
}

impl Controller {
    pub(crate) fn new(
        path: &Path,
        reloader: Reloader,
        running: Arc<Config>,
        certificates: Option<Arc<Certificates>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                reloader,
                certificates,
                running: Mutex::new(running),
            }),
        }
    }

    /// The config file.
    pub(crate) fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Reloads off the async thread (reading the file and opening static roots
    /// touch the disk). `cause` is logged: `SIGHUP`, `admin API`, `file change`.
    pub(crate) async fn reload(&self, cause: &'static str) -> Result<ReloadReport, ReloadError> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || inner.reload(cause)).await {
            Ok(result) => result,
            Err(e) => Err(ReloadError::NotApplied(format!("the reload task failed: {e}"))),
        }
    }
}

impl Inner {
    fn reload(&self, cause: &'static str) -> Result<ReloadReport, ReloadError> {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tracing::info!(cause, path = %self.path.display(), "Reloading the configuration.");
        let mut config = match gatehouse_config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(cause, error = %e, "The new configuration is invalid; keeping the running one.");
                return Err(ReloadError::InvalidConfig(e.to_string()));
            }
        };
        let warnings = keep_restart_only(&running, &mut config);
        for w in &warnings {
            tracing::warn!(setting = %w, "This setting changed but needs a restart; keeping the running value.");
        }
        let not_applied = |e: String| {
            tracing::error!(cause, error = %e, "The new configuration cannot be applied; keeping the running one.");
            ReloadError::NotApplied(e)
        };
        // Certificate files are read before anything changes, so a missing or
        // broken one refuses the whole reload.
        let plan = match &self.certificates {
            Some(certs) => Some(certs.prepare(&config).map_err(|e| not_applied(format!("{e:#}")))?),
            None => None,
        };
        let config = Arc::new(config);
        let reloaded = self
            .reloader
            .reload(config.clone())
            .map_err(|e| not_applied(e.to_string()))?;
        if let (Some(certs), Some(plan)) = (&self.certificates, plan) {
            certs.apply(plan);
        }
        *running = config;
        Ok(ReloadReport {
            generation: reloaded.generation,
            added: reloaded.added.iter().map(ToString::to_string).collect(),
            removed: reloaded.removed.iter().map(ToString::to_string).collect(),
            warnings: warnings
                .into_iter()
                .map(|w| format!("{w} changed; restart to apply it"))
                .collect(),
        })
    }
}

/// Copies into `new` the settings a running server cannot change, and names
/// those that differed: the worker count, the data directory (the lock, the
/// store and releases live there), the admin listener and token, logging, the
/// store, backups and release-slot deploy rules.
pub(crate) fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut keep = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    keep("server.workers", old.server.workers != new.server.workers);
    keep("server.data_dir", old.server.data_dir != new.server.data_dir);
    keep(
        "server.admin",
        old.server.admin.as_ref().map(|a| a.listen) != new.server.admin.as_ref().map(|a| a.listen),
    );
    keep(
        "server.admin_token",
        old.server
            .admin
            .as_ref()
            .and_then(|a| a.token.as_ref().map(|t| t.expose().to_owned()))
            != new
                .server
                .admin
                .as_ref()
                .and_then(|a| a.token.as_ref().map(|t| t.expose().to_owned())),
    );
    keep(
        "server.watch_config",
        old.server.watch_config != new.server.watch_config,
    );
    // The model types do not implement PartialEq; their Debug output shows
    // every field (secrets as `***`, and there are none in these sections).
    keep("log", format!("{:?}", old.log) != format!("{:?}", new.log));
    keep("store", format!("{:?}", old.store) != format!("{:?}", new.store));
    keep("backup", format!("{:?}", old.backup) != format!("{:?}", new.backup));
    keep(
        "release",
        format!("{:?}", old.releases) != format!("{:?}", new.releases),
    );
    keep("server.https", old.server.https != new.server.https);
    // Secrets in [acme] print as `***`: a changed EAB key alone is not noticed.
    // `[tls] default_sni` follows the sites, so it is not restart-only.
    let default_sni = new.tls.default_sni.take();
    let mut old_tls = old.tls.clone();
    old_tls.default_sni = None;
    keep("acme, tls", format!("{old_tls:?}") != format!("{:?}", new.tls));
    new.server.workers = old.server.workers;
    new.server.https = old.server.https.clone();
    new.tls = Tls { default_sni, ..old_tls };
    new.server.data_dir = old.server.data_dir.clone();
    new.server.admin = old.server.admin.clone();
    new.server.watch_config = old.server.watch_config;
    new.log = old.log.clone();
    new.store = old.store.clone();
    new.backup = old.backup.clone();
    new.releases = old.releases.clone();
    changed
}

/// The config file's modification time, if it can be read.
pub(crate) fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Polls the config file's modification time and reloads when it changes.
/// `loaded` is the time read just before the running config was loaded, so a
/// change made between loading and the first poll is not missed.
pub(crate) async fn watch(controller: Controller, loaded: Option<SystemTime>) {
    let mut last = loaded;
    let mut ticker = tokio::time::interval(WATCH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = mtime(controller.path());
        if now.is_some() && now != last {
            last = now;
            // Errors are logged by the reload itself.
            let _ = controller.reload("file change").await;
        }
    }
}

/// `gatehouse reload`: asks the running server to reload its config file.
///
/// With `--admin URL`, or when the config names an admin address, through
/// `POST /reload` (the answer says whether it worked and why not); otherwise
/// with SIGHUP to the pid in `data_dir/gatehouse.lock` (the result is in the
/// server's log).
pub(crate) fn run(config_path: &Path, admin: Option<&str>) -> anyhow::Result<()> {
    let token = std::env::var("GATEHOUSE_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
    if let Some(url) = admin {
        return post_reload(url, token.as_deref());
    }
    let config = gatehouse_config::load(config_path).context(
        "the config is invalid, so the server was not asked to reload (it keeps serving its current config)",
    )?;
    if let Some(admin) = &config.server.admin {
        let mut addr = admin.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv6() {
                std::net::Ipv6Addr::LOCALHOST.into()
            } else {
                std::net::Ipv4Addr::LOCALHOST.into()
            });
        }
        let token = token.or_else(|| admin.token.as_ref().map(|t| t.expose().to_owned()));
        return post_reload(&format!("http://{addr}"), token.as_deref());
    }
    signal_server(&config.server.data_dir)
}

fn signal_server(data_dir: &Path) -> anyhow::Result<()> {
    let pid = match DataDirLock::acquire(data_dir) {
        Ok(_lock) => bail!("no gatehouse is running on data dir {}", data_dir.display()),
        Err(LockError::InUse { pid: Some(pid), .. }) => pid,
        Err(e) => return Err(e).context("cannot find the running server"),
    };
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("cannot send SIGHUP to pid {pid}");
    }
    println!("sent SIGHUP to gatehouse (pid {pid}); the server log shows the result");
    Ok(())
}

/// `POST {url}/reload` over a plain HTTP/1.1 connection, printing the outcome.
fn post_reload(url: &str, token: Option<&str>) -> anyhow::Result<()> {
    let authority = url
        .strip_prefix("http://")
        .with_context(|| format!("--admin must be an http:// URL, got {url}"))?
        .trim_end_matches('/');
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("invalid admin address {authority}"))?
        .next()
        .with_context(|| format!("admin address {authority} does not resolve"))?;
    let mut stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)
        .with_context(|| format!("cannot reach the admin API at {addr}"))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST /reload HTTP/1.1\r\nhost: {authority}\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).context("reading the admin API's answer")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the admin API sent no HTTP status")?;
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    if status == 200 && json["ok"] == true {
        println!("reloaded: now serving config generation {}", json["generation"]);
        for w in json["warnings"].as_array().into_iter().flatten() {
            eprintln!("warning: {}", w.as_str().unwrap_or_default());
        }
        return Ok(());
    }
    match json["error"].as_str() {
        Some(message) => bail!(
            "reload failed ({}): {message}",
            json["code"].as_str().unwrap_or("error")
        ),
        None => bail!("reload failed: the admin API answered {status}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(tls: &str) -> Config {
        let text = format!(
            "[server]\nhttps = [\"127.0.0.1:8443\"]\n{tls}\n\
             [[site]]\nhosts = [\"a.localhost\"]\n[[site]]\nhosts = [\"b.localhost\"]\n"
        );
        gatehouse_config::parse(&text, Path::new("/etc/gatehouse/gatehouse.toml")).unwrap()
    }

    #[test]
    fn default_sni_follows_a_reload_and_the_rest_of_tls_does_not() {
        let old = config("[tls]\ndefault_sni = \"a.localhost\"\n");
        let mut new = config("[tls]\ndefault_sni = \"b.localhost\"\n");
        assert!(keep_restart_only(&old, &mut new).is_empty());
        assert_eq!(new.tls.default_sni.as_deref(), Some("b.localhost"));

        let mut new = config("[tls]\ndefault_sni = \"b.localhost\"\nsni_mismatch = \"allow\"\n");
        assert_eq!(keep_restart_only(&old, &mut new), vec!["acme, tls"]);
        assert_eq!(new.tls.sni_mismatch, old.tls.sni_mismatch, "restart-only part kept");
        assert_eq!(new.tls.default_sni.as_deref(), Some("b.localhost"));
    }
}
