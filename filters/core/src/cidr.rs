//! CIDR ranges and an index that answers "which entries contain this address" in O(distinct prefix lengths)
//! (at most 33 for IPv4 and 129 for IPv6), however many ranges the policy lists.

use rustc_hash::FxHashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address range. IPv4 ranges are kept as IPv4 (not mapped), so `10.0.0.0/8` prints as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::/n`, or a bare address (a single host). Host bits must be zero, so a typo such as
    /// `10.0.0.1/8` is caught instead of silently widening.
    pub fn parse(raw: &str) -> Result<Cidr, String> {
        let (addr, len) = match raw.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (raw, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{raw}` is not an IP address or CIDR (dotted IPv4 or IPv6, e.g. 203.0.113.0/24)"))?;
        let max = max_len(network);
        let prefix_len = match len {
            None => max,
            Some(len) => match len.parse::<u8>() {
                Ok(n) if n <= max && !len.starts_with('+') && (len == "0" || !len.starts_with('0')) => n,
                _ => return Err(format!("`{raw}`: prefix length must be 0-{max}")),
            },
        };
        let cidr = Cidr { network, prefix_len };
        if cidr.masked(network) != bits(network) {
            let canonical = Cidr { network: from_bits(network, cidr.masked(network)), prefix_len };
            return Err(format!("`{raw}` has host bits set; did you mean {canonical}?"));
        }
        Ok(cidr)
    }

    /// The range of `address`'s first `prefix_len` bits (host bits cleared; the length capped at the family's).
    pub fn from_parts(address: IpAddr, prefix_len: u8) -> Cidr {
        let prefix_len = prefix_len.min(max_len(address));
        let cidr = Cidr { network: address, prefix_len };
        Cidr { network: from_bits(address, cidr.masked(address)), prefix_len }
    }

    /// The network address and the prefix length.
    pub fn parts(&self) -> (IpAddr, u8) {
        (self.network, self.prefix_len)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        same_family(self.network, ip) && self.masked(ip) == bits(self.network)
    }

    /// Whether every address of `other` is in this range.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix_len <= other.prefix_len && self.contains(other.network)
    }

    /// The addresses of this range outside `holes`, as the fewest ranges that split along prefix boundaries give
    /// (at most one range per prefix length per hole).
    pub fn without(&self, holes: &[Cidr]) -> Vec<Cidr> {
        if holes.iter().any(|hole| hole.covers(self)) {
            return Vec::new();
        }
        let inside = holes.iter().any(|hole| self.covers(hole));
        if !inside || self.prefix_len == max_len(self.network) {
            return vec![*self];
        }
        // Split in halves and keep what each half keeps.
        let prefix_len = self.prefix_len + 1;
        let width = u32::from(max_len(self.network) - prefix_len);
        let low = Cidr { network: self.network, prefix_len };
        let high_bits = bits(self.network) | 1u128.checked_shl(width).unwrap_or(0);
        let high = Cidr { network: from_bits(self.network, high_bits), prefix_len };
        let mut kept = low.without(holes);
        kept.extend(high.without(holes));
        kept
    }

    fn masked(&self, ip: IpAddr) -> u128 {
        mask(bits(ip), self.prefix_len, max_len(ip))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Maps CIDRs to values (e.g. rule indexes). A lookup probes one hash map per distinct prefix length.
#[derive(Debug, Default)]
pub struct CidrIndex<V> {
    v4: Vec<(u8, FxHashMap<u128, Vec<V>>)>,
    v6: Vec<(u8, FxHashMap<u128, Vec<V>>)>,
}

impl<V: Copy> CidrIndex<V> {
    pub fn insert(&mut self, cidr: Cidr, value: V) {
        let table = match cidr.network {
            IpAddr::V4(_) => &mut self.v4,
            IpAddr::V6(_) => &mut self.v6,
        };
        let at = match table.iter().position(|(len, _)| *len == cidr.prefix_len) {
            Some(at) => at,
            None => {
                table.push((cidr.prefix_len, FxHashMap::default()));
                table.len() - 1
            }
        };
        table[at].1.entry(bits(cidr.network)).or_default().push(value);
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Calls `found` for every value whose CIDR contains `ip`. A v4-mapped IPv6 address (`::ffff:a.b.c.d`) reaches
    /// the same host as its IPv4 form, so it is looked up as both.
    pub fn for_each_match(&self, ip: IpAddr, mut found: impl FnMut(V)) {
        let mut probe = |table: &[(u8, FxHashMap<u128, Vec<V>>)], ip: IpAddr| {
            for (len, networks) in table {
                if let Some(values) = networks.get(&mask(bits(ip), *len, max_len(ip))) {
                    values.iter().copied().for_each(&mut found);
                }
            }
        };
        match ip {
            IpAddr::V4(_) => probe(&self.v4, ip),
            IpAddr::V6(v6) => {
                probe(&self.v6, ip);
                if let Some(v4) = v6.to_ipv4_mapped() {
                    probe(&self.v4, IpAddr::V4(v4));
                }
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let mut hit = false;
        self.for_each_match(ip, |_| hit = true);
        hit
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn max_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_bits(family: IpAddr, value: u128) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

fn mask(value: u128, prefix_len: u8, width: u8) -> u128 {
    let host_bits = u32::from(width - prefix_len);
    value.checked_shr(host_bits).map_or(0, |v| v.checked_shl(host_bits).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn ranges_with_holes_keep_exactly_the_addresses_outside_them() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        let kept = c("127.0.0.0/8").without(&[c("127.0.0.2/32"), c("127.9.0.0/16")]);
        for ip in ["127.0.0.1", "127.0.0.3", "127.255.255.255", "127.8.255.255", "127.10.0.0"] {
            assert!(kept.iter().any(|k| k.contains(ip.parse().unwrap())), "{ip} kept");
        }
        for ip in ["127.0.0.2", "127.9.0.0", "127.9.255.255", "10.0.0.1"] {
            assert!(!kept.iter().any(|k| k.contains(ip.parse().unwrap())), "{ip} left out");
        }
        assert!(kept.len() <= 2 * 24, "{}", kept.len());
        assert_eq!(c("10.0.0.0/8").without(&[c("10.0.0.0/8")]), Vec::<Cidr>::new());
        assert_eq!(c("10.0.0.0/8").without(&[c("0.0.0.0/0")]), Vec::<Cidr>::new());
        assert_eq!(c("10.0.0.0/8").without(&[c("11.0.0.0/8"), c("::/0")]), vec![c("10.0.0.0/8")]);
        assert_eq!(c("fc00::/7").without(&[c("fd12::/16")]).len(), 9);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_contains() {
        let net = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(net.contains(ip("203.0.113.7")));
        assert!(!net.contains(ip("203.0.114.7")));
        assert!(!net.contains(ip("::ffff:203.0.113.7")), "Cidr::contains is per family; the index maps");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("10.1.2.3").unwrap().contains(ip("10.1.2.3")));
        assert!(Cidr::parse("2001:db8::/32").unwrap().contains(ip("2001:db8::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
    }

    #[test]
    fn refuses_bad_cidrs_with_a_hint() {
        assert_eq!(Cidr::parse("10.0.0.1/8").unwrap_err(), "`10.0.0.1/8` has host bits set; did you mean 10.0.0.0/8?");
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/08",
            "2001:db8::/129",
            "10.0.0/8",
            "x/8",
            "",
            "0x7f.1/32",
            "[::1]/128",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn index_finds_every_containing_range_including_v4_mapped() {
        let mut index = CidrIndex::default();
        index.insert(Cidr::parse("169.254.0.0/16").unwrap(), 1);
        index.insert(Cidr::parse("169.254.169.254/32").unwrap(), 2);
        index.insert(Cidr::parse("fd00::/8").unwrap(), 3);
        let hits = |s: &str| {
            let mut v = Vec::new();
            index.for_each_match(ip(s), |x| v.push(x));
            v.sort();
            v
        };
        assert_eq!(hits("169.254.169.254"), vec![1, 2]);
        assert_eq!(hits("::ffff:169.254.169.254"), vec![1, 2]);
        assert_eq!(hits("169.254.1.1"), vec![1]);
        assert_eq!(hits("fd12::1"), vec![3]);
        assert_eq!(hits("10.0.0.1"), Vec::<i32>::new());
        assert!(index.contains(ip("169.254.0.1")));
    }
}
