//! HTML directory listings (only when `listing = true`).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use crate::path::DotfilesPolicy;

/// Most entries shown; a listing of a huge directory is truncated, not slow.
const MAX_LISTED: usize = 5_000;

/// Render the listing of `dir`, shown as `shown_path`. Blocking.
pub(crate) fn render(dir: &Path, shown_path: &str, dotfiles: DotfilesPolicy) -> io::Result<String> {
    let mut items = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') && dotfiles != DotfilesPolicy::Allow {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(_) => continue,
        };
        items.push((meta.is_dir(), name, meta.len(), meta.modified().ok()));
        if items.len() >= MAX_LISTED {
            break;
        }
    }
    items.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let title = escape(shown_path);
    let mut html = String::with_capacity(256 + items.len() * 128);
    let _ = write!(
        html,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n<table>\n<tr><th>Name</th><th>Size</th><th>Modified</th></tr>\n"
    );
    if shown_path != "/" {
        html.push_str("<tr><td><a href=\"../\">../</a></td><td></td><td></td></tr>\n");
    }
    for (is_dir, name, len, modified) in items {
        let slash = if is_dir { "/" } else { "" };
        let size = if is_dir { String::new() } else { len.to_string() };
        let when = modified.map(httpdate::fmt_http_date).unwrap_or_default();
        let _ = writeln!(
            html,
            "<tr><td><a href=\"./{href}{slash}\">{text}{slash}</a></td><td>{size}</td><td>{when}</td></tr>",
            href = escape(&encode_href(&name)),
            text = escape(&name),
        );
    }
    html.push_str("</table></body></html>\n");
    Ok(html)
}

/// Escape text for HTML element content and double-quoted attributes.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encode a file name for use as one URL path segment.
pub(crate) fn encode_href(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(encode_href("a b/<c>?#.js"), "a%20b%2F%3Cc%3E%3F%23.js");
    }
}
