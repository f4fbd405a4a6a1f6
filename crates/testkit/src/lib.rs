//! Test harness for gatehouse.
//!
//! - [`upstream`]: backends on `127.0.0.1:0` with scripted behaviour (echo, fixed
//!   status, delay, close mid-body, connection reset, sink, generated bodies,
//!   WebSocket echo) that record the requests they receive.
//! - [`Gatehouse`]: a gatehouse server started in-process from a config string,
//!   with its access log captured for assertions.
//! - [`process`]: the real `gatehouse` binary as a child process, for signals,
//!   exit codes and memory measurements.
//! - [`client`]: a small HTTP client for tests.
//! - [`data`]: incompressible bytes and tar.gz release archives.
//! - [`pebble`]: the machine-wide lock for tests using Pebble's fixed ports.
//!
//! Everything binds to loopback and every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod client;
pub mod data;
pub mod pebble;
pub mod process;
pub mod upstream;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_config::LogFormat;
use gatehouse_edge::RunningServer;
use gatehouse_observe::AccessLog;

/// A gatehouse running in this process.
pub struct Gatehouse {
    server: Option<RunningServer>,
    access_log: Option<AccessLog>,
    log_buf: SharedBuf,
    /// The first HTTP listen address.
    pub addr: SocketAddr,
}

/// A clonable in-memory writer.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Gatehouse {
    /// Starts gatehouse from config text. Listen addresses should use port 0;
    /// when `[server] http` is absent, `127.0.0.1:0` is used. The access log is
    /// captured in memory (text format) whatever the config says.
    ///
    /// Panics with the config error if the text is invalid.
    pub fn start(toml: &str) -> Self {
        let config = Self::config(toml).unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        let log_buf = SharedBuf::default();
        let access_log = AccessLog::with_writer(Box::new(log_buf.clone()), LogFormat::Text).unwrap();
        let bound = gatehouse_edge::bind(Arc::new(config), access_log.sender()).unwrap();
        let addr = bound.local_addrs()[0];
        let server = bound.start().unwrap();
        Self {
            server: Some(server),
            access_log: Some(access_log),
            log_buf,
            addr,
        }
    }

    /// Validates config text as [`Gatehouse::start`] would (same defaults).
    pub fn config(toml: &str) -> Result<gatehouse_config::Config, gatehouse_config::ConfigError> {
        let text = if toml.contains("http =") || toml.contains("http=") {
            toml.to_owned()
        } else if toml.contains("[server]") {
            toml.replacen("[server]", "[server]\nhttp = [\"127.0.0.1:0\"]", 1)
        } else {
            format!("[server]\nhttp = [\"127.0.0.1:0\"]\nworkers = 2\n{toml}")
        };
        gatehouse_config::parse_with_env(&text, Path::new("test.toml"), &|_| None)
    }

    /// Reloads the running server from config text (defaults as in
    /// [`Gatehouse::start`]). An invalid config or one that cannot be applied
    /// returns the error text and changes nothing.
    pub fn reload(&self, toml: &str) -> Result<gatehouse_edge::Reloaded, String> {
        let config = Self::config(toml).map_err(|e| e.to_string())?;
        self.server
            .as_ref()
            .expect("server running")
            .reload(Arc::new(config))
            .map_err(|e| e.to_string())
    }

    /// The addresses being served now.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.server.as_ref().expect("server running").local_addrs()
    }

    /// A live view of the upstream targets.
    pub fn upstreams(&self) -> gatehouse_edge::UpstreamsView {
        self.server.as_ref().expect("server running").upstreams()
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The access log so far.
    pub fn access_log(&self) -> String {
        String::from_utf8_lossy(&self.log_buf.0.lock().unwrap()).into_owned()
    }

    /// Waits (up to 5 s) until an access-log line contains `needle`, and returns it.
    pub async fn wait_for_log_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self.access_log().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line contains {needle:?}:\n{}",
                self.access_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a graceful shutdown and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            server.wait().await;
        }
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        drop(self.access_log.take());
    }
}

/// Reads a `GATEHOUSE_TEST_*` variable for a test that needs an external program.
///
/// Without it the test should pass after printing one `skipped:` line — unless
/// `CI=true`, where a missing service is a failure.
pub fn external(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{var} must be set in CI");
            }
            println!("skipped: set {var} to run this test");
            None
        }
    }
}
