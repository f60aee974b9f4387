//! `certificate::uri_sans_of_url_encoded_pem`, the URI SANs of the peer certificate as Envoy hands it to Wasm
//! (URL-encoded PEM), and `SpiffeId::parse` on each.
//!
//! Input: a selector byte, then either the text Envoy would hand over (even selector), or DER bytes (odd selector)
//! that are wrapped here in PEM (base64 lines of 64) and URL-encoded as Envoy does.
//!
//! Oracle (DER inputs): `x509-parser`. When both read the certificate, the URI SANs are the same, in the same order.
//! Deliberate differences: we read only the path to the extensions and skip the other fields unread (Envoy has
//! verified the certificate), so we may read a certificate `x509-parser` refuses; we refuse a URI that is not ASCII
//! (IA5String), which `x509-parser` takes as UTF-8; we read a URI only in its DER form, primitive `[6]`, where
//! `x509-parser` also takes a constructed one (a name we do not read is no identity: the caller is anonymous). Properties: plain and URL-encoded PEM read the same; a SPIFFE ID
//! that parses prints back as the URI it came from.

use egress_core::certificate::uri_sans_of_url_encoded_pem;
use egress_core::SpiffeId;
use x509_parser::extensions::GeneralName;

pub fn run(data: &[u8]) {
    let (selector, rest) = crate::selector(data);
    if selector & 1 == 0 {
        if let Some(text) = crate::text(rest) {
            check_uris(&uri_sans_of_url_encoded_pem(text));
        }
        return;
    }
    let pem = pem(rest);
    let ours = uri_sans_of_url_encoded_pem(&url_encode(&pem));
    assert_eq!(uri_sans_of_url_encoded_pem(&pem), ours, "plain PEM reads differently");
    check_uris(&ours);
    let Ok(ours) = ours else { return };
    let Ok(([], certificate)) = x509_parser::parse_x509_certificate(rest) else { return };
    let Ok(san) = certificate.subject_alternative_name() else { return };
    let theirs: Vec<&str> = san
        .map(|san| san.value.general_names.iter())
        .into_iter()
        .flatten()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    if ours != theirs {
        // x509-parser also takes a URI in a constructed `[6]` (not DER); we read only the primitive form, so we may
        // read fewer: never one x509-parser does not read, and never miss a primitive one.
        assert!(ours.iter().all(|uri| theirs.contains(&uri.as_str())), "we read {ours:?}, x509-parser {theirs:?}");
        for uri in theirs.iter().filter(|uri| !ours.iter().any(|ours| ours == *uri)) {
            assert!(!primitive_uri(rest, uri), "{uri} missed, x509-parser reads {theirs:?}");
        }
    }
}

/// Whether `der` holds `uri` as a primitive `[6]` (tag 0x86, DER length).
fn primitive_uri(der: &[u8], uri: &str) -> bool {
    let len = uri.len();
    let mut encoded = vec![0x86];
    match len {
        0..=0x7f => encoded.push(len as u8),
        0x80..=0xff => encoded.extend([0x81, len as u8]),
        _ => encoded.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    encoded.extend_from_slice(uri.as_bytes());
    der.windows(encoded.len()).any(|w| w == encoded)
}

fn check_uris(uris: &Result<Vec<String>, egress_core::certificate::CertificateError>) {
    for uri in uris.iter().flatten() {
        assert!(uri.is_ascii());
        if let Ok(id) = SpiffeId::parse(uri) {
            assert_eq!(&id.to_string(), uri);
        }
    }
}

fn pem(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut body = String::new();
    for chunk in der.chunks(3) {
        let bits = chunk.iter().enumerate().fold(0u32, |bits, (i, &b)| bits | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                body.push(char::from(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize]));
            } else {
                body.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'-' { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect()
}
