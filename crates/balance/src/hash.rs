//! Stable hashing for consistent target choice.
//!
//! The hash must be the same in every gatehouse instance and across releases, or
//! several instances behind a DNS load balancer would send one client to
//! different targets. So it is written out here (FNV-1a, then a SplitMix64
//! finaliser for good bit mixing) rather than taken from `std`, whose algorithm
//! may change.

/// FNV-1a over `bytes`, finished with SplitMix64.
pub(crate) fn stable_hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Weighted rendezvous (highest random weight) score of `target_id` for `key`.
///
/// Each key goes to the target with the highest score. Adding a target moves
/// only the keys that now score highest on it — about 1/n of them — and removing
/// one moves only its own keys. Weights scale a target's share proportionally
/// (`-w / ln(u)`, the standard weighted form).
pub fn rendezvous_score(key_hash: u64, target_id: u64, weight: u32) -> f64 {
    let h = mix(key_hash ^ target_id.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15);
    // A uniform value in (0, 1): 53 random bits, never 0 or 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight.max(1)) / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_values_do_not_change() {
        // Pinned: instances and releases must agree on these.
        assert_eq!(stable_hash(0, b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(stable_hash(0, b"10.0.0.1"), stable_hash(0, b"10.0.0.1"));
        assert_ne!(stable_hash(0, b"10.0.0.1"), stable_hash(0, b"10.0.0.2"));
        assert_ne!(stable_hash(1, b"10.0.0.1"), stable_hash(0, b"10.0.0.1"));
    }

    #[test]
    fn scores_are_positive_and_weighted() {
        let mut heavier = 0;
        for k in 0..10_000u64 {
            let kh = stable_hash(0, &k.to_le_bytes());
            let a = rendezvous_score(kh, 1, 1);
            let b = rendezvous_score(kh, 2, 3);
            assert!(a > 0.0 && b > 0.0);
            if b > a {
                heavier += 1;
            }
        }
        // Weight 3 vs 1 should win about 75% of keys.
        assert!((7_000..8_000).contains(&heavier), "{heavier}");
    }
}
