//! Request authorities (`host[:port]`), normalised once so every later comparison is a plain string or IP match.
//!
//! Normalisation: ASCII lowercase, one trailing dot removed, port split off and checked (1–65535, canonical digits),
//! IPv6 only in brackets. Anything that two parsers could read differently is refused rather than guessed: userinfo,
//! backslashes, percent-escapes, spaces and control bytes, empty or over-long labels, non-ASCII (clients must send
//! IDNA A-labels, `xn--…`, which is what DNS resolves anyway).
//!
//! IP literals follow the WHATWG URL host parser: a host whose last label is a number is an IPv4 address in any of the
//! spellings `inet_aton` accepts (`127.0.0.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`), or it is malformed. So
//! no spelling of an address can pass for a name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest DNS name (RFC 1035, without the trailing dot).
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// A destination host: a validated lowercase DNS name, or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// Parses a bare host (no port): the form of a TLS SNI or a policy entry.
    pub fn parse(raw: &str) -> Result<Host, Malformed> {
        check_bytes(raw)?;
        if let Some(inner) = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return parse_ipv6(inner).map(|ip| Host::Ip(IpAddr::V6(ip)));
        }
        if raw.contains(':') {
            return Err(unbracketed_colon(raw));
        }
        parse_name_or_ipv4(raw)
    }

    pub fn is_ip(&self) -> bool {
        matches!(self, Host::Ip(_))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// A parsed `host[:port]`. `port` is `None` when the authority did not name one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    pub host: Host,
    pub port: Option<u16>,
}

impl Authority {
    /// Parses a request authority (`:authority`, `Host`, CONNECT target, or URL authority).
    pub fn parse(raw: &str) -> Result<Authority, Malformed> {
        check_bytes(raw)?;
        let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or(Malformed::InvalidIpv6)?;
            let port = match after {
                "" => None,
                _ => Some(parse_port(after.strip_prefix(':').ok_or(Malformed::InvalidPort)?)?),
            };
            (Host::Ip(IpAddr::V6(parse_ipv6(inner)?)), port)
        } else {
            match raw.split_once(':') {
                None => (parse_name_or_ipv4(raw)?, None),
                Some(_) if raw.matches(':').count() > 1 => return Err(unbracketed_colon(raw)),
                Some((host, port)) => (parse_name_or_ipv4(host)?, Some(parse_port(port)?)),
            }
        };
        Ok(Authority { host, port })
    }

    /// The port, or `default` when the authority named none.
    pub fn port_or(&self, default: u16) -> u16 {
        self.port.unwrap_or(default)
    }
}

/// Why an authority or host was refused. `code()` is the stable machine form used in replies and audit events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    Empty,
    NonAscii,
    SpaceOrControl,
    Userinfo,
    Backslash,
    PercentEscape,
    InvalidCharacter,
    EmptyLabel,
    LabelTooLong,
    NameTooLong,
    InvalidPort,
    InvalidIpv4,
    InvalidIpv6,
    UnbracketedIpv6,
}

impl Malformed {
    pub fn code(self) -> &'static str {
        match self {
            Malformed::Empty => "empty_host",
            Malformed::NonAscii => "non_ascii_host",
            Malformed::SpaceOrControl => "space_or_control_character",
            Malformed::Userinfo => "userinfo",
            Malformed::Backslash => "backslash",
            Malformed::PercentEscape => "percent_escape",
            Malformed::InvalidCharacter => "invalid_character",
            Malformed::EmptyLabel => "empty_label",
            Malformed::LabelTooLong => "label_too_long",
            Malformed::NameTooLong => "name_too_long",
            Malformed::InvalidPort => "invalid_port",
            Malformed::InvalidIpv4 => "invalid_ipv4",
            Malformed::InvalidIpv6 => "invalid_ipv6",
            Malformed::UnbracketedIpv6 => "unbracketed_ipv6",
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Malformed::Empty => "empty host",
            Malformed::NonAscii => "non-ASCII host (use the IDNA A-label, xn--…)",
            Malformed::SpaceOrControl => "space or control character",
            Malformed::Userinfo => "userinfo (`@`) in authority",
            Malformed::Backslash => "backslash in authority",
            Malformed::PercentEscape => "percent-escape in authority",
            Malformed::InvalidCharacter => "character not allowed in a host name",
            Malformed::EmptyLabel => "empty label",
            Malformed::LabelTooLong => "label longer than 63 bytes",
            Malformed::NameTooLong => "name longer than 253 bytes",
            Malformed::InvalidPort => "port is not a number from 1 to 65535",
            Malformed::InvalidIpv4 => "ends in a number but is not an IPv4 address",
            Malformed::InvalidIpv6 => "invalid IPv6 address",
            Malformed::UnbracketedIpv6 => "IPv6 address without brackets",
        };
        f.write_str(text)
    }
}

impl std::error::Error for Malformed {}

/// Refuses bytes that no well-formed authority contains and that parsers disagree about.
fn check_bytes(raw: &str) -> Result<(), Malformed> {
    if raw.is_empty() {
        return Err(Malformed::Empty);
    }
    for byte in raw.bytes() {
        match byte {
            0x80.. => return Err(Malformed::NonAscii),
            ..=0x20 | 0x7f => return Err(Malformed::SpaceOrControl),
            b'@' => return Err(Malformed::Userinfo),
            b'\\' => return Err(Malformed::Backslash),
            b'%' => return Err(Malformed::PercentEscape),
            _ => {}
        }
    }
    Ok(())
}

/// A colon outside brackets: an unbracketed IPv6 address, or a port that is not a port.
fn unbracketed_colon(raw: &str) -> Malformed {
    if raw.parse::<Ipv6Addr>().is_ok() {
        Malformed::UnbracketedIpv6
    } else {
        Malformed::InvalidPort
    }
}

/// Canonical decimal only: `080`, `+80`, `` and `0` are refused, since proxies disagree on them.
fn parse_port(raw: &str) -> Result<u16, Malformed> {
    let canonical =
        !raw.is_empty() && raw.len() <= 5 && raw.bytes().all(|b| b.is_ascii_digit()) && !raw.starts_with('0');
    match raw.parse::<u16>() {
        Ok(port) if canonical => Ok(port),
        _ => Err(Malformed::InvalidPort),
    }
}

fn parse_ipv6(inner: &str) -> Result<Ipv6Addr, Malformed> {
    inner.parse::<Ipv6Addr>().map_err(|_| Malformed::InvalidIpv6)
}

fn parse_name_or_ipv4(raw: &str) -> Result<Host, Malformed> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    if name.is_empty() {
        return Err(Malformed::Empty);
    }
    let last_label = name.rsplit('.').next().unwrap_or(name);
    if is_numeric_label(last_label) {
        return parse_ipv4_any_spelling(name).map(|ip| Host::Ip(IpAddr::V4(ip))).ok_or(Malformed::InvalidIpv4);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Malformed::NameTooLong);
    }
    for label in name.split('.') {
        check_label(label)?;
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

/// Letters, digits, `-` and `_` (the latter appears in real service names, e.g. SRV-style hosts).
pub(crate) fn check_label(label: &str) -> Result<(), Malformed> {
    if label.is_empty() {
        return Err(Malformed::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(Malformed::LabelTooLong);
    }
    if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(Malformed::InvalidCharacter);
    }
    Ok(())
}

/// WHATWG "ends in a number": all decimal digits, or `0x` followed by hex digits.
pub(crate) fn is_numeric_label(label: &str) -> bool {
    if label.is_empty() {
        return false;
    }
    match label.strip_prefix("0x").or_else(|| label.strip_prefix("0X")) {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => label.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// `inet_aton` semantics: 1–4 parts, each decimal, octal (`0` prefix) or hex (`0x` prefix); the last part fills the
/// remaining bytes. Returns `None` for anything else.
pub(crate) fn parse_ipv4_any_spelling(raw: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = raw.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut numbers = [0u64; 4];
    for (slot, part) in numbers.iter_mut().zip(&parts) {
        *slot = parse_ipv4_number(part)?;
    }
    let (last, leading) = numbers[..parts.len()].split_last()?;
    if leading.iter().any(|&n| n > 255) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let value = leading.iter().fold(0u64, |acc, &n| (acc << 8) | n) << last_bits | last;
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn parse_ipv4_number(part: &str) -> Option<u64> {
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if digits.is_empty() {
        // `0x` alone is zero (WHATWG); an empty decimal part is not a number.
        return (radix == 16).then_some(0);
    }
    // Bounded length keeps the arithmetic in range; a longer number is out of range anyway.
    if digits.len() > 12 {
        return None;
    }
    // Digits only: `from_str_radix` also takes a sign (`0+1`, `0x+1`), which no IPv4 parser does.
    if !digits.bytes().all(|b| char::from(b).is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn name(s: &str) -> Host {
        Host::Name(s.to_string())
    }
    fn v4(s: &str) -> Host {
        Host::Ip(IpAddr::V4(s.parse().unwrap()))
    }
    fn v6(s: &str) -> Host {
        Host::Ip(IpAddr::V6(s.parse().unwrap()))
    }
    fn parse(raw: &str) -> Result<(Host, Option<u16>), Malformed> {
        Authority::parse(raw).map(|a| (a.host, a.port))
    }

    #[test]
    fn names_are_lowercased_and_lose_one_trailing_dot() {
        assert_eq!(parse("API.Example.COM."), Ok((name("api.example.com"), None)));
        assert_eq!(parse("api.example.com:8443"), Ok((name("api.example.com"), Some(8443))));
        assert_eq!(parse("Api.Example.Com.:443"), Ok((name("api.example.com"), Some(443))));
        assert_eq!(parse("svc_x.internal"), Ok((name("svc_x.internal"), None)));
        assert_eq!(parse("api.example.com.."), Err(Malformed::EmptyLabel));
        assert_eq!(parse("."), Err(Malformed::Empty));
    }

    #[test]
    fn ports_must_be_canonical_and_in_range() {
        assert_eq!(parse("a.com:1"), Ok((name("a.com"), Some(1))));
        assert_eq!(parse("a.com:65535"), Ok((name("a.com"), Some(65535))));
        for bad in
            ["a.com:0", "a.com:65536", "a.com:99999", "a.com:", "a.com:080", "a.com:+80", "a.com:8a", "a.com:123456"]
        {
            assert_eq!(parse(bad), Err(Malformed::InvalidPort), "{bad}");
        }
    }

    #[test]
    fn ambiguous_bytes_are_refused() {
        let cases = [
            ("", Malformed::Empty),
            ("user@a.com", Malformed::Userinfo),
            ("user:pw@a.com", Malformed::Userinfo),
            ("a.com\\evil.com", Malformed::Backslash),
            ("a%2ecom", Malformed::PercentEscape),
            ("[fe80::1%25eth0]", Malformed::PercentEscape),
            ("a .com", Malformed::SpaceOrControl),
            ("a.com\t", Malformed::SpaceOrControl),
            ("a\u{1}.com", Malformed::SpaceOrControl),
            ("a\u{7f}.com", Malformed::SpaceOrControl),
            ("bücher.de", Malformed::NonAscii),
            ("a.com,b.com", Malformed::InvalidCharacter),
            ("a.com/x", Malformed::InvalidCharacter),
            ("*.a.com", Malformed::InvalidCharacter),
            ("a..com", Malformed::EmptyLabel),
            (".a.com", Malformed::EmptyLabel),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn label_and_name_lengths() {
        let label63 = "a".repeat(63);
        assert!(parse(&format!("{label63}.com")).is_ok());
        assert_eq!(parse(&format!("{}.com", "a".repeat(64))), Err(Malformed::LabelTooLong));
        let name253 = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(name253.len(), 253);
        assert!(parse(&name253).is_ok());
        assert!(parse(&format!("{name253}.")).is_ok(), "the trailing dot does not count");
        assert_eq!(parse(&format!("{name253}b")), Err(Malformed::NameTooLong));
    }

    #[test]
    fn every_ipv4_spelling_is_an_ip_literal() {
        for raw in [
            "127.0.0.1",
            "2130706433",
            "0x7f000001",
            "0x7f.1",
            "0177.0.0.1",
            "0177.0.0.01",
            "127.1",
            "127.0.1",
            "0x7F.0.0.1",
            "127.0.0.1.",
        ] {
            assert_eq!(parse(raw), Ok((v4("127.0.0.1"), None)), "{raw}");
        }
        assert_eq!(parse("169.254.169.254:80"), Ok((v4("169.254.169.254"), Some(80))));
        assert_eq!(parse("0"), Ok((v4("0.0.0.0"), None)));
        assert_eq!(parse("0x"), Ok((v4("0.0.0.0"), None)));
        assert_eq!(parse("4294967295"), Ok((v4("255.255.255.255"), None)));
    }

    #[test]
    fn numeric_hosts_that_are_not_addresses_are_malformed() {
        for raw in [
            "4294967296",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.256.1.1",
            "08.1.1.1",
            "1.2.3.0x",
            "example.123",
            "1.2.65536",
            "0x100000000",
            "99999999999999999999",
        ] {
            let got = parse(raw);
            if raw == "1.2.3.0x" {
                // `0x` alone is a number (zero) in the WHATWG parser.
                assert_eq!(got, Ok((v4("1.2.3.0"), None)));
            } else {
                assert_eq!(got, Err(Malformed::InvalidIpv4), "{raw}");
            }
        }
        assert_eq!(parse("example.123a"), Ok((name("example.123a"), None)), "hex-like but not 0x: a name");
        assert_eq!(parse("1.2.3.com"), Ok((name("1.2.3.com"), None)));
    }

    /// Found by fuzzing against the WHATWG parser (`fuzz/`, target `authority`): a sign in an octal or hex part
    /// (`from_str_radix` takes one) made `10.0+0.1` the address 10.0.0.1, where every IPv4 parser refuses it.
    #[test]
    fn signs_in_ipv4_parts_are_malformed() {
        for raw in ["10.0+0.1", "10.0.0.0+1", "0+1", "0x+1", "1.0x+a", "0-0.1", "10.0-1.1", "+1.2.3.4", "1.+2"] {
            assert!(parse(raw).is_err(), "{raw}: {:?}", parse(raw));
        }
        assert_eq!(parse("10.00.1"), Ok((v4("10.0.0.1"), None)), "octal zero still");
    }

    #[test]
    fn ipv6_needs_brackets() {
        assert_eq!(parse("[::1]"), Ok((v6("::1"), None)));
        assert_eq!(parse("[::1]:8080"), Ok((v6("::1"), Some(8080))));
        assert_eq!(parse("[::FFFF:127.0.0.1]"), Ok((v6("::ffff:127.0.0.1"), None)));
        assert_eq!(parse("[2001:DB8::1]:443"), Ok((v6("2001:db8::1"), Some(443))));
        assert_eq!(parse("::1"), Err(Malformed::UnbracketedIpv6));
        assert_eq!(parse("2001:db8::1"), Err(Malformed::UnbracketedIpv6));
        assert_eq!(parse("[::1"), Err(Malformed::InvalidIpv6));
        assert_eq!(parse("[::1]x"), Err(Malformed::InvalidPort));
        assert_eq!(parse("[::1]:"), Err(Malformed::InvalidPort));
        assert_eq!(parse("[a.com]"), Err(Malformed::InvalidIpv6));
        assert_eq!(parse("[]"), Err(Malformed::InvalidIpv6));
        assert_eq!(parse("a:b:c"), Err(Malformed::InvalidPort));
    }

    #[test]
    fn bare_hosts_for_sni() {
        assert_eq!(Host::parse("HTTPBIN.org."), Ok(name("httpbin.org")));
        assert_eq!(Host::parse("10.1"), Ok(v4("10.0.0.1")));
        assert_eq!(Host::parse("[::1]"), Ok(v6("::1")));
        assert_eq!(Host::parse("::1"), Err(Malformed::UnbracketedIpv6));
        assert_eq!(Host::parse("a.com:443"), Err(Malformed::InvalidPort));
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(v6("::1").to_string(), "[::1]");
        assert_eq!(parse("0x7f.1").unwrap().0.to_string(), "127.0.0.1");
    }
}
