//! Content types by extension, and which types are worth compressing.

use http::HeaderValue;

/// Types compressed on the fly by default (prefix match when ending in `/`).
/// Text, scripts, JSON, XML, SVG, WebAssembly and uncompressed font formats
/// shrink 3–10×; images, video, archives and WOFF2 are already compressed.
pub const DEFAULT_COMPRESSIBLE_TYPES: &[&str] = &[
    "text/",
    "application/javascript",
    "application/json",
    "application/manifest+json",
    "application/xml",
    "application/wasm",
    "image/svg+xml",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "font/ttf",
    "font/otf",
    "application/vnd.ms-fontobject",
];

/// The `Content-Type` for a relative path, and its bare media type.
pub(crate) fn content_type(rel: &str) -> (HeaderValue, &'static str) {
    let ext = rel
        .rsplit('/')
        .next()
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase());
    let essence: &'static str = match ext.as_deref() {
        // Overrides where mime_guess disagrees with what browsers expect.
        Some("js" | "mjs" | "cjs") => "text/javascript",
        Some("map") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("wasm") => "application/wasm",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some(e) => mime_guess::from_ext(e)
            .first_raw()
            .unwrap_or("application/octet-stream"),
        None => "application/octet-stream",
    };
    let value = if needs_charset(essence) {
        HeaderValue::from_str(&format!("{essence}; charset=utf-8"))
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
    } else {
        HeaderValue::from_static(essence)
    };
    (value, essence)
}

fn needs_charset(essence: &str) -> bool {
    essence.starts_with("text/")
        || matches!(
            essence,
            "application/javascript"
                | "application/json"
                | "application/manifest+json"
                | "application/xml"
                | "image/svg+xml"
        )
}

/// True when `essence` matches one of `types` (exact, or prefix for `x/`).
pub(crate) fn type_matches(essence: &str, types: &[String]) -> bool {
    types.iter().any(|t| {
        if t.ends_with('/') {
            essence.starts_with(t.as_str())
        } else {
            essence.eq_ignore_ascii_case(t)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types() {
        assert_eq!(content_type("index.html").0, "text/html; charset=utf-8");
        assert_eq!(content_type("a/b.js").0, "text/javascript; charset=utf-8");
        assert_eq!(content_type("a.CSS").0, "text/css; charset=utf-8");
        assert_eq!(content_type("a.json").0, "application/json; charset=utf-8");
        assert_eq!(content_type("a.svg").0, "image/svg+xml; charset=utf-8");
        assert_eq!(content_type("a.png").0, "image/png");
        assert_eq!(content_type("a.wasm").0, "application/wasm");
        assert_eq!(content_type("LICENSE").0, "application/octet-stream");
        assert_eq!(content_type("x.unknownext").0, "application/octet-stream");
    }
}
