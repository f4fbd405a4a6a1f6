//! IP allow and deny lists.
//!
//! Evaluation, for the real client address (after trusted proxies):
//! 1. an address in `deny` is denied — deny always wins;
//! 2. otherwise, if `allow` is non-empty, an address not in it is denied;
//! 3. otherwise the address is allowed.
//!
//! IPv4 and IPv6 are separate families. An IPv4-mapped IPv6 address
//! (`::ffff:192.0.2.7`) is IPv4, and so is a network written in that form
//! (`::ffff:10.0.0.0/104` is `10.0.0.0/8`), so a dual-stack listener cannot be used
//! to dodge an IPv4 rule. An IPv6 network never matches IPv4 clients: `::/0` means
//! "every IPv6 client".
//!
//! Lists are compiled into sorted, merged, disjoint ranges per family and looked
//! up by binary search: O(log n), no allocation.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::PolicyError;

/// The result of [`IpRules::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVerdict {
    /// The address may proceed.
    Allowed,
    /// The address is in the deny list.
    Denied,
    /// The allow list is non-empty and the address is not in it.
    NotAllowed,
}

impl IpVerdict {
    /// Whether the request may proceed.
    pub fn is_allowed(self) -> bool {
        self == IpVerdict::Allowed
    }
}

/// Compiled allow and deny lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRules {
    allow: Ranges,
    deny: Ranges,
}

impl IpRules {
    /// Compiles the lists. Either may be empty; with both empty every address is
    /// allowed.
    pub fn new(allow: &[IpNet], deny: &[IpNet]) -> IpRules {
        IpRules {
            allow: Ranges::new(allow),
            deny: Ranges::new(deny),
        }
    }

    /// [`IpRules::new`] from strings: CIDRs or single addresses.
    pub fn parse<S: AsRef<str>>(allow: &[S], deny: &[S]) -> Result<IpRules, PolicyError> {
        let nets = |list: &[S]| {
            list.iter()
                .map(|s| parse_network(s.as_ref()))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(IpRules::new(&nets(allow)?, &nets(deny)?))
    }

    /// Whether both lists are empty (the check can be skipped).
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Decides for `addr` (see the module docs for the order).
    pub fn check(&self, addr: IpAddr) -> IpVerdict {
        let addr = addr.to_canonical();
        if self.deny.contains(addr) {
            IpVerdict::Denied
        } else if !self.allow.is_empty() && !self.allow.contains(addr) {
            IpVerdict::NotAllowed
        } else {
            IpVerdict::Allowed
        }
    }
}

/// A CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address (`192.0.2.7`, `::1`).
/// Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
pub fn parse_network(s: &str) -> Result<IpNet, PolicyError> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| PolicyError::Network { input: s.to_owned() })
}

/// Disjoint, sorted, merged inclusive ranges per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ranges {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl Ranges {
    fn new(nets: &[IpNet]) -> Ranges {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match normalise(*net) {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Ranges {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }
}

/// An IPv6 network inside `::ffff:0:0/96` becomes the IPv4 network it maps.
fn normalise(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net {
        if n.prefix_len() >= 96 {
            if let Some(v4) = n.network().to_ipv4_mapped() {
                if let Ok(v4net) = ipnet::Ipv4Net::new(v4, n.prefix_len() - 96) {
                    return IpNet::V4(v4net);
                }
            }
        }
    }
    net.trunc()
}

fn merge<T: Ord + Copy + num::Step>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1 || T::adjacent(last.1, lo) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out.shrink_to_fit();
    out
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x is the only candidate.
    let i = ranges.partition_point(|&(lo, _)| lo <= x);
    i > 0 && x <= ranges[i - 1].1
}

mod num {
    /// Whether `b` directly follows `a` (so `[.., a]` and `[b, ..]` can merge).
    pub(super) trait Step {
        fn adjacent(a: Self, b: Self) -> bool;
    }
    impl Step for u32 {
        fn adjacent(a: u32, b: u32) -> bool {
            a.checked_add(1) == Some(b)
        }
    }
    impl Step for u128 {
        fn adjacent(a: u128, b: u128) -> bool {
            a.checked_add(1) == Some(b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_over_allow() {
        let r = IpRules::parse(&["10.0.0.0/8"], &["10.1.0.0/16"]).unwrap();
        assert_eq!(r.check(ip("10.2.3.4")), IpVerdict::Allowed);
        assert_eq!(r.check(ip("10.1.3.4")), IpVerdict::Denied);
        assert_eq!(r.check(ip("192.0.2.1")), IpVerdict::NotAllowed);
    }

    #[test]
    fn empty_allow_list_allows_all_but_denied() {
        let r = IpRules::parse(&[] as &[&str], &["192.0.2.7", "2001:db8::/32"]).unwrap();
        assert_eq!(r.check(ip("192.0.2.7")), IpVerdict::Denied);
        assert_eq!(r.check(ip("192.0.2.8")), IpVerdict::Allowed);
        assert_eq!(r.check(ip("2001:db8:1::1")), IpVerdict::Denied);
        assert_eq!(r.check(ip("2001:db9::1")), IpVerdict::Allowed);
        assert!(IpRules::default().check(ip("::1")).is_allowed());
        assert!(IpRules::default().is_empty());
    }

    #[test]
    fn ipv4_mapped_addresses_and_networks_are_ipv4() {
        let r = IpRules::parse(&[] as &[&str], &["10.0.0.0/8"]).unwrap();
        assert_eq!(r.check(ip("::ffff:10.9.9.9")), IpVerdict::Denied);
        let r = IpRules::parse(&[] as &[&str], &["::ffff:192.0.2.0/120"]).unwrap();
        assert_eq!(r.check(ip("192.0.2.200")), IpVerdict::Denied);
        assert_eq!(r.check(ip("192.0.3.1")), IpVerdict::Allowed);
        // An IPv6 network does not catch IPv4 clients.
        let r = IpRules::parse(&[] as &[&str], &["::/0"]).unwrap();
        assert_eq!(r.check(ip("192.0.2.1")), IpVerdict::Allowed);
        assert_eq!(r.check(ip("::ffff:192.0.2.1")), IpVerdict::Allowed);
        assert_eq!(r.check(ip("2001:db8::1")), IpVerdict::Denied);
    }

    #[test]
    fn boundaries_are_exact() {
        let r = IpRules::parse(&["192.0.2.0/24", "2001:db8::/127"], &[] as &[&str]).unwrap();
        assert!(r.check(ip("192.0.2.0")).is_allowed());
        assert!(r.check(ip("192.0.2.255")).is_allowed());
        assert!(!r.check(ip("192.0.1.255")).is_allowed());
        assert!(!r.check(ip("192.0.3.0")).is_allowed());
        assert!(r.check(ip("2001:db8::1")).is_allowed());
        assert!(!r.check(ip("2001:db8::2")).is_allowed());
        let all = IpRules::parse(&["0.0.0.0/0"], &[] as &[&str]).unwrap();
        assert!(all.check(ip("255.255.255.255")).is_allowed());
        assert!(all.check(ip("0.0.0.0")).is_allowed());
        assert!(!all.check(ip("::1")).is_allowed());
    }

    #[test]
    fn host_bits_are_cleared_and_bad_input_named() {
        let r = IpRules::parse(&["10.1.2.3/8"], &[] as &[&str]).unwrap();
        assert!(r.check(ip("10.200.0.1")).is_allowed());
        let e = IpRules::parse(&["10.0.0.0/33"], &[] as &[&str]).unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
        assert!(IpRules::parse(&["example.com"], &[] as &[&str]).is_err());
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let r = IpRules::parse(
            &["10.0.0.0/9", "10.128.0.0/9", "10.0.0.0/16", "11.0.0.0/8"],
            &[] as &[&str],
        )
        .unwrap();
        assert_eq!(
            r.allow.v4,
            vec![(
                u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)),
                u32::from(std::net::Ipv4Addr::new(11, 255, 255, 255))
            )]
        );
    }

    /// Many entries: every listed /24 matches at its edges, every gap does not,
    /// and the answer agrees with a linear scan of the input.
    #[test]
    fn many_entries_agree_with_a_linear_scan() {
        let mut nets = Vec::new();
        let mut seed = 0x9e37_79b9_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..5000 {
            let addr = std::net::Ipv4Addr::from(next());
            let len = 8 + (next() % 25) as u8;
            nets.push(IpNet::V4(ipnet::Ipv4Net::new(addr, len).unwrap().trunc()));
        }
        for _ in 0..2000 {
            let hi = u128::from(next()) << 96 | u128::from(next()) << 64;
            let len = 16 + (next() % 100) as u8;
            nets.push(IpNet::V6(ipnet::Ipv6Net::new(hi.into(), len).unwrap().trunc()));
        }
        let rules = IpRules::new(&[], &nets);
        for _ in 0..20_000 {
            let probe = if next() % 2 == 0 {
                IpAddr::V4(next().into())
            } else {
                let base = nets[next() as usize % nets.len()];
                // Near a network edge, where off-by-one errors live.
                match base {
                    IpNet::V4(n) => IpAddr::V4((u32::from(n.broadcast()).wrapping_add(next() % 3)).into()),
                    IpNet::V6(n) => IpAddr::V6((u128::from(n.network()).wrapping_sub(u128::from(next() % 2))).into()),
                }
            };
            let linear = nets.iter().any(|n| n.contains(&probe));
            assert_eq!(rules.check(probe) == IpVerdict::Denied, linear, "{probe}");
        }
    }
}
