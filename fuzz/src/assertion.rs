//! `assertion::verify`, the signed identity assertion an upstream checks (and `egressctl verify`).
//!
//! Input: a selector byte, then `\0`-separated fields.
//! - Selector even: the rest is a header, verified against fixed claims and keys; it must be refused (no input
//!   forges an HMAC), and verifying never panics.
//! - Selector odd: claims (identity, method, authority, path: no `\n`, as the gateway guarantees), a timestamp and a
//!   nonce are signed; the header must verify for those claims, and only for those: any other claims (four more
//!   fields, which may hold `\n`) verify only if they are the same; the header with one byte changed (position and
//!   value from the input) must be refused, unless it is the same header (one spelling per signature: no case,
//!   leading zeros or signs accepted anywhere).

use egress_core::assertion::{self, Claims, VerifyError};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const CLAIMS: Claims<'static> =
    Claims { identity: "spiffe://cluster.local/ns/app/sa/sleep", method: "GET", authority: "a.example", path: "/" };

fn keys(kid: &str) -> Option<&'static [u8]> {
    (kid == "k1" || kid == "k.2_-").then_some(KEY)
}

pub fn run(data: &[u8]) {
    let (selector, rest) = crate::selector(data);
    let Some(text) = crate::text(rest) else { return };
    if selector & 1 == 0 {
        let verified = assertion::verify(text, &CLAIMS, keys, 1_000_000, 300);
        assert!(verified.is_err(), "{text:?} verified without the key");
        return;
    }
    let fields: Vec<&str> = text.split('\0').collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or_default();
    let claims = Claims { identity: field(0), method: field(1), authority: field(2), path: field(3) };
    if [claims.identity, claims.method, claims.authority, claims.path].iter().any(|f| f.contains('\n')) {
        return;
    }
    let number = field(4).bytes().fold(0u64, |n, b| n.wrapping_mul(31).wrapping_add(u64::from(b)));
    let issued_at = number % 4_000_000_000;
    let mut nonce = [0u8; 16];
    for (slot, byte) in nonce.iter_mut().zip(field(5).bytes()) {
        *slot = byte;
    }
    let kid = if number & 1 == 0 { "k1" } else { "k.2_-" };
    let header = assertion::sign(KEY, kid, &claims, issued_at, &nonce).unwrap();
    let verified = assertion::verify(&header, &claims, keys, issued_at, 300).unwrap();
    assert_eq!((verified.kid.as_str(), verified.issued_at), (kid, issued_at));
    assert_eq!(assertion::verify(&header, &claims, keys, issued_at + 301, 300), Err(VerifyError::Expired));
    assert_eq!(assertion::verify(&header, &claims, keys, issued_at.saturating_sub(61), 300).is_ok(), issued_at < 61);

    let other = Claims { identity: field(6), method: field(7), authority: field(8), path: field(9) };
    let same = [other.identity, other.method, other.authority, other.path]
        == [claims.identity, claims.method, claims.authority, claims.path];
    if fields.len() > 6 {
        assert_eq!(assertion::verify(&header, &other, keys, issued_at, 300).is_ok(), same, "{other:?} for {claims:?}");
    }

    // One byte of the header changed.
    let spot = field(10).bytes();
    let (mut position, mut value) = (0usize, 0u8);
    for (i, b) in spot.enumerate() {
        if i == 0 {
            value = b;
        } else {
            position = position.wrapping_mul(256).wrapping_add(usize::from(b));
        }
    }
    let mut changed = header.clone().into_bytes();
    let position = position % changed.len();
    changed[position] = value;
    if let Ok(changed) = String::from_utf8(changed) {
        if changed != header {
            let verdict = assertion::verify(&changed, &claims, keys, issued_at, 300);
            assert!(verdict.is_err(), "{changed:?} verified as well as {header:?}");
        }
    }
}
