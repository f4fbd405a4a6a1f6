//! Request ids: honoured from trusted proxies, generated otherwise.

use http::HeaderValue;

/// Longest incoming id accepted; longer ones are replaced, so a client cannot
/// bloat every log line.
const MAX_INCOMING_LEN: usize = 128;

/// A new random 128-bit id as 32 lower-case hex digits.
///
/// Ids correlate log lines; they are not secrets, so a fast thread-local
/// generator is enough.
pub(crate) fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (pair, byte) in buf.chunks_exact_mut(2).zip(fastrand::u128(..).to_le_bytes()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

/// Whether an incoming id is acceptable: 1–128 visible ASCII characters.
pub(crate) fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_INCOMING_LEN && b.iter().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_hex_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 32);
        assert!(
            a.as_bytes().iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{a:?}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn incoming_ids_are_checked() {
        assert!(acceptable(&HeaderValue::from_static("abc-123")));
        assert!(!acceptable(&HeaderValue::from_static("")));
        assert!(!acceptable(&HeaderValue::from_static("has space")));
        assert!(!acceptable(&HeaderValue::from_str(&"x".repeat(129)).unwrap()));
    }
}
