//! `Range: bytes=…` parsing (RFC 9110 §14), pure and fuzzable.
//!
//! Policy: up to [`DEFAULT_MAX_RANGES`] ranges are honoured. They are sorted and
//! ranges that overlap or are separated by fewer than [`COALESCE_GAP`] bytes are
//! merged (RFC 9110 §14.2 allows both), so `bytes=0-,0-,0-` cannot make us send a
//! file many times. One range left → a plain 206; several → `multipart/byteranges`,
//! as nginx does. More ranges than the limit, a unit other than `bytes` or a
//! syntax error → the header is ignored and the full file is sent (the RFC lets a
//! server ignore Range). Only when the syntax is valid and no range overlaps the
//! file is the answer 416.

/// Most ranges honoured in one request; more and the Range header is ignored.
/// Real clients (video players, download resumers, PDF viewers) ask for one or
/// a handful; hundreds are only ever an attempt to make the server work.
pub const DEFAULT_MAX_RANGES: usize = 16;

/// Ranges closer than this many bytes are merged: a multipart boundary and its
/// headers cost about this much, so sending the gap is cheaper (Apache uses 80).
pub const COALESCE_GAP: u64 = 80;

/// One satisfiable byte range, both ends inclusive (as in `Content-Range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte offset.
    pub start: u64,
    /// Last byte offset, inclusive; `start <= end < file length`.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Never true: a range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The outcome of evaluating a Range header against a representation's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Ignore the header and send the whole representation (200).
    Ignore,
    /// Send these ranges (206); sorted, coalesced, never empty.
    Satisfiable(Vec<ByteRange>),
    /// Valid syntax, but no range overlaps the representation (416).
    Unsatisfiable,
}

/// Evaluate a Range header value against a representation of `len` bytes.
pub fn parse_range(header: &[u8], len: u64, max_ranges: usize) -> RangeOutcome {
    let Ok(header) = std::str::from_utf8(header) else {
        return RangeOutcome::Ignore;
    };
    let header = header.trim();
    let Some((unit, set)) = header.split_once('=') else {
        return RangeOutcome::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeOutcome::Ignore;
    }
    let mut ranges = Vec::new();
    let mut seen = 0usize;
    for spec in set.split(',') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        seen += 1;
        if seen > max_ranges {
            return RangeOutcome::Ignore;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return RangeOutcome::Ignore;
        };
        let (first, last) = (first.trim(), last.trim());
        if first.is_empty() {
            // Suffix range: the last N bytes.
            let Some(n) = digits(last) else {
                return RangeOutcome::Ignore;
            };
            if n > 0 && len > 0 {
                ranges.push(ByteRange {
                    start: len.saturating_sub(n),
                    end: len - 1,
                });
            }
            continue;
        }
        let Some(start) = digits(first) else {
            return RangeOutcome::Ignore;
        };
        let end = if last.is_empty() {
            u64::MAX
        } else {
            match digits(last) {
                Some(e) if e >= start => e,
                _ => return RangeOutcome::Ignore,
            }
        };
        if start < len {
            ranges.push(ByteRange {
                start,
                end: end.min(len - 1),
            });
        }
    }
    if seen == 0 {
        return RangeOutcome::Ignore;
    }
    if ranges.is_empty() {
        return RangeOutcome::Unsatisfiable;
    }
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(prev) if r.start <= prev.end.saturating_add(COALESCE_GAP + 1) => {
                prev.end = prev.end.max(r.end);
            }
            _ => merged.push(r),
        }
    }
    RangeOutcome::Satisfiable(merged)
}

/// Parse 1*DIGIT into u64; `None` on anything else or overflow.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(h: &str, len: u64) -> RangeOutcome {
        parse_range(h.as_bytes(), len, DEFAULT_MAX_RANGES)
    }

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    #[test]
    fn single_ranges() {
        assert_eq!(p("bytes=0-99", 1000), RangeOutcome::Satisfiable(vec![r(0, 99)]));
        assert_eq!(p("bytes=900-", 1000), RangeOutcome::Satisfiable(vec![r(900, 999)]));
        assert_eq!(p("bytes=-100", 1000), RangeOutcome::Satisfiable(vec![r(900, 999)]));
        assert_eq!(p("bytes=-5000", 1000), RangeOutcome::Satisfiable(vec![r(0, 999)]));
        assert_eq!(p("bytes=990-5000", 1000), RangeOutcome::Satisfiable(vec![r(990, 999)]));
        assert_eq!(p("Bytes = 1-1", 10), RangeOutcome::Satisfiable(vec![r(1, 1)]));
    }

    #[test]
    fn unsatisfiable_and_ignored() {
        assert_eq!(p("bytes=1000-", 1000), RangeOutcome::Unsatisfiable);
        assert_eq!(p("bytes=-0", 1000), RangeOutcome::Unsatisfiable);
        assert_eq!(p("bytes=0-", 0), RangeOutcome::Unsatisfiable);
        assert_eq!(p("bytes=5-1", 1000), RangeOutcome::Ignore);
        assert_eq!(p("items=0-1", 1000), RangeOutcome::Ignore);
        assert_eq!(p("bytes=abc", 1000), RangeOutcome::Ignore);
        assert_eq!(p("bytes=", 1000), RangeOutcome::Ignore);
        assert_eq!(p("bytes=99999999999999999999999-", 1000), RangeOutcome::Ignore);
        assert_eq!(p("bytes=+1-2", 1000), RangeOutcome::Ignore);
        let many = format!("bytes={}", vec!["0-0"; DEFAULT_MAX_RANGES + 1].join(","));
        assert_eq!(p(&many, 1000), RangeOutcome::Ignore);
    }

    #[test]
    fn coalescing() {
        assert_eq!(p("bytes=0-,0-,0-", 1000), RangeOutcome::Satisfiable(vec![r(0, 999)]));
        assert_eq!(
            p("bytes=500-600,0-10,20-30", 1000),
            RangeOutcome::Satisfiable(vec![r(0, 30), r(500, 600)])
        );
        assert_eq!(
            p("bytes=0-0,200-200", 1000),
            RangeOutcome::Satisfiable(vec![r(0, 0), r(200, 200)])
        );
    }

    #[test]
    fn never_panics_and_stays_in_bounds() {
        let parts = ["bytes=", "-", ",", "0", "1", "9", "18446744073709551615", " ", "=", "x"];
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..rng.usize(0..10) {
                s.push_str(parts[rng.usize(0..parts.len())]);
            }
            let len = rng.u64(0..50);
            if let RangeOutcome::Satisfiable(rs) = p(&s, len) {
                for w in rs.windows(2) {
                    assert!(w[0].end < w[1].start);
                }
                for x in rs {
                    assert!(x.start <= x.end && x.end < len, "{s} {len}");
                }
            }
        }
    }
}
