//! Hop-by-hop headers and the forwarding headers a proxy adds.
//!
//! RFC 9110 §7.6.1: a proxy removes the headers named in `Connection` and the
//! connection-specific headers before forwarding, in both directions.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Connection-specific headers that never cross a proxy.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Where `name` (lower case) is in [`HOP_BY_HOP`], if it is a hop-by-hop
/// header. Matched as text: one length switch instead of seven name comparisons.
pub(crate) fn hop_by_hop_index(name: &str) -> Option<u8> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authorization" => 3,
        "te" => 4,
        "transfer-encoding" => 5,
        "upgrade" => 6,
        _ => return None,
    })
}

/// Removes hop-by-hop headers, including any listed in `Connection`.
///
/// Returns the `Upgrade` value if the message asked for a protocol upgrade
/// (`Connection: upgrade` plus an `Upgrade` header), so the caller can forward it.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    // One pass over the names finds which hop-by-hop headers are present; most
    // messages carry none or only `Connection`, so this beats seven hashed removals.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return None;
    }
    let mut upgrade = None;
    let mut te_trailers = false;
    if present & 1 != 0 {
        // `Connection` (index 0) may name more headers to drop.
        let mut listed: Vec<HeaderName> = Vec::new();
        let mut wants_upgrade = false;
        for conn in headers.get_all(header::CONNECTION) {
            let Ok(value) = conn.to_str() else { continue };
            for token in value.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("upgrade") {
                    wants_upgrade = true;
                } else if token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close") {
                    // Connection options, not header names (the common case).
                } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    listed.push(name);
                }
            }
        }
        for name in listed {
            // Never let `Connection` remove the headers the proxy itself relies on.
            if name != header::HOST {
                headers.remove(&name);
            }
        }
        if wants_upgrade {
            upgrade = headers.get(header::UPGRADE).cloned();
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            if *name == header::TE {
                te_trailers = headers
                    .get(header::TE)
                    .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
            }
            headers.remove(name);
        }
    }
    if te_trailers {
        // `TE: trailers` is end-to-end meaningful (gRPC needs it).
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    upgrade
}

/// Whether `ip` is one of the trusted proxies.
pub(crate) fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) to IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client address: the peer, or — when the peer is a trusted proxy — the
/// right-most address in `X-Forwarded-For` that is not itself a trusted proxy.
///
/// Unparseable entries stop the walk: nothing left of garbage is believed.
pub(crate) fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(trusted, peer) {
        return peer;
    }
    let mut client = peer;
    // Headers are walked last to first, and entries right to left.
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(value) = value.to_str() else { return client };
        for entry in value.rsplit(',') {
            let Some(ip) = parse_forwarded_ip(entry.trim()) else {
                return client;
            };
            client = canonical(ip);
            if !is_trusted(trusted, client) {
                return client;
            }
        }
    }
    client
}

fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    // `[v6]:port`, `[v6]`, or `v4:port`
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

/// Pre-computed per-connection values, so the common request does not format
/// the peer address again.
#[derive(Debug)]
pub(crate) struct PeerInfo {
    pub(crate) ip: IpAddr,
    pub(crate) trusted: bool,
    /// The peer address as a header value (for `X-Forwarded-For`).
    pub(crate) ip_header: HeaderValue,
    /// The peer as a `Forwarded` node (`for=1.2.3.4` or `for="[::1]"`).
    pub(crate) forwarded_node: String,
    /// The last `Forwarded` value built, keyed by host: requests on one
    /// connection nearly always name the same host, so it is built once.
    last_forwarded: std::sync::Mutex<Option<(Option<HeaderValue>, &'static str, HeaderValue)>>,
}

impl PeerInfo {
    pub(crate) fn new(ip: IpAddr, trusted: &[IpNet]) -> Self {
        let ip = canonical(ip);
        let text = ip.to_string();
        let forwarded_node = match ip {
            IpAddr::V4(_) => format!("for={text}"),
            IpAddr::V6(_) => format!("for=\"[{text}]\""),
        };
        Self {
            ip,
            trusted: is_trusted(trusted, ip),
            // An IP address's text form is always a valid header value.
            ip_header: HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("unknown")),
            forwarded_node,
            last_forwarded: std::sync::Mutex::new(None),
        }
    }

    /// `for=…;host="…";proto=…` for this peer (RFC 7239), cached per host.
    fn forwarded_node(&self, host: Option<&HeaderValue>, proto: &'static str) -> HeaderValue {
        let mut cache = self.last_forwarded.lock().ok();
        if let Some(Some((h, p, value))) = cache.as_deref() {
            if h.as_ref() == host && *p == proto {
                return value.clone();
            }
        }
        let mut node = String::with_capacity(64);
        node.push_str(&self.forwarded_node);
        if let Some(h) = host.and_then(|h| h.to_str().ok()) {
            node.push_str(";host=\"");
            node.push_str(h);
            node.push('"');
        }
        node.push_str(";proto=");
        node.push_str(proto);
        // Built from an IP, a visible-ASCII host and a fixed word: always valid.
        let value = HeaderValue::from_str(&node).unwrap_or_else(|_| HeaderValue::from_static("for=unknown"));
        if let Some(cache) = cache.as_deref_mut() {
            *cache = Some((host.cloned(), proto, value.clone()));
        }
        value
    }
}

/// The headers gatehouse itself sets on a request going upstream: `Host` (given
/// for each attempt), `X-Forwarded-For/-Proto/-Host`, `Forwarded` and
/// `X-Request-Id`. They are
/// written straight into the upstream request head, after the client's headers,
/// whose own copies of these names are left out ([`ProxyHeaders::replaces`]).
///
/// From a trusted peer, existing forwarding values are extended or kept; from
/// anyone else they are replaced, so a client cannot forge its address or scheme.
#[derive(Debug, Clone)]
pub(crate) struct ProxyHeaders {
    pub(crate) x_forwarded_for: HeaderValue,
    pub(crate) x_forwarded_proto: HeaderValue,
    pub(crate) x_forwarded_host: Option<HeaderValue>,
    pub(crate) forwarded: Option<HeaderValue>,
    pub(crate) request_id: HeaderValue,
}

impl ProxyHeaders {
    /// The values for a request with client headers `headers` from `peer`.
    pub(crate) fn new(
        headers: &HeaderMap,
        peer: &PeerInfo,
        proto: &'static str,
        host: Option<&HeaderValue>,
        request_id: HeaderValue,
    ) -> Self {
        let joined = |name: &HeaderName| {
            if peer.trusted {
                join_existing(headers, name).and_then(|v| HeaderValue::from_bytes(&v).ok())
            } else {
                None
            }
        };
        let x_forwarded_for = match joined(&X_FORWARDED_FOR) {
            Some(prior) => {
                let mut v = prior.as_bytes().to_vec();
                v.extend_from_slice(b", ");
                v.extend_from_slice(peer.ip_header.as_bytes());
                HeaderValue::from_bytes(&v).unwrap_or_else(|_| peer.ip_header.clone())
            }
            None => peer.ip_header.clone(),
        };
        let x_forwarded_proto = joined(&X_FORWARDED_PROTO).unwrap_or_else(|| HeaderValue::from_static(proto));
        let x_forwarded_host = joined(&X_FORWARDED_HOST).or_else(|| host.cloned());
        let node = peer.forwarded_node(host, proto);
        let forwarded = match joined(&header::FORWARDED) {
            Some(prior) => {
                let mut v = prior.as_bytes().to_vec();
                v.extend_from_slice(b", ");
                v.extend_from_slice(node.as_bytes());
                HeaderValue::from_bytes(&v).ok()
            }
            None => Some(node),
        };
        Self {
            x_forwarded_for,
            x_forwarded_proto,
            x_forwarded_host,
            forwarded,
            request_id,
        }
    }

    /// Whether a client header of this name is left out because gatehouse
    /// sets it.
    pub(crate) fn replaces(name: &HeaderName) -> bool {
        matches!(
            name.as_str(),
            "host" | "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "forwarded" | "x-request-id"
        )
    }

    /// The value gatehouse sends for `name`, if it is one of these headers
    /// (`Host` excepted: it depends on the target, so a balancer hashing on it
    /// sees the client's).
    pub(crate) fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        match name.as_str() {
            "x-forwarded-for" => Some(&self.x_forwarded_for),
            "x-forwarded-proto" => Some(&self.x_forwarded_proto),
            "x-forwarded-host" => self.x_forwarded_host.as_ref(),
            "forwarded" => self.forwarded.as_ref(),
            "x-request-id" => Some(&self.request_id),
            _ => None,
        }
    }

    /// Appends the header lines to a request head, with `host` (the target's
    /// `host:port`, or the client's host with `preserve_host`).
    pub(crate) fn write(&self, host: &HeaderValue, out: &mut Vec<u8>) {
        let mut line = |name: &[u8], value: &HeaderValue| {
            out.extend_from_slice(name);
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        line(b"host: ", host);
        line(b"x-forwarded-for: ", &self.x_forwarded_for);
        line(b"x-forwarded-proto: ", &self.x_forwarded_proto);
        if let Some(v) = &self.x_forwarded_host {
            line(b"x-forwarded-host: ", v);
        }
        if let Some(v) = &self.forwarded {
            line(b"forwarded: ", v);
        }
        line(b"x-request-id: ", &self.request_id);
    }
}

/// All values of a header joined with `, `, or `None` if absent.
fn join_existing(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut out = first.as_bytes().to_vec();
    for v in values {
        out.extend_from_slice(b", ");
        out.extend_from_slice(v.as_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn connection_listed_headers_are_removed() {
        let mut h = hm(&[
            ("connection", "keep-alive, x-secret, Upgrade"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "websocket"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("te", "trailers"),
            ("x-kept", "yes"),
        ]);
        let up = strip_hop_by_hop(&mut h);
        assert_eq!(up.unwrap(), "websocket");
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept", "te"]);
    }

    #[test]
    fn te_other_than_trailers_is_removed() {
        let mut h = hm(&[("te", "gzip")]);
        assert!(strip_hop_by_hop(&mut h).is_none());
        assert!(h.is_empty());
    }

    #[test]
    fn untrusted_peer_cannot_spoof_client_ip() {
        let h = hm(&[("x-forwarded-for", "1.2.3.4")]);
        let peer: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(client_ip(&h, peer, &nets(&["10.0.0.0/8"])), peer);
        assert_eq!(client_ip(&h, peer, &[]), peer);
    }

    #[test]
    fn trusted_chain_yields_rightmost_untrusted() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = hm(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.2"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        let ip = client_ip(&h, "10.0.0.5".parse().unwrap(), &trusted);
        assert_eq!(ip, "198.51.100.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_in_chain_stops_the_walk() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = hm(&[("x-forwarded-for", "6.6.6.6, nonsense, 10.2.2.2")]);
        assert_eq!(
            client_ip(&h, "10.0.0.5".parse().unwrap(), &trusted),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn forwarding_headers_replace_untrusted_values() {
        let h = hm(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.1.1.1"),
        ]);
        let peer = PeerInfo::new("203.0.113.7".parse().unwrap(), &[]);
        let p = ProxyHeaders::new(
            &h,
            &peer,
            "http",
            Some(&HeaderValue::from_static("app.example.com")),
            HeaderValue::from_static("id1"),
        );
        assert_eq!(p.x_forwarded_for, "203.0.113.7");
        assert_eq!(p.x_forwarded_proto, "http");
        assert_eq!(p.x_forwarded_host.as_ref().unwrap(), "app.example.com");
        assert_eq!(
            p.forwarded.as_ref().unwrap(),
            "for=203.0.113.7;host=\"app.example.com\";proto=http"
        );
        let mut head = Vec::new();
        p.write(&HeaderValue::from_static("10.0.0.1:8000"), &mut head);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "host: 10.0.0.1:8000\r\nx-forwarded-for: 203.0.113.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: app.example.com\r\nforwarded: for=203.0.113.7;host=\"app.example.com\";proto=http\r\n\
             x-request-id: id1\r\n"
        );
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "x-request-id",
        ] {
            let name = HeaderName::from_static(name);
            assert!(ProxyHeaders::replaces(&name) && p.get(&name).is_some(), "{name}");
        }
        assert!(ProxyHeaders::replaces(&header::HOST) && p.get(&header::HOST).is_none());
        assert!(!ProxyHeaders::replaces(&header::USER_AGENT));
    }

    #[test]
    fn forwarding_headers_extend_trusted_values() {
        let h = hm(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.1.1.1;proto=https"),
        ]);
        let peer = PeerInfo::new("::1".parse().unwrap(), &nets(&["::1/128"]));
        let p = ProxyHeaders::new(&h, &peer, "http", None, HeaderValue::from_static("id"));
        assert_eq!(p.x_forwarded_for, "1.1.1.1, ::1");
        assert_eq!(p.x_forwarded_proto, "https");
        assert_eq!(p.x_forwarded_host, None);
        assert_eq!(
            p.forwarded.as_ref().unwrap(),
            "for=1.1.1.1;proto=https, for=\"[::1]\";proto=http"
        );
    }

    #[test]
    fn mapped_ipv4_is_canonical() {
        let peer = PeerInfo::new("::ffff:10.0.0.1".parse().unwrap(), &nets(&["10.0.0.0/8"]));
        assert!(peer.trusted);
        assert_eq!(peer.ip_header, "10.0.0.1");
    }
}
