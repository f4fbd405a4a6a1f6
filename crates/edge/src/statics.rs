//! Static routes: config → the `files` crate's static server.

use std::path::Path;

use gatehouse_config::{Dotfiles, Immutable, StaticAction, StaticSource};
use gatehouse_files::{DotfilesPolicy, FilesError, Glob, ImmutableRule, ReleaseStore, StaticOptions, StaticService};

/// Builds the static server of one route. The release store under `data_dir`
/// is opened the first time a route serves a release slot.
pub(crate) fn build(
    action: &StaticAction,
    releases: &mut Option<ReleaseStore>,
    data_dir: &Path,
) -> Result<StaticService, FilesError> {
    let mut opts = match &action.source {
        StaticSource::Dir(dir) => StaticOptions::dir(dir.clone()),
        StaticSource::Release(slot) => {
            let store = match releases {
                Some(store) => store,
                None => releases.insert(ReleaseStore::open(data_dir)?),
            };
            StaticOptions::release(store.slot(slot)?)
        }
    };
    opts.spa = action.spa;
    if let Some(index) = &action.index {
        opts.index = index.clone();
    }
    opts.not_found_page = action.not_found_page.clone();
    opts.listing = action.listing;
    opts.dotfiles = match action.dotfiles {
        Dotfiles::Deny => DotfilesPolicy::Deny,
        Dotfiles::Hide => DotfilesPolicy::Hide,
        Dotfiles::Allow => DotfilesPolicy::Allow,
    };
    opts.follow_symlinks_outside_root = action.follow_symlinks;
    opts.immutable = match &action.immutable {
        Immutable::Fingerprinted => ImmutableRule::Fingerprinted,
        Immutable::Never => ImmutableRule::Never,
        Immutable::Globs(globs) => ImmutableRule::Globs(globs.iter().map(|g| Glob::new(g)).collect::<Result<_, _>>()?),
    };
    if let Some(cc) = &action.cache_control {
        opts.cache_control = cc.clone();
    }
    opts.precompressed = action.precompressed;
    opts.compress = action.compress;
    if let Some(v) = action.compress_min_size {
        opts.compress_min_size = v;
    }
    if let Some(v) = action.compress_max_size {
        opts.compress_max_size = v;
    }
    if let Some(v) = action.max_ranges {
        opts.max_ranges = v;
    }
    opts.sendfile = action.sendfile;
    StaticService::new(opts)
}
