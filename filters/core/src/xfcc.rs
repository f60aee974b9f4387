//! `x-forwarded-client-cert` (XFCC), as Envoy writes it: comma-separated elements, one per proxy hop, each a list
//! of `Key=Value` pairs separated by `;`, values optionally double-quoted (with `\"` escapes) when they contain
//! `,`, `;` or `=`. Parsed strictly: anything ambiguous is an error, never a guess.

use std::fmt;

/// One hop's element: the keys Envoy defines (`By`, `Hash`, `Cert`, `Chain`, `Subject`, `URI`, `DNS`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XfccElement {
    pub by: Option<String>,
    pub hash: Option<String>,
    pub uri: Option<String>,
    pub subject: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XfccError {
    Empty,
    MissingEquals,
    UnterminatedQuote,
    UnknownKey,
    DuplicateKey,
    ControlCharacter,
}

impl fmt::Display for XfccError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XfccError::Empty => "empty element",
            XfccError::MissingEquals => "pair without `=`",
            XfccError::UnterminatedQuote => "unterminated quoted value",
            XfccError::UnknownKey => "unknown key",
            XfccError::DuplicateKey => "key repeated within one element",
            XfccError::ControlCharacter => "control character",
        })
    }
}

impl std::error::Error for XfccError {}

/// Parses a whole header value (all hops, oldest first).
pub fn parse(header: &str) -> Result<Vec<XfccElement>, XfccError> {
    if header.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(XfccError::ControlCharacter);
    }
    split_unquoted(header, ',')?.into_iter().map(parse_element).collect()
}

fn parse_element(raw: &str) -> Result<XfccElement, XfccError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(XfccError::Empty);
    }
    let mut element = XfccElement::default();
    for pair in split_unquoted(raw, ';')? {
        let (key, value) = pair.trim().split_once('=').ok_or(XfccError::MissingEquals)?;
        let value = unquote(value)?;
        let slot = match key.to_ascii_lowercase().as_str() {
            "by" => &mut element.by,
            "hash" => &mut element.hash,
            "uri" => &mut element.uri,
            "subject" => &mut element.subject,
            // Envoy may add these; they carry nothing this filter uses, but their presence is legitimate.
            "cert" | "chain" | "dns" => continue,
            _ => return Err(XfccError::UnknownKey),
        };
        if slot.replace(value).is_some() {
            return Err(XfccError::DuplicateKey);
        }
    }
    Ok(element)
}

/// Splits on `separator` outside double quotes.
fn split_unquoted(raw: &str, separator: char) -> Result<Vec<&str>, XfccError> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in raw.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&raw[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(XfccError::UnterminatedQuote);
    }
    parts.push(&raw[start..]);
    Ok(parts)
}

fn unquote(value: &str) -> Result<String, XfccError> {
    let Some(inner) = value.strip_prefix('"') else { return Ok(value.to_string()) };
    let inner = inner.strip_suffix('"').ok_or(XfccError::UnterminatedQuote)?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or(XfccError::UnterminatedQuote)?),
            '"' => return Err(XfccError::UnterminatedQuote),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Formats one element as Envoy does: `By=…;Hash=…;URI=…` (values here never need quotes: they are URIs and hex).
pub fn format_element(by: Option<&str>, hash: Option<&str>, uri: &str) -> String {
    let mut out = String::new();
    if let Some(by) = by {
        out.push_str("By=");
        out.push_str(by);
        out.push(';');
    }
    if let Some(hash) = hash {
        out.push_str("Hash=");
        out.push_str(hash);
        out.push(';');
    }
    out.push_str("URI=");
    out.push_str(uri);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn parses_envoy_elements() {
        let header = r#"By=spiffe://td/ns/gw/sa/gw;Hash=abc;Subject="CN=a,O=b;c";URI=spiffe://td/ns/app/sa/x,By=spiffe://td/ns/a/sa/b;URI=spiffe://td/ns/app/sa/y;DNS=a.example"#;
        let elements = parse(header).unwrap();
        assert_eq!(elements.len(), 2);
        assert_eq!(elements[0].subject.as_deref(), Some("CN=a,O=b;c"));
        assert_eq!(elements[0].uri.as_deref(), Some("spiffe://td/ns/app/sa/x"));
        assert_eq!(elements[1].uri.as_deref(), Some("spiffe://td/ns/app/sa/y"));
        assert_eq!(parse(r#"Subject="a \"quoted\" name""#).unwrap()[0].subject.as_deref(), Some(r#"a "quoted" name"#));
    }

    #[test]
    fn refuses_anything_ambiguous() {
        let cases = [
            ("", XfccError::Empty),
            ("URI=a,,URI=b", XfccError::Empty),
            ("URI", XfccError::MissingEquals),
            (r#"Subject="abc"#, XfccError::UnterminatedQuote),
            ("Foo=bar", XfccError::UnknownKey),
            ("URI=a;URI=b", XfccError::DuplicateKey),
            ("URI=a\u{1}", XfccError::ControlCharacter),
        ];
        for (header, want) in cases {
            assert_eq!(parse(header), Err(want), "{header:?}");
        }
    }

    #[test]
    fn formats_like_envoy() {
        let element = format_element(Some("spiffe://td/ns/gw/sa/gw"), Some("ff00"), "spiffe://td/ns/app/sa/x");
        assert_eq!(element, "By=spiffe://td/ns/gw/sa/gw;Hash=ff00;URI=spiffe://td/ns/app/sa/x");
        assert_eq!(parse(&element).unwrap()[0].uri.as_deref(), Some("spiffe://td/ns/app/sa/x"));
    }
}
