//! Safe request-path parsing: the only way a URL path becomes a file path.
//!
//! [`parse_request_path`] is a pure function (no filesystem access) so it can be
//! fuzzed and unit tested on its own. It turns the path of a request URI into a
//! [`SafePath`]: a list of decoded, validated segments that, joined under a root,
//! can only name something *inside* that root (symlinks aside — those are
//! checked against the canonical root when the file is opened, see the service).
//!
//! The rules, in order (the status each failure maps to is in parentheses):
//!
//! 1. The path must start with `/` and be at most [`MAX_PATH_LEN`] bytes (400).
//! 2. A literal backslash anywhere is refused: it is a path separator on Windows
//!    and never appears in URLs our users generate (400).
//! 3. The path is split on literal `/`, then each segment is percent-decoded
//!    **exactly once**. A `%` not followed by two hex digits is refused (400).
//!    `%252e` therefore becomes the literal name `%2e`, never `.`.
//! 4. A decoded segment containing `/` or `\` (from `%2f`, `%5c`) is refused:
//!    an encoded separator must not become a real one (400).
//! 5. A decoded segment must be valid UTF-8 — this refuses overlong encodings
//!    such as `%c0%ae` — and must not contain NUL or other control characters (400).
//! 6. Empty segments (`//`) and `.` are skipped, as every browser would have
//!    normalised them; `..` (also as `%2e%2e`) is refused rather than resolved (400).
//! 7. A segment containing `:` is refused: it is a drive letter (`C:`) or an
//!    NTFS stream (`file::$DATA`) on Windows and never part of a built frontend (400).
//! 8. A segment starting with `.` is a dotfile: refused with 403 by default
//!    ([`DotfilesPolicy::Deny`]), reported as 404 with [`DotfilesPolicy::Hide`],
//!    allowed with [`DotfilesPolicy::Allow`]. `.well-known` is always allowed
//!    (RFC 8615 defines it as public).

use std::fmt;
use std::path::{Path, PathBuf};

use http::StatusCode;

/// Longest request path accepted, in bytes (before decoding). Linux's `PATH_MAX`
/// is 4096; no real file under a root can have a longer path.
pub const MAX_PATH_LEN: usize = 4096;

/// What to do with path segments that start with a dot (`.env`, `.git/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DotfilesPolicy {
    /// Refuse with 403 Forbidden (the default: build output rarely needs
    /// dotfiles, and `.git` or `.env` left in a root must never leak).
    #[default]
    Deny,
    /// Answer 404 Not Found, as if the file did not exist.
    Hide,
    /// Serve dotfiles like any other file.
    Allow,
}

/// A request path that passed every rule in the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafePath {
    /// Decoded segments joined by `/`, without a leading slash; `""` is the root.
    rel: String,
    /// The request path ended with `/` (a directory was asked for).
    trailing_slash: bool,
}

impl SafePath {
    /// The relative path, segments joined by `/`, `""` for the root.
    pub fn as_str(&self) -> &str {
        &self.rel
    }

    /// True when the request path ended with `/` (or was `/`).
    pub fn trailing_slash(&self) -> bool {
        self.trailing_slash
    }

    /// True for the root of the mount (`/`).
    pub fn is_root(&self) -> bool {
        self.rel.is_empty()
    }

    /// The last segment, if any.
    pub fn file_name(&self) -> Option<&str> {
        if self.rel.is_empty() {
            None
        } else {
            self.rel.rsplit('/').next()
        }
    }

    /// True when the last segment has an extension (a `.` after its first
    /// character): such paths name assets, so the SPA fallback does not apply.
    pub fn has_extension(&self) -> bool {
        self.file_name().is_some_and(|n| n.rfind('.').is_some_and(|i| i > 0))
    }

    /// The path under `root`. Only ever joins validated, relative segments.
    pub fn under(&self, root: &Path) -> PathBuf {
        let mut p = root.to_path_buf();
        for seg in self.rel.split('/').filter(|s| !s.is_empty()) {
            p.push(seg);
        }
        p
    }
}

impl fmt::Display for SafePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.rel)?;
        if self.trailing_slash && !self.rel.is_empty() {
            f.write_str("/")?;
        }
        Ok(())
    }
}

/// Why a request path was refused. [`PathRejection::status`] gives the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathRejection {
    /// Empty or not starting with `/`.
    NotAbsolute,
    /// Longer than [`MAX_PATH_LEN`].
    TooLong,
    /// A literal backslash.
    Backslash,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2f` or `%5c` decoded to a separator inside a segment.
    EncodedSeparator,
    /// The decoded bytes are not UTF-8 (includes overlong encodings).
    InvalidUtf8,
    /// NUL or another control character.
    ControlChar,
    /// A `..` segment.
    DotDot,
    /// A `:` (drive letter or NTFS stream).
    Colon,
    /// A dotfile under [`DotfilesPolicy::Deny`].
    DotfileDenied,
    /// A dotfile under [`DotfilesPolicy::Hide`].
    DotfileHidden,
}

impl PathRejection {
    /// The HTTP status for this rejection: 403 for a denied dotfile, 404 for a
    /// hidden one and 400 for every malformed path.
    pub fn status(self) -> StatusCode {
        match self {
            PathRejection::DotfileDenied => StatusCode::FORBIDDEN,
            PathRejection::DotfileHidden => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl fmt::Display for PathRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathRejection::NotAbsolute => "path does not start with /",
            PathRejection::TooLong => "path too long",
            PathRejection::Backslash => "backslash in path",
            PathRejection::BadEscape => "malformed percent-escape",
            PathRejection::EncodedSeparator => "encoded path separator",
            PathRejection::InvalidUtf8 => "path is not valid UTF-8",
            PathRejection::ControlChar => "control character in path",
            PathRejection::DotDot => "'..' segment in path",
            PathRejection::Colon => "':' in path",
            PathRejection::DotfileDenied => "dotfiles are not served",
            PathRejection::DotfileHidden => "not found",
        })
    }
}

impl std::error::Error for PathRejection {}

/// Parse the path of a request URI (anything from `?` on is ignored) into a
/// [`SafePath`], following the rules in the [module docs](self).
///
/// Pure and total: never panics, never touches the filesystem.
pub fn parse_request_path(raw: &str, dotfiles: DotfilesPolicy) -> Result<SafePath, PathRejection> {
    let raw = raw.split(['?', '#']).next().unwrap_or("");
    if !raw.starts_with('/') {
        return Err(PathRejection::NotAbsolute);
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(PathRejection::TooLong);
    }
    if raw.contains('\\') {
        return Err(PathRejection::Backslash);
    }
    let mut rel = String::with_capacity(raw.len());
    let mut decoded = Vec::new();
    let mut last_was_dir = true;
    // Skip the leading '/'.
    for seg in raw[1..].split('/') {
        // Most segments have no escapes and are used as they are (`raw` is
        // already UTF-8); the rules below apply to the decoded text either way.
        let seg = if seg.contains('%') {
            decode_segment(seg, &mut decoded)?;
            std::str::from_utf8(&decoded).map_err(|_| PathRejection::InvalidUtf8)?
        } else {
            seg
        };
        if seg.is_empty() || seg == "." {
            last_was_dir = true;
            continue;
        }
        if seg == ".." {
            return Err(PathRejection::DotDot);
        }
        if seg.contains(['/', '\\']) {
            return Err(PathRejection::EncodedSeparator);
        }
        let control = if seg.is_ascii() {
            seg.bytes().any(|b| b.is_ascii_control())
        } else {
            seg.chars().any(char::is_control)
        };
        if control {
            return Err(PathRejection::ControlChar);
        }
        if seg.contains(':') {
            return Err(PathRejection::Colon);
        }
        if seg.starts_with('.') && seg != ".well-known" {
            match dotfiles {
                DotfilesPolicy::Deny => return Err(PathRejection::DotfileDenied),
                DotfilesPolicy::Hide => return Err(PathRejection::DotfileHidden),
                DotfilesPolicy::Allow => {}
            }
        }
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(seg);
        last_was_dir = false;
    }
    Ok(SafePath {
        rel,
        trailing_slash: last_was_dir,
    })
}

/// Percent-decode one segment into `out` (cleared first). Decodes once only.
fn decode_segment(seg: &str, out: &mut Vec<u8>) -> Result<(), PathRejection> {
    out.clear();
    let bytes = seg.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|&c| hex(c));
            let lo = bytes.get(i + 2).and_then(|&c| hex(c));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(PathRejection::BadEscape),
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(())
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, bool) {
        let p = parse_request_path(raw, DotfilesPolicy::Deny).unwrap();
        (p.as_str().to_owned(), p.trailing_slash())
    }

    fn err(raw: &str) -> PathRejection {
        parse_request_path(raw, DotfilesPolicy::Deny).unwrap_err()
    }

    #[test]
    fn plain_paths() {
        assert_eq!(ok("/"), ("".into(), true));
        assert_eq!(ok("/index.html"), ("index.html".into(), false));
        assert_eq!(ok("/assets/app-BxK3f9aQ.js"), ("assets/app-BxK3f9aQ.js".into(), false));
        assert_eq!(ok("/docs/"), ("docs".into(), true));
        assert_eq!(ok("//a///b/./c"), ("a/b/c".into(), false));
        assert_eq!(ok("/a/b?x=../../etc"), ("a/b".into(), false));
        assert_eq!(ok("/caf%C3%A9.txt"), ("café.txt".into(), false));
        assert_eq!(ok("/a%20b"), ("a b".into(), false));
        assert_eq!(ok("/.well-known/x"), (".well-known/x".into(), false));
    }

    #[test]
    fn decodes_exactly_once() {
        assert_eq!(ok("/%252e%252e/x"), ("%2e%2e/x".into(), false));
        assert_eq!(ok("/%2525"), ("%25".into(), false));
    }

    #[test]
    fn refusals() {
        assert_eq!(err(""), PathRejection::NotAbsolute);
        assert_eq!(err("index.html"), PathRejection::NotAbsolute);
        assert_eq!(err("/../etc/passwd"), PathRejection::DotDot);
        assert_eq!(err("/%2e%2e/etc/passwd"), PathRejection::DotDot);
        assert_eq!(err("/a/%2E%2E/b"), PathRejection::DotDot);
        assert_eq!(err("/..%2fetc"), PathRejection::EncodedSeparator);
        assert_eq!(err("/a%5cb"), PathRejection::EncodedSeparator);
        assert_eq!(err("/a\\b"), PathRejection::Backslash);
        assert_eq!(err("/a%00.html"), PathRejection::ControlChar);
        assert_eq!(err("/a%0a"), PathRejection::ControlChar);
        assert_eq!(err("/%c0%ae%c0%ae/x"), PathRejection::InvalidUtf8);
        assert_eq!(err("/%ff"), PathRejection::InvalidUtf8);
        assert_eq!(err("/%zz"), PathRejection::BadEscape);
        assert_eq!(err("/%2"), PathRejection::BadEscape);
        assert_eq!(err("/%u002e"), PathRejection::BadEscape);
        assert_eq!(err("/C:/Windows"), PathRejection::Colon);
        assert_eq!(err("/file::$DATA"), PathRejection::Colon);
        assert_eq!(err("/.env"), PathRejection::DotfileDenied);
        assert_eq!(err("/.git/config"), PathRejection::DotfileDenied);
        assert_eq!(err(&format!("/{}", "a".repeat(MAX_PATH_LEN))), PathRejection::TooLong);
        assert_eq!(
            parse_request_path("/.env", DotfilesPolicy::Hide).unwrap_err().status(),
            StatusCode::NOT_FOUND
        );
        assert!(parse_request_path("/.env", DotfilesPolicy::Allow).is_ok());
    }

    #[test]
    fn extension_rule() {
        let p = |s| parse_request_path(s, DotfilesPolicy::Allow).unwrap();
        assert!(p("/a/app.js").has_extension());
        assert!(!p("/users/42").has_extension());
        assert!(!p("/").has_extension());
        assert!(!p("/.hidden").has_extension());
        assert!(p("/users/john.doe").has_extension());
    }

    /// Whatever the input, an accepted path never climbs out of the root.
    #[test]
    fn never_escapes_on_pseudo_random_input() {
        let alphabet: &[&str] = &[
            "/", ".", "..", "%2e", "%2f", "%5c", "%25", "%00", "a", "%c0%af", "\\", ":", "%", "?",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut s = String::from("/");
            for _ in 0..rng.usize(0..12) {
                s.push_str(alphabet[rng.usize(0..alphabet.len())]);
            }
            if let Ok(p) = parse_request_path(&s, DotfilesPolicy::Allow) {
                let joined = p.under(Path::new("/root"));
                assert!(joined.starts_with("/root"), "{s} -> {joined:?}");
                for c in joined.components() {
                    assert!(!matches!(c, std::path::Component::ParentDir), "{s}");
                }
            }
        }
    }
}
