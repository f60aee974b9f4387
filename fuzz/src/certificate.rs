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
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME;

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
        let primitive = primitive_uris(&certificate);
        for uri in theirs.iter().filter(|uri| !ours.iter().any(|ours| ours == *uri)) {
            assert!(!primitive.contains(&uri.as_bytes()), "{uri} missed, x509-parser reads {theirs:?}");
        }
    }
}

/// The contents of the primitive `[6]` names (tag 0x86) of the subject alternative name extension: the names of
/// its `GeneralNames` sequence, not bytes that look like one elsewhere (a signature may hold any).
fn primitive_uris<'a>(certificate: &'a X509Certificate<'_>) -> Vec<&'a [u8]> {
    let Some(san) = certificate.extensions().iter().find(|e| e.oid == OID_X509_EXT_SUBJECT_ALT_NAME) else {
        return Vec::new();
    };
    let Some((0x30, mut names, _)) = tlv(san.value) else { return Vec::new() };
    let mut uris = Vec::new();
    while let Some((tag, content, rest)) = tlv(names) {
        if tag == 0x86 {
            uris.push(content);
        }
        names = rest;
    }
    uris
}

/// A BER tag (one byte), its contents (definite length) and what follows.
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        let bytes = rest.get(..count).filter(|_| (1..=4).contains(&count))?;
        (bytes.iter().fold(0, |len, &b| len << 8 | usize::from(b)), &rest[count..])
    };
    let content = rest.get(..len)?;
    Some((tag, content, &rest[len..]))
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
