//! `Authority::parse` and `Host::parse` (every request's `:authority`, every TLS SNI).
//!
//! Properties: the normal form is stable (parse → print → parse gives the same authority, and the same host through
//! `Host::parse`); `Host::parse` and `Authority::parse` agree on port-less input.
//!
//! Oracle: the `url` crate's WHATWG host parser (`url::Host::parse`, special schemes) on IP literals: whatever we read
//! as an address, it reads as the same address; whatever it reads as an address, we never read as a name. Deliberate
//! differences, where only we refuse (never where we would read a name it reads as an address):
//! - bytes that parsers disagree on: percent-escapes (`url` decodes them first), non-ASCII (`url` maps fullwidth
//!   digits and dots through IDNA), userinfo `@`, backslash, spaces and control bytes;
//! - an IPv4 part of more than 12 digits after its `0x`/`0` prefix (`0x0000000000001`): out of range for us, a
//!   number with leading zeros for WHATWG;
//! - names: we allow letters, digits, `-` and `_` in labels of at most 63 bytes and names of at most 253, where `url`
//!   takes more (and less: it refuses `xn--` labels that are not valid Punycode). A trailing dot: we drop one, `url`
//!   keeps it.

use egress_core::{Authority, Host};
use std::net::IpAddr;

pub fn run(data: &[u8]) {
    let Some(raw) = crate::text(data) else { return };
    let authority = Authority::parse(raw);
    let host = Host::parse(raw);
    if let Ok(authority) = &authority {
        let printed = match authority.port {
            Some(port) => format!("{}:{port}", authority.host),
            None => authority.host.to_string(),
        };
        assert_eq!(Authority::parse(&printed).as_ref(), Ok(authority), "{raw:?} printed as {printed:?}");
        assert_eq!(Host::parse(&authority.host.to_string()).as_ref(), Ok(&authority.host), "{raw:?}");
        if authority.port.is_none() {
            assert_eq!(host.as_ref(), Ok(&authority.host), "{raw:?}: Host::parse differs");
        }
    }
    if let Ok(host) = &host {
        assert_eq!(authority, Ok(Authority { host: host.clone(), port: None }), "{raw:?}: Authority::parse differs");
    }
    against_url(raw, &host);
}

fn against_url(raw: &str, ours: &Result<Host, egress_core::Malformed>) {
    let theirs = url::Host::parse(raw);
    match (ours, &theirs) {
        (Ok(Host::Ip(IpAddr::V4(ours))), Ok(url::Host::Ipv4(theirs))) => assert_eq!(ours, theirs, "{raw:?}"),
        (Ok(Host::Ip(IpAddr::V6(ours))), Ok(url::Host::Ipv6(theirs))) => assert_eq!(ours, theirs, "{raw:?}"),
        (Ok(Host::Ip(ours)), theirs) => panic!("{raw:?}: the address {ours} to us, {theirs:?} to url"),
        (Ok(Host::Name(name)), Ok(url::Host::Domain(domain))) => {
            assert_eq!(name, domain.strip_suffix('.').unwrap_or(domain), "{raw:?}");
        }
        (Ok(Host::Name(name)), Ok(theirs)) => panic!("{raw:?}: the name {name} to us, {theirs:?} to url"),
        (Ok(Host::Name(name)), Err(url::ParseError::InvalidIpv4Address)) => {
            panic!("{raw:?}: the name {name} to us, an invalid IPv4 address to url")
        }
        (Ok(Host::Name(_)), Err(_)) => {} // `url` refuses a name we take (IDNA: invalid Punycode).
        (Err(_), Ok(url::Host::Ipv4(_) | url::Host::Ipv6(_))) => {
            let refused_bytes = raw.bytes().any(|b| !b.is_ascii_graphic() || b"%@\\".contains(&b));
            assert!(refused_bytes || long_ipv4_part(raw), "{raw:?}: an address to url, refused by us ({ours:?})");
        }
        (Err(_), _) => {}
    }
}

/// An IPv4 part with more than 12 digits after its prefix (`0x`, or `0` for octal).
fn long_ipv4_part(raw: &str) -> bool {
    raw.split('.').any(|part| {
        let digits = match part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            Some(hex) => hex,
            None if part.len() > 1 => part.strip_prefix('0').unwrap_or(part),
            None => part,
        };
        digits.len() > 12
    })
}
