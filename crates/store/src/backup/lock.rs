//! The data-directory lock: one running server (or restore) per `data_dir`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use fs4::{FileExt, TryLockError};

/// Name of the lock file inside `data_dir`. It holds the owner's pid, for messages; the lock
/// itself is an advisory `flock`, released by the OS when the process exits, even on
/// `kill -9`, so a stale file never blocks anyone.
pub const LOCK_FILE_NAME: &str = "gatehouse.lock";

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process (or another handle in this one) holds the lock.
    #[error(
        "data dir {} is in use by a running gatehouse{} (lock file {}); stop it first",
        .data_dir.display(),
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        .lock_file.display()
    )]
    InUse {
        /// The locked directory.
        data_dir: PathBuf,
        /// Its lock file.
        lock_file: PathBuf,
        /// The pid written by the holder, when readable.
        pid: Option<u32>,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock {}: {source}", .path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// An exclusive advisory lock on a data directory, held for as long as the value lives.
///
/// `gatehouse serve` takes it at startup and keeps it until exit; `restore` takes it so it
/// never runs under a live server (unless forced) and so no server starts mid-restore.
#[derive(Debug)]
pub struct DataDirLock {
    // Holding the open file holds the lock; it is released when the file is closed.
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `data_dir` if needed and takes its lock without waiting.
    ///
    /// Fails with [`LockError::InUse`] (naming the holder's pid) when it is held elsewhere.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let path = data_dir.join(LOCK_FILE_NAME);
        let io_err = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io_err)?;
        // No truncate on open: the file may belong to the current holder.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        match FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(LockError::InUse {
                    data_dir: data_dir.to_path_buf(),
                    lock_file: path,
                    pid,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        file.sync_data().map_err(io_err)?;
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
