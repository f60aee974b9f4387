//! `xfcc::parse`, the `x-forwarded-client-cert` header of a trusted hop, and `SpiffeId::parse` on its `URI`.
//!
//! Properties: what parses prints back (every value quoted, `"` and `\` escaped, as Envoy quotes values) to a header
//! that parses to the same elements; an element Envoy would write (`format_element`) parses to its parts; a SPIFFE ID
//! that parses prints as exactly the text it was parsed from (the parser normalises nothing, it refuses).

use egress_core::xfcc::{self, XfccElement};
use egress_core::SpiffeId;

pub fn run(data: &[u8]) {
    let Some(header) = crate::text(data) else { return };
    let Ok(elements) = xfcc::parse(header) else { return };
    assert!(!elements.is_empty());
    let printed = elements.iter().map(print).collect::<Vec<_>>().join(",");
    assert_eq!(xfcc::parse(&printed).as_ref(), Ok(&elements), "{header:?} printed as {printed:?}");
    for element in &elements {
        if let Some(uri) = &element.uri {
            if let Ok(id) = SpiffeId::parse(uri) {
                assert_eq!(&id.to_string(), uri);
                assert_eq!(SpiffeId::parse(&id.to_string()), Ok(id));
            }
            // Envoy's own spelling of an element, with values that need no quotes.
            fn plain(v: &Option<String>) -> Option<&str> {
                v.as_deref().filter(|v| !needs_quotes(v) && v.trim() == *v)
            }
            let (by, hash) = (plain(&element.by), plain(&element.hash));
            if !needs_quotes(uri) && uri.trim() == uri {
                let formatted = xfcc::format_element(by, hash, uri);
                let parsed = xfcc::parse(&formatted).unwrap_or_else(|e| panic!("{formatted:?}: {e}"));
                let want = XfccElement {
                    by: by.map(str::to_string),
                    hash: hash.map(str::to_string),
                    uri: Some(uri.clone()),
                    subject: None,
                };
                assert_eq!(parsed, [want], "{formatted:?}");
            }
        }
    }
}

fn needs_quotes(value: &str) -> bool {
    value.is_empty() || value.contains([',', ';', '=', '"', '\\'])
}

fn quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn print(element: &XfccElement) -> String {
    let XfccElement { by, hash, uri, subject } = element;
    let pairs: Vec<String> = [("By", by), ("Hash", hash), ("URI", uri), ("Subject", subject)]
        .into_iter()
        .filter_map(|(key, value)| value.as_deref().map(|v| format!("{key}={}", quote(v))))
        .collect();
    if pairs.is_empty() {
        // An element of keys this parser skips (`Cert`, `Chain`, `DNS`).
        return "DNS=x".to_string();
    }
    pairs.join(";")
}
