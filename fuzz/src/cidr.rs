//! `Cidr::parse` (every `cidrs` entry of a policy: operator input), the range arithmetic (`contains`, `covers`,
//! `from_parts`, `without`) and `CidrIndex`, the per-request lookup.
//!
//! Input: text, one candidate CIDR a line. Every line that parses is an entry; probes are each entry's first and
//! last address, their neighbours, and their IPv4-mapped IPv6 forms.
//!
//! Properties: parse → print → parse gives the same range, and the printed form is canonical (printing it again is
//! the same text); a range contains exactly the addresses whose first `prefix_len` bits are its network's (checked
//! with plain integer arithmetic); `from_parts` of a range's parts is the range; `without` keeps exactly the addresses
//! of the range outside the holes, as disjoint ranges inside it; the index finds, for every probe, exactly the
//! entries that contain it (an IPv4-mapped IPv6 address also matches the IPv4 entries, as the index promises).
//!
//! Oracle: the `url` crate's WHATWG host parser on the address part. Whatever we read as an IPv4 address it reads as
//! the same address, and an IPv6 address (in brackets, as URLs write them) as the same address. Deliberate
//! difference, where only we refuse: the WHATWG IPv4 forms other than four decimal parts without leading zeros
//! (`10.1`, `0x0a.0.0.1`, `010.0.0.1` (octal to WHATWG), `167772161`, a trailing dot): an operator's `010.0.0.0/8`
//! must not silently mean `8.0.0.0/8`; `std::net`'s strict grammar refuses them all.

use egress_core::cidr::{Cidr, CidrIndex};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Entries and holes are kept few: `without` makes up to one range per prefix length per hole.
const MAX_ENTRIES: usize = 8;

pub fn run(data: &[u8]) {
    let Some(text) = crate::text(data) else { return };
    let mut entries = Vec::new();
    for line in text.lines() {
        if let Some(cidr) = parse(line) {
            if entries.len() < MAX_ENTRIES {
                entries.push(cidr);
            }
        }
    }
    let Some((&first, holes)) = entries.split_first() else { return };

    let mut probes = Vec::new();
    for cidr in &entries {
        let (low, high) = ends(cidr);
        let (low, high) = (bits(low), bits(high));
        for value in [low, high, low.wrapping_sub(1), high.wrapping_add(1)] {
            let ip = from_bits(cidr.parts().0, value);
            probes.push(ip);
            if let IpAddr::V4(v4) = ip {
                probes.push(IpAddr::V6(v4.to_ipv6_mapped()));
            }
        }
    }

    // The arithmetic, against plain bit masks.
    for cidr in &entries {
        let (network, len) = cidr.parts();
        assert_eq!(Cidr::from_parts(network, len), *cidr);
        for &ip in &probes {
            let same_family = ip.is_ipv4() == network.is_ipv4();
            let host_bits = width(network) - u32::from(len);
            let inside = same_family && bits(ip).checked_shr(host_bits) == bits(network).checked_shr(host_bits);
            assert_eq!(cidr.contains(ip), inside, "{cidr} contains {ip}");
            let own = Cidr::from_parts(ip, len);
            assert!(own.contains(ip), "{own} from {ip}");
            assert_eq!(own == *cidr, inside, "{own} from {ip}, {cidr}");
        }
        for other in &entries {
            // Ranges are aligned: one holds another when it holds the other's first and last addresses.
            let (low, high) = ends(other);
            let covers = cidr.contains(low) && cidr.contains(high);
            assert_eq!(cidr.covers(other), covers, "{cidr} covers {other}");
        }
    }

    // `without`: exactly the addresses outside the holes, in disjoint ranges inside the range.
    let kept = first.without(holes);
    for (i, piece) in kept.iter().enumerate() {
        assert!(first.covers(piece), "{piece} outside {first}");
        for hole in holes {
            assert!(!hole.covers(piece) && !piece.covers(hole), "{piece} and the hole {hole}");
        }
        for other in &kept[i + 1..] {
            assert!(!piece.covers(other) && !other.covers(piece), "{piece} and {other} overlap");
        }
    }
    for &ip in &probes {
        let want = first.contains(ip) && !holes.iter().any(|hole| hole.contains(ip));
        assert_eq!(kept.iter().any(|piece| piece.contains(ip)), want, "{ip}: {first} without {holes:?} is {kept:?}");
    }

    // The index: exactly the entries that contain the probe (or its IPv4 form, for an IPv4-mapped address).
    let mut index = CidrIndex::default();
    for (i, cidr) in entries.iter().enumerate() {
        index.insert(*cidr, i);
    }
    for &ip in &probes {
        let mut found = Vec::new();
        index.for_each_match(ip, |i| found.push(i));
        found.sort_unstable();
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let want: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].contains(ip) || mapped.is_some_and(|v4| entries[i].contains(v4)))
            .collect();
        assert_eq!(found, want, "{ip} in {entries:?}");
        assert_eq!(index.contains(ip), !want.is_empty());
    }
}

/// `Cidr::parse`, with its properties and the oracle.
fn parse(raw: &str) -> Option<Cidr> {
    let parsed = Cidr::parse(raw);
    // The address alone is a host (`/32`, `/128`): what we read it as.
    let address = raw.split_once('/').map_or(raw, |(address, _)| address);
    against_url(address, Cidr::parse(address).ok().map(|host| host.parts().0));
    let cidr = parsed.ok()?;
    let printed = cidr.to_string();
    assert_eq!(Cidr::parse(&printed), Ok(cidr), "{raw:?} printed as {printed:?}");
    assert_eq!(Cidr::parse(&printed).map(|c| c.to_string()).as_deref(), Ok(printed.as_str()));
    // A range with a host bit set is refused, with the canonical range as the suggestion.
    let (network, len) = cidr.parts();
    if u32::from(len) < width(network) {
        let with_host_bit = from_bits(network, bits(network) | 1);
        let refused = Cidr::parse(&format!("{with_host_bit}/{len}"));
        assert!(refused.as_ref().is_err_and(|e| e.contains(&format!("did you mean {cidr}?"))), "{refused:?}");
    }
    Some(cidr)
}

fn against_url(address: &str, ours: Option<IpAddr>) {
    match ours {
        Some(IpAddr::V4(ours)) => match url::Host::parse(address) {
            Ok(url::Host::Ipv4(theirs)) => assert_eq!(ours, theirs, "{address:?}"),
            theirs => panic!("{address:?}: {ours} to us, {theirs:?} to url"),
        },
        Some(IpAddr::V6(ours)) => match url::Host::parse(&format!("[{address}]")) {
            Ok(url::Host::Ipv6(theirs)) => assert_eq!(ours, theirs, "{address:?}"),
            theirs => panic!("{address:?}: {ours} to us, {theirs:?} to url"),
        },
        None => {
            // An IPv6 literal that url reads and we refuse would be an operator's range silently dropped: never.
            if !address.contains(['[', ']', '%', '/']) {
                if let Ok(url::Host::Ipv6(theirs)) = url::Host::parse(&format!("[{address}]")) {
                    let strict: Result<Ipv6Addr, _> = address.parse();
                    panic!("{address:?}: {theirs} to url, refused by us ({strict:?})");
                }
            }
            // A dotted quad url reads is one we read, unless it is one of the lenient WHATWG forms.
            if let Ok(url::Host::Ipv4(theirs)) = url::Host::parse(address) {
                let strict = address.split('.').count() == 4
                    && address.split('.').all(|part| {
                        !part.is_empty()
                            && part.bytes().all(|b| b.is_ascii_digit())
                            && (part == "0" || !part.starts_with('0'))
                    });
                assert!(!strict, "{address:?}: {theirs} to url, refused by us");
            }
        }
    }
}

/// The first and last addresses of a range.
fn ends(cidr: &Cidr) -> (IpAddr, IpAddr) {
    let (network, len) = cidr.parts();
    let host_mask = u128::MAX.checked_shr(128 - width(network) + u32::from(len)).unwrap_or(0);
    (network, from_bits(network, bits(network) | host_mask))
}

fn width(ip: IpAddr) -> u32 {
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
