//! `gatehouse serve`: run until SIGTERM or SIGINT; reload on SIGHUP.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use gatehouse_admin::{
    AdminState, CertificateView, CertificatesSnapshot, CertificatesSource, ReloadSource, TargetView, UpstreamView,
    UpstreamsSnapshot, UpstreamsSource,
};
use gatehouse_config::Config;
use gatehouse_files::ReleaseStore;
use gatehouse_observe::AccessLog;
use gatehouse_store::Store;
use gatehouse_store::backup::{self, BackupStatus, DataDirLock};

pub(crate) fn run(path: &Path) -> anyhow::Result<()> {
    // SIGHUP's default action ends the process; until the control runtime
    // handles it, a reload sent too early is ignored instead.
    ignore_sighup()?;
    let loaded_mtime = crate::reload::mtime(path);
    let config = Arc::new(gatehouse_config::load(path)?);
    gatehouse_observe::init_tracing(&config.log.level, config.log.format)?;
    let data_dir = &config.server.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
    // Held until exit: `gatehouse restore` refuses to overwrite a live data_dir.
    let _data_dir_lock = DataDirLock::acquire(data_dir).context("cannot start")?;
    let access_log = AccessLog::start(&config.log.access_log, config.log.access_log_format)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    let mut bound = gatehouse_edge::bind(config.clone(), access_log.as_ref().and_then(AccessLog::sender))?;
    // Certificate renewal and file watching run on the control runtime.
    let certificates = {
        let _entered = runtime.enter();
        crate::tls::start(&config)?.map(Arc::new)
    };
    if let Some(certs) = &certificates {
        bound = bound.with_tls(certs.runtime.clone());
    }
    // Bound with the edge's listeners: a busy admin port stops startup before
    // anything serves.
    let admin_listener = match &config.server.admin {
        Some(admin) => Some(
            std::net::TcpListener::bind(admin.listen)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .with_context(|| format!("cannot listen on server.admin {}", admin.listen))?,
        ),
        None => None,
    };
    // Listened for before "serving on" is printed and anything serves: a
    // SIGTERM sent as soon as that line appears, or the first request is
    // answered, starts a graceful shutdown instead of ending the process by
    // its default action.
    let mut stop_signals = {
        let _entered = runtime.enter();
        StopSignals::new()?
    };
    for addr in bound.local_addrs() {
        println!(
            "gatehouse {} is serving on {}",
            env!("CARGO_PKG_VERSION"),
            open_url("http", *addr)
        );
    }
    for addr in bound.https_addrs() {
        println!(
            "gatehouse {} is serving on {}",
            env!("CARGO_PKG_VERSION"),
            open_url("https", *addr)
        );
    }
    if let Some(listener) = &admin_listener {
        println!("gatehouse admin API on http://{}/", listener.local_addr()?);
    }
    let server = bound.start()?;
    let controller = crate::reload::Controller::new(path, server.reloader(), config.clone(), certificates.clone());
    runtime.block_on(async {
        // The store connects and migrates in the background; a database that is
        // down is retried with backoff and does not stop the proxy.
        let store = Store::open(crate::storage::store_options(&config))?;
        let _backups = config.backup.every.map(|every| {
            let status = BackupStatus::new();
            backup::run_schedule(store.clone(), crate::storage::backup_options(&config), every, status)
        });
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = match admin_listener {
            Some(listener) => Some(start_admin(
                &config,
                server.upstreams(),
                controller.clone(),
                certificates.clone(),
                listener,
                async move {
                    let _ = admin_stopped.await;
                },
            )?),
            None => None,
        };
        let watcher = config
            .server
            .watch_config
            .then(|| tokio::spawn(crate::reload::watch(controller.clone(), loaded_mtime)));
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        let signal = loop {
            tokio::select! {
                signal = stop_signals.recv() => break signal,
                _ = hup.recv() => {
                    // The outcome is logged by the reload itself.
                    let _ = controller.reload("SIGHUP").await;
                }
            }
        };
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        tracing::info!(%signal, deadline = ?config.server.shutdown_timeout, "Shutting down gracefully.");
        server.shutdown();
        let _ = admin_stop.send(());
        // An upload still running past the deadline is dropped with the
        // runtime; its staging directory is removed, the slot is unchanged.
        let admin_done = async {
            if let Some(task) = admin {
                let _ = tokio::time::timeout(config.server.shutdown_timeout, task).await;
            }
        };
        let forced = tokio::select! {
            () = async {
                tokio::join!(server.wait(), admin_done);
            } => false,
            _ = stop_signals.recv() => true,
        };
        if forced {
            tracing::warn!("Second signal: exiting without waiting for connections.");
            std::process::exit(130);
        }
        anyhow::Ok(())
    })?;
    // The edge's state holds the access log's sender, and the reload handles
    // (the controller, the admin API's tasks) hold the edge's state: they go
    // first, so the log thread sees the last sender go and finishes.
    drop(controller);
    drop(certificates);
    drop(runtime);
    if let Some(log) = access_log {
        log.finish();
    }
    tracing::info!("Stopped.");
    Ok(())
}

/// Serves the admin API on the control runtime until `shutdown`.
fn start_admin(
    config: &Config,
    upstreams: gatehouse_edge::UpstreamsView,
    controller: crate::reload::Controller,
    certificates: Option<Arc<crate::tls::Certificates>>,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::from_std(listener).context("cannot use the admin listener")?;
    let releases = ReleaseStore::open(&config.server.data_dir)
        .with_context(|| format!("cannot open releases under {}", config.server.data_dir.display()))?;
    // Only slots the config knows (served by a route or declared) are deployable.
    let deploy = config
        .releases
        .iter()
        .map(|r| (r.name.clone(), crate::releases::deploy_options(config, &r.name)))
        .collect();
    let token = config
        .server
        .admin
        .as_ref()
        .and_then(|a| a.token.as_ref())
        .map(|t| t.expose().to_owned());
    if token.is_none() {
        tracing::info!("The admin API has no token: any local process may use it (loopback only).");
    }
    let upstreams = UpstreamsSource::new(move || {
        let (generation, snapshot) = upstreams.snapshot_with_generation();
        let upstreams = snapshot
            .into_iter()
            .map(|u| UpstreamView {
                name: u.name,
                policy: u.policy.to_owned(),
                targets: u
                    .targets
                    .into_iter()
                    .map(|t| TargetView {
                        address: t.address,
                        weight: t.weight,
                        state: t.state.to_owned(),
                        ejected_for_ms: t.ejected_for.as_millis() as u64,
                    })
                    .collect(),
            })
            .collect();
        UpstreamsSnapshot { generation, upstreams }
    });
    let reload = ReloadSource::new(move || {
        let controller = controller.clone();
        async move { controller.reload("admin API").await }
    });
    let certificates = CertificatesSource::new(move || CertificatesSnapshot {
        certificates: certificates
            .as_ref()
            .map(|c| c.expiries())
            .unwrap_or_default()
            .into_iter()
            .map(|e| CertificateView {
                name: e.name,
                not_after: humantime::format_rfc3339_seconds(e.not_after).to_string(),
                days_left: e.days_left,
            })
            .collect(),
    });
    let router = gatehouse_admin::router(
        AdminState::new(releases, deploy, token)
            .with_upstreams(upstreams)
            .with_certificates(certificates)
            .with_reload(reload),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = gatehouse_admin::serve(listener, router, shutdown).await {
            tracing::error!(error = %e, "The admin API stopped.");
        }
    }))
}

/// A URL a person can open for a listen address.
fn open_url(scheme: &str, addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        "localhost".to_owned()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("{scheme}://{host}:{}/", addr.port())
}

/// SIGTERM and SIGINT, each of which asks the server to stop.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers; call inside a runtime.
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    /// The next stop signal's name (one that arrived since `new` counts).
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Installs tokio's SIGHUP handler at once: it stays installed for the
/// process's life, so a SIGHUP arriving before the control loop listens is
/// ignored instead of ending the process.
fn ignore_sighup() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("cannot start the signal runtime")?;
    rt.block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map(drop) })
        .context("cannot listen for SIGHUP")
}
