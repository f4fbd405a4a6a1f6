//! Conditional request evaluation (RFC 9110 §13).

use http::header::{self, HeaderValue};
use http::{HeaderMap, StatusCode};

use crate::cache::Variant;

/// `If-Match` / `If-Unmodified-Since` against the stored file: 412 if they fail.
pub(super) fn precondition_failed(headers: &HeaderMap, v: &Variant) -> Option<StatusCode> {
    if headers.contains_key(header::IF_MATCH) {
        let ok = headers
            .get_all(header::IF_MATCH)
            .iter()
            .any(|h| list_matches(h, &v.etag, true));
        return (!ok).then_some(StatusCode::PRECONDITION_FAILED);
    }
    if let Some(since) = date(headers.get(header::IF_UNMODIFIED_SINCE)) {
        if v.mtime_secs > since {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    }
    None
}

/// `If-None-Match` (weak comparison), else `If-Modified-Since`: true → 304.
pub(super) fn not_modified(headers: &HeaderMap, etag: &HeaderValue, mtime_secs: u64) -> bool {
    if headers.contains_key(header::IF_NONE_MATCH) {
        return headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .any(|h| list_matches(h, etag, false));
    }
    match date(headers.get(header::IF_MODIFIED_SINCE)) {
        Some(since) => mtime_secs <= since,
        None => false,
    }
}

/// `If-Range`: absent, a strong match of the ETag, or exactly the
/// Last-Modified date. Anything else means "send the whole file".
pub(super) fn if_range_holds(headers: &HeaderMap, v: &Variant) -> bool {
    let Some(value) = headers.get(header::IF_RANGE) else {
        return true;
    };
    let bytes = value.as_bytes();
    if bytes.starts_with(b"\"") || bytes.starts_with(b"W/") {
        return bytes == v.etag.as_bytes();
    }
    date(Some(value)) == Some(v.mtime_secs)
}

/// Does a comma-separated entity-tag list (or `*`) match `etag`?
/// Strong comparison refuses weak tags on either side.
fn list_matches(list: &HeaderValue, etag: &HeaderValue, strong: bool) -> bool {
    let Ok(list) = list.to_str() else {
        return false;
    };
    let ours = etag.as_bytes();
    list.split(',').map(str::trim).any(|tag| {
        if tag == "*" {
            return true;
        }
        match tag.strip_prefix("W/") {
            Some(weak) => !strong && weak.as_bytes() == ours,
            None => tag.as_bytes() == ours,
        }
    })
}

fn date(v: Option<&HeaderValue>) -> Option<u64> {
    let s = v?.to_str().ok()?;
    let t = httpdate::parse_http_date(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
}
