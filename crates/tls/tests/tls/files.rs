//! Certificates from PEM files, reloaded when the files change.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gatehouse_tls::{CertResolver, Challenges, FileCertWatcher, InternalCa};

use crate::common::TempDir;

#[tokio::test]
async fn files_are_loaded_and_reloaded_on_change() {
    let dir = TempDir::new("tls-files");
    let ca = InternalCa::load_or_create(&dir.0.join("ca")).unwrap();
    let (cert, key) = (dir.0.join("site.crt"), dir.0.join("site.key"));
    let first = ca.issue(&["files.test".into()], SystemTime::now()).unwrap();
    std::fs::write(&cert, &first.chain_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();

    let resolver = Arc::new(CertResolver::new(Arc::new(Challenges::new())));
    let watcher = FileCertWatcher::start(
        vec!["files.test".into()],
        cert.clone(),
        key.clone(),
        resolver.clone(),
        Duration::from_millis(20),
    )
    .unwrap();
    let served = resolver.lookup("files.test").unwrap();

    // A broken key is not applied: the previous certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(Arc::ptr_eq(&served, &resolver.lookup("files.test").unwrap()));

    let second = ca.issue(&["files.test".into()], SystemTime::now()).unwrap();
    std::fs::write(&cert, &second.chain_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = resolver.lookup("files.test").unwrap();
        if now.cert[0] != served.cert[0] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new files were not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(watcher);

    // Missing files are a startup error.
    let missing = FileCertWatcher::start(
        vec!["x.test".into()],
        dir.0.join("nope.crt"),
        key,
        resolver,
        Duration::from_secs(1),
    );
    assert!(missing.is_err());
}
