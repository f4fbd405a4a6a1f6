//! An upstream answer's header fields, kept in the bytes they arrived in.
//!
//! Building a `HeaderMap` for every answer (hashing each name, checking each
//! value again, counting a reference per value) costs more than parsing the
//! head. Most proxied answers are only passed on, so `h1.rs` keeps their
//! end-to-end fields here, `front.rs` writes them to the client as they are,
//! and only what needs to read or change them (response policies, a sticky
//! cookie, hyper's connections) turns them into a map with [`merge_into`].
//!
//! The rule that makes the two forms agree: a field in the response's own
//! `HeaderMap` (set by gatehouse) replaces the passed fields of the same name.
//!
//! [`merge_into`]: PassedFields::merge_into

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Header fields that lie in a response head's bytes: each a name and where
/// its value is. Values were checked by the head parser (`httparse` accepts
/// exactly the bytes `HeaderValue` does: HTAB, SP, visible ASCII and
/// obs-text).
#[derive(Debug, Default, Clone)]
pub(crate) struct PassedFields {
    head: Bytes,
    fields: Vec<(HeaderName, u32, u32)>,
}

impl PassedFields {
    /// Fields of `head`, added with [`push`](Self::push).
    pub(crate) fn with_capacity(head: Bytes, n: usize) -> Self {
        Self {
            head,
            fields: Vec::with_capacity(n),
        }
    }

    /// Adds a field whose value is `head[start..end]`.
    pub(crate) fn push(&mut self, name: HeaderName, start: u32, end: u32) {
        debug_assert!(start <= end && end as usize <= self.head.len());
        debug_assert!(
            !self.head[start as usize..end as usize]
                .iter()
                .any(|b| matches!(b, b'\r' | b'\n')),
            "a passed value never holds CR or LF"
        );
        self.fields.push((name, start, end));
    }

    /// Leaves out every field called `name`.
    pub(crate) fn remove(&mut self, name: &HeaderName) {
        self.fields.retain(|(n, ..)| n != name);
    }

    /// The fields in the order they arrived.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&HeaderName, &[u8])> {
        self.fields
            .iter()
            .map(|(name, start, end)| (name, &self.head[*start as usize..*end as usize]))
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Puts the fields into `map`, before the ones it has: what a response
    /// written from both would carry. A name `map` already has keeps only
    /// `map`'s values.
    pub(crate) fn merge_into(self, map: &mut HeaderMap) {
        let own = std::mem::replace(map, HeaderMap::with_capacity(self.fields.len() + 1));
        for (name, start, end) in self.fields {
            if own.contains_key(&name) {
                continue;
            }
            // Cannot fail: the parser accepted the same bytes (see above).
            if let Ok(value) = HeaderValue::from_maybe_shared(self.head.slice(start as usize..end as usize)) {
                map.append(name, value);
            }
        }
        // `map` has none of these names yet, so extending only appends.
        map.extend(own);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn fields(head: &'static [u8], spans: &[(&str, &str)]) -> PassedFields {
        let mut f = PassedFields::with_capacity(Bytes::from_static(head), spans.len());
        for (name, value) in spans {
            let at = head
                .windows(value.len())
                .position(|w| w == value.as_bytes())
                .expect("value in head") as u32;
            f.push(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                at,
                at + value.len() as u32,
            );
        }
        f
    }

    #[test]
    fn values_are_read_from_the_head() {
        let f = fields(
            b"content-type: text/html\r\nx-a: 1\r\nx-a: 2\r\n",
            &[("content-type", "text/html"), ("x-a", "1"), ("x-a", "2")],
        );
        assert_eq!(f.get(&header::CONTENT_TYPE), Some(&b"text/html"[..]));
        assert_eq!(f.get(&HeaderName::from_static("x-a")), Some(&b"1"[..]));
        assert_eq!(f.get(&header::SERVER), None);
        let all: Vec<_> = f.iter().map(|(n, v)| (n.as_str(), v)).collect();
        assert_eq!(all, [("content-type", &b"text/html"[..]), ("x-a", b"1"), ("x-a", b"2")]);
    }

    #[test]
    fn remove_leaves_out_every_field_of_the_name() {
        let mut f = fields(
            b"x-a: 1\r\nx-b: 2\r\nx-a: 3\r\n",
            &[("x-a", "1"), ("x-b", "2"), ("x-a", "3")],
        );
        f.remove(&HeaderName::from_static("x-a"));
        let all: Vec<_> = f.iter().map(|(n, v)| (n.as_str(), v)).collect();
        assert_eq!(all, [("x-b", &b"2"[..])]);
    }

    #[test]
    fn merging_keeps_order_and_lets_the_map_replace_a_name() {
        let f = fields(
            b"set-cookie: a=1\r\nx-request-id: theirs\r\nset-cookie: b=2\r\nvary: origin\r\n",
            &[
                ("set-cookie", "a=1"),
                ("x-request-id", "theirs"),
                ("set-cookie", "b=2"),
                ("vary", "origin"),
            ],
        );
        let mut map = HeaderMap::new();
        map.insert("x-request-id", HeaderValue::from_static("ours"));
        map.append("x-extra", HeaderValue::from_static("1"));
        map.append("x-extra", HeaderValue::from_static("2"));
        f.merge_into(&mut map);
        let all: Vec<_> = map.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(
            all,
            [
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("vary", "origin"),
                ("x-request-id", "ours"),
                ("x-extra", "1"),
                ("x-extra", "2"),
            ]
        );
    }
}
