//! Pebble, Let's Encrypt's ACME test server, for tests that need real issuance.
//!
//! Pebble validates HTTP-01 on port 5002 and TLS-ALPN-01 on port 5001 and listens on
//! fixed ports itself (14000, 15000, 8053, 8055), so at most one test in the whole
//! machine may use it at a time, across test binaries and crates. [`lock`] takes a
//! machine-wide lock for that; every Pebble test holds it for its whole run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `pebble-challtestsrv` as the tests run it: every name resolves
/// to 127.0.0.1, and only its DNS server and management API listen (gatehouse
/// itself answers the challenges).
pub const CHALLTESTSRV_ARGS: &[&str] = &[
    "-defaultIPv4",
    "127.0.0.1",
    "-defaultIPv6",
    "",
    "-dns01",
    DNS_SERVER,
    "-http01",
    "",
    "-tlsalpn01",
    "",
    "-https01",
    "",
    "-management",
    "127.0.0.1:8055",
];
/// The DNS server (challtestsrv's) that `pebble -dnsserver` is pointed at.
pub const DNS_SERVER: &str = "127.0.0.1:8053";
/// Environment of `pebble` in tests: no sleeps before validation, no nonces
/// rejected on purpose.
pub const PEBBLE_ENV: &[(&str, &str)] = &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")];

/// The lock directory: created atomically by whoever holds the lock.
pub const LOCK_DIR: &str = "/tmp/gatehouse-pebble.lock";
/// Longest wait for another Pebble test to finish.
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// Held while a test uses Pebble's fixed ports; released on drop.
#[derive(Debug)]
pub struct PebbleLock(PathBuf);

impl Drop for PebbleLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits (up to 10 minutes) until no other process uses Pebble's ports, then holds
/// the lock. A lock left by a process that no longer exists is taken over.
pub fn lock() -> PebbleLock {
    let dir = PathBuf::from(LOCK_DIR);
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                std::fs::write(dir.join("pid"), std::process::id().to_string()).unwrap();
                return PebbleLock(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(dir.join("pid")).ok();
                let alive = holder
                    .as_deref()
                    .and_then(|p| p.trim().parse::<u32>().ok())
                    .is_none_or(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
                if !alive {
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
                assert!(Instant::now() < deadline, "another test held {LOCK_DIR} for too long");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("cannot create {LOCK_DIR}: {e}"),
        }
    }
}

/// The `pebble` and `pebble-challtestsrv` binaries from `GATEHOUSE_TEST_PEBBLE`
/// (`1`: from `PATH`; else the path of `pebble`, with `pebble-challtestsrv` beside
/// it or in `PATH`), or `None` after printing a `skipped:` line (a failure when
/// `CI=true`).
pub fn binaries() -> Option<(PathBuf, PathBuf)> {
    let value = crate::external("GATEHOUSE_TEST_PEBBLE")?;
    if value == "1" || value == "true" {
        return Some(("pebble".into(), "pebble-challtestsrv".into()));
    }
    let pebble = PathBuf::from(value);
    let beside = pebble.with_file_name("pebble-challtestsrv");
    let challtestsrv = if beside.is_file() {
        beside
    } else {
        "pebble-challtestsrv".into()
    };
    Some((pebble, challtestsrv))
}
