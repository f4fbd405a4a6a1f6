//! Properties of the parsers that face the network: request-path and host
//! normalisation, hop-by-hop stripping and the client address (gatehouse-edge),
//! and the static server's request-path and `Range` parsers (gatehouse-files).
//!
//! Shared by the fuzz targets and `crates/edge/tests/properties.rs` (which
//! includes this file with `#[path]`), so each property is written once. Every
//! `check_*` function panics, naming the input, when a property fails.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Component, Path};

use gatehouse_edge::fuzzing;
use gatehouse_files::path::{DotfilesPolicy, PathRejection, SafePath, parse_request_path};
use gatehouse_files::range::{COALESCE_GAP, RangeOutcome, parse_range};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Whether every property is asserted. The bugs listed in `docs/fuzzing.md` are
/// fixed, so this is on by default; `GATEHOUSE_FUZZ_STRICT=0` excuses the
/// inputs they used to affect (to bisect an old build).
pub fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("GATEHOUSE_FUZZ_STRICT").is_none_or(|v| v != "0"))
}

// ---------------------------------------------------------------------------
// Request-path normalisation (routing)
// ---------------------------------------------------------------------------

/// `normalize_path` properties:
/// - a path is refused only when it is not absolute, has a malformed `%` escape
///   or climbs above the root;
/// - the result starts with `/`, has no `//` and no `.` or `..` segment, also not
///   spelled with `%2e`/`%2E`;
/// - normalising the result again gives the result (idempotence);
/// - encoded separators stay encoded: the result has no more `/` or `\` than the
///   input, and when nothing was removed by a `..` every `%2F`/`%5C` survives;
/// - every `%` left starts an upper-case escape of a byte that is not
///   unreserved (RFC 3986 §6.2.2.1–2).
pub fn check_path(input: &str) {
    let Some(out) = fuzzing::normalize_path(input) else {
        assert!(
            !input.starts_with('/') || has_bad_escape(input) || climbs_above_root(input),
            "refused a valid path: {input:?}"
        );
        return;
    };
    assert!(out.starts_with('/'), "{input:?} -> {out:?}: not absolute");
    assert!(!out.contains("//"), "{input:?} -> {out:?}: empty segment");
    for seg in out.split('/') {
        let dots = decode_dots(seg);
        assert!(dots != "." && dots != "..", "{input:?} -> {out:?}: dot segment {seg:?}");
    }
    assert_eq!(
        fuzzing::normalize_path(&out).as_deref(),
        Some(out.as_str()),
        "not idempotent: {input:?} -> {out:?}"
    );
    for sep in ['/', '\\'] {
        assert!(
            out.matches(sep).count() <= input.matches(sep).count(),
            "{input:?} -> {out:?}: a decoded {sep:?}"
        );
    }
    if !has_dot_dot_segment(input) {
        for escape in ["%2F", "%5C"] {
            assert_eq!(
                count_ignore_case(&out, escape),
                count_ignore_case(input, escape),
                "{input:?} -> {out:?}: {escape} not kept"
            );
        }
    }
    let bytes = out.as_bytes();
    for (i, _) in out.match_indices('%') {
        let escape = bytes.get(i + 1..i + 3);
        let ok = escape.is_some_and(|e| {
            e.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
                && !is_unreserved(hex_value(e[0]) * 16 + hex_value(e[1]))
        });
        assert!(ok, "{input:?} -> {out:?}: escape at {i} is not normal");
    }
}

/// Whether some `%` is not followed by two hex digits.
fn has_bad_escape(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// `seg` with `%2e`/`%2E` decoded: the only escape that can spell a dot.
fn decode_dots(seg: &str) -> String {
    let mut out = String::with_capacity(seg.len());
    let mut rest = seg;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        if rest.get(i..i + 3).is_some_and(|e| e.eq_ignore_ascii_case("%2e")) {
            out.push('.');
            rest = &rest[i + 3..];
        } else {
            out.push('%');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

fn has_dot_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| decode_dots(s) == "..")
}

/// Resolves dot segments on a counter: does a `..` go above `/`?
fn climbs_above_root(path: &str) -> bool {
    let mut depth = 0usize;
    for seg in path.split('/').skip(1) {
        match decode_dots(seg).as_str() {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}

fn count_ignore_case(haystack: &str, needle: &str) -> usize {
    haystack
        .to_ascii_uppercase()
        .matches(&needle.to_ascii_uppercase())
        .count()
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

// ---------------------------------------------------------------------------
// Host normalisation
// ---------------------------------------------------------------------------

/// `normalize_host` properties:
/// - a plain `name(.name)*[.][:port]` host is accepted as the lower-case name;
/// - the result is non-empty, lower-case and made of `[a-z0-9.-_[]:]` only;
/// - it has no port: a `:`, `[` or `]` appears only in a bracketed IPv6
///   literal (`[` an IPv6 address `]`);
/// - it has no trailing dot, and normalising it again gives it back.
///
/// Inputs hit by the known bugs in `docs/fuzzing.md` are excused from the last
/// two unless [`strict`] (`GATEHOUSE_FUZZ_STRICT=1`).
pub fn check_host(raw: &[u8]) {
    check_host_with(raw, strict());
}

/// [`check_host`], with known bugs excused or not.
pub fn check_host_with(raw: &[u8], strict: bool) {
    let out = fuzzing::normalize_host(raw);
    if let Some(name) = plain_host_name(raw) {
        assert_eq!(out.as_deref(), Some(name.as_str()), "plain host {:?}", show(raw));
    }
    let Some(out) = out else { return };
    let excused = !strict && known_host_bug(raw);
    let raw = show(raw);
    assert!(!out.is_empty(), "{raw:?}: empty host accepted");
    assert!(
        out.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'[' | b']' | b':')),
        "{raw:?} -> {out:?}: unexpected character"
    );
    if excused {
        return;
    }
    match out.strip_prefix('[') {
        Some(rest) => {
            let inner = rest
                .strip_suffix(']')
                .unwrap_or_else(|| panic!("{raw:?} -> {out:?}: unclosed ["));
            assert!(
                inner.parse::<std::net::Ipv6Addr>().is_ok(),
                "{raw:?} -> {out:?}: not an IPv6 literal"
            );
        }
        None => assert!(
            !out.contains([':', '[', ']']),
            "{raw:?} -> {out:?}: port or bracket left in a host name"
        ),
    }
    assert!(!out.ends_with('.'), "{raw:?} -> {out:?}: trailing dot");
    assert_eq!(
        fuzzing::normalize_host(out.as_bytes()).as_deref(),
        Some(out.as_str()),
        "not idempotent: {raw:?} -> {out:?}"
    );
}

/// Inputs that hit the known `normalize_host` bugs (`docs/fuzzing.md`):
/// a colon left in an unbracketed host (only the last `:port` is removed),
/// brackets that do not enclose an IPv6 address, and more than one trailing dot.
pub fn known_host_bug(raw: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(raw) else {
        return false;
    };
    let name = match s.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => s,
    };
    let ipv6_literal = name
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|inner| inner.parse::<std::net::Ipv6Addr>().is_ok());
    (!ipv6_literal && name.contains([':', '[', ']'])) || name.ends_with("..")
}

/// For `label(.label)*` with an optional trailing dot and an optional `:digits`
/// port (labels of letters, digits, `-` and `_`), the name `normalize_host` must
/// return.
fn plain_host_name(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    let (name, port) = s.split_once(':').unwrap_or((s, ""));
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    name.split('.').all(label_ok).then(|| name.to_ascii_lowercase())
}

fn show(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

// ---------------------------------------------------------------------------
// Forwarding: hop-by-hop headers and the client address
// ---------------------------------------------------------------------------

/// Header names the forwarding decoder picks from (index = selector byte).
const NAMES: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
    "host",
    "x-forwarded-for",
    "x-forwarded-for",
    "x-secret",
    "close",
    "forwarded",
    "content-length",
];

/// Peers the decoder picks from: trusted and untrusted, v4, v6 and v4-mapped.
const PEERS: [&str; 8] = [
    "10.0.0.5",
    "203.0.113.7",
    "::1",
    "::ffff:10.0.0.1",
    "2001:db8::7",
    "192.168.1.1",
    "127.0.0.1",
    "::ffff:203.0.113.7",
];

/// Trusted-proxy networks; the decoder picks a subset with a bit mask.
const TRUSTED: [&str; 6] = [
    "10.0.0.0/8",
    "::1/128",
    "192.168.0.0/16",
    "2001:db8::/32",
    "0.0.0.0/0",
    "::/0",
];

/// Decodes fuzzer bytes into headers, a peer and trusted networks, then runs
/// [`check_forwarding`].
///
/// Layout: `[peer] [trusted mask] record ('\n' record)*`, where a record is a
/// selector byte followed by the value. Selectors below `NAMES.len()` pick a
/// name; any other takes the name from the value up to its first `:`. Records
/// whose name or value `http` refuses are skipped.
pub fn check_forwarding_bytes(data: &[u8]) {
    let (Some(&peer), Some(&mask)) = (data.first(), data.get(1)) else {
        return;
    };
    let peer: IpAddr = PEERS[usize::from(peer) % PEERS.len()]
        .parse()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let trusted: Vec<IpNet> = TRUSTED
        .iter()
        .enumerate()
        .filter(|&(i, _)| mask & (1 << i) != 0)
        .filter_map(|(_, n)| n.parse().ok())
        .collect();
    let mut headers = HeaderMap::new();
    for record in data[2..].split(|&b| b == b'\n') {
        let Some((&sel, value)) = record.split_first() else {
            continue;
        };
        let (name, value) = match NAMES.get(usize::from(sel)) {
            Some(name) => (HeaderName::from_static(name), value),
            None => {
                let Some(colon) = value.iter().position(|&b| b == b':') else {
                    continue;
                };
                let Ok(name) = HeaderName::from_bytes(&value[..colon]) else {
                    continue;
                };
                (name, &value[colon + 1..])
            }
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    check_forwarding(&headers, peer, &trusted);
}

/// `client_ip` and `strip_hop_by_hop` properties:
/// - an untrusted peer is always the client, whatever `X-Forwarded-For` says;
/// - otherwise the client is the right-most `X-Forwarded-For` entry that is not
///   a trusted proxy, and nothing left of an unreadable entry is believed (checked
///   against a reference walk);
/// - after stripping, no `connection`, `keep-alive`, `proxy-connection`,
///   `proxy-authorization`, `transfer-encoding` or `upgrade` header is left, nor
///   any header named in `Connection` (except `host`);
/// - `te` is only ever the single value `trailers`, and only when the request
///   sent `TE: trailers` and `Connection` did not name it;
/// - every other header is untouched;
/// - the returned upgrade is the `Upgrade` value iff `Connection` said `upgrade`.
pub fn check_forwarding(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) {
    let ip = fuzzing::client_ip(headers, peer, trusted);
    if !is_trusted(trusted, peer) {
        assert_eq!(ip, peer, "untrusted peer {peer} replaced by {ip}; headers {headers:?}");
    }
    assert_eq!(
        ip,
        reference_client_ip(headers, peer, trusted),
        "client ip for peer {peer}, trusted {trusted:?}, headers {headers:?}"
    );

    let mut stripped = headers.clone();
    let upgrade = fuzzing::strip_hop_by_hop(&mut stripped);
    let context = || format!("before {headers:?}\nafter {stripped:?}");
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        assert!(!stripped.contains_key(&name), "{name} left\n{}", context());
    }
    let (listed, wants_upgrade) = connection_tokens(headers);
    for name in &listed {
        if *name != header::HOST {
            assert!(
                !stripped.contains_key(name),
                "{name} named in Connection but left\n{}",
                context()
            );
        }
    }
    let te: Vec<&HeaderValue> = stripped.get_all(header::TE).iter().collect();
    let te_expected = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        && !listed.contains(&header::TE);
    if te_expected {
        assert!(
            te.len() == 1 && te[0] == "trailers",
            "te should be `trailers`\n{}",
            context()
        );
    } else {
        assert!(te.is_empty(), "te left\n{}", context());
    }
    for name in headers.keys() {
        let hop = is_hop_by_hop(name) || (listed.contains(name) && *name != header::HOST);
        if !hop {
            let before: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
            let after: Vec<&HeaderValue> = stripped.get_all(name).iter().collect();
            assert_eq!(before, after, "end-to-end header {name} changed\n{}", context());
        }
    }
    let expected_upgrade = if wants_upgrade {
        headers.get(header::UPGRADE)
    } else {
        None
    };
    assert_eq!(upgrade.as_ref(), expected_upgrade, "upgrade\n{}", context());
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Header names listed in `Connection` (its options `close`, `keep-alive` and
/// `upgrade` aside), and whether it asked for an upgrade. Values that are not
/// visible ASCII are not read.
fn connection_tokens(headers: &HeaderMap) -> (Vec<HeaderName>, bool) {
    let mut names = Vec::new();
    let mut upgrade = false;
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            match token.to_ascii_lowercase().as_str() {
                "upgrade" => upgrade = true,
                "close" | "keep-alive" => {}
                _ => names.extend(HeaderName::from_bytes(token.as_bytes()).ok()),
            }
        }
    }
    (names, upgrade)
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// The documented walk, written differently from the implementation: flatten
/// every entry right-to-left (an unreadable header value is one bad entry), then
/// take entries while they parse and are trusted.
fn reference_client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let mut entries: Vec<Option<IpAddr>> = Vec::new();
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        match value.to_str() {
            Ok(v) => entries.extend(v.rsplit(',').map(|e| forwarded_ip(e.trim()))),
            Err(_) => entries.push(None),
        }
    }
    let mut client = peer;
    for entry in entries {
        let Some(ip) = entry else { break };
        client = canonical(ip);
        if !is_trusted(trusted, client) {
            break;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, `[v6]`, `[v6]:port` or `v4:port`.
fn forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, _) = rest.split_once(']').unwrap_or((rest, ""));
        return inside.parse().ok();
    }
    let (ip, _port) = s.rsplit_once(':')?;
    ip.parse().ok()
}

// ---------------------------------------------------------------------------
// Static files: request path and Range
// ---------------------------------------------------------------------------

/// `parse_request_path` properties, under every dotfile policy:
/// - refusals map to 400, 403 or 404;
/// - an accepted path is relative, has no empty, `.` or `..` segment, no NUL,
///   control character, `\` or `:`, and (unless dotfiles are allowed) no segment
///   starting with `.` other than `.well-known`;
/// - joined under a root it stays under the root with only normal components;
/// - re-encoding it (`%`, `?`, `#` escaped) parses back to the same path;
/// - the policies agree except on dotfiles.
pub fn check_static_path(input: &str) {
    let results = [DotfilesPolicy::Deny, DotfilesPolicy::Hide, DotfilesPolicy::Allow]
        .map(|policy| (policy, parse_request_path(input, policy)));
    for (policy, result) in &results {
        match result {
            Ok(path) => check_safe_path(input, *policy, path),
            Err(e) => assert!(
                matches!(e.status().as_u16(), 400 | 403 | 404),
                "{input:?}: {e:?} maps to {}",
                e.status()
            ),
        }
    }
    let [(_, deny), (_, hide), (_, allow)] = &results;
    match deny {
        Ok(_) => {
            assert_eq!(hide, deny, "{input:?}: hide and deny differ");
            assert_eq!(allow, deny, "{input:?}: allow and deny differ");
        }
        Err(PathRejection::DotfileDenied) => {
            assert_eq!(hide, &Err(PathRejection::DotfileHidden), "{input:?}");
        }
        Err(_) => {
            assert_eq!(hide, deny, "{input:?}: hide and deny differ");
            assert_eq!(allow, deny, "{input:?}: allow and deny differ");
        }
    }
}

fn check_safe_path(input: &str, policy: DotfilesPolicy, path: &SafePath) {
    let rel = path.as_str();
    assert_eq!(path.is_root(), rel.is_empty(), "{input:?} ({policy:?})");
    if !rel.is_empty() {
        for seg in rel.split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "{input:?} ({policy:?}) -> {rel:?}: segment {seg:?}"
            );
            assert!(
                !seg.contains(['\\', ':']) && !seg.chars().any(char::is_control),
                "{input:?} ({policy:?}) -> {rel:?}: segment {seg:?}"
            );
            if policy != DotfilesPolicy::Allow {
                assert!(
                    !seg.starts_with('.') || seg == ".well-known",
                    "{input:?} ({policy:?}) -> {rel:?}: dotfile {seg:?}"
                );
            }
        }
    }
    let root = Path::new("/srv/root");
    let full = path.under(root);
    let below = full
        .strip_prefix(root)
        .unwrap_or_else(|_| panic!("{input:?} -> {full:?}: outside the root"));
    assert!(
        below.components().all(|c| matches!(c, Component::Normal(_))),
        "{input:?} -> {full:?}: not a plain relative path"
    );
    let reencoded = encode(path);
    assert_eq!(
        parse_request_path(&reencoded, policy).as_ref(),
        Ok(path),
        "{input:?} -> {rel:?} -> {reencoded:?} does not round-trip"
    );
}

/// The request path that names `path`: its display form with `%`, `?` and `#`
/// escaped.
fn encode(path: &SafePath) -> String {
    let mut out = String::new();
    for c in path.to_string().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// Decodes fuzzer bytes for [`check_range`]: 8 bytes of length (little endian,
/// three inputs in four kept below 4 KiB so ranges overlap the file), one byte of
/// range limit, then the header value.
pub fn check_range_bytes(data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let mut len = u64::from_le_bytes(*len);
    if len % 4 != 0 {
        len %= 4096;
    }
    let Some((&max, header)) = rest.split_first() else {
        return;
    };
    check_range(header, len, usize::from(max % 33));
}

/// `parse_range` properties:
/// - nothing is satisfiable in an empty representation;
/// - satisfiable ranges are non-empty, at most `max_ranges`, each inside
///   `0..len`, sorted, and apart by more than `COALESCE_GAP` bytes (so together
///   never larger than the representation).
pub fn check_range(header: &[u8], len: u64, max_ranges: usize) {
    let outcome = parse_range(header, len, max_ranges);
    let RangeOutcome::Satisfiable(ranges) = outcome else {
        return;
    };
    let ctx = || format!("{:?} len {len} max {max_ranges} -> {ranges:?}", show(header));
    assert!(len > 0, "satisfiable in an empty representation: {}", ctx());
    assert!(!ranges.is_empty() && ranges.len() <= max_ranges, "{}", ctx());
    for r in &ranges {
        assert!(
            r.start <= r.end && r.end < len,
            "range outside the representation: {}",
            ctx()
        );
    }
    for w in ranges.windows(2) {
        assert!(
            w[0].end.checked_add(COALESCE_GAP + 1).is_some_and(|e| e < w[1].start),
            "ranges not sorted and coalesced: {}",
            ctx()
        );
    }
    let total: u64 = ranges.iter().map(|r| r.end - r.start + 1).sum();
    assert!(total <= len, "more bytes than the representation: {}", ctx());
}

// ---------------------------------------------------------------------------
// Upstream answers (the proxy's HTTP/1.1 client)
// ---------------------------------------------------------------------------

/// `upstream_response` properties, on `data` as an upstream's answer to a GET:
/// - never a panic, whatever the bytes;
/// - the outcome does not depend on how the bytes were split into reads: fed
///   one byte, seven bytes or all at once, the same status and body or the same
///   refusal;
/// - a 204 or 304 has no body, whatever lengths it declares.
pub fn check_upstream_response(data: &[u8]) {
    let whole = fuzzing::upstream_response(data, data.len().max(1));
    for step in [1, 7] {
        let split = fuzzing::upstream_response(data, step);
        assert_eq!(
            split,
            whole,
            "reads of {step} bytes changed the outcome for {:?}",
            String::from_utf8_lossy(data)
        );
    }
    if let Ok((status, body)) = &whole {
        if *status == 204 || *status == 304 {
            assert!(body.is_empty(), "{status} with a body: {data:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Client requests (the client-facing HTTP/1.1 loop)
// ---------------------------------------------------------------------------

/// Fields whose requests must go to hyper: they bring a body or change the
/// protocol. A request served by gatehouse's own loop with one of them would
/// let a body be read as the next request (request smuggling).
const HYPER_FIELDS: &[&str] = &["transfer-encoding", "expect", "upgrade"];

/// `client_requests` properties, on `data` as what a client sends:
/// - never a panic, whatever the bytes;
/// - the outcome does not depend on how the bytes were split into reads;
/// - nothing is lost or reordered: the heads served, then the bytes handed to
///   hyper (or still waiting), are the input;
/// - a request served by the loop has none of the fields that bring a body or
///   an upgrade (a `Content-Length` only as a single `0`), asks for no upgrade
///   in `Connection`, and is not `CONNECT`.
pub fn check_client_requests(data: &[u8]) {
    let whole = fuzzing::client_requests(data, data.len().max(1));
    for step in [1, 7] {
        let split = fuzzing::client_requests(data, step);
        assert_eq!(
            split,
            whole,
            "reads of {step} bytes changed the outcome for {:?}",
            String::from_utf8_lossy(data)
        );
    }
    let (requests, rest) = &whole;
    let served: usize = requests.iter().map(|r| r.head_len).sum();
    let (Ok(rest) | Err(rest)) = rest;
    assert_eq!(
        &data[served..],
        rest.as_slice(),
        "bytes lost or changed: {:?}",
        String::from_utf8_lossy(data)
    );
    for r in requests {
        assert_ne!(r.method, "CONNECT");
        let lengths: Vec<&[u8]> = r
            .fields
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_slice())
            .collect();
        assert!(
            lengths.is_empty() || lengths == [b"0"],
            "served a request with a body length {lengths:?}: {:?}",
            String::from_utf8_lossy(data)
        );
        for (name, value) in &r.fields {
            assert!(
                !HYPER_FIELDS.contains(&name.as_str()),
                "served a request with {name}: {:?}",
                String::from_utf8_lossy(data)
            );
            if name == "connection" {
                let lower = String::from_utf8_lossy(value).to_ascii_lowercase();
                assert!(!lower.split(',').any(|t| t.trim() == "upgrade"), "{lower}");
            }
        }
    }
}
