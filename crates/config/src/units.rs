//! Parsing of human-friendly values: durations and socket addresses.

use std::time::Duration;

/// Parses `"250ms"`, `"5s"`, `"1m30s"`, `"2h"`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}); use a number with a unit, like \"250ms\", \"5s\", \"1m30s\"")
    })
}

/// Parses a size: a whole number of bytes, or a number with a unit — `B`, `KB`,
/// `MB`, `GB` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024), e.g.
/// `"512MiB"`, `"1.5 GB"`, `"64KiB"`.
pub(crate) fn size(s: &str) -> Result<u64, String> {
    let err = || format!("invalid size {s:?}; use a number with a unit, like \"64KiB\", \"512MiB\" or \"1GB\"");
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| err())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "mb" | "m" => 1000 * 1000,
        "gb" | "g" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(err()),
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || !(0.0..=1e18).contains(&bytes) {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("512MiB").unwrap(), 512 << 20);
        assert_eq!(size("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(size("64KiB").unwrap(), 65536);
        assert_eq!(size("100").unwrap(), 100);
        assert!(size("12 parsecs").is_err());
        assert!(size("-1MB").is_err());
        assert!(size("").is_err());
    }
}
