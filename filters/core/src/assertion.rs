//! The signed identity assertion: proof, for an upstream that shares a key with the gateway, that the gateway
//! vouched for this caller on this exact request.
//!
//! Header value (ASCII, `;`-separated, fields in this order):
//!
//! ```text
//! v1;kid=<key id>;ts=<issued-at, Unix seconds>;nonce=<32 lowercase hex>;sig=<64 lowercase hex>
//! ```
//!
//! `sig` is HMAC-SHA256 under the key named `kid`, over the canonical string (fields joined by `\n`, no trailing
//! newline):
//!
//! ```text
//! egress-assertion-v1
//! <SPIFFE ID, e.g. spiffe://cluster.local/ns/app/sa/sleep>
//! <method>
//! <authority, as sent upstream>
//! <path, as sent upstream, query included>
//! <ts>
//! <nonce>
//! ```
//!
//! None of the fields can contain `\n` (the gateway validated them), so the string is unambiguous. A verifier
//! recomputes it from what it received, compares in constant time, refuses timestamps older than its window or too
//! far in the future, and may remember nonces within the window to refuse replays.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;

pub const VERSION: &str = "v1";
const CONTEXT: &str = "egress-assertion-v1";
/// Shortest key accepted: HMAC-SHA256 keys shorter than the hash add no strength and hint at a placeholder.
pub const MIN_KEY_LEN: usize = 32;
/// Clock skew tolerated for timestamps from the future.
pub const MAX_FUTURE_SKEW_SECS: u64 = 60;

type HmacSha256 = Hmac<Sha256>;

/// What the assertion binds.
#[derive(Clone, Copy, Debug)]
pub struct Claims<'a> {
    pub identity: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
}

/// A key id: 1–64 characters of `A-Z a-z 0-9 . _ -`.
pub fn check_key_id(kid: &str) -> Result<(), String> {
    let valid = (1..=64).contains(&kid.len()) && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!("key id `{kid}`: 1-64 characters of A-Z a-z 0-9 . _ -"))
    }
}

pub fn check_key(key: &[u8]) -> Result<(), String> {
    if key.len() < MIN_KEY_LEN {
        return Err(format!("signing key is {} bytes; at least {MIN_KEY_LEN} are required", key.len()));
    }
    Ok(())
}

/// Signs `claims` issued at `issued_at` with a fresh `nonce`; returns the header value.
pub fn sign(key: &[u8], kid: &str, claims: &Claims<'_>, issued_at: u64, nonce: &[u8; 16]) -> Result<String, String> {
    let nonce = hex(nonce);
    let mac = mac(key, claims, issued_at, &nonce).ok_or("HMAC refused the key")?;
    let sig = hex(&mac.finalize().into_bytes());
    Ok(format!("{VERSION};kid={kid};ts={issued_at};nonce={nonce};sig={sig}"))
}

/// Why an assertion was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyError {
    Malformed,
    UnknownKey,
    BadSignature,
    Expired,
    FromTheFuture,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerifyError::Malformed => "malformed assertion",
            VerifyError::UnknownKey => "unknown key id",
            VerifyError::BadSignature => "signature does not match the request",
            VerifyError::Expired => "issued too long ago",
            VerifyError::FromTheFuture => "issued in the future",
        })
    }
}

impl std::error::Error for VerifyError {}

/// A verified assertion's parts, for logging and replay caches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub kid: String,
    pub issued_at: u64,
    pub nonce: String,
}

/// Verifies `header` against the request the verifier received. `key_for` maps a key id to its key; `now` and
/// `max_age_secs` bound the timestamp.
pub fn verify<'k>(
    header: &str,
    claims: &Claims<'_>,
    key_for: impl Fn(&str) -> Option<&'k [u8]>,
    now: u64,
    max_age_secs: u64,
) -> Result<Verified, VerifyError> {
    let mut fields = header.split(';');
    if fields.next() != Some(VERSION) {
        return Err(VerifyError::Malformed);
    }
    let mut field = |name: &str| fields.next().and_then(|f| f.strip_prefix(name)?.strip_prefix('='));
    let (kid, ts, nonce, sig) = (field("kid"), field("ts"), field("nonce"), field("sig"));
    let (Some(kid), Some(ts), Some(nonce), Some(sig)) = (kid, ts, nonce, sig) else {
        return Err(VerifyError::Malformed);
    };
    if fields.next().is_some() || !is_hex(nonce, 32) || !is_hex(sig, 64) || check_key_id(kid).is_err() {
        return Err(VerifyError::Malformed);
    }
    // One timestamp, one spelling: canonical decimal, no sign, no leading zeros.
    let canonical_ts = ts.bytes().all(|b| b.is_ascii_digit()) && (ts == "0" || !ts.starts_with('0'));
    let issued_at: u64 = ts.parse().ok().filter(|_| canonical_ts).ok_or(VerifyError::Malformed)?;
    let key = key_for(kid).ok_or(VerifyError::UnknownKey)?;
    let expected = unhex(sig).ok_or(VerifyError::Malformed)?;
    let mac = mac(key, claims, issued_at, nonce).ok_or(VerifyError::UnknownKey)?;
    mac.verify_slice(&expected).map_err(|_| VerifyError::BadSignature)?;
    if issued_at > now.saturating_add(MAX_FUTURE_SKEW_SECS) {
        return Err(VerifyError::FromTheFuture);
    }
    if now.saturating_sub(issued_at) > max_age_secs {
        return Err(VerifyError::Expired);
    }
    Ok(Verified { kid: kid.to_string(), issued_at, nonce: nonce.to_string() })
}

fn canonical(claims: &Claims<'_>, issued_at: u64, nonce: &str) -> String {
    let Claims { identity, method, authority, path } = claims;
    format!("{CONTEXT}\n{identity}\n{method}\n{authority}\n{path}\n{issued_at}\n{nonce}")
}

/// The HMAC over the canonical string, ready to finalise or compare. (HMAC accepts keys of any length.)
fn mac(key: &[u8], claims: &Claims<'_>, issued_at: u64, nonce: &str) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(canonical(claims, issued_at, nonce).as_bytes());
    Some(mac)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|b| [DIGITS[usize::from(b >> 4)] as char, DIGITS[usize::from(b & 15)] as char]).collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    s.as_bytes().chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(*pair.get(1)?)?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const CLAIMS: Claims<'static> = Claims {
        identity: "spiffe://cluster.local/ns/app/sa/sleep",
        method: "GET",
        authority: "httpbin.org",
        path: "/headers?x=1",
    };

    fn keys(kid: &str) -> Option<&'static [u8]> {
        (kid == "k1").then_some(KEY)
    }

    #[test]
    fn signs_the_documented_format() {
        let header = sign(KEY, "k1", &CLAIMS, 1_700_000_000, &[0xab; 16]).unwrap();
        let (head, sig) = header.rsplit_once(";sig=").unwrap();
        assert_eq!(head, format!("v1;kid=k1;ts=1700000000;nonce={}", "ab".repeat(16)));
        // Recompute from the documented canonical string with an independent HMAC instance.
        let canonical = format!(
            "egress-assertion-v1\nspiffe://cluster.local/ns/app/sa/sleep\nGET\nhttpbin.org\n/headers?x=1\n1700000000\n{}",
            "ab".repeat(16)
        );
        let mut mac = HmacSha256::new_from_slice(KEY).unwrap();
        mac.update(canonical.as_bytes());
        assert_eq!(sig, hex(&mac.finalize().into_bytes()));
    }

    #[test]
    fn verifies_the_right_request_only() {
        let header = sign(KEY, "k1", &CLAIMS, 1_000, &[7; 16]).unwrap();
        let ok = verify(&header, &CLAIMS, keys, 1_010, 300).unwrap();
        assert_eq!((ok.kid.as_str(), ok.issued_at), ("k1", 1_000));
        let other_path = Claims { path: "/admin", ..CLAIMS };
        assert_eq!(verify(&header, &other_path, keys, 1_010, 300), Err(VerifyError::BadSignature));
        let other_id = Claims { identity: "spiffe://cluster.local/ns/app/sa/other", ..CLAIMS };
        assert_eq!(verify(&header, &other_id, keys, 1_010, 300), Err(VerifyError::BadSignature));
        let wrong_key = |_: &str| Some(&b"another key that is long enough, really"[..]);
        assert_eq!(verify(&header, &CLAIMS, wrong_key, 1_010, 300), Err(VerifyError::BadSignature));
        assert_eq!(verify(&header, &CLAIMS, |_| None, 1_010, 300), Err(VerifyError::UnknownKey));
        assert_eq!(verify(&header, &CLAIMS, keys, 1_301, 300), Err(VerifyError::Expired));
        assert_eq!(verify(&header, &CLAIMS, keys, 900, 300), Err(VerifyError::FromTheFuture));
    }

    #[test]
    fn refuses_malformed_headers() {
        let good = sign(KEY, "k1", &CLAIMS, 1_000, &[7; 16]).unwrap();
        let tampered = [
            good.replace("v1;", "v2;"),
            good.replace("ts=1000", "ts=01000"),
            good.replace("ts=1000", "ts=+1000"),
            good.replacen("kid=k1;", "", 1),
            format!("{good};extra=1"),
            good.replace(";sig=", ";sig=A"),
            good.to_uppercase(),
            String::new(),
        ];
        for header in tampered {
            assert_eq!(verify(&header, &CLAIMS, keys, 1_010, 300), Err(VerifyError::Malformed), "{header}");
        }
    }

    #[test]
    fn key_rules() {
        assert!(check_key(&[0; 31]).is_err());
        assert!(check_key(&[0; 32]).is_ok());
        assert!(check_key_id("prod-2026.1").is_ok());
        assert!(check_key_id("").is_err());
        assert!(check_key_id("a;b").is_err());
    }
}
