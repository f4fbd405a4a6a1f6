//! Parsing of human-friendly values: durations and socket addresses.

use std::time::Duration;

/// Parses `"250ms"`, `"5s"`, `"1m30s"`, `"2h"`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}); use a number with a unit, like \"250ms\", \"5s\", \"1m30s\"")
    })
}
