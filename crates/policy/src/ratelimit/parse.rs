//! The string form of a rate limit: `"20/s burst 40 per ip"`.
//!
//! ```text
//! spec   = count "/" period [ "burst" count ] [ "per" key ]
//! period = [ count ] unit            ; "s", "10s", "m", "5m", "h", "d"
//! unit   = "s" | "sec" | "second" | "m" | "min" | "minute" | "h" | "hour" | "d" | "day"
//!          (plurals accepted)
//! key    = "ip" | "user" | "route" | "header" header-name
//! ```
//!
//! Words are case-insensitive and separated by whitespace. Without `burst` the
//! burst equals the count (`"20/s"` allows 20 at once, then one every 50 ms);
//! without `per` the key is the client IP.

use std::num::NonZeroU32;
use std::time::Duration;

use http::HeaderName;

use super::{KeyKind, Rate, RateSpec};
use crate::PolicyError;

pub(super) fn parse(input: &str) -> Result<RateSpec, PolicyError> {
    let err = |reason: String| PolicyError::Rate {
        input: input.to_owned(),
        reason,
    };
    let mut words = input.split_whitespace();
    let Some(first) = words.next() else {
        return Err(err("it is empty".into()));
    };
    let Some((count, period)) = first.split_once('/') else {
        return Err(err(format!("{first:?} has no '/' between the count and the period")));
    };
    let per_period = parse_count(count).map_err(|why| err(format!("count {count:?} {why}")))?;
    let period = parse_period(period).map_err(|why| err(format!("period {period:?} {why}")))?;

    let mut burst = None;
    let mut key = None;
    while let Some(word) = words.next() {
        if word.eq_ignore_ascii_case("burst") {
            if burst.is_some() {
                return Err(err("\"burst\" is given twice".into()));
            }
            if key.is_some() {
                return Err(err("\"burst\" must come before \"per\"".into()));
            }
            let Some(n) = words.next() else {
                return Err(err("\"burst\" needs a number after it".into()));
            };
            burst = Some(parse_count(n).map_err(|why| err(format!("burst {n:?} {why}")))?);
        } else if word.eq_ignore_ascii_case("per") {
            if key.is_some() {
                return Err(err("\"per\" is given twice".into()));
            }
            let Some(kind) = words.next() else {
                return Err(err("\"per\" needs ip, user, route or header NAME after it".into()));
            };
            key = Some(if kind.eq_ignore_ascii_case("ip") {
                KeyKind::Ip
            } else if kind.eq_ignore_ascii_case("user") {
                KeyKind::User
            } else if kind.eq_ignore_ascii_case("route") {
                KeyKind::Route
            } else if kind.eq_ignore_ascii_case("header") {
                let Some(name) = words.next() else {
                    return Err(err("\"per header\" needs a header name after it".into()));
                };
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| err(format!("{name:?} is not a valid header name")))?;
                KeyKind::Header(name)
            } else {
                return Err(err(format!(
                    "unknown key {kind:?} after \"per\" (ip, user, route or header NAME)"
                )));
            });
        } else {
            return Err(err(format!(
                "unexpected {word:?} (only \"burst N\" and \"per KEY\" may follow the rate)"
            )));
        }
    }
    let rate = Rate::new(per_period, period, burst.unwrap_or(per_period)).map_err(|e| match e {
        PolicyError::Rate { reason, .. } => err(reason),
        other => other,
    })?;
    Ok(RateSpec {
        rate,
        key: key.unwrap_or(KeyKind::Ip),
    })
}

fn parse_count(s: &str) -> Result<NonZeroU32, &'static str> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is not a whole number");
    }
    let n: u32 = s.parse().map_err(|_| "is too large")?;
    NonZeroU32::new(n).ok_or("must be at least 1")
}

fn parse_period(s: &str) -> Result<Duration, &'static str> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    let n = if n.is_empty() { NonZeroU32::MIN } else { parse_count(n)? };
    let unit_secs: u64 = match unit.to_ascii_lowercase().as_str() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "" => return Err("has no unit (s, m, h or d)"),
        _ => return Err("has an unknown unit (s, m, h or d)"),
    };
    Ok(Duration::from_secs(u64::from(n.get()) * unit_secs))
}
