//! The repository suite: every behaviour on both backends.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gatehouse_store::{AcmeAccount, CertRepo, MetaRepo, NewCertificate, NewRelease, ReleaseRepo, Store, StoreError};

use crate::common::both_backends;

both_backends!(
    releases_create_get_list,
    releases_activate_and_roll_back,
    releases_prune_keeps_newest_and_active,
    releases_concurrent_activations_leave_one_active,
    releases_reject_invalid_input,
    certificates_round_trip,
    acme_accounts_round_trip,
    cert_lock_is_a_lease,
    cert_lock_has_one_winner_under_contention,
    meta_round_trip,
    repos_work_behind_trait_objects,
);

fn release(slot: &str, id: &str) -> NewRelease {
    NewRelease {
        slot: slot.to_owned(),
        release_id: id.to_owned(),
        size_bytes: 1000 + id.len() as u64,
        file_count: 3,
    }
}

async fn releases_create_get_list(store: &Store) {
    let repo = store.releases();
    let before = SystemTime::now() - Duration::from_secs(1);
    let r1 = repo.create(release("frontend", "r1")).await.unwrap();
    assert!(!r1.active);
    assert!(r1.created_at >= before);
    repo.create(release("frontend", "r2")).await.unwrap();
    repo.create(release("frontend", "r3")).await.unwrap();
    repo.create(release("admin", "r1")).await.unwrap();

    let ids: Vec<_> = repo
        .list("frontend")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.release_id)
        .collect();
    assert_eq!(ids, ["r3", "r2", "r1"], "newest first");
    assert_eq!(repo.list("admin").await.unwrap().len(), 1);
    assert!(repo.list("nothing").await.unwrap().is_empty());

    let got = repo.get("frontend", "r1").await.unwrap().unwrap();
    assert_eq!(got, r1);
    assert_eq!(got.size_bytes, 1002);
    assert_eq!(got.file_count, 3);
    assert!(repo.get("frontend", "nope").await.unwrap().is_none());

    let err = repo.create(release("frontend", "r2")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { entity: "release", key } if key == "frontend/r2"),
        "{err:?}"
    );
}

async fn releases_activate_and_roll_back(store: &Store) {
    let repo = store.releases();
    for id in ["r1", "r2", "r3"] {
        repo.create(release("site", id)).await.unwrap();
    }
    assert!(repo.active("site").await.unwrap().is_none());

    let active = repo.activate("site", "r2").await.unwrap();
    assert!(active.active);
    assert_eq!(active.release_id, "r2");
    assert_eq!(repo.active("site").await.unwrap().unwrap().release_id, "r2");

    repo.activate("site", "r3").await.unwrap();
    let flags: Vec<_> = repo
        .list("site")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.release_id, r.active))
        .collect();
    assert_eq!(
        flags,
        [
            ("r3".to_owned(), true),
            ("r2".to_owned(), false),
            ("r1".to_owned(), false)
        ]
    );

    // Rollback to an older release.
    repo.activate("site", "r1").await.unwrap();
    assert_eq!(repo.active("site").await.unwrap().unwrap().release_id, "r1");

    let err = repo.activate("site", "missing").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let err = repo.activate("other-slot", "r1").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(
        repo.active("site").await.unwrap().unwrap().release_id,
        "r1",
        "a failed activation changes nothing"
    );
}

async fn releases_prune_keeps_newest_and_active(store: &Store) {
    let repo = store.releases();
    for id in ["r1", "r2", "r3", "r4", "r5"] {
        repo.create(release("site", id)).await.unwrap();
    }
    repo.create(release("other", "x1")).await.unwrap();
    repo.activate("site", "r1").await.unwrap();

    let removed: Vec<_> = repo
        .prune("site", 2)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.release_id)
        .collect();
    assert_eq!(removed, ["r3", "r2"]);
    let left: Vec<_> = repo
        .list("site")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.release_id)
        .collect();
    assert_eq!(left, ["r5", "r4", "r1"], "newest two and the active one stay");
    assert!(repo.prune("site", 2).await.unwrap().is_empty());
    assert_eq!(repo.list("other").await.unwrap().len(), 1);

    // keep = 0 removes everything but the active release.
    let removed = repo.prune("site", 0).await.unwrap();
    assert_eq!(removed.len(), 2);
    let left = repo.list("site").await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].active);
}

async fn releases_concurrent_activations_leave_one_active(store: &Store) {
    let repo = store.releases();
    let ids: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    for id in &ids {
        repo.create(release("busy", id)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for round in 0..3 {
        for id in &ids {
            let repo = store.releases();
            let id = id.clone();
            tasks.push(tokio::spawn(
                async move { repo.activate("busy", &id).await.map(|_| round) },
            ));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let active: Vec<_> = repo
        .list("busy")
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.active)
        .collect();
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(
        repo.active("busy").await.unwrap().unwrap().release_id,
        active[0].release_id
    );
}

async fn releases_reject_invalid_input(store: &Store) {
    let repo = store.releases();
    let err = repo.create(release("", "r1")).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { what: "slot", .. }), "{err:?}");
    let err = repo.create(release("s", "a\nb")).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
    let mut huge = release("s", "r1");
    huge.size_bytes = u64::MAX;
    let err = repo.create(huge).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { what: "size_bytes", .. }), "{err:?}");
    assert!(repo.list("s").await.unwrap().is_empty());
}

async fn certificates_round_trip(store: &Store) {
    let repo = store.certs();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_millis(1_900_000_000_123);
    let cert = NewCertificate {
        name: "app.example.com".to_owned(),
        chain_pem: "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n".to_owned(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----\n".to_owned(),
        not_after,
    };
    assert!(!format!("{cert:?}").contains("SECRETKEY"), "keys are never printed");
    repo.put_certificate(cert.clone()).await.unwrap();
    repo.put_certificate(NewCertificate {
        name: "api.example.com".to_owned(),
        ..cert.clone()
    })
    .await
    .unwrap();

    let got = repo.certificate("app.example.com").await.unwrap().unwrap();
    assert_eq!(got.chain_pem, cert.chain_pem);
    assert_eq!(got.key_pem, cert.key_pem);
    assert_eq!(got.not_after, not_after);
    assert!(!format!("{got:?}").contains("SECRETKEY"));
    assert!(repo.certificate("nope").await.unwrap().is_none());

    // Renewal replaces the row.
    let renewed = not_after + Duration::from_secs(90 * 86_400);
    repo.put_certificate(NewCertificate {
        chain_pem: "NEW CHAIN".to_owned(),
        not_after: renewed,
        ..cert.clone()
    })
    .await
    .unwrap();
    let got = repo.certificate("app.example.com").await.unwrap().unwrap();
    assert_eq!(got.chain_pem, "NEW CHAIN");
    assert_eq!(got.not_after, renewed);

    let names: Vec<_> = repo
        .list_certificates()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.not_after))
        .collect();
    assert_eq!(
        names,
        [
            ("api.example.com".to_owned(), not_after),
            ("app.example.com".to_owned(), renewed)
        ]
    );

    assert!(repo.delete_certificate("api.example.com").await.unwrap());
    assert!(!repo.delete_certificate("api.example.com").await.unwrap());
    assert_eq!(repo.list_certificates().await.unwrap().len(), 1);
}

async fn acme_accounts_round_trip(store: &Store) {
    let repo = store.certs();
    let dir = "https://acme-v02.api.letsencrypt.org/directory";
    assert!(repo.account(dir).await.unwrap().is_none());
    let account = AcmeAccount {
        directory_url: dir.to_owned(),
        account_url: "https://acme/acct/1".to_owned(),
        credentials: "{\"key\":\"TOPSECRET\"}".to_owned(),
    };
    assert!(!format!("{account:?}").contains("TOPSECRET"));
    repo.put_account(account.clone()).await.unwrap();
    assert_eq!(repo.account(dir).await.unwrap().unwrap(), account);
    let replaced = AcmeAccount {
        account_url: "https://acme/acct/2".to_owned(),
        ..account.clone()
    };
    repo.put_account(replaced.clone()).await.unwrap();
    assert_eq!(repo.account(dir).await.unwrap().unwrap(), replaced);
    assert!(repo.account("https://other/dir").await.unwrap().is_none());
}

async fn cert_lock_is_a_lease(store: &Store) {
    let repo = store.certs();
    let ttl = Duration::from_secs(60);
    assert!(repo.try_lock("app.example.com", "i-1", ttl).await.unwrap());
    assert!(!repo.try_lock("app.example.com", "i-2", ttl).await.unwrap());
    assert!(
        repo.try_lock("app.example.com", "i-1", ttl).await.unwrap(),
        "the holder renews"
    );
    assert!(
        repo.try_lock("api.example.com", "i-2", ttl).await.unwrap(),
        "locks are per name"
    );
    assert!(!repo.unlock("app.example.com", "i-2").await.unwrap());
    assert!(repo.unlock("app.example.com", "i-1").await.unwrap());
    assert!(repo.try_lock("app.example.com", "i-2", ttl).await.unwrap());

    // An expired lease is taken over.
    assert!(
        repo.try_lock("short.example.com", "i-1", Duration::from_millis(800))
            .await
            .unwrap()
    );
    assert!(!repo.try_lock("short.example.com", "i-2", ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(repo.try_lock("short.example.com", "i-2", ttl).await.unwrap());
    assert!(!repo.try_lock("short.example.com", "i-1", ttl).await.unwrap());
}

async fn cert_lock_has_one_winner_under_contention(store: &Store) {
    let mut tasks = Vec::new();
    for i in 0..12 {
        let repo = store.certs();
        tasks.push(tokio::spawn(async move {
            let holder = format!("instance-{i}");
            repo.try_lock("contended.example.com", &holder, Duration::from_secs(60))
                .await
                .map(|won| won.then_some(holder))
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(holder) = task.await.unwrap().unwrap() {
            winners.push(holder);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
}

async fn meta_round_trip(store: &Store) {
    let meta = store.meta();
    assert!(meta.get("instance").await.unwrap().is_none());
    meta.set("instance", "one").await.unwrap();
    assert_eq!(meta.get("instance").await.unwrap().as_deref(), Some("one"));
    meta.set("instance", "two ünïcode").await.unwrap();
    assert_eq!(meta.get("instance").await.unwrap().as_deref(), Some("two ünïcode"));
    assert!(meta.delete("instance").await.unwrap());
    assert!(!meta.delete("instance").await.unwrap());
    assert!(meta.get("instance").await.unwrap().is_none());
    let err = meta.set("", "x").await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
}

async fn repos_work_behind_trait_objects(store: &Store) {
    let releases: Arc<dyn ReleaseRepo> = Arc::new(store.releases());
    let certs: Arc<dyn CertRepo> = Arc::new(store.certs());
    let meta: Arc<dyn MetaRepo> = Arc::new(store.meta());
    releases.create(release("dyn", "a")).await.unwrap();
    assert_eq!(releases.list("dyn").await.unwrap().len(), 1);
    assert!(certs.list_certificates().await.unwrap().is_empty());
    meta.set("k", "v").await.unwrap();
    let keys: HashSet<_> = [meta.get("k").await.unwrap()].into_iter().collect();
    assert!(keys.contains(&Some("v".to_owned())));
}
