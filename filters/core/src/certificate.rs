//! The URI SANs of an X.509 certificate, read from the form Envoy hands to Wasm (`connection.peer_certificate`, Envoy
//! 1.38 and later: the leaf certificate as URL-encoded PEM). Envoy's own `connection.uri_san_peer_certificate` holds
//! only the first URI SAN, and the X.509-SVID specification (§2, §5) requires a validator to refuse an SVID with more
//! than one: so the identity filter counts them here.
//!
//! Only what that needs is parsed (RFC 5280 §4.1: Certificate → tbsCertificate → extensions → subjectAltName →
//! GeneralNames), strictly: definite lengths in their shortest form, nothing after a structure, one
//! subjectAltName extension at most (§4.2). Envoy has already verified the certificate, so anything this parser does
//! not read is a reason to refuse, never to guess.

use std::fmt;

/// Why a certificate's SANs could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateError {
    /// Not URL-encoded PEM of one `CERTIFICATE`.
    Pem,
    /// Invalid base64 in the PEM body.
    Base64,
    /// Not the DER structure of an X.509 certificate.
    Der,
    /// More than one subjectAltName extension.
    DuplicateSubjectAltName,
    /// A URI SAN that is not ASCII (IA5String).
    UriNotAscii,
}

impl fmt::Display for CertificateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertificateError::Pem => "not a PEM certificate",
            CertificateError::Base64 => "invalid base64 in the PEM body",
            CertificateError::Der => "not a DER-encoded X.509 certificate",
            CertificateError::DuplicateSubjectAltName => "more than one subjectAltName extension",
            CertificateError::UriNotAscii => "a URI SAN that is not ASCII",
        })
    }
}

impl std::error::Error for CertificateError {}

/// Every URI SAN of the certificate Envoy shows as `connection.peer_certificate`, in certificate order.
pub fn uri_sans_of_url_encoded_pem(url_encoded_pem: &str) -> Result<Vec<String>, CertificateError> {
    uri_sans(&der_of_pem(&percent_decode(url_encoded_pem))?)
}

/// Undoes Envoy's URL encoding of the PEM (`%0A`, `%20`, `%2B`, `%2F`, `%3D` …); a `%` that starts no escape stays.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match crate::path::escape_at(bytes.get(i..).unwrap_or_default()) {
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

const PEM_BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
const PEM_END: &[u8] = b"-----END CERTIFICATE-----";

/// The DER bytes of a single PEM `CERTIFICATE` (RFC 7468): only whitespace around it.
fn der_of_pem(pem: &[u8]) -> Result<Vec<u8>, CertificateError> {
    let pem = pem.trim_ascii();
    let body = pem.strip_prefix(PEM_BEGIN).and_then(|rest| rest.strip_suffix(PEM_END)).ok_or(CertificateError::Pem)?;
    if body.windows(5).any(|w| w == b"-----") {
        return Err(CertificateError::Pem);
    }
    base64_decode(body)
}

/// Standard base64 (RFC 4648 §4) with padding; whitespace between characters is skipped, as PEM wraps lines.
fn base64_decode(text: &[u8]) -> Result<Vec<u8>, CertificateError> {
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let symbols: Vec<u8> = text.iter().copied().filter(|c| !c.is_ascii_whitespace()).collect();
    if !symbols.len().is_multiple_of(4) {
        return Err(CertificateError::Base64);
    }
    let mut out = Vec::with_capacity(symbols.len() / 4 * 3);
    let quads = symbols.chunks_exact(4);
    let last = quads.len().saturating_sub(1);
    for (index, quad) in quads.enumerate() {
        let padding = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && index != last) {
            return Err(CertificateError::Base64);
        }
        let mut bits = 0u32;
        for &c in quad.get(..4 - padding).unwrap_or_default() {
            bits = bits << 6 | value(c).ok_or(CertificateError::Base64)?;
        }
        bits <<= 6 * padding;
        let [_, a, b, c] = bits.to_be_bytes();
        out.extend_from_slice([a, b, c].get(..3 - padding).unwrap_or_default());
    }
    Ok(out)
}

/// One DER element: its tag, its contents, and what follows it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), CertificateError> {
    let (&tag, rest) = input.split_first().ok_or(CertificateError::Der)?;
    if tag & 0x1f == 0x1f {
        // High tag numbers appear nowhere this parser reads.
        return Err(CertificateError::Der);
    }
    let (&first, rest) = rest.split_first().ok_or(CertificateError::Der)?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        // 0x80 is the indefinite form (BER, not DER); four length bytes are far beyond any certificate.
        if count == 0 || count > 4 {
            return Err(CertificateError::Der);
        }
        let (digits, rest) = rest.split_at_checked(count).ok_or(CertificateError::Der)?;
        let length = digits.iter().fold(0usize, |length, &digit| length << 8 | usize::from(digit));
        // DER: the shortest form only.
        if digits.first() == Some(&0) || length < 0x80 {
            return Err(CertificateError::Der);
        }
        (length, rest)
    };
    let (contents, rest) = rest.split_at_checked(length).ok_or(CertificateError::Der)?;
    Ok((tag, contents, rest))
}

/// The contents of an element with `tag` that is all of `input`.
fn only(input: &[u8], tag: u8) -> Result<&[u8], CertificateError> {
    match element(input)? {
        (found, contents, []) if found == tag => Ok(contents),
        _ => Err(CertificateError::Der),
    }
}

const SEQUENCE: u8 = 0x30;
const OCTET_STRING: u8 = 0x04;
const OBJECT_IDENTIFIER: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
/// `[3] EXPLICIT Extensions` in a TBSCertificate.
const EXTENSIONS: u8 = 0xa3;
/// `[6] IMPLICIT IA5String`: a GeneralName's uniformResourceIdentifier.
const URI_NAME: u8 = 0x86;
#[derive(Clone, Copy, PartialEq, Eq)]
enum Presence {
    Required,
    Optional,
}

/// A TBSCertificate's fields, in order (RFC 5280 §4.1): each one's DER tag and whether it may be absent.
const TBS_FIELDS: [(u8, Presence); 10] = [
    (0xa0, Presence::Optional),       // [0] EXPLICIT version (v1 when absent)
    (0x02, Presence::Required),       // serialNumber
    (SEQUENCE, Presence::Required),   // signature
    (SEQUENCE, Presence::Required),   // issuer
    (SEQUENCE, Presence::Required),   // validity
    (SEQUENCE, Presence::Required),   // subject
    (SEQUENCE, Presence::Required),   // subjectPublicKeyInfo
    (0x81, Presence::Optional),       // [1] IMPLICIT issuerUniqueID
    (0x82, Presence::Optional),       // [2] IMPLICIT subjectUniqueID
    (EXTENSIONS, Presence::Optional), // [3] EXPLICIT extensions
];

/// id-ce-subjectAltName, 2.5.29.17, as DER contents.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// Every URI SAN of a DER certificate, in order.
fn uri_sans(der: &[u8]) -> Result<Vec<String>, CertificateError> {
    let certificate = only(der, SEQUENCE)?;
    let (tag, tbs, _signature) = element(certificate)?;
    if tag != SEQUENCE {
        return Err(CertificateError::Der);
    }
    // The fields are skipped unread up to the extensions, which come last when present (v1 and v2 certificates have
    // none), but each must carry the tag RFC 5280 gives it, in order: a certificate whose extensions are tagged
    // otherwise (a primitive `[3]`, say) is unreadable, not one without names, for other readers take it.
    let mut fields = tbs;
    let mut extensions = None;
    let mut expected = TBS_FIELDS.iter();
    while !fields.is_empty() {
        let (tag, contents, rest) = element(fields)?;
        fields = rest;
        // The field with this tag, the optional ones before it absent.
        loop {
            match expected.next() {
                Some(&(field, _)) if field == tag => break,
                Some(&(_, Presence::Optional)) => continue,
                _ => return Err(CertificateError::Der),
            }
        }
        if tag == EXTENSIONS {
            extensions = Some(only(contents, SEQUENCE)?);
        }
    }
    if expected.any(|&(_, presence)| presence == Presence::Required) {
        return Err(CertificateError::Der);
    }
    let mut list = extensions.unwrap_or_default();
    let mut found: Option<Vec<String>> = None;
    while !list.is_empty() {
        let (tag, extension, rest) = element(list)?;
        list = rest;
        if tag != SEQUENCE {
            return Err(CertificateError::Der);
        }
        let (tag, oid, rest) = element(extension)?;
        if tag != OBJECT_IDENTIFIER {
            return Err(CertificateError::Der);
        }
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        let value = match element(rest)? {
            (BOOLEAN, _critical, value) => value,
            _ => rest,
        };
        let names = only(only(value, OCTET_STRING)?, SEQUENCE)?;
        if found.is_some() {
            return Err(CertificateError::DuplicateSubjectAltName);
        }
        found = Some(uris_of_general_names(names)?);
    }
    Ok(found.unwrap_or_default())
}

fn uris_of_general_names(mut names: &[u8]) -> Result<Vec<String>, CertificateError> {
    let mut uris = Vec::new();
    while !names.is_empty() {
        let (tag, contents, rest) = element(names)?;
        names = rest;
        if tag == URI_NAME {
            let uri =
                std::str::from_utf8(contents).ok().filter(|u| u.is_ascii()).ok_or(CertificateError::UriNotAscii)?;
            uris.push(uri.to_string());
        }
    }
    Ok(uris)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// `openssl req` + `openssl x509 -req -extfile` (P-256), SAN `URI:spiffe://cluster.local/ns/app/sa/sleep`.
    const ONE_URI: &str = "-----BEGIN CERTIFICATE-----
MIIBmzCCAUCgAwIBAgIUGgw/8u2gNbweC2x1kcxioi/Jyy8wCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHdGVzdC1jYTAgFw0yNjExMjYwMDA2NTZaGA8yMTI2MTEwMjAw
MDY1NlowDzENMAsGA1UECgwEdGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IA
BJQiwlcfdprLpSliWVjhoM16TZw7x82II2o5fscWYbJVN+FuJzqO3l9NBqGEHe7C
++YuNB0XknChSQ4wUrTKsTajdTBzMDEGA1UdEQQqMCiGJnNwaWZmZTovL2NsdXN0
ZXIubG9jYWwvbnMvYXBwL3NhL3NsZWVwMB0GA1UdDgQWBBTzH1a1oTC+uKn8HvZi
h4ATaf8WVDAfBgNVHSMEGDAWgBQ69Rgl7egvqE0JYppjTITRi7QR1DAKBggqhkjO
PQQDAgNJADBGAiEAnEJPuR2ox1E5dKz1jBs7FQ4mSpvKTNv5vGSnhSatPoICIQCp
O4khRxIK3btjojlNacdg62RcMObtjYGqu5j2ozvmzw==
-----END CERTIFICATE-----
";

    /// The same, SAN `URI:spiffe://cluster.local/ns/billing/sa/api,URI:spiffe://cluster.local/ns/app/sa/sleep`.
    const TWO_URIS: &str = "-----BEGIN CERTIFICATE-----
MIIBxTCCAWygAwIBAgIUGgw/8u2gNbweC2x1kcxioi/JyzAwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHdGVzdC1jYTAgFw0yNjExMjYwMDA2NTZaGA8yMTI2MTEwMjAw
MDY1NlowDzENMAsGA1UECgwEdGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IA
BKRrHGbG2JPTevm2z2N/zlnHXEYnQo+T23xGjjVfauUHpOAfDUvNN8wJaRXphb4q
4HCOyUmCCkp3HVUh/EcbmbijgaAwgZ0wWwYDVR0RBFQwUoYoc3BpZmZlOi8vY2x1
c3Rlci5sb2NhbC9ucy9iaWxsaW5nL3NhL2FwaYYmc3BpZmZlOi8vY2x1c3Rlci5s
b2NhbC9ucy9hcHAvc2Evc2xlZXAwHQYDVR0OBBYEFHBO5721dE//b9P6IMuTSC/9
ghsmMB8GA1UdIwQYMBaAFDr1GCXt6C+oTQlimmNMhNGLtBHUMAoGCCqGSM49BAMC
A0cAMEQCIH8LSv8BIjLywBozt8GQXD8BH6+mzQxX5RZwZq4Rvf5kAiAvefRHJhcm
cp4kRDipyDqYgW3nR+mBxlKGtFp3PkEu1A==
-----END CERTIFICATE-----
";

    /// The same, SAN `DNS:a.example,URI:spiffe://cluster.local/ns/app/sa/sleep,DNS:b.example,email:x@y.example`.
    const MIXED: &str = "-----BEGIN CERTIFICATE-----
MIIBvzCCAWWgAwIBAgIUGgw/8u2gNbweC2x1kcxioi/JyzIwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHdGVzdC1jYTAgFw0yNjExMjYwMDA2NTZaGA8yMTI2MTEwMjAw
MDY1NlowDzENMAsGA1UECgwEdGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IA
BJtTXYOsZcRPRoIs0sqQ70RKGGOnZydEZ+9vXV1FCK7OSqbPSnE6KYp5rRdSeVgf
8pAIvamVGw/Koe/BwEObUcSjgZkwgZYwVAYDVR0RBE0wS4IJYS5leGFtcGxlhiZz
cGlmZmU6Ly9jbHVzdGVyLmxvY2FsL25zL2FwcC9zYS9zbGVlcIIJYi5leGFtcGxl
gQt4QHkuZXhhbXBsZTAdBgNVHQ4EFgQUN+TM/DCHREzLt4ShLsoNuHnN0UMwHwYD
VR0jBBgwFoAUOvUYJe3oL6hNCWKaY0yE0Yu0EdQwCgYIKoZIzj0EAwIDSAAwRQIh
AO5zoSIsotXOjMppTTpQT1fR55uGRPadhkQLJP6vdMwNAiBRbw/raAIo6hu4sb1i
EIVhFZULj58Yu15kXKCbFIyjYQ==
-----END CERTIFICATE-----
";

    /// The same, no extensions at all.
    const NO_EXTENSIONS: &str = "-----BEGIN CERTIFICATE-----
MIIBHDCBxAIUGgw/8u2gNbweC2x1kcxioi/JyzEwCgYIKoZIzj0EAwIwEjEQMA4G
A1UEAwwHdGVzdC1jYTAgFw0yNjExMjYwMDA2NTZaGA8yMTI2MTEwMjAwMDY1Nlow
DzENMAsGA1UECgwEdGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABHGR9scK
rtWWeohe+Qe1pZFKMTRKZGxwvPzLH+mpIJWd3CnbdcI1s/HSCOCyfjEn2Q6XcrUf
qAYzqjRLCZFQM4UwCgYIKoZIzj0EAwIDRwAwRAIgXy57bG6uhZ9gqyYr6tWLU7cD
kauJx7qcjn4sHyqUO0YCIEfZ2MsfrJOJ9LMEuIlLq9c+dw8lk1qOmBEFevFVZe6b
-----END CERTIFICATE-----
";

    fn url_encode(pem: &str) -> String {
        pem.bytes()
            .map(
                |b| {
                    if b.is_ascii_alphanumeric() || b == b'-' {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                },
            )
            .collect()
    }

    #[test]
    fn reads_the_uri_sans_of_envoys_url_encoded_pem() {
        let uris = uri_sans_of_url_encoded_pem(&url_encode(ONE_URI));
        assert_eq!(uris, Ok(vec!["spiffe://cluster.local/ns/app/sa/sleep".to_string()]));
        assert_eq!(uri_sans_of_url_encoded_pem(ONE_URI), uris, "plain PEM reads the same");
        let two = uri_sans_of_url_encoded_pem(&url_encode(TWO_URIS));
        assert_eq!(two, Ok(vec!["spiffe://cluster.local/ns/billing/sa/api".into(), B.into()]));
        assert_eq!(uri_sans_of_url_encoded_pem(&url_encode(MIXED)), Ok(vec![B.to_string()]));
        assert_eq!(uri_sans_of_url_encoded_pem(&url_encode(NO_EXTENSIONS)), Ok(vec![]));
    }

    #[test]
    fn base64_is_read_strictly() {
        assert_eq!(base64_decode(b"TWFu"), Ok(b"Man".to_vec()));
        assert_eq!(base64_decode(b"TWE="), Ok(b"Ma".to_vec()));
        assert_eq!(base64_decode(b"TQ=="), Ok(b"M".to_vec()));
        assert_eq!(base64_decode(b"TW\nFu\r\n"), Ok(b"Man".to_vec()));
        for bad in [&b"TWF"[..], b"T===", b"TQ==TWFu", b"TW#u", b"TQ=a"] {
            assert_eq!(base64_decode(bad), Err(CertificateError::Base64), "{bad:?}");
        }
    }

    /// DER builders for the shapes a CA would not sign.
    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match contents.len() {
            n @ 0..=0x7f => out.push(n as u8),
            n @ 0x80..=0xff => out.extend_from_slice(&[0x81, n as u8]),
            n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(contents);
        out
    }

    fn san_extension(names: &[(u8, &str)], critical: bool) -> Vec<u8> {
        let general_names: Vec<u8> = names.iter().flat_map(|(tag, name)| der(*tag, name.as_bytes())).collect();
        let mut extension = der(OBJECT_IDENTIFIER, SUBJECT_ALT_NAME);
        if critical {
            extension.extend(der(BOOLEAN, &[0xff]));
        }
        extension.extend(der(OCTET_STRING, &der(SEQUENCE, &general_names)));
        der(SEQUENCE, &extension)
    }

    /// A v3 certificate (empty fields) with these extensions, if any.
    fn certificate(extensions: Option<Vec<u8>>) -> Vec<u8> {
        certificate_of_fields(&v3_fields(extensions.map(|extensions| (EXTENSIONS, der(SEQUENCE, &extensions)))))
    }

    /// A v3 TBSCertificate's fields (empty but for the version and serial number), then `last`, if any.
    fn v3_fields(last: Option<(u8, Vec<u8>)>) -> Vec<(u8, Vec<u8>)> {
        let mut fields = vec![(0xa0, der(0x02, &[2])), (0x02, vec![1])];
        // signature, issuer, validity, subject, subjectPublicKeyInfo
        fields.extend(std::iter::repeat_n((SEQUENCE, vec![]), 5));
        fields.extend(last);
        fields
    }

    /// A certificate of these TBSCertificate fields (tag, contents).
    fn certificate_of_fields(fields: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let tbs: Vec<u8> = fields.iter().flat_map(|(tag, contents)| der(*tag, contents)).collect();
        let mut certificate = der(SEQUENCE, &tbs);
        certificate.extend(der(SEQUENCE, &[]));
        certificate.extend(der(0x03, &[0]));
        der(SEQUENCE, &certificate)
    }

    const A: &str = "spiffe://cluster.local/ns/billing/sa/api";
    const B: &str = "spiffe://cluster.local/ns/app/sa/sleep";

    #[test]
    fn counts_every_uri_san_in_order() {
        let two = certificate(Some(san_extension(&[(URI_NAME, A), (0x82, "a.example"), (URI_NAME, B)], true)));
        assert_eq!(uri_sans(&two), Ok(vec![A.to_string(), B.to_string()]));
        let other_extension =
            der(SEQUENCE, &[der(OBJECT_IDENTIFIER, &[0x55, 0x1d, 0x0f]), der(OCTET_STRING, &[0])].concat());
        let mixed = certificate(Some([other_extension, san_extension(&[(URI_NAME, B)], false)].concat()));
        assert_eq!(uri_sans(&mixed), Ok(vec![B.to_string()]));
        assert_eq!(uri_sans(&certificate(None)), Ok(vec![]), "no extensions");
        assert_eq!(uri_sans(&certificate(Some(san_extension(&[(0x82, "a.example")], false)))), Ok(vec![]));
        let long = "spiffe://cluster.local/ns/app/sa/".to_string() + &"x".repeat(300);
        assert_eq!(uri_sans(&certificate(Some(san_extension(&[(URI_NAME, &long)], false)))), Ok(vec![long]));
    }

    /// The fields before the extensions are skipped unread, but each must carry the tag RFC 5280 gives it, in order:
    /// other readers take extensions tagged otherwise (x509-parser a primitive `[3]`: the certificate fuzz target's
    /// finding), so a certificate so tagged is unreadable rather than one without names.
    #[test]
    fn the_fields_before_the_extensions_carry_their_tags_in_order() {
        let extensions = der(SEQUENCE, &san_extension(&[(URI_NAME, B)], false));
        let standard = |extensions_tag: u8| v3_fields(Some((extensions_tag, extensions.clone())));
        assert_eq!(uri_sans(&certificate_of_fields(&standard(EXTENSIONS))), Ok(vec![B.to_string()]));
        // The unique ids, and a v1 certificate's absent version.
        let mut with_ids = standard(EXTENSIONS);
        with_ids.insert(7, (0x81, vec![0]));
        with_ids.insert(8, (0x82, vec![0]));
        assert_eq!(uri_sans(&certificate_of_fields(&with_ids)), Ok(vec![B.to_string()]));
        assert_eq!(uri_sans(&certificate_of_fields(&standard(EXTENSIONS)[1..7])), Ok(vec![]), "v1");

        let refused = Err(CertificateError::Der);
        for tag in [0x83, 0xa4, 0x84, SEQUENCE, 0xa1, 0x04] {
            assert_eq!(uri_sans(&certificate_of_fields(&standard(tag))), refused, "extensions tagged {tag:#x}");
        }
        let mut fields = standard(EXTENSIONS);
        fields.remove(1);
        assert_eq!(uri_sans(&certificate_of_fields(&fields)), refused, "no serial number");
        let mut fields = standard(EXTENSIONS);
        fields.remove(6);
        assert_eq!(uri_sans(&certificate_of_fields(&fields)), refused, "six fields before the extensions");
        let mut fields = standard(EXTENSIONS);
        fields.push((EXTENSIONS, extensions.clone()));
        assert_eq!(uri_sans(&certificate_of_fields(&fields)), refused, "extensions twice");
        let mut fields = standard(EXTENSIONS);
        fields.swap(7, 6);
        assert_eq!(uri_sans(&certificate_of_fields(&fields)), refused, "extensions before the key");
        let mut fields = with_ids.clone();
        fields.swap(7, 8);
        assert_eq!(uri_sans(&certificate_of_fields(&fields)), refused, "unique ids out of order");
    }

    #[test]
    fn refuses_what_it_cannot_read_exactly() {
        let twice = certificate(Some(
            [san_extension(&[(URI_NAME, A)], false), san_extension(&[(URI_NAME, B)], false)].concat(),
        ));
        assert_eq!(uri_sans(&twice), Err(CertificateError::DuplicateSubjectAltName));
        let good = certificate(Some(san_extension(&[(URI_NAME, B)], false)));
        for cut in 0..good.len() {
            assert!(uri_sans(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(uri_sans(&trailing), Err(CertificateError::Der));
        // A long-form length that fits the short form is BER, not DER.
        assert_eq!(element(&[0x04, 0x81, 0x01, 0xaa]), Err(CertificateError::Der));
        assert_eq!(element(&[0x04, 0x80, 0xaa, 0x00, 0x00]), Err(CertificateError::Der), "indefinite length");
        assert_eq!(element(&[0x04, 0x82, 0x00, 0x81]), Err(CertificateError::Der), "leading zero");
        assert_eq!(element(&[0x1f, 0x01, 0x00]), Err(CertificateError::Der), "high tag number");
        let non_ascii = certificate(Some(san_extension(&[(URI_NAME, "spiffe://td/ns/é/sa/x")], false)));
        assert_eq!(uri_sans(&non_ascii), Err(CertificateError::UriNotAscii));
        for pem in ["", "MIIB", "-----BEGIN CERTIFICATE-----\nMIIB", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----"] {
            assert_eq!(uri_sans_of_url_encoded_pem(pem), Err(CertificateError::Pem), "{pem:?}");
        }
    }
}
