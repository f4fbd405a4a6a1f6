//! The file store: round trips, permissions, listing, accounts and leases.

use std::time::Duration;

use gatehouse_tls::{CertPem, CertStore, FileStore};

use crate::common::TempDir;

#[tokio::test]
async fn certificates_round_trip_with_private_keys() {
    let dir = TempDir::new("tls-store");
    let store = FileStore::new(dir.0.join("certs"));
    assert_eq!(store.load_cert("a.test").await.unwrap(), None);
    assert!(store.list_certs().await.unwrap().is_empty());

    let cert = CertPem {
        chain_pem: "chain-a".into(),
        key_pem: "key-a".into(),
    };
    store.save_cert("a.test", &cert).await.unwrap();
    store.save_cert("*.wild.test", &cert).await.unwrap();
    store.save_cert("::1", &cert).await.unwrap();
    assert_eq!(store.load_cert("a.test").await.unwrap(), Some(cert.clone()));
    assert_eq!(store.load_cert("*.wild.test").await.unwrap(), Some(cert.clone()));
    assert_eq!(store.list_certs().await.unwrap(), vec!["*.wild.test", "::1", "a.test"]);

    let replaced = CertPem {
        chain_pem: "chain-b".into(),
        key_pem: "key-b".into(),
    };
    store.save_cert("a.test", &replaced).await.unwrap();
    assert_eq!(store.load_cert("a.test").await.unwrap(), Some(replaced));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let site = dir.0.join("certs/sites/a.test");
        let mode = |f: &str| std::fs::metadata(site.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("key.pem"), 0o600);
        assert_eq!(mode("cert.pem"), 0o644);
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(&site)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    assert!(store.save_cert("../escape", &cert).await.is_err());
    assert!(store.load_cert("a/b").await.is_err());
}

#[tokio::test]
async fn accounts_are_per_directory_and_secret() {
    let dir = TempDir::new("tls-accounts");
    let store = FileStore::new(&dir.0);
    let url = "https://127.0.0.1:14000/dir";
    assert_eq!(store.load_account(url).await.unwrap(), None);
    store.save_account(url, "{\"secret\":1}").await.unwrap();
    assert_eq!(
        store.load_account(url).await.unwrap().as_deref(),
        Some("{\"secret\":1}")
    );
    assert_eq!(store.load_account("https://other.example/dir").await.unwrap(), None);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let file = std::fs::read_dir(dir.0.join("accounts"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[tokio::test]
async fn leases_exclude_other_holders_until_released_or_expired() {
    let dir = TempDir::new("tls-locks");
    let store = FileStore::new(&dir.0);
    let long = Duration::from_secs(600);
    assert!(store.try_lock("a.test", "one", long).await.unwrap());
    assert!(
        store.try_lock("a.test", "one", long).await.unwrap(),
        "the holder renews"
    );
    assert!(!store.try_lock("a.test", "two", long).await.unwrap());
    assert!(
        store.try_lock("b.test", "two", long).await.unwrap(),
        "leases are per name"
    );
    store.unlock("a.test", "two").await.unwrap();
    assert!(
        !store.try_lock("a.test", "two", long).await.unwrap(),
        "only the holder unlocks"
    );
    store.unlock("a.test", "one").await.unwrap();
    assert!(store.try_lock("a.test", "two", Duration::ZERO).await.unwrap());
    assert!(
        store.try_lock("a.test", "one", long).await.unwrap(),
        "an expired lease is free"
    );
}
