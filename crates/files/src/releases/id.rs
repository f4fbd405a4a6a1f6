//! Release ids: `YYYYMMDDTHHMMSSZ-xxxx`, UTC creation time plus 4 random hex
//! digits. They sort by time as plain strings.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of an id: 16 for the time, 1 for `-`, 4 for the suffix.
const ID_LEN: usize = 21;

/// Is `s` a well-formed release id?
pub(crate) fn is_valid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == ID_LEN
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..].iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        && parse_time(s).is_some()
}

/// A new id for `now`, strictly greater than `newest` (the newest id already
/// in the slot): if the clock did not move past it, the newest id's second
/// plus one is used, so "previous release" is always well defined.
pub(crate) fn new_id(now: SystemTime, newest: Option<&str>) -> String {
    let mut secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if let Some(t) = newest.and_then(parse_time) {
        let newest_secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if secs <= newest_secs {
            secs = newest_secs + 1;
        }
    }
    format!("{}-{:04x}", format_time(secs), fastrand::u16(..))
}

/// The creation time encoded in an id.
pub(crate) fn parse_time(id: &str) -> Option<SystemTime> {
    let num = |r: std::ops::Range<usize>| id.get(r)?.parse::<u32>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + s);
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the epoch.
pub(crate) fn format_time(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// Howard Hinnant's civil calendar algorithms (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for secs in [0u64, 951_782_400, 1_700_000_000, 1_795_262_701, 4_102_444_799] {
            let id = format!("{}-00ff", format_time(secs));
            assert!(is_valid(&id), "{id}");
            assert_eq!(parse_time(&id), Some(UNIX_EPOCH + Duration::from_secs(secs)));
        }
        assert_eq!(format_time(1_795_262_701), "20261121T120501Z");
        assert!(!is_valid("20261321T120501Z-3f9a"));
        assert!(!is_valid("20261121T120501Z-3F9A"));
        assert!(!is_valid("../x"));
    }

    #[test]
    fn monotonic() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_262_701);
        let a = new_id(now, None);
        let b = new_id(now, Some(&a));
        let c = new_id(now - Duration::from_secs(30), Some(&b));
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(b.starts_with("20261121T120502Z"));
    }
}
