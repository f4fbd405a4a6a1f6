//! Request-path normalisation, applied before routes are matched.
//!
//! Routes are matched against — and upstreams receive — the same normalised path,
//! so `/api/../admin` cannot reach `/admin` through a rule written for `/api/`.
//! Normalisation follows RFC 3986 §6.2.2: percent-encoded unreserved characters
//! are decoded (`%7E` → `~`, `%2E` → `.`), dot segments are removed, and repeated
//! slashes are merged. Encoded reserved characters such as `%2F` stay encoded: they
//! are data, not separators.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// Not an absolute path (origin-form must start with `/`).
    NotAbsolute,
    /// `..` would climb above the root.
    AboveRoot,
    /// A `%` not followed by two hex digits.
    BadEscape,
}

/// Returns the normalised form of `path` (without the query), borrowing when the
/// path is already normal — the common case costs one scan and no allocation.
pub(crate) fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    let mut out: Vec<&[u8]> = Vec::with_capacity(8);
    let trailing_slash = decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => out.push(s),
        }
    }
    let mut result = Vec::with_capacity(decoded.len());
    for seg in &out {
        result.push(b'/');
        result.extend_from_slice(seg);
    }
    if result.is_empty() || (trailing_slash && !out.is_empty()) {
        result.push(b'/');
    }
    // Decoding only produced ASCII unreserved characters from ASCII input, and the
    // input was a valid `str`, so the result is valid UTF-8.
    Ok(Cow::Owned(String::from_utf8_lossy(&result).into_owned()))
}

fn needs_work(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'%' || (prev == b'/' && (b == b'/' || b == b'.')) {
            return true;
        }
        prev = b;
    }
    false
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(bytes: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let c = h * 16 + l;
            if is_unreserved(c) {
                out.push(c);
            } else {
                // Keep reserved escapes, upper-cased as RFC 3986 recommends.
                out.push(b'%');
                out.push(bytes[i + 1].to_ascii_uppercase());
                out.push(bytes[i + 2].to_ascii_uppercase());
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/api/users", "/a.b/c.d", "/x/", "/files/report.v2.pdf"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(n("/api/../admin").unwrap(), "/admin");
        assert_eq!(n("/api/./x").unwrap(), "/api/x");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/..").unwrap_err(), PathError::AboveRoot);
        assert_eq!(n("/a/../..").unwrap_err(), PathError::AboveRoot);
    }

    #[test]
    fn encoded_dots_are_decoded_before_dot_removal() {
        assert_eq!(n("/api/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/api/%2E./admin").unwrap(), "/admin");
        assert_eq!(n("/%7Euser").unwrap(), "/~user");
    }

    #[test]
    fn reserved_escapes_stay_encoded() {
        assert_eq!(n("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(n("/api%2F..%2Fadmin").unwrap(), "/api%2F..%2Fadmin");
        assert_eq!(n("/q%20x").unwrap(), "/q%20x");
    }

    #[test]
    fn slashes_are_merged() {
        assert_eq!(n("//admin").unwrap(), "/admin");
        assert_eq!(n("/api//v1///x").unwrap(), "/api/v1/x");
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(n("api").unwrap_err(), PathError::NotAbsolute);
        assert_eq!(n("").unwrap_err(), PathError::NotAbsolute);
        assert_eq!(n("/a%2").unwrap_err(), PathError::BadEscape);
        assert_eq!(n("/a%zz").unwrap_err(), PathError::BadEscape);
    }
}
