//! Static file hosting and atomic frontend releases for gatehouse.
//!
//! * [`StaticService`] answers GET and HEAD for one `static` route, from a
//!   directory or from the active release of a slot: content types, strong
//!   ETags, `Last-Modified`, conditional requests, byte ranges (multipart),
//!   precompressed siblings and bounded on-the-fly compression, cache headers
//!   for fingerprinted assets, SPA fallback, a custom 404 page and optional
//!   listings. The body type, [`FileBody`], streams large files in chunks, or
//!   hands them to the connection as zero-copy regions ([`Sendfile`]).
//! * [`path::parse_request_path`] is the single, pure, fuzzable function that
//!   turns a URL path into a path under the root.
//! * [`ReleaseStore`] stores immutable releases under `<data_dir>/releases`,
//!   switches a slot atomically, lists, rolls back and prunes.
//!
//! *Architecture invariant*: this crate knows nothing about connections,
//! routing or config files (a [`Sendfile`] queue is only a hand-off of file
//! ranges; the edge decides which connection may take them). The edge strips the route prefix and calls
//! [`StaticService::serve`]; the binary maps config keys onto
//! [`StaticOptions`] and [`DeployOptions`].

#![warn(missing_docs)]

mod body;
mod cache;
mod compress;
mod encoding;
mod error;
mod listing;
mod mime;
mod options;
pub mod path;
mod pattern;
pub mod range;
pub mod releases;
mod sendfile;
mod service;

pub use body::{FileBody, READ_CHUNK};
pub use encoding::{AcceptEncoding, Encoding};
pub use error::{FilesError, Rejection};
pub use mime::DEFAULT_COMPRESSIBLE_TYPES;
pub use options::*;
pub use path::DotfilesPolicy;
pub use pattern::{Glob, ImmutableRule, is_fingerprinted};
pub use releases::{ActiveRelease, DeployOptions, ReleaseInfo, ReleaseSlot, ReleaseStore};
pub use sendfile::{Chunk, Region, Sendfile};
pub use service::StaticService;
