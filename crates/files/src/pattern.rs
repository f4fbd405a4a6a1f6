//! Which files are fingerprinted (safe to cache forever).
//!
//! See [`ImmutableRule`].

use crate::FilesError;

/// How to recognise fingerprinted files (safe to cache forever).
///
/// The default rule, [`ImmutableRule::Fingerprinted`], matches a file when
/// **either**:
///
/// * **dot-hash**: its name has, between two dots and not as its first or last
///   part, a run of 8 to 64 hex digits — `app.3f9a1c2b.js`,
///   `main.3f9a1c2b4d5e6f70.chunk.css` (webpack, Parcel, older Vite); or
/// * **Vite**: it sits below a directory named `assets` and its name, up to the
///   first dot, ends with `-` and 8 characters from `[A-Za-z0-9_-]` of which at
///   least one is a digit or an upper-case letter — `assets/index-BxK3f9aQ.js`,
///   `assets/logo-D_3xYq1-.svg` (Vite/Rollup's default `[name]-[hash]`). Requiring
///   a digit or capital keeps words like `assets/settings-overview.js` out.
///
/// A file that matches gets `Cache-Control: public, max-age=31536000, immutable`.
/// A false negative only costs a revalidation; a false positive would pin a stale
/// file in browsers for a year, so the rule is deliberately narrow. Projects with
/// other layouts configure globs instead ([`ImmutableRule::globs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ImmutableRule {
    /// The built-in dot-hash and Vite rules (the default).
    #[default]
    Fingerprinted,
    /// Files whose path (relative to the root, no leading `/`) matches one of
    /// these globs: `*` matches within a segment, `**` any number of segments,
    /// `?` one character. Example: `["assets/**", "fonts/*.woff2"]`.
    Globs(Vec<Glob>),
    /// Nothing is immutable.
    Never,
}

impl ImmutableRule {
    /// Compile glob patterns into a rule.
    pub fn globs<I, S>(patterns: I) -> Result<Self, FilesError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        patterns
            .into_iter()
            .map(|p| Glob::new(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(ImmutableRule::Globs)
    }

    /// Does the rule match this relative path (`assets/app-BxK3f9aQ.js`)?
    pub fn matches(&self, rel: &str) -> bool {
        match self {
            ImmutableRule::Fingerprinted => is_fingerprinted(rel),
            ImmutableRule::Globs(globs) => globs.iter().any(|g| g.matches(rel)),
            ImmutableRule::Never => false,
        }
    }
}

/// A compiled path glob (see [`ImmutableRule::Globs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    segments: Vec<String>,
}

impl Glob {
    /// Compile a glob; it must be relative, non-empty and free of `..`.
    pub fn new(pattern: &str) -> Result<Self, FilesError> {
        let bad = |reason: &str| FilesError::Option {
            option: "immutable",
            reason: format!("glob {pattern:?}: {reason}"),
        };
        let trimmed = pattern.trim_start_matches('/');
        if trimmed.is_empty() {
            return Err(bad("empty pattern"));
        }
        let segments: Vec<String> = trimmed.split('/').map(str::to_owned).collect();
        if segments.iter().any(|s| s.is_empty() || s == "..") {
            return Err(bad("empty or '..' segment"));
        }
        if segments.iter().any(|s| s.contains("**") && s != "**") {
            return Err(bad("'**' must be a whole segment"));
        }
        Ok(Glob { segments })
    }

    /// Does the glob match a relative path?
    pub fn matches(&self, rel: &str) -> bool {
        let path: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        match_segments(&self.segments, &path)
    }
}

fn match_segments(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => (0..=path.len()).any(|skip| match_segments(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((seg, path_rest)) => match_one(first.as_bytes(), seg.as_bytes()) && match_segments(rest, path_rest),
            None => false,
        },
    }
}

/// `*` and `?` within one segment (iterative, linear backtracking).
fn match_one(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// The built-in fingerprint rule, [`ImmutableRule::Fingerprinted`].
pub fn is_fingerprinted(rel: &str) -> bool {
    let mut segs = rel.rsplit('/');
    let name = segs.next().unwrap_or("");
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() >= 3
        && parts[1..parts.len() - 1]
            .iter()
            .any(|p| (8..=64).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return true;
    }
    if !segs.any(|s| s == "assets") {
        return false;
    }
    let stem = parts[0].as_bytes();
    if stem.len() < 10 {
        return false;
    }
    let (head, hash) = stem.split_at(stem.len() - 8);
    head.last() == Some(&b'-')
        && hash
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && hash.iter().any(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints() {
        for yes in [
            "assets/index-BxK3f9aQ.js",
            "assets/index-BxK3f9aQ.css",
            "admin/assets/vendor-D_3xYq1-.js",
            "assets/logo-a1b2c3d4.svg",
            "app.3f9a1c2b.js",
            "static/js/main.3f9a1c2b4d5e6f70.chunk.js",
        ] {
            assert!(is_fingerprinted(yes), "{yes}");
        }
        for no in [
            "index.html",
            "app.js",
            "assets/settings-overview.js",
            "assets/app.js",
            "index-BxK3f9aQ.js",
            "favicon.ico",
            "jquery.min.js",
            "3f9a1c2b.js",
            "assets/-BxK3f9aQ.js",
        ] {
            assert!(!is_fingerprinted(no), "{no}");
        }
    }

    #[test]
    fn globs() {
        let r = ImmutableRule::globs(["assets/**", "fonts/*.woff2", "/v?/x"]).unwrap();
        assert!(r.matches("assets/a.js"));
        assert!(r.matches("assets/deep/er/a.js"));
        assert!(r.matches("fonts/inter.woff2"));
        assert!(!r.matches("fonts/sub/inter.woff2"));
        assert!(r.matches("v1/x"));
        assert!(!r.matches("index.html"));
        assert!(ImmutableRule::globs(["a/**b"]).is_err());
        assert!(ImmutableRule::globs([""]).is_err());
        assert!(ImmutableRule::globs(["../x"]).is_err());
        let g = Glob::new("**/*.js").unwrap();
        assert!(g.matches("a.js") && g.matches("x/y/a.js") && !g.matches("a.css"));
        assert!(match_one(b"*a*b*c", b"xxaxxbxxc"));
        assert!(!match_one(b"*a*b*c", b"xxaxxbxx"));
    }
}
