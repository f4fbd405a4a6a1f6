//! Backups: consistent under writes, verified on restore, refused when damaged or in use.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gatehouse_store::backup::{self, BackupError, BackupOptions, BackupStatus, DataDirLock, LockError, RestoreOptions};
use gatehouse_store::{Backend, MetaRepo, NewRelease, ReleaseRepo, Store};
use sqlx::Connection;

use crate::common::{self, PgScratch, READY};

/// Files a real data_dir holds besides the database.
fn populate(data_dir: &Path) {
    fs::create_dir_all(data_dir.join("keys")).unwrap();
    fs::write(data_dir.join("keys/jwt.pem"), "-----BEGIN PRIVATE KEY-----\nk\n").unwrap();
    fs::set_permissions(data_dir.join("keys/jwt.pem"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir_all(data_dir.join("certs/app.example.com")).unwrap();
    fs::write(data_dir.join("certs/app.example.com/chain.pem"), "CHAIN").unwrap();
    fs::create_dir_all(data_dir.join("releases/frontend/r1/assets")).unwrap();
    fs::write(
        data_dir.join("releases/frontend/r1/index.html"),
        "<!doctype html><title>app</title>",
    )
    .unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(data_dir.join("releases/frontend/r1/assets/app.js"), big).unwrap();
    fs::create_dir_all(data_dir.join("empty")).unwrap();
}

/// Every file and directory under `root` (relative path → contents and mode), skipping
/// top-level names for which `skip` is true.
fn tree(root: &Path, skip: &dyn Fn(&str) -> bool) -> BTreeMap<PathBuf, (Option<Vec<u8>>, u32)> {
    fn walk(root: &Path, rel: &Path, skip: &dyn Fn(&str) -> bool, out: &mut BTreeMap<PathBuf, (Option<Vec<u8>>, u32)>) {
        for entry in fs::read_dir(root.join(rel)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if rel.as_os_str().is_empty() && skip(&name.to_string_lossy()) {
                continue;
            }
            let child = rel.join(&name);
            let meta = entry.metadata().unwrap();
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_dir() {
                out.insert(child.clone(), (None, mode));
                walk(root, &child, skip, out);
            } else {
                out.insert(child, (Some(fs::read(entry.path()).unwrap()), mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), skip, &mut out);
    out
}

fn skip_db_and_backups(name: &str) -> bool {
    name.starts_with("gatehouse.db") || name == "backups" || name == "gatehouse.lock"
}

async fn open_sqlite(db: &Path) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_writes_restores_every_acknowledged_write() {
    let t = common::sqlite().await;
    populate(&t.data_dir);
    let options = BackupOptions::new(&t.data_dir);

    // One writer, so the acknowledged writes are exactly keys 0..acked.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let meta = t.store.meta();
        let acked = acked.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            for i in 0..200_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                meta.set(&format!("w{i:07}"), "payload").await.unwrap();
                acked.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    while acked.load(Ordering::SeqCst) < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before_snapshot = acked.load(Ordering::SeqCst);
    let report = backup::take_backup(&t.store, &options).await.unwrap();
    let after_snapshot = acked.load(Ordering::SeqCst);
    // Keep writing a little after the snapshot, then stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let total = acked.load(Ordering::SeqCst);
    assert!(after_snapshot > before_snapshot, "writes went on during the backup");

    assert_eq!(report.backend, Backend::Sqlite);
    assert!(report.path.is_file());
    assert!(report.checksum_path.is_file());
    let sidecar = fs::read_to_string(&report.checksum_path).unwrap();
    assert!(sidecar.starts_with(&report.sha256));
    assert!(
        sidecar
            .trim_end()
            .ends_with(report.path.file_name().unwrap().to_str().unwrap())
    );
    assert_eq!(report.size_bytes, fs::metadata(&report.path).unwrap().len());
    assert_eq!(report.files, 5, "4 data files and the database");

    let verified = backup::verify(&report.path).unwrap();
    assert!(verified.checksum_file_verified);
    assert_eq!(verified.files, 5);

    // Restore into a new, empty data directory (a fresh machine).
    let target_root = tempfile::tempdir().unwrap();
    let target = target_root.path().join("data");
    let restored = backup::restore(&report.path, &target, RestoreOptions::default()).unwrap();
    assert!(restored.previous.is_none());
    assert!(!restored.forced);
    let db = restored.database.clone().unwrap();
    assert_eq!(db, target.join("gatehouse.db"));

    let mut conn = open_sqlite(&db).await;
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM gatehouse_meta WHERE key LIKE 'w%'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let rows = u64::try_from(rows).unwrap();
    assert!(
        rows >= before_snapshot,
        "{rows} rows restored, {before_snapshot} acknowledged before the snapshot"
    );
    assert!(rows <= total);
    let (max_key,): (String,) = sqlx::query_as("SELECT MAX(key) FROM gatehouse_meta WHERE key LIKE 'w%'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(max_key, format!("w{:07}", rows - 1), "no gaps: a prefix of the writes");
    conn.close().await.unwrap();

    // Files come back byte for byte, with their permissions; the live database files and
    // the backups directory were not archived.
    let original = tree(&t.data_dir, &skip_db_and_backups);
    let copy = tree(&target, &skip_db_and_backups);
    assert_eq!(original, copy);
    assert_eq!(
        fs::metadata(target.join("keys/jwt.pem")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!target.join("backups").exists());
    assert!(!target.join("gatehouse.db-wal").exists());

    // The restored directory works as a store.
    let store = Store::open(common::options("sqlite://gatehouse.db", &target)).unwrap();
    store.wait_ready(READY).await.unwrap();
    assert_eq!(store.meta().get("w0000000").await.unwrap().as_deref(), Some("payload"));
    store.close().await;
    t.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_over_a_data_dir_moves_the_old_contents_aside() {
    let t = common::sqlite().await;
    populate(&t.data_dir);
    t.store
        .releases()
        .create(NewRelease {
            slot: "frontend".to_owned(),
            release_id: "r1".to_owned(),
            size_bytes: 10,
            file_count: 1,
        })
        .await
        .unwrap();
    let options = BackupOptions::new(&t.data_dir);
    let report = backup::take_backup(&t.store, &options).await.unwrap();

    // Life goes on after the backup…
    t.store.releases().activate("frontend", "r1").await.unwrap();
    fs::write(t.data_dir.join("keys/jwt.pem"), "ROTATED").unwrap();
    fs::write(t.data_dir.join("new-after-backup.txt"), "x").unwrap();
    // A backup directory configured after that backup was taken.
    fs::create_dir_all(t.data_dir.join("snapshots")).unwrap();
    fs::write(t.data_dir.join("snapshots/other.tar.gz"), "x").unwrap();
    t.store.close().await;

    // …then the server is stopped and the backup restored in place.
    let options = RestoreOptions {
        backup_dir: Some(t.data_dir.join("snapshots")),
        ..RestoreOptions::default()
    };
    let restored = backup::restore(&report.path, &t.data_dir, options).unwrap();
    assert!(
        t.data_dir.join("snapshots/other.tar.gz").is_file(),
        "the backup dir stays"
    );
    let previous = restored.previous.clone().unwrap();
    assert!(previous.starts_with(&t.data_dir));
    assert!(previous.join("new-after-backup.txt").is_file());
    assert_eq!(fs::read_to_string(previous.join("keys/jwt.pem")).unwrap(), "ROTATED");
    assert!(!t.data_dir.join("new-after-backup.txt").exists());
    assert!(
        fs::read_to_string(t.data_dir.join("keys/jwt.pem"))
            .unwrap()
            .starts_with("-----BEGIN")
    );
    assert!(report.path.is_file(), "the backups directory stays in place");

    let store = Store::open(common::options("sqlite://gatehouse.db", &t.data_dir)).unwrap();
    store.wait_ready(READY).await.unwrap();
    let releases = store.releases().list("frontend").await.unwrap();
    assert_eq!(releases.len(), 1);
    assert!(!releases[0].active, "the state at backup time");
    store.close().await;
}

/// A data directory with a store, a backup of it, and the store closed.
async fn backed_up() -> (common::TestStore, PathBuf) {
    let t = common::sqlite().await;
    populate(&t.data_dir);
    t.store.meta().set("k", "v").await.unwrap();
    let report = backup::take_backup(&t.store, &BackupOptions::new(&t.data_dir))
        .await
        .unwrap();
    t.store.meta().set("k", "changed after the backup").await.unwrap();
    t.store.close().await;
    (t, report.path)
}

/// The contents of a data_dir that a restore may change (the test damages the archive in
/// `backups`, and the restore takes the lock).
fn restorable(data_dir: &Path) -> BTreeMap<PathBuf, (Option<Vec<u8>>, u32)> {
    tree(data_dir, &|name| name == "gatehouse.lock" || name == "backups")
}

/// Asserts that a refused restore left `data_dir` exactly as it was.
fn assert_untouched(data_dir: &Path, before: &BTreeMap<PathBuf, (Option<Vec<u8>>, u32)>) {
    let after = restorable(data_dir);
    let differing: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(differing.is_empty(), "data_dir changed: {differing:?}");
    for entry in fs::read_dir(data_dir).unwrap() {
        let name = entry.unwrap().file_name();
        let name = name.to_string_lossy();
        assert!(
            !name.starts_with(".restore-") && !name.starts_with(".pre-restore-"),
            "leftover {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_backup_is_refused_and_nothing_is_overwritten() {
    let (t, archive) = backed_up().await;
    let len = fs::metadata(&archive).unwrap().len() as usize;
    let pristine = fs::read(&archive).unwrap();
    let before = restorable(&t.data_dir);

    // A flipped byte in the compressed data, with and without the checksum file.
    for (offset, keep_sidecar) in [(len / 2, true), (len / 3, false), (len - 12, false)] {
        let mut bytes = pristine.clone();
        bytes[offset] ^= 0x55;
        fs::write(&archive, &bytes).unwrap();
        let sidecar = archive.with_extension("gz.sha256");
        let saved = fs::read(&sidecar).ok();
        if !keep_sidecar {
            let _ = fs::remove_file(&sidecar);
        }
        let err = backup::restore(&archive, &t.data_dir, RestoreOptions::default()).unwrap_err();
        assert!(
            matches!(err, BackupError::Corrupt { .. } | BackupError::Truncated { .. }),
            "offset {offset}: {err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("nothing was restored"), "{message}");
        assert!(message.contains(archive.to_str().unwrap()), "{message}");
        assert!(backup::verify(&archive).is_err());
        assert_untouched(&t.data_dir, &before);
        if let Some(saved) = saved {
            fs::write(&sidecar, saved).unwrap();
        }
    }

    // A flip outside any checksummed content (the gzip header's timestamp) is still caught
    // by the archive's own SHA-256.
    let mut bytes = pristine.clone();
    bytes[5] ^= 0x01;
    fs::write(&archive, &bytes).unwrap();
    let err = backup::restore(&archive, &t.data_dir, RestoreOptions::default()).unwrap_err();
    assert!(
        matches!(&err, BackupError::Corrupt { reason, .. } if reason.contains("SHA-256")),
        "{err:?}"
    );
    assert_untouched(&t.data_dir, &before);

    // The intact archive still restores.
    fs::write(&archive, &pristine).unwrap();
    backup::restore(&archive, &t.data_dir, RestoreOptions::default()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_backup_is_refused_and_nothing_is_overwritten() {
    let (t, archive) = backed_up().await;
    let pristine = fs::read(&archive).unwrap();
    let before = restorable(&t.data_dir);
    let sidecar = archive.with_extension("gz.sha256");
    let saved_sidecar = fs::read(&sidecar).unwrap();

    for cut in [pristine.len() / 2, pristine.len() - 4, 100] {
        fs::write(&archive, &pristine[..cut]).unwrap();
        for with_sidecar in [true, false] {
            if with_sidecar {
                fs::write(&sidecar, &saved_sidecar).unwrap();
            } else {
                let _ = fs::remove_file(&sidecar);
            }
            let err = backup::restore(&archive, &t.data_dir, RestoreOptions::default()).unwrap_err();
            assert!(matches!(err, BackupError::Truncated { .. }), "cut at {cut}: {err:?}");
            assert!(err.to_string().contains("truncated"), "{err}");
            assert_untouched(&t.data_dir, &before);
        }
    }
    fs::write(&sidecar, &saved_sidecar).unwrap();
    fs::write(&archive, &pristine).unwrap();
    backup::verify(&archive).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_is_refused_while_the_data_dir_is_locked_unless_forced() {
    let (t, archive) = backed_up().await;
    let before = restorable(&t.data_dir);

    let lock = DataDirLock::acquire(&t.data_dir).unwrap();
    let err = DataDirLock::acquire(&t.data_dir).unwrap_err();
    assert!(
        matches!(err, LockError::InUse { pid: Some(pid), .. } if pid == std::process::id()),
        "{err:?}"
    );

    let err = backup::restore(&archive, &t.data_dir, RestoreOptions::default()).unwrap_err();
    assert!(matches!(&err, BackupError::Lock(LockError::InUse { .. })), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("in use by a running gatehouse"), "{message}");
    assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
    assert_untouched(&t.data_dir, &before);

    let report = backup::restore(
        &archive,
        &t.data_dir,
        RestoreOptions {
            force: true,
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    assert!(report.forced);
    drop(lock);

    // Released: a normal restore works again, and the lock can be taken.
    let report = backup::restore(&archive, &t.data_dir, RestoreOptions::default()).unwrap();
    assert!(!report.forced);
    let store = Store::open(common::options("sqlite://gatehouse.db", &t.data_dir)).unwrap();
    store.wait_ready(READY).await.unwrap();
    assert_eq!(store.meta().get("k").await.unwrap().as_deref(), Some("v"));
    store.close().await;
    DataDirLock::acquire(&t.data_dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_newest_backups() {
    let t = common::sqlite().await;
    let mut options = BackupOptions::new(&t.data_dir);
    options.keep = 2;
    let mut paths = Vec::new();
    for i in 0..4 {
        t.store.meta().set("round", &i.to_string()).await.unwrap();
        let report = backup::take_backup(&t.store, &options).await.unwrap();
        paths.push(report.path);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut left: Vec<_> = fs::read_dir(&options.dir).unwrap().map(|e| e.unwrap().path()).collect();
    left.sort();
    let expected: Vec<PathBuf> = paths[2..]
        .iter()
        .flat_map(|p| [p.clone(), PathBuf::from(format!("{}.sha256", p.display()))])
        .collect();
    assert_eq!(left, expected);
    t.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_takes_backups_and_records_them() {
    let t = common::sqlite().await;
    let mut options = BackupOptions::new(&t.data_dir);
    options.keep = 2;
    let status = BackupStatus::new();
    let task = backup::run_schedule(
        t.store.clone(),
        options.clone(),
        Duration::from_millis(300),
        status.clone(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while status.snapshot().successes < 3 {
        assert!(std::time::Instant::now() < deadline, "{:?}", status.snapshot());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    let snapshot = status.snapshot();
    assert_eq!(snapshot.failures, 0);
    let last = snapshot.last.unwrap();
    assert!(last.succeeded());
    assert!(last.size_bytes.unwrap() > 0);
    assert!(snapshot.last_success_at.is_some());
    t.store.close().await;

    // A failing backup is recorded too (the store is closed now).
    let err = backup::backup_now(&t.store, &options, &status).await.unwrap_err();
    assert!(matches!(err, BackupError::Store(_)), "{err:?}");
    let snapshot = status.snapshot();
    assert_eq!(snapshot.failures, 1);
    assert!(snapshot.last.unwrap().error.unwrap().contains("unavailable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_runs_pg_dump_and_names_it_when_missing() {
    let Some(admin) = common::postgres_url() else {
        return;
    };
    let t = common::postgres_on(PgScratch::database(&admin).await).await;
    populate(&t.data_dir);
    for id in ["r1", "r2", "r3"] {
        t.store
            .releases()
            .create(NewRelease {
                slot: "frontend".to_owned(),
                release_id: id.to_owned(),
                size_bytes: 1,
                file_count: 1,
            })
            .await
            .unwrap();
    }

    let mut options = BackupOptions::new(&t.data_dir);
    options.pg_dump = PathBuf::from("/nonexistent/bin/pg_dump");
    let err = backup::take_backup(&t.store, &options).await.unwrap_err();
    assert!(matches!(err, BackupError::PgDumpMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("pg_dump"), "{err}");
    assert!(
        backup::take_backup(&t.store, &options).await.is_err(),
        "no partial archive is left behind"
    );
    assert!(fs::read_dir(&options.dir).map(|d| d.count()).unwrap_or(0) == 0);

    if which("pg_dump").is_none() {
        println!("skipped: pg_dump is not installed");
        return;
    }
    let options = BackupOptions::new(&t.data_dir);
    let report = backup::take_backup(&t.store, &options).await.unwrap();
    assert_eq!(report.backend, Backend::Postgres);
    assert_eq!(report.files, 5, "4 data files and the dump");

    let target_root = tempfile::tempdir().unwrap();
    let target = target_root.path().join("data");
    let restored = backup::restore(&report.path, &target, RestoreOptions::default()).unwrap();
    assert!(restored.database.is_none());
    let dump = restored.postgres_dump.unwrap();
    assert!(fs::read(&dump).unwrap().starts_with(b"PGDMP"));
    assert_eq!(
        tree(&t.data_dir, &skip_db_and_backups),
        tree(&target, &skip_db_and_backups)
    );

    // The dump loads into a fresh database with every row.
    if which("pg_restore").is_some() {
        let fresh = PgScratch::database(&admin).await;
        let status = std::process::Command::new("pg_restore")
            .arg("--no-owner")
            .arg("--dbname")
            .arg(&fresh.url)
            .arg(&dump)
            .status()
            .unwrap();
        assert!(status.success());
        let mut conn = sqlx::PgConnection::connect(&fresh.url).await.unwrap();
        let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM releases")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(rows, 3);
        conn.close().await.unwrap();
    }
    t.store.close().await;
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

#[tokio::test]
async fn restore_refuses_entries_outside_the_layout() {
    // A hand-made archive with a path that escapes data_dir.
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("evil.tar.gz");
    {
        let file = fs::File::create(&archive).unwrap();
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(4);
        header.set_mode(0o644);
        // `append_data` refuses `..`, so write the name into the header directly.
        header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"data/../evil\0");
        header.set_cksum();
        tar.append(&header, &b"evil"[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    let data_dir = dir.path().join("data");
    let err = backup::restore(&archive, &data_dir, RestoreOptions::default()).unwrap_err();
    assert!(matches!(err, BackupError::Corrupt { .. }), "{err:?}");
    assert!(!dir.path().join("evil").exists());
}
