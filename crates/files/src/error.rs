//! The crate's error type.

use std::io;
use std::path::PathBuf;

use http::StatusCode;

/// Everything that can go wrong while building a [`StaticService`](crate::StaticService)
/// or while managing releases.
///
/// Serving a request never returns this type: request-level failures are HTTP
/// responses (400, 403, 404, 405, 416, 503). This type is for configuration,
/// deploys and rollbacks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilesError {
    /// The static root directory is missing or unreadable.
    #[error("static root {path}: {source}")]
    Root {
        /// The configured root.
        path: PathBuf,
        /// What the filesystem said.
        source: io::Error,
    },
    /// The static root exists but is not a directory.
    #[error("static root {path} is not a directory")]
    RootNotDir {
        /// The configured root.
        path: PathBuf,
    },
    /// A configured option is invalid (bad glob, absolute 404 page path, …).
    #[error("invalid static option `{option}`: {reason}")]
    Option {
        /// The option's name, as in the config file.
        option: &'static str,
        /// Why it is invalid and what would be valid.
        reason: String,
    },
    /// A release slot name is not `[A-Za-z0-9_-]{1,64}`.
    #[error("invalid release slot name {0:?}: use 1 to 64 letters, digits, '-' or '_'")]
    InvalidSlot(String),
    /// No release with this id (or unique id prefix) exists in the slot.
    #[error("release {id:?} not found in slot {slot:?}")]
    UnknownRelease {
        /// The slot searched.
        slot: String,
        /// The id or prefix asked for.
        id: String,
    },
    /// An id prefix matched more than one release.
    #[error("release id prefix {id:?} is ambiguous in slot {slot:?}")]
    AmbiguousRelease {
        /// The slot searched.
        slot: String,
        /// The prefix asked for.
        id: String,
    },
    /// A rollback without an id found no release older than the active one.
    #[error("slot {slot:?} has no release older than the active one to roll back to")]
    NoPreviousRelease {
        /// The slot.
        slot: String,
    },
    /// The slot has no active release.
    #[error("slot {slot:?} has no active release")]
    NoActiveRelease {
        /// The slot.
        slot: String,
    },
    /// A deploy was refused; nothing was installed.
    #[error("release rejected: {0}")]
    Rejected(#[from] Rejection),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("create", "rename", "read", …).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// What the filesystem said.
        source: io::Error,
    },
}

impl FilesError {
    /// The HTTP status an admin endpoint should answer with for this error:
    /// 413 for size limits, 400 for other rejected uploads, 404 for unknown
    /// releases, 409 for state conflicts and 500 for the rest.
    pub fn http_status(&self) -> StatusCode {
        match self {
            FilesError::Rejected(r) if r.is_too_large() => StatusCode::PAYLOAD_TOO_LARGE,
            FilesError::Rejected(_) | FilesError::InvalidSlot(_) => StatusCode::BAD_REQUEST,
            FilesError::UnknownRelease { .. } => StatusCode::NOT_FOUND,
            FilesError::AmbiguousRelease { .. }
            | FilesError::NoPreviousRelease { .. }
            | FilesError::NoActiveRelease { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        FilesError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Why a release (directory or archive) was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The slot serves a single-page app and the release has no `index.html` at its top.
    #[error("the release has no index.html at its top level (required for an SPA slot)")]
    MissingIndex,
    /// The release holds no files at all.
    #[error("the release contains no files")]
    Empty,
    /// The unpacked release is bigger than the limit.
    #[error("the release is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The upload (compressed) is bigger than the limit.
    #[error("the archive is larger than the limit of {limit} bytes")]
    ArchiveTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The release has more files and directories than the limit.
    #[error("the release has more than {limit} files and directories")]
    TooManyFiles {
        /// The limit.
        limit: u64,
    },
    /// A symlink, hard link, device, FIFO or socket was found.
    #[error("{path}: only regular files and directories are allowed ({kind})")]
    SpecialFile {
        /// The path inside the release.
        path: String,
        /// What it was.
        kind: &'static str,
    },
    /// An archive entry has an absolute path, a `..` component or an unusable name.
    #[error("archive entry {path:?}: {reason}")]
    BadPath {
        /// The entry's path as written in the archive.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same file appears twice in an archive.
    #[error("archive entry {path:?} appears twice")]
    Duplicate {
        /// The entry's path.
        path: String,
    },
    /// The archive is not valid gzip or tar, or is truncated.
    #[error("malformed archive: {0}")]
    Malformed(String),
}

impl Rejection {
    /// True for the size-limit rejections (mapped to 413).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            Rejection::TooLarge { .. } | Rejection::ArchiveTooLarge { .. } | Rejection::TooManyFiles { .. }
        )
    }
}
