//! Signed sticky-session cookies.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Encodes and verifies the cookie that pins a client to a target.
///
/// The value is `ID.MAC`: the target's stable id and a truncated HMAC-SHA256 of
/// it, so clients cannot steer themselves to a target of their choosing (for
/// instance to concentrate load on one). A value that does not verify is ignored
/// and the client is placed anew.
#[derive(Clone)]
pub struct StickyCookie {
    name: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for StickyCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StickyCookie")
            .field("name", &self.name)
            .field("key", &"***")
            .finish()
    }
}

/// Bytes of MAC kept: 64 bits make forging by guessing impractical.
const MAC_LEN: usize = 8;

impl StickyCookie {
    /// A cookie called `name`, signed with `key`.
    pub fn new(name: impl Into<String>, key: &[u8]) -> Self {
        Self {
            name: name.into(),
            key: key.to_vec(),
        }
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn mac(&self, id: u64) -> [u8; MAC_LEN] {
        let mut out = [0u8; MAC_LEN];
        // HMAC accepts keys of any length, so this cannot fail.
        if let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&self.key) {
            m.update(&id.to_be_bytes());
            let full = m.finalize().into_bytes();
            out.copy_from_slice(&full[..MAC_LEN]);
        }
        out
    }

    /// The cookie value for target `id`.
    pub fn encode(&self, id: u64) -> String {
        let mut s = format!("{id:016x}.");
        for b in self.mac(id) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// The target id in a cookie value, if its signature verifies.
    pub fn decode(&self, value: &str) -> Option<u64> {
        let (id_hex, mac_hex) = value.split_once('.')?;
        if id_hex.len() != 16 || mac_hex.len() != MAC_LEN * 2 {
            return None;
        }
        let id = u64::from_str_radix(id_hex, 16).ok()?;
        let expected = self.mac(id);
        let mut diff = 0u8;
        for (i, e) in expected.iter().enumerate() {
            let b = u8::from_str_radix(mac_hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
            diff |= b ^ e;
        }
        (diff == 0).then_some(id)
    }

    /// Finds this cookie's value in `Cookie` header values.
    pub fn find<'a>(&self, cookie_headers: impl Iterator<Item = &'a [u8]>) -> Option<u64> {
        for header in cookie_headers {
            let Ok(text) = std::str::from_utf8(header) else {
                continue;
            };
            for pair in text.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=') {
                    if k == self.name {
                        if let Some(id) = self.decode(v.trim_matches('"')) {
                            return Some(id);
                        }
                    }
                }
            }
        }
        None
    }

    /// A `Set-Cookie` value pinning the client to target `id`.
    pub fn set_cookie(&self, id: u64) -> String {
        format!("{}={}; Path=/; HttpOnly; SameSite=Lax", self.name, self.encode(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let c = StickyCookie::new("gh", b"secret key");
        let v = c.encode(42);
        assert_eq!(c.decode(&v), Some(42));
        let forged = format!("{:016x}.{}", 43, &v[17..]);
        assert_eq!(c.decode(&forged), None);
        assert_eq!(StickyCookie::new("gh", b"other key").decode(&v), None);
        assert_eq!(c.decode("garbage"), None);
        assert_eq!(c.decode(""), None);
    }

    #[test]
    fn found_among_other_cookies() {
        let c = StickyCookie::new("gh", b"k");
        let header = format!("a=1; gh={}; b=2", c.encode(7));
        assert_eq!(c.find([header.as_bytes()].into_iter()), Some(7));
        assert_eq!(c.find([b"gh=bad".as_slice()].into_iter()), None);
        assert!(c.set_cookie(7).starts_with("gh="));
    }
}
