//! Content codings and `Accept-Encoding` negotiation (RFC 9110 §12.5.3).

use http::HeaderValue;

/// A content coding gatehouse can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encoding {
    /// Brotli (`br`), the best ratio for text.
    Brotli,
    /// Zstandard (`zstd`).
    Zstd,
    /// gzip, understood by every client.
    Gzip,
    /// No coding.
    Identity,
}

impl Encoding {
    /// The codings, in the server's order of preference when q-values tie.
    pub const PREFERENCE: [Encoding; 4] = [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip, Encoding::Identity];

    /// The token used in `Accept-Encoding` / `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
            Encoding::Identity => "identity",
        }
    }

    /// The file-name suffix of a precompressed sibling (`app.js.br`).
    pub fn file_suffix(self) -> Option<&'static str> {
        match self {
            Encoding::Brotli => Some(".br"),
            Encoding::Zstd => Some(".zst"),
            Encoding::Gzip => Some(".gz"),
            Encoding::Identity => None,
        }
    }

    pub(crate) fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.token())
    }
}

/// Parsed `Accept-Encoding`: q-values in thousandths (0..=1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptEncoding {
    br: Option<u16>,
    zstd: Option<u16>,
    gzip: Option<u16>,
    identity: Option<u16>,
    star: Option<u16>,
    present: bool,
}

impl AcceptEncoding {
    /// Parse every `Accept-Encoding` value of a request. Unknown codings and
    /// entries with a malformed q-value are skipped.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let mut a = AcceptEncoding {
            br: None,
            zstd: None,
            gzip: None,
            identity: None,
            star: None,
            present: false,
        };
        for value in headers.get_all(http::header::ACCEPT_ENCODING) {
            a.present = true;
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim();
                if coding.is_empty() {
                    continue;
                }
                let mut q = Some(1000);
                for param in parts {
                    let param = param.trim();
                    if let Some(v) = param.strip_prefix("q=").or_else(|| param.strip_prefix("Q=")) {
                        q = parse_q(v.trim());
                    }
                }
                let Some(q) = q else { continue };
                let slot = if coding.eq_ignore_ascii_case("br") {
                    &mut a.br
                } else if coding.eq_ignore_ascii_case("zstd") {
                    &mut a.zstd
                } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                    &mut a.gzip
                } else if coding.eq_ignore_ascii_case("identity") {
                    &mut a.identity
                } else if coding == "*" {
                    &mut a.star
                } else {
                    continue;
                };
                // A coding listed twice keeps its highest weight.
                *slot = Some(slot.map_or(q, |old| old.max(q)));
            }
        }
        a
    }

    /// The weight (0..=1000) the client gives a coding. Without the header only
    /// identity is acceptable (sending compressed bytes to a client that did not
    /// ask is a common source of broken downloads); identity is acceptable unless
    /// excluded by `identity;q=0` or `*;q=0`.
    pub fn q(&self, enc: Encoding) -> u16 {
        if !self.present {
            return if enc == Encoding::Identity { 1000 } else { 0 };
        }
        let explicit = match enc {
            Encoding::Brotli => self.br,
            Encoding::Zstd => self.zstd,
            Encoding::Gzip => self.gzip,
            Encoding::Identity => self.identity,
        };
        match (explicit, self.star, enc) {
            (Some(q), _, _) => q,
            (None, Some(q), _) => q,
            (None, None, Encoding::Identity) => 1000,
            (None, None, _) => 0,
        }
    }

    /// The weight used for ranking: like [`q`](Self::q), except that identity
    /// not named by the client (neither `identity` nor `*`) ranks below every
    /// coding it did name — `gzip;q=0.5` means "gzip please", not "prefer
    /// uncompressed".
    fn rank_q(&self, enc: Encoding) -> u16 {
        if enc == Encoding::Identity && self.present && self.identity.is_none() && self.star.is_none() {
            return 0;
        }
        self.q(enc)
    }

    /// Order `available` codings best first: by q-value, then server preference.
    /// Codings the client refuses (q=0) are dropped, except identity, which is
    /// always last-resort acceptable (we send it rather than a 406).
    pub fn rank(&self, available: &[Encoding]) -> Vec<Encoding> {
        let mut v: Vec<(u16, usize, Encoding)> = available
            .iter()
            .filter_map(|&e| {
                let q = self.rank_q(e);
                let pref = Encoding::PREFERENCE.iter().position(|&p| p == e).unwrap_or(9);
                (q > 0 || e == Encoding::Identity).then_some((q, pref, e))
            })
            .collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        v.into_iter().map(|(_, _, e)| e).collect()
    }
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`
fn parse_q(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths = 0u16;
    for b in frac.bytes().chain(std::iter::repeat(b'0')).take(3) {
        thousandths = thousandths * 10 + u16::from(b - b'0');
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn ae(v: &str) -> AcceptEncoding {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        AcceptEncoding::from_headers(&h)
    }

    const ALL: [Encoding; 4] = Encoding::PREFERENCE;

    #[test]
    fn q_values() {
        assert_eq!(parse_q("0.8"), Some(800));
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("0.001"), Some(1));
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("0.0001"), None);
        assert_eq!(parse_q("x"), None);
    }

    #[test]
    fn ranking() {
        assert_eq!(ae("gzip, deflate, br, zstd").rank(&ALL)[0], Encoding::Brotli);
        assert_eq!(ae("gzip;q=1, br;q=0.5").rank(&ALL)[0], Encoding::Gzip);
        assert_eq!(ae("br;q=0, gzip").rank(&ALL), vec![Encoding::Gzip, Encoding::Identity]);
        assert_eq!(ae("*").rank(&ALL)[0], Encoding::Brotli);
        assert_eq!(ae("identity").rank(&ALL), vec![Encoding::Identity]);
        assert_eq!(ae("gzip;q=0.5, identity;q=1").rank(&ALL)[0], Encoding::Identity);
        assert_eq!(ae("gzip;q=0.5").rank(&ALL), vec![Encoding::Gzip, Encoding::Identity]);
        assert_eq!(
            ae("x-gzip").rank(&[Encoding::Gzip, Encoding::Identity])[0],
            Encoding::Gzip
        );
        assert_eq!(
            AcceptEncoding::from_headers(&HeaderMap::new()).rank(&ALL),
            vec![Encoding::Identity]
        );
        // A malformed q drops that entry only.
        assert_eq!(ae("br;q=2, gzip").rank(&ALL)[0], Encoding::Gzip);
    }
}
